//! What a network namespace's VIP balancer holds, whichever kernel machinery carries it
//! (`lb`'s nf_tables or `ipvs`): each VIP and the addresses it spreads connections over.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// The nf_tables table a balancer keeps in its namespace (both kinds have one).
pub const TABLE: &str = "swarmlet";

/// Backends per VIP at most: a service's replicas are capped at 100,000 by its spec, but
/// a balancer map that large would take a batch of megabytes; 4,096 is well past any
/// service an edge cluster runs and keeps one update under 200 KiB.
pub const MAX_BACKENDS: usize = 4096;

/// VIP -> its backends, in the order round robin takes them.
pub type Services = BTreeMap<Ipv4Addr, Vec<Ipv4Addr>>;

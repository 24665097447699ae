//! What a network namespace's VIP balancer holds, whichever kernel machinery carries it
//! (`lb`'s nf_tables or `ipvs`): each VIP and the addresses it spreads connections over.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::nft::{BaseChain, Batch, ChainType, Expr, Hook, Reg};

/// The nf_tables table a balancer keeps in its namespace (both kinds have one).
pub const TABLE: &str = "swarmlet";

/// Backends per VIP at most: a service's replicas are capped at 100,000 by its spec, but
/// a balancer map that large would take a batch of megabytes; 4,096 is well past any
/// service an edge cluster runs and keeps one update under 200 KiB.
pub const MAX_BACKENDS: usize = 4096;

/// VIP -> its backends, in the order round robin takes them.
pub type Services = BTreeMap<Ipv4Addr, Vec<Ipv4Addr>>;

/// `chain deny { filter hook output 0: ip daddr @empty reject }`: a VIP with no backend
/// refuses at once instead of leaving the client to time out (the set `empty` is the
/// caller's, in [`TABLE`]).
pub fn add_deny_chain(b: &mut Batch) {
    b.add_chain(
        TABLE,
        "deny",
        Some(BaseChain {
            hook: Hook::Output,
            priority: 0,
            kind: ChainType::Filter,
        }),
    );
    b.add_rule(
        TABLE,
        "deny",
        &[
            Expr::NetworkHeader {
                offset: 16,
                len: 4,
                dreg: Reg::R1,
            },
            Expr::Lookup {
                set: "empty".into(),
                sreg: Reg::R1,
                dreg: None,
            },
            Expr::Reject,
        ],
    );
}

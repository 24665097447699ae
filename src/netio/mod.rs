//! The OS side of the encrypted transport: the smol driver that owns a UDP socket and
//! feeds the pure `crate::transport::Endpoint`, and the node's static key on disk.
//! Below the daemon, which runs them for the cluster, and shared with `swarmlet debug
//! transport`, which drives one by hand.

pub mod keyfile;
pub mod transport;

//! The IO shell: sockets, timers, disk. Everything here drives a pure core from
//! `crate::transport` (and, later, Raft, gossip and the orchestrator) with real time,
//! real randomness and real sockets.

pub mod addr;
pub mod agent;
pub mod bridged;
pub mod containers;
pub mod engine;
pub mod health;
pub mod netplane;
pub mod node;
pub mod server;
pub mod sockets;
pub mod startup;
pub mod wal;

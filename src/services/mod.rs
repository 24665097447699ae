//! Services: what the swarm is asked to run, and the pure cores that decide where and
//! when (the scheduler; the orchestrator and the agent follow). Like the other cores
//! they read no clock and do no I/O: state and `now` in, decisions out.

pub mod agent;
pub mod constraint;
pub mod ipam;
pub mod network;
pub mod orchestrator;
pub mod scheduler;
pub mod spec;
pub mod store;
pub mod task;

#[cfg(test)]
mod tests;

use std::fmt;

use serde::{Deserialize, Serialize};

/// A service's id, chosen by the leader when the service is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceId(pub u64);

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A network's id, chosen by the leader when the network is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NetworkId(pub u64);

impl fmt::Display for NetworkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

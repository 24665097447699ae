//! Raft consensus for the managers' replicated cluster state. Pure: see [`node`] for the
//! driving loop and the order in which the shell must persist, send and apply.

pub mod log;
pub mod node;
pub mod types;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

pub use node::{
    Config, ProposeError, Raft, ReadState, Ready, Role, Status, MAX_BATCH_BYTES,
    MAX_SNAPSHOT_BYTES, SNAPSHOT_CHUNK_BYTES,
};
pub use types::{
    ConfigChange, ConfigError, Entry, Envelope, HardState, Index, Membership, Message, NodeId,
    Payload, Snapshot, SnapshotMeta, Term,
};

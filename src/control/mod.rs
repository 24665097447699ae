//! The control plane of one node, pure: who it is in its cluster (not in one, joining, a
//! worker, a manager), how joins, forwarding to the leader, promotions, demotions,
//! voter changes, reads and leaving are decided, and how that drives Raft and gossip.
//!
//! Two layers:
//!
//! - [`Control`] decides. Inputs (API requests, peer messages, Raft's view, committed
//!   entries, read results, gossip events, timeouts), each with `now`, go in through
//!   [`Control::handle`] and [`Control::handle_timeout`]; [`Effect`]s come out of
//!   [`Control::poll_effect`] in the order they must happen: send, answer, propose,
//!   change voters, transfer leadership, persist the membership, add or remove a
//!   transport peer, start or stop Raft and gossip. Raft and gossip are not inside it:
//!   its unit tests feed it what they would say and assert the exact effects.
//! - [`Stack`] wires one `Control` to its `Raft` and `Gossip` cores and turns their
//!   outputs into [`Io`] for a driver: encoded messages, answers, log writes. The daemon
//!   (`crate::daemon::node`) drives a `Stack` with a socket, the blocking pool and a
//!   disk; the simulation (`sim`) drives several on a virtual network and clock.
//!
//! Nothing here reads a clock, a socket, a file or an unseeded RNG.

mod core;
mod logs;
pub mod msg;
mod requests;
mod services;
pub mod stack;

#[cfg(test)]
mod tests;

pub use self::core::{
    Bound, Control, Counters, Effect, Identity, Input, NodeState, RaftView, Reply, RequestId,
    DEFAULT_PORT, FORWARD_DEADLINE, FORWARD_RETRY, JOIN_RETRY, JOIN_TIMEOUT,
    MAX_REMOVED_REMEMBERED, MEMBER_PSK, PSK_MANAGER, PSK_WORKER, REMOVED_LOG, UNHEARD_GRACE,
};
pub use logs::{LOG_DEADLINE, LOG_RETRY};
pub use msg::{GossipMeta, ManagerAddr, Membership, PeerMsg};
#[cfg(test)]
pub(crate) use services::node_facts;
pub use stack::{Admission, Io, LogWrite, RaftLog, Stack, StackConfig};

//! Raft's vocabulary: ids, terms, indexes, entries, membership, and the messages peers
//! exchange. Everything here is serialisable with postcard.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A cluster member's id: derived from its static public key by the cluster layer.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

/// A Raft term.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Term(pub u64);

/// A position in the replicated log; the first entry is 1, 0 means "before the log".
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Index(pub u64);

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{:x}", self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t{}", self.0)
    }
}

impl fmt::Debug for Index {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "i{}", self.0)
    }
}

impl fmt::Display for Index {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Term {
    pub fn next(self) -> Term {
        Term(self.0 + 1)
    }
}

impl Index {
    pub fn next(self) -> Index {
        Index(self.0 + 1)
    }

    /// The index before this one (0 stays 0).
    pub fn prev(self) -> Index {
        Index(self.0.saturating_sub(1))
    }
}

/// The voting members and the non-voting learners (managers catching up before they
/// are promoted).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
}

impl Membership {
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> Self {
        Membership {
            voters: voters.into_iter().collect(),
            learners: BTreeSet::new(),
        }
    }

    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id)
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }

    /// Every member, voters first.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }

    /// Votes needed for a majority.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// The membership after `change`, or why it cannot be applied.
    pub fn apply(&self, change: &ConfigChange) -> Result<Membership, ConfigError> {
        let mut m = self.clone();
        match *change {
            ConfigChange::AddLearner(id) => {
                if m.contains(id) {
                    return Err(ConfigError::AlreadyMember(id));
                }
                m.learners.insert(id);
            }
            ConfigChange::AddVoter(id) => {
                if m.voters.contains(&id) {
                    return Err(ConfigError::AlreadyMember(id));
                }
                m.learners.remove(&id);
                m.voters.insert(id);
            }
            ConfigChange::Demote(id) => {
                if !m.voters.contains(&id) {
                    return Err(ConfigError::NotVoter(id));
                }
                if m.voters.len() == 1 {
                    return Err(ConfigError::LastVoter(id));
                }
                m.voters.remove(&id);
                m.learners.insert(id);
            }
            ConfigChange::Remove(id) => {
                if !m.contains(id) {
                    return Err(ConfigError::NotMember(id));
                }
                if m.voters.len() == 1 && m.voters.contains(&id) {
                    return Err(ConfigError::LastVoter(id));
                }
                m.voters.remove(&id);
                m.learners.remove(&id);
            }
        }
        Ok(m)
    }
}

/// One membership change: Raft's single-server changes, so any two consecutive
/// configurations share a majority.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfigChange {
    AddLearner(NodeId),
    /// Adds a voter (promoting it if it is a learner).
    AddVoter(NodeId),
    /// Turns a voter into a learner.
    Demote(NodeId),
    Remove(NodeId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("node {0} is already a member in that role")]
    AlreadyMember(NodeId),
    #[error("node {0} is not a voting member")]
    NotVoter(NodeId),
    #[error("node {0} is not a member")]
    NotMember(NodeId),
    #[error("node {0} is the last voting member")]
    LastVoter(NodeId),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// Appended by every new leader so it can commit (and serve reads) in its term.
    Noop,
    /// Opaque to Raft: a command for the layer above's state machine.
    Command(Vec<u8>),
    Config(ConfigChange),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub term: Term,
    pub index: Index,
    pub payload: Payload,
}

impl Entry {
    /// Bytes this entry adds to a message, roughly: for batching limits.
    pub fn size_hint(&self) -> usize {
        24 + match &self.payload {
            Payload::Command(c) => c.len(),
            _ => 16,
        }
    }
}

/// What must survive a crash besides the log: the current term and our vote in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    pub term: Term,
    pub vote: Option<NodeId>,
}

/// Describes a snapshot: the state machine after applying everything up to `index`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub index: Index,
    pub term: Term,
    pub membership: Membership,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub meta: SnapshotMeta,
    pub data: Vec<u8>,
}

/// Messages between Raft peers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// "Would you vote for me in `term`?" Changes nobody's state.
    PreVote {
        term: Term,
        last_index: Index,
        last_term: Term,
    },
    PreVoteResp {
        term: Term,
        granted: bool,
    },
    Vote {
        term: Term,
        last_index: Index,
        last_term: Term,
        /// Sent on a leader's request (leadership transfer): voters skip the lease check.
        transfer: bool,
    },
    VoteResp {
        term: Term,
        granted: bool,
    },
    Append {
        term: Term,
        prev_index: Index,
        prev_term: Term,
        entries: Vec<Entry>,
        commit: Index,
        /// Heartbeat round, echoed back; confirms leadership for ReadIndex.
        round: u64,
    },
    AppendResp {
        term: Term,
        /// On success, the last index known to match the leader's log; on failure, a
        /// hint: the follower's last index.
        index: Index,
        success: bool,
        round: u64,
    },
    Snapshot {
        term: Term,
        meta: SnapshotMeta,
        offset: u64,
        data: Vec<u8>,
        done: bool,
        round: u64,
    },
    SnapshotResp {
        term: Term,
        /// Bytes received so far; with `done`, the snapshot is installed.
        offset: u64,
        done: bool,
        /// With `done`: the index the follower's state now covers.
        index: Index,
        round: u64,
    },
    /// From a leader handing over: start an election now.
    TimeoutNow {
        term: Term,
    },
}

impl Message {
    pub fn term(&self) -> Term {
        match self {
            Message::PreVote { term, .. }
            | Message::PreVoteResp { term, .. }
            | Message::Vote { term, .. }
            | Message::VoteResp { term, .. }
            | Message::Append { term, .. }
            | Message::AppendResp { term, .. }
            | Message::Snapshot { term, .. }
            | Message::SnapshotResp { term, .. }
            | Message::TimeoutNow { term } => *term,
        }
    }
}

/// A message with its addressee.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub to: NodeId,
    pub msg: Message,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_changes_are_validated() {
        let (a, b, c) = (NodeId(1), NodeId(2), NodeId(3));
        let m = Membership::new([a]);
        assert_eq!(m.quorum(), 1);
        let m = m.apply(&ConfigChange::AddLearner(b)).unwrap();
        assert!(m.contains(b) && !m.is_voter(b));
        assert_eq!(
            m.apply(&ConfigChange::AddLearner(b)),
            Err(ConfigError::AlreadyMember(b))
        );
        let m = m.apply(&ConfigChange::AddVoter(b)).unwrap();
        assert!(m.is_voter(b) && m.learners.is_empty());
        assert_eq!(m.quorum(), 2);
        let m = m.apply(&ConfigChange::AddVoter(c)).unwrap();
        assert_eq!(m.quorum(), 2);
        let m = m.apply(&ConfigChange::Demote(c)).unwrap();
        assert!(m.learners.contains(&c));
        assert_eq!(
            m.apply(&ConfigChange::Demote(c)),
            Err(ConfigError::NotVoter(c))
        );
        let m = m.apply(&ConfigChange::Remove(c)).unwrap();
        let m = m.apply(&ConfigChange::Remove(b)).unwrap();
        assert_eq!(
            m.apply(&ConfigChange::Remove(a)),
            Err(ConfigError::LastVoter(a))
        );
        assert_eq!(
            m.apply(&ConfigChange::Demote(a)),
            Err(ConfigError::LastVoter(a))
        );
        assert_eq!(
            m.apply(&ConfigChange::Remove(b)),
            Err(ConfigError::NotMember(b))
        );
    }

    #[test]
    fn messages_round_trip_through_postcard() {
        let m = Message::Append {
            term: Term(3),
            prev_index: Index(7),
            prev_term: Term(2),
            entries: vec![Entry {
                term: Term(3),
                index: Index(8),
                payload: Payload::Command(b"set x 1".to_vec()),
            }],
            commit: Index(7),
            round: 9,
        };
        let bytes = postcard::to_allocvec(&m).unwrap();
        assert_eq!(postcard::from_bytes::<Message>(&bytes).unwrap(), m);
    }
}

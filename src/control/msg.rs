//! What daemons say to each other inside the encrypted transport, and what a node keeps
//! about its cluster between restarts.
//!
//! Every peer message is one transport message: a version byte, then postcard. Decoding
//! is bounded by the transport's message limit, and anything malformed is dropped (and
//! counted by the caller), never trusted.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::api::{LogPiece, LogRead, Request, Response};
use crate::cluster::token::TokenRole;
use crate::cluster::NodeRole;
use crate::gossip;
use crate::raft::{self, NodeId, Term};
use crate::services::agent::{AgentStatus, Assignments};
use crate::transport::{PeerKey, MAX_MESSAGE_SIZE};

/// Format version of peer messages.
pub const PEER_MSG_VERSION: u8 = 1;
/// Format version of the membership file.
pub const MEMBERSHIP_VERSION: u8 = 1;

/// A manager as nodes remember it: enough to reach it again after a restart.
pub type ManagerAddr = (NodeId, PeerKey, SocketAddr);

// A Raft append batch or snapshot chunk, with its envelope, must fit one transport
// message, or replication would stall on a batch that can never be sent.
const _: () = assert!(raft::MAX_BATCH_BYTES + 64 * 1024 <= MAX_MESSAGE_SIZE);
const _: () = assert!(raft::SNAPSHOT_CHUNK_BYTES + 64 * 1024 <= MAX_MESSAGE_SIZE);
// Any cluster state the managers can agree on fits a snapshot a follower accepts.
const _: () = assert!(crate::cluster::MAX_ENCODED <= raft::MAX_SNAPSHOT_BYTES);
// A forwarded answer (one transport message) always fits an API frame to the CLI.
const _: () = assert!(MAX_MESSAGE_SIZE <= crate::api::MAX_FRAME);

/// Messages between daemons.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PeerMsg {
    Raft(raft::Message),
    Gossip(gossip::Message),
    /// From a joiner to the manager its token names, over a session keyed by the token.
    JoinRequest {
        role: TokenRole,
        hostname: String,
        advertise: SocketAddr,
        labels: Vec<(String, String)>,
    },
    JoinAccepted {
        cluster_id: [u8; 16],
        role: NodeRole,
        managers: Vec<ManagerAddr>,
    },
    JoinRefused(String),
    /// From a manager to the leader: a join whose token that manager checked.
    ForwardJoin {
        joiner: PeerKey,
        role: TokenRole,
        hostname: String,
        advertise: SocketAddr,
        labels: Vec<(String, String)>,
    },
    /// From the leader to that manager: the answer to pass on to the joiner.
    JoinRelay {
        joiner: PeerKey,
        answer: Box<PeerMsg>,
    },
    /// An API request a manager passes to the leader for its own CLI. `id` is the
    /// asker's; a repeat with the same id is the same request (the asker repeats it when
    /// an answer is late or the leader changed).
    ApiForward {
        id: u64,
        req: Request,
    },
    ApiReply {
        id: u64,
        resp: Response,
    },
    /// From a manager that is not (or no longer) the leader: ask `leader` instead.
    ApiRedirect {
        id: u64,
        leader: Option<NodeId>,
    },
    /// From the leader to a worker just made a manager: start Raft.
    Promoted {
        managers: Vec<ManagerAddr>,
    },
    /// From the leader to a node it demoted (or removed) that still campaigns: its
    /// removal from the voters is committed, stop Raft.
    Demoted,
    /// From a manager to a joiner: the join cannot be decided now (no leader, or the
    /// leadership moved before it committed); the joiner keeps asking until its timeout.
    JoinWait(String),
    /// From a manager that has no cluster state some time after it was made one (its
    /// join or promotion may have been undone before the leader's state reached it) to
    /// the managers it knows: the leader answers `Demoted` if the state now makes it a
    /// worker, and stays silent otherwise (the state is on its way).
    RoleQuery,
    /// From a manager that follows a leader to a manager that campaigns (pre-votes) in
    /// vain: who leads now. A manager restarted far behind may know neither the leader's
    /// key nor its address (it joined after the state the campaigner holds), and without
    /// them it refuses the leader's handshake and never catches up. `term` is the
    /// sender's: a hint from a manager cut off since an older term names an old leader.
    LeaderHint {
        leader: ManagerAddr,
        term: Term,
    },
    /// From the leader to a node the cluster removed that still talks to it (it was
    /// off, or cut off, when it was removed): it is no member any more, and leaves.
    Removed,
    /// From the leader to a node: every task it is to hold, versioned (see
    /// `services::agent`).
    Assign(Box<Assignments>),
    /// From a node's agent to the leader (workers send it to every manager they know;
    /// only the leader acts on it): its tasks' states and what it offers.
    AgentStatus(Box<AgentStatus>),
    /// From a manager to a node, for its CLI's `service logs`: read a chunk of each of
    /// these containers' logs. Reads start at a cursor, so a repeat (the manager
    /// repeats one left unanswered) reads the same again.
    LogRead {
        id: u64,
        reads: Vec<LogRead>,
    },
    /// The answer: a piece per read, in order, or why there is none.
    LogPieces {
        id: u64,
        result: Result<Vec<LogPiece>, String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MsgError {
    #[error("peer message of {0} bytes exceeds the {MAX_MESSAGE_SIZE}-byte limit")]
    TooLarge(usize),
    #[error("unknown peer message version {0}")]
    Version(u8),
    #[error("empty peer message")]
    Empty,
    #[error("malformed peer message: {0}")]
    Malformed(String),
}

impl PeerMsg {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![PEER_MSG_VERSION];
        // Our own types always serialise.
        v.extend(postcard::to_allocvec(self).expect("invariant: peer messages serialise"));
        v
    }

    /// Bytes `encode` produces, without producing them.
    pub fn encoded_len(&self) -> usize {
        1 + postcard::experimental::serialized_size(self)
            .expect("invariant: peer messages serialise")
    }

    /// Decodes what a peer sent. Whatever the bytes, this returns an error or a message.
    pub fn decode(b: &[u8]) -> Result<PeerMsg, MsgError> {
        if b.len() > MAX_MESSAGE_SIZE {
            return Err(MsgError::TooLarge(b.len()));
        }
        match b.split_first() {
            None => Err(MsgError::Empty),
            Some((&PEER_MSG_VERSION, rest)) => {
                postcard::from_bytes(rest).map_err(|e| MsgError::Malformed(e.to_string()))
            }
            Some((&v, _)) => Err(MsgError::Version(v)),
        }
    }
}

/// What gossip carries about each node, so any member can address any other.
///
/// On the wire: the key and address (postcard), then one byte, 1 for a manager. The
/// byte came later: a meta without it is from an older node and says nothing of its
/// role, and older nodes read the key and address and ignore the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GossipMeta {
    pub key: PeerKey,
    pub addr: SocketAddr,
    /// Whether it is a manager (None: an older node, which does not say). Workers keep
    /// the managers they hear of in their membership file, so a restart finds the
    /// cluster even when the managers it joined through are gone.
    pub manager: Option<bool>,
}

impl GossipMeta {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = postcard::to_allocvec(&(self.key, self.addr))
            .expect("invariant: gossip meta serialises");
        if let Some(m) = self.manager {
            b.push(u8::from(m));
        }
        b
    }

    pub fn decode(b: &[u8]) -> Option<GossipMeta> {
        let ((key, addr), rest) = postcard::take_from_bytes::<(PeerKey, SocketAddr)>(b).ok()?;
        Some(GossipMeta {
            key,
            addr,
            manager: rest.first().map(|b| *b == 1),
        })
    }
}

/// What a node remembers about its cluster between restarts (the `membership` file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub cluster_id: [u8; 16],
    pub role: NodeRole,
    pub listen: SocketAddr,
    pub advertise: SocketAddr,
    /// Managers as last known: where a restarted node looks for its cluster.
    pub managers: Vec<ManagerAddr>,
}

impl Membership {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![MEMBERSHIP_VERSION];
        b.extend(postcard::to_allocvec(self).expect("invariant: membership serialises"));
        b
    }

    pub fn decode(b: &[u8]) -> Result<Membership, MsgError> {
        match b.split_first() {
            None => Err(MsgError::Empty),
            Some((&MEMBERSHIP_VERSION, rest)) => {
                postcard::from_bytes(rest).map_err(|e| MsgError::Malformed(e.to_string()))
            }
            Some((&v, _)) => Err(MsgError::Version(v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gossip_meta_carries_the_role_and_reads_across_versions() {
        let key = PeerKey([7; 32]);
        let addr: SocketAddr = "10.0.0.7:2377".parse().unwrap();
        for manager in [None, Some(false), Some(true)] {
            let m = GossipMeta { key, addr, manager };
            assert_eq!(GossipMeta::decode(&m.encode()), Some(m));
        }
        // An older node's meta (key and address only) says nothing of the role.
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Old {
            key: PeerKey,
            addr: SocketAddr,
        }
        let old = postcard::to_allocvec(&Old { key, addr }).unwrap();
        assert_eq!(
            GossipMeta::decode(&old),
            Some(GossipMeta {
                key,
                addr,
                manager: None
            })
        );
        // And an older node reads ours.
        let new = GossipMeta {
            key,
            addr,
            manager: Some(true),
        };
        assert_eq!(
            postcard::from_bytes::<Old>(&new.encode()).unwrap(),
            Old { key, addr }
        );
        assert_eq!(GossipMeta::decode(&[1, 2, 3]), None);
    }

    #[test]
    fn peer_messages_round_trip_and_refuse_garbage() {
        let m = PeerMsg::ApiForward {
            id: 7,
            req: Request::NodeList,
        };
        let b = m.encode();
        assert_eq!(b.len(), m.encoded_len());
        assert_eq!(PeerMsg::decode(&b), Ok(m));
        assert_eq!(PeerMsg::decode(&[]), Err(MsgError::Empty));
        assert_eq!(PeerMsg::decode(&[9, 0]), Err(MsgError::Version(9)));
        assert!(matches!(
            PeerMsg::decode(&[PEER_MSG_VERSION, 0xff, 0xff]),
            Err(MsgError::Malformed(_))
        ));
        let huge = vec![PEER_MSG_VERSION; MAX_MESSAGE_SIZE + 1];
        assert_eq!(
            PeerMsg::decode(&huge),
            Err(MsgError::TooLarge(MAX_MESSAGE_SIZE + 1))
        );
    }

    #[test]
    fn gossip_metadata_fits_gossips_limit() {
        let widest = GossipMeta {
            key: PeerKey([0xff; 32]),
            addr: "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"
                .parse()
                .unwrap(),
            manager: Some(true),
        };
        let len = widest.encode().len();
        assert!(len <= crate::gossip::MAX_META, "{len} bytes");
        assert_eq!(GossipMeta::decode(&widest.encode()), Some(widest));
    }

    #[test]
    fn membership_round_trips() {
        let m = Membership {
            cluster_id: [4; 16],
            role: NodeRole::Worker,
            listen: "0.0.0.0:2377".parse().unwrap(),
            advertise: "10.0.0.2:2377".parse().unwrap(),
            managers: vec![(
                NodeId(1),
                PeerKey([1; 32]),
                "10.0.0.1:2377".parse().unwrap(),
            )],
        };
        assert_eq!(Membership::decode(&m.encode()), Ok(m));
        assert_eq!(Membership::decode(&[2]), Err(MsgError::Version(2)));
    }
}

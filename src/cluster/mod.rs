//! The replicated cluster state: what every manager agrees on through Raft. Pure and
//! deterministic: a command's effect depends only on the state and the command, so every
//! manager that applies the same log ends in the same state. Anything random (token
//! secrets) or time-dependent is decided by the proposer and carried in the command.
//!
//! Services and tasks (`services::store`) and networks with their addresses
//! (`services::network`) are parts of it; a service command goes through both, so a
//! service's VIPs, ports and task addresses follow it.

pub mod token;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::raft::NodeId;
use crate::services::ipam::Pools;
use crate::services::network::{NetworkCommand, NetworkError, Networks};
use crate::services::store::{ServiceCommand, Store, StoreError};
use crate::services::NetworkId;
use crate::transport::crypto::hash;
use crate::transport::PeerKey;
use token::{TokenRole, TokenSecret};

/// Format version of the encoded state. Versions 1 (before the cluster spec) and 2
/// (before services) are still read, so a node upgraded in place loads the snapshot its
/// old version wrote.
const STATE_VERSION: u8 = 4;
const STATE_VERSION_3: u8 = 3;
const STATE_VERSION_2: u8 = 2;
const STATE_VERSION_1: u8 = 1;
/// Format version of encoded commands (Raft log entries, which outlive upgrades).
const COMMAND_VERSION: u8 = 1;
/// Raft snapshot interval when `init` names none: Docker's default.
pub const DEFAULT_SNAPSHOT_INTERVAL: u64 = 10_000;
/// Bounds of `--snapshot-interval`. Below 16 a busy cluster would snapshot on nearly
/// every turn; above a million entries the in-memory log of a Pi could hold hundreds of
/// MiB between snapshots.
pub const MIN_SNAPSHOT_INTERVAL: u64 = 16;
pub const MAX_SNAPSHOT_INTERVAL: u64 = 1_000_000;
/// Largest encoded state or command we decode (a peer or a damaged disk can hand us
/// anything): a cluster of thousands of nodes fits in a fraction of this.
pub const MAX_ENCODED: usize = 64 << 20;
/// Labels per node, and bytes per label key or value (Docker's limits are similar).
pub const MAX_LABELS: usize = 64;
pub const MAX_LABEL_BYTES: usize = 256;
pub const MAX_HOSTNAME: usize = 253;

/// A node's id: the first 8 bytes of a hash of its static public key, so an id can
/// never be claimed without the key.
pub fn node_id(key: &PeerKey) -> NodeId {
    let h = hash(&[b"swarmlet node id v1", &key.0]);
    NodeId(u64::from_le_bytes(
        h[..8].try_into().expect("invariant: 32-byte hash"),
    ))
}

pub use crate::model::node::{Availability, NodeRole, NodeStatus};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: NodeId,
    pub key: PeerKey,
    /// Where its transport listens, as it advertised.
    pub addr: SocketAddr,
    pub hostname: String,
    pub role: NodeRole,
    pub availability: Availability,
    pub labels: BTreeMap<String, String>,
    pub status: NodeStatus,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    pub worker: TokenSecret,
    pub manager: TokenSecret,
}

impl Tokens {
    pub fn secret(&self, role: TokenRole) -> &TokenSecret {
        match role {
            TokenRole::Worker => &self.worker,
            TokenRole::Manager => &self.manager,
        }
    }
}

/// Settings of the whole cluster, chosen at `init` (Docker's swarm spec).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSpec {
    /// Committed entries between Raft snapshots; the log and the WAL are cut back to the
    /// snapshot each time.
    pub snapshot_interval: u64,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            snapshot_interval: DEFAULT_SNAPSHOT_INTERVAL,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    pub cluster_id: [u8; 16],
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    pub tokens: Tokens,
    pub spec: ClusterSpec,
    pub services: Store,
    /// Overlay networks and the addresses on them (appended last, in format 3).
    pub networks: Networks,
}

/// The state as version 3 wrote it: networks had no attached containers.
#[derive(Deserialize)]
struct ClusterStateV3 {
    cluster_id: [u8; 16],
    nodes: BTreeMap<NodeId, NodeRecord>,
    tokens: Tokens,
    spec: ClusterSpec,
    services: Store,
    networks: crate::services::network::NetworksV3,
}

/// The state as version 2 wrote it.
#[derive(Deserialize)]
struct ClusterStateV2 {
    cluster_id: [u8; 16],
    nodes: BTreeMap<NodeId, NodeRecord>,
    tokens: Tokens,
    spec: ClusterSpec,
}

/// The state as version 1 wrote it.
#[derive(Deserialize)]
struct ClusterStateV1 {
    cluster_id: [u8; 16],
    nodes: BTreeMap<NodeId, NodeRecord>,
    tokens: Tokens,
}

/// Changes to the cluster state; the payload of Raft commands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    AddNode(NodeRecord),
    RemoveNode(NodeId),
    SetStatus {
        id: NodeId,
        status: NodeStatus,
    },
    SetRole {
        id: NodeId,
        role: NodeRole,
    },
    UpdateNode {
        id: NodeId,
        availability: Option<Availability>,
        label_add: Vec<(String, String)>,
        label_rm: Vec<String>,
    },
    SetAddr {
        id: NodeId,
        addr: SocketAddr,
    },
    RotateToken {
        role: TokenRole,
        secret: TokenSecret,
    },
    /// Services and tasks (appended last: older entries keep their encoding).
    Service(Box<ServiceCommand>),
    /// Networks (appended last, likewise).
    Network(Box<NetworkCommand>),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("node {0} is not in the cluster")]
    UnknownNode(NodeId),
    #[error("node {0} is already in the cluster")]
    AlreadyMember(NodeId),
    #[error("node {0} is the last manager; the cluster would be left without one")]
    LastManager(NodeId),
    #[error("node record is invalid: {0}")]
    Invalid(String),
    #[error("{0}")]
    Service(#[from] StoreError),
    #[error("{0}")]
    Network(#[from] NetworkError),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("encoded data is {0} bytes, over the {MAX_ENCODED}-byte limit")]
    TooLarge(usize),
    #[error("unknown format version {0}")]
    Version(u8),
    #[error("empty input")]
    Empty,
    #[error("malformed: {0}")]
    Malformed(String),
}

fn encode<T: Serialize>(version: u8, v: &T) -> Vec<u8> {
    let mut out = vec![version];
    // Our own types always serialise.
    out.extend(postcard::to_allocvec(v).expect("invariant: cluster types serialise"));
    out
}

/// Splits off the version byte of bounded input.
fn version_of(b: &[u8]) -> Result<(u8, &[u8]), DecodeError> {
    if b.len() > MAX_ENCODED {
        return Err(DecodeError::TooLarge(b.len()));
    }
    b.split_first()
        .map(|(v, rest)| (*v, rest))
        .ok_or(DecodeError::Empty)
}

fn body<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T, DecodeError> {
    postcard::from_bytes(b).map_err(|e| DecodeError::Malformed(e.to_string()))
}

impl Command {
    pub fn encode(&self) -> Vec<u8> {
        encode(COMMAND_VERSION, self)
    }

    pub fn decode(b: &[u8]) -> Result<Command, DecodeError> {
        match version_of(b)? {
            (COMMAND_VERSION, rest) => body(rest),
            (v, _) => Err(DecodeError::Version(v)),
        }
    }
}

fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), ApplyError> {
    if labels.len() > MAX_LABELS {
        return Err(ApplyError::Invalid(format!(
            "more than {MAX_LABELS} labels"
        )));
    }
    for (k, v) in labels {
        if k.is_empty() || k.len() > MAX_LABEL_BYTES || v.len() > MAX_LABEL_BYTES {
            return Err(ApplyError::Invalid(format!(
                "label {k:?} is empty or too long"
            )));
        }
    }
    Ok(())
}

/// The ingress network's id: made from the cluster's, so every manager makes the same.
pub fn ingress_id(cluster_id: &[u8; 16]) -> NetworkId {
    let h = hash(&[b"swarmlet ingress network", &cluster_id[..]]);
    NetworkId(u64::from_le_bytes(
        h[..8].try_into().expect("invariant: a hash is 32 bytes"),
    ))
}

impl ClusterState {
    pub fn new(cluster_id: [u8; 16], tokens: Tokens, spec: ClusterSpec) -> ClusterState {
        ClusterState {
            cluster_id,
            nodes: BTreeMap::new(),
            tokens,
            spec,
            services: Store::default(),
            networks: Networks::new(Pools::default(), ingress_id(&cluster_id)),
        }
    }

    /// Replaces the address pools (at `init`, before any network but ingress exists).
    pub fn with_pools(mut self, pools: Pools) -> ClusterState {
        self.networks = Networks::new(pools, ingress_id(&self.cluster_id));
        for id in self.nodes.keys() {
            self.networks.node_added(*id);
        }
        self
    }

    pub fn encode(&self) -> Vec<u8> {
        encode(STATE_VERSION, self)
    }

    pub fn decode(b: &[u8]) -> Result<ClusterState, DecodeError> {
        match version_of(b)? {
            (STATE_VERSION, rest) => body(rest),
            (STATE_VERSION_3, rest) => {
                let v3: ClusterStateV3 = body(rest)?;
                Ok(ClusterState {
                    cluster_id: v3.cluster_id,
                    nodes: v3.nodes,
                    tokens: v3.tokens,
                    spec: v3.spec,
                    services: v3.services,
                    networks: v3.networks.into(),
                })
            }
            (STATE_VERSION_1, rest) => {
                let v1: ClusterStateV1 = body(rest)?;
                Ok(ClusterState {
                    cluster_id: v1.cluster_id,
                    nodes: v1.nodes,
                    tokens: v1.tokens,
                    spec: ClusterSpec::default(),
                    services: Store::default(),
                    networks: Networks::default(),
                }
                .with_pools(Pools::default()))
            }
            (STATE_VERSION_2, rest) => {
                let v2: ClusterStateV2 = body(rest)?;
                Ok(ClusterState {
                    cluster_id: v2.cluster_id,
                    nodes: v2.nodes,
                    tokens: v2.tokens,
                    spec: v2.spec,
                    services: Store::default(),
                    networks: Networks::default(),
                }
                .with_pools(Pools::default()))
            }
            (v, _) => Err(DecodeError::Version(v)),
        }
    }

    pub fn managers(&self) -> impl Iterator<Item = &NodeRecord> {
        self.nodes.values().filter(|n| n.role == NodeRole::Manager)
    }

    pub fn node_by_key(&self, key: &PeerKey) -> Option<&NodeRecord> {
        self.nodes.get(&node_id(key)).filter(|n| n.key == *key)
    }

    /// Whether `cmd` would apply; the API layer calls this before proposing so users get
    /// the error at once, and `apply` calls it again so every replica agrees.
    pub fn validate(&self, cmd: &Command) -> Result<(), ApplyError> {
        let node = |id: &NodeId| self.nodes.get(id).ok_or(ApplyError::UnknownNode(*id));
        let last_manager = |id: &NodeId| {
            self.nodes
                .get(id)
                .is_some_and(|n| n.role == NodeRole::Manager)
                && self.managers().count() == 1
        };
        match cmd {
            Command::AddNode(n) => {
                if self.nodes.contains_key(&n.id) {
                    return Err(ApplyError::AlreadyMember(n.id));
                }
                if n.id != node_id(&n.key) {
                    return Err(ApplyError::Invalid("id does not match key".into()));
                }
                if n.hostname.is_empty() || n.hostname.len() > MAX_HOSTNAME {
                    return Err(ApplyError::Invalid(format!(
                        "a node name (daemon --hostname) is 1 to {MAX_HOSTNAME} bytes, this one is {}",
                        n.hostname.len()
                    )));
                }
                check_labels(&n.labels)
            }
            Command::RemoveNode(id) => {
                node(id)?;
                if last_manager(id) {
                    return Err(ApplyError::LastManager(*id));
                }
                Ok(())
            }
            Command::SetStatus { id, .. } | Command::SetAddr { id, .. } => node(id).map(|_| ()),
            Command::SetRole { id, role } => {
                node(id)?;
                if *role == NodeRole::Worker && last_manager(id) {
                    return Err(ApplyError::LastManager(*id));
                }
                Ok(())
            }
            Command::UpdateNode {
                id,
                label_add,
                label_rm,
                ..
            } => {
                let mut labels = node(id)?.labels.clone();
                for k in label_rm {
                    labels.remove(k);
                }
                for (k, v) in label_add {
                    labels.insert(k.clone(), v.clone());
                }
                check_labels(&labels)
            }
            Command::RotateToken { .. } => Ok(()),
            Command::Service(c) => {
                self.services.validate(c)?;
                self.networks.with_service(&self.services, c)?;
                Ok(())
            }
            Command::Network(c) => {
                if let NetworkCommand::Attach { node: n, .. } = c.as_ref() {
                    node(n)?;
                }
                Ok(self.networks.validate(&self.services, c)?)
            }
        }
    }

    /// Applies a committed command. An error leaves the state unchanged (and is the
    /// same on every replica, since validation is deterministic).
    pub fn apply(&mut self, cmd: &Command) -> Result<(), ApplyError> {
        self.validate(cmd)?;
        let missing = "invariant: validate checked the node exists";
        match cmd {
            Command::AddNode(n) => {
                self.nodes.insert(n.id, n.clone());
                self.networks.node_added(n.id);
            }
            Command::RemoveNode(id) => {
                self.nodes.remove(id);
                self.services.nodes.remove(id);
                self.networks.node_removed(*id);
            }
            Command::SetStatus { id, status } => {
                self.nodes.get_mut(id).expect(missing).status = *status
            }
            Command::SetAddr { id, addr } => self.nodes.get_mut(id).expect(missing).addr = *addr,
            Command::SetRole { id, role } => self.nodes.get_mut(id).expect(missing).role = *role,
            Command::UpdateNode {
                id,
                availability,
                label_add,
                label_rm,
            } => {
                let n = self.nodes.get_mut(id).expect(missing);
                if let Some(a) = availability {
                    n.availability = *a;
                }
                for k in label_rm {
                    n.labels.remove(k);
                }
                for (k, v) in label_add {
                    n.labels.insert(k.clone(), v.clone());
                }
            }
            Command::RotateToken { role, secret } => match role {
                TokenRole::Worker => self.tokens.worker = *secret,
                TokenRole::Manager => self.tokens.manager = *secret,
            },
            Command::Service(c) => {
                // Checked by `validate`; the store checks again and may still refuse.
                let next = self.networks.with_service(&self.services, c)?;
                self.services.apply(c)?;
                if let Some(next) = next {
                    self.networks = next;
                }
                self.networks.after_tasks(&self.services, c);
            }
            Command::Network(c) => self.networks.apply(&self.services, c)?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod network_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn record(k: u8, role: NodeRole) -> NodeRecord {
        let key = PeerKey([k; 32]);
        NodeRecord {
            id: node_id(&key),
            key,
            addr: SocketAddr::from(([10, 0, 0, k], 2377)),
            hostname: format!("pi-{k}"),
            role,
            availability: Availability::Active,
            labels: BTreeMap::new(),
            status: NodeStatus::Ready,
        }
    }

    fn state() -> ClusterState {
        let mut s = ClusterState::new(
            [1; 16],
            Tokens {
                worker: [2; 16],
                manager: [3; 16],
            },
            ClusterSpec::default(),
        );
        s.apply(&Command::AddNode(record(1, NodeRole::Manager)))
            .unwrap();
        s
    }

    #[test]
    fn node_ids_come_from_keys() {
        assert_eq!(node_id(&PeerKey([1; 32])), node_id(&PeerKey([1; 32])));
        assert_ne!(node_id(&PeerKey([1; 32])), node_id(&PeerKey([2; 32])));
        let mut bad = record(5, NodeRole::Worker);
        bad.id = NodeId(42);
        assert!(matches!(
            state().apply(&Command::AddNode(bad)),
            Err(ApplyError::Invalid(_))
        ));
    }

    #[test]
    fn last_manager_is_protected() {
        let mut s = state();
        let m = record(1, NodeRole::Manager).id;
        assert_eq!(
            s.apply(&Command::RemoveNode(m)),
            Err(ApplyError::LastManager(m))
        );
        assert_eq!(
            s.apply(&Command::SetRole {
                id: m,
                role: NodeRole::Worker
            }),
            Err(ApplyError::LastManager(m))
        );
        let w = record(2, NodeRole::Worker);
        s.apply(&Command::AddNode(w.clone())).unwrap();
        assert_eq!(
            s.apply(&Command::AddNode(w.clone())),
            Err(ApplyError::AlreadyMember(w.id))
        );
        s.apply(&Command::SetRole {
            id: w.id,
            role: NodeRole::Manager,
        })
        .unwrap();
        s.apply(&Command::SetRole {
            id: m,
            role: NodeRole::Worker,
        })
        .unwrap();
        assert_eq!(s.managers().count(), 1);
    }

    #[test]
    fn update_labels_and_availability() {
        let mut s = state();
        let id = record(1, NodeRole::Manager).id;
        s.apply(&Command::UpdateNode {
            id,
            availability: Some(Availability::Drain),
            label_add: vec![
                ("zone".into(), "garage".into()),
                ("gpu".into(), "none".into()),
            ],
            label_rm: vec![],
        })
        .unwrap();
        s.apply(&Command::UpdateNode {
            id,
            availability: None,
            label_add: vec![],
            label_rm: vec!["gpu".into()],
        })
        .unwrap();
        let n = &s.nodes[&id];
        assert_eq!(n.availability, Availability::Drain);
        assert_eq!(n.labels.len(), 1);
        assert_eq!(n.labels["zone"], "garage");
        let too_many: Vec<(String, String)> = (0..=MAX_LABELS)
            .map(|i| (format!("k{i}"), "v".into()))
            .collect();
        let before = s.clone();
        assert!(s
            .apply(&Command::UpdateNode {
                id,
                availability: Some(Availability::Active),
                label_add: too_many,
                label_rm: vec![],
            })
            .is_err());
        assert_eq!(s, before, "a refused command changes nothing");
    }

    #[test]
    fn rotation_and_encoding() {
        let mut s = state();
        s.apply(&Command::RotateToken {
            role: TokenRole::Worker,
            secret: [9; 16],
        })
        .unwrap();
        assert_eq!(s.tokens.worker, [9; 16]);
        assert_eq!(s.tokens.manager, [3; 16]);
        let b = s.encode();
        assert_eq!(ClusterState::decode(&b), Ok(s));
        assert_eq!(ClusterState::decode(&[]), Err(DecodeError::Empty));
        assert_eq!(
            ClusterState::decode(&[9, 1, 2]),
            Err(DecodeError::Version(9))
        );
        assert!(matches!(
            ClusterState::decode(&[STATE_VERSION, 0xff]),
            Err(DecodeError::Malformed(_))
        ));
        let c = Command::SetStatus {
            id: NodeId(3),
            status: NodeStatus::Down,
        };
        assert_eq!(Command::decode(&c.encode()), Ok(c));
    }

    #[test]
    fn state_of_version_one_still_loads() {
        #[derive(Serialize)]
        struct V1<'a> {
            cluster_id: [u8; 16],
            nodes: &'a BTreeMap<NodeId, NodeRecord>,
            tokens: &'a Tokens,
        }
        let s = state();
        let old = encode(
            STATE_VERSION_1,
            &V1 {
                cluster_id: s.cluster_id,
                nodes: &s.nodes,
                tokens: &s.tokens,
            },
        );
        let loaded = ClusterState::decode(&old).unwrap();
        assert_eq!(loaded, s);
        assert_eq!(loaded.spec.snapshot_interval, DEFAULT_SNAPSHOT_INTERVAL);
    }

    #[test]
    fn state_of_version_two_still_loads() {
        #[derive(Serialize)]
        struct V2<'a> {
            cluster_id: [u8; 16],
            nodes: &'a BTreeMap<NodeId, NodeRecord>,
            tokens: &'a Tokens,
            spec: &'a ClusterSpec,
        }
        let mut s = state();
        s.spec.snapshot_interval = 77;
        let old = encode(
            STATE_VERSION_2,
            &V2 {
                cluster_id: s.cluster_id,
                nodes: &s.nodes,
                tokens: &s.tokens,
                spec: &s.spec,
            },
        );
        let loaded = ClusterState::decode(&old).unwrap();
        assert_eq!(loaded, s);
        assert!(loaded.services.services.is_empty());
    }

    #[test]
    fn state_of_version_three_still_loads() {
        use crate::services::network::{Network, PortKey};
        use crate::services::store::TaskId;
        use crate::services::{NetworkId, ServiceId};
        use std::net::Ipv4Addr;
        type Addrs = BTreeMap<NetworkId, Ipv4Addr>;
        #[derive(Serialize)]
        struct N3<'a> {
            pools: &'a crate::services::ipam::Pools,
            nets: &'a BTreeMap<NetworkId, Network>,
            vips: &'a BTreeMap<ServiceId, Addrs>,
            tasks: &'a BTreeMap<TaskId, Addrs>,
            nodes: &'a BTreeMap<NodeId, Ipv4Addr>,
            ports: &'a BTreeMap<PortKey, ServiceId>,
            published: &'a BTreeMap<ServiceId, Vec<u16>>,
        }
        #[derive(Serialize)]
        struct V3<'a> {
            cluster_id: [u8; 16],
            nodes: &'a BTreeMap<NodeId, NodeRecord>,
            tokens: &'a Tokens,
            spec: &'a ClusterSpec,
            services: &'a Store,
            networks: N3<'a>,
        }
        let s = state();
        let n = &s.networks;
        assert!(!n.nets.is_empty(), "ingress is there to carry over");
        let old = encode(
            STATE_VERSION_3,
            &V3 {
                cluster_id: s.cluster_id,
                nodes: &s.nodes,
                tokens: &s.tokens,
                spec: &s.spec,
                services: &s.services,
                networks: N3 {
                    pools: &n.pools,
                    nets: &n.nets,
                    vips: &n.vips,
                    tasks: &n.tasks,
                    nodes: &n.nodes,
                    ports: &n.ports,
                    published: &n.published,
                },
            },
        );
        let loaded = ClusterState::decode(&old).unwrap();
        assert_eq!(loaded, s);
        assert!(loaded.networks.attachments.is_empty());
    }

    #[test]
    fn decoding_garbage_never_panics() {
        let mut x: u64 = 99;
        for n in 0..3000usize {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut b: Vec<u8> = (0..n % 200).map(|i| (x >> (i % 50)) as u8).collect();
            if !b.is_empty() {
                b[0] = STATE_VERSION;
            }
            let _ = ClusterState::decode(&b);
            let _ = Command::decode(&b);
        }
    }
}

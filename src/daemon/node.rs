//! The daemon: one thread, one loop. It owns the transport socket, the unix API socket,
//! and, once this node is in a cluster, Raft (managers), the write-ahead log and gossip.
//!
//! Each turn: wait for a datagram, an API request or the earliest timer of any core;
//! feed it in; then drain every core's outputs (Raft's in the order its docs demand:
//! persist, send, apply). Work per turn is bounded by the cores' own batch limits.

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use smol::channel::{Receiver, Sender};

use crate::api::{InfoView, NodeView, Request, Response};
use crate::cluster::token::{join_psk, JoinToken, TokenRole};
use crate::cluster::{
    self, Availability, ClusterState, Command, NodeRecord, NodeRole, NodeStatus, Tokens,
};
use crate::daemon::server;
use crate::daemon::wal::Wal;
use crate::gossip::{self, Gossip};
use crate::model::DEFAULT_PORT;
use crate::netio::keyfile;
use crate::netio::transport::{os_random, Driver};
use crate::raft::{self, ConfigChange, Index, NodeId, Payload, Raft, Role, Snapshot};
use crate::transport::{self, Event as TEvent, PeerKey, PeerPolicy, Psk, PskId};

/// How long a join waits for the manager's answer. A wrong or rotated token fails the
/// handshake silently (that is the point of the PSK), so silence is the only signal.
const JOIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a follower waits for the leader to answer a forwarded request; a leader that
/// just died is replaced in about a second, so the user retries into the new one.
const FORWARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
/// API requests queued for the loop; more wait in their connection tasks.
const API_QUEUE: usize = 64;
/// Format version of the membership file.
const MEMBERSHIP_VERSION: u8 = 1;
/// PSK ids of join handshakes.
const PSK_WORKER: PskId = PskId(1);
const PSK_MANAGER: PskId = PskId(2);
/// Members use no pre-shared key: their static keys, checked against the cluster state,
/// are what admits them.
const MEMBER_PSK: Psk = [0; 32];

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub listen: Option<SocketAddr>,
    pub advertise: Option<SocketAddr>,
    pub hostname: String,
    pub labels: Vec<(String, String)>,
    /// Insecure registries, CA directory: how this node reaches registries.
    pub registry: crate::image::pull::RegistryConfig,
}

/// What a node remembers about its cluster between restarts.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Membership {
    cluster_id: [u8; 16],
    role: NodeRole,
    listen: SocketAddr,
    advertise: SocketAddr,
    /// Managers as last known: where a restarted node looks for its cluster.
    managers: Vec<(NodeId, PeerKey, SocketAddr)>,
}

/// Messages between daemons, inside the encrypted transport.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum PeerMsg {
    Raft(raft::Message),
    Gossip(gossip::Message),
    JoinRequest {
        role: TokenRole,
        hostname: String,
        advertise: SocketAddr,
        labels: Vec<(String, String)>,
    },
    JoinAccepted {
        cluster_id: [u8; 16],
        role: NodeRole,
        managers: Vec<(NodeId, PeerKey, SocketAddr)>,
    },
    JoinRefused(String),
    /// From a manager to the leader: a join it checked the token for.
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
    /// An API request a manager passes to the leader, for the node `asker`.
    ApiForward {
        id: u64,
        asker: NodeId,
        req: Request,
    },
    ApiReply {
        id: u64,
        resp: Response,
    },
    /// From the leader to a worker just made a manager: start Raft.
    Promoted {
        managers: Vec<(NodeId, PeerKey, SocketAddr)>,
    },
}

/// What gossip carries about each node, so any member can address any other.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct GossipMeta {
    key: PeerKey,
    addr: SocketAddr,
}

const PEER_MSG_VERSION: u8 = 1;

fn encode_peer(m: &PeerMsg) -> Vec<u8> {
    let mut v = vec![PEER_MSG_VERSION];
    v.extend(postcard::to_allocvec(m).expect("invariant: peer messages serialise"));
    v
}

fn decode_peer(b: &[u8]) -> Option<PeerMsg> {
    match b.split_first() {
        Some((&PEER_MSG_VERSION, rest)) => postcard::from_bytes(rest).ok(),
        _ => None,
    }
}

/// A join waiting for its AddNode to commit.
struct PendingJoin {
    key: PeerKey,
    role: NodeRole,
    /// The manager that relays the answer, when the joiner reached a follower.
    via: Option<NodeId>,
}

/// A `node ls` / `node inspect` waiting for its ReadIndex.
struct PendingRead {
    reply: Reply,
    only: Option<Vec<String>>,
    asker: NodeId,
}

/// Where an API answer goes: the local CLI, or a manager that forwarded the request.
#[derive(Clone)]
enum Reply {
    Local(Sender<Response>),
    Remote { to: NodeId, id: u64 },
}

/// An API reply waiting for a Raft commit.
struct PendingReply {
    reply: Reply,
    ok: String,
}

struct Node {
    cfg: DaemonConfig,
    secret: [u8; 32],
    key: PeerKey,
    id: NodeId,
    membership: Option<Membership>,
    driver: Option<Driver>,
    raft: Option<Raft>,
    wal: Option<Wal>,
    cluster: Option<ClusterState>,
    gossip: Option<Gossip>,
    /// Peers we know how to reach (NodeId -> key, address).
    peers: BTreeMap<NodeId, (PeerKey, SocketAddr)>,
    joins: BTreeMap<Index, PendingJoin>,
    replies: BTreeMap<Index, PendingReply>,
    /// Reads waiting for Raft to confirm leadership (ReadIndex), by context.
    reads: BTreeMap<u64, PendingRead>,
    /// Reads confirmed, waiting for the state machine to reach their index.
    ready_reads: Vec<(Index, PendingRead)>,
    next_read: u64,
    /// A `join` this node is waiting on: where to answer the CLI.
    joining: Option<(Sender<Response>, PeerKey, NodeRole)>,
    /// When that join gives up, and the manager address it tried.
    join_deadline: Option<(Instant, SocketAddr)>,
    /// Leader: when each promoted manager was last told to start Raft (repeated until
    /// it answers, since the message can be lost).
    promoted_sent: BTreeMap<NodeId, Instant>,
    /// Requests forwarded to the leader, by id, waiting for its answer until a deadline.
    forwarded: BTreeMap<u64, (Sender<Response>, Instant)>,
    next_forward: u64,
}

/// Decides who may talk to us: current members with no PSK, joiners with a token's.
struct Policy<'a> {
    cluster: Option<&'a ClusterState>,
    known: &'a BTreeMap<NodeId, (PeerKey, SocketAddr)>,
}

impl PeerPolicy for Policy<'_> {
    fn admit(&mut self, peer: &PeerKey, _: std::net::SocketAddr) -> Option<Psk> {
        // Our own state may lag (a restarted manager replays its log only as it learns
        // what is committed), so nodes we know from the membership file or gossip count.
        let member = self.cluster.is_some_and(|c| c.node_by_key(peer).is_some())
            || self.known.values().any(|(k, _)| k == peer);
        member.then_some(MEMBER_PSK)
    }

    fn admit_with(&mut self, peer: &PeerKey, from: SocketAddr, id: PskId) -> Option<Psk> {
        let c = self.cluster?;
        match id {
            PskId::MEMBER => self.admit(peer, from),
            PSK_WORKER => Some(join_psk(TokenRole::Worker, &c.tokens.worker)),
            PSK_MANAGER => Some(join_psk(TokenRole::Manager, &c.tokens.manager)),
            _ => None,
        }
    }
}

/// Runs the daemon until it fails. Holds an exclusive lock on the data directory.
pub fn run(cfg: DaemonConfig) -> anyhow::Result<()> {
    fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create {}", cfg.data_dir.display()))?;
    fs::set_permissions(&cfg.data_dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot set permissions of {}", cfg.data_dir.display()))?;
    let lock_path = cfg.data_dir.join("lock");
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
        |_| {
            anyhow!(
                "another swarmlet daemon is already running on data dir {}",
                cfg.data_dir.display()
            )
        },
    )?;
    let secret = keyfile::load_or_create(&cfg.data_dir.join("node.key"), os_random()?)?;
    let key = PeerKey(transport::noise::public_of(
        &x25519_dalek::StaticSecret::from(secret),
    ));
    let id = cluster::node_id(&key);
    let membership = load_membership(&cfg.data_dir)?;
    let engine = std::sync::Arc::new(super::engine::Engine::open(
        &cfg.data_dir,
        cfg.registry.clone(),
    )?);
    let listener = server::bind_api_socket(&cfg.socket)?;
    let mut node = Node {
        cfg,
        secret,
        key,
        id,
        membership,
        driver: None,
        raft: None,
        wal: None,
        cluster: None,
        gossip: None,
        peers: BTreeMap::new(),
        joins: BTreeMap::new(),
        replies: BTreeMap::new(),
        reads: BTreeMap::new(),
        ready_reads: Vec::new(),
        next_read: 0,
        joining: None,
        join_deadline: None,
        forwarded: BTreeMap::new(),
        next_forward: 0,
        promoted_sent: BTreeMap::new(),
    };
    let ex = smol::LocalExecutor::new();
    let (tx, rx) = smol::channel::bounded(API_QUEUE);
    smol::block_on(ex.run(async {
        ex.spawn(server::accept_loop(listener, tx, engine)).detach();
        if node.membership.is_some() {
            node.resume()?;
        }
        info!("daemon ready, node {} key {}", node.id, node.key);
        server::notify_systemd_ready();
        node.run(rx).await
    }))?;
    drop(lock);
    Ok(())
}

fn load_membership(dir: &Path) -> anyhow::Result<Option<Membership>> {
    let p = dir.join("membership");
    match fs::read(&p) {
        Ok(b) => match b.split_first() {
            Some((&MEMBERSHIP_VERSION, rest)) => Ok(Some(
                postcard::from_bytes(rest).map_err(|e| anyhow!("{}: damaged: {e}", p.display()))?,
            )),
            _ => bail!("{}: unknown format", p.display()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
    }
}

fn save_membership(dir: &Path, m: &Membership) -> anyhow::Result<()> {
    let p = dir.join("membership");
    let tmp = dir.join("membership.tmp");
    let mut b = vec![MEMBERSHIP_VERSION];
    b.extend(postcard::to_allocvec(m)?);
    fs::write(&tmp, &b).with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, &p).with_context(|| format!("cannot write {}", p.display()))?;
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// A seed for a core's RNG. The OS failing to give randomness is not worth dying for
/// here: these seeds only spread timers and probe orders.
fn random_seed() -> u64 {
    os_random().map_or(0x5eed, |r| {
        u64::from_le_bytes([r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]])
    })
}

fn default_listen(l: Option<SocketAddr>) -> SocketAddr {
    l.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)))
}

impl Node {
    fn raft_dir(&self) -> PathBuf {
        self.cfg.data_dir.join("raft")
    }

    fn start_transport(&mut self, listen: SocketAddr) -> anyhow::Result<()> {
        let d = Driver::bind(listen, self.secret, transport::Config::default())
            .with_context(|| format!("cannot listen on {listen}"))?;
        self.driver = Some(d);
        Ok(())
    }

    fn start_gossip(&mut self, advertise: SocketAddr) {
        let meta = postcard::to_allocvec(&GossipMeta {
            key: self.key,
            addr: advertise,
        })
        .expect("invariant: meta serialises");
        let seed = u64::from_le_bytes(
            os_random()
                .map(|r| r[..8].try_into().unwrap_or([0; 8]))
                .unwrap_or([0; 8]),
        );
        let mut g = Gossip::new(
            gossip::Config::default(),
            self.id,
            meta,
            Instant::now(),
            seed,
        );
        for (id, (k, _)) in &self.peers {
            if *k != self.key {
                g.join(*id);
            }
        }
        self.gossip = Some(g);
    }

    /// Opens the WAL and starts Raft from what it holds (nothing, for a new manager: the
    /// leader then sends a snapshot). The cluster state comes from the snapshot, if any.
    fn start_raft(&mut self) -> anyhow::Result<()> {
        let (wal, rec) = Wal::open(&self.raft_dir())?;
        let snap = rec.snapshot.unwrap_or(Snapshot {
            meta: Default::default(),
            data: vec![],
        });
        if !snap.data.is_empty() {
            self.cluster = Some(
                ClusterState::decode(&snap.data).context("raft snapshot holds no cluster state")?,
            );
        }
        self.raft = Some(Raft::restore(
            self.id,
            raft::Config::default(),
            rec.hard,
            snap,
            rec.entries,
            Instant::now(),
            random_seed(),
        ));
        self.wal = Some(wal);
        Ok(())
    }

    /// Restarts from the data dir: no token needed.
    fn resume(&mut self) -> anyhow::Result<()> {
        let m = self.membership.clone().expect("invariant: caller checked");
        self.start_transport(m.listen)?;
        self.add_peers(&m.managers);
        if m.role == NodeRole::Manager {
            self.start_raft()?;
        }
        self.start_gossip(m.advertise);
        Ok(())
    }

    /// Remembers nodes (not ourselves) as members the transport may talk to.
    fn add_peers(&mut self, nodes: &[(NodeId, PeerKey, SocketAddr)]) {
        for (id, k, a) in nodes {
            if *id != self.id {
                self.peers.insert(*id, (*k, *a));
                self.set_member_peer(*k, *a);
            }
        }
    }

    fn set_member_peer(&mut self, key: PeerKey, addr: SocketAddr) {
        if let Some(d) = self.driver.as_mut() {
            let _ = d.endpoint_mut().set_peer(key, addr, MEMBER_PSK);
        }
    }

    async fn run(&mut self, rx: Receiver<(Request, Sender<Response>)>) -> anyhow::Result<()> {
        loop {
            self.drain().await?;
            let deadline = self.next_deadline();
            let got = match self.driver.as_mut() {
                Some(d) => {
                    let mut policy = Policy {
                        cluster: self.cluster.as_ref(),
                        known: &self.peers,
                    };
                    d.turn(&mut policy, deadline, rx.recv()).await?
                }
                None => {
                    let timer = async {
                        match deadline {
                            Some(at) => {
                                async_io::Timer::at(at).await;
                            }
                            None => std::future::pending::<()>().await,
                        }
                        None
                    };
                    smol::future::or(async { Some(rx.recv().await) }, timer).await
                }
            };
            if let Some(Ok((req, reply))) = got {
                self.on_local_api(req, reply);
            }
            self.fire_timers(Instant::now());
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let r = self.raft.as_ref().map(Raft::poll_timeout);
        let g = self.gossip.as_ref().map(Gossip::poll_timeout);
        let j = self.join_deadline.map(|(t, _)| t);
        let f = self.forwarded.values().map(|(_, t)| *t).min();
        [r, g, j, f].into_iter().flatten().min()
    }

    fn fire_timers(&mut self, now: Instant) {
        let late: Vec<u64> = self
            .forwarded
            .iter()
            .filter(|(_, (_, t))| now >= *t)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            if let Some((tx, _)) = self.forwarded.remove(&id) {
                let _ = tx.try_send(Response::Error(
                    "the leader did not answer in time (leadership may be changing); try again"
                        .into(),
                ));
            }
        }
        if let Some((at, addr)) = self.join_deadline {
            if now >= at {
                self.join_deadline = None;
                if let Some((reply, key, _)) = self.joining.take() {
                    let _ = reply.try_send(Response::Error(format!(
                        "no answer from the manager at {addr} within {} s: the token may be wrong or rotated, or the address unreachable",
                        JOIN_TIMEOUT.as_secs()
                    )));
                    if let Some(d) = self.driver.as_mut() {
                        d.endpoint_mut().remove_peer(&key);
                    }
                }
            }
        }
        if let Some(r) = self.raft.as_mut() {
            if r.poll_timeout() <= now {
                r.handle_timeout(now);
            }
        }
        if let Some(g) = self.gossip.as_mut() {
            if g.poll_timeout() <= now {
                g.handle_timeout(now);
            }
        }
    }

    /// Drains every core until none has output left.
    async fn drain(&mut self) -> anyhow::Result<()> {
        loop {
            let mut progress = false;
            if let Some(d) = self.driver.as_mut() {
                let mut events = Vec::new();
                while let Some(e) = d.endpoint_mut().poll_event() {
                    events.push(e);
                }
                for e in events {
                    progress = true;
                    self.on_transport(e);
                }
            }
            progress |= self.drain_raft()?;
            progress |= self.drain_gossip();
            if !progress {
                break;
            }
        }
        if let Some(d) = self.driver.as_mut() {
            d.flush().await?;
        }
        Ok(())
    }

    fn send_to(&mut self, id: NodeId, msg: &PeerMsg) {
        let Some((key, _)) = self.peers.get(&id).copied() else {
            return;
        };
        self.send_key(key, msg);
    }

    fn send_key(&mut self, key: PeerKey, msg: &PeerMsg) {
        if let Some(d) = self.driver.as_mut() {
            let _ = d.send(key, &encode_peer(msg));
        }
    }

    fn on_transport(&mut self, e: TEvent) {
        let TEvent::Message { peer, data } = e else {
            return;
        };
        let Some(msg) = decode_peer(&data) else {
            return;
        };
        let now = Instant::now();
        let from = cluster::node_id(&peer);
        match msg {
            PeerMsg::Raft(m) => {
                if let Some(r) = self.raft.as_mut() {
                    r.step(now, from, m);
                }
            }
            PeerMsg::Gossip(m) => {
                if let Some(g) = self.gossip.as_mut() {
                    g.handle_message(now, from, m);
                }
            }
            PeerMsg::JoinRequest {
                role,
                hostname,
                advertise,
                labels,
            } => self.on_join_request(peer, role, hostname, advertise, labels),
            PeerMsg::JoinAccepted {
                cluster_id,
                role,
                managers,
            } => self.on_join_accepted(peer, cluster_id, role, managers),
            PeerMsg::ForwardJoin {
                joiner,
                role,
                hostname,
                advertise,
                labels,
            } => {
                // Only managers in the state may vouch for a joiner.
                let is_manager = self
                    .cluster
                    .as_ref()
                    .and_then(|c| c.node_by_key(&peer))
                    .is_some_and(|n| n.role == NodeRole::Manager);
                if is_manager {
                    self.propose_join(joiner, role, hostname, advertise, labels, Some(from));
                }
            }
            PeerMsg::JoinRelay { joiner, answer } => {
                if self.raft.as_ref().and_then(Raft::leader) == Some(from) {
                    self.send_key(joiner, &answer);
                }
            }
            PeerMsg::ApiForward { id, asker, req } => {
                let is_member = self
                    .cluster
                    .as_ref()
                    .is_some_and(|c| c.node_by_key(&peer).is_some());
                if is_member && asker == from {
                    self.on_api(req, Reply::Remote { to: from, id }, asker);
                }
            }
            PeerMsg::Promoted { managers } => {
                let from_leader_manager = self.peers.get(&from).is_some_and(|(k, _)| *k == peer);
                if from_leader_manager && self.raft.is_none() {
                    if let Err(e) = self.become_manager(managers) {
                        error!("cannot start as a manager: {e:#}");
                    }
                }
            }
            PeerMsg::ApiReply { id, resp } => {
                if let Some((tx, _)) = self.forwarded.remove(&id) {
                    let _ = tx.try_send(resp);
                }
            }
            PeerMsg::JoinRefused(why) => match self.joining.take() {
                Some((reply, expected, _)) if expected == peer => {
                    self.join_deadline = None;
                    let _ = reply.try_send(Response::Error(format!("join refused: {why}")));
                }
                other => self.joining = other,
            },
        }
    }

    fn on_join_request(
        &mut self,
        peer: PeerKey,
        role: TokenRole,
        hostname: String,
        advertise: SocketAddr,
        labels: Vec<(String, String)>,
    ) {
        let Some(d) = self.driver.as_ref() else {
            return;
        };
        let psk_id = d.endpoint().session_psk_id(&peer);
        let expected = match role {
            TokenRole::Worker => PSK_WORKER,
            TokenRole::Manager => PSK_MANAGER,
        };
        let refuse = |n: &mut Node, why: String| n.send_key(peer, &PeerMsg::JoinRefused(why));
        if psk_id != Some(expected) {
            return refuse(
                self,
                "the join token does not match the role asked for".into(),
            );
        }
        let Some(raft) = self.raft.as_ref() else {
            return refuse(self, "this node is not a manager".into());
        };
        if raft.role() != Role::Leader {
            let Some(leader) = raft.leader() else {
                return refuse(
                    self,
                    "no leader is elected right now; try again in a moment".into(),
                );
            };
            let fwd = PeerMsg::ForwardJoin {
                joiner: peer,
                role,
                hostname,
                advertise,
                labels,
            };
            self.send_to(leader, &fwd);
            return;
        }
        self.propose_join(peer, role, hostname, advertise, labels, None);
    }

    /// Leader: proposes adding a node; the answer goes out when it commits.
    fn propose_join(
        &mut self,
        peer: PeerKey,
        role: TokenRole,
        hostname: String,
        advertise: SocketAddr,
        labels: Vec<(String, String)>,
        via: Option<NodeId>,
    ) {
        let refuse =
            |n: &mut Node, why: String| n.answer_joiner(peer, via, PeerMsg::JoinRefused(why));
        let Some(raft) = self.raft.as_mut().filter(|r| r.role() == Role::Leader) else {
            return refuse(self, "leadership moved; try again".into());
        };
        let id = cluster::node_id(&peer);
        let node_role = match role {
            TokenRole::Worker => NodeRole::Worker,
            TokenRole::Manager => NodeRole::Manager,
        };
        let record = NodeRecord {
            id,
            key: peer,
            addr: advertise,
            hostname,
            role: node_role,
            availability: Availability::Active,
            labels: labels.into_iter().collect(),
            status: NodeStatus::Ready,
        };
        let cmd = Command::AddNode(record);
        if let Some(c) = self.cluster.as_ref() {
            if let Err(e) = c.validate(&cmd) {
                return refuse(self, e.to_string());
            }
        }
        match raft.propose(cmd.encode()) {
            Ok(index) => {
                self.joins.insert(
                    index,
                    PendingJoin {
                        key: peer,
                        role: node_role,
                        via,
                    },
                );
            }
            Err(e) => refuse(self, e.to_string()),
        }
    }

    /// Sends a join answer to the joiner, directly or through the manager it reached.
    fn answer_joiner(&mut self, joiner: PeerKey, via: Option<NodeId>, answer: PeerMsg) {
        match via {
            Some(m) => self.send_to(
                m,
                &PeerMsg::JoinRelay {
                    joiner,
                    answer: Box::new(answer),
                },
            ),
            None => self.send_key(joiner, &answer),
        }
    }

    fn on_join_accepted(
        &mut self,
        from: PeerKey,
        cluster_id: [u8; 16],
        role: NodeRole,
        managers: Vec<(NodeId, PeerKey, SocketAddr)>,
    ) {
        let Some((reply, expected, _)) = self.joining.take() else {
            return;
        };
        if from != expected {
            self.joining = Some((reply, expected, role));
            return;
        }
        let listen = self
            .driver
            .as_ref()
            .and_then(|d| d.local_addr().ok())
            .unwrap_or_else(|| default_listen(None));
        let advertise = self.cfg.advertise.unwrap_or(listen);
        let m = Membership {
            cluster_id,
            role,
            listen,
            advertise,
            managers: managers.clone(),
        };
        if let Err(e) = save_membership(&self.cfg.data_dir, &m) {
            let _ = reply.try_send(Response::Error(format!(
                "joined, but cannot save membership: {e:#}"
            )));
            return;
        }
        self.membership = Some(m);
        self.add_peers(&managers);
        if role == NodeRole::Manager {
            if let Err(e) = self.start_raft() {
                let _ = reply.try_send(Response::Error(format!(
                    "joined, but cannot open the raft log: {e:#}"
                )));
                return;
            }
        }
        self.start_gossip(advertise);
        let _ = reply.try_send(Response::Done(format!(
            "This node joined a swarm as a {}.",
            role_name(role)
        )));
    }

    fn drain_raft(&mut self) -> anyhow::Result<bool> {
        let Some(raft) = self.raft.as_mut() else {
            return Ok(false);
        };
        let Some(ready) = raft.take_ready() else {
            return Ok(false);
        };
        let hard = raft.hard_state();
        let wal = self.wal.as_mut().expect("invariant: managers have a WAL");
        // Durable before anything leaves: a vote or an ack must survive a crash.
        wal.persist(&ready, hard)?;
        for env in ready.messages {
            self.send_to(env.to, &PeerMsg::Raft(env.msg));
        }
        if let Some(s) = ready.snapshot {
            self.cluster = Some(
                ClusterState::decode(&s.data)
                    .context("leader sent a snapshot without cluster state")?,
            );
            self.refresh_peers();
        }
        for e in ready.committed {
            self.apply_entry(e.index, &e.payload);
        }
        for r in ready.reads {
            let Some(pending) = self.reads.remove(&r.ctx) else {
                continue;
            };
            match r.result {
                Ok(index) => self.ready_reads.push((index, pending)),
                Err(e) => self.answer(pending.reply, Response::Error(e.to_string())),
            }
        }
        self.serve_reads();
        self.reconcile_voters();
        self.maybe_step_down_to_worker();
        self.fail_pending_if_not_leader();
        Ok(true)
    }

    fn apply_entry(&mut self, index: Index, payload: &Payload) {
        let Payload::Command(bytes) = payload else {
            return;
        };
        let Ok(cmd) = Command::decode(bytes) else {
            return;
        };
        let result = match self.cluster.as_mut() {
            Some(c) => c.apply(&cmd).map_err(|e| e.to_string()),
            None => Err("no cluster state".into()),
        };
        self.refresh_peers();
        if let Some(j) = self.joins.remove(&index) {
            let msg = match &result {
                Ok(()) => PeerMsg::JoinAccepted {
                    cluster_id: self.cluster.as_ref().map_or([0; 16], |c| c.cluster_id),
                    role: j.role,
                    managers: self.manager_list(),
                },
                Err(e) => PeerMsg::JoinRefused(e.clone()),
            };
            if let Some(c) = &self.cluster {
                if let Some(n) = c.node_by_key(&j.key) {
                    let (k, a) = (n.key, n.addr);
                    if let Some(d) = self.driver.as_mut() {
                        let _ = d.endpoint_mut().set_peer(k, a, MEMBER_PSK);
                    }
                }
            }
            self.answer_joiner(j.key, j.via, msg);
        }
        if let Some(p) = self.replies.remove(&index) {
            let resp = match result {
                Ok(()) => Response::Done(p.ok),
                Err(e) => Response::Error(e),
            };
            self.answer(p.reply, resp);
        }
    }

    fn manager_list(&self) -> Vec<(NodeId, PeerKey, SocketAddr)> {
        self.cluster
            .as_ref()
            .map(|c| c.managers().map(|n| (n.id, n.key, n.addr)).collect())
            .unwrap_or_default()
    }

    /// Keeps the transport's peer table, our address book and the membership file's
    /// manager list in line with the state (a restarted node finds its cluster through
    /// that list).
    fn refresh_peers(&mut self) {
        let Some(c) = &self.cluster else { return };
        let nodes: Vec<(NodeId, PeerKey, SocketAddr)> =
            c.nodes.values().map(|n| (n.id, n.key, n.addr)).collect();
        let managers = self.manager_list();
        let gone: Vec<(NodeId, PeerKey)> = self
            .peers
            .iter()
            .filter(|(id, _)| !c.nodes.contains_key(id))
            .map(|(id, (k, _))| (*id, *k))
            .collect();
        for (id, k) in gone {
            // Removed from the cluster: its key is no longer accepted.
            self.peers.remove(&id);
            if let Some(d) = self.driver.as_mut() {
                d.endpoint_mut().remove_peer(&k);
            }
        }
        self.add_peers(&nodes);
        if let Some(m) = self.membership.as_mut() {
            if m.managers != managers && !managers.is_empty() {
                m.managers = managers;
                let m = m.clone();
                if let Err(e) = save_membership(&self.cfg.data_dir, &m) {
                    error!("cannot save membership: {e:#}");
                }
            }
        }
    }

    /// The leader keeps Raft's voters equal to the managers in the cluster state, one
    /// change at a time.
    fn reconcile_voters(&mut self) {
        let (Some(raft), Some(c)) = (self.raft.as_mut(), self.cluster.as_ref()) else {
            return;
        };
        if raft.role() != Role::Leader {
            return;
        }
        let voters = raft.membership().voters.clone();
        let want: Vec<NodeId> = c.managers().map(|n| n.id).collect();
        let change = want
            .iter()
            .find(|id| !voters.contains(id))
            .map(|id| ConfigChange::AddVoter(*id))
            .or_else(|| {
                voters
                    .iter()
                    .find(|v| !want.contains(v))
                    .map(|v| ConfigChange::Remove(*v))
            });
        match change {
            // Hand leadership over before removing ourselves (a demoted or removed leader).
            Some(ConfigChange::Remove(me)) if me == self.id => {
                if let Some(next) = want.first() {
                    let _ = raft.transfer_leadership(Instant::now(), *next);
                }
            }
            Some(ch) => {
                let _ = raft.propose_config(ch);
            }
            None => {}
        }
        self.nudge_promoted();
    }

    /// A promoted worker runs no Raft until told to; keep telling it (once a second)
    /// until it acknowledges something.
    fn nudge_promoted(&mut self) {
        let Some(progress) = self.raft.as_ref().and_then(Raft::progress) else {
            return;
        };
        let now = Instant::now();
        let silent: Vec<NodeId> = progress
            .iter()
            .filter(|(id, matched)| {
                matched.0 == 0
                    && self.cluster.as_ref().is_some_and(|c| {
                        c.nodes.get(id).is_some_and(|n| n.role == NodeRole::Manager)
                    })
            })
            .map(|(id, _)| *id)
            .filter(|id| {
                self.promoted_sent
                    .get(id)
                    .is_none_or(|t| now.duration_since(*t) >= std::time::Duration::from_secs(1))
            })
            .collect();
        self.promoted_sent
            .retain(|id, _| progress.get(id).is_some_and(|m| m.0 == 0));
        for id in silent {
            self.promoted_sent.insert(id, now);
            let managers = self.manager_list();
            self.send_to(id, &PeerMsg::Promoted { managers });
        }
    }

    /// Linearizable cluster reads: Raft confirms we still lead (a heartbeat round acked by
    /// a majority), then the read is served once our state has applied that far.
    fn start_read(
        &mut self,
        only: Option<Vec<String>>,
        reply: Reply,
        asker: NodeId,
    ) -> Option<Response> {
        let Some(raft) = self.raft.as_mut() else {
            return Some(self.node_list(only.as_deref(), asker));
        };
        self.next_read += 1;
        let ctx = self.next_read;
        raft.read_index(ctx);
        self.reads.insert(ctx, PendingRead { reply, only, asker });
        None
    }

    fn serve_reads(&mut self) {
        let applied = self.raft.as_ref().map_or(Index(0), |r| r.status().applied);
        let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.ready_reads)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        self.ready_reads = later;
        for (_, p) in now {
            let resp = self.node_list(p.only.as_deref(), p.asker);
            self.answer(p.reply, resp);
        }
    }

    /// Answers every request still waiting for a commit once this node is no longer the
    /// leader: the outcome is unknown to us, and the user should hear so, not wait.
    fn fail_pending_if_not_leader(&mut self) {
        if self.raft.as_ref().is_none_or(|r| r.role() == Role::Leader) {
            return;
        }
        let replies = std::mem::take(&mut self.replies);
        for (_, p) in replies {
            self.answer(
                p.reply,
                Response::Error("this manager lost the leadership before the change committed; it may or may not have been applied: check, then retry".into()),
            );
        }
        let joins = std::mem::take(&mut self.joins);
        for (_, j) in joins {
            self.answer_joiner(
                j.key,
                j.via,
                PeerMsg::JoinRefused("the manager lost the leadership; try again".into()),
            );
        }
    }

    /// A manager that was demoted (and is out of Raft's configuration) or removed stops
    /// its Raft and continues as a worker.
    fn maybe_step_down_to_worker(&mut self) {
        let (Some(raft), Some(c)) = (self.raft.as_ref(), self.cluster.as_ref()) else {
            return;
        };
        let demoted = c
            .nodes
            .get(&self.id)
            .is_some_and(|n| n.role == NodeRole::Worker);
        if !demoted || raft.membership().contains(self.id) {
            return;
        }
        self.raft = None;
        self.wal = None;
        self.cluster = None;
        let _ = fs::remove_dir_all(self.raft_dir());
        if let Some(m) = self.membership.as_mut() {
            m.role = NodeRole::Worker;
            let m = m.clone();
            if let Err(e) = save_membership(&self.cfg.data_dir, &m) {
                error!("cannot save membership: {e:#}");
            }
        }
        info!("this node is now a worker");
    }

    /// A worker made a manager: open the log and start Raft with nothing; the leader
    /// sends a snapshot.
    fn become_manager(
        &mut self,
        managers: Vec<(NodeId, PeerKey, SocketAddr)>,
    ) -> anyhow::Result<()> {
        self.start_raft()?;
        self.add_peers(&managers);
        if let Some(m) = self.membership.as_mut() {
            m.role = NodeRole::Manager;
            m.managers = managers;
            let m = m.clone();
            save_membership(&self.cfg.data_dir, &m)?;
        }
        info!("this node is now a manager");
        Ok(())
    }

    fn drain_gossip(&mut self) -> bool {
        let Some(g) = self.gossip.as_mut() else {
            return false;
        };
        let mut out = Vec::new();
        while let Some(t) = g.poll_transmit() {
            out.push(t);
        }
        let mut events = Vec::new();
        while let Some(e) = g.poll_event() {
            events.push(e);
        }
        let progress = !out.is_empty() || !events.is_empty();
        for (to, m) in out {
            self.send_to(to, &PeerMsg::Gossip(m));
        }
        for e in events {
            self.on_gossip(e);
        }
        progress
    }

    fn on_gossip(&mut self, e: gossip::Event) {
        let (id, status) = match e {
            gossip::Event::Alive { id, meta } => {
                if let Ok(m) = postcard::from_bytes::<GossipMeta>(&meta) {
                    if cluster::node_id(&m.key) == id && id != self.id {
                        self.peers.insert(id, (m.key, m.addr));
                        self.set_member_peer(m.key, m.addr);
                    }
                }
                (id, NodeStatus::Ready)
            }
            gossip::Event::Dead { id } | gossip::Event::Left { id } => (id, NodeStatus::Down),
            gossip::Event::Suspect { .. } => return,
        };
        // The leader records what gossip learnt in the replicated state.
        let (Some(raft), Some(c)) = (self.raft.as_mut(), self.cluster.as_ref()) else {
            return;
        };
        if raft.role() == Role::Leader && c.nodes.get(&id).is_some_and(|n| n.status != status) {
            let _ = raft.propose(Command::SetStatus { id, status }.encode());
        }
    }

    // ---- API ----------------------------------------------------------------------

    fn answer(&mut self, reply: Reply, resp: Response) {
        match reply {
            Reply::Local(tx) => {
                let _ = tx.try_send(resp);
            }
            Reply::Remote { to, id } => self.send_to(to, &PeerMsg::ApiReply { id, resp }),
        }
    }

    /// A request from the local CLI. Cluster-wide requests are served by the leader:
    /// a follower manager passes them on and relays the answer.
    fn on_local_api(&mut self, req: Request, reply: Sender<Response>) {
        let needs_leader = matches!(
            req,
            Request::NodeList
                | Request::NodeInspect { .. }
                | Request::NodeUpdate { .. }
                | Request::NodeSetRole { .. }
                | Request::NodeRemove { .. }
                | Request::JoinToken { rotate: true, .. }
        );
        let follower_leader = self
            .raft
            .as_ref()
            .filter(|r| r.role() != Role::Leader)
            .map(Raft::leader);
        match (needs_leader, follower_leader) {
            (true, Some(Some(leader))) => {
                self.next_forward += 1;
                let id = self.next_forward;
                self.forwarded
                    .insert(id, (reply, Instant::now() + FORWARD_TIMEOUT));
                let asker = self.id;
                self.send_to(leader, &PeerMsg::ApiForward { id, asker, req });
            }
            (true, Some(None)) => {
                let _ = reply.try_send(Response::Error(
                    "no leader is elected right now; try again in a moment".into(),
                ));
            }
            _ => {
                let me = self.id;
                self.on_api(req, Reply::Local(reply), me);
            }
        }
    }

    /// Serves a request; `asker` is the node whose CLI asked ("self", the `*` in ls).
    fn on_api(&mut self, req: Request, reply: Reply, asker: NodeId) {
        let resp = match req {
            Request::Image(_) | Request::Container(_) => Some(Response::Error(
                "image and container requests are served by each node itself".into(),
            )),
            Request::Info => Some(Response::Info(self.info())),
            Request::Init { listen, advertise } => Some(
                self.init(listen, advertise)
                    .unwrap_or_else(|e| Response::Error(format!("{e:#}"))),
            ),
            Request::Join {
                token,
                manager,
                listen,
                advertise,
            } => match &reply {
                Reply::Local(tx) => match self.join(&token, manager, listen, advertise, tx.clone())
                {
                    Ok(()) => None,
                    Err(e) => Some(Response::Error(format!("{e:#}"))),
                },
                Reply::Remote { .. } => Some(Response::Error("join is a local request".into())),
            },
            Request::JoinToken { role, rotate } => self.join_token(role, rotate, reply.clone()),
            Request::NodeList => self.start_read(None, reply.clone(), asker),
            Request::NodeInspect { nodes } => self.start_read(Some(nodes), reply.clone(), asker),
            Request::NodeUpdate {
                node,
                availability,
                label_add,
                label_rm,
            } => self.node_update(
                &node,
                availability,
                label_add,
                label_rm,
                reply.clone(),
                asker,
            ),
            Request::Leave { force } => Some(self.leave(force)),
            Request::NodeSetRole { nodes, role } => {
                self.set_roles(&nodes, role, reply.clone(), asker)
            }
            Request::NodeRemove { nodes, force } => {
                self.remove_nodes(&nodes, force, reply.clone(), asker)
            }
        };
        if let Some(r) = resp {
            self.answer(reply, r);
        }
    }

    fn info(&self) -> InfoView {
        InfoView {
            node_id: self.id,
            key: self.key.to_string(),
            cluster_id: self
                .membership
                .as_ref()
                .map(|m| transport::key::encode_hex(&m.cluster_id)),
            role: self.membership.as_ref().map(|m| m.role),
            leader: self.raft.as_ref().and_then(Raft::leader),
            listen: self.driver.as_ref().and_then(|d| d.local_addr().ok()),
            advertise: self.membership.as_ref().map(|m| m.advertise),
        }
    }

    fn init(
        &mut self,
        listen: Option<SocketAddr>,
        advertise: Option<SocketAddr>,
    ) -> anyhow::Result<Response> {
        if self.membership.is_some() {
            bail!("this node is already part of a swarm; leave it first");
        }
        let listen = listen.or(self.cfg.listen);
        self.start_transport(default_listen(listen))?;
        let bound = self
            .driver
            .as_ref()
            .expect("invariant: just started")
            .local_addr()?;
        let mut advertise = advertise.or(self.cfg.advertise).unwrap_or(bound);
        if advertise.ip().is_unspecified() {
            match super::addr::for_init() {
                Ok(ip) => advertise.set_ip(ip),
                Err(e) => {
                    self.driver = None;
                    bail!("--advertise-addr is needed: {e}; name the address other nodes reach this one at");
                }
            }
        }
        let rand = os_random()?;
        let mut cluster_id = [0u8; 16];
        cluster_id.copy_from_slice(&rand[..16]);
        let more = os_random()?;
        let tokens = Tokens {
            worker: more[..16].try_into()?,
            manager: more[16..].try_into()?,
        };
        let mut state = ClusterState::new(cluster_id, tokens);
        state
            .apply(&Command::AddNode(NodeRecord {
                id: self.id,
                key: self.key,
                addr: advertise,
                hostname: self.cfg.hostname.clone(),
                role: NodeRole::Manager,
                availability: Availability::Active,
                labels: self.cfg.labels.iter().cloned().collect(),
                status: NodeStatus::Ready,
            }))
            .map_err(|e| anyhow!("{e}"))?;
        let (wal, _) = Wal::open(&self.raft_dir())?;
        let seed = u64::from_le_bytes(rand[16..24].try_into()?);
        let (mut raft, snap) = Raft::bootstrap(
            self.id,
            raft::Config::default(),
            state.encode(),
            Instant::now(),
            seed,
        );
        let mut wal = wal;
        wal.save_snapshot(&snap, raft.hard_state(), &[])?;
        let m = Membership {
            cluster_id,
            role: NodeRole::Manager,
            listen: bound,
            advertise,
            managers: vec![(self.id, self.key, advertise)],
        };
        save_membership(&self.cfg.data_dir, &m)?;
        self.membership = Some(m);
        // The only voter: lead at once rather than after an election timeout.
        raft.campaign_now(Instant::now());
        self.raft = Some(raft);
        self.wal = Some(wal);
        self.cluster = Some(state);
        self.start_gossip(advertise);
        Ok(Response::Done(format!(
            "Swarm initialized: current node ({}) is now a manager.\n\nTo add a worker to this swarm, run the following command:\n\n    swarmlet join {} {advertise}\n\nTo add a manager to this swarm, run 'swarmlet join-token manager' and follow the instructions.",
            self.id,
            self.token(TokenRole::Worker).map(|t| t.to_string()).unwrap_or_default()
        )))
    }

    fn token(&self, role: TokenRole) -> Option<JoinToken> {
        let c = self.cluster.as_ref()?;
        Some(JoinToken {
            role,
            manager: self.key,
            secret: *c.tokens.secret(role),
        })
    }

    fn join(
        &mut self,
        token: &str,
        manager: SocketAddr,
        listen: Option<SocketAddr>,
        advertise: Option<SocketAddr>,
        reply: Sender<Response>,
    ) -> anyhow::Result<()> {
        if self.membership.is_some() {
            bail!("this node is already part of a swarm; leave it first");
        }
        if self.joining.is_some() {
            bail!("a join is already in progress");
        }
        let t = JoinToken::parse(token)?;
        let started_here = self.driver.is_none();
        if started_here {
            self.start_transport(default_listen(listen.or(self.cfg.listen)))?;
        }
        let bound = self
            .driver
            .as_ref()
            .expect("invariant: started")
            .local_addr()?;
        let mut advertise = advertise.or(self.cfg.advertise).unwrap_or(bound);
        if advertise.ip().is_unspecified() {
            // The source address toward the manager: one it can answer.
            match super::addr::toward(manager) {
                Ok(ip) => advertise.set_ip(ip),
                Err(e) => {
                    if started_here {
                        self.driver = None; // a failed join leaves no port open
                    }
                    bail!("--advertise-addr is needed: no route to the manager {manager} ({e})");
                }
            }
        }
        self.cfg.advertise = Some(advertise);
        let id = match t.role {
            TokenRole::Worker => PSK_WORKER,
            TokenRole::Manager => PSK_MANAGER,
        };
        let d = self.driver.as_mut().expect("invariant: started");
        d.endpoint_mut()
            .set_peer_with(t.manager, manager, t.psk(), id)
            .map_err(|e| anyhow!("{e}"))?;
        let role = match t.role {
            TokenRole::Worker => NodeRole::Worker,
            TokenRole::Manager => NodeRole::Manager,
        };
        self.joining = Some((reply, t.manager, role));
        self.join_deadline = Some((Instant::now() + JOIN_TIMEOUT, manager));
        let msg = PeerMsg::JoinRequest {
            role: t.role,
            hostname: self.cfg.hostname.clone(),
            advertise,
            labels: self.cfg.labels.clone(),
        };
        self.send_key(t.manager, &msg);
        Ok(())
    }

    /// Prints a token, or proposes a new secret (answered when it commits).
    fn join_token(&mut self, role: TokenRole, rotate: bool, reply: Reply) -> Option<Response> {
        if self.raft.is_none() {
            return Some(Response::Error("this node is not a swarm manager".into()));
        }
        if !rotate {
            return Some(match self.token(role) {
                Some(t) => Response::Token(t.to_string()),
                None => Response::Error("this manager has no cluster state yet".into()),
            });
        }
        let Ok(r) = os_random() else {
            return Some(Response::Error("no randomness for a new token".into()));
        };
        let raft = self.raft.as_mut()?;
        let secret: [u8; 16] = r[..16].try_into().unwrap_or([0; 16]);
        match raft.propose(Command::RotateToken { role, secret }.encode()) {
            Ok(index) => {
                self.replies.insert(
                    index,
                    PendingReply {
                        reply,
                        ok: format!("Successfully rotated {role} join token."),
                    },
                );
                None
            }
            Err(e) => Some(Response::Error(format!("{e}"))),
        }
    }

    fn resolve_node(&self, name: &str, asker: NodeId) -> Result<NodeId, String> {
        let c = self
            .cluster
            .as_ref()
            .ok_or("this node is not a swarm manager")?;
        if name == "self" {
            return Ok(asker);
        }
        let hits: Vec<NodeId> = c
            .nodes
            .values()
            .filter(|n| n.hostname == name || n.id.to_string().starts_with(name))
            .map(|n| n.id)
            .collect();
        match hits.as_slice() {
            [one] => Ok(*one),
            [] => Err(format!("node {name} not found")),
            _ => Err(format!(
                "node name {name} is ambiguous ({} matches)",
                hits.len()
            )),
        }
    }

    fn node_list(&self, only: Option<&[String]>, asker: NodeId) -> Response {
        let (Some(c), Some(raft)) = (self.cluster.as_ref(), self.raft.as_ref()) else {
            return Response::Error(
                "this node is not a swarm manager; run `node ls` on a manager".into(),
            );
        };
        let ids: Option<Vec<NodeId>> = match only {
            Some(names) => match names
                .iter()
                .map(|n| self.resolve_node(n, asker))
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(v) => Some(v),
                Err(e) => return Response::Error(e),
            },
            None => None,
        };
        let leader = raft.leader();
        let views = c
            .nodes
            .values()
            .filter(|n| ids.as_ref().is_none_or(|ids| ids.contains(&n.id)))
            .map(|n| {
                let alive = n.id == self.id
                    || self.gossip.as_ref().and_then(|g| g.status_of(n.id))
                        == Some(gossip::Status::Alive);
                let manager_status = (n.role == NodeRole::Manager).then(|| {
                    if Some(n.id) == leader {
                        "Leader".to_string()
                    } else if alive {
                        "Reachable".to_string()
                    } else {
                        "Unreachable".to_string()
                    }
                });
                NodeView {
                    id: n.id,
                    key: n.key.to_string(),
                    hostname: n.hostname.clone(),
                    addr: n.addr,
                    role: n.role,
                    status: n.status,
                    availability: n.availability,
                    manager_status,
                    labels: n
                        .labels
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    is_self: n.id == asker,
                }
            })
            .collect();
        Response::Nodes(views)
    }

    fn node_update(
        &mut self,
        node: &str,
        availability: Option<Availability>,
        label_add: Vec<(String, String)>,
        label_rm: Vec<String>,
        reply: Reply,
        asker: NodeId,
    ) -> Option<Response> {
        let id = match self.resolve_node(node, asker) {
            Ok(id) => id,
            Err(e) => return Some(Response::Error(e)),
        };
        let cmd = Command::UpdateNode {
            id,
            availability,
            label_add,
            label_rm,
        };
        if let Some(Err(e)) = self.cluster.as_ref().map(|c| c.validate(&cmd)) {
            return Some(Response::Error(e.to_string()));
        }
        let raft = self.raft.as_mut()?;
        match raft.propose(cmd.encode()) {
            Ok(index) => {
                self.replies.insert(
                    index,
                    PendingReply {
                        reply,
                        ok: id.to_string(),
                    },
                );
                None
            }
            Err(e) => Some(Response::Error(e.to_string())),
        }
    }
}

impl Node {
    /// Proposes one command per node and answers when the last commits.
    fn propose_all(&mut self, cmds: Vec<Command>, reply: Reply, ok: String) -> Option<Response> {
        if let Some(c) = self.cluster.as_ref() {
            // Check them in sequence, as they will apply.
            let mut trial = c.clone();
            for cmd in &cmds {
                if let Err(e) = trial.apply(cmd) {
                    return Some(Response::Error(e.to_string()));
                }
            }
        }
        let raft = self.raft.as_mut()?;
        let mut last = None;
        for cmd in cmds {
            match raft.propose(cmd.encode()) {
                Ok(i) => last = Some(i),
                Err(e) => return Some(Response::Error(e.to_string())),
            }
        }
        let index = last?;
        self.replies.insert(index, PendingReply { reply, ok });
        None
    }

    fn resolve_all(&self, names: &[String], asker: NodeId) -> Result<Vec<NodeId>, String> {
        if names.is_empty() {
            return Err("name at least one node".into());
        }
        names.iter().map(|n| self.resolve_node(n, asker)).collect()
    }

    fn set_roles(
        &mut self,
        names: &[String],
        role: NodeRole,
        reply: Reply,
        asker: NodeId,
    ) -> Option<Response> {
        let ids = match self.resolve_all(names, asker) {
            Ok(v) => v,
            Err(e) => return Some(Response::Error(e)),
        };
        let verb = if role == NodeRole::Manager {
            "promoted to a manager"
        } else {
            "demoted to a worker"
        };
        let ok = ids
            .iter()
            .map(|id| format!("Node {id} {verb} in the swarm."))
            .collect::<Vec<_>>()
            .join("\n");
        let cmds = ids
            .into_iter()
            .map(|id| Command::SetRole { id, role })
            .collect();
        self.propose_all(cmds, reply, ok)
    }

    fn remove_nodes(
        &mut self,
        names: &[String],
        force: bool,
        reply: Reply,
        asker: NodeId,
    ) -> Option<Response> {
        let ids = match self.resolve_all(names, asker) {
            Ok(v) => v,
            Err(e) => return Some(Response::Error(e)),
        };
        let c = self.cluster.as_ref()?;
        for id in &ids {
            let n = c.nodes.get(id)?;
            if n.role == NodeRole::Manager {
                return Some(Response::Error(format!(
                    "node {} ({}) is a manager; demote it with `swarmlet node demote` before removing it",
                    n.id, n.hostname
                )));
            }
            if n.status == NodeStatus::Ready && !force {
                return Some(Response::Error(format!(
                    "node {} ({}) is not down and can't be removed; stop it first, or use --force",
                    n.id, n.hostname
                )));
            }
        }
        let ok = ids
            .iter()
            .map(|id| id.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        let cmds = ids.into_iter().map(Command::RemoveNode).collect();
        self.propose_all(cmds, reply, ok)
    }

    /// Leaves the swarm: forget the cluster locally. A manager must say --force: its
    /// departure can cost the quorum (or, as the last manager, the swarm).
    fn leave(&mut self, force: bool) -> Response {
        let Some(m) = self.membership.clone() else {
            return Response::Error("this node is not part of a swarm".into());
        };
        if m.role == NodeRole::Manager && !force {
            return Response::Error(
                "this node is a manager: leaving can lose the quorum or, for the last manager, the swarm. Demote it first (`swarmlet node demote`), or use --force".into(),
            );
        }
        if let Some(g) = self.gossip.as_mut() {
            g.leave();
        }
        let _ = self.drain_gossip();
        // Give the goodbye a moment on the wire before the socket goes.
        if let Some(d) = self.driver.as_mut() {
            let _ = smol::block_on(d.flush());
        }
        self.gossip = None;
        self.raft = None;
        self.wal = None;
        self.cluster = None;
        self.driver = None;
        self.peers.clear();
        self.membership = None;
        let _ = fs::remove_dir_all(self.raft_dir());
        if let Err(e) = fs::remove_file(self.cfg.data_dir.join("membership")) {
            return Response::Error(format!("left, but cannot remove the membership file: {e}"));
        }
        Response::Done("Node left the swarm.".into())
    }
}

fn role_name(r: NodeRole) -> &'static str {
    match r {
        NodeRole::Manager => "manager",
        NodeRole::Worker => "worker",
    }
}

//! The whole control plane, simulated: 3 to 7 nodes, each a [`Stack`] (control, Raft and
//! gossip cores) behind a real transport [`Endpoint`] (Noise handshakes, PSKs, the
//! admission policy the daemon uses), on one simulated network ([`super::net`]) and one
//! virtual clock, each with a simulated disk (the membership file, and the Raft log as
//! the `LogWrite`s it was given, applied in order, one job in flight at a time).
//!
//! A workload drives the nodes through API requests as the CLI would: `init`, joins of
//! workers and managers with tokens printed by any manager (so through followers too),
//! stale and garbage tokens, promotions and demotions, label updates, token rotation,
//! `leave`, removal of nodes that are down or left (and, forced, of live ones), `node ls`.
//! Interleaved faults: loss, duplication, reordering, partitions (one node both ways,
//! one way, two sides), crashes that lose the write in flight (a prefix of it may land)
//! and restarts from what was durable, nodes that die for good, and removed nodes that
//! come back from the dead. Then the network heals and the cluster settles. Services
//! run on every node through a simulated agent ([`services`], which says what it checks).
//!
//! Checked on every step:
//! - no two leaders in one Raft term;
//! - committed entries never differ between nodes; an oracle applies them to its own
//!   cluster state, and every manager's state (and every snapshot written to a disk)
//!   equals the oracle's at the same index;
//! - the disk: log writes leave no gap, a hard state's term never goes back, a vote is
//!   never changed within a term, a job at a time;
//! - each node's membership file equals what its control core holds; Raft runs exactly
//!   on managers; a node out of any cluster has no port open;
//! - every API answer answers an open request, once; a join answered Done left the node a
//!   member and its `AddNode` committed, a join answered with an error left it out of any
//!   cluster with no port open; a write answered Done committed; `node ls` shows a
//!   committed state at least as new as anything committed when it was asked;
//! - a removed node is refused: no manager that applied its removal accepts a member
//!   message from it, and it never reappears in the state;
//! - no node loops without time passing; no error is logged.
//!
//! Once settled: one leader; its Raft voters are the managers in the state; managers run
//! Raft and workers do not; every manager applied everything; live members are Ready and
//! dead or departed ones Down; nodes outside the state hold no membership (unless they
//! were removed behind their back, and then no manager admits them); every request got
//! its answer; and a last write through a follower is served.
//!
//! A failure panics with the seed, the events that led to it and the command that
//! replays it: `SIM_SEED=<seed> cargo test --lib sim::control::replay -- --nocapture`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

mod services;

use super::net::{Faults, Net};
use crate::api::{NodeView, Request, Response};
use crate::cluster::token::{JoinToken, TokenRole};
use crate::cluster::{self, Availability, ClusterState, Command, NodeRole, NodeStatus};
use crate::control::{
    Admission, Bound, Identity, Io, LogWrite, Membership, NodeState, RaftLog, RequestId, Stack,
    StackConfig, FORWARD_DEADLINE, JOIN_TIMEOUT, REMOVED_LOG, UNHEARD_GRACE,
};
use crate::gossip;
use crate::logging::Level;
use crate::raft::{Entry, HardState, Index, NodeId, Payload, Role, Snapshot, Term};
use crate::transport::{self, Endpoint, Event as TEvent, PeerKey, PskId};

/// Virtual time with faults and the workload: several elections, dozens of joins and
/// role changes, and a few snapshots at the smallest interval.
const ACTIVE: Duration = Duration::from_secs(30);
/// Quiet time after healing before the settled checks. A join or a forwarded request
/// made just before healing gives up within its timeout, gossip needs a few seconds to
/// bring every node's liveness to the leader, and a leader elected after healing marks
/// Down what gossip never heard of after its grace period.
const SETTLE: Duration = Duration::from_secs(45);
const _: () = assert!(SETTLE.as_secs() >= JOIN_TIMEOUT.as_secs() + 10);
const _: () = assert!(SETTLE.as_secs() >= FORWARD_DEADLINE.as_secs() + 10);
const _: () = assert!(SETTLE.as_secs() >= UNHEARD_GRACE.as_secs() + 10);
/// How long the last write through a follower may take once the cluster has settled.
const PROBE: Duration = Duration::from_secs(10);
/// Events at one instant past which a node is taken to loop without time passing (a
/// timer that does not move): a daemon doing that would spin a core.
const MAX_EVENTS_AT_ONE_INSTANT: u64 = 100_000;
/// API requests one node's CLI has open at once in the workload.
const MAX_OPEN_REQUESTS: usize = 3;
/// Events kept for the report of a failure.
const TRACE_LEN: usize = 300;
const PORT: u16 = 2377;
/// Wall-clock time at the start (for the transport's handshake timestamps).
const WALL_START_NANOS: u64 = 1_700_000_000_000_000_000;

/// What survives a crash.
#[derive(Clone, Debug, Default)]
struct Disk {
    membership: Option<Membership>,
    log: RaftLog,
}

/// A log job being written.
struct Writing {
    job: u64,
    writes: Vec<LogWrite>,
    done_at: Instant,
}

/// What the workload expects a write answered `Done` to have committed.
#[derive(Clone, Debug)]
enum Expect {
    SetRole(NodeId, NodeRole),
    Labels(NodeId, Vec<(String, String)>),
    Remove(NodeId),
    Rotate(TokenRole),
    /// A service create, update, scale or rollback of this name.
    Service(String),
    ServiceRemove,
}

#[derive(Clone, Debug)]
enum Kind {
    Init,
    /// A token print; `joiner` is the node that will use it.
    Token {
        joiner: Option<usize>,
    },
    Join,
    Leave,
    Read,
    Inspect,
    Write(Expect),
    /// Requests whose answer is not checked (error paths).
    Other,
}

/// An API request waiting for its answer.
#[derive(Clone, Debug)]
struct Asked {
    kind: Kind,
    what: String,
    at: Instant,
    /// The highest index committed anywhere when it was asked.
    committed: Index,
}

struct Running {
    stack: Stack,
    endpoint: Option<Endpoint>,
    writing: Option<Writing>,
    open: BTreeMap<RequestId, Asked>,
    agent: services::Agent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Live,
    /// Crashed for good.
    Dead,
    /// Dead, removed from the cluster, and then started again from its disk.
    Zombie,
}

struct Node {
    name: String,
    secret: [u8; 32],
    key: PeerKey,
    id: NodeId,
    addr: SocketAddr,
    disk: Disk,
    /// Its tasks' containers.
    machine: services::Machine,
    run: Option<Running>,
    /// A crashed node comes back at this time.
    restart_at: Option<Instant>,
    fate: Fate,
    /// Left the swarm since its last join: its record stays in the state (Down) until
    /// removed.
    left: bool,
    /// A join of this node was cut short by a crash: the state may hold a record with
    /// nobody behind it.
    orphaned: bool,
    /// Removed from the cluster while holding its membership: it must be refused.
    removed_at: Option<Index>,
    /// Removed while its join's answer was on the way, or soon after it came: a repeat
    /// of that join sent before the answer came may still reach the leader and add it
    /// again (it is a member then, as it believes).
    join_in_flight: bool,
    /// When its last join was answered Done.
    joined_at: Option<Instant>,
    /// A join is being prepared for it (token asked for).
    reserved: bool,
    /// Highest commit index of this node already compared with the oracle.
    seen_commit: Index,
    /// Applied index at which its state was last compared with the oracle.
    checked_applied: Option<Index>,
}

impl Node {
    fn control_state(&self) -> Option<&NodeState> {
        self.run.as_ref().map(|r| r.stack.control().state())
    }

    fn is_idle(&self) -> bool {
        matches!(self.control_state(), Some(NodeState::Idle))
    }

    fn is_manager(&self) -> bool {
        matches!(self.control_state(), Some(NodeState::Manager(_)))
    }

    /// Will not be back in the cluster: dead, or left (its record lingers).
    fn gone(&self) -> bool {
        self.fate != Fate::Live || self.left || self.orphaned || self.removed_at.is_some()
    }
}

/// A node as `node ls` shows it, without what is local to the answering node.
type Row = (
    NodeId,
    NodeRole,
    NodeStatus,
    Availability,
    Vec<(String, String)>,
);

fn rows_of_state(s: &ClusterState) -> Vec<Row> {
    s.nodes
        .values()
        .map(|n| {
            let labels = n
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            (n.id, n.role, n.status, n.availability, labels)
        })
        .collect()
}

fn rows_of_views(v: &[NodeView]) -> Vec<Row> {
    let mut rows: Vec<Row> = v
        .iter()
        .map(|n| (n.id, n.role, n.status, n.availability, n.labels.clone()))
        .collect();
    rows.sort_by_key(|r| r.0);
    rows
}

/// The committed log as the nodes agreed on it, applied to a cluster state of its own.
#[derive(Default)]
struct Oracle {
    /// Index of the bootstrap snapshot; nothing before it exists.
    base: Index,
    entries: BTreeMap<Index, Entry>,
    applied: Index,
    state: Option<ClusterState>,
    /// The state's encoding and rows from each index where it changed.
    history: Vec<(Index, Vec<u8>, Vec<Row>)>,
    /// Committed commands, and whether they applied.
    commands: Vec<(Index, Command, bool)>,
}

impl Oracle {
    fn start(&mut self, index: Index, state: ClusterState) {
        self.base = index;
        self.applied = index;
        self.history
            .push((index, state.encode(), rows_of_state(&state)));
        self.state = Some(state);
    }

    /// Applies the next committed entry; returns the command and whether it applied.
    fn apply(&mut self, e: Entry) -> Option<(Command, bool)> {
        let index = e.index;
        self.applied = index;
        let out = match &e.payload {
            Payload::Command(bytes) => {
                let cmd = Command::decode(bytes).ok()?;
                let state = self.state.as_mut()?;
                let ok = state.apply(&cmd).is_ok();
                if ok {
                    self.history
                        .push((index, state.encode(), rows_of_state(state)));
                }
                self.commands.push((index, cmd.clone(), ok));
                Some((cmd, ok))
            }
            Payload::Noop | Payload::Config(_) => None,
        };
        self.entries.insert(index, e);
        out
    }

    /// Position in `history` of the state as of `index`.
    fn at(&self, index: Index) -> Option<usize> {
        let p = self.history.partition_point(|(i, _, _)| *i <= index);
        p.checked_sub(1)
    }

    fn managers(&self) -> BTreeSet<NodeId> {
        self.state
            .as_ref()
            .map(|s| s.managers().map(|n| n.id).collect())
            .unwrap_or_default()
    }
}

/// What a run did, summed over seeds for the test's own assertions.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub requests: u64,
    pub joins_done: u64,
    pub joins_failed: u64,
    pub managers_joined: u64,
    pub writes_done: u64,
    pub reads_checked: u64,
    pub crashes: u64,
    pub deaths: u64,
    pub zombies: u64,
    pub partitions: u64,
    pub removals: u64,
    pub snapshots_checked: u64,
    pub states_checked: u64,
    pub commits: u64,
    pub max_term: u64,
    pub send_errors: u64,
    /// Member messages a worker accepted from a node removed from the cluster (a worker
    /// holds no cluster state to know better).
    pub removed_heard_by_workers: u64,
    /// Removed nodes the leader told so, which left.
    pub removed_left: u64,
    pub tasks_started: u64,
    pub tasks_rejected: u64,
    pub services_checked: u64,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        self.requests += o.requests;
        self.joins_done += o.joins_done;
        self.joins_failed += o.joins_failed;
        self.managers_joined += o.managers_joined;
        self.writes_done += o.writes_done;
        self.reads_checked += o.reads_checked;
        self.crashes += o.crashes;
        self.deaths += o.deaths;
        self.zombies += o.zombies;
        self.partitions += o.partitions;
        self.removals += o.removals;
        self.snapshots_checked += o.snapshots_checked;
        self.states_checked += o.states_checked;
        self.commits += o.commits;
        self.max_term = self.max_term.max(o.max_term);
        self.send_errors += o.send_errors;
        self.removed_heard_by_workers += o.removed_heard_by_workers;
        self.removed_left += o.removed_left;
        self.tasks_started += o.tasks_started;
        self.tasks_rejected += o.tasks_rejected;
        self.services_checked += o.services_checked;
    }
}

/// An answer to check once the step is over (the node has carried out what came with it).
struct Answered {
    node: usize,
    asked: Asked,
    resp: Response,
}

pub struct Sim {
    seed: u64,
    rng: ChaCha8Rng,
    start: Instant,
    now: Instant,
    net: Net<SocketAddr, Vec<u8>>,
    nodes: Vec<Node>,
    cfg: StackConfig,
    snapshot_interval: u64,
    next_request: RequestId,
    oracle: Oracle,
    leaders: BTreeMap<Term, NodeId>,
    /// Every token printed, for stale-token joins.
    tokens: Vec<String>,
    initialized: bool,
    workload: bool,
    chaos: bool,
    next_work: Instant,
    next_chaos: Instant,
    heal_at: Option<Instant>,
    /// Requests to make once the current step is over.
    followups: Vec<(usize, Request, Kind)>,
    answered: Vec<Answered>,
    /// Snapshots written to a disk, checked once the step is over.
    snapshots: Vec<(usize, Snapshot)>,
    touched: BTreeSet<usize>,
    /// (instant, events at it), to catch loops that do not advance time.
    instant: (Instant, u64),
    trace: VecDeque<String>,
    pub stats: Stats,
    /// When each index was learned committed.
    commit_times: Vec<(Instant, Index)>,
}

fn per_mille(rng: &mut ChaCha8Rng, p: u32) -> bool {
    p > 0 && rng.next_u32() % 1000 < p
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, v: &[T]) -> Option<T> {
    (!v.is_empty()).then(|| v[rng.next_u32() as usize % v.len()])
}

fn millis(rng: &mut ChaCha8Rng, lo: u64, hi: u64) -> Duration {
    Duration::from_millis(lo + rng.next_u64() % (hi - lo + 1))
}

fn short(e: &Response) -> String {
    let mut s = format!("{e:?}");
    if s.len() > 160 {
        let mut end = 160;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

impl Sim {
    pub fn new(seed: u64) -> Sim {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let count = 3 + (seed % 5) as usize;
        let start = Instant::now();
        let faults = Faults {
            loss: [0, 5, 20, 50][rng.next_u32() as usize % 4],
            dup: [0, 10, 30][rng.next_u32() as usize % 3],
            min_latency: Duration::from_micros(100),
            max_latency: Duration::from_micros(500 + u64::from(rng.next_u32() % 5_000)),
            spike: [0, 5, 20][rng.next_u32() as usize % 3],
            spike_latency: Duration::from_millis(80),
        };
        let net = Net::new(rng.next_u64(), faults);
        let nodes = (0..count)
            .map(|i| {
                let mut secret = [0u8; 32];
                rng.fill_bytes(&mut secret);
                let key = PeerKey(transport::noise::public_of(
                    &x25519_dalek::StaticSecret::from(secret),
                ));
                let octet = u8::try_from(i + 1).expect("invariant: at most 7 nodes");
                Node {
                    name: format!("node-{i}"),
                    secret,
                    key,
                    id: cluster::node_id(&key),
                    addr: SocketAddr::from(([10, 0, 0, octet], PORT)),
                    disk: Disk::default(),
                    machine: services::Machine::new(),
                    run: None,
                    restart_at: None,
                    fate: Fate::Live,
                    left: false,
                    orphaned: false,
                    removed_at: None,
                    join_in_flight: false,
                    joined_at: None,
                    reserved: false,
                    seen_commit: Index(0),
                    checked_applied: None,
                }
            })
            .collect();
        let snapshot_interval = [
            cluster::MIN_SNAPSHOT_INTERVAL,
            40,
            cluster::DEFAULT_SNAPSHOT_INTERVAL,
        ][rng.next_u32() as usize % 3];
        let mut sim = Sim {
            seed,
            rng,
            start,
            now: start,
            net,
            nodes,
            cfg: StackConfig::default(),
            snapshot_interval,
            next_request: 0,
            oracle: Oracle::default(),
            leaders: BTreeMap::new(),
            tokens: Vec::new(),
            initialized: false,
            workload: true,
            chaos: true,
            next_work: start,
            // Init and the first joins happen on a quiet network.
            next_chaos: start + Duration::from_secs(1),
            heal_at: None,
            followups: Vec::new(),
            answered: Vec::new(),
            snapshots: Vec::new(),
            touched: BTreeSet::new(),
            instant: (start, 0),
            trace: VecDeque::new(),
            stats: Stats::default(),
            commit_times: Vec::new(),
        };
        for i in 0..count {
            sim.boot(i);
        }
        sim.after_step();
        sim
    }

    // ---- reporting -----------------------------------------------------------------

    fn note(&mut self, what: String) {
        if self.trace.len() >= TRACE_LEN {
            self.trace.pop_front();
        }
        let t = self.now.duration_since(self.start).as_secs_f64();
        self.trace.push_back(format!("{t:9.4}s {what}"));
    }

    fn describe(&self) -> String {
        let mut s = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let _ = write!(s, "  {i} {} {}: fate {:?}", n.name, n.id, n.fate);
            match &n.run {
                None => s.push_str(" down"),
                Some(r) => {
                    let state = match r.stack.control().state() {
                        NodeState::Idle => "idle",
                        NodeState::Initializing(_) => "initializing",
                        NodeState::Joining(_) => "joining",
                        NodeState::Worker(_) => "worker",
                        NodeState::Manager(_) => "manager",
                    };
                    let _ = write!(s, " {state}");
                    if let Some(raft) = r.stack.raft() {
                        let st = raft.status();
                        let _ = write!(
                            s,
                            " raft {:?} {:?} vote {:?} leader {:?} snapshot {} commit {} applied {} last {} voters {:?}",
                            st.role,
                            st.term,
                            raft.hard_state().vote,
                            st.leader,
                            raft.snapshot_index().0,
                            st.commit.0,
                            st.applied.0,
                            st.last_index.0,
                            st.membership.members().collect::<Vec<_>>()
                        );
                    }
                    let c = r.stack.counters();
                    let _ = write!(
                        s,
                        " dropped: undecodable {} not_from_member {} unaddressable {} refusals {} ignored {} proposals_refused {}",
                        c.undecodable,
                        c.not_from_member,
                        c.unaddressable,
                        c.raft_refusals,
                        r.stack.control().counters().messages_ignored,
                        r.stack.control().counters().proposals_refused,
                    );
                    if let Some(ep) = &r.endpoint {
                        let t = ep.stats();
                        let _ = write!(
                            s,
                            " transport: denied {} failed {} gave_up {} completed {} unknown_index {}",
                            t.handshake_denied,
                            t.handshake_failed,
                            t.handshake_gave_up,
                            t.handshakes_completed,
                            t.unknown_index
                        );
                    }
                    if let Some(g) = r.stack.gossip() {
                        let view: Vec<String> = g
                            .members()
                            .map(|(id, st)| {
                                let who = self.nodes.iter().position(|n| n.id == id);
                                format!("{who:?}:{st:?}")
                            })
                            .collect();
                        let _ = write!(s, " gossip [{}]", view.join(" "));
                    }
                    if !r.open.is_empty() {
                        let open: Vec<&str> = r.open.values().map(|a| a.what.as_str()).collect();
                        let _ = write!(s, " open {open:?}");
                    }
                }
            }
            let _ = writeln!(
                s,
                " left {} orphaned {} removed_at {:?}",
                n.left, n.orphaned, n.removed_at
            );
        }
        if let Some(st) = &self.oracle.state {
            let _ = writeln!(s, "  committed (index {}):", self.oracle.applied.0);
            for n in st.nodes.values() {
                let _ = writeln!(
                    s,
                    "    {} {} {:?} {:?} {:?}",
                    n.hostname, n.id, n.role, n.status, n.availability
                );
            }
        }
        s
    }

    fn fail(&self, what: String) -> ! {
        // The story of the failure when one seed is replayed; a run of many seeds only
        // names the failing ones.
        if std::env::var("SIM_SEED").is_ok() {
            eprintln!("---- last events (seed {}):", self.seed);
            for t in &self.trace {
                eprintln!("{t}");
            }
            eprintln!("---- nodes:\n{}", self.describe());
        }
        panic!(
            "control simulation violation with SIM_SEED={seed}: {what}\nreplay: SIM_SEED={seed} cargo test --lib sim::control::replay -- --nocapture",
            seed = self.seed
        )
    }

    // ---- nodes ---------------------------------------------------------------------

    fn identity(&self, i: usize) -> Identity {
        let n = &self.nodes[i];
        Identity {
            id: n.id,
            key: n.key,
            hostname: n.name.clone(),
            labels: vec![("zone".into(), format!("z{}", i % 2))],
            listen: Some(n.addr),
            advertise: Some(n.addr),
        }
    }

    fn endpoint(&mut self, i: usize) -> Endpoint {
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        let elapsed = u64::try_from(self.now.duration_since(self.start).as_nanos())
            .expect("invariant: runs last minutes");
        Endpoint::new(
            transport::Config::default(),
            self.nodes[i].secret,
            seed,
            self.now,
            WALL_START_NANOS + elapsed,
        )
    }

    /// Starts the daemon of node `i` from its disk, as `daemon::node::run` does.
    fn boot(&mut self, i: usize) {
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        let membership = self.nodes[i].disk.membership.clone();
        let resume = membership.is_some();
        let stack = Stack::new(self.identity(i), membership, self.cfg.clone(), seed);
        let endpoint = resume.then(|| self.endpoint(i));
        let n = &mut self.nodes[i];
        n.run = Some(Running {
            stack,
            endpoint,
            writing: None,
            open: BTreeMap::new(),
            agent: services::Agent::new(self.now),
        });
        n.restart_at = None;
        n.checked_applied = None;
        // Each machine's wall clock is off by up to 2 s (edge boxes without NTP): a new
        // leader's clock may be behind the last one's.
        let skew = i64::from(self.rng.next_u32() % 4_000) - 2_000;
        let elapsed = i64::try_from(self.now.duration_since(self.start).as_millis())
            .expect("invariant: runs last minutes");
        let wall = (WALL_START_NANOS / 1_000_000) as i64 + elapsed + skew;
        let now = self.now;
        self.run_mut(i).stack.set_clock(now, wall as u64);
        if resume {
            self.run_mut(i).stack.resume(now);
        }
        self.note(format!("{i} starts (resume {resume})"));
        self.pump(i);
    }

    fn run_mut(&mut self, i: usize) -> &mut Running {
        self.nodes[i]
            .run
            .as_mut()
            .expect("invariant: only running nodes are driven")
    }

    /// Kills node `i`: what was not durable is lost, and of the write in flight, a
    /// prefix of its records may have reached the disk.
    fn crash(&mut self, i: usize, fate: Fate) {
        let Some(run) = self.nodes[i].run.take() else {
            return;
        };
        let mut kept = 0;
        if let Some(w) = run.writing {
            kept = self.rng.next_u32() as usize % (w.writes.len() + 1);
            for write in &w.writes[..kept] {
                if let Err(e) = apply_write(&mut self.nodes[i].disk.log, write) {
                    self.fail(format!("node {i}: {e}"));
                }
            }
        }
        let orphan = run.open.values().any(|a| matches!(a.kind, Kind::Join));
        let open = run.open.len();
        self.agent_dies(i, run.agent, fate);
        let n = &mut self.nodes[i];
        if orphan {
            n.orphaned = true;
        }
        n.reserved = false;
        n.fate = fate;
        self.stats.crashes += 1;
        self.note(format!(
            "{i} crashes ({fate:?}; {open} requests lost, {kept} writes of the job in flight kept)"
        ));
    }

    // ---- driving ---------------------------------------------------------------------

    /// Carries out everything node `i` has to do until it is idle.
    fn pump(&mut self, i: usize) {
        self.touched.insert(i);
        loop {
            let mut progress = false;
            while let Some(io) = self.nodes[i].run.as_mut().and_then(|r| r.stack.poll_io()) {
                progress = true;
                self.carry_out(i, io);
            }
            progress |= self.flush(i);
            let event = self.nodes[i]
                .run
                .as_mut()
                .and_then(|r| r.endpoint.as_mut())
                .and_then(Endpoint::poll_event);
            if let Some(e) = event {
                progress = true;
                if let TEvent::Message { peer, data } = e {
                    self.hand_to_stack(i, peer, &data);
                }
            }
            if !progress {
                return;
            }
        }
    }

    /// Puts node `i`'s datagrams on the wire.
    fn flush(&mut self, i: usize) -> bool {
        let from = self.nodes[i].addr;
        let now = self.now;
        let Some(ep) = self.nodes[i].run.as_mut().and_then(|r| r.endpoint.as_mut()) else {
            return false;
        };
        let mut any = false;
        while let Some(t) = ep.poll_transmit() {
            any = true;
            self.net.send(now, from, t.dest, t.data);
        }
        any
    }

    fn hand_to_stack(&mut self, i: usize, peer: PeerKey, data: &[u8]) {
        let now = self.now;
        let run = self.run_mut(i);
        let psk = run.endpoint.as_ref().and_then(|e| e.session_psk_id(&peer));
        self.check_refused(i, peer, psk);
        self.run_mut(i).stack.handle_message(now, peer, psk, data);
    }

    fn carry_out(&mut self, i: usize, io: Io) {
        let now = self.now;
        match io {
            Io::Send { to, data } => {
                let run = self.run_mut(i);
                let sent = match run.endpoint.as_mut() {
                    Some(ep) => ep.send(now, to, &data).is_ok(),
                    None => false,
                };
                if !sent {
                    self.stats.send_errors += 1;
                }
            }
            Io::Answer { id, resp } => self.on_answer(i, id, resp),
            Io::Assign(a) => self.run_mut(i).agent.assign(now, *a),
            // `service logs` is not asked for here.
            Io::ReadLogs { .. } => {}
            Io::Bind {
                listen, advertise, ..
            } => {
                let addr = self.nodes[i].addr;
                if listen != addr {
                    self.fail(format!("node {i} binds {listen}, not its address {addr}"));
                }
                let open = self.run_mut(i).endpoint.is_some();
                let result = if open {
                    Ok(())
                } else if per_mille(&mut self.rng, 20) {
                    Err(format!(
                        "cannot listen on {listen}: address in use (simulated)"
                    ))
                } else {
                    let ep = self.endpoint(i);
                    self.run_mut(i).endpoint = Some(ep);
                    Ok(())
                };
                let result = result.map(|()| Bound {
                    listen: addr,
                    advertise: advertise.unwrap_or(addr),
                });
                self.note(format!("{i} bind: {result:?}"));
                self.run_mut(i).stack.bound(now, result);
            }
            Io::Unbind => {
                // Goodbyes leave before the port closes.
                self.flush(i);
                self.run_mut(i).endpoint = None;
                self.note(format!("{i} unbinds"));
            }
            Io::SetPeer {
                key,
                addr,
                psk,
                psk_id,
            } => {
                if let Some(ep) = self.run_mut(i).endpoint.as_mut() {
                    if ep.set_peer_with(key, addr, psk, psk_id).is_err() {
                        self.stats.send_errors += 1;
                    }
                }
            }
            Io::RemovePeer(key) => {
                if let Some(ep) = self.run_mut(i).endpoint.as_mut() {
                    ep.remove_peer(&key);
                }
            }
            Io::SaveMembership(m) => {
                let role = m.as_ref().map(|m| m.role);
                self.note(format!("{i} saves membership {role:?}"));
                if m.is_none() {
                    self.run_mut(i).agent.leave(now);
                }
                self.nodes[i].disk.membership = m;
            }
            Io::OpenLog => {
                self.finish_write(i);
                let log = self.nodes[i].disk.log.clone();
                self.note(format!(
                    "{i} opens its log (snapshot {:?}, {} entries)",
                    log.snapshot.as_ref().map(|s| s.meta.index.0),
                    log.entries.len()
                ));
                self.run_mut(i).stack.log_opened(now, log);
            }
            Io::EraseLog => {
                self.finish_write(i);
                self.nodes[i].disk.log = RaftLog::default();
                self.note(format!("{i} erases its log"));
            }
            Io::Persist { job, writes } => {
                if self.run_mut(i).writing.is_some() {
                    self.fail(format!(
                        "node {i}: log job {job} while another is in flight"
                    ));
                }
                for w in &writes {
                    if let LogWrite::Snapshot { snapshot, .. } = w {
                        if self.oracle.state.is_none() {
                            self.bootstrap_oracle(i, snapshot);
                        }
                    }
                }
                // SD cards: usually a few ms, sometimes far longer.
                let latency = if per_mille(&mut self.rng, 50) {
                    millis(&mut self.rng, 50, 150)
                } else {
                    Duration::from_micros(200 + self.rng.next_u64() % 5_000)
                };
                self.run_mut(i).writing = Some(Writing {
                    job,
                    writes,
                    done_at: now + latency,
                });
            }
            Io::Log(level, text) => {
                if text == REMOVED_LOG {
                    self.stats.removed_left += 1;
                }
                if level == Level::Error {
                    self.fail(format!("node {i} logged an error: {text}"));
                }
                self.note(format!("{i} log {level:?}: {text}"));
            }
        }
    }

    /// The write in flight is durable: to the disk, then tell the stack.
    fn finish_write(&mut self, i: usize) {
        let Some(w) = self.run_mut(i).writing.take() else {
            return;
        };
        for write in &w.writes {
            if let Err(e) = apply_write(&mut self.nodes[i].disk.log, write) {
                self.fail(format!("node {i}: {e}"));
            }
            if let LogWrite::Snapshot { snapshot, .. } = write {
                self.snapshots.push((i, snapshot.clone()));
            }
        }
        let now = self.now;
        self.run_mut(i).stack.persisted(now, w.job);
    }

    fn bootstrap_oracle(&mut self, i: usize, snapshot: &Snapshot) {
        match ClusterState::decode(&snapshot.data) {
            Ok(s) => {
                self.note(format!(
                    "{i} bootstraps the cluster at index {}",
                    snapshot.meta.index.0
                ));
                self.oracle.start(snapshot.meta.index, s);
            }
            Err(e) => self.fail(format!("node {i}: bootstrap snapshot holds no state: {e}")),
        }
    }

    /// When node `i` next needs a turn.
    fn deadline(&self, i: usize) -> Option<Instant> {
        let r = self.nodes[i].run.as_ref()?;
        [
            r.stack.poll_timeout(),
            r.endpoint.as_ref().and_then(Endpoint::poll_timeout),
            r.writing.as_ref().map(|w| w.done_at),
            Some(r.agent.deadline()),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn on_timer(&mut self, i: usize) {
        let now = self.now;
        if self.nodes[i]
            .run
            .as_ref()
            .and_then(|r| r.writing.as_ref())
            .is_some_and(|w| w.done_at <= now)
        {
            self.finish_write(i);
        }
        let run = self.run_mut(i);
        if let Some(ep) = run.endpoint.as_mut() {
            if ep.poll_timeout().is_some_and(|t| t <= now) {
                ep.handle_timeout(now);
            }
        }
        if run.stack.poll_timeout().is_some_and(|t| t <= now) {
            run.stack.handle_timeout(now);
        }
        self.pump(i);
        if self.run_mut(i).agent.deadline() <= now {
            self.agent_turn(i);
            self.pump(i);
        }
    }

    fn deliver(&mut self, from: SocketAddr, to: SocketAddr, mut data: Vec<u8>) {
        let Some(i) = self.nodes.iter().position(|n| n.addr == to) else {
            return;
        };
        let now = self.now;
        let Some(run) = self.nodes[i].run.as_mut() else {
            return;
        };
        let Some(ep) = run.endpoint.as_mut() else {
            return;
        };
        ep.handle_datagram(now, from, &mut data, &mut Admission(&run.stack));
        self.pump(i);
    }

    /// Runs `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let mut next = [
                self.net.next_at(),
                self.heal_at,
                (self.workload || !self.initialized).then_some(self.next_work),
                self.chaos.then_some(self.next_chaos),
            ]
            .into_iter()
            .flatten()
            .min();
            for i in 0..self.nodes.len() {
                let t = match &self.nodes[i].run {
                    Some(_) => self.deadline(i),
                    None => self.nodes[i].restart_at,
                };
                next = [next, t].into_iter().flatten().min();
            }
            let Some(t) = next.filter(|t| *t <= end) else {
                break;
            };
            self.advance(t);
            self.step();
            self.after_step();
        }
        self.now = end;
    }

    fn advance(&mut self, t: Instant) {
        let t = t.max(self.now);
        if t == self.instant.0 {
            self.instant.1 += 1;
            if self.instant.1 > MAX_EVENTS_AT_ONE_INSTANT {
                self.fail(format!(
                    "{MAX_EVENTS_AT_ONE_INSTANT} events without time passing: a timer does not move"
                ));
            }
        } else {
            self.instant = (t, 0);
        }
        self.now = t;
    }

    /// Handles one thing that is due.
    fn step(&mut self) {
        let now = self.now;
        if let Some((from, to, data)) = self.net.pop_due(now) {
            return self.deliver(from, to, data);
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].run.is_none() && self.nodes[i].restart_at.is_some_and(|t| t <= now) {
                return self.boot(i);
            }
            if self.nodes[i].run.is_some() && self.deadline(i).is_some_and(|t| t <= now) {
                return self.on_timer(i);
            }
        }
        if self.heal_at.is_some_and(|t| t <= now) {
            self.heal_at = None;
            self.net.heal();
            return self.note("partition healed".into());
        }
        if (self.workload || !self.initialized) && self.next_work <= now {
            self.next_work = now + millis(&mut self.rng, 30, 400);
            return self.work();
        }
        if self.chaos && self.next_chaos <= now {
            self.next_chaos = now + millis(&mut self.rng, 300, 2_500);
            self.chaos_turn();
        }
    }

    /// Makes an API request of node `i`'s CLI.
    fn ask(&mut self, i: usize, req: Request, kind: Kind) {
        if self.nodes[i].run.is_none() {
            // Its CLI cannot reach a daemon that is down: nothing was asked.
            if let Kind::Token { joiner: Some(j) } = kind {
                self.nodes[j].reserved = false;
            }
            self.nodes[i].reserved = false;
            return;
        }
        self.next_request += 1;
        let id = self.next_request;
        let what = format!("#{id} {}", describe_request(&req));
        self.note(format!("{i} asks {what}"));
        let asked = Asked {
            kind,
            what,
            at: self.now,
            committed: self.oracle.applied,
        };
        self.stats.requests += 1;
        let now = self.now;
        let run = self.run_mut(i);
        run.open.insert(id, asked);
        run.stack.handle_api(now, id, req);
        self.pump(i);
    }

    fn on_answer(&mut self, i: usize, id: RequestId, resp: Response) {
        let Some(asked) = self.run_mut(i).open.remove(&id) else {
            self.fail(format!(
                "node {i} answered request #{id}, which is not open (answered twice, or never asked): {}",
                short(&resp)
            ));
        };
        self.note(format!("{i} answers {}: {}", asked.what, short(&resp)));
        self.answered.push(Answered {
            node: i,
            asked,
            resp,
        });
    }

    // ---- checks after each step ----------------------------------------------------------

    fn after_step(&mut self) {
        loop {
            let touched = std::mem::take(&mut self.touched);
            for i in &touched {
                self.check_node(*i);
            }
            for (i, snap) in std::mem::take(&mut self.snapshots) {
                self.check_snapshot(i, &snap);
            }
            for a in std::mem::take(&mut self.answered) {
                self.check_answer(a);
            }
            let followups = std::mem::take(&mut self.followups);
            if followups.is_empty() && self.touched.is_empty() {
                return;
            }
            for (i, req, kind) in followups {
                self.ask(i, req, kind);
            }
        }
    }

    fn check_node(&mut self, i: usize) {
        if let Some(why) = self.inconsistency(i) {
            self.fail(format!("node {i}: {why}"));
        }
        let Some(status) = self.nodes[i]
            .run
            .as_ref()
            .and_then(|r| r.stack.raft())
            .map(|r| r.status())
        else {
            return;
        };
        let id = self.nodes[i].id;
        self.stats.max_term = self.stats.max_term.max(status.term.0);
        if status.role == Role::Leader {
            match self.leaders.get(&status.term).copied() {
                Some(other) if other != id => self.fail(format!(
                    "two leaders in {:?}: {other} and {id} (node {i})",
                    status.term
                )),
                Some(_) => {}
                None => {
                    self.leaders.insert(status.term, id);
                }
            }
        }
        self.capture_commits(i, status.commit);
        self.check_state(i, status.applied);
    }

    /// What is wrong with node `i`'s parts against each other, if anything: its
    /// membership file and its control core, its role and its port and Raft.
    fn inconsistency(&self, i: usize) -> Option<String> {
        let n = &self.nodes[i];
        let run = n.run.as_ref()?;
        let control = run.stack.control();
        let state = control.state();
        if n.disk.membership.as_ref() != control.membership() {
            return Some(format!(
                "membership file {:?} differs from what its control core holds {:?}",
                n.disk.membership,
                control.membership()
            ));
        }
        let role = control.membership().map(|m| m.role);
        let open = run.endpoint.is_some();
        let consistent = match state {
            NodeState::Idle => !open && role.is_none(),
            NodeState::Initializing(_) | NodeState::Joining(_) => role.is_none(),
            NodeState::Worker(_) => role == Some(NodeRole::Worker) && open,
            NodeState::Manager(_) => role == Some(NodeRole::Manager) && open,
        };
        if !consistent {
            return Some(format!(
                "{} with membership role {role:?} and port open {open}",
                state_name(state)
            ));
        }
        let raft = run.stack.raft().is_some();
        if raft != matches!(state, NodeState::Manager(_)) {
            return Some(format!("Raft running {raft} while {}", state_name(state)));
        }
        None
    }

    /// Compares what node `i` holds committed with the oracle, which learns new entries
    /// from it.
    fn capture_commits(&mut self, i: usize, commit: Index) {
        // A lone voter counts an entry committed as it appends it; until the entry is on
        // its disk a crash loses it, and nothing that depends on it has left the node.
        // Committed is what is also durable.
        let log = &self.nodes[i].disk.log;
        let durable = log
            .entries
            .last()
            .map(|e| e.index)
            .or(log.snapshot.as_ref().map(|s| s.meta.index))
            .unwrap_or(Index(0));
        let commit = commit.min(durable);
        let from = self.nodes[i].seen_commit.max(self.oracle.base);
        if commit <= from {
            return;
        }
        for idx in from.0 + 1..=commit.0 {
            let idx = Index(idx);
            let n = &self.nodes[i];
            let raft = n
                .run
                .as_ref()
                .and_then(|r| r.stack.raft())
                .expect("invariant: called for a node running Raft");
            // What Raft holds is authoritative. The disk may still hold an entry that
            // was overwritten (a snapshot install is being written), so it only serves
            // to learn an entry the node compacted away in the step that committed it.
            let in_log = raft.log_entry(idx).cloned();
            let known = self.oracle.entries.get(&idx).cloned();
            let held = match (&known, in_log) {
                (_, Some(e)) => Some(e),
                (Some(_), None) => None,
                (None, None) => n.disk.log.entries.iter().find(|e| e.index == idx).cloned(),
            };
            match (known, held) {
                (Some(known), Some(e)) if known != e => {
                    self.fail(format!(
                        "node {i} holds {e:?} at committed index {}, where {known:?} was committed",
                        idx.0
                    ));
                }
                (Some(_), _) => {}
                (None, Some(e)) => {
                    if idx != self.oracle.applied.next() {
                        self.fail(format!(
                            "node {i} committed index {} but the oracle is at {}",
                            idx.0, self.oracle.applied.0
                        ));
                    }
                    self.learn(e);
                }
                (None, None) => self.fail(format!(
                    "node {i} says index {} is committed but neither its log nor its disk holds it",
                    idx.0
                )),
            }
        }
        self.nodes[i].seen_commit = commit;
    }

    /// The oracle applies a newly committed entry.
    fn learn(&mut self, e: Entry) {
        let index = e.index;
        self.commit_times.push((self.now, index));
        self.stats.commits += 1;
        let Some((cmd, ok)) = self.oracle.apply(e) else {
            return;
        };
        if !ok {
            return;
        }
        match cmd {
            Command::RemoveNode(id) => {
                self.stats.removals += 1;
                if let Some(j) = self.nodes.iter().position(|n| n.id == id) {
                    // Removed behind its back: it still believes it is a member.
                    if self.nodes[j].disk.membership.is_some() {
                        self.nodes[j].removed_at = Some(index);
                    }
                    self.nodes[j].left = false;
                    self.nodes[j].orphaned = false;
                    // Joins repeat every JOIN_RETRY until answered; a repeat sent just
                    // before the answer may arrive after this removal.
                    let window = crate::control::JOIN_RETRY * 2;
                    self.nodes[j].join_in_flight = self.nodes[j]
                        .joined_at
                        .is_some_and(|t| self.now.saturating_duration_since(t) <= window);
                    self.note(format!("removal of {j} committed at {}", index.0));
                }
            }
            Command::AddNode(rec) => {
                if let Some(j) = self.nodes.iter().position(|n| n.id == rec.id) {
                    if std::mem::take(&mut self.nodes[j].join_in_flight) {
                        self.nodes[j].removed_at = None;
                    } else if let Some(at) = self.nodes[j].removed_at {
                        self.fail(format!(
                            "node {j}, removed at index {}, is back in the state at {}",
                            at.0, index.0
                        ));
                    }
                    self.note(format!("{j} added as {:?} at {}", rec.role, index.0));
                }
            }
            Command::SetRole { id, role } => {
                let j = self.nodes.iter().position(|n| n.id == id);
                self.note(format!("{j:?} set to {role:?} at {}", index.0));
            }
            Command::SetStatus { id, status } => {
                let j = self.nodes.iter().position(|n| n.id == id);
                self.note(format!("{j:?} marked {status:?} at {}", index.0));
            }
            _ => {}
        }
    }

    /// A manager's cluster state equals the oracle's at the index it applied.
    fn check_state(&mut self, i: usize, applied: Index) {
        let n = &self.nodes[i];
        let Some(run) = n.run.as_ref() else { return };
        let Some(state) = run.stack.control().cluster() else {
            return;
        };
        if run.stack.write_in_flight() || n.checked_applied == Some(applied) {
            return;
        }
        if applied > self.oracle.applied {
            self.fail(format!(
                "node {i} applied index {} beyond what was committed ({})",
                applied.0, self.oracle.applied.0
            ));
        }
        let Some(at) = self.oracle.at(applied) else {
            return;
        };
        if state.encode() != self.oracle.history[at].1 {
            let want = ClusterState::decode(&self.oracle.history[at].1);
            self.fail(format!(
                "node {i}: cluster state at index {} differs from the committed one\n  node:   {state:?}\n  oracle: {want:?}",
                applied.0
            ));
        }
        self.stats.states_checked += 1;
        self.nodes[i].checked_applied = Some(applied);
    }

    fn check_snapshot(&mut self, i: usize, snap: &Snapshot) {
        let index = snap.meta.index;
        if index > self.oracle.applied {
            self.fail(format!(
                "node {i} wrote a snapshot at index {} beyond what was committed ({})",
                index.0, self.oracle.applied.0
            ));
        }
        let Some(at) = self.oracle.at(index) else {
            return;
        };
        if snap.data != self.oracle.history[at].1 {
            self.fail(format!(
                "node {i} wrote a snapshot at index {} that is not the committed state there",
                index.0
            ));
        }
        self.stats.snapshots_checked += 1;
    }

    /// A removed node's messages are refused by managers that know of its removal.
    fn check_refused(&mut self, i: usize, from: PeerKey, psk: Option<PskId>) {
        let Some(r) = self.nodes.iter().position(|n| n.key == from) else {
            return;
        };
        let Some(removed) = self.nodes[r].removed_at else {
            return;
        };
        // A session keyed with a join token is open to whoever holds the token, and a
        // removed node still does (a node that just joined keeps talking over the session
        // its join opened until the next rekey); the stack takes only a join from it,
        // and a removed node that comes back is caught by the state's checks.
        if psk != Some(PskId::MEMBER) {
            return;
        }
        let Some(run) = self.nodes[i].run.as_ref() else {
            return;
        };
        // The stack takes nothing from a key it does not admit (the leader answers a
        // removed node `Removed`): what must hold is that it does not admit it.
        let admitted = run.stack.control().admits(&from)
            && run.stack.control().cluster().is_some_and(|c| {
                !c.nodes.contains_key(&self.nodes[r].id)
                    && run
                        .stack
                        .raft()
                        .is_some_and(|raft| raft.status().applied >= removed)
            });
        if admitted {
            self.fail(format!(
                "node {i} accepted a message from node {r}, removed at index {}",
                removed.0
            ));
        }
        if matches!(run.stack.control().state(), NodeState::Worker(_)) {
            self.stats.removed_heard_by_workers += 1;
        }
    }

    fn check_answer(&mut self, a: Answered) {
        let i = a.node;
        match (a.asked.kind.clone(), a.resp) {
            (Kind::Init, Response::Done(_)) => {
                self.initialized = true;
                if !self.nodes[i].is_manager() {
                    self.fail(format!(
                        "node {i}: init answered Done, but it is no manager"
                    ));
                }
            }
            (Kind::Init, _) => {}
            (Kind::Token { joiner }, Response::Token(t)) => {
                self.tokens.push(t.clone());
                if let Some(j) = joiner {
                    self.join_with(j, i, t);
                }
            }
            (Kind::Token { joiner }, _) => {
                if let Some(j) = joiner {
                    self.nodes[j].reserved = false;
                }
            }
            (Kind::Join, resp) => self.check_join(i, &a.asked, resp),
            (Kind::Leave, Response::Done(_)) => {
                self.nodes[i].left = true;
                let n = &self.nodes[i];
                if !n.is_idle() || n.disk.membership.is_some() {
                    self.fail(format!("node {i} left, but is not out of the cluster"));
                }
            }
            (Kind::Leave, _) => {}
            (Kind::Read, Response::Nodes(views)) => self.check_read(i, &a.asked, &views),
            (Kind::Read, _) | (Kind::Inspect, _) | (Kind::Other, _) => {}
            (Kind::Write(expect), Response::Done(_)) => self.check_write(i, &a.asked, &expect),
            (Kind::Write(_), _) => {}
        }
    }

    fn check_join(&mut self, i: usize, asked: &Asked, resp: Response) {
        self.nodes[i].reserved = false;
        let n = &self.nodes[i];
        let id = n.id;
        let run = n.run.as_ref().expect("invariant: it answered");
        let member = matches!(
            n.control_state(),
            Some(NodeState::Worker(_) | NodeState::Manager(_))
        );
        let has_membership = n.disk.membership.is_some();
        let open = run.endpoint.is_some();
        let state = state_name(run.stack.control().state());
        let manager = n.is_manager();
        if let Response::Done(_) = resp {
            self.stats.joins_done += 1;
            self.nodes[i].joined_at = Some(self.now);
            self.stats.managers_joined += u64::from(manager);
            self.nodes[i].left = false;
            self.nodes[i].orphaned = false;
            if !member || !has_membership {
                self.fail(format!("node {i}: join answered Done, but it is no member"));
            }
            // Committed: added since it asked, or (a node that left, or whose first
            // answer was lost) already there and accepted again. A manager's join is
            // answered once the state reaches it (or at a deadline), and a user may have
            // demoted or removed it meanwhile: the state must have held it so at some
            // point since it asked.
            let role = self.nodes[i].disk.membership.as_ref().map(|m| m.role);
            let asked_at = asked.committed;
            let held = |rows: &[Row]| {
                rows.iter()
                    .any(|(rid, rrole, ..)| *rid == id && Some(*rrole) == role)
            };
            let mut since = self.oracle.history.iter().rev();
            let added = since
                .by_ref()
                .take_while(|(index, _, _)| *index > asked_at)
                .any(|(_, _, rows)| held(rows))
                || self
                    .oracle
                    .history
                    .iter()
                    .rev()
                    .find(|(index, _, _)| *index <= asked_at)
                    .is_some_and(|(_, _, rows)| held(rows));
            if !added {
                self.fail(format!(
                    "node {i}: join answered Done as a {role:?}, but the committed state does not hold it so"
                ));
            }
            // Removed while its answer was on the way: it is a member that does not
            // know it was removed, like one removed after joining.
            let in_state = self
                .oracle
                .state
                .as_ref()
                .is_some_and(|s| s.nodes.contains_key(&id));
            if !in_state {
                self.nodes[i].join_in_flight = true;
                self.nodes[i].removed_at =
                    self.oracle
                        .commands
                        .iter()
                        .rev()
                        .find_map(|(index, cmd, ok)| {
                            (*ok && matches!(cmd, Command::RemoveNode(r) if *r == id))
                                .then_some(*index)
                        });
            }
        } else {
            self.stats.joins_failed += 1;
            if state != "idle" || has_membership || open {
                self.fail(format!(
                    "node {i}: join failed ({}), but the node is not cleanly out (state {state}, membership {has_membership}, port open {open})",
                    short(&resp),
                ));
            }
            // Out of the state too, unless its record was there before (it left, or an
            // earlier join was cut short by a crash), or a user removed it again before
            // its join could learn it was in.
            let added = self.oracle.commands.iter().any(|(index, cmd, ok)| {
                *ok && *index > asked.committed && matches!(cmd, Command::AddNode(r) if r.id == id)
            });
            let within = format!("within {} s", JOIN_TIMEOUT.as_secs());
            let still_in = self
                .oracle
                .state
                .as_ref()
                .is_some_and(|s| s.nodes.contains_key(&id));
            // A join that timed out cannot know whether its node was added (the entry
            // may commit after the deadline, or its answer may be lost), and says so;
            // joining again completes it.
            let timed_out = matches!(&resp, Response::Error(e) if e.contains(&within));
            if timed_out {
                // Like a join cut short by a crash: its record may stay with nobody
                // behind it (Down, for a user to remove or the node to join again).
                self.nodes[i].orphaned = true;
            }
            let n = &self.nodes[i];
            if added && still_in && !timed_out && !n.left && !n.orphaned {
                self.fail(format!(
                    "node {i}: {} failed ({}), but the cluster added the node",
                    asked.what,
                    short(&resp)
                ));
            }
        }
    }

    /// `node ls` shows a committed state no older than what was committed when it was
    /// asked (ReadIndex reads are linearizable).
    fn check_read(&mut self, i: usize, asked: &Asked, views: &[NodeView]) {
        let rows = rows_of_views(views);
        let Some(first) = self.oracle.at(asked.committed) else {
            return;
        };
        let found = self.oracle.history[first..]
            .iter()
            .any(|(_, _, r)| *r == rows);
        if !found {
            self.fail(format!(
                "node {i}: {} answered {rows:?}, no committed state since index {}",
                asked.what, asked.committed.0
            ));
        }
        self.stats.reads_checked += 1;
    }

    fn check_write(&mut self, i: usize, asked: &Asked, expect: &Expect) {
        let committed = self.oracle.commands.iter().any(|(index, cmd, ok)| {
            *ok && *index > asked.committed
                && match (expect, cmd) {
                    (Expect::SetRole(id, role), Command::SetRole { id: c, role: r }) => {
                        id == c && role == r
                    }
                    (
                        Expect::Labels(id, add),
                        Command::UpdateNode {
                            id: c, label_add, ..
                        },
                    ) => id == c && add == label_add,
                    (Expect::Remove(id), Command::RemoveNode(c)) => id == c,
                    (Expect::Rotate(role), Command::RotateToken { role: r, .. }) => role == r,
                    (Expect::Service(_) | Expect::ServiceRemove, c) => {
                        Self::service_write_matches(expect, c)
                    }
                    _ => false,
                }
        });
        if !committed {
            self.fail(format!(
                "node {i}: {} answered Done, but nothing like it committed since index {}",
                asked.what, asked.committed.0
            ));
        }
        self.stats.writes_done += 1;
    }

    // ---- the workload ----------------------------------------------------------------

    /// Nodes whose CLI can take one more request.
    fn cli_free(&self, i: usize) -> bool {
        let n = &self.nodes[i];
        n.fate == Fate::Live
            && n.removed_at.is_none()
            && n.run
                .as_ref()
                .is_some_and(|r| r.open.len() < MAX_OPEN_REQUESTS)
    }

    fn managers(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| {
                self.cli_free(*i)
                    && self.nodes[*i]
                        .run
                        .as_ref()
                        .is_some_and(|r| r.stack.control().cluster().is_some())
            })
            .collect()
    }

    fn in_state(&self) -> Vec<usize> {
        let Some(s) = &self.oracle.state else {
            return vec![];
        };
        (0..self.nodes.len())
            .filter(|i| s.nodes.contains_key(&self.nodes[*i].id))
            .collect()
    }

    fn state_role(&self, i: usize) -> Option<NodeRole> {
        self.oracle
            .state
            .as_ref()?
            .nodes
            .get(&self.nodes[i].id)
            .map(|r| r.role)
    }

    /// Whether a majority of the voters stays alive if `lose` managers more are gone.
    /// One change of the voters at a time: none while another is asked for or the
    /// leader's configuration does not yet match the state.
    fn quorum_survives(&self, lose: &[usize]) -> bool {
        let busy = self.nodes.iter().any(|n| {
            n.run
                .iter()
                .flat_map(|r| r.open.values())
                .any(|a| matches!(a.kind, Kind::Leave | Kind::Write(Expect::SetRole(..))))
        });
        let settled = self.nodes.iter().any(|n| {
            n.run
                .as_ref()
                .and_then(|r| r.stack.raft())
                .is_some_and(|r| {
                    let m = r.membership();
                    r.role() == Role::Leader
                        && !r.config_pending()
                        && m.learners.is_empty()
                        && m.voters == self.oracle.managers()
                })
        });
        if busy || !settled {
            return false;
        }
        // The configuration as the leader has it (every manager's while none leads).
        let configs: Vec<&crate::raft::Membership> = self
            .nodes
            .iter()
            .filter_map(|n| n.run.as_ref().and_then(|r| r.stack.raft()))
            .filter(|r| r.role() == Role::Leader)
            .map(|r| r.membership())
            .collect();
        let (mut voters, mut learners) = (BTreeSet::new(), BTreeSet::new());
        let mut add = |m: &crate::raft::Membership| {
            voters.extend(m.voters.iter().copied());
            learners.extend(m.learners.iter().copied());
        };
        if configs.is_empty() {
            for n in &self.nodes {
                if let Some(r) = n.run.as_ref().and_then(|r| r.stack.raft()) {
                    add(r.membership());
                }
            }
        } else {
            configs.into_iter().for_each(add);
        }
        // Demotions and forced leaves in flight count as done; promotions in flight, and
        // learners, may become voters (the leader promotes a learner that answered,
        // before gossip tells it the learner has died since).
        let mut losing: BTreeSet<NodeId> = lose.iter().map(|i| self.nodes[*i].id).collect();
        for n in &self.nodes {
            for a in n.run.iter().flat_map(|r| r.open.values()) {
                match &a.kind {
                    Kind::Write(Expect::SetRole(id, NodeRole::Worker)) => {
                        losing.insert(*id);
                    }
                    Kind::Write(Expect::SetRole(id, NodeRole::Manager)) => {
                        learners.insert(*id);
                    }
                    Kind::Leave => {
                        losing.insert(n.id);
                    }
                    _ => {}
                }
            }
        }
        // Voters the state no longer has as managers are on their way out.
        let managers = self.oracle.managers();
        let gone = |id: &NodeId| {
            losing.contains(id)
                || !managers.contains(id)
                || self.nodes.iter().any(|n| n.id == *id && n.gone())
        };
        // A voter counts only if every leader has it caught up: one far behind, or one
        // the leader cannot reach (it may not know the leader, who joined after its
        // state), votes for nobody useful. `node ls` shows it Unreachable; an operator
        // would not force another manager out then.
        let caught_up = |id: &NodeId| {
            self.nodes
                .iter()
                .filter_map(|n| n.run.as_ref().and_then(|r| r.stack.raft()))
                .filter(|r| r.role() == Role::Leader)
                .all(|r| {
                    *id == r.id()
                        || r.progress()
                            .and_then(|p| p.get(id).copied())
                            .is_some_and(|m| m >= r.status().commit)
                })
        };
        let alive = voters
            .iter()
            .filter(|id| !gone(id) && caught_up(id))
            .count();
        let dead_learners = learners.iter().filter(|id| gone(id)).count();
        alive * 2 > voters.len() + dead_learners
    }

    fn work(&mut self) {
        if !self.initialized {
            if self.cli_free(0)
                && self.nodes[0].is_idle()
                && self.nodes[0]
                    .run
                    .as_ref()
                    .is_some_and(|r| r.open.is_empty())
            {
                let req = Request::Init {
                    listen: None,
                    advertise: None,
                    snapshot_interval: Some(self.snapshot_interval),
                    pools: None,
                };
                self.ask(0, req, Kind::Init);
            }
            return;
        }
        match self.rng.next_u32() % 100 {
            0..=19 => self.work_join(),
            20..=23 => self.work_rotate(),
            24..=33 => self.work_set_role(),
            34..=42 => self.work_labels(),
            43..=49 => self.work_remove(),
            50..=53 => self.work_leave(),
            54..=66 => self.work_read(),
            67..=69 => self.work_kill(),
            70..=72 => self.work_zombie(),
            73..=76 => self.work_odd_join(),
            77..=79 => self.work_misdirected(),
            _ => self.work_service(),
        }
    }

    fn work_join(&mut self) {
        let idle: Vec<usize> = (0..self.nodes.len())
            .filter(|i| {
                let n = &self.nodes[*i];
                self.cli_free(*i)
                    && n.is_idle()
                    && !n.reserved
                    && n.run.as_ref().is_some_and(|r| r.open.is_empty())
            })
            .collect();
        let managers = self.managers();
        let (Some(j), Some(m)) = (pick(&mut self.rng, &idle), pick(&mut self.rng, &managers))
        else {
            return;
        };
        let role = if self.rng.next_u32() % 10 < 3 {
            TokenRole::Manager
        } else {
            TokenRole::Worker
        };
        self.nodes[j].reserved = true;
        let req = Request::JoinToken {
            role,
            rotate: false,
        };
        self.ask(m, req, Kind::Token { joiner: Some(j) });
    }

    /// Node `j` joins through node `m` with `token` (printed by `m`).
    fn join_with(&mut self, j: usize, m: usize, token: String) {
        let n = &self.nodes[j];
        if !(n.reserved && n.is_idle() && self.cli_free(j)) {
            self.nodes[j].reserved = false;
            return;
        }
        let req = Request::Join {
            token,
            manager: self.nodes[m].addr,
            listen: None,
            advertise: None,
        };
        self.followups.push((j, req, Kind::Join));
    }

    /// Joins with a token that may be stale (rotated since), or is garbage.
    fn work_odd_join(&mut self) {
        let idle: Vec<usize> = (0..self.nodes.len())
            .filter(|i| {
                let n = &self.nodes[*i];
                self.cli_free(*i) && n.is_idle() && !n.reserved
            })
            .collect();
        let Some(j) = pick(&mut self.rng, &idle) else {
            return;
        };
        let (token, m) = match self.tokens.len() {
            0 => return,
            len if self.rng.next_u32() % 5 != 0 => {
                let t = self.tokens[self.rng.next_u32() as usize % len].clone();
                let Ok(parsed) = JoinToken::parse(&t) else {
                    return;
                };
                let Some(m) = self.nodes.iter().position(|n| n.key == parsed.manager) else {
                    return;
                };
                (t, m)
            }
            _ => ("SWLT-1-w-garbage".to_string(), 0),
        };
        let req = Request::Join {
            token,
            manager: self.nodes[m].addr,
            listen: None,
            advertise: None,
        };
        self.ask(j, req, Kind::Join);
    }

    fn work_rotate(&mut self) {
        let managers = self.managers();
        let Some(m) = pick(&mut self.rng, &managers) else {
            return;
        };
        let role = if self.rng.next_u32() % 2 == 0 {
            TokenRole::Worker
        } else {
            TokenRole::Manager
        };
        let req = Request::JoinToken { role, rotate: true };
        self.ask(m, req, Kind::Write(Expect::Rotate(role)));
    }

    fn work_set_role(&mut self) {
        let managers = self.managers();
        let Some(m) = pick(&mut self.rng, &managers) else {
            return;
        };
        let members = self.in_state();
        // Managers that will not be back go first: they hold a vote nobody casts.
        let gone: Vec<usize> = members
            .iter()
            .copied()
            .filter(|t| self.nodes[*t].gone() && self.state_role(*t) == Some(NodeRole::Manager))
            .collect();
        let t = if !gone.is_empty() && self.rng.next_u32() % 2 == 0 {
            pick(&mut self.rng, &gone)
        } else {
            pick(&mut self.rng, &members)
        };
        let Some(t) = t else { return };
        let role = match self.state_role(t) {
            Some(NodeRole::Manager) => {
                if !self.quorum_survives(&[t]) {
                    return;
                }
                NodeRole::Worker
            }
            _ => {
                // Only nodes that are there to vote become voters, one change at a time.
                if self.nodes[t].gone() || !self.quorum_survives(&[]) {
                    return;
                }
                NodeRole::Manager
            }
        };
        let req = Request::NodeSetRole {
            nodes: vec![self.nodes[t].name.clone()],
            role,
        };
        let id = self.nodes[t].id;
        self.ask(m, req, Kind::Write(Expect::SetRole(id, role)));
    }

    fn work_labels(&mut self) {
        let managers = self.managers();
        let members = self.in_state();
        let (Some(m), Some(t)) = (
            pick(&mut self.rng, &managers),
            pick(&mut self.rng, &members),
        ) else {
            return;
        };
        let add = vec![(
            format!("k{}", self.rng.next_u32() % 4),
            format!("v{}", self.rng.next_u32() % 100),
        )];
        let rm = if self.rng.next_u32() % 3 == 0 {
            vec![format!("k{}", self.rng.next_u32() % 4)]
        } else {
            vec![]
        };
        let availability = match self.rng.next_u32() % 8 {
            0 => Some(Availability::Drain),
            1 => Some(Availability::Active),
            2 => Some(Availability::Pause),
            _ => None,
        };
        let req = Request::NodeUpdate {
            node: self.nodes[t].name.clone(),
            availability,
            label_add: add.clone(),
            label_rm: rm,
        };
        let id = self.nodes[t].id;
        self.ask(m, req, Kind::Write(Expect::Labels(id, add)));
    }

    fn work_remove(&mut self) {
        let managers = self.managers();
        let Some(m) = pick(&mut self.rng, &managers) else {
            return;
        };
        let members = self.in_state();
        let gone: Vec<usize> = members
            .iter()
            .copied()
            .filter(|t| self.nodes[*t].gone())
            .collect();
        let live_workers: Vec<usize> = members
            .iter()
            .copied()
            .filter(|t| !self.nodes[*t].gone() && self.state_role(*t) == Some(NodeRole::Worker))
            .collect();
        let t = if !gone.is_empty() && self.rng.next_u32() % 8 != 0 {
            pick(&mut self.rng, &gone)
        } else {
            pick(&mut self.rng, &live_workers)
        };
        let Some(t) = t else { return };
        let force = self.rng.next_u32() % 3 != 0;
        let req = Request::NodeRemove {
            nodes: vec![self.nodes[t].name.clone()],
            force,
        };
        let id = self.nodes[t].id;
        self.ask(m, req, Kind::Write(Expect::Remove(id)));
    }

    fn work_leave(&mut self) {
        let members: Vec<usize> = (0..self.nodes.len())
            .filter(|i| {
                self.cli_free(*i)
                    && matches!(
                        self.nodes[*i].control_state(),
                        Some(NodeState::Worker(_) | NodeState::Manager(_))
                    )
            })
            .collect();
        let Some(t) = pick(&mut self.rng, &members) else {
            return;
        };
        let force = if self.nodes[t].is_manager() {
            // Without --force it is refused; with it, the quorum must survive.
            self.rng.next_u32() % 2 == 0 && self.quorum_survives(&[t])
        } else {
            false
        };
        self.ask(t, Request::Leave { force }, Kind::Leave);
    }

    fn work_read(&mut self) {
        let managers = self.managers();
        let any: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.cli_free(*i))
            .collect();
        let asker = if self.rng.next_u32() % 5 == 0 {
            pick(&mut self.rng, &any)
        } else {
            pick(&mut self.rng, &managers)
        };
        let Some(asker) = asker else { return };
        if self.rng.next_u32() % 5 == 0 {
            let members = self.in_state();
            if let Some(t) = pick(&mut self.rng, &members) {
                let req = Request::NodeInspect {
                    nodes: vec![self.nodes[t].name.clone()],
                };
                return self.ask(asker, req, Kind::Inspect);
            }
        }
        self.ask(asker, Request::NodeList, Kind::Read);
    }

    /// A member dies for good (never more than a third of the nodes, and never the
    /// quorum).
    fn work_kill(&mut self) {
        let dead = self.nodes.iter().filter(|n| n.fate != Fate::Live).count();
        if (dead + 1) * 3 > self.nodes.len() {
            return;
        }
        let members: Vec<usize> = self
            .in_state()
            .into_iter()
            .filter(|t| self.nodes[*t].fate == Fate::Live && self.nodes[*t].run.is_some())
            .collect();
        let Some(t) = pick(&mut self.rng, &members) else {
            return;
        };
        if self.state_role(t) == Some(NodeRole::Manager) && !self.quorum_survives(&[t]) {
            return;
        }
        self.stats.deaths += 1;
        self.crash(t, Fate::Dead);
    }

    /// A dead node that was removed comes back from its disk, still believing it is a
    /// member.
    fn work_zombie(&mut self) {
        let removed: Vec<usize> = (0..self.nodes.len())
            .filter(|i| {
                let n = &self.nodes[*i];
                n.fate == Fate::Dead && n.removed_at.is_some() && n.run.is_none()
            })
            .collect();
        let Some(t) = pick(&mut self.rng, &removed) else {
            return;
        };
        self.stats.zombies += 1;
        self.nodes[t].fate = Fate::Zombie;
        self.boot(t);
    }

    /// Requests made of the wrong node: cluster requests of workers and idle nodes,
    /// tokens of workers, leave of idle nodes. Each must be answered with an error.
    fn work_misdirected(&mut self) {
        let any: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.cli_free(*i))
            .collect();
        let Some(t) = pick(&mut self.rng, &any) else {
            return;
        };
        let req = match self.rng.next_u32() % 3 {
            0 => Request::JoinToken {
                role: TokenRole::Worker,
                rotate: false,
            },
            1 => Request::NodeList,
            _ => Request::Info,
        };
        self.ask(t, req, Kind::Other);
    }

    // ---- faults ----------------------------------------------------------------------

    fn chaos_turn(&mut self) {
        let addrs: Vec<SocketAddr> = self.nodes.iter().map(|n| n.addr).collect();
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].run.is_some())
            .collect();
        match self.rng.next_u32() % 12 {
            0 | 1 => {
                if let Some(t) = pick(&mut self.rng, &running) {
                    let fate = self.nodes[t].fate;
                    self.crash(t, fate);
                    let back = millis(&mut self.rng, 200, 5_000);
                    self.nodes[t].restart_at = Some(self.now + back);
                }
            }
            2 => {
                let a = addrs[self.rng.next_u32() as usize % addrs.len()];
                self.net.isolate(a, &addrs);
                self.partitioned(format!("{a} isolated"));
            }
            3 => {
                let a = addrs[self.rng.next_u32() as usize % addrs.len()];
                self.net.deafen(a, &addrs);
                self.partitioned(format!("{a} hears nothing"));
            }
            4 => {
                let cut = 1 + self.rng.next_u32() as usize % (addrs.len() - 1);
                let mut shuffled = addrs.clone();
                for k in (1..shuffled.len()).rev() {
                    let r = self.rng.next_u32() as usize % (k + 1);
                    shuffled.swap(k, r);
                }
                let (l, r) = shuffled.split_at(cut);
                self.net.split(l, r);
                self.partitioned(format!("split {l:?} | {r:?}"));
            }
            5 => {
                self.net.heal();
                self.heal_at = None;
                self.note("partition healed".into());
            }
            7 => self.container_dies(),
            6 => {
                self.net.faults.loss = [0, 5, 20, 50, 100][self.rng.next_u32() as usize % 5];
                self.net.faults.dup = [0, 10, 30][self.rng.next_u32() as usize % 3];
                self.note(format!(
                    "loss {}‰ dup {}‰",
                    self.net.faults.loss, self.net.faults.dup
                ));
            }
            _ => {}
        }
    }

    fn partitioned(&mut self, what: String) {
        self.stats.partitions += 1;
        let d = millis(&mut self.rng, 500, 5_000);
        self.heal_at = Some(self.now + d);
        self.note(format!("partition for {d:?}: {what}"));
    }

    /// Ends the faults and the workload: the network heals and crashed nodes restart.
    pub fn heal(&mut self) {
        self.workload = false;
        self.chaos = false;
        self.heal_at = None;
        self.net.heal();
        self.net.faults = Faults::calm();
        self.note("healed: no more faults or requests".into());
        for i in 0..self.nodes.len() {
            if self.nodes[i].run.is_none() && self.nodes[i].fate != Fate::Dead {
                self.boot(i);
            }
        }
        self.after_step();
    }

    // ---- settled ---------------------------------------------------------------------

    /// After healing and a quiet period: everything agrees and every request was answered.
    pub fn check_settled(&mut self) {
        let Some(state) = self.oracle.state.clone() else {
            if self.initialized {
                self.fail("initialized, but no state committed".into());
            }
            return;
        };
        let leaders: Vec<usize> = (0..self.nodes.len())
            .filter(|i| {
                self.nodes[*i]
                    .run
                    .as_ref()
                    .and_then(|r| r.stack.raft())
                    .is_some_and(|r| r.role() == Role::Leader)
                    && self.nodes[*i].removed_at.is_none()
            })
            .collect();
        let &[leader] = leaders.as_slice() else {
            let why = self.voters_report();
            self.fail(format!("settled with leaders {leaders:?}; {why}"));
        };
        // Voters are managers of the state, and every manager that is up is a voter. A
        // manager that is not (dead, departed, or its join never completed) may be one,
        // if it was one before it went.
        let managers = self.oracle.managers();
        let up: BTreeSet<NodeId> = self
            .nodes
            .iter()
            .filter(|n| n.removed_at.is_none() && n.is_manager())
            .map(|n| n.id)
            .filter(|id| managers.contains(id))
            .collect();
        let run = self.nodes[leader]
            .run
            .as_ref()
            .expect("invariant: it leads");
        let raft = run.stack.raft().expect("invariant: it leads");
        let voters: BTreeSet<NodeId> = raft.membership().voters.clone();
        if !voters.is_subset(&managers) || !up.is_subset(&voters) {
            self.fail(format!(
                "settled: the leader's voters {voters:?} are not the managers in the state {managers:?} (up: {up:?})"
            ));
        }
        for i in 0..self.nodes.len() {
            self.check_settled_node(i, &state);
        }
        self.check_settled_services(&state);
    }

    /// What the voters of the most advanced manager are up to, to tell a lost quorum
    /// (voters gone) from Raft that cannot elect (voters there).
    fn voters_report(&self) -> String {
        let best = self
            .nodes
            .iter()
            .filter(|n| n.removed_at.is_none())
            .filter_map(|n| n.run.as_ref().and_then(|r| r.stack.raft()))
            .max_by_key(|r| r.status().last_index);
        let Some(raft) = best else {
            return "no manager runs Raft".into();
        };
        let parts: Vec<String> = raft
            .membership()
            .members()
            .map(|id| match self.nodes.iter().position(|n| n.id == id) {
                None => format!("{id} unknown"),
                Some(j) => {
                    let n = &self.nodes[j];
                    let what = match n.control_state() {
                        None => "down",
                        Some(s) => state_name(s),
                    };
                    let raft = n
                        .run
                        .as_ref()
                        .and_then(|r| r.stack.raft())
                        .map(|r| format!(" {:?} {:?}", r.role(), r.hard_state().term))
                        .unwrap_or_default();
                    format!(
                        "{j} {what}{raft} (fate {:?} left {} orphaned {})",
                        n.fate, n.left, n.orphaned
                    )
                }
            })
            .collect();
        format!("voters: {}", parts.join(", "))
    }

    fn check_settled_node(&mut self, i: usize, state: &ClusterState) {
        let n = &self.nodes[i];
        let record = state.nodes.get(&n.id);
        if n.removed_at.is_some() {
            if record.is_some() {
                self.fail(format!("settled: removed node {i} is in the state"));
            }
            let key = n.key;
            for (j, m) in self.nodes.iter().enumerate() {
                let admits = m.removed_at.is_none()
                    && m.run.as_ref().is_some_and(|r| {
                        r.stack.control().cluster().is_some() && r.stack.control().admits(&key)
                    });
                if admits {
                    self.fail(format!("settled: manager {j} admits removed node {i}"));
                }
            }
            // A removed node that still acts as a member and talks to the leader (its
            // gossip has the leader alive, and it has the leader's address, so it probes
            // it) hears `Removed` and leaves. (One that knows no leader's address, a
            // manager restarted far behind, stays as it is until `leave`.)
            let member = n.run.as_ref().and_then(|r| {
                let c = r.stack.control();
                let alive: Vec<NodeId> = r
                    .stack
                    .gossip()
                    .map(|g| {
                        g.members()
                            .filter(|(id, st)| {
                                *st == gossip::Status::Alive && c.peer_key(*id).is_some()
                            })
                            .map(|(id, _)| id)
                            .collect()
                    })
                    .unwrap_or_default();
                (!matches!(c.state(), NodeState::Idle)).then_some(alive)
            });
            if let Some(alive) = member {
                let told_by = self.nodes.iter().position(|m| {
                    alive.contains(&m.id)
                        && m.run
                            .as_ref()
                            .is_some_and(|r| r.stack.control().owes_removal_notice(&key))
                });
                if let Some(j) = told_by {
                    self.fail(format!(
                        "settled: removed node {i} still acts as a member, though it probes leader {j}, which would tell it"
                    ));
                }
            }
            return;
        }
        if n.fate == Fate::Dead {
            if let Some(r) = record {
                if r.status != NodeStatus::Down {
                    self.fail(format!(
                        "settled: dead node {i} is {:?} in the state",
                        r.status
                    ));
                }
            }
            return;
        }
        let run = n
            .run
            .as_ref()
            .expect("invariant: live nodes run once healed");
        if let Some((id, a)) = run.open.iter().next() {
            let age = self.now.duration_since(a.at);
            self.fail(format!(
                "settled: node {i} never answered request #{id} ({}) asked {age:?} ago",
                a.what
            ));
        }
        let control = run.stack.control();
        // A worker that knows no live manager (the ones it joined through or heard of
        // are gone, and it heard of no others before it restarted) refuses every
        // stranger's handshake and is cut off for good, as a Swarm worker would be:
        // joining again is the way back.
        let live_manager = |id: &NodeId| {
            self.nodes
                .iter()
                .any(|m| m.id == *id && m.fate == Fate::Live && m.removed_at.is_none() && !m.left)
                && state
                    .nodes
                    .get(id)
                    .is_some_and(|r| r.role == NodeRole::Manager)
        };
        let cut_off = matches!(control.state(), NodeState::Worker(_))
            && control
                .membership()
                .is_some_and(|m| !m.managers.iter().any(|(id, _, _)| live_manager(id)))
            && !state
                .nodes
                .keys()
                .any(|id| *id != n.id && control.peer_key(*id).is_some());
        if cut_off {
            return;
        }
        let role = control.membership().map(|m| m.role);
        match (record, role) {
            (Some(r), Some(role)) => {
                if r.role != role {
                    self.fail(format!(
                        "settled: node {i} is a {role:?} by its membership, a {:?} in the state",
                        r.role
                    ));
                }
                if r.status != NodeStatus::Ready {
                    self.fail(format!(
                        "settled: live member {i} is {:?} in the state",
                        r.status
                    ));
                }
                if role == NodeRole::Manager {
                    // Agents still report (a task that cannot pull its image is
                    // retried for good): what committed in the last second may be on
                    // its way.
                    let settled_at = self
                        .commit_times
                        .iter()
                        .rev()
                        .find(|(t, _)| self.now.duration_since(*t) >= Duration::from_secs(1))
                        .map_or(Index(0), |(_, i)| *i);
                    let applied = run.stack.raft().map(|r| r.status().applied);
                    if applied.is_none_or(|a| a < settled_at) {
                        self.fail(format!(
                            "settled: manager {i} applied {applied:?}, the cluster committed {}",
                            self.oracle.applied.0
                        ));
                    }
                }
            }
            (Some(r), None) => {
                if !(n.left || n.orphaned) {
                    self.fail(format!(
                        "settled: node {i} is in the state ({:?}) but not in the cluster, and never left",
                        r.role
                    ));
                }
                if n.left && r.status != NodeStatus::Down {
                    self.fail(format!(
                        "settled: node {i} left, but is {:?} in the state",
                        r.status
                    ));
                }
            }
            (None, Some(role)) => self.fail(format!(
                "settled: node {i} believes it is a {role:?}, but it is not in the state"
            )),
            (None, None) => {}
        }
        if matches!(
            control.state(),
            NodeState::Joining(_) | NodeState::Initializing(_)
        ) {
            self.fail(format!("settled: node {i} is still joining"));
        }
    }

    /// A write through a follower (or the leader, if it is the only manager) is served
    /// once the cluster has settled.
    pub fn probe(&mut self) {
        let managers: Vec<usize> = (0..self.nodes.len())
            .filter(|i| {
                let n = &self.nodes[*i];
                n.removed_at.is_none()
                    && n.run
                        .as_ref()
                        .is_some_and(|r| r.stack.control().cluster().is_some())
            })
            .collect();
        let follower = managers.iter().copied().find(|i| {
            self.nodes[*i]
                .run
                .as_ref()
                .and_then(|r| r.stack.raft())
                .is_some_and(|r| r.role() != Role::Leader)
        });
        let Some(m) = follower.or(managers.first().copied()) else {
            if self.initialized {
                self.fail("no manager left to serve a request".into());
            }
            return;
        };
        let before = self.stats.writes_done;
        let add = vec![("probe".to_string(), self.seed.to_string())];
        let req = Request::NodeUpdate {
            node: self.nodes[m].name.clone(),
            availability: None,
            label_add: add.clone(),
            label_rm: vec![],
        };
        let id = self.nodes[m].id;
        self.ask(m, req, Kind::Write(Expect::Labels(id, add)));
        self.after_step();
        self.run_for(PROBE);
        if self.stats.writes_done == before {
            self.fail(format!("node {m}: a write after settling was not served"));
        }
    }
}

fn state_name(s: &NodeState) -> &'static str {
    match s {
        NodeState::Idle => "idle",
        NodeState::Initializing(_) => "initializing",
        NodeState::Joining(_) => "joining",
        NodeState::Worker(_) => "worker",
        NodeState::Manager(_) => "manager",
    }
}

fn describe_request(r: &Request) -> String {
    match r {
        Request::Join { token, manager, .. } => {
            let kind = match JoinToken::parse(token) {
                Ok(t) => format!("{} token of {}", t.role, cluster::node_id(&t.manager)),
                Err(_) => "garbage token".into(),
            };
            format!("join {manager} with a {kind}")
        }
        other => {
            let mut s = format!("{other:?}");
            s.truncate(120);
            s
        }
    }
}

/// Applies one log write to a disk's log as the WAL would, checking what the WAL relies
/// on: no gap in the entries, terms that never go back, one vote per term.
fn apply_write(log: &mut RaftLog, w: &LogWrite) -> Result<(), String> {
    let check_hard = |old: &HardState, new: &HardState| -> Result<(), String> {
        if new.term < old.term {
            return Err(format!(
                "hard state term goes back from {:?} to {:?}",
                old.term, new.term
            ));
        }
        if new.term == old.term && old.vote.is_some() && new.vote != old.vote {
            return Err(format!(
                "vote changes within {:?}: {:?} then {:?}",
                new.term, old.vote, new.vote
            ));
        }
        Ok(())
    };
    let snap_index = |log: &RaftLog| log.snapshot.as_ref().map_or(Index(0), |s| s.meta.index);
    match w {
        LogWrite::HardState(h) => {
            check_hard(&log.hard, h)?;
            log.hard = *h;
        }
        LogWrite::Truncate(i) => log.entries.retain(|e| e.index < *i),
        LogWrite::Entries(es) => {
            for e in es {
                let after = snap_index(log);
                if e.index <= after {
                    continue;
                }
                log.entries.retain(|x| x.index < e.index);
                let expected = log.entries.last().map_or(after.next(), |l| l.index.next());
                if e.index != expected {
                    return Err(format!(
                        "log write leaves a gap: entry {} after {}",
                        e.index.0,
                        expected.0 - 1
                    ));
                }
                log.entries.push(e.clone());
            }
        }
        LogWrite::Snapshot {
            snapshot,
            hard,
            tail,
        } => {
            check_hard(&log.hard, hard)?;
            if snap_index(log) > snapshot.meta.index {
                return Err(format!(
                    "snapshot at {} replaces a newer one at {}",
                    snapshot.meta.index.0,
                    snap_index(log).0
                ));
            }
            let mut expected = snapshot.meta.index.next();
            for e in tail {
                if e.index != expected {
                    return Err(format!(
                        "snapshot at {} keeps a tail that is not contiguous (entry {})",
                        snapshot.meta.index.0, e.index.0
                    ));
                }
                expected = expected.next();
            }
            log.snapshot = Some(snapshot.clone());
            log.hard = *hard;
            log.entries = tail.clone();
        }
    }
    Ok(())
}

/// Runs one seed to the end; panics on a violation.
pub fn run_seed(seed: u64) -> Stats {
    let mut sim = Sim::new(seed);
    sim.run_for(ACTIVE);
    sim.heal();
    sim.run_for(SETTLE);
    sim.check_settled();
    sim.probe();
    sim.stats
}

/// Runs the seeds of [`super::seeds`]: all of them, each to its end or first violation,
/// then fails naming every seed that failed (`SIM_SEED=<seed>` replays one with its
/// story).
#[test]
fn replay() {
    // A few seeds in CI (debug builds); `just sim N` runs thousands in release.
    let seeds = super::seeds(8);
    let mut total = Stats::default();
    let mut failed = Vec::new();
    let quiet = seeds.len() > 1;
    let hook = std::panic::take_hook();
    if quiet {
        std::panic::set_hook(Box::new(|_| {}));
    }
    for seed in &seeds {
        match std::panic::catch_unwind(|| run_seed(*seed)) {
            Ok(s) => total.add(&s),
            Err(e) => {
                let why = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let first = why.lines().next().unwrap_or_default().to_string();
                eprintln!("seed {seed}: {first}");
                failed.push(*seed);
                if !quiet {
                    std::panic::resume_unwind(e);
                }
            }
        }
    }
    std::panic::set_hook(hook);
    eprintln!("{} seeds, {} failed: {total:?}", seeds.len(), failed.len());
    assert!(
        failed.is_empty(),
        "control simulation: {} of {} seeds failed: {failed:?}; replay one with SIM_SEED=<seed> cargo test --lib sim::control::replay -- --nocapture",
        failed.len(),
        seeds.len()
    );
    if seeds.len() > 1 {
        // One seed may do little; a few together do everything.
        assert!(total.joins_done > 0, "the workload joined nodes: {total:?}");
        assert!(
            total.writes_done > 0,
            "the workload changed the state: {total:?}"
        );
        assert!(
            total.reads_checked > 0,
            "the workload read the state: {total:?}"
        );
        assert!(
            total.tasks_started > 0 && total.tasks_rejected > 0,
            "agents started tasks, and rejected some: {total:?}"
        );
        assert!(
            total.services_checked > 0,
            "services were checked once settled: {total:?}"
        );
    }
}

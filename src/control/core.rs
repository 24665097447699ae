//! The control core: what one node decides about its cluster. See the module docs of
//! [`crate::control`] for how it is driven.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use super::msg::{GossipMeta, ManagerAddr, Membership, PeerMsg};
use crate::api::{Request, Response};
use crate::cluster::token::{join_psk, TokenRole};
use crate::cluster::{self, ClusterState, Command, NodeRole, NodeStatus};
use crate::gossip;
use crate::logging::Level;
use crate::raft::{ConfigChange, Index, NodeId, Payload, ProposeError, Role, Term};
use crate::transport::{PeerKey, Psk, PskId};

pub use crate::model::DEFAULT_PORT;
/// PSK ids of join handshakes: which token's secret keys the session.
pub const PSK_WORKER: PskId = PskId(1);
pub const PSK_MANAGER: PskId = PskId(2);
/// Members use no pre-shared key: their static keys, checked against the cluster state,
/// are what admits them.
pub const MEMBER_PSK: Psk = [0; 32];

/// How long a join waits for the manager's answer. A wrong or rotated token fails the
/// handshake silently (that is the point of the PSK), so silence is the only signal.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Said of a join whose outcome is unknown (the manager heard it, then could not
/// decide in time).
pub const JOIN_UNKNOWN: &str =
    "the swarm may still add this node: run the same join again to complete it";
/// A joiner repeats its request this often until answered: a request or its answer lost
/// must not fail a join whose node the cluster has added meanwhile.
pub const JOIN_RETRY: Duration = Duration::from_secs(1);
/// A request forwarded to the leader and not answered within this is sent again (the
/// message or its answer was lost; the leader recognises the repeat).
pub const FORWARD_RETRY: Duration = Duration::from_secs(1);
/// A request forwarded to a leader that exists but never answers fails after this. A
/// leader that dies is not waited for: the request moves to the next leader as soon as
/// Raft names one, and fails at once while there is none.
pub const FORWARD_DEADLINE: Duration = Duration::from_secs(10);
/// Requests of this node's CLI waiting on the leader at once; more are refused. The API
/// socket admits fewer connections than this.
pub const MAX_FORWARDED: usize = 256;
/// The leader remembers this many answers to forwarded writes, so a repeat of a write
/// that already committed gets its answer instead of running twice.
pub const MAX_REMEMBERED_ANSWERS: usize = 256;
/// Removed nodes a manager remembers, so gossip cannot bring them back as peers: far more
/// than a cluster removes in a daemon's life; past it, only managers that follow a leader
/// keep them out.
pub const MAX_REMOVED_REMEMBERED: usize = 4096;
/// A manager unsure of its role asks the managers it knows whether it still is one, and
/// who leads, this often (see `PeerMsg::RoleQuery`); so does a worker a leader still
/// replicates to.
pub const ROLE_QUERY: Duration = Duration::from_secs(2);
/// What a node logs when the leader tells it the swarm removed it, and it leaves.
pub const REMOVED_LOG: &str = "the swarm removed this node (`node rm`): it is in no swarm now; join again with a token to come back";
/// A campaigner is told who leads at most this often (it pre-votes every election
/// timeout, 0.5-1 s).
pub const LEADER_HINT_RETRY: Duration = Duration::from_secs(2);
/// Campaigners remembered at once; past this the memory starts afresh (a few hints
/// more is the only cost).
const MAX_LEADER_TOLD: usize = 64;
/// Managers a worker remembers from gossip (Raft clusters have a handful; this bounds
/// what a peer's claims can make it store).
const MAX_MANAGERS_REMEMBERED: usize = 64;
/// A promoted worker is told to start Raft this often until it answers the leader.
pub const PROMOTE_RETRY: Duration = Duration::from_secs(1);
/// A node of the cluster state that the leader's gossip has not heard of at all for this
/// long is marked Down. A live member announces itself to gossip as it starts, and a
/// full exchange every 10 s fills any gap, so silence this long means nobody the leader
/// hears from has heard of it since they started: it died while they were away (or its
/// join never completed).
pub const UNHEARD_GRACE: Duration = Duration::from_secs(15);

/// A local API request, numbered by the driver.
pub type RequestId = u64;

/// Who this node is, and what the daemon's flags say about it.
#[derive(Clone, Debug)]
pub struct Identity {
    pub id: NodeId,
    pub key: PeerKey,
    pub hostname: String,
    pub labels: Vec<(String, String)>,
    /// `daemon --listen-addr` / `--advertise-addr`, used when init or join names none.
    pub listen: Option<SocketAddr>,
    pub advertise: Option<SocketAddr>,
}

/// What the control core needs to know of Raft. The caller passes a new one whenever
/// any field changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftView {
    pub role: Role,
    pub leader: Option<NodeId>,
    pub term: Term,
    pub voters: BTreeSet<NodeId>,
    /// Members Raft replicates to without counting them: managers on their way in.
    pub learners: BTreeSet<NodeId>,
    /// A membership change is appended and not yet committed.
    pub config_pending: bool,
    /// Leader only: members that have acknowledged nothing yet (a promoted worker that
    /// has not started Raft).
    pub unreached: BTreeSet<NodeId>,
    /// The highest index Raft knows committed. Entries reach the core once durable, so
    /// its state may lag this for a moment (a leader just elected or restarted).
    pub commit: Index,
    /// Leader only: an entry of its term has committed (until then `commit` may lag
    /// what earlier leaders committed).
    pub term_committed: bool,
}

impl Default for RaftView {
    fn default() -> Self {
        RaftView {
            role: Role::Follower,
            leader: None,
            term: Term(0),
            voters: BTreeSet::new(),
            learners: BTreeSet::new(),
            config_pending: false,
            unreached: BTreeSet::new(),
            commit: Index(0),
            term_committed: false,
        }
    }
}

/// Where the transport ended up listening, and the address others reach us at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bound {
    pub listen: SocketAddr,
    pub advertise: SocketAddr,
}

/// Everything that happens to a node.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// A request from this node's CLI.
    Api {
        id: RequestId,
        req: Request,
    },
    /// A message from a peer (not Raft's or gossip's own), with the PSK id its session
    /// was keyed with (join tokens have their own).
    Peer {
        from: PeerKey,
        psk: Option<PskId>,
        msg: PeerMsg,
    },
    /// The answer to [`Effect::Bind`].
    Bound(Result<Bound, String>),
    /// The answer to [`Effect::Propose`], given before any other input.
    Proposed {
        tag: u64,
        result: Result<Index, ProposeError>,
    },
    Raft(RaftView),
    /// Raft installed a snapshot: the state machine is `data` as of `index`, from our
    /// own disk at start-up or sent by the leader (`from_leader`).
    Snapshot {
        index: Index,
        data: Vec<u8>,
        from_leader: bool,
    },
    /// A committed entry, in log order.
    Committed {
        index: Index,
        payload: Payload,
    },
    /// The answer to [`Effect::ReadIndex`]: reads may be served once `index` is applied.
    Read {
        ctx: u64,
        result: Result<Index, ProposeError>,
    },
    Gossip(gossip::Event),
    /// What this node's agent says of its tasks (each second and on every change).
    AgentStatus(Box<crate::services::agent::AgentStatus>),
    /// The answer to [`Effect::ReadLogs`].
    LogsRead {
        reply: Reply,
        result: Result<Vec<crate::api::LogPiece>, String>,
    },
}

/// What the control core asks of its driver, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    Send {
        to: PeerKey,
        msg: PeerMsg,
    },
    Answer {
        id: RequestId,
        resp: Response,
    },
    /// Open the cluster port (if not open) and find the address to advertise: the one
    /// given, else (for an unspecified IP) the source address toward `toward` (a join),
    /// or the host's one address (an init). Answered with [`Input::Bound`].
    Bind {
        listen: SocketAddr,
        advertise: Option<SocketAddr>,
        toward: Option<SocketAddr>,
    },
    /// Close the cluster port.
    Unbind,
    /// Let the transport talk to `key` at `addr`, keyed with `psk` (id `psk_id`).
    SetPeer {
        key: PeerKey,
        addr: SocketAddr,
        psk: Psk,
        psk_id: PskId,
    },
    RemovePeer(PeerKey),
    /// Write (`Some`) or delete the membership file, durably.
    SaveMembership(Option<Membership>),
    /// Open the Raft log and start Raft from it; `bootstrap` is a new cluster's first
    /// state (this node is then its only voter and leads at once).
    StartRaft {
        bootstrap: Option<Vec<u8>>,
    },
    /// Stop Raft and erase its log (a demoted or departing manager's log is of no
    /// further use: promoted again, it starts blank, and casts no vote until a leader
    /// has given it a log).
    StopRaft,
    StartGossip {
        advertise: SocketAddr,
        seeds: Vec<NodeId>,
    },
    /// Tell the other members we are leaving, then stop gossip.
    LeaveGossip,
    /// Propose a command; answered at once with [`Input::Proposed`].
    Propose {
        tag: u64,
        cmd: Command,
    },
    ChangeVoters(ConfigChange),
    TransferLeadership(NodeId),
    ReadIndex(u64),
    Log(Level, String),
    /// Hand this node's agent its assignments.
    Assign(Box<crate::services::agent::Assignments>),
    /// Read a chunk of these containers' logs on this node (off the loop: it reads
    /// files) and answer with [`Input::LogsRead`]; for `reply` (our CLI, or a manager
    /// that asked).
    ReadLogs {
        reply: Reply,
        reads: Vec<crate::api::LogRead>,
    },
}

/// What a node is.
#[derive(Debug)]
pub enum NodeState {
    /// Not in a cluster.
    Idle,
    /// `init` is waiting for the port.
    Initializing(Initializing),
    Joining(Joining),
    Worker(Member),
    Manager(Box<Manager>),
}

#[derive(Debug)]
pub struct Initializing {
    request: RequestId,
    snapshot_interval: u64,
    pools: crate::services::ipam::Pools,
}

#[derive(Debug)]
pub struct Joining {
    request: RequestId,
    manager: PeerKey,
    manager_addr: SocketAddr,
    token_role: TokenRole,
    psk: Psk,
    /// Set once the port is open and the request sent.
    bound: Option<Bound>,
    deadline: Instant,
    /// When to repeat the request, once bound.
    resend_at: Instant,
    /// Why the last manager asked us to wait, for the timeout's message.
    waiting: Option<String>,
}

/// What every node in a cluster has.
#[derive(Debug)]
pub struct Member {
    membership: Membership,
    /// Nodes the transport may talk to, other than us: from the membership file,
    /// gossip, and (on managers) the cluster state.
    peers: BTreeMap<NodeId, (PeerKey, SocketAddr)>,
    /// Gossip's last word on each member.
    liveness: BTreeMap<NodeId, gossip::Status>,
    /// Nodes this process saw leave the cluster state: gossip, which still carries them,
    /// must not bring them back as peers.
    removed: BTreeSet<NodeId>,
    /// A worker replicated to: when it may next ask whether it is a manager.
    role_query_at: Option<Instant>,
    /// Members whose gossip metadata says they are managers: whom a manager unsure of
    /// its role also asks (its state may predate their promotion).
    gossip_managers: BTreeSet<NodeId>,
}

/// What a manager has on top.
#[derive(Debug)]
pub struct Manager {
    member: Member,
    /// None until the leader's snapshot arrives (a manager that just joined).
    cluster: Option<ClusterState>,
    raft: RaftView,
    applied: Index,
    /// Proposals between `Effect::Propose` and `Input::Proposed`.
    proposing: BTreeMap<u64, Waiter>,
    /// Proposals waiting for their entry to commit.
    committing: BTreeMap<Index, Waiter>,
    /// Reads waiting for Raft to confirm the leadership, by context.
    reads: BTreeMap<u64, Read>,
    /// Reads confirmed, waiting for the state to reach their index.
    ready_reads: Vec<(Index, Read)>,
    next_read: u64,
    /// Forwarded writes being served for another manager's CLI.
    serving: BTreeSet<(PeerKey, u64)>,
    /// Answers to forwarded writes, oldest first, for repeats.
    answered: VecDeque<((PeerKey, u64), Response)>,
    /// When each promoted worker was last told to start Raft.
    promoted_sent: BTreeMap<NodeId, Instant>,
    /// Campaigners told who leads, and when (see `PeerMsg::LeaderHint`).
    leader_told: BTreeMap<PeerKey, Instant>,
    load: Option<Load>,
    /// The `join` that made this node a manager, answered once the state arrives (or
    /// at the deadline).
    joined: Option<(RequestId, Instant)>,
    /// Made a manager (promoted, or joined as one) and not yet seen among the voters:
    /// the first state it gets may be the leader's snapshot from before the promotion,
    /// which says it is a worker, and that is no demotion.
    until_voter: bool,
    /// Leader: since when gossip has had no word on each node of the state it has none
    /// on, and when to look again.
    unheard: BTreeMap<NodeId, Instant>,
    check_unheard_at: Option<Instant>,
    /// Unsure of its role (see `unsure_of_role`): when to ask whether it still is one.
    role_query_at: Option<Instant>,
    /// The leader a `LeaderHint` named, whose `Demoted` counts.
    hinted_leader: Option<PeerKey>,
    /// Leader: the term in which gossip's word on every node was last recorded.
    statuses_reconciled: Option<Term>,
    /// Leader: the orchestrator's rounds and the assignments sent.
    pub(super) orch: super::services::Orchestration,
}

/// Who hears the outcome of a proposal.
#[derive(Debug)]
enum Waiter {
    /// An API request; `ok` is the text answered on success.
    Reply { reply: Reply, ok: String },
    /// A join: the joiner, and the manager that relays the answer when it is not us.
    Join {
        key: PeerKey,
        role: NodeRole,
        via: Option<PeerKey>,
    },
    /// Nobody (gossip's status reports): a failure is only counted.
    Nobody,
    /// One write of a `debug write` load.
    Load,
    /// An orchestration round.
    Round,
}

/// A `debug write` load: `count` label writes on this node's record, `in_flight` at a
/// time, answered when the last commits (the Raft and WAL benchmark's workload).
#[derive(Debug)]
struct Load {
    reply: Reply,
    /// Whose record the writes go to.
    node: NodeId,
    count: u64,
    in_flight: u64,
    proposed: u64,
    committed: u64,
}

/// Largest `debug write` load, and writes in flight: bounds on what one request makes
/// the leader hold.
pub const MAX_LOAD_WRITES: u64 = 100_000_000;
pub const MAX_LOAD_IN_FLIGHT: u64 = 4096;

/// Where an answer goes: the local CLI, or the manager that forwarded the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    Local(RequestId),
    Remote { to: PeerKey, id: u64 },
}

#[derive(Debug)]
struct Read {
    reply: Reply,
    only: Option<Vec<String>>,
    /// A services read (`service ls`, `ps`, `inspect`, `node ps`), or else `node ls`.
    service: Option<Request>,
    /// The node whose CLI asked ("self", and the `*` in `node ls`).
    asker: NodeId,
}

/// A request of our CLI waiting on the leader.
#[derive(Debug)]
struct Forwarded {
    request: RequestId,
    req: Request,
    to: NodeId,
    resend_at: Instant,
    deadline: Instant,
}

/// Things that went wrong without anyone to tell: counted, shown by `info`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Proposals nobody waited on (gossip's status reports) that Raft refused.
    pub proposals_refused: u64,
    /// Peer messages that arrived in a state where they mean nothing (late answers,
    /// messages from nodes that are not members).
    pub messages_ignored: u64,
    /// Forwarded answers too large for one transport message (answered with an error).
    pub answers_too_large: u64,
    /// Messages from removed nodes answered `Removed`.
    pub removal_notices: u64,
}

/// The control core. See the module documentation for the driving loop.
pub struct Control {
    pub(super) me: Identity,
    pub(super) state: NodeState,
    rng: ChaCha20Rng,
    out: VecDeque<Effect>,
    forwarded: BTreeMap<u64, Forwarded>,
    next_forward: u64,
    /// Log reads of our CLI waiting on other nodes (see `control::logs`).
    pub(super) log_asks: BTreeMap<u64, super::logs::LogAsk>,
    next_tag: u64,
    counters: Counters,
    /// The driver's wall clock: an instant and the milliseconds since the epoch then
    /// (None until the driver first sets it: the core reads no clock).
    pub(super) wall: Option<(Instant, u64)>,
}

impl Control {
    /// A node as the daemon finds it: in a cluster if `membership` says so (then call
    /// [`Control::resume`] once the port is open at `membership.listen`). `seed` keys the
    /// RNG that makes token secrets and cluster ids: give it 32 bytes from the OS.
    pub fn new(me: Identity, membership: Option<Membership>, seed: [u8; 32]) -> Control {
        let state = match membership {
            None => NodeState::Idle,
            Some(m) => {
                let member = Member::new(m);
                match member.membership.role {
                    NodeRole::Worker => NodeState::Worker(member),
                    NodeRole::Manager => NodeState::Manager(Box::new(Manager::new(member, None))),
                }
            }
        };
        let mut rng = ChaCha20Rng::from_seed(seed);
        // Forwarded requests are numbered from a random start: the leader remembers its
        // answers by (asker, id), and a restarted asker counting from 1 again would be
        // handed the answers of its previous life. Half the range leaves room to count.
        let next_forward = rng.next_u64() >> 1;
        Control {
            me,
            state,
            rng,
            out: VecDeque::new(),
            forwarded: BTreeMap::new(),
            next_forward,
            log_asks: BTreeMap::new(),
            next_tag: 0,
            counters: Counters::default(),
            wall: None,
        }
    }

    /// The wall clock at `now` (milliseconds since the epoch): the driver sets it
    /// often, so a clock stepped by NTP after boot (a Pi without a real-time clock) is
    /// picked up. Task times in the state come from it.
    pub fn set_clock(&mut self, now: Instant, unix_ms: u64) {
        self.wall = Some((now, unix_ms));
    }

    /// Restarts a member from its membership file: no token needed.
    pub fn resume(&mut self) {
        let (member, manager) = match &self.state {
            NodeState::Worker(m) => (m, false),
            NodeState::Manager(m) => (&m.member, true),
            _ => return,
        };
        let managers = member.membership.managers.clone();
        let advertise = member.membership.advertise;
        self.learn_peers(&managers);
        if manager {
            self.emit(Effect::StartRaft { bootstrap: None });
        }
        self.start_gossip(advertise);
    }

    pub fn state(&self) -> &NodeState {
        &self.state
    }

    pub fn is_manager(&self) -> bool {
        matches!(self.state, NodeState::Manager(_))
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The next effect to carry out, in order.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.out.pop_front()
    }

    /// When [`Control::handle_timeout`] must next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let join = match &self.state {
            NodeState::Joining(j) => Some(j.deadline.min(j.resend_at)),
            _ => None,
        };
        let forward = self
            .forwarded
            .values()
            .map(|f| f.resend_at.min(f.deadline))
            .min();
        let promote = match &self.state {
            NodeState::Manager(m) if m.raft.role == Role::Leader => m
                .raft
                .unreached
                .iter()
                .filter_map(|id| m.promoted_sent.get(id).map(|t| *t + PROMOTE_RETRY))
                .min(),
            _ => None,
        };
        let joined = self.manager().and_then(|m| m.joined.map(|(_, at)| at));
        let unheard = self.manager().and_then(|m| m.check_unheard_at);
        let query = self
            .manager()
            .filter(|m| m.unsure_of_role(self.me.id))
            .and_then(|m| m.role_query_at);
        // An orchestration round waits for the last one to apply and for a current
        // state; either comes with an input, which runs `orchestrate` anyway. Counting
        // the wake before then would spin the loop on a deadline already past. After a
        // refused round nothing runs before the hold ends, whatever the wake says.
        let wake = self
            .manager()
            .filter(|m| m.raft.role == Role::Leader && !m.orch.in_flight && m.state_is_current())
            .and_then(|m| m.orch.hold_until.or(m.orch.wake));
        let logs = self
            .log_asks
            .values()
            .map(super::logs::LogAsk::wake_at)
            .min();
        [join, forward, promote, joined, unheard, query, wake, logs]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn handle(&mut self, now: Instant, input: Input) {
        match input {
            Input::Api { id, req } => self.on_local_request(now, id, req),
            Input::Peer { from, psk, msg } => self.on_peer(now, from, psk, msg),
            Input::Bound(result) => self.on_bound(now, result),
            Input::Proposed { tag, result } => self.on_proposed(tag, result),
            Input::Raft(view) => self.on_raft(now, view),
            Input::Snapshot {
                index,
                data,
                from_leader,
            } => self.on_snapshot(now, index, &data, from_leader),
            Input::Committed { index, payload } => self.on_committed(now, index, &payload),
            Input::Read { ctx, result } => self.on_read(ctx, result),
            Input::Gossip(e) => self.on_gossip(e),
            Input::AgentStatus(st) => self.on_agent_status(now, *st),
            Input::LogsRead { reply, result } => self.on_logs_read(reply, result),
        }
        self.arm_role_query(now);
        self.orchestrate(now);
    }

    /// A manager unsure of its role (see [`Manager::unsure_of_role`]) asks after
    /// [`ROLE_QUERY`] whether it still is one.
    fn arm_role_query(&mut self, now: Instant) {
        let me = self.me.id;
        if let Some(m) = self.manager_mut() {
            if !m.unsure_of_role(me) {
                m.role_query_at = None;
            } else if m.role_query_at.is_none() {
                m.role_query_at = Some(now + ROLE_QUERY);
            }
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.arm_role_query(now);
        if let NodeState::Joining(j) = &mut self.state {
            if now >= j.deadline {
                // Past the deadline the outcome is unknown: the entry that adds this
                // node may still commit. Joining again is safe either way (a node the
                // swarm already holds is accepted again), and says which it was.
                let why = match &j.waiting {
                    Some(w) => format!(
                        "the manager at {} could not decide within {} s: {w}; {JOIN_UNKNOWN}",
                        j.manager_addr,
                        JOIN_TIMEOUT.as_secs()
                    ),
                    None => format!(
                        "no answer from the manager at {} within {} s: the token may be wrong or rotated, or the address unreachable",
                        j.manager_addr,
                        JOIN_TIMEOUT.as_secs()
                    ),
                };
                self.abandon_join(why);
            } else if now >= j.resend_at {
                j.resend_at = now + JOIN_RETRY;
                if let Some(b) = j.bound {
                    let (to, role) = (j.manager, j.token_role);
                    self.send_join_request(to, role, b.advertise);
                }
            }
        }
        self.forward_timers(now);
        self.log_timers(now);
        self.nudge_promoted(now);
        self.finish_manager_join(Some(now));
        if self
            .manager()
            .and_then(|m| m.check_unheard_at)
            .is_some_and(|t| now >= t)
        {
            self.check_unheard(now);
        }
        self.query_role(now);
        self.arm_role_query(now);
        self.orchestrate(now);
    }

    /// A manager unsure of its role asks the managers it knows whether it still is one.
    fn query_role(&mut self, now: Instant) {
        let me = self.me.id;
        let Some(m) = self.manager_mut() else { return };
        let due = m.unsure_of_role(me) && m.role_query_at.is_some_and(|t| now >= t);
        if !due {
            return;
        }
        m.role_query_at = Some(now + ROLE_QUERY);
        let member = &m.member;
        let mut managers: Vec<PeerKey> = member
            .membership
            .managers
            .iter()
            .filter(|(id, _, _)| *id != me)
            .map(|(_, k, _)| *k)
            .collect();
        // And the managers gossip names that we can address: our state may predate
        // their promotion, and our configuration name only nodes gone since.
        for id in &member.gossip_managers {
            if let Some((k, _)) = member.peers.get(id) {
                if *id != me && !managers.contains(k) {
                    managers.push(*k);
                }
            }
        }
        for key in managers {
            self.send(key, PeerMsg::RoleQuery);
        }
    }

    /// Leader: a node asks whether it is still a manager. Told `Demoted` if the state
    /// makes it a worker and Raft's configuration, committed, no longer holds it; told
    /// `Promoted` if the state makes it a manager (a worker that stepped down on a
    /// demotion that a promotion then undid).
    fn on_role_query(&mut self, now: Instant, from: PeerKey) {
        let Some(m) = self.manager() else {
            self.counters.messages_ignored += 1;
            return;
        };
        if m.raft.role != Role::Leader {
            // A follower tells who leads: the asker may not know the leader at all
            // (it joined after the asker's state), and then cannot even hear from it.
            return self.tell_who_leads(now, from);
        }
        if !m.state_current() {
            return;
        }
        let role = m
            .cluster
            .as_ref()
            .and_then(|c| c.node_by_key(&from))
            .map(|n| n.role);
        let id = cluster::node_id(&from);
        let out = !m.raft.voters.contains(&id) && !m.raft.learners.contains(&id);
        match role {
            Some(NodeRole::Worker) if !m.raft.config_pending && out => {
                self.send(from, PeerMsg::Demoted)
            }
            Some(NodeRole::Manager) => {
                let managers = self.manager_list();
                self.send(from, PeerMsg::Promoted { managers });
            }
            _ => {}
        }
    }

    /// A manager campaigns in vain (pre-votes us) or asks who it is (`RoleQuery`) while
    /// we follow a leader: tell it who leads, at most every [`LEADER_HINT_RETRY`].
    pub fn tell_who_leads(&mut self, now: Instant, from: PeerKey) {
        let me = (self.me.id, self.me.key);
        let Some(m) = self.manager_mut() else { return };
        let Some(leader) = m.raft.leader else { return };
        if cluster::node_id(&from) == leader
            || m.leader_told
                .get(&from)
                .is_some_and(|t| now < *t + LEADER_HINT_RETRY)
        {
            return;
        }
        let hint = if leader == me.0 {
            (me.0, me.1, m.member.membership.advertise)
        } else {
            let Some(&(key, addr)) = m.member.peers.get(&leader) else {
                return;
            };
            (leader, key, addr)
        };
        if m.leader_told.len() >= MAX_LEADER_TOLD {
            m.leader_told.clear();
        }
        m.leader_told.insert(from, now);
        let term = m.raft.term;
        self.send(from, PeerMsg::LeaderHint { leader: hint, term });
    }

    /// Told who leads by a manager we know: take the leader as a peer, so its handshake
    /// and appends get through.
    fn on_leader_hint(&mut self, from: PeerKey, (id, key, addr): ManagerAddr, term: Term) {
        // The sender must be a manager we know (our Raft configuration, membership file
        // or gossip) and not removed. Its word is as fresh as its term: a manager cut off
        // since an older term names the leader of then (SIM_SEED=60009858: a node demoted
        // and removed since, which this hint would have let back in). A node we saw
        // removed is believed to lead only in a term after ours: it joined again since.
        let sender = cluster::node_id(&from);
        let trusted = self.manager().is_some_and(|m| {
            let fresh =
                term > m.raft.term || (term == m.raft.term && !m.member.removed.contains(&id));
            let manager = m.raft.voters.contains(&sender)
                || m.raft.learners.contains(&sender)
                || m.member.gossip_managers.contains(&sender)
                || m.member
                    .membership
                    .managers
                    .iter()
                    .any(|(_, k, _)| *k == from);
            manager
                && fresh
                && m.member.knows_key(&from)
                && !m.member.removed.contains(&sender)
                && m.raft.leader.is_none()
        });
        if !trusted || cluster::node_id(&key) != id || id == self.me.id {
            self.counters.messages_ignored += 1;
            return;
        }
        if let Some(m) = self.manager_mut() {
            m.member.removed.remove(&id);
            m.hinted_leader = Some(key);
        }
        self.learn_peers(&[(id, key, addr)]);
        // It may campaign in vain because the swarm demoted it and took it out of Raft
        // in entries it never got (a leader does not replicate to a node it removed):
        // ask the leader, who says `Demoted` if so. Hints come at most every
        // LEADER_HINT_RETRY, so these questions do too.
        self.send(key, PeerMsg::RoleQuery);
    }

    /// A worker that the leader replicates to is in Raft's configuration: it asks the
    /// leader (at most every [`ROLE_QUERY`]) whether it is a manager after all.
    pub(super) fn replicated_to_worker(&mut self, now: Instant, from: PeerKey) {
        let NodeState::Worker(w) = &mut self.state else {
            return;
        };
        let known = w.membership.managers.iter().any(|(_, k, _)| *k == from) && w.knows_key(&from);
        if !known || w.role_query_at.is_some_and(|t| now < t) {
            return;
        }
        w.role_query_at = Some(now + ROLE_QUERY);
        self.send(from, PeerMsg::RoleQuery);
    }

    // ---- queries for the driver --------------------------------------------------

    /// Whether the transport should accept a member session from `key`: a node of the
    /// cluster state, or one we know from the membership file or gossip (our state may
    /// lag: a restarted manager replays its log only as it learns what is committed).
    pub fn admits(&self, key: &PeerKey) -> bool {
        let in_state = self.cluster().is_some_and(|c| c.node_by_key(key).is_some());
        in_state || self.member().is_some_and(|m| m.knows_key(key))
    }

    /// The PSK of a join session with id `id`, for a manager that has the tokens.
    pub fn join_psk(&self, id: PskId) -> Option<Psk> {
        let c = self.cluster()?;
        match id {
            PSK_WORKER => Some(join_psk(TokenRole::Worker, &c.tokens.worker)),
            PSK_MANAGER => Some(join_psk(TokenRole::Manager, &c.tokens.manager)),
            _ => None,
        }
    }

    /// The key of a node we can address.
    pub fn peer_key(&self, id: NodeId) -> Option<PeerKey> {
        self.member()?.peers.get(&id).map(|(k, _)| *k)
    }

    pub fn cluster(&self) -> Option<&ClusterState> {
        match &self.state {
            NodeState::Manager(m) => m.cluster.as_ref(),
            _ => None,
        }
    }

    pub fn membership(&self) -> Option<&Membership> {
        self.member().map(|m| &m.membership)
    }

    pub fn id(&self) -> NodeId {
        self.me.id
    }

    /// Committed entries between snapshots, as the cluster state says.
    pub fn snapshot_interval(&self) -> u64 {
        self.cluster()
            .map_or(cluster::DEFAULT_SNAPSHOT_INTERVAL, |c| {
                c.spec.snapshot_interval
            })
    }

    // ---- shared helpers ----------------------------------------------------------

    pub(super) fn emit(&mut self, e: Effect) {
        self.out.push_back(e);
    }

    pub(super) fn log(&mut self, level: Level, text: String) {
        self.emit(Effect::Log(level, text));
    }

    pub(super) fn random16(&mut self) -> [u8; 16] {
        let mut b = [0u8; 16];
        self.rng.fill_bytes(&mut b);
        b
    }

    /// A fresh id for a request we send another node (forwarded requests, log reads):
    /// counted from a random start (see `new`).
    pub(super) fn next_ask_id(&mut self) -> u64 {
        self.next_forward += 1;
        self.next_forward
    }

    pub(super) fn tag(&mut self) -> u64 {
        self.next_tag += 1;
        self.next_tag
    }

    pub(super) fn member(&self) -> Option<&Member> {
        match &self.state {
            NodeState::Worker(m) => Some(m),
            NodeState::Manager(m) => Some(&m.member),
            _ => None,
        }
    }

    pub(super) fn member_mut(&mut self) -> Option<&mut Member> {
        match &mut self.state {
            NodeState::Worker(m) => Some(m),
            NodeState::Manager(m) => Some(&mut m.member),
            _ => None,
        }
    }

    pub(super) fn manager(&self) -> Option<&Manager> {
        match &self.state {
            NodeState::Manager(m) => Some(m),
            _ => None,
        }
    }

    pub(super) fn manager_mut(&mut self) -> Option<&mut Manager> {
        match &mut self.state {
            NodeState::Manager(m) => Some(m),
            _ => None,
        }
    }

    pub(super) fn is_leader(&self) -> bool {
        self.manager().is_some_and(|m| m.raft.role == Role::Leader)
    }

    pub(super) fn send(&mut self, to: PeerKey, msg: PeerMsg) {
        self.emit(Effect::Send { to, msg });
    }

    /// Sends to a node by id, if we know its key.
    pub(super) fn send_id(&mut self, to: NodeId, msg: PeerMsg) {
        match self.peer_key(to) {
            Some(k) => self.send(k, msg),
            None => self.counters.messages_ignored += 1,
        }
    }

    pub(super) fn answer(&mut self, reply: Reply, resp: Response) {
        match reply {
            Reply::Local(id) => self.emit(Effect::Answer { id, resp }),
            Reply::Remote { to, id } => {
                if let Some(m) = self.manager_mut() {
                    m.serving.remove(&(to, id));
                    if m.answered.len() >= MAX_REMEMBERED_ANSWERS {
                        m.answered.pop_front();
                    }
                    m.answered.push_back(((to, id), resp.clone()));
                }
                let msg = PeerMsg::ApiReply { id, resp };
                let len = msg.encoded_len();
                if len > crate::transport::MAX_MESSAGE_SIZE {
                    self.counters.answers_too_large += 1;
                    let leader = self.me.id;
                    let resp = Response::Error(format!(
                        "the answer is {len} bytes, over the {}-byte limit of a message between nodes; run the command on the leader (node {leader})",
                        crate::transport::MAX_MESSAGE_SIZE
                    ));
                    self.send(to, PeerMsg::ApiReply { id, resp });
                } else {
                    self.send(to, msg);
                }
            }
        }
    }

    /// Lets the transport reach these nodes (not ourselves) and remembers them.
    pub(super) fn learn_peers(&mut self, nodes: &[ManagerAddr]) {
        let me = self.me.id;
        let mut added = Vec::new();
        if let Some(m) = self.member_mut() {
            for (id, key, addr) in nodes {
                if *id != me && m.peers.get(id) != Some(&(*key, *addr)) {
                    m.peers.insert(*id, (*key, *addr));
                    added.push((*key, *addr));
                }
            }
        }
        for (key, addr) in added {
            self.emit(Effect::SetPeer {
                key,
                addr,
                psk: MEMBER_PSK,
                psk_id: PskId::MEMBER,
            });
        }
    }

    fn start_gossip(&mut self, advertise: SocketAddr) {
        let seeds = self
            .member()
            .map(|m| m.peers.keys().copied().collect())
            .unwrap_or_default();
        self.emit(Effect::StartGossip { advertise, seeds });
    }

    // ---- joining -----------------------------------------------------------------

    fn on_bound(&mut self, now: Instant, result: Result<Bound, String>) {
        match std::mem::replace(&mut self.state, NodeState::Idle) {
            NodeState::Initializing(init) => match result {
                Ok(b) => self.finish_init(init, b),
                Err(e) => self.emit(Effect::Answer {
                    id: init.request,
                    resp: Response::Error(e),
                }),
            },
            NodeState::Joining(mut j) if j.bound.is_none() => match result {
                Ok(b) => {
                    let psk_id = match j.token_role {
                        TokenRole::Worker => PSK_WORKER,
                        TokenRole::Manager => PSK_MANAGER,
                    };
                    self.emit(Effect::SetPeer {
                        key: j.manager,
                        addr: j.manager_addr,
                        psk: j.psk,
                        psk_id,
                    });
                    self.send_join_request(j.manager, j.token_role, b.advertise);
                    j.bound = Some(b);
                    j.deadline = now + JOIN_TIMEOUT;
                    j.resend_at = now + JOIN_RETRY;
                    self.state = NodeState::Joining(j);
                }
                Err(e) => self.emit(Effect::Answer {
                    id: j.request,
                    resp: Response::Error(e),
                }),
            },
            other => {
                self.state = other;
                self.counters.messages_ignored += 1;
            }
        }
    }

    fn send_join_request(&mut self, to: PeerKey, role: TokenRole, advertise: SocketAddr) {
        let msg = PeerMsg::JoinRequest {
            role,
            hostname: self.me.hostname.clone(),
            advertise,
            labels: self.me.labels.clone(),
        };
        self.send(to, msg);
    }

    fn finish_init(&mut self, init: Initializing, b: Bound) {
        let cluster_id = self.random16();
        let tokens = cluster::Tokens {
            worker: self.random16(),
            manager: self.random16(),
        };
        let spec = cluster::ClusterSpec {
            snapshot_interval: init.snapshot_interval,
        };
        let mut state = ClusterState::new(cluster_id, tokens, spec).with_pools(init.pools);
        let record = self.own_record(b.advertise, NodeRole::Manager);
        if let Err(e) = state.apply(&Command::AddNode(record)) {
            self.emit(Effect::Unbind);
            self.emit(Effect::Answer {
                id: init.request,
                resp: Response::Error(format!("cannot create the swarm: {e}")),
            });
            return;
        }
        let membership = Membership {
            cluster_id,
            role: NodeRole::Manager,
            listen: b.listen,
            advertise: b.advertise,
            managers: vec![(self.me.id, self.me.key, b.advertise)],
        };
        let token = crate::cluster::token::JoinToken {
            role: TokenRole::Worker,
            manager: self.me.key,
            secret: state.tokens.worker,
        };
        self.emit(Effect::SaveMembership(Some(membership.clone())));
        self.emit(Effect::StartRaft {
            bootstrap: Some(state.encode()),
        });
        self.state =
            NodeState::Manager(Box::new(Manager::new(Member::new(membership), Some(state))));
        self.start_gossip(b.advertise);
        self.emit(Effect::Answer {
            id: init.request,
            resp: Response::Done(format!(
                "Swarm initialized: current node ({}) is now a manager.\n\nTo add a worker to this swarm, run the following command:\n\n    swarmlet join {token} {}\n\nTo add a manager to this swarm, run 'swarmlet join-token manager' and follow the instructions.",
                self.me.id, b.advertise
            )),
        });
    }

    pub(super) fn own_record(&self, addr: SocketAddr, role: NodeRole) -> cluster::NodeRecord {
        cluster::NodeRecord {
            id: self.me.id,
            key: self.me.key,
            addr,
            hostname: self.me.hostname.clone(),
            role,
            availability: cluster::Availability::Active,
            labels: self.me.labels.iter().cloned().collect(),
            status: NodeStatus::Ready,
        }
    }

    /// Gives up a join: answers the CLI and closes what the join opened.
    fn abandon_join(&mut self, why: String) {
        let NodeState::Joining(j) = std::mem::replace(&mut self.state, NodeState::Idle) else {
            return;
        };
        self.emit(Effect::RemovePeer(j.manager));
        self.emit(Effect::Unbind);
        self.emit(Effect::Answer {
            id: j.request,
            resp: Response::Error(why),
        });
    }

    fn on_join_answer(&mut self, now: Instant, from: PeerKey, msg: PeerMsg) {
        let expected =
            matches!(&self.state, NodeState::Joining(j) if j.manager == from && j.bound.is_some());
        if !expected {
            self.counters.messages_ignored += 1;
            return;
        }
        let (cluster_id, role, managers) = match msg {
            PeerMsg::JoinRefused(why) => return self.abandon_join(format!("join refused: {why}")),
            PeerMsg::JoinWait(why) => {
                if let NodeState::Joining(j) = &mut self.state {
                    j.waiting = Some(why);
                }
                return;
            }
            PeerMsg::JoinAccepted {
                cluster_id,
                role,
                managers,
            } => (cluster_id, role, managers),
            _ => return,
        };
        let NodeState::Joining(j) = std::mem::replace(&mut self.state, NodeState::Idle) else {
            return;
        };
        let Some(b) = j.bound else { return };
        let membership = Membership {
            cluster_id,
            role,
            listen: b.listen,
            advertise: b.advertise,
            managers: managers.clone(),
        };
        self.emit(Effect::SaveMembership(Some(membership.clone())));
        let member = Member::new(membership);
        self.state = match role {
            NodeRole::Worker => NodeState::Worker(member),
            NodeRole::Manager => {
                let mut m = Manager::new(member, None);
                m.until_voter = true;
                NodeState::Manager(Box::new(m))
            }
        };
        self.learn_peers(&managers);
        self.start_gossip(b.advertise);
        match self.manager_mut() {
            // A new manager answers once the leader's state has reached it, so that
            // what the user runs next (`join-token`, `node ls`) works.
            Some(m) => {
                m.joined = Some((j.request, now + JOIN_TIMEOUT));
                self.emit(Effect::StartRaft { bootstrap: None });
            }
            None => self.emit(Effect::Answer {
                id: j.request,
                resp: Response::Done(format!(
                    "This node joined a swarm as a {}.",
                    role_name(role)
                )),
            }),
        }
    }

    /// Answers a manager's `join` once it has the cluster state, or, at `now`, once the
    /// wait for it is over.
    fn finish_manager_join(&mut self, now: Option<Instant>) {
        let Some(m) = self.manager_mut() else { return };
        let due = match (m.joined, now) {
            (Some(_), None) => m.cluster.is_some(),
            (Some((_, at)), Some(now)) => now >= at,
            (None, _) => false,
        };
        if !due {
            return;
        }
        let Some((id, _)) = m.joined.take() else {
            return;
        };
        let text = if m.cluster.is_some() {
            "This node joined a swarm as a manager.".to_string()
        } else {
            format!(
                "This node joined a swarm as a manager, but the leader's state has not reached it within {} s; manager commands answer once it has",
                JOIN_TIMEOUT.as_secs()
            )
        };
        self.emit(Effect::Answer {
            id,
            resp: Response::Done(text),
        });
    }

    // ---- peers -------------------------------------------------------------------

    fn on_peer(&mut self, now: Instant, from: PeerKey, psk: Option<PskId>, msg: PeerMsg) {
        match msg {
            PeerMsg::Raft(_) | PeerMsg::Gossip(_) => self.counters.messages_ignored += 1,
            PeerMsg::JoinRequest {
                role,
                hostname,
                advertise,
                labels,
            } => self.on_join_request(from, psk, role, hostname, advertise, labels),
            m @ (PeerMsg::JoinAccepted { .. } | PeerMsg::JoinRefused(_) | PeerMsg::JoinWait(_)) => {
                self.on_join_answer(now, from, m)
            }
            PeerMsg::ForwardJoin {
                joiner,
                role,
                hostname,
                advertise,
                labels,
            } => {
                // Only managers in the state may vouch for a joiner.
                let vouched = self
                    .cluster()
                    .and_then(|c| c.node_by_key(&from))
                    .is_some_and(|n| n.role == NodeRole::Manager);
                if vouched {
                    let join = super::requests::JoinAsk {
                        key: joiner,
                        role,
                        hostname,
                        advertise,
                        labels,
                    };
                    self.propose_join(join, Some(from));
                } else {
                    self.counters.messages_ignored += 1;
                }
            }
            PeerMsg::JoinRelay { joiner, answer } => {
                let from_leader = self
                    .manager()
                    .and_then(|m| m.raft.leader)
                    .is_some_and(|l| l == cluster::node_id(&from));
                if from_leader {
                    self.send(joiner, *answer);
                } else {
                    self.counters.messages_ignored += 1;
                }
            }
            PeerMsg::ApiForward { id, req } => self.on_forwarded_request(now, from, id, req),
            PeerMsg::ApiReply { id, resp } => match self.forwarded.remove(&id) {
                Some(f) => self.emit(Effect::Answer {
                    id: f.request,
                    resp,
                }),
                None => self.counters.messages_ignored += 1,
            },
            PeerMsg::ApiRedirect { id, leader } => self.redirect(now, id, leader),
            PeerMsg::Promoted { managers } => self.on_promoted(from, managers),
            PeerMsg::Demoted => self.on_demoted(from),
            PeerMsg::RoleQuery => self.on_role_query(now, from),
            PeerMsg::LeaderHint { leader, term } => self.on_leader_hint(from, leader, term),
            PeerMsg::Removed => self.on_removed(from, psk),
            PeerMsg::Assign(a) => self.on_assign(from, *a),
            PeerMsg::LogRead { id, reads } => self.on_log_read(from, id, reads),
            PeerMsg::LogPieces { id, result } => self.on_log_pieces(from, id, result),
            PeerMsg::AgentStatus(st) => {
                if self.admits(&from) {
                    self.agent_status_from(now, cluster::node_id(&from), *st);
                } else {
                    self.counters.messages_ignored += 1;
                }
            }
        }
    }

    pub(super) fn count_ignored(&mut self) {
        self.counters.messages_ignored += 1;
    }

    /// The leader tells us the cluster removed us: we leave, as `leave` does (Docker's
    /// node goes inactive too). A member we know says so over a member session (it
    /// may lead since our removal, and we never heard that it is a manager:
    /// SIM_SEED=120005134); only a leader with a current state sends it.
    fn on_removed(&mut self, from: PeerKey, psk: Option<PskId>) {
        let known = psk == Some(PskId::MEMBER) && self.member().is_some_and(|m| m.knows_key(&from));
        if !known {
            self.counters.messages_ignored += 1;
            return;
        }
        self.forget_cluster();
        self.log(Level::Warning, REMOVED_LOG.into());
    }

    /// Whether `key` belongs to a node we saw removed and should hear so from us: we
    /// lead, with a current state (a state replayed from an older point could name a
    /// removal undone since), and its key is no longer in the state. The transport then
    /// lets its handshake through, and any message on that session is answered
    /// `Removed` (see `tell_removed`).
    pub fn owes_removal_notice(&self, key: &PeerKey) -> bool {
        let id = cluster::node_id(key);
        self.manager().is_some_and(|m| {
            m.raft.role == Role::Leader
                && m.state_current()
                && m.member.removed.contains(&id)
                && m.cluster
                    .as_ref()
                    .is_some_and(|c| c.node_by_key(key).is_none())
        })
    }

    /// A message from a removed node (see `owes_removal_notice`): tell it, then close
    /// its session again.
    pub fn tell_removed(&mut self, key: PeerKey) {
        self.counters.removal_notices += 1;
        self.send(key, PeerMsg::Removed);
        self.emit(Effect::RemovePeer(key));
    }

    /// The leader told us (a worker) we are a manager now: start Raft with nothing; the
    /// leader sends a snapshot.
    fn on_promoted(&mut self, from: PeerKey, managers: Vec<ManagerAddr>) {
        let from_known_manager = self.member().is_some_and(|m| {
            m.membership
                .managers
                .iter()
                .chain(managers.iter())
                .any(|(_, k, _)| *k == from)
                && m.knows_key(&from)
        });
        if !from_known_manager || !matches!(self.state, NodeState::Worker(_)) {
            self.counters.messages_ignored += 1;
            return;
        }
        let NodeState::Worker(mut member) = std::mem::replace(&mut self.state, NodeState::Idle)
        else {
            return;
        };
        member.membership.role = NodeRole::Manager;
        member.membership.managers = managers.clone();
        self.emit(Effect::SaveMembership(Some(member.membership.clone())));
        let mut m = Manager::new(member, None);
        m.until_voter = true;
        self.state = NodeState::Manager(Box::new(m));
        self.learn_peers(&managers);
        self.emit(Effect::StartRaft { bootstrap: None });
        self.log(Level::Info, "this node is now a manager".into());
    }

    // ---- forwarding to the leader --------------------------------------------------

    /// Sends a request of our CLI to the leader.
    pub(super) fn forward(&mut self, now: Instant, request: RequestId, req: Request, to: NodeId) {
        if self.forwarded.len() >= MAX_FORWARDED {
            return self.emit(Effect::Answer {
                id: request,
                resp: Response::Error(format!(
                    "{MAX_FORWARDED} requests are already waiting on the leader; try again in a moment"
                )),
            });
        }
        let id = self.next_ask_id();
        self.send_id(
            to,
            PeerMsg::ApiForward {
                id,
                req: req.clone(),
            },
        );
        self.forwarded.insert(
            id,
            Forwarded {
                request,
                req,
                to,
                resend_at: now + FORWARD_RETRY,
                deadline: now + FORWARD_DEADLINE,
            },
        );
    }

    /// Sends (again) to `leader`, or fails at once when there is none.
    fn reroute(&mut self, now: Instant, id: u64, leader: Option<NodeId>) {
        let me = self.me.id;
        match leader {
            Some(l) if l != me => {
                let Some(f) = self.forwarded.get_mut(&id) else {
                    return;
                };
                f.to = l;
                f.resend_at = now + FORWARD_RETRY;
                let req = f.req.clone();
                self.send_id(l, PeerMsg::ApiForward { id, req });
            }
            Some(_) => {
                // We lead now: serve it ourselves.
                if let Some(f) = self.forwarded.remove(&id) {
                    self.serve(now, f.req, Reply::Local(f.request), me);
                }
            }
            None => {
                if let Some(f) = self.forwarded.remove(&id) {
                    self.emit(Effect::Answer {
                        id: f.request,
                        resp: Response::Error(ProposeError::NotLeader(None).to_string()),
                    });
                }
            }
        }
    }

    fn redirect(&mut self, now: Instant, id: u64, leader: Option<NodeId>) {
        let Some(asked) = self.forwarded.get(&id).map(|f| f.to) else {
            self.counters.messages_ignored += 1;
            return;
        };
        // Our own view of the leader is as good as the redirecting node's, and newer
        // if it changed since: prefer ours when it names one, unless ours is the very
        // node that just said it does not lead (ours is stale then; sending it back
        // there would bounce between the two at network speed).
        let ours = self
            .manager()
            .and_then(|m| m.raft.leader)
            .filter(|l| *l != asked);
        let theirs = leader.filter(|l| *l != asked);
        self.reroute(now, id, ours.or(theirs));
    }

    fn forward_timers(&mut self, now: Instant) {
        let due: Vec<u64> = self
            .forwarded
            .iter()
            .filter(|(_, f)| now >= f.resend_at || now >= f.deadline)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some(f) = self.forwarded.get_mut(&id) else {
                continue;
            };
            if now >= f.deadline {
                let to = f.to;
                let request = f.request;
                self.forwarded.remove(&id);
                self.emit(Effect::Answer {
                    id: request,
                    resp: Response::Error(format!(
                        "the leader (node {to}) did not answer within {} s; try again",
                        FORWARD_DEADLINE.as_secs()
                    )),
                });
            } else {
                f.resend_at = now + FORWARD_RETRY;
                let (to, req) = (f.to, f.req.clone());
                self.send_id(to, PeerMsg::ApiForward { id, req });
            }
        }
    }

    /// A request another manager's CLI made, forwarded to us as the leader.
    fn on_forwarded_request(&mut self, now: Instant, from: PeerKey, id: u64, req: Request) {
        let asker = cluster::node_id(&from);
        let member = self
            .cluster()
            .is_some_and(|c| c.node_by_key(&from).is_some());
        let Some(m) = self.manager() else {
            self.counters.messages_ignored += 1;
            return;
        };
        if !member {
            self.counters.messages_ignored += 1;
            return;
        }
        if m.raft.role != Role::Leader {
            let leader = m.raft.leader;
            return self.send(from, PeerMsg::ApiRedirect { id, leader });
        }
        if m.serving.contains(&(from, id)) {
            return; // a repeat of a write in progress: its answer will come
        }
        if let Some((_, resp)) = m.answered.iter().find(|(k, _)| *k == (from, id)) {
            let resp = resp.clone();
            return self.send(from, PeerMsg::ApiReply { id, resp });
        }
        if is_write(&req) {
            if let Some(m) = self.manager_mut() {
                m.serving.insert((from, id));
            }
        }
        self.serve(now, req, Reply::Remote { to: from, id }, asker);
    }

    // ---- Raft --------------------------------------------------------------------

    fn on_proposed(&mut self, tag: u64, result: Result<Index, ProposeError>) {
        let Some(m) = self.manager_mut() else { return };
        let Some(waiter) = m.proposing.remove(&tag) else {
            return;
        };
        match result {
            Ok(index) => {
                m.committing.insert(index, waiter);
            }
            Err(e) => self.wait_or_fail(waiter, e.to_string()),
        }
    }

    /// Like `fail_waiter`, but a joiner only hears it must wait: its node may still be
    /// added (the entry can commit under the next leader), and it asks again.
    fn wait_or_fail(&mut self, waiter: Waiter, why: String) {
        match waiter {
            Waiter::Join { key, via, .. } => self.answer_joiner(key, via, PeerMsg::JoinWait(why)),
            w => self.fail_waiter(w, why),
        }
    }

    fn fail_waiter(&mut self, waiter: Waiter, why: String) {
        match waiter {
            Waiter::Reply { reply, .. } => self.answer(reply, Response::Error(why)),
            Waiter::Join { key, via, .. } => {
                self.answer_joiner(key, via, PeerMsg::JoinRefused(why))
            }
            Waiter::Nobody => self.counters.proposals_refused += 1,
            Waiter::Round => {
                self.counters.proposals_refused += 1;
                if let Some(m) = self.manager_mut() {
                    m.orch.in_flight = false;
                    m.orch.due = true;
                    m.orch.refused = true;
                }
            }
            Waiter::Load => {
                if let Some(load) = self.manager_mut().and_then(|m| m.load.take()) {
                    let resp = Response::Error(format!(
                        "write {} of {} failed: {why}",
                        load.committed + 1,
                        load.count
                    ));
                    self.answer(load.reply, resp);
                }
            }
        }
    }

    /// Proposes `cmd`; `waiter` hears the outcome.
    fn propose(&mut self, cmd: Command, waiter: Waiter) {
        let tag = self.tag();
        if let Some(m) = self.manager_mut() {
            m.proposing.insert(tag, waiter);
        }
        self.emit(Effect::Propose { tag, cmd });
    }

    /// Proposes what nobody waits on (agents' reports); a refusal is counted.
    pub(super) fn propose_quietly(&mut self, cmd: Command) {
        self.propose(cmd, Waiter::Nobody);
    }

    pub(super) fn propose_round(&mut self, cmd: Command) {
        self.propose(cmd, Waiter::Round);
    }

    pub(super) fn propose_reply(&mut self, cmd: Command, reply: Reply, ok: String) {
        self.propose(cmd, Waiter::Reply { reply, ok });
    }

    /// Proposes commands in order; the last one's outcome is the answer (they are
    /// checked together against the state before any is proposed).
    pub(super) fn propose_all(&mut self, cmds: Vec<Command>, reply: Reply, ok: String) {
        let n = cmds.len();
        for (i, cmd) in cmds.into_iter().enumerate() {
            if i + 1 == n {
                self.propose_reply(cmd, reply, ok.clone());
            } else {
                self.propose(cmd, Waiter::Nobody);
            }
        }
    }

    fn on_raft(&mut self, now: Instant, view: RaftView) {
        let me = self.me.id;
        let Some(m) = self.manager_mut() else { return };
        if view.voters.contains(&me) {
            m.until_voter = false;
        }
        let old = std::mem::replace(&mut m.raft, view.clone());
        let lost_leadership = old.role == Role::Leader && view.role != Role::Leader;
        if view.role == Role::Leader && old.role != Role::Leader {
            m.orch.reset();
        }
        if lost_leadership {
            m.orch = Default::default();
            self.fail_pending();
        }
        if old.leader != view.leader {
            let waiting: Vec<u64> = self.forwarded.keys().copied().collect();
            for id in waiting {
                self.reroute(now, id, view.leader);
            }
        }
        if old.voters != view.voters {
            if let Some(m) = self.manager_mut() {
                m.statuses_reconciled = None;
            }
        }
        self.maybe_reconcile_statuses();
        if view.role == Role::Leader && old.role != Role::Leader {
            self.check_unheard(now);
        }
        self.reconcile_voters();
        self.maybe_step_down();
        self.nudge_promoted(now);
    }

    /// Answers every request still waiting for a commit: a manager that lost the
    /// leadership cannot know their outcome, and the user should hear so, not wait.
    fn fail_pending(&mut self) {
        let Some(m) = self.manager_mut() else { return };
        let committing = std::mem::take(&mut m.committing);
        let proposing = std::mem::take(&mut m.proposing);
        let reads: Vec<Read> = std::mem::take(&mut m.reads).into_values().collect();
        let ready: Vec<Read> = std::mem::take(&mut m.ready_reads)
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        for w in committing.into_values().chain(proposing.into_values()) {
            let why = match &w {
                Waiter::Join { .. } => "the manager lost the leadership".into(),
                _ => "this manager lost the leadership before the change committed; it may or may not have been applied: check, then retry".into(),
            };
            self.wait_or_fail(w, why);
        }
        for r in reads.into_iter().chain(ready) {
            self.answer(
                r.reply,
                Response::Error("this manager lost the leadership; try again".into()),
            );
        }
    }

    fn on_snapshot(&mut self, now: Instant, index: Index, data: &[u8], from_leader: bool) {
        let state = match ClusterState::decode(data) {
            Ok(s) => s,
            Err(e) => {
                return self.log(
                    Level::Error,
                    format!("raft snapshot at index {index} holds no cluster state: {e}"),
                )
            }
        };
        let Some(m) = self.manager_mut() else { return };
        // A snapshot from the leader replacing our state may skip removals and
        // demotions; a snapshot loaded at start-up (no state yet) may be older than the
        // membership file, and removes nothing.
        let (mut removed, demoted): (Vec<NodeId>, Vec<NodeId>) = match &m.cluster {
            Some(old) => (
                old.nodes
                    .keys()
                    .filter(|id| !state.nodes.contains_key(id))
                    .copied()
                    .collect(),
                old.managers()
                    .filter(|n| {
                        state
                            .nodes
                            .get(&n.id)
                            .is_some_and(|n| n.role != NodeRole::Manager)
                    })
                    .map(|n| n.id)
                    .collect(),
            ),
            None => (vec![], vec![]),
        };
        // Peers learnt before we had a state (a worker's, through gossip) that the state
        // does not hold were removed before our time: forget them too. The managers of
        // the membership file stay while the snapshot is our own from start-up, which
        // may be older than the file; one from the leader is newer than anything we
        // applied or were told, so a manager it does not hold was removed (or joins in
        // the entries that follow, which teach it again). A promoted node's list of
        // managers may be old: the transport delivers what it queued for a node once
        // the node is back, and SIM_SEED=120003628 had a `Promoted` arrive 16 s late,
        // naming a manager removed since.
        let managers = &m.member.membership.managers;
        let stale: Vec<NodeId> = m
            .member
            .peers
            .keys()
            .copied()
            .filter(|id| {
                !state.nodes.contains_key(id)
                    && (from_leader || !managers.iter().any(|(mid, _, _)| mid == id))
                    && !removed.contains(id)
            })
            .collect();
        removed.extend(stale);
        m.cluster = Some(state);
        m.applied = index;
        m.orch.reset();
        self.after_apply(now, &removed, &demoted);
    }

    fn on_committed(&mut self, now: Instant, index: Index, payload: &Payload) {
        let Some(m) = self.manager_mut() else { return };
        m.applied = m.applied.max(index);
        let waiter = m.committing.remove(&index);
        let (mut removed, mut demoted) = (vec![], vec![]);
        let mut status_of = None;
        let result = match payload {
            Payload::Command(bytes) => match (Command::decode(bytes), m.cluster.as_mut()) {
                (Ok(cmd), Some(c)) => {
                    let r = c.apply(&cmd).map_err(|e| e.to_string());
                    match (&r, &cmd) {
                        (Ok(()), Command::RemoveNode(id)) => removed.push(*id),
                        (Ok(()), Command::SetRole { id, role }) if *role == NodeRole::Worker => {
                            demoted.push(*id)
                        }
                        (Ok(()), Command::SetStatus { id, .. }) => status_of = Some(*id),
                        (Ok(()), Command::AddNode(n)) => status_of = Some(n.id),
                        _ => {}
                    }
                    if r.is_ok() {
                        m.orch.due = true;
                        let tasks_changed = match &cmd {
                            // Reports and descriptions change no node's set (a set holds
                            // no observed state): the sets need not be recomputed.
                            // Except where tasks have addresses: a report moves a
                            // task in or out of the balancers and DNS every node holds.
                            Command::Service(s) => match **s {
                                crate::services::store::ServiceCommand::Describe { .. } => false,
                                crate::services::store::ServiceCommand::Report { .. } => {
                                    !c.networks.tasks.is_empty()
                                }
                                _ => true,
                            },
                            Command::RemoveNode(_) | Command::Network(_) | Command::AddNode(_) => {
                                true
                            }
                            // A node going down or up takes its tasks out of or back
                            // into the balancers.
                            Command::SetStatus { .. } | Command::SetAddr { .. } => {
                                !c.networks.tasks.is_empty()
                            }
                            _ => false,
                        };
                        m.orch.assign_due |= tasks_changed;
                    }
                    r
                }
                (Err(e), _) => Err(format!("undecodable command at index {index}: {e}")),
                (_, None) => Err("this manager has no cluster state yet".into()),
            },
            // A leader's first entry in its term, or a change of voters: nothing to apply.
            Payload::Noop | Payload::Config(_) => Ok(()),
        };
        if let Some(w) = waiter {
            self.finish_waiter(w, result);
        }
        self.after_apply(now, &removed, &demoted);
        if let Some(id) = status_of {
            // A status proposed by an earlier leader can commit under us after what
            // gossip told us since (or a node comes in after gossip saw it): put it right.
            self.report_status(id);
        }
    }

    fn finish_waiter(&mut self, w: Waiter, result: Result<(), String>) {
        match (w, result) {
            (Waiter::Reply { reply, ok }, Ok(())) => self.answer(reply, Response::Done(ok)),
            (Waiter::Join { key, role, via }, Ok(())) => {
                let cluster_id = self.cluster().map_or([0; 16], |c| c.cluster_id);
                let managers = self.manager_list();
                let accepted = PeerMsg::JoinAccepted {
                    cluster_id,
                    role,
                    managers,
                };
                self.answer_joiner(key, via, accepted);
            }
            (Waiter::Nobody, Ok(())) => {}
            (Waiter::Round, Ok(())) => {
                if let Some(m) = self.manager_mut() {
                    m.orch.in_flight = false;
                }
            }
            (Waiter::Load, Ok(())) => {
                if let Some(load) = self.manager_mut().and_then(|m| m.load.as_mut()) {
                    load.committed += 1;
                }
                self.feed_load();
            }
            // Added meanwhile through another manager (a repeat of the request that
            // reached a leader before this one): accepted as it is.
            (Waiter::Join { key, via, .. }, Err(_)) if self.answer_known_joiner(key, via) => {}
            (w, Err(e)) => self.fail_waiter(w, e),
        }
    }

    /// After the state changed (`removed` nodes left it, `demoted` managers are workers
    /// now): keep peers, voters and reads in line with it.
    fn after_apply(&mut self, now: Instant, removed: &[NodeId], demoted: &[NodeId]) {
        self.finish_manager_join(None);
        self.refresh_peers(removed, demoted);
        self.serve_ready_reads();
        self.maybe_reconcile_statuses();
        self.reconcile_voters();
        self.maybe_step_down();
        self.nudge_promoted(now);
    }

    pub(super) fn manager_list(&self) -> Vec<ManagerAddr> {
        self.cluster()
            .map(|c| c.managers().map(|n| (n.id, n.key, n.addr)).collect())
            .unwrap_or_default()
    }

    /// Keeps the transport's peers, our address book and the membership file's manager
    /// list in line with the cluster state (a restarted node finds its cluster through
    /// that list). Nodes are forgotten only when the state says they were removed or
    /// demoted: while a restarted manager replays its log from an older snapshot, its
    /// state lags what it knew before, and forgetting on absence would cut it off from
    /// the very managers that can bring it up to date.
    fn refresh_peers(&mut self, removed: &[NodeId], demoted: &[NodeId]) {
        let Some(c) = self.cluster() else { return };
        let nodes: Vec<ManagerAddr> = c.nodes.values().map(|n| (n.id, n.key, n.addr)).collect();
        let in_state = self.manager_list();
        let Some(member) = self.member_mut() else {
            return;
        };
        let mut managers: Vec<ManagerAddr> = member
            .membership
            .managers
            .iter()
            .filter(|(id, _, _)| {
                !removed.contains(id)
                    && !demoted.contains(id)
                    && !in_state.iter().any(|(s, _, _)| s == id)
            })
            .copied()
            .collect();
        managers.extend(in_state);
        managers.sort_by_key(|(id, _, _)| *id);
        let save = (member.membership.managers != managers).then(|| {
            member.membership.managers = managers;
            member.membership.clone()
        });
        if member.removed.len() + removed.len() <= MAX_REMOVED_REMEMBERED {
            member.removed.extend(removed);
        }
        for (id, _, _) in &nodes {
            member.removed.remove(id);
        }
        let gone: Vec<PeerKey> = removed
            .iter()
            // Gossip's word on a removed node is kept: gossip says nothing new about a
            // node whose status did not change, and the node may join again.
            .filter_map(|id| member.peers.remove(id).map(|(k, _)| k))
            .collect();
        for key in gone {
            // Removed from the cluster: its key is no longer accepted.
            self.emit(Effect::RemovePeer(key));
        }
        self.learn_peers(&nodes);
        if let Some(m) = save {
            self.emit(Effect::SaveMembership(Some(m)));
        }
    }

    /// A worker keeps the managers gossip tells of in its membership file: a restart
    /// looks for the cluster there, and the managers it joined through may be gone by
    /// then (a rack that loses power comes back without the node it was set up from).
    /// A manager's list comes from the cluster state instead.
    fn remember_manager(&mut self, id: NodeId, meta: &GossipMeta) {
        let NodeState::Worker(w) = &mut self.state else {
            return;
        };
        let list = &mut w.membership.managers;
        let entry = (id, meta.key, meta.addr);
        let at = list.iter().position(|(i, _, _)| *i == id);
        let changed = match (at, meta.manager) {
            (None, Some(true)) if list.len() < MAX_MANAGERS_REMEMBERED => {
                list.push(entry);
                list.sort_by_key(|(i, _, _)| *i);
                true
            }
            (Some(i), Some(true)) if list[i] != entry => {
                list[i] = entry;
                true
            }
            // Demoted; the last one known stays, a place to look is better than none.
            (Some(i), Some(false)) if list.len() > 1 => {
                list.remove(i);
                true
            }
            _ => false,
        };
        if changed {
            let saved = w.membership.clone();
            self.emit(Effect::SaveMembership(Some(saved)));
        }
    }

    /// Keeps which members gossip calls managers (see `Member::gossip_managers`).
    fn note_gossip_role(&mut self, id: NodeId, manager: Option<bool>) {
        let Some(g) = self.member_mut().map(|m| &mut m.gossip_managers) else {
            return;
        };
        match manager {
            Some(true) if g.len() < MAX_MANAGERS_REMEMBERED => {
                g.insert(id);
            }
            Some(false) => {
                g.remove(&id);
            }
            _ => {}
        }
    }

    /// The leader keeps Raft's voters equal to the managers in the cluster state, one
    /// change at a time.
    fn reconcile_voters(&mut self) {
        let Some(m) = self.manager() else { return };
        let Some(c) = m.cluster.as_ref() else { return };
        if m.raft.role != Role::Leader || m.raft.config_pending || !m.state_current() {
            return;
        }
        let (voters, learners) = (&m.raft.voters, &m.raft.learners);
        let want: Vec<NodeId> = c.managers().map(|n| n.id).collect();
        // A manager becomes a voter in two steps: a learner first, which Raft replicates
        // to without counting it, then a voter once it has acknowledged something (it
        // runs Raft). One that never comes up (its join's answer was lost, it crashed
        // mid-join, it died before hearing of its promotion) never holds a vote nobody
        // casts: with two voters that would lose the quorum for good. Only a manager that
        // gossip shows alive is taken in at all.
        let coming = want
            .iter()
            .filter(|id| !voters.contains(id) && self.alive(**id));
        let learn = coming.clone().find(|id| !learners.contains(id)).copied();
        let vote = coming
            .clone()
            .find(|id| learners.contains(id) && !m.raft.unreached.contains(id))
            .copied();
        let remove = voters
            .iter()
            .chain(learners.iter())
            .find(|v| !want.contains(v))
            .copied();
        let me = self.me.id;
        match (learn.or(vote), remove) {
            (Some(id), _) if learn == Some(id) => {
                self.emit(Effect::ChangeVoters(ConfigChange::AddLearner(id)))
            }
            (Some(id), _) => self.emit(Effect::ChangeVoters(ConfigChange::AddVoter(id))),
            (None, Some(v)) if v == me => {
                // Hand over to a voter gossip shows alive that has acknowledged
                // something; a dead one would take the transfer and never finish it.
                let live = |id: &&NodeId| voters.contains(*id) && self.alive(**id);
                let next = want
                    .iter()
                    .filter(live)
                    .find(|id| !m.raft.unreached.contains(id))
                    .or(want.iter().find(live))
                    .copied();
                if let Some(next) = next {
                    self.emit(Effect::TransferLeadership(next));
                }
            }
            (None, Some(v)) => self.emit(Effect::ChangeVoters(ConfigChange::Remove(v))),
            (None, None) => {}
        }
    }

    /// The leader says our removal from the voters is committed (we missed the entries
    /// that said so, and campaign with an old configuration): stop Raft and carry on as
    /// a worker. Only a manager we know may say so.
    fn on_demoted(&mut self, from: PeerKey) {
        // A leader a known manager told us of counts: it may have joined after our
        // state, which then does not name it.
        let hinted = self
            .manager()
            .is_some_and(|m| m.hinted_leader == Some(from));
        let known = self.member().is_some_and(|m| {
            (hinted
                || m.gossip_managers.contains(&cluster::node_id(&from))
                || m.membership.managers.iter().any(|(_, k, _)| *k == from))
                && m.knows_key(&from)
        });
        if !known || !matches!(self.state, NodeState::Manager(_)) {
            self.counters.messages_ignored += 1;
            return;
        }
        self.step_down();
    }

    /// A manager that was demoted, once it is out of Raft's voters, stops Raft and
    /// continues as a worker.
    fn maybe_step_down(&mut self) {
        let me = self.me.id;
        let Some(m) = self.manager() else { return };
        let demoted = m
            .cluster
            .as_ref()
            .and_then(|c| c.nodes.get(&me))
            .is_some_and(|n| n.role == NodeRole::Worker);
        // The removal must be committed: an uncommitted one can be undone by a new
        // leader, and we would be a voter that runs no Raft.
        let out = !m.raft.voters.contains(&me) && !m.raft.voters.is_empty();
        if !demoted || !out || m.raft.config_pending || m.until_voter {
            return;
        }
        self.step_down();
    }

    fn step_down(&mut self) {
        self.fail_pending();
        let NodeState::Manager(m) = std::mem::replace(&mut self.state, NodeState::Idle) else {
            return;
        };
        let mut member = m.member;
        member.membership.role = NodeRole::Worker;
        self.emit(Effect::StopRaft);
        self.emit(Effect::SaveMembership(Some(member.membership.clone())));
        self.state = NodeState::Worker(member);
        if let Some((id, _)) = m.joined {
            // Demoted before the leader's state reached it: it is in, as a worker.
            let resp = Response::Done(
                "This node joined a swarm as a manager and was demoted to a worker since.".into(),
            );
            self.emit(Effect::Answer { id, resp });
        }
        self.log(Level::Info, "this node is now a worker".into());
    }

    /// A promoted worker runs no Raft until told to: the leader keeps telling it until
    /// it acknowledges something.
    fn nudge_promoted(&mut self, now: Instant) {
        let managers = self.manager_list();
        let Some(m) = self.manager_mut() else { return };
        if m.raft.role != Role::Leader {
            m.promoted_sent.clear();
            return;
        }
        let unreached = m.raft.unreached.clone();
        m.promoted_sent.retain(|id, _| unreached.contains(id));
        let due: Vec<NodeId> = unreached
            .iter()
            .filter(|id| {
                m.promoted_sent
                    .get(id)
                    .is_none_or(|t| now >= *t + PROMOTE_RETRY)
            })
            .copied()
            .collect();
        for id in &due {
            m.promoted_sent.insert(*id, now);
        }
        for id in due {
            self.send_id(
                id,
                PeerMsg::Promoted {
                    managers: managers.clone(),
                },
            );
        }
    }

    // ---- debug write load ------------------------------------------------------

    pub(super) fn start_load(&mut self, reply: Reply, count: u64, in_flight: u64, node: NodeId) {
        let Some(m) = self.manager_mut() else { return };
        if m.load.is_some() {
            return self.answer(
                reply,
                Response::Error("a debug write load is already running".into()),
            );
        }
        m.load = Some(Load {
            reply,
            node,
            count,
            in_flight,
            proposed: 0,
            committed: 0,
        });
        self.feed_load();
    }

    /// Keeps the load's writes in flight, and answers once all committed.
    fn feed_load(&mut self) {
        let Some(load) = self.manager_mut().and_then(|m| m.load.as_mut()) else {
            return;
        };
        if load.committed == load.count {
            let (reply, count) = (load.reply, load.count);
            if let Some(m) = self.manager_mut() {
                m.load = None;
            }
            return self.answer(reply, Response::Done(format!("{count} writes committed")));
        }
        let mut cmds = Vec::new();
        while load.proposed < load.count && load.proposed - load.committed < load.in_flight {
            load.proposed += 1;
            cmds.push(Command::UpdateNode {
                id: load.node,
                availability: None,
                label_add: vec![("swarmlet.debug.write".into(), load.proposed.to_string())],
                label_rm: vec![],
            });
        }
        for cmd in cmds {
            self.propose(cmd, Waiter::Load);
        }
    }

    // ---- reads -------------------------------------------------------------------

    /// Linearizable cluster reads: Raft confirms we still lead, then the read is served
    /// once our state has applied that far.
    pub(super) fn start_read(&mut self, only: Option<Vec<String>>, reply: Reply, asker: NodeId) {
        let Some(m) = self.manager_mut() else { return };
        m.next_read += 1;
        let ctx = m.next_read;
        m.reads.insert(
            ctx,
            Read {
                reply,
                only,
                service: None,
                asker,
            },
        );
        self.emit(Effect::ReadIndex(ctx));
    }

    pub(super) fn start_service_read(&mut self, req: Request, reply: Reply, asker: NodeId) {
        let Some(m) = self.manager_mut() else { return };
        m.next_read += 1;
        let ctx = m.next_read;
        let read = Read {
            reply,
            only: None,
            service: Some(req),
            asker,
        };
        m.reads.insert(ctx, read);
        self.emit(Effect::ReadIndex(ctx));
    }

    fn on_read(&mut self, ctx: u64, result: Result<Index, ProposeError>) {
        let Some(m) = self.manager_mut() else { return };
        let Some(read) = m.reads.remove(&ctx) else {
            return;
        };
        match result {
            Ok(index) => {
                m.ready_reads.push((index, read));
                self.serve_ready_reads();
            }
            Err(e) => self.answer(read.reply, Response::Error(e.to_string())),
        }
    }

    fn serve_ready_reads(&mut self) {
        let Some(m) = self.manager_mut() else { return };
        let applied = m.applied;
        let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut m.ready_reads)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        m.ready_reads = later;
        for (_, r) in now {
            let resp = match &r.service {
                Some(req) => self.service_read(req, r.asker),
                None => self.node_list(r.only.as_deref(), r.asker),
            };
            self.answer(r.reply, resp);
        }
    }

    // ---- gossip ------------------------------------------------------------------

    fn on_gossip(&mut self, e: gossip::Event) {
        let me = self.me.id;
        let (id, status) = match e {
            gossip::Event::Alive { id, meta } => {
                // A manager that follows a leader knows the members from its cluster
                // state. Gossip still carries removed nodes (they keep talking to
                // workers, and refute their suspicion), and must not bring them back into
                // the transport's peers. A manager with no leader may have a state far
                // behind (restarted from an old snapshot); of the nodes its state does
                // not hold, it learns from gossip only the members of its Raft
                // configuration, the managers it must elect a leader with (Raft knows
                // their ids, gossip their addresses).
                let outside = self.manager().is_some_and(|m| {
                    let in_raft = m.raft.voters.contains(&id) || m.raft.learners.contains(&id);
                    m.member.removed.contains(&id)
                        || m.cluster
                            .as_ref()
                            .is_some_and(|c| !c.nodes.contains_key(&id))
                            && (m.raft.leader.is_some() || !in_raft)
                });
                // Metadata naming another node's key is not believed.
                let meta = GossipMeta::decode(&meta)
                    .filter(|m| cluster::node_id(&m.key) == id && id != me);
                if let Some(m) = meta {
                    if !outside {
                        self.learn_peers(&[(id, m.key, m.addr)]);
                        self.remember_manager(id, &m);
                    }
                    self.note_gossip_role(id, m.manager);
                }
                (id, gossip::Status::Alive)
            }
            gossip::Event::Suspect { id } => (id, gossip::Status::Suspect),
            gossip::Event::Dead { id } => (id, gossip::Status::Dead),
            gossip::Event::Left { id } => (id, gossip::Status::Left),
        };
        if let Some(m) = self.member_mut() {
            m.liveness.insert(id, status);
        }
        if status != gossip::Status::Suspect {
            self.report_status(id);
        }
        if status == gossip::Status::Alive {
            // A manager that comes up may now become a voter.
            self.reconcile_voters();
        }
    }

    /// The leader records what gossip learnt about a node in the replicated state.
    fn report_status(&mut self, id: NodeId) {
        let Some(m) = self.manager() else { return };
        if m.raft.role != Role::Leader {
            return;
        }
        let Some(c) = m.cluster.as_ref() else { return };
        let Some(n) = c.nodes.get(&id) else { return };
        let want = match m.member.liveness.get(&id) {
            // We lead, so we are up: a record marked Down while we were away is put right.
            _ if id == self.me.id => NodeStatus::Ready,
            Some(gossip::Status::Alive) => NodeStatus::Ready,
            Some(gossip::Status::Dead | gossip::Status::Left) => NodeStatus::Down,
            _ => return,
        };
        if n.status != want {
            self.propose(Command::SetStatus { id, status: want }, Waiter::Nobody);
        }
    }

    /// Leader: marks Down the nodes gossip has had no word on for [`UNHEARD_GRACE`]
    /// (gossip only tells of nodes someone has heard of since starting: a leader whose
    /// every peer restarted after a node died never hears of it); then looks again later.
    fn check_unheard(&mut self, now: Instant) {
        let me = self.me.id;
        let Some(m) = self.manager_mut() else { return };
        if m.raft.role != Role::Leader {
            m.unheard.clear();
            m.check_unheard_at = None;
            return;
        }
        let Some(c) = m.cluster.as_ref() else { return };
        let mut down = Vec::new();
        let mut unheard = BTreeMap::new();
        for n in c.nodes.values().filter(|n| n.id != me) {
            if m.member.liveness.contains_key(&n.id) {
                continue;
            }
            let since = m.unheard.get(&n.id).copied().unwrap_or(now);
            unheard.insert(n.id, since);
            if n.status == NodeStatus::Ready && now >= since + UNHEARD_GRACE {
                down.push(n.id);
            }
        }
        m.unheard = unheard;
        m.check_unheard_at = Some(now + UNHEARD_GRACE / 3);
        for id in down {
            let cmd = Command::SetStatus {
                id,
                status: NodeStatus::Down,
            };
            self.propose(cmd, Waiter::Nobody);
        }
    }

    /// A leader records gossip's word on every node once per term (and again when the
    /// voters change), as soon as its state is current: a stale one may lack the nodes
    /// that changed since (a manager that joined and died while it was behind).
    fn maybe_reconcile_statuses(&mut self) {
        let Some(m) = self.manager_mut() else { return };
        let term = m.raft.term;
        if m.raft.role != Role::Leader || !m.state_current() || m.statuses_reconciled == Some(term)
        {
            return;
        }
        m.statuses_reconciled = Some(term);
        self.reconcile_statuses();
    }

    /// Proposes, for every node of the state, what gossip last said of it.
    fn reconcile_statuses(&mut self) {
        let ids: Vec<NodeId> = self
            .manager()
            .and_then(|m| m.cluster.as_ref())
            .map(|c| c.nodes.keys().copied().collect())
            .unwrap_or_default();
        for id in ids {
            self.report_status(id);
        }
    }

    /// Gossip's view of a node, for `node ls`.
    pub(super) fn alive(&self, id: NodeId) -> bool {
        id == self.me.id
            || self
                .member()
                .and_then(|m| m.liveness.get(&id))
                .is_some_and(|s| *s == gossip::Status::Alive)
    }

    // ---- leaving -----------------------------------------------------------------

    /// Forgets the cluster (after `leave`): every part of membership is closed down.
    pub(super) fn forget_cluster(&mut self) {
        if let Some((id, _)) = self.manager_mut().and_then(|m| m.joined.take()) {
            let resp = Response::Error("this node left the swarm while joining it".into());
            self.emit(Effect::Answer { id, resp });
        }
        self.fail_pending();
        let peers: Vec<PeerKey> = self
            .member()
            .map(|m| m.peers.values().map(|(k, _)| *k).collect())
            .unwrap_or_default();
        let was_manager = matches!(self.state, NodeState::Manager(_));
        self.state = NodeState::Idle;
        self.emit(Effect::LeaveGossip);
        if was_manager {
            // A worker runs no Raft and holds no log (a demotion erased it).
            self.emit(Effect::StopRaft);
        }
        for k in peers {
            self.emit(Effect::RemovePeer(k));
        }
        self.emit(Effect::Unbind);
        self.emit(Effect::SaveMembership(None));
        let waiting: Vec<Forwarded> = std::mem::take(&mut self.forwarded).into_values().collect();
        for f in waiting {
            self.emit(Effect::Answer {
                id: f.request,
                resp: Response::Error("this node left the swarm".into()),
            });
        }
    }

    pub(super) fn start_init(
        &mut self,
        request: RequestId,
        snapshot_interval: u64,
        pools: crate::services::ipam::Pools,
    ) {
        self.state = NodeState::Initializing(Initializing {
            request,
            snapshot_interval,
            pools,
        });
    }

    pub(super) fn start_join(
        &mut self,
        now: Instant,
        request: RequestId,
        token: &crate::cluster::token::JoinToken,
        manager_addr: SocketAddr,
    ) {
        self.state = NodeState::Joining(Joining {
            request,
            manager: token.manager,
            manager_addr,
            token_role: token.role,
            psk: token.psk(),
            bound: None,
            deadline: now + JOIN_TIMEOUT,
            resend_at: now + JOIN_TIMEOUT,
            waiting: None,
        });
    }

    /// Leader: proposes adding a node; the answer goes out when it commits. `via` is the
    /// manager that relays the answer, when the joiner reached a follower.
    pub(super) fn propose_join(&mut self, j: super::requests::JoinAsk, via: Option<PeerKey>) {
        if !self.is_leader() {
            let why = "the leadership moved".to_string();
            return self.answer_joiner(j.key, via, PeerMsg::JoinWait(why));
        }
        if !self.manager().is_some_and(|m| m.state_current()) {
            // A leader just elected (or restarted) applies what it has not yet: its
            // state may give a known joiner a role the swarm has changed since.
            let why = "the leader is catching up with the log".to_string();
            return self.answer_joiner(j.key, via, PeerMsg::JoinWait(why));
        }
        if self.answer_known_joiner(j.key, via) {
            return;
        }
        let pending = self.manager().is_some_and(|m| {
            m.proposing
                .values()
                .chain(m.committing.values())
                .any(|w| matches!(w, Waiter::Join { key, .. } if *key == j.key))
        });
        if pending {
            return; // a repeat: the answer to the first request will come
        }
        let role = match j.role {
            TokenRole::Worker => NodeRole::Worker,
            TokenRole::Manager => NodeRole::Manager,
        };
        let record = cluster::NodeRecord {
            id: cluster::node_id(&j.key),
            key: j.key,
            addr: j.advertise,
            hostname: j.hostname,
            role,
            availability: cluster::Availability::Active,
            labels: j.labels.into_iter().collect(),
            status: NodeStatus::Ready,
        };
        let cmd = Command::AddNode(record);
        if let Some(Err(e)) = self.cluster().map(|c| c.validate(&cmd)) {
            return self.answer_joiner(j.key, via, PeerMsg::JoinRefused(e.to_string()));
        }
        self.propose(
            cmd,
            Waiter::Join {
                key: j.key,
                role,
                via,
            },
        );
    }

    /// A joiner already in the cluster state (its answer was lost and it asks again, or
    /// it left and comes back) is accepted with the record it has, in the role the state
    /// gives it: a user may have promoted or demoted it while its answer was lost, and
    /// that decision stands over the token it presented (which only let it in). Returns
    /// whether it was answered.
    pub(super) fn answer_known_joiner(&mut self, key: PeerKey, via: Option<PeerKey>) -> bool {
        let Some(c) = self.cluster() else {
            return false;
        };
        let Some(n) = c.node_by_key(&key) else {
            return false;
        };
        // A manager Raft has heard from that joins again has lost its log (it left with
        // --force): as the same voter, blank, it could help elect a leader missing
        // entries it once acknowledged. It must leave the voters first.
        let heard = self.manager().is_some_and(|m| {
            (m.raft.voters.contains(&n.id) || m.raft.learners.contains(&n.id))
                && !m.raft.unreached.contains(&n.id)
        });
        let answer = if n.role == NodeRole::Manager && heard {
            PeerMsg::JoinRefused(format!(
                "node {} left the swarm while a manager and its Raft log is gone; on a manager, demote it (`swarmlet node demote {}`), then join again",
                n.id, n.hostname
            ))
        } else {
            PeerMsg::JoinAccepted {
                cluster_id: c.cluster_id,
                role: n.role,
                managers: self.manager_list(),
            }
        };
        self.answer_joiner(key, via, answer);
        true
    }

    /// Sends a join answer to the joiner, directly or through the manager it reached.
    pub(super) fn answer_joiner(&mut self, joiner: PeerKey, via: Option<PeerKey>, answer: PeerMsg) {
        match via {
            Some(m) => self.send(
                m,
                PeerMsg::JoinRelay {
                    joiner,
                    answer: Box::new(answer),
                },
            ),
            None => self.send(joiner, answer),
        }
    }
}

impl Member {
    fn new(membership: Membership) -> Member {
        Member {
            membership,
            peers: BTreeMap::new(),
            liveness: BTreeMap::new(),
            removed: BTreeSet::new(),
            role_query_at: None,
            gossip_managers: BTreeSet::new(),
        }
    }

    /// The managers this member knows (from its membership file and gossip), but us.
    pub(super) fn manager_keys(&self, me: NodeId) -> Vec<PeerKey> {
        let mut keys: Vec<PeerKey> = self
            .membership
            .managers
            .iter()
            .filter(|(id, _, _)| *id != me)
            .map(|(_, k, _)| *k)
            .collect();
        for id in &self.gossip_managers {
            if let Some((k, _)) = self.peers.get(id) {
                if *id != me && !keys.contains(k) {
                    keys.push(*k);
                }
            }
        }
        keys
    }

    fn knows_key(&self, key: &PeerKey) -> bool {
        self.peers.values().any(|(k, _)| k == key)
    }
}

impl Manager {
    fn new(member: Member, cluster: Option<ClusterState>) -> Manager {
        Manager {
            member,
            cluster,
            raft: RaftView::default(),
            applied: Index(0),
            proposing: BTreeMap::new(),
            committing: BTreeMap::new(),
            reads: BTreeMap::new(),
            ready_reads: Vec::new(),
            next_read: 0,
            serving: BTreeSet::new(),
            answered: VecDeque::new(),
            promoted_sent: BTreeMap::new(),
            leader_told: BTreeMap::new(),
            load: None,
            joined: None,
            until_voter: false,
            unheard: BTreeMap::new(),
            check_unheard_at: None,
            role_query_at: None,
            hinted_leader: None,
            statuses_reconciled: None,
            orch: Default::default(),
        }
    }

    pub(super) fn state_is_current(&self) -> bool {
        self.state_current()
    }

    pub(super) fn cluster_ref(&self) -> Option<&ClusterState> {
        self.cluster.as_ref()
    }

    pub(super) fn applied_index(&self) -> u64 {
        self.applied.0
    }

    pub(super) fn raft(&self) -> &RaftView {
        &self.raft
    }

    /// Whether the state holds everything Raft knows committed: a leader acts on the
    /// state (voters, role answers) only then, never on a stale one that would undo
    /// what it does not know yet (a restarted leader replaying its log).
    fn state_current(&self) -> bool {
        let commit_known = self.raft.role != Role::Leader || self.raft.term_committed;
        self.cluster.is_some() && commit_known && self.applied >= self.raft.commit
    }

    /// Whether this manager should ask the managers it knows whether it still is one,
    /// and who leads: it has no state yet (joined, promoted, or restarted before the
    /// leader's state reached it); its state made it a worker and the configuration
    /// change that takes it out of Raft has not reached it (a leader stops replicating
    /// to a node it removed, so that change may never come); or it knows no leader (one
    /// elected after its state may be a node it has never heard of, whose messages it
    /// refuses; a follower's `LeaderHint` answer names it); or it is no voter in its own
    /// configuration (a learner, or out of it).
    fn unsure_of_role(&self, me: NodeId) -> bool {
        let Some(c) = &self.cluster else { return true };
        let demoted =
            !self.until_voter && c.nodes.get(&me).is_some_and(|n| n.role == NodeRole::Worker);
        // A learner never campaigns, so it learns of no new term by itself: if its
        // leader lost the leadership and the next one dropped it, its view of who leads
        // stays stale for ever.
        let learner = !self.raft.voters.contains(&me);
        demoted || learner || self.raft.leader.is_none()
    }
}

/// Requests that change the cluster state (a repeat must not run twice).
fn is_write(req: &Request) -> bool {
    matches!(
        req,
        Request::NodeUpdate { .. }
            | Request::NodeSetRole { .. }
            | Request::NodeRemove { .. }
            | Request::JoinToken { rotate: true, .. }
            | Request::ServiceCreate(_)
            | Request::ServiceUpdate { .. }
            | Request::ServiceScale(_)
            | Request::ServiceRemove(_)
            | Request::NetworkCreate(_)
            | Request::NetworkRemove(_)
    )
}

pub(super) fn role_name(r: NodeRole) -> &'static str {
    match r {
        NodeRole::Manager => "manager",
        NodeRole::Worker => "worker",
    }
}

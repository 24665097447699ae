//! One node's cores wired together: the control core decides, Raft replicates, gossip
//! watches. Pure like each of them: the daemon drives a `Stack` with real sockets and
//! disks, the simulation drives several with a virtual network, clock and disks.
//!
//! # Driving it
//!
//! ```text
//! loop {
//!     wait for a peer message, an API request, a finished log write, or poll_timeout()
//!     handle_message | handle_api | bound | persisted | handle_timeout
//!     while let Some(io) = poll_io() { carry it out (below) }
//! }
//! ```
//!
//! `Io::Persist` is the one asynchronous effect: the driver writes and syncs the job
//! wherever it likes (the daemon: on the blocking pool) and calls `persisted(job)` when
//! it is durable. Meanwhile the stack keeps serving gossip, timers and requests, but
//! takes no further Raft output: Raft's messages, committed entries and reads of a
//! job's `Ready` are released only once its writes are durable, so no vote, append
//! acknowledgement or answer depends on something a crash could lose. `OpenLog` and
//! `EraseLog` are rare (start of Raft, demotion): the driver may finish the write in
//! flight first and then answer them before taking the next effect.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use super::core::{Bound, Control, Effect, Input, NodeState, RaftView, Reply, RequestId};
use super::msg::{GossipMeta, Membership, PeerMsg};
use crate::api::{InfoView, RaftInfo, Request, Response};
use crate::cluster::{self, NodeRole};
use crate::gossip::{self, Gossip};
use crate::logging::Level;
use crate::raft::{
    self, Entry, HardState, Index, NodeId, Raft, ReadState, Ready, Role, Snapshot, SnapshotMeta,
};
use crate::transport::{PeerKey, PeerPolicy, Psk, PskId};

/// One durable write of Raft's state, in the order given.
#[derive(Clone, Debug, PartialEq)]
pub enum LogWrite {
    HardState(HardState),
    /// Entries at this index and after are void.
    Truncate(Index),
    /// Entries to append (replacing any at the same indexes).
    Entries(Vec<Entry>),
    /// A new snapshot replaces the log up to its index; `tail` are the entries after it
    /// that must stay, `hard` the hard state to keep with them.
    Snapshot {
        snapshot: Snapshot,
        hard: HardState,
        tail: Vec<Entry>,
    },
}

/// What a log holds when it is opened.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RaftLog {
    pub hard: HardState,
    pub snapshot: Option<Snapshot>,
    /// Entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
}

/// What the driver must do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Io {
    /// An encoded peer message for `to`.
    Send {
        to: PeerKey,
        data: Vec<u8>,
    },
    Answer {
        id: RequestId,
        resp: Response,
    },
    /// See [`Effect::Bind`]; answer with [`Stack::bound`].
    Bind {
        listen: SocketAddr,
        advertise: Option<SocketAddr>,
        toward: Option<SocketAddr>,
    },
    Unbind,
    SetPeer {
        key: PeerKey,
        addr: SocketAddr,
        psk: Psk,
        psk_id: PskId,
    },
    RemovePeer(PeerKey),
    SaveMembership(Option<Membership>),
    /// Open the Raft log and answer with [`Stack::log_opened`] before the next effect.
    OpenLog,
    /// Erase the Raft log (after any write in flight).
    EraseLog,
    /// Make `writes` durable in order, then call [`Stack::persisted`] with `job`.
    Persist {
        job: u64,
        writes: Vec<LogWrite>,
    },
    Log(Level, String),
    /// Hand this node's agent its assignments.
    Assign(Box<crate::services::agent::Assignments>),
    /// Read these containers' logs (off the loop), then call [`Stack::logs_read`].
    ReadLogs {
        reply: Reply,
        reads: Vec<crate::api::LogRead>,
    },
}

/// Timing of the cores the stack makes.
#[derive(Clone, Debug, Default)]
pub struct StackConfig {
    pub raft: raft::Config,
    pub gossip: gossip::Config,
}

/// The rest of a `Ready`, released once its writes are durable.
#[derive(Debug)]
struct Held {
    job: u64,
    messages: Vec<raft::Envelope>,
    snapshot: Option<Snapshot>,
    committed: Vec<Entry>,
    reads: Vec<ReadState>,
}

/// Counters of what the stack dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StackCounters {
    /// Peer messages that did not decode.
    pub undecodable: u64,
    /// Raft or gossip messages from a key that is not a member's (a joiner's).
    pub not_from_member: u64,
    /// Vote requests a node new to Raft got from a member that is no manager it knows.
    pub votes_not_from_manager: u64,
    /// Messages for nodes whose key we do not know.
    pub unaddressable: u64,
    /// Voter changes and leadership transfers Raft refused (retried later).
    pub raft_refusals: u64,
}

pub struct Stack {
    control: Control,
    raft: Option<Raft>,
    gossip: Option<Gossip>,
    /// What gossip says about us; its role follows the control core's.
    meta: Option<GossipMeta>,
    cfg: StackConfig,
    rng: ChaCha8Rng,
    io: VecDeque<Io>,
    view: Option<RaftView>,
    /// A new cluster's first state, waiting for the log to open.
    bootstrap: Option<Vec<u8>>,
    next_job: u64,
    held: Option<Held>,
    /// Writes waiting for the job in flight to finish (snapshots the stack took).
    queued: Vec<LogWrite>,
    counters: StackCounters,
    /// When each stale campaigner was last told it is no manager.
    demoted_told: BTreeMap<PeerKey, Instant>,
    /// The members of the latest snapshot Raft holds (as far as the stack knows).
    snapshot_members: Option<raft::Membership>,
}

/// A campaigner that is no manager is told so at most this often (its pre-votes come
/// every election timeout, 0.5-1 s).
const DEMOTED_RETRY: Duration = Duration::from_secs(2);
/// Stale campaigners remembered at once; past this the memory starts afresh (a few
/// messages more is the only cost).
const MAX_DEMOTED_TOLD: usize = 64;

impl Stack {
    /// `seed` keys the control core's RNG (token secrets: give it OS randomness) and
    /// seeds the other cores' timers.
    pub fn new(
        me: super::core::Identity,
        membership: Option<Membership>,
        cfg: StackConfig,
        seed: [u8; 32],
    ) -> Stack {
        let mut rng = ChaCha8Rng::from_seed(seed);
        let mut control_seed = [0u8; 32];
        rng.fill_bytes(&mut control_seed);
        Stack {
            control: Control::new(me, membership, control_seed),
            raft: None,
            gossip: None,
            meta: None,
            cfg,
            rng,
            io: VecDeque::new(),
            view: None,
            bootstrap: None,
            next_job: 0,
            held: None,
            queued: Vec::new(),
            counters: StackCounters::default(),
            demoted_told: BTreeMap::new(),
            snapshot_members: None,
        }
    }

    /// Starts a node that was in a cluster, once its port is open again.
    pub fn resume(&mut self, now: Instant) {
        self.control.resume();
        self.drive(now);
    }

    pub fn control(&self) -> &Control {
        &self.control
    }

    pub fn raft(&self) -> Option<&Raft> {
        self.raft.as_ref()
    }

    pub fn gossip(&self) -> Option<&Gossip> {
        self.gossip.as_ref()
    }

    pub fn counters(&self) -> &StackCounters {
        &self.counters
    }

    /// The next effect, in order.
    pub fn poll_io(&mut self) -> Option<Io> {
        self.io.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let r = self.raft.as_ref().map(Raft::poll_timeout);
        let g = self.gossip.as_ref().map(Gossip::poll_timeout);
        [r, g, self.control.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    // ---- inputs ------------------------------------------------------------------

    pub fn handle_timeout(&mut self, now: Instant) {
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
        self.control.handle_timeout(now);
        self.drive(now);
    }

    /// A message from a peer, with the PSK id its session is keyed with.
    pub fn handle_message(&mut self, now: Instant, from: PeerKey, psk: Option<PskId>, data: &[u8]) {
        let msg = match PeerMsg::decode(data) {
            Ok(m) => m,
            Err(_) => {
                self.counters.undecodable += 1;
                return;
            }
        };
        // The transport authenticated the sender's key; a token holder that is not (yet)
        // a member gets no say in Raft or gossip. (A node that just joined still talks
        // over the session its token keyed: what counts is its key, not the session.)
        let member = self.control.admits(&from);
        let id = cluster::node_id(&from);
        // A member session from a key we no longer admit (removed since the handshake,
        // or let in only to hear that it was removed): nothing it says counts.
        if !member && psk == Some(PskId::MEMBER) {
            if self.control.owes_removal_notice(&from) {
                self.control.tell_removed(from);
            } else {
                self.counters.not_from_member += 1;
            }
            self.drive(now);
            return;
        }
        match msg {
            PeerMsg::Raft(_) | PeerMsg::Gossip(_) if !member => {
                self.counters.not_from_member += 1;
            }
            PeerMsg::Raft(raft::Message::PreVote { .. } | raft::Message::Vote { .. })
                if !self.raft_peer(&from, id) =>
            {
                self.counters.votes_not_from_manager += 1;
            }
            PeerMsg::Raft(m) => {
                if matches!(
                    m,
                    raft::Message::PreVote { .. } | raft::Message::Vote { .. }
                ) {
                    self.tell_demoted(now, from, id);
                    self.control.tell_who_leads(now, from);
                }
                match self.raft.as_mut() {
                    Some(r) => r.step(now, id, m),
                    // A leader replicates to us: its configuration counts us, though we
                    // run no Raft (we stepped down on a demotion a promotion undid).
                    None if matches!(
                        m,
                        raft::Message::Append { .. } | raft::Message::Snapshot { .. }
                    ) =>
                    {
                        self.control.replicated_to_worker(now, from)
                    }
                    None => {}
                }
            }
            PeerMsg::Gossip(m) => {
                if let Some(g) = self.gossip.as_mut() {
                    g.handle_message(now, id, m);
                }
            }
            msg => self.control.handle(now, Input::Peer { from, psk, msg }),
        }
        self.drive(now);
    }

    /// A worker of the cluster state campaigns: it missed its demotion and runs Raft
    /// with an old configuration, where nobody replicates to it any more. The leader
    /// tells it, once its removal from the configuration is committed (before that its
    /// vote may still count), and at most once per `DEMOTED_RETRY`.
    fn tell_demoted(&mut self, now: Instant, key: PeerKey, id: NodeId) {
        let Some(r) = self.raft.as_ref() else { return };
        let committed = r.role() == Role::Leader && !r.config_pending();
        let worker = self
            .control
            .cluster()
            .and_then(|c| c.node_by_key(&key))
            .is_some_and(|n| n.role == NodeRole::Worker);
        if !committed || !worker || r.membership().contains(id) {
            return;
        }
        if self
            .demoted_told
            .get(&key)
            .is_some_and(|t| now < *t + DEMOTED_RETRY)
        {
            return;
        }
        if self.demoted_told.len() >= MAX_DEMOTED_TOLD {
            self.demoted_told.clear();
        }
        self.demoted_told.insert(key, now);
        self.io.push_back(Io::Send {
            to: key,
            data: PeerMsg::Demoted.encode(),
        });
    }

    /// Whether Raft may consider a vote request from `key`. A node whose log does not yet
    /// hold a configuration with itself in it (a manager that has just joined or been
    /// promoted, its log empty) hears only managers it was told of: of the cluster state,
    /// of the membership file (the leader's list at the join or promotion). Otherwise
    /// a member that still believes it is a manager after its demotion or removal, and
    /// campaigns with an old configuration naming this node's id, would get its vote: two
    /// leaders in one term (SIM_SEED=212 of the control simulation). A node with a
    /// configuration of its own follows Raft's rules: filtering there would keep a
    /// lagging voter from electing a manager it has not heard of yet (SIM_SEED=217).
    fn raft_peer(&self, key: &PeerKey, _id: NodeId) -> bool {
        let c = &self.control;
        let me = c.id();
        self.raft
            .as_ref()
            .is_some_and(|r| r.membership().contains(me))
            || c.cluster()
                .and_then(|s| s.node_by_key(key))
                .is_some_and(|n| n.role == NodeRole::Manager)
            || c.membership()
                .is_some_and(|m| m.managers.iter().any(|(_, k, _)| k == key))
    }

    pub fn handle_api(&mut self, now: Instant, id: RequestId, req: Request) {
        self.control.handle(now, Input::Api { id, req });
        self.drive(now);
    }

    /// What this node's agent says of its tasks.
    pub fn handle_agent_status(&mut self, now: Instant, st: crate::services::agent::AgentStatus) {
        self.control.handle(now, Input::AgentStatus(Box::new(st)));
        self.drive(now);
    }

    /// The answer to `Io::ReadLogs`.
    pub fn logs_read(
        &mut self,
        now: Instant,
        reply: Reply,
        result: Result<Vec<crate::api::LogPiece>, String>,
    ) {
        self.control.handle(now, Input::LogsRead { reply, result });
        self.drive(now);
    }

    /// The wall clock (see [`Control::set_clock`]).
    pub fn set_clock(&mut self, now: Instant, unix_ms: u64) {
        self.control.set_clock(now, unix_ms);
    }

    /// The answer to `Io::Bind`.
    pub fn bound(&mut self, now: Instant, result: Result<Bound, String>) {
        self.control.handle(now, Input::Bound(result));
        self.drive(now);
    }

    /// The answer to `Io::OpenLog`.
    pub fn log_opened(&mut self, now: Instant, log: RaftLog) {
        let id = self.control.id();
        let seed = self.rng.next_u64();
        let raft = match self.bootstrap.take() {
            Some(state) => {
                let (mut r, snap) = Raft::bootstrap(id, self.cfg.raft.clone(), state, now, seed);
                self.snapshot_members = Some(snap.meta.membership.clone());
                self.queued.push(LogWrite::Snapshot {
                    snapshot: snap,
                    hard: r.hard_state(),
                    tail: vec![],
                });
                // The only voter: lead at once rather than after an election timeout.
                r.campaign_now(now);
                r
            }
            None => {
                let snap = log.snapshot.unwrap_or(Snapshot {
                    meta: SnapshotMeta::default(),
                    data: vec![],
                });
                if snap.data.is_empty() {
                    self.snapshot_members = Some(snap.meta.membership.clone());
                } else {
                    self.install_snapshot(now, &snap.meta, snap.data.clone(), false);
                }
                let mut r = Raft::restore(
                    id,
                    self.cfg.raft.clone(),
                    log.hard,
                    snap,
                    log.entries,
                    now,
                    seed,
                );
                // The only voter (a one-manager cluster, common on the edge): nobody else
                // can lead, so lead now instead of after an election timeout.
                let alone = r.membership().voters.iter().eq([&id]);
                if alone {
                    r.campaign_now(now);
                }
                r
            }
        };
        self.raft = Some(raft);
        self.drive(now);
    }

    /// A `Persist` job is durable: release what waited on it.
    pub fn persisted(&mut self, now: Instant, job: u64) {
        let Some(held) = self.held.take_if(|h| h.job == job) else {
            return;
        };
        self.release(now, held);
        self.drive(now);
    }

    /// Hands the control core the state a snapshot holds: our own at start-up, or the
    /// leader's (`from_leader`).
    fn install_snapshot(
        &mut self,
        now: Instant,
        meta: &SnapshotMeta,
        data: Vec<u8>,
        from_leader: bool,
    ) {
        self.snapshot_members = Some(meta.membership.clone());
        let index = meta.index;
        self.control.handle(
            now,
            Input::Snapshot {
                index,
                data,
                from_leader,
            },
        );
    }

    /// Sends, applies and answers what a durable `Ready` held.
    fn release(&mut self, now: Instant, held: Held) {
        for env in held.messages {
            let msg = PeerMsg::Raft(env.msg);
            self.send_id(env.to, &msg);
        }
        if let Some(s) = held.snapshot {
            self.install_snapshot(now, &s.meta, s.data, true);
        }
        for e in held.committed {
            let (index, payload) = (e.index, e.payload);
            self.control
                .handle(now, Input::Committed { index, payload });
        }
        for r in held.reads {
            let (ctx, result) = (r.ctx, r.result);
            self.control.handle(now, Input::Read { ctx, result });
        }
        self.maybe_compact();
    }

    // ---- the wiring --------------------------------------------------------------

    /// Moves outputs between the cores until none has any left.
    fn drive(&mut self, now: Instant) {
        loop {
            let mut progress = false;
            while let Some(e) = self.control.poll_effect() {
                progress = true;
                self.carry_out(now, e);
            }
            progress |= self.drain_raft(now);
            progress |= self.drain_gossip(now);
            progress |= self.refresh_view(now);
            progress |= self.refresh_meta(now);
            if !progress {
                break;
            }
        }
    }

    fn carry_out(&mut self, now: Instant, e: Effect) {
        match e {
            Effect::Send { to, msg } => self.io.push_back(Io::Send {
                to,
                data: msg.encode(),
            }),
            Effect::Answer { id, resp } => self.io.push_back(Io::Answer { id, resp }),
            Effect::Bind {
                listen,
                advertise,
                toward,
            } => self.io.push_back(Io::Bind {
                listen,
                advertise,
                toward,
            }),
            Effect::Unbind => self.io.push_back(Io::Unbind),
            Effect::SetPeer {
                key,
                addr,
                psk,
                psk_id,
            } => self.io.push_back(Io::SetPeer {
                key,
                addr,
                psk,
                psk_id,
            }),
            Effect::RemovePeer(k) => self.io.push_back(Io::RemovePeer(k)),
            Effect::SaveMembership(m) => self.io.push_back(Io::SaveMembership(m)),
            Effect::Log(level, text) => self.io.push_back(Io::Log(level, text)),
            Effect::Assign(a) => self.io.push_back(Io::Assign(a)),
            Effect::ReadLogs { reply, reads } => self.io.push_back(Io::ReadLogs { reply, reads }),
            Effect::StartRaft { bootstrap } => {
                self.bootstrap = bootstrap;
                self.io.push_back(Io::OpenLog);
            }
            Effect::StopRaft => {
                self.raft = None;
                self.view = None;
                self.bootstrap = None;
                self.snapshot_members = None;
                self.queued.clear();
                // What waited on a write now has nobody to go to.
                self.held = None;
                self.io.push_back(Io::EraseLog);
            }
            Effect::StartGossip { advertise, seeds } => {
                let meta = GossipMeta {
                    key: self.control.me.key,
                    addr: advertise,
                    manager: Some(self.control.is_manager()),
                };
                let seed = self.rng.next_u64();
                let mut g = Gossip::new(
                    self.cfg.gossip.clone(),
                    self.control.id(),
                    meta.encode(),
                    now,
                    seed,
                );
                for s in seeds {
                    g.join(s);
                }
                self.gossip = Some(g);
                self.meta = Some(meta);
            }
            Effect::LeaveGossip => {
                if let Some(g) = self.gossip.as_mut() {
                    g.leave();
                }
                self.drain_gossip(now);
                self.gossip = None;
                self.meta = None;
            }
            Effect::Propose { tag, cmd } => {
                let result = match self.raft.as_mut() {
                    Some(r) => r.propose(cmd.encode()),
                    None => Err(raft::ProposeError::NotLeader(None)),
                };
                self.control.handle(now, Input::Proposed { tag, result });
            }
            Effect::ChangeVoters(change) => {
                if let Some(r) = self.raft.as_mut() {
                    if r.propose_config(change).is_err() {
                        self.counters.raft_refusals += 1;
                    }
                }
            }
            Effect::TransferLeadership(to) => {
                if let Some(r) = self.raft.as_mut() {
                    if r.transfer_leadership(now, to).is_err() {
                        self.counters.raft_refusals += 1;
                    }
                }
            }
            Effect::ReadIndex(ctx) => match self.raft.as_mut() {
                Some(r) => r.read_index(ctx),
                None => {
                    let result = Err(raft::ProposeError::NotLeader(None));
                    self.control.handle(now, Input::Read { ctx, result });
                }
            },
        }
    }

    /// Takes Raft's output unless a write is in flight. Writes go out as a job; the rest
    /// waits for it (or is released at once when there is nothing to write).
    fn drain_raft(&mut self, now: Instant) -> bool {
        if self.held.is_some() {
            return false;
        }
        let ready = match self.raft.as_mut() {
            Some(r) => r.take_ready(),
            None => None,
        };
        let Some(ready) = ready else {
            return self.flush_queued();
        };
        let hard = self.raft.as_ref().map(Raft::hard_state).unwrap_or_default();
        let mut writes = std::mem::take(&mut self.queued);
        writes.extend(writes_of(&ready, hard));
        self.next_job += 1;
        let held = Held {
            job: self.next_job,
            messages: ready.messages,
            snapshot: ready.snapshot,
            committed: ready.committed,
            reads: ready.reads,
        };
        if writes.is_empty() {
            self.release(now, held);
        } else {
            self.io.push_back(Io::Persist {
                job: held.job,
                writes,
            });
            self.held = Some(held);
        }
        true
    }

    /// Sends writes the stack queued (a snapshot it took) when Raft has none.
    fn flush_queued(&mut self) -> bool {
        if self.queued.is_empty() {
            return false;
        }
        self.next_job += 1;
        let job = self.next_job;
        self.held = Some(Held {
            job,
            messages: vec![],
            snapshot: None,
            committed: vec![],
            reads: vec![],
        });
        let writes = std::mem::take(&mut self.queued);
        self.io.push_back(Io::Persist { job, writes });
        true
    }

    /// Every `snapshot_interval` applied entries, the state becomes a snapshot and the
    /// log before it goes, in memory now and on disk with the next write.
    fn maybe_compact(&mut self) {
        let interval = self.control.snapshot_interval();
        let Some(r) = self.raft.as_mut() else { return };
        let applied = r.status().applied;
        // A member that has acknowledged nothing yet catches up from the snapshot. One
        // older than the latest change of members hands it configurations it is no
        // longer in, or was alone in: the node that initialized the cluster, re-added
        // with an empty log, found itself the only voter of the first snapshot and
        // elected itself (SIM_SEED=1005192 of the control simulation). The leader takes a
        // fresh snapshot for it.
        let newcomer = r.role() == Role::Leader
            && self.view.as_ref().is_some_and(|v| !v.unreached.is_empty())
            && self.snapshot_members.as_ref() != Some(r.membership())
            && applied > r.snapshot_index();
        if applied.0.saturating_sub(r.snapshot_index().0) < interval && !newcomer {
            return;
        }
        let Some(state) = self.control.cluster() else {
            return;
        };
        let data = state.encode();
        let Some(meta) = r.compact(applied, data.clone()) else {
            return;
        };
        self.snapshot_members = Some(meta.membership.clone());
        let last = r.status().last_index;
        let tail: Vec<Entry> = (applied.0 + 1..=last.0)
            .filter_map(|i| r.log_entry(Index(i)).cloned())
            .collect();
        self.queued.push(LogWrite::Snapshot {
            snapshot: Snapshot { meta, data },
            hard: r.hard_state(),
            tail,
        });
    }

    fn drain_gossip(&mut self, now: Instant) -> bool {
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
            self.send_id(to, &PeerMsg::Gossip(m));
        }
        for e in events {
            self.control.handle(now, Input::Gossip(e));
        }
        progress
    }

    fn send_id(&mut self, to: NodeId, msg: &PeerMsg) {
        match self.control.peer_key(to) {
            Some(to) => self.io.push_back(Io::Send {
                to,
                data: msg.encode(),
            }),
            None => self.counters.unaddressable += 1,
        }
    }

    /// Spreads a change of our role (promoted, demoted) through gossip, and shows the
    /// control core again who gossip has alive: what a node learns from gossip depends
    /// on its role (a manager refuses nodes its state lacks, a worker has no state), and
    /// gossip reports a member only when its status changes.
    fn refresh_meta(&mut self, now: Instant) -> bool {
        let manager = self.control.is_manager();
        let (Some(g), Some(meta)) = (self.gossip.as_mut(), self.meta.as_mut()) else {
            return false;
        };
        if meta.manager == Some(manager) {
            return false;
        }
        meta.manager = Some(manager);
        g.set_meta(meta.encode());
        let alive: Vec<gossip::Event> = g
            .members()
            .filter(|(_, s)| *s == gossip::Status::Alive)
            .filter_map(|(id, _)| {
                let meta = g.meta_of(id)?.to_vec();
                Some(gossip::Event::Alive { id, meta })
            })
            .collect();
        for e in alive {
            self.control.handle(now, Input::Gossip(e));
        }
        true
    }

    /// Tells the control core when what it knows of Raft changed.
    fn refresh_view(&mut self, now: Instant) -> bool {
        let Some(r) = self.raft.as_ref() else {
            return false;
        };
        let me = r.id();
        let status = r.status();
        let view = RaftView {
            role: status.role,
            leader: status.leader,
            term: status.term,
            voters: status.membership.voters.clone(),
            learners: status.membership.learners.clone(),
            config_pending: r.config_pending(),
            unreached: r
                .progress()
                .map(|p| {
                    p.into_iter()
                        .filter(|(id, m)| *id != me && m.0 == 0)
                        .map(|(id, _)| id)
                        .collect()
                })
                .unwrap_or_default(),
            commit: status.commit,
            term_committed: r.term_committed(),
        };
        if self.view.as_ref() == Some(&view) {
            return false;
        }
        self.view = Some(view.clone());
        self.control.handle(now, Input::Raft(view));
        true
    }

    // ---- info --------------------------------------------------------------------

    /// `swarmlet info` as far as the cores know it (the driver adds the disk figures).
    pub fn info(&self) -> InfoView {
        let c = &self.control;
        let membership = c.membership();
        let local_state = match c.state() {
            NodeState::Idle => "inactive",
            NodeState::Initializing(_) | NodeState::Joining(_) => "pending",
            NodeState::Worker(_) | NodeState::Manager(_) => "active",
        };
        let state = c.cluster();
        let raft = self.raft.as_ref().map(|r| {
            let s = r.status();
            RaftInfo {
                snapshot_interval: c.snapshot_interval(),
                heartbeat_ms: millis(r.config().heartbeat_interval),
                election_timeout_ms: millis(r.config().election_timeout),
                term: s.term.0,
                first_index: r.log_first_index().0,
                last_index: s.last_index.0,
                commit_index: s.commit.0,
                applied_index: s.applied.0,
                snapshot_index: r.snapshot_index().0,
                wal_bytes: 0,
            }
        });
        let cc = c.counters();
        let sc = &self.counters;
        let counters = [
            ("peer_messages_undecodable", sc.undecodable),
            ("peer_messages_not_from_member", sc.not_from_member),
            ("raft_votes_not_from_manager", sc.votes_not_from_manager),
            ("peer_messages_unaddressable", sc.unaddressable),
            ("peer_messages_ignored", cc.messages_ignored),
            ("raft_refusals", sc.raft_refusals),
            ("proposals_refused", cc.proposals_refused),
            ("answers_too_large", cc.answers_too_large),
            ("removal_notices", cc.removal_notices),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        InfoView {
            node_id: c.id(),
            key: c.me.key.to_string(),
            hostname: c.me.hostname.clone(),
            local_state: local_state.into(),
            cluster_id: membership.map(|m| crate::transport::key::encode_hex(&m.cluster_id)),
            role: membership.map(|m| m.role),
            leader: self.raft.as_ref().and_then(Raft::leader),
            listen: membership.map(|m| m.listen),
            advertise: membership.map(|m| m.advertise),
            managers: state.map(|s| s.managers().count() as u64),
            nodes: state.map(|s| s.nodes.len() as u64),
            remote_managers: match state {
                Some(s) => s.managers().map(|n| (n.id, n.addr)).collect(),
                None => membership
                    .map(|m| m.managers.iter().map(|(id, _, a)| (*id, *a)).collect())
                    .unwrap_or_default(),
            },
            raft,
            counters,
        }
    }

    /// Whether this node holds Raft's role `role` (for tests and the simulation).
    pub fn raft_role(&self) -> Option<Role> {
        self.raft.as_ref().map(Raft::role)
    }

    /// The node's role in the cluster, if it is in one.
    pub fn node_role(&self) -> Option<NodeRole> {
        self.control.membership().map(|m| m.role)
    }

    /// Writes not yet handed out (for the simulation's crash model).
    pub fn write_in_flight(&self) -> bool {
        self.held.is_some()
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The durable part of a `Ready`, in the order the log must see it.
fn writes_of(ready: &Ready, hard: HardState) -> Vec<LogWrite> {
    let mut w = Vec::new();
    if let Some(s) = &ready.snapshot {
        w.push(LogWrite::Snapshot {
            snapshot: s.clone(),
            hard,
            tail: vec![],
        });
    }
    if let Some(h) = ready.hard_state {
        w.push(LogWrite::HardState(h));
    }
    if let Some(t) = ready.truncate_from {
        w.push(LogWrite::Truncate(t));
    }
    if !ready.append.is_empty() {
        w.push(LogWrite::Entries(ready.append.clone()));
    }
    w
}

/// The transport's admission of handshakes, for the daemon and the simulation alike:
/// members (and removed nodes the leader must tell so) with the member PSK, joiners with
/// their token's.
pub struct Admission<'a>(pub &'a Stack);

impl PeerPolicy for Admission<'_> {
    fn admit(&mut self, peer: &PeerKey, _: SocketAddr) -> Option<Psk> {
        let c = self.0.control();
        (c.admits(peer) || c.owes_removal_notice(peer)).then_some(super::MEMBER_PSK)
    }

    fn admit_with(&mut self, peer: &PeerKey, from: SocketAddr, id: PskId) -> Option<Psk> {
        match id {
            PskId::MEMBER => self.admit(peer, from),
            _ => self.0.control().join_psk(id),
        }
    }
}

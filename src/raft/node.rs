//! The Raft state machine of one node, with no IO.
//!
//! # Driving it
//!
//! ```text
//! loop {
//!     wait for a message or poll_timeout()
//!     step(now, from, msg) | handle_timeout(now) | propose(..) | read_index(..)
//!     if let Some(ready) = take_ready() {
//!         1. persist ready.hard_state, ready.truncate_from + ready.append, ready.snapshot;
//!            fsync
//!         2. send ready.messages           (never before step 1 is durable)
//!         3. apply ready.snapshot, then ready.committed, in order
//!         4. answer ready.reads once the state machine has applied their index
//!     }
//! }
//! ```
//!
//! Step 2 after step 1 is what makes a vote or an append acknowledgement durable before
//! anyone can rely on it. Time comes in as `now`; the election timer's randomness comes
//! from an RNG seeded by the caller.
//!
//! Features: PreVote and CheckQuorum (a node cut off and rejoining cannot depose a
//! healthy leader: peers that heard from a leader within the election timeout refuse to
//! pre-vote or vote), batched replication with per-follower flow control (probe, then up
//! to `max_inflight` pipelined appends), snapshots sent in chunks, single-server
//! membership changes (one at a time, effective when appended, none before the leader's
//! term has committed an entry), leadership transfer, and ReadIndex reads.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use super::log::Log;
use super::types::{
    ConfigChange, ConfigError, Entry, Envelope, HardState, Index, Membership, Message, NodeId,
    Payload, Snapshot, SnapshotMeta, Term,
};

/// Bytes of entries per append message: a few hundred node updates, and a quarter of the
/// transport's 1 MiB message limit, so one lost message costs little to resend.
pub const MAX_BATCH_BYTES: usize = 256 * 1024;
/// Bytes of snapshot per message, for the same reasons.
pub const SNAPSHOT_CHUNK_BYTES: usize = 256 * 1024;
/// Largest snapshot accepted from a leader: the memory a follower may spend receiving
/// one. The layer above's state must encode within it.
pub const MAX_SNAPSHOT_BYTES: usize = 64 << 20;

/// Timing and batching. The defaults aim at a new leader within about a second of the
/// old one dying on a LAN: followers notice after 0.5–1 s without a heartbeat, and a
/// pre-vote and a vote take two round trips.
#[derive(Clone, Debug)]
pub struct Config {
    /// Followers wait this long plus a random part as long again before campaigning.
    pub election_timeout: Duration,
    pub heartbeat_interval: Duration,
    /// Entries and bytes per append message; bytes stay well under the transport's 1 MiB.
    pub max_batch_entries: usize,
    pub max_batch_bytes: usize,
    /// Append messages in flight to one follower before waiting for acknowledgements.
    pub max_inflight: usize,
    pub snapshot_chunk_bytes: usize,
    /// Largest snapshot we accept from a leader (memory bound while receiving it).
    pub max_snapshot_bytes: usize,
    /// Committed entries handed out per `Ready`, so one turn of the loop stays short.
    pub max_apply_batch: usize,
    /// Reads waiting for confirmation; more are refused rather than queued.
    pub max_pending_reads: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            election_timeout: Duration::from_millis(500),
            heartbeat_interval: Duration::from_millis(100),
            max_batch_entries: 256,
            max_batch_bytes: MAX_BATCH_BYTES,
            max_inflight: 8,
            snapshot_chunk_bytes: SNAPSHOT_CHUNK_BYTES,
            max_snapshot_bytes: MAX_SNAPSHOT_BYTES,
            max_apply_batch: 1024,
            max_pending_reads: 4096,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("{}", match .0 {
        Some(l) => format!("this manager is not the leader (node {l} is)"),
        None => "no leader is elected right now; try again in a moment".to_string(),
    })]
    NotLeader(Option<NodeId>),
    #[error("leadership transfer in progress")]
    Transferring,
    #[error("a membership change is still in progress")]
    ConfigPending,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("too many reads waiting")]
    TooManyReads,
}

/// The outcome of a `read_index` request: the index the read must wait for, or failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadState {
    pub ctx: u64,
    pub result: Result<Index, ProposeError>,
}

/// What the shell must do; see the module documentation for the order.
#[derive(Debug, Default)]
pub struct Ready {
    pub hard_state: Option<HardState>,
    /// Remove persisted entries at this index and after, before appending.
    pub truncate_from: Option<Index>,
    pub append: Vec<Entry>,
    /// A snapshot received from the leader: persist it, then load it into the state
    /// machine before applying `committed`.
    pub snapshot: Option<Snapshot>,
    pub messages: Vec<Envelope>,
    pub committed: Vec<Entry>,
    pub reads: Vec<ReadState>,
}

impl Ready {
    fn is_empty(&self) -> bool {
        self.hard_state.is_none()
            && self.truncate_from.is_none()
            && self.append.is_empty()
            && self.snapshot.is_none()
            && self.messages.is_empty()
            && self.committed.is_empty()
            && self.reads.is_empty()
    }

    fn truncate(&mut self, from: Index) {
        // Entries not yet handed out are simply dropped; only if the cut reaches into
        // what was already persisted does the shell need to truncate.
        let pending_from = self.append.first().map(|e| e.index);
        self.append.retain(|e| e.index < from);
        if pending_from.is_none_or(|p| from < p) {
            self.truncate_from = Some(self.truncate_from.map_or(from, |t| t.min(from)));
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    /// Unsure where the follower's log ends: one append at a time.
    Probe { waiting: bool },
    /// In sync: appends pipelined up to `max_inflight`.
    Replicate,
    /// Sending a snapshot; `offset` bytes acknowledged so far.
    Snapshot { offset: u64, waiting: bool },
}

#[derive(Clone, Debug)]
struct Progress {
    next: Index,
    matched: Index,
    flow: Flow,
    inflight: usize,
    /// Heard from since the last quorum check.
    active: bool,
    /// Highest heartbeat round acknowledged.
    round: u64,
    /// `matched` at the previous heartbeat: if it has not moved while entries are out,
    /// an append was lost and we fall back to probing (our retransmission timer).
    matched_at_heartbeat: Index,
}

#[derive(Clone, Debug)]
struct PendingRead {
    ctx: u64,
    index: Index,
    round: u64,
}

#[derive(Debug)]
struct Leader {
    progress: BTreeMap<NodeId, Progress>,
    round: u64,
    reads: VecDeque<PendingRead>,
    transfer: Option<(NodeId, Instant)>,
    quorum_check_at: Instant,
    heartbeat_at: Instant,
    /// Proposals arrived since the last broadcast.
    dirty: bool,
    /// The index of this term's first entry (the no-op); reads wait for it to commit.
    term_start: Index,
}

#[derive(Debug)]
enum State {
    Follower,
    PreCandidate { granted: BTreeSet<NodeId> },
    Candidate { granted: BTreeSet<NodeId> },
    Leader(Box<Leader>),
}

/// A snapshot being received in chunks.
#[derive(Debug)]
struct Incoming {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// A snapshot of our state machine, kept to send to followers that fell behind.
#[derive(Debug, Clone)]
struct Outgoing {
    meta: SnapshotMeta,
    data: std::rc::Rc<Vec<u8>>,
}

/// One node's Raft. See the module documentation.
pub struct Raft {
    id: NodeId,
    cfg: Config,
    hard: HardState,
    log: Log,
    commit: Index,
    /// Everything up to here has been handed out for applying.
    applied: Index,
    membership: Membership,
    membership_index: Index,
    state: State,
    leader: Option<NodeId>,
    /// When we last heard from a current leader: inside the election timeout of it,
    /// we refuse to help anyone else get elected.
    leader_contact: Option<Instant>,
    election_at: Instant,
    rng: ChaCha8Rng,
    incoming: Option<Incoming>,
    outgoing: Option<Outgoing>,
    ready: Ready,
}

/// What `status` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub role: Role,
    pub term: Term,
    pub leader: Option<NodeId>,
    pub commit: Index,
    pub applied: Index,
    pub last_index: Index,
    pub membership: Membership,
}

impl Raft {
    /// A node from its persisted state: the hard state, the latest snapshot (data is
    /// what the state machine was restored from) and the log entries after it. A brand
    /// new node has all of these empty and waits to be contacted by a leader.
    pub fn restore(
        id: NodeId,
        cfg: Config,
        hard: HardState,
        snapshot: Snapshot,
        entries: Vec<Entry>,
        now: Instant,
        seed: u64,
    ) -> Raft {
        let log = Log::new(snapshot.meta.clone(), entries);
        let (membership, membership_index) = log.membership();
        let commit = snapshot.meta.index;
        let mut r = Raft {
            id,
            cfg,
            hard,
            log,
            commit,
            applied: commit,
            membership,
            membership_index,
            state: State::Follower,
            leader: None,
            leader_contact: None,
            election_at: now,
            rng: ChaCha8Rng::seed_from_u64(seed),
            incoming: None,
            outgoing: Some(Outgoing {
                meta: snapshot.meta,
                data: std::rc::Rc::new(snapshot.data),
            }),
            ready: Ready::default(),
        };
        r.reset_election_timer(now);
        r
    }

    /// The first node of a new cluster: a snapshot at index 1 holding `initial_state`
    /// (the layer above's empty state) with this node as the only voter. The shell must
    /// persist the returned snapshot before anything else.
    pub fn bootstrap(
        id: NodeId,
        cfg: Config,
        initial_state: Vec<u8>,
        now: Instant,
        seed: u64,
    ) -> (Raft, Snapshot) {
        let snap = Snapshot {
            meta: SnapshotMeta {
                index: Index(1),
                term: Term(1),
                membership: Membership::new([id]),
            },
            data: initial_state,
        };
        let hard = HardState {
            term: Term(1),
            vote: None,
        };
        let r = Raft::restore(id, cfg, hard, snap.clone(), vec![], now, seed);
        (r, snap)
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The term and vote as they must be on disk.
    pub fn hard_state(&self) -> HardState {
        self.hard
    }

    pub fn status(&self) -> Status {
        Status {
            id: self.id,
            role: self.role(),
            term: self.hard.term,
            leader: self.leader,
            commit: self.commit,
            applied: self.applied,
            last_index: self.log.last_index(),
            membership: self.membership.clone(),
        }
    }

    pub fn role(&self) -> Role {
        match self.state {
            State::Follower => Role::Follower,
            State::PreCandidate { .. } => Role::PreCandidate,
            State::Candidate { .. } => Role::Candidate,
            State::Leader(_) => Role::Leader,
        }
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// Match index of each follower, for `node ls`'s reachability (leader only).
    pub fn progress(&self) -> Option<BTreeMap<NodeId, Index>> {
        match &self.state {
            State::Leader(l) => Some(l.progress.iter().map(|(k, p)| (*k, p.matched)).collect()),
            _ => None,
        }
    }

    /// When `handle_timeout` must next be called.
    pub fn poll_timeout(&self) -> Instant {
        match &self.state {
            State::Leader(l) => {
                let t = l.heartbeat_at.min(l.quorum_check_at);
                l.transfer.map_or(t, |(_, at)| t.min(at))
            }
            _ => self.election_at,
        }
    }

    /// Outputs accumulated since the last call, if any.
    pub fn take_ready(&mut self) -> Option<Ready> {
        self.flush_appends();
        let upto = self.commit.min(self.log.last_index());
        if upto > self.applied {
            let batch = self.log.range(self.applied, upto, self.cfg.max_apply_batch);
            if let Some(last) = batch.last() {
                self.applied = last.index;
            }
            self.ready.committed.extend(batch);
        }
        if self.ready.is_empty() {
            return None;
        }
        Some(std::mem::take(&mut self.ready))
    }

    /// Whether committed entries remain beyond what the last `Ready` handed out.
    pub fn has_unapplied(&self) -> bool {
        self.commit.min(self.log.last_index()) > self.applied
    }

    // ---- inputs -------------------------------------------------------------------

    pub fn handle_timeout(&mut self, now: Instant) {
        if matches!(self.state, State::Leader(_)) {
            self.leader_tick(now);
        } else if now >= self.election_at {
            self.reset_election_timer(now);
            if self.can_campaign() {
                self.campaign(now, false);
            }
        }
    }

    /// Starts an election now instead of waiting for the timer (a fresh single-node
    /// cluster, or an operator's nudge). Does nothing if this node may not campaign.
    pub fn campaign_now(&mut self, now: Instant) {
        if self.can_campaign() && self.role() != Role::Leader {
            self.campaign(now, false);
        }
    }

    /// Appends a command if we lead; returns its index (committed later, maybe never).
    pub fn propose(&mut self, data: Vec<u8>) -> Result<Index, ProposeError> {
        self.check_can_propose()?;
        Ok(self.append_local(Payload::Command(data)))
    }

    /// Proposes one membership change; refused while another is uncommitted, and until
    /// an entry of this leader's term has committed.
    pub fn propose_config(&mut self, change: ConfigChange) -> Result<Index, ProposeError> {
        self.check_can_propose()?;
        if self.config_pending() {
            return Err(ProposeError::ConfigPending);
        }
        self.membership.apply(&change)?;
        Ok(self.append_local(Payload::Config(change)))
    }

    /// Starts a linearizable read: the answer comes back in `Ready::reads` with `ctx`.
    pub fn read_index(&mut self, ctx: u64) {
        let result = self.start_read(ctx);
        if let Err(e) = result {
            self.ready.reads.push(ReadState {
                ctx,
                result: Err(e),
            });
        }
    }

    /// Hands leadership to `to`, which must be a voter; proposals are refused meanwhile.
    pub fn transfer_leadership(&mut self, now: Instant, to: NodeId) -> Result<(), ProposeError> {
        let deadline = now + self.cfg.election_timeout;
        let last = self.log.last_index();
        let State::Leader(l) = &mut self.state else {
            return Err(ProposeError::NotLeader(self.leader));
        };
        if to == self.id || !self.membership.is_voter(to) {
            return Err(ConfigError::NotVoter(to).into());
        }
        l.transfer = Some((to, deadline));
        let caught_up = l.progress.get(&to).is_some_and(|p| p.matched == last);
        if caught_up {
            self.send(
                to,
                Message::TimeoutNow {
                    term: self.hard.term,
                },
            );
        } else {
            self.send_append(to, false);
        }
        Ok(())
    }

    /// Records that the state machine up to `index` is saved in `data`, so the log
    /// before it can go; returns the new snapshot's description (None if the log was
    /// already compacted that far). `index` must have been applied.
    pub fn compact(&mut self, index: Index, data: Vec<u8>) -> Option<SnapshotMeta> {
        assert!(index <= self.applied, "compacting unapplied entries");
        if index <= self.log.snapshot().index {
            return None;
        }
        let term = self
            .log
            .term_at(index)
            .expect("invariant: applied entries are in the log");
        let membership = self.membership_at(index);
        let meta = SnapshotMeta {
            index,
            term,
            membership,
        };
        self.log.compact(meta.clone());
        self.outgoing = Some(Outgoing {
            meta: meta.clone(),
            data: std::rc::Rc::new(data),
        });
        Some(meta)
    }

    pub fn log_len(&self) -> usize {
        self.log.len()
    }

    /// An entry of the in-memory log (for status and checkers).
    pub fn log_entry(&self, i: Index) -> Option<&Entry> {
        self.log.entry(i)
    }

    /// Leader: whether an entry of its own term has committed, so that its commit index
    /// covers everything any earlier leader committed. False on a follower.
    pub fn term_committed(&self) -> bool {
        matches!(&self.state, State::Leader(l) if self.commit >= l.term_start)
    }

    /// Whether no membership change may be proposed now: one is appended but not yet
    /// committed, or (on a leader) no entry of its term has committed yet. The second
    /// is the errata to single-server changes in the Raft thesis: a change appended
    /// before the leader's term commits could be lost to a candidate elected under an
    /// older configuration, together with entries committed under the newer one.
    pub fn config_pending(&self) -> bool {
        let leader = matches!(self.state, State::Leader(_));
        self.membership_index > self.commit || (leader && !self.term_committed())
    }

    /// The index the latest snapshot covers.
    pub fn snapshot_index(&self) -> Index {
        self.log.snapshot().index
    }

    /// Timing and batching in force.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn log_first_index(&self) -> Index {
        self.log.first_index()
    }

    /// Handles a message from a peer. Anything a peer sends is handled without panicking;
    /// messages from non-members are ignored (the transport already authenticated them).
    pub fn step(&mut self, now: Instant, from: NodeId, msg: Message) {
        if from == self.id {
            return;
        }
        let term = msg.term();
        if term > self.hard.term {
            match &msg {
                Message::PreVote { .. } => {} // never changes our term
                Message::PreVoteResp { granted: true, .. } => {}
                Message::Vote { transfer, .. } if !*transfer && self.in_lease(now) => {
                    return; // a healthy leader exists: ignore a disruptive candidate
                }
                Message::Append { .. } | Message::Snapshot { .. } | Message::TimeoutNow { .. } => {
                    self.become_follower(now, term, Some(from));
                }
                _ => self.become_follower(now, term, None),
            }
        } else if term < self.hard.term {
            match msg {
                // Tell a stale leader or candidate about the newer term.
                Message::Append { round, .. } | Message::Snapshot { round, .. } => {
                    let resp = Message::AppendResp {
                        term: self.hard.term,
                        index: self.log.last_index(),
                        success: false,
                        round,
                    };
                    self.send(from, resp);
                }
                Message::PreVote { .. } => {
                    let resp = Message::PreVoteResp {
                        term: self.hard.term,
                        granted: false,
                    };
                    self.send(from, resp);
                }
                _ => {}
            }
            return;
        }
        match msg {
            Message::PreVote {
                term,
                last_index,
                last_term,
            } => self.on_pre_vote(now, from, term, last_index, last_term),
            Message::PreVoteResp { term, granted } => {
                self.on_pre_vote_resp(now, from, term, granted)
            }
            Message::Vote {
                last_index,
                last_term,
                ..
            } => self.on_vote(now, from, last_index, last_term),
            Message::VoteResp { granted, .. } => self.on_vote_resp(now, from, granted),
            Message::Append {
                prev_index,
                prev_term,
                entries,
                commit,
                round,
                ..
            } => self.on_append(now, from, prev_index, prev_term, entries, commit, round),
            Message::AppendResp {
                index,
                success,
                round,
                ..
            } => self.on_append_resp(from, index, success, round),
            Message::Snapshot {
                meta,
                offset,
                data,
                done,
                round,
                ..
            } => self.on_snapshot(now, from, meta, offset, data, done, round),
            Message::SnapshotResp {
                offset,
                done,
                index,
                round,
                ..
            } => self.on_snapshot_resp(from, offset, done, index, round),
            Message::TimeoutNow { .. } => {
                if self.membership.is_voter(self.id) {
                    self.campaign(now, true);
                }
            }
        }
    }

    // ---- elections ----------------------------------------------------------------

    fn in_lease(&self, now: Instant) -> bool {
        match self.state {
            State::Leader(_) => true,
            _ => self
                .leader_contact
                .is_some_and(|t| self.leader.is_some() && now < t + self.cfg.election_timeout),
        }
    }

    /// A voter of the latest configuration in the log campaigns, committed or not (the
    /// thesis' rule; safe given the errata in [`Raft::config_pending`]). Waiting for the
    /// change to be applied would deadlock a cluster whose every node restarted: none
    /// knows its last change committed until a leader says so.
    fn can_campaign(&self) -> bool {
        self.membership.is_voter(self.id)
    }

    fn reset_election_timer(&mut self, now: Instant) {
        let base = self.cfg.election_timeout;
        let span = u64::try_from(base.as_micros()).unwrap_or(u64::MAX).max(1);
        let jitter = Duration::from_micros(self.rng.next_u64() % span);
        self.election_at = now + base + jitter;
    }

    fn campaign(&mut self, now: Instant, transfer: bool) {
        if transfer {
            self.become_candidate(now, true);
            return;
        }
        let mut granted = BTreeSet::new();
        granted.insert(self.id);
        self.state = State::PreCandidate { granted };
        self.leader = None;
        self.reset_election_timer(now);
        let msg = Message::PreVote {
            term: self.hard.term.next(),
            last_index: self.log.last_index(),
            last_term: self.log.last_term(),
        };
        self.broadcast_voters(msg);
        self.check_pre_votes(now);
    }

    fn become_candidate(&mut self, now: Instant, transfer: bool) {
        self.hard = HardState {
            term: self.hard.term.next(),
            vote: Some(self.id),
        };
        self.ready.hard_state = Some(self.hard);
        let mut granted = BTreeSet::new();
        granted.insert(self.id);
        self.state = State::Candidate { granted };
        self.leader = None;
        self.reset_election_timer(now);
        let msg = Message::Vote {
            term: self.hard.term,
            last_index: self.log.last_index(),
            last_term: self.log.last_term(),
            transfer,
        };
        self.broadcast_voters(msg);
        self.check_votes(now);
    }

    fn check_pre_votes(&mut self, now: Instant) {
        if let State::PreCandidate { granted } = &self.state {
            if self.count_voters(granted) >= self.membership.quorum() {
                self.become_candidate(now, false);
            }
        }
    }

    fn check_votes(&mut self, now: Instant) {
        if let State::Candidate { granted } = &self.state {
            if self.count_voters(granted) >= self.membership.quorum() {
                self.become_leader(now);
            }
        }
    }

    fn count_voters(&self, ids: &BTreeSet<NodeId>) -> usize {
        ids.iter()
            .filter(|id| self.membership.is_voter(**id))
            .count()
    }

    /// Holds nothing at all: a node that joins (or comes back after erasing its log)
    /// under an id some configuration may still count. It may once have acknowledged
    /// entries a candidate lacks, or voted in a term it no longer remembers, so it casts
    /// no vote until a leader has given it a log.
    fn blank(&self) -> bool {
        self.log.last_index() == Index(0)
    }

    fn on_pre_vote(
        &mut self,
        now: Instant,
        from: NodeId,
        term: Term,
        last_index: Index,
        last_term: Term,
    ) {
        let granted = term > self.hard.term
            && !self.in_lease(now)
            && !self.blank()
            && self.log.is_up_to_date(last_index, last_term);
        let term = if granted { term } else { self.hard.term };
        self.send(from, Message::PreVoteResp { term, granted });
    }

    fn on_pre_vote_resp(&mut self, now: Instant, from: NodeId, term: Term, granted: bool) {
        if let State::PreCandidate { granted: set } = &mut self.state {
            if granted && term == self.hard.term.next() {
                set.insert(from);
                self.check_pre_votes(now);
            }
        }
    }

    fn on_vote(&mut self, now: Instant, from: NodeId, last_index: Index, last_term: Term) {
        let free = self.hard.vote.is_none_or(|v| v == from);
        let granted = free
            && self.leader.is_none()
            && !self.blank()
            && self.log.is_up_to_date(last_index, last_term);
        if granted {
            self.hard.vote = Some(from);
            self.ready.hard_state = Some(self.hard);
            self.reset_election_timer(now);
        }
        self.send(
            from,
            Message::VoteResp {
                term: self.hard.term,
                granted,
            },
        );
    }

    fn on_vote_resp(&mut self, now: Instant, from: NodeId, granted: bool) {
        if let State::Candidate { granted: set } = &mut self.state {
            if granted {
                set.insert(from);
                self.check_votes(now);
            }
        }
    }

    fn become_follower(&mut self, now: Instant, term: Term, leader: Option<NodeId>) {
        if term > self.hard.term {
            self.hard = HardState { term, vote: None };
            self.ready.hard_state = Some(self.hard);
        }
        if let State::Leader(l) = &self.state {
            for r in &l.reads {
                self.ready.reads.push(ReadState {
                    ctx: r.ctx,
                    result: Err(ProposeError::NotLeader(leader)),
                });
            }
        }
        self.state = State::Follower;
        self.leader = leader;
        if leader.is_some() {
            self.leader_contact = Some(now);
        }
        self.reset_election_timer(now);
    }

    fn become_leader(&mut self, now: Instant) {
        let next = self.log.last_index().next();
        let progress = self
            .membership
            .members()
            .filter(|id| *id != self.id)
            .map(|id| {
                let p = Progress {
                    next,
                    matched: Index(0),
                    flow: Flow::Probe { waiting: false },
                    inflight: 0,
                    active: true,
                    round: 0,
                    matched_at_heartbeat: Index(0),
                };
                (id, p)
            })
            .collect();
        self.state = State::Leader(Box::new(Leader {
            progress,
            round: 0,
            reads: VecDeque::new(),
            transfer: None,
            quorum_check_at: now + self.cfg.election_timeout,
            heartbeat_at: now + self.cfg.heartbeat_interval,
            dirty: true,
            term_start: next,
        }));
        self.leader = Some(self.id);
        self.append_local(Payload::Noop);
        self.maybe_commit();
    }

    // ---- leader -------------------------------------------------------------------

    fn check_can_propose(&self) -> Result<(), ProposeError> {
        match &self.state {
            State::Leader(l) if l.transfer.is_some() => Err(ProposeError::Transferring),
            State::Leader(_) => Ok(()),
            _ => Err(ProposeError::NotLeader(self.leader)),
        }
    }

    fn append_local(&mut self, payload: Payload) -> Index {
        let index = self.log.last_index().next();
        let entry = Entry {
            term: self.hard.term,
            index,
            payload,
        };
        if let Payload::Config(c) = &entry.payload {
            // Validated by propose_config; the new configuration is in force at once.
            if let Ok(m) = self.membership.apply(c) {
                self.membership = m;
                self.membership_index = index;
                self.sync_progress();
            }
        }
        self.log.append(entry.clone());
        self.ready.append.push(entry);
        if let State::Leader(l) = &mut self.state {
            l.dirty = true;
        }
        self.maybe_commit();
        index
    }

    /// Adds progress for new members and drops it for removed ones.
    fn sync_progress(&mut self) {
        let next = self.log.last_index().next();
        let members: BTreeSet<NodeId> = self
            .membership
            .members()
            .filter(|i| *i != self.id)
            .collect();
        if let State::Leader(l) = &mut self.state {
            l.progress.retain(|id, _| members.contains(id));
            for id in members {
                l.progress.entry(id).or_insert(Progress {
                    next,
                    matched: Index(0),
                    flow: Flow::Probe { waiting: false },
                    inflight: 0,
                    active: true,
                    round: 0,
                    matched_at_heartbeat: Index(0),
                });
            }
        }
    }

    fn leader_tick(&mut self, now: Instant) {
        let State::Leader(l) = &mut self.state else {
            return;
        };
        if let Some((_, deadline)) = l.transfer {
            if now >= deadline {
                l.transfer = None; // the target did not take over in time: carry on
            }
        }
        if now >= l.quorum_check_at {
            l.quorum_check_at = now + self.cfg.election_timeout;
            let active = l
                .progress
                .iter()
                .filter(|(id, p)| p.active && self.membership.is_voter(**id))
                .count()
                + usize::from(self.membership.is_voter(self.id));
            for p in l.progress.values_mut() {
                p.active = false;
            }
            if active < self.membership.quorum() {
                // CheckQuorum: we cannot reach a majority, so we cannot be sure we lead.
                let term = self.hard.term;
                self.become_follower(now, term, None);
                return;
            }
        }
        let State::Leader(l) = &mut self.state else {
            return;
        };
        if now >= l.heartbeat_at {
            l.heartbeat_at = now + self.cfg.heartbeat_interval;
            let last = self.log.last_index();
            for p in l.progress.values_mut() {
                let stalled = p.matched == p.matched_at_heartbeat && p.matched < last;
                if stalled && p.flow == Flow::Replicate {
                    p.flow = Flow::Probe { waiting: false };
                    p.next = p.matched.next();
                    p.inflight = 0;
                }
                p.matched_at_heartbeat = p.matched;
            }
            self.broadcast_append(true);
        }
    }

    fn flush_appends(&mut self) {
        if let State::Leader(l) = &mut self.state {
            if l.dirty {
                l.dirty = false;
                self.broadcast_append(false);
            }
        }
    }

    fn broadcast_append(&mut self, heartbeat: bool) {
        let ids: Vec<NodeId> = match &self.state {
            State::Leader(l) => l.progress.keys().copied().collect(),
            _ => return,
        };
        for id in ids {
            self.send_append(id, heartbeat);
        }
    }

    /// Sends `to` what it needs next: entries, a snapshot chunk, or (for a heartbeat)
    /// at least an empty append that carries the commit index and the read round.
    fn send_append(&mut self, to: NodeId, heartbeat: bool) {
        let term = self.hard.term;
        let commit = self.commit;
        let State::Leader(l) = &mut self.state else {
            return;
        };
        let round = l.round;
        let Some(p) = l.progress.get_mut(&to) else {
            return;
        };
        if let Flow::Snapshot { offset, waiting } = p.flow {
            if !waiting || heartbeat {
                let Some(out) = self.outgoing.as_ref() else {
                    return;
                };
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(out.data.len());
                let end = (start + self.cfg.snapshot_chunk_bytes).min(out.data.len());
                let msg = Message::Snapshot {
                    term,
                    meta: out.meta.clone(),
                    offset,
                    data: out.data[start..end].to_vec(),
                    done: end == out.data.len(),
                    round,
                };
                p.flow = Flow::Snapshot {
                    offset,
                    waiting: true,
                };
                self.ready.messages.push(Envelope { to, msg });
            }
            return;
        }
        if p.next <= self.log.snapshot().index {
            // What the follower needs next was compacted: send the snapshot instead.
            p.flow = Flow::Snapshot {
                offset: 0,
                waiting: false,
            };
            p.inflight = 0;
            self.send_append(to, heartbeat);
            return;
        }
        let can_send_entries = match p.flow {
            Flow::Probe { waiting } => !waiting,
            Flow::Replicate => p.inflight < self.cfg.max_inflight,
            Flow::Snapshot { .. } => false,
        };
        let entries = if can_send_entries {
            self.log
                .slice(p.next, self.cfg.max_batch_entries, self.cfg.max_batch_bytes)
        } else {
            Vec::new()
        };
        if entries.is_empty() && !heartbeat {
            return;
        }
        // Entries go after next-1; a bare heartbeat goes after what is known to match.
        let prev_index = if entries.is_empty() && matches!(p.flow, Flow::Replicate) {
            p.matched.max(self.log.snapshot().index)
        } else {
            p.next.prev()
        };
        let Some(prev_term) = self.log.term_at(prev_index) else {
            return;
        };
        if let Some(last) = entries.last() {
            match &mut p.flow {
                Flow::Replicate => {
                    p.next = last.index.next();
                    p.inflight += 1;
                }
                Flow::Probe { waiting } => *waiting = true,
                Flow::Snapshot { .. } => {}
            }
        }
        let msg = Message::Append {
            term,
            prev_index,
            prev_term,
            entries,
            // The follower caps this at the last entry it knows matches us.
            commit,
            round,
        };
        self.ready.messages.push(Envelope { to, msg });
    }

    fn on_append_resp(&mut self, from: NodeId, index: Index, success: bool, round: u64) {
        let last = self.log.last_index();
        let State::Leader(l) = &mut self.state else {
            return;
        };
        let Some(p) = l.progress.get_mut(&from) else {
            return;
        };
        p.active = true;
        p.round = p.round.max(round);
        if success {
            if index > last {
                return; // claims entries we never sent: ignore
            }
            if index > p.matched {
                p.matched = index;
            }
            p.next = p.next.max(index.next());
            p.inflight = p.inflight.saturating_sub(1);
            if let Flow::Probe { .. } = p.flow {
                p.flow = Flow::Replicate;
                p.inflight = 0;
                p.next = p.matched.next();
            }
        } else if !matches!(p.flow, Flow::Snapshot { .. }) {
            // The follower's log ends at `index` or disagrees before it: back off. Below
            // what it acknowledged, it lost its log (a manager that left with --force
            // and joined again under the same id; or a late, reordered refusal): start
            // over from what it has, which at worst sends some entries twice.
            if index < p.matched {
                p.matched = index;
            }
            let hint = index.min(p.next.prev()).max(p.matched);
            p.next = hint.next();
            p.flow = Flow::Probe { waiting: false };
            p.inflight = 0;
        }
        let transfer_ready = l.transfer.is_some_and(|(t, _)| t == from) && p.matched == last;
        self.maybe_commit();
        self.confirm_reads();
        if transfer_ready {
            self.send(
                from,
                Message::TimeoutNow {
                    term: self.hard.term,
                },
            );
        }
        self.send_append(from, false);
    }

    fn on_snapshot_resp(
        &mut self,
        from: NodeId,
        offset: u64,
        done: bool,
        index: Index,
        round: u64,
    ) {
        let State::Leader(l) = &mut self.state else {
            return;
        };
        let Some(p) = l.progress.get_mut(&from) else {
            return;
        };
        p.active = true;
        p.round = p.round.max(round);
        if let Flow::Snapshot { .. } = p.flow {
            if done {
                if index <= self.log.last_index() {
                    p.matched = p.matched.max(index);
                }
                p.next = p.matched.next();
                p.flow = Flow::Probe { waiting: false };
            } else {
                p.flow = Flow::Snapshot {
                    offset,
                    waiting: false,
                };
            }
        }
        self.maybe_commit();
        self.confirm_reads();
        self.send_append(from, false);
    }

    /// Commits the highest index a majority of voters hold, if it is from our term.
    fn maybe_commit(&mut self) {
        let State::Leader(l) = &self.state else {
            return;
        };
        let mut matched: Vec<Index> = l
            .progress
            .iter()
            .filter(|(id, _)| self.membership.is_voter(**id))
            .map(|(_, p)| p.matched)
            .collect();
        if self.membership.is_voter(self.id) {
            matched.push(self.log.last_index());
        }
        let quorum = self.membership.quorum();
        if matched.len() < quorum {
            return;
        }
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let candidate = matched[quorum - 1];
        if candidate > self.commit && self.log.term_at(candidate) == Some(self.hard.term) {
            self.commit = candidate;
            if let State::Leader(l) = &mut self.state {
                l.dirty = true; // followers learn the new commit index promptly
            }
            if !self.membership.contains(self.id) && self.membership_index <= self.commit {
                // Our own removal is committed: step down and stay quiet.
                self.state = State::Follower;
                self.leader = None;
            }
        }
        self.confirm_reads();
    }

    fn start_read(&mut self, ctx: u64) -> Result<(), ProposeError> {
        let commit = self.commit;
        let quorum = self.membership.quorum();
        let solo = self.membership.voters.len() == 1 && self.membership.is_voter(self.id);
        let State::Leader(l) = &mut self.state else {
            return Err(ProposeError::NotLeader(self.leader));
        };
        if l.reads.len() >= self.cfg.max_pending_reads {
            return Err(ProposeError::TooManyReads);
        }
        let index = commit.max(l.term_start);
        if solo && quorum == 1 {
            l.reads.push_back(PendingRead {
                ctx,
                index,
                round: 0,
            });
        } else {
            l.round += 1;
            l.reads.push_back(PendingRead {
                ctx,
                index,
                round: l.round,
            });
            self.broadcast_append(true);
        }
        self.confirm_reads();
        Ok(())
    }

    /// Releases reads whose heartbeat round a majority acknowledged and whose index is
    /// committed.
    fn confirm_reads(&mut self) {
        let State::Leader(l) = &mut self.state else {
            return;
        };
        while let Some(r) = l.reads.front() {
            let acks = l
                .progress
                .iter()
                .filter(|(id, p)| self.membership.is_voter(**id) && p.round >= r.round)
                .count()
                + usize::from(self.membership.is_voter(self.id));
            if acks < self.membership.quorum() || self.commit < r.index {
                break;
            }
            let r = l.reads.pop_front().expect("invariant: front exists");
            self.ready.reads.push(ReadState {
                ctx: r.ctx,
                result: Ok(r.index),
            });
        }
    }

    // ---- follower -----------------------------------------------------------------

    fn heard_from_leader(&mut self, now: Instant, from: NodeId) {
        if !matches!(self.state, State::Follower) {
            self.state = State::Follower;
        }
        self.leader = Some(from);
        self.leader_contact = Some(now);
        self.reset_election_timer(now);
    }

    #[allow(clippy::too_many_arguments)]
    fn on_append(
        &mut self,
        now: Instant,
        from: NodeId,
        prev_index: Index,
        prev_term: Term,
        entries: Vec<Entry>,
        commit: Index,
        round: u64,
    ) {
        self.heard_from_leader(now, from);
        let reply = |index, success| Message::AppendResp {
            term: self.hard.term,
            index,
            success,
            round,
        };
        // Entries must be contiguous after prev_index and no older than prev_term.
        let well_formed = entries
            .iter()
            .enumerate()
            .all(|(i, e)| e.index.0 == prev_index.0 + 1 + i as u64 && e.term >= prev_term);
        if !well_formed {
            return;
        }
        let snap = self.log.snapshot().index;
        let (prev_index, prev_term, entries) = if prev_index < snap {
            // The start of this batch is already in our snapshot, hence committed.
            let skip = usize::try_from(snap.0 - prev_index.0).unwrap_or(usize::MAX);
            if entries.len() <= skip {
                let msg = reply(snap, true);
                self.send(from, msg);
                return;
            }
            let rest: Vec<Entry> = entries.into_iter().skip(skip).collect();
            (snap, self.log.snapshot().term, rest)
        } else {
            (prev_index, prev_term, entries)
        };
        if self.log.term_at(prev_index) != Some(prev_term) {
            let hint = if prev_index > self.log.last_index() {
                self.log.last_index()
            } else {
                self.log
                    .first_of_term_at(prev_index)
                    .prev()
                    .max(self.commit)
            };
            let msg = reply(hint, false);
            self.send(from, msg);
            return;
        }
        let last_new = Index(prev_index.0 + entries.len() as u64);
        let mut config_changed = false;
        for e in entries {
            match self.log.term_at(e.index) {
                Some(t) if t == e.term => continue,
                Some(_) => {
                    if e.index <= self.commit {
                        return; // a leader contradicting committed entries: ignore it
                    }
                    self.log.truncate_from(e.index);
                    self.ready.truncate(e.index);
                    config_changed = true;
                }
                None => {}
            }
            if matches!(e.payload, Payload::Config(_)) {
                config_changed = true;
            }
            self.log.append(e.clone());
            self.ready.append.push(e);
        }
        if config_changed {
            let (m, at) = self.log.membership();
            self.membership = m;
            self.membership_index = at;
        }
        let new_commit = commit.min(last_new);
        if new_commit > self.commit {
            self.commit = new_commit;
        }
        let msg = reply(last_new, true);
        self.send(from, msg);
    }

    #[allow(clippy::too_many_arguments)]
    fn on_snapshot(
        &mut self,
        now: Instant,
        from: NodeId,
        meta: SnapshotMeta,
        offset: u64,
        data: Vec<u8>,
        done: bool,
        round: u64,
    ) {
        self.heard_from_leader(now, from);
        let term = self.hard.term;
        let commit = self.commit;
        let reply = |offset, done, index| Message::SnapshotResp {
            term,
            offset,
            done,
            index,
            round,
        };
        if meta.index <= self.commit {
            // Nothing new in it for us.
            self.incoming = None;
            let msg = reply(offset + data.len() as u64, true, commit);
            self.send(from, msg);
            return;
        }
        if offset == 0 {
            self.incoming = Some(Incoming {
                meta: meta.clone(),
                data: Vec::new(),
            });
        }
        let Some(inc) = self.incoming.as_mut().filter(|i| i.meta == meta) else {
            let msg = reply(0, false, commit); // start over from the beginning
            self.send(from, msg);
            return;
        };
        if inc.data.len() as u64 != offset {
            let have = inc.data.len() as u64;
            let msg = reply(have, false, commit);
            self.send(from, msg);
            return;
        }
        if inc.data.len() + data.len() > self.cfg.max_snapshot_bytes {
            self.incoming = None;
            return;
        }
        inc.data.extend_from_slice(&data);
        let have = inc.data.len() as u64;
        if !done {
            let msg = reply(have, false, commit);
            self.send(from, msg);
            return;
        }
        let inc = self.incoming.take().expect("invariant: checked above");
        self.log.install(inc.meta.clone());
        self.ready.truncate_from = None;
        self.ready.append.clear();
        self.commit = inc.meta.index;
        self.applied = inc.meta.index;
        let (m, at) = self.log.membership();
        self.membership = m;
        self.membership_index = at;
        let data = std::rc::Rc::new(inc.data);
        self.outgoing = Some(Outgoing {
            meta: inc.meta.clone(),
            data: data.clone(),
        });
        self.ready.committed.clear();
        self.ready.snapshot = Some(Snapshot {
            meta: inc.meta,
            data: (*data).clone(),
        });
        let msg = reply(have, true, self.commit);
        self.send(from, msg);
    }

    // ---- helpers ------------------------------------------------------------------

    fn membership_at(&self, index: Index) -> Membership {
        let mut m = self.log.snapshot().membership.clone();
        let mut i = self.log.first_index();
        while i <= index {
            if let Some(Entry {
                payload: Payload::Config(c),
                ..
            }) = self.log.entry(i)
            {
                if let Ok(next) = m.apply(c) {
                    m = next;
                }
            }
            i = i.next();
        }
        m
    }

    fn send(&mut self, to: NodeId, msg: Message) {
        self.ready.messages.push(Envelope { to, msg });
    }

    fn broadcast_voters(&mut self, msg: Message) {
        let voters: Vec<NodeId> = self
            .membership
            .voters
            .iter()
            .copied()
            .filter(|v| *v != self.id)
            .collect();
        for v in voters {
            self.send(v, msg.clone());
        }
    }
}

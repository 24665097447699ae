//! SWIM membership and failure detection with the Lifeguard refinements. Pure: time
//! comes in as `now`, randomness from a seeded RNG, and messages go out through
//! `poll_transmit`; see [`Gossip`] for the driving loop.
//!
//! Each protocol period a node pings one member (round-robin over a shuffled list). No
//! ack within the probe timeout: it asks `indirect_checks` others to ping the member for
//! it. No ack by the end of the period: the member is suspected, and the suspicion is
//! gossiped. A suspected member refutes by raising its incarnation; otherwise, once the
//! suspicion timeout passes, it is declared dead. Lifeguard's three refinements:
//!
//! - **Local health**: a node that misses acks or nacks, or has to refute suspicions of
//!   itself, is probably the slow one; its multiplier (0..=`max_local_health`) stretches
//!   its own probe timeouts and intervals so it doubts itself before it accuses others.
//! - **Dynamic suspicion**: the timeout starts long and shrinks (logarithmically) as
//!   independent members confirm the suspicion (their own probe of it failed too).
//! - **Nacks**: indirect probers answer "I could not reach it either" in time, so the
//!   requester can tell a dead target from its own lost messages.
//!
//! Two channels spread membership:
//!
//! - **Piggybacking** (dissemination): news rides on pings and acks, least-sent and then
//!   newest first, each update about `retransmit_mult · log10(N)` times, at most
//!   [`PIGGYBACK_BYTES`] per message. Fast for a few changes; a burst of hundreds of
//!   joins overflows it, since every node would have to repeat every join a dozen times.
//! - **Anti-entropy** (push-pull): every `sync_interval` a node sends a random member a
//!   [`Message::Digest`], one hash of its view per bucket of member ids. The peer answers
//!   only if some bucket differs: the members of those buckets (in [`SYNC_CHUNK_BYTES`]
//!   chunks) and its own digest, to which the first node answers with its side of the
//!   same buckets. Views that agree cost one small datagram; views that differ exchange
//!   about what differs. A node whose exchange found a difference syncs again after
//!   `fast_sync_interval`, so while membership changes (a join burst, a healed partition)
//!   anti-entropy runs several times a second, and falls back when views agree. A join is
//!   the same exchange with the seed, plus the joiner's own announcement.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::raft::NodeId;
use crate::transport::endpoint::{MAX_PEERS, MAX_QUEUED_MESSAGES_PER_PEER};
use crate::transport::wire::FRAGMENT_PAYLOAD;
use crate::transport::MAX_MESSAGE_SIZE;

/// Members one node tracks besides itself. Every member is probed over a transport
/// session of its own, so gossip may know no more members than the transport keeps
/// peers: a member beyond the transport's table could never be reached, and would be
/// declared dead. 1,024 is far beyond an edge cluster, and bounds what peers can make
/// us remember.
pub const MAX_MEMBERS: usize = 1024;
const _: () = assert!(MAX_MEMBERS <= MAX_PEERS);
/// Metadata bytes per member. The daemon's (a 32-byte key and a socket address) is
/// under 60 bytes; 256 leaves room for a few more fields while a full state at
/// `MAX_MEMBERS` stays a few dozen sync chunks.
pub const MAX_META: usize = 256;
/// Most bytes one [`Update`] takes on the wire (postcard): three u64 varints of at most
/// 10 bytes (id, incarnation, from), the status tag, the metadata's length varint (2
/// bytes up to 16,383) and the metadata.
pub const MAX_UPDATE_LEN: usize = 3 * 10 + 1 + 2 + MAX_META;
/// Most bytes a message takes besides its updates or hashes: the variant tag, a seq or
/// flag, a target id and a length varint, with room to spare.
const MESSAGE_OVERHEAD: usize = 32;
/// Update bytes piggybacked on one ping, ack or ping-req: a probe and its news ride
/// one transport datagram, so a probe is lost no more often than a datagram (at real
/// metadata sizes, about 16 updates).
pub const PIGGYBACK_BYTES: usize = 1024;
const _: () = assert!(PIGGYBACK_BYTES + MESSAGE_OVERHEAD <= FRAGMENT_PAYLOAD);
const _: () = assert!(MAX_UPDATE_LEN <= PIGGYBACK_BYTES);
/// Update bytes in one [`Message::Sync`] chunk: seven datagrams, so at 1% datagram loss
/// a chunk arrives 93% of the time (a lost chunk costs only its members until the next
/// exchange), and a 1,000-member state at real metadata sizes is eight chunks.
pub const SYNC_CHUNK_BYTES: usize = 8 * 1024;
const _: () = assert!(MAX_UPDATE_LEN <= SYNC_CHUNK_BYTES);
// The largest gossip message stays far below the transport's limit: no state, however
// many members, is ever sent whole.
const _: () = assert!(SYNC_CHUNK_BYTES + MESSAGE_OVERHEAD <= MAX_MESSAGE_SIZE / 64);
// A full state at MAX_MEMBERS (a chunk is cut when the next update would not fit, so it
// holds at least SYNC_CHUNK_BYTES - MAX_UPDATE_LEN) fits the transport's queue for a
// peer whose handshake is still under way.
const _: () = assert!(
    ((MAX_MEMBERS + 1) * MAX_UPDATE_LEN).div_ceil(SYNC_CHUNK_BYTES - MAX_UPDATE_LEN)
        <= MAX_QUEUED_MESSAGES_PER_PEER
);
/// Members per anti-entropy bucket: a difference in one member costs the exchange of
/// about this many.
const MEMBERS_PER_BUCKET: usize = 8;
/// Buckets in a digest at most: `MAX_MEMBERS` at `MEMBERS_PER_BUCKET` each. A hash is
/// a u32 varint of at most 5 bytes, so the largest digest rides one datagram.
pub const MAX_SYNC_BUCKETS: usize = MAX_MEMBERS / MEMBERS_PER_BUCKET;
const _: () = assert!(MAX_SYNC_BUCKETS * 5 + MESSAGE_OVERHEAD <= FRAGMENT_PAYLOAD);
/// Join seeds remembered for retries.
const MAX_JOIN_SEEDS: usize = 16;
/// After `leave`, how far ahead the next (idle) wake-up is.
const LEFT_IDLE: Duration = Duration::from_secs(3600);
/// Relayed probes in flight on behalf of others.
pub const MAX_RELAYS: usize = 256;

#[derive(Clone, Debug)]
pub struct Config {
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    pub indirect_checks: usize,
    /// Minimum suspicion timeout = this · max(1, log10(N)) · probe_interval.
    pub suspicion_mult: u32,
    /// Independent confirmations after which the suspicion timeout reaches its minimum.
    pub expected_confirmations: usize,
    /// Maximum = this · minimum.
    pub suspicion_max_mult: u32,
    pub retransmit_mult: u32,
    /// Anti-entropy period while views agree.
    pub sync_interval: Duration,
    /// Anti-entropy period after an exchange found views that differ.
    pub fast_sync_interval: Duration,
    pub max_local_health: u32,
}

impl Default for Config {
    /// Tuned for LAN edge clusters and the 3 s node-down goal: a dead node is first
    /// suspected within a period or two and declared dead within about a second of
    /// suspicion once peers confirm.
    fn default() -> Self {
        Config {
            probe_interval: Duration::from_millis(250),
            probe_timeout: Duration::from_millis(100),
            indirect_checks: 3,
            suspicion_mult: 4,
            expected_confirmations: 3,
            suspicion_max_mult: 3,
            retransmit_mult: 4,
            // A digest is one small datagram: checking every 2 s costs a settled 5-node
            // cluster half the bytes of the 10 s full-state exchange it replaced, for
            // one more message per node every 2 s (`bench_steady_traffic`).
            sync_interval: Duration::from_secs(2),
            // Two probe periods: a join burst's members reach everyone within a few
            // seconds (an exchange repeated this often triples the nodes that know a
            // member each round).
            fast_sync_interval: Duration::from_millis(500),
            max_local_health: 8,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    Alive,
    Suspect,
    Dead,
    Left,
}

/// One member's state as gossiped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    pub id: NodeId,
    pub incarnation: u64,
    pub status: Status,
    /// Who raised a suspicion or declared a death (for confirmations).
    pub from: NodeId,
    pub meta: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    Ping {
        seq: u32,
        updates: Vec<Update>,
    },
    Ack {
        seq: u32,
        updates: Vec<Update>,
    },
    PingReq {
        seq: u32,
        target: NodeId,
        updates: Vec<Update>,
    },
    Nack {
        seq: u32,
    },
    /// Members' states: a chunk of an anti-entropy answer, or a joiner's announcement.
    /// (Fifth, as the full-state `Sync` it replaces was: an older node's sync still
    /// decodes.)
    Sync {
        members: Vec<Update>,
    },
    /// Anti-entropy: per bucket of member ids, a hash of the sender's view of the live
    /// members in it (see `Gossip::digest`). The receiver sends back, as `Sync`, its
    /// members of every bucket whose hash differs from its own and, if `reply`, its own
    /// digest, so that the sender does the same.
    Digest {
        buckets: Vec<u32>,
        reply: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A member is alive: new, back from suspicion or death, or with new metadata.
    Alive {
        id: NodeId,
        meta: Vec<u8>,
    },
    Suspect {
        id: NodeId,
    },
    Dead {
        id: NodeId,
    },
    Left {
        id: NodeId,
    },
}

#[derive(Clone, Debug)]
struct Member {
    incarnation: u64,
    status: Status,
    meta: Vec<u8>,
    /// For a suspect: who confirmed, when it started, when it expires.
    suspicion: Option<Suspicion>,
}

#[derive(Clone, Debug)]
struct Suspicion {
    /// Who raised it: what an anti-entropy exchange reports as its `from`, so that
    /// passing a suspicion on never counts as confirming it.
    accuser: NodeId,
    confirmations: BTreeSet<NodeId>,
    started: Instant,
    deadline: Instant,
}

#[derive(Clone, Debug)]
struct Probe {
    target: NodeId,
    seq: u32,
    acked: bool,
    /// When to try indirect probes.
    indirect_at: Option<Instant>,
    /// End of the protocol period: suspect the target if still unacked.
    period_end: Instant,
    nacks_expected: usize,
    nacks: usize,
}

#[derive(Clone, Debug)]
struct Relay {
    requester: NodeId,
    requester_seq: u32,
    target: NodeId,
    nack_at: Instant,
}

#[derive(Clone, Debug)]
struct Broadcast {
    update: Update,
    sent: u32,
    /// When it was queued (a counter): among the least sent, the newest goes first.
    order: u64,
}

/// One node's gossip. Drive it like the transport: `handle_message` / `handle_timeout`,
/// then drain `poll_transmit` (to the network) and `poll_event` (to the layer above);
/// wake at `poll_timeout`.
pub struct Gossip {
    cfg: Config,
    id: NodeId,
    incarnation: u64,
    meta: Vec<u8>,
    members: BTreeMap<NodeId, Member>,
    rng: ChaCha8Rng,
    order: Vec<NodeId>,
    order_pos: usize,
    probe: Option<Probe>,
    next_probe_at: Instant,
    next_sync_at: Instant,
    relays: BTreeMap<u32, Relay>,
    broadcasts: Vec<Broadcast>,
    broadcast_order: u64,
    seq: u32,
    health: u32,
    out: VecDeque<(NodeId, Message)>,
    events: VecDeque<Event>,
    left: bool,
    /// Members we were told to join through. While we know no member alive (none at
    /// all, or only dead ones: what others told a restarted node, or what each side of
    /// a healed partition thinks of the other), the join is sent again every probe
    /// interval: a lost join datagram must not leave a node alone forever.
    join_seeds: Vec<NodeId>,
}

impl Gossip {
    /// `meta` is at most `MAX_META` bytes (peers refuse more).
    pub fn new(cfg: Config, id: NodeId, meta: Vec<u8>, now: Instant, seed: u64) -> Gossip {
        debug_assert!(
            meta.len() <= MAX_META,
            "invariant: metadata within MAX_META"
        );
        Gossip {
            next_probe_at: now + cfg.probe_interval,
            // The first exchange comes early, to fill in members a join missed.
            next_sync_at: now + cfg.probe_interval * 4,
            cfg,
            id,
            incarnation: 0,
            meta,
            members: BTreeMap::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            order: Vec::new(),
            order_pos: 0,
            probe: None,
            relays: BTreeMap::new(),
            broadcasts: Vec::new(),
            broadcast_order: 0,
            seq: 0,
            health: 0,
            out: VecDeque::new(),
            events: VecDeque::new(),
            left: false,
            join_seeds: Vec::new(),
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Joins (or rejoins after a restart) through a known member: announces ourselves to
    /// it and asks for its view. Our announcement is also queued for piggybacking, so
    /// every member we go on to probe spreads it.
    pub fn join(&mut self, seed: NodeId) {
        if seed == self.id {
            return;
        }
        if !self.join_seeds.contains(&seed) && self.join_seeds.len() < MAX_JOIN_SEEDS {
            self.join_seeds.push(seed);
        }
        let me = self.self_update(Status::Alive);
        self.enqueue(me);
        self.send_join(seed);
    }

    fn send_join(&mut self, seed: NodeId) {
        let me = self.self_update(Status::Alive);
        self.out
            .push_back((seed, Message::Sync { members: vec![me] }));
        let buckets = self.digest(self.bucket_count());
        self.out.push_back((
            seed,
            Message::Digest {
                buckets,
                reply: true,
            },
        ));
    }

    /// Announces a graceful departure.
    pub fn leave(&mut self) {
        self.left = true;
        self.incarnation = self.incarnation.saturating_add(1);
        let u = self.self_update(Status::Left);
        self.enqueue(u);
        let ids: Vec<NodeId> = self.live_members().collect();
        for id in ids {
            let updates = self.piggyback(id);
            self.out.push_back((id, Message::Ping { seq: 0, updates }));
        }
    }

    /// Changes our metadata (at most `MAX_META` bytes) and spreads it.
    pub fn set_meta(&mut self, meta: Vec<u8>) {
        debug_assert!(
            meta.len() <= MAX_META,
            "invariant: metadata within MAX_META"
        );
        self.meta = meta;
        self.incarnation = self.incarnation.saturating_add(1);
        let u = self.self_update(Status::Alive);
        self.enqueue(u);
    }

    /// Local health multiplier (0 = healthy).
    pub fn local_health(&self) -> u32 {
        self.health
    }

    pub fn status_of(&self, id: NodeId) -> Option<Status> {
        self.members.get(&id).map(|m| m.status)
    }

    pub fn meta_of(&self, id: NodeId) -> Option<&[u8]> {
        self.members.get(&id).map(|m| m.meta.as_slice())
    }

    /// Every member we know besides ourselves, with its status.
    pub fn members(&self) -> impl Iterator<Item = (NodeId, Status)> + '_ {
        self.members.iter().map(|(id, m)| (*id, m.status))
    }

    pub fn poll_transmit(&mut self) -> Option<(NodeId, Message)> {
        self.out.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Instant {
        let mut t = self.next_probe_at.min(self.next_sync_at);
        if let Some(p) = &self.probe {
            if !p.acked {
                t = t.min(p.period_end);
                if let Some(i) = p.indirect_at {
                    t = t.min(i);
                }
            }
        }
        for r in self.relays.values() {
            t = t.min(r.nack_at);
        }
        for m in self.members.values() {
            if let Some(s) = &m.suspicion {
                t = t.min(s.deadline);
            }
        }
        t
    }

    fn scaled(&self, d: Duration) -> Duration {
        d * (self.health + 1)
    }

    fn live_members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members
            .iter()
            .filter(|(_, m)| matches!(m.status, Status::Alive | Status::Suspect))
            .map(|(id, _)| *id)
    }

    fn self_update(&self, status: Status) -> Update {
        Update {
            id: self.id,
            incarnation: self.incarnation,
            status,
            from: self.id,
            meta: self.meta.clone(),
        }
    }

    /// Our view, ourselves included, restricted to members whose bucket (of `count`) is
    /// marked in `differs`.
    fn state_of(&self, count: usize, differs: &[bool]) -> Vec<Update> {
        let mut v = Vec::new();
        if differs[bucket(self.id, count)] {
            v.push(self.self_update(if self.left {
                Status::Left
            } else {
                Status::Alive
            }));
        }
        v.extend(
            self.members
                .iter()
                .filter(|(id, _)| differs[bucket(**id, count)])
                .map(|(id, m)| Update {
                    id: *id,
                    incarnation: m.incarnation,
                    status: m.status,
                    from: m.suspicion.as_ref().map_or(self.id, |s| s.accuser),
                    meta: m.meta.clone(),
                }),
        );
        v
    }

    /// Buckets for a digest of our view: about `MEMBERS_PER_BUCKET` members each.
    fn bucket_count(&self) -> usize {
        (self.members.len() + 1)
            .div_ceil(MEMBERS_PER_BUCKET)
            .clamp(1, MAX_SYNC_BUCKETS)
    }

    /// Per bucket, the sum of the hashes of (id, incarnation, status) of the live members
    /// in it, ourselves included. Only live members count: a member one node has dead
    /// and another never heard of is the same news (neither will probe it), and a joiner
    /// must agree with old members who remember long-dead nodes. Metadata is not hashed:
    /// it only changes with the incarnation.
    fn digest(&self, count: usize) -> Vec<u32> {
        let mut h = vec![0u32; count];
        let me = (!self.left).then_some((self.id, self.incarnation, Status::Alive));
        let live = self
            .members
            .iter()
            .filter(|(_, m)| matches!(m.status, Status::Alive | Status::Suspect))
            .map(|(id, m)| (*id, m.incarnation, m.status));
        for (id, inc, status) in me.into_iter().chain(live) {
            let b = bucket(id, count);
            // Truncation intended: a bucket hash is 32 bits (one collision in 4 billion
            // delays a repair to the next exchange, with another peer).
            #[allow(clippy::cast_possible_truncation)]
            let e = entry_hash(id, inc, status) as u32;
            h[b] = h[b].wrapping_add(e);
        }
        h
    }

    /// Sends `to` our members of the buckets marked in `differs`, in chunks of at most
    /// `SYNC_CHUNK_BYTES` of updates.
    fn send_state(&mut self, to: NodeId, count: usize, differs: &[bool]) {
        let mut chunk = Vec::new();
        let mut bytes = 0;
        for u in self.state_of(count, differs) {
            let len = update_len(&u);
            if bytes + len > SYNC_CHUNK_BYTES && !chunk.is_empty() {
                let members = std::mem::take(&mut chunk);
                self.out.push_back((to, Message::Sync { members }));
                bytes = 0;
            }
            bytes += len;
            chunk.push(u);
        }
        if !chunk.is_empty() {
            self.out.push_back((to, Message::Sync { members: chunk }));
        }
    }

    fn health_up(&mut self) {
        self.health = (self.health + 1).min(self.cfg.max_local_health);
    }

    fn health_down(&mut self) {
        self.health = self.health.saturating_sub(1);
    }

    // ---- timers -------------------------------------------------------------------

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.left {
            // Gone: nothing more to do, ever; stop asking to be woken.
            self.probe = None;
            self.relays.clear();
            self.next_probe_at = now + LEFT_IDLE;
            self.next_sync_at = now + LEFT_IDLE;
            for m in self.members.values_mut() {
                m.suspicion = None;
            }
            return;
        }
        self.check_probe(now);
        self.check_relays(now);
        self.check_suspicions(now);
        if now >= self.next_probe_at {
            self.next_probe_at = now + self.scaled(self.cfg.probe_interval);
            self.start_probe(now);
            // No member alive in our view (none known yet, or all dead as others told
            // us, or as we judged during a partition): ask the seeds again.
            if self.live_members().next().is_none() {
                for seed in self.join_seeds.clone() {
                    self.send_join(seed);
                }
            }
        }
        if now >= self.next_sync_at {
            self.next_sync_at = now + self.cfg.sync_interval;
            // Dead members are candidates too: after a partition heals, each side has
            // the other marked dead, and only this exchange brings them back.
            let ids: Vec<NodeId> = self
                .members
                .iter()
                .filter(|(_, m)| m.status != Status::Left)
                .map(|(id, _)| *id)
                .collect();
            if !ids.is_empty() {
                let peer = ids[self.rng.next_u32() as usize % ids.len()];
                let buckets = self.digest(self.bucket_count());
                self.out.push_back((
                    peer,
                    Message::Digest {
                        buckets,
                        reply: true,
                    },
                ));
            }
        }
    }

    fn next_target(&mut self) -> Option<NodeId> {
        for _ in 0..2 {
            while self.order_pos < self.order.len() {
                let id = self.order[self.order_pos];
                self.order_pos += 1;
                if self
                    .members
                    .get(&id)
                    .is_some_and(|m| matches!(m.status, Status::Alive | Status::Suspect))
                {
                    return Some(id);
                }
            }
            // A new round: reshuffle (Fisher-Yates) so every member is probed once per
            // round in an order nobody can predict.
            self.order = self.live_members().collect();
            for i in (1..self.order.len()).rev() {
                let j = self.rng.next_u32() as usize % (i + 1);
                self.order.swap(i, j);
            }
            self.order_pos = 0;
        }
        None
    }

    /// A member that becomes live mid-round (new, or back from the dead) takes a random
    /// place in the rest of the round, as memberlist does: otherwise it would be probed
    /// only by nodes that started a round since, and a round lasts N probe periods (over
    /// four minutes at 1,000 members), so a fresh member's failure would go unnoticed.
    fn schedule_probe(&mut self, id: NodeId) {
        let rest = &self.order[self.order_pos..];
        if rest.contains(&id) {
            return;
        }
        let at = self.order_pos + self.rng.next_u32() as usize % (rest.len() + 1);
        self.order.insert(at, id);
    }

    fn start_probe(&mut self, now: Instant) {
        let Some(target) = self.next_target() else {
            self.probe = None;
            return;
        };
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        self.probe = Some(Probe {
            target,
            seq,
            acked: false,
            indirect_at: Some(now + self.scaled(self.cfg.probe_timeout)),
            period_end: now + self.scaled(self.cfg.probe_interval),
            nacks_expected: 0,
            nacks: 0,
        });
        let updates = self.piggyback(target);
        self.out.push_back((target, Message::Ping { seq, updates }));
    }

    fn check_probe(&mut self, now: Instant) {
        let Some(p) = self.probe.clone() else { return };
        if p.acked {
            return;
        }
        if p.indirect_at.is_some_and(|t| now >= t) {
            let helpers = self.pick_helpers(p.target);
            for h in &helpers {
                let updates = self.piggyback(*h);
                self.out.push_back((
                    *h,
                    Message::PingReq {
                        seq: p.seq,
                        target: p.target,
                        updates,
                    },
                ));
            }
            if let Some(pr) = self.probe.as_mut() {
                pr.indirect_at = None;
                pr.nacks_expected = helpers.len();
            }
        }
        if now >= p.period_end {
            // Missed nacks mean our own messages are not getting through: doubt ourselves.
            let p = self.probe.take().expect("invariant: cloned above");
            self.health_up();
            if p.nacks_expected > 0 && p.nacks < p.nacks_expected {
                self.health_up();
            }
            self.suspect(now, p.target, self.id);
        }
    }

    fn pick_helpers(&mut self, target: NodeId) -> Vec<NodeId> {
        let mut cands: Vec<NodeId> = self
            .members
            .iter()
            .filter(|(id, m)| **id != target && m.status == Status::Alive)
            .map(|(id, _)| *id)
            .collect();
        let k = self.cfg.indirect_checks.min(cands.len());
        for i in 0..k {
            let j = i + self.rng.next_u32() as usize % (cands.len() - i);
            cands.swap(i, j);
        }
        cands.truncate(k);
        cands
    }

    fn check_relays(&mut self, now: Instant) {
        let due: Vec<u32> = self
            .relays
            .iter()
            .filter(|(_, r)| now >= r.nack_at)
            .map(|(s, _)| *s)
            .collect();
        for s in due {
            let r = self.relays.remove(&s).expect("invariant: listed above");
            self.out.push_back((
                r.requester,
                Message::Nack {
                    seq: r.requester_seq,
                },
            ));
        }
    }

    fn suspicion_bounds(&self) -> (Duration, Duration) {
        let n = (self.members.len() + 1).max(2) as f64;
        let min = self
            .cfg
            .probe_interval
            .mul_f64(f64::from(self.cfg.suspicion_mult) * n.log10().max(1.0));
        (min, min * self.cfg.suspicion_max_mult)
    }

    /// Lifeguard: the timeout falls from max to min as confirmations approach the number
    /// we can expect.
    fn suspicion_deadline(&self, s: &Suspicion) -> Instant {
        let (min, max) = self.suspicion_bounds();
        // Only members other than the suspect and the first accuser can confirm.
        let expected = self
            .cfg
            .expected_confirmations
            .min(self.members.len().saturating_sub(2));
        if expected == 0 {
            return s.started + min;
        }
        let c = s.confirmations.len().min(expected) as f64;
        let frac = (c + 1.0).ln() / (expected as f64 + 1.0).ln();
        let t = max.as_secs_f64() - (max.as_secs_f64() - min.as_secs_f64()) * frac;
        s.started + Duration::from_secs_f64(t.max(min.as_secs_f64()))
    }

    fn check_suspicions(&mut self, now: Instant) {
        let due: Vec<NodeId> = self
            .members
            .iter()
            .filter(|(_, m)| m.suspicion.as_ref().is_some_and(|s| now >= s.deadline))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let m = self.members.get_mut(&id).expect("invariant: listed above");
            m.status = Status::Dead;
            m.suspicion = None;
            let u = Update {
                id,
                incarnation: m.incarnation,
                status: Status::Dead,
                from: self.id,
                meta: m.meta.clone(),
            };
            self.events.push_back(Event::Dead { id });
            self.enqueue(u);
        }
    }

    /// Our probe of `id` failed: suspect it or, if it is suspected already, confirm the
    /// suspicion (a failed probe of our own is independent evidence, which is what
    /// Lifeguard's confirmations count).
    fn suspect(&mut self, now: Instant, id: NodeId, from: NodeId) {
        let Some(m) = self.members.get(&id) else {
            return;
        };
        if !matches!(m.status, Status::Alive | Status::Suspect) {
            return;
        }
        let u = Update {
            id,
            incarnation: m.incarnation,
            status: Status::Suspect,
            from,
            meta: m.meta.clone(),
        };
        self.apply(now, u, true);
    }

    // ---- messages -----------------------------------------------------------------

    /// Handles a message from `from` (already authenticated by the transport).
    pub fn handle_message(&mut self, now: Instant, from: NodeId, msg: Message) {
        if self.left || from == self.id {
            return;
        }
        match msg {
            Message::Ping { seq, updates } => {
                self.apply_all(now, from, updates, true);
                let updates = self.piggyback(from);
                self.out.push_back((from, Message::Ack { seq, updates }));
            }
            Message::Ack { seq, updates } => {
                self.apply_all(now, from, updates, true);
                self.on_ack(from, seq);
            }
            Message::PingReq {
                seq,
                target,
                updates,
            } => {
                self.apply_all(now, from, updates, true);
                if self.relays.len() >= MAX_RELAYS || target == self.id {
                    return;
                }
                self.seq = self.seq.wrapping_add(1);
                let my_seq = self.seq;
                self.relays.insert(
                    my_seq,
                    Relay {
                        requester: from,
                        requester_seq: seq,
                        target,
                        // Nack a little before the requester's period ends.
                        nack_at: now + self.cfg.probe_timeout.mul_f64(0.8),
                    },
                );
                let updates = self.piggyback(target);
                self.out.push_back((
                    target,
                    Message::Ping {
                        seq: my_seq,
                        updates,
                    },
                ));
            }
            Message::Nack { seq } => {
                if let Some(p) = self.probe.as_mut().filter(|p| p.seq == seq) {
                    p.nacks += 1;
                }
            }
            Message::Sync { members } => self.apply_all(now, from, members, false),
            Message::Digest { buckets, reply } => self.on_digest(now, from, &buckets, reply),
        }
    }

    /// Anti-entropy: answers the buckets where `from`'s view differs from ours.
    fn on_digest(&mut self, now: Instant, from: NodeId, theirs: &[u32], reply: bool) {
        let count = theirs.len();
        if count == 0 || count > MAX_SYNC_BUCKETS {
            return;
        }
        let ours = self.digest(count);
        let differs: Vec<bool> = ours.iter().zip(theirs).map(|(a, b)| a != b).collect();
        if !differs.contains(&true) {
            return;
        }
        self.send_state(from, count, &differs);
        if reply {
            self.out.push_back((
                from,
                Message::Digest {
                    buckets: ours,
                    reply: false,
                },
            ));
        }
        // Views differ: membership is changing, or something was missed. Check again soon.
        self.next_sync_at = self.next_sync_at.min(now + self.cfg.fast_sync_interval);
    }

    fn on_ack(&mut self, from: NodeId, seq: u32) {
        if let Some(r) = self.relays.remove(&seq) {
            if r.target == from {
                // News rides relayed acks too: the requester may be a node that could
                // not hear for a while, and the first to need to hear it is suspected.
                let updates = self.piggyback(r.requester);
                self.out.push_back((
                    r.requester,
                    Message::Ack {
                        seq: r.requester_seq,
                        updates,
                    },
                ));
            } else {
                self.relays.insert(seq, r);
            }
            return;
        }
        if let Some(p) = self.probe.as_mut().filter(|p| p.seq == seq && !p.acked) {
            p.acked = true;
            self.health_down();
        }
    }

    /// Applies updates from `from`, learnt by piggyback (`gossiped`) or anti-entropy.
    ///
    /// What anti-entropy brings is not gossiped on when it is a member alive that
    /// `from` heard of second-hand: the exchange that brought it is the faster channel,
    /// and after a burst of joins every exchange would otherwise fill the piggyback queue
    /// with hundreds of members that everyone is learning the same way, starving fresh
    /// news. First-hand news (about `from` itself) and accusations (which the accused
    /// must hear to refute, and which Lifeguard counts as confirmations) still spread.
    fn apply_all(&mut self, now: Instant, from: NodeId, updates: Vec<Update>, gossiped: bool) {
        for u in updates {
            let spread = gossiped || u.id == from || u.status != Status::Alive;
            self.apply(now, u, spread);
        }
    }

    /// SWIM's precedence rules, plus refutation of news about ourselves. The update is
    /// queued for piggybacking if it changed our view and `spread`.
    fn apply(&mut self, now: Instant, u: Update, spread: bool) {
        if u.meta.len() > MAX_META {
            return;
        }
        if u.id == self.id {
            let accusation = matches!(u.status, Status::Suspect | Status::Dead);
            if accusation && u.incarnation >= self.incarnation && !self.left {
                // Saturating: a peer's number must not overflow ours (at u64::MAX a refutation
                // no longer wins, which takes 2^64 refutations or a hostile member).
                self.incarnation = u.incarnation.saturating_add(1);
                self.health_up();
                let me = self.self_update(Status::Alive);
                self.enqueue(me);
            }
            return;
        }
        let Some(m) = self.members.get_mut(&u.id) else {
            if self.members.len() >= MAX_MEMBERS {
                return;
            }
            if matches!(u.status, Status::Dead | Status::Left) {
                // A member we never saw alive, dead or gone: remember it as the others
                // do, so a node that (re)started knows what they know (a new leader
                // reports node statuses from this view). If it is in fact back, it
                // refutes with a higher incarnation.
                let (id, status) = (u.id, u.status);
                self.members.insert(
                    id,
                    Member {
                        incarnation: u.incarnation,
                        status,
                        meta: u.meta,
                        suspicion: None,
                    },
                );
                self.events.push_back(match status {
                    Status::Dead => Event::Dead { id },
                    _ => Event::Left { id },
                });
                return;
            }
            let status = u.status;
            let suspicion = (status == Status::Suspect).then(|| Suspicion {
                accuser: u.from,
                confirmations: BTreeSet::from([u.from]),
                started: now,
                deadline: now,
            });
            self.members.insert(
                u.id,
                Member {
                    incarnation: u.incarnation,
                    status,
                    meta: u.meta.clone(),
                    suspicion,
                },
            );
            self.fix_deadline(u.id);
            self.schedule_probe(u.id);
            self.events.push_back(Event::Alive {
                id: u.id,
                meta: u.meta.clone(),
            });
            if status == Status::Suspect {
                self.events.push_back(Event::Suspect { id: u.id });
            }
            if spread {
                self.enqueue(u);
            }
            return;
        };
        let newer = u.incarnation > m.incarnation;
        let same = u.incarnation == m.incarnation;
        // Another node's verdict of death about a member we hold live is an accusation,
        // not a death: we suspect it (or count a confirmation) and it dies here only if
        // it fails to refute before our own timeout. A node back from a partition holds
        // everyone it lost dead; taken as deaths, its stale verdicts would kill members
        // the rest saw alive all along (a healed worker once took a healthy one Down
        // this way). The price: a real death reaches each node at its own suspicion
        // timeout rather than at the first one's.
        let mut u = u;
        if u.status == Status::Dead
            && (newer || same)
            && matches!(m.status, Status::Alive | Status::Suspect)
        {
            u.status = Status::Suspect;
        }
        let changed = match u.status {
            Status::Alive => newer,
            Status::Suspect => {
                if (newer || same) && m.status == Status::Alive {
                    true
                } else if same && m.status == Status::Suspect {
                    // An independent confirmation shortens the timeout.
                    if let Some(s) = m.suspicion.as_mut() {
                        if s.confirmations.insert(u.from) {
                            self.fix_deadline(u.id);
                            if spread {
                                self.enqueue(u);
                            }
                        }
                    }
                    return;
                } else {
                    newer
                }
            }
            Status::Dead | Status::Left => {
                newer || (same && !matches!(m.status, Status::Dead | Status::Left))
            }
        };
        if !changed {
            return;
        }
        let was = m.status;
        m.incarnation = u.incarnation;
        m.status = u.status;
        if u.status == Status::Alive || !u.meta.is_empty() {
            m.meta = u.meta.clone();
        }
        m.suspicion = (u.status == Status::Suspect).then(|| Suspicion {
            accuser: u.from,
            confirmations: BTreeSet::from([u.from]),
            started: now,
            deadline: now,
        });
        let ev = match u.status {
            Status::Alive => Event::Alive {
                id: u.id,
                meta: m.meta.clone(),
            },
            Status::Suspect => Event::Suspect { id: u.id },
            Status::Dead => Event::Dead { id: u.id },
            Status::Left => Event::Left { id: u.id },
        };
        if u.status == Status::Suspect {
            self.fix_deadline(u.id);
        }
        let live = |s: Status| matches!(s, Status::Alive | Status::Suspect);
        if live(u.status) && !live(was) {
            self.schedule_probe(u.id);
        }
        if was != u.status || u.status == Status::Alive {
            self.events.push_back(ev);
        }
        if spread {
            self.enqueue(u);
        }
    }

    fn fix_deadline(&mut self, id: NodeId) {
        let deadline = match self.members.get(&id).and_then(|m| m.suspicion.as_ref()) {
            Some(s) => self.suspicion_deadline(s),
            None => return,
        };
        if let Some(s) = self.members.get_mut(&id).and_then(|m| m.suspicion.as_mut()) {
            s.deadline = deadline;
        }
    }

    // ---- dissemination ------------------------------------------------------------

    fn enqueue(&mut self, u: Update) {
        // Newer news about a member replaces older news still queued.
        self.broadcasts.retain(|b| b.update.id != u.id);
        self.broadcast_order += 1;
        self.broadcasts.push(Broadcast {
            update: u,
            sent: 0,
            order: self.broadcast_order,
        });
    }

    /// `retransmit_mult` times the number of decimal digits of N + 2 (about log10 N)
    /// (integer arithmetic: no float rounding to argue about).
    fn retransmit_limit(&self) -> u32 {
        let mut n = self.members.len() + 2;
        let mut digits = 0;
        while n > 0 {
            digits += 1;
            n /= 10;
        }
        self.cfg.retransmit_mult * digits
    }

    /// News for a message to `to`, at most `PIGGYBACK_BYTES`. First, if we suspect `to`
    /// or hold it dead, that accusation: the accused hears it at the first contact and
    /// can refute, however many times the news was already repeated to others. Then
    /// queued news, least sent first, then newest (under a backlog, fresh news still
    /// spreads at once instead of waiting behind old news).
    fn piggyback(&mut self, to: NodeId) -> Vec<Update> {
        let mut out = Vec::new();
        let mut bytes = 0;
        if let Some(m) = self
            .members
            .get(&to)
            .filter(|m| matches!(m.status, Status::Suspect | Status::Dead))
        {
            let u = Update {
                id: to,
                incarnation: m.incarnation,
                status: m.status,
                from: m.suspicion.as_ref().map_or(self.id, |s| s.accuser),
                meta: Vec::new(),
            };
            bytes += update_len(&u);
            out.push(u);
        }
        let limit = self.retransmit_limit();
        self.broadcasts
            .sort_unstable_by_key(|b| (b.sent, Reverse(b.order)));
        let told = !out.is_empty();
        for b in self
            .broadcasts
            .iter_mut()
            .filter(|b| !told || b.update.id != to)
        {
            let len = update_len(&b.update);
            if bytes + len > PIGGYBACK_BYTES {
                break;
            }
            bytes += len;
            b.sent += 1;
            out.push(b.update.clone());
        }
        self.broadcasts.retain(|b| b.sent < limit);
        out
    }
}

/// Bytes `u` takes on the wire at most (see `MAX_UPDATE_LEN`).
fn update_len(u: &Update) -> usize {
    MAX_UPDATE_LEN - MAX_META + u.meta.len()
}

/// SplitMix64's finaliser: a bijection of u64 whose output bits each depend on every
/// input bit. The digests of two nodes are compared, so this function is part of the
/// wire protocol and must never change.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The anti-entropy bucket of a member id, of `count`.
#[allow(clippy::cast_possible_truncation)] // the remainder is below `count`, a usize
fn bucket(id: NodeId, count: usize) -> usize {
    (mix(id.0) % count as u64) as usize
}

fn entry_hash(id: NodeId, incarnation: u64, status: Status) -> u64 {
    let s = match status {
        Status::Alive => 1,
        Status::Suspect => 2,
        Status::Dead => 3,
        Status::Left => 4,
    };
    mix(mix(mix(id.0) ^ incarnation) ^ s)
}

#[cfg(test)]
mod tests;

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
//!   independent members confirm the suspicion.
//! - **Nacks**: indirect probers answer "I could not reach it either" in time, so the
//!   requester can tell a dead target from its own lost messages.
//!
//! Updates ride on pings and acks, each repeated about `retransmit_mult · log(N+1)` times.
//! A full state exchange (`Sync`) on join and every `sync_interval` repairs anything
//! piggybacking missed, for instance across a healed partition.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::raft::NodeId;

/// Updates piggybacked on one message: enough to spread a burst of changes quickly,
/// few enough that a message with metadata stays a few KiB.
pub const MAX_PIGGYBACK: usize = 16;
/// Members one node tracks. Far beyond an edge cluster; a bound on what peers can make
/// us remember.
pub const MAX_MEMBERS: usize = 10_000;
/// Metadata bytes per member (address, role, labels).
pub const MAX_META: usize = 4096;
/// After `leave`, how far ahead the next (idle) wake-up is.
/// Join seeds remembered for retries.
const MAX_JOIN_SEEDS: usize = 16;
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
    pub sync_interval: Duration,
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
            sync_interval: Duration::from_secs(10),
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
    /// Full state; the receiver answers with its own unless `reply` is false.
    Sync {
        members: Vec<Update>,
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
    pub fn new(cfg: Config, id: NodeId, meta: Vec<u8>, now: Instant, seed: u64) -> Gossip {
        Gossip {
            next_probe_at: now + cfg.probe_interval,
            // The first full exchange comes early, to fill in members a join missed.
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

    /// Contacts a known member to exchange full state (join, or rejoin after restart).
    pub fn join(&mut self, seed: NodeId) {
        if seed != self.id {
            if !self.join_seeds.contains(&seed) && self.join_seeds.len() < MAX_JOIN_SEEDS {
                self.join_seeds.push(seed);
            }
            let members = self.full_state();
            self.out.push_back((
                seed,
                Message::Sync {
                    members,
                    reply: true,
                },
            ));
        }
    }

    /// Announces a graceful departure.
    pub fn leave(&mut self) {
        self.left = true;
        self.incarnation += 1;
        let u = self.self_update(Status::Left);
        self.enqueue(u);
        let ids: Vec<NodeId> = self.live_members().collect();
        for id in ids {
            let updates = self.piggyback();
            self.out.push_back((id, Message::Ping { seq: 0, updates }));
        }
    }

    /// Changes our metadata (labels, availability) and spreads it.
    pub fn set_meta(&mut self, meta: Vec<u8>) {
        self.meta = meta;
        self.incarnation += 1;
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

    fn full_state(&self) -> Vec<Update> {
        let mut v = vec![self.self_update(if self.left {
            Status::Left
        } else {
            Status::Alive
        })];
        v.extend(self.members.iter().map(|(id, m)| Update {
            id: *id,
            incarnation: m.incarnation,
            status: m.status,
            from: self.id,
            meta: m.meta.clone(),
        }));
        v
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
                    let members = self.full_state();
                    self.out.push_back((
                        seed,
                        Message::Sync {
                            members,
                            reply: true,
                        },
                    ));
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
                let members = self.full_state();
                self.out.push_back((
                    peer,
                    Message::Sync {
                        members,
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
        let updates = self.piggyback();
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
                let updates = self.piggyback();
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

    fn suspect(&mut self, now: Instant, id: NodeId, from: NodeId) {
        let Some(m) = self.members.get(&id) else {
            return;
        };
        if m.status != Status::Alive {
            return;
        }
        let u = Update {
            id,
            incarnation: m.incarnation,
            status: Status::Suspect,
            from,
            meta: m.meta.clone(),
        };
        self.apply(now, u);
    }

    // ---- messages -----------------------------------------------------------------

    /// Handles a message from `from` (already authenticated by the transport).
    pub fn handle_message(&mut self, now: Instant, from: NodeId, msg: Message) {
        if self.left || from == self.id {
            return;
        }
        match msg {
            Message::Ping { seq, updates } => {
                self.apply_all(now, updates);
                let updates = self.piggyback();
                self.out.push_back((from, Message::Ack { seq, updates }));
            }
            Message::Ack { seq, updates } => {
                self.apply_all(now, updates);
                self.on_ack(from, seq);
            }
            Message::PingReq {
                seq,
                target,
                updates,
            } => {
                self.apply_all(now, updates);
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
                let updates = self.piggyback();
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
            Message::Sync { members, reply } => {
                self.apply_all(now, members);
                if reply {
                    let members = self.full_state();
                    self.out.push_back((
                        from,
                        Message::Sync {
                            members,
                            reply: false,
                        },
                    ));
                }
            }
        }
    }

    fn on_ack(&mut self, from: NodeId, seq: u32) {
        if let Some(r) = self.relays.remove(&seq) {
            if r.target == from {
                self.out.push_back((
                    r.requester,
                    Message::Ack {
                        seq: r.requester_seq,
                        updates: Vec::new(),
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

    fn apply_all(&mut self, now: Instant, updates: Vec<Update>) {
        for u in updates {
            self.apply(now, u);
        }
    }

    /// SWIM's precedence rules, plus refutation of news about ourselves.
    fn apply(&mut self, now: Instant, u: Update) {
        if u.meta.len() > MAX_META {
            return;
        }
        if u.id == self.id {
            let accusation = matches!(u.status, Status::Suspect | Status::Dead);
            if accusation && u.incarnation >= self.incarnation && !self.left {
                self.incarnation = u.incarnation + 1;
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
            self.events.push_back(Event::Alive {
                id: u.id,
                meta: u.meta.clone(),
            });
            if status == Status::Suspect {
                self.events.push_back(Event::Suspect { id: u.id });
            }
            self.enqueue(u);
            return;
        };
        let newer = u.incarnation > m.incarnation;
        let same = u.incarnation == m.incarnation;
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
                            self.enqueue(u);
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
        if was != u.status || u.status == Status::Alive {
            self.events.push_back(ev);
        }
        self.enqueue(u);
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
        self.broadcasts.push(Broadcast { update: u, sent: 0 });
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

    fn piggyback(&mut self) -> Vec<Update> {
        let limit = self.retransmit_limit();
        self.broadcasts.sort_by_key(|b| b.sent);
        let mut out = Vec::new();
        for b in self.broadcasts.iter_mut().take(MAX_PIGGYBACK) {
            b.sent += 1;
            out.push(b.update.clone());
        }
        self.broadcasts.retain(|b| b.sent < limit);
        out
    }
}

#[cfg(test)]
mod tests;

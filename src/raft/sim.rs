//! Deterministic simulation of a Raft cluster: real `Raft` cores on a virtual clock and
//! the simulated network of [`crate::sim::net`], every choice drawn from seeded RNGs. Faults: loss, duplication,
//! delay and reordering, symmetric and one-way partitions, crashes that lose the writes
//! of the turn they interrupt, and restarts from what was persisted.
//!
//! Checked after every event: at most one leader per term; committed entries never change
//! and every leader holds them all; every node applies the same entry at each index; and,
//! at the end, a register workload driven through proposals and ReadIndex reads is
//! linearizable (stateright's tester).
//!
//! A failure panics with the seed; `SIM_SEED=<seed> cargo test raft::sim::replay` replays
//! it, and `SIM_SEEDS=<n>` runs more seeds (`just sim N`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use stateright::semantics::register::{Register, RegisterOp, RegisterRet};
use stateright::semantics::{ConsistencyTester, LinearizabilityTester};

use super::node::{Config, Raft, Ready, Role};
use super::types::{
    Entry, HardState, Index, Membership, Message, NodeId, Payload, Snapshot, SnapshotMeta, Term,
};
use crate::sim::net::{Faults, Net};

/// What a crashed node finds on disk.
#[derive(Clone, Default)]
struct Disk {
    hard: HardState,
    snapshot: Option<Snapshot>,
    entries: Vec<Entry>,
}

/// The replicated state machine: one register, and the last index applied.
#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
struct Machine {
    value: u64,
    applied: u64,
}

struct Node {
    raft: Option<Raft>,
    disk: Disk,
    machine: Machine,
    seed_counter: u64,
}

#[derive(Clone, Copy, Debug)]
enum Pending {
    Write {
        node: NodeId,
        index: Index,
        term: Term,
        value: u64,
    },
    Read {
        node: NodeId,
        ctx: u64,
        index: Option<Index>,
    },
}

struct Client {
    thread: u64,
    pending: Option<(Pending, Instant)>,
}

pub struct Sim {
    seed: u64,
    now: Instant,
    rng: ChaCha8Rng,
    cfg: Config,
    nodes: BTreeMap<NodeId, Node>,
    /// The network shared with the control-plane simulation: loss, duplication, latency
    /// with jitter, and partitions as directed cuts.
    net: Net<NodeId, Message>,
    leaders: BTreeMap<Term, NodeId>,
    committed: BTreeMap<Index, Entry>,
    applied: BTreeMap<Index, Entry>,
    clients: Vec<Client>,
    next_thread: u64,
    next_value: u64,
    history: LinearizabilityTester<u64, Register<u64>>,
    ops_completed: u64,
    compact_every: usize,
    /// Clients submit operations only while this is set.
    clients_active: bool,
}

impl Sim {
    pub fn new(seed: u64, nodes: u64) -> Sim {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let now = Instant::now();
        let ids: Vec<NodeId> = (1..=nodes).map(NodeId).collect();
        let snapshot = Snapshot {
            meta: SnapshotMeta {
                index: Index(1),
                term: Term(1),
                membership: Membership::new(ids.iter().copied()),
            },
            data: postcard::to_allocvec(&Machine {
                value: 0,
                applied: 1,
            })
            .unwrap(),
        };
        let cfg = Config::default();
        let mut map = BTreeMap::new();
        for id in &ids {
            let disk = Disk {
                hard: HardState {
                    term: Term(1),
                    vote: None,
                },
                snapshot: Some(snapshot.clone()),
                entries: vec![],
            };
            let raft = Raft::restore(
                *id,
                cfg.clone(),
                disk.hard,
                snapshot.clone(),
                vec![],
                now,
                rng.next_u64(),
            );
            map.insert(
                *id,
                Node {
                    raft: Some(raft),
                    disk,
                    machine: Machine {
                        value: 0,
                        applied: 1,
                    },
                    seed_counter: 0,
                },
            );
        }
        let faults = Faults {
            loss: [0, 10, 50, 100][rng.next_u32() as usize % 4],
            dup: [0, 10, 50][rng.next_u32() as usize % 3],
            min_latency: Duration::from_micros(100),
            max_latency: Duration::from_micros(3_100),
            spike: 0,
            spike_latency: Duration::ZERO,
        };
        let net = Net::new(rng.next_u64(), faults);
        let compact_every = [20, 50, 1000][rng.next_u32() as usize % 3];
        Sim {
            seed,
            now,
            rng,
            cfg,
            nodes: map,
            net,
            leaders: BTreeMap::new(),
            committed: BTreeMap::new(),
            applied: BTreeMap::new(),
            clients: (0..3)
                .map(|t| Client {
                    thread: t,
                    pending: None,
                })
                .collect(),
            next_thread: 3,
            next_value: 1,
            history: LinearizabilityTester::new(Register(0)),
            ops_completed: 0,
            compact_every,
            clients_active: true,
        }
    }

    fn fail(&self, what: String) -> ! {
        for (id, n) in &self.nodes {
            match &n.raft {
                Some(r) => {
                    let s = r.status();
                    let terms: Vec<u64> = (r.log_first_index().0..=s.last_index.0)
                        .filter_map(|i| r.log_entry(Index(i)).map(|e| e.term.0))
                        .collect();
                    eprintln!(
                        "{id:?}: {:?} {:?} commit {:?} first {:?} terms {terms:?} disk {:?}",
                        s.role,
                        s.term,
                        s.commit,
                        r.log_first_index(),
                        n.disk.entries.iter().map(|e| e.term.0).collect::<Vec<_>>()
                    );
                }
                None => eprintln!("{id:?}: down"),
            }
        }
        eprintln!(
            "committed: {:?}",
            self.committed
                .values()
                .map(|e| (e.index.0, e.term.0))
                .collect::<Vec<_>>()
        );
        panic!(
            "raft simulation violation with SIM_SEED={}: {what}",
            self.seed
        )
    }

    /// Delivers every output of `id`'s core: persist, send, apply.
    fn process_ready(&mut self, id: NodeId) {
        loop {
            let Some(ready) = self
                .nodes
                .get_mut(&id)
                .and_then(|n| n.raft.as_mut())
                .and_then(Raft::take_ready)
            else {
                return;
            };
            self.persist(id, &ready);
            for env in ready.messages {
                self.transmit(id, env.to, env.msg);
            }
            self.apply(id, ready.snapshot, ready.committed);
            self.finish_reads(id, &ready.reads);
            self.maybe_compact(id);
        }
    }

    fn persist(&mut self, id: NodeId, ready: &Ready) {
        let disk = &mut self.nodes.get_mut(&id).unwrap().disk;
        if let Some(h) = ready.hard_state {
            disk.hard = h;
        }
        if let Some(s) = &ready.snapshot {
            disk.snapshot = Some(s.clone());
            disk.entries.clear();
        }
        if let Some(t) = ready.truncate_from {
            disk.entries.retain(|e| e.index < t);
        }
        for e in &ready.append {
            if let Some(last) = disk.entries.last() {
                assert_eq!(
                    last.index.next(),
                    e.index,
                    "seed {}: appended entries must be contiguous",
                    self.seed
                );
            }
            disk.entries.push(e.clone());
        }
    }

    fn apply(&mut self, id: NodeId, snapshot: Option<Snapshot>, committed: Vec<Entry>) {
        if let Some(s) = snapshot {
            self.nodes.get_mut(&id).unwrap().machine = postcard::from_bytes(&s.data).unwrap();
        }
        for e in committed {
            let node = self.nodes.get_mut(&id).unwrap();
            if e.index.0 != node.machine.applied + 1 {
                let msg = format!(
                    "{id:?} applied {:?} after {}",
                    e.index, node.machine.applied
                );
                self.fail(msg);
            }
            node.machine.applied = e.index.0;
            if let Payload::Command(c) = &e.payload {
                node.machine.value = u64::from_le_bytes(c[..8].try_into().unwrap());
            }
            match self.applied.get(&e.index) {
                Some(prev) if prev != &e => {
                    let msg = format!("{id:?} applied {e:?} where another node applied {prev:?}");
                    self.fail(msg);
                }
                Some(_) => {}
                None => {
                    self.applied.insert(e.index, e.clone());
                }
            }
            self.complete_writes(id, &e);
        }
    }

    fn maybe_compact(&mut self, id: NodeId) {
        let every = self.compact_every;
        let node = self.nodes.get_mut(&id).unwrap();
        let Some(raft) = node.raft.as_mut() else {
            return;
        };
        if raft.log_len() > every && !raft.has_unapplied() {
            let index = Index(node.machine.applied);
            let data = postcard::to_allocvec(&node.machine).unwrap();
            raft.compact(index, data.clone());
            // The shell writes the snapshot and drops the WAL before it.
            let status = raft.status();
            let term = node
                .disk
                .entries
                .iter()
                .find(|e| e.index == index)
                .map(|e| e.term);
            if let Some(term) = term {
                node.disk.snapshot = Some(Snapshot {
                    meta: SnapshotMeta {
                        index,
                        term,
                        membership: status.membership,
                    },
                    data,
                });
                node.disk.entries.retain(|e| e.index > index);
            }
        }
    }

    fn transmit(&mut self, from: NodeId, to: NodeId, msg: Message) {
        self.net.send(self.now, from, to, msg);
    }

    // ---- the workload -------------------------------------------------------------

    fn leader_hint(&mut self) -> NodeId {
        // Clients guess: usually a node that thinks it leads, sometimes anyone.
        let leaders: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.raft.as_ref().is_some_and(|r| r.role() == Role::Leader))
            .map(|(id, _)| *id)
            .collect();
        if !leaders.is_empty() && self.rng.next_u32() % 4 != 0 {
            leaders[self.rng.next_u32() as usize % leaders.len()]
        } else {
            NodeId(1 + u64::from(self.rng.next_u32()) % self.nodes.len() as u64)
        }
    }

    fn client_turn(&mut self) {
        for c in 0..self.clients.len() {
            // A stuck operation (its node crashed, its entry was overwritten) stays open in
            // the history forever; the client continues as a fresh thread.
            if let Some((_, started)) = self.clients[c].pending {
                if self.now.duration_since(started) > Duration::from_secs(3) {
                    self.clients[c] = Client {
                        thread: self.next_thread,
                        pending: None,
                    };
                    self.next_thread += 1;
                }
                continue;
            }
            if self.rng.next_u32() % 3 != 0 {
                continue;
            }
            let node = self.leader_hint();
            let thread = self.clients[c].thread;
            let Some(raft) = self.nodes.get_mut(&node).and_then(|n| n.raft.as_mut()) else {
                continue;
            };
            if self.rng.next_u32() % 2 == 0 {
                let value = self.next_value;
                let term = raft.status().term;
                if let Ok(index) = raft.propose(value.to_le_bytes().to_vec()) {
                    self.next_value += 1;
                    self.history
                        .on_invoke(thread, RegisterOp::Write(value))
                        .unwrap();
                    self.clients[c].pending = Some((
                        Pending::Write {
                            node,
                            index,
                            term,
                            value,
                        },
                        self.now,
                    ));
                }
            } else if raft.role() == Role::Leader {
                // Reads refused on the spot are simply retried; only accepted ones enter
                // the history (a refused read has no effect either way).
                let ctx = thread;
                raft.read_index(ctx);
                self.history.on_invoke(thread, RegisterOp::Read).unwrap();
                self.clients[c].pending = Some((
                    Pending::Read {
                        node,
                        ctx,
                        index: None,
                    },
                    self.now,
                ));
            }
            self.process_ready(node);
        }
    }

    fn complete_writes(&mut self, id: NodeId, e: &Entry) {
        for c in 0..self.clients.len() {
            if let Some((
                Pending::Write {
                    node,
                    index,
                    term,
                    value,
                },
                _,
            )) = self.clients[c].pending
            {
                if node == id && index == e.index {
                    if e.term == term {
                        let thread = self.clients[c].thread;
                        self.history
                            .on_return(thread, RegisterRet::WriteOk)
                            .unwrap();
                        self.ops_completed += 1;
                        self.clients[c].pending = None;
                    }
                    let _ = value;
                }
            }
        }
    }

    fn finish_reads(&mut self, id: NodeId, reads: &[super::node::ReadState]) {
        for r in reads {
            for c in 0..self.clients.len() {
                if let Some((
                    Pending::Read {
                        node,
                        ctx,
                        index: None,
                    },
                    started,
                )) = self.clients[c].pending
                {
                    if node == id && ctx == r.ctx {
                        // A refused read had no effect; leaving it open is harmless.
                        if let Ok(index) = r.result {
                            self.clients[c].pending = Some((
                                Pending::Read {
                                    node,
                                    ctx,
                                    index: Some(index),
                                },
                                started,
                            ));
                        }
                    }
                }
            }
        }
        self.serve_reads();
    }

    fn serve_reads(&mut self) {
        for c in 0..self.clients.len() {
            if let Some((
                Pending::Read {
                    node,
                    index: Some(index),
                    ..
                },
                _,
            )) = self.clients[c].pending
            {
                let Some(n) = self.nodes.get(&node) else {
                    continue;
                };
                if n.raft.is_some() && n.machine.applied >= index.0 {
                    let value = n.machine.value;
                    let thread = self.clients[c].thread;
                    self.history
                        .on_return(thread, RegisterRet::ReadOk(value))
                        .unwrap();
                    self.ops_completed += 1;
                    self.clients[c].pending = None;
                }
            }
        }
    }

    // ---- faults -------------------------------------------------------------------

    fn crash(&mut self, id: NodeId) {
        let lose_turn = self.rng.next_u32() % 2 == 0;
        let node = self.nodes.get_mut(&id).unwrap();
        if let Some(mut raft) = node.raft.take() {
            if lose_turn {
                // The crash interrupts a turn: whatever it would have written is lost.
                let _ = raft.take_ready();
            }
        }
    }

    fn restart(&mut self, id: NodeId) {
        let seed = self.rng.next_u64();
        let now = self.now;
        let cfg = self.cfg.clone();
        let node = self.nodes.get_mut(&id).unwrap();
        if node.raft.is_some() {
            return;
        }
        node.seed_counter += 1;
        let snap = node
            .disk
            .snapshot
            .clone()
            .expect("every node starts with a snapshot");
        node.machine = postcard::from_bytes(&snap.data).unwrap();
        let raft = Raft::restore(
            id,
            cfg,
            node.disk.hard,
            snap,
            node.disk.entries.clone(),
            now,
            seed,
        );
        node.raft = Some(raft);
    }

    fn chaos(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        let pick = |rng: &mut ChaCha8Rng| ids[rng.next_u32() as usize % ids.len()];
        match self.rng.next_u32() % 10 {
            0 => {
                let a = pick(&mut self.rng);
                self.crash(a);
            }
            1 | 2 => {
                for id in ids.clone() {
                    self.restart(id);
                }
            }
            3 => {
                // Isolate one node both ways.
                let a = pick(&mut self.rng);
                self.net.heal();
                self.net.isolate(a, &ids);
            }
            4 => {
                // One-way: a can send but not hear.
                let a = pick(&mut self.rng);
                self.net.heal();
                self.net.deafen(a, &ids);
            }
            5 => {
                // Split into two groups.
                let split = 1 + self.rng.next_u32() as usize % (ids.len() - 1);
                let (l, r) = ids.split_at(split);
                self.net.heal();
                self.net.split(l, r);
            }
            _ => self.net.heal(),
        }
    }

    // ---- checks -------------------------------------------------------------------

    fn check(&mut self) {
        for (id, n) in &self.nodes {
            let Some(r) = n.raft.as_ref() else { continue };
            let s = r.status();
            if s.role == Role::Leader {
                match self.leaders.get(&s.term) {
                    Some(other) if other != id => {
                        let msg = format!("two leaders in {:?}: {other:?} and {id:?}", s.term);
                        self.fail(msg);
                    }
                    _ => {
                        self.leaders.insert(s.term, *id);
                    }
                }
            }
        }
        let mut newly = Vec::new();
        for (id, n) in &self.nodes {
            let Some(r) = n.raft.as_ref() else { continue };
            let s = r.status();
            let first = r.log_first_index();
            let mut i = first;
            while i <= s.commit {
                if let Some(e) = r.log_entry(i) {
                    match self.committed.get(&i) {
                        Some(c) if c != e => {
                            let msg =
                                format!("{id:?} has {e:?} at committed {i:?}, which was {c:?}");
                            self.fail(msg);
                        }
                        Some(_) => {}
                        None => newly.push(e.clone()),
                    }
                }
                i = i.next();
            }
            if s.role == Role::Leader {
                // Leader completeness: a leader holds every entry committed in its term
                // or before (that it has not compacted away). A deposed leader that has
                // not heard of newer terms is exempt from newer entries.
                for (ci, c) in self.committed.range(first..) {
                    if c.term <= s.term && r.log_entry(*ci) != Some(c) {
                        let msg = format!("leader {id:?} lacks committed {c:?}");
                        self.fail(msg);
                    }
                }
            }
        }
        for e in newly {
            self.committed.insert(e.index, e);
        }
    }

    /// Runs `duration` of virtual time; chaos if `faults`, then heals and settles.
    pub fn run(&mut self, duration: Duration, faults: bool) {
        let end = self.now + duration;
        let mut next_chaos = self.now + Duration::from_millis(500);
        let mut next_client = self.now;
        while self.now < end {
            let timer = self
                .nodes
                .iter()
                .filter_map(|(id, n)| n.raft.as_ref().map(|r| (r.poll_timeout(), *id)))
                .min();
            let delivery = self.net.next_at();
            let mut t = end.min(next_chaos).min(next_client);
            if let Some((at, _)) = timer {
                t = t.min(at);
            }
            if let Some(at) = delivery {
                t = t.min(at);
            }
            self.now = self.now.max(t);
            if let Some((from, to, msg)) = self.net.pop_due(self.now) {
                if let Some(r) = self.nodes.get_mut(&to).and_then(|n| n.raft.as_mut()) {
                    r.step(self.now, from, msg);
                    self.process_ready(to);
                }
            } else if let Some((at, id)) = timer.filter(|(at, _)| *at <= self.now) {
                let _ = at;
                if let Some(r) = self.nodes.get_mut(&id).and_then(|n| n.raft.as_mut()) {
                    r.handle_timeout(self.now);
                }
                self.process_ready(id);
            } else if self.now >= next_client {
                next_client = self.now + Duration::from_millis(20);
                if self.clients_active {
                    self.client_turn();
                }
            } else if self.now >= next_chaos {
                next_chaos =
                    self.now + Duration::from_millis(300 + u64::from(self.rng.next_u32() % 2000));
                if faults {
                    self.chaos();
                }
            }
            self.serve_reads();
            self.check();
        }
    }

    pub fn heal(&mut self) {
        self.net.heal();
        self.net.faults.loss = 0;
        self.net.faults.dup = 0;
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.restart(id);
        }
    }

    /// After healing: one leader, and every node has applied everything committed.
    pub fn check_converged(&mut self) {
        let leaders: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.raft.as_ref().is_some_and(|r| r.role() == Role::Leader))
            .map(|(id, _)| *id)
            .collect();
        if leaders.len() != 1 {
            let msg = format!("after healing, leaders: {leaders:?}");
            self.fail(msg);
        }
        let commits: Vec<u64> = self.nodes.values().map(|n| n.machine.applied).collect();
        if commits.iter().min() != commits.iter().max() {
            let msg = format!("after healing, applied indexes differ: {commits:?}");
            self.fail(msg);
        }
        if !self.history.is_consistent() {
            let msg = format!("history not linearizable: {:?}", self.history);
            self.fail(msg);
        }
    }
}

fn run_seed(seed: u64) -> u64 {
    let nodes = [3, 5][(seed % 2) as usize];
    let mut sim = Sim::new(seed, nodes);
    sim.run(Duration::from_secs(8), true);
    sim.heal();
    sim.run(Duration::from_secs(3), false);
    sim.clients_active = false;
    sim.run(Duration::from_secs(1), false);
    sim.check_converged();
    sim.ops_completed
}

#[test]
fn replay() {
    // Many seeds in CI; the count is small enough for debug builds.
    let mut ops = 0;
    for seed in crate::sim::seeds(40) {
        ops += run_seed(seed);
    }
    assert!(ops > 0, "the workload completed operations");
}

#[test]
fn calm_cluster_elects_once_and_serves() {
    let mut sim = Sim::new(1_000_001, 3);
    sim.net.faults.loss = 0;
    sim.net.faults.dup = 0;
    sim.run(Duration::from_secs(5), false);
    sim.clients_active = false;
    sim.run(Duration::from_secs(1), false);
    sim.check_converged();
    assert_eq!(
        sim.leaders.len(),
        1,
        "one election, no churn: {:?}",
        sim.leaders
    );
    let pending: Vec<_> = sim.clients.iter().map(|c| c.pending).collect();
    assert!(
        sim.ops_completed > 50,
        "{} ops, pending {pending:?}, threads {}",
        sim.ops_completed,
        sim.next_thread
    );
}

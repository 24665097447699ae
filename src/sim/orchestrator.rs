//! The orchestrator and scheduler at scale, simulated: up to 1,000 nodes and a few dozen
//! services (replicated and global, constrained, capped per node, start-first and
//! stop-first updates, images that cannot start), one orchestration round every 100 ms
//! of virtual time applied to the store as the leader would, and agents that take a
//! random while to start and stop what they are told. Nodes die and return, are
//! drained, paused and relabelled; services are created, scaled, updated (to broken
//! images too) and removed.
//!
//! Checked on every step:
//! - no node holds more live tasks of a service than `--replicas-max-per-node`;
//! - a rolling update never has more than `parallelism` slots down at once (outdated
//!   tasks stopping and new ones not yet running, on nodes that are up, in slots no
//!   failure or node loss touched);
//! - a task's node never changes, and the store's task states only move forward;
//! - an agent never runs a task the store has removed from its node.
//!
//! Once settled (no more events, dead nodes stay dead): every replicated service runs
//! `min(replicas, what the eligible nodes can take)` tasks of its current version, all
//! on eligible nodes; a global service runs exactly one task on every eligible node and
//! none elsewhere; drained nodes run nothing; constraints hold for every running task;
//! no update is left in progress (a broken image's is paused or rolled back).
//!
//! `SIM_SEED=<seed> cargo test --lib sim::orchestrator::replay -- --nocapture` replays
//! one seed (or a comma-separated list); `SIM_SEEDS` and `SIM_SEED_BASE` run more, on
//! every core (`just sim N`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::model::node::{Availability, NodeRole};
use crate::raft::NodeId;
use crate::services::constraint::{Constraint, NodeFacts};
use crate::services::orchestrator::{reconcile, NodeInfo};
use crate::services::scheduler::Resources;
use crate::services::spec::{FailureAction, Mode, ServiceSpec, UpdateOrder};
use crate::services::store::{
    Service, ServiceCommand, Store, Task, TaskId, TaskOp, TaskReport, UpdateState,
};
use crate::services::task::TaskState;
use crate::services::ServiceId;

const STEP_MS: u64 = 100;
const BROKEN: &str = "broken:1";

struct SimNode {
    id: NodeId,
    hostname: String,
    labels: BTreeMap<String, String>,
    engine: BTreeMap<String, String>,
    role: NodeRole,
    ready: bool,
    availability: Availability,
    /// What its agent runs (task -> state), and when each pending change lands.
    running: BTreeMap<TaskId, TaskState>,
}

pub struct Stats {
    pub steps: u64,
    pub tasks_made: u64,
    pub deaths: u64,
    pub updates: u64,
    pub rollbacks: u64,
}

struct Sim {
    seed: u64,
    rng: ChaCha8Rng,
    store: Store,
    nodes: Vec<SimNode>,
    now: u64,
    next_service: u64,
    /// Tasks that were on a node when it died: their slots recover, outside any update.
    lost: BTreeSet<TaskId>,
    /// Tasks a drain or a label change sent away: the same.
    evicted: BTreeSet<TaskId>,
    /// When each task was told to stop: an update counts only the stops it asked for,
    /// not those of the update it overtook.
    stop_asked: BTreeMap<TaskId, u64>,
    trace: Vec<String>,
    stats: Stats,
}

fn constraint_pool() -> Vec<&'static str> {
    vec![
        "node.labels.zone==a",
        "node.labels.zone!=c",
        "node.labels.disk==ssd",
        "node.role==worker",
        "engine.labels.arch==arm",
        "node.hostname!=node-3",
    ]
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let count = match seed % 10 {
            0 => 1_000,
            1..=3 => 100,
            _ => 3 + (rng.next_u32() % 20) as usize,
        };
        let nodes = (0..count)
            .map(|i| {
                let mut labels = BTreeMap::new();
                labels.insert(
                    "zone".into(),
                    ["a", "b", "c"][rng.next_u32() as usize % 3].into(),
                );
                if rng.next_u32() % 3 == 0 {
                    labels.insert("disk".into(), "ssd".into());
                }
                let mut engine = BTreeMap::new();
                if rng.next_u32() % 2 == 0 {
                    engine.insert("arch".into(), "arm".into());
                }
                SimNode {
                    id: NodeId(i as u64 + 1),
                    hostname: format!("node-{i}"),
                    labels,
                    engine,
                    role: if i < 3 {
                        NodeRole::Manager
                    } else {
                        NodeRole::Worker
                    },
                    ready: true,
                    availability: Availability::Active,
                    running: BTreeMap::new(),
                }
            })
            .collect();
        Sim {
            seed,
            rng,
            store: Store::default(),
            nodes,
            now: 1_000_000,
            next_service: 1,
            lost: BTreeSet::new(),
            evicted: BTreeSet::new(),
            stop_asked: BTreeMap::new(),
            trace: Vec::new(),
            stats: Stats {
                steps: 0,
                tasks_made: 0,
                deaths: 0,
                updates: 0,
                rollbacks: 0,
            },
        }
    }

    fn note(&mut self, s: String) {
        if self.trace.len() > 200 {
            self.trace.remove(0);
        }
        self.trace
            .push(format!("{:>8} ms {s}", self.now - 1_000_000));
    }

    fn fail(&self, why: String) -> ! {
        panic!(
            "seed {}: {why}\n--- last events:\n{}\nreplay: SIM_SEED={} cargo test --lib sim::orchestrator::replay -- --nocapture",
            self.seed,
            self.trace.join("\n"),
            self.seed
        );
    }

    fn infos(&self) -> Vec<NodeInfo<'_>> {
        self.nodes
            .iter()
            .map(|n| NodeInfo {
                facts: NodeFacts {
                    id: n.id,
                    hostname: &n.hostname,
                    role: n.role,
                    os: "linux",
                    arch: "aarch64",
                    labels: &n.labels,
                    engine_labels: &n.engine,
                },
                ready: n.ready,
                availability: n.availability,
                capacity: Resources {
                    nano_cpus: 4_000_000_000,
                    memory: 4 << 30,
                },
            })
            .collect()
    }

    fn random_spec(&mut self) -> ServiceSpec {
        let name = format!("svc{}", self.next_service);
        let mut s = ServiceSpec::new(&name, "img:1");
        s.mode = match self.rng.next_u32() % 5 {
            0 => Mode::Global,
            _ => Mode::Replicated {
                replicas: u64::from(self.rng.next_u32() % 12),
            },
        };
        if self.rng.next_u32() % 3 == 0 {
            let pool = constraint_pool();
            let c = pool[self.rng.next_u32() as usize % pool.len()];
            s.task.placement.constraints = vec![Constraint::parse(c).expect("invariant: valid")];
        }
        if self.rng.next_u32() % 4 == 0 && !matches!(s.mode, Mode::Global) {
            s.task.placement.max_replicas = 1 + u64::from(self.rng.next_u32() % 2);
        }
        s.task.restart.delay_ms = [0, 500, 5_000][self.rng.next_u32() as usize % 3];
        // Parallelism grows with the cluster (0 is unlimited): one or two slots at a time
        // across 1,000 nodes is minutes of virtual time that checks nothing new.
        let scale = (self.nodes.len() as u64 / 25).max(1);
        s.update.parallelism = u64::from(self.rng.next_u32() % 4) * scale;
        s.update.delay_ms = [0, 300, 2_000][self.rng.next_u32() as usize % 3];
        s.update.monitor_ms = [0, 1_000, 5_000][self.rng.next_u32() as usize % 3];
        s.update.order = if self.rng.next_u32() % 2 == 0 {
            UpdateOrder::StopFirst
        } else {
            UpdateOrder::StartFirst
        };
        s.update.failure_action = [
            FailureAction::Pause,
            FailureAction::Rollback,
            FailureAction::Continue,
        ][self.rng.next_u32() as usize % 3];
        s.rollback.parallelism = (1 + u64::from(self.rng.next_u32() % 3)) * scale;
        if self.rng.next_u32() % 4 == 0 {
            s.task.placement.spread = vec!["node.labels.zone".to_string()];
        }
        s
    }

    /// One random event.
    fn event(&mut self) {
        let n = self.nodes.len();
        match self.rng.next_u32() % 100 {
            0..=9 => {
                let i = self.rng.next_u32() as usize % n;
                if self.nodes[i].ready {
                    self.stats.deaths += 1;
                    self.note(format!("{} dies", self.nodes[i].hostname));
                    self.nodes[i].ready = false;
                    self.nodes[i].running.clear();
                    let lost: Vec<TaskId> = self.unended_on(i).map(|t| t.id).collect();
                    self.lost.extend(lost);
                }
            }
            10..=19 => {
                let i = self.rng.next_u32() as usize % n;
                if !self.nodes[i].ready {
                    self.note(format!("{} returns", self.nodes[i].hostname));
                    self.nodes[i].ready = true;
                }
            }
            20..=27 => {
                let i = self.rng.next_u32() as usize % n;
                let a = [
                    Availability::Active,
                    Availability::Active,
                    Availability::Drain,
                    Availability::Pause,
                ][self.rng.next_u32() as usize % 4];
                self.note(format!("{} {a:?}", self.nodes[i].hostname));
                self.nodes[i].availability = a;
                self.mark_evicted(i);
            }
            28..=35 => {
                let i = self.rng.next_u32() as usize % n;
                let z = ["a", "b", "c"][self.rng.next_u32() as usize % 3];
                self.note(format!("{} zone={z}", self.nodes[i].hostname));
                self.nodes[i].labels.insert("zone".into(), z.into());
                self.mark_evicted(i);
            }
            36..=50 => {
                if self.store.services.len() < 30 {
                    let spec = self.random_spec();
                    let id = ServiceId(self.next_service);
                    self.next_service += 1;
                    self.note(format!("create {} {:?}", spec.name, spec.mode));
                    self.apply(ServiceCommand::Create {
                        id,
                        spec,
                        at_ms: self.now,
                    });
                }
            }
            51..=70 => {
                let Some(svc) = self.pick_service() else {
                    return;
                };
                let mut spec = self.store.services[&svc].spec.clone();
                if let Mode::Replicated { replicas } = &mut spec.mode {
                    *replicas = u64::from(self.rng.next_u32() % 12);
                }
                self.note(format!("scale {} {:?}", spec.name, spec.mode));
                self.apply(ServiceCommand::Update {
                    id: svc,
                    spec,
                    at_ms: self.now,
                    rollback: false,
                });
            }
            71..=90 => {
                let Some(svc) = self.pick_service() else {
                    return;
                };
                let mut spec = self.store.services[&svc].spec.clone();
                spec.task.image = if self.rng.next_u32() % 5 == 0 {
                    BROKEN.into()
                } else {
                    format!("img:{}", self.rng.next_u32() % 1000)
                };
                self.stats.updates += 1;
                self.note(format!("update {} to {}", spec.name, spec.task.image));
                self.apply(ServiceCommand::Update {
                    id: svc,
                    spec,
                    at_ms: self.now,
                    rollback: false,
                });
            }
            91..=93 => {
                let Some(svc) = self.pick_service() else {
                    return;
                };
                if self.store.services[&svc].previous.is_some() {
                    self.stats.rollbacks += 1;
                    let spec = self.store.services[&svc].spec.clone();
                    self.note(format!("rollback {}", spec.name));
                    self.apply(ServiceCommand::Update {
                        id: svc,
                        spec,
                        at_ms: self.now,
                        rollback: true,
                    });
                }
            }
            _ => {
                let Some(svc) = self.pick_service() else {
                    return;
                };
                self.note(format!("rm {}", self.store.services[&svc].spec.name));
                self.apply(ServiceCommand::Remove(svc));
            }
        }
    }

    /// The tasks on node `i` not yet ended.
    fn unended_on(&self, i: usize) -> impl Iterator<Item = &Task> {
        let id = self.nodes[i].id;
        self.store
            .tasks
            .values()
            .filter(move |t| t.node == Some(id) && !t.state.is_terminal())
    }

    /// Remembers the tasks node `i` now sends away (drain, constraints), whose slots
    /// recover outside any update even if the node takes them back later.
    fn mark_evicted(&mut self, i: usize) {
        let evicted: Vec<TaskId> = self
            .unended_on(i)
            .filter(|t| {
                self.store
                    .services
                    .get(&t.service)
                    .is_some_and(|s| self.must_leave(t, &s.spec))
            })
            .map(|t| t.id)
            .collect();
        self.evicted.extend(evicted);
    }

    fn pick_service(&mut self) -> Option<ServiceId> {
        let ids: Vec<ServiceId> = self.store.services.keys().copied().collect();
        (!ids.is_empty()).then(|| ids[self.rng.next_u32() as usize % ids.len()])
    }

    /// Applies a command; the tasks it touches must move only forward and never change
    /// node.
    fn apply(&mut self, cmd: ServiceCommand) {
        let touched: Vec<TaskId> = match &cmd {
            ServiceCommand::Tasks { ops, .. } => ops
                .iter()
                .filter_map(|op| match op {
                    TaskOp::Desire { task, .. }
                    | TaskOp::Assign { task, .. }
                    | TaskOp::Pending { task, .. }
                    | TaskOp::Observe { task, .. } => Some(*task),
                    _ => None,
                })
                .collect(),
            ServiceCommand::Report { reports, .. } => reports.iter().map(|r| r.task).collect(),
            _ => Vec::new(),
        };
        let before: Vec<(TaskId, Option<NodeId>, TaskState, TaskState)> = touched
            .iter()
            .filter_map(|id| self.store.tasks.get(id))
            .map(|t| (t.id, t.node, t.state, t.desired))
            .collect();
        if let Err(e) = self.store.apply(&cmd) {
            self.fail(format!("a command the simulation made was refused: {e}"));
        }
        for (id, node, state, desired) in before {
            let Some(t) = self.store.tasks.get(&id) else {
                continue;
            };
            if node.is_some() && node != t.node {
                self.fail(format!("task {id} moved from {node:?} to {:?}", t.node));
            }
            if t.desired >= TaskState::Shutdown && desired < TaskState::Shutdown {
                self.stop_asked.insert(id, self.now);
            }
            if t.state < state || t.desired < desired && desired != TaskState::Ready {
                self.fail(format!(
                    "task {id} went back: {state:?}/{desired:?} -> {:?}/{:?}",
                    t.state, t.desired
                ));
            }
        }
    }

    /// An orchestration round, applied as one entry.
    fn round(&mut self) {
        let r = reconcile(&self.store, &self.infos(), self.now);
        let made = r
            .ops
            .iter()
            .filter(|o| matches!(o, TaskOp::Create(_)))
            .count();
        if let Ok(watch) = std::env::var("SIM_WATCH_SERVICE") {
            let watch = ServiceId(watch.parse().unwrap_or(0));
            for op in &r.ops {
                let about = match op {
                    TaskOp::Create(t) => t.service == watch,
                    TaskOp::UpdateStatus { service, .. } | TaskOp::Rollback { service, .. } => {
                        *service == watch
                    }
                    TaskOp::Desire { task, .. }
                    | TaskOp::Assign { task, .. }
                    | TaskOp::Pending { task, .. }
                    | TaskOp::Observe { task, .. }
                    | TaskOp::Delete(task) => self
                        .store
                        .tasks
                        .get(task)
                        .is_some_and(|t| t.service == watch),
                };
                if about {
                    eprintln!("{:>8} {op:?}", self.now - 1_000_000);
                }
            }
        }
        self.stats.tasks_made += made as u64;
        self.apply(ServiceCommand::Tasks {
            at_ms: self.now,
            ops: r.ops,
        });
    }

    /// Agents: each task moves a step with some chance, as containers take their time.
    fn agents(&mut self) {
        let mut reports: BTreeMap<NodeId, Vec<TaskReport>> = BTreeMap::new();
        let by_node: BTreeMap<NodeId, Vec<&Task>> =
            self.store.tasks.values().fold(BTreeMap::new(), |mut m, t| {
                if let Some(n) = t.node {
                    m.entry(n).or_insert_with(Vec::new).push(t);
                }
                m
            });
        for node in &mut self.nodes {
            if !node.ready {
                continue;
            }
            let assigned = by_node.get(&node.id).map_or(&[][..], |v| v.as_slice());
            let ids: BTreeSet<TaskId> = assigned.iter().map(|t| t.id).collect();
            // What the set no longer holds is removed.
            node.running.retain(|t, _| ids.contains(t));
            for t in assigned {
                if self.rng.next_u32() % 3 == 0 {
                    continue; // not this time
                }
                let have = node.running.get(&t.id).copied();
                let next = if t.desired > TaskState::Running {
                    match have {
                        Some(s) if !s.is_terminal() => Some(TaskState::Shutdown),
                        None if !t.state.is_terminal() => Some(TaskState::Shutdown),
                        _ => None,
                    }
                } else {
                    match have {
                        None if t.state < TaskState::Preparing => Some(TaskState::Preparing),
                        // Its container is gone (the node rebooted): the real agent says
                        // so, and the task is replaced.
                        None if !t.state.is_terminal() => Some(TaskState::Failed),
                        Some(TaskState::Preparing) if t.image == BROKEN => {
                            Some(TaskState::Rejected)
                        }
                        Some(TaskState::Preparing) => Some(TaskState::Running),
                        _ => None,
                    }
                };
                if let Some(s) = next {
                    node.running.insert(t.id, s);
                    reports.entry(node.id).or_default().push(TaskReport {
                        task: t.id,
                        state: s,
                        message: String::new(),
                        error: String::new(),
                    });
                }
            }
        }
        for (node, reports) in reports {
            self.apply(ServiceCommand::Report {
                node,
                at_ms: self.now,
                reports,
            });
        }
    }

    fn node(&self, id: Option<NodeId>) -> Option<&SimNode> {
        id.and_then(|id| self.nodes.get(id.0 as usize - 1))
    }

    fn facts<'a>(&self, n: &'a SimNode) -> NodeFacts<'a> {
        NodeFacts {
            id: n.id,
            hostname: &n.hostname,
            role: n.role,
            os: "linux",
            arch: "aarch64",
            labels: &n.labels,
            engine_labels: &n.engine,
        }
    }

    /// Whether a task's node sends it away (drained, or its constraints no longer met).
    fn must_leave(&self, t: &Task, spec: &ServiceSpec) -> bool {
        self.node(t.node).is_some_and(|n| {
            n.availability == Availability::Drain
                || !spec
                    .task
                    .placement
                    .constraints
                    .iter()
                    .all(|c| c.matches(&self.facts(n)))
        })
    }

    fn eligible(&self, n: &SimNode, spec: &ServiceSpec) -> bool {
        n.ready
            && n.availability == Availability::Active
            && spec
                .task
                .placement
                .constraints
                .iter()
                .all(|c| c.matches(&self.facts(n)))
    }

    /// Invariants that hold at every step.
    fn check_step(&self) {
        let mut by_service: BTreeMap<ServiceId, Vec<&Task>> = BTreeMap::new();
        for t in self.store.tasks.values() {
            by_service.entry(t.service).or_default().push(t);
        }
        for svc in self.store.services.values() {
            let max = svc.spec.task.placement.max_replicas;
            let mut per_node: BTreeMap<NodeId, u64> = BTreeMap::new();
            let tasks = by_service.remove(&svc.id).unwrap_or_default();
            for t in &tasks {
                if let (true, Some(n)) = (t.is_live(), t.node) {
                    if self.node(Some(n)).is_some_and(|n| n.ready) {
                        *per_node.entry(n).or_default() += 1;
                    }
                }
            }
            if max > 0 {
                if let Some((n, c)) = per_node.iter().find(|(_, c)| **c > max) {
                    self.fail(format!(
                        "{}: {c} live tasks on node {n}, max per node {max}\n{}",
                        svc.spec.name,
                        self.dump(svc.id)
                    ));
                }
            }
            self.check_parallelism(svc, &tasks);
        }
        for n in &self.nodes {
            for id in n.running.keys() {
                match self.store.tasks.get(id) {
                    Some(t) if t.node == Some(n.id) => {}
                    _ => self.fail(format!("{} runs task {id}, not assigned to it", n.hostname)),
                }
            }
        }
    }

    fn check_parallelism(&self, svc: &crate::services::store::Service, tasks: &[&Task]) {
        let Some(u) = svc
            .update
            .as_ref()
            .filter(|u| u.state == UpdateState::Updating)
        else {
            return;
        };
        let p = svc.spec.update.parallelism;
        if p == 0 {
            return;
        }
        let up = |t: &Task| self.node(t.node).is_some_and(|n| n.ready);
        let mut slots: BTreeMap<(u64, Option<NodeId>), Vec<&Task>> = BTreeMap::new();
        for t in tasks {
            let key = if t.slot == 0 {
                (0, t.node)
            } else {
                (t.slot, None)
            };
            slots.entry(key).or_default().push(t);
        }
        // Slots with no task serving, and slots with a new task starting.
        let (mut down, mut starting) = (0, 0);
        for ts in slots.values() {
            // Slots touched by a failure or a node loss are recovery, not the update.
            let disturbed = ts.iter().any(|t| {
                t.created_ms >= u.started_ms
                    && (matches!(t.state, TaskState::Failed | TaskState::Rejected | TaskState::Complete | TaskState::Orphaned)
                        || (t.node.is_some() && !up(t)))
            }) || ts.iter().any(|t| t.version != svc.version && t.node.is_some() && !up(t))
                || ts.iter().any(|t| self.lost.contains(&t.id) || self.evicted.contains(&t.id))
                // A new task retired again (drain, constraints): moved, not updated;
                // start-first, it is still desired running while its replacement starts.
                || ts.iter().any(|t| {
                    t.version == svc.version && t.created_ms >= u.started_ms && t.desired > TaskState::Running
                })
                || ts.iter().any(|t| {
                    t.version == svc.version
                        && t.is_live()
                        && self.must_leave(t, &svc.spec)
                })
                // An outdated task retired by a drain or a constraint, not by the update.
                || ts.iter().any(|t| {
                    t.version != svc.version
                        && t.desired > TaskState::Running
                        && self.must_leave(t, &svc.spec)
                });
            if disturbed {
                continue;
            }
            // Desired Remove is a scale-down, not the update.
            let asked_here = |t: &Task| {
                self.stop_asked
                    .get(&t.id)
                    .is_some_and(|at| *at >= u.started_ms)
            };
            let stopping_old = ts.iter().any(|t| {
                t.version != svc.version
                    && t.desired == TaskState::Shutdown
                    && !t.state.is_terminal()
                    && up(t)
                    && asked_here(t)
            });
            // A new task counts where this update stopped (or is stopping) an outdated
            // one: a slot an earlier failed update left empty is refilled at once, as
            // recovery, not within the update's parallelism; so is a slot a scale-down
            // removed (desired Remove) and a scale-up brought back.
            // Only a task that ran was serving: stopping one that never did (an earlier
            // update's, still starting) takes nothing down.
            let replaced_here = ts.iter().any(|t| {
                t.version != svc.version
                    && t.node.is_some()
                    && t.running_ms.is_some()
                    && t.desired == TaskState::Shutdown
                    && asked_here(t)
                    && (t.state == TaskState::Shutdown || !t.state.is_terminal())
            });
            let starting_new = replaced_here
                && ts.iter().any(|t| {
                    t.version == svc.version
                        && t.created_ms >= u.started_ms
                        && t.is_live()
                        && t.state < TaskState::Running
                });
            let serving = ts
                .iter()
                .any(|t| t.desired == TaskState::Running && t.state == TaskState::Running && up(t));
            if (stopping_old || starting_new) && !serving {
                down += 1;
            }
            if starting_new {
                starting += 1;
            }
        }
        if down > p || starting > p {
            self.fail(format!(
                "{}: {down} slots down and {starting} starting at once for the update, parallelism {p}\n{}",
                svc.spec.name,
                self.dump(svc.id)
            ));
        }
    }

    fn dump(&self, svc: ServiceId) -> String {
        let s = &self.store.services[&svc];
        let mut out = format!(
            "version {} update {:?} spec {:?}\n",
            s.version, s.update, s.spec
        );
        let r = reconcile(&self.store, &self.infos(), self.now);
        for op in &r.ops {
            let _ = writeln!(out, "  next round: {op:?}");
        }
        let mut ts: Vec<&Task> = self
            .store
            .tasks
            .values()
            .filter(|t| t.service == svc)
            .collect();
        ts.sort_by_key(|t| (t.slot, t.seq));
        for t in ts {
            let up = self.node(t.node).map(|n| (n.ready, n.availability));
            let _ = writeln!(
                out,
                "  slot {} {} v{} node {:?} {up:?} desired {:?} state {:?} created {} state at {} running {:?}",
                t.slot, t.id, t.version, t.node.map(|n| n.0), t.desired, t.state, t.created_ms - 1_000_000, t.state_ms - 1_000_000, t.running_ms.map(|r| r - 1_000_000)
            );
        }
        out
    }

    /// An update waits while a new task finds no node (as Swarm's does).
    fn stalled(&self, svc: &Service) -> bool {
        self.store.tasks.values().any(|t| {
            t.service == svc.id
                && t.version == svc.version
                && t.is_live()
                && t.state == TaskState::Pending
        })
    }

    /// An update in progress that must end once nothing else happens: not one to a
    /// broken image (its new tasks never run), nor one stalled for want of a node.
    fn update_must_finish(&self, svc: &Service) -> bool {
        // An update to a broken image ends only by its failure action: pause and
        // rollback end it at once (and are checked for that), continue goes on to the
        // end (its failed slots retried under the restart policy).
        let goes_on = svc.spec.update.failure_action == FailureAction::Continue
            && svc
                .update
                .as_ref()
                .is_some_and(|u| u.state == UpdateState::Updating);
        svc.update.as_ref().is_some_and(|u| u.state.in_progress())
            && (svc.spec.task.image != BROKEN || goes_on)
            && !self.stalled(svc)
    }

    /// Once settled.
    fn check_settled(&self) {
        for svc in self.store.services.values() {
            let spec = &svc.spec;
            let tasks: Vec<&Task> = self
                .store
                .tasks
                .values()
                .filter(|t| t.service == svc.id)
                .collect();
            let broken = spec.task.image == BROKEN
                || svc.update.as_ref().is_some_and(|u| {
                    matches!(u.state, UpdateState::Paused | UpdateState::RollbackPaused)
                });
            let running: Vec<&&Task> = tasks
                .iter()
                .filter(|t| {
                    t.desired == TaskState::Running
                        && t.state == TaskState::Running
                        && self.node(t.node).is_some_and(|n| n.ready)
                })
                .collect();
            for t in &running {
                let n = self.node(t.node).expect("invariant: checked above");
                if n.availability == Availability::Drain {
                    self.fail(format!(
                        "{}: task {} runs on drained {}\n{}",
                        spec.name,
                        t.id,
                        n.hostname,
                        self.dump(svc.id)
                    ));
                }
                if !spec
                    .task
                    .placement
                    .constraints
                    .iter()
                    .all(|c| c.matches(&self.facts(n)))
                {
                    self.fail(format!(
                        "{}: task {} on {} breaks a constraint\n{}",
                        spec.name,
                        t.id,
                        n.hostname,
                        self.dump(svc.id)
                    ));
                }
                let agent = n.running.get(&t.id);
                if agent != Some(&TaskState::Running) {
                    self.fail(format!(
                        "{}: task {} Running in the store, {agent:?} on {}",
                        spec.name, t.id, n.hostname
                    ));
                }
            }
            if self.update_must_finish(svc) {
                self.fail(format!(
                    "{}: update still {:?} once settled\n{}",
                    spec.name,
                    svc.update.as_ref().map(|u| u.state),
                    self.dump(svc.id)
                ));
            }
            if broken {
                continue;
            }
            let stalled = self.stalled(svc);
            let fresh = running.iter().filter(|t| t.version == svc.version).count() as u64;
            match spec.mode {
                Mode::Replicated { replicas } => {
                    let max = spec.task.placement.max_replicas;
                    let eligible =
                        self.nodes.iter().filter(|n| self.eligible(n, spec)).count() as u64;
                    // Paused nodes keep what they run but take nothing new.
                    let kept: u64 = self
                        .nodes
                        .iter()
                        .filter(|n| n.availability == Availability::Pause && n.ready)
                        .map(|n| running.iter().filter(|t| t.node == Some(n.id)).count() as u64)
                        .sum();
                    let room = match (max, eligible) {
                        (_, 0) => kept,
                        (0, _) => u64::MAX,
                        _ => eligible * max + kept,
                    };
                    let want = replicas.min(room);
                    // A stalled update (its new task finds no node) leaves the
                    // rest outdated, still running.
                    if (fresh != want && !stalled) || running.len() as u64 != want {
                        self.fail(format!(
                            "{}: {fresh} current tasks running ({} in all), expected {want} (replicas {replicas}, {eligible} eligible nodes, max {max})\n{}",
                            spec.name,
                            running.len(),
                            self.dump(svc.id)
                        ));
                    }
                }
                Mode::Global => {
                    for n in &self.nodes {
                        let here = running.iter().filter(|t| t.node == Some(n.id)).count();
                        let want = usize::from(self.eligible(n, spec));
                        let paused = n.ready && n.availability == Availability::Pause;
                        if here != want && !(paused && here <= 1) && n.ready {
                            self.fail(format!(
                                "{}: {here} tasks on {} ({:?}), expected {want}\n{}",
                                spec.name,
                                n.hostname,
                                n.availability,
                                self.dump(svc.id)
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
        for n in self
            .nodes
            .iter()
            .filter(|n| n.ready && n.availability == Availability::Drain)
        {
            if n.running.values().any(|s| !s.is_terminal()) {
                self.fail(format!("drained {} still runs tasks", n.hostname));
            }
        }
    }

    fn step(&mut self, events: bool) {
        if events && self.rng.next_u32() % 4 == 0 {
            self.event();
        }
        self.round();
        self.agents();
        self.check_step();
        self.now += STEP_MS;
        self.stats.steps += 1;
    }
}

pub fn run_seed(seed: u64) -> Stats {
    let mut sim = Sim::new(seed);
    let steps = 600 + (seed % 7) * 100;
    for _ in 0..steps {
        sim.step(true);
    }
    // Settle: no more events; 90 s of virtual time covers restart delays, update delays
    // and monitors several times over.
    for _ in 0..900 {
        sim.step(false);
    }
    // A global service on 1,000 nodes updated one node at a time takes minutes.
    let mut extra = 0;
    while extra < 36_000
        && sim
            .store
            .services
            .values()
            .any(|s| sim.update_must_finish(s))
    {
        sim.step(false);
        extra += 1;
    }
    for _ in 0..100 {
        sim.step(false);
    }
    sim.check_settled();
    sim.stats
}

/// One 1,000-node seed in `just test` (about 80 s in a debug build, so a test of its
/// own that runs beside the rest).
#[test]
fn a_thousand_nodes() {
    let s = run_seed(10);
    assert!(
        s.deaths > 0 && s.updates > 0,
        "the seed exercised deaths and updates"
    );
}

/// `just test` runs seeds 1 to 12 but 10 (node counts 3 to 100; about 15 s in a debug
/// build); `just sim` runs thousands, the 1,000-node ones among them, in release.
#[test]
fn replay() {
    let seeds = match std::env::var_os("SIM_SEED").or(std::env::var_os("SIM_SEEDS")) {
        Some(_) => super::seeds(0),
        None => (1..=12).filter(|s| s % 10 != 0).collect(),
    };
    let quiet = seeds.len() > 1;
    let hook = std::panic::take_hook();
    if quiet {
        std::panic::set_hook(Box::new(|_| {}));
    }
    // Seeds are independent: one thread per core takes the next seed until none are left.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..threads.min(seeds.len()) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&seed) = seeds.get(i) else { break };
                let r = std::panic::catch_unwind(|| run_seed(seed));
                if let Err(e) = &r {
                    let why = e.downcast_ref::<String>().cloned().unwrap_or_default();
                    eprintln!("seed {seed}: {}", why.lines().next().unwrap_or_default());
                }
                results
                    .lock()
                    .expect("no thread panics holding it")
                    .push((seed, r));
            });
        }
    });
    let mut failed = Vec::new();
    let (mut tasks, mut updates, mut deaths) = (0, 0, 0);
    for (seed, r) in results.into_inner().expect("threads done") {
        match r {
            Ok(s) => {
                if !quiet {
                    eprintln!(
                        "seed {seed}: {} steps, {} tasks made, {} updates, {} node deaths",
                        s.steps, s.tasks_made, s.updates, s.deaths
                    );
                }
                tasks += s.tasks_made;
                updates += s.updates;
                deaths += s.deaths;
            }
            Err(e) => {
                failed.push(seed);
                if !quiet {
                    std::panic::resume_unwind(e);
                }
            }
        }
    }
    failed.sort_unstable();
    std::panic::set_hook(hook);
    eprintln!(
        "orchestrator simulation: {} seeds, {} failed; {tasks} tasks made, {updates} updates, {deaths} node deaths",
        seeds.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "failed seeds: {failed:?}");
}

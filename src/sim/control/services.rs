//! Services in the whole-control-plane simulation: every node runs an agent on the
//! agent's own bookkeeping ([`Book`], as the daemon does) over simulated containers, and
//! the workload creates, updates, scales, rolls back and removes services through any
//! manager while nodes crash, die, partition, drain and change labels.
//!
//! A node's containers live on its machine: they outlive a daemon crash (the keeper
//! keeps them running), a start cut short by one may leave a container created and
//! never started, and they die with the machine. An image named `missing:*` cannot be
//! pulled (the task is rejected); any other starts. Now and then a running container
//! dies on its own (the OOM killer).
//!
//! Checked on every step: a node starts only a task the committed state places on it;
//! a task never runs on two nodes at once.
//!
//! Once settled, for every service whose spec can run and whose update is not paused:
//! no update is still in progress; a replicated service runs its replica count, every
//! task of the current version, one per slot, on nodes that are ready, not drained and
//! meet its constraints, never more per node than `--replicas-max-per-node`, and fewer
//! only where no active eligible node has room; a global service runs one current task
//! on every active eligible node and none where the node is drained or no longer
//! eligible. On every live member the running containers are exactly the tasks the
//! state has running there: nothing duplicated, nothing left behind; a node that left
//! (or was removed) runs none.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rand_core::RngCore;

use super::{millis, per_mille, pick, Expect, Fate, Kind, Sim};
use crate::api::Request;
use crate::cluster::{Availability, ClusterState, Command, NodeStatus};
use crate::control::node_facts;
use crate::raft::NodeId;
use crate::services::agent::{Action, Assignments, Book, NodeDescription, Seen};
use crate::services::constraint::Constraint;
use crate::services::spec::{FailureAction, Mode, ServiceSpec, UpdateConfig, UpdateOrder};
use crate::services::store::{Service, ServiceCommand, TaskId, TaskReport, UpdateState};
use crate::services::task::TaskState;

/// How often an agent reports unprompted (the daemon's tick).
const TICK: Duration = Duration::from_secs(1);
/// Few names, so that creates collide and updates find what they change.
const NAMES: [&str; 3] = ["web", "db", "cache"];
const CONSTRAINTS: [&str; 5] = [
    "node.labels.zone==z0",
    "node.labels.zone!=z0",
    "node.role==worker",
    "node.role==manager",
    "node.labels.k1!=v7",
];

/// A task's container on a node's machine.
#[derive(Clone, Debug)]
pub(super) struct Container {
    name: String,
    seen: Seen,
}

/// What a node's machine holds: outlives its daemon, not the machine.
pub(super) type Machine = BTreeMap<TaskId, Container>;

#[derive(Debug)]
enum Work {
    Start {
        name: String,
        outcome: Result<(), String>,
    },
    Stop {
        shutdown: bool,
    },
    Remove {
        name: String,
    },
}

/// A daemon's agent: its bookkeeping and the actions its workers are carrying out.
#[derive(Debug)]
pub(super) struct Agent {
    book: Book,
    ops: BTreeMap<TaskId, (Instant, Work)>,
    next_status: Instant,
}

impl Agent {
    pub fn new(now: Instant) -> Agent {
        Agent {
            book: Book::default(),
            ops: BTreeMap::new(),
            next_status: now,
        }
    }

    pub fn deadline(&self) -> Instant {
        self.ops
            .values()
            .map(|(at, _)| *at)
            .fold(self.next_status, Instant::min)
    }

    /// A set from the leader; a new one is looked at at once.
    pub fn assign(&mut self, now: Instant, a: Assignments) {
        if self.book.assign(a) {
            self.next_status = now;
        }
    }

    /// The node is out of its cluster.
    pub fn leave(&mut self, now: Instant) {
        self.book.leave();
        self.next_status = now;
    }

    /// The daemon dies: a start under way may have created its container and not
    /// started it. Returns those containers.
    pub fn crash(self, rng: &mut impl RngCore) -> Vec<(TaskId, Container)> {
        self.ops
            .into_iter()
            .filter_map(|(task, (_, w))| match w {
                Work::Start {
                    name,
                    outcome: Ok(()),
                } if rng.next_u32() % 2 == 0 => Some((
                    task,
                    Container {
                        name,
                        seen: Seen::Created,
                    },
                )),
                _ => None,
            })
            .collect()
    }
}

fn description() -> NodeDescription {
    NodeDescription {
        os: "linux".into(),
        arch: "x86_64".into(),
        engine_labels: BTreeMap::new(),
        nano_cpus: 2_000_000_000,
        memory: 1 << 30,
    }
}

fn report(task: TaskId, state: TaskState, message: &str, error: &str) -> TaskReport {
    TaskReport {
        task,
        state,
        message: message.into(),
        error: error.into(),
    }
}

fn runnable(spec: &ServiceSpec) -> bool {
    !spec.task.image.starts_with("missing")
}

/// Ready, and meets the service's constraints; `active` also asks it to take new tasks.
fn fits(c: &ClusterState, s: &Service, id: NodeId, active: bool) -> bool {
    let Some(n) = c.nodes.get(&id) else {
        return false;
    };
    let takes = match n.availability {
        Availability::Active => true,
        Availability::Pause => !active,
        Availability::Drain => false,
    };
    n.status == NodeStatus::Ready && takes && {
        let f = node_facts(c, n);
        s.spec
            .task
            .placement
            .constraints
            .iter()
            .all(|k| k.matches(&f))
    }
}

impl Sim {
    // ---- the agent -------------------------------------------------------------------

    /// Node `i`'s agent: finishes what is due, looks at the containers, acts, reports.
    pub(super) fn agent_turn(&mut self, i: usize) {
        let now = self.now;
        let me = self.nodes[i].id;
        let mut changed = false;
        let due: Vec<TaskId> = self.nodes[i]
            .run
            .as_ref()
            .map(|r| {
                r.agent
                    .ops
                    .iter()
                    .filter(|(_, (at, _))| *at <= now)
                    .map(|(t, _)| *t)
                    .collect()
            })
            .unwrap_or_default();
        for task in due {
            let Some((_, work)) = self.run_mut(i).agent.ops.remove(&task) else {
                continue;
            };
            changed = true;
            self.finish_work(i, task, work);
            self.run_mut(i).agent.book.done(task);
        }
        let agent = &self.run_mut(i).agent;
        if !changed && now < agent.next_status {
            return;
        }
        let seen: BTreeMap<TaskId, (String, Seen)> = self.nodes[i]
            .machine
            .iter()
            .map(|(t, c)| (*t, (c.name.clone(), c.seen.clone())))
            .collect();
        let (actions, ch) = self.run_mut(i).agent.book.reconcile(&seen);
        changed |= ch;
        for a in actions {
            let (task, work, lo, hi) = match a {
                Action::Start(task) => {
                    let Some(asg) = self.run_mut(i).agent.book.assignment(task).cloned() else {
                        self.fail(format!("node {i}: agent starts unassigned task {task}"));
                    };
                    self.check_start(i, me, task);
                    let image = asg
                        .template
                        .as_ref()
                        .map(|t| t.image.clone())
                        .unwrap_or_default();
                    let outcome = match image.starts_with("missing") {
                        true => Err(format!("No such image: {image}")),
                        false => Ok(()),
                    };
                    let name = asg.container_name();
                    (task, Work::Start { name, outcome }, 50, 800)
                }
                Action::Stop(task) => {
                    let shutdown = self
                        .run_mut(i)
                        .agent
                        .book
                        .assignment(task)
                        .is_none_or(|a| a.desired > TaskState::Running);
                    (task, Work::Stop { shutdown }, 10, 500)
                }
                Action::Remove { task, container } => {
                    (task, Work::Remove { name: container }, 5, 100)
                }
            };
            let at = now + millis(&mut self.rng, lo, hi);
            self.run_mut(i).agent.ops.insert(task, (at, work));
        }
        let agent = &mut self.run_mut(i).agent;
        if changed || now >= agent.next_status {
            agent.next_status = now + TICK;
            let st = agent.book.status(&description());
            self.run_mut(i).stack.handle_agent_status(now, st);
        }
    }

    fn finish_work(&mut self, i: usize, task: TaskId, work: Work) {
        match work {
            Work::Start {
                name,
                outcome: Ok(()),
            } => {
                if let Some(j) = (0..self.nodes.len()).find(|j| {
                    *j != i
                        && self.nodes[*j]
                            .machine
                            .get(&task)
                            .is_some_and(|c| matches!(c.seen, Seen::Running { .. }))
                }) {
                    self.fail(format!(
                        "task {task} starts on node {i} while it runs on node {j}"
                    ));
                }
                self.note(format!("{i} runs task {task} ({name})"));
                self.stats.tasks_started += 1;
                self.nodes[i].machine.insert(
                    task,
                    Container {
                        name,
                        seen: Seen::Running { health: None },
                    },
                );
            }
            Work::Start {
                outcome: Err(e), ..
            } => {
                self.stats.tasks_rejected += 1;
                let r = report(task, TaskState::Rejected, "rejected", &e);
                self.run_mut(i).agent.book.note(r);
            }
            Work::Stop { shutdown } => {
                if let Some(c) = self.nodes[i].machine.get_mut(&task) {
                    if matches!(c.seen, Seen::Running { .. }) {
                        c.seen = Seen::Exited { code: Some(137) };
                    }
                }
                if shutdown {
                    let r = report(task, TaskState::Shutdown, "shutdown", "");
                    self.run_mut(i).agent.book.note(r);
                }
            }
            Work::Remove { name } => {
                if self.nodes[i]
                    .machine
                    .get(&task)
                    .is_some_and(|c| c.name == name)
                {
                    self.nodes[i].machine.remove(&task);
                }
            }
        }
    }

    /// A node starts only a task the committed state places on it.
    fn check_start(&self, i: usize, me: NodeId, task: TaskId) {
        let placed = self
            .oracle
            .state
            .as_ref()
            .and_then(|s| s.services.tasks.get(&task))
            .map(|t| t.node);
        // A leader applies (and hands out) what it has appended before that is durable
        // (a lone manager commits then): the oracle learns it a little later.
        let applied_here = || {
            self.nodes.iter().any(|n| {
                n.run
                    .as_ref()
                    .and_then(|r| r.stack.control().cluster())
                    .and_then(|c| c.services.tasks.get(&task))
                    .is_some_and(|t| t.node == Some(me))
            })
        };
        if let Some(node) = placed {
            if node != Some(me) && !(node.is_none() && applied_here()) {
                self.fail(format!(
                    "node {i} starts task {task}, which the committed state places on {node:?}"
                ));
            }
        }
    }

    /// The daemon of node `i` dies; its machine too unless `fate` keeps it.
    pub(super) fn agent_dies(&mut self, i: usize, agent: Agent, fate: Fate) {
        let left = agent.crash(&mut self.rng);
        let m = &mut self.nodes[i].machine;
        if fate == Fate::Dead {
            m.clear();
            return;
        }
        for (task, c) in left {
            m.entry(task).or_insert(c);
        }
    }

    /// A running container dies on its own.
    pub(super) fn container_dies(&mut self) {
        let running: Vec<(usize, TaskId)> = self
            .nodes
            .iter()
            .enumerate()
            .flat_map(|(i, n)| {
                n.machine
                    .iter()
                    .filter(|(_, c)| matches!(c.seen, Seen::Running { .. }))
                    .map(move |(t, _)| (i, *t))
            })
            .collect();
        let Some((i, task)) = pick(&mut self.rng, &running) else {
            return;
        };
        if let Some(c) = self.nodes[i].machine.get_mut(&task) {
            c.seen = Seen::Exited { code: Some(137) };
        }
        self.note(format!("task {task}'s container on {i} dies"));
    }

    // ---- the workload ----------------------------------------------------------------

    fn image(&mut self) -> String {
        if per_mille(&mut self.rng, 100) {
            "missing:1".into()
        } else {
            format!("app:{}", self.rng.next_u32() % 4)
        }
    }

    fn update_config(&mut self) -> UpdateConfig {
        UpdateConfig {
            parallelism: u64::from(self.rng.next_u32() % 3),
            delay_ms: u64::from(self.rng.next_u32() % 1_500),
            failure_action: match self.rng.next_u32() % 2 {
                0 => FailureAction::Pause,
                _ => FailureAction::Rollback,
            },
            monitor_ms: 200 + u64::from(self.rng.next_u32() % 1_800),
            max_failure_ppm: 0,
            order: match self.rng.next_u32() % 2 {
                0 => UpdateOrder::StopFirst,
                _ => UpdateOrder::StartFirst,
            },
        }
    }

    fn new_spec(&mut self, name: &str) -> ServiceSpec {
        let image = self.image();
        let mut s = ServiceSpec::new(name, &image);
        s.mode = match self.rng.next_u32() % 4 {
            0 => Mode::Global,
            _ => Mode::Replicated {
                replicas: u64::from(self.rng.next_u32() % 6),
            },
        };
        if self.rng.next_u32() % 3 == 0 {
            let k = CONSTRAINTS[self.rng.next_u32() as usize % CONSTRAINTS.len()];
            let c = Constraint::parse(k).expect("invariant: the sim's constraints parse");
            s.task.placement.constraints.push(c);
        }
        if matches!(s.mode, Mode::Replicated { .. }) && self.rng.next_u32() % 3 == 0 {
            s.task.placement.max_replicas = 1 + u64::from(self.rng.next_u32() % 2);
        }
        s.task.restart.delay_ms = u64::from(self.rng.next_u32() % 2_000);
        s.task.stop_grace_ms = 1_000;
        s.update = self.update_config();
        s.rollback = self.update_config();
        s
    }

    /// A service request of a manager (now and then of a worker, which must refuse).
    pub(super) fn work_service(&mut self) {
        let managers = self.managers();
        let Some(m) = pick(&mut self.rng, &managers) else {
            return;
        };
        let name = NAMES[self.rng.next_u32() as usize % NAMES.len()];
        let current = self
            .oracle
            .state
            .as_ref()
            .and_then(|c| c.services.by_name(name))
            .cloned();
        let (req, kind) = match (self.rng.next_u32() % 12, current) {
            (0..=2, _) | (_, None) => {
                let spec = self.new_spec(name);
                let kind = Kind::Write(Expect::Service(name.into()));
                (Request::ServiceCreate(Box::new(spec)), kind)
            }
            (3..=6, Some(s)) => {
                let mut spec = s.spec.clone();
                match self.rng.next_u32() % 5 {
                    0 => spec.task.force_update += 1,
                    1 => spec.update = self.update_config(),
                    2 => {
                        spec.task.placement.constraints.clear();
                        spec.task.image = self.image();
                    }
                    _ => spec.task.image = self.image(),
                }
                let req = Request::ServiceUpdate {
                    service: name.into(),
                    spec: Box::new(spec),
                    rollback: false,
                };
                (req, Kind::Write(Expect::Service(name.into())))
            }
            (7, Some(s)) => {
                let req = Request::ServiceUpdate {
                    service: s.id.to_string(),
                    spec: Box::new(s.spec.clone()),
                    rollback: true,
                };
                (req, Kind::Write(Expect::Service(name.into())))
            }
            (8 | 9, Some(_)) => {
                let n = u64::from(self.rng.next_u32() % 6);
                let req = Request::ServiceScale(vec![(name.into(), n)]);
                (req, Kind::Write(Expect::Service(name.into())))
            }
            (10, Some(_)) => (
                Request::ServiceRemove(vec![name.into()]),
                Kind::Write(Expect::ServiceRemove),
            ),
            (_, Some(_)) => {
                let req = match self.rng.next_u32() % 2 {
                    0 => Request::ServiceList(None),
                    _ => Request::TaskList {
                        services: vec![name.into()],
                        node: None,
                    },
                };
                (req, Kind::Other)
            }
        };
        self.ask(m, req, kind);
    }

    /// Whether a committed command is what a service write answered Done asked for.
    pub(super) fn service_write_matches(expect: &Expect, cmd: &Command) -> bool {
        let Command::Service(c) = cmd else {
            return false;
        };
        match (expect, c.as_ref()) {
            (Expect::Service(name), ServiceCommand::Create { spec, .. })
            | (Expect::Service(name), ServiceCommand::Update { spec, .. }) => spec.name == *name,
            (Expect::ServiceRemove, ServiceCommand::Remove(_)) => true,
            _ => false,
        }
    }

    // ---- settled ---------------------------------------------------------------------

    /// Once settled: every service converged where it can, and the nodes' containers are
    /// what the state says.
    pub(super) fn check_settled_services(&mut self, c: &ClusterState) {
        for s in c.services.services.values() {
            if let Some(why) = self.service_wrong(c, s) {
                self.fail(format!(
                    "settled: service {} ({:?}, {:?}, update {:?}): {why}\n{}",
                    s.spec.name,
                    s.spec.mode,
                    s.spec
                        .task
                        .placement
                        .constraints
                        .iter()
                        .map(|k| format!("{k:?}"))
                        .collect::<Vec<_>>(),
                    s.update.as_ref().map(|u| u.state),
                    tasks_report(c, s)
                ));
            }
            self.stats.services_checked += 1;
        }
        for i in 0..self.nodes.len() {
            let n = &self.nodes[i];
            let member = n.removed_at.is_none()
                && n.run.as_ref().is_some_and(|r| {
                    r.stack
                        .control()
                        .membership()
                        .is_some_and(|m| m.cluster_id == c.cluster_id)
                });
            let ready = c
                .nodes
                .get(&n.id)
                .is_some_and(|r| r.status == NodeStatus::Ready);
            let outside = n
                .run
                .as_ref()
                .is_some_and(|r| r.stack.control().membership().is_none());
            if outside {
                let left: Vec<&TaskId> = n
                    .machine
                    .iter()
                    .filter(|(_, k)| matches!(k.seen, Seen::Running { .. }))
                    .map(|(t, _)| t)
                    .collect();
                if !left.is_empty() {
                    self.fail(format!(
                        "settled: node {i} is in no cluster but runs the containers of tasks {left:?}"
                    ));
                }
            }
            if !(member && ready) {
                continue;
            }
            let running: BTreeSet<TaskId> = n
                .machine
                .iter()
                .filter(|(_, k)| matches!(k.seen, Seen::Running { .. }))
                .map(|(t, _)| *t)
                .collect();
            let want: BTreeSet<TaskId> = c
                .services
                .tasks
                .values()
                .filter(|t| {
                    t.node == Some(n.id)
                        && t.desired == TaskState::Running
                        && t.state == TaskState::Running
                })
                .map(|t| t.id)
                .collect();
            if running != want {
                self.fail(format!(
                    "settled: node {i} runs the containers of tasks {running:?}, the state has {want:?} running there"
                ));
            }
        }
    }

    fn service_wrong(&self, c: &ClusterState, s: &Service) -> Option<String> {
        let state = s.update.as_ref().map(|u| u.state);
        // An update waits while its new tasks find no node (all paused, drained or
        // unfit, or the room held by the tasks it is to replace: max per node): it goes
        // on when one does, or the service is scaled.
        let can_place = c.nodes.keys().any(|n| fits(c, s, *n, true));
        let unplaced = c.services.tasks.values().any(|t| {
            t.service == s.id && t.version == s.version && t.is_live() && t.node.is_none()
        });
        if state.is_some_and(UpdateState::in_progress) && can_place && !unplaced {
            return Some("its update is still in progress".into());
        }
        let paused = matches!(
            state,
            Some(UpdateState::Paused | UpdateState::RollbackPaused)
        );
        let waiting = state.is_some_and(UpdateState::in_progress);
        if paused || waiting || !runnable(&s.spec) {
            return None;
        }
        let desired: Vec<_> = c
            .services
            .tasks
            .values()
            .filter(|t| t.service == s.id && t.desired == TaskState::Running)
            .collect();
        let ready = |n: Option<NodeId>| {
            n.and_then(|n| c.nodes.get(&n))
                .is_some_and(|r| r.status == NodeStatus::Ready)
        };
        for t in &desired {
            if !ready(t.node) {
                continue;
            }
            let node = t.node.expect("invariant: ready means placed");
            if !fits(c, s, node, false) {
                return Some(format!(
                    "task {} runs on {node}, which is drained or does not meet its constraints",
                    t.id
                ));
            }
            // A global task on a paused node keeps its version until the node takes
            // tasks again (its replacement could not start there).
            let held = matches!(s.spec.mode, Mode::Global) && !fits(c, s, node, true);
            if t.state == TaskState::Running && t.version != s.version && !held {
                return Some(format!(
                    "task {} runs version {}, the service is at {}",
                    t.id, t.version, s.version
                ));
            }
        }
        let running: Vec<_> = desired
            .iter()
            .filter(|t| t.state == TaskState::Running && ready(t.node))
            .collect();
        let mut per_node: BTreeMap<NodeId, u64> = BTreeMap::new();
        for t in &desired {
            if let Some(n) = t.node {
                *per_node.entry(n).or_default() += 1;
            }
        }
        match s.spec.mode {
            Mode::Replicated { replicas } => {
                let max = s.spec.task.placement.max_replicas;
                if let Some((n, k)) = per_node.iter().find(|(_, k)| max > 0 && **k > max) {
                    return Some(format!("{k} tasks on {n}, more than {max}"));
                }
                let mut slots = BTreeSet::new();
                if let Some(t) = desired.iter().find(|t| !slots.insert(t.slot)) {
                    return Some(format!("two tasks desired running in slot {}", t.slot));
                }
                let count = running.len() as u64;
                if count > replicas {
                    return Some(format!("{count} running, {replicas} wanted"));
                }
                if count < replicas {
                    let room = c.nodes.keys().find(|n| {
                        fits(c, s, **n, true)
                            && (max == 0 || per_node.get(*n).copied().unwrap_or(0) < max)
                    });
                    if let Some(n) = room {
                        return Some(format!(
                            "{count} running of {replicas}, and node {n} has room"
                        ));
                    }
                }
            }
            Mode::Global => {
                for n in c.nodes.keys() {
                    let here = running.iter().filter(|t| t.node == Some(*n)).count();
                    if fits(c, s, *n, true) && here != 1 {
                        return Some(format!("{here} tasks running on eligible node {n}"));
                    }
                }
            }
            Mode::ReplicatedJob { .. } | Mode::GlobalJob => {}
        }
        None
    }
}

fn tasks_report(c: &ClusterState, s: &Service) -> String {
    c.services
        .tasks
        .values()
        .filter(|t| t.service == s.id)
        .map(|t| {
            format!(
                "  task {} slot {} node {:?} v{} desired {:?} state {:?} {} {}",
                t.id, t.slot, t.node, t.version, t.desired, t.state, t.message, t.error
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

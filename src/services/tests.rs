//! The orchestrator driven round by round against a store, with agents that do what
//! they are told at once (or fail when a test says so).

use std::collections::{BTreeMap, BTreeSet};

use super::constraint::{Constraint, NodeFacts};
use super::orchestrator::{reconcile, NodeInfo, Round, TASK_HISTORY};
use super::scheduler::Resources;
use super::spec::{FailureAction, Mode, RestartCondition, ServiceSpec, UpdateOrder};
use super::store::{ServiceCommand, Store, Task, TaskReport, UpdateState};
use super::task::TaskState;
use super::ServiceId;
use crate::model::node::{Availability, NodeRole};
use crate::raft::NodeId;

struct TNode {
    id: NodeId,
    hostname: String,
    labels: BTreeMap<String, String>,
    engine: BTreeMap<String, String>,
    ready: bool,
    availability: Availability,
}

struct World {
    store: Store,
    nodes: Vec<TNode>,
    now: u64,
    /// Images that fail to start: their tasks are rejected.
    broken: BTreeSet<String>,
    /// Most slots seen down at once during an update (outdated stopped, new not running).
    rounds: u64,
}

impl World {
    fn new(n: u64) -> World {
        World {
            store: Store::default(),
            nodes: (1..=n)
                .map(|i| TNode {
                    id: NodeId(i),
                    hostname: format!("pi-{i}"),
                    labels: BTreeMap::new(),
                    engine: BTreeMap::new(),
                    ready: true,
                    availability: Availability::Active,
                })
                .collect(),
            now: 1_000,
            broken: BTreeSet::new(),
            rounds: 0,
        }
    }

    fn infos(&self) -> Vec<NodeInfo<'_>> {
        self.nodes
            .iter()
            .map(|n| NodeInfo {
                facts: NodeFacts {
                    id: n.id,
                    hostname: &n.hostname,
                    role: NodeRole::Worker,
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

    fn create(&mut self, spec: ServiceSpec) -> ServiceId {
        let id = ServiceId(self.store.services.len() as u64 + 1);
        self.store
            .apply(&ServiceCommand::Create {
                id,
                spec,
                at_ms: self.now,
            })
            .unwrap();
        id
    }

    fn update(&mut self, id: ServiceId, f: impl FnOnce(&mut ServiceSpec)) {
        let mut spec = self.store.services[&id].spec.clone();
        f(&mut spec);
        self.store
            .apply(&ServiceCommand::Update {
                id,
                spec,
                at_ms: self.now,
                rollback: false,
            })
            .unwrap();
    }

    /// One orchestrator round, applied.
    fn round(&mut self) -> Round {
        let r = reconcile(&self.store, &self.infos(), self.now);
        self.store
            .apply(&ServiceCommand::Tasks {
                at_ms: self.now,
                ops: r.ops.clone(),
            })
            .unwrap();
        self.rounds += 1;
        r
    }

    /// Agents of live nodes do what their tasks' desired states say, at once.
    fn agents(&mut self) {
        let mut by_node: BTreeMap<NodeId, Vec<TaskReport>> = BTreeMap::new();
        for t in self.store.tasks.values() {
            let Some(n) = t.node else { continue };
            if !self.nodes.iter().any(|x| x.id == n && x.ready) {
                continue;
            }
            let image = self
                .store
                .services
                .get(&t.service)
                .and_then(|s| s.template(t.version))
                .map(|tpl| tpl.image.clone())
                .unwrap_or_default();
            let next = if t.desired > TaskState::Running {
                (!t.state.is_terminal()).then_some(TaskState::Shutdown)
            } else if t.state < TaskState::Running && t.state >= TaskState::Assigned {
                Some(match self.broken.contains(&image) {
                    true => TaskState::Rejected,
                    false => TaskState::Running,
                })
            } else {
                None
            };
            if let Some(state) = next {
                by_node.entry(n).or_default().push(TaskReport {
                    task: t.id,
                    state,
                    message: String::new(),
                    error: String::new(),
                });
            }
        }
        for (node, reports) in by_node {
            self.store
                .apply(&ServiceCommand::Report {
                    node,
                    at_ms: self.now,
                    reports,
                })
                .unwrap();
        }
    }

    /// Rounds and agent turns, 100 ms apart, until nothing changes for 10 s.
    fn settle(&mut self) {
        self.settle_watching(|_| {});
    }

    fn settle_watching(&mut self, mut watch: impl FnMut(&World)) {
        let mut quiet = 0;
        for _ in 0..10_000 {
            let before = self.store.clone();
            self.round();
            self.agents();
            watch(self);
            self.now += 100;
            if self.store == before {
                quiet += 1;
                if quiet >= 100 {
                    return;
                }
            } else {
                quiet = 0;
            }
        }
        panic!("no convergence");
    }

    /// Rounds and agent turns, 100 ms apart, for `ms`.
    fn run_for(&mut self, ms: u64) {
        for _ in 0..ms / 100 {
            self.round();
            self.agents();
            self.now += 100;
        }
    }

    fn running(&self, svc: ServiceId) -> Vec<&Task> {
        self.store
            .tasks
            .values()
            .filter(|t| {
                t.service == svc
                    && t.desired == TaskState::Running
                    && t.state == TaskState::Running
                    && self.nodes.iter().any(|n| Some(n.id) == t.node && n.ready)
            })
            .collect()
    }

    fn nodes_of(&self, svc: ServiceId) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self.running(svc).iter().filter_map(|t| t.node).collect();
        v.sort();
        v
    }
}

fn replicated(name: &str, n: u64) -> ServiceSpec {
    let mut s = ServiceSpec::new(name, "busybox");
    s.mode = Mode::Replicated { replicas: n };
    s
}

#[test]
fn replicas_spread_and_move_off_a_dead_node_at_once() {
    let mut w = World::new(3);
    let svc = w.create(replicated("web", 3));
    let r = w.round();
    assert_eq!(r.ops.len(), 3, "three tasks made and placed in one round");
    w.settle();
    assert_eq!(w.nodes_of(svc), vec![NodeId(1), NodeId(2), NodeId(3)]);
    let before = w.store.tasks.len();
    w.nodes[1].ready = false;
    w.round();
    assert_eq!(
        w.store.tasks.len(),
        before + 1,
        "replaced in the same round"
    );
    w.agents();
    assert_eq!(w.running(svc).len(), 3);
    assert!(w.running(svc).iter().all(|t| t.node != Some(NodeId(2))));
    // Its slot keeps its number.
    let slots: BTreeSet<u64> = w.running(svc).iter().map(|t| t.slot).collect();
    assert_eq!(slots, BTreeSet::from([1, 2, 3]));
    // The node comes back: its old task is told to stop, nothing is doubled.
    w.nodes[1].ready = true;
    w.settle();
    assert_eq!(w.running(svc).len(), 3);
    let old = w
        .store
        .tasks
        .values()
        .find(|t| t.node == Some(NodeId(2)) && t.service == svc)
        .unwrap();
    assert_eq!(old.state, TaskState::Shutdown);
}

#[test]
fn a_failed_task_restarts_after_the_delay() {
    let mut w = World::new(2);
    let svc = w.create(replicated("web", 1));
    w.settle();
    let t = w.running(svc)[0].clone();
    w.store
        .apply(&ServiceCommand::Report {
            node: t.node.unwrap(),
            at_ms: w.now,
            reports: vec![TaskReport {
                task: t.id,
                state: TaskState::Failed,
                message: "exit 1".into(),
                error: "task: non-zero exit (1)".into(),
            }],
        })
        .unwrap();
    let r = w.round();
    assert_eq!(r.wake_ms, Some(w.now + 5_000), "restart delay: 5 s");
    assert_eq!(w.store.tasks.len(), 1);
    w.now += 4_900;
    w.round();
    assert_eq!(w.store.tasks.len(), 1);
    w.now += 100;
    w.round();
    assert_eq!(w.store.tasks.len(), 2, "replaced once the delay is over");
    w.settle();
    assert_eq!(w.running(svc).len(), 1);
}

#[test]
fn history_is_kept_to_five_per_slot() {
    let mut w = World::new(1);
    let mut spec = replicated("web", 1);
    spec.task.restart.delay_ms = 0;
    let svc = w.create(spec);
    for _ in 0..12 {
        w.settle();
        let t = w.running(svc)[0].clone();
        w.store
            .apply(&ServiceCommand::Report {
                node: t.node.unwrap(),
                at_ms: w.now,
                reports: vec![TaskReport {
                    task: t.id,
                    state: TaskState::Failed,
                    message: String::new(),
                    error: String::new(),
                }],
            })
            .unwrap();
    }
    w.settle();
    assert_eq!(w.store.tasks.len(), TASK_HISTORY + 1);
}

#[test]
fn scale_down_removes_the_highest_slots_and_scale_up_adds() {
    let mut w = World::new(3);
    let svc = w.create(replicated("web", 6));
    w.settle();
    assert_eq!(w.running(svc).len(), 6);
    w.update(svc, |s| s.mode = Mode::Replicated { replicas: 2 });
    w.settle();
    let slots: BTreeSet<u64> = w.running(svc).iter().map(|t| t.slot).collect();
    assert_eq!(slots, BTreeSet::from([1, 2]));
    assert_eq!(
        w.store.tasks.len(),
        2,
        "removed tasks are deleted once stopped"
    );
    w.update(svc, |s| s.mode = Mode::Replicated { replicas: 4 });
    w.settle();
    assert_eq!(w.running(svc).len(), 4);
}

#[test]
fn global_runs_one_per_eligible_node_and_drain_stops_it() {
    let mut w = World::new(3);
    w.nodes[2].labels.insert("zone".into(), "attic".into());
    let mut spec = ServiceSpec::new("agent", "busybox");
    spec.mode = Mode::Global;
    spec.task.placement.constraints = vec![Constraint::parse("node.labels.zone!=attic").unwrap()];
    let svc = w.create(spec);
    w.settle();
    assert_eq!(w.nodes_of(svc), vec![NodeId(1), NodeId(2)]);
    w.nodes[0].availability = Availability::Drain;
    w.settle();
    assert_eq!(w.nodes_of(svc), vec![NodeId(2)]);
    // A Down node keeps its global task: it runs again when the node is back.
    w.nodes[1].ready = false;
    w.settle();
    w.nodes[1].ready = true;
    w.nodes[0].availability = Availability::Active;
    w.nodes[2].labels.clear();
    w.settle();
    assert_eq!(w.nodes_of(svc), vec![NodeId(1), NodeId(2), NodeId(3)]);
    let live = w.store.tasks.values().filter(|t| t.is_live()).count();
    assert_eq!(live, 3, "nothing doubled");
}

#[test]
fn no_eligible_node_keeps_tasks_pending_with_the_reason() {
    let mut w = World::new(2);
    let mut spec = replicated("db", 2);
    spec.task.placement.constraints = vec![Constraint::parse("node.labels.disk==ssd").unwrap()];
    let svc = w.create(spec);
    w.settle();
    let msgs: Vec<&str> = w.store.tasks.values().map(|t| t.message.as_str()).collect();
    assert_eq!(
        msgs,
        vec!["no suitable node (scheduling constraints not satisfied on 2 nodes)"; 2]
    );
    assert!(w
        .store
        .tasks
        .values()
        .all(|t| t.state == TaskState::Pending));
    w.nodes[1].labels.insert("disk".into(), "ssd".into());
    w.settle();
    assert_eq!(w.nodes_of(svc), vec![NodeId(2), NodeId(2)]);
    // A label change that breaks the constraint moves nothing it cannot place.
    w.update(svc, |s| s.task.placement.max_replicas = 1);
    w.settle();
    assert_eq!(w.nodes_of(svc), vec![NodeId(2)]);
}

#[test]
fn drain_of_a_start_first_service_starts_the_replacements_before_stopping() {
    for order in [UpdateOrder::StopFirst, UpdateOrder::StartFirst] {
        let mut w = World::new(3);
        let mut spec = replicated("web", 3);
        spec.update.order = order;
        let svc = w.create(spec);
        w.settle();
        w.nodes[0].availability = Availability::Drain;
        // Tasks whose containers run (whatever is desired of them), at every step.
        let mut fewest = u64::MAX;
        w.settle_watching(|w| {
            let up = w
                .store
                .tasks
                .values()
                .filter(|t| t.service == svc && t.state == TaskState::Running)
                .count() as u64;
            fewest = fewest.min(up);
        });
        assert!(!w.nodes_of(svc).contains(&NodeId(1)), "{order:?}");
        assert_eq!(w.running(svc).len(), 3, "{order:?}");
        let want = match order {
            UpdateOrder::StopFirst => 2,
            UpdateOrder::StartFirst => 3,
        };
        assert_eq!(fewest, want, "{order:?}");
    }
}

#[test]
fn a_start_first_replacement_on_a_node_drained_under_it_leaves_while_the_update_waits() {
    // Seed 4087: slot 1's old task on a paused node, its start-first replacement on a
    // node drained before the old task stopped, and the update's one worker held by
    // slot 2, whose replacement no node can take. The replacement ran on the drained
    // node for good: only the slot's oldest task was looked at.
    let mut w = World::new(3);
    let mut spec = replicated("web", 2);
    spec.update.order = UpdateOrder::StartFirst;
    spec.task.placement.max_replicas = 1;
    let svc = w.create(spec);
    w.settle();
    let slot_node = |w: &World, slot: u64| {
        w.store
            .tasks
            .values()
            .find(|t| t.service == svc && t.slot == slot && t.is_live())
            .and_then(|t| t.node)
            .unwrap()
    };
    let (a, b) = (slot_node(&w, 1), slot_node(&w, 2));
    let c = w
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|n| *n != a && *n != b)
        .unwrap();
    let set = |w: &mut World, n: NodeId, av: Availability| {
        w.nodes.iter_mut().find(|x| x.id == n).unwrap().availability = av;
    };
    set(&mut w, a, Availability::Pause);
    w.update(svc, |s| s.task.image = "busybox:2".into());
    w.round();
    let new = w
        .store
        .tasks
        .values()
        .find(|t| t.service == svc && t.version == 2)
        .unwrap();
    assert_eq!(
        (new.slot, new.node),
        (1, Some(c)),
        "slot 1's replacement went to the free node"
    );
    set(&mut w, b, Availability::Drain);
    set(&mut w, c, Availability::Drain);
    w.settle();
    let on = |w: &World, n: NodeId| {
        w.store
            .tasks
            .values()
            .filter(|t| t.node == Some(n) && t.desired <= TaskState::Running)
            .count()
    };
    assert_eq!((on(&w, b), on(&w, c)), (0, 0), "drained nodes keep nothing");
    let running = w.running(svc);
    assert_eq!(running.len(), 1);
    assert_eq!(
        (running[0].node, running[0].version),
        (Some(a), 1),
        "the old task serves"
    );
}

#[test]
fn updates_while_no_node_has_room_keep_one_pending_task_per_slot() {
    // Found by the control-plane simulation: each update made a new pending task per
    // slot and kept the older ones, which run nothing, desired running.
    let mut w = World::new(2);
    for n in &mut w.nodes {
        n.availability = Availability::Drain;
    }
    let mut spec = replicated("web", 2);
    spec.update.order = UpdateOrder::StartFirst;
    let svc = w.create(spec);
    w.settle();
    for image in ["busybox:2", "busybox:3"] {
        w.update(svc, |s| s.task.image = image.into());
        w.settle();
    }
    let live: Vec<(u64, u64)> = w
        .store
        .tasks
        .values()
        .filter(|t| t.is_live())
        .map(|t| (t.slot, t.version))
        .collect();
    let mut live = live;
    live.sort();
    assert_eq!(
        live,
        vec![(1, 3), (2, 3)],
        "one pending task per slot, the newest"
    );
    let s = &w.store.services[&svc];
    assert_eq!(
        s.update.as_ref().map(|u| u.state),
        Some(UpdateState::Completed),
        "nothing left the update can do"
    );
    for n in &mut w.nodes {
        n.availability = Availability::Active;
    }
    w.settle();
    assert_eq!(w.running(svc).len(), 2);
}

#[test]
fn a_rolling_update_keeps_parallelism() {
    for order in [UpdateOrder::StopFirst, UpdateOrder::StartFirst] {
        let mut w = World::new(3);
        let mut spec = replicated("web", 6);
        spec.update.parallelism = 2;
        spec.update.delay_ms = 1_000;
        spec.update.order = order;
        let svc = w.create(spec);
        w.settle();
        w.update(svc, |s| s.task.image = "busybox:2".into());
        let mut most_new_unready = 0;
        let mut least_running = 6;
        w.settle_watching(|w| {
            let v = w.store.services[&svc].version;
            let unready = w
                .store
                .tasks
                .values()
                .filter(|t| t.version == v && t.is_live() && t.state < TaskState::Running)
                .count();
            most_new_unready = most_new_unready.max(unready);
            least_running = least_running.min(w.running(svc).len());
        });
        assert!(
            most_new_unready <= 2,
            "{order:?}: {most_new_unready} starting at once"
        );
        match order {
            UpdateOrder::StopFirst => assert!(least_running >= 4, "{least_running}"),
            UpdateOrder::StartFirst => assert_eq!(least_running, 6),
        }
        let s = &w.store.services[&svc];
        assert_eq!(s.update.as_ref().unwrap().state, UpdateState::Completed);
        let images: BTreeSet<u64> = w.running(svc).iter().map(|t| t.version).collect();
        assert_eq!(images, BTreeSet::from([2]));
        assert_eq!(w.running(svc).len(), 6);
    }
}

/// Three replicas of `busybox` running, then updated to an image that cannot start,
/// with this failure action.
fn update_to_a_broken_image(action: FailureAction) -> (World, ServiceId) {
    let mut w = World::new(3);
    let mut spec = replicated("web", 3);
    spec.update.failure_action = action;
    let svc = w.create(spec);
    w.settle();
    w.broken.insert("busybox:nope".into());
    w.update(svc, |s| s.task.image = "busybox:nope".into());
    (w, svc)
}

#[test]
fn a_failed_update_rolls_back_to_the_old_image() {
    // Also with a scale during the update: found by the orchestrator simulation, a
    // scale replaced the previous spec with the new one, so the automatic rollback had
    // nowhere to go and the update stayed in progress for good.
    for scale in [false, true] {
        let (mut w, svc) = update_to_a_broken_image(FailureAction::Rollback);
        if scale {
            w.update(svc, |s| s.mode = Mode::Replicated { replicas: 4 });
        }
        w.settle();
        let s = &w.store.services[&svc];
        assert_eq!(
            s.update.as_ref().unwrap().state,
            UpdateState::RollbackCompleted,
            "scale {scale}"
        );
        assert_eq!(s.spec.task.image, "busybox");
        assert_eq!(w.running(svc).len(), 3);
        for t in w.running(svc) {
            assert_eq!(s.template(t.version).unwrap().image, "busybox");
        }
    }
}

#[test]
fn a_failed_update_pauses_by_default() {
    assert_eq!(
        replicated("web", 3).update.failure_action,
        FailureAction::Pause,
        "the default"
    );
    let (mut w, svc) = update_to_a_broken_image(FailureAction::Pause);
    // The failed slot is retried every 5 s (the restart policy still holds).
    w.run_for(30_000);
    let s = &w.store.services[&svc];
    let u = s.update.as_ref().unwrap();
    assert_eq!(u.state, UpdateState::Paused);
    assert!(
        u.message.starts_with("update paused due to failure"),
        "{}",
        u.message
    );
    // Two old tasks still run; the failed slot keeps being retried.
    let old_running = w.running(svc).iter().filter(|t| t.version == 1).count();
    assert_eq!(old_running, 2);
}

#[test]
fn a_failed_update_with_continue_goes_on_and_completes() {
    let (mut w, svc) = update_to_a_broken_image(FailureAction::Continue);
    w.run_for(30_000);
    let s = &w.store.services[&svc];
    let u = s.update.as_ref().unwrap();
    assert_eq!(u.state, UpdateState::Completed, "{}", u.message);
    // Every slot was tried; none runs the old image, and the restart policy still
    // retries the new one.
    assert!(w.running(svc).iter().all(|t| t.version == 2));
    let tried: BTreeSet<u64> = w
        .store
        .tasks
        .values()
        .filter(|t| t.version == 2 && t.state == TaskState::Rejected)
        .map(|t| t.slot)
        .collect();
    assert_eq!(tried, BTreeSet::from([1, 2, 3]));
}

/// Four replicas, updated start-first (with `edit` to the spec) to an image that
/// never runs; 30 s later, whether the update completed.
fn start_first_update_to_a_broken_image(edit: impl FnOnce(&mut ServiceSpec)) -> (World, ServiceId) {
    let mut w = World::new(3);
    let mut spec = replicated("web", 4);
    spec.update.order = UpdateOrder::StartFirst;
    edit(&mut spec);
    let svc = w.create(spec);
    w.settle();
    w.broken.insert("busybox:nope".into());
    w.update(svc, |s| s.task.image = "busybox:nope".into());
    w.run_for(30_000);
    let u = w.store.services[&svc].update.clone().unwrap();
    assert_eq!(u.state, UpdateState::Completed, "{}", u.message);
    (w, svc)
}

#[test]
fn a_failed_start_first_update_with_continue_keeps_the_old_tasks_and_completes() {
    let (w, svc) =
        start_first_update_to_a_broken_image(|s| s.update.failure_action = FailureAction::Continue);
    // Start-first never took a replica down: the old task runs on in every slot.
    let old: BTreeSet<u64> = w
        .running(svc)
        .iter()
        .filter(|t| t.version == 1)
        .map(|t| t.slot)
        .collect();
    assert_eq!(old, BTreeSet::from([1, 2, 3, 4]));
    // Each slot's new task was tried, and its retries keep to the restart policy's
    // delay (5 s) rather than being made again each round.
    for slot in 1..=4 {
        let mut made: Vec<u64> = w
            .store
            .tasks
            .values()
            .filter(|t| t.version == 2 && t.slot == slot)
            .map(|t| t.created_ms)
            .collect();
        made.sort();
        assert!(!made.is_empty(), "slot {slot} never tried");
        for pair in made.windows(2) {
            assert!(
                pair[1] - pair[0] >= 5_000,
                "slot {slot} retried at {made:?}"
            );
        }
    }
}

#[test]
fn a_failure_within_the_ratio_is_borne_and_the_update_completes() {
    // Every new task fails, but a ratio of 1 bears them all; no restarts, so each slot
    // is tried once, and start-first keeps the old tasks running.
    let (w, svc) = start_first_update_to_a_broken_image(|s| {
        s.update.max_failure_ppm = 1_000_000;
        s.task.restart.condition = RestartCondition::None;
    });
    let old = w.running(svc).iter().filter(|t| t.version == 1).count();
    assert_eq!(old, 4);
    for slot in 1..=4 {
        let tries = w
            .store
            .tasks
            .values()
            .filter(|t| t.version == 2 && t.slot == slot)
            .count();
        assert_eq!(tries, 1, "slot {slot}");
    }
}

#[test]
fn removing_a_service_removes_its_tasks() {
    let mut w = World::new(2);
    let svc = w.create(replicated("web", 3));
    w.settle();
    w.store.apply(&ServiceCommand::Remove(svc)).unwrap();
    w.settle();
    assert!(w.store.tasks.is_empty());
}

#[test]
fn a_job_runs_to_completion_within_its_concurrency() {
    let mut w = World::new(2);
    let mut spec = ServiceSpec::new("batch", "busybox");
    spec.mode = Mode::ReplicatedJob {
        max_concurrent: 2,
        total: 5,
    };
    let svc = w.create(spec);
    let mut most = 0;
    for _ in 0..50 {
        w.round();
        let live = w.store.tasks.values().filter(|t| t.is_live()).count();
        most = most.max(live);
        // Agents: everything running completes.
        w.agents();
        let done: Vec<(NodeId, TaskReport)> = w
            .store
            .tasks
            .values()
            .filter(|t| t.state == TaskState::Running)
            .map(|t| {
                (
                    t.node.unwrap(),
                    TaskReport {
                        task: t.id,
                        state: TaskState::Complete,
                        message: String::new(),
                        error: String::new(),
                    },
                )
            })
            .collect();
        for (node, r) in done {
            w.store
                .apply(&ServiceCommand::Report {
                    node,
                    at_ms: w.now,
                    reports: vec![r],
                })
                .unwrap();
        }
        w.now += 100;
    }
    assert_eq!(most, 2);
    let complete = w
        .store
        .tasks
        .values()
        .filter(|t| t.service == svc && t.state == TaskState::Complete)
        .count();
    assert_eq!(complete, 5);
}

#[test]
fn outdated_tasks_running_side_by_side_keep_only_the_newest() {
    // Seed 9066: a start-first replacement came up just as the next update overtook
    // it, on a node then paused: the slot's old and new outdated tasks both ran, for
    // good, while the next update's replacement could find no node.
    let mut w = World::new(1);
    let mut spec = replicated("web", 1);
    spec.update.order = UpdateOrder::StartFirst;
    let svc = w.create(spec);
    w.settle();
    w.update(svc, |s| s.task.image = "busybox:2".into());
    w.round();
    w.agents();
    assert_eq!(w.running(svc).len(), 2, "the start-first pair runs");
    for n in &mut w.nodes {
        n.availability = Availability::Pause;
    }
    w.update(svc, |s| s.task.image = "busybox:3".into());
    w.settle();
    let running = w.running(svc);
    assert_eq!(running.len(), 1, "{running:#?}");
    assert_eq!(running[0].version, 2, "the newer outdated task serves");
}

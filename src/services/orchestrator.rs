//! The orchestrator: desired against actual. Pure: the store, the nodes and the time in,
//! task decisions out (one [`TaskOp`] list the leader proposes as one entry), plus when
//! to look again. The leader runs a round whenever the state changed or the wake time
//! came, with at most one round in flight, so a round always sees what the last one did.
//!
//! Each slot (a replica's number, or a node for a global service) is worked out alone:
//!
//! - a task whose node is Down (or gone) is replaced at once, with no restart delay: a
//!   dead node is not a crash loop. A global task stays with its node, Down or not.
//! - a task on a drained node, or one whose node no longer meets the constraints, is
//!   retired: stop-first stops it and replaces it once stopped; start-first starts the
//!   replacement and stops the old task once the new one runs.
//! - a task that ended by itself is replaced after the restart delay, as the restart
//!   condition and attempts allow; a job's slot is done once a task of it completed.
//! - replicas beyond the count are removed; history beyond 5 tasks a slot is deleted.
//! - during a rolling update (or rollback), outdated tasks are retired as above, at most
//!   `parallelism` slots at once, each slot's worker resting `delay` after its new task
//!   runs; a new task that ends within `monitor` of running (or never runs) is a
//!   failure, and failures beyond the ratio pause, roll back or are ignored.
//!
//! New and still pending tasks are placed by the [`Scheduler`].

use std::collections::BTreeMap;

use super::constraint::NodeFacts;
use super::scheduler::{Candidate, Group, Resources, Scheduler};
use super::spec::{FailureAction, Mode, RestartCondition, ServiceSpec, UpdateConfig, UpdateOrder};
use super::store::{Service, Store, Task, TaskId, TaskOp, UpdateState, UpdateStatus};
use super::task::TaskState;
use super::ServiceId;
use crate::model::node::Availability;
use crate::raft::NodeId;

/// Ended tasks kept per slot (swarmkit's task history limit).
pub const TASK_HISTORY: usize = 5;

/// A node as the orchestrator sees it.
#[derive(Clone, Debug)]
pub struct NodeInfo<'a> {
    pub facts: NodeFacts<'a>,
    /// Status Ready (gossip has it alive).
    pub ready: bool,
    pub availability: Availability,
    pub capacity: Resources,
}

/// What a round decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Round {
    pub ops: Vec<TaskOp>,
    /// When a delay ends (a restart, an update's rest): run a round then.
    pub wake_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Slot {
    Replica(u64),
    Node(NodeId),
}

fn slot_of(t: &Task) -> Slot {
    match (t.slot, t.node) {
        (0, Some(n)) => Slot::Node(n),
        (s, _) => Slot::Replica(s),
    }
}

/// A replacement waiting for a node.
struct ToPlace {
    /// An existing pending task, or a new one for this slot.
    task: Option<TaskId>,
    slot: u64,
}

struct Planner<'s, 'n> {
    store: &'s Store,
    nodes: BTreeMap<NodeId, &'n NodeInfo<'n>>,
    now: u64,
    ops: Vec<TaskOp>,
    made: u64,
    wake: Option<u64>,
}

/// One orchestration round.
pub fn reconcile(store: &Store, nodes: &[NodeInfo<'_>], now_ms: u64) -> Round {
    let mut p = Planner {
        store,
        nodes: nodes.iter().map(|n| (n.facts.id, n)).collect(),
        now: now_ms,
        ops: Vec::new(),
        made: 0,
        wake: None,
    };
    let mut sched = Scheduler::new(nodes.iter().map(|n| Candidate {
        facts: n.facts.clone(),
        available: n.ready && n.availability == Availability::Active,
        capacity: n.capacity,
    }));
    let mut by_service: BTreeMap<ServiceId, Vec<&Task>> = BTreeMap::new();
    for t in store.tasks.values() {
        match store.services.get(&t.service) {
            Some(_) => by_service.entry(t.service).or_default().push(t),
            None => p.removed(t),
        }
    }
    // Load first, so every service's placements see every other's tasks.
    for t in store.tasks.values().filter(|t| t.is_live()) {
        if let (Some(n), Some(s)) = (t.node, store.services.get(&t.service)) {
            sched.add_task(n, t.service, s.spec.task.reserve);
        }
    }
    for (id, svc) in &store.services {
        let mut tasks = by_service.remove(id).unwrap_or_default();
        tasks.sort_by_key(|t| t.seq);
        p.service(svc, &tasks, &mut sched);
    }
    Round {
        ops: p.ops,
        wake_ms: p.wake,
    }
}

impl<'s, 'n> Planner<'s, 'n> {
    fn node(&self, id: Option<NodeId>) -> Option<&'n NodeInfo<'n>> {
        id.and_then(|id| self.nodes.get(&id).copied())
    }

    /// The node is there and alive: a task on it will report.
    fn node_up(&self, id: Option<NodeId>) -> bool {
        self.node(id).is_some_and(|n| n.ready)
    }

    fn desire(&mut self, t: &Task, desired: TaskState) {
        if desired > t.desired {
            self.ops.push(TaskOp::Desire {
                task: t.id,
                desired,
            });
            // No node will ever report on a task that never got one: it ends here.
            if t.node.is_none() && !t.state.is_terminal() {
                self.ops.push(TaskOp::Observe {
                    task: t.id,
                    state: TaskState::Shutdown,
                    message: "shut down before it was placed".into(),
                });
            }
        }
    }

    fn wake_at(&mut self, at: u64) {
        self.wake = Some(self.wake.map_or(at, |w| w.min(at)));
    }

    /// A task whose service is gone (its desired state is already Remove).
    fn removed(&mut self, t: &Task) {
        if t.state.is_terminal() || !self.node_up(t.node) {
            self.ops.push(TaskOp::Delete(t.id));
        }
    }

    fn service(&mut self, svc: &Service, tasks: &[&Task], sched: &mut Scheduler<'_>) {
        // Tasks of a node that left the cluster will never report: say so.
        for t in tasks {
            if t.node.is_some() && self.node(t.node).is_none() && !t.state.is_terminal() {
                self.ops.push(TaskOp::Observe {
                    task: t.id,
                    state: TaskState::Orphaned,
                    message: "the node left the swarm".into(),
                });
                self.desire(t, TaskState::Shutdown);
            }
        }
        let mut slots: BTreeMap<Slot, Vec<&Task>> = BTreeMap::new();
        for t in tasks {
            slots.entry(slot_of(t)).or_default().push(t);
        }
        let spec = &svc.spec;
        let global = matches!(spec.mode, Mode::Global | Mode::GlobalJob);
        // The slots the service should have.
        let wanted: Vec<Slot> = match &spec.mode {
            Mode::Replicated { replicas } => (1..=*replicas).map(Slot::Replica).collect(),
            Mode::ReplicatedJob { total, .. } => (1..=*total).map(Slot::Replica).collect(),
            Mode::Global | Mode::GlobalJob => {
                let mut v: Vec<Slot> = self
                    .nodes
                    .values()
                    .filter(|n| {
                        self.may_take(n, spec) || slots.contains_key(&Slot::Node(n.facts.id))
                    })
                    .map(|n| Slot::Node(n.facts.id))
                    .collect();
                v.sort();
                v
            }
        };
        // Slots no longer wanted: replicas beyond the count, nodes that left.
        for (slot, ts) in &slots {
            // (`wanted` is sorted: a global service on 1,000 nodes would otherwise cost
            // a million comparisons a round.)
            if wanted.binary_search(slot).is_err() {
                for t in ts {
                    self.retire_for_good(t);
                }
            }
        }
        let update = self.update_budget(svc, tasks);
        let mut budget = update.free;
        let mut to_place: Vec<ToPlace> = Vec::new();
        let mut live_jobs = tasks.iter().filter(|t| t.is_live()).count() as u64;
        // Slots with nothing live on a live node go first: refilling one the update
        // emptied takes a worker whatever happens, so it must count before other slots
        // spend the budget on taking more replicas down.
        // (One look at each slot, keeping slot order within each part.)
        let (mut order, held): (Vec<Slot>, Vec<Slot>) = wanted.iter().partition(|s| {
            !slots
                .get(s)
                .is_some_and(|ts| ts.iter().any(|t| t.is_live() && self.node_up(t.node)))
        });
        order.extend(held);
        for slot in &order {
            let ts: &[&Task] = slots.get(slot).map_or(&[], |v| v.as_slice());
            self.history(ts);
            let mut outcome = self.slot(svc, *slot, ts, &mut budget);
            if let Mode::ReplicatedJob { max_concurrent, .. } = spec.mode {
                if matches!(outcome, SlotNeeds::New { pending: None }) {
                    if live_jobs >= max_concurrent {
                        outcome = SlotNeeds::Nothing;
                    } else {
                        live_jobs += 1;
                    }
                }
            }
            match (outcome, slot) {
                (SlotNeeds::Nothing, _) => {}
                (SlotNeeds::New { pending }, Slot::Replica(n)) => to_place.push(ToPlace {
                    task: pending,
                    slot: *n,
                }),
                (SlotNeeds::New { pending }, Slot::Node(node)) => {
                    self.place_on(svc, *node, pending, sched);
                }
            }
        }
        if !global && !to_place.is_empty() {
            to_place.sort_by_key(|w| w.slot);
            self.place(svc, to_place, sched);
        }
        // Slots an update must see running its new version before it is complete.
        let required: Vec<Slot> = wanted
            .iter()
            .filter(|s| match s {
                Slot::Replica(_) => true,
                Slot::Node(n) => self.node(Some(*n)).is_some_and(|n| self.may_take(n, spec)),
            })
            .copied()
            .collect();
        self.update_progress(svc, tasks, &update, &required);
    }

    /// Whether a node may be given a new task of this service.
    fn may_take(&self, n: &NodeInfo<'_>, spec: &ServiceSpec) -> bool {
        n.ready
            && n.availability == Availability::Active
            && spec
                .task
                .placement
                .constraints
                .iter()
                .all(|c| c.matches(&n.facts))
    }

    /// Whether a task may stay on its node (a paused node keeps its tasks).
    fn may_stay(&self, t: &Task, spec: &ServiceSpec) -> bool {
        match self.node(t.node) {
            None => t.node.is_none(),
            Some(n) => {
                n.availability != Availability::Drain
                    && spec
                        .task
                        .placement
                        .constraints
                        .iter()
                        .all(|c| c.matches(&n.facts))
            }
        }
    }

    fn retire_for_good(&mut self, t: &Task) {
        if t.state.is_terminal() || !self.node_up(t.node) {
            self.ops.push(TaskOp::Delete(t.id));
        } else {
            self.desire(t, TaskState::Remove);
        }
    }

    /// Ended tasks beyond the history limit go (oldest first).
    fn history(&mut self, ts: &[&Task]) {
        let ended: Vec<&&Task> = ts
            .iter()
            .filter(|t| !t.is_live() && (t.state.is_terminal() || !self.node_up(t.node)))
            .collect();
        if ended.len() > TASK_HISTORY {
            for t in &ended[..ended.len() - TASK_HISTORY] {
                self.ops.push(TaskOp::Delete(t.id));
            }
        }
    }

    /// Works out one slot (tasks oldest first); says whether it needs a new task.
    fn slot(&mut self, svc: &Service, slot: Slot, ts: &[&Task], budget: &mut u64) -> SlotNeeds {
        let spec = &svc.spec;
        let global = matches!(slot, Slot::Node(_));
        // A task that ended by itself while desired running becomes history.
        for t in ts {
            if t.desired <= TaskState::Running && t.state.is_terminal() {
                self.desire(t, TaskState::Shutdown);
            }
        }
        let mut live: Vec<&Task> = Vec::new();
        for t in ts.iter().filter(|t| t.is_live()) {
            // A replica on a dead node is replaced now; a global task waits for its node.
            let lost = t.node.is_some() && !self.node_up(t.node);
            let gone = t.node.is_some() && self.node(t.node).is_none();
            if (lost && !global) || gone {
                self.desire(t, TaskState::Shutdown);
            } else {
                live.push(t);
            }
        }
        // Outdated tasks running side by side (a start-first replacement that came up
        // just as the next update overtook it): the newest running one that may stay
        // serves the slot, and the older ones go, whatever the update does next. Left
        // alone both ran for good on a paused node while the next update waited on
        // another slot (seed 9066).
        let serving = live
            .iter()
            .filter(|t| t.state == TaskState::Running && self.may_stay(t, spec))
            .map(|t| t.seq)
            .max();
        if let Some(newest) = serving {
            for t in live.iter().filter(|t| t.seq < newest) {
                self.desire(t, TaskState::Shutdown);
            }
            live.retain(|t| t.seq >= newest);
        }
        // Stopping on a live node: a stop-first replacement waits for it.
        let stopping = ts.iter().any(|t| {
            t.desired > TaskState::Running && !t.state.is_terminal() && self.node_up(t.node)
        });
        let fresh_ok =
            |p: &Planner<'_, '_>, t: &Task| t.version == svc.version && p.may_stay(t, spec);
        let order = self.update_config(svc).order;
        if let Some(best) = live
            .iter()
            .filter(|t| fresh_ok(self, t))
            .max_by_key(|t| (t.state == TaskState::Running, t.seq))
            .copied()
        {
            // The rest are being replaced (start-first) or doubled: they go once the
            // good one runs.
            let others: Vec<&Task> = live.iter().filter(|t| t.id != best.id).copied().collect();
            // A start-first replacement that already failed once stops the wait for
            // tasks that must leave their node (drain, constraints): the node is emptied.
            let replacement_failed = ts.iter().any(|t| {
                t.version == svc.version
                    && matches!(
                        t.state,
                        TaskState::Failed | TaskState::Rejected | TaskState::Complete
                    )
            });
            // A start-first replacement no node can take (the old tasks hold the room:
            // --replicas-max-per-node, reservations) falls back to stop-first rather
            // than waiting forever, where stopping the old task frees a node that may
            // take the new one (not on a paused node: that would only lose a replica).
            // A task that must leave its node (drain, constraints) goes too: waiting
            // for a replacement that cannot start would keep it there for good.
            let unplaceable = best.node.is_none() && best.state == TaskState::Pending;
            for t in others {
                let frees_room =
                    unplaceable && self.node(t.node).is_some_and(|n| self.may_take(n, spec));
                // An old task still waiting for a node runs nothing: it goes at once.
                let go = best.state == TaskState::Running
                    || t.node.is_none()
                    || order == UpdateOrder::StopFirst
                    || frees_room
                    || ((replacement_failed || unplaceable) && !self.may_stay(t, spec));
                if go {
                    self.desire(t, TaskState::Shutdown);
                }
            }
            let pending = best.state <= TaskState::Pending;
            return match pending {
                true => SlotNeeds::New {
                    pending: Some(best.id),
                },
                false => SlotNeeds::Nothing,
            };
        }
        if let Some(old) = live.first().copied() {
            // A later task that must leave its node goes now, while `old` serves: a
            // start-first replacement whose node was drained (or lost the constraints)
            // before the old task stopped. Left alone it would run there for good, as
            // the update's worker stays with this slot (seed 4087).
            for t in live.iter().skip(1) {
                if !self.may_stay(t, spec) {
                    self.desire(t, TaskState::Shutdown);
                }
            }
            // Live, but outdated or on a node it may not stay on.
            let unwanted = !self.may_stay(old, spec);
            // A global task on a node that takes nothing new (paused, or Down) keeps
            // running outdated: its replacement could not start there. It is updated
            // once the node takes tasks again. Of several (an update overtaken by the
            // next), the one running, or else the newest, is kept.
            if global && !unwanted && !self.node(old.node).is_some_and(|n| self.may_take(n, spec)) {
                let keep = live
                    .iter()
                    .max_by_key(|t| (t.state == TaskState::Running, t.seq))
                    .map(|t| t.id);
                for t in &live {
                    if Some(t.id) != keep {
                        self.desire(t, TaskState::Shutdown);
                    }
                }
                return SlotNeeds::Nothing;
            }
            // A start-first replacement that ended by itself while the old task runs on:
            // its retries keep to the restart policy (delay, attempts) and take no
            // worker of the update, which has paused, rolled back, or (continue) moved
            // on from this slot. Without this the slot would be tried again each round.
            let replacement_ended = ts.last().is_some_and(|l| {
                l.version == svc.version
                    && l.seq > old.seq
                    && matches!(
                        l.state,
                        TaskState::Complete | TaskState::Failed | TaskState::Rejected
                    )
            });
            if !unwanted && replacement_ended && order == UpdateOrder::StartFirst {
                // A job's new task that completed is the slot's work done: the old one
                // has no more to do.
                if spec.mode.is_job() && ts.last().is_some_and(|l| l.state == TaskState::Complete) {
                    for t in &live {
                        self.desire(t, TaskState::Shutdown);
                    }
                    return SlotNeeds::Nothing;
                }
                return self.restart(svc, ts);
            }
            // A task still waiting for a node runs nothing: replaced for free.
            if !unwanted && old.node.is_some() {
                if *budget == 0 {
                    return SlotNeeds::Nothing;
                }
                *budget -= 1;
            }
            if global && unwanted {
                for t in &live {
                    self.desire(t, TaskState::Shutdown);
                }
                return SlotNeeds::Nothing;
            }
            return match order {
                UpdateOrder::StartFirst => SlotNeeds::New { pending: None },
                UpdateOrder::StopFirst => {
                    for t in &live {
                        self.desire(t, TaskState::Shutdown);
                    }
                    SlotNeeds::Nothing
                }
            };
        }
        if stopping {
            return SlotNeeds::Nothing;
        }
        if global {
            if let Slot::Node(n) = slot {
                let ok = self.node(Some(n)).is_some_and(|n| self.may_take(n, spec));
                if !ok {
                    return SlotNeeds::Nothing;
                }
            }
        }
        // Refilling a slot the update emptied takes its worker (never blocked: the
        // replica is down). A global slot whose node was away when its turn came gave
        // its worker back and waits for a free one, so the update never has more than
        // `parallelism` slots down.
        if ts.last().is_some_and(|t| t.version != svc.version) {
            if global && *budget == 0 {
                return SlotNeeds::Nothing;
            }
            *budget = budget.saturating_sub(1);
        }
        self.restart(svc, ts)
    }

    /// A slot with nothing live: whether (and when) it gets a new task.
    fn restart(&mut self, svc: &Service, ts: &[&Task]) -> SlotNeeds {
        let spec = &svc.spec;
        let job = spec.mode.is_job();
        let current: Vec<&&Task> = ts.iter().filter(|t| t.version == svc.version).collect();
        if job && current.iter().any(|t| t.state == TaskState::Complete) {
            return SlotNeeds::Nothing;
        }
        let Some(last) = ts.last() else {
            return SlotNeeds::New { pending: None };
        };
        let ended_itself = matches!(
            last.state,
            TaskState::Complete | TaskState::Failed | TaskState::Rejected
        );
        // Stopped on request, its node died, or it ran a spec since replaced (an update
        // or rollback refills the slot now).
        if !ended_itself || last.version != svc.version {
            // Stopped on request, or its node died: replaced at once.
            return SlotNeeds::New { pending: None };
        }
        let r = &spec.task.restart;
        let restart = match r.condition {
            RestartCondition::None => false,
            RestartCondition::OnFailure => last.state != TaskState::Complete,
            RestartCondition::Any => true,
        };
        if !restart {
            return SlotNeeds::Nothing;
        }
        if r.max_attempts > 0 {
            let since = self.now.saturating_sub(r.window_ms);
            let attempts = current
                .iter()
                .filter(|t| {
                    matches!(
                        t.state,
                        TaskState::Complete | TaskState::Failed | TaskState::Rejected
                    ) && (r.window_ms == 0 || t.state_ms >= since)
                })
                .count() as u64;
            if attempts > r.max_attempts {
                return SlotNeeds::Nothing;
            }
        }
        let due = last.state_ms.saturating_add(r.delay_ms);
        if self.now < due {
            self.wake_at(due);
            return SlotNeeds::Nothing;
        }
        SlotNeeds::New { pending: None }
    }

    fn new_task(
        &mut self,
        svc: &Service,
        slot: u64,
        node: Option<NodeId>,
        state: TaskState,
        message: String,
    ) {
        let id = self.store.next_task_id(self.made);
        self.made += 1;
        self.ops.push(TaskOp::Create(Task {
            id,
            service: svc.id,
            slot,
            node,
            version: svc.version,
            image: svc.spec.task.image.clone(),
            desired: TaskState::Running,
            state,
            message,
            error: String::new(),
            created_ms: self.now,
            state_ms: self.now,
            running_ms: None,
            seq: 0,
        }));
    }

    fn group<'a>(&self, spec: &'a ServiceSpec, svc: ServiceId) -> Group<'a> {
        Group {
            service: svc,
            constraints: &spec.task.placement.constraints,
            max_per_node: spec.task.placement.max_replicas,
            reserve: spec.task.reserve,
            spread: &spec.task.placement.spread,
        }
    }

    /// Places replicas: pending ones and new ones, in slot order.
    fn place(&mut self, svc: &Service, want: Vec<ToPlace>, sched: &mut Scheduler<'_>) {
        let g = self.group(&svc.spec, svc.id);
        let placed = sched.place(&g, want.len());
        let why = placed.unplaced.unwrap_or_default();
        for (i, w) in want.into_iter().enumerate() {
            match (placed.nodes.get(i), w.task) {
                (Some(n), Some(t)) => self.ops.push(TaskOp::Assign { task: t, node: *n }),
                (Some(n), None) => self.new_task(
                    svc,
                    w.slot,
                    Some(*n),
                    TaskState::Assigned,
                    "scheduled".into(),
                ),
                (None, Some(t)) => {
                    let same = self.store.tasks.get(&t).is_some_and(|t| t.message == why);
                    if !same {
                        self.ops.push(TaskOp::Pending {
                            task: t,
                            message: why.clone(),
                        });
                    }
                }
                (None, None) => self.new_task(svc, w.slot, None, TaskState::Pending, why.clone()),
            }
        }
    }

    /// A global task on its node: it starts there if the node has room.
    fn place_on(
        &mut self,
        svc: &Service,
        node: NodeId,
        pending: Option<TaskId>,
        sched: &mut Scheduler<'_>,
    ) {
        let g = self.group(&svc.spec, svc.id);
        match (sched.check(node, &g), pending) {
            (Ok(()), Some(t)) => self.ops.push(TaskOp::Assign { task: t, node }),
            (Ok(()), None) => {
                self.new_task(svc, 0, Some(node), TaskState::Assigned, "scheduled".into())
            }
            (Err(why), Some(t)) => {
                let same = self.store.tasks.get(&t).is_some_and(|t| t.message == why);
                if !same {
                    self.ops.push(TaskOp::Pending {
                        task: t,
                        message: why,
                    });
                }
            }
            (Err(why), None) => self.new_task(svc, 0, Some(node), TaskState::Pending, why),
        }
    }

    fn update_config<'a>(&self, svc: &'a Service) -> &'a UpdateConfig {
        match &svc.update {
            Some(u) if u.state.is_rollback() => &svc.spec.rollback,
            _ => &svc.spec.update,
        }
    }

    /// How many more slots an update may take on now, and what it saw.
    fn update_budget(&mut self, svc: &Service, tasks: &[&Task]) -> UpdateView {
        let cfg = self.update_config(svc);
        let Some(status) = svc.update.as_ref().filter(|u| u.state.in_progress()) else {
            // A finished update still replaces the outdated tasks it could not reach (a
            // node that was down comes back), at its pace; a paused one does not.
            let paused = svc.update.as_ref().is_some_and(|u| {
                matches!(u.state, UpdateState::Paused | UpdateState::RollbackPaused)
            });
            let busy = tasks
                .iter()
                .filter(|t| {
                    (t.version != svc.version
                        && t.desired > TaskState::Running
                        && !t.state.is_terminal()
                        && self.node_up(t.node))
                        || (t.version == svc.version
                            && t.is_live()
                            && t.state < TaskState::Running
                            && self.node_up(t.node))
                })
                .count() as u64;
            let parallelism = if cfg.parallelism == 0 {
                u64::MAX
            } else {
                cfg.parallelism
            };
            return UpdateView {
                free: if paused {
                    0
                } else {
                    parallelism.saturating_sub(busy)
                },
                ..UpdateView::default()
            };
        };
        let since = status.started_ms;
        let mut busy = 0u64;
        let mut unplaced = 0u64;
        let mut failed: Option<TaskId> = None;
        let mut slots_seen = std::collections::BTreeSet::new();
        // Slots where this update is replacing an outdated task placed on a live node
        // (running or stopping), or stopped one since it began (wherever its node is
        // now: a node that dies after the stop does not give the update its worker
        // back): a new task there that finds no node means a replica down, or about to
        // be.
        let emptied: std::collections::BTreeSet<Slot> = tasks
            .iter()
            .filter(|t| {
                t.version != svc.version
                    && t.node.is_some()
                    && if t.state.is_terminal() {
                        t.state_ms >= since && t.desired > TaskState::Running
                    } else {
                        self.node_up(t.node)
                    }
            })
            .map(|t| slot_of(t))
            .collect();
        // A new task that ended within `monitor` is a failure of the update. A slot
        // with one is done with as far as the update goes when the failure is borne
        // (failure action continue, or within --update-max-failure-ratio: Swarm moves
        // on and completes): its retries, under the restart policy, hold no worker and
        // do not keep the update open, nor does the old task a start-first update kept
        // running there. Beyond the ratio the update pauses or rolls back instead.
        let failed_early = |t: &Task| {
            t.version == svc.version
                && t.created_ms >= since
                && matches!(
                    t.state,
                    TaskState::Complete | TaskState::Failed | TaskState::Rejected
                )
                && t.running_ms
                    .is_none_or(|r| t.state_ms < r.saturating_add(cfg.monitor_ms))
        };
        let gave_up: std::collections::BTreeSet<Slot> = tasks
            .iter()
            .filter(|t| failed_early(t))
            .map(|t| slot_of(t))
            .collect();
        for t in tasks {
            slots_seen.insert(slot_of(t));
            let made_here = t.version == svc.version && t.created_ms >= since;
            if made_here && t.state < TaskState::Running && gave_up.contains(&slot_of(t)) {
                continue;
            }
            if t.version != svc.version {
                // An outdated task being stopped by the update holds its worker.
                if t.desired > TaskState::Running && !t.state.is_terminal() && self.node_up(t.node)
                {
                    busy += 1;
                }
                continue;
            }
            if !made_here {
                continue;
            }
            match (t.state, t.running_ms) {
                // Starting, or waiting for a node in a slot the update emptied: the
                // update waits too (stopping more tasks whose replacements cannot be
                // placed would take the service down). One bound to a Down node waits
                // outside the update, as does one replacing a task that never had a
                // node (nothing ran there: the shortfall predates the update).
                (s, _)
                    if t.is_live()
                        && s < TaskState::Running
                        && (t.node.is_some() && self.node_up(t.node)
                            || t.node.is_none() && emptied.contains(&slot_of(t))) =>
                {
                    busy += 1;
                    if t.node.is_none() {
                        unplaced += 1;
                    }
                }
                (TaskState::Running, Some(r)) if t.desired <= TaskState::Running => {
                    // The slot's worker rests `delay` once its new task runs.
                    let rest_until = r.saturating_add(cfg.delay_ms);
                    if self.now < rest_until {
                        busy += 1;
                        self.wake_at(rest_until);
                    }
                }
                (TaskState::Complete | TaskState::Failed | TaskState::Rejected, run) => {
                    let early = run.is_none_or(|r| t.state_ms < r.saturating_add(cfg.monitor_ms));
                    if early && t.desired <= TaskState::Shutdown && failed.is_none() {
                        failed = Some(t.id);
                    }
                }
                _ => {}
            }
        }
        let failures = tasks.iter().filter(|t| failed_early(t)).count() as u64;
        let total = (slots_seen.len() as u64).max(1);
        let over = failures > 0 && failures * 1_000_000 > u64::from(cfg.max_failure_ppm) * total;
        let parallelism = if cfg.parallelism == 0 {
            u64::MAX
        } else {
            cfg.parallelism
        };
        let stop = over && cfg.failure_action != FailureAction::Continue;
        UpdateView {
            free: if stop {
                0
            } else {
                parallelism.saturating_sub(busy)
            },
            busy,
            unplaced,
            failed: failed.filter(|_| over),
            gave_up,
        }
    }

    /// Moves an update's status on: paused, rolled back, or completed.
    fn update_progress(
        &mut self,
        svc: &Service,
        tasks: &[&Task],
        view: &UpdateView,
        required: &[Slot],
    ) {
        let Some(status) = svc.update.as_ref().filter(|u| u.state.in_progress()) else {
            return;
        };
        let rollback = status.state.is_rollback();
        let cfg = self.update_config(svc);
        if let Some(t) = view.failed {
            let message =
                |verb: &str| format!("{verb} due to failure or early termination of task {t}");
            match (cfg.failure_action, rollback) {
                (FailureAction::Continue, _) => {}
                // Nothing to go back to (a spec from before previous specs were kept
                // per version): the update pauses rather than failing for good.
                (FailureAction::Rollback, false)
                    if svc
                        .previous
                        .as_ref()
                        .is_none_or(|(_, p)| p.task == svc.spec.task) =>
                {
                    self.ops.push(TaskOp::UpdateStatus {
                        service: svc.id,
                        status: UpdateStatus {
                            state: UpdateState::Paused,
                            started_ms: status.started_ms,
                            completed_ms: None,
                            message: message("update paused (no previous version to roll back to)"),
                        },
                    });
                }
                (FailureAction::Rollback, false) => self.ops.push(TaskOp::Rollback {
                    service: svc.id,
                    message: message("update rolled back"),
                }),
                (_, _) => self.ops.push(TaskOp::UpdateStatus {
                    service: svc.id,
                    status: UpdateStatus {
                        state: if rollback {
                            UpdateState::RollbackPaused
                        } else {
                            UpdateState::Paused
                        },
                        started_ms: status.started_ms,
                        completed_ms: None,
                        message: message(if rollback {
                            "rollback paused"
                        } else {
                            "update paused"
                        }),
                    },
                }),
            }
            if cfg.failure_action != FailureAction::Continue {
                return;
            }
        }
        // Tasks on a Down node are not waited for: they are updated when it is back.
        // Nor is a global task on a paused node (it waits for the node, as above).
        let stuck = |t: &Task| {
            matches!(slot_of(t), Slot::Node(_))
                && t.is_live()
                && !self
                    .node(t.node)
                    .is_some_and(|n| self.may_take(n, &svc.spec))
        };
        let outdated = tasks.iter().any(|t| {
            t.version != svc.version
                && (t.is_live() || (t.desired > TaskState::Running && !t.state.is_terminal()))
                && self.node_up(t.node)
                && !stuck(t)
                && !view.gave_up.contains(&slot_of(t))
        });
        let starting = tasks.iter().any(|t| {
            t.version == svc.version
                && t.is_live()
                && t.state < TaskState::Running
                && self.node_up(t.node)
                && !view.gave_up.contains(&slot_of(t))
        });
        // A slot whose new task finds no node is as updated as it can be.
        let fresh: std::collections::BTreeSet<Slot> = tasks
            .iter()
            .filter(|t| {
                t.version == svc.version
                    && t.is_live()
                    && (t.state == TaskState::Running && self.node_up(t.node) || t.node.is_none())
            })
            .map(|t| slot_of(t))
            .collect();
        let all_fresh = required
            .iter()
            .all(|s| fresh.contains(s) || view.gave_up.contains(s));
        if !outdated && !starting && view.busy == view.unplaced && all_fresh {
            self.ops.push(TaskOp::UpdateStatus {
                service: svc.id,
                status: UpdateStatus {
                    state: if rollback {
                        UpdateState::RollbackCompleted
                    } else {
                        UpdateState::Completed
                    },
                    started_ms: status.started_ms,
                    completed_ms: Some(self.now),
                    message: match (rollback, status.message.starts_with("update rolled back")) {
                        // An automatic rollback keeps saying why it happened.
                        (true, true) => format!("rollback completed: {}", status.message),
                        (true, false) => "rollback completed".into(),
                        (false, _) => "update completed".into(),
                    },
                },
            });
        }
    }
}

#[derive(Default)]
struct UpdateView {
    /// Slots the update may take on now (unlimited when no update runs).
    free: u64,
    busy: u64,
    /// Of `busy`, new tasks no node can take yet: they hold the update's workers while
    /// more slots are to go, but do not keep a finished update open.
    unplaced: u64,
    failed: Option<TaskId>,
    /// Slots the update moved on from after their new task failed, the failure borne
    /// (failure action continue, or within the failure ratio).
    gave_up: std::collections::BTreeSet<Slot>,
}

enum SlotNeeds {
    Nothing,
    /// A task to place: a pending one, or a new one.
    New {
        pending: Option<TaskId>,
    },
}

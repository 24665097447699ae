//! The services part of the replicated state: services, their tasks, and the commands
//! that change them. Pure and deterministic like the rest of the cluster state: every
//! manager that applies the same commands holds the same store. Times are carried in the
//! commands (the leader's wall clock when it proposed), never read here.
//!
//! Who writes what: users create, update and remove services (checked, an error is
//! theirs); the leader's orchestrator creates, places and retires tasks
//! ([`ServiceCommand::Tasks`]); each node's agent reports what its tasks do
//! ([`ServiceCommand::Report`]). Orchestrator and agent commands are applied op by op,
//! each one skipped when it no longer fits the state (a task deleted meanwhile, a report
//! from a node the task left): they are repairs of a moving target, and the next round
//! sees what happened.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::agent::NodeDescription;
use super::spec::{ServiceSpec, SpecError, TaskTemplate};
use super::task::TaskState;
use super::ServiceId;
use crate::raft::NodeId;

/// A task's id. Made from a counter in the store through a bijective mix, so ids are
/// unique, cheap to make deterministically, and do not look sequential.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TaskId(pub u64);

impl TaskId {
    /// The id of the `seq`-th task the cluster makes (splitmix64's finaliser: a bijection).
    pub fn from_seq(seq: u64) -> TaskId {
        let mut z = seq.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        TaskId(z ^ (z >> 31))
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Where a rolling update or a rollback stands (Docker's `UpdateStatus.State`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdateState {
    Updating,
    Paused,
    Completed,
    RollbackStarted,
    RollbackPaused,
    RollbackCompleted,
}

impl UpdateState {
    /// Docker's names, as `service inspect` shows them.
    pub fn name(self) -> &'static str {
        match self {
            UpdateState::Updating => "updating",
            UpdateState::Paused => "paused",
            UpdateState::Completed => "completed",
            UpdateState::RollbackStarted => "rollback_started",
            UpdateState::RollbackPaused => "rollback_paused",
            UpdateState::RollbackCompleted => "rollback_completed",
        }
    }

    /// The update (or rollback) is still replacing tasks.
    pub fn in_progress(self) -> bool {
        matches!(self, UpdateState::Updating | UpdateState::RollbackStarted)
    }

    pub fn is_rollback(self) -> bool {
        matches!(
            self,
            UpdateState::RollbackStarted
                | UpdateState::RollbackPaused
                | UpdateState::RollbackCompleted
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    pub state: UpdateState,
    pub started_ms: u64,
    pub completed_ms: Option<u64>,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub id: ServiceId,
    pub spec: ServiceSpec,
    /// Raised when an update changes what tasks run (the task template); tasks record
    /// the version they were made from, and those of an older one are outdated.
    pub version: u64,
    /// The spec before the last update and its version (`service rollback` goes back
    /// to it; an agent still finds the template of a task made from it).
    pub previous: Option<(u64, ServiceSpec)>,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub update: Option<UpdateStatus>,
}

impl Service {
    /// The template of `version`, if the service still holds it.
    pub fn template(&self, version: u64) -> Option<&TaskTemplate> {
        if version == self.version {
            return Some(&self.spec.task);
        }
        self.previous
            .as_ref()
            .filter(|(v, _)| *v == version)
            .map(|(_, s)| &s.task)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    pub service: ServiceId,
    /// Replicated services: the replica's number, from 1. Global: 0 (the node is the
    /// slot).
    pub slot: u64,
    pub node: Option<NodeId>,
    /// The service version the task was made from, and its image (shown by `ps` after
    /// the service moved on).
    pub version: u64,
    pub image: String,
    /// Running (or Ready, held back), Shutdown, or Remove.
    pub desired: TaskState,
    /// The last state its node reported (or New, Pending, Assigned from the managers).
    pub state: TaskState,
    /// What the task is doing or waits for (`no suitable node (...)`).
    pub message: String,
    /// Why it failed or was rejected.
    pub error: String,
    pub created_ms: u64,
    /// When `state` last changed.
    pub state_ms: u64,
    /// When its node first reported it running: an update watches it from then on.
    pub running_ms: Option<u64>,
    /// Its place in the order tasks were made (its id comes from it).
    pub seq: u64,
}

impl Task {
    /// Desired to run and not ended: the task holds its slot.
    pub fn is_live(&self) -> bool {
        self.desired <= TaskState::Running && !self.state.is_terminal()
    }
}

/// What an agent says about one of its tasks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskReport {
    pub task: TaskId,
    pub state: TaskState,
    pub message: String,
    pub error: String,
}

/// One decision of the orchestrator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskOp {
    /// A new task; its id must be the store's next (`Store::next_task_id`). Its times
    /// and `seq` are the store's to set.
    Create(Task),
    /// A pending task gets a node.
    Assign { task: TaskId, node: NodeId },
    /// A task still finds no node; why.
    Pending { task: TaskId, message: String },
    /// The desired state moves on (Running -> Shutdown -> Remove; Ready -> Running).
    Desire { task: TaskId, desired: TaskState },
    /// The managers' own word on a task whose node cannot report (it left the cluster).
    Observe {
        task: TaskId,
        state: TaskState,
        message: String,
    },
    /// Forget a task (history beyond the limit, or removed and ended).
    Delete(TaskId),
    /// A rolling update or rollback moved on.
    UpdateStatus {
        service: ServiceId,
        status: UpdateStatus,
    },
    /// An update failed and its failure action is rollback: go back to the previous spec.
    Rollback { service: ServiceId, message: String },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ServiceCommand {
    Create {
        id: ServiceId,
        spec: ServiceSpec,
        at_ms: u64,
    },
    /// `service update` (and `scale`); with `rollback`, `service rollback`: the spec is
    /// the previous one.
    Update {
        id: ServiceId,
        spec: ServiceSpec,
        at_ms: u64,
        rollback: bool,
    },
    Remove(ServiceId),
    Tasks {
        at_ms: u64,
        ops: Vec<TaskOp>,
    },
    Report {
        node: NodeId,
        at_ms: u64,
        reports: Vec<TaskReport>,
    },
    /// What a node's agent says it offers (platform, engine labels, CPUs, memory).
    Describe {
        node: NodeId,
        desc: NodeDescription,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("service {0} not found")]
    UnknownService(String),
    #[error("name conflicts with an existing object: service {0} already exists")]
    NameTaken(String),
    #[error("service id {0} is already in use")]
    IdTaken(ServiceId),
    #[error("service {0} has no previous spec to roll back to")]
    NoPrevious(String),
    #[error("{0}")]
    Spec(#[from] SpecError),
}

/// Services and tasks.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Store {
    pub services: BTreeMap<ServiceId, Service>,
    pub tasks: BTreeMap<TaskId, Task>,
    /// How many tasks were ever made: the next task's id is `TaskId::from_seq(this)`.
    pub tasks_made: u64,
    /// What each node's agent last said it offers.
    pub nodes: BTreeMap<NodeId, NodeDescription>,
}

impl Store {
    pub fn next_task_id(&self, ahead: u64) -> TaskId {
        TaskId::from_seq(self.tasks_made.wrapping_add(ahead))
    }

    pub fn by_name(&self, name: &str) -> Option<&Service> {
        self.services.values().find(|s| s.spec.name == name)
    }

    /// Whether a user's command would apply; errors are the user's to see.
    pub fn validate(&self, cmd: &ServiceCommand) -> Result<(), StoreError> {
        match cmd {
            ServiceCommand::Create { id, spec, .. } => {
                spec.validate()?;
                if self.services.contains_key(id) {
                    return Err(StoreError::IdTaken(*id));
                }
                if self.by_name(&spec.name).is_some() {
                    return Err(StoreError::NameTaken(spec.name.clone()));
                }
                Ok(())
            }
            ServiceCommand::Update {
                id, spec, rollback, ..
            } => {
                spec.validate()?;
                let s = self
                    .services
                    .get(id)
                    .ok_or_else(|| StoreError::UnknownService(id.to_string()))?;
                if *rollback && s.previous.is_none() {
                    return Err(StoreError::NoPrevious(s.spec.name.clone()));
                }
                match self.by_name(&spec.name) {
                    Some(other) if other.id != *id => Err(StoreError::NameTaken(spec.name.clone())),
                    _ => Ok(()),
                }
            }
            ServiceCommand::Remove(id) => match self.services.contains_key(id) {
                true => Ok(()),
                false => Err(StoreError::UnknownService(id.to_string())),
            },
            ServiceCommand::Tasks { .. }
            | ServiceCommand::Report { .. }
            | ServiceCommand::Describe { .. } => Ok(()),
        }
    }

    pub fn apply(&mut self, cmd: &ServiceCommand) -> Result<(), StoreError> {
        self.validate(cmd)?;
        match cmd {
            ServiceCommand::Create { id, spec, at_ms } => {
                self.services.insert(
                    *id,
                    Service {
                        id: *id,
                        spec: spec.clone(),
                        version: 1,
                        previous: None,
                        created_ms: *at_ms,
                        updated_ms: *at_ms,
                        update: None,
                    },
                );
            }
            ServiceCommand::Update {
                id,
                spec,
                at_ms,
                rollback,
            } => self.update(*id, spec.clone(), *at_ms, *rollback, String::new()),
            ServiceCommand::Remove(id) => {
                self.services.remove(id);
                for t in self.tasks.values_mut().filter(|t| t.service == *id) {
                    t.desired = t.desired.max(TaskState::Remove);
                }
            }
            ServiceCommand::Tasks { at_ms, ops } => {
                for op in ops {
                    self.apply_op(op, *at_ms);
                }
            }
            ServiceCommand::Describe { node, desc } => {
                self.nodes.insert(*node, desc.clone());
            }
            ServiceCommand::Report {
                node,
                at_ms,
                reports,
            } => {
                for r in reports {
                    let Some(t) = self.tasks.get_mut(&r.task) else {
                        continue;
                    };
                    if t.node != Some(*node) || !t.state.may_become(r.state) {
                        continue;
                    }
                    t.state = r.state;
                    t.message = r.message.clone();
                    t.error = r.error.clone();
                    t.state_ms = *at_ms;
                    if r.state == TaskState::Running {
                        t.running_ms = Some(*at_ms);
                    }
                }
            }
        }
        Ok(())
    }

    /// Replaces a service's spec. The version moves only when what tasks run changed,
    /// and only then does a rolling update (or rollback) start.
    fn update(
        &mut self,
        id: ServiceId,
        spec: ServiceSpec,
        at_ms: u64,
        rollback: bool,
        why: String,
    ) {
        let Some(s) = self.services.get_mut(&id) else {
            return;
        };
        let spec = match (rollback, &s.previous) {
            (true, Some((_, p))) => ServiceSpec {
                // A rollback goes back to the old spec but keeps the name.
                name: s.spec.name.clone(),
                ..p.clone()
            },
            _ => spec,
        };
        let changed = spec.task != s.spec.task;
        let old = std::mem::replace(&mut s.spec, spec);
        // The previous spec is that of the previous version: a change that leaves the
        // tasks as they are (a scale, labels, update settings) keeps it, so a rollback,
        // automatic or asked for, always has another version to go back to, and the
        // tasks of that version keep their template.
        if changed {
            s.previous = Some((s.version, old));
        }
        s.updated_ms = at_ms;
        if changed {
            s.version += 1;
            let state = match rollback {
                true => UpdateState::RollbackStarted,
                false => UpdateState::Updating,
            };
            let message = match (rollback, why.is_empty()) {
                (true, true) => "manually requested rollback".to_string(),
                (true, false) => why,
                (false, _) => "update in progress".to_string(),
            };
            s.update = Some(UpdateStatus {
                state,
                started_ms: at_ms,
                completed_ms: None,
                message,
            });
        }
    }

    fn apply_op(&mut self, op: &TaskOp, at_ms: u64) {
        match op {
            TaskOp::Create(t) => {
                if t.id != self.next_task_id(0) || self.tasks.contains_key(&t.id) {
                    return;
                }
                let mut t = t.clone();
                t.seq = self.tasks_made;
                t.created_ms = at_ms;
                t.state_ms = at_ms;
                t.running_ms = None;
                self.tasks_made += 1;
                self.tasks.insert(t.id, t);
            }
            TaskOp::Assign { task, node } => {
                if let Some(t) = self.tasks.get_mut(task) {
                    let free = t.node.is_none() || t.node == Some(*node);
                    if free && t.state < TaskState::Assigned {
                        t.node = Some(*node);
                        t.state = TaskState::Assigned;
                        t.message = "scheduled".into();
                        t.state_ms = at_ms;
                    }
                }
            }
            TaskOp::Pending { task, message } => {
                if let Some(t) = self.tasks.get_mut(task) {
                    if t.state <= TaskState::Pending {
                        if t.state != TaskState::Pending {
                            t.state_ms = at_ms;
                        }
                        t.state = TaskState::Pending;
                        t.message = message.clone();
                    }
                }
            }
            TaskOp::Desire { task, desired } => {
                if let Some(t) = self.tasks.get_mut(task) {
                    let start = t.desired == TaskState::Ready && *desired == TaskState::Running;
                    if *desired > t.desired || start {
                        t.desired = *desired;
                    }
                }
            }
            TaskOp::Observe {
                task,
                state,
                message,
            } => {
                if let Some(t) = self.tasks.get_mut(task) {
                    if t.state.may_become(*state) {
                        t.state = *state;
                        t.message = message.clone();
                        t.state_ms = at_ms;
                    }
                }
            }
            TaskOp::Delete(id) => {
                self.tasks.remove(id);
            }
            TaskOp::UpdateStatus { service, status } => {
                if let Some(s) = self.services.get_mut(service) {
                    s.update = Some(status.clone());
                }
            }
            TaskOp::Rollback { service, message } => {
                let has_previous = self
                    .services
                    .get(service)
                    .is_some_and(|s| s.previous.is_some());
                if has_previous {
                    let spec = self.services[service].spec.clone();
                    self.update(*service, spec, at_ms, true, message.clone());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(s: &mut Store, id: u64, name: &str) {
        s.apply(&ServiceCommand::Create {
            id: ServiceId(id),
            spec: ServiceSpec::new(name, "busybox"),
            at_ms: 1,
        })
        .unwrap();
    }

    fn task(s: &Store, slot: u64, node: Option<NodeId>) -> Task {
        Task {
            id: s.next_task_id(0),
            service: ServiceId(1),
            slot,
            node,
            version: 1,
            image: "busybox".into(),
            desired: TaskState::Running,
            state: TaskState::New,
            message: String::new(),
            error: String::new(),
            created_ms: 0,
            state_ms: 0,
            running_ms: None,
            seq: 0,
        }
    }

    #[test]
    fn task_ids_are_unique_and_unordered() {
        let ids: std::collections::BTreeSet<TaskId> = (0..10_000).map(TaskId::from_seq).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(
            TaskId::from_seq(1).0 > TaskId::from_seq(2).0
                || TaskId::from_seq(2).0 > TaskId::from_seq(3).0
        );
    }

    #[test]
    fn names_are_unique_and_errors_are_dockers() {
        let mut s = Store::default();
        create(&mut s, 1, "web");
        let e = s
            .apply(&ServiceCommand::Create {
                id: ServiceId(2),
                spec: ServiceSpec::new("web", "nginx"),
                at_ms: 2,
            })
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "name conflicts with an existing object: service web already exists"
        );
        let e = s.apply(&ServiceCommand::Remove(ServiceId(9))).unwrap_err();
        assert!(e.to_string().contains("not found"), "{e}");
        let before = s.clone();
        assert!(s
            .apply(&ServiceCommand::Update {
                id: ServiceId(1),
                spec: ServiceSpec::new("web", ""),
                at_ms: 3,
                rollback: false,
            })
            .is_err());
        assert_eq!(s, before, "a refused command changes nothing");
    }

    #[test]
    fn only_a_changed_template_starts_an_update_and_rollback_returns() {
        let mut s = Store::default();
        create(&mut s, 1, "web");
        let mut scaled = s.services[&ServiceId(1)].spec.clone();
        scaled.mode = super::super::spec::Mode::Replicated { replicas: 5 };
        let up = |spec: ServiceSpec, rollback| ServiceCommand::Update {
            id: ServiceId(1),
            spec,
            at_ms: 5,
            rollback,
        };
        s.apply(&up(scaled.clone(), false)).unwrap();
        let svc = &s.services[&ServiceId(1)];
        assert_eq!(
            (svc.version, svc.update.is_none()),
            (1, true),
            "scale is no update"
        );
        let mut newer = scaled.clone();
        newer.task.image = "busybox:2".into();
        s.apply(&up(newer, false)).unwrap();
        let svc = &s.services[&ServiceId(1)];
        assert_eq!(svc.version, 2);
        assert_eq!(svc.update.as_ref().unwrap().state, UpdateState::Updating);
        assert_eq!(svc.template(1).unwrap().image, "busybox");
        assert_eq!(svc.template(2).unwrap().image, "busybox:2");
        s.apply(&up(scaled, true)).unwrap();
        let svc = &s.services[&ServiceId(1)];
        assert_eq!(svc.spec.task.image, "busybox");
        assert_eq!(svc.version, 3);
        assert_eq!(
            svc.update.as_ref().unwrap().state,
            UpdateState::RollbackStarted
        );
    }

    #[test]
    fn task_ops_are_skipped_when_they_no_longer_fit() {
        let mut s = Store::default();
        create(&mut s, 1, "web");
        let t = task(&s, 1, None);
        let stale = Task {
            id: TaskId::from_seq(7),
            ..t.clone()
        };
        s.apply(&ServiceCommand::Tasks {
            at_ms: 10,
            ops: vec![TaskOp::Create(t.clone()), TaskOp::Create(stale)],
        })
        .unwrap();
        assert_eq!(s.tasks.len(), 1, "only the expected next id is made");
        let (n1, n2) = (NodeId(1), NodeId(2));
        let ops = vec![
            TaskOp::Assign {
                task: t.id,
                node: n1,
            },
            TaskOp::Assign {
                task: t.id,
                node: n2,
            },
        ];
        s.apply(&ServiceCommand::Tasks { at_ms: 11, ops }).unwrap();
        assert_eq!(s.tasks[&t.id].node, Some(n1), "a task is placed once");
        let report = |node, state| ServiceCommand::Report {
            node,
            at_ms: 12,
            reports: vec![TaskReport {
                task: t.id,
                state,
                message: String::new(),
                error: String::new(),
            }],
        };
        s.apply(&report(n2, TaskState::Running)).unwrap();
        assert_eq!(s.tasks[&t.id].state, TaskState::Assigned, "not its node");
        s.apply(&report(n1, TaskState::Running)).unwrap();
        s.apply(&report(n1, TaskState::Starting)).unwrap();
        assert_eq!(s.tasks[&t.id].state, TaskState::Running, "only forward");
        s.apply(&ServiceCommand::Remove(ServiceId(1))).unwrap();
        assert_eq!(s.tasks[&t.id].desired, TaskState::Remove);
        s.apply(&ServiceCommand::Tasks {
            at_ms: 13,
            ops: vec![TaskOp::Desire {
                task: t.id,
                desired: TaskState::Running,
            }],
        })
        .unwrap();
        assert_eq!(
            s.tasks[&t.id].desired,
            TaskState::Remove,
            "desired only forward"
        );
    }
}

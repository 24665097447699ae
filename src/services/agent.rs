//! The agent's decisions, pure: a node's assignments and the containers it has in, what
//! to start, stop and remove, and what to report, out. The daemon's agent thread
//! carries them out through the engine.
//!
//! The leader sends each node its whole set of assignments, versioned, whenever it
//! changes; the agent reports the state of every assigned task each second and at once
//! on a change. A lost message is repaired by the next exchange (the leader answers a
//! report naming an old version with the current set), so neither side keeps a retry
//! protocol. A container of a task the set no longer holds is removed; a node cut off
//! from the managers keeps running what it has.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::network::NodeNet;
use super::spec::TaskTemplate;
use super::store::{TaskId, TaskReport};
use super::task::TaskState;
use super::{NetworkId, ServiceId};
use crate::model::health::HealthStatus;
use crate::raft::NodeId;

/// Labels an agent puts on its containers (Docker's names): how a restarted daemon
/// finds the containers of its tasks.
pub const LABEL_TASK: &str = "com.docker.swarm.task.id";
pub const LABEL_SERVICE: &str = "com.docker.swarm.service.name";
pub const LABEL_SERVICE_ID: &str = "com.docker.swarm.service.id";
pub const LABEL_NODE: &str = "com.docker.swarm.node.id";

/// One task as the leader hands it to its node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub task: TaskId,
    pub service: ServiceId,
    pub service_name: String,
    pub slot: u64,
    pub node: NodeId,
    pub desired: TaskState,
    /// None when the service no longer holds the task's version (updated twice since):
    /// such a task is never started again.
    pub template: Option<TaskTemplate>,
    /// Its addresses: one per network of its template, in order, then ingress.
    pub addrs: Vec<(NetworkId, std::net::Ipv4Addr)>,
    /// The target ports its service publishes: a new container is reported running
    /// (and so joins balancers and DNS) once it listens on them.
    pub ports: Vec<(super::spec::Protocol, u16)>,
}

impl Assignment {
    /// Docker's container name: `<service>.<slot>.<task>`, or `<service>.<node>.<task>`
    /// for a global service's task.
    pub fn container_name(&self) -> String {
        match self.slot {
            0 => format!("{}.{}.{}", self.service_name, self.node, self.task),
            s => format!("{}.{}.{}", self.service_name, s, self.task),
        }
    }

    /// A `--hostname` or `--env` value of the task's spec with its `{{.Task.Slot}}`-
    /// style placeholders filled in, for this task on this node.
    pub fn expand(&self, s: &str, node_hostname: &str) -> String {
        super::spec::expand(s, |key| {
            Some(match key {
                ".Service.ID" => self.service.to_string(),
                ".Service.Name" => self.service_name.clone(),
                ".Node.ID" => self.node.to_string(),
                ".Node.Hostname" => node_hostname.to_string(),
                ".Task.ID" => self.task.to_string(),
                ".Task.Name" => self.container_name(),
                ".Task.Slot" => self.slot.to_string(),
                _ => return None,
            })
        })
    }
}

/// The whole set for one node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Assignments {
    /// The leader's applied index when the set last changed: every leader computes the
    /// same set at the same index, so a higher version is always newer.
    pub version: u64,
    pub tasks: Vec<Assignment>,
    /// The networks as this node needs them.
    pub net: NodeNet,
}

/// What a node tells the leader, each second and on every change.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// The version of the set it holds.
    pub have: u64,
    pub reports: Vec<TaskReport>,
    pub desc: NodeDescription,
    /// Every standalone container of the node that is to be on an attachable network
    /// (the whole set, each time); None while the node does not know (it has not
    /// looked at its containers yet): nothing is detached then.
    pub attach: Option<Vec<AttachWant>>,
}

/// A standalone container that is to be on a network (`run --network <net>`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttachWant {
    /// Its id (64 hex digits).
    pub container: String,
    pub name: String,
    /// The network as the user named it (name, id or id prefix).
    pub network: String,
}

/// What a node has to offer, as its agent sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDescription {
    pub os: String,
    pub arch: String,
    /// `daemon --label`: matched by `engine.labels.*`.
    pub engine_labels: BTreeMap<String, String>,
    pub nano_cpus: u64,
    pub memory: u64,
}

/// A task's container as the node has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    Created,
    Running { health: Option<HealthStatus> },
    Exited { code: Option<i32> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Pull the image if missing, create and start the container.
    Start(TaskId),
    /// Stop the task's container (its stop signal, then SIGKILL after the grace).
    Stop(TaskId),
    /// Stop if running, and remove, a container whose task is no longer assigned (or
    /// was created and never started: a daemon that died mid-start left it).
    Remove { task: TaskId, container: String },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// Changed task states (the caller keeps them; they go out in the next status).
    pub reports: Vec<TaskReport>,
}

fn report(task: TaskId, state: TaskState, message: &str, error: &str) -> TaskReport {
    TaskReport {
        task,
        state,
        message: message.to_string(),
        error: error.to_string(),
    }
}

fn failed(task: TaskId, why: &str) -> TaskReport {
    report(task, TaskState::Failed, "failed", why)
}

/// Decides what to do. `seen` holds the containers that carry a task label (container
/// id and state, by task); `busy` the tasks an action is still working on; `known`
/// the last state reported for each task.
pub fn plan(
    assigned: &[Assignment],
    seen: &BTreeMap<TaskId, (String, Seen)>,
    busy: &BTreeSet<TaskId>,
    known: &BTreeMap<TaskId, TaskReport>,
) -> Plan {
    let mut p = Plan::default();
    let state_of = |t: &TaskId| known.get(t).map_or(TaskState::Assigned, |r| r.state);
    let say = |p: &mut Plan, r: TaskReport| {
        let same = known
            .get(&r.task)
            .is_some_and(|k| k.state == r.state && k.message == r.message);
        if !same && state_of(&r.task).may_become(r.state) {
            p.reports.push(r);
        }
    };
    for a in assigned {
        if busy.contains(&a.task) {
            continue;
        }
        let now = state_of(&a.task);
        let container = seen.get(&a.task).map(|(_, s)| s);
        if a.desired > TaskState::Running {
            match container {
                Some(Seen::Running { .. }) => p.actions.push(Action::Stop(a.task)),
                _ if !now.is_terminal() => {
                    say(&mut p, report(a.task, TaskState::Shutdown, "shutdown", ""))
                }
                _ => {}
            }
            continue;
        }
        match container {
            None if now < TaskState::Preparing => match a.template {
                Some(_) => p.actions.push(Action::Start(a.task)),
                None => say(
                    &mut p,
                    report(
                        a.task,
                        TaskState::Rejected,
                        "rejected",
                        "the service was updated again before this task started",
                    ),
                ),
            },
            None if !now.is_terminal() => {
                say(&mut p, failed(a.task, "task: the container is gone"))
            }
            None => {}
            // A start is not working on it (it would be busy): the daemon died between
            // create and start. It never ran; the orchestrator makes a new task.
            Some(Seen::Created) => {
                if !now.is_terminal() {
                    let why = "task: the container was created but never started";
                    say(&mut p, failed(a.task, why));
                }
                if let Some((c, _)) = seen.get(&a.task) {
                    p.actions.push(Action::Remove {
                        task: a.task,
                        container: c.clone(),
                    });
                }
            }
            Some(Seen::Running { health }) => match health {
                Some(HealthStatus::Starting) => {
                    say(&mut p, report(a.task, TaskState::Starting, "starting", ""))
                }
                Some(HealthStatus::Unhealthy) => {
                    say(&mut p, failed(a.task, "task: unhealthy container"));
                    p.actions.push(Action::Stop(a.task));
                }
                _ => say(&mut p, report(a.task, TaskState::Running, "running", "")),
            },
            Some(Seen::Exited { code }) => {
                let r = match code {
                    Some(0) => report(a.task, TaskState::Complete, "finished", ""),
                    Some(c) => report(
                        a.task,
                        TaskState::Failed,
                        "failed",
                        &format!("task: non-zero exit ({c})"),
                    ),
                    None => report(
                        a.task,
                        TaskState::Failed,
                        "failed",
                        "task: exit status unknown",
                    ),
                };
                say(&mut p, r);
            }
        }
    }
    let kept: BTreeSet<TaskId> = assigned.iter().map(|a| a.task).collect();
    for (task, (container, _)) in seen {
        if !kept.contains(task) && !busy.contains(task) {
            p.actions.push(Action::Remove {
                task: *task,
                container: container.clone(),
            });
        }
    }
    p
}

/// What an agent keeps between its looks at the containers: the set it holds, what it
/// last said of each task, and the tasks an action is working on. The daemon's agent
/// and the simulation's both run on it.
#[derive(Debug, Default)]
pub struct Book {
    pub set: Assignments,
    known: BTreeMap<TaskId, TaskReport>,
    busy: BTreeSet<TaskId>,
    /// The node left its cluster (or was removed): its tasks' containers go, and the
    /// next cluster's first set is taken whatever its version.
    out: bool,
    /// The node's standalone containers wanting attachable networks, once known.
    pub attach: Option<Vec<AttachWant>>,
}

impl Book {
    /// Takes a set from the leader; says whether it replaced the one held (an older or
    /// repeated set does not).
    pub fn assign(&mut self, a: Assignments) -> bool {
        if a.version <= self.set.version && self.set.version != 0 && !self.out {
            return false;
        }
        self.out = false;
        self.set = a;
        let keep: BTreeSet<TaskId> = self.set.tasks.iter().map(|t| t.task).collect();
        self.known.retain(|t, _| keep.contains(t));
        true
    }

    pub fn assignment(&self, task: TaskId) -> Option<&Assignment> {
        self.set.tasks.iter().find(|a| a.task == task)
    }

    /// The node is out of its cluster: nothing is assigned any more (as Swarm does on
    /// `swarm leave`, its tasks' containers are removed: the managers replaced them).
    pub fn leave(&mut self) {
        self.set = Assignments::default();
        self.known.clear();
        self.out = true;
    }

    /// No set yet (a restarted daemon) and not out of a cluster: there is nothing to
    /// look at the containers for.
    pub fn waiting(&self) -> bool {
        self.set.version == 0 && !self.out
    }

    /// A task's state moves on, if it is assigned and the move goes forward; says
    /// whether it did.
    pub fn note(&mut self, r: TaskReport) -> bool {
        let at = self
            .known
            .get(&r.task)
            .map_or(TaskState::Assigned, |k| k.state);
        if self.assignment(r.task).is_some() && at.may_become(r.state) {
            self.known.insert(r.task, r);
            return true;
        }
        false
    }

    /// An action on `task` is over.
    pub fn done(&mut self, task: TaskId) {
        self.busy.remove(&task);
    }

    /// Decides on the containers `seen`: notes the new task states, marks the tasks it
    /// acts on busy (a start says Preparing) and returns the actions and whether a
    /// state changed. Until a first set arrives (a restarted daemon) the containers
    /// found are not known to be unassigned: nothing is touched.
    pub fn reconcile(&mut self, seen: &BTreeMap<TaskId, (String, Seen)>) -> (Vec<Action>, bool) {
        if self.waiting() {
            return (Vec::new(), false);
        }
        let p = plan(&self.set.tasks, seen, &self.busy, &self.known);
        let mut changed = false;
        for r in p.reports {
            changed |= self.note(r);
        }
        for a in &p.actions {
            let task = match a {
                Action::Start(t) => {
                    changed |= self.note(report(*t, TaskState::Preparing, "preparing", ""));
                    *t
                }
                Action::Stop(t) | Action::Remove { task: t, .. } => *t,
            };
            self.busy.insert(task);
        }
        (p.actions, changed)
    }

    /// The tasks whose network namespaces stay: those with a live container (created or
    /// running) and those an action works on (a start wires its task first). A task
    /// whose container exited leaves its networks at once: its addresses go back to the
    /// leader's pool and may soon name a task on another node.
    pub fn wired(&self, seen: &BTreeMap<TaskId, (String, Seen)>) -> BTreeSet<TaskId> {
        let live = seen
            .iter()
            .filter(|(_, (_, s))| !matches!(s, Seen::Exited { .. }))
            .map(|(t, _)| *t);
        self.busy.iter().copied().chain(live).collect()
    }

    /// What goes to the leader.
    pub fn status(&self, desc: &NodeDescription) -> AgentStatus {
        AgentStatus {
            have: self.set.version,
            reports: self.known.values().cloned().collect(),
            desc: desc.clone(),
            attach: self.attach.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(task: u64, desired: TaskState) -> Assignment {
        Assignment {
            task: TaskId(task),
            service: ServiceId(1),
            service_name: "web".into(),
            slot: 2,
            node: NodeId(0xab),
            desired,
            template: Some(TaskTemplate::new("busybox")),
            addrs: Vec::new(),
            ports: Vec::new(),
        }
    }

    #[test]
    fn names_follow_docker() {
        let x = a(0x1f, TaskState::Running);
        assert_eq!(x.container_name(), "web.2.000000000000001f");
        let g = Assignment { slot: 0, ..x };
        assert_eq!(g.container_name(), "web.00000000000000ab.000000000000001f");
    }

    #[test]
    fn placeholders_are_filled_in_for_the_task() {
        let x = a(0x1f, TaskState::Running);
        assert_eq!(
            x.expand(
                "{{.Service.Name}}-{{ .Task.Slot }}@{{.Node.Hostname}}",
                "pi-3"
            ),
            "web-2@pi-3"
        );
        assert_eq!(
            x.expand("{{.Task.Name}} é {{.Node.ID}}", "pi"),
            "web.2.000000000000001f é 00000000000000ab"
        );
        assert_eq!(x.expand("plain", "pi"), "plain");
        // What it does not know stays as written (the CLI refused it already; a spec
        // from elsewhere is not failed for it).
        assert_eq!(
            x.expand("{{.Task.Nope}} {{.Task.Slot}} {{.Task.Slot", "pi"),
            "{{.Task.Nope}} 2 {{.Task.Slot"
        );
        let check = super::super::spec::check_template;
        let e = check("{{.Task.Nope}}").unwrap_err();
        assert!(e.contains("unknown placeholder {{.Task.Nope}}"), "{e}");
        let e = check("a{{.Task.Slot}}{{.Task.Slot").unwrap_err();
        assert!(e.contains("without }}"), "{e}");
        assert_eq!(check("{{ .Node.Hostname }}-x"), Ok(()));
    }

    #[test]
    fn starts_reports_stops_and_removes() {
        let none = BTreeMap::new();
        let unknown = BTreeMap::new();
        let idle = BTreeSet::new();
        let p = plan(&[a(1, TaskState::Running)], &none, &idle, &unknown);
        assert_eq!(p.actions, vec![Action::Start(TaskId(1))]);

        let mut seen = BTreeMap::new();
        seen.insert(
            TaskId(1),
            ("c1".to_string(), Seen::Running { health: None }),
        );
        seen.insert(
            TaskId(9),
            ("c9".to_string(), Seen::Exited { code: Some(0) }),
        );
        let p = plan(&[a(1, TaskState::Running)], &seen, &idle, &unknown);
        assert_eq!(p.reports[0].state, TaskState::Running);
        assert_eq!(
            p.actions,
            vec![Action::Remove {
                task: TaskId(9),
                container: "c9".into()
            }],
            "an unassigned container goes"
        );

        let mut known = BTreeMap::new();
        known.insert(TaskId(1), p.reports[0].clone());
        let p = plan(&[a(1, TaskState::Running)], &seen, &idle, &known);
        assert!(p.reports.is_empty(), "nothing new to say");

        let p = plan(&[a(1, TaskState::Shutdown)], &seen, &idle, &known);
        assert_eq!(p.actions[0], Action::Stop(TaskId(1)));
        let busy = BTreeSet::from([TaskId(1), TaskId(9)]);
        let p = plan(&[a(1, TaskState::Shutdown)], &seen, &busy, &known);
        assert!(
            p.actions.is_empty() && p.reports.is_empty(),
            "busy tasks wait"
        );
    }

    #[test]
    fn exits_and_health_become_task_states() {
        let idle = BTreeSet::new();
        let none = BTreeMap::new();
        let one = |s: Seen| {
            let mut m = BTreeMap::new();
            m.insert(TaskId(1), ("c".to_string(), s));
            plan(&[a(1, TaskState::Running)], &m, &idle, &none)
        };
        let p = one(Seen::Exited { code: Some(3) });
        assert_eq!(p.reports[0].state, TaskState::Failed);
        assert_eq!(p.reports[0].error, "task: non-zero exit (3)");
        assert_eq!(
            one(Seen::Exited { code: Some(0) }).reports[0].state,
            TaskState::Complete
        );
        let p = one(Seen::Running {
            health: Some(HealthStatus::Starting),
        });
        assert_eq!(p.reports[0].state, TaskState::Starting);
        let p = one(Seen::Running {
            health: Some(HealthStatus::Unhealthy),
        });
        assert_eq!(p.reports[0].error, "task: unhealthy container");
        assert_eq!(p.actions, vec![Action::Stop(TaskId(1))]);
    }

    #[test]
    fn a_task_whose_template_is_gone_is_rejected_not_started() {
        let mut x = a(1, TaskState::Running);
        x.template = None;
        let p = plan(&[x], &BTreeMap::new(), &BTreeSet::new(), &BTreeMap::new());
        assert!(p.actions.is_empty());
        assert_eq!(p.reports[0].state, TaskState::Rejected);
    }

    #[test]
    fn leaving_removes_the_containers_and_takes_the_next_clusters_first_set() {
        let mut b = Book::default();
        assert!(b.assign(Assignments {
            version: 500,
            tasks: vec![a(1, TaskState::Running)],
            net: NodeNet::default(),
        }));
        let mut seen = BTreeMap::new();
        seen.insert(
            TaskId(1),
            ("c1".to_string(), Seen::Running { health: None }),
        );
        assert!(
            b.reconcile(&seen).0.is_empty(),
            "its task runs: nothing to do"
        );
        b.leave();
        assert_eq!(
            b.reconcile(&seen).0,
            vec![Action::Remove {
                task: TaskId(1),
                container: "c1".into()
            }]
        );
        b.done(TaskId(1));
        // A new cluster counts its versions from its own start.
        assert!(b.assign(Assignments {
            version: 3,
            tasks: vec![a(2, TaskState::Running)],
            net: NodeNet::default(),
        }));
        assert_eq!(
            b.reconcile(&BTreeMap::new()).0,
            vec![Action::Start(TaskId(2))]
        );
        assert!(!b.assign(Assignments {
            version: 2,
            tasks: vec![],
            net: NodeNet::default(),
        }));
    }
}

//! The agent: carries out `services::agent`'s decisions on this node through the engine.
//! One thread owns the node's assignments and what it last reported; pulls, starts,
//! stops and removals each run on a thread of their own (a pull can take minutes, and
//! must not hold up a stop), and report back when done. Nothing is kept on disk: a
//! restarted daemon finds its tasks' containers by their labels.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::engine::Engine;
use super::netplane::{Plane, Wiring};
use crate::api::RunRequest;
use crate::model::container::{LogLimits, NetworkMode, RestartPolicy, Status};
use crate::raft::NodeId;
use crate::services::agent::{
    Action, AgentStatus, Assignment, Assignments, AttachWant, Book, NodeDescription, Seen,
    LABEL_NODE, LABEL_SERVICE, LABEL_SERVICE_ID, LABEL_TASK,
};
use crate::services::spec::Protocol;
use crate::services::store::{TaskId, TaskReport};
use crate::services::task::TaskState;

/// How often the agent looks at its containers and tells the leader where its tasks
/// are (also at once on every change).
const TICK: Duration = Duration::from_secs(1);

/// How long a task on a network keeps serving after it left the balancers and DNS,
/// before its stop signal: the other nodes' tables are a dispatch away (milliseconds,
/// or one status exchange when a message was lost).
const DRAIN: Duration = Duration::from_secs(1);

/// How long a new task's container is given to listen on its service's published
/// target ports before it is reported running anyway (Docker never waits: a task
/// joined the balancers while its server was still starting, and a rolling update
/// lost the requests sent to it meanwhile).
const LISTEN_WAIT: Duration = Duration::from_secs(10);

/// How often the socket tables are read meanwhile: a new task's start is measured in
/// tens of milliseconds, and a read of four small files costs microseconds.
const LISTEN_POLL: Duration = Duration::from_millis(10);

enum Msg {
    Assign(Box<Assignments>),
    /// The node left its cluster.
    Leave,
    /// A worker thread's word on a task (intermediate or final).
    Report(TaskReport),
    /// A worker thread finished with a task (or a container, by task id).
    Done(TaskId),
    /// A standalone container is to join an attachable network: its wiring (or why
    /// not) goes back on `reply` once the leader answered.
    Attach {
        want: AttachWant,
        reply: mpsc::Sender<Result<Wiring, String>>,
    },
    /// A standalone container is gone: its attachment goes.
    Detach(String),
}

/// The node loop's side: assignments in, statuses out.
pub struct Agent {
    tx: mpsc::Sender<Msg>,
    pub status: smol::channel::Receiver<AgentStatus>,
}

/// How long `run --network <net>` waits for the leader to attach its container.
const ATTACH_WAIT: Duration = Duration::from_secs(20);

/// The engine's way to the agent for standalone containers on attachable networks.
#[derive(Clone)]
pub struct AttachHandle {
    tx: mpsc::Sender<Msg>,
}

impl AttachHandle {
    /// Asks the leader to attach a container and wires its namespace; waits for both.
    pub fn attach(&self, want: AttachWant) -> Result<Wiring, String> {
        let network = want.network.clone();
        let (reply, answer) = mpsc::channel();
        self.tx
            .send(Msg::Attach { want, reply })
            .map_err(|_| "the node's agent is gone".to_string())?;
        match answer.recv_timeout(ATTACH_WAIT) {
            Ok(r) => r,
            Err(_) => Err(format!(
                "network {network}: no answer from the managers in {} s",
                ATTACH_WAIT.as_secs()
            )),
        }
    }

    pub fn detach(&self, container: &str) {
        let _ = self.tx.send(Msg::Detach(container.to_string()));
    }
}

impl Agent {
    pub fn attach_handle(&self) -> AttachHandle {
        AttachHandle {
            tx: self.tx.clone(),
        }
    }

    pub fn assign(&self, a: Box<Assignments>) {
        let _ = self.tx.send(Msg::Assign(a));
    }

    /// The node is out of its cluster: its tasks' containers go.
    pub fn leave(&self) {
        let _ = self.tx.send(Msg::Leave);
    }
}

pub fn spawn(
    engine: Arc<Engine>,
    node: NodeId,
    hostname: String,
    labels: &[(String, String)],
    data_dir: &std::path::Path,
    net: super::netplane::PlaneConfig,
) -> anyhow::Result<Agent> {
    let (tx, rx) = mpsc::channel();
    let (status_tx, status) = smol::channel::bounded(4);
    let desc = describe(labels);
    let worker_tx = tx.clone();
    let plane = Plane::new(super::netplane::netns_dir(data_dir), net);
    std::thread::Builder::new()
        .name("agent".into())
        .spawn(move || {
            let mut a = Loop {
                engine,
                node,
                hostname,
                desc,
                book: Book::default(),
                plane,
                tx: worker_tx,
                pending: BTreeMap::new(),
                held: BTreeMap::new(),
            };
            a.run(rx, status_tx)
        })?;
    Ok(Agent { tx, status })
}

fn describe(labels: &[(String, String)]) -> NodeDescription {
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|kb| kb.parse::<u64>().ok())
                })
        })
        .map_or(0, |kb| kb * 1024);
    NodeDescription {
        os: std::env::consts::OS.to_string(),
        arch: std::env::consts::ARCH.to_string(),
        engine_labels: labels.iter().cloned().collect(),
        nano_cpus: crate::runtime::spec::host_cpus() as u64 * 1_000_000_000,
        memory,
    }
}

struct Loop {
    engine: Arc<Engine>,
    node: NodeId,
    /// For `{{.Node.Hostname}}` in a task's hostname and environment.
    hostname: String,
    desc: NodeDescription,
    book: Book,
    plane: Plane,
    tx: mpsc::Sender<Msg>,
    /// `run --network` requests waiting for the leader's answer, by container id.
    pending: BTreeMap<String, (AttachWant, mpsc::Sender<Result<Wiring, String>>)>,
    /// Attachments answered, held until their container goes (its record may not be
    /// written yet when the agent next looks).
    held: BTreeMap<String, AttachWant>,
}

impl Loop {
    fn run(&mut self, rx: mpsc::Receiver<Msg>, out: smol::channel::Sender<AgentStatus>) {
        let mut next_status = Instant::now();
        loop {
            let wait = next_status.saturating_duration_since(Instant::now());
            let mut changed = match rx.recv_timeout(wait) {
                Ok(m) => self.take(m),
                Err(mpsc::RecvTimeoutError::Timeout) => false,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            while let Ok(m) = rx.try_recv() {
                changed |= self.take(m);
            }
            if !changed && Instant::now() < next_status {
                continue;
            }
            changed |= self.reconcile();
            if changed || Instant::now() >= next_status {
                let st = self.book.status(&self.desc);
                // A full queue means the loop is behind: the next tick says it all again.
                if out.try_send(st).is_err() && out.is_closed() {
                    return;
                }
                next_status = Instant::now() + TICK;
            }
        }
    }

    /// Takes a message in; says whether anything changed.
    fn take(&mut self, m: Msg) -> bool {
        match m {
            Msg::Assign(a) => {
                // Refusals are answers, not state: heard even in a set of the same
                // version as the one held (nothing was committed to refuse).
                for (c, why) in &a.net.attach_refused {
                    if let Some((_, reply)) = self.pending.remove(c) {
                        let _ = reply.send(Err(why.clone()));
                    }
                }
                let net = a.net.clone();
                let taken = self.book.assign(*a);
                if taken {
                    self.plane.set(net);
                    self.answer_attachments();
                }
                taken
            }
            Msg::Attach { want, reply } => {
                if self.book.waiting() {
                    let _ = reply.send(Err(format!(
                        "network {}: this node is in no swarm (attachable networks are the cluster's)",
                        want.network
                    )));
                    return false;
                }
                self.pending.insert(want.container.clone(), (want, reply));
                // Wired already (a restart of the container): answered at once.
                self.answer_attachments();
                true
            }
            Msg::Detach(container) => {
                self.pending.remove(&container);
                self.held.remove(&container);
                self.plane.detach(&container);
                true
            }
            Msg::Leave => {
                self.book.leave();
                true
            }
            Msg::Report(r) => self.book.note(r),
            Msg::Done(t) => {
                self.book.done(t);
                true
            }
        }
    }

    /// Answers the `run --network` requests the last set decides: wired, or refused.
    fn answer_attachments(&mut self) {
        let ids: Vec<String> = self.pending.keys().cloned().collect();
        for id in ids {
            if let Some(r) = self.plane.attach(&id) {
                if let Some((want, reply)) = self.pending.remove(&id) {
                    if r.is_ok() {
                        self.held.insert(id, want);
                    }
                    let _ = reply.send(r);
                }
            }
        }
    }

    /// Looks at the containers and acts; says whether a task's state changed.
    fn reconcile(&mut self) -> bool {
        // Not a container list a second on a node in no swarm.
        if self.book.waiting() {
            return false;
        }
        let (seen, mut wants) = match self.seen() {
            Ok(s) => s,
            Err(e) => {
                warning!("agent: cannot list containers: {e}");
                return false;
            }
        };
        let asked = self.pending.values().map(|(w, _)| w);
        for want in asked.chain(self.held.values()) {
            if !wants.iter().any(|w| w.container == want.container) {
                wants.push(want.clone());
            }
        }
        wants.sort();
        let containers: BTreeSet<String> = wants.iter().map(|w| w.container.clone()).collect();
        self.book.attach = Some(wants);
        let (actions, changed) = self.book.reconcile(&seen);
        let keep = self.book.wired(&seen);
        let book = &self.book;
        self.plane.tidy(&keep, &containers, |t| book.assignment(t));
        for a in actions {
            self.act(a, &seen);
        }
        changed
    }

    /// The tasks' containers, and the standalone containers on attachable networks.
    #[allow(clippy::type_complexity)]
    fn seen(&self) -> Result<(BTreeMap<TaskId, (String, Seen)>, Vec<AttachWant>), String> {
        let mut out = BTreeMap::new();
        let mut wants = Vec::new();
        for v in self.engine.containers.list()? {
            if let NetworkMode::Attach(network) = &v.record.spec.network {
                wants.push(AttachWant {
                    container: v.record.id.clone(),
                    name: v.record.name.clone(),
                    network: network.clone(),
                });
            }
            let Some(task) = v
                .record
                .spec
                .labels
                .get(LABEL_TASK)
                .and_then(|t| u64::from_str_radix(t, 16).ok())
            else {
                continue;
            };
            let seen = match &v.status {
                Status::Created => Seen::Created,
                Status::Running { .. } => Seen::Running {
                    health: v.health.as_ref().map(|h| h.status),
                },
                Status::Exited { code, .. } => Seen::Exited { code: *code },
            };
            out.insert(TaskId(task), (v.record.id.clone(), seen));
        }
        Ok((out, wants))
    }

    fn act(&mut self, a: Action, seen: &BTreeMap<TaskId, (String, Seen)>) {
        let engine = self.engine.clone();
        let tx = self.tx.clone();
        match a {
            Action::Start(task) => {
                let Some(asg) = self.book.assignment(task).cloned() else {
                    return self.book.done(task);
                };
                // Wired here, on the agent's thread (it owns the data plane), before
                // the container exists: a process that connects at once finds its
                // interfaces, balancer and DNS in place.
                let wiring = match self.plane.prepare(&asg) {
                    Ok(w) => w,
                    Err(e) => {
                        self.book.note(TaskReport {
                            task,
                            state: TaskState::Rejected,
                            message: "rejected".into(),
                            error: format!("networks: {e}"),
                        });
                        return self.book.done(task);
                    }
                };
                let node = self.node;
                let hostname = self.hostname.clone();
                spawn_worker(move || {
                    match start(&engine, node, &hostname, &asg, wiring) {
                        Ok(id) if !asg.ports.is_empty() => {
                            let _ = tx.send(Msg::Report(TaskReport {
                                task,
                                state: TaskState::Starting,
                                message: "starting".into(),
                                error: String::new(),
                            }));
                            await_listening(&engine, &id, &asg.ports);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            let _ = tx.send(Msg::Report(TaskReport {
                                task,
                                state: TaskState::Rejected,
                                message: "rejected".into(),
                                error: e,
                            }));
                        }
                    }
                    let _ = tx.send(Msg::Done(task));
                });
            }
            Action::Stop(task) => {
                let Some((container, _)) = seen.get(&task).cloned() else {
                    return self.book.done(task);
                };
                let asg = self.book.assignment(task);
                let grace = asg
                    .and_then(|t| t.template.as_ref())
                    .map_or(10, |tpl| tpl.stop_grace_ms.div_ceil(1000) as i64);
                let desired = asg.map_or(TaskState::Shutdown, |t| t.desired);
                // The same set that stops it took it out of every balancer and DNS
                // table: let that reach the other nodes before the signal, so no new
                // connection is sent to a task on its way out.
                let drain = asg.is_some_and(|t| !t.addrs.is_empty());
                spawn_worker(move || {
                    if drain {
                        std::thread::sleep(DRAIN);
                    }
                    match engine.containers.stop(&container, Some(grace)) {
                        Ok(_) if desired > TaskState::Running => {
                            let _ = tx.send(Msg::Report(TaskReport {
                                task,
                                state: TaskState::Shutdown,
                                message: "shutdown".into(),
                                error: String::new(),
                            }));
                        }
                        Ok(_) => {}
                        Err(e) => warning!("agent: cannot stop container {container}: {e}"),
                    }
                    let _ = tx.send(Msg::Done(task));
                });
            }
            Action::Remove { task, container } => {
                spawn_worker(move || {
                    if let Err(e) = engine.containers.remove(&container, true) {
                        warning!("agent: cannot remove container {container}: {e}");
                    }
                    let _ = tx.send(Msg::Done(task));
                });
            }
        }
    }
}

fn spawn_worker(f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new()
        .name("agent-task".into())
        .spawn(f)
    {
        error!("agent: cannot start a thread: {e}");
    }
}

/// Pulls the image unless the node has it, with Docker's words for a missing one (what
/// `service ps` shows in ERROR).
fn pull_if_missing(engine: &Engine, image: &str) -> Result<(), String> {
    use crate::image::pull::{pull, PullError};
    use crate::image::store::StoreError;
    match engine.store.resolve(image) {
        Ok(_) => return Ok(()),
        Err(StoreError::NotFound(_)) => {}
        Err(e) => return Err(e.to_string()),
    }
    let r = crate::image::reference::Reference::parse(image).map_err(|e| e.to_string())?;
    let platform = crate::image::oci::Platform::host();
    match pull(&engine.store, &r, &platform, &engine.registry, &|_| {}) {
        Ok(_) => Ok(()),
        Err(PullError::NotFound(_)) => Err(format!("No such image: {image}")),
        Err(e) => Err(format!("pulling {image}: {e}")),
    }
}

/// Pulls (if needed), creates and starts a task's container, in its wired namespace if
/// it has one. Returns the container's id.
fn start(
    engine: &Engine,
    node: NodeId,
    hostname: &str,
    a: &Assignment,
    wiring: Option<Wiring>,
) -> Result<String, String> {
    let tpl = a
        .template
        .as_ref()
        .ok_or("the service no longer holds this task's spec")?;
    pull_if_missing(engine, &tpl.image)?;
    let mut spec = tpl.container.clone();
    if let Some(h) = &spec.hostname {
        spec.hostname = Some(a.expand(h, hostname));
    }
    // Values only, as Docker's: a variable's name is not a template.
    for e in &mut spec.env {
        if let Some((k, v)) = e.split_once('=') {
            *e = format!("{k}={}", a.expand(v, hostname));
        }
    }
    spec.labels.insert(LABEL_TASK.into(), a.task.to_string());
    spec.labels
        .insert(LABEL_SERVICE.into(), a.service_name.clone());
    spec.labels
        .insert(LABEL_SERVICE_ID.into(), a.service.to_string());
    spec.labels.insert(LABEL_NODE.into(), node.to_string());
    if let Some(w) = wiring {
        w.write_hosts(spec.hostname.as_deref())?;
        // The embedded DNS server and the hosts file, unless the spec mounts its own.
        spec.join_netns(Path::new(&w.netns), &w.resolv_conf, &w.hosts);
    }
    let req = RunRequest {
        image: tpl.image.clone(),
        name: Some(a.container_name()),
        spec,
        stop_signal: tpl.stop_signal.clone(),
        stop_timeout: Some(tpl.stop_grace_ms.div_ceil(1000) as i64),
        auto_remove: false,
        auth: None,
        health: tpl.health.clone(),
        log: LogLimits::default(),
        restart: RestartPolicy::No,
    };
    engine.run(req, &|_| {})
}

/// Waits (at most `LISTEN_WAIT`) until container `id` has a socket on each of `ports`
/// in its network namespace: listening for TCP, bound for UDP. Read from the kernel's
/// socket tables as its process sees them (`/proc/<pid>/net/*`), so nothing connects
/// to the task and nothing enters its namespace. Returns early if the container stops.
fn await_listening(engine: &Engine, id: &str, ports: &[(Protocol, u16)]) {
    let Ok(Status::Running { pid, .. }) = engine.containers.find(id).map(|v| v.status) else {
        return;
    };
    let until = Instant::now() + LISTEN_WAIT;
    let proc = std::path::PathBuf::from(format!("/proc/{pid}/net"));
    while Instant::now() < until {
        // Its process is gone: no tables.
        let Some(bound) = super::sockets::bound(&proc) else {
            return;
        };
        if ports.iter().all(|p| bound.contains(p)) {
            return;
        }
        std::thread::sleep(LISTEN_POLL);
    }
    warning!(
        "agent: container {} does not listen on {} after {} s; it joins its balancers anyway",
        &id[..12.min(id.len())],
        ports
            .iter()
            .map(|(p, n)| format!("{n}/{}", p.name()))
            .collect::<Vec<_>>()
            .join(", "),
        LISTEN_WAIT.as_secs()
    );
}

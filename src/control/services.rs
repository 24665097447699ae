//! Services in the control core: the leader runs the orchestrator, hands each node its
//! assignments and turns agents' reports into commands; every node passes what its
//! agent says to the leader; `service ...` requests are served here.
//!
//! The orchestrator runs on the leader only, with a current state, one round in flight
//! at a time (so a round always sees what the last one did), whenever the state changed
//! or a delay it asked for ran out.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::core::{Control, Effect, NodeState, Reply};
use super::msg::PeerMsg;
use crate::api::{NetworkView, Request, Response, ServiceView, TaskView};
use crate::cluster::{ClusterState, Command, NodeRecord, NodeStatus};
use crate::raft::NodeId;
use crate::services::agent::{AgentStatus, Assignment, Assignments, AttachWant};
use crate::services::constraint::NodeFacts;
use crate::services::network::{Network, NetworkCommand, NodeAt};
use crate::services::orchestrator::{reconcile, NodeInfo};
use crate::services::scheduler::Resources;
use crate::services::spec::{Mode, ServiceSpec};
use crate::services::store::{Service, ServiceCommand, TaskId, TaskReport};
use crate::services::task::TaskState;
use crate::services::{NetworkId, ServiceId};
use crate::transport::PeerKey;

/// The leader's side of services.
#[derive(Debug, Default)]
pub(super) struct Orchestration {
    /// A round is proposed and not yet applied (or refused).
    pub in_flight: bool,
    /// The state changed since the last round.
    pub due: bool,
    /// A delay ends: run a round then.
    pub wake: Option<Instant>,
    /// Tasks changed: the nodes' sets may have.
    pub assign_due: bool,
    /// Per node, a hash of the set last sent and its version.
    pub sent: BTreeMap<NodeId, ([u8; 32], u64)>,
    /// The last round was refused (a leadership transfer under way): the next waits
    /// until then rather than spin.
    pub refused: bool,
    pub hold_until: Option<Instant>,
    /// Per node, its containers that could not be attached and why; sent back with its
    /// set until it no longer asks.
    pub attach_refused: BTreeMap<NodeId, BTreeMap<String, String>>,
}

/// How long a refused round waits before the next.
const ROUND_RETRY: Duration = Duration::from_millis(100);

impl Orchestration {
    /// Leadership (re)gained, or the state replaced: start over.
    pub fn reset(&mut self) {
        *self = Orchestration {
            due: true,
            assign_due: true,
            ..Orchestration::default()
        };
    }
}

const NOT_FOUND: &str = "not found";

impl Control {
    /// The cluster's wall clock, in milliseconds since the epoch, as the driver last set
    /// it (commands carry it; the cores never read a clock).
    pub(super) fn wall_ms(&self, now: Instant) -> u64 {
        let Some((at, ms)) = self.wall else { return 0 };
        ms.saturating_add(u64::try_from(now.saturating_duration_since(at).as_millis()).unwrap_or(0))
    }

    /// What this node's agent says: to the leader, or, when we are the leader, acted on.
    pub(super) fn on_agent_status(&mut self, now: Instant, st: AgentStatus) {
        let me = self.me.id;
        if self.is_leader() {
            return self.agent_status_from(now, me, st);
        }
        let msg = PeerMsg::AgentStatus(Box::new(st));
        if let Some(l) = self.manager().and_then(|m| m.raft().leader) {
            return self.send_id(l, msg);
        }
        // A worker does not know who leads: it tells every manager it knows, and only
        // the leader listens.
        let managers: Vec<PeerKey> = match &self.state {
            NodeState::Worker(w) => w.manager_keys(me),
            NodeState::Manager(m) => m
                .cluster_ref()
                .map(|c| c.managers().filter(|n| n.id != me).map(|n| n.key).collect())
                .unwrap_or_default(),
            _ => return,
        };
        for k in managers {
            self.send(k, msg.clone());
        }
    }

    /// The leader hears a node's agent.
    ///
    /// Reports are proposed even while the state lags what Raft committed: each is
    /// checked again when applied (a report at or below the recorded state, or from a
    /// node the task is not on, is dropped), so a stale state can only let a needless
    /// one through. The lag is the rule, not the exception: a leader counts its own
    /// log as matched before the entries are durable, so from any proposal until its
    /// fsync the state is behind, and a report dropped then waited for the agent's next
    /// tick (1 s) — half the creates of 3 replicas took 1.05 s instead of 0.05 s.
    /// Describing a node and sending its set again act on the state: current only.
    pub(super) fn agent_status_from(&mut self, now: Instant, node: NodeId, st: AgentStatus) {
        let current = self.manager().is_some_and(|m| m.state_is_current());
        let Some(c) = self.cluster().filter(|_| self.is_leader()) else {
            return;
        };
        if !c.nodes.contains_key(&node) {
            return;
        }
        let changes: Vec<TaskReport> = st
            .reports
            .into_iter()
            .filter(|r| {
                c.services
                    .tasks
                    .get(&r.task)
                    .is_some_and(|t| t.node == Some(node) && t.state.may_become(r.state))
            })
            .collect();
        let describe = current && c.services.nodes.get(&node) != Some(&st.desc);
        let stale = current
            && self
                .manager()
                .and_then(|m| m.orch.sent.get(&node))
                .is_none_or(|(_, v)| *v != st.have);
        let at_ms = self.wall_ms(now);
        if !changes.is_empty() {
            let cmd = ServiceCommand::Report {
                node,
                at_ms,
                reports: changes,
            };
            self.propose_quietly(Command::Service(Box::new(cmd)));
        }
        if describe {
            let cmd = ServiceCommand::Describe {
                node,
                desc: st.desc,
            };
            self.propose_quietly(Command::Service(Box::new(cmd)));
        }
        let refusals_changed = match (current, st.attach) {
            (true, Some(wants)) => self.attachments_from(node, wants),
            _ => false,
        };
        if stale || refusals_changed {
            // Its set was lost on the way, or this leader never sent one, or it has a
            // refusal to hear.
            self.dispatch(Some(node));
        }
    }

    /// A node's wanted attachments against the state's: the missing ones proposed (or
    /// refused, saying why), the unwanted ones detached. Says whether the node's
    /// refusals changed.
    fn attachments_from(&mut self, node: NodeId, wants: Vec<AttachWant>) -> bool {
        let Some(c) = self.cluster() else {
            return false;
        };
        let mut cmds = Vec::new();
        let mut refused = BTreeMap::new();
        for w in &wants {
            if c.networks
                .attachments
                .contains_key(&(node, w.container.clone()))
            {
                continue;
            }
            let attach = c.networks.resolve(&w.network).map_err(|e| e.to_string());
            let checked = attach.and_then(|n| {
                let cmd = Command::Network(Box::new(NetworkCommand::Attach {
                    node,
                    container: w.container.clone(),
                    name: w.name.clone(),
                    network: n.id,
                }));
                c.validate(&cmd).map(|()| cmd).map_err(|e| e.to_string())
            });
            match checked {
                Ok(cmd) => cmds.push(cmd),
                Err(e) => {
                    refused.insert(w.container.clone(), e);
                }
            }
        }
        for (n, container) in c.networks.attachments.keys() {
            if *n == node && !wants.iter().any(|w| w.container == *container) {
                cmds.push(Command::Network(Box::new(NetworkCommand::Detach {
                    node,
                    container: container.clone(),
                })));
            }
        }
        for cmd in cmds {
            self.propose_quietly(cmd);
        }
        let Some(m) = self.manager_mut() else {
            return false;
        };
        let before = m
            .orch
            .attach_refused
            .get(&node)
            .cloned()
            .unwrap_or_default();
        if before == refused {
            return false;
        }
        if refused.is_empty() {
            m.orch.attach_refused.remove(&node);
        } else {
            m.orch.attach_refused.insert(node, refused);
        }
        true
    }

    /// Assignments from a manager (the leader) for this node's agent.
    pub(super) fn on_assign(&mut self, from: PeerKey, a: Assignments) {
        if self.is_from_manager(&from) {
            self.emit(Effect::Assign(Box::new(a)));
        } else {
            self.count_ignored();
        }
    }

    /// Whether `from` is a manager of our cluster: as our state says on a manager, as
    /// our membership file and gossip say on a worker.
    pub(super) fn is_from_manager(&self, from: &PeerKey) -> bool {
        match &self.state {
            NodeState::Worker(w) => w.manager_keys(self.me.id).contains(from),
            NodeState::Manager(m) => m
                .cluster_ref()
                .and_then(|c| c.node_by_key(from))
                .is_some_and(|n| n.role == crate::cluster::NodeRole::Manager),
            _ => false,
        }
    }

    /// Runs what is due: assignments out, then an orchestration round.
    pub(super) fn orchestrate(&mut self, now: Instant) {
        let current = self.manager().is_some_and(|m| m.state_is_current());
        if !self.is_leader() || !current {
            return;
        }
        let Some(m) = self.manager_mut() else { return };
        if std::mem::take(&mut m.orch.refused) {
            m.orch.hold_until = Some(now + ROUND_RETRY);
        }
        if m.orch.hold_until.is_some_and(|h| now >= h) {
            m.orch.hold_until = None;
        }
        let held = m.orch.hold_until.is_some();
        let (assign_due, busy) = (m.orch.assign_due, m.orch.in_flight || held);
        let due = m.orch.due || m.orch.wake.is_some_and(|w| now >= w);
        if assign_due {
            self.dispatch(None);
        }
        if busy || !due {
            return;
        }
        let at_ms = self.wall_ms(now);
        let Some(c) = self.cluster() else { return };
        if c.services.services.is_empty() && c.services.tasks.is_empty() {
            if let Some(m) = self.manager_mut() {
                m.orch.due = false;
                m.orch.wake = None;
            }
            return;
        }
        let round = {
            let infos: Vec<NodeInfo<'_>> = c
                .nodes
                .values()
                .map(|n| {
                    let d = c.services.nodes.get(&n.id);
                    NodeInfo {
                        facts: node_facts(c, n),
                        ready: n.status == NodeStatus::Ready,
                        availability: n.availability,
                        capacity: Resources {
                            nano_cpus: d.map_or(0, |d| d.nano_cpus),
                            memory: d.map_or(0, |d| d.memory),
                        },
                    }
                })
                .collect();
            reconcile(&c.services, &infos, at_ms)
        };
        let wake = round.wake_ms.map(|w| {
            let ms = w.saturating_sub(at_ms);
            now + Duration::from_millis(ms)
        });
        let Some(m) = self.manager_mut() else { return };
        m.orch.due = false;
        m.orch.wake = wake;
        if round.ops.is_empty() {
            return;
        }
        m.orch.in_flight = true;
        let cmd = ServiceCommand::Tasks {
            at_ms,
            ops: round.ops,
        };
        self.propose_round(Command::Service(Box::new(cmd)));
    }

    /// Sends every node whose set changed (or `only` that node) its assignments.
    fn dispatch(&mut self, only: Option<NodeId>) {
        let me = self.me.id;
        let Some(m) = self.manager() else { return };
        let Some(c) = m.cluster_ref() else { return };
        let version = m.applied_index();
        let mut sets: BTreeMap<NodeId, Vec<Assignment>> = c
            .nodes
            .keys()
            .filter(|n| only.is_none_or(|o| o == **n))
            .map(|n| (*n, Vec::new()))
            .collect();
        // Every node, also when only one is sent its set: its view names the others'
        // endpoints and serving tasks (a repair sent with only its own node in view
        // left a node with no tasks without backends for good).
        let nodes: BTreeMap<NodeId, NodeAt> = c
            .nodes
            .values()
            .map(|n| {
                let at = NodeAt {
                    addr: n.addr.ip(),
                    up: n.status == NodeStatus::Ready,
                };
                (n.id, at)
            })
            .collect();
        let mut views = c.networks.node_views(&c.services, &nodes);
        for t in c.services.tasks.values() {
            let Some(set) = t.node.and_then(|n| sets.get_mut(&n)) else {
                continue;
            };
            let svc = c.services.services.get(&t.service);
            let template = svc.and_then(|s| s.template(t.version));
            let mine = c.networks.tasks.get(&t.id);
            // The template's networks in order, then ingress (not in any template).
            let mut addrs: Vec<(NetworkId, std::net::Ipv4Addr)> = template
                .into_iter()
                .flat_map(|tm| tm.networks.iter())
                .filter_map(|n| {
                    let (id, ip) = mine?.iter().find(|(id, _)| id.to_string() == *n)?;
                    Some((*id, *ip))
                })
                .collect();
            if let Some(ing) = c
                .networks
                .ingress()
                .and_then(|i| Some((i.id, *mine?.get(&i.id)?)))
            {
                addrs.push(ing);
            }
            let mut ports: Vec<_> = svc
                .into_iter()
                .flat_map(|s| s.spec.endpoint.ports.iter())
                .map(|p| (p.protocol, p.target))
                .collect();
            ports.sort();
            ports.dedup();
            set.push(Assignment {
                addrs,
                ports,
                task: t.id,
                service: t.service,
                service_name: svc.map_or_else(String::new, |s| s.spec.name.clone()),
                slot: t.slot,
                node: t.node.unwrap_or(me),
                desired: t.desired,
                template: template.cloned(),
            });
        }
        let mut out = Vec::new();
        for (node, tasks) in sets {
            let mut net = views.remove(&node).unwrap_or_default();
            net.attach_refused = m
                .orch
                .attach_refused
                .get(&node)
                .map(|r| r.iter().map(|(c, e)| (c.clone(), e.clone())).collect())
                .unwrap_or_default();
            let bytes = postcard::to_allocvec(&(&tasks, &net)).unwrap_or_default();
            let h = crate::transport::crypto::hash(&[&bytes]);
            match m.orch.sent.get(&node) {
                // Unchanged: sent again only to repair a node that lost it.
                Some((old, v)) if *old == h => {
                    if only.is_some() {
                        out.push((node, h, *v, tasks, net));
                    }
                }
                // Nothing for a node this leader never told anything: it asks (its
                // status names the version it has) if it holds anything to drop. A
                // node with a view to act on (a port published) is told at once.
                None if tasks.is_empty() && net.is_idle() && only.is_none() => {}
                _ => out.push((node, h, version, tasks, net)),
            }
        }
        let Some(m) = self.manager_mut() else { return };
        if only.is_none() {
            m.orch.assign_due = false;
            let gone: Vec<NodeId> = m
                .orch
                .sent
                .keys()
                .filter(|n| !m.cluster_ref().is_some_and(|c| c.nodes.contains_key(n)))
                .copied()
                .collect();
            for n in gone {
                m.orch.sent.remove(&n);
            }
        }
        for (node, h, version, tasks, net) in out {
            if let Some(m) = self.manager_mut() {
                m.orch.sent.insert(node, (h, version));
            }
            let a = Assignments {
                version,
                tasks,
                net,
            };
            if node == me {
                self.emit(Effect::Assign(Box::new(a)));
            } else {
                self.send_id(node, PeerMsg::Assign(Box::new(a)));
            }
        }
    }

    // ---- requests ------------------------------------------------------------------

    /// Serves a service request as the leader.
    pub(super) fn serve_service(&mut self, now: Instant, req: Request, reply: Reply) {
        let at_ms = self.wall_ms(now);
        let Some(c) = self.cluster() else {
            return self.answer(reply, Response::Error("no cluster state yet".into()));
        };
        let result: Result<(Vec<ServiceCommand>, String), String> = match req {
            Request::ServiceCreate(mut spec) => {
                if let Err(e) = resolve_networks(c, &mut spec) {
                    return self.answer(reply, Response::Error(e));
                }
                let id = ServiceId(u64::from_le_bytes(
                    self.random16()[..8]
                        .try_into()
                        .expect("invariant: 16 bytes"),
                ));
                let ok = id.to_string();
                Ok((
                    vec![ServiceCommand::Create {
                        id,
                        spec: *spec,
                        at_ms,
                    }],
                    ok,
                ))
            }
            Request::ServiceUpdate {
                service,
                mut spec,
                rollback,
            } => resolve_networks(c, &mut spec)
                .and_then(|()| resolve(c, &service))
                .map(|s| {
                    let cmd = ServiceCommand::Update {
                        id: s.id,
                        spec: *spec,
                        at_ms,
                        rollback,
                    };
                    (vec![cmd], s.spec.name.clone())
                }),
            Request::ServiceScale(pairs) => scale(c, &pairs, at_ms),
            Request::ServiceRemove(names) => each_named(&names, |n| {
                resolve(c, n).map(|s| ServiceCommand::Remove(s.id))
            }),
            _ => Err("not a service request".into()),
        };
        let result = result.map(|(cmds, ok)| {
            let cmds = cmds.into_iter().map(|c| Command::Service(Box::new(c)));
            (cmds.collect(), ok)
        });
        self.propose_or_answer(result, reply);
    }

    /// Proposes a request's commands (answering `ok` once they apply), or answers why not.
    fn propose_or_answer(&mut self, result: Result<(Vec<Command>, String), String>, reply: Reply) {
        match result {
            Ok((cmds, ok)) => self.propose_checked(cmds, reply, ok),
            Err(e) => self.answer(reply, Response::Error(e)),
        }
    }

    /// Serves `network create` and `network rm` as the leader.
    pub(super) fn serve_network(&mut self, now: Instant, req: Request, reply: Reply) {
        let at_ms = self.wall_ms(now);
        let Some(c) = self.cluster() else {
            return self.answer(reply, Response::Error("no cluster state yet".into()));
        };
        let result: Result<(Vec<NetworkCommand>, String), String> = match req {
            Request::NetworkCreate(spec) => {
                let id = NetworkId(u64::from_le_bytes(
                    self.random16()[..8]
                        .try_into()
                        .expect("invariant: 16 bytes"),
                ));
                // An encrypted network's key, from the core's generator (ChaCha20 seeded
                // from the OS); made here, not in apply, which must be deterministic.
                let key = spec.encrypted().then(|| {
                    let (a, b) = (self.random16(), self.random16());
                    let mut k = [0u8; 32];
                    k[..16].copy_from_slice(&a);
                    k[16..].copy_from_slice(&b);
                    crate::services::network::NetSecret(k)
                });
                Ok((
                    vec![NetworkCommand::Create {
                        id,
                        spec: *spec,
                        at_ms,
                        key,
                    }],
                    id.to_string(),
                ))
            }
            Request::NetworkRemove(names) => each_named(&names, |n| {
                let net = c.networks.resolve(n).map_err(|e| e.to_string())?;
                Ok(NetworkCommand::Remove(net.id))
            }),
            _ => Err("not a network request".into()),
        };
        let result = result.map(|(cmds, ok)| {
            let cmds = cmds.into_iter().map(|c| Command::Network(Box::new(c)));
            (cmds.collect(), ok)
        });
        self.propose_or_answer(result, reply);
    }

    /// `service ls`, `service inspect`, `service ps`, `node ps` as of the applied state.
    pub(super) fn service_read(&self, req: &Request, asker: NodeId) -> Response {
        let Some(c) = self.cluster() else {
            return Response::Error("no cluster state yet".into());
        };
        match req {
            Request::ServiceList(names) => {
                let services: Vec<&Service> = match names {
                    None => c.services.services.values().collect(),
                    Some(names) => match names.iter().map(|n| resolve(c, n)).collect() {
                        Ok(v) => v,
                        Err(e) => return Response::Error(e),
                    },
                };
                Response::Services(services.into_iter().map(|s| service_view(c, s)).collect())
            }
            Request::TaskList { services, node } => {
                let ids: Option<Vec<ServiceId>> = match services.is_empty() {
                    true => None,
                    false => match services
                        .iter()
                        .map(|n| resolve(c, n).map(|s| s.id))
                        .collect()
                    {
                        Ok(v) => Some(v),
                        Err(e) => return Response::Error(e),
                    },
                };
                let node = match node {
                    None => None,
                    Some(n) => match self.resolve_node(n, asker) {
                        Ok(id) => Some(id),
                        Err(e) => return Response::Error(e),
                    },
                };
                let views = c
                    .services
                    .tasks
                    .values()
                    .filter(|t| ids.as_ref().is_none_or(|ids| ids.contains(&t.service)))
                    .filter(|t| node.is_none_or(|n| t.node == Some(n)))
                    .filter_map(|t| task_view(c, t.id))
                    .collect();
                Response::Tasks(views)
            }
            Request::NetworkList(names) => {
                let nets: Vec<&Network> = match names {
                    None => c.networks.nets.values().collect(),
                    Some(names) => match names.iter().map(|n| c.networks.resolve(n)).collect() {
                        Ok(v) => v,
                        Err(e) => return Response::Error(e.to_string()),
                    },
                };
                Response::Networks(nets.into_iter().map(|n| network_view(c, n)).collect())
            }
            _ => Response::Error("not a service read".into()),
        }
    }
}

/// One command per name, all or none, and the names as the answer (one a line, as
/// Docker prints what it removed).
fn each_named<C>(
    names: &[String],
    command: impl Fn(&str) -> Result<C, String>,
) -> Result<(Vec<C>, String), String> {
    let cmds = names
        .iter()
        .map(|n| command(n))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((cmds, names.join("\n")))
}

/// The networks a spec names, by id (a user gives names or id prefixes).
fn resolve_networks(c: &ClusterState, spec: &mut ServiceSpec) -> Result<(), String> {
    for n in &mut spec.task.networks {
        let net = c.networks.resolve(n).map_err(|e| e.to_string())?;
        *n = net.id.to_string();
    }
    Ok(())
}

fn network_view(c: &ClusterState, n: &Network) -> NetworkView {
    let key = n.id.to_string();
    let services = c
        .services
        .services
        .values()
        .filter(|s| {
            s.spec.task.networks.contains(&key)
                || c.networks
                    .vips
                    .get(&s.id)
                    .is_some_and(|v| v.contains_key(&n.id))
        })
        .map(|s| s.spec.name.clone())
        .collect();
    NetworkView {
        id: n.id,
        spec: n.spec.clone(),
        vni: n.vni,
        subnet: n.space.subnet.to_string(),
        gateway: n.space.gateway,
        ip_range: n.space.range.to_string(),
        created_ms: n.created_ms,
        services,
        used: n.space.used.len() as u64,
        capacity: n.space.capacity(),
    }
}

/// A node as constraints see it: its record and what its agent said it offers.
pub(crate) fn node_facts<'c>(c: &'c ClusterState, n: &'c NodeRecord) -> NodeFacts<'c> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    let d = c.services.nodes.get(&n.id);
    NodeFacts {
        id: n.id,
        hostname: &n.hostname,
        role: n.role,
        os: d.map_or("", |d| d.os.as_str()),
        arch: d.map_or("", |d| d.arch.as_str()),
        labels: &n.labels,
        engine_labels: d.map_or(&EMPTY, |d| &d.engine_labels),
    }
}

/// A service by name, full id, or unique id prefix.
fn resolve<'c>(c: &'c ClusterState, name: &str) -> Result<&'c Service, String> {
    if let Some(s) = c.services.by_name(name) {
        return Ok(s);
    }
    let hits: Vec<&Service> = c
        .services
        .services
        .values()
        .filter(|s| !name.is_empty() && s.id.to_string().starts_with(name))
        .collect();
    match hits.as_slice() {
        [one] => Ok(one),
        [] => Err(format!("service {name} {NOT_FOUND}")),
        _ => Err(format!(
            "service {name} is ambiguous ({} matches)",
            hits.len()
        )),
    }
}

fn scale(
    c: &ClusterState,
    pairs: &[(String, u64)],
    at_ms: u64,
) -> Result<(Vec<ServiceCommand>, String), String> {
    let mut cmds = Vec::new();
    let mut lines = Vec::new();
    for (name, n) in pairs {
        let s = resolve(c, name)?;
        let mut spec: ServiceSpec = s.spec.clone();
        match &mut spec.mode {
            Mode::Replicated { replicas } => *replicas = *n,
            Mode::ReplicatedJob { total, .. } => *total = *n,
            _ => {
                return Err(format!(
                    "{name}: scale can only be used with replicated or replicated-job mode"
                ))
            }
        }
        cmds.push(ServiceCommand::Update {
            id: s.id,
            spec,
            at_ms,
            rollback: false,
        });
        lines.push(format!("{name} scaled to {n}"));
    }
    Ok((cmds, lines.join("\n")))
}

fn service_view(c: &ClusterState, s: &Service) -> ServiceView {
    let ready = |n: Option<NodeId>| {
        n.and_then(|n| c.nodes.get(&n))
            .is_some_and(|n| n.status == NodeStatus::Ready)
    };
    let tasks = c.services.tasks.values().filter(|t| t.service == s.id);
    let (mut running, mut live, mut completed) = (0, 0, 0);
    for t in tasks {
        if t.desired == TaskState::Running && t.state == TaskState::Running && ready(t.node) {
            running += 1;
        }
        if t.desired <= TaskState::Running && !t.state.is_terminal() {
            live += 1;
        }
        if t.state == TaskState::Complete && t.version == s.version {
            completed += 1;
        }
    }
    let desired = match s.spec.mode {
        Mode::Replicated { replicas } => replicas,
        Mode::ReplicatedJob { total, .. } => total,
        Mode::Global | Mode::GlobalJob => live,
    };
    let vips = c
        .networks
        .vips
        .get(&s.id)
        .into_iter()
        .flatten()
        .filter_map(|(net, ip)| {
            let n = c.networks.nets.get(net)?;
            Some((*net, n.spec.name.clone(), *ip, n.space.subnet.prefix))
        })
        .collect();
    ServiceView {
        id: s.id,
        vips,
        published: c.networks.published.get(&s.id).cloned().unwrap_or_default(),
        spec: s.spec.clone(),
        previous: s.previous.as_ref().map(|(_, p)| p.clone()),
        version: s.version,
        created_ms: s.created_ms,
        updated_ms: s.updated_ms,
        update: s.update.clone(),
        running,
        desired,
        completed,
    }
}

fn task_view(c: &ClusterState, id: TaskId) -> Option<TaskView> {
    let t = c.services.tasks.get(&id)?;
    let svc = c.services.services.get(&t.service);
    let node = t.node.and_then(|n| c.nodes.get(&n));
    Some(TaskView {
        id: t.id,
        service_id: t.service,
        service: svc.map_or_else(|| t.service.to_string(), |s| s.spec.name.clone()),
        slot: t.slot,
        node_id: t.node,
        node: node.map(|n| n.hostname.clone()),
        node_down: t.node.is_some() && node.is_none_or(|n| n.status != NodeStatus::Ready),
        image: t.image.clone(),
        version: t.version,
        desired: t.desired,
        state: t.state,
        message: t.message.clone(),
        error: t.error.clone(),
        created_ms: t.created_ms,
        state_ms: t.state_ms,
    })
}

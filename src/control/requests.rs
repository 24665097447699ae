//! API requests: which node serves each, and how. Requests that read or change the
//! cluster state are served by the leader; a follower manager forwards them.

use std::net::SocketAddr;
use std::time::Instant;

use super::core::{Control, Effect, NodeState, Reply, RequestId, DEFAULT_PORT};
use crate::api::{NodeView, Request, Response};
use crate::cluster::token::{JoinToken, TokenRole};
use crate::cluster::{self, Availability, Command, NodeRole, NodeStatus};
use crate::raft::{NodeId, ProposeError, Role};
use crate::services::ipam::Pools;
use crate::transport::PeerKey;

/// A join as the leader sees it.
#[derive(Debug)]
pub(super) struct JoinAsk {
    pub key: PeerKey,
    pub role: TokenRole,
    pub hostname: String,
    pub advertise: SocketAddr,
    pub labels: Vec<(String, String)>,
}

const NOT_A_MANAGER: &str = "this node is not a swarm manager: worker nodes can't be used to view or modify cluster state; run the command on a manager";
const NOT_IN_SWARM: &str = "this node is not part of a swarm";

/// Requests served by the leader only.
fn needs_leader(req: &Request) -> bool {
    matches!(
        req,
        Request::NodeList
            | Request::NodeInspect { .. }
            | Request::NodeUpdate { .. }
            | Request::NodeSetRole { .. }
            | Request::NodeRemove { .. }
            | Request::JoinToken { rotate: true, .. }
            | Request::ServiceCreate(_)
            | Request::ServiceUpdate { .. }
            | Request::ServiceScale(_)
            | Request::ServiceRemove(_)
            | Request::ServiceList(_)
            | Request::TaskList { .. }
            | Request::NetworkCreate(_)
            | Request::NetworkList(_)
            | Request::NetworkRemove(_)
    )
}

impl Control {
    /// A request from this node's CLI.
    pub(super) fn on_local_request(&mut self, now: Instant, id: RequestId, req: Request) {
        let error = |c: &mut Control, why: String| {
            c.emit(Effect::Answer {
                id,
                resp: Response::Error(why),
            })
        };
        match req {
            Request::Init {
                listen,
                advertise,
                snapshot_interval,
                pools,
            } => self.init(id, listen, advertise, snapshot_interval, pools),
            Request::Join {
                token,
                manager,
                listen,
                advertise,
            } => self.join(now, id, &token, manager, listen, advertise),
            Request::Leave { force } => self.leave(id, force),
            Request::JoinToken {
                role,
                rotate: false,
            } => {
                let resp = self.print_token(role);
                self.emit(Effect::Answer { id, resp });
            }
            // A load is not forwarded: it runs longer than a forwarded request may wait.
            req @ Request::DebugWrite { .. } => match self.is_leader() {
                true => {
                    let me = self.me.id;
                    self.serve(now, req, Reply::Local(id), me)
                }
                false => error(self, "debug write runs on the leader only".into()),
            },
            // Served by this manager itself: logs are read on the nodes, not from the
            // cluster state.
            Request::NodeLogs { node, reads } => match &self.state {
                NodeState::Manager(_) => self.start_log_read(now, id, node, reads),
                NodeState::Worker(_) => error(self, NOT_A_MANAGER.into()),
                _ => error(self, NOT_IN_SWARM.into()),
            },
            Request::Info | Request::Image(_) | Request::Container(_) => error(
                self,
                "this request is served by the daemon itself, not the control core".into(),
            ),
            req if needs_leader(&req) => match &self.state {
                NodeState::Manager(m) => {
                    let (role, leader) = (m.raft().role, m.raft().leader);
                    let me = self.me.id;
                    match (role, leader) {
                        (Role::Leader, _) => self.serve(now, req, Reply::Local(id), me),
                        (_, Some(l)) if l != me => self.forward(now, id, req, l),
                        _ => error(self, ProposeError::NotLeader(None).to_string()),
                    }
                }
                NodeState::Worker(_) => error(self, NOT_A_MANAGER.into()),
                _ => error(self, NOT_IN_SWARM.into()),
            },
            _ => error(self, "unexpected request".into()),
        }
    }

    /// Serves a cluster request as the leader; `asker` is the node whose CLI asked.
    pub(super) fn serve(&mut self, now: Instant, req: Request, reply: Reply, asker: NodeId) {
        if !self.is_leader() {
            let leader = self.manager().and_then(|m| m.raft().leader);
            let resp = Response::Error(ProposeError::NotLeader(leader).to_string());
            return self.answer(reply, resp);
        }
        match req {
            Request::NodeList => self.start_read(None, reply, asker),
            Request::NodeInspect { nodes } => self.start_read(Some(nodes), reply, asker),
            req
            @ (Request::ServiceList(_) | Request::TaskList { .. } | Request::NetworkList(_)) => {
                self.start_service_read(req, reply, asker)
            }
            req @ (Request::NetworkCreate(_) | Request::NetworkRemove(_)) => {
                self.serve_network(now, req, reply)
            }
            req @ (Request::ServiceCreate(_)
            | Request::ServiceUpdate { .. }
            | Request::ServiceScale(_)
            | Request::ServiceRemove(_)) => self.serve_service(now, req, reply),
            Request::NodeUpdate {
                node,
                availability,
                label_add,
                label_rm,
            } => self.node_update(&node, availability, label_add, label_rm, reply, asker),
            Request::NodeSetRole { nodes, role } => self.set_roles(&nodes, role, reply, asker),
            Request::NodeRemove { nodes, force } => self.remove_nodes(&nodes, force, reply, asker),
            Request::DebugWrite { count, in_flight } => {
                let bounds = (1..=super::core::MAX_LOAD_WRITES).contains(&count)
                    && (1..=super::core::MAX_LOAD_IN_FLIGHT).contains(&in_flight);
                if bounds {
                    self.start_load(reply, count, in_flight, asker);
                } else {
                    let why = format!(
                        "debug write: --count must be 1 to {} and --in-flight 1 to {}",
                        super::core::MAX_LOAD_WRITES,
                        super::core::MAX_LOAD_IN_FLIGHT
                    );
                    self.answer(reply, Response::Error(why));
                }
            }
            Request::JoinToken { role, rotate: true } => {
                let secret = self.random16();
                let ok = format!("Successfully rotated {role} join token.");
                self.propose_reply(Command::RotateToken { role, secret }, reply, ok);
            }
            _ => self.answer(
                reply,
                Response::Error("this request cannot be forwarded".into()),
            ),
        }
    }

    fn init(
        &mut self,
        id: RequestId,
        listen: Option<SocketAddr>,
        advertise: Option<SocketAddr>,
        snapshot_interval: Option<u64>,
        pools: Option<Pools>,
    ) {
        let error = |c: &mut Control, why: String| {
            c.emit(Effect::Answer {
                id,
                resp: Response::Error(why),
            })
        };
        if !matches!(self.state, NodeState::Idle) {
            return error(
                self,
                "this node is already part of a swarm (or joining one); leave it first".into(),
            );
        }
        let interval = snapshot_interval.unwrap_or(cluster::DEFAULT_SNAPSHOT_INTERVAL);
        if !(cluster::MIN_SNAPSHOT_INTERVAL..=cluster::MAX_SNAPSHOT_INTERVAL).contains(&interval) {
            return error(
                self,
                format!(
                    "--snapshot-interval {interval} is out of range: it must be {} to {}",
                    cluster::MIN_SNAPSHOT_INTERVAL,
                    cluster::MAX_SNAPSHOT_INTERVAL
                ),
            );
        }
        if let Some(p) = &pools {
            // Any client can send anything: the pools are checked again here.
            if let Err(e) = Pools::new(p.pools.clone(), p.subnet_prefix) {
                return error(self, e);
            }
        }
        self.start_init(id, interval, pools.unwrap_or_default());
        let listen = listen.or(self.me.listen).unwrap_or_else(default_listen);
        let advertise = advertise.or(self.me.advertise);
        self.emit(Effect::Bind {
            listen,
            advertise,
            toward: None,
        });
    }

    fn join(
        &mut self,
        now: Instant,
        id: RequestId,
        token: &str,
        manager: SocketAddr,
        listen: Option<SocketAddr>,
        advertise: Option<SocketAddr>,
    ) {
        let error = |c: &mut Control, why: String| {
            c.emit(Effect::Answer {
                id,
                resp: Response::Error(why),
            })
        };
        match &self.state {
            NodeState::Idle => {}
            NodeState::Initializing(_) | NodeState::Joining(_) => {
                return error(self, "a join or init is already in progress".into())
            }
            _ => {
                return error(
                    self,
                    "this node is already part of a swarm; leave it first".into(),
                )
            }
        }
        let t = match JoinToken::parse(token) {
            Ok(t) => t,
            Err(e) => return error(self, e.to_string()),
        };
        if t.manager == self.me.key {
            return error(self, "the join token names this very node".into());
        }
        self.start_join(now, id, &t, manager);
        let listen = listen.or(self.me.listen).unwrap_or_else(default_listen);
        let advertise = advertise.or(self.me.advertise);
        self.emit(Effect::Bind {
            listen,
            advertise,
            toward: Some(manager),
        });
    }

    /// Leaves the swarm: forget the cluster locally. A manager must say --force: its
    /// departure can cost the quorum (or, as the last manager, the swarm).
    fn leave(&mut self, id: RequestId, force: bool) {
        let resp = match &self.state {
            NodeState::Idle => Response::Error(NOT_IN_SWARM.into()),
            NodeState::Initializing(_) | NodeState::Joining(_) => {
                Response::Error("a join or init is in progress; wait for it to end".into())
            }
            NodeState::Manager(_) if !force => Response::Error(
                "this node is a manager: leaving can lose the quorum or, for the last manager, the swarm. Demote it first (`swarmlet node demote`), or use --force".into(),
            ),
            NodeState::Worker(_) | NodeState::Manager(_) => {
                self.forget_cluster();
                Response::Done("Node left the swarm.".into())
            }
        };
        self.emit(Effect::Answer { id, resp });
    }

    fn print_token(&self, role: TokenRole) -> Response {
        match &self.state {
            NodeState::Manager(m) => match self.cluster() {
                Some(c) => {
                    let _ = m;
                    Response::Token(
                        JoinToken {
                            role,
                            manager: self.me.key,
                            secret: *c.tokens.secret(role),
                        }
                        .to_string(),
                    )
                }
                None => Response::Error("this manager has no cluster state yet".into()),
            },
            NodeState::Worker(_) => Response::Error(NOT_A_MANAGER.into()),
            _ => Response::Error(NOT_IN_SWARM.into()),
        }
    }

    pub(super) fn resolve_node(&self, name: &str, asker: NodeId) -> Result<NodeId, String> {
        let c = self.cluster().ok_or(NOT_A_MANAGER)?;
        if name == "self" {
            return Ok(asker);
        }
        let hits: Vec<NodeId> = c
            .nodes
            .values()
            .filter(|n| n.hostname == name || n.id.to_string().starts_with(name))
            .map(|n| n.id)
            .collect();
        match hits.as_slice() {
            [one] => Ok(*one),
            [] => Err(format!("node {name} not found")),
            _ => Err(format!(
                "node name {name} is ambiguous ({} matches)",
                hits.len()
            )),
        }
    }

    fn resolve_all(&self, names: &[String], asker: NodeId) -> Result<Vec<NodeId>, String> {
        if names.is_empty() {
            return Err("name at least one node".into());
        }
        names.iter().map(|n| self.resolve_node(n, asker)).collect()
    }

    /// `node ls` and `node inspect` as of the state applied so far.
    pub(super) fn node_list(&self, only: Option<&[String]>, asker: NodeId) -> Response {
        let (Some(c), Some(m)) = (self.cluster(), self.manager()) else {
            return Response::Error(NOT_A_MANAGER.into());
        };
        let ids: Option<Vec<NodeId>> = match only {
            Some(names) => match self.resolve_all(names, asker) {
                Ok(v) => Some(v),
                Err(e) => return Response::Error(e),
            },
            None => None,
        };
        let leader = m.raft().leader;
        let views = c
            .nodes
            .values()
            .filter(|n| ids.as_ref().is_none_or(|ids| ids.contains(&n.id)))
            .map(|n| {
                let manager_status = (n.role == NodeRole::Manager).then(|| {
                    if Some(n.id) == leader {
                        "Leader".to_string()
                    } else if self.alive(n.id) {
                        "Reachable".to_string()
                    } else {
                        "Unreachable".to_string()
                    }
                });
                NodeView {
                    id: n.id,
                    key: n.key.to_string(),
                    hostname: n.hostname.clone(),
                    addr: n.addr,
                    role: n.role,
                    status: n.status,
                    availability: n.availability,
                    manager_status,
                    labels: n
                        .labels
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    is_self: n.id == asker,
                }
            })
            .collect();
        Response::Nodes(views)
    }

    fn node_update(
        &mut self,
        node: &str,
        availability: Option<Availability>,
        label_add: Vec<(String, String)>,
        label_rm: Vec<String>,
        reply: Reply,
        asker: NodeId,
    ) {
        let id = match self.resolve_node(node, asker) {
            Ok(id) => id,
            Err(e) => return self.answer(reply, Response::Error(e)),
        };
        let cmd = Command::UpdateNode {
            id,
            availability,
            label_add,
            label_rm,
        };
        if let Some(Err(e)) = self.cluster().map(|c| c.validate(&cmd)) {
            return self.answer(reply, Response::Error(e.to_string()));
        }
        self.propose_reply(cmd, reply, id.to_string());
    }

    /// Checks commands in sequence, as they will apply, then proposes them.
    pub(super) fn propose_checked(&mut self, cmds: Vec<Command>, reply: Reply, ok: String) {
        if let Some(c) = self.cluster() {
            let mut trial = c.clone();
            for cmd in &cmds {
                if let Err(e) = trial.apply(cmd) {
                    return self.answer(reply, Response::Error(e.to_string()));
                }
            }
        }
        self.propose_all(cmds, reply, ok);
    }

    fn set_roles(&mut self, names: &[String], role: NodeRole, reply: Reply, asker: NodeId) {
        let ids = match self.resolve_all(names, asker) {
            Ok(v) => v,
            Err(e) => return self.answer(reply, Response::Error(e)),
        };
        let verb = if role == NodeRole::Manager {
            "promoted to a manager"
        } else {
            "demoted to a worker"
        };
        let ok = ids
            .iter()
            .map(|id| format!("Node {id} {verb} in the swarm."))
            .collect::<Vec<_>>()
            .join("\n");
        let cmds = ids
            .into_iter()
            .map(|id| Command::SetRole { id, role })
            .collect();
        self.propose_checked(cmds, reply, ok);
    }

    fn remove_nodes(&mut self, names: &[String], force: bool, reply: Reply, asker: NodeId) {
        let ids = match self.resolve_all(names, asker) {
            Ok(v) => v,
            Err(e) => return self.answer(reply, Response::Error(e)),
        };
        let Some(c) = self.cluster() else {
            return self.answer(reply, Response::Error(NOT_A_MANAGER.into()));
        };
        let raft = self.manager().map(|m| m.raft());
        for id in &ids {
            let Some(n) = c.nodes.get(id) else { continue };
            // A demoted manager leaves Raft's configuration after the demotion commits;
            // removed before that, its messages are refused while its vote still counts.
            let in_raft = raft.is_some_and(|r| r.voters.contains(id) || r.learners.contains(id));
            let refusal = if n.role == NodeRole::Manager {
                format!(
                    "node {} ({}) is a manager; demote it with `swarmlet node demote` before removing it",
                    n.id, n.hostname
                )
            } else if in_raft {
                format!(
                    "node {} ({}) is still leaving the managers; try again in a moment",
                    n.id, n.hostname
                )
            } else if n.status == NodeStatus::Ready && !force {
                format!(
                    "node {} ({}) is not down and can't be removed; stop it first, or use --force",
                    n.id, n.hostname
                )
            } else {
                continue;
            };
            return self.answer(reply, Response::Error(refusal));
        }
        let ok = ids
            .iter()
            .map(|id| id.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        let cmds = ids.into_iter().map(Command::RemoveNode).collect();
        self.propose_checked(cmds, reply, ok);
    }

    /// A join request from a joiner whose session is keyed by a token.
    pub(super) fn on_join_request(
        &mut self,
        from: PeerKey,
        psk: Option<crate::transport::PskId>,
        role: TokenRole,
        hostname: String,
        advertise: SocketAddr,
        labels: Vec<(String, String)>,
    ) {
        use crate::control::msg::PeerMsg;
        let expected = match role {
            TokenRole::Worker => super::core::PSK_WORKER,
            TokenRole::Manager => super::core::PSK_MANAGER,
        };
        let refuse = |c: &mut Control, why: &str| c.send(from, PeerMsg::JoinRefused(why.into()));
        if psk != Some(expected) {
            return refuse(self, "the join token does not match the role asked for");
        }
        if self.manager().is_none() {
            if self.member().is_some() {
                // Demoted since the token was made: an earlier request of this joiner
                // may have reached the leader before, so this is no final word.
                let why = "this node is no longer a manager: use a current manager's token";
                return self.send(from, PeerMsg::JoinWait(why.into()));
            }
            return refuse(self, "this node is not a manager");
        }
        let Some(m) = self.manager() else { return };
        let (raft_role, leader) = (m.raft().role, m.raft().leader);
        let ask = JoinAsk {
            key: from,
            role,
            hostname,
            advertise,
            labels,
        };
        match (raft_role, leader) {
            (Role::Leader, _) => self.propose_join(ask, None),
            (_, Some(l)) => self.send_id(
                l,
                PeerMsg::ForwardJoin {
                    joiner: ask.key,
                    role: ask.role,
                    hostname: ask.hostname,
                    advertise: ask.advertise,
                    labels: ask.labels,
                },
            ),
            (_, None) => self.send(
                from,
                PeerMsg::JoinWait("no leader is elected right now".into()),
            ),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT))
}

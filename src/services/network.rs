//! Networks in the replicated state: overlay networks, and who holds which address on
//! them. Pure and deterministic like the store beside it; `cluster` calls it around
//! every service command, so addresses follow services and tasks:
//!
//! - a service gets a VIP on each of its networks (endpoint mode vip), and on the
//!   ingress network when it publishes a port in ingress mode; its published ports are
//!   the cluster's to hand out (one service per protocol and port);
//! - a task gets an address on each network of its template (and on ingress, as its
//!   service publishes) when it is made, and gives them back when it ends or goes;
//! - every node gets an address on the ingress network, the source of the routing
//!   mesh's connections.
//!
//! A user's command that cannot get its addresses or ports fails whole and changes
//! nothing. A task the orchestrator makes when a network is full gets no address on it:
//! its node rejects it, naming the network, and the restart policy tries again later.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::ipam::{next_vni, AddressSpace, IpamError, Ipv4Net, Owner, Pools};
use super::spec::{EndpointMode, Protocol, PublishMode, ServiceSpec};
use super::store::{ServiceCommand, Store, TaskId, TaskOp};
use super::{NetworkId, ServiceId};
use crate::raft::NodeId;

/// The ingress network's name, as Docker's.
pub const INGRESS: &str = "ingress";

/// Published ports picked for `-p TARGET` (no published port given): Docker's range.
pub const AUTO_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

/// Longest network name (Docker allows more; a name is also a DNS label here).
pub const MAX_NAME: usize = 63;

/// Most networks a cluster holds: each is a bridge and a VXLAN device on every node
/// that uses it, and an edge cluster needs a handful.
pub const MAX_NETWORKS: usize = 1024;

/// MTUs a network may set: IPv4's minimum datagram every host must take (576) up to
/// the largest an IP packet can be.
pub const MTU_RANGE: std::ops::RangeInclusive<u32> = 576..=65_535;

/// Most networks one service may join (each is an interface in every task).
pub const MAX_SERVICE_NETWORKS: usize = 16;

/// What a user asks for (`network create`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// `-o KEY=VALUE` driver options (`encrypted`, `com.docker.network.driver.mtu`).
    pub options: BTreeMap<String, String>,
    pub subnet: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    pub ip_range: Option<Ipv4Net>,
    pub internal: bool,
    pub attachable: bool,
    /// The routing mesh's network (made at `init`; users cannot make another).
    pub ingress: bool,
}

impl NetworkSpec {
    /// Encrypted data plane (`--opt encrypted`).
    pub fn encrypted(&self) -> bool {
        self.options.contains_key("encrypted")
    }

    /// The MTU the user set (`-o com.docker.network.driver.mtu=N`), if any.
    pub fn mtu(&self) -> Option<u32> {
        self.options
            .get("com.docker.network.driver.mtu")
            .and_then(|v| v.parse().ok())
    }
}

/// A network as the cluster holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub id: NetworkId,
    pub spec: NetworkSpec,
    pub vni: u32,
    pub space: AddressSpace,
    pub created_ms: u64,
    /// An encrypted network's data-plane key (made by the leader that proposed it).
    #[serde(default)]
    pub key: Option<NetSecret>,
}

/// A network's 32-byte data-plane key. Shown nowhere: its `Debug` hides it, and only
/// the nodes on the network are sent it (over the encrypted control channel).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetSecret(pub [u8; 32]);

impl std::fmt::Debug for NetSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NetSecret(..)")
    }
}

/// A published port as the cluster holds it (the published number chosen when the
/// user left it to the cluster).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortKey {
    pub protocol: Protocol,
    pub published: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    #[error("network {0} not found")]
    Unknown(String),
    #[error("network with name {0} already exists")]
    NameTaken(String),
    #[error("invalid network name {0:?}: 1 to {MAX_NAME} letters, digits, '-', '_' and '.', starting with a letter or digit")]
    Name(String),
    #[error("network id {0} is already in use")]
    IdTaken(NetworkId),
    #[error("only the overlay driver is supported, not {0:?}")]
    Driver(String),
    #[error("invalid option {0:?}: {1}")]
    Option(String, String),
    #[error("{0}")]
    Ipam(#[from] IpamError),
    #[error("network {0} is in use by {1}")]
    InUse(String, String),
    #[error("the ingress network cannot be removed or made by hand")]
    Ingress,
    #[error("service cannot be explicitly attached to the ingress network {0:?}")]
    ExplicitIngress(String),
    #[error("a service joins {MAX_SERVICE_NETWORKS} networks at most")]
    TooManyNetworks,
    #[error("a cluster holds {MAX_NETWORKS} networks at most")]
    TooMany,
    #[error("port '{0}' is already in use by service '{1}'")]
    PortInUse(u16, String),
    #[error("no free port is left in {}-{} to publish", AUTO_PORTS.start(), AUTO_PORTS.end())]
    NoFreePort,
    #[error("network {0} is not attachable: containers join only networks made with --attachable")]
    NotAttachable(String),
    #[error("invalid container {0:?}: an id is 64 hex digits, a name as `run --name` takes")]
    Container(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkCommand {
    Create {
        id: NetworkId,
        spec: NetworkSpec,
        at_ms: u64,
        /// The data-plane key, for an encrypted network (required for one).
        #[serde(default)]
        key: Option<NetSecret>,
    },
    Remove(NetworkId),
    /// A standalone container on `node` joins an attachable network (`run --network`);
    /// again for one attached already is nothing.
    Attach {
        node: NodeId,
        /// Its id (64 hex digits), as the node knows it.
        container: String,
        /// Its name, for the messages that name it.
        name: String,
        network: NetworkId,
    },
    /// The container is gone (or its node says it no longer wants the network).
    Detach {
        node: NodeId,
        container: String,
    },
}

/// A standalone container attached to a network, and its address there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub name: String,
    pub network: NetworkId,
    pub addr: Ipv4Addr,
}

/// What a node is told of its own attached containers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAttachment {
    pub container: String,
    pub network: NetworkId,
    pub addr: Ipv4Addr,
}

/// Networks and the addresses on them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Networks {
    pub pools: Pools,
    pub nets: BTreeMap<NetworkId, Network>,
    /// Per service: its VIP on each network it has one on.
    pub vips: BTreeMap<ServiceId, BTreeMap<NetworkId, Ipv4Addr>>,
    /// Per task: its address on each of its networks.
    pub tasks: BTreeMap<TaskId, BTreeMap<NetworkId, Ipv4Addr>>,
    /// Per node: its address on the ingress network.
    pub nodes: BTreeMap<NodeId, Ipv4Addr>,
    /// Ports published in ingress mode, and by whom.
    pub ports: BTreeMap<PortKey, ServiceId>,
    /// Per service: the published port each of its ports got (in its spec's order).
    pub published: BTreeMap<ServiceId, Vec<u16>>,
    /// Standalone containers on attachable networks, by node and container id.
    pub attachments: BTreeMap<(NodeId, String), Attachment>,
}

/// [`Networks`] as cluster state version 3 held them (no attached containers).
#[derive(Deserialize)]
pub struct NetworksV3 {
    pools: Pools,
    nets: BTreeMap<NetworkId, Network>,
    vips: BTreeMap<ServiceId, BTreeMap<NetworkId, Ipv4Addr>>,
    tasks: BTreeMap<TaskId, BTreeMap<NetworkId, Ipv4Addr>>,
    nodes: BTreeMap<NodeId, Ipv4Addr>,
    ports: BTreeMap<PortKey, ServiceId>,
    published: BTreeMap<ServiceId, Vec<u16>>,
}

impl From<NetworksV3> for Networks {
    fn from(v: NetworksV3) -> Networks {
        Networks {
            pools: v.pools,
            nets: v.nets,
            vips: v.vips,
            tasks: v.tasks,
            nodes: v.nodes,
            ports: v.ports,
            published: v.published,
            attachments: BTreeMap::new(),
        }
    }
}

impl Default for Networks {
    fn default() -> Networks {
        Networks::new(Pools::default(), NetworkId(0))
    }
}

impl Networks {
    /// A cluster's networks at `init`: only ingress, on the first subnet of the pools.
    pub fn new(pools: Pools, ingress: NetworkId) -> Networks {
        let mut n = Networks {
            pools,
            nets: BTreeMap::new(),
            vips: BTreeMap::new(),
            tasks: BTreeMap::new(),
            nodes: BTreeMap::new(),
            ports: BTreeMap::new(),
            published: BTreeMap::new(),
            attachments: BTreeMap::new(),
        };
        let spec = NetworkSpec {
            name: INGRESS.to_string(),
            ingress: true,
            ..NetworkSpec::default()
        };
        // The pools were checked to hold at least one subnet: `init` refuses others.
        if let Ok(net) = n.make(ingress, spec, 0) {
            n.nets.insert(ingress, net);
        }
        n
    }

    pub fn ingress(&self) -> Option<&Network> {
        self.nets.values().find(|n| n.spec.ingress)
    }

    pub fn by_name(&self, name: &str) -> Option<&Network> {
        self.nets.values().find(|n| n.spec.name == name)
    }

    /// A network by name, full id or unique id prefix.
    pub fn resolve(&self, name: &str) -> Result<&Network, NetworkError> {
        if let Some(n) = self.by_name(name) {
            return Ok(n);
        }
        let hits: Vec<&Network> = self
            .nets
            .values()
            .filter(|n| !name.is_empty() && n.id.to_string().starts_with(name))
            .collect();
        match hits.as_slice() {
            [one] => Ok(one),
            _ => Err(NetworkError::Unknown(name.to_string())),
        }
    }

    /// The network a new spec would make, checked; nothing changes.
    fn make(&self, id: NetworkId, spec: NetworkSpec, at_ms: u64) -> Result<Network, NetworkError> {
        check_network_name(&spec.name)?;
        if self.nets.contains_key(&id) {
            return Err(NetworkError::IdTaken(id));
        }
        if self.by_name(&spec.name).is_some() {
            return Err(NetworkError::NameTaken(spec.name.clone()));
        }
        if self.nets.len() >= MAX_NETWORKS {
            return Err(NetworkError::TooMany);
        }
        for (k, v) in &spec.options {
            match k.as_str() {
                "encrypted" => {}
                "com.docker.network.driver.mtu" => match v.parse::<u32>() {
                    Ok(m) if (576..=65_535).contains(&m) => {}
                    _ => {
                        return Err(NetworkError::Option(
                            k.clone(),
                            "an MTU from 576 to 65535".into(),
                        ))
                    }
                },
                _ => {
                    return Err(NetworkError::Option(
                        k.clone(),
                        "not an option of the overlay driver".into(),
                    ))
                }
            }
        }
        let taken: Vec<Ipv4Net> = self.nets.values().map(|n| n.space.subnet).collect();
        let subnet = match spec.subnet {
            Some(s) => {
                if let Some(other) = self.nets.values().find(|n| n.space.subnet.overlaps(s)) {
                    return Err(
                        IpamError::Overlap(s, other.spec.name.clone(), other.space.subnet).into(),
                    );
                }
                s
            }
            None => {
                if spec.gateway.is_some() || spec.ip_range.is_some() {
                    return Err(NetworkError::Option(
                        "--gateway/--ip-range".into(),
                        "need --subnet".into(),
                    ));
                }
                self.pools.next_subnet(&taken)?
            }
        };
        let space = AddressSpace::new(subnet, spec.gateway, spec.ip_range)?;
        let vni = next_vni(self.nets.values().map(|n| n.vni))?;
        Ok(Network {
            id,
            spec,
            vni,
            space,
            created_ms: at_ms,
            key: None,
        })
    }

    /// Whether a network command would apply; `store` tells who uses a network.
    pub fn validate(&self, store: &Store, cmd: &NetworkCommand) -> Result<(), NetworkError> {
        match cmd {
            NetworkCommand::Create {
                id,
                spec,
                at_ms,
                key,
            } => {
                if spec.ingress {
                    return Err(NetworkError::Ingress);
                }
                if spec.encrypted() != key.is_some() {
                    return Err(NetworkError::Option(
                        "encrypted".into(),
                        "an encrypted network needs its key, and only it has one".into(),
                    ));
                }
                self.make(*id, spec.clone(), *at_ms).map(|_| ())
            }
            NetworkCommand::Remove(id) => {
                let n = self
                    .nets
                    .get(id)
                    .ok_or_else(|| NetworkError::Unknown(id.to_string()))?;
                if n.spec.ingress {
                    return Err(NetworkError::Ingress);
                }
                let users = self.users(store, *id);
                if !users.is_empty() {
                    return Err(NetworkError::InUse(n.spec.name.clone(), users.join(", ")));
                }
                Ok(())
            }
            NetworkCommand::Attach {
                container,
                name,
                network,
                ..
            } => {
                use crate::model::container::{is_container_id, valid_container_name};
                if !is_container_id(container) {
                    return Err(NetworkError::Container(container.clone()));
                }
                if !valid_container_name(name) {
                    return Err(NetworkError::Container(name.clone()));
                }
                let n = self
                    .nets
                    .get(network)
                    .ok_or_else(|| NetworkError::Unknown(network.to_string()))?;
                if n.spec.ingress || !n.spec.attachable {
                    return Err(NetworkError::NotAttachable(n.spec.name.clone()));
                }
                Ok(())
            }
            NetworkCommand::Detach { .. } => Ok(()),
        }
    }

    pub fn apply(&mut self, store: &Store, cmd: &NetworkCommand) -> Result<(), NetworkError> {
        self.validate(store, cmd)?;
        match cmd {
            NetworkCommand::Create {
                id,
                spec,
                at_ms,
                key,
            } => {
                let mut n = self.make(*id, spec.clone(), *at_ms)?;
                n.key = key.clone();
                self.nets.insert(*id, n);
            }
            NetworkCommand::Remove(id) => {
                self.nets.remove(id);
            }
            NetworkCommand::Attach {
                node,
                container,
                name,
                network,
            } => {
                let key = (*node, container.clone());
                if self.attachments.contains_key(&key) {
                    return Ok(());
                }
                let n = self
                    .nets
                    .get_mut(network)
                    .ok_or_else(|| NetworkError::Unknown(network.to_string()))?;
                let net_name = n.spec.name.clone();
                let addr = n.space.allocate(Owner::Attachment(*node), &net_name)?;
                self.attachments.insert(
                    key,
                    Attachment {
                        name: name.clone(),
                        network: *network,
                        addr,
                    },
                );
            }
            NetworkCommand::Detach { node, container } => {
                self.detach(*node, container);
            }
        }
        Ok(())
    }

    fn detach(&mut self, node: NodeId, container: &str) {
        if let Some(a) = self.attachments.remove(&(node, container.to_string())) {
            if let Some(n) = self.nets.get_mut(&a.network) {
                n.space.release(a.addr, Owner::Attachment(node));
            }
        }
    }

    /// Services (by name) and tasks that use a network: it cannot go while they do.
    pub fn users(&self, store: &Store, id: NetworkId) -> Vec<String> {
        let key = id.to_string();
        let mut out: BTreeSet<String> = store
            .services
            .values()
            .filter(|s| {
                s.spec.task.networks.contains(&key)
                    || s.previous
                        .as_ref()
                        .is_some_and(|(_, p)| p.task.networks.contains(&key))
            })
            .map(|s| format!("service {}", s.spec.name))
            .collect();
        let tasks = self.tasks.values().filter(|a| a.contains_key(&id)).count();
        if tasks > 0 && out.is_empty() {
            out.insert(format!("{tasks} task(s) still stopping"));
        }
        for ((node, _), a) in self.attachments.iter().filter(|(_, a)| a.network == id) {
            out.insert(format!("container {} on node {node}", a.name));
        }
        out.into_iter().collect()
    }

    /// Checks a user's service command against the networks (its networks exist, its
    /// ports are free, its VIPs fit) and returns the networks as they would be after it:
    /// the caller keeps them only if the store takes the command too. `None` for the
    /// orchestrator's and agents' commands (see [`Networks::after_tasks`]).
    pub fn with_service(
        &self,
        store: &Store,
        cmd: &ServiceCommand,
    ) -> Result<Option<Networks>, NetworkError> {
        if !matches!(
            cmd,
            ServiceCommand::Create { .. }
                | ServiceCommand::Update { .. }
                | ServiceCommand::Remove(_)
        ) {
            return Ok(None);
        }
        let mut next = self.clone();
        match cmd {
            ServiceCommand::Create { id, spec, .. }
            | ServiceCommand::Update {
                id,
                spec,
                rollback: false,
                ..
            } => {
                self.check_spec(spec)?;
                next.set_service(*id, Some(spec))
                    .map_err(|e| named(store, e))?;
            }
            ServiceCommand::Update {
                id, rollback: true, ..
            } => {
                let prev = store.services.get(id).and_then(|s| s.previous.as_ref());
                if let Some((_, p)) = prev {
                    next.set_service(*id, Some(p))
                        .map_err(|e| named(store, e))?;
                }
            }
            ServiceCommand::Remove(id) => {
                next.set_service(*id, None)?;
            }
            _ => {}
        }
        Ok(Some(next))
    }

    fn check_spec(&self, spec: &ServiceSpec) -> Result<(), NetworkError> {
        if spec.task.networks.len() > MAX_SERVICE_NETWORKS {
            return Err(NetworkError::TooManyNetworks);
        }
        for n in &spec.task.networks {
            let net = self
                .id_of(n)
                .and_then(|id| self.nets.get(&id))
                .ok_or_else(|| NetworkError::Unknown(n.clone()))?;
            if net.spec.ingress {
                return Err(NetworkError::ExplicitIngress(net.spec.name.clone()));
            }
        }
        Ok(())
    }

    /// Makes a service's VIPs and ports match `spec` (`None`: the service is gone).
    fn set_service(
        &mut self,
        id: ServiceId,
        spec: Option<&ServiceSpec>,
    ) -> Result<(), NetworkError> {
        let ingress = self.ingress().map(|n| n.id);
        // The networks it should have a VIP on.
        let mut want: Vec<NetworkId> = Vec::new();
        if let Some(spec) = spec {
            if spec.endpoint.mode == EndpointMode::Vip {
                want.extend(spec.task.networks.iter().filter_map(|n| self.id_of(n)));
                if spec
                    .endpoint
                    .ports
                    .iter()
                    .any(|p| p.mode == PublishMode::Ingress)
                {
                    want.extend(ingress);
                }
            }
        }
        let have = self.vips.remove(&id).unwrap_or_default();
        let mut kept = BTreeMap::new();
        for (net, ip) in have {
            match want.contains(&net) {
                true => {
                    kept.insert(net, ip);
                }
                false => {
                    if let Some(n) = self.nets.get_mut(&net) {
                        n.space.release(ip, Owner::Vip(id));
                    }
                }
            }
        }
        for net in want {
            if kept.contains_key(&net) {
                continue;
            }
            let Some(n) = self.nets.get_mut(&net) else {
                continue;
            };
            let ip = n.space.allocate(Owner::Vip(id), &n.spec.name.clone())?;
            kept.insert(net, ip);
        }
        if !kept.is_empty() {
            self.vips.insert(id, kept);
        }
        // Ports: give back the old, take the new.
        self.ports.retain(|_, s| *s != id);
        self.published.remove(&id);
        if let Some(spec) = spec {
            let mut got = Vec::new();
            // Host-mode ports are the cluster's too: a node never has one port taken
            // twice (by the mesh and a task, or by two services' tasks).
            for p in &spec.endpoint.ports {
                let published = match p.published {
                    0 => self.free_port(p.protocol)?,
                    n => n,
                };
                let key = PortKey {
                    protocol: p.protocol,
                    published,
                };
                if let Some(other) = self.ports.get(&key) {
                    return Err(NetworkError::PortInUse(published, other.to_string()));
                }
                self.ports.insert(key, id);
                got.push(published);
            }
            if !got.is_empty() {
                self.published.insert(id, got);
            }
        }
        Ok(())
    }

    fn free_port(&self, protocol: Protocol) -> Result<u16, NetworkError> {
        AUTO_PORTS
            .clone()
            .find(|p| {
                !self.ports.contains_key(&PortKey {
                    protocol,
                    published: *p,
                })
            })
            .ok_or(NetworkError::NoFreePort)
    }

    fn id_of(&self, s: &str) -> Option<NetworkId> {
        self.nets
            .values()
            .find(|n| n.id.to_string() == s)
            .map(|n| n.id)
    }

    /// After the store applied a command the orchestrator or an agent sent: tasks made
    /// get their addresses, tasks ended or gone give theirs back, and a rollback moves
    /// the service's VIPs and ports with its spec.
    pub fn after_tasks(&mut self, store: &Store, cmd: &ServiceCommand) {
        let mut touched: Vec<TaskId> = Vec::new();
        match cmd {
            ServiceCommand::Tasks { ops, .. } => {
                for op in ops {
                    match op {
                        TaskOp::Create(t) => touched.push(t.id),
                        TaskOp::Observe { task, .. }
                        | TaskOp::Delete(task)
                        | TaskOp::Desire { task, .. } => touched.push(*task),
                        TaskOp::Rollback { service, .. } => {
                            if let Some(s) = store.services.get(service) {
                                // Ports the old spec had may be taken meanwhile: the
                                // rollback goes on without them rather than fail.
                                let spec = s.spec.clone();
                                if self.set_service(*service, Some(&spec)).is_err() {
                                    let mut bare = spec;
                                    bare.endpoint.ports.clear();
                                    let _ = self.set_service(*service, Some(&bare));
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            ServiceCommand::Report { reports, .. } => {
                touched.extend(reports.iter().map(|r| r.task))
            }
            _ => {}
        }
        for id in touched {
            self.task_changed(store, id);
        }
    }

    fn task_changed(&mut self, store: &Store, id: TaskId) {
        let t = store.tasks.get(&id);
        let ended = t.is_none_or(|t| t.state.is_terminal());
        if ended {
            if let Some(addrs) = self.tasks.remove(&id) {
                for (net, ip) in addrs {
                    if let Some(n) = self.nets.get_mut(&net) {
                        n.space.release(ip, Owner::Task(id));
                    }
                }
            }
            return;
        }
        if self.tasks.contains_key(&id) {
            return;
        }
        let Some(t) = t else { return };
        let Some(s) = store.services.get(&t.service) else {
            return;
        };
        let Some(tmpl) = s.template(t.version) else {
            return;
        };
        let mut nets: Vec<NetworkId> = tmpl.networks.iter().filter_map(|n| self.id_of(n)).collect();
        let spec = match t.version == s.version {
            true => &s.spec,
            false => s.previous.as_ref().map_or(&s.spec, |(_, p)| p),
        };
        if spec
            .endpoint
            .ports
            .iter()
            .any(|p| p.mode == PublishMode::Ingress)
        {
            nets.extend(self.ingress().map(|n| n.id));
        }
        let mut got = BTreeMap::new();
        for net in nets {
            let Some(n) = self.nets.get_mut(&net) else {
                continue;
            };
            let name = n.spec.name.clone();
            // A full network: the task goes without, and its node rejects it.
            if let Ok(ip) = n.space.allocate(Owner::Task(id), &name) {
                got.insert(net, ip);
            }
        }
        if !got.is_empty() {
            self.tasks.insert(id, got);
        }
    }

    /// A node joined: its address on the ingress network (none if it is full: the
    /// node's mesh then cannot forward, and says so).
    pub fn node_added(&mut self, node: NodeId) {
        if self.nodes.contains_key(&node) {
            return;
        }
        let Some(ing) = self.ingress().map(|n| n.id) else {
            return;
        };
        let Some(n) = self.nets.get_mut(&ing) else {
            return;
        };
        let name = n.spec.name.clone();
        if let Ok(ip) = n.space.allocate(Owner::Node(node), &name) {
            self.nodes.insert(node, ip);
        }
    }

    pub fn node_removed(&mut self, node: NodeId) {
        let gone: Vec<String> = self
            .attachments
            .keys()
            .filter(|(n, _)| *n == node)
            .map(|(_, c)| c.clone())
            .collect();
        for c in gone {
            self.detach(node, &c);
        }
        let Some(ip) = self.nodes.remove(&node) else {
            return;
        };
        let Some(ing) = self.ingress().map(|n| n.id) else {
            return;
        };
        if let Some(n) = self.nets.get_mut(&ing) {
            n.space.release(ip, Owner::Node(node));
        }
    }
}

/// What one node needs to know of the networks to wire its tasks and serve its part of
/// the data plane; the leader sends it with the node's assignments.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeNet {
    /// The node's own address as the cluster knows it: its VXLAN tunnels' source (the
    /// other nodes send to it).
    pub addr: Option<std::net::IpAddr>,
    /// The networks it takes part in: its tasks', and ingress while any port is
    /// published (every node serves the mesh then).
    pub networks: Vec<NetView>,
    /// Its own address on the ingress network, while the mesh is in use.
    pub ingress_addr: Option<Ipv4Addr>,
    /// Ports published through the mesh.
    pub published: Vec<MeshPort>,
    /// Ports its own serving tasks publish in host mode: they listen on this node only.
    pub host_published: Vec<HostPort>,
    /// Its own standalone containers on attachable networks.
    pub attachments: Vec<NodeAttachment>,
    /// Its containers the leader would not attach, and why (not replicated: the
    /// leader's answer to the node's last status).
    pub attach_refused: Vec<(String, String)>,
}

impl NodeNet {
    /// Nothing for the node to set up: no network, no port (its address alone is no
    /// reason to send it a set).
    pub fn is_idle(&self) -> bool {
        self.networks.is_empty()
            && self.published.is_empty()
            && self.host_published.is_empty()
            && self.attachments.is_empty()
            && self.attach_refused.is_empty()
    }
}

/// A port a task publishes in host mode, on its own node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPort {
    pub protocol: Protocol,
    pub published: u16,
    pub task: TaskId,
    pub target: u16,
}

/// A port published through the mesh: the running tasks' ingress addresses and target
/// ports on every node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshPort {
    pub protocol: Protocol,
    pub published: u16,
    pub backends: Vec<(Ipv4Addr, u16)>,
}

/// One network as a node needs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetView {
    pub id: NetworkId,
    pub name: String,
    pub vni: u32,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub mtu: Option<u32>,
    pub encrypted: bool,
    /// An encrypted network's key (none for the others).
    pub key: Option<NetSecret>,
    pub ingress: bool,
    /// Endpoints on other nodes (tasks, and on ingress the nodes themselves): overlay
    /// address and the node's address.
    pub remote: Vec<(Ipv4Addr, std::net::IpAddr)>,
    /// Services on it, for the balancer and DNS: name, VIP (None for dnsrr), and its
    /// tasks that serve (running, wanted running, on a node that is up): container
    /// name and address.
    pub services: Vec<ServiceEndpoints>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEndpoints {
    pub name: String,
    pub vip: Option<Ipv4Addr>,
    pub tasks: Vec<(String, Ipv4Addr)>,
}

/// A node as the network views need it: where it is and whether it is up.
pub struct NodeAt {
    pub addr: std::net::IpAddr,
    pub up: bool,
}

impl Networks {
    /// Every node's view, computed in one pass over the tasks (a round's cost grows
    /// with tasks plus nodes times the endpoints of the networks each node is on).
    pub fn node_views(
        &self,
        store: &Store,
        nodes: &BTreeMap<NodeId, NodeAt>,
    ) -> BTreeMap<NodeId, NodeNet> {
        use super::task::TaskState;
        // Per network: every endpoint with its node, and the services' serving tasks.
        let mut endpoints: BTreeMap<NetworkId, Vec<(Ipv4Addr, NodeId)>> = BTreeMap::new();
        let mut serving: BTreeMap<(NetworkId, ServiceId), Vec<(String, Ipv4Addr)>> =
            BTreeMap::new();
        let mut on_node: BTreeMap<NodeId, BTreeSet<NetworkId>> = BTreeMap::new();
        let mut published: BTreeMap<PortKey, Vec<(Ipv4Addr, u16)>> = BTreeMap::new();
        let mut host_ports: BTreeMap<NodeId, Vec<HostPort>> = BTreeMap::new();
        let ingress = self.ingress().map(|n| n.id);
        for (tid, addrs) in &self.tasks {
            let Some(t) = store.tasks.get(tid) else {
                continue;
            };
            let Some(node) = t.node else { continue };
            if t.state.is_terminal() {
                continue;
            }
            let serves = t.state == TaskState::Running
                && t.desired == TaskState::Running
                && nodes.get(&node).is_some_and(|n| n.up);
            let svc = store.services.get(&t.service);
            let name = svc.map(|s| match t.slot {
                0 => format!("{}.{}.{}", s.spec.name, node, t.id),
                n => format!("{}.{}.{}", s.spec.name, n, t.id),
            });
            for (net, ip) in addrs {
                endpoints.entry(*net).or_default().push((*ip, node));
                on_node.entry(node).or_default().insert(*net);
                if let (true, Some(name)) = (serves, &name) {
                    serving
                        .entry((*net, t.service))
                        .or_default()
                        .push((name.clone(), *ip));
                }
            }
            // The mesh's backends: its ingress address, each ingress port's target.
            let ing_ip = ingress.and_then(|i| addrs.get(&i));
            if let (true, Some(ip), Some(s)) = (serves, ing_ip, svc) {
                let got = self.published.get(&s.id);
                for (i, p) in s.spec.endpoint.ports.iter().enumerate() {
                    let pubd = got.and_then(|g| g.get(i)).copied().unwrap_or(0);
                    if p.mode == PublishMode::Ingress && pubd != 0 {
                        let key = PortKey {
                            protocol: p.protocol,
                            published: pubd,
                        };
                        published.entry(key).or_default().push((*ip, p.target));
                    }
                }
            }
        }
        // Host-mode ports, of tasks on a network or not.
        let host_mode: BTreeMap<ServiceId, Vec<&super::spec::PortConfig>> = store
            .services
            .values()
            .filter_map(|s| {
                let ports: Vec<_> = s
                    .spec
                    .endpoint
                    .ports
                    .iter()
                    .filter(|p| p.mode == PublishMode::Host)
                    .collect();
                (!ports.is_empty()).then_some((s.id, ports))
            })
            .collect();
        if !host_mode.is_empty() {
            for t in store.tasks.values() {
                let (Some(ports), Some(node)) = (host_mode.get(&t.service), t.node) else {
                    continue;
                };
                let serves = t.state == TaskState::Running
                    && t.desired == TaskState::Running
                    && nodes.get(&node).is_some_and(|n| n.up);
                if !serves {
                    continue;
                }
                for p in ports {
                    host_ports.entry(node).or_default().push(HostPort {
                        protocol: p.protocol,
                        published: p.published,
                        task: t.id,
                        target: p.target,
                    });
                }
            }
        }
        if let Some(i) = ingress {
            for (node, ip) in &self.nodes {
                endpoints.entry(i).or_default().push((*ip, *node));
            }
        }
        // Attached containers: endpoints like tasks (serving nothing), on their nodes.
        let mut attached: BTreeMap<NodeId, Vec<NodeAttachment>> = BTreeMap::new();
        for ((node, container), a) in &self.attachments {
            endpoints
                .entry(a.network)
                .or_default()
                .push((a.addr, *node));
            on_node.entry(*node).or_default().insert(a.network);
            attached.entry(*node).or_default().push(NodeAttachment {
                container: container.clone(),
                network: a.network,
                addr: a.addr,
            });
        }
        // Ports with no serving task still get an (empty) entry: the mesh holds them.
        for (key, sid) in &self.ports {
            let ingress_port = store.services.get(sid).is_some_and(|s| {
                let got = self.published.get(sid);
                s.spec.endpoint.ports.iter().enumerate().any(|(i, p)| {
                    p.mode == PublishMode::Ingress
                        && p.protocol == key.protocol
                        && got.and_then(|g| g.get(i)) == Some(&key.published)
                })
            });
            if ingress_port {
                published.entry(*key).or_default();
            }
        }
        let published: Vec<MeshPort> = published
            .into_iter()
            .map(|(k, mut backends)| {
                backends.sort_unstable();
                MeshPort {
                    protocol: k.protocol,
                    published: k.published,
                    backends,
                }
            })
            .collect();
        // Every node serves the mesh while any port is published, so every node needs
        // ingress then; with none, a node has it only if its tasks do (and none do).
        let mesh = !published.is_empty();
        let mut views = BTreeMap::new();
        for node in nodes.keys() {
            let mut nets = on_node.get(node).cloned().unwrap_or_default();
            if mesh {
                nets.extend(ingress);
            }
            let mut networks = Vec::new();
            for id in nets {
                let Some(n) = self.nets.get(&id) else {
                    continue;
                };
                let mut remote: Vec<(Ipv4Addr, std::net::IpAddr)> = endpoints
                    .get(&id)
                    .into_iter()
                    .flatten()
                    .filter(|(_, at)| at != node)
                    .filter_map(|(ip, at)| Some((*ip, nodes.get(at)?.addr)))
                    .collect();
                remote.sort_unstable();
                let mut services: Vec<ServiceEndpoints> = store
                    .services
                    .values()
                    .filter(|s| {
                        s.spec.task.networks.contains(&id.to_string())
                            || self.vips.get(&s.id).is_some_and(|v| v.contains_key(&id))
                    })
                    .map(|s| {
                        let mut tasks = serving.get(&(id, s.id)).cloned().unwrap_or_default();
                        tasks.sort_unstable();
                        ServiceEndpoints {
                            name: s.spec.name.clone(),
                            vip: self.vips.get(&s.id).and_then(|v| v.get(&id)).copied(),
                            tasks,
                        }
                    })
                    .collect();
                services.sort_by(|a, b| a.name.cmp(&b.name));
                networks.push(NetView {
                    id,
                    name: n.spec.name.clone(),
                    vni: n.vni,
                    subnet: n.space.subnet,
                    gateway: n.space.gateway,
                    mtu: n.spec.mtu(),
                    encrypted: n.spec.encrypted(),
                    key: n.key.clone(),
                    ingress: n.spec.ingress,
                    remote,
                    services,
                });
            }
            views.insert(
                *node,
                NodeNet {
                    addr: nodes.get(node).map(|n| n.addr),
                    networks,
                    ingress_addr: self.nodes.get(node).copied().filter(|_| mesh),
                    published: published.clone(),
                    host_published: host_ports.remove(node).unwrap_or_default(),
                    attachments: attached.remove(node).unwrap_or_default(),
                    attach_refused: Vec::new(),
                },
            );
        }
        views
    }
}

/// A port conflict names the other service by its name, as Docker does.
fn named(store: &Store, e: NetworkError) -> NetworkError {
    match e {
        NetworkError::PortInUse(p, id) => {
            let name = store
                .services
                .values()
                .find(|s| s.id.to_string() == id)
                .map_or(id, |s| format!("{} ({})", s.spec.name, s.id));
            NetworkError::PortInUse(p, name)
        }
        e => e,
    }
}

/// Docker's rule for network names, kept to what is also safe as a DNS label.
pub fn check_network_name(name: &str) -> Result<(), NetworkError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    match ok {
        true => Ok(()),
        false => Err(NetworkError::Name(name.to_string())),
    }
}

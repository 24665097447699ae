//! This node's part of the data plane, carried out from what the leader sends with its
//! assignments (`NodeNet`): the overlay networks its tasks are on, a pinned network
//! namespace per task wired to them and to the node's local bridge (its way out), the
//! VIP balancer and DNS server of each task's namespace, and the routing mesh while
//! ports are published.
//!
//! Owned by the agent's thread, and called from it only: on every new set of
//! assignments ([`Plane::set`]), before a task's container starts ([`Plane::prepare`]),
//! and on each look at the containers ([`Plane::tidy`]), which frees the namespaces of
//! tasks whose containers are gone and takes back, after a daemon restart, those whose
//! containers still run. Every step is idempotent, so a failed one is simply done again
//! on the next set or look; nothing here keeps a half-wired task: a task whose wiring
//! fails is rejected and its namespace removed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::sockets::PortHolds;
use crate::net::bridge;
use crate::net::dns_server::Dns;
use crate::net::lb::{Balancer, Kernel, Services};
use crate::net::mesh::{Mesh, Port, Published};
use crate::net::names::{NetworkNames, ServiceNames};
use crate::net::netns;
use crate::net::overlay::{self, Endpoint, OverlayNet, VXLAN_OVERHEAD};
use crate::net::rtnl::{LinkSet, Rtnl};
use crate::net::seal::{self, NetKey};
use crate::net::sealed::{Datapath, SealedNet};
use crate::net::tap::Tap;
use crate::services::agent::Assignment;
use crate::services::network::{NetView, NodeNet};
use crate::services::store::TaskId;
use crate::services::NetworkId;

/// What a task's container is given in place of the image's `/etc/resolv.conf`: the
/// embedded server, and names with no dot never tried under a search domain.
const RESOLV_CONF: &str = "nameserver 127.0.0.11\noptions ndots:0\n";

/// The underlay's MTU when the interface holding the node's address cannot be found.
const DEFAULT_UNDERLAY_MTU: u32 = 1500;

/// Who a wired namespace is for: a task, or a standalone container on an attachable
/// network. Its name among the files of the netns directory: the task's id (16 hex
/// digits), or `a-<container id>`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Holder {
    Task(TaskId),
    Container(String),
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holder::Task(t) => write!(f, "{t}"),
            Holder::Container(c) => write!(f, "a-{c}"),
        }
    }
}

impl Holder {
    /// From a file name of the netns directory (`<holder>` or `<holder>.<ext>`).
    fn parse(name: &str) -> Option<Holder> {
        let stem = name.split('.').next().unwrap_or_default();
        if let Some(c) = stem.strip_prefix("a-") {
            let ok = crate::model::container::is_container_id(c);
            return ok.then(|| Holder::Container(c.to_string()));
        }
        u64::from_str_radix(stem, 16)
            .ok()
            .map(|t| Holder::Task(TaskId(t)))
    }
}

/// A task's namespace as its container joins it.
pub struct Wiring {
    /// The pinned namespace.
    pub netns: String,
    /// The file to bind over `/etc/resolv.conf`.
    pub resolv_conf: PathBuf,
    /// The file to bind over `/etc/hosts`, written by [`Wiring::write_hosts`].
    pub hosts: PathBuf,
    /// The task's address on its first network.
    pub addr: Ipv4Addr,
}

impl Wiring {
    /// Writes `/etc/hosts` as Docker does: localhost, and the container's hostname at
    /// its address when it has one of its own.
    pub fn write_hosts(&self, hostname: Option<&str>) -> Result<(), String> {
        write_hosts(&self.hosts, self.addr, hostname)
    }
}

/// Writes `/etc/hosts` as Docker does for a container at `addr`: localhost, and its
/// hostname at that address when it has one of its own.
pub fn write_hosts(path: &Path, addr: Ipv4Addr, hostname: Option<&str>) -> Result<(), String> {
    let mut text =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if let Some(h) = hostname {
        text.push_str(&format!("{addr}\t{h}\n"));
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// How a node wires its tasks (from the daemon's flags).
#[derive(Clone, Copy, Debug)]
pub struct PlaneConfig {
    /// Tasks get a way out through the local bridge.
    pub bridge: bool,
    /// Seconds an idle TCP connection through a VIP is kept.
    pub tcp_idle: u32,
}

pub struct Plane {
    /// Where task namespaces are pinned (`<data>/netns/<task>`), with their resolv.conf.
    dir: PathBuf,
    rtnl: Option<Rtnl>,
    mesh: Option<Mesh>,
    /// The table of ports this node's tasks publish in host mode.
    host: Option<Mesh>,
    /// Sockets holding the ports the mesh and host mode publish on this node.
    holds: PortHolds,
    dns: Dns,
    net: NodeNet,
    /// The networks whose names the DNS server holds, by VNI.
    named: BTreeSet<u32>,
    wired: BTreeMap<Holder, Wired>,
    /// The last failure [`Plane::set`] logged: said once, not on every set.
    said: Option<String>,
    /// Tasks get a way out through the local bridge (`daemon --bridge none`: not).
    bridge: bool,
    /// What balances VIPs in tasks' namespaces: IPVS where the kernel has it.
    lb: Kernel,
    /// Seconds an idle TCP connection through a VIP is kept.
    tcp_idle: u32,
    /// The underlay's MTU at the node's address, as last looked up.
    underlay: Option<(Ipv4Addr, u32)>,
    /// Encrypted networks' TAP devices, by VNI (each goes when dropped).
    taps: BTreeMap<u32, Arc<Tap>>,
    /// The encrypted networks' data path, once one is wanted.
    datapath: Option<Datapath>,
    /// Why the encrypted networks are not carried, if they are not: their tasks are
    /// refused (never wired in the clear); other networks carry on.
    sealed_broken: Option<String>,
}

struct Wired {
    netns: String,
    /// Per network of the task: its VNI and the task's address on it.
    endpoints: Vec<(u32, Ipv4Addr)>,
    /// None for a task on no network: it has no VIP to balance.
    balancer: Option<Balancer>,
    /// Its address on the local bridge.
    gw: Option<Ipv4Addr>,
}

impl Plane {
    pub fn new(dir: PathBuf, cfg: PlaneConfig) -> Plane {
        let lb = Kernel::detect();
        match lb {
            Kernel::Ipvs => info!(
                "service VIPs: balanced by IPVS ({} is there), TCP idle timeout {} s",
                crate::net::ipvs::PROC,
                cfg.tcp_idle
            ),
            Kernel::Nft => info!(
                "service VIPs: balanced by nf_tables (this kernel has no IPVS: no {}), TCP idle timeout {} s",
                crate::net::ipvs::PROC,
                cfg.tcp_idle
            ),
        }
        let upstreams = std::fs::read_to_string("/etc/resolv.conf")
            .map(|t| crate::net::dns::parse_resolv_conf(&t))
            .unwrap_or_default();
        Plane {
            dir,
            rtnl: None,
            mesh: None,
            host: None,
            holds: PortHolds::default(),
            dns: Dns::new(upstreams),
            net: NodeNet::default(),
            named: BTreeSet::new(),
            wired: BTreeMap::new(),
            said: None,
            bridge: cfg.bridge,
            lb,
            tcp_idle: cfg.tcp_idle,
            underlay: None,
            taps: BTreeMap::new(),
            datapath: None,
            sealed_broken: None,
        }
    }

    fn rtnl(&mut self) -> Result<&mut Rtnl, String> {
        if self.rtnl.is_none() {
            self.rtnl = Some(Rtnl::open().map_err(|e| e.to_string())?);
        }
        self.rtnl
            .as_mut()
            .ok_or_else(|| "no netlink socket".to_string())
    }

    /// Takes the leader's latest view and makes the kernel and the DNS tables match it.
    pub fn set(&mut self, net: NodeNet) {
        if net == self.net && self.said.is_none() {
            return;
        }
        self.net = net;
        match self.apply() {
            Ok(()) => {
                if self.said.take().is_some() {
                    info!("networks: in place again");
                }
            }
            Err(e) => {
                if self.said.as_deref() != Some(e.as_str()) {
                    error!("networks: {e}");
                }
                self.said = Some(e);
            }
        }
    }

    fn apply(&mut self) -> Result<(), String> {
        self.underlay = None;
        // Names first: they cost nothing and serve tasks already wired even if the
        // kernel refuses something below. The ingress network carries the mesh's
        // connections only: no names, no VIPs (as in Swarm).
        let named = || self.net.networks.iter().filter(|n| !n.ingress);
        let vnis: BTreeSet<u32> = named().map(|n| n.vni).collect();
        for v in named() {
            self.dns.set_names(v.vni, Some(names_of(v)));
        }
        for gone in self.named.difference(&vnis) {
            self.dns.set_names(*gone, None);
        }
        self.named = vnis;

        if self.rtnl.is_none() {
            // The first look: what an earlier run left (a network removed while the
            // daemon was down, a mesh no longer published) goes too. A daemon that
            // cannot open netlink (not root) has made nothing to remove.
            match Rtnl::open() {
                Ok(r) => self.rtnl = Some(r),
                Err(_) if self.net.networks.is_empty() => return Ok(()),
                Err(e) => return Err(format!("netlink: {e}")),
            }
            if self.net.published.is_empty() {
                // Its guard goes with it: so does the loopback routing it guarded.
                if let Some(ing) = self.net.networks.iter().find(|n| n.ingress) {
                    let _ = crate::net::route_localnet(&overlay::bridge_name(ing.vni), false);
                }
                let _ = Mesh::remove_left(crate::net::mesh::TABLE);
            }
            if self.net.host_published.is_empty() {
                let _ = Mesh::remove_left(crate::net::mesh::HOST_TABLE);
            }
        }
        let want = self.overlays()?;
        let ingress = self.net.networks.iter().find(|n| n.ingress).cloned();
        let ingress_addr = self.net.ingress_addr;
        let rtnl = self.rtnl()?;
        overlay::reconcile(rtnl, &want).map_err(|e| format!("overlay: {e}"))?;
        if let (Some(ing), Some(ip)) = (&ingress, ingress_addr) {
            overlay::set_node_address(rtnl, ing.vni, ip, ing.subnet.prefix)
                .map_err(|e| format!("ingress address {ip}: {e}"))?;
        }
        match self.sync_sealed(&want) {
            Ok(()) => {
                if self.sealed_broken.take().is_some() {
                    info!("encrypted networks: carried again");
                }
            }
            Err(e) => {
                if self.sealed_broken.as_deref() != Some(e.as_str()) {
                    error!("encrypted networks: {e}; their tasks are refused");
                }
                self.sealed_broken = Some(e);
            }
        }
        self.sync_mesh(ingress.as_ref())?;
        self.sync_host()?;
        self.hold_ports();
        let mut failed = Vec::new();
        for (h, w) in &mut self.wired {
            let want = balanced(&self.net, &w.endpoints);
            if let Some(Err(e)) = w.balancer.as_mut().map(|b| b.sync(&want)) {
                failed.push(format!("{h}: balancer: {e}"));
            }
            let vnis = named_vnis(&self.net, &w.endpoints);
            if let Err(e) = self.dns.serve(&h.to_string(), &w.netns, vnis) {
                failed.push(format!("{h}: dns: {e}"));
            }
        }
        match failed.is_empty() {
            true => Ok(()),
            false => Err(failed.join("; ")),
        }
    }

    /// The encrypted networks' TAP devices on their bridges and the data path carrying
    /// them, from the leader's keys. Fails closed: on any error the networks' tasks are
    /// refused, and a TAP nobody reads sends nothing.
    fn sync_sealed(&mut self, want: &[OverlayNet]) -> Result<(), String> {
        let sealed: Vec<NetView> = self
            .net
            .networks
            .iter()
            .filter(|n| n.encrypted)
            .cloned()
            .collect();
        let vnis: BTreeSet<u32> = sealed.iter().map(|n| n.vni).collect();
        self.taps.retain(|v, _| vnis.contains(v));
        if sealed.is_empty() {
            if let Some(d) = &self.datapath {
                d.set(Vec::new());
            }
            return Ok(());
        }
        let Some(IpAddr::V4(local)) = self.net.addr else {
            return Err("encrypted networks need an IPv4 node address".into());
        };
        if self
            .datapath
            .as_ref()
            .is_some_and(|d| *d.local().ip() != local)
        {
            self.datapath = None;
        }
        if self.datapath.is_none() {
            let random =
                crate::netio::transport::os_random().map_err(|e| format!("random session: {e}"))?;
            let mut session = [0u8; 8];
            session.copy_from_slice(&random[..8]);
            let at = SocketAddrV4::new(local, seal::PORT);
            let d = Datapath::start(at, u64::from(u32::from(local)), u64::from_le_bytes(session))
                .map_err(|e| e.to_string())?;
            self.datapath = Some(d);
        }
        let mut nets = Vec::new();
        for v in &sealed {
            let key = v
                .key
                .clone()
                .ok_or_else(|| format!("network {}: the leader sent no key", v.name))?;
            let ov = want
                .iter()
                .find(|o| o.vni == v.vni)
                .ok_or_else(|| format!("network {}: not set up", v.name))?;
            let name = overlay::tap_name(v.vni);
            let tap = match self.taps.get(&v.vni) {
                Some(t) => t.clone(),
                None => {
                    let t =
                        Arc::new(Tap::open(&name).map_err(|e| format!("network {}: {e}", v.name))?);
                    self.taps.insert(v.vni, t.clone());
                    t
                }
            };
            let rtnl = self.rtnl()?;
            let found = |r: Result<Option<crate::net::rtnl::Link>, _>, what: &str| match r {
                Ok(Some(l)) => Ok(l),
                Ok(None) => Err(format!("{what} is missing")),
                Err(e) => Err(format!("{what}: {e}")),
            };
            let br = found(
                rtnl.link(&overlay::bridge_name(v.vni)),
                "the network's bridge",
            )?;
            let t = found(rtnl.link(&name), &name)?;
            if t.master != Some(br.index) || !t.up || t.mtu != ov.mtu {
                rtnl.set_link(
                    t.index,
                    &LinkSet {
                        master: Some(br.index),
                        mtu: Some(ov.mtu),
                        up: Some(true),
                        ..LinkSet::default()
                    },
                )
                .map_err(|e| format!("{name}: {e}"))?;
            }
            nets.push(SealedNet {
                vni: v.vni,
                tap,
                key: NetKey {
                    epoch: 1,
                    key: key.0,
                },
                remote: ov.remote.clone(),
            });
        }
        if let Some(d) = &self.datapath {
            d.set(nets);
        }
        Ok(())
    }

    /// The overlay networks this node should have, as the kernel module takes them.
    fn overlays(&mut self) -> Result<Vec<OverlayNet>, String> {
        if self.net.networks.is_empty() {
            return Ok(Vec::new());
        }
        let local = match self.net.addr {
            Some(IpAddr::V4(ip)) => ip,
            Some(IpAddr::V6(ip)) => {
                return Err(format!(
                    "overlay networks need an IPv4 node address; this node is at {ip}"
                ))
            }
            None => return Err("the leader sent no address for this node".into()),
        };
        let underlay = self.underlay(local)?;
        Ok(self
            .net
            .networks
            .iter()
            .map(|v| overlay_of(v, local, underlay))
            .collect())
    }

    fn sync_mesh(&mut self, ingress: Option<&NetView>) -> Result<(), String> {
        let want: Published = self
            .net
            .published
            .iter()
            .map(|p| {
                (
                    Port {
                        proto: p.protocol,
                        port: p.published,
                    },
                    p.backends.clone(),
                )
            })
            .collect();
        let Some(ing) = ingress.filter(|_| !want.is_empty()) else {
            if let Some(mut m) = self.mesh.take() {
                m.clear().map_err(|e| format!("routing mesh: {e}"))?;
            }
            return Ok(());
        };
        // Connections taken on one node go on to tasks on others.
        forward().map_err(|e| format!("routing mesh: {e}"))?;
        if self.mesh.is_none() {
            let m = Mesh::open(&overlay::bridge_name(ing.vni))
                .map_err(|e| format!("routing mesh: {e}"))?;
            self.mesh = Some(m);
        }
        if let Some(m) = &mut self.mesh {
            m.sync(&want).map_err(|e| format!("routing mesh: {e}"))?;
        }
        Ok(())
    }

    /// Holds the ports this node publishes (the mesh's, and host mode's of its tasks)
    /// with sockets of its own, as Docker's proxy does.
    fn hold_ports(&mut self) {
        // The mesh's once it is in place (a node without ingress has none).
        let mesh = if self.mesh.is_some() {
            self.net.published.as_slice()
        } else {
            &[]
        };
        let ports = mesh
            .iter()
            .map(|p| (p.protocol, p.published))
            .chain(
                self.net
                    .host_published
                    .iter()
                    .map(|h| (h.protocol, h.published)),
            )
            .collect();
        for ((proto, port), e) in self.holds.sync(&ports) {
            warning!(
                "published port {port}/{}: a process of this node holds it too ({e}); the service takes its connections",
                proto.name()
            );
        }
    }

    /// Host-mode ports: straight to the local task's address on the local bridge (the
    /// host reaches it there; the client's address is kept).
    fn sync_host(&mut self) -> Result<(), String> {
        let mut want = Published::new();
        for h in &self.net.host_published {
            let Some(gw) = self.wired.get(&Holder::Task(h.task)).and_then(|w| w.gw) else {
                // Not wired yet (the next set repeats it), or no local bridge.
                continue;
            };
            want.entry(Port {
                proto: h.protocol,
                port: h.published,
            })
            .or_default()
            .push((gw, h.target));
        }
        if want.is_empty() {
            if let Some(mut m) = self.host.take() {
                m.clear().map_err(|e| format!("host ports: {e}"))?;
            }
            return Ok(());
        }
        forward().map_err(|e| format!("host ports: {e}"))?;
        if self.host.is_none() {
            self.host = Some(Mesh::host().map_err(|e| format!("host ports: {e}"))?);
        }
        if let Some(m) = &mut self.host {
            m.sync(&want).map_err(|e| format!("host ports: {e}"))?;
        }
        Ok(())
    }

    fn path_of(&self, h: &Holder) -> PathBuf {
        self.dir.join(h.to_string())
    }

    fn resolv_of(&self, h: &Holder) -> PathBuf {
        self.dir.join(format!("{h}.resolv.conf"))
    }

    fn hosts_of(&self, h: &Holder) -> PathBuf {
        self.dir.join(format!("{h}.hosts"))
    }

    /// Where a holder's address on the local bridge is kept (the bridge's addresses are
    /// this node's to give, and must outlive a daemon restart).
    fn gw_of(&self, h: &Holder) -> PathBuf {
        self.dir.join(format!("{h}.gw"))
    }

    /// The underlay's MTU at `local`, looked up once per set of assignments (it takes a
    /// dump of every link's addresses).
    fn underlay(&mut self, local: Ipv4Addr) -> Result<u32, String> {
        if let Some((at, mtu)) = self.underlay {
            if at == local {
                return Ok(mtu);
            }
        }
        let mtu = underlay_mtu(self.rtnl()?, local);
        self.underlay = Some((local, mtu));
        Ok(mtu)
    }

    /// The local bridge, its NAT and forwarding, in place.
    fn ensure_bridge(&mut self) -> Result<(), String> {
        ensure_bridge(self.rtnl()?)
    }

    /// Wires a task's namespace to its networks before its container starts (again,
    /// harmlessly, if it is wired). None for a task on no network. On failure nothing
    /// of it is left.
    pub fn prepare(&mut self, a: &Assignment) -> Result<Option<Wiring>, String> {
        if a.addrs.is_empty() && !self.bridge {
            return Ok(None);
        }
        let h = Holder::Task(a.task);
        match self.wire(&h, &a.addrs) {
            Ok(w) => Ok(Some(w)),
            Err(e) => {
                self.release(&h);
                Err(e)
            }
        }
    }

    /// Wires standalone container `id` to the network the leader attached it to (in
    /// the last set). Err if the leader refused it, and names the reason; None if the
    /// set says nothing of it yet.
    pub fn attach(&mut self, id: &str) -> Option<Result<Wiring, String>> {
        if let Some((_, why)) = self.net.attach_refused.iter().find(|(c, _)| c == id) {
            return Some(Err(why.clone()));
        }
        let a = self.net.attachments.iter().find(|a| a.container == id)?;
        let addrs = [(a.network, a.addr)];
        let h = Holder::Container(id.to_string());
        Some(self.wire(&h, &addrs).inspect_err(|_| self.release(&h)))
    }

    /// Unwires standalone container `id` (its container is gone).
    pub fn detach(&mut self, id: &str) {
        self.release(&Holder::Container(id.to_string()));
    }

    fn wire(&mut self, h: &Holder, addrs: &[(NetworkId, Ipv4Addr)]) -> Result<Wiring, String> {
        // The node's networks as the last set left them: a task is never wired into an
        // overlay the kernel refused to finish (a bridge with no way to other nodes).
        // The attempt is repeated first, so a cause since removed does not hold it up;
        // likewise for the encrypted networks' data path when the task is on one.
        let encrypted = addrs
            .iter()
            .any(|(id, _)| self.net.networks.iter().any(|n| n.id == *id && n.encrypted));
        if self.said.is_some() || (encrypted && self.sealed_broken.is_some()) {
            match self.apply() {
                Ok(()) => {
                    self.said = None;
                    info!("networks: in place again");
                }
                Err(e) => return Err(format!("this node's networks are not in place: {e}")),
            }
        }
        let path = self.path_of(h);
        let netns = path.display().to_string();
        netns::create(&path).map_err(|e| e.to_string())?;
        let mut endpoints = Vec::new();
        for (i, (id, ip)) in addrs.iter().enumerate() {
            let local = match self.net.addr {
                Some(IpAddr::V4(ip)) => ip,
                _ => return Err("overlay networks need an IPv4 node address".into()),
            };
            let underlay = self.underlay(local)?;
            let view = self
                .net
                .networks
                .iter()
                .find(|n| n.id == *id)
                .ok_or_else(|| format!("network {id} is not among this node's networks"))?;
            if view.encrypted {
                if let Some(e) = &self.sealed_broken {
                    return Err(format!(
                        "encrypted network {}: not carried on this node ({e})",
                        view.name
                    ));
                }
                if !self.taps.contains_key(&view.vni) {
                    return Err(format!(
                        "encrypted network {}: its data path is not in place on this node",
                        view.name
                    ));
                }
            }
            let ov = overlay_of(view, local, underlay);
            let ep = Endpoint {
                netns: netns.clone(),
                ifname: format!("eth{i}"),
                ip: *ip,
                prefix: view.subnet.prefix,
            };
            let name = view.name.clone();
            endpoints.push((view.vni, *ip));
            overlay::attach(self.rtnl()?, &ov, &ep).map_err(|e| format!("network {name}: {e}"))?;
        }
        // The way out comes last, after the overlay interfaces (eth0 is the first
        // network's, as in Swarm).
        let gw = match self.bridge {
            true => {
                self.ensure_bridge()?;
                let ip = bridge_addr(&self.dir, &h.to_string())?;
                let ifname = format!("eth{}", endpoints.len());
                bridge::attach(self.rtnl()?, &netns, &ifname, ip)
                    .map_err(|e| format!("{}: {e}", bridge::BRIDGE))?;
                Some(ip)
            }
            false => None,
        };
        let balancer = match endpoints.is_empty() {
            true => None,
            false => {
                let mut b = Balancer::open_with(&netns, self.lb, self.tcp_idle)
                    .map_err(|e| format!("balancer: {e}"))?;
                b.sync(&balanced(&self.net, &endpoints))
                    .map_err(|e| format!("balancer: {e}"))?;
                Some(b)
            }
        };
        let vnis = named_vnis(&self.net, &endpoints);
        self.dns
            .serve(&h.to_string(), &netns, vnis)
            .map_err(|e| format!("dns: {e}"))?;
        let resolv_conf = self.resolv_of(h);
        std::fs::write(&resolv_conf, RESOLV_CONF)
            .map_err(|e| format!("{}: {e}", resolv_conf.display()))?;
        let addr = endpoints
            .first()
            .map(|(_, ip)| *ip)
            .or(gw)
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        self.wired.insert(
            h.clone(),
            Wired {
                netns: netns.clone(),
                endpoints,
                balancer,
                gw,
            },
        );
        Ok(Wiring {
            netns,
            resolv_conf,
            hosts: self.hosts_of(h),
            addr,
        })
    }

    /// Unwires a holder: its DNS socket, its veths and its namespace. What is already
    /// gone is not an error; what cannot be removed is logged and tried again by the
    /// next [`Plane::tidy`].
    fn release(&mut self, h: &Holder) {
        let key = h.to_string();
        self.dns.stop(&key);
        let w = self.wired.remove(h);
        let path = self.path_of(h);
        // After a restart the address on the bridge is known from its file only.
        let gw = w
            .as_ref()
            .and_then(|w| w.gw)
            .or_else(|| read_addr(&self.gw_of(h)));
        if let Ok(rtnl) = self.rtnl() {
            for (vni, ip) in w.iter().flat_map(|w| &w.endpoints) {
                if let Err(e) = overlay::detach(rtnl, *vni, *ip) {
                    warning!("networks: {h}: {e}");
                }
            }
            if let Some(Err(e)) = gw.map(|ip| bridge::detach(rtnl, ip)) {
                warning!("networks: {h}: {e}");
            }
        }
        if let Err(e) = netns::remove(&path) {
            warning!("networks: {h}: {e}");
        }
        let _ = std::fs::remove_file(self.resolv_of(h));
        let _ = std::fs::remove_file(self.hosts_of(h));
        let _ = std::fs::remove_file(self.gw_of(h));
    }

    /// Keeps the namespaces of the tasks in `keep` (a live container, or a start under
    /// way) and of the standalone containers in `containers` (those that exist), and
    /// frees all others. A namespace found pinned but not wired by this process (the
    /// daemon restarted under a running task) is wired again from its assignment, or
    /// for a container from its attachment.
    pub fn tidy<'a>(
        &mut self,
        keep: &BTreeSet<TaskId>,
        containers: &BTreeSet<String>,
        assignment: impl Fn(TaskId) -> Option<&'a Assignment>,
    ) {
        let mut found: BTreeSet<Holder> = self.wired.keys().cloned().collect();
        if let Ok(dir) = std::fs::read_dir(&self.dir) {
            for e in dir.flatten() {
                if let Some(h) = Holder::parse(&e.file_name().to_string_lossy()) {
                    found.insert(h);
                }
            }
        }
        for h in found {
            let kept = match &h {
                Holder::Task(t) => keep.contains(t),
                Holder::Container(c) => containers.contains(c),
            };
            if !kept {
                self.release(&h);
                continue;
            }
            if self.wired.contains_key(&h) || !netns::is_pinned(&self.path_of(&h)) {
                continue;
            }
            let again = match &h {
                Holder::Task(t) => match assignment(*t) {
                    Some(a) => {
                        let a = a.clone();
                        self.prepare(&a).map(drop)
                    }
                    None => Ok(()),
                },
                Holder::Container(c) => self.attach(c).map_or(Ok(()), |r| r.map(drop)),
            };
            if let Err(e) = again {
                warning!("networks: {h}: wiring again after a restart: {e}");
            }
        }
    }
}

/// The node's local bridge up, with its NAT table (made once per process, whole) and
/// forwarding on; for tasks (the agent's thread) and `run`'s containers alike.
pub(super) fn ensure_bridge(rtnl: &mut Rtnl) -> Result<(), String> {
    static NAT: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    bridge::ensure(rtnl).map_err(|e| match e.errno() {
        Some(libc::EOPNOTSUPP) => format!(
            "{}: this kernel cannot make a bridge (is the bridge module loaded?); \
             `daemon --bridge none` runs without one",
            bridge::BRIDGE
        ),
        _ => format!("{}: {e}", bridge::BRIDGE),
    })?;
    let mut nat = NAT.lock().unwrap_or_else(|p| p.into_inner());
    if !*nat {
        let mut nft = crate::net::nft::Nft::open().map_err(|e| e.to_string())?;
        bridge::nat(&mut nft).map_err(|e| format!("{}: {e}", bridge::BRIDGE))?;
        forward().map_err(|e| format!("{}: {e}", bridge::BRIDGE))?;
        *nat = true;
    }
    Ok(())
}

/// The address on the local bridge of `key` (a task, or `c-<id>` for a container): the
/// one recorded in `<dir>/<key>.gw`, or the lowest free one, recorded. The bridge's
/// addresses are this node's to give, and must outlive a daemon restart; tasks and
/// containers draw them from one directory, under one lock.
pub(super) fn bridge_addr(dir: &Path, key: &str) -> Result<Ipv4Addr, String> {
    static ALLOC: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let path = dir.join(format!("{key}.gw"));
    if let Some(ip) = read_addr(&path) {
        return Ok(ip);
    }
    let _g = ALLOC.lock().unwrap_or_else(|p| p.into_inner());
    let mut used = BTreeSet::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().ends_with(".gw") {
                used.extend(read_addr(&e.path()));
            }
        }
    }
    let ip = bridge::free_addr(&used)
        .ok_or_else(|| format!("{}: no address left on {}", dir.display(), bridge::BRIDGE))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::write(&path, format!("{ip}\n")).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(ip)
}

/// Turns on IPv4 forwarding in the daemon's namespace (as Docker does): the mesh sends
/// connections on to other nodes, the local bridge sends tasks' traffic out.
fn forward() -> Result<(), String> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .map_err(|e| format!("turning on IPv4 forwarding: {e}"))
}

pub(super) fn read_addr(path: &Path) -> Option<Ipv4Addr> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The overlay as the kernel module takes it.
fn overlay_of(v: &NetView, local: Ipv4Addr, underlay: u32) -> OverlayNet {
    let overhead = match v.encrypted {
        true => u32::try_from(seal::OVERHEAD).unwrap_or(u32::MAX),
        false => VXLAN_OVERHEAD,
    };
    OverlayNet {
        sealed: v.encrypted,
        vni: v.vni,
        mtu: v.mtu.unwrap_or(underlay.saturating_sub(overhead)),
        local,
        remote: v
            .remote
            .iter()
            .filter_map(|(ip, node)| match node {
                IpAddr::V4(n) => Some((*ip, *n)),
                IpAddr::V6(_) => None,
            })
            .collect(),
    }
}

/// A network's names for the DNS server.
fn names_of(v: &NetView) -> NetworkNames {
    v.services
        .iter()
        .map(|s| {
            (
                s.name.to_ascii_lowercase(),
                ServiceNames {
                    vip: s.vip,
                    tasks: s.tasks.clone(),
                },
            )
        })
        .collect()
}

/// The networks of a task whose names its DNS server answers: all but ingress.
fn named_vnis(net: &NodeNet, endpoints: &[(u32, Ipv4Addr)]) -> Vec<u32> {
    endpoints
        .iter()
        .map(|(v, _)| *v)
        .filter(|v| net.networks.iter().any(|n| n.vni == *v && !n.ingress))
        .collect()
}

/// What a task's balancer holds: the VIPs of the services on its networks (not
/// ingress, whose connections come from the mesh), each with its serving tasks'
/// addresses.
fn balanced(net: &NodeNet, endpoints: &[(u32, Ipv4Addr)]) -> Services {
    let mut out = Services::new();
    for (vni, _) in endpoints {
        let Some(v) = net.networks.iter().find(|n| n.vni == *vni && !n.ingress) else {
            continue;
        };
        for s in &v.services {
            if let Some(vip) = s.vip {
                out.insert(vip, s.tasks.iter().map(|(_, ip)| *ip).collect());
            }
        }
    }
    out
}

/// The MTU of the interface that holds `local` (VXLAN's packets leave by it).
fn underlay_mtu(rtnl: &mut Rtnl, local: Ipv4Addr) -> u32 {
    let Ok(links) = rtnl.links() else {
        return DEFAULT_UNDERLAY_MTU;
    };
    for l in links {
        if rtnl
            .addrs(l.index)
            .is_ok_and(|a| a.iter().any(|(ip, _)| *ip == local))
        {
            return l.mtu;
        }
    }
    DEFAULT_UNDERLAY_MTU
}

/// The directory of a data dir's task namespaces.
pub fn netns_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("netns")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::network::ServiceEndpoints;
    use crate::services::NetworkId;

    fn view(vni: u32, services: Vec<ServiceEndpoints>) -> NetView {
        NetView {
            id: NetworkId(u64::from(vni)),
            name: format!("n{vni}"),
            vni,
            subnet: crate::services::ipam::Ipv4Net::parse("10.0.1.0/24").unwrap(),
            gateway: Ipv4Addr::new(10, 0, 1, 1),
            mtu: None,
            encrypted: false,
            key: None,
            ingress: false,
            remote: vec![
                (Ipv4Addr::new(10, 0, 1, 9), IpAddr::from([192, 168, 1, 2])),
                (Ipv4Addr::new(10, 0, 1, 8), "fd00::2".parse().unwrap()),
            ],
            services,
        }
    }

    fn svc(name: &str, vip: Option<[u8; 4]>, tasks: &[[u8; 4]]) -> ServiceEndpoints {
        ServiceEndpoints {
            name: name.into(),
            vip: vip.map(Ipv4Addr::from),
            tasks: tasks
                .iter()
                .enumerate()
                .map(|(i, ip)| (format!("{name}.{}.x", i + 1), Ipv4Addr::from(*ip)))
                .collect(),
        }
    }

    #[test]
    fn a_task_balances_the_vips_of_its_own_networks_only() {
        let net = NodeNet {
            networks: vec![
                view(
                    4097,
                    vec![
                        svc("web", Some([10, 0, 1, 2]), &[[10, 0, 1, 5], [10, 0, 1, 6]]),
                        svc("rr", None, &[[10, 0, 1, 7]]),
                        svc("idle", Some([10, 0, 1, 3]), &[]),
                    ],
                ),
                view(4098, vec![svc("db", Some([10, 0, 2, 2]), &[[10, 0, 2, 5]])]),
            ],
            ..NodeNet::default()
        };
        let b = balanced(&net, &[(4097, Ipv4Addr::new(10, 0, 1, 4))]);
        assert_eq!(
            b,
            Services::from([
                (
                    Ipv4Addr::new(10, 0, 1, 2),
                    vec![Ipv4Addr::new(10, 0, 1, 5), Ipv4Addr::new(10, 0, 1, 6)]
                ),
                // A VIP with no task stays, so it refuses at once.
                (Ipv4Addr::new(10, 0, 1, 3), vec![]),
            ])
        );
        let names = names_of(&net.networks[0]);
        assert_eq!(names["rr"].vip, None);
        assert_eq!(names["web"].tasks.len(), 2);
        // The ingress network: neither balanced nor named.
        let mut net = net;
        net.networks[1].ingress = true;
        let both = [
            (4097, Ipv4Addr::new(10, 0, 1, 4)),
            (4098, Ipv4Addr::new(10, 0, 2, 4)),
        ];
        assert_eq!(balanced(&net, &both).len(), 2, "only 4097's VIPs");
        assert_eq!(named_vnis(&net, &both), vec![4097]);
    }

    #[test]
    fn overlays_take_the_underlay_mtu_and_skip_ipv6_nodes() {
        let v = view(4097, vec![]);
        let o = overlay_of(&v, Ipv4Addr::new(192, 168, 1, 1), 9000);
        assert_eq!(o.mtu, 9000 - VXLAN_OVERHEAD);
        assert_eq!(
            o.remote.into_iter().collect::<Vec<_>>(),
            vec![(Ipv4Addr::new(10, 0, 1, 9), Ipv4Addr::new(192, 168, 1, 2))]
        );
        let v = NetView {
            mtu: Some(1400),
            ..view(4097, vec![])
        };
        assert_eq!(overlay_of(&v, Ipv4Addr::LOCALHOST, 9000).mtu, 1400);
    }
}

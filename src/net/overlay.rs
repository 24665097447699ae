//! Overlay networks on one node: per network a bridge and a VXLAN device, forwarding
//! and neighbour entries for every endpoint on other nodes, and a veth into each local
//! task's network namespace.
//!
//! Reconciled, never scripted: [`plan`] compares what a node should have (from cluster
//! state) with what the kernel has and returns the operations that close the gap, so a
//! daemon restart, a reboot or a half-finished earlier attempt all end in the same
//! place; [`apply`] carries them out. The plan is pure and tested on its own.
//!
//! Why this shape:
//! - Bridge and VXLAN device live in the host's namespace with no address on the
//!   bridge, so the host neither routes into the overlay nor sees its subnets; networks
//!   with the same subnet can sit side by side (their bridges never meet).
//! - The VXLAN device has learning off and answers ARP from its neighbour table
//!   (`proxy`): every remote endpoint is programmed from cluster state (its MAC behind
//!   its node's address, its IP at its MAC), so nothing is flooded to every node and an
//!   endpoint is reachable the moment its entry is in, as Swarm does.
//! - An endpoint's MAC is made from its IP (`02:42` and the four octets, Docker's
//!   scheme), so the cluster state only carries addresses.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::Ipv4Addr;

use super::rtnl::{in_netns, Link, LinkSet, Mac, NewLink, Rtnl, RtnlError};

/// IANA's VXLAN port (Swarm's default data path port).
pub const VXLAN_PORT: u16 = 4789;

/// What VXLAN over IPv4 adds to each frame: outer IPv4 (20), UDP (8), VXLAN (8) and
/// the inner Ethernet header (14). The overlay's MTU is the underlay's minus this.
pub const VXLAN_OVERHEAD: u32 = 50;

/// Names of the links this module owns start with this; anything else is left alone.
const PREFIX: &str = "sw";

/// An encrypted network's TAP device (made and held by the daemon, not by [`plan`]).
pub fn tap_name(vni: u32) -> String {
    format!("{PREFIX}-t{vni}")
}

/// One overlay network as one node should have it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverlayNet {
    /// An encrypted network: its bridge only, no VXLAN device and no entries. Its way
    /// off the node is a TAP device the encrypted data path (`sealed`) holds open.
    pub sealed: bool,
    pub vni: u32,
    /// The overlay's MTU (the underlay's minus [`VXLAN_OVERHEAD`]).
    pub mtu: u32,
    /// The node's own advertised address: the tunnel's source.
    pub local: Ipv4Addr,
    /// Endpoints on other nodes: overlay address -> that node's address.
    pub remote: BTreeMap<Ipv4Addr, Ipv4Addr>,
}

/// A local task's interface on an overlay network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The task's network namespace (`/proc/PID/ns/net`).
    pub netns: String,
    /// Its name inside the namespace (`eth0`, `eth1`, ...).
    pub ifname: String,
    pub ip: Ipv4Addr,
    pub prefix: u8,
}

pub fn bridge_name(vni: u32) -> String {
    format!("{PREFIX}-b{vni}")
}

pub fn vxlan_name(vni: u32) -> String {
    format!("{PREFIX}-x{vni}")
}

/// The host side of an endpoint's veth pair (15 bytes at most, the kernel's limit).
pub fn host_veth(vni: u32, ip: Ipv4Addr) -> String {
    format!("{PREFIX}v{:012x}", endpoint_key(vni, ip))
}

/// The peer's name while it is still in the host namespace, before the move.
fn peer_veth(vni: u32, ip: Ipv4Addr) -> String {
    format!("{PREFIX}p{:012x}", endpoint_key(vni, ip))
}

/// 48 bits identifying (network, address) on a node: splitmix64's finaliser, so two
/// endpoints on one node collide with odds of 2^-48.
fn endpoint_key(vni: u32, ip: Ipv4Addr) -> u64 {
    let mut z =
        (u64::from(vni) << 32 | u64::from(u32::from(ip))).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) & 0xffff_ffff_ffff
}

/// Docker's MAC for an address: locally administered `02:42` and the four octets.
pub fn mac_of(ip: Ipv4Addr) -> Mac {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

/// What the kernel has that this module owns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Links whose names start with the module's prefix.
    pub links: Vec<Link>,
    /// Per VXLAN device name: permanent ARP entries (IP, MAC).
    pub neigh: BTreeMap<String, BTreeSet<(Ipv4Addr, Mac)>>,
    /// Per VXLAN device name: forwarding entries (MAC, remote node).
    pub fdb: BTreeMap<String, BTreeSet<(Mac, Ipv4Addr)>>,
}

/// One change to the kernel's state. Links are named; [`apply`] finds their indexes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    DelLink(String),
    AddLink(NewLink),
    /// Enslave `link` to the bridge `master` and bring it up.
    Enslave {
        link: String,
        master: String,
    },
    Up(String),
    SetNeigh {
        dev: String,
        ip: Ipv4Addr,
        mac: Mac,
    },
    DelNeigh {
        dev: String,
        ip: Ipv4Addr,
        mac: Mac,
    },
    SetFdb {
        dev: String,
        mac: Mac,
        dst: Ipv4Addr,
    },
    DelFdb {
        dev: String,
        mac: Mac,
        dst: Ipv4Addr,
    },
}

/// What to do to make the kernel hold `want` and no other overlay network. Endpoint
/// veths of networks no longer wanted go with their bridge; those of wanted networks are
/// [`attach`]'s and [`detach`]'s business.
pub fn plan(want: &[OverlayNet], have: &Observed) -> Vec<Op> {
    let mut ops = Vec::new();
    let by_name: BTreeMap<&str, &Link> = have.links.iter().map(|l| (l.name.as_str(), l)).collect();
    let wanted: BTreeSet<String> = want
        .iter()
        .flat_map(|n| {
            let mut names = vec![bridge_name(n.vni)];
            if !n.sealed {
                names.push(vxlan_name(n.vni));
            }
            names
        })
        .collect();
    let bridges: BTreeMap<u32, &str> = have
        .links
        .iter()
        .filter(|l| l.kind.as_deref() == Some("bridge") && is_network_link(&l.name))
        .map(|l| (l.index, l.name.as_str()))
        .collect();
    for l in &have.links {
        let ours = l.kind.as_deref() == Some("bridge") || l.kind.as_deref() == Some("vxlan");
        if ours && !wanted.contains(&l.name) && is_network_link(&l.name) {
            ops.push(Op::DelLink(l.name.clone()));
        }
        // A veth left on a bridge that goes: it would go with it, but say so.
        if l.kind.as_deref() == Some("veth") {
            let master = l.master.and_then(|m| bridges.get(&m).copied());
            if master.is_some_and(|m| !wanted.contains(m)) {
                ops.push(Op::DelLink(l.name.clone()));
            }
        }
    }
    for n in want {
        let (br, vx) = (bridge_name(n.vni), vxlan_name(n.vni));
        let bridge = by_name.get(br.as_str());
        let bridge_ok = bridge.is_some_and(|b| b.kind.as_deref() == Some("bridge"));
        if !bridge_ok {
            if bridge.is_some() {
                ops.push(Op::DelLink(br.clone()));
            }
            ops.push(Op::AddLink(NewLink::Bridge {
                name: br.clone(),
                mtu: n.mtu,
            }));
        }
        if !bridge_ok || !bridge.is_some_and(|b| b.up) {
            ops.push(Op::Up(br.clone()));
        }
        if n.sealed {
            continue;
        }
        let vxlan = by_name.get(vx.as_str());
        let vxlan_ok = vxlan.is_some_and(|l| {
            l.vxlan.as_ref().is_some_and(|v| {
                v.vni == n.vni
                    && v.local == Some(n.local)
                    && v.port == VXLAN_PORT
                    && !v.learning
                    && v.proxy
            }) && l.mtu == n.mtu
        });
        if !vxlan_ok {
            if vxlan.is_some() {
                ops.push(Op::DelLink(vx.clone()));
            }
            ops.push(Op::AddLink(NewLink::Vxlan {
                name: vx.clone(),
                vni: n.vni,
                local: n.local,
                port: VXLAN_PORT,
                mtu: n.mtu,
            }));
        }
        let enslaved = vxlan_ok
            && bridge_ok
            && vxlan.is_some_and(|v| v.up && v.master == bridge.map(|b| b.index));
        if !enslaved {
            ops.push(Op::Enslave {
                link: vx.clone(),
                master: br.clone(),
            });
        }
        // A recreated device starts with no entries.
        let empty = BTreeSet::new();
        let (have_neigh, have_fdb) = match vxlan_ok {
            true => (have.neigh.get(&vx).unwrap_or(&empty), have.fdb.get(&vx)),
            false => (&empty, None),
        };
        let want_neigh: BTreeSet<(Ipv4Addr, Mac)> =
            n.remote.keys().map(|ip| (*ip, mac_of(*ip))).collect();
        let want_fdb: BTreeSet<(Mac, Ipv4Addr)> = n
            .remote
            .iter()
            .map(|(ip, node)| (mac_of(*ip), *node))
            .collect();
        for (ip, mac) in have_neigh.difference(&want_neigh) {
            ops.push(Op::DelNeigh {
                dev: vx.clone(),
                ip: *ip,
                mac: *mac,
            });
        }
        let empty_fdb = BTreeSet::new();
        let have_fdb = have_fdb.unwrap_or(&empty_fdb);
        for (mac, dst) in have_fdb.difference(&want_fdb) {
            ops.push(Op::DelFdb {
                dev: vx.clone(),
                mac: *mac,
                dst: *dst,
            });
        }
        for (mac, dst) in want_fdb.difference(have_fdb) {
            ops.push(Op::SetFdb {
                dev: vx.clone(),
                mac: *mac,
                dst: *dst,
            });
        }
        for (ip, mac) in want_neigh.difference(have_neigh) {
            ops.push(Op::SetNeigh {
                dev: vx.clone(),
                ip: *ip,
                mac: *mac,
            });
        }
    }
    ops
}

/// A bridge or VXLAN device name this module made.
fn is_network_link(name: &str) -> bool {
    let rest = name
        .strip_prefix(&format!("{PREFIX}-b"))
        .or_else(|| name.strip_prefix(&format!("{PREFIX}-x")));
    rest.is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()))
}

/// Reads what the kernel has that [`plan`] looks at.
pub fn observe(rtnl: &mut Rtnl) -> Result<Observed, RtnlError> {
    let links: Vec<Link> = rtnl
        .links()?
        .into_iter()
        .filter(|l| l.name.starts_with(PREFIX))
        .collect();
    let mut obs = Observed::default();
    for l in &links {
        if l.kind.as_deref() != Some("vxlan") {
            continue;
        }
        let neigh = rtnl
            .neighbours(l.index, false)?
            .into_iter()
            .filter(|n| n.permanent)
            .filter_map(|n| Some((n.ip?, n.mac)))
            .collect();
        let fdb = rtnl
            .neighbours(l.index, true)?
            .into_iter()
            .filter_map(|n| Some((n.mac, n.ip?)))
            .collect();
        obs.neigh.insert(l.name.clone(), neigh);
        obs.fdb.insert(l.name.clone(), fdb);
    }
    obs.links = links;
    Ok(obs)
}

/// Carries out `ops` in order; stops at the first the kernel refuses (the next
/// reconcile plans again from what is there).
pub fn apply(rtnl: &mut Rtnl, ops: &[Op]) -> Result<(), RtnlError> {
    let mut index: BTreeMap<String, u32> = BTreeMap::new();
    let mut refresh = true;
    for op in ops {
        if refresh {
            index = rtnl
                .links()?
                .into_iter()
                .map(|l| (l.name, l.index))
                .collect();
            refresh = false;
        }
        let idx = |name: &str| {
            index
                .get(name)
                .copied()
                .ok_or_else(|| RtnlError::Protocol(format!("link {name} vanished")))
        };
        match op {
            Op::DelLink(name) => {
                if let Ok(i) = idx(name) {
                    rtnl.del_link(i)?;
                }
                refresh = true;
            }
            Op::AddLink(new) => {
                rtnl.add_link(new)?;
                refresh = true;
            }
            Op::Enslave { link, master } => {
                let set = LinkSet {
                    master: Some(idx(master)?),
                    up: Some(true),
                    ..LinkSet::default()
                };
                rtnl.set_link(idx(link)?, &set)
                    .map_err(|e| up_error(link, e))?;
            }
            Op::Up(name) => rtnl
                .set_link(
                    idx(name)?,
                    &LinkSet {
                        up: Some(true),
                        ..LinkSet::default()
                    },
                )
                .map_err(|e| up_error(name, e))?,
            Op::SetNeigh { dev, ip, mac } => rtnl.set_neighbour(idx(dev)?, false, *ip, *mac)?,
            Op::DelNeigh { dev, ip, mac } => rtnl.del_neighbour(idx(dev)?, false, *ip, *mac)?,
            Op::SetFdb { dev, mac, dst } => rtnl.set_neighbour(idx(dev)?, true, *dst, *mac)?,
            Op::DelFdb { dev, mac, dst } => rtnl.del_neighbour(idx(dev)?, true, *dst, *mac)?,
        }
    }
    Ok(())
}

/// A VXLAN device opens its UDP port when it comes up: the kernel's "address in use"
/// then means another program holds the port, and the error says so.
fn up_error(link: &str, e: RtnlError) -> RtnlError {
    match e {
        RtnlError::Kernel { source, .. } if source.raw_os_error() == Some(libc::EADDRINUSE) => {
            RtnlError::Kernel {
                what: format!(
                    "bring up {link}: UDP port {VXLAN_PORT} (VXLAN) is taken by another program on this node"
                ),
                source,
            }
        }
        e => e,
    }
}

/// Observes, plans and applies; returns how many operations it took.
pub fn reconcile(rtnl: &mut Rtnl, want: &[OverlayNet]) -> Result<usize, RtnlError> {
    let ops = plan(want, &observe(rtnl)?);
    apply(rtnl, &ops)?;
    Ok(ops.len())
}

/// Connects a local task to a network: a veth pair, one end on the network's bridge,
/// the other in the task's namespace with its address. Does nothing if the pair is
/// there; on any failure removes what it made, so no half-wired endpoint stays.
pub fn attach(rtnl: &mut Rtnl, net: &OverlayNet, ep: &Endpoint) -> Result<(), RtnlError> {
    let bridge = rtnl.link(&bridge_name(net.vni))?.ok_or_else(|| {
        RtnlError::Protocol(format!("overlay network {} is not set up here", net.vni))
    })?;
    attach_to(rtnl, &bridge, net.vni, net.mtu, ep, None)
}

/// [`attach`] to any bridge of ours: `key` tells the endpoint's veth names apart from
/// those of the same address on other bridges (a network's VNI; 0, which no network
/// has, for the node's local bridge), and `gateway`, when given, becomes the default
/// route inside the namespace.
pub fn attach_to(
    rtnl: &mut Rtnl,
    bridge: &Link,
    key: u32,
    mtu: u32,
    ep: &Endpoint,
    gateway: Option<Ipv4Addr>,
) -> Result<(), RtnlError> {
    let host = host_veth(key, ep.ip);
    if let Some(l) = rtnl.link(&host)? {
        if l.master == Some(bridge.index) && l.up {
            return Ok(());
        }
        rtnl.del_link(l.index)?;
    }
    let peer = peer_veth(key, ep.ip);
    rtnl.add_link(&NewLink::Veth {
        name: host.clone(),
        peer: peer.clone(),
        mtu,
        peer_mac: Some(mac_of(ep.ip)),
    })?;
    let wired = wire(rtnl, bridge, &host, &peer, ep, gateway);
    if wired.is_err() {
        if let Ok(Some(l)) = rtnl.link(&host) {
            let _ = rtnl.del_link(l.index);
        }
    }
    wired
}

fn wire(
    rtnl: &mut Rtnl,
    bridge: &Link,
    host: &str,
    peer: &str,
    ep: &Endpoint,
    gateway: Option<Ipv4Addr>,
) -> Result<(), RtnlError> {
    let ns = File::open(&ep.netns).map_err(|source| RtnlError::Netns {
        path: ep.netns.clone(),
        source,
    })?;
    let p = rtnl
        .link(peer)?
        .ok_or_else(|| RtnlError::Protocol(format!("veth peer {peer} vanished")))?;
    rtnl.set_link(
        p.index,
        &LinkSet {
            netns: Some(ns),
            ..LinkSet::default()
        },
    )?;
    let (peer, ifname, ip, prefix) = (peer.to_string(), ep.ifname.clone(), ep.ip, ep.prefix);
    in_netns(&ep.netns, move || -> Result<(), RtnlError> {
        let mut inner = Rtnl::open()?;
        let p = inner
            .link(&peer)?
            .ok_or_else(|| RtnlError::Protocol(format!("veth peer {peer} not in the namespace")))?;
        inner.set_link(
            p.index,
            &LinkSet {
                name: Some(ifname),
                ..LinkSet::default()
            },
        )?;
        inner.add_addr(p.index, ip, prefix)?;
        inner.set_link(
            p.index,
            &LinkSet {
                up: Some(true),
                ..LinkSet::default()
            },
        )?;
        if let Some(gw) = gateway {
            inner.set_route(Ipv4Addr::UNSPECIFIED, 0, Some(gw), p.index)?;
        }
        if let Some(lo) = inner.link("lo")? {
            inner.set_link(
                lo.index,
                &LinkSet {
                    up: Some(true),
                    ..LinkSet::default()
                },
            )?;
        }
        Ok(())
    })??;
    let h = rtnl
        .link(host)?
        .ok_or_else(|| RtnlError::Protocol(format!("veth {host} vanished")))?;
    rtnl.set_link(
        h.index,
        &LinkSet {
            master: Some(bridge.index),
            up: Some(true),
            ..LinkSet::default()
        },
    )
}

/// Gives the node itself an address on a network (the ingress network's, where the
/// routing mesh sends connections from): on the bridge, whose MAC becomes the one made
/// from the address so the other nodes' entries for it hold.
pub fn set_node_address(
    rtnl: &mut Rtnl,
    vni: u32,
    ip: Ipv4Addr,
    prefix: u8,
) -> Result<(), RtnlError> {
    let br = rtnl
        .link(&bridge_name(vni))?
        .ok_or_else(|| RtnlError::Protocol(format!("overlay network {vni} is not set up here")))?;
    if br.mac != Some(mac_of(ip)) {
        rtnl.set_link(
            br.index,
            &LinkSet {
                mac: Some(mac_of(ip)),
                ..LinkSet::default()
            },
        )?;
    }
    let have = rtnl.addrs(br.index)?;
    if !have.contains(&(ip, prefix)) {
        rtnl.add_addr(br.index, ip, prefix)?;
    }
    Ok(())
}

/// Disconnects a local task's endpoint (its namespace may be gone already, taking the
/// pair with it: then there is nothing to do).
pub fn detach(rtnl: &mut Rtnl, vni: u32, ip: Ipv4Addr) -> Result<(), RtnlError> {
    match rtnl.link(&host_veth(vni, ip))? {
        Some(l) => rtnl.del_link(l.index),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::rtnl::VxlanInfo;

    const LOCAL: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);

    fn net(vni: u32, remote: &[(u8, u8)]) -> OverlayNet {
        OverlayNet {
            sealed: false,
            vni,
            mtu: 1450,
            local: LOCAL,
            remote: remote
                .iter()
                .map(|(t, n)| (Ipv4Addr::new(10, 0, 0, *t), Ipv4Addr::new(192, 168, 1, *n)))
                .collect(),
        }
    }

    fn link(index: u32, name: &str, kind: &str, master: Option<u32>) -> Link {
        Link {
            index,
            name: name.into(),
            kind: Some(kind.into()),
            master,
            mtu: 1450,
            up: true,
            mac: None,
            vxlan: (kind == "vxlan").then(|| VxlanInfo {
                vni: name.trim_start_matches("sw-x").parse().unwrap(),
                local: Some(LOCAL),
                port: VXLAN_PORT,
                learning: false,
                proxy: true,
            }),
        }
    }

    /// The kernel state `plan`'s ops would leave, for a network with these remotes.
    fn settled(n: &OverlayNet) -> Observed {
        let vx = vxlan_name(n.vni);
        Observed {
            links: vec![
                link(10, &bridge_name(n.vni), "bridge", None),
                link(11, &vx, "vxlan", Some(10)),
            ],
            neigh: [(
                vx.clone(),
                n.remote.keys().map(|ip| (*ip, mac_of(*ip))).collect(),
            )]
            .into(),
            fdb: [(
                vx,
                n.remote.iter().map(|(ip, nd)| (mac_of(*ip), *nd)).collect(),
            )]
            .into(),
        }
    }

    #[test]
    fn names_fit_the_kernel_limit_and_macs_follow_docker() {
        assert_eq!(bridge_name(16_777_215), "sw-b16777215");
        assert!(vxlan_name(16_777_215).len() <= 15);
        let h = host_veth(16_777_215, Ipv4Addr::new(10, 255, 255, 254));
        assert_eq!(h.len(), 15);
        assert_ne!(h, host_veth(16_777_215, Ipv4Addr::new(10, 255, 255, 253)));
        assert_ne!(h, host_veth(16_777_214, Ipv4Addr::new(10, 255, 255, 254)));
        assert_eq!(mac_of(Ipv4Addr::new(10, 0, 0, 3)), [2, 0x42, 10, 0, 0, 3]);
        assert!(is_network_link("sw-b4097") && is_network_link("sw-x1"));
        assert!(!is_network_link("sw-b") && !is_network_link("sw-bx") && !is_network_link("eth0"));
    }

    #[test]
    fn an_empty_node_gets_bridge_vxlan_and_every_remote_entry() {
        let n = net(4097, &[(2, 2), (3, 3)]);
        let ops = plan(std::slice::from_ref(&n), &Observed::default());
        assert_eq!(
            ops[0],
            Op::AddLink(NewLink::Bridge {
                name: "sw-b4097".into(),
                mtu: 1450
            })
        );
        assert_eq!(ops[1], Op::Up("sw-b4097".into()));
        assert!(
            matches!(&ops[2], Op::AddLink(NewLink::Vxlan { vni: 4097, local, port: 4789, .. }) if *local == LOCAL)
        );
        assert_eq!(
            ops[3],
            Op::Enslave {
                link: "sw-x4097".into(),
                master: "sw-b4097".into()
            }
        );
        let fdb: Vec<_> = ops
            .iter()
            .filter(|o| matches!(o, Op::SetFdb { .. }))
            .collect();
        let neigh: Vec<_> = ops
            .iter()
            .filter(|o| matches!(o, Op::SetNeigh { .. }))
            .collect();
        assert_eq!((fdb.len(), neigh.len(), ops.len()), (2, 2, 8));
        assert!(ops.contains(&Op::SetFdb {
            dev: "sw-x4097".into(),
            mac: mac_of(Ipv4Addr::new(10, 0, 0, 3)),
            dst: Ipv4Addr::new(192, 168, 1, 3)
        }));
    }

    #[test]
    fn an_encrypted_network_gets_its_bridge_only_and_loses_a_vxlan_device() {
        let mut n = net(4097, &[(2, 2), (3, 3)]);
        n.sealed = true;
        let ops = plan(std::slice::from_ref(&n), &Observed::default());
        assert_eq!(ops.len(), 2, "{ops:?}");
        // Turned from a VXLAN network (the same VNI): its VXLAN device goes.
        let clear = net(4097, &[(2, 2)]);
        let ops = plan(std::slice::from_ref(&n), &settled(&clear));
        assert_eq!(ops, vec![Op::DelLink("sw-x4097".into())]);
        assert_eq!(tap_name(4097), "sw-t4097");
    }

    #[test]
    fn a_settled_node_needs_nothing() {
        let n = net(4097, &[(2, 2), (3, 3)]);
        assert_eq!(plan(std::slice::from_ref(&n), &settled(&n)), vec![]);
    }

    #[test]
    fn a_moved_or_gone_endpoint_is_reprogrammed_and_a_new_one_added() {
        let before = net(4097, &[(2, 2), (3, 3)]);
        // .2 is gone, .3 moved to node .4, .5 is new.
        let after = net(4097, &[(3, 4), (5, 2)]);
        let ops = plan(&[after], &settled(&before));
        let ip = |t| Ipv4Addr::new(10, 0, 0, t);
        let node = |t| Ipv4Addr::new(192, 168, 1, t);
        let dev = || "sw-x4097".to_string();
        assert_eq!(
            ops,
            vec![
                Op::DelNeigh {
                    dev: dev(),
                    ip: ip(2),
                    mac: mac_of(ip(2))
                },
                Op::DelFdb {
                    dev: dev(),
                    mac: mac_of(ip(2)),
                    dst: node(2)
                },
                Op::DelFdb {
                    dev: dev(),
                    mac: mac_of(ip(3)),
                    dst: node(3)
                },
                Op::SetFdb {
                    dev: dev(),
                    mac: mac_of(ip(3)),
                    dst: node(4)
                },
                Op::SetFdb {
                    dev: dev(),
                    mac: mac_of(ip(5)),
                    dst: node(2)
                },
                Op::SetNeigh {
                    dev: dev(),
                    ip: ip(5),
                    mac: mac_of(ip(5))
                },
            ]
        );
    }

    #[test]
    fn a_vxlan_with_wrong_settings_is_remade_with_all_its_entries() {
        let n = net(4097, &[(2, 2)]);
        for spoil in 0..4 {
            let mut have = settled(&n);
            let v = have.links[1].vxlan.as_mut().unwrap();
            match spoil {
                0 => v.learning = true,
                1 => v.local = Some(Ipv4Addr::new(192, 168, 1, 9)),
                2 => v.proxy = false,
                _ => have.links[1].mtu = 1500,
            }
            let ops = plan(std::slice::from_ref(&n), &have);
            assert_eq!(ops[0], Op::DelLink("sw-x4097".into()), "case {spoil}");
            assert!(matches!(ops[1], Op::AddLink(NewLink::Vxlan { .. })));
            assert!(matches!(ops[2], Op::Enslave { .. }));
            assert_eq!(ops.len(), 5, "case {spoil}: {ops:?}");
        }
    }

    #[test]
    fn a_down_or_loose_device_is_brought_back() {
        let n = net(7, &[]);
        let mut have = settled(&n);
        have.links[0].up = false;
        have.links[1].master = None;
        assert_eq!(
            plan(&[n], &have),
            vec![
                Op::Up("sw-b7".into()),
                Op::Enslave {
                    link: "sw-x7".into(),
                    master: "sw-b7".into()
                }
            ]
        );
    }

    #[test]
    fn networks_no_longer_wanted_go_with_their_veths_and_nothing_else_is_touched() {
        let a = net(1, &[(2, 2)]);
        let mut have = settled(&net(2, &[(2, 2)]));
        have.links.push(link(20, "sw-b1", "bridge", None));
        have.links
            .push(link(30, "swv0123456789ab", "veth", Some(10)));
        have.links
            .push(link(31, "swv0000000000ab", "veth", Some(20)));
        // Someone else's bridge whose name merely starts alike.
        have.links.push(link(40, "sw-bridge", "bridge", None));
        let ops = plan(&[a], &have);
        assert_eq!(ops[0], Op::DelLink("sw-b2".into()));
        assert_eq!(ops[1], Op::DelLink("sw-x2".into()));
        assert_eq!(ops[2], Op::DelLink("swv0123456789ab".into()));
        assert!(!ops.contains(&Op::DelLink("swv0000000000ab".into())));
        assert!(!ops.contains(&Op::DelLink("sw-bridge".into())));
        assert!(!ops.contains(&Op::AddLink(NewLink::Bridge {
            name: "sw-b1".into(),
            mtu: 1450
        })));
    }
}

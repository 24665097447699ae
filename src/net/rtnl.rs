//! A small synchronous rtnetlink client: the links, addresses, routes, neighbour and
//! forwarding entries an overlay network needs, and nothing else.
//!
//! One request at a time on one socket, each sent with `NLM_F_ACK` and read until the
//! kernel's acknowledgement (or the end of a dump), so every call returns only once the
//! kernel has done it or said why not. A socket belongs to the network namespace it was
//! opened in, for good: [`in_netns`] opens one inside another namespace, and the
//! socket then works from any thread. Blocking is fine here: the kernel answers rtnetlink
//! requests synchronously, in microseconds, and callers run on the blocking pool.

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};

/// The largest datagram the kernel sends us: a dump fills pages of up to 32 KiB
/// (`NLMSG_GOODSIZE` on big-page machines); this leaves room above that.
const RECV_BUF: usize = 64 * 1024;

/// A dump longer than this many messages is refused rather than held: a node has a few
/// links per network and a neighbour entry per remote task, far below it.
const MAX_DUMP: usize = 65_536;

/// An Ethernet address.
pub type Mac = [u8; 6];

#[derive(Debug, thiserror::Error)]
pub enum RtnlError {
    #[error("netlink socket: {0}")]
    Socket(#[source] io::Error),
    /// The kernel refused a request; `what` names the object.
    #[error("{what}: {source}")]
    Kernel {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("netlink: {0}")]
    Protocol(String),
    #[error("network namespace {path}: {source}")]
    Netns {
        path: String,
        #[source]
        source: io::Error,
    },
}

impl RtnlError {
    /// The kernel's errno, when it refused.
    pub fn errno(&self) -> Option<i32> {
        match self {
            RtnlError::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// What a link is, as far as overlays care.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `bridge`, `vxlan`, `veth`, ... (None for a plain device).
    pub kind: Option<String>,
    pub master: Option<u32>,
    pub mtu: u32,
    pub up: bool,
    pub mac: Option<Mac>,
    pub vxlan: Option<VxlanInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanInfo {
    pub vni: u32,
    pub local: Option<Ipv4Addr>,
    pub port: u16,
    pub learning: bool,
    pub proxy: bool,
}

/// A link to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NewLink {
    Bridge {
        name: String,
        mtu: u32,
    },
    /// Point-to-point VXLAN, learning off and ARP answered from the neighbour table:
    /// every peer is programmed from cluster state, nothing is flooded.
    Vxlan {
        name: String,
        vni: u32,
        local: Ipv4Addr,
        port: u16,
        mtu: u32,
    },
    /// A veth pair; `peer` is moved into the namespace `peer_netns` at once when given,
    /// with the address `peer_mac`.
    Veth {
        name: String,
        peer: String,
        mtu: u32,
        peer_mac: Option<Mac>,
    },
}

/// A neighbour (ARP) or forwarding (FDB) entry.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Neighbour {
    pub ip: Option<Ipv4Addr>,
    pub mac: Mac,
    pub permanent: bool,
}

/// An rtnetlink socket in one network namespace.
pub struct Rtnl {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnl {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> Result<Rtnl, RtnlError> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(RtnlError::Socket)?;
        sock.bind_auto().map_err(RtnlError::Socket)?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(RtnlError::Socket)?;
        // Errors then carry the kernel's own explanation; a kernel without it ignores it.
        let _ = sock.set_ext_ack(true);
        Ok(Rtnl {
            sock,
            seq: 0,
            buf: vec![0; RECV_BUF],
        })
    }

    /// A socket in the network namespace at `path` (`/proc/PID/ns/net`,
    /// `/var/run/netns/NAME`).
    pub fn open_in(path: &str) -> Result<Rtnl, RtnlError> {
        in_netns(path, Rtnl::open)?
    }

    /// Every link in the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>, RtnlError> {
        let msgs = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
            "list links",
        )?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_of(l)),
                _ => None,
            })
            .collect())
    }

    pub fn link(&mut self, name: &str) -> Result<Option<Link>, RtnlError> {
        Ok(self.links()?.into_iter().find(|l| l.name == name))
    }

    /// Makes a link (down, with no master); fails with EEXIST if the name is taken.
    pub fn add_link(&mut self, new: &NewLink) -> Result<(), RtnlError> {
        let mut msg = LinkMessage::default();
        let (name, mtu, info) = match new {
            NewLink::Bridge { name, mtu } => (name, *mtu, vec![LinkInfo::Kind(InfoKind::Bridge)]),
            NewLink::Vxlan {
                name,
                vni,
                local,
                port,
                mtu,
            } => (
                name,
                *mtu,
                vec![
                    LinkInfo::Kind(InfoKind::Vxlan),
                    LinkInfo::Data(InfoData::Vxlan(vec![
                        InfoVxlan::Id(*vni),
                        InfoVxlan::Local(*local),
                        InfoVxlan::Port(*port),
                        InfoVxlan::Learning(false),
                        InfoVxlan::Proxy(true),
                        InfoVxlan::Ttl(64),
                    ])),
                ],
            ),
            NewLink::Veth {
                name,
                peer,
                mtu,
                peer_mac,
            } => {
                let mut p = LinkMessage::default();
                p.attributes.push(LinkAttribute::IfName(peer.clone()));
                p.attributes.push(LinkAttribute::Mtu(*mtu));
                if let Some(mac) = peer_mac {
                    p.attributes.push(LinkAttribute::Address(mac.to_vec()));
                }
                (
                    name,
                    *mtu,
                    vec![
                        LinkInfo::Kind(InfoKind::Veth),
                        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
                    ],
                )
            }
        };
        msg.attributes.push(LinkAttribute::IfName(name.clone()));
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        msg.attributes.push(LinkAttribute::LinkInfo(info));
        self.request(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("create link {name}"),
        )
        .map(drop)
    }

    pub fn del_link(&mut self, index: u32) -> Result<(), RtnlError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.request(
            RouteNetlinkMessage::DelLink(msg),
            0,
            &format!("delete link {index}"),
        )
        .map(drop)
    }

    /// Changes one link: whichever of the settings are given.
    pub fn set_link(&mut self, index: u32, set: &LinkSet) -> Result<(), RtnlError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        if let Some(up) = set.up {
            msg.header.change_mask = LinkFlags::Up;
            if up {
                msg.header.flags = LinkFlags::Up;
            }
        }
        if let Some(master) = set.master {
            msg.attributes.push(LinkAttribute::Controller(master));
        }
        if let Some(name) = &set.name {
            msg.attributes.push(LinkAttribute::IfName(name.clone()));
        }
        if let Some(mtu) = set.mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(mac) = set.mac {
            msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        if let Some(ns) = &set.netns {
            msg.attributes
                .push(LinkAttribute::NetNsFd(ns.as_fd().as_raw_fd()));
        }
        self.request(
            RouteNetlinkMessage::SetLink(msg),
            0,
            &format!("configure link {index}"),
        )
        .map(drop)
    }

    /// The IPv4 addresses on a link, with their prefix lengths.
    pub fn addrs(&mut self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, RtnlError> {
        let mut q = AddressMessage::default();
        q.header.family = AddressFamily::Inet;
        let msgs = self.request(
            RouteNetlinkMessage::GetAddress(q),
            NLM_F_DUMP,
            "list addresses",
        )?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            if a.header.index != index {
                continue;
            }
            for attr in &a.attributes {
                if let AddressAttribute::Local(std::net::IpAddr::V4(ip)) = attr {
                    out.push((*ip, a.header.prefix_len));
                }
            }
        }
        Ok(out)
    }

    pub fn add_addr(&mut self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<(), RtnlError> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.index = index;
        msg.header.prefix_len = prefix;
        msg.attributes.push(AddressAttribute::Local(ip.into()));
        msg.attributes.push(AddressAttribute::Address(ip.into()));
        let bcast = u32::from(ip) | u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
        if prefix < 31 {
            msg.attributes
                .push(AddressAttribute::Broadcast(Ipv4Addr::from(bcast)));
        }
        self.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
            &format!("add address {ip}/{prefix} to link {index}"),
        )
        .map(drop)
    }

    /// A route in the main table: to `dst/prefix` through `gateway`, or straight out of
    /// the link when there is none. Replaces a route to the same destination.
    pub fn set_route(
        &mut self,
        dst: Ipv4Addr,
        prefix: u8,
        gateway: Option<Ipv4Addr>,
        index: u32,
    ) -> Result<(), RtnlError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = prefix;
        msg.header.table = netlink_packet_route::route::RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Static;
        msg.header.kind = RouteType::Unicast;
        msg.header.scope = match gateway {
            Some(_) => RouteScope::Universe,
            None => RouteScope::Link,
        };
        if prefix > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(dst)));
        }
        if let Some(gw) = gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
        }
        msg.attributes.push(RouteAttribute::Oif(index));
        self.request(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
            &format!("route {dst}/{prefix} via link {index}"),
        )
        .map(drop)
    }

    /// A local route to `dst/32` on the link at `index` (`ip route add local` in the
    /// local table): the address is taken as this namespace's own, with `src` the source
    /// of connections to it. Replaces one to the same address.
    pub fn set_local_route(
        &mut self,
        dst: Ipv4Addr,
        src: Ipv4Addr,
        index: u32,
    ) -> Result<(), RtnlError> {
        let mut msg = local_route(dst, index);
        msg.attributes
            .push(RouteAttribute::PrefSource(RouteAddress::Inet(src)));
        self.request(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
            &format!("local route {dst} from {src}"),
        )
        .map(drop)
    }

    /// Removes what [`Rtnl::set_local_route`] made; gone already is fine.
    pub fn del_local_route(&mut self, dst: Ipv4Addr, index: u32) -> Result<(), RtnlError> {
        match self.request(
            RouteNetlinkMessage::DelRoute(local_route(dst, index)),
            0,
            &format!("delete local route {dst}"),
        ) {
            Err(e) if e.errno() == Some(libc::ESRCH) => Ok(()),
            r => r.map(drop),
        }
    }

    /// The destinations of the local routes [`Rtnl::set_local_route`] made on link
    /// `index` (the local table's host routes of protocol static: the kernel's own,
    /// for the namespace's addresses, are of protocol kernel).
    pub fn local_routes(&mut self, index: u32) -> Result<Vec<Ipv4Addr>, RtnlError> {
        let mut q = RouteMessage::default();
        q.header.address_family = AddressFamily::Inet;
        let msgs = self.request(RouteNetlinkMessage::GetRoute(q), NLM_F_DUMP, "list routes")?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewRoute(r) = m else {
                continue;
            };
            let h = &r.header;
            if h.table != 255
                || h.kind != RouteType::Local
                || h.protocol != RouteProtocol::Static
                || h.destination_prefix_length != 32
            {
                continue;
            }
            let mut dst = None;
            let mut oif = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(v)) => dst = Some(*v),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            if let (Some(dst), Some(i)) = (dst, oif) {
                if i == index {
                    out.push(dst);
                }
            }
        }
        Ok(out)
    }

    /// The permanent neighbour entries (`bridge: false`, ARP) or forwarding entries
    /// (`bridge: true`, FDB: MAC to remote `ip`) on a link.
    pub fn neighbours(&mut self, index: u32, bridge: bool) -> Result<Vec<Neighbour>, RtnlError> {
        let mut q = NeighbourMessage::default();
        q.header.family = family(bridge);
        let msgs = self.request(
            RouteNetlinkMessage::GetNeighbour(q),
            NLM_F_DUMP,
            "list neighbours",
        )?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewNeighbour(n) = m else {
                continue;
            };
            if n.header.ifindex != index || n.header.family != family(bridge) {
                continue;
            }
            let mut ip = None;
            let mut mac = None;
            for a in &n.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => ip = Some(*v),
                    // The bridge family's entries carry the tunnel endpoint as raw bytes.
                    NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                        ip = <[u8; 4]>::try_from(&b[..]).ok().map(Ipv4Addr::from)
                    }
                    NeighbourAttribute::LinkLayerAddress(b) => mac = <Mac>::try_from(&b[..]).ok(),
                    _ => {}
                }
            }
            if let Some(mac) = mac {
                out.push(Neighbour {
                    ip,
                    mac,
                    permanent: n.header.state == NeighbourState::Permanent,
                });
            }
        }
        Ok(out)
    }

    /// Adds or replaces a permanent entry: ARP (`ip` has `mac`) or, with `bridge`, FDB
    /// (`mac` is behind the VXLAN tunnel endpoint `ip`).
    pub fn set_neighbour(
        &mut self,
        index: u32,
        bridge: bool,
        ip: Ipv4Addr,
        mac: Mac,
    ) -> Result<(), RtnlError> {
        let msg = neighbour_msg(index, bridge, ip, mac);
        self.request(
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
            &format!("{} entry {ip} {}", kind(bridge), mac_str(&mac)),
        )
        .map(drop)
    }

    pub fn del_neighbour(
        &mut self,
        index: u32,
        bridge: bool,
        ip: Ipv4Addr,
        mac: Mac,
    ) -> Result<(), RtnlError> {
        let msg = neighbour_msg(index, bridge, ip, mac);
        self.request(
            RouteNetlinkMessage::DelNeighbour(msg),
            0,
            &format!("remove {} entry {ip} {}", kind(bridge), mac_str(&mac)),
        )
        .map(drop)
    }

    /// Sends one request and reads until its acknowledgement or the end of its dump.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        what: &str,
    ) -> Result<Vec<RouteNetlinkMessage>, RtnlError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut req = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        req.header.sequence_number = seq;
        req.finalize();
        let mut out = vec![0u8; req.buffer_len()];
        req.serialize(&mut out);
        self.sock.send(&out, 0).map_err(RtnlError::Socket)?;

        let mut got = Vec::new();
        loop {
            let mut filled = &mut self.buf[..];
            let n = self.sock.recv(&mut filled, 0).map_err(RtnlError::Socket)?;
            let mut at = 0;
            let n = n.min(self.buf.len());
            while at < n {
                let bytes = &self.buf[at..n];
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
                    .map_err(|e| RtnlError::Protocol(format!("{what}: {e}")))?;
                let len = usize::try_from(m.header.length).unwrap_or(0);
                if len == 0 {
                    return Err(RtnlError::Protocol(format!("{what}: empty message")));
                }
                at = at.saturating_add(align4(len));
                if m.header.sequence_number != seq {
                    // An answer to an earlier request that failed before reading it all.
                    continue;
                }
                match m.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(got),
                            Some(_) => Err(RtnlError::Kernel {
                                what: what.to_string(),
                                source: e.to_io(),
                            }),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(got),
                    NetlinkPayload::InnerMessage(inner) => {
                        if got.len() >= MAX_DUMP {
                            return Err(RtnlError::Protocol(format!(
                                "{what}: more than {MAX_DUMP} entries"
                            )));
                        }
                        got.push(inner);
                    }
                    NetlinkPayload::Noop | NetlinkPayload::Overrun(_) => {}
                    _ => {}
                }
            }
        }
    }
}

fn local_route(dst: Ipv4Addr, index: u32) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = AddressFamily::Inet;
    msg.header.destination_prefix_length = 32;
    msg.header.table = 255; // RT_TABLE_LOCAL
    msg.header.protocol = RouteProtocol::Static;
    msg.header.kind = RouteType::Local;
    msg.header.scope = RouteScope::Host;
    msg.attributes
        .push(RouteAttribute::Destination(RouteAddress::Inet(dst)));
    msg.attributes.push(RouteAttribute::Oif(index));
    msg
}

/// Settings [`Rtnl::set_link`] changes; `None` leaves one as it is.
#[derive(Debug, Default)]
pub struct LinkSet {
    pub up: Option<bool>,
    /// The bridge to enslave to (0: none).
    pub master: Option<u32>,
    pub name: Option<String>,
    pub mtu: Option<u32>,
    pub mac: Option<Mac>,
    /// Move the link into this network namespace.
    pub netns: Option<File>,
}

/// Runs `f` on a thread of its own inside the network namespace at `path`, so the
/// caller's threads never change namespace. Sockets `f` opens stay in that namespace.
pub fn in_netns<T: Send>(path: &str, f: impl FnOnce() -> T + Send) -> Result<T, RtnlError> {
    let ns_err = |source| RtnlError::Netns {
        path: path.to_string(),
        source,
    };
    let ns = File::open(path).map_err(ns_err)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .map_err(|e| ns_err(e.into()))?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err(ns_err(io::Error::other("thread panicked"))))
    })
}

fn link_of(l: LinkMessage) -> Link {
    let mut link = Link {
        index: l.header.index,
        name: String::new(),
        kind: None,
        master: None,
        mtu: 0,
        up: l.header.flags.contains(LinkFlags::Up),
        mac: None,
        vxlan: None,
    };
    for a in l.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Mtu(m) => link.mtu = m,
            LinkAttribute::Controller(m) => link.master = Some(m),
            LinkAttribute::Address(b) => link.mac = <Mac>::try_from(&b[..]).ok(),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => link.kind = Some(k.to_string()),
                        LinkInfo::Data(InfoData::Vxlan(v)) => link.vxlan = Some(vxlan_of(&v)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn vxlan_of(attrs: &[InfoVxlan]) -> VxlanInfo {
    let mut v = VxlanInfo {
        vni: 0,
        local: None,
        port: 0,
        learning: true,
        proxy: false,
    };
    for a in attrs {
        match a {
            InfoVxlan::Id(id) => v.vni = *id,
            InfoVxlan::Local(ip) => v.local = Some(*ip),
            InfoVxlan::Port(p) => v.port = *p,
            InfoVxlan::Learning(l) => v.learning = *l,
            InfoVxlan::Proxy(p) => v.proxy = *p,
            _ => {}
        }
    }
    v
}

fn family(bridge: bool) -> AddressFamily {
    match bridge {
        true => AddressFamily::Bridge,
        false => AddressFamily::Inet,
    }
}

fn kind(bridge: bool) -> &'static str {
    match bridge {
        true => "forwarding",
        false => "neighbour",
    }
}

fn neighbour_msg(index: u32, bridge: bool, ip: Ipv4Addr, mac: Mac) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family(bridge);
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    if bridge {
        // On the VXLAN device itself, not on a bridge it may be enslaved to.
        msg.header.flags = NeighbourFlags::Own;
    }
    msg.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    msg
}

fn align4(n: usize) -> usize {
    n.saturating_add(3) & !3
}

pub fn mac_str(m: &Mac) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

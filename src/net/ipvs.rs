//! Service VIPs balanced by the kernel's IPVS, programmed over generic netlink with an
//! encoder of our own (no maintained crate speaks the IPVS family), where the kernel
//! has it (`/proc/net/ip_vs`); `lb`'s nf_tables balancer is the same behaviour where it
//! has not.
//!
//! In a task's namespace, as Swarm does it: a packet to a VIP is marked with the VIP
//! itself (its four bytes as the mark), and an IPVS service per mark balances round
//! robin (`rr`) over the service's tasks by NAT, the destination port kept (port 0).
//! IPVS sees connections a task starts at its local-out hook, after the mark is set:
//!
//! ```text
//! table ip swarmlet {
//!   set marked { ipv4_addr }                  VIPs with a backend
//!   set empty  { ipv4_addr }                  VIPs with none
//!   chain mark { filter hook output -150: ip daddr @marked meta mark set ip daddr }
//!   chain deny { filter hook output    0: ip daddr @empty reject }
//! }
//! ```
//!
//! A backend taken out of a service keeps the connections it has until they end
//! (IPVS moves it aside rather than cutting them), so a task drained before its stop
//! finishes what it serves. IPVS's idle timeouts are the namespace's: the TCP one is set
//! when the table is built, five days unless the daemon says otherwise (Swarm left
//! IPVS's 15-minute default, which silently cuts idle connections conntrack would have
//! kept for five days).
//!
//! Generic netlink messages are applied one at a time, not as a batch: after any
//! refusal the balancer forgets what it held, and its next sync flushes the
//! namespace's IPVS table and builds it again whole.

use std::collections::BTreeSet;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use netlink_sys::protocols::NETLINK_GENERIC;
use netlink_sys::{Socket, SocketAddr};

use super::nft::{
    diff, ip_bytes, BaseChain, Batch, ChainType, Expr, Hook, KeyType, Mirror, Nft, NftError, Reg,
    Value, NFPROTO_IPV4,
};
use super::rtnl::Rtnl;
use super::vips::{add_deny_chain, Services};

/// The table's name (the same as `lb`'s: a namespace has one balancer or the other).
pub const TABLE: &str = super::vips::TABLE;

/// Where the kernel shows IPVS when it has it.
pub const PROC: &str = "/proc/net/ip_vs";

/// Whether this kernel has IPVS (the module loaded or built in).
pub fn available() -> bool {
    Path::new(PROC).exists()
}

const NLMSG_HDRLEN: usize = 16;
const GENL_HDRLEN: usize = 4;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLA_F_NESTED: u16 = 1 << 15;

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;

const IPVS_GENL_NAME: &str = "IPVS";
const IPVS_GENL_VERSION: u8 = 1;

const IPVS_CMD_NEW_SERVICE: u8 = 1;
const IPVS_CMD_DEL_SERVICE: u8 = 3;
const IPVS_CMD_NEW_DEST: u8 = 5;
const IPVS_CMD_DEL_DEST: u8 = 7;
const IPVS_CMD_SET_CONFIG: u8 = 12;
const IPVS_CMD_FLUSH: u8 = 17;

const IPVS_CMD_ATTR_SERVICE: u16 = 1;
const IPVS_CMD_ATTR_DEST: u16 = 2;
const IPVS_CMD_ATTR_TIMEOUT_TCP: u16 = 4;

const IPVS_SVC_ATTR_AF: u16 = 1;
const IPVS_SVC_ATTR_FWMARK: u16 = 5;
const IPVS_SVC_ATTR_SCHED_NAME: u16 = 6;
const IPVS_SVC_ATTR_FLAGS: u16 = 7;
const IPVS_SVC_ATTR_TIMEOUT: u16 = 8;
const IPVS_SVC_ATTR_NETMASK: u16 = 9;

const IPVS_DEST_ATTR_ADDR: u16 = 1;
const IPVS_DEST_ATTR_PORT: u16 = 2;
const IPVS_DEST_ATTR_FWD_METHOD: u16 = 3;
const IPVS_DEST_ATTR_WEIGHT: u16 = 4;
const IPVS_DEST_ATTR_U_THRESH: u16 = 5;
const IPVS_DEST_ATTR_L_THRESH: u16 = 6;
const IPVS_DEST_ATTR_ADDR_FAMILY: u16 = 11;

const AF_INET: u16 = 2;
/// NAT (masquerading), IPVS's `-m`.
const IP_VS_CONN_F_MASQ: u32 = 0;

/// Marking runs where iptables' mangle table does, before IPVS's local-out hook.
const MANGLE: i32 = -150;

/// The largest answer read: IPVS's replies to our requests are acknowledgements and one
/// family description, far below this.
const RECV_BUF: usize = 64 * 1024;

/// How long an answer from the kernel may take before the request is an error.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum IpvsError {
    #[error("ipvs socket: {0}")]
    Socket(#[source] io::Error),
    #[error("ipvs: the kernel has no IPVS (no generic netlink family {IPVS_GENL_NAME})")]
    Missing,
    /// The kernel refused a request.
    #[error("ipvs: {what}: {source}")]
    Kernel {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("ipvs: {0}")]
    Protocol(String),
    #[error(transparent)]
    Nft(#[from] NftError),
}

/// How long an idle TCP connection through a VIP is kept, in seconds, unless the
/// daemon is told otherwise: conntrack's own default (five days), so the IPVS and
/// nf_tables balancers keep an idle connection equally long.
pub const DEFAULT_TCP_IDLE: u32 = 432_000;

/// Netlink attributes in the host's byte order, nests marked as such.
#[derive(Default)]
struct Attrs {
    buf: Vec<u8>,
}

impl Attrs {
    fn attr(&mut self, ty: u16, v: &[u8]) {
        let len = u16::try_from(4 + v.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(v);
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }

    fn u16(&mut self, ty: u16, v: u16) {
        self.attr(ty, &v.to_ne_bytes());
    }

    fn u32(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_ne_bytes());
    }

    fn str(&mut self, ty: u16, s: &str) {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.attr(ty, &v);
    }

    fn nest(&mut self, ty: u16, inner: Attrs) {
        let len = u16::try_from(4 + inner.buf.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        self.buf.extend_from_slice(&inner.buf);
    }
}

/// The mark a VIP's packets carry and its IPVS service is keyed by: the address's four
/// bytes as the kernel reads them from the register `ip daddr` was loaded into.
pub fn mark_of(vip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(vip.octets())
}

fn service_key(mark: u32) -> Attrs {
    let mut s = Attrs::default();
    s.u16(IPVS_SVC_ATTR_AF, AF_INET);
    s.u32(IPVS_SVC_ATTR_FWMARK, mark);
    s
}

/// NEW_SERVICE's attributes: a mark service, round robin, not persistent.
fn new_service(mark: u32) -> Attrs {
    let mut s = service_key(mark);
    s.str(IPVS_SVC_ATTR_SCHED_NAME, "rr");
    s.attr(IPVS_SVC_ATTR_FLAGS, &[0; 8]); // struct ip_vs_flags { flags, mask }
    s.u32(IPVS_SVC_ATTR_TIMEOUT, 0);
    s.u32(IPVS_SVC_ATTR_NETMASK, u32::MAX);
    let mut a = Attrs::default();
    a.nest(IPVS_CMD_ATTR_SERVICE, s);
    a
}

fn dest_key(ip: Ipv4Addr) -> Attrs {
    let mut d = Attrs::default();
    // union nf_inet_addr: the address, then zeros to 16 bytes.
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&ip.octets());
    d.attr(IPVS_DEST_ATTR_ADDR, &addr);
    // Port 0: a mark service's destination keeps the port the client asked for.
    d.attr(IPVS_DEST_ATTR_PORT, &0u16.to_be_bytes());
    d
}

fn service_and_dest(mark: u32, ip: Ipv4Addr, full: bool) -> Attrs {
    let mut d = dest_key(ip);
    if full {
        d.u32(IPVS_DEST_ATTR_FWD_METHOD, IP_VS_CONN_F_MASQ);
        d.u32(IPVS_DEST_ATTR_WEIGHT, 1);
        d.u32(IPVS_DEST_ATTR_U_THRESH, 0);
        d.u32(IPVS_DEST_ATTR_L_THRESH, 0);
        d.u16(IPVS_DEST_ATTR_ADDR_FAMILY, AF_INET);
    }
    let mut a = Attrs::default();
    a.nest(IPVS_CMD_ATTR_SERVICE, service_key(mark));
    a.nest(IPVS_CMD_ATTR_DEST, d);
    a
}

/// SET_CONFIG's attributes: the established-TCP timeout only (the kernel leaves a
/// timeout given as 0, or not given, as it is).
fn tcp_idle(seconds: u32) -> Attrs {
    let mut a = Attrs::default();
    a.u32(IPVS_CMD_ATTR_TIMEOUT_TCP, seconds);
    a
}

/// Walks netlink attributes: (type without flags, payload).
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        let ty = u16::from_ne_bytes([b[2], b[3]]) & !NLA_F_NESTED;
        if len < 4 || len > b.len() {
            return None;
        }
        let payload = &b[4..len];
        b = &b[((len + 3) & !3).min(b.len())..];
        Some((ty, payload))
    })
}

/// A generic netlink socket speaking one family, in one network namespace.
struct Genl {
    sock: Socket,
    family: u16,
    seq: u32,
    buf: Vec<u8>,
}

impl Genl {
    /// Opens a socket in the calling thread's namespace and looks `name` up.
    fn open(name: &str) -> Result<Genl, IpvsError> {
        let mut sock = Socket::new(NETLINK_GENERIC).map_err(IpvsError::Socket)?;
        sock.bind_auto().map_err(IpvsError::Socket)?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(IpvsError::Socket)?;
        rustix::net::sockopt::set_socket_timeout(
            sock.as_fd(),
            rustix::net::sockopt::Timeout::Recv,
            Some(ANSWER_TIMEOUT),
        )
        .map_err(|e| IpvsError::Socket(e.into()))?;
        let mut g = Genl {
            sock,
            family: GENL_ID_CTRL,
            seq: 0,
            buf: vec![0; RECV_BUF],
        };
        let mut a = Attrs::default();
        a.str(CTRL_ATTR_FAMILY_NAME, name);
        let reply = match g.request(CTRL_CMD_GETFAMILY, 1, &a, "look up family") {
            Ok(r) => r,
            Err(IpvsError::Kernel { source, .. })
                if source.raw_os_error() == Some(libc::ENOENT) =>
            {
                return Err(IpvsError::Missing)
            }
            Err(e) => return Err(e),
        };
        let id = attrs(&reply)
            .find(|(ty, _)| *ty == CTRL_ATTR_FAMILY_ID)
            .and_then(|(_, v)| Some(u16::from_ne_bytes(v.get(..2)?.try_into().ok()?)))
            .ok_or_else(|| IpvsError::Protocol(format!("no id for family {name}")))?;
        g.family = id;
        Ok(g)
    }

    /// Sends one request and waits for its acknowledgement; returns the attributes of
    /// the answer that came before it, if any.
    fn request(
        &mut self,
        cmd: u8,
        version: u8,
        a: &Attrs,
        what: &str,
    ) -> Result<Vec<u8>, IpvsError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let len = NLMSG_HDRLEN + GENL_HDRLEN + a.buf.len();
        let mut m = Vec::with_capacity(len);
        m.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_ne_bytes());
        m.extend_from_slice(&self.family.to_ne_bytes());
        m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
        m.extend_from_slice(&[cmd, version, 0, 0]);
        m.extend_from_slice(&a.buf);
        // Answers a timed-out earlier request never read would be taken for this one's.
        while self
            .sock
            .recv(&mut &mut self.buf[..], libc::MSG_DONTWAIT)
            .is_ok()
        {}
        self.sock.send(&m, 0).map_err(IpvsError::Socket)?;
        let mut answer = Vec::new();
        loop {
            let n = self
                .sock
                .recv(&mut &mut self.buf[..], 0)
                .map_err(IpvsError::Socket)?
                .min(self.buf.len());
            let mut at = 0;
            while at + NLMSG_HDRLEN <= n {
                let h = &self.buf[at..n];
                let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
                let ty = u16::from_ne_bytes([h[4], h[5]]);
                let got = u32::from_ne_bytes([h[8], h[9], h[10], h[11]]);
                if len < NLMSG_HDRLEN || len > h.len() {
                    return Err(IpvsError::Protocol(format!(
                        "malformed answer of {len} bytes"
                    )));
                }
                if got == seq {
                    if ty == NLMSG_ERROR {
                        let code = h
                            .get(16..20)
                            .map(|c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                            .ok_or_else(|| IpvsError::Protocol("short error".into()))?;
                        if code == 0 {
                            return Ok(answer);
                        }
                        return Err(IpvsError::Kernel {
                            what: what.to_string(),
                            source: io::Error::from_raw_os_error(code.saturating_neg()),
                        });
                    }
                    if len >= NLMSG_HDRLEN + GENL_HDRLEN {
                        answer = h[NLMSG_HDRLEN + GENL_HDRLEN..len].to_vec();
                    }
                }
                at += (len + 3) & !3;
            }
        }
    }

    fn ipvs(&mut self, cmd: u8, a: &Attrs, what: impl FnOnce() -> String) -> Result<(), IpvsError> {
        match self.request(cmd, IPVS_GENL_VERSION, a, "") {
            Ok(_) => Ok(()),
            Err(IpvsError::Kernel { source, .. }) => Err(IpvsError::Kernel {
                what: what(),
                source,
            }),
            Err(e) => Err(e),
        }
    }
}

/// The IPVS balancer of one network namespace.
pub struct IpvsBalancer {
    genl: Genl,
    nft: Nft,
    rtnl: Rtnl,
    /// The loopback's index, where VIPs' local routes go.
    lo: u32,
    /// The namespace's own addresses (address, prefix length): a VIP's connections
    /// leave from the one on its network.
    own: Vec<(Ipv4Addr, u8)>,
    /// Seconds an idle TCP connection is kept.
    tcp_idle: u32,
    /// What the kernel holds as far as we know; `None`: rebuild whole.
    held: Option<Services>,
}

impl IpvsBalancer {
    /// The balancer of the calling thread's namespace.
    /// Opened after the namespace's interfaces have their addresses.
    pub fn open(tcp_idle: u32) -> Result<IpvsBalancer, IpvsError> {
        let mut rtnl = Rtnl::open().map_err(|e| IpvsError::Protocol(e.to_string()))?;
        let links = rtnl
            .links()
            .map_err(|e| IpvsError::Protocol(e.to_string()))?;
        let lo = links
            .iter()
            .find(|l| l.name == "lo")
            .map(|l| l.index)
            .ok_or_else(|| IpvsError::Protocol("the namespace has no loopback".into()))?;
        let mut own = Vec::new();
        for l in links.iter().filter(|l| l.index != lo) {
            own.extend(
                rtnl.addrs(l.index)
                    .map_err(|e| IpvsError::Protocol(e.to_string()))?,
            );
        }
        Ok(IpvsBalancer {
            genl: Genl::open(IPVS_GENL_NAME)?,
            nft: Nft::open()?,
            rtnl,
            lo,
            own,
            tcp_idle,
            held: None,
        })
    }

    /// Makes the kernel hold `want` (its backends within `vips::MAX_BACKENDS`, as
    /// `lb::Balancer` checks). Returns how many services changed.
    pub fn sync(&mut self, want: &Services) -> Result<usize, IpvsError> {
        match self.held.take() {
            None => {
                self.rebuild(want)?;
                self.held = Some(want.clone());
                Ok(want.len())
            }
            Some(mut have) => {
                let n = self.change(&have, want)?;
                have.mirror(want);
                self.held = Some(have);
                Ok(n)
            }
        }
    }

    /// Removes the table and every IPVS service of the namespace.
    pub fn clear(&mut self) -> Result<(), IpvsError> {
        self.held = None;
        self.genl.ipvs(IPVS_CMD_FLUSH, &Attrs::default(), || {
            "flush services".into()
        })?;
        let mut b = Batch::new(NFPROTO_IPV4);
        b.add_table(TABLE);
        b.del_table(TABLE);
        self.nft.commit(b)?;
        Ok(())
    }

    fn rebuild(&mut self, want: &Services) -> Result<(), IpvsError> {
        let idle = self.tcp_idle;
        self.genl.ipvs(IPVS_CMD_SET_CONFIG, &tcp_idle(idle), || {
            format!("set the TCP idle timeout to {idle} s")
        })?;
        self.genl.ipvs(IPVS_CMD_FLUSH, &Attrs::default(), || {
            "flush services".into()
        })?;
        for (vip, backends) in want.iter().filter(|(_, b)| !b.is_empty()) {
            self.add(*vip, backends)?;
        }
        for (vip, backends) in want {
            match backends.is_empty() {
                false => self.route(*vip)?,
                true => self.unroute(*vip)?,
            }
        }
        // A daemon restarted under the namespace left the routes of VIPs gone since:
        // such an address may now be a task's, which the route would hide.
        let stale = self
            .rtnl
            .local_routes(self.lo)
            .map_err(|e| IpvsError::Protocol(e.to_string()))?;
        for vip in stale {
            if want.get(&vip).is_none_or(Vec::is_empty) {
                self.unroute(vip)?;
            }
        }
        self.nft.commit(table(want))?;
        Ok(())
    }

    fn change(&mut self, have: &Services, want: &Services) -> Result<usize, IpvsError> {
        let mut b = Batch::new(NFPROTO_IPV4);
        let mut n = 0;
        // Into the sets first where a VIP gains a service, out of them first where it
        // loses one: a packet marked always finds its service.
        let mut drop_after = Vec::new();
        for (vip, old, now) in diff(have, want) {
            n += 1;
            let (old, now) = (
                old.map(Vec::as_slice).unwrap_or_default(),
                now.map(Vec::as_slice).unwrap_or_default(),
            );
            let key = ip_bytes(*vip);
            match (old.is_empty(), now.is_empty()) {
                (true, false) => {
                    self.add(*vip, now)?;
                    self.route(*vip)?;
                    if have.contains_key(vip) {
                        b.del_elems(TABLE, "empty", std::slice::from_ref(&key));
                    }
                    b.set_elems(TABLE, "marked", &[(key, Value::None)]);
                }
                (false, true) => {
                    b.del_elems(TABLE, "marked", std::slice::from_ref(&key));
                    if want.contains_key(vip) {
                        b.set_elems(TABLE, "empty", &[(key, Value::None)]);
                    }
                    drop_after.push(*vip);
                }
                (false, false) => self.move_dests(*vip, old, now)?,
                (true, true) if !have.contains_key(vip) => {
                    b.set_elems(TABLE, "empty", &[(key, Value::None)]);
                }
                (true, true) => b.del_elems(TABLE, "empty", &[key]),
            }
        }
        self.nft.commit(b)?;
        for vip in &drop_after {
            self.unroute(*vip)?;
        }
        for vip in drop_after {
            let mark = mark_of(vip);
            self.genl.ipvs(
                IPVS_CMD_DEL_SERVICE,
                &{
                    let mut a = Attrs::default();
                    a.nest(IPVS_CMD_ATTR_SERVICE, service_key(mark));
                    a
                },
                || format!("delete service {vip}"),
            )?;
        }
        Ok(n)
    }

    /// The VIP made local, its connections leaving from the namespace's address on
    /// its network. IPVS needs both: a destination in this same namespace (a task
    /// reaching its own service) is delivered along the packet's first route, which
    /// must then be local; and a remote one must see a source it can answer.
    fn route(&mut self, vip: Ipv4Addr) -> Result<(), IpvsError> {
        let src = source_for(&self.own, vip).ok_or_else(|| {
            IpvsError::Protocol(format!("no address of the namespace is on {vip}'s network"))
        })?;
        self.rtnl
            .set_local_route(vip, src, self.lo)
            .map_err(|e| IpvsError::Protocol(e.to_string()))
    }

    fn unroute(&mut self, vip: Ipv4Addr) -> Result<(), IpvsError> {
        self.rtnl
            .del_local_route(vip, self.lo)
            .map_err(|e| IpvsError::Protocol(e.to_string()))
    }

    fn add(&mut self, vip: Ipv4Addr, backends: &[Ipv4Addr]) -> Result<(), IpvsError> {
        let mark = mark_of(vip);
        self.genl
            .ipvs(IPVS_CMD_NEW_SERVICE, &new_service(mark), || {
                format!("add service {vip} (mark {mark:#x})")
            })?;
        for ip in backends {
            self.genl.ipvs(
                IPVS_CMD_NEW_DEST,
                &service_and_dest(mark, *ip, true),
                || format!("add {ip} to service {vip}"),
            )?;
        }
        Ok(())
    }

    fn move_dests(
        &mut self,
        vip: Ipv4Addr,
        old: &[Ipv4Addr],
        now: &[Ipv4Addr],
    ) -> Result<(), IpvsError> {
        let mark = mark_of(vip);
        let (old, now): (BTreeSet<_>, BTreeSet<_>) = (old.iter().collect(), now.iter().collect());
        for ip in now.difference(&old) {
            self.genl.ipvs(
                IPVS_CMD_NEW_DEST,
                &service_and_dest(mark, **ip, true),
                || format!("add {ip} to service {vip}"),
            )?;
        }
        for ip in old.difference(&now) {
            self.genl.ipvs(
                IPVS_CMD_DEL_DEST,
                &service_and_dest(mark, **ip, false),
                || format!("remove {ip} from service {vip}"),
            )?;
        }
        Ok(())
    }
}

/// The address among `own` whose network holds `vip`.
pub fn source_for(own: &[(Ipv4Addr, u8)], vip: Ipv4Addr) -> Option<Ipv4Addr> {
    own.iter()
        .find(|(ip, prefix)| {
            let mask = u32::MAX.checked_shl(32 - u32::from(*prefix)).unwrap_or(0);
            u32::from(*ip) & mask == u32::from(vip) & mask
        })
        .map(|(ip, _)| *ip)
}

/// A batch that replaces whatever table is there with the marking and refusing chains
/// for `want`.
pub fn table(want: &Services) -> Batch {
    let mut b = Batch::new(NFPROTO_IPV4);
    b.add_table(TABLE);
    b.del_table(TABLE);
    b.add_table(TABLE);
    b.add_set(TABLE, "marked", KeyType::Ipv4);
    b.add_set(TABLE, "empty", KeyType::Ipv4);
    let daddr = Expr::NetworkHeader {
        offset: 16,
        len: 4,
        dreg: Reg::R1,
    };
    b.add_chain(
        TABLE,
        "mark",
        Some(BaseChain {
            hook: Hook::Output,
            priority: MANGLE,
            kind: ChainType::Filter,
        }),
    );
    b.add_rule(
        TABLE,
        "mark",
        &[
            daddr,
            Expr::Lookup {
                set: "marked".into(),
                sreg: Reg::R1,
                dreg: None,
            },
            Expr::MarkSet { sreg: Reg::R1 },
        ],
    );
    add_deny_chain(&mut b);
    let (marked, empty): (Vec<_>, Vec<_>) = want.iter().partition(|(_, b)| !b.is_empty());
    let elems = |v: Vec<(&Ipv4Addr, &Vec<Ipv4Addr>)>| -> Vec<(Vec<u8>, Value)> {
        v.into_iter()
            .map(|(vip, _)| (ip_bytes(*vip), Value::None))
            .collect()
    };
    b.set_elems(TABLE, "marked", &elems(marked));
    b.set_elems(TABLE, "empty", &elems(empty));
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(d: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 9, d)
    }

    #[test]
    fn the_mark_is_the_vip_as_the_register_holds_it() {
        let m = mark_of(ip(100));
        assert_eq!(m.to_ne_bytes(), [10, 0, 9, 100]);
    }

    #[test]
    fn a_new_service_carries_what_the_kernel_requires() {
        let a = new_service(7);
        let (ty, inner) = attrs(&a.buf).next().unwrap();
        assert_eq!(ty, IPVS_CMD_ATTR_SERVICE);
        let got: Vec<(u16, Vec<u8>)> = attrs(inner).map(|(t, v)| (t, v.to_vec())).collect();
        assert_eq!(
            got,
            [
                (IPVS_SVC_ATTR_AF, 2u16.to_ne_bytes().to_vec()),
                (IPVS_SVC_ATTR_FWMARK, 7u32.to_ne_bytes().to_vec()),
                (IPVS_SVC_ATTR_SCHED_NAME, b"rr\0".to_vec()),
                (IPVS_SVC_ATTR_FLAGS, vec![0; 8]),
                (IPVS_SVC_ATTR_TIMEOUT, vec![0; 4]),
                (IPVS_SVC_ATTR_NETMASK, vec![0xff; 4]),
            ]
        );
        // The outer attribute is marked nested, as the kernel's parser requires.
        assert_eq!(u16::from_ne_bytes([a.buf[2], a.buf[3]]), 1 | NLA_F_NESTED);
    }

    #[test]
    fn a_destination_is_nat_to_the_clients_port() {
        let a = service_and_dest(7, ip(3), true);
        let mut it = attrs(&a.buf);
        let (ty, _) = it.next().unwrap();
        assert_eq!(ty, IPVS_CMD_ATTR_SERVICE);
        let (ty, d) = it.next().unwrap();
        assert_eq!(ty, IPVS_CMD_ATTR_DEST);
        let d: Vec<(u16, Vec<u8>)> = attrs(d).map(|(t, v)| (t, v.to_vec())).collect();
        let mut addr = vec![10, 0, 9, 3];
        addr.resize(16, 0);
        assert_eq!(d[0], (IPVS_DEST_ATTR_ADDR, addr));
        assert_eq!(d[1], (IPVS_DEST_ATTR_PORT, vec![0, 0]));
        assert!(d.contains(&(IPVS_DEST_ATTR_FWD_METHOD, vec![0; 4])));
        assert!(d.contains(&(IPVS_DEST_ATTR_WEIGHT, 1u32.to_ne_bytes().to_vec())));
        // A removal names the destination only.
        let del = service_and_dest(7, ip(3), false);
        let (_, d) = attrs(&del.buf).nth(1).unwrap();
        assert_eq!(attrs(d).count(), 2);
    }

    #[test]
    fn attributes_are_padded_and_a_short_or_overlong_one_ends_the_walk() {
        let mut a = Attrs::default();
        a.str(1, "rr");
        a.u16(2, 9);
        assert_eq!(a.buf.len(), 8 + 8);
        assert_eq!(attrs(&a.buf).count(), 2);
        let mut bad = a.buf.clone();
        bad[0] = 200; // longer than what is there
        assert_eq!(attrs(&bad).count(), 0);
        assert_eq!(attrs(&a.buf[..3]).count(), 0);
    }

    /// On a kernel without IPVS (this development machine's) the family is missing and
    /// the error says so; with it, a balancer opens (as root).
    #[test]
    fn opening_says_whether_the_kernel_has_ipvs() {
        match (available(), Genl::open(IPVS_GENL_NAME)) {
            (false, Err(IpvsError::Missing)) | (true, Ok(_)) => {}
            (have, got) => panic!("{PROC} there: {have}, but opening gave {:?}", got.err()),
        }
    }

    #[test]
    fn a_vips_connections_leave_from_the_address_on_its_network() {
        let own = [
            (Ipv4Addr::new(10, 0, 0, 8), 24),
            (Ipv4Addr::new(10, 0, 1, 5), 24),
            (Ipv4Addr::new(172, 18, 0, 3), 16),
        ];
        assert_eq!(source_for(&own, ip(100)), None);
        assert_eq!(
            source_for(&own, Ipv4Addr::new(10, 0, 1, 2)),
            Some(Ipv4Addr::new(10, 0, 1, 5))
        );
        assert_eq!(
            source_for(&[(Ipv4Addr::new(10, 0, 1, 5), 0)], ip(1)),
            Some(Ipv4Addr::new(10, 0, 1, 5))
        );
    }

    #[test]
    fn the_table_marks_served_vips_and_refuses_empty_ones() {
        let want = Services::from([(ip(100), vec![ip(2)]), (ip(101), vec![])]);
        let b = table(&want);
        let what = b.what();
        assert!(
            what.iter().any(|w| w == "add chain swarmlet mark"),
            "{what:?}"
        );
        assert!(what.iter().any(|w| w == "add to map swarmlet marked"));
        assert!(what.iter().any(|w| w == "add to map swarmlet empty"));
    }
}

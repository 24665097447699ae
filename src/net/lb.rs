//! Service VIPs balanced by nf_tables, for kernels without IPVS (this development
//! machine's has none) and as the one implementation tests can run anywhere.
//!
//! In the namespace where connections start (a task's), one table:
//!
//! ```text
//! table ip swarmlet {
//!   map vips { ipv4_addr : verdict }          VIP -> goto its service's chain
//!   set empty { ipv4_addr }                    VIPs with no backend
//!   chain out  { nat    hook output  -100: ip daddr vmap @vips }
//!   chain deny { filter hook output     0: ip daddr @empty reject }
//!   chain s-<vip> { dnat to numgen inc mod N map @b-<vip> }
//!   map b-<vip> { u32 : ipv4_addr }            round-robin slot -> backend
//! }
//! ```
//!
//! The destination is rewritten in the client's own namespace, before routing, so the
//! backend sees the client's address and conntrack undoes it on the way back: no
//! source NAT, no hairpin (Swarm's VIPs work the same way, with IPVS). Round robin
//! (`numgen inc`) matches IPVS's `rr`. A VIP with no backend refuses at once instead
//! of leaving the client to time out.
//!
//! A change to one service is one batch, applied atomically: a task replaced (the same
//! number of backends) swaps map slots only, whose cost does not grow with the number of
//! services; a change in count rewrites the service's rule, and the kernel then checks
//! every chain the table reaches (a few hundred microseconds at 1,000 services).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use super::ipvs::{IpvsBalancer, IpvsError, DEFAULT_TCP_IDLE};
use super::nft::{
    diff, index_key, ip_bytes, BaseChain, Batch, ChainType, Expr, Hook, KeyType, MapData, Nft,
    NftError, Reg, Synced, Value, Verdict, NFPROTO_IPV4,
};
use super::rtnl::in_netns;

use super::vips::add_deny_chain;
pub use super::vips::{Services, MAX_BACKENDS, TABLE};

/// NAT runs before the conntrack-confirmed filter, as `nft`'s `dstnat` priority does.
const DSTNAT: i32 = -100;

/// Which kernel machinery balances VIPs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// nf_tables DNAT round robin (this module).
    Nft,
    /// IPVS (`ipvs`), where the kernel has it.
    Ipvs,
}

impl Kernel {
    /// IPVS where this kernel has it, nf_tables otherwise.
    pub fn detect() -> Kernel {
        match super::ipvs::available() {
            true => Kernel::Ipvs,
            false => Kernel::Nft,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LbError {
    #[error(transparent)]
    Nft(#[from] NftError),
    #[error(transparent)]
    Ipvs(#[from] IpvsError),
    #[error("{path}: {error}")]
    Netns { path: String, error: String },
    #[error("{0}")]
    TooMany(String),
}

/// The balancer of one network namespace.
pub struct Balancer {
    inner: Inner,
}

enum Inner {
    Nft {
        table: Synced<Services>,
        /// The TCP idle timeout still to set in the namespace's conntrack (after the
        /// first sync, which loads it), and where.
        idle: Option<(String, u32)>,
    },
    Ipvs(IpvsBalancer),
}

impl Balancer {
    /// The nf_tables balancer of the calling thread's namespace.
    pub fn open() -> Result<Balancer, LbError> {
        Ok(Balancer {
            inner: Inner::Nft {
                table: Synced::new(Nft::open()?),
                idle: None,
            },
        })
    }

    /// The nf_tables balancer of the namespace at `path`.
    pub fn open_in(path: &str) -> Result<Balancer, LbError> {
        Balancer::open_with(path, Kernel::Nft, DEFAULT_TCP_IDLE)
    }

    /// The balancer of the namespace at `path`, on `kernel`'s machinery, keeping idle
    /// TCP connections `tcp_idle` seconds.
    pub fn open_with(path: &str, kernel: Kernel, tcp_idle: u32) -> Result<Balancer, LbError> {
        let netns = |e: super::rtnl::RtnlError| LbError::Netns {
            path: path.to_string(),
            error: e.to_string(),
        };
        let inner = match kernel {
            Kernel::Nft => Inner::Nft {
                table: Synced::new(in_netns(path, Nft::open).map_err(netns)??),
                idle: (tcp_idle != DEFAULT_TCP_IDLE).then(|| (path.to_string(), tcp_idle)),
            },
            Kernel::Ipvs => {
                Inner::Ipvs(in_netns(path, || IpvsBalancer::open(tcp_idle)).map_err(netns)??)
            }
        };
        Ok(Balancer { inner })
    }

    pub fn kernel(&self) -> Kernel {
        match self.inner {
            Inner::Nft { .. } => Kernel::Nft,
            Inner::Ipvs(_) => Kernel::Ipvs,
        }
    }

    /// Makes the kernel hold `want`: the services that differ, in one batch (the whole
    /// table the first time). Returns how many services changed.
    pub fn sync(&mut self, want: &Services) -> Result<usize, LbError> {
        if let Some((vip, b)) = want.iter().find(|(_, b)| b.len() > MAX_BACKENDS) {
            return Err(LbError::TooMany(format!(
                "{vip}: {} backends, more than {MAX_BACKENDS}",
                b.len()
            )));
        }
        match &mut self.inner {
            Inner::Ipvs(b) => Ok(b.sync(want)?),
            Inner::Nft { table, idle } => {
                let n = table.sync(want, |held| match held {
                    None => (rebuild(want), want.len()),
                    Some(have) => changes(have, want),
                })?;
                if let Some((path, seconds)) = idle.take() {
                    set_conntrack_tcp_idle(&path, seconds)?;
                }
                Ok(n)
            }
        }
    }

    /// Removes the table (a task's namespace going away takes it anyway).
    pub fn clear(&mut self) -> Result<(), LbError> {
        match &mut self.inner {
            Inner::Ipvs(b) => Ok(b.clear()?),
            Inner::Nft { table, .. } => Ok(table.clear(TABLE)?),
        }
    }
}

/// The conntrack sysctl that times out an idle established TCP connection, per
/// network namespace.
pub const CONNTRACK_TCP_IDLE: &str = "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established";

/// Sets conntrack's idle timeout for established TCP connections in the namespace at
/// `path` (a `/proc/sys/net` file shows the opening thread's namespace).
fn set_conntrack_tcp_idle(path: &str, seconds: u32) -> Result<(), LbError> {
    let write = || std::fs::write(CONNTRACK_TCP_IDLE, seconds.to_string());
    in_netns(path, write)
        .map_err(|e| LbError::Netns {
            path: path.to_string(),
            error: e.to_string(),
        })?
        .map_err(|e| LbError::Netns {
            path: path.to_string(),
            error: format!("{CONNTRACK_TCP_IDLE}: {e}"),
        })
}

fn service_chain(vip: Ipv4Addr) -> String {
    format!("s-{:08x}", u32::from(vip))
}

fn backend_map(vip: Ipv4Addr) -> String {
    format!("b-{:08x}", u32::from(vip))
}

/// A batch that replaces whatever table is there with one holding `want`.
pub fn rebuild(want: &Services) -> Batch {
    let mut b = Batch::new(NFPROTO_IPV4);
    b.add_table(TABLE);
    b.del_table(TABLE);
    b.add_table(TABLE);
    b.add_map(TABLE, "vips", KeyType::Ipv4, MapData::Verdict);
    b.add_set(TABLE, "empty", KeyType::Ipv4);
    b.add_chain(
        TABLE,
        "out",
        Some(BaseChain {
            hook: Hook::Output,
            priority: DSTNAT,
            kind: ChainType::Nat,
        }),
    );
    b.add_rule(
        TABLE,
        "out",
        &[
            Expr::NetworkHeader {
                offset: 16,
                len: 4,
                dreg: Reg::R1,
            },
            Expr::Lookup {
                set: "vips".into(),
                sreg: Reg::R1,
                dreg: Some(Reg::Verdict),
            },
        ],
    );
    add_deny_chain(&mut b);
    for (vip, backends) in want {
        add_service(&mut b, *vip, backends);
    }
    b
}

/// The batch that turns `have` into `want`, and how many services it touches.
pub fn changes(have: &Services, want: &Services) -> (Batch, usize) {
    let mut b = Batch::new(NFPROTO_IPV4);
    let mut n = 0;
    // Removals first: a VIP's chain must be gone before another could take its name.
    for (vip, old, _) in diff(have, want).filter(|(_, _, now)| now.is_none()) {
        remove_service(&mut b, *vip, old.is_some_and(Vec::is_empty));
        n += 1;
    }
    for (vip, old, now) in diff(have, want) {
        match (old, now) {
            (Some(old), Some(now)) => update_service(&mut b, *vip, old, now),
            (None, Some(now)) => add_service(&mut b, *vip, now),
            _ => continue,
        }
        n += 1;
    }
    (b, n)
}

fn add_service(b: &mut Batch, vip: Ipv4Addr, backends: &[Ipv4Addr]) {
    let (chain, map) = (service_chain(vip), backend_map(vip));
    b.add_map(TABLE, &map, KeyType::Integer, MapData::Ipv4);
    b.add_chain(TABLE, &chain, None);
    fill(b, vip, backends);
    b.set_elems(
        TABLE,
        "vips",
        &[(ip_bytes(vip), Value::Verdict(Verdict::Goto(chain)))],
    );
}

fn update_service(b: &mut Batch, vip: Ipv4Addr, old: &[Ipv4Addr], backends: &[Ipv4Addr]) {
    if old.len() == backends.len() && !old.is_empty() {
        // Same count: the rule stays and only the slots that changed are swapped. A rule
        // added to the table makes the kernel check every chain reachable from it at
        // commit (the `vips` verdict map reaches them all), so this path is the one whose
        // cost does not grow with the number of services.
        let map = backend_map(vip);
        let changed: Vec<(Vec<u8>, Value)> = (0u32..)
            .zip(old.iter().zip(backends))
            .filter(|(_, (was, now))| was != now)
            .map(|(i, (_, now))| (index_key(i), Value::Bytes(ip_bytes(*now))))
            .collect();
        let keys: Vec<Vec<u8>> = changed.iter().map(|(k, _)| k.clone()).collect();
        b.del_elems(TABLE, &map, &keys);
        b.set_elems(TABLE, &map, &changed);
        return;
    }
    b.flush_chain(TABLE, &service_chain(vip));
    b.del_elems(TABLE, &backend_map(vip), &[]);
    if old.is_empty() {
        b.del_elems(TABLE, "empty", &[ip_bytes(vip)]);
    }
    fill(b, vip, backends);
}

fn remove_service(b: &mut Batch, vip: Ipv4Addr, was_empty: bool) {
    b.del_elems(TABLE, "vips", &[ip_bytes(vip)]);
    if was_empty {
        b.del_elems(TABLE, "empty", &[ip_bytes(vip)]);
    }
    b.flush_chain(TABLE, &service_chain(vip));
    b.del_chain(TABLE, &service_chain(vip));
    b.del_map(TABLE, &backend_map(vip));
}

/// The service chain's rule and map for `backends`; none: the VIP joins `empty`.
fn fill(b: &mut Batch, vip: Ipv4Addr, backends: &[Ipv4Addr]) {
    if backends.is_empty() {
        b.set_elems(TABLE, "empty", &[(ip_bytes(vip), Value::None)]);
        return;
    }
    let (chain, map) = (service_chain(vip), backend_map(vip));
    let elems: Vec<(Vec<u8>, Value)> = (0u32..)
        .zip(backends)
        .map(|(i, ip)| (index_key(i), Value::Bytes(ip_bytes(*ip))))
        .collect();
    b.set_elems(TABLE, &map, &elems);
    let n = u32::try_from(backends.len()).unwrap_or(u32::MAX);
    b.add_rule(
        TABLE,
        &chain,
        &[
            Expr::Numgen {
                modulus: n,
                dreg: Reg::R1,
            },
            Expr::Lookup {
                set: map,
                sreg: Reg::R1,
                dreg: Some(Reg::R1),
            },
            Expr::Dnat {
                addr: Reg::R1,
                port: None,
            },
        ],
    );
}

/// The VIPs of `want` whose sets differ from `have`'s (for logs and tests).
pub fn differing(have: &Services, want: &Services) -> BTreeSet<Ipv4Addr> {
    have.keys()
        .chain(want.keys())
        .filter(|v| have.get(v) != want.get(v))
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(d: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 9, d)
    }

    #[test]
    fn names_are_per_vip() {
        assert_eq!(service_chain(ip(100)), "s-0a000964");
        assert_eq!(backend_map(ip(100)), "b-0a000964");
    }

    #[test]
    fn an_unchanged_service_costs_nothing_and_a_change_touches_only_its_service() {
        let mut have = Services::new();
        for v in 100..200u8 {
            have.insert(ip(v), vec![ip(2), ip(3)]);
        }
        let (b, n) = changes(&have, &have.clone());
        assert_eq!(n, 0);
        assert!(b.is_empty());
        let mut want = have.clone();
        want.insert(ip(150), vec![ip(2)]);
        let (one, n) = changes(&have, &want);
        assert_eq!(n, 1);
        // Flush chain, flush map, one element, one rule.
        assert_eq!(one.what().len(), 4, "{:?}", one.what());
        assert!(one.what().iter().all(|w| w.contains("0a000996")));
        // A backend replaced: its slot only, no rule.
        want.insert(ip(150), vec![ip(2), ip(9)]);
        let (swap, n) = changes(&have, &want);
        assert_eq!(n, 1);
        assert_eq!(
            swap.what(),
            [
                "remove from map swarmlet b-0a000996",
                "add to map swarmlet b-0a000996"
            ]
        );
        assert_eq!(differing(&have, &want), BTreeSet::from([ip(150)]));
    }

    #[test]
    fn a_service_emptied_moves_to_the_refusing_set_and_back() {
        let have = Services::from([(ip(100), vec![ip(2)])]);
        let empty = Services::from([(ip(100), vec![])]);
        let (b, _) = changes(&have, &empty);
        assert!(
            b.what().iter().any(|w| w == "add to map swarmlet empty"),
            "{:?}",
            b.what()
        );
        let (b, _) = changes(&empty, &have);
        assert!(b
            .what()
            .iter()
            .any(|w| w == "remove from map swarmlet empty"));
        let (b, n) = changes(&empty, &Services::new());
        assert_eq!(n, 1);
        assert!(b
            .what()
            .iter()
            .any(|w| w == "remove from map swarmlet empty"));
        assert!(b
            .what()
            .iter()
            .any(|w| w == "delete chain swarmlet s-0a000964"));
    }
}

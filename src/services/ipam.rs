//! Address management for overlay networks, pure and deterministic like the rest of
//! the replicated state: every manager that applies the same commands hands out the
//! same subnets, VNIs and addresses.
//!
//! Choices, after Swarm's where a user would notice:
//! - Subnets come from the cluster's pools (default 10.0.0.0/8 cut into /24s, set at
//!   `init` with `--default-addr-pool` and `--default-addr-pool-mask-length`), the
//!   lowest free one first; a subnet the user names must not overlap another network's.
//! - VNIs start at 4096 (Swarm's first, the ingress network's) and take the lowest free.
//! - Addresses inside a network go round the subnet (the next free one after the last
//!   handed out), not lowest-first: an address just released is the last to be reused,
//!   so a stale ARP entry or DNS answer for a task that went does not reach its
//!   successor. The network's own address (.0), its broadcast and the gateway are
//!   never handed out.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::store::TaskId;
use super::ServiceId;
use crate::raft::NodeId;

/// The first VNI handed out (Swarm's ingress network has it).
pub const FIRST_VNI: u32 = 4096;

/// VXLAN's VNI is 24 bits.
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// The smallest subnet a network may have: a /30 leaves two addresses, one for the
/// gateway and one for a task, which is as small as it can usefully be.
pub const MAX_PREFIX: u8 = 30;

/// The largest: a /8 is the whole default pool; a larger subnet would let one network's
/// address table outgrow what the replicated state should carry.
pub const MIN_PREFIX: u8 = 8;

/// An IPv4 subnet: an address and a prefix length, with no host bits set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("invalid subnet {0:?}: want an IPv4 address and a prefix length, as 10.0.9.0/24")]
    Malformed(String),
    #[error("invalid subnet {given}: host bits are set (did you mean {net}?)")]
    HostBits { given: String, net: Ipv4Net },
    #[error("invalid subnet {0}: the prefix length must be between {MIN_PREFIX} and {MAX_PREFIX}")]
    Size(Ipv4Net),
    #[error("subnet {0} overlaps network {1}'s subnet {2}")]
    Overlap(Ipv4Net, String, Ipv4Net),
    #[error("gateway {0} is not a host address of subnet {1}")]
    Gateway(Ipv4Addr, Ipv4Net),
    #[error("ip range {0} is not inside subnet {1}")]
    Range(Ipv4Net, Ipv4Net),
    #[error("could not find an available, non-overlapping IPv4 address pool among the defaults to assign to the network (pools {0})")]
    PoolExhausted(String),
    #[error("no free VNI is left")]
    VniExhausted,
    #[error("no free address is left in network {0}'s subnet {1}")]
    Exhausted(String, Ipv4Net),
}

impl Ipv4Net {
    /// `addr/prefix` as a user types it: host bits must be clear.
    pub fn parse(s: &str) -> Result<Ipv4Net, IpamError> {
        let bad = || IpamError::Malformed(s.to_string());
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr = Ipv4Addr::from_str(a).map_err(|_| bad())?;
        if p.is_empty() || p.len() > 2 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(bad());
        }
        let net = Ipv4Net { addr, prefix }.network();
        if net.addr != addr {
            return Err(IpamError::HostBits {
                given: s.to_string(),
                net,
            });
        }
        Ok(net)
    }

    fn mask(self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0)
    }

    /// The same prefix with the host bits cleared.
    pub fn network(self) -> Ipv4Net {
        Ipv4Net {
            addr: Ipv4Addr::from(u32::from(self.addr) & self.mask()),
            prefix: self.prefix,
        }
    }

    pub fn first(self) -> u32 {
        u32::from(self.addr) & self.mask()
    }

    pub fn last(self) -> u32 {
        self.first() | !self.mask()
    }

    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == self.first()
    }

    pub fn overlaps(self, other: Ipv4Net) -> bool {
        self.first() <= other.last() && other.first() <= self.last()
    }

    /// `other` lies wholly inside.
    pub fn covers(self, other: Ipv4Net) -> bool {
        self.first() <= other.first() && other.last() <= self.last()
    }

    /// The first host address: the default gateway, as Docker picks it.
    pub fn first_host(self) -> Ipv4Addr {
        Ipv4Addr::from(self.first().saturating_add(1))
    }

    /// A host address (not the network's own, not its broadcast).
    pub fn is_host(self, ip: Ipv4Addr) -> bool {
        self.contains(ip) && u32::from(ip) != self.first() && u32::from(ip) != self.last()
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Where subnets for networks that name none come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pools {
    pub pools: Vec<Ipv4Net>,
    /// The prefix length of each subnet cut from them.
    pub subnet_prefix: u8,
}

impl Default for Pools {
    /// Docker's: 10.0.0.0/8 in /24s.
    fn default() -> Pools {
        Pools {
            pools: vec![Ipv4Net {
                addr: Ipv4Addr::new(10, 0, 0, 0),
                prefix: 8,
            }],
            subnet_prefix: 24,
        }
    }
}

impl Pools {
    /// Checks pools as `init` takes them.
    pub fn new(pools: Vec<Ipv4Net>, subnet_prefix: u8) -> Result<Pools, String> {
        if pools.is_empty() {
            return Err("--default-addr-pool: at least one pool is needed".into());
        }
        if !(MIN_PREFIX..=MAX_PREFIX).contains(&subnet_prefix) {
            return Err(format!(
                "--default-addr-pool-mask-length: {subnet_prefix} is not between {MIN_PREFIX} and {MAX_PREFIX}"
            ));
        }
        for (i, p) in pools.iter().enumerate() {
            if p.prefix > subnet_prefix {
                return Err(format!(
                    "--default-addr-pool: {p} is smaller than a /{subnet_prefix} subnet"
                ));
            }
            if let Some(q) = pools[..i].iter().find(|q| q.overlaps(*p)) {
                return Err(format!("--default-addr-pool: {p} overlaps {q}"));
            }
        }
        Ok(Pools {
            pools,
            subnet_prefix,
        })
    }

    /// The lowest subnet of the pools that overlaps none of `taken`.
    pub fn next_subnet(&self, taken: &[Ipv4Net]) -> Result<Ipv4Net, IpamError> {
        let step = 1u64 << (32 - u32::from(self.subnet_prefix));
        for pool in &self.pools {
            let mut at = u64::from(pool.first());
            let end = u64::from(pool.last());
            while at + step - 1 <= end {
                let cand = Ipv4Net {
                    addr: Ipv4Addr::from(u32::try_from(at).unwrap_or(u32::MAX)),
                    prefix: self.subnet_prefix,
                };
                match taken
                    .iter()
                    .filter(|t| t.overlaps(cand))
                    .map(|t| u64::from(t.last()))
                    .max()
                {
                    // Skip past the network in the way, to the next aligned subnet.
                    Some(last) => at = (last + 1).div_ceil(step) * step,
                    None => return Ok(cand),
                }
            }
        }
        let pools: Vec<String> = self.pools.iter().map(ToString::to_string).collect();
        Err(IpamError::PoolExhausted(format!(
            "{} in /{}s",
            pools.join(", "),
            self.subnet_prefix
        )))
    }
}

/// The lowest free VNI from [`FIRST_VNI`].
pub fn next_vni(taken: impl IntoIterator<Item = u32>) -> Result<u32, IpamError> {
    let mut taken: Vec<u32> = taken.into_iter().collect();
    taken.sort_unstable();
    let mut want = FIRST_VNI;
    for v in taken {
        if v == want {
            want += 1;
        } else if v > want {
            break;
        }
    }
    match want <= MAX_VNI {
        true => Ok(want),
        false => Err(IpamError::VniExhausted),
    }
}

/// Who holds an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Owner {
    /// A service's virtual IP.
    Vip(ServiceId),
    Task(TaskId),
    /// A node's own address on the network (its load balancer's source).
    Node(NodeId),
    /// A container on that node attached to the network (`run --network`).
    Attachment(NodeId),
}

/// One network's addresses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressSpace {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// Where addresses are handed out from (the whole subnet if not narrowed).
    pub range: Ipv4Net,
    pub used: BTreeMap<Ipv4Addr, Owner>,
    /// The last address handed out: the search for the next starts after it.
    pub cursor: Ipv4Addr,
}

impl AddressSpace {
    /// Checks a network's subnet, gateway and range as the user gave them.
    pub fn new(
        subnet: Ipv4Net,
        gateway: Option<Ipv4Addr>,
        range: Option<Ipv4Net>,
    ) -> Result<AddressSpace, IpamError> {
        if !(MIN_PREFIX..=MAX_PREFIX).contains(&subnet.prefix) {
            return Err(IpamError::Size(subnet));
        }
        let gateway = gateway.unwrap_or_else(|| subnet.first_host());
        if !subnet.is_host(gateway) {
            return Err(IpamError::Gateway(gateway, subnet));
        }
        let range = range.unwrap_or(subnet);
        if !subnet.covers(range) {
            return Err(IpamError::Range(range, subnet));
        }
        Ok(AddressSpace {
            subnet,
            gateway,
            range,
            used: BTreeMap::new(),
            cursor: gateway,
        })
    }

    /// The next free address after the cursor, round the range; `name` is the
    /// network's, for the error.
    pub fn allocate(&mut self, owner: Owner, name: &str) -> Result<Ipv4Addr, IpamError> {
        let (lo, hi) = (u64::from(self.range.first()), u64::from(self.range.last()));
        let size = hi - lo + 1;
        // Offset of the last address handed out; from outside the range, start at its top
        // so the search begins with its first address.
        let start = match self.range.contains(self.cursor) {
            true => u64::from(u32::from(self.cursor)) - lo,
            false => size - 1,
        };
        for step in 1..=size {
            let ip = Ipv4Addr::from(u32::try_from(lo + (start + step) % size).unwrap_or(0));
            if self.subnet.is_host(ip) && ip != self.gateway && !self.used.contains_key(&ip) {
                self.used.insert(ip, owner);
                self.cursor = ip;
                return Ok(ip);
            }
        }
        Err(IpamError::Exhausted(name.to_string(), self.subnet))
    }

    /// Gives an address back; only its holder can.
    pub fn release(&mut self, ip: Ipv4Addr, owner: Owner) -> bool {
        if self.used.get(&ip) == Some(&owner) {
            self.used.remove(&ip);
            return true;
        }
        false
    }

    /// How many addresses the range can hand out in all.
    pub fn capacity(&self) -> u64 {
        let size = u64::from(self.range.last()) - u64::from(self.range.first()) + 1;
        let excluded = [
            Ipv4Addr::from(self.subnet.first()),
            Ipv4Addr::from(self.subnet.last()),
            self.gateway,
        ];
        let n = excluded
            .iter()
            .filter(|ip| self.range.contains(**ip))
            .count();
        size - n as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        Ipv4Net::parse(s).unwrap()
    }

    #[test]
    fn subnets_parse_strictly_and_name_the_mistake() {
        assert_eq!(net("10.0.9.0/24").to_string(), "10.0.9.0/24");
        for bad in [
            "10.0.9.0",
            "10.0.9/24",
            "10.0.9.0/33",
            "10.0.9.0/",
            "10.0.9.0/+4",
            "x/24",
            "10.0.9.0/024",
        ] {
            assert!(
                matches!(Ipv4Net::parse(bad), Err(IpamError::Malformed(_))),
                "{bad}"
            );
        }
        let e = Ipv4Net::parse("10.0.9.1/24").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid subnet 10.0.9.1/24: host bits are set (did you mean 10.0.9.0/24?)"
        );
        assert!(net("10.0.0.0/8").covers(net("10.1.0.0/16")));
        assert!(net("10.1.0.0/16").overlaps(net("10.0.0.0/8")));
        assert!(!net("10.1.0.0/16").overlaps(net("10.2.0.0/16")));
        assert!(net("0.0.0.0/0").contains(Ipv4Addr::new(1, 2, 3, 4)));
    }

    #[test]
    fn subnets_come_lowest_first_skipping_what_is_taken_and_run_out_clearly() {
        let p = Pools::default();
        assert_eq!(p.next_subnet(&[]).unwrap(), net("10.0.0.0/24"));
        assert_eq!(
            p.next_subnet(&[net("10.0.0.0/24")]).unwrap(),
            net("10.0.1.0/24")
        );
        // A user's /16 in the way is skipped whole; a /26 blocks only its /24.
        assert_eq!(
            p.next_subnet(&[net("10.0.0.0/16")]).unwrap(),
            net("10.1.0.0/24")
        );
        assert_eq!(
            p.next_subnet(&[net("10.0.0.64/26")]).unwrap(),
            net("10.0.1.0/24")
        );
        let small = Pools::new(vec![net("192.168.0.0/23")], 24).unwrap();
        let taken = [net("192.168.0.0/24"), net("192.168.1.0/24")];
        assert_eq!(
            small.next_subnet(&taken),
            Err(IpamError::PoolExhausted("192.168.0.0/23 in /24s".into()))
        );
        // Two pools: the second is used when the first is full.
        let two = Pools::new(vec![net("192.168.0.0/24"), net("172.20.0.0/16")], 24).unwrap();
        assert_eq!(
            two.next_subnet(&[net("192.168.0.0/24")]).unwrap(),
            net("172.20.0.0/24")
        );
    }

    #[test]
    fn pools_are_checked_as_init_takes_them() {
        assert!(Pools::new(vec![], 24).unwrap_err().contains("at least one"));
        assert!(Pools::new(vec![net("10.0.0.0/8")], 31)
            .unwrap_err()
            .contains("mask-length"));
        assert!(Pools::new(vec![net("10.0.0.0/25")], 24)
            .unwrap_err()
            .contains("smaller"));
        let e = Pools::new(vec![net("10.0.0.0/8"), net("10.9.0.0/16")], 24).unwrap_err();
        assert_eq!(e, "--default-addr-pool: 10.9.0.0/16 overlaps 10.0.0.0/8");
    }

    #[test]
    fn vnis_take_the_lowest_free_from_4096() {
        assert_eq!(next_vni([]).unwrap(), 4096);
        assert_eq!(next_vni([4096, 4097, 4099]).unwrap(), 4098);
        assert_eq!(next_vni([5000]).unwrap(), 4096);
        assert_eq!(next_vni(FIRST_VNI..=MAX_VNI), Err(IpamError::VniExhausted));
    }

    #[test]
    fn addresses_go_round_the_range_and_are_not_reused_at_once() {
        let mut a = AddressSpace::new(net("10.0.9.0/29"), None, None).unwrap();
        assert_eq!(a.gateway, Ipv4Addr::new(10, 0, 9, 1));
        assert_eq!(a.capacity(), 5);
        let t = |n| Owner::Task(TaskId(n));
        let got: Vec<Ipv4Addr> = (0..5).map(|i| a.allocate(t(i), "n").unwrap()).collect();
        assert_eq!(got[0], Ipv4Addr::new(10, 0, 9, 2));
        assert_eq!(got[4], Ipv4Addr::new(10, 0, 9, 6));
        let e = a.allocate(t(9), "mynet").unwrap_err();
        assert_eq!(
            e.to_string(),
            "no free address is left in network mynet's subnet 10.0.9.0/29"
        );
        // Only the holder releases; the freed .3 comes back only after the search wraps.
        assert!(!a.release(got[1], t(0)));
        assert!(a.release(got[1], t(1)));
        assert!(a.release(got[3], t(3)));
        assert_eq!(a.allocate(t(10), "n").unwrap(), Ipv4Addr::new(10, 0, 9, 3));
        assert_eq!(a.allocate(t(11), "n").unwrap(), Ipv4Addr::new(10, 0, 9, 5));
    }

    #[test]
    fn gateway_and_range_are_checked() {
        let s = net("10.0.9.0/24");
        let gw = |g: [u8; 4]| AddressSpace::new(s, Some(Ipv4Addr::from(g)), None);
        assert!(matches!(gw([10, 0, 9, 0]), Err(IpamError::Gateway(..))));
        assert!(matches!(gw([10, 0, 9, 255]), Err(IpamError::Gateway(..))));
        assert!(matches!(gw([10, 0, 8, 1]), Err(IpamError::Gateway(..))));
        assert_eq!(
            gw([10, 0, 9, 254]).unwrap().gateway,
            Ipv4Addr::new(10, 0, 9, 254)
        );
        let r = AddressSpace::new(s, None, Some(net("10.0.8.0/25")));
        assert!(matches!(r, Err(IpamError::Range(..))));
        let mut a = AddressSpace::new(s, None, Some(net("10.0.9.128/25"))).unwrap();
        assert_eq!(
            a.allocate(Owner::Vip(ServiceId(1)), "n").unwrap(),
            Ipv4Addr::new(10, 0, 9, 128)
        );
        assert!(matches!(
            AddressSpace::new(net("10.0.0.0/31"), None, None),
            Err(IpamError::Size(_))
        ));
    }
}

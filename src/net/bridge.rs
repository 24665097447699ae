//! The node's local bridge (Docker's `docker_gwbridge`): the way out for tasks. Each
//! task gets one more interface on it, with its default route through the bridge's
//! address, and what leaves the node from it is masqueraded to the address of the
//! interface it leaves by:
//!
//! ```text
//! sw-gw: 172.18.0.1/16, up
//! table ip swarmlet-gw {
//!   chain post  { nat hook postrouting 100: iifname "sw-gw" oifname != "sw-gw" masquerade
//!                                           ip saddr 127.0.0.0/8 oifname "sw-gw" masquerade
//!                                           iifname "sw-gw" oifname "sw-gw" ct status dnat masquerade }
//!   chain guard { filter hook prerouting -300: iifname "sw-gw" ip daddr 127.0.0.0/8 drop
//!                                              iifname "sw-gw" ip saddr 127.0.0.0/8 drop }
//! }
//! ```
//!
//! The other rules and the guard are for ports published to containers on the bridge
//! (host mode, `run -p`): reached from the node's own loopback (see `net::mesh`; the
//! bridge has `route_localnet` on once its table is in place), and from a container on
//! the same bridge through the node's address (hairpin: without the masquerade the
//! answer would go straight back over the bridge, from an address the client never
//! called; Docker relies on br_netfilter for this, which a node need not load).
//!
//! The subnet is the node's alone: it is never routed between nodes (tasks reach each
//! other over their overlay networks), so every node uses the same one and the cluster
//! state holds none of it. The node must forward IPv4; the caller turns it on.

use std::net::Ipv4Addr;

use super::nft::{
    hairpin_masquerade, ifname_bytes, loopback_guard, loopback_masquerade, BaseChain, Batch,
    ChainType, Expr, Hook, Nft, NftError, Reg, GUARD_HOOK, GUARD_PRIORITY, NFPROTO_IPV4,
};
use super::overlay::{self, Endpoint};
use super::rtnl::{LinkSet, NewLink, Rtnl, RtnlError};

pub const BRIDGE: &str = "sw-gw";
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 1);
pub const PREFIX: u8 = 16;
pub const TABLE: &str = "swarmlet-gw";
/// The MTU of the task side: the bridge carries nothing but this node's own traffic.
pub const MTU: u32 = 1500;
/// Tells the endpoints' veth names apart from overlay ones (no network has VNI 0).
const KEY: u32 = 0;

/// The first and last task addresses of the subnet.
pub const FIRST: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 2);
pub const LAST: Ipv4Addr = Ipv4Addr::new(172, 18, 255, 254);

/// Makes the bridge (with its address, up) unless it is there; idempotent.
pub fn ensure(rtnl: &mut Rtnl) -> Result<(), RtnlError> {
    let link = match rtnl.link(BRIDGE)? {
        Some(l) if l.kind.as_deref() == Some("bridge") => l,
        other => {
            if let Some(l) = other {
                rtnl.del_link(l.index)?;
            }
            rtnl.add_link(&NewLink::Bridge {
                name: BRIDGE.into(),
                mtu: MTU,
            })?;
            rtnl.link(BRIDGE)?
                .ok_or_else(|| RtnlError::Protocol(format!("{BRIDGE} vanished")))?
        }
    };
    if !rtnl.addrs(link.index)?.contains(&(GATEWAY, PREFIX)) {
        rtnl.add_addr(link.index, GATEWAY, PREFIX)?;
    }
    if !link.up {
        rtnl.set_link(
            link.index,
            &LinkSet {
                up: Some(true),
                ..LinkSet::default()
            },
        )?;
    }
    Ok(())
}

/// Gives a task's namespace its way out: `ifname` at `ip` on the bridge, with the
/// default route through it. Removes what it made if it fails.
pub fn attach(rtnl: &mut Rtnl, netns: &str, ifname: &str, ip: Ipv4Addr) -> Result<(), RtnlError> {
    let bridge = rtnl
        .link(BRIDGE)?
        .ok_or_else(|| RtnlError::Protocol(format!("{BRIDGE} is not set up here")))?;
    let ep = Endpoint {
        netns: netns.to_string(),
        ifname: ifname.to_string(),
        ip,
        prefix: PREFIX,
    };
    overlay::attach_to(rtnl, &bridge, KEY, MTU, &ep, Some(GATEWAY))
}

pub fn detach(rtnl: &mut Rtnl, ip: Ipv4Addr) -> Result<(), RtnlError> {
    overlay::detach(rtnl, KEY, ip)
}

/// The batch that (re)makes the NAT table.
pub fn nat_batch() -> Batch {
    let mut b = Batch::new(NFPROTO_IPV4);
    b.add_table(TABLE);
    b.del_table(TABLE);
    b.add_table(TABLE);
    let base = BaseChain {
        hook: Hook::Postrouting,
        priority: 100,
        kind: ChainType::Nat,
    };
    b.add_chain(TABLE, "post", Some(base));
    let guard = BaseChain {
        hook: GUARD_HOOK,
        priority: GUARD_PRIORITY,
        kind: ChainType::Filter,
    };
    b.add_chain(TABLE, "guard", Some(guard));
    b.add_rule(
        TABLE,
        "post",
        &[
            Expr::IifName { dreg: Reg::R1 },
            Expr::Eq {
                sreg: Reg::R1,
                data: ifname_bytes(BRIDGE),
            },
            Expr::OifName { dreg: Reg::R1 },
            Expr::Neq {
                sreg: Reg::R1,
                data: ifname_bytes(BRIDGE),
            },
            Expr::Masquerade,
        ],
    );
    b.add_rule(TABLE, "post", &loopback_masquerade(BRIDGE));
    b.add_rule(TABLE, "post", &hairpin_masquerade(BRIDGE));
    for rule in loopback_guard(BRIDGE) {
        b.add_rule(TABLE, "guard", &rule);
    }
    b
}

/// Puts the NAT table in place (replacing whatever table of that name is there), then
/// turns `route_localnet` on for the bridge (its guard is in the table).
pub fn nat(nft: &mut Nft) -> Result<(), NftError> {
    nft.commit(nat_batch())?;
    super::route_localnet(BRIDGE, true).map_err(NftError::Protocol)
}

/// The lowest address of the subnet not in `used`.
pub fn free_addr(used: &std::collections::BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    (u32::from(FIRST)..=u32::from(LAST))
        .map(Ipv4Addr::from)
        .find(|ip| !used.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_taken_lowest_first_and_never_the_gateway() {
        let mut used = std::collections::BTreeSet::new();
        assert_eq!(free_addr(&used), Some(FIRST));
        used.insert(FIRST);
        used.insert(Ipv4Addr::new(172, 18, 0, 4));
        assert_eq!(free_addr(&used), Some(Ipv4Addr::new(172, 18, 0, 3)));
        assert!(!(FIRST..=LAST).contains(&GATEWAY));
    }

    #[test]
    fn the_nat_batch_replaces_the_table_in_one_go() {
        let b = nat_batch();
        assert_eq!(b.what().len(), 10, "{:?}", b.what());
        assert_eq!(b.what()[1], format!("delete table {TABLE}"));
    }
}

//! The data plane's kernel seams and servers: links, addresses, routes, neighbour and
//! forwarding entries over rtnetlink (`rtnl`), overlay networks reconciled on them
//! (`overlay`), pinned network namespaces (`netns`), nf_tables (`nft`) with the VIP
//! balancer (`lb`, or IPVS over generic netlink in `ipvs` where the kernel has it) and the routing mesh (`mesh`) on it, and the embedded DNS server's
//! wire format (`dns`, pure). Nothing here decides what a node should have: callers hand
//! in the desired state, these modules make the kernel match it.

pub mod bridge;
pub mod dns;
pub mod dns_server;
pub mod ipvs;
pub mod lb;
pub mod mesh;
pub mod names;
pub mod netns;
pub mod nft;
pub mod overlay;
pub mod rtnl;
pub mod seal;
pub mod sealed;
pub mod tap;
pub mod vips;

/// Turns `route_localnet` on or off for interface `ifname` in the calling thread's
/// namespace: with it on, the kernel routes packets with a loopback source out by the
/// interface (a published port reached at `localhost`, sent on to a container behind
/// it) and accepts ones for a loopback destination coming in by it, which the tables
/// that turn it on guard against (`nft::loopback_guard`).
pub fn route_localnet(ifname: &str, on: bool) -> Result<(), String> {
    let path = format!("/proc/sys/net/ipv4/conf/{ifname}/route_localnet");
    std::fs::write(&path, if on { "1" } else { "0" }).map_err(|e| format!("{path}: {e}"))
}

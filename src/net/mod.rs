//! The data plane's kernel seams and servers: links, addresses, routes, neighbour and
//! forwarding entries over rtnetlink (`rtnl`), and the embedded DNS server's wire
//! format (`dns`, pure). Nothing here decides what a node should have: callers hand in
//! the desired state, these modules make the kernel match it.

pub mod lb;
pub mod mesh;
pub mod netns;
pub mod nft;
pub mod overlay;
pub mod rtnl;

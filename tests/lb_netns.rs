//! The nf_tables balancer through the real kernel: a client and two backends wired to
//! one overlay network; connections to a VIP from the client's namespace go round robin
//! over the backends, follow changes at once, are refused when there is no backend, a
//! balancer opened afresh (a daemon restart) rebuilds over what an earlier one left, and
//! a thousand services go in one batch.
//!
//! Needs root: marked ignored, so the runner reports it skipped unless run as root.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // test code

mod support;

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::time::Duration;

use support::netio::{hello, ip, name_server, netns_exec};
use support::Net;
use swarmlet::net::lb::{Balancer, Services};
use swarmlet::net::overlay::{attach, reconcile, Endpoint, OverlayNet};
use swarmlet::net::rtnl::Rtnl;

#[test]
#[ignore = "needs root: network namespaces"]
fn a_vip_balances_round_robin_follows_changes_and_refuses_when_empty() {
    let mut net = Net::new("lbt");
    let h = format!("/var/run/netns/{}", net.host(1, "10.77.0.1"));
    let mut r = Rtnl::open_in(&h).unwrap();
    let ov = OverlayNet {
        sealed: false,
        vni: 300,
        mtu: 1450,
        local: ip("10.77.0.1"),
        remote: BTreeMap::new(),
    };
    reconcile(&mut r, std::slice::from_ref(&ov)).unwrap();
    let mut ns = Vec::new();
    for (tag, a) in [("c", "10.0.9.2"), ("b1", "10.0.9.3"), ("b2", "10.0.9.4")] {
        let path = net.bare(tag);
        let ep = Endpoint {
            netns: path.clone(),
            ifname: "eth0".into(),
            ip: ip(a),
            prefix: 24,
        };
        attach(&mut r, &ov, &ep).unwrap();
        ns.push(path);
    }
    let (c, b1, b2) = (&ns[0], &ns[1], &ns[2]);
    name_server(b1, "10.0.9.3:8080", "b1");
    name_server(b2, "10.0.9.4:8080", "b2");
    assert_eq!(hello(c, "10.0.9.3:8080").unwrap(), "b1", "the wiring works");

    let vip = ip("10.0.9.100");
    let mut lb = Balancer::open_in(c).unwrap();
    let both = Services::from([(vip, vec![ip("10.0.9.3"), ip("10.0.9.4")])]);
    assert_eq!(lb.sync(&both).unwrap(), 1);
    let got: Vec<String> = (0..6)
        .map(|_| hello(c, "10.0.9.100:8080").unwrap())
        .collect();
    for pair in got.windows(2) {
        assert_ne!(pair[0], pair[1], "round robin: {got:?}");
    }
    let listed = netns_exec(c, &["nft", "list", "ruleset"]);
    assert!(listed.contains("numgen inc mod 2"), "{listed}");
    assert!(listed.contains("10.0.9.100 : goto s-0a000964"), "{listed}");
    assert_eq!(lb.sync(&both).unwrap(), 0, "nothing changed");

    // One backend leaves: every connection goes to the other at once.
    let one = Services::from([(vip, vec![ip("10.0.9.4")])]);
    assert_eq!(lb.sync(&one).unwrap(), 1);
    for _ in 0..4 {
        assert_eq!(hello(c, "10.0.9.100:8080").unwrap(), "b2");
    }

    // Replaced by another (the same count: only the map's slot is swapped).
    let other = Services::from([(vip, vec![ip("10.0.9.3")])]);
    assert_eq!(lb.sync(&other).unwrap(), 1);
    for _ in 0..4 {
        assert_eq!(hello(c, "10.0.9.100:8080").unwrap(), "b1");
    }

    // None left: refused at once, not a timeout.
    let none = Services::from([(vip, vec![])]);
    lb.sync(&none).unwrap();
    let t = std::time::Instant::now();
    let err = hello(c, "10.0.9.100:8080").unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::ConnectionRefused,
        "{err}: {}",
        netns_exec(c, &["nft", "list", "ruleset"])
    );
    assert!(t.elapsed() < Duration::from_secs(1));

    // A fresh balancer (the daemon restarted) rebuilds over the old table.
    drop(lb);
    let mut lb = Balancer::open_in(c).unwrap();
    assert_eq!(lb.sync(&both).unwrap(), 1);
    let got: Vec<String> = (0..4)
        .map(|_| hello(c, "10.0.9.100:8080").unwrap())
        .collect();
    assert!(
        got.contains(&"b1".to_string()) && got.contains(&"b2".to_string()),
        "{got:?}"
    );
    assert_eq!(
        netns_exec(c, &["nft", "list", "ruleset"])
            .matches("table ip swarmlet")
            .count(),
        1
    );

    // A thousand services in one batch (a node's first sync in a big cluster): the
    // socket takes it, and the service still balances among them.
    let mut many = both.clone();
    for i in 0..1_000u32 {
        let b = std::net::Ipv4Addr::from(0x0a40_0000 + i * 4);
        many.insert(std::net::Ipv4Addr::from(0x0a80_0000 + i), vec![b, b]);
    }
    assert_eq!(lb.sync(&many).unwrap(), 1_000);
    assert!(["b1", "b2"].contains(&hello(c, "10.0.9.100:8080").unwrap().as_str()));
    assert_eq!(lb.sync(&both).unwrap(), 1_000);

    // Gone: its chain and map with it; then the whole table.
    lb.sync(&Services::new()).unwrap();
    let listed = netns_exec(c, &["nft", "list", "ruleset"]);
    assert!(
        !listed.contains("s-0a000964") && !listed.contains("b-0a000964"),
        "{listed}"
    );
    lb.clear().unwrap();
    assert!(!netns_exec(c, &["nft", "list", "ruleset"]).contains("swarmlet"));
}

/// The nf_tables balancer's idle timeout is its namespace's conntrack one, set after the
/// first sync (which loads conntrack); the default leaves the kernel's five days.
#[test]
#[ignore = "needs root: network namespaces"]
fn the_idle_timeout_is_the_namespaces_conntrack_timeout() {
    use swarmlet::net::lb::{Kernel, CONNTRACK_TCP_IDLE};
    let mut net = Net::new("lbi");
    let (a, b) = (net.bare("a"), net.bare("b"));
    let vip = ip("10.0.9.100");
    let one = Services::from([(vip, vec![ip("10.0.9.3")])]);
    let mut lb = Balancer::open_with(&a, Kernel::Nft, 7_200).unwrap();
    lb.sync(&one).unwrap();
    assert_eq!(netns_exec(&a, &["cat", CONNTRACK_TCP_IDLE]).trim(), "7200");
    let mut lb = Balancer::open_in(&b).unwrap();
    lb.sync(&one).unwrap();
    assert_eq!(
        netns_exec(&b, &["cat", CONNTRACK_TCP_IDLE]).trim(),
        "432000"
    );
}

/// What the IPVS balancer leans on (IPVS itself runs in the QEMU guests only): a VIP
/// made local by a route, not an address, takes connections in the namespace and they
/// leave from the namespace's address on the VIP's network.
#[test]
#[ignore = "needs root: network namespaces"]
fn a_vips_local_route_takes_its_connections_from_the_networks_address() {
    let mut net = Net::new("lbr");
    let h = format!("/var/run/netns/{}", net.host(1, "10.77.0.1"));
    let mut r = Rtnl::open_in(&h).unwrap();
    let ov = OverlayNet {
        sealed: false,
        vni: 301,
        mtu: 1450,
        local: ip("10.77.0.1"),
        remote: BTreeMap::new(),
    };
    reconcile(&mut r, std::slice::from_ref(&ov)).unwrap();
    let c = net.bare("c");
    let ep = Endpoint {
        netns: c.clone(),
        ifname: "eth0".into(),
        ip: ip("10.0.9.2"),
        prefix: 24,
    };
    attach(&mut r, &ov, &ep).unwrap();
    let mut inside = Rtnl::open_in(&c).unwrap();
    let lo = inside.link("lo").unwrap().unwrap().index;
    inside
        .set_local_route(ip("10.0.9.100"), ip("10.0.9.2"), lo)
        .unwrap();
    inside
        .set_local_route(ip("10.0.9.100"), ip("10.0.9.2"), lo)
        .unwrap();
    let got = netns_exec(&c, &["ip", "route", "get", "10.0.9.100"]);
    assert!(got.starts_with("local 10.0.9.100 dev lo"), "{got}");
    assert!(got.contains("src 10.0.9.2"), "{got}");
    // Listed as ours; the kernel's local routes (the namespace's own addresses) are not.
    assert_eq!(inside.local_routes(lo).unwrap(), [ip("10.0.9.100")]);
    name_server(&c, "0.0.0.0:8080", "here");
    assert_eq!(hello(&c, "10.0.9.100:8080").unwrap(), "here");
    inside.del_local_route(ip("10.0.9.100"), lo).unwrap();
    inside.del_local_route(ip("10.0.9.100"), lo).unwrap();
    assert!(inside.local_routes(lo).unwrap().is_empty());
    let got = netns_exec(&c, &["ip", "route", "get", "10.0.9.100"]);
    assert!(got.contains("dev eth0"), "{got}");
}

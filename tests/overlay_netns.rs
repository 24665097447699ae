//! Overlay networks through the real kernel: two hosts (namespaces on a bridge with no
//! uplink), each with a bridge and a VXLAN device made by `net::overlay` over netlink,
//! and a "container" namespace on each wired in with a veth. A TCP connection crosses
//! the tunnel; reconciling again changes nothing; a removed entry cuts the path and a
//! deleted device comes back; an empty desired state removes everything.
//!
//! Needs root: marked ignored, so the runner reports it skipped unless run as root.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // test code

mod support;

use support::netio::{echo_server, exchange, ip};
use support::Net;
use swarmlet::net::netns;
use swarmlet::net::overlay::{
    self, attach, bridge_name, detach, host_veth, reconcile, vxlan_name, Endpoint, OverlayNet,
};
use swarmlet::net::rtnl::Rtnl;

const VNI: u32 = 4097;

fn overlay(local: &str, remote: &[(&str, &str)]) -> OverlayNet {
    OverlayNet {
        sealed: false,
        vni: VNI,
        mtu: 1500 - overlay::VXLAN_OVERHEAD,
        local: ip(local),
        remote: remote.iter().map(|(t, n)| (ip(t), ip(n))).collect(),
    }
}

#[test]
#[ignore = "needs root: network namespaces"]
fn two_hosts_reach_each_other_over_vxlan_and_reconcile_repairs() {
    let mut net = Net::new("ovl");
    let h1 = format!("/var/run/netns/{}", net.host(1, "10.77.0.1"));
    let h2 = format!("/var/run/netns/{}", net.host(2, "10.77.0.2"));
    let c1 = net.bare("c1");
    let c2 = net.bare("c2");
    let mut r1 = Rtnl::open_in(&h1).unwrap();
    let mut r2 = Rtnl::open_in(&h2).unwrap();

    let n1 = overlay("10.77.0.1", &[("10.0.9.3", "10.77.0.2")]);
    let n2 = overlay("10.77.0.2", &[("10.0.9.2", "10.77.0.1")]);
    let (want1, want2) = ([n1.clone()], [n2.clone()]);
    assert!(reconcile(&mut r1, &want1).unwrap() > 0);
    assert!(reconcile(&mut r2, &want2).unwrap() > 0);
    let ep = |ns: &str, a: &str| Endpoint {
        netns: ns.to_string(),
        ifname: "eth0".into(),
        ip: ip(a),
        prefix: 24,
    };
    attach(&mut r1, &n1, &ep(&c1, "10.0.9.2")).unwrap();
    attach(&mut r2, &n2, &ep(&c2, "10.0.9.3")).unwrap();

    // The container side: its address, the overlay's MTU, the MAC made from the address.
    let mut rc1 = Rtnl::open_in(&c1).unwrap();
    let eth0 = rc1
        .link("eth0")
        .unwrap()
        .expect("eth0 in the container namespace");
    assert!(eth0.up);
    assert_eq!(eth0.mtu, 1450);
    assert_eq!(eth0.mac, Some([2, 0x42, 10, 0, 9, 2]));
    assert_eq!(rc1.addrs(eth0.index).unwrap(), vec![(ip("10.0.9.2"), 24)]);
    // The host side: on the bridge, and the VXLAN device's source is the host's address.
    let br = r1.link(&bridge_name(VNI)).unwrap().unwrap();
    let hv = r1.link(&host_veth(VNI, ip("10.0.9.2"))).unwrap().unwrap();
    assert_eq!(hv.master, Some(br.index));
    let vx = r1.link(&vxlan_name(VNI)).unwrap().unwrap();
    let info = vx.vxlan.clone().unwrap();
    assert_eq!(
        (info.vni, info.local, info.port),
        (VNI, Some(ip("10.77.0.1")), 4789)
    );
    assert!(!info.learning && info.proxy);
    assert_eq!(vx.master, Some(br.index));

    echo_server(&c2, "10.0.9.3:7000");
    echo_server(&c1, "10.0.9.2:7000");
    assert_eq!(exchange(&c1, "10.0.9.3:7000").unwrap(), "ping\n");
    assert_eq!(exchange(&c2, "10.0.9.2:7000").unwrap(), "ping\n");

    // Settled: nothing more to do, and attaching again is a no-op.
    let left = overlay::plan(&want1, &overlay::observe(&mut r1).unwrap());
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(reconcile(&mut r1, &want1).unwrap(), 0);
    attach(&mut r1, &n1, &ep(&c1, "10.0.9.2")).unwrap();
    assert_eq!(exchange(&c1, "10.0.9.3:7000").unwrap(), "ping\n");

    // The remote endpoint leaves host 1's view: its entries go, the path with them.
    let alone = overlay("10.77.0.1", &[]);
    assert_eq!(reconcile(&mut r1, &[alone]).unwrap(), 2);
    assert!(exchange(&c1, "10.0.9.3:7000").is_err(), "no entry, no path");
    assert_eq!(reconcile(&mut r1, &want1).unwrap(), 2);
    assert_eq!(exchange(&c1, "10.0.9.3:7000").unwrap(), "ping\n");

    // Someone deletes the VXLAN device: the next reconcile remakes it with its entries.
    r1.del_link(vx.index).unwrap();
    assert!(exchange(&c1, "10.0.9.3:7000").is_err());
    assert!(reconcile(&mut r1, &want1).unwrap() >= 4);
    assert_eq!(reconcile(&mut r1, &want1).unwrap(), 0);
    assert_eq!(exchange(&c1, "10.0.9.3:7000").unwrap(), "ping\n");

    // A namespace that is gone: a clear error naming it, and no veth left behind.
    let gone = ep("/var/run/netns/no-such-namespace", "10.0.9.7");
    let err = attach(&mut r1, &n1, &gone).unwrap_err().to_string();
    assert!(err.contains("no-such-namespace"), "{err}");
    assert!(r1.link(&host_veth(VNI, ip("10.0.9.7"))).unwrap().is_none());

    // Detach, then an empty desired state: everything this module made is gone.
    detach(&mut r1, VNI, ip("10.0.9.2")).unwrap();
    assert!(
        rc1.link("eth0").unwrap().is_none(),
        "the pair goes as a whole"
    );
    detach(&mut r1, VNI, ip("10.0.9.2")).unwrap();
    reconcile(&mut r1, &[]).unwrap();
    let left: Vec<String> = r1
        .links()
        .unwrap()
        .into_iter()
        .map(|l| l.name)
        .filter(|n| n.starts_with("sw"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
#[ignore = "needs root: network namespaces"]
fn a_pinned_namespace_is_made_wired_kept_and_removed() {
    let mut net = Net::new("pns");
    let h = format!("/var/run/netns/{}", net.host(1, "10.77.0.1"));
    let dir = std::env::temp_dir().join(format!("swarmlet-pns-{}", std::process::id()));
    let path = dir.join("ns/task1");
    netns::create(&path).unwrap();
    assert!(netns::is_pinned(&path));
    let p = path.to_str().unwrap().to_string();
    // Its own namespace: only loopback, and not the host's.
    let mut inner = Rtnl::open_in(&p).unwrap();
    let names: Vec<String> = inner.links().unwrap().into_iter().map(|l| l.name).collect();
    assert_eq!(names, ["lo"]);
    let mut r = Rtnl::open_in(&h).unwrap();
    let n = overlay("10.77.0.1", &[]);
    reconcile(&mut r, std::slice::from_ref(&n)).unwrap();
    let ep = Endpoint {
        netns: p.clone(),
        ifname: "eth0".into(),
        ip: ip("10.0.9.2"),
        prefix: 24,
    };
    attach(&mut r, &n, &ep).unwrap();
    // Made again (a daemon restart): kept as it is, wiring and all.
    netns::create(&path).unwrap();
    assert!(inner.link("eth0").unwrap().is_some());
    netns::remove(&path).unwrap();
    assert!(!path.exists());
    drop(inner);
    // The namespace went with its last reference: so did the veth pair.
    support::wait_until(5, "the pair is gone", || {
        r.link(&host_veth(VNI, ip("10.0.9.2"))).unwrap().is_none()
    });
    netns::remove(&path).unwrap();
    // A path that cannot be made names itself.
    let e = netns::create(std::path::Path::new("/proc/no/such")).unwrap_err();
    assert!(e.to_string().contains("/proc/no/such"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

//! The routing mesh through the real kernel: two hosts joined by the ingress overlay
//! network, one task on each; a client outside the overlay connects to the published
//! port of either host and is answered by the tasks of both, in turn. A port with no
//! task takes nothing; removing the port leaves nothing behind.
//!
//! Needs root: marked ignored, so the runner reports it skipped unless run as root.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // test code

mod support;

use std::collections::BTreeMap;

use support::netio::{hello, ip, name_server, netns_exec};
use support::Net;
use swarmlet::net::mesh::{self, Mesh, Port, Proto, Published};
use swarmlet::net::overlay::{
    attach, bridge_name, reconcile, set_node_address, Endpoint, OverlayNet,
};
use swarmlet::net::rtnl::{in_netns, Rtnl};

const VNI: u32 = 4096;

#[test]
#[ignore = "needs root: network namespaces"]
fn a_published_port_answers_on_every_host_from_the_tasks_of_all() {
    let mut net = Net::new("msh");
    let hub = format!("/var/run/netns/{}", net.hub_addr("10.77.0.254"));
    let hosts = [
        format!("/var/run/netns/{}", net.host(1, "10.77.0.1")),
        format!("/var/run/netns/{}", net.host(2, "10.77.0.2")),
    ];
    // Host i: underlay 10.77.0.i, its own ingress address 10.0.0.(1+i), its task's
    // 10.0.0.(3+i).
    let under = |i: usize| ip(&format!("10.77.0.{}", i + 1));
    let node = |i: usize| ip(&format!("10.0.0.{}", i + 2));
    let task = |i: usize| ip(&format!("10.0.0.{}", i + 4));
    let mut meshes = Vec::new();
    for i in 0..2 {
        let o = 1 - i;
        let ov = OverlayNet {
            vni: VNI,
            mtu: 1450,
            local: under(i),
            remote: BTreeMap::from([(node(o), under(o)), (task(o), under(o))]),
        };
        let mut r = Rtnl::open_in(&hosts[i]).unwrap();
        reconcile(&mut r, std::slice::from_ref(&ov)).unwrap();
        set_node_address(&mut r, VNI, node(i), 24).unwrap();
        set_node_address(&mut r, VNI, node(i), 24).unwrap(); // again: nothing to do
        let t = net.bare(&format!("t{i}"));
        let ep = Endpoint {
            netns: t.clone(),
            ifname: "eth0".into(),
            ip: task(i),
            prefix: 24,
        };
        attach(&mut r, &ov, &ep).unwrap();
        name_server(&t, &format!("{}:80", task(i)), ["t0", "t1"][i]);
        netns_exec(&hosts[i], &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let bridge = bridge_name(VNI);
        meshes.push(
            in_netns(&hosts[i], move || Mesh::open(&bridge))
                .unwrap()
                .unwrap(),
        );
    }
    let p = Port {
        proto: Proto::Tcp,
        port: 8080,
    };
    let both = Published::from([(p, vec![(task(0), 80), (task(1), 80)])]);
    for m in &mut meshes {
        assert_eq!(m.sync(&both).unwrap(), 1);
    }
    for h in ["10.77.0.1:8080", "10.77.0.2:8080"] {
        let got: Vec<String> = (0..4).map(|_| hello(&hub, h).unwrap()).collect();
        for pair in got.windows(2) {
            assert_ne!(
                pair[0], pair[1],
                "through {h}, round robin over both hosts: {got:?}"
            );
        }
    }
    let listed = netns_exec(&hosts[0], &["nft", "list", "table", "ip", mesh::TABLE]);
    assert!(listed.contains("tcp . 8080 : goto p-tcp-8080"), "{listed}");
    assert!(listed.contains("masquerade"), "{listed}");

    // The task on host 2 goes: host 1's port sends everything to host 1's task.
    let one = Published::from([(p, vec![(task(0), 80)])]);
    assert_eq!(meshes[1].sync(&one).unwrap(), 1);
    for _ in 0..3 {
        assert_eq!(hello(&hub, "10.77.0.2:8080").unwrap(), "t0");
    }
    // No task: nothing answers (and nothing else on the host is disturbed).
    let none = Published::from([(p, vec![])]);
    meshes[1].sync(&none).unwrap();
    assert!(hello(&hub, "10.77.0.2:8080").is_err());
    // Unpublished: the port's chain and map go.
    meshes[1].sync(&Published::new()).unwrap();
    let listed = netns_exec(&hosts[1], &["nft", "list", "table", "ip", mesh::TABLE]);
    assert!(!listed.contains("8080"), "{listed}");
    meshes[1].clear().unwrap();
    assert!(!netns_exec(&hosts[1], &["nft", "list", "ruleset"]).contains(mesh::TABLE));
}

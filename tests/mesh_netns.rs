//! The routing mesh through the real kernel: two hosts joined by the ingress overlay
//! network, one task on each; a client outside the overlay connects to the published
//! port of either host and is answered by the tasks of both, in turn. A port with no
//! task takes nothing; removing the port leaves nothing behind.
//!
//! Needs root: marked ignored, so the runner reports it skipped unless run as root.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // test code

mod support;

use support::netio::{hello, name_server, netns_exec, MeshPair, MESH_VNI};
use support::Net;
use swarmlet::net::mesh::{self, Port, Proto, Published};
use swarmlet::net::overlay::set_node_address;
use swarmlet::net::rtnl::Rtnl;

#[test]
#[ignore = "needs root: network namespaces"]
fn a_published_port_answers_on_every_host_from_the_tasks_of_all() {
    let mut net = Net::new("msh");
    let hub = format!("/var/run/netns/{}", net.hub_addr("10.77.0.254"));
    let MeshPair {
        hosts,
        tasks,
        mut meshes,
    } = MeshPair::new(&mut net, "10.77.0");
    let task = MeshPair::task;
    for (i, t) in tasks.iter().enumerate() {
        name_server(t, &format!("{}:80", task(i)), ["t0", "t1"][i]);
    }
    // Again: nothing to do.
    let mut r = Rtnl::open_in(&hosts[0]).unwrap();
    set_node_address(&mut r, MESH_VNI, MeshPair::node(0), 24).unwrap();
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
    // Replaced by the task on host 2 (the same count: only the map's slot is swapped).
    let other = Published::from([(p, vec![(task(1), 80)])]);
    assert_eq!(meshes[1].sync(&other).unwrap(), 1);
    for _ in 0..3 {
        assert_eq!(hello(&hub, "10.77.0.2:8080").unwrap(), "t1");
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

//! Networks in the cluster state: made and removed by users, addresses following
//! services and tasks through the same commands that change them.

use std::net::Ipv4Addr;

use super::*;
use crate::services::network::{NetworkError, NetworkSpec};
use crate::services::spec::{parse_publish, ServiceSpec};
use crate::services::store::{Task, TaskOp, TaskReport};
use crate::services::task::TaskState;
use crate::services::ServiceId;

fn state() -> ClusterState {
    let mut s = ClusterState::new(
        [1; 16],
        Tokens {
            worker: [2; 16],
            manager: [3; 16],
        },
        ClusterSpec::default(),
    );
    let key = PeerKey([1; 32]);
    let rec = NodeRecord {
        id: node_id(&key),
        key,
        addr: SocketAddr::from(([192, 168, 1, 1], 2377)),
        hostname: "pi-1".into(),
        role: NodeRole::Manager,
        availability: Availability::Active,
        labels: BTreeMap::new(),
        status: NodeStatus::Ready,
    };
    s.apply(&Command::AddNode(rec)).unwrap();
    s
}

fn net_cmd(id: u64, name: &str, subnet: Option<&str>) -> Command {
    Command::Network(Box::new(NetworkCommand::Create {
        id: NetworkId(id),
        spec: NetworkSpec {
            name: name.into(),
            subnet: subnet.map(|s| crate::services::ipam::Ipv4Net::parse(s).unwrap()),
            ..NetworkSpec::default()
        },
        at_ms: 1,
        key: None,
    }))
}

fn svc(name: &str, nets: &[u64], ports: &[&str]) -> ServiceSpec {
    let mut s = ServiceSpec::new(name, "img:1");
    s.task.networks = nets.iter().map(|n| NetworkId(*n).to_string()).collect();
    s.endpoint.ports = ports.iter().map(|p| parse_publish(p).unwrap()).collect();
    s
}

fn create(s: &mut ClusterState, id: u64, spec: ServiceSpec) -> Result<(), ApplyError> {
    s.apply(&Command::Service(Box::new(ServiceCommand::Create {
        id: ServiceId(id),
        spec,
        at_ms: 1,
    })))
}

fn make_task(s: &mut ClusterState, service: u64) -> crate::services::store::TaskId {
    let id = s.services.next_task_id(0);
    let t = Task {
        id,
        service: ServiceId(service),
        slot: 1,
        node: None,
        version: 1,
        image: "img:1".into(),
        desired: TaskState::Running,
        state: TaskState::New,
        message: String::new(),
        error: String::new(),
        created_ms: 0,
        state_ms: 0,
        running_ms: None,
        seq: 0,
    };
    let ops = vec![TaskOp::Create(t)];
    s.apply(&Command::Service(Box::new(ServiceCommand::Tasks {
        at_ms: 2,
        ops,
    })))
    .unwrap();
    id
}

#[test]
fn init_makes_ingress_and_gives_each_node_an_address_on_it() {
    let s = state();
    let ing = s.networks.ingress().unwrap();
    assert_eq!(ing.spec.name, "ingress");
    assert_eq!(
        (ing.space.subnet.to_string(), ing.vni),
        ("10.0.0.0/24".into(), 4096)
    );
    assert_eq!(ing.id, ingress_id(&[1; 16]));
    let me = node_id(&PeerKey([1; 32]));
    assert_eq!(s.networks.nodes.get(&me), Some(&Ipv4Addr::new(10, 0, 0, 2)));
    let mut s2 = s.clone();
    s2.apply(&Command::RemoveNode(me)).unwrap_err(); // the last manager stays
                                                     // Pools from init: ingress takes the first subnet of the user's pool.
    let p = Pools::new(
        vec![crate::services::ipam::Ipv4Net::parse("172.30.0.0/16").unwrap()],
        26,
    )
    .unwrap();
    let s3 = ClusterState::new([1; 16], s.tokens.clone(), ClusterSpec::default()).with_pools(p);
    assert_eq!(
        s3.networks.ingress().unwrap().space.subnet.to_string(),
        "172.30.0.0/26"
    );
}

#[test]
fn networks_are_made_checked_and_removed() {
    let mut s = state();
    s.apply(&net_cmd(7, "front", None)).unwrap();
    let front = &s.networks.nets[&NetworkId(7)];
    assert_eq!(
        (front.space.subnet.to_string(), front.vni),
        ("10.0.1.0/24".into(), 4097)
    );
    let before = s.clone();
    let e = s.apply(&net_cmd(8, "front", None)).unwrap_err();
    assert_eq!(e.to_string(), "network with name front already exists");
    let e = s
        .apply(&net_cmd(8, "back", Some("10.0.0.0/25")))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "subnet 10.0.0.0/25 overlaps network ingress's subnet 10.0.0.0/24"
    );
    let mut ingress_spec = NetworkSpec {
        name: "ingress2".into(),
        ingress: true,
        ..NetworkSpec::default()
    };
    let cmd = |spec: NetworkSpec| {
        Command::Network(Box::new(NetworkCommand::Create {
            id: NetworkId(9),
            spec,
            at_ms: 1,
            key: None,
        }))
    };
    assert!(matches!(
        s.apply(&cmd(ingress_spec.clone())),
        Err(ApplyError::Network(NetworkError::Ingress))
    ));
    ingress_spec.ingress = false;
    ingress_spec.options.insert("foo".into(), "1".into());
    assert!(s
        .apply(&cmd(ingress_spec))
        .unwrap_err()
        .to_string()
        .contains("\"foo\""));
    assert_eq!(s, before, "refused commands change nothing");
    let ing = s.networks.ingress().unwrap().id;
    let rm = |id| Command::Network(Box::new(NetworkCommand::Remove(id)));
    assert!(matches!(
        s.apply(&rm(ing)),
        Err(ApplyError::Network(NetworkError::Ingress))
    ));
    s.apply(&rm(NetworkId(7))).unwrap();
    assert!(s.networks.by_name("front").is_none());
    assert!(s
        .apply(&rm(NetworkId(7)))
        .unwrap_err()
        .to_string()
        .contains("not found"));
    // The next network takes the lowest free subnet and VNI again.
    s.apply(&net_cmd(10, "again", None)).unwrap();
    let again = &s.networks.nets[&NetworkId(10)];
    assert_eq!(
        (again.space.subnet.to_string(), again.vni),
        ("10.0.1.0/24".into(), 4097)
    );
}

#[test]
fn services_get_vips_and_ports_and_give_them_back() {
    let mut s = state();
    s.apply(&net_cmd(7, "front", None)).unwrap();
    create(&mut s, 1, svc("web", &[7], &["8080:80", "9000"])).unwrap();
    let vips = &s.networks.vips[&ServiceId(1)];
    let ing = s.networks.ingress().unwrap().id;
    assert_eq!(vips[&NetworkId(7)], Ipv4Addr::new(10, 0, 1, 2));
    assert_eq!(vips[&ing], Ipv4Addr::new(10, 0, 0, 3));
    assert_eq!(
        s.networks.published[&ServiceId(1)],
        vec![8080, 30000],
        "the second port picked"
    );

    // Another service on the same port: refused, naming the holder; nothing changes.
    let before = s.clone();
    let e = create(&mut s, 2, svc("api", &[], &["8080:81"])).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "port '8080' is already in use by service 'web ({})'",
            ServiceId(1)
        )
    );
    assert_eq!(s, before);
    // Unknown network, the ingress network named by hand.
    let e = create(&mut s, 2, svc("api", &[99], &[])).unwrap_err();
    assert!(e.to_string().contains("not found"), "{e}");
    let mut named_ingress = svc("api", &[], &[]);
    named_ingress.task.networks = vec![ing.to_string()];
    assert!(create(&mut s, 2, named_ingress)
        .unwrap_err()
        .to_string()
        .contains("ingress"));
    // dnsrr: no VIP.
    let mut rr = svc("rr", &[7], &[]);
    rr.endpoint.mode = crate::services::spec::EndpointMode::Dnsrr;
    create(&mut s, 3, rr).unwrap();
    assert!(!s.networks.vips.contains_key(&ServiceId(3)));

    // The network is in use; the service goes, its VIPs and ports with it.
    let rm_net = Command::Network(Box::new(NetworkCommand::Remove(NetworkId(7))));
    let e = s.apply(&rm_net).unwrap_err().to_string();
    assert_eq!(e, "network front is in use by service rr, service web");
    for id in [1, 3] {
        s.apply(&Command::Service(Box::new(ServiceCommand::Remove(
            ServiceId(id),
        ))))
        .unwrap();
    }
    assert!(s.networks.vips.is_empty() && s.networks.ports.is_empty());
    assert_eq!(s.networks.nets[&NetworkId(7)].space.used.len(), 0);
    s.apply(&rm_net).unwrap();
}

#[test]
fn tasks_get_addresses_when_made_and_give_them_back_when_they_end() {
    let mut s = state();
    s.apply(&net_cmd(7, "front", Some("10.9.0.0/29"))).unwrap();
    create(&mut s, 1, svc("web", &[7], &["80:80"])).unwrap();
    let ing = s.networks.ingress().unwrap().id;
    let t = make_task(&mut s, 1);
    let a = s.networks.tasks[&t].clone();
    assert_eq!(
        a[&NetworkId(7)],
        Ipv4Addr::new(10, 9, 0, 3),
        ".1 gateway, .2 the VIP"
    );
    assert!(
        a.contains_key(&ing),
        "a publishing service's task is on ingress"
    );
    // The network fills: a task made then goes without an address on it.
    let more: Vec<_> = (0..4).map(|_| make_task(&mut s, 1)).collect();
    assert!(s.networks.tasks[&more[2]].contains_key(&NetworkId(7)));
    assert!(
        !s.networks.tasks[&more[3]].contains_key(&NetworkId(7)),
        "10.9.0.0/29 has 5 addresses"
    );
    // A task that ends gives its addresses back.
    let node = node_id(&PeerKey([1; 32]));
    let assign = vec![TaskOp::Assign { task: t, node }];
    s.apply(&Command::Service(Box::new(ServiceCommand::Tasks {
        at_ms: 3,
        ops: assign,
    })))
    .unwrap();
    let report = ServiceCommand::Report {
        node,
        at_ms: 4,
        reports: vec![TaskReport {
            task: t,
            state: TaskState::Failed,
            message: "x".into(),
            error: "x".into(),
        }],
    };
    s.apply(&Command::Service(Box::new(report))).unwrap();
    assert!(!s.networks.tasks.contains_key(&t));
    assert!(!s.networks.nets[&NetworkId(7)]
        .space
        .used
        .contains_key(&Ipv4Addr::new(10, 9, 0, 3)));
    // A deleted task too.
    let del = vec![TaskOp::Delete(more[0])];
    s.apply(&Command::Service(Box::new(ServiceCommand::Tasks {
        at_ms: 5,
        ops: del,
    })))
    .unwrap();
    assert!(!s.networks.tasks.contains_key(&more[0]));
    // And the state with all this encodes and decodes whole.
    assert_eq!(ClusterState::decode(&s.encode()).unwrap(), s);
}

#[test]
fn each_node_sees_remote_endpoints_serving_tasks_and_the_mesh() {
    use crate::services::network::NodeAt;
    let mut s = state();
    let n1 = node_id(&PeerKey([1; 32]));
    let key2 = PeerKey([2; 32]);
    let n2 = node_id(&key2);
    let rec2 = NodeRecord {
        id: n2,
        key: key2,
        addr: SocketAddr::from(([192, 168, 1, 2], 2377)),
        hostname: "pi-2".into(),
        role: NodeRole::Worker,
        availability: Availability::Active,
        labels: BTreeMap::new(),
        status: NodeStatus::Ready,
    };
    s.apply(&Command::AddNode(rec2)).unwrap();
    s.apply(&net_cmd(7, "front", None)).unwrap();
    let at = |ip: [u8; 4], up| NodeAt {
        addr: std::net::IpAddr::from(ip),
        up,
    };
    // No port published: no node needs ingress (nor a tunnel for it).
    let nodes = BTreeMap::from([(n1, at([192, 168, 1, 1], true))]);
    let views = s.networks.node_views(&s.services, &nodes);
    assert!(views[&n1].networks.is_empty(), "{views:?}");
    assert_eq!(views[&n1].ingress_addr, None);
    assert_eq!(views[&n1].addr, Some(nodes[&n1].addr));
    create(&mut s, 1, svc("web", &[7], &["8080:80"])).unwrap();
    let (t1, t2, t3) = (
        make_task(&mut s, 1),
        make_task(&mut s, 1),
        make_task(&mut s, 1),
    );
    let ops = vec![
        TaskOp::Assign { task: t1, node: n1 },
        TaskOp::Assign { task: t2, node: n2 },
        TaskOp::Assign { task: t3, node: n2 },
    ];
    s.apply(&Command::Service(Box::new(ServiceCommand::Tasks {
        at_ms: 3,
        ops,
    })))
    .unwrap();
    let report = |node, task, state| {
        Command::Service(Box::new(ServiceCommand::Report {
            node,
            at_ms: 4,
            reports: vec![TaskReport {
                task,
                state,
                message: String::new(),
                error: String::new(),
            }],
        }))
    };
    s.apply(&report(n1, t1, TaskState::Running)).unwrap();
    s.apply(&report(n2, t2, TaskState::Running)).unwrap();
    s.apply(&report(n2, t3, TaskState::Starting)).unwrap();
    let nodes = BTreeMap::from([
        (n1, at([192, 168, 1, 1], true)),
        (n2, at([192, 168, 1, 2], true)),
    ]);
    let views = s.networks.node_views(&s.services, &nodes);
    let v1 = &views[&n1];
    let front = v1.networks.iter().find(|n| n.name == "front").unwrap();
    let addr = |t, net: u64| s.networks.tasks[&t][&NetworkId(net)];
    // Node 1 reaches both of node 2's tasks (the starting one too: it is being wired).
    let n2_addr: std::net::IpAddr = [192, 168, 1, 2].into();
    let mut want = vec![(addr(t2, 7), n2_addr), (addr(t3, 7), n2_addr)];
    want.sort();
    assert_eq!(front.remote, want);
    // Only running tasks serve; the VIP is there.
    let web = &front.services[0];
    assert_eq!(web.vip, Some(s.networks.vips[&ServiceId(1)][&NetworkId(7)]));
    let mut serving: Vec<_> = web.tasks.iter().map(|(_, ip)| *ip).collect();
    serving.sort();
    let mut want = vec![addr(t1, 7), addr(t2, 7)];
    want.sort();
    assert_eq!(serving, want);
    assert!(web.tasks.iter().all(|(n, _)| n.starts_with("web.1.")));
    // Both nodes hold ingress; the mesh sends 8080 to the running tasks' ingress addresses.
    let ing = s.networks.ingress().unwrap().id;
    assert!(views[&n2].networks.iter().any(|n| n.id == ing));
    assert_eq!(v1.published.len(), 1);
    let mp = &v1.published[0];
    let backends = &mp.backends;
    assert_eq!(
        (mp.protocol, mp.published),
        (crate::services::spec::Protocol::Tcp, 8080)
    );
    let mut want = vec![(addr(t1, ing.0), 80), (addr(t2, ing.0), 80)];
    want.sort();
    assert_eq!(*backends, want);
    assert_eq!(v1.ingress_addr, s.networks.nodes.get(&n1).copied());
    // Node 2 goes down: its task leaves every balancer, its endpoints stay programmed.
    let nodes = BTreeMap::from([
        (n1, at([192, 168, 1, 1], true)),
        (n2, at([192, 168, 1, 2], false)),
    ]);
    let views = s.networks.node_views(&s.services, &nodes);
    let front = views[&n1]
        .networks
        .iter()
        .find(|n| n.name == "front")
        .unwrap();
    assert_eq!(front.services[0].tasks.len(), 1);
    assert_eq!(front.remote.len(), 2);
    assert_eq!(views[&n1].published[0].backends.len(), 1);

    // Host mode: a running task's port on its own node only, and never in the mesh;
    // its port is the cluster's like any other.
    create(
        &mut s,
        2,
        svc("direct", &[], &["mode=host,published=9000,target=90"]),
    )
    .unwrap();
    let e = create(&mut s, 3, svc("again", &[], &["9000:91"])).unwrap_err();
    assert!(
        e.to_string().contains("port '9000' is already in use"),
        "{e}"
    );
    let (d1, d2) = (make_task(&mut s, 2), make_task(&mut s, 2));
    s.apply(&Command::Service(Box::new(ServiceCommand::Tasks {
        at_ms: 5,
        ops: vec![
            TaskOp::Assign { task: d1, node: n1 },
            TaskOp::Assign { task: d2, node: n2 },
        ],
    })))
    .unwrap();
    s.apply(&report(n1, d1, TaskState::Running)).unwrap();
    s.apply(&report(n2, d2, TaskState::Starting)).unwrap();
    let nodes = BTreeMap::from([
        (n1, at([192, 168, 1, 1], true)),
        (n2, at([192, 168, 1, 2], true)),
    ]);
    let views = s.networks.node_views(&s.services, &nodes);
    let h = &views[&n1].host_published;
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!((h[0].published, h[0].target, h[0].task), (9000, 90, d1));
    assert!(views[&n2].host_published.is_empty(), "not running yet");
    assert!(views[&n1].published.iter().all(|p| p.published != 9000));
}

#[test]
fn containers_attach_to_attachable_networks_and_hold_them() {
    use crate::services::network::NodeAt;
    let mut s = state();
    let n1 = node_id(&PeerKey([1; 32]));
    let attachable = |id: u64, name: &str, attachable: bool| {
        Command::Network(Box::new(NetworkCommand::Create {
            id: NetworkId(id),
            spec: NetworkSpec {
                name: name.into(),
                attachable,
                subnet: Some(
                    crate::services::ipam::Ipv4Net::parse(&format!("10.{id}.0.0/29")).unwrap(),
                ),
                ..NetworkSpec::default()
            },
            at_ms: 1,
            key: None,
        }))
    };
    s.apply(&attachable(7, "shared", true)).unwrap();
    s.apply(&attachable(8, "closed", false)).unwrap();
    let cid = |i: u8| format!("{i:02x}").repeat(32);
    let attach = |node, i: u8, net: u64| {
        Command::Network(Box::new(NetworkCommand::Attach {
            node,
            container: cid(i),
            name: format!("c{i}"),
            network: NetworkId(net),
        }))
    };
    s.apply(&attach(n1, 1, 7)).unwrap();
    let a = s.networks.attachments[&(n1, cid(1))].clone();
    assert_eq!(a.network, NetworkId(7));
    // Again: nothing new (no second address).
    s.apply(&attach(n1, 1, 7)).unwrap();
    assert_eq!(s.networks.attachments.len(), 1);
    assert_eq!(s.networks.nets[&NetworkId(7)].space.used.len(), 1);
    // Refused: a network made without --attachable, ingress, an unknown network or
    // node, a malformed id.
    for (cmd, want) in [
        (attach(n1, 2, 8), "not attachable"),
        (
            attach(n1, 2, s.networks.ingress().unwrap().id.0),
            "not attachable",
        ),
        (attach(n1, 2, 99), "not found"),
        (attach(NodeId(0xdead), 2, 7), "not in the cluster"),
    ] {
        let e = s.apply(&cmd).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    }
    let bad = Command::Network(Box::new(NetworkCommand::Attach {
        node: n1,
        container: "../x".into(),
        name: "c".into(),
        network: NetworkId(7),
    }));
    assert!(s.apply(&bad).unwrap_err().to_string().contains("64 hex"));
    // Its node is told of it; the network is the node's, with the container an endpoint
    // the other nodes reach.
    let nodes = BTreeMap::from([(
        n1,
        NodeAt {
            addr: [192, 168, 1, 1].into(),
            up: true,
        },
    )]);
    let views = s.networks.node_views(&s.services, &nodes);
    assert_eq!(views[&n1].attachments.len(), 1);
    assert_eq!(views[&n1].attachments[0].addr, a.addr);
    assert!(views[&n1].networks.iter().any(|n| n.name == "shared"));
    // The network cannot go while the container is on it, and says who holds it.
    let rm = Command::Network(Box::new(NetworkCommand::Remove(NetworkId(7))));
    let e = s.apply(&rm).unwrap_err().to_string();
    assert!(e.contains("container c1 on node"), "{e}");
    // A /29 holds five: the pool runs out with a clear error, and nothing half-made.
    for i in 2..=5 {
        s.apply(&attach(n1, i, 7)).unwrap();
    }
    let e = s.apply(&attach(n1, 6, 7)).unwrap_err().to_string();
    assert!(e.contains("shared"), "{e}");
    assert_eq!(s.networks.attachments.len(), 5);
    // Detached (twice: the second is nothing), then the node goes with the rest.
    let detach = |i: u8| {
        Command::Network(Box::new(NetworkCommand::Detach {
            node: n1,
            container: cid(i),
        }))
    };
    s.apply(&detach(1)).unwrap();
    s.apply(&detach(1)).unwrap();
    assert!(!s.networks.nets[&NetworkId(7)]
        .space
        .used
        .contains_key(&a.addr));
    s.networks.node_removed(n1);
    assert!(s.networks.attachments.is_empty());
    assert!(s.networks.nets[&NetworkId(7)].space.used.is_empty());
    s.apply(&rm).unwrap();
}

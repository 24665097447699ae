//! The encrypted overlay's data path through the real kernel: two hosts (namespaces on a
//! bridge with no uplink), on each a network bridge with a TAP device and a task
//! namespace, the data path sealing frames between them. A task reaches the other host's
//! task; captured on the hosts' bridge, only sealed UDP to the overlay port is seen and
//! the payload never; with keys that differ, or no network set, nothing gets through and
//! still nothing is sent in the clear.
//!
//! Needs root: network namespaces and TAP devices.

#![allow(clippy::unwrap_used)] // test code

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddrV4;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use support::netio::{hello, name_server};
use support::Net;
use swarmlet::net::overlay::{attach_to, Endpoint};
use swarmlet::net::rtnl::{in_netns, LinkSet, NewLink, Rtnl};
use swarmlet::net::seal::{NetKey, OVERHEAD, PORT};
use swarmlet::net::sealed::{Datapath, SealedNet};
use swarmlet::net::tap::Tap;

const VNI: u32 = 300;
const SECRET: &str = "sealed-payload-4f1c9";

/// Captures every frame on the hub's interfaces (the bridge's ports: frames between
/// hosts are forwarded there, never passed up to the bridge device), hex per line,
/// from when it returns until [`captured`].
fn capture(hub: &str) -> (Child, BufReader<ChildStdout>) {
    let script = "import socket,sys\n\
s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW,socket.htons(3))\n\
print('ready'); sys.stdout.flush()\n\
while True: sys.stdout.write(s.recv(65535).hex()+'\\n'); sys.stdout.flush()\n";
    let mut child = Command::new("ip")
        .args(["netns", "exec", hub, "python3", "-c", script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert_eq!(first.trim(), "ready", "the capture started");
    (child, out)
}

fn captured((mut child, mut out): (Child, BufReader<ChildStdout>)) -> Vec<Vec<u8>> {
    // What the kernel queued before the kill is read out first.
    std::thread::sleep(Duration::from_millis(300));
    let _ = child.kill();
    let _ = child.wait();
    let mut text = String::new();
    let _ = out.read_to_string(&mut text);
    text.lines()
        .filter_map(|l| {
            (0..l.len() / 2)
                .map(|i| u8::from_str_radix(&l[2 * i..2 * i + 2], 16).ok())
                .collect()
        })
        .collect()
}

/// Whether an Ethernet frame carries IPv4 UDP (a 20-byte header) to `port`.
fn is_udp_to(f: &[u8], port: [u8; 2]) -> bool {
    f.len() > 38 && f[12..14] == [8, 0] && f[23] == 17 && f[36..38] == port
}

/// A host's network bridge with its TAP device and one task on it.
struct Host {
    path: String,
    task: String,
    tap: Arc<Tap>,
}

fn host(net: &mut Net, i: usize, task_ip: &str) -> Host {
    let name = net.host(i, &format!("10.77.0.{i}"));
    let path = format!("/var/run/netns/{name}");
    let mut r = Rtnl::open_in(&path).unwrap();
    let mtu = 1500 - u32::try_from(OVERHEAD).unwrap();
    r.add_link(&NewLink::Bridge {
        name: "sw-b300".into(),
        mtu,
    })
    .unwrap();
    let bridge = r.link("sw-b300").unwrap().unwrap();
    r.set_link(
        bridge.index,
        &LinkSet {
            up: Some(true),
            ..LinkSet::default()
        },
    )
    .unwrap();
    let tap = Arc::new(in_netns(&path, || Tap::open("sw-t300")).unwrap().unwrap());
    let t = r.link("sw-t300").unwrap().unwrap();
    r.set_link(
        t.index,
        &LinkSet {
            master: Some(bridge.index),
            mtu: Some(mtu),
            up: Some(true),
            ..LinkSet::default()
        },
    )
    .unwrap();
    let task = net.bare(&format!("t{i}"));
    let ep = Endpoint {
        netns: task.clone(),
        ifname: "eth0".into(),
        ip: task_ip.parse().unwrap(),
        prefix: 24,
    };
    attach_to(&mut r, &bridge, VNI, mtu, &ep, None).unwrap();
    Host { path, task, tap }
}

fn sealed(h: &Host, key: u8, other_task: &str, other_node: &str) -> SealedNet {
    SealedNet {
        vni: VNI,
        tap: h.tap.clone(),
        key: NetKey {
            epoch: 1,
            key: [key; 32],
        },
        remote: BTreeMap::from([(other_task.parse().unwrap(), other_node.parse().unwrap())]),
    }
}

#[test]
#[ignore = "needs root: network namespaces and TAP devices"]
fn frames_cross_sealed_and_nothing_crosses_in_the_clear() {
    let mut net = Net::new("sld");
    let (a, b) = (host(&mut net, 1, "10.0.9.2"), host(&mut net, 2, "10.0.9.3"));
    let start = |h: &Host, i: u8, session: u64| {
        let at = SocketAddrV4::new(std::net::Ipv4Addr::new(10, 77, 0, i), PORT);
        in_netns(&h.path, || Datapath::start(at, u64::from(i), session))
            .unwrap()
            .unwrap()
    };
    let (da, db) = (start(&a, 1, 11), start(&b, 2, 22));
    name_server(&b.task, "10.0.9.3:8080", SECRET);

    // No network set: the TAP has no way off the host, nothing is sent.
    let cap = capture(&net.hub());
    assert!(hello(&a.task, "10.0.9.3:8080").is_err());
    let frames = captured(cap);
    assert!(
        frames
            .iter()
            .all(|f| !f.windows(4).any(|w| w == [10, 0, 9, 3])),
        "no frame of the overlay left the host without a key: {} frames",
        frames.len()
    );

    // Keys that differ: sealed frames go, none opens.
    da.set(vec![sealed(&a, 1, "10.0.9.3", "10.77.0.2")]);
    db.set(vec![sealed(&b, 2, "10.0.9.2", "10.77.0.1")]);
    std::thread::sleep(Duration::from_millis(200));
    assert!(hello(&a.task, "10.0.9.3:8080").is_err());
    assert!(
        db.counters
            .refused
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );

    // The same key: the task on host 1 reaches host 2's, and the wire shows only
    // sealed datagrams to the overlay port.
    db.set(vec![sealed(&b, 1, "10.0.9.2", "10.77.0.1")]);
    std::thread::sleep(Duration::from_millis(200));
    let cap = capture(&net.hub());
    for _ in 0..3 {
        assert_eq!(hello(&a.task, "10.0.9.3:8080").unwrap(), SECRET);
    }
    let frames = captured(cap);
    let port = PORT.to_be_bytes();
    let sealed_udp = frames.iter().filter(|f| is_udp_to(f, port)).count();
    assert!(
        sealed_udp >= 6,
        "sealed datagrams seen: {sealed_udp} of {} frames",
        frames.len()
    );
    for f in &frames {
        assert!(
            !f.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "the payload crossed in the clear"
        );
        // No inner frame either: the tasks' addresses appear only sealed.
        assert!(
            !(f.len() > 34 && f[12..14] == [8, 0] && f[26..30] == [10, 0, 9, 2]),
            "a task's packet crossed in the clear"
        );
    }
    drop(da);
    drop(db);
}

/// The id of the running container of service `svc` on node `d`.
fn container_of(d: &support::Daemon, svc: &str) -> Option<String> {
    d.ok(&["ps", "--no-trunc"])
        .lines()
        .find(|l| l.contains(&format!(" {svc}.")) && l.contains("Up"))
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
}

/// `GET url` from inside a container: what it answered, if it did within 5 s.
fn fetch(d: &support::Daemon, c: &str, url: &str) -> Option<String> {
    // (busybox 1.35's wget crashes on -T; timeout bounds it instead)
    let o = d.cli(&[
        "exec", c, "busybox", "timeout", "5", "busybox", "wget", "-q", "-O", "-", url,
    ]);
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// An encrypted network across three daemons: services reach each other by name with
/// tasks on every host, the hosts' bridge carries only sealed datagrams (the payload
/// never), and a node whose encrypted data path cannot start (its port taken) refuses
/// the network's tasks, saying why, while the other nodes carry them.
#[test]
#[ignore = "needs root: network namespaces, TAP devices and containers"]
fn an_encrypted_network_across_three_daemons_is_sealed_and_fails_closed() {
    let three = support::three_with_registry("sln", "10.79.0");
    let (nodes, image, hub) = (&three.nodes, &three.hub.image, &three.hub.hub);
    let m = &nodes[0];
    // Node 3 cannot open the encrypted overlay's port (another program holds it): its
    // task on the network is refused, saying why; the other nodes run theirs.
    let n3 = format!(
        "/var/run/netns/{}-n3",
        three.hub.net.hub().strip_suffix("-hub").unwrap()
    );
    let held = in_netns(&n3, || std::net::UdpSocket::bind(("10.79.0.3", PORT)))
        .unwrap()
        .unwrap();
    m.ok(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--opt",
        "encrypted",
        "secure",
    ]);
    let doc = m.ok(&["network", "inspect", "secure"]);
    assert!(doc.contains("\"encrypted\""), "{doc}");
    m.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "web",
        "--network",
        "secure",
        "--mode",
        "global",
        "--hostname",
        "web-{{.Node.Hostname}}",
        image,
        "sh",
        "-c",
        &format!("mkdir -p /www && echo {SECRET}-$(hostname) > /www/index.html && exec busybox httpd -f -p 80 -h /www"),
    ]);
    support::wait_until(30, "n3's task refused, naming the port", || {
        let ps = m.ok(&["service", "ps", "--no-trunc", "web"]);
        ps.lines()
            .any(|l| l.contains(" n3 ") && l.contains("Rejected") && l.contains("4790"))
    });
    // Freed: n3 carries the network too.
    drop(held);
    let all: std::collections::BTreeSet<String> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| format!("{SECRET}-web-{n}"))
        .collect();
    support::wait_until(60, "web on every node", || {
        (0..3).all(|i| container_of(&nodes[i], "web").is_some())
    });
    let c = container_of(m, "web").unwrap();
    let cap = capture(hub);
    let mut got = std::collections::BTreeSet::new();
    support::wait_until(20, "web by name from n1 reaching every host's task", || {
        if let Some(a) = fetch(m, &c, "http://web/") {
            got.insert(a);
        }
        got == all
    });
    let frames = captured(cap);
    let port = PORT.to_be_bytes();
    let sealed_udp = frames.iter().filter(|f| is_udp_to(f, port)).count();
    assert!(sealed_udp > 0, "sealed datagrams on the wire");
    for f in &frames {
        assert!(
            !f.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "the payload crossed in the clear"
        );
        assert!(
            !is_udp_to(f, 4789u16.to_be_bytes()),
            "a VXLAN datagram carried the encrypted network"
        );
    }
    m.ok(&["service", "rm", "web"]);
    support::wait_until(30, "the network removed once its tasks are gone", || {
        m.run(&["network", "rm", "secure"]).0
    });
}

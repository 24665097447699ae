//! Networking benchmarks, through the real kernel in network namespaces (needs root;
//! without it each figure says it was skipped). Prints `BENCH <name> <value> <unit>`.
//!
//! - the routing mesh against straight to a task: two hosts joined by the ingress
//!   overlay, a task on each. From host 1's own namespace, a request (connect, 64 bytes
//!   each way, close) to the task's address, and the same through host 1's published
//!   port, whose only backend is that task: the difference is what the mesh adds (its
//!   DNAT, masquerade and conntrack). Once to the local task, once to the remote one
//!   (over VXLAN both ways). Median of 2,000 requests each, taken 100 of each in turn,
//!   and the ratio. Then bulk throughput, 256 MiB one way, best of three on each path
//!   in turn, and the ratio. Goal: at most 10% latency added.
//! - the embedded DNS server: a task's A query for a service name, answered from the
//!   tables, round trip from inside the task's namespace. Median of 5,000.
//! - the encrypted overlay: the same two hosts' tasks, bulk throughput and requests
//!   task to task over the sealed data path (TAP, ChaCha20-Poly1305, UDP 4790) against
//!   over VXLAN, in turn, and the ratios.
//! - the VIP balancer: one service's backends changed with 10 and with 1,000 services
//!   in the table. Median of 200 changes each; the goal is flat (about a millisecond,
//!   whatever the number of services).

#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss
)] // bench code

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::netio::{netns_exec, MeshPair, MESH_VNI as VNI};
use support::Net;
use swarmlet::net::dns_server::Dns;
use swarmlet::net::lb::{Balancer, Services};
use swarmlet::net::mesh::{Port, Proto, Published};
use swarmlet::net::names::{NetworkNames, ServiceNames};
use swarmlet::net::overlay::{attach, bridge_name, reconcile, tap_name, Endpoint, OverlayNet};
use swarmlet::net::rtnl::{in_netns, LinkSet, Rtnl};
use swarmlet::net::seal::{self, NetKey};
use swarmlet::net::sealed::{Datapath, SealedNet};
use swarmlet::net::tap::Tap;
const REQUESTS: usize = 2_000;
const BULK: usize = 256 << 20;

fn main() {
    // `cargo bench` passes --bench; nextest listing the target (--list) must not run it.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    if !support::is_root() {
        for name in ["mesh", "sealed", "dns", "lb"] {
            println!("BENCH network_{name} skipped (needs root: network namespaces)");
        }
        return;
    }
    // `cargo bench --bench network -- lb` runs only the benches named.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let benches: [(&str, fn()); 5] = [
        ("mesh", mesh_bench),
        ("sealed", sealed_bench),
        ("dns", dns_bench),
        ("lb", lb_bench),
        ("vip", vip_bench),
    ];
    for (name, bench) in benches {
        if only.is_empty() || only.iter().any(|o| name.contains(o.as_str())) {
            bench();
        }
    }
}

/// A server in a namespace: each connection gets its first 64 bytes echoed, or (when
/// the client says "bulk") everything it sends read and counted.
fn serve(ns: &str, at: SocketAddr) {
    let l: TcpListener = in_netns(ns, move || TcpListener::bind(at))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 << 10];
                let mut first = [0u8; 64];
                if s.read_exact(&mut first).is_err() {
                    return;
                }
                if first.starts_with(b"bulk") {
                    let mut total = 0u64;
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        total += n as u64;
                    }
                    let _ = s.write_all(&total.to_be_bytes());
                } else {
                    let _ = s.write_all(&first);
                }
            });
        }
    });
}

/// Connect, 64 bytes each way, close: the time of each, from inside `ns`.
fn requests(ns: &str, to: SocketAddr, n: usize) -> Vec<Duration> {
    in_netns(ns, move || {
        (0..n)
            .map(|_| {
                let t = Instant::now();
                let mut s = TcpStream::connect(to).unwrap();
                s.set_nodelay(true).unwrap();
                s.write_all(&[7u8; 64]).unwrap();
                let mut back = [0u8; 64];
                s.read_exact(&mut back).unwrap();
                drop(s);
                t.elapsed()
            })
            .collect()
    })
    .unwrap()
}

/// Sends [`BULK`] bytes; MiB/s.
fn bulk(ns: &str, to: SocketAddr) -> f64 {
    in_netns(ns, move || {
        let mut s = TcpStream::connect(to).unwrap();
        let mut head = [0u8; 64];
        head[..4].copy_from_slice(b"bulk");
        s.write_all(&head).unwrap();
        let chunk = vec![1u8; 64 << 10];
        let t = Instant::now();
        let mut sent = 0;
        while sent < BULK {
            s.write_all(&chunk).unwrap();
            sent += chunk.len();
        }
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = [0u8; 8];
        s.read_exact(&mut got).unwrap();
        assert_eq!(u64::from_be_bytes(got) as usize, sent);
        sent as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64()
    })
    .unwrap()
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn mesh_bench() {
    let mut net = Net::new("bnm");
    let MeshPair {
        hosts,
        tasks,
        mut meshes,
    } = MeshPair::new(&mut net, "10.76.0");
    let (under, task) = (|i| MeshPair::under("10.76.0", i), MeshPair::task);
    for (i, t) in tasks.iter().enumerate() {
        serve(t, SocketAddr::from((task(i), 80)));
    }
    let h1 = &hosts[0];
    let port = Port {
        proto: Proto::Tcp,
        port: 8080,
    };
    let published = SocketAddr::from((under(0), 8080));
    for (which, t) in [("local", 0), ("remote", 1)] {
        meshes[0]
            .sync(&Published::from([(port, vec![(task(t), 80)])]))
            .unwrap();
        let direct_at = SocketAddr::from((task(t), 80));
        // Warm both paths (ARP, conntrack, caches) before measuring; then take them in
        // turn, a batch of each at a time, so the machine's noise falls on both alike.
        requests(h1, direct_at, 50);
        requests(h1, published, 50);
        let (mut direct, mut mesh) = (Vec::new(), Vec::new());
        for _ in 0..REQUESTS / 100 {
            direct.extend(requests(h1, direct_at, 100));
            mesh.extend(requests(h1, published, 100));
        }
        let (direct, mesh) = (median(&mut direct), median(&mut mesh));
        println!(
            "BENCH mesh_request_{which}_task_median {:.1} us",
            mesh.as_secs_f64() * 1e6
        );
        println!(
            "BENCH direct_request_{which}_task_median {:.1} us",
            direct.as_secs_f64() * 1e6
        );
        println!(
            "BENCH mesh_over_direct_latency_{which} {:.3} ratio",
            mesh.as_secs_f64() / direct.as_secs_f64()
        );
        let (mut d, mut m) = (0f64, 0f64);
        for _ in 0..3 {
            d = d.max(bulk(h1, direct_at));
            m = m.max(bulk(h1, published));
        }
        println!("BENCH mesh_throughput_{which}_task {m:.0} MiB/s");
        println!("BENCH direct_throughput_{which}_task {d:.0} MiB/s");
        println!(
            "BENCH mesh_over_direct_throughput_{which} {:.3} ratio",
            m / d
        );
    }
    drop(meshes);
    drop(net);
}

/// Two hosts whose tasks (10.0.8.2 and .3) share an encrypted overlay: on each host the
/// network's bridge (no VXLAN), a TAP on it and a data path sealing frames to the other.
fn sealed_pair(net: &mut Net, subnet: &str) -> (Vec<String>, Vec<Datapath>) {
    const SEALED_VNI: u32 = 300;
    let mtu = 1500 - seal::OVERHEAD as u32;
    let task = |i: usize| Ipv4Addr::new(10, 0, 8, 2 + i as u8);
    let under = |i: usize| MeshPair::under(subnet, i);
    let (mut tasks, mut paths) = (Vec::new(), Vec::new());
    for i in 0..2 {
        let host = format!("/var/run/netns/{}", net.host(i + 1, &under(i).to_string()));
        let ov = OverlayNet {
            sealed: true,
            vni: SEALED_VNI,
            mtu,
            local: under(i),
            remote: Default::default(),
        };
        let mut r = Rtnl::open_in(&host).unwrap();
        reconcile(&mut r, std::slice::from_ref(&ov)).unwrap();
        let tap = Arc::new(
            in_netns(&host, || Tap::open(&tap_name(SEALED_VNI)))
                .unwrap()
                .unwrap(),
        );
        let bridge = r.link(&bridge_name(SEALED_VNI)).unwrap().unwrap();
        let t = r.link(&tap_name(SEALED_VNI)).unwrap().unwrap();
        let set = LinkSet {
            master: Some(bridge.index),
            mtu: Some(mtu),
            up: Some(true),
            ..LinkSet::default()
        };
        r.set_link(t.index, &set).unwrap();
        let ns = net.bare(&format!("s{i}"));
        let ep = Endpoint {
            netns: ns.clone(),
            ifname: "eth0".into(),
            ip: task(i),
            prefix: 24,
        };
        attach(&mut r, &ov, &ep).unwrap();
        let at = SocketAddrV4::new(under(i), seal::PORT);
        let d = in_netns(&host, move || Datapath::start(at, i as u64 + 1, 7))
            .unwrap()
            .unwrap();
        d.set(vec![SealedNet {
            vni: SEALED_VNI,
            tap,
            key: NetKey {
                epoch: 1,
                key: [9; 32],
            },
            remote: BTreeMap::from([(task(1 - i), under(1 - i))]),
        }]);
        tasks.push(ns);
        paths.push(d);
    }
    (tasks, paths)
}

fn sealed_bench() {
    let mut net = Net::new("bns");
    let plain = MeshPair::new(&mut net, "10.74.0");
    let mut net2 = Net::new("bnt");
    let (sealed, paths) = sealed_pair(&mut net2, "10.73.0");
    serve(&plain.tasks[1], SocketAddr::from((MeshPair::task(1), 80)));
    let sealed_at = SocketAddr::from((Ipv4Addr::new(10, 0, 8, 3), 80));
    serve(&sealed[1], sealed_at);
    let plain_at = SocketAddr::from((MeshPair::task(1), 80));
    requests(&plain.tasks[0], plain_at, 50);
    requests(&sealed[0], sealed_at, 50);
    let (mut p, mut s) = (Vec::new(), Vec::new());
    for _ in 0..REQUESTS / 100 {
        p.extend(requests(&plain.tasks[0], plain_at, 100));
        s.extend(requests(&sealed[0], sealed_at, 100));
    }
    let (p, s) = (median(&mut p), median(&mut s));
    println!(
        "BENCH sealed_request_median {:.1} us",
        s.as_secs_f64() * 1e6
    );
    println!("BENCH vxlan_request_median {:.1} us", p.as_secs_f64() * 1e6);
    println!(
        "BENCH sealed_over_vxlan_latency {:.3} ratio",
        s.as_secs_f64() / p.as_secs_f64()
    );
    let (mut pt, mut st) = (0f64, 0f64);
    for _ in 0..3 {
        pt = pt.max(bulk(&plain.tasks[0], plain_at));
        st = st.max(bulk(&sealed[0], sealed_at));
    }
    println!("BENCH sealed_throughput {st:.0} MiB/s");
    println!("BENCH vxlan_throughput {pt:.0} MiB/s");
    println!("BENCH sealed_over_vxlan_throughput {:.3} ratio", st / pt);
    let refused: u64 = paths
        .iter()
        .map(|d| {
            d.counters
                .refused
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    println!("BENCH sealed_datagrams_refused {refused} count");
    drop(paths);
    drop(plain);
    drop(net2);
    drop(net);
}

/// A type-A query for `name`.
fn query(name: &str, id: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for l in name.split('.') {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

fn dns_bench() {
    let mut net = Net::new("bnd");
    let c = net.bare("c");
    netns_exec(&c, &["ip", "link", "set", "lo", "up"]);
    let mut dns = Dns::new(vec![]);
    let mut names = NetworkNames::new();
    for s in 0..100u8 {
        names.insert(
            format!("svc{s}"),
            ServiceNames {
                vip: Some(Ipv4Addr::new(10, 0, 1, s)),
                tasks: (0..5u8)
                    .map(|t| (format!("svc{s}.{t}.x"), Ipv4Addr::new(10, 0, 2, t)))
                    .collect(),
            },
        );
    }
    dns.set_names(VNI, Some(names));
    dns.serve("c", &c, vec![VNI]).unwrap();
    let sock = in_netns(&c, || UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
    sock.connect("127.0.0.11:53").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut times = Vec::new();
    let mut buf = [0u8; 512];
    for i in 0..5_050u16 {
        let q = query("svc42", i);
        let t = Instant::now();
        sock.send(&q).unwrap();
        let n = sock.recv(&mut buf).unwrap();
        let took = t.elapsed();
        assert!(
            n > q.len() && buf[..2] == i.to_be_bytes(),
            "an answer to {i}"
        );
        if i >= 50 {
            times.push(took);
        }
    }
    println!(
        "BENCH dns_answer_median {:.1} us",
        median(&mut times).as_secs_f64() * 1e6
    );
    dns.stop("c");
    drop(net);
}

fn lb_bench() {
    let mut net = Net::new("bnl");
    let c = net.bare("c");
    let mut lb = Balancer::open_in(&c).unwrap();
    for n in [10u32, 1_000] {
        let vip = |i: u32| Ipv4Addr::from(0x0a80_0000 + i);
        let backend = |i: u32, k: u32| Ipv4Addr::from(0x0a40_0000 + i * 8 + k);
        let mut want: Services = (0..n)
            .map(|i| (vip(i), (0..3).map(|k| backend(i, k)).collect()))
            .collect();
        let t = Instant::now();
        lb.sync(&want).unwrap();
        let built = t.elapsed();
        let (mut swaps, mut scales) = (Vec::new(), Vec::new());
        for round in 0..200u32 {
            let i = round % n;
            let b = want.get_mut(&vip(i)).unwrap();
            // One backend swapped for another: what a task replaced does.
            b[round as usize % 3] = backend(i, 3 + round % 4);
            let t = Instant::now();
            assert_eq!(lb.sync(&want).unwrap(), 1);
            swaps.push(t.elapsed());
            // One backend more, then one fewer: a scale, or a task leaving before its
            // replacement runs (the service's rule changes with the count).
            for grow in [true, false] {
                let b = want.get_mut(&vip(i)).unwrap();
                if grow {
                    b.push(backend(i, 7));
                } else {
                    b.pop();
                }
                let t = Instant::now();
                assert_eq!(lb.sync(&want).unwrap(), 1);
                scales.push(t.elapsed());
            }
        }
        println!(
            "BENCH lb_build_{n}_services {:.2} ms",
            built.as_secs_f64() * 1e3
        );
        println!(
            "BENCH lb_update_one_of_{n}_services_median {:.3} ms",
            median(&mut swaps).as_secs_f64() * 1e3
        );
        println!(
            "BENCH lb_rescale_one_of_{n}_services_median {:.3} ms",
            median(&mut scales).as_secs_f64() * 1e3
        );
    }
    lb.clear().unwrap();
    drop(net);
}

/// The pinned namespace of the one task on a node (`<data>/netns/<task>`), if any.
fn task_netns(d: &support::Daemon) -> Option<String> {
    let dir = d.dir.join("data/netns");
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_none())
        .map(|p| p.display().to_string())
}

/// What answers `GET /` at `to` from the calling thread's namespace, if anything does
/// within 200 ms.
fn get(to: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.rsplit("\r\n\r\n").next().map(|b| b.trim().to_string())
}

/// A new task's time to be reachable through its service's VIP, as a user meets it: from
/// `service scale` on the CLI until a connection to the VIP from another task of the
/// service (on another node's namespace) is answered by the new task. Three daemons in
/// namespaces, real containers; each scale adds one task.
fn vip_bench() {
    let three = support::three_with_registry("bnv", "10.79.0");
    let (nodes, image) = (&three.nodes, &three.hub.image);
    let m = &nodes[0];
    m.ok(&["network", "create", "-d", "overlay", "test"]);
    m.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--network",
        "test",
        "--hostname",
        "web-{{.Task.Slot}}",
        image,
        "sh",
        "-c",
        "mkdir -p /www && hostname > /www/index.html && exec busybox httpd -f -p 80 -h /www",
    ]);
    let inspect: serde_json::Value =
        serde_json::from_str(&m.ok(&["service", "inspect", "web"])).unwrap();
    let vip = inspect[0]["Endpoint"]["VirtualIPs"][0]["Addr"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse::<Ipv4Addr>().ok())
        .expect("web's VIP");
    let to = SocketAddr::from((vip, 80));
    // The client: web.1's own namespace (the VIP balances there too).
    let t = Instant::now();
    let client = loop {
        if let Some(ns) = nodes.iter().find_map(task_netns) {
            if in_netns(&ns, || get(to)).ok().flatten().as_deref() == Some("web-1") {
                break ns;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "web.1 never answered"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut times = Vec::new();
    for n in 2..=6 {
        let want = format!("web-{n}");
        let t = Instant::now();
        m.ok(&["service", "scale", "-d", &format!("web={n}")]);
        let reached = in_netns(&client, || loop {
            if get(to).as_deref() == Some(want.as_str()) {
                return Some(t.elapsed());
            }
            if t.elapsed() > Duration::from_secs(60) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        })
        .unwrap()
        .unwrap_or_else(|| panic!("{want} never answered through {vip}"));
        times.push(reached);
    }
    println!(
        "BENCH vip_new_task_reachable_median {:.0} ms",
        median(&mut times).as_secs_f64() * 1e3
    );
    println!(
        "BENCH vip_new_task_reachable_max {:.0} ms",
        times.iter().max().unwrap().as_secs_f64() * 1e3
    );
    drop(three);
}

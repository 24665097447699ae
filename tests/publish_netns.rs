//! Published ports on one real daemon in a network namespace, reached from another
//! host and from the node itself (`localhost`), as under Docker:
//!
//! - `run -p HOST:CONTAINER` (and `-p CONTAINER`, which picks a free port) on the local
//!   bridge; `ps` and `inspect` show them; a port already published by a container or
//!   bound by the node's own sockets is refused, naming who holds it, and nothing is
//!   made; a removed container's port is gone.
//! - A service's ports, through the routing mesh and in host mode, on the node's
//!   loopback.
//! - The guard that comes with reaching published ports from loopback
//!   (`route_localnet`): a container that sends to 127.0.0.1 through the bridge does
//!   not reach the node's loopback services.
//!
//! Needs root: network namespaces and containers.

#![allow(clippy::unwrap_used)] // test code

mod support;

use std::net::UdpSocket;
use std::time::Duration;

use swarmlet::net::rtnl::in_netns;

use support::netio::{http_get, name_server, netns_exec};
use support::Daemon;

/// A web server answering its container's hostname.
const HTTPD: &str =
    "mkdir -p /www && hostname > /www/index.html && exec busybox httpd -f -p 80 -h /www";

/// Runs container `name` (its hostname too) serving its name over HTTP on port 80,
/// publishing `ports`.
fn web(d: &Daemon, image: &str, name: &str, ports: &[&str]) {
    let mut args = vec!["run", "-d", "--name", name, "--hostname", name];
    for p in ports {
        args.extend(["-p", p]);
    }
    args.extend([image, "sh", "-c", HTTPD]);
    d.ok(&args);
}

fn inspect(d: &Daemon, c: &str) -> serde_json::Value {
    serde_json::from_str::<serde_json::Value>(&d.ok(&["inspect", c])).unwrap()[0].clone()
}

/// Where the daemon pinned a bridged container's network namespace.
fn netns_of(d: &Daemon, c: &str) -> String {
    d.dir
        .join("data/netns")
        .join(format!("c-{}", inspect(d, c)["Id"].as_str().unwrap()))
        .display()
        .to_string()
}

#[test]
#[ignore = "needs root: network namespaces and containers"]
fn published_ports_answer_from_other_hosts_and_from_the_node_itself() {
    let one = support::one_node("pub", "10.83.0");
    let (d, image) = (&one.d, &one.hub.image);
    let node = format!("/var/run/netns/{}", one.ns);
    let hub = format!("/var/run/netns/{}", one.hub.hub);
    let get = |ns: &str, to: &str| http_get(ns, to).map(|b| b.trim().to_string());
    // As on a kernel without br_netfilter (Docker loads it; this node must not need it):
    // frames between containers on a bridge skip the IP hooks.
    netns_exec(
        &node,
        &["sh", "-c", "! test -e /proc/sys/net/bridge/bridge-nf-call-iptables || echo 0 > /proc/sys/net/bridge/bridge-nf-call-iptables"],
    );

    // run -p: from another host and from the node's loopback.
    web(d, image, "web", &["8090:80"]);
    support::wait_until(10, "web through the node's port from the hub", || {
        get(&hub, "10.83.0.1:8090").is_ok_and(|b| b == "web")
    });
    assert_eq!(get(&node, "127.0.0.1:8090").unwrap(), "web");
    let ps = d.ok(&["ps"]);
    assert!(ps.lines().next().unwrap().contains("PORTS"), "{ps}");
    assert!(ps.contains("0.0.0.0:8090->80/tcp"), "{ps}");
    let doc = inspect(d, "web");
    assert_eq!(
        doc["HostConfig"]["PortBindings"]["80/tcp"][0]["HostPort"], "8090",
        "{doc}"
    );
    assert_eq!(
        doc["NetworkSettings"]["Ports"]["80/tcp"][0]["HostIp"], "0.0.0.0",
        "{doc}"
    );

    // No host port: the daemon picks a free one of the ephemeral range.
    web(d, image, "any", &["80"]);
    let doc = inspect(d, "any");
    let port: u16 = doc["HostConfig"]["PortBindings"]["80/tcp"][0]["HostPort"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(port >= 1024, "{doc}");
    support::wait_until(10, "the picked port from the hub", || {
        get(&hub, &format!("10.83.0.1:{port}")).is_ok_and(|b| b == "any")
    });
    // From one container to another through the node's address (hairpin): the answer
    // comes back the way the request went.
    let any_ns = netns_of(d, "any");
    assert_eq!(get(&any_ns, "10.83.0.1:8090").unwrap(), "web");

    // Taken ports are refused, naming who holds them; nothing is made.
    name_server(&node, "127.0.0.1:9999", "loopback only");
    let before = d.ok(&["ps", "-a", "-q"]);
    for (p, who) in [
        ("8090:80", "container web"),
        ("9999:80", "socket of this node"),
    ] {
        let o = d.cli(&["run", "-d", "-p", p, image, "true"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{p}: {err}");
        assert!(err.contains(who), "{p}: {err}");
    }
    assert_eq!(d.ok(&["ps", "-a", "-q"]), before, "nothing made");

    // The guard: from the container's namespace, a route to 127.0.0.0/8 through the
    // bridge (its own loopback address gone); a datagram to the node's loopback-only
    // socket does not arrive (and does without the guard, so the check can fail).
    let cns = netns_of(d, "web");
    netns_exec(&cns, &["ip", "addr", "del", "127.0.0.1/8", "dev", "lo"]);
    netns_exec(
        &cns,
        &[
            "ip",
            "route",
            "add",
            "127.0.0.0/8",
            "via",
            "172.18.0.1",
            "dev",
            "eth0",
        ],
    );
    let inbox = in_netns(&node, || UdpSocket::bind("127.0.0.1:9998"))
        .unwrap()
        .unwrap();
    inbox
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let send = || {
        in_netns(&cns, || {
            UdpSocket::bind("0.0.0.0:0")?.send_to(b"x", "127.0.0.1:9998")
        })
        .unwrap()
        .unwrap();
    };
    let mut buf = [0u8; 8];
    send();
    assert!(
        inbox.recv_from(&mut buf).is_err(),
        "the node's loopback reached from a container"
    );
    netns_exec(
        &node,
        &["nft", "flush", "chain", "ip", "swarmlet-gw", "guard"],
    );
    send();
    assert!(inbox.recv_from(&mut buf).is_ok(), "without the guard");

    // A removed container's port is gone: the next container takes its address and
    // serves on the same port, unpublished, and is not reached through 8090. A new
    // container may publish 8090 again.
    d.ok(&["rm", "-f", "web"]);
    web(d, image, "plain", &[]);
    assert_eq!(
        inspect(d, "plain")["NetworkSettings"]["IPAddress"],
        "172.18.0.2",
        "web's address again"
    );
    support::wait_until(10, "plain serving", || {
        get(&node, "172.18.0.2:80").is_ok_and(|b| b == "plain")
    });
    assert!(get(&hub, "10.83.0.1:8090").is_err(), "8090 left to nobody");
    web(d, image, "web2", &["8090:80"]);
    support::wait_until(10, "web2 through 8090", || {
        get(&hub, "10.83.0.1:8090").is_ok_and(|b| b == "web2")
    });
    let bound = in_netns(&node, || std::net::TcpListener::bind("0.0.0.0:8090")).unwrap();
    assert!(bound.is_err(), "8090 held by the daemon");
    let ps = d.ok(&["ps", "-a"]);
    d.ok(&["stop", "web2"]);
    let stopped = d.ok(&["ps", "-a"]);
    let row = |t: &str| {
        t.lines()
            .find(|l| l.ends_with(" web2"))
            .unwrap()
            .to_string()
    };
    assert!(row(&ps).contains("0.0.0.0:8090->80/tcp"), "{ps}");
    assert!(
        !row(&stopped).contains("->"),
        "ports while it runs: {stopped}"
    );
    d.ok(&["rm", "-f", "any", "plain", "web2"]);

    // A service's ports on the node's loopback: the routing mesh's and host mode's.
    d.ok(&["init", "--listen-addr", &d.addr()]);
    d.ok(&[
        "service",
        "create",
        "--name",
        "ing",
        "--hostname",
        "ing",
        "-p",
        "8080:80",
        image,
        "sh",
        "-c",
        HTTPD,
    ]);
    d.ok(&[
        "service",
        "create",
        "--name",
        "hst",
        "--hostname",
        "hst",
        "--publish",
        "published=8081,target=80,mode=host",
        image,
        "sh",
        "-c",
        HTTPD,
    ]);
    for (port, name) in [(8080, "ing"), (8081, "hst")] {
        for at in ["10.83.0.1", "127.0.0.1"] {
            assert_eq!(
                get(&node, &format!("{at}:{port}")).unwrap(),
                name,
                "{at}:{port}"
            );
        }
        assert_eq!(get(&hub, &format!("10.83.0.1:{port}")).unwrap(), name);
        // The daemon holds the port, as Docker's proxy does: a process of the node
        // cannot bind it (to be shadowed), nor can a container publish it.
        let bound = in_netns(&node, move || {
            std::net::TcpListener::bind(("0.0.0.0", port))
        })
        .unwrap();
        assert!(bound.is_err(), "{port} held by the daemon");
        let p = format!("{port}:80");
        let o = d.cli(&["run", "-d", "-p", &p, image, "true"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("socket of this node"), "{port}: {err}");
    }
}

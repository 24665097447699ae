//! TCP through network namespaces for the data-plane tests and benches: each call runs
//! on a thread inside the namespace (`net::rtnl::in_netns`), so the caller's own threads
//! stay put. And the two-host routing-mesh setup they share.

#![allow(dead_code)] // each test or bench uses its part

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use swarmlet::net::mesh::Mesh;
use swarmlet::net::overlay::{
    attach, bridge_name, reconcile, set_node_address, Endpoint, OverlayNet,
};
use swarmlet::net::rtnl::{in_netns, Rtnl};

/// The ingress network's VNI in [`MeshPair`].
pub const MESH_VNI: u32 = 4096;

/// Two hosts of `net` joined by the ingress overlay, as the routing mesh needs them:
/// host `i` (0 or 1) at underlay `<subnet>.(i+1)`, its own ingress address
/// 10.0.0.(2+i), a task namespace at 10.0.0.(4+i), forwarding on and a mesh opened.
pub struct MeshPair {
    pub hosts: Vec<String>,
    pub tasks: Vec<String>,
    pub meshes: Vec<Mesh>,
}

impl MeshPair {
    pub fn under(subnet: &str, i: usize) -> Ipv4Addr {
        ip(&format!("{subnet}.{}", i + 1))
    }

    pub fn node(i: usize) -> Ipv4Addr {
        ip(&format!("10.0.0.{}", i + 2))
    }

    pub fn task(i: usize) -> Ipv4Addr {
        ip(&format!("10.0.0.{}", i + 4))
    }

    pub fn new(net: &mut super::Net, subnet: &str) -> MeshPair {
        let hosts: Vec<String> = (0..2)
            .map(|i| {
                let addr = format!("{subnet}.{}", i + 1);
                format!("/var/run/netns/{}", net.host(i + 1, &addr))
            })
            .collect();
        let (mut tasks, mut meshes) = (Vec::new(), Vec::new());
        for (i, host) in hosts.iter().enumerate() {
            let o = 1 - i;
            let ov = OverlayNet {
                sealed: false,
                vni: MESH_VNI,
                mtu: 1450,
                local: Self::under(subnet, i),
                remote: std::collections::BTreeMap::from([
                    (Self::node(o), Self::under(subnet, o)),
                    (Self::task(o), Self::under(subnet, o)),
                ]),
            };
            let mut r = Rtnl::open_in(host).unwrap();
            reconcile(&mut r, std::slice::from_ref(&ov)).unwrap();
            set_node_address(&mut r, MESH_VNI, Self::node(i), 24).unwrap();
            let t = net.bare(&format!("t{i}"));
            let ep = Endpoint {
                netns: t.clone(),
                ifname: "eth0".into(),
                ip: Self::task(i),
                prefix: 24,
            };
            attach(&mut r, &ov, &ep).unwrap();
            netns_exec(host, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
            let bridge = bridge_name(MESH_VNI);
            meshes.push(
                in_netns(host, move || Mesh::open(&bridge))
                    .unwrap()
                    .unwrap(),
            );
            tasks.push(t);
        }
        MeshPair {
            hosts,
            tasks,
            meshes,
        }
    }
}

pub fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// Connects from inside `ns` (2 s at most) and returns all the server says.
pub fn hello(ns: &str, to: &str) -> std::io::Result<String> {
    talk(ns, to, b"")
}

/// Connects from inside `ns`, sends a line and returns what comes back.
pub fn exchange(ns: &str, to: &str) -> std::io::Result<String> {
    talk(ns, to, b"ping\n")
}

fn talk(ns: &str, to: &str, say: &'static [u8]) -> std::io::Result<String> {
    let to: SocketAddr = to.parse().unwrap();
    in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut out = Vec::new();
        if say.is_empty() {
            s.read_to_end(&mut out)?;
        } else {
            s.write_all(say)?;
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf)?;
            out.extend_from_slice(&buf[..n]);
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    })
    .unwrap()
}

/// An HTTP/1.0 GET of `/` from inside `ns` (2 s to connect, 5 to answer): the body
/// of a 200 answer, an error otherwise.
pub fn http_get(ns: &str, to: &str) -> std::io::Result<String> {
    let to: SocketAddr = to.parse().unwrap();
    in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        match out.split_once("\r\n\r\n") {
            Some((head, body)) if head.starts_with("HTTP/1.") && head[8..].starts_with(" 200") => {
                Ok(body.to_string())
            }
            _ => Err(std::io::Error::other(format!("answered {out:?}"))),
        }
    })
    .unwrap()
}

/// A server inside `ns` that writes `name` to each connection and closes it.
pub fn name_server(ns: &str, at: &str, name: &'static str) {
    serve(ns, at, move |mut s| {
        let _ = s.write_all(name.as_bytes());
    });
}

/// A server inside `ns` that echoes the first read of each connection.
pub fn echo_server(ns: &str, at: &str) {
    serve(ns, at, |mut s| {
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        let _ = s.write_all(&buf[..n]);
    });
}

fn serve(ns: &str, at: &str, each: impl Fn(TcpStream) + Send + 'static) {
    let at: SocketAddr = at.parse().unwrap();
    let l: TcpListener = in_netns(ns, move || TcpListener::bind(at))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            each(s);
        }
    });
}

/// A command inside the network namespace `ns` (a name under `/var/run/netns/`, or the
/// path of any pin); its stdout. Panics, with its stderr, if it fails.
pub fn netns_exec(ns: &str, args: &[&str]) -> String {
    let path = if ns.contains('/') {
        ns.to_string()
    } else {
        format!("/var/run/netns/{ns}")
    };
    let o = Command::new("nsenter")
        .arg(format!("--net={path}"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

//! TCP through network namespaces for the data-plane tests: each call runs on a thread
//! inside the namespace (`net::rtnl::in_netns`), so the test's own threads stay put.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use swarmlet::net::rtnl::in_netns;

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

/// A command inside the namespace at `ns` (a `/var/run/netns/` path); its stdout.
pub fn netns_exec(ns: &str, args: &[&str]) -> String {
    let name = ns.trim_start_matches("/var/run/netns/");
    let o = Command::new("ip")
        .args(["netns", "exec", name])
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

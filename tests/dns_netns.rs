//! The embedded DNS server through real sockets: a task's namespace asks 127.0.0.11
//! for service names (answered from the tables, only for its networks), for an unknown
//! service (no such name, at once), and for an outside name (forwarded to an upstream
//! on the host's loopback, which the test plays; a forged reply is ignored and a silent
//! upstream gives SERVFAIL).
//!
//! Needs root: marked ignored, so the runner reports it skipped unless run as root.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // test code

mod support;

use std::net::{Ipv4Addr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use support::Net;
use swarmlet::net::dns_server::Dns;
use swarmlet::net::names::{NetworkNames, ServiceNames};
use swarmlet::net::rtnl::in_netns;

/// A query for `name` (type A, or `qtype`) with id 0x1234.
fn query(name: &str, qtype: u16) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in name.split('.') {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    q
}

/// (rcode, A addresses) of an answer.
fn parse(r: &[u8]) -> (u8, Vec<Ipv4Addr>) {
    assert_eq!(&r[..2], &[0x12, 0x34], "the client's id comes back");
    let rcode = r[3] & 0x0f;
    let an = u16::from_be_bytes([r[6], r[7]]) as usize;
    // Skip the question.
    let mut at = 12;
    while r[at] != 0 {
        at += 1 + r[at] as usize;
    }
    at += 5;
    let mut out = Vec::new();
    for _ in 0..an {
        // A pointer (2), type, class, ttl, rdlength, then the address.
        let rdlen = u16::from_be_bytes([r[at + 10], r[at + 11]]) as usize;
        if rdlen == 4 {
            out.push(Ipv4Addr::new(
                r[at + 12],
                r[at + 13],
                r[at + 14],
                r[at + 15],
            ));
        }
        at += 12 + rdlen;
    }
    (rcode, out)
}

/// Asks the server from inside `ns`.
fn ask(ns: &str, q: Vec<u8>, wait: Duration) -> Option<Vec<u8>> {
    in_netns(ns, move || {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(wait)).unwrap();
        s.send_to(&q, "127.0.0.11:53").unwrap();
        let mut buf = [0u8; 1500];
        let n = s.recv(&mut buf).ok()?;
        Some(buf[..n].to_vec())
    })
    .unwrap()
}

#[test]
#[ignore = "needs root: network namespaces"]
fn a_task_resolves_its_networks_services_and_the_rest_goes_upstream() {
    let mut net = Net::new("dns");
    let c = net.bare("c");
    let name = c.trim_start_matches("/var/run/netns/");
    let up = Command::new("ip")
        .args(["-n", name, "link", "set", "lo", "up"])
        .status()
        .unwrap();
    assert!(up.success());

    // The upstream: on the host's loopback; first a forger answering with the wrong id,
    // then the right answer.
    let upstream = UdpSocket::bind("127.0.0.1:0").unwrap();
    let up_addr = upstream.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, from)) = upstream.recv_from(&mut buf) else {
                return;
            };
            let q = &buf[..n];
            if q[12..].starts_with(b"\x06silent") {
                continue;
            }
            let mut forged = q.to_vec();
            forged[0] ^= 0xff;
            forged[2] |= 0x80;
            let _ = upstream.send_to(&forged, from);
            let mut r = q.to_vec();
            r[2] |= 0x80;
            r[7] = 1; // one answer
            r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 7]);
            let _ = upstream.send_to(&r, from);
        }
    });

    let mut dns = Dns::new(vec![up_addr]);
    let mut web = NetworkNames::new();
    web.insert(
        "test".into(),
        ServiceNames {
            vip: Some(Ipv4Addr::new(10, 0, 1, 2)),
            tasks: vec![
                ("test.1.aaa".into(), Ipv4Addr::new(10, 0, 1, 3)),
                ("test.2.bbb".into(), Ipv4Addr::new(10, 0, 1, 4)),
            ],
        },
    );
    let mut other = NetworkNames::new();
    other.insert(
        "db".into(),
        ServiceNames {
            vip: Some(Ipv4Addr::new(10, 0, 2, 2)),
            tasks: vec![],
        },
    );
    dns.set_names(4097, Some(web));
    dns.set_names(4098, Some(other));
    dns.serve("task1", &c, vec![4097]).unwrap();
    let short = Duration::from_secs(3);

    let (rc, a) = parse(&ask(&c, query("test", 1), short).unwrap());
    assert_eq!((rc, a), (0, vec![Ipv4Addr::new(10, 0, 1, 2)]));
    let (rc, mut a) = parse(&ask(&c, query("TASKS.test", 1), short).unwrap());
    a.sort();
    assert_eq!(
        (rc, a),
        (
            0,
            vec![Ipv4Addr::new(10, 0, 1, 3), Ipv4Addr::new(10, 0, 1, 4)]
        )
    );
    let (rc, a) = parse(&ask(&c, query("test", 28), short).unwrap());
    assert_eq!(
        (rc, a.len()),
        (0, 0),
        "AAAA of a known name: no data, no error"
    );
    // Another network's service, and no service: no such name, at once.
    assert_eq!(parse(&ask(&c, query("db", 1), short).unwrap()).0, 3);
    assert_eq!(parse(&ask(&c, query("nosuch", 1), short).unwrap()).0, 3);

    // The endpoint joins the other network: its services appear.
    dns.serve("task1", &c, vec![4097, 4098]).unwrap();
    assert_eq!(dns.serving(), 1);
    assert_eq!(
        parse(&ask(&c, query("db", 1), short).unwrap()).1,
        vec![Ipv4Addr::new(10, 0, 2, 2)]
    );
    // Records follow the tables at once.
    let mut moved = NetworkNames::new();
    moved.insert(
        "db".into(),
        ServiceNames {
            vip: Some(Ipv4Addr::new(10, 0, 2, 9)),
            tasks: vec![],
        },
    );
    dns.set_names(4098, Some(moved));
    assert_eq!(
        parse(&ask(&c, query("db", 1), short).unwrap()).1,
        vec![Ipv4Addr::new(10, 0, 2, 9)]
    );

    // The outside world: forwarded, the forgery ignored, the client's id restored.
    let (rc, a) = parse(&ask(&c, query("example.org", 1), short).unwrap());
    assert_eq!((rc, a), (0, vec![Ipv4Addr::new(192, 0, 2, 7)]));
    // An upstream that never answers: SERVFAIL after the forward timeout.
    let r = ask(&c, query("silent.example.org", 1), Duration::from_secs(5)).unwrap();
    assert_eq!(parse(&r).0, 2);
    // Garbage gets no answer or an error, and the server keeps serving.
    let _ = ask(&c, vec![0x12, 0x34, 0x01], Duration::from_millis(200));
    assert_eq!(parse(&ask(&c, query("test", 1), short).unwrap()).0, 0);

    dns.stop("task1");
    assert!(ask(&c, query("test", 1), Duration::from_millis(500)).is_none());
}

//! The sockets of a network namespace as the kernel lists them
//! (`/proc/<pid>/net/{tcp,tcp6,udp,udp6}`): which ports something accepts on. Read, not
//! probed: nothing connects and nothing enters the namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::path::Path;

use crate::model::Protocol;

/// Sockets the daemon keeps bound on the node's published ports (all addresses), as
/// Docker's proxy does: nf_tables sends the port's connections on before they reach
/// them, but a process of the node that binds the port later is refused (rather than
/// silently shadowed), and the ports show in the node's socket tables, where `run -p`
/// looks for taken ones. In the namespace of the thread that binds them.
#[derive(Default)]
pub struct PortHolds(BTreeMap<(Protocol, u16), Held>);

enum Held {
    // Never accepted from: held only.
    Tcp(#[allow(dead_code)] TcpListener),
    Udp(#[allow(dead_code)] UdpSocket),
    /// Something else had it: not tried again while the port stays published.
    Taken,
}

impl PortHolds {
    /// Holds each of `want` not held yet and lets the others go. Returns the ports
    /// something else already holds, with why, once each while it stays wanted (the
    /// caller says so; the port is published all the same).
    pub fn sync(
        &mut self,
        want: &BTreeSet<(Protocol, u16)>,
    ) -> Vec<((Protocol, u16), std::io::Error)> {
        self.0.retain(|k, _| want.contains(k));
        let mut failed = Vec::new();
        for &(proto, port) in want {
            if self.0.contains_key(&(proto, port)) {
                continue;
            }
            let at = (Ipv4Addr::UNSPECIFIED, port);
            let held = match proto {
                Protocol::Tcp => TcpListener::bind(at).map(Held::Tcp),
                Protocol::Udp => UdpSocket::bind(at).map(Held::Udp),
            };
            match held {
                Ok(h) => {
                    self.0.insert((proto, port), h);
                }
                Err(e) => {
                    self.0.insert((proto, port), Held::Taken);
                    failed.push(((proto, port), e));
                }
            }
        }
        failed
    }
}

/// The ports with a listening TCP or a bound UDP socket in the namespace whose
/// `/proc/.../net` directory is `net`; None if it is gone (a process that ended). A
/// kernel without IPv6 has no `*6` tables, which is no error.
pub fn bound(net: &Path) -> Option<BTreeSet<(Protocol, u16)>> {
    let mut out = BTreeSet::new();
    for (file, protocol) in [
        ("tcp", Protocol::Tcp),
        ("tcp6", Protocol::Tcp),
        ("udp", Protocol::Udp),
        ("udp6", Protocol::Udp),
    ] {
        match std::fs::read_to_string(net.join(file)) {
            Ok(table) => out.extend(bound_ports(&table, protocol)),
            Err(_) if !net.exists() => return None,
            Err(_) => {}
        }
    }
    Some(out)
}

/// The local ports of a `/proc/net/{tcp,tcp6,udp,udp6}` table's sockets that accept:
/// TCP's listening ones (state 0A), UDP's unconnected ones (state 07).
fn bound_ports(table: &str, protocol: Protocol) -> impl Iterator<Item = (Protocol, u16)> + '_ {
    let open = match protocol {
        Protocol::Tcp => "0A",
        Protocol::Udp => "07",
    };
    table.lines().skip(1).filter_map(move |line| {
        let mut f = line.split_whitespace();
        let local = f.nth(1)?;
        let state = f.nth(1)?;
        let port = u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()?;
        (state == open).then_some((protocol, port))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_ports_refuse_other_binds_until_let_go() {
        // A free port of loopback's, then held on all addresses.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut h = PortHolds::default();
        let want = BTreeSet::from([(Protocol::Tcp, port)]);
        assert!(h.sync(&want).is_empty());
        assert!(TcpListener::bind(("0.0.0.0", port)).is_err(), "held");
        assert!(h.sync(&want).is_empty(), "held already");
        h.sync(&BTreeSet::new());
        assert!(TcpListener::bind(("0.0.0.0", port)).is_ok(), "let go");
        // Taken by someone else: said once.
        let other = UdpSocket::bind("0.0.0.0:0").unwrap();
        let taken = BTreeSet::from([(Protocol::Udp, other.local_addr().unwrap().port())]);
        assert_eq!(h.sync(&taken).len(), 1);
        assert!(h.sync(&taken).is_empty(), "once");
    }

    #[test]
    fn bound_ports_reads_the_kernels_socket_tables() {
        // As the kernel writes them (trimmed after the state column's neighbours).
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1388 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0100007F:0050 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 2 1
   2: 0A000005:0BB8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1
";
        let got: Vec<_> = bound_ports(tcp, Protocol::Tcp).collect();
        assert_eq!(got, [(Protocol::Tcp, 5000), (Protocol::Tcp, 3000)]);
        let tcp6 =
            "  sl  local_address                         remote_address                        st
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 0 0
";
        let got: Vec<_> = bound_ports(tcp6, Protocol::Tcp).collect();
        assert_eq!(got, [(Protocol::Tcp, 8080)]);
        let udp = "   sl  local_address rem_address   st
  10: 00000000:0035 00000000:0000 07 0 0
  11: 0A000005:A000 0A000009:0035 01 0 0
";
        let got: Vec<_> = bound_ports(udp, Protocol::Udp).collect();
        assert_eq!(got, [(Protocol::Udp, 53)]);
        // A short or garbled line is passed over.
        assert_eq!(bound_ports("h\n 0: zz\n", Protocol::Tcp).count(), 0);
    }
}

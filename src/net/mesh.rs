//! The routing mesh on one node: a published port answers on every local address and
//! spreads connections round robin over the service's tasks on every node, through the
//! ingress overlay network. nf_tables, in the host's namespace:
//!
//! ```text
//! table ip swarmlet-mesh {
//!   map ports { inet_proto . inet_service : verdict }
//!   chain pre  { nat hook prerouting -100: fib daddr type local  l4proto . dport vmap @ports }
//!   chain out  { nat hook output     -100: fib daddr type local  l4proto . dport vmap @ports }
//!   chain post { nat hook postrouting 100: oifname <ingress bridge> masquerade }
//!   chain guard { filter hook prerouting -300: iifname <ingress bridge> ip daddr 127.0.0.0/8 drop
//!                                              iifname <ingress bridge> ip saddr 127.0.0.0/8 drop }
//!   chain p-<proto>-<port> { dnat to numgen inc mod N map @q-<proto>-<port> }
//!   map q-<proto>-<port> { u32 : ipv4_addr . inet_service }
//! }
//! ```
//!
//! The masquerade gives forwarded connections the node's own address on the ingress
//! network as their source, so a task on another node answers through the node that
//! took the connection (the client's address is lost, as in Swarm's ingress mode;
//! host-mode publishing keeps it). The node must forward IPv4 (`ip_forward`); the
//! daemon turns it on, as Docker does.
//!
//! A published port answers on the node's loopback too (`curl localhost:8080` on the
//! node, as under Docker): the output chain sends such a connection to the bridge with
//! its loopback source, which the kernel routes only with `route_localnet` on the
//! bridge, and the masquerade gives it the bridge's address. `route_localnet` would
//! also let whatever is on the bridge reach the node's loopback services, so the guard
//! chain drops anything arriving by the bridge for 127.0.0.0/8 before conntrack (the
//! answers to the node's own connections arrive for the bridge's address and are
//! turned back to loopback after it).
//!
//! Host-mode ports (and `run -p`'s) are tables of the same dispatch with no post or
//! guard chain: their backends are on the local bridge, whose own table
//! (`net::bridge`) masquerades what comes from loopback and guards it the same way.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use super::nft::{
    diff, ifname_bytes, index_key, ip_port_bytes, loopback_guard, proto_port_key, BaseChain, Batch,
    ChainType, Expr, Hook, KeyType, MapData, Nft, NftError, Reg, Synced, Value, Verdict,
    GUARD_HOOK, GUARD_PRIORITY, NFPROTO_IPV4,
};

pub const TABLE: &str = "swarmlet-mesh";
/// The table of host-mode ports.
pub const HOST_TABLE: &str = "swarmlet-host";
/// The table of the ports `run -p` publishes.
pub const RUN_TABLE: &str = "swarmlet-run";

/// Backends per published port at most (see `lb::MAX_BACKENDS`).
pub const MAX_BACKENDS: usize = super::lb::MAX_BACKENDS;

/// RTN_LOCAL: the destination is one of this node's own addresses.
const RTN_LOCAL: u32 = 2;

pub use crate::model::Protocol as Proto;

/// The IP protocol number.
fn number(p: Proto) -> u8 {
    match p {
        Proto::Tcp => 6,
        Proto::Udp => 17,
    }
}

/// A published port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port {
    pub proto: Proto,
    pub port: u16,
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.port, self.proto.name())
    }
}

/// Published port -> the tasks' ingress addresses and target ports.
pub type Published = BTreeMap<Port, Vec<(Ipv4Addr, u16)>>;

/// The mesh of one node.
pub struct Mesh {
    table: Synced<Published>,
    /// The nf_tables table: [`TABLE`], [`HOST_TABLE`] or [`RUN_TABLE`].
    name: &'static str,
    /// The ingress network's bridge: what leaves by it is masqueraded (none for
    /// host-mode and `run -p` ports, which go straight to a local container on the
    /// local bridge and keep the client's address).
    bridge: Option<String>,
}

impl Mesh {
    /// The routing mesh, in the calling thread's namespace (the host's): its table
    /// made at once with no port, so that its guard is in place before `bridge` gets
    /// `route_localnet`.
    pub fn open(bridge: &str) -> Result<Mesh, NftError> {
        let mut m = Mesh::with(TABLE, Some(bridge))?;
        m.sync(&Published::new())?;
        super::route_localnet(bridge, true).map_err(NftError::Protocol)?;
        Ok(m)
    }

    /// The table of the ports this node's tasks publish in host mode: the same
    /// dispatch, to local tasks' addresses, keeping the client's address.
    pub fn host() -> Result<Mesh, NftError> {
        Mesh::with(HOST_TABLE, None)
    }

    /// The table of the ports `run -p` publishes, to containers on the local bridge.
    pub fn run() -> Result<Mesh, NftError> {
        Mesh::with(RUN_TABLE, None)
    }

    fn with(name: &'static str, bridge: Option<&str>) -> Result<Mesh, NftError> {
        Ok(Mesh {
            table: Synced::new(Nft::open()?),
            name,
            bridge: bridge.map(str::to_string),
        })
    }

    /// Makes the kernel hold `want`; returns how many ports changed.
    pub fn sync(&mut self, want: &Published) -> Result<usize, NftError> {
        if let Some((p, b)) = want.iter().find(|(_, b)| b.len() > MAX_BACKENDS) {
            return Err(NftError::Protocol(format!(
                "port {p}: {} backends, more than {MAX_BACKENDS}",
                b.len()
            )));
        }
        let (name, bridge) = (self.name, self.bridge.as_deref());
        self.table.sync(want, |held| match held {
            None => (rebuild_table(name, bridge, want), want.len()),
            Some(have) => changes_in(name, have, want),
        })
    }

    /// Removes the table (and, for the mesh, the bridge's loopback routing before its
    /// guard goes). In the namespace it was opened in.
    pub fn clear(&mut self) -> Result<(), NftError> {
        if let Some(bridge) = &self.bridge {
            // A bridge already gone has nothing to turn off.
            let _ = super::route_localnet(bridge, false);
        }
        self.table.clear(self.name)
    }

    /// Removes table `name` ([`TABLE`], [`HOST_TABLE`], [`RUN_TABLE`]) if an earlier
    /// run left it, in the calling thread's namespace.
    pub fn remove_left(name: &'static str) -> Result<(), NftError> {
        Synced::<Published>::new(Nft::open()?).clear(name)
    }
}

fn port_chain(p: Port) -> String {
    format!("p-{}-{}", p.proto.name(), p.port)
}

fn port_map(p: Port) -> String {
    format!("q-{}-{}", p.proto.name(), p.port)
}

/// The rule that sends connections to a local address's published port to its chain.
fn dispatch() -> Vec<Expr> {
    vec![
        Expr::FibDaddrType { dreg: Reg::R1 },
        Expr::Eq {
            sreg: Reg::R1,
            data: RTN_LOCAL.to_ne_bytes().to_vec(),
        },
        Expr::L4Proto { dreg: Reg::R1 },
        Expr::TransportHeader {
            offset: 2,
            len: 2,
            dreg: Reg::R1b,
        },
        Expr::Lookup {
            set: "ports".into(),
            sreg: Reg::R1,
            dreg: Some(Reg::Verdict),
        },
    ]
}

pub fn rebuild(bridge: &str, want: &Published) -> Batch {
    rebuild_table(TABLE, Some(bridge), want)
}

fn rebuild_table(table: &str, bridge: Option<&str>, want: &Published) -> Batch {
    let mut b = Batch::new(NFPROTO_IPV4);
    b.add_table(table);
    b.del_table(table);
    b.add_table(table);
    b.add_map(table, "ports", KeyType::ProtoPort, MapData::Verdict);
    let mut chains = vec![
        ("pre", Hook::Prerouting, -100, ChainType::Nat),
        ("out", Hook::Output, -100, ChainType::Nat),
    ];
    if bridge.is_some() {
        chains.push(("post", Hook::Postrouting, 100, ChainType::Nat));
        chains.push(("guard", GUARD_HOOK, GUARD_PRIORITY, ChainType::Filter));
    }
    for (name, hook, priority, kind) in chains {
        let base = BaseChain {
            hook,
            priority,
            kind,
        };
        b.add_chain(table, name, Some(base));
    }
    b.add_rule(table, "pre", &dispatch());
    b.add_rule(table, "out", &dispatch());
    if let Some(bridge) = bridge {
        b.add_rule(
            table,
            "post",
            &[
                Expr::OifName { dreg: Reg::R1 },
                Expr::Eq {
                    sreg: Reg::R1,
                    data: ifname_bytes(bridge),
                },
                Expr::Masquerade,
            ],
        );
        for rule in loopback_guard(bridge) {
            b.add_rule(table, "guard", &rule);
        }
    }
    for (p, backends) in want {
        add_port(&mut b, table, *p, backends);
    }
    b
}

pub fn changes(have: &Published, want: &Published) -> (Batch, usize) {
    changes_in(TABLE, have, want)
}

fn changes_in(table: &str, have: &Published, want: &Published) -> (Batch, usize) {
    let mut b = Batch::new(NFPROTO_IPV4);
    let mut n = 0;
    for (p, _, _) in diff(have, want).filter(|(_, _, now)| now.is_none()) {
        b.del_elems(table, "ports", &[proto_port_key(number(p.proto), p.port)]);
        b.flush_chain(table, &port_chain(*p));
        b.del_chain(table, &port_chain(*p));
        b.del_map(table, &port_map(*p));
        n += 1;
    }
    for (p, old, now) in diff(have, want) {
        let Some(backends) = now else { continue };
        match old {
            Some(old) if old.len() == backends.len() && !old.is_empty() => {
                // A task replaced: its slot only, the rule stays (see `lb`).
                let changed: Vec<(Vec<u8>, Value)> = (0u32..)
                    .zip(old.iter().zip(backends))
                    .filter(|(_, (was, now))| was != now)
                    .map(|(i, (_, (ip, port)))| {
                        (index_key(i), Value::Bytes(ip_port_bytes(*ip, *port)))
                    })
                    .collect();
                let keys: Vec<Vec<u8>> = changed.iter().map(|(k, _)| k.clone()).collect();
                b.del_elems(table, &port_map(*p), &keys);
                b.set_elems(table, &port_map(*p), &changed);
                n += 1;
            }
            Some(_) => {
                b.flush_chain(table, &port_chain(*p));
                b.del_elems(table, &port_map(*p), &[]);
                fill(&mut b, table, *p, backends);
                n += 1;
            }
            None => {
                add_port(&mut b, table, *p, backends);
                n += 1;
            }
        }
    }
    (b, n)
}

fn add_port(b: &mut Batch, table: &str, p: Port, backends: &[(Ipv4Addr, u16)]) {
    b.add_map(table, &port_map(p), KeyType::Integer, MapData::Ipv4Port);
    b.add_chain(table, &port_chain(p), None);
    fill(b, table, p, backends);
    b.set_elems(
        table,
        "ports",
        &[(
            proto_port_key(number(p.proto), p.port),
            Value::Verdict(Verdict::Goto(port_chain(p))),
        )],
    );
}

/// The port chain's rule and map; with no backend, the chain refuses.
fn fill(b: &mut Batch, table: &str, p: Port, backends: &[(Ipv4Addr, u16)]) {
    if backends.is_empty() {
        // No task runs: drop, so the client sees what it would on a node without the
        // port (a refusal needs a filter chain; nat chains cannot reject).
        b.add_rule(table, &port_chain(p), &[Expr::Verdict(Verdict::Drop)]);
        return;
    }
    let elems: Vec<(Vec<u8>, Value)> = (0u32..)
        .zip(backends)
        .map(|(i, (ip, port))| (index_key(i), Value::Bytes(ip_port_bytes(*ip, *port))))
        .collect();
    b.set_elems(table, &port_map(p), &elems);
    let n = u32::try_from(backends.len()).unwrap_or(u32::MAX);
    b.add_rule(
        table,
        &port_chain(p),
        &[
            Expr::Numgen {
                modulus: n,
                dreg: Reg::R1,
            },
            Expr::Lookup {
                set: port_map(p),
                sreg: Reg::R1,
                dreg: Some(Reg::R1),
            },
            Expr::Dnat {
                addr: Reg::R1,
                port: Some(Reg::R1b),
            },
        ],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(n: u16) -> Port {
        Port {
            proto: Proto::Tcp,
            port: n,
        }
    }

    #[test]
    fn a_change_to_one_port_touches_only_it() {
        let b = |d: u8| (Ipv4Addr::new(10, 0, 0, d), 80);
        let have = Published::from([(port(80), vec![b(3), b(4)]), (port(5000), vec![b(5)])]);
        let (batch, n) = changes(&have, &have.clone());
        assert_eq!((n, batch.is_empty()), (0, true));
        let mut want = have.clone();
        want.insert(port(5000), vec![b(5), b(6)]);
        let (batch, n) = changes(&have, &want);
        assert_eq!(n, 1);
        assert!(
            batch.what().iter().all(|w| w.contains("-tcp-5000")),
            "{:?}",
            batch.what()
        );
        let mut swapped = have.clone();
        swapped.insert(port(80), vec![b(3), b(7)]);
        let (batch, _) = changes(&have, &swapped);
        assert_eq!(
            batch.what(),
            [
                "remove from map swarmlet-mesh q-tcp-80",
                "add to map swarmlet-mesh q-tcp-80"
            ]
        );
        want.remove(&port(80));
        let (batch, n) = changes(&have, &want);
        assert_eq!(n, 2);
        assert!(batch
            .what()
            .iter()
            .any(|w| w == "delete chain swarmlet-mesh p-tcp-80"));
    }

    #[test]
    fn keys_and_data_are_padded_fields() {
        assert_eq!(proto_port_key(6, 8080), [6, 0, 0, 0, 0x1f, 0x90, 0, 0]);
        assert_eq!(
            ip_port_bytes(Ipv4Addr::new(10, 0, 0, 3), 80),
            [10, 0, 0, 3, 0, 80, 0, 0]
        );
        assert_eq!(ifname_bytes("sw-b4096").len(), 16);
    }
}

//! The embedded DNS server: one UDP socket at 127.0.0.11:53 inside each task's network
//! namespace, all served by tasks on the daemon's executor (no thread per container).
//!
//! A socket opened inside a namespace stays there, so each is opened on a short-lived
//! thread in the namespace ([`in_netns`]) and then read from the daemon's loop like any
//! other. Queries for the swarm's names are answered from the tables [`Dns::set_names`]
//! swaps in (see `names`); other names are forwarded to the host's resolvers from the
//! daemon's own namespace (a task's namespace may have no way out), each forward on a
//! fresh socket connected to the upstream with a random id, so a reply must come from
//! that server, to that port, with that id and question to be taken.

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_io::{Async, Timer};
use smol::future::FutureExt;

use super::dns::{self, Query, CLASS_IN, TYPE_A, TYPE_ANY};
use super::names::{resolve, Answer, NetworkNames};
use super::rtnl::{in_netns, RtnlError};

/// Where containers find the server (Docker's address).
pub const DNS_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11)), 53);

/// The swarm's records change as tasks come and go; a cached answer would outlive the
/// task. Lookups stay inside the node, so asking again is cheap.
pub const ANSWER_TTL: u32 = 0;

/// How long one upstream server gets to answer before the next is asked (glibc's
/// default timeout is 5 s per try; two upstreams fit in it).
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

/// Forwards in flight at most, over all containers: a container that floods the server
/// with names to forward gets SERVFAIL rather than a socket and a task per query.
pub const MAX_FORWARDS: usize = 256;

/// The largest datagram read from a container or an upstream: an upstream may answer
/// with EDNS up to 4096 bytes when the client asked for it.
const RECV_MAX: usize = 4096;

/// A network, by its VNI.
pub type NetKey = u32;

#[derive(Default)]
struct Tables {
    names: BTreeMap<NetKey, Arc<NetworkNames>>,
    /// Per endpoint (a task): its networks.
    endpoints: BTreeMap<String, Vec<NetKey>>,
}

struct Shared {
    tables: Mutex<Tables>,
    upstreams: Vec<SocketAddr>,
    forwards: AtomicUsize,
}

/// The server of a node.
pub struct Dns {
    shared: Arc<Shared>,
    /// Per endpoint, the task serving its socket (dropping it stops serving).
    serving: BTreeMap<String, smol::Task<()>>,
}

impl Dns {
    /// `upstreams`: where names that are not the swarm's go (from the host's
    /// resolv.conf, see `dns::parse_resolv_conf`).
    pub fn new(upstreams: Vec<SocketAddr>) -> Dns {
        Dns {
            shared: Arc::new(Shared {
                tables: Mutex::new(Tables::default()),
                upstreams,
                forwards: AtomicUsize::new(0),
            }),
            serving: BTreeMap::new(),
        }
    }

    /// Replaces a network's names (or drops them with `None`).
    pub fn set_names(&self, net: NetKey, names: Option<NetworkNames>) {
        let mut t = lock(&self.shared);
        match names {
            Some(n) => t.names.insert(net, Arc::new(n)),
            None => t.names.remove(&net),
        };
    }

    /// Starts serving the namespace at `netns` (its loopback must be up) for an endpoint
    /// on `networks`; serving it again only updates its networks.
    pub fn serve(
        &mut self,
        key: &str,
        netns: &str,
        networks: Vec<NetKey>,
    ) -> Result<(), RtnlError> {
        lock(&self.shared)
            .endpoints
            .insert(key.to_string(), networks);
        if self.serving.contains_key(key) {
            return Ok(());
        }
        let sock =
            in_netns(netns, || UdpSocket::bind(DNS_ADDR))?.map_err(|source| RtnlError::Netns {
                path: netns.to_string(),
                source: io::Error::new(source.kind(), format!("bind {DNS_ADDR}: {source}")),
            })?;
        let sock = Async::new(sock).map_err(|source| RtnlError::Netns {
            path: netns.to_string(),
            source,
        })?;
        let task = smol::spawn(serve(Arc::new(sock), key.to_string(), self.shared.clone()));
        self.serving.insert(key.to_string(), task);
        Ok(())
    }

    /// Stops serving an endpoint (its namespace going away closes nothing by itself:
    /// the socket holds the namespace until it is closed here).
    pub fn stop(&mut self, key: &str) {
        self.serving.remove(key);
        lock(&self.shared).endpoints.remove(key);
    }

    pub fn serving(&self) -> usize {
        self.serving.len()
    }
}

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, Tables> {
    // A panic while holding it would be a bug in this module; the tables are still
    // whole (every write replaces an entry), so go on with them.
    s.tables.lock().unwrap_or_else(|p| p.into_inner())
}

/// Answers one socket's queries until stopped.
async fn serve(sock: Arc<Async<UdpSocket>>, key: String, shared: Arc<Shared>) {
    let mut buf = vec![0u8; RECV_MAX];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf).await else {
            // A closed socket or a namespace gone: nothing more will come.
            return;
        };
        // Stopped while this task was still running (a drop cancels it only when the
        // executor next looks): a query that comes after `stop` gets no answer.
        if !lock(&shared).endpoints.contains_key(&key) {
            return;
        }
        let packet = &buf[..n.min(buf.len())];
        let q = match dns::parse_query(packet) {
            Ok(q) => q,
            Err(_) => {
                if let Some(reply) = dns::error_reply_for(packet) {
                    let _ = sock.send_to(&reply, from).await;
                }
                continue;
            }
        };
        let answer = {
            let t = lock(&shared);
            let Some(ns) = t.endpoints.get(&key) else {
                return;
            };
            let nets: Vec<Arc<NetworkNames>> =
                ns.iter().filter_map(|n| t.names.get(n).cloned()).collect();
            resolve(nets.iter().map(|a| &**a), &q.name)
        };
        let reply = match answer {
            Answer::Addrs(mut addrs) if q.qclass == CLASS_IN => match q.qtype {
                TYPE_A | TYPE_ANY if addrs.is_empty() => Some(q.nxdomain()),
                TYPE_A | TYPE_ANY => {
                    rotate(&mut addrs);
                    Some(q.answer_a(&addrs, ANSWER_TTL))
                }
                _ => Some(q.nodata()),
            },
            Answer::Addrs(_) | Answer::NoSuchName => Some(q.nxdomain()),
            Answer::Forward => {
                forward(&sock, &shared, q, packet.to_vec(), from);
                None
            }
        };
        if let Some(r) = reply {
            let _ = sock.send_to(&r, from).await;
        }
    }
}

/// Starts forwarding a query upstream; the reply (or SERVFAIL) goes back to `client`.
fn forward(
    sock: &Arc<Async<UdpSocket>>,
    shared: &Arc<Shared>,
    q: Query,
    packet: Vec<u8>,
    client: SocketAddr,
) {
    let sock = sock.clone();
    if shared.upstreams.is_empty()
        || shared.forwards.fetch_add(1, Ordering::Relaxed) >= MAX_FORWARDS
    {
        if !shared.upstreams.is_empty() {
            shared.forwards.fetch_sub(1, Ordering::Relaxed);
        }
        smol::spawn(async move {
            let _ = sock.send_to(&q.servfail(), client).await;
        })
        .detach();
        return;
    }
    let shared = shared.clone();
    smol::spawn(async move {
        let reply = ask_upstreams(&shared.upstreams, &q, packet)
            .await
            .unwrap_or_else(|| q.servfail());
        shared.forwards.fetch_sub(1, Ordering::Relaxed);
        let _ = sock.send_to(&reply, client).await;
    })
    .detach();
}

/// Each upstream in turn until one answers; the answer carries the client's id again.
async fn ask_upstreams(
    upstreams: &[SocketAddr],
    q: &Query,
    mut packet: Vec<u8>,
) -> Option<Vec<u8>> {
    for up in upstreams {
        let mut b = [0u8; 2];
        if getrandom::getrandom(&mut b).is_err() {
            return None;
        }
        let id = u16::from_ne_bytes(b);
        dns::rewrite_id(&mut packet, id).ok()?;
        let ask = async {
            let local: SocketAddr = match up {
                SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            let s = Async::<UdpSocket>::bind(local).ok()?;
            s.get_ref().connect(up).ok()?;
            s.send(&packet).await.ok()?;
            let mut buf = vec![0u8; RECV_MAX];
            loop {
                let n = s.recv(&mut buf).await.ok()?;
                let mut reply = buf[..n.min(buf.len())].to_vec();
                // Anything else on this port is a stray or a forgery: keep waiting.
                if q.check_reply(&reply, id).is_ok() && dns::rewrite_id(&mut reply, q.id).is_ok() {
                    return Some(reply);
                }
            }
        };
        let timeout = async {
            Timer::after(FORWARD_TIMEOUT).await;
            None
        };
        if let Some(r) = ask.or(timeout).await {
            return Some(r);
        }
    }
    None
}

/// Rotates a record set by one place per query, as Docker does for task addresses, so
/// clients that take the first address spread over all of them. Hashless and
/// stateless: the rotation comes from a counter shared by all sockets.
fn rotate(addrs: &mut [Ipv4Addr]) {
    static TURN: AtomicUsize = AtomicUsize::new(0);
    if addrs.len() > 1 {
        let k = TURN.fetch_add(1, Ordering::Relaxed) % addrs.len();
        addrs.rotate_left(k);
    }
}

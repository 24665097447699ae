//! Encrypted overlays' data path, on one node: per network a TAP device on the
//! network's bridge; each frame read from it is sealed (`seal`) and sent over UDP to the
//! node its destination MAC lives on (a broadcast or multicast frame to every node of
//! the network, so ARP finds its answer with no proxy); each datagram from another node
//! is opened and its frame written into the network's TAP. One thread serves all of a
//! node's encrypted networks.
//!
//! Fail closed by construction: the TAP is the network's only way off the node and this
//! thread the only reader of it. A frame for a network with no key, for a destination
//! no node is known to hold, or one that cannot be sealed is dropped and counted, never
//! sent in the clear; a datagram that does not open is dropped and counted.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rustix::event::{poll, PollFd, PollFlags};

use super::overlay::mac_of;
use super::seal::{NetKey, Opener, Sealer};
use super::tap::Tap;

/// The largest UDP datagram or TAP frame read in one go (an IPv4 datagram's limit):
/// nothing the kernel hands over is cut short.
const MAX_DATAGRAM: usize = 65_536;

/// Frames handled per device per wake-up, so one busy network cannot starve the rest.
const BURST: usize = 64;

/// One encrypted network as this node should carry it.
pub struct SealedNet {
    pub vni: u32,
    /// Its TAP device, enslaved to the network's bridge by the caller.
    pub tap: Arc<Tap>,
    pub key: NetKey,
    /// Endpoints on other nodes: overlay address -> that node's address.
    pub remote: BTreeMap<Ipv4Addr, Ipv4Addr>,
}

/// What the data path did, for logs and tests.
#[derive(Default, Debug)]
pub struct Counters {
    pub sealed: AtomicU64,
    pub opened: AtomicU64,
    /// Frames from a TAP that went nowhere (no node holds the destination).
    pub unrouted: AtomicU64,
    /// Datagrams that did not open (forged, replayed, unknown network or epoch).
    pub refused: AtomicU64,
}

struct Wanted {
    generation: u64,
    nets: BTreeMap<u32, SealedNet>,
}

/// The running data path; dropping it stops the thread.
pub struct Datapath {
    wanted: Arc<Mutex<Wanted>>,
    stop: Arc<AtomicBool>,
    /// Written to wake the thread (a new set, or stop): it sleeps in `poll` otherwise.
    wake: OwnedFd,
    thread: Option<JoinHandle<()>>,
    pub counters: Arc<Counters>,
    local: SocketAddrV4,
}

impl Datapath {
    /// Binds `local` (the node's address and the encrypted overlays' port) in the calling
    /// thread's network namespace and starts serving. `sender` names this node in the
    /// frames it seals; `session` must be random per process.
    pub fn start(local: SocketAddrV4, sender: u64, session: u64) -> io::Result<Datapath> {
        let udp = UdpSocket::bind(local).map_err(|e| {
            io::Error::new(e.kind(), format!("encrypted overlay port {local}: {e}"))
        })?;
        udp.set_nonblocking(true)?;
        let wanted = Arc::new(Mutex::new(Wanted {
            generation: 0,
            nets: BTreeMap::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let (woken, wake) = rustix::pipe::pipe_with(
            rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
        )?;
        let mut w = Worker {
            udp,
            woken,
            port: local.port(),
            sender,
            session,
            wanted: wanted.clone(),
            stop: stop.clone(),
            counters: counters.clone(),
            seen: u64::MAX,
            live: BTreeMap::new(),
        };
        let thread = std::thread::Builder::new()
            .name("sealed-overlay".into())
            .spawn(move || w.run())?;
        Ok(Datapath {
            wanted,
            stop,
            wake,
            thread: Some(thread),
            counters,
            local,
        })
    }

    /// Where it listens.
    pub fn local(&self) -> SocketAddrV4 {
        self.local
    }

    /// Carries exactly `nets` from now on (the thread takes them at once).
    pub fn set(&self, nets: Vec<SealedNet>) {
        let mut w = self
            .wanted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        w.generation = w.generation.wrapping_add(1);
        w.nets = nets.into_iter().map(|n| (n.vni, n)).collect();
        drop(w);
        self.wake();
    }

    fn wake(&self) {
        // A full pipe (EAGAIN) already holds a wake-up.
        let _ = rustix::io::write(&self.wake, &[1]);
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A network as the thread carries it.
struct Live {
    tap: Arc<Tap>,
    epoch: u32,
    key: [u8; 32],
    sealer: Sealer,
    opener: Opener,
    /// Destination MAC -> node.
    by_mac: HashMap<[u8; 6], Ipv4Addr>,
    /// Every other node of the network (where broadcasts go).
    nodes: Vec<Ipv4Addr>,
}

struct Worker {
    udp: UdpSocket,
    /// The read end of [`Datapath`]'s wake-up pipe.
    woken: OwnedFd,
    port: u16,
    sender: u64,
    session: u64,
    wanted: Arc<Mutex<Wanted>>,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    seen: u64,
    live: BTreeMap<u32, Live>,
}

impl Worker {
    fn run(&mut self) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut out = Vec::with_capacity(MAX_DATAGRAM);
        while !self.stop.load(Ordering::Relaxed) {
            self.refresh();
            let taps: Vec<(u32, Arc<Tap>)> =
                self.live.iter().map(|(v, l)| (*v, l.tap.clone())).collect();
            let mut fds = Vec::with_capacity(taps.len() + 2);
            fds.push(PollFd::new(&self.woken, PollFlags::IN));
            fds.push(PollFd::new(&self.udp, PollFlags::IN));
            for (_, t) in &taps {
                fds.push(PollFd::new(t.as_ref(), PollFlags::IN));
            }
            // No timeout: a new set or a stop writes to the pipe.
            if poll(&mut fds, None).is_err() {
                continue;
            }
            let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
            drop(fds);
            if ready[0] {
                let mut drain = [0u8; 64];
                while matches!(rustix::io::read(&self.woken, &mut drain), Ok(n) if n > 0) {}
            }
            if ready[1] {
                self.take_datagrams(&mut buf);
            }
            for ((vni, tap), r) in taps.iter().zip(&ready[2..]) {
                if *r {
                    self.take_frames(*vni, tap, &mut buf, &mut out);
                }
            }
        }
    }

    /// Takes a changed set of networks: new ones start, gone ones stop (their TAPs close
    /// with the last reference), a key epoch changed rotates.
    fn refresh(&mut self) {
        let w = self
            .wanted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if w.generation == self.seen {
            return;
        }
        self.seen = w.generation;
        self.live.retain(|vni, _| w.nets.contains_key(vni));
        for (vni, n) in &w.nets {
            let by_mac: HashMap<[u8; 6], Ipv4Addr> = n
                .remote
                .iter()
                .map(|(ip, node)| (mac_of(*ip), *node))
                .collect();
            let nodes: Vec<Ipv4Addr> = n
                .remote
                .values()
                .copied()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            match self.live.get_mut(vni) {
                Some(l)
                    if l.epoch == n.key.epoch
                        && l.key == n.key.key
                        && Arc::ptr_eq(&l.tap, &n.tap) =>
                {
                    l.by_mac = by_mac;
                    l.nodes = nodes;
                }
                Some(l) => {
                    if l.epoch == n.key.epoch {
                        // The same epoch under another key: nothing of the old one holds.
                        l.opener = Opener::new(*vni, n.key.clone());
                    } else {
                        l.opener.rotate(n.key.clone());
                    }
                    l.tap = n.tap.clone();
                    l.epoch = n.key.epoch;
                    l.key = n.key.key;
                    l.sealer = Sealer::new(&n.key, *vni, self.sender, self.session);
                    l.by_mac = by_mac;
                    l.nodes = nodes;
                }
                None => {
                    self.live.insert(
                        *vni,
                        Live {
                            tap: n.tap.clone(),
                            epoch: n.key.epoch,
                            key: n.key.key,
                            sealer: Sealer::new(&n.key, *vni, self.sender, self.session),
                            opener: Opener::new(*vni, n.key.clone()),
                            by_mac,
                            nodes,
                        },
                    );
                }
            }
        }
    }

    fn take_datagrams(&mut self, buf: &mut [u8]) {
        for _ in 0..BURST {
            let n = match self.udp.recv_from(buf) {
                Ok((n, _)) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => return,
            };
            let d = &mut buf[..n];
            let Some(vni) = d
                .get(4..8)
                .map(|v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
            else {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let Some(l) = self.live.get_mut(&vni) else {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            match l.opener.open(d) {
                Ok((_, frame)) => {
                    // A full TAP queue drops the frame, as a full link would.
                    let _ = l.tap.send(frame);
                    self.counters.opened.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    self.counters.refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn take_frames(&mut self, vni: u32, tap: &Tap, buf: &mut [u8], out: &mut Vec<u8>) {
        for _ in 0..BURST {
            let n = match tap.recv(buf) {
                Ok(n) => n,
                Err(_) => return,
            };
            let Some(l) = self.live.get_mut(&vni) else {
                return;
            };
            let frame = &buf[..n];
            let Some(dst) = frame.get(..6) else {
                continue;
            };
            let to: Vec<Ipv4Addr> = if dst[0] & 1 == 1 {
                l.nodes.clone()
            } else {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(dst);
                l.by_mac.get(&mac).copied().into_iter().collect()
            };
            if to.is_empty() {
                self.counters.unrouted.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            for node in to {
                if l.sealer.seal(frame, out).is_none() {
                    self.counters.unrouted.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let at = SocketAddr::V4(SocketAddrV4::new(node, self.port));
                if self.udp.send_to(out, at).is_ok() {
                    self.counters.sealed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

//! The transport endpoint: every peer's handshakes, sessions, timers and reassembly, as a
//! state machine with no IO.
//!
//! # Driving it
//!
//! ```text
//! loop {
//!     wait for a datagram or poll_timeout()
//!     handle_datagram(now, from, bytes, policy) | handle_timeout(now)
//!     send(now, peer, message)              // whenever the layer above wants to
//!     drain poll_transmit() to the socket,  then poll_event() to the layer above
//! }
//! ```
//!
//! Inputs carry the time; randomness comes from a ChaCha RNG seeded by the caller. Outputs
//! queue up until drained: transmits first (so a handshake response leaves before the
//! layer above reacts to the message that caused it), then events. Nothing a remote
//! sends can make these calls panic; every rejected datagram bumps a counter in [`Stats`].

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use x25519_dalek::StaticSecret;

use super::crypto::{Cipher, Hash, Mac16, TAG_LEN};
use super::dos::{self, CookieChecker, LoadMeter, RateLimiter};
use super::fragment::{self, Reassembler, MAX_MESSAGE_SIZE};
use super::key::PeerKey;
use super::noise::{self, Initiator, Psk, Responder, TransportKeys};
use super::replay::ReplayWindow;
use super::wire::{self, Inner, Packet, WireError, DATA_HEADER_LEN, MAX_DATAGRAM};

/// Peers we keep state for. Entries come only from the layer above (`set_peer`) or from
/// handshakes its policy admitted, so this bounds a cluster far beyond edge scale.
pub const MAX_PEERS: usize = 1024;
/// Messages waiting for a handshake to finish, per peer; more means the peer is not
/// answering and the layer above should hear so rather than pile up memory.
pub const MAX_QUEUED_MESSAGES_PER_PEER: usize = 64;
/// Bytes waiting for a handshake, per peer: two maximum-size messages.
pub const MAX_QUEUED_BYTES_PER_PEER: usize = 2 * MAX_MESSAGE_SIZE;
/// How long the session replaced by a rekey still decrypts, so datagrams already in
/// flight (or sitting in a reassembly) are not lost across the switch.
pub const PREVIOUS_SESSION_GRACE: Duration = Duration::from_secs(10);

/// Timing of sessions and handshakes. Defaults follow WireGuard's, except that handshake
/// retries are quicker: swarmlet lives on LANs, and a restarted node should be back in
/// the cluster in about a second, not five.
#[derive(Debug, Clone)]
pub struct Config {
    /// The initiator of a session starts a new handshake once the session is this old.
    pub rekey_after_time: Duration,
    /// No datagram is sent or accepted on a session older than this.
    pub reject_after_time: Duration,
    /// A new handshake starts after this many datagrams on one session.
    pub rekey_after_messages: u64,
    /// A session is never used for more datagrams than this (nonce exhaustion).
    pub reject_after_messages: u64,
    /// A handshake without a response is repeated after this (plus up to a third more,
    /// at random, so peers that restarted together do not retry in lockstep).
    pub handshake_retry: Duration,
    /// A handshake series gives up after this; queued messages are dropped.
    pub handshake_attempt_time: Duration,
    /// After receiving data, send an empty keepalive if we have sent nothing for this
    /// long, so the sender knows the session works.
    pub keepalive_timeout: Duration,
    /// Send a keepalive this often even when idle (for NAT mappings); off by default.
    pub persistent_keepalive: Option<Duration>,
    /// Partial messages are dropped when their last fragment is this late.
    pub reassembly_timeout: Duration,
    /// Initiations per second before cookies are required.
    pub under_load_handshakes_per_sec: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            rekey_after_time: Duration::from_secs(120),
            reject_after_time: Duration::from_secs(180),
            rekey_after_messages: 1 << 60,
            reject_after_messages: u64::MAX - (1 << 13),
            handshake_retry: Duration::from_secs(1),
            handshake_attempt_time: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            persistent_keepalive: None,
            reassembly_timeout: Duration::from_secs(3),
            under_load_handshakes_per_sec: dos::UNDER_LOAD_HANDSHAKES_PER_SEC,
        }
    }
}

/// Which pre-shared key a handshake uses, named by the initiator in its initiation so
/// the responder can pick the same one: 0 for members; the layer above assigns others
/// (join tokens).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct PskId(pub u8);

impl PskId {
    pub const MEMBER: PskId = PskId(0);
}

/// Decides which static keys may talk to us, and with which pre-shared key. Asked for
/// every handshake initiation, so a node removed from the cluster is refused at its next
/// rekey (and at once if the layer above also calls [`Endpoint::remove_peer`]).
pub trait PeerPolicy {
    fn admit(&mut self, peer: &PeerKey, from: SocketAddr) -> Option<Psk>;

    /// Like `admit`, for an initiation that names PSK `id`. By default only members'
    /// handshakes (id 0) are considered.
    fn admit_with(&mut self, peer: &PeerKey, from: SocketAddr, id: PskId) -> Option<Psk> {
        if id == PskId::MEMBER {
            self.admit(peer, from)
        } else {
            None
        }
    }
}

impl<F: FnMut(&PeerKey, SocketAddr) -> Option<Psk>> PeerPolicy for F {
    fn admit(&mut self, peer: &PeerKey, from: SocketAddr) -> Option<Psk> {
        self(peer, from)
    }
}

/// A datagram to put on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub dest: SocketAddr,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A whole message arrived.
    Message { peer: PeerKey, data: Vec<u8> },
    /// A new session with `peer` is in use.
    Connected { peer: PeerKey },
    /// Handshakes with `peer` went unanswered for the attempt time; queued messages
    /// were dropped.
    Unreachable { peer: PeerKey, dropped: usize },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("message of {0} bytes exceeds the {MAX_MESSAGE_SIZE}-byte limit")]
    TooLarge(usize),
    #[error("peer {0} is not known; add it with set_peer first")]
    UnknownPeer(PeerKey),
    #[error("peer {0} has no address to reach it at")]
    NoAddress(PeerKey),
    #[error("queue for peer {0} is full while its handshake is pending")]
    QueueFull(PeerKey),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("peer table is full ({MAX_PEERS} peers)")]
    TableFull,
    #[error("a node cannot be its own peer")]
    Ourselves,
}

/// Counters of what happened to datagrams. Everything dropped is counted somewhere here.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub datagrams_received: u64,
    pub datagrams_sent: u64,
    /// Too short, bad length for its type, unknown type.
    pub malformed: u64,
    pub oversized: u64,
    pub bad_version: u64,
    pub mac1_invalid: u64,
    pub cookie_replies_sent: u64,
    pub cookies_received: u64,
    pub cookie_invalid: u64,
    pub rate_limited: u64,
    pub handshakes_initiated: u64,
    pub handshakes_responded: u64,
    pub handshakes_completed: u64,
    pub handshake_failed: u64,
    pub handshake_denied: u64,
    pub handshake_replayed: u64,
    pub handshake_gave_up: u64,
    pub unknown_index: u64,
    pub replayed: u64,
    pub auth_failed: u64,
    pub expired_session: u64,
    pub inner_malformed: u64,
    pub messages_sent: u64,
    pub messages_received: u64,
    pub keepalives_sent: u64,
    pub keepalives_received: u64,
    pub queue_full: u64,
    pub peer_table_full: u64,
    pub reassembly_evicted: u64,
    pub reassembly_timed_out: u64,
}

impl Stats {
    /// Datagrams rejected for any reason.
    pub fn dropped(&self) -> u64 {
        self.malformed
            + self.oversized
            + self.bad_version
            + self.mac1_invalid
            + self.cookie_invalid
            + self.rate_limited
            + self.handshake_failed
            + self.handshake_denied
            + self.handshake_replayed
            + self.unknown_index
            + self.replayed
            + self.auth_failed
            + self.expired_session
            + self.inner_malformed
            + self.peer_table_full
    }
}

#[derive(Clone)]
struct Session {
    psk_id: PskId,
    local_index: u32,
    remote_index: u32,
    send: Cipher,
    recv: Cipher,
    send_counter: u64,
    replay: ReplayWindow,
    created: Instant,
    initiator: bool,
}

impl Session {
    fn new(
        local: u32,
        remote: u32,
        keys: &TransportKeys,
        now: Instant,
        initiator: bool,
        psk_id: PskId,
    ) -> Self {
        Session {
            psk_id,
            local_index: local,
            remote_index: remote,
            send: Cipher::new(&keys.send),
            recv: Cipher::new(&keys.recv),
            send_counter: 0,
            replay: ReplayWindow::default(),
            created: now,
            initiator,
        }
    }

    fn expires(&self, cfg: &Config) -> Instant {
        self.created + cfg.reject_after_time
    }

    fn can_send(&self, now: Instant, cfg: &Config, datagrams: u64) -> bool {
        now < self.expires(cfg)
            && self.send_counter.saturating_add(datagrams) <= cfg.reject_after_messages
    }

    fn wants_rekey(&self, now: Instant, cfg: &Config) -> bool {
        self.send_counter >= cfg.rekey_after_messages
            || (self.initiator && now.duration_since(self.created) >= cfg.rekey_after_time)
    }

    /// Seals one data datagram whose plaintext `write_inner` appends.
    fn seal(&mut self, write_inner: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut buf = Vec::with_capacity(MAX_DATAGRAM);
        let n = self.send_counter;
        self.send_counter += 1;
        wire::data_header(&mut buf, self.remote_index, n);
        write_inner(&mut buf);
        let tag = self.send.seal_in_place(n, &[], &mut buf[DATA_HEADER_LEN..]);
        buf.extend_from_slice(&tag);
        debug_assert!(buf.len() <= MAX_DATAGRAM);
        buf
    }
}

#[derive(Clone)]
struct Pending {
    hs: Initiator,
    local_index: u32,
    psk_id: PskId,
}

#[derive(Clone, Copy)]
enum Timer {
    /// Resend the initiation, or give up.
    Retry,
    /// Tell the peer we are alive after receiving data from it.
    Keepalive,
    /// We sent data and heard nothing back: the peer may have lost its session.
    ReplyExpected,
    Persistent,
}

const TIMERS: usize = 4;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Current,
    Previous,
    Next,
}

#[derive(Clone)]
struct Peer {
    addr: Option<SocketAddr>,
    psk: Psk,
    psk_id: PskId,
    /// Keys `mac1` of datagrams we send to this peer.
    mac1_key: Hash,
    /// Opens this peer's cookie replies.
    cookie_key: Hash,
    pending: Option<Pending>,
    /// When the current series of handshake attempts began.
    attempts_since: Option<Instant>,
    /// A cookie this peer gave us, and when.
    cookie: Option<(Mac16, Instant)>,
    /// Index and `mac1` of the last handshake datagram we sent it (a cookie reply is
    /// sealed to that `mac1`).
    last_mac1: Option<(u32, Mac16)>,
    /// Greatest handshake timestamp this peer sent us; older initiations are replays.
    greatest_timestamp: u64,
    current: Option<Session>,
    previous: Option<Session>,
    /// A session we answered but the initiator has not used yet.
    next: Option<Session>,
    previous_until: Option<Instant>,
    queue: VecDeque<Vec<u8>>,
    queued_bytes: usize,
    next_msg_id: u32,
    timers: [Option<Instant>; TIMERS],
}

impl Peer {
    fn new(key: &PeerKey, addr: Option<SocketAddr>, psk: Psk) -> Self {
        Peer {
            addr,
            psk,
            psk_id: PskId::MEMBER,
            mac1_key: wire::mac1_key(&key.0),
            cookie_key: wire::cookie_key(&key.0),
            pending: None,
            attempts_since: None,
            cookie: None,
            last_mac1: None,
            greatest_timestamp: 0,
            current: None,
            previous: None,
            next: None,
            previous_until: None,
            queue: VecDeque::new(),
            queued_bytes: 0,
            next_msg_id: 0,
            timers: [None; TIMERS],
        }
    }

    fn session_mut(&mut self, slot: Slot) -> Option<&mut Session> {
        match slot {
            Slot::Current => self.current.as_mut(),
            Slot::Previous => self.previous.as_mut(),
            Slot::Next => self.next.as_mut(),
        }
    }

    fn slot_of(&self, index: u32) -> Option<Slot> {
        let is = |s: &Option<Session>| s.as_ref().is_some_and(|s| s.local_index == index);
        if is(&self.current) {
            Some(Slot::Current)
        } else if is(&self.previous) {
            Some(Slot::Previous)
        } else if is(&self.next) {
            Some(Slot::Next)
        } else {
            None
        }
    }

    fn fresh_cookie(&self, now: Instant) -> Option<&Mac16> {
        self.cookie
            .as_ref()
            .filter(|(_, at)| now.duration_since(*at) < dos::COOKIE_USABLE_FOR)
            .map(|(c, _)| c)
    }

    fn arm(&mut self, t: Timer, at: Instant) {
        self.timers[t as usize] = Some(at);
    }

    fn arm_if_idle(&mut self, t: Timer, at: Instant) {
        self.timers[t as usize].get_or_insert(at);
    }

    fn disarm(&mut self, t: Timer) {
        self.timers[t as usize] = None;
    }

    fn due(&self, t: Timer, now: Instant) -> bool {
        self.timers[t as usize].is_some_and(|at| at <= now)
    }

    fn next_deadline(&self, cfg: &Config) -> Option<Instant> {
        let sessions = [&self.current, &self.previous, &self.next]
            .into_iter()
            .flatten()
            .map(|s| s.expires(cfg));
        self.timers
            .iter()
            .flatten()
            .copied()
            .chain(sessions)
            .chain(self.previous_until)
            .min()
    }
}

/// See the module documentation.
pub struct Endpoint {
    cfg: Config,
    secret: StaticSecret,
    public: PeerKey,
    /// Checks `mac1` of datagrams sent to us.
    our_mac1_key: Hash,
    rng: ChaCha20Rng,
    peers: BTreeMap<PeerKey, Peer>,
    /// Our local indexes (sessions and pending handshakes) to their peer.
    index: BTreeMap<u32, PeerKey>,
    cookies: CookieChecker,
    load: LoadMeter,
    limiter: RateLimiter,
    reassembly: Reassembler<PeerKey>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: Stats,
    epoch: Instant,
    wall_nanos_at_epoch: u64,
    last_timestamp: u64,
}

impl Endpoint {
    /// `wall_nanos` is the wall-clock time at `now` (nanoseconds since the Unix epoch); it
    /// seeds the handshake timestamps that let peers refuse replayed initiations, so it
    /// must not go backwards across restarts by more than the restart took.
    pub fn new(
        cfg: Config,
        secret: [u8; 32],
        rng_seed: [u8; 32],
        now: Instant,
        wall_nanos: u64,
    ) -> Self {
        let secret = StaticSecret::from(secret);
        let public = PeerKey(noise::public_of(&secret));
        let mut rng = ChaCha20Rng::from_seed(rng_seed);
        let mut cookie_secret = [0u8; 32];
        rng.fill_bytes(&mut cookie_secret);
        Endpoint {
            reassembly: Reassembler::new(cfg.reassembly_timeout),
            cfg,
            our_mac1_key: wire::mac1_key(&public.0),
            cookies: CookieChecker::new(wire::cookie_key(&public.0), cookie_secret, now),
            secret,
            public,
            rng,
            peers: BTreeMap::new(),
            index: BTreeMap::new(),
            load: LoadMeter::new(now),
            limiter: RateLimiter::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            epoch: now,
            wall_nanos_at_epoch: wall_nanos,
            last_timestamp: 0,
        }
    }

    pub fn public_key(&self) -> PeerKey {
        self.public
    }

    /// A copy of this endpoint, sessions, counters and RNG included, for fuzz targets
    /// and tests that replay many inputs from one established state instead of redoing
    /// its handshakes (X25519 dominates their time). Never for real traffic: both copies
    /// would seal under the same keys and counters, which reuses nonces.
    pub fn fork_for_testing(&self) -> Endpoint {
        Endpoint {
            cfg: self.cfg.clone(),
            secret: self.secret.clone(),
            public: self.public,
            our_mac1_key: self.our_mac1_key,
            rng: self.rng.clone(),
            peers: self.peers.clone(),
            index: self.index.clone(),
            cookies: self.cookies.clone(),
            load: self.load.clone(),
            limiter: self.limiter.clone(),
            reassembly: self.reassembly.clone(),
            transmits: self.transmits.clone(),
            events: self.events.clone(),
            stats: self.stats,
            epoch: self.epoch,
            wall_nanos_at_epoch: self.wall_nanos_at_epoch,
            last_timestamp: self.last_timestamp,
        }
    }

    pub fn stats(&self) -> Stats {
        let mut s = self.stats;
        s.reassembly_evicted = self.reassembly.stats.evicted;
        s.reassembly_timed_out = self.reassembly.stats.timed_out;
        s
    }

    /// Adds `peer` or updates its address and pre-shared key (used for handshakes we
    /// start; the policy supplies it for handshakes the peer starts).
    pub fn set_peer(&mut self, peer: PeerKey, addr: SocketAddr, psk: Psk) -> Result<(), PeerError> {
        self.set_peer_with(peer, addr, psk, PskId::MEMBER)
    }

    /// Like `set_peer`, naming which PSK our initiations use (a join token's, say).
    /// Existing sessions stay; the next handshake uses the new key.
    pub fn set_peer_with(
        &mut self,
        peer: PeerKey,
        addr: SocketAddr,
        psk: Psk,
        id: PskId,
    ) -> Result<(), PeerError> {
        if peer == self.public {
            return Err(PeerError::Ourselves);
        }
        if let Some(p) = self.peers.get_mut(&peer) {
            p.addr = Some(addr);
            p.psk = psk;
            p.psk_id = id;
            return Ok(());
        }
        if self.peers.len() >= MAX_PEERS {
            return Err(PeerError::TableFull);
        }
        let mut p = Peer::new(&peer, Some(addr), psk);
        p.psk_id = id;
        self.peers.insert(peer, p);
        Ok(())
    }

    /// Forgets `peer`: its sessions stop working at once.
    pub fn remove_peer(&mut self, peer: &PeerKey) {
        if let Some(p) = self.peers.remove(peer) {
            let sessions = [p.current, p.previous, p.next].into_iter().flatten();
            for idx in sessions
                .map(|s| s.local_index)
                .chain(p.pending.map(|h| h.local_index))
            {
                self.index.remove(&idx);
            }
            self.reassembly.forget(*peer);
        }
    }

    /// Whether a session with `peer` is established.
    pub fn is_connected(&self, peer: &PeerKey) -> bool {
        self.peers.get(peer).is_some_and(|p| p.current.is_some())
    }

    /// Which PSK the session currently in use with `peer` was made with: how the layer
    /// above tells a joiner (token PSK) from a member.
    pub fn session_psk_id(&self, peer: &PeerKey) -> Option<PskId> {
        self.peers
            .get(peer)
            .and_then(|p| p.current.as_ref())
            .map(|s| s.psk_id)
    }

    /// The address `peer` was last heard from (or set to).
    pub fn peer_addr(&self, peer: &PeerKey) -> Option<SocketAddr> {
        self.peers.get(peer).and_then(|p| p.addr)
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When `handle_timeout` next needs calling.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers
            .values()
            .filter_map(|p| p.next_deadline(&self.cfg))
            .chain(self.reassembly.next_deadline())
            .min()
    }

    /// Sends `data` to `peer`, starting a handshake (and queueing) if no session is up.
    pub fn send(&mut self, now: Instant, peer: PeerKey, data: &[u8]) -> Result<(), SendError> {
        if data.len() > MAX_MESSAGE_SIZE {
            return Err(SendError::TooLarge(data.len()));
        }
        let p = self
            .peers
            .get_mut(&peer)
            .ok_or(SendError::UnknownPeer(peer))?;
        let datagrams = fragment::fragments_for(data.len()) as u64;
        let usable = p
            .current
            .as_ref()
            .is_some_and(|s| s.can_send(now, &self.cfg, datagrams));
        if usable {
            send_message(
                p,
                now,
                &self.cfg,
                data,
                &mut self.transmits,
                &mut self.stats,
            );
            let rekey = p.pending.is_none()
                && p.current
                    .as_ref()
                    .is_some_and(|s| s.wants_rekey(now, &self.cfg));
            if rekey {
                self.start_handshake(now, peer);
            }
            return Ok(());
        }
        if p.addr.is_none() {
            return Err(SendError::NoAddress(peer));
        }
        if p.queue.len() >= MAX_QUEUED_MESSAGES_PER_PEER
            || p.queued_bytes + data.len() > MAX_QUEUED_BYTES_PER_PEER
        {
            self.stats.queue_full += 1;
            return Err(SendError::QueueFull(peer));
        }
        p.queued_bytes += data.len();
        p.queue.push_back(data.to_vec());
        if p.pending.is_none() {
            self.start_handshake(now, peer);
        }
        Ok(())
    }

    /// Processes one received datagram. `data` is decrypted in place.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &mut [u8],
        policy: &mut dyn PeerPolicy,
    ) {
        self.stats.datagrams_received += 1;
        match wire::parse(data) {
            Err(WireError::Oversized) => self.stats.oversized += 1,
            Err(WireError::Version(_)) => self.stats.bad_version += 1,
            Err(_) => self.stats.malformed += 1,
            Ok(Packet::Init { sender, noise }) => {
                if self.admit_handshake(now, from, data, sender) {
                    self.on_init(now, from, sender, noise, policy);
                }
            }
            Ok(Packet::Response {
                sender,
                receiver,
                noise,
            }) => {
                if self.admit_handshake(now, from, data, sender) {
                    self.on_response(now, from, sender, receiver, noise);
                }
            }
            Ok(Packet::Cookie {
                receiver,
                nonce,
                sealed,
            }) => self.on_cookie(now, receiver, nonce, sealed),
            Ok(Packet::Data { receiver, counter }) => {
                self.on_data(now, from, data, receiver, counter);
            }
        }
    }

    /// Fires whatever timers are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.reassembly.expire(now);
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for key in keys {
            self.expire_sessions(now, key);
            self.peer_timers(now, key);
        }
    }

    fn expire_sessions(&mut self, now: Instant, key: PeerKey) {
        let Some(p) = self.peers.get_mut(&key) else {
            return;
        };
        let grace_over = p.previous_until.is_some_and(|t| t <= now);
        for (slot, force) in [
            (Slot::Current, false),
            (Slot::Previous, grace_over),
            (Slot::Next, false),
        ] {
            let expired = p
                .session_mut(slot)
                .is_some_and(|s| now >= s.expires(&self.cfg));
            if expired || force {
                let gone = match slot {
                    Slot::Current => p.current.take(),
                    Slot::Previous => p.previous.take(),
                    Slot::Next => p.next.take(),
                };
                if let Some(s) = gone {
                    self.index.remove(&s.local_index);
                }
            }
        }
        if p.previous.is_none() {
            p.previous_until = None;
        }
    }

    fn peer_timers(&mut self, now: Instant, key: PeerKey) {
        let cfg = &self.cfg;
        let Some(p) = self.peers.get_mut(&key) else {
            return;
        };
        if p.due(Timer::Retry, now) {
            p.disarm(Timer::Retry);
            let since = p.attempts_since.unwrap_or(now);
            if now.duration_since(since) >= cfg.handshake_attempt_time {
                if let Some(h) = p.pending.take() {
                    self.index.remove(&h.local_index);
                }
                p.attempts_since = None;
                let dropped = p.queue.len();
                p.queue.clear();
                p.queued_bytes = 0;
                self.stats.handshake_gave_up += 1;
                self.events
                    .push_back(Event::Unreachable { peer: key, dropped });
            } else {
                self.start_handshake(now, key);
            }
        }
        let Some(p) = self.peers.get_mut(&key) else {
            return;
        };
        if p.due(Timer::Keepalive, now) {
            p.disarm(Timer::Keepalive);
            send_keepalive(p, now, &self.cfg, &mut self.transmits, &mut self.stats);
        }
        if let Some(every) = self.cfg.persistent_keepalive {
            if p.due(Timer::Persistent, now) {
                p.arm(Timer::Persistent, now + every);
                send_keepalive(p, now, &self.cfg, &mut self.transmits, &mut self.stats);
            }
        }
        if p.due(Timer::ReplyExpected, now) {
            p.disarm(Timer::ReplyExpected);
            if p.pending.is_none() {
                self.start_handshake(now, key);
            }
        }
    }

    /// The cheap checks every handshake datagram passes before any DH: `mac1`, then, when
    /// under load, `mac2` and the per-IP rate limit.
    fn admit_handshake(&mut self, now: Instant, from: SocketAddr, d: &[u8], sender: u32) -> bool {
        if !wire::mac1_valid(d, &self.our_mac1_key) {
            self.stats.mac1_invalid += 1;
            return false;
        }
        if !self
            .load
            .record(now, self.cfg.under_load_handshakes_per_sec)
        {
            return true;
        }
        if self.cookies.needs_rotation(now) {
            let mut s = [0u8; 32];
            self.rng.fill_bytes(&mut s);
            self.cookies.rotate(s, now);
        }
        if !wire::mac2_valid(d, &self.cookies.cookie_for(from)) {
            let mut nonce = [0u8; wire::COOKIE_NONCE_LEN];
            self.rng.fill_bytes(&mut nonce);
            let sealed = self.cookies.seal_reply(from, &wire::mac1_of(d), &nonce);
            self.push(from, wire::cookie_packet(sender, &nonce, &sealed));
            self.stats.cookie_replies_sent += 1;
            return false;
        }
        if !self.limiter.allow(now, from.ip()) {
            self.stats.rate_limited += 1;
            return false;
        }
        true
    }

    fn on_init(
        &mut self,
        now: Instant,
        from: SocketAddr,
        sender: u32,
        noise_msg: &[u8],
        policy: &mut dyn PeerPolicy,
    ) {
        let resp = match Responder::read(&self.secret, noise_msg) {
            Ok(r) => r,
            Err(_) => {
                self.stats.handshake_failed += 1;
                return;
            }
        };
        let key = PeerKey(resp.remote_static);
        if key == self.public {
            self.stats.handshake_denied += 1;
            return;
        }
        // The payload length is fixed by the datagram length check.
        let ts = u64::from_be_bytes(
            resp.payload[..wire::TIMESTAMP_LEN]
                .try_into()
                .expect("invariant: fixed length"),
        );
        let psk_id = PskId(resp.payload[wire::TIMESTAMP_LEN]);
        let Some(psk) = policy.admit_with(&key, from, psk_id) else {
            self.stats.handshake_denied += 1;
            return;
        };
        if !self.peers.contains_key(&key) {
            if self.peers.len() >= MAX_PEERS {
                self.stats.peer_table_full += 1;
                return;
            }
            let mut p = Peer::new(&key, None, psk);
            p.psk_id = psk_id;
            self.peers.insert(key, p);
        }
        let local = self.new_index(key);
        let mut ephemeral = [0u8; 32];
        self.rng.fill_bytes(&mut ephemeral);
        let p = self.peers.get_mut(&key).expect("invariant: inserted above");
        if ts <= p.greatest_timestamp {
            self.index.remove(&local);
            self.stats.handshake_replayed += 1;
            return;
        }
        let mut pkt = wire::response_header(local, sender);
        let Ok(keys) = resp.respond(&psk, ephemeral, &[], &mut pkt) else {
            self.index.remove(&local);
            self.stats.handshake_failed += 1;
            return;
        };
        // The PSK our own initiations use stays as `set_peer` gave it: the peer's choice
        // (a join token's, say) is for its handshakes, and ours name their own id.
        p.greatest_timestamp = ts;
        p.addr = Some(from);
        wire::reserve_macs(&mut pkt);
        wire::seal_macs(&mut pkt, &p.mac1_key, p.fresh_cookie(now));
        p.last_mac1 = Some((local, wire::mac1_of(&pkt)));
        if let Some(old) = p
            .next
            .replace(Session::new(local, sender, &keys, now, false, psk_id))
        {
            self.index.remove(&old.local_index);
        }
        self.stats.handshakes_responded += 1;
        self.push(from, pkt);
    }

    fn on_response(
        &mut self,
        now: Instant,
        from: SocketAddr,
        sender: u32,
        receiver: u32,
        msg: &[u8],
    ) {
        let Some(&key) = self.index.get(&receiver) else {
            self.stats.unknown_index += 1;
            return;
        };
        let p = self
            .peers
            .get_mut(&key)
            .expect("invariant: indexed peers exist");
        let Some(pending) = p.pending.as_ref().filter(|h| h.local_index == receiver) else {
            self.stats.unknown_index += 1;
            return;
        };
        let Ok((keys, _)) = pending.hs.finish(msg) else {
            self.stats.handshake_failed += 1;
            return;
        };
        let psk_id = pending.psk_id;
        p.pending = None;
        p.attempts_since = None;
        p.disarm(Timer::Retry);
        p.addr = Some(from);
        let session = Session::new(receiver, sender, &keys, now, true, psk_id);
        install_current(p, session, now, &self.cfg, &mut self.index);
        self.stats.handshakes_completed += 1;
        self.events.push_back(Event::Connected { peer: key });
        // The responder only trusts the session once it carries data; confirm it now.
        if p.queue.is_empty() {
            send_keepalive(p, now, &self.cfg, &mut self.transmits, &mut self.stats);
        } else {
            flush_queue(p, now, &self.cfg, &mut self.transmits, &mut self.stats);
        }
    }

    fn on_cookie(&mut self, now: Instant, receiver: u32, nonce: &[u8; 24], sealed: &[u8]) {
        let Some(key) = self.index.get(&receiver) else {
            self.stats.unknown_index += 1;
            return;
        };
        let p = self
            .peers
            .get_mut(key)
            .expect("invariant: indexed peers exist");
        let Some((_, mac1)) = p.last_mac1.filter(|(i, _)| *i == receiver) else {
            self.stats.unknown_index += 1;
            return;
        };
        match dos::open_cookie(&p.cookie_key, &mac1, nonce, sealed) {
            Some(c) => {
                p.cookie = Some((c, now));
                self.stats.cookies_received += 1;
            }
            None => self.stats.cookie_invalid += 1,
        }
    }

    fn on_data(
        &mut self,
        now: Instant,
        from: SocketAddr,
        d: &mut [u8],
        receiver: u32,
        counter: u64,
    ) {
        let Some(&key) = self.index.get(&receiver) else {
            self.stats.unknown_index += 1;
            return;
        };
        let cfg = &self.cfg;
        let p = self
            .peers
            .get_mut(&key)
            .expect("invariant: indexed peers exist");
        let Some(slot) = p.slot_of(receiver) else {
            self.stats.unknown_index += 1; // a pending handshake's index
            return;
        };
        let s = p.session_mut(slot).expect("invariant: slot_of found it");
        if now >= s.expires(cfg) {
            self.stats.expired_session += 1;
            return;
        }
        if counter >= cfg.reject_after_messages || !s.replay.check(counter) {
            self.stats.replayed += 1;
            return;
        }
        let body_len = d.len() - DATA_HEADER_LEN - TAG_LEN;
        let (body, tag) = d[DATA_HEADER_LEN..].split_at_mut(body_len);
        if !s.recv.open_in_place(counter, &[], body, tag) {
            self.stats.auth_failed += 1;
            return;
        }
        s.replay.update(counter);
        let rekey_due = slot == Slot::Current
            && s.initiator
            && now.duration_since(s.created)
                >= cfg
                    .reject_after_time
                    .saturating_sub(cfg.keepalive_timeout + cfg.handshake_retry);
        p.addr = Some(from);
        p.disarm(Timer::ReplyExpected);
        if slot == Slot::Previous && crossing_pick(p, self.public < key, cfg) {
            // Handshakes crossed: each side holds both sessions, and the peer sends on
            // the one we put aside. Both settle on the session the lower key initiated,
            // or each would send on what the other keeps only for PREVIOUS_SESSION_GRACE.
            let (cur, prev) = (p.current.take(), p.previous.take());
            p.current = prev;
            p.previous = cur;
            p.previous_until = Some(now + PREVIOUS_SESSION_GRACE);
        }
        if slot == Slot::Next {
            let s = p.next.take().expect("invariant: slot is Next");
            install_current(p, s, now, cfg, &mut self.index);
            self.events.push_back(Event::Connected { peer: key });
            flush_queue(p, now, cfg, &mut self.transmits, &mut self.stats);
        }
        match wire::parse_inner(body) {
            Ok(Inner::Keepalive) => self.stats.keepalives_received += 1,
            Ok(Inner::Fragment(f)) => {
                p.arm_if_idle(Timer::Keepalive, now + cfg.keepalive_timeout);
                match self.reassembly.insert(now, key, f) {
                    Ok(Some(data)) => {
                        self.stats.messages_received += 1;
                        self.events.push_back(Event::Message { peer: key, data });
                    }
                    Ok(None) => {}
                    Err(_) => self.stats.inner_malformed += 1,
                }
            }
            Err(_) => self.stats.inner_malformed += 1,
        }
        let p = self.peers.get(&key).expect("invariant: present");
        if rekey_due && p.pending.is_none() {
            self.start_handshake(now, key);
        }
    }

    /// Sends a fresh initiation to `key` (a retry starts over with new ephemeral keys).
    fn start_handshake(&mut self, now: Instant, key: PeerKey) {
        let Some(addr) = self.peers.get(&key).and_then(|p| p.addr) else {
            return;
        };
        let local = self.new_index(key);
        let ts = self.timestamp(now);
        let mut ephemeral = [0u8; 32];
        self.rng.fill_bytes(&mut ephemeral);
        let retry_ms = u64::try_from(self.cfg.handshake_retry.as_millis()).unwrap_or(u64::MAX);
        let jitter_ms = self.rng.next_u64() % (retry_ms / 3 + 1);
        let p = self.peers.get_mut(&key).expect("invariant: checked above");
        let mut pkt = wire::init_header(local);
        let mut payload = [0u8; wire::INIT_PAYLOAD_LEN];
        payload[..wire::TIMESTAMP_LEN].copy_from_slice(&ts.to_be_bytes());
        payload[wire::TIMESTAMP_LEN] = p.psk_id.0;
        let hs = match Initiator::start(&self.secret, &key.0, &p.psk, ephemeral, &payload, &mut pkt)
        {
            Ok(hs) => hs,
            Err(_) => {
                // The peer's static key is a low-order point: no handshake can succeed.
                self.index.remove(&local);
                self.stats.handshake_failed += 1;
                return;
            }
        };
        wire::reserve_macs(&mut pkt);
        wire::seal_macs(&mut pkt, &p.mac1_key, p.fresh_cookie(now));
        p.last_mac1 = Some((local, wire::mac1_of(&pkt)));
        if let Some(old) = p.pending.replace(Pending {
            hs,
            local_index: local,
            psk_id: p.psk_id,
        }) {
            self.index.remove(&old.local_index);
        }
        p.attempts_since.get_or_insert(now);
        p.arm(
            Timer::Retry,
            now + self.cfg.handshake_retry + Duration::from_millis(jitter_ms),
        );
        self.stats.handshakes_initiated += 1;
        self.push(addr, pkt);
    }

    /// A random local index not in use (zero is never handed out, which makes a zeroed
    /// header easy to spot).
    fn new_index(&mut self, key: PeerKey) -> u32 {
        loop {
            let i = self.rng.next_u32();
            if i != 0 && !self.index.contains_key(&i) {
                self.index.insert(i, key);
                return i;
            }
        }
    }

    fn timestamp(&mut self, now: Instant) -> u64 {
        let since = u64::try_from(now.duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        let t = self
            .wall_nanos_at_epoch
            .saturating_add(since)
            .max(self.last_timestamp + 1);
        self.last_timestamp = t;
        t
    }

    fn push(&mut self, dest: SocketAddr, data: Vec<u8>) {
        self.stats.datagrams_sent += 1;
        self.transmits.push_back(Transmit { dest, data });
    }
}

/// Whether the peer's use of our previous session means the two crossed handshakes and
/// that session is the one both should keep: made within two handshake retries of the
/// current one (a rekey's previous is minutes older), and initiated by the lower key
/// (`we_are_lower`), so both sides pick the same.
fn crossing_pick(p: &Peer, we_are_lower: bool, cfg: &Config) -> bool {
    let (Some(cur), Some(prev)) = (p.current.as_ref(), p.previous.as_ref()) else {
        return false;
    };
    let close =
        cur.created.max(prev.created) - cur.created.min(prev.created) <= cfg.handshake_retry * 2;
    close && prev.initiator == we_are_lower && cur.initiator != prev.initiator
}

/// Makes `s` the current session; the old current one lingers as previous.
fn install_current(
    p: &mut Peer,
    s: Session,
    now: Instant,
    cfg: &Config,
    index: &mut BTreeMap<u32, PeerKey>,
) {
    if let Some(every) = cfg.persistent_keepalive {
        p.arm_if_idle(Timer::Persistent, now + every);
    }
    if let Some(old) = p.current.take() {
        if let Some(older) = p.previous.replace(old) {
            index.remove(&older.local_index);
        }
        p.previous_until = Some(now + PREVIOUS_SESSION_GRACE);
    }
    p.current = Some(s);
}

fn send_message(
    p: &mut Peer,
    now: Instant,
    cfg: &Config,
    data: &[u8],
    out: &mut VecDeque<Transmit>,
    stats: &mut Stats,
) {
    let (Some(s), Some(dest)) = (p.current.as_mut(), p.addr) else {
        return;
    };
    let msg_id = p.next_msg_id;
    p.next_msg_id = p.next_msg_id.wrapping_add(1);
    fragment::split(msg_id, data, |f| {
        let pkt = s.seal(|buf| {
            f.write_header(buf);
            buf.extend_from_slice(f.bytes);
        });
        stats.datagrams_sent += 1;
        out.push_back(Transmit { dest, data: pkt });
    });
    stats.messages_sent += 1;
    p.disarm(Timer::Keepalive);
    p.arm_if_idle(
        Timer::ReplyExpected,
        now + cfg.keepalive_timeout + cfg.handshake_retry,
    );
}

fn send_keepalive(
    p: &mut Peer,
    now: Instant,
    cfg: &Config,
    out: &mut VecDeque<Transmit>,
    stats: &mut Stats,
) {
    let (Some(s), Some(dest)) = (p.current.as_mut(), p.addr) else {
        return;
    };
    if !s.can_send(now, cfg, 1) {
        return;
    }
    let pkt = s.seal(|buf| buf.push(wire::INNER_KEEPALIVE));
    stats.datagrams_sent += 1;
    stats.keepalives_sent += 1;
    out.push_back(Transmit { dest, data: pkt });
}

fn flush_queue(
    p: &mut Peer,
    now: Instant,
    cfg: &Config,
    out: &mut VecDeque<Transmit>,
    stats: &mut Stats,
) {
    while let Some(msg) = p.queue.pop_front() {
        p.queued_bytes -= msg.len();
        let n = fragment::fragments_for(msg.len()) as u64;
        if !p.current.as_ref().is_some_and(|s| s.can_send(now, cfg, n)) {
            p.queued_bytes += msg.len();
            p.queue.push_front(msg);
            return;
        }
        send_message(p, now, cfg, &msg, out, stats);
    }
}

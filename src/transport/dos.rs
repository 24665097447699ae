//! Denial-of-service defences for the handshake path, which is the only place a peer can
//! make us do Diffie-Hellman work.
//!
//! 1. `mac1` (checked in `wire`) proves the sender knows our public key; without it a
//!    datagram costs one BLAKE2s and is dropped.
//! 2. When more initiations arrive than [`UNDER_LOAD_HANDSHAKES_PER_SEC`], we are "under
//!    load" and also require `mac2`, a MAC keyed by a cookie that only the holder of the
//!    source address can have received from us. Without it, the sender gets a cookie
//!    reply (one XChaCha20-Poly1305 seal, no DH) instead of a handshake.
//! 3. Under load, senders with a valid cookie are rate-limited per source IP.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};

use super::crypto::{mac16, Hash, Mac16};
use super::wire::COOKIE_NONCE_LEN;

/// Handshakes per second we handle without asking for cookies. A whole cluster of edge
/// nodes restarting at once makes a few dozen; a Pi does a few thousand X25519 a second.
pub const UNDER_LOAD_HANDSHAKES_PER_SEC: u32 = 200;
/// How long we keep asking for cookies after the load was last seen.
pub const UNDER_LOAD_LINGER: Duration = Duration::from_secs(1);
/// The secret behind cookies is replaced this often, so a cookie stops working soon
/// after the address it was issued to changes hands.
pub const COOKIE_SECRET_LIFETIME: Duration = Duration::from_secs(120);
/// An initiator trusts a received cookie a little less long than the responder will.
pub const COOKIE_USABLE_FOR: Duration = Duration::from_secs(110);
/// Handshakes per second one source IP gets while we are under load.
pub const HANDSHAKES_PER_SEC_PER_IP: u64 = 20;
/// Burst of handshakes one source IP may spend at once while under load.
pub const HANDSHAKE_BURST_PER_IP: u64 = 5;
/// Source IPs tracked by the rate limiter; beyond this, unknown IPs are refused until
/// idle entries are swept, so a spoofing flood cannot grow our memory.
pub const RATE_LIMIT_TABLE_SIZE: usize = 4096;

const NANOS_PER_TOKEN: u64 = 1_000_000_000 / HANDSHAKES_PER_SEC_PER_IP;
const BUCKET_NANOS: u64 = NANOS_PER_TOKEN * HANDSHAKE_BURST_PER_IP;

/// Responder side: issues and checks cookies.
#[derive(Clone)]
pub struct CookieChecker {
    secret: [u8; 32],
    born: Instant,
    /// Seals cookie replies: HASH(LABEL_COOKIE || our public key).
    seal_key: Hash,
}

impl CookieChecker {
    pub fn new(seal_key: Hash, secret: [u8; 32], now: Instant) -> Self {
        CookieChecker {
            secret,
            born: now,
            seal_key,
        }
    }

    /// Whether the secret is due for replacement; the caller supplies fresh randomness.
    pub fn needs_rotation(&self, now: Instant) -> bool {
        now.duration_since(self.born) >= COOKIE_SECRET_LIFETIME
    }

    pub fn rotate(&mut self, secret: [u8; 32], now: Instant) {
        self.secret = secret;
        self.born = now;
    }

    /// The cookie a given source address should be using.
    pub fn cookie_for(&self, from: SocketAddr) -> Mac16 {
        let port = from.port().to_le_bytes();
        match from.ip() {
            IpAddr::V4(ip) => mac16(&self.secret, &[&ip.octets(), &port]),
            IpAddr::V6(ip) => mac16(&self.secret, &[&ip.octets(), &port]),
        }
    }

    /// Seals the cookie for `from`, bound to the `mac1` of the message that asked.
    pub fn seal_reply(&self, from: SocketAddr, mac1: &Mac16, nonce: &[u8; 24]) -> Vec<u8> {
        let cookie = self.cookie_for(from);
        XChaCha20Poly1305::new((&self.seal_key).into())
            .encrypt(
                nonce.into(),
                Payload {
                    msg: &cookie,
                    aad: mac1,
                },
            )
            .expect("invariant: a 16-byte plaintext is within AEAD limits")
    }
}

/// Initiator side: opens a cookie reply with HASH(LABEL_COOKIE || responder's key).
pub fn open_cookie(
    key: &Hash,
    mac1: &Mac16,
    nonce: &[u8; COOKIE_NONCE_LEN],
    sealed: &[u8],
) -> Option<Mac16> {
    let plain = XChaCha20Poly1305::new(key.into())
        .decrypt(
            nonce.into(),
            Payload {
                msg: sealed,
                aad: mac1,
            },
        )
        .ok()?;
    plain.try_into().ok()
}

/// Counts handshake initiations per second to decide when we are under load.
#[derive(Clone)]
pub struct LoadMeter {
    window_start: Instant,
    count: u32,
    loaded_until: Option<Instant>,
}

impl LoadMeter {
    pub fn new(now: Instant) -> Self {
        LoadMeter {
            window_start: now,
            count: 0,
            loaded_until: None,
        }
    }

    /// Records one initiation and tells whether we are now under load.
    pub fn record(&mut self, now: Instant, threshold: u32) -> bool {
        if now.duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        if self.count > threshold {
            self.loaded_until = Some(now + UNDER_LOAD_LINGER);
        }
        self.loaded_until.is_some_and(|t| now < t)
    }
}

/// Token buckets per source IP.
#[derive(Clone)]
pub struct RateLimiter {
    buckets: BTreeMap<IpAddr, (u64, Instant)>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimiter {
    pub fn new() -> Self {
        RateLimiter {
            buckets: BTreeMap::new(),
        }
    }

    /// Spends a token for `ip`; false means drop the handshake.
    pub fn allow(&mut self, now: Instant, ip: IpAddr) -> bool {
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= RATE_LIMIT_TABLE_SIZE {
            self.sweep(now);
            if self.buckets.len() >= RATE_LIMIT_TABLE_SIZE {
                return false;
            }
        }
        let (tokens, last) = self.buckets.entry(ip).or_insert((BUCKET_NANOS, now));
        let elapsed = u64::try_from(now.duration_since(*last).as_nanos()).unwrap_or(u64::MAX);
        *tokens = tokens.saturating_add(elapsed).min(BUCKET_NANOS);
        *last = now;
        if *tokens >= NANOS_PER_TOKEN {
            *tokens -= NANOS_PER_TOKEN;
            true
        } else {
            false
        }
    }

    /// Drops buckets that have refilled completely: they hold no information.
    fn sweep(&mut self, now: Instant) {
        self.buckets.retain(|_, (tokens, last)| {
            let elapsed = u64::try_from(now.duration_since(*last).as_nanos()).unwrap_or(u64::MAX);
            tokens.saturating_add(elapsed) < BUCKET_NANOS
        });
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cookie_round_trip_bound_to_mac1_and_address() {
        let now = Instant::now();
        let key = [4u8; 32];
        let c = CookieChecker::new(key, [9u8; 32], now);
        let a = addr("127.0.0.1:1000");
        let sealed = c.seal_reply(a, &[1; 16], &[2; 24]);
        assert_eq!(
            open_cookie(&key, &[1; 16], &[2; 24], &sealed),
            Some(c.cookie_for(a))
        );
        assert_eq!(
            open_cookie(&key, &[3; 16], &[2; 24], &sealed),
            None,
            "other mac1"
        );
        assert_eq!(
            open_cookie(&[5; 32], &[1; 16], &[2; 24], &sealed),
            None,
            "other key"
        );
        assert_ne!(c.cookie_for(a), c.cookie_for(addr("127.0.0.1:1001")));
        assert_ne!(c.cookie_for(a), c.cookie_for(addr("127.0.0.2:1000")));
    }

    #[test]
    fn cookie_secret_rotates() {
        let now = Instant::now();
        let mut c = CookieChecker::new([0; 32], [9u8; 32], now);
        let a = addr("[::1]:5");
        let before = c.cookie_for(a);
        assert!(!c.needs_rotation(now + Duration::from_secs(119)));
        assert!(c.needs_rotation(now + COOKIE_SECRET_LIFETIME));
        c.rotate([8; 32], now + COOKIE_SECRET_LIFETIME);
        assert_ne!(before, c.cookie_for(a));
    }

    #[test]
    fn load_meter_trips_and_recovers() {
        let t = Instant::now();
        let mut m = LoadMeter::new(t);
        for _ in 0..3 {
            assert!(!m.record(t, 3));
        }
        assert!(m.record(t, 3), "fourth in a second trips it");
        assert!(m.record(t + Duration::from_millis(500), 3));
        assert!(
            !m.record(t + Duration::from_millis(1600), 3),
            "lingers one second"
        );
    }

    #[test]
    fn rate_limiter_bursts_then_refills() {
        let t = Instant::now();
        let mut r = RateLimiter::new();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for i in 0..HANDSHAKE_BURST_PER_IP {
            assert!(r.allow(t, ip), "burst {i}");
        }
        assert!(!r.allow(t, ip));
        assert!(
            r.allow(t, "10.0.0.2".parse().unwrap()),
            "other IPs unaffected"
        );
        let later = t + Duration::from_nanos(NANOS_PER_TOKEN);
        assert!(r.allow(later, ip), "one token after 1/rate seconds");
        assert!(!r.allow(later, ip));
    }

    #[test]
    fn rate_limiter_table_is_bounded() {
        let t = Instant::now();
        let mut r = RateLimiter::new();
        for i in 0..RATE_LIMIT_TABLE_SIZE as u32 + 10 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(i));
            let _ = r.allow(t, ip);
        }
        assert_eq!(r.len(), RATE_LIMIT_TABLE_SIZE);
        // Once buckets have refilled they are swept and new IPs get in.
        let later = t + Duration::from_secs(1);
        assert!(r.allow(later, "192.0.2.1".parse().unwrap()));
        assert_eq!(r.len(), 1);
    }
}

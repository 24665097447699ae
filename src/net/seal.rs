//! The encrypted overlay's wire format (`--opt encrypted`), pure: an Ethernet frame
//! sealed for the other nodes of its network and opened on arrival. The data path that
//! carries these datagrams (a TAP device on the network's bridge, a UDP socket) is to
//! come; ARCHITECTURE.md says why the cluster's own keys rather than kernel IPsec.
//!
//! ```text
//! version u8 | reserved u8 ×3 | VNI u32 | key epoch u32 | sender u64 | session u64 | counter u64
//! | ChaCha20-Poly1305(frame) | tag (16)
//! ```
//!
//! All of the header is authenticated. Every node of a network holds the network's key
//! (made by the leader, rotated by epoch, sent over the encrypted control channel);
//! each sender seals under a key of its own derived from it, its node id and a session
//! drawn at random when its process starts, so one counter per sender never repeats a
//! nonce: not across senders, and not across a restart that begins counting again. A
//! receiver checks a (sender, session)'s replay window before any AEAD work and records
//! a counter only once the frame authenticated. Nothing a peer sends panics: every
//! field is checked, and a datagram that fails any check is dropped with its reason.

use std::collections::HashMap;

use crate::transport::crypto::{hmac, Cipher, TAG_LEN};
use crate::transport::replay::ReplayWindow;

/// The UDP port encrypted overlays use between nodes (VXLAN's plus one).
pub const PORT: u16 = 4790;

const VERSION: u8 = 1;

/// Bytes before the sealed frame.
pub const HEADER_LEN: usize = 36;

/// What carrying a packet costs on the wire: outer IPv4 and UDP headers, the seal's
/// header and tag, and the inner Ethernet header (as VXLAN's 50 counts it). An encrypted
/// network's MTU is the underlay's less this.
pub const OVERHEAD: usize = 20 + 8 + HEADER_LEN + TAG_LEN + 14;

/// Senders a receiver keeps keys and replay windows for, per network; past it the
/// oldest session is forgotten (its frames then fail as replays of nothing, harmlessly:
/// a forgotten sender is a restarted or departed one).
pub const MAX_SESSIONS: usize = 1024;

/// Keys a receiver accepts at once: the current epoch's and the one before, so frames in
/// flight across a rotation still open.
const KEYS: usize = 2;

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Drop {
    #[error("shorter than a header and tag")]
    Short,
    #[error("unknown version {0}")]
    Version(u8),
    #[error("for network {0}, not this one")]
    Network(u32),
    #[error("sealed under key epoch {0}, which this node does not hold")]
    Epoch(u32),
    #[error("counter replayed or older than the window")]
    Replayed,
    #[error("failed authentication")]
    Forged,
}

/// A network's key at one epoch.
#[derive(Clone)]
pub struct NetKey {
    pub epoch: u32,
    pub key: [u8; 32],
}

fn sender_key(net: &NetKey, vni: u32, sender: u64, session: u64) -> Cipher {
    let key = hmac(
        &net.key,
        &[
            b"swarmlet overlay frame key v1",
            &vni.to_be_bytes(),
            &net.epoch.to_be_bytes(),
            &sender.to_be_bytes(),
            &session.to_be_bytes(),
        ],
    );
    Cipher::new(&key)
}

/// Seals this node's frames for one network.
pub struct Sealer {
    vni: u32,
    epoch: u32,
    sender: u64,
    session: u64,
    counter: u64,
    cipher: Cipher,
}

impl Sealer {
    /// `session` must be drawn at random once per process (or per key change).
    pub fn new(key: &NetKey, vni: u32, sender: u64, session: u64) -> Sealer {
        Sealer {
            vni,
            epoch: key.epoch,
            sender,
            session,
            counter: 0,
            cipher: sender_key(key, vni, sender, session),
        }
    }

    /// The datagram carrying `frame`, written over `out`. None once the counter is
    /// spent (2^64 frames: a new session is needed, never a reused nonce).
    pub fn seal(&mut self, frame: &[u8], out: &mut Vec<u8>) -> Option<()> {
        let n = self.counter;
        self.counter = n.checked_add(1)?;
        out.clear();
        out.push(VERSION);
        out.extend_from_slice(&[0; 3]);
        out.extend_from_slice(&self.vni.to_be_bytes());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.sender.to_be_bytes());
        out.extend_from_slice(&self.session.to_be_bytes());
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(frame);
        let (header, body) = out.split_at_mut(HEADER_LEN);
        let tag = self.cipher.seal_in_place(n, header, body);
        out.extend_from_slice(&tag);
        Some(())
    }
}

struct Session {
    cipher: Cipher,
    window: ReplayWindow,
    /// When it last opened a frame, in calls to `open` (for eviction).
    used: u64,
}

/// Opens the frames of one network sent by the other nodes.
pub struct Opener {
    vni: u32,
    keys: Vec<NetKey>,
    sessions: HashMap<(u32, u64, u64), Session>,
    clock: u64,
}

impl Opener {
    pub fn new(vni: u32, key: NetKey) -> Opener {
        Opener {
            vni,
            keys: vec![key],
            sessions: HashMap::new(),
            clock: 0,
        }
    }

    /// A rotation: `key` becomes current and the newest older one is still accepted.
    pub fn rotate(&mut self, key: NetKey) {
        if self.keys.iter().any(|k| k.epoch == key.epoch) {
            return;
        }
        self.keys.insert(0, key);
        self.keys.truncate(KEYS);
        let held: Vec<u32> = self.keys.iter().map(|k| k.epoch).collect();
        self.sessions
            .retain(|(epoch, _, _), _| held.contains(epoch));
    }

    /// The frame a datagram carries, decrypted in place: its sender and the frame.
    pub fn open<'a>(&mut self, datagram: &'a mut [u8]) -> Result<(u64, &'a [u8]), Drop> {
        if datagram.len() < HEADER_LEN + TAG_LEN {
            return Err(Drop::Short);
        }
        let field = |at: usize, len: usize| -> u64 {
            datagram[at..at + len]
                .iter()
                .fold(0u64, |v, b| v << 8 | u64::from(*b))
        };
        #[allow(clippy::cast_possible_truncation)] // four bytes read into a u64
        let (vni, epoch) = (field(4, 4) as u32, field(8, 4) as u32);
        let (sender, session, counter) = (field(12, 8), field(20, 8), field(28, 8));
        if datagram[0] != VERSION {
            return Err(Drop::Version(datagram[0]));
        }
        if vni != self.vni {
            return Err(Drop::Network(vni));
        }
        let id = (epoch, sender, session);
        let tag_at = datagram.len() - TAG_LEN;
        let (rest, tag) = datagram.split_at_mut(tag_at);
        let (header, body) = rest.split_at_mut(HEADER_LEN);
        self.clock += 1;
        if let Some(s) = self.sessions.get_mut(&id) {
            if !s.window.check(counter) {
                return Err(Drop::Replayed);
            }
            if !s.cipher.open_in_place(counter, header, body, tag) {
                return Err(Drop::Forged);
            }
            s.window.update(counter);
            s.used = self.clock;
        } else {
            // A sender not seen yet: its frame must authenticate before it takes a place
            // (a flood of forgeries must not push real senders out).
            let key = self
                .keys
                .iter()
                .find(|k| k.epoch == epoch)
                .ok_or(Drop::Epoch(epoch))?;
            let cipher = sender_key(key, vni, sender, session);
            if !cipher.open_in_place(counter, header, body, tag) {
                return Err(Drop::Forged);
            }
            if self.sessions.len() >= MAX_SESSIONS {
                let oldest = self
                    .sessions
                    .iter()
                    .min_by_key(|(_, s)| s.used)
                    .map(|(k, _)| *k);
                if let Some(k) = oldest {
                    self.sessions.remove(&k);
                }
            }
            let mut window = ReplayWindow::default();
            window.update(counter);
            self.sessions.insert(
                id,
                Session {
                    cipher,
                    window,
                    used: self.clock,
                },
            );
        }
        Ok((sender, &datagram[HEADER_LEN..tag_at]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(epoch: u32, b: u8) -> NetKey {
        NetKey {
            epoch,
            key: [b; 32],
        }
    }

    const FRAME: &[u8] = b"\xff\xff\xff\xff\xff\xff\x02\x42\x0a\x00\x01\x05\x08\x06 an ARP request";

    #[test]
    fn a_sealed_frame_opens_once_and_hides_its_payload() {
        let mut tx = Sealer::new(&key(1, 7), 4097, 11, 99);
        let mut rx = Opener::new(4097, key(1, 7));
        let mut d = Vec::new();
        tx.seal(FRAME, &mut d).unwrap();
        assert_eq!(d.len(), FRAME.len() + HEADER_LEN + TAG_LEN);
        assert!(
            !d.windows(11).any(|w| w == b"ARP request"),
            "no clear text on the wire"
        );
        let mut again = d.clone();
        assert_eq!(rx.open(&mut d).unwrap(), (11, FRAME));
        assert_eq!(rx.open(&mut again), Err(Drop::Replayed));
    }

    #[test]
    fn senders_and_sessions_never_share_a_nonce() {
        let k = key(1, 7);
        let (mut a, mut b) = (Sealer::new(&k, 1, 1, 5), Sealer::new(&k, 1, 2, 5));
        let mut restarted = Sealer::new(&k, 1, 1, 6);
        let (mut da, mut db, mut dr) = (Vec::new(), Vec::new(), Vec::new());
        a.seal(FRAME, &mut da).unwrap();
        b.seal(FRAME, &mut db).unwrap();
        restarted.seal(FRAME, &mut dr).unwrap();
        // Same counter, same frame: different ciphertexts (different keys).
        assert_ne!(da[HEADER_LEN..], db[HEADER_LEN..]);
        assert_ne!(da[HEADER_LEN..], dr[HEADER_LEN..]);
        let mut rx = Opener::new(1, k);
        for d in [&mut da, &mut db, &mut dr] {
            assert_eq!(rx.open(d).unwrap().1, FRAME);
        }
    }

    #[test]
    fn every_altered_byte_and_every_wrong_key_is_refused() {
        let mut tx = Sealer::new(&key(1, 7), 9, 3, 4);
        let mut d = Vec::new();
        tx.seal(FRAME, &mut d).unwrap();
        for i in 0..d.len() {
            let mut bad = d.clone();
            bad[i] ^= 0x20;
            let mut rx = Opener::new(9, key(1, 7));
            assert!(rx.open(&mut bad).is_err(), "byte {i} altered was accepted");
        }
        let mut other = Opener::new(9, key(1, 8));
        assert_eq!(other.open(&mut d.clone()), Err(Drop::Forged));
        assert_eq!(
            Opener::new(10, key(1, 7)).open(&mut d.clone()),
            Err(Drop::Network(9))
        );
        assert_eq!(
            Opener::new(9, key(2, 7)).open(&mut d.clone()),
            Err(Drop::Epoch(1))
        );
        assert_eq!(
            other.open(&mut d[..HEADER_LEN + TAG_LEN - 1]),
            Err(Drop::Short)
        );
        let mut v = d.clone();
        v[0] = 2;
        assert_eq!(other.open(&mut v), Err(Drop::Version(2)));
        assert!(other.sessions.is_empty(), "forgeries leave no state");
    }

    #[test]
    fn a_rotation_keeps_the_previous_epoch_only() {
        let mut rx = Opener::new(1, key(1, 1));
        rx.rotate(key(2, 2));
        rx.rotate(key(2, 2));
        let mut d = Vec::new();
        Sealer::new(&key(1, 1), 1, 1, 1)
            .seal(FRAME, &mut d)
            .unwrap();
        assert!(rx.open(&mut d.clone()).is_ok());
        rx.rotate(key(3, 3));
        assert_eq!(rx.open(&mut d), Err(Drop::Epoch(1)));
    }

    #[test]
    fn reordering_within_the_window_is_accepted_and_sessions_are_bounded() {
        let k = key(1, 7);
        let mut tx = Sealer::new(&k, 1, 1, 1);
        let mut ds: Vec<Vec<u8>> = (0..10)
            .map(|_| {
                let mut d = Vec::new();
                tx.seal(FRAME, &mut d).unwrap();
                d
            })
            .collect();
        let mut rx = Opener::new(1, k.clone());
        for i in [9, 0, 5, 1, 8] {
            assert!(rx.open(&mut ds[i]).is_ok(), "frame {i}");
        }
        for s in 0..(MAX_SESSIONS as u64 + 10) {
            let mut d = Vec::new();
            Sealer::new(&k, 1, 2, s).seal(FRAME, &mut d).unwrap();
            rx.open(&mut d).unwrap();
        }
        assert_eq!(rx.sessions.len(), MAX_SESSIONS);
    }
}

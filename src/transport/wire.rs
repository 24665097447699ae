//! Datagram layouts. Every datagram starts with a version byte and a type byte; the rest
//! is fixed-size except for data. Integers are little-endian.
//!
//! ```text
//! initiation  (143): ver type sender:u32 | noise msg1 (32 e, 48 s, 25 ts+psk id) | mac1 mac2
//! response     (90): ver type sender:u32 receiver:u32 | noise msg2 (32 e, 16) | mac1 mac2
//! cookie reply (62): ver type receiver:u32 nonce:24 sealed-cookie:32
//! data      (>= 30): ver type receiver:u32 counter:u64 | sealed inner | tag:16
//! inner plaintext:   kind:u8 = 0 keepalive (nothing else)
//!                    kind:u8 = 1 fragment: msg_id:u32 index:u16 count:u16 bytes...
//! ```
//!
//! The data header is not fed to the AEAD as associated data: the counter is the nonce
//! and the receiver index only selects the key, so tampering with either fails the tag.
//! This also keeps transport messages byte-compatible with plain Noise transport messages.

use super::crypto::{mac16, Hash, Mac16, MAC_LEN, TAG_LEN};
use super::noise;

/// The only wire version this build speaks.
pub const VERSION: u8 = 1;

pub const TYPE_INIT: u8 = 1;
pub const TYPE_RESPONSE: u8 = 2;
pub const TYPE_COOKIE: u8 = 3;
pub const TYPE_DATA: u8 = 4;

/// Largest datagram we send or accept: an IPv6 minimum-MTU packet (1280) less the IPv6
/// (40) and UDP (8) headers, so nothing is ever fragmented by IP on any path.
pub const MAX_DATAGRAM: usize = 1280 - 40 - 8;

/// The initiation payload: the sender's handshake timestamp (8 bytes, big-endian) and
/// the id of the pre-shared key it used (1 byte), so the responder knows which PSK to
/// answer with (a member's, or a join token's).
pub const TIMESTAMP_LEN: usize = 8;
pub const INIT_PAYLOAD_LEN: usize = TIMESTAMP_LEN + 1;
pub const INIT_NOISE_LEN: usize = noise::init_len(INIT_PAYLOAD_LEN);
pub const RESPONSE_NOISE_LEN: usize = noise::response_len(0);
pub const INIT_LEN: usize = 6 + INIT_NOISE_LEN + 2 * MAC_LEN;
pub const RESPONSE_LEN: usize = 10 + RESPONSE_NOISE_LEN + 2 * MAC_LEN;
pub const COOKIE_NONCE_LEN: usize = 24;
pub const COOKIE_LEN: usize = 6 + COOKIE_NONCE_LEN + MAC_LEN + TAG_LEN;
pub const DATA_HEADER_LEN: usize = 14;
/// Smallest data datagram: header and tag around an empty plaintext.
pub const DATA_MIN_LEN: usize = DATA_HEADER_LEN + TAG_LEN;

pub const INNER_KEEPALIVE: u8 = 0;
pub const INNER_FRAGMENT: u8 = 1;
pub const FRAGMENT_HEADER_LEN: usize = 9;
/// Message bytes one data datagram carries.
pub const FRAGMENT_PAYLOAD: usize = MAX_DATAGRAM - DATA_MIN_LEN - FRAGMENT_HEADER_LEN;

/// Domain-separation labels for the MAC and cookie keys.
pub const LABEL_MAC1: &[u8] = b"swarmlet-mac1---";
pub const LABEL_COOKIE: &[u8] = b"swarmlet-cookie-";

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("datagram is empty or shorter than its header")]
    Short,
    #[error("datagram is longer than {MAX_DATAGRAM} bytes")]
    Oversized,
    #[error("unknown wire version {0}")]
    Version(u8),
    #[error("unknown datagram type {0}")]
    Type(u8),
    #[error("datagram length does not match its type")]
    Length,
}

/// A parsed view of a datagram, borrowing from it.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    Init {
        sender: u32,
        noise: &'a [u8],
    },
    Response {
        sender: u32,
        receiver: u32,
        noise: &'a [u8],
    },
    Cookie {
        receiver: u32,
        nonce: &'a [u8; COOKIE_NONCE_LEN],
        sealed: &'a [u8],
    },
    Data {
        receiver: u32,
        counter: u64,
    },
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(
        b[at..at + 4]
            .try_into()
            .expect("invariant: caller checked length"),
    )
}

/// Classifies a datagram by its header and length. Does no cryptography.
pub fn parse(d: &[u8]) -> Result<Packet<'_>, WireError> {
    if d.len() < 2 {
        return Err(WireError::Short);
    }
    if d.len() > MAX_DATAGRAM {
        return Err(WireError::Oversized);
    }
    if d[0] != VERSION {
        return Err(WireError::Version(d[0]));
    }
    let exact = |n: usize| {
        if d.len() == n {
            Ok(())
        } else {
            Err(WireError::Length)
        }
    };
    match d[1] {
        TYPE_INIT => {
            exact(INIT_LEN)?;
            Ok(Packet::Init {
                sender: u32_at(d, 2),
                noise: &d[6..6 + INIT_NOISE_LEN],
            })
        }
        TYPE_RESPONSE => {
            exact(RESPONSE_LEN)?;
            Ok(Packet::Response {
                sender: u32_at(d, 2),
                receiver: u32_at(d, 6),
                noise: &d[10..10 + RESPONSE_NOISE_LEN],
            })
        }
        TYPE_COOKIE => {
            exact(COOKIE_LEN)?;
            Ok(Packet::Cookie {
                receiver: u32_at(d, 2),
                nonce: d[6..30].try_into().expect("invariant: length checked"),
                sealed: &d[30..],
            })
        }
        TYPE_DATA => {
            if d.len() < DATA_MIN_LEN {
                return Err(WireError::Length);
            }
            Ok(Packet::Data {
                receiver: u32_at(d, 2),
                counter: u64::from_le_bytes(d[6..14].try_into().expect("invariant: length")),
            })
        }
        t => Err(WireError::Type(t)),
    }
}

/// Offset of `mac1` in a handshake datagram (which ends with `mac1 || mac2`).
pub fn mac1_offset(d: &[u8]) -> usize {
    d.len() - 2 * MAC_LEN
}

/// Key for `mac1` of messages sent *to* the owner of `static_pub`.
pub fn mac1_key(static_pub: &[u8; 32]) -> Hash {
    super::crypto::hash(&[LABEL_MAC1, static_pub])
}

/// Key that seals cookie replies sent by the owner of `static_pub`.
pub fn cookie_key(static_pub: &[u8; 32]) -> Hash {
    super::crypto::hash(&[LABEL_COOKIE, static_pub])
}

/// Fills in `mac1` (and `mac2` when a cookie is given) at the end of a handshake
/// datagram whose body is already written.
pub fn seal_macs(d: &mut [u8], mac1_key: &Hash, cookie: Option<&Mac16>) {
    let off = mac1_offset(d);
    let m1 = mac16(mac1_key, &[&d[..off]]);
    d[off..off + MAC_LEN].copy_from_slice(&m1);
    let m2 = match cookie {
        Some(c) => mac16(c, &[&d[..off + MAC_LEN]]),
        None => [0; MAC_LEN],
    };
    d[off + MAC_LEN..].copy_from_slice(&m2);
}

pub fn mac1_valid(d: &[u8], mac1_key: &Hash) -> bool {
    let off = mac1_offset(d);
    super::crypto::ct_eq(&mac16(mac1_key, &[&d[..off]]), &d[off..off + MAC_LEN])
}

pub fn mac2_valid(d: &[u8], cookie: &Mac16) -> bool {
    let off = mac1_offset(d) + MAC_LEN;
    super::crypto::ct_eq(&mac16(cookie, &[&d[..off]]), &d[off..])
}

pub fn mac1_of(d: &[u8]) -> Mac16 {
    let off = mac1_offset(d);
    d[off..off + MAC_LEN]
        .try_into()
        .expect("invariant: handshake length checked")
}

pub fn init_header(sender: u32) -> Vec<u8> {
    let mut d = Vec::with_capacity(INIT_LEN);
    d.extend_from_slice(&[VERSION, TYPE_INIT]);
    d.extend_from_slice(&sender.to_le_bytes());
    d
}

pub fn response_header(sender: u32, receiver: u32) -> Vec<u8> {
    let mut d = Vec::with_capacity(RESPONSE_LEN);
    d.extend_from_slice(&[VERSION, TYPE_RESPONSE]);
    d.extend_from_slice(&sender.to_le_bytes());
    d.extend_from_slice(&receiver.to_le_bytes());
    d
}

/// Appends room for the two MACs; `seal_macs` fills them.
pub fn reserve_macs(d: &mut Vec<u8>) {
    d.extend_from_slice(&[0; 2 * MAC_LEN]);
}

pub fn cookie_packet(receiver: u32, nonce: &[u8; COOKIE_NONCE_LEN], sealed: &[u8]) -> Vec<u8> {
    let mut d = Vec::with_capacity(COOKIE_LEN);
    d.extend_from_slice(&[VERSION, TYPE_COOKIE]);
    d.extend_from_slice(&receiver.to_le_bytes());
    d.extend_from_slice(nonce);
    d.extend_from_slice(sealed);
    d
}

pub fn data_header(buf: &mut Vec<u8>, receiver: u32, counter: u64) {
    buf.extend_from_slice(&[VERSION, TYPE_DATA]);
    buf.extend_from_slice(&receiver.to_le_bytes());
    buf.extend_from_slice(&counter.to_le_bytes());
}

/// The decrypted body of a data datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Inner<'a> {
    Keepalive,
    Fragment(Fragment<'a>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment<'a> {
    pub msg_id: u32,
    pub index: u16,
    pub count: u16,
    pub bytes: &'a [u8],
}

impl Fragment<'_> {
    pub fn write_header(&self, buf: &mut Vec<u8>) {
        buf.push(INNER_FRAGMENT);
        buf.extend_from_slice(&self.msg_id.to_le_bytes());
        buf.extend_from_slice(&self.index.to_le_bytes());
        buf.extend_from_slice(&self.count.to_le_bytes());
    }
}

/// Parses decrypted data. Only an authenticated peer can reach this, but a buggy or
/// hostile member must still not be able to crash us.
pub fn parse_inner(p: &[u8]) -> Result<Inner<'_>, WireError> {
    match p.first() {
        None => Err(WireError::Short),
        Some(&INNER_KEEPALIVE) if p.len() == 1 => Ok(Inner::Keepalive),
        Some(&INNER_FRAGMENT) if p.len() >= FRAGMENT_HEADER_LEN => {
            let msg_id = u32_at(p, 1);
            let index = u16::from_le_bytes([p[5], p[6]]);
            let count = u16::from_le_bytes([p[7], p[8]]);
            if count == 0 || index >= count {
                return Err(WireError::Length);
            }
            Ok(Inner::Fragment(Fragment {
                msg_id,
                index,
                count,
                bytes: &p[FRAGMENT_HEADER_LEN..],
            }))
        }
        Some(&INNER_KEEPALIVE) | Some(&INNER_FRAGMENT) => Err(WireError::Length),
        Some(&t) => Err(WireError::Type(t)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_fit_the_minimum_mtu() {
        assert_eq!(INIT_LEN, 143);
        assert_eq!(RESPONSE_LEN, 90);
        assert_eq!(COOKIE_LEN, 62);
        assert_eq!(FRAGMENT_PAYLOAD, 1232 - 30 - 9);
        const { assert!(DATA_MIN_LEN + FRAGMENT_HEADER_LEN + FRAGMENT_PAYLOAD <= MAX_DATAGRAM) };
    }

    #[test]
    fn parse_rejects_malformed() {
        assert_eq!(parse(&[]), Err(WireError::Short));
        assert_eq!(parse(&[1]), Err(WireError::Short));
        assert_eq!(parse(&[9, TYPE_DATA]), Err(WireError::Version(9)));
        assert_eq!(parse(&[VERSION, 77]), Err(WireError::Type(77)));
        assert_eq!(parse(&[VERSION, TYPE_INIT, 0, 0]), Err(WireError::Length));
        assert_eq!(parse(&[VERSION; INIT_LEN + 1]), Err(WireError::Length));
        let mut d = vec![0u8; MAX_DATAGRAM + 1];
        d[0] = VERSION;
        d[1] = TYPE_DATA;
        assert_eq!(parse(&d), Err(WireError::Oversized));
        let mut d = vec![0u8; DATA_MIN_LEN - 1];
        d[0] = VERSION;
        d[1] = TYPE_DATA;
        assert_eq!(parse(&d), Err(WireError::Length));
    }

    #[test]
    fn parse_reads_fields() {
        let mut d = Vec::new();
        data_header(&mut d, 0xAABBCCDD, 42);
        d.extend_from_slice(&[0; TAG_LEN]);
        assert_eq!(
            parse(&d),
            Ok(Packet::Data {
                receiver: 0xAABBCCDD,
                counter: 42
            })
        );
    }

    #[test]
    fn macs_round_trip_and_detect_tampering() {
        let key = mac1_key(&[3; 32]);
        let mut d = init_header(7);
        d.extend_from_slice(&[5; INIT_NOISE_LEN]);
        reserve_macs(&mut d);
        seal_macs(&mut d, &key, Some(&[1; 16]));
        assert!(mac1_valid(&d, &key));
        assert!(mac2_valid(&d, &[1; 16]));
        assert!(!mac2_valid(&d, &[2; 16]));
        assert!(!mac1_valid(&d, &mac1_key(&[4; 32])));
        d[10] ^= 1;
        assert!(!mac1_valid(&d, &key));
    }

    #[test]
    fn inner_parsing() {
        assert_eq!(parse_inner(&[0]), Ok(Inner::Keepalive));
        assert_eq!(parse_inner(&[0, 1]), Err(WireError::Length));
        assert_eq!(parse_inner(&[]), Err(WireError::Short));
        assert_eq!(parse_inner(&[9]), Err(WireError::Type(9)));
        assert_eq!(parse_inner(&[1, 0, 0]), Err(WireError::Length));
        // index >= count
        assert_eq!(
            parse_inner(&[1, 0, 0, 0, 0, 2, 0, 2, 0]),
            Err(WireError::Length)
        );
        assert_eq!(
            parse_inner(&[1, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(WireError::Length),
            "zero count"
        );
        let mut b = Vec::new();
        let f = Fragment {
            msg_id: 9,
            index: 1,
            count: 3,
            bytes: b"xyz",
        };
        f.write_header(&mut b);
        b.extend_from_slice(b"xyz");
        assert_eq!(parse_inner(&b), Ok(Inner::Fragment(f)));
    }
}

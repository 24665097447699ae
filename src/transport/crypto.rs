//! The primitives the Noise handshake and the sessions are built from: BLAKE2s hashing,
//! HMAC/HKDF over BLAKE2s as Noise defines them, keyed BLAKE2s-128 MACs for `mac1`/`mac2`,
//! ChaCha20-Poly1305 with Noise's nonce layout, and X25519.

use blake2::digest::consts::U16;
use blake2::digest::{FixedOutput, Update};
use blake2::{Blake2s256, Blake2sMac, Digest};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Tag};
use x25519_dalek::{PublicKey, StaticSecret};

/// BLAKE2s output length; Noise's HASHLEN.
pub const HASH_LEN: usize = 32;
/// BLAKE2s block length; HMAC pads keys to it.
const BLOCK_LEN: usize = 64;
/// Poly1305 tag length.
pub const TAG_LEN: usize = 16;
/// Length of a `mac1`/`mac2`/cookie value (BLAKE2s truncated to 128 bits).
pub const MAC_LEN: usize = 16;
/// X25519 key length.
pub const KEY_LEN: usize = 32;

pub type Hash = [u8; HASH_LEN];
pub type Mac16 = [u8; MAC_LEN];

/// BLAKE2s-256 over the concatenation of `parts`.
pub fn hash(parts: &[&[u8]]) -> Hash {
    let mut h = Blake2s256::new();
    for p in parts {
        Digest::update(&mut h, p);
    }
    h.finalize().into()
}

/// HMAC-BLAKE2s (RFC 2104) with a 32-byte key, as Noise's HKDF uses it.
pub fn hmac(key: &Hash, parts: &[&[u8]]) -> Hash {
    let mut ipad = [0x36u8; BLOCK_LEN];
    let mut opad = [0x5cu8; BLOCK_LEN];
    for (i, k) in key.iter().enumerate() {
        ipad[i] ^= k;
        opad[i] ^= k;
    }
    let mut inner = Blake2s256::new();
    Digest::update(&mut inner, ipad);
    for p in parts {
        Digest::update(&mut inner, p);
    }
    let inner: Hash = inner.finalize().into();
    hash(&[&opad, &inner])
}

/// Noise HKDF with two outputs.
pub fn hkdf2(ck: &Hash, ikm: &[u8]) -> (Hash, Hash) {
    let prk = hmac(ck, &[ikm]);
    let t1 = hmac(&prk, &[&[1]]);
    let t2 = hmac(&prk, &[&t1, &[2]]);
    (t1, t2)
}

/// Noise HKDF with three outputs.
pub fn hkdf3(ck: &Hash, ikm: &[u8]) -> (Hash, Hash, Hash) {
    let prk = hmac(ck, &[ikm]);
    let t1 = hmac(&prk, &[&[1]]);
    let t2 = hmac(&prk, &[&t1, &[2]]);
    let t3 = hmac(&prk, &[&t2, &[3]]);
    (t1, t2, t3)
}

/// Keyed BLAKE2s with a 128-bit output: `mac1`, `mac2` and cookies.
pub fn mac16(key: &[u8], parts: &[&[u8]]) -> Mac16 {
    // Every caller passes a 16- or 32-byte key, which BLAKE2s always accepts.
    let mut m = <Blake2sMac<U16> as blake2::digest::KeyInit>::new_from_slice(key)
        .expect("invariant: key is at most 32 bytes");
    for p in parts {
        m.update(p);
    }
    m.finalize_fixed().into()
}

/// Equality in time independent of where the inputs differ.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    // black_box keeps the optimiser from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

/// Noise's ChaCha20-Poly1305 nonce: 32 zero bits then the 64-bit counter, little-endian.
fn nonce(n: u64) -> chacha20poly1305::Nonce {
    let mut b = [0u8; 12];
    b[4..].copy_from_slice(&n.to_le_bytes());
    b.into()
}

/// A ChaCha20-Poly1305 key with Noise's nonce convention.
#[derive(Clone)]
pub struct Cipher(ChaCha20Poly1305);

impl Cipher {
    pub fn new(key: &[u8; 32]) -> Self {
        Cipher(ChaCha20Poly1305::new(key.into()))
    }

    /// Encrypts `buf` in place and returns the tag.
    pub fn seal_in_place(&self, n: u64, ad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
        // Encryption fails only for buffers beyond 2^38 bytes; ours are under 2 KiB.
        let tag = self
            .0
            .encrypt_in_place_detached(&nonce(n), ad, buf)
            .expect("invariant: datagrams are far below the AEAD length limit");
        tag.into()
    }

    /// Decrypts `buf` in place; on a bad tag `buf` is left unspecified and `false` returned.
    #[must_use]
    pub fn open_in_place(&self, n: u64, ad: &[u8], buf: &mut [u8], tag: &[u8]) -> bool {
        if tag.len() != TAG_LEN {
            return false;
        }
        let tag = Tag::from_slice(tag);
        self.0
            .decrypt_in_place_detached(&nonce(n), ad, buf, tag)
            .is_ok()
    }

    /// Seals `plain` and returns ciphertext with the tag appended.
    pub fn seal(&self, n: u64, ad: &[u8], plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plain.len() + TAG_LEN);
        out.extend_from_slice(plain);
        let tag = self.seal_in_place(n, ad, &mut out);
        out.extend_from_slice(&tag);
        out
    }

    /// Opens ciphertext-with-tag; `None` if it is short or forged.
    pub fn open(&self, n: u64, ad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let body_len = sealed.len().checked_sub(TAG_LEN)?;
        let mut out = sealed[..body_len].to_vec();
        self.open_in_place(n, ad, &mut out, &sealed[body_len..])
            .then_some(out)
    }
}

/// X25519. `None` when the peer's point yields the all-zero secret (a low-order point),
/// which would make the handshake's secrecy rest on nothing.
pub fn dh(secret: &StaticSecret, public: &[u8; KEY_LEN]) -> Option<[u8; KEY_LEN]> {
    let shared = secret.diffie_hellman(&PublicKey::from(*public));
    if ct_eq(shared.as_bytes(), &[0u8; KEY_LEN]) {
        return None;
    }
    Some(*shared.as_bytes())
}

/// The public key of a secret.
pub fn public_key(secret: &StaticSecret) -> [u8; KEY_LEN] {
    *PublicKey::from(secret).as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc2104_shape_for_long_and_short_inputs() {
        // HMAC(k, m) must differ from HASH(k || m) and be deterministic.
        let k = [7u8; 32];
        assert_eq!(hmac(&k, &[b"abc"]), hmac(&k, &[b"a", b"bc"]));
        assert_ne!(hmac(&k, &[b"abc"]), hash(&[&k, b"abc"]));
    }

    #[test]
    fn blake2s_known_answer() {
        // BLAKE2s-256("abc") from RFC 7693 appendix B.
        let h = hash(&[b"abc"]);
        assert_eq!(
            h[..8],
            [0x50, 0x8C, 0x5E, 0x8C, 0x32, 0x7C, 0x14, 0xE2],
            "BLAKE2s-256(abc) prefix"
        );
    }

    #[test]
    fn cipher_round_trip_and_forgery() {
        let c = Cipher::new(&[9u8; 32]);
        let sealed = c.seal(5, b"ad", b"hello");
        assert_eq!(c.open(5, b"ad", &sealed).as_deref(), Some(&b"hello"[..]));
        assert!(c.open(6, b"ad", &sealed).is_none(), "wrong nonce");
        assert!(c.open(5, b"xx", &sealed).is_none(), "wrong ad");
        let mut bad = sealed.clone();
        bad[0] ^= 1;
        assert!(c.open(5, b"ad", &bad).is_none(), "flipped bit");
        assert!(c.open(5, b"ad", &sealed[..10]).is_none(), "truncated");
    }

    #[test]
    fn dh_rejects_low_order_point() {
        let s = StaticSecret::from([3u8; 32]);
        assert!(dh(&s, &[0u8; 32]).is_none());
        let other = StaticSecret::from([4u8; 32]);
        assert_eq!(dh(&s, &public_key(&other)), dh(&other, &public_key(&s)));
    }

    #[test]
    fn ct_eq_compares() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}

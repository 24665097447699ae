//! Noise `IKpsk2` over Curve25519, ChaCha20-Poly1305 and BLAKE2s: the handshake WireGuard
//! uses, with swarmlet's own prologue.
//!
//! ```text
//! IKpsk2:
//!   <- s
//!   ...
//!   -> e, es, s, ss          (initiation: 32 + 48 + payload + 16 bytes)
//!   <- e, ee, se, psk        (response:   32 + payload + 16 bytes)
//! ```
//!
//! This module speaks raw Noise messages only; `wire` wraps them in swarmlet's packet
//! headers with indexes and MACs. Keeping the two apart is what lets the interop tests
//! run the `snow` crate against this code message for message.

use x25519_dalek::StaticSecret;

use super::crypto::{self, dh, hash, hkdf2, hkdf3, public_key, Cipher, Hash, KEY_LEN, TAG_LEN};

/// The Noise protocol name; standard, so other Noise libraries can speak it.
pub const PROTOCOL_NAME: &[u8] = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
/// Mixed into the handshake hash so that only swarmlet peers agree on keys.
pub const PROLOGUE: &[u8] = b"swarmlet transport v1";

/// A pre-shared key mixed in at the end of the handshake (all zeros when unused).
pub type Psk = [u8; 32];

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoiseError {
    #[error("handshake message has the wrong length")]
    Length,
    #[error("handshake message failed authentication")]
    Decrypt,
    #[error("peer sent a low-order public key")]
    LowOrderPoint,
}

/// Noise's SymmetricState.
#[derive(Clone)]
struct Symmetric {
    ck: Hash,
    h: Hash,
    k: Option<[u8; 32]>,
}

impl Symmetric {
    fn new(responder_static: &[u8; KEY_LEN]) -> Self {
        // The name is longer than HASHLEN, so h = HASH(name).
        let h = hash(&[PROTOCOL_NAME]);
        let mut s = Symmetric { ck: h, h, k: None };
        s.mix_hash(PROLOGUE);
        s.mix_hash(responder_static);
        s
    }

    fn mix_hash(&mut self, data: &[u8]) {
        self.h = hash(&[&self.h, data]);
    }

    fn mix_key(&mut self, ikm: &[u8]) {
        let (ck, k) = hkdf2(&self.ck, ikm);
        self.ck = ck;
        self.k = Some(k);
    }

    fn mix_key_and_hash(&mut self, ikm: &[u8]) {
        let (ck, h, k) = hkdf3(&self.ck, ikm);
        self.ck = ck;
        self.mix_hash(&h);
        self.k = Some(k);
    }

    /// `e` token under a PSK pattern: the ephemeral also feeds the chaining key.
    fn mix_ephemeral(&mut self, e: &[u8; KEY_LEN]) {
        self.mix_hash(e);
        self.mix_key(e);
    }

    fn mix_dh(&mut self, secret: &StaticSecret, public: &[u8; KEY_LEN]) -> Result<(), NoiseError> {
        let shared = dh(secret, public).ok_or(NoiseError::LowOrderPoint)?;
        self.mix_key(&shared);
        Ok(())
    }

    // Every MixKey in IK resets the nonce and each key encrypts exactly once, so n = 0.
    fn encrypt_and_hash(&mut self, plain: &[u8], out: &mut Vec<u8>) {
        let k = self.k.expect("invariant: IK encrypts only after a MixKey");
        let start = out.len();
        out.extend_from_slice(&Cipher::new(&k).seal(0, &self.h, plain));
        let c = out[start..].to_vec();
        self.mix_hash(&c);
    }

    fn decrypt_and_hash(&mut self, sealed: &[u8]) -> Result<Vec<u8>, NoiseError> {
        let k = self.k.expect("invariant: IK decrypts only after a MixKey");
        let plain = Cipher::new(&k)
            .open(0, &self.h, sealed)
            .ok_or(NoiseError::Decrypt)?;
        self.mix_hash(sealed);
        Ok(plain)
    }

    fn split(&self) -> ([u8; 32], [u8; 32]) {
        hkdf2(&self.ck, &[])
    }
}

/// The two directions' keys a completed handshake yields.
#[derive(Clone)]
pub struct TransportKeys {
    pub send: [u8; 32],
    pub recv: [u8; 32],
}

/// Length of an initiation carrying `payload_len` bytes of payload.
pub const fn init_len(payload_len: usize) -> usize {
    KEY_LEN + (KEY_LEN + TAG_LEN) + payload_len + TAG_LEN
}

/// Length of a response carrying `payload_len` bytes of payload.
pub const fn response_len(payload_len: usize) -> usize {
    KEY_LEN + payload_len + TAG_LEN
}

/// An initiator waiting for the response.
#[derive(Clone)]
pub struct Initiator {
    sym: Symmetric,
    e: StaticSecret,
    s: StaticSecret,
    psk: Psk,
}

impl Initiator {
    /// Writes the initiation (`-> e, es, s, ss`) to `out`.
    pub fn start(
        local: &StaticSecret,
        remote: &[u8; KEY_LEN],
        psk: &Psk,
        ephemeral: [u8; 32],
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Self, NoiseError> {
        let mut sym = Symmetric::new(remote);
        let e = StaticSecret::from(ephemeral);
        let e_pub = public_key(&e);
        out.extend_from_slice(&e_pub);
        sym.mix_ephemeral(&e_pub);
        sym.mix_dh(&e, remote)?;
        sym.encrypt_and_hash(&public_key(local), out);
        sym.mix_dh(local, remote)?;
        sym.encrypt_and_hash(payload, out);
        Ok(Initiator {
            sym,
            e,
            s: local.clone(),
            psk: *psk,
        })
    }

    /// Reads the response (`<- e, ee, se, psk`) and returns the keys and its payload.
    /// On error the initiator is untouched, so a forged response cannot end a handshake.
    pub fn finish(&self, msg: &[u8]) -> Result<(TransportKeys, Vec<u8>), NoiseError> {
        if msg.len() < response_len(0) {
            return Err(NoiseError::Length);
        }
        let mut sym = self.sym.clone();
        let re: [u8; KEY_LEN] = msg[..KEY_LEN]
            .try_into()
            .expect("invariant: length checked");
        sym.mix_ephemeral(&re);
        sym.mix_dh(&self.e, &re)?;
        sym.mix_dh(&self.s, &re)?;
        sym.mix_key_and_hash(&self.psk);
        let payload = sym.decrypt_and_hash(&msg[KEY_LEN..])?;
        let (k1, k2) = sym.split();
        Ok((TransportKeys { send: k1, recv: k2 }, payload))
    }
}

/// A responder that has read an initiation and may answer it.
pub struct Responder {
    sym: Symmetric,
    re: [u8; KEY_LEN],
    /// The initiator's static public key, learnt from the initiation.
    pub remote_static: [u8; KEY_LEN],
    /// The initiation's payload.
    pub payload: Vec<u8>,
}

impl Responder {
    /// Reads an initiation addressed to `local`.
    pub fn read(local: &StaticSecret, msg: &[u8]) -> Result<Self, NoiseError> {
        if msg.len() < init_len(0) {
            return Err(NoiseError::Length);
        }
        let mut sym = Symmetric::new(&public_key(local));
        let re: [u8; KEY_LEN] = msg[..KEY_LEN]
            .try_into()
            .expect("invariant: length checked");
        sym.mix_ephemeral(&re);
        sym.mix_dh(local, &re)?;
        let s_end = KEY_LEN + KEY_LEN + TAG_LEN;
        let rs: [u8; KEY_LEN] = sym
            .decrypt_and_hash(&msg[KEY_LEN..s_end])?
            .try_into()
            .map_err(|_| NoiseError::Length)?;
        sym.mix_dh(local, &rs)?;
        let payload = sym.decrypt_and_hash(&msg[s_end..])?;
        Ok(Responder {
            sym,
            re,
            remote_static: rs,
            payload,
        })
    }

    /// Writes the response to `out` and returns the responder's keys.
    pub fn respond(
        mut self,
        psk: &Psk,
        ephemeral: [u8; 32],
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<TransportKeys, NoiseError> {
        let e = StaticSecret::from(ephemeral);
        let e_pub = public_key(&e);
        out.extend_from_slice(&e_pub);
        self.sym.mix_ephemeral(&e_pub);
        self.sym.mix_dh(&e, &self.re)?;
        self.sym.mix_dh(&e, &self.remote_static)?;
        self.sym.mix_key_and_hash(psk);
        self.sym.encrypt_and_hash(payload, out);
        let (k1, k2) = self.sym.split();
        Ok(TransportKeys { send: k2, recv: k1 })
    }
}

/// Re-exported for callers that need a key's public half.
pub fn public_of(secret: &StaticSecret) -> [u8; KEY_LEN] {
    crypto::public_key(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (StaticSecret, StaticSecret) {
        (StaticSecret::from([1u8; 32]), StaticSecret::from([2u8; 32]))
    }

    #[test]
    fn handshake_agrees_on_keys_and_carries_payloads() {
        let (i, r) = pair();
        let psk = [5u8; 32];
        let mut m1 = Vec::new();
        let ini = Initiator::start(&i, &public_of(&r), &psk, [7u8; 32], b"ts", &mut m1).unwrap();
        assert_eq!(m1.len(), init_len(2));
        let resp = Responder::read(&r, &m1).unwrap();
        assert_eq!(resp.remote_static, public_of(&i));
        assert_eq!(resp.payload, b"ts");
        let mut m2 = Vec::new();
        let rk = resp.respond(&psk, [8u8; 32], b"", &mut m2).unwrap();
        assert_eq!(m2.len(), response_len(0));
        let (ik, payload) = ini.finish(&m2).unwrap();
        assert!(payload.is_empty());
        assert_eq!(ik.send, rk.recv);
        assert_eq!(ik.recv, rk.send);
        assert_ne!(ik.send, ik.recv);
    }

    #[test]
    fn psk_mismatch_fails_at_the_initiator() {
        let (i, r) = pair();
        let mut m1 = Vec::new();
        let ini =
            Initiator::start(&i, &public_of(&r), &[1u8; 32], [7u8; 32], b"", &mut m1).unwrap();
        let resp = Responder::read(&r, &m1).unwrap();
        let mut m2 = Vec::new();
        resp.respond(&[2u8; 32], [8u8; 32], b"", &mut m2).unwrap();
        assert_eq!(ini.finish(&m2).err(), Some(NoiseError::Decrypt));
    }

    #[test]
    fn initiation_to_the_wrong_responder_fails() {
        let (i, r) = pair();
        let other = StaticSecret::from([3u8; 32]);
        let mut m1 = Vec::new();
        Initiator::start(&i, &public_of(&r), &[0; 32], [7u8; 32], b"", &mut m1).unwrap();
        assert_eq!(
            Responder::read(&other, &m1).err(),
            Some(NoiseError::Decrypt)
        );
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let (i, r) = pair();
        let mut m1 = Vec::new();
        Initiator::start(&i, &public_of(&r), &[0; 32], [7u8; 32], b"xy", &mut m1).unwrap();
        for byte in 0..m1.len() {
            let mut bad = m1.clone();
            bad[byte] ^= 0x10;
            assert!(
                Responder::read(&r, &bad).is_err(),
                "flip in byte {byte} accepted"
            );
        }
        assert_eq!(
            Responder::read(&r, &m1[..init_len(0) - 1]).err(),
            Some(NoiseError::Length)
        );
    }

    #[test]
    fn forged_response_leaves_initiator_usable() {
        let (i, r) = pair();
        let mut m1 = Vec::new();
        let ini = Initiator::start(&i, &public_of(&r), &[0; 32], [7u8; 32], b"", &mut m1).unwrap();
        let mut m2 = Vec::new();
        Responder::read(&r, &m1)
            .unwrap()
            .respond(&[0; 32], [8u8; 32], b"", &mut m2)
            .unwrap();
        let mut forged = m2.clone();
        forged[40] ^= 1;
        assert!(ini.finish(&forged).is_err());
        assert!(ini.finish(&m2[..10]).is_err());
        assert!(ini.finish(&m2).is_ok());
    }

    #[test]
    fn low_order_ephemeral_is_refused() {
        let (_, r) = pair();
        let mut m1 = vec![0u8; init_len(0)];
        m1[0] = 0; // all-zero point is low order
        assert_eq!(
            Responder::read(&r, &m1).err(),
            Some(NoiseError::LowOrderPoint)
        );
    }
}

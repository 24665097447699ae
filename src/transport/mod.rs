//! The encrypted cluster transport: every byte between swarmlet nodes (join, Raft, gossip,
//! task dispatch, logs) rides this over one UDP port.
//!
//! Pure: nothing here touches a socket, a clock or the OS's randomness. The daemon's
//! driver (`crate::netio::transport`) owns the socket and the timers and feeds
//! [`Endpoint`]; the deterministic simulator feeds the same type with a virtual clock.
//!
//! Layers, bottom up:
//! - [`crypto`]: BLAKE2s, HMAC/HKDF, keyed MACs, ChaCha20-Poly1305, X25519.
//! - [`noise`]: the Noise `IKpsk2` handshake as raw Noise messages.
//! - [`wire`]: datagram layouts, `mac1`/`mac2`.
//! - [`replay`]: the anti-replay window.
//! - [`fragment`]: splitting messages up to 1 MiB into MTU-sized datagrams, reassembly.
//! - [`dos`]: cookies, load detection, per-IP rate limits for the handshake path.
//! - [`endpoint`]: peers, sessions, rekeying, timers; the API the daemon uses.

pub mod crypto;
pub mod dos;
pub mod endpoint;
pub mod fragment;
pub mod key;
pub mod noise;
pub mod replay;
pub mod wire;

#[cfg(test)]
mod tests;

pub use endpoint::{
    Config, Endpoint, Event, PeerError, PeerPolicy, PskId, SendError, Stats, Transmit,
};
pub use fragment::MAX_MESSAGE_SIZE;
pub use key::PeerKey;
pub use noise::Psk;

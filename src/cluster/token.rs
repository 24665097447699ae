//! Join tokens: what `swarmlet join-token` prints and `swarmlet join` takes.
//!
//! ```text
//! SWLT-1-<w|m>-<issuing manager's public key, 64 hex>-<secret, 32 hex>
//! ```
//!
//! The key pins the manager the joiner talks to: the Noise IK handshake only completes
//! with the holder of that key, so an impostor at the address cannot answer (the role of
//! the CA digest in Swarm's SWMTKN). The secret becomes the pre-shared key of the join
//! handshake, so only token holders get a session at all, and rotating it shuts the old
//! token out of new joins.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::transport::crypto::hash;
use crate::transport::key::{decode_hex32, encode_hex, PeerKey};
use crate::transport::Psk;

const PREFIX: &str = "SWLT-1-";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TokenRole {
    Worker,
    Manager,
}

impl TokenRole {
    fn letter(self) -> char {
        match self {
            TokenRole::Worker => 'w',
            TokenRole::Manager => 'm',
        }
    }
}

impl fmt::Display for TokenRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenRole::Worker => "worker",
            TokenRole::Manager => "manager",
        })
    }
}

/// The secret part of a token, kept in the cluster state.
pub type TokenSecret = [u8; 16];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    pub role: TokenRole,
    pub manager: PeerKey,
    pub secret: TokenSecret,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("join token must start with {PREFIX}")]
    Prefix,
    #[error("join token is malformed: expected SWLT-1-<w|m>-<64 hex digits>-<32 hex digits>")]
    Shape,
    #[error("join token role must be w (worker) or m (manager), found {0:?}")]
    Role(String),
    #[error("join token manager key: {0}")]
    Key(String),
    #[error("join token secret must be 32 hex digits")]
    Secret,
}

impl JoinToken {
    pub fn parse(s: &str) -> Result<JoinToken, TokenError> {
        let rest = s.trim().strip_prefix(PREFIX).ok_or(TokenError::Prefix)?;
        let parts: Vec<&str> = rest.split('-').collect();
        let [role, key, secret] = parts.as_slice() else {
            return Err(TokenError::Shape);
        };
        let role = match *role {
            "w" => TokenRole::Worker,
            "m" => TokenRole::Manager,
            other => return Err(TokenError::Role(other.to_string())),
        };
        let manager = PeerKey(decode_hex32(key).map_err(|e| TokenError::Key(e.to_string()))?);
        if secret.len() != 32 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TokenError::Secret);
        }
        let mut bytes = [0u8; 16];
        for (i, pair) in secret.as_bytes().chunks(2).enumerate() {
            let hex = std::str::from_utf8(pair).map_err(|_| TokenError::Secret)?;
            bytes[i] = u8::from_str_radix(hex, 16).map_err(|_| TokenError::Secret)?;
        }
        Ok(JoinToken {
            role,
            manager,
            secret: bytes,
        })
    }

    /// The pre-shared key of a join handshake made with this token.
    pub fn psk(&self) -> Psk {
        join_psk(self.role, &self.secret)
    }
}

/// PSK for joins with `role`'s current secret; managers compute the same from state.
pub fn join_psk(role: TokenRole, secret: &TokenSecret) -> Psk {
    hash(&[b"swarmlet join psk v1", &[role.letter() as u8], secret])
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}{}-{}-{}",
            self.role.letter(),
            self.manager,
            encode_hex(&self.secret)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> JoinToken {
        JoinToken {
            role: TokenRole::Worker,
            manager: PeerKey([0xab; 32]),
            secret: [7; 16],
        }
    }

    #[test]
    fn round_trip() {
        let t = token();
        let s = t.to_string();
        assert!(s.starts_with("SWLT-1-w-abab"));
        assert_eq!(JoinToken::parse(&s), Ok(t.clone()));
        assert_eq!(JoinToken::parse(&format!("  {s}\n")), Ok(t));
    }

    #[test]
    fn psk_depends_on_role_and_secret() {
        let t = token();
        let mut m = t.clone();
        m.role = TokenRole::Manager;
        let mut other = t.clone();
        other.secret[0] ^= 1;
        assert_ne!(t.psk(), m.psk());
        assert_ne!(t.psk(), other.psk());
        assert_eq!(t.psk(), join_psk(TokenRole::Worker, &[7; 16]));
    }

    #[test]
    fn bad_tokens_say_what_is_wrong() {
        let good = token().to_string();
        assert_eq!(JoinToken::parse("SWMTKN-1-abc"), Err(TokenError::Prefix));
        assert_eq!(JoinToken::parse("SWLT-1-w-abc"), Err(TokenError::Shape));
        assert_eq!(
            JoinToken::parse(&good.replace("-w-", "-x-")),
            Err(TokenError::Role("x".into()))
        );
        assert!(matches!(
            JoinToken::parse(&good.replace("abab", "zzzz")),
            Err(TokenError::Key(_))
        ));
        assert_eq!(
            JoinToken::parse(&good[..good.len() - 1]),
            Err(TokenError::Secret)
        );
        assert_eq!(
            JoinToken::parse(&format!("{}g", &good[..good.len() - 1])),
            Err(TokenError::Secret)
        );
    }
}

//! Node identity keys and their text form.

use std::fmt;

/// A node's static X25519 public key: its identity on the wire.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct PeerKey(pub [u8; 32]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyParseError {
    #[error("key must be 64 hex digits, got {0} characters")]
    Length(usize),
    #[error("key contains a non-hex character {0:?}")]
    Digit(char),
}

impl PeerKey {
    /// Parses 64 hex digits (either case).
    pub fn from_hex(s: &str) -> Result<Self, KeyParseError> {
        decode_hex32(s).map(PeerKey)
    }

    /// The first 12 hex digits, for tables and logs.
    pub fn short(&self) -> String {
        self.to_string()[..12].to_string()
    }
}

/// Parses 64 hex digits into 32 bytes.
pub fn decode_hex32(s: &str) -> Result<[u8; 32], KeyParseError> {
    let s = s.trim();
    if s.len() != 64 {
        return Err(KeyParseError::Length(s.chars().count()));
    }
    let digit = |c: u8| -> Result<u8, KeyParseError> {
        (c as char)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
            .ok_or(KeyParseError::Digit(c as char))
    };
    let mut out = [0u8; 32];
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Ok(out)
}

pub fn encode_hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

impl fmt::Display for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&encode_hex(&self.0))
    }
}

impl fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerKey({})", self.short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_errors() {
        let k = PeerKey([0xab; 32]);
        assert_eq!(PeerKey::from_hex(&k.to_string()), Ok(k));
        assert_eq!(PeerKey::from_hex(&k.to_string().to_uppercase()), Ok(k));
        assert_eq!(PeerKey::from_hex("abc"), Err(KeyParseError::Length(3)));
        let bad = format!("{}zz", &k.to_string()[..62]);
        assert_eq!(PeerKey::from_hex(&bad), Err(KeyParseError::Digit('z')));
        let multibyte = format!("{}é", &k.to_string()[..62]);
        assert!(PeerKey::from_hex(&multibyte).is_err());
        assert_eq!(k.short(), "abababababab");
    }
}

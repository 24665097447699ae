//! Length-prefixed, versioned postcard frames over a byte stream. Two protocols use
//! them: the CLI and the daemon over the API socket (`crate::api`), and the daemon and
//! the keeper over the keeper's socket (`crate::runtime::keeper`). Each has its own
//! [`Protocol`]: a version byte and a size limit, both checked on send and on receive,
//! so a sender learns at once that its peer would refuse a frame instead of the peer
//! closing the connection on it.
//!
//! On the wire: a 4-byte little-endian length, then that many bytes of body: the
//! protocol's version byte and the postcard encoding of one value. The length counts
//! the version byte and is at most the protocol's limit.
//!
//! A leaf: pure functions over byte slices, plus blocking helpers over `Read` and
//! `Write` for the callers that own a stream.

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Bytes of the length prefix.
pub const HEADER: usize = 4;

/// One framed protocol: its name (for errors), version byte and largest body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Protocol {
    pub name: &'static str,
    pub version: u8,
    /// Largest body (version byte included) either side sends or accepts.
    pub max_body: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    // Transparent: the message is the cause's, said once (not again as its source).
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("the {0} peer closed the connection")]
    Closed(&'static str),
    #[error("{protocol} frame cut short: {got} of {len} bytes")]
    Truncated {
        protocol: &'static str,
        len: usize,
        got: usize,
    },
    #[error("{protocol} frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        protocol: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{protocol} protocol version {got}, expected {want} (is the other side the same swarmlet version?)")]
    Version {
        protocol: &'static str,
        got: u8,
        want: u8,
    },
    #[error("malformed {protocol} frame: {detail}")]
    Malformed {
        protocol: &'static str,
        detail: String,
    },
    #[error("cannot encode a {protocol} frame: {detail}")]
    Encode {
        protocol: &'static str,
        detail: String,
    },
}

impl Protocol {
    /// The whole frame (length, version, body) for `v`; refuses one larger than the
    /// limit, which the peer would refuse.
    pub fn encode<T: Serialize>(&self, v: &T) -> Result<Vec<u8>, FrameError> {
        let mut out = vec![0u8; HEADER];
        out.push(self.version);
        let mut out = postcard::to_extend(v, out).map_err(|e| FrameError::Encode {
            protocol: self.name,
            detail: e.to_string(),
        })?;
        let body = out.len() - HEADER;
        let len = u32::try_from(body)
            .ok()
            .filter(|_| body <= self.max_body)
            .ok_or(FrameError::TooLarge {
                protocol: self.name,
                len: body,
                max: self.max_body,
            })?;
        out[..HEADER].copy_from_slice(&len.to_le_bytes());
        Ok(out)
    }

    /// Checks a length prefix read off the wire: the body that follows must fit the
    /// limit and hold at least the version byte.
    pub fn body_len(&self, header: [u8; HEADER]) -> Result<usize, FrameError> {
        let len = u32::from_le_bytes(header) as usize;
        if len > self.max_body {
            return Err(FrameError::TooLarge {
                protocol: self.name,
                len,
                max: self.max_body,
            });
        }
        if len == 0 {
            return Err(self.malformed("empty frame"));
        }
        Ok(len)
    }

    /// Decodes a body (what follows the length): the version must be this protocol's
    /// and the value must use every byte.
    pub fn decode<T: DeserializeOwned>(&self, body: &[u8]) -> Result<T, FrameError> {
        if body.len() > self.max_body {
            return Err(FrameError::TooLarge {
                protocol: self.name,
                len: body.len(),
                max: self.max_body,
            });
        }
        let (&version, rest) = body
            .split_first()
            .ok_or_else(|| self.malformed("empty frame"))?;
        if version != self.version {
            return Err(FrameError::Version {
                protocol: self.name,
                got: version,
                want: self.version,
            });
        }
        let (v, left) =
            postcard::take_from_bytes(rest).map_err(|e| self.malformed(&e.to_string()))?;
        if !left.is_empty() {
            return Err(self.malformed(&format!("{} bytes after the value", left.len())));
        }
        Ok(v)
    }

    /// Reads one body off a stream (the length checked before anything is allocated;
    /// the buffer grows only as bytes arrive). [`FrameError::Closed`] if the stream
    /// ends before a frame starts.
    pub fn read_body(&self, r: &mut impl Read) -> Result<Vec<u8>, FrameError> {
        let mut header = [0u8; HEADER];
        let mut got = 0;
        while got < HEADER {
            match r.read(&mut header[got..]) {
                Ok(0) if got == 0 => return Err(FrameError::Closed(self.name)),
                Ok(0) => {
                    return Err(FrameError::Truncated {
                        protocol: self.name,
                        len: HEADER,
                        got,
                    })
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        let len = self.body_len(header)?;
        let mut body = Vec::new();
        r.take(len as u64).read_to_end(&mut body)?;
        if body.len() < len {
            return Err(FrameError::Truncated {
                protocol: self.name,
                len,
                got: body.len(),
            });
        }
        Ok(body)
    }

    /// Reads and decodes one frame.
    pub fn read<T: DeserializeOwned>(&self, r: &mut impl Read) -> Result<T, FrameError> {
        self.decode(&self.read_body(r)?)
    }

    /// Encodes and writes one frame.
    pub fn write<T: Serialize>(&self, w: &mut impl Write, v: &T) -> Result<(), FrameError> {
        w.write_all(&self.encode(v)?)?;
        Ok(())
    }

    fn malformed(&self, detail: &str) -> FrameError {
        FrameError::Malformed {
            protocol: self.name,
            detail: detail.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Protocol = Protocol {
        name: "test",
        version: 7,
        max_body: 64,
    };

    #[test]
    fn round_trip_and_every_refusal() {
        let v = (42u32, "hello".to_string());
        let f = P.encode(&v).unwrap();
        let len = P.body_len(f[..HEADER].try_into().unwrap()).unwrap();
        assert_eq!(len, f.len() - HEADER);
        assert_eq!(f[HEADER], 7);
        assert_eq!(P.decode::<(u32, String)>(&f[HEADER..]).unwrap(), v);
        assert_eq!(P.read::<(u32, String)>(&mut &f[..]).unwrap(), v);

        // Too large to send: refused by the sender, not left to the peer.
        let big = "x".repeat(64);
        assert!(matches!(
            P.encode(&big),
            Err(FrameError::TooLarge { max: 64, .. })
        ));
        // Too large a length on the wire: refused before reading (or allocating) it.
        assert!(matches!(
            P.body_len(65u32.to_le_bytes()),
            Err(FrameError::TooLarge { len: 65, .. })
        ));
        assert!(matches!(
            P.body_len(0u32.to_le_bytes()),
            Err(FrameError::Malformed { .. })
        ));
        assert!(matches!(
            P.decode::<u32>(&[8, 1]),
            Err(FrameError::Version {
                got: 8,
                want: 7,
                ..
            })
        ));
        assert!(matches!(
            P.decode::<u32>(&[]),
            Err(FrameError::Malformed { .. })
        ));
        assert!(matches!(
            P.decode::<u32>(&[7, 250, 250]),
            Err(FrameError::Malformed { .. })
        ));
        // Trailing bytes after the value: refused.
        assert!(matches!(
            P.decode::<u8>(&[7, 1, 2]),
            Err(FrameError::Malformed { .. })
        ));
        assert!(matches!(
            P.read::<u32>(&mut &[][..]),
            Err(FrameError::Closed("test"))
        ));
        assert!(matches!(
            P.read::<u32>(&mut &f[..f.len() - 1]),
            Err(FrameError::Truncated { .. })
        ));
        assert!(matches!(
            P.read::<u32>(&mut &f[..2]),
            Err(FrameError::Truncated { len: 4, got: 2, .. })
        ));
    }
}

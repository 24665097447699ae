//! The shared vocabulary: types the CLI, the daemon, the runtime and the image store all
//! speak (ids, specs, records, views). A leaf: it imports nothing from the rest of the
//! crate and does no IO, so any module may use it without making a cycle.
//!
//! What lives here is more than a message: a type is here when it is also kept on disk,
//! parsed from flags or acted on by more than one side. Types that only travel in one
//! API answer stay in `crate::api`.

pub mod container;
pub mod digest;
pub mod health;
pub mod image;
pub mod node;

pub use digest::Digest;

use serde::{Deserialize, Serialize};

/// A published port's transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// The cluster's UDP port (Swarm's 2377): what `init` and `join` use when the user
/// names no port.
pub const DEFAULT_PORT: u16 = 2377;

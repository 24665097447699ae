//! Image pulls as both ends see them: registry credentials and a pull's progress.

use serde::{Deserialize, Serialize};

use super::Digest;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// What a pull reports as it goes (the CLI draws a line per layer from these).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Progress {
    Resolved { digest: Digest, platform: String },
    Layer { digest: Digest, state: LayerState },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayerState {
    Exists,
    Waiting,
    Downloading { done: u64, total: u64 },
    Extracting,
    Done,
}

//! swarmlet: Docker Swarm mode as one small static binary for edge and ARM hosts.
//!
//! The library holds everything; `src/main.rs` only dispatches. See ARCHITECTURE.md for
//! which modules are pure cores and which touch the OS.

// Tests may unwrap and cast freely; the lints guard the code that ships.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::cast_possible_truncation))]

// First: its macros (error!, warning!, info!) are used by the modules below.
#[macro_use]
pub mod logging;

pub mod api;
pub mod cli;
pub mod cluster;
pub mod control;
pub mod daemon;
pub mod frame;
pub mod gossip;
pub mod image;
pub mod model;
pub mod net;
pub mod netio;
pub mod raft;
pub mod runtime;
pub mod services;
#[cfg(test)]
pub mod sim;
pub mod transport;

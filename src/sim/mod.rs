//! Deterministic simulations on a virtual clock, every choice drawn from a seeded RNG.
//!
//! - [`net`]: the one simulated network every simulation delivers through (loss,
//!   duplication, latency and reordering, partitions).
//! - [`control`]: the whole control plane: several nodes, each a [`crate::control::Stack`]
//!   (control, Raft and gossip cores) behind a real transport endpoint, on that network,
//!   with simulated disks, crashes and restarts, a workload of API requests, and checkers
//!   on every step. `src/raft/sim.rs` runs Raft alone on the same network.
//!
//! A failure panics with its seed; `SIM_SEED=<seed> cargo test --lib <sim>::replay`
//! replays it and `SIM_SEEDS=<n> SIM_SEED_BASE=<b>` runs more (`just sim N`).

pub mod control;
pub mod net;
#[cfg(test)]
mod orchestrator;
#[cfg(test)]
mod regressions;

/// Seeds to run: `SIM_SEED` for exactly those (one, or several comma separated), else `SIM_SEEDS` of them (`default` when
/// unset) from `SIM_SEED_BASE` (0 when unset).
pub fn seeds(default: u64) -> Vec<u64> {
    if let Ok(s) = std::env::var("SIM_SEED") {
        return s
            .split(',')
            .map(|s| {
                s.trim()
                    .parse()
                    .expect("SIM_SEED must be numbers, comma separated")
            })
            .collect();
    }
    let n = std::env::var("SIM_SEEDS")
        .ok()
        .map(|s| s.parse().expect("SIM_SEEDS must be a number"))
        .unwrap_or(default);
    let base = std::env::var("SIM_SEED_BASE")
        .ok()
        .map(|s| s.parse().expect("SIM_SEED_BASE must be a number"))
        .unwrap_or(0u64);
    (base..base + n).collect()
}

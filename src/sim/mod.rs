//! Deterministic simulations on a virtual clock, every choice drawn from a seeded RNG.

#[cfg(test)]
mod regressions;

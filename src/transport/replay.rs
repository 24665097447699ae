//! Sliding anti-replay window over 64-bit counters, in the style of RFC 6479: a ring of
//! 64-bit words, so sliding forward clears whole words instead of shifting bits.

/// Words in the ring. One word more than the window so that the word holding the newest
/// counter never overlaps the oldest one still inside the window.
const WORDS: usize = 33;
const BITS_PER_WORD: u64 = 64;
/// Counters this far behind the newest one seen are still accepted once each: 2048
/// datagrams of reordering, far more than a LAN or a Wi-Fi link produces.
pub const WINDOW: u64 = (WORDS as u64 - 1) * BITS_PER_WORD;

#[derive(Clone)]
pub struct ReplayWindow {
    /// Greatest accepted counter plus one; 0 before the first datagram. Shifting by one
    /// lets 0 mean "nothing yet" without an extra flag.
    head: u64,
    ring: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow {
            head: 0,
            ring: [0; WORDS],
        }
    }
}

impl ReplayWindow {
    /// Whether `counter` would be accepted; does not record it. Cheap enough to run
    /// before decryption, so replays cost no AEAD work.
    pub fn check(&self, counter: u64) -> bool {
        let Some(c) = counter.checked_add(1) else {
            return false;
        };
        if c > self.head {
            return true;
        }
        if self.head - c >= WINDOW {
            return false;
        }
        let (word, bit) = Self::slot(c);
        self.ring[word] & (1 << bit) == 0
    }

    /// Records `counter` as seen. Call only after the datagram authenticated. Returns
    /// false (and records nothing) if it was already seen or is too old.
    pub fn update(&mut self, counter: u64) -> bool {
        if !self.check(counter) {
            return false;
        }
        let c = counter + 1;
        if c > self.head {
            let cur_word = self.head / BITS_PER_WORD;
            let new_word = c / BITS_PER_WORD;
            let to_clear = (new_word - cur_word).min(WORDS as u64);
            for i in 1..=to_clear {
                // The ring index is `% WORDS`, so the cast cannot truncate.
                #[allow(clippy::cast_possible_truncation)]
                let idx = ((cur_word + i) % WORDS as u64) as usize;
                self.ring[idx] = 0;
            }
            self.head = c;
        }
        let (word, bit) = Self::slot(c);
        self.ring[word] |= 1 << bit;
        true
    }

    #[allow(clippy::cast_possible_truncation)] // both values are reduced below 64 first
    fn slot(c: u64) -> (usize, u32) {
        (
            ((c / BITS_PER_WORD) % WORDS as u64) as usize,
            (c % BITS_PER_WORD) as u32,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_packet_any_counter() {
        let mut w = ReplayWindow::default();
        assert!(w.update(0));
        assert!(!w.update(0), "duplicate of the first");
        let mut w = ReplayWindow::default();
        assert!(w.update(5000), "first packet may start anywhere");
        assert!(w.update(5000 - WINDOW + 1), "oldest inside the window");
        assert!(!w.check(5000 - WINDOW - 1), "just outside the window");
    }

    #[test]
    fn duplicates_and_reordering() {
        let mut w = ReplayWindow::default();
        for c in [3, 1, 2, 0, 7, 5] {
            assert!(w.update(c), "{c} fresh");
        }
        for c in [3, 1, 2, 0, 7, 5] {
            assert!(!w.check(c), "{c} replay");
            assert!(!w.update(c), "{c} replay");
        }
        assert!(w.update(4) && w.update(6));
    }

    #[test]
    fn window_slides_and_edges() {
        let mut w = ReplayWindow::default();
        assert!(w.update(10_000));
        // Exactly WINDOW behind the newest: out; one less: in.
        assert!(!w.check(10_000 - WINDOW));
        assert!(w.check(10_000 - WINDOW + 1));
        // Slide by one word at a time and check that stale bits are cleared.
        for c in (10_001..10_000 + 3 * WINDOW).step_by(63) {
            assert!(w.update(c), "{c}");
            assert!(!w.update(c), "dup {c}");
        }
    }

    #[test]
    fn far_future_counter_clears_everything() {
        let mut w = ReplayWindow::default();
        for c in 0..100 {
            assert!(w.update(c));
        }
        assert!(w.update(1 << 40));
        assert!(!w.check(99), "now far too old");
        assert!(w.update((1 << 40) - 1), "just behind the new head");
        assert!(!w.update(1 << 40));
    }

    #[test]
    fn counter_max_is_refused() {
        let mut w = ReplayWindow::default();
        assert!(!w.update(u64::MAX));
        assert!(w.update(u64::MAX - 1));
    }

    #[test]
    fn matches_a_naive_model() {
        // A seeded walk with jumps and reorders against a set-based model.
        let mut w = ReplayWindow::default();
        let mut seen = std::collections::BTreeSet::new();
        let mut newest: Option<u64> = None;
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut base = 0u64;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            base += x % 3;
            if x % 97 == 0 {
                base += x % 5000;
            }
            let c = base.saturating_sub(x % 2200);
            let model_ok = !seen.contains(&c) && newest.is_none_or(|n| c + WINDOW > n);
            assert_eq!(w.update(c), model_ok, "counter {c} newest {newest:?}");
            if model_ok {
                seen.insert(c);
                newest = Some(newest.map_or(c, |n| n.max(c)));
            }
        }
    }
}

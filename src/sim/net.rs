//! A seeded network of messages between addresses, on a virtual clock: what every
//! simulation in the crate delivers its messages through.
//!
//! Generic over the address (`NodeId` for Raft's simulation, `SocketAddr` for datagrams
//! between transport endpoints) and the message. Faults, each drawn from the network's
//! own seeded RNG: loss, duplication, latency with jitter (which reorders), rare latency
//! spikes (which reorder across many messages), and partitions as directed cut links, so
//! symmetric, one-way and split partitions are all sets of cuts. A cut applies to
//! messages sent while it holds; messages already on the wire still arrive.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// What the network does to messages. Probabilities are per mille.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Faults {
    pub loss: u32,
    pub dup: u32,
    /// Latency is uniform in `[min_latency, max_latency]`: messages overtake each other.
    pub min_latency: Duration,
    pub max_latency: Duration,
    /// A message is held up by up to `spike_latency` more (a stalled queue, a retransmit
    /// in a lower layer), so it arrives after many sent later.
    pub spike: u32,
    pub spike_latency: Duration,
}

impl Faults {
    /// A LAN that neither loses nor reorders much: what a healed network looks like.
    pub fn calm() -> Faults {
        Faults {
            loss: 0,
            dup: 0,
            min_latency: Duration::from_micros(100),
            max_latency: Duration::from_micros(3_000),
            spike: 0,
            spike_latency: Duration::ZERO,
        }
    }
}

/// What the network did, for the simulations' summaries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    pub sent: u64,
    pub lost: u64,
    pub cut: u64,
    pub duplicated: u64,
    pub delivered: u64,
}

/// A message on the wire.
struct Flight<A, M> {
    from: A,
    to: A,
    msg: M,
}

pub struct Net<A, M> {
    pub faults: Faults,
    rng: ChaCha8Rng,
    /// Directed links that drop everything sent over them: (from, to).
    cuts: BTreeSet<(A, A)>,
    /// Deliveries by (time, sequence): the sequence breaks ties in sending order.
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    flights: BTreeMap<u64, Flight<A, M>>,
    seq: u64,
    pub stats: NetStats,
}

fn per_mille(rng: &mut ChaCha8Rng, p: u32) -> bool {
    p > 0 && rng.next_u32() % 1000 < p
}

fn between(rng: &mut ChaCha8Rng, lo: Duration, hi: Duration) -> Duration {
    let span = hi.saturating_sub(lo).as_micros();
    let span = u64::try_from(span).unwrap_or(u64::MAX);
    if span == 0 {
        return lo;
    }
    lo + Duration::from_micros(rng.next_u64() % (span + 1))
}

impl<A: Ord + Copy, M: Clone> Net<A, M> {
    pub fn new(seed: u64, faults: Faults) -> Net<A, M> {
        Net {
            faults,
            rng: ChaCha8Rng::seed_from_u64(seed),
            cuts: BTreeSet::new(),
            queue: BinaryHeap::new(),
            flights: BTreeMap::new(),
            seq: 0,
            stats: NetStats::default(),
        }
    }

    /// Puts `msg` on the wire at `now`, subject to the faults and cuts.
    pub fn send(&mut self, now: Instant, from: A, to: A, msg: M) {
        self.stats.sent += 1;
        if self.cuts.contains(&(from, to)) {
            self.stats.cut += 1;
            return;
        }
        if per_mille(&mut self.rng, self.faults.loss) {
            self.stats.lost += 1;
            return;
        }
        let copies = if per_mille(&mut self.rng, self.faults.dup) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        let f = &self.faults;
        let mut delays = Vec::with_capacity(copies);
        for _ in 0..copies {
            let mut d = between(&mut self.rng, f.min_latency, f.max_latency);
            if per_mille(&mut self.rng, f.spike) {
                d += between(&mut self.rng, Duration::ZERO, f.spike_latency);
            }
            delays.push(d);
        }
        let mut msg = Some(msg);
        for (i, delay) in delays.into_iter().enumerate() {
            let m = if i + 1 == copies {
                msg.take()
                    .expect("invariant: the last copy takes the message")
            } else {
                msg.clone()
                    .expect("invariant: the message is kept for the last copy")
            };
            self.seq += 1;
            self.queue.push(Reverse((now + delay, self.seq)));
            self.flights.insert(self.seq, Flight { from, to, msg: m });
        }
    }

    /// When the next message arrives, if any is on the wire.
    pub fn next_at(&self) -> Option<Instant> {
        self.queue.peek().map(|r| r.0 .0)
    }

    /// The next message due at `now`, as (from, to, message).
    pub fn pop_due(&mut self, now: Instant) -> Option<(A, A, M)> {
        let Reverse((at, seq)) = *self.queue.peek()?;
        if at > now {
            return None;
        }
        self.queue.pop();
        let f = self
            .flights
            .remove(&seq)
            .expect("invariant: every queued sequence has a flight");
        self.stats.delivered += 1;
        Some((f.from, f.to, f.msg))
    }

    /// Messages on the wire.
    pub fn in_flight(&self) -> usize {
        self.flights.len()
    }

    // ---- partitions ----------------------------------------------------------------

    /// Drops everything `from` sends to `to` until healed.
    pub fn cut(&mut self, from: A, to: A) {
        if from != to {
            self.cuts.insert((from, to));
        }
    }

    pub fn is_cut(&self, from: A, to: A) -> bool {
        self.cuts.contains(&(from, to))
    }

    /// Cuts `a` off from every address in `all`, both ways.
    pub fn isolate(&mut self, a: A, all: &[A]) {
        for b in all {
            self.cut(a, *b);
            self.cut(*b, a);
        }
    }

    /// `a` still sends but hears nothing from `all`.
    pub fn deafen(&mut self, a: A, all: &[A]) {
        for b in all {
            self.cut(*b, a);
        }
    }

    /// No message crosses between the two sides.
    pub fn split(&mut self, left: &[A], right: &[A]) {
        for a in left {
            for b in right {
                self.cut(*a, *b);
                self.cut(*b, *a);
            }
        }
    }

    /// Removes every cut.
    pub fn heal(&mut self) {
        self.cuts.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(net: &mut Net<u8, u32>, until: Instant) -> Vec<(u8, u8, u32)> {
        let mut out = Vec::new();
        while let Some(at) = net.next_at().filter(|t| *t <= until) {
            out.extend(net.pop_due(at));
        }
        out
    }

    #[test]
    fn delivers_in_time_order_and_reorders_with_jitter() {
        let now = Instant::now();
        let mut net = Net::new(7, Faults::calm());
        for i in 0..200 {
            net.send(now, 1, 2, i);
        }
        let got = drain(&mut net, now + Duration::from_secs(1));
        assert_eq!(got.len(), 200);
        let order: Vec<u32> = got.iter().map(|(_, _, m)| *m).collect();
        assert!(order.windows(2).any(|w| w[0] > w[1]), "jitter reorders");
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            (0..200).collect::<Vec<_>>(),
            "nothing lost or doubled"
        );
        assert_eq!(net.in_flight(), 0);
    }

    #[test]
    fn loss_and_duplication_follow_their_rates() {
        let now = Instant::now();
        let mut f = Faults::calm();
        f.loss = 100;
        f.dup = 100;
        let mut net = Net::new(3, f);
        for i in 0..10_000 {
            net.send(now, 1, 2, i);
        }
        let got = drain(&mut net, now + Duration::from_secs(1)).len();
        // 10% lost, then 10% of the rest doubled: about 9,900.
        assert!((9_500..10_300).contains(&got), "{got} delivered");
        assert!((800..1_200).contains(&net.stats.lost), "{:?}", net.stats);
    }

    #[test]
    fn partitions_cut_directed_links_until_healed() {
        let now = Instant::now();
        let mut net: Net<u8, u32> = Net::new(1, Faults::calm());
        net.deafen(3, &[1, 2, 3]);
        assert!(net.is_cut(1, 3) && !net.is_cut(3, 1) && !net.is_cut(3, 3));
        net.send(now, 1, 3, 1);
        net.send(now, 3, 1, 2);
        net.split(&[1], &[2]);
        net.send(now, 2, 1, 3);
        let got = drain(&mut net, now + Duration::from_secs(1));
        assert_eq!(got, vec![(3, 1, 2)]);
        net.heal();
        net.send(now, 1, 3, 4);
        assert_eq!(
            drain(&mut net, now + Duration::from_secs(1)),
            vec![(1, 3, 4)]
        );
    }

    #[test]
    fn same_seed_same_deliveries() {
        let run = |seed| {
            let now = Instant::now();
            let mut f = Faults::calm();
            f.loss = 50;
            f.dup = 50;
            f.spike = 100;
            f.spike_latency = Duration::from_millis(50);
            let mut net = Net::new(seed, f);
            for i in 0..500 {
                net.send(now, (i % 3) as u8, 9, i);
            }
            drain(&mut net, now + Duration::from_secs(1))
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }
}

//! Transport benchmarks. Prints `BENCH <name> <value> <unit>` lines.
//!
//! - handshakes per second: a full IKpsk2 exchange between two in-memory endpoints
//!   (initiation, response, confirming keepalive), both sides' work counted.
//! - core throughput for 1 KiB and 64 KiB messages: `send` through to datagrams (seal +
//!   frame) and datagrams through to the delivered message (open + reassemble), next to
//!   raw ChaCha20-Poly1305 sealing and opening the same message bytes in one call each,
//!   in the same run, with the ratio (goal: at least 0.8).
//!
//! Each figure is the best of several rounds: these machines are noisy, and the best
//! round is the one least disturbed.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // test code

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use swarmlet::transport::{Config, Endpoint, Event, PeerKey};

const ROUNDS: usize = 5;

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i], 2377))
}

fn pair(now: Instant) -> (Endpoint, Endpoint) {
    let mut a = Endpoint::new(Config::default(), [1; 32], [3; 32], now, 1);
    let mut b = Endpoint::new(Config::default(), [2; 32], [4; 32], now, 1);
    let (ka, kb) = (a.public_key(), b.public_key());
    a.set_peer(kb, addr(2), [0; 32]).unwrap();
    b.set_peer(ka, addr(1), [0; 32]).unwrap();
    (a, b)
}

fn admit(_: &PeerKey, _: SocketAddr) -> Option<[u8; 32]> {
    Some([0; 32])
}

/// Moves every pending datagram between the two until both are quiet.
fn pump(now: Instant, a: &mut Endpoint, b: &mut Endpoint) {
    let mut policy = admit;
    loop {
        let mut moved = false;
        while let Some(mut t) = a.poll_transmit() {
            b.handle_datagram(now, addr(1), &mut t.data, &mut policy);
            moved = true;
        }
        while let Some(mut t) = b.poll_transmit() {
            a.handle_datagram(now, addr(2), &mut t.data, &mut policy);
            moved = true;
        }
        if !moved {
            return;
        }
    }
}

fn best<F: FnMut() -> Duration>(mut f: F) -> Duration {
    (0..ROUNDS).map(|_| f()).min().expect("ROUNDS > 0")
}

fn handshakes_per_sec() -> f64 {
    const N: usize = 300;
    let d = best(|| {
        let now = Instant::now();
        let mut total = Duration::ZERO;
        for _ in 0..N {
            let (mut a, mut b) = pair(now);
            let kb = b.public_key();
            let start = Instant::now();
            a.send(now, kb, b"").unwrap();
            pump(now, &mut a, &mut b);
            total += start.elapsed();
            assert!(b.is_connected(&a.public_key()));
        }
        total
    });
    N as f64 / d.as_secs_f64()
}

/// Items prepared together, then processed in one timed stretch: few enough that
/// they are still in cache (as a just-received datagram is), many enough that reading
/// the clock costs nothing measurable.
const BATCH: usize = 32;

/// Times `op` over `n` items, `ROUNDS` times, and returns the best total. `prepare`
/// runs untimed, a batch ahead (to make fresh datagrams for the open side, say).
fn timed<P, T>(n: usize, mut prepare: impl FnMut() -> P, mut op: impl FnMut(P) -> T) -> Duration {
    best(|| {
        let mut total = Duration::ZERO;
        for _ in 0..n.div_ceil(BATCH) {
            let batch: Vec<P> = (0..BATCH).map(|_| prepare()).collect();
            let start = Instant::now();
            for p in batch {
                black_box(op(p));
            }
            total += start.elapsed();
        }
        total
    })
}

fn nonce(i: u64) -> chacha20poly1305::Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&i.to_le_bytes());
    n.into()
}

struct Throughput {
    seal: f64,
    open: f64,
    /// Raw AEAD over the same bytes cut into the same datagram-sized pieces.
    raw_seal: f64,
    raw_open: f64,
    /// Raw AEAD over the whole message in one call.
    raw_seal_one_call: f64,
    raw_open_one_call: f64,
}

fn mib_per_sec(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / (1024.0 * 1024.0)
}

fn throughput(msg_len: usize, total_bytes: usize) -> Throughput {
    let n = total_bytes / msg_len;
    let msg: Vec<u8> = (0..msg_len).map(|i| i as u8).collect();
    let now = Instant::now();
    let (mut a, mut b) = pair(now);
    let (ka, kb) = (a.public_key(), b.public_key());
    a.send(now, kb, b"warm up").unwrap();
    pump(now, &mut a, &mut b);
    while b.poll_event().is_some() {}

    // Seal + frame: send, then take the datagrams as the driver would and drop them.
    let seal = timed(
        n,
        || (),
        |()| {
            a.send(now, kb, &msg).unwrap();
            let mut bytes = 0;
            while let Some(t) = a.poll_transmit() {
                bytes += t.data.len();
            }
            bytes
        },
    );
    // Open + reassemble: a message's datagrams are made untimed, then handled timed.
    let mut policy = admit;
    let open = timed(
        n,
        || {
            a.send(now, kb, &msg).unwrap();
            std::iter::from_fn(|| a.poll_transmit())
                .map(|t| t.data)
                .collect::<Vec<_>>()
        },
        |mut datagrams| {
            let mut got = 0;
            for d in datagrams.iter_mut() {
                b.handle_datagram(now, addr(1), d, &mut policy);
                while let Some(e) = b.poll_event() {
                    if let Event::Message { data, peer } = e {
                        debug_assert_eq!(peer, ka);
                        got += data.len();
                    }
                }
            }
            assert_eq!(got, msg_len, "message delivered");
        },
    );

    let aead = ChaCha20Poly1305::new(&[7u8; 32].into());
    let chunk = swarmlet::transport::wire::FRAGMENT_PAYLOAD;
    let mut buf = msg.clone();
    let mut counter = 0u64;
    let mut seal_raw = |chunk_len: usize, buf: &mut [u8]| {
        buf.chunks_mut(chunk_len)
            .map(|c| {
                counter += 1;
                aead.encrypt_in_place_detached(&nonce(counter), &[], c)
                    .unwrap()
            })
            .collect::<Vec<_>>()
    };
    let raw_seal = timed(n, || (), |()| seal_raw(chunk, &mut buf));
    let raw_seal_one_call = timed(n, || (), |()| seal_raw(msg_len, &mut buf));
    let aead = ChaCha20Poly1305::new(&[7u8; 32].into());
    let raw_open_with = |chunk_len: usize| {
        timed(
            n,
            || {
                let mut sealed = msg.clone();
                let tags: Vec<_> = sealed
                    .chunks_mut(chunk_len)
                    .enumerate()
                    .map(|(i, c)| {
                        aead.encrypt_in_place_detached(&nonce(i as u64), &[], c)
                            .unwrap()
                    })
                    .collect();
                (sealed, tags)
            },
            |(mut sealed, tags)| {
                for ((i, c), tag) in sealed.chunks_mut(chunk_len).enumerate().zip(&tags) {
                    aead.decrypt_in_place_detached(&nonce(i as u64), &[], c, tag)
                        .unwrap();
                }
                sealed
            },
        )
    };
    let raw_open = raw_open_with(chunk);
    let raw_open_one_call = raw_open_with(msg_len);
    let bytes = n.div_ceil(BATCH) * BATCH * msg_len;
    Throughput {
        seal: mib_per_sec(bytes, seal),
        open: mib_per_sec(bytes, open),
        raw_seal: mib_per_sec(bytes, raw_seal),
        raw_open: mib_per_sec(bytes, raw_open),
        raw_seal_one_call: mib_per_sec(bytes, raw_seal_one_call),
        raw_open_one_call: mib_per_sec(bytes, raw_open_one_call),
    }
}

fn main() {
    // `cargo bench` passes --bench. Anything else (nextest listing the bench target with
    // --list, `cargo test --all-targets`) must not run a minutes-long benchmark.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    println!(
        "BENCH transport_handshakes {:.0} handshakes/s",
        handshakes_per_sec()
    );
    for (label, len, total) in [("1k", 1024usize, 32 << 20), ("64k", 64 * 1024, 128 << 20)] {
        let t = throughput(len, total);
        let line = |name: &str, v: f64, unit: &str| println!("BENCH {name}_{label} {v:.3} {unit}");
        line("transport_seal", t.seal, "MiB/s");
        line("raw_aead_seal", t.raw_seal, "MiB/s");
        line("transport_seal_ratio", t.seal / t.raw_seal, "ratio");
        line("transport_open", t.open, "MiB/s");
        line("raw_aead_open", t.raw_open, "MiB/s");
        line("transport_open_ratio", t.open / t.raw_open, "ratio");
        line("raw_aead_seal_one_call", t.raw_seal_one_call, "MiB/s");
        line(
            "transport_seal_ratio_vs_one_call",
            t.seal / t.raw_seal_one_call,
            "ratio",
        );
        line("raw_aead_open_one_call", t.raw_open_one_call, "MiB/s");
        line(
            "transport_open_ratio_vs_one_call",
            t.open / t.raw_open_one_call,
            "ratio",
        );
    }
}

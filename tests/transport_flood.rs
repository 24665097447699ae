//! A flood of junk, forged initiations and replayed datagrams from one address must not
//! stop a valid exchange from another. Real sockets on loopback; the flood is bounded in
//! count and time.
//!
//! ```text
//!   A (127.0.0.1) <-> relay (127.0.0.1, records A's datagrams) <-> B (127.0.0.1)
//!   attacker (127.0.0.2) --junk, replays, forged handshakes--> B
//! ```

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // test code

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use swarmlet::netio::transport::Driver;
use swarmlet::transport::wire;
use swarmlet::transport::{Config, Event, PeerKey, Stats};

/// Upper bound on datagrams the attacker sends, and on how long it keeps going.
const FLOOD_MAX_DATAGRAMS: u64 = 300_000;
const FLOOD_MAX_TIME: Duration = Duration::from_secs(20);
const MESSAGES: usize = 30;

fn relay(
    sock: UdpSocket,
    a: SocketAddr,
    b: SocketAddr,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
) {
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        if from == a {
            let mut s = seen.lock().unwrap();
            if s.len() < 10_000 {
                s.push(buf[..n].to_vec());
            }
            let _ = sock.send_to(&buf[..n], b);
        } else if from == b {
            let _ = sock.send_to(&buf[..n], a);
        }
    }
}

fn flood(
    target: SocketAddr,
    target_key: PeerKey,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) {
    let sock = UdpSocket::bind("127.0.0.2:0").unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0xF100D);
    let started = Instant::now();
    let mac1_key = wire::mac1_key(&target_key.0);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed)
        && n < FLOOD_MAX_DATAGRAMS
        && started.elapsed() < FLOOD_MAX_TIME
    {
        let d: Vec<u8> = match n % 4 {
            0 => {
                let mut d = vec![0u8; 1 + rng.next_u32() as usize % 1400];
                rng.fill_bytes(&mut d);
                d
            }
            1 => {
                let s = seen.lock().unwrap();
                if s.is_empty() {
                    vec![1, 4]
                } else {
                    s[rng.next_u32() as usize % s.len()].clone()
                }
            }
            2 => {
                // An initiation with a valid mac1 but garbage inside: costs DH unless we
                // are under load, in which case it must only earn a cookie reply.
                let mut d = wire::init_header(rng.next_u32());
                let mut body = vec![0u8; wire::INIT_NOISE_LEN];
                rng.fill_bytes(&mut body);
                d.extend_from_slice(&body);
                wire::reserve_macs(&mut d);
                wire::seal_macs(&mut d, &mac1_key, None);
                d
            }
            _ => {
                let mut d = Vec::new();
                wire::data_header(&mut d, rng.next_u32(), rng.next_u64());
                d.extend_from_slice(&[0u8; 64]);
                d
            }
        };
        let _ = sock.send_to(&d, target);
        n += 1;
        // Pace lightly so the kernel's socket buffer at B is the bottleneck, not this loop.
        if n % 256 == 0 {
            thread::sleep(Duration::from_micros(200));
        }
    }
    sent.store(n, Ordering::Relaxed);
}

#[test]
fn valid_exchange_completes_during_flood() {
    let stop = Arc::new(AtomicBool::new(false)); // the attacker's
    let relay_stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let flood_sent = Arc::new(AtomicU64::new(0));

    // B: echoes every message until told to stop.
    let mut b = Driver::bind("127.0.0.1:0".parse().unwrap(), [0xB; 32], Config::default()).unwrap();
    let (b_addr, b_key) = (b.local_addr().unwrap(), b.public_key());
    let b_thread = thread::spawn(move || -> Stats {
        smol::block_on(async {
            let mut admit = |_: &PeerKey, _: SocketAddr| Some([0u8; 32]);
            loop {
                if let Event::Message { peer, data } = b.next_event(&mut admit).await.unwrap() {
                    if data == b"stop" {
                        return b.stats();
                    }
                    b.send(peer, &data).unwrap();
                }
            }
        })
    });

    let mut a = Driver::bind("127.0.0.1:0".parse().unwrap(), [0xA; 32], Config::default()).unwrap();
    let relay_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let relay_addr = relay_sock.local_addr().unwrap();
    let a_addr = a.local_addr().unwrap();
    let relay_thread = {
        let (seen, stop) = (seen.clone(), relay_stop.clone());
        thread::spawn(move || relay(relay_sock, a_addr, b_addr, seen, stop))
    };
    a.endpoint_mut()
        .set_peer(b_key, relay_addr, [0; 32])
        .unwrap();

    let mut attacker = None;
    let mut deny = |_: &PeerKey, _: SocketAddr| None;
    let mut resends = 0;
    smol::block_on(async {
        for i in 0..MESSAGES {
            let msg: Vec<u8> = (0..10_000).map(|j| (i * 7 + j) as u8).collect();
            // The layer above repeats itself when a message is lost: so does this test.
            'attempt: for attempt in 0..40 {
                resends += usize::from(attempt > 0);
                a.send(b_key, &msg).unwrap();
                let wait = async {
                    loop {
                        if let Event::Message { data, .. } = a.next_event(&mut deny).await.unwrap()
                        {
                            if data == msg {
                                return true;
                            }
                        }
                    }
                };
                let timeout = async {
                    async_io::Timer::after(Duration::from_millis(500)).await;
                    false
                };
                if smol::future::or(wait, timeout).await {
                    break 'attempt;
                }
                assert!(attempt < 39, "message {i} never echoed through the flood");
            }
            if i == 2 {
                // Some valid traffic has been recorded; unleash the attacker.
                let (seen, stop, sent) = (seen.clone(), stop.clone(), flood_sent.clone());
                attacker = Some(thread::spawn(move || {
                    flood(b_addr, b_key, seen, stop, sent)
                }));
                thread::sleep(Duration::from_millis(300));
            }
        }
        stop.store(true, Ordering::Relaxed);
        attacker.take().unwrap().join().unwrap();
        a.send(b_key, b"stop").unwrap();
        a.flush().await.unwrap();
    });
    // "stop" might be lost under load; resend a few times until B is done.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !b_thread.is_finished() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
        a.send(b_key, b"stop").unwrap();
        smol::block_on(a.flush()).unwrap();
    }
    relay_stop.store(true, Ordering::Relaxed);
    let _ = relay_thread.join();
    assert!(b_thread.is_finished(), "B never got the stop message");
    let bs = Some(b_thread.join().unwrap());
    let flooded = flood_sent.load(Ordering::Relaxed);
    eprintln!("flood datagrams sent: {flooded}, resends by A: {resends}, B stats: {bs:?}");
    assert!(flooded > 1000, "the attacker actually flooded");
    if let Some(s) = bs {
        assert!(s.replayed > 0, "replays were seen and refused");
        assert!(s.malformed + s.bad_version > 0, "junk was seen and refused");
        assert!(
            s.cookie_replies_sent > 0,
            "load was detected and cookies demanded"
        );
        // DH work on forged initiations is bounded by the load threshold, far below
        // what the attacker sent.
        assert!(
            s.handshake_failed < flooded / 8,
            "{} DH failures",
            s.handshake_failed
        );
    }
}

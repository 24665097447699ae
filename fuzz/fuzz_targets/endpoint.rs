//! Whole datagrams into a live endpoint that has a session with a real peer, so mutated
//! data, handshake and cookie datagrams reach every path past the header checks.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use swarmlet::transport::{Config, Endpoint, PeerKey};

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let a_addr: SocketAddr = "10.0.0.1:2377".parse().unwrap();
    let b_addr: SocketAddr = "10.0.0.2:2377".parse().unwrap();
    let mut a = Endpoint::new(Config::default(), [1; 32], [3; 32], now, 1);
    let mut b = Endpoint::new(Config::default(), [2; 32], [4; 32], now, 1);
    let (ka, kb) = (a.public_key(), b.public_key());
    a.set_peer(kb, b_addr, [0; 32]).unwrap();
    let mut admit = |_: &PeerKey, _: SocketAddr| Some([0u8; 32]);
    a.send(now, kb, b"x").unwrap();
    // Establish the session so the fuzz input can hit live indexes.
    let mut first = Vec::new();
    for _ in 0..4 {
        while let Some(mut t) = a.poll_transmit() {
            first.push(t.data.clone());
            b.handle_datagram(now, a_addr, &mut t.data, &mut admit);
        }
        while let Some(mut t) = b.poll_transmit() {
            a.handle_datagram(now, b_addr, &mut t.data, &mut admit);
        }
    }
    // Splice the input over a real datagram's header so indexes are often valid.
    for base in &first {
        let mut d = base.clone();
        let n = data.len().min(d.len());
        let off = (data.first().copied().unwrap_or(0) as usize) % d.len();
        for (i, byte) in data.iter().take(n).enumerate() {
            let j = (off + i) % d.len();
            d[j] ^= byte;
        }
        b.handle_datagram(now, a_addr, &mut d, &mut admit);
    }
    let mut raw = data.to_vec();
    b.handle_datagram(now + Duration::from_secs(1), a_addr, &mut raw, &mut admit);
    b.handle_timeout(now + Duration::from_secs(5));
    while b.poll_transmit().is_some() {}
    while b.poll_event().is_some() {}
    let _ = ka;
});

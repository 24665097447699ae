//! The Noise handshake readers: an initiation read by a responder, and a response read
//! by an initiator that really started a handshake.
#![no_main]

use libfuzzer_sys::fuzz_target;
use swarmlet::transport::noise::{Initiator, Responder};
use x25519_dalek::StaticSecret;

fuzz_target!(|data: &[u8]| {
    let responder = StaticSecret::from([2u8; 32]);
    let _ = Responder::read(&responder, data);
    let initiator = StaticSecret::from([1u8; 32]);
    let mut out = Vec::new();
    let remote = swarmlet::transport::noise::public_of(&responder);
    let hs = Initiator::start(&initiator, &remote, &[0; 32], [3; 32], b"ts", &mut out)
        .expect("a valid remote key");
    let _ = hs.finish(data);
});

//! Fragment headers and reassembly: the input is a sequence of decrypted inner
//! plaintexts (length-prefixed), as an authenticated but hostile peer could send.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use swarmlet::transport::fragment::{Reassembler, MAX_MESSAGE_SIZE, MAX_REASSEMBLY_BYTES};
use swarmlet::transport::wire::{self, Inner};

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut r = Reassembler::<u8>::new(Duration::from_secs(3));
    let mut rest = data;
    let mut step = 0u64;
    while rest.len() >= 3 {
        let peer = rest[0] % 4;
        let len = usize::from(u16::from_le_bytes([rest[1], rest[2]])) % 1300;
        rest = &rest[3..];
        let take = len.min(rest.len());
        let (chunk, tail) = rest.split_at(take);
        rest = tail;
        step += 1;
        let now = t0 + Duration::from_millis(step * 10);
        if let Ok(Inner::Fragment(f)) = wire::parse_inner(chunk) {
            if let Ok(Some(m)) = r.insert(now, peer, f) {
                assert!(m.len() <= MAX_MESSAGE_SIZE);
            }
        }
        r.expire(now);
        assert!(r.reserved_bytes() <= MAX_REASSEMBLY_BYTES);
    }
});

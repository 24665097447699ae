//! Datagrams as another machine sends them to an encrypted overlay's port: the opener
//! never panics and opens nothing it did not see sealed; a frame sealed from the input
//! opens once, whole, and its altered copies never do.
#![no_main]

use libfuzzer_sys::fuzz_target;
use swarmlet::net::seal::{NetKey, Opener, Sealer};

fuzz_target!(|data: &[u8]| {
    let key = NetKey {
        epoch: 1,
        key: [7; 32],
    };
    let mut rx = Opener::new(4097, key.clone());
    assert!(
        rx.open(&mut data.to_vec()).is_err(),
        "a datagram not sealed under the key opened"
    );
    let mut tx = Sealer::new(&key, 4097, 3, 9);
    let mut d = Vec::new();
    tx.seal(data, &mut d).unwrap();
    let mut copy = d.clone();
    assert_eq!(rx.open(&mut d).unwrap(), (3, data));
    assert!(rx.open(&mut copy.clone()).is_err(), "a replay opened");
    if let Some(i) = data.first().map(|b| usize::from(*b) % copy.len()) {
        copy[i] ^= 1;
        let mut fresh = Opener::new(4097, key);
        assert!(fresh.open(&mut copy).is_err(), "byte {i} altered opened");
    }
});

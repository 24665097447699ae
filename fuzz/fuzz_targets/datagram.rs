//! The datagram header parser and the MAC checks on whatever it accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use swarmlet::transport::wire::{self, Packet};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = wire::parse(data) {
        match p {
            Packet::Init { noise, .. } => assert_eq!(noise.len(), wire::INIT_NOISE_LEN),
            Packet::Response { noise, .. } => assert_eq!(noise.len(), wire::RESPONSE_NOISE_LEN),
            Packet::Cookie { sealed, .. } => assert_eq!(sealed.len(), 32),
            Packet::Data { .. } => assert!(data.len() >= wire::DATA_MIN_LEN),
        }
        if matches!(p, Packet::Init { .. } | Packet::Response { .. }) {
            let key = wire::mac1_key(&[9; 32]);
            let _ = wire::mac1_valid(data, &key);
            let _ = wire::mac2_valid(data, &[0; 16]);
        }
    }
    let _ = wire::parse_inner(data);
});

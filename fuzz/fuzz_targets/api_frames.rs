//! API frames as the daemon reads a request off its socket and the CLI reads an answer:
//! the framing (length, version byte, limit) and the postcard decoding of every request
//! and response. Whatever decodes encodes again to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use swarmlet::api::{Request, Response, PROTOCOL};
use swarmlet_fuzz::frame_round_trip;

fuzz_target!(|data: &[u8]| {
    // As a stream: length prefix, version, body.
    let _ = PROTOCOL.read::<Request>(&mut &data[..]);
    let _ = PROTOCOL.read::<Response>(&mut &data[..]);
    // As a body under the right version byte, so mutations reach the decoders.
    let mut body = vec![PROTOCOL.version];
    body.extend_from_slice(data);
    if let Ok(r) = PROTOCOL.decode::<Request>(&body) {
        frame_round_trip(&PROTOCOL, &r);
    }
    if let Ok(r) = PROTOCOL.decode::<Response>(&body) {
        frame_round_trip(&PROTOCOL, &r);
    }
});

//! Keeper frames as the keeper reads a request and the daemon reads an answer, in this
//! version of the protocol and the legacy one, and the control frames every version
//! serves. Whatever decodes encodes again to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use swarmlet::runtime::keeper::{
    protocol, Control, ControlAnswer, KeeperRequest, KeeperResponse, CONTROL, KEEPER_VERSION,
    LEGACY_VERSION,
};
use swarmlet_fuzz::frame_round_trip;

fuzz_target!(|data: &[u8]| {
    for p in [protocol(KEEPER_VERSION), protocol(LEGACY_VERSION)] {
        let _ = p.read::<KeeperRequest>(&mut &data[..]);
        let mut body = vec![p.version];
        body.extend_from_slice(data);
        if let Ok(r) = p.decode::<KeeperRequest>(&body) {
            frame_round_trip(&p, &r);
        }
        if let Ok(r) = p.decode::<KeeperResponse>(&body) {
            frame_round_trip(&p, &r);
        }
    }
    let _ = CONTROL.read::<Control>(&mut &data[..]);
    let mut body = vec![CONTROL.version];
    body.extend_from_slice(data);
    if let Ok(c) = CONTROL.decode::<Control>(&body) {
        frame_round_trip(&CONTROL, &c);
    }
    if let Ok(c) = CONTROL.decode::<ControlAnswer>(&body) {
        frame_round_trip(&CONTROL, &c);
    }
});

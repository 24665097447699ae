//! WAL records and the snapshot file as recovery reads them off disk. Raw bytes reach
//! the framing (lengths, checksums); records built from the input with a right
//! checksum reach the record decoder. A record that decodes frames and parses back to
//! itself; a snapshot that decodes encodes and decodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use swarmlet::daemon::wal::{
    decode_snapshot, encode_snapshot, frame, frame_payload, parse_frames, RECORD_VERSION,
};
use swarmlet_fuzz::Input;

fuzz_target!(|data: &[u8]| {
    let raw = parse_frames(data);
    assert!(raw.valid_len <= data.len());
    let _ = decode_snapshot(data);

    // Records of the input's pieces under a right checksum and version byte.
    let mut input = Input(data);
    let mut buf = Vec::new();
    while !input.is_empty() {
        let mut payload = vec![RECORD_VERSION];
        payload.extend_from_slice(input.short());
        buf.extend(frame_payload(&payload));
    }
    let p = parse_frames(&buf);
    assert!(p.valid_len <= buf.len());
    assert_eq!(p.stop.is_none(), p.valid_len == buf.len());
    for r in &p.records {
        let f = frame(r);
        let again = parse_frames(&f);
        assert_eq!(again.records, vec![r.clone()]);
        assert_eq!((again.valid_len, again.stop), (f.len(), None));
    }

    // The whole input as a snapshot payload under a right checksum.
    let mut payload = vec![RECORD_VERSION];
    payload.extend_from_slice(data);
    if let Some(s) = decode_snapshot(&frame_payload(&payload)) {
        assert_eq!(decode_snapshot(&encode_snapshot(&s)), Some(s));
    }
});

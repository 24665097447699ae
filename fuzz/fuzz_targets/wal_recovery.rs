//! A whole WAL recovery (`Wal::open`) over a directory of segment files and a snapshot
//! file made from the input, as a crash or a damaged SD card could leave them: records
//! with right checksums (typed records of small indexes, so that appends, truncations
//! and snapshot markers meet, or raw payloads), torn tails, zero fill, garbage. Opening
//! never panics; when it succeeds the log it rebuilt is contiguous from the snapshot
//! (or from index 1), and opening again (after the torn tail was cut) rebuilds exactly
//! the same state.
#![no_main]

use libfuzzer_sys::fuzz_target;
use swarmlet::daemon::wal::{encode_snapshot, frame, frame_payload, Record, Wal, RECORD_VERSION};
use swarmlet::raft::{Entry, HardState, Index, NodeId, Payload, Snapshot, SnapshotMeta, Term};
use swarmlet_fuzz::{scratch, Input};

/// A record the input describes, with small indexes and terms.
fn record(input: &mut Input<'_>) -> Record {
    let kind = input.byte();
    let small = |input: &mut Input<'_>| u64::from(input.byte() % 16);
    match kind % 4 {
        0 => Record::HardState(HardState {
            term: Term(small(input)),
            vote: (kind & 4 != 0).then(|| NodeId(small(input))),
        }),
        1 => {
            let first = small(input);
            let n = u64::from(input.byte() % 4);
            let term = Term(small(input));
            Record::Entries(
                (first..first + n)
                    .map(|i| Entry {
                        term,
                        index: Index(i),
                        payload: Payload::Command(vec![kind]),
                    })
                    .collect(),
            )
        }
        2 => Record::Truncate(Index(small(input))),
        _ => Record::Snapshot(meta(input)),
    }
}

fn meta(input: &mut Input<'_>) -> SnapshotMeta {
    SnapshotMeta {
        index: Index(u64::from(input.byte() % 16)),
        term: Term(u64::from(input.byte() % 16)),
        ..SnapshotMeta::default()
    }
}

/// Bytes of records, each typed or a raw payload from the input, then maybe a tail.
fn segment(input: &mut Input<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..input.byte() % 8 {
        if input.byte() % 2 == 0 {
            out.extend(frame(&record(input)));
        } else {
            let mut payload = vec![RECORD_VERSION];
            payload.extend_from_slice(input.short());
            out.extend(frame_payload(&payload));
        }
    }
    match input.byte() % 4 {
        // A torn write: part of a record.
        1 => {
            let mut payload = vec![RECORD_VERSION];
            payload.extend_from_slice(input.short());
            let f = frame_payload(&payload);
            let cut = usize::from(input.byte()) % f.len();
            out.extend_from_slice(&f[..cut]);
        }
        // Zero fill, as a file system may leave after a crash.
        2 => out.resize(out.len() + usize::from(input.byte()), 0),
        // Raw bytes.
        3 => out.extend_from_slice(input.short()),
        _ => {}
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let dir = scratch("wal");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("wal")).unwrap();
    let mut input = Input(data);
    let flags = input.byte();
    if flags & 1 != 0 {
        let mut snap = if input.byte() % 2 == 0 {
            encode_snapshot(&Snapshot {
                meta: meta(&mut input),
                data: input.short().to_vec(),
            })
        } else {
            let mut payload = vec![RECORD_VERSION];
            payload.extend_from_slice(input.chunk());
            frame_payload(&payload)
        };
        if flags & 2 != 0 {
            snap.truncate(usize::from(input.byte()));
        }
        std::fs::write(dir.join("snapshot"), snap).unwrap();
    }
    for seq in 1..=1 + u64::from(flags >> 2) % 3 {
        let bytes = segment(&mut input);
        std::fs::write(dir.join("wal").join(format!("{seq:020}.wal")), bytes).unwrap();
    }
    let Ok((wal, first)) = Wal::open(&dir) else {
        return;
    };
    drop(wal);
    // Contiguous, and no gap after the snapshot (or from the start without one).
    for w in first.entries.windows(2) {
        assert_eq!(w[1].index, w[0].index.next(), "entries contiguous");
    }
    if let Some(e) = first.entries.first() {
        let base = first.snapshot.as_ref().map_or(0, |s| s.meta.index.0);
        assert!(e.index.0 <= base + 1, "no gap before entry {}", e.index.0);
    }
    let (_, second) = Wal::open(&dir).expect("a WAL that opened once opens again");
    assert_eq!(second.hard, first.hard);
    assert_eq!(second.snapshot, first.snapshot);
    assert_eq!(second.entries, first.entries);
    assert_eq!(second.torn_bytes, 0, "the torn tail was cut for good");
});

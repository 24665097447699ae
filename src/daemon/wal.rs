//! Raft's durable state on disk: a write-ahead log of framed records in numbered segment
//! files, and the latest snapshot in a file of its own.
//!
//! ```text
//! <dir>/wal/00000000000000000001.wal   records: [len u32 LE][crc32 u32 LE][payload]
//! <dir>/snapshot                       one record holding the snapshot
//! ```
//!
//! A payload is a version byte and a postcard-encoded [`Record`]. Each `Ready` becomes a
//! handful of records followed by one `fdatasync`, so a turn of the Raft loop costs one
//! flush however many entries it carries (SD cards favour few, larger writes).
//!
//! Recovery reads every segment in order. A damaged record at the very end of the last
//! segment is a torn write from a crash: it and anything after it are cut off. Damage
//! anywhere else means the disk lost data that was acknowledged, and opening fails with
//! the file and offset, rather than silently dropping committed entries.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::control::{LogWrite, RaftLog};
use crate::raft::{Entry, HardState, Index, Ready, Snapshot, SnapshotMeta};

/// Test-only: milliseconds every sync is made to take on top of the real one, to show
/// that a slow disk (an SD card's fsync takes 10-100 ms) does not stall the daemon's
/// loop. Read once, when a log is opened.
pub const SLOW_SYNC_ENV: &str = "SWARMLET_TEST_SLOW_SYNC_MS";

/// Format version of record payloads (their first byte).
pub const RECORD_VERSION: u8 = 1;
const HEADER: usize = 8;
/// Largest record we write or accept: a full append batch or a snapshot of a large
/// cluster's state fits many times over; a bigger length field is corruption.
pub const MAX_RECORD: usize = 256 << 20;
// The largest snapshot Raft accepts fits one record, with room for its framing.
const _: () = assert!(crate::raft::MAX_SNAPSHOT_BYTES + 4096 <= MAX_RECORD);
/// A segment is closed and a new one started past this size. Small enough that deleting
/// old segments after a snapshot frees space promptly on small disks.
pub const SEGMENT_BYTES: u64 = 4 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Record {
    HardState(HardState),
    /// Entries to append; any persisted entries at their indexes or after are replaced.
    Entries(Vec<Entry>),
    /// Entries at this index and after are void.
    Truncate(Index),
    /// Entries up to this snapshot are covered by the snapshot file.
    Snapshot(SnapshotMeta),
}

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: corrupt record at byte offset {offset}: {why}; refusing to start (restore the data dir from a backup, or remove the node and join it again)")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        why: &'static str,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Encodes one framed record.
pub fn frame(rec: &Record) -> Vec<u8> {
    frame_value(rec)
}

/// `[len][crc32][version byte + postcard(v)]`: the one framing of every record and of
/// the snapshot file.
fn frame_value<T: Serialize>(v: &T) -> Vec<u8> {
    let mut payload = vec![RECORD_VERSION];
    // Serialising our own in-memory types cannot fail.
    payload.extend(postcard::to_allocvec(v).expect("invariant: WAL types serialise"));
    frame_payload(&payload)
}

/// `[len][crc32][payload]` around any payload (which should start with
/// [`RECORD_VERSION`]): what the fuzz targets build damaged logs with.
pub fn frame_payload(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// What reading a buffer of frames found.
#[derive(Debug, PartialEq)]
pub struct Parsed {
    pub records: Vec<Record>,
    /// Bytes of whole, valid records.
    pub valid_len: usize,
    /// Why parsing stopped before the end, and whether that looks like a torn tail.
    pub stop: Option<(&'static str, bool)>,
}

/// Parses frames from `buf` until the end or the first bad one.
pub fn parse_frames(buf: &[u8]) -> Parsed {
    let mut records = Vec::new();
    let mut at = 0usize;
    let stop = loop {
        let rest = &buf[at..];
        if rest.is_empty() {
            break None;
        }
        if rest.len() < HEADER {
            break Some(("truncated record header", true));
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("invariant: 4 bytes")) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("invariant: 4 bytes"));
        if len == 0 && rest.iter().all(|b| *b == 0) {
            break Some(("zero fill after the last record", true));
        }
        if len > MAX_RECORD {
            // A torn write leaves a prefix of what we wrote, never an absurd length.
            break Some(("record length out of range", false));
        }
        if rest.len() < HEADER + len {
            break Some(("record extends past the end of the file", true));
        }
        let payload = &rest[HEADER..HEADER + len];
        let last = rest.len() == HEADER + len;
        if crc32fast::hash(payload) != crc {
            break Some(("checksum mismatch", last));
        }
        if payload.first() != Some(&RECORD_VERSION) {
            break Some(("unknown record version", false));
        }
        match postcard::from_bytes::<Record>(&payload[1..]) {
            Ok(r) => records.push(r),
            Err(_) => break Some(("undecodable record", false)),
        }
        at += HEADER + len;
    };
    Parsed {
        records,
        valid_len: at,
        stop,
    }
}

/// Persisted state rebuilt at start-up.
#[derive(Debug, Default)]
pub struct Recovered {
    pub hard: HardState,
    pub snapshot: Option<Snapshot>,
    /// Entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
    /// Torn bytes cut off the last segment, if any (for the log).
    pub torn_bytes: u64,
}

impl Recovered {
    pub fn into_log(self) -> RaftLog {
        RaftLog {
            hard: self.hard,
            snapshot: self.snapshot,
            entries: self.entries,
        }
    }
}

pub struct Wal {
    dir: PathBuf,
    file: File,
    seq: u64,
    len: u64,
    /// Extra time each sync takes ([`SLOW_SYNC_ENV`]; zero outside tests).
    slow_sync: std::time::Duration,
}

fn segment_name(seq: u64) -> String {
    format!("{seq:020}.wal")
}

fn list_segments(wal_dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut segs = Vec::new();
    for entry in fs::read_dir(wal_dir).map_err(io_err(wal_dir))? {
        let entry = entry.map_err(io_err(wal_dir))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".wal")) else {
            continue;
        };
        if let Ok(seq) = stem.parse::<u64>() {
            segs.push((seq, entry.path()));
        }
    }
    segs.sort();
    Ok(segs)
}

/// Replays one record; `false` if it would leave a gap in the log (lost data).
fn apply(rec: Record, st: &mut Recovered) -> bool {
    match rec {
        Record::HardState(h) => st.hard = h,
        Record::Entries(es) => {
            let after_snap = st.snapshot.as_ref().map_or(Index(0), |s| s.meta.index);
            for e in es {
                if e.index <= after_snap {
                    continue; // covered by the snapshot
                }
                st.entries.retain(|x| x.index < e.index);
                let expected = st
                    .entries
                    .last()
                    .map_or(after_snap.next(), |l| l.index.next());
                if e.index != expected {
                    return false;
                }
                st.entries.push(e);
            }
        }
        Record::Truncate(i) => st.entries.retain(|x| x.index < i),
        Record::Snapshot(meta) => {
            st.entries.retain(|x| x.index > meta.index);
            // The marker is written after its snapshot file: a file missing, or older
            // than the marker, was lost, and the entries it covered are gone with it.
            if st
                .snapshot
                .as_ref()
                .is_none_or(|s| s.meta.index < meta.index)
            {
                return false;
            }
        }
    }
    true
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

impl Wal {
    /// Opens (creating if needed) the WAL under `dir` and recovers its state.
    pub fn open(dir: &Path) -> Result<(Wal, Recovered), WalError> {
        let wal_dir = dir.join("wal");
        fs::create_dir_all(&wal_dir).map_err(io_err(&wal_dir))?;
        let mut st = Recovered::default();
        let snap_path = dir.join("snapshot");
        match fs::read(&snap_path) {
            Ok(buf) => {
                let snap = decode_snapshot(&buf).ok_or(WalError::Corrupt {
                    path: snap_path.clone(),
                    offset: 0,
                    why: "snapshot file is damaged",
                })?;
                st.snapshot = Some(snap);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&snap_path)(e)),
        }
        let segs = list_segments(&wal_dir)?;
        let last_seq = segs.last().map(|s| s.0);
        for (seq, path) in &segs {
            let buf = fs::read(path).map_err(io_err(path))?;
            let p = parse_frames(&buf);
            for r in p.records {
                if !apply(r, &mut st) {
                    return Err(WalError::Corrupt {
                        path: path.clone(),
                        offset: 0,
                        why: "log entries missing between records",
                    });
                }
            }
            if let Some((why, torn_like)) = p.stop {
                if Some(*seq) == last_seq && torn_like {
                    let f = OpenOptions::new()
                        .write(true)
                        .open(path)
                        .map_err(io_err(path))?;
                    f.set_len(p.valid_len as u64).map_err(io_err(path))?;
                    f.sync_all().map_err(io_err(path))?;
                    st.torn_bytes = (buf.len() - p.valid_len) as u64;
                } else {
                    return Err(WalError::Corrupt {
                        path: path.clone(),
                        offset: p.valid_len as u64,
                        why,
                    });
                }
            }
        }
        let seq = last_seq.unwrap_or(1);
        let path = wal_dir.join(segment_name(seq));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let len = file.metadata().map_err(io_err(&path))?.len();
        if last_seq.is_none() {
            sync_dir(&wal_dir)?;
        }
        let slow_sync = std::env::var(SLOW_SYNC_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(std::time::Duration::ZERO, std::time::Duration::from_millis);
        Ok((
            Wal {
                dir: dir.to_path_buf(),
                file,
                seq,
                len,
                slow_sync,
            },
            st,
        ))
    }

    fn segment_path(&self, seq: u64) -> PathBuf {
        self.dir.join("wal").join(segment_name(seq))
    }

    fn write_records(&mut self, recs: &[Record]) -> Result<(), WalError> {
        if recs.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for r in recs {
            buf.extend(frame(r));
        }
        let path = self.segment_path(self.seq);
        self.file.write_all(&buf).map_err(io_err(&path))?;
        self.file.sync_data().map_err(io_err(&path))?;
        if !self.slow_sync.is_zero() {
            std::thread::sleep(self.slow_sync);
        }
        self.len += buf.len() as u64;
        if self.len >= SEGMENT_BYTES {
            self.rotate()?;
        }
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), WalError> {
        self.seq += 1;
        let path = self.segment_path(self.seq);
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        self.len = 0;
        sync_dir(&self.dir.join("wal"))
    }

    /// Makes a `Ready`'s hard state, truncation, appended entries and snapshot durable,
    /// with one flush. Call before sending its messages. `hard` is the core's current
    /// hard state (needed when a snapshot starts a fresh segment).
    pub fn persist(&mut self, ready: &Ready, hard: HardState) -> Result<(), WalError> {
        if let Some(s) = &ready.snapshot {
            self.save_snapshot(s, hard, &[])?;
        }
        let mut recs = Vec::new();
        if let Some(h) = ready.hard_state {
            recs.push(Record::HardState(h));
        }
        if let Some(t) = ready.truncate_from {
            recs.push(Record::Truncate(t));
        }
        if !ready.append.is_empty() {
            recs.push(Record::Entries(ready.append.clone()));
        }
        self.write_records(&recs)
    }

    /// Makes `writes` durable in order: records are batched into one write and one
    /// flush; a snapshot is written on its own (after the records before it).
    pub fn write(&mut self, writes: &[LogWrite]) -> Result<(), WalError> {
        let mut recs = Vec::new();
        for w in writes {
            match w {
                LogWrite::HardState(h) => recs.push(Record::HardState(*h)),
                LogWrite::Truncate(i) => recs.push(Record::Truncate(*i)),
                LogWrite::Entries(es) => recs.push(Record::Entries(es.clone())),
                LogWrite::Snapshot {
                    snapshot,
                    hard,
                    tail,
                } => {
                    self.write_records(&std::mem::take(&mut recs))?;
                    self.save_snapshot(snapshot, *hard, tail)?;
                }
            }
        }
        self.write_records(&recs)
    }

    /// Writes `snap` as the snapshot and starts a fresh segment holding everything else
    /// recovery needs (`hard` and the entries after the snapshot), then deletes the older
    /// segments. Each step is durable before the next, so a crash anywhere leaves either
    /// the old files or the new ones complete.
    pub fn save_snapshot(
        &mut self,
        snap: &Snapshot,
        hard: HardState,
        remaining: &[Entry],
    ) -> Result<(), WalError> {
        let tmp = self.dir.join("snapshot.tmp");
        let dst = self.dir.join("snapshot");
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&encode_snapshot(snap)).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, &dst).map_err(io_err(&dst))?;
        sync_dir(&self.dir)?;
        self.rotate()?;
        let mut recs = vec![Record::Snapshot(snap.meta.clone()), Record::HardState(hard)];
        if !remaining.is_empty() {
            recs.push(Record::Entries(remaining.to_vec()));
        }
        self.write_records(&recs)?;
        let keep_from = self.seq;
        for (seq, path) in list_segments(&self.dir.join("wal"))? {
            if seq < keep_from {
                fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
        Ok(())
    }

    /// Total bytes in the WAL directory and snapshot (for the disk-writes benchmark).
    pub fn disk_bytes(&self) -> u64 {
        let mut total = fs::metadata(self.dir.join("snapshot")).map_or(0, |m| m.len());
        if let Ok(segs) = list_segments(&self.dir.join("wal")) {
            total += segs
                .iter()
                .filter_map(|(_, p)| fs::metadata(p).ok())
                .map(|m| m.len())
                .sum::<u64>();
        }
        total
    }
}

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// The snapshot file's bytes for `s`: one framed record.
pub fn encode_snapshot(s: &Snapshot) -> Vec<u8> {
    frame_value(&SnapshotFile {
        meta: s.meta.clone(),
        data: s.data.clone(),
    })
}

/// Reads a snapshot file; None if it is damaged in any way (length, checksum, version,
/// contents).
pub fn decode_snapshot(buf: &[u8]) -> Option<Snapshot> {
    if buf.len() < HEADER {
        return None;
    }
    let len = u32::from_le_bytes(buf[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(buf[4..8].try_into().ok()?);
    let payload = buf.get(HEADER..HEADER + len)?;
    if buf.len() != HEADER + len
        || crc32fast::hash(payload) != crc
        || payload.first() != Some(&RECORD_VERSION)
    {
        return None;
    }
    let f: SnapshotFile = postcard::from_bytes(&payload[1..]).ok()?;
    Some(Snapshot {
        meta: f.meta,
        data: f.data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{Membership, NodeId, Payload, Term};

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let p =
                std::env::temp_dir().join(format!("swarmlet-wal-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn entry(term: u64, index: u64, data: &[u8]) -> Entry {
        Entry {
            term: Term(term),
            index: Index(index),
            payload: Payload::Command(data.to_vec()),
        }
    }

    fn hard(term: u64, vote: Option<u64>) -> HardState {
        HardState {
            term: Term(term),
            vote: vote.map(NodeId),
        }
    }

    fn ready(h: Option<HardState>, truncate: Option<u64>, entries: Vec<Entry>) -> Ready {
        Ready {
            hard_state: h,
            truncate_from: truncate.map(Index),
            append: entries,
            ..Ready::default()
        }
    }

    fn last_segment(dir: &Path) -> PathBuf {
        list_segments(&dir.join("wal")).unwrap().pop().unwrap().1
    }

    /// Found by the `wal_recovery` fuzz target: entries, then a snapshot marker whose
    /// snapshot file is missing, opened as a log starting after the marker with no
    /// snapshot before it (a gap Raft would be restored with).
    #[test]
    fn a_snapshot_marker_without_its_file_is_corruption() {
        let d = TempDir::new("marker");
        let wal = d.0.join("wal");
        fs::create_dir_all(&wal).unwrap();
        let mut seg = frame(&Record::Entries(vec![
            entry(1, 1, b"a"),
            entry(1, 2, b"b"),
            entry(1, 3, b"c"),
        ]));
        seg.extend(frame(&Record::Snapshot(SnapshotMeta {
            index: Index(1),
            term: Term(1),
            membership: Membership::default(),
        })));
        fs::write(wal.join(segment_name(1)), seg).unwrap();
        match Wal::open(&d.0) {
            Err(WalError::Corrupt { why, .. }) => {
                assert_eq!(why, "log entries missing between records")
            }
            Ok((_, st)) => panic!("opened with a gap: entries {:?}", st.entries),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn records_survive_reopen_with_truncation_applied() {
        let d = TempDir::new("reopen");
        {
            let (mut w, st) = Wal::open(&d.0).unwrap();
            assert!(st.entries.is_empty() && st.snapshot.is_none());
            let h = hard(2, Some(1));
            w.persist(
                &ready(Some(h), None, vec![entry(2, 1, b"a"), entry(2, 2, b"b")]),
                h,
            )
            .unwrap();
            w.persist(
                &ready(None, Some(2), vec![entry(3, 2, b"c"), entry(3, 3, b"d")]),
                h,
            )
            .unwrap();
            w.persist(&ready(Some(hard(3, None)), None, vec![]), h)
                .unwrap();
        }
        let (_, st) = Wal::open(&d.0).unwrap();
        assert_eq!(st.hard, hard(3, None));
        assert_eq!(
            st.entries,
            vec![entry(2, 1, b"a"), entry(3, 2, b"c"), entry(3, 3, b"d")]
        );
        assert_eq!(st.torn_bytes, 0);
    }

    #[test]
    fn torn_tail_is_cut_off() {
        for (label, tail) in [
            ("partial header", vec![5u8, 0, 0]),
            ("partial record", {
                let mut f = frame(&Record::Entries(vec![entry(1, 3, b"torn")]));
                f.truncate(f.len() - 4);
                f
            }),
            ("bad checksum at the end", {
                let mut f = frame(&Record::Entries(vec![entry(1, 3, b"torn")]));
                let n = f.len();
                f[n - 1] ^= 0xff;
                f
            }),
            ("zero fill", vec![0u8; 64]),
        ] {
            let d = TempDir::new(&format!("torn-{}", label.replace(' ', "-")));
            {
                let (mut w, _) = Wal::open(&d.0).unwrap();
                w.persist(
                    &ready(
                        Some(hard(1, None)),
                        None,
                        vec![entry(1, 1, b"x"), entry(1, 2, b"y")],
                    ),
                    hard(1, None),
                )
                .unwrap();
            }
            let seg = last_segment(&d.0);
            let before = fs::metadata(&seg).unwrap().len();
            let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
            f.write_all(&tail).unwrap();
            drop(f);
            let (mut w, st) = Wal::open(&d.0).unwrap();
            assert_eq!(st.entries.len(), 2, "{label}");
            assert_eq!(st.torn_bytes, tail.len() as u64, "{label}");
            assert_eq!(
                fs::metadata(&seg).unwrap().len(),
                before,
                "{label}: file truncated"
            );
            // And the log keeps working after the cut.
            w.persist(&ready(None, None, vec![entry(1, 3, b"z")]), hard(1, None))
                .unwrap();
            drop(w);
            assert_eq!(Wal::open(&d.0).unwrap().1.entries.len(), 3, "{label}");
        }
    }

    #[test]
    fn corruption_before_the_tail_refuses_to_open_and_names_the_place() {
        let d = TempDir::new("corrupt");
        {
            let (mut w, _) = Wal::open(&d.0).unwrap();
            for i in 1..=3 {
                w.persist(
                    &ready(None, None, vec![entry(1, i, b"payload")]),
                    hard(1, None),
                )
                .unwrap();
            }
        }
        let seg = last_segment(&d.0);
        let mut buf = fs::read(&seg).unwrap();
        let first_len = frame(&Record::Entries(vec![entry(1, 1, b"payload")])).len();
        buf[first_len + HEADER + 3] ^= 0x01; // inside the second record
        fs::write(&seg, &buf).unwrap();
        let err = Wal::open(&d.0).err().expect("must refuse");
        let msg = err.to_string();
        assert!(msg.contains(seg.to_str().unwrap()), "{msg}");
        assert!(msg.contains(&format!("offset {first_len}")), "{msg}");
        assert!(msg.contains("checksum mismatch"), "{msg}");
        assert_eq!(fs::read(&seg).unwrap(), buf, "nothing was changed on disk");
    }

    #[test]
    fn snapshot_replaces_old_segments() {
        let d = TempDir::new("snap");
        let meta = SnapshotMeta {
            index: Index(2),
            term: Term(1),
            membership: Membership::new([NodeId(1)]),
        };
        {
            let (mut w, _) = Wal::open(&d.0).unwrap();
            let es: Vec<Entry> = (1..=4).map(|i| entry(1, i, b"e")).collect();
            w.persist(
                &ready(Some(hard(1, Some(1))), None, es.clone()),
                hard(1, Some(1)),
            )
            .unwrap();
            let snap = Snapshot {
                meta: meta.clone(),
                data: b"state".to_vec(),
            };
            w.save_snapshot(&snap, hard(1, Some(1)), &es[2..]).unwrap();
            assert_eq!(
                list_segments(&d.0.join("wal")).unwrap().len(),
                1,
                "old segment deleted"
            );
        }
        let (_, st) = Wal::open(&d.0).unwrap();
        let snap = st.snapshot.unwrap();
        assert_eq!(snap.meta, meta);
        assert_eq!(snap.data, b"state");
        assert_eq!(st.hard, hard(1, Some(1)));
        assert_eq!(
            st.entries.iter().map(|e| e.index.0).collect::<Vec<_>>(),
            vec![3, 4]
        );
    }

    #[test]
    fn damaged_snapshot_file_is_refused() {
        let d = TempDir::new("badsnap");
        {
            let (mut w, _) = Wal::open(&d.0).unwrap();
            let snap = Snapshot {
                meta: SnapshotMeta::default(),
                data: vec![1; 100],
            };
            w.save_snapshot(&snap, hard(1, None), &[]).unwrap();
        }
        let p = d.0.join("snapshot");
        let mut buf = fs::read(&p).unwrap();
        buf[50] ^= 1;
        fs::write(&p, &buf).unwrap();
        let msg = Wal::open(&d.0).err().unwrap().to_string();
        assert!(msg.contains("snapshot") && msg.contains("damaged"), "{msg}");
    }

    #[test]
    fn segments_rotate_and_replay_in_order() {
        let d = TempDir::new("rotate");
        let big = vec![7u8; 512 * 1024];
        {
            let (mut w, _) = Wal::open(&d.0).unwrap();
            for i in 1..=20 {
                w.persist(&ready(None, None, vec![entry(1, i, &big)]), hard(1, None))
                    .unwrap();
            }
        }
        assert!(list_segments(&d.0.join("wal")).unwrap().len() >= 2);
        let (_, st) = Wal::open(&d.0).unwrap();
        assert_eq!(st.entries.len(), 20);
    }

    #[test]
    fn a_gap_in_the_log_is_corruption() {
        let d = TempDir::new("gap");
        {
            let (mut w, _) = Wal::open(&d.0).unwrap();
            w.persist(&ready(None, None, vec![entry(1, 1, b"a")]), hard(1, None))
                .unwrap();
            w.persist(&ready(None, None, vec![entry(1, 3, b"c")]), hard(1, None))
                .unwrap();
        }
        let msg = Wal::open(&d.0).err().unwrap().to_string();
        assert!(msg.contains("missing"), "{msg}");
    }

    #[test]
    fn parse_frames_never_panics_on_garbage() {
        let mut x: u64 = 0x1234_5678;
        for n in 0..2000usize {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut buf: Vec<u8> = (0..n % 300).map(|i| (x >> (i % 56)) as u8).collect();
            if n % 3 == 0 {
                buf.splice(0..0, frame(&Record::Truncate(Index(x))));
            }
            let p = parse_frames(&buf);
            assert!(p.valid_len <= buf.len());
        }
    }
}

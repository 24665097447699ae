//! Container logs: what a container writes to stdout and stderr, one line per record in
//! the CRI format (`<RFC 3339 nanoseconds> <stream> <F|P> <text>`; `P` marks a piece of a
//! line longer than [`MAX_LINE`]), in a file that is rotated at a size cap so an SD card
//! never fills: `log`, then `log.1` ... `log.<files-1>`, oldest dropped.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::model::container::{LogCursor, LogLimits};

/// A line longer than this is written in pieces.
pub const MAX_LINE: usize = 16 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Writes one container's log, rotating at the cap.
pub struct LogWriter {
    path: PathBuf,
    file: File,
    size: u64,
    limits: LogLimits,
    /// Bytes of an unfinished line, per stream.
    pending: [Vec<u8>; 2],
}

impl LogWriter {
    pub fn open(path: &Path, limits: LogLimits) -> io::Result<LogWriter> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(LogWriter {
            path: path.to_path_buf(),
            file,
            size,
            limits,
            pending: [Vec::new(), Vec::new()],
        })
    }

    /// Takes bytes read from a stream; writes every complete line (and pieces of
    /// overlong ones).
    pub fn write(&mut self, stream: Stream, mut data: &[u8]) -> io::Result<()> {
        let i = stream as usize;
        while !data.is_empty() {
            match data.iter().position(|b| *b == b'\n') {
                Some(nl) => {
                    let mut line = std::mem::take(&mut self.pending[i]);
                    line.extend_from_slice(&data[..nl]);
                    data = &data[nl + 1..];
                    self.record(stream, &line, false)?;
                }
                None => {
                    self.pending[i].extend_from_slice(data);
                    data = &[];
                }
            }
            while self.pending[i].len() >= MAX_LINE {
                let rest = self.pending[i].split_off(MAX_LINE);
                let piece = std::mem::replace(&mut self.pending[i], rest);
                self.record(stream, &piece, true)?;
            }
        }
        Ok(())
    }

    /// At end of stream: an unfinished last line is written as it is.
    pub fn finish(&mut self, stream: Stream) -> io::Result<()> {
        let i = stream as usize;
        if !self.pending[i].is_empty() {
            let line = std::mem::take(&mut self.pending[i]);
            self.record(stream, &line, false)?;
        }
        Ok(())
    }

    /// Writes the unfinished lines of both streams as partial records (`P`), so
    /// nothing is held only in memory (before the keeper re-executes itself); what
    /// follows on each stream goes on the line in the next record.
    pub fn flush_partial(&mut self) -> io::Result<()> {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let piece = std::mem::take(&mut self.pending[stream as usize]);
            if !piece.is_empty() {
                self.record(stream, &piece, true)?;
            }
        }
        Ok(())
    }

    fn record(&mut self, stream: Stream, text: &[u8], partial: bool) -> io::Result<()> {
        let mut rec = format!(
            "{} {} {} ",
            rfc3339_nanos(SystemTime::now()),
            stream.name(),
            if partial { 'P' } else { 'F' }
        )
        .into_bytes();
        rec.extend_from_slice(text);
        rec.push(b'\n');
        if self.size > 0 && self.size + rec.len() as u64 > self.limits.max_size {
            self.rotate()?;
        }
        self.file.write_all(&rec)?;
        self.size += rec.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let keep = self.limits.max_files.max(1);
        if keep == 1 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        let _ = std::fs::remove_file(numbered(&self.path, keep - 1));
        for n in (1..keep - 1).rev() {
            let _ = std::fs::rename(numbered(&self.path, n), numbered(&self.path, n + 1));
        }
        std::fs::rename(&self.path, numbered(&self.path, 1))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// One record read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub time: String,
    pub stream: Stream,
    pub partial: bool,
    pub text: Vec<u8>,
}

fn parse_record(line: &[u8]) -> Option<Record> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = String::from_utf8(parts.next()?.to_vec()).ok()?;
    let stream = match parts.next()? {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    let partial = match parts.next()? {
        b"P" => true,
        b"F" => false,
        _ => return None,
    };
    Some(Record {
        time,
        stream,
        partial,
        text: parts.next().unwrap_or_default().to_vec(),
    })
}

/// Every record of a log (rotated files first, oldest first). Malformed lines (a torn
/// last write) are skipped.
pub fn read_all(path: &Path, max_files: u32) -> io::Result<Vec<Record>> {
    let mut out = Vec::new();
    let mut cursor = LogCursor::default();
    loop {
        let c = read_chunk(path, max_files, cursor, 1 << 20)?;
        out.extend(c.records);
        cursor = c.next;
        if !c.more {
            return Ok(out);
        }
    }
}

/// Formats a time as `2026-11-25T01:02:03.123456789Z`.
pub fn rfc3339_nanos(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days(secs / 86_400);
    let s = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        s / 3600,
        (s / 60) % 60,
        s % 60,
        d.subsec_nanos()
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift to a calendar whose years start on March 1st, in 400-year eras.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// The file behind the `n`-th name of a log (`log`, `log.1`, ...).
fn name_of(path: &Path, n: u32) -> PathBuf {
    if n == 0 {
        path.to_path_buf()
    } else {
        numbered(path, n)
    }
}

/// The inodes behind a log's names, oldest first.
fn names(path: &Path, max_files: u32) -> Vec<(u32, u64)> {
    (0..max_files.max(1))
        .rev()
        .filter_map(|n| {
            std::fs::metadata(name_of(path, n))
                .ok()
                .map(|m| (n, std::os::unix::fs::MetadataExt::ino(&m)))
        })
        .collect()
}

/// Every file of a log, oldest first, with its inode, opened as one consistent view:
/// the names did not move (a rotation) while they were opened. Rotated files never
/// change again.
fn open_view(path: &Path, max_files: u32) -> io::Result<Vec<(u64, File)>> {
    use std::os::unix::fs::MetadataExt;
    loop {
        let before = names(path, max_files);
        let mut files = Vec::with_capacity(before.len());
        for (n, _) in &before {
            if let Ok(f) = File::open(name_of(path, *n)) {
                files.push((f.metadata()?.ino(), f));
            }
        }
        if names(path, max_files) == before
            && files
                .iter()
                .map(|(i, _)| *i)
                .eq(before.iter().map(|(_, i)| *i))
        {
            return Ok(files);
        }
    }
}

/// Records read from a log by [`read_chunk`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub records: Vec<Record>,
    /// Where the next read starts.
    pub next: LogCursor,
    /// More is there already: read again at once rather than waiting.
    pub more: bool,
}

/// Bytes read backwards at a time by [`tail_cursor`].
const TAIL_BLOCK: usize = 64 << 10;
/// The smallest budget [`read_chunk`] takes: a whole record of the longest line fits.
pub const MIN_CHUNK: usize = 2 * MAX_LINE;

/// The records of a log from `from` on, up to `budget` bytes of it (at least
/// [`MIN_CHUNK`]), across rotations, never holding more than the budget: a reader that
/// keeps the returned cursor misses nothing still kept and reads nothing twice. A
/// cursor whose file was rotated out of what is kept (or that names no file) starts at
/// the oldest file there is; one past its file's end (a log kept in one file is
/// truncated in place) starts that file again. Bytes after a rotated file's last line
/// (a torn write) are skipped, as is a run of `budget` bytes without a line end (no
/// record is that long), so no content stalls a reader.
pub fn read_chunk(
    path: &Path,
    max_files: u32,
    from: LogCursor,
    budget: usize,
) -> io::Result<Chunk> {
    use std::os::unix::fs::FileExt;
    let budget = budget.max(MIN_CHUNK);
    let files = open_view(path, max_files)?;
    let (mut k, mut offset) = match files.iter().position(|(i, _)| *i == from.file) {
        Some(k) => (k, from.offset),
        None => (0, 0),
    };
    let mut buf = vec![0u8; budget];
    while let Some((ino, f)) = files.get(k) {
        if offset > f.metadata()?.len() {
            offset = 0;
        }
        let mut n = 0;
        while n < budget {
            match f.read_at(&mut buf[n..], offset + n as u64)? {
                0 => break,
                got => n += got,
            }
        }
        let last_file = k + 1 == files.len();
        match buf[..n].iter().rposition(|b| *b == b'\n') {
            Some(end) => {
                let records = buf[..end]
                    .split(|b| *b == b'\n')
                    .filter_map(parse_record)
                    .collect();
                return Ok(Chunk {
                    records,
                    next: LogCursor {
                        file: *ino,
                        offset: offset + end as u64 + 1,
                    },
                    more: n == budget || !last_file,
                });
            }
            None if n == budget => {
                return Ok(Chunk {
                    records: Vec::new(),
                    next: LogCursor {
                        file: *ino,
                        offset: offset + n as u64,
                    },
                    more: true,
                })
            }
            None if !last_file => {
                k += 1;
                offset = 0;
            }
            None => {
                return Ok(Chunk {
                    records: Vec::new(),
                    next: LogCursor { file: *ino, offset },
                    more: false,
                })
            }
        }
    }
    Ok(Chunk {
        records: Vec::new(),
        next: from,
        more: false,
    })
}

/// Where the last `n` records of a log start (the log's end for 0; its start when it
/// holds fewer), found by reading backwards a block at a time: memory stays at one
/// block whatever the log's size. An unfinished record at the end is not counted; it
/// is read once finished.
pub fn tail_cursor(path: &Path, max_files: u32, n: u64) -> io::Result<LogCursor> {
    use std::os::unix::fs::FileExt;
    let files = open_view(path, max_files)?;
    // The line end of each of the last `n` records, and the one before them.
    let mut want = n.saturating_add(1);
    let mut block = vec![0u8; TAIL_BLOCK];
    for (ino, f) in files.iter().rev() {
        let mut end = f.metadata()?.len();
        while end > 0 {
            let start = end.saturating_sub(TAIL_BLOCK as u64);
            #[allow(clippy::cast_possible_truncation)] // at most TAIL_BLOCK
            let len = (end - start) as usize;
            f.read_exact_at(&mut block[..len], start)?;
            for (i, b) in block[..len].iter().enumerate().rev() {
                if *b == b'\n' {
                    want -= 1;
                    if want == 0 {
                        return Ok(LogCursor {
                            file: *ino,
                            offset: start + i as u64 + 1,
                        });
                    }
                }
            }
            end = start;
        }
    }
    Ok(files
        .first()
        .map_or(LogCursor::default(), |(ino, _)| LogCursor {
            file: *ino,
            offset: 0,
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_782), (2026, 11, 25));
        let t = UNIX_EPOCH + std::time::Duration::new(1_795_568_523, 5);
        assert_eq!(rfc3339_nanos(t), "2026-11-25T01:02:03.000000005Z");
    }

    /// Every record from `from` on, read a chunk of `budget` at a time.
    fn read_chunks(path: &Path, max_files: u32, from: LogCursor, budget: usize) -> Vec<Vec<u8>> {
        let mut cursor = from;
        let mut out = Vec::new();
        loop {
            let c = read_chunk(path, max_files, cursor, budget).unwrap();
            assert!(
                c.records.iter().map(|r| r.text.len() + 40).sum::<usize>() <= budget.max(MIN_CHUNK)
            );
            out.extend(c.records.into_iter().map(|r| r.text));
            cursor = c.next;
            if !c.more {
                return out;
            }
        }
    }

    /// An empty directory for one test's log, the log's path in it, and small limits
    /// (4 KiB, 3 files) so a few lines rotate.
    fn scratch_log(tag: &str) -> (std::path::PathBuf, std::path::PathBuf, LogLimits) {
        let dir = std::env::temp_dir().join(format!("swarmlet-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        let limits = LogLimits {
            max_size: 4096,
            max_files: 3,
        };
        (dir, path, limits)
    }

    #[test]
    fn chunks_and_tails_across_rotations() {
        let (dir, path, limits) = scratch_log("chunks");
        // An empty log: nothing, from anywhere.
        assert_eq!(tail_cursor(&path, 3, 5).unwrap(), LogCursor::default());
        assert!(read_chunks(&path, 3, LogCursor::default(), 0).is_empty());
        let mut w = LogWriter::open(&path, limits).unwrap();
        for i in 0..1000 {
            w.write(Stream::Stdout, format!("line {i}\n").as_bytes())
                .unwrap();
        }
        let all: Vec<Vec<u8>> = read_all(&path, 3)
            .unwrap()
            .into_iter()
            .map(|r| r.text)
            .collect();
        assert!(all.len() > 100 && all.len() < 1000);
        // Read whole in small chunks (each at least MIN_CHUNK) or from the tail.
        assert_eq!(read_chunks(&path, 3, LogCursor::default(), 1), all);
        for n in [0u64, 1, 5, 150, 10_000, u64::MAX] {
            let from = tail_cursor(&path, 3, n).unwrap();
            let got = read_chunks(&path, 3, from, MIN_CHUNK);
            let keep = usize::try_from(n).unwrap_or(usize::MAX).min(all.len());
            assert_eq!(got, all[all.len() - keep..], "tail {n}");
        }
        // An unfinished last record is neither counted nor read until finished.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"2026-11-25T01:02:03.000000000Z stdout F unfini")
            .unwrap();
        let from = tail_cursor(&path, 3, 1).unwrap();
        let c = read_chunk(&path, 3, from, MIN_CHUNK).unwrap();
        assert_eq!(c.records.len(), 1);
        assert_eq!(c.records[0].text, b"line 999");
        assert!(!c.more);
        let c2 = read_chunk(&path, 3, c.next, MIN_CHUNK).unwrap();
        assert!(c2.records.is_empty() && c2.next == c.next);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"shed\n")
            .unwrap();
        let c3 = read_chunk(&path, 3, c.next, MIN_CHUNK).unwrap();
        assert_eq!(c3.records[0].text, b"unfinished");
        // A run of bytes with no line end longer than the budget is skipped, not
        // waited on; a cursor past its file's end (truncated in place) starts again.
        let junk = dir.join("junk");
        let mut bytes = vec![b'x'; 3 * MIN_CHUNK];
        bytes.extend_from_slice(b"\n2026-11-25T01:02:03.000000000Z stderr F after\n");
        std::fs::write(&junk, &bytes).unwrap();
        assert_eq!(
            read_chunks(&junk, 1, LogCursor::default(), 0),
            vec![b"after".to_vec()]
        );
        let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&junk).unwrap());
        let past = LogCursor {
            file: ino,
            offset: 1 << 40,
        };
        assert_eq!(read_chunks(&junk, 1, past, 0), vec![b"after".to_vec()]);
        // A cursor naming a file no longer kept starts at the oldest one.
        let gone = LogCursor { file: 1, offset: 7 };
        assert_eq!(read_chunks(&path, 3, gone, 0).len(), all.len() + 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn chunks_while_written_miss_nothing_and_repeat_nothing() {
        let dir = std::env::temp_dir().join(format!("swarmlet-chunkw-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let limits = LogLimits {
            max_size: 16 << 10,
            max_files: 100,
        };
        const LINES: u32 = 20_000;
        for round in 0..10u32 {
            let path = dir.join(format!("log{round}"));
            let mut w = LogWriter::open(&path, limits).unwrap();
            w.write(Stream::Stdout, b"line 0\n").unwrap();
            let done = std::sync::atomic::AtomicBool::new(false);
            let got = std::thread::scope(|s| {
                s.spawn(|| {
                    for i in 1..LINES {
                        w.write(Stream::Stdout, format!("line {i}\n").as_bytes())
                            .unwrap();
                    }
                    done.store(true, std::sync::atomic::Ordering::SeqCst);
                });
                std::thread::sleep(std::time::Duration::from_micros(u64::from(round) * 300));
                let mut cursor = LogCursor::default();
                let mut texts = Vec::new();
                loop {
                    let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                    let c = read_chunk(&path, limits.max_files, cursor, MIN_CHUNK).unwrap();
                    texts.extend(c.records.into_iter().map(|r| r.text));
                    cursor = c.next;
                    if finished && !c.more {
                        break texts;
                    }
                }
            });
            let nums: Vec<u32> = got
                .iter()
                .map(|t| {
                    std::str::from_utf8(t).unwrap()["line ".len()..]
                        .parse()
                        .unwrap()
                })
                .collect();
            assert_eq!(
                nums.len(),
                LINES as usize,
                "round {round}: lost or repeated"
            );
            assert!(
                nums.iter().enumerate().all(|(i, n)| *n == i as u32),
                "round {round}: out of order"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn lines_pieces_and_rotation() {
        let (dir, path, limits) = scratch_log("logs");
        let mut w = LogWriter::open(&path, limits).unwrap();
        w.write(Stream::Stdout, b"hel").unwrap();
        w.write(Stream::Stderr, b"oops\n").unwrap();
        w.write(Stream::Stdout, b"lo\nwor").unwrap();
        w.finish(Stream::Stdout).unwrap();
        let recs = read_all(&path, 3).unwrap();
        let texts: Vec<(&[u8], Stream)> = recs.iter().map(|r| (&r.text[..], r.stream)).collect();
        assert_eq!(
            texts,
            vec![
                (&b"oops"[..], Stream::Stderr),
                (&b"hello"[..], Stream::Stdout),
                (&b"wor"[..], Stream::Stdout)
            ]
        );
        // A long line comes back in pieces, the last one full.
        let long = vec![b'x'; MAX_LINE * 2 + 5];
        let mut w = LogWriter::open(&dir.join("long"), LogLimits::default()).unwrap();
        w.write(Stream::Stdout, &long).unwrap();
        w.write(Stream::Stdout, b"\n").unwrap();
        let recs = read_all(&dir.join("long"), 1).unwrap();
        assert_eq!(recs.len(), 3);
        assert!(recs[0].partial && recs[1].partial && !recs[2].partial);
        assert_eq!(recs.iter().map(|r| r.text.len()).sum::<usize>(), long.len());
        // A writer flushed mid-line (a keeper about to re-execute) and a new one on the
        // same file: one partial record, then the rest of the line.
        let mut w = LogWriter::open(&dir.join("handed"), LogLimits::default()).unwrap();
        w.write(Stream::Stdout, b"done\nhalf a ").unwrap();
        w.flush_partial().unwrap();
        drop(w);
        let mut w = LogWriter::open(&dir.join("handed"), LogLimits::default()).unwrap();
        w.write(Stream::Stdout, b"line\n").unwrap();
        let recs = read_all(&dir.join("handed"), 1).unwrap();
        let got: Vec<(&[u8], bool)> = recs.iter().map(|r| (&r.text[..], r.partial)).collect();
        assert_eq!(
            got,
            vec![
                (&b"done"[..], false),
                (&b"half a "[..], true),
                (&b"line"[..], false)
            ]
        );
        // Rotation keeps at most 3 files of at most 4 KiB, the newest lines last.
        let mut w = LogWriter::open(&path, limits).unwrap();
        for i in 0..1000 {
            w.write(Stream::Stdout, format!("line {i}\n").as_bytes())
                .unwrap();
        }
        for n in [0, 1, 2] {
            let p = if n == 0 {
                path.clone()
            } else {
                numbered(&path, n)
            };
            assert!(
                std::fs::metadata(&p).unwrap().len() <= 4096,
                "{}",
                p.display()
            );
        }
        assert!(!numbered(&path, 3).exists());
        let recs = read_all(&path, 3).unwrap();
        assert_eq!(recs.last().unwrap().text, b"line 999");
        assert!(recs.len() < 1000 && recs.len() > 100);
        let nums: Vec<u32> = recs
            .iter()
            .filter_map(|r| {
                std::str::from_utf8(&r.text)
                    .ok()?
                    .strip_prefix("line ")?
                    .parse()
                    .ok()
            })
            .collect();
        assert!(
            nums.windows(2).all(|w| w[1] == w[0] + 1),
            "in order, none lost between kept files"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

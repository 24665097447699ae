//! The daemon's log lines, on stderr.
//!
//! Under systemd, stderr is a stream into journald (the unit says `StandardError=journal`).
//! journald stamps each line with the time and the unit's `SyslogIdentifier`, and reads a
//! leading `<N>` as the line's syslog priority (sd-daemon's convention). So there a line is
//! `<3>cannot save membership: ...`: the level for `journalctl -p`, and no timestamp or
//! program name of our own to show twice. Anywhere else (a terminal, a file, a test's pipe)
//! it is `swarmlet: cannot save membership: ...`, as before.
//!
//! Whether stderr is journald's is decided the way systemd documents it: `$JOURNAL_STREAM`
//! holds `device:inode` of the stream it connected, and must match what fd 2 is now (a
//! shell redirect in between leaves the variable but changes fd 2).

use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// Syslog priorities the daemon uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Something failed and was not retried or worked around.
    Error = 3,
    /// Something failed and was worked around, or will be retried.
    Warning = 4,
    /// A change of state worth a line: ready, role changes.
    Info = 6,
}

/// `--log-level`'s names, each with the least urgent priority it lets through. (debug and
/// trace have no lines of their own yet; they show everything.)
const THRESHOLDS: [(&str, u8); 5] = [
    ("error", Level::Error as u8),
    ("warn", Level::Warning as u8),
    ("info", Level::Info as u8),
    ("debug", 7),
    ("trace", 7),
];

/// The least urgent priority written; info by default.
static THRESHOLD: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// The environment variable that hands the level to a process the daemon starts (the
/// keeper), which has no `--log-level` of its own.
pub const LEVEL_ENV: &str = "SWARMLET_LOG_LEVEL";

/// The `--log-level` name of the level in force.
pub fn level_name() -> &'static str {
    let t = THRESHOLD.load(Ordering::Relaxed);
    THRESHOLDS
        .iter()
        .find(|(_, p)| *p == t)
        .map_or("info", |(n, _)| n)
}

/// Sets the level by its `--log-level` name; an unknown name is refused, naming the known.
pub fn set_level(name: &str) -> Result<(), String> {
    let (_, p) = THRESHOLDS.iter().find(|(n, _)| *n == name).ok_or_else(|| {
        let known: Vec<&str> = THRESHOLDS.iter().map(|(n, _)| *n).collect();
        format!("unknown level {name:?} (known: {})", known.join(", "))
    })?;
    THRESHOLD.store(*p, Ordering::Relaxed);
    Ok(())
}

/// Writes one line at `level`, unless `--log-level` asked for less. `what` is the
/// message (no trailing newline).
pub fn emit(level: Level, what: std::fmt::Arguments<'_>) {
    if level as u8 > THRESHOLD.load(Ordering::Relaxed) {
        return;
    }
    let line = render(level, to_journal(), &what.to_string());
    // One write per line, so lines of different threads never interleave; a failed
    // write to stderr has nowhere to be reported.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// The bytes of one line, newline included. For journald, embedded newlines would split
/// it into several entries (the later ones without a level): there they become spaces.
/// A terminal shows the message as it was written.
fn render(level: Level, journal: bool, what: &str) -> String {
    if journal {
        format!("<{}>{}\n", level as u8, what.replace('\n', " "))
    } else {
        format!("swarmlet: {what}\n")
    }
}

/// Whether stderr is the journald stream systemd set up for this process.
pub fn to_journal() -> bool {
    static CACHED: OnceLock<bool> = OnceLock::new();
    *CACHED.get_or_init(|| {
        let Some(var) = std::env::var_os("JOURNAL_STREAM") else {
            return false;
        };
        let Ok(st) = rustix::fs::fstat(std::io::stderr()) else {
            return false;
        };
        stream_matches(&var.to_string_lossy(), st.st_dev, st.st_ino)
    })
}

/// `$JOURNAL_STREAM` (`device:inode`, both decimal) names the file `dev`/`ino`.
fn stream_matches(var: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = var.split_once(':') else {
        return false;
    };
    d.parse::<u64>() == Ok(dev) && i.parse::<u64>() == Ok(ino)
}

/// Logs an error line (see [`crate::logging`]).
macro_rules! error {
    ($($arg:tt)*) => { $crate::logging::emit($crate::logging::Level::Error, format_args!($($arg)*)) };
}

/// Logs a warning line (see [`crate::logging`]).
macro_rules! warning {
    ($($arg:tt)*) => { $crate::logging::emit($crate::logging::Level::Warning, format_args!($($arg)*)) };
}

/// Logs an informational line (see [`crate::logging`]).
macro_rules! info {
    ($($arg:tt)*) => { $crate::logging::emit($crate::logging::Level::Info, format_args!($($arg)*)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journald_lines_carry_the_priority_and_no_name() {
        assert_eq!(
            render(Level::Error, true, "cannot save membership: disk full"),
            "<3>cannot save membership: disk full\n"
        );
        assert_eq!(render(Level::Warning, true, "x"), "<4>x\n");
        assert_eq!(render(Level::Info, true, "ready"), "<6>ready\n");
        assert_eq!(render(Level::Info, false, "ready"), "swarmlet: ready\n");
        assert_eq!(
            render(Level::Error, true, "two\nlines"),
            "<3>two lines\n",
            "one entry, not a second one without a level"
        );
        assert_eq!(
            render(Level::Error, false, "two\nlines"),
            "swarmlet: two\nlines\n"
        );
    }

    #[test]
    fn levels_are_known_by_name() {
        assert_eq!(set_level("info"), Ok(()));
        let e = set_level("loud").unwrap_err();
        assert!(
            e.contains("\"loud\"") && e.contains("error, warn, info"),
            "{e}"
        );
        assert_eq!(
            THRESHOLD.load(Ordering::Relaxed),
            6,
            "unchanged by a refusal"
        );
        for name in ["error", "warn", "info", "debug"] {
            set_level(name).unwrap();
            assert_eq!(level_name(), name);
        }
    }

    #[test]
    fn the_stream_must_be_the_one_systemd_named() {
        assert!(stream_matches("8:12345", 8, 12345));
        assert!(
            !stream_matches("8:12345", 8, 12346),
            "stderr was redirected"
        );
        assert!(!stream_matches("8:12345", 9, 12345));
        assert!(!stream_matches("", 8, 12345));
        assert!(!stream_matches("8", 8, 12345));
        assert!(!stream_matches("x:y", 8, 12345));
    }
}

//! What a daemon checks before it creates anything. A daemon that cannot run (its
//! socket is in use, a path cannot be made or written, another daemon holds the data
//! dir) must say so before it has made a data dir, a node key or a keeper, so that a
//! mistyped flag leaves nothing behind to clean up.
//!
//! The checks can race with another process changing the same paths; the steps that
//! follow still fail cleanly then (the data dir lock, the socket bind). Their point is
//! the common mistakes, caught with nothing made.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use anyhow::{anyhow, bail};
use rustix::fs::{Access, FlockOperation};

/// Refuses to start, naming the path and the reason, if the daemon could not run with
/// this data dir and API socket.
pub fn preflight(data_dir: &Path, socket: &Path) -> anyhow::Result<()> {
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        bail!("socket {} is in use by a running daemon", socket.display());
    }
    match std::fs::symlink_metadata(socket) {
        // A stale socket of a daemon that died is replaced; anything else is not ours.
        Ok(m) if !m.file_type().is_socket() => bail!(
            "socket {} exists and is not a socket; refusing to replace it",
            socket.display()
        ),
        Ok(_) => {}
        // Missing, or its directory is: the directory check below says which.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) => {}
        Err(e) => bail!("socket {}: {e}", socket.display()),
    }
    let socket_dir = socket
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    can_make_or_write("socket directory", socket_dir)?;
    can_make_or_write("data dir", data_dir)?;
    not_locked(data_dir)
}

/// `dir` is a writable directory, or the nearest of its ancestors that exists is one
/// (so `create_dir_all` can make it).
fn can_make_or_write(what: &str, dir: &Path) -> anyhow::Result<()> {
    let mut at = dir;
    loop {
        match std::fs::metadata(at) {
            Ok(m) if m.is_dir() => {
                // access(2) also reports a read-only filesystem (EROFS), which root's
                // permission override does not hide.
                return rustix::fs::access(at, Access::WRITE_OK | Access::EXEC_OK).map_err(|e| {
                    if at == dir {
                        anyhow!("{what} {} is not writable: {e}", dir.display())
                    } else {
                        anyhow!(
                            "{what} {} cannot be made: {} is not writable: {e}",
                            dir.display(),
                            at.display()
                        )
                    }
                });
            }
            Ok(_) => bail!(
                "{what} {} cannot be made: {} is not a directory",
                dir.display(),
                at.display()
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                at = match at.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p,
                    // A relative path whose first component is missing: made in the
                    // working directory.
                    _ => Path::new("."),
                };
            }
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => bail!(
                "{what} {} cannot be made: a component of its path is not a directory",
                dir.display()
            ),
            Err(e) => bail!("{what} {}: {}: {e}", dir.display(), at.display()),
        }
    }
}

/// No other daemon holds the data dir's lock (taken for real once the dir is made).
fn not_locked(data_dir: &Path) -> anyhow::Result<()> {
    let Ok(lock) = std::fs::File::open(data_dir.join("lock")) else {
        return Ok(()); // no lock file yet: no daemon ever ran here
    };
    rustix::fs::flock(&lock, FlockOperation::NonBlockingLockShared).map_err(|_| {
        anyhow!(
            "another swarmlet daemon is already running on data dir {}",
            data_dir.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked_up_to_what_exists() {
        let t = std::env::temp_dir().join(format!("swarmlet-preflight-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&t);
        std::fs::create_dir_all(&t).unwrap();
        let file = t.join("file");
        std::fs::write(&file, "x").unwrap();
        can_make_or_write("data dir", &t).unwrap();
        can_make_or_write("data dir", &t.join("a/b/c")).unwrap();
        let err = can_make_or_write("data dir", &file.join("d")).unwrap_err();
        assert!(err.to_string().contains("is not a directory"), "{err}");
        let err = preflight(&t.join("data"), &file).unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
        preflight(&t.join("data"), &t.join("sock")).unwrap();
        assert!(!t.join("data").exists() && !t.join("sock").exists());
        // A data dir another process holds the lock of.
        std::fs::create_dir_all(t.join("held")).unwrap();
        let lock = std::fs::File::create(t.join("held/lock")).unwrap();
        rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive).unwrap();
        let err = preflight(&t.join("held"), &t.join("sock")).unwrap_err();
        assert!(err.to_string().contains("already running"), "{err}");
        std::fs::remove_dir_all(&t).unwrap();
    }
}

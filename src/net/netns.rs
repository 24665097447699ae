//! Named network namespaces: made before a task's container starts, so its interfaces,
//! balancer and DNS socket are in place before its first instruction runs (a process
//! that connects at once must not find an empty namespace), and joined by the
//! container through its path.
//!
//! A namespace lives as long as a bind mount of it exists (the `ip netns` convention):
//! made on a thread of its own (`unshare` changes only that thread), mounted over an
//! empty file, and gone when unmounted and no process is left in it.

use std::fs::{self, File};
use std::io;
use std::path::Path;

use rustix::mount::{mount_bind, unmount, UnmountFlags};
use rustix::thread::{unshare_unsafe, UnshareFlags};

#[derive(Debug, thiserror::Error)]
#[error("network namespace {path}: {what}: {source}")]
pub struct NetnsError {
    pub path: String,
    pub what: &'static str,
    #[source]
    pub source: io::Error,
}

/// Makes a network namespace with only a loopback interface (down) and pins it at
/// `path`. An existing namespace at `path` is kept (a daemon restart finds it wired).
pub fn create(path: &Path) -> Result<(), NetnsError> {
    let err = |what, source| NetnsError {
        path: path.display().to_string(),
        what,
        source,
    };
    if is_pinned(path) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| err("create directory", e))?;
    }
    File::create(path).map_err(|e| err("create file", e))?;
    let made = std::thread::scope(|s| {
        s.spawn(|| -> io::Result<()> {
            // SAFETY: only this short-lived thread changes namespace; it shares no file
            // table changes (CLONE_FILES is not asked for) and exits right after.
            unsafe { unshare_unsafe(UnshareFlags::NEWNET) }?;
            mount_bind("/proc/thread-self/ns/net", path)?;
            Ok(())
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("thread panicked")))
    });
    if let Err(e) = made {
        let _ = fs::remove_file(path);
        return Err(err("make and pin", e));
    }
    Ok(())
}

/// Unpins and removes a namespace; the namespace itself goes with its last process.
/// Nothing there is not an error.
pub fn remove(path: &Path) -> Result<(), NetnsError> {
    let err = |what, source| NetnsError {
        path: path.display().to_string(),
        what,
        source,
    };
    if is_pinned(path) {
        unmount(path, UnmountFlags::DETACH).map_err(|e| err("unmount", e.into()))?;
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err("remove", e)),
    }
}

/// A namespace is mounted there: the file is on the `nsfs` filesystem.
pub fn is_pinned(path: &Path) -> bool {
    // NSFS_MAGIC, from linux/magic.h (the field's type differs between arches).
    rustix::fs::statfs(path).is_ok_and(|s| s.f_type == 0x6e73_6673)
}

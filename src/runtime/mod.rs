//! Containers on this node: OCI runtime specs from images, root filesystems on overlayfs,
//! and the keeper that runs them through libcontainer (in a helper process) and keeps
//! their logs and exit codes while the daemon is away.

pub mod helper;
pub mod keeper;
pub mod logs;
pub mod rootfs;
pub mod seccomp;
pub mod spec;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// This process's own binary as a path `execve` takes even after the file it was
/// started from has been replaced or removed (an in-place upgrade, `swarmlet install`):
/// the kernel resolves it to the running executable itself, never to whatever the old
/// path names now. The daemon starts the keeper and its helpers through it, and the
/// keeper its helpers, so each runs the very build of the process that talks to it:
/// helper arguments never cross versions, and the keeper a daemon starts is of its own
/// version. (A keeper that outlived an upgrade goes on running the old build, with
/// its helpers.)
pub const SELF_EXE: &str = "/proc/self/exe";

/// A command that runs `exe`. For [`SELF_EXE`], argv[0] is the name this process was
/// started with, so `ps` shows the binary's path rather than `/proc/self/exe`.
pub fn command(exe: &Path) -> Command {
    let mut c = Command::new(exe);
    if exe == Path::new(SELF_EXE) {
        if let Some(name) = std::env::args_os().next() {
            c.arg0(name);
        }
    }
    c
}

/// Names this process `swarmlet` in /proc/PID/comm (what `ps -e`, `top` and `pgrep`
/// show): a process started through [`SELF_EXE`] is otherwise named `exe`.
pub fn set_process_name() {
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, c"swarmlet".as_ptr());
    }
}

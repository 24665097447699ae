//! A container's root filesystem: overlayfs with the image's unpacked layers as lower
//! directories (shared, never written) and a per-container upper and work directory.

use std::io;
use std::path::{Path, PathBuf};

use rustix::mount::{mount, unmount, MountFlags, UnmountFlags};

/// The kernel takes mount options up to a page long.
const MAX_OPTIONS: usize = 4000;

/// Mounts `lower` (the image's layers, top-most last as in the image) under `target`,
/// with writes going to `upper` (and `work`, overlayfs's scratch space).
pub fn mount_overlay(
    lower: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> io::Result<()> {
    if lower.is_empty() {
        return Err(io::Error::other(
            "an image with no layers has no root filesystem",
        ));
    }
    for d in [upper, work, target] {
        std::fs::create_dir_all(d)?;
    }
    // overlayfs lists the top-most lower directory first.
    let lowers: Vec<String> = lower
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    for l in &lowers {
        if l.contains(',') || l.contains(':') {
            return Err(io::Error::other(format!(
                "layer path {l} has a ',' or ':' overlayfs cannot take"
            )));
        }
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        upper.display(),
        work.display()
    );
    if opts.len() > MAX_OPTIONS {
        return Err(io::Error::other(format!(
            "{} layers make overlay options of {} bytes, above the kernel's page",
            lower.len(),
            opts.len()
        )));
    }
    let data = std::ffi::CString::new(opts).map_err(io::Error::other)?;
    mount(
        "overlay",
        target,
        "overlay",
        MountFlags::empty(),
        Some(data.as_c_str()),
    )?;
    Ok(())
}

/// Unmounts `target` if it is mounted (lazily: a process still inside lets go later).
pub fn unmount_overlay(target: &Path) -> io::Result<()> {
    match unmount(target, UnmountFlags::DETACH) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => Ok(()), // not mounted
        Err(e) => Err(e.into()),
    }
}

/// Whether `target` is a mount point (listed in /proc/self/mountinfo).
pub fn is_mounted(target: &Path) -> bool {
    let t = target.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(t.as_str()))
}

//! Containers on this node: OCI runtime specs from images, root filesystems on overlayfs,
//! and the keeper that runs them through libcontainer (in a helper process) and keeps
//! their logs and exit codes while the daemon is away.

pub mod helper;
pub mod keeper;
pub mod logs;
pub mod rootfs;
pub mod seccomp;
pub mod spec;

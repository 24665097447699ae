//! Containers as both ends see them: what `run` asks for ([`ContainerSpec`]), the record
//! the daemon keeps, where a container is in its life, and the view `ps` and `inspect`
//! show.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::health::{HealthSpec, HealthState};
use super::Digest;

/// Docker's default grace period between the stop signal and SIGKILL.
pub const DEFAULT_STOP_TIMEOUT: i64 = 10;

/// Longest container name: it names a directory and shows in `ps`.
pub const MAX_CONTAINER_NAME: usize = 128;

/// Docker's rule for a container name: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, here up to
/// [`MAX_CONTAINER_NAME`] characters.
pub fn valid_container_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_CONTAINER_NAME
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// Whether `id` is a container id as the engine makes them: 64 lowercase hex digits.
pub fn is_container_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkMode {
    /// Its own network namespace with only loopback.
    #[default]
    None,
    /// The host's network namespace.
    Host,
    /// A namespace the daemon made and pinned at this path before the container starts
    /// (a task's, wired to its networks); the container joins it.
    Netns(String),
    /// `run`'s default: a namespace of its own with one interface on the node's local
    /// bridge and a way out through it (Docker's `bridge` network).
    Bridge,
    /// Asked for by a client that named no network: the daemon's default (the bridge,
    /// or `None` when it runs with `--bridge none`). Never stored.
    Default,
    /// An attachable overlay network of the node's cluster, as the user named it: the
    /// leader gives the container an address on it, the node wires a namespace.
    Attach(String),
}

impl NetworkMode {
    /// As `inspect`'s `HostConfig.NetworkMode` and `ps -f network=` name it.
    pub fn name(&self) -> String {
        match self {
            NetworkMode::None => "none".to_string(),
            NetworkMode::Host => "host".to_string(),
            NetworkMode::Netns(path) => format!("netns:{path}"),
            NetworkMode::Bridge => "bridge".to_string(),
            NetworkMode::Default => "default".to_string(),
            NetworkMode::Attach(net) => net.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountKind {
    /// A host path.
    Bind,
    /// A named volume: a directory the daemon keeps under its data dir.
    Volume,
    Tmpfs,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    pub kind: MountKind,
    /// Host path (bind), volume name, or empty (tmpfs).
    pub source: String,
    pub target: String,
    pub readonly: bool,
}

/// A host device made available in the container (`--device /dev/ttyUSB0[:/dev/x][:rwm]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSpec {
    pub host: String,
    pub container: String,
    pub access: String,
}

/// What the user asked for, beyond the image.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's Cmd when not empty.
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub hostname: Option<String>,
    pub network: NetworkMode,
    pub mounts: Vec<MountSpec>,
    pub memory: Option<i64>,
    /// CPUs, e.g. 0.5.
    pub cpus: Option<f64>,
    pub pids_limit: Option<i64>,
    pub privileged: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub devices: Vec<DeviceSpec>,
    pub labels: BTreeMap<String, String>,
    /// `-p`: ports of the node that lead to the container (on the local bridge).
    #[serde(default)]
    pub ports: Vec<PortBinding>,
}

/// One `run -p`: connections to `host` on any of the node's addresses go to the
/// container's `container` port. `host` 0 asks the daemon to pick a free one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortBinding {
    pub protocol: super::Protocol,
    pub host: u16,
    pub container: u16,
}

impl std::fmt::Display for PortBinding {
    /// Docker's PORTS column: `0.0.0.0:8080->80/tcp`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "0.0.0.0:{}->{}/{}",
            self.host,
            self.container,
            self.protocol.name()
        )
    }
}

impl ContainerSpec {
    /// Joins the namespace the daemon pinned at `netns`, with its resolv.conf and hosts
    /// files bound in read-only unless the spec mounts its own there.
    pub fn join_netns(
        &mut self,
        netns: &std::path::Path,
        resolv_conf: &std::path::Path,
        hosts: &std::path::Path,
    ) {
        self.network = NetworkMode::Netns(netns.display().to_string());
        for (source, target) in [(resolv_conf, "/etc/resolv.conf"), (hosts, "/etc/hosts")] {
            if !self.mounts.iter().any(|m| m.target == target) {
                self.mounts.push(MountSpec {
                    kind: MountKind::Bind,
                    source: source.display().to_string(),
                    target: target.into(),
                    readonly: true,
                });
            }
        }
    }
}

/// Size cap of each file and how many files are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLimits {
    pub max_size: u64,
    pub max_files: u32,
}

impl Default for LogLimits {
    /// 10 MiB in 2 files: at most 20 MiB per container.
    fn default() -> Self {
        LogLimits {
            max_size: 10 << 20,
            max_files: 2,
        }
    }
}

/// Where a reader stands in a container's log: the file, by inode (a rotation renames
/// a file but keeps its inode), and the byte offset in it. The default names no file:
/// the start of the oldest file kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogCursor {
    pub file: u64,
    pub offset: u64,
}

/// A container as created.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub name: String,
    /// The image as the user named it.
    pub image: String,
    pub image_id: Digest,
    pub spec: ContainerSpec,
    /// Milliseconds since the epoch.
    pub created: u64,
    pub stop_signal: String,
    /// Seconds between the stop signal and SIGKILL; -1: no SIGKILL, wait.
    pub stop_timeout: i64,
    pub auto_remove: bool,
    pub log: LogLimits,
    #[serde(default)]
    pub health: Option<HealthSpec>,
    #[serde(default)]
    pub restart: RestartPolicy,
    /// The image's unpacked layers, bottom first: enough to mount the root filesystem
    /// again after a reboot (the image cannot be removed while the container exists).
    #[serde(default)]
    pub lower: Vec<PathBuf>,
}

/// Where a container is in its life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    Created,
    Running {
        pid: i32,
        started_at: u64,
    },
    Exited {
        /// None when it ended while nobody could observe its status.
        code: Option<i32>,
        oom_killed: bool,
        started_at: u64,
        finished_at: u64,
    },
}

/// When the daemon starts a container again after it exits (`--restart`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    #[default]
    No,
    /// After a non-zero exit, at most this many times (0: no limit).
    OnFailure(u32),
    /// After any exit; also when the daemon starts, even if it had been stopped.
    Always,
    /// After any exit, unless it was stopped by the user (also across daemon restarts).
    UnlessStopped,
}

impl RestartPolicy {
    pub fn parse(s: &str) -> Result<RestartPolicy, String> {
        match s.split_once(':') {
            None if s == "no" => Ok(RestartPolicy::No),
            None if s == "always" => Ok(RestartPolicy::Always),
            None if s == "unless-stopped" => Ok(RestartPolicy::UnlessStopped),
            None if s == "on-failure" => Ok(RestartPolicy::OnFailure(0)),
            Some(("on-failure", n)) => n
                .parse()
                .map(RestartPolicy::OnFailure)
                .map_err(|_| format!("{s:?}: the count after on-failure: must be a number")),
            _ => Err(format!(
                "{s:?}: expected no, always, unless-stopped or on-failure[:MAX]"
            )),
        }
    }
}

/// A record with its status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerView {
    pub record: ContainerRecord,
    pub status: Status,
    /// Health of the current run, for containers with a check.
    pub health: Option<HealthState>,
}

/// `SIGTERM`, `TERM`, `term` or `15`.
pub fn signal_number(s: &str) -> Result<i32, String> {
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        return Err(format!("invalid signal: {s}"));
    }
    let up = s.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    let n = match name {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "ILL" => 4,
        "TRAP" => 5,
        "ABRT" => 6,
        "BUS" => 7,
        "FPE" => 8,
        "KILL" => 9,
        "USR1" => 10,
        "SEGV" => 11,
        "USR2" => 12,
        "PIPE" => 13,
        "ALRM" => 14,
        "TERM" => 15,
        "CHLD" => 17,
        "CONT" => 18,
        "STOP" => 19,
        "TSTP" => 20,
        "TTIN" => 21,
        "TTOU" => 22,
        "URG" => 23,
        "XCPU" => 24,
        "XFSZ" => 25,
        "VTALRM" => 26,
        "PROF" => 27,
        "WINCH" => 28,
        "IO" => 29,
        "PWR" => 30,
        "SYS" => 31,
        _ => return Err(format!("invalid signal: {s}")),
    };
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_and_number() {
        assert_eq!(signal_number("SIGTERM"), Ok(15));
        assert_eq!(signal_number("kill"), Ok(9));
        assert_eq!(signal_number("10"), Ok(10));
        assert!(signal_number("SIGNOPE").unwrap_err().contains("SIGNOPE"));
        assert!(signal_number("0").is_err());
    }
}

//! The OCI runtime spec (`config.json`) of a container, from its image's config and what
//! the user asked for. Defaults follow Docker's: its capability set, masked and
//! read-only /proc and /sys paths, a device cgroup that denies all but the usual
//! character devices; plus no-new-privileges on by default (Docker makes it opt-in).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};

use crate::image::oci::RunConfig;
use crate::model::container::{ContainerSpec, MountKind, NetworkMode};

/// Docker's default capabilities.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability (for `--privileged` and `--cap-add ALL`), as of Linux 5.9.
pub const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Resolved identity of the process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub home: String,
}

/// The process's arguments: entrypoint then command, user's choices over the image's.
pub fn args(image: &RunConfig, spec: &ContainerSpec) -> Vec<String> {
    let entry = spec
        .entrypoint
        .clone()
        .or_else(|| image.entrypoint.clone())
        .unwrap_or_default();
    let cmd = if !spec.cmd.is_empty() {
        spec.cmd.clone()
    } else if spec.entrypoint.is_some() {
        // A new entrypoint drops the image's Cmd, as in Docker.
        Vec::new()
    } else {
        image.cmd.clone().unwrap_or_default()
    };
    entry.into_iter().chain(cmd).collect()
}

/// The environment: the image's, then the user's (later wins), with PATH and HOSTNAME
/// and HOME filled in as Docker does.
pub fn env(image: &RunConfig, spec: &ContainerSpec, hostname: &str, home: &str) -> Vec<String> {
    let mut vars: Vec<(String, String)> = Vec::new();
    let mut set = |kv: &str| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match vars.iter_mut().find(|(x, _)| x == k) {
            Some(slot) => slot.1 = v.to_string(),
            None => vars.push((k.to_string(), v.to_string())),
        }
    };
    set(&format!("PATH={DEFAULT_PATH}"));
    set(&format!("HOSTNAME={hostname}"));
    for e in image.env.iter().flatten() {
        set(e);
    }
    for e in &spec.env {
        set(e);
    }
    if !vars.iter().any(|(k, _)| k == "HOME") {
        vars.push(("HOME".into(), home.to_string()));
    }
    vars.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The capabilities this process may hand on (its bounding set), from /proc.
pub fn bounding_set() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(u64::MAX)
}

fn cap_bit(name: &str) -> u64 {
    ALL_CAPS
        .iter()
        .position(|c| *c == name)
        .map_or(0, |i| 1u64 << i)
}

/// Smallest memory limit taken (`--memory`): below it a container cannot start a shell.
pub const MIN_MEMORY: i64 = 4 << 20;
/// Largest memory limit taken: a pebibyte, above any host swarmlet runs on. Beyond it the
/// figure is a typing mistake, and near 2^63 the kernel turns it into "no limit".
pub const MAX_MEMORY: i64 = 1 << 50;
/// Smallest CPU share (`--cpus`), as Docker: a 1 ms quota in a 100 ms period.
pub const MIN_CPUS: f64 = 0.01;

/// Docker's rule for a volume name: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`. The first character
/// keeps `.` and `..` out, which would name the volumes directory itself or its parent,
/// the data dir.
pub fn valid_volume_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() >= 2
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// How many CPUs this process may run on (its affinity mask, which is what Docker
/// counts), at least 1.
pub fn host_cpus() -> usize {
    // SAFETY: a zeroed cpu_set_t is a valid empty set, and sched_getaffinity writes at
    // most its size into it.
    let n = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            usize::try_from(libc::CPU_COUNT(&set)).unwrap_or(0)
        } else {
            0
        }
    };
    if n > 0 {
        n
    } else {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    }
}

/// Checks a spec as the daemon must, whoever sent it (the CLI checks the same before
/// asking): volume names, absolute paths, limits within range on a host with
/// `host_cpus` CPUs. Errors name the flag.
pub fn validate(spec: &ContainerSpec, host_cpus: usize) -> Result<(), String> {
    for m in &spec.mounts {
        let flag = if m.kind == MountKind::Tmpfs {
            "--tmpfs"
        } else {
            "-v"
        };
        if !m.target.starts_with('/') {
            return Err(format!(
                "{flag}: target {:?} must be an absolute path",
                m.target
            ));
        }
        match m.kind {
            MountKind::Bind if !m.source.starts_with('/') => {
                return Err(format!(
                    "-v: bind source {:?} must be an absolute path",
                    m.source
                ))
            }
            MountKind::Volume if !valid_volume_name(&m.source) => {
                return Err(format!(
                    "-v: {:?} is not a volume name ([a-zA-Z0-9][a-zA-Z0-9_.-]+, two characters at least); give an absolute path for a host directory",
                    m.source
                ))
            }
            _ => {}
        }
    }
    if let Some(m) = spec.memory {
        if !(MIN_MEMORY..=MAX_MEMORY).contains(&m) {
            return Err(format!("--memory: {m} bytes is outside 4 MiB to 1 PiB"));
        }
    }
    if let Some(c) = spec.cpus {
        #[allow(clippy::cast_precision_loss)] // a CPU count is far below 2^52
        let max = host_cpus as f64;
        if !(MIN_CPUS..=max).contains(&c) {
            return Err(format!(
                "--cpus: range of CPUs is from 0.01 to {host_cpus}.00, as there are only {host_cpus} CPUs available"
            ));
        }
    }
    if let Some(w) = &spec.workdir {
        if !w.starts_with('/') {
            return Err(format!(
                "-w: working directory {w:?} must be an absolute path"
            ));
        }
    }
    Ok(())
}

/// The capability set after `--privileged`, `--cap-add` and `--cap-drop`, within
/// `bounding` (what the host lets us give: Docker's `--privileged` means every
/// capability the daemon has). Asking for one outside it is an error naming it.
/// A capability as the kernel names it: `net_raw` and `CAP_NET_RAW` are one.
pub fn cap_name(c: &str) -> String {
    let up = c.to_ascii_uppercase();
    if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    }
}

pub fn capabilities(spec: &ContainerSpec, bounding: u64) -> Result<Vec<String>, String> {
    let norm = |c: &str| -> Result<String, String> {
        let full = cap_name(c);
        if full == "CAP_ALL" || ALL_CAPS.contains(&full.as_str()) {
            Ok(full)
        } else {
            Err(format!("unknown capability {c:?}"))
        }
    };
    let available = |c: &&&str| cap_bit(c) & bounding != 0;
    let all: Vec<String> = ALL_CAPS
        .iter()
        .filter(available)
        .map(|c| (*c).to_string())
        .collect();
    let mut caps: Vec<String> = if spec.privileged {
        all.clone()
    } else {
        DEFAULT_CAPS
            .iter()
            .filter(available)
            .map(|c| (*c).to_string())
            .collect()
    };
    for c in &spec.cap_add {
        let c = norm(c)?;
        if c == "CAP_ALL" {
            caps = all.clone();
        } else if cap_bit(&c) & bounding == 0 {
            return Err(format!("capability {c} is not available on this host"));
        } else if !caps.contains(&c) {
            caps.push(c);
        }
    }
    for c in &spec.cap_drop {
        let c = norm(c)?;
        if c == "CAP_ALL" {
            caps.clear();
        } else {
            caps.retain(|x| *x != c);
        }
    }
    Ok(caps)
}

/// The whole `config.json`. `rootfs` is the mounted root filesystem; `cgroup` the
/// absolute cgroup path; `volumes` maps volume names to their host directories.
pub fn runtime_spec(
    image: &RunConfig,
    spec: &ContainerSpec,
    who: &Identity,
    rootfs: &Path,
    hostname: &str,
    cgroup: &str,
    volumes: &BTreeMap<String, String>,
) -> Result<Value, String> {
    let args = args(image, spec);
    if args.is_empty() {
        return Err("no command: the image has no Entrypoint or Cmd; give one".into());
    }
    let caps = capabilities(spec, bounding_set())?;
    let cwd = spec
        .workdir
        .clone()
        .or_else(|| image.working_dir.clone().filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(format!("working directory {cwd:?} must be absolute"));
    }
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", if spec.privileged { "rw" } else { "ro" }]}),
    ];
    for m in &spec.mounts {
        if !m.target.starts_with('/') {
            return Err(format!(
                "mount target {:?} must be an absolute path",
                m.target
            ));
        }
        let ro = if m.readonly { "ro" } else { "rw" };
        match m.kind {
            MountKind::Bind => mounts.push(json!({
                "destination": m.target, "type": "bind", "source": m.source,
                "options": ["rbind", ro, "rprivate"],
            })),
            MountKind::Volume => {
                let src = volumes
                    .get(&m.source)
                    .ok_or_else(|| format!("volume {:?} is not prepared", m.source))?;
                mounts.push(json!({
                    "destination": m.target, "type": "bind", "source": src,
                    "options": ["rbind", ro, "rprivate"],
                }));
            }
            MountKind::Tmpfs => mounts.push(json!({
                "destination": m.target, "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "nodev", ro, "mode=1777"],
            })),
        }
    }
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    match &spec.network {
        NetworkMode::None => namespaces.push(json!({"type": "network"})),
        NetworkMode::Netns(path) => namespaces.push(json!({"type": "network", "path": path})),
        NetworkMode::Host => {}
        // The daemon turns these into the namespace it made before asking for a spec.
        NetworkMode::Bridge | NetworkMode::Default | NetworkMode::Attach(_) => {
            return Err("the container's network namespace was not made".into())
        }
    }
    let mut resources = json!({
        "devices": if spec.privileged {
            json!([{"allow": true, "access": "rwm"}])
        } else {
            let mut d = vec![
                json!({"allow": false, "access": "rwm"}),
                json!({"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}),
                json!({"allow": true, "type": "c", "major": 1, "minor": 5, "access": "rwm"}),
                json!({"allow": true, "type": "c", "major": 1, "minor": 7, "access": "rwm"}),
                json!({"allow": true, "type": "c", "major": 1, "minor": 8, "access": "rwm"}),
                json!({"allow": true, "type": "c", "major": 1, "minor": 9, "access": "rwm"}),
                json!({"allow": true, "type": "c", "major": 5, "minor": 0, "access": "rwm"}),
                json!({"allow": true, "type": "c", "major": 5, "minor": 1, "access": "rwm"}),
                json!({"allow": true, "type": "c", "major": 5, "minor": 2, "access": "rwm"}),
                json!({"allow": true, "type": "c", "major": 136, "access": "rwm"}),
            ];
            for dev in &spec.devices {
                let (kind, major, minor) = device_numbers(&dev.host)?;
                d.push(json!({"allow": true, "type": kind, "major": major, "minor": minor, "access": dev.access}));
            }
            json!(d)
        },
    });
    if let Some(m) = spec.memory {
        // No swap on top of the limit (v1 leaves memsw unlimited otherwise).
        resources["memory"] = json!({"limit": m, "swap": m});
    }
    if let Some(c) = spec.cpus {
        let period: u64 = 100_000;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let quota = (c * period as f64).round() as i64;
        resources["cpu"] = json!({"period": period, "quota": quota});
    }
    if let Some(p) = spec.pids_limit {
        resources["pids"] = json!({"limit": p});
    }
    let mut devices = Vec::new();
    for dev in &spec.devices {
        let (kind, major, minor) = device_numbers(&dev.host)?;
        devices.push(json!({
            "path": dev.container, "type": kind, "major": major, "minor": minor,
            "fileMode": 0o660, "uid": 0, "gid": 0,
        }));
    }
    let caps_json = json!(caps);
    let mut linux = json!({
        "namespaces": namespaces,
        "cgroupsPath": cgroup,
        "resources": resources,
        "devices": devices,
    });
    if !spec.privileged {
        linux["maskedPaths"] = json!(MASKED_PATHS);
        linux["readonlyPaths"] = json!(READONLY_PATHS);
        linux["seccomp"] = super::seccomp::default_profile();
    }
    Ok(json!({
        "ociVersion": "1.0.2",
        "root": {"path": rootfs, "readonly": false},
        "hostname": hostname,
        "mounts": mounts,
        "process": {
            "terminal": false,
            "user": {"uid": who.uid, "gid": who.gid, "additionalGids": who.additional_gids},
            "args": args,
            "env": env(image, spec, hostname, &who.home),
            "cwd": cwd,
            "capabilities": {
                "bounding": caps_json, "effective": caps_json, "permitted": caps_json,
                "inheritable": [], "ambient": [],
            },
            // rlimits are inherited from the keeper (systemd's LimitNOFILE sets them).
            "noNewPrivileges": !spec.privileged,
        },
        "linux": linux,
    }))
}

/// Type, major and minor of a host device node.
fn device_numbers(path: &str) -> Result<(&'static str, u64, u64), String> {
    let st = rustix::fs::stat(path).map_err(|e| format!("device {path}: {e}"))?;
    let kind = match rustix::fs::FileType::from_raw_mode(st.st_mode) {
        rustix::fs::FileType::CharacterDevice => "c",
        rustix::fs::FileType::BlockDevice => "b",
        _ => return Err(format!("device {path}: not a device node")),
    };
    let rdev = st.st_rdev;
    Ok((
        kind,
        u64::from(rustix::fs::major(rdev)),
        u64::from(rustix::fs::minor(rdev)),
    ))
}

/// Resolves `user[:group]` (names or numbers) against the container's /etc/passwd and
/// /etc/group, read inside `rootfs` without following symlinks out of it.
pub fn identity(user: Option<&str>, rootfs: &Path) -> Result<Identity, String> {
    let spec = user.filter(|u| !u.is_empty()).unwrap_or("0");
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = read_in_root(rootfs, "etc/passwd")?.unwrap_or_default();
    let group = read_in_root(rootfs, "etc/group")?.unwrap_or_default();
    // name:x:uid:gid:gecos:home:shell
    let pw: Vec<Vec<&str>> = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 7)
        .collect();
    let entry = pw
        .iter()
        .find(|f| f[0] == u)
        .or_else(|| pw.iter().find(|f| u.parse::<u32>().is_ok() && f[2] == u));
    let uid = match (u.parse::<u32>(), entry) {
        (Ok(n), _) => n,
        (Err(_), Some(f)) => f[2]
            .parse()
            .map_err(|_| format!("bad uid for {u} in /etc/passwd"))?,
        (Err(_), None) => {
            return Err(format!(
                "unable to find user {u}: no matching entries in passwd file"
            ))
        }
    };
    let grp: Vec<Vec<&str>> = group
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 4)
        .collect();
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => grp
                .iter()
                .find(|f| f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| {
                    format!("unable to find group {g}: no matching entries in group file")
                })?,
        },
        None => entry.and_then(|f| f[3].parse().ok()).unwrap_or(0),
    };
    let name = entry.map(|f| f[0]).unwrap_or("");
    let additional_gids = if g.is_none() && !name.is_empty() {
        grp.iter()
            .filter(|f| f[3].split(',').any(|m| m == name))
            .filter_map(|f| f[2].parse().ok())
            .filter(|x| *x != gid)
            .collect()
    } else {
        Vec::new()
    };
    let home = entry.map_or("/", |f| f[5]).to_string();
    Ok(Identity {
        uid,
        gid,
        additional_gids,
        home: if home.is_empty() { "/".into() } else { home },
    })
}

/// The file `rel` of the image's root filesystem; None if it is not there. Errors other
/// than absence (an old kernel without openat2, say) are errors, not "no such user".
fn read_in_root(rootfs: &Path, rel: &str) -> Result<Option<String>, String> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let root = rustix::fs::open(
        rootfs,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("{}: {e}", rootfs.display()))?;
    let fd = match rustix::fs::openat2(
        &root,
        rel,
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => return Ok(None),
        Err(e) => {
            return Err(format!(
                "reading /{rel} of the image: {}",
                crate::image::unpack::no_openat2(e)
            ))
        }
    };
    let mut s = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut s)
        .map_err(|e| format!("reading /{rel} of the image: {e}"))?;
    Ok(Some(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::container::MountSpec;

    fn image() -> RunConfig {
        RunConfig {
            entrypoint: Some(vec!["/entry".into()]),
            cmd: Some(vec!["default".into()]),
            env: Some(vec!["PATH=/custom".into(), "A=image".into()]),
            ..Default::default()
        }
    }

    #[test]
    fn validate_refuses_what_reaches_outside_or_beyond_the_host() {
        let vol = |name: &str| ContainerSpec {
            mounts: vec![MountSpec {
                kind: MountKind::Volume,
                source: name.into(),
                target: "/x".into(),
                readonly: false,
            }],
            ..Default::default()
        };
        for bad in ["..", ".", "", "a", "../x", "a/b", "-a"] {
            let err = validate(&vol(bad), 2).unwrap_err();
            assert!(err.starts_with("-v: "), "{bad:?}: {err}");
        }
        validate(&vol("data"), 2).unwrap();
        let bind = ContainerSpec {
            mounts: vec![MountSpec {
                kind: MountKind::Bind,
                source: "rel".into(),
                target: "/x".into(),
                readonly: false,
            }],
            ..Default::default()
        };
        assert!(validate(&bind, 2).is_err());
        let cpus = |c: f64| ContainerSpec {
            cpus: Some(c),
            ..Default::default()
        };
        validate(&cpus(2.0), 2).unwrap();
        validate(&cpus(0.01), 2).unwrap();
        assert_eq!(
            validate(&cpus(2.5), 2).unwrap_err(),
            "--cpus: range of CPUs is from 0.01 to 2.00, as there are only 2 CPUs available"
        );
        assert!(validate(&cpus(f64::NAN), 2).is_err());
        let mem = |m: i64| ContainerSpec {
            memory: Some(m),
            ..Default::default()
        };
        validate(&mem(64 << 20), 2).unwrap();
        assert!(validate(&mem(i64::MAX), 2).is_err());
        assert!(validate(&mem(1), 2).is_err());
        let wd = ContainerSpec {
            workdir: Some("tmp".into()),
            ..Default::default()
        };
        assert!(validate(&wd, 2).unwrap_err().starts_with("-w: "));
    }

    #[test]
    fn args_follow_docker() {
        let img = image();
        assert_eq!(args(&img, &ContainerSpec::default()), ["/entry", "default"]);
        let s = ContainerSpec {
            cmd: vec!["x".into()],
            ..Default::default()
        };
        assert_eq!(args(&img, &s), ["/entry", "x"]);
        let s = ContainerSpec {
            entrypoint: Some(vec!["/other".into()]),
            ..Default::default()
        };
        assert_eq!(
            args(&img, &s),
            ["/other"],
            "a new entrypoint drops the image's cmd"
        );
    }

    #[test]
    fn env_layers() {
        let s = ContainerSpec {
            env: vec!["A=user".into(), "B=2".into()],
            ..Default::default()
        };
        let e = env(&image(), &s, "h1", "/root");
        assert_eq!(
            e,
            ["PATH=/custom", "HOSTNAME=h1", "A=user", "B=2", "HOME=/root"]
        );
    }

    #[test]
    fn capability_flags() {
        let s = ContainerSpec {
            cap_add: vec!["sys_admin".into()],
            cap_drop: vec!["CAP_NET_RAW".into()],
            ..Default::default()
        };
        let c = capabilities(&s, u64::MAX).unwrap();
        assert!(c.contains(&"CAP_SYS_ADMIN".to_string()));
        assert!(!c.contains(&"CAP_NET_RAW".to_string()));
        let bad = ContainerSpec {
            cap_add: vec!["FLY".into()],
            ..Default::default()
        };
        assert!(capabilities(&bad, u64::MAX).unwrap_err().contains("FLY"));
        let p = ContainerSpec {
            privileged: true,
            ..Default::default()
        };
        assert_eq!(capabilities(&p, u64::MAX).unwrap().len(), ALL_CAPS.len());
        let no_sys_resource = !(1u64 << 24);
        let caps = capabilities(&p, no_sys_resource).unwrap();
        assert_eq!(caps.len(), ALL_CAPS.len() - 1);
        let ask = ContainerSpec {
            cap_add: vec!["SYS_RESOURCE".into()],
            ..Default::default()
        };
        assert!(capabilities(&ask, no_sys_resource)
            .unwrap_err()
            .contains("not available"));
    }

    #[test]
    fn spec_parses_as_oci() {
        let who = Identity {
            uid: 1000,
            gid: 1000,
            additional_gids: vec![2000],
            home: "/tmp".into(),
        };
        let s = ContainerSpec {
            memory: Some(64 << 20),
            cpus: Some(0.5),
            pids_limit: Some(50),
            mounts: vec![MountSpec {
                kind: MountKind::Tmpfs,
                source: String::new(),
                target: "/scratch".into(),
                readonly: false,
            }],
            ..Default::default()
        };
        let v = runtime_spec(
            &image(),
            &s,
            &who,
            Path::new("/r"),
            "h1",
            "/swarmlet/x",
            &BTreeMap::new(),
        )
        .unwrap();
        let spec: libcontainer::oci_spec::runtime::Spec = serde_json::from_value(v).unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!(
            p.args().as_ref().unwrap(),
            &vec!["/entry".to_string(), "default".to_string()]
        );
        assert_eq!(p.user().uid(), 1000);
        assert_eq!(p.no_new_privileges(), Some(true));
        let l = spec.linux().as_ref().unwrap();
        let r = l.resources().as_ref().unwrap();
        assert_eq!(r.memory().as_ref().unwrap().limit(), Some(64 << 20));
        assert_eq!(r.cpu().as_ref().unwrap().quota(), Some(50_000));
        assert_eq!(r.pids().as_ref().unwrap().limit(), 50);
        assert!(l
            .masked_paths()
            .as_ref()
            .unwrap()
            .contains(&"/proc/kcore".to_string()));
        assert_eq!(spec.hostname().as_deref(), Some("h1"));
        assert!(spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .any(|m| m.destination() == Path::new("/scratch")));
        let e = runtime_spec(
            &RunConfig::default(),
            &ContainerSpec::default(),
            &who,
            Path::new("/r"),
            "h",
            "/c",
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert!(e.contains("no command"), "{e}");
    }

    #[test]
    fn users_from_the_images_files() {
        let dir = std::env::temp_dir().join(format!("swarmlet-ident-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(
            dir.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("etc/group"),
            "root:x:0:\napp:x:1000:\nextra:x:2000:app\n",
        )
        .unwrap();
        let id = identity(Some("app"), &dir).unwrap();
        assert_eq!(
            (id.uid, id.gid, id.additional_gids.clone(), id.home.as_str()),
            (1000, 1000, vec![2000], "/home/app")
        );
        assert_eq!(identity(Some("1000:extra"), &dir).unwrap().gid, 2000);
        assert_eq!(identity(None, &dir).unwrap().uid, 0);
        assert_eq!(
            identity(Some("4242"), &dir).unwrap().uid,
            4242,
            "numbers need no entry"
        );
        assert!(identity(Some("ghost"), &dir).unwrap_err().contains("ghost"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

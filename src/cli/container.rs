//! Standalone containers on this node, outside any service: `run`, `ps`, `stop`, `kill`,
//! `rm`, `inspect`, `exec`, `logs`. Their bodies are dispatched from `cli::run`.

use std::io::Write;
use std::process::ExitCode;

use argh::FromArgs;

use super::filter::{label_matches, Filters};
use super::image::{credentials_for, print_table, PullView, PULL_IDLE};
use super::{call, not_implemented, print_done, print_json, Global, UsageError};
use crate::api::{ContainerRequest, Request, Response, RunRequest};
use crate::image::reference::Reference;
use crate::model::container::{
    signal_number, ContainerSpec, ContainerView, DeviceSpec, LogLimits, MountKind, MountSpec,
    NetworkMode, PortBinding, RestartPolicy, Status,
};
use crate::model::health::{HealthFlags, HealthStatus};
use crate::model::Protocol;

#[derive(FromArgs, Debug, Default, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand, name = "run")]
/// Create and start a container on this node.
pub struct RunCommand {
    /// container name (default: generated)
    #[argh(option)]
    pub name: Option<String>,

    /// run in the background and print the container id
    #[argh(switch, short = 'd')]
    pub detach: bool,

    /// keep stdin open
    #[argh(switch, short = 'i')]
    pub interactive: bool,

    /// allocate a pseudo-terminal
    #[argh(switch, short = 't')]
    pub tty: bool,

    /// remove the container when it exits
    #[argh(switch)]
    pub rm: bool,

    /// environment variable, KEY=VALUE (repeatable)
    #[argh(option, short = 'e')]
    pub env: Vec<String>,

    /// container label, KEY=VALUE (repeatable)
    #[argh(option, short = 'l')]
    pub label: Vec<String>,

    /// publish a port on all of this node's addresses, [HOST:]CONTAINER[/tcp|/udp]
    /// (no HOST: a free one; repeatable)
    #[argh(option, short = 'p')]
    pub publish: Vec<String>,

    /// bind mount, HOST:CONTAINER[:ro] (repeatable)
    #[argh(option, short = 'v')]
    pub volume: Vec<String>,

    /// mount, type=bind|volume|tmpfs,source=..,target=..[,readonly] (repeatable)
    #[argh(option)]
    pub mount: Vec<String>,

    /// bridge (the default: the node's local bridge, NAT out), host, none, or an
    /// attachable overlay network of the node's cluster
    #[argh(option)]
    pub network: Option<String>,

    /// container hostname
    #[argh(option, short = 'h')]
    pub hostname: Option<String>,

    /// working directory inside the container
    #[argh(option, short = 'w')]
    pub workdir: Option<String>,

    /// user inside the container, NAME|UID[:GID]
    #[argh(option, short = 'u')]
    pub user: Option<String>,

    /// override the image's entrypoint
    #[argh(option)]
    pub entrypoint: Option<String>,

    /// restart policy: no, on-failure[:MAX], always, unless-stopped (default no)
    #[argh(option)]
    pub restart: Option<String>,

    /// memory limit, e.g. 64M
    #[argh(option, short = 'm')]
    pub memory: Option<String>,

    /// CPU limit, e.g. 0.5
    #[argh(option)]
    pub cpus: Option<String>,

    /// most processes the container may have (-1: no limit)
    #[argh(option)]
    pub pids_limit: Option<i64>,

    /// tmpfs mount at this path (repeatable)
    #[argh(option)]
    pub tmpfs: Vec<String>,

    /// give the container every capability and device, no confinement
    #[argh(switch)]
    pub privileged: bool,

    /// add a capability, e.g. NET_ADMIN or ALL (repeatable)
    #[argh(option)]
    pub cap_add: Vec<String>,

    /// drop a capability (repeatable)
    #[argh(option)]
    pub cap_drop: Vec<String>,

    /// host device, HOST[:CONTAINER][:rwm], e.g. /dev/ttyUSB0 (repeatable)
    #[argh(option)]
    pub device: Vec<String>,

    /// signal that stops the container (default: the image's, else SIGTERM)
    #[argh(option)]
    pub stop_signal: Option<String>,

    /// seconds between the stop signal and SIGKILL (default 10; -1: no SIGKILL)
    #[argh(option)]
    pub stop_timeout: Option<i64>,

    /// health check command, run with /bin/sh -c inside the container
    #[argh(option)]
    pub health_cmd: Option<String>,

    /// time between health checks, e.g. 30s, 500ms, 1m (default 30s)
    #[argh(option)]
    pub health_interval: Option<String>,

    /// a health check running longer fails, e.g. 30s (default 30s)
    #[argh(option)]
    pub health_timeout: Option<String>,

    /// consecutive failures that make the container unhealthy (default 3)
    #[argh(option)]
    pub health_retries: Option<u32>,

    /// time after start in which failures do not count, e.g. 10s (default 0)
    #[argh(option)]
    pub health_start_period: Option<String>,

    /// no health check, whatever the image says
    #[argh(switch)]
    pub no_healthcheck: bool,

    /// log option: max-size=SIZE (per file, default 10m), max-file=N (default 2)
    #[argh(option)]
    pub log_opt: Vec<String>,

    /// image reference, e.g. busybox:1.36
    #[argh(positional)]
    pub image: String,

    /// command and arguments for the container (everything after IMAGE)
    #[argh(positional, greedy)]
    pub args: Vec<String>,
}

#[derive(FromArgs, Debug, Default, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand, name = "ps")]
/// List containers on this node.
pub struct PsCommand {
    /// include stopped containers
    #[argh(switch, short = 'a')]
    pub all: bool,

    /// print container ids only
    #[argh(switch, short = 'q')]
    pub quiet: bool,

    /// filter, KEY=VALUE: id, name, label, status, exited, ancestor, health, network,
    /// publish (repeatable)
    #[argh(option, short = 'f')]
    pub filter: Vec<String>,

    /// show only the N most recently created containers
    #[argh(option, short = 'n')]
    pub last: Option<u64>,

    /// do not truncate ids and commands
    #[argh(switch)]
    pub no_trunc: bool,
}

#[derive(FromArgs, Debug, Default, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand, name = "stop")]
/// Stop containers: SIGTERM, then SIGKILL after a grace period.
pub struct StopCommand {
    /// seconds to wait before SIGKILL (default: the container's; -1: no SIGKILL)
    #[argh(option, short = 't')]
    pub time: Option<i64>,

    /// container ids or names
    #[argh(positional)]
    pub containers: Vec<String>,
}

#[derive(FromArgs, Debug, Default, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand, name = "kill")]
/// Send a signal to containers.
pub struct KillCommand {
    /// signal name or number (default KILL)
    #[argh(option, short = 's')]
    pub signal: Option<String>,

    /// container ids or names
    #[argh(positional)]
    pub containers: Vec<String>,
}

#[derive(FromArgs, Debug, Default, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand, name = "rm")]
/// Remove containers.
pub struct RmCommand {
    /// kill and remove running containers
    #[argh(switch, short = 'f')]
    pub force: bool,

    /// also remove anonymous volumes
    #[argh(switch, short = 'v')]
    pub volumes: bool,

    /// container ids or names
    #[argh(positional)]
    pub containers: Vec<String>,
}

#[derive(FromArgs, Debug, Default, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand, name = "inspect")]
/// Show details of containers, tasks, services, nodes, networks or images, as JSON.
pub struct InspectCommand {
    /// only objects of this type: container, task, service, node, network or image
    #[argh(option, long = "type")]
    pub kind: Option<String>,

    /// object ids or names
    #[argh(positional)]
    pub objects: Vec<String>,
}

#[derive(FromArgs, Debug, Default, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand, name = "exec")]
/// Run a command in a running container.
pub struct ExecCommand {
    /// run in the background
    #[argh(switch, short = 'd')]
    pub detach: bool,

    /// keep stdin open
    #[argh(switch, short = 'i')]
    pub interactive: bool,

    /// allocate a pseudo-terminal
    #[argh(switch, short = 't')]
    pub tty: bool,

    /// environment variable, KEY=VALUE (repeatable)
    #[argh(option, short = 'e')]
    pub env: Vec<String>,

    /// user inside the container, NAME|UID[:GID]
    #[argh(option, short = 'u')]
    pub user: Option<String>,

    /// working directory inside the container
    #[argh(option, short = 'w')]
    pub workdir: Option<String>,

    /// container id or name
    #[argh(positional)]
    pub container: String,

    /// the command and its arguments (everything after CONTAINER)
    #[argh(positional, greedy)]
    pub command: Vec<String>,
}

#[derive(FromArgs, Debug, Default, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand, name = "logs")]
/// Print a container's logs.
pub struct LogsCommand {
    /// keep streaming new lines
    #[argh(switch, short = 'f')]
    pub follow: bool,

    /// lines from the end of the log: a number, or all (default; so is -1)
    #[argh(option)]
    pub tail: Option<String>,

    /// only lines since this time, RFC 3339 or relative (e.g. 10m)
    #[argh(option)]
    pub since: Option<String>,

    /// prefix each line with its timestamp
    #[argh(switch, short = 't')]
    pub timestamps: bool,

    /// container id or name
    #[argh(positional)]
    pub container: String,
}

/// `64m`, `1g`, `512k`, `1048576` to bytes, within the memory limits the daemon takes.
pub fn parse_bytes(flag: &str, s: &str) -> Result<i64, UsageError> {
    use crate::runtime::spec::{MAX_MEMORY, MIN_MEMORY};
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: f64 = num
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite())
        .ok_or_else(|| UsageError(format!("{flag}: {s:?} is not a size like 64m or 1g")))?;
    #[allow(clippy::cast_precision_loss)] // powers of two, exact in an f64
    let bytes = n * mult as f64;
    #[allow(clippy::cast_precision_loss)]
    if bytes < MIN_MEMORY as f64 {
        return Err(UsageError(format!(
            "{flag}: {s:?} is below the 4 MiB minimum"
        )));
    }
    #[allow(clippy::cast_precision_loss)]
    if bytes > MAX_MEMORY as f64 {
        return Err(UsageError(format!(
            "{flag}: {s:?} is above the 1 PiB maximum"
        )));
    }
    #[allow(clippy::cast_possible_truncation)] // within 4 MiB..1 PiB, checked above
    Ok(bytes as i64)
}

/// `500ms`, `30s`, `1m`, `1h`, `1m30s` (Go's duration form, as Docker takes).
pub fn parse_duration(flag: &str, s: &str) -> Result<std::time::Duration, UsageError> {
    let bad = || {
        UsageError(format!(
            "{flag}: {s:?} is not a duration like 30s, 500ms or 1m"
        ))
    };
    let mut total = 0u128;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: u128 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let ms = match &rest[..unit] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(bad()),
        };
        rest = &rest[unit..];
        total = total.saturating_add(n.saturating_mul(ms));
    }
    let ms = u64::try_from(total).map_err(|_| bad())?;
    Ok(std::time::Duration::from_millis(ms))
}

/// A grace period before SIGKILL: seconds, or -1 for none (wait as long as it takes),
/// as Docker takes it.
fn grace_period(flag: &str, t: Option<i64>) -> Result<Option<i64>, UsageError> {
    match t {
        Some(t) if t < -1 => Err(UsageError(format!(
            "{flag}: {t}: give seconds, or -1 to wait without a limit"
        ))),
        t => Ok(t),
    }
}

/// `stop -t`: see [`grace_period`].
fn stop_timeout(t: Option<i64>) -> Result<Option<i64>, UsageError> {
    grace_period("--time", t)
}

/// `logs --tail`: a count, or all lines for `all` or a negative number (as Docker).
pub(super) fn tail_lines(t: Option<&str>) -> Result<Option<u64>, UsageError> {
    match t {
        None | Some("all") => Ok(None),
        Some(v) => match v.parse::<i64>() {
            Ok(n) if n < 0 => Ok(None),
            Ok(n) => Ok(u64::try_from(n).ok()),
            Err(_) => Err(UsageError(format!(
                "--tail: {v:?} is not a number of lines or all"
            ))),
        },
    }
}

/// Parses one `run -p`: `[0.0.0.0:][HOST:]CONTAINER[/tcp|/udp]` (no HOST: the daemon
/// picks a free port, as Docker does).
pub(crate) fn parse_port_binding(s: &str) -> Result<PortBinding, UsageError> {
    let bad = |why: String| UsageError(format!("-p: {s:?}: {why}"));
    let (ports, protocol) = match s.rsplit_once('/') {
        None => (s, Protocol::Tcp),
        Some((ports, "tcp")) => (ports, Protocol::Tcp),
        Some((ports, "udp")) => (ports, Protocol::Udp),
        Some((_, p)) => return Err(bad(format!("protocol {p:?} is not tcp or udp"))),
    };
    let port = |v: &str, what: &str| -> Result<u16, UsageError> {
        if v.contains('-') {
            return Err(bad(format!("port ranges ({what} {v}) are not supported")));
        }
        match v.parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(bad(format!("{what} {v:?} is not a port from 1 to 65535"))),
        }
    };
    let parts: Vec<&str> = ports.split(':').collect();
    let (host, container) = match parts.as_slice() {
        [c] => ("", *c),
        [h, c] => (*h, *c),
        [ip, h, c] if ip.is_empty() || *ip == "0.0.0.0" => (*h, *c),
        [ip, _, _] => {
            return Err(bad(format!(
                "publishing on one address ({ip}) is not supported: ports are published on all of the node's addresses"
            )))
        }
        _ => return Err(bad("not [HOST:]CONTAINER[/PROTOCOL]".into())),
    };
    Ok(PortBinding {
        protocol,
        host: if host.is_empty() {
            0
        } else {
            port(host, "host port")?
        },
        container: port(container, "container port")?,
    })
}

/// Docker's `--mount type=bind,source=/a,target=/b[,readonly]`.
pub(super) fn parse_mount(s: &str) -> Result<MountSpec, UsageError> {
    let bad = |why: &str| UsageError(format!("--mount: {s:?}: {why}"));
    let (mut kind, mut source, mut target, mut readonly) =
        (MountKind::Volume, String::new(), None, false);
    for part in s.split(',') {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        match k.trim() {
            "type" => {
                kind = match v {
                    "bind" => MountKind::Bind,
                    "volume" => MountKind::Volume,
                    "tmpfs" => MountKind::Tmpfs,
                    _ => return Err(bad("type is bind, volume or tmpfs")),
                }
            }
            "source" | "src" => source = v.to_string(),
            "target" | "destination" | "dst" => target = Some(v.to_string()),
            "readonly" | "ro" => readonly = matches!(v, "" | "true" | "1"),
            _ => return Err(bad(&format!("unknown key {k:?}"))),
        }
    }
    let target = target.ok_or_else(|| bad("target is required"))?;
    if !target.starts_with('/') {
        return Err(bad("target must be an absolute path"));
    }
    if kind == MountKind::Bind && !source.starts_with('/') {
        return Err(bad("a bind mount's source must be an absolute path"));
    }
    Ok(MountSpec {
        kind,
        source,
        target,
        readonly,
    })
}

/// Turns the flags into the spec the daemon gets; every error names its flag.
fn resolve_run(c: &RunCommand) -> Result<(ContainerSpec, Option<i64>), UsageError> {
    if c.interactive || c.tty {
        return Err(UsageError(
            "-i/-t: interactive containers are not supported yet".into(),
        ));
    }
    if c.rm && c.restart.as_deref().is_some_and(|r| r != "no") {
        return Err(UsageError("--restart: conflicts with --rm".into()));
    }
    if c.detach && c.rm {
        // Docker allows it; so do we (the daemon removes it when it exits).
    }
    Reference::parse(&c.image).map_err(|e| UsageError(e.to_string()))?;
    if let Some(n) = &c.name {
        if !crate::model::container::valid_container_name(n) {
            return Err(UsageError(format!(
                "--name: {n:?} is not a valid name: [a-zA-Z0-9][a-zA-Z0-9_.-]* (up to 128)"
            )));
        }
    }
    let stop_timeout = grace_period("--stop-timeout", c.stop_timeout)?;
    let network = match c.network.as_deref() {
        None => NetworkMode::Default,
        Some("bridge") => NetworkMode::Bridge,
        Some("none") => NetworkMode::None,
        Some("host") => NetworkMode::Host,
        Some(n) if crate::services::network::check_network_name(n).is_ok() => {
            NetworkMode::Attach(n.to_string())
        }
        Some(n) => {
            return Err(UsageError(format!(
                "--network: {n:?} is neither bridge, host, none nor a network's name or id"
            )))
        }
    };
    let mut ports: Vec<PortBinding> = Vec::new();
    for p in &c.publish {
        let b = parse_port_binding(p)?;
        // The same binding twice is one, as under Docker.
        if !ports.contains(&b) {
            ports.push(b);
        }
    }
    if !ports.is_empty() && !matches!(network, NetworkMode::Default | NetworkMode::Bridge) {
        return Err(UsageError(format!(
            "-p: ports are published to containers on the bridge network, not --network {}",
            c.network.as_deref().unwrap_or_default()
        )));
    }
    for e in &c.env {
        if e.is_empty() || e.starts_with('=') {
            return Err(UsageError(format!("-e: {e:?} is not KEY=VALUE")));
        }
    }
    let mut mounts = Vec::new();
    for v in &c.volume {
        let parts: Vec<&str> = v.split(':').collect();
        let (src, dst, ro) = match parts.as_slice() {
            [s, d] => (*s, *d, false),
            [s, d, "ro"] => (*s, *d, true),
            [s, d, "rw"] => (*s, *d, false),
            _ => return Err(UsageError(format!("-v: {v:?} is not SOURCE:TARGET[:ro]"))),
        };
        if !dst.starts_with('/') {
            return Err(UsageError(format!(
                "-v: target {dst:?} must be an absolute path"
            )));
        }
        let kind = if src.starts_with('/') {
            MountKind::Bind
        } else {
            // A name, checked with the rest of the spec below.
            MountKind::Volume
        };
        mounts.push(MountSpec {
            kind,
            source: src.to_string(),
            target: dst.to_string(),
            readonly: ro,
        });
    }
    for t in &c.tmpfs {
        if !t.starts_with('/') {
            return Err(UsageError(format!(
                "--tmpfs: {t:?} must be an absolute path"
            )));
        }
        mounts.push(MountSpec {
            kind: MountKind::Tmpfs,
            source: String::new(),
            target: t.clone(),
            readonly: false,
        });
    }
    for m in &c.mount {
        mounts.push(parse_mount(m)?);
    }
    let mut devices = Vec::new();
    for d in &c.device {
        let parts: Vec<&str> = d.split(':').collect();
        let perms = |p: &str| !p.is_empty() && p.chars().all(|ch| "rwm".contains(ch));
        let (host, cont, access) = match parts.as_slice() {
            [h] => (*h, *h, "rwm"),
            [h, p] if perms(p) => (*h, *h, *p),
            [h, c2] => (*h, *c2, "rwm"),
            [h, c2, p] if perms(p) => (*h, *c2, *p),
            _ => {
                return Err(UsageError(format!(
                    "--device: {d:?} is not HOST[:CONTAINER][:rwm]"
                )))
            }
        };
        if !host.starts_with("/dev/") || !cont.starts_with('/') {
            return Err(UsageError(format!(
                "--device: {d:?}: paths must be absolute, the host one under /dev"
            )));
        }
        devices.push(DeviceSpec {
            host: host.into(),
            container: cont.into(),
            access: access.into(),
        });
    }
    let memory = c
        .memory
        .as_deref()
        .map(|m| parse_bytes("--memory", m))
        .transpose()?;
    let cpus = match c.cpus.as_deref() {
        None => None,
        Some(x) => {
            let v: f64 = x
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite())
                .ok_or_else(|| UsageError(format!("--cpus: {x:?} is not a number")))?;
            Some(v)
        }
    };
    if let Some(p) = c.pids_limit {
        if p == 0 || p < -1 {
            return Err(UsageError(format!(
                "--pids-limit: {p}: give a positive number or -1"
            )));
        }
    }
    let mut labels = std::collections::BTreeMap::new();
    for l in &c.label {
        let (k, v) = l.split_once('=').unwrap_or((l, ""));
        if k.is_empty() {
            return Err(UsageError(format!("-l: {l:?} is not KEY[=VALUE]")));
        }
        labels.insert(k.to_string(), v.to_string());
    }
    let spec = ContainerSpec {
        entrypoint: c.entrypoint.as_ref().map(|e| {
            if e.is_empty() {
                Vec::new()
            } else {
                vec![e.clone()]
            }
        }),
        cmd: c.args.clone(),
        env: c.env.clone(),
        workdir: c.workdir.clone(),
        user: c.user.clone(),
        hostname: c.hostname.clone(),
        network,
        mounts,
        memory,
        cpus,
        pids_limit: c.pids_limit.filter(|p| *p > 0),
        privileged: c.privileged,
        cap_add: c.cap_add.clone(),
        cap_drop: c.cap_drop.clone(),
        devices,
        labels,
        ports,
    };
    // What the daemon checks too (the host's CPUs, volume names): this is the same
    // host, so the user gets a usage error before anything is asked.
    crate::runtime::spec::validate(&spec, crate::runtime::spec::host_cpus()).map_err(UsageError)?;
    crate::runtime::spec::capabilities(&spec, u64::MAX)
        .map_err(|e| UsageError(format!("--cap-add/--cap-drop: {e}")))?;
    if let Some(sig) = &c.stop_signal {
        signal_number(sig).map_err(|e| UsageError(format!("--stop-signal: {e}")))?;
    }
    Ok((spec, stop_timeout))
}

fn log_limits(opts: &[String]) -> Result<LogLimits, UsageError> {
    let mut l = LogLimits::default();
    for o in opts {
        match o.split_once('=') {
            Some(("max-size", v)) => {
                let t = v.trim().to_ascii_lowercase();
                let (num, mult) = match t.chars().last() {
                    Some('k') => (&t[..t.len() - 1], 1u64 << 10),
                    Some('m') => (&t[..t.len() - 1], 1 << 20),
                    Some('g') => (&t[..t.len() - 1], 1 << 30),
                    _ => (t.as_str(), 1),
                };
                let n: u64 = num.parse().map_err(|_| {
                    UsageError(format!("--log-opt: max-size {v:?} is not a size like 10m"))
                })?;
                l.max_size = n.saturating_mul(mult);
                if l.max_size < 1024 {
                    return Err(UsageError("--log-opt: max-size is at least 1k".into()));
                }
            }
            Some(("max-file", v)) => {
                l.max_files = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=100).contains(n))
                    .ok_or_else(|| {
                        UsageError(format!("--log-opt: max-file {v:?} is not 1 to 100"))
                    })?;
            }
            _ => {
                return Err(UsageError(format!(
                    "--log-opt: {o:?}: known options are max-size=SIZE and max-file=N"
                )))
            }
        }
    }
    Ok(l)
}

fn health_flags(c: &RunCommand) -> Result<HealthFlags, UsageError> {
    let d = |flag: &str, v: &Option<String>| -> Result<Option<std::time::Duration>, UsageError> {
        v.as_deref().map(|s| parse_duration(flag, s)).transpose()
    };
    let f = HealthFlags {
        cmd: c.health_cmd.clone(),
        interval: d("--health-interval", &c.health_interval)?,
        timeout: d("--health-timeout", &c.health_timeout)?,
        start_period: d("--health-start-period", &c.health_start_period)?,
        retries: c.health_retries,
        disable: c.no_healthcheck,
    };
    if f.interval
        .is_some_and(|i| i < std::time::Duration::from_millis(100))
    {
        return Err(UsageError("--health-interval: at least 100ms".into()));
    }
    if f.timeout.is_some_and(|i| i.is_zero()) {
        return Err(UsageError("--health-timeout: must be above zero".into()));
    }
    if f.retries == Some(0) {
        return Err(UsageError("--health-retries: at least 1".into()));
    }
    if f.disable && f.cmd.is_some() {
        return Err(UsageError(
            "--no-healthcheck: conflicts with --health-cmd".into(),
        ));
    }
    Ok(f)
}

pub fn run(global: &Global, c: RunCommand) -> anyhow::Result<ExitCode> {
    let (spec, stop_timeout) = resolve_run(&c)?;
    let r = Reference::parse(&c.image).map_err(|e| UsageError(e.to_string()))?;
    let auth = credentials_for(&r.domain)?;
    let health = health_flags(&c)?;
    let log = log_limits(&c.log_opt)?;
    let restart = c
        .restart
        .as_deref()
        .map(RestartPolicy::parse)
        .transpose()
        .map_err(|e| UsageError(format!("--restart: {e}")))?
        .unwrap_or_default();
    let req = Request::Container(ContainerRequest::Run(Box::new(RunRequest {
        image: c.image.clone(),
        name: c.name.clone(),
        spec,
        stop_signal: c.stop_signal.clone(),
        stop_timeout,
        auto_remove: c.rm,
        auth,
        health,
        log,
        restart,
    })));
    let mut view = PullView::new(std::io::IsTerminal::is_terminal(&std::io::stderr()), false);
    let resp = crate::api::call_streaming(&global.socket, &req, Some(PULL_IDLE), |f| {
        if let Response::Progress(p) = f {
            view.show(&p, &mut std::io::stderr().lock());
        }
    })?;
    let id = match resp {
        Response::Done(id) => id,
        Response::Error(e) => return Err(anyhow::anyhow!(e)),
        other => {
            return Err(anyhow::anyhow!(
                "unexpected answer from the daemon: {other:?}"
            ))
        }
    };
    if c.detach {
        println!("{id}");
        return Ok(ExitCode::SUCCESS);
    }
    // Attached: print its output as it comes, then exit with its status, as docker run.
    follow_logs(global, &id, None, false, None)?;
    match call(
        global,
        &Request::Container(ContainerRequest::Wait { container: id }),
    )? {
        Response::Exit(Some(code)) => Ok(ExitCode::from(
            u8::try_from(code.clamp(0, 255)).unwrap_or(255),
        )),
        Response::Exit(None) => Err(anyhow::anyhow!(
            "the container's exit status could not be observed"
        )),
        other => Err(anyhow::anyhow!(
            "unexpected answer from the daemon: {other:?}"
        )),
    }
}

/// Streams a container's log to our stdout and stderr.
fn follow_logs(
    global: &Global,
    id: &str,
    tail: Option<u64>,
    timestamps: bool,
    since: Option<&str>,
) -> anyhow::Result<()> {
    let req = Request::Container(ContainerRequest::Logs {
        container: id.to_string(),
        follow: true,
        tail,
    });
    let resp = crate::api::call_streaming(&global.socket, &req, None, |f| {
        print_chunk(f, timestamps, since);
    })?;
    match resp {
        Response::Done(_) => Ok(()),
        Response::Error(e) => Err(anyhow::anyhow!(e)),
        other => Err(anyhow::anyhow!(
            "unexpected answer from the daemon: {other:?}"
        )),
    }
}

/// `logs --since`: the first log time to show, in the logs' own form
/// (`2026-12-02T01:02:03.000000000Z`, which orders as text). Docker's forms: a
/// duration back from now (`10m`, `1h30m`), Unix seconds (`1764637323[.5]`), an
/// RFC 3339 time in UTC (`2026-12-02T01:02:03[.123]Z`) or a date (`2026-12-02`).
pub(super) fn log_since(s: &str) -> Result<String, UsageError> {
    let bad = || {
        UsageError(format!(
            "--since: {s:?} is not a duration (10m), Unix seconds or a UTC time (2026-12-02T01:02:03Z)"
        ))
    };
    let at =
        |d: std::time::Duration| crate::runtime::logs::rfc3339_nanos(std::time::UNIX_EPOCH + d);
    let duration = s.starts_with(|c: char| c.is_ascii_digit())
        && s.ends_with(|c: char| c.is_ascii_alphabetic())
        && !s.contains('-');
    if duration {
        let back = parse_duration("--since", s)?;
        let now = std::time::SystemTime::now();
        let then = now.checked_sub(back).unwrap_or(std::time::UNIX_EPOCH);
        return Ok(crate::runtime::logs::rfc3339_nanos(then));
    }
    if let Some((secs, frac)) = s.split_once('.').or(Some((s, ""))).filter(|(a, b)| {
        !a.is_empty()
            && a.bytes().all(|c| c.is_ascii_digit())
            && b.len() <= 9
            && b.bytes().all(|c| c.is_ascii_digit())
    }) {
        let secs: u64 = secs.parse().map_err(|_| bad())?;
        let nanos: u32 = format!("{frac:0<9}").parse().map_err(|_| bad())?;
        return Ok(at(std::time::Duration::new(secs, nanos)));
    }
    // A date, or a date and time in UTC: checked digit by digit, then made whole.
    let shape = |t: &str, form: &str| {
        t.len() == form.len()
            && t.bytes().zip(form.bytes()).all(|(c, f)| {
                if f == b'9' {
                    c.is_ascii_digit()
                } else {
                    c == f
                }
            })
    };
    if shape(s, "9999-99-99") {
        return Ok(format!("{s}T00:00:00.000000000Z"));
    }
    let body = s.strip_suffix('Z').ok_or_else(bad)?;
    let (whole, frac) = body.split_once('.').unwrap_or((body, ""));
    if !shape(whole, "9999-99-99T99:99:99")
        || frac.len() > 9
        || !frac.bytes().all(|c| c.is_ascii_digit())
    {
        return Err(bad());
    }
    Ok(format!("{whole}.{frac:0<9}Z"))
}

fn print_chunk(f: Response, timestamps: bool, since: Option<&str>) {
    let Response::LogChunk(lines) = f else { return };
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    for l in lines {
        if since.is_some_and(|s| l.time.as_str() < s) {
            continue;
        }
        let w: &mut dyn Write = if l.stderr { &mut err } else { &mut out };
        if timestamps {
            let _ = write!(w, "{} ", l.time);
        }
        let _ = w.write_all(&l.text);
        if !l.partial {
            let _ = w.write_all(b"\n");
        }
    }
    let _ = out.flush();
    let _ = err.flush();
}

pub fn logs(global: &Global, c: LogsCommand) -> anyhow::Result<ExitCode> {
    let since = c.since.as_deref().map(log_since).transpose()?;
    let since = since.as_deref();
    let tail = tail_lines(c.tail.as_deref())?;
    if c.follow {
        follow_logs(global, &c.container, tail, c.timestamps, since)?;
        return Ok(ExitCode::SUCCESS);
    }
    let req = Request::Container(ContainerRequest::Logs {
        container: c.container,
        follow: false,
        tail,
    });
    let resp = crate::api::call_streaming(
        &global.socket,
        &req,
        Some(crate::api::CLIENT_TIMEOUT),
        |f| {
            print_chunk(f, c.timestamps, since);
        },
    )?;
    match resp {
        Response::Done(_) => Ok(ExitCode::SUCCESS),
        Response::Error(e) => Err(anyhow::anyhow!(e)),
        other => Err(anyhow::anyhow!(
            "unexpected answer from the daemon: {other:?}"
        )),
    }
}

pub fn ago(ms: u64) -> String {
    let now = crate::runtime::keeper::now_ms();
    let s = now.saturating_sub(ms) / 1000;
    match s {
        0..=1 => "Less than a second".into(),
        2..=59 => format!("{s} seconds"),
        60..=119 => "About a minute".into(),
        120..=3599 => format!("{} minutes", s / 60),
        3600..=7199 => "About an hour".into(),
        7200..=172_799 => format!("{} hours", s / 3600),
        _ => format!("{} days", s / 86_400),
    }
}

/// `ps --filter`'s keys.
const PS_FILTERS: [&str; 9] = [
    "id", "name", "label", "status", "exited", "ancestor", "health", "network", "publish",
];

/// Docker's `ps` filters over what this daemon has: `id` a prefix, `name` a part of the
/// name, `label` a key or `key=value`, `status` created|running|exited (Docker's other
/// states never hold here), `exited` the exit code, `ancestor` the image as named
/// (with or without its tag) or its id, `health` starting|healthy|unhealthy|none,
/// `network` bridge|host|none or a network's name, `publish` a host port
/// (`8080` or `8080/udp`).
fn filter_ps<'a>(filters: &'a [String]) -> Result<Filters<'a>, UsageError> {
    Filters::parse(filters, &PS_FILTERS, |k, v| match k {
        "status" if !STATUSES.contains(&v) => Err(format!("one of {}", STATUSES.join(", "))),
        "exited" if v.parse::<i32>().is_err() => Err("not an exit code".into()),
        "health" if !["starting", "healthy", "unhealthy", "none"].contains(&v) => {
            Err("starting, healthy, unhealthy or none".into())
        }
        "publish" => publish_filter(v).map(|_| ()),
        _ => Ok(()),
    })
}

/// Docker's container states (`ps -f status=`); a container here is only ever created,
/// running or exited.
const STATUSES: [&str; 7] = [
    "created",
    "restarting",
    "running",
    "removing",
    "paused",
    "exited",
    "dead",
];

fn ps_matches(v: &ContainerView, key: &str, val: &str) -> bool {
    let r = &v.record;
    match key {
        "id" => r.id.starts_with(val),
        "name" => r.name.contains(val),
        "label" => label_matches(r.spec.labels.iter(), val),
        "status" => val == status_word(&v.status),
        "exited" => {
            matches!(v.status, Status::Exited { code: Some(c), .. } if c.to_string() == val)
        }
        "ancestor" => ancestor_matches(r, val),
        "health" => v.health.as_ref().map_or("none", |h| h.status.name()) == val,
        "network" => r.spec.network.name() == val,
        "publish" => publish_filter(val).is_ok_and(|(proto, port)| {
            r.spec
                .ports
                .iter()
                .any(|p| (p.protocol, p.host) == (proto, port))
        }),
        _ => false,
    }
}

/// `ps -f ancestor=`: the container's image, by reference (`busybox` is
/// `busybox:latest`, as Docker resolves it) or by id (`sha256:...`, or 12 hex digits or
/// more).
fn ancestor_matches(r: &crate::model::container::ContainerRecord, val: &str) -> bool {
    let id = r.image_id.to_string();
    let hex = val.strip_prefix("sha256:").unwrap_or(val);
    let by_id = (val.starts_with("sha256:") || hex.len() >= 12)
        && hex.bytes().all(|c| c.is_ascii_hexdigit())
        && id.trim_start_matches("sha256:").starts_with(hex);
    let by_ref = match (Reference::parse(val), Reference::parse(&r.image)) {
        (Ok(want), Ok(have)) => {
            want.name() == have.name() && want.tag == have.tag && want.digest == have.digest
        }
        _ => false,
    };
    by_id || by_ref
}

/// `ps -f publish=PORT[/tcp|/udp]`: a host port.
fn publish_filter(v: &str) -> Result<(Protocol, u16), String> {
    match parse_port_binding(v) {
        Ok(b) if b.host == 0 => Ok((b.protocol, b.container)),
        _ => Err("not PORT[/tcp|/udp]".into()),
    }
}

fn status_word(s: &Status) -> &'static str {
    match s {
        Status::Created => "created",
        Status::Running { .. } => "running",
        Status::Exited { .. } => "exited",
    }
}

pub fn ps(global: &Global, c: PsCommand) -> anyhow::Result<ExitCode> {
    let filters = filter_ps(&c.filter)?;
    let Response::Containers(mut all) = call(global, &Request::Container(ContainerRequest::List))?
    else {
        return Err(anyhow::anyhow!("unexpected answer from the daemon"));
    };
    // As Docker: asking for a state (or an exit code) looks past the running ones.
    if !c.all && !filters.has("status") && !filters.has("exited") {
        all.retain(|v| matches!(v.status, Status::Running { .. }));
    }
    filters.retain(&mut all, ps_matches);
    if let Some(n) = c.last {
        all.truncate(usize::try_from(n).unwrap_or(usize::MAX));
    }
    let id_of = |id: &str| {
        if c.no_trunc {
            id.to_string()
        } else {
            id[..12].to_string()
        }
    };
    if c.quiet {
        for v in &all {
            println!("{}", id_of(&v.record.id));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![[
        "CONTAINER ID",
        "IMAGE",
        "COMMAND",
        "CREATED",
        "STATUS",
        "PORTS",
        "NAMES",
    ]
    .iter()
    .map(|s| (*s).to_string())
    .collect::<Vec<_>>()];
    for v in &all {
        let r = &v.record;
        let mut cmd = r
            .spec
            .entrypoint
            .clone()
            .unwrap_or_default()
            .into_iter()
            .chain(r.spec.cmd.clone())
            .collect::<Vec<_>>()
            .join(" ");
        if !c.no_trunc && cmd.chars().count() > 20 {
            cmd = cmd.chars().take(19).collect::<String>() + "…";
        }
        let status = match &v.status {
            Status::Created => "Created".to_string(),
            Status::Running { started_at, .. } => format!(
                "Up {}{}",
                ago(*started_at),
                v.health
                    .as_ref()
                    .map(|h| format!(" ({})", health_word(h.status)))
                    .unwrap_or_default()
            ),
            Status::Exited {
                code,
                oom_killed,
                finished_at,
                ..
            } => format!(
                "Exited ({}){} {} ago",
                code.map_or("unknown".to_string(), |c| c.to_string()),
                if *oom_killed { " OOM" } else { "" },
                ago(*finished_at)
            ),
        };
        rows.push(vec![
            id_of(&r.id),
            r.image.clone(),
            format!("\"{cmd}\""),
            format!("{} ago", ago(r.created)),
            status,
            // As Docker: a container's ports while it runs.
            if matches!(v.status, Status::Running { .. }) {
                r.spec
                    .ports
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            } else {
                String::new()
            },
            r.name.clone(),
        ]);
    }
    print_table(&rows);
    Ok(ExitCode::SUCCESS)
}

fn health_word(s: HealthStatus) -> &'static str {
    match s {
        HealthStatus::Starting => "health: starting",
        HealthStatus::Healthy => "healthy",
        HealthStatus::Unhealthy => "unhealthy",
    }
}

fn need(list: &[String], what: &str) -> Result<(), UsageError> {
    if list.is_empty() {
        return Err(UsageError(format!("{what}: name at least one container")));
    }
    Ok(())
}

pub fn stop(global: &Global, c: StopCommand) -> anyhow::Result<ExitCode> {
    need(&c.containers, "stop")?;
    // The daemon waits up to the grace period for each container.
    let req = Request::Container(ContainerRequest::Stop {
        containers: c.containers,
        timeout: stop_timeout(c.time)?,
    });
    print_stream_done(global, &req)
}

pub fn kill(global: &Global, c: KillCommand) -> anyhow::Result<ExitCode> {
    need(&c.containers, "kill")?;
    let signal = c.signal.unwrap_or_else(|| "SIGKILL".into());
    signal_number(&signal).map_err(|e| UsageError(format!("--signal: {e}")))?;
    print_done(call(
        global,
        &Request::Container(ContainerRequest::Kill {
            containers: c.containers,
            signal,
        }),
    )?)
}

pub fn rm(global: &Global, c: RmCommand) -> anyhow::Result<ExitCode> {
    need(&c.containers, "rm")?;
    // `-v` removes a container's anonymous volumes: here every volume is named (`-v`
    // and `--mount` want a source), so there are none, and named ones stay, as under
    // Docker.
    let _ = c.volumes;
    print_stream_done(
        global,
        &Request::Container(ContainerRequest::Remove {
            containers: c.containers,
            force: c.force,
        }),
    )
}

pub fn inspect(global: &Global, c: InspectCommand) -> anyhow::Result<ExitCode> {
    need(&c.objects, "inspect")?;
    if c.kind.as_deref().is_some_and(|k| k != "container") {
        return not_implemented("inspect --type other than container");
    }
    print_json(call(
        global,
        &Request::Container(ContainerRequest::Inspect {
            containers: c.objects,
        }),
    )?)
}

/// For requests that may take longer than the usual client timeout (stop waits out
/// grace periods).
fn print_stream_done(global: &Global, req: &Request) -> anyhow::Result<ExitCode> {
    match crate::api::call_streaming(&global.socket, req, None, |_| {})? {
        Response::Error(e) => Err(anyhow::anyhow!(e)),
        r => print_done(r),
    }
}

pub fn exec(global: &Global, c: ExecCommand) -> anyhow::Result<ExitCode> {
    if c.interactive || c.tty {
        return Err(UsageError("-i/-t: interactive exec is not supported yet".into()).into());
    }
    if c.detach {
        return not_implemented("exec -d");
    }
    if c.command.is_empty() {
        return Err(UsageError("exec: give a command to run".into()).into());
    }
    let req = Request::Container(ContainerRequest::Exec {
        container: c.container,
        cmd: c.command,
        env: c.env,
        user: c.user,
        workdir: c.workdir,
    });
    let resp =
        crate::api::call_streaming(&global.socket, &req, None, |f| print_chunk(f, false, None))?;
    match resp {
        Response::Exit(Some(code)) => Ok(ExitCode::from(
            u8::try_from(code.clamp(0, 255)).unwrap_or(255),
        )),
        Response::Exit(None) => Err(anyhow::anyhow!("the exit status could not be observed")),
        Response::Error(e) => Err(anyhow::anyhow!(e)),
        other => Err(anyhow::anyhow!(
            "unexpected answer from the daemon: {other:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_cmd(args: &[&str]) -> RunCommand {
        RunCommand::from_args(&["run"], args).expect("parses")
    }

    fn refused(args: &[&str], flag: &str) {
        let err = resolve_run(&run_cmd(args)).expect_err("refused");
        assert!(err.0.starts_with(flag), "{args:?}: {}", err.0);
    }

    #[test]
    fn since_takes_dockers_forms_in_the_logs_own() {
        for (arg, want) in [
            ("2026-12-02", "2026-12-02T00:00:00.000000000Z"),
            ("2026-12-02T01:02:03Z", "2026-12-02T01:02:03.000000000Z"),
            ("2026-12-02T01:02:03.5Z", "2026-12-02T01:02:03.500000000Z"),
            ("1764637323", "2025-12-02T01:02:03.000000000Z"),
            ("1764637323.25", "2025-12-02T01:02:03.250000000Z"),
        ] {
            assert_eq!(
                log_since(arg).map_err(|e| e.0),
                Ok(want.to_string()),
                "{arg}"
            );
        }
        // A duration counts back from now.
        let ten = log_since("10m").unwrap();
        let now = crate::runtime::logs::rfc3339_nanos(std::time::SystemTime::now());
        assert!(ten < now && ten.len() == now.len(), "{ten} {now}");
        for bad in [
            "",
            "yesterday",
            "2026-12-02T01:02:03",
            "2026-12-02T01:02:03+01:00",
            "2026-1-2",
            "10x",
            "1.2.3",
            "2026-12-02T01:02:03.1234567890Z",
        ] {
            let err = log_since(bad).expect_err(bad).0;
            assert!(err.starts_with("--since: "), "{bad}: {err}");
        }
    }

    #[test]
    fn published_ports_take_dockers_forms() {
        let b = |protocol, host, container| PortBinding {
            protocol,
            host,
            container,
        };
        for (arg, want) in [
            ("8080:80", b(Protocol::Tcp, 8080, 80)),
            ("53:5353/udp", b(Protocol::Udp, 53, 5353)),
            ("80/tcp", b(Protocol::Tcp, 0, 80)),
            ("0.0.0.0:8080:80", b(Protocol::Tcp, 8080, 80)),
            (":8080:80", b(Protocol::Tcp, 8080, 80)),
        ] {
            assert_eq!(parse_port_binding(arg).map_err(|e| e.0), Ok(want), "{arg}");
        }
        for (arg, why) in [
            ("8080:80/sctp", "protocol \"sctp\""),
            ("0:80", "host port \"0\""),
            ("8080:70000", "container port \"70000\""),
            ("8080-8081:80-81", "port ranges"),
            ("127.0.0.1:8080:80", "one address (127.0.0.1)"),
            ("a:b:c:d", "not [HOST:]CONTAINER"),
            ("", "container port \"\""),
        ] {
            let err = parse_port_binding(arg).expect_err(arg).0;
            assert!(err.starts_with("-p: ") && err.contains(why), "{arg}: {err}");
        }
        refused(&["-p", "80:80", "--network", "host", "busybox"], "-p");
        refused(&["-p", "80:80", "--network", "none", "busybox"], "-p");
        let (spec, _) = resolve_run(&run_cmd(&["-p", "80:80", "busybox"])).unwrap();
        assert_eq!(spec.ports, [b(Protocol::Tcp, 80, 80)]);
    }

    #[test]
    fn volume_names_follow_docker() {
        for bad in ["..", ".", "a", ".x", "-x", "_x", "a/b"] {
            refused(&["-v", &format!("{bad}:/x"), "busybox"], "-v");
        }
        for good in ["ab", "my-vol_1.2", "0x", "a.."] {
            let (spec, _) = resolve_run(&run_cmd(&["-v", &format!("{good}:/x"), "busybox"]))
                .unwrap_or_else(|e| panic!("{good}: {e}"));
            assert_eq!(spec.mounts[0].kind, MountKind::Volume);
            assert_eq!(spec.mounts[0].source, good);
        }
    }

    #[test]
    fn limits_are_bounded() {
        refused(
            &["--memory", "99999999999999999999g", "busybox"],
            "--memory",
        );
        refused(&["--memory", "2048p", "busybox"], "--memory");
        refused(&["--memory", "nan", "busybox"], "--memory");
        refused(&["--memory", "inf", "busybox"], "--memory");
        refused(&["--memory", "1m", "busybox"], "--memory");
        let (spec, _) = resolve_run(&run_cmd(&["--memory", "1.5g", "busybox"])).unwrap();
        assert_eq!(spec.memory, Some(3 << 29));
        let n = crate::runtime::spec::host_cpus();
        let too_many = (n + 1).to_string();
        let err = resolve_run(&run_cmd(&["--cpus", &too_many, "busybox"])).unwrap_err();
        assert_eq!(
            err.0,
            format!("--cpus: range of CPUs is from 0.01 to {n}.00, as there are only {n} CPUs available")
        );
        refused(&["--cpus", "1000", "busybox"], "--cpus");
        refused(&["--cpus", "0.001", "busybox"], "--cpus");
        refused(&["--cpus", "NaN", "busybox"], "--cpus");
        let (spec, _) = resolve_run(&run_cmd(&["--cpus", &n.to_string(), "busybox"])).unwrap();
        assert_eq!(spec.cpus, Some(n as f64));
    }

    #[test]
    fn docker_values_for_no_limit_are_taken() {
        // --stop-timeout -1: no SIGKILL, wait for the container however long it takes.
        let (_, t) = resolve_run(&run_cmd(&["--stop-timeout", "-1", "busybox"])).unwrap();
        assert_eq!(t, Some(-1));
        refused(&["--stop-timeout", "-2", "busybox"], "--stop-timeout");
        let stop = StopCommand::from_args(&["stop"], &["-t", "-1", "c"]).unwrap();
        assert_eq!(stop_timeout(stop.time), Ok(Some(-1)));
        assert!(stop_timeout(Some(-5)).unwrap_err().0.starts_with("--time"));
        // logs --tail: all, -1 (any negative, as Docker) or a count.
        for (v, want) in [
            ("all", None),
            ("-1", None),
            ("0", Some(0)),
            ("25", Some(25)),
        ] {
            let l = LogsCommand::from_args(&["logs"], &["--tail", v, "c"]).unwrap();
            assert_eq!(tail_lines(l.tail.as_deref()), Ok(want), "{v}");
        }
        assert!(tail_lines(Some("x")).unwrap_err().0.starts_with("--tail"));
    }

    #[test]
    fn a_bad_name_is_a_usage_error() {
        refused(&["--name", "a b", "busybox"], "--name");
        refused(&["--name", "-x", "busybox"], "--name");
        refused(&["-w", "tmp", "busybox"], "-w");
        resolve_run(&run_cmd(&["--name", "web-1.a_b", "busybox"])).unwrap();
    }

    #[test]
    fn durations() {
        let ms = |s| parse_duration("--x", s).map(|d| d.as_millis());
        assert_eq!(ms("500ms"), Ok(500));
        assert_eq!(ms("30s"), Ok(30_000));
        assert_eq!(ms("1m30s"), Ok(90_000));
        assert_eq!(ms("2h"), Ok(7_200_000));
        for bad in ["", "5", "s", "1.5s", "5 s", "-1s", "1d"] {
            assert!(
                parse_duration("--x", bad).unwrap_err().0.contains("--x"),
                "{bad:?}"
            );
        }
    }
}

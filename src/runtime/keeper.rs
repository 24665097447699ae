//! The keeper: one small process per node that outlives the daemon. It
//!
//! - holds the read ends of every container's stdout and stderr pipes and writes what
//!   arrives to the container's rotated log, so a container keeps printing (and its lines
//!   are kept) while the daemon is down, restarting or being upgraded;
//! - is a child subreaper: containers are re-parented to it when the short-lived helper
//!   that created them exits, so it reaps them and records their exit status, OOM kill
//!   and time, including while the daemon is down;
//! - answers the daemon over `<dir>/keeper.sock`: run, kill, delete, list.
//!
//! Its protocol has its own version ([`KEEPER_VERSION`]), apart from the CLI's API: a
//! keeper started by one daemon is met by the next, possibly a newer binary. Every
//! keeper from version 2 on also understands the [`Control`] frames, which never
//! change: `Hello` tells a daemon which version it talks to, and `Upgrade` makes the
//! keeper re-execute itself into the daemon's binary, keeping its pid (so containers
//! stay its children and their exit codes stay observable), its socket, its lock and
//! every container's pipes and pidfd ([`ensure`] does this when the versions differ).
//! A keeper from before (version 1, when it shared the API's version byte) cannot
//! re-execute itself: the daemon speaks version 1 to it (the same requests), and
//! replaces it once none of its containers runs.
//!
//! It is single-threaded (one `poll` loop) and never calls libcontainer itself: that
//! happens in `swarmlet runtime-helper`, a fresh process per operation.
//!
//! If the keeper itself dies, running containers are adopted by the next keeper from
//! their state files, but their pipes are gone (the next write fails) and their exit
//! codes can no longer be observed: they are reported as unknown, never invented.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use rustix::event::{poll, PollFd, PollFlags};
use rustix::process::{Pid, Signal, WaitOptions};
use serde::{Deserialize, Serialize};

use super::logs::{LogWriter, Stream};
use crate::frame::{FrameError, Protocol};
use crate::model::container::LogLimits;

pub const SOCKET: &str = "keeper.sock";
/// Version of the keeper protocol: [`KeeperRequest`] and [`KeeperResponse`]. Bump it
/// when either changes; the [`Control`] frames let a daemon upgrade an older keeper.
/// Version 1 was this protocol while it shared the CLI API's version byte (the same
/// requests and answers, without the control frames).
pub const KEEPER_VERSION: u8 = 2;
/// The version byte of [`Control`] frames, which every keeper from version 2 on
/// understands whatever its own version.
pub const CONTROL_VERSION: u8 = 0;
/// The legacy version: keepers that predate the control frames.
pub const LEGACY_VERSION: u8 = 1;
/// Largest keeper frame: a `List` of a node's containers (about 100 bytes each) fits
/// thousands; a container's error text is short.
pub const MAX_KEEPER_FRAME: usize = 1 << 20;
/// Largest frame a legacy keeper may send: it used the API's limit.
const MAX_LEGACY_FRAME: usize = 16 << 20;
/// Largest control frame: a path and a few numbers.
const MAX_CONTROL_FRAME: usize = 4096;
/// The control frames' framing.
pub const CONTROL: Protocol = Protocol {
    name: "keeper control",
    version: CONTROL_VERSION,
    max_body: MAX_CONTROL_FRAME,
};
/// How long a daemon waits for a keeper to start, or to come back from re-executing.
const START_WAIT: Duration = Duration::from_secs(10);
/// Where a keeper that re-executes itself leaves what the next binary takes over.
const HANDOVER_FILE: &str = "keeper.handover";
/// libcontainer's state (`<dir>/.runtime/<id>`).
pub const RUNTIME_DIR: &str = ".runtime";
const STATE_FILE: &str = "keeper.json";
const LOG_FILE: &str = "log";
/// Reads (of up to 64 KiB) taken from each pipe of a container that just exited
/// before its exit is recorded: 64 MiB, far more than a pipe holds, yet bounded if a
/// surviving background process keeps writing.
const MAX_READS_AT_EXIT: usize = 1024;
/// How many times removal retries an empty-but-busy cgroup (its last processes still
/// dying), and how long it waits between tries: 0.4 s in all.
const CGROUP_RMDIR_TRIES: u32 = 200;
const CGROUP_RMDIR_WAIT: Duration = Duration::from_millis(2);
/// How long the keeper waits for a client to send its request.
const CLIENT_READ: Duration = Duration::from_secs(5);

/// The framing of keeper protocol `version` (this one, or an older keeper's).
pub fn protocol(version: u8) -> Protocol {
    Protocol {
        name: "keeper",
        version,
        max_body: if version == LEGACY_VERSION {
            MAX_LEGACY_FRAME
        } else {
            MAX_KEEPER_FRAME
        },
    }
}

/// Requests every keeper from version 2 on serves, in [`CONTROL`] frames. Frozen: a
/// daemon of any later version must be able to send them to a keeper of any earlier
/// one, so these types never change; new requests may only be added at the end.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Control {
    /// Answered with [`ControlAnswer::Hello`].
    Hello,
    /// Re-execute as `<exe> runtime-helper keeper <dir>`, handing over every container.
    Upgrade { exe: PathBuf },
}

/// Answers to [`Control`] requests. Frozen, like [`Control`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ControlAnswer {
    Hello {
        version: u8,
        pid: u32,
    },
    /// Sent right before the keeper re-executes itself.
    Upgrading,
    Refused(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum KeeperRequest {
    Ping,
    /// Create and start the container `id` from `<dir>/<id>/bundle`.
    Run {
        id: String,
        log: LogLimits,
    },
    Kill {
        id: String,
        signal: i32,
    },
    /// Answers with the container's state once it has exited, or after `timeout_ms`
    /// with its state as it is then (whichever comes first).
    Wait {
        id: String,
        timeout_ms: u64,
    },
    /// Forget a container that has exited: its runtime state, cgroups, keeper state.
    Delete {
        id: String,
    },
    List,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum KeeperResponse {
    Ok,
    Error(String),
    Started { pid: i32 },
    States(Vec<ContainerState>),
}

/// What the keeper knows of one container.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerState {
    pub id: String,
    pub pid: i32,
    /// Milliseconds since the epoch.
    pub started_at: u64,
    /// The process's start time in clock ticks since boot, from /proc: tells a reused
    /// pid apart.
    pub start_ticks: u64,
    pub exit: Option<Exit>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// Exit status, or 128 + signal for a killed process; None if it could not be
    /// observed (it ended while no keeper was its parent).
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub finished_at: u64,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The start time of `pid` in clock ticks since boot (field 22 of /proc/<pid>/stat).
/// `None` also for a zombie: an orphan whose reaper (the host's init, which may be slow
/// or never reap) has not collected it is dead for our purposes.
pub fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let after = stat.get(stat.rfind(')')? + 2..)?;
    let mut fields = after.split_whitespace();
    if matches!(fields.next()?, "Z" | "X" | "x") {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// Sends one request, in this version of the protocol, to the keeper at
/// `<dir>/keeper.sock`.
pub fn call(dir: &Path, req: &KeeperRequest, timeout: Duration) -> io::Result<KeeperResponse> {
    call_version(dir, KEEPER_VERSION, req, timeout)
}

fn call_version(
    dir: &Path,
    version: u8,
    req: &KeeperRequest,
    timeout: Duration,
) -> io::Result<KeeperResponse> {
    let proto = protocol(version);
    let mut s = UnixStream::connect(dir.join(SOCKET))?;
    s.set_read_timeout(Some(timeout))?;
    proto.write(&mut s, req).map_err(frame_to_io)?;
    proto.read(&mut s).map_err(frame_to_io)
}

fn frame_to_io(e: FrameError) -> io::Error {
    match e {
        FrameError::Io(e) => e,
        other => io::Error::other(other),
    }
}

/// The keeper serving a directory, and the protocol version to speak to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeeperLink {
    pub dir: PathBuf,
    /// [`KEEPER_VERSION`], or [`LEGACY_VERSION`] for a keeper that predates upgrades.
    pub version: u8,
}

impl KeeperLink {
    pub fn call(&self, req: &KeeperRequest, timeout: Duration) -> io::Result<KeeperResponse> {
        call_version(&self.dir, self.version, req, timeout)
    }
}

/// What answers on a keeper socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Greeting {
    /// A keeper that serves control frames: its protocol version and pid.
    Keeper { version: u8, pid: u32 },
    /// A keeper from before control frames: it answered in protocol 1. Its pid comes
    /// from the socket's peer credentials.
    Legacy { pid: Option<u32> },
}

/// Asks whoever serves `<dir>/keeper.sock` what it is.
pub fn greet(dir: &Path) -> anyhow::Result<Greeting> {
    let mut s = UnixStream::connect(dir.join(SOCKET))?;
    s.set_read_timeout(Some(CLIENT_READ))?;
    CONTROL.write(&mut s, &Control::Hello)?;
    // Read with the largest limit any version used: the answer's version byte says
    // which protocol it is in.
    let body = protocol(LEGACY_VERSION).read_body(&mut s)?;
    match body.first() {
        Some(&CONTROL_VERSION) => match CONTROL.decode(&body)? {
            ControlAnswer::Hello { version, pid } => Ok(Greeting::Keeper { version, pid }),
            other => Err(anyhow!("the keeper answered hello with {other:?}")),
        },
        Some(&LEGACY_VERSION) => Ok(Greeting::Legacy {
            pid: rustix::net::sockopt::socket_peercred(&s)
                .ok()
                .and_then(|c| u32::try_from(c.pid.as_raw_nonzero().get()).ok()),
        }),
        Some(v) => Err(anyhow!(
            "the keeper answered in protocol {v} without control frames"
        )),
        None => Err(anyhow!("the keeper sent an empty frame")),
    }
}

/// Makes sure a keeper of this version serves `dir`, and says how to talk to it:
///
/// - none answers: starts one from the swarmlet binary `exe` (detached, in its own
///   session, so it outlives the caller);
/// - one of another version answers: asks it to re-execute itself into `exe`, which
///   keeps every container running, its output flowing to its log and its exit code
///   observable; if it refuses or does not come back, fails saying so, with the
///   keeper and its containers left as they were;
/// - a legacy keeper (protocol 1, no control frames) answers: if none of its
///   containers runs, it is stopped and replaced; otherwise it is kept, and spoken to
///   in protocol 1 (the same requests), so its containers keep running.
pub fn ensure(dir: &Path, exe: &Path) -> anyhow::Result<KeeperLink> {
    let current = KeeperLink {
        dir: dir.to_path_buf(),
        version: KEEPER_VERSION,
    };
    let deadline = std::time::Instant::now() + START_WAIT;
    let mut started = false;
    let mut asked: Option<(u8, u32)> = None;
    let mut replaced = false;
    loop {
        match greet(dir) {
            Ok(Greeting::Keeper { version, .. }) if version == KEEPER_VERSION => {
                return Ok(current)
            }
            Ok(Greeting::Keeper { version, pid }) => {
                if asked.is_none() {
                    upgrade(dir, exe, version, pid)?;
                    asked = Some((version, pid));
                }
            }
            Ok(Greeting::Legacy { pid }) if !replaced => {
                if let Some(link) = keep_legacy(dir, pid)? {
                    return Ok(link);
                }
                replaced = true;
            }
            Ok(Greeting::Legacy { pid }) => {
                bail!(
                    "the legacy keeper (pid {}) of {} is still there after being stopped",
                    pid.map_or("unknown".into(), |p| p.to_string()),
                    dir.display()
                )
            }
            Err(_) if !started && asked.is_none() => {
                spawn(dir, exe)?;
                started = true;
            }
            Err(_) => {}
        }
        if std::time::Instant::now() > deadline {
            return Err(match asked {
                Some((version, pid)) => anyhow!(
                    "the keeper (pid {pid}) of {} speaks keeper protocol {version}, not {KEEPER_VERSION}, and did not come back from re-executing {} within {} s; its containers keep running under it (see {})",
                    dir.display(),
                    exe.display(),
                    START_WAIT.as_secs(),
                    dir.join("keeper.log").display()
                ),
                None => anyhow!(
                    "the keeper did not start; see {}",
                    dir.join("keeper.log").display()
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asks a keeper of another version to re-execute itself into `exe`.
fn upgrade(dir: &Path, exe: &Path, version: u8, pid: u32) -> anyhow::Result<()> {
    // `/proc/self/exe` would name the keeper's own binary in the keeper; this process's
    // entry names ours, even if an upgrade has replaced the file since we started.
    let own;
    let exe = if exe == Path::new(super::SELF_EXE) {
        own = PathBuf::from(format!("/proc/{}/exe", std::process::id()));
        own.as_path()
    } else {
        exe
    };
    info!(
        "the keeper (pid {pid}) speaks keeper protocol {version}, this daemon {KEEPER_VERSION}: asking it to re-execute {}",
        exe.display()
    );
    let mut s = UnixStream::connect(dir.join(SOCKET))?;
    s.set_read_timeout(Some(CLIENT_READ))?;
    CONTROL.write(
        &mut s,
        &Control::Upgrade {
            exe: exe.to_path_buf(),
        },
    )?;
    match CONTROL.read(&mut s)? {
        ControlAnswer::Upgrading => Ok(()),
        ControlAnswer::Refused(why) => bail!(
            "the keeper (pid {pid}) of {} speaks keeper protocol {version}, not {KEEPER_VERSION}, and refused to re-execute {}: {why}; its containers keep running under it",
            dir.display(),
            exe.display()
        ),
        other => bail!("the keeper (pid {pid}) answered an upgrade with {other:?}"),
    }
}

/// A legacy keeper: kept (and returned) while any of its containers runs; otherwise
/// stopped, so that a current one replaces it (None).
fn keep_legacy(dir: &Path, pid: Option<u32>) -> anyhow::Result<Option<KeeperLink>> {
    let link = KeeperLink {
        dir: dir.to_path_buf(),
        version: LEGACY_VERSION,
    };
    let running = match link.call(&KeeperRequest::List, CLIENT_READ)? {
        KeeperResponse::States(v) => v.iter().filter(|s| s.exit.is_none()).count(),
        other => bail!("the legacy keeper of {} answered {other:?}", dir.display()),
    };
    let Some(pid) = pid.filter(|_| running == 0) else {
        warning!(
            "the keeper (pid {}) of {} predates keeper protocol {KEEPER_VERSION} and cannot re-execute itself: this daemon speaks protocol {LEGACY_VERSION} to it (the same requests); its running containers ({running}) keep running, and it is replaced when a daemon starts while none runs",
            pid.map_or("unknown".into(), |p| p.to_string()),
            dir.display()
        );
        return Ok(Some(link));
    };
    info!("stopping the legacy keeper (pid {pid}): none of its containers runs");
    let p = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| anyhow!("bad keeper pid {pid}"))?;
    rustix::process::kill_process(p, Signal::TERM)
        .with_context(|| format!("stopping the legacy keeper (pid {pid})"))?;
    // Gone once its lock is free (a dead process holds no lock, even unreaped).
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("keeper.lock"))?;
    let deadline = std::time::Instant::now() + START_WAIT;
    while rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        if std::time::Instant::now() > deadline {
            bail!("the legacy keeper (pid {pid}) did not stop");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(lock);
    Ok(None)
}

/// Starts a keeper for `dir` from the binary `exe`, detached in its own session.
fn spawn(dir: &Path, exe: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Under systemd the keeper shares the daemon's journald stream (it stays in the unit's
    // cgroup, so `journalctl -u swarmlet` shows its lines too); otherwise a file of its
    // own, since it outlives whatever terminal started the daemon.
    let log = if crate::logging::to_journal() {
        Stdio::inherit()
    } else {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("keeper.log"))
            .with_context(|| format!("cannot open {}", dir.join("keeper.log").display()))?;
        Stdio::from(file)
    };
    let mut cmd = super::command(exe);
    cmd.arg("runtime-helper")
        .arg("keeper")
        .arg(dir)
        .env(crate::logging::LEVEL_ENV, crate::logging::level_name())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the keeper")?;
    // Reap it later without blocking: it lives on; a thread waits for it so it never
    // lingers as a zombie of this process.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(())
}

struct Live {
    state: ContainerState,
    pidfd: Option<OwnedFd>,
    /// Read ends of stdout and stderr, while open.
    pipes: [Option<OwnedFd>; 2],
    log: Option<LogWriter>,
    /// Whether the last write to `log` failed (reported once, not per chunk).
    log_failing: bool,
    /// Whether the process is our child (reaped with waitpid) or was adopted.
    ours: bool,
    /// The log's limits, while `log` is open (handed over on an upgrade).
    limits: Option<LogLimits>,
}

struct Keeper {
    dir: PathBuf,
    /// The protocol version this keeper speaks ([`KEEPER_VERSION`] but in tests).
    version: u8,
    listener: UnixListener,
    /// Held with `flock` while this keeper (or the binary it re-executes) serves `dir`.
    lock: File,
    live: BTreeMap<String, Live>,
    /// Clients waiting for an exit: (container, connection, when to give up).
    waiters: Vec<(String, UnixStream, std::time::Instant)>,
}

/// How `swarmlet runtime-helper keeper` was asked to run.
#[derive(Clone, Debug, Default)]
pub struct KeeperOptions {
    /// Take over from a keeper that re-executed itself into this binary: the file it
    /// left (see [`Handover`]).
    pub handover: Option<PathBuf>,
    /// Tests only: speak this protocol version instead of [`KEEPER_VERSION`], as an
    /// older or newer keeper would; [`LEGACY_VERSION`] also refuses control frames, as
    /// keepers from before them do. Not kept across an upgrade.
    pub test_protocol_version: Option<u8>,
}

/// What a keeper that re-executes itself leaves for the binary it becomes, in
/// `<dir>/keeper.handover` (JSON), with these fds left open across the exec. Read by
/// other versions of swarmlet: fields are only ever added, with defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Handover {
    /// The protocol version of the keeper that wrote it.
    pub from_version: u8,
    pub lock_fd: RawFd,
    pub listener_fd: RawFd,
    pub containers: Vec<HandedContainer>,
}

/// One container in a [`Handover`]; its state is in its `keeper.json` as always.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HandedContainer {
    pub id: String,
    pub pidfd: Option<RawFd>,
    pub stdout: Option<RawFd>,
    pub stderr: Option<RawFd>,
    /// Whether the process is the keeper's child (its exit code is observable).
    pub ours: bool,
    pub limits: Option<LogLimits>,
}

/// The keeper's main loop (`swarmlet runtime-helper keeper <dir>`).
pub fn run(dir: &Path, opts: &KeeperOptions) -> anyhow::Result<()> {
    if let Ok(level) = std::env::var(crate::logging::LEVEL_ENV) {
        // Set by `ensure` from the daemon's own level; a bad one keeps the default.
        let _ = crate::logging::set_level(&level);
    }
    let version = opts.test_protocol_version.unwrap_or(KEEPER_VERSION);
    // A re-executed keeper keeps its pid: already a subreaper, the same children.
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .context("becoming a child subreaper")?;
    let (lock, listener, handed) = match &opts.handover {
        Some(path) => take_over(path)?,
        None => {
            let (lock, listener) = bind(dir)?;
            (lock, listener, BTreeMap::new())
        }
    };
    let mut k = Keeper {
        dir: dir.to_path_buf(),
        version,
        listener,
        lock,
        live: BTreeMap::new(),
        waiters: Vec::new(),
    };
    let taken = handed.len();
    k.adopt(handed);
    info!(
        "keeper: serving {} ({} containers{}), protocol {version}",
        dir.display(),
        k.live.len(),
        if opts.handover.is_some() {
            format!(", {taken} handed over")
        } else {
            String::new()
        }
    );
    loop {
        k.turn()?;
    }
}

/// A fresh keeper: takes the directory's lock and binds its socket.
fn bind(dir: &Path) -> anyhow::Result<(File, UnixListener)> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("keeper.lock"))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .map_err(|_| anyhow!("a keeper already serves {}", dir.display()))?;
    std::fs::write(
        dir.join("keeper.pid"),
        rustix::process::getpid().as_raw_nonzero().to_string(),
    )?;
    let sock = dir.join(SOCKET);
    let _ = std::fs::remove_file(&sock);
    let listener =
        UnixListener::bind(&sock).with_context(|| format!("binding {}", sock.display()))?;
    std::fs::set_permissions(&sock, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok((lock, listener))
}

/// The fds a container had in the keeper this one was before re-executing.
struct Inherited {
    pidfd: Option<OwnedFd>,
    pipes: [Option<OwnedFd>; 2],
    ours: bool,
    limits: Option<LogLimits>,
}

/// A re-executed keeper: reads the handover its previous binary left and claims the
/// fds it names.
fn take_over(path: &Path) -> anyhow::Result<(File, UnixListener, BTreeMap<String, Inherited>)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let _ = std::fs::remove_file(path);
    let h: Handover =
        serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))?;
    let lock = claim(h.lock_fd).ok_or_else(|| anyhow!("the handover's lock fd is not open"))?;
    let listener =
        claim(h.listener_fd).ok_or_else(|| anyhow!("the handover's socket fd is not open"))?;
    let mut handed = BTreeMap::new();
    for c in h.containers {
        handed.insert(
            c.id,
            Inherited {
                pidfd: c.pidfd.and_then(claim),
                pipes: [c.stdout.and_then(claim), c.stderr.and_then(claim)],
                ours: c.ours,
                limits: c.limits,
            },
        );
    }
    info!(
        "keeper: took over from protocol {} ({} containers)",
        h.from_version,
        handed.len()
    );
    Ok((File::from(lock), UnixListener::from(listener), handed))
}

/// Takes ownership of an fd inherited across exec, if it is open; marks it
/// close-on-exec again so the helpers this keeper runs do not inherit it.
fn claim(fd: RawFd) -> Option<OwnedFd> {
    if fd < 0 {
        return None;
    }
    // SAFETY: only probes the descriptor; F_GETFD on a closed one fails with EBADF.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: the fd is open (checked above) and was left open across the exec for this
    // process by the handover that names it; nothing else in this process owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let _ = rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC);
    Some(owned)
}

impl Keeper {
    /// Containers a previous keeper left: still running ones are watched; the rest keep
    /// their recorded exit. Those `handed` over by this process before it re-executed
    /// keep their pidfd, pipes and parenthood; others are not our children (exit code
    /// unknown) and their pipes are gone.
    fn adopt(&mut self, mut handed: BTreeMap<String, Inherited>) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let Ok(bytes) = std::fs::read(e.path().join(STATE_FILE)) else {
                continue;
            };
            let Ok(mut state) = serde_json::from_slice::<ContainerState>(&bytes) else {
                warning!("keeper: ignoring unreadable {}", e.path().display());
                continue;
            };
            if let Some(h) = handed.remove(&state.id) {
                let log = match (&h.limits, h.pipes.iter().any(Option::is_some)) {
                    (Some(limits), true) => LogWriter::open(&e.path().join(LOG_FILE), *limits).ok(),
                    _ => None,
                };
                self.live.insert(
                    state.id.clone(),
                    Live {
                        state,
                        pidfd: h.pidfd,
                        pipes: h.pipes,
                        log,
                        log_failing: false,
                        ours: h.ours,
                        limits: h.limits,
                    },
                );
                continue;
            }
            let mut pidfd = None;
            if state.exit.is_none() {
                let alive = start_ticks(state.pid) == Some(state.start_ticks);
                if alive {
                    pidfd = Pid::from_raw(state.pid).and_then(|p| {
                        rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok()
                    });
                }
                if pidfd.is_none() {
                    state.exit = Some(Exit {
                        code: None,
                        signal: None,
                        oom_killed: false,
                        finished_at: now_ms(),
                    });
                    let _ = self.save(&state);
                }
            }
            self.live.insert(
                state.id.clone(),
                Live {
                    state,
                    pidfd,
                    pipes: [None, None],
                    log: None,
                    log_failing: false,
                    ours: false,
                    limits: None,
                },
            );
        }
    }

    fn save(&self, state: &ContainerState) -> io::Result<()> {
        let dir = self.dir.join(&state.id);
        let tmp = dir.join(format!("{STATE_FILE}.tmp"));
        let bytes = serde_json::to_vec(state).expect("invariant: state serialises");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(STATE_FILE))
    }

    fn turn(&mut self) -> anyhow::Result<()> {
        // What to watch: the listener, each pidfd, each open pipe.
        enum Src {
            Listener,
            Exit(String),
            Pipe(String, usize),
        }
        let mut srcs = vec![Src::Listener];
        let mut fds = vec![PollFd::new(&self.listener, PollFlags::IN)];
        for (id, l) in &self.live {
            if let Some(p) = &l.pidfd {
                srcs.push(Src::Exit(id.clone()));
                fds.push(PollFd::new(p, PollFlags::IN));
            }
            for (i, p) in l.pipes.iter().enumerate() {
                if let Some(p) = p {
                    srcs.push(Src::Pipe(id.clone(), i));
                    fds.push(PollFd::new(p, PollFlags::IN));
                }
            }
        }
        let timeout = self.waiters.iter().map(|w| w.2).min().map(|t| {
            let d = t.saturating_duration_since(std::time::Instant::now());
            rustix::fs::Timespec {
                tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(d.subsec_nanos()),
            }
        });
        match poll(&mut fds, timeout.as_ref()) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let ready: Vec<usize> = fds
            .iter()
            .enumerate()
            .filter(|(_, f)| !f.revents().is_empty())
            .map(|(i, _)| i)
            .collect();
        drop(fds);
        // Logs first, so a container's last lines are written before its exit is.
        for &i in &ready {
            if let Src::Pipe(id, n) = &srcs[i] {
                let _ = self.drain_pipe(id, *n);
            }
        }
        for &i in &ready {
            match &srcs[i] {
                Src::Exit(id) => self.on_exit(id),
                Src::Listener => {
                    if let Ok((conn, _)) = self.listener.accept() {
                        self.serve(conn);
                    }
                }
                Src::Pipe(..) => {}
            }
        }
        self.answer_waiters(false);
        Ok(())
    }

    /// The framing of the protocol this keeper speaks.
    fn proto(&self) -> Protocol {
        protocol(self.version)
    }

    /// Answers the waiters whose container has exited or whose time is up (`all`:
    /// every one, with the state as it is).
    fn answer_waiters(&mut self, all: bool) {
        let now = std::time::Instant::now();
        let proto = self.proto();
        let mut keep = Vec::new();
        for (id, mut conn, deadline) in std::mem::take(&mut self.waiters) {
            let state = self.live.get(&id).map(|l| l.state.clone());
            let done = state.as_ref().is_none_or(|s| s.exit.is_some());
            if all || done || now >= deadline {
                let resp = KeeperResponse::States(state.into_iter().collect());
                let _ = proto.write(&mut conn, &resp);
            } else {
                keep.push((id, conn, deadline));
            }
        }
        self.waiters = keep;
    }

    /// Reads once from a pipe; true if it gave data (there may be more).
    fn drain_pipe(&mut self, id: &str, n: usize) -> bool {
        let Some(l) = self.live.get_mut(id) else {
            return false;
        };
        let Some(fd) = &l.pipes[n] else { return false };
        let stream = if n == 0 {
            Stream::Stdout
        } else {
            Stream::Stderr
        };
        let mut buf = [0u8; 64 << 10];
        match rustix::io::read(fd, &mut buf) {
            Ok(0) => {
                l.pipes[n] = None;
                if let Some(w) = &mut l.log {
                    let _ = w.finish(stream);
                }
                false
            }
            Ok(k) => {
                if let Some(w) = &mut l.log {
                    // Reported once until it works again: a full disk fails every
                    // chunk, and each report would be one more write to it.
                    match w.write(stream, &buf[..k]) {
                        Err(e) if !l.log_failing => {
                            error!("keeper: log of {id}: {e} (output is lost until it works)");
                            l.log_failing = true;
                        }
                        Err(_) => {}
                        Ok(()) => l.log_failing = false,
                    }
                }
                true
            }
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => false,
            Err(_) => {
                l.pipes[n] = None;
                false
            }
        }
    }

    fn on_exit(&mut self, id: &str) {
        // Everything the process wrote is in its pipes now: take it before the exit is
        // recorded, so whoever sees the exit (Wait, `logs -f`) finds the whole log. A
        // background process still holding a pipe keeps it open; reading stops when it
        // is empty, or after a bounded number of reads if it keeps writing.
        for n in 0..2 {
            for _ in 0..MAX_READS_AT_EXIT {
                if !self.drain_pipe(id, n) {
                    break;
                }
            }
        }
        let Some(l) = self.live.get_mut(id) else {
            return;
        };
        let pid = l.state.pid;
        let (code, signal) = if l.ours {
            match Pid::from_raw(pid).map(|p| rustix::process::waitpid(Some(p), WaitOptions::NOHANG))
            {
                Some(Ok(Some((_, st)))) => {
                    if let Some(c) = st.exit_status() {
                        (Some(c), None)
                    } else if let Some(s) = st.terminating_signal() {
                        (Some(128 + s), Some(s))
                    } else {
                        return; // stopped or continued: not an exit
                    }
                }
                Some(Ok(None)) => return, // spurious wake-up
                _ => (None, None),
            }
        } else {
            (None, None)
        };
        let oom_killed = oom_kills(id) > 0;
        l.pidfd = None;
        l.state.exit = Some(Exit {
            code,
            signal,
            oom_killed,
            finished_at: now_ms(),
        });
        let state = l.state.clone();
        if let Err(e) = self.save(&state) {
            error!("keeper: saving the exit of {id}: {e}");
        }
    }

    fn serve(&mut self, mut conn: UnixStream) {
        let _ = conn.set_read_timeout(Some(CLIENT_READ));
        let proto = self.proto();
        let body = match proto.read_body(&mut conn) {
            Ok(b) => b,
            Err(e) => {
                let _ = proto.write(
                    &mut conn,
                    &KeeperResponse::Error(format!("bad request: {e}")),
                );
                return;
            }
        };
        // Control frames, in every version but the legacy one (which never had them).
        if body.first() == Some(&CONTROL_VERSION) && self.version != LEGACY_VERSION {
            self.control(conn, &body);
            return;
        }
        let req = proto.decode::<KeeperRequest>(&body);
        if let Ok(KeeperRequest::Wait { id, timeout_ms }) = &req {
            let deadline = std::time::Instant::now() + Duration::from_millis(*timeout_ms);
            self.waiters.push((id.clone(), conn, deadline));
            self.answer_waiters(false);
            return;
        }
        let resp = match req {
            Ok(r) => self.handle(r),
            Err(e) => KeeperResponse::Error(format!("bad request: {e}")),
        };
        let _ = proto.write(&mut conn, &resp);
    }

    fn control(&mut self, mut conn: UnixStream, body: &[u8]) {
        let answer = match CONTROL.decode::<Control>(body) {
            Ok(Control::Hello) => ControlAnswer::Hello {
                version: self.version,
                pid: std::process::id(),
            },
            Ok(Control::Upgrade { exe }) => match self.upgrade(conn, &exe) {
                // Only returns if the exec failed; the requester was told `Upgrading`
                // and sees this keeper's version unchanged when it says hello again.
                Ok(never) => match never {},
                Err(e) => {
                    error!("keeper: re-executing {}: {e:#}", exe.display());
                    return;
                }
            },
            Err(e) => ControlAnswer::Refused(format!("bad control request: {e}")),
        };
        let _ = CONTROL.write(&mut conn, &answer);
    }

    /// Re-executes this process as `<exe> runtime-helper keeper <dir> --handover ...`:
    /// same pid (containers stay its children), same socket and lock, every container's
    /// pidfd and pipes left open across the exec and named in the handover file.
    /// Returns only if that failed, with everything as it was.
    fn upgrade(
        &mut self,
        mut conn: UnixStream,
        exe: &Path,
    ) -> anyhow::Result<std::convert::Infallible> {
        let refuse = |conn: &mut UnixStream, why: String| {
            let _ = CONTROL.write(conn, &ControlAnswer::Refused(why.clone()));
            anyhow!(why)
        };
        if !exe.is_absolute() || !exe.is_file() {
            return Err(refuse(
                &mut conn,
                format!("{} is not an absolute path to a file", exe.display()),
            ));
        }
        // Nothing in memory may be lost: waiters get the state as it is (they ask
        // again), unfinished lines are written as partial records.
        self.answer_waiters(true);
        for l in self.live.values_mut() {
            if let Some(w) = &mut l.log {
                let _ = w.flush_partial();
            }
        }
        let fd = |f: &Option<OwnedFd>| f.as_ref().map(|f| f.as_raw_fd());
        let handover = Handover {
            from_version: self.version,
            lock_fd: self.lock.as_raw_fd(),
            listener_fd: self.listener.as_raw_fd(),
            containers: self
                .live
                .iter()
                .filter(|(_, l)| l.pidfd.is_some() || l.pipes.iter().any(Option::is_some))
                .map(|(id, l)| HandedContainer {
                    id: id.clone(),
                    pidfd: fd(&l.pidfd),
                    stdout: fd(&l.pipes[0]),
                    stderr: fd(&l.pipes[1]),
                    ours: l.ours,
                    limits: l.limits,
                })
                .collect(),
        };
        let mut inherit: Vec<BorrowedFd<'_>> = vec![self.lock.as_fd(), self.listener.as_fd()];
        for l in self.live.values() {
            inherit.extend(l.pidfd.iter().map(AsFd::as_fd));
            inherit.extend(l.pipes.iter().flatten().map(AsFd::as_fd));
        }
        let path = self.dir.join(HANDOVER_FILE);
        let json = serde_json::to_vec(&handover).expect("invariant: the handover serialises");
        if let Err(e) = std::fs::write(&path, json) {
            return Err(refuse(
                &mut conn,
                format!("writing {}: {e}", path.display()),
            ));
        }
        let set_cloexec = |on: bool| {
            let flags = if on {
                rustix::io::FdFlags::CLOEXEC
            } else {
                rustix::io::FdFlags::empty()
            };
            inherit
                .iter()
                .try_for_each(|f| rustix::io::fcntl_setfd(f, flags))
        };
        if let Err(e) = set_cloexec(false) {
            let _ = set_cloexec(true);
            let _ = std::fs::remove_file(&path);
            return Err(refuse(&mut conn, format!("keeping fds across exec: {e}")));
        }
        let _ = CONTROL.write(&mut conn, &ControlAnswer::Upgrading);
        drop(conn);
        info!(
            "keeper: re-executing {} ({} containers handed over)",
            exe.display(),
            handover.containers.len()
        );
        let err = super::command(exe)
            .arg("runtime-helper")
            .arg("keeper")
            .arg(&self.dir)
            .arg("--handover")
            .arg(&path)
            .exec();
        let _ = set_cloexec(true);
        let _ = std::fs::remove_file(&path);
        Err(anyhow!(err))
    }

    fn handle(&mut self, req: KeeperRequest) -> KeeperResponse {
        match req {
            KeeperRequest::Ping => KeeperResponse::Ok,
            KeeperRequest::Wait { .. } => KeeperResponse::Error("wait is served apart".into()),
            KeeperRequest::List => {
                KeeperResponse::States(self.live.values().map(|l| l.state.clone()).collect())
            }
            KeeperRequest::Run { id, log } => match self.start(&id, log) {
                Ok(pid) => KeeperResponse::Started { pid },
                Err(e) => KeeperResponse::Error(format!("{e:#}")),
            },
            KeeperRequest::Kill { id, signal } => {
                let Some(l) = self.live.get(&id) else {
                    return KeeperResponse::Error(format!("no such container: {id}"));
                };
                if l.state.exit.is_some() {
                    return KeeperResponse::Error(format!("container {id} is not running"));
                }
                let sig = Signal::from_named_raw(signal).or_else(|| {
                    // SAFETY: any number the kernel accepts is a valid signal to send.
                    (signal > 0 && signal < 65)
                        .then(|| unsafe { Signal::from_raw_unchecked(signal) })
                });
                match (sig, Pid::from_raw(l.state.pid)) {
                    (Some(sig), Some(pid)) => match rustix::process::kill_process(pid, sig) {
                        Ok(()) => KeeperResponse::Ok,
                        Err(e) => KeeperResponse::Error(format!("signal {signal} to {id}: {e}")),
                    },
                    _ => KeeperResponse::Error(format!("invalid signal {signal}")),
                }
            }
            KeeperRequest::Delete { id } => {
                if let Some(l) = self.live.get(&id) {
                    if l.state.exit.is_none() {
                        return KeeperResponse::Error(format!(
                            "container {id} is running: stop it first"
                        ));
                    }
                }
                if let Err(e) = remove_runtime_state(&self.dir, &id) {
                    return KeeperResponse::Error(format!("removing {id}: {e}"));
                }
                self.live.remove(&id);
                let _ = std::fs::remove_file(self.dir.join(&id).join(STATE_FILE));
                KeeperResponse::Ok
            }
        }
    }

    fn start(&mut self, id: &str, limits: LogLimits) -> anyhow::Result<i32> {
        if self.live.get(id).is_some_and(|l| l.state.exit.is_none()) {
            return Err(anyhow!("container {id} is already running"));
        }
        let cdir = self.dir.join(id);
        let log = LogWriter::open(&cdir.join(LOG_FILE), limits)
            .with_context(|| format!("opening the log of {id}"))?;
        let (out_r, out_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let (err_r, err_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        rustix::fs::fcntl_setfl(&out_r, rustix::fs::OFlags::NONBLOCK)?;
        rustix::fs::fcntl_setfl(&err_r, rustix::fs::OFlags::NONBLOCK)?;
        // A stale runtime state of the same id (a crash between create and delete).
        remove_runtime_state(&self.dir, id)
            .with_context(|| format!("clearing stale runtime state of {id}"))?;
        let out = helper(&self.dir, &["create", id], Some((&out_w, &err_w)))?;
        drop((out_w, err_w));
        let pid: i32 = out
            .trim()
            .parse()
            .map_err(|_| anyhow!("the runtime helper answered {out:?}, not a pid"))?;
        let p = Pid::from_raw(pid).ok_or_else(|| anyhow!("pid {pid}"))?;
        let pidfd = rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())
            .with_context(|| format!("watching pid {pid}"))?;
        let state = ContainerState {
            id: id.to_string(),
            pid,
            started_at: now_ms(),
            start_ticks: start_ticks(pid).unwrap_or(0),
            exit: None,
        };
        self.save(&state)?;
        self.live.insert(
            id.to_string(),
            Live {
                state,
                pidfd: Some(pidfd),
                pipes: [Some(out_r), Some(err_r)],
                log: Some(log),
                log_failing: false,
                ours: true,
                limits: Some(limits),
            },
        );
        Ok(pid)
    }
}

/// Removes what the runtime made for an exited container: its cgroups (in every
/// hierarchy) and libcontainer's state directory. Done here rather than through
/// libcontainer's delete, which would cost a helper process per removal: once the
/// container's init is gone the kernel has killed its pid namespace, and what is left
/// is empty directories.
fn remove_runtime_state(dir: &Path, id: &str) -> io::Result<()> {
    let mut groups = vec![PathBuf::from("/sys/fs/cgroup/swarmlet").join(id)];
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in entries.flatten() {
            groups.push(e.path().join("swarmlet").join(id));
        }
    }
    for g in groups.iter().filter(|g| g.is_dir()) {
        let mut tries = 0;
        loop {
            match std::fs::remove_dir(g) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                // Processes still dying (or stragglers the namespace's end missed).
                Err(e) if tries < CGROUP_RMDIR_TRIES && e.raw_os_error() == Some(libc::EBUSY) => {
                    if let Ok(procs) = std::fs::read_to_string(g.join("cgroup.procs")) {
                        for p in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                            if let Some(pid) = Pid::from_raw(p) {
                                let _ = rustix::process::kill_process(pid, Signal::KILL);
                            }
                        }
                    }
                    tries += 1;
                    std::thread::sleep(CGROUP_RMDIR_WAIT);
                }
                Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", g.display()))),
            }
        }
    }
    let state = dir.join(RUNTIME_DIR).join(id);
    match std::fs::remove_dir_all(&state) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("{}: {e}", state.display()),
        )),
    }
}

/// How many times the kernel OOM-killed in the container's memory cgroup (v1 or v2).
fn oom_kills(id: &str) -> u64 {
    for (path, key) in [
        (
            format!("/sys/fs/cgroup/memory/swarmlet/{id}/memory.oom_control"),
            "oom_kill ",
        ),
        (
            format!("/sys/fs/cgroup/swarmlet/{id}/memory.events"),
            "oom_kill ",
        ),
    ] {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Some(n) = text
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse().ok())
            {
                return n;
            }
        }
    }
    0
}

/// Runs `swarmlet runtime-helper <args> <dir>`; with `stdio`, the two fds become the
/// helper's fds 3 and 4 (the container's stdout and stderr). Returns its stdout.
fn helper(
    dir: &Path,
    args: &[&str],
    stdio: Option<(&OwnedFd, &OwnedFd)>,
) -> anyhow::Result<String> {
    // The keeper's own build, even if an upgrade replaced the file since it started.
    let mut cmd = super::command(Path::new(super::SELF_EXE));
    cmd.arg("runtime-helper")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some((out, err)) = stdio {
        let (o, e) = (out.as_fd().as_raw_fd(), err.as_fd().as_raw_fd());
        // SAFETY: dup2 is async-signal-safe; the keeper is single-threaded.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(o, 3) < 0 || libc::dup2(e, 4) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let o = cmd.output().context("running the runtime helper")?;
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        let err = err.trim().trim_start_matches("swarmlet: ");
        return Err(anyhow!("{err}"));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zombie_has_no_start_ticks() {
        assert!(start_ticks(std::process::id() as i32).is_some());
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        // Unreaped, the child lingers as a zombie: it must count as dead.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while start_ticks(pid).is_some() {
            assert!(std::time::Instant::now() < deadline, "child never exited");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            std::fs::metadata(format!("/proc/{pid}")).is_ok(),
            "still a zombie"
        );
        child.wait().unwrap();
        assert_eq!(start_ticks(pid), None);
    }
}

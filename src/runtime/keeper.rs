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
//! It is single-threaded (one `poll` loop) and never calls libcontainer itself: that
//! happens in `swarmlet runtime-helper`, a fresh process per operation.
//!
//! If the keeper itself dies, running containers are adopted by the next keeper from
//! their state files, but their pipes are gone (the next write fails) and their exit
//! codes can no longer be observed: they are reported as unknown, never invented.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context};
use rustix::event::{poll, PollFd, PollFlags};
use rustix::process::{Pid, Signal, WaitOptions};
use serde::{Deserialize, Serialize};

use super::logs::{LogLimits, LogWriter, Stream};
use crate::api::{decode, encode, frame_len};

pub const SOCKET: &str = "keeper.sock";
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

/// Sends one request to the keeper at `<dir>/keeper.sock`.
pub fn call(dir: &Path, req: &KeeperRequest, timeout: Duration) -> io::Result<KeeperResponse> {
    let mut s = UnixStream::connect(dir.join(SOCKET))?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(&encode(req))?;
    let mut header = [0u8; 4];
    s.read_exact(&mut header)?;
    let len = frame_len(header).map_err(io::Error::other)?;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    decode(&body).map_err(io::Error::other)
}

/// Makes sure a keeper serves `dir`, starting one from the swarmlet binary `exe` (the
/// daemon gives [`super::SELF_EXE`]) detached, in its own session, so it outlives the
/// caller, if none answers.
pub fn ensure(dir: &Path, exe: &Path) -> anyhow::Result<()> {
    if matches!(
        call(dir, &KeeperRequest::Ping, CLIENT_READ),
        Ok(KeeperResponse::Ok)
    ) {
        return Ok(());
    }
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
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if matches!(
            call(dir, &KeeperRequest::Ping, CLIENT_READ),
            Ok(KeeperResponse::Ok)
        ) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(anyhow!(
                "the keeper did not start; see {}",
                dir.join("keeper.log").display()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
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
}

struct Keeper {
    dir: PathBuf,
    live: BTreeMap<String, Live>,
    /// Clients waiting for an exit: (container, connection, when to give up).
    waiters: Vec<(String, UnixStream, std::time::Instant)>,
}

/// The keeper's main loop (`swarmlet runtime-helper keeper <dir>`).
pub fn run(dir: &Path) -> anyhow::Result<()> {
    if let Ok(level) = std::env::var(crate::logging::LEVEL_ENV) {
        // Set by `ensure` from the daemon's own level; a bad one keeps the default.
        let _ = crate::logging::set_level(&level);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("keeper.lock"))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .map_err(|_| anyhow!("a keeper already serves {}", dir.display()))?;
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .context("becoming a child subreaper")?;
    std::fs::write(
        dir.join("keeper.pid"),
        rustix::process::getpid().as_raw_nonzero().to_string(),
    )?;
    let sock = dir.join(SOCKET);
    let _ = std::fs::remove_file(&sock);
    let listener =
        UnixListener::bind(&sock).with_context(|| format!("binding {}", sock.display()))?;
    std::fs::set_permissions(&sock, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let mut k = Keeper {
        dir: dir.to_path_buf(),
        live: BTreeMap::new(),
        waiters: Vec::new(),
    };
    k.adopt();
    info!(
        "keeper: serving {} ({} containers)",
        dir.display(),
        k.live.len()
    );
    loop {
        k.turn(&listener)?;
    }
}

impl Keeper {
    /// Containers a previous keeper left: still running ones are watched (exit code
    /// unknown: they are not our children); the rest keep their recorded exit.
    fn adopt(&mut self) {
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

    fn turn(&mut self, listener: &UnixListener) -> anyhow::Result<()> {
        // What to watch: the listener, each pidfd, each open pipe.
        enum Src {
            Listener,
            Exit(String),
            Pipe(String, usize),
        }
        let mut srcs = vec![Src::Listener];
        let mut fds = vec![PollFd::new(listener, PollFlags::IN)];
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
                    if let Ok((conn, _)) = listener.accept() {
                        self.serve(conn);
                    }
                }
                Src::Pipe(..) => {}
            }
        }
        self.answer_waiters();
        Ok(())
    }

    /// Answers the waiters whose container has exited or whose time is up.
    fn answer_waiters(&mut self) {
        let now = std::time::Instant::now();
        let mut keep = Vec::new();
        for (id, mut conn, deadline) in std::mem::take(&mut self.waiters) {
            let state = self.live.get(&id).map(|l| l.state.clone());
            let done = state.as_ref().is_none_or(|s| s.exit.is_some());
            if done || now >= deadline {
                let resp = KeeperResponse::States(state.into_iter().collect());
                let _ = conn.write_all(&encode(&resp));
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
        let req = (|| -> anyhow::Result<KeeperRequest> {
            let mut header = [0u8; 4];
            conn.read_exact(&mut header)?;
            let mut body = vec![0u8; frame_len(header)?];
            conn.read_exact(&mut body)?;
            Ok(decode(&body)?)
        })();
        if let Ok(KeeperRequest::Wait { id, timeout_ms }) = &req {
            let deadline = std::time::Instant::now() + Duration::from_millis(*timeout_ms);
            self.waiters.push((id.clone(), conn, deadline));
            self.answer_waiters();
            return;
        }
        let resp = match req {
            Ok(r) => self.handle(r),
            Err(e) => KeeperResponse::Error(format!("bad request: {e}")),
        };
        let _ = conn.write_all(&encode(&resp));
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

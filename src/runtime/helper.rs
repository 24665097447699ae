//! The only code that calls libcontainer, run in a short-lived, single-threaded process
//! (`swarmlet runtime-helper ...`) that the keeper spawns. libcontainer forks with raw
//! `clone3`, skipping libc's fork handling, so calling it from a multi-threaded process
//! can deadlock the child on a lock another thread held (seen with musl's malloc); it
//! also changes the calling process (working directory, dumpable flag). A fresh process
//! per operation keeps all of that away from the daemon and the keeper.
//!
//! `create` builds and starts the container and exits: the container's init was forked
//! with `CLONE_PARENT`, so it becomes an orphan and is re-parented to the keeper, a
//! child subreaper, which then reaps it and records its exit.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use anyhow::Context;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::oci_spec::runtime::Spec;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};

/// Runs in the container's init just before `execve`: undoes what a Rust parent left
/// behind (SIGPIPE ignored, which survives exec) and then execs as runc would.
#[derive(Clone)]
struct Exec;

impl Executor for Exec {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        reset_signals();
        // libcontainer has already set no-new-privileges (if asked) and dropped
        // capabilities; the filter goes on last, just before execve.
        if let Some(profile) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
            let prog = super::seccomp::compile(profile).map_err(ExecutorError::Other)?;
            super::seccomp::install(&prog).map_err(ExecutorError::Other)?;
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}

/// Every signal back to its default disposition, none blocked.
fn reset_signals() {
    // SAFETY: plain libc calls on the only thread of a process that execs right after.
    unsafe {
        for sig in 1..libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Builds the container `id` from `bundle` (its `config.json` and rootfs), with the
/// given fds as its stdout and stderr, starts it and returns its init's pid.
pub fn create(
    root: &Path,
    id: &str,
    bundle: &Path,
    stdout: RawFd,
    stderr: RawFd,
) -> anyhow::Result<i32> {
    // SAFETY: the keeper passed these fds to this process for this purpose alone.
    let (out, err) = unsafe { (OwnedFd::from_raw_fd(stdout), OwnedFd::from_raw_fd(stderr)) };
    let null = OwnedFd::from(std::fs::File::open("/dev/null").context("/dev/null")?);
    let mut c = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .validate_id()
        .context("container id")?
        .with_root_path(root)
        .context("runtime state dir")?
        .with_stdin(null)
        .with_stdout(out)
        .with_stderr(err)
        .with_executor(Exec)
        .as_init(bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .context("creating the container")?;
    let pid = c
        .pid()
        .context("the runtime reported no pid for the container")?
        .as_raw();
    c.start().context("starting the container")?;
    Ok(pid)
}

/// Runs `args` inside the running container `id` (its namespaces, cgroup, root, user
/// unless `user` says otherwise, and seccomp filter), with this process's stdout and
/// stderr, and returns its exit status (128 + signal if killed). After `timeout`
/// the process is killed and the status is 137.
pub fn exec(
    root: &Path,
    id: &str,
    args: Vec<String>,
    env: Vec<String>,
    cwd: Option<String>,
    user: Option<(u32, u32)>,
    timeout: Option<std::time::Duration>,
) -> anyhow::Result<i32> {
    use rustix::process::{waitpid, Pid, Signal, WaitOptions};
    let env = env
        .into_iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv, String::new()),
        })
        .collect();
    let builder = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_root_path(root)
        .context("runtime state dir")?
        .with_executor(Exec)
        .as_tenant()
        .with_container_args(args)
        .with_env(env)
        .with_cwd(cwd)
        .with_detach(true);
    let builder = match user {
        Some((uid, gid)) => builder.with_user(Some(uid)).with_group(Some(gid)),
        None => builder,
    };
    let pid = builder
        .build()
        .context("starting the process in the container")?;
    let pid = Pid::from_raw(pid.as_raw()).context("pid")?;
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    loop {
        let flags = if deadline.is_some() {
            WaitOptions::NOHANG
        } else {
            WaitOptions::empty()
        };
        match waitpid(Some(pid), flags).context("waiting for the process")? {
            Some((_, st)) => {
                if let Some(c) = st.exit_status() {
                    return Ok(c);
                }
                if let Some(s) = st.terminating_signal() {
                    return Ok(128 + s);
                }
            }
            None => {
                if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                    let _ = rustix::process::kill_process(pid, Signal::KILL);
                    let _ = waitpid(Some(pid), WaitOptions::empty());
                    return Ok(137);
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

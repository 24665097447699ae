//! `just demo`: the seed's walk through Swarm mode on a three-node cluster made on this
//! machine (`scenario.rs` says what it does). Needs root.
//!
//! Two processes: this one checks what the demo needs, then runs the scenario in a
//! child (itself again) and waits with SIGINT, SIGTERM and SIGHUP blocked. Whatever
//! ends the child (success, a failed step, Ctrl-C, which also reaches the daemons it
//! started), this one then removes what is left by name: namespaces, processes,
//! containers, mounts and directories. The swarmlet binary is the one cargo built
//! beside this example (`target/<profile>/swarmlet`).

#[path = "../../tests/support/mod.rs"]
mod support;

#[allow(dead_code)] // the transcript's text is for the test
mod scenario;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{bail, Context as _};

/// Set in the child's environment: run the scenario itself.
const CHILD_ENV: &str = "SWARMLET_DEMO_CHILD";

fn main() -> ExitCode {
    if std::env::var_os(CHILD_ENV).is_some() {
        if let Err(e) = signals(Mode::Default) {
            eprintln!("demo: {e:#}");
            return ExitCode::FAILURE;
        }
        std::panic::set_hook(Box::new(|info| {
            let msg = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or("panic");
            let at = info
                .location()
                .map(|l| format!(" ({}:{})", l.file(), l.line()))
                .unwrap_or_default();
            eprintln!("demo: failed: {msg}{at}");
        }));
        scenario::run(&scenario::Options::default());
        return ExitCode::SUCCESS;
    }
    match supervise() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Checks the machine, runs the scenario in a child, and cleans up after it.
fn supervise() -> anyhow::Result<ExitCode> {
    if !support::is_root() {
        bail!("needs root (network namespaces, containers): run it as root");
    }
    for tool in ["ip", "nsenter", "docker-registry"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            bail!("{tool} is missing: run ./bootstrap.sh deps");
        }
    }
    if !std::path::Path::new(support::image::BUSYBOX).is_file() {
        bail!(
            "{} is missing (busybox-static): run ./bootstrap.sh deps",
            support::image::BUSYBOX
        );
    }
    let me = std::env::current_exe().context("cannot find this program's path")?;
    // target/<profile>/examples/demo -> target/<profile>/swarmlet
    let bin_dir: PathBuf = me
        .parent()
        .and_then(|p| p.parent())
        .context("this program is not under target/<profile>/examples")?
        .to_path_buf();
    if !bin_dir.join("swarmlet").is_file() {
        bail!(
            "no swarmlet binary in {}: build it first (cargo build --bin swarmlet)",
            bin_dir.display()
        );
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![bin_dir];
    dirs.extend(std::env::split_paths(&path));
    std::env::set_var("PATH", std::env::join_paths(dirs)?);

    signals(Mode::Blocked)?;
    let mut child = Command::new(&me)
        .env(CHILD_ENV, "1")
        .spawn()
        .context("cannot start the demo's child process")?;
    let pid = child.id();
    let status = child.wait().context("waiting for the demo's child")?;
    let left = scenario::sweep(pid);
    if !left.is_empty() && !status.success() {
        eprintln!("demo: removed what the run left: {}", left.join(", "));
    }
    if status.success() {
        return Ok(ExitCode::SUCCESS);
    }
    use std::os::unix::process::ExitStatusExt as _;
    match status.signal() {
        Some(sig) => bail!("interrupted (signal {sig})"),
        None => bail!("failed ({status})"),
    }
}

/// The signals a user or a terminal sends to stop a program.
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

enum Mode {
    /// This process only waits and cleans up: the signals stay pending until it exits.
    Blocked,
    /// The child (and, inheriting it, every process it starts): default dispositions and
    /// nothing blocked, whatever the parent had (the mask and ignored signals survive
    /// exec; a shell starts background jobs with SIGINT ignored).
    Default,
}

/// Sets how this process takes [`STOP_SIGNALS`].
fn signals(mode: Mode) -> anyhow::Result<()> {
    // SAFETY: sigemptyset and sigaddset fill a sigset_t we own; signal() installs the
    // default disposition (no handler runs); pthread_sigmask changes this thread's mask
    // only, before any other thread exists.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in STOP_SIGNALS {
            libc::sigaddset(&mut set, sig);
            if matches!(mode, Mode::Default) && libc::signal(sig, libc::SIG_DFL) == libc::SIG_ERR {
                bail!(
                    "cannot reset signal {sig}: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
        let how = match mode {
            Mode::Blocked => libc::SIG_BLOCK,
            Mode::Default => libc::SIG_UNBLOCK,
        };
        let rc = libc::pthread_sigmask(how, &set, std::ptr::null_mut());
        if rc != 0 {
            bail!(
                "cannot change the signal mask: {}",
                std::io::Error::from_raw_os_error(rc)
            );
        }
    }
    Ok(())
}

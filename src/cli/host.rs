//! `swarmlet install` / `uninstall`: put this binary and its systemd unit on a host.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context};
use argh::FromArgs;

use super::Global;
use crate::api::{ContainerRequest, Request};

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand, name = "install")]
/// Install this binary and its systemd unit, then start the daemon.
pub struct InstallCommand {
    /// directory the binary is copied to (default /usr/local/bin)
    #[argh(option)]
    pub bin_dir: Option<PathBuf>,

    /// directory the unit file is written to (default /etc/systemd/system)
    #[argh(option)]
    pub unit_dir: Option<PathBuf>,

    /// state directory the daemon is started with (default /var/lib/swarmlet)
    #[argh(option)]
    pub data_dir: Option<PathBuf>,

    /// install and enable, but do not start the daemon
    #[argh(switch)]
    pub no_start: bool,

    /// overwrite an existing binary or unit file
    #[argh(switch)]
    pub force: bool,
}

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand, name = "uninstall")]
/// Stop the daemon and remove its binary and systemd unit.
pub struct UninstallCommand {
    /// directory the binary was installed to (default /usr/local/bin)
    #[argh(option)]
    pub bin_dir: Option<PathBuf>,

    /// directory the unit file was written to (default /etc/systemd/system)
    #[argh(option)]
    pub unit_dir: Option<PathBuf>,

    /// also delete the state directory: node key, raft log, images, containers
    #[argh(switch)]
    pub purge: bool,

    /// state directory removed by --purge (default /var/lib/swarmlet)
    #[argh(option)]
    pub data_dir: Option<PathBuf>,
}

/// The unit file, as shipped in `systemd/swarmlet.service`.
const UNIT: &str = include_str!("../../systemd/swarmlet.service");
const UNIT_NAME: &str = "swarmlet.service";
const DEFAULT_BIN_DIR: &str = "/usr/local/bin";
const DEFAULT_UNIT_DIR: &str = "/etc/systemd/system";

/// The shipped unit with ExecStart pointing at `bin` (and `--data-dir` if not the default).
fn unit_for(bin: &Path, data_dir: Option<&Path>) -> String {
    let mut exec = format!("ExecStart={} daemon", bin.display());
    if let Some(d) = data_dir {
        exec.push_str(&format!(" --data-dir {}", d.display()));
    }
    UNIT.lines()
        .map(|l| {
            if l.starts_with("ExecStart=") {
                exec.clone()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Writes `bytes` to `path` through a temporary file beside it and a rename: an
/// interrupted install leaves the old file or the new one, and a running binary can be
/// replaced.
fn write_replacing(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(".swarmlet-install-{}", std::process::id()));
    let res = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(anyhow::anyhow!("cannot write {}: {e}", path.display()));
    }
    Ok(())
}

/// Whether systemd manages this machine (its runtime directory exists).
fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

fn systemctl(args: &[&str]) -> anyhow::Result<()> {
    let st = Command::new("systemctl")
        .args(args)
        .status()
        .with_context(|| format!("cannot run systemctl {}", args.join(" ")))?;
    if !st.success() {
        bail!("systemctl {} failed ({st})", args.join(" "));
    }
    Ok(())
}

pub fn install(_global: &Global, cmd: InstallCommand) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find this binary")?;
    let bin_dir = cmd.bin_dir.unwrap_or_else(|| DEFAULT_BIN_DIR.into());
    let unit_dir = cmd.unit_dir.unwrap_or_else(|| DEFAULT_UNIT_DIR.into());
    let bin = bin_dir.join("swarmlet");
    let unit_path = unit_dir.join(UNIT_NAME);
    let unit = unit_for(&bin, cmd.data_dir.as_deref());
    let same_binary = std::fs::canonicalize(&bin).ok() == std::fs::canonicalize(&exe).ok();
    // Check both before writing either: nothing half-installed.
    if !cmd.force {
        let read =
            |p: &Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
        if bin.exists() && !same_binary && read(&bin)? != read(&exe)? {
            bail!(
                "{} exists and differs from this binary: --force replaces it",
                bin.display()
            );
        }
        if let Ok(old) = std::fs::read_to_string(&unit_path) {
            if old != unit {
                bail!(
                    "{} exists and differs: --force replaces it",
                    unit_path.display()
                );
            }
        }
    }
    if !same_binary {
        let bytes =
            std::fs::read(&exe).with_context(|| format!("cannot read {}", exe.display()))?;
        write_replacing(&bin, &bytes, 0o755)?;
        println!("installed {}", bin.display());
    }
    write_replacing(&unit_path, unit.as_bytes(), 0o644)?;
    println!("installed {}", unit_path.display());
    if !systemd_running() {
        println!(
            "systemd is not running here: start the daemon with `{} daemon`",
            bin.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    systemctl(&["daemon-reload"])?;
    systemctl(&["enable", UNIT_NAME])?;
    if !cmd.no_start {
        // A restart also picks up a new binary; containers keep running (KillMode=process).
        systemctl(&["restart", UNIT_NAME])?;
        println!("started {UNIT_NAME}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn uninstall(global: &Global, cmd: UninstallCommand) -> anyhow::Result<ExitCode> {
    let bin = cmd
        .bin_dir
        .unwrap_or_else(|| DEFAULT_BIN_DIR.into())
        .join("swarmlet");
    let unit_path = cmd
        .unit_dir
        .unwrap_or_else(|| DEFAULT_UNIT_DIR.into())
        .join(UNIT_NAME);
    let data_dir = cmd
        .data_dir
        .unwrap_or_else(|| super::DEFAULT_DATA_DIR.into());
    if cmd.purge {
        // The containers go first (their root filesystems are mounted under the state
        // directory), through the daemon while it still runs.
        if let Ok(crate::api::Response::Containers(all)) =
            super::call(global, &Request::Container(ContainerRequest::List))
        {
            let ids: Vec<String> = all.into_iter().map(|v| v.record.id).collect();
            if !ids.is_empty() {
                super::call(
                    global,
                    &Request::Container(ContainerRequest::Remove {
                        containers: ids,
                        force: true,
                    }),
                )
                .context("removing the containers before purging")?;
            }
        }
    }
    if systemd_running() && unit_path.exists() {
        systemctl(&["disable", "--now", UNIT_NAME])?;
    }
    for p in [&unit_path, &bin] {
        match std::fs::remove_file(p) {
            Ok(()) => println!("removed {}", p.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => bail!("cannot remove {}: {e}", p.display()),
        }
    }
    if systemd_running() {
        systemctl(&["daemon-reload"])?;
    }
    if cmd.purge {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let prefix = format!("{}/", data_dir.display());
        if let Some(m) = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .find(|m| m.starts_with(&prefix))
        {
            bail!("{m} is still mounted: not purging {}", data_dir.display());
        }
        match std::fs::remove_dir_all(&data_dir) {
            Ok(()) => println!("removed {}", data_dir.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => bail!("cannot remove {}: {e}", data_dir.display()),
        }
    } else if data_dir.exists() {
        println!("kept {} (--purge removes it)", data_dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

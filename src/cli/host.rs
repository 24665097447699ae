//! `swarmlet install` / `uninstall`: put this binary and its systemd unit on a host.

use std::path::PathBuf;
use std::process::ExitCode;

use argh::FromArgs;

use super::{not_implemented, Global};

#[derive(FromArgs, Debug, PartialEq)]
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

pub fn install(_global: &Global, _cmd: InstallCommand) -> anyhow::Result<ExitCode> {
    not_implemented("install")
}

pub fn uninstall(_global: &Global, _cmd: UninstallCommand) -> anyhow::Result<ExitCode> {
    not_implemented("uninstall")
}

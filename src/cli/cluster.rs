//! Node lifecycle: run the daemon, create or join a cluster, manage join tokens, leave.

use std::path::PathBuf;
use std::process::ExitCode;

use argh::{FromArgValue, FromArgs};

use super::{not_implemented, Global};

#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand, name = "daemon")]
/// Run the node daemon (what systemd starts).
pub struct DaemonCommand {
    /// state directory: node key, raft log, images, containers (default /var/lib/swarmlet)
    #[argh(option)]
    pub data_dir: Option<PathBuf>,

    /// log level: error, warn, info, debug or trace (default info)
    #[argh(option)]
    pub log_level: Option<String>,
}

#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand, name = "init")]
/// Create a new cluster with this node as its first manager.
pub struct InitCommand {
    /// address other nodes reach this one at, ADDR[:PORT] or an interface name
    #[argh(option)]
    pub advertise_addr: Option<String>,

    /// address the cluster port listens on (default 0.0.0.0:2377)
    #[argh(option)]
    pub listen_addr: Option<String>,

    /// restart a cluster from this manager's state after quorum is lost
    #[argh(switch)]
    pub force_new_cluster: bool,

    /// how often agents report to their manager, e.g. 5s (default 5s)
    #[argh(option)]
    pub dispatcher_heartbeat: Option<String>,

    /// finished tasks kept per task slot (default 5)
    #[argh(option)]
    pub task_history_limit: Option<u32>,
}

#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand, name = "join")]
/// Join a cluster as a worker or manager, as the token says.
pub struct JoinCommand {
    /// join token printed by `swarmlet join-token worker|manager`
    #[argh(positional)]
    pub token: String,

    /// a manager's cluster address, HOST:PORT (e.g. 192.168.1.10:2377)
    #[argh(positional)]
    pub addr: String,

    /// address other nodes reach this one at, ADDR[:PORT] or an interface name
    #[argh(option)]
    pub advertise_addr: Option<String>,

    /// address the cluster port listens on (default 0.0.0.0:2377)
    #[argh(option)]
    pub listen_addr: Option<String>,
}

/// Which kind of node a join token admits.
#[derive(FromArgValue, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRole {
    Worker,
    Manager,
}

#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand, name = "join-token")]
/// Print or rotate the token that admits workers or managers.
pub struct JoinTokenCommand {
    /// worker or manager
    #[argh(positional)]
    pub role: TokenRole,

    /// replace the token; the old one stops admitting new nodes
    #[argh(switch)]
    pub rotate: bool,

    /// print the token only
    #[argh(switch, short = 'q')]
    pub quiet: bool,
}

#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand, name = "leave")]
/// Leave the cluster.
pub struct LeaveCommand {
    /// leave even if this is a manager and quorum may be lost
    #[argh(switch, short = 'f')]
    pub force: bool,
}

pub fn daemon(_global: &Global, _cmd: DaemonCommand) -> anyhow::Result<ExitCode> {
    not_implemented("daemon")
}

pub fn init(_global: &Global, _cmd: InitCommand) -> anyhow::Result<ExitCode> {
    not_implemented("init")
}

pub fn join(_global: &Global, _cmd: JoinCommand) -> anyhow::Result<ExitCode> {
    not_implemented("join")
}

pub fn join_token(_global: &Global, _cmd: JoinTokenCommand) -> anyhow::Result<ExitCode> {
    not_implemented("join-token")
}

pub fn leave(_global: &Global, _cmd: LeaveCommand) -> anyhow::Result<ExitCode> {
    not_implemented("leave")
}

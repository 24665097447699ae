//! `swarmlet network ...`: overlay networks (VXLAN, one VNI and subnet each).

use std::process::ExitCode;

use argh::FromArgs;

use super::{not_implemented, Global};

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand, name = "network")]
/// Manage overlay networks (managers only).
pub struct NetworkCommand {
    #[argh(subcommand)]
    pub command: NetworkSubcommand,
}

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand)]
pub enum NetworkSubcommand {
    Create(NetworkCreate),
    Ls(NetworkLs),
    Inspect(NetworkInspect),
    Rm(NetworkRm),
}

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand, name = "create")]
/// Create an overlay network.
pub struct NetworkCreate {
    /// network driver; only overlay is supported (default overlay)
    #[argh(option, short = 'd')]
    pub driver: Option<String>,

    /// subnet in CIDR form, e.g. 10.0.9.0/24 (default: from the cluster pool)
    #[argh(option)]
    pub subnet: Option<String>,

    /// gateway address inside the subnet (default: the first address)
    #[argh(option)]
    pub gateway: Option<String>,

    /// sub-range of the subnet to allocate task addresses from, in CIDR form
    #[argh(option)]
    pub ip_range: Option<String>,

    /// driver option, KEY=VALUE, e.g. com.docker.network.driver.mtu=1400 (repeatable)
    #[argh(option, short = 'o')]
    pub opt: Vec<String>,

    /// network label, KEY=VALUE (repeatable)
    #[argh(option)]
    pub label: Vec<String>,

    /// no traffic in or out of the network, only between its tasks
    #[argh(switch)]
    pub internal: bool,

    /// let `swarmlet run` containers attach, not only service tasks
    #[argh(switch)]
    pub attachable: bool,

    /// network name
    #[argh(positional)]
    pub name: String,
}

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand, name = "ls")]
/// List networks.
pub struct NetworkLs {
    /// print network ids only
    #[argh(switch, short = 'q')]
    pub quiet: bool,

    /// filter, KEY=VALUE: id, name, label, driver (repeatable)
    #[argh(option, short = 'f')]
    pub filter: Vec<String>,

    /// do not truncate ids
    #[argh(switch)]
    pub no_trunc: bool,
}

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand, name = "inspect")]
/// Show details of networks.
pub struct NetworkInspect {
    /// network ids or names
    #[argh(positional)]
    pub networks: Vec<String>,
}

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand, name = "rm")]
/// Remove networks no service uses.
pub struct NetworkRm {
    /// network ids or names
    #[argh(positional)]
    pub networks: Vec<String>,
}

pub fn run(_global: &Global, cmd: NetworkCommand) -> anyhow::Result<ExitCode> {
    match cmd.command {
        NetworkSubcommand::Create(_) => not_implemented("network create"),
        NetworkSubcommand::Ls(_) => not_implemented("network ls"),
        NetworkSubcommand::Inspect(_) => not_implemented("network inspect"),
        NetworkSubcommand::Rm(_) => not_implemented("network rm"),
    }
}

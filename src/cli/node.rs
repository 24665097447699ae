//! `swarmlet node ...`: cluster membership as managers see it.

use std::process::ExitCode;

use argh::{FromArgValue, FromArgs};

use super::{not_implemented, Global};

#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand, name = "node")]
/// Manage cluster nodes (managers only).
pub struct NodeCommand {
    #[argh(subcommand)]
    pub command: NodeSubcommand,
}

#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand)]
pub enum NodeSubcommand {
    Ls(NodeLs),
    Inspect(NodeInspect),
    Ps(NodePs),
    Promote(NodePromote),
    Demote(NodeDemote),
    Update(NodeUpdate),
    Rm(NodeRm),
}

#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand, name = "ls")]
/// List nodes.
pub struct NodeLs {
    /// print node ids only
    #[argh(switch, short = 'q')]
    pub quiet: bool,

    /// filter, KEY=VALUE: id, name, label, role, membership (repeatable)
    #[argh(option, short = 'f')]
    pub filter: Vec<String>,
}

#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand, name = "inspect")]
/// Show details of nodes ("self" is this node).
pub struct NodeInspect {
    /// human-readable output instead of JSON
    #[argh(switch)]
    pub pretty: bool,

    /// node ids or names
    #[argh(positional)]
    pub nodes: Vec<String>,
}

#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand, name = "ps")]
/// List the tasks on a node (default: this node).
pub struct NodePs {
    /// filter, KEY=VALUE: name, desired-state (repeatable)
    #[argh(option, short = 'f')]
    pub filter: Vec<String>,

    /// do not map ids to names
    #[argh(switch)]
    pub no_resolve: bool,

    /// node id or name
    #[argh(positional)]
    pub node: Option<String>,
}

#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand, name = "promote")]
/// Make workers managers.
pub struct NodePromote {
    /// node ids or names
    #[argh(positional)]
    pub nodes: Vec<String>,
}

#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand, name = "demote")]
/// Make managers workers.
pub struct NodeDemote {
    /// node ids or names
    #[argh(positional)]
    pub nodes: Vec<String>,
}

/// Whether the scheduler may place tasks on a node.
#[derive(FromArgValue, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// new tasks may be placed here
    Active,
    /// running tasks stay, no new ones
    Pause,
    /// tasks move elsewhere
    Drain,
}

/// A node's role in the cluster.
#[derive(FromArgValue, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Worker,
    Manager,
}

#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand, name = "update")]
/// Change a node's availability, role or labels.
pub struct NodeUpdate {
    /// active, pause or drain
    #[argh(option)]
    pub availability: Option<Availability>,

    /// worker or manager
    #[argh(option)]
    pub role: Option<Role>,

    /// add or replace a label, KEY=VALUE (repeatable)
    #[argh(option)]
    pub label_add: Vec<String>,

    /// remove a label, KEY (repeatable)
    #[argh(option)]
    pub label_rm: Vec<String>,

    /// node id or name
    #[argh(positional)]
    pub node: String,
}

#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand, name = "rm")]
/// Remove nodes from the cluster; their keys are revoked.
pub struct NodeRm {
    /// remove even if the node is still up
    #[argh(switch, short = 'f')]
    pub force: bool,

    /// node ids or names
    #[argh(positional)]
    pub nodes: Vec<String>,
}

pub fn run(_global: &Global, cmd: NodeCommand) -> anyhow::Result<ExitCode> {
    match cmd.command {
        NodeSubcommand::Ls(_) => not_implemented("node ls"),
        NodeSubcommand::Inspect(_) => not_implemented("node inspect"),
        NodeSubcommand::Ps(_) => not_implemented("node ps"),
        NodeSubcommand::Promote(_) => not_implemented("node promote"),
        NodeSubcommand::Demote(_) => not_implemented("node demote"),
        NodeSubcommand::Update(_) => not_implemented("node update"),
        NodeSubcommand::Rm(_) => not_implemented("node rm"),
    }
}

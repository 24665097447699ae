//! `swarmlet node ...`: cluster membership as managers see it.

use std::process::ExitCode;

use argh::{FromArgValue, FromArgs};

use super::filter::{label_matches, Filters};
use super::{call, print_done, Global, UsageError};
use crate::api::{NodeView, Request, Response};
use crate::cluster::{Availability as ClusterAvailability, NodeRole};

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand, name = "node")]
/// Manage cluster nodes (managers only).
pub struct NodeCommand {
    #[argh(subcommand)]
    pub command: NodeSubcommand,
}

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
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
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand, name = "ls")]
/// List nodes.
pub struct NodeLs {
    /// print node ids only
    #[argh(switch, short = 'q')]
    pub quiet: bool,

    /// filter, KEY=VALUE: id, name, label, role, membership (repeatable)
    #[argh(option, short = 'f')]
    pub filter: Vec<String>,

    /// output format: table (default) or json
    #[argh(option)]
    pub format: Option<String>,
}

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
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
#[cfg_attr(test, derive(argh::ArgsInfo))]
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
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand, name = "promote")]
/// Make workers managers.
pub struct NodePromote {
    /// node ids or names
    #[argh(positional)]
    pub nodes: Vec<String>,
}

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
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
#[cfg_attr(test, derive(argh::ArgsInfo))]
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
#[cfg_attr(test, derive(argh::ArgsInfo))]
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

pub fn run(global: &Global, cmd: NodeCommand) -> anyhow::Result<ExitCode> {
    match cmd.command {
        NodeSubcommand::Ls(c) => ls(global, c),
        NodeSubcommand::Inspect(c) => inspect(global, c),
        NodeSubcommand::Ps(c) => {
            super::service_show::node_ps(global, c.node, &c.filter, c.no_resolve)
        }
        NodeSubcommand::Promote(c) => set_role(global, c.nodes, NodeRole::Manager),
        NodeSubcommand::Demote(c) => set_role(global, c.nodes, NodeRole::Worker),
        NodeSubcommand::Update(c) => update(global, c),
        NodeSubcommand::Rm(c) => rm(global, c),
    }
}

fn nodes(global: &Global, req: &Request) -> anyhow::Result<Vec<NodeView>> {
    match call(global, req)? {
        Response::Nodes(n) => Ok(n),
        other => Err(anyhow::anyhow!(
            "unexpected answer from the daemon: {other:?}"
        )),
    }
}

/// Docker's `node ls` filters: `id` and `name` (hostname) a prefix, `label` and
/// `node.label` a node label's key or `key=value`, `role` manager|worker,
/// `membership` accepted|pending (every node listed has been accepted: a join is
/// admitted or refused at once).
fn filter_nodes<'a>(filters: &'a [String]) -> Result<Filters<'a>, UsageError> {
    Filters::parse(
        filters,
        &["id", "name", "label", "node.label", "role", "membership"],
        |k, v| match k {
            "role" if !["manager", "worker"].contains(&v) => Err("manager or worker".into()),
            "membership" if !["accepted", "pending"].contains(&v) => {
                Err("accepted or pending".into())
            }
            _ => Ok(()),
        },
    )
}

fn node_matches(n: &NodeView, key: &str, val: &str) -> bool {
    match key {
        "id" => n.id.to_string().starts_with(val),
        "name" => n.hostname.starts_with(val),
        "role" => role_str(n) == val,
        "membership" => val == "accepted",
        _ => label_matches(n.labels.iter().map(|(k, v)| (k, v)), val),
    }
}

fn ls(global: &Global, c: NodeLs) -> anyhow::Result<ExitCode> {
    let filters = filter_nodes(&c.filter)?;
    let json = match c.format.as_deref() {
        None | Some("table") => false,
        Some("json") => true,
        Some(other) => {
            return Err(
                UsageError(format!("--format: expected table or json, got {other:?}")).into(),
            )
        }
    };
    let mut list = nodes(global, &Request::NodeList)?;
    filters.retain(&mut list, node_matches);
    if c.quiet {
        for n in &list {
            println!("{}", n.id);
        }
    } else if json {
        for n in &list {
            println!("{}", node_json(n));
        }
    } else {
        print!("{}", render_table(&list));
    }
    Ok(ExitCode::SUCCESS)
}

fn inspect(global: &Global, c: NodeInspect) -> anyhow::Result<ExitCode> {
    if c.nodes.is_empty() {
        return Err(UsageError("node inspect: name at least one node (or self)".into()).into());
    }
    let list = nodes(global, &Request::NodeInspect { nodes: c.nodes })?;
    if c.pretty {
        for n in &list {
            println!("ID:\t\t{}\nHostname:\t{}\nAddress:\t{}\nRole:\t\t{}\nStatus:\t\t{}\nAvailability:\t{}", n.id, n.hostname, n.addr, role_str(n), n.status, n.availability);
            if let Some(m) = &n.manager_status {
                println!("Manager Status:\t{m}");
            }
            for (k, v) in &n.labels {
                println!("Label:\t\t{k}={v}");
            }
            println!("Public key:\t{}", n.key);
        }
    } else {
        println!(
            "[{}]",
            list.iter().map(node_json).collect::<Vec<_>>().join(",\n")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn update(global: &Global, c: NodeUpdate) -> anyhow::Result<ExitCode> {
    let label_add = c
        .label_add
        .iter()
        .map(|l| super::cluster::parse_label("--label-add", l))
        .collect::<Result<Vec<_>, _>>()?;
    let availability = c.availability.map(|a| match a {
        Availability::Active => ClusterAvailability::Active,
        Availability::Pause => ClusterAvailability::Pause,
        Availability::Drain => ClusterAvailability::Drain,
    });
    let others = availability.is_some() || !label_add.is_empty() || !c.label_rm.is_empty();
    // What Docker prints: the node as named, or as this cluster answers for it.
    let mut shown = c.node.clone();
    if others {
        match call(
            global,
            &Request::NodeUpdate {
                node: c.node.clone(),
                availability,
                label_add,
                label_rm: c.label_rm,
            },
        )? {
            Response::Done(id) => shown = id,
            other => {
                return Err(anyhow::anyhow!(
                    "unexpected answer from the daemon: {other:?}"
                ))
            }
        }
    }
    if let Some(role) = c.role {
        // Last: a node demoted first could no longer be asked for the rest, were it the
        // one answering. Two steps, so a refusal says what was made.
        let role = match role {
            Role::Manager => NodeRole::Manager,
            Role::Worker => NodeRole::Worker,
        };
        let nodes = vec![c.node];
        if let Err(e) = call(global, &Request::NodeSetRole { nodes, role }) {
            if others {
                return Err(e.context("the other changes were made; the role change was not"));
            }
            return Err(e);
        }
    }
    println!("{shown}");
    Ok(ExitCode::SUCCESS)
}

fn set_role(global: &Global, nodes: Vec<String>, role: NodeRole) -> anyhow::Result<ExitCode> {
    if nodes.is_empty() {
        return Err(UsageError("name at least one node".into()).into());
    }
    print_done(call(global, &Request::NodeSetRole { nodes, role })?)
}

fn rm(global: &Global, c: NodeRm) -> anyhow::Result<ExitCode> {
    if c.nodes.is_empty() {
        return Err(UsageError("node rm: name at least one node".into()).into());
    }
    print_done(call(
        global,
        &Request::NodeRemove {
            nodes: c.nodes,
            force: c.force,
        },
    )?)
}

fn role_str(n: &NodeView) -> &'static str {
    match n.role {
        NodeRole::Manager => "manager",
        NodeRole::Worker => "worker",
    }
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// One node as a JSON object (hand-written: the CLI needs no JSON library for this).
pub fn node_json(n: &NodeView) -> String {
    let labels: Vec<String> = n
        .labels
        .iter()
        .map(|(k, v)| format!("{}:{}", json_str(k), json_str(v)))
        .collect();
    format!(
        "{{\"ID\":{},\"Hostname\":{},\"Address\":{},\"Role\":{},\"Status\":{},\"Availability\":{},\"ManagerStatus\":{},\"Labels\":{{{}}},\"Self\":{},\"PublicKey\":{}}}",
        json_str(&n.id.to_string()),
        json_str(&n.hostname),
        json_str(&n.addr.to_string()),
        json_str(role_str(n)),
        json_str(&n.status.to_string()),
        json_str(&n.availability.to_string()),
        n.manager_status.as_deref().map_or("null".to_string(), json_str),
        labels.join(","),
        n.is_self,
        json_str(&n.key),
    )
}

/// `node ls` as Docker prints it: the local node's id marked with `*`.
pub fn render_table(list: &[NodeView]) -> String {
    let rows: Vec<[String; 5]> = list
        .iter()
        .map(|n| {
            [
                format!("{}{}", n.id, if n.is_self { " *" } else { "" }),
                n.hostname.clone(),
                n.status.to_string(),
                n.availability.to_string(),
                n.manager_status.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let head = ["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS"];
    let mut w = head.map(str::len);
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: &[&str]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<width$}   ", width = w[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(&head);
    for r in &rows {
        out.push_str(&line(&r.each_ref().map(String::as_str)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::NodeStatus;
    use crate::raft::NodeId;

    fn view(id: u64, host: &str, me: bool, ms: Option<&str>) -> NodeView {
        NodeView {
            id: NodeId(id),
            key: "ab".repeat(32),
            hostname: host.into(),
            addr: "10.0.0.1:2377".parse().unwrap(),
            role: if ms.is_some() {
                NodeRole::Manager
            } else {
                NodeRole::Worker
            },
            status: NodeStatus::Ready,
            availability: ClusterAvailability::Active,
            manager_status: ms.map(String::from),
            labels: vec![("zone".into(), "a\"b".into())],
            is_self: me,
        }
    }

    #[test]
    fn table_marks_self_and_aligns() {
        let t = render_table(&[
            view(1, "pi-1", true, Some("Leader")),
            view(0xabc, "worker-long-name", false, None),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("ID"));
        assert!(lines[1].contains("0000000000000001 *") && lines[1].ends_with("Leader"));
        assert_eq!(lines[0].find("HOSTNAME"), lines[1].find("pi-1"));
        assert_eq!(lines[0].find("STATUS"), lines[2].find("Ready"));
    }

    #[test]
    fn json_escapes() {
        let j = node_json(&view(1, "pi", true, None));
        assert!(j.contains(r#""zone":"a\"b""#), "{j}");
        assert!(j.contains(r#""ManagerStatus":null"#));
    }
}

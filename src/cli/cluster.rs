//! Node lifecycle: run the daemon, create or join a cluster, manage join tokens, leave.

use std::path::PathBuf;
use std::process::ExitCode;

use argh::{FromArgValue, FromArgs};

use super::{call, not_implemented, parse_addr, print_done, Global, UsageError};
use crate::api::{Request, Response};
use crate::cluster::token::{JoinToken, TokenRole as ClusterTokenRole};
use crate::daemon::node::DaemonConfig;
use crate::services::ipam::{Ipv4Net, Pools};

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand, name = "daemon")]
/// Run the node daemon (what systemd starts).
pub struct DaemonCommand {
    /// state directory: node key, raft log, images, containers (default /var/lib/swarmlet)
    #[argh(option)]
    pub data_dir: Option<PathBuf>,

    /// log level: error, warn, info, debug or trace (default info)
    #[argh(option)]
    pub log_level: Option<String>,

    /// address the cluster port listens on once in a swarm (default 0.0.0.0:2377)
    #[argh(option)]
    pub listen_addr: Option<String>,

    /// address other nodes reach this one at, IP[:PORT]
    #[argh(option)]
    pub advertise_addr: Option<String>,

    /// node label, KEY=VALUE (repeatable)
    #[argh(option)]
    pub label: Vec<String>,

    /// name shown in `node ls` (default: the system hostname)
    #[argh(option)]
    pub hostname: Option<String>,

    /// registry spoken to over plain HTTP, HOST[:PORT] (repeatable)
    #[argh(option)]
    pub insecure_registry: Vec<String>,

    /// directory of registry CAs, <dir>/<host[:port]>/*.crt (default /etc/swarmlet/certs.d)
    #[argh(option)]
    pub certs_dir: Option<PathBuf>,

    /// the node's registry credentials, a Docker-format config.json read at each pull
    /// (default /etc/swarmlet/config.json)
    #[argh(option)]
    pub registry_auth_file: Option<PathBuf>,

    /// the local bridge that gives tasks a way out (NAT): "none" leaves tasks with
    /// their overlay networks only (default: sw-gw, 172.18.0.1/16)
    #[argh(option)]
    pub bridge: Option<String>,

    /// how long a connection through a service VIP may sit idle before the balancer
    /// forgets it, e.g. 2h (default 120h, conntrack's own; Swarm's IPVS cut them at 15m)
    #[argh(option)]
    pub lb_idle_timeout: Option<String>,
}

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
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

    /// committed Raft entries between snapshots of the cluster state; the log and the
    /// WAL are cut back at each (default 10000)
    #[argh(option)]
    pub snapshot_interval: Option<u64>,

    /// address pool overlay network subnets are cut from, CIDR (repeatable; default
    /// 10.0.0.0/8)
    #[argh(option)]
    pub default_addr_pool: Vec<String>,

    /// prefix length of each subnet cut from the pools (default 24)
    #[argh(option)]
    pub default_addr_pool_mask_length: Option<u8>,
}

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
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
#[cfg_attr(test, derive(argh::ArgsInfo))]
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
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand, name = "leave")]
/// Leave the cluster.
pub struct LeaveCommand {
    /// leave even if this is a manager and quorum may be lost
    #[argh(switch, short = 'f')]
    pub force: bool,
}

/// Parses `KEY=VALUE` for a flag.
pub fn parse_label(flag: &str, s: &str) -> Result<(String, String), UsageError> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(UsageError(format!("{flag}: expected KEY=VALUE, got {s:?}"))),
    }
}

fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

pub fn daemon(global: &Global, cmd: DaemonCommand) -> anyhow::Result<ExitCode> {
    if let Some(l) = &cmd.log_level {
        crate::logging::set_level(l).map_err(|e| UsageError(format!("--log-level: {e}")))?;
    }
    let hostname = cmd.hostname.unwrap_or_else(system_hostname);
    check_hostname(&hostname)?;
    let labels: Vec<(String, String)> = cmd
        .label
        .iter()
        .map(|l| parse_label("--label", l))
        .collect::<Result<_, _>>()?;
    check_labels(&labels)?;
    let bridge = match cmd.bridge.as_deref() {
        None | Some("sw-gw") => true,
        Some("none") => false,
        Some(other) => {
            return Err(UsageError(format!(
                "--bridge: \"none\" or \"sw-gw\" (the default), not {other:?}"
            ))
            .into())
        }
    };
    let lb_tcp_idle = match cmd.lb_idle_timeout.as_deref() {
        None => crate::net::ipvs::DEFAULT_TCP_IDLE,
        Some(s) => {
            let d = super::container::parse_duration("--lb-idle-timeout", s)?;
            // IPVS takes at most INT_MAX jiffies (24 days at 1,000 Hz).
            match u32::try_from(d.as_secs()) {
                Ok(secs @ 1..=2_000_000) => secs,
                _ => {
                    return Err(UsageError(format!(
                        "--lb-idle-timeout: {s:?} is out of range (1s to 23 days)"
                    ))
                    .into())
                }
            }
        }
    };
    let cfg = DaemonConfig {
        bridge,
        lb_tcp_idle,
        data_dir: cmd
            .data_dir
            .unwrap_or_else(|| PathBuf::from(super::DEFAULT_DATA_DIR)),
        socket: global.socket.clone(),
        listen: cmd
            .listen_addr
            .as_deref()
            .map(|a| parse_addr("--listen-addr", a))
            .transpose()?,
        advertise: cmd
            .advertise_addr
            .as_deref()
            .map(|a| parse_addr("--advertise-addr", a))
            .transpose()?,
        hostname,
        labels,
        registry: crate::image::pull::RegistryConfig {
            insecure: cmd
                .insecure_registry
                .iter()
                .map(|r| parse_registry_host("--insecure-registry", r))
                .collect::<Result<_, _>>()?,
            certs_dir: Some(
                cmd.certs_dir
                    .unwrap_or_else(|| PathBuf::from("/etc/swarmlet/certs.d")),
            ),
            auths: Default::default(),
            auth_file: Some(
                cmd.registry_auth_file
                    .unwrap_or_else(|| PathBuf::from("/etc/swarmlet/config.json")),
            ),
        },
    };
    crate::daemon::node::run(cfg)?;
    Ok(ExitCode::SUCCESS)
}

/// The limits the cluster state holds a node's name to, checked before the daemon
/// starts: `init` and `join` would refuse it later, far from the flag.
fn check_hostname(h: &str) -> Result<(), UsageError> {
    use crate::cluster::MAX_HOSTNAME;
    if h.is_empty() || h.len() > MAX_HOSTNAME {
        return Err(UsageError(format!(
            "--hostname: a node name is 1 to {MAX_HOSTNAME} bytes, this one is {}",
            h.len()
        )));
    }
    Ok(())
}

/// See [`check_hostname`]: the cluster's label limits.
fn check_labels(labels: &[(String, String)]) -> Result<(), UsageError> {
    use crate::cluster::{MAX_LABELS, MAX_LABEL_BYTES};
    if labels.len() > MAX_LABELS {
        return Err(UsageError(format!(
            "--label: at most {MAX_LABELS} labels, {} given",
            labels.len()
        )));
    }
    for (k, v) in labels {
        if k.len() > MAX_LABEL_BYTES || v.len() > MAX_LABEL_BYTES {
            let shown: String = k.chars().take(32).collect();
            return Err(UsageError(format!(
                "--label: {shown:?}: keys and values are at most {MAX_LABEL_BYTES} bytes"
            )));
        }
    }
    Ok(())
}

/// A registry host as a reference names it (`host[:port]`, no scheme, no path).
fn parse_registry_host(flag: &str, s: &str) -> Result<String, UsageError> {
    let probe = format!("{s}/x");
    match crate::image::reference::Reference::parse(&probe) {
        Ok(r) if r.domain == s => Ok(s.to_string()),
        _ => Err(UsageError(format!(
            "{flag}: {s:?} is not a registry HOST[:PORT] (no scheme, no path)"
        ))),
    }
}

pub fn init(global: &Global, cmd: InitCommand) -> anyhow::Result<ExitCode> {
    if cmd.force_new_cluster {
        return not_implemented("init --force-new-cluster");
    }
    // Parsed for Docker's grammar, and refused rather than ignored.
    if cmd.dispatcher_heartbeat.is_some() {
        return Err(UsageError(
            "--dispatcher-heartbeat: not used here; nodes are watched by gossip, which finds a dead node in about a second".into(),
        )
        .into());
    }
    if cmd.task_history_limit.is_some() {
        return Err(UsageError(
            "--task-history-limit: not supported yet; 5 finished tasks are kept per slot".into(),
        )
        .into());
    }
    if let Some(n) = cmd.snapshot_interval {
        let range = crate::cluster::MIN_SNAPSHOT_INTERVAL..=crate::cluster::MAX_SNAPSHOT_INTERVAL;
        if !range.contains(&n) {
            return Err(UsageError(format!(
                "--snapshot-interval: {n} is out of range ({} to {})",
                range.start(),
                range.end()
            ))
            .into());
        }
    }
    let listen = cmd
        .listen_addr
        .as_deref()
        .map(|a| parse_addr("--listen-addr", a))
        .transpose()?;
    let advertise = cmd
        .advertise_addr
        .as_deref()
        .map(|a| parse_addr("--advertise-addr", a))
        .transpose()?;
    let pools = init_pools(&cmd)?;
    print_done(call(
        global,
        &Request::Init {
            listen,
            advertise,
            snapshot_interval: cmd.snapshot_interval,
            pools,
        },
    )?)
}

/// `--default-addr-pool` and its mask length, checked; None when neither is given.
fn init_pools(cmd: &InitCommand) -> Result<Option<Pools>, UsageError> {
    if cmd.default_addr_pool.is_empty() && cmd.default_addr_pool_mask_length.is_none() {
        return Ok(None);
    }
    let pools = match cmd.default_addr_pool.is_empty() {
        true => Pools::default().pools,
        false => cmd
            .default_addr_pool
            .iter()
            .map(|p| Ipv4Net::parse(p).map_err(|e| UsageError(format!("--default-addr-pool: {e}"))))
            .collect::<Result<Vec<_>, _>>()?,
    };
    let mask = cmd
        .default_addr_pool_mask_length
        .unwrap_or(Pools::default().subnet_prefix);
    Pools::new(pools, mask).map(Some).map_err(UsageError)
}

pub fn join(global: &Global, cmd: JoinCommand) -> anyhow::Result<ExitCode> {
    JoinToken::parse(&cmd.token).map_err(|e| UsageError(format!("TOKEN: {e}")))?;
    let manager = parse_addr("ADDR", &cmd.addr)?;
    let listen = cmd
        .listen_addr
        .as_deref()
        .map(|a| parse_addr("--listen-addr", a))
        .transpose()?;
    let advertise = cmd
        .advertise_addr
        .as_deref()
        .map(|a| parse_addr("--advertise-addr", a))
        .transpose()?;
    print_done(call(
        global,
        &Request::Join {
            token: cmd.token,
            manager,
            listen,
            advertise,
        },
    )?)
}

pub fn join_token(global: &Global, cmd: JoinTokenCommand) -> anyhow::Result<ExitCode> {
    let role = match cmd.role {
        TokenRole::Worker => ClusterTokenRole::Worker,
        TokenRole::Manager => ClusterTokenRole::Manager,
    };
    if cmd.rotate {
        print_done(call(global, &Request::JoinToken { role, rotate: true })?)?;
    }
    let Response::Token(token) = call(
        global,
        &Request::JoinToken {
            role,
            rotate: false,
        },
    )?
    else {
        return Err(anyhow::anyhow!("unexpected answer from the daemon"));
    };
    if cmd.quiet {
        println!("{token}");
        return Ok(ExitCode::SUCCESS);
    }
    let addr = match call(global, &Request::Info)? {
        Response::Info(i) => i.advertise.map(|a| a.to_string()).unwrap_or_default(),
        _ => String::new(),
    };
    println!("To add a {role} to this swarm, run the following command:\n\n    swarmlet join {token} {addr}\n");
    Ok(ExitCode::SUCCESS)
}

pub fn leave(global: &Global, cmd: LeaveCommand) -> anyhow::Result<ExitCode> {
    print_done(call(global, &Request::Leave { force: cmd.force })?)
}

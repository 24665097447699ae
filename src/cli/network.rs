//! `swarmlet network ...`: overlay networks (VXLAN, one VNI and subnet each).

use std::process::ExitCode;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use argh::FromArgs;
use serde_json::json;

use super::service_show::{rfc3339, short, table};
use super::{call, print_done, Global, UsageError};
use crate::api::{NetworkView, Request, Response};
use crate::services::ipam::{AddressSpace, Ipv4Net};
use crate::services::network::{check_network_name, NetworkSpec};

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

pub fn run(global: &Global, cmd: NetworkCommand) -> anyhow::Result<ExitCode> {
    match cmd.command {
        NetworkSubcommand::Create(c) => create(global, c),
        NetworkSubcommand::Ls(c) => ls(global, c),
        NetworkSubcommand::Inspect(c) => inspect(global, c),
        NetworkSubcommand::Rm(c) => rm(global, c),
    }
}

/// What `network create` asks for, checked as far as the CLI can (the leader checks
/// subnets against the other networks).
fn resolve_create(c: &NetworkCreate) -> Result<NetworkSpec, UsageError> {
    if let Some(d) = c.driver.as_deref() {
        if d != "overlay" {
            return Err(UsageError(format!(
                "--driver: {d:?}: only overlay networks are supported"
            )));
        }
    }
    check_network_name(&c.name).map_err(|e| UsageError(e.to_string()))?;
    let net = |flag: &str, v: &Option<String>| -> Result<Option<Ipv4Net>, UsageError> {
        v.as_deref()
            .map(|s| Ipv4Net::parse(s).map_err(|e| UsageError(format!("{flag}: {e}"))))
            .transpose()
    };
    let subnet = net("--subnet", &c.subnet)?;
    let ip_range = net("--ip-range", &c.ip_range)?;
    let gateway = c
        .gateway
        .as_deref()
        .map(|g| {
            g.parse::<Ipv4Addr>()
                .map_err(|_| UsageError(format!("--gateway: {g:?} is not an IPv4 address")))
        })
        .transpose()?;
    if subnet.is_none() && (gateway.is_some() || ip_range.is_some()) {
        return Err(UsageError("--gateway and --ip-range need --subnet".into()));
    }
    if let Some(s) = subnet {
        // The same checks the leader makes, so a mistake is named before any round trip.
        AddressSpace::new(s, gateway, ip_range).map_err(|e| UsageError(e.to_string()))?;
    }
    let mut options = BTreeMap::new();
    for o in &c.opt {
        let (k, v) = o.split_once('=').unwrap_or((o.as_str(), ""));
        if k.is_empty() {
            return Err(UsageError(format!("--opt: {o:?} has no key")));
        }
        options.insert(k.to_string(), v.to_string());
    }
    let mut labels = BTreeMap::new();
    for l in &c.label {
        let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
        if k.is_empty() {
            return Err(UsageError(format!("--label: {l:?} has no key")));
        }
        labels.insert(k.to_string(), v.to_string());
    }
    Ok(NetworkSpec {
        name: c.name.clone(),
        labels,
        options,
        subnet,
        gateway,
        ip_range,
        internal: c.internal,
        attachable: c.attachable,
        ingress: false,
    })
}

fn create(global: &Global, c: NetworkCreate) -> anyhow::Result<ExitCode> {
    let spec = resolve_create(&c)?;
    print_done(call(global, &Request::NetworkCreate(Box::new(spec)))?)
}

fn networks(global: &Global, names: Option<Vec<String>>) -> anyhow::Result<Vec<NetworkView>> {
    match call(global, &Request::NetworkList(names))? {
        Response::Networks(v) => Ok(v),
        other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
    }
}

/// `-f KEY=VALUE`: the same key OR'd, different keys AND'd (Docker's rule).
fn filter(v: Vec<NetworkView>, filters: &[String]) -> Result<Vec<NetworkView>, UsageError> {
    let mut by_key: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for f in filters {
        let (k, val) = f
            .split_once('=')
            .ok_or_else(|| UsageError(format!("--filter: {f:?} is not KEY=VALUE")))?;
        if !matches!(k, "id" | "name" | "label" | "driver" | "scope") {
            return Err(UsageError(format!(
                "--filter: invalid filter {k:?} (id, name, label, driver, scope)"
            )));
        }
        by_key.entry(k).or_default().push(val);
    }
    Ok(v.into_iter()
        .filter(|n| {
            by_key.iter().all(|(k, vals)| {
                vals.iter().any(|val| match *k {
                    "id" => n.id.to_string().starts_with(val),
                    "name" => n.spec.name.contains(val),
                    "label" => match val.split_once('=') {
                        Some((lk, lv)) => n.spec.labels.get(lk).is_some_and(|x| x == lv),
                        None => n.spec.labels.contains_key(*val),
                    },
                    "driver" => *val == "overlay",
                    _ => *val == "swarm",
                })
            })
        })
        .collect())
}

fn ls(global: &Global, c: NetworkLs) -> anyhow::Result<ExitCode> {
    let mut v = filter(networks(global, None)?, &c.filter)?;
    v.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    if c.quiet {
        for n in &v {
            println!("{}", short(&n.id.to_string(), c.no_trunc));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![["NETWORK ID", "NAME", "DRIVER", "SCOPE"]
        .map(String::from)
        .to_vec()];
    for n in &v {
        rows.push(vec![
            short(&n.id.to_string(), c.no_trunc),
            n.spec.name.clone(),
            "overlay".into(),
            "swarm".into(),
        ]);
    }
    table(&rows);
    Ok(ExitCode::SUCCESS)
}

/// Docker's document for a network, for the fields that exist here.
fn network_json(n: &NetworkView) -> serde_json::Value {
    let mut options = serde_json::Map::new();
    options.insert(
        "com.docker.network.driver.overlay.vxlanid_list".into(),
        json!(n.vni.to_string()),
    );
    for (k, v) in &n.spec.options {
        options.insert(k.clone(), json!(v));
    }
    let mut config = json!({"Subnet": n.subnet, "Gateway": n.gateway.to_string()});
    if n.ip_range != n.subnet {
        config["IPRange"] = json!(n.ip_range);
    }
    json!({
        "Name": n.spec.name,
        "Id": n.id.to_string(),
        "Created": rfc3339(n.created_ms),
        "Scope": "swarm",
        "Driver": "overlay",
        "EnableIPv6": false,
        "IPAM": {"Driver": "default", "Options": null, "Config": [config]},
        "Internal": n.spec.internal,
        "Attachable": n.spec.attachable,
        "Ingress": n.spec.ingress,
        "Options": options,
        "Labels": n.spec.labels,
        "Services": n.services,
        "AddressesInUse": n.used,
        "AddressCapacity": n.capacity,
    })
}

fn inspect(global: &Global, c: NetworkInspect) -> anyhow::Result<ExitCode> {
    if c.networks.is_empty() {
        return Err(UsageError("network inspect: name at least one network".into()).into());
    }
    let docs: Vec<serde_json::Value> = networks(global, Some(c.networks))?
        .iter()
        .map(network_json)
        .collect();
    println!(
        "{}",
        serde_json::to_string_pretty(&docs).expect("invariant: JSON serialises")
    );
    Ok(ExitCode::SUCCESS)
}

fn rm(global: &Global, c: NetworkRm) -> anyhow::Result<ExitCode> {
    if c.networks.is_empty() {
        return Err(UsageError("network rm: name at least one network".into()).into());
    }
    print_done(call(global, &Request::NetworkRemove(c.networks))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create_of(args: &[&str]) -> Result<NetworkSpec, UsageError> {
        let c = NetworkCreate::from_args(&["network", "create"], args).expect("parses");
        resolve_create(&c)
    }

    #[test]
    fn create_takes_docker_flags_and_names_bad_ones() {
        let s = create_of(&[
            "-d",
            "overlay",
            "--subnet",
            "10.0.9.0/24",
            "--gateway",
            "10.0.9.254",
            "--ip-range",
            "10.0.9.128/25",
            "--opt",
            "encrypted",
            "-o",
            "com.docker.network.driver.mtu=1400",
            "--label",
            "env=prod",
            "--attachable",
            "mynet",
        ])
        .unwrap();
        assert_eq!(s.subnet.unwrap().to_string(), "10.0.9.0/24");
        assert_eq!(s.gateway, Some(Ipv4Addr::new(10, 0, 9, 254)));
        assert!(s.encrypted() && s.attachable && !s.internal);
        assert_eq!(s.mtu(), Some(1400));
        for (args, flag) in [
            (&["-d", "bridge", "n"][..], "--driver"),
            (&["--subnet", "10.0.9.1/24", "n"][..], "host bits"),
            (&["--subnet", "10.0.9/24", "n"][..], "--subnet"),
            (&["--gateway", "10.0.9.1", "n"][..], "need --subnet"),
            (
                &["--subnet", "10.0.9.0/24", "--gateway", "10.0.8.1", "n"][..],
                "gateway",
            ),
            (
                &["--subnet", "10.0.9.0/24", "--gateway", "x", "n"][..],
                "--gateway",
            ),
            (
                &["--subnet", "10.0.9.0/24", "--ip-range", "10.1.0.0/24", "n"][..],
                "ip range",
            ),
            (&["-o", "=x", "n"][..], "--opt"),
            (&["bad/name"][..], "invalid network name"),
        ] {
            let e = create_of(args).unwrap_err().0;
            assert!(e.contains(flag), "{args:?}: {e}");
        }
    }
}

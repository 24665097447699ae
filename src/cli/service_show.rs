//! `service ls`, `service ps`, `service inspect` and `node ps`: Docker's columns, JSON
//! keys and inspect document for the fields that exist.

use std::process::ExitCode;

use serde_json::json;

use super::container::ago;
use super::filter::{label_matches, Filters};
use super::service::{ServiceInspect, ServiceLs, ServicePs};
use super::{call, Global, UsageError};
use crate::api::{Request, Response, ServiceView, TaskView};
use crate::model::container::MountKind;
use crate::services::spec::{
    EndpointMode, FailureAction, Mode, PortConfig, PublishMode, RestartCondition, ServiceSpec,
    UpdateConfig, UpdateOrder,
};
use crate::services::task::TaskState;

pub(super) fn short(id: &str, no_trunc: bool) -> String {
    if no_trunc {
        id.to_string()
    } else {
        id.chars().take(12).collect()
    }
}

pub(super) fn table(rows: &[Vec<String>]) {
    let Some(first) = rows.first() else { return };
    let mut w = vec![0; first.len()];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<width$}   ", width = w[i]));
            }
        }
        println!("{}", line.trim_end());
    }
}

fn json_format(format: Option<&str>) -> Result<bool, UsageError> {
    match format {
        None | Some("table") => Ok(false),
        Some("json") | Some("{{json .}}") => Ok(true),
        Some(f) => Err(UsageError(format!("--format: {f:?}: table or json"))),
    }
}

/// Docker's PORTS column: `*:8080->80/tcp`, comma-separated (host mode too).
fn ports_text(s: &ServiceView) -> String {
    s.spec
        .endpoint
        .ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let published = s.published.get(i).copied().unwrap_or(p.published);
            format!("*:{published}->{}/{}", p.target, p.protocol.name())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn mode_text(s: &ServiceView) -> String {
    s.spec.mode.name().to_string()
}

fn replicas_text(s: &ServiceView) -> String {
    match s.spec.mode {
        Mode::ReplicatedJob { .. } | Mode::GlobalJob => {
            format!(
                "{}/{} ({}/{} completed)",
                s.running,
                s.desired.saturating_sub(s.completed),
                s.completed,
                s.desired
            )
        }
        _ => format!("{}/{}", s.running, s.desired),
    }
}

fn services(global: &Global, names: Option<Vec<String>>) -> anyhow::Result<Vec<ServiceView>> {
    match call(global, &Request::ServiceList(names))? {
        Response::Services(v) => Ok(v),
        other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
    }
}

/// `service ls -f`: Docker's keys. `id` and `name` match a prefix, `label` a key or
/// `key=value`, `mode` one of replicated, global, replicated-job, global-job. Filters
/// with the same key are alternatives; different keys must all hold (Docker's).
fn filter_services(
    mut v: Vec<ServiceView>,
    filters: &[String],
) -> Result<Vec<ServiceView>, UsageError> {
    const MODES: [&str; 4] = ["replicated", "global", "replicated-job", "global-job"];
    let f = Filters::parse(filters, &["id", "name", "label", "mode"], |k, val| {
        if k == "mode" && !MODES.contains(&val) {
            return Err("replicated, global, replicated-job or global-job".into());
        }
        Ok(())
    })?;
    f.retain(&mut v, |s, k, val| match k {
        "id" => s.id.to_string().starts_with(val),
        "name" => s.spec.name.starts_with(val),
        "mode" => s.spec.mode.name().replace(' ', "-") == val,
        _ => label_matches(s.spec.labels.iter(), val),
    });
    Ok(v)
}

pub fn ls(global: &Global, c: ServiceLs) -> anyhow::Result<ExitCode> {
    let as_json = json_format(c.format.as_deref())?;
    let mut v = filter_services(services(global, None)?, &c.filter)?;
    v.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    if c.quiet {
        for s in &v {
            println!("{}", s.id);
        }
        return Ok(ExitCode::SUCCESS);
    }
    if as_json {
        for s in &v {
            let o = json!({
                "ID": short(&s.id.to_string(), false),
                "Name": s.spec.name,
                "Mode": mode_text(s),
                "Replicas": replicas_text(s),
                "Image": s.spec.task.image,
                "Ports": ports_text(s),
            });
            println!("{o}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"]
        .map(String::from)
        .to_vec()];
    for s in &v {
        rows.push(vec![
            short(&s.id.to_string(), false),
            s.spec.name.clone(),
            mode_text(s),
            replicas_text(s),
            s.spec.task.image.clone(),
            ports_text(s),
        ]);
    }
    table(&rows);
    Ok(ExitCode::SUCCESS)
}

/// Docker's task name: `web.2`, or `web.<node id>` for a global service's task.
fn task_name(t: &TaskView) -> String {
    match (t.slot, t.node_id) {
        (0, Some(n)) => format!("{}.{}", t.service, n),
        (s, _) => format!("{}.{}", t.service, s),
    }
}

fn cap(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

/// `CURRENT STATE`: never Running for a task whose node is Down (Docker shows the last
/// report as if it were now, moby#45922).
fn current_state(t: &TaskView) -> String {
    if t.node_down && !t.state.is_terminal() {
        return format!("Unknown {} ago", ago(t.state_ms));
    }
    format!("{} {} ago", cap(t.state.name()), ago(t.state_ms))
}

fn task_error(t: &TaskView, no_trunc: bool) -> String {
    let e = if t.node_down && !t.state.is_terminal() {
        format!("node {} is down", t.node.as_deref().unwrap_or("?"))
    } else if !t.error.is_empty() {
        t.error.clone()
    } else if t.state == TaskState::Pending {
        t.message.clone()
    } else {
        String::new()
    };
    if no_trunc || e.chars().count() <= 30 {
        e
    } else {
        format!("\"{}…\"", e.chars().take(29).collect::<String>())
    }
}

/// The slot a task fills: its number for a replicated task, its node for a global one
/// (slot 0). A replica replaced on another node stays in its slot's history.
fn slot_key(t: &TaskView) -> (&str, u64, Option<crate::raft::NodeId>) {
    let node = if t.slot == 0 { t.node_id } else { None };
    (&t.service, t.slot, node)
}

/// Tasks in Docker's order: by service and slot, the newest first within a slot.
fn ordered(mut v: Vec<TaskView>) -> Vec<TaskView> {
    v.sort_by(|a, b| {
        slot_key(a)
            .cmp(&slot_key(b))
            .then(b.created_ms.cmp(&a.created_ms))
    });
    v
}

fn print_tasks(v: Vec<TaskView>, no_trunc: bool, quiet: bool, as_json: bool) {
    let v = ordered(v);
    if quiet {
        for t in &v {
            println!("{}", t.id);
        }
        return;
    }
    if as_json {
        for t in &v {
            let o = json!({
                "ID": short(&t.id.to_string(), no_trunc),
                "Name": task_name(t),
                "Image": t.image,
                "Node": t.node.clone().unwrap_or_default(),
                "DesiredState": cap(t.desired.name()),
                "CurrentState": current_state(t),
                "Error": task_error(t, true),
                "Ports": "",
            });
            println!("{o}");
        }
        return;
    }
    let mut rows = vec![[
        "ID",
        "NAME",
        "IMAGE",
        "NODE",
        "DESIRED STATE",
        "CURRENT STATE",
        "ERROR",
        "PORTS",
    ]
    .map(String::from)
    .to_vec()];
    let mut prev = None;
    for t in &v {
        let key = slot_key(t);
        let name = if prev == Some(key) {
            format!(" \\_ {}", task_name(t))
        } else {
            task_name(t)
        };
        prev = Some(key);
        rows.push(vec![
            short(&t.id.to_string(), no_trunc),
            name,
            t.image.clone(),
            t.node.clone().unwrap_or_default(),
            cap(t.desired.name()),
            current_state(t),
            task_error(t, no_trunc),
            String::new(),
        ]);
    }
    table(&rows);
}

/// `-f desired-state=running` and the like.
fn filter_tasks(v: Vec<TaskView>, filters: &[String]) -> Result<Vec<TaskView>, UsageError> {
    let mut v = v;
    for f in filters {
        let (k, val) = f
            .split_once('=')
            .ok_or_else(|| UsageError(format!("--filter: {f:?} is not KEY=VALUE")))?;
        match k {
            "desired-state" => {
                let st = TaskState::parse(val)
                    .filter(|s| {
                        matches!(
                            s,
                            TaskState::Running
                                | TaskState::Shutdown
                                | TaskState::Accepted
                                | TaskState::Ready
                        )
                    })
                    .ok_or_else(|| {
                        UsageError(format!(
                            "--filter: desired-state {val:?}: running, shutdown, ready or accepted"
                        ))
                    })?;
                v.retain(|t| {
                    t.desired == st || (st == TaskState::Shutdown && t.desired > TaskState::Running)
                });
            }
            "node" => v.retain(|t| {
                t.node.as_deref() == Some(val)
                    || t.node_id.is_some_and(|n| n.to_string().starts_with(val))
            }),
            "id" => v.retain(|t| t.id.to_string().starts_with(val)),
            "name" => v.retain(|t| task_name(t).starts_with(val)),
            _ => {
                return Err(UsageError(format!(
                    "--filter: unknown key {k:?} (id, name, node, desired-state)"
                )))
            }
        }
    }
    Ok(v)
}

fn tasks(
    global: &Global,
    services: Vec<String>,
    node: Option<String>,
) -> anyhow::Result<Vec<TaskView>> {
    match call(global, &Request::TaskList { services, node })? {
        Response::Tasks(v) => Ok(v),
        other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
    }
}

pub fn ps(global: &Global, c: ServicePs) -> anyhow::Result<ExitCode> {
    if c.services.is_empty() {
        return Err(UsageError("service ps: name at least one service".into()).into());
    }
    let as_json = json_format(c.format.as_deref())?;
    let mut v = filter_tasks(tasks(global, c.services, None)?, &c.filter)?;
    if c.no_resolve {
        unresolve(&mut v);
    }
    print_tasks(v, c.no_trunc, c.quiet, as_json);
    Ok(ExitCode::SUCCESS)
}

/// `--no-resolve`: services and nodes by id, not by name.
fn unresolve(v: &mut [TaskView]) {
    for t in v {
        t.service = t.service_id.to_string();
        t.node = t.node_id.map(|n| n.to_string());
    }
}

/// `node ps [NODE]` (this node when none is named).
pub fn node_ps(
    global: &Global,
    node: Option<String>,
    filter: &[String],
    no_resolve: bool,
) -> anyhow::Result<ExitCode> {
    let node = node.unwrap_or_else(|| "self".into());
    let mut v = filter_tasks(tasks(global, vec![], Some(node))?, filter)?;
    if no_resolve {
        unresolve(&mut v);
    }
    print_tasks(v, false, false, false);
    Ok(ExitCode::SUCCESS)
}

pub(super) fn rfc3339(ms: u64) -> String {
    crate::runtime::logs::rfc3339_nanos(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
    )
}

fn update_json(u: &UpdateConfig) -> serde_json::Value {
    json!({
        "Parallelism": u.parallelism,
        "Delay": u.delay_ms * 1_000_000,
        "FailureAction": match u.failure_action {
            FailureAction::Pause => "pause",
            FailureAction::Continue => "continue",
            FailureAction::Rollback => "rollback",
        },
        "Monitor": u.monitor_ms * 1_000_000,
        "MaxFailureRatio": f64::from(u.max_failure_ppm) / 1e6,
        "Order": match u.order {
            UpdateOrder::StopFirst => "stop-first",
            UpdateOrder::StartFirst => "start-first",
        },
    })
}

/// Docker's `Healthcheck`: `Test` is `["NONE"]` for `--no-healthcheck`, `["CMD-SHELL",
/// cmd]` for `--health-cmd`; durations in nanoseconds. Null when the image decides.
fn health_json(h: &crate::model::health::HealthFlags) -> serde_json::Value {
    let test = match (&h.cmd, h.disable) {
        (_, true) => Some(vec!["NONE".to_string()]),
        (Some(c), false) => Some(vec!["CMD-SHELL".to_string(), c.clone()]),
        (None, false) => None,
    };
    let ns =
        |d: Option<std::time::Duration>| d.map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    if test.is_none()
        && h.interval.is_none()
        && h.timeout.is_none()
        && h.retries.is_none()
        && h.start_period.is_none()
    {
        return serde_json::Value::Null;
    }
    json!({
        "Test": test,
        "Interval": ns(h.interval),
        "Timeout": ns(h.timeout),
        "StartPeriod": ns(h.start_period),
        "Retries": h.retries,
    })
}

/// Docker's endpoint spec; with `published`, the ports as the cluster published them.
fn endpoint_json(
    mode: &EndpointMode,
    ports: &[PortConfig],
    published: Option<&[u16]>,
) -> serde_json::Value {
    let ports: Vec<serde_json::Value> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let pub_port = published
                .and_then(|v| v.get(i).copied())
                .unwrap_or(p.published);
            let mut o = json!({
                "Protocol": p.protocol.name(),
                "TargetPort": p.target,
                "PublishMode": match p.mode {
                    PublishMode::Ingress => "ingress",
                    PublishMode::Host => "host",
                },
            });
            if pub_port != 0 {
                o["PublishedPort"] = json!(pub_port);
            }
            o
        })
        .collect();
    json!({
        "Mode": match mode {
            EndpointMode::Vip => "vip",
            EndpointMode::Dnsrr => "dnsrr",
        },
        "Ports": ports,
    })
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // CPUs: 0.01..4096, checked at create
fn spec_json(s: &ServiceSpec) -> serde_json::Value {
    let t = &s.task;
    let c = &t.container;
    let mode = match s.mode {
        Mode::Replicated { replicas } => json!({"Replicated": {"Replicas": replicas}}),
        Mode::Global => json!({"Global": {}}),
        Mode::ReplicatedJob {
            max_concurrent,
            total,
        } => {
            json!({"ReplicatedJob": {"MaxConcurrent": max_concurrent, "TotalCompletions": total}})
        }
        Mode::GlobalJob => json!({"GlobalJob": {}}),
    };
    json!({
        "Name": s.name,
        "Labels": s.labels,
        "TaskTemplate": {
            "ContainerSpec": {
                "Image": t.image,
                "Args": c.cmd,
                "Env": c.env,
                "Labels": c.labels,
                "Dir": c.workdir,
                "User": c.user,
                "Hostname": c.hostname,
                "Command": c.entrypoint,
                "Mounts": c.mounts.iter().map(|m| json!({
                    "Type": match m.kind {
                        MountKind::Bind => "bind",
                        MountKind::Volume => "volume",
                        MountKind::Tmpfs => "tmpfs",
                    },
                    "Source": m.source,
                    "Target": m.target,
                    "ReadOnly": m.readonly,
                })).collect::<Vec<_>>(),
                "Healthcheck": health_json(&t.health),
                "CapabilityAdd": c.cap_add,
                "CapabilityDrop": c.cap_drop,
                "Devices": c.devices.iter().map(|d| json!({
                    "PathOnHost": d.host,
                    "PathInContainer": d.container,
                    "CgroupPermissions": d.access,
                })).collect::<Vec<_>>(),
                "StopSignal": t.stop_signal,
                "StopGracePeriod": t.stop_grace_ms * 1_000_000,
            },
            "Resources": {
                "Limits": {"NanoCPUs": c.cpus.map(|x| (x * 1e9).round() as u64), "MemoryBytes": c.memory, "Pids": c.pids_limit},
                "Reservations": {"NanoCPUs": t.reserve.nano_cpus, "MemoryBytes": t.reserve.memory},
            },
            "RestartPolicy": {
                "Condition": match t.restart.condition {
                    RestartCondition::None => "none",
                    RestartCondition::OnFailure => "on-failure",
                    RestartCondition::Any => "any",
                },
                "Delay": t.restart.delay_ms * 1_000_000,
                "MaxAttempts": t.restart.max_attempts,
                "Window": t.restart.window_ms * 1_000_000,
            },
            "Placement": {
                "Constraints": t.placement.constraints.iter().map(|k| k.to_string()).collect::<Vec<_>>(),
                "MaxReplicas": t.placement.max_replicas,
                "Preferences": t.placement.spread.iter().map(|l| json!({"Spread": {"SpreadDescriptor": l}})).collect::<Vec<_>>(),
            },
            "ForceUpdate": t.force_update,
            "Networks": t.networks.iter().map(|n| json!({"Target": n})).collect::<Vec<_>>(),
        },
        "EndpointSpec": endpoint_json(&s.endpoint.mode, &s.endpoint.ports, None),
        "Mode": mode,
        "UpdateConfig": update_json(&s.update),
        "RollbackConfig": update_json(&s.rollback),
    })
}

/// A duration as Go prints one (Docker's `--pretty` does): `0s`, `500ms`, `1.5s`,
/// `1m30s`, `2h0m0s`.
fn go_duration(ms: u64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    let secs = match ms % 1_000 {
        0 => format!("{}s", ms / 1_000 % 60),
        frac => {
            let f = format!("{frac:03}");
            format!("{}.{}s", ms / 1_000 % 60, f.trim_end_matches('0'))
        }
    };
    match (ms / 3_600_000, ms / 60_000 % 60) {
        (0, 0) => secs,
        (0, m) => format!("{m}m{secs}"),
        (h, m) => format!("{h}h{m}m{secs}"),
    }
}

/// `service inspect --pretty`: Docker's layout, for the fields that exist.
fn pretty(s: &ServiceView) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let spec = &s.spec;
    let t = &spec.task;
    let _ = writeln!(o, "\nID:\t\t{}\nName:\t\t{}", s.id, spec.name);
    if !spec.labels.is_empty() {
        let _ = writeln!(o, "Labels:");
        for (k, v) in &spec.labels {
            let _ = writeln!(o, " {k}={v}");
        }
    }
    match spec.mode {
        Mode::Replicated { replicas } => {
            let _ = writeln!(o, "Service Mode:\tReplicated\n Replicas:\t{replicas}");
        }
        _ => {
            let _ = writeln!(o, "Service Mode:\t{}", cap(spec.mode.name()));
        }
    }
    if let Some(u) = &s.update {
        let _ = writeln!(
            o,
            "UpdateStatus:\n State:\t\t{}\n Started:\t{}",
            u.state.name(),
            ago(u.started_ms)
        );
        if let Some(done) = u.completed_ms {
            let _ = writeln!(o, " Completed:\t{}", ago(done));
        }
        let _ = writeln!(o, " Message:\t{}", u.message);
    }
    let p = &t.placement;
    if !p.constraints.is_empty() || !p.spread.is_empty() || p.max_replicas > 0 {
        let _ = writeln!(o, "Placement:");
        if !p.constraints.is_empty() {
            let cs: Vec<String> = p.constraints.iter().map(|k| k.to_string()).collect();
            let _ = writeln!(o, " Constraints:\t[{}]", cs.join(" "));
        }
        if !p.spread.is_empty() {
            let _ = writeln!(o, " Preferences:\t[spread={}]", p.spread.join(" spread="));
        }
        if p.max_replicas > 0 {
            let _ = writeln!(o, " Max Replicas Per Node:\t{}", p.max_replicas);
        }
    }
    for (title, u) in [
        ("UpdateConfig", &spec.update),
        ("RollbackConfig", &spec.rollback),
    ] {
        let _ = writeln!(o, "{title}:\n Parallelism:\t{}", u.parallelism);
        if u.delay_ms > 0 {
            let _ = writeln!(o, " Delay:\t\t{}", go_duration(u.delay_ms));
        }
        let _ = writeln!(
            o,
            " On failure:\t{}\n Monitoring Period: {}\n Max failure ratio: {}\n {} order:\t{}",
            match u.failure_action {
                FailureAction::Pause => "pause",
                FailureAction::Continue => "continue",
                FailureAction::Rollback => "rollback",
            },
            go_duration(u.monitor_ms),
            f64::from(u.max_failure_ppm) / 1e6,
            if title == "UpdateConfig" {
                "Update"
            } else {
                "Rollback"
            },
            match u.order {
                UpdateOrder::StopFirst => "stop-first",
                UpdateOrder::StartFirst => "start-first",
            }
        );
    }
    let c = &t.container;
    let _ = writeln!(o, "ContainerSpec:\n Image:\t\t{}", t.image);
    if !c.cmd.is_empty() {
        let _ = writeln!(o, " Args:\t\t{}", c.cmd.join(" "));
    }
    if !c.env.is_empty() {
        let _ = writeln!(o, " Env:\t\t{}", c.env.join(" "));
    }
    if let Some(d) = &c.workdir {
        let _ = writeln!(o, " Dir:\t\t{d}");
    }
    if let Some(u) = &c.user {
        let _ = writeln!(o, " User:\t\t{u}");
    }
    let _ = writeln!(
        o,
        " Init:\t\tfalse\n Stop grace period:\t{}",
        go_duration(t.stop_grace_ms)
    );
    if !c.mounts.is_empty() {
        let _ = writeln!(o, "Mounts:");
        for m in &c.mounts {
            let _ = writeln!(
                o,
                " Target:\t{}\n  Source:\t{}\n  ReadOnly:\t{}",
                m.target, m.source, m.readonly
            );
        }
    }
    let r = &t.restart;
    let _ = writeln!(
        o,
        "RestartPolicy:\n Condition:\t{}\n Delay:\t\t{}\n Max attempts:\t{}",
        match r.condition {
            RestartCondition::None => "none",
            RestartCondition::OnFailure => "on-failure",
            RestartCondition::Any => "any",
        },
        go_duration(r.delay_ms),
        r.max_attempts
    );
    o
}

pub fn inspect(global: &Global, c: ServiceInspect) -> anyhow::Result<ExitCode> {
    if c.services.is_empty() {
        return Err(UsageError("service inspect: name at least one service".into()).into());
    }
    let v = services(global, Some(c.services))?;
    if c.pretty {
        for s in &v {
            print!("{}", pretty(s));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let docs: Vec<serde_json::Value> = v
        .iter()
        .map(|s| {
            let mut d = json!({
                "ID": s.id.to_string(),
                "Version": {"Index": s.version},
                "CreatedAt": rfc3339(s.created_ms),
                "UpdatedAt": rfc3339(s.updated_ms),
                "Spec": spec_json(&s.spec),
            });
            if let Some(p) = &s.previous {
                d["PreviousSpec"] = spec_json(p);
            }
            let mut ep = endpoint_json(&s.spec.endpoint.mode, &s.spec.endpoint.ports, Some(&s.published));
            ep["Spec"] = endpoint_json(&s.spec.endpoint.mode, &s.spec.endpoint.ports, None);
            ep["VirtualIPs"] = s
                .vips
                .iter()
                .map(|(id, _, ip, prefix)| json!({"NetworkID": id.to_string(), "Addr": format!("{ip}/{prefix}")}))
                .collect::<Vec<_>>()
                .into();
            d["Endpoint"] = ep;
            if let Some(u) = &s.update {
                d["UpdateStatus"] = json!({
                    "State": u.state.name(),
                    "StartedAt": rfc3339(u.started_ms),
                    "CompletedAt": u.completed_ms.map(rfc3339),
                    "Message": u.message,
                });
            }
            d
        })
        .collect();
    println!(
        "{}",
        serde_json::to_string_pretty(&docs).expect("invariant: JSON serialises")
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::NodeId;
    use crate::services::store::TaskId;
    use crate::services::ServiceId;

    fn task(id: u64, slot: u64, node: u64, created_ms: u64) -> TaskView {
        TaskView {
            id: TaskId(id),
            service_id: ServiceId(1),
            service: "web".into(),
            slot,
            node_id: Some(NodeId(node)),
            node: Some(format!("n{node}")),
            node_down: false,
            image: "bb:1".into(),
            version: 1,
            desired: TaskState::Running,
            state: TaskState::Running,
            message: String::new(),
            error: String::new(),
            created_ms,
            state_ms: created_ms,
        }
    }

    #[test]
    fn ls_filters_like_docker() {
        let svc = |id: u64, name: &str, mode: Mode, label: Option<(&str, &str)>| {
            let mut spec = ServiceSpec::new(name, "busybox");
            spec.mode = mode;
            if let Some((k, v)) = label {
                spec.labels.insert(k.into(), v.into());
            }
            ServiceView {
                id: ServiceId(id),
                spec,
                previous: None,
                version: 1,
                created_ms: 0,
                updated_ms: 0,
                update: None,
                running: 0,
                desired: 0,
                completed: 0,
                vips: Vec::new(),
                published: Vec::new(),
            }
        };
        let all = vec![
            svc(
                1,
                "web",
                Mode::Replicated { replicas: 1 },
                Some(("tier", "front")),
            ),
            svc(2, "db", Mode::Global, Some(("tier", "back"))),
            svc(3, "batch", Mode::GlobalJob, None),
        ];
        let names = |f: &[&str]| -> Vec<String> {
            let f: Vec<String> = f.iter().map(|x| x.to_string()).collect();
            filter_services(all.clone(), &f)
                .unwrap()
                .into_iter()
                .map(|s| s.spec.name)
                .collect()
        };
        assert_eq!(names(&["name=w", "name=d"]), ["web", "db"]);
        assert_eq!(names(&["name=w", "label=tier"]), ["web"]);
        assert_eq!(names(&["label=tier=back"]), ["db"]);
        assert_eq!(names(&["mode=global-job"]), ["batch"]);
        let bad = |f: &str| {
            filter_services(all.clone(), &[f.to_string()])
                .unwrap_err()
                .0
        };
        assert!(bad("mode=job").contains("mode \"job\""));
        assert!(bad("colour=red").contains("unknown key"));
    }

    #[test]
    fn durations_print_as_go_does() {
        for (ms, want) in [
            (0, "0s"),
            (500, "500ms"),
            (1_500, "1.5s"),
            (10_000, "10s"),
            (90_000, "1m30s"),
            (7_200_000, "2h0m0s"),
        ] {
            assert_eq!(go_duration(ms), want);
        }
    }

    #[test]
    fn a_replica_moved_to_another_node_stays_in_its_slot() {
        // Slot 1 ran on node 2, then on node 3 after node 2 died; slot 2 on node 1.
        let v = ordered(vec![
            task(10, 1, 2, 100),
            task(11, 2, 1, 100),
            task(12, 1, 3, 200),
        ]);
        let ids: Vec<u64> = v.iter().map(|t| t.id.0).collect();
        assert_eq!(ids, [12, 10, 11], "slot 1 newest first, then slot 2");
    }

    #[test]
    fn a_global_service_has_a_slot_per_node() {
        let v = ordered(vec![
            task(10, 0, 2, 100),
            task(11, 0, 1, 100),
            task(12, 0, 2, 200),
        ]);
        let ids: Vec<u64> = v.iter().map(|t| t.id.0).collect();
        assert_eq!(ids, [11, 12, 10]);
    }
}

//! `service ls`, `service ps`, `service inspect` and `node ps`: Docker's columns, JSON
//! keys and inspect document for the fields that exist.

use std::process::ExitCode;

use serde_json::json;

use super::container::ago;
use super::service::{ServiceInspect, ServiceLs, ServicePs};
use super::{call, Global, UsageError};
use crate::api::{Request, Response, ServiceView, TaskView};
use crate::services::spec::{
    FailureAction, Mode, RestartCondition, ServiceSpec, UpdateConfig, UpdateOrder,
};
use crate::services::task::TaskState;

fn short(id: &str, no_trunc: bool) -> String {
    if no_trunc {
        id.to_string()
    } else {
        id.chars().take(12).collect()
    }
}

fn table(rows: &[Vec<String>]) {
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

pub fn ls(global: &Global, c: ServiceLs) -> anyhow::Result<ExitCode> {
    if !c.filter.is_empty() {
        return Err(UsageError("--filter: not supported yet".into()).into());
    }
    let as_json = json_format(c.format.as_deref())?;
    let mut v = services(global, None)?;
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
                "Ports": "",
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
            String::new(),
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

/// The tasks one `service ps` group holds, newest first, the older under `\_` (as
/// Docker groups them by task name): a replicated slot's, whichever nodes they ran on,
/// or a global service's tasks on one node (slot 0).
fn group(t: &TaskView) -> (&str, u64, Option<crate::raft::NodeId>) {
    let node = if t.slot == 0 { t.node_id } else { None };
    (&t.service, t.slot, node)
}

/// Tasks in Docker's order: by service and group, the newest first within a group.
fn ordered(mut v: Vec<TaskView>) -> Vec<TaskView> {
    v.sort_by(|a, b| {
        group(a)
            .cmp(&group(b))
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
        let key = group(t);
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
    let v = filter_tasks(tasks(global, c.services, None)?, &c.filter)?;
    print_tasks(v, c.no_trunc, c.quiet, as_json);
    Ok(ExitCode::SUCCESS)
}

/// `node ps [NODE]` (this node when none is named).
pub fn node_ps(
    global: &Global,
    node: Option<String>,
    filter: &[String],
) -> anyhow::Result<ExitCode> {
    let node = node.unwrap_or_else(|| "self".into());
    let v = filter_tasks(tasks(global, vec![], Some(node))?, filter)?;
    print_tasks(v, false, false, false);
    Ok(ExitCode::SUCCESS)
}

fn rfc3339(ms: u64) -> String {
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
            },
            "ForceUpdate": t.force_update,
        },
        "Mode": mode,
        "UpdateConfig": update_json(&s.update),
        "RollbackConfig": update_json(&s.rollback),
    })
}

pub fn inspect(global: &Global, c: ServiceInspect) -> anyhow::Result<ExitCode> {
    if c.services.is_empty() {
        return Err(UsageError("service inspect: name at least one service".into()).into());
    }
    let v = services(global, Some(c.services))?;
    if c.pretty {
        for s in &v {
            println!("ID:\t\t{}", s.id);
            println!("Name:\t\t{}", s.spec.name);
            match s.spec.mode {
                Mode::Replicated { replicas } => {
                    println!("Service Mode:\tReplicated\n Replicas:\t{replicas}")
                }
                _ => println!("Service Mode:\t{}", cap(s.spec.mode.name())),
            }
            if let Some(u) = &s.update {
                println!(
                    "UpdateStatus:\n State:\t\t{}\n Message:\t{}",
                    u.state.name(),
                    u.message
                );
            }
            let cs = &s.spec.task.placement.constraints;
            if !cs.is_empty() {
                println!(
                    "Placement:\n Constraints:\t[{}]",
                    cs.iter()
                        .map(|k| k.to_string())
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            }
            let u = &s.spec.update;
            println!("UpdateConfig:\n Parallelism:\t{}\n Delay:\t\t{}ms\n On failure:\t{:?}\n Monitor:\t{}ms", u.parallelism, u.delay_ms, u.failure_action, u.monitor_ms);
            println!("ContainerSpec:\n Image:\t\t{}", s.spec.task.image);
            if !s.spec.task.container.cmd.is_empty() {
                println!(" Args:\t\t{}", s.spec.task.container.cmd.join(" "));
            }
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
            image: "img".into(),
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
    fn a_slot_is_one_group_whichever_nodes_its_tasks_ran_on() {
        // Slot 1 ran on node 3, then (node 3 cut off) on node 1, then (an update) on 2.
        let v = vec![
            task(10, 1, 3, 100),
            task(11, 1, 1, 200),
            task(12, 1, 2, 300),
        ];
        let ids: Vec<u64> = ordered(v).iter().map(|t| t.id.0).collect();
        assert_eq!(ids, [12, 11, 10]);
        let (a, b) = (task(10, 1, 3, 100), task(11, 1, 1, 200));
        assert_eq!(group(&a), group(&b), "one `\\_` group");
    }

    #[test]
    fn a_global_service_groups_by_node() {
        let v = vec![
            task(10, 0, 2, 100),
            task(11, 0, 1, 200),
            task(12, 0, 2, 300),
        ];
        let ids: Vec<u64> = ordered(v).iter().map(|t| t.id.0).collect();
        assert_eq!(ids, [11, 12, 10]);
    }
}

//! `service create`, `update`, `scale`, `rollback`, `rm`: flags to a spec (every error
//! names its flag), the request, and the wait for the tasks to run with Docker's
//! progress lines.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::container::{parse_bytes, parse_duration, parse_mount};
use super::service::{
    EndpointMode as FlagEndpointMode, FailureAction as FlagAction, Mode as FlagMode,
    RestartCondition as FlagRestart, ServiceCreate, ServiceRm, ServiceRollback, ServiceScale,
    ServiceUpdate, UpdateOrder as FlagOrder,
};
use super::{call, print_done, Global, UsageError};
use crate::api::{Request, Response, ServiceView, TaskView};
use crate::image::reference::Reference;
use crate::model::health::HealthFlags;
use crate::services::spec::{
    parse_constraints, parse_publish, EndpointMode, FailureAction, Mode, PortConfig, Protocol,
    RestartCondition, ServiceSpec, UpdateConfig, UpdateOrder,
};
use crate::services::task::TaskState;

/// The flags `create` and `update` share, as given (None: not given).
struct Common<'a> {
    env: &'a [String],
    container_label: &'a [String],
    mount: &'a [String],
    workdir: Option<&'a str>,
    user: Option<&'a str>,
    entrypoint: Option<&'a str>,
    hostname: Option<&'a str>,
    replicas_max_per_node: Option<u64>,
    restart_condition: Option<FlagRestart>,
    restart_delay: Option<&'a str>,
    restart_max_attempts: Option<u64>,
    restart_window: Option<&'a str>,
    update: UpdateFlags<'a>,
    rollback: UpdateFlags<'a>,
    stop_grace_period: Option<&'a str>,
    stop_signal: Option<&'a str>,
    limit_cpu: Option<&'a str>,
    limit_memory: Option<&'a str>,
    limit_pids: Option<i64>,
    reserve_cpu: Option<&'a str>,
    reserve_memory: Option<&'a str>,
    health_cmd: Option<&'a str>,
    health_interval: Option<&'a str>,
    health_timeout: Option<&'a str>,
    health_retries: Option<u32>,
    health_start_period: Option<&'a str>,
    no_healthcheck: bool,
    device: &'a [String],
    cap_add: &'a [String],
    cap_drop: &'a [String],
    network: &'a [String],
    endpoint_mode: Option<FlagEndpointMode>,
    publish: &'a [String],
}

/// The shared flags of `create` and `update` (fields of the same name in both), with
/// the list flags that differ between them given.
macro_rules! common {
    ($c:expr, $env:expr, $clabel:expr, $mount:expr, $device:expr, $cap_add:expr, $cap_drop:expr, $network:expr, $publish:expr) => {
        Common {
            env: $env,
            container_label: $clabel,
            mount: $mount,
            workdir: $c.workdir.as_deref(),
            user: $c.user.as_deref(),
            entrypoint: $c.entrypoint.as_deref(),
            hostname: $c.hostname.as_deref(),
            replicas_max_per_node: $c.replicas_max_per_node,
            restart_condition: $c.restart_condition,
            restart_delay: $c.restart_delay.as_deref(),
            restart_max_attempts: $c.restart_max_attempts,
            restart_window: $c.restart_window.as_deref(),
            update: UpdateFlags {
                which: "update",
                parallelism: $c.update_parallelism,
                delay: $c.update_delay.as_deref(),
                failure_action: $c.update_failure_action,
                monitor: $c.update_monitor.as_deref(),
                max_failure_ratio: $c.update_max_failure_ratio.as_deref(),
                order: $c.update_order,
            },
            rollback: UpdateFlags {
                which: "rollback",
                parallelism: $c.rollback_parallelism,
                delay: $c.rollback_delay.as_deref(),
                failure_action: $c.rollback_failure_action,
                monitor: $c.rollback_monitor.as_deref(),
                max_failure_ratio: $c.rollback_max_failure_ratio.as_deref(),
                order: $c.rollback_order,
            },
            stop_grace_period: $c.stop_grace_period.as_deref(),
            stop_signal: $c.stop_signal.as_deref(),
            limit_cpu: $c.limit_cpu.as_deref(),
            limit_memory: $c.limit_memory.as_deref(),
            limit_pids: $c.limit_pids,
            reserve_cpu: $c.reserve_cpu.as_deref(),
            reserve_memory: $c.reserve_memory.as_deref(),
            health_cmd: $c.health_cmd.as_deref(),
            health_interval: $c.health_interval.as_deref(),
            health_timeout: $c.health_timeout.as_deref(),
            health_retries: $c.health_retries,
            health_start_period: $c.health_start_period.as_deref(),
            no_healthcheck: $c.no_healthcheck,
            device: $device,
            cap_add: $cap_add,
            cap_drop: $cap_drop,
            network: $network,
            publish: $publish,
            endpoint_mode: $c.endpoint_mode,
        }
    };
}

struct UpdateFlags<'a> {
    /// `update` or `rollback`: the flags' prefix.
    which: &'static str,
    parallelism: Option<u64>,
    delay: Option<&'a str>,
    failure_action: Option<FlagAction>,
    monitor: Option<&'a str>,
    max_failure_ratio: Option<&'a str>,
    order: Option<FlagOrder>,
}

fn ms(flag: &str, v: Option<&str>) -> Result<Option<u64>, UsageError> {
    v.map(|s| parse_duration(flag, s).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
        .transpose()
}

fn nano_cpus(flag: &str, v: &str) -> Result<u64, UsageError> {
    let x: f64 = v
        .trim()
        .parse()
        .ok()
        .filter(|x: &f64| x.is_finite() && *x > 0.0 && *x <= 4096.0)
        .ok_or_else(|| UsageError(format!("{flag}: {v:?} is not a number of CPUs like 0.5")))?;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // 0 < x <= 4096
    Ok((x * 1e9).round() as u64)
}

fn key_value(flag: &str, s: &str) -> Result<(String, String), UsageError> {
    let (k, v) = s.split_once('=').unwrap_or((s, ""));
    if k.is_empty() {
        return Err(UsageError(format!("{flag}: {s:?} is not KEY=VALUE")));
    }
    Ok((k.to_string(), v.to_string()))
}

fn apply_update_flags(u: &mut UpdateConfig, f: &UpdateFlags<'_>) -> Result<(), UsageError> {
    let w = f.which;
    if let Some(p) = f.parallelism {
        u.parallelism = p;
    }
    if let Some(d) = ms(&format!("--{w}-delay"), f.delay)? {
        u.delay_ms = d;
    }
    if let Some(m) = ms(&format!("--{w}-monitor"), f.monitor)? {
        u.monitor_ms = m;
    }
    if let Some(a) = f.failure_action {
        u.failure_action =
            match a {
                FlagAction::Pause => FailureAction::Pause,
                FlagAction::Continue => FailureAction::Continue,
                FlagAction::Rollback if w == "rollback" => return Err(UsageError(
                    "--rollback-failure-action: pause or continue (a rollback cannot roll back)"
                        .into(),
                )),
                FlagAction::Rollback => FailureAction::Rollback,
            };
    }
    if let Some(r) = f.max_failure_ratio {
        let x: f64 = r
            .trim()
            .parse()
            .ok()
            .filter(|x: &f64| (0.0..=1.0).contains(x))
            .ok_or_else(|| {
                UsageError(format!(
                    "--{w}-max-failure-ratio: {r:?} is not a number from 0 to 1"
                ))
            })?;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // 0..=1e6
        {
            u.max_failure_ppm = (x * 1e6).round() as u32;
        }
    }
    if let Some(o) = f.order {
        u.order = match o {
            FlagOrder::StopFirst => UpdateOrder::StopFirst,
            FlagOrder::StartFirst => UpdateOrder::StartFirst,
        };
    }
    Ok(())
}

/// Applies the shared flags over `spec`.
fn apply(spec: &mut ServiceSpec, f: &Common<'_>) -> Result<(), UsageError> {
    for n in f.network {
        if n.is_empty() {
            return Err(UsageError("--network: a network name is empty".into()));
        }
        if !spec.task.networks.contains(n) {
            spec.task.networks.push(n.clone());
        }
    }
    if let Some(m) = f.endpoint_mode {
        spec.endpoint.mode = match m {
            FlagEndpointMode::Vip => EndpointMode::Vip,
            FlagEndpointMode::Dnsrr => EndpointMode::Dnsrr,
        };
    }
    let mut given: Vec<PortConfig> = Vec::new();
    for p in f.publish {
        let pc = parse_publish(p).map_err(|e| UsageError(format!("--publish: {e}")))?;
        let same = |q: &PortConfig| {
            pc.published != 0 && q.published == pc.published && q.protocol == pc.protocol
        };
        if given.iter().any(same) {
            return Err(UsageError(format!(
                "--publish: duplicate published ports provided ({})",
                pc.published
            )));
        }
        // A port already in the spec is replaced (Docker's `--publish-add`).
        spec.endpoint.ports.retain(|q| !same(q));
        spec.endpoint.ports.push(pc);
        given.push(pc);
    }
    let t = &mut spec.task;
    let c = &mut t.container;
    for e in f.env {
        if e.is_empty() || e.starts_with('=') {
            return Err(UsageError(format!("--env: {e:?} is not KEY=VALUE")));
        }
        c.env.push(e.clone());
    }
    for l in f.container_label {
        let (k, v) = key_value("--container-label", l)?;
        c.labels.insert(k, v);
    }
    for m in f.mount {
        c.mounts.push(parse_mount(m)?);
    }
    if let Some(w) = f.workdir {
        if !w.starts_with('/') {
            return Err(UsageError(format!(
                "--workdir: {w:?} must be an absolute path"
            )));
        }
        c.workdir = Some(w.to_string());
    }
    if let Some(u) = f.user {
        c.user = Some(u.to_string());
    }
    if let Some(e) = f.entrypoint {
        c.entrypoint = Some(if e.is_empty() {
            vec![]
        } else {
            vec![e.to_string()]
        });
    }
    if let Some(h) = f.hostname {
        c.hostname = Some(h.to_string());
    }
    if let Some(m) = f.limit_memory {
        c.memory = Some(parse_bytes("--limit-memory", m)?);
    }
    if let Some(x) = f.limit_cpu {
        #[allow(clippy::cast_precision_loss)] // at most 4096e9
        let cpus = nano_cpus("--limit-cpu", x)? as f64 / 1e9;
        c.cpus = Some(cpus);
    }
    if let Some(p) = f.limit_pids {
        if p <= 0 {
            return Err(UsageError(format!(
                "--limit-pids: {p}: give a positive number"
            )));
        }
        c.pids_limit = Some(p);
    }
    for d in f.device {
        let parts: Vec<&str> = d.split(':').collect();
        let (host, cont, access) = match parts.as_slice() {
            [h] => (*h, *h, "rwm"),
            [h, c2] => (*h, *c2, "rwm"),
            [h, c2, p] => (*h, *c2, *p),
            _ => {
                return Err(UsageError(format!(
                    "--device: {d:?} is not HOST[:CONTAINER][:rwm]"
                )))
            }
        };
        if !host.starts_with("/dev/") || !cont.starts_with('/') {
            return Err(UsageError(format!(
                "--device: {d:?}: paths must be absolute, the host one under /dev"
            )));
        }
        c.devices.push(crate::model::container::DeviceSpec {
            host: host.into(),
            container: cont.into(),
            access: access.into(),
        });
    }
    c.cap_add.extend(f.cap_add.iter().cloned());
    c.cap_drop.extend(f.cap_drop.iter().cloned());
    crate::runtime::spec::capabilities(c, u64::MAX)
        .map_err(|e| UsageError(format!("--cap-add/--cap-drop: {e}")))?;
    if let Some(r) = f.reserve_memory {
        t.reserve.memory = u64::try_from(parse_bytes("--reserve-memory", r)?).unwrap_or(0);
    }
    if let Some(x) = f.reserve_cpu {
        t.reserve.nano_cpus = nano_cpus("--reserve-cpu", x)?;
    }
    if let Some(n) = f.replicas_max_per_node {
        t.placement.max_replicas = n;
    }
    if let Some(c) = f.restart_condition {
        t.restart.condition = match c {
            FlagRestart::None => RestartCondition::None,
            FlagRestart::OnFailure => RestartCondition::OnFailure,
            FlagRestart::Any => RestartCondition::Any,
        };
    }
    if let Some(d) = ms("--restart-delay", f.restart_delay)? {
        t.restart.delay_ms = d;
    }
    if let Some(n) = f.restart_max_attempts {
        t.restart.max_attempts = n;
    }
    if let Some(w) = ms("--restart-window", f.restart_window)? {
        t.restart.window_ms = w;
    }
    if let Some(g) = ms("--stop-grace-period", f.stop_grace_period)? {
        t.stop_grace_ms = g;
    }
    if let Some(s) = f.stop_signal {
        crate::model::container::signal_number(s)
            .map_err(|e| UsageError(format!("--stop-signal: {e}")))?;
        t.stop_signal = Some(s.to_string());
    }
    let d = |flag: &str, v: Option<&str>| v.map(|s| parse_duration(flag, s)).transpose();
    let h = &mut t.health;
    if f.no_healthcheck {
        if f.health_cmd.is_some() {
            return Err(UsageError(
                "--no-healthcheck: conflicts with --health-cmd".into(),
            ));
        }
        *h = HealthFlags {
            disable: true,
            ..HealthFlags::default()
        };
    }
    if let Some(cmd) = f.health_cmd {
        h.cmd = Some(cmd.to_string());
        h.disable = false;
    }
    if let Some(i) = d("--health-interval", f.health_interval)? {
        if i < Duration::from_millis(100) {
            return Err(UsageError("--health-interval: at least 100ms".into()));
        }
        h.interval = Some(i);
    }
    if let Some(i) = d("--health-timeout", f.health_timeout)? {
        h.timeout = Some(i);
    }
    if let Some(i) = d("--health-start-period", f.health_start_period)? {
        h.start_period = Some(i);
    }
    if let Some(r) = f.health_retries {
        if r == 0 {
            return Err(UsageError("--health-retries: at least 1".into()));
        }
        h.retries = Some(r);
    }
    apply_update_flags(&mut spec.update, &f.update)?;
    apply_update_flags(&mut spec.rollback, &f.rollback)?;
    Ok(())
}

/// `--replicas`: a count, with Docker's words for what is not one.
fn replicas(v: &str) -> Result<u64, UsageError> {
    v.trim()
        .parse::<u64>()
        .map_err(|_| UsageError(format!("invalid argument {v:?} for \"--replicas\" flag: invalid replicas value {v}: a number from 0 up")))
}

/// Docker's generated names are two words; ours say where they came from.
fn generated_name() -> String {
    let mut b = [0u8; 4];
    let _ = getrandom::getrandom(&mut b);
    format!("service-{:08x}", u32::from_le_bytes(b))
}

fn resolve_create(c: &ServiceCreate) -> Result<ServiceSpec, UsageError> {
    Reference::parse(&c.image).map_err(|e| UsageError(format!("invalid reference format: {e}")))?;
    let name = c.name.clone().unwrap_or_else(generated_name);
    let mut spec = ServiceSpec::new(&name, &c.image);
    let count = c.replicas.as_deref().map(replicas).transpose()?;
    spec.mode = match c.mode.unwrap_or(FlagMode::Replicated) {
        FlagMode::Replicated => Mode::Replicated {
            replicas: count.unwrap_or(1),
        },
        FlagMode::ReplicatedJob => {
            let total = count.unwrap_or(1);
            Mode::ReplicatedJob {
                total,
                max_concurrent: c.max_concurrent.unwrap_or(total).max(1),
            }
        }
        m @ (FlagMode::Global | FlagMode::GlobalJob) => {
            if count.is_some() {
                return Err(UsageError(
                    "--replicas: replicas can only be used with replicated or replicated-job mode"
                        .into(),
                ));
            }
            if m == FlagMode::Global {
                Mode::Global
            } else {
                Mode::GlobalJob
            }
        }
    };
    if c.max_concurrent.is_some() && c.mode != Some(FlagMode::ReplicatedJob) {
        return Err(UsageError(
            "--max-concurrent: only with --mode replicated-job".into(),
        ));
    }
    if spec.mode.is_job() {
        // Docker's default for jobs: a task that completed is not run again.
        spec.task.restart.condition = RestartCondition::OnFailure;
    }
    spec.task.container.cmd = c.args.clone();
    for l in &c.label {
        let (k, v) = key_value("--label", l)?;
        spec.labels.insert(k, v);
    }
    spec.task.placement.constraints =
        parse_constraints(&c.constraint).map_err(|e| UsageError(format!("--constraint: {e}")))?;
    for p in &c.placement_pref {
        let label = spread_label("--placement-pref", p)?;
        spec.task.placement.spread.push(label);
    }
    let common = common!(
        c,
        &c.env,
        &c.container_label,
        &c.mount,
        &c.device,
        &c.cap_add,
        &c.cap_drop,
        &c.network,
        &c.publish
    );
    apply(&mut spec, &common)?;
    spec.validate().map_err(|e| UsageError(e.to_string()))?;
    spec.check_placeholders()
        .map_err(|e| UsageError(e.to_string()))?;
    Ok(spec)
}

/// The label of a `spread=node.labels.NAME` (or `engine.labels.NAME`) preference.
fn spread_label(flag: &str, p: &str) -> Result<String, UsageError> {
    p.strip_prefix("spread=")
        .filter(|l| {
            l.strip_prefix("node.labels.")
                .or_else(|| l.strip_prefix("engine.labels."))
                .is_some_and(|name| !name.is_empty())
        })
        .map(str::to_string)
        .ok_or_else(|| UsageError(format!("{flag}: {p:?} is not spread=node.labels.NAME")))
}

pub fn create(global: &Global, c: ServiceCreate) -> anyhow::Result<ExitCode> {
    let spec = resolve_create(&c)?;
    let name = spec.name.clone();
    let id = match call(global, &Request::ServiceCreate(Box::new(spec)))? {
        Response::Done(id) => id,
        other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
    };
    println!("{id}");
    if c.detach {
        return Ok(ExitCode::SUCCESS);
    }
    wait(global, &name, c.quiet)
}

fn current(global: &Global, name: &str) -> anyhow::Result<ServiceView> {
    match call(global, &Request::ServiceList(Some(vec![name.to_string()])))? {
        Response::Services(mut v) if v.len() == 1 => Ok(v.remove(0)),
        other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
    }
}

fn edit_env(env: &mut Vec<String>, add: &[String], rm: &[String]) -> Result<(), UsageError> {
    for k in rm {
        env.retain(|e| e.split_once('=').map_or(e.as_str(), |(k2, _)| k2) != k);
    }
    for e in add {
        let (k, _) = key_value("--env-add", e)?;
        env.retain(|x| x.split_once('=').map_or(x.as_str(), |(k2, _)| k2) != k);
        env.push(e.clone());
    }
    Ok(())
}

fn edit_map(
    m: &mut BTreeMap<String, String>,
    flag: &str,
    add: &[String],
    rm: &[String],
) -> Result<(), UsageError> {
    for k in rm {
        m.remove(k);
    }
    for l in add {
        let (k, v) = key_value(flag, l)?;
        m.insert(k, v);
    }
    Ok(())
}

/// A command line split as a POSIX shell splits words: whitespace separates them,
/// single quotes keep everything, double quotes keep all but `\"`, `\\`, `\$` and
/// `` \` ``, a backslash outside quotes keeps the next character. No expansion.
fn shell_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = s.chars();
    while let Some(ch) = chars.next() {
        match ch {
            c if c.is_whitespace() => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err(format!("unterminated single quote in {s:?}")),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => w.push(c),
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => return Err(format!("unterminated double quote in {s:?}")),
                        },
                        Some(c) => w.push(c),
                        None => return Err(format!("unterminated double quote in {s:?}")),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(c) => word.get_or_insert_with(String::new).push(c),
                None => return Err(format!("a backslash ends {s:?}")),
            },
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

/// `network_rm`: the networks `--network-rm` names, as the ids the spec holds.
fn resolve_update(
    c: &ServiceUpdate,
    spec: &mut ServiceSpec,
    network_rm: &[String],
) -> Result<(), UsageError> {
    if let Some(i) = &c.image {
        Reference::parse(i)
            .map_err(|e| UsageError(format!("--image: invalid reference format: {e}")))?;
        spec.task.image = i.clone();
    }
    if let Some(a) = &c.args {
        spec.task.container.cmd = shell_words(a).map_err(|e| UsageError(format!("--args: {e}")))?;
    }
    if let Some(n) = c.max_concurrent {
        match &mut spec.mode {
            Mode::ReplicatedJob { max_concurrent, .. } => *max_concurrent = n,
            _ => {
                return Err(UsageError(
                    "--max-concurrent: can only be used with replicated-job mode".into(),
                ))
            }
        }
    }
    if let Some(r) = c.replicas.as_deref() {
        let n = replicas(r)?;
        match &mut spec.mode {
            Mode::Replicated { replicas } => *replicas = n,
            Mode::ReplicatedJob { total, .. } => *total = n,
            _ => {
                return Err(UsageError(
                    "--replicas: replicas can only be used with replicated or replicated-job mode"
                        .into(),
                ))
            }
        }
    }
    edit_env(&mut spec.task.container.env, &c.env_add, &c.env_rm)?;
    edit_map(&mut spec.labels, "--label-add", &c.label_add, &c.label_rm)?;
    edit_map(
        &mut spec.task.container.labels,
        "--container-label-add",
        &c.container_label_add,
        &c.container_label_rm,
    )?;
    let p = &mut spec.task.placement;
    for r in &c.constraint_rm {
        let gone = parse_constraints(std::slice::from_ref(r))
            .map_err(|e| UsageError(format!("--constraint-rm: {e}")))?;
        p.constraints.retain(|k| !gone.contains(k));
    }
    p.constraints.extend(
        parse_constraints(&c.constraint_add)
            .map_err(|e| UsageError(format!("--constraint-add: {e}")))?,
    );
    for n in network_rm {
        spec.task.networks.retain(|x| x != n);
    }
    for r in &c.publish_rm {
        let (port, proto) = match r.split_once('/') {
            Some((p, "tcp")) => (p, Some(Protocol::Tcp)),
            Some((p, "udp")) => (p, Some(Protocol::Udp)),
            Some(_) => {
                return Err(UsageError(format!(
                    "--publish-rm: {r:?} is not PORT[/tcp|/udp]"
                )))
            }
            None => (r.as_str(), None),
        };
        let port: u16 = port
            .parse()
            .map_err(|_| UsageError(format!("--publish-rm: {r:?} is not PORT[/tcp|/udp]")))?;
        spec.endpoint.ports.retain(|q| {
            let hit = q.published == port || (q.published == 0 && q.target == port);
            !(hit && proto.is_none_or(|p| p == q.protocol))
        });
    }
    for r in &c.placement_pref_rm {
        let gone = spread_label("--placement-pref-rm", r)?;
        p.spread.retain(|l| *l != gone);
    }
    for a in &c.placement_pref_add {
        p.spread.push(spread_label("--placement-pref-add", a)?);
    }
    // Docker's: a capability added leaves the drop list, and the other way round;
    // named in both, it is added. Names compare as the runtime reads them (`net_raw`
    // is `CAP_NET_RAW`).
    let same =
        |a: &str, b: &str| crate::runtime::spec::cap_name(a) == crate::runtime::spec::cap_name(b);
    let caps = &mut spec.task.container;
    for k in &c.cap_drop {
        caps.cap_add.retain(|x| !same(x, k));
        if !caps.cap_drop.iter().any(|x| same(x, k)) {
            caps.cap_drop.push(k.clone());
        }
    }
    for k in &c.cap_add {
        caps.cap_drop.retain(|x| !same(x, k));
        if !caps.cap_add.iter().any(|x| same(x, k)) {
            caps.cap_add.push(k.clone());
        }
    }
    for m in &c.mount_rm {
        spec.task.container.mounts.retain(|x| &x.target != m);
    }
    if c.force {
        spec.task.force_update += 1;
    }
    let common = common!(
        c,
        &[],
        &[],
        &c.mount_add,
        &[],
        &[],
        &[],
        &c.network_add,
        &c.publish_add
    );
    apply(spec, &common)?;
    spec.validate().map_err(|e| UsageError(e.to_string()))?;
    spec.check_placeholders()
        .map_err(|e| UsageError(e.to_string()))
}

pub fn update(global: &Global, c: ServiceUpdate) -> anyhow::Result<ExitCode> {
    if c.rollback {
        return rollback_named(global, &c.service, c.detach, c.quiet);
    }
    let view = current(global, &c.service)?;
    let mut spec = view.spec.clone();
    let network_rm = match c.network_rm.is_empty() {
        true => Vec::new(),
        false => match call(global, &Request::NetworkList(Some(c.network_rm.clone())))? {
            Response::Networks(v) => v.into_iter().map(|n| n.id.to_string()).collect(),
            other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
        },
    };
    resolve_update(&c, &mut spec, &network_rm)?;
    let req = Request::ServiceUpdate {
        service: view.id.to_string(),
        spec: Box::new(spec),
        rollback: false,
    };
    let name = match call(global, &req)? {
        Response::Done(n) => n,
        other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
    };
    println!("{name}");
    if c.detach {
        return Ok(ExitCode::SUCCESS);
    }
    wait(global, &name, c.quiet)
}

pub fn rollback(global: &Global, c: ServiceRollback) -> anyhow::Result<ExitCode> {
    rollback_named(global, &c.service, c.detach, c.quiet)
}

fn rollback_named(
    global: &Global,
    service: &str,
    detach: bool,
    quiet: bool,
) -> anyhow::Result<ExitCode> {
    let view = current(global, service)?;
    let req = Request::ServiceUpdate {
        service: view.id.to_string(),
        spec: Box::new(view.spec.clone()),
        rollback: true,
    };
    let name = match call(global, &req)? {
        Response::Done(n) => n,
        other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
    };
    println!("{name}");
    if detach {
        return Ok(ExitCode::SUCCESS);
    }
    wait(global, &name, quiet)
}

pub fn scale(global: &Global, c: ServiceScale) -> anyhow::Result<ExitCode> {
    if c.scales.is_empty() {
        return Err(UsageError("service scale: name at least one SERVICE=REPLICAS".into()).into());
    }
    let mut pairs = Vec::new();
    for s in &c.scales {
        let (name, n) = s.split_once('=').ok_or_else(|| {
            UsageError(format!(
                "invalid scale specifier '{s}': expected SERVICE=REPLICAS"
            ))
        })?;
        let n = n
            .parse::<u64>()
            .map_err(|_| UsageError(format!("invalid replicas value {n}: a number from 0 up")))?;
        pairs.push((name.to_string(), n));
    }
    let names: Vec<String> = pairs.iter().map(|(n, _)| n.clone()).collect();
    let r = call(global, &Request::ServiceScale(pairs))?;
    print_done(r)?;
    if c.detach {
        return Ok(ExitCode::SUCCESS);
    }
    for n in names {
        let code = wait(global, &n, false)?;
        if code != ExitCode::SUCCESS {
            return Ok(code);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn rm(global: &Global, c: ServiceRm) -> anyhow::Result<ExitCode> {
    if c.services.is_empty() {
        return Err(UsageError("service rm: name at least one service".into()).into());
    }
    print_done(call(global, &Request::ServiceRemove(c.services))?)
}

/// How long a task may stay pending with no node before the wait gives up on it.
const PENDING_GRACE: Duration = Duration::from_secs(3);
/// Between two looks at the service.
const POLL: Duration = Duration::from_millis(100);

/// Waits until the service's tasks run as its spec says, printing Docker's progress
/// lines as they change; ends with an error on a paused update, a task that cannot be
/// placed, or one the node rejects.
pub fn wait(global: &Global, name: &str, quiet: bool) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut last = String::new();
    loop {
        let svc = current(global, name)?;
        let tasks = match call(
            global,
            &Request::TaskList {
                services: vec![svc.id.to_string()],
                node: None,
            },
        )? {
            Response::Tasks(t) => t,
            other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
        };
        let p = progress(&svc, &tasks);
        if !quiet && p.text != last {
            print!("{}", p.text);
            last = p.text.clone();
        }
        if let Some(e) = p.failed {
            anyhow::bail!("{e}");
        }
        if p.pending.is_some() && started.elapsed() >= PENDING_GRACE {
            anyhow::bail!(
                "{name}: {}; the service is created and waits for a node",
                p.pending.unwrap_or_default()
            );
        }
        if p.done {
            if !quiet {
                println!("verify: Service converged");
            }
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(POLL);
    }
}

struct Progress {
    text: String,
    done: bool,
    pending: Option<String>,
    failed: Option<String>,
}

/// Docker's progress bar for a task state: its place in the lifecycle up to running.
fn bar(state: TaskState) -> String {
    const W: usize = 50;
    let steps = [
        TaskState::New,
        TaskState::Pending,
        TaskState::Assigned,
        TaskState::Accepted,
        TaskState::Preparing,
        TaskState::Ready,
        TaskState::Starting,
        TaskState::Running,
    ];
    let i = steps
        .iter()
        .position(|s| *s == state)
        .unwrap_or(steps.len() - 1);
    let fill = W * i / (steps.len() - 1);
    if fill >= W {
        format!("[{}>]", "=".repeat(W))
    } else {
        format!("[{}>{}]", "=".repeat(fill), " ".repeat(W - fill))
    }
}

fn progress(svc: &ServiceView, tasks: &[TaskView]) -> Progress {
    use crate::services::store::UpdateState;
    let live: Vec<&TaskView> = tasks
        .iter()
        .filter(|t| t.desired <= TaskState::Running && !t.state.is_terminal())
        .collect();
    let mut lines = Vec::new();
    let mut pending = None;
    let job = svc.spec.mode.is_job();
    let global = matches!(svc.spec.mode, Mode::Global | Mode::GlobalJob);
    let mut by_slot: BTreeMap<String, &TaskView> = BTreeMap::new();
    for t in &live {
        let key = if global {
            t.node.clone().unwrap_or_default()
        } else {
            format!("{:>6}", t.slot)
        };
        let better = by_slot
            .get(&key)
            .is_none_or(|o| (t.version, t.state) > (o.version, o.state));
        if better {
            by_slot.insert(key, t);
        }
        if t.state == TaskState::Pending && t.message.starts_with("no suitable node") {
            pending = Some(format!("1 task pending: {}", t.message));
        }
    }
    let target = if global {
        by_slot.len() as u64
    } else {
        svc.desired
    };
    let running = by_slot
        .values()
        .filter(|t| t.version == svc.version && t.state == TaskState::Running && !t.node_down)
        .count() as u64;
    let done_jobs = svc.completed;
    for t in by_slot.values() {
        let label = if global {
            t.node.clone().unwrap_or_default()
        } else {
            format!("{}/{}", t.slot, svc.desired)
        };
        lines.push(format!("{label}: {:<9} {}", t.state.name(), bar(t.state)));
    }
    let mut text = match job {
        true => format!(
            "job progress: {done_jobs} out of {} complete\n",
            svc.desired
        ),
        false => format!("overall progress: {running} out of {target} tasks\n"),
    };
    for l in lines {
        text.push_str(&l);
        text.push('\n');
    }
    // The update status is this command's own only when the last change started it
    // (a change of replicas starts none, and an older status stays).
    let update = svc
        .update
        .as_ref()
        .filter(|u| u.started_ms == svc.updated_ms);
    let failed = match update.map(|u| u.state) {
        Some(UpdateState::Paused | UpdateState::RollbackPaused) => {
            update.map(|u| u.message.clone())
        }
        Some(UpdateState::RollbackCompleted) => update
            .filter(|u| u.message.starts_with("rollback completed: "))
            .map(|u| {
                u.message
                    .trim_start_matches("rollback completed: ")
                    .to_string()
            }),
        _ => None,
    };
    // An update that rolls back on failure: a rejected task is the rollback's cue,
    // not the end of the wait.
    let rolls_back = update.is_some_and(|u| u.state.in_progress())
        && svc.spec.update.failure_action == FailureAction::Rollback;
    // A task of the current spec the node refused (no such image, say): the user
    // hears why now instead of waiting through restarts.
    let rejected = tasks
        .iter()
        .filter(|t| {
            t.version == svc.version && t.state == TaskState::Rejected && !t.error.is_empty()
        })
        .max_by_key(|t| t.state_ms)
        .map(|t| format!("task {} rejected: {}", t.id, t.error));
    let in_progress = update.is_some_and(|u| u.state.in_progress());
    let outdated = live.iter().any(|t| t.version != svc.version);
    let done = match job {
        true => done_jobs >= svc.desired,
        false => running >= target && !in_progress && !outdated && pending.is_none(),
    };
    let failed = failed.or_else(|| (!done && !rolls_back).then_some(rejected).flatten());
    Progress {
        text,
        done,
        pending,
        failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::container::MountKind;
    use crate::services::spec::PublishMode;
    use argh::FromArgs;

    fn create_of(args: &[&str]) -> Result<ServiceSpec, UsageError> {
        let c = ServiceCreate::from_args(&["service", "create"], args).expect("parses");
        resolve_create(&c)
    }

    #[test]
    fn bad_input_names_the_flag() {
        let e = create_of(&["--replicas", "-1", "busybox"]).unwrap_err().0;
        assert!(e.contains("--replicas") && e.contains("-1"), "{e}");
        let e = create_of(&["--replicas", "x", "busybox"]).unwrap_err().0;
        assert!(e.contains("invalid replicas value x"), "{e}");
        let e = create_of(&["--mode", "global", "--replicas", "2", "busybox"])
            .unwrap_err()
            .0;
        assert!(
            e.starts_with("--replicas: replicas can only be used"),
            "{e}"
        );
        let e = create_of(&["--constraint", "node.colour==red", "busybox"])
            .unwrap_err()
            .0;
        assert!(
            e.starts_with("--constraint:") && e.contains("node.colour"),
            "{e}"
        );
        let e = create_of(&["--restart-delay", "5 parsecs", "busybox"])
            .unwrap_err()
            .0;
        assert!(e.starts_with("--restart-delay:"), "{e}");
        let e = create_of(&["--limit-memory", "lots", "busybox"])
            .unwrap_err()
            .0;
        assert!(e.starts_with("--limit-memory:"), "{e}");
        let e = create_of(&["--name", "my_web", "busybox"]).unwrap_err().0;
        assert!(e.starts_with("invalid name"), "{e}");
        let e = create_of(&["--update-max-failure-ratio", "2", "busybox"])
            .unwrap_err()
            .0;
        assert!(e.starts_with("--update-max-failure-ratio:"), "{e}");
        let e = create_of(&[""]).unwrap_err().0;
        assert!(e.contains("reference"), "{e}");
    }

    #[test]
    fn flags_make_the_spec() {
        let s = create_of(&[
            "--name",
            "web",
            "--replicas",
            "3",
            "--constraint",
            "node.role==worker",
            "-e",
            "A=1",
            "--update-parallelism",
            "2",
            "--update-delay",
            "10s",
            "--update-failure-action",
            "rollback",
            "--reserve-cpu",
            "0.5",
            "--limit-memory",
            "64m",
            "--mount",
            "type=tmpfs,target=/tmp",
            "busybox",
            "sleep",
            "60",
        ])
        .unwrap();
        assert_eq!(s.name, "web");
        assert_eq!(s.mode, Mode::Replicated { replicas: 3 });
        assert_eq!(s.task.placement.constraints.len(), 1);
        assert_eq!(s.task.container.env, vec!["A=1"]);
        assert_eq!(s.task.container.cmd, vec!["sleep", "60"]);
        assert_eq!(s.update.parallelism, 2);
        assert_eq!(s.update.delay_ms, 10_000);
        assert_eq!(s.update.failure_action, FailureAction::Rollback);
        assert_eq!(s.task.reserve.nano_cpus, 500_000_000);
        assert_eq!(s.task.container.memory, Some(64 << 20));
        assert_eq!(s.task.container.mounts[0].kind, MountKind::Tmpfs);
        let j = create_of(&[
            "--mode",
            "replicated-job",
            "--replicas",
            "5",
            "--max-concurrent",
            "2",
            "busybox",
        ])
        .unwrap();
        assert_eq!(
            j.mode,
            Mode::ReplicatedJob {
                total: 5,
                max_concurrent: 2
            }
        );
        assert_eq!(j.task.restart.condition, RestartCondition::OnFailure);
    }

    #[test]
    fn update_edits_env_labels_and_constraints() {
        let mut s = create_of(&[
            "--name",
            "web",
            "-e",
            "A=1",
            "-e",
            "B=2",
            "--constraint",
            "node.role==worker",
            "busybox",
        ])
        .unwrap();
        let u = ServiceUpdate::from_args(
            &["service", "update"],
            &[
                "--env-add",
                "A=9",
                "--env-rm",
                "B",
                "--constraint-rm",
                "node.role==worker",
                "--image",
                "busybox:2",
                "--force",
                "web",
            ],
        )
        .unwrap();
        resolve_update(&u, &mut s, &[]).unwrap();
        assert_eq!(s.task.container.env, vec!["A=9"]);
        assert!(s.task.placement.constraints.is_empty());
        assert_eq!(s.task.image, "busybox:2");
        assert_eq!(s.task.force_update, 1);
    }

    #[test]
    fn update_edits_preferences_capabilities_and_labels() {
        let mut s = create_of(&[
            "--name",
            "web",
            "--placement-pref",
            "spread=node.labels.zone",
            "--cap-drop",
            "NET_RAW",
            "-l",
            "a=1",
            "busybox",
        ])
        .unwrap();
        assert_eq!(s.task.placement.spread, vec!["node.labels.zone"]);
        let u = ServiceUpdate::from_args(
            &["service", "update"],
            &[
                "--placement-pref-rm",
                "spread=node.labels.zone",
                "--placement-pref-add",
                "spread=engine.labels.rack",
                "--cap-add",
                "net_raw",
                "--cap-drop",
                "CHOWN",
                "--cap-drop",
                "cap_kill",
                "--cap-add",
                "KILL",
                "--label-add",
                "b=2",
                "--label-rm",
                "a",
                "--constraint-add",
                "node.labels.zone==east",
                "web",
            ],
        )
        .unwrap();
        resolve_update(&u, &mut s, &[]).unwrap();
        assert_eq!(s.task.placement.spread, vec!["engine.labels.rack"]);
        assert_eq!(s.task.container.cap_add, vec!["net_raw", "KILL"]);
        assert_eq!(s.task.container.cap_drop, vec!["CHOWN"]);
        assert_eq!(
            s.labels,
            BTreeMap::from([("b".to_string(), "2".to_string())])
        );
        assert_eq!(s.task.placement.constraints.len(), 1);
    }

    #[test]
    fn networks_ports_and_endpoint_mode_go_into_the_spec() {
        let s = create_of(&[
            "--network",
            "front",
            "--network",
            "back",
            "-p",
            "8080:80",
            "--publish",
            "published=53,target=5353,protocol=udp,mode=host",
            "-p",
            "9000/udp",
            "--endpoint-mode",
            "vip",
            "busybox",
        ])
        .unwrap();
        assert_eq!(s.task.networks, ["front", "back"]);
        let p = &s.endpoint.ports;
        assert_eq!(
            (p[0].published, p[0].target, p[0].mode),
            (8080, 80, PublishMode::Ingress)
        );
        assert_eq!(
            (p[1].published, p[1].target, p[1].protocol),
            (53, 5353, Protocol::Udp)
        );
        assert_eq!(p[1].mode, PublishMode::Host);
        assert_eq!((p[2].published, p[2].target), (0, 9000));
        for bad in [
            "0:80",
            "80:0",
            "x:80",
            "80:80/sctp",
            "published=8080",
            "target=80,mode=mesh",
            "80:70000",
        ] {
            let e = create_of(&["-p", bad, "busybox"]).unwrap_err().0;
            assert!(e.starts_with("--publish: invalid publish"), "{bad}: {e}");
        }
        let e = create_of(&["--endpoint-mode", "dnsrr", "-p", "80:80", "busybox"])
            .unwrap_err()
            .0;
        assert!(e.contains("dnsrr"), "{e}");
        let e = create_of(&["-p", "80:80", "-p", "80:81", "busybox"])
            .unwrap_err()
            .0;
        assert!(e.contains("duplicate published ports"), "{e}");

        // Update: ports added (the same published port replaced), removed; networks.
        let mut s = s;
        let u = ServiceUpdate::from_args(
            &["service", "update"],
            &[
                "--publish-add",
                "8080:81",
                "--publish-rm",
                "53/udp",
                "--network-add",
                "third",
                "web",
            ],
        )
        .unwrap();
        resolve_update(&u, &mut s, &["back".to_string()]).unwrap();
        let got: Vec<(u16, u16)> = s
            .endpoint
            .ports
            .iter()
            .map(|p| (p.published, p.target))
            .collect();
        assert_eq!(got, [(0, 9000), (8080, 81)]);
        assert_eq!(s.task.networks, ["front", "third"]);
        let u = ServiceUpdate::from_args(&["service", "update"], &["--publish-rm", "9000", "web"])
            .unwrap();
        resolve_update(&u, &mut s, &[]).unwrap();
        assert_eq!(
            s.endpoint.ports.len(),
            1,
            "an unpublished port goes by its target"
        );
        let u =
            ServiceUpdate::from_args(&["service", "update"], &["--publish-rm", "80/sctp", "web"])
                .unwrap();
        assert!(resolve_update(&u, &mut s, &[])
            .unwrap_err()
            .0
            .starts_with("--publish-rm"));
        let e = create_of(&["--placement-pref", "spread=node.labels.", "busybox"])
            .unwrap_err()
            .0;
        assert!(e.starts_with("--placement-pref:"), "{e}");
    }

    #[test]
    fn templates_are_checked_when_the_service_is_made() {
        let s = create_of(&["--hostname", "{{.Service.Name}}-{{.Task.Slot}}", "busybox"]);
        assert!(s.is_ok());
        let e = create_of(&["--hostname", "{{.Task.Colour}}", "busybox"])
            .unwrap_err()
            .0;
        assert!(
            e.starts_with("--hostname: unknown placeholder {{.Task.Colour}}"),
            "{e}"
        );
        let e = create_of(&["-e", "A={{.Node.ID", "busybox"]).unwrap_err().0;
        assert!(e.starts_with("--env:"), "{e}");
    }

    #[test]
    fn args_split_as_a_shell_would() {
        assert_eq!(
            shell_words(r#"sh -c 'echo "a  b"; exit 3' x\ y "q\"z" ''"#).unwrap(),
            vec!["sh", "-c", r#"echo "a  b"; exit 3"#, "x y", "q\"z", ""]
        );
        assert!(shell_words("echo 'open")
            .unwrap_err()
            .contains("single quote"));
        assert!(shell_words("echo \"open")
            .unwrap_err()
            .contains("double quote"));
        let mut s = create_of(&["--name", "web", "busybox"]).unwrap();
        let u = ServiceUpdate::from_args(&["service", "update"], &["--max-concurrent", "2", "web"])
            .unwrap();
        let e = resolve_update(&u, &mut s, &[]).unwrap_err().0;
        assert!(e.starts_with("--max-concurrent:"), "{e}");
    }
}

//! What a user asks of a service (`service create`, `service update`): the spec the
//! managers replicate and the orchestrator works towards. Validation lives here, once,
//! for the CLI (which checks before it asks) and the leader (which checks again, since
//! any client can send anything); its messages are Docker's where Docker has one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::constraint::Constraint;
use super::scheduler::Resources;
use crate::model::container::ContainerSpec;
use crate::model::health::HealthFlags;

/// Longest service name: a DNS label, as Docker requires.
pub const MAX_NAME: usize = 63;
/// Most replicas one service may ask for. Far beyond an edge cluster, and small enough
/// that one service cannot make the leader build millions of tasks at once.
pub const MAX_REPLICAS: u64 = 100_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    Replicated {
        replicas: u64,
    },
    Global,
    /// Runs `total` tasks to completion, at most `max_concurrent` at a time.
    ReplicatedJob {
        max_concurrent: u64,
        total: u64,
    },
    /// Runs one task to completion on every eligible node.
    GlobalJob,
}

impl Mode {
    /// Docker's names (`service ls` MODE column).
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Replicated { .. } => "replicated",
            Mode::Global => "global",
            Mode::ReplicatedJob { .. } => "replicated job",
            Mode::GlobalJob => "global job",
        }
    }

    pub fn is_job(&self) -> bool {
        matches!(self, Mode::ReplicatedJob { .. } | Mode::GlobalJob)
    }
}

/// When a task that stopped is replaced (`--restart-condition`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartCondition {
    None,
    /// Not after an exit with status 0.
    OnFailure,
    #[default]
    Any,
}

/// Swarm's restart policy: every restart is a new task (a new container), in the same
/// slot (or on the same node, for a global service).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    pub condition: RestartCondition,
    /// Between a task's end and its replacement's start (Docker: 5 s). Not applied when
    /// the task's node died or was drained.
    pub delay_ms: u64,
    /// Restarts per slot and spec version; 0 for no limit.
    pub max_attempts: u64,
    /// Only restarts within this window count towards `max_attempts`; 0 for ever.
    pub window_ms: u64,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            condition: RestartCondition::Any,
            delay_ms: 5_000,
            max_attempts: 0,
            window_ms: 0,
        }
    }
}

/// What a rolling update (or rollback) does when a task fails (`--update-failure-action`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureAction {
    #[default]
    Pause,
    Continue,
    Rollback,
}

/// Whether a slot's old task stops before its replacement starts (`--update-order`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdateOrder {
    #[default]
    StopFirst,
    StartFirst,
}

/// How a rolling update or a rollback proceeds; Docker's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateConfig {
    /// Slots replaced at once; 0 for all.
    pub parallelism: u64,
    /// Between one batch finishing and the next.
    pub delay_ms: u64,
    pub failure_action: FailureAction,
    /// How long a new task must keep running to count as a success.
    pub monitor_ms: u64,
    /// Failures tolerated, as parts per million of the slots updated (Docker's ratio
    /// 0..1, kept exact).
    pub max_failure_ppm: u32,
    pub order: UpdateOrder,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            parallelism: 1,
            delay_ms: 0,
            failure_action: FailureAction::Pause,
            monitor_ms: 5_000,
            max_failure_ppm: 0,
            order: UpdateOrder::StopFirst,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub constraints: Vec<Constraint>,
    /// `--replicas-max-per-node`; 0 for no limit.
    pub max_replicas: u64,
    /// `--placement-pref spread=<label>`: the labels to spread over, outermost first.
    pub spread: Vec<String>,
}

/// What each task of a service runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskTemplate {
    pub image: String,
    pub container: ContainerSpec,
    pub stop_signal: Option<String>,
    /// Between the stop signal and SIGKILL (Docker: 10 s).
    pub stop_grace_ms: u64,
    /// The `--health-*` flags, over the image's own check.
    pub health: HealthFlags,
    pub restart: RestartPolicy,
    pub placement: Placement,
    /// `--reserve-cpu` and `--reserve-memory`: what the scheduler sets aside.
    pub reserve: Resources,
    /// Raised by `service update --force`: every task counts as changed.
    pub force_update: u64,
    /// The overlay networks each task joins (`--network`), by id once the leader took
    /// the spec; the first is the task's `eth0`.
    pub networks: Vec<String>,
}

impl TaskTemplate {
    pub fn new(image: &str) -> TaskTemplate {
        TaskTemplate {
            image: image.to_string(),
            container: ContainerSpec::default(),
            stop_signal: None,
            stop_grace_ms: 10_000,
            health: HealthFlags::default(),
            restart: RestartPolicy::default(),
            placement: Placement::default(),
            reserve: Resources::default(),
            force_update: 0,
            networks: Vec::new(),
        }
    }
}

/// A service as `service create` defines it and `service update` changes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub name: String,
    /// `-l`: the service's own labels (not copied to its containers).
    pub labels: BTreeMap<String, String>,
    pub mode: Mode,
    pub task: TaskTemplate,
    pub update: UpdateConfig,
    pub rollback: UpdateConfig,
    /// How the service is reached: VIP or DNS round robin, and its published ports.
    pub endpoint: EndpointSpec,
}

/// `--endpoint-mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndpointMode {
    /// One virtual IP, balanced over the tasks.
    #[default]
    Vip,
    /// DNS answers with the tasks' addresses.
    Dnsrr,
}

pub use crate::model::Protocol;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PublishMode {
    /// The routing mesh: every node takes the port.
    Ingress,
    /// Only nodes running a task, straight into it.
    Host,
}

/// One `--publish`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortConfig {
    pub protocol: Protocol,
    pub target: u16,
    /// 0: the cluster picks one (ingress) or the node does (host).
    pub published: u16,
    pub mode: PublishMode,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSpec {
    pub mode: EndpointMode,
    pub ports: Vec<PortConfig>,
}

/// Parses a `--publish` value: `P:T[/udp]`, `T[/udp]`, or Docker's long form
/// `published=P,target=T[,protocol=tcp|udp][,mode=ingress|host]`.
pub fn parse_publish(s: &str) -> Result<PortConfig, SpecError> {
    let bad = |why: &str| SpecError::Publish(s.to_string(), why.to_string());
    let port = |v: &str, what: &str| -> Result<u16, SpecError> {
        match v.parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(bad(&format!("{what} {v:?} is not a port from 1 to 65535"))),
        }
    };
    let proto = |v: &str| match v {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        _ => Err(bad(&format!("protocol {v:?} is not tcp or udp"))),
    };
    let mut pc = PortConfig {
        protocol: Protocol::Tcp,
        target: 0,
        published: 0,
        mode: PublishMode::Ingress,
    };
    if s.contains('=') {
        for field in s.split(',') {
            let (k, v) = field
                .split_once('=')
                .ok_or_else(|| bad(&format!("{field:?} is not KEY=VALUE")))?;
            match k {
                "published" | "p" => pc.published = port(v, "published port")?,
                "target" | "t" => pc.target = port(v, "target port")?,
                "protocol" => pc.protocol = proto(v)?,
                "mode" => {
                    pc.mode = match v {
                        "ingress" => PublishMode::Ingress,
                        "host" => PublishMode::Host,
                        _ => return Err(bad(&format!("mode {v:?} is not ingress or host"))),
                    }
                }
                _ => return Err(bad(&format!("unknown key {k:?}"))),
            }
        }
    } else {
        let (ports, p) = match s.split_once('/') {
            Some((ports, p)) => (ports, proto(p)?),
            None => (s, Protocol::Tcp),
        };
        pc.protocol = p;
        match ports.split_once(':') {
            Some((published, target)) => {
                pc.published = port(published, "published port")?;
                pc.target = port(target, "target port")?;
            }
            None => pc.target = port(ports, "target port")?,
        }
    }
    if pc.target == 0 {
        return Err(bad("no target port"));
    }
    Ok(pc)
}

impl ServiceSpec {
    /// What `service create NAME IMAGE` makes: one replica, Docker's defaults.
    pub fn new(name: &str, image: &str) -> ServiceSpec {
        ServiceSpec {
            name: name.to_string(),
            labels: BTreeMap::new(),
            mode: Mode::Replicated { replicas: 1 },
            task: TaskTemplate::new(image),
            update: UpdateConfig::default(),
            rollback: UpdateConfig::default(),
            endpoint: EndpointSpec::default(),
        }
    }

    /// Checks a spec as the leader takes it: the first problem, in Docker's words
    /// where Docker has some.
    pub fn validate(&self) -> Result<(), SpecError> {
        check_name(&self.name)?;
        check_mode(&self.mode)?;
        if self.task.image.trim().is_empty() {
            return Err(SpecError::NoImage);
        }
        let global = matches!(self.mode, Mode::Global | Mode::GlobalJob);
        if global && self.task.placement.max_replicas > 0 {
            return Err(SpecError::MaxReplicasGlobal);
        }
        for u in [&self.update, &self.rollback] {
            if u.max_failure_ppm > 1_000_000 {
                return Err(SpecError::FailureRatio);
            }
        }
        self.check_endpoint()
    }

    /// Docker's rules for ports: dnsrr cannot publish through the mesh, and a port is
    /// published once.
    fn check_endpoint(&self) -> Result<(), SpecError> {
        let ports = &self.endpoint.ports;
        if self.endpoint.mode == EndpointMode::Dnsrr
            && ports.iter().any(|p| p.mode == PublishMode::Ingress)
        {
            return Err(SpecError::DnsrrIngress);
        }
        for (i, p) in ports.iter().enumerate() {
            if p.target == 0 {
                return Err(SpecError::Publish(
                    format!("{}", p.published),
                    "no target port".into(),
                ));
            }
            if p.mode == PublishMode::Host && p.published == 0 {
                return Err(SpecError::Publish(
                    format!("target={},mode=host", p.target),
                    "host mode needs a published port".into(),
                ));
            }
            let dup = ports[..i].iter().any(|q| {
                p.published != 0 && q.published == p.published && q.protocol == p.protocol
            });
            if dup {
                return Err(SpecError::DuplicatePort(p.published));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for n in &self.task.networks {
            if !seen.insert(n) {
                return Err(SpecError::DuplicateNetwork(n.clone()));
            }
        }
        Ok(())
    }

    /// Whether the `{{.Task.Slot}}`-style placeholders in `--hostname` and `--env`
    /// values are all known. The CLI asks, so a typo is a usage error; the leader does
    /// not (a spec it once took must apply on every manager for good), and the agent
    /// leaves what it does not know as written.
    pub fn check_placeholders(&self) -> Result<(), SpecError> {
        let c = &self.task.container;
        let env_values = c
            .env
            .iter()
            .map(|e| e.split_once('=').map_or("", |(_, v)| v));
        for (flag, s) in c
            .hostname
            .iter()
            .map(|h| ("--hostname", h.as_str()))
            .chain(env_values.map(|v| ("--env", v)))
        {
            check_template(s).map_err(|e| SpecError::Template(flag, e))?;
        }
        Ok(())
    }
}

/// What a task's `--hostname` and `--env` may name, Docker's way: `{{.Task.Slot}}`.
pub const PLACEHOLDERS: [&str; 7] = [
    ".Service.ID",
    ".Service.Name",
    ".Node.ID",
    ".Node.Hostname",
    ".Task.ID",
    ".Task.Name",
    ".Task.Slot",
];

/// The placeholders of `s`: each `{{ ... }}`, trimmed, with where it starts and ends.
fn placeholders(s: &str) -> impl Iterator<Item = (usize, usize, &str)> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let open = at + s[at..].find("{{")?;
        let close = open + 2 + s[open + 2..].find("}}")?;
        at = close + 2;
        Some((open, close + 2, s[open + 2..close].trim()))
    })
}

/// Every `{{ ... }}` in `s` is one of [`PLACEHOLDERS`], and none is left open.
pub fn check_template(s: &str) -> Result<(), String> {
    let mut end = 0;
    for (_, e, key) in placeholders(s) {
        if !PLACEHOLDERS.contains(&key) {
            return Err(format!(
                "unknown placeholder {{{{{key}}}}} in {s:?}: use {}",
                PLACEHOLDERS.join(", ")
            ));
        }
        end = e;
    }
    if s[end..].contains("{{") {
        return Err(format!("{{{{ without }}}} in {s:?}"));
    }
    Ok(())
}

/// `s` with each known `{{ .Placeholder }}` replaced by `value(placeholder)`; anything
/// else is left as written.
pub fn expand(s: &str, value: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut done = 0;
    for (open, close, key) in placeholders(s) {
        if let Some(v) = PLACEHOLDERS.contains(&key).then(|| value(key)).flatten() {
            out.push_str(&s[done..open]);
            out.push_str(&v);
            done = close;
        }
    }
    out.push_str(&s[done..]);
    out
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("invalid name {0:?}: a service name is 1 to {MAX_NAME} letters, digits and dashes, starting and ending with a letter or digit")]
    Name(String),
    #[error("ContainerSpec: image reference must be provided")]
    NoImage,
    #[error("replicas {0} is over the limit of {MAX_REPLICAS}")]
    TooManyReplicas(u64),
    #[error("max-concurrent must be at least 1")]
    NoConcurrency,
    #[error("replicas-max-per-node can only be used with replicated or replicated-job mode")]
    MaxReplicasGlobal,
    #[error("TaskSpec: update-maxfailureratio cannot be less than 0 or bigger than 1")]
    FailureRatio,
    #[error("{0}")]
    Constraint(#[from] super::constraint::ConstraintError),
    #[error("{0}: {1}")]
    Template(&'static str, String),
    #[error("invalid publish {0:?}: {1}")]
    Publish(String, String),
    #[error("EndpointSpec: port published with ingress mode can't be used with dnsrr mode")]
    DnsrrIngress,
    #[error("EndpointSpec: duplicate published ports provided ({0})")]
    DuplicatePort(u16),
    #[error("network {0} is named twice")]
    DuplicateNetwork(String),
}

/// Docker's rule for service names: a DNS label.
pub fn check_name(name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(SpecError::Name(name.to_string()))
    }
}

pub fn check_mode(mode: &Mode) -> Result<(), SpecError> {
    match mode {
        Mode::Replicated { replicas }
        | Mode::ReplicatedJob {
            total: replicas, ..
        } if *replicas > MAX_REPLICAS => Err(SpecError::TooManyReplicas(*replicas)),
        Mode::ReplicatedJob {
            max_concurrent: 0, ..
        } => Err(SpecError::NoConcurrency),
        _ => Ok(()),
    }
}

/// Parses `--constraint` values, naming the first bad one.
pub fn parse_constraints(raw: &[String]) -> Result<Vec<Constraint>, SpecError> {
    raw.iter()
        .map(|c| Constraint::parse(c).map_err(SpecError::from))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels() {
        for ok in ["web", "my-web-1", "a", &"x".repeat(63)] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", "-web", "web-", "we_b", "web.1", "wéb", &"x".repeat(64)] {
            let e = check_name(bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid name"), "{bad}: {e}");
        }
    }

    #[test]
    fn modes_are_bounded() {
        assert_eq!(check_mode(&Mode::Replicated { replicas: 0 }), Ok(()));
        assert_eq!(
            check_mode(&Mode::Replicated {
                replicas: MAX_REPLICAS + 1
            }),
            Err(SpecError::TooManyReplicas(MAX_REPLICAS + 1))
        );
        assert_eq!(
            check_mode(&Mode::ReplicatedJob {
                max_concurrent: 0,
                total: 3
            }),
            Err(SpecError::NoConcurrency)
        );
        assert_eq!(
            Mode::ReplicatedJob {
                max_concurrent: 1,
                total: 1
            }
            .name(),
            "replicated job"
        );
        assert!(Mode::GlobalJob.is_job() && !Mode::Global.is_job());
    }

    #[test]
    fn a_new_spec_has_dockers_defaults_and_validates() {
        let s = ServiceSpec::new("web", "nginx:alpine");
        assert_eq!(s.mode, Mode::Replicated { replicas: 1 });
        assert_eq!(s.task.restart.delay_ms, 5_000);
        assert_eq!(s.task.restart.condition, RestartCondition::Any);
        assert_eq!(s.task.stop_grace_ms, 10_000);
        assert_eq!(s.update.parallelism, 1);
        assert_eq!(s.update.monitor_ms, 5_000);
        assert_eq!(s.update.failure_action, FailureAction::Pause);
        assert_eq!(s.rollback.order, UpdateOrder::StopFirst);
        assert_eq!(s.validate(), Ok(()));

        let mut bad = s.clone();
        bad.task.image = " ".into();
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "ContainerSpec: image reference must be provided"
        );
        let mut bad = s.clone();
        bad.rollback.max_failure_ppm = 1_000_001;
        assert_eq!(bad.validate(), Err(SpecError::FailureRatio));
        let mut bad = s;
        bad.name = "my_web".into();
        assert!(matches!(bad.validate(), Err(SpecError::Name(_))));
    }

    #[test]
    fn constraints_name_the_bad_one() {
        let raw = vec!["node.role==manager".to_string(), "node.role".to_string()];
        assert_eq!(
            parse_constraints(&raw).unwrap_err().to_string(),
            "constraint expected one operator from ==, !="
        );
        assert_eq!(parse_constraints(&raw[..1]).unwrap().len(), 1);
    }
}

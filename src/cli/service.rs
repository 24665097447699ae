//! `swarmlet service ...`: replicated and global services (managers only).
//!
//! Durations (`--update-delay 10s`), sizes (`--limit-memory 64M`) and specs such as
//! `--publish 80:80/tcp` stay strings here; the resolve step parses them and names the flag
//! when one is wrong.

use std::process::ExitCode;

use argh::{FromArgValue, FromArgs};

use super::Global;

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand, name = "service")]
/// Manage services (managers only).
pub struct ServiceCommand {
    #[argh(subcommand)]
    pub command: ServiceSubcommand,
}

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand)]
pub enum ServiceSubcommand {
    Create(ServiceCreate),
    Ls(ServiceLs),
    Ps(ServicePs),
    Inspect(ServiceInspect),
    Scale(ServiceScale),
    Update(ServiceUpdate),
    Rollback(ServiceRollback),
    Rm(ServiceRm),
    Logs(ServiceLogs),
}

/// How many tasks a service runs.
#[derive(FromArgValue, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// --replicas tasks spread over the eligible nodes
    Replicated,
    /// one task on every eligible node
    Global,
    /// --replicas tasks run to completion, --max-concurrent at a time
    #[argh(name = "replicated-job")]
    ReplicatedJob,
    /// one task run to completion on every eligible node
    #[argh(name = "global-job")]
    GlobalJob,
}

/// When a task's container is restarted.
#[derive(FromArgValue, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartCondition {
    None,
    #[argh(name = "on-failure")]
    OnFailure,
    Any,
}

/// What a rolling update does when a new task fails.
#[derive(FromArgValue, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureAction {
    Pause,
    Continue,
    Rollback,
}

/// Whether an old task stops before its replacement starts.
#[derive(FromArgValue, Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateOrder {
    #[argh(name = "stop-first")]
    StopFirst,
    #[argh(name = "start-first")]
    StartFirst,
}

/// How a service's name resolves inside its networks.
#[derive(FromArgValue, Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointMode {
    /// one virtual IP, load-balanced by IPVS
    Vip,
    /// DNS round robin over the task IPs
    Dnsrr,
}

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand, name = "create")]
/// Create a service.
pub struct ServiceCreate {
    /// service name (default: generated)
    #[argh(option)]
    pub name: Option<String>,

    /// replicated, global, replicated-job or global-job (default replicated)
    #[argh(option)]
    pub mode: Option<Mode>,

    /// number of tasks in replicated mode (default 1)
    #[argh(option)]
    pub replicas: Option<String>,

    /// most tasks of a replicated job running at once (default: --replicas)
    #[argh(option)]
    pub max_concurrent: Option<u64>,

    /// most tasks of this service on one node (default 0: no limit)
    #[argh(option)]
    pub replicas_max_per_node: Option<u64>,

    /// overlay network to attach to (repeatable)
    #[argh(option)]
    pub network: Vec<String>,

    /// publish a port on every node, PUBLISHED:TARGET[/tcp|/udp] (repeatable)
    #[argh(option, short = 'p')]
    pub publish: Vec<String>,

    /// placement constraint, e.g. node.role==worker or node.labels.storage==ssd (repeatable)
    #[argh(option)]
    pub constraint: Vec<String>,

    /// placement preference, spread=node.labels.NAME (repeatable)
    #[argh(option)]
    pub placement_pref: Vec<String>,

    /// environment variable, KEY=VALUE (repeatable)
    #[argh(option, short = 'e')]
    pub env: Vec<String>,

    /// service label, KEY=VALUE (repeatable)
    #[argh(option, short = 'l')]
    pub label: Vec<String>,

    /// container label, KEY=VALUE (repeatable)
    #[argh(option)]
    pub container_label: Vec<String>,

    /// mount, type=bind|volume|tmpfs,source=..,target=..[,readonly] (repeatable)
    #[argh(option)]
    pub mount: Vec<String>,

    /// working directory inside the container
    #[argh(option, short = 'w')]
    pub workdir: Option<String>,

    /// user inside the container, NAME|UID[:GID]
    #[argh(option, short = 'u')]
    pub user: Option<String>,

    /// overwrite the image's entrypoint
    #[argh(option)]
    pub entrypoint: Option<String>,

    /// container hostname
    #[argh(option)]
    pub hostname: Option<String>,

    /// vip or dnsrr (default vip)
    #[argh(option)]
    pub endpoint_mode: Option<EndpointMode>,

    /// none, on-failure or any (default any)
    #[argh(option)]
    pub restart_condition: Option<RestartCondition>,

    /// wait between restarts, e.g. 5s (default 5s)
    #[argh(option)]
    pub restart_delay: Option<String>,

    /// give up after this many restarts (default: never)
    #[argh(option)]
    pub restart_max_attempts: Option<u64>,

    /// window in which restarts are counted, e.g. 1m
    #[argh(option)]
    pub restart_window: Option<String>,

    /// tasks updated at once in a rolling update (default 1; 0 = all)
    #[argh(option)]
    pub update_parallelism: Option<u64>,

    /// wait between updating tasks, e.g. 10s (default 0s)
    #[argh(option)]
    pub update_delay: Option<String>,

    /// pause, continue or rollback when an updated task fails (default pause)
    #[argh(option)]
    pub update_failure_action: Option<FailureAction>,

    /// how long to watch an updated task for failure, e.g. 5s (default 5s)
    #[argh(option)]
    pub update_monitor: Option<String>,

    /// failures tolerated during an update, 0 to 1 (default 0)
    #[argh(option)]
    pub update_max_failure_ratio: Option<String>,

    /// stop-first or start-first (default stop-first)
    #[argh(option)]
    pub update_order: Option<UpdateOrder>,

    /// tasks rolled back at once (default 1; 0 = all)
    #[argh(option)]
    pub rollback_parallelism: Option<u64>,

    /// wait between rolling back tasks (default 0s)
    #[argh(option)]
    pub rollback_delay: Option<String>,

    /// pause or continue when a rolled back task fails (default pause)
    #[argh(option)]
    pub rollback_failure_action: Option<FailureAction>,

    /// how long to watch a rolled back task for failure (default 5s)
    #[argh(option)]
    pub rollback_monitor: Option<String>,

    /// failures tolerated during a rollback, 0 to 1 (default 0)
    #[argh(option)]
    pub rollback_max_failure_ratio: Option<String>,

    /// stop-first or start-first (default stop-first)
    #[argh(option)]
    pub rollback_order: Option<UpdateOrder>,

    /// time between SIGTERM and SIGKILL when a task stops, e.g. 10s (default 10s)
    #[argh(option)]
    pub stop_grace_period: Option<String>,

    /// signal that stops a task (default the image's, else SIGTERM)
    #[argh(option)]
    pub stop_signal: Option<String>,

    /// CPU limit per task, e.g. 0.5
    #[argh(option)]
    pub limit_cpu: Option<String>,

    /// memory limit per task, e.g. 64M
    #[argh(option)]
    pub limit_memory: Option<String>,

    /// most processes per task
    #[argh(option)]
    pub limit_pids: Option<i64>,

    /// CPU a node must have free to run a task, e.g. 0.25
    #[argh(option)]
    pub reserve_cpu: Option<String>,

    /// memory a node must have free to run a task, e.g. 32M
    #[argh(option)]
    pub reserve_memory: Option<String>,

    /// health check command (run with /bin/sh -c)
    #[argh(option)]
    pub health_cmd: Option<String>,

    /// time between health checks, e.g. 30s
    #[argh(option)]
    pub health_interval: Option<String>,

    /// longest a health check may run, e.g. 30s
    #[argh(option)]
    pub health_timeout: Option<String>,

    /// failures in a row that make a task unhealthy
    #[argh(option)]
    pub health_retries: Option<u32>,

    /// grace after start during which failures do not count
    #[argh(option)]
    pub health_start_period: Option<String>,

    /// no health check, whatever the image says
    #[argh(switch)]
    pub no_healthcheck: bool,

    /// host device for the tasks, HOST[:CONTAINER][:rwm] (repeatable)
    #[argh(option)]
    pub device: Vec<String>,

    /// add a Linux capability (repeatable)
    #[argh(option)]
    pub cap_add: Vec<String>,

    /// drop a Linux capability (repeatable)
    #[argh(option)]
    pub cap_drop: Vec<String>,

    /// return at once instead of waiting for the tasks to run
    #[argh(switch, short = 'd')]
    pub detach: bool,

    /// print only the service id
    #[argh(switch, short = 'q')]
    pub quiet: bool,

    /// image reference, e.g. nginx:1.25
    #[argh(positional)]
    pub image: String,

    /// command and arguments for the container (everything after IMAGE)
    #[argh(positional, greedy)]
    pub args: Vec<String>,
}

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand, name = "ls")]
/// List services with their running/desired task counts.
pub struct ServiceLs {
    /// print service ids only
    #[argh(switch, short = 'q')]
    pub quiet: bool,

    /// output format: table (default) or json (one object per line)
    #[argh(option)]
    pub format: Option<String>,

    /// filter, KEY=VALUE: id, name, label, mode (repeatable)
    #[argh(option, short = 'f')]
    pub filter: Vec<String>,
}

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand, name = "ps")]
/// List the tasks of services.
pub struct ServicePs {
    /// filter, KEY=VALUE: id, name, node, desired-state (repeatable)
    #[argh(option, short = 'f')]
    pub filter: Vec<String>,

    /// do not map ids to names
    #[argh(switch)]
    pub no_resolve: bool,

    /// do not truncate ids and errors
    #[argh(switch)]
    pub no_trunc: bool,

    /// print task ids only
    #[argh(switch, short = 'q')]
    pub quiet: bool,

    /// output format: table (default) or json (one object per line)
    #[argh(option)]
    pub format: Option<String>,

    /// service ids or names
    #[argh(positional)]
    pub services: Vec<String>,
}

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand, name = "inspect")]
/// Show details of services.
pub struct ServiceInspect {
    /// human-readable output instead of JSON
    #[argh(switch)]
    pub pretty: bool,

    /// service ids or names
    #[argh(positional)]
    pub services: Vec<String>,
}

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand, name = "scale")]
/// Set the replica count of replicated services.
pub struct ServiceScale {
    /// return at once instead of waiting for the tasks to run
    #[argh(switch, short = 'd')]
    pub detach: bool,

    /// SERVICE=REPLICAS pairs
    #[argh(positional)]
    pub scales: Vec<String>,
}

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand, name = "update")]
/// Change a service; tasks are replaced by a rolling update.
pub struct ServiceUpdate {
    /// new image reference
    #[argh(option)]
    pub image: Option<String>,

    /// new command and arguments, one shell-quoted string
    #[argh(option)]
    pub args: Option<String>,

    /// number of tasks in replicated mode
    #[argh(option)]
    pub replicas: Option<String>,

    /// job tasks run at once (replicated-job mode)
    #[argh(option)]
    pub max_concurrent: Option<u64>,

    /// most tasks of this service on one node (0: no limit)
    #[argh(option)]
    pub replicas_max_per_node: Option<u64>,

    /// add or replace an environment variable, KEY=VALUE (repeatable)
    #[argh(option)]
    pub env_add: Vec<String>,

    /// remove an environment variable, KEY (repeatable)
    #[argh(option)]
    pub env_rm: Vec<String>,

    /// add or replace a service label, KEY=VALUE (repeatable)
    #[argh(option)]
    pub label_add: Vec<String>,

    /// remove a service label, KEY (repeatable)
    #[argh(option)]
    pub label_rm: Vec<String>,

    /// add or replace a container label, KEY=VALUE (repeatable)
    #[argh(option)]
    pub container_label_add: Vec<String>,

    /// remove a container label, KEY (repeatable)
    #[argh(option)]
    pub container_label_rm: Vec<String>,

    /// add a placement constraint (repeatable)
    #[argh(option)]
    pub constraint_add: Vec<String>,

    /// remove a placement constraint (repeatable)
    #[argh(option)]
    pub constraint_rm: Vec<String>,

    /// add a placement preference, spread=node.labels.NAME (repeatable)
    #[argh(option)]
    pub placement_pref_add: Vec<String>,

    /// remove a placement preference, spread=node.labels.NAME (repeatable)
    #[argh(option)]
    pub placement_pref_rm: Vec<String>,

    /// add a Linux capability (repeatable)
    #[argh(option)]
    pub cap_add: Vec<String>,

    /// drop a Linux capability (repeatable)
    #[argh(option)]
    pub cap_drop: Vec<String>,

    /// add a published port, PUBLISHED:TARGET[/tcp|/udp] (repeatable)
    #[argh(option)]
    pub publish_add: Vec<String>,

    /// remove a published port, PUBLISHED[/tcp|/udp] (repeatable)
    #[argh(option)]
    pub publish_rm: Vec<String>,

    /// attach to an overlay network (repeatable)
    #[argh(option)]
    pub network_add: Vec<String>,

    /// detach from an overlay network (repeatable)
    #[argh(option)]
    pub network_rm: Vec<String>,

    /// add a mount, type=..,source=..,target=.. (repeatable)
    #[argh(option)]
    pub mount_add: Vec<String>,

    /// remove a mount by its target path (repeatable)
    #[argh(option)]
    pub mount_rm: Vec<String>,

    /// working directory inside the container
    #[argh(option, short = 'w')]
    pub workdir: Option<String>,

    /// user inside the container, NAME|UID[:GID]
    #[argh(option, short = 'u')]
    pub user: Option<String>,

    /// vip or dnsrr
    #[argh(option)]
    pub endpoint_mode: Option<EndpointMode>,

    /// none, on-failure or any
    #[argh(option)]
    pub restart_condition: Option<RestartCondition>,

    /// wait between restarts, e.g. 5s
    #[argh(option)]
    pub restart_delay: Option<String>,

    /// give up after this many restarts
    #[argh(option)]
    pub restart_max_attempts: Option<u64>,

    /// window in which restarts are counted, e.g. 1m
    #[argh(option)]
    pub restart_window: Option<String>,

    /// tasks updated at once (0 = all)
    #[argh(option)]
    pub update_parallelism: Option<u64>,

    /// wait between update batches, e.g. 10s
    #[argh(option)]
    pub update_delay: Option<String>,

    /// pause, continue or rollback when an updated task fails
    #[argh(option)]
    pub update_failure_action: Option<FailureAction>,

    /// how long to watch an updated task for failure, e.g. 5s
    #[argh(option)]
    pub update_monitor: Option<String>,

    /// failures tolerated during an update, 0 to 1
    #[argh(option)]
    pub update_max_failure_ratio: Option<String>,

    /// stop-first or start-first
    #[argh(option)]
    pub update_order: Option<UpdateOrder>,

    /// tasks rolled back at once (0 = all)
    #[argh(option)]
    pub rollback_parallelism: Option<u64>,

    /// wait between rolling back tasks
    #[argh(option)]
    pub rollback_delay: Option<String>,

    /// pause or continue when a rolled back task fails
    #[argh(option)]
    pub rollback_failure_action: Option<FailureAction>,

    /// how long to watch a rolled back task for failure
    #[argh(option)]
    pub rollback_monitor: Option<String>,

    /// failures tolerated during a rollback, 0 to 1
    #[argh(option)]
    pub rollback_max_failure_ratio: Option<String>,

    /// stop-first or start-first
    #[argh(option)]
    pub rollback_order: Option<UpdateOrder>,

    /// signal that stops a task
    #[argh(option)]
    pub stop_signal: Option<String>,

    /// most processes per task
    #[argh(option)]
    pub limit_pids: Option<i64>,

    /// health check command (run with /bin/sh -c)
    #[argh(option)]
    pub health_cmd: Option<String>,

    /// time between health checks
    #[argh(option)]
    pub health_interval: Option<String>,

    /// longest a health check may run
    #[argh(option)]
    pub health_timeout: Option<String>,

    /// failures in a row that make a task unhealthy
    #[argh(option)]
    pub health_retries: Option<u32>,

    /// grace after start during which failures do not count
    #[argh(option)]
    pub health_start_period: Option<String>,

    /// no health check, whatever the image says
    #[argh(switch)]
    pub no_healthcheck: bool,

    /// overwrite the image's entrypoint
    #[argh(option)]
    pub entrypoint: Option<String>,

    /// container hostname
    #[argh(option)]
    pub hostname: Option<String>,

    /// go back to the previous spec (as `service rollback`)
    #[argh(switch)]
    pub rollback: bool,

    /// return at once instead of waiting for the tasks to run
    #[argh(switch, short = 'd')]
    pub detach: bool,

    /// print nothing but errors
    #[argh(switch, short = 'q')]
    pub quiet: bool,

    /// time between SIGTERM and SIGKILL when a task stops, e.g. 10s
    #[argh(option)]
    pub stop_grace_period: Option<String>,

    /// CPU limit per task, e.g. 0.5
    #[argh(option)]
    pub limit_cpu: Option<String>,

    /// memory limit per task, e.g. 64M
    #[argh(option)]
    pub limit_memory: Option<String>,

    /// CPU a node must have free to run a task
    #[argh(option)]
    pub reserve_cpu: Option<String>,

    /// memory a node must have free to run a task
    #[argh(option)]
    pub reserve_memory: Option<String>,

    /// replace tasks even if nothing changed
    #[argh(switch)]
    pub force: bool,

    /// service id or name
    #[argh(positional)]
    pub service: String,
}

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand, name = "rollback")]
/// Go back to a service's previous spec, by a rolling update.
pub struct ServiceRollback {
    /// return at once instead of waiting for the tasks to run
    #[argh(switch, short = 'd')]
    pub detach: bool,

    /// print nothing but errors
    #[argh(switch, short = 'q')]
    pub quiet: bool,

    /// service id or name
    #[argh(positional)]
    pub service: String,
}

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand, name = "rm")]
/// Remove services and their tasks.
pub struct ServiceRm {
    /// service ids or names
    #[argh(positional)]
    pub services: Vec<String>,
}

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand, name = "logs")]
/// Print the logs of every task of a service, or of one task, gathered from every node.
pub struct ServiceLogs {
    /// keep streaming new lines, from every node that answers, until interrupted
    #[argh(switch, short = 'f')]
    pub follow: bool,

    /// lines from the end of each task's log: a number, or all (default; so is -1)
    #[argh(option, short = 'n')]
    pub tail: Option<String>,

    /// only lines since this time, RFC 3339 or relative (e.g. 10m)
    #[argh(option)]
    pub since: Option<String>,

    /// prefix each line with its timestamp
    #[argh(switch, short = 't')]
    pub timestamps: bool,

    /// leave task ids out of the line prefixes
    #[argh(switch)]
    pub no_task_ids: bool,

    /// print whole task ids
    #[argh(switch)]
    pub no_trunc: bool,

    /// print service and node ids, not names, in the line prefixes
    #[argh(switch)]
    pub no_resolve: bool,

    /// print the lines alone, without prefixes
    #[argh(switch)]
    pub raw: bool,

    /// service id or name, or a task id
    #[argh(positional)]
    pub service: String,
}

pub fn run(global: &Global, cmd: ServiceCommand) -> anyhow::Result<ExitCode> {
    match cmd.command {
        ServiceSubcommand::Create(c) => super::service_run::create(global, c),
        ServiceSubcommand::Ls(c) => super::service_show::ls(global, c),
        ServiceSubcommand::Ps(c) => super::service_show::ps(global, c),
        ServiceSubcommand::Inspect(c) => super::service_show::inspect(global, c),
        ServiceSubcommand::Scale(c) => super::service_run::scale(global, c),
        ServiceSubcommand::Update(c) => super::service_run::update(global, c),
        ServiceSubcommand::Rollback(c) => super::service_run::rollback(global, c),
        ServiceSubcommand::Rm(c) => super::service_run::rm(global, c),
        ServiceSubcommand::Logs(c) => super::service_logs::logs(global, c),
    }
}

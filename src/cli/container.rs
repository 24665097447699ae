//! Standalone containers on this node, outside any service: `run`, `ps`, `stop`, `kill`,
//! `rm`, `inspect`, `exec`, `logs`. Their bodies are dispatched from `cli::run`.

use argh::FromArgs;

#[derive(FromArgs, Debug, Default, PartialEq)]
#[argh(subcommand, name = "run")]
/// Create and start a container on this node.
pub struct RunCommand {
    /// container name (default: generated)
    #[argh(option)]
    pub name: Option<String>,

    /// run in the background and print the container id
    #[argh(switch, short = 'd')]
    pub detach: bool,

    /// keep stdin open
    #[argh(switch, short = 'i')]
    pub interactive: bool,

    /// allocate a pseudo-terminal
    #[argh(switch, short = 't')]
    pub tty: bool,

    /// remove the container when it exits
    #[argh(switch)]
    pub rm: bool,

    /// environment variable, KEY=VALUE (repeatable)
    #[argh(option, short = 'e')]
    pub env: Vec<String>,

    /// container label, KEY=VALUE (repeatable)
    #[argh(option, short = 'l')]
    pub label: Vec<String>,

    /// publish a port on this node, [IP:]HOST:CONTAINER[/tcp|/udp] (repeatable)
    #[argh(option, short = 'p')]
    pub publish: Vec<String>,

    /// bind mount, HOST:CONTAINER[:ro] (repeatable)
    #[argh(option, short = 'v')]
    pub volume: Vec<String>,

    /// mount, type=bind|volume|tmpfs,source=..,target=..[,readonly] (repeatable)
    #[argh(option)]
    pub mount: Vec<String>,

    /// attachable overlay network, host or none (default: an isolated netns with no links)
    #[argh(option)]
    pub network: Option<String>,

    /// container hostname
    #[argh(option, short = 'h')]
    pub hostname: Option<String>,

    /// working directory inside the container
    #[argh(option, short = 'w')]
    pub workdir: Option<String>,

    /// user inside the container, NAME|UID[:GID]
    #[argh(option, short = 'u')]
    pub user: Option<String>,

    /// override the image's entrypoint
    #[argh(option)]
    pub entrypoint: Option<String>,

    /// restart policy: no, on-failure[:MAX], always, unless-stopped (default no)
    #[argh(option)]
    pub restart: Option<String>,

    /// memory limit, e.g. 64M
    #[argh(option, short = 'm')]
    pub memory: Option<String>,

    /// CPU limit, e.g. 0.5
    #[argh(option)]
    pub cpus: Option<String>,

    /// image reference, e.g. busybox:1.36
    #[argh(positional)]
    pub image: String,

    /// command and arguments for the container (everything after IMAGE)
    #[argh(positional, greedy)]
    pub args: Vec<String>,
}

#[derive(FromArgs, Debug, Default, PartialEq)]
#[argh(subcommand, name = "ps")]
/// List containers on this node.
pub struct PsCommand {
    /// include stopped containers
    #[argh(switch, short = 'a')]
    pub all: bool,

    /// print container ids only
    #[argh(switch, short = 'q')]
    pub quiet: bool,

    /// filter, KEY=VALUE: id, name, label, status (repeatable)
    #[argh(option, short = 'f')]
    pub filter: Vec<String>,

    /// show only the N most recently created containers
    #[argh(option, short = 'n')]
    pub last: Option<u64>,

    /// do not truncate ids and commands
    #[argh(switch)]
    pub no_trunc: bool,
}

#[derive(FromArgs, Debug, Default, PartialEq)]
#[argh(subcommand, name = "stop")]
/// Stop containers: SIGTERM, then SIGKILL after a grace period.
pub struct StopCommand {
    /// seconds to wait before SIGKILL (default 10)
    #[argh(option, short = 't')]
    pub time: Option<u64>,

    /// container ids or names
    #[argh(positional)]
    pub containers: Vec<String>,
}

#[derive(FromArgs, Debug, Default, PartialEq)]
#[argh(subcommand, name = "kill")]
/// Send a signal to containers.
pub struct KillCommand {
    /// signal name or number (default KILL)
    #[argh(option, short = 's')]
    pub signal: Option<String>,

    /// container ids or names
    #[argh(positional)]
    pub containers: Vec<String>,
}

#[derive(FromArgs, Debug, Default, PartialEq)]
#[argh(subcommand, name = "rm")]
/// Remove containers.
pub struct RmCommand {
    /// kill and remove running containers
    #[argh(switch, short = 'f')]
    pub force: bool,

    /// also remove anonymous volumes
    #[argh(switch, short = 'v')]
    pub volumes: bool,

    /// container ids or names
    #[argh(positional)]
    pub containers: Vec<String>,
}

#[derive(FromArgs, Debug, Default, PartialEq)]
#[argh(subcommand, name = "inspect")]
/// Show details of containers, tasks, services, nodes, networks or images, as JSON.
pub struct InspectCommand {
    /// only objects of this type: container, task, service, node, network or image
    #[argh(option, long = "type")]
    pub kind: Option<String>,

    /// object ids or names
    #[argh(positional)]
    pub objects: Vec<String>,
}

#[derive(FromArgs, Debug, Default, PartialEq)]
#[argh(subcommand, name = "exec")]
/// Run a command in a running container.
pub struct ExecCommand {
    /// run in the background
    #[argh(switch, short = 'd')]
    pub detach: bool,

    /// keep stdin open
    #[argh(switch, short = 'i')]
    pub interactive: bool,

    /// allocate a pseudo-terminal
    #[argh(switch, short = 't')]
    pub tty: bool,

    /// environment variable, KEY=VALUE (repeatable)
    #[argh(option, short = 'e')]
    pub env: Vec<String>,

    /// user inside the container, NAME|UID[:GID]
    #[argh(option, short = 'u')]
    pub user: Option<String>,

    /// working directory inside the container
    #[argh(option, short = 'w')]
    pub workdir: Option<String>,

    /// container id or name
    #[argh(positional)]
    pub container: String,

    /// the command and its arguments (everything after CONTAINER)
    #[argh(positional, greedy)]
    pub command: Vec<String>,
}

#[derive(FromArgs, Debug, Default, PartialEq)]
#[argh(subcommand, name = "logs")]
/// Print a container's logs.
pub struct LogsCommand {
    /// keep streaming new lines
    #[argh(switch, short = 'f')]
    pub follow: bool,

    /// lines from the end of the log (default all)
    #[argh(option)]
    pub tail: Option<u64>,

    /// only lines since this time, RFC 3339 or relative (e.g. 10m)
    #[argh(option)]
    pub since: Option<String>,

    /// prefix each line with its timestamp
    #[argh(switch, short = 't')]
    pub timestamps: bool,

    /// container id or name
    #[argh(positional)]
    pub container: String,
}

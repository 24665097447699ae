//! The command line: what the user typed, and the dispatch to each command group.
//!
//! The argh structs in this module tree only parse (STYLE.md habit 14). Turning them into
//! requests (validating flag combinations, parsing durations, resolving names) is a separate
//! resolve step that each command grows when its body is written; its errors are
//! [`UsageError`]s that name the flag.
//!
//! Exit codes: 0 success, 1 the command failed, 2 usage error or command not built yet.

use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;

use argh::FromArgs;

pub mod argv;
pub mod cluster;
pub mod container;
pub mod debug;
pub mod filter;
pub mod host;
pub mod image;
pub mod info;
pub mod internal;
pub mod network;
pub mod node;
pub mod service;
pub mod service_logs;
pub mod service_run;
pub mod service_show;

/// Where the daemon listens for its local clients unless `--socket` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/swarmlet/swarmlet.sock";

/// Sends one request to the local daemon; a refusal becomes an error (exit 1).
pub fn call(global: &Global, req: &crate::api::Request) -> anyhow::Result<crate::api::Response> {
    match crate::api::call(&global.socket, req)? {
        crate::api::Response::Error(e) => Err(anyhow::anyhow!(e)),
        r => Ok(r),
    }
}

/// Prints the daemon's `Done` (or token) text; anything else is an unexpected answer.
pub fn print_done(r: crate::api::Response) -> anyhow::Result<ExitCode> {
    match r {
        crate::api::Response::Done(text) | crate::api::Response::Token(text) => {
            if !text.is_empty() {
                println!("{text}");
            }
            Ok(ExitCode::SUCCESS)
        }
        other => Err(anyhow::anyhow!(
            "unexpected answer from the daemon: {other:?}"
        )),
    }
}

/// Prints the daemon's `Json` document (`inspect`); anything else is an unexpected answer.
pub fn print_json(r: crate::api::Response) -> anyhow::Result<ExitCode> {
    match r {
        crate::api::Response::Json(j) => {
            println!("{j}");
            Ok(ExitCode::SUCCESS)
        }
        other => Err(anyhow::anyhow!(
            "unexpected answer from the daemon: {other:?}"
        )),
    }
}

/// Parses `ADDR[:PORT]` for a flag, the port defaulting to the cluster port.
pub fn parse_addr(flag: &str, s: &str) -> Result<std::net::SocketAddr, UsageError> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(std::net::SocketAddr::new(ip, crate::model::DEFAULT_PORT));
    }
    Err(UsageError(format!(
        "{flag}: {s:?} is not an IP address or IP:PORT (interface names are not supported yet)"
    )))
}

/// Where the daemon keeps its state unless `--data-dir` says otherwise.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/swarmlet";

/// Exit code for a usage error or a command that is not built yet.
pub const EXIT_USAGE: u8 = 2;

/// Exit code for a command that ran and failed.
pub const EXIT_FAILURE: u8 = 1;

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
/// Docker Swarm mode as one small static binary for edge and ARM hosts.
pub struct Swarmlet {
    /// print the version and exit
    #[argh(switch)]
    pub version: bool,

    /// the daemon's unix socket (default /run/swarmlet/swarmlet.sock)
    #[argh(option)]
    pub socket: Option<PathBuf>,

    #[argh(subcommand)]
    pub command: Option<Command>,
}

/// Options given before the command, shared by every command.
#[derive(Debug, Clone, PartialEq)]
pub struct Global {
    pub socket: PathBuf,
}

impl Global {
    pub fn from_args(args: &Swarmlet) -> Self {
        let socket = args
            .socket
            .clone()
            .or_else(|| std::env::var_os(crate::api::SOCKET_ENV).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
        Global { socket }
    }
}

// Parsed once per process, so the size of the biggest variant costs nothing; argh's derive
// cannot box a subcommand variant.
#[allow(clippy::large_enum_variant)]
#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand)]
pub enum Command {
    Daemon(cluster::DaemonCommand),
    Init(cluster::InitCommand),
    Join(cluster::JoinCommand),
    JoinToken(cluster::JoinTokenCommand),
    Leave(cluster::LeaveCommand),
    Info(info::InfoCommand),
    Node(node::NodeCommand),
    Service(service::ServiceCommand),
    Network(network::NetworkCommand),
    Image(image::ImageCommand),
    Run(container::RunCommand),
    Ps(container::PsCommand),
    Stop(container::StopCommand),
    Kill(container::KillCommand),
    Rm(container::RmCommand),
    Inspect(container::InspectCommand),
    Exec(container::ExecCommand),
    Logs(container::LogsCommand),
    Install(host::InstallCommand),
    Uninstall(host::UninstallCommand),
    Debug(debug::DebugCommand),
    RuntimeHelper(internal::RuntimeHelperCommand),
}

/// Runs one parsed command. The returned code is the process exit code on success; an error
/// is printed by main and mapped to a code by [`exit_code`].
pub fn run(global: &Global, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Daemon(cmd) => cluster::daemon(global, cmd),
        Command::Init(cmd) => cluster::init(global, cmd),
        Command::Join(cmd) => cluster::join(global, cmd),
        Command::JoinToken(cmd) => cluster::join_token(global, cmd),
        Command::Leave(cmd) => cluster::leave(global, cmd),
        Command::Info(cmd) => info::run(global, cmd),
        Command::Node(cmd) => node::run(global, cmd),
        Command::Service(cmd) => service::run(global, cmd),
        Command::Network(cmd) => network::run(global, cmd),
        Command::Image(cmd) => image::run(global, cmd),
        Command::Run(cmd) => container::run(global, cmd),
        Command::Ps(cmd) => container::ps(global, cmd),
        Command::Stop(cmd) => container::stop(global, cmd),
        Command::Kill(cmd) => container::kill(global, cmd),
        Command::Rm(cmd) => container::rm(global, cmd),
        Command::Inspect(cmd) => container::inspect(global, cmd),
        Command::Exec(cmd) => container::exec(global, cmd),
        Command::Logs(cmd) => container::logs(global, cmd),
        Command::Install(cmd) => host::install(global, cmd),
        Command::Uninstall(cmd) => host::uninstall(global, cmd),
        Command::Debug(cmd) => debug::run(global, cmd),
        Command::RuntimeHelper(cmd) => internal::run(cmd),
    }
}

/// The exit code for an error returned by [`run`]: 2 for usage errors and commands that are
/// not built yet, 1 for everything else.
pub fn exit_code(err: &anyhow::Error) -> ExitCode {
    if err.downcast_ref::<NotImplemented>().is_some() || err.downcast_ref::<UsageError>().is_some()
    {
        ExitCode::from(EXIT_USAGE)
    } else {
        ExitCode::from(EXIT_FAILURE)
    }
}

/// A command that parses but has no body yet. Never fake its output: say so and exit 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotImplemented {
    /// The command path as typed, e.g. `service ls`.
    pub command: &'static str,
}

impl fmt::Display for NotImplemented {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: not implemented yet", self.command)
    }
}

impl std::error::Error for NotImplemented {}

/// The error every command without a body returns.
pub fn not_implemented(command: &'static str) -> anyhow::Result<ExitCode> {
    Err(NotImplemented { command }.into())
}

/// Flags that parse but do not make sense together or have a bad value, found by a command's
/// resolve step. The message names the flag, e.g. `--replicas: not allowed with --mode global`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Swarmlet, argh::EarlyExit> {
        Swarmlet::from_args(&["swarmlet"], args)
    }

    #[test]
    fn version_needs_no_command() {
        let args = parse(&["--version"]).expect("--version parses");
        assert!(args.version);
        assert_eq!(args.command, None);
    }

    #[test]
    fn service_create_takes_image_and_trailing_args() {
        let args = parse(&[
            "service",
            "create",
            "--replicas",
            "3",
            "--name",
            "frontend",
            "--network",
            "mynet",
            "--publish",
            "80:80/tcp",
            "--constraint",
            "node.role==worker",
            "--env",
            "A=1",
            "frontend_image:latest",
            "python",
            "env.py",
            "--flag",
        ])
        .expect("service create parses");
        let Some(Command::Service(service)) = args.command else {
            panic!("expected service command, got {args:?}");
        };
        let service::ServiceSubcommand::Create(create) = service.command else {
            panic!("expected service create");
        };
        assert_eq!(create.replicas.as_deref(), Some("3"));
        assert_eq!(create.name.as_deref(), Some("frontend"));
        assert_eq!(create.network, ["mynet"]);
        assert_eq!(create.publish, ["80:80/tcp"]);
        assert_eq!(create.image, "frontend_image:latest");
        assert_eq!(create.args, ["python", "env.py", "--flag"]);
    }

    #[test]
    fn join_takes_token_then_address() {
        let args = parse(&["join", "SWLTKN-1-abc", "192.168.133.129:2377"]).expect("join parses");
        let Some(Command::Join(join)) = args.command else {
            panic!("expected join, got {args:?}");
        };
        assert_eq!(join.token, "SWLTKN-1-abc");
        assert_eq!(join.addr, "192.168.133.129:2377");
    }

    #[test]
    fn unknown_flag_is_named() {
        let err = parse(&["service", "ls", "--bogus"]).expect_err("unknown flag fails");
        assert!(err.status.is_err());
        assert!(err.output.contains("--bogus"), "{}", err.output);
    }

    #[test]
    fn unbuilt_commands_exit_2() {
        let parsed = parse(&["init", "--force-new-cluster"]).expect("parses");
        let global = Global::from_args(&parsed);
        let init = parsed.command.expect("a command");
        let err = run(&global, init).expect_err("--force-new-cluster is not built yet");
        assert_eq!(
            err.to_string(),
            "init --force-new-cluster: not implemented yet"
        );
        assert_eq!(exit_code(&err), ExitCode::from(EXIT_USAGE));
        assert_eq!(
            exit_code(&anyhow::anyhow!("boom")),
            ExitCode::from(EXIT_FAILURE)
        );
    }
}

//! `swarmlet runtime-helper ...`: not for people. The keeper runs as `runtime-helper
//! keeper DIR`, and itself runs `runtime-helper create ID --dir DIR` to start each
//! container; the daemon runs `runtime-helper exec` for `exec` and health checks (see
//! src/runtime/helper.rs for why libcontainer runs in a separate process).

use std::path::PathBuf;
use std::process::ExitCode;

use argh::FromArgs;

use crate::runtime::{helper, keeper};

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand, name = "runtime-helper")]
/// (internal) the container keeper and its libcontainer helper.
pub struct RuntimeHelperCommand {
    #[argh(subcommand)]
    pub command: HelperSubcommand,
}

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand)]
pub enum HelperSubcommand {
    Keeper(KeeperArgs),
    Create(CreateArgs),
    Exec(ExecArgs),
}

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand, name = "exec")]
/// run a process in container ID; exits with its status.
pub struct ExecArgs {
    /// container id
    #[argh(positional)]
    pub id: String,
    /// the containers directory
    #[argh(option)]
    pub dir: PathBuf,
    /// environment variable KEY=VALUE (repeatable)
    #[argh(option)]
    pub env: Vec<String>,
    /// working directory
    #[argh(option)]
    pub workdir: Option<String>,
    /// UID:GID to run as
    #[argh(option)]
    pub user: Option<String>,
    /// milliseconds after which the process is killed
    #[argh(option)]
    pub timeout_ms: Option<u64>,
    /// the command
    #[argh(positional, greedy)]
    pub command: Vec<String>,
}

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand, name = "keeper")]
/// run the keeper for a containers directory.
pub struct KeeperArgs {
    /// the containers directory
    #[argh(positional)]
    pub dir: PathBuf,
    /// take over from a keeper that re-executed itself (the file it left)
    #[argh(option)]
    pub handover: Option<PathBuf>,
    /// tests only: speak this keeper protocol version, as an older keeper would
    #[argh(option)]
    pub test_protocol_version: Option<u8>,
}

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand, name = "create")]
/// create and start container ID from DIR/ID/bundle; fds 3 and 4 are its stdout and stderr.
pub struct CreateArgs {
    /// container id
    #[argh(positional)]
    pub id: String,
    /// the containers directory
    #[argh(option)]
    pub dir: PathBuf,
}

/// Exit status of `exec` when the command could not be started at all.
pub const EXEC_FAILED: u8 = 126;

pub fn run(cmd: RuntimeHelperCommand) -> anyhow::Result<ExitCode> {
    // Started through /proc/self/exe, whose last component would be our name.
    crate::runtime::set_process_name();
    match cmd.command {
        HelperSubcommand::Keeper(a) => {
            keeper::run(
                &a.dir,
                &keeper::KeeperOptions {
                    handover: a.handover,
                    test_protocol_version: a.test_protocol_version,
                },
            )?;
            Ok(ExitCode::SUCCESS)
        }
        HelperSubcommand::Create(a) => {
            let pid = helper::create(
                &a.dir.join(keeper::RUNTIME_DIR),
                &a.id,
                &a.dir.join(&a.id).join("bundle"),
                3,
                4,
            )?;
            println!("{pid}");
            Ok(ExitCode::SUCCESS)
        }
        HelperSubcommand::Exec(a) => {
            let user = match a.user.as_deref() {
                None => None,
                Some(u) => {
                    let (uid, gid) = u.split_once(':').unwrap_or((u, "0"));
                    Some((
                        uid.parse()
                            .map_err(|_| anyhow::anyhow!("--user {u}: not UID:GID"))?,
                        gid.parse()
                            .map_err(|_| anyhow::anyhow!("--user {u}: not UID:GID"))?,
                    ))
                }
            };
            match helper::exec(
                &a.dir.join(keeper::RUNTIME_DIR),
                &a.id,
                a.command,
                a.env,
                a.workdir,
                user,
                a.timeout_ms.map(std::time::Duration::from_millis),
            ) {
                Ok(code) => Ok(ExitCode::from(
                    u8::try_from(code.clamp(0, 255)).unwrap_or(255),
                )),
                // 126, as Docker: the command could not be invoked.
                Err(e) => {
                    eprintln!("swarmlet: exec: {e:#}");
                    Ok(ExitCode::from(EXEC_FAILED))
                }
            }
        }
    }
}

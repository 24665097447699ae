//! `swarmlet runtime-helper ...`: not for people. The keeper runs as `runtime-helper
//! keeper DIR`, and itself runs `runtime-helper create|delete ID --dir DIR` for each
//! libcontainer operation (see src/runtime/helper.rs for why a separate process).

use std::path::PathBuf;
use std::process::ExitCode;

use argh::FromArgs;

use crate::runtime::{helper, keeper};

#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand, name = "runtime-helper")]
/// (internal) the container keeper and its libcontainer helper.
pub struct RuntimeHelperCommand {
    #[argh(subcommand)]
    pub command: HelperSubcommand,
}

#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand)]
pub enum HelperSubcommand {
    Keeper(KeeperArgs),
    Create(CreateArgs),
    Delete(DeleteArgs),
}

#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand, name = "keeper")]
/// run the keeper for a containers directory.
pub struct KeeperArgs {
    /// the containers directory
    #[argh(positional)]
    pub dir: PathBuf,
}

#[derive(FromArgs, Debug, PartialEq)]
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

#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand, name = "delete")]
/// delete container ID's runtime state and cgroups.
pub struct DeleteArgs {
    /// container id
    #[argh(positional)]
    pub id: String,
    /// the containers directory
    #[argh(option)]
    pub dir: PathBuf,
}

pub fn run(cmd: RuntimeHelperCommand) -> anyhow::Result<ExitCode> {
    match cmd.command {
        HelperSubcommand::Keeper(a) => {
            keeper::run(&a.dir)?;
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
        HelperSubcommand::Delete(a) => {
            helper::delete(&a.dir.join(keeper::RUNTIME_DIR), &a.id)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

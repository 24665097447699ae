//! `swarmlet image ...`: this node's image store (blobs by sha256, shared unpacked layers).

use std::path::PathBuf;
use std::process::ExitCode;

use argh::FromArgs;

use super::{not_implemented, Global};

#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand, name = "image")]
/// Manage images on this node.
pub struct ImageCommand {
    #[argh(subcommand)]
    pub command: ImageSubcommand,
}

#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand)]
pub enum ImageSubcommand {
    Pull(ImagePull),
    Ls(ImageLs),
    Rm(ImageRm),
    Load(ImageLoad),
    Prune(ImagePrune),
    Inspect(ImageInspect),
}

#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand, name = "pull")]
/// Pull an image from a registry.
pub struct ImagePull {
    /// platform to pull, OS/ARCH[/VARIANT] (default: this node's)
    #[argh(option)]
    pub platform: Option<String>,

    /// print the image id only
    #[argh(switch, short = 'q')]
    pub quiet: bool,

    /// image reference, e.g. nginx:1.25 or registry.local:5000/app@sha256:...
    #[argh(positional)]
    pub image: String,
}

#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand, name = "ls")]
/// List images.
pub struct ImageLs {
    /// print image ids only
    #[argh(switch, short = 'q')]
    pub quiet: bool,

    /// include untagged images
    #[argh(switch, short = 'a')]
    pub all: bool,

    /// show digests
    #[argh(switch)]
    pub digests: bool,

    /// do not truncate ids
    #[argh(switch)]
    pub no_trunc: bool,

    /// filter, KEY=VALUE: dangling, label, reference (repeatable)
    #[argh(option, short = 'f')]
    pub filter: Vec<String>,

    /// only images of this repository
    #[argh(positional)]
    pub repository: Option<String>,
}

#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand, name = "rm")]
/// Remove images.
pub struct ImageRm {
    /// remove even if a container uses it
    #[argh(switch, short = 'f')]
    pub force: bool,

    /// image ids or references
    #[argh(positional)]
    pub images: Vec<String>,
}

#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand, name = "load")]
/// Load images from a docker-save or OCI archive.
pub struct ImageLoad {
    /// archive to read (default: stdin)
    #[argh(option, short = 'i')]
    pub input: Option<PathBuf>,

    /// print nothing but errors
    #[argh(switch, short = 'q')]
    pub quiet: bool,
}

#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand, name = "prune")]
/// Remove unused images.
pub struct ImagePrune {
    /// remove all images no container uses, not only untagged ones
    #[argh(switch, short = 'a')]
    pub all: bool,

    /// filter, KEY=VALUE: until, label (repeatable)
    #[argh(option)]
    pub filter: Vec<String>,
}

#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand, name = "inspect")]
/// Show details of images.
pub struct ImageInspect {
    /// image ids or references
    #[argh(positional)]
    pub images: Vec<String>,
}

pub fn run(_global: &Global, cmd: ImageCommand) -> anyhow::Result<ExitCode> {
    match cmd.command {
        ImageSubcommand::Pull(_) => not_implemented("image pull"),
        ImageSubcommand::Ls(_) => not_implemented("image ls"),
        ImageSubcommand::Rm(_) => not_implemented("image rm"),
        ImageSubcommand::Load(_) => not_implemented("image load"),
        ImageSubcommand::Prune(_) => not_implemented("image prune"),
        ImageSubcommand::Inspect(_) => not_implemented("image inspect"),
    }
}

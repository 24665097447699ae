//! `swarmlet image ...`: this node's image store (blobs by sha256, shared unpacked layers).

use std::io::{IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use argh::FromArgs;

use super::filter::Filters;
use super::{call, not_implemented, print_done, print_json, Global, UsageError};
use crate::api::{ImageRequest, Request, Response};
use crate::image::oci::Platform;
use crate::image::pull::read_docker_config;
use crate::image::reference::Reference;
use crate::model::image::{Credentials, LayerState, Progress};
use crate::model::Digest;

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand, name = "image")]
/// Manage images on this node.
pub struct ImageCommand {
    #[argh(subcommand)]
    pub command: ImageSubcommand,
}

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
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
#[cfg_attr(test, derive(argh::ArgsInfo))]
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
#[cfg_attr(test, derive(argh::ArgsInfo))]
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

    /// filter, KEY=VALUE: dangling (true|false), reference (a REPO[:TAG] pattern, * and
    /// ? as wildcards) (repeatable)
    #[argh(option, short = 'f')]
    pub filter: Vec<String>,

    /// only images of this repository
    #[argh(positional)]
    pub repository: Option<String>,
}

#[derive(FromArgs, Debug, PartialEq)]
#[cfg_attr(test, derive(argh::ArgsInfo))]
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
#[cfg_attr(test, derive(argh::ArgsInfo))]
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
#[cfg_attr(test, derive(argh::ArgsInfo))]
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
#[cfg_attr(test, derive(argh::ArgsInfo))]
#[argh(subcommand, name = "inspect")]
/// Show details of images.
pub struct ImageInspect {
    /// image ids or references
    #[argh(positional)]
    pub images: Vec<String>,
}

pub fn run(global: &Global, cmd: ImageCommand) -> anyhow::Result<ExitCode> {
    match cmd.command {
        ImageSubcommand::Pull(c) => pull(global, c),
        ImageSubcommand::Ls(c) => ls(global, c),
        ImageSubcommand::Rm(c) => {
            if c.images.is_empty() {
                return Err(UsageError("image rm: name at least one image".into()).into());
            }
            print_done(call(
                global,
                &Request::Image(ImageRequest::Remove {
                    images: c.images,
                    force: c.force,
                }),
            )?)
        }
        ImageSubcommand::Load(c) => load(global, c),
        ImageSubcommand::Prune(c) => {
            if !c.filter.is_empty() {
                return not_implemented("image prune --filter");
            }
            print_done(call(
                global,
                &Request::Image(ImageRequest::Prune { all: c.all }),
            )?)
        }
        ImageSubcommand::Inspect(c) => {
            if c.images.is_empty() {
                return Err(UsageError("image inspect: name at least one image".into()).into());
            }
            print_json(call(
                global,
                &Request::Image(ImageRequest::Inspect { images: c.images }),
            )?)
        }
    }
}

/// Credentials for `registry` from the user's Docker-compatible config.json
/// (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`).
pub fn credentials_for(registry: &str) -> anyhow::Result<Option<Credentials>> {
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")));
    let Some(dir) = dir else { return Ok(None) };
    let auths = read_docker_config(&dir.join("config.json")).map_err(anyhow::Error::msg)?;
    Ok(auths.get(registry).cloned())
}

fn pull(global: &Global, c: ImagePull) -> anyhow::Result<ExitCode> {
    let r = Reference::parse(&c.image).map_err(|e| UsageError(e.to_string()))?;
    if let Some(p) = &c.platform {
        if Platform::parse(p).is_none() {
            return Err(UsageError(format!("--platform: {p:?} is not OS/ARCH[/VARIANT]")).into());
        }
    }
    let auth = credentials_for(&r.domain)?;
    let mut view = PullView::new(!c.quiet && std::io::stdout().is_terminal(), c.quiet);
    if !c.quiet {
        println!(
            "{}: Pulling from {}",
            r.tag.as_deref().unwrap_or("digest"),
            r.path
        );
    }
    let resp = crate::api::call_streaming(
        &global.socket,
        &Request::Image(ImageRequest::Pull {
            reference: c.image.clone(),
            platform: c.platform,
            auth,
        }),
        Some(PULL_IDLE),
        |r| {
            if let Response::Progress(p) = r {
                view.show(&p, &mut std::io::stdout().lock());
            }
        },
    )?;
    match resp {
        Response::Done(text) => {
            if !c.quiet {
                println!("{text}");
            }
            println!("{r}");
            Ok(ExitCode::SUCCESS)
        }
        Response::Error(e) => Err(anyhow::anyhow!(e)),
        other => Err(anyhow::anyhow!(
            "unexpected answer from the daemon: {other:?}"
        )),
    }
}

/// How long a pull may go without a word from the daemon (a big layer being unpacked
/// on a slow SD card says nothing for a while).
pub const PULL_IDLE: Duration = Duration::from_secs(600);

/// Per-layer lines: redrawn in place on a terminal, one line per change otherwise.
pub struct PullView {
    tty: bool,
    quiet: bool,
    layers: Vec<(Digest, String)>,
    drawn: usize,
}

impl PullView {
    pub fn new(tty: bool, quiet: bool) -> PullView {
        PullView {
            tty,
            quiet,
            layers: Vec::new(),
            drawn: 0,
        }
    }

    /// Prints the change `p` makes to `out` (stdout for `image pull`, stderr for `run`,
    /// whose stdout is the container's).
    pub fn show(&mut self, p: &Progress, out: &mut impl Write) {
        let text = self.render(p);
        if !text.is_empty() {
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }
    }

    /// What a progress report changes on screen: on a terminal every layer's line,
    /// redrawn in place; otherwise one plain line per change of a layer's state.
    pub fn render(&mut self, p: &Progress) -> String {
        if self.quiet {
            return String::new();
        }
        let Progress::Layer { digest, state } = p else {
            return String::new();
        };
        let text = match state {
            LayerState::Exists => "Already exists".to_string(),
            LayerState::Waiting => "Waiting".to_string(),
            LayerState::Downloading { done, total } => {
                if self.tty {
                    format!("Downloading {:>7} / {}", human(*done), human(*total))
                } else {
                    "Downloading".to_string()
                }
            }
            LayerState::Extracting => "Extracting".to_string(),
            LayerState::Done => "Pull complete".to_string(),
        };
        let short = digest.hex()[..12].to_string();
        let changed = match self.layers.iter_mut().find(|(d, _)| d == digest) {
            Some((_, old)) if *old == text => false,
            Some((_, old)) => {
                *old = text.clone();
                true
            }
            None => {
                self.layers.push((*digest, text.clone()));
                true
            }
        };
        if !changed {
            return String::new();
        }
        if self.tty {
            let mut out = String::new();
            if self.drawn > 0 {
                out.push_str(&format!("\x1b[{}A", self.drawn));
            }
            for (d, t) in &self.layers {
                out.push_str(&format!("\x1b[2K{}: {t}\n", &d.hex()[..12]));
            }
            self.drawn = self.layers.len();
            out
        } else {
            format!("{short}: {text}\n")
        }
    }
}

pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2}GiB", b / (1024.0 * 1024.0 * 1024.0))
    } else if b >= 1024.0 * 1024.0 {
        format!("{:.1}MiB", b / (1024.0 * 1024.0))
    } else if b >= 1024.0 {
        format!("{:.1}KiB", b / 1024.0)
    } else {
        format!("{bytes}B")
    }
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters but
/// `/` and `?` for one (Docker matches `reference` filters so).
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.split_first(), name.split_first()) {
        (None, None) => true,
        (Some((b'*', rest)), _) => {
            glob(rest, name)
                || name.first().is_some_and(|c| *c != b'/') && glob(pattern, &name[1..])
        }
        (Some((b'?', rest)), Some((c, more))) => *c != b'/' && glob(rest, more),
        (Some((p, rest)), Some((c, more))) => p == c && glob(rest, more),
        _ => false,
    }
}

fn ls(global: &Global, c: ImageLs) -> anyhow::Result<ExitCode> {
    let filters = Filters::parse(&c.filter, &["dangling", "reference"], |k, v| match k {
        "dangling" if !["true", "false"].contains(&v) => Err("true or false".into()),
        _ => Ok(()),
    })?;
    let Response::Images(images) = call(global, &Request::Image(ImageRequest::List))? else {
        return Err(anyhow::anyhow!("unexpected answer from the daemon"));
    };
    let want = c
        .repository
        .as_deref()
        .map(|r| Reference::parse(r).map(|r| r.name()))
        .transpose()
        .map_err(|e| UsageError(e.to_string()))?;
    let mut rows = Vec::new();
    for img in &images {
        let id = img.id.trim_start_matches("sha256:");
        let id = if c.no_trunc {
            img.id.clone()
        } else {
            id[..12].to_string()
        };
        let tags: Vec<(String, String)> = img
            .names
            .iter()
            .filter(|n| !n.contains('@'))
            .filter_map(|n| Reference::parse(n).ok())
            .map(|r| (r.familiar_name(), r.tag.unwrap_or_default()))
            .collect();
        let digest = img
            .names
            .iter()
            .find_map(|n| n.split_once('@').map(|(_, d)| d.to_string()))
            .unwrap_or_else(|| "<none>".into());
        if tags.is_empty() {
            if c.all || want.is_none() {
                rows.push((
                    "<none>".to_string(),
                    "<none>".to_string(),
                    digest.clone(),
                    id.clone(),
                    img,
                ));
            }
            continue;
        }
        for (repo, tag) in tags {
            if let Some(w) = &want {
                let full = Reference::parse(&repo)
                    .map(|r| r.name())
                    .unwrap_or_default();
                if &full != w {
                    continue;
                }
            }
            rows.push((repo, tag, digest.clone(), id.clone(), img));
        }
    }
    filters.retain(&mut rows, |(repo, tag, ..), k, v| match k {
        "dangling" => (repo == "<none>") == (v == "true"),
        _ => {
            glob(v.as_bytes(), repo.as_bytes())
                || glob(v.as_bytes(), format!("{repo}:{tag}").as_bytes())
        }
    });
    if c.quiet {
        let mut seen = std::collections::BTreeSet::new();
        for r in &rows {
            if seen.insert(r.3.clone()) {
                println!("{}", r.3);
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = vec![if c.digests {
        vec![
            "REPOSITORY",
            "TAG",
            "DIGEST",
            "IMAGE ID",
            "PLATFORM",
            "SIZE",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>()
    } else {
        vec!["REPOSITORY", "TAG", "IMAGE ID", "PLATFORM", "SIZE"]
            .into_iter()
            .map(String::from)
            .collect()
    }];
    for (repo, tag, digest, id, img) in rows {
        let mut row = vec![repo, tag];
        if c.digests {
            row.push(digest);
        }
        row.extend([id, img.platform.clone(), human(img.size)]);
        table.push(row);
    }
    print_table(&table);
    Ok(ExitCode::SUCCESS)
}

pub fn print_table(rows: &[Vec<String>]) {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i + 1 == cols {
                    c.clone()
                } else {
                    format!("{c:<w$}", w = widths[i] + 3)
                }
            })
            .collect();
        println!("{}", line.concat().trim_end());
    }
}

fn load(global: &Global, c: ImageLoad) -> anyhow::Result<ExitCode> {
    // The daemon reads the file itself; standard input is first copied to a private
    // temporary file it can open.
    let (path, _tmp) = match c.input {
        Some(p) => (
            std::fs::canonicalize(&p)
                .map_err(|e| UsageError(format!("-i: {}: {e}", p.display())))?,
            None,
        ),
        None => {
            if std::io::stdin().is_terminal() {
                return Err(UsageError(
                    "image load: give the archive with -i FILE or on standard input".into(),
                )
                .into());
            }
            let t = TempFile::new()?;
            let mut f = std::fs::File::create(&t.0)?;
            std::io::copy(&mut std::io::stdin().lock(), &mut f)?;
            (t.0.clone(), Some(t))
        }
    };
    let resp = crate::api::call_streaming(
        &global.socket,
        &Request::Image(ImageRequest::Load {
            path,
            platform: None,
        }),
        Some(PULL_IDLE),
        |_| {},
    )?;
    match resp {
        Response::Done(text) => {
            if !c.quiet {
                println!("{text}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Response::Error(e) => Err(anyhow::anyhow!(e)),
        other => Err(anyhow::anyhow!(
            "unexpected answer from the daemon: {other:?}"
        )),
    }
}

struct TempFile(PathBuf);

impl TempFile {
    fn new() -> anyhow::Result<TempFile> {
        let p = std::env::temp_dir().join(format!(
            "swarmlet-load-{}-{}",
            std::process::id(),
            crate::image::store::unique()
        ));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)?;
        drop(f);
        Ok(TempFile(p))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(d: u8, state: LayerState) -> Progress {
        Progress::Layer {
            digest: Digest([d; 32]),
            state,
        }
    }

    #[test]
    fn a_terminal_gets_every_layer_redrawn_in_place() {
        let mut v = PullView::new(true, false);
        assert_eq!(
            v.render(&layer(0xaa, LayerState::Waiting)),
            "\x1b[2Kaaaaaaaaaaaa: Waiting\n"
        );
        let two = v.render(&layer(0xbb, LayerState::Waiting));
        assert!(
            two.starts_with("\x1b[1A\x1b[2Kaaaaaaaaaaaa: Waiting\n"),
            "{two:?}"
        );
        let moved = v.render(&layer(
            0xaa,
            LayerState::Downloading {
                done: 1 << 20,
                total: 4 << 20,
            },
        ));
        assert_eq!(
            moved,
            "\x1b[2A\x1b[2Kaaaaaaaaaaaa: Downloading  1.0MiB / 4.0MiB\n\x1b[2Kbbbbbbbbbbbb: Waiting\n"
        );
        // No change, nothing drawn.
        assert_eq!(
            v.render(&layer(
                0xaa,
                LayerState::Downloading {
                    done: 1 << 20,
                    total: 4 << 20
                }
            )),
            ""
        );
    }

    #[test]
    fn elsewhere_one_plain_line_per_state() {
        let mut v = PullView::new(false, false);
        assert_eq!(
            v.render(&layer(0xaa, LayerState::Waiting)),
            "aaaaaaaaaaaa: Waiting\n"
        );
        let d = |done| LayerState::Downloading {
            done,
            total: 4 << 20,
        };
        assert_eq!(v.render(&layer(0xaa, d(1))), "aaaaaaaaaaaa: Downloading\n");
        assert_eq!(v.render(&layer(0xaa, d(2))), "", "byte counts are not news");
        assert_eq!(
            v.render(&layer(0xaa, LayerState::Done)),
            "aaaaaaaaaaaa: Pull complete\n"
        );
        let mut q = PullView::new(false, true);
        assert_eq!(q.render(&layer(0xaa, LayerState::Done)), "");
    }
}

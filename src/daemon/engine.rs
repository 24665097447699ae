//! The node-local engine: what a node does by itself, for its own CLI and (later) for the
//! cluster agent. Today that is the image store. Requests run on smol's blocking pool,
//! never on the daemon's loop: a pull or a load can take minutes and must not delay a
//! Raft heartbeat.

use std::path::PathBuf;

use crate::api::{ImageRequest, ImageView, Response};
use crate::image::load::load;
use crate::image::oci::Platform;
use crate::image::pull::{pull, Progress, RegistryConfig};
use crate::image::reference::{Digest, Reference};
use crate::image::store::{ImageRecord, Store};

pub struct Engine {
    pub store: Store,
    pub registry: RegistryConfig,
}

/// Where an engine's answers go: zero or more `Progress` frames, then one answer.
pub type Frames = smol::channel::Sender<Response>;

impl Engine {
    pub fn open(data_dir: &std::path::Path, registry: RegistryConfig) -> anyhow::Result<Engine> {
        let store = Store::open(&data_dir.join("images"))?;
        Ok(Engine { store, registry })
    }

    /// Serves one image request (blocking).
    pub fn image(&self, req: ImageRequest, out: &Frames) {
        let answer = match req {
            ImageRequest::Pull {
                reference,
                platform,
                auth,
            } => self.pull(&reference, platform.as_deref(), auth, out),
            ImageRequest::List => self.list(),
            ImageRequest::Remove { images, force } => self.remove(&images, force),
            ImageRequest::Load { path, platform } => self.load(path, platform.as_deref()),
            ImageRequest::Prune { all } => self.prune(all),
            ImageRequest::Inspect { images } => self.inspect(&images),
        };
        let _ = out.send_blocking(answer.unwrap_or_else(Response::Error));
    }

    fn pull(
        &self,
        reference: &str,
        platform: Option<&str>,
        auth: Option<crate::image::pull::Credentials>,
        out: &Frames,
    ) -> Result<Response, String> {
        let r = Reference::parse(reference).map_err(|e| e.to_string())?;
        let platform = parse_platform(platform)?;
        let mut cfg = self.registry.clone();
        if let Some(a) = auth {
            cfg.auths.insert(r.domain.clone(), a);
        }
        let send = |p: Progress| {
            let _ = out.send_blocking(Response::Progress(p));
        };
        let before = self.store.resolve(&r.to_string()).ok().map(|rec| rec.id);
        let got = pull(&self.store, &r, &platform, &cfg, &send).map_err(|e| e.to_string())?;
        let status = if before == Some(got.id) {
            "Image is up to date for"
        } else {
            "Downloaded newer image for"
        };
        Ok(Response::Done(format!(
            "Digest: {}\nStatus: {status} {}",
            got.digest,
            r.familiar_name() + &r.tag.as_ref().map(|t| format!(":{t}")).unwrap_or_default()
        )))
    }

    fn list(&self) -> Result<Response, String> {
        let all = self.store.list().map_err(|e| e.to_string())?;
        Ok(Response::Images(
            all.into_iter()
                .map(|(rec, names)| view(&rec, names))
                .collect(),
        ))
    }

    fn remove(&self, images: &[String], force: bool) -> Result<Response, String> {
        // Containers come with the runtime; until then no image is in use.
        let in_use = |_: &Digest| None;
        let mut lines = Vec::new();
        let mut errors = Vec::new();
        for i in images {
            match self.store.remove(i, force, &in_use) {
                Ok(out) => lines.extend(out),
                Err(e) => errors.push(format!("Error: {e}")),
            }
        }
        if errors.is_empty() {
            Ok(Response::Done(lines.join("\n")))
        } else {
            lines.extend(errors);
            Err(lines.join("\n"))
        }
    }

    fn load(&self, path: PathBuf, platform: Option<&str>) -> Result<Response, String> {
        let platform = parse_platform(platform)?;
        let f = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let loaded = load(&self.store, std::io::BufReader::new(f), &platform)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let mut lines = Vec::new();
        for l in loaded {
            if l.names.is_empty() {
                lines.push(format!("Loaded image ID: {}", l.id));
            }
            for n in l.names {
                lines.push(format!("Loaded image: {n}"));
            }
        }
        Ok(Response::Done(lines.join("\n")))
    }

    fn prune(&self, all: bool) -> Result<Response, String> {
        let removed = self
            .store
            .prune(all, &|_| None)
            .map_err(|e| e.to_string())?;
        let mut lines = Vec::new();
        if !removed.is_empty() {
            lines.push("Deleted Images:".to_string());
            lines.extend(removed.iter().map(|d| format!("deleted: {d}")));
        }
        lines.push(format!("Total images removed: {}", removed.len()));
        Ok(Response::Done(lines.join("\n")))
    }

    fn inspect(&self, images: &[String]) -> Result<Response, String> {
        let mut docs = Vec::new();
        for i in images {
            let rec = self.store.resolve(i).map_err(|e| e.to_string())?;
            let names = self
                .store
                .list()
                .map_err(|e| e.to_string())?
                .into_iter()
                .find(|(r, _)| r.id == rec.id)
                .map(|(_, n)| n)
                .unwrap_or_default();
            docs.push(serde_json::json!({
                "Id": rec.id.to_string(),
                "RepoTags": names.iter().filter(|n| !n.contains('@')).collect::<Vec<_>>(),
                "RepoDigests": names.iter().filter(|n| n.contains('@')).collect::<Vec<_>>(),
                "Manifest": rec.manifest.map(|m| m.to_string()),
                "Os": rec.config.os,
                "Architecture": rec.config.architecture,
                "Variant": rec.config.variant,
                "Size": rec.size(),
                "Config": rec.config.config,
                "RootFS": {
                    "Type": "layers",
                    "Layers": rec.layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>(),
                },
            }));
        }
        Ok(Response::Json(
            serde_json::to_string_pretty(&docs).expect("invariant: JSON values serialise"),
        ))
    }
}

fn parse_platform(p: Option<&str>) -> Result<Platform, String> {
    match p {
        None => Ok(Platform::host()),
        Some(s) => {
            Platform::parse(s).ok_or_else(|| format!("--platform: {s:?} is not OS/ARCH[/VARIANT]"))
        }
    }
}

fn view(rec: &ImageRecord, names: Vec<String>) -> ImageView {
    ImageView {
        id: rec.id.to_string(),
        names,
        size: rec.size(),
        platform: rec.platform().to_string(),
        added: rec.added,
    }
}

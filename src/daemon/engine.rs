//! The node-local engine: what a node does by itself, for its own CLI and (later) for the
//! cluster agent. Today that is the image store. Requests run on smol's blocking pool,
//! never on the daemon's loop: a pull or a load can take minutes and must not delay a
//! Raft heartbeat.

use std::path::PathBuf;

use std::time::Duration;

use super::containers::{Containers, ExecSpec};
use crate::api::{
    ContainerRequest, ImageRequest, ImageView, LogFrom, LogLine, LogPiece, LogRead, Request,
    Response, LOG_ANSWER_BYTES, MAX_LOG_READS,
};
use crate::image::load::load;
use crate::image::oci::Platform;
use crate::image::pull::{pull, RegistryConfig};
use crate::image::reference::Reference;
use crate::image::store::{ImageRecord, Store};
use crate::model::container::LogCursor;
use crate::model::container::{ContainerView, PortBinding, Status};
use crate::model::image::Progress;
use crate::model::Digest;
use crate::runtime::logs::{self, Record, Stream};

// Each container of a full log read gets a budget that holds its longest record.
const _: () = assert!(LOG_ANSWER_BYTES / MAX_LOG_READS >= logs::MIN_CHUNK);

/// A log record as the API carries it.
fn log_line(r: Record) -> LogLine {
    LogLine {
        time: r.time,
        stderr: r.stream == Stream::Stderr,
        partial: r.partial,
        text: r.text,
    }
}

/// How often the supervisor looks at exited containers: the shortest restart backoff.
const SUPERVISOR_TICK: Duration = Duration::from_millis(100);
/// How long `logs -f` waits for more output before looking again (it wakes at once
/// when the container exits).
const FOLLOW_WAIT: Duration = Duration::from_millis(100);

pub struct Engine {
    pub store: Store,
    pub registry: RegistryConfig,
    pub containers: std::sync::Arc<Containers>,
}

/// Where an engine's answers go: zero or more `Progress` frames, then one answer.
pub type Frames = smol::channel::Sender<Response>;

impl Engine {
    /// `bridge`: `run`'s containers get the node's local bridge unless they name
    /// another network (`daemon --bridge none`: they get none).
    pub fn open(
        data_dir: &std::path::Path,
        registry: RegistryConfig,
        bridge: bool,
    ) -> anyhow::Result<Engine> {
        let store = Store::open(&data_dir.join("images"))?;
        // Not the path the binary was started from: after an upgrade replaced the file,
        // that names another build (or nothing).
        let exe = std::path::Path::new(crate::runtime::SELF_EXE);
        let containers = std::sync::Arc::new(Containers::open(data_dir, exe, bridge)?);
        let c = containers.clone();
        std::thread::Builder::new()
            .name("health".into())
            .spawn(move || super::health::monitor(c))?;
        // The supervisor: restart policies, and removal of `--rm` containers that exited
        // (also when nobody waits for them).
        let c = containers.clone();
        std::thread::Builder::new()
            .name("supervisor".into())
            .spawn(move || {
                c.apply_restart_policies(true);
                c.reap_auto_remove();
                loop {
                    std::thread::sleep(SUPERVISOR_TICK);
                    if c.any_supervised() {
                        c.apply_restart_policies(false);
                        c.reap_auto_remove();
                    }
                }
            })?;
        Ok(Engine {
            store,
            registry,
            containers,
        })
    }

    /// Serves one engine request (blocking): frames and then the answer go to `out`.
    pub fn serve(&self, req: Request, out: &Frames) {
        match req {
            Request::Image(r) => self.image(r, out),
            Request::Container(r) => {
                let answer = self.container(r, out);
                let _ = out.send_blocking(answer.unwrap_or_else(Response::Error));
            }
            _ => {
                let _ = out.send_blocking(Response::Error("not an engine request".into()));
            }
        }
    }

    /// Pulls the image if it is missing (as Docker's `run` does), then creates and
    /// starts the container. Returns its id.
    pub fn run(
        &self,
        req: crate::api::RunRequest,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<String, String> {
        let image = req.image.clone();
        let rec = match self.store.resolve(&image) {
            Ok(r) => r,
            Err(crate::image::store::StoreError::NotFound(_)) => {
                let r = Reference::parse(&image).map_err(|e| e.to_string())?;
                let mut cfg = self.registry.clone();
                if let Some(a) = &req.auth {
                    cfg.auths.insert(r.domain.clone(), a.clone());
                }
                let got =
                    pull(&self.store, &r, &Platform::host(), &cfg, progress).map_err(|e| {
                        format!("Unable to find image '{image}' locally; pulling it failed: {e}")
                    })?;
                self.store
                    .resolve(&got.id.to_string())
                    .map_err(|e| e.to_string())?
            }
            Err(e) => return Err(e.to_string()),
        };
        self.containers.run(&self.store, &rec, req)
    }

    fn container(&self, req: ContainerRequest, out: &Frames) -> Result<Response, String> {
        let c = &self.containers;
        match req {
            ContainerRequest::Run(req) => {
                let send = |p: Progress| {
                    let _ = out.send_blocking(Response::Progress(p));
                };
                self.run(*req, &send).map(Response::Done)
            }
            ContainerRequest::List => Ok(Response::Containers(c.list()?)),
            ContainerRequest::Stop {
                containers,
                timeout,
            } => each(&containers, |x| c.stop(x, timeout).map(|_| x.to_string())),
            ContainerRequest::Kill { containers, signal } => {
                each(&containers, |x| c.kill(x, &signal).map(|_| x.to_string()))
            }
            ContainerRequest::Remove { containers, force } => {
                each(&containers, |x| c.remove(x, force).map(|_| x.to_string()))
            }
            ContainerRequest::Inspect { containers } => {
                let mut docs = Vec::new();
                for x in &containers {
                    let v = c.find(x)?;
                    let n = c.restart_count(&v.record.id);
                    docs.push(inspect_doc(&v, n, c.bridge_addr(&v.record.id)));
                }
                Ok(Response::Json(
                    serde_json::to_string_pretty(&docs).expect("invariant: JSON serialises"),
                ))
            }
            ContainerRequest::Logs {
                container,
                follow,
                tail,
            } => self.logs(&container, follow, tail, out),
            ContainerRequest::Exec {
                container,
                cmd,
                env,
                user,
                workdir,
            } => {
                let send = |is_err: bool, bytes: Vec<u8>| {
                    let _ = out.send_blocking(Response::LogChunk(vec![LogLine {
                        time: String::new(),
                        stderr: is_err,
                        partial: true,
                        text: bytes,
                    }]));
                };
                let spec = ExecSpec {
                    cmd,
                    env,
                    user,
                    workdir,
                    timeout: None,
                };
                let code = c.exec(&container, &spec, &send)?;
                Ok(Response::Exit(Some(code)))
            }
            ContainerRequest::Wait { container } => {
                let v = c.find(&container)?;
                Ok(Response::Exit(c.wait_status(&v.record.id)?))
            }
        }
    }

    fn logs(
        &self,
        container: &str,
        follow: bool,
        tail: Option<u64>,
        out: &Frames,
    ) -> Result<Response, String> {
        let c = &self.containers;
        let v = c.find(container)?;
        let path = c.log_path(&v.record.id);
        let files = v.record.log.max_files;
        let io = |e: std::io::Error| format!("reading the log of {container}: {e}");
        // A chunk at a time from a cursor: memory stays at one chunk whatever the log's
        // size, and --tail finds its start reading backwards.
        let mut cursor = match tail {
            Some(n) => logs::tail_cursor(&path, files, n).map_err(io)?,
            None => LogCursor::default(),
        };
        loop {
            // Asked before reading, so what it wrote before exiting is read.
            let running = follow && matches!(c.find(&v.record.id)?.status, Status::Running { .. });
            let chunk = logs::read_chunk(&path, files, cursor, LOG_ANSWER_BYTES).map_err(io)?;
            cursor = chunk.next;
            let had = !chunk.records.is_empty();
            if had {
                let lines = chunk.records.into_iter().map(log_line).collect();
                if out.send_blocking(Response::LogChunk(lines)).is_err() {
                    break;
                }
            }
            if chunk.more {
                continue;
            }
            if !follow || (!running && !had) {
                break;
            }
            if !had {
                // Until more output, or the exit (after which the keeper has taken
                // every last byte from the pipes).
                c.wait_exit(&v.record.id, FOLLOW_WAIT)?;
            }
        }
        Ok(Response::Done(String::new()))
    }

    /// `service logs` on this node (for its own CLI or a manager's): a chunk of each
    /// container's log, the answer's byte budget shared among them. Names match exactly
    /// (a peer's request never picks a container by id prefix). Blocking.
    pub fn read_logs(&self, reads: &[LogRead]) -> Result<Vec<LogPiece>, String> {
        if reads.len() > MAX_LOG_READS {
            return Err(format!(
                "{} log reads in one request; the limit is {MAX_LOG_READS}",
                reads.len()
            ));
        }
        let all = self.containers.list()?;
        let budget = LOG_ANSWER_BYTES / reads.len().max(1);
        let pieces = reads
            .iter()
            .map(|r| {
                let Some(v) = all.iter().find(|v| v.record.name == r.container) else {
                    return LogPiece::NoContainer;
                };
                let path = self.containers.log_path(&v.record.id);
                let files = v.record.log.max_files;
                let from = match r.from {
                    LogFrom::At(c) => Ok(c),
                    LogFrom::Tail(None) => Ok(LogCursor::default()),
                    LogFrom::Tail(Some(n)) => logs::tail_cursor(&path, files, n),
                };
                match from.and_then(|from| logs::read_chunk(&path, files, from, budget)) {
                    Ok(c) => LogPiece::Lines {
                        lines: c.records.into_iter().map(log_line).collect(),
                        next: c.next,
                        more: c.more,
                    },
                    Err(e) => LogPiece::Failed(format!("reading the log of {}: {e}", r.container)),
                }
            })
            .collect();
        Ok(pieces)
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
        auth: Option<crate::model::image::Credentials>,
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
        let in_use = |d: &Digest| self.containers.using_image(d);
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
            .prune(all, &|d| self.containers.using_image(d))
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

/// Applies `f` to each name; the answer lists what succeeded, the error what did not.
fn each(names: &[String], f: impl Fn(&str) -> Result<String, String>) -> Result<Response, String> {
    let mut ok = Vec::new();
    let mut errs = Vec::new();
    for n in names {
        match f(n) {
            Ok(s) => ok.push(s),
            Err(e) => errs.push(format!("Error response from daemon: {e}")),
        }
    }
    if errs.is_empty() {
        Ok(Response::Done(ok.join("\n")))
    } else {
        ok.extend(errs);
        Err(ok.join("\n"))
    }
}

fn ms_to_rfc3339(ms: u64) -> String {
    crate::runtime::logs::rfc3339_nanos(std::time::UNIX_EPOCH + Duration::from_millis(ms))
}

/// Docker's shape of published ports: `{"80/tcp": [{"HostIp": ip, "HostPort": "8080"}]}`
/// (`HostConfig.PortBindings` says "", `NetworkSettings.Ports` the address bound).
fn port_map(ports: &[PortBinding], host_ip: &str) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for b in ports {
        let key = format!("{}/{}", b.container, b.protocol.name());
        let entry = m.entry(key).or_insert_with(|| serde_json::json!([]));
        if let Some(list) = entry.as_array_mut() {
            list.push(serde_json::json!({"HostIp": host_ip, "HostPort": b.host.to_string()}));
        }
    }
    serde_json::Value::Object(m)
}

fn inspect_doc(
    v: &ContainerView,
    restart_count: u32,
    bridge_addr: Option<std::net::Ipv4Addr>,
) -> serde_json::Value {
    let r = &v.record;
    let (status, running, pid, exit, oom, started, finished) = match &v.status {
        Status::Created => ("created", false, 0, None, false, None, None),
        Status::Running { pid, started_at } => {
            ("running", true, *pid, None, false, Some(*started_at), None)
        }
        Status::Exited {
            code,
            oom_killed,
            started_at,
            finished_at,
        } => (
            "exited",
            false,
            0,
            *code,
            *oom_killed,
            Some(*started_at),
            Some(*finished_at),
        ),
    };
    serde_json::json!({
        "Id": r.id,
        "Name": r.name,
        "Created": ms_to_rfc3339(r.created),
        "Image": r.image_id.to_string(),
        "Config": {
            "Image": r.image,
            "Hostname": r.spec.hostname,
            "User": r.spec.user,
            "Env": r.spec.env,
            "Cmd": r.spec.cmd,
            "Entrypoint": r.spec.entrypoint,
            "WorkingDir": r.spec.workdir,
            "Labels": r.spec.labels,
            "StopSignal": r.stop_signal,
            "StopTimeout": r.stop_timeout,
        },
        "State": {
            "Health": v.health.as_ref().map(|h| serde_json::json!({
                "Status": h.status.name(),
                "FailingStreak": h.failing_streak,
                "Log": h.log.iter().map(|p| serde_json::json!({
                    "Start": ms_to_rfc3339(p.start),
                    "End": ms_to_rfc3339(p.end),
                    "ExitCode": p.exit_code,
                    "Output": p.output,
                })).collect::<Vec<_>>(),
            })),
            "Status": status,
            "Running": running,
            "Pid": pid,
            // Docker has no way to say "unknown"; -1 does, and ExitCodeKnown says so.
            "ExitCode": exit.unwrap_or(if status == "exited" { -1 } else { 0 }),
            "ExitCodeKnown": status != "exited" || exit.is_some(),
            "OOMKilled": oom,
            "StartedAt": started.map(ms_to_rfc3339),
            "FinishedAt": finished.map(ms_to_rfc3339),
        },
        "RestartCount": restart_count,
        "NetworkSettings": {
            "IPAddress": bridge_addr.map(|a| a.to_string()).unwrap_or_default(),
            "Gateway": bridge_addr.map(|_| crate::net::bridge::GATEWAY.to_string()).unwrap_or_default(),
            // As Docker: published while it runs (the bindings stay in HostConfig).
            "Ports": port_map(if running { &r.spec.ports } else { &[] }, "0.0.0.0"),
        },
        "HostConfig": {
            "RestartPolicy": format!("{:?}", r.restart),
            "AutoRemove": r.auto_remove,
            "Privileged": r.spec.privileged,
            "NetworkMode": r.spec.network.name(),
            "Memory": r.spec.memory.unwrap_or(0),
            "NanoCpus": r.spec.cpus.map_or(0.0, |c| (c * 1e9).round()),
            "PidsLimit": r.spec.pids_limit,
            "CapAdd": r.spec.cap_add,
            "CapDrop": r.spec.cap_drop,
            "PortBindings": port_map(&r.spec.ports, ""),
        },
        "Mounts": r.spec.mounts,
    })
}

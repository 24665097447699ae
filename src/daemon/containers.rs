//! Containers of this node, as the daemon keeps them: a record per container
//! (`<data-dir>/containers/<id>/container.json`), its root filesystem (overlayfs over the
//! image's layers), its bundle, and the keeper that runs it. The daemon holds no state
//! of its own about running containers: it asks the keeper, so a restarted daemon sees
//! exactly what is running.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::sockets::PortHolds;
use crate::image::store::{remove_any, write_atomic, ImageRecord, Store};
use crate::model::container::PortBinding;
use crate::model::container::{
    signal_number, ContainerRecord, ContainerSpec, ContainerView, MountKind, NetworkMode,
    RestartPolicy, Status, DEFAULT_STOP_TIMEOUT,
};
use crate::model::health::HealthState;
use crate::model::{Digest, Protocol};
use crate::net::mesh::{Mesh, Port, Published};
use crate::runtime::keeper::{self, ContainerState, KeeperLink, KeeperRequest, KeeperResponse};
use crate::runtime::rootfs::{mount_overlay, unmount_overlay};
use crate::runtime::spec::{identity, runtime_spec};

const RECORD: &str = "container.json";
const KEEPER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an exited `--rm` container is left for an attached `run` to collect its
/// status before the supervisor removes it.
const AUTO_REMOVE_GRACE: Duration = Duration::from_secs(5);
/// How long one wait for an exit lasts when no grace period ends it (`-1`): the wait is
/// repeated until the container exits.
const UNBOUNDED_WAIT_SLICE: Duration = Duration::from_secs(60);

/// The restart bookkeeping of a container (`<id>/restart.json`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartState {
    pub count: u32,
    /// Stopped with `stop` (or `rm -f`): no restart until started again.
    pub stopped_by_user: bool,
    /// When the next restart may happen (ms), after the backoff.
    pub not_before: u64,
}

/// A command to run in a running container.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExecSpec {
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    /// Killed (status 137) after this long.
    pub timeout: Option<Duration>,
}

pub struct Containers {
    dir: PathBuf,
    volumes: PathBuf,
    exe: PathBuf,
    /// The keeper and the protocol version it speaks (what `keeper::ensure` found).
    link: Mutex<KeeperLink>,
    /// Where bridged containers' namespaces are pinned (with tasks').
    netns: PathBuf,
    /// The node's local bridge is `run`'s default (`daemon --bridge none`: not).
    bridge: bool,
    /// The agent's way to attachable networks, once the node runs one.
    attacher: std::sync::OnceLock<Attacher>,
    /// Serialises creation and removal (names must stay unique).
    lock: Mutex<()>,
    /// The records as last read from disk; this daemon is their only writer, so the
    /// copy stays true until it writes (run, removal), which clears it.
    cache: Mutex<Option<Vec<ContainerRecord>>>,
    /// The node's `run -p` table, once a container publishes a port.
    published: Mutex<Option<Mesh>>,
    /// Sockets holding `run -p`'s ports. Taken after `ports_clear`.
    holds: Mutex<PortHolds>,
    /// The kernel is known to hold no `run -p` table (none is made, and whatever an
    /// earlier run left is removed). Taken after `published`.
    ports_clear: Mutex<bool>,
    /// Held by the supervisor from reading a container's restart state to its start
    /// again, and by `stop` while it marks one stopped: a stop never loses to a
    /// restart under way.
    restarts: Mutex<()>,
}

/// Where `run -p` without a host port looks for a free one when the kernel's own
/// ephemeral range cannot be read (Linux's default range).
const EPHEMERAL: (u16, u16) = (32768, 60999);

/// A container's hostname: its own, or Docker's default, its short id.
fn hostname_of(r: &ContainerRecord) -> String {
    r.spec
        .hostname
        .clone()
        .unwrap_or_else(|| r.id[..12.min(r.id.len())].to_string())
}

/// The wiring of a container joining a network: what `attach` answers.
pub type AttachFn =
    dyn Fn(&str, &str, &str) -> Result<super::bridged::Bridged, String> + Send + Sync;

/// How standalone containers join attachable networks: `attach` (container id, name,
/// network) asks the leader and wires the namespace, `detach` lets it go.
pub struct Attacher {
    pub attach: Box<AttachFn>,
    pub detach: Box<dyn Fn(&str) + Send + Sync>,
}

fn random_id() -> Result<String, String> {
    let mut b = [0u8; 32];
    getrandom::getrandom(&mut b).map_err(|e| format!("no randomness: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Docker-style `adjective_noun` names, from our own short lists.
fn random_name(id: &str) -> String {
    const ADJ: &[&str] = &[
        "brave", "calm", "eager", "fuzzy", "gentle", "happy", "jolly", "keen", "lucid", "merry",
        "nimble", "proud", "quiet", "rapid", "sunny", "tidy", "vivid", "witty", "young", "zesty",
    ];
    const NOUN: &[&str] = &[
        "otter", "falcon", "badger", "heron", "lynx", "marten", "osprey", "puffin", "raven",
        "salmon", "stoat", "swift", "tern", "vole", "wren", "beaver", "bison", "crane", "egret",
        "finch",
    ];
    let n = u32::from_str_radix(&id[..8], 16).unwrap_or(0) as usize;
    format!(
        "{}_{}",
        ADJ[n % ADJ.len()],
        NOUN[(n / ADJ.len()) % NOUN.len()]
    )
}

impl Containers {
    pub fn open(data_dir: &Path, exe: &Path, bridge: bool) -> anyhow::Result<Containers> {
        let dir = data_dir.join("containers");
        let link = keeper::ensure(&dir, exe)?;
        let c = Containers {
            dir,
            volumes: data_dir.join("volumes"),
            netns: super::netplane::netns_dir(data_dir),
            bridge,
            attacher: std::sync::OnceLock::new(),
            exe: exe.to_path_buf(),
            link: Mutex::new(link),
            lock: Mutex::new(()),
            cache: Mutex::new(None),
            published: Mutex::new(None),
            ports_clear: Mutex::new(false),
            holds: Mutex::new(PortHolds::default()),
            restarts: Mutex::new(()),
        };
        // The table as this node's containers want it (what an earlier run left, made
        // again or removed).
        if let Err(e) = c.sync_ports() {
            warning!("published ports: {e}");
        }
        Ok(c)
    }

    fn link(&self) -> KeeperLink {
        self.link.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn keeper(&self, req: &KeeperRequest) -> Result<KeeperResponse, String> {
        let first = self.link().call(req, KEEPER_TIMEOUT);
        let resp = match first {
            Ok(r) => r,
            Err(_) => {
                // The keeper went away (killed?): start another, which adopts what runs.
                let link = keeper::ensure(&self.dir, &self.exe).map_err(|e| format!("{e:#}"))?;
                *self.link.lock().unwrap_or_else(|p| p.into_inner()) = link.clone();
                link.call(req, KEEPER_TIMEOUT)
                    .map_err(|e| format!("talking to the keeper: {e}"))?
            }
        };
        match resp {
            KeeperResponse::Error(e) => Err(e),
            r => Ok(r),
        }
    }

    fn states(&self) -> Result<BTreeMap<String, ContainerState>, String> {
        match self.keeper(&KeeperRequest::List)? {
            KeeperResponse::States(v) => Ok(v.into_iter().map(|s| (s.id.clone(), s)).collect()),
            other => Err(format!("unexpected keeper answer {other:?}")),
        }
    }

    fn records(&self) -> Vec<ContainerRecord> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.as_ref() {
            return c.clone();
        }
        let out = self.read_records();
        *cache = Some(out.clone());
        out
    }

    fn invalidate(&self) {
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn read_records(&self) -> Vec<ContainerRecord> {
        let mut out = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                if let Ok(b) = std::fs::read(e.path().join(RECORD)) {
                    match serde_json::from_slice::<ContainerRecord>(&b) {
                        // Ids are shown shortened and used as paths: a record whose id
                        // is not what `run` writes (64 hex digits) is not trusted.
                        Ok(r) if !crate::model::container::is_container_id(&r.id) => warning!(
                            "ignoring {}: bad container id {:?}",
                            e.path().join(RECORD).display(),
                            r.id
                        ),
                        Ok(r) => out.push(r),
                        Err(err) => warning!(
                            "ignoring unreadable {}: {err}",
                            e.path().join(RECORD).display()
                        ),
                    }
                }
            }
        }
        out.sort_by_key(|r| std::cmp::Reverse(r.created));
        out
    }

    pub fn list(&self) -> Result<Vec<ContainerView>, String> {
        let states = self.states()?;
        Ok(self
            .records()
            .into_iter()
            .map(|r| {
                let status = status_of(states.get(&r.id));
                let health = match (&r.health, &status) {
                    (Some(_), Status::Running { started_at, .. }) => Some(
                        super::health::load(&self.dir.join(&r.id))
                            .filter(|h| h.started_at == *started_at)
                            .unwrap_or_else(|| HealthState::starting(*started_at)),
                    ),
                    (Some(_), Status::Exited { started_at, .. }) => {
                        super::health::load(&self.dir.join(&r.id))
                            .filter(|h| h.started_at == *started_at)
                    }
                    _ => None,
                };
                ContainerView {
                    record: r,
                    status,
                    health,
                }
            })
            .collect())
    }

    /// Finds a container by name, full id or unique id prefix.
    pub fn find(&self, what: &str) -> Result<ContainerView, String> {
        let all = self.list()?;
        if let Some(v) = all
            .iter()
            .find(|v| v.record.name == what || v.record.id == what)
        {
            return Ok(v.clone());
        }
        let hits: Vec<&ContainerView> = all
            .iter()
            .filter(|v| what.len() >= 3 && v.record.id.starts_with(what))
            .collect();
        match hits.len() {
            1 => Ok(hits[0].clone()),
            0 => Err(format!("No such container: {what}")),
            _ => Err(format!(
                "{what} matches several containers: use more of the id"
            )),
        }
    }

    /// The first container using `image`, for `image rm`.
    pub fn using_image(&self, image: &Digest) -> Option<String> {
        self.records()
            .into_iter()
            .find(|r| r.image_id == *image)
            .map(|r| format!("{} ({})", &r.id[..12], r.name))
    }

    /// Creates and starts a container. Returns its id.
    pub fn run(
        &self,
        store: &Store,
        image: &ImageRecord,
        req: crate::api::RunRequest,
    ) -> Result<String, String> {
        let crate::api::RunRequest {
            image: image_ref,
            name,
            mut spec,
            stop_signal,
            stop_timeout,
            auto_remove,
            auth: _,
            health,
            log,
            restart,
        } = req;
        let health = super::health::resolve(image.config.config.healthcheck.as_ref(), &health)?;
        spec.network = match spec.network {
            NetworkMode::Default if self.bridge => NetworkMode::Bridge,
            NetworkMode::Default => NetworkMode::None,
            NetworkMode::Bridge if !self.bridge => {
                return Err(
                    "--network bridge: this daemon runs with --bridge none (no local bridge)"
                        .into(),
                )
            }
            other => other,
        };
        if !spec.ports.is_empty() && spec.network != NetworkMode::Bridge {
            return Err(
                "-p: ports are published to containers on the bridge network, which this daemon does not run (--bridge none)"
                    .into(),
            );
        }
        // Whoever sent the request: a volume named `..` would be the data dir.
        crate::runtime::spec::validate(&spec, crate::runtime::spec::host_cpus())?;
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        spec.ports = self.claim_ports(&spec.ports)?;
        let id = random_id()?;
        let name = match name {
            Some(n) if !crate::model::container::valid_container_name(&n) => {
                return Err(format!(
                    "--name: {n:?} is not a valid name: [a-zA-Z0-9][a-zA-Z0-9_.-]* (up to 128)"
                ))
            }
            Some(n) => n,
            None => random_name(&id),
        };
        if let Some(other) = self.records().iter().find(|r| r.name == name) {
            return Err(format!(
                "Conflict. The container name \"{name}\" is already in use by container {}. Remove that container or choose another name",
                &other.id[..12]
            ));
        }
        let stop_signal = stop_signal
            .or_else(|| image.config.config.stop_signal.clone())
            .unwrap_or_else(|| "SIGTERM".into());
        signal_number(&stop_signal)?;
        let record = ContainerRecord {
            id: id.clone(),
            name,
            image: image_ref,
            image_id: image.id,
            spec,
            created: keeper::now_ms(),
            stop_signal,
            stop_timeout: stop_timeout.unwrap_or(DEFAULT_STOP_TIMEOUT),
            auto_remove,
            log,
            health,
            restart,
            lower: image
                .layers
                .iter()
                .map(|l| store.layer_path(&l.diff_id))
                .collect(),
        };
        let cdir = self.dir.join(&id);
        std::fs::create_dir_all(&cdir).map_err(|e| format!("{}: {e}", cdir.display()))?;
        let res = self.prepare_and_start(image, &record);
        if let Err(e) = res {
            let _ = unmount_overlay(&cdir.join("bundle/rootfs"));
            let _ = remove_any(&cdir);
            match &record.spec.network {
                NetworkMode::Bridge => {
                    super::bridged::unwire(&self.netns, &id);
                    if !record.spec.ports.is_empty() {
                        if let Err(e) = self.sync_ports() {
                            warning!("published ports: {e}");
                        }
                    }
                }
                NetworkMode::Attach(_) => {
                    if let Some(a) = self.attacher.get() {
                        (a.detach)(&id);
                    }
                }
                _ => {}
            }
            self.invalidate();
            return Err(e);
        }
        Ok(id)
    }

    fn prepare_and_start(
        &self,
        image: &ImageRecord,
        record: &ContainerRecord,
    ) -> Result<(), String> {
        let cdir = self.dir.join(&record.id);
        let rootfs = cdir.join("bundle/rootfs");
        mount_overlay(
            &record.lower,
            &cdir.join("upper"),
            &cdir.join("work"),
            &rootfs,
        )
        .map_err(|e| format!("mounting the root filesystem: {e}"))?;
        let mut volumes = BTreeMap::new();
        for m in &record.spec.mounts {
            match m.kind {
                MountKind::Volume => {
                    let p = self.volumes.join(&m.source).join("_data");
                    std::fs::create_dir_all(&p).map_err(|e| format!("volume {}: {e}", m.source))?;
                    volumes.insert(m.source.clone(), p.display().to_string());
                }
                MountKind::Bind => {
                    if !Path::new(&m.source).exists() {
                        return Err(format!(
                            "invalid mount: bind source path does not exist: {}",
                            m.source
                        ));
                    }
                }
                MountKind::Tmpfs => {}
            }
        }
        let who = identity(record.spec.user.as_deref(), &rootfs)?;
        let hostname = hostname_of(record);
        let wired = self.wire(record, &hostname)?;
        let spec = runtime_spec(
            &image.config.config,
            wired.as_ref().unwrap_or(&record.spec),
            &who,
            &rootfs,
            &hostname,
            &format!("/swarmlet/{}", record.id),
            &volumes,
        )?;
        let json = serde_json::to_vec_pretty(&spec).expect("invariant: spec serialises");
        let tmp = cdir.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
        write_atomic(&cdir.join("bundle/config.json"), &tmp, &json).map_err(|e| e.to_string())?;
        let rec = serde_json::to_vec_pretty(record).expect("invariant: record serialises");
        write_atomic(&cdir.join(RECORD), &tmp, &rec).map_err(|e| e.to_string())?;
        self.invalidate();
        if !record.spec.ports.is_empty() {
            self.sync_ports()
                .map_err(|e| format!("publishing its ports: {e}"))?;
        }
        match self.keeper(&KeeperRequest::Run {
            id: record.id.clone(),
            log: record.log,
        })? {
            KeeperResponse::Started { .. } => Ok(()),
            other => Err(format!("unexpected keeper answer {other:?}")),
        }
    }

    /// Gives the engine the agent's way to attachable networks (once).
    pub fn set_attacher(&self, a: Attacher) {
        let _ = self.attacher.set(a);
    }

    /// A container's namespace on the bridge or an attachable network, made (or found),
    /// and its spec as the runtime is to see it: that namespace, and the resolv.conf
    /// and hosts files bound in unless the container mounts its own. None for a
    /// container on neither.
    fn wire(
        &self,
        record: &ContainerRecord,
        hostname: &str,
    ) -> Result<Option<ContainerSpec>, String> {
        let b = match &record.spec.network {
            NetworkMode::Bridge => super::bridged::wire(&self.netns, &record.id, hostname)?,
            NetworkMode::Attach(net) => {
                let a = self
                    .attacher
                    .get()
                    .ok_or_else(|| format!("network {net}: this daemon has no agent to join it"))?;
                let b = (a.attach)(&record.id, &record.name, net)?;
                super::netplane::write_hosts(&b.hosts, b.addr, Some(hostname))?;
                b
            }
            _ => return Ok(None),
        };
        let mut spec = record.spec.clone();
        spec.join_netns(&b.netns, &b.resolv_conf, &b.hosts);
        Ok(Some(spec))
    }

    /// A container's address on the local bridge, if it is on it.
    pub fn bridge_addr(&self, id: &str) -> Option<std::net::Ipv4Addr> {
        super::bridged::addr(&self.netns, id)
    }

    pub fn kill(&self, what: &str, signal: &str) -> Result<String, String> {
        let v = self.find(what)?;
        if !matches!(v.status, Status::Running { .. }) {
            return Err(format!("Container {} is not running", v.record.name));
        }
        let sig = signal_number(signal)?;
        self.keeper(&KeeperRequest::Kill {
            id: v.record.id.clone(),
            signal: sig,
        })?;
        Ok(v.record.id)
    }

    /// The stop signal, then SIGKILL after the grace period. Waits for the exit.
    /// A negative `timeout` (Docker's -1) waits without a limit.
    pub fn stop(&self, what: &str, timeout: Option<i64>) -> Result<String, String> {
        let restarts = self.restarts.lock().unwrap_or_else(|p| p.into_inner());
        // Its state as of now: the supervisor may have started it again meanwhile.
        let v = self.find(what)?;
        let id = v.record.id.clone();
        // Also for one between two runs of its restart policy: it stays stopped.
        let mut rs = self.restart_state(&id);
        rs.stopped_by_user = true;
        self.save_restart_state(&id, &rs);
        if !matches!(v.status, Status::Running { .. }) {
            return Ok(v.record.name); // Docker: stopping a stopped container succeeds
        }
        let grace = u64::try_from(timeout.unwrap_or(v.record.stop_timeout))
            .ok()
            .map(Duration::from_secs);
        let sig = signal_number(&v.record.stop_signal)?;
        let _ = self.keeper(&KeeperRequest::Kill {
            id: id.clone(),
            signal: sig,
        });
        drop(restarts);
        let Some(grace) = grace else {
            while !self.wait_exit(&id, UNBOUNDED_WAIT_SLICE)? {}
            return Ok(v.record.name);
        };
        if !self.wait_exit(&id, grace)? {
            let _ = self.keeper(&KeeperRequest::Kill {
                id: id.clone(),
                signal: 9,
            });
            if !self.wait_exit(&id, Duration::from_secs(10))? {
                return Err(format!("{} did not die of SIGKILL", v.record.name));
            }
        }
        Ok(v.record.name)
    }

    /// Waits until the container has exited, up to `limit`; false if it has not. The
    /// keeper answers the moment it reaps the container.
    pub fn wait_exit(&self, id: &str, limit: Duration) -> Result<bool, String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let slice = left.min(Duration::from_secs(60));
            let req = KeeperRequest::Wait {
                id: id.to_string(),
                timeout_ms: u64::try_from(slice.as_millis()).unwrap_or(u64::MAX),
            };
            let resp = self
                .link()
                .call(&req, slice + KEEPER_TIMEOUT)
                .map_err(|e| format!("talking to the keeper: {e}"))?;
            match resp {
                KeeperResponse::States(v) if v.first().is_none_or(|s| s.exit.is_some()) => {
                    return Ok(true)
                }
                KeeperResponse::States(_) => {}
                KeeperResponse::Error(e) => return Err(e),
                other => return Err(format!("unexpected keeper answer {other:?}")),
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
        }
    }

    pub fn remove(&self, what: &str, force: bool) -> Result<String, String> {
        let v = self.find(what)?;
        if matches!(v.status, Status::Running { .. }) {
            if !force {
                return Err(format!(
                    "You cannot remove a running container {}. Stop the container before attempting removal or force remove",
                    &v.record.id[..12]
                ));
            }
            let _ = self.keeper(&KeeperRequest::Kill {
                id: v.record.id.clone(),
                signal: 9,
            });
            self.wait_exit(&v.record.id, Duration::from_secs(10))?;
        }
        self.purge(&v.record.id)?;
        Ok(v.record.name)
    }

    /// Forgets a container that is not running: runtime state, root filesystem, files.
    fn purge(&self, id: &str) -> Result<(), String> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        match self.keeper(&KeeperRequest::Delete { id: id.to_string() }) {
            Ok(_) => {}
            Err(e) if e.contains("no such") => {}
            Err(e) => return Err(e),
        }
        let cdir = self.dir.join(id);
        unmount_overlay(&cdir.join("bundle/rootfs"))
            .map_err(|e| format!("unmounting the root filesystem of {id}: {e}"))?;
        // Whatever its record says (it may be unreadable): nothing of it may outlive it.
        super::bridged::unwire(&self.netns, id);
        if let Some(a) = self.attacher.get() {
            (a.detach)(id);
        }
        let res = remove_any(&cdir).map_err(|e| format!("{}: {e}", cdir.display()));
        self.invalidate();
        // Whatever its record said: no port may lead to the address it leaves free.
        if let Err(e) = self.sync_ports() {
            warning!("published ports: {e}");
        }
        res?;
        Ok(())
    }

    /// The host ports `run -p` asks for, checked against the other containers' and
    /// the sockets of the node's own namespace (a port something listens on would be
    /// taken from it), with a free one picked where none is named. Under `self.lock`.
    fn claim_ports(&self, want: &[PortBinding]) -> Result<Vec<PortBinding>, String> {
        if want.is_empty() {
            return Ok(Vec::new());
        }
        let mut held: BTreeMap<(Protocol, u16), String> = BTreeMap::new();
        for r in self.records() {
            for b in &r.spec.ports {
                held.insert((b.protocol, b.host), format!("container {}", r.name));
            }
        }
        let listening = super::sockets::bound(Path::new("/proc/self/net")).unwrap_or_default();
        let taken = |held: &BTreeMap<(Protocol, u16), String>, key: &(Protocol, u16)| {
            held.get(key).cloned().or_else(|| {
                listening
                    .contains(key)
                    .then(|| "a socket of this node".into())
            })
        };
        let mut out = Vec::with_capacity(want.len());
        // Named ports first: a free one picked for another binding must not take them.
        for b in want.iter().filter(|b| b.host != 0) {
            let key = (b.protocol, b.host);
            if let Some(who) = taken(&held, &key) {
                return Err(format!(
                    "-p: port {}/{} of this node is already in use by {who}",
                    b.host,
                    b.protocol.name()
                ));
            }
            held.insert(key, "this container".into());
            out.push(*b);
        }
        let (low, high) = ephemeral_range();
        for b in want.iter().filter(|b| b.host == 0) {
            let host = (low..=high)
                .find(|p| taken(&held, &(b.protocol, *p)).is_none())
                .ok_or_else(|| {
                    format!(
                        "-p {}/{}: no free port of this node from {low} to {high}",
                        b.container,
                        b.protocol.name()
                    )
                })?;
            held.insert((b.protocol, host), "this container".into());
            out.push(PortBinding { host, ..*b });
        }
        Ok(out)
    }

    /// Makes the node's `run -p` table hold the ports of every container that
    /// publishes some, from its creation to its removal (a stopped container's port
    /// leads to its namespace, where nothing listens: refused, as on a node without
    /// it). An empty table is removed.
    fn sync_ports(&self) -> Result<(), String> {
        let mut want = Published::new();
        for r in self.records() {
            // Only a container that publishes: its address is a file read.
            if r.spec.ports.is_empty() {
                continue;
            }
            let Some(addr) = self.bridge_addr(&r.id) else {
                continue;
            };
            for b in &r.spec.ports {
                let port = Port {
                    proto: b.protocol,
                    port: b.host,
                };
                want.entry(port).or_default().push((addr, b.container));
            }
        }
        let mut table = self.published.lock().unwrap_or_else(|p| p.into_inner());
        let mut clear = self.ports_clear.lock().unwrap_or_else(|p| p.into_inner());
        let mut holds = self.holds.lock().unwrap_or_else(|p| p.into_inner());
        let ports = want.keys().map(|p| (p.proto, p.port)).collect();
        for ((proto, port), e) in holds.sync(&ports) {
            // Checked at creation: only something that bound it since gets here.
            warning!(
                "published port {port}/{}: a process of this node holds it too ({e}); its connections go to the container",
                proto.name()
            );
        }
        if want.is_empty() {
            match table.take() {
                Some(mut m) => {
                    m.clear().map_err(|e| e.to_string())?;
                    *clear = true;
                }
                // What an earlier run may have left (a daemon that is not root made
                // none, and cannot look: it tries again next time).
                None if !*clear => {
                    *clear = Mesh::remove_left(crate::net::mesh::RUN_TABLE).is_ok();
                }
                None => {}
            }
            return Ok(());
        }
        *clear = false;
        let m = match table.as_mut() {
            Some(m) => m,
            None => table.insert(Mesh::run().map_err(|e| e.to_string())?),
        };
        m.sync(&want).map(|_| ()).map_err(|e| e.to_string())
    }

    /// Removes exited containers that asked for it (`--rm`).
    /// Removes `--rm` containers that exited at least [`AUTO_REMOVE_GRACE`] ago. The
    /// grace leaves an attached `run --rm` time to collect the exit status itself
    /// (its Wait removes the container at once after).
    pub fn reap_auto_remove(&self) {
        let now = keeper::now_ms();
        let grace = u64::try_from(AUTO_REMOVE_GRACE.as_millis()).unwrap_or(u64::MAX);
        if let Ok(all) = self.list() {
            for v in all {
                if let Status::Exited { finished_at, .. } = v.status {
                    if v.record.auto_remove && finished_at.saturating_add(grace) <= now {
                        let _ = self.purge(&v.record.id);
                    }
                }
            }
        }
    }

    /// Waits for `id` to exit and returns its status (None: not observable), removing
    /// it afterwards if it was run with `--rm`.
    pub fn wait_status(&self, id: &str) -> Result<Option<i32>, String> {
        self.wait_exit(id, Duration::from_secs(u64::MAX / 4))?;
        let v = self.find(id)?;
        let code = match v.status {
            Status::Exited { code, .. } => code,
            _ => None,
        };
        if v.record.auto_remove {
            self.purge(id)?;
        }
        Ok(code)
    }

    /// Runs `cmd` in the running container `what` through the helper; `on_output` gets
    /// (is stderr, bytes) as they come. Returns the exit status.
    pub fn exec(
        &self,
        what: &str,
        e: &ExecSpec,
        on_output: &(dyn Fn(bool, Vec<u8>) + Sync),
    ) -> Result<i32, String> {
        let ExecSpec {
            cmd,
            env,
            user,
            workdir,
            timeout,
        } = e;
        let v = self.find(what)?;
        if !matches!(v.status, Status::Running { .. }) {
            return Err(format!("container {} is not running", v.record.name));
        }
        if cmd.is_empty() {
            return Err("exec: no command".into());
        }
        let mut c = crate::runtime::command(&self.exe);
        c.arg("runtime-helper")
            .arg("exec")
            .arg(&v.record.id)
            .arg("--dir")
            .arg(&self.dir);
        for e in env {
            c.arg("--env").arg(e);
        }
        if let Some(w) = workdir {
            c.arg("--workdir").arg(w);
        }
        if let Some(u) = user {
            let rootfs = self.dir.join(&v.record.id).join("bundle/rootfs");
            let who = identity(Some(u), &rootfs)?;
            c.arg("--user").arg(format!("{}:{}", who.uid, who.gid));
        }
        if let Some(t) = *timeout {
            c.arg("--timeout-ms").arg(t.as_millis().to_string());
        }
        c.arg("--").args(cmd);
        let mut child = c
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting the runtime helper: {e}"))?;
        let mut out = child.stdout.take().expect("piped");
        let mut err = child.stderr.take().expect("piped");
        let pump = |r: &mut dyn std::io::Read, is_err: bool| {
            let mut buf = [0u8; 16 << 10];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                on_output(is_err, buf[..n].to_vec());
            }
        };
        std::thread::scope(|s| {
            s.spawn(|| pump(&mut out, false));
            pump(&mut err, true);
        });
        let st = child
            .wait()
            .map_err(|e| format!("waiting for the runtime helper: {e}"))?;
        Ok(st
            .code()
            .unwrap_or(128 + std::os::unix::process::ExitStatusExt::signal(&st).unwrap_or(0)))
    }

    fn restart_state(&self, id: &str) -> RestartState {
        std::fs::read(self.dir.join(id).join("restart.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save_restart_state(&self, id: &str, st: &RestartState) {
        let cdir = self.dir.join(id);
        let tmp = cdir.join("tmp");
        let _ = std::fs::create_dir_all(&tmp);
        let json = serde_json::to_vec(st).expect("invariant: state serialises");
        if let Err(e) = write_atomic(&cdir.join("restart.json"), &tmp, &json) {
            error!("saving restart state of {id}: {e}");
        }
    }

    /// Starts an exited container again, from its bundle (the root filesystem is still
    /// mounted unless the machine rebooted).
    pub fn restart_now(&self, v: &ContainerView) -> Result<(), String> {
        let cdir = self.dir.join(&v.record.id);
        let rootfs = cdir.join("bundle/rootfs");
        if !super::super::runtime::rootfs::is_mounted(&rootfs) {
            // After a reboot: mount it again from the same layers and upper directory.
            if v.record.lower.is_empty() {
                return Err(format!(
                    "the root filesystem of {} is gone and its layers are not recorded; remove and run it again",
                    v.record.name
                ));
            }
            mount_overlay(
                &v.record.lower,
                &cdir.join("upper"),
                &cdir.join("work"),
                &rootfs,
            )
            .map_err(|e| {
                format!(
                    "mounting the root filesystem of {} again: {e}",
                    v.record.name
                )
            })?;
        }
        // After a reboot its namespace is gone too (the keeper's spec names its path).
        self.wire(&v.record, &hostname_of(&v.record))?;
        match self.keeper(&KeeperRequest::Run {
            id: v.record.id.clone(),
            log: v.record.log,
        })? {
            KeeperResponse::Started { .. } => Ok(()),
            other => Err(format!("unexpected keeper answer {other:?}")),
        }
    }

    /// One pass of the restart policy: exited containers whose policy says so are
    /// started again, with Docker's backoff (100 ms doubling to 1 min, reset after 10 s
    /// of running). `boot`: the daemon just started (`always` ignores a user stop then).
    pub fn apply_restart_policies(&self, boot: bool) {
        let Ok(all) = self.list() else { return };
        let now = keeper::now_ms();
        for v in all {
            let Status::Exited {
                code,
                started_at,
                finished_at,
                ..
            } = v.status
            else {
                continue;
            };
            // Read under the lock `stop` holds while it marks a container stopped.
            let _g = self.restarts.lock().unwrap_or_else(|p| p.into_inner());
            let mut rs = self.restart_state(&v.record.id);
            let wanted = match v.record.restart {
                RestartPolicy::No => false,
                RestartPolicy::Always => !rs.stopped_by_user || boot,
                RestartPolicy::UnlessStopped => !rs.stopped_by_user,
                RestartPolicy::OnFailure(max) => {
                    code != Some(0) && !rs.stopped_by_user && (max == 0 || rs.count < max)
                }
            };
            if !wanted || v.record.auto_remove {
                continue;
            }
            if rs.not_before == 0 {
                // A run of 10 s or more resets the backoff, as in Docker.
                let ran = finished_at.saturating_sub(started_at);
                let step = if ran >= 10_000 { 0 } else { rs.count.min(10) };
                let delay = (100u64 << step).min(60_000);
                rs.not_before = finished_at + delay;
                self.save_restart_state(&v.record.id, &rs);
            }
            if now < rs.not_before {
                continue;
            }
            // Counted before the start: whoever sees it running again (`ps`) must see
            // the restart counted too (`inspect`). Put back if the start fails.
            let before = rs.clone();
            rs.count += 1;
            rs.stopped_by_user = false;
            rs.not_before = 0;
            self.save_restart_state(&v.record.id, &rs);
            if let Err(e) = self.restart_now(&v) {
                warning!("restarting {}: {e}", v.record.name);
                self.save_restart_state(&v.record.id, &before);
            }
        }
    }

    /// Whether any container has a restart policy or asked to be removed on exit (the
    /// supervisor loop idles otherwise).
    pub fn any_supervised(&self) -> bool {
        self.records()
            .iter()
            .any(|r| r.restart != RestartPolicy::No || r.auto_remove)
    }

    /// Restart count, for `inspect`.
    pub fn restart_count(&self, id: &str) -> u32 {
        self.restart_state(id).count
    }

    /// Whether any container has a health check (the monitor idles otherwise).
    pub fn any_health(&self) -> bool {
        self.records().iter().any(|r| r.health.is_some())
    }

    /// The containers directory (`<data-dir>/containers`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log_path(&self, id: &str) -> PathBuf {
        self.dir.join(id).join("log")
    }
}

fn status_of(s: Option<&ContainerState>) -> Status {
    match s {
        None => Status::Created,
        Some(s) => match &s.exit {
            None => Status::Running {
                pid: s.pid,
                started_at: s.started_at,
            },
            Some(e) => Status::Exited {
                code: e.code,
                oom_killed: e.oom_killed,
                started_at: s.started_at,
                finished_at: e.finished_at,
            },
        },
    }
}

/// The kernel's ephemeral port range (`ip_local_port_range`), where `run -p` picks a
/// free host port as Docker does.
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut f = s.split_whitespace().map(|v| v.parse::<u16>().ok());
            Some((f.next()??, f.next()??))
        })
        .filter(|(l, h)| 0 < *l && l <= h)
        .unwrap_or(EPHEMERAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let valid_name = crate::model::container::valid_container_name;
        assert!(valid_name("web-1.a_b"));
        assert!(!valid_name("-x") && !valid_name("a b") && !valid_name(""));
        let n = random_name("0123abcd");
        assert!(n.contains('_') && valid_name(&n));
    }
}

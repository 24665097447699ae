//! The daemon's loop: one thread driving the node's [`Stack`] (control, Raft, gossip)
//! with the real transport socket, the API socket, a disk and the clock. It decides
//! nothing: every decision is the stack's; this file carries out its [`Io`].
//!
//! Each turn: wait for a datagram, an API request, a finished log write or the earliest
//! timer; feed it in; then carry out every effect the stack has. Log writes and syncs run
//! on the blocking pool, one job at a time: while one is in flight the loop goes on
//! serving gossip, the transport's timers and requests, and the stack holds back
//! whatever depends on the write (see `control::stack`).

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, Context};
use smol::channel::{Receiver, Sender};

use crate::api::{Request, Response};
use crate::cluster;
use crate::control::{
    Admission, Bound, Identity, Io, LogWrite, Membership, Reply, RequestId, Stack, StackConfig,
};
use crate::daemon::server;
use crate::daemon::wal::{Wal, WalError};
use crate::netio::keyfile;
use crate::netio::transport::{os_random, Driver};
use crate::transport::{self, Event as TEvent, PeerKey, SendError};

/// API requests queued for the loop; more wait in their connection tasks.
const API_QUEUE: usize = 64;
/// Log reads (`service logs`) on the blocking pool at once. Each holds up to one
/// answer's budget (`api::LOG_ANSWER_BYTES`) twice over, as bytes read and as lines;
/// a peer's read beyond this is dropped (its manager repeats it a second later), our
/// CLI's is told to try again.
const MAX_LOG_JOBS: usize = 4;

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub listen: Option<SocketAddr>,
    pub advertise: Option<SocketAddr>,
    pub hostname: String,
    pub labels: Vec<(String, String)>,
    /// Insecure registries, CA directory: how this node reaches registries.
    pub registry: crate::image::pull::RegistryConfig,
    /// Tasks get a way out through the node's local bridge (`--bridge none`: not).
    pub bridge: bool,
    /// Seconds an idle TCP connection through a VIP is kept (`--lb-idle-timeout`).
    pub lb_tcp_idle: u32,
}

/// Counts of what the driver could not do and had nobody to tell (shown by `info`).
#[derive(Debug, Default)]
struct Dropped {
    send_too_large: u64,
    send_unknown_peer: u64,
    send_no_address: u64,
    send_queue_full: u64,
    sends_without_port: u64,
    peer_table_full: u64,
    membership_not_saved: u64,
    answers_undelivered: u64,
    /// Messages queued for a peer whose handshakes went unanswered.
    unreachable_messages: u64,
    /// Peers' log reads dropped while [`MAX_LOG_JOBS`] ran.
    log_reads_busy: u64,
}

/// A log write running on the blocking pool.
type Writing = smol::Task<(Wal, Result<(), WalError>)>;

struct Node {
    data_dir: PathBuf,
    secret: [u8; 32],
    stack: Stack,
    transport: Option<Driver>,
    /// The Raft log; `None` while a write has it on the blocking pool.
    wal: Option<Wal>,
    writing: Option<(u64, Writing)>,
    wal_bytes: u64,
    answers: BTreeMap<RequestId, Sender<Response>>,
    next_request: RequestId,
    dropped: Dropped,
    /// Benchmark-only ([`SYNC_ON_LOOP_ENV`]): write and sync on the loop's thread.
    sync_on_loop: bool,
    /// The latest a core's timer was handled after its deadline.
    timer_lag_max: std::time::Duration,
    agent: super::agent::Agent,
    engine: std::sync::Arc<super::engine::Engine>,
    /// Log reads running on the blocking pool, and where they report.
    log_jobs: usize,
    logs_done: (Sender<LogsDone>, Receiver<LogsDone>),
}

/// A log read finished: for whom, and what it read.
type LogsDone = (Reply, Result<Vec<crate::api::LogPiece>, String>);

/// Benchmark-only: set to 1, log writes and syncs run on the loop's own thread, as they
/// did before they moved to the blocking pool (`just bench` compares the two).
pub const SYNC_ON_LOOP_ENV: &str = "SWARMLET_BENCH_SYNC_ON_LOOP";

/// What woke the loop besides the transport.
enum Wake {
    Api(Result<(Request, Sender<Response>), smol::channel::RecvError>),
    Written((Wal, Result<(), WalError>)),
    Agent(Result<crate::services::agent::AgentStatus, smol::channel::RecvError>),
    Logs(LogsDone),
}

/// Runs the daemon until it fails. Holds an exclusive lock on the data directory.
pub fn run(cfg: DaemonConfig) -> anyhow::Result<()> {
    super::startup::preflight(&cfg.data_dir, &cfg.socket)?;
    fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create {}", cfg.data_dir.display()))?;
    fs::set_permissions(&cfg.data_dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot set permissions of {}", cfg.data_dir.display()))?;
    let lock_path = cfg.data_dir.join("lock");
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
        |_| {
            anyhow!(
                "another swarmlet daemon is already running on data dir {}",
                cfg.data_dir.display()
            )
        },
    )?;
    let secret = keyfile::load_or_create(&cfg.data_dir.join("node.key"), os_random()?)?;
    let key = PeerKey(transport::noise::public_of(
        &x25519_dalek::StaticSecret::from(secret),
    ));
    let membership = load_membership(&cfg.data_dir)?;
    let engine = std::sync::Arc::new(super::engine::Engine::open(
        &cfg.data_dir,
        cfg.registry.clone(),
        cfg.bridge,
    )?);
    let listener = server::bind_api_socket(&cfg.socket)?;
    let me = Identity {
        id: cluster::node_id(&key),
        key,
        hostname: cfg.hostname.clone(),
        labels: cfg.labels.clone(),
        listen: cfg.listen,
        advertise: cfg.advertise,
    };
    let agent = super::agent::spawn(
        engine.clone(),
        me.id,
        cfg.hostname.clone(),
        &cfg.labels,
        &cfg.data_dir,
        super::netplane::PlaneConfig {
            bridge: cfg.bridge,
            tcp_idle: cfg.lb_tcp_idle,
        },
    )?;
    // `run --network <attachable>`: the engine asks the agent, which asks the leader.
    let (a, d) = (agent.attach_handle(), agent.attach_handle());
    engine.containers.set_attacher(super::containers::Attacher {
        attach: Box::new(move |id: &str, name: &str, network: &str| {
            let w = a.attach(crate::services::agent::AttachWant {
                container: id.to_string(),
                name: name.to_string(),
                network: network.to_string(),
            })?;
            Ok(super::bridged::Bridged {
                netns: w.netns.into(),
                resolv_conf: w.resolv_conf,
                hosts: w.hosts,
                addr: w.addr,
            })
        }),
        detach: Box::new(move |id: &str| d.detach(id)),
    });
    let resume_at = membership.as_ref().map(|m| m.listen);
    let stack = Stack::new(me, membership, StackConfig::default(), os_random()?);
    let mut node = Node {
        data_dir: cfg.data_dir.clone(),
        secret,
        stack,
        transport: None,
        wal: None,
        writing: None,
        wal_bytes: 0,
        answers: BTreeMap::new(),
        next_request: 0,
        dropped: Dropped::default(),
        sync_on_loop: std::env::var(SYNC_ON_LOOP_ENV).is_ok_and(|v| v == "1"),
        timer_lag_max: std::time::Duration::ZERO,
        agent,
        engine: engine.clone(),
        log_jobs: 0,
        logs_done: smol::channel::bounded(MAX_LOG_JOBS),
    };
    let ex = smol::LocalExecutor::new();
    let (tx, rx) = smol::channel::bounded(API_QUEUE);
    smol::block_on(ex.run(async {
        ex.spawn(server::accept_loop(listener, tx, engine)).detach();
        if let Some(listen) = resume_at {
            node.open_port(listen)?;
            node.stack.resume(Instant::now());
        }
        info!(
            "daemon ready, node {} key {}",
            node.stack.control().id(),
            key
        );
        server::notify_systemd_ready();
        node.run(rx).await
    }))?;
    drop(lock);
    Ok(())
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn load_membership(dir: &Path) -> anyhow::Result<Option<Membership>> {
    let p = dir.join("membership");
    match fs::read(&p) {
        Ok(b) => Membership::decode(&b)
            .map(Some)
            .map_err(|e| anyhow!("{}: {e}", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
    }
}

fn save_membership(dir: &Path, m: Option<&Membership>) -> anyhow::Result<()> {
    let p = dir.join("membership");
    let Some(m) = m else {
        return match fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot remove {}", p.display()))
            }
            _ => Ok(()),
        };
    };
    let tmp = dir.join("membership.tmp");
    fs::write(&tmp, m.encode()).with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, &p).with_context(|| format!("cannot write {}", p.display()))?;
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

impl Node {
    fn raft_dir(&self) -> PathBuf {
        self.data_dir.join("raft")
    }

    fn open_port(&mut self, listen: SocketAddr) -> anyhow::Result<()> {
        let d = Driver::bind(listen, self.secret, transport::Config::default())
            .with_context(|| format!("cannot listen on {listen}"))?;
        self.transport = Some(d);
        Ok(())
    }

    async fn run(&mut self, rx: Receiver<(Request, Sender<Response>)>) -> anyhow::Result<()> {
        let agent = self.agent.status.clone();
        let logs = self.logs_done.1.clone();
        loop {
            self.carry_out().await?;
            self.stack.set_clock(Instant::now(), unix_ms());
            let deadline = self.stack.poll_timeout();
            let other = async {
                let written = async {
                    match self.writing.as_mut() {
                        Some((_, task)) => Wake::Written(task.await),
                        None => std::future::pending().await,
                    }
                };
                let api = smol::future::or(async { Wake::Api(rx.recv().await) }, async {
                    Wake::Agent(agent.recv().await)
                });
                let logs = async {
                    match logs.recv().await {
                        Ok(done) => Wake::Logs(done),
                        // We hold a sender: never closed.
                        Err(_) => std::future::pending().await,
                    }
                };
                smol::future::or(smol::future::or(api, logs), written).await
            };
            let woke = match self.transport.as_mut() {
                Some(d) => d.turn(&mut Admission(&self.stack), deadline, other).await?,
                None => {
                    let timer = async {
                        match deadline {
                            Some(at) => async_io::Timer::at(at).await,
                            None => std::future::pending().await,
                        };
                        None
                    };
                    smol::future::or(async { Some(other.await) }, timer).await
                }
            };
            match woke {
                Some(Wake::Api(Ok((req, reply)))) => self.on_request(req, reply),
                Some(Wake::Api(Err(_))) => return Err(anyhow!("the API socket server stopped")),
                Some(Wake::Written((wal, result))) => self.on_written(wal, result)?,
                Some(Wake::Agent(Ok(st))) => self.stack.handle_agent_status(Instant::now(), st),
                Some(Wake::Agent(Err(_))) => return Err(anyhow!("the agent stopped")),
                Some(Wake::Logs((reply, result))) => {
                    self.log_jobs -= 1;
                    self.stack.logs_read(Instant::now(), reply, result);
                }
                None => {}
            }
            self.on_transport_events();
            let now = Instant::now();
            if let Some(due) = self.stack.poll_timeout().filter(|t| *t <= now) {
                // How late a core's timer runs: what a stalled loop costs gossip and Raft.
                let lag = now.duration_since(due);
                self.timer_lag_max = self.timer_lag_max.max(lag);
                self.stack.handle_timeout(now);
            }
        }
    }

    fn on_request(&mut self, req: Request, reply: Sender<Response>) {
        if req == Request::Info {
            let _ = reply.try_send(Response::Info(Box::new(self.info())));
            return;
        }
        self.next_request += 1;
        let id = self.next_request;
        self.answers.insert(id, reply);
        self.stack.handle_api(Instant::now(), id, req);
    }

    fn on_transport_events(&mut self) {
        loop {
            let Some(d) = self.transport.as_mut() else {
                return;
            };
            let Some(e) = d.endpoint_mut().poll_event() else {
                return;
            };
            match e {
                TEvent::Message { peer, data } => {
                    let psk = d.endpoint().session_psk_id(&peer);
                    self.stack.handle_message(Instant::now(), peer, psk, &data);
                }
                TEvent::Unreachable { dropped, .. } => {
                    self.dropped.unreachable_messages += dropped as u64;
                }
                TEvent::Connected { .. } => {}
            }
        }
    }

    fn on_written(&mut self, wal: Wal, result: Result<(), WalError>) -> anyhow::Result<()> {
        let (job, _) = self
            .writing
            .take()
            .expect("invariant: a write finished, so one was in flight");
        // A log that cannot be written is a node that cannot keep its promises: stop,
        // and let systemd restart us onto what is on disk.
        result.context("writing the raft log")?;
        self.wal_bytes = wal.disk_bytes();
        self.wal = Some(wal);
        self.stack.persisted(Instant::now(), job);
        Ok(())
    }

    /// Waits for the write in flight, if any (before the rare effects that replace or
    /// remove the log).
    async fn finish_write(&mut self) -> anyhow::Result<()> {
        if let Some((_, task)) = self.writing.as_mut() {
            let (wal, result) = task.await;
            self.on_written(wal, result)?;
        }
        Ok(())
    }

    async fn carry_out(&mut self) -> anyhow::Result<()> {
        while let Some(io) = self.stack.poll_io() {
            match io {
                Io::Send { to, data } => self.send(to, &data),
                Io::Answer { id, resp } => {
                    let delivered = self
                        .answers
                        .remove(&id)
                        .is_some_and(|tx| tx.try_send(resp).is_ok());
                    if !delivered {
                        self.dropped.answers_undelivered += 1;
                    }
                }
                Io::Bind {
                    listen,
                    advertise,
                    toward,
                } => {
                    let result = self.bind(listen, advertise, toward);
                    self.stack.bound(Instant::now(), result);
                }
                Io::Unbind => {
                    if let Some(mut d) = self.transport.take() {
                        // Goodbyes (a leave) get onto the wire before the socket goes.
                        d.flush().await?;
                    }
                }
                Io::SetPeer {
                    key,
                    addr,
                    psk,
                    psk_id,
                } => {
                    if let Some(d) = self.transport.as_mut() {
                        if d.endpoint_mut()
                            .set_peer_with(key, addr, psk, psk_id)
                            .is_err()
                        {
                            self.dropped.peer_table_full += 1;
                        }
                    }
                }
                Io::RemovePeer(key) => {
                    if let Some(d) = self.transport.as_mut() {
                        d.endpoint_mut().remove_peer(&key);
                    }
                }
                Io::SaveMembership(m) => {
                    if m.is_none() {
                        self.agent.leave();
                    }
                    if let Err(e) = save_membership(&self.data_dir, m.as_ref()) {
                        self.dropped.membership_not_saved += 1;
                        error!("cannot save the membership file: {e:#}");
                    }
                }
                Io::OpenLog => {
                    self.finish_write().await?;
                    let (wal, rec) = Wal::open(&self.raft_dir())?;
                    if rec.torn_bytes > 0 {
                        warning!(
                            "raft log: cut off {} torn bytes at the end (a crash mid-write)",
                            rec.torn_bytes
                        );
                    }
                    self.wal_bytes = wal.disk_bytes();
                    self.wal = Some(wal);
                    self.stack.log_opened(Instant::now(), rec.into_log());
                }
                Io::EraseLog => {
                    self.finish_write().await?;
                    self.wal = None;
                    self.wal_bytes = 0;
                    if let Err(e) = fs::remove_dir_all(self.raft_dir()) {
                        if e.kind() != std::io::ErrorKind::NotFound {
                            error!("cannot remove {}: {e}", self.raft_dir().display());
                        }
                    }
                }
                Io::Persist { job, writes } => self.start_write(job, writes).await?,
                Io::Log(level, text) => crate::logging::emit(level, format_args!("{text}")),
                Io::Assign(a) => self.agent.assign(a),
                Io::ReadLogs { reply, reads } => self.read_logs(reply, reads),
            }
        }
        Ok(())
    }

    async fn start_write(&mut self, job: u64, writes: Vec<LogWrite>) -> anyhow::Result<()> {
        // The stack holds one job at a time; a new one only follows `persisted`.
        self.finish_write().await?;
        let mut wal = self
            .wal
            .take()
            .ok_or_else(|| anyhow!("raft log write with no log open"))?;
        if self.sync_on_loop {
            // The old way, kept for the benchmark's side-by-side figure only: the loop
            // waits for the disk.
            let result = wal.write(&writes);
            self.wal = Some(wal);
            result.context("writing the raft log")?;
            self.wal_bytes = self.wal.as_ref().map_or(0, Wal::disk_bytes);
            self.stack.persisted(Instant::now(), job);
            return Ok(());
        }
        let task = smol::unblock(move || {
            let result = wal.write(&writes);
            (wal, result)
        });
        self.writing = Some((job, task));
        Ok(())
    }

    /// Reads logs on the blocking pool; the loop hears of it as `Wake::Logs`.
    fn read_logs(&mut self, reply: Reply, reads: Vec<crate::api::LogRead>) {
        if self.log_jobs >= MAX_LOG_JOBS {
            match reply {
                Reply::Local(_) => {
                    let why = format!("{MAX_LOG_JOBS} log reads are running; try again");
                    self.stack.logs_read(Instant::now(), reply, Err(why));
                }
                Reply::Remote { .. } => self.dropped.log_reads_busy += 1,
            }
            return;
        }
        self.log_jobs += 1;
        let engine = self.engine.clone();
        let done = self.logs_done.0.clone();
        smol::spawn(async move {
            let result = smol::unblock(move || engine.read_logs(&reads)).await;
            // Bounded by MAX_LOG_JOBS, which this job holds a place of: never full.
            let _ = done.send((reply, result)).await;
        })
        .detach();
    }

    fn send(&mut self, to: PeerKey, data: &[u8]) {
        let Some(d) = self.transport.as_mut() else {
            self.dropped.sends_without_port += 1;
            return;
        };
        match d.send(to, data) {
            Ok(()) => {}
            Err(SendError::TooLarge(_)) => self.dropped.send_too_large += 1,
            Err(SendError::UnknownPeer(_)) => self.dropped.send_unknown_peer += 1,
            Err(SendError::NoAddress(_)) => self.dropped.send_no_address += 1,
            Err(SendError::QueueFull(_)) => self.dropped.send_queue_full += 1,
        }
    }

    /// Opens the port (unless open) and finds the address to advertise.
    fn bind(
        &mut self,
        listen: SocketAddr,
        advertise: Option<SocketAddr>,
        toward: Option<SocketAddr>,
    ) -> Result<Bound, String> {
        let opened_here = self.transport.is_none();
        if opened_here {
            self.open_port(listen).map_err(|e| format!("{e:#}"))?;
        }
        let bound = self
            .transport
            .as_ref()
            .and_then(|d| d.local_addr().ok())
            .unwrap_or(listen);
        let mut advertise = advertise.unwrap_or(bound);
        if advertise.ip().is_unspecified() {
            let found = match toward {
                // The source address toward the manager: one it can answer.
                Some(manager) => super::addr::toward(manager).map_err(|e| {
                    format!("--advertise-addr is needed: no route to the manager {manager} ({e})")
                }),
                None => super::addr::for_init().map_err(|e| {
                    format!("--advertise-addr is needed: {e}; name the address other nodes reach this one at")
                }),
            };
            match found {
                Ok(ip) => advertise.set_ip(ip),
                Err(e) => {
                    if opened_here {
                        self.transport = None; // a failed init or join leaves no port open
                    }
                    return Err(e);
                }
            }
        }
        Ok(Bound {
            listen: bound,
            advertise,
        })
    }

    fn info(&self) -> crate::api::InfoView {
        let mut info = self.stack.info();
        if let Some(r) = info.raft.as_mut() {
            r.wal_bytes = self.wal_bytes;
        }
        let d = &self.dropped;
        info.counters.extend(
            [
                ("sends_too_large", d.send_too_large),
                ("sends_to_unknown_peer", d.send_unknown_peer),
                ("sends_without_address", d.send_no_address),
                ("sends_queue_full", d.send_queue_full),
                ("sends_without_port", d.sends_without_port),
                ("peer_table_full", d.peer_table_full),
                ("membership_not_saved", d.membership_not_saved),
                ("answers_undelivered", d.answers_undelivered),
                ("messages_to_unreachable_peers", d.unreachable_messages),
                ("log_reads_busy", d.log_reads_busy),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v)),
        );
        if let Some(t) = self.transport.as_ref() {
            info.counters
                .push(("datagrams_send_failed".into(), t.send_errors()));
        }
        let lag_ms = u64::try_from(self.timer_lag_max.as_millis()).unwrap_or(u64::MAX);
        info.counters.push(("timer_lag_max_ms".into(), lag_ms));
        info
    }
}

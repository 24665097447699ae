//! What the CLI and the local daemon say to each other over the unix socket.
//!
//! Framing is [`crate::frame`]'s under [`PROTOCOL`]: a 4-byte length, the API version
//! byte and a postcard-encoded [`Request`] or [`Response`]. One request per connection.
//! The socket is created mode 0600 in a root-owned directory: only root can drive the
//! daemon, as with dockerd.
//!
//! Below the daemon: this module imports the shared vocabulary (`crate::model`) and the
//! cluster's pure types, never `crate::daemon`.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cluster::token::TokenRole;
use crate::cluster::{Availability, NodeRole, NodeStatus};
pub use crate::frame::FrameError;
use crate::frame::Protocol;
use crate::model::container::{ContainerSpec, ContainerView, LogCursor, LogLimits, RestartPolicy};
use crate::model::health::HealthFlags;
use crate::model::image::{Credentials, Progress};
use crate::raft::NodeId;
use crate::services::ipam::Pools;
use crate::services::network::NetworkSpec;
use crate::services::spec::ServiceSpec;
use crate::services::store::{TaskId, UpdateStatus};
use crate::services::task::TaskState;
use crate::services::{NetworkId, ServiceId};

/// Format version of API frames. The CLI and the daemon are the same binary, so a
/// mismatch means a CLI and a daemon of different builds: refused, naming both versions.
const API_VERSION: u8 = 1;
/// Largest frame either side accepts: a `node ls` of thousands of nodes fits.
pub const MAX_FRAME: usize = 16 << 20;
/// The API's framing: its version and limit, checked on send and on receive.
pub const PROTOCOL: Protocol = Protocol {
    name: "API",
    version: API_VERSION,
    max_body: MAX_FRAME,
};
/// How long the CLI waits for an answer (a Raft commit or a join takes well under this).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Environment variable that overrides the socket path, as DOCKER_HOST does.
pub const SOCKET_ENV: &str = "SWARMLET_SOCKET";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    Info,
    Init {
        listen: Option<SocketAddr>,
        advertise: Option<SocketAddr>,
        /// Committed entries between Raft snapshots (None: the default).
        snapshot_interval: Option<u64>,
        /// `--default-addr-pool`, `--default-addr-pool-mask-length` (None: Docker's).
        pools: Option<Pools>,
    },
    Join {
        token: String,
        manager: SocketAddr,
        listen: Option<SocketAddr>,
        advertise: Option<SocketAddr>,
    },
    JoinToken {
        role: TokenRole,
        rotate: bool,
    },
    Leave {
        force: bool,
    },
    NodeList,
    NodeInspect {
        nodes: Vec<String>,
    },
    NodeSetRole {
        nodes: Vec<String>,
        role: NodeRole,
    },
    NodeUpdate {
        node: String,
        availability: Option<Availability>,
        label_add: Vec<(String, String)>,
        label_rm: Vec<String>,
    },
    NodeRemove {
        nodes: Vec<String>,
        force: bool,
    },
    /// `debug write`: commit `count` label writes on the asking node's record,
    /// `in_flight` at a time (a load for the Raft and WAL benchmarks and tests).
    DebugWrite {
        count: u64,
        in_flight: u64,
    },
    /// `service create`: answered with the new service's id.
    ServiceCreate(Box<ServiceSpec>),
    /// `service update` (the whole new spec, made by the CLI from the current one), or
    /// with `rollback`, `service rollback` (the spec is ignored).
    ServiceUpdate {
        service: String,
        spec: Box<ServiceSpec>,
        rollback: bool,
    },
    /// `service scale NAME=N...`, all or nothing.
    ServiceScale(Vec<(String, u64)>),
    ServiceRemove(Vec<String>),
    /// `service ls`; with names, `service inspect` (every name must resolve).
    ServiceList(Option<Vec<String>>),
    /// `network create`: answered with the new network's id.
    NetworkCreate(Box<NetworkSpec>),
    /// `network ls`; with names, `network inspect` (every name must resolve).
    NetworkList(Option<Vec<String>>),
    /// `network rm`, all or nothing.
    NetworkRemove(Vec<String>),
    /// `service ps` (of these services) and `node ps` (of that node).
    TaskList {
        services: Vec<String>,
        node: Option<String>,
    },
    /// `service logs`: a chunk of each of these containers' logs on `node` (this
    /// node's own, or another's through the cluster transport). Managers only.
    NodeLogs {
        node: NodeId,
        reads: Vec<LogRead>,
    },
    /// This node's image store (served by the node itself, never forwarded).
    Image(ImageRequest),
    /// This node's containers (served by the node itself, never forwarded).
    Container(ContainerRequest),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ContainerRequest {
    /// Pulls the image if it is missing (`Progress` frames), then answers `Done(id)`.
    Run(Box<RunRequest>),
    List,
    Stop {
        containers: Vec<String>,
        /// Seconds before SIGKILL; -1: none.
        timeout: Option<i64>,
    },
    Kill {
        containers: Vec<String>,
        signal: String,
    },
    Remove {
        containers: Vec<String>,
        force: bool,
    },
    Inspect {
        containers: Vec<String>,
    },
    /// `LogChunk` frames, then `Done`. With `follow`, until the container exits.
    Logs {
        container: String,
        follow: bool,
        tail: Option<u64>,
    },
    /// Blocks until the container exits; answers `Exit`.
    Wait {
        container: String,
    },
    /// Runs a command in a running container: `LogChunk` frames of its output, then
    /// `Exit`.
    Exec {
        container: String,
        cmd: Vec<String>,
        env: Vec<String>,
        user: Option<String>,
        workdir: Option<String>,
    },
}

/// What `swarmlet run` asks for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRequest {
    pub image: String,
    pub name: Option<String>,
    pub spec: ContainerSpec,
    pub stop_signal: Option<String>,
    /// Seconds before SIGKILL; -1: none.
    pub stop_timeout: Option<i64>,
    pub auto_remove: bool,
    pub auth: Option<Credentials>,
    pub health: HealthFlags,
    pub log: LogLimits,
    pub restart: RestartPolicy,
}

/// One line of a container's output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub time: String,
    pub stderr: bool,
    /// Whether the line goes on in the next record (a piece of an overlong line).
    pub partial: bool,
    pub text: Vec<u8>,
}

/// Containers' logs read in one request, and bytes of log each answer carries at most
/// (shared among the containers). One answer must fit a message between nodes.
pub const MAX_LOG_READS: usize = 16;
pub const LOG_ANSWER_BYTES: usize = 512 << 10;
/// Longest container name a log read may name (Docker's names are far shorter).
pub const MAX_LOG_NAME: usize = 512;
// The records of an answer encode in fewer bytes than they take in the file; what
// else a piece holds is a cursor, flags and a short error.
const _: () = assert!(
    LOG_ANSWER_BYTES + MAX_LOG_READS * (MAX_LOG_NAME + 256)
        <= crate::transport::MAX_MESSAGE_SIZE - 1024
);

/// One container's log to read: from the last `n` records (`Tail(None)`: from the
/// start), or on from where an earlier read stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRead {
    pub container: String,
    pub from: LogFrom,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogFrom {
    Tail(Option<u64>),
    At(LogCursor),
}

/// What a node read of one container's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogPiece {
    Lines {
        lines: Vec<LogLine>,
        /// Where to read on from.
        next: LogCursor,
        /// More is there already: ask again at once.
        more: bool,
    },
    /// The node holds no such container (the task never started there, or it was
    /// removed).
    NoContainer,
    Failed(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ImageRequest {
    /// Answered by `Progress` frames, then `Done` (the image's names and id).
    Pull {
        reference: String,
        platform: Option<String>,
        /// Credentials the CLI found for this registry (as `docker pull` sends them).
        auth: Option<Credentials>,
    },
    List,
    Remove {
        images: Vec<String>,
        force: bool,
    },
    /// A tarball the daemon reads from this path (the CLI runs on the same machine).
    Load {
        path: std::path::PathBuf,
        platform: Option<String>,
    },
    Prune {
        all: bool,
    },
    Inspect {
        images: Vec<String>,
    },
}

/// An image as `image ls` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageView {
    pub id: String,
    pub names: Vec<String>,
    pub size: u64,
    pub platform: String,
    /// When it was pulled or loaded, seconds since the epoch.
    pub added: u64,
}

/// How a node looks in `node ls` and `node inspect`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub id: NodeId,
    pub key: String,
    pub hostname: String,
    pub addr: SocketAddr,
    pub role: NodeRole,
    pub status: NodeStatus,
    pub availability: Availability,
    /// For managers: "Leader", "Reachable" or "Unreachable".
    pub manager_status: Option<String>,
    pub labels: Vec<(String, String)>,
    /// Whether this is the node that answered.
    pub is_self: bool,
}

/// What `swarmlet info` shows: Docker's Swarm section, plus the Raft log's figures and
/// the errors that had nobody to tell.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InfoView {
    pub node_id: NodeId,
    pub key: String,
    pub hostname: String,
    /// Docker's LocalNodeState: "inactive", "pending" (init or join under way), "active".
    pub local_state: String,
    /// None until `init` or `join`.
    pub cluster_id: Option<String>,
    pub role: Option<NodeRole>,
    pub leader: Option<NodeId>,
    pub listen: Option<SocketAddr>,
    pub advertise: Option<SocketAddr>,
    /// Counts from the cluster state (managers that have it).
    pub managers: Option<u64>,
    pub nodes: Option<u64>,
    /// Managers as this node knows them (id, address).
    pub remote_managers: Vec<(NodeId, SocketAddr)>,
    pub raft: Option<RaftInfo>,
    /// Errors that had nobody to tell, by name (dropped messages, refused sends), and
    /// the loop's health (`timer_lag_max_ms`: the latest a timer ran after its deadline).
    pub counters: Vec<(String, u64)>,
}

/// A manager's Raft settings and log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftInfo {
    pub snapshot_interval: u64,
    pub heartbeat_ms: u64,
    /// The shortest election timeout (each follower waits up to twice this).
    pub election_timeout_ms: u64,
    pub term: u64,
    pub first_index: u64,
    pub last_index: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    /// Bytes of the WAL segments and snapshot on disk.
    pub wal_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Done(String),
    Error(String),
    Info(Box<InfoView>),
    Nodes(Vec<NodeView>),
    Token(String),
    /// An intermediate frame of a long request; the answer follows.
    Progress(Progress),
    Images(Vec<ImageView>),
    /// A document for `inspect`, already JSON.
    Json(String),
    Containers(Vec<ContainerView>),
    /// An intermediate frame of `logs`.
    LogChunk(Vec<LogLine>),
    /// A container's exit status (None: it could not be observed).
    Exit(Option<i32>),
    Services(Vec<ServiceView>),
    Tasks(Vec<TaskView>),
    Networks(Vec<NetworkView>),
    /// The answer to `NodeLogs`: a piece per read, in order.
    LogPieces(Vec<LogPiece>),
}

/// A service as `service ls` and `service inspect` show it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceView {
    pub id: ServiceId,
    pub spec: ServiceSpec,
    pub previous: Option<ServiceSpec>,
    pub version: u64,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub update: Option<UpdateStatus>,
    /// Tasks running on a node that is up (a task on a Down node is not counted).
    pub running: u64,
    /// Tasks it should run: the replicas, or for a global service its nodes' tasks.
    pub desired: u64,
    /// Jobs: tasks that completed.
    pub completed: u64,
    /// Its virtual IPs: network id, name, address and the subnet's prefix length.
    pub vips: Vec<(NetworkId, String, Ipv4Addr, u8)>,
    /// The published port each of `spec.endpoint.ports` got (0: host mode, any).
    pub published: Vec<u16>,
}

/// A network as `network ls` and `network inspect` show it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetworkView {
    pub id: NetworkId,
    pub spec: NetworkSpec,
    pub vni: u32,
    pub subnet: String,
    pub gateway: Ipv4Addr,
    pub ip_range: String,
    pub created_ms: u64,
    /// Services on it, by name.
    pub services: Vec<String>,
    /// Addresses in use (VIPs, tasks, nodes) and how many it can hand out in all.
    pub used: u64,
    pub capacity: u64,
}

/// A task as `service ps` and `node ps` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskView {
    pub id: TaskId,
    pub service_id: ServiceId,
    pub service: String,
    pub slot: u64,
    pub node_id: Option<NodeId>,
    pub node: Option<String>,
    /// Its node is Down: what it last reported is not what it is now.
    pub node_down: bool,
    pub image: String,
    pub version: u64,
    pub desired: TaskState,
    pub state: TaskState,
    pub message: String,
    pub error: String,
    pub created_ms: u64,
    pub state_ms: u64,
}

/// A whole frame (length included) for `v`; refuses one over [`MAX_FRAME`].
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, FrameError> {
    PROTOCOL.encode(v)
}

/// What the daemon sends for `resp`: the frame, or, when the answer is too large to
/// send, an error frame saying so (the CLI gets a reason, not a closed connection).
pub fn encode_response(resp: &Response) -> Vec<u8> {
    match PROTOCOL.encode(resp) {
        Ok(f) => f,
        Err(e) => PROTOCOL
            .encode(&Response::Error(format!("cannot send the answer: {e}")))
            .expect("invariant: a short error frame fits the limit"),
    }
}

/// Decodes a frame body (after the length).
pub fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, FrameError> {
    PROTOCOL.decode(body)
}

/// Checks a frame length read off the wire.
pub fn frame_len(header: [u8; 4]) -> Result<usize, FrameError> {
    PROTOCOL.body_len(header)
}

/// Blocking client call: what the CLI does.
pub fn call(socket: &Path, req: &Request) -> Result<Response, CallError> {
    let mut s =
        std::os::unix::net::UnixStream::connect(socket).map_err(|e| CallError::Connect {
            path: socket.display().to_string(),
            cause: e,
        })?;
    s.set_read_timeout(Some(CLIENT_TIMEOUT))
        .map_err(FrameError::from)?;
    PROTOCOL.write(&mut s, req)?;
    PROTOCOL.read(&mut s).map_err(answer_error)
}

/// Like [`call`] for requests answered with intermediate frames (`Progress`,
/// `LogChunk`) before the answer: `on_frame` sees each one; the wait between frames is
/// `idle` at most (None: no limit).
pub fn call_streaming(
    socket: &Path,
    req: &Request,
    idle: Option<Duration>,
    mut on_frame: impl FnMut(Response),
) -> Result<Response, CallError> {
    let mut s =
        std::os::unix::net::UnixStream::connect(socket).map_err(|e| CallError::Connect {
            path: socket.display().to_string(),
            cause: e,
        })?;
    s.set_read_timeout(idle).map_err(FrameError::from)?;
    PROTOCOL.write(&mut s, req)?;
    loop {
        match PROTOCOL.read(&mut s).map_err(answer_error)? {
            r @ (Response::Progress(_) | Response::LogChunk(_)) => on_frame(r),
            other => return Ok(other),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot reach the swarmlet daemon at {path}: {cause} (is `swarmlet daemon` running? set --socket or {SOCKET_ENV} to use another)")]
    Connect { path: String, cause: io::Error },
    #[error("the daemon closed the connection before answering (did it stop? its log says why)")]
    Closed,
    // Not a `source`: the message already holds it, and `{:#}` would print it again.
    #[error("talking to the daemon: {0}")]
    Frame(FrameError),
}

impl From<FrameError> for CallError {
    fn from(e: FrameError) -> Self {
        CallError::Frame(e)
    }
}

/// An error reading the daemon's answer: the end of the stream there means the daemon
/// went away mid-request.
fn answer_error(e: FrameError) -> CallError {
    match e {
        FrameError::Closed(_) => CallError::Closed,
        other => CallError::Frame(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_reject_bad_input() {
        let r = Request::NodeUpdate {
            node: "pi-1".into(),
            availability: Some(Availability::Drain),
            label_add: vec![("zone".into(), "a".into())],
            label_rm: vec![],
        };
        let f = encode(&r).unwrap();
        let len = frame_len(f[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, f.len() - 4);
        assert_eq!(decode::<Request>(&f[4..]).unwrap(), r);
        assert!(matches!(
            frame_len((MAX_FRAME as u32 + 1).to_le_bytes()),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            decode::<Request>(&[9, 0]),
            Err(FrameError::Version { got: 9, .. })
        ));
        assert!(matches!(
            decode::<Request>(&[API_VERSION, 250, 250]),
            Err(FrameError::Malformed { .. })
        ));
    }

    #[test]
    fn an_answer_too_large_to_send_becomes_an_error_frame() {
        let huge = Response::Json("x".repeat(MAX_FRAME));
        assert!(matches!(encode(&huge), Err(FrameError::TooLarge { .. })));
        let f = encode_response(&huge);
        match decode::<Response>(&f[4..]).unwrap() {
            Response::Error(e) => assert!(e.contains("exceeds"), "{e}"),
            other => panic!("{other:?}"),
        }
    }
}

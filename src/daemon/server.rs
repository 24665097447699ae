//! The API socket and the process's ties to its supervisor: the unix socket the CLI
//! talks to (one request per connection; image and container requests go straight to
//! the engine on the blocking pool, cluster requests to the node's loop), and systemd's
//! readiness notification.
//!
//! The socket is root's only, but a stuck or broken client must not hold the daemon:
//! connections are capped, a request must arrive whole within a deadline, and its body
//! is read as it arrives (memory follows the bytes received, not the length a header
//! declares), up to a limit far below the answer limit.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use smol::channel::Sender;
use smol::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::api::{self, Request, Response};
use crate::daemon::engine::Engine;

/// Connections served at once. Each is a task, and an engine request also a thread of
/// the blocking pool for as long as it lasts (`logs -f` and an attached `run` last as
/// long as their container). An operator opens a handful; 128 leaves room for scripts
/// and bounds what a flood or a leak can hold.
pub const MAX_CONNECTIONS: usize = 128;
/// How long a client has to send its whole request once connected. The CLI writes it
/// in one go right after connecting; five seconds is ages for a few KiB on a local
/// socket, and a stalled client frees its slot.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request taken. The largest one is a `run` with its command, environment,
/// labels and mounts: kilobytes. Answers may be larger (`api::MAX_FRAME`, a `node ls`
/// of thousands of nodes); requests need not be.
pub const MAX_REQUEST: usize = 1 << 20;
/// Pause after a failed accept (out of file descriptors, say), so the loop waits for
/// connections to close instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

pub fn notify_systemd_ready() {
    // Type=notify units set NOTIFY_SOCKET; a plain run has none and this is a no-op.
    if let Some(path) = std::env::var_os("NOTIFY_SOCKET") {
        if let Err(e) = sd_notify(&path, b"READY=1") {
            warning!("telling systemd we are ready: {e}");
        }
    }
}

/// Sends one datagram to systemd's notification socket: a path, or an abstract name
/// written with a leading `@`.
fn sd_notify(addr: &std::ffi::OsStr, msg: &[u8]) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    let bytes = addr.as_bytes();
    let to = match bytes.strip_prefix(b"@") {
        Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name)?,
        None => std::os::unix::net::SocketAddr::from_pathname(addr)?,
    };
    sock.send_to_addr(msg, &to)?;
    Ok(())
}

pub fn bind_api_socket(path: &Path) -> anyhow::Result<smol::net::unix::UnixListener> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!("socket {} is in use by a running daemon", path.display());
    }
    // A stale socket of a daemon that died is replaced; nothing else is removed.
    if fs::symlink_metadata(path)
        .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
    {
        let _ = fs::remove_file(path);
    }
    let l = smol::net::unix::UnixListener::bind(path)
        .with_context(|| format!("cannot bind {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", path.display()))?;
    Ok(l)
}

pub async fn accept_loop(
    listener: smol::net::unix::UnixListener,
    tx: Sender<(Request, Sender<Response>)>,
    engine: std::sync::Arc<Engine>,
) {
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warning!("accepting an API connection: {e}");
                smol::Timer::after(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Some(slot) = Slot::take(&open) else {
            refuse_at_once(&stream);
            continue;
        };
        let tx = tx.clone();
        let engine = engine.clone();
        smol::spawn(async move {
            let _slot = slot;
            let _ = serve_conn(stream, tx, engine).await;
        })
        .detach();
    }
}

/// One of the [`MAX_CONNECTIONS`], given back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(open: &Arc<AtomicUsize>) -> Option<Slot> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_CONNECTIONS).then_some(n + 1)
        })
        .ok()
        .map(|_| Slot(open.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Tells a client over the connection limit why, without waiting on it: one
/// non-blocking write into a fresh socket's empty buffer, then the connection closes.
fn refuse_at_once(s: &smol::net::unix::UnixStream) {
    let frame = api::encode_response(&Response::Error(format!(
        "the daemon is serving {MAX_CONNECTIONS} connections, its limit; try again when some have ended"
    )));
    let _ = rustix::io::write(s, &frame);
}

/// Why no request came out of a connection.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// The client should be told this (an error frame), then the connection closes.
    Answer(String),
    /// The client hung up: nothing to say, nobody to say it to.
    Gone,
}

/// Reads one request frame (length, then body) within `timeout`, refusing a declared
/// length above `max` at once. The body buffer grows only as bytes arrive.
async fn read_request<S: AsyncRead + Unpin>(
    s: &mut S,
    timeout: Duration,
    max: usize,
) -> Result<Vec<u8>, Refusal> {
    let read = async {
        let mut header = [0u8; 4];
        s.read_exact(&mut header).await.map_err(|_| Refusal::Gone)?;
        let len = u32::from_le_bytes(header) as usize;
        if len > max {
            return Err(Refusal::Answer(format!(
                "request of {len} bytes exceeds the {max}-byte limit"
            )));
        }
        let mut body = Vec::new();
        (&mut *s)
            .take(len as u64)
            .read_to_end(&mut body)
            .await
            .map_err(|_| Refusal::Gone)?;
        if body.len() < len {
            return Err(Refusal::Gone);
        }
        Ok(body)
    };
    let late = async {
        smol::Timer::after(timeout).await;
        Err(Refusal::Answer(format!(
            "no whole request within {} s",
            timeout.as_secs_f64()
        )))
    };
    smol::future::or(read, late).await
}

async fn serve_conn(
    mut s: smol::net::unix::UnixStream,
    tx: Sender<(Request, Sender<Response>)>,
    engine: std::sync::Arc<Engine>,
) -> anyhow::Result<()> {
    let body = match read_request(&mut s, REQUEST_TIMEOUT, MAX_REQUEST).await {
        Ok(body) => body,
        Err(Refusal::Answer(why)) => {
            s.write_all(&api::encode_response(&Response::Error(why)))
                .await?;
            return Ok(());
        }
        Err(Refusal::Gone) => return Ok(()),
    };
    if let Ok(req @ (Request::Image(_) | Request::Container(_))) = api::decode::<Request>(&body) {
        // The engine works on the blocking pool and streams its frames back; a CLI
        // that went away only stops the frames (and a `logs -f`), not the work.
        let (ftx, frx) = smol::channel::bounded(64);
        smol::unblock(move || engine.serve(req, &ftx)).detach();
        while let Ok(frame) = frx.recv().await {
            if s.write_all(&api::encode_response(&frame)).await.is_err() {
                break;
            }
        }
        return Ok(());
    }
    let resp = match api::decode::<Request>(&body) {
        Ok(req) => {
            let (rtx, rrx) = smol::channel::bounded(1);
            tx.send((req, rtx)).await?;
            rrx.recv()
                .await
                .unwrap_or(Response::Error("daemon dropped the request".into()))
        }
        Err(e) => Response::Error(format!("bad request: {e}")),
    };
    s.write_all(&api::encode_response(&resp)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_bounded_in_size_and_time() {
        use smol::net::unix::UnixStream;
        smol::block_on(async {
            let limit = Duration::from_millis(100);
            // Whole: the body comes back.
            let (mut a, mut b) = UnixStream::pair().unwrap();
            let frame = api::encode(&Request::Info).unwrap();
            a.write_all(&frame).await.unwrap();
            assert_eq!(
                read_request(&mut b, limit, 64).await.unwrap(),
                frame[4..].to_vec()
            );
            // A declared length over the limit is refused at once, naming it.
            let (mut a, mut b) = UnixStream::pair().unwrap();
            a.write_all(&(16u32 << 20).to_le_bytes()).await.unwrap();
            let start = std::time::Instant::now();
            let err = read_request(&mut b, Duration::from_secs(60), MAX_REQUEST)
                .await
                .unwrap_err();
            assert_eq!(
                err,
                Refusal::Answer(format!(
                    "request of {} bytes exceeds the {MAX_REQUEST}-byte limit",
                    16 << 20
                ))
            );
            assert!(start.elapsed() < Duration::from_secs(1));
            // A stalled body (and a stalled header) ends at the deadline.
            for sent in [&[100u8, 0, 0, 0, 1, 2][..], &[][..]] {
                let (mut a, mut b) = UnixStream::pair().unwrap();
                a.write_all(sent).await.unwrap();
                let start = std::time::Instant::now();
                let err = read_request(&mut b, limit, 1000).await.unwrap_err();
                assert!(
                    matches!(err, Refusal::Answer(ref m) if m.contains("within")),
                    "{err:?}"
                );
                assert!(start.elapsed() >= limit);
                drop(a);
            }
            // A client that hangs up mid-body is gone, not answered.
            let (mut a, mut b) = UnixStream::pair().unwrap();
            a.write_all(&[100, 0, 0, 0, 1, 2]).await.unwrap();
            drop(a);
            assert_eq!(read_request(&mut b, limit, 1000).await, Err(Refusal::Gone));
        });
    }

    #[test]
    fn slots_are_capped_and_given_back() {
        let open = Arc::new(AtomicUsize::new(0));
        let slots: Vec<Slot> = (0..MAX_CONNECTIONS)
            .map(|_| Slot::take(&open).expect("under the cap"))
            .collect();
        assert!(Slot::take(&open).is_none());
        drop(slots);
        assert_eq!(open.load(Ordering::Acquire), 0);
        assert!(Slot::take(&open).is_some());
    }

    #[test]
    fn sd_notify_reaches_path_and_abstract_sockets() {
        use std::os::linux::net::SocketAddrExt;
        let dir = std::env::temp_dir().join(format!("swarmlet-notify-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let by_path = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        sd_notify(path.as_os_str(), b"READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = by_path.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        let name = format!("swarmlet-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let abstract_sock = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
        sd_notify(std::ffi::OsStr::new(&format!("@{name}")), b"READY=1").unwrap();
        let n = abstract_sock.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        fs::remove_dir_all(&dir).unwrap();
    }
}

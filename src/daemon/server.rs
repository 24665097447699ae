//! The API socket and the process's ties to its supervisor: the unix socket the CLI
//! talks to (one request per connection; image and container requests go straight to
//! the engine on the blocking pool, cluster requests to the node's loop), and systemd's
//! readiness notification.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{bail, Context};
use smol::channel::Sender;

use crate::api::{self, Request, Response};
use crate::daemon::engine::Engine;

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
    let _ = fs::remove_file(path);
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
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let tx = tx.clone();
        let engine = engine.clone();
        smol::spawn(async move {
            let _ = serve_conn(stream, tx, engine).await;
        })
        .detach();
    }
}

async fn serve_conn(
    mut s: smol::net::unix::UnixStream,
    tx: Sender<(Request, Sender<Response>)>,
    engine: std::sync::Arc<Engine>,
) -> anyhow::Result<()> {
    use smol::io::{AsyncReadExt, AsyncWriteExt};
    let mut header = [0u8; 4];
    s.read_exact(&mut header).await?;
    let len = api::frame_len(header)?;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await?;
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

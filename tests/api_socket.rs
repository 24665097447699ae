//! The daemon's API socket against clients that misbehave: oversized frames, stalled
//! requests, more connections than it serves. Each gets an error frame naming the
//! limit, and the daemon goes on serving well-behaved clients.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // test code

mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use support::Daemon;
use swarmlet::api::{decode, frame_len, Response};
use swarmlet::daemon::server::{MAX_CONNECTIONS, MAX_REQUEST, REQUEST_TIMEOUT};

/// The one frame the daemon answers on `s` within `within`, as an error message.
fn error_frame(s: &mut UnixStream, within: Duration) -> String {
    s.set_read_timeout(Some(within)).unwrap();
    let mut header = [0u8; 4];
    s.read_exact(&mut header)
        .unwrap_or_else(|e| panic!("no answer within {within:?}: {e}"));
    let mut body = vec![0u8; frame_len(header).unwrap()];
    s.read_exact(&mut body).unwrap();
    match decode::<Response>(&body).unwrap() {
        Response::Error(e) => e,
        other => panic!("expected an error frame, got {other:?}"),
    }
}

#[test]
fn misbehaving_clients_get_error_frames_and_the_daemon_goes_on() {
    let d = Daemon::new("apisock", "n1", "127.0.34.1");
    let connect = || UnixStream::connect(d.sock()).unwrap();

    // Twenty clients each declare a 16 MiB request and send nothing more: each is
    // refused at once, naming the limit.
    let mut big: Vec<UnixStream> = (0..20).map(|_| connect()).collect();
    for s in &mut big {
        s.write_all(&(16u32 << 20).to_le_bytes()).unwrap();
    }
    for s in &mut big {
        let e = error_frame(s, Duration::from_secs(2));
        assert!(
            e.contains(&format!("exceeds the {MAX_REQUEST}-byte limit")),
            "{e}"
        );
    }
    drop(big);

    // A request that stops halfway is ended at the deadline.
    let mut half = connect();
    half.write_all(&100u32.to_le_bytes()).unwrap();
    half.write_all(&[1; 10]).unwrap();
    let start = Instant::now();
    let e = error_frame(&mut half, REQUEST_TIMEOUT + Duration::from_secs(5));
    assert!(e.contains("no whole request within"), "{e}");
    assert!(start.elapsed() >= REQUEST_TIMEOUT - Duration::from_millis(100));

    // Every slot held by a silent client: one more is told the daemon is full. Under
    // load the daemon may not have accepted them all yet, and a probe can still get a
    // slot (then it holds one too, and the next probe tries again).
    let mut held: Vec<UnixStream> = (0..MAX_CONNECTIONS).map(|_| connect()).collect();
    let deadline = Instant::now() + REQUEST_TIMEOUT / 2;
    let refused = loop {
        let mut extra = connect();
        extra
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut header = [0u8; 4];
        if extra.read_exact(&mut header).is_ok() {
            let mut body = vec![0u8; frame_len(header).unwrap()];
            extra.read_exact(&mut body).unwrap();
            break decode::<Response>(&body).unwrap();
        }
        assert!(Instant::now() < deadline, "no probe was refused");
        held.push(extra);
    };
    let Response::Error(e) = refused else {
        panic!("expected an error frame, got {refused:?}");
    };
    assert!(
        e.contains(&format!("serving {MAX_CONNECTIONS} connections")),
        "{e}"
    );
    // They time out, their slots come back, and a real command is served.
    std::thread::sleep(REQUEST_TIMEOUT + Duration::from_millis(500));
    let out = d.ok(&["debug", "info"]);
    assert!(out.contains("node_id="), "{out}");
    drop(held);
}

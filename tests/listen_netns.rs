//! A task joins its service's balancers only once it listens: one real daemon in a
//! network namespace, a service whose server binds its port seconds after its container
//! starts. Its task stays Starting meanwhile, and the first request through the
//! published port after `service ps` says Running is answered (before, the task was
//! Running, and in the mesh, while nothing listened: a rolling update lost requests).
//! A task that never listens on its published port joins anyway after the agent's
//! wait, as under Docker.
//!
//! Needs root: network namespaces and containers.

#![allow(clippy::unwrap_used)] // test code

mod support;

use std::time::{Duration, Instant};

use support::netio::exchange;
use support::Daemon;

/// The current state of a service's one task (`service ps`'s CURRENT STATE, first word).
fn state(d: &Daemon, svc: &str) -> String {
    d.ok(&["service", "ps", "--format", "json", svc])
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|o| {
            let s = o["CurrentState"].as_str()?;
            Some(s.split_whitespace().next()?.to_string())
        })
        .unwrap_or_default()
}

/// Polls a service's task until it runs; returns whether it was seen Starting first,
/// and when it was first seen Running.
fn until_running(d: &Daemon, svc: &str, secs: u64) -> (bool, Instant) {
    let until = Instant::now() + Duration::from_secs(secs);
    let mut starting = false;
    while Instant::now() < until {
        match state(d, svc).as_str() {
            "Starting" => starting = true,
            "Running" => return (starting, Instant::now()),
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "{svc} not running after {secs} s: {}",
        d.ok(&["service", "ps", svc])
    );
}

#[test]
#[ignore = "needs root: network namespaces and containers"]
fn a_task_joins_its_balancers_once_it_listens() {
    let one = support::one_node("lsn", "10.80.0");
    let (d, hub, image) = (&one.d, &one.hub.hub, &one.hub.image);
    d.ok(&["init", "--listen-addr", &d.addr()]);
    let hub_ns = format!("/var/run/netns/{hub}");

    // Its server binds port 80 three seconds after the container starts.
    d.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "slow",
        "-p",
        "8080:80",
        image,
        "sh",
        "-c",
        "sleep 3; exec busybox httpd -f -p 80 -h /etc",
    ]);
    let (starting, at) = until_running(d, "slow", 60);
    // At once, through the node's published port: answered (busybox httpd says 400 to
    // a request that is not HTTP; what matters is that it was there to say it).
    let got = exchange(&hub_ns, "10.80.0.1:8080");
    assert!(
        got.as_ref().is_ok_and(|s| s.starts_with("HTTP/")),
        "the first request {} ms after Running: {got:?}",
        at.elapsed().as_millis()
    );
    assert!(
        starting,
        "the task was Starting while its server was not listening"
    );

    // A task that never listens on its published port is not held back for good.
    d.ok(&[
        "service", "create", "-d", "--name", "deaf", "-p", "8081:81", image, "sleep", "1000",
    ]);
    let from = Instant::now();
    let (starting, at) = until_running(d, "deaf", 60);
    assert!(starting, "deaf waited Starting for its port");
    assert!(
        at - from >= Duration::from_secs(9),
        "deaf waited the agent's 10 s before running anyway: {:?}",
        at - from
    );
    d.ok(&["service", "rm", "slow", "deaf"]);
}

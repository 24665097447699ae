//! Faults under the data plane, on one real daemon in a network namespace: the VXLAN
//! port taken by another program (the kernel refuses the overlay: tasks are rejected
//! with a message naming the port, and run once it is free), and a task's namespace
//! unpinned under the daemon and its container killed (the task is replaced and wired
//! afresh, the daemon carries on).
//!
//! Needs root: network namespaces and containers.

#![allow(clippy::unwrap_used)] // test code

mod support;

use std::net::UdpSocket;
use std::os::unix::fs::MetadataExt;

use support::Daemon;
use swarmlet::net::rtnl::in_netns;

/// States and errors of a service's tasks, one line each (`service ps --no-trunc`).
fn ps(d: &Daemon, svc: &str) -> String {
    d.ok(&["service", "ps", "--no-trunc", svc])
}

/// How many of a service's tasks are running (their current state, not the desired).
fn running(d: &Daemon, svc: &str) -> usize {
    d.ok(&["service", "ps", "--format", "json", svc])
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|o| {
            o["CurrentState"]
                .as_str()
                .is_some_and(|s| s.starts_with("Running"))
        })
        .count()
}

/// The pinned namespaces of the node's tasks.
fn pinned(d: &Daemon) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(d.dir.join("data/netns"))
        .map(|r| {
            r.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_none())
                .collect()
        })
        .unwrap_or_default()
}

/// The processes whose network namespace is the one pinned at `path`.
fn processes_in(path: &std::path::Path) -> Vec<i32> {
    let ino = std::fs::metadata(path).unwrap().ino();
    let want = format!("net:[{ino}]");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|l| l.to_string_lossy() == want)
        })
        .collect()
}

#[test]
#[ignore = "needs root: network namespaces and containers"]
fn a_taken_vxlan_port_and_a_namespace_gone_under_a_task() {
    let one = support::one_node("nfl", "10.79.0");
    let (d, ns, image) = (&one.d, &one.ns, &one.hub.image);
    d.ok(&["init", "--listen-addr", &d.addr()]);
    d.ok(&["network", "create", "-d", "overlay", "test"]);

    // Another program holds UDP 4789 in the node's namespace: the kernel will not bring
    // the VXLAN device up, and the task is rejected saying why.
    let held = in_netns(&format!("/var/run/netns/{ns}"), || {
        UdpSocket::bind("0.0.0.0:4789")
    })
    .unwrap()
    .unwrap();
    d.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "web",
        "--network",
        "test",
        image,
        "sleep",
        "1000",
    ]);
    support::wait_until(30, "a task rejected naming the VXLAN port", || {
        ps(d, "web").contains("4789")
    });
    let out = ps(d, "web");
    assert!(
        out.contains("Rejected") && out.contains("taken by another program"),
        "the refusal says what is taken: {out}"
    );
    assert!(pinned(d).is_empty(), "a rejected task leaves no namespace");
    // Freed: the next attempt runs.
    drop(held);
    support::wait_until(60, "web running once the port is free", || {
        running(d, "web") == 1
    });

    // The task's namespace unpinned under the daemon, then its container killed: the
    // daemon carries on, the task is replaced and wired afresh.
    let first = pinned(d);
    assert_eq!(first.len(), 1, "{first:?}");
    let procs = processes_in(&first[0]);
    assert!(!procs.is_empty(), "the container runs in its namespace");
    rustix::mount::unmount(&first[0], rustix::mount::UnmountFlags::DETACH).unwrap();
    std::fs::remove_file(&first[0]).unwrap();
    for pid in procs {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid).unwrap(),
            rustix::process::Signal::KILL,
        );
    }
    support::wait_until(60, "a replacement running, wired afresh", || {
        running(d, "web") == 1
            && ps(d, "web").lines().count() >= 4
            && pinned(d).len() == 1
            && pinned(d) != first
    });
    assert!(d.running(), "the daemon carries on");
    d.ok(&["service", "rm", "web"]);
    support::wait_until(30, "namespaces freed", || pinned(d).is_empty());
}

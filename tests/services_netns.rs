//! Services across network namespaces: three nodes on a bridge with no uplink, a real
//! registry in the hub namespace serving the test image. A global service, a constraint
//! no node meets (until a label says so), drain, a node cut off (its replicas run again
//! on the survivors; healed, nothing is doubled and the global service is back to one
//! task per node), and daemons killed and restarted during a rolling update.
//!
//! Needs root: network namespaces and containers.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // test code

mod support;

use std::time::Duration;

use serde_json::json;
use support::image::TestImage;
use support::registry::{Options, Registry};
use support::{Daemon, Net};

/// Nodes that run a task of `svc` desired running and reported running (per `ps`).
fn running_on(m: &Daemon, svc: &str) -> Vec<String> {
    let out = m.ok(&[
        "service",
        "ps",
        "--format",
        "json",
        "-f",
        "desired-state=running",
        svc,
    ]);
    let mut v: Vec<String> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|o| {
            o["CurrentState"]
                .as_str()
                .is_some_and(|s| s.starts_with("Running"))
        })
        .map(|o| o["Node"].as_str().unwrap_or_default().to_string())
        .collect();
    v.sort();
    v
}

/// Running containers of `svc` on node `d` (its own `ps`, not the managers' view).
fn containers_of(d: &Daemon, svc: &str) -> usize {
    d.ok(&["ps"])
        .lines()
        .filter(|l| l.contains(&format!("{svc}.")) && l.contains("Up"))
        .count()
}

#[test]
#[ignore = "needs root: network namespaces and containers"]
fn services_across_namespaces_drain_cut_heal_and_restart() {
    let mut reg = Registry::start("svcns", Options::default());
    let img = TestImage::busybox(json!({"Cmd": ["/bin/sh"]})).build();
    reg.push_image("bb", Some("1"), &img);
    reg.push_image("bb", Some("2"), &img);
    let mut net = Net::new("svn");
    let hub = net.hub_addr("10.78.0.254");
    reg.move_into(&hub, "10.78.0.254");
    let insecure = reg.host();
    let image = |tag: &str| format!("{insecure}/bb:{tag}");

    let mut nodes = support::three_nodes(
        &mut net,
        "svn",
        "10.78.0",
        &["--insecure-registry", &insecure],
    );
    let m = &nodes[0];

    // A global service: one task on every node.
    let out = m.ok(&[
        "service",
        "create",
        "--name",
        "agent",
        "--mode",
        "global",
        &image("1"),
        "sleep",
        "600",
    ]);
    assert!(out.contains("verify: Service converged"), "{out}");
    assert_eq!(running_on(m, "agent"), ["n1", "n2", "n3"]);

    // A constraint no node meets: the wait ends with the reason, the task waits.
    let o = m.cli(&[
        "service",
        "create",
        "--name",
        "db",
        "--constraint",
        "node.labels.disk==ssd",
        &image("1"),
        "sleep",
        "600",
    ]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no suitable node (scheduling constraints not satisfied on 3 nodes)"),
        "{err}"
    );
    let ps = m.ok(&["service", "ps", "--no-trunc", "db"]);
    assert!(
        ps.contains("Pending") && ps.contains("no suitable node"),
        "{ps}"
    );
    m.ok(&["node", "update", "--label-add", "disk=ssd", "n3"]);
    support::wait_until(20, "db placed on n3", || running_on(m, "db") == ["n3"]);

    // Three replicas, one per node.
    m.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "3",
        &image("1"),
        "sleep",
        "600",
    ]);
    assert_eq!(running_on(m, "web"), ["n1", "n2", "n3"]);

    // Drain n2: its replica moves, its global task stops, `node ps` shows it.
    m.ok(&["node", "update", "--availability", "drain", "n2"]);
    support::wait_until(30, "n2 empty", || {
        let web = running_on(m, "web");
        web.len() == 3
            && !web.contains(&"n2".to_string())
            && !running_on(m, "agent").contains(&"n2".to_string())
    });
    support::wait_until(30, "n2's containers stopped", || {
        containers_of(&nodes[1], "web") + containers_of(&nodes[1], "agent") == 0
    });
    let nps = m.ok(&["node", "ps", "n2"]);
    assert!(nps.contains("Shutdown"), "{nps}");
    m.ok(&["node", "update", "--availability", "active", "n2"]);
    support::wait_until(30, "agent back on n2", || {
        running_on(m, "agent") == ["n1", "n2", "n3"]
    });
    m.ok(&["service", "scale", "web=3"]);

    // Cut n3 off: its replicas run again on the survivors.
    let before = m.ok(&["service", "ps", "-f", "desired-state=running", "web"]);
    let on_n3 = running_on(m, "web").iter().filter(|n| *n == "n3").count();
    net.set_link(3, false);
    let took = support::wait_until(30, "web back to 3 on survivors", || {
        let web = running_on(m, "web");
        web.len() == 3 && !web.contains(&"n3".to_string())
    });
    eprintln!("node cut -> {on_n3} replica(s) running again on survivors: {took:?}\n{before}");
    let ls = m.ok(&["service", "ls"]);
    assert!(ls.contains("web") && ls.contains("3/3"), "{ls}");
    // The cut node keeps running what it had (as Swarm does).
    assert!(
        containers_of(&nodes[2], "agent") == 1,
        "n3 keeps its tasks while cut off"
    );

    // Heal: the replaced replica stops on n3, the global service is one per node again.
    net.set_link(3, true);
    support::wait_until(30, "healed and settled", || {
        running_on(m, "agent") == ["n1", "n2", "n3"] && running_on(m, "web").len() == 3
    });
    support::wait_until(30, "nothing doubled on n3", || {
        containers_of(&nodes[2], "web")
            == running_on(m, "web").iter().filter(|n| *n == "n3").count()
    });
    let total: usize = nodes.iter().map(|d| containers_of(d, "web")).sum();
    assert_eq!(total, 3, "three web containers in all");

    // A rolling update with the manager and a worker killed (-9) and restarted in the
    // middle: it completes, tasks keep running, nothing is doubled.
    m.ok(&[
        "service",
        "update",
        "-d",
        "--update-delay",
        "2s",
        "--update-parallelism",
        "1",
        "--image",
        &image("2"),
        "web",
    ]);
    std::thread::sleep(Duration::from_millis(1500));
    nodes[0].kill9();
    nodes[1].kill9();
    nodes[0].start();
    nodes[1].start();
    let m = &nodes[0];
    support::wait_until(60, "update completed", || {
        let doc = m.cli(&["service", "inspect", "web"]);
        doc.status.success()
            && serde_json::from_slice::<serde_json::Value>(&doc.stdout)
                .is_ok_and(|d| d[0]["UpdateStatus"]["State"] == "completed")
    });
    support::wait_until(30, "three new replicas", || {
        let out = m.ok(&[
            "service",
            "ps",
            "--format",
            "json",
            "-f",
            "desired-state=running",
            "web",
        ]);
        out.lines()
            .filter(|l| l.contains(&image("2")) && l.contains("\"CurrentState\":\"Running"))
            .count()
            == 3
    });
    support::wait_until(30, "old containers gone", || {
        nodes.iter().map(|d| containers_of(d, "web")).sum::<usize>() == 3
    });
}

//! Standalone containers on attachable overlay networks (`run --network <net>`), on
//! three real daemons in network namespaces: a container run on a worker joins the
//! network through the leader, reaches a service on it by name, through its VIP and by
//! `tasks.` name, still does after its daemon is killed and restarted, and holds the
//! network (`network rm` is refused naming it) until it is removed. Networks made
//! without `--attachable`, and unknown ones, are refused with the reason.
//!
//! Needs root: network namespaces and containers.

#![allow(clippy::unwrap_used)] // test code

mod support;

use support::Daemon;

fn exec(d: &Daemon, c: &str, args: &[&str]) -> (bool, String) {
    d.exec(c, args)
}

#[test]
#[ignore = "needs root: network namespaces and containers"]
fn a_run_container_joins_an_attachable_network_and_holds_it() {
    let mut three = support::three_with_registry("atc", "10.82.0");
    let image = three.hub.image.clone();
    let image = image.as_str();
    let nodes = &mut three.nodes;
    let m = &nodes[0];
    let w = &nodes[1];
    m.ok(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--attachable",
        "shared",
    ]);
    m.ok(&["network", "create", "-d", "overlay", "closed"]);
    let out = m.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "2",
        "--network",
        "shared",
        "--hostname",
        "web-{{.Task.Slot}}",
        "-p",
        "8080:80",
        image,
        "sh",
        "-c",
        "mkdir -p /www && hostname > /www/index.html && exec busybox httpd -f -p 80 -h /www",
    ]);
    assert!(out.contains("verify: Service converged"), "{out}");

    // On a worker: the container joins through the leader and finds the service.
    w.ok(&[
        "run",
        "-d",
        "--name",
        "client",
        "--network",
        "shared",
        image,
        "sleep",
        "600",
    ]);
    let doc: serde_json::Value = serde_json::from_str(&w.ok(&["inspect", "client"])).unwrap();
    assert_eq!(doc[0]["HostConfig"]["NetworkMode"], "shared", "{doc}");
    both_web_tasks_from_the_client(w, "both web tasks through the VIP from the client");
    let (_, ns) = exec(w, "client", &["busybox", "nslookup", "tasks.web"]);
    assert_eq!(ns.matches("Address: 10.").count(), 2, "{ns}");

    // The worker's daemon dies hard and comes back: the container (kept running by its
    // keeper) is still on the network, wired again from the node's set.
    let before = pid_of(w, "client");
    nodes[1].kill9();
    nodes[1].start();
    let (m, w) = (&nodes[0], &nodes[1]);
    assert_eq!(pid_of(w, "client"), before, "the same container process");
    both_web_tasks_from_the_client(w, "both web tasks from the client after a restart");

    // Refused, with the reason: a network made without --attachable, an unknown one.
    for (network, why) in [("closed", "not attachable"), ("nosuch", "not found")] {
        let o = nodes[2].cli(&["run", "--rm", "--network", network, image, "true"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{network}: {err}");
        assert!(err.contains(why), "{network}: {err}");
    }
    let ps = nodes[2].ok(&["ps", "-a"]);
    let others: Vec<&str> = ps
        .lines()
        .skip(1)
        .filter(|l| !l.contains(" web."))
        .collect();
    assert!(others.is_empty(), "nothing half-made: {ps}");

    // The container holds the network; once it is gone (and the service), it can go.
    m.ok(&["service", "rm", "web"]);
    let o = m.cli(&["network", "rm", "shared"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("container client"),
        "{err}"
    );
    w.ok(&["rm", "-f", "client"]);
    support::wait_until(15, "the network free to go", || {
        m.run(&["network", "rm", "shared"]).0
    });
}

/// Waits (20 s at most) until the client container has had answers from both web tasks
/// through the service's VIP.
fn both_web_tasks_from_the_client(w: &Daemon, what: &str) {
    let mut seen = std::collections::BTreeSet::new();
    support::wait_until(20, what, || {
        let (ok, out) = exec(
            w,
            "client",
            &[
                "busybox",
                "timeout",
                "5",
                "busybox",
                "wget",
                "-q",
                "-O",
                "-",
                "http://web/",
            ],
        );
        if ok {
            seen.insert(out.trim().to_string());
        }
        seen.len() == 2
    });
}

fn pid_of(d: &Daemon, c: &str) -> u64 {
    let doc: serde_json::Value = serde_json::from_str(&d.ok(&["inspect", c])).unwrap();
    doc[0]["State"]["Pid"].as_u64().unwrap()
}

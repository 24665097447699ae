//! Services on a real cluster: three daemon processes on loopback addresses pulling the
//! test image from a real registry (Debian's docker-registry), driven through the CLI
//! as a user would. Needs root (containers) and docker-registry.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // test code

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::image::TestImage;
use support::registry::{Options, Registry};
use support::Daemon;

/// A registry holding the busybox test image as `bb:1` and `bb:2` (a second tag, so an
/// update changes the image).
fn registry(tag: &str) -> Registry {
    let reg = Registry::start(tag, Options::default());
    let img = TestImage::busybox(json!({"Cmd": ["/bin/sh"]})).build();
    reg.push_image("bb", Some("1"), &img);
    reg.push_image("bb", Some("2"), &img);
    reg
}

fn cluster(tag: &str, reg: &Registry, n: usize) -> Vec<Daemon> {
    let insecure = reg.host();
    let ds: Vec<Daemon> = (0..n)
        .map(|i| {
            Daemon::with_args(
                tag,
                &format!("n{}", i + 1),
                &format!("127.0.52.{}", i + 1),
                &["--insecure-registry", &insecure],
            )
        })
        .collect();
    ds[0].ok(&["init", "--listen-addr", &ds[0].addr()]);
    let wt = ds[0].ok(&["join-token", "worker", "-q"]).trim().to_string();
    for d in &ds[1..] {
        d.ok(&["join", &wt, &ds[0].addr(), "--listen-addr", &d.addr()]);
    }
    ds
}

fn lines(s: &str) -> Vec<String> {
    s.lines().map(String::from).collect()
}

/// `service ps` rows (header dropped) of tasks desired running.
fn running_tasks(d: &Daemon, svc: &str) -> Vec<String> {
    let out = d.ok(&["service", "ps", "-f", "desired-state=running", svc]);
    lines(&out)
        .into_iter()
        .skip(1)
        .filter(|l| l.contains("Running") && l.contains(" ago"))
        .collect()
}

fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

fn image(reg: &Registry, tag: &str) -> String {
    format!("{}/bb:{tag}", reg.host())
}

#[test]
#[ignore = "needs root"]
fn replicated_service_create_scale_update_and_remove() {
    let t = "svc-basic";
    let reg = registry(t);
    let ds = cluster(t, &reg, 3);
    let m = &ds[0];
    let img = image(&reg, "1");

    // Bad input: refused, nothing made.
    for (args, want) in [
        (vec!["--replicas", "-1"], "invalid replicas value"),
        (
            vec!["--mode", "global", "--replicas", "2"],
            "replicas can only be used",
        ),
        (vec!["--constraint", "node.colour==red"], "node.colour"),
        (vec!["--restart-delay", "soon"], "--restart-delay"),
    ] {
        let mut full = vec!["service", "create", "--name", "bad"];
        full.extend(args);
        full.push(&img);
        let o = m.cli(&full);
        assert_eq!(o.status.code(), Some(2), "{full:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{full:?}: {err}");
    }
    assert_eq!(m.ok(&["service", "ls", "-q"]).trim(), "");

    // Three replicas, one per node, waited for with progress lines.
    let out = m.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "3",
        &img,
        "sleep",
        "600",
    ]);
    assert!(out.contains("overall progress: 3 out of 3 tasks"), "{out}");
    assert!(out.contains("verify: Service converged"), "{out}");
    let rows = running_tasks(m, "web");
    assert_eq!(rows.len(), 3, "{rows:#?}");
    for n in ["n1", "n2", "n3"] {
        assert!(
            rows.iter().any(|r| r.split_whitespace().any(|w| w == n)),
            "{n}: {rows:#?}"
        );
    }
    let ls = m.ok(&["service", "ls"]);
    assert!(lines(&ls)[1].contains("3/3"), "{ls}");
    // A name already taken.
    let o = m.cli(&["service", "create", "--name", "web", &img]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
    // A worker refuses cluster commands.
    let o = ds[1].cli(&["service", "ls"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a swarm manager"));
    // The container carries Docker's name on its node.
    let ps = ds[1].ok(&["ps"]);
    assert!(ps.contains("web."), "{ps}");

    // Scale up and down.
    let out = m.ok(&["service", "scale", "web=6"]);
    assert!(out.contains("web scaled to 6"), "{out}");
    assert_eq!(running_tasks(m, "web").len(), 6);
    m.ok(&["service", "scale", "web=2"]);
    wait_for(20, "two replicas", || running_tasks(m, "web").len() == 2);

    // A rolling update, parallelism 2.
    let img2 = image(&reg, "2");
    let out = m.ok(&[
        "service",
        "update",
        "--update-parallelism",
        "2",
        "--image",
        &img2,
        "web",
    ]);
    assert!(out.contains("verify: Service converged"), "{out}");
    let rows = running_tasks(m, "web");
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.contains(&img2)), "{rows:#?}");
    let doc: serde_json::Value =
        serde_json::from_str(&m.ok(&["service", "inspect", "web"])).unwrap();
    assert_eq!(
        doc[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"],
        img2
    );
    assert_eq!(doc[0]["UpdateStatus"]["State"], "completed");
    assert_eq!(
        doc[0]["PreviousSpec"]["TaskTemplate"]["ContainerSpec"]["Image"],
        img
    );

    // An update to an image that does not exist rolls back, and says so.
    let nope = image(&reg, "nope");
    let o = m.cli(&[
        "service",
        "update",
        "--update-failure-action",
        "rollback",
        "--image",
        &nope,
        "web",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("update rolled back due to failure or early termination of task"),
        "{err}"
    );
    let doc: serde_json::Value =
        serde_json::from_str(&m.ok(&["service", "inspect", "web"])).unwrap();
    assert_eq!(doc[0]["UpdateStatus"]["State"], "rollback_completed");
    assert_eq!(
        doc[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"],
        img2
    );
    let rows = running_tasks(m, "web");
    assert_eq!(rows.len(), 2, "{rows:#?}");
    assert!(rows.iter().all(|r| r.contains(&img2)), "{rows:#?}");
    let all = m.ok(&["service", "ps", "--no-trunc", "web"]);
    assert!(all.contains(&format!("No such image: {nope}")), "{all}");

    // Removal takes every container away.
    let out = m.ok(&["service", "rm", "web"]);
    assert_eq!(out.trim(), "web");
    wait_for(30, "containers gone", || {
        ds.iter().all(|d| !d.ok(&["ps", "-a"]).contains("web."))
    });
    let o = m.cli(&["service", "rm", "web"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not found"));
}

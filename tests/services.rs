//! Services on a real cluster: three daemon processes, each in its own network
//! namespace on a bridge with no uplink, pulling the test image from a real registry
//! (Debian's docker-registry) in the hub namespace, driven through the CLI as a user
//! would. Needs root (namespaces, containers) and docker-registry.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // test code

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::image::TestImage;
use support::registry::{Options, Registry};
use support::{Daemon, Net};

/// Daemons, their namespaces and the registry, dropped in that order (daemons stop
/// before their namespaces go).
struct Cluster {
    ds: Vec<Daemon>,
    _net: Net,
    reg: Registry,
}

/// `n` nodes on 10.77.0.1 and up (each test's namespaces are its own, so the
/// addresses never meet), joined to the first; the registry holds the busybox test
/// image as `bb:1` and `bb:2` (a second tag, so an update changes the image).
fn cluster(tag: &str, n: usize) -> Cluster {
    let mut reg = Registry::start(tag, Options::default());
    let img = TestImage::busybox(json!({"Cmd": ["/bin/sh"]})).build();
    reg.push_image("bb", Some("1"), &img);
    reg.push_image("bb", Some("2"), &img);
    let mut net = Net::new(&tag[tag.len().saturating_sub(4)..]);
    let hub = net.hub_addr("10.77.0.254");
    reg.move_into(&hub, "10.77.0.254");
    let insecure = reg.host();
    let ds: Vec<Daemon> = (0..n)
        .map(|i| {
            let addr = format!("10.77.0.{}", i + 1);
            let ns = net.host(i + 1, &addr);
            Daemon::in_netns_with_args(
                tag,
                &ns,
                &format!("n{}", i + 1),
                &addr,
                &["--insecure-registry", &insecure],
            )
        })
        .collect();
    ds[0].ok(&["init", "--listen-addr", &ds[0].addr()]);
    let wt = ds[0].ok(&["join-token", "worker", "-q"]).trim().to_string();
    for d in &ds[1..] {
        d.ok(&["join", &wt, &ds[0].addr(), "--listen-addr", &d.addr()]);
    }
    Cluster { ds, _net: net, reg }
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

/// `service inspect NAME`, parsed.
fn inspect(d: &Daemon, svc: &str) -> serde_json::Value {
    serde_json::from_str(&d.ok(&["service", "inspect", svc])).unwrap()
}

fn image(reg: &Registry, tag: &str) -> String {
    format!("{}/bb:{tag}", reg.host())
}

#[test]
#[ignore = "needs root"]
fn replicated_service_create_scale_update_and_remove() {
    let t = "svc-basic";
    let c = cluster(t, 3);
    let (ds, reg) = (&c.ds, &c.reg);
    let m = &ds[0];
    let img = image(reg, "1");

    // Bad input: refused, nothing made.
    for (args, want) in [
        (vec!["--replicas", "-1"], "invalid replicas value"),
        (
            vec!["--mode", "global", "--replicas", "2"],
            "replicas can only be used",
        ),
        (vec!["--constraint", "node.colour==red"], "node.colour"),
        (vec!["--restart-delay", "soon"], "--restart-delay"),
        (vec!["--replicas", "three"], "invalid replicas value three"),
        (vec!["--limit-memory", "12zz"], "--limit-memory"),
        (
            vec!["--hostname", "{{.Task.Colour}}"],
            "unknown placeholder",
        ),
        (vec!["-p", "0:80"], "--publish: invalid publish"),
        (vec!["--endpoint-mode", "dnsrr", "-p", "80:80"], "dnsrr"),
    ] {
        let mut full = vec!["service", "create", "--name", "bad"];
        full.extend(args);
        full.push(&img);
        let o = m.cli(&full);
        assert_eq!(o.status.code(), Some(2), "{full:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{full:?}: {err}");
    }
    let o = m.cli(&["service", "create", "--name", "bad", ""]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("invalid reference"));
    assert_eq!(m.ok(&["service", "ls", "-q"]).trim(), "");
    // An unknown service, to each command that names one.
    for args in [
        vec!["service", "update", "--image", &img, "ghost"],
        vec!["service", "scale", "ghost=2"],
        vec!["service", "inspect", "ghost"],
        vec!["service", "ps", "ghost"],
        vec!["service", "rollback", "ghost"],
        vec!["service", "logs", "ghost"],
    ] {
        let o = m.cli(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("ghost") && (err.contains("not found") || err.contains("no such")),
            "{args:?}: {err}"
        );
    }

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

    // Listings: JSON lines with Docker's keys, ids alone, ids for names.
    let ls = m.ok(&[
        "service",
        "ls",
        "--format",
        "json",
        "-f",
        "name=we",
        "-f",
        "name=x",
        "-f",
        "mode=replicated",
    ]);
    let row: serde_json::Value = serde_json::from_str(&lines(&ls)[0]).unwrap();
    assert_eq!(
        (&row["Name"], &row["Mode"], &row["Replicas"], &row["Image"]),
        (
            &json!("web"),
            &json!("replicated"),
            &json!("3/3"),
            &json!(img)
        ),
        "{ls}"
    );
    assert_eq!(m.ok(&["service", "ls", "-q", "-f", "name=nope"]), "");
    assert_eq!(lines(&m.ok(&["service", "ps", "-q", "web"])).len(), 3);
    let raw = m.ok(&["service", "ps", "--no-resolve", "web"]);
    assert!(!raw.contains("web.") && !raw.contains(" n1 "), "{raw}");

    // A second service, detached and quiet: its id alone.
    let out = m.ok(&[
        "service", "create", "-d", "-q", "--name", "side", &img, "sleep", "600",
    ]);
    let id = out.trim();
    assert!(
        id.len() >= 12 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "{out}"
    );
    // Scale both at once, up.
    let out = m.ok(&["service", "scale", "web=4", "side=2"]);
    assert!(
        out.contains("web scaled to 4") && out.contains("side scaled to 2"),
        "{out}"
    );
    assert_eq!(running_tasks(m, "web").len(), 4);
    assert_eq!(running_tasks(m, "side").len(), 2);
    m.ok(&["service", "rm", "side"]);

    // A rolling update, parallelism 2 over 4 replicas: never more than 2 down.
    let img2 = image(reg, "2");
    m.ok(&[
        "service",
        "update",
        "-d",
        "--update-parallelism",
        "2",
        "--update-delay",
        "1s",
        "--image",
        &img2,
        "web",
    ]);
    let mut fewest = u64::MAX;
    wait_for(60, "the update to complete", || {
        let doc = inspect(m, "web");
        let ls = m.ok(&["service", "ls", "--format", "json"]);
        let row: serde_json::Value = serde_json::from_str(&lines(&ls)[0]).unwrap();
        let running: u64 = row["Replicas"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        fewest = fewest.min(running);
        doc[0]["UpdateStatus"]["State"] == "completed" && running == 4
    });
    assert!(fewest >= 2, "{fewest} of 4 running during the update");
    let rows = running_tasks(m, "web");
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().all(|r| r.contains(&img2)), "{rows:#?}");
    let doc = inspect(m, "web");
    assert_eq!(
        doc[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"],
        img2
    );
    assert_eq!(doc[0]["UpdateStatus"]["State"], "completed");
    assert_eq!(
        doc[0]["PreviousSpec"]["TaskTemplate"]["ContainerSpec"]["Image"],
        img
    );
    let pretty = m.ok(&["service", "inspect", "--pretty", "web"]);
    for want in [
        "Name:\t\tweb",
        " Replicas:\t4",
        " State:\t\tcompleted",
        " Parallelism:\t2",
        " Delay:\t\t1s",
        &format!(" Image:\t\t{img2}"),
    ] {
        assert!(pretty.contains(want), "{want:?} not in {pretty}");
    }

    // Edits: environment, labels, a constraint, a spread preference, a templated
    // hostname; forced, so every task is made again. The tasks go to the workers.
    m.ok(&[
        "service",
        "update",
        "--env-add",
        "GREETING=hi",
        "--label-add",
        "team=edge",
        "--constraint-add",
        "node.role==worker",
        "--placement-pref-add",
        "spread=node.labels.zone",
        "--hostname",
        "{{.Service.Name}}-{{.Task.Slot}}",
        "--force",
        "web",
    ]);
    let doc = inspect(m, "web");
    let spec = &doc[0]["Spec"];
    assert_eq!(spec["Labels"]["team"], "edge");
    assert_eq!(
        spec["TaskTemplate"]["ContainerSpec"]["Env"],
        json!(["GREETING=hi"])
    );
    assert_eq!(
        spec["TaskTemplate"]["Placement"]["Constraints"],
        json!(["node.role==worker"])
    );
    assert_eq!(
        spec["TaskTemplate"]["Placement"]["Preferences"][0]["Spread"]["SpreadDescriptor"],
        "node.labels.zone"
    );
    let rows = running_tasks(m, "web");
    assert_eq!(rows.len(), 4, "{rows:#?}");
    assert!(
        rows.iter()
            .all(|r| !r.split_whitespace().any(|w| w == "n1")),
        "{rows:#?}"
    );
    let ps = ds[1].ok(&["ps"]);
    let name = ps
        .split_whitespace()
        .find(|w| w.starts_with("web."))
        .unwrap_or_else(|| panic!("no task container on n2: {ps}"))
        .to_string();
    let slot = name.split('.').nth(1).unwrap();
    let inside = ds[1].ok(&["exec", &name, "sh", "-c", "echo $(hostname) $GREETING"]);
    assert_eq!(inside.trim(), format!("web-{slot} hi"));
    let info: serde_json::Value = serde_json::from_str(&ds[1].ok(&["inspect", &name])).unwrap();
    assert!(info.to_string().contains(&format!("web-{slot}")), "{info}");
    // Rolled back by hand: the spec before the edits, on every node again.
    let out = m.ok(&["service", "rollback", "web"]);
    assert!(out.contains("verify: Service converged"), "{out}");
    let doc = inspect(m, "web");
    assert_eq!(doc[0]["UpdateStatus"]["State"], "rollback_completed");
    assert_eq!(
        doc[0]["Spec"]["TaskTemplate"]["Placement"]["Constraints"],
        json!([])
    );
    m.ok(&["service", "scale", "web=2"]);
    wait_for(20, "two replicas", || running_tasks(m, "web").len() == 2);
    let rows = running_tasks(m, "web");
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.contains(&img2)), "{rows:#?}");

    // An update to an image that does not exist rolls back, and says so.
    let nope = image(reg, "nope");
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
    let doc = inspect(m, "web");
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

    // Failure action pause (the default) stops the update, and the waiting CLI says so.
    let o = m.cli(&[
        "service",
        "update",
        "--update-parallelism",
        "1",
        "--update-failure-action",
        "pause",
        "--image",
        &nope,
        "web",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("update paused due to failure"), "{err}");
    let doc = inspect(m, "web");
    assert_eq!(doc[0]["UpdateStatus"]["State"], "paused");
    // One replica was tried and failed; the other still runs the old image.
    assert!(
        running_tasks(m, "web").iter().any(|r| r.contains(&img2)),
        "{:#?}",
        running_tasks(m, "web")
    );

    // A health check gates Running: Starting until the check passes.
    m.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "hc",
        "--health-cmd",
        "test -e /tmp/ok",
        "--health-interval",
        "1s",
        "--health-retries",
        "1000",
        &img,
        "sleep",
        "600",
    ]);
    let mut on = None;
    wait_for(30, "hc's task to start", || {
        let ps = m.ok(&["service", "ps", "hc"]);
        on = lines(&ps).get(1).and_then(|r| {
            r.contains("Starting")
                .then(|| r.split_whitespace().nth(3).unwrap().to_string())
        });
        on.is_some()
    });
    std::thread::sleep(Duration::from_secs(3));
    let ps = m.ok(&["service", "ps", "hc"]);
    assert!(lines(&ps)[1].contains("Starting"), "{ps}");
    let node = on.unwrap();
    let d = &ds[node[1..].parse::<usize>().unwrap() - 1];
    let ps = d.ok(&["ps"]);
    let name = ps
        .split_whitespace()
        .find(|w| w.starts_with("hc."))
        .unwrap_or_else(|| panic!("no hc container on {node}: {ps}"))
        .to_string();
    d.ok(&["exec", &name, "touch", "/tmp/ok"]);
    wait_for(15, "hc to be Running once healthy", || {
        lines(&m.ok(&["service", "ps", "hc"]))[1].contains("Running")
    });
    m.ok(&["service", "rm", "hc"]);

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

/// The task ids `service ps` shows (12 characters) of tasks running.
fn running_ids(d: &Daemon, svc: &str) -> Vec<String> {
    running_tasks(d, svc)
        .iter()
        .map(|r| r.split_whitespace().next().unwrap().to_string())
        .collect()
}

/// `talk.<slot>.<id>@<node>` and the text of a prefixed log line, checking the form.
fn split_line(l: &str) -> (String, String) {
    let (prefix, text) = l
        .split_once("| ")
        .unwrap_or_else(|| panic!("no prefix: {l:?}"));
    assert!(prefix.ends_with("    "), "{l:?}");
    (prefix.trim_end().to_string(), text.to_string())
}

#[test]
#[ignore = "needs root"]
fn service_logs_gathers_every_node_and_names_the_ones_it_cannot_reach() {
    let t = "svc-logs";
    let mut c = cluster(t, 3);
    let reg = &c.reg;
    let ds = &mut c.ds;
    let img = image(reg, "1");
    let script = "echo oops >&2; sleep 1; for i in 1 2 3; do echo line $i; done; sleep 600";
    ds[0].ok(&[
        "service",
        "create",
        "--name",
        "talk",
        "--replicas",
        "3",
        &img,
        "sh",
        "-c",
        script,
    ]);
    let ids = running_ids(&ds[0], "talk");
    assert_eq!(ids.len(), 3);
    let (first, others) = ds.split_at_mut(1);
    let m = &first[0];
    let logs = |args: &[&str]| {
        let mut full = vec!["service", "logs"];
        full.extend_from_slice(args);
        let o = m.cli(&full);
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    // Wait until every replica has written its lines.
    wait_for(20, "every replica's lines", || {
        logs(&["talk"]).1.matches("| line 3").count() == 3
    });

    // Every replica's lines, from every node, under Docker's prefix, the `|` aligned;
    // stderr lines on stderr.
    let (code, out, err) = logs(&["talk"]);
    assert_eq!(code, Some(0), "{err}");
    let rows: Vec<(String, String)> = out.lines().map(split_line).collect();
    assert_eq!(rows.len(), 9, "{out}");
    let bars: std::collections::BTreeSet<usize> =
        out.lines().map(|l| l.find('|').unwrap()).collect();
    assert_eq!(bars.len(), 1, "{out}");
    let mut seen = std::collections::BTreeSet::new();
    for (prefix, _) in &rows {
        let (task, node) = prefix.split_once('@').unwrap();
        let parts: Vec<&str> = task.split('.').collect();
        assert_eq!(parts.len(), 3, "{prefix}");
        assert_eq!(parts[0], "talk");
        assert!(parts[1].parse::<u64>().is_ok(), "{prefix}");
        assert!(ids.contains(&parts[2].to_string()), "{prefix} vs {ids:?}");
        seen.insert((node.to_string(), parts[2].to_string()));
    }
    let nodes: std::collections::BTreeSet<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(nodes, ["n1", "n2", "n3"].into(), "{out}");
    assert_eq!(seen.len(), 3, "{out}");
    for (node, _) in &seen {
        for i in 1..=3 {
            let want = format!("line {i}");
            assert!(
                rows.iter()
                    .any(|(p, t)| p.ends_with(&format!("@{node}")) && *t == want),
                "{node} {want}: {out}"
            );
        }
    }
    assert_eq!(err.matches("| oops").count(), 3, "{err}");

    // --tail 1: the last line of each; -t: each line starts with its time.
    let (code, out, err) = logs(&["--tail", "1", "-t", "talk"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(err.is_empty(), "{err}");
    for l in out.lines() {
        let (time, rest) = l.split_once(' ').unwrap();
        assert!(
            time.len() == 30 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
            "{l}"
        );
        assert_eq!(split_line(rest).1, "line 3", "{l}");
    }
    // --since: a day back shows all nine lines, a time to come none.
    let (code, out, err) = logs(&["--since", "24h", "talk"]);
    assert_eq!((code, out.lines().count()), (Some(0), 9), "{out}{err}");
    let (code, out, _) = logs(&["--since", "2999-01-01T00:00:00Z", "talk"]);
    assert_eq!((code, out.as_str()), (Some(0), ""));
    // --raw: the text alone; --no-task-ids, --no-trunc: the prefix as Docker's.
    let (_, out, _) = logs(&["--raw", "talk"]);
    let mut raw: Vec<&str> = out.lines().collect();
    raw.sort_unstable();
    assert_eq!(
        raw,
        [
            "line 1", "line 1", "line 1", "line 2", "line 2", "line 2", "line 3", "line 3",
            "line 3"
        ]
    );
    let (_, out, _) = logs(&["--no-task-ids", "--tail", "1", "talk"]);
    for l in out.lines() {
        let (prefix, _) = split_line(l);
        assert_eq!(
            prefix.split('@').next().unwrap().split('.').count(),
            2,
            "{l}"
        );
    }
    let (_, out, _) = logs(&["--no-trunc", "--tail", "1", "talk"]);
    for l in out.lines() {
        let (prefix, _) = split_line(l);
        let task = prefix.split('@').next().unwrap();
        assert_eq!(task.rsplit('.').next().unwrap().len(), 16, "{l}");
    }
    // One task, by its id.
    let (code, out, err) = logs(&[&ids[0]]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(
        out.lines().all(|l| l.contains(&format!(".{}@", ids[0]))),
        "{out}"
    );
    // Bad input names the culprit.
    let (code, _, err) = logs(&["--tail", "some", "talk"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--tail"), "{err}");
    let (code, _, err) = logs(&["nope"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no such service or task: nope"), "{err}");

    // A node whose daemon is gone is named on stderr; the others' lines still come.
    others[1].kill9();
    let (code, out, err) = logs(&["talk"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("node n3"), "{err}");
    for node in ["n1", "n2"] {
        for i in 1..=3 {
            assert!(
                out.lines().any(
                    |l| l.contains(&format!("@{node} ")) && l.ends_with(&format!("| line {i}"))
                ),
                "{node} line {i}: {out}"
            );
        }
    }
    assert!(!out.contains("@n3 "), "{out}");

    // -f goes on streaming from the nodes that answer: a line written later shows up.
    let mut child = std::process::Command::new(support::BIN)
        .arg("--socket")
        .arg(m.sock())
        .args(["service", "logs", "-f", "--tail", "0", "talk"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stdout).lines() {
            if tx.send(l.unwrap()).is_err() {
                return;
            }
        }
    });
    let ps = m.ok(&["ps"]);
    let name = ps
        .split_whitespace()
        .find(|w| w.starts_with("talk."))
        .unwrap_or_else(|| panic!("no task container on n1: {ps}"))
        .to_string();
    std::thread::sleep(Duration::from_secs(1));
    m.ok(&["exec", &name, "sh", "-c", "echo later >/proc/1/fd/1"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let got = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.ends_with("| later") => break l,
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                let o = child.wait_with_output().unwrap();
                panic!(
                    "no later line from -f: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
            }
        }
    };
    assert!(got.contains("@n1 "), "{got}");
    child.kill().unwrap();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("node n3"), "{err}");
}

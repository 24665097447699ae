//! The control plane through the CLI, as a user meets it: the Raft log stays bounded
//! and survives kill -9, a slow disk does not stall the loop, and a survivor's `node ls`
//! names the new leader soon after the old one dies.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // test code

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{wait_until, Daemon, Net};

fn info(d: &Daemon) -> Value {
    serde_json::from_str(&d.ok(&["info", "--format", "json"])).unwrap()
}

fn raft_figure(d: &Daemon, name: &str) -> u64 {
    info(d)["Swarm"]["Raft"][name].as_u64().unwrap()
}

/// `init` on the first (with `init_flags`), every other joins it as a manager.
fn form_cluster(ms: &[Daemon], init_flags: &[&str]) {
    let addr = ms[0].addr();
    let mut init = vec!["init", "--listen-addr", &addr];
    init.extend_from_slice(init_flags);
    ms[0].ok(&init);
    let token = ms[0]
        .ok(&["join-token", "manager", "-q"])
        .trim()
        .to_string();
    for m in &ms[1..] {
        m.ok(&["join", &token, &addr, "--listen-addr", &m.addr()]);
    }
}

/// The `node inspect self` document without the fields that may change across a
/// restart of a one-node cluster (none should, but the leader mark is Raft's, not the
/// state's).
fn own_record(d: &Daemon) -> Value {
    let mut v: Value = serde_json::from_str(&d.ok(&["node", "inspect", "self"])).unwrap();
    v[0].as_object_mut().unwrap().remove("ManagerStatus");
    v
}

#[test]
fn the_log_is_compacted_and_a_kill9_restart_restores_the_state_exactly() {
    let mut d = Daemon::new("cp-log", "n1", "127.0.61.1");
    // Out of range: a usage error before the daemon is asked.
    let bad = d.cli(&["init", "--snapshot-interval", "3"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--snapshot-interval"));
    let not_a_number = d.cli(&["init", "--snapshot-interval", "many"]);
    assert_eq!(not_a_number.status.code(), Some(2));
    assert_eq!(info(&d)["Swarm"]["LocalNodeState"], "inactive");

    d.ok(&[
        "init",
        "--listen-addr",
        &d.addr(),
        "--snapshot-interval",
        "200",
    ]);
    assert_eq!(
        info(&d)["Swarm"]["Cluster"]["Spec"]["Raft"]["SnapshotInterval"],
        200
    );
    d.ok(&["node", "update", "--label-add", "zone=garage", "self"]);
    let out = d.ok(&["debug", "write", "--count", "3000", "--in-flight", "32"]);
    assert!(out.contains("3000 writes committed"), "{out}");
    let before = own_record(&d);
    assert_eq!(before[0]["Labels"]["swarmlet.debug.write"], "3000");
    assert_eq!(before[0]["Labels"]["zone"], "garage");

    let i = info(&d);
    let r = &i["Swarm"]["Raft"];
    let (first, last, snap, wal) = (
        r["FirstIndex"].as_u64().unwrap(),
        r["LastIndex"].as_u64().unwrap(),
        r["SnapshotIndex"].as_u64().unwrap(),
        r["WalBytes"].as_u64().unwrap(),
    );
    assert!(last > 3000, "{i}");
    assert!(snap + 400 > last && first == snap + 1, "compacted: {i}");
    // 3,000 label writes are some 300 KB of records; a compacted log holds at most two
    // intervals of them and the snapshot.
    assert!(wal < 64 * 1024, "the WAL is cut back with the log: {i}");

    d.kill9();
    d.start();
    wait_until(10, "the restarted node leads again", || {
        d.run(&["node", "ls"]).0
    });
    assert_eq!(own_record(&d), before, "the state is exactly what it was");
    assert!(raft_figure(&d, "FirstIndex") > 2000);
    assert!(raft_figure(&d, "LastIndex") >= last);

    // And it keeps working: more writes, snapshots go on.
    d.ok(&["debug", "write", "--count", "500"]);
    assert!(raft_figure(&d, "SnapshotIndex") > snap);
    assert_eq!(own_record(&d)[0]["Labels"]["swarmlet.debug.write"], "500");
}

/// Every sync of every node's log takes an extra 100 ms (an SD card on a bad day). The
/// loop keeps serving gossip and transport timers meanwhile: no timer runs a whole sync
/// late (with the sync on the loop, every one would), nobody is suspected, no election
/// happens, and the writes go through.
#[test]
fn a_slow_disk_does_not_stall_gossip_or_raft_timers() {
    let slow = [("SWARMLET_TEST_SLOW_SYNC_MS", "100")];
    let ms: Vec<Daemon> = (1..=3)
        .map(|i| Daemon::with_env("cp-slow", &format!("m{i}"), &format!("127.0.62.{i}"), &slow))
        .collect();
    form_cluster(&ms, &[]);
    let healthy = |ls: &str| {
        ls.matches("Ready").count() == 3
            && ls.matches("Reachable").count() == 2
            && ls.contains("Leader")
    };
    wait_until(20, "3 healthy managers", || healthy(&ms[0].ls()));
    let term = raft_figure(&ms[0], "Term");

    let load = std::thread::spawn({
        let sock = ms[0].sock();
        move || {
            std::process::Command::new(support::BIN)
                .arg("--socket")
                .arg(sock)
                .args(["debug", "write", "--count", "150", "--in-flight", "4"])
                .output()
                .unwrap()
        }
    });
    let start = Instant::now();
    let mut polls = 0;
    while !load.is_finished() {
        let ls = ms[1].ls();
        assert!(
            !ls.contains("Down") && !ls.contains("Unreachable"),
            "a slow disk made a node look dead after {:?}:\n{ls}",
            start.elapsed()
        );
        polls += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = load.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(polls >= 5, "the load should take a while with 100 ms syncs");
    assert!(healthy(&ms[0].ls()));
    for m in &ms {
        assert_eq!(raft_figure(m, "Term"), term, "no election on {}", m.name);
        let dropped = &info(m)["Swarm"]["Dropped"];
        assert_eq!(dropped["sends_queue_full"], 0, "{}: {dropped}", m.name);
        let lag = dropped["timer_lag_max_ms"].as_u64().unwrap();
        assert!(lag < 100, "{}: a timer ran {lag} ms late", m.name);
    }
}

/// kill -9 the leader of three managers in their own network namespaces; a survivor's
/// `node ls`, run every 100 ms, names the new leader soon after: the request waiting on
/// the dead leader moves to the new one as soon as it is known.
#[test]
#[ignore = "needs root (network namespaces)"]
fn node_ls_on_a_survivor_names_the_new_leader_soon_after_a_kill() {
    let mut net = Net::new("swf");
    let mut ms = Vec::new();
    for i in 1..=3 {
        let addr = format!("10.78.0.{i}");
        let n = net.host(i, &addr);
        ms.push(Daemon::in_netns("cp-fail", &n, &format!("m{i}"), &addr));
    }
    form_cluster(&ms, &[]);
    let mut times = Vec::new();
    for _ in 0..5 {
        let healthy = || {
            ms.iter().any(|m| {
                let ls = m.ls();
                ls.matches("Ready").count() == 3 && ls.matches("Reachable").count() == 2
            })
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !healthy() {
            if Instant::now() > deadline {
                for m in &ms {
                    eprintln!("{}:\n{}{}", m.name, m.ls(), m.run(&["debug", "info"]).1);
                }
                panic!("timed out waiting for 3 healthy managers");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let leader = ms.iter().position(Daemon::leads).unwrap();
        let dead = ms[leader].name.clone();
        let survivor = (leader + 1) % 3;
        ms[leader].kill9();
        let killed = Instant::now();
        loop {
            let ls = ms[survivor].ls();
            let new_leader = ls
                .lines()
                .any(|l| l.contains("Leader") && !l.split_whitespace().any(|w| w == dead));
            if new_leader {
                break;
            }
            assert!(killed.elapsed() < Duration::from_secs(20), "no new leader");
            std::thread::sleep(Duration::from_millis(100));
        }
        times.push(killed.elapsed());
        ms[leader].start();
    }
    times.sort();
    eprintln!("kill -9 to a survivor's node ls naming the new leader: {times:?}");
    let median = times[times.len() / 2];
    assert!(
        median < Duration::from_millis(1500),
        "median {median:?} over {times:?}"
    );
}

/// A manager that was down while the others wrote several snapshot intervals' worth of
/// entries is past the leader's log: it gets the leader's snapshot, then the tail, and
/// its state is the cluster's (it serves it after taking over).
#[test]
fn a_manager_far_behind_catches_up_from_the_leaders_snapshot() {
    let mut ms: Vec<Daemon> = (1..=3)
        .map(|i| Daemon::new("cp-behind", &format!("m{i}"), &format!("127.0.63.{i}")))
        .collect();
    form_cluster(&ms, &["--snapshot-interval", "100"]);
    let healthy = |ms: &[Daemon]| {
        let ls = ms[0].ls();
        ls.matches("Ready").count() == 3 && ls.matches("Reachable").count() == 2
    };
    wait_until(20, "3 healthy managers", || healthy(&ms));
    ms[2].kill9();
    let leader = (0..2).find(|i| ms[*i].leads()).unwrap();
    ms[leader].ok(&["debug", "write", "--count", "2000"]);
    let leader_first = raft_figure(&ms[leader], "FirstIndex");
    assert!(
        leader_first > 1900,
        "the leader's log starts past what m3 has"
    );
    ms[2].start();
    let target = raft_figure(&ms[leader], "CommitIndex");
    wait_until(20, "m3 caught up", || {
        raft_figure(&ms[2], "AppliedIndex") >= target
    });
    assert!(
        raft_figure(&ms[2], "SnapshotIndex") >= leader_first - 1,
        "m3 installed the leader's snapshot"
    );
    // m3's state is the cluster's: make it lead and read through it.
    ms[leader].kill9();
    let other = 1 - leader;
    wait_until(20, "a new leader", || ms[2].leads() || ms[other].leads());
    if !ms[2].leads() {
        ms[other].kill9();
        ms[leader].start();
        wait_until(20, "m3 leads", || ms[2].leads());
    }
    let doc: Value =
        serde_json::from_str(&ms[2].ok(&["node", "inspect", &ms[leader].name])).unwrap();
    assert_eq!(doc[0]["Labels"]["swarmlet.debug.write"], "2000");
}

//! Cluster benchmarks with real daemon processes on loopback, plus Raft commit cost with
//! a real write-ahead log. Prints `BENCH <name> <value> <unit>` lines.
//!
//! - leader failover: kill -9 the leader of 3 managers; time until another manager
//!   answers `node ls` as leader and commits a write (20 runs: median and max)
//! - node-down detection: kill -9 a worker; time until the leader's `node ls` says Down
//! - idle RSS of a manager and a worker daemon; bytes an idle manager writes to disk,
//!   scaled to an hour (from /proc/<pid>/io over a quiet stretch)
//! - Raft commit latency and throughput: three cores in one process, each with its own
//!   WAL doing real fsyncs, messages passed in memory (so this is consensus + disk cost)
//! - the bounded log: 1,000,000 writes committed through one daemon with
//!   `--snapshot-interval 10000` (`debug write`): WAL bytes and RSS after 100,000 and
//!   after 1,000,000 (bounded: the same), commit throughput, restart time from the
//!   snapshot after kill -9; and the throughput with the sync back on the loop (the
//!   design before), same run
//! - failover as the user sees it: `node ls` on a survivor every 100 ms until it names
//!   the new leader
//! - the same figures for Docker Swarm (Debian's docker.io) in the same run, and the
//!   ratios (`peer/docker_swarm.rs`)

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // bench code

#[path = "peer/docker_swarm.rs"]
mod docker_swarm;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};
use support::{proc_field, row_has, wait_until, Daemon};

fn cluster_benches() -> docker_swarm::Ours {
    let mut ms = vec![
        Daemon::new("bench", "m1", "127.0.41.1"),
        Daemon::new("bench", "m2", "127.0.41.2"),
        Daemon::new("bench", "m3", "127.0.41.3"),
    ];
    let mut w = Daemon::new("bench", "w1", "127.0.41.4");
    assert!(ms[0].run(&["init", "--listen-addr", &ms[0].addr()]).0);
    let mt = ms[0]
        .run(&["join-token", "manager", "-q"])
        .1
        .trim()
        .to_string();
    let wt = ms[0]
        .run(&["join-token", "worker", "-q"])
        .1
        .trim()
        .to_string();
    for i in 1..3 {
        let a = ms[i].addr();
        assert!(
            ms[i]
                .run(&["join", &mt, &ms[0].addr(), "--listen-addr", &a])
                .0
        );
    }
    let wa = w.addr();
    assert!(w.run(&["join", &wt, &ms[0].addr(), "--listen-addr", &wa]).0);
    let all_up = |ms: &[Daemon]| {
        ms.iter().all(Daemon::running)
            && ms.iter().any(|d| {
                let (ok, ls) = d.run(&["node", "ls"]);
                ok && ls.matches("Ready").count() == 4 && ls.matches("Reachable").count() == 2
            })
    };
    wait_until(30, "cluster up", || all_up(&ms));

    // Idle figures, after things settle.
    std::thread::sleep(Duration::from_secs(3));
    let leader = |ms: &[Daemon]| -> Option<usize> {
        ms.iter().position(|d| {
            d.running()
                && d.run(&["node", "ls"])
                    .1
                    .lines()
                    .any(|l| l.contains('*') && l.contains("Leader"))
        })
    };
    let li = leader(&ms).unwrap();
    let quiet = Duration::from_secs(20);
    let before = proc_field(ms[li].pid(), "io", "write_bytes:");
    std::thread::sleep(quiet);
    let after = proc_field(ms[li].pid(), "io", "write_bytes:");
    let per_hour = (after - before) as f64 * 3600.0 / quiet.as_secs_f64();
    println!("BENCH idle_manager_disk_writes {:.0} bytes/hour", per_hour);
    let manager_rss_mib = proc_field(ms[li].pid(), "status", "VmRSS:") as f64 / 1024.0;
    println!("BENCH idle_manager_rss {manager_rss_mib:.1} MiB");
    println!(
        "BENCH idle_worker_rss {:.1} MiB",
        proc_field(w.pid(), "status", "VmRSS:") as f64 / 1024.0
    );

    // Node-down detection: a worker killed, 5 times.
    let mut downs = Vec::new();
    for _ in 0..5 {
        let li = leader(&ms).unwrap();
        w.kill9();
        let d = wait_until(20, "worker down", || {
            row_has(&ms[li].run(&["node", "ls"]).1, "w1", "Down")
        });
        downs.push(d);
        w.start();
        wait_until(30, "worker back", || {
            row_has(&ms[li].run(&["node", "ls"]).1, "w1", "Ready")
        });
    }
    downs.sort();
    println!(
        "BENCH node_down_detection_median {:.2} s",
        downs[downs.len() / 2].as_secs_f64()
    );
    println!(
        "BENCH node_down_detection_max {:.2} s",
        downs.last().unwrap().as_secs_f64()
    );

    // Failover, 20 runs.
    let mut fails = Vec::new();
    let mut ls_fails = Vec::new();
    for run in 0..20 {
        let li = leader(&ms).unwrap();
        let dead = ms[li].name.clone();
        ms[li].kill9();
        let t0 = Instant::now();
        let others: Vec<usize> = (0..3).filter(|i| *i != li).collect();
        // What a user polling `node ls` on a survivor every 100 ms sees.
        loop {
            let (_, ls) = ms[others[run % 2]].run(&["node", "ls"]);
            if ls
                .lines()
                .any(|l| l.contains("Leader") && !l.split_whitespace().any(|w| w == dead))
            {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "no new leader");
            std::thread::sleep(Duration::from_millis(100));
        }
        ls_fails.push(t0.elapsed());
        let label = format!("run={run}");
        // Ask each survivor locally (`debug info` is never forwarded) whether it leads,
        // then commit a write through that one.
        wait_until(30, "new leader commits", || {
            others.iter().any(|i| {
                let d = &ms[*i];
                d.leads() && d.run(&["node", "update", "--label-add", &label, "w1"]).0
            })
        });
        fails.push(t0.elapsed());
        ms[li].start();
        wait_until(60, "all managers back", || all_up(&ms));
    }
    fails.sort();
    ls_fails.sort();
    println!(
        "BENCH leader_failover_node_ls_median {:.2} s",
        ls_fails[ls_fails.len() / 2].as_secs_f64()
    );
    println!(
        "BENCH leader_failover_node_ls_max {:.2} s",
        ls_fails.last().unwrap().as_secs_f64()
    );
    println!(
        "BENCH leader_failover_median {:.2} s",
        fails[fails.len() / 2].as_secs_f64()
    );
    println!(
        "BENCH leader_failover_max {:.2} s",
        fails.last().unwrap().as_secs_f64()
    );
    docker_swarm::Ours {
        failover_median: fails[fails.len() / 2].as_secs_f64(),
        node_down_median: downs[downs.len() / 2].as_secs_f64(),
        manager_rss_mib,
    }
}

/// `debug write` of `count` on `d`; returns writes per second as the CLI saw them.
fn write_load(d: &Daemon, count: u64) -> f64 {
    let start = Instant::now();
    let n = count.to_string();
    let (ok, out) = d.run(&["debug", "write", "--count", &n, "--in-flight", "256"]);
    assert!(ok, "debug write on {}: {out}", d.name);
    count as f64 / start.elapsed().as_secs_f64()
}

fn raft_figure(d: &Daemon, name: &str) -> u64 {
    let (ok, out) = d.run(&["info", "--format", "json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["Swarm"]["Raft"][name].as_u64().unwrap()
}

fn bounded_log_bench() {
    let mut d = Daemon::new("bench-log", "n1", "127.0.42.1");
    assert!(
        d.run(&[
            "init",
            "--listen-addr",
            &d.addr(),
            "--snapshot-interval",
            "10000"
        ])
        .0
    );
    let rss = |d: &Daemon| proc_field(d.pid(), "status", "VmRSS:") as f64 / 1024.0;
    let first = write_load(&d, 100_000);
    println!(
        "BENCH log_wal_bytes_after_100k_writes {} bytes",
        raft_figure(&d, "WalBytes")
    );
    println!("BENCH log_rss_after_100k_writes {:.1} MiB", rss(&d));
    let rest = write_load(&d, 900_000);
    println!(
        "BENCH log_wal_bytes_after_1m_writes {} bytes",
        raft_figure(&d, "WalBytes")
    );
    println!("BENCH log_rss_after_1m_writes {:.1} MiB", rss(&d));
    println!(
        "BENCH log_first_index_after_1m_writes {}",
        raft_figure(&d, "FirstIndex")
    );
    let throughput = 1_000_000.0 / (100_000.0 / first + 900_000.0 / rest);
    println!("BENCH raft_write_throughput_sync_off_loop {throughput:.0} writes/s");
    d.kill9();
    let t0 = Instant::now();
    d.start();
    wait_until(60, "restarted node serves node ls", || {
        d.run(&["node", "ls"]).0
    });
    println!(
        "BENCH restart_from_snapshot_to_node_ls {:.3} s",
        t0.elapsed().as_secs_f64()
    );
    drop(d);

    // Sync off the loop against on the loop (as before it moved to the blocking pool):
    // fresh daemons, alternating, 100,000 writes each, three rounds (fsync times here
    // vary a lot from one moment to the next).
    let mut off = Vec::new();
    let mut on = Vec::new();
    for round in 0..3 {
        for sync_on_loop in [false, true] {
            let name = format!("r{round}-{sync_on_loop}");
            let env: &[(&str, &str)] = if sync_on_loop {
                &[("SWARMLET_BENCH_SYNC_ON_LOOP", "1")]
            } else {
                &[]
            };
            let d = Daemon::with_env("bench-log-cmp", &name, "127.0.42.2", env);
            assert!(d.run(&["init", "--listen-addr", &d.addr()]).0);
            let t = write_load(&d, 100_000);
            if sync_on_loop { &mut on } else { &mut off }.push(t);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (off, on) = (median(&mut off), median(&mut on));
    println!("BENCH raft_write_throughput_sync_off_loop_median {off:.0} writes/s");
    println!("BENCH raft_write_throughput_sync_on_loop_median {on:.0} writes/s");
    println!(
        "BENCH raft_write_throughput_off_vs_on_loop {:.2} ratio",
        off / on
    );
}

fn raft_commit_bench() {
    use swarmlet::daemon::wal::Wal;
    use swarmlet::raft::{
        Config, HardState, Index, Membership, NodeId, Raft, Role, Snapshot, SnapshotMeta, Term,
    };
    let base = std::env::temp_dir().join(format!("swarmlet-bench-raft-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let ids: Vec<NodeId> = (1..=3).map(NodeId).collect();
    let snap = Snapshot {
        meta: SnapshotMeta {
            index: Index(1),
            term: Term(1),
            membership: Membership::new(ids.clone()),
        },
        data: vec![],
    };
    let now = Instant::now();
    let mut nodes: Vec<(Raft, Wal)> = ids
        .iter()
        .map(|id| {
            let (wal, _) = Wal::open(&base.join(id.0.to_string())).unwrap();
            let hard = HardState {
                term: Term(1),
                vote: None,
            };
            (
                Raft::restore(
                    *id,
                    Config::default(),
                    hard,
                    snap.clone(),
                    vec![],
                    now,
                    id.0,
                ),
                wal,
            )
        })
        .collect();
    nodes[0].0.campaign_now(now);
    // Pump: persist (fsync) every Ready, then deliver its messages, until quiet.
    let pump = |nodes: &mut Vec<(Raft, Wal)>, committed: &mut u64| loop {
        let mut msgs = Vec::new();
        for (i, (r, w)) in nodes.iter_mut().enumerate() {
            while let Some(rd) = r.take_ready() {
                w.persist(&rd, r.hard_state()).unwrap();
                if i == 0 {
                    *committed += rd.committed.len() as u64;
                }
                for env in rd.messages {
                    msgs.push((ids[i], env));
                }
            }
        }
        if msgs.is_empty() {
            return;
        }
        for (from, env) in msgs {
            let to = (env.to.0 - 1) as usize;
            nodes[to].0.step(Instant::now(), from, env.msg);
        }
    };
    let mut committed = 0;
    pump(&mut nodes, &mut committed);
    assert_eq!(nodes[0].0.role(), Role::Leader);
    // Latency: one command at a time.
    let mut lat = Vec::new();
    for i in 0..200u32 {
        let start = Instant::now();
        let target = nodes[0].0.propose(i.to_le_bytes().to_vec()).unwrap();
        while nodes[0].0.status().commit < target {
            pump(&mut nodes, &mut committed);
        }
        lat.push(start.elapsed());
    }
    lat.sort();
    println!(
        "BENCH raft_commit_latency_median {:.3} ms",
        lat[lat.len() / 2].as_secs_f64() * 1e3
    );
    println!(
        "BENCH raft_commit_latency_p99 {:.3} ms",
        lat[lat.len() * 99 / 100].as_secs_f64() * 1e3
    );
    // Throughput: batches of 64 proposals per turn, as a busy leader sees them.
    let start = Instant::now();
    let before = nodes[0].0.status().commit;
    while start.elapsed() < Duration::from_secs(3) {
        for _ in 0..64 {
            nodes[0].0.propose(vec![0u8; 128]).unwrap();
        }
        pump(&mut nodes, &mut committed);
    }
    let done = nodes[0].0.status().commit.0 - before.0;
    println!(
        "BENCH raft_commit_throughput {:.0} commands/s",
        done as f64 / start.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&base);
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // listed by nextest or cargo test: nothing to run
    }
    raft_commit_bench();
    bounded_log_bench();
    let ours = cluster_benches();
    docker_swarm::run(&ours);
}

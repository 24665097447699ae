//! Docker Swarm (Debian's docker.io) measured the same way as swarmlet, in the same run:
//! three manager dockerds and one worker, each in its own network namespace on a
//! bridge with no uplink. They run with `--iptables=false --ip6tables=false
//! --bridge=none` so the host's netfilter rules are never touched, each with its own
//! data root, exec root and socket under a temporary directory, all of which is killed,
//! unmounted and removed afterwards (also on panic).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{proc_field, unmount_below, wait_until, Net};

/// What swarmlet measured, for the ratios.
pub struct Ours {
    pub failover_median: f64,
    pub node_down_median: f64,
    pub manager_rss_mib: f64,
}

/// Debian's docker CLI (20.10, the daemon's own version) when it is there: another
/// `docker` earlier on the PATH may be a newer client.
fn docker_cli() -> &'static str {
    const DEBIAN: &str = "/usr/bin/docker";
    if std::path::Path::new(DEBIAN).exists() {
        DEBIAN
    } else {
        "docker"
    }
}

pub(crate) struct Dockerd {
    pub(crate) dir: PathBuf,
    netns: String,
    pub(crate) ip: String,
    pub(crate) child: Option<Child>,
    pub(crate) id: String,
    /// Extra `dockerd` flags.
    extra: Vec<String>,
}

impl Dockerd {
    pub(crate) fn new(netns: &str, name: &str, ip: &str) -> Dockerd {
        Dockerd::with_args(netns, name, ip, &[])
    }

    /// A dockerd started with extra flags (`--insecure-registry`, say).
    pub(crate) fn with_args(netns: &str, name: &str, ip: &str, extra: &[&str]) -> Dockerd {
        let dir = std::env::temp_dir().join(format!("swarmlet-dk-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut d = Dockerd {
            dir,
            netns: netns.into(),
            ip: ip.into(),
            child: None,
            id: String::new(),
            extra: extra.iter().map(|s| (*s).to_string()).collect(),
        };
        d.start();
        d
    }

    fn start(&mut self) {
        let log = std::fs::File::create(self.dir.join("log")).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.netns))
            .arg("dockerd")
            .arg("--data-root")
            .arg(self.dir.join("data"))
            .arg("--exec-root")
            .arg(self.dir.join("exec"))
            .arg("--pidfile")
            .arg(self.dir.join("pid"))
            .arg("-H")
            .arg(format!("unix://{}", self.dir.join("sock").display()))
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--ip-masq=false",
                "--bridge=none",
            ])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_until(60, "dockerd answering", || self.docker(&["info"]).0);
        self.id = self
            .docker(&["info", "-f", "{{.Swarm.NodeID}}"])
            .1
            .trim()
            .to_string();
    }

    pub(crate) fn docker(&self, args: &[&str]) -> (bool, String) {
        let o = Command::new(docker_cli())
            .arg("-H")
            .arg(format!("unix://{}", self.dir.join("sock").display()))
            .args(args)
            .stderr(Stdio::null())
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    }

    /// dockerd's pid and that of the containerd it started (found by its config path).
    pub(crate) fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.child.iter().map(Child::id).collect();
        let marker = self.dir.join("exec").join("containerd");
        let marker = marker.to_string_lossy();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmd).contains(&*marker) {
                pids.push(pid);
            }
        }
        pids
    }

    /// A dead node: dockerd and its containerd both SIGKILLed.
    fn kill9(&mut self) {
        for pid in self.pids() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).output();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        // Let containerd go before a restart starts a new one on the same state.
        wait_until(10, "containerd gone", || self.pids().is_empty());
    }

    pub(crate) fn rss_mib(&self) -> f64 {
        let kib: u64 = self
            .pids()
            .iter()
            .map(|p| proc_field(*p, "status", "VmRSS:"))
            .sum();
        kib as f64 / 1024.0
    }

    pub(crate) fn disk_writes(&self) -> u64 {
        self.pids()
            .iter()
            .map(|p| proc_field(*p, "io", "write_bytes:"))
            .sum()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // Containers outlive a killed dockerd and shim: end every process whose root is
        // a container's root file system under our data root.
        kill_rooted_below(&self.dir);
        if self.child.is_some() {
            self.kill9();
        }
        // dockerd bind-mounts its data root and its network sandboxes; undo those
        // (deepest first) before the directory goes.
        unmount_below(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// SIGKILLs every process whose root directory lies below `dir`.
fn kill_rooted_below(dir: &std::path::Path) {
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if std::fs::read_link(format!("/proc/{pid}/root")).is_ok_and(|r| r.starts_with(dir)) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).output();
        }
    }
}

fn median(v: &mut [Duration]) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64()
}

/// `docker node ls` rows as (id, status, manager status).
fn nodes(d: &Dockerd) -> Vec<(String, String, String)> {
    d.docker(&[
        "node",
        "ls",
        "--format",
        "{{.ID}} {{.Status}} {{.ManagerStatus}}",
    ])
    .1
    .lines()
    .map(|l| {
        let mut w = l.split_whitespace().map(String::from);
        (
            w.next().unwrap_or_default(),
            w.next().unwrap_or_default(),
            w.next().unwrap_or_default(),
        )
    })
    .collect()
}

fn healthy(ds: &[Dockerd]) -> bool {
    ds.iter().all(|d| d.child.is_some())
        && ds.iter().any(|d| {
            let n = nodes(d);
            n.len() == 4
                && n.iter().all(|r| r.1 == "Ready")
                && n.iter().filter(|r| r.2 == "Leader").count() == 1
                && n.iter().filter(|r| r.2 == "Reachable").count() == 2
        })
}

fn leader(ms: &[Dockerd]) -> usize {
    let n = ms.iter().map(nodes).find(|n| !n.is_empty()).unwrap();
    let id = &n.iter().find(|r| r.2 == "Leader").unwrap().0;
    ms.iter().position(|d| &d.id == id).unwrap()
}

pub fn run(ours: &Ours) {
    let found = Command::new("dockerd")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        println!("# docker.io not installed: Docker Swarm side-by-side skipped");
        return;
    }
    let mut net = Net::new("dkb");
    let mut ms = Vec::new();
    for i in 1..=3 {
        let ip = format!("10.79.0.{i}");
        let ns = net.host(i, &ip);
        ms.push(Dockerd::new(&ns, &format!("m{i}"), &ip));
    }
    let wns = net.host(4, "10.79.0.4");
    let mut w = Dockerd::new(&wns, "w1", "10.79.0.4");
    assert!(
        ms[0]
            .docker(&["swarm", "init", "--advertise-addr", &ms[0].ip])
            .0
    );
    let mt = ms[0].docker(&["swarm", "join-token", "-q", "manager"]).1;
    let wt = ms[0].docker(&["swarm", "join-token", "-q", "worker"]).1;
    let first = format!("{}:2377", ms[0].ip);
    for m in &ms[1..] {
        assert!(m.docker(&["swarm", "join", "--token", mt.trim(), &first]).0);
    }
    assert!(w.docker(&["swarm", "join", "--token", wt.trim(), &first]).0);
    for d in ms.iter_mut().chain(std::iter::once(&mut w)) {
        d.id = d
            .docker(&["info", "-f", "{{.Swarm.NodeID}}"])
            .1
            .trim()
            .to_string();
    }
    wait_until(60, "docker swarm up", || healthy(&ms));

    std::thread::sleep(Duration::from_secs(3));
    let li = leader(&ms);
    let quiet = Duration::from_secs(20);
    let before = ms[li].disk_writes();
    std::thread::sleep(quiet);
    let written = ms[li].disk_writes().saturating_sub(before);
    println!(
        "BENCH docker_swarm_idle_manager_disk_writes {:.0} bytes/hour",
        written as f64 * 3600.0 / quiet.as_secs_f64()
    );
    let rss = ms[li].rss_mib();
    println!("BENCH docker_swarm_idle_manager_rss_dockerd_containerd {rss:.1} MiB");
    println!(
        "BENCH idle_manager_rss_ratio_docker_over_swarmlet {:.1} x",
        rss / ours.manager_rss_mib
    );

    // Node-down detection: kill -9 the worker (dockerd and containerd), 3 runs.
    let mut downs = Vec::new();
    for _ in 0..3 {
        let li = leader(&ms);
        let t0 = Instant::now();
        w.kill9();
        wait_until(120, "docker worker down", || {
            nodes(&ms[li]).iter().any(|r| r.0 == w.id && r.1 == "Down")
        });
        downs.push(t0.elapsed());
        w.start();
        wait_until(120, "docker worker back", || healthy(&ms));
    }
    let down = median(&mut downs);
    println!("BENCH docker_swarm_node_down_detection_median {down:.2} s");
    println!(
        "BENCH node_down_ratio_docker_over_swarmlet {:.1} x",
        down / ours.node_down_median
    );

    // Failover: kill -9 the leader, time until a survivor commits a write (5 runs:
    // each takes Docker's election timeout, so 20 would take many minutes).
    let mut fails = Vec::new();
    for run in 0..5 {
        let li = leader(&ms);
        let t0 = Instant::now();
        ms[li].kill9();
        let label = format!("run={run}");
        let survivors: Vec<usize> = (0..3).filter(|i| *i != li).collect();
        wait_until(120, "docker failover", || {
            survivors.iter().any(|i| {
                let d = &ms[*i];
                d.docker(&["node", "update", "--label-add", &label, &d.id])
                    .0
            })
        });
        fails.push(t0.elapsed());
        ms[li].start();
        wait_until(120, "docker managers back", || healthy(&ms));
    }
    let max = fails.iter().max().unwrap().as_secs_f64();
    let fail = median(&mut fails);
    println!("BENCH docker_swarm_leader_failover_median {fail:.2} s");
    println!("BENCH docker_swarm_leader_failover_max {max:.2} s");
    println!(
        "BENCH leader_failover_ratio_docker_over_swarmlet {:.1} x",
        fail / ours.failover_median
    );
    drop(w);
    drop(ms);
    drop(net);
}

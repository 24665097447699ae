//! Services benchmarks. Prints `BENCH <name> <value> <unit>` lines.
//!
//! - scheduler placements per second: 100,000 tasks (100 services of 1,000 replicas,
//!   every fourth with a label constraint, every tenth with a CPU reservation) on
//!   5,000 nodes (half of them labelled, one in fifty drained), on one core. Goal:
//!   at least 50,000 placements/s. Best of five rounds (these machines are noisy).
//!
//! Then, with Docker Swarm (Debian's docker.io) measured the same way in the same run
//! (`peer/docker_services.rs`), on a cluster of one manager and two workers, each node in
//! its own network namespace on a bridge with no uplink and a real registry in the hub
//! (needs root, docker-registry and docker.io; skipped without them):
//!
//! - `service create` of 3 replicas through the manager's CLI: the blocking command as a
//!   user runs it (Docker's CLI then also waits 5 s to see the tasks stay up), and the
//!   same create with `-d` and `service ls` polled every 100 ms until it says 3/3
//! - a node cut: the link of a worker holding a replica goes down; time until
//!   `service ps` on the manager, polled every 100 ms, shows all three replicas running
//!   on the survivors (detection, rescheduling, the start and every poll included)
//! - with 20 services of 5 replicas (100 tasks) running: the manager's RSS, and the bytes
//!   the manager's and a worker's processes write to disk over a quiet minute, per hour
//!
//! Both sides have the image before the first create (pulled on every node), so the
//! figures are about orchestration, not downloads.

#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss
)] // bench code

#[path = "peer/docker_services.rs"]
mod docker_services;
#[allow(dead_code)] // the cluster bench's half of the Docker peer
#[path = "peer/docker_swarm.rs"]
mod docker_swarm;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use serde_json::json;
use support::image::TestImage;
use support::registry::{Options, Registry};
use support::{proc_field, row_has, wait_until, Daemon, Net};

use swarmlet::cluster::NodeRole;
use swarmlet::raft::NodeId;
use swarmlet::services::constraint::{Constraint, NodeFacts};
use swarmlet::services::scheduler::{Candidate, Group, Resources, Scheduler};
use swarmlet::services::ServiceId;

const NODES: u64 = 5_000;
const SERVICES: u64 = 100;
const REPLICAS: usize = 1_000;
const ROUNDS: usize = 5;

fn main() {
    // `cargo bench` passes --bench; nextest listing the target (--list) must not run it.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    scheduler_bench();
    if !support::is_root() || !Registry::available() {
        println!("# cluster services benchmarks need root and docker-registry: skipped");
        return;
    }
    cluster_benches();
}

fn scheduler_bench() {
    let east: BTreeMap<String, String> = [("zone".to_string(), "east".to_string())].into();
    let none = BTreeMap::new();
    let hostnames: Vec<String> = (0..NODES).map(|n| format!("pi-{n}")).collect();
    let zone = [Constraint::parse("node.labels.zone==east").unwrap()];
    let spread = ["node.labels.zone".to_string()];
    let mut best = f64::MAX;
    for _ in 0..ROUNDS {
        let candidates = (0..NODES).map(|n| Candidate {
            facts: NodeFacts {
                id: NodeId(n.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                hostname: &hostnames[n as usize],
                role: NodeRole::Worker,
                os: "linux",
                arch: "aarch64",
                labels: if n % 2 == 0 { &east } else { &none },
                engine_labels: &none,
            },
            available: n % 50 != 0,
            capacity: Resources {
                nano_cpus: 4_000_000_000,
                memory: 8 << 30,
            },
        });
        let start = Instant::now();
        let mut s = Scheduler::new(candidates);
        let mut placed = 0;
        for svc in 0..SERVICES {
            let g = Group {
                service: ServiceId(svc),
                constraints: if svc % 4 == 0 { &zone } else { &[] },
                max_per_node: 0,
                reserve: Resources {
                    nano_cpus: if svc % 10 == 0 { 100_000_000 } else { 0 },
                    memory: 0,
                },
                // Some spread over the zone label (east, and the nodes without it).
                spread: if svc % 3 == 0 { &spread } else { &[] },
            };
            let p = s.place(&g, REPLICAS);
            assert!(p.unplaced.is_none(), "{:?}", p.unplaced);
            placed += black_box(p).nodes.len();
        }
        assert_eq!(placed, SERVICES as usize * REPLICAS);
        best = best.min(start.elapsed().as_secs_f64());
    }
    let total = (SERVICES as usize * REPLICAS) as f64;
    println!(
        "BENCH scheduler_placements_per_sec {:.0} placements/s",
        total / best
    );
    println!("BENCH scheduler_100k_tasks_5k_nodes {:.1} ms", best * 1e3);
}

/// Rounds of create and of node cut, on each side.
const CLUSTER_ROUNDS: usize = 5;
/// Between two looks through the CLI, as a user with `watch -n 0.1` would look.
const POLL: Duration = Duration::from_millis(100);
/// The load for memory and idle writes: services of so many replicas.
const LOAD_SERVICES: usize = 20;
const LOAD_REPLICAS: usize = 5;
/// The quiet stretch over which idle disk writes are measured.
const QUIET: Duration = Duration::from_secs(60);

/// A 3-node cluster (node 0 the manager, 1 and 2 workers) driven through its CLI on the
/// manager: what the measurements below need from swarmlet and from Docker Swarm alike.
pub trait Swarm: Sync {
    fn name(&self) -> &'static str;
    /// `service create --replicas N` of a long sleep, blocking until the CLI says it
    /// converged unless `detach`.
    fn create(&self, service: &str, replicas: usize, detach: bool);
    /// The nodes (by index) of the service's tasks desired running and running, per
    /// `service ps`.
    fn running(&self, service: &str) -> Vec<usize>;
    /// (name, replicas column) of each row of `service ls`.
    fn replicas(&self) -> Vec<(String, String)>;
    fn rm(&self, services: &[&str]);
    /// The service's containers still running, on all nodes (each node's own `ps`).
    fn containers(&self, service: &str) -> usize;
    /// Cuts or restores node `node`'s link to the bridge.
    fn set_link(&self, node: usize, up: bool);
    /// Whether `node ls` says every node is Ready.
    fn ready(&self) -> bool;
    /// Whether `node ls` says node `node` is Down.
    fn down(&self, node: usize) -> bool;
    /// The daemon of `node`.
    fn daemon_pid(&self, node: usize) -> u32;
    /// Every process of `node`: the daemon and the runtime below it.
    fn node_pids(&self, node: usize) -> Vec<u32>;
}

/// What one side measured.
struct Figures {
    create_cli: Vec<Duration>,
    create_ls: Vec<Duration>,
    cut: Vec<Duration>,
    /// From the cut until `node ls` (polled alongside) says the node is Down.
    cut_to_down: Vec<Duration>,
    manager_rss_mib: f64,
    manager_node_rss_mib: f64,
    manager_writes_per_hour: f64,
    worker_writes_per_hour: f64,
}

fn median(v: &[Duration]) -> f64 {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2].as_secs_f64()
}

fn max(v: &[Duration]) -> f64 {
    v.iter().max().unwrap().as_secs_f64()
}

fn has_replicas(s: &impl Swarm, service: &str, want: &str) -> bool {
    s.replicas().iter().any(|(n, r)| n == service && r == want)
}

/// Polls `f` every [`POLL`] until it holds, from `t0`; panics naming `what` after a
/// minute.
fn poll_from(t0: Instant, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(120), "timed out: {what}");
        std::thread::sleep(POLL);
    }
    t0.elapsed()
}

fn remove_and_wait(s: &impl Swarm, services: &[&str]) {
    s.rm(services);
    for svc in services {
        wait_until(120, "containers of removed service gone", || {
            s.containers(svc) == 0
        });
    }
}

fn bytes_written(pids: &[u32]) -> u64 {
    pids.iter()
        .map(|p| proc_field(*p, "io", "write_bytes:"))
        .sum()
}

fn rss_mib(pids: &[u32]) -> f64 {
    let kib: u64 = pids
        .iter()
        .map(|p| proc_field(*p, "status", "VmRSS:"))
        .sum();
    kib as f64 / 1024.0
}

fn measure(s: &impl Swarm) -> Figures {
    let name = s.name();
    // A first create and removal, unmeasured: whatever either side sets up on first use.
    s.create("warm", 3, false);
    remove_and_wait(s, &["warm"]);

    let (mut create_cli, mut create_ls) = (Vec::new(), Vec::new());
    let (mut cut, mut cut_to_down) = (Vec::new(), Vec::new());
    for round in 0..CLUSTER_ROUNDS {
        let blocking = format!("b{round}");
        let t0 = Instant::now();
        s.create(&blocking, 3, false);
        create_cli.push(t0.elapsed());
        assert_eq!(
            s.running(&blocking).len(),
            3,
            "{name}: {blocking} converged"
        );
        remove_and_wait(s, &[&blocking]);

        let svc = format!("f{round}");
        let t0 = Instant::now();
        s.create(&svc, 3, true);
        create_ls.push(poll_from(t0, "3/3 in service ls", || {
            has_replicas(s, &svc, "3/3")
        }));
        wait_until(30, "3 running in service ps", || s.running(&svc).len() == 3);

        // Cut a worker (they take turns) that holds a replica.
        let node = 1 + round % 2;
        assert!(
            s.running(&svc).contains(&node),
            "{name}: a replica on {node}"
        );
        let t0 = Instant::now();
        s.set_link(node, false);
        // Where the time goes: a second user polls `node ls` meanwhile.
        let (took, down) = std::thread::scope(|scope| {
            let down = scope.spawn(|| poll_from(t0, "cut node Down", || s.down(node)));
            let took = poll_from(t0, "replicas running on the survivors", || {
                let on = s.running(&svc);
                on.len() == 3 && !on.contains(&node)
            });
            (took, down.join().unwrap())
        });
        cut.push(took);
        cut_to_down.push(down);
        eprintln!(
            "{name}: round {round}: create {:?} (blocking), {:?} (-d, to 3/3); node cut -> \
             Down in node ls {down:?}, 3 running on survivors in {took:?}",
            create_cli[round], create_ls[round]
        );
        s.set_link(node, true);
        wait_until(120, "cut node ready again", || s.ready());
        remove_and_wait(s, &[&svc]);
    }

    // 20 services of 5 replicas: 100 tasks.
    let load: Vec<String> = (0..LOAD_SERVICES).map(|i| format!("load{i}")).collect();
    for svc in &load {
        s.create(svc, LOAD_REPLICAS, true);
    }
    let want = format!("{LOAD_REPLICAS}/{LOAD_REPLICAS}");
    wait_until(300, "100 tasks running", || {
        let r = s.replicas();
        load.iter()
            .all(|svc| r.iter().any(|(n, v)| n == svc && *v == want))
    });
    std::thread::sleep(Duration::from_secs(10));
    let manager_rss_mib = rss_mib(&[s.daemon_pid(0)]);
    let manager_node_rss_mib = rss_mib(&s.node_pids(0));
    let (m, w) = (s.node_pids(0), s.node_pids(1));
    let (m0, w0) = (bytes_written(&m), bytes_written(&w));
    std::thread::sleep(QUIET);
    let per_hour = |b: u64| b as f64 * 3600.0 / QUIET.as_secs_f64();
    let manager_writes_per_hour = per_hour(bytes_written(&m).saturating_sub(m0));
    let worker_writes_per_hour = per_hour(bytes_written(&w).saturating_sub(w0));
    assert!(
        load.iter().all(|svc| has_replicas(s, svc, &want)),
        "{name}: the load kept running through the quiet stretch"
    );
    let names: Vec<&str> = load.iter().map(String::as_str).collect();
    remove_and_wait(s, &names);
    Figures {
        create_cli,
        create_ls,
        cut,
        cut_to_down,
        manager_rss_mib,
        manager_node_rss_mib,
        manager_writes_per_hour,
        worker_writes_per_hour,
    }
}

/// swarmlet's 3 nodes in namespaces, the manager on node 0.
struct Ours {
    nodes: Vec<Daemon>,
    net: Net,
    image: String,
}

impl Ours {
    fn start(net: Net, registry: &str, image: &str) -> Ours {
        let mut net = net;
        let mut nodes = Vec::new();
        for i in 1..=3 {
            let addr = format!("10.77.0.{i}");
            let ns = net.host(i, &addr);
            nodes.push(Daemon::in_netns_with_args(
                "svb",
                &ns,
                &format!("n{i}"),
                &addr,
                &["--insecure-registry", registry],
            ));
        }
        let o = Ours {
            nodes,
            net,
            image: image.to_string(),
        };
        let m = &o.nodes[0];
        m.ok(&["init", "--listen-addr", &m.addr()]);
        let token = m.ok(&["join-token", "worker", "-q"]).trim().to_string();
        for d in &o.nodes[1..] {
            d.ok(&["join", &token, &m.addr(), "--listen-addr", &d.addr()]);
        }
        wait_until(30, "3 ready nodes", || o.ready());
        for d in &o.nodes {
            d.ok(&["image", "pull", "-q", image]);
        }
        o
    }
}

impl Swarm for Ours {
    fn name(&self) -> &'static str {
        "swarmlet"
    }

    fn create(&self, service: &str, replicas: usize, detach: bool) {
        let n = replicas.to_string();
        let mut args = vec![
            "service",
            "create",
            "--name",
            service,
            "--replicas",
            &n,
            "--stop-grace-period",
            "1s",
        ];
        if detach {
            args.push("-d");
        }
        args.extend([self.image.as_str(), "sleep", "86400"]);
        self.nodes[0].ok(&args);
    }

    fn running(&self, service: &str) -> Vec<usize> {
        let (_, out) = self.nodes[0].run(&[
            "service",
            "ps",
            "--format",
            "json",
            "-f",
            "desired-state=running",
            service,
        ]);
        out.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|o| {
                o["CurrentState"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("Running"))
            })
            .filter_map(|o| {
                let node = o["Node"].as_str()?;
                self.nodes.iter().position(|d| d.name == node)
            })
            .collect()
    }

    fn replicas(&self) -> Vec<(String, String)> {
        let (_, out) = self.nodes[0].run(&["service", "ls", "--format", "json"]);
        out.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|o| {
                let s = |k: &str| o[k].as_str().unwrap_or_default().to_string();
                (s("Name"), s("Replicas"))
            })
            .collect()
    }

    fn rm(&self, services: &[&str]) {
        let mut args = vec!["service", "rm"];
        args.extend(services);
        self.nodes[0].ok(&args);
    }

    fn containers(&self, service: &str) -> usize {
        let prefix = format!("{service}.");
        self.nodes
            .iter()
            .map(|d| {
                d.run(&["ps"])
                    .1
                    .lines()
                    .filter(|l| l.split_whitespace().any(|w| w.starts_with(&prefix)))
                    .count()
            })
            .sum()
    }

    fn set_link(&self, node: usize, up: bool) {
        self.net.set_link(node + 1, up);
    }

    fn ready(&self) -> bool {
        let (ok, ls) = self.nodes[0].run(&["node", "ls"]);
        ok && ls.matches("Ready").count() == self.nodes.len()
    }

    fn down(&self, node: usize) -> bool {
        row_has(&self.nodes[0].ls(), &self.nodes[node].name, "Down")
    }

    fn daemon_pid(&self, node: usize) -> u32 {
        self.nodes[node].pid()
    }

    fn node_pids(&self, node: usize) -> Vec<u32> {
        let d = &self.nodes[node];
        let keeper = std::fs::read_to_string(d.dir.join("data/containers/keeper.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok());
        std::iter::once(d.pid()).chain(keeper).collect()
    }
}

/// A registry holding the busybox test image, moved into `net`'s hub at `hub_ip`.
/// Returns the registry (kept alive by the caller) and the image's reference.
fn registry_in(net: &Net, tag: &str, hub_ip: &str) -> (Registry, String) {
    let mut reg = Registry::start(tag, Options::default());
    let img = TestImage::busybox(json!({"Cmd": ["/bin/sh"]})).build();
    reg.push_image("bb", Some("1"), &img);
    let hub = net.hub_addr(hub_ip);
    reg.move_into(&hub, hub_ip);
    let image = format!("{}/bb:1", reg.host());
    (reg, image)
}

fn print(side: &str, f: &Figures) {
    println!(
        "BENCH {side}_service_create_3_replicas_cli_median {:.2} s",
        median(&f.create_cli)
    );
    println!(
        "BENCH {side}_service_create_3_replicas_to_3of3_median {:.2} s",
        median(&f.create_ls)
    );
    println!(
        "BENCH {side}_node_cut_to_replicas_running_median {:.2} s",
        median(&f.cut)
    );
    println!(
        "BENCH {side}_node_cut_to_replicas_running_max {:.2} s",
        max(&f.cut)
    );
    println!(
        "BENCH {side}_node_cut_to_down_in_node_ls_median {:.2} s",
        median(&f.cut_to_down)
    );
    println!(
        "BENCH {side}_manager_daemon_rss_100_tasks {:.1} MiB",
        f.manager_rss_mib
    );
    println!(
        "BENCH {side}_manager_node_rss_100_tasks {:.1} MiB",
        f.manager_node_rss_mib
    );
    println!(
        "BENCH {side}_idle_manager_disk_writes_100_tasks {:.0} bytes/hour",
        f.manager_writes_per_hour
    );
    println!(
        "BENCH {side}_idle_worker_disk_writes_100_tasks {:.0} bytes/hour",
        f.worker_writes_per_hour
    );
}

fn cluster_benches() {
    let ours = {
        let net = Net::new("svb");
        let (reg, image) = registry_in(&net, "svb", "10.77.0.254");
        let c = Ours::start(net, &reg.host(), &image);
        measure(&c)
    };
    print("swarmlet", &ours);
    if !docker_services::available() {
        println!("# docker.io not installed: Docker Swarm side-by-side skipped");
        return;
    }
    let docker = {
        let net = Net::new("svd");
        let (reg, image) = registry_in(&net, "svd", "10.76.0.254");
        let c = docker_services::DockerCluster::start(net, &reg.host(), &image);
        measure(&c)
    };
    print("docker_swarm", &docker);
    let ratio = |name: &str, ours: f64, theirs: f64| {
        println!(
            "BENCH {name}_swarmlet_over_docker {:.3} ratio",
            ours / theirs
        );
    };
    ratio(
        "service_create_3_replicas_cli",
        median(&ours.create_cli),
        median(&docker.create_cli),
    );
    ratio(
        "service_create_3_replicas_to_3of3",
        median(&ours.create_ls),
        median(&docker.create_ls),
    );
    ratio(
        "node_cut_to_replicas_running",
        median(&ours.cut),
        median(&docker.cut),
    );
    ratio(
        "manager_daemon_rss_100_tasks",
        ours.manager_rss_mib,
        docker.manager_rss_mib,
    );
}

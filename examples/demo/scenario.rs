//! The seed's walk through Swarm mode, on a cluster this machine makes: three nodes in
//! network namespaces on one bridge with no uplink, and a registry (Debian's
//! `docker-registry`) in the bridge's namespace serving a busybox image built here under
//! two tags. Each step runs the real CLI against a node's daemon and prints the command,
//! as a shell prompt naming the node, followed by what it printed.
//!
//! Shared by the demo (`examples/demo/main.rs`, what `just demo` runs) and its test
//! (`tests/demo.rs`); both include `tests/support/` as `crate::support`. Anything that
//! goes wrong panics with a message naming the step; the objects made here remove what
//! they made when dropped, and [`sweep`] removes what a killed run left behind.

#![allow(clippy::unwrap_used)] // demo code: a failure panics with its message

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::image::{Item, Layer, TestImage};
use crate::support::registry::{self, Registry};
use crate::support::{cleanup_containers, unmount_below, Daemon, Net};

/// Names the demo's temporary directories (`swarmlet-demo-<pid>-<node>`,
/// `swarmlet-reg-demo-<pid>`).
const TAG: &str = "demo";
/// Names its network namespaces (`swd<pid>-hub`, `swd<pid>-n1`...).
const NET_TAG: &str = "swd";
/// The seed's three machines. The namespaces have no route out, so these addresses
/// never meet the host's networks.
const NODES: [(&str, &str); 3] = [
    ("node1", "192.168.133.129"),
    ("node2", "192.168.133.137"),
    ("node3", "192.168.133.139"),
];
/// The registry, on the bridge in the hub namespace.
const REGISTRY_IP: &str = "192.168.133.254";
const REGISTRY_PORT: u16 = 5000;
/// The node whose link is cut (index into [`NODES`]).
const CUT: usize = 2;

/// What a run changes.
#[derive(Debug, Clone)]
pub struct Options {
    /// `--update-delay` of the rolling update (the seed's is 10s).
    pub update_delay: &'static str,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            update_delay: "10s",
        }
    }
}

/// Everything the demo printed, kept for its test.
#[derive(Debug, Default)]
pub struct Transcript {
    pub text: String,
}

impl Transcript {
    fn say(&mut self, s: &str) {
        print!("{s}");
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        self.text.push_str(s);
    }

    /// A line of narration between commands.
    fn note(&mut self, s: &str) {
        self.say(&format!("\n# {s}\n"));
    }

    /// Runs `swarmlet ARGS` against `node`'s daemon, printing the prompt and the output;
    /// panics if it fails. Returns its stdout.
    fn swarmlet(&mut self, node: &Daemon, args: &[&str]) -> String {
        self.say(&format!("{}$ swarmlet {}\n", node.name, shell_words(args)));
        let o = node.cli(args);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        self.say(&out);
        self.say(&err);
        assert!(
            o.status.success(),
            "`swarmlet {}` on {} failed ({})",
            shell_words(args),
            node.name,
            o.status
        );
        out
    }

    /// Runs `ip ARGS` on the host (the cable between a node and the bridge), printed with
    /// a `host#` prompt.
    fn ip(&mut self, args: &[&str]) {
        self.say(&format!("host# ip {}\n", shell_words(args)));
        let o = Command::new("ip").args(args).output().unwrap();
        assert!(
            o.status.success(),
            "`ip {}` failed: {}",
            shell_words(args),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// Words as a shell would need them typed: quoted when they hold anything but plain
/// characters.
fn shell_words(args: &[&str]) -> String {
    args.iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.,:/=@%+".contains(c));
            if plain {
                (*a).to_string()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The demo image at `version`: busybox, a layer naming the version, and a command
/// that says where it runs, then sleeps until told to stop (a TERM trap, since a shell
/// that is PID 1 would otherwise ignore the stop signal and wait for the kill).
fn image(version: &str) -> TestImage {
    let script = "v=$(cat /etc/demo-release); \
        trap 'echo \"helloworld $v on $(hostname): stopping\"; exit 0' TERM; \
        echo \"helloworld $v on $(hostname): started\"; \
        sleep 86400 & wait";
    let mut img = TestImage::busybox(json!({ "Cmd": ["/bin/sh", "-c", script] }));
    img.layers.push(Layer {
        items: vec![
            Item::Dir("etc"),
            Item::File(
                "etc/demo-release".into(),
                format!("{version}\n").into_bytes(),
                0o644,
            ),
        ],
    });
    img
}

/// Nodes running a task of `svc` that is meant to run, and the images they run, from
/// `service ps --format json`.
/// Polls `f` until it holds; after `secs`, panics naming `what` with the cluster as the
/// leader and each node see it, so a failed run says where it stuck.
fn settle(secs: u64, what: &str, nodes: &[Daemon], mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > Duration::from_secs(secs) {
            let m = &nodes[0];
            let mut seen = String::new();
            for args in [
                &["node", "ls"][..],
                &["service", "ls"],
                &["service", "ps", "helloworld"],
                &["service", "ps", "extend-helloworld"],
                &["service", "inspect", "helloworld"],
            ] {
                seen += &format!("node1$ swarmlet {}\n{}\n", args.join(" "), m.run(args).1);
            }
            for (i, d) in nodes.iter().enumerate() {
                seen += &format!("{}$ swarmlet ps\n{}\n", NODES[i].0, d.run(&["ps"]).1);
            }
            panic!("timed out after {secs} s: {what}\n{seen}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn running(m: &Daemon, svc: &str) -> Vec<(String, String)> {
    let (ok, out) = m.run(&[
        "service",
        "ps",
        "--format",
        "json",
        "-f",
        "desired-state=running",
        svc,
    ]);
    if !ok {
        return vec![];
    }
    out.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|t| {
            t["CurrentState"]
                .as_str()
                .is_some_and(|s| s.starts_with("Running"))
        })
        .map(|t| {
            (
                t["Node"].as_str().unwrap_or_default().to_string(),
                t["Image"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Containers of `svc` up on node `d`, from its own `ps`.
fn containers_of(d: &Daemon, svc: &str) -> usize {
    d.run(&["ps"])
        .1
        .lines()
        .filter(|l| l.contains(&format!(" {svc}.")) && l.contains("Up"))
        .count()
}

fn node_state(m: &Daemon, node: &str) -> String {
    let ls = m.run(&["node", "ls"]).1;
    crate::support::row(&ls, node)
        .unwrap_or_default()
        .to_string()
}

fn update_state(m: &Daemon, svc: &str) -> String {
    let (ok, out) = m.run(&["service", "inspect", svc]);
    if !ok {
        return String::new();
    }
    serde_json::from_str::<serde_json::Value>(&out)
        .ok()
        .and_then(|d| d[0]["UpdateStatus"]["State"].as_str().map(String::from))
        .unwrap_or_default()
}

/// Runs the whole demo, printing as it goes; panics on the first failure.
pub fn run(opts: &Options) -> Transcript {
    let started = Instant::now();
    let mut t = Transcript::default();
    let reg_host = format!("{REGISTRY_IP}:{REGISTRY_PORT}");
    let v1 = format!("{reg_host}/demo:1.0");
    let v2 = format!("{reg_host}/demo:2.0");

    // The images are pushed over loopback, then the registry moves into the hub.
    let mut reg = Registry::start(TAG, registry::Options::default());
    for (tag, version) in [("1.0", "1.0"), ("2.0", "2.0")] {
        reg.push_image("demo", Some(tag), &image(version).build());
    }
    let mut net = Net::new(NET_TAG);
    let hub = net.hub_addr(REGISTRY_IP);
    reg.move_into_port(&hub, REGISTRY_IP, REGISTRY_PORT);
    let mut nodes = Vec::new();
    for (i, (name, addr)) in NODES.iter().enumerate() {
        let ns = net.host(i + 1, addr);
        nodes.push(Daemon::in_netns_with_args(
            TAG,
            &ns,
            name,
            addr,
            &["--insecure-registry", &reg_host],
        ));
    }
    let [(n1, a1), (n2, a2), (n3, a3)] = NODES;
    t.say(&format!(
        "swarmlet demo: the seed's walk through Swarm mode, on three nodes made on this machine:\n\
         {n1} {a1}, {n2} {a2} and {n3} {a3},\n\
         each a `swarmlet daemon` in a network namespace of its own, on one bridge with no\n\
         uplink. A registry at {reg_host} on that bridge serves demo:1.0 and\n\
         demo:2.0 (busybox, built just now). Each command runs against the daemon of the\n\
         node its prompt names (its --socket left out); `host#` lines run on this machine.\n"
    ));

    t.note("1. A swarm: node1 starts it, node2 and node3 join as workers");
    let m = &nodes[0];
    t.swarmlet(m, &["init"]);
    let token = t.swarmlet(m, &["join-token", "worker", "-q"]);
    let manager = format!("{}:2377", NODES[0].1);
    for d in &nodes[1..] {
        t.swarmlet(d, &["join", token.trim(), &manager]);
    }
    settle(30, "three nodes Ready", &nodes, || {
        m.ls().matches(" Ready ").count() == 3
    });
    t.swarmlet(m, &["node", "ls"]);

    t.note("2. A service of three replicas; the CLI follows it until all three run");
    t.swarmlet(
        m,
        &[
            "service",
            "create",
            "--replicas",
            "3",
            "--name",
            "helloworld",
            &v1,
        ],
    );
    t.swarmlet(m, &["service", "ls"]);
    t.swarmlet(m, &["service", "ps", "helloworld"]);

    t.note("3. Scaled to six");
    t.swarmlet(m, &["service", "scale", "helloworld=6"]);
    t.swarmlet(m, &["service", "ls"]);
    t.swarmlet(m, &["service", "ps", "helloworld"]);

    t.note("4. A global service: one task on every node");
    t.swarmlet(
        m,
        &[
            "service",
            "create",
            "--mode",
            "global",
            "--name",
            "extend-helloworld",
            &v1,
        ],
    );
    t.swarmlet(m, &["service", "ps", "extend-helloworld"]);

    let (cut_name, _) = NODES[CUT];
    t.note(&format!(
        "5. {cut_name}'s cable is pulled: its link to the bridge goes down"
    ));
    let on_cut = running(m, "helloworld")
        .iter()
        .filter(|(n, _)| n == cut_name)
        .count();
    let cable = format!("p{}", CUT + 1);
    let cut_at = Instant::now();
    t.ip(&["-n", &hub, "link", "set", &cable, "down"]);
    settle(
        60,
        "the cut node Down and its replicas running elsewhere",
        &nodes,
        || {
            let r = running(m, "helloworld");
            node_state(m, cut_name).contains(" Down ")
                && r.len() == 6
                && r.iter().all(|(n, _)| n != cut_name)
        },
    );
    t.say(&format!(
        "({cut_name} Down, and its {on_cut} helloworld task(s) running on the others, {:.1} s after the cut)\n",
        cut_at.elapsed().as_secs_f64()
    ));
    t.swarmlet(m, &["node", "ls"]);
    t.swarmlet(m, &["service", "ps", "helloworld"]);

    t.note(&format!(
        "6. The cable back: {cut_name} is Ready again and stops the replicas that were replaced"
    ));
    t.ip(&["-n", &hub, "link", "set", &cable, "up"]);
    let cut_node = &nodes[CUT];
    settle(60, "the healed node Ready and settled", &nodes, || {
        node_state(m, cut_name).contains(" Ready ")
            && running(m, "extend-helloworld").len() == 3
            && containers_of(cut_node, "helloworld") == 0
    });
    t.swarmlet(m, &["node", "ls"]);
    t.swarmlet(m, &["service", "ls"]);

    t.note(&format!(
        "7. A rolling update to demo:2.0, two tasks at a time, {} apart",
        opts.update_delay
    ));
    t.swarmlet(
        m,
        &[
            "service",
            "update",
            "--detach",
            "--update-parallelism",
            "2",
            "--update-delay",
            opts.update_delay,
            "--image",
            &v2,
            "helloworld",
        ],
    );
    settle(60, "the first two tasks on demo:2.0", &nodes, || {
        running(m, "helloworld")
            .iter()
            .filter(|(_, i)| *i == v2)
            .count()
            >= 2
    });
    t.say("(the first two replaced; the others wait for the delay)\n");
    t.swarmlet(
        m,
        &["service", "ps", "-f", "desired-state=running", "helloworld"],
    );
    let update_at = Instant::now();
    settle(180, "the update completed", &nodes, || {
        update_state(m, "helloworld") == "completed"
    });
    settle(60, "six tasks on demo:2.0", &nodes, || {
        let r = running(m, "helloworld");
        r.len() == 6 && r.iter().all(|(_, i)| *i == v2)
    });
    t.say(&format!(
        "(update completed {:.1} s later)\n",
        update_at.elapsed().as_secs_f64()
    ));
    t.swarmlet(m, &["service", "ls"]);
    t.swarmlet(m, &["service", "ps", "helloworld"]);

    t.note("8. What every helloworld task printed, gathered from the nodes that ran it");
    t.swarmlet(m, &["service", "logs", "helloworld"]);

    t.say(&format!(
        "\n# Done in {:.0} s. Removing the nodes, their containers, the registry and the namespaces.\n",
        started.elapsed().as_secs_f64()
    ));
    drop(nodes);
    drop(net);
    drop(reg);
    t
}

/// What a run of process `pid` leaves when it is killed before its own cleanup:
/// network namespaces and temporary directories, found by their names.
fn leftovers(pid: u32) -> (Vec<String>, Vec<PathBuf>) {
    let names = |dir: &std::path::Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let ns_prefix = format!("{NET_TAG}{pid}-");
    let netns = names(std::path::Path::new("/var/run/netns"))
        .into_iter()
        .filter(|n| n.starts_with(&ns_prefix))
        .collect();
    let tmp = std::env::temp_dir();
    let node_prefix = format!("swarmlet-{TAG}-{pid}-");
    let reg = format!("swarmlet-reg-{TAG}-{pid}");
    let dirs = names(&tmp)
        .into_iter()
        .filter(|n| n.starts_with(&node_prefix) || *n == reg)
        .map(|n| tmp.join(n))
        .collect();
    (netns, dirs)
}

/// Process ids whose command line names one of `dirs`, but not a keeper (it must stay
/// to stop its containers).
fn processes_naming(dirs: &[PathBuf]) -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    rd.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<String> = raw
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let keeper = args.get(1).is_some_and(|a| a == "runtime-helper");
            !keeper
                && args
                    .iter()
                    .any(|a| dirs.iter().any(|d| a.starts_with(&*d.to_string_lossy())))
        })
        .collect()
}

fn kill9(pids: &[i32]) {
    for pid in pids {
        // SAFETY: kill(2) with a pid read from /proc; at worst the process is gone.
        unsafe {
            libc::kill(*pid, libc::SIGKILL);
        }
    }
}

/// Removes what a run of process `pid` left (it was killed, or aborted): daemons and
/// the registry first (so nothing restarts a container), then each node's containers
/// through its keeper, whatever still runs in the namespaces, the namespaces, and the
/// directories with whatever is mounted below them. Returns what it found, for the
/// user.
pub fn sweep(pid: u32) -> Vec<String> {
    let (netns, dirs) = leftovers(pid);
    let mut found: Vec<String> = netns.iter().map(|n| format!("netns {n}")).collect();
    found.extend(dirs.iter().map(|d| d.display().to_string()));
    kill9(&processes_naming(&dirs));
    for d in &dirs {
        if d.join("data").is_dir() {
            cleanup_containers(&d.join("data"));
        }
    }
    for n in &netns {
        let pids = Command::new("ip")
            .args(["netns", "pids", n])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        kill9(
            &pids
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<_>>(),
        );
        let _ = Command::new("ip").args(["netns", "del", n]).output();
    }
    std::thread::sleep(Duration::from_millis(100));
    for d in &dirs {
        unmount_below(d);
        let _ = std::fs::remove_dir_all(d);
    }
    found
}

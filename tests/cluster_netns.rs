//! The cluster across network namespaces: five nodes, each in its own namespace with its
//! own address on port 2377, joined by a bridge in a hub namespace that has no uplink, so
//! no packet can leave the machine. A manager's link is cut: the cut-off minority cannot
//! commit, the majority can, and after the heal everything converges.
//!
//! Needs root (CI runs as root); without it the test says so and skips.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // test code

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_swarmlet");
/// Namespace names carry the process id so parallel runs cannot collide.
fn ns(name: &str) -> String {
    format!("swt{}-{name}", std::process::id())
}

fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().unwrap();
    assert!(
        o.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The hub namespace and its bridge; dropping it removes every namespace it made.
struct Net {
    names: Vec<String>,
}

impl Net {
    fn new() -> Net {
        let hub = ns("hub");
        ip(&["netns", "add", &hub]);
        let net = Net {
            names: vec![hub.clone()],
        };
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &hub, "link", "set", "br0", "up"]);
        net
    }

    /// A host namespace with `addr`/24 on a veth whose other end is on the bridge.
    fn host(&mut self, i: usize, addr: &str) -> String {
        let name = ns(&format!("n{i}"));
        let hub = ns("hub");
        ip(&["netns", "add", &name]);
        self.names.push(name.clone());
        let (inner, outer) = (format!("eth{i}"), format!("p{i}"));
        ip(&[
            "-n", &hub, "link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns",
            &name,
        ]);
        ip(&["-n", &hub, "link", "set", &outer, "master", "br0", "up"]);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            &inner,
        ]);
        ip(&["-n", &name, "link", "set", &inner, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        name
    }

    fn set_link(&self, i: usize, up: bool) {
        ip(&[
            "-n",
            &ns("hub"),
            "link",
            "set",
            &format!("p{i}"),
            if up { "up" } else { "down" },
        ]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for n in self.names.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

struct Node {
    name: String,
    dir: PathBuf,
    addr: String,
    child: Child,
}

impl Node {
    fn start(netns: &str, name: &str, addr: &str) -> Node {
        let dir = std::env::temp_dir().join(format!("swarmlet-ns-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // nsenter, not `ip netns exec`: the latter remounts /sys and hides the cgroup tree.
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{netns}"))
            .arg(BIN)
            .arg("--socket")
            .arg(dir.join("sock"))
            .args(["daemon", "--data-dir"])
            .arg(dir.join("data"))
            .args(["--hostname", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let n = Node {
            name: name.into(),
            dir,
            addr: format!("{addr}:2377"),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(n.dir.join("sock")).is_err() {
            assert!(Instant::now() < deadline, "{name} did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        n
    }

    fn cli(&self, args: &[&str]) -> Output {
        // The API socket is a file: the CLI reaches it from any network namespace.
        Command::new(BIN)
            .arg("--socket")
            .arg(self.dir.join("sock"))
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            o.status.success(),
            "{} {args:?}: {}",
            self.name,
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

#[test]
fn cluster_in_namespaces_survives_a_cut_manager() {
    if !is_root() {
        eprintln!("skipping: network namespaces need root");
        return;
    }
    let mut net = Net::new();
    let mut nodes = Vec::new();
    for (i, name) in ["m1", "m2", "m3", "w1", "w2"].iter().enumerate() {
        let addr = format!("10.77.0.{}", i + 1);
        let n = net.host(i + 1, &addr);
        nodes.push(Node::start(&n, name, &addr));
    }
    let (m1, m2, m3) = (&nodes[0], &nodes[1], &nodes[2]);
    m1.ok(&["init", "--listen-addr", &m1.addr]);
    let mt = m1.ok(&["join-token", "manager", "-q"]).trim().to_string();
    let wt = m1.ok(&["join-token", "worker", "-q"]).trim().to_string();
    for n in &nodes[1..] {
        let tok = if n.name.starts_with('m') { &mt } else { &wt };
        n.ok(&["join", tok, &m1.addr, "--listen-addr", &n.addr]);
    }
    eventually(20, "5 ready, 1 leader, 2 reachable", || {
        let ls = String::from_utf8_lossy(&m1.cli(&["node", "ls"]).stdout).into_owned();
        ls.matches("Ready").count() == 5
            && ls.contains("Leader")
            && ls.matches("Reachable").count() == 2
    });

    // Cut the leader (m1) off. The majority (m2, m3) elects a leader and commits; the
    // cut-off node cannot commit anything.
    net.set_link(1, false);
    let minority = m1.cli(&["node", "update", "--label-add", "side=minority", "w1"]);
    assert!(!minority.status.success(), "the minority must not commit");
    // Nor serve reads: it cannot confirm with a majority that it still leads (ReadIndex).
    let stale = m1.cli(&["node", "ls"]);
    assert!(
        !stale.status.success(),
        "a cut-off manager must not answer node ls: {}",
        String::from_utf8_lossy(&stale.stdout)
    );
    eventually(20, "the majority commits", || {
        [m2, m3].iter().any(|m| {
            m.cli(&["node", "update", "--label-add", "side=majority", "w1"])
                .status
                .success()
        })
    });
    eventually(10, "m1 seen down by the majority", || {
        [m2, m3].iter().any(|m| {
            let ls = String::from_utf8_lossy(&m.cli(&["node", "ls"]).stdout).into_owned();
            ls.lines().any(|l| l.contains(" m1 ") && l.contains("Down"))
        })
    });

    // Heal: everyone converges, and the majority's write is what stands.
    net.set_link(1, true);
    eventually(30, "converged after the heal", || {
        let ls = String::from_utf8_lossy(&m1.cli(&["node", "ls"]).stdout).into_owned();
        ls.matches("Ready").count() == 5
            && ls.contains("Leader")
            && ls.matches("Reachable").count() == 2
    });
    eventually(10, "the label from the majority", || {
        let inspect =
            String::from_utf8_lossy(&m1.cli(&["node", "inspect", "w1"]).stdout).into_owned();
        inspect.contains(r#""side":"majority""#)
    });
}

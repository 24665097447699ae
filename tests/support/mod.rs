//! What the process-level tests and benchmarks share: a daemon process driven through
//! the CLI, on loopback or inside a network namespace, and a set of namespaces joined by
//! a bridge that has no uplink. Included with `#[path]` (or `mod support;` from tests/),
//! so each user compiles only what it calls.

#![allow(dead_code, clippy::unwrap_used, clippy::cast_possible_truncation)] // test code

pub mod image;
pub mod netio;
pub mod qemu;
pub mod registry;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The swarmlet binary cargo built for this test or benchmark. Cargo names it to tests
/// and benchmarks only; the demo (an example, `examples/demo/`) runs `swarmlet` from
/// its PATH, which it points at the binary built beside it.
pub const BIN: &str = match option_env!("CARGO_BIN_EXE_swarmlet") {
    Some(bin) => bin,
    None => "swarmlet",
};

/// One `swarmlet daemon` process with its own data dir and API socket. Its stderr goes
/// to `<dir>/log`, which is printed if the test panics. Dropping it kills the process
/// and removes the directory.
pub struct Daemon {
    pub name: String,
    pub dir: PathBuf,
    pub ip: String,
    netns: Option<String>,
    child: Option<Child>,
    /// Extra `swarmlet daemon` flags.
    extra: Vec<String>,
    /// Extra environment of the daemon process (test knobs).
    env: Vec<(String, String)>,
    /// The binary the daemon runs from ([`BIN`] unless a test gives another).
    pub bin: PathBuf,
}

impl Daemon {
    /// A daemon on the host's network (loopback addresses).
    pub fn new(tag: &str, name: &str, ip: &str) -> Daemon {
        Daemon::start_new(tag, name, ip, None, &[])
    }

    /// A daemon on loopback started with extra `daemon` flags.
    pub fn with_args(tag: &str, name: &str, ip: &str, extra: &[&str]) -> Daemon {
        Daemon::start_new(tag, name, ip, None, extra)
    }

    /// A daemon started from the binary at `bin` (a copy a test replaces, say).
    pub fn from_binary(tag: &str, name: &str, ip: &str, bin: &std::path::Path) -> Daemon {
        let mut d = Daemon::prepare(tag, name, ip, None, &[]);
        d.bin = bin.to_path_buf();
        d.start();
        d
    }

    /// A daemon inside the network namespace `netns` (made by [`Net::host`]).
    pub fn in_netns(tag: &str, netns: &str, name: &str, ip: &str) -> Daemon {
        Daemon::start_new(tag, name, ip, Some(netns.to_string()), &[])
    }

    /// A daemon inside `netns` started with extra `daemon` flags.
    pub fn in_netns_with_args(
        tag: &str,
        netns: &str,
        name: &str,
        ip: &str,
        extra: &[&str],
    ) -> Daemon {
        Daemon::start_new(tag, name, ip, Some(netns.to_string()), extra)
    }

    /// A daemon on loopback with extra environment variables (test knobs).
    pub fn with_env(tag: &str, name: &str, ip: &str, env: &[(&str, &str)]) -> Daemon {
        let mut d = Daemon::prepare(tag, name, ip, None, &[]);
        d.env = env
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        d.start();
        d
    }

    fn start_new(tag: &str, name: &str, ip: &str, netns: Option<String>, extra: &[&str]) -> Daemon {
        let mut d = Daemon::prepare(tag, name, ip, netns, extra);
        d.start();
        d
    }

    fn prepare(tag: &str, name: &str, ip: &str, netns: Option<String>, extra: &[&str]) -> Daemon {
        let dir =
            std::env::temp_dir().join(format!("swarmlet-{tag}-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Daemon {
            name: name.into(),
            dir,
            ip: ip.into(),
            netns,
            child: None,
            extra: extra.iter().map(|s| (*s).to_string()).collect(),
            env: vec![],
            bin: PathBuf::from(BIN),
        }
    }

    pub fn sock(&self) -> PathBuf {
        self.dir.join("sock")
    }

    pub fn addr(&self) -> String {
        format!("{}:2377", self.ip)
    }

    /// Spawns the daemon process (stderr appended to the log) without waiting for it.
    pub fn spawn(&self) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("log"))
            .unwrap();
        // nsenter, not `ip netns exec`: the latter remounts /sys and hides the cgroups.
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/var/run/netns/{ns}")).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        cmd.arg("--socket")
            .arg(self.sock())
            .args(["daemon", "--data-dir"])
            .arg(self.dir.join("data"))
            .args(["--hostname", &self.name])
            .args(&self.extra)
            // On the host's own network the local bridge (with its NAT to the host's
            // uplink) would give test containers a way off the machine: none there.
            .args(match self.netns {
                Some(_) => &[][..],
                None => &["--bridge", "none"][..],
            })
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// Starts (or restarts) the process and waits for its API socket.
    pub fn start(&mut self) {
        self.child = Some(self.spawn());
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(self.sock()).is_err() {
            assert!(
                Instant::now() < deadline,
                "{} did not open its socket",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs the CLI against this daemon's socket (a file: reachable from any namespace).
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--socket")
            .arg(self.sock())
            .args(args)
            .output()
            .unwrap()
    }

    /// The CLI's success and stdout.
    pub fn run(&self, args: &[&str]) -> (bool, String) {
        let o = self.cli(args);
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    }

    /// `exec` in container `c`: (success, stdout then stderr).
    pub fn exec(&self, c: &str, args: &[&str]) -> (bool, String) {
        let mut a = vec!["exec", c];
        a.extend_from_slice(args);
        let o = self.cli(&a);
        let mut out = String::from_utf8_lossy(&o.stdout).into_owned();
        out.push_str(&String::from_utf8_lossy(&o.stderr));
        (o.status.success(), out)
    }

    /// The CLI's stdout; panics (with stderr) if the command failed.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            o.status.success(),
            "{} {args:?}: {}{}",
            self.name,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// `node ls` as text ("" if the command failed).
    pub fn ls(&self) -> String {
        let (ok, out) = self.run(&["node", "ls"]);
        if ok {
            out
        } else {
            String::new()
        }
    }

    /// Whether this daemon itself leads, asked locally (`debug info` is never forwarded).
    pub fn leads(&self) -> bool {
        let info = self.run(&["debug", "info"]).1;
        let me = info.lines().find_map(|l| l.strip_prefix("node_id="));
        me.is_some_and(|me| info.lines().any(|l| l == format!("leader={me}")))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        cleanup_containers(&self.dir.join("data"));
        if std::thread::panicking() {
            eprintln!(
                "--- log of {}:\n{}",
                self.name,
                std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Stops everything a daemon's keeper runs under `data` (containers killed and deleted,
/// the keeper itself killed) and unmounts whatever is still mounted below `data`.
pub fn cleanup_containers(data: &std::path::Path) {
    use swarmlet::runtime::keeper::{call, KeeperRequest, KeeperResponse};
    let dir = data.join("containers");
    let t = Duration::from_secs(10);
    if let Ok(KeeperResponse::States(v)) = call(&dir, &KeeperRequest::List, t) {
        for s in &v {
            if s.exit.is_none() {
                let _ = call(
                    &dir,
                    &KeeperRequest::Kill {
                        id: s.id.clone(),
                        signal: 9,
                    },
                    t,
                );
            }
        }
        let deadline = Instant::now() + t;
        while Instant::now() < deadline {
            match call(&dir, &KeeperRequest::List, t) {
                Ok(KeeperResponse::States(v)) if v.iter().any(|s| s.exit.is_none()) => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => break,
            }
        }
        for s in v {
            let _ = call(&dir, &KeeperRequest::Delete { id: s.id }, t);
        }
    }
    if let Ok(pid) = std::fs::read_to_string(dir.join("keeper.pid")) {
        let _ = Command::new("kill").args(["-9", pid.trim()]).status();
    }
    unmount_below(data);
}

/// Lazily unmounts everything mounted at or below `dir`, deepest first.
pub fn unmount_below(dir: &std::path::Path) {
    let prefix = dir.display().to_string();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    mounts.reverse();
    for m in mounts {
        let _ = Command::new("umount").args(["-l", m]).output();
    }
}

/// The `node ls` row naming `host`, if any.
pub fn row<'a>(ls: &'a str, host: &str) -> Option<&'a str> {
    ls.lines().find(|l| l.split_whitespace().any(|w| w == host))
}

/// Whether the `node ls` row of `host` contains `word`.
pub fn row_has(ls: &str, host: &str, word: &str) -> bool {
    row(ls, host).is_some_and(|r| r.contains(word))
}

/// Polls `f` every 20 ms until it holds; panics naming `what` after `secs`. Returns how
/// long it took.
pub fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out after {secs} s: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// Three daemons `n1`..`n3` in namespaces of `net` at `<subnet>.1`..`.3` (a /24 whose
/// hub end the caller chose), started with `extra` flags and formed into a swarm: `n1`
/// its manager, the others workers, all three Ready.
pub fn three_nodes(net: &mut Net, tag: &str, subnet: &str, extra: &[&str]) -> Vec<Daemon> {
    let mut nodes = Vec::new();
    for (i, name) in ["n1", "n2", "n3"].iter().enumerate() {
        let addr = format!("{subnet}.{}", i + 1);
        let ns = net.host(i + 1, &addr);
        nodes.push(Daemon::in_netns_with_args(tag, &ns, name, &addr, extra));
    }
    let m = &nodes[0];
    m.ok(&["init", "--listen-addr", &m.addr()]);
    let wt = m.ok(&["join-token", "worker", "-q"]).trim().to_string();
    for d in &nodes[1..] {
        d.ok(&["join", &wt, &m.addr(), "--listen-addr", &d.addr()]);
    }
    wait_until(20, "3 ready nodes", || {
        m.ok(&["node", "ls"]).matches("Ready").count() == 3
    });
    nodes
}

/// A hub namespace (of `net`) at `<subnet>.254` serving a registry that holds a busybox
/// image (Cmd `/bin/sh`) as `image`. Fields drop in order: the namespaces, then the
/// registry.
pub struct Hub {
    pub net: Net,
    pub reg: registry::Registry,
    /// The hub namespace's name (where the registry listens).
    pub hub: String,
    /// The registry's `host:port`.
    pub registry: String,
    /// `<registry>/bb:1`.
    pub image: String,
}

pub fn hub_with_registry(tag: &str, subnet: &str) -> Hub {
    let mut reg = registry::Registry::start(tag, registry::Options::default());
    let img = image::TestImage::busybox(serde_json::json!({"Cmd": ["/bin/sh"]})).build();
    reg.push_image("bb", Some("1"), &img);
    let net = Net::new(tag);
    let hub_ip = format!("{subnet}.254");
    let hub = net.hub_addr(&hub_ip);
    reg.move_into(&hub, &hub_ip);
    let registry = reg.host();
    Hub {
        net,
        reg,
        hub,
        image: format!("{registry}/bb:1"),
        registry,
    }
}

/// One daemon `n1` in a namespace at `<subnet>.1` off a [`Hub`], trusting its registry
/// over plain HTTP. Fields drop in order: the daemon first.
pub struct OneNode {
    pub d: Daemon,
    /// The host namespace's name.
    pub ns: String,
    pub hub: Hub,
}

pub fn one_node(tag: &str, subnet: &str) -> OneNode {
    let mut hub = hub_with_registry(tag, subnet);
    let ip = format!("{subnet}.1");
    let ns = hub.net.host(1, &ip);
    let insecure = hub.registry.clone();
    let d = Daemon::in_netns_with_args(tag, &ns, "n1", &ip, &["--insecure-registry", &insecure]);
    OneNode { d, ns, hub }
}

/// [`three_nodes`] off a [`Hub`], trusting its registry. Fields drop in order: the
/// daemons first.
pub struct ThreeNodes {
    pub nodes: Vec<Daemon>,
    pub hub: Hub,
}

pub fn three_with_registry(tag: &str, subnet: &str) -> ThreeNodes {
    let mut hub = hub_with_registry(tag, subnet);
    let insecure = hub.registry.clone();
    let nodes = three_nodes(
        &mut hub.net,
        tag,
        subnet,
        &["--insecure-registry", &insecure],
    );
    ThreeNodes { nodes, hub }
}

/// A numeric field of `/proc/<pid>/<file>` (`VmRSS:` of status, `write_bytes:` of io).
pub fn proc_field(pid: u32, file: &str, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().unwrap();
    assert!(
        o.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A hub namespace holding a bridge with no uplink, and host namespaces hanging off it
/// by veth pairs: no packet can leave the machine. Dropping it removes every namespace
/// it made (and with them their links), also when a test fails.
pub struct Net {
    prefix: String,
    names: Vec<String>,
}

impl Net {
    /// `tag` (a few letters) keeps the names of different users apart; the process id
    /// keeps parallel runs apart.
    pub fn new(tag: &str) -> Net {
        let prefix = format!("{tag}{}", std::process::id());
        let hub = format!("{prefix}-hub");
        ip(&["netns", "add", &hub]);
        let net = Net {
            prefix,
            names: vec![hub.clone()],
        };
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &hub, "link", "set", "br0", "up"]);
        net
    }

    pub fn hub(&self) -> String {
        format!("{}-hub", self.prefix)
    }

    /// Gives the hub's bridge an address (a service the hosts reach, such as a
    /// registry, runs in the hub namespace). Returns the hub namespace's name.
    pub fn hub_addr(&self, addr: &str) -> String {
        let hub = self.hub();
        ip(&[
            "-n",
            &hub,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "br0",
        ]);
        ip(&["-n", &hub, "link", "set", "lo", "up"]);
        hub
    }

    /// A host namespace with `addr`/24 on `eth0`, whose peer `p<i>` is on the bridge.
    /// Returns the namespace's name.
    pub fn host(&mut self, i: usize, addr: &str) -> String {
        let name = format!("{}-n{i}", self.prefix);
        let hub = self.hub();
        ip(&["netns", "add", &name]);
        self.names.push(name.clone());
        let outer = format!("p{i}");
        ip(&[
            "-n", &hub, "link", "add", &outer, "type", "veth", "peer", "name", "eth0", "netns",
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
            "eth0",
        ]);
        ip(&["-n", &name, "link", "set", "eth0", "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        name
    }

    /// A namespace of its own with nothing in it (a container's, say), removed with the
    /// rest. Returns its path.
    pub fn bare(&mut self, tag: &str) -> String {
        let name = format!("{}-{tag}", self.prefix);
        ip(&["netns", "add", &name]);
        self.names.push(name.clone());
        format!("/var/run/netns/{name}")
    }

    /// A tap device `t<i>` on the bridge, for a virtual machine whose QEMU runs in the
    /// hub namespace. Returns (hub namespace, tap name).
    pub fn tap(&mut self, i: usize) -> (String, String) {
        let hub = self.hub();
        let tap = format!("t{i}");
        ip(&["-n", &hub, "tuntap", "add", "dev", &tap, "mode", "tap"]);
        ip(&["-n", &hub, "link", "set", &tap, "master", "br0", "up"]);
        (hub, tap)
    }

    /// Cuts (or restores) virtual machine `i`'s link to the bridge.
    pub fn set_tap_link(&self, i: usize, up: bool) {
        ip(&[
            "-n",
            &self.hub(),
            "link",
            "set",
            &format!("t{i}"),
            if up { "up" } else { "down" },
        ]);
    }

    /// Cuts (or restores) host `i`'s link to the bridge.
    pub fn set_link(&self, i: usize, up: bool) {
        ip(&[
            "-n",
            &self.hub(),
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

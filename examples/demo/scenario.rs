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
    /// Requests through nginx that failed during the rolling update.
    pub failed_during_update: Option<usize>,
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

    /// Sends `n` requests to `addr` from the bridge and prints who answered; returns the
    /// distinct answers. Panics if any fails.
    /// Waits (10 s at most) until `addr` answers from `tasks` different tasks, then
    /// sends `n` requests and prints who answered; returns the distinct answers. Panics
    /// if any of the `n` fails. The CLI says a service converged when its tasks run;
    /// the nodes' tables follow a moment later, and the wait, when there is one, is
    /// printed.
    fn show_requests(
        &mut self,
        hub: &str,
        addr: &str,
        n: usize,
        tasks: usize,
    ) -> std::collections::BTreeMap<String, usize> {
        let start = Instant::now();
        loop {
            let (seen, failed) = ask(hub, addr, tasks * 2);
            if failed.is_empty() && seen.len() >= tasks {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{addr} not answering from {tasks} tasks after 10 s: {seen:?} {failed:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let waited = start.elapsed();
        if waited > Duration::from_millis(50) {
            self.say(&format!(
                "(http://{addr}/ answering from {tasks} task(s) {} ms after the command returned)\n",
                waited.as_millis()
            ));
        }
        let (seen, failed) = ask(hub, addr, n);
        self.say(&format!(
            "({n} requests to http://{addr}/ from the bridge, answered by:)\n"
        ));
        for (a, k) in &seen {
            self.say(&format!("  {k} x {a}\n"));
        }
        assert!(failed.is_empty(), "requests to {addr} failed: {failed:?}");
        seen
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

/// The demo image at `version`: busybox, a layer naming the version, and the seed's
/// `env.py` as a shell: a web server on port 5000 whose page says which container
/// (its hostname) and which version answered. It says when it starts and stops (a TERM
/// trap, since a shell that is PID 1 would otherwise ignore the stop signal and wait
/// for the kill).
fn image(version: &str) -> TestImage {
    let script = "v=$(cat /etc/demo-release); \
        trap 'echo \"helloworld $v on $(hostname): stopping\"; exit 0' TERM; \
        mkdir -p /www && echo \"helloworld $v on $(hostname)\" > /www/index.html; \
        echo \"helloworld $v on $(hostname): started\"; \
        busybox httpd -f -p 5000 -h /www & wait";
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

/// Where the demo keeps Debian's nginx package (`bootstrap.sh` fetches it; the demo
/// does if it is missing). Nothing is installed: the binary and its libraries go into
/// an image.
const NGINX_CACHE: &str = "/var/cache/swarmlet-demo";

/// The seed's nginx `default.conf`: everything goes to the service `test` by its name.
const NGINX_DEFAULT_CONF: &str = "server {
    listen 80;
    server_name localhost;
    access_log /var/log/nginx/log/host.access.log main;
    location / {
        # root /usr/share/nginx/html;
        # index index.html index.htm;
        proxy_pass http://test:5000;
    }
    error_page 502 503 504 /50x.html;
    location = /50x.html {
        root /usr/share/nginx/html;
    }
}
";

const NGINX_CONF: &str = "user nobody nogroup;
worker_processes 1;
daemon off;
error_log stderr notice;
pid /run/nginx.pid;
events { worker_connections 256; }
http {
    log_format main '$remote_addr - $remote_user [$time_local] \"$request\" '
                    '$status $body_bytes_sent \"$http_referer\" '
                    '\"$http_user_agent\" \"$http_x_forwarded_for\"';
    include /etc/nginx/conf.d/*.conf;
}
";

/// An nginx image made from Debian's package: the binary, the shared libraries it
/// loads (as this machine has them), the seed's configuration and busybox.
fn nginx_image() -> TestImage {
    let cache = PathBuf::from(NGINX_CACHE);
    let find = || {
        std::fs::read_dir(&cache).ok().and_then(|rd| {
            rd.filter_map(Result::ok).map(|e| e.path()).find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("nginx_"))
            })
        })
    };
    let deb = find().unwrap_or_else(|| {
        std::fs::create_dir_all(&cache).unwrap();
        let o = Command::new("apt-get")
            .args(["download", "nginx"])
            .current_dir(&cache)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "apt-get download nginx: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        find().expect("apt-get download left no nginx_*.deb")
    });
    let root = std::env::temp_dir().join(format!("swarmlet-{TAG}-{}-nginx", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let o = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&root)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "dpkg-deb -x {}: {}",
        deb.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    let bin = root.join("usr/sbin/nginx");
    let ldd = Command::new("ldd").arg(&bin).output().unwrap();
    assert!(ldd.status.success(), "ldd {}", bin.display());
    let mut items = vec![
        Item::Dir("usr"),
        Item::Dir("usr/sbin"),
        Item::File("usr/sbin/nginx".into(), std::fs::read(&bin).unwrap(), 0o755),
    ];
    let _ = std::fs::remove_dir_all(&root);
    let mut dirs = std::collections::BTreeSet::new();
    // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and the loader's own line.
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let Some(path) = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(|w| w.trim_start_matches('/').to_string())
        else {
            continue;
        };
        let mut at = std::path::Path::new(&path).parent();
        while let Some(d) = at.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.to_string_lossy().into_owned());
            at = d.parent();
        }
        let data = std::fs::read(format!("/{path}")).unwrap();
        items.push(Item::File(path, data, 0o755));
    }
    // Each put in front, the last first: parents come before their children.
    for d in dirs.into_iter().rev() {
        items.insert(0, Item::Dir(Box::leak(d.into_boxed_str())));
    }
    for d in [
        "etc/nginx",
        "etc/nginx/conf.d",
        "var",
        "var/log",
        "var/log/nginx",
        "var/log/nginx/log",
        "var/lib",
        "var/lib/nginx",
        "run",
        "usr/share",
        "usr/share/nginx",
        "usr/share/nginx/html",
    ] {
        items.push(Item::Dir(d));
    }
    items.push(Item::File(
        "etc/nginx/nginx.conf".into(),
        NGINX_CONF.into(),
        0o644,
    ));
    items.push(Item::File(
        "etc/nginx/conf.d/default.conf".into(),
        NGINX_DEFAULT_CONF.into(),
        0o644,
    ));
    items.push(Item::File(
        "usr/share/nginx/html/50x.html".into(),
        b"<html><body>50x: the service behind nginx did not answer</body></html>\n".to_vec(),
        0o644,
    ));
    let mut img = TestImage::busybox(json!({ "Cmd": ["/usr/sbin/nginx"] }));
    img.layers.push(Layer { items });
    img
}

/// One HTTP GET from the bridge's namespace (outside the cluster, where a user's
/// browser would be): the page, or why there is none.
fn get(hub: &str, addr: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let to: std::net::SocketAddr = addr.parse().unwrap();
    let hub = format!("/var/run/netns/{hub}");
    swarmlet::net::rtnl::in_netns(&hub, move || -> Result<String, String> {
        let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(3))
            .map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        s.write_all(format!("GET / HTTP/1.0\r\nHost: {to}\r\n\r\n").as_bytes())
            .map_err(|e| format!("send: {e}"))?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&out);
        let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP answer")?;
        match head.split_whitespace().nth(1) {
            Some("200") => Ok(body.trim().to_string()),
            code => Err(format!("HTTP {}", code.unwrap_or("?"))),
        }
    })
    .map_err(|e| e.to_string())?
}

/// `n` requests to `addr`: each distinct answer with how many times it came, and the
/// failures.
fn ask(
    hub: &str,
    addr: &str,
    n: usize,
) -> (std::collections::BTreeMap<String, usize>, Vec<String>) {
    let mut seen = std::collections::BTreeMap::new();
    let mut failed = Vec::new();
    for _ in 0..n {
        match get(hub, addr) {
            Ok(a) => *seen.entry(a).or_insert(0) += 1,
            Err(e) => failed.push(e),
        }
    }
    (seen, failed)
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
                &["service", "ps", "test"],
                &["service", "ps", "nginx"],
                &["service", "ps", "extend-helloworld"],
                &["service", "inspect", "test"],
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
    let nginx = format!("{reg_host}/nginx:seed");

    // The images are pushed over loopback, then the registry moves into the hub.
    let mut reg = Registry::start(TAG, registry::Options::default());
    for (tag, version) in [("1.0", "1.0"), ("2.0", "2.0")] {
        reg.push_image("demo", Some(tag), &image(version).build());
    }
    reg.push_image("nginx", Some("seed"), &nginx_image().build());
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
         demo:2.0 (busybox with a web server on port 5000 saying which container answered)\n\
         and nginx:seed (Debian's nginx), all built just now. Each command runs against the daemon of the\n\
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

    t.note(
        "2. An overlay network `test`, and the seed's service `test` on it, port 5000 published",
    );
    t.swarmlet(m, &["network", "create", "-d", "overlay", "test"]);
    t.swarmlet(
        m,
        &[
            "service",
            "create",
            "--name",
            "test",
            "-p",
            "5000:5000",
            "--network",
            "test",
            &v1,
        ],
    );
    t.swarmlet(m, &["service", "ls"]);
    t.swarmlet(m, &["service", "ps", "test"]);
    let port = |i: usize, p: u16| format!("{}:{p}", NODES[i].1);
    t.show_requests(&hub, &port(0, 5000), 3, 1);

    t.note("3. Scaled to six: one node's port 5000 answers with the tasks of all three nodes");
    t.swarmlet(m, &["service", "scale", "test=6"]);
    t.swarmlet(m, &["service", "ls"]);
    t.swarmlet(m, &["service", "ps", "test"]);
    let seen = t.show_requests(&hub, &port(1, 5000), 12, 6);
    assert_eq!(
        seen.len(),
        6,
        "12 requests through node2 reach all six tasks: {seen:?}"
    );

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
    let on_cut = running(m, "test")
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
            let r = running(m, "test");
            node_state(m, cut_name).contains(" Down ")
                && r.len() == 6
                && r.iter().all(|(n, _)| n != cut_name)
        },
    );
    t.say(&format!(
        "({cut_name} Down, and its {on_cut} test task(s) running on the others, {:.1} s after the cut)\n",
        cut_at.elapsed().as_secs_f64()
    ));
    t.swarmlet(m, &["node", "ls"]);
    t.swarmlet(m, &["service", "ps", "test"]);
    let seen = t.show_requests(&hub, &port(0, 5000), 12, 6);
    assert_eq!(
        seen.len(),
        6,
        "after the cut, node1 reaches all six tasks: {seen:?}"
    );

    t.note(&format!(
        "6. The cable back: {cut_name} is Ready again and stops the replicas that were replaced"
    ));
    t.ip(&["-n", &hub, "link", "set", &cable, "up"]);
    let cut_node = &nodes[CUT];
    settle(60, "the healed node Ready and settled", &nodes, || {
        node_state(m, cut_name).contains(" Ready ")
            && running(m, "extend-helloworld").len() == 3
            && containers_of(cut_node, "test") == 0
    });
    t.swarmlet(m, &["node", "ls"]);
    t.swarmlet(m, &["service", "ls"]);

    t.note("7. nginx in front, three replicas on port 80, sending everything to http://test:5000");
    t.say(&format!(
        "(the image: Debian's nginx package with the seed's default.conf)\n{NGINX_DEFAULT_CONF}"
    ));
    t.swarmlet(
        m,
        &[
            "service",
            "create",
            "--name",
            "nginx",
            "--replicas",
            "3",
            "--network",
            "test",
            "-p",
            "80:80",
            &nginx,
        ],
    );
    t.swarmlet(m, &["service", "ps", "nginx"]);
    let seen = t.show_requests(&hub, &port(1, 80), 12, 2);
    assert!(
        seen.len() >= 2,
        "nginx spreads over the test tasks: {seen:?}"
    );

    t.note(&format!(
        "8. A rolling update of test to demo:2.0, two tasks at a time, {} apart, while requests keep coming through nginx",
        opts.update_delay
    ));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let asker = {
        let (stop, hub, to) = (stop.clone(), hub.clone(), port(1, 80));
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, Vec::new());
            let mut versions = std::collections::BTreeMap::<String, usize>::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match get(&hub, &to) {
                    Ok(a) => {
                        ok += 1;
                        let v = a.split(" on ").next().unwrap_or_default().to_string();
                        *versions.entry(v).or_insert(0) += 1;
                    }
                    Err(e) => failed.push(e),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (ok, failed, versions)
        })
    };
    let update_at = Instant::now();
    t.swarmlet(
        m,
        &[
            "service",
            "update",
            "--update-parallelism",
            "2",
            "--image",
            &v2,
            "--update-delay",
            opts.update_delay,
            "test",
        ],
    );
    settle(60, "the update completed", &nodes, || {
        update_state(m, "test") == "completed"
    });
    settle(60, "six tasks on demo:2.0", &nodes, || {
        let r = running(m, "test");
        r.len() == 6 && r.iter().all(|(_, i)| *i == v2)
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed, versions) = asker.join().unwrap();
    t.say(&format!(
        "(update completed in {:.1} s; {} requests through {}:80 meanwhile: {}; failed requests: {})\n",
        update_at.elapsed().as_secs_f64(),
        ok + failed.len(),
        NODES[1].0,
        versions
            .iter()
            .map(|(v, n)| format!("{n} by {v}"))
            .collect::<Vec<_>>()
            .join(", "),
        failed.len()
    ));
    t.failed_during_update = Some(failed.len());
    for f in failed.iter().take(5) {
        t.say(&format!("  failed: {f}\n"));
    }
    t.swarmlet(m, &["service", "ls"]);
    t.swarmlet(m, &["service", "ps", "test"]);

    t.note("9. What every test task printed, gathered from the nodes that ran it");
    t.swarmlet(m, &["service", "logs", "test"]);

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

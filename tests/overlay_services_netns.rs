//! Services on an overlay network across three hosts (network namespaces on a bridge
//! with no uplink, real daemons, real containers, VXLAN between the hosts, the
//! nf_tables balancer since this kernel has no IPVS): a container on one host reaches
//! the tasks on the others by service name (the VIP, round robin) and by `tasks.` name;
//! a published port answers on every host and spreads over the tasks of all hosts; the
//! balancer and DNS follow a scale within a second; a network in use cannot be removed;
//! every task, on a network or not, has a way out through its node's local bridge.
//!
//! Needs root: network namespaces and containers.

#![allow(clippy::unwrap_used)] // test code

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;
use support::image::TestImage;
use support::netio::netns_exec;
use support::registry::{Options, Registry};
use support::{Daemon, Net};

/// The id of the running container of service `svc` on node `d`.
fn container_of(d: &Daemon, svc: &str) -> Option<String> {
    d.ok(&["ps", "--no-trunc"])
        .lines()
        .find(|l| l.contains(&format!(" {svc}.")) && l.contains("Up"))
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
}

fn exec(d: &Daemon, c: &str, args: &[&str]) -> (bool, String) {
    d.exec(c, args)
}

/// The addresses `nslookup` prints for a name, asked from inside a container.
fn lookup(d: &Daemon, c: &str, name: &str) -> BTreeSet<String> {
    let (_, out) = exec(d, c, &["busybox", "nslookup", name]);
    // busybox prints the server first ("Address: 127.0.0.11:53"), then the answers.
    out.lines()
        .filter_map(|l| l.strip_prefix("Address:").map(str::trim))
        .filter(|a| !a.starts_with("127.0.0.11"))
        .map(|a| a.split_whitespace().next().unwrap_or(a).to_string())
        .collect()
}

/// The hostnames that answer `url` in `n` tries from a container.
fn answers(d: &Daemon, c: &str, url: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            // (busybox 1.35's wget crashes on -T; timeout bounds it instead)
            let (ok, out) = exec(
                d,
                c,
                &[
                    "busybox", "timeout", "5", "busybox", "wget", "-q", "-O", "-", url,
                ],
            );
            assert!(ok, "wget {url}: {out}");
            out.trim().to_string()
        })
        .collect()
}

#[test]
#[ignore = "needs root: network namespaces and containers"]
fn services_reach_each_other_by_name_and_through_the_mesh_across_hosts() {
    let mut reg = Registry::start("ovl", Options::default());
    let img = TestImage::busybox(json!({"Cmd": ["/bin/sh"]})).build();
    reg.push_image("bb", Some("1"), &img);
    reg.push_image("bb", Some("2"), &img);
    let mut net = Net::new("ovl");
    let hub = net.hub_addr("10.79.0.254");
    reg.move_into(&hub, "10.79.0.254");
    let insecure = reg.host();
    let image = format!("{insecure}/bb:1");
    let image2 = format!("{insecure}/bb:2");

    let nodes = support::three_nodes(
        &mut net,
        "ovl",
        "10.79.0",
        &["--insecure-registry", &insecure],
    );
    let m = &nodes[0];

    m.ok(&["network", "create", "-d", "overlay", "test"]);
    // One task published: every node's port answers at once, also those with no task
    // of their own (a node with nothing assigned got no backends until this was fixed).
    m.ok(&[
        "service",
        "create",
        "--name",
        "first",
        "-p",
        "7000:80",
        &image,
        "sh",
        "-c",
        "mkdir -p /www && echo first > /www/index.html && exec busybox httpd -f -p 80 -h /www",
    ]);
    for i in 1..=3 {
        let url = format!("http://10.79.0.{i}:7000/");
        support::wait_until(3, &format!("{url} answering"), || {
            std::process::Command::new("ip")
                .args([
                    "netns", "exec", &hub, "timeout", "2", "busybox", "wget", "-q", "-O", "-", &url,
                ])
                .output()
                .is_ok_and(|o| o.status.success())
        });
    }
    m.ok(&["service", "rm", "first"]);
    // A web server per task answering with its task's hostname, one task per node.
    let out = m.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--network",
        "test",
        "--replicas",
        "3",
        "-p",
        "8080:80",
        "--hostname",
        "web-{{.Task.Slot}}",
        // httpd as pid 1 ignores SIGTERM (and would sit out the grace period, hiding
        // whether it left the balancers in time): it goes at once.
        "--stop-signal",
        "KILL",
        &image,
        "sh",
        "-c",
        "mkdir -p /www/cgi-bin && hostname > /www/index.html \
         && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\nsleep 0.3\\nhostname\\n' \
            > /www/cgi-bin/slow && busybox chmod +x /www/cgi-bin/slow \
         && exec busybox httpd -f -p 80 -h /www",
    ]);
    assert!(out.contains("verify: Service converged"), "{out}");
    let out = m.ok(&[
        "service",
        "create",
        "--name",
        "client",
        "--network",
        "test",
        "--mode",
        "global",
        &image,
        "sleep",
        "600",
    ]);
    assert!(out.contains("verify: Service converged"), "{out}");
    let all: BTreeSet<String> = ["web-1", "web-2", "web-3"].map(String::from).into();

    // From a container on every host: the service name (VIP, round robin over the
    // three tasks, two of them on other hosts) and `tasks.web` (their addresses).
    let doc: serde_json::Value =
        serde_json::from_str(&m.ok(&["service", "inspect", "web"])).unwrap();
    let vips = doc[0]["Endpoint"]["VirtualIPs"].as_array().unwrap().clone();
    let net_doc: serde_json::Value =
        serde_json::from_str(&m.ok(&["network", "inspect", "test"])).unwrap();
    let test_id = net_doc[0]["Id"].as_str().unwrap().to_string();
    let vip = vips
        .iter()
        .find(|v| v["NetworkID"].as_str() == Some(test_id.as_str()))
        .and_then(|v| v["Addr"].as_str())
        .map(|a| a.split('/').next().unwrap().to_string())
        .unwrap_or_else(|| panic!("no VIP on test: {vips:?}"));
    for d in &nodes {
        let c = container_of(d, "client").unwrap_or_else(|| panic!("no client on {}", d.name));
        // The CLI saw the tasks run; the nodes' tables follow a moment later.
        support::wait_until(5, "tasks.web known to the client", || {
            lookup(d, &c, "tasks.web").len() == 3
        });
        assert_eq!(
            lookup(d, &c, "web"),
            BTreeSet::from([vip.clone()]),
            "on {}",
            d.name
        );
        assert_eq!(lookup(d, &c, "tasks.web").len(), 3, "on {}", d.name);
        // A web task is on ingress too (it publishes): its names are test's only.
        let w = container_of(d, "web").unwrap();
        assert_eq!(
            lookup(d, &w, "tasks.web").len(),
            3,
            "from web on {}",
            d.name
        );
        assert_eq!(lookup(d, &w, "web"), BTreeSet::from([vip.clone()]));
        let got: BTreeSet<String> = answers(d, &c, "http://web/", 6).into_iter().collect();
        assert_eq!(got, all, "web by name from {}", d.name);
        // A name nobody has is refused at once, not forwarded to a world out of reach;
        // localhost is in the container's hosts file.
        assert!(lookup(d, &c, "nosuch").is_empty());
        let (ok, out) = exec(
            d,
            &c,
            &["busybox", "ping", "-c", "1", "-W", "2", "localhost"],
        );
        assert!(ok, "{out}");
    }

    // A way out for every task, through its node's local bridge and NAT: the registry
    // in the hub (which has no route back to the bridge's subnet) answers a task on the
    // overlay and a task on no network alike.
    let registry = format!("http://{insecure}/v2/");
    let out = m.ok(&[
        "service",
        "create",
        "--name",
        "lone",
        "--replicas",
        "1",
        &image,
        "sleep",
        "600",
    ]);
    assert!(out.contains("verify: Service converged"), "{out}");
    let lone = nodes
        .iter()
        .find_map(|d| container_of(d, "lone").map(|c| (d, c)))
        .unwrap();
    for (d, c) in [
        (&nodes[0], container_of(&nodes[0], "client").unwrap()),
        (lone.0, lone.1.clone()),
    ] {
        let (ok, out) = exec(
            d,
            &c,
            &[
                "busybox", "timeout", "5", "busybox", "wget", "-q", "-O", "-", &registry,
            ],
        );
        assert!(ok && out.trim() == "{}", "{c} on {}: {out}", d.name);
    }
    let (_, route) = exec(lone.0, &lone.1, &["busybox", "ip", "route"]);
    assert!(route.contains("default via 172.18.0.1"), "{route}");

    // The published port on every host, from outside the cluster (the hub), reaches the
    // tasks of all hosts.
    for i in 1..=3 {
        let url = format!("http://10.79.0.{i}:8080/");
        let got: BTreeSet<String> = (0..6)
            .map(|_| {
                netns_exec(
                    &hub,
                    &["timeout", "5", "busybox", "wget", "-q", "-O", "-", &url],
                )
            })
            .map(|s| s.trim().to_string())
            .collect();
        assert_eq!(got, all, "through {url}");
    }

    // Host mode: only the nodes running a task listen, straight into it, and the task
    // sees the client's own address (the mesh's masquerade would hide it).
    let out = m.ok(&[
        "service",
        "create",
        "--name",
        "direct",
        "--replicas",
        "2",
        "-p",
        "published=8081,target=80,mode=host",
        &image,
        "sh",
        "-c",
        "mkdir -p /www/cgi-bin \
         && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho $REMOTE_ADDR\\n' \
            > /www/cgi-bin/who && busybox chmod +x /www/cgi-bin/who \
         && exec busybox httpd -f -p 80 -h /www",
    ]);
    assert!(out.contains("verify: Service converged"), "{out}");
    let ls = m.ok(&["service", "ls"]);
    assert!(
        ls.contains("*:8081->80/tcp") || ls.contains(":8081->80/tcp"),
        "{ls}"
    );
    // (A task's port opens on its node once the node hears it runs: a moment after
    // the CLI saw it.)
    let ask = |i: usize| {
        let url = format!("http://10.79.0.{i}:8081/cgi-bin/who");
        let o = std::process::Command::new("ip")
            .args([
                "netns", "exec", &hub, "timeout", "5", "busybox", "wget", "-q", "-O", "-", &url,
            ])
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).trim().to_string(),
        )
    };
    for (i, d) in nodes.iter().enumerate() {
        match container_of(d, "direct") {
            // busybox httpd names an IPv4 client as an IPv6-mapped address.
            Some(_) => {
                support::wait_until(5, &format!("port 8081 on {}", d.name), || ask(i + 1).0);
                let (_, said) = ask(i + 1);
                assert_eq!(
                    said, "[::ffff:10.79.0.254]",
                    "the client's own address on {}",
                    d.name
                );
            }
            None => {
                let (ok, said) = ask(i + 1);
                assert!(!ok, "port 8081: no task on {}, yet {said:?}", d.name);
            }
        }
    }

    // A network in use stays, and says who uses it.
    let o = m.cli(&["network", "rm", "test"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("client") && e.contains("web"),
        "{e}"
    );

    // Scaled down to one: DNS and the balancers follow within a second of the tasks'
    // end being known.
    m.ok(&["service", "scale", "web=1"]);
    let c = container_of(&nodes[0], "client").unwrap();
    let took = support::wait_until(30, "tasks.web down to one", || {
        lookup(&nodes[0], &c, "tasks.web").len() == 1
    });
    eprintln!("scale 3 -> 1: tasks.web followed in {took:?}");
    let got: BTreeSet<String> = answers(&nodes[0], &c, "http://web/", 4)
        .into_iter()
        .collect();
    assert_eq!(got.len(), 1, "{got:?}");
    m.ok(&["service", "scale", "web=3"]);
    assert_eq!(lookup(&nodes[0], &c, "tasks.web").len(), 3);

    // A rolling update while a client keeps asking through the VIP: tasks leave the
    // balancers before they stop, so no request fails.
    // Two clients, each with a request of 0.3 s always in flight: a task stopped under
    // one of them would cut it.
    let loop_sh = "ask() { f=0; i=0; while [ $i -lt 50 ]; do \
        busybox timeout 3 busybox wget -q -O /dev/null http://web/cgi-bin/slow || f=$((f+1)); \
        i=$((i+1)); done; echo $f; }; \
        ask > /tmp/a & ask > /tmp/b; wait; echo failed=$(( $(cat /tmp/a) + $(cat /tmp/b) ))";
    let asker = {
        let (ns, dir) = (nodes[1].name.clone(), nodes[1].sock());
        let c = container_of(&nodes[1], "client").unwrap();
        std::thread::spawn(move || {
            let o = std::process::Command::new(support::BIN)
                .arg("--socket")
                .arg(dir)
                .args(["exec", &c, "sh", "-c", loop_sh])
                .output()
                .unwrap();
            (ns, String::from_utf8_lossy(&o.stdout).into_owned())
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let out = m.ok(&[
        "service",
        "update",
        "--update-parallelism",
        "1",
        "--update-delay",
        "500ms",
        "--image",
        &image2,
        "web",
    ]);
    assert!(out.contains("verify: Service converged"), "{out}");
    let (on, said) = asker.join().unwrap();
    assert_eq!(
        said.trim(),
        "failed=0",
        "requests from {on} during the update"
    );
    assert_eq!(lookup(&nodes[0], &c, "tasks.web").len(), 3);

    // Host n3 cut off: its task runs again on the survivors, and DNS and the
    // balancers name only tasks that answer.
    net.set_link(3, false);
    support::wait_until(30, "web on the survivors only", || {
        let ps = m.ok(&["service", "ps", "-f", "desired-state=running", "web"]);
        ps.lines().filter(|l| l.contains("Running")).count() == 3 && !ps.contains(" n3 ")
    });
    let took = support::wait_until(5, "tasks.web names 3 tasks that answer", || {
        let addrs = lookup(&nodes[0], &c, "tasks.web");
        addrs.len() == 3
            && addrs.iter().all(|a| {
                exec(
                    &nodes[0],
                    &c,
                    &[
                        "busybox",
                        "timeout",
                        "2",
                        "busybox",
                        "wget",
                        "-q",
                        "-O",
                        "-",
                        &format!("http://{a}/"),
                    ],
                )
                .0
            })
    });
    eprintln!("after the cut, DNS right within {took:?} of the tasks running");
    let got: BTreeSet<String> = answers(&nodes[0], &c, "http://web/", 6)
        .into_iter()
        .collect();
    assert_eq!(got, all, "web by name after the cut");
}

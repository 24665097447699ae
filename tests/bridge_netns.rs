//! `run`'s default network, the node's local bridge, on one real daemon in a network
//! namespace: a container gets an address on `sw-gw` and reaches the outside world
//! through the node's NAT (the registry in the hub, which has no route back to the
//! bridge's subnet), as under Docker; `--network none` does not; removing the container
//! removes its namespace, interface and address.
//!
//! Needs root: network namespaces and containers.

#![allow(clippy::unwrap_used)] // test code

mod support;

use support::netio::netns_exec;
use support::Daemon;

/// What the daemon holds for bridged containers in its netns directory.
fn bridged_files(d: &Daemon) -> Vec<String> {
    std::fs::read_dir(d.dir.join("data/netns"))
        .map(|r| {
            r.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("c-"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
#[ignore = "needs root: network namespaces and containers"]
fn run_puts_a_container_on_the_local_bridge_with_a_way_out() {
    let one = support::one_node("brn", "10.81.0");
    let (d, ns, image, insecure) = (&one.d, &one.ns, &one.hub.image, &one.hub.registry);
    let v2 = format!("http://{insecure}/v2/");
    // (busybox 1.35's wget crashes on -T; timeout bounds it instead)
    let wget = [
        "busybox", "timeout", "5", "busybox", "wget", "-q", "-O", "-", &v2,
    ];

    // No cluster needed: plain containers.
    d.ok(&["run", "-d", "--name", "plain", image, "sleep", "600"]);
    let doc: serde_json::Value = serde_json::from_str(&d.ok(&["inspect", "plain"])).unwrap();
    assert_eq!(doc[0]["HostConfig"]["NetworkMode"], "bridge", "{doc}");
    let addr = doc[0]["NetworkSettings"]["IPAddress"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(addr.starts_with("172.18."), "{doc}");
    let mut exec = vec!["exec", "plain"];
    exec.extend(wget);
    assert_eq!(
        d.ok(&exec).trim(),
        "{}",
        "the registry through the node's NAT"
    );
    let hosts = d.ok(&["exec", "plain", "cat", "/etc/hosts"]);
    let id = doc[0]["Id"].as_str().unwrap();
    assert!(hosts.contains(&format!("{addr}\t{}", &id[..12])), "{hosts}");
    let resolv = d.ok(&["exec", "plain", "cat", "/etc/resolv.conf"]);
    assert!(
        !resolv.contains("nameserver 127."),
        "no loopback resolver: {resolv}"
    );
    let routes = d.ok(&["exec", "plain", "busybox", "ip", "route"]);
    assert!(routes.contains("default via 172.18.0.1"), "{routes}");

    // A second one, attached and removed on exit: another address, the same way out.
    let mut run = vec!["run", "--rm", image];
    run.extend(wget);
    assert_eq!(d.ok(&run).trim(), "{}");
    // --network none: only loopback, no way out.
    let mut none = vec!["run", "--rm", "--network", "none", image];
    none.extend(wget);
    let (ok, out) = d.run(&none);
    assert!(!ok, "no way out with --network none: {out}");

    // Removed: nothing of its wiring is left (the --rm ones went on exit).
    assert_eq!(bridged_files(d).len(), 4, "{:?}", bridged_files(d));
    d.ok(&["rm", "-f", "plain"]);
    support::wait_until(10, "the --rm containers gone", || {
        d.ok(&["ps", "-a", "-q"]).trim().is_empty()
    });
    assert_eq!(bridged_files(d), Vec::<String>::new());
    let links = netns_exec(&format!("/var/run/netns/{ns}"), &["ip", "-o", "link"]);
    assert_eq!(
        links.lines().filter(|l| l.contains("master sw-gw")).count(),
        0,
        "no interface left on the bridge: {links}"
    );
}

//! `network create|ls|inspect|rm` against a real daemon: the ingress network `init`
//! made, subnets and VNIs from the pool, Docker's JSON, and every bad input refused
//! with a message naming it and nothing changed. `init --default-addr-pool` moves the
//! pool. A service cannot join a network until nodes wire tasks into them, and says so.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // test code

mod support;

use support::Daemon;

fn err(d: &Daemon, args: &[&str]) -> (i32, String) {
    let o = d.cli(args);
    assert!(!o.status.success(), "{args:?} should fail");
    (
        o.status.code().unwrap(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn inspect(d: &Daemon, name: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(&d.ok(&["network", "inspect", name])).unwrap();
    v[0].clone()
}

#[test]
fn networks_are_made_listed_inspected_and_removed_like_docker() {
    let d = Daemon::new("nets", "n1", "127.0.36.1");
    d.ok(&["init", "--listen-addr", &d.addr()]);

    // init made ingress: Docker's first subnet and VNI.
    let ing = inspect(&d, "ingress");
    assert_eq!(ing["Ingress"], true);
    assert_eq!(ing["IPAM"]["Config"][0]["Subnet"], "10.0.0.0/24");
    assert_eq!(
        ing["Options"]["com.docker.network.driver.overlay.vxlanid_list"],
        "4096"
    );

    let id = d
        .ok(&["network", "create", "-d", "overlay", "mynet"])
        .trim()
        .to_string();
    assert_eq!(id.len(), 16, "{id}");
    d.ok(&[
        "network",
        "create",
        "--subnet",
        "10.20.0.0/16",
        "--gateway",
        "10.20.0.254",
        "--label",
        "env=prod",
        "--opt",
        "encrypted",
        "--attachable",
        "secure",
    ]);
    let ls = d.ok(&["network", "ls"]);
    let lines: Vec<&str> = ls.lines().collect();
    assert!(
        lines[0].starts_with("NETWORK ID")
            && lines[0].contains("DRIVER")
            && lines[0].contains("SCOPE")
    );
    assert_eq!(lines.len(), 4, "{ls}");
    assert!(
        ls.contains("mynet") && ls.contains("overlay") && ls.contains("swarm"),
        "{ls}"
    );
    assert!(ls.contains(&id[..12]));
    let q = d.ok(&["network", "ls", "-q", "-f", "label=env=prod"]);
    assert_eq!(q.lines().count(), 1);
    let n = inspect(&d, "mynet");
    assert_eq!(n["Id"], id);
    assert_eq!(n["IPAM"]["Config"][0]["Subnet"], "10.0.1.0/24");
    assert_eq!(n["IPAM"]["Config"][0]["Gateway"], "10.0.1.1");
    assert_eq!(
        n["Options"]["com.docker.network.driver.overlay.vxlanid_list"],
        "4097"
    );
    let s = inspect(&d, &id[..6]);
    assert_eq!(s["Name"], "mynet", "an id prefix names it too");
    let s = inspect(&d, "secure");
    assert_eq!(s["IPAM"]["Config"][0]["Gateway"], "10.20.0.254");
    assert_eq!(
        (s["Attachable"].clone(), s["Labels"]["env"].clone()),
        (true.into(), "prod".into())
    );
    assert!(s["Options"].get("encrypted").is_some());

    // Bad input: named, exit 1 (the leader's) or 2 (the CLI's), nothing made.
    for (args, code, says) in [
        (&["network", "create", "mynet"][..], 1, "already exists"),
        (
            &["network", "create", "--subnet", "10.0.1.128/25", "x1"][..],
            1,
            "overlaps network mynet",
        ),
        (
            &["network", "create", "--subnet", "10.0.9.1/24", "x2"][..],
            2,
            "host bits",
        ),
        (
            &["network", "create", "--subnet", "300.0.0.0/8", "x3"][..],
            2,
            "--subnet",
        ),
        (
            &["network", "create", "-d", "bridge", "x4"][..],
            2,
            "only overlay",
        ),
        (
            &["network", "create", "-o", "bogus=1", "x5"][..],
            1,
            "bogus",
        ),
        (
            &["network", "create", "bad/name"][..],
            2,
            "invalid network name",
        ),
        (
            &["network", "rm", "ingress"][..],
            1,
            "ingress network cannot be removed",
        ),
        (
            &["network", "rm", "nosuch"][..],
            1,
            "network nosuch not found",
        ),
        (
            &["network", "inspect", "nosuch"][..],
            1,
            "network nosuch not found",
        ),
    ] {
        let (c, e) = err(&d, args);
        assert_eq!(c, code, "{args:?}: {e}");
        assert!(e.contains(says), "{args:?}: {e}");
    }
    assert_eq!(
        d.ok(&["network", "ls", "-q"]).lines().count(),
        3,
        "nothing was made"
    );

    // Host-mode publishing needs its port named.
    let (c, e) = err(
        &d,
        &[
            "service",
            "create",
            "-d",
            "-p",
            "mode=host,target=80",
            "busybox",
        ],
    );
    assert_eq!(c, 2);
    assert!(e.contains("host mode needs a published port"), "{e}");
    assert_eq!(d.ok(&["service", "ls", "-q"]), "", "nothing was made");

    d.ok(&["network", "rm", "mynet", "secure"]);
    assert_eq!(d.ok(&["network", "ls", "-q"]).lines().count(), 1);
    // Removed networks free their subnet and VNI for the next.
    d.ok(&["network", "create", "again"]);
    let a = inspect(&d, "again");
    assert_eq!(a["IPAM"]["Config"][0]["Subnet"], "10.0.1.0/24");
}

#[test]
fn init_takes_its_address_pool_and_refuses_what_it_cannot_honour() {
    let d = Daemon::new("netpool", "n1", "127.0.36.2");
    for (args, says) in [
        (
            &["--default-addr-pool", "10.0.0.0/33"][..],
            "--default-addr-pool",
        ),
        (
            &["--default-addr-pool-mask-length", "31"][..],
            "--default-addr-pool-mask-length",
        ),
        (
            &[
                "--default-addr-pool",
                "10.0.0.0/8",
                "--default-addr-pool",
                "10.9.0.0/16",
            ][..],
            "overlaps",
        ),
        (&["--task-history-limit", "3"][..], "--task-history-limit"),
        (
            &["--dispatcher-heartbeat", "5s"][..],
            "--dispatcher-heartbeat",
        ),
    ] {
        let mut a = vec!["init", "--listen-addr", "127.0.36.2:2377"];
        a.extend_from_slice(args);
        let (c, e) = err(&d, &a);
        assert_eq!(c, 2, "{a:?}: {e}");
        assert!(e.contains(says), "{a:?}: {e}");
    }
    d.ok(&[
        "init",
        "--listen-addr",
        &d.addr(),
        "--default-addr-pool",
        "172.30.0.0/24",
        "--default-addr-pool-mask-length",
        "26",
    ]);
    assert_eq!(
        inspect(&d, "ingress")["IPAM"]["Config"][0]["Subnet"],
        "172.30.0.0/26"
    );
    d.ok(&["network", "create", "n2"]);
    assert_eq!(
        inspect(&d, "n2")["IPAM"]["Config"][0]["Subnet"],
        "172.30.0.64/26"
    );
    // Four /26 in the /24: two more networks, then the pool is spent, and says so.
    d.ok(&["network", "create", "n3"]);
    d.ok(&["network", "create", "n4"]);
    let (c, e) = err(&d, &["network", "create", "n5"]);
    assert_eq!(c, 1, "{e}");
    assert!(e.contains("172.30.0.0/24"), "the spent pool is named: {e}");
    assert!(!d.ok(&["network", "ls"]).contains("n5"), "nothing was made");
}

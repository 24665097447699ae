//! The cluster across network namespaces: five nodes, each in its own namespace with its
//! own address on port 2377, joined by a bridge in a hub namespace that has no uplink, so
//! no packet can leave the machine. A manager's link is cut: the cut-off minority cannot
//! commit, the majority can, and after the heal everything converges. And the addresses
//! a node advertises when the user names none.
//!
//! Needs root: marked ignored, so the runner reports it skipped unless run as root
//! (`just test` runs ignored tests when root, as CI is).

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // test code

mod support;

use support::{wait_until, Daemon, Net};

#[test]
#[ignore = "needs root: network namespaces"]
fn cluster_in_namespaces_survives_a_cut_manager() {
    let mut net = Net::new("swt");
    let mut nodes = Vec::new();
    for (i, name) in ["m1", "m2", "m3", "w1", "w2"].iter().enumerate() {
        let addr = format!("10.77.0.{}", i + 1);
        let n = net.host(i + 1, &addr);
        nodes.push(Daemon::in_netns("ns", &n, name, &addr));
    }
    let (m1, m2, m3) = (&nodes[0], &nodes[1], &nodes[2]);
    m1.ok(&["init", "--listen-addr", &m1.addr()]);
    let mt = m1.ok(&["join-token", "manager", "-q"]).trim().to_string();
    let wt = m1.ok(&["join-token", "worker", "-q"]).trim().to_string();
    for n in &nodes[1..] {
        let tok = if n.name.starts_with('m') { &mt } else { &wt };
        n.ok(&["join", tok, &m1.addr(), "--listen-addr", &n.addr()]);
    }
    wait_until(20, "5 ready, 1 leader, 2 reachable", || {
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
    wait_until(20, "the majority commits", || {
        [m2, m3].iter().any(|m| {
            m.cli(&["node", "update", "--label-add", "side=majority", "w1"])
                .status
                .success()
        })
    });
    wait_until(10, "m1 seen down by the majority", || {
        [m2, m3].iter().any(|m| {
            let ls = String::from_utf8_lossy(&m.cli(&["node", "ls"]).stdout).into_owned();
            ls.lines().any(|l| l.contains(" m1 ") && l.contains("Down"))
        })
    });

    // Heal: everyone converges, and the majority's write is what stands.
    net.set_link(1, true);
    wait_until(30, "converged after the heal", || {
        let ls = String::from_utf8_lossy(&m1.cli(&["node", "ls"]).stdout).into_owned();
        ls.matches("Ready").count() == 5
            && ls.contains("Leader")
            && ls.matches("Reachable").count() == 2
    });
    wait_until(10, "the label from the majority", || {
        let inspect =
            String::from_utf8_lossy(&m1.cli(&["node", "inspect", "w1"]).stdout).into_owned();
        inspect.contains(r#""side":"majority""#)
    });
}

/// With no `--listen-addr` or `--advertise-addr`, as most users type them: `init` takes
/// the host's one address and `join` the one its routes use toward the manager. A join
/// toward a manager there is no route to fails, naming it, and leaves no port open; an
/// `init` on a host with two addresses and no default route refuses, naming both.
#[test]
#[ignore = "needs root: network namespaces"]
fn default_addresses_are_found_or_refused() {
    let mut net = Net::new("swa");
    let ns: Vec<String> = (1..=3)
        .map(|i| net.host(i, &format!("10.78.0.{i}")))
        .collect();
    let nodes: Vec<Daemon> = ["a1", "a2", "a3"]
        .iter()
        .zip(&ns)
        .enumerate()
        .map(|(i, (name, n))| Daemon::in_netns("nsa", n, name, &format!("10.78.0.{}", i + 1)))
        .collect();
    let info = |d: &Daemon| d.ok(&["debug", "info"]);

    nodes[0].ok(&["init"]);
    assert!(
        info(&nodes[0]).contains("advertise=10.78.0.1:2377\n"),
        "{}",
        info(&nodes[0])
    );
    let wt = nodes[0]
        .ok(&["join-token", "worker", "-q"])
        .trim()
        .to_string();

    // 10.78.9.9 is on no subnet of a2's and a2 has no default route.
    let o = nodes[1].cli(&["join", &wt, "10.78.9.9:2377"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no route to the manager 10.78.9.9:2377"),
        "{err}"
    );
    assert!(
        info(&nodes[1]).contains("listen=-\n"),
        "{}",
        info(&nodes[1])
    );
    nodes[1].ok(&["join", &wt, "10.78.0.1:2377"]);
    assert!(
        info(&nodes[1]).contains("advertise=10.78.0.2:2377\n"),
        "{}",
        info(&nodes[1])
    );
    wait_until(20, "2 ready", || {
        nodes[0].ls().matches("Ready").count() == 2
    });

    let out = std::process::Command::new("ip")
        .args(["-n", &ns[2], "addr", "add", "10.78.1.3/24", "dev", "eth0"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let o = nodes[2].cli(&["init"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--advertise-addr is needed")
            && err.contains("10.78.0.3 on eth0")
            && err.contains("10.78.1.3 on eth0"),
        "{err}"
    );
    assert!(
        info(&nodes[2]).contains("listen=-\n"),
        "{}",
        info(&nodes[2])
    );
}

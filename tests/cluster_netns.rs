//! The cluster across network namespaces: five nodes, each in its own namespace with its
//! own address on port 2377, joined by a bridge in a hub namespace that has no uplink, so
//! no packet can leave the machine. A manager's link is cut: the cut-off minority cannot
//! commit, the majority can, and after the heal everything converges.
//!
//! Needs root (CI runs as root); without it the test says so and skips.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // test code

mod support;

use support::{is_root, wait_until, Daemon, Net};

#[test]
fn cluster_in_namespaces_survives_a_cut_manager() {
    if !is_root() {
        eprintln!("skipping: network namespaces need root");
        return;
    }
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

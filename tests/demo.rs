//! The demo (`just demo`, `examples/demo/`) end to end: the same scenario, run in this
//! process, must finish and print what the README says it shows.
//!
//! Needs root: network namespaces and containers.

#![allow(clippy::unwrap_used)] // test code

mod support;

#[path = "../examples/demo/scenario.rs"]
mod scenario;

/// Removes by name what the run left if it panicked halfway (its own objects clean up
/// as they drop; this catches what they could not).
struct Sweep;

impl Drop for Sweep {
    fn drop(&mut self) {
        let left = scenario::sweep(std::process::id());
        if !left.is_empty() {
            eprintln!("swept: {}", left.join(", "));
        }
    }
}

#[test]
#[ignore = "needs root: network namespaces and containers"]
fn demo_runs_end_to_end() {
    let _sweep = Sweep;
    let run = scenario::run(&scenario::Options::default());
    let t = run.text.clone();
    let after = |marker: &str| t.split_once(marker).map(|(_, rest)| rest).unwrap();
    let step = |n: u32| {
        let rest = after(&format!("\n# {n}. "));
        rest.split_once("\n# ").map_or(rest, |(s, _)| s)
    };
    // Three nodes, the first one leading.
    let ls = step(1);
    assert_eq!(ls.matches(" Ready ").count(), 3, "{ls}");
    assert!(ls.contains("Leader"), "{ls}");
    // The service `test` on its overlay network answers through the published port.
    assert!(step(2).contains("helloworld 1.0 on"), "{}", step(2));
    // Six replicas, and one node's port reaches all of them.
    let six = step(3);
    assert!(six.contains("6/6"), "{six}");
    assert_eq!(six.matches("  2 x helloworld 1.0 on").count(), 6, "{six}");
    // The global service on every node.
    let global = step(4);
    for node in ["node1", "node2", "node3"] {
        assert!(global.contains(node), "{global}");
    }
    // The cut node Down while its replicas run elsewhere, the port still answering
    // from all six; Ready again after.
    let cut = step(5);
    assert!(cut.contains("Down"), "{cut}");
    assert_eq!(cut.matches("  2 x helloworld 1.0 on").count(), 6, "{cut}");
    assert!(step(6).contains("6/6"), "{}", step(6));
    // nginx sends requests to the test tasks by the service's name.
    let nginx = step(7);
    assert!(nginx.contains("proxy_pass http://test:5000;"), "{nginx}");
    assert!(nginx.contains("x helloworld 1.0 on"), "{nginx}");
    // The rolling update completes on the new image with no request lost.
    let update = step(8);
    assert!(update.contains("update completed"), "{update}");
    assert!(
        update.contains(" by helloworld 1.0, ") && update.contains(" by helloworld 2.0;"),
        "{update}"
    );
    assert_eq!(run.failed_during_update, Some(0), "{update}");
    let logs = step(9);
    assert!(logs.contains("helloworld 1.0 on"), "{logs}");
    assert!(logs.contains("helloworld 2.0 on"), "{logs}");
    assert!(t.contains("# Done in"), "{t}");
}

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
    let t = scenario::run(&scenario::Options::default()).text;
    let after = |marker: &str| t.split_once(marker).map(|(_, rest)| rest).unwrap();
    let step = |n: u32| {
        let rest = after(&format!("\n# {n}. "));
        rest.split_once("\n# ").map_or(rest, |(s, _)| s)
    };
    // Three nodes, the first one leading.
    let ls = step(1);
    assert_eq!(ls.matches(" Ready ").count(), 3, "{ls}");
    assert!(ls.contains("Leader"), "{ls}");
    // Three replicas, then six.
    assert!(step(2).contains("3/3"), "{}", step(2));
    assert!(step(3).contains("6/6"), "{}", step(3));
    // The global service on every node.
    let global = step(4);
    for node in ["node1", "node2", "node3"] {
        assert!(global.contains(node), "{global}");
    }
    // The cut node Down while its replicas run elsewhere; Ready again after.
    assert!(step(5).contains("Down"), "{}", step(5));
    assert!(step(6).contains("6/6"), "{}", step(6));
    // The rolling update completes on the new image, and the logs show both versions.
    let update = step(7);
    assert!(update.contains("update completed"), "{update}");
    assert!(update.contains("demo:2.0"), "{update}");
    let logs = step(8);
    assert!(logs.contains("helloworld 1.0 on"), "{logs}");
    assert!(logs.contains("helloworld 2.0 on"), "{logs}");
    assert!(t.contains("# Done in"), "{t}");
}

//! Services benchmarks. Prints `BENCH <name> <value> <unit>` lines.
//!
//! - scheduler placements per second: 100,000 tasks (100 services of 1,000 replicas,
//!   every fourth with a label constraint, every tenth with a CPU reservation) on
//!   5,000 nodes (half of them labelled, one in fifty drained), on one core. Goal:
//!   at least 50,000 placements/s. Best of five rounds (these machines are noisy).

#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss
)] // bench code

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use swarmlet::cluster::NodeRole;
use swarmlet::raft::NodeId;
use swarmlet::services::constraint::{Constraint, NodeFacts};
use swarmlet::services::scheduler::{Candidate, Group, Resources, Scheduler};
use swarmlet::services::ServiceId;

const NODES: u64 = 5_000;
const SERVICES: u64 = 100;
const REPLICAS: usize = 1_000;
const ROUNDS: usize = 5;

fn main() {
    // `cargo bench` passes --bench; nextest listing the target (--list) must not run it.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let east: BTreeMap<String, String> = [("zone".to_string(), "east".to_string())].into();
    let none = BTreeMap::new();
    let hostnames: Vec<String> = (0..NODES).map(|n| format!("pi-{n}")).collect();
    let zone = [Constraint::parse("node.labels.zone==east").unwrap()];
    let mut best = f64::MAX;
    for _ in 0..ROUNDS {
        let candidates = (0..NODES).map(|n| Candidate {
            facts: NodeFacts {
                id: NodeId(n.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                hostname: &hostnames[n as usize],
                role: NodeRole::Worker,
                os: "linux",
                arch: "aarch64",
                labels: if n % 2 == 0 { &east } else { &none },
                engine_labels: &none,
            },
            available: n % 50 != 0,
            capacity: Resources {
                nano_cpus: 4_000_000_000,
                memory: 8 << 30,
            },
        });
        let start = Instant::now();
        let mut s = Scheduler::new(candidates);
        let mut placed = 0;
        for svc in 0..SERVICES {
            let g = Group {
                service: ServiceId(svc),
                constraints: if svc % 4 == 0 { &zone } else { &[] },
                max_per_node: 0,
                reserve: Resources {
                    nano_cpus: if svc % 10 == 0 { 100_000_000 } else { 0 },
                    memory: 0,
                },
            };
            let p = s.place(&g, REPLICAS);
            assert!(p.unplaced.is_none(), "{:?}", p.unplaced);
            placed += black_box(p).nodes.len();
        }
        assert_eq!(placed, SERVICES as usize * REPLICAS);
        best = best.min(start.elapsed().as_secs_f64());
    }
    let total = (SERVICES as usize * REPLICAS) as f64;
    println!(
        "BENCH scheduler_placements_per_sec {:.0} placements/s",
        total / best
    );
    println!("BENCH scheduler_100k_tasks_5k_nodes {:.1} ms", best * 1e3);
}

//! The appliance figures, from virtual machines (tests/support/qemu.rs). Prints
//! `BENCH <name> <value> <unit>` lines:
//!
//! - `vm_boot_3` / `vm_cluster_ready_3`: three x86_64 VMs (512 MiB, one vCPU each) started
//!   side by side until each answers on its control channel; then from starting their
//!   daemons, through `init` and two `join`s, until the first lists three Ready nodes; and
//!   `vm_boot_to_cluster_ready_3`, the two together. Under software emulation (TCG) on
//!   this host, so slower than the metal; the split shows how much is the kernel's boot.
//!   Then `vm_node_down_3`: node2's QEMU is killed; time until node0's `node ls` says
//!   Down (polled inside the guest every 0.1 s). The failover goal.
//! - `vm_aarch64_idle_rss_daemon`, `..._keeper`, `..._pss`: an idle one-node cluster in an
//!   aarch64 VM (a Cortex-A72, a Pi 4's core, with 512 MiB): the daemon's and its keeper's
//!   RSS, and their PSS together (they share the binary's pages), after a quiet 10 s.
//! - `binary_size_<arch>`: each static binary's size.
//!
//! No peer runs in these guests (Docker would need a root filesystem of its own), so
//! there are no ratios here; the cluster bench compares with Docker Swarm on the host.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // bench code

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::qemu::{swarmlet_binary, Arch, Cluster, Vm};

/// Runs of the 3-VM cluster: each is ten-odd seconds of emulation.
const CLUSTER_RUNS: usize = 3;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // listed by nextest or cargo test: nothing to run
    }
    if !support::is_root() {
        println!("# vm benchmarks need root (network namespaces, tap devices): skipped");
        return;
    }
    for arch in [Arch::X86_64, Arch::Aarch64] {
        let bytes = std::fs::metadata(swarmlet_binary(arch)).unwrap().len();
        println!(
            "BENCH binary_size_{} {:.2} MiB",
            arch.name(),
            bytes as f64 / 1_048_576.0
        );
    }
    cluster_ready();
    idle_rss_aarch64();
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn cluster_ready() {
    let (mut boot, mut ready, mut total, mut down) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..CLUSTER_RUNS {
        let t0 = Instant::now();
        let mut c = Cluster::boot_vms(3, |_, mut s| {
            s.arch = Arch::X86_64;
            s
        });
        let t1 = Instant::now();
        c.start_daemons();
        c.form();
        let t2 = Instant::now();
        boot.push((t1 - t0).as_secs_f64());
        ready.push((t2 - t1).as_secs_f64());
        total.push((t2 - t0).as_secs_f64());
        c.kill(2);
        let t3 = Instant::now();
        c.vms[0].ok("for i in $(seq 600); do
                 swarmlet node ls | grep node2 | grep -q ' Down ' && exit 0; sleep 0.1
             done; exit 1");
        down.push(t3.elapsed().as_secs_f64());
    }
    println!("BENCH vm_boot_3 {:.2} s", median(boot));
    println!("BENCH vm_cluster_ready_3 {:.2} s", median(ready));
    println!("BENCH vm_boot_to_cluster_ready_3 {:.2} s", median(total));
    println!("BENCH vm_node_down_3 {:.2} s", median(down));
}

fn idle_rss_aarch64() {
    let mut c = Cluster::boot_with(1, |_, mut s| {
        s.arch = Arch::Aarch64;
        s
    });
    c.form();
    let vm: &mut Vm = &mut c.vms[0];
    std::thread::sleep(Duration::from_secs(10));
    let kib = |vm: &mut Vm, script: &str| -> f64 {
        let out = vm.ok(script);
        out.trim()
            .parse::<f64>()
            .unwrap_or_else(|e| panic!("{script}: {e}: {out:?}"))
    };
    let field = |pid: &str, file: &str, key: &str| {
        format!("awk '$1 == \"{key}\" {{ print $2 }}' /proc/$(cat {pid})/{file}")
    };
    let daemon = "/run/swarmlet-daemon.pid";
    let keeper = "/var/lib/swarmlet/containers/keeper.pid";
    let d = kib(vm, &field(daemon, "status", "VmRSS:"));
    let k = kib(vm, &field(keeper, "status", "VmRSS:"));
    let pss = kib(vm, &field(daemon, "smaps_rollup", "Pss:"))
        + kib(vm, &field(keeper, "smaps_rollup", "Pss:"));
    println!("BENCH vm_aarch64_idle_rss_daemon {:.1} MiB", d / 1024.0);
    println!("BENCH vm_aarch64_idle_rss_keeper {:.1} MiB", k / 1024.0);
    println!("BENCH vm_aarch64_idle_pss {:.1} MiB", pss / 1024.0);
}

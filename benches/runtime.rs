//! Container runtime benchmarks, with the peers measured in the same run. Prints
//! `BENCH <name> <value> <unit>` lines. Needs root, runc, skopeo and docker-registry
//! (`./bootstrap.sh deps peers`).
//!
//! - start-to-exit of a container running `true`: `swarmlet run --rm` (CLI to daemon to
//!   exit, the whole path a user waits for) against `runc run` of an equivalent bundle
//! - stop latency of a container that exits on SIGTERM
//! - pull of two images from a local registry: `swarmlet image pull` (download, verify,
//!   unpack, sync) against `skopeo copy` to an OCI layout (download, verify)
//! - memory of the daemon and the keeper (RSS each; PSS of both, since they share the
//!   binary's pages), idle and with 50 running containers

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // bench code

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use support::image::{docker_save_tar, Layer, TestImage};
use support::registry::{Options, Registry};
use support::{proc_field, Daemon};

const RUNS: usize = 20;

fn median(v: &mut [Duration]) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64()
}

fn timed(mut cmd: Command) -> Duration {
    let t = Instant::now();
    let o = cmd.output().unwrap();
    let d = t.elapsed();
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    d
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn keeper_pid(d: &Daemon) -> u32 {
    std::fs::read_to_string(d.dir.join("data/containers/keeper.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Proportional set size (shared pages split among their users: the daemon and the
/// keeper run the same binary, so plain RSS would count its pages twice).
fn pss_kib(pid: u32) -> u64 {
    proc_field(pid, "smaps_rollup", "Pss:")
}

/// A runc bundle running `true` in busybox, shaped like ours (namespaces, no tty).
fn runc_bundle(dir: &Path) {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    swarmlet::image::unpack::unpack(&Layer::busybox().tar()[..], &rootfs).unwrap();
    let o = Command::new("runc")
        .args(["spec", "--bundle"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(o.status.success());
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    spec["process"]["terminal"] = json!(false);
    spec["process"]["args"] = json!(["true"]);
    spec["root"]["path"] = json!(rootfs);
    spec["root"]["readonly"] = json!(false);
    std::fs::write(dir.join("config.json"), serde_json::to_vec(&spec).unwrap()).unwrap();
}

fn start_to_exit(d: &Daemon) {
    let mut ours = Vec::new();
    for _ in 0..RUNS {
        let mut c = Command::new(support::BIN);
        c.arg("--socket")
            .arg(d.sock())
            .args(["run", "--rm", "bb:1", "true"]);
        ours.push(timed(c));
    }
    let ours = median(&mut ours);
    println!("BENCH run_true_start_to_exit_median {ours:.4} s");
    if !have("runc") {
        println!("# runc not installed: no side-by-side start figure");
        return;
    }
    let b = d.dir.join("runc-bundle");
    runc_bundle(&b);
    let state = d.dir.join("runc-state");
    let mut theirs = Vec::new();
    for i in 0..RUNS {
        let mut c = Command::new("runc");
        c.arg("--root")
            .arg(&state)
            .args(["run", "--bundle"])
            .arg(&b)
            .arg(format!("bench{i}"));
        theirs.push(timed(c));
    }
    let theirs = median(&mut theirs);
    println!("BENCH runc_run_true_start_to_exit_median {theirs:.4} s");
    println!(
        "BENCH run_true_ratio_swarmlet_over_runc {:.2} x",
        ours / theirs
    );
}

fn stop_latency(d: &Daemon) {
    let mut v = Vec::new();
    for _ in 0..10 {
        let id = d.ok(&[
            "run",
            "-d",
            "bb:1",
            "sh",
            "-c",
            "trap 'exit 0' TERM; sleep 1000 & wait",
        ]);
        let id = id.trim();
        std::thread::sleep(Duration::from_millis(200));
        let mut c = Command::new(support::BIN);
        c.arg("--socket").arg(d.sock()).args(["stop", id]);
        v.push(timed(c));
        d.ok(&["rm", id]);
    }
    println!("BENCH stop_on_sigterm_median {:.4} s", median(&mut v));
}

/// Layers of `sizes` MiB on top of busybox: incompressible noise (the worst case for a
/// pull that inflates and unpacks what it fetches), or text made of words (about 6:1
/// under gzip, nearer what real layers hold).
fn data_image(sizes: &[usize], text: bool) -> TestImage {
    const WORDS: [&str; 16] = [
        "container",
        "node",
        "service",
        "task",
        "the",
        "of",
        "network",
        "replica",
        "update",
        "health",
        "a",
        "to",
        "manager",
        "worker",
        "overlay",
        "and",
    ];
    let mut img = TestImage::busybox(json!({"Cmd": ["/bin/sh"]}));
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for (i, mib) in sizes.iter().enumerate() {
        let want = mib << 20;
        let mut data = Vec::with_capacity(want + 64);
        while data.len() < want {
            let r = next();
            if text {
                data.extend_from_slice(WORDS[(r & 15) as usize].as_bytes());
                data.push(if r >> 60 == 0 { b'\n' } else { b' ' });
                if r >> 58 == 1 {
                    data.extend_from_slice(format!("{}", r >> 40).as_bytes());
                }
            } else {
                data.extend_from_slice(&r.to_le_bytes());
            }
        }
        data.truncate(want);
        let name = format!("data/blob{i}");
        img.layers.push(Layer::files(&[(name.as_str(), &data)]));
    }
    img
}

/// Pulls of each image by each tool (the median is printed).
const PULLS: usize = 9;

fn pull(d: &Daemon, reg: &Registry) {
    // Four 4 MiB layers (fetched again if a pull breaks off), one of 32 MiB (also
    // written to a partial file as it arrives, for resuming), and four of text.
    for (label, repo, sizes, text) in [
        ("5_layers_17MiB", "bench/big", &[4, 4, 4, 4][..], false),
        ("2_layers_33MiB_resumable", "bench/bigger", &[32][..], false),
        ("5_layers_33MiB_text", "bench/text", &[8, 8, 8, 8][..], true),
    ] {
        reg.push_image(repo, Some("1"), &data_image(sizes, text).build());
        let name = format!("{}/{repo}:1", reg.host());
        let mut ours = Vec::new();
        for _ in 0..PULLS {
            let mut c = Command::new(support::BIN);
            c.arg("--socket")
                .arg(d.sock())
                .args(["image", "pull", "-q", &name]);
            ours.push(timed(c));
            d.ok(&["image", "rm", &name]);
        }
        let ours = median(&mut ours);
        println!("BENCH pull_{label}_median {ours:.3} s");
        if !have("skopeo") {
            println!("# skopeo not installed: no side-by-side pull figure");
            continue;
        }
        let mut theirs = Vec::new();
        for i in 0..PULLS {
            let dest = d.dir.join(format!("skopeo-{label}-{i}"));
            let mut c = Command::new("skopeo");
            c.args([
                "copy",
                "--src-tls-verify=false",
                &format!("docker://{name}"),
            ])
            .arg(format!("oci:{}:1", dest.display()));
            theirs.push(timed(c));
        }
        let theirs = median(&mut theirs);
        println!("BENCH skopeo_copy_{label}_median {theirs:.3} s");
        println!(
            "BENCH pull_{label}_ratio_swarmlet_over_skopeo {:.2} x",
            ours / theirs
        );
    }
}

fn memory(d: &Daemon) {
    std::thread::sleep(Duration::from_secs(1));
    let (dp, kp) = (d.pid(), keeper_pid(d));
    println!(
        "BENCH daemon_idle_rss {:.1} MiB",
        proc_field(dp, "status", "VmRSS:") as f64 / 1024.0
    );
    println!(
        "BENCH keeper_idle_rss {:.1} MiB",
        proc_field(kp, "status", "VmRSS:") as f64 / 1024.0
    );
    let idle = pss_kib(dp) + pss_kib(kp);
    println!(
        "BENCH daemon_and_keeper_idle_pss {:.1} MiB",
        idle as f64 / 1024.0
    );
    for i in 0..50 {
        d.ok(&[
            "run",
            "-d",
            "--name",
            &format!("m{i}"),
            "--stop-signal",
            "KILL",
            "bb:1",
            "sleep",
            "1000",
        ]);
    }
    std::thread::sleep(Duration::from_secs(2));
    let _ = d.ok(&["ps"]);
    let busy = pss_kib(dp) + pss_kib(kp);
    println!(
        "BENCH daemon_and_keeper_pss_50_containers {:.1} MiB",
        busy as f64 / 1024.0
    );
    println!(
        "BENCH pss_per_container {:.1} KiB",
        busy.saturating_sub(idle) as f64 / 50.0
    );
    let names: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    let mut args = vec!["rm", "-f"];
    args.extend(names.iter().map(String::as_str));
    d.ok(&args);
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // listed by nextest or cargo test: nothing to run
    }
    if !support::is_root() || !Registry::available() {
        println!("# runtime benchmarks need root and docker-registry: skipped");
        return;
    }
    let reg = Registry::start("bench", Options::default());
    let d = Daemon::with_args(
        "bench-rt",
        "n1",
        "127.0.34.1",
        &["--insecure-registry", &reg.host()],
    );
    let tar = d.dir.join("bb.tar");
    std::fs::write(
        &tar,
        docker_save_tar(&TestImage::busybox(json!({"Cmd": ["/bin/sh"]})), &["bb:1"]),
    )
    .unwrap();
    d.ok(&["image", "load", "-q", "-i", tar.to_str().unwrap()]);
    memory(&d);
    start_to_exit(&d);
    stop_latency(&d);
    pull(&d, &reg);
}

//! Tests inside virtual machines (tests/support/qemu.rs): a kernel of their own, booted
//! with the static binary `just cross-build` makes. `SWARMLET_QEMU_ARCH` picks the guest
//! (x86_64 by default on this host); `just qemu-test [ARCH]` runs only these.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::image::{docker_save_tar, Layer, TestImage};
use support::qemu::{busybox_for, Arch, Cluster, Vm, VmSpec};

/// A busybox image for the guest's architecture.
fn guest_image(arch: Arch, config: serde_json::Value) -> TestImage {
    TestImage {
        layers: vec![Layer::busybox_from(&busybox_for(arch))],
        config,
        arch: arch.oci(),
        variant: None,
    }
}

fn inspect(vm: &mut Vm, name: &str) -> serde_json::Value {
    let out = vm.ok(&format!("swarmlet inspect {name}"));
    serde_json::from_str::<serde_json::Value>(&out).unwrap_or_else(|e| panic!("{e}: {out}"))[0]
        .clone()
}

/// Raspberry Pi OS mounts only the unified cgroup hierarchy; this host is a v1+v2 hybrid,
/// so v2 limits are checked here: each limit lands in the container's v2 cgroup files
/// and the kernel enforces it.
#[test]
#[ignore = "needs root and QEMU"]
fn containers_on_cgroup_v2() {
    let mut spec = VmSpec::new("cg2");
    // `run`'s containers are on the node's local bridge by default: its modules.
    spec.modules.extend_from_slice(support::qemu::NODE_MODULES);
    let img = guest_image(spec.arch, json!({"Cmd": ["/bin/sh"], "WorkingDir": "/tmp"}));
    let spec = spec.file("/srv/bb.tar", docker_save_tar(&img, &["bb:1"]), 0o644);
    let arch = spec.arch;
    let mut vm = Vm::boot(spec);
    assert_eq!(vm.ok("uname -m"), format!("{}\n", arch.name()));
    assert_eq!(
        vm.ok("awk '$2 == \"/sys/fs/cgroup\" { print $3 }' /proc/mounts"),
        "cgroup2\n",
        "the unified hierarchy alone"
    );
    vm.start_daemon();
    vm.ok("swarmlet image load -q -i /srv/bb.tar");
    assert_eq!(vm.ok("swarmlet run --rm bb:1 echo hello"), "hello\n");
    // On the local bridge, with its address (eth0) and default route through it.
    let routes = vm.ok("swarmlet run --rm bb:1 busybox ip route");
    assert!(
        routes.contains("default via 172.18.0.1 dev eth0"),
        "{routes}"
    );

    // Limits, as the kernel holds them for the running container.
    let id = vm.ok(
        "swarmlet run -d --name limited --memory 32m --cpus 0.5 --pids-limit 20 bb:1 sleep 1000",
    );
    let id = id.trim().to_string();
    let pid = inspect(&mut vm, "limited")["State"]["Pid"]
        .as_i64()
        .unwrap();
    let group = vm.ok(&format!("cat /proc/{pid}/cgroup"));
    let path = group
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_else(|| panic!("no v2 cgroup line: {group}"))
        .to_string();
    assert!(path.contains(&id), "the container's own cgroup: {path}");
    let files = vm.ok(&format!(
        "cd /sys/fs/cgroup{path} && cat memory.max cpu.max pids.max"
    ));
    assert_eq!(files, "33554432\n50000 100000\n20\n", "{path}");
    vm.ok("swarmlet rm -f limited");
    assert_eq!(
        vm.exec(
            &format!("test -e /sys/fs/cgroup{path}"),
            Duration::from_secs(30)
        )
        .0,
        1,
        "the cgroup goes with the container"
    );

    // A memory hog is OOM-killed and reported as such.
    vm.ok(
        "swarmlet run -d --name hog --memory 16m bb:1 dd if=/dev/zero of=/dev/null bs=64M count=1",
    );
    vm.ok(
        "for i in $(seq 300); do swarmlet ps -a | grep hog | grep -q Exited && exit 0; sleep 0.1; done
         swarmlet ps -a; exit 1",
    );
    let state = inspect(&mut vm, "hog")["State"].clone();
    assert_eq!(state["OOMKilled"], json!(true), "{state}");
    assert_eq!(state["ExitCode"], json!(137), "{state}");
    vm.ok("swarmlet rm hog");

    // A fork bomb stops at the pids limit.
    let out = vm.ok("swarmlet run --rm --pids-limit 10 bb:1 sh -c \
         '(for i in $(seq 40); do sleep 3 & done) 2>/dev/null; c=0; \
          for p in /proc/[0-9]*; do c=$((c+1)); done; echo $c'");
    let procs: u32 = out.lines().last().unwrap().trim().parse().unwrap();
    assert!(procs <= 10, "{procs} processes under a limit of 10: {out}");

    // This kernel has /proc/kcore: masked, it reads empty.
    assert_eq!(vm.ok("test -e /proc/kcore && echo present"), "present\n");
    assert_eq!(
        vm.ok("swarmlet run --rm bb:1 sh -c 'wc -c < /proc/kcore'")
            .trim(),
        "0"
    );
    // Nothing left behind under the daemon's cgroup.
    vm.ok("swarmlet ps -a | grep -q Up && exit 1 || true");
    let left = vm.ok("find /sys/fs/cgroup -path '*swarmlet*' -type d");
    assert_eq!(left, "/sys/fs/cgroup/swarmlet\n", "cgroups left");
}

/// The appliance issue's first scenario: three VMs on one bridge (inside a namespace the
/// test made, no uplink), `init` on one, `join` with the printed token on the others,
/// three Ready nodes; then one VM dies and the survivors mark it Down.
#[test]
#[ignore = "needs root and QEMU"]
fn three_vms_form_a_cluster_and_notice_a_dead_one() {
    let mut c = Cluster::boot(3);
    // What the networking issues will drive is in the guests' kernel: IPVS answers,
    // and the VXLAN, bridge and nftables modules are in.
    c.vms[0].ok("test -e /proc/net/ip_vs
         for m in vxlan bridge veth nf_tables overlay; do test -d /sys/module/$m || exit 1; done");
    c.form();
    let ls = c.vms[1].ok("swarmlet node ls");
    assert_eq!(ls.matches(" Ready ").count(), 3, "{ls}");
    assert_eq!(ls.matches("Leader").count(), 1, "{ls}");
    c.kill(2);
    let t = Instant::now();
    let down = "swarmlet node ls | grep node2 | grep -q ' Down '";
    c.vms[0].wait_for(down, Duration::from_secs(60));
    eprintln!("node2 Down after {:?} (under emulation)", t.elapsed());
    c.vms[1].wait_for(down, Duration::from_secs(10));
    let ls = c.vms[0].ok("swarmlet node ls");
    assert_eq!(ls.matches(" Ready ").count(), 2, "{ls}");
}

/// A node whose link is cut is marked Down by the others, and Ready again once the link
/// is back, with no restart.
#[test]
#[ignore = "needs root and QEMU"]
fn a_cut_link_marks_a_node_down_until_it_is_restored() {
    let mut c = Cluster::boot(3);
    c.form();
    c.cut(2);
    c.vms[0].wait_for(
        "swarmlet node ls | grep node2 | grep -q ' Down '",
        Duration::from_secs(60),
    );
    c.restore(2);
    c.vms[0].wait_for(
        "[ \"$(swarmlet node ls | grep -c ' Ready ')\" = 3 ]",
        Duration::from_secs(60),
    );
    c.vms[2].wait_for(
        "[ \"$(swarmlet node ls | grep -c ' Ready ')\" = 3 ]",
        Duration::from_secs(60),
    );
}

/// `service ps --format json` rows of `svc`, as seen from `vm` (a manager).
fn tasks(vm: &mut Vm, svc: &str) -> Vec<serde_json::Value> {
    vm.ok(&format!("swarmlet service ps --format json {svc}"))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Nodes of the tasks desired running and reported running, sorted.
fn running_on(tasks: &[serde_json::Value]) -> Vec<String> {
    let mut v: Vec<String> = tasks
        .iter()
        .filter(|t| t["DesiredState"] == "Running")
        .filter(|t| {
            t["CurrentState"]
                .as_str()
                .is_some_and(|s| s.starts_with("Running"))
        })
        .map(|t| t["Node"].as_str().unwrap_or_default().to_string())
        .collect();
    v.sort();
    v
}

/// Issue 11's scenario on real kernels: three VMs (three managers), a 3-replica service
/// from an image loaded on each node (no registry), one task per node; then a web
/// server per node on an overlay network, published through the routing mesh, reached
/// through every node's port and from a task by name; then one VM's plug pulled, and
/// its replica runs again on a survivor while `service ls` says 3/3.
#[test]
#[ignore = "needs root and QEMU"]
fn a_dead_vms_replica_runs_again_on_the_survivors() {
    let arch = Arch::from_env();
    let img = guest_image(arch, json!({"Cmd": ["/bin/sh"]}));
    let tar = docker_save_tar(&img, &["bb:1"]);
    let mut c = Cluster::boot_with(3, |_, spec| spec.file("/srv/bb.tar", tar.clone(), 0o644));
    c.form();
    for vm in &mut c.vms {
        vm.ok("swarmlet image load -q -i /srv/bb.tar");
    }

    let t = Instant::now();
    let (code, out) = c.vms[0].exec(
        "swarmlet service create --name web --replicas 3 bb:1 sleep 100000",
        Duration::from_secs(180),
    );
    assert_eq!(code, 0, "service create exited {code}: {out}");
    assert!(out.contains("verify: Service converged"), "{out}");
    eprintln!("3/3 after {:?} (under emulation)", t.elapsed());
    let all = tasks(&mut c.vms[0], "web");
    assert_eq!(
        running_on(&all),
        ["node0", "node1", "node2"],
        "one task per node: {all:#?}"
    );
    // Each node runs the container itself, not only in the managers' books.
    for vm in &mut c.vms {
        let ps = vm.ok("swarmlet ps");
        assert_eq!(ps.matches(" Up ").count(), 1, "{}: {ps}", vm.name);
        assert!(ps.contains("web."), "{}: {ps}", vm.name);
    }

    // Networking on real kernels: an overlay network, one web server per node on it
    // published on 8080. Every node's port answers from the tasks of all three; a task
    // reaches the others by service name (the VIP) and knows them by `tasks.` name.
    c.vms[0].ok("swarmlet network create -d overlay front");
    let (code, out) = c.vms[0].exec(
        "swarmlet service create --name www --mode global --network front -p 8080:80 \
         --hostname 'www-{{.Node.Hostname}}' bb:1 \
         sh -c 'mkdir -p /www && hostname > /www/index.html && exec busybox httpd -f -p 80 -h /www'",
        Duration::from_secs(180),
    );
    assert_eq!(code, 0, "service create exited {code}: {out}");
    let all_www: std::collections::BTreeSet<String> = ["www-node0", "www-node1", "www-node2"]
        .map(String::from)
        .into();
    for i in 0..3 {
        let url = format!("http://{}:8080/", support::qemu::node_addr((i + 1) % 3));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got: std::collections::BTreeSet<String> = (0..6)
                .map(|_| {
                    c.vms[i]
                        .exec(
                            &format!("timeout 5 wget -q -O - {url}"),
                            Duration::from_secs(20),
                        )
                        .1
                })
                .map(|s| s.trim().to_string())
                .collect();
            if got == all_www {
                break;
            }
            assert!(Instant::now() < deadline, "node{i} asking {url}: {got:?}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let ps = c.vms[0].ok("swarmlet ps");
    let www0 = ps
        .lines()
        .find(|l| l.contains(" www.") && l.contains(" Up "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no www on node0: {ps}"))
        .to_string();
    let got: std::collections::BTreeSet<String> = (0..6)
        .map(|_| {
            c.vms[0].ok(&format!(
                "swarmlet exec {www0} busybox wget -q -O - http://www/"
            ))
        })
        .map(|s| s.trim().to_string())
        .collect();
    assert_eq!(got, all_www, "www by name from a task on node0");
    // The guests' kernel has IPVS: the VIP is its service (a mark service, round robin,
    // NAT to each of the three tasks), seen from inside the task's namespace.
    let table = c.vms[0].ok(&format!("swarmlet exec {www0} cat /proc/net/ip_vs"));
    assert!(table.contains("FWM") && table.contains(" rr"), "{table}");
    assert_eq!(table.matches("Masq").count(), 3, "{table}");
    let console = c.vms[0].console();
    assert!(
        console.contains("service VIPs: balanced by IPVS"),
        "the daemon says which balancer it uses"
    );
    let ns = c.vms[0].ok(&format!("swarmlet exec {www0} busybox nslookup tasks.www"));
    assert_eq!(ns.matches("Address: 10.").count(), 3, "{ns}");

    // An encrypted network on real kernels: frames between nodes sealed by each node's
    // data path (a TAP device on the network's bridge), a task on node0 answered through
    // the VIP by the tasks of all three nodes.
    c.vms[0].ok("swarmlet network create -d overlay --opt encrypted sec");
    let (code, out) = c.vms[0].exec(
        "swarmlet service create --name sw --mode global --network sec \
         --hostname 'sw-{{.Node.Hostname}}' bb:1 \
         sh -c 'mkdir -p /www && hostname > /www/index.html && exec busybox httpd -f -p 80 -h /www'",
        Duration::from_secs(180),
    );
    assert_eq!(code, 0, "service create exited {code}: {out}");
    let ps = c.vms[0].ok("swarmlet ps");
    let sw0 = ps
        .lines()
        .find(|l| l.contains(" sw.") && l.contains(" Up "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no sw on node0: {ps}"))
        .to_string();
    let all_sw: std::collections::BTreeSet<String> = ["sw-node0", "sw-node1", "sw-node2"]
        .map(String::from)
        .into();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got: std::collections::BTreeSet<String> = (0..6)
            .map(|_| {
                c.vms[0]
                    .exec(
                        &format!(
                            "swarmlet exec {sw0} busybox timeout 5 busybox wget -q -O - http://sw/"
                        ),
                        Duration::from_secs(20),
                    )
                    .1
            })
            .map(|s| s.trim().to_string())
            .collect();
        if got == all_sw {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sw by name over the sealed overlay: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // A non-leader goes, so two of the three managers (a quorum) stay to reschedule.
    let ls = c.vms[0].ok("swarmlet node ls");
    let leader = ls
        .lines()
        .find(|l| l.contains("Leader"))
        .unwrap_or_else(|| panic!("no leader: {ls}"));
    let dead = (0..3)
        .rev()
        .find(|&i| !leader.contains(&format!(" node{i} ")))
        .unwrap();
    let dead_name = format!("node{dead}");
    let survivor = (dead + 1) % 3;
    c.kill(dead);
    let t = Instant::now();
    let deadline = t + Duration::from_secs(120);
    let all = loop {
        let all = tasks(&mut c.vms[survivor], "web");
        let on = running_on(&all);
        if on.len() == 3 && !on.contains(&dead_name) {
            break all;
        }
        assert!(
            Instant::now() < deadline,
            "{dead_name}'s replica not running on a survivor after 120 s: {all:#?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!(
        "3 replicas on the survivors {:?} after the kill (under emulation)",
        t.elapsed()
    );
    let on = running_on(&all);
    // Both survivors hold a replica, and their own engines run the containers.
    let mut up = 0;
    for (_, vm) in c.vms.iter_mut().enumerate().filter(|(i, _)| *i != dead) {
        assert!(on.contains(&vm.name), "{} runs none of {on:?}", vm.name);
        let ps = vm.ok("swarmlet ps");
        up += ps
            .lines()
            .filter(|l| l.contains("web.") && l.contains(" Up "))
            .count();
    }
    assert_eq!(up, 3, "containers running on the survivors");
    // In the table, the dead node's task is its slot's history, under its replacement.
    let table = c.vms[survivor].ok("swarmlet service ps web");
    let row = table
        .lines()
        .find(|l| l.split_whitespace().any(|w| w == dead_name))
        .unwrap_or_else(|| panic!("no row for {dead_name}: {table}"));
    assert!(row.contains(" \\_ web."), "{table}");
    assert!(
        row.contains(&format!("node {dead_name} is down")),
        "{table}"
    );
    // The dead node's task is not reported running: shut down, its state unknown.
    for t in all.iter().filter(|t| t["Node"] == dead_name.as_str()) {
        assert_eq!(t["DesiredState"], "Shutdown", "{t}");
        let state = t["CurrentState"].as_str().unwrap();
        assert!(!state.starts_with("Running"), "{t}");
    }
    let ls = c.vms[survivor].ok("swarmlet service ls");
    let row = ls
        .lines()
        .find(|l| l.contains(" web "))
        .unwrap_or_else(|| panic!("{ls}"));
    assert!(row.contains(" 3/3 "), "{ls}");
}

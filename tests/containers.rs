//! Standalone containers through the CLI and the daemon, on the real kernel: what a
//! container sees (args, env, user, hostname, working dir, mounts), limits (memory, pids),
//! confinement (mount refused, /proc/kcore masked, no CAP_SYS_ADMIN) and `--privileged`,
//! and a daemon killed with -9 while containers run. Needs root.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // test code

mod support;

use std::time::Duration;

use serde_json::json;
use support::image::{docker_save_tar, TestImage};
use support::Daemon;

/// A daemon with the busybox test image loaded as `bb:1`.
fn daemon(tag: &str, ip: &str) -> Daemon {
    with_image(Daemon::new(tag, "n1", ip))
}

/// Loads the busybox test image into `d` as `bb:1`.
fn with_image(d: Daemon) -> Daemon {
    let img = TestImage::busybox(
        json!({"Cmd": ["/bin/sh"], "Env": ["FROM_IMAGE=yes"], "WorkingDir": "/tmp"}),
    );
    let tar = d.dir.join("bb.tar");
    std::fs::write(&tar, docker_save_tar(&img, &["bb:1"])).unwrap();
    d.ok(&["image", "load", "-q", "-i", tar.to_str().unwrap()]);
    d
}

/// `swarmlet run --rm` attached: (exit code, stdout, stderr).
fn run(d: &Daemon, args: &[&str]) -> (i32, String, String) {
    let mut full = vec!["run", "--rm"];
    full.extend_from_slice(args);
    let o = d.cli(&full);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
#[ignore = "needs root"]
fn what_a_container_sees() {
    let d = daemon("ctr-see", "127.0.33.1");
    let (code, out, err) = run(
        &d,
        &["-e", "A=from-cli", "--hostname", "box1", "bb:1", "sh", "-c",
          "echo args:$0:$1; echo env:$A:$FROM_IMAGE; hostname; pwd; id -u; echo to-err >&2; exit 5", "x", "y"],
    );
    assert_eq!(code, 5, "{out}{err}");
    assert!(out.contains("args:x:y"), "{out}");
    assert!(out.contains("env:from-cli:yes"), "{out}");
    assert!(
        out.contains("box1\n/tmp\n0\n"),
        "hostname, image WorkingDir, root: {out}"
    );
    assert_eq!(err.trim(), "to-err");

    // User by name from the image's /etc/passwd (with its extra group), working dir flag.
    let (code, out, _) = run(
        &d,
        &[
            "-u",
            "app",
            "-w",
            "/",
            "bb:1",
            "sh",
            "-c",
            "id -u; id -G; pwd",
        ],
    );
    assert_eq!(code, 0);
    assert_eq!(out, "1000\n1000 2000\n/\n");

    // A bind mount (read-only), a tmpfs, a named volume that outlives its container.
    let host = d.dir.join("shared");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("hello"), "from the host\n").unwrap();
    let bind = format!("{}:/data:ro", host.display());
    let (code, out, err) = run(
        &d,
        &["-v", &bind, "--tmpfs", "/scratch", "-v", "keep:/keep", "bb:1", "sh", "-c",
          "cat /data/hello; touch /data/x 2>/dev/null || echo ro; grep -c ' /scratch tmpfs' /proc/mounts; echo kept > /keep/f"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "from the host\nro\n1\n");
    let (_, out, _) = run(&d, &["-v", "keep:/keep", "bb:1", "cat", "/keep/f"]);
    assert_eq!(out, "kept\n");
    // The same with --mount, as Docker spells it; `rm -v` leaves named volumes.
    let mount = format!("type=bind,source={},target=/data,readonly", host.display());
    let id = d.ok(&[
        "run", "-d", "--mount", &mount, "--mount", "type=volume,source=keep,target=/keep",
        "--mount", "type=tmpfs,target=/scratch", "bb:1", "sh", "-c",
        "cat /data/hello /keep/f; touch /data/x 2>/dev/null || echo ro; grep -c ' /scratch tmpfs' /proc/mounts",
    ]);
    support::wait_until(10, "the --mount container exits", || {
        d.ok(&["ps", "-q", "-f", "exited=0"])
            .contains(&id.trim()[..12])
    });
    assert_eq!(d.ok(&["logs", id.trim()]), "from the host\nkept\nro\n1\n");
    d.ok(&["rm", "-v", id.trim()]);
    let (_, out, _) = run(&d, &["-v", "keep:/keep", "bb:1", "cat", "/keep/f"]);
    assert_eq!(out, "kept\n", "a named volume outlives rm -v");
    let (code, _, err) = run(&d, &["--mount", "type=bind,target=/x", "bb:1", "true"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--mount"), "{err}");

    // No network named, on a daemon with no bridge: only loopback; host: the host's
    // interfaces.
    let (_, out, _) = run(&d, &["bb:1", "sh", "-c", "ls /sys/class/net"]);
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["lo"]);
    let (_, out, _) = run(
        &d,
        &[
            "--network",
            "host",
            "bb:1",
            "sh",
            "-c",
            "ls /sys/class/net | wc -l",
        ],
    );
    assert!(out.trim().parse::<u32>().unwrap() >= 1);

    // Bad input is refused before anything is created.
    for (args, needle) in [
        (vec!["--memory", "lots", "bb:1"], "--memory"),
        (vec!["--cpus", "-1", "bb:1"], "--cpus"),
        (vec!["-v", "relative/path:/x", "bb:1"], "-v"),
        (vec!["--cap-add", "FLYING", "bb:1"], "FLYING"),
        (vec!["--network", "no/such", "bb:1"], "--network"),
        (vec!["Bad/Ref"], "invalid reference"),
    ] {
        let (code, _, err) = run(&d, &args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // This daemon runs with --bridge none (it is on the host's own network).
    let (code, _, err) = run(&d, &["--network", "bridge", "bb:1"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--bridge none"), "{err}");
    // An overlay network needs a swarm.
    let (code, _, err) = run(&d, &["--network", "elsewhere", "bb:1", "true"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("in no swarm"), "{err}");
    let (code, _, err) = run(&d, &["no-such-image:1"]);
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = run(&d, &["-v", "/does/not/exist:/x", "bb:1", "true"]);
    assert_eq!(code, 1);
    assert!(err.contains("/does/not/exist"), "{err}");
    assert_eq!(
        d.ok(&["ps", "-a", "-q"]).trim(),
        "",
        "nothing half-created is left"
    );
}

#[test]
#[ignore = "needs root"]
fn limits_and_confinement() {
    let d = daemon("ctr-lim", "127.0.33.2");
    // A memory hog is OOM-killed and reported as such.
    let id = d.ok(&[
        "run",
        "-d",
        "--memory",
        "16m",
        "bb:1",
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=64M",
        "count=1",
    ]);
    let id = id.trim();
    support::wait_until(20, "the hog exits", || {
        d.ok(&["ps", "-a"])
            .lines()
            .any(|l| l.starts_with(&id[..12]) && l.contains("Exited"))
    });
    let inspect: serde_json::Value = serde_json::from_str(&d.ok(&["inspect", id])).unwrap();
    assert_eq!(inspect[0]["State"]["OOMKilled"], json!(true), "{inspect}");
    assert_eq!(inspect[0]["State"]["ExitCode"], json!(137));
    d.ok(&["rm", id]);

    // A fork bomb stops at the pids limit.
    let (code, out, err) = run(
        &d,
        &["--pids-limit", "10", "bb:1", "sh", "-c",
          // Counting with builtins only: at the limit, a pipeline could not fork.
          // (busybox sh gives up at its first failed fork: fork in a subshell.)
          "(for i in $(seq 40); do sleep 3 & done) 2>/dev/null; c=0; for p in /proc/[0-9]*; do c=$((c+1)); done; echo $c"],
    );
    assert_eq!(code, 0, "out: {out} err: {err}");
    let procs: u32 = out.lines().last().unwrap().trim().parse().unwrap();
    assert!(procs <= 10, "{procs} processes under a limit of 10: {out}");

    // Confinement: no mount, masked /proc files, no CAP_SYS_ADMIN (bit 21). This
    // kernel has no /proc/kcore; /proc/timer_list is masked the same way (and when
    // kcore exists, it must read empty too).
    let probe = "mount -t tmpfs none /tmp 2>/dev/null && echo mounted || echo refused; \
                 wc -c < /proc/timer_list; grep CapEff /proc/self/status; \
                 if [ -e /proc/kcore ]; then wc -c < /proc/kcore; else echo 0; fi; \
                 grep '^Seccomp:' /proc/self/status; \
                 unshare -n true 2>/dev/null && echo unshared || echo no-unshare";
    let (_, out, err) = run(&d, &["bb:1", "sh", "-c", probe]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "refused", "{out}");
    assert_eq!(
        lines[1].trim(),
        "0",
        "/proc/timer_list is masked: {out} {err}"
    );
    assert_eq!(lines[3].trim(), "0", "/proc/kcore is masked: {out} {err}");
    // The seccomp filter is on (mode 2) and refuses new namespaces.
    assert_eq!(lines[4].split_whitespace().nth(1), Some("2"), "{out}");
    assert_eq!(lines[5], "no-unshare", "{out}");
    let caps = u64::from_str_radix(lines[2].split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert_eq!(caps & (1 << 21), 0, "no CAP_SYS_ADMIN: {out}");
    assert_ne!(
        caps & (1 << 0),
        0,
        "CAP_CHOWN is in Docker's default set: {out}"
    );
    // --privileged changes all three.
    let (code, out, err) = run(&d, &["--privileged", "bb:1", "sh", "-c", probe]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(code, 0, "{out} {err}");
    assert_eq!(lines[0], "mounted", "{out}");
    assert_ne!(lines[1].trim(), "0", "{out}");
    let caps = u64::from_str_radix(lines[2].split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert_ne!(caps & (1 << 21), 0, "{out}");
    assert_eq!(
        lines[4].split_whitespace().nth(1),
        Some("0"),
        "no filter: {out}"
    );
    assert_eq!(lines[5], "unshared", "{out}");
    // --cap-add gives one capability back.
    let (_, out, _) = run(
        &d,
        &[
            "--cap-add",
            "SYS_ADMIN",
            "bb:1",
            "sh",
            "-c",
            "grep CapEff /proc/self/status",
        ],
    );
    let caps = u64::from_str_radix(out.split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert_ne!(caps & (1 << 21), 0, "{out}");
}

#[test]
#[ignore = "needs root"]
fn containers_outlive_a_killed_daemon() {
    let mut d = daemon("ctr-kill", "127.0.33.3");
    let chatty = d.ok(&[
        "run",
        "-d",
        "--name",
        "chatty",
        "bb:1",
        "sh",
        "-c",
        "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.1; done",
    ]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "quiet",
        "--stop-signal",
        "KILL",
        "bb:1",
        "sleep",
        "1000",
    ]);
    let chatty = chatty.trim().to_string();
    std::thread::sleep(Duration::from_millis(500));
    d.kill9();
    // Down for two seconds: the chatty one keeps printing into its pipe.
    std::thread::sleep(Duration::from_secs(2));
    d.start();
    let ps = d.ok(&["ps"]);
    assert!(ps.contains("chatty") && ps.contains("quiet"), "{ps}");
    let logs = d.ok(&["logs", "chatty"]);
    let n: Vec<u32> = logs
        .lines()
        .filter_map(|l| l.strip_prefix("line ")?.parse().ok())
        .collect();
    assert!(
        n.len() >= 20,
        "lines from while the daemon was down are kept: {}",
        n.len()
    );
    assert!(n.windows(2).all(|w| w[1] == w[0] + 1), "none lost: {n:?}");
    // exec into a running container: its namespaces, its user unless told, exit codes.
    let o = d.cli(&[
        "exec",
        "quiet",
        "sh",
        "-c",
        "echo in $(hostname); id -u; exit 4",
    ]);
    assert_eq!(o.status.code(), Some(4));
    let text = String::from_utf8_lossy(&o.stdout);
    let hostname = d.ok(&["inspect", "quiet"]);
    let v: serde_json::Value = serde_json::from_str(&hostname).unwrap();
    let short = &v[0]["Id"].as_str().unwrap()[..12];
    assert_eq!(text, format!("in {short}\n0\n"));
    assert_eq!(
        d.ok(&[
            "exec",
            "-u",
            "app",
            "-e",
            "X=1",
            "quiet",
            "sh",
            "-c",
            "id -u; echo $X"
        ]),
        "1000\n1\n"
    );
    let o = d.cli(&["exec", "quiet", "/no/such/binary"]);
    assert_eq!(
        o.status.code(),
        Some(126),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = d.cli(&["exec", "nonexistent", "true"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("No such container"));
    // Still managed: stop (the quiet one's stop signal is KILL; chatty, a shell as pid
    // 1, ignores TERM and is killed after the 1 s grace), exit codes, logs to the end.
    d.ok(&["stop", "quiet"]);
    d.ok(&["stop", "-t", "1", &chatty]);
    assert!(d.ok(&["ps", "-q"]).trim().is_empty());
    let inspect: serde_json::Value =
        serde_json::from_str(&d.ok(&["inspect", "quiet", &chatty])).unwrap();
    assert_eq!(inspect[0]["State"]["ExitCode"], json!(137));
    assert_eq!(inspect[1]["State"]["ExitCode"], json!(137));
    assert_eq!(inspect[1]["State"]["Status"], json!("exited"));
    let after = d.ok(&["logs", "--tail", "1", "chatty"]);
    let last: u32 = after.trim().strip_prefix("line ").unwrap().parse().unwrap();
    assert!(last >= *n.last().unwrap());
    let o = d.cli(&["kill", "chatty"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "killing an exited container is refused"
    );
    d.ok(&["rm", "-f", "quiet", "chatty"]);
    assert_eq!(d.ok(&["ps", "-a", "-q"]).trim(), "");
}

#[test]
#[ignore = "needs root"]
fn a_health_check_flips_to_unhealthy_when_its_command_fails() {
    let d = daemon("ctr-health", "127.0.33.4");
    let id = d.ok(&[
        "run",
        "-d",
        "--name",
        "probed",
        "--health-cmd",
        "test -e /tmp/ok",
        "--health-interval",
        "200ms",
        "--health-retries",
        "2",
        "--stop-signal",
        "KILL",
        "bb:1",
        "sh",
        "-c",
        "touch /tmp/ok; exec sleep 1000",
    ]);
    let row = |d: &Daemon| {
        d.ok(&["ps"])
            .lines()
            .find(|l| l.contains("probed"))
            .unwrap_or("")
            .to_string()
    };
    support::wait_until(20, "healthy", || row(&d).contains("(healthy)"));
    d.ok(&["exec", "probed", "rm", "/tmp/ok"]);
    support::wait_until(20, "unhealthy", || row(&d).contains("(unhealthy)"));
    let v: serde_json::Value = serde_json::from_str(&d.ok(&["inspect", id.trim()])).unwrap();
    let h = &v[0]["State"]["Health"];
    assert_eq!(h["Status"], json!("unhealthy"));
    assert!(h["FailingStreak"].as_u64().unwrap() >= 2, "{h}");
    assert_eq!(
        h["Log"].as_array().unwrap().last().unwrap()["ExitCode"],
        json!(1)
    );
    // And back.
    d.ok(&["exec", "probed", "touch", "/tmp/ok"]);
    support::wait_until(20, "healthy again", || row(&d).contains("(healthy)"));
    let o = d.cli(&["run", "--health-interval", "5", "bb:1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--health-interval"));
    d.ok(&["rm", "-f", "probed"]);
}

#[test]
#[ignore = "needs root"]
fn logs_rotate_at_the_cap() {
    let d = daemon("ctr-logs", "127.0.33.5");
    let id = d.ok(&[
        "run",
        "-d",
        "--log-opt",
        "max-size=4k",
        "--log-opt",
        "max-file=3",
        "bb:1",
        "sh",
        "-c",
        "for i in $(seq 2000); do echo line $i; done",
    ]);
    let id = id.trim();
    support::wait_until(20, "the writer exits", || {
        d.ok(&["ps", "-q"]).trim().is_empty()
    });
    let dir = d.dir.join("data/containers").join(id);
    let mut total = 0;
    for f in ["log", "log.1", "log.2"] {
        let len = std::fs::metadata(dir.join(f)).unwrap().len();
        assert!(len <= 4096, "{f}: {len} bytes");
        total += len;
    }
    assert!(!dir.join("log.3").exists(), "at most 3 files");
    assert!(total > 8192, "the files are used: {total}");
    // What is kept is the newest, in order, ending with the last line.
    let logs = d.ok(&["logs", id]);
    let n: Vec<u32> = logs
        .lines()
        .filter_map(|l| l.strip_prefix("line ")?.parse().ok())
        .collect();
    assert_eq!(*n.last().unwrap(), 2000);
    assert!(n.windows(2).all(|w| w[1] == w[0] + 1));
    let tail = d.ok(&["logs", "--tail", "2", "--timestamps", id]);
    let lines: Vec<&str> = tail.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(
        lines[1].ends_with(" line 2000") && lines[1].starts_with("20"),
        "{tail}"
    );
    // --since: from the last line's own time on, only lines that late; a day back, all
    // that is kept; a bad time is a usage error.
    let last = lines[1].split_whitespace().next().unwrap();
    let late = d.ok(&["logs", "--since", last, id]);
    assert!(
        late.ends_with("line 2000\n") && late.lines().count() < n.len(),
        "{late}"
    );
    assert_eq!(d.ok(&["logs", "--since", "24h", id]), logs);
    assert_eq!(d.ok(&["logs", "--since", "2999-01-01", id]), "");
    let o = d.cli(&["logs", "--since", "soon", id]);
    assert_eq!(o.status.code(), Some(2));
    let o = d.cli(&["run", "--log-opt", "max-size=lots", "bb:1"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
#[ignore = "needs root"]
fn restart_policies() {
    let mut d = daemon("ctr-restart", "127.0.33.6");
    fn inspect(d: &Daemon, name: &str) -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(&d.ok(&["inspect", name])).unwrap()[0].clone()
    }
    // on-failure:2: two restarts after failures, then it stays down.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "flaky",
        "--restart",
        "on-failure:2",
        "bb:1",
        "sh",
        "-c",
        "echo run; exit 3",
    ]);
    support::wait_until(20, "two restarts", || {
        inspect(&d, "flaky")["RestartCount"] == json!(2)
    });
    std::thread::sleep(Duration::from_millis(1500));
    let v = inspect(&d, "flaky");
    assert_eq!(v["RestartCount"], json!(2), "no third restart");
    assert_eq!(v["State"]["ExitCode"], json!(3));
    assert_eq!(
        d.ok(&["logs", "flaky"]),
        "run\nrun\nrun\n",
        "one log across the runs"
    );
    // on-failure does not restart a success.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "fine",
        "--restart",
        "on-failure",
        "bb:1",
        "true",
    ]);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(inspect(&d, "fine")["RestartCount"], json!(0));
    // always: restarted after a clean exit too; `stop` holds it down.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "eternal",
        "--restart",
        "always",
        "--stop-signal",
        "KILL",
        "bb:1",
        "sh",
        "-c",
        "sleep 0.2",
    ]);
    support::wait_until(20, "restarted", || {
        inspect(&d, "eternal")["RestartCount"].as_u64().unwrap() >= 2
    });
    d.ok(&["stop", "eternal"]);
    let n = inspect(&d, "eternal")["RestartCount"].clone();
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        inspect(&d, "eternal")["RestartCount"],
        n,
        "a stopped container stays stopped"
    );
    assert_eq!(inspect(&d, "eternal")["State"]["Status"], json!("exited"));
    // A power cut, as far as one can be played: daemon, keeper and container killed,
    // the root filesystem unmounted. The next daemon mounts it again and restarts the
    // `always` container; the exit it could not observe is reported as unknown.
    let id = d.ok(&[
        "run",
        "-d",
        "--name",
        "survivor",
        "--restart",
        "always",
        "bb:1",
        "sleep",
        "1000",
    ]);
    let id = id.trim().to_string();
    let v = inspect(&d, "survivor");
    let pid = v["State"]["Pid"].as_i64().unwrap();
    d.kill9();
    let data = d.dir.join("data");
    let keeper = std::fs::read_to_string(data.join("containers/keeper.pid")).unwrap();
    for p in [keeper.trim().to_string(), pid.to_string()] {
        let _ = std::process::Command::new("kill").args(["-9", &p]).status();
    }
    std::thread::sleep(Duration::from_millis(300));
    let rootfs = data.join("containers").join(&id).join("bundle/rootfs");
    let _ = std::process::Command::new("umount")
        .arg("-l")
        .arg(&rootfs)
        .status();
    d.start();
    support::wait_until(20, "running again", || {
        d.ok(&["ps"])
            .lines()
            .any(|l| l.contains("survivor") && l.contains("Up"))
    });
    let v = inspect(&d, "survivor");
    assert_eq!(v["RestartCount"], json!(1));
    assert_eq!(d.ok(&["exec", "survivor", "echo", "alive"]), "alive\n");
    d.ok(&["rm", "-f", "survivor"]);

    let o = d.cli(&["run", "--restart", "sometimes", "bb:1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--restart"));
    d.ok(&["rm", "-f", "flaky", "fine", "eternal"]);
}

/// Writes `bytes` as `path` the way an upgrade does (a new file renamed over the old
/// one): processes started from the old file keep running it, deleted on disk.
fn replace_file(path: &std::path::Path, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
#[ignore = "needs root"]
fn a_replaced_binary_keeps_the_daemon_working_and_a_restart_takes_the_new_one() {
    let dir = std::env::temp_dir().join(format!("swarmlet-upgrade-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    struct Gone(std::path::PathBuf);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _gone = Gone(dir.clone());
    let bin = dir.join("swarmlet");
    let real = std::fs::read(support::BIN).unwrap();
    replace_file(&bin, &real);
    let mut d = with_image(Daemon::from_binary("ctr-upgrade", "n1", "127.0.33.9", &bin));
    d.ok(&["run", "-d", "--name", "before", "bb:1", "sleep", "1000"]);

    // The file at the path is now something else entirely, which fails if run: the
    // daemon and its keeper must go on running the binary they started from, not
    // whatever the path names now.
    let marker = dir.join("impostor-ran");
    replace_file(
        &bin,
        format!("#!/bin/sh\ntouch {}\nexit 99\n", marker.display()).as_bytes(),
    );
    let (code, out, err) = run(&d, &["bb:1", "echo", "started"]);
    assert_eq!((code, out.as_str()), (0, "started\n"), "{err}");
    d.ok(&["run", "-d", "--name", "after", "bb:1", "sleep", "1000"]);
    assert_eq!(d.ok(&["exec", "before", "echo", "exec ok"]), "exec ok\n");
    assert!(
        !marker.exists(),
        "a process ran the file now at the old path"
    );

    // A newer binary arrives and the daemon restarts onto it, containers running.
    replace_file(&bin, &real);
    d.kill9();
    d.start();
    let ps = d.ok(&["ps"]);
    for name in ["before", "after"] {
        assert!(
            ps.lines().any(|l| l.contains(name) && l.contains("Up")),
            "{name}: {ps}"
        );
    }
    assert_eq!(d.ok(&["exec", "after", "echo", "still"]), "still\n");
    d.ok(&["stop", "-t", "1", "before"]);
    let (code, out, _) = run(&d, &["bb:1", "echo", "again"]);
    assert_eq!((code, out.as_str()), (0, "again\n"));
    d.ok(&["rm", "-f", "before", "after"]);
}

#[test]
#[ignore = "needs root"]
fn a_stop_timeout_of_minus_one_waits_without_sigkill() {
    let d = daemon("ctr-stopwait", "127.0.33.10");
    // Takes 2 s to exit after SIGTERM; the default grace (10 s) would not show the
    // difference, `-t 1` would kill it, -1 must wait.
    let slow = "trap 'sleep 2; exit 3' TERM; while true; do sleep 0.1; done";
    d.ok(&[
        "run",
        "-d",
        "--name",
        "slow",
        "--stop-timeout=-1",
        "bb:1",
        "sh",
        "-c",
        slow,
    ]);
    d.ok(&["run", "-d", "--name", "cut", "bb:1", "sh", "-c", slow]);
    std::thread::sleep(Duration::from_millis(300)); // the traps are set
    let start = std::time::Instant::now();
    d.ok(&["stop", "slow"]);
    assert!(start.elapsed() >= Duration::from_secs(2));
    d.ok(&["stop", "-t", "1", "cut"]);
    let code = |name: &str| {
        let v: serde_json::Value = serde_json::from_str(&d.ok(&["inspect", name])).unwrap();
        (
            v[0]["State"]["ExitCode"].clone(),
            v[0]["Config"]["StopTimeout"].clone(),
        )
    };
    assert_eq!(code("slow"), (json!(3), json!(-1)));
    assert_eq!(code("cut").0, json!(137));
    d.ok(&["rm", "slow", "cut"]);
}

#[test]
#[ignore = "needs root"]
fn ps_filters_like_docker() {
    let d = daemon("ctr-filter", "127.0.33.11");
    let web = d.ok(&[
        "run", "-d", "--name", "flt-web", "-l", "tier=web", "bb:1", "sleep", "600",
    ]);
    let job = d.ok(&[
        "run", "-d", "--name", "flt-job", "bb:1", "sh", "-c", "exit 3",
    ]);
    let (web, job) = (&web.trim()[..12], &job.trim()[..12]);
    support::wait_until(10, "the job exits", || {
        d.ok(&["ps", "-q", "-f", "exited=3"]).trim() == job
    });
    let ids = |filters: &[&str]| {
        let mut args = vec!["ps", "-q"];
        for f in filters {
            args.extend(["-f", f]);
        }
        let mut v: Vec<String> = d.ok(&args).lines().map(str::to_string).collect();
        v.sort();
        v.join(" ")
    };
    let both = {
        let mut v = [web, job];
        v.sort_unstable();
        v.join(" ")
    };
    for (filters, want) in [
        (vec![], web.to_string()),
        (vec!["name=web"], web.to_string()),
        (vec!["name=flt"], web.to_string()), // running ones only, without -a or a state
        (vec!["status=exited"], job.to_string()),
        (vec!["status=exited", "status=running"], both.clone()),
        (vec!["status=running", "name=job"], String::new()),
        (vec!["label=tier"], web.to_string()),
        (vec!["label=tier=web"], web.to_string()),
        (vec!["label=tier=db"], String::new()),
        (vec!["ancestor=bb:1", "status=exited"], job.to_string()),
        (vec!["ancestor=bb:1"], web.to_string()),
        (
            vec!["ancestor=bb", "status=exited", "status=running"],
            String::new(),
        ), // bb:latest
        (vec!["ancestor=other"], String::new()),
        (vec!["health=none"], web.to_string()),
        (vec!["network=none"], web.to_string()),
        (vec!["exited=0"], String::new()),
    ] {
        assert_eq!(ids(&filters), want, "{filters:?}");
    }
    assert_eq!(ids(&[&format!("id={}", &job[..6]), "status=exited"]), job);
    // Bad filters are usage errors naming them.
    for (f, why) in [
        ("colour=red", "unknown key \"colour\""),
        ("status=sleeping", "status \"sleeping\""),
        ("exited=x", "exited \"x\""),
        ("publish=1:2", "publish \"1:2\""),
        ("name", "not KEY=VALUE"),
    ] {
        let o = d.cli(&["ps", "-f", f]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{f}: {err}");
        assert!(err.contains(why), "{f}: {err}");
    }
}

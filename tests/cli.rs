//! The `swarmlet` binary's contract with scripts: version, exit codes, and where output goes.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // test code

use std::process::{Command, Output};

fn swarmlet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_swarmlet"))
        .args(args)
        .output()
        .expect("the swarmlet binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn version_prints_package_version() {
    let out = swarmlet(&["--version"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("swarmlet {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn unimplemented_command_exits_2_and_says_so() {
    let out = swarmlet(&["init", "--force-new-cluster"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "stdout: {}", text(&out.stdout));
    assert_eq!(
        text(&out.stderr),
        "swarmlet: init --force-new-cluster: not implemented yet\n"
    );
}

#[test]
fn unknown_flag_is_a_usage_error_naming_the_flag() {
    let out = swarmlet(&["service", "ls", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "stdout: {}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("--no-such-flag"),
        "stderr: {}",
        text(&out.stderr)
    );
}

#[test]
fn help_goes_to_stdout_and_lists_commands() {
    let out = swarmlet(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    for command in ["init", "join", "service", "node", "network", "debug"] {
        assert!(help.contains(command), "--help lacks {command}: {help}");
    }
}

#[test]
fn commands_without_a_daemon_say_where_they_looked() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_swarmlet"))
        .args(["--socket", "/nonexistent/swarmlet.sock", "node", "ls"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/swarmlet.sock") && err.contains("swarmlet daemon"),
        "{err}"
    );
    assert_eq!(
        err.matches("No such file").count(),
        1,
        "cause printed once: {err}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_flag_values_are_usage_errors_before_any_daemon_is_asked() {
    for (args, needle) in [
        (vec!["node", "ls", "--format", "yaml"], "--format"),
        (
            vec!["init", "--advertise-addr", "not-an-ip"],
            "--advertise-addr",
        ),
        (
            vec!["node", "update", "--label-add", "novalue", "n1"],
            "--label-add",
        ),
        (vec!["join", "SWLT-1-x-abc", "10.0.0.1:2377"], "TOKEN"),
        (vec!["daemon", "--log-level", "loud"], "--log-level"),
        (vec!["daemon", "--bridge", "docker0"], "--bridge"),
        (
            vec!["daemon", "--lb-idle-timeout", "0s"],
            "--lb-idle-timeout",
        ),
        (
            vec!["daemon", "--lb-idle-timeout", "600h"],
            "--lb-idle-timeout",
        ),
        (
            vec!["daemon", "--lb-idle-timeout", "forever"],
            "--lb-idle-timeout",
        ),
        (vec!["run", "--name", "a b", "busybox"], "--name"),
        (vec!["run", "-w", "relative", "busybox"], "-w"),
        (vec!["run", "-v", "..:/x", "busybox"], "-v"),
        (vec!["run", "-v", ".:/x", "busybox"], "-v"),
        (vec!["run", "--cpus", "100000", "busybox"], "--cpus"),
        (
            vec!["run", "--memory", "99999999999999999999g", "busybox"],
            "--memory",
        ),
        (
            vec!["run", "--stop-timeout", "-2", "busybox"],
            "--stop-timeout",
        ),
        (vec!["stop", "-t", "-2", "c1"], "--time"),
        (vec!["logs", "--tail", "some", "c1"], "--tail"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_swarmlet"))
            .args(["--socket", "/nonexistent/swarmlet.sock"])
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn docker_spellings_of_no_limit_reach_the_daemon() {
    // Parsed and resolved: the only failure left is the missing daemon (exit 1).
    for args in [
        vec!["run", "--stop-timeout", "-1", "busybox"],
        vec!["stop", "-t", "-1", "c1"],
        vec!["logs", "--tail", "-1", "c1"],
        vec!["logs", "--tail", "all", "c1"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_swarmlet"))
            .args(["--socket", "/nonexistent/swarmlet.sock"])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("cannot reach the swarmlet daemon"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn daemon_flags_the_cluster_would_refuse_are_usage_errors() {
    let long = "x".repeat(10_000);
    let big_label = format!("k={}", "v".repeat(300));
    for (flag, value) in [
        ("--hostname", long.as_str()),
        ("--hostname", ""),
        ("--label", big_label.as_str()),
    ] {
        // A data dir that cannot be made: were the flag taken, the daemon would fail
        // there (exit 1) rather than start.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_swarmlet"))
            .args(["--socket", "/nonexistent/swarmlet.sock", "daemon"])
            .args(["--data-dir", "/proc/nonexistent/data", flag, value])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {err}");
        assert!(err.contains(flag), "{flag}: {err}");
        assert!(
            err.len() < 500,
            "the message does not echo 10,000 bytes: {err}"
        );
    }
}

#[test]
fn a_daemon_that_hangs_up_mid_request_is_reported_once_and_plainly() {
    // A stand-in daemon that reads the request and closes without answering, as one
    // that dies mid-request does.
    let dir = std::env::temp_dir().join(format!("swarmlet-cli-hangup-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let server = std::thread::spawn(move || {
        for _ in 0..2 {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 256];
            let _ = std::io::Read::read(&mut s, &mut buf);
        }
    });
    for args in [vec!["node", "ls"], vec!["image", "ls"]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_swarmlet"))
            .arg("--socket")
            .arg(&sock)
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            !err.contains("failed to fill whole buffer"),
            "{args:?}: {err}"
        );
        assert!(
            err.contains("the daemon closed the connection before answering"),
            "{args:?}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
    server.join().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn flag_equals_value_is_taken_everywhere() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_swarmlet"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The value reaches the flag's own check, which names it.
    let (code, err) = run(&[
        "--socket=/nonexistent/s.sock",
        "run",
        "--cpus=-1",
        "busybox",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--cpus: range of CPUs"), "{err}");
    // The seed's own spelling parses and resolves: what fails is the missing daemon.
    let (code, err) = run(&[
        "service",
        "create",
        "--mode=global",
        "--name=agent",
        "img:1",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot reach the swarmlet daemon"), "{err}");
    // Parsed and resolved, so the missing daemon is what fails.
    for args in [
        &[
            "--socket=/nonexistent/s.sock",
            "run",
            "-d=true",
            "--rm=false",
            "-e=A=1",
            "busybox",
            "sh",
            "-c",
            "echo --x=y",
        ][..],
        &["--socket=/nonexistent/s.sock", "logs", "--tail=-1", "c1"],
        &[
            "--socket=/nonexistent/s.sock",
            "node",
            "ls",
            "--format=json",
        ],
    ] {
        let (code, err) = run(args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(
            err.contains("cannot reach the swarmlet daemon at /nonexistent/s.sock"),
            "{args:?}: {err}"
        );
    }
    let (code, err) = run(&["run", "--rm=sometimes", "busybox"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--rm: a switch takes no value"), "{err}");
}

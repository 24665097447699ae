//! `swarmlet install` / `uninstall` into scratch directories: the binary and the unit
//! land, the unit passes `systemd-analyze verify`, nothing is overwritten without --force,
//! uninstall removes them, keeping or purging the state directory as told, and systemctl
//! is called (reload, enable, restart; disable) only where systemd runs. And the daemon's
//! log lines carry journald priorities when its stderr is journald's stream.

#![allow(clippy::unwrap_used)] // test code

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

/// A stand-in `systemctl` that records its arguments, one call a line, first on the PATH
/// the commands under test run with: on a host where systemd runs, the test enables and
/// restarts nothing, and checks the calls instead.
struct FakeSystemctl {
    path_var: std::ffi::OsString,
    log: PathBuf,
}

impl FakeSystemctl {
    fn new(dir: &Path) -> FakeSystemctl {
        use std::os::unix::fs::OpenOptionsExt;
        let bin = dir.join("fake-bin");
        std::fs::create_dir_all(&bin).unwrap();
        let log = dir.join("systemctl.log");
        let script = format!("#!/bin/sh\necho \"$*\" >> '{}'\n", log.display());
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(bin.join("systemctl"))
            .unwrap();
        std::io::Write::write_all(&mut f, script.as_bytes()).unwrap();
        drop(f);
        let mut dirs = vec![bin];
        dirs.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        let path_var = std::env::join_paths(dirs).unwrap();
        FakeSystemctl { path_var, log }
    }

    /// The calls since the last look, and forgets them.
    fn take_calls(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let _ = std::fs::remove_file(&self.log);
        text.lines().map(str::to_string).collect()
    }
}

#[test]
fn install_verify_and_uninstall() {
    // Where systemd runs (its runtime directory exists), install and uninstall drive it.
    let systemd = Path::new("/run/systemd/system").is_dir();
    let dir = std::env::temp_dir().join(format!("swarmlet-install-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let systemctl = FakeSystemctl::new(&dir);
    let swarmlet = |args: &[&str]| -> std::process::Output {
        Command::new(support::BIN)
            .args(args)
            .env("PATH", &systemctl.path_var)
            .output()
            .unwrap()
    };
    let (bin_dir, unit_dir, data) = (dir.join("bin"), dir.join("units"), dir.join("data"));
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let dirs = [
        "--bin-dir".to_string(),
        s(&bin_dir),
        "--unit-dir".to_string(),
        s(&unit_dir),
        "--data-dir".to_string(),
        s(&data),
    ];
    let with_dirs =
        |head: &[String]| -> Vec<String> { head.iter().chain(&dirs).cloned().collect() };
    let install_owned = with_dirs(&["install".to_string()]);
    let args: Vec<&str> = install_owned.iter().map(String::as_str).collect();
    let o = swarmlet(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let calls = systemctl.take_calls();
    if systemd {
        assert_eq!(
            calls,
            [
                "daemon-reload",
                "enable swarmlet.service",
                "restart swarmlet.service"
            ]
        );
    } else {
        assert!(calls.is_empty(), "no systemd, no systemctl: {calls:?}");
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("systemd is not running here"),
            "{}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
    let bin = bin_dir.join("swarmlet");
    assert_eq!(
        std::fs::read(&bin).unwrap(),
        std::fs::read(support::BIN).unwrap()
    );
    let unit = std::fs::read_to_string(unit_dir.join("swarmlet.service")).unwrap();
    assert!(
        unit.contains(&format!(
            "ExecStart={} daemon --data-dir {}",
            bin.display(),
            data.display()
        )),
        "{unit}"
    );
    for key in [
        "Type=notify",
        "KillMode=process",
        "Delegate=yes",
        "Restart=always",
    ] {
        assert!(unit.lines().any(|l| l == key), "{key} in {unit}");
    }
    // bootstrap.sh installs systemd (which has systemd-analyze) for this check.
    let v = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit_dir.join("swarmlet.service"))
        .output()
        .expect("systemd-analyze runs");
    assert!(
        v.status.success() && v.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&v.stderr)
    );
    // Again: the same files, nothing to force.
    assert!(swarmlet(&args).status.success());
    // A different binary in the way is refused, and nothing is changed.
    std::fs::write(&bin, b"other").unwrap();
    let o = swarmlet(&args);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--force"));
    assert_eq!(std::fs::read(&bin).unwrap(), b"other");
    let mut forced = args.to_vec();
    forced.push("--force");
    assert!(swarmlet(&forced).status.success());
    assert_eq!(
        std::fs::read(&bin).unwrap(),
        std::fs::read(support::BIN).unwrap()
    );

    // Uninstall keeps the state directory unless purged.
    std::fs::create_dir_all(data.join("images")).unwrap();
    systemctl.take_calls();
    let owned = with_dirs(&[
        "--socket".to_string(),
        s(&dir.join("no.sock")),
        "uninstall".to_string(),
    ]);
    let un: Vec<&str> = owned.iter().map(String::as_str).collect();
    let o = swarmlet(&un);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!bin.exists() && !unit_dir.join("swarmlet.service").exists());
    assert!(data.exists(), "kept without --purge");
    let calls = systemctl.take_calls();
    if systemd {
        assert_eq!(calls, ["disable --now swarmlet.service", "daemon-reload"]);
    } else {
        assert!(calls.is_empty(), "no systemd, no systemctl: {calls:?}");
    }
    let mut purge = un.to_vec();
    purge.push("--purge");
    assert!(swarmlet(&purge).status.success());
    assert!(!data.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Under systemd the daemon's stderr is a journald stream, named by `$JOURNAL_STREAM`
/// (device:inode): lines then start with a syslog priority and carry no name of their
/// own, and the keeper it starts writes to the same stream. Anywhere else they read
/// `swarmlet: ...` and the keeper has a file. A file stands in for the stream here: the
/// daemon only compares device and inode.
#[test]
fn log_lines_carry_journald_priorities_only_on_the_journal_stream() {
    use std::os::unix::fs::MetadataExt;
    let dir = std::env::temp_dir().join(format!("swarmlet-journal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // The daemon's stderr, after it failed or answered a request (it serves them only
    // after it has logged that it is ready); its keeper is gone by then.
    let run = |name: &str, journal: bool, flags: &[&str]| -> (String, std::path::PathBuf) {
        let log_path = dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let meta = log.metadata().unwrap();
        let sock = dir.join(format!("{name}.sock"));
        let data = dir.join(name);
        let mut cmd = Command::new(support::BIN);
        cmd.arg("--socket").arg(&sock).arg("daemon").args(flags);
        if !flags.contains(&"--data-dir") {
            cmd.arg("--data-dir").arg(&data);
        }
        cmd.stdout(std::process::Stdio::null()).stderr(log);
        // Without `journal`, what a shell redirect leaves: the variable, naming another file.
        let ino = if journal { meta.ino() } else { meta.ino() + 1 };
        cmd.env("JOURNAL_STREAM", format!("{}:{ino}", meta.dev()));
        let mut child = cmd.spawn().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let answers = || {
            Command::new(support::BIN)
                .arg("--socket")
                .arg(&sock)
                .args(["debug", "info"])
                .output()
                .unwrap()
                .status
                .success()
        };
        while child.try_wait().unwrap().is_none() && !answers() {
            assert!(std::time::Instant::now() < deadline, "{name}: no answer");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        support::cleanup_containers(&data);
        (std::fs::read_to_string(&log_path).unwrap(), data)
    };
    let (out, _) = run("journal", true, &[]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<6>daemon ready, node ")),
        "{out:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("<6>keeper: serving ")),
        "the keeper shares the stream: {out:?}"
    );
    assert!(lines.iter().all(|l| l.starts_with('<')), "{out:?}");

    let (out, data) = run("plain", false, &[]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("swarmlet: daemon ready, node ")),
        "{out:?}"
    );
    assert!(out.lines().all(|l| l.starts_with("swarmlet: ")), "{out:?}");
    let keeper = std::fs::read_to_string(data.join("containers/keeper.log")).unwrap();
    assert!(
        keeper.starts_with("swarmlet: keeper: serving "),
        "{keeper:?}"
    );

    let (out, _) = run("quiet", true, &["--log-level", "error"]);
    assert_eq!(
        out, "",
        "info lines left out at --log-level error, the keeper's too"
    );
    let (out, _) = run("loud", true, &["--log-level", "loud"]);
    assert!(
        out.starts_with("<3>--log-level: unknown level \"loud\""),
        "{out:?}"
    );
    // A daemon that cannot start says why at error level.
    let file = dir.join("a-file");
    std::fs::write(&file, b"").unwrap();
    let (out, _) = run("fails", true, &["--data-dir", file.to_str().unwrap()]);
    assert!(out.starts_with("<3>") && out.contains("a-file"), "{out:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

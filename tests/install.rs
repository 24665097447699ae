//! `swarmlet install` / `uninstall` into scratch directories (this machine has no
//! systemd running, so no systemctl is called): the binary and the unit land, the unit
//! passes `systemd-analyze verify`, nothing is overwritten without --force, and
//! uninstall removes them, keeping or purging the state directory as told. And the
//! daemon's log lines carry journald priorities when its stderr is journald's stream.

#![allow(clippy::unwrap_used)] // test code

mod support;

use std::process::Command;

fn swarmlet(args: &[&str]) -> std::process::Output {
    Command::new(support::BIN).args(args).output().unwrap()
}

#[test]
fn install_verify_and_uninstall() {
    if std::path::Path::new("/run/systemd/system").is_dir() {
        eprintln!("skipping: systemd runs here, and install would enable the unit");
        return;
    }
    let dir = std::env::temp_dir().join(format!("swarmlet-install-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
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
    let mut purge = un.to_vec();
    purge.push("--purge");
    assert!(swarmlet(&purge).status.success());
    assert!(!data.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Under systemd the daemon's stderr is a journald stream, named by `$JOURNAL_STREAM`
/// (device:inode): lines then start with a syslog priority and carry no name of their
/// own. Anywhere else they read `swarmlet: ...`. A file stands in for the stream here:
/// the daemon only compares device and inode.
#[test]
fn log_lines_carry_journald_priorities_only_on_the_journal_stream() {
    use std::os::unix::fs::MetadataExt;
    let dir = std::env::temp_dir().join(format!("swarmlet-journal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let run = |name: &str, journal: bool, args: &[&str]| -> String {
        let log_path = dir.join(name);
        let log = std::fs::File::create(&log_path).unwrap();
        let meta = log.metadata().unwrap();
        let sock = dir.join(format!("{name}.sock"));
        let mut cmd = Command::new(support::BIN);
        cmd.arg("--socket").arg(&sock).args(args);
        cmd.stdout(std::process::Stdio::null()).stderr(log);
        if journal {
            cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
        } else {
            // What a shell redirect leaves: the variable, naming another file.
            cmd.env(
                "JOURNAL_STREAM",
                format!("{}:{}", meta.dev(), meta.ino() + 1),
            );
        }
        let mut child = cmd.spawn().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        // Until it fails, or answers a request: the daemon serves them only after it
        // has logged that it is ready.
        loop {
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
            if child.try_wait().unwrap().is_some() || answers() {
                let _ = child.kill();
                let _ = child.wait();
                return std::fs::read_to_string(&log_path).unwrap();
            }
            assert!(std::time::Instant::now() < deadline, "{name}: no answer");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    let data = dir.join("data");
    let daemon = ["daemon", "--data-dir", data.to_str().unwrap()];
    let out = run("journal", true, &daemon);
    assert!(out.starts_with("<6>daemon ready, node "), "{out:?}");
    let out = run("plain", false, &daemon);
    assert!(out.starts_with("swarmlet: daemon ready, node "), "{out:?}");
    let quiet = [&daemon[..], &["--log-level", "error"]].concat();
    let out = run("quiet", true, &quiet);
    assert_eq!(out, "", "info lines left out at --log-level error");
    let loud = [&daemon[..], &["--log-level", "loud"]].concat();
    let out = run("loud", true, &loud);
    assert!(
        out.contains("--log-level: unknown level \"loud\""),
        "{out:?}"
    );
    // A daemon that cannot start says why at error level.
    let file = dir.join("a-file");
    std::fs::write(&file, b"").unwrap();
    let out = run(
        "fails",
        true,
        &["daemon", "--data-dir", file.to_str().unwrap()],
    );
    assert!(out.starts_with("<3>") && out.contains("a-file"), "{out:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

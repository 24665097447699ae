//! `swarmlet install` / `uninstall` into scratch directories (this machine has no
//! systemd running, so no systemctl is called): the binary and the unit land, the unit
//! passes `systemd-analyze verify`, nothing is overwritten without --force, and
//! uninstall removes them, keeping or purging the state directory as told.

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
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        let v = Command::new("systemd-analyze")
            .arg("verify")
            .arg(unit_dir.join("swarmlet.service"))
            .output()
            .unwrap();
        assert!(
            v.status.success() && v.stderr.is_empty(),
            "systemd-analyze verify: {}",
            String::from_utf8_lossy(&v.stderr)
        );
    }
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

//! The `image` commands end to end: CLI, daemon, store, and a real registry.
//! Needs root and docker-registry (as tests/registry_pull.rs).

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // test code

mod support;

use serde_json::json;
use support::image::{docker_save_tar, sha, TestImage};
use support::registry::{Options, Registry};
use support::Daemon;

#[test]
#[ignore = "needs root"]
fn pull_ls_inspect_load_rm_prune() {
    let reg = Registry::start("cli", Options::default());
    let img = TestImage::busybox(json!({"Cmd": ["/bin/sh"]})).build();
    reg.push_image("test/bb", Some("1"), &img);
    let d = Daemon::with_args(
        "img",
        "n1",
        "127.0.32.1",
        &["--insecure-registry", &reg.host()],
    );

    let name = format!("{}/test/bb:1", reg.host());
    let out = d.ok(&["image", "pull", &name]);
    assert!(out.contains("Pull complete"), "{out}");
    assert!(
        out.contains(&format!("Digest: {}", sha(&img.manifest))),
        "{out}"
    );
    assert!(out.contains("Downloaded newer image"), "{out}");
    assert!(out.trim_end().ends_with(&name), "{out}");
    let again = d.ok(&["image", "pull", &name]);
    assert!(
        again.contains("Already exists") && again.contains("up to date"),
        "{again}"
    );

    let ls = d.ok(&["image", "ls"]);
    let id12 = &sha(&img.config)["sha256:".len()..][..12];
    let row = ls
        .lines()
        .find(|l| l.contains(id12))
        .unwrap_or_else(|| panic!("{ls}"));
    assert!(
        row.starts_with(&format!("{}/test/bb", reg.host())) && row.contains(" 1 "),
        "{row}"
    );
    assert_eq!(d.ok(&["image", "ls", "-q"]).trim(), id12);
    for (f, shown) in [
        ("dangling=false", true),
        ("dangling=true", false),
        ("reference=*/test/bb", true),
        ("reference=*/test/bb:1", true),
        ("reference=*/test/b?:*", true),
        ("reference=*/other/*", false),
        ("reference=*bb", false), // * does not cross a /
    ] {
        let got = d.ok(&["image", "ls", "-q", "-f", f]);
        assert_eq!(got.trim() == id12, shown, "{f}: {got}");
    }
    let o = d.cli(&["image", "ls", "-f", "label=x"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown key \"label\""));
    let inspect: serde_json::Value =
        serde_json::from_str(&d.ok(&["image", "inspect", &name])).unwrap();
    assert_eq!(inspect[0]["Id"], json!(sha(&img.config)));
    assert_eq!(inspect[0]["Config"]["Cmd"], json!(["/bin/sh"]));

    // A docker save tarball, from a file and from standard input.
    let dir = std::env::temp_dir().join(format!("swarmlet-imgcli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let other = TestImage::busybox(json!({"Cmd": ["other"]}));
    let tar = dir.join("other.tar");
    std::fs::write(&tar, docker_save_tar(&other, &["other:7"])).unwrap();
    let out = d.ok(&["image", "load", "-i", tar.to_str().unwrap()]);
    assert_eq!(out.trim(), "Loaded image: docker.io/library/other:7");
    let mut child = std::process::Command::new(support::BIN)
        .arg("--socket")
        .arg(d.sock())
        .args(["image", "load"])
        .stdin(std::fs::File::open(&tar).unwrap())
        .output()
        .unwrap();
    assert!(
        child.status.success(),
        "{}",
        String::from_utf8_lossy(&child.stderr)
    );
    child.stdout.clear();

    // Bad input: a file that is not an image, a malformed reference, a bad platform.
    let junk = dir.join("junk.tar");
    std::fs::write(&junk, b"definitely not a tarball").unwrap();
    let o = d.cli(&["image", "load", "-i", junk.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("junk.tar") && err.contains("image tarball"),
        "{err}"
    );
    let o = d.cli(&["image", "pull", "Not/Valid"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = d.cli(&["image", "pull", "--platform", "linux", &name]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--platform"));
    let o = d.cli(&["image", "pull", &format!("{}/test/missing:1", reg.host())]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not found"));

    // rm by name, then prune of what is left.
    let out = d.ok(&["image", "rm", "other:7"]);
    assert!(
        out.contains("Untagged: docker.io/library/other:7") && out.contains("Deleted: sha256:"),
        "{out}"
    );
    let o = d.cli(&["image", "rm", "other:7"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("No such image"));
    let out = d.ok(&["image", "prune", "-a"]);
    assert!(out.contains("Total images removed: 1"), "{out}");
    assert_eq!(d.ok(&["image", "ls", "-q"]).trim(), "");

    // `run` of an image not here pulls it first; the progress goes to stderr, so that
    // stdout is only what `run -d` promises: the container id.
    let o = d.cli(&["run", "-d", &name, "true"]);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{err}");
    let id = out.trim();
    assert!(
        id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "stdout is the id alone: {out:?}"
    );
    assert!(err.contains("Pull complete"), "{err}");
    d.ok(&["rm", "-f", id]);
    let _ = std::fs::remove_dir_all(&dir);
}

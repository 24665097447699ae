//! A daemon that cannot start refuses before it creates anything: no data dir, no
//! node key, no keeper, no socket.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // test code

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{Daemon, BIN};

struct Tmp(PathBuf);
impl Tmp {
    fn new(tag: &str) -> Tmp {
        let p = std::env::temp_dir().join(format!("swarmlet-start-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }
}
impl Drop for Tmp {
    fn drop(&mut self) {
        support::cleanup_containers(&self.0.join("data"));
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `swarmlet --socket SOCK daemon --data-dir DATA`, which must fail: (exit code, stderr).
fn refused(sock: &Path, data: &Path) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .arg("--socket")
        .arg(sock)
        .args(["daemon", "--hostname", "n2", "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether any process has `needle` in its command line (a keeper serving a dir).
fn any_process_mentions(needle: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
    })
}

#[test]
fn a_socket_in_use_is_refused_before_anything_is_made() {
    let first = Daemon::new("start-inuse", "n1", "127.0.35.1");
    let t = Tmp::new("inuse");
    let data = t.0.join("data");
    let (code, err) = refused(&first.sock(), &data);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("in use"), "{err}");
    assert!(err.contains(&first.sock().display().to_string()), "{err}");
    assert!(!data.exists(), "the data dir was made: {err}");
    assert!(
        !any_process_mentions(&data.display().to_string()),
        "a keeper was started"
    );
    // The first daemon still answers.
    first.ok(&["debug", "info"]);
}

#[test]
fn unusable_paths_are_refused_before_anything_is_made() {
    let t = Tmp::new("paths");
    let file = t.0.join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let good_sock = t.0.join("sock");
    let good_data = t.0.join("data");
    // The socket's directory cannot be made (a file is in the way).
    let (code, err) = refused(&file.join("sock"), &good_data);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("a-file") && err.contains("not a directory"),
        "{err}"
    );
    assert!(!good_data.exists(), "{err}");
    // Nor the data dir.
    let (code, err) = refused(&good_sock, &file.join("data"));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("a-file") && err.contains("not a directory"),
        "{err}"
    );
    assert!(!good_sock.exists(), "{err}");
    // A socket path that names something else is not replaced.
    let (code, err) = refused(&file, &good_data);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a directory");
    assert!(!good_data.exists(), "{err}");
    assert!(!any_process_mentions(&good_data.display().to_string()));
}

#[test]
#[ignore = "needs root"]
fn a_read_only_data_dir_is_refused_before_anything_is_made() {
    let t = Tmp::new("rodata");
    let data = t.0.join("ro");
    std::fs::create_dir_all(&data).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"])
        .arg(&data)
        .status()
        .unwrap();
    assert!(st.success());
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(self.0).status();
        }
    }
    let _u = Unmount(&data);
    let sock = t.0.join("run/sock");
    let (code, err) = refused(&sock, &data);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not writable"), "{err}");
    assert!(err.contains(&data.display().to_string()), "{err}");
    assert!(
        !t.0.join("run").exists(),
        "the socket's directory was made: {err}"
    );
}

//! Two real processes over real loopback sockets: `debug transport listen` and
//! `debug transport send`, as a user would run them.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // test code

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_swarmlet");

struct Listener {
    child: Child,
    lines: std::io::Lines<BufReader<ChildStdout>>,
    addr: String,
    key: String,
    dir: PathBuf,
}

impl Listener {
    fn start(name: &str, extra: &[&str]) -> Listener {
        let dir = std::env::temp_dir().join(format!("swarmlet-proc-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = Command::new(BIN)
            .args([
                "debug",
                "transport",
                "listen",
                "--listen",
                "127.0.0.1:0",
                "--key",
            ])
            .arg(dir.join("listener.key"))
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        let w: Vec<&str> = first.split_whitespace().collect();
        assert_eq!(w[0], "listening", "{first}");
        Listener {
            addr: w[1].to_string(),
            key: w[2].to_string(),
            child,
            lines,
            dir,
        }
    }

    fn rest(mut self) -> Vec<String> {
        let status = self.child.wait().unwrap();
        assert!(status.success());
        let out = self.lines.by_ref().map(|l| l.unwrap()).collect();
        let _ = std::fs::remove_dir_all(&self.dir);
        out
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn send(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["debug", "transport", "send"])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn two_processes_exchange_messages_with_echo() {
    let l = Listener::start("echo", &["--echo", "--count", "4"]);
    let out = send(&[
        "--to",
        &l.addr,
        "--peer-key",
        &l.key,
        "--size",
        "200000",
        "--count",
        "3",
        "--expect-echo",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("sent 3 message(s), 600000 bytes")
            && stdout.contains("every echo verified"),
        "{stdout}"
    );
    let out = send(&[
        "--to",
        &l.addr,
        "--peer-key",
        &l.key,
        "--message",
        "plain text",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rest = l.rest();
    assert_eq!(
        rest.iter().filter(|l| l.contains("200000 bytes")).count(),
        3,
        "{rest:?}"
    );
    assert!(
        rest.iter().any(|l| l.contains("10 bytes \"plain text\"")),
        "{rest:?}"
    );
    assert!(
        rest.last().unwrap().starts_with("done: 4 messages"),
        "{rest:?}"
    );
}

#[test]
fn psk_must_match() {
    let psk = "11".repeat(32);
    let l = Listener::start("psk", &["--psk", &psk, "--count", "1"]);
    let wrong = send(&["--to", &l.addr, "--peer-key", &l.key, "--timeout-secs", "2"]);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("no answer from"));
    let right = send(&[
        "--to",
        &l.addr,
        "--peer-key",
        &l.key,
        "--psk",
        &psk,
        "--message",
        "ok",
    ]);
    assert!(
        right.status.success(),
        "{}",
        String::from_utf8_lossy(&right.stderr)
    );
    let rest = l.rest();
    assert!(rest.iter().any(|l| l.contains("\"ok\"")), "{rest:?}");
}

#[test]
fn bad_flags_name_the_culprit() {
    let key = "ab".repeat(32);
    for (args, needle) in [
        (
            vec!["--to", "127.0.0.1:9", "--peer-key", "xyz"],
            "--peer-key",
        ),
        (
            vec!["--to", "127.0.0.1:9", "--peer-key", &key, "--psk", "00"],
            "--psk",
        ),
        (
            vec![
                "--to",
                "127.0.0.1:9",
                "--peer-key",
                &key,
                "--size",
                "2000000",
            ],
            "--size",
        ),
        (
            vec![
                "--to",
                "127.0.0.1:9",
                "--peer-key",
                &key,
                "--size",
                "1",
                "--message",
                "x",
            ],
            "--message",
        ),
        (
            vec!["--to", "127.0.0.1:9", "--peer-key", &key, "--count", "0"],
            "--count",
        ),
        (vec!["--to", "not-an-addr", "--peer-key", &key], "--to"),
    ] {
        let out = send(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn listener_refuses_a_world_readable_key_file() {
    let dir = std::env::temp_dir().join(format!("swarmlet-proc-{}-perm", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("k");
    std::fs::write(&key, [7u8; 32]).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(BIN)
        .args([
            "debug",
            "transport",
            "listen",
            "--listen",
            "127.0.0.1:0",
            "--key",
        ])
        .arg(&key)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(key.to_str().unwrap()) && err.contains("chmod 600"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

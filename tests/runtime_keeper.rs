//! The keeper and its libcontainer helper with real containers on the real kernel: a
//! busybox root filesystem, a spec from `runtime::spec`, then run, logs, exit codes,
//! kill, delete. Needs root.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // test code

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::image::Layer;
use swarmlet::image::oci::RunConfig;
use swarmlet::runtime::keeper::{self, ContainerState, KeeperRequest, KeeperResponse};
use swarmlet::runtime::logs::{read_all, LogLimits};
use swarmlet::runtime::spec::{identity, runtime_spec, ContainerSpec};

struct Env {
    dir: PathBuf,
}

impl Env {
    fn new(tag: &str) -> Env {
        let dir =
            std::env::temp_dir().join(format!("swarmlet-keeper-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        keeper::ensure(&dir, Path::new(support::BIN)).unwrap();
        Env { dir }
    }

    fn call(&self, req: KeeperRequest) -> KeeperResponse {
        keeper::call(&self.dir, &req, Duration::from_secs(30)).unwrap()
    }

    /// Writes the bundle of `id`: busybox unpacked as its root, a spec running `cmd`.
    fn bundle(&self, id: &str, cmd: &[&str], spec: ContainerSpec) {
        let b = self.dir.join(id).join("bundle");
        let rootfs = b.join("rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        swarmlet::image::unpack::unpack(&Layer::busybox().tar()[..], &rootfs).unwrap();
        let image = RunConfig {
            cmd: Some(cmd.iter().map(|s| (*s).to_string()).collect()),
            ..Default::default()
        };
        let who = identity(spec.user.as_deref(), &rootfs).unwrap();
        let v = runtime_spec(
            &image,
            &spec,
            &who,
            &rootfs,
            id,
            &format!("/swarmlet/{id}"),
            &BTreeMap::new(),
        )
        .unwrap();
        std::fs::write(
            b.join("config.json"),
            serde_json::to_vec_pretty(&v).unwrap(),
        )
        .unwrap();
    }

    fn run(&self, id: &str) -> i32 {
        match self.call(KeeperRequest::Run {
            id: id.into(),
            log: LogLimits::default(),
        }) {
            KeeperResponse::Started { pid } => pid,
            other => panic!("run {id}: {other:?}"),
        }
    }

    fn state(&self, id: &str) -> ContainerState {
        match self.call(KeeperRequest::List) {
            KeeperResponse::States(v) => v.into_iter().find(|s| s.id == id).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    fn wait_exit(&self, id: &str) -> ContainerState {
        let mut st = self.state(id);
        support::wait_until(20, &format!("{id} exits"), || {
            st = self.state(id);
            st.exit.is_some()
        });
        st
    }

    fn log(&self, id: &str) -> String {
        read_all(&self.dir.join(id).join("log"), 2)
            .unwrap()
            .iter()
            .map(|r| format!("{:?} {}\n", r.stream, String::from_utf8_lossy(&r.text)))
            .collect()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Ok(KeeperResponse::States(v)) =
            keeper::call(&self.dir, &KeeperRequest::List, Duration::from_secs(5))
        {
            for s in v {
                if s.exit.is_none() {
                    let _ = keeper::call(
                        &self.dir,
                        &KeeperRequest::Kill {
                            id: s.id.clone(),
                            signal: 9,
                        },
                        Duration::from_secs(5),
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(300));
            if let Ok(KeeperResponse::States(v)) =
                keeper::call(&self.dir, &KeeperRequest::List, Duration::from_secs(5))
            {
                for s in v {
                    let _ = keeper::call(
                        &self.dir,
                        &KeeperRequest::Delete { id: s.id },
                        Duration::from_secs(10),
                    );
                }
            }
        }
        // Stop the keeper: it holds a lock file in the directory.
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("keeper.pid")) {
            let _ = std::process::Command::new("kill").arg(pid.trim()).status();
        }
        let _ = std::process::Command::new("pkill")
            .args([
                "-f",
                &format!("runtime-helper keeper {}", self.dir.display()),
            ])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
#[ignore = "needs root"]
fn runs_a_container_and_records_output_and_exit() {
    let env = Env::new("basic");
    let spec = ContainerSpec {
        env: vec!["GREETING=hi".into()],
        ..Default::default()
    };
    env.bundle(
        "c1",
        &[
            "sh",
            "-c",
            "echo $GREETING from $(hostname); id -u; echo oops >&2; exit 7",
        ],
        spec,
    );
    env.run("c1");
    let st = env.wait_exit("c1");
    let exit = st.exit.unwrap();
    assert_eq!(exit.code, Some(7));
    assert!(!exit.oom_killed);
    let log = env.log("c1");
    assert!(log.contains("Stdout hi from c1"), "{log}");
    assert!(log.contains("Stdout 0\n"), "{log}");
    assert!(log.contains("Stderr oops"), "{log}");
    assert_eq!(
        env.call(KeeperRequest::Delete { id: "c1".into() }),
        KeeperResponse::Ok
    );

    // Killed by a signal: 128 + signal, as Docker reports it.
    env.bundle("c2", &["sleep", "1000"], ContainerSpec::default());
    env.run("c2");
    assert_eq!(
        env.call(KeeperRequest::Kill {
            id: "c2".into(),
            signal: 9
        }),
        KeeperResponse::Ok
    );
    let exit = env.wait_exit("c2").exit.unwrap();
    assert_eq!((exit.code, exit.signal), (Some(137), Some(9)));
}

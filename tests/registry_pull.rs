//! Pulls from a real registry (Debian's docker-registry on loopback): by tag and by
//! digest, one image out of a multi-platform index for several platforms, Basic auth,
//! TLS with the registry's own CA, errors for what does not exist, and a registry
//! killed in the middle of a layer. Needs root (layers are unpacked with owners) and
//! docker-registry; `./bootstrap.sh deps` installs it.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // test code

mod support;

use std::collections::BTreeMap;

use serde_json::json;
use support::image::{sha, Layer, TestImage};
use support::registry::{Options, Registry};
use swarmlet::image::oci::Platform;
use swarmlet::image::pull::{pull, PullError, RegistryConfig};
use swarmlet::image::reference::Reference;
use swarmlet::image::store::Store;
use swarmlet::model::image::{Credentials, LayerState, Progress};

struct Dir(std::path::PathBuf);
impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("swarmlet-pull-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        Dir(p)
    }
}
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn insecure(reg: &Registry) -> RegistryConfig {
    RegistryConfig {
        insecure: vec![reg.host()],
        ..Default::default()
    }
}

fn quiet(_: Progress) {}

fn platform_image(arch: &'static str, variant: Option<&'static str>) -> TestImage {
    let mut img = TestImage::busybox(json!({"Cmd": ["/bin/sh"]}));
    img.arch = arch;
    img.variant = variant;
    let marker = format!(
        "{arch}{}",
        variant.map(|v| format!("/{v}")).unwrap_or_default()
    );
    img.layers.push(Layer {
        items: vec![support::image::Item::File(
            "etc/platform".into(),
            marker.into_bytes(),
            0o644,
        )],
    });
    img
}

#[test]
#[ignore = "needs root"]
fn pulls_by_tag_digest_and_platform() {
    let reg = Registry::start("plain", Options::default());
    let single = TestImage::busybox(json!({"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]})).build();
    reg.push_image("test/bb", Some("1"), &single);
    let amd = platform_image("amd64", None).build();
    let arm64 = platform_image("arm64", None).build();
    let armv7 = platform_image("arm", Some("v7")).build();
    let index_digest = reg.push_index(
        "test/multi",
        "1",
        &[
            (&amd, "amd64", None),
            (&arm64, "arm64", None),
            (&armv7, "arm", Some("v7")),
        ],
    );

    let d = Dir::new("tags");
    let store = Store::open(&d.0).unwrap();
    let cfg = insecure(&reg);
    let host = Platform::host();

    // By tag: the image and both of its names.
    let r = Reference::parse(&format!("{}/test/bb:1", reg.host())).unwrap();
    let seen = std::sync::Mutex::new(Vec::new());
    let got = pull(&store, &r, &host, &cfg, &|p| seen.lock().unwrap().push(p)).unwrap();
    assert_eq!(got.id.to_string(), sha(&single.config));
    assert_eq!(got.digest.to_string(), sha(&single.manifest));
    assert_eq!(
        got.names,
        vec![
            format!("{}/test/bb:1", reg.host()),
            format!("{}/test/bb@{}", reg.host(), sha(&single.manifest))
        ]
    );
    let seen = seen.into_inner().unwrap();
    assert!(seen.iter().any(|p| matches!(
        p,
        Progress::Layer {
            state: LayerState::Done,
            ..
        }
    )));
    let rec = store.resolve(&format!("{}/test/bb:1", reg.host())).unwrap();
    assert_eq!(rec.config.config.env, Some(vec!["PATH=/bin".to_string()]));
    assert!(store
        .layer_path(&rec.layers[0].diff_id)
        .join("bin/busybox")
        .is_file());

    // Again: nothing to download, the layer is reported as already there.
    let seen = std::sync::Mutex::new(Vec::new());
    pull(&store, &r, &host, &cfg, &|p| seen.lock().unwrap().push(p)).unwrap();
    assert!(seen.into_inner().unwrap().iter().all(|p| !matches!(
        p,
        Progress::Layer {
            state: LayerState::Downloading { .. },
            ..
        }
    )));

    // By digest.
    let r = Reference::parse(&format!("{}/test/bb@{}", reg.host(), sha(&single.manifest))).unwrap();
    assert_eq!(pull(&store, &r, &host, &cfg, &quiet).unwrap().id, got.id);

    // One index, three platforms: each gets its own image, with its own marker file.
    let r = Reference::parse(&format!("{}/test/multi:1", reg.host())).unwrap();
    for (platform, built, marker) in [
        ("linux/amd64", &amd, "amd64"),
        ("linux/arm64", &arm64, "arm64"),
        ("linux/arm/v7", &armv7, "arm/v7"),
    ] {
        let p = Platform::parse(platform).unwrap();
        let got = pull(&store, &r, &p, &cfg, &quiet).unwrap();
        assert_eq!(got.id.to_string(), sha(&built.config), "{platform}");
        assert_eq!(got.digest.to_string(), index_digest, "names the index");
        let rec = store.resolve(&got.id.to_string()).unwrap();
        assert_eq!(rec.platform().to_string(), platform);
        let top = store.layer_path(&rec.layers[1].diff_id);
        assert_eq!(
            std::fs::read_to_string(top.join("etc/platform")).unwrap(),
            marker
        );
    }
    // The same through a Docker schema2 manifest list with schema2 manifests.
    let d_amd = platform_image("amd64", None).build_docker();
    let d_arm = platform_image("arm64", None).build_docker();
    let list_digest = reg.push_docker_list(
        "test/dlist",
        "1",
        &[(&d_amd, "amd64", None), (&d_arm, "arm64", None)],
    );
    let rl = Reference::parse(&format!("{}/test/dlist:1", reg.host())).unwrap();
    let got = pull(
        &store,
        &rl,
        &Platform::parse("linux/arm64").unwrap(),
        &cfg,
        &quiet,
    )
    .unwrap();
    assert_eq!(got.id.to_string(), sha(&d_arm.config));
    assert_eq!(got.digest.to_string(), list_digest);
    let rec = store.resolve(&got.id.to_string()).unwrap();
    assert_eq!(
        std::fs::read_to_string(
            store
                .layer_path(&rec.layers[1].diff_id)
                .join("etc/platform")
        )
        .unwrap(),
        "arm64"
    );

    // A platform the index lacks is named in the error, with what it has.
    let err = pull(
        &store,
        &r,
        &Platform::parse("linux/s390x").unwrap(),
        &cfg,
        &quiet,
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("no image for linux/s390x") && msg.contains("linux/arm/v7"),
        "{msg}"
    );

    // What does not exist.
    let wrong = format!("{}/test/bb@sha256:{}", reg.host(), "0".repeat(64));
    let err = pull(
        &store,
        &Reference::parse(&wrong).unwrap(),
        &host,
        &cfg,
        &quiet,
    )
    .unwrap_err();
    assert!(matches!(err, PullError::NotFound(_)), "{err}");
    let err = pull(
        &store,
        &Reference::parse(&format!("{}/test/nothing:1", reg.host())).unwrap(),
        &host,
        &cfg,
        &quiet,
    )
    .unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");

    // Plain HTTP is used only for registries named insecure: otherwise HTTPS, which
    // this registry does not speak.
    let err = pull(
        &store,
        &Reference::parse(&format!("{}/test/bb:1", reg.host())).unwrap(),
        &host,
        &RegistryConfig::default(),
        &quiet,
    )
    .unwrap_err();
    assert!(matches!(err, PullError::Transport { .. }), "{err}");
}

/// Two replicas of one service starting on a node pull the same image at once: both
/// pulls succeed and the layers land once (the demo's rolling update once paused on
/// "pulling ...: Directory not empty" from the second).
#[test]
#[ignore = "needs root"]
fn two_pulls_of_one_image_at_once_both_succeed() {
    let reg = Registry::start("twice", Options::default());
    let img = TestImage::busybox(json!({"Cmd": ["/bin/sh"]})).build();
    reg.push_image("test/bb", Some("1"), &img);
    let cfg = insecure(&reg);
    let r = Reference::parse(&format!("{}/test/bb:1", reg.host())).unwrap();
    for round in 0..5 {
        let d = Dir::new(&format!("twice{round}"));
        let store = Store::open(&d.0).unwrap();
        let results: Vec<_> = std::thread::scope(|s| {
            let pulls: Vec<_> = (0..3)
                .map(|_| s.spawn(|| pull(&store, &r, &Platform::host(), &cfg, &quiet)))
                .collect();
            pulls.into_iter().map(|p| p.join().unwrap()).collect()
        });
        for res in results {
            let got = res.unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!(got.id.to_string(), sha(&img.config));
        }
        assert!(store.resolve(&r.to_string()).is_ok());
    }
}

#[test]
#[ignore = "needs root"]
fn basic_auth_and_tls() {
    let img = TestImage::busybox(json!({})).build();
    let d = Dir::new("auth");
    let store = Store::open(&d.0).unwrap();
    let host = Platform::host();

    let reg = Registry::start(
        "auth",
        Options {
            basic_auth: Some(("ann", "s3cret")),
            tls: false,
        },
    );
    reg.push_image("private/bb", Some("1"), &img);
    let r = Reference::parse(&format!("{}/private/bb:1", reg.host())).unwrap();
    let err = pull(&store, &r, &host, &insecure(&reg), &quiet).unwrap_err();
    assert!(matches!(err, PullError::Auth { .. }), "{err}");
    assert!(err.to_string().contains("no credentials"), "{err}");
    let mut cfg = insecure(&reg);
    cfg.auths = BTreeMap::from([(
        reg.host(),
        Credentials {
            username: "ann".into(),
            password: "wrong".into(),
        },
    )]);
    let err = pull(&store, &r, &host, &cfg, &quiet).unwrap_err();
    assert!(err.to_string().contains("refused the credentials"), "{err}");
    cfg.auths.get_mut(&reg.host()).unwrap().password = "s3cret".into();
    pull(&store, &r, &host, &cfg, &quiet).unwrap();
    // The node's own credentials file (`daemon --registry-auth-file`), read at the
    // pull: a missing file is no credentials, a malformed one is named.
    reg.push_image("private/bb", Some("2"), &img);
    let r2 = Reference::parse(&format!("{}/private/bb:2", reg.host())).unwrap();
    let file = d.0.join("node-config.json");
    let mut cfg = insecure(&reg);
    cfg.auth_file = Some(file.clone());
    let err = pull(&store, &r2, &host, &cfg, &quiet).unwrap_err();
    assert!(err.to_string().contains("no credentials"), "{err}");
    std::fs::write(&file, "{\"auths\": [").unwrap();
    let err = pull(&store, &r2, &host, &cfg, &quiet).unwrap_err();
    assert!(err.to_string().contains("node-config.json"), "{err}");
    let entry = json!({"auths": {reg.host(): {"username": "ann", "password": "s3cret"}}});
    std::fs::write(&file, entry.to_string()).unwrap();
    pull(&store, &r2, &host, &cfg, &quiet).unwrap();

    let tls = Registry::start(
        "tls",
        Options {
            basic_auth: None,
            tls: true,
        },
    );
    tls.push_image("secure/bb", Some("1"), &img);
    let r = Reference::parse(&format!("{}/secure/bb:1", tls.host())).unwrap();
    // Without its CA the certificate is not trusted.
    let err = pull(&store, &r, &host, &RegistryConfig::default(), &quiet).unwrap_err();
    assert!(matches!(err, PullError::Transport { .. }), "{err}");
    let certs = d.0.join("certs.d");
    std::fs::create_dir_all(certs.join(tls.host())).unwrap();
    std::fs::copy(
        tls.dir.join("ca.pem"),
        certs.join(tls.host()).join("ca.crt"),
    )
    .unwrap();
    // A node credentials file that cannot be read does not stop a pull that needs
    // none.
    let bad = d.0.join("bad-config.json");
    std::fs::write(&bad, "not json").unwrap();
    let cfg = RegistryConfig {
        certs_dir: Some(certs),
        auth_file: Some(bad),
        ..Default::default()
    };
    pull(&store, &r, &host, &cfg, &quiet).unwrap();
}

#[test]
#[ignore = "needs root"]
fn a_registry_killed_mid_layer_leaves_no_image_and_the_next_pull_resumes() {
    let mut reg = Registry::start("kill", Options::default());
    // A layer of incompressible data, big enough that it cannot sit whole in socket
    // buffers; the progress callback below slows the reader down.
    let mut noise = vec![0u8; 24 << 20];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut img = TestImage::busybox(json!({}));
    img.layers.push(Layer::files(&[("noise", &noise)]));
    let built = img.build();
    reg.push_image("test/big", Some("1"), &built);
    let d = Dir::new("kill");
    let store = Store::open(&d.0).unwrap();
    let cfg = insecure(&reg);
    let r = Reference::parse(&format!("{}/test/big:1", reg.host())).unwrap();
    let host = Platform::host();

    let received = std::sync::atomic::AtomicU64::new(0);
    let err = std::thread::scope(|s| {
        let puller = s.spawn(|| {
            pull(&store, &r, &host, &cfg, &|p| {
                if let Progress::Layer {
                    state: LayerState::Downloading { done, .. },
                    ..
                } = p
                {
                    received.fetch_max(done, std::sync::atomic::Ordering::Relaxed);
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            })
        });
        support::wait_until(30, "part of the big layer", || {
            received.load(std::sync::atomic::Ordering::Relaxed) > 1 << 20
        });
        reg.kill();
        puller.join().unwrap().unwrap_err()
    });
    assert!(
        matches!(err, PullError::Transport { .. }) && err.to_string().contains("resumes"),
        "{err}"
    );
    assert!(store.list().unwrap().is_empty(), "no half image");
    let partial: Vec<_> = std::fs::read_dir(d.0.join("tmp"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(
        partial.len(),
        1,
        "the partial download is kept for resuming"
    );
    let kept = partial[0].metadata().unwrap().len();
    assert!(kept > 0);

    // The next pull asks only for the rest (Range): its first progress report is
    // already past what was kept.
    reg.restart();
    let first = std::sync::Mutex::new(None);
    let got = pull(&store, &r, &host, &cfg, &|p| {
        if let Progress::Layer {
            state: LayerState::Downloading { done, .. },
            ..
        } = p
        {
            first.lock().unwrap().get_or_insert(done);
        }
    })
    .unwrap();
    let first = first.into_inner().unwrap().unwrap();
    assert!(first >= kept, "resumed at {first}, {kept} were kept");
    assert_eq!(got.id.to_string(), sha(&built.config));
    let rec = store.resolve(&got.id.to_string()).unwrap();
    let noise_path = store.layer_path(&rec.layers[1].diff_id).join("noise");
    assert_eq!(std::fs::read(noise_path).unwrap(), noise);
    assert_eq!(std::fs::read_dir(d.0.join("tmp")).unwrap().count(), 0);
}

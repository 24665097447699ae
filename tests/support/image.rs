//! Small test images built here, with no network: busybox-static (Debian's
//! `/bin/busybox`) plus whatever files a test adds, written as an OCI image layout
//! tarball or a `docker save` tarball.

#![allow(dead_code, clippy::unwrap_used, clippy::cast_possible_truncation)] // test code

use std::io::Write;
use std::path::Path;

use serde_json::json;
use sha2::Digest as _;

pub const BUSYBOX: &str = "/bin/busybox";

/// One file of a layer.
#[derive(Clone)]
pub enum Item {
    Dir(&'static str),
    File(String, Vec<u8>, u32),
    Symlink(String, String),
}

pub struct Layer {
    pub items: Vec<Item>,
}

impl Layer {
    /// The busybox binary at /bin/busybox with /bin/sh and a few applets linked to it,
    /// and the directories a container needs.
    pub fn busybox() -> Layer {
        Layer::busybox_from(Path::new(BUSYBOX))
    }

    /// [`Layer::busybox`] with the busybox binary at `path` (another arch's, say).
    pub fn busybox_from(path: &Path) -> Layer {
        let mut items = vec![
            Item::Dir("bin"),
            Item::Dir("etc"),
            Item::Dir("proc"),
            Item::Dir("sys"),
            Item::Dir("dev"),
            Item::Dir("tmp"),
            Item::Dir("root"),
            Item::File("bin/busybox".into(), std::fs::read(path).unwrap(), 0o755),
            Item::File(
                "etc/passwd".into(),
                b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\napp:x:1000:1000:app:/tmp:/bin/sh\n".to_vec(),
                0o644,
            ),
            Item::File(
                "etc/group".into(),
                b"root:x:0:\nnogroup:x:65534:\napp:x:1000:\nextra:x:2000:app\n".to_vec(),
                0o644,
            ),
        ];
        for applet in [
            "sh", "ls", "cat", "echo", "sleep", "true", "false", "id", "hostname", "pwd", "env",
            "mount", "dd", "head", "grep", "sed", "wc", "ps", "kill", "date", "touch", "rm",
            "mkdir", "test", "yes", "seq",
        ] {
            items.push(Item::Symlink(format!("bin/{applet}"), "busybox".into()));
        }
        Layer { items }
    }

    pub fn files(files: &[(&str, &[u8])]) -> Layer {
        Layer {
            items: files
                .iter()
                .map(|(p, d)| Item::File((*p).to_string(), d.to_vec(), 0o644))
                .collect(),
        }
    }

    /// The uncompressed tar.
    pub fn tar(&self) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for item in &self.items {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(1_700_000_000);
            h.set_uid(0);
            h.set_gid(0);
            match item {
                Item::Dir(p) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    b.append_data(&mut h, format!("{p}/"), &[][..]).unwrap();
                }
                Item::File(p, data, mode) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*mode);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, p, &data[..]).unwrap();
                }
                Item::Symlink(p, target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    b.append_link(&mut h, p, target).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn sha(data: &[u8]) -> String {
    let d = sha2::Sha256::digest(data);
    format!(
        "sha256:{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// An image: layers plus the `config` object of its config (Cmd, Env, ...).
pub struct TestImage {
    pub layers: Vec<Layer>,
    pub config: serde_json::Value,
    pub arch: &'static str,
    pub variant: Option<&'static str>,
}

/// The blobs of one built image.
pub struct Built {
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
    /// (compressed blob, uncompressed tar)
    pub layers: Vec<(Vec<u8>, Vec<u8>)>,
}

impl TestImage {
    pub fn busybox(config: serde_json::Value) -> TestImage {
        TestImage {
            layers: vec![Layer::busybox()],
            config,
            arch: host_arch(),
            variant: None,
        }
    }

    /// The same image with Docker schema2 media types (as `docker push` writes).
    pub fn build_docker(&self) -> Built {
        let mut b = self.build();
        let mut m: serde_json::Value = serde_json::from_slice(&b.manifest).unwrap();
        m["mediaType"] = json!("application/vnd.docker.distribution.manifest.v2+json");
        m["config"]["mediaType"] = json!("application/vnd.docker.container.image.v1+json");
        for l in m["layers"].as_array_mut().unwrap() {
            l["mediaType"] = json!("application/vnd.docker.image.rootfs.diff.tar.gzip");
        }
        b.manifest = serde_json::to_vec(&m).unwrap();
        b
    }

    pub fn build(&self) -> Built {
        let layers: Vec<(Vec<u8>, Vec<u8>)> = self
            .layers
            .iter()
            .map(|l| {
                let t = l.tar();
                (gzip(&t), t)
            })
            .collect();
        let mut cfg = json!({
            "architecture": self.arch,
            "os": "linux",
            "config": self.config,
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|(_, t)| sha(t)).collect::<Vec<_>>(),
            },
        });
        if let Some(v) = self.variant {
            cfg["variant"] = json!(v);
        }
        let config = serde_json::to_vec(&cfg).unwrap();
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha(&config),
                "size": config.len(),
            },
            "layers": layers.iter().map(|(z, _)| json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": sha(z),
                "size": z.len(),
            })).collect::<Vec<_>>(),
        }))
        .unwrap();
        Built {
            config,
            manifest,
            layers,
        }
    }
}

pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        "arm" => "arm",
        _ => "amd64",
    }
}

fn add_file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    b.append_data(&mut h, path, data).unwrap();
}

fn blob_path(digest: &str) -> String {
    format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))
}

/// An OCI image-layout tarball holding one image named `name` (a full reference).
pub fn oci_layout_tar(img: &TestImage, name: &str) -> Vec<u8> {
    let built = img.build();
    let mut b = tar::Builder::new(Vec::new());
    add_file(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha(&built.manifest),
            "size": built.manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": name},
        }],
    });
    add_file(&mut b, "index.json", &serde_json::to_vec(&index).unwrap());
    add_file(&mut b, &blob_path(&sha(&built.manifest)), &built.manifest);
    add_file(&mut b, &blob_path(&sha(&built.config)), &built.config);
    for (z, _) in &built.layers {
        add_file(&mut b, &blob_path(&sha(z)), z);
    }
    b.into_inner().unwrap()
}

/// A `docker save` tarball (uncompressed layers, `manifest.json`) tagged `tags`.
pub fn docker_save_tar(img: &TestImage, tags: &[&str]) -> Vec<u8> {
    let built = img.build();
    let mut b = tar::Builder::new(Vec::new());
    let config_name = format!("{}.json", sha(&built.config).trim_start_matches("sha256:"));
    add_file(&mut b, &config_name, &built.config);
    let mut layer_names = Vec::new();
    for (i, (_, t)) in built.layers.iter().enumerate() {
        let n = format!("layer{i}/layer.tar");
        add_file(&mut b, &n, t);
        layer_names.push(n);
    }
    let manifest = json!([{
        "Config": config_name,
        "RepoTags": tags,
        "Layers": layer_names,
    }]);
    add_file(
        &mut b,
        "manifest.json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    b.into_inner().unwrap()
}

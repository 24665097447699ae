//! The image store through the library: loading `docker save` and OCI-layout tarballs,
//! names, removal and pruning, and tarballs that are broken or hostile. Needs root (the
//! unpacker sets owners and makes overlay whiteouts): marked ignored, so the runner reports
//! them skipped unless run as root.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // test code

mod support;

use serde_json::json;
use support::image::{docker_save_tar, oci_layout_tar, Layer, TestImage};
use swarmlet::image::load::load;
use swarmlet::image::oci::Platform;
use swarmlet::image::store::{Store, StoreError};

struct Dir(std::path::PathBuf);
impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("swarmlet-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        Dir(p)
    }
}
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn no_containers(_: &swarmlet::model::Digest) -> Option<String> {
    None
}

#[test]
#[ignore = "needs root: layers unpack with their owners"]
fn loads_both_tarball_kinds_and_removes_by_docker_rules() {
    let d = Dir::new("load");
    let store = Store::open(&d.0).unwrap();
    let img = TestImage::busybox(json!({"Cmd": ["/bin/sh"], "Env": ["A=1"]}));
    let loaded = load(
        &store,
        &oci_layout_tar(&img, "example.org/tools/bb:1")[..],
        &Platform::host(),
    )
    .unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].names, vec!["example.org/tools/bb:1".to_string()]);
    let rec = store.resolve("example.org/tools/bb:1").unwrap();
    assert_eq!(rec.id, loaded[0].id);
    assert_eq!(rec.config.config.cmd, Some(vec!["/bin/sh".to_string()]));
    let layer = store.layer_path(&rec.layers[0].diff_id);
    assert!(layer.join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read_link(layer.join("bin/sh")).unwrap().to_str(),
        Some("busybox")
    );
    // By id prefix too.
    assert_eq!(store.resolve(&rec.id.hex()[..8]).unwrap().id, rec.id);

    // The same image from `docker save`, with two tags: the layer is shared, not
    // unpacked twice; the image id (config digest) is the same.
    let loaded2 = load(
        &store,
        &docker_save_tar(&img, &["bb:latest", "bb:2"])[..],
        &Platform::host(),
    )
    .unwrap();
    assert_eq!(loaded2[0].id, rec.id);
    assert_eq!(std::fs::read_dir(d.0.join("layers")).unwrap().count(), 1);
    let (_, names) = &store.list().unwrap()[0];
    assert_eq!(names.len(), 3, "{names:?}");

    // rm of one of several names only untags; an id with several names needs force.
    let out = store.remove("bb:2", false, &no_containers).unwrap();
    assert_eq!(out, vec!["Untagged: docker.io/library/bb:2".to_string()]);
    let err = store
        .remove(&rec.id.to_string(), false, &no_containers)
        .unwrap_err();
    assert!(err.to_string().contains("must be forced"), "{err}");
    // An image a container uses is not removed.
    let used = |_: &swarmlet::model::Digest| Some("c0ffee".to_string());
    store.remove("bb", false, &no_containers).unwrap();
    let err = store
        .remove("example.org/tools/bb:1", false, &used)
        .unwrap_err();
    assert!(matches!(err, StoreError::InUse { .. }), "{err}");
    let out = store
        .remove("example.org/tools/bb:1", false, &no_containers)
        .unwrap();
    assert!(
        out.last().unwrap().starts_with("Deleted: sha256:"),
        "{out:?}"
    );
    assert!(store.list().unwrap().is_empty());
    assert_eq!(
        std::fs::read_dir(d.0.join("layers")).unwrap().count(),
        0,
        "layer collected"
    );
    assert!(matches!(store.resolve("bb"), Err(StoreError::NotFound(_))));
}

#[test]
#[ignore = "needs root: layers unpack with their owners"]
fn prune_removes_unnamed_images_and_their_layers() {
    let d = Dir::new("prune");
    let store = Store::open(&d.0).unwrap();
    let a = TestImage::busybox(json!({"Cmd": ["a"]}));
    let mut b = TestImage::busybox(json!({"Cmd": ["b"]}));
    b.layers.push(Layer::files(&[("only-b", b"b")]));
    load(
        &store,
        &docker_save_tar(&a, &["a:1"])[..],
        &Platform::host(),
    )
    .unwrap();
    load(&store, &docker_save_tar(&b, &[])[..], &Platform::host()).unwrap();
    assert_eq!(store.list().unwrap().len(), 2);
    assert_eq!(std::fs::read_dir(d.0.join("layers")).unwrap().count(), 2);
    let removed = store.prune(false, &no_containers).unwrap();
    assert_eq!(removed.len(), 1);
    assert_eq!(store.list().unwrap().len(), 1);
    assert_eq!(
        std::fs::read_dir(d.0.join("layers")).unwrap().count(),
        1,
        "b's own layer went, the shared one stayed"
    );
    assert_eq!(store.prune(true, &no_containers).unwrap().len(), 1);
    assert!(store.list().unwrap().is_empty());
}

#[test]
#[ignore = "needs root: layers unpack with their owners"]
fn broken_and_hostile_tarballs_are_refused_and_leave_nothing() {
    let d = Dir::new("bad");
    let store = Store::open(&d.0).unwrap();
    let host = Platform::host();
    // Not a tarball at all, and a tarball that is not an image.
    let err = load(&store, &b"hello, not a tar"[..], &host).unwrap_err();
    assert!(err.to_string().contains("image tarball"), "{err}");
    let mut t = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(2);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    t.append_data(&mut h, "readme", &b"hi"[..]).unwrap();
    let err = load(&store, &t.into_inner().unwrap()[..], &host).unwrap_err();
    assert!(err.to_string().contains("neither index.json"), "{err}");

    // docker save whose manifest.json points a layer outside the tarball.
    let img = TestImage::busybox(json!({}));
    let good = docker_save_tar(&img, &["x:1"]);
    let mut t = tar::Builder::new(Vec::new());
    for e in tar::Archive::new(&good[..]).entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        if path.to_str() == Some("manifest.json") {
            data = String::from_utf8(data)
                .unwrap()
                .replace("layer0/layer.tar", "../../../etc/passwd")
                .into_bytes();
        }
        let mut h = e.header().clone();
        h.set_size(data.len() as u64);
        t.append_data(&mut h, &path, &data[..]).unwrap();
    }
    let err = load(&store, &t.into_inner().unwrap()[..], &host).unwrap_err();
    assert!(err.to_string().contains("outside the tarball"), "{err}");

    // A layer whose content does not match the config's diff id.
    let mut liar = TestImage::busybox(json!({}));
    liar.layers.push(Layer::files(&[("x", b"x")]));
    let tarball = oci_layout_tar(&liar, "liar:1");
    let tampered = tamper_layer(&tarball);
    let err = load(&store, &tampered[..], &host).unwrap_err();
    assert!(err.to_string().contains("digest mismatch"), "{err}");

    // No half image was left: no image record, nothing in tmp. The liar's first layer
    // was whole and verified, so it stays for a later pull to reuse, until a prune.
    assert!(store.list().unwrap().is_empty());
    assert_eq!(std::fs::read_dir(d.0.join("tmp")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(d.0.join("layers")).unwrap().count(), 1);
    store.prune(false, &no_containers).unwrap();
    assert_eq!(std::fs::read_dir(d.0.join("layers")).unwrap().count(), 0);
}

/// Replaces the last (smallest) layer blob of an OCI layout with other content under
/// the same name.
fn tamper_layer(tarball: &[u8]) -> Vec<u8> {
    let mut entries: Vec<(String, Vec<u8>, tar::Header)> = Vec::new();
    for e in tar::Archive::new(tarball).entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        entries.push((path, data, e.header().clone()));
    }
    let smallest = entries
        .iter()
        .enumerate()
        .filter(|(_, (p, d, _))| p.starts_with("blobs/") && d.starts_with(&[0x1f, 0x8b]))
        .min_by_key(|(_, (_, d, _))| d.len())
        .unwrap()
        .0;
    let mut other = Layer::files(&[("x", b"y")]).tar();
    other = support::image::gzip(&other);
    entries[smallest].1 = other;
    let mut t = tar::Builder::new(Vec::new());
    for (p, d, mut h) in entries {
        h.set_size(d.len() as u64);
        t.append_data(&mut h, p, &d[..]).unwrap();
    }
    t.into_inner().unwrap()
}

/// A small tmpfs mounted for one test, unmounted (and its mount point removed) when
/// dropped, also when the test fails.
struct SmallFs(std::path::PathBuf);
impl SmallFs {
    fn mount(tag: &str, size: &str) -> SmallFs {
        let d = Dir::new(tag);
        std::fs::create_dir_all(&d.0).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&d.0)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs");
        let p = d.0.clone();
        std::mem::forget(d); // SmallFs removes it after the unmount
        SmallFs(p)
    }
}
impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
#[ignore = "needs root"]
fn a_full_disk_is_reported_as_such() {
    let fs = SmallFs::mount("full", "1m");
    let store = Store::open(&fs.0.join("images")).unwrap();
    let img = TestImage::busybox(json!({}));
    let err = load(&store, &oci_layout_tar(&img, "bb:1")[..], &Platform::host())
        .unwrap_err()
        .to_string();
    assert!(err.contains("No space left on device"), "{err}");
    assert!(!err.contains("not a readable tar archive"), "{err}");
    assert!(
        err.contains(&fs.0.display().to_string()),
        "names where: {err}"
    );
    assert_eq!(
        std::fs::read_dir(fs.0.join("images/tmp")).unwrap().count(),
        0,
        "nothing left behind"
    );
}

/// Replaces every gzip layer blob of an OCI layout with the same tar compressed
/// otherwise: the diff id still matches, the digest the manifest names does not.
fn recompress_layers(tarball: &[u8]) -> Vec<u8> {
    let mut t = tar::Builder::new(Vec::new());
    for e in tar::Archive::new(tarball).entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        if path.starts_with("blobs/") && data.starts_with(&[0x1f, 0x8b]) {
            let mut inner = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&data[..]), &mut inner)
                .unwrap();
            let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            std::io::Write::write_all(&mut z, &inner).unwrap();
            let other = z.finish().unwrap();
            assert_ne!(other, data);
            data = other;
        }
        let mut h = e.header().clone();
        h.set_size(data.len() as u64);
        t.append_data(&mut h, &path, &data[..]).unwrap();
    }
    t.into_inner().unwrap()
}

#[test]
#[ignore = "needs root"]
fn an_oci_layer_blob_must_match_its_manifest_digest() {
    let d = Dir::new("blobdigest");
    let store = Store::open(&d.0).unwrap();
    let host = Platform::host();
    let img = TestImage::busybox(json!({}));
    let liar = recompress_layers(&oci_layout_tar(&img, "example.org/liar:1"));
    // In an empty store, and in one that already has the layer (its diff id matches).
    for round in ["empty store", "layer already stored"] {
        let err = load(&store, &liar[..], &host).unwrap_err().to_string();
        assert!(err.contains("digest mismatch"), "{round}: {err}");
        assert!(
            matches!(
                store.resolve("example.org/liar:1"),
                Err(StoreError::NotFound(_))
            ),
            "{round}"
        );
        load(&store, &oci_layout_tar(&img, "example.org/ok:1")[..], &host).unwrap();
        store
            .remove("example.org/ok:1", false, &no_containers)
            .unwrap();
        load(&store, &docker_save_tar(&img, &["keep:1"])[..], &host).unwrap();
    }
}

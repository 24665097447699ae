//! `image load`: images from a `docker save` tarball or an OCI image-layout tarball, for
//! boxes with no registry in reach. The tarball is first unpacked (by the same confined
//! unpacker as layers) into the store's tmp dir, then read from there.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::oci::{self, Compression, Descriptor, ImageConfig, Index, Manifest, Platform};
use super::reference::Reference;
use super::store::{now_secs, remove_any, unique, ImageRecord, LayerRecord, Store, StoreError};
use super::unpack::{unpack, UnpackError};
use crate::model::Digest;

/// One loaded image: its id and the names it got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    pub id: Digest,
    pub names: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn bad(msg: impl Into<String>) -> StoreError {
    StoreError::Tarball(msg.into())
}

/// Loads every image in the tarball `r`. For an OCI layout holding a multi-platform
/// index, the entry for `platform` is taken.
pub fn load(store: &Store, r: impl Read, platform: &Platform) -> Result<Vec<Loaded>, StoreError> {
    let dir = store.tmp_dir().join(format!("load-{}", unique()));
    std::fs::create_dir(&dir).map_err(|e| StoreError::Io(dir.display().to_string(), e))?;
    let res = (|| {
        unpack(r, &dir).map_err(|e| match e {
            // Writing failed (a full disk, say): not the tarball's fault.
            UnpackError::Entry(name, cause) => StoreError::Io(
                format!("unpacking tarball entry {name:?} into {}", dir.display()),
                cause,
            ),
            UnpackError::Read(_) => bad(format!("not a readable tar archive: {e}")),
            e => bad(e.to_string()),
        })?;
        if dir.join("index.json").is_file() {
            load_oci(store, &dir, platform)
        } else if dir.join("manifest.json").is_file() {
            load_docker(store, &dir)
        } else {
            Err(bad(
                "not an image: it has neither index.json (OCI layout) nor manifest.json (docker save)",
            ))
        }
    })();
    let _ = remove_any(&dir);
    res
}

fn read(dir: &Path, rel: &str) -> Result<Vec<u8>, StoreError> {
    let p = inside(dir, rel)?;
    std::fs::read(&p).map_err(|e| bad(format!("{rel}: {e}")))
}

/// `rel` joined to `dir`, refusing names that climb out.
fn inside(dir: &Path, rel: &str) -> Result<PathBuf, StoreError> {
    if rel.starts_with('/') || rel.split('/').any(|c| c == "..") {
        return Err(bad(format!("path {rel:?} points outside the tarball")));
    }
    Ok(dir.join(rel))
}

fn blob_rel(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// Reads a blob named by digest and checks it.
fn read_blob(dir: &Path, d: &Digest) -> Result<Vec<u8>, StoreError> {
    let b = read(dir, &blob_rel(d))?;
    let got = Digest::of(&b);
    if got != *d {
        return Err(StoreError::Digest {
            what: blob_rel(d),
            expected: *d,
            got,
        });
    }
    Ok(b)
}

fn add_layer_file(
    store: &Store,
    path: &Path,
    blob: Option<Digest>,
    diff_id: Digest,
) -> Result<u64, StoreError> {
    let mut f = std::fs::File::open(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic).map_err(|e| bad(e.to_string()))?;
    let compression = if n == 2 && magic == [0x1f, 0x8b] {
        Compression::Gzip
    } else {
        Compression::None
    };
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    let f = std::fs::File::open(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    store.add_layer(f, compression, blob, Some(diff_id))?;
    Ok(size)
}

fn load_oci(store: &Store, dir: &Path, platform: &Platform) -> Result<Vec<Loaded>, StoreError> {
    let index: Index = serde_json::from_slice(&read(dir, "index.json")?)
        .map_err(|e| bad(format!("index.json: {e}")))?;
    let mut out = Vec::new();
    for desc in &index.manifests {
        let names = oci_names(desc);
        let manifest_desc = if oci::is_index(&desc.media_type) {
            let inner: Index = serde_json::from_slice(&read_blob(dir, &desc.digest)?)
                .map_err(|e| bad(format!("index {}: {e}", desc.digest)))?;
            pick_platform(&inner.manifests, platform)
                .ok_or_else(|| {
                    bad(format!(
                        "no image for {platform} in index {} (it has: {})",
                        desc.digest,
                        platforms_of(&inner.manifests)
                    ))
                })?
                .clone()
        } else {
            desc.clone()
        };
        let mbytes = read_blob(dir, &manifest_desc.digest)?;
        let manifest: Manifest = serde_json::from_slice(&mbytes)
            .map_err(|e| bad(format!("manifest {}: {e}", manifest_desc.digest)))?;
        let cbytes = read_blob(dir, &manifest.config.digest)?;
        let config: ImageConfig = serde_json::from_slice(&cbytes)
            .map_err(|e| bad(format!("config {}: {e}", manifest.config.digest)))?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(bad(format!(
                "manifest {} has {} layers but its config lists {}",
                manifest_desc.digest,
                manifest.layers.len(),
                config.rootfs.diff_ids.len()
            )));
        }
        let mut layers = Vec::new();
        for (l, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
            let path = inside(dir, &blob_rel(&l.digest))?;
            add_layer_file(store, &path, Some(l.digest), *diff_id)?;
            layers.push(LayerRecord {
                diff_id: *diff_id,
                blob: l.digest,
                size: l.size,
            });
        }
        store.put_blob(&cbytes)?;
        let mdigest = store.put_blob(&mbytes)?;
        let rec = ImageRecord {
            id: manifest.config.digest,
            manifest: Some(mdigest),
            config,
            layers,
            added: now_secs(),
        };
        store.commit(&rec, &names)?;
        out.push(Loaded { id: rec.id, names });
    }
    if out.is_empty() {
        return Err(bad("index.json lists no images"));
    }
    Ok(out)
}

/// Names an OCI layout gives an image: containerd's full name annotation, or the
/// standard ref name when it is a whole reference (a bare tag names no repository).
fn oci_names(desc: &Descriptor) -> Vec<String> {
    [
        "io.containerd.image.name",
        "org.opencontainers.image.ref.name",
    ]
    .iter()
    .filter_map(|k| desc.annotations.get(*k))
    .filter(|v| v.contains('/') || v.contains(':'))
    .filter_map(|v| Reference::parse(v).ok())
    .map(|r| r.to_string())
    .take(1)
    .collect()
}

pub fn pick_platform<'a>(entries: &'a [Descriptor], want: &Platform) -> Option<&'a Descriptor> {
    entries
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|p| p == want))
        .or_else(|| {
            entries
                .iter()
                .find(|d| d.platform.as_ref().is_some_and(|p| want.matches(p)))
        })
}

pub fn platforms_of(entries: &[Descriptor]) -> String {
    let v: Vec<String> = entries
        .iter()
        .filter_map(|d| d.platform.as_ref().map(ToString::to_string))
        .collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn load_docker(store: &Store, dir: &Path) -> Result<Vec<Loaded>, StoreError> {
    let entries: Vec<SaveEntry> = serde_json::from_slice(&read(dir, "manifest.json")?)
        .map_err(|e| bad(format!("manifest.json: {e}")))?;
    if entries.is_empty() {
        return Err(bad("manifest.json lists no images"));
    }
    let mut out = Vec::new();
    for e in entries {
        let cbytes = read(dir, &e.config)?;
        let id = Digest::of(&cbytes);
        let config: ImageConfig = serde_json::from_slice(&cbytes)
            .map_err(|err| bad(format!("config {}: {err}", e.config)))?;
        if config.rootfs.diff_ids.len() != e.layers.len() {
            return Err(bad(format!(
                "{} lists {} layers but its config {}",
                e.config,
                e.layers.len(),
                config.rootfs.diff_ids.len()
            )));
        }
        let mut layers = Vec::new();
        for (rel, diff_id) in e.layers.iter().zip(&config.rootfs.diff_ids) {
            let path = inside(dir, rel)?;
            let size = add_layer_file(store, &path, None, *diff_id)?;
            layers.push(LayerRecord {
                diff_id: *diff_id,
                blob: *diff_id,
                size,
            });
        }
        let mut names = Vec::new();
        for t in e.repo_tags.unwrap_or_default() {
            let r = Reference::parse(&t).map_err(|err| bad(err.to_string()))?;
            names.push(r.to_string());
        }
        store.put_blob(&cbytes)?;
        let rec = ImageRecord {
            id,
            manifest: None,
            config,
            layers,
            added: now_secs(),
        };
        store.commit(&rec, &names)?;
        out.push(Loaded { id, names });
    }
    Ok(out)
}

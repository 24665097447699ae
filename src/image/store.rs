//! The content-addressed image store under `<data-dir>/images`:
//!
//! ```text
//! blobs/sha256/<hex>     manifests, indexes and configs, checked against their digest
//!                        on every read (a corrupt one is deleted and fetched again)
//! layers/<diff id hex>/  unpacked layers, shared by every image that has them; a
//!                        directory exists only once its layer was completely unpacked
//!                        and its digests matched (built in tmp/, then renamed)
//! images/<id hex>.json   one record per image (id = config digest)
//! repositories.json      names (`docker.io/library/busybox:latest`, `name@digest`) -> id
//! tmp/                   downloads and unpacks in progress; emptied when the store opens
//! ```
//!
//! A pull or load writes blobs and layers first and the image record and names last, so
//! an interruption at any point leaves no half image: only unreferenced pieces that the
//! next pull reuses (or `image prune` removes).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use thiserror::Error;

use super::oci::{Compression, ImageConfig, Platform};
use super::reference::Reference;
use super::unpack::{unpack, UnpackError};
use crate::model::Digest;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{0}: {1}")]
    Io(String, io::Error),
    #[error("{0}")]
    Unpack(#[from] UnpackError),
    #[error("{what} digest mismatch: expected {expected}, got {got}")]
    Digest {
        what: String,
        expected: Digest,
        got: Digest,
    },
    #[error("No such image: {0}")]
    NotFound(String),
    #[error("{0} is ambiguous: it matches several images")]
    Ambiguous(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("conflict: unable to remove {name}: image is used by container {container}")]
    InUse { name: String, container: String },
    #[error("image tarball: {0}")]
    Tarball(String),
    #[error("store file {0} is corrupt: {1}")]
    Corrupt(String, String),
}

fn io_err(what: impl AsRef<Path>) -> impl FnOnce(io::Error) -> StoreError {
    let what = what.as_ref().display().to_string();
    move |e| StoreError::Io(what, e)
}

/// One layer of an image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Digest of the uncompressed tar: names the unpacked directory.
    pub diff_id: Digest,
    /// Digest and size of the blob as distributed (compressed), for `inspect`.
    pub blob: Digest,
    pub size: u64,
}

/// What the store knows of one image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The config digest, as Docker's image id.
    pub id: Digest,
    /// The manifest the image came from (None for a `docker save` tarball without one).
    pub manifest: Option<Digest>,
    pub config: ImageConfig,
    pub layers: Vec<LayerRecord>,
    /// Seconds since the epoch when it was pulled or loaded.
    pub added: u64,
}

impl ImageRecord {
    pub fn platform(&self) -> Platform {
        Platform {
            architecture: self.config.architecture.clone(),
            os: self.config.os.clone(),
            variant: self.config.variant.clone(),
        }
    }

    /// Unpacked size of all layers is not tracked; this is the distributed size.
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

pub struct Store {
    root: PathBuf,
    /// Serialises changes to `repositories.json` and the image records (one daemon owns
    /// a store; this guards its own threads).
    names: Mutex<()>,
    /// Layers (by blob digest) a pull in this process is fetching: a second pull of
    /// the same layer waits for the first instead of writing the same partial file
    /// (two replicas of one service starting on a node pull the same image at once).
    fetching: Mutex<BTreeSet<Digest>>,
    fetched: std::sync::Condvar,
}

/// Layers claimed by one pull; released (and waiters woken) when dropped.
pub struct LayerClaim<'a> {
    store: &'a Store,
    digests: Vec<Digest>,
}

impl Drop for LayerClaim<'_> {
    fn drop(&mut self) {
        let mut f = self
            .store
            .fetching
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for d in &self.digests {
            f.remove(d);
        }
        self.store.fetched.notify_all();
    }
}

/// Inflated bytes per chunk handed to the tar side (below the allocators' mmap
/// threshold, so chunks come from the heap's free lists).
const INFLATE_CHUNK: usize = 64 << 10;
/// Chunks the inflater may run ahead of the tar side: 512 KiB per layer.
const INFLATED_AHEAD: usize = 8;

/// Inflates a gzip stream from `r` into `tx` in chunks; `End` once it is whole. A
/// receiver that hung up ends it quietly (the tar side has its own error to tell).
fn inflate(r: &mut impl Read, tx: &std::sync::mpsc::SyncSender<Chunk>) -> io::Result<()> {
    let mut gz = flate2::read::GzDecoder::new(r);
    loop {
        let mut chunk = vec![0u8; INFLATE_CHUNK];
        let n = gz.read(&mut chunk)?;
        if n == 0 {
            let _ = tx.send(Chunk::End);
            return Ok(());
        }
        chunk.truncate(n);
        if tx.send(Chunk::Data(chunk)).is_err() {
            return Ok(());
        }
    }
}

/// A layer unpacked and checked but not yet named (see [`Store::unpack_layer`]). Its work
/// directory is removed if it is dropped uncommitted.
#[derive(Debug)]
pub struct UnpackedLayer {
    work: PathBuf,
    pub diff_id: Digest,
}

impl Drop for UnpackedLayer {
    fn drop(&mut self) {
        if !self.work.as_os_str().is_empty() {
            let _ = remove_any(&self.work);
        }
    }
}

impl Store {
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        for d in ["blobs/sha256", "layers", "images", "tmp"] {
            std::fs::create_dir_all(root.join(d)).map_err(io_err(root.join(d)))?;
        }
        // Whatever was in progress when the last process stopped is garbage now.
        let tmp = root.join("tmp");
        for e in std::fs::read_dir(&tmp).map_err(io_err(&tmp))?.flatten() {
            // Partial downloads are kept for resuming; half-unpacked layers are not.
            let p = e.path();
            if p.extension().is_some_and(|x| x == "partial") {
                continue;
            }
            let _ = remove_any(&p);
        }
        Ok(Store {
            root: root.to_path_buf(),
            names: Mutex::new(()),
            fetching: Mutex::new(BTreeSet::new()),
            fetched: std::sync::Condvar::new(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Claims layers to fetch, all at once, once no other pull of this process is
    /// fetching any of them (all or nothing, so two pulls never wait on each other).
    /// The caller checks again which it still lacks: the pull it waited for may have
    /// brought them.
    pub fn claim_layers(&self, digests: &[Digest]) -> LayerClaim<'_> {
        let mut f = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
        while digests.iter().any(|d| f.contains(d)) {
            f = self.fetched.wait(f).unwrap_or_else(|p| p.into_inner());
        }
        f.extend(digests.iter().copied());
        LayerClaim {
            store: self,
            digests: digests.to_vec(),
        }
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    pub fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(diff_id.hex())
    }

    pub fn has_layer(&self, diff_id: &Digest) -> bool {
        self.layer_path(diff_id).is_dir()
    }

    /// Stores a small blob (manifest, index, config) under its digest.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        let d = Digest::of(bytes);
        let path = self.blob_path(&d);
        if self.get_blob(&d)?.is_none() {
            write_atomic(&path, &self.tmp_dir(), bytes)?;
        }
        Ok(d)
    }

    /// A blob, if present and intact. A blob whose content no longer matches its digest
    /// (disk corruption) is deleted and reported missing, so it is fetched again.
    pub fn get_blob(&self, d: &Digest) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.blob_path(d);
        match std::fs::read(&path) {
            Ok(b) if Digest::of(&b) == *d => Ok(Some(b)),
            Ok(_) => {
                std::fs::remove_file(&path).map_err(io_err(&path))?;
                Ok(None)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Unpacks a layer from `r` (compressed as `compression`) unless it is already
    /// present, checking the blob digest (if given) and the uncompressed digest (if
    /// given). Returns the diff id. Nothing appears under `layers/` unless both match.
    pub fn add_layer(
        &self,
        r: impl Read + Send,
        compression: Compression,
        blob: Option<Digest>,
        diff_id: Option<Digest>,
    ) -> Result<Digest, StoreError> {
        if let Some(d) = diff_id {
            if self.has_layer(&d) {
                // Not unpacked again, but the blob must still be what its name says:
                // a record would otherwise carry a digest no one checked.
                if let Some(expected) = blob {
                    let mut h = HashingReader::new(r);
                    io::copy(&mut h, &mut io::sink()).map_err(io_err("layer stream"))?;
                    let got = h.finish();
                    if got != expected {
                        return Err(StoreError::Digest {
                            what: "layer blob".into(),
                            expected,
                            got,
                        });
                    }
                }
                return Ok(d);
            }
        }
        let u = self.unpack_layer(r, compression, blob, diff_id)?;
        let got = u.diff_id;
        self.commit_layers(vec![u])?;
        Ok(got)
    }

    /// The first half of [`Store::add_layer`]: unpacks and checks the layer into a work
    /// directory under tmp/, which [`Store::commit_layers`] makes durable and names.
    /// Several layers unpacked this way share one filesystem sync.
    pub fn unpack_layer(
        &self,
        r: impl Read + Send,
        compression: Compression,
        blob: Option<Digest>,
        diff_id: Option<Digest>,
    ) -> Result<UnpackedLayer, StoreError> {
        let work = self.tmp_dir().join(format!("layer-{}", unique()));
        std::fs::create_dir(&work).map_err(io_err(&work))?;
        // From here the work directory goes away on every path but a commit.
        let mut u = UnpackedLayer {
            work,
            diff_id: Digest([0; 32]),
        };
        let mut outer = HashingReader::new(r);
        let got_diff = match compression {
            Compression::Gzip => {
                // Inflating is the costliest step: it gets a thread of its own, and the
                // tar side (diff id hash, file writes) runs beside it.
                let (tx, rx) = std::sync::mpsc::sync_channel::<Chunk>(INFLATED_AHEAD);
                std::thread::scope(|s| {
                    // The sender moves into the inflater: when it ends, by error or
                    // not, the tar side's reads end too.
                    let outer = &mut outer;
                    let inflater = s.spawn(move || inflate(outer, &tx));
                    let mut inner = HashingReader::new(ChannelReader::new(rx));
                    // The tar end marker may be followed by padding: hash it too.
                    let unpacked = unpack(&mut inner, &u.work)
                        .map_err(StoreError::from)
                        .and_then(|_| {
                            io::copy(&mut inner, &mut io::sink())
                                .map(drop)
                                .map_err(io_err("layer stream"))
                        });
                    // Gone before the join: an inflater blocked on a full channel wakes.
                    drop(inner.inner);
                    let inflated = inflater
                        .join()
                        .unwrap_or_else(|_| Err(io::Error::other("the inflating thread panicked")));
                    // A corrupt gzip stream is the cause of whatever the tar side saw.
                    inflated.map_err(io_err("layer stream (gzip)"))?;
                    unpacked?;
                    Ok::<_, StoreError>(Digest(inner.hash.finalize().into()))
                })?
            }
            Compression::None => {
                unpack(&mut outer, &u.work)?;
                io::copy(&mut outer, &mut io::sink()).map_err(io_err("layer stream"))?;
                outer.clone_digest()
            }
        };
        io::copy(&mut outer, &mut io::sink()).map_err(io_err("layer stream"))?;
        let got_blob = outer.finish();
        if let Some(expected) = blob {
            if got_blob != expected {
                return Err(StoreError::Digest {
                    what: "layer blob".into(),
                    expected,
                    got: got_blob,
                });
            }
        }
        if let Some(expected) = diff_id {
            if got_diff != expected {
                return Err(StoreError::Digest {
                    what: "layer content (diff id)".into(),
                    expected,
                    got: got_diff,
                });
            }
        }
        u.diff_id = got_diff;
        Ok(u)
    }

    /// Names unpacked layers under `layers/`, after one sync of the filesystem: after a
    /// power cut a layer is either whole or absent (edge boxes lose power).
    pub fn commit_layers(&self, mut layers: Vec<UnpackedLayer>) -> Result<(), StoreError> {
        layers.retain(|u| {
            // Another pull may have got there first.
            !self.layer_path(&u.diff_id).is_dir()
        });
        let Some(first) = layers.first() else {
            return Ok(());
        };
        let fd = std::fs::File::open(&first.work).map_err(io_err(&first.work))?;
        rustix::fs::syncfs(&fd).map_err(|e| io_err(&first.work)(e.into()))?;
        for u in &mut layers {
            let dest = self.layer_path(&u.diff_id);
            std::fs::rename(&u.work, &dest).map_err(io_err(&dest))?;
            u.work = PathBuf::new();
        }
        sync_dir(&self.root.join("layers"));
        Ok(())
    }

    /// Records an image and points `names` at it. Every layer must be present.
    pub fn commit(&self, record: &ImageRecord, names: &[String]) -> Result<(), StoreError> {
        for l in &record.layers {
            if !self.has_layer(&l.diff_id) {
                return Err(StoreError::NotFound(format!("layer {}", l.diff_id)));
            }
        }
        let _g = self.names.lock().unwrap_or_else(|p| p.into_inner());
        let path = self
            .root
            .join("images")
            .join(format!("{}.json", record.id.hex()));
        let json = serde_json::to_vec_pretty(record).expect("invariant: record serialises");
        write_atomic(&path, &self.tmp_dir(), &json)?;
        let mut repos = self.repositories()?;
        for n in names {
            repos.insert(n.clone(), record.id);
        }
        self.save_repositories(&repos)
    }

    fn repositories(&self) -> Result<BTreeMap<String, Digest>, StoreError> {
        let path = self.root.join("repositories.json");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let raw: BTreeMap<String, String> = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Corrupt(path.display().to_string(), e.to_string()))?;
        raw.into_iter()
            .map(|(k, v)| {
                Digest::parse(&v).map(|d| (k, d)).ok_or_else(|| {
                    StoreError::Corrupt(path.display().to_string(), format!("bad id {v:?}"))
                })
            })
            .collect()
    }

    fn save_repositories(&self, repos: &BTreeMap<String, Digest>) -> Result<(), StoreError> {
        let raw: BTreeMap<&String, String> =
            repos.iter().map(|(k, v)| (k, v.to_string())).collect();
        let json = serde_json::to_vec_pretty(&raw).expect("invariant: map serialises");
        write_atomic(&self.root.join("repositories.json"), &self.tmp_dir(), &json)
    }

    fn record(&self, id: &Digest) -> Result<Option<ImageRecord>, StoreError> {
        let path = self.root.join("images").join(format!("{}.json", id.hex()));
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(path.display().to_string(), e.to_string())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Every image with the names pointing at it.
    pub fn list(&self) -> Result<Vec<(ImageRecord, Vec<String>)>, StoreError> {
        let repos = self.repositories()?;
        let dir = self.root.join("images");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(hex) = name.strip_suffix(".json") else {
                continue;
            };
            let Some(id) = Digest::parse(&format!("sha256:{hex}")) else {
                continue;
            };
            if let Some(r) = self.record(&id)? {
                let names = repos
                    .iter()
                    .filter(|(_, v)| **v == id)
                    .map(|(k, _)| k.clone())
                    .collect();
                out.push((r, names));
            }
        }
        out.sort_by(|a, b| b.0.added.cmp(&a.0.added).then(a.0.id.cmp(&b.0.id)));
        Ok(out)
    }

    /// Finds an image by name (`busybox`, `busybox:1`, `reg/x@sha256:..`), by full id
    /// (`sha256:<hex>`) or by a unique id prefix of at least 4 hex digits.
    pub fn resolve(&self, what: &str) -> Result<ImageRecord, StoreError> {
        let repos = self.repositories()?;
        if let Ok(r) = Reference::parse(what) {
            if let Some(id) = repos.get(&r.to_string()) {
                if let Some(rec) = self.record(id)? {
                    return Ok(rec);
                }
            }
            if let (Some(d), Some(_)) = (r.digest, &r.tag) {
                // `name:tag@digest`: the digest decides.
                let key = format!("{}@{d}", r.name());
                if let Some(id) = repos.get(&key) {
                    if let Some(rec) = self.record(id)? {
                        return Ok(rec);
                    }
                }
            }
        }
        let hex = what.strip_prefix("sha256:").unwrap_or(what);
        if hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hex = hex.to_ascii_lowercase();
            let all = self.list()?;
            let hits: Vec<_> = all
                .into_iter()
                .filter(|(r, _)| r.id.hex().starts_with(&hex))
                .collect();
            match hits.len() {
                1 => return Ok(hits.into_iter().next().expect("one").0),
                0 => {}
                _ => return Err(StoreError::Ambiguous(what.to_string())),
            }
        }
        Err(StoreError::NotFound(what.to_string()))
    }

    /// `image rm`, with Docker's rules: a name of an image that has other names is just
    /// untagged; otherwise every name goes and so does the image, unless a container
    /// uses it (refused without `force`; with it, the names go and the image stays until
    /// the container is removed). An id naming an image with several names needs `force`.
    /// Returns what happened, in Docker's words.
    pub fn remove(
        &self,
        what: &str,
        force: bool,
        in_use: &dyn Fn(&Digest) -> Option<String>,
    ) -> Result<Vec<String>, StoreError> {
        let rec = self.resolve(what)?;
        let g = self.names.lock().unwrap_or_else(|p| p.into_inner());
        let mut repos = self.repositories()?;
        let names: Vec<String> = repos
            .iter()
            .filter(|(_, v)| **v == rec.id)
            .map(|(k, _)| k.clone())
            .collect();
        let tags = names.iter().filter(|n| !n.contains('@')).count();
        let by_name = Reference::parse(what)
            .ok()
            .map(|r| r.to_string())
            .filter(|n| names.contains(n));
        let user = in_use(&rec.id);
        let untag = match by_name {
            Some(n) if tags > 1 => vec![n],
            _ => {
                if tags > 1 && !force {
                    return Err(StoreError::Conflict(format!(
                        "unable to delete {} (must be forced): image is referenced in multiple repositories",
                        &rec.id.hex()[..12]
                    )));
                }
                if let (Some(c), false) = (&user, force) {
                    return Err(StoreError::InUse {
                        name: what.to_string(),
                        container: c.clone(),
                    });
                }
                names
            }
        };
        let mut out = Vec::new();
        for n in &untag {
            repos.remove(n);
            out.push(format!("Untagged: {n}"));
        }
        self.save_repositories(&repos)?;
        if user.is_none() && !repos.values().any(|v| *v == rec.id) {
            let path = self
                .root
                .join("images")
                .join(format!("{}.json", rec.id.hex()));
            std::fs::remove_file(&path).map_err(io_err(&path))?;
            out.push(format!("Deleted: {}", rec.id));
            drop(g);
            self.collect_garbage()?;
        }
        Ok(out)
    }

    /// `image prune`: removes images with no name (with `all`, every image no container
    /// uses), then layers and blobs nothing refers to. Returns the removed image ids.
    pub fn prune(
        &self,
        all: bool,
        in_use: &dyn Fn(&Digest) -> Option<String>,
    ) -> Result<Vec<Digest>, StoreError> {
        let mut removed = Vec::new();
        {
            let _g = self.names.lock().unwrap_or_else(|p| p.into_inner());
            let mut repos = self.repositories()?;
            for (rec, names) in self.list()? {
                if in_use(&rec.id).is_some() || (!all && !names.is_empty()) {
                    continue;
                }
                repos.retain(|_, v| *v != rec.id);
                let path = self
                    .root
                    .join("images")
                    .join(format!("{}.json", rec.id.hex()));
                std::fs::remove_file(&path).map_err(io_err(&path))?;
                removed.push(rec.id);
            }
            self.save_repositories(&repos)?;
        }
        self.collect_garbage()?;
        Ok(removed)
    }

    /// Deletes layers and blobs that no image record refers to.
    fn collect_garbage(&self) -> Result<(), StoreError> {
        let _g = self.names.lock().unwrap_or_else(|p| p.into_inner());
        let mut layers = BTreeSet::new();
        let mut blobs = BTreeSet::new();
        for (rec, _) in self.list()? {
            blobs.insert(rec.id);
            if let Some(m) = rec.manifest {
                blobs.insert(m);
            }
            for l in &rec.layers {
                layers.insert(l.diff_id.hex());
            }
        }
        let ldir = self.root.join("layers");
        for e in std::fs::read_dir(&ldir).map_err(io_err(&ldir))?.flatten() {
            if !layers.contains(&*e.file_name().to_string_lossy()) {
                remove_any(&e.path()).map_err(io_err(e.path()))?;
            }
        }
        let keep: BTreeSet<String> = blobs.iter().map(Digest::hex).collect();
        let bdir = self.root.join("blobs/sha256");
        for e in std::fs::read_dir(&bdir).map_err(io_err(&bdir))?.flatten() {
            if !keep.contains(&*e.file_name().to_string_lossy()) {
                // Indexes of multi-platform images are kept only while some image came
                // from them; they are cheap to fetch again.
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(())
    }
}

/// A reader that hashes what passes through it.
pub struct HashingReader<R> {
    inner: R,
    hash: sha2::Sha256,
    pub bytes: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hash: sha2::Sha256::new(),
            bytes: 0,
        }
    }

    pub fn finish(self) -> Digest {
        Digest(self.hash.finalize().into())
    }

    fn clone_digest(&self) -> Digest {
        Digest(self.hash.clone().finalize().into())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// A stream between two threads: chunks, then `End` once the sender vouches for all of
/// them (a download whose digest matched). A channel closed without `End` is a sender
/// that failed, and reads as an error.
pub enum Chunk {
    Data(Vec<u8>),
    End,
}

/// The receiving side of a [`Chunk`] stream.
pub struct ChannelReader {
    rx: std::sync::mpsc::Receiver<Chunk>,
    cur: Vec<u8>,
    pos: usize,
    ended: bool,
}

impl ChannelReader {
    pub fn new(rx: std::sync::mpsc::Receiver<Chunk>) -> ChannelReader {
        ChannelReader {
            rx,
            cur: Vec::new(),
            pos: 0,
            ended: false,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Chunk::Data(v)) => {
                    self.cur = v;
                    self.pos = 0;
                }
                Ok(Chunk::End) => self.ended = true,
                Err(_) => return Err(io::Error::other("the stream broke off")),
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Writes `bytes` to `path` through a temporary file in `tmp` (same filesystem), with
/// fsync, so `path` is either absent or complete.
pub fn write_atomic(path: &Path, tmp: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let t = tmp.join(format!("write-{}", unique()));
    let res = (|| {
        let mut f = std::fs::File::create(&t)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&t, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&t);
        return Err(io_err(path)(e));
    }
    if let Some(parent) = path.parent() {
        sync_dir(parent);
    }
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Removes a file or a whole directory tree, without following symlinks.
pub fn remove_any(p: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// A name no other writer in this process or another uses at the same time.
pub fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer_tar(name: &str, data: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
        b.into_inner().unwrap()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn a_gzip_stream_broken_midway_fails_cleanly() {
        let dir = std::env::temp_dir().join(format!("swarmlet-store-gz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).unwrap();
        // Enough data that the inflater is mid-stream, with the tar side waiting on it.
        let data: Vec<u8> = (0..4u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let gz = gzip(&layer_tar("big", &data));
        let mut bad = gz.clone();
        let mid = bad.len() / 2;
        for b in &mut bad[mid..mid + 64] {
            *b ^= 0x5a;
        }
        let err = store
            .add_layer(&bad[..], Compression::Gzip, None, None)
            .unwrap_err();
        assert!(
            err.to_string().contains("gzip") || err.to_string().contains("layer"),
            "{err}"
        );
        // Cut short: an error too, not a hang.
        let err = store
            .add_layer(&gz[..gz.len() / 3], Compression::Gzip, None, None)
            .unwrap_err();
        assert!(!err.to_string().is_empty());
        assert_eq!(
            std::fs::read_dir(dir.join("tmp")).unwrap().count(),
            0,
            "no work dir left"
        );
        assert_eq!(std::fs::read_dir(dir.join("layers")).unwrap().count(), 0);
        // Whole, it unpacks.
        let id = store
            .add_layer(&gz[..], Compression::Gzip, None, None)
            .unwrap();
        assert_eq!(
            std::fs::read(store.layer_path(&id).join("big")).unwrap(),
            data
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

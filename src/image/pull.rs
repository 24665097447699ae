//! Pulls images over the OCI distribution API: anonymous and Bearer-token auth (Docker
//! Hub's flow), Basic auth, image indexes and manifest lists with platform selection,
//! Docker schema2 and OCI manifests, gzip layers downloaded a few at a time with their
//! digests checked, and resumable downloads (`Range`) after an interruption.
//!
//! HTTPS always, except for registries the daemon was told are insecure. Extra CA
//! certificates for a registry are read from `<certs dir>/<host[:port]>/*.crt`, as
//! Docker reads `/etc/docker/certs.d`.

use std::collections::BTreeMap;
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use thiserror::Error;

use crate::model::image::{Credentials, LayerState, Progress};
use crate::model::Digest;

use super::load::{pick_platform, platforms_of};
use super::oci::{self, Descriptor, ImageConfig, Index, Manifest, Platform};
use super::reference::Reference;
use super::store::{
    now_secs, ChannelReader, Chunk, ImageRecord, LayerRecord, Store, StoreError, UnpackedLayer,
};

/// Layers downloaded (and unpacked, which is CPU-bound) at once: a Pi has 4 cores.
pub const CONCURRENT_DOWNLOADS: usize = 4;
/// Layers at least this big are also written to a partial file as they arrive, so a
/// pull that breaks off resumes there next time. Smaller ones are fetched again: the
/// extra write costs about a tenth of a pull's CPU, more than a refetch saves.
pub const RESUMABLE_FROM: u64 = 16 << 20;
/// Chunks (of 64 KiB) a download may run ahead of its unpacker: 1 MiB per layer.
const CHUNKS_AHEAD: usize = 16;
/// Largest manifest, index or config accepted (real ones are a few KiB).
const MAX_DOCUMENT: u64 = 8 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A download that receives nothing for this long fails (and can resume later).
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Error)]
pub enum PullError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{host}: {msg}")]
    Transport { host: String, msg: String },
    #[error("{host}: {what}: {status} {detail}")]
    Registry {
        host: String,
        what: String,
        status: u16,
        detail: String,
    },
    #[error("{0}: not found (no such repository, tag or digest)")]
    NotFound(String),
    #[error("{host}: authentication required: {msg}")]
    Auth { host: String, msg: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: digest mismatch: expected {expected}, got {got}")]
    Digest {
        what: String,
        expected: Digest,
        got: Digest,
    },
}

/// Where and how to reach registries.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RegistryConfig {
    /// Registries (`host[:port]`) spoken to over plain HTTP.
    pub insecure: Vec<String>,
    /// `<dir>/<host[:port]>/*.crt` are extra CA certificates for that registry.
    pub certs_dir: Option<PathBuf>,
    /// Credentials by registry host, as a Docker `config.json` holds them.
    pub auths: BTreeMap<String, Credentials>,
    /// The node's own credentials: a Docker-format `config.json` read at each pull
    /// that brought none for its registry (so a changed file needs no restart). A
    /// missing file means none; an unreadable or malformed one fails the pull, naming
    /// the file.
    #[serde(default)]
    pub auth_file: Option<PathBuf>,
}

/// Reads the `auths` of a Docker-compatible `config.json`: `{"auths": {"host":
/// {"auth": base64("user:password")}}}` (or `username`/`password` fields). Docker Hub's
/// key `https://index.docker.io/v1/` is filed under `docker.io`.
pub fn read_docker_config(path: &Path) -> Result<BTreeMap<String, Credentials>, String> {
    #[derive(Deserialize)]
    struct File {
        #[serde(default)]
        auths: BTreeMap<String, Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        #[serde(default)]
        auth: Option<String>,
        #[serde(default)]
        username: Option<String>,
        #[serde(default)]
        password: Option<String>,
    }
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let f: File = serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = BTreeMap::new();
    for (key, e) in f.auths {
        let host = key
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let host = if host == "index.docker.io" || host == "registry-1.docker.io" {
            "docker.io".to_string()
        } else {
            host
        };
        let creds = match (e.auth, e.username, e.password) {
            (Some(a), _, _) if !a.is_empty() => {
                let raw = base64_decode(&a)
                    .ok_or_else(|| format!("{}: auth for {key} is not base64", path.display()))?;
                let s = String::from_utf8(raw)
                    .map_err(|_| format!("{}: auth for {key} is not UTF-8", path.display()))?;
                let (u, p) = s.split_once(':').ok_or_else(|| {
                    format!("{}: auth for {key} is not user:password", path.display())
                })?;
                Credentials {
                    username: u.into(),
                    password: p.into(),
                }
            }
            (_, Some(u), Some(p)) => Credentials {
                username: u,
                password: p,
            },
            _ => continue,
        };
        out.insert(host, creds);
    }
    Ok(out)
}

/// The result of a pull.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pulled {
    pub id: Digest,
    /// Digest of what the reference named (the index for a multi-platform image).
    pub digest: Digest,
    pub names: Vec<String>,
}

/// A client for one registry. Clones share the auth token.
#[derive(Clone)]
struct Client {
    host: String,
    base: String,
    agent: ureq::Agent,
    creds: Option<Credentials>,
    /// Why there are none, when it is more than that none were given (the node's
    /// credentials file could not be read): said if the registry asks for them.
    no_creds: String,
    auth: Arc<Mutex<Option<String>>>,
}

/// Standard or URL-safe base64; line breaks and padding are skipped, anything else is
/// refused.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' | b'\n' | b'\r' => continue,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}

/// Standard base64 with padding (HTTP Basic credentials).
pub fn base64_encode(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |a, (i, x)| a | (u32::from(*x) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

const NO_CREDS: &str = "no credentials for this registry (add them to config.json)";

/// `domain`'s credentials from the node's config file, if it has any.
fn node_credentials(file: Option<&Path>, domain: &str) -> Result<Option<Credentials>, String> {
    let Some(file) = file else { return Ok(None) };
    Ok(read_docker_config(file)?.remove(domain))
}

impl Client {
    fn new(cfg: &RegistryConfig, domain: &str, api_host: &str) -> Result<Client, PullError> {
        let insecure = cfg.insecure.iter().any(|h| h == domain || h == api_host);
        let mut tls = ureq::tls::TlsConfig::builder();
        if !insecure {
            // The host's CA bundle plus the registry's own CAs from the certs dir.
            let mut certs = system_roots();
            if let Some(dir) = &cfg.certs_dir {
                certs.extend(read_certs(&dir.join(domain)).map_err(|msg| {
                    PullError::Transport {
                        host: domain.into(),
                        msg,
                    }
                })?);
            }
            if certs.is_empty() {
                return Err(PullError::Transport {
                    host: domain.into(),
                    msg: format!(
                        "no CA certificates to check it against: none in {} (install ca-certificates) and none for it in the certs dir",
                        CA_BUNDLES.join(", ")
                    ),
                });
            }
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_recv_response(Some(STALL_TIMEOUT))
            .timeout_recv_body(None)
            .max_redirects(5)
            .tls_config(tls.build())
            .user_agent(concat!("swarmlet/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        // A node credentials file that cannot be read fails only a pull that needs
        // credentials, and that pull names the file.
        let (creds, no_creds) = match cfg.auths.get(domain) {
            Some(c) => (Some(c.clone()), String::new()),
            None => match node_credentials(cfg.auth_file.as_deref(), domain) {
                Ok(c) => (c, NO_CREDS.to_string()),
                Err(e) => (
                    None,
                    format!("{NO_CREDS}; the node's credentials file: {e}"),
                ),
            },
        };
        Ok(Client {
            host: domain.to_string(),
            base: format!("{}://{api_host}", if insecure { "http" } else { "https" }),
            agent,
            creds,
            no_creds,
            auth: Arc::new(Mutex::new(None)),
        })
    }

    fn transport(&self, e: impl std::fmt::Display) -> PullError {
        PullError::Transport {
            host: self.host.clone(),
            msg: e.to_string(),
        }
    }

    /// GET with the current authorization; on 401, answers the challenge once and
    /// retries.
    fn get(
        &self,
        path: &str,
        accept: Option<&str>,
        range_from: Option<u64>,
        scope: &str,
    ) -> Result<ureq::http::Response<ureq::Body>, PullError> {
        for attempt in 0..2 {
            let url = format!("{}{path}", self.base);
            let mut req = self.agent.get(&url);
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            if let Some(from) = range_from {
                req = req.header("Range", &format!("bytes={from}-"));
            }
            let auth = self.auth.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            let resp = req.call().map_err(|e| self.transport(e))?;
            if resp.status().as_u16() != 401 || attempt == 1 {
                if resp.status().as_u16() == 401 {
                    return Err(PullError::Auth {
                        host: self.host.clone(),
                        msg: if self.creds.is_some() {
                            "the registry refused the credentials".into()
                        } else {
                            self.no_creds.clone()
                        },
                    });
                }
                return Ok(resp);
            }
            let challenge = resp
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let header = self.answer(&challenge, scope)?;
            *self.auth.lock().unwrap_or_else(|p| p.into_inner()) = Some(header);
        }
        unreachable!("the loop returns on its second pass")
    }

    /// The Authorization header answering a `WWW-Authenticate` challenge.
    fn answer(&self, challenge: &str, scope: &str) -> Result<String, PullError> {
        let auth_err = |msg: String| PullError::Auth {
            host: self.host.clone(),
            msg,
        };
        let basic = self.creds.as_ref().map(|c| {
            format!(
                "Basic {}",
                base64_encode(format!("{}:{}", c.username, c.password).as_bytes())
            )
        });
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return basic.ok_or_else(|| auth_err(self.no_creds.clone()));
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(auth_err(format!("unsupported challenge {challenge:?}")));
        }
        let params = parse_challenge(params);
        let realm = params
            .get("realm")
            .ok_or_else(|| auth_err("Bearer challenge without a realm".into()))?;
        let mut url = format!("{realm}?scope={}", urlencode(scope));
        if let Some(s) = params.get("service") {
            url.push_str(&format!("&service={}", urlencode(s)));
        }
        let mut req = self.agent.get(&url);
        if let Some(b) = &basic {
            req = req.header("Authorization", b);
        }
        let mut resp = req
            .call()
            .map_err(|e| self.transport(format!("token: {e}")))?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(auth_err(format!("token server answered {status}")));
        }
        #[derive(Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let body = resp
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_vec()
            .map_err(|e| self.transport(format!("token: {e}")))?;
        let t: Token = serde_json::from_slice(&body)
            .map_err(|e| auth_err(format!("token server answer: {e}")))?;
        let t = t
            .token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| auth_err("token server gave no token".into()))?;
        Ok(format!("Bearer {t}"))
    }

    fn fail(&self, what: &str, mut resp: ureq::http::Response<ureq::Body>) -> PullError {
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(64 << 10)
            .read_to_vec()
            .unwrap_or_default();
        #[derive(Deserialize)]
        struct Errs {
            errors: Vec<E>,
        }
        #[derive(Deserialize)]
        struct E {
            code: String,
            #[serde(default)]
            message: String,
        }
        let detail = serde_json::from_slice::<Errs>(&body)
            .ok()
            .and_then(|e| e.errors.into_iter().next())
            .map(|e| format!("{} {}", e.code, e.message))
            .unwrap_or_default();
        PullError::Registry {
            host: self.host.clone(),
            what: what.to_string(),
            status,
            detail,
        }
    }

    /// A manifest or index by tag or digest: (media type, bytes, digest).
    fn manifest(
        &self,
        repo: &str,
        reference: &str,
        shown: &str,
    ) -> Result<(String, Vec<u8>, Digest), PullError> {
        let scope = format!("repository:{repo}:pull");
        let resp = self.get(
            &format!("/v2/{repo}/manifests/{reference}"),
            Some(oci::ACCEPT_MANIFESTS),
            None,
            &scope,
        )?;
        match resp.status().as_u16() {
            200 => {}
            404 => return Err(PullError::NotFound(shown.to_string())),
            _ => return Err(self.fail(&format!("manifest {reference}"), resp)),
        }
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        let body = self.document(resp, Digest::parse(reference), &format!("manifest {shown}"))?;
        let digest = Digest::of(&body);
        // Some registries send a generic type: fall back to the document's own.
        let media = if oci::is_index(&ctype) || oci::is_manifest(&ctype) {
            ctype
        } else {
            #[derive(Deserialize)]
            #[serde(rename_all = "camelCase")]
            struct M {
                media_type: Option<String>,
                manifests: Option<serde_json::Value>,
            }
            let m: M = serde_json::from_slice(&body)
                .map_err(|e| PullError::Invalid(format!("manifest {shown}: {e}")))?;
            match (m.media_type, m.manifests) {
                (Some(t), _) => t,
                (None, Some(_)) => oci::OCI_INDEX.to_string(),
                (None, None) => oci::OCI_MANIFEST.to_string(),
            }
        };
        Ok((media, body, digest))
    }

    /// A small blob (a config) into memory, checked.
    fn small_blob(&self, repo: &str, d: &Digest) -> Result<Vec<u8>, PullError> {
        let scope = format!("repository:{repo}:pull");
        let resp = self.get(&format!("/v2/{repo}/blobs/{d}"), None, None, &scope)?;
        if resp.status().as_u16() != 200 {
            return Err(self.fail(&format!("blob {d}"), resp));
        }
        self.document(resp, Some(*d), &format!("blob {d}"))
    }

    /// Reads a manifest, index or config body (at most [`MAX_DOCUMENT`]) and checks it
    /// against `want` when the reference pinned a digest.
    fn document(
        &self,
        mut resp: ureq::http::Response<ureq::Body>,
        want: Option<Digest>,
        what: &str,
    ) -> Result<Vec<u8>, PullError> {
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_DOCUMENT)
            .read_to_vec()
            .map_err(|e| self.transport(e))?;
        if let Some(expected) = want {
            let got = Digest::of(&body);
            if got != expected {
                return Err(PullError::Digest {
                    what: what.to_string(),
                    expected,
                    got,
                });
            }
        }
        Ok(body)
    }

    /// Downloads a layer blob, checking its size and digest. Every byte of the blob, a
    /// resumed partial file's prefix first, is handed to `sink` as it comes (an error
    /// from `sink` stops the download); the caller trusts what it was handed only once
    /// this returns `Ok`. Layers of [`RESUMABLE_FROM`] bytes or more are kept in the
    /// partial file `dest` as they arrive.
    fn download(
        &self,
        repo: &str,
        desc: &Descriptor,
        dest: &Path,
        progress: &dyn Fn(u64),
        sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<(), PullError> {
        let scope = format!("repository:{repo}:pull");
        let io_err = |e: io::Error| PullError::Store(StoreError::Io(dest.display().to_string(), e));
        let resumable = desc.size >= RESUMABLE_FROM;
        let mut file = if resumable {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(dest)
                .map_err(io_err)?;
            Some(f)
        } else {
            None
        };
        let have = match &file {
            Some(f) => f.metadata().map_err(io_err)?.len(),
            None => 0,
        };
        let resume = have > 0 && have < desc.size;
        // Hashed here, beside the network reads, while the unpacker inflates.
        let mut hash = sha2::Sha256::new();
        let resp = self.get(
            &format!("/v2/{repo}/blobs/{}", desc.digest),
            None,
            resume.then_some(have),
            &scope,
        )?;
        let mut buf = vec![0u8; 64 << 10];
        let mut done = match (resp.status().as_u16(), &mut file) {
            (206, Some(file)) if resume => {
                file.seek(io::SeekFrom::Start(0)).map_err(io_err)?;
                let mut prefix = (&*file).take(have);
                loop {
                    let n = prefix.read(&mut buf).map_err(io_err)?;
                    if n == 0 {
                        break;
                    }
                    hash.update(&buf[..n]);
                    sink(&buf[..n]).map_err(io_err)?;
                }
                file.seek(io::SeekFrom::End(0)).map_err(io_err)?;
                have
            }
            (200, file) => {
                if let Some(file) = file {
                    file.set_len(0).map_err(io_err)?;
                    file.seek(io::SeekFrom::Start(0)).map_err(io_err)?;
                }
                0
            }
            _ => return Err(self.fail(&format!("blob {}", desc.digest), resp)),
        };
        let mut body = resp.into_body().into_reader();
        let mut last_report = 0;
        let next_time = if resumable {
            "pulling again resumes it"
        } else {
            "pulling again fetches it again"
        };
        loop {
            // What arrived before a failure stays in the partial file (if kept): the
            // next pull asks only for the rest.
            let n = body.read(&mut buf).map_err(|e| {
                self.transport(format!(
                    "layer {} broke off after {done} of {} bytes ({e}); {next_time}",
                    desc.digest, desc.size
                ))
            })?;
            if n == 0 {
                break;
            }
            if let Some(file) = &mut file {
                file.write_all(&buf[..n]).map_err(io_err)?;
            }
            done += n as u64;
            if done <= desc.size {
                hash.update(&buf[..n]);
                sink(&buf[..n]).map_err(io_err)?;
            }
            if done > desc.size {
                break;
            }
            if done - last_report >= 256 << 10 {
                last_report = done;
                progress(done);
            }
        }
        // No fsync: the partial file is scratch; a resume after a crash re-hashes what is
        // there, and the unpacked layer is made durable before it is committed.
        if done < desc.size {
            return Err(self.transport(format!(
                "layer {} ended after {done} of {} bytes; {next_time}",
                desc.digest, desc.size
            )));
        }
        if done > desc.size {
            let _ = std::fs::remove_file(dest);
            return Err(PullError::Invalid(format!(
                "layer {}: the registry sent more than the {} bytes the manifest names",
                desc.digest, desc.size
            )));
        }
        let got = Digest(hash.finalize().into());
        if got != desc.digest {
            let _ = std::fs::remove_file(dest);
            return Err(PullError::Digest {
                what: format!("layer {}", desc.digest),
                expected: desc.digest,
                got,
            });
        }
        progress(done);
        Ok(())
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `realm="...",service="...",scope="..."` into a map.
fn parse_challenge(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((k, after)) = rest.split_once('=') else {
            break;
        };
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let (v, next) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (&q[..end], &q[end + 1..]),
                None => (q, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        out.insert(k, v.to_string());
        rest = next.trim_start_matches(',').trim();
    }
    out
}

/// Where distributions keep their CA bundle (Debian and Raspberry Pi OS first).
const CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

fn system_roots() -> Vec<ureq::tls::Certificate<'static>> {
    CA_BUNDLES
        .iter()
        .find_map(|p| read_pem_file(Path::new(p)).ok().filter(|c| !c.is_empty()))
        .unwrap_or_default()
}

fn read_pem_file(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        if let Ok(ureq::tls::PemItem::Certificate(c)) = item {
            out.push(c);
        }
    }
    Ok(out)
}

fn read_certs(dir: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "crt") {
            let certs = read_pem_file(&p)?;
            if certs.is_empty() {
                return Err(format!("{}: no PEM certificate in it", p.display()));
            }
            out.extend(certs);
        }
    }
    Ok(out)
}

/// Pulls `reference` for `platform` into `store`.
pub fn pull(
    store: &Store,
    reference: &Reference,
    platform: &Platform,
    cfg: &RegistryConfig,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Pulled, PullError> {
    let client = Client::new(cfg, &reference.domain, reference.api_host())?;
    let repo = &reference.path;
    let shown = reference.to_string();
    let (media, body, top_digest) = client.manifest(repo, &reference.manifest_ref(), &shown)?;
    let (mbytes, mdigest) = if oci::is_index(&media) {
        let index: Index = serde_json::from_slice(&body)
            .map_err(|e| PullError::Invalid(format!("index of {shown}: {e}")))?;
        let entry = pick_platform(&index.manifests, platform).ok_or_else(|| {
            PullError::Invalid(format!(
                "{shown} has no image for {platform} (it has: {})",
                platforms_of(&index.manifests)
            ))
        })?;
        let (m, b, d) = client.manifest(repo, &entry.digest.to_string(), &shown)?;
        if !oci::is_manifest(&m) {
            return Err(PullError::Invalid(format!(
                "{shown}: index entry {d} is a {m}, not an image manifest"
            )));
        }
        (b, d)
    } else if oci::is_manifest(&media) {
        (body, top_digest)
    } else {
        return Err(PullError::Invalid(format!(
            "{shown}: unsupported manifest type {media:?} (Docker schema 1 is not supported)"
        )));
    };
    let manifest: Manifest = serde_json::from_slice(&mbytes)
        .map_err(|e| PullError::Invalid(format!("manifest of {shown}: {e}")))?;
    let cbytes = match store.get_blob(&manifest.config.digest)? {
        Some(b) => b,
        None => client.small_blob(repo, &manifest.config.digest)?,
    };
    let config: ImageConfig = serde_json::from_slice(&cbytes)
        .map_err(|e| PullError::Invalid(format!("config of {shown}: {e}")))?;
    let got_platform = Platform {
        architecture: config.architecture.clone(),
        os: config.os.clone(),
        variant: config.variant.clone(),
    };
    progress(Progress::Resolved {
        digest: top_digest,
        platform: got_platform.to_string(),
    });
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(PullError::Invalid(format!(
            "{shown}: manifest has {} layers but the config lists {}",
            manifest.layers.len(),
            config.rootfs.diff_ids.len()
        )));
    }
    let mut jobs = Vec::new();
    for (l, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
        if oci::layer_compression(&l.media_type).is_none() {
            return Err(PullError::Invalid(format!(
                "{shown}: layer {} has unsupported media type {:?}",
                l.digest, l.media_type
            )));
        }
        if store.has_layer(diff_id) {
            progress(Progress::Layer {
                digest: l.digest,
                state: LayerState::Exists,
            });
        } else {
            progress(Progress::Layer {
                digest: l.digest,
                state: LayerState::Waiting,
            });
            jobs.push((l.clone(), *diff_id));
        }
    }
    // Held until the layers are committed, so a pull that waited finds them there.
    let claimed: Vec<Digest> = jobs.iter().map(|(l, _)| l.digest).collect();
    let _claim = store.claim_layers(&claimed);
    jobs.retain(|(_, diff_id)| !store.has_layer(diff_id));
    let queue = Mutex::new(jobs);
    let failure: Mutex<Option<PullError>> = Mutex::new(None);
    let unpacked: Mutex<Vec<UnpackedLayer>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..CONCURRENT_DOWNLOADS {
            s.spawn(|| loop {
                if failure.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                    return;
                }
                let Some((desc, diff_id)) = queue.lock().unwrap_or_else(|p| p.into_inner()).pop()
                else {
                    return;
                };
                match fetch_layer(store, &client, repo, &desc, diff_id, progress) {
                    Ok(u) => unpacked.lock().unwrap_or_else(|p| p.into_inner()).push(u),
                    Err(e) => {
                        failure
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    // Layers that arrived whole are kept even when another failed: the next pull
    // needs only the rest.
    let committed = store.commit_layers(unpacked.into_inner().unwrap_or_else(|p| p.into_inner()));
    if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    committed?;
    store.put_blob(&cbytes)?;
    store.put_blob(&mbytes)?;
    let layers = manifest
        .layers
        .iter()
        .zip(&config.rootfs.diff_ids)
        .map(|(l, d)| LayerRecord {
            diff_id: *d,
            blob: l.digest,
            size: l.size,
        })
        .collect();
    let rec = ImageRecord {
        id: manifest.config.digest,
        manifest: Some(mdigest),
        config,
        layers,
        added: now_secs(),
    };
    let mut names = vec![format!("{}@{top_digest}", reference.name())];
    if let Some(t) = &reference.tag {
        names.insert(0, format!("{}:{t}", reference.name()));
    }
    store.commit(&rec, &names)?;
    Ok(Pulled {
        id: rec.id,
        digest: top_digest,
        names,
    })
}

/// Downloads one layer and unpacks it as it arrives (a bounded channel between the
/// threads: the download never runs more than 1 MiB ahead). The download hashes the
/// blob and sends `End` only once it matched; the unpacker checks the diff id. The
/// unpacked layer is returned uncommitted, so the pull syncs the filesystem once for
/// all its layers.
fn fetch_layer(
    store: &Store,
    client: &Client,
    repo: &str,
    desc: &Descriptor,
    diff_id: Digest,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<UnpackedLayer, PullError> {
    let partial = store
        .tmp_dir()
        .join(format!("{}.partial", desc.digest.hex()));
    let total = desc.size;
    let compression = oci::layer_compression(&desc.media_type).expect("checked by the caller");
    let (tx, rx) = std::sync::mpsc::sync_channel::<Chunk>(CHUNKS_AHEAD);
    std::thread::scope(|s| {
        let unpacker = s.spawn(move || {
            store.unpack_layer(ChannelReader::new(rx), compression, None, Some(diff_id))
        });
        let mut unpacker_gone = false;
        let downloaded = client.download(
            repo,
            desc,
            &partial,
            &|done| {
                progress(Progress::Layer {
                    digest: desc.digest,
                    state: LayerState::Downloading { done, total },
                });
            },
            &mut |b| {
                tx.send(Chunk::Data(b.to_vec())).map_err(|_| {
                    unpacker_gone = true;
                    io::Error::other("layer unpacking stopped")
                })
            },
        );
        if downloaded.is_ok() {
            // Every byte is with the unpacker: the partial file has served its purpose
            // (removed before the sync, its pages are never written back).
            let _ = std::fs::remove_file(&partial);
            progress(Progress::Layer {
                digest: desc.digest,
                state: LayerState::Extracting,
            });
            let _ = tx.send(Chunk::End);
        }
        drop(tx);
        let unpacked = unpacker.join().unwrap_or_else(|_| {
            Err(StoreError::Io(
                "layer unpacking".into(),
                io::Error::other("the unpacking thread panicked"),
            ))
        });
        match (downloaded, unpacked) {
            (Ok(()), Ok(u)) => {
                progress(Progress::Layer {
                    digest: desc.digest,
                    state: LayerState::Done,
                });
                Ok(u)
            }
            (Ok(()), Err(e)) => Err(e.into()),
            // The unpacker refused the layer (bad tar, disk full): its error is the cause.
            (Err(_), Err(e)) if unpacker_gone => Err(e.into()),
            (Err(e), _) => Err(e),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        let p = parse_challenge(
            r#"realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/redis:pull""#,
        );
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/redis:pull");
    }

    #[test]
    fn base64_round_trips() {
        for s in ["", "a", "ab", "abc", "user:pässword!"] {
            assert_eq!(
                base64_decode(&base64_encode(s.as_bytes())).unwrap(),
                s.as_bytes()
            );
        }
        assert_eq!(base64_encode(b"user:pass"), "dXNlcjpwYXNz");
    }

    #[test]
    fn docker_config_auths() {
        let dir = std::env::temp_dir().join(format!("swarmlet-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("config.json");
        std::fs::write(
            &p,
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYXNz"},"127.0.0.1:5000":{"username":"u","password":"p"},"x":{}}}"#,
        )
        .unwrap();
        let a = read_docker_config(&p).unwrap();
        assert_eq!(a["docker.io"].username, "user");
        assert_eq!(a["docker.io"].password, "pass");
        assert_eq!(a["127.0.0.1:5000"].password, "p");
        assert!(!a.contains_key("x"));
        std::fs::write(&p, r#"{"auths":{"h":{"auth":"!!"}}}"#).unwrap();
        assert!(read_docker_config(&p).unwrap_err().contains("not base64"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

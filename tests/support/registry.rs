//! A real registry for tests: Debian's `docker-registry` (distribution 2.8) on a
//! loopback port, with filesystem storage in a temporary directory, optionally behind
//! htpasswd auth or TLS; and a small pusher speaking the distribution API.

#![allow(dead_code, clippy::unwrap_used, clippy::cast_possible_truncation)] // test code

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::image::{sha, Built};

pub struct Registry {
    pub dir: PathBuf,
    pub port: u16,
    /// Where it listens: loopback, or an address inside `netns`.
    ip: String,
    netns: Option<String>,
    child: Option<Child>,
    pub user: Option<(String, String)>,
    pub tls: bool,
}

#[derive(Default)]
pub struct Options {
    pub basic_auth: Option<(&'static str, &'static str)>,
    pub tls: bool,
}

fn run(cmd: &mut Command) {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

impl Registry {
    pub fn available() -> bool {
        Command::new("docker-registry")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    pub fn start(tag: &str, opts: Options) -> Registry {
        assert!(
            Registry::available(),
            "docker-registry is missing: run ./bootstrap.sh deps"
        );
        let dir = std::env::temp_dir().join(format!("swarmlet-reg-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:0\n  secret: test-only\n",
            dir.join("data").display()
        );
        if opts.tls {
            make_certs(&dir);
            cfg.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                dir.join("leaf.pem").display(),
                dir.join("leaf.key").display()
            ));
        }
        if let Some((u, p)) = opts.basic_auth {
            let o = Command::new("htpasswd")
                .args(["-Bbn", u, p])
                .output()
                .unwrap();
            assert!(o.status.success());
            std::fs::write(dir.join("htpasswd"), &o.stdout).unwrap();
            cfg.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                dir.join("htpasswd").display()
            ));
        }
        std::fs::write(dir.join("config.yml"), cfg).unwrap();
        let mut r = Registry {
            dir,
            port: 0,
            ip: "127.0.0.1".into(),
            netns: None,
            child: None,
            user: opts.basic_auth.map(|(u, p)| (u.to_string(), p.to_string())),
            tls: opts.tls,
        };
        r.launch(None);
        r
    }

    /// Starts the process (on `port`, or any free port) and waits for it to listen.
    fn launch(&mut self, port: Option<u16>) {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/var/run/netns/{ns}"))
                    .arg("docker-registry");
                c
            }
            None => Command::new("docker-registry"),
        };
        cmd.arg("serve").arg(self.dir.join("config.yml"));
        if let Some(p) = port {
            cmd.env("REGISTRY_HTTP_ADDR", format!("{}:{p}", self.ip));
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let needle = format!("listening on {}:", self.ip);
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent {
                    if let Some(i) = line.find(&needle) {
                        let rest = &line[i + needle.len()..];
                        let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
                        let _ = tx.send(port.parse::<u16>().unwrap());
                        sent = true;
                    }
                }
            }
        });
        // Owned before waiting, so a failure below still kills it (in Drop).
        self.child = Some(child);
        self.port = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("docker-registry did not say where it listens");
    }

    pub fn host(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    /// Serves the same storage from inside network namespace `netns` at `ip` (same
    /// port): for nodes in namespaces, after the test pushed its images over loopback.
    pub fn move_into(&mut self, netns: &str, ip: &str) {
        let port = self.port;
        self.move_into_port(netns, ip, port);
    }

    /// [`Registry::move_into`] on another port (free in a namespace the caller made).
    pub fn move_into_port(&mut self, netns: &str, ip: &str, port: u16) {
        self.kill();
        self.netns = Some(netns.to_string());
        self.ip = ip.to_string();
        self.launch(Some(port));
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and storage.
    pub fn restart(&mut self) {
        self.kill();
        let port = self.port;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.launch(Some(port));
            if self.port == port {
                return;
            }
            assert!(Instant::now() < deadline, "port {port} not free again");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn agent(&self) -> ureq::Agent {
        let mut tls = ureq::tls::TlsConfig::builder();
        if self.tls {
            let pem = std::fs::read(self.dir.join("ca.pem")).unwrap();
            let ca = ureq::tls::Certificate::from_pem(&pem).unwrap();
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&[ca]));
        }
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .tls_config(tls.build())
            .build()
            .into()
    }

    fn url(&self, path: &str) -> String {
        format!(
            "{}://{}{path}",
            if self.tls { "https" } else { "http" },
            self.host()
        )
    }

    fn auth(&self) -> Option<String> {
        self.user.as_ref().map(|(u, p)| {
            format!(
                "Basic {}",
                swarmlet::image::pull::base64_encode(format!("{u}:{p}").as_bytes())
            )
        })
    }

    /// Uploads a blob (monolithic upload).
    pub fn push_blob(&self, repo: &str, data: &[u8]) {
        let agent = self.agent();
        let mut req = agent.post(self.url(&format!("/v2/{repo}/blobs/uploads/")));
        if let Some(a) = self.auth() {
            req = req.header("Authorization", &a);
        }
        let resp = req.send_empty().unwrap();
        assert_eq!(resp.status().as_u16(), 202, "start upload");
        let loc = resp.headers()["location"].to_str().unwrap().to_string();
        let sep = if loc.contains('?') { '&' } else { '?' };
        let loc = if loc.starts_with("http") {
            loc
        } else {
            self.url(&loc)
        };
        let mut req = agent
            .put(format!("{loc}{sep}digest={}", sha(data)))
            .header("Content-Type", "application/octet-stream");
        if let Some(a) = self.auth() {
            req = req.header("Authorization", &a);
        }
        let resp = req.send(data).unwrap();
        assert_eq!(resp.status().as_u16(), 201, "finish upload");
    }

    pub fn push_manifest(&self, repo: &str, reference: &str, media_type: &str, body: &[u8]) {
        let mut req = self
            .agent()
            .put(self.url(&format!("/v2/{repo}/manifests/{reference}")))
            .header("Content-Type", media_type);
        if let Some(a) = self.auth() {
            req = req.header("Authorization", &a);
        }
        let resp = req.send(body).unwrap();
        assert_eq!(resp.status().as_u16(), 201, "push manifest {reference}");
    }

    /// Pushes one image's blobs and manifest under `tag` (or by digest only if None).
    pub fn push_image(&self, repo: &str, tag: Option<&str>, img: &Built) {
        for (z, _) in &img.layers {
            self.push_blob(repo, z);
        }
        self.push_blob(repo, &img.config);
        let reference = tag.map_or_else(|| sha(&img.manifest), String::from);
        self.push_manifest(
            repo,
            &reference,
            "application/vnd.oci.image.manifest.v1+json",
            &img.manifest,
        );
    }

    /// Pushes a Docker schema2 manifest list under `tag` (children by digest); returns
    /// its digest.
    pub fn push_docker_list(
        &self,
        repo: &str,
        tag: &str,
        images: &[(&Built, &str, Option<&str>)],
    ) -> String {
        let mt = "application/vnd.docker.distribution.manifest.v2+json";
        let mut entries = Vec::new();
        for (img, arch, variant) in images {
            for (z, _) in &img.layers {
                self.push_blob(repo, z);
            }
            self.push_blob(repo, &img.config);
            self.push_manifest(repo, &sha(&img.manifest), mt, &img.manifest);
            let mut platform = json!({"architecture": arch, "os": "linux"});
            if let Some(v) = variant {
                platform["variant"] = json!(v);
            }
            entries.push(json!({
                "mediaType": mt,
                "digest": sha(&img.manifest),
                "size": img.manifest.len(),
                "platform": platform,
            }));
        }
        let list = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
            "manifests": entries,
        }))
        .unwrap();
        self.push_manifest(
            repo,
            tag,
            "application/vnd.docker.distribution.manifest.list.v2+json",
            &list,
        );
        sha(&list)
    }

    /// Pushes a multi-platform OCI index under `tag`; returns its digest.
    pub fn push_index(
        &self,
        repo: &str,
        tag: &str,
        images: &[(&Built, &str, Option<&str>)],
    ) -> String {
        let mut entries = Vec::new();
        for (img, arch, variant) in images {
            self.push_image(repo, None, img);
            let mut platform = json!({"architecture": arch, "os": "linux"});
            if let Some(v) = variant {
                platform["variant"] = json!(v);
            }
            entries.push(json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": sha(&img.manifest),
                "size": img.manifest.len(),
                "platform": platform,
            }));
        }
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": entries,
        }))
        .unwrap();
        self.push_manifest(repo, tag, "application/vnd.oci.image.index.v1+json", &index);
        sha(&index)
    }
}

impl Registry {
    /// From now on the registry wants Bearer tokens from `ts` (Docker Hub's scheme);
    /// restarts it on the same port and storage.
    pub fn require_tokens(&mut self, ts: &TokenServer) {
        let cfg_path = self.dir.join("config.yml");
        let mut cfg = std::fs::read_to_string(&cfg_path).unwrap();
        cfg.push_str(&format!(
            "auth:\n  token:\n    realm: {}\n    service: test-registry\n    issuer: test-issuer\n    rootcertbundle: {}\n",
            ts.realm(),
            ts.dir.join("tok.pem").display()
        ));
        std::fs::write(&cfg_path, cfg).unwrap();
        self.restart();
    }
}

/// A token server for registry Bearer auth: answers `GET /token?scope=...` with a JWT
/// (RS256, signed by openssl with its own key, whose certificate the registry trusts)
/// granting pull on the asked repository, to clients presenting `user`'s Basic
/// credentials.
pub struct TokenServer {
    pub dir: PathBuf,
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl TokenServer {
    pub fn start(tag: &str, user: &'static str, password: &'static str) -> TokenServer {
        let dir = std::env::temp_dir().join(format!("swarmlet-tok-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        run(Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "30",
                "-subj",
                "/CN=test-token-signer",
                "-keyout",
            ])
            .arg(dir.join("tok.key"))
            .arg("-out")
            .arg(dir.join("tok.pem")));
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(dir.join("tok.pem"))
            .output()
            .unwrap()
            .stdout;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (d2, s2) = (dir.clone(), stop.clone());
        let want = format!(
            "Basic {}",
            swarmlet::image::pull::base64_encode(format!("{user}:{password}").as_bytes())
        );
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            while !s2.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                let mut buf = vec![0u8; 8192];
                let n = conn.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                let authorized = req.lines().any(|l| {
                    l.to_ascii_lowercase().starts_with("authorization:") && l[14..].trim() == want
                });
                let scope = req
                    .split_whitespace()
                    .nth(1)
                    .and_then(|path| path.split_once('?'))
                    .and_then(|(_, q)| q.split('&').find_map(|kv| kv.strip_prefix("scope=")))
                    .unwrap_or("")
                    .replace("%3A", ":")
                    .replace("%2F", "/");
                let resp = if !authorized {
                    "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_string()
                } else {
                    let parts: Vec<&str> = scope.split(':').collect();
                    let name = parts.get(1).copied().unwrap_or("");
                    let token = jwt(&d2, &der, name);
                    let body = format!("{{\"token\":\"{token}\",\"expires_in\":300}}");
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                };
                let _ = conn.write_all(resp.as_bytes());
            }
        });
        TokenServer { dir, port, stop }
    }

    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn b64url(b: &[u8]) -> String {
    swarmlet::image::pull::base64_encode(b)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

/// A registry token for pulling `repo`, signed with openssl.
fn jwt(dir: &std::path::Path, cert_der: &[u8], repo: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = json!({"typ": "JWT", "alg": "RS256", "x5c": [swarmlet::image::pull::base64_encode(cert_der)]});
    let claims = json!({
        "iss": "test-issuer", "sub": "ann", "aud": "test-registry",
        "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{repo}"),
        "access": [{"type": "repository", "name": repo, "actions": ["pull"]}],
    });
    let signing_input = format!(
        "{}.{}",
        b64url(&serde_json::to_vec(&header).unwrap()),
        b64url(&serde_json::to_vec(&claims).unwrap())
    );
    let input = dir.join(format!("in-{}", std::process::id()));
    std::fs::write(&input, &signing_input).unwrap();
    let sig = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(dir.join("tok.key"))
        .arg(&input)
        .output()
        .unwrap();
    assert!(sig.status.success());
    format!("{signing_input}.{}", b64url(&sig.stdout))
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A CA and a leaf certificate for 127.0.0.1 (rustls refuses a CA used as a leaf).
fn make_certs(dir: &std::path::Path) {
    let d = |f: &str| dir.join(f);
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "30",
            "-subj",
            "/CN=swarmlet-test-ca",
            "-keyout",
        ])
        .arg(d("ca.key"))
        .arg("-out")
        .arg(d("ca.pem")));
    run(Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
        ])
        .arg(d("leaf.key"))
        .arg("-out")
        .arg(d("leaf.csr")));
    std::fs::write(
        d("leaf.ext"),
        "basicConstraints=critical,CA:FALSE\nsubjectAltName=IP:127.0.0.1\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "30", "-in"])
        .arg(d("leaf.csr"))
        .arg("-CA")
        .arg(d("ca.pem"))
        .arg("-CAkey")
        .arg(d("ca.key"))
        .arg("-CAcreateserial")
        .arg("-out")
        .arg(d("leaf.pem"))
        .arg("-extfile")
        .arg(d("leaf.ext")));
}

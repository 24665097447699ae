//! Image references as Docker writes them: `name[:tag][@digest]`, where a name without a
//! registry is on Docker Hub and a one-part Hub name is under `library/`
//! (`redis` = `docker.io/library/redis:latest`).

use std::fmt;

use thiserror::Error;

use crate::model::Digest;

/// The registry a name without a domain belongs to.
pub const DEFAULT_DOMAIN: &str = "docker.io";
/// The host that actually serves Docker Hub's registry API.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
const MAX_NAME: usize = 255;
const MAX_TAG: usize = 128;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RefError {
    #[error("invalid reference {0:?}: {1}")]
    Invalid(String, &'static str),
}

/// A parsed, normalised reference.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Reference {
    /// Registry host (and port), e.g. `docker.io`, `127.0.0.1:5000`.
    pub domain: String,
    /// Repository path inside the registry, e.g. `library/redis`.
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    /// Parses `s`, applying Docker's defaults (domain, `library/`, tag `latest` when
    /// there is neither tag nor digest).
    pub fn parse(s: &str) -> Result<Reference, RefError> {
        let bad = |why| RefError::Invalid(s.to_string(), why);
        if s.is_empty() {
            return Err(bad("empty"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (
                r,
                Some(Digest::parse(d).ok_or(bad("digest must be sha256:<64 hex digits>"))?),
            ),
            None => (s, None),
        };
        // A tag follows the last ':' that comes after the last '/' (a ':' before it is
        // a registry port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            let ok_first = t
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok_first
                || t.len() > MAX_TAG
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
            {
                return Err(bad(
                    "tag must be up to 128 of [A-Za-z0-9_.-], not starting with . or -",
                ));
            }
        }
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(bad("name must be 1 to 255 characters"));
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
        };
        if !valid_domain(&domain) {
            return Err(bad(
                "registry must be a host name or address, with an optional port",
            ));
        }
        if path.is_empty() || !path.split('/').all(valid_component) {
            return Err(bad(
                "repository name must be lowercase letters, digits and separators (. _ __ -), in /-separated parts",
            ));
        }
        let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        // Counted as Docker counts it, normalised: a name that fits only without its
        // registry would print as a reference that no longer parses.
        if domain.len() + 1 + path.len() > MAX_NAME {
            return Err(bad(
                "name must be at most 255 characters with its registry (docker.io/library/ counts)",
            ));
        }
        let tag = match (tag, digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some("latest".to_string()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            domain,
            path,
            tag,
            digest,
        })
    }

    /// `domain/path`, the name as stored and shown.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The host to speak the registry API to.
    pub fn api_host(&self) -> &str {
        if self.domain == DEFAULT_DOMAIN {
            DOCKER_HUB_API
        } else {
            &self.domain
        }
    }

    /// What to ask the registry for: the digest if pinned, else the tag.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// The short form Docker shows: no `docker.io/`, no `library/`.
    pub fn familiar_name(&self) -> String {
        if self.domain == DEFAULT_DOMAIN {
            self.path
                .strip_prefix("library/")
                .unwrap_or(&self.path)
                .to_string()
        } else {
            self.name()
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    let host_ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    let port_ok = port.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok()
    });
    host_ok && port_ok
}

/// `[a-z0-9]+` runs joined by one separator: `.`, `_`, `__` or any number of `-`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    #[test]
    fn docker_defaults() {
        let r = p("redis");
        assert_eq!(r.to_string(), "docker.io/library/redis:latest");
        assert_eq!(r.api_host(), DOCKER_HUB_API);
        assert_eq!(r.familiar_name(), "redis");
        assert_eq!(p("user/app:1.2").to_string(), "docker.io/user/app:1.2");
        assert_eq!(
            p("localhost/app").to_string(),
            "localhost/app:latest",
            "localhost is a domain"
        );
        let r = p("127.0.0.1:5000/test/busybox:1");
        assert_eq!(r.domain, "127.0.0.1:5000");
        assert_eq!(r.path, "test/busybox");
        assert_eq!(r.tag.as_deref(), Some("1"));
        assert_eq!(r.api_host(), "127.0.0.1:5000");
        let r = p("reg.example:5000/app"); // port, no tag
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.domain, "reg.example:5000");
    }

    #[test]
    fn digests() {
        let d = "sha256:".to_string() + &"ab".repeat(32);
        let r = p(&format!("alpine@{d}"));
        assert_eq!(r.tag, None, "a digest alone means no tag");
        assert_eq!(r.manifest_ref(), d);
        let r = p(&format!("alpine:3@{d}"));
        assert_eq!(r.tag.as_deref(), Some("3"));
        assert_eq!(r.manifest_ref(), d, "the digest wins");
        assert_eq!(Digest::parse(&d).unwrap().to_string(), d);
        assert_eq!(
            Digest::of(b"").hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    /// Found by the `oci_documents` fuzz target: a 250-character Hub name parsed, but
    /// printed with `docker.io/library/` it was over the limit and did not parse again.
    #[test]
    fn the_name_limit_counts_the_normalised_name() {
        let name = "a".repeat(255 - "docker.io/library/".len());
        let r = p(&name);
        assert_eq!(Reference::parse(&r.to_string()), Ok(r));
        let long = format!("{name}a");
        let e = Reference::parse(&long).unwrap_err().to_string();
        assert!(e.contains("255 characters with its registry"), "{e}");
        assert!(Reference::parse(&format!("docker.io/library/{long}")).is_err());
        assert!(Reference::parse(&format!("example.com/{}", "b".repeat(243))).is_ok());
        assert!(Reference::parse(&format!("example.com/{}", "b".repeat(244))).is_err());
    }

    #[test]
    fn malformed_references_are_refused() {
        for bad in [
            "",
            "UPPER",
            "a//b",
            "a/",
            "/a",
            "a:",
            "a:-tag",
            "a:.tag",
            "a@sha256:abc",
            "a@md5:0123",
            "a b",
            "a..b",
            "a___b",
            "-a",
            "a-",
            "host:99999/a",
            "host:/a",
            &format!("a:{}", "t".repeat(129)),
            &"a".repeat(256),
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["a--b", "a__b", "a.b", "a_b", "x/y/z", "a:T_1.2-x"] {
            assert!(Reference::parse(good).is_ok(), "{good:?} refused");
        }
    }
}

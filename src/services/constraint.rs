//! Placement constraints (`--constraint node.labels.zone==east`): parsed once when a
//! service is created or updated, matched by the scheduler against each node.
//!
//! The grammar is Docker's: `<key> <op> <value>`, `op` one of `==` and `!=` (the first
//! `==` wins, else the first `!=`), key and value trimmed. Label names are compared as
//! written; values, for every key, ignoring ASCII case. A label the node lacks counts as
//! the empty string: `==` fails and `!=` holds. Unlike Docker, an unknown key is an
//! error at once (Docker accepts it and the task then never finds a node).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::node::NodeRole;
use crate::raft::NodeId;

/// Longest constraint we take, key, operator and value together: far past any real
/// label (labels themselves stop at 256 bytes), and it bounds what one spec makes every
/// manager store and match against every node.
pub const MAX_CONSTRAINT_BYTES: usize = 512;

/// What a constraint compares.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Key {
    NodeId,
    Hostname,
    Role,
    Os,
    Arch,
    /// `node.labels.<name>`: labels set with `node update --label-add`.
    NodeLabel(String),
    /// `engine.labels.<name>`: labels the node's daemon was started with (`--label`).
    EngineLabel(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Constraint {
    pub key: Key,
    /// `==` when true, `!=` when false.
    pub equal: bool,
    pub value: String,
}

/// What a constraint is matched against: one node as the scheduler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFacts<'a> {
    pub id: NodeId,
    pub hostname: &'a str,
    pub role: NodeRole,
    /// As Rust names them (`linux`; `x86_64`, `aarch64`), which is also what Docker
    /// nodes report.
    pub os: &'a str,
    pub arch: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub engine_labels: &'a BTreeMap<String, String>,
}

impl<'a> NodeFacts<'a> {
    /// The value of a `node.labels.<name>` or `engine.labels.<name>` label, as a
    /// `--placement-pref spread=` names it; the empty string where the node lacks it
    /// (such nodes spread as one more group, as Docker's do).
    pub fn label(&self, key: &str) -> &'a str {
        let (map, name) = match (
            key.strip_prefix("node.labels."),
            key.strip_prefix("engine.labels."),
        ) {
            (Some(name), _) => (self.labels, name),
            (_, Some(name)) => (self.engine_labels, name),
            _ => return "",
        };
        map.get(name).map_or("", String::as_str)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConstraintError {
    #[error("constraint expected one operator from ==, !=")]
    NoOperator,
    #[error("key '{0}' is invalid")]
    InvalidKey(String),
    #[error("value '{0}' is invalid")]
    InvalidValue(String),
    #[error(
        "unknown constraint key '{0}': use node.id, node.hostname, node.role, node.platform.os, node.platform.arch, node.labels.<name> or engine.labels.<name>"
    )]
    UnknownKey(String),
    #[error("constraint is {0} bytes, over the {MAX_CONSTRAINT_BYTES}-byte limit")]
    TooLong(usize),
}

/// Docker's key alphabet: a letter or underscore, then letters, digits, `-`, `_`, `.`;
/// two characters at least.
fn valid_key(k: &str) -> bool {
    let mut chars = k.chars();
    let first = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    first
        && k.len() >= 2
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Docker's value alphabet: letters, digits, white space and `:-_.*()?+[]\^$|/`.
fn valid_value(v: &str) -> bool {
    !v.is_empty()
        && v.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || c.is_ascii_whitespace()
                || matches!(
                    c,
                    ':' | '-'
                        | '_'
                        | '.'
                        | '*'
                        | '('
                        | ')'
                        | '?'
                        | '+'
                        | '['
                        | ']'
                        | '\\'
                        | '^'
                        | '$'
                        | '|'
                        | '/'
                )
        })
}

impl Constraint {
    pub fn parse(s: &str) -> Result<Constraint, ConstraintError> {
        if s.len() > MAX_CONSTRAINT_BYTES {
            return Err(ConstraintError::TooLong(s.len()));
        }
        let (at, equal) = match (s.find("=="), s.find("!=")) {
            (Some(i), _) => (i, true),
            (None, Some(i)) => (i, false),
            (None, None) => return Err(ConstraintError::NoOperator),
        };
        let key = s[..at].trim();
        let value = s[at + 2..].trim();
        if !valid_key(key) {
            return Err(ConstraintError::InvalidKey(key.to_string()));
        }
        if !valid_value(value) {
            return Err(ConstraintError::InvalidValue(value.to_string()));
        }
        let lower = key.to_ascii_lowercase();
        let label = |prefix: &str| {
            lower
                .starts_with(prefix)
                .then(|| key[prefix.len()..].to_string())
                .filter(|name| !name.is_empty())
        };
        let key = match lower.as_str() {
            "node.id" => Key::NodeId,
            "node.hostname" => Key::Hostname,
            "node.role" => Key::Role,
            "node.platform.os" => Key::Os,
            "node.platform.arch" => Key::Arch,
            _ => match (label("node.labels."), label("engine.labels.")) {
                (Some(name), _) => Key::NodeLabel(name),
                (_, Some(name)) => Key::EngineLabel(name),
                _ => return Err(ConstraintError::UnknownKey(key.to_string())),
            },
        };
        Ok(Constraint {
            key,
            equal,
            value: value.to_string(),
        })
    }

    pub fn matches(&self, node: &NodeFacts<'_>) -> bool {
        let id;
        let have: &str = match &self.key {
            Key::NodeId => {
                id = node.id.to_string();
                &id
            }
            Key::Hostname => node.hostname,
            Key::Role => match node.role {
                NodeRole::Manager => "manager",
                NodeRole::Worker => "worker",
            },
            Key::Os => node.os,
            Key::Arch => node.arch,
            Key::NodeLabel(name) => node.labels.get(name).map_or("", String::as_str),
            Key::EngineLabel(name) => node.engine_labels.get(name).map_or("", String::as_str),
        };
        have.eq_ignore_ascii_case(&self.value) == self.equal
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Key::NodeId => f.write_str("node.id")?,
            Key::Hostname => f.write_str("node.hostname")?,
            Key::Role => f.write_str("node.role")?,
            Key::Os => f.write_str("node.platform.os")?,
            Key::Arch => f.write_str("node.platform.arch")?,
            Key::NodeLabel(n) => write!(f, "node.labels.{n}")?,
            Key::EngineLabel(n) => write!(f, "engine.labels.{n}")?,
        }
        let op = if self.equal { "==" } else { "!=" };
        write!(f, "{op}{}", self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(
        labels: &'a BTreeMap<String, String>,
        engine: &'a BTreeMap<String, String>,
    ) -> NodeFacts<'a> {
        NodeFacts {
            id: NodeId(0x1234_5678_9abc_def0),
            hostname: "pi-1",
            role: NodeRole::Worker,
            os: "linux",
            arch: "aarch64",
            labels,
            engine_labels: engine,
        }
    }

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_docker_grammar() {
        let c = Constraint::parse(" node.labels.Zone == east ").unwrap();
        assert_eq!(c.key, Key::NodeLabel("Zone".into()));
        assert!(c.equal);
        assert_eq!(c.value, "east");
        assert_eq!(c.to_string(), "node.labels.Zone==east");
        let c = Constraint::parse("NODE.ROLE!=manager").unwrap();
        assert_eq!((c.key, c.equal), (Key::Role, false));
        // `==` is looked for first: the `!=` here is part of the value... which is not
        // in the value alphabet.
        assert_eq!(
            Constraint::parse("node.role==a!=b"),
            Err(ConstraintError::InvalidValue("a!=b".into()))
        );
        assert_eq!(
            Constraint::parse("engine.labels.disk==ssd").unwrap().key,
            Key::EngineLabel("disk".into())
        );
    }

    #[test]
    fn refuses_what_docker_refuses_and_unknown_keys() {
        let err = |s: &str| Constraint::parse(s).unwrap_err().to_string();
        assert_eq!(
            err("node.role"),
            "constraint expected one operator from ==, !="
        );
        assert_eq!(
            err("node.role=manager"),
            "constraint expected one operator from ==, !="
        );
        assert_eq!(err("9node==x"), "key '9node' is invalid");
        assert_eq!(err("==x"), "key '' is invalid");
        assert_eq!(err("node.role=="), "value '' is invalid");
        assert_eq!(err("node.role==a;b"), "value 'a;b' is invalid");
        assert!(err("node.colour==red").starts_with("unknown constraint key 'node.colour'"));
        assert!(err("node.labels.==x").starts_with("unknown constraint key"));
        assert!(err(&"a".repeat(600)).contains("over the 512-byte limit"));
    }

    #[test]
    fn matches_like_docker() {
        let l = labels(&[("zone", "East")]);
        let e = labels(&[("disk", "ssd")]);
        let n = facts(&l, &e);
        let m = |s: &str| Constraint::parse(s).unwrap().matches(&n);
        assert!(m("node.labels.zone==east"), "values ignore case");
        assert!(!m("node.labels.Zone==east"), "label names do not");
        assert!(m("node.labels.Zone!=east"), "a missing label is empty");
        assert!(!m("node.labels.rack==1"));
        assert!(m("engine.labels.disk==SSD"));
        assert!(m("node.role==worker") && !m("node.role==manager"));
        assert!(m("node.hostname==PI-1"));
        assert!(m("node.id==123456789abcdef0"));
        assert!(m("node.platform.os==linux") && m("node.platform.arch!=x86_64"));
    }
}

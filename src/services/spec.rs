//! What a user asks of a service (`service create`, `service update`): the spec the
//! managers replicate and the orchestrator works towards. Validation lives here, once,
//! for the CLI (which checks before it asks) and the leader (which checks again, since
//! any client can send anything); its messages are Docker's where Docker has one.

use serde::{Deserialize, Serialize};

use super::constraint::Constraint;

/// Longest service name: a DNS label, as Docker requires.
pub const MAX_NAME: usize = 63;
/// Most replicas one service may ask for. Far beyond an edge cluster, and small enough
/// that one service cannot make the leader build millions of tasks at once.
pub const MAX_REPLICAS: u64 = 100_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    Replicated {
        replicas: u64,
    },
    Global,
    /// Runs `total` tasks to completion, at most `max_concurrent` at a time.
    ReplicatedJob {
        max_concurrent: u64,
        total: u64,
    },
    /// Runs one task to completion on every eligible node.
    GlobalJob,
}

impl Mode {
    /// Docker's names (`service ls` MODE column).
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Replicated { .. } => "replicated",
            Mode::Global => "global",
            Mode::ReplicatedJob { .. } => "replicated job",
            Mode::GlobalJob => "global job",
        }
    }

    pub fn is_job(&self) -> bool {
        matches!(self, Mode::ReplicatedJob { .. } | Mode::GlobalJob)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("invalid name {0:?}: a service name is 1 to {MAX_NAME} letters, digits and dashes, starting and ending with a letter or digit")]
    Name(String),
    #[error("ContainerSpec: image reference must be provided")]
    NoImage,
    #[error("replicas {0} is over the limit of {MAX_REPLICAS}")]
    TooManyReplicas(u64),
    #[error("max-concurrent must be at least 1")]
    NoConcurrency,
    #[error("{0}")]
    Constraint(#[from] super::constraint::ConstraintError),
}

/// Docker's rule for service names: a DNS label.
pub fn check_name(name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(SpecError::Name(name.to_string()))
    }
}

pub fn check_mode(mode: &Mode) -> Result<(), SpecError> {
    match mode {
        Mode::Replicated { replicas }
        | Mode::ReplicatedJob {
            total: replicas, ..
        } if *replicas > MAX_REPLICAS => Err(SpecError::TooManyReplicas(*replicas)),
        Mode::ReplicatedJob {
            max_concurrent: 0, ..
        } => Err(SpecError::NoConcurrency),
        _ => Ok(()),
    }
}

/// Parses `--constraint` values, naming the first bad one.
pub fn parse_constraints(raw: &[String]) -> Result<Vec<Constraint>, SpecError> {
    raw.iter()
        .map(|c| Constraint::parse(c).map_err(SpecError::from))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels() {
        for ok in ["web", "my-web-1", "a", &"x".repeat(63)] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", "-web", "web-", "we_b", "web.1", "wéb", &"x".repeat(64)] {
            let e = check_name(bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid name"), "{bad}: {e}");
        }
    }

    #[test]
    fn modes_are_bounded() {
        assert_eq!(check_mode(&Mode::Replicated { replicas: 0 }), Ok(()));
        assert_eq!(
            check_mode(&Mode::Replicated {
                replicas: MAX_REPLICAS + 1
            }),
            Err(SpecError::TooManyReplicas(MAX_REPLICAS + 1))
        );
        assert_eq!(
            check_mode(&Mode::ReplicatedJob {
                max_concurrent: 0,
                total: 3
            }),
            Err(SpecError::NoConcurrency)
        );
        assert_eq!(
            Mode::ReplicatedJob {
                max_concurrent: 1,
                total: 1
            }
            .name(),
            "replicated job"
        );
        assert!(Mode::GlobalJob.is_job() && !Mode::Global.is_job());
    }

    #[test]
    fn constraints_name_the_bad_one() {
        let raw = vec!["node.role==manager".to_string(), "node.role".to_string()];
        assert_eq!(
            parse_constraints(&raw).unwrap_err().to_string(),
            "constraint expected one operator from ==, !="
        );
        assert_eq!(parse_constraints(&raw[..1]).unwrap().len(), 1);
    }
}

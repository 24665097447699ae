//! Health checks as both ends see them: how a container is checked, what the user said
//! on the command line, and the state `ps` and `inspect` show.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Results kept in the state, as Docker keeps five.
const LOG_KEEP: usize = 5;

/// How a container is checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthSpec {
    /// The command (argv; `CMD-SHELL` checks are `/bin/sh -c ...`).
    pub test: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub start_period: Duration,
    pub retries: u32,
}

/// What the user said on the command line (each overrides the image's).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthFlags {
    pub cmd: Option<String>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub start_period: Option<Duration>,
    pub retries: Option<u32>,
    /// `--no-healthcheck`: none, whatever the image says.
    pub disable: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HealthStatus {
    Starting,
    Healthy,
    Unhealthy,
}

impl HealthStatus {
    pub fn name(self) -> &'static str {
        match self {
            HealthStatus::Starting => "starting",
            HealthStatus::Healthy => "healthy",
            HealthStatus::Unhealthy => "unhealthy",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub start: u64,
    pub end: u64,
    pub exit_code: i32,
    pub output: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthState {
    pub status: HealthStatus,
    pub failing_streak: u32,
    pub log: VecDeque<Probe>,
    /// The container start this state belongs to (a restart starts over).
    pub started_at: u64,
}

impl HealthState {
    /// The state before any probe of a run that started at `started_at`.
    pub fn starting(started_at: u64) -> HealthState {
        HealthState {
            status: HealthStatus::Starting,
            failing_streak: 0,
            log: VecDeque::new(),
            started_at,
        }
    }

    /// Folds one probe result in.
    pub fn record(&mut self, spec: &HealthSpec, probe: Probe) {
        let in_start_period = probe.start
            < self.started_at + u64::try_from(spec.start_period.as_millis()).unwrap_or(u64::MAX);
        if probe.exit_code == 0 {
            self.status = HealthStatus::Healthy;
            self.failing_streak = 0;
        } else if !(in_start_period && self.status == HealthStatus::Starting) {
            self.failing_streak += 1;
            if self.failing_streak >= spec.retries {
                self.status = HealthStatus::Unhealthy;
            }
        }
        self.log.push_back(probe);
        while self.log.len() > LOG_KEEP {
            self.log.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> HealthSpec {
        HealthSpec {
            test: vec!["true".into()],
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            start_period: Duration::from_secs(10),
            retries: 2,
        }
    }

    fn probe(at: u64, code: i32) -> Probe {
        Probe {
            start: at,
            end: at + 1,
            exit_code: code,
            output: String::new(),
        }
    }

    #[test]
    fn status_follows_dockers_rules() {
        let s = spec();
        let mut st = HealthState::starting(1_000);
        st.record(&s, probe(2_000, 1));
        assert_eq!(
            (st.status, st.failing_streak),
            (HealthStatus::Starting, 0),
            "start period"
        );
        st.record(&s, probe(3_000, 0));
        assert_eq!(st.status, HealthStatus::Healthy);
        st.record(&s, probe(4_000, 1));
        assert_eq!(
            (st.status, st.failing_streak),
            (HealthStatus::Healthy, 1),
            "counts once healthy"
        );
        st.record(&s, probe(5_000, 1));
        assert_eq!(st.status, HealthStatus::Unhealthy);
        st.record(&s, probe(6_000, 0));
        assert_eq!((st.status, st.failing_streak), (HealthStatus::Healthy, 0));
        for i in 0..10 {
            st.record(&s, probe(20_000 + i, 1));
        }
        assert_eq!(st.log.len(), LOG_KEEP);
    }
}

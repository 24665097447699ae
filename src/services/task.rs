//! A task's lifecycle: swarmkit's states, in swarmkit's order. A task only moves
//! forward: a report of a state at or below the one recorded is dropped (it is late or
//! repeated), so reports may arrive twice, late or out of order and the record still
//! ends where the task is.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Observed or desired state of a task. The order is the lifecycle's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TaskState {
    /// Created by the orchestrator.
    New,
    /// Waiting for a node (the scheduler found none yet, and says why).
    Pending,
    /// The scheduler chose a node.
    Assigned,
    /// The node's agent took it.
    Accepted,
    /// The agent pulls the image and creates the container.
    Preparing,
    /// The container is created (also the desired state of a replacement that waits
    /// for the task it replaces to stop).
    Ready,
    /// The container is started; with a health check, until it is first healthy.
    Starting,
    Running,
    /// Exited with status 0.
    Complete,
    /// Stopped on request.
    Shutdown,
    /// Exited with another status, or failed once started.
    Failed,
    /// Could not be started (no such image, the registry refused, no such node).
    Rejected,
    /// Desired state only: the task is to go away for good (scale down, service rm).
    Remove,
    /// Its node has been Down for long: it is presumed gone.
    Orphaned,
}

impl TaskState {
    pub const ALL: [TaskState; 14] = [
        TaskState::New,
        TaskState::Pending,
        TaskState::Assigned,
        TaskState::Accepted,
        TaskState::Preparing,
        TaskState::Ready,
        TaskState::Starting,
        TaskState::Running,
        TaskState::Complete,
        TaskState::Shutdown,
        TaskState::Failed,
        TaskState::Rejected,
        TaskState::Remove,
        TaskState::Orphaned,
    ];

    /// Docker's name (`service ps` capitalises it).
    pub fn name(self) -> &'static str {
        match self {
            TaskState::New => "new",
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Accepted => "accepted",
            TaskState::Preparing => "preparing",
            TaskState::Ready => "ready",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Complete => "complete",
            TaskState::Shutdown => "shutdown",
            TaskState::Failed => "failed",
            TaskState::Rejected => "rejected",
            TaskState::Remove => "remove",
            TaskState::Orphaned => "orphaned",
        }
    }

    pub fn parse(s: &str) -> Option<TaskState> {
        TaskState::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
    }

    /// The task will not run again: it ended, or will never start.
    pub fn is_terminal(self) -> bool {
        self > TaskState::Running
    }

    /// Whether an observed state may follow `self`: strictly later in the lifecycle.
    /// `Remove` is never observed.
    pub fn may_become(self, next: TaskState) -> bool {
        next > self && next != TaskState::Remove
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_only_move_forward() {
        use TaskState::*;
        assert!(New.may_become(Pending));
        assert!(Pending.may_become(Running), "steps may be skipped");
        assert!(Running.may_become(Failed));
        assert!(!Running.may_become(Running), "a repeat is dropped");
        assert!(!Running.may_become(Starting), "a late report is dropped");
        assert!(!Shutdown.may_become(Running));
        assert!(!Running.may_become(Remove), "remove is never observed");
        assert!(Running.may_become(Orphaned));
        assert!(!Running.is_terminal() && Complete.is_terminal() && Rejected.is_terminal());
    }

    #[test]
    fn names_round_trip() {
        for s in TaskState::ALL {
            assert_eq!(TaskState::parse(s.name()), Some(s));
        }
        assert_eq!(TaskState::parse("Running"), Some(TaskState::Running));
        assert_eq!(TaskState::parse("runnin"), None);
        // The order is the lifecycle's, as the array lists it.
        let mut sorted = TaskState::ALL;
        sorted.sort();
        assert_eq!(sorted, TaskState::ALL);
    }
}

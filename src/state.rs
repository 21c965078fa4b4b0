//! Task, attempt and run states: the one place that knows what each state means,
//! which ones are final, and how a trigger rule reads the states of upstream tasks.
//!
//! It owns no storage: the store persists these values as their `as_str` names,
//! and the engine asks this module what follows from them.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The state of one task inside one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting for its upstream tasks (not yet ready).
    Pending,
    /// Ready, an attempt is in the queue waiting for a free slot.
    Queued,
    /// An attempt is running.
    Running,
    /// The last attempt failed; the next one waits for its retry delay.
    Retrying,
    /// Finished successfully.
    Success,
    /// Failed for good (retries exhausted, or a non-retryable error).
    Failed,
    /// Not run: an upstream failed, its trigger could not be met, or the run stopped.
    Skipped,
    /// Stopped by a cancellation (Ctrl-C, `cauce cancel`).
    Cancelled,
}

impl TaskState {
    /// Every state, in lifecycle order.
    pub const ALL: [TaskState; 8] = [
        TaskState::Pending,
        TaskState::Queued,
        TaskState::Running,
        TaskState::Retrying,
        TaskState::Success,
        TaskState::Failed,
        TaskState::Skipped,
        TaskState::Cancelled,
    ];

    /// The name stored in the database and shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Retrying => "retrying",
            TaskState::Success => "success",
            TaskState::Failed => "failed",
            TaskState::Skipped => "skipped",
            TaskState::Cancelled => "cancelled",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<TaskState> {
        TaskState::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// A final state never changes again within this try of the run.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Success | TaskState::Failed | TaskState::Skipped | TaskState::Cancelled
        )
    }

    /// Whether the task still has something left to do in this run.
    pub fn is_active(self) -> bool {
        !self.is_final()
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of one attempt (one execution of a task).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttemptState {
    /// In the queue, claimable once `available_at` has passed.
    Queued,
    /// Claimed by an executor slot that holds its lease.
    Running,
    /// Finished successfully.
    Success,
    /// Finished with an error (including a timeout).
    Failed,
    /// The holder of its lease stopped (crash, `kill -9`, lost machine) before it finished.
    Lost,
    /// Cancelled before or while it ran.
    Cancelled,
}

impl AttemptState {
    /// The name stored in the database and shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptState::Queued => "queued",
            AttemptState::Running => "running",
            AttemptState::Success => "success",
            AttemptState::Failed => "failed",
            AttemptState::Lost => "lost",
            AttemptState::Cancelled => "cancelled",
        }
    }

    /// Whether the attempt has ended (it will not change again).
    pub fn is_final(self) -> bool {
        !matches!(self, AttemptState::Queued | AttemptState::Running)
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<AttemptState> {
        [
            AttemptState::Queued,
            AttemptState::Running,
            AttemptState::Success,
            AttemptState::Failed,
            AttemptState::Lost,
            AttemptState::Cancelled,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }
}

impl fmt::Display for AttemptState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of a whole run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Created, tasks being scheduled or running.
    Running,
    /// Every selected task succeeded.
    Success,
    /// Only non-critical tasks failed (and what depended on them was skipped).
    Partial,
    /// A critical task failed for good; the run stopped.
    Failed,
    /// Cancelled by a user or a signal.
    Cancelled,
}

impl RunState {
    /// The name stored in the database and shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Success => "success",
            RunState::Partial => "partial",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<RunState> {
        [
            RunState::Running,
            RunState::Success,
            RunState::Partial,
            RunState::Failed,
            RunState::Cancelled,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }

    /// Whether the run has ended.
    pub fn is_final(self) -> bool {
        self != RunState::Running
    }

    /// The process exit code that `cauce run` uses for this outcome (DESIGN.md: 0, 1, 130).
    pub fn exit_code(self) -> i32 {
        match self {
            RunState::Success => 0,
            RunState::Partial | RunState::Failed | RunState::Running => 1,
            RunState::Cancelled => 130,
        }
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When a task may start, given the states of its upstream tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// Every upstream task succeeded (the default).
    #[default]
    AllSuccess,
    /// Every upstream task reached a final state, whatever it was.
    AllDone,
    /// At least one upstream task failed (cleanup or alerting tasks).
    OneFailed,
}

/// What a trigger rule concludes from the upstream states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Not decided yet: some upstream task is still active.
    Wait,
    /// The task may start.
    Ready,
    /// The trigger can no longer hold: the task is skipped.
    Skip,
}

impl Trigger {
    /// Every trigger rule.
    pub const ALL: [Trigger; 3] = [Trigger::AllSuccess, Trigger::AllDone, Trigger::OneFailed];

    /// The name written in pipeline files.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::AllSuccess => "all_success",
            Trigger::AllDone => "all_done",
            Trigger::OneFailed => "one_failed",
        }
    }

    /// Decides whether a task with this trigger can start.
    pub fn evaluate(self, upstream: impl IntoIterator<Item = TaskState>) -> Readiness {
        let (mut active, mut success, mut failed, mut total) = (0, 0, 0, 0);
        for s in upstream {
            total += 1;
            match s {
                TaskState::Success => success += 1,
                TaskState::Failed => failed += 1,
                s if s.is_active() => active += 1,
                _ => {}
            }
        }
        match self {
            Trigger::AllSuccess if success == total => Readiness::Ready,
            Trigger::AllSuccess if active == 0 || success + active < total => Readiness::Skip,
            Trigger::AllDone if active == 0 => Readiness::Ready,
            Trigger::OneFailed if failed > 0 => Readiness::Ready,
            Trigger::OneFailed if active == 0 => Readiness::Skip,
            _ => Readiness::Wait,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskState::*;

    #[test]
    fn all_success_waits_then_decides() {
        assert_eq!(Trigger::AllSuccess.evaluate([]), Readiness::Ready);
        assert_eq!(
            Trigger::AllSuccess.evaluate([Success, Running]),
            Readiness::Wait
        );
        assert_eq!(
            Trigger::AllSuccess.evaluate([Success, Success]),
            Readiness::Ready
        );
        // One failure is enough to know the trigger cannot hold.
        assert_eq!(
            Trigger::AllSuccess.evaluate([Failed, Running]),
            Readiness::Skip
        );
        assert_eq!(
            Trigger::AllSuccess.evaluate([Skipped, Success]),
            Readiness::Skip
        );
    }

    #[test]
    fn all_done_and_one_failed() {
        assert_eq!(
            Trigger::AllDone.evaluate([Failed, Running]),
            Readiness::Wait
        );
        assert_eq!(
            Trigger::AllDone.evaluate([Failed, Skipped]),
            Readiness::Ready
        );
        assert_eq!(
            Trigger::OneFailed.evaluate([Failed, Running]),
            Readiness::Ready
        );
        assert_eq!(
            Trigger::OneFailed.evaluate([Success, Success]),
            Readiness::Skip
        );
        assert_eq!(
            Trigger::OneFailed.evaluate([Success, Retrying]),
            Readiness::Wait
        );
    }

    #[test]
    fn names_round_trip() {
        for s in TaskState::ALL {
            assert_eq!(TaskState::parse(s.as_str()), Some(s));
        }
        assert_eq!(RunState::parse("partial"), Some(RunState::Partial));
        assert_eq!(AttemptState::parse("lost"), Some(AttemptState::Lost));
        assert_eq!(RunState::Cancelled.exit_code(), 130);
    }
}

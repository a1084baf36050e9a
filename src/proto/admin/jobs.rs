//! The `--json` shapes of jobs: status, summaries, counts, progress, one
//! leaf's output, cancel/purge/rerun results and recurring jobs. Data only:
//! HQ fills them, the CLI shows them.

use crate::proto::ids::{Attempt, JobId, NodeName};
use crate::proto::msg::LeafState;
use serde::{Deserialize, Serialize};

/// A job's counts, for a progress line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobProgress {
    /// The job.
    pub job: JobId,
    /// Its latest attempt.
    pub attempt: Attempt,
    /// As in [`JobStatus::done`].
    pub done: bool,
    /// Leaves by state.
    pub totals: Totals,
    /// Per home relay.
    pub relays: Vec<RelayTotals>,
    /// Destination relays that have not reported their targets yet.
    pub awaiting: Vec<NodeName>,
    /// Creation time, unix ms.
    pub created_at_ms: u64,
    /// As in [`JobStatus::state`] (empty from an HQ that predates it).
    #[serde(default)]
    pub state: String,
    /// As in [`JobStatus::pause_reason`].
    #[serde(default)]
    pub pause_reason: Option<String>,
}

/// `hq job output JOB CLIENT --json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeafOutputView {
    /// The job.
    pub job: JobId,
    /// The client.
    pub client: NodeName,
    /// Its home relay.
    pub relay: NodeName,
    /// The attempt this output is from: the latest that finished (or the
    /// leaf's current one when none has).
    pub attempt: Attempt,
    /// How that attempt ended (or the leaf's state while none has).
    pub state: LeafState,
    /// Its exit code.
    pub exit_code: Option<i32>,
    /// Why it failed, timed out, expired or was canceled.
    pub reason: Option<String>,
    /// The end of its stdout (at most 64 KiB).
    pub stdout: String,
    /// The end of its stderr (at most 64 KiB).
    pub stderr: String,
    /// Bytes it wrote to stdout in all (more than `stdout` when cut).
    pub stdout_bytes: u64,
    /// Bytes it wrote to stderr in all.
    pub stderr_bytes: u64,
    /// Stdout and stderr mixed, from an agent too old to keep them apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// When the process started, unix ms (the agent's clock).
    pub started_at_ms: Option<u64>,
    /// When the attempt finished, unix ms.
    pub finished_at_ms: Option<u64>,
    /// How long the process ran, ms.
    pub duration_ms: Option<u64>,
    /// The leaf's attempt now (a rerun may be under way).
    pub latest_attempt: Attempt,
    /// The leaf's state now.
    pub latest_state: LeafState,
}

/// What `hq job cancel` did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelResult {
    /// The job.
    pub job: JobId,
    /// Leaves that were not final and are now `canceled` (or will be, once
    /// their relay hears of it).
    pub canceled: u64,
}

/// What `hq job purge` did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeResult {
    /// Jobs removed.
    pub jobs: Vec<JobId>,
    /// Their leaves removed at HQ.
    pub leaves: u64,
}

/// Leaves counted by state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Not yet acknowledged by the client.
    pub pending: u64,
    /// Held by the client.
    pub delivered: u64,
    /// Started.
    pub running: u64,
    /// Finished with success.
    pub succeeded: u64,
    /// Finished with failure.
    pub failed: u64,
    /// Killed at the timeout.
    pub timed_out: u64,
    /// Never delivered before expiry.
    pub expired: u64,
    /// Withdrawn.
    pub canceled: u64,
}

impl Totals {
    /// Counts one more leaf in `state`.
    pub fn add(&mut self, state: LeafState) {
        *self.slot(state) += 1;
    }
    /// Counts one leaf fewer in `state`.
    pub fn remove(&mut self, state: LeafState) {
        let slot = self.slot(state);
        *slot = slot.saturating_sub(1);
    }
    /// The count for `state`.
    pub fn get(&self, state: LeafState) -> u64 {
        let mut t = self.clone();
        *t.slot(state)
    }
    fn slot(&mut self, state: LeafState) -> &mut u64 {
        match state {
            LeafState::Pending => &mut self.pending,
            LeafState::Delivered => &mut self.delivered,
            LeafState::Running => &mut self.running,
            LeafState::Succeeded => &mut self.succeeded,
            LeafState::Failed => &mut self.failed,
            LeafState::TimedOut => &mut self.timed_out,
            LeafState::Expired => &mut self.expired,
            LeafState::Canceled => &mut self.canceled,
        }
    }
    /// All leaves.
    pub fn total(&self) -> u64 {
        LeafState::ALL.iter().map(|s| self.get(*s)).sum()
    }
    /// Leaves not yet final.
    pub fn open(&self) -> u64 {
        self.pending + self.delivered + self.running
    }
    /// Adds another set of counts (a batch's children).
    pub fn merge(&mut self, other: &Totals) {
        for s in LeafState::ALL {
            *self.slot(s) += other.get(s);
        }
    }
}

/// One relay's share of a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayTotals {
    /// The home relay.
    pub relay: NodeName,
    /// Its leaves by state.
    pub totals: Totals,
}

/// One leaf's latest result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientStatus {
    /// The client.
    pub client: NodeName,
    /// Its home relay.
    pub relay: NodeName,
    /// The attempt that produced this result.
    pub attempt: Attempt,
    /// Its state.
    pub state: LeafState,
    /// Exit code, if the command exited.
    pub exit_code: Option<i32>,
    /// Why it failed, expired or was canceled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Tail of the output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// The child job this leaf belongs to (a batch's status only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobId>,
}

/// A recurring job: `hq job create --repeat ... --json`, and `hq job list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepeatView {
    /// Its id.
    pub schedule: u64,
    /// The schedule, canonical (`monthly 2nd tue +4d 02:30`).
    pub spec: String,
    /// The next run, unix ms (none: never again).
    pub next_ms: Option<u64>,
    /// Its latest occurrences, oldest first.
    pub jobs: Vec<JobId>,
}

/// The schedule a job is an occurrence of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepeatLink {
    /// The schedule's id.
    pub schedule: u64,
    /// Its text.
    pub spec: String,
    /// Its next run, unix ms.
    pub next_ms: Option<u64>,
}

/// `hq job pause|resume --json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlResult {
    /// The job.
    pub job: JobId,
    /// Its state now: `paused` or `active`.
    pub state: String,
    /// Why it is paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A job in full.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatus {
    /// The job.
    pub job: JobId,
    /// Its latest attempt.
    pub attempt: Attempt,
    /// Every leaf of the latest attempt is final and every destination relay
    /// has reported its targets, or the job was canceled.
    pub done: bool,
    /// `active`, `paused`, `canceled` or `done` (a canceled job is done as
    /// well).
    #[serde(default)]
    pub state: String,
    /// Why the job is paused (by the operator, the failure threshold, a
    /// canary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_reason: Option<String>,
    /// Its rollout policy, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<crate::proto::rollout::Policy>,
    /// Leaves by their latest result.
    pub totals: Totals,
    /// Per home relay.
    pub relays: Vec<RelayTotals>,
    /// Each leaf once.
    pub clients: Vec<ClientStatus>,
    /// What it does, for display.
    pub action: String,
    /// Destination relays.
    pub dest: Vec<NodeName>,
    /// Destination relays that have not yet reported the attempt's targets.
    pub awaiting: Vec<NodeName>,
    /// Creation time, unix ms.
    pub created_at_ms: u64,
    /// Expiry, unix ms.
    pub expires_at_ms: Option<u64>,
    /// When the latest leaf change happened, unix ms (the end, once done).
    #[serde(default)]
    pub last_change_ms: u64,
    /// Leaves matching the request's filters (`clients` may hold fewer: the
    /// limit per state).
    #[serde(default)]
    pub matched: u64,
    /// Paging: `clients` stopped at a page's end; ask again with `after`
    /// set to this client for the rest (never in `job status --json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<NodeName>,
    /// A batch's child jobs, each in brief (empty for other jobs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<JobSummary>,
}

/// A job in brief.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSummary {
    /// The job.
    pub job: JobId,
    /// Latest attempt.
    pub attempt: Attempt,
    /// As in [`JobStatus::done`].
    pub done: bool,
    /// As in [`JobStatus::state`].
    #[serde(default)]
    pub state: String,
    /// The recurring job it is an occurrence of, with its next run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat: Option<RepeatLink>,
    /// What it does.
    pub action: String,
    /// Destination relays.
    pub dest: Vec<NodeName>,
    /// Leaves by latest result.
    pub totals: Totals,
    /// Creation time, unix ms.
    pub created_at_ms: u64,
}

/// The result of `rerun --failed`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RerunResult {
    /// The job.
    pub job: JobId,
    /// The new attempt (unchanged when nothing failed).
    pub attempt: Attempt,
    /// How many leaves it targets.
    pub targets: u64,
}

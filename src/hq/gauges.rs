//! HQ's gauges, set before each scrape: leaves by state over every job (from
//! the per-job counters, as `job list` reads them) and jobs by state.
//!
//! Reads only; the metric names live in `crate::metrics`.

use super::HqState;
use crate::proto::{JobSummary, LeafState};
use std::sync::{Arc, Weak};

/// Registers HQ's collector; it ends with HQ (when `state` is dropped).
pub(crate) fn register(state: &Arc<HqState>) {
    let weak: Weak<HqState> = Arc::downgrade(state);
    crate::metrics::on_scrape(move || {
        let Some(st) = weak.upgrade() else {
            return false;
        };
        match super::view::list(&st) {
            Ok(jobs) => {
                let (leaves, by_state) = sums(&jobs);
                crate::metrics::set_leaves(&leaves);
                crate::metrics::set_jobs(&by_state);
            }
            Err(e) => tracing::warn!(error = %e, "cannot count jobs for the metrics"),
        }
        true
    });
}

/// A count per state label.
type ByState = Vec<(&'static str, u64)>;

/// Job states always exported (zero when none), and the label for any
/// other state a job may report.
const JOB_STATES: [&str; 4] = ["active", "paused", "canceled", "done"];
const OTHER: &str = "other";

/// Leaves by state over all jobs, and jobs by state (as `job list` says:
/// `active`, `paused`, `canceled`, `done`; a job of an older record without
/// a state counts as done or active).
pub(crate) fn sums(jobs: &[JobSummary]) -> (ByState, ByState) {
    let mut leaves = LeafState::ALL.map(|s| (s.as_str(), 0u64));
    let mut states: ByState = JOB_STATES.iter().map(|s| (*s, 0)).collect();
    for j in jobs {
        for (i, s) in LeafState::ALL.iter().enumerate() {
            leaves[i].1 += j.totals.get(*s);
        }
        let state = match j.state.as_str() {
            "" if j.done => "done",
            "" => "active",
            s => JOB_STATES
                .iter()
                .copied()
                .find(|k| *k == s)
                .unwrap_or(OTHER),
        };
        match states.iter_mut().find(|(k, _)| *k == state) {
            Some(slot) => slot.1 += 1,
            None => states.push((OTHER, 1)),
        }
    }
    (leaves.to_vec(), states)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Attempt, JobId, Totals};

    fn job(state: &str, done: bool, states: &[LeafState]) -> JobSummary {
        let mut totals = Totals::default();
        for s in states {
            totals.add(*s);
        }
        JobSummary {
            job: JobId(1),
            attempt: Attempt(1),
            done,
            state: state.into(),
            repeat: None,
            action: "true".into(),
            dest: vec![],
            totals,
            created_at_ms: 0,
        }
    }

    #[test]
    fn leaves_and_jobs_are_summed_by_state() {
        use LeafState::*;
        let jobs = [
            job("done", true, &[Succeeded, Succeeded, Failed]),
            job("active", false, &[Running, Succeeded]),
            job("", false, &[]),
            job("canceled", true, &[Canceled]),
            job("", true, &[]),
            job("exploded", true, &[]),
        ];
        let (leaves, by_state) = sums(&jobs);
        let get = |s: &str| leaves.iter().find(|(n, _)| *n == s).unwrap().1;
        assert_eq!(get("succeeded"), 3);
        assert_eq!(get("failed"), 1);
        assert_eq!(get("running"), 1);
        assert_eq!(get("pending"), 0);
        assert_eq!(leaves.len(), LeafState::ALL.len());
        assert_eq!(get("canceled"), 1);
        assert_eq!(
            by_state,
            vec![
                ("active", 2),
                ("paused", 0),
                ("canceled", 1),
                ("done", 2),
                ("other", 1)
            ]
        );
    }
}

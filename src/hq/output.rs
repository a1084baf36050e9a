//! A leaf's output at HQ: the latest finished attempt's stdout and stderr
//! tails, exit code and timings, kept in their own table (`outputs`, keyed
//! like `leaves`) so that status, wait and list never read them; and the
//! answer to `hq job output`. Never touches the network or the counters.

use super::{HqError, HqState};
use crate::proto::{Attempt, JobId, LeafOutputView, LeafState, NodeName};
use crate::rules::LeafRecord;
use crate::store::keys::{JobClient, JobKey};
use serde::{Deserialize, Serialize};

/// What HQ keeps of a leaf's latest finished attempt.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OutputRecord {
    /// The attempt that finished.
    pub attempt: Attempt,
    /// How it finished (`None` only in records written by nothing yet).
    pub state: Option<LeafState>,
    /// Its exit code.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Why it failed.
    #[serde(default)]
    pub reason: Option<String>,
    /// When it finished (the agent's clock), unix ms.
    pub finished_at_ms: u64,
    /// Stdout and stderr apart (agents that know to send them).
    #[serde(default)]
    pub out: Option<crate::proto::LeafOutput>,
    /// The mixed tail, kept only when `out` is absent (an older agent).
    #[serde(default)]
    pub mixed: Option<String>,
}

/// Takes the output out of a merged leaf record (which then stays small);
/// for a final state, what to keep in `outputs` (also when there is no
/// output, so that the table never shows an earlier attempt's output as
/// the latest).
pub(crate) fn split(rec: &mut LeafRecord) -> Option<OutputRecord> {
    let out = rec.out.take();
    let mixed = rec.output.take();
    if !rec.state.is_final() {
        return None;
    }
    Some(OutputRecord {
        attempt: rec.attempt,
        state: Some(rec.state),
        exit_code: rec.exit_code,
        reason: rec.reason.clone(),
        finished_at_ms: rec.at_ms,
        mixed: if out.is_none() { mixed } else { None },
        out,
    })
}

/// `hq job output JOB CLIENT`.
pub(crate) fn view(st: &HqState, job: JobId, client: &NodeName) -> Result<LeafOutputView, HqError> {
    if st.jobs.get(&JobKey(job))?.is_none() {
        return Err(super::retention::missing(st, job));
    }
    let k = JobClient(job, client.clone());
    let Some(leaf) = st.leaves.get(&k)? else {
        return Err(HqError::Refused(format!(
            "job {job} has no leaf on client {client} (`hq job status {job}` lists its leaves)"
        )));
    };
    let rec: Option<OutputRecord> = st.outputs.get(&k)?;
    Ok(build(job, client, &leaf, rec))
}

/// The answer from a leaf and its output record (pure).
fn build(
    job: JobId,
    client: &NodeName,
    leaf: &LeafRecord,
    rec: Option<OutputRecord>,
) -> LeafOutputView {
    let (out, mixed, attempt, state, exit_code, reason, finished) = match rec {
        Some(r) => (
            r.out.unwrap_or_default(),
            r.mixed,
            r.attempt,
            r.state.unwrap_or(leaf.state),
            r.exit_code,
            r.reason,
            Some(r.finished_at_ms),
        ),
        None => (
            Default::default(),
            leaf.output.clone(),
            leaf.attempt,
            leaf.state,
            leaf.exit_code,
            leaf.reason.clone(),
            leaf.state.is_final().then_some(leaf.at_ms),
        ),
    };
    let ran = out.started_at_ms > 0;
    LeafOutputView {
        job,
        client: client.clone(),
        relay: leaf.relay.clone(),
        attempt,
        state,
        exit_code,
        reason,
        stdout: out.stdout,
        stderr: out.stderr,
        stdout_bytes: out.stdout_bytes,
        stderr_bytes: out.stderr_bytes,
        output: mixed,
        started_at_ms: ran.then_some(out.started_at_ms),
        finished_at_ms: finished,
        duration_ms: ran.then_some(out.duration_ms),
        latest_attempt: leaf.attempt,
        latest_state: leaf.state,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::LeafOutput;

    fn n(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }

    fn finished(attempt: u32, state: LeafState) -> LeafRecord {
        LeafRecord {
            state,
            exit_code: Some(3),
            output: Some("mixed".into()),
            out: Some(LeafOutput {
                stdout: "o".into(),
                stderr: "e".into(),
                stdout_bytes: 1,
                stderr_bytes: 1,
                started_at_ms: 100,
                duration_ms: 20,
            }),
            at_ms: 120,
            ..LeafRecord::pending(n("r1"), Attempt(attempt), 0)
        }
    }

    #[test]
    fn split_keeps_final_outputs_apart_and_leaves_the_record_small() {
        let mut r = finished(1, LeafState::Failed);
        let o = split(&mut r).expect("final");
        assert_eq!((r.out.is_none(), r.output.is_none()), (true, true));
        assert_eq!(o.out.as_ref().unwrap().stdout, "o");
        assert_eq!(o.mixed, None, "mixed tail dropped when apart");
        // An older agent: only the mixed tail.
        let mut r = finished(1, LeafState::Succeeded);
        r.out = None;
        assert_eq!(split(&mut r).unwrap().mixed.as_deref(), Some("mixed"));
        // Not final: nothing kept, still stripped.
        let mut r = finished(1, LeafState::Running);
        assert_eq!(split(&mut r), None);
        assert!(r.out.is_none());
        // Final without any output (refused, expired): a record all the same.
        let mut r = LeafRecord {
            state: LeafState::Expired,
            ..LeafRecord::pending(n("r1"), Attempt(2), 0)
        };
        assert_eq!(split(&mut r).unwrap().attempt, Attempt(2));
    }

    #[test]
    fn view_shows_the_latest_finished_attempt_and_the_leaf_now() {
        let mut done = finished(1, LeafState::Failed);
        let rec = split(&mut done);
        // Rerun: the leaf is pending at attempt 2, the output is attempt 1's.
        let now = LeafRecord::pending(n("r1"), Attempt(2), 200);
        let v = build(JobId(1), &n("c1"), &now, rec);
        assert_eq!((v.attempt, v.state), (Attempt(1), LeafState::Failed));
        assert_eq!(
            (v.latest_attempt, v.latest_state),
            (Attempt(2), LeafState::Pending)
        );
        assert_eq!((v.stdout.as_str(), v.stderr.as_str()), ("o", "e"));
        assert_eq!(
            (v.started_at_ms, v.finished_at_ms, v.duration_ms),
            (Some(100), Some(120), Some(20))
        );
        // Nothing finished yet.
        let v = build(JobId(1), &n("c1"), &now, None);
        assert_eq!((v.finished_at_ms, v.started_at_ms), (None, None));
        assert_eq!(v.state, LeafState::Pending);
    }
}

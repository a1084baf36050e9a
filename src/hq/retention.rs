//! Retention at HQ: which finished jobs go ([`to_purge`], a pure decision),
//! removing them (job records, leaves, counters, their queued assignments
//! and cancels) behind a small tombstone, so that a purged job is reported
//! as purged, never as lost or unknown; queuing a `Purge` for every relay
//! directly under HQ (each passes it on down its subtree); and the periodic
//! check of `hq serve --retention`.
//!
//! Must never remove a job that is not done.

use super::jobs::{load_leaves, JobRecord};
use super::{HqError, HqState};
use crate::link::queue::{self, QueueKey};
use crate::proto::{now_ms, Attempt, JobId, Msg, NodeName, PurgeResult};
use crate::rules::LeafRecord;
use crate::store::keys::{JobClient, JobKey, Name};
use crate::store::{StoreError, Tree};
use serde::{Deserialize, Serialize};
use std::time::{Duration, UNIX_EPOCH};
use tracing::{info, warn};

/// Jobs per `Purge` message (keeps every frame small).
const PER_MESSAGE: usize = 4096;

/// What is left of a purged job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Tombstone {
    /// When it was purged, unix ms.
    pub purged_at_ms: u64,
    /// When it had been created, unix ms.
    pub created_at_ms: u64,
}

/// The tombstones: job -> Tombstone.
fn tombstones(st: &HqState) -> Result<Tree<JobKey, Tombstone>, StoreError> {
    st.store.tree(super::trees::PURGED)
}

/// A job as the purge decision sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub job: JobId,
    /// Every leaf of its latest attempt is final (and every destination
    /// reported its targets), or it was canceled.
    pub done: bool,
    /// When it last changed: its creation, or its latest leaf change, unix ms.
    pub last_ms: u64,
}

/// The jobs to purge at `now`: done, and unchanged for at least `older_than_ms`.
pub(crate) fn to_purge(cands: &[Candidate], now: u64, older_than_ms: u64) -> Vec<JobId> {
    cands
        .iter()
        .filter(|c| c.done && now.saturating_sub(c.last_ms) >= older_than_ms)
        .map(|c| c.job)
        .collect()
}

/// The decision's view of a job and its leaves.
fn candidate(rec: &JobRecord, leaves: &[(NodeName, LeafRecord)]) -> Candidate {
    Candidate {
        job: rec.job,
        // A canceled job is done: its leaves are final, or will be when
        // their relays hear of it.
        done: rec.canceled_at_ms.is_some()
            || (rec.awaiting.is_empty() && leaves.iter().all(|(_, l)| l.state.is_final())),
        last_ms: leaves
            .iter()
            .map(|(_, l)| l.at_ms)
            .chain(rec.canceled_at_ms)
            .fold(rec.created_at_ms, u64::max),
    }
}

/// The error for a job HQ does not hold: purged (with when), or unknown.
pub(crate) fn missing(st: &HqState, job: JobId) -> HqError {
    match tombstones(st).and_then(|t| t.get(&JobKey(job))) {
        Ok(Some(t)) => HqError::Refused(format!(
            "job {job} was purged at {} (finished, past the retention)",
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(t.purged_at_ms))
        )),
        Ok(None) => HqError::Refused(format!("no job {job}")),
        Err(e) => HqError::Store(e),
    }
}

/// `hq job purge --older-than`: removes the done jobs unchanged for at
/// least `older_than_ms`, here and (through queued `Purge`s) in the tree.
pub(crate) async fn purge(st: &HqState, older_than_ms: u64) -> Result<PurgeResult, HqError> {
    let now = now_ms();
    // A first pass without the write lock: only jobs created long enough
    // ago can qualify, and only their leaves are read.
    let mut cands = Vec::new();
    for r in st.jobs.scan() {
        let (_, rec) = r?;
        if now.saturating_sub(rec.created_at_ms) < older_than_ms {
            continue;
        }
        cands.push(candidate(&rec, &load_leaves(st, rec.job)?));
    }
    let chosen = to_purge(&cands, now, older_than_ms);
    let mut result = PurgeResult {
        jobs: vec![],
        leaves: 0,
    };
    let mut send = Vec::new();
    for chunk in chosen.chunks(PER_MESSAGE) {
        let (jobs, leaves, msgs) = remove(st, chunk, now, older_than_ms)?;
        result.jobs.extend(jobs);
        result.leaves += leaves;
        send.extend(msgs);
    }
    if result.jobs.is_empty() {
        return Ok(result);
    }
    st.store.durable().await?;
    info!(
        jobs = result.jobs.len(),
        leaves = result.leaves,
        "purged jobs"
    );
    queue::send_now(&st.children, send);
    st.bump();
    Ok(result)
}

/// Removes those of `jobs` that still qualify (checked again under the
/// write lock: a rerun may have reopened one), not yet durable. Returns
/// the jobs removed, their leaves, and the purges queued for relays.
#[allow(clippy::type_complexity)]
fn remove(
    st: &HqState,
    jobs: &[JobId],
    now: u64,
    older_than_ms: u64,
) -> Result<(Vec<JobId>, u64, Vec<(NodeName, Msg)>), HqError> {
    let _w = st.write.lock().unwrap_or_else(|p| p.into_inner());
    let mut recs = Vec::new();
    for &job in jobs {
        let Some(rec) = st.jobs.get(&JobKey(job))? else {
            continue;
        };
        let leaves = load_leaves(st, job)?;
        if to_purge(&[candidate(&rec, &leaves)], now, older_than_ms).is_empty() {
            continue;
        }
        recs.push((rec, leaves));
    }
    if recs.is_empty() {
        return Ok((vec![], 0, vec![]));
    }
    let gone: Vec<JobId> = recs.iter().map(|(r, _)| r.job).collect();
    // Relays directly under HQ: each passes the purge on to its subtree.
    let mut tops = Vec::new();
    for r in st.relays.scan() {
        let (k, rec) = r?;
        if rec.parent == st.me {
            let Name(n) = k;
            tops.push(n);
        }
    }
    // Tombstones and the purges first: after a crash a job is either still
    // whole (and purged again), or reported as purged.
    let tomb = tombstones(st)?;
    for (rec, _) in &recs {
        tomb.put(
            &JobKey(rec.job),
            &Tombstone {
                purged_at_ms: now,
                created_at_ms: rec.created_at_ms,
            },
        )?;
    }
    let id = st.store.next_id("purge")?;
    let mut msgs = Vec::new();
    for t in &tops {
        let m = Msg::Purge {
            id,
            jobs: gone.clone(),
        };
        st.down.put(t, &m)?;
        msgs.push((t.clone(), m));
    }
    let mut leaves_removed = 0;
    for (rec, leaves) in &recs {
        let job = rec.job;
        for t in &tops {
            st.down.remove(t, &QueueKey::Cancel(job))?;
            for a in 1..=rec.attempt.0 {
                st.down.remove(t, &QueueKey::Assign(job, Attempt(a)))?;
            }
        }
        for (client, _) in leaves {
            st.leaves.remove(&JobClient(job, client.clone()))?;
            st.outputs.remove(&JobClient(job, client.clone()))?;
        }
        leaves_removed += leaves.len() as u64;
        st.counters.forget(job);
        // The job record last: while it is there, the job is still whole enough to purge again.
        st.jobs.remove(&JobKey(job))?;
    }
    Ok((gone, leaves_removed, msgs))
}

/// How often `hq serve` looks for jobs past the retention.
fn period(retention: Duration) -> Duration {
    (retention / 2).clamp(Duration::from_secs(1), Duration::from_secs(3600))
}

/// Purges finished jobs unchanged for `retention`, now and then, for ever.
pub(crate) async fn run(st: std::sync::Arc<HqState>, retention: Duration) {
    let ms = retention.as_millis() as u64;
    loop {
        tokio::time::sleep(period(retention)).await;
        // With several HQs on one database, one of them purges.
        if !st.store.holds_duty("retention") {
            continue;
        }
        if let Err(e) = purge(&st, ms).await {
            warn!(error = %e, "retention: cannot purge old jobs");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_done_jobs_unchanged_long_enough_go() {
        const DAY: u64 = 86_400_000;
        let now = 100 * DAY;
        // (done, last change, older than) -> purged
        let cases: &[(bool, u64, u64, bool)] = &[
            (true, now - 31 * DAY, 30 * DAY, true),
            (true, now - 30 * DAY, 30 * DAY, true),
            (true, now - 30 * DAY + 1, 30 * DAY, false),
            (false, now - 99 * DAY, 30 * DAY, false),
            (false, now, 0, false),
            (true, now, 0, true),
            // A clock that went back: never "older".
            (true, now + DAY, DAY, false),
        ];
        for (i, &(done, last_ms, older, want)) in cases.iter().enumerate() {
            let c = Candidate {
                job: JobId(i as u64),
                done,
                last_ms,
            };
            assert_eq!(
                to_purge(std::slice::from_ref(&c), now, older) == vec![c.job],
                want,
                "case {i}: {c:?}, older than {older}"
            );
        }
    }

    fn n(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }

    #[test]
    fn a_job_is_done_when_every_leaf_is_final_and_every_target_set_came() {
        use crate::proto::{Action, LeafState};
        let rec = |awaiting: Vec<NodeName>| JobRecord {
            job: JobId(1),
            action: Action::Ping,
            dest: vec![n("r1")],
            created_at_ms: 10,
            expires_ms: None,
            expires_at_ms: None,
            attempt: Attempt(2),
            awaiting,
            canceled_at_ms: None,
            sent_to: vec![],
        };
        let leaf = |state, at_ms| LeafRecord {
            relay: n("r1"),
            attempt: Attempt(2),
            state,
            exit_code: None,
            reason: None,
            output: None,
            at_ms,
            out: None,
            audit: None,
        };
        let fin = vec![
            (n("c1"), leaf(LeafState::Succeeded, 50)),
            (n("c2"), leaf(LeafState::Expired, 70)),
        ];
        let c = candidate(&rec(vec![]), &fin);
        assert!(c.done);
        assert_eq!(c.last_ms, 70);
        assert!(!candidate(&rec(vec![n("r1")]), &fin).done);
        let mut open = fin.clone();
        open.push((n("c3"), leaf(LeafState::Running, 60)));
        assert!(!candidate(&rec(vec![]), &open).done);
        assert_eq!(candidate(&rec(vec![]), &[]).last_ms, 10);
    }
}

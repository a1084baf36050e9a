//! Batch jobs: a job made of other jobs (`Action::Batch`). A batch has its
//! own id and record in `jobs` but no leaves; its status, progress, wait,
//! rerun and cancel roll up its children. Made by `hq sync` today, by
//! anything that launches several jobs as one tomorrow.
//!
//! Never sends anything down the tree itself: reruns and cancels go through
//! `jobs.rs` once per child.

use super::jobs::{self, JobRecord};
use super::view;
use super::{HqError, HqState};
use crate::proto::sync::BatchSpec;
use crate::proto::{
    now_ms, Action, Attempt, CancelResult, JobId, JobProgress, JobStatus, NodeName, RelayTotals,
    RerunResult, Totals,
};
use crate::store::keys::JobKey;
use std::collections::BTreeMap;
use tracing::info;

/// The children of a batch record (`None` for any other job).
pub(crate) fn children(rec: &JobRecord) -> Option<&BatchSpec> {
    match &rec.action {
        Action::Batch(b) => Some(b),
        _ => None,
    }
}

/// Records a batch of `jobs` (already created); durable on return.
pub(crate) async fn create(
    st: &HqState,
    jobs: Vec<JobId>,
    dest: Vec<NodeName>,
    label: String,
) -> Result<JobId, HqError> {
    let job = {
        let _w = st.write.lock().unwrap_or_else(|p| p.into_inner());
        let job = JobId(st.store.next_id("job")?);
        let rec = JobRecord {
            job,
            action: Action::Batch(BatchSpec {
                jobs: jobs.clone(),
                label,
            }),
            dest,
            created_at_ms: now_ms(),
            expires_ms: None,
            expires_at_ms: None,
            attempt: Attempt(1),
            awaiting: vec![],
            canceled_at_ms: None,
            sent_to: vec![],
            rollout: Default::default(),
            repeat: None,
            filter: Default::default(),
        };
        st.jobs.put(&JobKey(job), &rec)?;
        job
    };
    st.store.durable().await?;
    info!(batch = %job, jobs = ?jobs, "batch created");
    st.bump();
    Ok(job)
}

/// Whether every child is done (a purged child counts as done), or the
/// batch was canceled.
pub(crate) fn is_done(st: &HqState, rec: &JobRecord, b: &BatchSpec) -> Result<bool, HqError> {
    if rec.canceled_at_ms.is_some() {
        return Ok(true);
    }
    for j in &b.jobs {
        if st.jobs.get(&JobKey(*j))?.is_some() && !view::is_job_done(st, *j)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn merge_relays(into: &mut BTreeMap<NodeName, Totals>, from: &[RelayTotals]) {
    for r in from {
        into.entry(r.relay.clone()).or_default().merge(&r.totals);
    }
}

fn relays(m: BTreeMap<NodeName, Totals>) -> Vec<RelayTotals> {
    m.into_iter()
        .map(|(relay, totals)| RelayTotals { relay, totals })
        .collect()
}

/// A batch's status: totals and relays summed over its children, every
/// child's leaves (each naming its job), and each child in brief.
pub(crate) fn status(
    st: &HqState,
    rec: JobRecord,
    b: &BatchSpec,
    f: &view::Filter,
) -> Result<JobStatus, HqError> {
    let mut totals = Totals::default();
    let mut per_relay = BTreeMap::new();
    let mut clients = Vec::new();
    let mut summaries = Vec::new();
    let mut matched = 0;
    let mut attempt = rec.attempt;
    let mut last_change_ms = rec.created_at_ms;
    for j in &b.jobs {
        if st.jobs.get(&JobKey(*j))?.is_none() {
            continue;
        }
        let s = view::status_of(st, *j, f, None)?;
        totals.merge(&s.totals);
        merge_relays(&mut per_relay, &s.relays);
        matched += s.matched;
        attempt = attempt.max(s.attempt);
        last_change_ms = last_change_ms.max(s.last_change_ms);
        clients.extend(s.clients.into_iter().map(|mut c| {
            c.job = Some(*j);
            c
        }));
        summaries.push(view::summary(st, *j)?);
    }
    let done = is_done(st, &rec, b)?;
    Ok(JobStatus {
        job: rec.job,
        attempt,
        done,
        state: view::job_state(
            rec.canceled_at_ms.is_some(),
            done,
            rec.rollout.paused.is_some(),
        )
        .into(),
        pause_reason: None,
        policy: None,
        totals,
        relays: relays(per_relay),
        clients,
        action: view::describe(&rec.action),
        dest: rec.dest,
        awaiting: vec![],
        created_at_ms: rec.created_at_ms,
        expires_at_ms: None,
        last_change_ms,
        matched,
        next: None,
        jobs: summaries,
    })
}

/// A batch's counts, summed over its children from memory.
pub(crate) fn progress(
    st: &HqState,
    rec: &JobRecord,
    b: &BatchSpec,
) -> Result<JobProgress, HqError> {
    let mut totals = Totals::default();
    let mut per_relay = BTreeMap::new();
    let mut attempt = rec.attempt;
    for j in &b.jobs {
        if st.jobs.get(&JobKey(*j))?.is_none() {
            continue;
        }
        let p = view::progress(st, *j)?;
        totals.merge(&p.totals);
        merge_relays(&mut per_relay, &p.relays);
        attempt = attempt.max(p.attempt);
    }
    let done = is_done(st, rec, b)?;
    Ok(JobProgress {
        job: rec.job,
        attempt,
        done,
        state: super::rollout::state_of(rec, done).into(),
        pause_reason: rec.rollout.paused.clone().filter(|_| !done),
        totals,
        relays: relays(per_relay),
        awaiting: vec![],
        created_at_ms: rec.created_at_ms,
    })
}

/// A batch's totals (for `job list`).
pub(crate) fn totals(st: &HqState, b: &BatchSpec) -> Result<Totals, HqError> {
    let mut t = Totals::default();
    for j in &b.jobs {
        if st.jobs.get(&JobKey(*j))?.is_some() {
            t.merge(&view::totals(st, *j)?);
        }
    }
    Ok(t)
}

/// `job rerun BATCH --failed`: reruns the failed leaves of each child.
pub(crate) async fn rerun(
    st: &HqState,
    rec: &JobRecord,
    b: &BatchSpec,
    expired: bool,
) -> Result<RerunResult, HqError> {
    if rec.canceled_at_ms.is_some() {
        return Err(HqError::Refused(format!(
            "job {} was canceled; a canceled job cannot be rerun",
            rec.job
        )));
    }
    let mut out = RerunResult {
        job: rec.job,
        attempt: rec.attempt,
        targets: 0,
    };
    for j in &b.jobs {
        // A child purged, or canceled on its own: nothing to rerun there.
        match st.jobs.get(&JobKey(*j))? {
            Some(c) if c.canceled_at_ms.is_none() => {}
            _ => continue,
        }
        let r = jobs::rerun_one(st, *j, expired).await?;
        out.targets += r.targets;
        out.attempt = out.attempt.max(r.attempt);
    }
    info!(batch = %rec.job, targets = out.targets, "batch rerun");
    Ok(out)
}

/// `job cancel BATCH`: cancels every child, then marks the batch canceled.
pub(crate) async fn cancel(
    st: &HqState,
    mut rec: JobRecord,
    b: &BatchSpec,
) -> Result<CancelResult, HqError> {
    let mut out = CancelResult {
        job: rec.job,
        canceled: 0,
    };
    for j in &b.jobs {
        if st.jobs.get(&JobKey(*j))?.is_none() {
            continue;
        }
        out.canceled += jobs::cancel_one(st, *j).await?.canceled;
    }
    {
        let _w = st.write.lock().unwrap_or_else(|p| p.into_inner());
        rec.canceled_at_ms.get_or_insert(now_ms());
        st.jobs.put(&JobKey(rec.job), &rec)?;
    }
    st.store.durable().await?;
    st.bump();
    info!(batch = %rec.job, leaves = out.canceled, "batch canceled");
    Ok(out)
}

//! Recurring jobs (`--repeat SPEC`, the grammar of `hq package schedule`)
//! and jobs held until a relay's package sync finished (`--after-sync`).
//!
//! A schedule is a record (`repeats`: id -> RepeatRecord) holding what each
//! occurrence creates and when the next is due. Every second HQ creates the
//! due occurrences; each is an ordinary job linked to its schedule, written
//! in the same atomic change that moves the schedule to its next due time,
//! so each due time makes exactly one job, also across restarts (due times
//! missed while HQ was down make one job, not one each).
//!
//! A job `--after-sync R` is created paused ("waiting for relay R's package
//! sync") and resumed once HQ holds no unanswered sync for R (at once when
//! none is pending). Never sends anything itself beyond what `jobs` and
//! `rollout` send.

use super::{HqError, HqState};
use crate::pkg::schedule::Schedule;
use crate::proto::{now_ms, Action, JobId, NodeName, PolicyRequest, RepeatLink, RepeatView};
use crate::store::keys::{JobKey, Seq};
use serde::{Deserialize, Serialize};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// A recurring job as HQ stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RepeatRecord {
    /// Its id.
    pub id: u64,
    /// The schedule's text, canonical.
    pub spec: String,
    /// What each occurrence targets and does.
    pub dest: Vec<NodeName>,
    /// `--dest clients`: these clients, at their homes at each occurrence
    /// (then `dest` is empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<NodeName>,
    /// What narrows each occurrence's targets (labels, exclusions).
    #[serde(default)]
    pub filter: crate::proto::TargetFilter,
    pub action: Action,
    pub expires_ms: Option<u64>,
    /// Each occurrence's rollout (canaries picked per occurrence).
    pub policy: PolicyRequest,
    /// The next due time, unix ms (`None`: never again).
    pub next_ms: Option<u64>,
    /// The due time of the latest occurrence.
    #[serde(default)]
    pub last_due_ms: Option<u64>,
    /// The latest occurrences (at most [`KEPT`]).
    #[serde(default)]
    pub jobs: Vec<JobId>,
}

/// Occurrences remembered per schedule.
const KEPT: usize = 20;

fn parse(spec: &str) -> Result<Schedule, HqError> {
    Schedule::from_str(spec).map_err(|e| HqError::Refused(format!("--repeat: {e}")))
}

/// `hq job create ... --repeat SPEC`: checks everything a job would be
/// checked for, then records the schedule (no job yet).
pub(crate) async fn create(
    st: &HqState,
    dest: Vec<NodeName>,
    clients: Vec<NodeName>,
    filter: crate::proto::TargetFilter,
    action: Action,
    expires_ms: Option<u64>,
    mut policy: PolicyRequest,
) -> Result<RepeatView, HqError> {
    let spec = policy.repeat.take().unwrap_or_default();
    let sched = parse(&spec)?;
    if policy.start_at_ms.is_some() {
        return Err(HqError::Refused(
            "--at and --repeat do not go together (the schedule says when)".into(),
        ));
    }
    if clients.is_empty() {
        super::jobs::check_create(st, &dest, &filter, &action, &policy)?;
    } else {
        // Named clients: every name known now (their homes are looked up
        // again at each occurrence).
        super::jobs::check_action(st, &action)?;
        let targets = super::targets::resolve(st, &clients, &filter)?;
        super::rollout::make_policy(&policy, || Ok(targets), now_ms())?;
    }
    let now = now_ms();
    let rec = RepeatRecord {
        id: st.store.next_id("repeat")?,
        spec: sched.to_string(),
        dest,
        clients,
        filter,
        action,
        expires_ms,
        policy,
        next_ms: sched.next_after(now),
        last_due_ms: None,
        jobs: vec![],
    };
    st.repeats.put(&Seq(rec.id), &rec)?;
    st.store.durable().await?;
    info!(schedule = rec.id, spec = %rec.spec, next_ms = ?rec.next_ms, "recurring job scheduled");
    st.bump();
    Ok(view(&rec))
}

fn view(r: &RepeatRecord) -> RepeatView {
    RepeatView {
        schedule: r.id,
        spec: r.spec.clone(),
        next_ms: r.next_ms,
        jobs: r.jobs.clone(),
    }
}

/// Every schedule.
pub(crate) fn list(st: &HqState) -> Result<Vec<RepeatView>, HqError> {
    let mut out = Vec::new();
    for r in st.repeats.scan() {
        out.push(view(&r?.1));
    }
    Ok(out)
}

/// `hq job unschedule SCHEDULE`: removes the schedule (under HQ's write
/// lock, so an occurrence being made either came first or is not made);
/// the jobs it made stay. Returns it as it was last.
pub(crate) async fn remove(st: &HqState, id: u64) -> Result<RepeatView, HqError> {
    let rec = {
        let _w = st.write.lock().unwrap_or_else(|p| p.into_inner());
        let Some(rec) = st.repeats.get(&Seq(id))? else {
            return Err(HqError::Refused(format!(
                "no schedule {id} (see hq job schedules)"
            )));
        };
        st.repeats.remove(&Seq(id))?;
        rec
    };
    st.store.durable().await?;
    info!(schedule = id, spec = %rec.spec, "recurring job unscheduled");
    st.bump();
    Ok(view(&rec))
}

/// Whether the schedule `id` still exists (checked, under HQ's write lock,
/// before an occurrence is written: a removed schedule makes no more jobs).
pub(crate) fn exists(st: &HqState, id: u64) -> Result<bool, HqError> {
    Ok(st.repeats.contains(&Seq(id))?)
}

/// The schedule a job belongs to, for the job list.
pub(crate) fn link(st: &HqState, id: Option<u64>) -> Option<RepeatLink> {
    let r = st.repeats.get(&Seq(id?)).ok().flatten()?;
    Some(RepeatLink {
        schedule: r.id,
        spec: r.spec,
        next_ms: r.next_ms,
    })
}

/// The record after an occurrence due at `due` was made at `now` as `job`.
pub(crate) fn advanced(r: &RepeatRecord, due: u64, now: u64, job: JobId) -> RepeatRecord {
    let mut r = r.clone();
    r.last_due_ms = Some(due);
    r.next_ms = Schedule::from_str(&r.spec)
        .ok()
        .and_then(|s| s.next_after(now.max(due)));
    r.jobs.push(job);
    if r.jobs.len() > KEPT {
        r.jobs.remove(0);
    }
    r
}

/// Creates the occurrences due at `now`.
async fn fire_due(st: &HqState, now: u64) -> Result<(), HqError> {
    let mut due = Vec::new();
    for r in st.repeats.scan() {
        let (_, rec) = r?;
        if rec.next_ms.is_some_and(|n| n <= now) {
            due.push(rec);
        }
    }
    for rec in due {
        match super::jobs::create_occurrence(st, &rec, now).await {
            Ok(job) => info!(schedule = rec.id, %job, "recurring job started"),
            Err(e) => {
                // Skip this due time (a relay gone, a package removed): the
                // next one tries again.
                warn!(schedule = rec.id, error = %e, "recurring job not started");
                let due = rec.next_ms.unwrap_or(now);
                let mut next = advanced(&rec, due, now, JobId(0));
                next.jobs.pop();
                st.repeats.put(&Seq(rec.id), &next)?;
                st.store.durable().await?;
            }
        }
    }
    Ok(())
}

/// Whether HQ holds an unanswered sync for `relay`.
fn sync_pending(st: &HqState, relay: &NodeName) -> Result<bool, HqError> {
    for r in st.syncs.scan::<crate::proto::SyncOrder>(b"") {
        if r?.1.relay == *relay {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The pause reason of a job waiting for `relay`'s sync.
pub(crate) fn waiting_reason(relay: &NodeName) -> String {
    format!("waiting for relay {relay}'s package sync")
}

/// Resumes the jobs whose relay's sync finished.
async fn release_synced(st: &HqState) -> Result<(), HqError> {
    let mut waiting = Vec::new();
    for r in st.after_sync.scan() {
        let (JobKey(job), relay) = r?;
        waiting.push((job, relay));
    }
    for (job, relay) in waiting {
        if sync_pending(st, &relay)? {
            continue;
        }
        match super::rollout::release_hold(st, job, &waiting_reason(&relay)).await {
            Ok(()) => info!(%job, %relay, "package sync finished; job released"),
            Err(e) => warn!(%job, error = %e, "cannot release a job held for a sync"),
        }
        st.after_sync.remove(&JobKey(job))?;
        st.store.durable().await?;
    }
    Ok(())
}

/// The singleton duty of making occurrences (and releasing held jobs):
/// an occurrence's write is fenced by it ([`crate::store::Store::fence`]).
pub(crate) const DUTY: &str = "repeats";

/// Every second until HQ stops: due occurrences, then held jobs.
pub(crate) async fn run(st: Arc<HqState>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        every.tick().await;
        // One HQ of those sharing a database makes the occurrences.
        if !st.store.holds_duty(DUTY) {
            continue;
        }
        if let Err(e) = fire_due(&st, now_ms()).await {
            warn!(error = %e, "recurring jobs");
        }
        if let Err(e) = release_synced(&st).await {
            warn!(error = %e, "jobs held for a sync");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_occurrence_moves_the_schedule_to_its_next_due_time() {
        let day = 86_400_000;
        let r = RepeatRecord {
            id: 1,
            spec: "daily 02:30".into(),
            dest: vec![],
            clients: vec![],
            filter: Default::default(),
            action: Action::Ping,
            expires_ms: None,
            policy: PolicyRequest::default(),
            next_ms: Some(10 * day + 9_000_000),
            last_due_ms: None,
            jobs: vec![],
        };
        let due = 10 * day + 9_000_000;
        // Made a little late: the next is tomorrow's, not a second one today.
        let a = advanced(&r, due, due + 5_000, JobId(4));
        assert_eq!(a.next_ms, Some(11 * day + 9_000_000));
        assert_eq!(a.last_due_ms, Some(due));
        assert_eq!(a.jobs, vec![JobId(4)]);
        // HQ down for three days: one occurrence, then the next future one.
        let b = advanced(&r, due, due + 3 * day, JobId(5));
        assert_eq!(b.next_ms, Some(14 * day + 9_000_000));
        let mut many = r.clone();
        for i in 0..30 {
            many = advanced(&many, due, due, JobId(i));
        }
        assert_eq!(many.jobs.len(), KEPT);
        assert_eq!(many.jobs.last(), Some(&JobId(29)));
    }
}

//! A job's rollout at HQ: the policy it was created with (canaries picked
//! here), pause and resume by hand, and the circuit breaker and canary
//! check run after each batch of results (`crate::rollout::hq_verdict`).
//! A pause or resume is one atomic write of the job record and a queued
//! `Pause`/`Resume` for every relay under HQ that got the job (numbered by
//! HQ, so the latest wins everywhere); sent once durable. Relays enforce;
//! HQ never holds leaves itself.

use super::jobs::JobRecord;
use super::{HqError, HqState};
use crate::link::downstream::Outgoing;
use crate::proto::{ControlResult, JobId, LeafState, Msg, NodeName, Policy, PolicyRequest};
use crate::rollout::{hq_verdict, CanaryState, Verdict};
use crate::store::keys::{JobClient, JobKey, Name};
use crate::store::StoreError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tracing::{info, warn};

/// A job's rollout as HQ keeps it (in its record).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct JobRollout {
    /// What the relays enforce.
    #[serde(default)]
    pub policy: Policy,
    /// Paused, and why.
    #[serde(default)]
    pub paused: Option<String>,
    /// The canaries all succeeded (or the job was resumed by hand).
    #[serde(default)]
    pub canary_open: bool,
    /// Failures of the whole job at the last resume.
    #[serde(default)]
    pub fail_base: u64,
    /// Failures per home relay at the last resume.
    #[serde(default)]
    pub relay_base: BTreeMap<NodeName, u64>,
}

/// The most canaries a job may ask for.
pub(crate) const MAX_CANARIES: u64 = 1_000;

/// How far in the past `--at` may lie (a clock a little behind HQ's).
pub(crate) const AT_SLACK_MS: u64 = 60_000;

/// Checks a requested policy and makes it a policy: canaries are picked
/// among `candidates` (clients with their home relays: those HQ knows under
/// the destination relays, or the named clients), spread over their homes.
pub(crate) fn make_policy(
    req: &PolicyRequest,
    candidates: impl FnOnce() -> Result<Vec<(NodeName, NodeName)>, HqError>,
    now: u64,
) -> Result<Policy, HqError> {
    if let Some(crate::proto::Limit::Count(0) | crate::proto::Limit::Percent(0)) = req.batch {
        return Err(HqError::Refused("--batch must be at least 1".into()));
    }
    if let Some(crate::proto::Limit::Percent(p)) = req.max_failures.or(req.batch) {
        if p > 100 {
            return Err(HqError::Refused(format!(
                "a percentage of {p}% is more than 100%"
            )));
        }
    }
    if let Some(at) = req.start_at_ms {
        if at + AT_SLACK_MS < now {
            return Err(HqError::Refused(format!(
                "--at is {} s in the past (at most {} s allowed)",
                (now - at) / 1000,
                AT_SLACK_MS / 1000
            )));
        }
    }
    let canary = match req.canary {
        None => vec![],
        Some(0) => return Err(HqError::Refused("--canary must be at least 1".into())),
        Some(n) if n > MAX_CANARIES => {
            return Err(HqError::Refused(format!(
                "--canary {n}: at most {MAX_CANARIES}"
            )))
        }
        Some(n) => {
            let picked = crate::rollout::pick_canaries(candidates()?, n as usize);
            if picked.is_empty() {
                return Err(HqError::Refused(
                    "--canary: no client is known under the destination".into(),
                ));
            }
            picked
        }
    };
    Ok(Policy {
        batch: req.batch,
        canary,
        max_failures: req.max_failures,
        start_at_ms: req.start_at_ms,
        window: req.window,
    })
}

/// Clients HQ knows under any of `dest`, with their home relays.
pub(crate) fn clients_under(
    st: &HqState,
    dest: &[NodeName],
) -> Result<Vec<(NodeName, NodeName)>, HqError> {
    let parent = |r: &NodeName| super::jobs::parent_of(st, r);
    let mut out = Vec::new();
    for r in st.clients.scan() {
        let (Name(c), rec) = r?;
        if st.deny.contains(&c) {
            continue;
        }
        let under = dest.contains(&rec.relay)
            || crate::rules::ancestors(&rec.relay, parent)
                .iter()
                .any(|a| dest.contains(a));
        if under {
            out.push((c, rec.relay));
        }
    }
    Ok(out)
}

/// The job's state for status: `paused` while paused and not over.
pub(crate) fn state_of(rec: &JobRecord, done: bool) -> &'static str {
    super::view::job_state(
        rec.canceled_at_ms.is_some(),
        done,
        rec.rollout.paused.is_some(),
    )
}

/// The control message for a job's pause state.
pub(crate) fn control_msg(job: JobId, seq: u64, paused: &Option<String>) -> Msg {
    match paused {
        Some(reason) => Msg::Pause {
            job,
            seq,
            reason: reason.clone(),
        },
        None => Msg::Resume { job, seq },
    }
}

/// Writes `rec` (whose rollout just changed) and queues its control for
/// the relays (not yet durable); returns what to send once durable. Call
/// with HQ's write lock held.
fn write_control(st: &HqState, rec: &JobRecord) -> Result<Outgoing, StoreError> {
    let seq = st.store.next_id("control")?;
    let msg = control_msg(rec.job, seq, &rec.rollout.paused);
    let relays = if rec.sent_to.is_empty() {
        super::jobs::top_relays(st).map_err(|e| StoreError::Corrupt {
            tree: "relays".into(),
            reason: e.to_string(),
        })?
    } else {
        rec.sent_to.clone()
    };
    st.store.atomically(&[&st.jobs, st.down.table()], |w| {
        w.put_at(&st.jobs, &JobKey(rec.job), rec)?;
        for r in &relays {
            st.down.put_in(w, r, &msg)?;
        }
        Ok(())
    })?;
    Ok(relays.into_iter().map(|r| (r, msg.clone())).collect())
}

fn failures(t: &crate::proto::Totals) -> u64 {
    t.get(LeafState::Failed) + t.get(LeafState::TimedOut)
}

/// `hq job pause` / `hq job resume`.
pub(crate) async fn set_paused(
    st: &HqState,
    job: JobId,
    pause: bool,
) -> Result<ControlResult, HqError> {
    let (result, sends) = {
        let _w = st.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut rec: JobRecord = st
            .jobs
            .get(&JobKey(job))?
            .ok_or_else(|| super::retention::missing(st, job))?;
        let counts = super::view::counts_held(st, job)?;
        let done = super::view::is_done(&rec, &counts.totals);
        if rec.canceled_at_ms.is_some() {
            return Err(HqError::Refused(format!("job {job} was canceled")));
        }
        if done {
            return Err(HqError::Refused(format!("job {job} is done")));
        }
        let sends = match (pause, rec.rollout.paused.is_some()) {
            (true, true) => vec![],
            (false, false) => {
                return Err(HqError::Refused(format!("job {job} is not paused")));
            }
            (true, false) => {
                rec.rollout.paused = Some("paused by the operator".into());
                write_control(st, &rec)?
            }
            (false, true) => {
                rec.rollout.paused = None;
                rec.rollout.canary_open = true;
                rec.rollout.fail_base = failures(&counts.totals);
                rec.rollout.relay_base = counts
                    .relays
                    .iter()
                    .map(|(r, t)| (r.clone(), failures(t)))
                    .collect();
                write_control(st, &rec)?
            }
        };
        info!(%job, paused = pause, "job {}", if pause { "paused" } else { "resumed" });
        (
            ControlResult {
                job,
                state: state_of(&rec, done).into(),
                reason: rec.rollout.paused.clone(),
            },
            sends,
        )
    };
    st.store.durable().await?;
    crate::link::queue::send_now(&st.children, sends);
    st.bump();
    Ok(result)
}

/// Resumes `job` if it is still paused for `reason` (a hold HQ put on it,
/// such as waiting for a sync); an operator's pause since stays.
pub(crate) async fn release_hold(st: &HqState, job: JobId, reason: &str) -> Result<(), HqError> {
    let sends = {
        let _w = st.write.lock().unwrap_or_else(|p| p.into_inner());
        let Some(mut rec) = st.jobs.get(&JobKey(job))? else {
            return Ok(());
        };
        if rec.rollout.paused.as_deref() != Some(reason) || rec.canceled_at_ms.is_some() {
            return Ok(());
        }
        rec.rollout.paused = None;
        write_control(st, &rec)?
    };
    st.store.durable().await?;
    crate::link::queue::send_now(&st.children, sends);
    st.bump();
    Ok(())
}

/// After a batch of results (HQ's write lock held, not yet durable): the
/// circuit breaker and the canaries of each job in `jobs`. Returns the
/// controls to send once durable.
pub(crate) fn check(st: &HqState, jobs: &[JobId]) -> Result<Outgoing, StoreError> {
    let mut out = Vec::new();
    for job in jobs {
        let Some(mut rec) = st.jobs.get(&JobKey(*job))? else {
            continue;
        };
        let p = &rec.rollout.policy;
        let watch_canary = !p.canary.is_empty() && !rec.rollout.canary_open;
        if rec.canceled_at_ms.is_some()
            || rec.rollout.paused.is_some()
            || (p.max_failures.is_none() && !watch_canary)
        {
            continue;
        }
        let counts = match super::view::counts_held(st, *job) {
            Ok(c) => c,
            Err(e) => {
                warn!(%job, error = %e, "cannot count the job's leaves");
                continue;
            }
        };
        let per_relay: Vec<(NodeName, u64, u64)> = counts
            .relays
            .iter()
            .map(|(r, t)| {
                let base = rec.rollout.relay_base.get(r).copied().unwrap_or(0);
                (r.clone(), failures(t).saturating_sub(base), t.total())
            })
            .collect();
        let mut canaries = Vec::new();
        if watch_canary {
            for c in &p.canary {
                let s = match st.leaves.get(&JobClient(*job, c.clone()))? {
                    Some(l) if l.state == LeafState::Succeeded => CanaryState::Succeeded,
                    Some(l) if l.state.is_final() => CanaryState::Failed,
                    // Not a target after all (moved out, left): not waited for
                    // once every destination reported its targets.
                    None if rec.awaiting.is_empty() => continue,
                    _ => CanaryState::Open,
                };
                canaries.push((c.clone(), s));
            }
        }
        let failed = failures(&counts.totals).saturating_sub(rec.rollout.fail_base);
        let verdict = if watch_canary && canaries.is_empty() && rec.awaiting.is_empty() {
            // No canary turned out to be a target: nothing to wait for.
            Verdict::OpenCanary
        } else {
            hq_verdict(p, failed, counts.totals.total(), &per_relay, &canaries)
        };
        match verdict {
            Verdict::Keep => {}
            Verdict::Pause(reason) => {
                warn!(%job, %reason, "job paused");
                rec.rollout.paused = Some(reason);
                out.extend(write_control(st, &rec)?);
            }
            Verdict::OpenCanary => {
                info!(%job, "canaries succeeded; the rest may start");
                rec.rollout.canary_open = true;
                out.extend(write_control(st, &rec)?);
            }
        }
    }
    Ok(out)
}

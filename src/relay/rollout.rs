//! A job's rollout at this relay: its policy and HQ's controls (pause,
//! resume) kept durably per job, and the gate in front of delivery: which
//! pending home leaves may be sent to their agents now
//! (`crate::rollout::may_start`), released as others finish, as the clock
//! reaches `--at` or enters `--window`, and on `Resume`.
//!
//! Only jobs with a record here are gated (a policy came with the job, or a
//! control arrived); every other job is delivered at once as before. The
//! gate's counts live in memory, built from the home leaves the first time
//! a job is looked at: a leaf sent but not yet acknowledged when the relay
//! restarted counts as waiting again (re-sending it is harmless: the agent
//! dedupes). Decides nothing itself; never speaks for a child relay's leaves.

use super::RelayState;
use crate::link::downstream::Outgoing;
use crate::proto::{now_ms, JobId, LeafState, Msg, NodeName, Policy};
use crate::rollout::{may_start, past_threshold, Control, Counts, Hold};
use crate::store::keys::{JobClient, JobKey, JobPrefix};
use crate::store::StoreError;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use tracing::{info, warn};

/// A job's rollout as this relay holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RolloutRecord {
    /// The policy that came with the job (the default until it arrives).
    #[serde(default)]
    pub policy: Policy,
    /// Paused, and why.
    #[serde(default)]
    pub paused: Option<String>,
    /// HQ said the canaries succeeded (or the job was resumed).
    #[serde(default)]
    pub canary_open: bool,
    /// HQ's sequence number of the last control applied.
    #[serde(default)]
    pub seq: u64,
    /// Home failures counted at the last resume (the breaker counts past it).
    #[serde(default)]
    pub fail_base: u64,
}

impl RolloutRecord {
    fn control(&self) -> Control {
        Control {
            paused: self.paused.is_some(),
            canary_open: self.canary_open,
        }
    }
}

/// One job's home leaves as the gate sees them.
#[derive(Debug, Default)]
struct Gate {
    /// Pending, not yet sent.
    waiting: BTreeSet<NodeName>,
    /// Sent to their agent and not final.
    sent: HashSet<NodeName>,
    /// Failed or timed out (every attempt).
    failed: u64,
    /// Final in any way (the failure rate is `failed` of these).
    ended: u64,
    /// Every home leaf of the job.
    targets: u64,
    /// The local breaker's stop was logged.
    stop_logged: bool,
    /// The local breaker's stop recalled the unstarted leaves.
    stop_recalled: bool,
}

/// The gates of the jobs looked at since the relay started.
#[derive(Default)]
pub(crate) struct Gates(Mutex<HashMap<JobId, Gate>>);

impl Gates {
    /// Drops a job's gate (its leaves changed wholesale: a new attempt);
    /// it is built again from the store when next needed.
    pub(crate) fn forget(&self, job: JobId) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&job);
    }

    fn jobs_waiting(&self) -> Vec<JobId> {
        let g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        g.iter()
            .filter(|(_, g)| !g.waiting.is_empty())
            .map(|(j, _)| *j)
            .collect()
    }
}

/// The gate of `job`, built from the home leaves if not in memory.
fn with_gate<T>(
    st: &RelayState,
    job: JobId,
    f: impl FnOnce(&mut Gate) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let mut map = st.gates.0.lock().unwrap_or_else(|p| p.into_inner());
    let g = match map.entry(job) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => {
            let mut g = Gate::default();
            for r in st.leaves.scan_prefix(&JobPrefix(job)) {
                let (k, l) = r?;
                // A result gathered for the next flush counts already.
                let l = st.results.gathered(&k).unwrap_or(l);
                let JobClient(_, c) = k;
                g.targets += 1;
                match l.state {
                    LeafState::Pending => {
                        g.waiting.insert(c);
                    }
                    LeafState::Delivered | LeafState::Running => {
                        g.sent.insert(c);
                    }
                    LeafState::Failed | LeafState::TimedOut => {
                        g.failed += 1;
                        g.ended += 1;
                    }
                    s if s.is_final() => g.ended += 1,
                    _ => {}
                }
            }
            e.insert(g)
        }
    };
    f(g)
}

/// A job's rollout record, if it is gated here.
pub(crate) fn record(st: &RelayState, job: JobId) -> Result<Option<RolloutRecord>, StoreError> {
    st.rollouts.get(&JobKey(job))
}

/// Keeps the policy an assignment brought (not yet durable).
pub(crate) fn note_policy(
    st: &RelayState,
    job: JobId,
    policy: Option<&Policy>,
) -> Result<(), StoreError> {
    let Some(p) = policy.filter(|p| p.is_gated()) else {
        return Ok(());
    };
    let mut rec = record(st, job)?.unwrap_or_default();
    if rec.policy != *p {
        rec.policy = p.clone();
        st.rollouts.put(&JobKey(job), &rec)?;
    }
    Ok(())
}

/// HQ's time as this relay estimates it (its own clock before it knows).
fn hq_now(st: &RelayState) -> u64 {
    st.clock.now().unwrap_or_else(now_ms)
}

fn counts(g: &Gate, rec: &RolloutRecord) -> Counts {
    Counts {
        targets: g.targets,
        in_flight: g.sent.len() as u64,
        failed: g.failed.saturating_sub(rec.fail_base),
        ended: g.ended,
    }
}

/// Logs the local breaker's stop once per job.
fn note_hold(st: &RelayState, job: JobId, g: &mut Gate, hold: Hold, rec: &RolloutRecord) {
    if hold == Hold::Failures && !g.stop_logged {
        g.stop_logged = true;
        warn!(%job, relay = %st.me, failed = g.failed.saturating_sub(rec.fail_base), targets = g.targets,
            "failures here past the job's threshold: no more leaves start here");
    }
}

/// Recalls for the leaves of `job` sent to their agent and not known to
/// have started (pending or delivered here), whose agent is connected: a
/// paused job's leaves that have not started go back to pending
/// ([`given_back`]) instead of starting late.
fn recalls(st: &RelayState, job: JobId, g: &Gate) -> Result<Outgoing, StoreError> {
    let mut out = Vec::new();
    for c in &g.sent {
        if st.child(c).is_none() {
            continue;
        }
        if let Some(l) = st.leaves.get(&JobClient(job, c.clone()))? {
            if matches!(l.state, LeafState::Pending | LeafState::Delivered) {
                out.push((
                    c.clone(),
                    Msg::Recall {
                        job,
                        attempt: l.attempt,
                    },
                ));
            }
        }
    }
    if !out.is_empty() {
        info!(%job, leaves = out.len(), "recalling leaves not started yet");
    }
    Ok(out)
}

/// The recalls due when this relay's own failures of `job` just passed its
/// share of the threshold (once per stop; a resume re-arms it).
fn local_stop(st: &RelayState, job: JobId) -> Result<Outgoing, StoreError> {
    let Some(rec) = record(st, job)? else {
        return Ok(vec![]);
    };
    with_gate(st, job, |g| {
        let c = counts(g, &rec);
        if g.stop_recalled || !past_threshold(rec.policy.max_failures, c.failed, c.targets) {
            return Ok(vec![]);
        }
        g.stop_recalled = true;
        note_hold(st, job, g, Hold::Failures, &rec);
        recalls(st, job, g)
    })
}

/// An agent gave back attempt `attempt` of `job` (recalled, never started
/// there): its leaf is pending again here and waits in the gate, to be
/// delivered again once the job may start. Not yet durable. `false` when
/// the leaf is elsewhere by now (another attempt, started, final).
pub(crate) fn given_back(
    st: &RelayState,
    job: JobId,
    attempt: crate::proto::Attempt,
    client: &NodeName,
) -> Result<bool, StoreError> {
    let _w = st.write.lock().unwrap_or_else(|p| p.into_inner());
    super::results::settle(st, &_w)?;
    let k = JobClient(job, client.clone());
    let Some(mut l) = st.leaves.get(&k)? else {
        return Ok(false);
    };
    if l.attempt != attempt || !matches!(l.state, LeafState::Pending | LeafState::Delivered) {
        return Ok(false);
    }
    if l.state == LeafState::Delivered {
        // Back, not forward: written here, never merged (HQ keeps showing
        // it delivered until it runs).
        l.state = LeafState::Pending;
        l.at_ms = now_ms();
        st.leaves.put(&k, &l)?;
    }
    let mut map = st.gates.0.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(g) = map.get_mut(&job) {
        if g.sent.remove(client) {
            g.waiting.insert(client.clone());
        }
    }
    Ok(true)
}

/// The waiting home leaves of a gated `job` that may start now and whose
/// agent is connected: marked sent, to be sent by the caller.
pub(crate) fn release(st: &RelayState, job: JobId) -> Result<Vec<NodeName>, StoreError> {
    let Some(rec) = record(st, job)? else {
        return Ok(vec![]);
    };
    if super::cancel::is_canceled(st, job)? {
        return Ok(vec![]);
    }
    let now = hq_now(st);
    with_gate(st, job, |g| {
        let mut out = Vec::new();
        let mut stale = Vec::new();
        for c in g.waiting.iter() {
            let canary = rec.policy.canary.contains(c);
            match may_start(&rec.policy, rec.control(), counts(g, &rec), canary, now) {
                Ok(()) => {}
                Err(Hold::Canary) => continue,
                Err(_) => break,
            }
            if st.child(c).is_none() {
                continue;
            }
            match st.results.leaf(&JobClient(job, c.clone()))? {
                Some(l) if l.state == LeafState::Pending => {}
                // Closed here meanwhile (moved, expired, canceled).
                _ => {
                    stale.push(c.clone());
                    continue;
                }
            }
            g.sent.insert(c.clone());
            out.push(c.clone());
        }
        if out.is_empty() {
            // Why the first waiting leaf is held, for the log.
            if let Some(c) = g.waiting.iter().next() {
                let canary = rec.policy.canary.contains(c);
                if let Err(h) = may_start(&rec.policy, rec.control(), counts(g, &rec), canary, now)
                {
                    note_hold(st, job, g, h, &rec);
                }
            }
        }
        for c in out.iter().chain(stale.iter()) {
            g.waiting.remove(c);
        }
        Ok(out)
    })
}

/// Whether the pending leaf of `job` for `client` (an agent connecting) may
/// be sent now; marks it sent if so. Ungated jobs always may.
pub(crate) fn admit_one(
    st: &RelayState,
    job: JobId,
    client: &NodeName,
) -> Result<bool, StoreError> {
    let Some(rec) = record(st, job)? else {
        return Ok(true);
    };
    let now = hq_now(st);
    with_gate(st, job, |g| {
        if g.sent.contains(client) {
            return Ok(true);
        }
        let canary = rec.policy.canary.contains(client);
        match may_start(&rec.policy, rec.control(), counts(g, &rec), canary, now) {
            Ok(()) => {
                g.waiting.remove(client);
                g.sent.insert(client.clone());
                Ok(true)
            }
            Err(h) => {
                g.waiting.insert(client.clone());
                note_hold(st, job, g, h, &rec);
                Ok(false)
            }
        }
    })
}

/// A home leaf of `job` changed to `state` (merged from its agent): the
/// gate's counts follow. Returns whether a gated leaf ended (room for more).
pub(crate) fn moved(st: &RelayState, job: JobId, client: &NodeName, state: LeafState) -> bool {
    let mut map = st.gates.0.lock().unwrap_or_else(|p| p.into_inner());
    let Some(g) = map.get_mut(&job) else {
        return false;
    };
    match state {
        LeafState::Pending => false,
        LeafState::Delivered | LeafState::Running => {
            if g.waiting.remove(client) {
                g.sent.insert(client.clone());
            }
            false
        }
        s => {
            let was = g.waiting.remove(client) | g.sent.remove(client);
            if s.is_rerunnable() {
                g.failed += 1;
            }
            g.ended += 1;
            was
        }
    }
}

/// The assignments to send for `clients` of `job` (with their placement).
pub(crate) fn assignments(
    st: &RelayState,
    job: JobId,
    clients: Vec<NodeName>,
) -> Result<Outgoing, StoreError> {
    let mut out = Vec::new();
    for c in clients {
        if let Some(a) = super::home::assignment_for(st, job, &c)? {
            out.push((c, Msg::Assign(a)));
        }
    }
    Ok(out)
}

/// Releases what may start now in each of `jobs`: the messages to send.
pub(crate) fn release_jobs(st: &RelayState, jobs: &[JobId]) -> Result<Outgoing, StoreError> {
    let mut out = Vec::new();
    for job in jobs {
        out.extend(local_stop(st, *job)?);
        let cs = release(st, *job)?;
        out.extend(assignments(st, *job, cs)?);
    }
    Ok(out)
}

/// Applies a `Pause` (`paused` set) or `Resume` from the parent (not yet
/// durable) and queues it for every child relay; returns what to send them.
/// A control older than the last one applied changes nothing here but is
/// still passed on.
pub(crate) fn control(
    st: &RelayState,
    job: JobId,
    seq: u64,
    paused: Option<String>,
) -> Result<Outgoing, StoreError> {
    let msg = match &paused {
        Some(reason) => Msg::Pause {
            job,
            seq,
            reason: reason.clone(),
        },
        None => Msg::Resume { job, seq },
    };
    let mut rec = record(st, job)?.unwrap_or_default();
    let mut out = Vec::new();
    if seq > rec.seq {
        rec.seq = seq;
        if paused.is_none() {
            rec.canary_open = true;
            rec.fail_base = with_gate(st, job, |g| {
                g.stop_logged = false;
                g.stop_recalled = false;
                Ok(g.failed)
            })?;
        }
        info!(%job, seq, paused = ?paused, "rollout control applied");
        let pausing = paused.is_some() && rec.paused.is_none();
        rec.paused = paused;
        st.rollouts.put(&JobKey(job), &rec)?;
        if pausing {
            out = with_gate(st, job, |g| recalls(st, job, g))?;
        }
    }
    let relays = super::cancel::child_relays(st)?;
    for r in &relays {
        st.down.put(r, &msg)?;
    }
    out.extend(relays.into_iter().map(|r| (r, msg.clone())));
    Ok(out)
}

/// Sends what may start now in every job with waiting leaves (the clock
/// moved: `--at`, `--window`); called every second.
pub(crate) fn tick(st: &RelayState) {
    let jobs = st.gates.jobs_waiting();
    match release_jobs(st, &jobs) {
        Ok(out) => crate::link::queue::send_now(&st.children, out),
        Err(e) => warn!(error = %e, "cannot release waiting leaves"),
    }
}

/// Runs [`tick`] every second until `shutdown`.
pub(crate) async fn run(
    st: std::sync::Arc<RelayState>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => tick(&st),
        }
    }
}

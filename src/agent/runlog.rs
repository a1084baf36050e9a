//! The run log: every attempt this agent accepted, and how far it got, the
//! process group a started one spawned, and the tombstones of canceled jobs.
//! Written before each step it records, so that an attempt runs at most once.
//! Never spawns or signals a process itself: at start-up it has
//! `leftover.rs` stop what an interrupted attempt left, before reporting it.

use super::leftover::{self, Spawned};
use super::AgentState;
use crate::proto::{
    now_ms, Action, Assignment, Attempt, Event, JobId, LeafState, LeafUpdate, NodeName, Scope,
};
use crate::store::{keys, StoreError};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// How far an attempt got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RunState {
    /// Held; not started.
    Received,
    /// Started (recorded before the process was spawned).
    Started,
    /// Finished; the result is in the outbox or acknowledged.
    Finished,
}

/// One attempt in the run log.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct RunRecord {
    pub job: JobId,
    pub attempt: Attempt,
    pub action: Action,
    /// The relay that delivered it.
    pub relay: NodeName,
    pub state: RunState,
    /// The final state, once finished.
    #[serde(default)]
    pub result: Option<LeafState>,
    pub received_at_ms: u64,
    /// The process group it spawned, once known (written after the spawn;
    /// `leftover.rs` also finds a group by its environment, for a crash
    /// before this was written).
    #[serde(default)]
    pub spawned: Option<Spawned>,
}

/// A canceled job: no attempt of it starts here any more.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Tombstone {
    /// When the cancel arrived.
    pub at_ms: u64,
}

/// A newly received assignment as a run record, not yet written (see
/// [`write_received`]); `None` when this attempt is already in the log (a
/// re-send), or is not for this agent.
pub(crate) fn accept(
    st: &AgentState,
    a: &Assignment,
    relay: &NodeName,
) -> Result<Option<RunRecord>, StoreError> {
    let for_me = matches!(&a.scope, Scope::Targets(t) if t.contains(&st.me));
    if !for_me {
        warn!(job = %a.job, "assignment does not target this agent; ignored");
        return Ok(None);
    }
    let k = run_key(&st.me, a.job, a.attempt);
    if st.runs.contains(&k)? {
        return Ok(None);
    }
    info!(job = %a.job, attempt = %a.attempt, "assignment received");
    Ok(Some(received(a, relay)))
}

/// Writes a run just accepted as received (not yet durable). A run finished
/// on receipt (a ping) skips this: its final record goes in the same flush.
pub(crate) fn write_received(st: &AgentState, rec: &RunRecord) -> Result<(), StoreError> {
    st.runs.put(&run_key(&st.me, rec.job, rec.attempt), rec)
}

/// A run just received, not started.
fn received(a: &Assignment, relay: &NodeName) -> RunRecord {
    RunRecord {
        job: a.job,
        attempt: a.attempt,
        action: a.action.clone(),
        relay: relay.clone(),
        state: RunState::Received,
        result: None,
        received_at_ms: now_ms(),
        spawned: None,
    }
}

/// Records a refused assignment as a failed run with the reason (not yet
/// durable), unless this attempt is already in the log. Returns whether it
/// recorded anything. The attempt will not run, even if a valid copy arrives
/// later: only a rerun (a new attempt, newly signed) runs it.
pub(crate) fn refuse(
    st: &AgentState,
    a: &Assignment,
    relay: &NodeName,
    why: &str,
) -> Result<bool, StoreError> {
    let k = run_key(&st.me, a.job, a.attempt);
    if st.runs.contains(&k)? {
        return Ok(false);
    }
    let mut rec = received(a, relay);
    let mut u = update(st, &rec, LeafState::Failed);
    u.reason = Some(format!("refused: {why}"));
    record(st, &mut rec, u)?;
    Ok(true)
}

/// Moves a run to `state` and queues the matching leaf update (not yet durable).
pub(crate) fn record(
    st: &AgentState,
    rec: &mut RunRecord,
    u: LeafUpdate,
) -> Result<(), StoreError> {
    rec.state = if u.state.is_final() {
        RunState::Finished
    } else {
        RunState::Started
    };
    if u.state.is_final() {
        rec.result = Some(u.state);
    }
    // The run and its event together, atomically: after a crash neither a
    // state without its report nor a report without its state.
    st.outbox.push_with(
        &[Event::Leaf(u)],
        &run_key(&st.me, rec.job, rec.attempt),
        rec,
    )?;
    Ok(())
}

/// Runs and outboxes share the agent's tree (so that a run and its event are
/// written in one batch): runs under `r\0`, outboxes under `o\0`.
pub(crate) const TREE: &str = "agent";

/// Where agent `me` keeps its run of (job, attempt).
pub(crate) fn run_key(me: &NodeName, job: JobId, attempt: Attempt) -> Vec<u8> {
    let mut k = b"r\0".to_vec();
    k.extend_from_slice(&keys::name_job_attempt(me, job, attempt));
    k
}

/// The prefix of every run of agent `me`.
pub(crate) fn runs_prefix(me: &NodeName) -> Vec<u8> {
    let mut k = b"r\0".to_vec();
    k.extend_from_slice(&keys::name_prefix(me));
    k
}

/// The prefix of agent `me`'s outbox.
pub(crate) fn outbox_prefix(me: &NodeName) -> Vec<u8> {
    let mut k = b"o\0".to_vec();
    k.extend_from_slice(&keys::name_prefix(me));
    k
}

/// A leaf update for `rec`.
pub(crate) fn update(st: &AgentState, rec: &RunRecord, state: LeafState) -> LeafUpdate {
    LeafUpdate {
        job: rec.job,
        attempt: rec.attempt,
        client: st.me.clone(),
        relay: rec.relay.clone(),
        state,
        exit_code: None,
        reason: None,
        output: None,
        at_ms: now_ms(),
        out: None,
        audit: None,
    }
}

/// At start-up: an attempt started but never finished is reported failed,
/// never run again, but only once whatever it left running is stopped
/// (SIGTERM, the grace, SIGKILL); one received but not started is returned
/// to be run, unless its job was canceled meanwhile (then it is recorded
/// canceled).
pub(crate) async fn recover(st: &AgentState) -> Result<Vec<RunRecord>, StoreError> {
    let mut to_run = Vec::new();
    let all: Vec<RunRecord> = st
        .runs
        .scan::<RunRecord>(&runs_prefix(&st.me))
        .map(|r| r.map(|(_, v)| v))
        .collect::<Result<_, _>>()?;
    let mut interrupted = Vec::new();
    for mut rec in all {
        match rec.state {
            RunState::Finished => {}
            RunState::Received if is_canceled(st, rec.job)? => {
                record_canceled(st, &mut rec, "canceled")?;
            }
            RunState::Received => to_run.push(rec),
            RunState::Started => interrupted.push(rec),
        }
    }
    // All at once: each may take the whole grace.
    let grace = st.options.kill_grace;
    let stops = interrupted.iter().map(|r| {
        leftover::stop(
            &st.leftovers,
            &st.me,
            r.job,
            r.attempt,
            r.spawned.as_ref(),
            grace,
        )
    });
    let found = futures::future::join_all(stops).await;
    for (mut rec, found) in interrupted.into_iter().zip(found) {
        let mut u = update(st, &rec, LeafState::Failed);
        let stopped = if found > 0 {
            "; what it left running was stopped"
        } else {
            ""
        };
        u.reason = Some(format!(
            "interrupted: the agent stopped while the command was running; not run again{stopped}"
        ));
        warn!(job = %rec.job, attempt = %rec.attempt, leftovers = found, "attempt interrupted by a restart; reporting failed");
        record(st, &mut rec, u)?;
    }
    Ok(to_run)
}

/// This store's instance id: random, made once, kept. Every command
/// carries it (`RELAYTREE_AGENT_STORE`), so that the leftovers of one
/// installation are never mistaken for another's of the same client name
/// on the same machine (tests, a reinstalled agent beside an old one).
pub(crate) fn store_id(runs: &crate::store::Table) -> Result<String, StoreError> {
    const KEY: &[u8] = b"i\0store";
    if let Some(id) = runs.get::<String>(KEY)? {
        return Ok(id);
    }
    let id = format!("{:016x}", rand::random::<u64>());
    runs.put(KEY, &id)?;
    Ok(id)
}

/// Where agent `me` keeps the tombstone of a canceled `job`.
pub(crate) fn tomb_key(me: &NodeName, job: JobId) -> Vec<u8> {
    let mut k = b"c\0".to_vec();
    k.extend_from_slice(&keys::name_job(me, job));
    k
}

/// Whether `job` was canceled here.
pub(crate) fn is_canceled(st: &AgentState, job: JobId) -> Result<bool, StoreError> {
    st.runs.contains(&tomb_key(&st.me, job))
}

/// Records `rec` canceled with `reason` and queues its update (not yet durable).
pub(crate) fn record_canceled(
    st: &AgentState,
    rec: &mut RunRecord,
    reason: &str,
) -> Result<(), StoreError> {
    let mut u = update(st, rec, LeafState::Canceled);
    u.reason = Some(reason.to_string());
    record(st, rec, u)
}

/// Every run of `job` by this agent.
pub(crate) fn runs_of(st: &AgentState, job: JobId) -> Result<Vec<RunRecord>, StoreError> {
    let mut k = b"r\0".to_vec();
    k.extend_from_slice(&keys::name_job(&st.me, job));
    st.runs
        .scan::<RunRecord>(&k)
        .map(|r| r.map(|(_, v)| v))
        .collect()
}

/// Cancels `job` here (not yet durable): writes its tombstone, so that no
/// attempt of it starts any more, and records every received, not started
/// attempt canceled. Returns how many it recorded. Running attempts are
/// the caller's to stop. The caller holds the agent's start lock.
pub(crate) fn cancel(st: &AgentState, job: JobId) -> Result<usize, StoreError> {
    st.runs
        .put(&tomb_key(&st.me, job), &Tombstone { at_ms: now_ms() })?;
    let mut n = 0;
    for mut rec in runs_of(st, job)? {
        if rec.state == RunState::Received {
            record_canceled(st, &mut rec, "canceled")?;
            n += 1;
        }
    }
    Ok(n)
}

/// Forgets `job` here (not yet durable): its finished runs and its
/// tombstone. A run not finished stays (and then so does the tombstone).
/// Returns how many records went. The caller holds the agent's start lock.
pub(crate) fn purge(st: &AgentState, job: JobId) -> Result<usize, StoreError> {
    let mut n = 0;
    let mut kept = false;
    for rec in runs_of(st, job)? {
        if rec.state == RunState::Finished {
            st.runs.remove(&run_key(&st.me, rec.job, rec.attempt))?;
            n += 1;
        } else {
            kept = true;
        }
    }
    if !kept && is_canceled(st, job)? {
        st.runs.remove(&tomb_key(&st.me, job))?;
        n += 1;
    }
    Ok(n)
}

/// One run as `agent runlog` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunView {
    /// The agent that ran it.
    pub client: NodeName,
    /// The job.
    pub job: JobId,
    /// The attempt.
    pub attempt: Attempt,
    /// The relay that delivered it.
    pub relay: NodeName,
    /// received, started or finished.
    pub state: String,
    /// The final state, once finished.
    pub result: Option<LeafState>,
}

/// Every run of every agent in a store (`agent runlog`).
pub(crate) fn all_runs(runs: &crate::store::Table) -> Result<Vec<RunView>, StoreError> {
    let mut out = Vec::new();
    for r in runs.scan::<RunRecord>(b"r\0") {
        let (k, rec) = r?;
        let k = &k[2..];
        let Some(client) = k
            .iter()
            .position(|b| *b == 0)
            .and_then(|i| std::str::from_utf8(&k[..i]).ok())
            .and_then(|s| NodeName::new(s).ok())
        else {
            continue;
        };
        out.push(RunView {
            client,
            job: rec.job,
            attempt: rec.attempt,
            relay: rec.relay,
            state: match rec.state {
                RunState::Received => "received",
                RunState::Started => "started",
                RunState::Finished => "finished",
            }
            .into(),
            result: rec.result,
        });
    }
    Ok(out)
}

//! Carrying out one accepted attempt: `ping` answers at once; a command is
//! recorded as started (on disk) before it is spawned, then its result is
//! recorded and queued upward. Installs and removals start the same way,
//! then go to `install.rs`.

use super::exec::{self, ExecResult, ExecSpec, Outcome};
use super::install;
use super::runlog::{self, RunRecord};
use super::AgentState;
use crate::proto::{Action, LeafState, LeafUpdate};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn, Instrument};

/// Runs `rec` to its end, logging rather than failing.
pub(crate) async fn execute(st: Arc<AgentState>, rec: RunRecord) {
    let span =
        tracing::info_span!("run", job = %rec.job, attempt = %rec.attempt, relay = %rec.relay);
    if let Err(e) = execute_inner(&st, rec).instrument(span).await {
        warn!(error = %e, "cannot record a run");
    }
}

/// Finishes an attempt that needs no process (`ping`, or a load test's
/// deliberate failure) without waiting: recorded (not yet durable) and
/// queued upward. Returns the record back when it does need a process.
pub(crate) fn finish_now(
    st: &AgentState,
    mut rec: RunRecord,
) -> Result<Option<RunRecord>, crate::store::StoreError> {
    if !st.options.delay.is_zero() {
        return Ok(Some(rec));
    }
    if should_fail(st, &rec) {
        let mut u = runlog::update(st, &rec, LeafState::Failed);
        u.reason = Some("failed on purpose (--fail-fraction)".into());
        runlog::record(st, &mut rec, u)?;
        return Ok(None);
    }
    match &rec.action {
        Action::Ping => {
            let u = runlog::update(st, &rec, LeafState::Succeeded);
            runlog::record(st, &mut rec, u)?;
            Ok(None)
        }
        Action::Run(_) | Action::Install(_) | Action::Remove(_) => Ok(Some(rec)),
    }
}

async fn execute_inner(
    st: &AgentState,
    mut rec: RunRecord,
) -> Result<(), crate::store::StoreError> {
    if !st.options.delay.is_zero() {
        tokio::time::sleep(st.options.delay).await;
    }
    if should_fail(st, &rec) {
        let mut u = runlog::update(st, &rec, LeafState::Failed);
        u.reason = Some("failed on purpose (--fail-fraction)".into());
        runlog::record(st, &mut rec, u)?;
        return st.store.durable().await;
    }
    let spec = match &rec.action {
        Action::Ping => {
            let u = runlog::update(st, &rec, LeafState::Succeeded);
            runlog::record(st, &mut rec, u)?;
            return st.store.durable().await;
        }
        Action::Run(r) => r.clone(),
        Action::Install(spec) => {
            let spec = spec.clone();
            let _slot = st.slots.acquire().await;
            start(st, &mut rec).await?;
            return install::install(st, &mut rec, &spec).await;
        }
        Action::Remove(spec) => {
            let spec = spec.clone();
            let _slot = st.slots.acquire().await;
            start(st, &mut rec).await?;
            return install::remove(st, &mut rec, &spec).await;
        }
    };
    let _slot = st.slots.acquire().await;
    start(st, &mut rec).await?;
    let mut env = base_env(st, &rec);
    env.extend(spec.env.iter().cloned());
    let res = exec::run(&ExecSpec {
        argv: spec.argv.clone(),
        env,
        cwd: spec.cwd.as_ref().map(PathBuf::from),
        timeout: spec.timeout_ms.map(Duration::from_millis),
        tail_bytes: st.options.tail_bytes,
    })
    .await;
    let mut u = runlog::update(st, &rec, LeafState::Failed);
    apply_outcome(&mut u, &res, spec.timeout_ms, "");
    info!(state = u.state.as_str(), exit_code = ?u.exit_code, took = ?res.duration, "run finished");
    runlog::record(st, &mut rec, u)?;
    st.store.durable().await
}

/// Records the attempt as running and waits until that is on disk: started
/// is durable before anything irreversible happens.
async fn start(st: &AgentState, rec: &mut RunRecord) -> Result<(), crate::store::StoreError> {
    let u = runlog::update(st, rec, LeafState::Running);
    runlog::record(st, rec, u)?;
    st.store.durable().await
}

/// The variables every command of an attempt sees.
pub(crate) fn base_env(st: &AgentState, rec: &RunRecord) -> Vec<(String, String)> {
    vec![
        ("RELAYTREE_JOB".to_string(), rec.job.to_string()),
        ("RELAYTREE_ATTEMPT".to_string(), rec.attempt.to_string()),
        ("RELAYTREE_CLIENT".to_string(), st.me.to_string()),
        ("RELAYTREE_RELAY".to_string(), rec.relay.to_string()),
    ]
}

/// Sets a leaf update's state, exit code, reason (after `prefix`) and output
/// from how a process ended: exit 0 succeeded, a timeout timed out, anything
/// else failed.
pub(crate) fn apply_outcome(
    u: &mut LeafUpdate,
    res: &ExecResult,
    timeout_ms: Option<u64>,
    prefix: &str,
) {
    u.state = LeafState::Failed;
    match &res.outcome {
        Outcome::Exited { code } => {
            u.exit_code = Some(*code);
            if *code == 0 {
                u.state = LeafState::Succeeded;
            } else {
                u.reason = Some(format!("{prefix}exited with code {code}"));
            }
        }
        Outcome::Signaled { signal } => {
            u.reason = Some(format!("{prefix}killed by signal {signal}"))
        }
        Outcome::TimedOut => {
            u.state = LeafState::TimedOut;
            u.reason = Some(format!(
                "{prefix}timed out after {}; process group killed",
                humantime::format_duration(Duration::from_millis(timeout_ms.unwrap_or(0)))
            ));
        }
        Outcome::SpawnFailed { reason } => u.reason = Some(format!("{prefix}{reason}")),
    }
    if !res.output_tail.is_empty() {
        u.output = Some(res.output_tail.clone());
    }
}

/// Load tests: whether this attempt fails on purpose. A hash of client, job
/// and attempt, so the same attempt always decides the same way and a rerun
/// decides afresh.
fn should_fail(st: &AgentState, rec: &RunRecord) -> bool {
    use std::hash::{Hash, Hasher};
    let f = st.options.fail_fraction;
    if f <= 0.0 {
        return false;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (st.me.as_str(), rec.job.0, rec.attempt.0).hash(&mut h);
    (h.finish() % 1_000_000) as f64 / 1_000_000.0 < f
}

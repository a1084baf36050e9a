//! Carrying out one accepted attempt: `ping` answers at once; a command is
//! recorded as started (on disk) before it is spawned, its process group is
//! recorded once spawned, then its result is recorded and queued upward.
//! Installs and removals start the same way, then go to `install.rs`.
//!
//! Every step that starts or settles an attempt checks the job's tombstone
//! under the agent's start lock ([`AgentState::live`]), so that a cancel and
//! a start never cross: an attempt of a canceled job never starts, and a
//! running one is handed the cancel through its token.

use super::exec::{self, ExecResult, ExecSpec, Outcome};
use super::install;
use super::leftover::Spawned;
use super::runlog::{self, RunRecord, RunState};
use super::AgentState;
use crate::proto::{Action, Attempt, JobId, LeafState, LeafUpdate};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

/// Running attempts of one agent, with the token that stops each. Its lock
/// is the start lock: held while a start, a settle or a cancel is written.
pub(crate) type Live = std::sync::Mutex<HashMap<(JobId, Attempt), CancellationToken>>;

fn lock_live(
    st: &AgentState,
) -> std::sync::MutexGuard<'_, HashMap<(JobId, Attempt), CancellationToken>> {
    st.live.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether the run log holds `rec` finished already (a cancel got there first).
fn finished_already(st: &AgentState, rec: &RunRecord) -> Result<bool, crate::store::StoreError> {
    let k = runlog::run_key(&st.me, rec.job, rec.attempt);
    Ok(st
        .runs
        .get::<RunRecord>(&k)?
        .is_some_and(|r| r.state == RunState::Finished))
}

/// Whether the run log still holds `rec` received and not started: not
/// given back to a relay that recalled it ([`give_back`]), and not begun by
/// another task (a re-delivery after a recall). Under the start lock.
fn still_held(st: &AgentState, rec: &RunRecord) -> Result<bool, crate::store::StoreError> {
    let k = runlog::run_key(&st.me, rec.job, rec.attempt);
    Ok(st
        .runs
        .get::<RunRecord>(&k)?
        .is_some_and(|r| r.state == RunState::Received))
}

/// Records `rec` as running and registers its cancel token, unless it was
/// given back or begun meanwhile (`None`, nothing recorded), or its job
/// is canceled: then it is recorded canceled (if a cancel has not already
/// done so) and `None` comes back. Not yet durable.
pub(crate) fn begin(
    st: &AgentState,
    rec: &mut RunRecord,
) -> Result<Option<CancellationToken>, crate::store::StoreError> {
    let mut live = lock_live(st);
    if !still_held(st, rec)? {
        info!(job = %rec.job, attempt = %rec.attempt, "not started: given back to the relay, or started already");
        return Ok(None);
    }
    if runlog::is_canceled(st, rec.job)? {
        if !finished_already(st, rec)? {
            runlog::record_canceled(st, rec, "canceled")?;
        }
        return Ok(None);
    }
    let u = runlog::update(st, rec, LeafState::Running);
    runlog::record(st, rec, u)?;
    let token = CancellationToken::new();
    live.insert((rec.job, rec.attempt), token.clone());
    Ok(Some(token))
}

/// A relay recalls attempt `attempt` of `job` (the job is paused there):
/// if it is received and not started, it is forgotten (not yet durable) and
/// `true` comes back; the task waiting to start it finds it gone and stops
/// (see [`begin`]). A re-delivery later is a new receipt. `false` when it
/// started or ended: it goes on, and its results follow. Also `true` when
/// this agent never had it.
pub(crate) fn give_back(
    st: &AgentState,
    job: JobId,
    attempt: Attempt,
) -> Result<bool, crate::store::StoreError> {
    let _live = lock_live(st);
    let k = runlog::run_key(&st.me, job, attempt);
    match st.runs.get::<RunRecord>(&k)? {
        None => Ok(true),
        Some(r) if r.state == RunState::Received => {
            st.runs.remove(&k)?;
            info!(%job, %attempt, "attempt given back: its job is paused at the relay");
            Ok(true)
        }
        Some(_) => Ok(false),
    }
}

/// Records the final update `u` of an attempt that never started a process
/// (or `canceled`, if its job is canceled), not yet durable.
pub(crate) fn settle(
    st: &AgentState,
    rec: &mut RunRecord,
    u: LeafUpdate,
) -> Result<(), crate::store::StoreError> {
    let _live = lock_live(st);
    if runlog::is_canceled(st, rec.job)? {
        if !finished_already(st, rec)? {
            runlog::record_canceled(st, rec, "canceled")?;
        }
        return Ok(());
    }
    runlog::record(st, rec, u)
}

/// Records the final update `u` of a started attempt and unregisters it
/// (not yet durable).
pub(crate) fn end(
    st: &AgentState,
    rec: &mut RunRecord,
    u: LeafUpdate,
) -> Result<(), crate::store::StoreError> {
    let mut live = lock_live(st);
    live.remove(&(rec.job, rec.attempt));
    runlog::record(st, rec, u)
}

/// Cancels `job` on this agent (not yet durable): the tombstone, received
/// attempts recorded canceled, running ones told to stop. Returns whether
/// some attempt of it is still running (stopping).
pub(crate) fn cancel(st: &AgentState, job: JobId) -> Result<bool, crate::store::StoreError> {
    let live = lock_live(st);
    let n = runlog::cancel(st, job)?;
    let mut running = false;
    for ((j, attempt), token) in live.iter() {
        if *j == job {
            info!(%job, %attempt, "canceling a running attempt");
            token.cancel();
            running = true;
        }
    }
    info!(%job, not_started = n, running, "job canceled");
    Ok(running)
}

/// Whether some attempt of `job` is still running here.
pub(crate) fn running(st: &AgentState, job: JobId) -> bool {
    lock_live(st).keys().any(|(j, _)| *j == job)
}

/// Forgets `jobs` here (not yet durable), never a running attempt's record.
pub(crate) fn purge(st: &AgentState, jobs: &[JobId]) -> Result<usize, crate::store::StoreError> {
    let _live = lock_live(st);
    let mut n = 0;
    for job in jobs {
        n += runlog::purge(st, *job)?;
    }
    Ok(n)
}

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
    if runlog::is_canceled(st, rec.job)? {
        // A job canceled here: its attempts are recorded canceled on receipt.
        let u = runlog::update(st, &rec, LeafState::Canceled);
        settle(st, &mut rec, u)?;
        return Ok(None);
    }
    if !st.options.delay.is_zero() {
        return Ok(Some(rec));
    }
    if should_fail(st, &rec) {
        let mut u = runlog::update(st, &rec, LeafState::Failed);
        u.reason = Some("failed on purpose (--fail-fraction)".into());
        settle(st, &mut rec, u)?;
        return Ok(None);
    }
    match &rec.action {
        Action::Ping => {
            let u = runlog::update(st, &rec, LeafState::Succeeded);
            settle(st, &mut rec, u)?;
            Ok(None)
        }
        Action::Run(_)
        | Action::Install(_)
        | Action::Remove(_)
        | Action::Audit(_)
        | Action::Snapshot(_)
        | Action::Sync(_)
        | Action::Batch(_) => Ok(Some(rec)),
    }
}

async fn execute_inner(
    st: &AgentState,
    mut rec: RunRecord,
) -> Result<(), crate::store::StoreError> {
    if !st.options.delay.is_zero() {
        tokio::time::sleep(st.options.delay).await;
        if !still_held(st, &rec)? {
            return Ok(());
        }
    }
    if should_fail(st, &rec) {
        let mut u = runlog::update(st, &rec, LeafState::Failed);
        u.reason = Some("failed on purpose (--fail-fraction)".into());
        settle(st, &mut rec, u)?;
        return st.store.durable().await;
    }
    let spec = match &rec.action {
        Action::Ping => {
            let u = runlog::update(st, &rec, LeafState::Succeeded);
            settle(st, &mut rec, u)?;
            return st.store.durable().await;
        }
        Action::Run(r) => r.clone(),
        Action::Install(spec) => {
            let spec = spec.clone();
            let _slot = st.slots.acquire().await;
            let Some(cancel) = start(st, &mut rec).await? else {
                return Ok(());
            };
            let r = install::install(st, &mut rec, &spec, &cancel).await;
            lock_live(st).remove(&(rec.job, rec.attempt));
            return r;
        }
        Action::Remove(spec) => {
            let spec = spec.clone();
            let _slot = st.slots.acquire().await;
            let Some(cancel) = start(st, &mut rec).await? else {
                return Ok(());
            };
            let r = install::remove(st, &mut rec, &spec, &cancel).await;
            lock_live(st).remove(&(rec.job, rec.attempt));
            return r;
        }
        // Read-only: no `running` step, so a compliant client sends one
        // small update.
        Action::Audit(spec) => {
            let spec = spec.clone();
            let _slot = st.slots.acquire().await;
            return super::audit::run_audit(st, &mut rec, &spec).await;
        }
        Action::Snapshot(spec) => {
            let spec = spec.clone();
            let _slot = st.slots.acquire().await;
            let store = match install::chunk_store(st).await {
                Ok(s) => s,
                Err(e) => {
                    let mut u = runlog::update(st, &rec, LeafState::Failed);
                    u.reason = Some(format!("cannot open the chunk store: {e}"));
                    settle(st, &mut rec, u)?;
                    return st.store.durable().await;
                }
            };
            if start(st, &mut rec).await?.is_none() {
                return Ok(());
            }
            let r = super::audit::run_snapshot(st, &mut rec, &spec, store).await;
            lock_live(st).remove(&(rec.job, rec.attempt));
            return r;
        }
        Action::Sync(spec) => {
            let spec = spec.clone();
            let _slot = st.slots.acquire().await;
            let Some(cancel) = start(st, &mut rec).await? else {
                return Ok(());
            };
            let r = super::sync::run_sync(st, &mut rec, &spec, &cancel).await;
            lock_live(st).remove(&(rec.job, rec.attempt));
            return r;
        }
        Action::Batch(_) => {
            let mut u = runlog::update(st, &rec, LeafState::Failed);
            u.reason = Some("refused: a batch is not run by agents".into());
            settle(st, &mut rec, u)?;
            return st.store.durable().await;
        }
    };
    let _slot = st.slots.acquire().await;
    let Some(cancel) = start(st, &mut rec).await? else {
        return Ok(());
    };
    let mut env = base_env(st, &rec);
    env.extend(spec.env.iter().cloned());
    let (spawned_tx, spawned_rx) = tokio::sync::oneshot::channel();
    let ctl = exec::Control {
        cancel: Some(cancel),
        on_spawn: Some(Box::new(move |g| {
            let _ = spawned_tx.send(g);
        })),
    };
    let exec_spec = ExecSpec {
        argv: spec.argv.clone(),
        env,
        cwd: spec.cwd.as_ref().map(PathBuf::from),
        timeout: spec.timeout_ms.map(Duration::from_millis),
        tail_bytes: st.options.tail_bytes,
        stream_tail_bytes: st.options.stream_tail_bytes,
        kill_grace: st.options.kill_grace,
    };
    // While it runs: its process group goes into the run log, durably, so
    // that a restarted agent can stop what a crash left running.
    let rec_spawned = async {
        let Ok(g) = spawned_rx.await else {
            return Ok(rec.clone());
        };
        let mut r = rec.clone();
        r.spawned = Some(Spawned::now(g));
        st.runs
            .put(&runlog::run_key(&st.me, r.job, r.attempt), &r)?;
        st.store.durable().await?;
        Ok::<_, crate::store::StoreError>(r)
    };
    let (res, recorded) = tokio::join!(exec::run_with(&exec_spec, ctl), rec_spawned);
    let mut rec = recorded?;
    let mut u = runlog::update(st, &rec, LeafState::Failed);
    apply_outcome(&mut u, &res, spec.timeout_ms, "");
    info!(state = u.state.as_str(), exit_code = ?u.exit_code, took = ?res.duration, "run finished");
    end(st, &mut rec, u)?;
    st.store.durable().await
}

/// Records the attempt as running and waits until that is on disk: started
/// is durable before anything irreversible happens. `None` when its job is
/// canceled (then it is recorded canceled, durably, and must not start).
async fn start(
    st: &AgentState,
    rec: &mut RunRecord,
) -> Result<Option<CancellationToken>, crate::store::StoreError> {
    let token = begin(st, rec)?;
    st.store.durable().await?;
    Ok(token)
}

/// The variables every command of an attempt sees.
pub(crate) fn base_env(st: &AgentState, rec: &RunRecord) -> Vec<(String, String)> {
    vec![
        ("RELAYTREE_JOB".to_string(), rec.job.to_string()),
        ("RELAYTREE_ATTEMPT".to_string(), rec.attempt.to_string()),
        ("RELAYTREE_CLIENT".to_string(), st.me.to_string()),
        ("RELAYTREE_RELAY".to_string(), rec.relay.to_string()),
        (
            "RELAYTREE_ROOT".to_string(),
            st.options.root.to_string_lossy().into_owned(),
        ),
        (
            "RELAYTREE_AGENT_STORE".to_string(),
            st.leftovers.store_id.clone(),
        ),
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
        Outcome::TimedOut { forced } => {
            u.state = LeafState::TimedOut;
            u.reason = Some(format!(
                "{prefix}timed out after {}; {}",
                humantime::format_duration(Duration::from_millis(timeout_ms.unwrap_or(0))),
                stopped_how(*forced)
            ));
        }
        Outcome::Canceled { forced, started } => {
            u.state = LeafState::Canceled;
            u.reason = Some(if *started {
                format!("canceled; {}", stopped_how(*forced))
            } else {
                "canceled".to_string()
            });
        }
        Outcome::SpawnFailed { reason } => u.reason = Some(format!("{prefix}{reason}")),
    }
    if !res.output_tail.is_empty() {
        u.output = Some(res.output_tail.clone());
    }
    let o = &res.streams;
    u.out = Some(crate::proto::LeafOutput {
        stdout: o.stdout.clone(),
        stderr: o.stderr.clone(),
        stdout_bytes: o.stdout_bytes,
        stderr_bytes: o.stderr_bytes,
        started_at_ms: res.started_at_ms,
        duration_ms: res.duration.as_millis() as u64,
    });
}

/// How a stopped process group went.
fn stopped_how(forced: bool) -> &'static str {
    if forced {
        "process group sent SIGTERM, then SIGKILL after the grace"
    } else {
        "process group stopped by SIGTERM"
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

/// Cancel, purge and recovery through the agent's own functions, with real
/// processes and a real store (no session: the relay's side is elsewhere).
#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::exec::group_members;
    use crate::proto::{Event, NodeName, RunSpec};
    use std::path::Path;
    use std::time::Instant;

    fn sh_rec(job: u64, attempt: u32, script: &str, env: &[(&str, &Path)]) -> RunRecord {
        RunRecord {
            job: JobId(job),
            attempt: Attempt(attempt),
            action: Action::Run(RunSpec {
                argv: vec!["sh".into(), "-c".into(), script.into()],
                env: env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string_lossy().into_owned()))
                    .collect(),
                cwd: None,
                timeout_ms: None,
            }),
            relay: NodeName::new("r1").unwrap(),
            state: RunState::Received,
            result: None,
            received_at_ms: 0,
            spawned: None,
        }
    }

    /// The leaf updates queued upward for (job, attempt), oldest first.
    fn leafs(st: &AgentState, job: u64, attempt: u32) -> Vec<LeafUpdate> {
        st.outbox
            .read_after(0, 10_000)
            .unwrap()
            .into_iter()
            .filter_map(|(_, e)| match e {
                Event::Leaf(u) if u.job == JobId(job) && u.attempt == Attempt(attempt) => Some(u),
                _ => None,
            })
            .collect()
    }

    fn stored(st: &AgentState, job: u64, attempt: u32) -> Option<RunRecord> {
        st.runs
            .get(&runlog::run_key(&st.me, JobId(job), Attempt(attempt)))
            .unwrap()
    }

    fn lines(p: &Path) -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    async fn wait(what: &str, mut cond: impl FnMut() -> bool) {
        let end = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < end, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn cancel_stops_a_running_command_with_sigterm_and_records_canceled() {
        let dir = tempfile::tempdir().unwrap();
        let st = crate::agent::test_state(dir.path());
        let f = dir.path().join("f");
        let rec = sh_rec(
            1,
            1,
            "trap 'echo term >> \"$F\"; exit 0' TERM; sleep 30 & echo $! >> \"$F\"; wait; echo end >> \"$F\"",
            &[("F", &f)],
        );
        runlog::write_received(&st, &rec).unwrap();
        let task = tokio::spawn(execute(st.clone(), rec));
        // Once the background sleep has exec'd (see exec.rs's test).
        wait("the command to start", || {
            lines(&f)
                .first()
                .is_some_and(|p| crate::agent::exec::tests::is_sleep(p))
        })
        .await;
        let pgid = stored(&st, 1, 1)
            .and_then(|r| r.spawned)
            .expect("the group is recorded while it runs")
            .group
            .pgid;
        assert!(cancel(&st, JobId(1)).unwrap(), "a running attempt to stop");
        task.await.unwrap();
        assert!(!running(&st, JobId(1)));
        let l = lines(&f);
        assert_eq!(l.len(), 2, "{l:?}");
        assert_eq!(l[1], "term", "SIGTERM first, nothing after");
        assert!(group_members(pgid).is_empty());
        let ups = leafs(&st, 1, 1);
        let last = ups.last().unwrap();
        assert_eq!(last.state, LeafState::Canceled, "{ups:?}");
        assert!(last.reason.as_deref().unwrap_or("").starts_with("canceled"));
        assert_eq!(stored(&st, 1, 1).unwrap().result, Some(LeafState::Canceled));
    }

    #[tokio::test]
    async fn a_recalled_attempt_never_starts_and_a_redelivery_runs_once() {
        let dir = tempfile::tempdir().unwrap();
        let st = crate::agent::test_state(dir.path());
        let f = dir.path().join("f");
        let script = "echo ran >> \"$F\"";
        // Received, queued behind the one slot, then recalled.
        let held = sh_rec(3, 1, script, &[("F", &f)]);
        runlog::write_received(&st, &held).unwrap();
        let slot = st.slots.acquire().await.unwrap();
        let task = tokio::spawn(execute(st.clone(), held.clone()));
        assert!(give_back(&st, JobId(3), Attempt(1)).unwrap());
        assert!(stored(&st, 3, 1).is_none(), "forgotten");
        // Delivered again before the first task got the slot: two tasks for
        // one attempt; it runs once.
        runlog::write_received(&st, &held).unwrap();
        let again = tokio::spawn(execute(st.clone(), held));
        drop(slot);
        task.await.unwrap();
        again.await.unwrap();
        assert_eq!(lines(&f), vec!["ran"], "ran once");
        assert_eq!(
            stored(&st, 3, 1).unwrap().result,
            Some(LeafState::Succeeded)
        );
        // Started or ended: not given back.
        assert!(!give_back(&st, JobId(3), Attempt(1)).unwrap());
        // Never received: nothing to start, given back.
        assert!(give_back(&st, JobId(3), Attempt(2)).unwrap());
        assert!(leafs(&st, 3, 2).is_empty());
    }

    #[tokio::test]
    async fn a_canceled_job_never_starts_received_or_later_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let st = crate::agent::test_state(dir.path());
        let f = dir.path().join("f");
        let script = "echo ran >> \"$F\"";
        // Received (queued behind the one slot), then the cancel arrives.
        let held = sh_rec(2, 1, script, &[("F", &f)]);
        runlog::write_received(&st, &held).unwrap();
        let slot = st.slots.acquire().await.unwrap();
        let task = tokio::spawn(execute(st.clone(), held));
        assert!(!cancel(&st, JobId(2)).unwrap(), "nothing was running");
        let ups = leafs(&st, 2, 1);
        assert_eq!(ups.len(), 1, "{ups:?}");
        assert_eq!(ups[0].state, LeafState::Canceled);
        assert_eq!(ups[0].reason.as_deref(), Some("canceled"));
        drop(slot);
        task.await.unwrap();
        // A later attempt of the job (a rerun, or a re-sent Assign) on
        // receipt: recorded canceled, never started.
        let later = sh_rec(2, 2, script, &[("F", &f)]);
        assert!(finish_now(&st, later).unwrap().is_none());
        assert!(!f.exists(), "a canceled job's command ran");
        assert_eq!(leafs(&st, 2, 1).len(), 1, "canceled once, not twice");
        let ups = leafs(&st, 2, 2);
        assert_eq!(ups.len(), 1);
        assert_eq!(ups[0].state, LeafState::Canceled);
        // A cancel sent again (after a reconnect) records nothing new.
        assert!(!cancel(&st, JobId(2)).unwrap());
        assert_eq!(leafs(&st, 2, 1).len() + leafs(&st, 2, 2).len(), 2);
    }

    #[tokio::test]
    async fn a_cancel_for_a_job_never_seen_is_a_tombstone() {
        let dir = tempfile::tempdir().unwrap();
        let st = crate::agent::test_state(dir.path());
        assert!(!cancel(&st, JobId(9)).unwrap());
        assert!(runlog::is_canceled(&st, JobId(9)).unwrap());
        let f = dir.path().join("f");
        let rec = sh_rec(9, 1, "echo ran >> \"$F\"", &[("F", &f)]);
        runlog::write_received(&st, &rec).unwrap();
        execute(st.clone(), rec).await;
        assert!(!f.exists());
        assert_eq!(stored(&st, 9, 1).unwrap().result, Some(LeafState::Canceled));
    }

    #[tokio::test]
    async fn cancel_ack_waits_for_the_command_to_stop() {
        let dir = tempfile::tempdir().unwrap();
        let grace = Duration::from_millis(600);
        let st = crate::agent::test_state_with(
            dir.path(),
            crate::agent::AgentOptions {
                kill_grace: grace,
                ..Default::default()
            },
        );
        let f = dir.path().join("f");
        // Ignores SIGTERM: only SIGKILL, after the grace, ends it.
        let rec = sh_rec(
            3,
            1,
            "trap '' TERM; echo start >> \"$F\"; sleep 30",
            &[("F", &f)],
        );
        runlog::write_received(&st, &rec).unwrap();
        let task = tokio::spawn(execute(st.clone(), rec));
        wait("the command to start", || lines(&f) == ["start"]).await;
        let (tx, mut rx) = crate::link::SessionTx::channel(4);
        let t0 = Instant::now();
        assert!(cancel(&st, JobId(3)).unwrap());
        tokio::spawn(crate::agent::cancel_ack(st.clone(), tx, JobId(3)));
        let msg = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .unwrap()
            .unwrap();
        let took = t0.elapsed();
        assert!(matches!(msg, crate::proto::Msg::CancelAck { job } if job == JobId(3)));
        assert!(!running(&st, JobId(3)), "acked while still running");
        assert!(took >= grace, "acked before the grace was over: {took:?}");
        task.await.unwrap();
        let last = leafs(&st, 3, 1).pop().unwrap();
        assert_eq!(last.state, LeafState::Canceled);
        assert!(
            last.reason.as_deref().unwrap_or("").contains("SIGKILL"),
            "{:?}",
            last.reason
        );
    }

    #[tokio::test]
    async fn purge_forgets_finished_runs_and_tombstones_but_never_a_running_one() {
        let dir = tempfile::tempdir().unwrap();
        let st = crate::agent::test_state(dir.path());
        let f = dir.path().join("f");
        // Job 4: finished. Job 5: canceled (tombstone), nothing else.
        // Job 6: running.
        let mut done = sh_rec(4, 1, "true", &[]);
        runlog::write_received(&st, &done).unwrap();
        let u = runlog::update(&st, &done, LeafState::Succeeded);
        runlog::record(&st, &mut done, u).unwrap();
        cancel(&st, JobId(5)).unwrap();
        let rec = sh_rec(6, 1, "echo start >> \"$F\"; sleep 30", &[("F", &f)]);
        runlog::write_received(&st, &rec).unwrap();
        let task = tokio::spawn(execute(st.clone(), rec));
        wait("the command to start", || lines(&f) == ["start"]).await;
        let n = purge(&st, &[JobId(4), JobId(5), JobId(6), JobId(7)]).unwrap();
        assert_eq!(n, 2, "job 4's run and job 5's tombstone");
        assert!(stored(&st, 4, 1).is_none());
        assert!(!runlog::is_canceled(&st, JobId(5)).unwrap());
        assert!(
            stored(&st, 6, 1).is_some(),
            "a running attempt's record went"
        );
        cancel(&st, JobId(6)).unwrap();
        task.await.unwrap();
        assert_eq!(
            purge(&st, &[JobId(6)]).unwrap(),
            2,
            "its run and its tombstone"
        );
        assert!(stored(&st, 6, 1).is_none());
    }

    #[tokio::test]
    async fn recovery_stops_the_leftover_before_reporting_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let st = crate::agent::test_state(dir.path());
        let f = dir.path().join("f");
        let mut rec = sh_rec(8, 1, "", &[]);
        // As a crashed agent left it: started, its group recorded, the
        // command still running (started here, outside any agent).
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "echo start >> \"$F\"; sleep 30; echo end >> \"$F\""])
            .env("F", &f);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().unwrap();
        let pgid = child.id() as i32;
        wait("the command to start", || lines(&f) == ["start"]).await;
        let u = runlog::update(&st, &rec, LeafState::Running);
        runlog::record(&st, &mut rec, u).unwrap();
        rec.spawned = Some(Spawned::now(exec::Group {
            pgid,
            leader_start: exec::start_ticks(pgid),
        }));
        st.runs
            .put(&runlog::run_key(&st.me, rec.job, rec.attempt), &rec)
            .unwrap();
        let to_run = runlog::recover(&st).await.unwrap();
        // Reported failed only once the leftover is gone.
        assert!(group_members(pgid).is_empty(), "the leftover still runs");
        let _ = child.wait();
        assert!(to_run.is_empty());
        let last = leafs(&st, 8, 1).pop().unwrap();
        assert_eq!(last.state, LeafState::Failed);
        let why = last.reason.unwrap_or_default();
        assert!(why.starts_with("interrupted"), "{why}");
        assert!(why.contains("stopped"), "{why}");
        assert_eq!(lines(&f), ["start"]);
    }
}

//! The agent: dials its relay, keeps a run log so that each attempt runs at
//! most once (even across restarts), runs commands, and reports results
//! through its outbox. `agent serve` runs one; `agent swarm` runs many on one
//! runtime and one store, each with its own identity, TLS session, run log and
//! outbox (keyed by its name), through exactly the same code.
//!
//! Never imports `hq` or `relay`.

mod audit;
pub mod exec;
mod install;
mod inventory;
mod leftover;
mod run;
mod runlog;
mod swarm;
mod sync;
mod verify;

pub use inventory::InventoryView;
pub use runlog::RunView;
pub use swarm::{swarm, SwarmConfig};

use crate::link::{dial_loop, unexpected, Dialer, LinkError, Session, SessionTx, Timing, Upward};
use crate::proto::{now_ms, Hello, Msg, NodeName, Purpose, Role, PROTOCOL_VERSION};
use crate::store::{Outbox, Store, StoreError, Table};
use crate::tls::{Identity, TlsError};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// An agent failed to start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Identity files.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Storage.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Configuration.
    #[error("{0}")]
    Config(String),
}

/// How an agent behaves, beyond where it connects.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// Session timers.
    pub timing: Timing,
    /// Commands run at the same time, at most.
    pub max_parallel: usize,
    /// Bytes of mixed output kept per run (the `output` older peers read).
    pub tail_bytes: usize,
    /// Bytes of stdout, and as many of stderr, kept per run.
    pub stream_tail_bytes: usize,
    /// For load tests: this fraction of attempts fails without running
    /// (chosen by a hash of client, job and attempt, so reruns differ).
    pub fail_fraction: f64,
    /// For load tests: wait this long before carrying out each attempt.
    pub delay: Duration,
    /// Shared by the agents of one swarm: how many of them may be connecting
    /// at once (`None`: no limit, as for a single `agent serve`).
    pub dial_gate: Option<Arc<Semaphore>>,
    /// A command stopped (timeout, cancel, leftover at start-up) gets
    /// SIGTERM, then SIGKILL after this long.
    pub kill_grace: Duration,
    /// Audit and snapshot paths are taken under this directory (`--root`,
    /// default `/`); none may leave it.
    pub root: PathBuf,
    /// Labels this agent reports about itself (`--label KEY=VALUE`); an
    /// order narrowed by labels runs only if they match.
    pub labels: crate::proto::Labels,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            timing: Timing::default(),
            max_parallel: 4,
            tail_bytes: 4096,
            stream_tail_bytes: crate::proto::LeafOutput::TAIL_BYTES,
            fail_fraction: 0.0,
            delay: Duration::ZERO,
            dial_gate: None,
            kill_grace: exec::DEFAULT_KILL_GRACE,
            root: PathBuf::from("/"),
            labels: Default::default(),
        }
    }
}

/// How to run one agent.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Directory with ca.crt, node.crt, node.key.
    pub identity: PathBuf,
    /// Where the run log lives.
    pub data_dir: PathBuf,
    /// The relay's HOST:PORT, or several in order of preference (failover).
    pub relay: crate::link::Addrs,
    /// Behaviour.
    pub options: AgentOptions,
}

impl AgentConfig {
    /// Default options.
    pub fn new(identity: PathBuf, data_dir: PathBuf, relay: crate::link::Addrs) -> AgentConfig {
        AgentConfig {
            identity,
            data_dir,
            relay,
            options: AgentOptions::default(),
        }
    }
}

/// One agent's state.
pub(crate) struct AgentState {
    pub me: NodeName,
    pub store: Store,
    /// name ++ 0 ++ job ++ attempt -> RunRecord.
    pub runs: Table,
    pub outbox: Outbox,
    pub slots: Semaphore,
    pub options: AgentOptions,
    /// HQ's public job-signing key: nothing runs without HQ's signature.
    pub job_key: crate::tls::VerifyKey,
    /// Dials the same relay for blob transfers (`purpose = transfer`).
    pub transfer: Dialer,
    /// This agent's package directories (its own, also in a swarm).
    pub pkg: inventory::PkgDirs,
    /// This agent's chunk store, opened on first use.
    pub chunks: tokio::sync::OnceCell<Arc<crate::pkg::ChunkStore>>,
    /// name ++ 0 ++ package -> InventoryEntry.
    pub inventory: Table,
    /// One inventory change at a time.
    pub pkg_lock: tokio::sync::Mutex<()>,
    /// An inventory report is to be queued once a relay is known (start-up).
    pub report_inventory: std::sync::atomic::AtomicBool,
    /// Running attempts and their cancel tokens; its lock orders starts
    /// against cancels (`run.rs`).
    pub live: run::Live,
    /// The store's id, and what earlier runs left running (read once,
    /// shared by a swarm).
    pub leftovers: leftover::Leftovers,
}

/// Loads an identity meant for an agent.
pub(crate) fn load_identity(dir: &std::path::Path) -> Result<Identity, AgentError> {
    let identity = Identity::load(dir)?;
    if identity.me().role != Role::Agent {
        return Err(AgentError::Config(format!(
            "{} holds {} certificate, not an agent one",
            dir.display(),
            identity.me().role.with_article()
        )));
    }
    if identity.job_key().is_none() {
        return Err(AgentError::Config(format!(
            "{} has no {} (hq's job-signing key): issue the identity again with `hq cert issue`",
            dir.display(),
            crate::tls::SIGN_PUB
        )));
    }
    Ok(identity)
}

/// Every run recorded in the store under `data_dir` (of `agent serve` or
/// `agent swarm`); the agent must not be running.
pub async fn read_run_log(data_dir: &std::path::Path) -> Result<Vec<RunView>, AgentError> {
    let store = Store::open(data_dir)?;
    let runs = runlog::all_runs(&store.table(runlog::TREE)?)?;
    Ok(runs)
}

/// Every package installed by every agent whose store is under `data_dir`
/// (of `agent serve` or `agent swarm`); the agent must not be running.
pub async fn read_inventory(data_dir: &std::path::Path) -> Result<Vec<InventoryView>, AgentError> {
    let store = Store::open(data_dir)?;
    let all = inventory::all(&store.table(inventory::TREE)?, data_dir)?;
    Ok(all)
}

/// Runs one agent until `shutdown`.
pub async fn run(cfg: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    let identity = load_identity(&cfg.identity)?;
    let store = Store::open(&cfg.data_dir)?;
    let leftovers = leftover::Leftovers::new(runlog::store_id(&store.table(runlog::TREE)?)?);
    run_on(
        identity,
        store,
        cfg.data_dir,
        cfg.relay,
        cfg.options,
        leftovers,
        shutdown,
    )
    .await
}

/// Runs one agent on a store that may be shared with others.
pub(crate) async fn run_on(
    identity: Identity,
    store: Store,
    data_dir: PathBuf,
    relay: crate::link::Addrs,
    options: AgentOptions,
    leftovers: leftover::Leftovers,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let me = identity.me().clone();
    let job_key = identity
        .job_key()
        .cloned()
        .ok_or_else(|| AgentError::Config("identity has no job-signing key".into()))?;
    let dialer = Dialer {
        addr: relay,
        connector: tokio_rustls::TlsConnector::from(identity.client_config(Role::Relay, None)?),
        me: Hello {
            version: PROTOCOL_VERSION,
            name: me.name.clone(),
            role: Role::Agent,
            purpose: Purpose::Session,
            hq_now_ms: None,
            about: Some(crate::proto::About {
                labels: options.labels.clone(),
                version: Some(env!("CARGO_PKG_VERSION").into()),
            }),
            idle_timeout_ms: None,
        },
        timing: options.timing,
        gate: options.dial_gate.clone(),
    };
    // Shares the address list: transfers go to the relay the session reached.
    let mut transfer = dialer.clone();
    transfer.me.purpose = Purpose::Transfer;
    // Relays of two installations: refused before anything runs.
    crate::link::check_parents(&dialer)
        .await
        .map_err(|e| AgentError::Config(e.to_string()))?;
    let st = Arc::new(AgentState {
        job_key,
        me: me.name.clone(),
        runs: store.table(runlog::TREE)?,
        outbox: store.outbox_prefixed(runlog::TREE, &runlog::outbox_prefix(&me.name))?,
        inventory: store.table(inventory::TREE)?,
        store,
        slots: Semaphore::new(options.max_parallel.max(1)),
        options: options.clone(),
        transfer,
        pkg: inventory::PkgDirs::new(&data_dir, &me.name),
        chunks: tokio::sync::OnceCell::new(),
        pkg_lock: tokio::sync::Mutex::new(()),
        report_inventory: AtomicBool::new(false),
        live: Default::default(),
        leftovers,
    });
    let span = tracing::info_span!("agent", client = %me.name);
    async {
        let to_run = runlog::recover(&st).await?;
        // Before anything runs: trees of cut-short installs and removals go.
        let changed = inventory::reconcile(&st.inventory, &st.me, &st.pkg)?;
        if changed || !inventory::list(&st.inventory, &st.me)?.is_empty() {
            st.report_inventory.store(true, Ordering::SeqCst);
        }
        for a in to_run {
            tokio::spawn(run::execute(st.clone(), a).in_current_span());
        }
        // A fresh data directory records its registration before it first
        // dials (by its own clock until HQ's is known): its relay cannot
        // target it with an order issued before then.
        registration(&st, None).await?;
        st.store.durable().await?;
        let identity = Arc::new(identity);
        let asks = Arc::new(crate::link::CertAsks::default());
        let dialing = dial_loop(dialer, shutdown, |s| {
            session(st.clone(), identity.clone(), asks.clone(), s)
        });
        tokio::select! {
            _ = dialing => {}
            e = st.store.failed() => return Err(AgentError::Store(e)),
        }
        st.store.durable().await?;
        Ok(())
    }
    .instrument(span)
    .await
}

/// A cancel, a recall or a purge from the relay: applied, made durable,
/// answered.
/// A cancel is acknowledged from its own task, once nothing of the job runs
/// here any more, so that stopping a command (up to the grace) holds up
/// nothing else.
async fn from_relay(st: &Arc<AgentState>, tx: &SessionTx, m: Msg) -> Result<(), LinkError> {
    match m {
        Msg::Cancel { job } => {
            run::cancel(st, job)?;
            tokio::spawn(cancel_ack(st.clone(), tx.clone(), job).in_current_span());
        }
        Msg::Recall { job, attempt } => {
            let given_back = run::give_back(st, job, attempt)?;
            if given_back {
                st.store.durable().await?;
            }
            crate::link::send(
                tx,
                Msg::Recalled {
                    job,
                    attempt,
                    given_back,
                },
            )
            .await?;
        }
        Msg::Purge { id, jobs } => {
            let n = run::purge(st, &jobs)?;
            st.store.durable().await?;
            tracing::info!(purge = id, jobs = jobs.len(), records = n, "purged");
            crate::link::send(tx, Msg::PurgeAck { id }).await?;
        }
        other => return Err(unexpected(&other, "from a relay")),
    }
    Ok(())
}

/// Waits until no attempt of canceled `job` runs here (bounded: the grace,
/// and then some), makes the store durable and sends `CancelAck`. A lost
/// ack is harmless: the relay sends the cancel again, and it is answered
/// again.
async fn cancel_ack(st: Arc<AgentState>, tx: SessionTx, job: crate::proto::JobId) {
    let until = tokio::time::Instant::now() + st.options.kill_grace + Duration::from_secs(30);
    while run::running(&st, job) && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if run::running(&st, job) {
        tracing::warn!(%job, "canceled job still running after the grace; cancel not acknowledged yet");
        return;
    }
    if let Err(e) = st.store.durable().await {
        tracing::warn!(%job, error = %e, "cannot make a cancel durable");
        return;
    }
    if let Err(e) = crate::link::send(&tx, Msg::CancelAck { job }).await {
        tracing::debug!(%job, error = %e, "cancel ack not sent (session gone)");
    }
}

/// Table of this agent's times by HQ's clock: agent name -> first
/// registration (unix ms); agent name ++ "/offset" -> last offset measured.
const REGISTERED: &str = "registered";

/// HQ's clock minus this agent's for a session: measured from the relay's
/// `Hello` (and kept), else the last one kept (a relay that has not reached
/// its parent yet knows none). `None` when never measured.
fn hq_offset(
    st: &AgentState,
    measured: Option<i64>,
) -> Result<Option<i64>, crate::store::StoreError> {
    let t = st.store.table(REGISTERED)?;
    let k = [st.me.as_str().as_bytes(), b"/offset"].concat();
    match measured {
        Some(o) => {
            t.put(&k, &o)?;
            Ok(Some(o))
        }
        None => t.get::<i64>(&k),
    }
}

/// When this agent's data directory first registered (first started), by
/// HQ's clock (see [`verify::registration`]): read, and recorded durably
/// when new or moved to HQ's time.
async fn registration(
    st: &AgentState,
    offset: Option<i64>,
) -> Result<u64, crate::store::StoreError> {
    let t = st.store.table(REGISTERED)?;
    let k = crate::store::keys::name(&st.me);
    let (rec, changed) = verify::registration(t.get(&k)?, offset, now_ms());
    if changed {
        t.put(&k, &rec)?;
        st.store.durable().await?;
        tracing::info!(
            registered_at_ms = rec.at_ms,
            by_hq = rec.by_hq,
            "registration recorded"
        );
    }
    Ok(rec.at_ms)
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn session(
    st: Arc<AgentState>,
    identity: Arc<Identity>,
    asks: Arc<crate::link::CertAsks>,
    s: Session,
) -> Result<(), LinkError> {
    let Session {
        peer,
        tx,
        mut rx,
        hq_offset_ms,
        ..
    } = s;
    let relay = peer.name;
    // Renews this agent's certificate over this session when it is due.
    let _renew = AbortOnDrop(tokio::spawn(
        crate::link::keep_renewed(identity, asks.clone(), tx.clone()).in_current_span(),
    ));
    // Orders are judged by HQ's clock: ours plus the offset measured from
    // the relay's Hello (or kept from an earlier one); ours if never measured.
    let mut offset = hq_offset(&st, hq_offset_ms)?;
    if offset.is_none() {
        tracing::warn!(%relay, "hq's time never measured; judging orders by the local clock");
    }
    let mut registered_at_ms = registration(&st, offset).await?;
    if st.report_inventory.swap(false, Ordering::SeqCst) {
        // Once after start-up: what is installed here, as it stands.
        inventory::push_report(&st.inventory, &st.outbox, &st.me, &relay)?;
        st.store.durable().await?;
    }
    let up = Upward::start(st.outbox.clone(), tx.clone());
    let r = async {
        loop {
            match rx.recv().await? {
                Msg::Assign(a) => {
                    if let Some(stamp) = a.hq_now_ms {
                        // The relay's HQ time at delivery: the freshest
                        // offset (its Hello may have had none yet).
                        let measured = crate::link::clock::offset(stamp, now_ms());
                        if offset.is_none() {
                            registered_at_ms = registration(&st, Some(measured)).await?;
                        }
                        offset = hq_offset(&st, Some(measured))?;
                    }
                    let t = verify::HqTime {
                        now_ms: crate::link::clock::shift(now_ms(), offset.unwrap_or(0)),
                        registered_at_ms,
                    };
                    let verdict = verify::check(&st.job_key, &a, &st.me, &st.options.labels, &relay, t);
                    if let Err(why) = verdict {
                        tracing::warn!(job = %a.job, attempt = %a.attempt, %relay, reason = %why, "assignment refused");
                        if runlog::refuse(&st, &a, &relay, &why)? {
                            st.store.durable().await?;
                        }
                    } else if let Some(fresh) = runlog::accept(&st, &a, &relay)? {
                        // A ping is answered with the same flush that records
                        // its receipt; anything else runs in its own task.
                        let rest = run::finish_now(&st, fresh)?;
                        if let Some(rec) = &rest {
                            runlog::write_received(&st, rec)?;
                        }
                        st.store.durable().await?;
                        match rest {
                            Some(rec) => {
                                tokio::spawn(run::execute(st.clone(), rec).in_current_span());
                            }
                            // Finished already: its result (queued upward
                            // in this flush) says more than an ack would,
                            // and saves the relay and HQ one update.
                            None => continue,
                        }
                    }
                    crate::link::send(&tx, Msg::AssignAck {
                        job: a.job,
                        attempt: a.attempt,
                    }).await?;
                }
                m @ (Msg::Cancel { .. } | Msg::Purge { .. } | Msg::Recall { .. }) => {
                    from_relay(&st, &tx, m).await?
                }
                Msg::Ack { seq } => up.ack(seq)?,
                Msg::CertReply { id, result } => asks.answer(id, result),
                other => return Err(unexpected(&other, "from a relay")),
            }
        }
    }
    .await;
    drop(up);
    r
}

/// One agent's state on a store in `dir`, with no session (unit tests).
#[cfg(test)]
pub(crate) fn test_state(dir: &std::path::Path) -> Arc<AgentState> {
    test_state_with(dir, AgentOptions::default())
}

/// [`test_state`] with other options.
#[cfg(test)]
pub(crate) fn test_state_with(dir: &std::path::Path, options: AgentOptions) -> Arc<AgentState> {
    use crate::link::{Dialer, Timing};
    let store = Store::open(dir).unwrap();
    let me = NodeName::new("a1").unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let job_key = crate::tls::SigningKey::create(dir).unwrap().verify_key();
    Arc::new(AgentState {
        job_key,
        runs: store.table(runlog::TREE).unwrap(),
        outbox: store
            .outbox_prefixed(runlog::TREE, &runlog::outbox_prefix(&me))
            .unwrap(),
        inventory: store.table(inventory::TREE).unwrap(),
        store,
        slots: tokio::sync::Semaphore::new(1),
        options,
        transfer: Dialer {
            // Nothing listens here: a test that dials fails loudly.
            addr: "127.0.0.1:1".into(),
            connector: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            me: Hello {
                version: PROTOCOL_VERSION,
                name: me.clone(),
                role: Role::Agent,
                purpose: Purpose::Transfer,
                hq_now_ms: None,
                about: None,
                idle_timeout_ms: None,
            },
            timing: Timing::default(),
            gate: None,
        },
        pkg: inventory::PkgDirs::new(dir, &me),
        chunks: tokio::sync::OnceCell::new(),
        pkg_lock: tokio::sync::Mutex::new(()),
        report_inventory: Default::default(),
        live: Default::default(),
        leftovers: leftover::Leftovers::new("test-store".into()),
        me,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::JobId;

    #[tokio::test]
    async fn cancel_and_purge_from_the_relay_are_applied_and_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let st = test_state(dir.path());
        let (tx, mut rx) = SessionTx::channel(8);
        // A job this agent never saw: a tombstone, acknowledged.
        from_relay(&st, &tx, Msg::Cancel { job: JobId(5) })
            .await
            .unwrap();
        let ack = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap();
        assert!(
            matches!(ack, Some(Msg::CancelAck { job: JobId(5) })),
            "{ack:?}"
        );
        assert!(runlog::is_canceled(&st, JobId(5)).unwrap());
        // Sent again (after a reconnect): acknowledged again.
        from_relay(&st, &tx, Msg::Cancel { job: JobId(5) })
            .await
            .unwrap();
        let ack = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap();
        assert!(
            matches!(ack, Some(Msg::CancelAck { job: JobId(5) })),
            "{ack:?}"
        );
        from_relay(
            &st,
            &tx,
            Msg::Purge {
                id: 7,
                jobs: vec![JobId(5)],
            },
        )
        .await
        .unwrap();
        assert!(matches!(rx.try_recv(), Ok(Msg::PurgeAck { id: 7 })));
        assert!(!runlog::is_canceled(&st, JobId(5)).unwrap(), "not purged");
        // Anything else from a relay here is a protocol error.
        assert!(from_relay(&st, &tx, Msg::BlobsDone).await.is_err());
    }
}

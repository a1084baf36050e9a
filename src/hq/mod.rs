//! HQ: the root of the tree. Owns jobs and attempts, ingests the events its
//! relays roll up, keeps every leaf's latest result, and answers admins.
//!
//! Never talks to agents directly; never imports `relay` or `agent`.

mod audit;
mod batch;
mod children;
mod clients;
mod console;
mod counters;
mod enroll;
mod gauges;
mod ingest;
mod jobs;
mod output;
mod packages;
mod peers;
mod placement;
mod repeat;
mod reroute;
mod retention;
mod revoke;
mod rollout;
mod sessions;
mod sync;
mod syncs;
mod targets;
mod view;

use crate::link::{self, Admission, SessionTx, Timing};
use crate::proto::{Hello, NodeName, Role, PROTOCOL_VERSION};
use crate::rules::LeafRecord;
use crate::store::keys::{JobClient, JobKey, Name, Seq};
use crate::store::{Store, StoreError, Table, Tree, TreeDef};
use crate::tls::{Identity, TlsError};
pub use console::Console;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// HQ failed to start or run.
#[derive(Debug, thiserror::Error)]
pub enum HqError {
    /// Identity files.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Storage.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A request was refused.
    #[error("{0}")]
    Refused(String),
}

/// A relay as HQ records it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct RelayRecord {
    pub parent: NodeName,
    pub connected: bool,
    pub last_seen_ms: u64,
}

/// A client as HQ records it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ClientRecord {
    pub relay: NodeName,
    /// When it joined that home, unix ms by the home's clock.
    pub since_ms: u64,
    /// Its session to its home relay is up, as that relay last reported.
    #[serde(default)]
    pub online: bool,
    /// When it last came online or went offline, unix ms by its home's
    /// clock (0: never reported).
    #[serde(default)]
    pub seen_ms: u64,
    /// Its labels and version, as it last came online.
    #[serde(default)]
    pub about: crate::proto::About,
}

/// HQ's trees, each declared once: name on disk, key, value.
pub(crate) mod trees {
    use super::*;

    /// job -> JobRecord.
    pub const JOBS: TreeDef<JobKey, jobs::JobRecord> = TreeDef::new("jobs");
    /// job ++ client -> LeafRecord.
    pub const LEAVES: TreeDef<JobClient, LeafRecord> = TreeDef::new("leaves");
    /// job ++ client -> OutputRecord: a leaf's latest output.
    pub const OUTPUTS: TreeDef<JobClient, output::OutputRecord> = TreeDef::new("outputs");
    /// relay -> RelayRecord.
    pub const RELAYS: TreeDef<Name, RelayRecord> = TreeDef::new("relays");
    /// client -> ClientRecord.
    pub const CLIENTS: TreeDef<Name, ClientRecord> = TreeDef::new("clients");
    /// name -> Role: every node that ever had a session with HQ.
    pub const SEEN: TreeDef<Name, Role> = TreeDef::new("seen");
    /// name -> unix ms: revoked nodes.
    pub const DENIED: TreeDef<Name, u64> = TreeDef::new("denied");
    /// client -> InventoryReport.
    pub const INVENTORY: TreeDef<Name, crate::proto::InventoryReport> = TreeDef::new("inventory");
    /// relay -> RelaySchedule.
    pub const SCHEDULES: TreeDef<Name, crate::proto::RelaySchedule> = TreeDef::new("schedules");
    /// name -> IssuedRecord: certificates HQ issued by enrollment or renewal.
    pub const ISSUED: TreeDef<Name, enroll::IssuedRecord> = TreeDef::new("issued");
    /// job -> Tombstone: purged jobs.
    pub const PURGED: TreeDef<JobKey, retention::Tombstone> = TreeDef::new("purged");
    /// schedule id -> RepeatRecord: recurring jobs.
    pub const REPEATS: TreeDef<Seq, repeat::RepeatRecord> = TreeDef::new("repeats");
    /// job -> relay: jobs held until that relay's package sync finished.
    pub const AFTER_SYNC: TreeDef<JobKey, NodeName> = TreeDef::new("after_sync");
}

/// HQ's shared state.
pub(crate) struct HqState {
    /// HQ's own name.
    pub me: NodeName,
    pub store: Store,
    /// JobId -> JobRecord.
    pub jobs: Tree<JobKey, jobs::JobRecord>,
    /// job ++ client -> LeafRecord.
    pub leaves: Tree<JobClient, LeafRecord>,
    /// job ++ client -> output::OutputRecord: a leaf's latest stdout,
    /// stderr and timings, apart from `leaves` so that status stays cheap.
    pub outputs: Tree<JobClient, output::OutputRecord>,
    /// relay -> RelayRecord.
    pub relays: Tree<Name, RelayRecord>,
    /// client -> ClientRecord.
    pub clients: Tree<Name, ClientRecord>,
    /// Messages queued for children until acknowledged (cancels, purges, ...).
    pub down: crate::link::queue::DownQueue,
    /// name -> Role: every node that ever had a session with HQ (admins too).
    pub seen: Tree<Name, Role>,
    /// name -> unix ms: revoked nodes.
    pub denied: Tree<Name, u64>,
    /// The same, in memory, as the listener checks it.
    pub deny: crate::link::DenyList,
    /// Sessions of directly connected relays.
    pub children: Mutex<HashMap<NodeName, SessionTx>>,
    /// Serialises read-modify-write of leaves and jobs (no await inside).
    pub write: Mutex<()>,
    /// Expiry window of an order whose job gives none (`hq serve --order-ttl`).
    pub order_ttl_ms: u64,
    /// Signs every order (end to end: relays cannot alter them).
    pub signer: crate::tls::SigningKey,
    /// When this HQ process started, unix ms (for the reconnect grace period).
    pub started_at_ms: u64,
    /// Leaves per state of each job looked at, kept as results arrive.
    pub counters: counters::Counters,
    /// Bumped after every durable change of leaves, for `job wait`.
    pub changed: watch::Sender<u64>,
    /// Package blobs (chunks and manifests).
    pub depot: Arc<crate::pkg::ChunkStore>,
    /// name ++ 0 ++ version -> PackageInfo: the depot's catalog.
    pub packages: Table,
    /// relay ++ 0 ++ name ++ 0 ++ version -> CacheReport: relay caches as reported.
    pub caches: Table,
    /// client -> InventoryReport.
    pub inventory: Tree<Name, crate::proto::InventoryReport>,
    /// sync id -> SyncOrder not yet answered by its relay.
    pub syncs: Table,
    /// relay -> RelaySchedule.
    pub schedules: Tree<Name, crate::proto::RelaySchedule>,
    /// schedule id -> RepeatRecord: recurring jobs.
    pub repeats: Tree<Seq, repeat::RepeatRecord>,
    /// job -> relay: jobs held until that relay's package sync finished.
    pub after_sync: Tree<JobKey, NodeName>,
    /// Blob bytes sent to each relay.
    pub egress: Arc<crate::link::transfer::Egress>,
    /// Uploads in progress (pieces of blobs), and package adds under way.
    pub uploads: packages::Uploads,
    /// SHA-256 of a token -> TokenRecord: enrollment tokens.
    pub tokens: Table,
    /// name -> IssuedRecord: names HQ signed certificates for.
    pub issued: Tree<Name, enroll::IssuedRecord>,
    /// The CA and what goes with every certificate HQ signs (set by `run`).
    pub authority: std::sync::OnceLock<enroll::Authority>,
    /// One-time dashboard login tokens, and where the dashboard listens.
    pub door: console::Door,
    /// Snapshot name -> `audit::SnapshotRecord`.
    pub snapshots: Table,
}

impl HqState {
    fn open(
        me: NodeName,
        store: Store,
        signer: crate::tls::SigningKey,
        depot: crate::pkg::ChunkStore,
    ) -> Result<HqState, StoreError> {
        Ok(HqState {
            me,
            signer,
            depot: Arc::new(depot),
            packages: store.table("packages")?,
            caches: store.table("caches")?,
            inventory: store.tree(trees::INVENTORY)?,
            syncs: store.table("syncs")?,
            schedules: store.tree(trees::SCHEDULES)?,
            repeats: store.tree(trees::REPEATS)?,
            after_sync: store.tree(trees::AFTER_SYNC)?,
            egress: Default::default(),
            uploads: Default::default(),
            tokens: store.table("tokens")?,
            issued: store.tree(trees::ISSUED)?,
            authority: std::sync::OnceLock::new(),
            door: Default::default(),
            snapshots: store.table("snapshots")?,
            jobs: store.tree(trees::JOBS)?,
            leaves: store.tree(trees::LEAVES)?,
            outputs: store.tree(trees::OUTPUTS)?,
            relays: store.tree(trees::RELAYS)?,
            clients: store.tree(trees::CLIENTS)?,
            down: crate::link::queue::DownQueue::new(store.table("down")?),
            seen: store.tree(trees::SEEN)?,
            denied: store.tree(trees::DENIED)?,
            deny: Default::default(),
            store,
            children: Mutex::new(HashMap::new()),
            write: Mutex::new(()),
            order_ttl_ms: DEFAULT_ORDER_TTL_MS,
            changed: watch::channel(0).0,
            counters: Default::default(),
            started_at_ms: crate::proto::now_ms(),
        })
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }
}

/// Where `hq init` puts things under the data directory.
pub mod layout {
    use std::path::{Path, PathBuf};
    /// The CA's certificate and key.
    pub fn ca(data: &Path) -> PathBuf {
        data.join("ca")
    }
    /// HQ's own identity.
    pub fn hq(data: &Path) -> PathBuf {
        data.join("hq")
    }
    /// The first admin identity.
    pub fn admin(data: &Path) -> PathBuf {
        data.join("admin")
    }
    /// The package depot's blobs.
    pub fn depot(data: &Path) -> PathBuf {
        data.join("depot")
    }
}

/// How long finished jobs are kept when `hq serve` is not told (30 days).
pub const DEFAULT_RETENTION: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

pub use enroll::DEFAULT_CERT_VALIDITY;

/// Default expiry window of a job created without `--expires`: 7 days.
pub const DEFAULT_ORDER_TTL_MS: u64 = 7 * 24 * 3600 * 1000;

/// How HQ runs, beyond its listener and session timers.
#[derive(Clone, Debug)]
pub struct HqOptions {
    /// Expiry window of a job created without `--expires`.
    pub order_ttl_ms: u64,
    /// Finished jobs unchanged for this long are purged (checked periodically).
    pub retention: std::time::Duration,
    /// Validity of the certificates HQ signs (enrollments, renewals).
    pub cert_validity: std::time::Duration,
    /// HQ's state, when not the sled database under the data directory
    /// (`hq serve --store postgres://...`).
    pub store: Option<Store>,
}

impl Default for HqOptions {
    fn default() -> HqOptions {
        HqOptions {
            order_ttl_ms: DEFAULT_ORDER_TTL_MS,
            retention: DEFAULT_RETENTION,
            cert_validity: DEFAULT_CERT_VALIDITY,
            store: None,
        }
    }
}

/// Runs HQ on an already bound listener until `shutdown`, with default
/// options but for `retention`.
pub async fn run(
    listener: TcpListener,
    data_dir: &Path,
    timing: Timing,
    retention: std::time::Duration,
    shutdown: CancellationToken,
) -> Result<(), HqError> {
    let opts = HqOptions {
        retention,
        ..HqOptions::default()
    };
    run_with(listener, data_dir, timing, opts, shutdown).await
}

/// Runs HQ on an already bound listener until `shutdown`.
pub async fn run_with(
    listener: TcpListener,
    data_dir: &Path,
    timing: Timing,
    opts: HqOptions,
    shutdown: CancellationToken,
) -> Result<(), HqError> {
    run_with_console(listener, data_dir, timing, opts, shutdown, |_| {}).await
}

/// As [`run_with`]; `start` is handed a [`Console`] once HQ's state is open
/// (the dashboard starts there), before HQ accepts sessions.
pub async fn run_with_console(
    listener: TcpListener,
    data_dir: &Path,
    timing: Timing,
    opts: HqOptions,
    shutdown: CancellationToken,
    start: impl FnOnce(Console),
) -> Result<(), HqError> {
    let identity = Identity::load(&layout::hq(data_dir))?;
    let me = identity.me().clone();
    if me.role != Role::Hq {
        return Err(HqError::Refused(format!(
            "{} holds {} certificate, not an hq one",
            layout::hq(data_dir).display(),
            me.role.with_article()
        )));
    }
    let signer = crate::tls::SigningKey::load(&layout::ca(data_dir))?;
    let store = match opts.store.clone() {
        Some(s) => s,
        None => Store::open(data_dir)?,
    };
    let depot = crate::pkg::ChunkStore::open(layout::depot(data_dir))
        .map_err(|e| HqError::Refused(format!("cannot open the package depot: {e}")))?;
    let mut state = HqState::open(me.name.clone(), store, signer, depot)?;
    state.order_ttl_ms = opts.order_ttl_ms;
    let state = Arc::new(state);
    let ca = crate::tls::Ca::load(&layout::ca(data_dir))?;
    let sign_pub_path = layout::ca(data_dir).join(crate::tls::SIGN_PUB);
    let sign_pub = std::fs::read(&sign_pub_path).map_err(|source| TlsError::Read {
        path: sign_pub_path,
        source,
    })?;
    let _ = state.authority.set(enroll::Authority {
        ca_hash: crate::tls::enroll::ca_hash(ca.cert_der()),
        ca,
        sign_pub,
        validity: opts.cert_validity,
    });
    // On a shared database the relays marked connected may be with another
    // HQ: only the first HQ up (the holder of this duty) clears the marks.
    if state.store.holds_duty("sessions") {
        sessions::mark_all_disconnected(&state)?;
    }
    sessions::load_deny_list(&state)?;
    gauges::register(&state);
    start(Console::new(state.clone()));
    let admit = [Role::Relay, Role::Admin];
    let acceptor = tokio_rustls::TlsAcceptor::from(identity.server_config_enrolling(&admit)?);
    let adm = Arc::new(Admission {
        admit: admit.to_vec(),
        me: Hello {
            version: PROTOCOL_VERSION,
            name: me.name.clone(),
            role: Role::Hq,
            purpose: Default::default(),
            hq_now_ms: None,
            about: None,
            idle_timeout_ms: None,
        },
        trust_domain: me.trust_domain.clone(),
        timing,
        limits: Default::default(),
        denied: state.deny.clone(),
        clock: crate::link::HqClock::hq(),
    });
    let st = state.clone();
    let st2 = state.clone();
    let enrolling: link::EnrollFn = Arc::new(move |req| {
        let st = st2.clone();
        Box::pin(async move { enroll::certify(&st, None, req).await })
    });
    let serving = link::serve_enrolling(
        listener,
        acceptor,
        adm,
        enrolling,
        shutdown.clone(),
        move |s| sessions::handle(st.clone(), s),
    );
    let schedules = tokio::spawn(syncs::run_schedules(state.clone()));
    let _stop_schedules = AbortOnDrop(schedules);
    let _stop_retention = AbortOnDrop(tokio::spawn(retention::run(state.clone(), opts.retention)));
    let _stop_repeats = AbortOnDrop(tokio::spawn(repeat::run(state.clone())));
    let _stop_peers = AbortOnDrop(tokio::spawn(peers::run(state.clone())));
    tokio::select! {
        _ = serving => {}
        e = state.store.failed() => {
            shutdown.cancel();
            return Err(HqError::Store(e));
        }
    }
    state.store.durable().await?;
    Ok(())
}

/// Aborts a background task when HQ stops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

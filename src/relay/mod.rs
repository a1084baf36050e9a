//! A relay manager: the home of the agents that dial it. Receives assignments
//! from its parent, snapshots or routes their targets, delivers to its agents
//! and child relays, keeps every home client's status, and rolls events up
//! through its outbox.
//!
//! Never imports `hq` or `agent`.

mod announce;
mod assign;
mod cache;
mod cancel;
mod children;
mod deny;
mod expire;
mod gauges;
mod home;
mod moves;
mod narrow;
mod placement;
mod presence;
mod purge;
mod results;
mod rollout;
mod upward;

use crate::link::{self, Admission, Dialer, SessionTx, Timing};
use crate::proto::{Action, Hello, NodeName, Role, PROTOCOL_VERSION};
use crate::rules::LeafRecord;
use crate::store::keys::{DueJobAttempt, JobAttempt, JobClient, JobKey, Name, NameJob};
use crate::store::{Outbox, Store, StoreError, Tree, TreeDef};
use crate::tls::{Identity, TlsError};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A relay failed to start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
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

/// How to run a relay.
pub struct RelayConfig {
    /// Directory with ca.crt, node.crt, node.key.
    pub identity: PathBuf,
    /// Where the database lives.
    pub data_dir: PathBuf,
    /// The parent's HOST:PORT (HQ or another relay), or several in order of
    /// preference (failover).
    pub parent: Vec<String>,
    /// Session timers.
    pub timing: Timing,
    /// Caps on connections to this relay's listener.
    pub limits: link::Limits,
}

/// Where a client lives, as this relay knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DirEntry {
    /// Its home relay.
    pub home: NodeName,
    /// The direct child through which it is reached (itself for a home agent).
    pub via: NodeName,
}

/// An attempt this relay received.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct AttemptRecord {
    pub action: Action,
    pub expires_at_ms: Option<u64>,
    /// Every home leaf is final past the expiry: the attempt left the expiry index.
    pub swept: bool,
    /// HQ's signed orders for this attempt, passed on to agents.
    #[serde(default)]
    pub orders: Vec<crate::proto::SignedOrder>,
}

/// The relay's trees, each declared once: name on disk, key, value.
pub(crate) mod trees {
    use super::*;

    /// client -> DirEntry, for every client in the subtree.
    pub const DIR_CLIENTS: TreeDef<Name, DirEntry> = TreeDef::new("dir_clients");
    /// client -> unix ms: when its current home says it joined there.
    pub const DIR_SINCE: TreeDef<Name, u64> = TreeDef::new("dir_since");
    /// relay -> via (direct child), for every relay in the subtree.
    pub const DIR_RELAYS: TreeDef<Name, NodeName> = TreeDef::new("dir_relays");
    /// relay -> its parent, for every relay in the subtree, as its join
    /// said (announced to a new parent after a failover).
    pub const DIR_PARENTS: TreeDef<Name, NodeName> = TreeDef::new("dir_parents");
    /// job ++ attempt -> AttemptRecord.
    pub const ATTEMPTS: TreeDef<JobAttempt, AttemptRecord> = TreeDef::new("attempts");
    /// job ++ client -> LeafRecord, home clients only.
    pub const LEAVES: TreeDef<JobClient, LeafRecord> = TreeDef::new("leaves");
    /// client ++ 0 ++ job -> attempt, index of home leaves by client.
    pub const CLIENT_LEAVES: TreeDef<NameJob, u32> = TreeDef::new("client_leaves");
    /// relay -> unix ms: relays below that left, until they join again.
    pub const RELAYS_LEFT: TreeDef<Name, u64> = TreeDef::new("relays_left");
    /// name -> unix ms: revoked nodes, as HQ last sent them.
    pub const DENIED: TreeDef<Name, u64> = TreeDef::new("denied");
    /// job -> unix ms: the jobs canceled here.
    pub const CANCELED: TreeDef<JobKey, u64> = TreeDef::new("canceled");
    /// due ++ job ++ attempt -> (): attempts not yet swept, by due time.
    pub const EXPIRY: TreeDef<DueJobAttempt, ()> = TreeDef::new("expiry");
    /// client -> About: labels and version of each client of the subtree,
    /// as it last came online (what a label filter is matched against).
    pub const DIR_ABOUT: TreeDef<Name, crate::proto::About> = TreeDef::new("dir_about");
    /// client -> SignedPlacement: HQ's latest placement of each home client.
    pub const PLACEMENTS: TreeDef<Name, crate::proto::SignedPlacement> = TreeDef::new("placements");
    /// job -> RolloutRecord: the policy and HQ's controls of gated jobs.
    pub const ROLLOUTS: TreeDef<JobKey, super::rollout::RolloutRecord> = TreeDef::new("rollouts");
}

/// The relay's shared state.
pub(crate) struct RelayState {
    pub me: NodeName,
    pub store: Store,
    /// client -> DirEntry, for every client in the subtree.
    pub dir_clients: Tree<Name, DirEntry>,
    /// client -> unix ms: when its current home says it joined there.
    pub dir_since: Tree<Name, u64>,
    /// relay -> via (direct child), for every relay in the subtree.
    pub dir_relays: Tree<Name, NodeName>,
    /// client -> About: labels and version of each client of the subtree.
    pub dir_about: Tree<Name, crate::proto::About>,
    /// relay -> its parent, for every relay in the subtree.
    pub dir_parents: Tree<Name, NodeName>,
    /// job ++ attempt -> AttemptRecord.
    pub attempts: Tree<JobAttempt, AttemptRecord>,
    /// job ++ client -> LeafRecord, home clients only.
    pub leaves: Tree<JobClient, LeafRecord>,
    /// client ++ 0 ++ job -> attempt, index of home leaves by client.
    pub client_leaves: Tree<NameJob, u32>,
    /// Messages queued for children until acknowledged (cancels, purges, ...).
    pub down: crate::link::queue::DownQueue,
    /// relay -> unix ms: relays below whose session to their parent ended
    /// (a `RelayLeft` went up), until they join again.
    pub relays_left: Tree<Name, u64>,
    /// name -> unix ms: revoked nodes, as HQ last sent them.
    pub denied: Tree<Name, u64>,
    /// The same, in memory, as the listener checks it.
    pub deny: crate::link::DenyList,
    /// Events for the parent.
    pub outbox: Outbox,
    /// Live sessions of agents and child relays.
    pub children: Mutex<HashMap<NodeName, SessionTx>>,
    /// Serialises read-modify-write of leaves (no await inside). Whoever
    /// takes it to read leaves calls `results::settle` first.
    pub write: Arc<Mutex<()>>,
    /// Agents' results gathered until the next flush (`results.rs`).
    pub results: Arc<results::Gathered>,
    /// Package blobs for this relay's subtree.
    pub cache: Arc<cache::Cache>,
    /// The session to the parent, while it is up (certificate requests go up on it).
    pub up: Arc<Mutex<Option<SessionTx>>>,
    /// Certificate requests sent to the parent and not answered yet.
    pub asks: Arc<crate::link::CertAsks>,
    /// client -> SignedPlacement: HQ's latest placement of each home client,
    /// attached to every assignment sent to it.
    pub placements: Tree<Name, crate::proto::SignedPlacement>,
    /// HQ's clock as measured from the parent's `Hello`, passed on to children.
    pub clock: crate::link::HqClock,
    /// job -> RolloutRecord: the policy and HQ's controls of gated jobs.
    pub rollouts: Tree<JobKey, rollout::RolloutRecord>,
    /// The gates of gated jobs' home leaves, in memory.
    pub gates: rollout::Gates,
}

impl RelayState {
    fn open(me: NodeName, store: Store, cache: cache::Cache) -> Result<RelayState, StoreError> {
        let write = Arc::new(Mutex::new(()));
        let outbox = store.outbox("outbox")?;
        let leaves = store.tree(trees::LEAVES)?;
        let client_leaves = store.tree(trees::CLIENT_LEAVES)?;
        let results = results::Gathered::new(
            write.clone(),
            outbox.clone(),
            leaves.clone(),
            client_leaves.clone(),
        );
        results.hook_into(&store)?;
        Ok(RelayState {
            cache: Arc::new(cache),
            up: Default::default(),
            asks: Default::default(),
            placements: store.tree(trees::PLACEMENTS)?,
            rollouts: store.tree(trees::ROLLOUTS)?,
            gates: Default::default(),
            clock: Default::default(),
            me,
            dir_clients: store.tree(trees::DIR_CLIENTS)?,
            dir_relays: store.tree(trees::DIR_RELAYS)?,
            dir_parents: store.tree(trees::DIR_PARENTS)?,
            dir_since: store.tree(trees::DIR_SINCE)?,
            dir_about: store.tree(trees::DIR_ABOUT)?,
            attempts: store.tree(trees::ATTEMPTS)?,
            leaves,
            client_leaves,
            down: crate::link::queue::DownQueue::new(store.table("down")?),
            relays_left: store.tree(trees::RELAYS_LEFT)?,
            denied: store.tree(trees::DENIED)?,
            deny: Default::default(),
            outbox,
            store,
            children: Mutex::new(HashMap::new()),
            write,
            results,
        })
    }

    /// The live session of a direct child, if any.
    pub fn child(&self, name: &NodeName) -> Option<SessionTx> {
        self.children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }
}

/// A pending home leaf closed by this relay itself (expired, canceled): its
/// new record and the event that reports it.
pub(crate) fn close_here(
    st: &RelayState,
    job: crate::proto::JobId,
    client: &NodeName,
    leaf: &crate::rules::LeafRecord,
    state: crate::proto::LeafState,
    reason: String,
    now: u64,
) -> (crate::rules::LeafRecord, crate::proto::Event) {
    let rec = crate::rules::LeafRecord {
        state,
        reason: Some(reason.clone()),
        at_ms: now,
        ..leaf.clone()
    };
    let ev = crate::proto::Event::Leaf(crate::proto::LeafUpdate {
        job,
        attempt: leaf.attempt,
        client: client.clone(),
        relay: st.me.clone(),
        state,
        exit_code: None,
        reason: Some(reason),
        output: None,
        at_ms: now,
        out: None,
        audit: None,
    });
    (rec, ev)
}

/// Table keeping the offset to HQ's clock last measured (key `offset`).
pub(crate) const HQ_CLOCK: &str = "hq_clock";

/// Runs a relay on a bound listener until `shutdown`.
pub async fn run(
    listener: TcpListener,
    cfg: RelayConfig,
    shutdown: CancellationToken,
) -> Result<(), RelayError> {
    let identity = Identity::load(&cfg.identity)?;
    let me = identity.me().clone();
    if me.role != Role::Relay {
        return Err(RelayError::Config(format!(
            "{} holds {} certificate, not a relay one",
            cfg.identity.display(),
            me.role.with_article()
        )));
    }
    let store = Store::open(&cfg.data_dir)?;
    let hello = Hello {
        version: PROTOCOL_VERSION,
        name: me.name.clone(),
        role: Role::Relay,
        purpose: Default::default(),
        hq_now_ms: None,
        about: None,
        idle_timeout_ms: None,
    };
    // Upward: the parent is HQ or another relay.
    let connector = tokio_rustls::TlsConnector::from(
        identity.client_config_any(&[Role::Hq, Role::Relay], None)?,
    );
    let dialer = Dialer {
        addr: link::Addrs::new(cfg.parent.clone()),
        connector,
        me: hello.clone(),
        timing: cfg.timing,
        gate: None,
    };
    // Parents of two installations: refused before anything is served.
    link::check_parents(&dialer)
        .await
        .map_err(|e| RelayError::Config(e.to_string()))?;
    let blobs = crate::pkg::ChunkStore::open(cfg.data_dir.join("cache"))
        .map_err(|e| RelayError::Config(format!("cannot open the package cache: {e}")))?;
    let cache = cache::Cache::new(blobs, dialer.clone());
    let st = Arc::new(RelayState::open(me.name.clone(), store, cache)?);
    // HQ's clock as last measured: children get it even before the parent
    // answers again.
    if let Some(o) = st.store.table(HQ_CLOCK)?.get::<i64>(b"offset")? {
        st.clock.set_offset(o);
    }
    st.deny.replace(deny::stored(&st)?);
    // No agent has a session yet: every home client is offline until it
    // dials again (a crash may have left no "offline" for some of them).
    presence::all_offline(&st)?;
    gauges::register(&st);
    // Everything below stops on `shutdown`, or when the disk fails.
    let shutdown = shutdown.child_token();
    let identity = Arc::new(identity);
    let up = tokio::spawn(upward::run(
        st.clone(),
        dialer,
        identity.clone(),
        shutdown.clone(),
    ));
    let sweeper = tokio::spawn(expire::run(
        st.clone(),
        cfg.timing.idle_timeout,
        shutdown.clone(),
    ));
    let gate = tokio::spawn(rollout::run(st.clone(), shutdown.clone()));
    let admit = [Role::Relay, Role::Agent];
    let acceptor = tokio_rustls::TlsAcceptor::from(identity.server_config_enrolling(&admit)?);
    let adm = Arc::new(Admission {
        admit: admit.to_vec(),
        me: hello,
        trust_domain: me.trust_domain.clone(),
        timing: cfg.timing,
        limits: cfg.limits,
        denied: st.deny.clone(),
        clock: st.clock.clone(),
    });
    let s2 = st.clone();
    let s3 = st.clone();
    let enrolling: link::EnrollFn = Arc::new(move |req| {
        let st = s3.clone();
        Box::pin(async move { upward::ask_parent(&st, req).await })
    });
    let serving = link::serve_enrolling(
        listener,
        acceptor,
        adm,
        enrolling,
        shutdown.clone(),
        move |s| children::handle(s2.clone(), s),
    );
    let failed = tokio::select! {
        _ = serving => None,
        e = st.store.failed() => Some(e),
    };
    shutdown.cancel();
    let _ = up.await;
    let _ = sweeper.await;
    let _ = gate.await;
    if let Some(e) = failed {
        return Err(RelayError::Store(e));
    }
    st.store.durable().await?;
    Ok(())
}

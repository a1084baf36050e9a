//! The relay's package cache: blobs (chunks, manifests, audits' object
//! lists) fetched from the parent only when this relay lacks them, served to its agents and child
//! relays, kept in sync on HQ's order, and reported upward.
//!
//! One fetch from the parent runs at a time: a thousand agents asking for the
//! same chunk make the parent send it once. A fetch cut halfway resumes with
//! what is still missing. Never touches leaves or assignments.

use super::RelayState;
use crate::link::transfer::{self, Ensure, EnsureError, TransferError};
use crate::link::{Backoff, Dialer};
use crate::pkg::{ChunkHash, ChunkStore};
use crate::proto::audit::ObjectsRef;
use crate::proto::{now_ms, CacheReport, CacheState, Event, Msg, PackageRef, SyncOrder};
use crate::store::keys::Name;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex as AsyncMutex;
use tracing::{info, warn, Instrument};

/// How long a fetch keeps retrying a broken link before it fails.
const RETRY_FOR: Duration = Duration::from_secs(120);

/// The cache and the way to its parent.
pub(crate) struct Cache {
    /// The blobs.
    pub store: Arc<ChunkStore>,
    /// Dials the parent for transfers.
    dialer: Dialer,
    /// One fetch from the parent at a time.
    fetching: AsyncMutex<()>,
    /// Blob bytes served to each child.
    pub egress: Arc<transfer::Egress>,
    /// When a fetch last gave up because the parent was unreachable: the
    /// requests queued behind it fail at once instead of each waiting out
    /// its own retries.
    down_since: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// Sync orders running or carried out (by id): a re-sent order runs once.
    pub syncs_seen: std::sync::Mutex<std::collections::HashSet<u64>>,
}

/// How long after a fetch gave up on an unreachable parent others fail fast.
const DOWN_GRACE: Duration = Duration::from_secs(5);

impl Cache {
    pub(crate) fn new(store: ChunkStore, mut dialer: Dialer) -> Cache {
        dialer.me.purpose = crate::proto::Purpose::Transfer;
        Cache {
            store: Arc::new(store),
            dialer,
            fetching: AsyncMutex::new(()),
            egress: Default::default(),
            down_since: Default::default(),
            syncs_seen: Default::default(),
        }
    }

    /// Makes sure every blob of `hashes` is here, fetching what is not from
    /// the parent (retrying a broken link for a while). Returns bytes fetched.
    pub(crate) async fn ensure(&self, hashes: &[ChunkHash]) -> Result<u64, TransferError> {
        if self.store.missing(hashes).is_empty() {
            return Ok(0);
        }
        let _one = self.fetching.lock().await;
        self.fetch_locked(&self.store, hashes).await
    }

    /// As [`Cache::ensure`], but says how many of `hashes` this call fetched
    /// from the parent itself: a blob another request fetched while this one
    /// waited its turn was not fetched twice (the cache's hit).
    async fn ensure_counted(&self, hashes: &[ChunkHash]) -> Result<usize, TransferError> {
        if self.store.missing(hashes).is_empty() {
            return Ok(0);
        }
        let _one = self.fetching.lock().await;
        let fetching = self.store.missing(hashes).len();
        self.fetch_locked(&self.store, hashes).await?;
        Ok(fetching)
    }

    /// Fetches what `into` lacks of `hashes`, retrying a broken link for a
    /// while (what arrived before a cut is kept: only the rest is asked
    /// again). The caller holds `fetching`.
    async fn fetch_locked(
        &self,
        into: &Arc<ChunkStore>,
        hashes: &[ChunkHash],
    ) -> Result<u64, TransferError> {
        if into.missing(hashes).is_empty() {
            return Ok(0);
        }
        let recently_down = self
            .down_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| t.elapsed() < DOWN_GRACE);
        let deadline = tokio::time::Instant::now()
            + if recently_down {
                Duration::ZERO
            } else {
                RETRY_FOR
            };
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut total = 0;
        loop {
            let lacking = into.missing(hashes);
            if lacking.is_empty() {
                *self.down_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
                return Ok(total);
            }
            match transfer::fetch(&self.dialer, into, &lacking, &mut total).await {
                Ok(()) => {}
                Err(e) if e.is_transient() && tokio::time::Instant::now() < deadline => {
                    warn!(error = %e, lacking = lacking.len(), "blob fetch interrupted; resuming");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => {
                    if e.is_transient() {
                        *self.down_since.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(tokio::time::Instant::now());
                    }
                    return Err(e);
                }
            }
        }
    }

    /// The hook transfer connections use to fill this cache on demand.
    pub(crate) fn ensure_hook(self: &Arc<Self>) -> Ensure {
        let me = self.clone();
        Arc::new(move |hashes| {
            let me = me.clone();
            Box::pin(async move {
                me.ensure_counted(&hashes).await.map_err(|e| EnsureError {
                    transient: e.is_transient(),
                    reason: e.to_string(),
                })
            })
        })
    }

    /// The hook transfer connections use to pass uploads (snapshots) on to
    /// the parent, keeping a copy here.
    pub(crate) fn up_hook(&self) -> transfer::Up {
        transfer::Up::through(self.dialer.clone(), self.store.clone())
    }

    /// Brings one package in (manifest, then chunks). With `complete`, every
    /// blob is fetched again and replaces what is here. Returns bytes fetched.
    async fn bring(&self, p: &PackageRef, complete: bool) -> Result<u64, String> {
        let label = format!("{}@{}", p.name, p.version);
        let mut fetched = 0;
        if complete {
            fetched += self
                .refetch(&[p.manifest])
                .await
                .map_err(|e| format!("{label}: {e}"))?;
        } else {
            fetched += self
                .ensure(&[p.manifest])
                .await
                .map_err(|e| format!("{label}: {e}"))?;
        }
        let store = self.store.clone();
        let id = p.manifest;
        let m = tokio::task::spawn_blocking(move || store.get_manifest(&id))
            .await
            .map_err(|e| format!("{label}: {e}"))?
            .map_err(|e| format!("{label}: manifest: {e}"))?;
        if m.name != p.name || m.version != p.version {
            return Err(format!(
                "{label}: manifest {} names {}@{}",
                id.short(),
                m.name,
                m.version
            ));
        }
        let hashes: Vec<ChunkHash> = m.chunks().iter().map(|c| c.hash).collect();
        let got = if complete {
            self.refetch(&hashes).await
        } else {
            self.ensure(&hashes).await
        };
        fetched += got.map_err(|e| format!("{label}: {e}"))?;
        Ok(fetched)
    }

    /// Fetches `hashes` again whether or not they are here (into a scratch
    /// store), then replaces the cached copies: a damaged cache is repaired
    /// even where its damage has not been noticed yet.
    async fn refetch(&self, hashes: &[ChunkHash]) -> Result<u64, TransferError> {
        let _one = self.fetching.lock().await;
        let base = self.store.dir();
        let parent = base.parent().unwrap_or(base);
        // A fresh scratch store of its own, removed whatever happens.
        let scratch_dir = tempfile::Builder::new()
            .prefix("cache-resync-")
            .tempdir_in(parent)
            .map_err(|source| crate::pkg::PkgError::Io {
                path: parent.to_path_buf(),
                source,
            })?;
        let scratch = Arc::new(ChunkStore::open(scratch_dir.path())?);
        let total = self.fetch_locked(&scratch, hashes).await?;
        for h in hashes {
            if std::fs::rename(scratch.path_of(h), self.store.path_of(h)).is_err() {
                // Not yet sharded here: store through the verifying path.
                let bytes = scratch.get(h)?;
                self.store.remove(h)?;
                self.store.put(h, &bytes)?;
            }
        }
        Ok(total)
    }
}

/// Reports a cache change upward.
fn report(
    st: &RelayState,
    p: &PackageRef,
    state: CacheState,
    reason: Option<String>,
    sync_id: Option<u64>,
    fetched: u64,
) {
    let ev = Event::Cache(CacheReport {
        relay: st.me.clone(),
        package: p.clone(),
        state,
        reason,
        sync_id,
        fetched_bytes: fetched,
        at_ms: now_ms(),
    });
    if let Err(e) = st.outbox.push(&[ev]) {
        warn!(error = %e, "cannot queue a cache report");
    }
}

/// Carries out a sync order meant for this relay.
pub(crate) async fn sync(st: Arc<RelayState>, order: SyncOrder) {
    let span = tracing::info_span!("sync", id = order.id, relay = %st.me);
    async {
        for p in &order.packages {
            report(&st, p, CacheState::Syncing, None, Some(order.id), 0);
        }
        for p in &order.packages {
            match st.cache.bring(p, order.complete).await {
                Ok(n) => {
                    info!(package = %p.name, version = %p.version, fetched = n, complete = order.complete, "package in cache");
                    report(&st, p, CacheState::Present, None, Some(order.id), n);
                }
                Err(e) => {
                    warn!(error = %e, "package sync failed");
                    report(&st, p, CacheState::Failed, Some(e), Some(order.id), 0);
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// Brings in the package of an install job before agents ask for it.
pub(crate) async fn prefetch(st: Arc<RelayState>, p: PackageRef) {
    let have_all = st.cache.store.has(&p.manifest)
        && st
            .cache
            .store
            .get_manifest(&p.manifest)
            .map(|m| {
                st.cache
                    .store
                    .missing(&m.chunks().iter().map(|c| c.hash).collect::<Vec<_>>())
                    .is_empty()
            })
            .unwrap_or(false);
    if have_all {
        return;
    }
    match st.cache.bring(&p, false).await {
        Ok(n) => report(&st, &p, CacheState::Present, None, None, n),
        Err(e) => {
            warn!(error = %e, "package prefetch failed");
            report(&st, &p, CacheState::Failed, Some(e), None, 0);
        }
    }
}

/// Brings in an audit's object list (one blob) as its assignment arrives, so
/// it crosses each hop once: agents and child relays asking for it meanwhile
/// wait for this same fetch, later ones are served from the cache.
pub(crate) async fn prefetch_objects(st: Arc<RelayState>, r: ObjectsRef) {
    if r.bytes > crate::proto::audit::MAX_OBJECT_LIST_BYTES {
        warn!(list = %r.hash.short(), bytes = r.bytes, "object list too large; not fetched");
        return;
    }
    match st.cache.ensure(&[r.hash]).await {
        Ok(0) => {}
        Ok(n) => {
            info!(list = %r.hash.short(), objects = r.count, fetched = n, "audit object list in cache")
        }
        Err(e) => {
            warn!(list = %r.hash.short(), error = %e, "object list prefetch failed; fetched again when asked")
        }
    }
}

/// A sync order from the parent: carry it out here, or pass it towards its relay.
pub(crate) fn route_sync(st: &Arc<RelayState>, order: SyncOrder) {
    if order.relay == st.me {
        let fresh = st
            .cache
            .syncs_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(order.id);
        if fresh {
            tokio::spawn(sync(st.clone(), order));
        }
        return;
    }
    let via = st.dir_relays.get(&Name(order.relay.clone())).ok().flatten();
    match via.and_then(|v| st.child(&v)) {
        Some(tx) => crate::link::send_soon(&tx, Msg::Sync(order)),
        None => {
            warn!(relay = %order.relay, "sync for a relay not reachable from here; hq re-sends it when that relay is back")
        }
    }
}

/// A cache whose parent is never dialed, for unit tests of other parts.
#[cfg(test)]
pub(crate) fn for_tests(dir: &std::path::Path) -> Cache {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let dialer = Dialer {
        addr: "127.0.0.1:9".into(),
        connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        me: crate::proto::Hello {
            version: crate::proto::PROTOCOL_VERSION,
            name: crate::proto::NodeName::new("r1").unwrap(),
            role: crate::proto::Role::Relay,
            purpose: Default::default(),
            hq_now_ms: None,
            about: None,
            idle_timeout_ms: None,
        },
        timing: Default::default(),
        gate: None,
    };
    Cache::new(ChunkStore::open(dir.join("cache")).unwrap(), dialer)
}

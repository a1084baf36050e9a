//! Blob transfer between a child and its parent, on a connection of its own
//! (`Hello.purpose = transfer`) so packages never hold up job traffic.
//!
//! The child asks for blobs by address (`GetBlobs`); the parent streams each
//! one in pieces (`Blob`), or says it cannot (`BlobMissing`), then
//! `BlobsDone`. The child verifies every blob against its address before
//! storing it, so a damaged cache or a tampering parent is caught at once.
//! A cut connection loses nothing stored: the caller asks again for what it
//! still lacks.
//!
//! Uploads go the other way on the same kind of connection, hop by hop up
//! to HQ's depot (a snapshot's file content): the child asks which blobs
//! the depot lacks (`PutQuery` → `PutLacking`; a relay asks its own parent,
//! so the answer is HQ's), sends only those (`Blob` pieces, `BlobsDone`),
//! and the parent stores each (verified against its address), passes them
//! up itself (a relay) and answers `PutAck` only once they are at HQ. A cut
//! upload keeps what was whole; the next asks again and sends the rest.
//!
//! Knows nothing of jobs, manifests or where the parent gets its blobs: a
//! serving role passes an `ensure` hook that fills its store on demand, and
//! an [`Up`] hook (a relay) to pass uploads on.

use super::{dial_once, send, Dialer, LinkError, Session};
use crate::pkg::{ChunkHash, ChunkStore, PkgError};
use crate::proto::{Msg, NodeName, BLOB_PIECE};
use futures::future::BoxFuture;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tracing::{debug, warn};

/// Blobs asked for in one request, at most.
const BATCH: usize = 64;
/// The largest blob accepted (a manifest of a very large tree).
pub const MAX_BLOB: u64 = 256 * 1024 * 1024;

/// A transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The connection failed or broke.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The parent does not have a blob.
    #[error("parent cannot send blob {hash}: {reason}")]
    Missing {
        /// The blob.
        hash: ChunkHash,
        /// The parent's reason.
        reason: String,
    },
    /// A blob failed verification, or the local store failed.
    #[error(transparent)]
    Pkg(#[from] PkgError),
    /// The parent broke the transfer protocol.
    #[error("transfer protocol violation: {0}")]
    Protocol(String),
}

impl TransferError {
    /// Worth retrying on a new connection (the link broke); other failures
    /// would only repeat.
    pub fn is_transient(&self) -> bool {
        matches!(self, TransferError::Link(_))
    }
}

/// Fetches `hashes` from the parent behind `dialer` (whose `me.purpose` must
/// be `transfer`) into `store`, skipping what the store already holds.
/// Adds the blob bytes received to `received`, also when the transfer breaks
/// halfway (what was whole by then is stored and counted).
pub async fn fetch(
    dialer: &Dialer,
    store: &Arc<ChunkStore>,
    hashes: &[ChunkHash],
    received: &mut u64,
) -> Result<(), TransferError> {
    let want: Vec<ChunkHash> = {
        let mut seen = HashSet::new();
        hashes
            .iter()
            .filter(|h| seen.insert(**h) && !store.has(h))
            .copied()
            .collect()
    };
    if want.is_empty() {
        return Ok(());
    }
    let s = dial_once(dialer).await?;
    let Session { tx, mut rx, .. } = s;
    for batch in want.chunks(BATCH) {
        send(
            &tx,
            Msg::GetBlobs {
                hashes: batch.to_vec(),
            },
        )
        .await?;
        let mut partial: HashMap<ChunkHash, Vec<u8>> = HashMap::new();
        let asked: HashSet<ChunkHash> = batch.iter().copied().collect();
        loop {
            match rx.recv().await? {
                Msg::Blob {
                    hash,
                    offset,
                    total,
                    data,
                } => {
                    if !asked.contains(&hash) {
                        return Err(TransferError::Protocol(format!(
                            "blob {hash} was not asked for"
                        )));
                    }
                    if total > MAX_BLOB {
                        return Err(TransferError::Protocol(format!(
                            "blob {hash} of {total} bytes is over the {MAX_BLOB}-byte limit"
                        )));
                    }
                    if partial.keys().any(|h| *h != hash) {
                        return Err(TransferError::Protocol(format!(
                            "blob {hash} started before the previous blob ended"
                        )));
                    }
                    let buf = partial.entry(hash).or_default();
                    if offset != buf.len() as u64 || buf.len() as u64 + data.len() as u64 > total {
                        return Err(TransferError::Protocol(format!(
                            "blob {hash}: piece at {offset} does not follow {} bytes of {total}",
                            buf.len()
                        )));
                    }
                    buf.extend_from_slice(&data);
                    *received += data.len() as u64;
                    if buf.len() as u64 == total {
                        let bytes = partial.remove(&hash).unwrap_or_default();
                        let st = store.clone();
                        tokio::task::spawn_blocking(move || st.put(&hash, &bytes))
                            .await
                            .map_err(|e| TransferError::Protocol(format!("store task: {e}")))??;
                    }
                }
                Msg::BlobMissing { hash, reason } => {
                    return Err(TransferError::Missing { hash, reason })
                }
                Msg::BlobsDone => break,
                Msg::Bye { reason } => return Err(LinkError::Bye(reason).into()),
                other => return Err(super::unexpected(&other, "in a transfer").into()),
            }
        }
        if let Some(h) = partial.keys().next() {
            return Err(TransferError::Protocol(format!("blob {h} ended early")));
        }
        if let Some(h) = batch.iter().find(|h| !store.has(h)) {
            return Err(TransferError::Protocol(format!(
                "the parent ended the batch without sending blob {h}"
            )));
        }
    }
    drop(tx);
    Ok(())
}

/// Asks the parent behind `dialer` which of `hashes` HQ's depot lacks.
async fn ask_lacking(
    tx: &super::SessionTx,
    rx: &mut super::SessionRx,
    hashes: Vec<ChunkHash>,
) -> Result<Vec<ChunkHash>, TransferError> {
    let asked: HashSet<ChunkHash> = hashes.iter().copied().collect();
    send(tx, Msg::PutQuery { hashes }).await?;
    match rx.recv().await? {
        Msg::PutLacking { hashes } if hashes.iter().all(|h| asked.contains(h)) => Ok(hashes),
        Msg::PutLacking { .. } => Err(TransferError::Protocol(
            "the parent says it lacks blobs that were not asked about".into(),
        )),
        Msg::Bye { reason } => Err(LinkError::Bye(reason).into()),
        other => Err(super::unexpected(&other, "in an upload").into()),
    }
}

/// Which of `hashes` HQ's depot lacks, asked of the parent behind `dialer`
/// (a relay passing on its child's question).
pub async fn lacking(
    dialer: &Dialer,
    hashes: Vec<ChunkHash>,
) -> Result<Vec<ChunkHash>, TransferError> {
    let Session { tx, mut rx, .. } = dial_once(dialer).await?;
    let mut out = Vec::new();
    for batch in hashes.chunks(4 * BATCH) {
        out.extend(ask_lacking(&tx, &mut rx, batch.to_vec()).await?);
    }
    Ok(out)
}

/// Uploads `hashes` from `store` towards HQ's depot through the parent
/// behind `dialer`, sending only the blobs the depot lacks. Returns when the
/// parent acknowledged every one as stored at HQ. Adds the blob bytes sent
/// to `sent`, also when the upload breaks halfway.
pub async fn push(
    dialer: &Dialer,
    store: &Arc<ChunkStore>,
    hashes: &[ChunkHash],
    sent: &mut u64,
) -> Result<(), TransferError> {
    let want: Vec<ChunkHash> = {
        let mut seen = HashSet::new();
        hashes
            .iter()
            .filter(|h| seen.insert(**h))
            .copied()
            .collect()
    };
    if want.is_empty() {
        return Ok(());
    }
    let Session { tx, mut rx, .. } = dial_once(dialer).await?;
    for batch in want.chunks(BATCH) {
        let lacking = ask_lacking(&tx, &mut rx, batch.to_vec()).await?;
        if lacking.is_empty() {
            continue;
        }
        for hash in &lacking {
            let st = store.clone();
            let h = *hash;
            let bytes = tokio::task::spawn_blocking(move || st.get(&h))
                .await
                .map_err(|e| TransferError::Protocol(format!("store task: {e}")))??;
            let total = bytes.len() as u64;
            if bytes.is_empty() {
                send(
                    &tx,
                    Msg::Blob {
                        hash: h,
                        offset: 0,
                        total: 0,
                        data: Vec::new(),
                    },
                )
                .await?;
            }
            for (i, piece) in bytes.chunks(BLOB_PIECE).enumerate() {
                send(
                    &tx,
                    Msg::Blob {
                        hash: h,
                        offset: (i * BLOB_PIECE) as u64,
                        total,
                        data: piece.to_vec(),
                    },
                )
                .await?;
                *sent += piece.len() as u64;
            }
        }
        send(&tx, Msg::BlobsDone).await?;
        match rx.recv().await? {
            Msg::PutAck { hashes } => {
                let acked: HashSet<ChunkHash> = hashes.into_iter().collect();
                if let Some(h) = lacking.iter().find(|h| !acked.contains(h)) {
                    return Err(TransferError::Protocol(format!(
                        "the parent did not store blob {h}"
                    )));
                }
            }
            Msg::Bye { reason } => return Err(LinkError::Bye(reason).into()),
            other => return Err(super::unexpected(&other, "in an upload").into()),
        }
    }
    drop(tx);
    Ok(())
}

/// Asks which of these blobs HQ's depot lacks.
pub type AskLacking = Arc<
    dyn Fn(Vec<ChunkHash>) -> BoxFuture<'static, Result<Vec<ChunkHash>, TransferError>>
        + Send
        + Sync,
>;
/// Sends blobs on up; resolves once they are at HQ.
pub type Forward =
    Arc<dyn Fn(Vec<ChunkHash>) -> BoxFuture<'static, Result<(), TransferError>> + Send + Sync>;

/// Passes uploads on towards HQ (a relay's side of [`serve`]).
#[derive(Clone)]
pub struct Up {
    /// Which of these blobs HQ's depot lacks.
    pub lacking: AskLacking,
    /// Sends these blobs (already in the serving store) on up; resolves once
    /// they are at HQ.
    pub forward: Forward,
}

impl Up {
    /// Passes uploads on through the parent behind `dialer` (a transfer
    /// dialer), keeping a copy in `store`.
    pub fn through(dialer: Dialer, store: Arc<ChunkStore>) -> Up {
        let d2 = dialer.clone();
        Up {
            lacking: Arc::new(move |h| {
                let d = dialer.clone();
                Box::pin(async move { lacking(&d, h).await })
            }),
            forward: Arc::new(move |h| {
                let d = d2.clone();
                let s = store.clone();
                Box::pin(async move {
                    let mut n = 0;
                    push(&d, &s, &h, &mut n).await
                })
            }),
        }
    }
}

/// The upload a serving side is receiving: what it may take, and what it took.
#[derive(Default)]
struct Incoming {
    /// The blobs the last `PutLacking` named.
    allowed: HashSet<ChunkHash>,
    /// The blob being received.
    partial: Option<(ChunkHash, u64, Vec<u8>)>,
    /// Whole blobs stored since the last `BlobsDone`.
    stored: Vec<ChunkHash>,
}

impl Incoming {
    /// Takes one piece; returns a whole blob once its last piece came.
    fn piece(
        &mut self,
        hash: ChunkHash,
        offset: u64,
        total: u64,
        data: Vec<u8>,
    ) -> Result<Option<(ChunkHash, Vec<u8>)>, LinkError> {
        if !self.allowed.contains(&hash) {
            return Err(LinkError::Protocol(format!(
                "upload of blob {hash} that was not asked for"
            )));
        }
        if total > MAX_BLOB {
            return Err(LinkError::Protocol(format!(
                "blob {hash} of {total} bytes is over the {MAX_BLOB}-byte limit"
            )));
        }
        let (h, t, buf) = self
            .partial
            .get_or_insert_with(|| (hash, total, Vec::new()));
        if *h != hash || *t != total || offset != buf.len() as u64 {
            return Err(LinkError::Protocol(format!(
                "upload of blob {hash}: piece at {offset} does not follow"
            )));
        }
        if buf.len() as u64 + data.len() as u64 > total {
            return Err(LinkError::Protocol(format!("blob {hash} overruns {total}")));
        }
        buf.extend_from_slice(&data);
        if buf.len() as u64 == total {
            return Ok(self.partial.take().map(|(h, _, b)| (h, b)));
        }
        Ok(None)
    }
}

/// Why the serving side could not fill its store.
#[derive(Clone, Debug)]
pub struct EnsureError {
    /// What could not be had, and why.
    pub reason: String,
    /// The way up is down for now: the child should retry later rather than
    /// take the blob as missing.
    pub transient: bool,
}

/// Fills the serving side's store with blobs it lacks (a relay fetching from
/// its own parent); says how many it fetched itself (the rest were there, or
/// came in with another request's fetch).
pub type Ensure =
    Arc<dyn Fn(Vec<ChunkHash>) -> BoxFuture<'static, Result<usize, EnsureError>> + Send + Sync>;

/// How long a transfer server waits for a child to take the next piece.
pub const SEND_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Sends one message, giving up when the child does not read for `within`.
async fn send_within(
    tx: &super::SessionTx,
    msg: Msg,
    within: std::time::Duration,
) -> Result<(), LinkError> {
    match tokio::time::timeout(within, send(tx, msg)).await {
        Ok(r) => r,
        Err(_) => Err(LinkError::Timeout(
            "sending blobs to a child that does not read",
        )),
    }
}

/// Bytes of blobs sent, per peer, since the process started.
#[derive(Default)]
pub struct Egress(Mutex<HashMap<NodeName, u64>>);

impl Egress {
    fn add(&self, peer: &NodeName, n: u64) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(peer.clone()).or_default() += n;
    }
    /// Every peer's total, by name.
    pub fn snapshot(&self) -> Vec<(NodeName, u64)> {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = m.iter().map(|(k, v)| (k.clone(), *v)).collect();
        v.sort();
        v
    }
}

/// Serves one transfer connection from `store` until the child closes it:
/// blobs down (`GetBlobs`) and uploads up (`PutQuery`, passed on by `up`;
/// without it this is HQ and `store` the depot).
pub async fn serve(
    s: Session,
    store: Arc<ChunkStore>,
    ensure: Option<Ensure>,
    up: Option<Up>,
    egress: Arc<Egress>,
    within: std::time::Duration,
) -> Result<(), LinkError> {
    let Session {
        peer, tx, mut rx, ..
    } = s;
    let mut incoming = Incoming::default();
    loop {
        let hashes = match rx.recv().await {
            Ok(Msg::GetBlobs { hashes }) => hashes,
            Ok(Msg::PutQuery { hashes }) => {
                if hashes.len() > 4 * BATCH {
                    return Err(LinkError::Protocol(format!(
                        "{} blobs asked about at once (at most {})",
                        hashes.len(),
                        4 * BATCH
                    )));
                }
                let lacking = match &up {
                    Some(up) => (up.lacking)(hashes).await.map_err(|e| {
                        LinkError::Protocol(format!("cannot ask the parent now: {e}"))
                    })?,
                    None => store.missing(&hashes),
                };
                incoming.allowed = lacking.iter().copied().collect();
                send_within(&tx, Msg::PutLacking { hashes: lacking }, within).await?;
                continue;
            }
            Ok(Msg::Blob {
                hash,
                offset,
                total,
                data,
            }) => {
                if let Some((h, bytes)) = incoming.piece(hash, offset, total, data)? {
                    let st = store.clone();
                    tokio::task::spawn_blocking(move || st.put(&h, &bytes))
                        .await
                        .map_err(|e| LinkError::Protocol(format!("store task: {e}")))?
                        .map_err(|e| LinkError::Protocol(format!("upload of blob {h}: {e}")))?;
                    incoming.stored.push(h);
                }
                continue;
            }
            Ok(Msg::BlobsDone) => {
                if let Some((h, _, _)) = &incoming.partial {
                    return Err(LinkError::Protocol(format!(
                        "upload of blob {h} ended early"
                    )));
                }
                let stored = std::mem::take(&mut incoming.stored);
                if let Some(up) = &up {
                    (up.forward)(stored.clone()).await.map_err(|e| {
                        LinkError::Protocol(format!("cannot pass the upload on now: {e}"))
                    })?;
                }
                debug!(peer = %peer.name, blobs = stored.len(), "upload stored");
                send_within(&tx, Msg::PutAck { hashes: stored }, within).await?;
                continue;
            }
            Ok(other) => return Err(super::unexpected(&other, "in a transfer")),
            Err(LinkError::Closed) => return Ok(()),
            Err(e) => return Err(e),
        };
        if hashes.len() > 4 * BATCH {
            return Err(LinkError::Protocol(format!(
                "{} blobs asked at once (at most {})",
                hashes.len(),
                4 * BATCH
            )));
        }
        let mut failed: Option<String> = None;
        if let Some(ensure) = &ensure {
            let lacking = store.missing(&hashes);
            // A miss is a blob this request had the parent send.
            let mut fetched = lacking.len();
            if !lacking.is_empty() {
                match ensure(lacking).await {
                    Ok(n) => fetched = n,
                    // The way up is down: end the connection, so the child
                    // retries later instead of taking the blobs as missing.
                    Err(e) if e.transient => {
                        return Err(LinkError::Protocol(format!(
                            "cannot fetch from the parent now: {}",
                            e.reason
                        )))
                    }
                    Err(e) => failed = Some(e.reason),
                }
            }
            crate::metrics::cache_lookups(
                hashes.len().saturating_sub(fetched) as u64,
                fetched as u64,
            );
        }
        for hash in hashes {
            let st = store.clone();
            let mut got = tokio::task::spawn_blocking(move || st.get(&hash)).await;
            if let (Ok(Err(PkgError::Corrupt { .. })), Some(ensure)) = (&got, &ensure) {
                // Damaged here (and now removed): fetch it again, then serve.
                warn!(%hash, "damaged blob in the cache; fetching it again");
                if let Err(e) = ensure(vec![hash]).await {
                    if e.transient {
                        return Err(LinkError::Protocol(format!(
                            "cannot fetch from the parent now: {}",
                            e.reason
                        )));
                    }
                } else {
                    let st = store.clone();
                    got = tokio::task::spawn_blocking(move || st.get(&hash)).await;
                }
            }
            let bytes = match got {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => {
                    let reason = match (&e, &failed) {
                        (PkgError::NotFound(_) | PkgError::MissingChunk(_), Some(f)) => f.clone(),
                        _ => e.to_string(),
                    };
                    warn!(%hash, %reason, peer = %peer.name, "cannot serve a blob");
                    send_within(&tx, Msg::BlobMissing { hash, reason }, within).await?;
                    continue;
                }
                Err(e) => {
                    send_within(
                        &tx,
                        Msg::BlobMissing {
                            hash,
                            reason: format!("store task: {e}"),
                        },
                        within,
                    )
                    .await?;
                    continue;
                }
            };
            let total = bytes.len() as u64;
            if bytes.is_empty() {
                send_within(
                    &tx,
                    Msg::Blob {
                        hash,
                        offset: 0,
                        total: 0,
                        data: Vec::new(),
                    },
                    within,
                )
                .await?;
            }
            for (i, piece) in bytes.chunks(BLOB_PIECE).enumerate() {
                send_within(
                    &tx,
                    Msg::Blob {
                        hash,
                        offset: (i * BLOB_PIECE) as u64,
                        total,
                        data: piece.to_vec(),
                    },
                    within,
                )
                .await?;
            }
            egress.add(&peer.name, total);
        }
        send_within(&tx, Msg::BlobsDone, within).await?;
        debug!(peer = %peer.name, "blobs sent");
    }
}

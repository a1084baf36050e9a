//! HQ's package depot: uploads from admins into the blob store and the
//! catalog of package versions (name@version -> manifest).
//!
//! The depot's blobs live in a [`crate::pkg::ChunkStore`], the catalog in
//! HQ's store. Never serves blobs itself (the transfer module does, from the
//! same store); relay caches are `syncs.rs`'s.

use super::{HqError, HqState};
use crate::pkg::{ChunkHash, EntryKind, Manifest};
use crate::proto::{now_ms, NodeName, PackageInfo};
use crate::store::{keys, StoreError};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use tracing::info;

/// Blobs being uploaded (pieces so far) and package adds under way.
#[derive(Default)]
pub(crate) struct Uploads {
    /// (admin session, blob) -> bytes so far: each admin's uploads are its
    /// own, and dropped when its session ends.
    partial: Mutex<HashMap<(u64, ChunkHash), Vec<u8>>>,
    /// Package adds in progress: a scheduled sync waits for them.
    pub adding: AtomicUsize,
}

pub(super) fn refused(msg: impl Into<String>) -> HqError {
    HqError::Refused(msg.into())
}

pub(super) fn pkg_key(name: &str, version: &str) -> Vec<u8> {
    let mut k = name.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(version.as_bytes());
    k
}

pub(super) fn cache_key(relay: &NodeName, name: &str, version: &str) -> Vec<u8> {
    let mut k = keys::name_prefix(relay);
    k.extend_from_slice(&pkg_key(name, version));
    k
}

/// Blobs of `hashes` the depot lacks.
pub(crate) fn missing(st: &HqState, hashes: &[ChunkHash]) -> Vec<ChunkHash> {
    st.depot.missing(hashes)
}

/// Takes one piece of an uploaded blob; stores the blob when it is whole.
pub(crate) async fn upload(
    st: &HqState,
    session: u64,
    hash: ChunkHash,
    offset: u64,
    total: u64,
    data: Vec<u8>,
) -> Result<bool, HqError> {
    if total > crate::link::transfer::MAX_BLOB {
        return Err(refused(format!(
            "blob {hash} of {total} bytes is over the {}-byte limit",
            crate::link::transfer::MAX_BLOB
        )));
    }
    st.uploads.adding.fetch_add(1, Ordering::SeqCst);
    let _done = Guard(&st.uploads.adding);
    let whole = {
        let mut p = st.uploads.partial.lock().unwrap_or_else(|p| p.into_inner());
        let buf = p.entry((session, hash)).or_default();
        if offset == 0 {
            buf.clear();
        }
        if offset != buf.len() as u64 || offset + data.len() as u64 > total {
            let have = buf.len();
            p.remove(&(session, hash));
            return Err(refused(format!(
                "blob {hash}: piece at {offset} does not follow the {have} bytes received"
            )));
        }
        buf.extend_from_slice(&data);
        if buf.len() as u64 == total {
            p.remove(&(session, hash))
        } else {
            None
        }
    };
    let Some(bytes) = whole else {
        return Ok(false);
    };
    let depot = st.depot.clone();
    tokio::task::spawn_blocking(move || depot.put(&hash, &bytes))
        .await
        .map_err(|e| refused(format!("store task: {e}")))?
        .map_err(|e| refused(format!("cannot store blob {hash}: {e}")))?;
    Ok(true)
}

impl Uploads {
    /// Drops what an admin session left half uploaded.
    pub(crate) fn forget(&self, session: u64) {
        self.partial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(s, _), _| *s != session);
    }
}

struct Guard<'a>(&'a AtomicUsize);
impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn info_of(m: &Manifest, id: ChunkHash, new_bytes: u64, entries: bool) -> PackageInfo {
    let chunks = m.chunks();
    PackageInfo {
        name: m.name.clone(),
        version: m.version.clone(),
        manifest: id,
        files: m
            .entries
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::File { .. }))
            .count() as u64,
        size: m.total_size(),
        chunks: chunks.len() as u64,
        install: m.install.clone(),
        remove: m.remove.clone(),
        added_ms: now_ms(),
        new_bytes,
        entries: if entries {
            m.entries
                .iter()
                .map(|e| match &e.kind {
                    EntryKind::Dir { mode } => format!("d {mode:o} {}/", e.path),
                    EntryKind::File { mode, size, .. } => {
                        format!("f {mode:o} {} ({size} bytes)", e.path)
                    }
                    EntryKind::Symlink { target } => format!("l {} -> {target}", e.path),
                })
                .collect()
        } else {
            Vec::new()
        },
        bundle: false,
    }
}

/// Adds the package whose manifest and chunks are in the depot (a bundle:
/// left out of syncs unless asked for).
pub(crate) async fn add(st: &HqState, id: ChunkHash, bundle: bool) -> Result<PackageInfo, HqError> {
    st.uploads.adding.fetch_add(1, Ordering::SeqCst);
    let _done = Guard(&st.uploads.adding);
    let depot = st.depot.clone();
    let m = tokio::task::spawn_blocking(move || depot.get_manifest(&id))
        .await
        .map_err(|e| refused(format!("store task: {e}")))?
        .map_err(|e| refused(format!("manifest {id}: {e}")))?;
    let hashes: Vec<ChunkHash> = m.chunks().iter().map(|c| c.hash).collect();
    let lacking = st.depot.missing(&hashes);
    if let Some(h) = lacking.first() {
        return Err(refused(format!(
            "package {}@{}: {} of its chunks are not in the depot (first: {h}); upload them first",
            m.name,
            m.version,
            lacking.len()
        )));
    }
    let k = pkg_key(&m.name, &m.version);
    if let Some(old) = st.packages.get::<PackageInfo>(&k)? {
        if old.manifest == id {
            return Ok(old);
        }
        return Err(refused(format!(
            "package {}@{} already exists with other content (manifest {}); give it a new version",
            m.name,
            m.version,
            old.manifest.short()
        )));
    }
    let info = PackageInfo {
        bundle,
        ..info_of(&m, id, 0, false)
    };
    st.packages.put(&k, &info)?;
    st.store.durable().await?;
    info!(package = %m.name, version = %m.version, manifest = %id.short(), "package added");
    Ok(info)
}

/// Every package version, by name then age.
pub(crate) fn list(st: &HqState) -> Result<Vec<PackageInfo>, HqError> {
    let mut v: Vec<PackageInfo> = st
        .packages
        .scan::<PackageInfo>(b"")
        .map(|r| r.map(|(_, p)| p))
        .collect::<Result<_, StoreError>>()?;
    v.sort_by(|a, b| a.name.cmp(&b.name).then(a.added_ms.cmp(&b.added_ms)));
    Ok(v)
}

/// The newest version of each package (the one added last).
pub(super) fn newest(st: &HqState) -> Result<BTreeMap<String, PackageInfo>, HqError> {
    let mut out = BTreeMap::new();
    for p in list(st)? {
        out.insert(p.name.clone(), p);
    }
    Ok(out)
}

/// One version (the newest when `version` is `None`).
pub(crate) fn find(
    st: &HqState,
    name: &str,
    version: Option<&str>,
) -> Result<PackageInfo, HqError> {
    let found = match version {
        Some(v) => st.packages.get::<PackageInfo>(&pkg_key(name, v))?,
        None => newest(st)?.remove(name),
    };
    found.ok_or_else(|| match version {
        Some(v) => refused(format!(
            "no package {name}@{v} in the depot (see `hq package list`)"
        )),
        None => refused(format!(
            "no package named {name} in the depot (see `hq package list`)"
        )),
    })
}

/// One version with its entries.
pub(crate) async fn show(
    st: &HqState,
    name: &str,
    version: Option<&str>,
) -> Result<PackageInfo, HqError> {
    let p = find(st, name, version)?;
    let depot = st.depot.clone();
    let id = p.manifest;
    let m = tokio::task::spawn_blocking(move || depot.get_manifest(&id))
        .await
        .map_err(|e| refused(format!("store task: {e}")))?
        .map_err(|e| refused(format!("manifest {id}: {e}")))?;
    Ok(PackageInfo {
        entries: info_of(&m, id, 0, true).entries,
        ..p
    })
}

/// Checks an install job's package against the catalog.
pub(crate) fn check_install(st: &HqState, spec: &crate::proto::InstallSpec) -> Result<(), HqError> {
    let p = find(st, &spec.name, Some(&spec.version))?;
    if p.manifest != spec.manifest {
        return Err(refused(format!(
            "package {}@{} has manifest {}, not {}",
            spec.name,
            spec.version,
            p.manifest.short(),
            spec.manifest.short()
        )));
    }
    Ok(())
}

//! A sync leaf on an agent: install the packages it names (in order),
//! remove the extras it names, write the collection's files under the
//! agent's `--root` (each atomically: a temporary file beside it, fsynced,
//! renamed; with the master's mode), then audit the synced objects again.
//! The leaf succeeds only if none of them still differs: success means the
//! drift is gone, not that a step returned.
//!
//! Every path goes through `audit::resolve`, so nothing is written or
//! deleted outside the root (no `..`, no symlink out). The collection's
//! package is staged in the agent's own directories and never enters the
//! inventory.

use super::audit::{collect, resolve, AuditError};
use super::install::{self, PackageError};
use super::runlog::{self, RunRecord};
use super::{inventory, AgentState};
use crate::pkg::{EntryKind, Manifest};
use crate::proto::audit::{AuditOutcome, ObjectId, ObjectValue, Selection};
use crate::proto::sync::{Expect, SyncSpec};
use crate::proto::{LeafState, LeafUpdate, RemoveSpec};
use crate::store::StoreError;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Writes `from` (a staged file) to `seen` under `root` with `mode`:
/// temporary file in the same directory, fsync, rename, fsync of the
/// directory. Refuses a path that leaves the root.
pub fn write_file(root: &Path, seen: &str, from: &Path, mode: u32) -> Result<(), AuditError> {
    let dest = resolve(root, seen)?;
    let io = |err| AuditError::Io {
        path: seen.to_string(),
        err,
    };
    let dir = dest.parent().ok_or_else(|| AuditError::Escape {
        path: seen.to_string(),
        why: "no parent directory".into(),
    })?;
    std::fs::create_dir_all(dir).map_err(io)?;
    // The directory may have been made just now: check it again.
    let again = resolve(root, seen)?;
    if again != dest {
        return Err(AuditError::Escape {
            path: seen.to_string(),
            why: "the path changed while it was being written".into(),
        });
    }
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Unique per writer: the agents of a swarm may share one root.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(
        ".{name}.relaytree-sync.{}.{n}.tmp",
        std::process::id()
    ));
    let res = (|| {
        let mut src = std::fs::File::open(from)?;
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        std::io::copy(&mut src, &mut out)?;
        out.flush()?;
        out.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
        out.sync_all()?;
        std::fs::rename(&tmp, &dest)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.map_err(io)
}

/// Deletes `seen` under `root` (gone already is fine).
pub fn delete_file(root: &Path, seen: &str) -> Result<(), AuditError> {
    let dest = resolve(root, seen)?;
    match std::fs::remove_file(&dest) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(AuditError::Io {
            path: seen.to_string(),
            err,
        }),
    }
}

/// The synced objects that still differ from what the sync expects, as
/// `object (master value, now value)`. Pure.
pub fn still_differing(expect: &[Expect], now: &[crate::proto::audit::Object]) -> Vec<String> {
    expect
        .iter()
        .filter_map(|e| {
            let found = now.iter().find(|o| o.id == e.object).map(|o| &o.value);
            let same = match (&e.value, found) {
                (None, None) => true,
                (Some(a), Some(b)) => a == b,
                _ => false,
            };
            (!same).then(|| {
                let show = |v: Option<&ObjectValue>| {
                    v.map_or("absent".to_string(), crate::proto::audit::show)
                };
                format!(
                    "{} (master {}, now {})",
                    e.object,
                    show(e.value.as_ref()),
                    show(found)
                )
            })
        })
        .collect()
}

/// What to collect to audit `expect` again: its files exactly, packages
/// and dpkg only if named.
fn selection_for(expect: &[Expect]) -> Selection {
    let mut s = Selection::default();
    for e in expect {
        match &e.object {
            ObjectId::Package(_) => s.packages = true,
            ObjectId::Dpkg(_) => s.dpkg = true,
            ObjectId::File(p) => s.files.push(p.clone()),
        }
    }
    s
}

/// Stages the collection's package and writes its files under the root.
async fn write_files(st: &AgentState, rec: &RunRecord, spec: &SyncSpec) -> Result<(), String> {
    let tree = st
        .pkg
        .package(&spec.package.name)
        .join(format!("sync-j{}a{}", rec.job.0, rec.attempt.0));
    let manifest: Manifest =
        install::stage(st, &spec.package, &tree)
            .await
            .map_err(|e: PackageError| {
                format!(
                    "package {}@{}: {e}",
                    spec.package.name, spec.package.version
                )
            })?;
    let root = st.options.root.clone();
    let modes: Vec<(String, u32)> = manifest
        .entries
        .iter()
        .filter_map(|e| match &e.kind {
            EntryKind::File { mode, .. } => {
                let seen = format!("/{}", e.path);
                // The master's full mode where the order says it.
                let m = spec
                    .expect
                    .iter()
                    .find_map(|x| match (&x.object, &x.value) {
                        (ObjectId::File(p), Some(ObjectValue::File { mode, .. })) if *p == seen => {
                            Some(*mode)
                        }
                        _ => None,
                    })
                    .unwrap_or(*mode);
                Some((e.path.clone(), m))
            }
            _ => None,
        })
        .collect();
    let t = tree.clone();
    let res = tokio::task::spawn_blocking(move || {
        for (path, mode) in &modes {
            let seen = format!("/{path}");
            write_file(&root, &seen, &t.join(path), *mode).map_err(|e| e.to_string())?;
            info!(path = %seen, mode = %crate::proto::audit::show_mode(*mode), "file written");
        }
        Ok::<(), String>(())
    })
    .await
    .unwrap_or_else(|e| Err(format!("sync task: {e}")));
    let t = tree.clone();
    let pkg_dir = st.pkg.package(&spec.package.name);
    let _ = tokio::task::spawn_blocking(move || {
        if let Err(e) = inventory::remove_tree(&t) {
            warn!(dir = %t.display(), error = %e, "cannot remove a staged sync package");
        }
        let _ = std::fs::remove_dir(pkg_dir);
    })
    .await;
    res
}

/// Applies every step; `Err` is the leaf's failing update.
async fn apply(
    st: &AgentState,
    rec: &mut RunRecord,
    spec: &SyncSpec,
    cancel: &CancellationToken,
) -> Result<Result<(), LeafUpdate>, StoreError> {
    let failed = |rec: &RunRecord, why: String| {
        let mut u = runlog::update(st, rec, LeafState::Failed);
        u.reason = Some(format!("sync: {why}"));
        u
    };
    for i in &spec.installs {
        if let Err(u) = install::install_step(st, rec, i, cancel, false).await? {
            return Ok(Err(u));
        }
    }
    for name in &spec.removes {
        let r = RemoveSpec {
            name: name.clone(),
            timeout_ms: None,
        };
        if let Err(u) = install::remove_step(st, rec, &r, cancel, false).await? {
            return Ok(Err(u));
        }
    }
    if cancel.is_cancelled() {
        return Ok(Err(runlog::update(st, rec, LeafState::Canceled)));
    }
    if let Err(e) = write_files(st, rec, spec).await {
        return Ok(Err(failed(rec, e)));
    }
    let root = st.options.root.clone();
    let deletes = spec.deletes.clone();
    let deleted = tokio::task::spawn_blocking(move || {
        for p in &deletes {
            delete_file(&root, p).map_err(|e| e.to_string())?;
        }
        Ok::<(), String>(())
    })
    .await
    .unwrap_or_else(|e| Err(format!("sync task: {e}")));
    if let Err(e) = deleted {
        return Ok(Err(failed(rec, e)));
    }
    Ok(Ok(()))
}

/// Audits the synced objects again: the leaf's update.
async fn check(st: &AgentState, rec: &RunRecord, spec: &SyncSpec) -> LeafUpdate {
    let pkgs = super::audit::inventory_pairs(st).map_err(|e| e.to_string());
    let root = st.options.root.clone();
    let select = selection_for(&spec.expect);
    let now = tokio::task::spawn_blocking(move || {
        collect(&root, &select, &pkgs?, None, false)
            .map(|(o, _)| o)
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(format!("audit task: {e}")));
    match now {
        Ok(now) => {
            let left = still_differing(&spec.expect, &now);
            if left.is_empty() {
                info!(
                    objects = spec.expect.len(),
                    "sync checked: no difference left"
                );
                let mut u = runlog::update(st, rec, LeafState::Succeeded);
                u.audit = Some(AuditOutcome::Synced);
                u
            } else {
                warn!(left = ?left, "sync checked: still differs");
                let mut u = runlog::update(st, rec, LeafState::Failed);
                u.reason = Some(format!(
                    "sync: audited again, still differs: {}",
                    left.join("; ")
                ));
                u
            }
        }
        Err(e) => {
            let mut u = runlog::update(st, rec, LeafState::Failed);
            u.reason = Some(format!("sync: cannot audit again: {e}"));
            u
        }
    }
}

/// Carries out a sync whose start is already on disk: apply, audit again,
/// record the result (durable on return).
pub(crate) async fn run_sync(
    st: &AgentState,
    rec: &mut RunRecord,
    spec: &SyncSpec,
    cancel: &CancellationToken,
) -> Result<(), StoreError> {
    let u = match apply(st, rec, spec, cancel).await? {
        Ok(()) => check(st, rec, spec).await,
        Err(u) => u,
    };
    if let Some(r) = &u.reason {
        warn!(reason = %r, "sync failed");
    }
    super::run::settle(st, rec, u)?;
    st.store.durable().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pkg::ChunkHash;
    use crate::proto::audit::Object;

    fn file(p: &str, c: &str, mode: u32) -> Object {
        Object {
            id: ObjectId::File(p.into()),
            value: ObjectValue::File {
                hash: ChunkHash::of(c.as_bytes()),
                mode,
            },
        }
    }

    #[test]
    fn what_still_differs() {
        let e = |o: &Object| Expect {
            object: o.id.clone(),
            value: Some(o.value.clone()),
        };
        let a = file("/etc/a", "x", 0o644);
        let gone = Expect {
            object: ObjectId::File("/etc/old".into()),
            value: None,
        };
        assert!(still_differing(&[e(&a), gone.clone()], std::slice::from_ref(&a)).is_empty());
        let left = still_differing(&[e(&a)], &[file("/etc/a", "x", 0o600)]);
        assert_eq!(left.len(), 1);
        assert!(left[0].starts_with("file:/etc/a (master"), "{left:?}");
        assert_eq!(still_differing(&[e(&a)], &[]).len(), 1);
        assert_eq!(
            still_differing(&[gone], &[file("/etc/old", "y", 0o644)]).len(),
            1
        );
    }

    #[test]
    fn files_are_written_under_the_root_only() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let src = root.path().join("staged");
        std::fs::write(&src, b"new").unwrap();
        write_file(root.path(), "/etc/app/a.conf", &src, 0o640).unwrap();
        let got = root.path().join("etc/app/a.conf");
        assert_eq!(std::fs::read(&got).unwrap(), b"new");
        assert_eq!(
            std::fs::metadata(&got).unwrap().permissions().mode() & 0o7777,
            0o640
        );
        // A symlink out of the root, absolute or climbing: refused.
        std::os::unix::fs::symlink(outside.path(), root.path().join("out")).unwrap();
        std::os::unix::fs::symlink("../../..", root.path().join("etc/up")).unwrap();
        for p in ["/out/x.conf", "/etc/up/x.conf", "/etc/../../x"] {
            let e = write_file(root.path(), p, &src, 0o644).unwrap_err();
            assert!(e.to_string().contains("escapes the root"), "{p}: {e}");
        }
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        delete_file(root.path(), "/etc/app/a.conf").unwrap();
        assert!(!got.exists());
        assert!(delete_file(root.path(), "/out/x.conf").is_err());
    }
}

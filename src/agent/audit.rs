//! Audits and snapshots on an agent: fetching the master's object list when
//! the signed order names it by hash (from the relay, once per process, kept
//! in the agent's chunk store and in memory), collecting this client's
//! objects under its `--root` (relaytree packages from the inventory, files
//! under globs, Debian packages through `dpkg-query`), comparing them with
//! the master's (`proto::audit::compare`), and uploading a snapshot's file
//! content up the tree (`link::transfer::push`).
//!
//! Every path is taken under the root and never leaves it: `..` parts are
//! refused, absolute symlinks and symlinks that climb out of the root are
//! refused and reported (the leaf fails naming the path), never followed.
//! Reads only; never writes outside its own chunk store.

use super::runlog::{self, RunRecord};
use super::{install, inventory, AgentState};
use crate::pkg::{ChunkHash, ChunkStore, PkgError};
use crate::proto::audit::{
    self, AuditOutcome, AuditSpec, Object, ObjectId, ObjectValue, ObjectsError, ObjectsRef,
    Selection, SnapshotFile, SnapshotSpec, SnapshotUpload,
};
use crate::proto::LeafState;
use std::collections::{HashMap, VecDeque};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tracing::{info, warn};

/// An audit or snapshot could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A path would leave the agent's root.
    #[error("refused: {path} escapes the root ({why})")]
    Escape {
        /// The path as seen under the root.
        path: String,
        /// How.
        why: String,
    },
    /// Reading a file or directory failed.
    #[error("cannot read {path}: {err}")]
    Io {
        /// The path as seen under the root.
        path: String,
        /// The error.
        err: std::io::Error,
    },
    /// `dpkg-query` failed.
    #[error("dpkg-query: {0}")]
    Dpkg(String),
    /// A glob matched nothing on the master (snapshots only).
    #[error("file glob {0} matches nothing on this client")]
    NoMatch(String),
    /// Chunking or storing content.
    #[error(transparent)]
    Pkg(#[from] PkgError),
    /// The agent's store.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Uploading content.
    #[error("upload: {0}")]
    Upload(String),
}

/// Symlinks followed while resolving one path, at most.
const MAX_HOPS: usize = 40;

/// Resolves `path` (absolute, as seen under the root) to a real path under
/// `root`, following symlinks only while they stay inside the root. Refused:
/// `..` in `path`, an absolute symlink, a symlink climbing above the root,
/// more than [`MAX_HOPS`] links. A part that does not exist ends the walk
/// (the result names a path that does not exist, under the root).
pub fn resolve(root: &Path, path: &str) -> Result<PathBuf, AuditError> {
    let escape = |why: String| AuditError::Escape {
        path: path.to_string(),
        why,
    };
    if !path.starts_with('/') {
        return Err(escape("not an absolute path".into()));
    }
    let mut todo: VecDeque<String> = VecDeque::new();
    for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if part == ".." {
            return Err(escape("a .. part".into()));
        }
        todo.push_back(part.to_string());
    }
    let mut cur: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(part) = todo.pop_front() {
        if part == "." {
            continue;
        }
        if part == ".." {
            if cur.pop().is_none() {
                return Err(escape("a symlink climbs above the root".into()));
            }
            continue;
        }
        let here: PathBuf = cur
            .iter()
            .fold(root.to_path_buf(), |p, c| p.join(c))
            .join(&part);
        match std::fs::symlink_metadata(&here) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_HOPS {
                    return Err(escape("too many symlinks".into()));
                }
                let target = std::fs::read_link(&here).map_err(|err| AuditError::Io {
                    path: path.to_string(),
                    err,
                })?;
                if target.is_absolute() {
                    return Err(escape(format!(
                        "absolute symlink /{} -> {}",
                        cur.iter()
                            .chain([&part])
                            .cloned()
                            .collect::<Vec<_>>()
                            .join("/"),
                        target.display()
                    )));
                }
                let mut parts: Vec<String> = target
                    .to_string_lossy()
                    .split('/')
                    .filter(|p| !p.is_empty())
                    .map(String::from)
                    .collect();
                while let Some(p) = parts.pop() {
                    todo.push_front(p);
                }
            }
            Ok(_) => cur.push(part),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                cur.push(part);
                cur.extend(todo.drain(..).filter(|p| p != "."));
                if cur.iter().any(|p| p == "..") {
                    return Err(escape("a .. part after a missing one".into()));
                }
                break;
            }
            Err(err) => {
                return Err(AuditError::Io {
                    path: path.to_string(),
                    err,
                })
            }
        }
    }
    Ok(cur.iter().fold(root.to_path_buf(), |p, c| p.join(c)))
}

/// The files (as seen under the root) that `glob` matches, sorted. Walks
/// from the glob's base without following links; a symlink matched is
/// taken if it resolves inside the root, else refused.
fn files_matching(root: &Path, glob: &str) -> Result<Vec<String>, AuditError> {
    audit::check_glob(glob).map_err(|why| AuditError::Escape {
        path: glob.to_string(),
        why,
    })?;
    let base = audit::glob_base(glob);
    let real = resolve(root, &base)?;
    let mut out = Vec::new();
    if !real.exists() {
        return Ok(out);
    }
    for entry in walkdir::WalkDir::new(&real)
        .follow_links(false)
        .follow_root_links(false)
    {
        let entry = entry.map_err(|e| AuditError::Io {
            path: base.clone(),
            err: e.into(),
        })?;
        let rel = entry.path().strip_prefix(&real).unwrap_or(entry.path());
        let seen = if rel.as_os_str().is_empty() {
            base.clone()
        } else {
            format!("{}/{}", base.trim_end_matches('/'), rel.to_string_lossy())
        };
        let ft = entry.file_type();
        if (ft.is_file() || ft.is_symlink()) && audit::glob_match(glob, &seen) {
            out.push(seen);
        }
    }
    out.sort();
    Ok(out)
}

/// One file object: resolves `seen` under the root (refusing escapes) and
/// reads its content hash and mode; with `store`, also cuts it into chunks
/// stored there. `None` when it is not a regular file (a directory, or a
/// symlink to one).
fn file_object(
    root: &Path,
    seen: &str,
    store: Option<&ChunkStore>,
) -> Result<Option<(Object, Option<SnapshotFile>)>, AuditError> {
    let real = resolve(root, seen)?;
    let io = |err| AuditError::Io {
        path: seen.to_string(),
        err,
    };
    let meta = std::fs::symlink_metadata(&real).map_err(io)?;
    if !meta.is_file() {
        return Ok(None);
    }
    let mode = meta.permissions().mode() & 0o7777;
    let (hash, snap) = match store {
        Some(store) => {
            let (size, chunks, hash) = crate::pkg::chunk_file(&real, store)?;
            (
                hash,
                Some(SnapshotFile {
                    path: seen.to_string(),
                    size,
                    chunks,
                }),
            )
        }
        None => (crate::pkg::hash_file(&real)?, None),
    };
    Ok(Some((
        Object {
            id: ObjectId::File(seen.to_string()),
            value: ObjectValue::File { hash, mode },
        },
        snap,
    )))
}

/// The installed Debian packages under `root` (`dpkg-query` with
/// `--admindir=ROOT/var/lib/dpkg`). No dpkg database there: none.
pub fn dpkg_objects(root: &Path) -> Result<Vec<Object>, AuditError> {
    let admin = root.join("var/lib/dpkg");
    if !admin.join("status").exists() {
        return Ok(Vec::new());
    }
    let out = std::process::Command::new("dpkg-query")
        .arg(format!("--admindir={}", admin.display()))
        .arg("-W")
        .arg("-f=${db:Status-Abbrev}\t${Package}\t${Version}\n")
        .output()
        .map_err(|e| AuditError::Dpkg(format!("cannot run: {e}")))?;
    if !out.status.success() {
        return Err(AuditError::Dpkg(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(parse_dpkg(&String::from_utf8_lossy(&out.stdout)))
}

/// Parses `dpkg-query` lines `STATUS\tNAME\tVERSION`: installed (`ii`) only.
fn parse_dpkg(text: &str) -> Vec<Object> {
    let mut v: Vec<Object> = text
        .lines()
        .filter_map(|l| {
            let mut it = l.split('\t');
            let (status, name, version) = (it.next()?, it.next()?, it.next()?);
            (status.trim() == "ii" && !name.is_empty()).then(|| Object {
                id: ObjectId::Dpkg(name.to_string()),
                value: ObjectValue::Version(version.to_string()),
            })
        })
        .collect();
    v.sort_by(|a, b| a.id.cmp(&b.id));
    v
}

/// Everything `select` asks for, read from `root` and the agent's inventory
/// entries. With `store`, file content is cut into chunks kept there and
/// listed (a snapshot); with `require_match`, a glob matching nothing is an
/// error (a snapshot's master must have what it is asked for).
pub fn collect(
    root: &Path,
    select: &Selection,
    packages: &[(String, String)],
    store: Option<&ChunkStore>,
    require_match: bool,
) -> Result<(Vec<Object>, Vec<SnapshotFile>), AuditError> {
    let mut objects = Vec::new();
    let mut files = Vec::new();
    if select.packages {
        for (name, version) in packages {
            objects.push(Object {
                id: ObjectId::Package(name.clone()),
                value: ObjectValue::Version(version.clone()),
            });
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for glob in &select.files {
        let matched = files_matching(root, glob)?;
        let mut any = false;
        for path in matched {
            if !seen.insert(path.clone()) {
                any = true;
                continue;
            }
            if let Some((o, f)) = file_object(root, &path, store)? {
                any = true;
                objects.push(o);
                files.extend(f);
            }
        }
        if require_match && !any {
            return Err(AuditError::NoMatch(glob.clone()));
        }
    }
    if select.dpkg {
        objects.extend(dpkg_objects(root)?);
    }
    objects.sort_by(|a, b| a.id.cmp(&b.id));
    Ok((objects, files))
}

pub(crate) fn inventory_pairs(st: &AgentState) -> Result<Vec<(String, String)>, AuditError> {
    Ok(inventory::list(&st.inventory, &st.me)?
        .into_iter()
        .map(|e| (e.name, e.version))
        .collect())
}

/// What one audit attempt collected, per root: the agents of a swarm
/// sharing a root (one machine in a test) read it once per attempt. Keyed by
/// the attempt, so a later audit (a sync's check) always reads afresh.
type CollectKey = (
    PathBuf,
    Selection,
    crate::proto::JobId,
    crate::proto::Attempt,
    Vec<(String, String)>,
);
type Collected = Arc<tokio::sync::OnceCell<Result<Arc<Vec<Object>>, String>>>;

fn collected(key: CollectKey) -> Collected {
    static CACHE: std::sync::OnceLock<std::sync::Mutex<HashMap<CollectKey, Collected>>> =
        std::sync::OnceLock::new();
    let mut m = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if m.len() > 16 && !m.contains_key(&key) {
        m.clear();
    }
    m.entry(key).or_default().clone()
}

/// Object lists this process holds, by address: every agent of a swarm
/// (one machine image in a test) asks its relay once per list, not once
/// each. Bounded: a few lists at a time.
type ListCell = Arc<tokio::sync::OnceCell<Arc<Vec<Object>>>>;

fn list_cell(hash: ChunkHash) -> ListCell {
    static LISTS: std::sync::OnceLock<std::sync::Mutex<HashMap<ChunkHash, ListCell>>> =
        std::sync::OnceLock::new();
    let mut m = LISTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if m.len() > 16 && !m.contains_key(&hash) {
        m.clear();
    }
    m.entry(hash).or_default().clone()
}

/// The objects of the list `r` names: from this process's memory, else
/// from the agent's chunk store, else fetched from the relay (once for the
/// whole process; a failed fetch is tried again by the next leaf). Every
/// byte is checked against the hash in HQ's signed order before use.
async fn objects_by_ref(st: &AgentState, r: &ObjectsRef) -> Result<Arc<Vec<Object>>, String> {
    if r.bytes > audit::MAX_OBJECT_LIST_BYTES {
        return Err(ObjectsError::TooBig(r.bytes).to_string());
    }
    let r = *r;
    list_cell(r.hash)
        .get_or_try_init(|| async move {
            let store = install::chunk_store(st).await.map_err(|e| e.to_string())?;
            let deadline = tokio::time::Instant::now() + install::FETCH_PATIENCE;
            let what = |_: &ChunkHash| "object list";
            let fetched = install::fetch_all(st, &store, &[r.hash], &what, deadline)
                .await
                .map_err(|e| match e {
                    install::PackageError::Verify { expected, got, .. } => {
                        ObjectsError::Mismatch { expected, got }.to_string()
                    }
                    other => format!("object list {}: {other}", r.hash.short()),
                })?;
            let blob = tokio::task::spawn_blocking(move || store.get(&r.hash))
                .await
                .map_err(|e| format!("object list task: {e}"))?
                .map_err(|e| format!("object list {}: {e}", r.hash.short()))?;
            let objects = audit::decode_objects(&r, &blob).map_err(|e| e.to_string())?;
            info!(list = %r.hash.short(), objects = objects.len(), fetched_bytes = fetched, "object list here");
            Ok::<_, String>(Arc::new(objects))
        })
        .await
        .cloned()
}

/// Carries out an audit: fetch the master's objects if the order names them
/// by reference, collect, compare, record the differences (none for a
/// compliant client). A list that is not the one HQ signed, or a failure to
/// collect (an escape, an unreadable file) makes the leaf `failed` with the
/// reason, nothing compared: the audit's `error`.
pub(crate) async fn run_audit(
    st: &AgentState,
    rec: &mut RunRecord,
    spec: &AuditSpec,
) -> Result<(), crate::store::StoreError> {
    let master = match &spec.objects_ref {
        None => Ok(Arc::new(spec.objects.clone())),
        Some(r) => objects_by_ref(st, r).await,
    };
    let res = match (master, inventory_pairs(st)) {
        (Err(e), _) => Err(e),
        (_, Err(e)) => Err(e.to_string()),
        (Ok(master), Ok(pkgs)) => {
            let root = st.options.root.clone();
            let select = spec.select.clone();
            let cell = collected((
                root.clone(),
                select.clone(),
                rec.job,
                rec.attempt,
                pkgs.clone(),
            ));
            cell.get_or_init(|| async move {
                tokio::task::spawn_blocking(move || {
                    collect(&root, &select, &pkgs, None, false)
                        .map(|(mine, _)| Arc::new(mine))
                        .map_err(|e| e.to_string())
                })
                .await
                .unwrap_or_else(|e| Err(format!("audit task: {e}")))
            })
            .await
            .clone()
            .map(|mine| audit::compare(&master, &mine))
        }
    };
    let res = res.and_then(|d| {
        let n = audit::encoded_len(&d);
        if n > audit::MAX_AUDIT_BYTES {
            Err(format!(
                "{} differences take {n} bytes, over the {} a result may carry: narrow the audit (--files)",
                d.len(),
                audit::MAX_AUDIT_BYTES
            ))
        } else {
            Ok(d)
        }
    });
    let u = match res {
        Ok(d) => {
            info!(differences = d.len(), "audit done");
            let mut u = runlog::update(st, rec, LeafState::Succeeded);
            if !d.is_empty() {
                u.audit = Some(AuditOutcome::Differences(d));
            }
            u
        }
        Err(e) => {
            warn!(error = %e, "audit failed");
            let mut u = runlog::update(st, rec, LeafState::Failed);
            u.reason = Some(e.to_string());
            u
        }
    };
    super::run::settle(st, rec, u)?;
    st.store.durable().await
}

/// Carries out a snapshot: collect with content (chunks into the agent's own
/// chunk store), push the chunks HQ's depot lacks up the tree, then report
/// the objects and file layout. A cut upload fails the leaf; a rerun asks
/// again which chunks are lacking, so nothing is sent twice.
pub(crate) async fn run_snapshot(
    st: &AgentState,
    rec: &mut RunRecord,
    spec: &SnapshotSpec,
    store: Arc<ChunkStore>,
) -> Result<(), crate::store::StoreError> {
    let root = st.options.root.clone();
    let select = spec.select.clone();
    let pkgs = inventory_pairs(st);
    let s2 = store.clone();
    let collected = tokio::task::spawn_blocking(move || {
        let pkgs = pkgs?;
        collect(&root, &select, &pkgs, Some(&s2), true)
    })
    .await
    .unwrap_or_else(|e| Err(AuditError::Upload(format!("snapshot task: {e}"))));
    let collected = collected.and_then(|(objects, files)| {
        let n = audit::encoded_len(&(&objects, &files));
        if n > audit::MAX_AUDIT_BYTES {
            return Err(AuditError::Upload(format!(
                "{} objects and {} files take {n} bytes, over the {} a snapshot may report: narrow --files",
                objects.len(),
                files.len(),
                audit::MAX_AUDIT_BYTES
            )));
        }
        Ok((objects, files))
    });
    let res = match collected {
        Ok((objects, files)) => {
            let hashes: Vec<_> = files
                .iter()
                .flat_map(|f| f.chunks.iter().map(|c| c.hash))
                .collect();
            let mut sent = 0u64;
            match crate::link::transfer::push(&st.transfer, &store, &hashes, &mut sent).await {
                Ok(()) => {
                    info!(files = files.len(), bytes_sent = sent, "snapshot uploaded");
                    Ok(SnapshotUpload {
                        name: spec.name.clone(),
                        objects,
                        files,
                    })
                }
                Err(e) => Err(AuditError::Upload(format!(
                    "{e} (after {sent} bytes; a rerun resumes)"
                ))),
            }
        }
        Err(e) => Err(e),
    };
    let u = match res {
        Ok(up) => {
            let mut u = runlog::update(st, rec, LeafState::Succeeded);
            u.audit = Some(AuditOutcome::Snapshot(up));
            u
        }
        Err(e) => {
            warn!(error = %e, "snapshot failed");
            let mut u = runlog::update(st, rec, LeafState::Failed);
            u.reason = Some(e.to_string());
            u
        }
    };
    super::run::settle(st, rec, u)?;
    st.store.durable().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn root() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc/app")).unwrap();
        std::fs::write(d.path().join("etc/app/a.conf"), "a").unwrap();
        std::fs::write(d.path().join("etc/app/b.conf"), "b").unwrap();
        d
    }

    #[test]
    fn paths_stay_under_the_root() {
        let d = root();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        let r = d.path();
        assert_eq!(
            resolve(r, "/etc/app/a.conf").unwrap(),
            r.join("etc/app/a.conf")
        );
        // A relative symlink inside the root is followed.
        symlink("a.conf", r.join("etc/app/link.conf")).unwrap();
        assert_eq!(
            resolve(r, "/etc/app/link.conf").unwrap(),
            r.join("etc/app/a.conf")
        );
        symlink("../app/b.conf", r.join("etc/app/up.conf")).unwrap();
        assert_eq!(
            resolve(r, "/etc/app/up.conf").unwrap(),
            r.join("etc/app/b.conf")
        );
        // Escapes are refused.
        let refused = |p: &str| matches!(resolve(r, p), Err(AuditError::Escape { .. }));
        assert!(refused("/etc/../../secret"), "..");
        symlink(outside.path().join("secret"), r.join("etc/app/abs.conf")).unwrap();
        assert!(refused("/etc/app/abs.conf"), "absolute symlink");
        symlink("../../../secret", r.join("etc/app/out.conf")).unwrap();
        assert!(refused("/etc/app/out.conf"), "relative symlink out");
        symlink(outside.path(), r.join("etc/dir")).unwrap();
        assert!(refused("/etc/dir/secret"), "symlinked directory out");
        symlink("loop", r.join("etc/loop")).unwrap();
        assert!(refused("/etc/loop"), "loop");
        assert!(refused("etc/app/a.conf"), "relative");
    }

    #[test]
    fn collect_refuses_a_glob_reaching_out() {
        let d = root();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("x.conf"), "s").unwrap();
        symlink(
            outside.path().join("x.conf"),
            d.path().join("etc/app/x.conf"),
        )
        .unwrap();
        let sel = Selection {
            files: vec!["/etc/app/*.conf".into()],
            ..Default::default()
        };
        let e = collect(d.path(), &sel, &[], None, false).unwrap_err();
        assert!(e.to_string().contains("/etc/app/x.conf"), "{e}");
        assert!(e.to_string().contains("escapes the root"), "{e}");
    }

    #[test]
    fn collect_reads_files_packages_and_modes() {
        let d = root();
        std::fs::set_permissions(
            d.path().join("etc/app/b.conf"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let sel = Selection {
            files: vec!["/etc/app/*.conf".into()],
            packages: true,
            dpkg: false,
        };
        let (objs, _) = collect(
            d.path(),
            &sel,
            &[("tool".into(), "1.0".into())],
            None,
            false,
        )
        .unwrap();
        let ids: Vec<String> = objs.iter().map(|o| o.id.to_string()).collect();
        assert_eq!(
            ids,
            [
                "package:tool",
                "file:/etc/app/a.conf",
                "file:/etc/app/b.conf"
            ]
        );
        assert_eq!(
            objs[2].value,
            ObjectValue::File {
                hash: crate::pkg::ChunkHash::of(b"b"),
                mode: 0o600
            }
        );
        let none = Selection {
            files: vec!["/etc/nope/*".into()],
            ..Default::default()
        };
        assert!(collect(d.path(), &none, &[], None, false)
            .unwrap()
            .0
            .is_empty());
        assert!(matches!(
            collect(d.path(), &none, &[], None, true),
            Err(AuditError::NoMatch(_))
        ));
    }

    #[test]
    fn snapshot_collection_chunks_content() {
        let d = root();
        let store = ChunkStore::open(d.path().join("store")).unwrap();
        let sel = Selection {
            files: vec!["/etc/app/a.conf".into()],
            ..Default::default()
        };
        let (_, files) = collect(d.path(), &sel, &[], Some(&store), true).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].size, 1);
        assert!(store.has(&files[0].chunks[0].hash));
    }

    #[test]
    fn dpkg_lines() {
        let v = parse_dpkg("ii \thello\t2.10-3\nrc \tgone\t1.0\nii \tzsh\t5.9\n");
        let ids: Vec<String> = v.iter().map(|o| o.id.to_string()).collect();
        assert_eq!(ids, ["dpkg:hello", "dpkg:zsh"]);
    }
}

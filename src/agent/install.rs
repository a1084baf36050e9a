//! Installing and removing packages, once the attempt is recorded as started.
//!
//! Install: fetch the manifest HQ signed (by address) and then the chunks
//! the agent's chunk store lacks over a transfer connection to the relay
//! (retrying a broken link, asking each time only for what is still
//! missing), check the manifest is the signed package, unpack it into a
//! fresh `installed/NAME/VERSION-jJOBaATTEMPT`, run its install command
//! there, then record it in the inventory, queue the inventory report, and
//! only then the leaf's result; the older version's tree goes last. Any
//! failure removes the new tree and leaves earlier installs as they were.
//!
//! Remove: run the entry's remove command in its tree, then move the tree
//! aside, drop the entry, queue the report, record the result, delete it.
//!
//! Must not decide whether an attempt may run (`run.rs` and the run log do).

use super::exec::{self, ExecSpec};
use super::inventory::{self, InventoryEntry};
use super::run::{apply_outcome, base_env};
use super::runlog::{self, RunRecord};
use super::AgentState;
use crate::link::transfer::{self, TransferError};
use crate::link::Backoff;
use crate::pkg::{assemble, ChunkHash, ChunkStore, Manifest, PkgError, StageLimits};
use crate::proto::{now_ms, InstallSpec, LeafState, LeafUpdate, RemoveSpec};
use crate::store::StoreError;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How long an install keeps retrying a broken transfer link.
pub(crate) const FETCH_PATIENCE: Duration = Duration::from_secs(600);

/// Why a package could not be installed or removed (the leaf's reason,
/// after "package NAME@VERSION: ").
#[derive(Debug, thiserror::Error)]
pub(crate) enum PackageError {
    /// A blob arrived whose hash is not its address.
    #[error("{what} {} failed verification (expected {expected}, got {got})", .expected.short())]
    Verify {
        /// "manifest" or "chunk".
        what: &'static str,
        /// The address asked for.
        expected: ChunkHash,
        /// The hash of what arrived.
        got: ChunkHash,
    },
    /// The relay cannot provide a blob.
    #[error("the relay cannot send {what} {hash}: {reason}")]
    Missing {
        /// "manifest" or "chunk".
        what: &'static str,
        /// The blob.
        hash: ChunkHash,
        /// The relay's reason.
        reason: String,
    },
    /// The relay ended a transfer without a blob it was asked for.
    #[error("the relay did not send {0} chunk(s), e.g. {1}")]
    NotSent(usize, ChunkHash),
    /// Fetching failed for another reason (after retries if it was the link).
    #[error("cannot fetch from the relay: {0}")]
    Fetch(#[source] TransferError),
    /// The manifest blob is not a valid manifest.
    #[error("manifest {}: {source}", .hash.short())]
    Manifest {
        /// Its address.
        hash: ChunkHash,
        /// What is wrong.
        source: PkgError,
    },
    /// The manifest is valid but not the package the signed order names.
    #[error("the manifest is {got}, not the package the signed order names")]
    NotSigned {
        /// `name@version` in the manifest.
        got: String,
    },
    /// Unpacking failed (path escapes, sizes, disk full, a corrupt chunk).
    #[error("{}", describe_stage(.0))]
    Stage(PkgError),
    /// A local file operation failed.
    #[error("{what} {}: {source}", .path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A blocking task died.
    #[error("internal task failed: {0}")]
    Task(String),
    /// Not enough free disk for the package.
    #[error("not enough disk space on {}: {need} bytes needed (chunks to fetch and the unpacked tree, plus {DISK_MARGIN} spare), {free} free", .path.display())]
    NoSpace {
        /// Bytes needed.
        need: u64,
        /// Bytes free.
        free: u64,
        /// Where.
        path: PathBuf,
    },
}

/// Bytes kept free for the run log and the store when installing.
pub(crate) const DISK_MARGIN: u64 = 16 * 1024 * 1024;

/// Bytes available to this user on the filesystem of `path`.
fn free_bytes(path: &Path) -> Option<u64> {
    let v = nix::sys::statvfs::statvfs(path).ok()?;
    Some((v.blocks_available() as u64).saturating_mul(v.fragment_size() as u64))
}

fn describe_stage(e: &PkgError) -> String {
    match e {
        PkgError::BadPath { path, why } => {
            format!("entry '{path}' is refused ({why}): it would escape the staging directory")
        }
        other => format!("cannot unpack: {other}"),
    }
}

/// The agent's chunk store, opened on first use.
pub(crate) async fn chunk_store(st: &AgentState) -> Result<Arc<ChunkStore>, PackageError> {
    let dir = st.pkg.chunks();
    st.chunks
        .get_or_try_init(|| async {
            let d = dir.clone();
            blocking(move || ChunkStore::open(d))
                .await?
                .map(Arc::new)
                .map_err(PackageError::Stage)
        })
        .await
        .cloned()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PackageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| PackageError::Task(e.to_string()))
}

/// Fetches every blob of `hashes` the store lacks, retrying a broken link
/// until `deadline`; `what` names a blob in errors ("manifest", "chunk").
pub(crate) async fn fetch_all(
    st: &AgentState,
    store: &Arc<ChunkStore>,
    hashes: &[ChunkHash],
    what: &(dyn Fn(&ChunkHash) -> &'static str + Sync),
    deadline: Instant,
) -> Result<u64, PackageError> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut received = 0u64;
    loop {
        match transfer::fetch(&st.transfer, store, hashes, &mut received).await {
            Ok(()) => break,
            Err(e) if e.is_transient() => {
                let delay = backoff.next_delay();
                if Instant::now() + delay >= deadline {
                    return Err(PackageError::Fetch(e));
                }
                warn!(error = %e, retry_in = ?delay, "transfer broke; retrying for what is still missing");
                tokio::time::sleep(delay).await;
            }
            Err(TransferError::Pkg(PkgError::HashMismatch { expected, got })) => {
                return Err(PackageError::Verify {
                    what: what(&expected),
                    expected,
                    got,
                })
            }
            Err(TransferError::Missing { hash, reason }) => {
                return Err(PackageError::Missing {
                    what: what(&hash),
                    hash,
                    reason,
                })
            }
            Err(e) => return Err(PackageError::Fetch(e)),
        }
    }
    let missing = store.missing(hashes);
    if let Some(h) = missing.first() {
        return Err(PackageError::NotSent(missing.len(), *h));
    }
    Ok(received)
}

/// Fetches, checks and unpacks the package into `tree`; returns its manifest.
pub(crate) async fn stage(
    st: &AgentState,
    spec: &InstallSpec,
    tree: &Path,
) -> Result<Manifest, PackageError> {
    let store = chunk_store(st).await?;
    let deadline = Instant::now() + FETCH_PATIENCE;
    let manifest = spec.manifest;
    let what = move |h: &ChunkHash| if *h == manifest { "manifest" } else { "chunk" };
    let mut bytes = fetch_all(st, &store, &[spec.manifest], &what, deadline).await?;
    let (s, h) = (store.clone(), spec.manifest);
    let manifest = blocking(move || s.get_manifest(&h))
        .await?
        .map_err(|source| PackageError::Manifest { hash: h, source })?;
    if manifest.name != spec.name || manifest.version != spec.version {
        return Err(PackageError::NotSigned {
            got: manifest.label(),
        });
    }
    let limits = StageLimits::default();
    let need = manifest.total_size();
    if need > limits.max_bytes {
        return Err(PackageError::Stage(PkgError::TooBig {
            limit: limits.max_bytes,
            need,
        }));
    }
    let chunks: Vec<ChunkHash> = manifest.chunks().iter().map(|c| c.hash).collect();
    // Room for the chunks still to fetch and the unpacked tree, checked
    // before anything is written: a full disk fails this leaf alone, with
    // figures, instead of filling the disk the run log lives on.
    let lacking: u64 = manifest
        .chunks()
        .iter()
        .filter(|c| !store.has(&c.hash))
        .map(|c| u64::from(c.len))
        .sum();
    let want = lacking + need;
    if let Some(free) = free_bytes(store.dir()) {
        if want.saturating_add(DISK_MARGIN) > free {
            return Err(PackageError::NoSpace {
                need: want,
                free,
                path: store.dir().to_path_buf(),
            });
        }
    }
    bytes += fetch_all(st, &store, &chunks, &what, deadline).await?;
    info!(
        chunks = chunks.len(),
        fetched_bytes = bytes,
        "package blobs present"
    );
    let (m, t) = (manifest.clone(), tree.to_path_buf());
    let report = blocking(move || {
        if let Some(parent) = t.parent() {
            std::fs::create_dir_all(parent).map_err(|source| PackageError::Io {
                what: "cannot create",
                path: parent.to_path_buf(),
                source,
            })?;
        }
        assemble(&m, &store, &t, &limits).map_err(PackageError::Stage)
    })
    .await??;
    info!(files = report.files, bytes = report.bytes, dir = %tree.display(), "package unpacked");
    Ok(manifest)
}

/// The package a script belongs to, and the tree it runs in.
struct Package<'a> {
    name: &'a str,
    version: &'a str,
    tree: &'a Path,
}

impl<'a> Package<'a> {
    fn new(name: &'a str, version: &'a str, tree: &'a Path) -> Self {
        Package {
            name,
            version,
            tree,
        }
    }
}

/// The environment of an install or remove command.
fn package_env(st: &AgentState, rec: &RunRecord, pkg: &Package<'_>) -> Vec<(String, String)> {
    let mut env = base_env(st, rec);
    env.push(("RELAYTREE_PACKAGE".into(), pkg.name.into()));
    env.push(("RELAYTREE_PACKAGE_VERSION".into(), pkg.version.into()));
    env.push((
        "RELAYTREE_PACKAGE_DIR".into(),
        absolute(pkg.tree).to_string_lossy().into_owned(),
    ));
    env
}

/// `p` as an absolute path (against the current directory when relative,
/// as it is under a relative `--data-dir`): the script runs in another
/// directory, where a relative path means something else.
fn absolute(p: &Path) -> std::path::PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Runs `script`, the package's `what` ("install" or "remove") command,
/// with `/bin/sh -c` in its tree, stopped early by its timeout or a cancel
/// of its job; the update says how it ended.
async fn run_script(
    st: &AgentState,
    rec: &RunRecord,
    script: &str,
    what: &str,
    pkg: Package<'_>,
    timeout_ms: Option<u64>,
    cancel: &CancellationToken,
) -> LeafUpdate {
    let env = package_env(st, rec, &pkg);
    let prefix = format!("package {}@{}: {what} command ", pkg.name, pkg.version);
    let prefix = prefix.as_str();
    let tree = pkg.tree;
    let ctl = exec::Control {
        cancel: Some(cancel.clone()),
        on_spawn: None,
    };
    let res = exec::run_with(
        &ExecSpec {
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env,
            cwd: Some(tree.to_path_buf()),
            timeout: timeout_ms.map(Duration::from_millis),
            tail_bytes: st.options.tail_bytes,
            stream_tail_bytes: st.options.stream_tail_bytes,
            kill_grace: st.options.kill_grace,
        },
        ctl,
    )
    .await;
    let mut u = runlog::update(st, rec, LeafState::Failed);
    apply_outcome(&mut u, &res, timeout_ms, prefix);
    info!(state = u.state.as_str(), exit_code = ?u.exit_code, took = ?res.duration, "{prefix}finished");
    u
}

/// A failed leaf, its reason "package LABEL: WHY".
fn failed(
    st: &AgentState,
    rec: &RunRecord,
    label: &str,
    why: impl std::fmt::Display,
) -> LeafUpdate {
    let mut u = runlog::update(st, rec, LeafState::Failed);
    u.reason = Some(format!("package {label}: {why}"));
    u
}

/// Records a failed (or timed out) package attempt; durable on return.
async fn finish(st: &AgentState, rec: &mut RunRecord, u: LeafUpdate) -> Result<(), StoreError> {
    if let Some(r) = &u.reason {
        warn!(reason = %r, state = u.state.as_str(), "package attempt failed");
    }
    runlog::record(st, rec, u)?;
    st.store.durable().await
}

/// Records the failure a step came back with, if it did; durable on return.
async fn settle(
    st: &AgentState,
    rec: &mut RunRecord,
    step: Result<Result<(), LeafUpdate>, StoreError>,
) -> Result<(), StoreError> {
    match step? {
        Ok(()) => Ok(()),
        Err(u) => finish(st, rec, u).await,
    }
}

/// Carries out an install whose start is already on disk; `cancel` stops
/// its install command (as a cancel stops any command).
pub(crate) async fn install(
    st: &AgentState,
    rec: &mut RunRecord,
    spec: &InstallSpec,
    cancel: &CancellationToken,
) -> Result<(), StoreError> {
    let step = install_step(st, rec, spec, cancel, true).await;
    settle(st, rec, step).await
}

/// An install: with `record`, its success is the leaf's result (recorded
/// with the inventory, durable on return); without, it is one step of a
/// larger attempt (a sync): the inventory is committed and durable, and the
/// leaf is left to the caller. A failure comes back unrecorded.
pub(crate) async fn install_step(
    st: &AgentState,
    rec: &mut RunRecord,
    spec: &InstallSpec,
    cancel: &CancellationToken,
    record: bool,
) -> Result<Result<(), LeafUpdate>, StoreError> {
    let label = format!("{}@{}", spec.name, spec.version);
    let dir = inventory::install_dir_name(&spec.version, rec.job, rec.attempt);
    let tree = st.pkg.package(&spec.name).join(&dir);
    let discard = |t: PathBuf| async move {
        let p = t.clone();
        match blocking(move || inventory::remove_tree(&p)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(dir = %t.display(), error = %e, "cannot remove a failed install"),
            Err(e) => warn!(dir = %t.display(), error = %e, "cannot remove a failed install"),
        }
    };
    let manifest = match stage(st, spec, &tree).await {
        Ok(m) => m,
        Err(e) => {
            discard(tree.clone()).await;
            return Ok(Err(failed(st, rec, &label, e)));
        }
    };
    let mut done = runlog::update(st, rec, LeafState::Succeeded);
    if let Some(script) = &manifest.install {
        let pkg = Package::new(&spec.name, &spec.version, &tree);
        let u = run_script(st, rec, script, "install", pkg, spec.timeout_ms, cancel).await;
        if u.state != LeafState::Succeeded {
            discard(tree.clone()).await;
            return Ok(Err(u));
        }
        done = u;
    }
    // Commit: the inventory first, its report next, the leaf's result last.
    let old = {
        let _one_at_a_time = st.pkg_lock.lock().await;
        let old = inventory::get(&st.inventory, &st.me, &spec.name)?;
        let entry = InventoryEntry {
            name: spec.name.clone(),
            version: spec.version.clone(),
            manifest: spec.manifest,
            dir: dir.clone(),
            remove: manifest.remove.clone(),
            job: rec.job,
            attempt: rec.attempt,
            at_ms: now_ms(),
        };
        inventory::put(&st.inventory, &st.me, &entry)?;
        inventory::push_report(&st.inventory, &st.outbox, &st.me, &rec.relay)?;
        if record {
            runlog::record(st, rec, done)?;
        }
        st.store.durable().await?;
        old
    };
    info!(package = %label, dir = %tree.display(), "package installed");
    if let Some(old) = old.filter(|o| o.dir != dir) {
        let t = st.pkg.tree_of(&old);
        info!(package = %old.label(), dir = %t.display(), "removing the replaced version");
        discard(t).await;
    }
    Ok(Ok(()))
}

/// Carries out a removal whose start is already on disk; `cancel` stops
/// its remove command.
pub(crate) async fn remove(
    st: &AgentState,
    rec: &mut RunRecord,
    spec: &RemoveSpec,
    cancel: &CancellationToken,
) -> Result<(), StoreError> {
    let step = remove_step(st, rec, spec, cancel, true).await;
    settle(st, rec, step).await
}

/// A removal, recorded as the leaf's result with `record` (as
/// [`install_step`]).
pub(crate) async fn remove_step(
    st: &AgentState,
    rec: &mut RunRecord,
    spec: &RemoveSpec,
    cancel: &CancellationToken,
    record: bool,
) -> Result<Result<(), LeafUpdate>, StoreError> {
    let found = {
        let _look = st.pkg_lock.lock().await;
        inventory::get(&st.inventory, &st.me, &spec.name)?
    };
    let Some(entry) = found else {
        // Already as asked: a no-op that succeeds, and says so.
        let note = format!("package {} is not installed: nothing to remove", spec.name);
        info!("{note}");
        if !record {
            return Ok(Ok(()));
        }
        let mut u = runlog::update(st, rec, LeafState::Succeeded);
        u.exit_code = Some(0);
        u.reason = Some(note.clone());
        u.out = Some(crate::proto::LeafOutput {
            stdout_bytes: note.len() as u64 + 1,
            stdout: note + "\n",
            started_at_ms: u.at_ms,
            ..Default::default()
        });
        runlog::record(st, rec, u)?;
        return st.store.durable().await.map(Ok);
    };
    let label = entry.label();
    let tree = st.pkg.tree_of(&entry);
    let mut done = runlog::update(st, rec, LeafState::Succeeded);
    // The remove command runs without the package lock: a slow or hung one
    // holds up no other install or remove on this agent.
    if let Some(script) = &entry.remove {
        let pkg = Package::new(&entry.name, &entry.version, &tree);
        let u = run_script(st, rec, script, "remove", pkg, spec.timeout_ms, cancel).await;
        if u.state != LeafState::Succeeded {
            return Ok(Err(u));
        }
        done = u;
    }
    let _one_at_a_time = st.pkg_lock.lock().await;
    if inventory::get(&st.inventory, &st.me, &spec.name)?.as_ref() != Some(&entry) {
        let why = "changed by another job while its remove command ran; nothing removed";
        return Ok(Err(failed(st, rec, &label, why)));
    }
    // Aside first (atomic), so a failure here leaves everything in place.
    let trash = st
        .pkg
        .package(&entry.name)
        .join(inventory::trash_dir_name(rec.job, rec.attempt));
    if let Err(source) = std::fs::rename(&tree, &trash) {
        if source.kind() != std::io::ErrorKind::NotFound {
            let e = PackageError::Io {
                what: "cannot move aside",
                path: tree,
                source,
            };
            return Ok(Err(failed(st, rec, &label, e)));
        }
        warn!(dir = %tree.display(), "installed tree was already gone");
    }
    inventory::drop_entry(&st.inventory, &st.me, &entry.name)?;
    inventory::push_report(&st.inventory, &st.outbox, &st.me, &rec.relay)?;
    if record {
        runlog::record(st, rec, done)?;
    }
    st.store.durable().await?;
    info!(package = %label, "package removed");
    let t = trash.clone();
    match blocking(move || inventory::remove_tree(&t)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            warn!(dir = %trash.display(), error = %e, "cannot delete a removed package's tree (deleted at next start)")
        }
        Err(e) => {
            warn!(dir = %trash.display(), error = %e, "cannot delete a removed package's tree")
        }
    }
    let _ = std::fs::remove_dir(st.pkg.package(&entry.name));
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_package_dir_given_to_scripts_is_absolute() {
        let dir = tempfile::tempdir().unwrap();
        let st = crate::agent::test_state(dir.path());
        let rec = super::runlog::RunRecord {
            job: crate::proto::JobId(1),
            attempt: crate::proto::Attempt(1),
            action: crate::proto::Action::Ping,
            relay: crate::proto::NodeName::new("r1").unwrap(),
            state: super::runlog::RunState::Started,
            result: None,
            received_at_ms: 0,
            spawned: None,
        };
        // As under `--data-dir data`: the tree is relative to the agent's
        // directory, while the script runs in the tree itself.
        let pkg = Package::new("foo", "1", Path::new("data/packages/a1/foo/1"));
        let env = package_env(&st, &rec, &pkg);
        let got = env
            .iter()
            .find(|(k, _)| k == "RELAYTREE_PACKAGE_DIR")
            .map(|(_, v)| std::path::PathBuf::from(v))
            .unwrap();
        assert!(got.is_absolute(), "{}", got.display());
        assert!(got.ends_with("data/packages/a1/foo/1"), "{}", got.display());
        assert_eq!(
            got,
            std::env::current_dir()
                .unwrap()
                .join("data/packages/a1/foo/1")
        );
    }

    #[test]
    fn reasons_name_what_went_wrong() {
        let (a, b) = (ChunkHash::of(b"a"), ChunkHash::of(b"b"));
        let e = PackageError::Verify {
            what: "chunk",
            expected: a,
            got: b,
        };
        let s = e.to_string();
        assert!(
            s.starts_with(&format!("chunk {} failed verification", a.short())),
            "{s}"
        );
        assert!(s.contains(&a.to_hex()) && s.contains(&b.to_hex()), "{s}");
        let e = PackageError::Stage(PkgError::BadPath {
            path: "../x".into(),
            why: "'..' component".into(),
        });
        assert!(e.to_string().starts_with("entry '../x' is refused"), "{e}");
        let e = PackageError::NotSigned {
            got: "foo@3".into(),
        };
        assert!(e.to_string().contains("foo@3"), "{e}");
    }
}

/// Installs and removals carried out for real, without a network: the chunk
/// store is filled beforehand, so fetching has nothing to ask the relay for.
#[cfg(test)]
mod offline {
    use super::*;
    use crate::agent::runlog::RunState;
    use crate::proto::{Action, Attempt, Event, JobId, NodeName};

    fn state(dir: &Path) -> Arc<AgentState> {
        crate::agent::test_state(dir)
    }

    /// Builds package `version` of "foo" into the agent's chunk store.
    async fn build(st: &AgentState, src: &Path, version: &str, install: &str) -> InstallSpec {
        let store = chunk_store(st).await.unwrap();
        std::fs::create_dir_all(src).unwrap();
        std::fs::write(src.join("data.txt"), format!("version {version}\n")).unwrap();
        let (m, _) = crate::pkg::add_path(
            src,
            "foo",
            version,
            Some(install.into()),
            Some(
                "echo bye > \"$RELAYTREE_PACKAGE_DIR/../removed-$RELAYTREE_PACKAGE_VERSION\""
                    .into(),
            ),
            &store,
        )
        .unwrap();
        let manifest = store.put_manifest(&m).unwrap();
        InstallSpec {
            name: "foo".into(),
            version: version.into(),
            manifest,
            size: m.total_size(),
            timeout_ms: Some(10_000),
        }
    }

    fn rec(job: u64, action: Action) -> RunRecord {
        RunRecord {
            job: JobId(job),
            attempt: Attempt(1),
            action,
            relay: NodeName::new("r1").unwrap(),
            state: RunState::Started,
            result: None,
            received_at_ms: 0,
            spawned: None,
        }
    }

    /// The events queued so far, oldest first.
    fn events(st: &AgentState) -> Vec<Event> {
        st.outbox
            .read_after(0, 1000)
            .unwrap()
            .into_iter()
            .map(|(_, e)| e)
            .collect()
    }

    fn last_leaf(st: &AgentState) -> crate::proto::LeafUpdate {
        events(st)
            .into_iter()
            .rev()
            .find_map(|e| match e {
                Event::Leaf(u) => Some(u),
                _ => None,
            })
            .unwrap()
    }

    #[tokio::test]
    async fn a_cancel_stops_the_install_command_and_installs_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let st = state(tmp.path());
        let mark = tmp.path().join("mark");
        let script = format!(
            "trap 'echo term >> {m}; exit 0' TERM; sleep 30 & echo $! >> {m}; wait; echo end >> {m}",
            m = mark.display()
        );
        let v1 = build(&st, &tmp.path().join("src1"), "1", &script).await;
        let cancel = CancellationToken::new();
        let (c, m) = (cancel.clone(), mark.clone());
        tokio::spawn(async move {
            // Once the background sleep has exec'd (see exec.rs's tests).
            loop {
                let text = std::fs::read_to_string(&m).unwrap_or_default();
                if text
                    .lines()
                    .next()
                    .is_some_and(crate::agent::exec::tests::is_sleep)
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            c.cancel();
        });
        let mut r = rec(1, Action::Install(v1.clone()));
        install(&st, &mut r, &v1, &cancel).await.unwrap();
        let u = last_leaf(&st);
        assert_eq!(u.state, LeafState::Canceled, "{u:?}");
        let lines: Vec<String> = std::fs::read_to_string(&mark)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[1], "term");
        assert!(inventory::get(&st.inventory, &st.me, "foo")
            .unwrap()
            .is_none());
        let dir = inventory::install_dir_name("1", JobId(1), Attempt(1));
        assert!(
            !st.pkg.package("foo").join(dir).exists(),
            "tree left behind"
        );
    }

    #[tokio::test]
    async fn install_upgrade_fail_and_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let st = state(tmp.path());
        let v1 = build(&st, &tmp.path().join("src1"), "1", "echo \"$RELAYTREE_PACKAGE@$RELAYTREE_PACKAGE_VERSION j$RELAYTREE_JOB\" > installed.txt").await;
        let mut r = rec(1, Action::Install(v1.clone()));
        install(&st, &mut r, &v1, &CancellationToken::new())
            .await
            .unwrap();
        let u = last_leaf(&st);
        assert_eq!(u.state, LeafState::Succeeded, "{:?}", u.reason);
        assert_eq!(r.state, RunState::Finished);
        let e1 = inventory::get(&st.inventory, &st.me, "foo")
            .unwrap()
            .unwrap();
        let t1 = st.pkg.tree_of(&e1);
        assert_eq!(t1, st.pkg.package("foo").join("1-j1a1"));
        assert_eq!(
            std::fs::read_to_string(t1.join("installed.txt")).unwrap(),
            "foo@1 j1\n"
        );
        assert_eq!(
            std::fs::read_to_string(t1.join("data.txt")).unwrap(),
            "version 1\n"
        );
        // The inventory report comes before the leaf's result.
        let evs = events(&st);
        let n = evs.len();
        assert!(
            matches!(&evs[n - 2], Event::Inventory(i) if i.client == st.me && i.packages.len() == 1 && i.packages[0].version == "1")
        );
        assert!(matches!(&evs[n - 1], Event::Leaf(_)));

        // An upgrade replaces the old tree.
        let v2 = build(&st, &tmp.path().join("src2"), "2", "true").await;
        let mut r = rec(2, Action::Install(v2.clone()));
        install(&st, &mut r, &v2, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(last_leaf(&st).state, LeafState::Succeeded);
        let e2 = inventory::get(&st.inventory, &st.me, "foo")
            .unwrap()
            .unwrap();
        assert_eq!(e2.version, "2");
        assert!(st.pkg.tree_of(&e2).is_dir());
        assert!(!t1.exists(), "the replaced version's tree is deleted");

        // A failing install command leaves v2 as it was.
        let v3 = build(&st, &tmp.path().join("src3"), "3", "echo oops; exit 3").await;
        let mut r = rec(3, Action::Install(v3.clone()));
        install(&st, &mut r, &v3, &CancellationToken::new())
            .await
            .unwrap();
        let u = last_leaf(&st);
        assert_eq!(u.state, LeafState::Failed);
        assert_eq!(
            u.reason.as_deref(),
            Some("package foo@3: install command exited with code 3")
        );
        assert_eq!(u.output.as_deref(), Some("oops\n"));
        assert!(!st.pkg.package("foo").join("3-j3a1").exists());
        assert_eq!(
            inventory::get(&st.inventory, &st.me, "foo").unwrap(),
            Some(e2.clone())
        );

        // A manifest that is not the signed package is refused.
        let mut wrong = v2.clone();
        wrong.version = "9".into();
        let mut r = rec(4, Action::Install(wrong.clone()));
        install(&st, &mut r, &wrong, &CancellationToken::new())
            .await
            .unwrap();
        let u = last_leaf(&st);
        assert_eq!(u.state, LeafState::Failed);
        assert!(
            u.reason
                .as_deref()
                .unwrap_or("")
                .contains("not the package the signed order names"),
            "{:?}",
            u.reason
        );

        // Remove runs the remove command, then the tree and entry go.
        let rm = RemoveSpec {
            name: "foo".into(),
            timeout_ms: None,
        };
        let mut r = rec(5, Action::Remove(rm.clone()));
        remove(&st, &mut r, &rm, &CancellationToken::new())
            .await
            .unwrap();
        let u = last_leaf(&st);
        assert_eq!(u.state, LeafState::Succeeded, "{:?}", u.reason);
        assert!(st.pkg.package("foo").join("removed-2").is_file());
        assert!(!st.pkg.tree_of(&e2).exists());
        assert_eq!(inventory::get(&st.inventory, &st.me, "foo").unwrap(), None);
        let evs = events(&st);
        assert!(matches!(&evs[evs.len() - 2], Event::Inventory(i) if i.packages.is_empty()));

        // Removing it again: a no-op that succeeds, and says so.
        let mut r = rec(6, Action::Remove(rm.clone()));
        remove(&st, &mut r, &rm, &CancellationToken::new())
            .await
            .unwrap();
        let u = last_leaf(&st);
        assert_eq!(u.state, LeafState::Succeeded);
        assert_eq!(
            u.reason.as_deref(),
            Some("package foo is not installed: nothing to remove")
        );
        assert_eq!(
            u.out.map(|o| o.stdout).as_deref(),
            Some("package foo is not installed: nothing to remove\n")
        );
    }

    #[tokio::test]
    async fn a_corrupt_chunk_fails_the_install_and_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let st = state(tmp.path());
        let v1 = build(&st, &tmp.path().join("src1"), "1", "true").await;
        let store = chunk_store(&st).await.unwrap();
        let m = store.get_manifest(&v1.manifest).unwrap();
        let c = m.chunks()[0].hash;
        std::fs::write(store.path_of(&c), b"tampered").unwrap();
        let mut r = rec(1, Action::Install(v1.clone()));
        install(&st, &mut r, &v1, &CancellationToken::new())
            .await
            .unwrap();
        let u = last_leaf(&st);
        assert_eq!(u.state, LeafState::Failed);
        let why = u.reason.unwrap_or_default();
        assert!(
            why.starts_with("package foo@1: ") && why.contains(&c.to_hex()),
            "{why}"
        );
        assert!(!st.pkg.package("foo").join("1-j1a1").exists());
        assert!(inventory::list(&st.inventory, &st.me).unwrap().is_empty());
    }
}

//! Group commit: one background thread flushes sled, then fsyncs what the
//! flush wrote, on behalf of every waiter.
//!
//! sled 0.34's flush ends in `sync_file_range`, which writes the pages but
//! neither the file's metadata nor the disk's volatile cache, and sled never
//! fsyncs the blob files it writes for large values. So a round is: `flush`,
//! then `fdatasync` of the log file `db/db`, then `fdatasync` of every blob
//! file that is new or grew and of any directory whose entries changed
//! (`db/blobs/`, `db/` for snapshots). A waiter is released only after its
//! round's last fsync returned: one fsync per round, however many writes
//! and waiters it covers. This file owns that ordering; it decides nothing
//! about what is written, and the thread ends (releasing the database) when
//! the last `Store` is dropped.

use super::StoreError;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// Result of the latest finished flush round: (ticket covered, error if it failed).
type Round = (u64, Option<String>);

/// Writes a role gathered in memory, run at the start of every round before
/// sled's flush (see [`Flusher::before_flush`]).
pub(super) type Hook = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

struct Shared {
    /// Since when (unix ms) some `durable()` caller has been waiting, 0 when
    /// none is: a flush that hangs, or one that never gets to start because
    /// the store blocks the runtime, shows here.
    waiting_since_ms: AtomicU64,
    /// When the latest flush finished (unix ms): a slow but moving store
    /// (overload) is not a stuck one.
    last_done_ms: AtomicU64,
    requested: AtomicU64,
    flushes: AtomicU64,
    /// fsync rounds begun (numbered from 1), and the number of the latest
    /// one whose fsyncs all returned: a write made when `fsync_begun` was n
    /// is on stable storage once `fsynced_through` is above n.
    fsync_begun: AtomicU64,
    fsynced_through: AtomicU64,
    done: watch::Sender<Round>,
    /// Set at the first failed flush: sled refuses every write after an I/O
    /// error, so the node must stop acknowledging and reopen its database.
    failed: watch::Sender<Option<String>>,
    /// Run at the start of each round, after the round's ticket is taken.
    hooks: std::sync::Mutex<Vec<Hook>>,
}

/// Every flusher of this process, for the stall watchdog.
static FLUSHERS: std::sync::Mutex<Vec<std::sync::Weak<Shared>>> = std::sync::Mutex::new(Vec::new());

/// How long some `durable()` call in this process has been waiting with no
/// flush finishing at all meanwhile (sled can hang on a failing disk instead
/// of returning an error; an overloaded store is slow, but flushes finish).
pub fn longest_stall() -> Option<std::time::Duration> {
    let now = crate::proto::now_ms();
    let all = FLUSHERS.lock().ok()?;
    all.iter()
        .filter_map(|w| w.upgrade())
        .map(|s| {
            let waiting = s.waiting_since_ms.load(Ordering::SeqCst);
            if waiting == 0 {
                0
            } else {
                waiting.max(s.last_done_ms.load(Ordering::SeqCst))
            }
        })
        .filter(|t| *t > 0)
        .map(|t| std::time::Duration::from_millis(now.saturating_sub(t)))
        .max()
}

pub(super) struct Flusher {
    shared: Arc<Shared>,
    kick: std::sync::mpsc::SyncSender<()>,
    task: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Flusher {
    /// Starts the flusher of `db`; `sync` is `None` only when fsync is
    /// turned off (to measure its cost, never in a node).
    pub(super) fn start(db: sled::Db, mut sync: Option<Syncer>) -> Arc<Flusher> {
        let (done, _) = watch::channel((0, None));
        let shared = Arc::new(Shared {
            waiting_since_ms: AtomicU64::new(0),
            last_done_ms: AtomicU64::new(crate::proto::now_ms()),
            requested: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            fsync_begun: AtomicU64::new(0),
            fsynced_through: AtomicU64::new(0),
            done,
            failed: watch::channel(None).0,
            hooks: std::sync::Mutex::new(Vec::new()),
        });
        // A thread of its own, not a runtime task: flushes go on even when
        // the runtime's threads are all busy (a handshake storm), so a slow
        // node is never mistaken for a stuck store.
        let (kick, kicks) = std::sync::mpsc::sync_channel::<()>(1);
        let s = shared.clone();
        let task = std::thread::Builder::new()
            .name("store-flusher".into())
            .spawn(move || {
                while kicks.recv().is_ok() {
                    let target = s.requested.load(Ordering::SeqCst);
                    let began = std::time::Instant::now();
                    // What was gathered for waiters up to `target` is written
                    // now, so that this round's flush and fsync carry it.
                    let hooks = s.hooks.lock().unwrap_or_else(|p| p.into_inner());
                    let written = hooks.iter().try_for_each(|h| h());
                    drop(hooks);
                    let res = written
                        .and_then(|_| db.flush().map_err(|e| e.to_string()))
                        .and_then(|_| {
                            let Some(sync) = sync.as_mut() else {
                                return Ok(());
                            };
                            let round = s.fsync_begun.fetch_add(1, Ordering::SeqCst) + 1;
                            sync.round().map_err(|e| format!("fsync: {e}"))?;
                            s.fsynced_through.store(round, Ordering::SeqCst);
                            Ok(())
                        });
                    crate::metrics::flush_took(began.elapsed());
                    s.last_done_ms
                        .store(crate::proto::now_ms(), Ordering::SeqCst);
                    // Everyone asked so far is covered: nobody waits any more.
                    // Otherwise the waiting goes on from now (a new round).
                    let now = if s.requested.load(Ordering::SeqCst) == target {
                        0
                    } else {
                        crate::proto::now_ms()
                    };
                    s.waiting_since_ms.store(now, Ordering::SeqCst);
                    s.flushes.fetch_add(1, Ordering::Relaxed);
                    let err = res.err();
                    if let Some(e) = &err {
                        tracing::error!(error = %e, "flush to disk failed; not acknowledging");
                        s.failed.send_if_modified(|f| {
                            let first = f.is_none();
                            if first {
                                *f = Some(e.clone());
                            }
                            first
                        });
                    }
                    s.done.send_replace((target, err));
                }
            })
            .ok();
        if let Ok(mut all) = FLUSHERS.lock() {
            all.retain(|w| w.strong_count() > 0);
            all.push(Arc::downgrade(&shared));
        }
        Arc::new(Flusher {
            shared,
            kick,
            task: std::sync::Mutex::new(task),
        })
    }

    /// Runs `hook` at the start of every round, after the round took its
    /// ticket and before sled's flush: a caller of `durable` that gathered
    /// writes in memory before calling it finds them written, flushed and
    /// fsynced when it returns. A hook that fails fails the round.
    pub(super) fn before_flush(&self, hook: Hook) {
        self.shared
            .hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(hook);
    }

    /// The flusher task, to await its end after the last handle is dropped.
    pub(super) fn take_task(&self) -> Option<std::thread::JoinHandle<()>> {
        self.task.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    pub(super) async fn durable(&self) -> Result<(), StoreError> {
        let mut rx = self.shared.done.subscribe();
        let ticket = self.shared.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let _ = self.shared.waiting_since_ms.compare_exchange(
            0,
            crate::proto::now_ms().max(1),
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        // A full channel means a round is already queued, which will cover us.
        let _ = self.kick.try_send(());
        let round = rx
            .wait_for(|(covered, _)| *covered >= ticket)
            .await
            .map_err(|_| StoreError::Flush("flusher stopped".into()))?;
        match &round.1 {
            None => Ok(()),
            Some(e) => Err(StoreError::Flush(e.clone())),
        }
    }

    /// Resolves with the error of the first failed flush.
    pub(super) async fn failed(&self) -> String {
        let mut rx = self.shared.failed.subscribe();
        let got = rx.wait_for(|f| f.is_some()).await.map(|f| f.clone());
        match got {
            Ok(f) => f.unwrap_or_default(),
            // The flusher is gone with the store: nothing will fail any more.
            Err(_) => std::future::pending().await,
        }
    }

    #[cfg(test)]
    pub(super) fn flushes(&self) -> u64 {
        self.shared.flushes.load(Ordering::Relaxed)
    }

    /// (fsync rounds begun, number of the latest round that completed).
    #[cfg(test)]
    pub(super) fn fsync_rounds(&self) -> (u64, u64) {
        (
            self.shared.fsync_begun.load(Ordering::SeqCst),
            self.shared.fsynced_through.load(Ordering::SeqCst),
        )
    }
}

/// What sled leaves unsynced under its directory, fsynced after each flush.
pub(super) struct Syncer {
    /// sled's directory (`DATA_DIR/db`).
    dir: PathBuf,
    /// The log file, `db/db` (any descriptor of the file will do for fsync).
    log: File,
    /// Blob files as last synced: name and length.
    blobs: BTreeMap<OsString, u64>,
    /// The names in `db/` as last synced.
    entries: Vec<OsString>,
}

impl Syncer {
    /// Syncs everything sled created when it opened `dir` (the log file,
    /// `conf`, and the directories whose entries may be new: `dir`, the
    /// data directory holding it, and the one holding that).
    pub(super) fn open(dir: &Path) -> std::io::Result<Syncer> {
        let log = File::open(dir.join("db"))?;
        let mut s = Syncer {
            dir: dir.to_path_buf(),
            log,
            blobs: BTreeMap::new(),
            entries: Vec::new(),
        };
        s.round()?;
        File::open(dir.join("conf"))?.sync_all()?;
        sync_dir(dir)?;
        // The data directory holds `db/`, and may itself be new.
        if let Some(data) = parent_dir(dir) {
            sync_dir(data)?;
            if let Some(above) = parent_dir(data) {
                if let Err(e) = sync_dir(above) {
                    tracing::warn!(dir = %above.display(), error = %e, "cannot fsync the directory holding the data directory");
                }
            }
        }
        Ok(s)
    }

    /// One round, after a flush: the log file, new or grown blobs and the
    /// directories whose entries changed.
    fn round(&mut self) -> std::io::Result<()> {
        self.log.sync_data()?;
        let blob_dir = self.dir.join("blobs");
        let mut now = BTreeMap::new();
        let mut changed = false;
        for e in std::fs::read_dir(&blob_dir)? {
            let e = e?;
            let name = e.file_name();
            let known = self.blobs.get(&name).copied();
            let Some(len) = sync_blob(&e.path(), known)? else {
                // Removed since the listing: absent from `now`, so the
                // directory is synced if it was known.
                continue;
            };
            // New (its entry needs the directory synced too).
            changed |= known.is_none();
            now.insert(name, len);
        }
        changed |= now.len() != self.blobs.len() || !now.keys().eq(self.blobs.keys());
        if changed {
            sync_dir(&blob_dir)?;
        }
        self.blobs = now;
        let mut entries = std::fs::read_dir(&self.dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<Vec<_>, _>>()?;
        entries.sort();
        if entries != self.entries {
            // A snapshot was renamed into place or an old one removed.
            sync_dir(&self.dir)?;
            self.entries = entries;
        }
        Ok(())
    }
}

/// fdatasync of a blob file whose length is not `known` (new, or still
/// being written when last seen); its length, or `None` when it no longer
/// exists: sled removes a blob once its value is replaced or deleted, also
/// between the directory listing and this, which is no failure.
fn sync_blob(path: &Path, known: Option<u64>) -> std::io::Result<Option<u64>> {
    let gone = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => Ok(None),
        _ => Err(e),
    };
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) => return gone(e),
    };
    if known != Some(len) {
        match File::open(path) {
            Ok(f) => f.sync_data()?,
            Err(e) => return gone(e),
        }
    }
    Ok(Some(len))
}

/// The directory holding `p` (`.` for a relative name without one).
fn parent_dir(p: &Path) -> Option<&Path> {
    match p.parent() {
        Some(d) if d.as_os_str().is_empty() => Some(Path::new(".")),
        d => d,
    }
}

/// fsync of a directory: makes its entries (created, renamed, removed) durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::sync_blob;

    #[test]
    fn a_blob_removed_before_its_fsync_is_skipped_not_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("blob");
        std::fs::write(&p, b"12345").unwrap();
        assert_eq!(sync_blob(&p, None).unwrap(), Some(5), "new: synced");
        assert_eq!(sync_blob(&p, Some(5)).unwrap(), Some(5), "unchanged");
        std::fs::remove_file(&p).unwrap();
        assert_eq!(sync_blob(&p, None).unwrap(), None, "gone meanwhile");
        assert_eq!(sync_blob(&p, Some(5)).unwrap(), None);
        std::fs::write(&p, b"x").unwrap();
        assert!(
            sync_blob(&p.join("below"), None).is_err(),
            "any other error still fails the round"
        );
    }
}

//! Group commit: one background task flushes sled on behalf of every waiter.
//!
//! The task ends (and releases the database) when the last `Store` is dropped.

use super::StoreError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// Result of the latest finished flush round: (ticket covered, error if it failed).
type Round = (u64, Option<String>);

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
    done: watch::Sender<Round>,
    /// Set at the first failed flush: sled refuses every write after an I/O
    /// error, so the node must stop acknowledging and reopen its database.
    failed: watch::Sender<Option<String>>,
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
    pub(super) fn start(db: sled::Db) -> Arc<Flusher> {
        let (done, _) = watch::channel((0, None));
        let shared = Arc::new(Shared {
            waiting_since_ms: AtomicU64::new(0),
            last_done_ms: AtomicU64::new(crate::proto::now_ms()),
            requested: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            done,
            failed: watch::channel(None).0,
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
                    let res = db.flush();
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
                    let err = res.err().map(|e| e.to_string());
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
}

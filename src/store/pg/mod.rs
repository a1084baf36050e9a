//! HQ's state in PostgreSQL: the second backend behind [`super::Store`],
//! and the only importer of tokio-postgres. Roles never see it: they call
//! the same synchronous `Table`/`Tree`/`atomically`/`durable` API as on sled.
//!
//! Threading. One OS thread ("store-pg", `worker.rs`) owns the connection
//! and a current-thread tokio runtime of its own; callers send it requests
//! over a bounded std channel. A read blocks its caller (a runtime worker)
//! for one loopback round trip, as a sled read that misses its cache blocks
//! it for a disk read; nothing ever blocks *inside* the store thread's
//! runtime on a caller, so neither runtime can deadlock or panic (the
//! blocking `postgres` crate would panic when called from a runtime, and
//! `block_in_place` per read costs a thread hand-off and panics on a
//! current-thread runtime). Writes are not waited for: they are queued in
//! order, and the thread holds them until something must see them (a read,
//! a savepoint, a commit) and sends them then as one multi-row statement.
//! A batch's reads are one statement per tree (`get_many`), scans fetch
//! pages that double in size, so HQ's ingest of a batch of events costs a
//! few round trips, not some per event.
//!
//! Durability. Writes go into one open transaction, which reads on the same
//! connection see. [`Pg::durable`] commits it (`synchronous_commit` on): every
//! caller queued at that moment shares that commit (group commit: one
//! transaction per batch of events, not one per leaf). An open transaction
//! nobody commits is committed after [`IDLE_COMMIT`] anyway, so that row
//! locks are never held long. [`Pg::atomically`] is a savepoint inside the
//! open transaction; a reentrant gate keeps other threads' writes out of it
//! while it runs (its closure does no I/O, as on sled).
//!
//! Failure. A write that fails, or a lost connection while writes wait for
//! their commit, fails every waiting `durable()` and resolves [`Pg::failed`]
//! once: HQ stops acknowledging and restarts, as after a disk failure on
//! sled. A connection lost while nothing waits is re-opened at the next
//! request (at most once a second), so a database restarted under an idle
//! HQ costs nothing.
//!
//! Layout (`migrations/`, applied in order at start under an advisory
//! lock, recorded in `schema_version`; a newer schema is refused). One
//! table `entries(tree, key, value)` holds every tree: the bytes the sled
//! backend stores, so key codecs, MessagePack values and bytewise key
//! order (bytea compares like sled) are the same, and a new tree needs no
//! migration. Limits: values are opaque to SQL (no queries into them; a
//! change of their shape is a migration in Rust), and every tree shares one
//! index. `next_id` counters are sequences (unique across HQs, with gaps).
//! The CA's hash is kept in `cluster`. Package blobs are not here: they
//! stay in the depot directory under HQ's data directory (a filesystem
//! path; HQs sharing a database need it on a shared filesystem).

pub mod notify;
mod worker;

use super::StoreError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::ThreadId;
use tokio::sync::watch;

/// An open transaction nobody asked to commit is committed after this long.
pub const IDLE_COMMIT: std::time::Duration = std::time::Duration::from_millis(100);

/// Rows fetched by the first page of a scan (keyset pagination by key);
/// each further page asks for twice as many, up to [`MAX_PAGE`], so a short
/// scan reads little and a long one (a job's 100,000 leaves) needs few
/// round trips.
const PAGE: i64 = 256;

/// The largest page of a scan.
const MAX_PAGE: i64 = 16_384;

/// Keys looked up by one statement of [`Pg::get_many`] at most.
const MANY: usize = 8192;

/// Raw entries: (key, value) bytes.
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// A reply channel for one request.
type Reply<T> = SyncSender<Result<T, StoreError>>;

/// One request to the store thread.
enum Req {
    Get {
        tree: &'static str,
        key: Vec<u8>,
        reply: Reply<Option<Vec<u8>>>,
    },
    /// The values at many keys of one tree, in one statement.
    GetMany {
        tree: &'static str,
        keys: Vec<Vec<u8>>,
        reply: Reply<Entries>,
    },
    /// A put (`Some`) or remove (`None`); not answered: a failure poisons
    /// the open transaction and fails its commit.
    Write {
        tree: &'static str,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
    },
    Page {
        tree: &'static str,
        from: Vec<u8>,
        to: Option<Vec<u8>>,
        limit: i64,
        reply: Reply<Entries>,
    },
    Count {
        tree: &'static str,
        reply: Reply<u64>,
    },
    NextId {
        name: String,
        reply: Reply<u64>,
    },
    /// Take (or keep) the session-level advisory lock `key`.
    Duty {
        key: i64,
        reply: Reply<bool>,
    },
    /// Whether the connection the open transaction runs on holds (or can
    /// take) advisory lock `key`.
    Fence {
        key: i64,
        reply: Reply<bool>,
    },
    Savepoint {
        reply: Reply<()>,
    },
    Release {
        reply: Reply<()>,
    },
    Rollback {
        reply: Reply<()>,
    },
    Commit {
        reply: tokio::sync::oneshot::Sender<Result<(), String>>,
    },
}

/// Counts kept by the store thread (for tests and the benchmark).
#[derive(Default)]
pub(crate) struct Stats {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Write statements sent (each carries one or more rows).
    pub write_statements: AtomicU64,
    /// Rows written or removed.
    pub rows_written: AtomicU64,
    /// Read statements sent (gets, pages, counts): one round trip each.
    pub reads: AtomicU64,
}

/// The handle every `Store`/`Table` clone shares.
pub(crate) struct Pg {
    tx: SyncSender<Req>,
    gate: Gate,
    failed: watch::Sender<Option<String>>,
    pub(crate) stats: Arc<Stats>,
    announce: Arc<notify::Announce>,
}

impl Pg {
    /// Connects to `url`, applies the migrations and checks (or records)
    /// the CA hash. Blocks until the store thread has done so.
    pub(super) fn connect(url: &str, ca_hash: &str) -> Result<Arc<Pg>, StoreError> {
        let (tx, rx) = sync_channel(4096);
        let (failed, _) = watch::channel(None);
        let stats = Arc::new(Stats::default());
        let announce = Arc::new(notify::Announce::new());
        worker::start(
            url.to_string(),
            ca_hash.to_string(),
            rx,
            failed.clone(),
            stats.clone(),
            announce.clone(),
        )?;
        notify::listen(url.to_string(), announce.clone())
            .map_err(|e| StoreError::Pg(format!("cannot start the listener: {e}")))?;
        Ok(Arc::new(Pg {
            tx,
            gate: Gate::default(),
            failed,
            stats,
            announce,
        }))
    }

    fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Req) -> Result<T, StoreError> {
        let (reply, rx) = sync_channel(1);
        self.tx.send(make(reply)).map_err(|_| stopped())?;
        rx.recv().map_err(|_| stopped())?
    }

    /// The value at `key` of `tree`, as the open transaction sees it.
    pub(super) fn get(
        &self,
        tree: &'static str,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.ask(|reply| Req::Get {
            tree,
            key: key.to_vec(),
            reply,
        })
    }

    /// The values at `keys` of `tree` (in `keys`' order), as the open
    /// transaction sees them: one statement per [`MANY`] keys.
    pub(super) fn get_many(
        &self,
        tree: &'static str,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let mut found = std::collections::HashMap::with_capacity(keys.len());
        for chunk in keys.chunks(MANY) {
            let rows = self.ask(|reply| Req::GetMany {
                tree,
                keys: chunk.to_vec(),
                reply,
            })?;
            found.extend(rows);
        }
        Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
    }

    /// Puts (`Some`) or removes (`None`) `key` in the open transaction.
    pub(super) fn write(
        &self,
        tree: &'static str,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let _in = self.gate.enter();
        self.tx
            .send(Req::Write { tree, key, value })
            .map_err(|_| stopped())
    }

    /// Up to `limit` entries of `tree` with keys in `[from, to)`.
    fn page(
        &self,
        tree: &'static str,
        from: Vec<u8>,
        to: Option<Vec<u8>>,
        limit: i64,
    ) -> Result<Entries, StoreError> {
        self.ask(|reply| Req::Page {
            tree,
            from,
            to,
            limit,
            reply,
        })
    }

    /// Entries of `tree` with keys in `[from, to)` (`to` `None`: to the
    /// end), in key order, fetched a page at a time.
    pub(super) fn scan(
        self: &Arc<Pg>,
        tree: &'static str,
        from: Vec<u8>,
        to: Option<Vec<u8>>,
    ) -> Pages {
        Pages {
            pg: self.clone(),
            tree,
            next: Some(from),
            to,
            limit: PAGE,
            buf: Vec::new().into_iter(),
        }
    }

    /// Number of entries in `tree`.
    pub(super) fn count(&self, tree: &'static str) -> Result<u64, StoreError> {
        self.ask(|reply| Req::Count { tree, reply })
    }

    /// Whether `tree` has no entry.
    pub(super) fn is_empty(&self, tree: &'static str) -> Result<bool, StoreError> {
        Ok(self.page(tree, Vec::new(), None, 1)?.is_empty())
    }

    /// The next value of counter `name` (a sequence: unique across HQs).
    pub(super) fn next_id(&self, name: &str) -> Result<u64, StoreError> {
        self.ask(|reply| Req::NextId {
            name: name.to_string(),
            reply,
        })
    }

    /// Whether this HQ holds singleton duty `name` (retention, schedules):
    /// a session-level advisory lock, taken when free and kept while the
    /// connection lives; released by PostgreSQL when this HQ's connection
    /// ends (its process died), so another HQ takes the duty over at its
    /// next look. `false` when the database cannot be asked.
    pub(super) fn holds_duty(&self, name: &str) -> bool {
        let key = duty_key(name);
        self.ask(|reply| Req::Duty { key, reply })
            .unwrap_or_else(|e| {
                tracing::warn!(duty = name, error = %e, "cannot take a duty");
                false
            })
    }

    /// The fencing check of duty `name`, for inside [`Pg::atomically`]:
    /// `Ok` only if the connection the open transaction runs on holds the
    /// duty's lock. Another HQ can take the lock only once that connection
    /// is gone, and the transaction (with every write fenced here) dies
    /// with it: so a write fenced by a duty commits only while its HQ holds
    /// the duty, even if the lock passed on since the caller last looked.
    pub(super) fn fence(&self, name: &str) -> Result<(), StoreError> {
        let key = duty_key(name);
        match self.ask(|reply| Req::Fence { key, reply })? {
            true => Ok(()),
            false => Err(StoreError::NotDuty(name.to_string())),
        }
    }

    /// Announces every key put into `tree` to the other processes on this
    /// database ([`notify::Notice::Put`]).
    pub(super) fn announce_keys(&self, tree: &'static str) {
        self.announce.keys_of(tree);
    }

    /// What other processes on this database commit, from now on.
    pub(super) fn notices(&self) -> tokio::sync::broadcast::Receiver<notify::Notice> {
        self.announce.subscribe()
    }

    /// Runs `f` inside a savepoint of the open transaction: its writes land
    /// together (at the next commit) or, if it fails, not at all.
    pub(super) fn atomically<A>(
        &self,
        f: impl FnOnce() -> Result<A, StoreError>,
    ) -> Result<A, StoreError> {
        let _in = self.gate.enter();
        self.ask(|reply| Req::Savepoint { reply })?;
        match f() {
            Ok(a) => {
                self.ask(|reply| Req::Release { reply })?;
                Ok(a)
            }
            Err(e) => {
                self.ask(|reply| Req::Rollback { reply })?;
                Err(e)
            }
        }
    }

    /// Returns once everything written before the call is committed.
    pub(super) async fn durable(&self) -> Result<(), StoreError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        {
            // Not inside someone's savepoint: wait for it to end.
            let _in = self.gate.enter();
            self.tx.send(Req::Commit { reply }).map_err(|_| stopped())?;
        }
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Flush(e)),
            Err(_) => Err(stopped()),
        }
    }

    /// Resolves with the first failure that lost writes.
    pub(super) async fn failed(&self) -> String {
        let mut rx = self.failed.subscribe();
        let got = rx.wait_for(|f| f.is_some()).await.map(|f| f.clone());
        match got {
            Ok(f) => f.unwrap_or_default(),
            Err(_) => std::future::pending().await,
        }
    }
}

/// A fixed advisory-lock key per duty name (FNV-1a).
fn duty_key(name: &str) -> i64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    }) as i64
}

fn stopped() -> StoreError {
    StoreError::Pg("the store thread stopped".into())
}

/// A scan, a page at a time: the next page starts just after the last key
/// seen (keyset pagination), so no page re-reads or skips a row.
pub(crate) struct Pages {
    pg: Arc<Pg>,
    tree: &'static str,
    /// Where the next page starts (inclusive); `None` when done.
    next: Option<Vec<u8>>,
    to: Option<Vec<u8>>,
    /// The next page's size.
    limit: i64,
    buf: <Entries as IntoIterator>::IntoIter,
}

impl Iterator for Pages {
    type Item = Result<(Vec<u8>, Vec<u8>), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(kv) = self.buf.next() {
            return Some(Ok(kv));
        }
        let from = self.next.take()?;
        let limit = self.limit;
        self.limit = (limit * 2).min(MAX_PAGE);
        let page = match self.pg.page(self.tree, from, self.to.clone(), limit) {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        if page.len() as i64 == limit {
            // The smallest key above the last one: the same key plus a 0 byte.
            self.next = page.last().map(|(k, _)| {
                let mut n = k.clone();
                n.push(0);
                n
            });
        }
        self.buf = page.into_iter();
        self.buf.next().map(Ok)
    }
}

/// The smallest byte string above every string starting with `prefix`, or
/// `None` when there is none (empty, or all 0xff).
pub(super) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A lock one thread may take again while it holds it: a savepoint's
/// closure writes through the same tables its caller uses.
#[derive(Default)]
struct Gate {
    owner: Mutex<Option<(ThreadId, usize)>>,
    free: Condvar,
}

struct Entered<'a>(&'a Gate);

impl Gate {
    fn enter(&self) -> Entered<'_> {
        let me = std::thread::current().id();
        let mut owner = self.owner.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match owner.as_mut() {
                None => {
                    *owner = Some((me, 1));
                    break;
                }
                Some((t, n)) if *t == me => {
                    *n += 1;
                    break;
                }
                Some(_) => {
                    owner = self.free.wait(owner).unwrap_or_else(|p| p.into_inner());
                }
            }
        }
        Entered(self)
    }
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        let mut owner = self.0.owner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, n)) = owner.as_mut() {
            *n -= 1;
            if *n == 0 {
                *owner = None;
                self.0.free.notify_one();
            }
        }
    }
}

impl Pg {
    /// Commits counted so far.
    pub(crate) fn commits(&self) -> u64 {
        self.stats.commits.load(Ordering::Relaxed)
    }

    /// Read statements (round trips) counted so far.
    pub(crate) fn reads(&self) -> u64 {
        self.stats.reads.load(Ordering::Relaxed)
    }
}

pub mod testdb;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod multi_tests;

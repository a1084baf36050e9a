//! Durable state: the only importer of sled (and, in `pg/`, of tokio-postgres).
//!
//! One sled database per node, a few fixed trees, MessagePack values and
//! big-endian integer keys (see [`keys`]). Writes become durable only through
//! [`Store::durable`], a group commit: every caller waiting at the same time
//! shares one flush and one fsync (sled's own flush stops short of stable
//! storage; see `flush.rs`). Callers acknowledge to a peer only after it
//! returns. Nothing outside this module sees sled or decides when to sync.
//!
//! HQ may keep the same trees in PostgreSQL instead ([`Store::connect`],
//! `pg/`): the same bytes per key, the same API; `durable` is then a commit.
//! Outboxes (relays and agents) exist on sled only.

mod flush;
pub use flush::longest_stall;
pub mod keys;
mod outbox;
pub mod pg;
mod tree;
mod txn;

pub use outbox::Outbox;
pub use tree::{Tree, TreeDef};
pub use txn::{AsTable, Txn, TxnError};

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The on-disk layout version; a database with another refuses to open.
pub const SCHEMA_VERSION: u32 = 3;

/// Storage failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened.
    #[error("cannot open database at {path}: {source}")]
    Open {
        /// Where.
        path: PathBuf,
        /// Why.
        source: sled::Error,
    },
    /// The database was written by another version.
    #[error("database at {path} has schema version {found}, this build uses {SCHEMA_VERSION}")]
    Schema {
        /// Where.
        path: PathBuf,
        /// What it holds.
        found: u32,
    },
    /// A read or write failed.
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    /// Flushing to disk failed: nothing since the last good flush is durable.
    #[error("flush to disk failed: {0}")]
    Flush(String),
    /// A stored value did not decode.
    #[error("corrupt value in {tree}: {reason}")]
    Corrupt {
        /// Which tree.
        tree: String,
        /// Why.
        reason: String,
    },
    /// A value could not be encoded.
    #[error("cannot encode value: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    /// The PostgreSQL store could not be used at start (unreachable, wrong
    /// URL, a newer schema, another HQ's CA).
    #[error("cannot use the store at {url}: {reason}")]
    Connect {
        /// The URL, without its password.
        url: String,
        /// Why.
        reason: String,
    },
    /// A PostgreSQL read or write failed.
    #[error("PostgreSQL: {0}")]
    Pg(String),
    /// Not available on this backend.
    #[error("{0}")]
    Unsupported(&'static str),
    /// A write fenced by a singleton duty, from an HQ that does not hold it.
    #[error("this HQ does not hold the {0} duty (another HQ on the database runs it)")]
    NotDuty(String),
}

/// A node's database.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sled {
        db: sled::Db,
        flusher: Arc<flush::Flusher>,
        /// The directory sled was opened on (`DIR/db`).
        path: PathBuf,
    },
    Pg(Arc<pg::Pg>),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.backend {
            Backend::Sled { .. } => f.write_str("Store(sled)"),
            Backend::Pg(_) => f.write_str("Store(postgres)"),
        }
    }
}

impl StoreError {
    /// A write or flush was refused by the disk (full, read-only, failing).
    pub fn is_disk_failure(&self) -> bool {
        matches!(
            self,
            StoreError::Flush(_) | StoreError::Sled(sled::Error::Io(_))
        )
    }

    /// The database could not be opened because another process holds it
    /// (a running node): sled's file lock.
    pub fn is_locked(&self) -> bool {
        matches!(self, StoreError::Open { source: sled::Error::Io(e), .. }
            if e.to_string().starts_with("could not acquire lock"))
    }
}

impl Store {
    /// Opens (or creates) the database under `dir/db`. Must run inside a tokio runtime.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(dir, true)
    }

    /// Opens the database with fsync after each flush turned off: what
    /// [`Store::durable`] then promises survives a crash of the process, not
    /// a power cut. Only to measure what fsync costs (`examples/persist.rs`);
    /// never for a node.
    pub fn open_without_fsync(dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(dir, false)
    }

    fn open_with(dir: &Path, fsync: bool) -> Result<Store, StoreError> {
        let path = dir.join("db");
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(64 * 1024 * 1024)
            .mode(sled::Mode::HighThroughput)
            // No background flusher thread waking twice a second: every write
            // that matters is followed by `durable()`, which flushes.
            .flush_every_ms(None)
            .open()
            .map_err(|source| StoreError::Open {
                path: path.clone(),
                source,
            })?;
        let meta = db.open_tree("meta")?;
        match meta.get("schema")? {
            Some(v) => {
                let found = v
                    .as_ref()
                    .try_into()
                    .map(u32::from_be_bytes)
                    .unwrap_or(u32::MAX);
                if found != SCHEMA_VERSION {
                    return Err(StoreError::Schema { path, found });
                }
            }
            None => {
                meta.insert("schema", &SCHEMA_VERSION.to_be_bytes())?;
                db.flush()?;
            }
        }
        let sync = if fsync {
            Some(flush::Syncer::open(&path).map_err(|e| StoreError::Open {
                path: path.clone(),
                source: sled::Error::Io(e),
            })?)
        } else {
            None
        };
        let flusher = flush::Flusher::start(db.clone(), sync);
        Ok(Store {
            backend: Backend::Sled { db, flusher, path },
        })
    }

    /// Connects to the PostgreSQL database at `url` (`postgres://USER@HOST:PORT/DB`),
    /// applies the migrations, and records the CA's hash there, or refuses
    /// a database that holds another CA's. Blocks until connected.
    pub fn connect(url: &str, ca_hash: &str) -> Result<Store, StoreError> {
        Ok(Store {
            backend: Backend::Pg(pg::Pg::connect(url, ca_hash)?),
        })
    }

    /// Whether this node should run singleton duty `name` (retention,
    /// schedules): always on sled (one HQ per store); on PostgreSQL, for
    /// exactly one of the HQs sharing the database at a time.
    pub fn holds_duty(&self, name: &str) -> bool {
        match &self.backend {
            Backend::Sled { .. } => true,
            Backend::Pg(p) => p.holds_duty(name),
        }
    }

    /// Inside [`Store::atomically`]: fails the change unless this node
    /// holds duty `name` on the very connection the change commits on (a
    /// fencing check: an HQ that lost the duty cannot commit its work).
    /// Always passes on sled.
    pub fn fence(&self, name: &str) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sled { .. } => Ok(()),
            Backend::Pg(p) => p.fence(name),
        }
    }

    /// Other processes sharing this database announce every key they put
    /// into `tree` (and this one does too): see [`Store::notices`]. Nothing on sled.
    pub fn announce_keys(&self, tree: &'static str) {
        if let Backend::Pg(p) = &self.backend {
            p.announce_keys(tree);
        }
    }

    /// What other processes sharing this database commit, from now on:
    /// `None` on sled, where no other process writes.
    pub fn notices(&self) -> Option<tokio::sync::broadcast::Receiver<pg::notify::Notice>> {
        match &self.backend {
            Backend::Sled { .. } => None,
            Backend::Pg(p) => Some(p.notices()),
        }
    }

    /// Whether this store is in PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        matches!(self.backend, Backend::Pg(_))
    }

    /// Transactions committed so far (PostgreSQL only; 0 on sled).
    pub fn commits(&self) -> u64 {
        match &self.backend {
            Backend::Sled { .. } => 0,
            Backend::Pg(p) => p.commits(),
        }
    }

    /// Read statements sent so far, one round trip each (PostgreSQL only;
    /// 0 on sled, where a read is a lookup in memory or on disk).
    pub fn reads(&self) -> u64 {
        match &self.backend {
            Backend::Sled { .. } => 0,
            Backend::Pg(p) => p.reads(),
        }
    }

    #[cfg(test)]
    fn flusher(&self) -> &flush::Flusher {
        match &self.backend {
            Backend::Sled { flusher, .. } => flusher,
            Backend::Pg(_) => panic!("no flusher on postgres"),
        }
    }

    /// A typed view of one tree.
    pub fn table(&self, name: &'static str) -> Result<Table, StoreError> {
        Ok(Table {
            name,
            raw: match &self.backend {
                Backend::Sled { db, .. } => Raw::Sled(db.open_tree(name)?),
                Backend::Pg(p) => Raw::Pg(p.clone()),
            },
        })
    }

    /// The outbox tree `name`.
    pub fn outbox(&self, name: &'static str) -> Result<Outbox, StoreError> {
        Outbox::open(self.table(name)?, b"")
    }

    /// One of several outboxes sharing tree `name`, under `prefix`.
    pub fn outbox_prefixed(&self, name: &'static str, prefix: &[u8]) -> Result<Outbox, StoreError> {
        Outbox::open(self.table(name)?, prefix)
    }

    /// Waits until everything written before the call is on stable storage:
    /// flushed by sled, then fsynced (data and metadata). Concurrent callers
    /// share flushes and fsyncs (group commit).
    pub async fn durable(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sled { flusher, .. } => flusher.durable().await,
            Backend::Pg(p) => p.durable().await,
        }
    }

    /// Runs `hook` at the start of every flush round, before sled's flush
    /// (on the flusher's thread): writes a role gathers in memory between
    /// flushes go to disk with the round that makes them durable, so many
    /// callers' writes become one. The hook must not wait for `durable`.
    /// Only on sled.
    pub fn before_flush(
        &self,
        hook: impl Fn() -> Result<(), StoreError> + Send + Sync + 'static,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sled { flusher, .. } => {
                flusher.before_flush(Box::new(move || hook().map_err(|e| e.to_string())));
                Ok(())
            }
            Backend::Pg(_) => Err(StoreError::Unsupported(
                "writes gathered before a flush are only on sled",
            )),
        }
    }

    /// Resolves when a flush fails (typically a full disk). From then on
    /// nothing can be made durable: the node must stop acknowledging and
    /// reopen the database once the disk accepts writes again.
    pub async fn failed(&self) -> StoreError {
        match &self.backend {
            Backend::Sled { flusher, .. } => StoreError::Flush(flusher.failed().await),
            Backend::Pg(p) => StoreError::Pg(p.failed().await),
        }
    }

    /// Flushes and releases the database, so that it can be opened again in
    /// this process (other clones must be dropped first).
    pub async fn close(self) -> Result<(), StoreError> {
        self.durable().await?;
        let (task, path) = match &self.backend {
            Backend::Sled { flusher, path, .. } => (flusher.take_task(), Some(path.clone())),
            Backend::Pg(_) => (None, None),
        };
        drop(self);
        if let Some(t) = task {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        if let Some(path) = path {
            // sled's own threads may still hold the file for a moment after
            // the last handle is dropped; "closed" means it can be reopened.
            wait_unlocked(&path.join("db")).await;
        }
        Ok(())
    }

    /// A counter kept in the `meta` tree; returns the next value (from 1).
    pub fn next_id(&self, name: &str) -> Result<u64, StoreError> {
        let db = match &self.backend {
            Backend::Sled { db, .. } => db,
            Backend::Pg(p) => return p.next_id(name),
        };
        let meta = db.open_tree("meta")?;
        let v = meta.update_and_fetch(name, |old| {
            let n = old
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            Some((n + 1).to_be_bytes().to_vec())
        })?;
        Ok(v.and_then(|b| b.as_ref().try_into().ok())
            .map(u64::from_be_bytes)
            .unwrap_or(1))
    }
}

/// One tree with MessagePack values.
#[derive(Clone)]
pub struct Table {
    name: &'static str,
    raw: Raw,
}

/// Where a table's entries are.
#[derive(Clone)]
enum Raw {
    Sled(sled::Tree),
    Pg(Arc<pg::Pg>),
}

/// A stored value's bytes, from either backend.
enum Bytes {
    Sled(sled::IVec),
    Pg(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Sled(b) => b,
            Bytes::Pg(b) => b,
        }
    }
}

/// A range of raw entries, in key order.
enum RawIter {
    Sled(sled::Iter),
    Pg(pg::Pages),
}

impl Iterator for RawIter {
    type Item = Result<(Vec<u8>, Bytes), StoreError>;
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            RawIter::Sled(i) => i.next().map(|r| {
                r.map(|(k, v)| (k.to_vec(), Bytes::Sled(v)))
                    .map_err(Into::into)
            }),
            RawIter::Pg(i) => i.next().map(|r| r.map(|(k, v)| (k, Bytes::Pg(v)))),
        }
    }
}

impl Table {
    pub(crate) fn decode<V: DeserializeOwned>(&self, bytes: &[u8]) -> Result<V, StoreError> {
        rmp_serde::from_slice(bytes).map_err(|e| StoreError::Corrupt {
            tree: self.name.to_string(),
            reason: e.to_string(),
        })
    }

    /// The sled tree underneath, for what exists on sled only (outboxes).
    pub(crate) fn sled(&self) -> Result<&sled::Tree, StoreError> {
        match &self.raw {
            Raw::Sled(t) => Ok(t),
            Raw::Pg(_) => Err(StoreError::Unsupported(
                "outboxes are kept in sled only, not in PostgreSQL",
            )),
        }
    }

    fn raw_get(&self, key: &[u8]) -> Result<Option<Bytes>, StoreError> {
        Ok(match &self.raw {
            Raw::Sled(t) => t.get(key)?.map(Bytes::Sled),
            Raw::Pg(p) => p.get(self.name, key)?.map(Bytes::Pg),
        })
    }

    /// Writes (`Some`) or removes (`None`) raw bytes at `key`.
    fn raw_write(&self, key: &[u8], value: Option<Vec<u8>>) -> Result<(), StoreError> {
        match (&self.raw, value) {
            (Raw::Sled(t), Some(v)) => {
                t.insert(key, v)?;
            }
            (Raw::Sled(t), None) => {
                t.remove(key)?;
            }
            (Raw::Pg(p), v) => p.write(self.name, key.to_vec(), v)?,
        }
        Ok(())
    }

    /// Entries with keys in `[from, to)` (`to` `None`: to the end).
    fn raw_range(&self, from: &[u8], to: Option<&[u8]>) -> RawIter {
        match (&self.raw, to) {
            (Raw::Sled(t), Some(to)) => RawIter::Sled(t.range(from.to_vec()..to.to_vec())),
            (Raw::Sled(t), None) => RawIter::Sled(t.range(from.to_vec()..)),
            (Raw::Pg(p), to) => {
                RawIter::Pg(p.scan(self.name, from.to_vec(), to.map(<[u8]>::to_vec)))
            }
        }
    }

    fn decoded<V: DeserializeOwned>(
        &self,
        it: RawIter,
    ) -> impl Iterator<Item = Result<(Vec<u8>, V), StoreError>> + '_ {
        it.map(move |r| {
            let (k, v) = r?;
            Ok((k, self.decode(&v)?))
        })
    }

    /// The value at `key`.
    pub fn get<V: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<V>, StoreError> {
        match self.raw_get(key)? {
            Some(b) => Ok(Some(self.decode(&b)?)),
            None => Ok(None),
        }
    }

    /// The values at `keys`, in `keys`' order: on PostgreSQL one statement
    /// for all of them (not one round trip per key), on sled one lookup each.
    pub fn get_many<V: DeserializeOwned>(
        &self,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<V>>, StoreError> {
        match &self.raw {
            Raw::Sled(_) => keys.iter().map(|k| self.get(k)).collect(),
            Raw::Pg(p) => p
                .get_many(self.name, keys)?
                .into_iter()
                .map(|v| v.map(|b| self.decode(&b)).transpose())
                .collect(),
        }
    }

    /// Whether `key` is present.
    pub fn contains(&self, key: &[u8]) -> Result<bool, StoreError> {
        match &self.raw {
            Raw::Sled(t) => Ok(t.contains_key(key)?),
            Raw::Pg(_) => Ok(self.raw_get(key)?.is_some()),
        }
    }

    /// Writes `value` at `key` (durable after [`Store::durable`]).
    pub fn put<V: Serialize>(&self, key: &[u8], value: &V) -> Result<(), StoreError> {
        self.raw_write(key, Some(rmp_serde::to_vec_named(value)?))
    }

    /// Writes many values. Not atomic as a group (sled's batches cost two
    /// log writes each): after a crash, a prefix of the writes may be there,
    /// so callers write the record that marks an operation done last.
    pub fn put_many<'a, V: Serialize + 'a>(
        &self,
        items: impl IntoIterator<Item = (Vec<u8>, &'a V)>,
    ) -> Result<(), StoreError> {
        for (k, v) in items {
            self.raw_write(&k, Some(rmp_serde::to_vec_named(v)?))?;
        }
        Ok(())
    }

    /// Removes `key`.
    pub fn remove(&self, key: &[u8]) -> Result<(), StoreError> {
        self.raw_write(key, None)
    }

    /// Every entry whose key starts with `prefix`, in key order.
    pub fn scan<V: DeserializeOwned>(
        &self,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, V), StoreError>> + '_ {
        let it = match &self.raw {
            Raw::Sled(t) => RawIter::Sled(t.scan_prefix(prefix)),
            Raw::Pg(_) => self.raw_range(prefix, pg::prefix_end(prefix).as_deref()),
        };
        self.decoded(it)
    }

    /// Entries with keys in `[from, ..)`, in key order.
    pub fn range_from<V: DeserializeOwned>(
        &self,
        from: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, V), StoreError>> + '_ {
        self.decoded(self.raw_range(from, None))
    }

    /// Entries with keys in `[from, to)`, in key order; nothing past `to` is read.
    pub fn range<V: DeserializeOwned>(
        &self,
        from: &[u8],
        to: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, V), StoreError>> + '_ {
        self.decoded(self.raw_range(from, Some(to)))
    }

    /// Number of entries (walks the tree; 0 if PostgreSQL cannot be asked).
    pub fn len(&self) -> usize {
        match &self.raw {
            Raw::Sled(t) => t.len(),
            Raw::Pg(p) => p.count(self.name).unwrap_or_else(|e| {
                tracing::warn!(tree = self.name, error = %e, "cannot count entries");
                0
            }) as usize,
        }
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        match &self.raw {
            Raw::Sled(t) => t.is_empty(),
            Raw::Pg(p) => p.is_empty(self.name).unwrap_or(true),
        }
    }
}

/// Waits (up to 10 s) until no one holds sled's lock on `file`: the lock is
/// an `flock` on the open file, released when sled's last user of it lets go.
async fn wait_unlocked(file: &Path) {
    use nix::fcntl::{Flock, FlockArg};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let Ok(f) = std::fs::File::open(file) else {
            return;
        };
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(held) => {
                drop(held);
                return;
            }
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            Err((_, e)) => {
                tracing::warn!(file = %file.display(), error = %e, "store still locked after close");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_durable_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            let t = s.table("t").unwrap();
            t.put(b"k", &("v".to_string(), 3u32)).unwrap();
            assert_eq!(s.next_id("job").unwrap(), 1);
            assert_eq!(s.next_id("job").unwrap(), 2);
            drop(t);
            s.close().await.unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let t = s.table("t").unwrap();
        assert_eq!(
            t.get::<(String, u32)>(b"k").unwrap(),
            Some(("v".to_string(), 3))
        );
        assert_eq!(s.next_id("job").unwrap(), 3);
    }

    #[tokio::test]
    async fn concurrent_durable_calls_share_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let t = s.table("t").unwrap();
        let mut tasks = Vec::new();
        for i in 0..200u32 {
            let (s, t) = (s.clone(), t.clone());
            tasks.push(tokio::spawn(async move {
                t.put(&i.to_be_bytes(), &i).unwrap();
                s.durable().await.unwrap();
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert!(
            s.flusher().flushes() < 200,
            "flushes: {}",
            s.flusher().flushes()
        );
        assert_eq!(t.len(), 200);
    }

    #[tokio::test]
    async fn durable_returns_only_after_an_fsync_that_began_after_the_write() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let t = s.table("t").unwrap();
        let mut tasks = Vec::new();
        for i in 0..40u32 {
            let (s, t) = (s.clone(), t.clone());
            tasks.push(tokio::spawn(async move {
                for j in 0..5u32 {
                    t.put(&(i * 100 + j).to_be_bytes(), &j).unwrap();
                    // Any round numbered above this one began after the write.
                    let (begun, _) = s.flusher().fsync_rounds();
                    s.durable().await.unwrap();
                    let (_, through) = s.flusher().fsync_rounds();
                    assert!(
                        through > begun,
                        "durable() returned with fsync round {through} done, \
                         but the write was made when round {begun} had begun"
                    );
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let (begun, through) = s.flusher().fsync_rounds();
        assert_eq!(begun, through);
        // Group commit: far fewer fsync rounds than the 200 writes.
        assert!(begun < 200, "fsync rounds: {begun}");
    }

    #[tokio::test]
    async fn without_fsync_no_round_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_without_fsync(dir.path()).unwrap();
        s.table("t").unwrap().put(b"k", &1u8).unwrap();
        s.durable().await.unwrap();
        assert_eq!(s.flusher().fsync_rounds(), (0, 0));
    }
}

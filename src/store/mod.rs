//! Durable state: the only importer of sled.
//!
//! One sled database per node, a few fixed trees, MessagePack values and
//! big-endian integer keys (see [`keys`]). Writes become durable only through
//! [`Store::durable`], a group commit: every caller waiting at the same time
//! shares one flush and one fsync (sled's own flush stops short of stable
//! storage; see `flush.rs`). Callers acknowledge to a peer only after it
//! returns. Nothing outside this module sees sled or decides when to sync.

mod flush;
pub use flush::longest_stall;
pub mod keys;
mod outbox;
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
}

/// A node's database.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    flusher: Arc<flush::Flusher>,
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
        Ok(Store { db, flusher })
    }

    /// A typed view of one tree.
    pub fn table(&self, name: &'static str) -> Result<Table, StoreError> {
        Ok(Table {
            name,
            tree: self.db.open_tree(name)?,
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
        self.flusher.durable().await
    }

    /// Resolves when a flush fails (typically a full disk). From then on
    /// nothing can be made durable: the node must stop acknowledging and
    /// reopen the database once the disk accepts writes again.
    pub async fn failed(&self) -> StoreError {
        StoreError::Flush(self.flusher.failed().await)
    }

    /// Flushes and releases the database, so that it can be opened again in
    /// this process (other clones must be dropped first).
    pub async fn close(self) -> Result<(), StoreError> {
        self.durable().await?;
        let task = self.flusher.take_task();
        drop(self);
        if let Some(t) = task {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        Ok(())
    }

    /// A counter kept in the `meta` tree; returns the next value (from 1).
    pub fn next_id(&self, name: &str) -> Result<u64, StoreError> {
        let meta = self.db.open_tree("meta")?;
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
    tree: sled::Tree,
}

impl Table {
    pub(crate) fn decode<V: DeserializeOwned>(&self, bytes: &[u8]) -> Result<V, StoreError> {
        rmp_serde::from_slice(bytes).map_err(|e| StoreError::Corrupt {
            tree: self.name.to_string(),
            reason: e.to_string(),
        })
    }

    /// The value at `key`.
    pub fn get<V: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<V>, StoreError> {
        match self.tree.get(key)? {
            Some(b) => Ok(Some(self.decode(&b)?)),
            None => Ok(None),
        }
    }

    /// Whether `key` is present.
    pub fn contains(&self, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self.tree.contains_key(key)?)
    }

    /// Writes `value` at `key` (durable after [`Store::durable`]).
    pub fn put<V: Serialize>(&self, key: &[u8], value: &V) -> Result<(), StoreError> {
        self.tree.insert(key, rmp_serde::to_vec_named(value)?)?;
        Ok(())
    }

    /// Writes many values. Not atomic as a group (sled's batches cost two
    /// log writes each): after a crash, a prefix of the writes may be there,
    /// so callers write the record that marks an operation done last.
    pub fn put_many<'a, V: Serialize + 'a>(
        &self,
        items: impl IntoIterator<Item = (Vec<u8>, &'a V)>,
    ) -> Result<(), StoreError> {
        for (k, v) in items {
            self.tree.insert(k, rmp_serde::to_vec_named(v)?)?;
        }
        Ok(())
    }

    /// Removes `key`.
    pub fn remove(&self, key: &[u8]) -> Result<(), StoreError> {
        self.tree.remove(key)?;
        Ok(())
    }

    /// Every entry whose key starts with `prefix`, in key order.
    pub fn scan<V: DeserializeOwned>(
        &self,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, V), StoreError>> + '_ {
        self.tree.scan_prefix(prefix).map(move |r| {
            let (k, v) = r?;
            Ok((k.to_vec(), self.decode(&v)?))
        })
    }

    /// Entries with keys in `[from, ..)`, in key order.
    pub fn range_from<V: DeserializeOwned>(
        &self,
        from: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, V), StoreError>> + '_ {
        self.tree.range(from.to_vec()..).map(move |r| {
            let (k, v) = r?;
            Ok((k.to_vec(), self.decode(&v)?))
        })
    }

    /// Entries with keys in `[from, to)`, in key order; nothing past `to` is read.
    pub fn range<V: DeserializeOwned>(
        &self,
        from: &[u8],
        to: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, V), StoreError>> + '_ {
        self.tree.range(from.to_vec()..to.to_vec()).map(move |r| {
            let (k, v) = r?;
            Ok((k.to_vec(), self.decode(&v)?))
        })
    }

    /// Number of entries (walks the tree).
    pub fn len(&self) -> usize {
        self.tree.len()
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
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
            s.flusher.flushes() < 200,
            "flushes: {}",
            s.flusher.flushes()
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
                    let (begun, _) = s.flusher.fsync_rounds();
                    s.durable().await.unwrap();
                    let (_, through) = s.flusher.fsync_rounds();
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
        let (begun, through) = s.flusher.fsync_rounds();
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
        assert_eq!(s.flusher.fsync_rounds(), (0, 0));
    }
}

//! Atomic writes across several tables: all of them reach the database, or
//! none does, also across a crash.
//!
//! [`Store::atomically`] runs a closure over a [`Txn`] (sled's multi-tree
//! transaction underneath). The closure may run more than once when another
//! writer touches the same keys, so it must do no I/O and keep no effects
//! outside the transaction: compute everything first, write inside.
//! Durability is still [`Store::durable`]'s job: an atomic write is atomic
//! when it reaches the disk, and reaches it at the next flush.
//!
//! On PostgreSQL the change is a savepoint in the open transaction (see
//! `pg/`): the closure runs once, its reads see its writes, and it
//! reaches the database at the next commit.

use super::{Backend, Store, StoreError, Table};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sled::transaction::{
    ConflictableTransactionError, TransactionError, TransactionalTree, UnabortableTransactionError,
};
use sled::Transactional;

/// An error inside an atomic write: a conflict (the write is retried) or
/// a failure that aborts it. `?` converts [`StoreError`]s into aborts.
#[derive(Debug)]
pub struct TxnError(ConflictableTransactionError<StoreError>);

impl From<StoreError> for TxnError {
    fn from(e: StoreError) -> TxnError {
        TxnError(ConflictableTransactionError::Abort(e))
    }
}

impl From<UnabortableTransactionError> for TxnError {
    fn from(e: UnabortableTransactionError) -> TxnError {
        TxnError(e.into())
    }
}

impl From<rmp_serde::encode::Error> for TxnError {
    fn from(e: rmp_serde::encode::Error) -> TxnError {
        TxnError(ConflictableTransactionError::Abort(StoreError::Encode(e)))
    }
}

/// Anything an atomic change can name: a [`Table`] or a typed tree.
pub trait AsTable {
    /// The untyped table underneath.
    fn as_table(&self) -> &Table;
}

impl AsTable for Table {
    fn as_table(&self) -> &Table {
        self
    }
}

/// The writes of one atomic change, over the tables named when it began.
pub struct Txn<'a> {
    tables: &'a [&'a dyn AsTable],
    /// sled's views of the tables; `None` on PostgreSQL, where the change
    /// is a savepoint and the tables are written directly.
    views: Option<&'a [TransactionalTree]>,
}

impl Txn<'_> {
    /// sled's view of `table` (`None` on PostgreSQL), once it is known to be named.
    fn view(&self, table: &Table) -> Result<Option<&TransactionalTree>, TxnError> {
        let i = self
            .tables
            .iter()
            .position(|t| t.as_table().name == table.name)
            .ok_or_else(|| {
                TxnError::from(StoreError::Corrupt {
                    tree: table.name.to_string(),
                    reason: "table written in an atomic change that did not name it".into(),
                })
            })?;
        Ok(self.views.and_then(|v| v.get(i)))
    }

    /// Writes `value` at `key` of `table`.
    pub fn put<V: Serialize>(&self, table: &Table, key: &[u8], value: &V) -> Result<(), TxnError> {
        let bytes = rmp_serde::to_vec_named(value)?;
        match self.view(table)? {
            Some(v) => {
                v.insert(key, bytes)?;
            }
            None => table.raw_write(key, Some(bytes))?,
        }
        Ok(())
    }

    /// Removes `key` from `table`.
    pub fn remove(&self, table: &Table, key: &[u8]) -> Result<(), TxnError> {
        match self.view(table)? {
            Some(v) => {
                v.remove(key)?;
            }
            None => table.raw_write(key, None)?,
        }
        Ok(())
    }

    /// The value at `key` of `table`, as this change sees it.
    pub fn get<V: DeserializeOwned>(
        &self,
        table: &Table,
        key: &[u8],
    ) -> Result<Option<V>, TxnError> {
        match self.view(table)? {
            Some(v) => match v.get(key)? {
                Some(b) => Ok(Some(table.decode(&b)?)),
                None => Ok(None),
            },
            None => Ok(table.get(key)?),
        }
    }
}

/// What a failed change returns to the caller.
fn outcome(e: ConflictableTransactionError<StoreError>) -> StoreError {
    match e {
        ConflictableTransactionError::Abort(e) => e,
        ConflictableTransactionError::Storage(e) => StoreError::Sled(e),
        // Only sled reports conflicts, and retries them itself.
        _ => StoreError::Pg("conflicting change".into()),
    }
}

impl Store {
    /// Runs `f` as one atomic change over `tables` (every table `f` writes
    /// must be named). `f` may run more than once: no I/O inside.
    pub fn atomically<A>(
        &self,
        tables: &[&dyn AsTable],
        f: impl Fn(&Txn<'_>) -> Result<A, TxnError>,
    ) -> Result<A, StoreError> {
        if let Backend::Pg(pg) = &self.backend {
            return pg.atomically(|| {
                let txn = Txn {
                    tables,
                    views: None,
                };
                f(&txn).map_err(|e| outcome(e.0))
            });
        }
        let trees = tables
            .iter()
            .map(|t| t.as_table().sled())
            .collect::<Result<Vec<_>, _>>()?;
        let r = trees
            .as_slice()
            .transaction(|views: &Vec<TransactionalTree>| {
                let txn = Txn {
                    tables,
                    views: Some(views),
                };
                f(&txn).map_err(|e| e.0)
            });
        match r {
            Ok(a) => Ok(a),
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(StoreError::Sled(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_across_tables_land_together_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let (a, b) = (s.table("a").unwrap(), s.table("b").unwrap());
        a.put(b"old", &1u32).unwrap();
        s.atomically(&[&a, &b], |w| {
            w.put(&a, b"k", &"one".to_string())?;
            w.put(&b, b"k", &2u32)?;
            w.remove(&a, b"old")?;
            assert_eq!(w.get::<String>(&a, b"k")?, Some("one".into()));
            Ok(())
        })
        .unwrap();
        assert_eq!(a.get::<String>(b"k").unwrap(), Some("one".into()));
        assert_eq!(b.get::<u32>(b"k").unwrap(), Some(2));
        assert!(!a.contains(b"old").unwrap());

        // An abort halfway leaves nothing of the change.
        let r: Result<(), _> = s.atomically(&[&a, &b], |w| {
            w.put(&a, b"x", &1u32)?;
            Err(StoreError::Flush("refused".into()).into())
        });
        assert!(matches!(r, Err(StoreError::Flush(_))));
        assert!(!a.contains(b"x").unwrap());
    }

    #[tokio::test]
    async fn a_table_not_named_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let (a, b) = (s.table("a").unwrap(), s.table("b").unwrap());
        let r = s.atomically(&[&a], |w| {
            w.put(&a, b"k", &1u32)?;
            w.put(&b, b"k", &1u32)
        });
        assert!(matches!(r, Err(StoreError::Corrupt { .. })), "{r:?}");
        assert!(!a.contains(b"k").unwrap());
    }

    #[tokio::test]
    async fn a_large_change_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            let (a, b) = (s.table("a").unwrap(), s.table("b").unwrap());
            s.atomically(&[&a, &b], |w| {
                for i in 0..20_000u32 {
                    w.put(&a, &i.to_be_bytes(), &i)?;
                }
                w.put(&b, b"done", &true)
            })
            .unwrap();
            drop((a, b));
            s.close().await.unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.table("a").unwrap().len(), 20_000);
        assert_eq!(
            s.table("b").unwrap().get::<bool>(b"done").unwrap(),
            Some(true)
        );
    }
}

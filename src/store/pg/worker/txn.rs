//! The store thread's open transaction: begin, batched writes, savepoints,
//! fences and the commit; the first failure poisons it so it never commits.

use super::conn::describe;
use super::{pg, Batch, Worker};
use crate::store::pg::notify::Announce;
use crate::store::StoreError;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The open transaction.
pub(super) struct Txn {
    pub(super) began: Instant,
    /// Savepoints open (nested `atomically`).
    pub(super) depth: u32,
    /// The first failure inside it, and the savepoint depth it happened at:
    /// the transaction can no longer commit (a rollback to a savepoint at
    /// or below that depth clears it).
    pub(super) poisoned: Option<(String, u32)>,
    /// The notices its commit sends (`notify.rs`), each with the savepoint
    /// depth it was written at (a rolled-back savepoint takes its own back).
    pub(super) notices: BTreeMap<String, u32>,
    /// The connection it began on ([`Conn::gen`]; 0: none).
    pub(super) gen: u64,
    /// It began on the server (false: it failed before, so nothing of it
    /// ever reached PostgreSQL).
    pub(super) began_there: bool,
}

impl Worker {
    /// Opens the transaction if none is.
    pub(super) async fn begin(&mut self) -> Result<(), StoreError> {
        if self.txn.is_none() {
            let c = self.conn().await?;
            let mut gen = c.gen;
            if let Err(e) = c.client.batch_execute("BEGIN").await {
                if !c.client.is_closed() {
                    return Err(pg(e));
                }
                // The connection died while nothing was open on it (say, the
                // database restarted under an idle HQ): nothing is lost, so
                // open a new one at once and begin there.
                self.conn = None;
                self.last_attempt = Instant::now()
                    .checked_sub(Duration::from_secs(2))
                    .unwrap_or_else(Instant::now);
                let c = self.conn().await?;
                gen = c.gen;
                c.client.batch_execute("BEGIN").await.map_err(pg)?;
            }
            self.txn = Some(Txn {
                began: Instant::now(),
                depth: 0,
                poisoned: None,
                notices: Default::default(),
                gen,
                began_there: true,
            });
        }
        Ok(())
    }

    /// Marks the open transaction failed at its current depth.
    pub(super) fn poison(&mut self, why: String) {
        match self.txn.as_mut() {
            Some(t) => {
                if t.poisoned.is_none() {
                    t.poisoned = Some((why, t.depth));
                }
            }
            None => {
                self.txn = Some(Txn {
                    began: Instant::now(),
                    depth: 0,
                    poisoned: Some((why, 0)),
                    notices: Default::default(),
                    gen: 0,
                    began_there: false,
                })
            }
        }
    }

    pub(super) async fn write(&mut self, batch: Batch) {
        if self.txn.as_ref().is_some_and(|t| t.poisoned.is_some()) {
            return;
        }
        if let Err(e) = self.begin().await {
            self.poison(e.to_string());
            return;
        }
        let (mut put_t, mut put_k, mut put_v) = (Vec::new(), Vec::new(), Vec::new());
        let (mut del_t, mut del_k) = (Vec::new(), Vec::new());
        let rows = batch.len() as u64;
        let mut notices = std::collections::BTreeSet::new();
        for ((t, k), v) in batch {
            self.announce.note(&mut notices, t, &k, v.is_some());
            match v {
                Some(v) => {
                    put_t.push(t);
                    put_k.push(k);
                    put_v.push(v);
                }
                None => {
                    del_t.push(t);
                    del_k.push(k);
                }
            }
        }
        let r = async {
            let c = self.conn().await?;
            let mut statements = 0;
            if !put_t.is_empty() {
                c.client
                    .execute(&c.st.upsert, &[&put_t, &put_k, &put_v])
                    .await
                    .map_err(pg)?;
                statements += 1;
            }
            if !del_t.is_empty() {
                c.client
                    .execute(&c.st.delete, &[&del_t, &del_k])
                    .await
                    .map_err(pg)?;
                statements += 1;
            }
            Ok::<_, StoreError>(statements)
        }
        .await;
        match r {
            Ok(n) => {
                self.stats.write_statements.fetch_add(n, Ordering::Relaxed);
                self.stats.rows_written.fetch_add(rows, Ordering::Relaxed);
                if let Some(t) = self.txn.as_mut() {
                    for n in notices {
                        t.notices.entry(n).or_insert(t.depth);
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "write to PostgreSQL failed");
                self.poison(e.to_string());
            }
        }
    }

    /// Commits the open transaction: Ok once PostgreSQL has it on disk.
    pub(super) async fn commit(&mut self) -> Result<(), String> {
        if let Some(e) = self.failed.borrow().clone() {
            // Writes were lost (perhaps in a commit nobody waited for): no
            // later commit may claim that what came before it is durable.
            self.txn.take();
            return Err(e);
        }
        let Some(t) = self.txn.take() else {
            return Ok(());
        };
        if t.depth > 0 {
            // Only reached from the idle timer, which skips savepoints.
            self.txn = Some(t);
            return Ok(());
        }
        let r = match t.poisoned {
            Some((why, _)) if !t.began_there => {
                // It never began (PostgreSQL could not be reached): its
                // writers are told, and nothing else was lost. What this
                // process derived from those writes is re-read.
                tracing::warn!(error = %why, "writes refused: PostgreSQL not reachable");
                self.announce.lost_here();
                return Err(format!("PostgreSQL not reachable: {why}"));
            }
            Some((why, _)) => {
                if let Ok(c) = self.conn().await {
                    let _ = c.client.batch_execute("ROLLBACK").await;
                }
                Err(why)
            }
            None => match self.conn().await {
                Ok(c) if c.gen != t.gen => {
                    Err("the connection to PostgreSQL was lost inside a transaction".to_string())
                }
                // The notices go in the same transaction: sent if it commits.
                Ok(c) => c
                    .client
                    .batch_execute(&match Announce::statement(t.notices.keys()) {
                        Some(notify) => format!("{notify}; COMMIT"),
                        None => "COMMIT".to_string(),
                    })
                    .await
                    .map_err(|e| describe(&e)),
                Err(e) => Err(e.to_string()),
            },
        };
        match &r {
            Ok(()) => {
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                let e = format!("writes to PostgreSQL were lost: {e}");
                tracing::error!(error = %e, "commit failed; not acknowledging");
                self.failed.send_if_modified(|f| {
                    let first = f.is_none();
                    if first {
                        *f = Some(e.clone());
                    }
                    first
                });
            }
        }
        r
    }

    /// Whether this connection holds advisory lock `key`, in the open
    /// transaction begun on it: if so, no other session can hold the lock
    /// until this transaction has committed or died with the connection.
    pub(super) async fn fence(&mut self, key: i64) -> Result<bool, StoreError> {
        self.begin().await?;
        if self.conn.as_ref().is_some_and(|c| c.duties.contains(&key)) {
            return Ok(true);
        }
        self.try_duty(key).await
    }

    /// Ends the innermost savepoint with `verb` (RELEASE or ROLLBACK TO).
    pub(super) async fn end_savepoint(&mut self, verb: &str) -> Result<(), StoreError> {
        let depth = self.txn.as_ref().map_or(0, |t| t.depth);
        if depth == 0 {
            return Err(StoreError::Pg("no savepoint open".into()));
        }
        let r = async {
            self.conn()
                .await?
                .client
                .batch_execute(&format!("{verb} s{depth}"))
                .await
                .map_err(pg)
        }
        .await;
        if let Some(t) = self.txn.as_mut() {
            t.depth = depth - 1;
            for at in t.notices.values_mut() {
                *at = (*at).min(depth - 1);
            }
        }
        if let Err(e) = &r {
            self.poison(e.to_string());
        }
        r
    }

    pub(super) async fn rollback_savepoint(&mut self) -> Result<(), StoreError> {
        let depth = self.txn.as_ref().map_or(0, |t| t.depth);
        let r = async {
            self.conn()
                .await?
                .client
                .batch_execute(&format!(
                    "ROLLBACK TO SAVEPOINT s{depth}; RELEASE SAVEPOINT s{depth}"
                ))
                .await
                .map_err(pg)
        }
        .await;
        if let Some(t) = self.txn.as_mut() {
            t.depth = depth.saturating_sub(1);
            t.notices.retain(|_, at| *at < depth);
            if r.is_ok() && t.poisoned.as_ref().is_some_and(|(_, at)| *at >= depth) {
                t.poisoned = None;
            }
        }
        if let Err(e) = &r {
            self.poison(e.to_string());
        }
        r
    }
}

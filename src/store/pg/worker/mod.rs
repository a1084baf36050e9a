//! The store thread: owns the PostgreSQL connection, its runtime, the open
//! transaction and the migrations. Answers [`Req`]s in the order they were
//! sent; decides nothing about what is stored.
use super::notify::Announce;
use super::{Req, Stats};
use crate::store::StoreError;
use conn::{describe, redact, Conn, Stmts};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;
use tokio_postgres::Statement;
use txn::Txn;

mod conn;
mod txn;

/// Writes sent as one statement at most.
const MAX_BATCH: usize = 2048;

/// Starts the store thread; returns once it is connected and migrated, or
/// with the reason it could not be.
pub(super) fn start(
    url: String,
    ca_hash: String,
    rx: Receiver<Req>,
    failed: watch::Sender<Option<String>>,
    stats: Arc<Stats>,
    announce: Arc<Announce>,
) -> Result<(), StoreError> {
    let shown = redact(&url);
    let (ready, is_ready) = std::sync::mpsc::sync_channel(1);
    let refuse = |reason: String| StoreError::Connect {
        url: shown.clone(),
        reason,
    };
    std::thread::Builder::new()
        .name("store-pg".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready.send(Err(e.to_string()));
                    return;
                }
            };
            let conn = rt.block_on(async { Conn::open(&url, &ca_hash).await });
            let conn = match conn {
                Ok(c) => {
                    let _ = ready.send(Ok(()));
                    c
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            let mut w = Worker {
                url,
                ca_hash,
                conn: Some(conn),
                last_attempt: Instant::now(),
                txn: None,
                failed,
                stats,
                announce,
                conns: 1,
            };
            w.run(&rt, rx);
        })
        .map_err(|e| refuse(e.to_string()))?;
    match is_ready.recv() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(reason)) => Err(refuse(reason)),
        Err(_) => Err(refuse("the store thread stopped".into())),
    }
}

struct Worker {
    url: String,
    ca_hash: String,
    conn: Option<Conn>,
    last_attempt: Instant,
    txn: Option<Txn>,
    failed: watch::Sender<Option<String>>,
    stats: Arc<Stats>,
    announce: Arc<Announce>,
    /// Connections opened so far.
    conns: u64,
}

type Batch = BTreeMap<(&'static str, Vec<u8>), Option<Vec<u8>>>;

impl Worker {
    fn run(&mut self, rt: &tokio::runtime::Runtime, rx: Receiver<Req>) {
        let mut next: Option<Req> = None;
        // Writes not sent yet: they go out, as statements of many rows,
        // only when something must see them (a read, a savepoint, a
        // commit), when [`MAX_BATCH`] are held, or after [`IDLE`]; so a
        // batch of events is one statement however its writes trickle in.
        let mut held = Batch::new();
        let mut held_since = Instant::now();
        loop {
            let req = match next.take() {
                Some(r) => r,
                None => {
                    let since = match self.txn.as_ref() {
                        Some(t) if t.depth == 0 => Some(t.began),
                        _ if !held.is_empty() => Some(held_since),
                        _ => None,
                    };
                    let got = match since {
                        Some(t) => rx.recv_timeout(IDLE.saturating_sub(t.elapsed())),
                        None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                    };
                    match got {
                        Ok(r) => r,
                        Err(e) => {
                            self.send(rt, &mut held);
                            let _ = rt.block_on(self.commit());
                            if e == RecvTimeoutError::Disconnected {
                                // Every handle is gone: committed what was left.
                                return;
                            }
                            continue;
                        }
                    }
                }
            };
            match req {
                Req::Write { tree, key, value } => {
                    if held.is_empty() {
                        held_since = Instant::now();
                    }
                    self.hold(rt, &mut held, tree, key, value);
                }
                Req::Commit { reply } => {
                    // Every write and commit request queued behind this one
                    // goes with it: one COMMIT answers every commit request
                    // (each asked for the writes before it; later ones are
                    // only committed sooner).
                    let mut replies = vec![reply];
                    while let Ok(r) = rx.try_recv() {
                        match r {
                            Req::Write { tree, key, value } => {
                                self.hold(rt, &mut held, tree, key, value)
                            }
                            Req::Commit { reply } => replies.push(reply),
                            other => {
                                next = Some(other);
                                break;
                            }
                        }
                    }
                    self.send(rt, &mut held);
                    let r = rt.block_on(self.commit());
                    for reply in replies {
                        let _ = reply.send(r.clone());
                    }
                }
                other => {
                    // A read sees every write before it; a savepoint
                    // begins or ends after them.
                    self.send(rt, &mut held);
                    rt.block_on(self.answer(other));
                }
            }
        }
    }

    /// Holds one write; sends the held ones once there are [`MAX_BATCH`].
    fn hold(
        &mut self,
        rt: &tokio::runtime::Runtime,
        held: &mut Batch,
        tree: &'static str,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
    ) {
        held.insert((tree, key), value);
        if held.len() >= MAX_BATCH {
            self.send(rt, held);
        }
    }

    /// Sends the held writes (if any) into the open transaction.
    fn send(&mut self, rt: &tokio::runtime::Runtime, held: &mut Batch) {
        if !held.is_empty() {
            rt.block_on(self.write(std::mem::take(held)));
        }
    }

    async fn answer(&mut self, req: Req) {
        match req {
            Req::Get { tree, key, reply } => {
                let r = self.read(|c| {
                    Box::pin(async move {
                        let row = c.client.query_opt(&c.st.get, &[&tree, &key]).await?;
                        Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
                    })
                });
                let _ = reply.send(r.await);
            }
            Req::GetMany { tree, keys, reply } => {
                let r = self.read(|c| {
                    Box::pin(async move {
                        let rows = c.client.query(&c.st.get_many, &[&tree, &keys]).await?;
                        Ok(rows
                            .into_iter()
                            .map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, Vec<u8>>(1)))
                            .collect())
                    })
                });
                let _ = reply.send(r.await);
            }
            Req::Page {
                tree,
                from,
                to,
                limit,
                reply,
            } => {
                let r = self.read(|c| {
                    Box::pin(async move {
                        let rows = match &to {
                            Some(to) => {
                                c.client
                                    .query(&c.st.page_to, &[&tree, &from, to, &limit])
                                    .await?
                            }
                            None => {
                                c.client
                                    .query(&c.st.page_open, &[&tree, &from, &limit])
                                    .await?
                            }
                        };
                        Ok(rows
                            .into_iter()
                            .map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, Vec<u8>>(1)))
                            .collect())
                    })
                });
                let _ = reply.send(r.await);
            }
            Req::Count { tree, reply } => {
                let r = self.read_number(|st| &st.count, tree.to_string());
                let _ = reply.send(r.await);
            }
            Req::NextId { name, reply } => {
                let seq = format!("relaytree_id_{name}");
                let _ = reply.send(self.read_number(|st| &st.next_id, seq).await);
            }
            Req::Duty { key, reply } => {
                let live = |c: &Conn| !c.client.is_closed() && c.duties.contains(&key);
                if self.conn.as_ref().is_some_and(live) {
                    let _ = reply.send(Ok(true));
                    return;
                }
                let _ = reply.send(self.try_duty(key).await);
            }
            Req::Fence { key, reply } => {
                let r = self.fence(key).await;
                if let Err(e) = &r {
                    self.poison(e.to_string());
                }
                let _ = reply.send(r);
            }
            Req::Savepoint { reply } => {
                let r = async {
                    self.begin().await?;
                    let depth = self.txn.as_ref().map_or(0, |t| t.depth) + 1;
                    self.conn()
                        .await?
                        .client
                        .batch_execute(&format!("SAVEPOINT s{depth}"))
                        .await
                        .map_err(pg)?;
                    if let Some(t) = self.txn.as_mut() {
                        t.depth = depth;
                    }
                    Ok::<(), StoreError>(())
                }
                .await;
                if let Err(e) = &r {
                    self.poison(e.to_string());
                }
                let _ = reply.send(r);
            }
            Req::Release { reply } => {
                let poisoned = self.txn.as_ref().and_then(|t| {
                    t.poisoned
                        .as_ref()
                        .filter(|(_, at)| *at >= t.depth)
                        .map(|(why, _)| why.clone())
                });
                let r = match poisoned {
                    // A write inside failed: undo the savepoint's writes.
                    Some(why) => {
                        let _ = self.rollback_savepoint().await;
                        Err(StoreError::Pg(why))
                    }
                    None => self.end_savepoint("RELEASE SAVEPOINT").await,
                };
                let _ = reply.send(r);
            }
            Req::Rollback { reply } => {
                let _ = reply.send(self.rollback_savepoint().await);
            }
            Req::Write { .. } | Req::Commit { .. } => {}
        }
    }

    /// Takes advisory lock `key` for this session if it is free, and
    /// remembers it in [`Conn::duties`].
    async fn try_duty(&mut self, key: i64) -> Result<bool, StoreError> {
        let got = self
            .read(|c| {
                Box::pin(async move {
                    let got: bool = c
                        .client
                        .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
                        .await?
                        .get(0);
                    Ok(got)
                })
            })
            .await?;
        if got {
            if let Some(c) = self.conn.as_mut() {
                c.duties.insert(key);
            }
        }
        Ok(got)
    }

    /// Reads the number statement `pick` answers for `arg` (one row, one
    /// bigint; below zero reads as 0).
    async fn read_number(
        &mut self,
        pick: fn(&Stmts) -> &Statement,
        arg: String,
    ) -> Result<u64, StoreError> {
        self.read(|c| {
            Box::pin(async move {
                let n: i64 = c.client.query_one(pick(&c.st), &[&arg]).await?.get(0);
                Ok(n.max(0) as u64)
            })
        })
        .await
    }

    /// Runs a read; inside a failed transaction it fails without asking.
    async fn read<T>(
        &mut self,
        f: impl for<'c> FnOnce(
            &'c Conn,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, tokio_postgres::Error>> + 'c>,
        >,
    ) -> Result<T, StoreError> {
        if let Some((why, _)) = self.txn.as_ref().and_then(|t| t.poisoned.as_ref()) {
            return Err(StoreError::Pg(why.clone()));
        }
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        let c = self.conn().await?;
        match f(c).await {
            Ok(v) => Ok(v),
            Err(e) => {
                let e = pg(e);
                if self.txn.is_some() {
                    // A failed statement aborts the transaction.
                    self.poison(e.to_string());
                }
                Err(e)
            }
        }
    }
}

use super::IDLE_COMMIT as IDLE;

fn pg(e: tokio_postgres::Error) -> StoreError {
    StoreError::Pg(describe(&e))
}

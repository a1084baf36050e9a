//! The store thread: owns the PostgreSQL connection, its runtime, the open
//! transaction and the migrations. Answers [`Req`]s in the order they were
//! sent; decides nothing about what is stored.

use super::notify::Announce;
use super::{Req, Stats};
use crate::store::StoreError;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls, Statement};

/// The migrations in `migrations/`, applied in order.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../../migrations/0001_hq_state.sql")),
    (
        2,
        include_str!("../../../migrations/0002_more_counters.sql"),
    ),
];

/// The newest schema this build knows.
pub const SCHEMA: i32 = 2;

/// Key of the advisory lock that serialises migrations between HQs.
const MIGRATION_LOCK: i64 = 0x7265_6c61_7974_7265; // "relaytre"

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

/// `url` without a password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let user = &url[s + 3..at];
            match user.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &user[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// A PostgreSQL error with its cause ("db error: ERROR: ...").
fn describe(e: &tokio_postgres::Error) -> String {
    match std::error::Error::source(e) {
        Some(s) => format!("{e}: {s}"),
        None => e.to_string(),
    }
}

/// Creates the schema up to [`SCHEMA`], refuses a newer one, and records
/// or checks the CA's hash; one HQ at a time (advisory lock).
async fn migrate(client: &Client, ca_hash: &str) -> Result<(), String> {
    let d = |e: tokio_postgres::Error| describe(&e);
    client.batch_execute("BEGIN").await.map_err(d)?;
    client
        .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(d)?;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_version (
                 version integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .map_err(d)?;
    let found: Option<i32> = client
        .query_one("SELECT max(version) FROM schema_version", &[])
        .await
        .map_err(d)?
        .get(0);
    let found = found.unwrap_or(0);
    if found > SCHEMA {
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(format!(
            "the database has schema version {found}, newer than this build's {SCHEMA}: \
             upgrade relaytree"
        ));
    }
    for (v, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > found) {
        client
            .batch_execute(sql)
            .await
            .map_err(|e| format!("migration {v}: {}", describe(&e)))?;
        client
            .execute("INSERT INTO schema_version (version) VALUES ($1)", &[v])
            .await
            .map_err(d)?;
        tracing::info!(version = v, "database schema migrated");
    }
    client
        .execute(
            "INSERT INTO cluster (name, value) VALUES ('ca_hash', $1) ON CONFLICT (name) DO NOTHING",
            &[&ca_hash],
        )
        .await
        .map_err(d)?;
    let theirs: String = client
        .query_one("SELECT value FROM cluster WHERE name = 'ca_hash'", &[])
        .await
        .map_err(d)?
        .get(0);
    if theirs != ca_hash {
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(format!(
            "the database belongs to an HQ with another CA ({theirs}, this one is {ca_hash}): \
             HQs sharing a database must come from one `hq init`"
        ));
    }
    client.batch_execute("COMMIT").await.map_err(d)
}

/// The prepared statements.
struct Stmts {
    get: Statement,
    get_many: Statement,
    upsert: Statement,
    delete: Statement,
    page_to: Statement,
    page_open: Statement,
    count: Statement,
    next_id: Statement,
}

/// One connection and its statements.
struct Conn {
    client: Client,
    st: Stmts,
    /// Advisory locks (duties) this session holds.
    duties: std::collections::BTreeSet<i64>,
    /// Which connection of this worker it is (1, 2, ...): a transaction
    /// belongs to the one it began on.
    gen: u64,
}

impl Conn {
    /// Connects, migrates (checking the CA) and prepares the statements.
    async fn open(url: &str, ca_hash: &str) -> Result<Conn, String> {
        let mut cfg: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
            format!("not a PostgreSQL URL ({})", describe(&e))
        })?;
        cfg.connect_timeout(Duration::from_secs(5));
        cfg.application_name("relaytree-hq");
        let (client, connection) = cfg.connect(NoTls).await.map_err(|e| describe(&e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %describe(&e), "connection to PostgreSQL ended");
            }
        });
        let d = |e: tokio_postgres::Error| describe(&e);
        // Acked means committed and flushed to the WAL on disk.
        client
            .batch_execute("SET synchronous_commit = on")
            .await
            .map_err(d)?;
        migrate(&client, ca_hash).await?;
        let p = |sql: &'static str, types: &'static [Type]| {
            let c = &client;
            async move { c.prepare_typed(sql, types).await }
        };
        let st = Stmts {
            get: p(
                "SELECT value FROM entries WHERE tree = $1 AND key = $2",
                &[Type::TEXT, Type::BYTEA],
            )
            .await
            .map_err(d)?,
            get_many: p(
                "SELECT key, value FROM entries WHERE tree = $1 AND key = ANY($2)",
                &[Type::TEXT, Type::BYTEA_ARRAY],
            )
            .await
            .map_err(d)?,
            upsert: p(
                "INSERT INTO entries (tree, key, value) \
                 SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[]) \
                 ON CONFLICT (tree, key) DO UPDATE SET value = EXCLUDED.value",
                &[Type::TEXT_ARRAY, Type::BYTEA_ARRAY, Type::BYTEA_ARRAY],
            )
            .await
            .map_err(d)?,
            delete: p(
                "DELETE FROM entries WHERE (tree, key) IN \
                 (SELECT * FROM unnest($1::text[], $2::bytea[]))",
                &[Type::TEXT_ARRAY, Type::BYTEA_ARRAY],
            )
            .await
            .map_err(d)?,
            page_to: p(
                "SELECT key, value FROM entries WHERE tree = $1 AND key >= $2 AND key < $3 \
                 ORDER BY key LIMIT $4",
                &[Type::TEXT, Type::BYTEA, Type::BYTEA, Type::INT8],
            )
            .await
            .map_err(d)?,
            page_open: p(
                "SELECT key, value FROM entries WHERE tree = $1 AND key >= $2 \
                 ORDER BY key LIMIT $3",
                &[Type::TEXT, Type::BYTEA, Type::INT8],
            )
            .await
            .map_err(d)?,
            count: p(
                "SELECT count(*) FROM entries WHERE tree = $1",
                &[Type::TEXT],
            )
            .await
            .map_err(d)?,
            next_id: p("SELECT nextval(($1::text)::regclass)", &[Type::TEXT])
                .await
                .map_err(d)?,
        };
        Ok(Conn {
            client,
            st,
            duties: Default::default(),
            gen: 1,
        })
    }
}

/// The open transaction.
struct Txn {
    began: Instant,
    /// Savepoints open (nested `atomically`).
    depth: u32,
    /// The first failure inside it, and the savepoint depth it happened at:
    /// the transaction can no longer commit (a rollback to a savepoint at
    /// or below that depth clears it).
    poisoned: Option<(String, u32)>,
    /// The notices its commit sends (`notify.rs`), each with the savepoint
    /// depth it was written at (a rolled-back savepoint takes its own back).
    notices: BTreeMap<String, u32>,
    /// The connection it began on ([`Conn::gen`]; 0: none).
    gen: u64,
    /// It began on the server (false: it failed before, so nothing of it
    /// ever reached PostgreSQL).
    began_there: bool,
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

    /// The connection, re-opened if it was lost (at most once a second).
    async fn conn(&mut self) -> Result<&Conn, StoreError> {
        if self.conn.as_ref().is_some_and(|c| c.client.is_closed()) {
            self.conn = None;
        }
        if self.conn.is_none() {
            if self.last_attempt.elapsed() < Duration::from_secs(1) {
                return Err(StoreError::Pg("not connected to PostgreSQL".into()));
            }
            self.last_attempt = Instant::now();
            match Conn::open(&self.url, &self.ca_hash).await {
                Ok(mut c) => {
                    tracing::info!("reconnected to PostgreSQL");
                    self.conns += 1;
                    c.gen = self.conns;
                    self.conn = Some(c);
                    if self.txn.is_some() {
                        // The open transaction died with the old connection:
                        // its writes are lost, so it must never commit (and
                        // nothing may run on the new one as if inside it).
                        let why = "the connection to PostgreSQL was lost inside a transaction";
                        self.poison(why.into());
                        return Err(StoreError::Pg(why.into()));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reconnect to PostgreSQL");
                    return Err(StoreError::Pg(format!("not connected to PostgreSQL: {e}")));
                }
            }
        }
        self.conn
            .as_ref()
            .ok_or_else(|| StoreError::Pg("not connected to PostgreSQL".into()))
    }

    /// Opens the transaction if none is.
    async fn begin(&mut self) -> Result<(), StoreError> {
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
    fn poison(&mut self, why: String) {
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

    async fn write(&mut self, batch: Batch) {
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
    async fn commit(&mut self) -> Result<(), String> {
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
                let r = self.read(|c| {
                    Box::pin(async move {
                        let n: i64 = c.client.query_one(&c.st.count, &[&tree]).await?.get(0);
                        Ok(n.max(0) as u64)
                    })
                });
                let _ = reply.send(r.await);
            }
            Req::NextId { name, reply } => {
                let seq = format!("relaytree_id_{name}");
                let r = self.read(|c| {
                    Box::pin(async move {
                        let n: i64 = c.client.query_one(&c.st.next_id, &[&seq]).await?.get(0);
                        Ok(n.max(0) as u64)
                    })
                });
                let _ = reply.send(r.await);
            }
            Req::Duty { key, reply } => {
                let live = |c: &Conn| !c.client.is_closed() && c.duties.contains(&key);
                if self.conn.as_ref().is_some_and(live) {
                    let _ = reply.send(Ok(true));
                    return;
                }
                let r = self
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
                    .await;
                if let (Ok(true), Some(c)) = (&r, self.conn.as_mut()) {
                    c.duties.insert(key);
                }
                let _ = reply.send(r);
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

    /// Whether this connection holds advisory lock `key`, in the open
    /// transaction begun on it: if so, no other session can hold the lock
    /// until this transaction has committed or died with the connection.
    async fn fence(&mut self, key: i64) -> Result<bool, StoreError> {
        self.begin().await?;
        if self.conn.as_ref().is_some_and(|c| c.duties.contains(&key)) {
            return Ok(true);
        }
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

    /// Ends the innermost savepoint with `verb` (RELEASE or ROLLBACK TO).
    async fn end_savepoint(&mut self, verb: &str) -> Result<(), StoreError> {
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

    async fn rollback_savepoint(&mut self) -> Result<(), StoreError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h:5432/db"), "postgres://u@h:5432/db");
        assert_eq!(redact("nonsense"), "nonsense");
    }
}

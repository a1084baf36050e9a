//! The store thread's connection: opening it (connect, migrate, check the
//! CA, prepare the statements) and re-opening it when it was lost. Knows
//! nothing of transactions beyond poisoning the one a lost connection held.

use super::Worker;
use crate::store::StoreError;
use std::time::{Duration, Instant};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls, Statement};

/// The migrations in `migrations/`, applied in order.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../../../migrations/0001_hq_state.sql")),
    (
        2,
        include_str!("../../../../migrations/0002_more_counters.sql"),
    ),
];

/// The newest schema this build knows.
pub const SCHEMA: i32 = 2;

/// Key of the advisory lock that serialises migrations between HQs.
const MIGRATION_LOCK: i64 = 0x7265_6c61_7974_7265; // "relaytre"

/// `url` without a password, for messages.
pub(super) fn redact(url: &str) -> String {
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
pub(super) fn describe(e: &tokio_postgres::Error) -> String {
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
pub(super) struct Stmts {
    pub(super) get: Statement,
    pub(super) get_many: Statement,
    pub(super) upsert: Statement,
    pub(super) delete: Statement,
    pub(super) page_to: Statement,
    pub(super) page_open: Statement,
    pub(super) count: Statement,
    pub(super) next_id: Statement,
}

/// One connection and its statements.
pub(super) struct Conn {
    pub(super) client: Client,
    pub(super) st: Stmts,
    /// Advisory locks (duties) this session holds.
    pub(super) duties: std::collections::BTreeSet<i64>,
    /// Which connection of this worker it is (1, 2, ...): a transaction
    /// belongs to the one it began on.
    pub(super) gen: u64,
}

impl Conn {
    /// Connects, migrates (checking the CA) and prepares the statements.
    pub(super) async fn open(url: &str, ca_hash: &str) -> Result<Conn, String> {
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

impl Worker {
    /// The connection, re-opened if it was lost (at most once a second).
    pub(super) async fn conn(&mut self) -> Result<&Conn, StoreError> {
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

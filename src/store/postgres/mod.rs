//! The PostgreSQL backend: several daemons, one database, one truth.
//!
//! Every call takes a connection from a bounded pool ([`deadpool_postgres`]), runs one
//! statement or one short transaction, and gives the connection back. Nothing is cached
//! in the daemon: every read sees what any daemon committed before it began.
//!
//! **Exactly once, across daemons.** Each rule the traits call "atomic against every
//! concurrent call" is one conditional statement, or one short transaction whose first
//! write takes the row lock that serialises it; each implementation says in its doc
//! comment why it holds under `READ COMMITTED`, the isolation level every connection is
//! pinned to (whatever the server's default), so the reasoning does not depend on an
//! operator's setting. The lock waits are short: the transactions hold no lock across
//! anything but their own statements.
//!
//! **Bounded, never hanging.** Each connection starts with `statement_timeout` (and
//! `idle_in_transaction_session_timeout`) set, so the server cancels a query that runs
//! or waits for a lock too long. The pool has a fixed size; a call waits at most
//! `pool_wait` for a free connection and `connect_timeout` for a new one; and each
//! call as a whole has a deadline ([`PgOptions::deadline`]) past which it answers
//! `Unavailable`, which covers a network that drops packets without a word. TCP
//! keepalives and `tcp_user_timeout` close a connection to a vanished server, so the
//! pool does not keep handing it out.
//!
//! **Faults.** A refused or lost connection, a pool wait or connect that timed out, a
//! statement cancelled by its timeout, a server shutting down or in recovery (a standby
//! after failover) all become [`StoreError::Unavailable`]: the surfaces answer 503. A
//! call answers success only once its commit returned, so a success is never lost; an
//! `Unavailable` whose COMMIT was sent but not acknowledged may have committed (a code
//! then counts as used: safe). The pool drops a broken connection
//! when it comes back (`is_closed`) and opens a new one on demand, so a daemon recovers
//! by itself when the database returns.
//!
//! **Schema.** `migrations/postgres/*.sql`, applied at open by [`migrate`] under an
//! advisory lock, with the key check in the same transaction (see [`PgStore::open`]).
//! The column names are SQLite's; integer columns are `BIGINT` (read as `i64`) for
//! times, steps and TTLs, `INTEGER` (read as `i32`) for small counts and code
//! parameters; flags are `BOOLEAN`, sealed values `BYTEA`.
//!
//! Implemented so far: [`TokenStore`], [`PolicyStore`], [`PolicyTokenStore`],
//! [`crate::store::MfaStore`], [`crate::store::AgentStore`] and
//! [`crate::store::UserTotpStore`] (`mfa.rs`, `agent.rs`, `user_totp.rs`: a code's
//! check-and-record locks its `otp_secrets` row; every write about a login-step user
//! takes that user's `user_locks` row first); the other areas are still to come, so a
//! `PgStore` is not yet a [`crate::store::Store`].
//!
//! The operations areas: [`crate::store::OpsStore`] (`ops.rs`: counts and size;
//! backups are PostgreSQL's own tools, `pg_dump` and `pg_basebackup`),
//! [`crate::store::KeyStore`] (`rotate.rs`: one rotation at a time across every daemon,
//! under an advisory lock, started by the operator once every daemon has the new key)
//! and [`crate::store::TransferStore`] (`transfer.rs`: export in one snapshot, import in
//! one transaction).

mod agent;
mod dump;
mod engine;
mod mfa;
mod migrate;
mod ops;
mod policy_tokens;
mod rotate;
mod tls;
mod transfer;
mod user_totp;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::Row;

use super::{Clash, LockCounts, PolicyStore, Sealer, StoreError, TokenRecord, TokenStore};

pub use migrate::schema_version;

/// The key check, as SQLite's: a sealed known value in `meta`.
const KEY_CHECK_AAD: &str = "totpd/v1/meta/key_check";
const KEY_CHECK_PLAIN: &[u8] = b"totpd key check";

/// How to reach the database, and the bounds every call keeps.
#[derive(Clone)]
pub struct PgOptions {
    /// Where and as whom to connect, from the URL (its password never shows in `Debug`).
    pub config: tokio_postgres::Config,
    /// Connections the pool holds at most.
    pub pool_size: usize,
    /// How long a call waits for a free connection before `Unavailable`.
    pub pool_wait: Duration,
    /// How long opening one connection may take (the URL's `connect_timeout` if it
    /// gave one).
    pub connect_timeout: Duration,
    /// The server cancels any statement running (or waiting for a lock) longer.
    pub statement_timeout: Duration,
    tls: tls::Tls,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("config", &self.config)
            .field("pool_size", &self.pool_size)
            .field("pool_wait", &self.pool_wait)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("tls", &self.tls)
            .finish()
    }
}

impl PgOptions {
    /// Options from a connection URL (`postgres://user:password@host:port/dbname?...`,
    /// a Unix socket as a percent-encoded host: `postgres://totpd@%2Frun%2Fpostgresql/totpd`)
    /// or a `key=value` connection string, with the default bounds: a pool of two
    /// connections per core (at least 4, at most 32), a 2 s pool wait, a 5 s connect
    /// timeout and a 5 s statement timeout.
    ///
    /// The URL's `options` are kept (`?options=-c%20search_path%3Dtotpd` keeps totpd's
    /// tables in schema `totpd`).
    ///
    /// TLS: `sslmode=require`, `verify-ca` or `verify-full` connect over TLS (rustls)
    /// and always verify the server's certificate and host name, against `sslrootcert`
    /// (a PEM file) when the URL names one, else the system's trust store; without
    /// them (or with `disable` or `prefer`), no TLS.
    pub fn new(url: &str) -> Result<Self, StoreError> {
        let (url, tls) = tls::from_url(url)?;
        let config: tokio_postgres::Config = url.parse().map_err(|e| {
            // The URL may hold a password: say what is wrong, not the URL.
            StoreError::Setup(format!("the PostgreSQL connection URL is not valid: {e}"))
        })?;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(PgOptions {
            connect_timeout: config
                .get_connect_timeout()
                .copied()
                .unwrap_or(Duration::from_secs(5)),
            config,
            pool_size: (2 * cores).clamp(4, 32),
            pool_wait: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(5),
            tls,
        })
    }

    /// The longest one call may take, waiting, connecting and running included; past
    /// it the call answers `Unavailable`. The server-side timeouts fire first; this one
    /// catches a connection that went silent.
    pub fn deadline(&self) -> Duration {
        self.pool_wait + self.connect_timeout + self.statement_timeout + Duration::from_secs(1)
    }

    /// The connection settings with totpd's own added: the timeouts and isolation level
    /// every session starts with, keepalives, and an application name.
    fn session_config(&self) -> tokio_postgres::Config {
        let mut c = self.config.clone();
        let ms = |d: Duration| d.as_millis().max(1);
        // `-c name=value` in the startup packet: no round trip, and set before the
        // first statement. A space in a value is escaped with a backslash.
        let ours = format!(
            "-c statement_timeout={} -c idle_in_transaction_session_timeout={} \
             -c default_transaction_isolation=read\\ committed",
            ms(self.statement_timeout),
            ms(self.statement_timeout * 4),
        );
        let options = match c.get_options() {
            Some(theirs) if !theirs.trim().is_empty() => format!("{theirs} {ours}"),
            _ => ours,
        };
        c.options(options);
        if c.get_application_name().is_none() {
            c.application_name("totpd");
        }
        c.connect_timeout(self.connect_timeout);
        c.keepalives(true);
        c.keepalives_idle(Duration::from_secs(10));
        c.keepalives_interval(Duration::from_secs(5));
        c.keepalives_retries(3);
        // Data sent and not acknowledged for this long: the server is gone.
        c.tcp_user_timeout(self.statement_timeout + Duration::from_secs(5));
        c
    }
}

/// An open PostgreSQL store: a pool of connections and the sealing keys. Implements
/// [`TokenStore`], [`PolicyStore`], [`PolicyTokenStore`], [`crate::store::MfaStore`],
/// [`crate::store::AgentStore`] and [`crate::store::UserTotpStore`].
pub struct PgStore {
    pool: Pool,
    sealer: Sealer,
    deadline: Duration,
    /// Sealed values per key id, as counted at open, by the key status and by a key
    /// rotation as it goes (for the key status and metrics).
    sealed: Arc<Mutex<BTreeMap<u8, u64>>>,
    /// The database's size as last read ([`ops`]).
    size: ops::SizeCache,
    /// This daemon's key rotation ([`rotate`]).
    rotation: rotate::Rotation,
    /// Locks begun by this store's calls, counted once committed ([`PgStore::lockouts`]).
    lockouts: LockCounts,
}

/// The result of opening: the store, and whether the database was created just now.
pub struct Opened {
    pub store: Arc<PgStore>,
    pub created: bool,
}

impl PgStore {
    /// Connects, migrates the schema forward and checks `sealer`'s keys against the
    /// database, in one transaction holding `pg_advisory_xact_lock`: of several daemons
    /// starting together, one migrates and writes the key check, the others wait and
    /// then find both done. Refused with `WrongKey` when the key ring does not open the
    /// key check (or a sealed value), `MissingKey(id)` when values are sealed with a key
    /// id the ring lacks, `TooNew` for a schema newer than this build, `Unavailable`
    /// when the database cannot be reached.
    pub async fn open(opts: &PgOptions, sealer: Sealer) -> Result<Opened, StoreError> {
        let connector = opts.tls.connector()?;
        let manager = match connector {
            Some(tls) => Manager::from_config(opts.session_config(), tls, manager_config()),
            None => Manager::from_config(
                opts.session_config(),
                tokio_postgres::NoTls,
                manager_config(),
            ),
        };
        let pool = Pool::builder(manager)
            .max_size(opts.pool_size.max(1))
            .wait_timeout(Some(opts.pool_wait))
            .create_timeout(Some(opts.connect_timeout))
            .recycle_timeout(Some(opts.connect_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Setup(format!("cannot make the connection pool: {e}")))?;
        let store = PgStore {
            pool,
            sealer,
            deadline: opts.deadline(),
            sealed: Arc::default(),
            lockouts: LockCounts::default(),
            size: ops::SizeCache::default(),
            rotation: rotate::Rotation::default(),
        };
        let (created, sealed) = store.prepare().await?;
        *store.sealed.lock().unwrap_or_else(|p| p.into_inner()) = sealed;
        store.refresh_database_bytes().await;
        Ok(Opened {
            store: Arc::new(store),
            created,
        })
    }

    /// The start's one transaction: the lock, the migrations, the key check and the
    /// count of sealed values per key id.
    async fn prepare(&self) -> Result<(bool, BTreeMap<u8, u64>), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // A migration may take longer than one call's statement timeout, and waiting
        // for another daemon's migration is waiting for the lock.
        tx.batch_execute("SET LOCAL statement_timeout = '300s'")
            .await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&migrate::MIGRATION_LOCK],
        )
        .await?;
        let created = migrate::migrate(&tx).await?;
        check_key(&tx, &self.sealer).await?;
        let sealed = check_sealed(&tx, &self.sealer).await?;
        tx.commit().await?;
        Ok((created, sealed))
    }

    /// Closes the pool: connections in use close as they come back, later calls fail
    /// with `Closed`. Does not block.
    pub fn close(&self) {
        self.pool.close();
    }

    /// Whether the database answers now: `SELECT 1` on a pooled connection, within
    /// the deadline (for health checks). `Unavailable` while it is down.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.query("SELECT 1", &[]).await.map(|_| ())
    }

    /// Sealed values per key id, as last counted (at open, by the key status, by a
    /// rotation as it goes).
    pub fn sealed_counts(&self) -> BTreeMap<u8, u64> {
        self.sealed.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// The sealing keys (for the areas that seal values).
    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// Locks begun by this store's calls since it was opened (for `Store::lockouts`):
    /// each daemon counts the locks its own calls began, so the sum over the daemons
    /// is the total.
    pub fn lockouts(&self) -> super::Lockouts {
        self.lockouts.snapshot()
    }

    /// A connection from the pool: `Closed` after [`PgStore::close`], `Unavailable`
    /// when none is free within the pool wait or a new one cannot be made.
    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| match e {
            PoolError::Closed => StoreError::Closed,
            PoolError::Timeout(_) => StoreError::Unavailable,
            PoolError::Backend(e) => e.into(),
            other => StoreError::Backend(other.to_string()),
        })
    }

    /// Runs one call within the store's deadline: past it, `Unavailable`. (A statement
    /// in flight is abandoned; an open transaction is rolled back, as it is whenever a
    /// transaction is dropped uncommitted.)
    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.deadline, call)
            .await
            .unwrap_or(Err(StoreError::Unavailable))
    }
}

fn manager_config() -> ManagerConfig {
    // `Fast`: a connection coming back from use is checked with `is_closed` only, no
    // round trip; one whose server went away is dropped and replaced.
    ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    }
}

impl From<tokio_postgres::Error> for StoreError {
    /// Unreachable, shutting down, overloaded, timed out or read-only (a standby):
    /// `Unavailable`, try again. A unique key taken: the `Conflict` SQLite reports.
    fn from(e: tokio_postgres::Error) -> Self {
        if let Some(db) = e.as_db_error() {
            let code = db.code();
            if *code == SqlState::UNIQUE_VIOLATION {
                return StoreError::Conflict(match db.constraint() {
                    Some("mfa_methods_name_key") => Clash::NameTaken,
                    _ => Clash::Duplicate,
                });
            }
            let class = &code.code()[..2.min(code.code().len())];
            let unavailable = matches!(
                class,
                "08" // connection exception
                    | "53" // insufficient resources (too many connections, disk full)
                    | "57" // operator intervention: cancelled by statement_timeout,
                           // admin shutdown, crash recovery, cannot connect now
                    | "40" // serialization failure, deadlock: nothing was done
            ) || *code == SqlState::READ_ONLY_SQL_TRANSACTION
                || *code == SqlState::LOCK_NOT_AVAILABLE
                || *code == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT;
            if unavailable {
                return StoreError::Unavailable;
            }
            return StoreError::Backend(format!("{}: {}", code.code(), db.message()));
        }
        if e.is_closed() || is_connection_error(&e) {
            return StoreError::Unavailable;
        }
        StoreError::Backend(match std::error::Error::source(&e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        })
    }
}

/// A failure to reach or talk to the server (rather than a mistake in a statement or a
/// value that does not convert): tokio-postgres says so only in its message.
fn is_connection_error(e: &tokio_postgres::Error) -> bool {
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if c.is::<std::io::Error>() {
            return true;
        }
        cause = c.source();
    }
    let text = e.to_string();
    [
        "error connecting to server",
        "timeout waiting for server",
        "error communicating with the server",
        "error performing TLS handshake",
        "unexpected message from server",
        "error parsing response from server",
    ]
    .iter()
    .any(|m| text.starts_with(m))
}

/// Column `i` of a row, or `Corrupt` if it does not hold the type the schema promises.
fn col<'a, T: FromSql<'a>>(row: &'a Row, i: usize) -> Result<T, StoreError> {
    row.try_get(i)
        .map_err(|e| StoreError::Corrupt(format!("column {}: {e}", row.columns()[i].name())))
}

/// A new database gets a sealed known value; an existing one must open it with this key
/// ring. Runs in the start's transaction, under the migration lock, so two daemons
/// starting together on a new database with different keys cannot both write one: the
/// second finds the first's and is refused.
async fn check_key(
    tx: &deadpool_postgres::Transaction<'_>,
    sealer: &Sealer,
) -> Result<(), StoreError> {
    let existing = tx
        .query_opt("SELECT value FROM meta WHERE key = 'key_check'", &[])
        .await?;
    match existing {
        Some(row) => {
            let sealed: Vec<u8> = col(&row, 0)?;
            match sealer.open(KEY_CHECK_AAD, &sealed) {
                Ok(p) if p == KEY_CHECK_PLAIN => Ok(()),
                Err(super::seal::SealError::MissingKey(id)) => Err(StoreError::MissingKey(id)),
                _ => Err(StoreError::WrongKey),
            }
        }
        None => {
            let sealed = sealer.seal(KEY_CHECK_AAD, KEY_CHECK_PLAIN)?;
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('key_check', $1)",
                &[&sealed],
            )
            .await?;
            Ok(())
        }
    }
}

/// A column holding sealed values, and the associated data each is sealed for.
struct Sealed {
    table: &'static str,
    /// The row's unique text key, which the associated data names.
    key: &'static str,
    sealed: &'static str,
    /// Which rows hold sealed values (an SQL condition).
    rows: &'static str,
    aad: fn(&str) -> String,
}

/// Associated data binding a sealed TOTP secret to its row: the same for every backend,
/// so a sealed value moves between them as it is.
pub(crate) use super::otp_secret_aad;

/// Every sealed column. A new one must be added here (and to a key rotation).
const SEALED: &[Sealed] = &[
    Sealed {
        table: "meta",
        key: "key",
        sealed: "value",
        rows: "key = 'key_check'",
        aad: |_| KEY_CHECK_AAD.to_string(),
    },
    Sealed {
        table: "otp_secrets",
        key: "id",
        sealed: "sealed",
        rows: "true",
        aad: otp_secret_aad,
    },
];

/// At open, as SQLite's: the sealed values per key id, once every id in use is known to
/// open. A key id the ring lacks is `MissingKey(id)`, whichever daemon sealed with it
/// (so a daemon started without a key the others already use says which); a ring key
/// that opens neither the first nor the last value (by row key) of a column carrying its
/// id is `WrongKey`.
async fn check_sealed(
    tx: &deadpool_postgres::Transaction<'_>,
    sealer: &Sealer,
) -> Result<BTreeMap<u8, u64>, StoreError> {
    let mut counts = BTreeMap::new();
    for col_ in SEALED {
        let groups = tx
            .query(
                &format!(
                    "SELECT substring({s} FROM 1 FOR 1), count(*), min({k}), max({k})
                     FROM {t} WHERE {w} GROUP BY 1",
                    s = col_.sealed,
                    k = col_.key,
                    t = col_.table,
                    w = col_.rows
                ),
                &[],
            )
            .await?;
        let value_of = format!(
            "SELECT {s} FROM {t} WHERE {k} = $1",
            s = col_.sealed,
            t = col_.table,
            k = col_.key
        );
        for g in groups {
            let id: Vec<u8> = col(&g, 0)?;
            let n: i64 = col(&g, 1)?;
            let first: String = col(&g, 2)?;
            let last: String = col(&g, 3)?;
            // An empty value counts under id 0, which no ring holds.
            let id = id.first().copied().unwrap_or(0);
            if !sealer.has_key(id) {
                return Err(StoreError::MissingKey(id));
            }
            let mut opens = false;
            for sample in [&first, &last] {
                let row = tx.query_opt(&value_of, &[sample]).await?;
                let value: Option<Vec<u8>> = row.map(|r| col(&r, 0)).transpose()?;
                if value.is_some_and(|v| sealer.open(&(col_.aad)(sample), &v).is_ok()) {
                    opens = true;
                    break;
                }
            }
            if !opens {
                return Err(StoreError::WrongKey);
            }
            *counts.entry(id).or_default() += n.max(0) as u64;
        }
    }
    Ok(counts)
}

const TOKEN_COLS: &str = "hash, accessor, entity_id, display_name, policies, created_at, \
                          expires_at, parent, renewable, creation_ttl, explicit_max_ttl, last_renewal";

fn token_row(r: &Row) -> Result<TokenRecord, StoreError> {
    let policies: String = col(r, 4)?;
    Ok(TokenRecord {
        hash: col(r, 0)?,
        accessor: col(r, 1)?,
        entity_id: col(r, 2)?,
        display_name: col(r, 3)?,
        policies: serde_json::from_str(&policies)
            .map_err(|e| StoreError::Corrupt(format!("token policies: {e}")))?,
        created_at: col(r, 5)?,
        expires_at: col(r, 6)?,
        parent: col(r, 7)?,
        renewable: col(r, 8)?,
        creation_ttl: col(r, 9)?,
        explicit_max_ttl: col(r, 10)?,
        last_renewal: col(r, 11)?,
    })
}

impl PgStore {
    /// One statement on a pooled connection, prepared once per connection: the rows.
    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        self.bounded(async {
            let c = self.client().await?;
            let stmt = c.prepare_cached(sql).await?;
            Ok(c.query(&stmt, params).await?)
        })
        .await
    }

    /// One statement on a pooled connection: how many rows it changed.
    async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        self.bounded(async {
            let c = self.client().await?;
            let stmt = c.prepare_cached(sql).await?;
            Ok(c.execute(&stmt, params).await?)
        })
        .await
    }

    /// The unexpired token whose `column` (hash or accessor, both unique) is `key`.
    async fn live_token(
        &self,
        column: &'static str,
        key: &str,
        now: i64,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let rows = self
            .query(
                &format!(
                    "SELECT {TOKEN_COLS} FROM tokens
                     WHERE {column} = $1 AND (expires_at IS NULL OR expires_at > $2)"
                ),
                &[&key, &now],
            )
            .await?;
        rows.first().map(token_row).transpose()
    }

    /// Deletes the token whose `column` (hash or accessor) is `key` and every token made
    /// from it, at any depth, in one statement; returns how many went.
    ///
    /// One statement is atomic: under `READ COMMITTED` it deletes the tree as its
    /// snapshot sees it, and a row another transaction deletes first is skipped, not
    /// counted twice. A child created by a transaction that commits after the snapshot
    /// was made survives, exactly as a child created just after a revoke does on SQLite
    /// (the trait promises atomicity, not that a revoked parent refuses children: the
    /// surfaces check the parent first).
    async fn revoke_tree(&self, column: &'static str, key: &str) -> Result<usize, StoreError> {
        let n = self
            .execute(
                &format!(
                    "WITH RECURSIVE tree(accessor) AS (
                         SELECT accessor FROM tokens WHERE {column} = $1
                         UNION SELECT t.accessor FROM tokens t JOIN tree ON t.parent = tree.accessor
                     )
                     DELETE FROM tokens WHERE accessor IN (SELECT accessor FROM tree)"
                ),
                &[&key],
            )
            .await?;
        Ok(n as usize)
    }
}

#[async_trait]
impl TokenStore for PgStore {
    /// The sweep and the insert are one transaction: a duplicate hash or accessor
    /// (`Conflict(Duplicate)`, from the unique indexes, which hold across daemons) rolls
    /// back the sweep too, as on SQLite.
    async fn create_token(&self, t: &TokenRecord) -> Result<(), StoreError> {
        let policies = serde_json::to_string(&t.policies)
            .map_err(|e| StoreError::Corrupt(format!("token policies: {e}")))?;
        self.bounded(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            let sweep = tx
                .prepare_cached(
                    "DELETE FROM tokens WHERE expires_at IS NOT NULL AND expires_at <= $1",
                )
                .await?;
            tx.execute(&sweep, &[&t.created_at]).await?;
            let insert = tx
                .prepare_cached(&format!(
                    "INSERT INTO tokens ({TOKEN_COLS})
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
                ))
                .await?;
            tx.execute(
                &insert,
                &[
                    &t.hash,
                    &t.accessor,
                    &t.entity_id,
                    &t.display_name,
                    &policies,
                    &t.created_at,
                    &t.expires_at,
                    &t.parent,
                    &t.renewable,
                    &t.creation_ttl,
                    &t.explicit_max_ttl,
                    &t.last_renewal,
                ],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn get_token(&self, hash: &str, now: i64) -> Result<Option<TokenRecord>, StoreError> {
        self.live_token("hash", hash, now).await
    }

    async fn get_token_by_accessor(
        &self,
        accessor: &str,
        now: i64,
    ) -> Result<Option<TokenRecord>, StoreError> {
        self.live_token("accessor", accessor, now).await
    }

    async fn revoke_token(&self, hash: &str) -> Result<usize, StoreError> {
        self.revoke_tree("hash", hash).await
    }

    async fn revoke_token_by_accessor(&self, accessor: &str) -> Result<usize, StoreError> {
        self.revoke_tree("accessor", accessor).await
    }

    /// One conditional `UPDATE`: under `READ COMMITTED` a concurrent revoke or renewal
    /// of the row makes this one wait for its commit and then re-check the conditions
    /// on the row as it is then, so a revoked token is never renewed.
    async fn renew_token(&self, hash: &str, now: i64, expires_at: i64) -> Result<bool, StoreError> {
        let n = self
            .execute(
                "UPDATE tokens SET expires_at = $3, last_renewal = $2
                 WHERE hash = $1 AND renewable AND expires_at IS NOT NULL AND expires_at > $2",
                &[&hash, &now, &expires_at],
            )
            .await?;
        Ok(n > 0)
    }
}

#[async_trait]
impl PolicyStore for PgStore {
    /// One `INSERT ... ON CONFLICT DO UPDATE`: PostgreSQL guarantees it inserts or
    /// updates even with concurrent writers of the same name (no unique-violation race).
    async fn put_policy(&self, name: &str, document: &str, now: i64) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO policies (name, document, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET document = excluded.document, updated_at = excluded.updated_at",
            &[&name, &document, &now],
        )
        .await?;
        Ok(())
    }

    async fn get_policy(&self, name: &str) -> Result<Option<String>, StoreError> {
        let rows = self
            .query("SELECT document FROM policies WHERE name = $1", &[&name])
            .await?;
        rows.first().map(|r| col(r, 0)).transpose()
    }

    async fn get_policies(&self, names: &[String]) -> Result<Vec<(String, String)>, StoreError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let rows = self
            .query(
                "SELECT name, document FROM policies WHERE name = ANY($1)",
                &[&names],
            )
            .await?;
        rows.iter().map(|r| Ok((col(r, 0)?, col(r, 1)?))).collect()
    }

    async fn delete_policy(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self
            .execute("DELETE FROM policies WHERE name = $1", &[&name])
            .await?
            > 0)
    }

    async fn list_policies(&self) -> Result<Vec<String>, StoreError> {
        let rows = self
            .query("SELECT name FROM policies ORDER BY name", &[])
            .await?;
        rows.iter().map(|r| col(r, 0)).collect()
    }
}

#[async_trait::async_trait]
impl super::Store for PgStore {
    async fn ping(&self) -> Result<(), StoreError> {
        PgStore::ping(self).await
    }

    fn close(&self) {
        PgStore::close(self);
    }

    fn lockouts(&self) -> super::Lockouts {
        PgStore::lockouts(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn every_session_starts_with_the_timeouts_and_read_committed() {
        let mut opts =
            PgOptions::new("postgres://totpd@db.example/totpd?options=-c%20search_path%3Dtotpd")
                .unwrap();
        opts.statement_timeout = Duration::from_millis(1500);
        let c = opts.session_config();
        let options = c.get_options().unwrap();
        assert!(options.starts_with("-c search_path=totpd "), "{options}");
        assert!(options.contains("-c statement_timeout=1500 "), "{options}");
        assert!(
            options.contains("-c idle_in_transaction_session_timeout=6000 "),
            "{options}"
        );
        assert!(
            options.ends_with("-c default_transaction_isolation=read\\ committed"),
            "{options}"
        );
        assert_eq!(c.get_application_name(), Some("totpd"));
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(5)));
        assert_eq!(
            opts.deadline(),
            Duration::from_millis(2000 + 5000 + 1500 + 1000)
        );
    }

    #[test]
    fn a_bad_url_is_refused_without_showing_it() {
        let e = PgOptions::new("postgres://u:hunter2@db:notaport/totpd").unwrap_err();
        assert!(matches!(&e, StoreError::Setup(_)), "{e:?}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let opts = PgOptions::new("postgres://u:hunter2@db/totpd?connect_timeout=3").unwrap();
        assert_eq!(opts.connect_timeout, Duration::from_secs(3));
        assert!(!format!("{opts:?}").contains("hunter2"));
    }

    /// Nothing listens there: the open answers `Unavailable` at once (503 on a
    /// surface; the daemon's start says the database is unreachable), without waiting
    /// for any timeout.
    #[tokio::test]
    async fn an_unreachable_server_is_unavailable_at_once() {
        for url in [
            "postgresql://postgres@%2Fnonexistent-totpd-socket-dir/postgres",
            "postgresql://postgres@127.0.0.1:1/postgres",
        ] {
            let started = Instant::now();
            let r = PgStore::open(&PgOptions::new(url).unwrap(), Sealer::new(&[1; 32])).await;
            assert!(matches!(r, Err(StoreError::Unavailable)), "{url}");
            assert!(started.elapsed() < Duration::from_secs(2), "{url}");
        }
    }
}

//! What operators look at on PostgreSQL ([`OpsStore`]): rows per table, the database's
//! size, the last recorded backup.
//!
//! **Backups are PostgreSQL's.** A consistent copy of a PostgreSQL database is what
//! `pg_dump` makes (one snapshot, while everything goes on), and a copy of the whole
//! cluster with point-in-time recovery is what `pg_basebackup` and WAL archiving (or the
//! HA tool's own backups: pgBackRest, Barman, a managed service's snapshots) make.
//! totpd does not make them again: [`OpsStore::backup_database`] refuses with
//! [`StoreError::Unsupported`], whose message names those tools, and `GET
//! /v1/sys/backup` answers it 400. A `pg_dump` of totpd's database restores into an
//! empty database with `pg_restore` (or `psql`), and daemons started on it with the
//! same key ring find their secrets; the sealing key is never in the database, so a
//! dump is useless without the ring and the ring must be kept with the dumps.
//!
//! **No writer.** Every call is its own statement or transaction on a pooled
//! connection; there is no single writer with a queue, so [`OpsStore::writer_stats`]
//! reports zeros.
//!
//! **Size without a query.** [`OpsStore::database_bytes`] must not query: it returns
//! `pg_database_size` as last read, at open, by every [`OpsStore::count_rows`], and in
//! the background (one read at a time) when the value is older than
//! [`SIZE_MAX_AGE`], so a metrics scrape sees a value at most that old (plus one scrape).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{col, PgStore};
use crate::store::{BackupCopy, OpsStore, StoreError, WriterStats};

/// The `meta` row that holds when the last recorded backup was taken (as SQLite's:
/// unix seconds, in decimal).
const LAST_BACKUP: &str = "last_backup";

/// Every table of totpd's schema but the migrations' own (`totpd_schema_version`, as
/// SQLite's version is a pragma, not a table), sorted by name. A migration that adds a
/// table adds it here; a test compares this list with the database's tables.
pub(super) const TABLES: &[&str] = &[
    "agent_secrets",
    "engine_keys",
    "engine_tried_codes",
    "meta",
    "mfa_methods",
    "mfa_secrets",
    "otp_secrets",
    "policies",
    "policy_tokens",
    "recovery_codes",
    "temp_tokens",
    "tokens",
    "user_devices",
    "user_locks",
];

/// How old the size [`OpsStore::database_bytes`] returns may get before a read of it
/// starts in the background.
pub const SIZE_MAX_AGE: Duration = Duration::from_secs(30);

/// What backup on PostgreSQL is (the answer of `GET /v1/sys/backup`).
pub const BACKUP_REFUSAL: &str = "totpd does not copy a PostgreSQL database: back it up with \
    PostgreSQL's own tools (pg_dump for a consistent copy of totpd's database, \
    pg_basebackup with WAL archiving for the whole cluster and point-in-time recovery), \
    and keep the key ring with the backups";

/// The database's size as last read, shared with the background reads.
#[derive(Default)]
pub(super) struct SizeCache {
    inner: Arc<Size>,
}

#[derive(Default)]
struct Size {
    bytes: AtomicU64,
    /// When it was read, in seconds on [`clock`]; 0: never.
    read_at: AtomicI64,
    /// A background read is under way.
    reading: AtomicBool,
}

/// Seconds since an arbitrary start that never goes backwards (the process's first use).
fn clock() -> i64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(std::time::Instant::now);
    // +1: a value read in the first second is not "never read".
    start.elapsed().as_secs() as i64 + 1
}

impl Size {
    fn set(&self, bytes: i64) {
        self.bytes.store(bytes.max(0) as u64, Relaxed);
        self.read_at.store(clock(), Relaxed);
    }
}

const SIZE_SQL: &str = "SELECT pg_database_size(current_database())";
/// [`SIZE_SQL`]'s expression, for a statement that reads it beside others.
const SIZE_SQL_EXPR: &str = "pg_database_size(current_database())";
impl PgStore {
    /// Reads the database's size into the cache (at open; errors are only logged: the
    /// size is for people and metrics, and the next read tries again).
    pub(super) async fn refresh_database_bytes(&self) {
        match self.query(SIZE_SQL, &[]).await {
            Ok(rows) => {
                if let Some(n) = rows.first().and_then(|r| col::<i64>(r, 0).ok()) {
                    self.size.inner.set(n);
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot read the database's size"),
        }
    }

    /// Starts one background read of the size when the cached one is too old, on the
    /// runtime of the caller (none outside one: the value stays as it is).
    fn refresh_size_if_old(&self) {
        let size = &self.size.inner;
        let read_at = size.read_at.load(Relaxed);
        if read_at != 0 && clock() - read_at < SIZE_MAX_AGE.as_secs() as i64 {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if size.reading.swap(true, Relaxed) {
            return;
        }
        let (size, pool, deadline) = (self.size.inner.clone(), self.pool.clone(), self.deadline);
        rt.spawn(async move {
            let read = tokio::time::timeout(deadline, async {
                let c = pool.get().await.map_err(|e| e.to_string())?;
                let stmt = c
                    .prepare_cached(SIZE_SQL)
                    .await
                    .map_err(|e| e.to_string())?;
                let r = c.query_one(&stmt, &[]).await.map_err(|e| e.to_string())?;
                r.try_get::<_, i64>(0).map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|_| Err("timed out".into()));
            match read {
                Ok(n) => size.set(n),
                Err(e) => tracing::debug!(error = %e, "cannot read the database's size"),
            }
            size.reading.store(false, Relaxed);
        });
    }
}

#[async_trait]
impl OpsStore for PgStore {
    /// One statement, so every count is of one snapshot; the database's size comes with
    /// it (and refreshes [`OpsStore::database_bytes`]). Exact counts: each is a scan of
    /// its table, as on SQLite.
    async fn count_rows(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let counts: Vec<String> = TABLES
            .iter()
            .map(|t| format!("(SELECT count(*) FROM {t})"))
            .collect();
        let sql = format!("SELECT {}, {SIZE_SQL_EXPR}", counts.join(", "));
        let rows = self.query(&sql, &[]).await?;
        let r = rows
            .first()
            .ok_or_else(|| StoreError::Backend("the row counts returned no row".into()))?;
        let mut out = Vec::with_capacity(TABLES.len());
        for (i, t) in TABLES.iter().enumerate() {
            let n: i64 = col(r, i)?;
            out.push((t.to_string(), n.max(0) as u64));
        }
        self.size.inner.set(col(r, TABLES.len())?);
        Ok(out)
    }

    /// `pg_database_size` as last read (see the module's documentation): the database's
    /// files on the server, indexes and not yet vacuumed rows included, not the WAL.
    fn database_bytes(&self) -> u64 {
        self.refresh_size_if_old();
        self.size.inner.bytes.load(Relaxed)
    }

    /// Zeros: on PostgreSQL every call writes on its own pooled connection, with no
    /// queue in the daemon (the pool's wait is bounded instead; see [`PgStore`]).
    fn writer_stats(&self) -> WriterStats {
        WriterStats::default()
    }

    fn seal_key_id(&self) -> u8 {
        self.sealer.current_id()
    }

    /// Refused, always, with [`BACKUP_REFUSAL`]: see the module's documentation.
    async fn backup_database(&self) -> Result<BackupCopy, StoreError> {
        Err(StoreError::Unsupported(BACKUP_REFUSAL))
    }

    /// One upsert into `meta`, as SQLite's (the daemons share the row: the last one
    /// recorded wins).
    async fn record_backup(&self, at: i64) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO meta (key, value) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[&LAST_BACKUP, &at.to_string().into_bytes()],
        )
        .await?;
        Ok(())
    }

    async fn last_backup(&self) -> Result<Option<i64>, StoreError> {
        let rows = self
            .query("SELECT value FROM meta WHERE key = $1", &[&LAST_BACKUP])
            .await?;
        let Some(r) = rows.first() else {
            return Ok(None);
        };
        let v: Vec<u8> = col(r, 0)?;
        std::str::from_utf8(&v)
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| StoreError::Corrupt("meta last_backup is no number".into()))
    }
}

//! The storage layer: the only code that knows SQL. It offers domain operations
//! (`create_token`, `put_policy`, ...) so another backend can implement the same set.
//!
//! Writes go to one writer thread ([`writer`]) that group-commits; reads run on a small
//! pool of read-only connections on blocking threads, never on a tokio worker.

mod agent;
mod mfa;
mod otp_secrets;
pub mod seal;
mod writer;

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

pub use agent::AgentSecretInfo;
pub use mfa::{Enroll, MethodDelete, MethodRecord, MethodWrite, MfaCheck};
pub use seal::Sealer;
use writer::Writer;

/// The schema, as forward migrations separated by `-- migrate: N` lines.
const SCHEMA: &str = include_str!("../../schema.sql");
const KEY_CHECK_AAD: &str = "totpd/v1/meta/key_check";
const KEY_CHECK_PLAIN: &[u8] = b"totpd key check";
/// Read connections kept open for reuse.
const READ_POOL: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(String),
    #[error("the configured key does not open this database's secrets: it is not the key this database was created with")]
    WrongKey,
    #[error("database schema version {found} is newer than this totpd understands ({known})")]
    TooNew { found: i64, known: i64 },
    #[error("sealed data: {0}")]
    Seal(#[from] seal::SealError),
    #[error("the store is closed")]
    Closed,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(e.to_string())
    }
}

/// A stored API token (never the token itself: only its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub hash: String,
    pub accessor: String,
    pub entity_id: String,
    pub display_name: String,
    pub policies: Vec<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    /// Accessor of the token that created this one, if a token did.
    pub parent: Option<String>,
}

/// Handle to the database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Writer,
    readers: Mutex<Vec<Connection>>,
    /// Set by `close`: read connections still out are then dropped, not pooled again.
    closed: std::sync::atomic::AtomicBool,
    sealer: Sealer,
}

/// The result of opening: the store, and whether the database was created just now.
pub struct Opened {
    pub store: Store,
    pub created: bool,
}

impl Store {
    /// Opens (creating if needed) the database at `path`, migrates it forward, checks
    /// the sealing key against it and starts the writer.
    pub fn open(path: &Path, sealer: Sealer) -> Result<Opened, StoreError> {
        if !path.exists() {
            // Created 0600 by us, so SQLite's -wal and -shm files inherit that mode.
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| StoreError::Sqlite(format!("{}: {e}", path.display())))?;
        }
        let mut conn = Connection::open(path)?;
        configure(&conn)?;
        conn.execute_batch("PRAGMA journal_mode = WAL;")?;
        let created = migrate(&mut conn)?;
        check_key(&conn, &sealer)?;
        let writer = Writer::start(conn).map_err(|e| StoreError::Sqlite(e.to_string()))?;
        Ok(Opened {
            store: Store {
                inner: Arc::new(Inner {
                    path: path.to_path_buf(),
                    writer,
                    readers: Mutex::new(Vec::new()),
                    closed: std::sync::atomic::AtomicBool::new(false),
                    sealer,
                }),
            },
            created,
        })
    }

    /// Finishes queued writes and closes the write connection. Later writes fail.
    pub fn close(&self) {
        // Readers first: the last connection to close checkpoints and removes the WAL,
        // and only the writer can.
        self.inner
            .closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut r) = self.inner.readers.lock() {
            r.clear();
        }
        self.inner.writer.shutdown();
    }

    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.inner.writer.write(f).await
    }

    /// Runs `f` on a pooled read-only connection on a blocking thread.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = inner.readers.lock().ok().and_then(|mut r| r.pop());
            let conn = match pooled {
                Some(c) => c,
                None => open_reader(&inner.path)?,
            };
            let out = f(&conn);
            if let Ok(mut r) = inner.readers.lock() {
                if r.len() < READ_POOL && !inner.closed.load(std::sync::atomic::Ordering::SeqCst) {
                    r.push(conn);
                }
            }
            out
        })
        .await
        .map_err(|e| StoreError::Sqlite(format!("read task failed: {e}")))?
    }

    // ----- tokens -----

    /// Stores a token; expired tokens are swept out in the same transaction, so the
    /// table does not grow with every short-lived token ever made.
    pub async fn create_token(&self, t: TokenRecord) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute(
                "DELETE FROM tokens WHERE expires_at IS NOT NULL AND expires_at <= ?1",
                [t.created_at],
            )?;
            let policies = serde_json::to_string(&t.policies)
                .map_err(|e| StoreError::Corrupt(format!("token policies: {e}")))?;
            c.execute(
                "INSERT INTO tokens (hash, accessor, entity_id, display_name, policies, created_at, expires_at, parent)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    t.hash,
                    t.accessor,
                    t.entity_id,
                    t.display_name,
                    policies,
                    t.created_at,
                    t.expires_at,
                    t.parent
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// The token with this hash, if it exists and has not expired at `now`.
    pub async fn lookup_token(
        &self,
        hash: String,
        now: i64,
    ) -> Result<Option<TokenRecord>, StoreError> {
        self.read(move |c| {
            let row = c
                .query_row(
                    "SELECT hash, accessor, entity_id, display_name, policies, created_at, expires_at, parent
                     FROM tokens WHERE hash = ?1 AND (expires_at IS NULL OR expires_at > ?2)",
                    params![hash, now],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, String>(4)?,
                            r.get::<_, i64>(5)?,
                            r.get::<_, Option<i64>>(6)?,
                            r.get::<_, Option<String>>(7)?,
                        ))
                    },
                )
                .optional()?;
            row.map(|(hash, accessor, entity_id, display_name, pol, created_at, expires_at, parent)| {
                let policies = serde_json::from_str(&pol)
                    .map_err(|e| StoreError::Corrupt(format!("token policies: {e}")))?;
                Ok(TokenRecord {
                    hash,
                    accessor,
                    entity_id,
                    display_name,
                    policies,
                    created_at,
                    expires_at,
                    parent,
                })
            })
            .transpose()
        })
        .await
    }

    /// Deletes the token with this hash and every token made from it, at any depth.
    /// Returns how many were deleted.
    pub async fn revoke_token(&self, hash: String) -> Result<usize, StoreError> {
        self.write(move |c| {
            Ok(c.execute(
                "WITH RECURSIVE tree(accessor) AS (
                     SELECT accessor FROM tokens WHERE hash = ?1
                     UNION SELECT t.accessor FROM tokens t JOIN tree ON t.parent = tree.accessor
                 )
                 DELETE FROM tokens WHERE accessor IN tree",
                [hash],
            )?)
        })
        .await
    }

    // ----- policies -----

    /// Creates or replaces a policy document (already validated JSON text).
    pub async fn put_policy(
        &self,
        name: String,
        document: String,
        now: i64,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO policies (name, document, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name) DO UPDATE SET document = excluded.document, updated_at = excluded.updated_at",
                params![name, document, now],
            )?;
            Ok(())
        })
        .await
    }

    /// The stored document of policy `name` (built-in policies are not stored).
    pub async fn get_policy(&self, name: String) -> Result<Option<String>, StoreError> {
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT document FROM policies WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
    }

    /// The documents of those of `names` that exist, as (name, document).
    pub async fn get_policies(
        &self,
        names: Vec<String>,
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached("SELECT document FROM policies WHERE name = ?1")?;
            let mut out = Vec::new();
            for n in names {
                if let Some(doc) = stmt.query_row([&n], |r| r.get(0)).optional()? {
                    out.push((n, doc));
                }
            }
            Ok(out)
        })
        .await
    }

    /// Deletes a stored policy; false if there was none.
    pub async fn delete_policy(&self, name: String) -> Result<bool, StoreError> {
        self.write(move |c| Ok(c.execute("DELETE FROM policies WHERE name = ?1", [name])? > 0))
            .await
    }

    /// Names of the stored policies, sorted.
    pub async fn list_policies(&self) -> Result<Vec<String>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached("SELECT name FROM policies ORDER BY name")?;
            let names = stmt
                .query_map([], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            Ok(names)
        })
        .await
    }
}

fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.execute_batch(
        "PRAGMA foreign_keys = ON;
         PRAGMA synchronous = FULL;",
    )?;
    Ok(())
}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    configure(&conn)?;
    Ok(conn)
}

/// The schema's migrations in order: (version, SQL).
fn migrations() -> Vec<(i64, &'static str)> {
    let mut out = Vec::new();
    let mut rest = SCHEMA;
    // Only at the start of a line, so prose that mentions the marker is not one.
    const MARK: &str = "\n-- migrate: ";
    while let Some(pos) = rest.find(MARK) {
        let after = &rest[pos + MARK.len()..];
        let line_end = after.find('\n').unwrap_or(after.len());
        let version = after[..line_end].trim().parse::<i64>().unwrap_or(0);
        let body_start = &after[line_end..];
        let body_end = body_start.find(MARK).unwrap_or(body_start.len());
        out.push((version, &body_start[..body_end]));
        rest = &body_start[body_end..];
    }
    out
}

/// The newest schema version this build knows.
pub fn schema_version() -> i64 {
    migrations().last().map(|m| m.0).unwrap_or(0)
}

/// Applies the migrations the database has not seen, each in its own transaction.
/// Returns true when the database was empty (version 0) before.
fn migrate(conn: &mut Connection) -> Result<bool, StoreError> {
    migrate_to(conn, i64::MAX)
}

fn migrate_to(conn: &mut Connection, target: i64) -> Result<bool, StoreError> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let known = schema_version();
    if current > known {
        return Err(StoreError::TooNew {
            found: current,
            known,
        });
    }
    for (version, sql) in migrations() {
        if version <= current || version > target {
            continue;
        }
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.execute_batch(&format!("PRAGMA user_version = {version}"))?;
        tx.commit()?;
        tracing::info!(version, "database migrated");
    }
    Ok(current == 0)
}

/// A new database gets a sealed known value; an existing one must open it with this key.
fn check_key(conn: &Connection, sealer: &Sealer) -> Result<(), StoreError> {
    let existing: Option<Vec<u8>> = conn
        .query_row("SELECT value FROM meta WHERE key = 'key_check'", [], |r| {
            r.get(0)
        })
        .optional()?;
    match existing {
        Some(sealed) => match sealer.open(KEY_CHECK_AAD, &sealed) {
            Ok(p) if p == KEY_CHECK_PLAIN => Ok(()),
            _ => Err(StoreError::WrongKey),
        },
        None => {
            let sealed = sealer.seal(KEY_CHECK_AAD, KEY_CHECK_PLAIN)?;
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('key_check', ?1)",
                [sealed],
            )?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(b: u8) -> Sealer {
        Sealer::new(&[b; seal::KEY_LEN])
    }

    #[test]
    fn migrations_are_numbered_in_order() {
        let m = migrations();
        assert!(!m.is_empty());
        for (i, (v, sql)) in m.iter().enumerate() {
            assert_eq!(*v, i as i64 + 1, "migration numbers must be 1, 2, 3, ...");
            assert!(sql.contains("CREATE") || sql.contains("ALTER"));
        }
    }

    #[test]
    fn an_older_database_is_migrated_forward_keeping_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let mut c = Connection::open(&path).unwrap();
            migrate_to(&mut c, 1).unwrap();
            c.execute(
                "INSERT INTO policies (name, document, updated_at) VALUES ('p', '{}', 1)",
                [],
            )
            .unwrap();
        }
        let opened = Store::open(&path, sealer(1)).unwrap();
        assert!(!opened.created);
        opened.store.close();
        let c = Connection::open(&path).unwrap();
        let v: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, schema_version());
        let n: i64 = c
            .query_row("SELECT count(*) FROM policies", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn a_newer_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.db");
        let c = Connection::open(&path).unwrap();
        c.execute_batch("PRAGMA user_version = 9999").unwrap();
        drop(c);
        assert!(matches!(
            Store::open(&path, sealer(1)),
            Err(StoreError::TooNew { .. })
        ));
    }

    #[test]
    fn wrong_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let o = Store::open(&path, sealer(1)).unwrap();
        assert!(o.created);
        o.store.close();
        assert!(matches!(
            Store::open(&path, sealer(2)),
            Err(StoreError::WrongKey)
        ));
        let o = Store::open(&path, sealer(1)).unwrap();
        assert!(!o.created);
        o.store.close();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_commit_and_a_failure_rolls_back_alone() {
        let dir = tempfile::tempdir().unwrap();
        let o = Store::open(&dir.path().join("w.db"), sealer(1)).unwrap();
        let s = o.store;
        let mut tasks = Vec::new();
        for i in 0..50 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.put_policy(format!("p{i}"), "{}".into(), 1).await
            }));
        }
        // A failing operation in the middle of the batches: a duplicate accessor.
        let rec = |h: &str| TokenRecord {
            hash: h.into(),
            accessor: "same".into(),
            entity_id: "e".into(),
            display_name: "d".into(),
            policies: vec!["default".into()],
            created_at: 1,
            expires_at: None,
            parent: None,
        };
        s.create_token(rec("h1")).await.unwrap();
        assert!(s.create_token(rec("h2")).await.is_err());
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(s.list_policies().await.unwrap().len(), 50);
        assert!(s.lookup_token("h1".into(), 0).await.unwrap().is_some());
        assert!(s.lookup_token("h2".into(), 0).await.unwrap().is_none());
        s.close();
        assert!(matches!(
            s.put_policy("late".into(), "{}".into(), 1).await,
            Err(StoreError::Closed)
        ));
    }

    #[tokio::test]
    async fn expired_tokens_are_refused_and_swept() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("t.db"), sealer(1))
            .unwrap()
            .store;
        let rec = |h: &str, created_at: i64, expires_at: Option<i64>| TokenRecord {
            hash: h.into(),
            accessor: format!("acc-{h}"),
            entity_id: "e".into(),
            display_name: "d".into(),
            policies: vec![],
            created_at,
            expires_at,
            parent: None,
        };
        s.create_token(rec("old", 100, Some(110))).await.unwrap();
        assert!(s.lookup_token("old".into(), 105).await.unwrap().is_some());
        assert!(s.lookup_token("old".into(), 110).await.unwrap().is_none());
        s.create_token(rec("new", 200, None)).await.unwrap();
        let left: i64 = s
            .read(|c| Ok(c.query_row("SELECT count(*) FROM tokens", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(left, 1, "the expired token was swept");
        s.close();
    }

    #[tokio::test]
    async fn a_panicking_write_fails_alone_and_the_writer_lives_on() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("p.db"), sealer(1))
            .unwrap()
            .store;
        let r: Result<(), StoreError> = s
            .write(|c| {
                c.execute("INSERT INTO policies VALUES ('half', '{}', 1)", [])?;
                panic!("boom")
            })
            .await;
        assert!(matches!(r, Err(StoreError::Closed)));
        s.put_policy("after".into(), "{}".into(), 1).await.unwrap();
        assert_eq!(s.list_policies().await.unwrap(), vec!["after".to_string()]);
        s.close();
    }
}

//! The SQLite backend: one file, WAL mode, `schema.sql` applied as forward migrations.
//!
//! Writes go to one writer thread ([`writer`]) that group-commits, so every write
//! operation runs alone, one after another: that is what makes check-and-record and
//! every other exactly-once rule atomic here. Reads go to a fixed pool of read-only
//! connections ([`readers`]) behind a bounded queue. The database is locked
//! (`<db>.lock`) for as long as the store is open: one daemon per database.

mod agent;
mod backup;
mod dump;
mod engine;
mod export;
mod mfa;
mod migrate;
mod otp_secrets;
mod policy_tokens;
mod readers;
mod rotate;
mod user_totp;
mod writer;

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, ErrorCode, OptionalExtension};

use super::seal::{KeySource, LoadedKey};
use super::{Clash, LockCounts, PolicyStore, Sealer, Store, StoreError, TokenRecord, TokenStore};
use readers::Readers;
use writer::Writer;

pub use backup::{backup_offline, check_backup, restore, Restored};
pub use migrate::schema_version;

const KEY_CHECK_AAD: &str = "totpd/v1/meta/key_check";
const KEY_CHECK_PLAIN: &[u8] = b"totpd key check";

/// How to open the database.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub path: PathBuf,
    /// Read-only connections, each with its own thread.
    pub readers: usize,
    /// Reads that may wait for a free connection; past that, `Unavailable`.
    pub read_queue: usize,
    /// Values a key rotation re-seals per write operation ([`rotate`]).
    pub rotate_batch: usize,
    /// How long a key rotation waits between batches (tests slow it down with this).
    pub rotate_pause: Duration,
}

impl SqliteOptions {
    /// The database at `path` with the default pool: one reader thread per core (at
    /// least 2, at most 16; point reads mostly run inline, see [`readers`]), and room
    /// for 1024 waiting reads.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        SqliteOptions {
            path: path.into(),
            readers: cores.clamp(2, 16),
            read_queue: 1024,
            rotate_batch: 200,
            rotate_pause: Duration::ZERO,
        }
    }
}

/// An open SQLite store. Implements [`Store`].
pub struct SqliteStore {
    writer: Writer,
    readers: Readers,
    sealer: Sealer,
    /// Held while the store is open; released by `close`.
    lock: Mutex<Option<nix::fcntl::Flock<std::fs::File>>>,
    /// The database file, for its size and for backups beside it.
    path: PathBuf,
    /// One backup at a time ([`backup`]).
    backups: tokio::sync::Mutex<()>,
    /// Locks begun, counted once their write is committed ([`Store::lockouts`]).
    lockouts: LockCounts,
    /// The store itself, for the key rotation running beside it ([`rotate`]).
    me: std::sync::Weak<SqliteStore>,
    /// The key rotation's progress and the sealed values per key id.
    rotation: rotate::Rotation,
    /// [`Store::auth_generation`]: moved on by [`SqliteStore::auth_write`].
    auth_generation: std::sync::atomic::AtomicU64,
}

/// The result of opening: the store, and whether the database was created just now.
pub struct Opened {
    pub store: Arc<SqliteStore>,
    pub created: bool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database, with the sealing key from `keys`. A
    /// database that exists without its key is refused rather than given a new key
    /// that could never open it. Returns where the key came from, too.
    pub fn open_with_keys(
        opts: &SqliteOptions,
        keys: &KeySource,
    ) -> Result<(Opened, LoadedKey), StoreError> {
        let lock = lock_database(&opts.path)?;
        if opts.path.exists() && !keys.exists() {
            return Err(StoreError::Setup(format!(
                "database {} exists but its key file {} is missing; refusing to create a new key that could not open it",
                opts.path.display(),
                keys.key_file.display()
            )));
        }
        let key = keys.load_or_create()?;
        let opened = Self::open_locked(opts, key.sealer(), lock)?;
        Ok((opened, key))
    }

    /// Opens (creating if needed) the database at `opts.path`, migrates it forward,
    /// checks `sealer`'s key against it and starts the writer and the readers.
    pub fn open(opts: &SqliteOptions, sealer: Sealer) -> Result<Opened, StoreError> {
        let lock = lock_database(&opts.path)?;
        Self::open_locked(opts, sealer, lock)
    }

    fn open_locked(
        opts: &SqliteOptions,
        sealer: Sealer,
        lock: nix::fcntl::Flock<std::fs::File>,
    ) -> Result<Opened, StoreError> {
        let path = &opts.path;
        if !path.exists() {
            // Created 0600 by us, so SQLite's -wal and -shm files inherit that mode.
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| StoreError::Setup(format!("{}: {e}", path.display())))?;
        }
        let mut conn = Connection::open(path)?;
        configure(&conn)?;
        conn.execute_batch("PRAGMA journal_mode = WAL;")?;
        let created = migrate::migrate(&mut conn)?;
        check_key(&conn, &sealer)?;
        let sealed = rotate::check_sealed(&conn, &sealer)?;
        // Readers open after the schema exists, so their first read sees it.
        let readers = Readers::start(path, opts.readers, opts.read_queue)?;
        let writer = Writer::start(conn)
            .map_err(|e| StoreError::Setup(format!("cannot start the writer: {e}")))?;
        Ok(Opened {
            store: Arc::new_cyclic(|me| SqliteStore {
                writer,
                readers,
                sealer,
                lock: Mutex::new(Some(lock)),
                path: path.clone(),
                backups: tokio::sync::Mutex::new(()),
                lockouts: LockCounts::default(),
                me: me.clone(),
                rotation: rotate::Rotation::new(sealed, opts.rotate_batch, opts.rotate_pause),
                auth_generation: Default::default(),
            }),
            created,
        })
    }

    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.writer.write(f).await
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.readers.read(f).await
    }

    /// A write that revokes or renews tokens or changes policies: moves
    /// [`Store::auth_generation`] on once it has committed, before the caller is
    /// answered. It runs as a task of its own, so a caller that goes away (a client
    /// hanging up) cannot skip the move after a commit: every write here goes through
    /// the one writer, so no such change escapes the generation.
    async fn auth_write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let me = self.me.upgrade().ok_or(StoreError::Closed)?;
        tokio::spawn(async move {
            let result = me.write(f).await;
            me.auth_generation
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            result
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    /// A point read (by primary or unique key), run where it is asked for when an inline
    /// connection is free ([`Readers::read_now`]): the hot path's lookups.
    async fn read_now<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.readers.read_now(f).await
    }
}

impl Store for SqliteStore {
    fn close(&self) {
        // Readers first: the last connection to close checkpoints and removes the WAL,
        // and only the writer can.
        self.readers.shutdown();
        self.writer.shutdown();
        if let Ok(mut l) = self.lock.lock() {
            l.take();
        }
    }

    fn lockouts(&self) -> super::Lockouts {
        self.lockouts.snapshot()
    }

    /// Every write of tokens and policies goes through this process's one writer, by
    /// [`SqliteStore::auth_write`] where it revokes, renews or changes a policy (a new
    /// token needs nothing: unknown tokens are never cached; an expired one is refused
    /// by its expiry).
    fn auth_generation(&self) -> Option<u64> {
        Some(
            self.auth_generation
                .load(std::sync::atomic::Ordering::SeqCst),
        )
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error() {
            Some(f) if matches!(f.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
                StoreError::Unavailable
            }
            Some(f)
                if f.code == ErrorCode::ConstraintViolation
                    && matches!(
                        f.extended_code,
                        rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                            | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                    ) =>
            {
                StoreError::Conflict(Clash::Duplicate)
            }
            _ => StoreError::Backend(e.to_string()),
        }
    }
}

pub(super) fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.execute_batch(
        "PRAGMA foreign_keys = ON;
         PRAGMA synchronous = FULL;",
    )?;
    Ok(())
}

/// An exclusive lock on `<db>.lock` while the store is open: one store per database,
/// so the single writer really is single.
fn lock_database(db: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, StoreError> {
    let path = PathBuf::from(format!("{}.lock", db.display()));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| StoreError::Setup(format!("cannot open {}: {e}", path.display())))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|_| {
        StoreError::Setup(format!(
            "database {} is in use by another totpd (lock {} is held)",
            db.display(),
            path.display()
        ))
    })
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
            Err(super::seal::SealError::MissingKey(id)) => Err(StoreError::MissingKey(id)),
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

/// Sweeps out tokens expired at `t.created_at` and stores `t`, inside the caller's write.
pub(super) fn insert_token(c: &Connection, t: &TokenRecord) -> Result<(), StoreError> {
    let policies = serde_json::to_string(&t.policies)
        .map_err(|e| StoreError::Corrupt(format!("token policies: {e}")))?;
    c.execute(
        "DELETE FROM tokens WHERE expires_at IS NOT NULL AND expires_at <= ?1",
        [t.created_at],
    )?;
    c.execute(
        "INSERT INTO tokens (hash, accessor, entity_id, display_name, policies, created_at, expires_at, parent,
                             renewable, creation_ttl, explicit_max_ttl, last_renewal)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            t.hash,
            t.accessor,
            t.entity_id,
            t.display_name,
            policies,
            t.created_at,
            t.expires_at,
            t.parent,
            t.renewable,
            t.creation_ttl,
            t.explicit_max_ttl,
            t.last_renewal
        ],
    )?;
    Ok(())
}

fn token_row(r: &rusqlite::Row) -> rusqlite::Result<(TokenRecord, String)> {
    Ok((
        TokenRecord {
            hash: r.get(0)?,
            accessor: r.get(1)?,
            entity_id: r.get(2)?,
            display_name: r.get(3)?,
            policies: Vec::new(),
            created_at: r.get(5)?,
            expires_at: r.get(6)?,
            parent: r.get(7)?,
            renewable: r.get(8)?,
            creation_ttl: r.get(9)?,
            explicit_max_ttl: r.get(10)?,
            last_renewal: r.get(11)?,
        },
        r.get(4)?,
    ))
}

#[async_trait]
impl TokenStore for SqliteStore {
    async fn create_token(&self, t: &TokenRecord) -> Result<(), StoreError> {
        let t = t.clone();
        self.write(move |c| insert_token(c, &t)).await
    }

    async fn get_token(&self, hash: &str, now: i64) -> Result<Option<TokenRecord>, StoreError> {
        let hash = hash.to_string();
        self.read_now(move |c| live_token(c, "hash", &hash, now))
            .await
    }

    async fn get_token_by_accessor(
        &self,
        accessor: &str,
        now: i64,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let accessor = accessor.to_string();
        self.read_now(move |c| live_token(c, "accessor", &accessor, now))
            .await
    }

    async fn revoke_token(&self, hash: &str) -> Result<usize, StoreError> {
        let hash = hash.to_string();
        self.auth_write(move |c| revoke_tree(c, "hash", &hash))
            .await
    }

    async fn revoke_token_by_accessor(&self, accessor: &str) -> Result<usize, StoreError> {
        let accessor = accessor.to_string();
        self.auth_write(move |c| revoke_tree(c, "accessor", &accessor))
            .await
    }

    async fn renew_token(&self, hash: &str, now: i64, expires_at: i64) -> Result<bool, StoreError> {
        let hash = hash.to_string();
        self.auth_write(move |c| {
            Ok(c.execute(
                "UPDATE tokens SET expires_at = ?3, last_renewal = ?2
                 WHERE hash = ?1 AND renewable = 1 AND expires_at IS NOT NULL AND expires_at > ?2",
                params![hash, now, expires_at],
            )? > 0)
        })
        .await
    }
}

/// The unexpired token whose `column` (hash or accessor, both unique) is `key`.
fn live_token(
    c: &Connection,
    column: &'static str,
    key: &str,
    now: i64,
) -> Result<Option<TokenRecord>, StoreError> {
    let row = c
        .prepare_cached(&format!(
            "SELECT hash, accessor, entity_id, display_name, policies, created_at, expires_at, parent,
                    renewable, creation_ttl, explicit_max_ttl, last_renewal
             FROM tokens WHERE {column} = ?1 AND (expires_at IS NULL OR expires_at > ?2)"
        ))?
        .query_row(params![key, now], token_row)
        .optional()?;
    row.map(|(mut t, policies)| {
        t.policies = serde_json::from_str(&policies)
            .map_err(|e| StoreError::Corrupt(format!("token policies: {e}")))?;
        Ok(t)
    })
    .transpose()
}

/// Deletes the token whose `column` (hash or accessor) is `key` and every token made
/// from it, at any depth; returns how many went.
fn revoke_tree(c: &Connection, column: &'static str, key: &str) -> Result<usize, StoreError> {
    Ok(c.execute(
        &format!(
            "WITH RECURSIVE tree(accessor) AS (
                 SELECT accessor FROM tokens WHERE {column} = ?1
                 UNION SELECT t.accessor FROM tokens t JOIN tree ON t.parent = tree.accessor
             )
             DELETE FROM tokens WHERE accessor IN tree"
        ),
        [key],
    )?)
}

#[async_trait]
impl PolicyStore for SqliteStore {
    async fn put_policy(&self, name: &str, document: &str, now: i64) -> Result<(), StoreError> {
        let (name, document) = (name.to_string(), document.to_string());
        self.auth_write(move |c| {
            c.execute(
                "INSERT INTO policies (name, document, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name) DO UPDATE SET document = excluded.document, updated_at = excluded.updated_at",
                params![name, document, now],
            )?;
            Ok(())
        })
        .await
    }

    async fn get_policy(&self, name: &str) -> Result<Option<String>, StoreError> {
        let name = name.to_string();
        self.read_now(move |c| {
            Ok(
                c.prepare_cached("SELECT document FROM policies WHERE name = ?1")?
                    .query_row([name], |r| r.get(0))
                    .optional()?,
            )
        })
        .await
    }

    async fn get_policies(&self, names: &[String]) -> Result<Vec<(String, String)>, StoreError> {
        let names = names.to_vec();
        self.read_now(move |c| {
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

    async fn delete_policy(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.auth_write(move |c| Ok(c.execute("DELETE FROM policies WHERE name = ?1", [name])? > 0))
            .await
    }

    async fn list_policies(&self) -> Result<Vec<String>, StoreError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::seal;

    fn sealer(b: u8) -> Sealer {
        Sealer::new(&[b; seal::KEY_LEN])
    }

    #[test]
    fn an_older_database_is_migrated_forward_keeping_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let mut c = Connection::open(&path).unwrap();
            migrate::migrate_to(&mut c, 1).unwrap();
            c.execute(
                "INSERT INTO policies (name, document, updated_at) VALUES ('p', '{}', 1)",
                [],
            )
            .unwrap();
        }
        let opened = SqliteStore::open(&SqliteOptions::new(&path), sealer(1)).unwrap();
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
            SqliteStore::open(&SqliteOptions::new(&path), sealer(1)),
            Err(StoreError::TooNew { .. })
        ));
    }

    #[test]
    fn one_store_per_database_and_a_missing_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let opts = SqliteOptions::new(dir.path().join("l.db"));
        let keys = KeySource {
            allow_group_readable: false,
            credentials_dir: None,
            key_file: dir.path().join("key"),
        };
        let (o, key) = SqliteStore::open_with_keys(&opts, &keys).unwrap();
        assert!(o.created && key.created);
        assert!(matches!(
            SqliteStore::open(&opts, key.sealer()),
            Err(StoreError::Setup(m)) if m.contains("in use")
        ));
        o.store.close();
        std::fs::remove_file(&keys.key_file).unwrap();
        assert!(matches!(
            SqliteStore::open_with_keys(&opts, &keys),
            Err(StoreError::Setup(m)) if m.contains("missing")
        ));
        assert!(!keys.key_file.exists(), "no new key was made");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_write_rolls_back_alone_in_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&SqliteOptions::new(dir.path().join("w.db")), sealer(1))
            .unwrap()
            .store;
        let mut tasks = Vec::new();
        for i in 0..50 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.put_policy(&format!("p{i}"), "{}", 1).await
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
            renewable: false,
            creation_ttl: 0,
            explicit_max_ttl: 0,
            last_renewal: None,
        };
        s.create_token(&rec("h1")).await.unwrap();
        assert!(matches!(
            s.create_token(&rec("h2")).await,
            Err(StoreError::Conflict(Clash::Duplicate))
        ));
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(s.list_policies().await.unwrap().len(), 50);
        assert!(s.get_token("h1", 0).await.unwrap().is_some());
        assert!(s.get_token("h2", 0).await.unwrap().is_none());
        s.close();
    }

    #[tokio::test]
    async fn a_panicking_write_fails_alone_and_the_writer_lives_on() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&SqliteOptions::new(dir.path().join("p.db")), sealer(1))
            .unwrap()
            .store;
        let r: Result<(), StoreError> = s
            .write(|c| {
                c.execute("INSERT INTO policies VALUES ('half', '{}', 1)", [])?;
                panic!("boom")
            })
            .await;
        assert!(matches!(r, Err(StoreError::Closed)));
        s.put_policy("after", "{}", 1).await.unwrap();
        assert_eq!(s.list_policies().await.unwrap(), vec!["after".to_string()]);
        s.close();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_read_queue_answers_unavailable_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let opts = SqliteOptions {
            readers: 1,
            read_queue: 2,
            ..SqliteOptions::new(dir.path().join("r.db"))
        };
        let s = SqliteStore::open(&opts, sealer(1)).unwrap().store;
        // Hold the one reader until released, so the queue fills behind it.
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let wait = Arc::new(Mutex::new(wait));
        let mut held = Vec::new();
        for _ in 0..3 {
            let (s, wait) = (s.clone(), wait.clone());
            held.push(tokio::spawn(async move {
                s.read(move |_| {
                    let _ = wait.lock().map(|w| w.recv());
                    Ok(())
                })
                .await
            }));
        }
        // Once one read runs and two wait, the next is refused without waiting. (A read
        // that got queued before that times out here and keeps its place in the queue.)
        let mut refused = false;
        for _ in 0..200 {
            match tokio::time::timeout(Duration::from_millis(20), s.list_policies()).await {
                Ok(Err(StoreError::Unavailable)) => {
                    refused = true;
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
        assert!(refused, "a full queue refuses with Unavailable");
        for _ in 0..3 {
            release.send(()).unwrap();
        }
        for h in held {
            // A held read may itself have found the queue full, if a probe got there first.
            let r = h.await.unwrap();
            assert!(matches!(r, Ok(()) | Err(StoreError::Unavailable)), "{r:?}");
        }
        // Probes abandoned above still drain from the queue; then reads work again.
        let mut recovered = false;
        for _ in 0..200 {
            if s.list_policies().await.is_ok() {
                recovered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(recovered, "reads work again once the queue drains");
        s.close();
        assert!(matches!(s.list_policies().await, Err(StoreError::Closed)));
    }
}

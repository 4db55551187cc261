//! Operations on the database as a whole: what `sys/status` shows ([`OpsStore`]),
//! consistent copies while the daemon runs, and, while it is stopped, copies and
//! restores of the file itself.
//!
//! A copy is `VACUUM INTO` on one of the read connections: one read transaction, so a
//! snapshot of one moment, while the writer goes on committing beside it (WAL). It is
//! made in the daemon's own scratch directory beside the database (`backup-tmp`, 0700),
//! opened, and its name removed at once: the caller streams it from the open file and
//! nothing is left behind, whenever the stream stops.
//!
//! Offline work (no daemon) takes the database's lock (`<db>.lock`, the one every open
//! store holds) for its whole duration, so it is refused while a daemon runs and a
//! daemon cannot start in the middle of it.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::{lock_database, SqliteStore, KEY_CHECK_AAD, KEY_CHECK_PLAIN};
use crate::store::seal::KeySource;
use crate::store::{BackupCopy, OpsStore, Sealer, StoreError, WriterStats};

/// The daemon's scratch directory for copies, beside the database.
const SCRATCH: &str = "backup-tmp";
/// The `meta` row that holds when the last delivered backup was taken.
const LAST_BACKUP: &str = "last_backup";

#[async_trait]
impl OpsStore for SqliteStore {
    async fn count_rows(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.read(|c| {
            let tables = c
                .prepare(
                    "SELECT name FROM sqlite_master
                     WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
                )?
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            let mut out = Vec::with_capacity(tables.len());
            for t in tables {
                let quoted = t.replace('"', "\"\"");
                let n: i64 =
                    c.query_row(&format!("SELECT count(*) FROM \"{quoted}\""), [], |r| {
                        r.get(0)
                    })?;
                out.push((t, n.max(0) as u64));
            }
            Ok(out)
        })
        .await
    }

    fn database_bytes(&self) -> u64 {
        let size = |p: &Path| fs::metadata(p).map_or(0, |m| m.len());
        size(&self.path) + size(&sidecar(&self.path, "-wal"))
    }

    fn writer_stats(&self) -> WriterStats {
        self.writer.stats()
    }

    fn seal_key_id(&self) -> u8 {
        // The key ring's current key.
        self.sealer.current_id()
    }

    async fn backup_database(&self) -> Result<BackupCopy, StoreError> {
        let _one = self.backups.lock().await;
        let dir = scratch_dir(&self.path)?;
        let copy = dir.join(format!("copy-{}.db", uuid::Uuid::new_v4().simple()));
        // Made 0600 by us: VACUUM INTO fills an empty file and keeps its mode.
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&copy)
            .map_err(|e| setup(&copy, e))?;
        let target = copy
            .to_str()
            .ok_or_else(|| StoreError::Setup(format!("{}: not a UTF-8 path", copy.display())))?
            .to_string();
        // Made, opened and unnamed on the reader thread, so a caller that goes away
        // half way leaves nothing behind: the open file is dropped with the reply.
        let name = copy.clone();
        let made = self
            .read(move |c| {
                let opened = c
                    .execute("VACUUM INTO ?1", [target])
                    .map_err(StoreError::from)
                    .and_then(|_| fs::File::open(&name).map_err(|e| setup(&name, e)));
                let _ = fs::remove_file(&name);
                opened
            })
            .await;
        if made.is_err() {
            // Refused before it ran (the read queue was full): the empty file goes too.
            let _ = fs::remove_file(&copy);
        }
        let file = made?;
        let bytes = file.metadata().map_err(|e| setup(&copy, e))?.len();
        Ok(BackupCopy { file, bytes })
    }

    async fn record_backup(&self, at: i64) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                rusqlite::params![LAST_BACKUP, at.to_string().into_bytes()],
            )?;
            Ok(())
        })
        .await
    }

    async fn last_backup(&self) -> Result<Option<i64>, StoreError> {
        self.read(|c| {
            let v: Option<Vec<u8>> = c
                .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
                .query_row([LAST_BACKUP], |r| r.get(0))
                .optional()?;
            v.map(|b| {
                std::str::from_utf8(&b)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| StoreError::Corrupt("meta last_backup is no number".into()))
            })
            .transpose()
        })
        .await
    }
}

fn setup(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Setup(format!("{}: {e}", path.display()))
}

/// `<db><suffix>`: SQLite's names for a database's companions (`-wal`, `-shm`,
/// `-journal`), and ours (`.lock`, `.restoring`).
fn sidecar(db: &Path, suffix: &str) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The directory holding `db`.
fn dir_of(db: &Path) -> &Path {
    match db.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The daemon's scratch directory (0700), emptied of what a copy cut short by a crash
/// left. Called with the one-backup-at-a-time lock held: no other copy is being made,
/// and copies being streamed have no name any more.
fn scratch_dir(db: &Path) -> Result<PathBuf, StoreError> {
    let dir = dir_of(db).join(SCRATCH);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .or_else(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Ok(()),
            _ => Err(e),
        })
        .map_err(|e| setup(&dir, e))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(|e| setup(&dir, e))?;
    for entry in fs::read_dir(&dir).map_err(|e| setup(&dir, e))?.flatten() {
        tracing::warn!(file = %entry.path().display(), "removing a backup copy left by an earlier run");
        let _ = fs::remove_file(entry.path());
    }
    Ok(dir)
}

/// The database's lock, for work on the file while no daemon runs; refused, saying
/// so, while one does.
fn hold(db: &Path, doing: &str) -> Result<nix::fcntl::Flock<fs::File>, StoreError> {
    lock_database(db).map_err(|e| match e {
        StoreError::Setup(m) if m.contains("in use") => {
            StoreError::Setup(format!("{m}: stop the daemon before {doing}"))
        }
        other => other,
    })
}

/// What a checked copy holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// Its schema version (older ones are migrated forward when a daemon opens it).
    pub schema_version: i64,
}

/// Checks that `conn` holds a totpd database this build can open: `PRAGMA
/// integrity_check` is `ok`, its schema version is known, and it has its key-check row;
/// with `sealer`, that the row and the sealed values open with those keys (`WrongKey`,
/// or `MissingKey` for a key id the ring lacks).
fn verify(conn: &Connection, sealer: Option<&Sealer>) -> Result<Checked, StoreError> {
    let corrupt = |e: rusqlite::Error| StoreError::Corrupt(e.to_string());
    let problems = conn
        .prepare("PRAGMA integrity_check")
        .map_err(corrupt)?
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(corrupt)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(corrupt)?;
    if problems != ["ok"] {
        let mut shown = problems
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ");
        if problems.len() > 3 {
            shown.push_str(&format!("; and {} more", problems.len() - 3));
        }
        return Err(StoreError::Corrupt(format!("integrity_check: {shown}")));
    }
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(corrupt)?;
    let known = super::schema_version();
    if version > known {
        return Err(StoreError::TooNew {
            found: version,
            known,
        });
    }
    let sealed: Option<Vec<u8>> = if version == 0 {
        None
    } else {
        conn.query_row("SELECT value FROM meta WHERE key = 'key_check'", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(corrupt)?
    };
    let Some(sealed) = sealed else {
        return Err(StoreError::Corrupt(
            "not a totpd database (no key check row)".into(),
        ));
    };
    if let Some(sealer) = sealer {
        match sealer.open(KEY_CHECK_AAD, &sealed) {
            Ok(p) if p == KEY_CHECK_PLAIN => {}
            _ => return Err(StoreError::WrongKey),
        }
        // As the daemon checks at start: every key id the sealed values carry is in the
        // ring, and opens them. (An older schema is checked so by the daemon, once it
        // has migrated it.)
        if version == known {
            super::rotate::check_sealed(conn, sealer)?;
        }
    }
    Ok(Checked {
        schema_version: version,
    })
}

/// Checks a backup file, read-only and without its key: the integrity, schema version
/// and key-check row of [`restore`]'s checks.
pub fn check_backup(path: &Path) -> Result<Checked, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| setup(path, e))?;
    verify(&conn, None)
}

/// Copies the database at `db` into `into` (an empty or missing file), as one
/// consistent snapshot, while no daemon runs: refused while one holds the database.
/// The copy is not synced; the caller syncs it where it keeps it.
pub fn backup_offline(db: &Path, into: &Path) -> Result<(), StoreError> {
    let _lock = hold(
        db,
        "backing up the file directly (or back up through it, without --data-dir)",
    )?;
    if !db.exists() {
        return Err(StoreError::Setup(format!(
            "no database at {}",
            db.display()
        )));
    }
    let target = into
        .to_str()
        .ok_or_else(|| StoreError::Setup(format!("{}: not a UTF-8 path", into.display())))?;
    // Read-write, so a write-ahead log left by a daemon that was killed is read too.
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| setup(db, e))?;
    super::configure(&conn)?;
    conn.execute("VACUUM INTO ?1", [target])?;
    conn.close().map_err(|(_, e)| setup(db, e))?;
    Ok(())
}

/// What [`restore`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The database now holding the backup.
    pub db: PathBuf,
    /// Where the database it replaced is kept (`<db>.replaced-<time>`, with its
    /// write-ahead log as `<that>-wal` if it had one); `None` if there was none.
    pub replaced: Option<PathBuf>,
    /// The backup's schema version.
    pub schema_version: i64,
}

/// Replaces the database at `db` with the backup at `backup`, while no daemon runs.
///
/// Refused while a daemon holds the database, and its lock is held throughout, so no
/// daemon starts half way. The key is the one that database's daemon would load from
/// `keys` (never made here). Before anything is replaced, the backup is copied beside
/// the database and that copy checked: `integrity_check`, a schema this build knows,
/// the key-check row opening with the key (`WrongKey` otherwise), and, as the daemon
/// checks at start, every sealed value's key id in the ring (`MissingKey` otherwise). Then the old
/// database is kept as `<db>.replaced-<now>` (a hard link: the database's name never
/// goes missing), its write-ahead log moved with it (never to be replayed onto the
/// restored file), its shared-memory index removed, and the checked copy renamed into
/// place. On any refusal the database and its companions are as they were.
pub fn restore(
    backup: &Path,
    db: &Path,
    keys: &KeySource,
    now: i64,
) -> Result<Restored, StoreError> {
    let dir = dir_of(db).to_path_buf();
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| setup(&dir, e))?;
    }
    let lock = hold(db, "restoring")?;
    if !keys.exists() {
        return Err(StoreError::Setup(format!(
            "no sealing key at {}: the backup is checked against the key this database's daemon would load \
             (give it with --key-file, or run where $CREDENTIALS_DIRECTORY holds it)",
            keys.origin().display()
        )));
    }
    let key = keys.load_or_create()?;
    let sealer = key.sealer();
    fs::File::open(backup).map_err(|e| setup(backup, e))?;

    let staged = sidecar(db, ".restoring");
    remove_with_companions(&staged);
    let result = stage(backup, &staged, &sealer, db).and_then(|checked| {
        let replaced = swap(&staged, db, now)?;
        Ok(Restored {
            db: db.to_path_buf(),
            replaced,
            schema_version: checked.schema_version,
        })
    });
    if result.is_err() {
        remove_with_companions(&staged);
    }
    // A lock file made just now by root must stay usable by the daemon's user.
    if let Some((uid, gid)) = owner_for(db) {
        let _ = std::os::unix::fs::chown(sidecar(db, ".lock"), Some(uid), Some(gid));
    }
    drop(lock);
    result
}

fn remove_with_companions(p: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = fs::remove_file(sidecar(p, suffix));
    }
}

/// Copies `backup` to `staged` (0600, synced), checks it with the key, and leaves it a
/// database of its own (rollback journal, no write-ahead log to go with it), owned as
/// `db` is.
fn stage(backup: &Path, staged: &Path, sealer: &Sealer, db: &Path) -> Result<Checked, StoreError> {
    {
        let mut from = fs::File::open(backup).map_err(|e| setup(backup, e))?;
        let mut to = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(staged)
            .map_err(|e| setup(staged, e))?;
        std::io::copy(&mut from, &mut to).map_err(|e| setup(staged, e))?;
        to.flush().map_err(|e| setup(staged, e))?;
    }
    let conn = Connection::open_with_flags(
        staged,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| StoreError::Corrupt(format!("{}: {e}", backup.display())))?;
    let checked = verify(&conn, Some(sealer))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("delete") {
        return Err(StoreError::Setup(format!(
            "cannot take the backup out of {mode} journal mode"
        )));
    }
    conn.close().map_err(|(_, e)| setup(staged, e))?;
    if let Some((uid, gid)) = owner_for(db) {
        std::os::unix::fs::chown(staged, Some(uid), Some(gid)).map_err(|e| setup(staged, e))?;
    }
    fs::File::open(staged)
        .and_then(|f| f.sync_all())
        .map_err(|e| setup(staged, e))?;
    Ok(checked)
}

/// Run as root, the owner the restored files should have: the replaced database's, or
/// else its directory's. None when not root (files are the caller's anyway).
fn owner_for(db: &Path) -> Option<(u32, u32)> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let m = fs::metadata(db)
        .or_else(|_| fs::metadata(dir_of(db)))
        .ok()?;
    Some((m.uid(), m.gid()))
}

/// Puts `staged` in the place of `db`, keeping the old database beside it. Returns
/// where it was kept.
fn swap(staged: &Path, db: &Path, now: i64) -> Result<Option<PathBuf>, StoreError> {
    let wal = sidecar(db, "-wal");
    let journal = sidecar(db, "-journal");
    let has_db = db.exists();
    if has_db && wal.exists() {
        // Fold the log into the old file first, so the file kept aside is whole by
        // itself. Best effort: if it fails, the log moves along with the file below.
        if let Err(e) = checkpoint(db) {
            tracing::warn!(error = %e, "cannot checkpoint the replaced database; its log is kept beside it");
        }
    }
    let leftovers = wal.exists() || journal.exists();
    let kept = if has_db || leftovers {
        Some(kept_name(db, now))
    } else {
        None
    };
    if let Some(kept) = &kept {
        if has_db {
            // A second name for the old file: `db` itself never goes missing, so a
            // daemon started after a crash here finds the old database, not none.
            if let Err(e) = fs::hard_link(db, kept) {
                tracing::debug!(error = %e, "no hard link; copying the replaced database");
                copy_synced(db, kept)?;
            }
        }
        // The old log and journal go with the old file, under names SQLite pairs with
        // it: left here, they would be replayed onto the restored database.
        for suffix in ["-wal", "-journal"] {
            let from = sidecar(db, suffix);
            if from.exists() {
                fs::rename(&from, sidecar(kept, suffix)).map_err(|e| setup(&from, e))?;
            }
        }
    }
    let shm = sidecar(db, "-shm");
    if shm.exists() {
        fs::remove_file(&shm).map_err(|e| setup(&shm, e))?;
    }
    fs::rename(staged, db).map_err(|e| setup(db, e))?;
    fs::File::open(dir_of(db))
        .and_then(|d| d.sync_all())
        .map_err(|e| setup(dir_of(db), e))?;
    Ok(kept)
}

/// Folds `db`'s write-ahead log into it; closing the last connection removes the log.
fn checkpoint(db: &Path) -> Result<(), StoreError> {
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    conn.close().map_err(|(_, e)| StoreError::from(e))
}

/// `<db>.replaced-<UTC time>`, with `-2`, `-3`, ... if that is taken.
fn kept_name(db: &Path, now: i64) -> PathBuf {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(now.max(0) as u64);
    let stamp = humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace(['-', ':'], "");
    let base = sidecar(db, &format!(".replaced-{stamp}"));
    let taken = |p: &Path| {
        ["", "-wal", "-journal"]
            .iter()
            .any(|s| sidecar(p, s).exists())
    };
    let mut candidate = base.clone();
    let mut n = 2;
    while taken(&candidate) {
        candidate = sidecar(&base, &format!("-{n}"));
        n += 1;
    }
    candidate
}

fn copy_synced(from: &Path, to: &Path) -> Result<(), StoreError> {
    let mut src = fs::File::open(from).map_err(|e| setup(from, e))?;
    let mut dst = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(|e| setup(to, e))?;
    std::io::copy(&mut src, &mut dst)
        .and_then(|_| dst.sync_all())
        .map_err(|e| setup(to, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::{SqliteOptions, SqliteStore};
    use crate::store::{PolicyStore, Store};

    fn keys(dir: &Path, name: &str) -> KeySource {
        KeySource {
            allow_group_readable: false,
            credentials_dir: None,
            key_file: dir.join(name),
        }
    }

    /// A closed database at `<dir>/totpd.db` holding one policy `p` = `doc`.
    fn database(dir: &Path, key: &KeySource, doc: &str) -> PathBuf {
        let opts = SqliteOptions::new(dir.join("totpd.db"));
        let (o, _) = SqliteStore::open_with_keys(&opts, key).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(o.store.put_policy("p", doc, 1)).unwrap();
        o.store.close();
        opts.path
    }

    fn policy(db: &Path) -> String {
        let c = Connection::open(db).unwrap();
        c.query_row("SELECT document FROM policies WHERE name = 'p'", [], |r| {
            r.get(0)
        })
        .unwrap()
    }

    #[test]
    fn an_offline_copy_restores_and_the_old_database_is_kept_with_its_log() {
        let tmp = tempfile::tempdir().unwrap();
        let key = keys(tmp.path(), "key");
        let db = database(tmp.path(), &key, "{\"old\":1}");
        let copy = tmp.path().join("copy.db");
        backup_offline(&db, &copy).unwrap();
        assert_eq!(
            check_backup(&copy).unwrap().schema_version,
            super::super::schema_version()
        );

        // The database moves on, and a log is left as a killed daemon leaves it.
        {
            let c = Connection::open(&db).unwrap();
            c.execute_batch("PRAGMA journal_mode = WAL;").unwrap();
            c.execute("UPDATE policies SET document = '{\"new\":1}'", [])
                .unwrap();
            // Keep the log: a copy of the files while the connection is open.
            fs::copy(&db, tmp.path().join("frozen.db")).unwrap();
            fs::copy(sidecar(&db, "-wal"), tmp.path().join("frozen.db-wal")).unwrap();
        }
        fs::rename(tmp.path().join("frozen.db"), &db).unwrap();
        fs::rename(tmp.path().join("frozen.db-wal"), sidecar(&db, "-wal")).unwrap();

        let r = restore(&copy, &db, &key, 1_700_000_000).unwrap();
        assert_eq!(policy(&db), "{\"old\":1}");
        assert!(
            !sidecar(&db, "-wal").exists(),
            "no old log beside the restored file"
        );
        let kept = r.replaced.unwrap();
        assert!(kept
            .to_string_lossy()
            .ends_with("totpd.db.replaced-20231114T221320Z"));
        assert_eq!(
            policy(&kept),
            "{\"new\":1}",
            "the kept file has its log's writes"
        );
        // And the restored database opens with its key.
        let opts = SqliteOptions::new(&db);
        let (o, _) = SqliteStore::open_with_keys(&opts, &key).unwrap();
        o.store.close();
    }

    #[test]
    fn a_backup_whose_values_use_a_key_the_ring_lacks_is_refused() {
        use crate::store::seal::KeyRing;
        use crate::store::{AgentSecretInfo, AgentStore};
        let tmp = tempfile::tempdir().unwrap();
        let ring_file = |name: &str, ring: &KeyRing| {
            let p = tmp.path().join(name);
            fs::write(&p, ring.to_text()).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
            keys(tmp.path(), name)
        };
        let one = KeyRing::generate(1).unwrap();
        let both = one.with_new_key().unwrap().unwrap();
        let (old, new) = (ring_file("one", &one), ring_file("both", &both));
        // Made under key 1; a secret sealed later under key 2.
        let db = database(tmp.path(), &old, "{}");
        let (o, _) = SqliteStore::open_with_keys(&SqliteOptions::new(&db), &new).unwrap();
        let info = AgentSecretInfo {
            id: uuid::Uuid::new_v4().to_string(),
            label: "x".into(),
            issuer: None,
            params: crate::otp::Params::new("SHA1", 6, 30).unwrap(),
            created_at: 1,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(o.store.create_agent_secret("alice", &info, &[9u8; 20]))
            .unwrap();
        o.store.close();
        let copy = tmp.path().join("copy.db");
        backup_offline(&db, &copy).unwrap();
        let before = fs::read(&db).unwrap();

        // Key 1 opens the key check, but not the secret: refused, as the daemon would.
        assert!(matches!(
            restore(&copy, &db, &old, 1),
            Err(StoreError::MissingKey(2))
        ));
        assert_eq!(fs::read(&db).unwrap(), before);
        restore(&copy, &db, &new, 1).unwrap();
    }

    #[test]
    fn a_wrong_key_a_damaged_file_or_a_running_daemon_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let key = keys(tmp.path(), "key");
        let db = database(tmp.path(), &key, "{}");
        let copy = tmp.path().join("copy.db");
        backup_offline(&db, &copy).unwrap();
        let before = fs::read(&db).unwrap();
        let listing = || {
            let mut v: Vec<_> = fs::read_dir(tmp.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            v.sort();
            v
        };
        let files = listing();

        let other = keys(tmp.path(), "other-key");
        other.load_or_create().unwrap();
        let files = {
            let mut f = files;
            f.push("other-key".into());
            f.sort();
            f
        };
        assert!(matches!(
            restore(&copy, &db, &other, 1),
            Err(StoreError::WrongKey)
        ));
        assert_eq!(fs::read(&db).unwrap(), before);
        assert_eq!(listing(), files);

        let damaged = tmp.path().join("damaged.db");
        let mut bytes = fs::read(&copy).unwrap();
        let n = bytes.len();
        bytes[n / 2..].iter_mut().for_each(|b| *b = 0x5a);
        fs::write(&damaged, bytes).unwrap();
        assert!(matches!(
            restore(&damaged, &db, &key, 1),
            Err(StoreError::Corrupt(_))
        ));
        fs::write(
            &damaged,
            b"not a database at all, not even close to one....",
        )
        .unwrap();
        assert!(matches!(
            restore(&damaged, &db, &key, 1),
            Err(StoreError::Corrupt(_))
        ));
        fs::remove_file(&damaged).unwrap();
        assert_eq!(fs::read(&db).unwrap(), before);
        assert_eq!(listing(), files);

        let (o, _) = SqliteStore::open_with_keys(&SqliteOptions::new(&db), &key).unwrap();
        assert!(matches!(
            restore(&copy, &db, &key, 1),
            Err(StoreError::Setup(m)) if m.contains("stop the daemon")
        ));
        assert!(matches!(
            backup_offline(&db, &tmp.path().join("c2.db")),
            Err(StoreError::Setup(m)) if m.contains("stop the daemon")
        ));
        o.store.close();
    }
}

//! Sealing-key rotation: every sealed value re-sealed under the key ring's current key,
//! in batches, while everything else goes on.
//!
//! [`SEALED`] lists every column that holds sealed values, with the row identity each
//! value is bound to (its associated data); a test checks it against the schema's BLOB
//! columns, so a new sealed column cannot be forgotten here.
//!
//! A batch reads up to `rotate_batch` values whose key id (their first byte) is not the
//! current one, in key order after where the last batch stopped, on a reader; opens and
//! re-seals them there, never on the writer; then one write operation replaces each
//! value only if it is still the one read (`UPDATE .. WHERE key = ? AND sealed = ?`):
//! a row deleted since stays deleted, and a verification, which writes the row's state
//! columns and never its sealed value, loses nothing. A batch is one write operation,
//! committed whole or not at all, so a crash leaves every value either as it was or
//! re-sealed, and both open with the ring. Validations interleave with the batches on the
//! writer. When every column has been walked, the values still under an old key are
//! counted; those left alone by the compare-and-swap get another pass.
//!
//! At open, [`check_sealed`] counts the values per key id and refuses a database whose
//! values name a key id the ring lacks, or whose ring key does not open them; the server
//! then resumes a rotation left half done.

use std::collections::BTreeMap;
use std::sync::{Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use super::{otp_secrets, SqliteStore, KEY_CHECK_AAD};
use crate::store::{KeyStatus, KeyStore, RotationProgress, Sealer, StoreError};

/// A column holding sealed values.
pub(super) struct Column {
    table: &'static str,
    /// The row's unique text key, which the associated data names.
    key: &'static str,
    sealed: &'static str,
    /// Which rows of the table hold sealed values (an SQL condition).
    rows: &'static str,
    /// The associated data a row's value is sealed for, from its key.
    aad: fn(&str) -> String,
}

fn key_check_aad(_: &str) -> String {
    KEY_CHECK_AAD.to_string()
}

/// Every sealed column. The key check goes first: a rotation cut short still leaves a
/// database whose key check opens with the ring.
pub(super) const SEALED: &[Column] = &[
    Column {
        table: "meta",
        key: "key",
        sealed: "value",
        rows: "key = 'key_check'",
        aad: key_check_aad,
    },
    Column {
        table: "otp_secrets",
        key: "id",
        sealed: "sealed",
        rows: "1",
        aad: otp_secrets::aad,
    },
];

/// BLOB columns that hold no sealed value (checked by a test against the schema).
#[cfg(test)]
const UNSEALED_BLOBS: &[(&str, &str)] = &[];

/// A rotation's place: its progress, the counts it keeps up to date, and its pace.
pub(super) struct Rotation {
    progress: Mutex<RotationProgress>,
    counts: Mutex<BTreeMap<u8, u64>>,
    batch: usize,
    pause: Duration,
}

impl Rotation {
    pub(super) fn new(counts: BTreeMap<u8, u64>, batch: usize, pause: Duration) -> Self {
        Rotation {
            progress: Mutex::default(),
            counts: Mutex::new(counts),
            batch: batch.max(1),
            pause,
        }
    }

    fn progress(&self) -> RotationProgress {
        self.progress.lock().map(|p| p.clone()).unwrap_or_default()
    }

    fn set_counts(&self, counts: BTreeMap<u8, u64>) {
        if let Ok(mut c) = self.counts.lock() {
            *c = counts;
        }
    }

    fn counts(&self) -> BTreeMap<u8, u64> {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Marks the start; false if one runs already.
    fn begin(&self) -> bool {
        let Ok(mut p) = self.progress.lock() else {
            return false;
        };
        if p.running {
            return false;
        }
        *p = RotationProgress {
            running: true,
            ..RotationProgress::default()
        };
        true
    }

    /// Counts a batch: `moved` values went from their old key ids to `current`,
    /// `skipped` were left alone.
    fn record(&self, moved: &[u8], skipped: u64, current: u8) {
        if let Ok(mut p) = self.progress.lock() {
            p.resealed += moved.len() as u64;
            p.skipped += skipped;
        }
        if let Ok(mut c) = self.counts.lock() {
            for old in moved {
                if let Some(n) = c.get_mut(old) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        c.remove(old);
                    }
                }
                *c.entry(current).or_default() += 1;
            }
        }
    }

    fn end(&self, error: Option<String>) {
        if let Ok(mut p) = self.progress.lock() {
            p.running = false;
            p.error = error;
        }
    }
}

fn key_id_param(id: u8) -> Vec<u8> {
    vec![id]
}

/// Sealed values per key id, every sealed column together.
pub(super) fn count_sealed(c: &Connection) -> Result<BTreeMap<u8, u64>, StoreError> {
    let mut counts = BTreeMap::new();
    for col in SEALED {
        let sql = format!(
            "SELECT substr({s}, 1, 1), count(*) FROM {t} WHERE {w} GROUP BY 1",
            s = col.sealed,
            t = col.table,
            w = col.rows
        );
        let mut stmt = c.prepare_cached(&sql)?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (id, n) = row?;
            // An empty value counts under id 0, which no ring holds.
            *counts.entry(id.first().copied().unwrap_or(0)).or_default() += n.max(0) as u64;
        }
    }
    Ok(counts)
}

/// At open: the sealed values per key id, once every id in use is known to open. A key
/// id the ring lacks is `MissingKey`; a ring key that opens neither the first nor the
/// last value (by row key) of a column that carries its id is `WrongKey`.
pub(super) fn check_sealed(
    c: &Connection,
    sealer: &Sealer,
) -> Result<BTreeMap<u8, u64>, StoreError> {
    let mut counts = BTreeMap::new();
    for col in SEALED {
        let sql = format!(
            "SELECT substr({s}, 1, 1), count(*), min({k}), max({k}) FROM {t} WHERE {w} GROUP BY 1",
            s = col.sealed,
            k = col.key,
            t = col.table,
            w = col.rows
        );
        let groups = c
            .prepare(&sql)?
            .query_map([], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let value_of = format!(
            "SELECT {s} FROM {t} WHERE {k} = ?1",
            s = col.sealed,
            t = col.table,
            k = col.key
        );
        for (id, n, first, last) in groups {
            let id = id.first().copied().unwrap_or(0);
            if !sealer.has_key(id) {
                return Err(StoreError::MissingKey(id));
            }
            let mut opens = false;
            for sample in [&first, &last] {
                let sealed: Option<Vec<u8>> =
                    c.query_row(&value_of, [sample], |r| r.get(0)).optional()?;
                if sealed.is_some_and(|v| sealer.open(&(col.aad)(sample), &v).is_ok()) {
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

/// A value read for re-sealing, and what replaces it.
#[derive(Clone)]
struct Item {
    key: String,
    old: Vec<u8>,
    new: Vec<u8>,
}

/// What one read of a batch found.
struct Read {
    items: Vec<Item>,
    /// The last row key looked at: where the next batch starts.
    last: Option<String>,
    /// How many rows the read looked at (a full batch means: more may follow).
    seen: usize,
    /// Rows whose value does not open (named by table and key, never by content).
    unreadable: Vec<String>,
}

/// Up to `limit` values of `col` after `after` (in key order) whose key id is not the
/// current one, opened and re-sealed under the current key.
fn read_batch(
    c: &Connection,
    col: &Column,
    sealer: &Sealer,
    after: &str,
    limit: usize,
) -> Result<Read, StoreError> {
    let sql = format!(
        "SELECT {k}, {s} FROM {t}
         WHERE ({w}) AND {k} > ?1 AND substr({s}, 1, 1) <> ?2
         ORDER BY {k} LIMIT ?3",
        k = col.key,
        s = col.sealed,
        t = col.table,
        w = col.rows
    );
    let mut stmt = c.prepare_cached(&sql)?;
    let rows = stmt
        .query_map(
            params![after, key_id_param(sealer.current_id()), limit as i64],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)),
        )?
        .collect::<Result<Vec<_>, _>>()?;
    let mut read = Read {
        items: Vec::with_capacity(rows.len()),
        last: rows.last().map(|(k, _)| k.clone()),
        seen: rows.len(),
        unreadable: Vec::new(),
    };
    for (key, old) in rows {
        match sealer.reseal(&(col.aad)(&key), &old) {
            Ok(Some(new)) => read.items.push(Item { key, old, new }),
            Ok(None) => {}
            Err(_) => read.unreadable.push(format!("{} {key}", col.table)),
        }
    }
    Ok(read)
}

/// Replaces each value that is still the one read; returns, per item, whether it was.
fn apply_batch(c: &Connection, col: &Column, items: &[Item]) -> Result<Vec<bool>, StoreError> {
    let sql = format!(
        "UPDATE {t} SET {s} = ?3 WHERE {k} = ?1 AND {s} = ?2",
        t = col.table,
        s = col.sealed,
        k = col.key
    );
    let mut stmt = c.prepare_cached(&sql)?;
    items
        .iter()
        .map(|it| Ok(stmt.execute(params![it.key, it.old, it.new])? == 1))
        .collect()
}

/// Passes over every column before a rotation gives up on values it cannot move.
const MAX_PASSES: usize = 3;
/// Tries of one read or write that found the store overloaded, 100 ms apart.
const BUSY_TRIES: usize = 100;

/// Runs `op` again while the store answers `Unavailable` (its read queue is full).
async fn patiently<T, F, Fut>(mut op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut tries = 0;
    loop {
        match op().await {
            Err(StoreError::Unavailable) if tries < BUSY_TRIES => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

fn alive(me: &Weak<SqliteStore>) -> Result<std::sync::Arc<SqliteStore>, StoreError> {
    me.upgrade().ok_or(StoreError::Closed)
}

/// The rotation itself: passes over every sealed column until no value uses an old key.
/// Holds the store only while a read or write is under way.
async fn rotate(me: Weak<SqliteStore>) -> Result<u8, StoreError> {
    let mut unreadable = Vec::new();
    for _pass in 0..MAX_PASSES {
        unreadable.clear();
        for col in SEALED {
            let mut after = String::new();
            loop {
                let store = alive(&me)?;
                let (limit, pause) = (store.rotation.batch, store.rotation.pause);
                let sealer = store.sealer.clone();
                let current = sealer.current_id();
                let read = patiently(|| {
                    let (sealer, after) = (sealer.clone(), after.clone());
                    store.read(move |c| read_batch(c, col, &sealer, &after, limit))
                })
                .await?;
                unreadable.extend(read.unreadable);
                if !read.items.is_empty() {
                    let items = read.items;
                    let done = patiently(|| {
                        let items = items.clone();
                        store.write(move |c| apply_batch(c, col, &items))
                    })
                    .await?;
                    let moved: Vec<u8> = items
                        .iter()
                        .zip(&done)
                        .filter(|(_, ok)| **ok)
                        .filter_map(|(it, _)| Sealer::key_id(&it.old))
                        .collect();
                    let skipped = (items.len() - moved.len()) as u64;
                    store.rotation.record(&moved, skipped, current);
                    tracing::debug!(
                        table = col.table,
                        moved = moved.len(),
                        skipped,
                        "key rotation batch"
                    );
                }
                drop(store);
                match read.last {
                    Some(last) if read.seen == limit => after = last,
                    _ => break,
                }
                if pause.is_zero() {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(pause).await;
                }
            }
        }
        let store = alive(&me)?;
        let counts = patiently(|| store.read(count_sealed)).await?;
        store.rotation.set_counts(counts.clone());
        let current = store.sealer.current_id();
        let old: u64 = counts
            .iter()
            .filter(|(id, _)| **id != current)
            .map(|(_, n)| n)
            .sum();
        if old == 0 {
            return Ok(current);
        }
        if !unreadable.is_empty() && unreadable.len() as u64 >= old {
            break;
        }
    }
    let store = alive(&me)?;
    let counts = store.rotation.counts();
    let current = store.sealer.current_id();
    let old: u64 = counts
        .iter()
        .filter(|(id, _)| **id != current)
        .map(|(_, n)| n)
        .sum();
    let mut msg = format!("{old} sealed values still use an old key after {MAX_PASSES} passes");
    if !unreadable.is_empty() {
        let shown: Vec<&str> = unreadable.iter().take(5).map(String::as_str).collect();
        msg = format!(
            "{} sealed values do not open with the key ring ({}{}), so they cannot be re-sealed; {msg}",
            unreadable.len(),
            shown.join(", "),
            if unreadable.len() > shown.len() { ", ..." } else { "" }
        );
    }
    Err(StoreError::Corrupt(msg))
}

/// Starts [`rotate`] on the runtime unless one runs; returns whether it started.
fn spawn(store: &SqliteStore) -> bool {
    if !store.rotation.begin() {
        return false;
    }
    let me = store.me.clone();
    let current = store.sealer.current_id();
    let old: u64 = store
        .rotation
        .counts()
        .iter()
        .filter(|(id, _)| **id != current)
        .map(|(_, n)| n)
        .sum();
    tracing::info!(
        values = old,
        key_id = current,
        "key rotation started: re-sealing every value sealed under an old key"
    );
    tokio::spawn(async move {
        let outcome = rotate(me.clone()).await;
        let Some(store) = me.upgrade() else { return };
        match outcome {
            Ok(current) => {
                let status = store.status(store.rotation.counts());
                tracing::info!(
                    resealed = status.rotation.resealed,
                    key_id = current,
                    droppable = ?status.unused(),
                    "key rotation done: every sealed value uses the current key; the other key ids may leave the ring"
                );
                store.rotation.end(None);
            }
            Err(StoreError::Closed) => {
                tracing::info!("key rotation stopped with the store; it resumes at the next start");
                store.rotation.end(Some("stopped: the store closed".into()));
            }
            Err(e) => {
                tracing::error!(error = %e, "key rotation stopped");
                store.rotation.end(Some(e.to_string()));
            }
        }
    });
    true
}

impl SqliteStore {
    fn status(&self, sealed: BTreeMap<u8, u64>) -> KeyStatus {
        KeyStatus {
            current: self.sealer.current_id(),
            ring: self.sealer.key_ids(),
            sealed,
            rotation: self.rotation.progress(),
        }
    }
}

#[async_trait]
impl KeyStore for SqliteStore {
    async fn key_status(&self) -> Result<KeyStatus, StoreError> {
        let counts = self.read(count_sealed).await?;
        self.rotation.set_counts(counts.clone());
        Ok(self.status(counts))
    }

    async fn start_key_rotation(&self) -> Result<KeyStatus, StoreError> {
        let counts = self.read(count_sealed).await?;
        let current = self.sealer.current_id();
        let old = counts.keys().any(|id| *id != current);
        // While a rotation runs it keeps the counts itself.
        if !self.rotation.progress().running {
            self.rotation.set_counts(counts.clone());
        }
        if old {
            spawn(self);
        }
        Ok(self.status(counts))
    }

    fn sealed_counts(&self) -> BTreeMap<u8, u64> {
        self.rotation.counts()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::seal::{KeyRing, KEY_LEN};
    use crate::store::sqlite::{migrate, SqliteOptions};
    use crate::store::{AgentStore, Store};

    /// Every BLOB column of the schema is either listed in [`SEALED`] or known to hold
    /// no sealed value: a new sealed column must be added to the rotation.
    #[test]
    fn every_blob_column_of_the_schema_is_accounted_for() {
        let mut c = Connection::open_in_memory().unwrap();
        migrate::migrate(&mut c).unwrap();
        let tables: Vec<String> = c
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for t in tables {
            let cols: Vec<(String, String)> = c
                .prepare(&format!("SELECT name, type FROM pragma_table_info('{t}')"))
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            for (name, ty) in cols {
                if !ty.eq_ignore_ascii_case("BLOB") {
                    continue;
                }
                let listed = SEALED.iter().any(|s| s.table == t && s.sealed == name)
                    || UNSEALED_BLOBS.contains(&(t.as_str(), name.as_str()));
                assert!(
                    listed,
                    "{t}.{name} is a BLOB column: list it in SEALED (sealed values are re-sealed by a rotation) or in UNSEALED_BLOBS"
                );
            }
        }
    }

    fn ring(ids: &[u8], current: u8) -> KeyRing {
        let mut text = String::from("totpd-keyring v1\n");
        for id in ids {
            text.push_str(&format!(
                "key {id} {}{}\n",
                data_encoding::HEXLOWER.encode(&[*id; KEY_LEN]),
                if *id == current { " current" } else { "" }
            ));
        }
        KeyRing::parse(text.as_bytes()).unwrap()
    }

    fn agent_secret(id: &str) -> crate::store::AgentSecretInfo {
        crate::store::AgentSecretInfo {
            id: id.into(),
            label: "l".into(),
            issuer: None,
            params: crate::otp::Params::new("SHA1", 6, 30).unwrap(),
            created_at: 1,
        }
    }

    /// The compare-and-swap: a value replaced or deleted between the read and the write
    /// of a batch is left as it is.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_replaces_only_values_unchanged_since_read() {
        let dir = tempfile::tempdir().unwrap();
        let opts = SqliteOptions::new(dir.path().join("r.db"));
        let s = SqliteStore::open(&opts, Sealer::from_ring(&ring(&[1], 1)))
            .unwrap()
            .store;
        for id in ["a", "b", "c"] {
            s.create_agent_secret("e", &agent_secret(id), b"0123456789abcdef0123")
                .await
                .unwrap();
        }
        s.close();
        let s = SqliteStore::open(&opts, Sealer::from_ring(&ring(&[1, 2], 2)))
            .unwrap()
            .store;
        let sealer = s.sealer.clone();
        let col = &SEALED[1];
        let read = s
            .read(move |c| read_batch(c, &SEALED[1], &sealer, "", 10))
            .await
            .unwrap();
        assert_eq!(read.items.len(), 3);
        // Meanwhile: "a" is deleted and "b" gets another value.
        s.delete_agent_secret("e", "a").await.unwrap();
        let other = s.sealer.seal(&otp_secrets::aad("b"), b"another").unwrap();
        s.write(move |c| {
            c.execute("UPDATE otp_secrets SET sealed = ?1 WHERE id = 'b'", [other])?;
            Ok(())
        })
        .await
        .unwrap();
        let items = read.items.clone();
        let done = s.write(move |c| apply_batch(c, col, &items)).await.unwrap();
        assert_eq!(done, vec![false, false, true]);
        let rows = s
            .read(|c| {
                let mut st = c.prepare("SELECT id, sealed FROM otp_secrets ORDER BY id")?;
                let v = st
                    .query_map([], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(v)
            })
            .await
            .unwrap();
        assert_eq!(rows.len(), 2, "the deleted row stays deleted");
        assert_eq!(
            s.sealer.open(&otp_secrets::aad("b"), &rows[0].1).unwrap(),
            b"another",
            "the value written meanwhile stays"
        );
        assert_eq!(rows[1].1, read.items[2].new);
        assert_eq!(
            s.get_agent_secret("e", "c").await.unwrap().unwrap().0,
            b"0123456789abcdef0123"
        );
        s.close();
    }

    #[test]
    fn a_database_using_a_key_id_the_ring_lacks_or_a_wrong_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let opts = SqliteOptions::new(dir.path().join("k.db"));
        SqliteStore::open(&opts, Sealer::from_ring(&ring(&[3], 3)))
            .unwrap()
            .store
            .close();
        assert!(matches!(
            SqliteStore::open(&opts, Sealer::from_ring(&ring(&[1, 2], 2))),
            Err(StoreError::MissingKey(3))
        ));
        // Key id 3 present but another key under it.
        let mut text = String::from("totpd-keyring v1\n");
        text.push_str(&format!(
            "key 3 {} current\n",
            data_encoding::HEXLOWER.encode(&[9u8; KEY_LEN])
        ));
        let wrong = KeyRing::parse(text.as_bytes()).unwrap();
        assert!(matches!(
            SqliteStore::open(&opts, Sealer::from_ring(&wrong)),
            Err(StoreError::WrongKey)
        ));
        let s = SqliteStore::open(&opts, Sealer::from_ring(&ring(&[3, 4], 4)))
            .unwrap()
            .store;
        assert_eq!(s.sealed_counts(), BTreeMap::from([(3, 1)]));
        s.close();
    }
}

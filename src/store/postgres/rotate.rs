//! Sealing-key rotation on PostgreSQL ([`KeyStore`]): every sealed value re-sealed under
//! the key ring's current key, while every daemon goes on reading and validating.
//!
//! # One rotation, across every daemon
//!
//! A rotation holds the session advisory lock [`ROTATION_LOCK`] on a connection of its
//! own (taken out of the pool for the rotation's life) and does all its work on it. A
//! start on any daemon first tries that lock (`pg_try_advisory_lock`): while another
//! daemon's rotation holds it, nothing starts and the status says a rotation is
//! running. The lock goes when the rotation ends, or with its connection when the daemon
//! dies, so a crashed rotation never blocks the next one. [`KeyStore::key_status`] reads
//! `pg_locks`, so `running` is true on every daemon while any one rotates (`resealed`
//! and `skipped` count the work of this daemon's rotations only).
//!
//! # Re-sealing
//!
//! For each sealed column ([`super::SEALED`], the key check first), batches of
//! [`BATCH`] values whose first byte (their key id) is not the current key's are read in
//! key order, opened and sealed again in the daemon, and each one is written back with
//! a compare-and-swap, `UPDATE otp_secrets SET sealed = $new WHERE id = $1 AND sealed =
//! $old`, a statement (and transaction) of its own. Under `READ COMMITTED` an `UPDATE`
//! that meets a row locked by a validation waits for it, then evaluates its `WHERE`
//! again on the row as committed: a value replaced or deleted meanwhile is left as it is
//! (counted `skipped`, read again by the next pass), and since the swap writes only the
//! sealed column, the state a validation recorded (last step, failures, lock) is kept.
//! Each swap holds one row lock for the time of one single-row update and waits for
//! nothing while holding it, so a rotation can never be part of a deadlock, whatever
//! rows the other calls lock and in what order. After each pass the values still under
//! an old key are counted; passes go on (with a short pause, for rows that were busy)
//! until none is, or [`MAX_PASSES`] passes did not get there.
//!
//! **Crashes.** Each value is its own transaction: at any moment every value is under
//! its old key or the current one, and the ring opens both. The rotation's session
//! commits without waiting for the WAL flush (`synchronous_commit = off`: a swap the
//! server loses in a crash leaves that value under its old key, still readable, and the
//! next rotation moves it), and ends with a transaction that does wait, so every swap is
//! durable before the rotation reports that no value uses an old key.
//!
//! # Several daemons: two phases, started by the operator
//!
//! There is no registry of daemons, so a daemon cannot know whether the others hold a
//! key. The rule is therefore the operator's, stated here and in the README:
//!
//! 1. **Every daemon loads the new key first.** Give each daemon the ring with the new
//!    key and restart it. Safest in two rolls: first the ring with the new key *not*
//!    current (`key 2 <hex>` without `current`, the old key still current), so no daemon
//!    seals with it while another lacks it; then the same ring with the new key current.
//! 2. **Then one `totpd key rotate`**, on any one daemon. Only this starts re-sealing.
//!
//! What the store enforces:
//!
//! - **No start by itself.** A daemon that starts with a ring whose current key is new
//!   does not re-seal on its own ([`KeyStore::resume_key_rotation`] declines and logs
//!   what to do): the other daemons may not have the key yet.
//! - **Resumed after a crash.** `totpd key rotate` records its target key id in `meta`
//!   (`key_rotation`) before the first swap, and the rotation deletes it once no value
//!   uses another key. A daemon that starts and finds that record naming its own current
//!   key resumes the rotation: the operator asked for it, so every daemon had the key.
//! - **A stale ring cannot rotate.** A start on a daemon whose ring lacks a key id some
//!   value uses (another daemon sealed with a newer key) re-seals nothing and says so in
//!   the status's `error`: its ring is out of date.
//! - **A daemon lacking a key in use does not start**: at open, a key id some row
//!   carries and the ring lacks is `MissingKey(id)` ([`PgStore::open`]). The key check
//!   row is re-sealed first, so from a rotation's first swap on, a daemon without the
//!   new key is refused at start, naming the key id.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deadpool_postgres::{ClientWrapper, Object, Pool, PoolError};

use super::{col, PgStore, Sealed, SEALED};
use crate::store::{KeyStatus, KeyStore, RotationProgress, Sealer, StoreError};

/// The session advisory lock a rotation holds ("totpdrot" in ASCII; the start's
/// migration lock is another key). Advisory locks are per database.
pub(super) const ROTATION_LOCK: i64 = i64::from_be_bytes(*b"totpdrot");

/// The `meta` row recording the key id an operator asked a rotation to re-seal under
/// (one byte), until no value uses another key.
pub(super) const INTENT: &str = "key_rotation";

/// Values read, re-sealed and swapped per batch.
pub(super) const BATCH: usize = 200;
/// Passes over every column before a rotation gives up on the values it could not move.
pub(super) const MAX_PASSES: usize = 10;
/// How long a rotation whose connection broke tries to get one back (a failover).
const RECONNECT_FOR: Duration = Duration::from_secs(60);
/// Tries of one read that found the database busy (a statement timeout), 100 ms apart.
const BUSY_TRIES: usize = 50;

/// The rotation's progress on this daemon, shared with its task.
#[derive(Default)]
pub(super) struct Rotation {
    progress: Arc<Mutex<RotationProgress>>,
}

impl Rotation {
    fn progress(&self) -> RotationProgress {
        self.progress.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Marks the start; false if one runs already on this daemon.
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
}

/// The statement counting sealed values per key id, every sealed column at once (one
/// snapshot).
fn count_sql() -> String {
    SEALED
        .iter()
        .map(|c| {
            format!(
                "SELECT substring({s} FROM 1 FOR 1), count(*) FROM {t} WHERE {w} GROUP BY 1",
                s = c.sealed,
                t = c.table,
                w = c.rows
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}

/// Sealed values per key id (an empty value counts under id 0, which no ring holds).
async fn count_sealed(c: &ClientWrapper) -> Result<BTreeMap<u8, u64>, StoreError> {
    let stmt = c.prepare_cached(&count_sql()).await?;
    let mut counts = BTreeMap::new();
    for r in c.query(&stmt, &[]).await? {
        let id: Vec<u8> = col(&r, 0)?;
        let n: i64 = col(&r, 1)?;
        *counts.entry(id.first().copied().unwrap_or(0)).or_default() += n.max(0) as u64;
    }
    Ok(counts)
}

/// Whether any session holds [`ROTATION_LOCK`] on this database (a bigint advisory key
/// shows in `pg_locks` as its high and low 32 bits, `objsubid` 1).
async fn rotation_held(c: &ClientWrapper) -> Result<bool, StoreError> {
    let stmt = c
        .prepare_cached(
            "SELECT EXISTS (
                 SELECT 1 FROM pg_locks
                 WHERE locktype = 'advisory' AND granted AND objsubid = 1
                   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                   AND (classid::bigint << 32) | objid::bigint = $1)",
        )
        .await?;
    Ok(c.query_one(&stmt, &[&ROTATION_LOCK]).await?.try_get(0)?)
}

/// The key id a recorded rotation targets, if one is recorded.
async fn intent(c: &ClientWrapper) -> Result<Option<u8>, StoreError> {
    let stmt = c
        .prepare_cached("SELECT value FROM meta WHERE key = $1")
        .await?;
    Ok(match c.query_opt(&stmt, &[&INTENT]).await? {
        Some(r) => col::<Vec<u8>>(&r, 0)?.first().copied(),
        None => None,
    })
}

fn pool_error(e: PoolError) -> StoreError {
    match e {
        PoolError::Closed => StoreError::Closed,
        PoolError::Timeout(_) => StoreError::Unavailable,
        PoolError::Backend(e) => e.into(),
        other => StoreError::Backend(other.to_string()),
    }
}

/// A connection of its own holding [`ROTATION_LOCK`], or `None` when another session
/// holds it. The connection leaves the pool before the lock is tried, so the lock can
/// never go back into the pool with it: it is released when the connection is dropped
/// (closed), or explicitly.
async fn lock_rotation(pool: &Pool) -> Result<Option<ClientWrapper>, StoreError> {
    let c = Object::take(pool.get().await.map_err(pool_error)?);
    let got: bool = c
        .query_one("SELECT pg_try_advisory_lock($1)", &[&ROTATION_LOCK])
        .await?
        .try_get(0)?;
    Ok(got.then_some(c))
}

/// Dropped counts of a key id reaching zero leave the map.
fn moved(counts: &mut BTreeMap<u8, u64>, from: u8, to: u8) {
    if let Some(n) = counts.get_mut(&from) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            counts.remove(&from);
        }
    }
    *counts.entry(to).or_default() += 1;
}

/// A value read for re-sealing, and what replaces it.
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

/// A running rotation: its connection (holding the lock) and what it reports to.
struct Job {
    pool: Pool,
    client: ClientWrapper,
    sealer: Sealer,
    deadline: Duration,
    progress: Arc<Mutex<RotationProgress>>,
    counts: Arc<Mutex<BTreeMap<u8, u64>>>,
}

/// How a rotation ended early.
enum Stop {
    /// The store closed.
    Closed,
    /// Another daemon's rotation holds the lock now (this one lost its connection).
    Elsewhere,
    Failed(StoreError),
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Closed => Stop::Closed,
            e => Stop::Failed(e),
        }
    }
}

impl Job {
    /// After an `Unavailable`: a connection that broke (the lock went with it) is
    /// replaced by a new one holding the lock again, for up to [`RECONNECT_FOR`]; one
    /// that is fine (a statement timed out) is used again after a pause.
    async fn recover(&mut self) -> Result<(), Stop> {
        if !self.client.is_closed() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            return Ok(());
        }
        let since = Instant::now();
        loop {
            if self.pool.is_closed() {
                return Err(Stop::Closed);
            }
            match tokio::time::timeout(self.deadline, lock_rotation(&self.pool)).await {
                Ok(Ok(Some(c))) => {
                    c.batch_execute("SET synchronous_commit = off")
                        .await
                        .map_err(|e| Stop::Failed(e.into()))?;
                    self.client = c;
                    tracing::info!("key rotation: connection back, lock held again");
                    return Ok(());
                }
                Ok(Ok(None)) => return Err(Stop::Elsewhere),
                Ok(Err(StoreError::Closed)) => return Err(Stop::Closed),
                Ok(Err(StoreError::Unavailable)) | Err(_) if since.elapsed() < RECONNECT_FOR => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Ok(Err(e)) => return Err(Stop::Failed(e)),
                Err(_) => return Err(Stop::Failed(StoreError::Unavailable)),
            }
        }
    }

    /// Up to `limit` values of `col` after `after` (in key order) whose key id is not
    /// the current one, opened and re-sealed under the current key.
    async fn read_batch(
        &self,
        col_: &Sealed,
        after: &str,
        limit: usize,
    ) -> Result<Read, StoreError> {
        let sql = format!(
            "SELECT {k}, {s} FROM {t}
             WHERE ({w}) AND {k} > $1 AND substring({s} FROM 1 FOR 1) <> $2
             ORDER BY {k} LIMIT $3",
            k = col_.key,
            s = col_.sealed,
            t = col_.table,
            w = col_.rows
        );
        let current = vec![self.sealer.current_id()];
        let rows = tokio::time::timeout(self.deadline, async {
            let stmt = self.client.prepare_cached(&sql).await?;
            Ok::<_, StoreError>(
                self.client
                    .query(&stmt, &[&after, &current, &(limit as i64)])
                    .await?,
            )
        })
        .await
        .unwrap_or(Err(StoreError::Unavailable))?;
        let mut read = Read {
            items: Vec::with_capacity(rows.len()),
            last: None,
            seen: rows.len(),
            unreadable: Vec::new(),
        };
        for r in rows {
            let key: String = col(&r, 0)?;
            let old: Vec<u8> = col(&r, 1)?;
            match self.sealer.reseal(&(col_.aad)(&key), &old) {
                Ok(Some(new)) => read.items.push(Item {
                    key: key.clone(),
                    old,
                    new,
                }),
                Ok(None) => {}
                Err(_) => read.unreadable.push(format!("{} {key}", col_.table)),
            }
            read.last = Some(key);
        }
        Ok(read)
    }

    /// The compare-and-swap of one value: whether it was still the one read (and is
    /// replaced now).
    async fn swap(&self, col_: &Sealed, it: &Item) -> Result<bool, StoreError> {
        let sql = format!(
            "UPDATE {t} SET {s} = $3 WHERE {k} = $1 AND {s} = $2",
            t = col_.table,
            s = col_.sealed,
            k = col_.key
        );
        tokio::time::timeout(self.deadline, async {
            let stmt = self.client.prepare_cached(&sql).await?;
            Ok(self
                .client
                .execute(&stmt, &[&it.key, &it.old, &it.new])
                .await?
                == 1)
        })
        .await
        .unwrap_or(Err(StoreError::Unavailable))
    }

    /// Counts the batch's work: `moved` values went from their old key ids to the
    /// current one, `skipped` were left alone.
    fn record(&self, moved_from: &[u8], skipped: u64) {
        let current = self.sealer.current_id();
        if let Ok(mut p) = self.progress.lock() {
            p.resealed += moved_from.len() as u64;
            p.skipped += skipped;
        }
        if let Ok(mut c) = self.counts.lock() {
            for old in moved_from {
                moved(&mut c, *old, current);
            }
        }
    }

    /// The passes, until no value uses an old key. Returns the current key id.
    async fn run(&mut self) -> Result<u8, Stop> {
        let current = self.sealer.current_id();
        let mut unreadable: Vec<String> = Vec::new();
        let mut old = 0;
        for pass in 0..MAX_PASSES {
            unreadable.clear();
            for col_ in SEALED {
                let mut after = String::new();
                loop {
                    if self.pool.is_closed() {
                        return Err(Stop::Closed);
                    }
                    let mut tries = 0;
                    let read = loop {
                        match self.read_batch(col_, &after, BATCH).await {
                            Err(StoreError::Unavailable) if tries < BUSY_TRIES => {
                                tries += 1;
                                self.recover().await?;
                            }
                            other => break other?,
                        }
                    };
                    unreadable.extend(read.unreadable);
                    let mut moved_from = Vec::with_capacity(read.items.len());
                    let mut skipped = 0;
                    for it in &read.items {
                        if self.pool.is_closed() {
                            return Err(Stop::Closed);
                        }
                        match self.swap(col_, it).await {
                            Ok(true) => moved_from.extend(Sealer::key_id(&it.old)),
                            Ok(false) => skipped += 1,
                            // Waited too long for a row, or the connection broke (the
                            // swap may or may not have committed): the next pass reads
                            // the value again either way.
                            Err(StoreError::Unavailable) => {
                                skipped += 1;
                                self.recover().await?;
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                    self.record(&moved_from, skipped);
                    if !read.items.is_empty() {
                        tracing::debug!(
                            table = col_.table,
                            moved = moved_from.len(),
                            skipped,
                            "key rotation batch"
                        );
                    }
                    match read.last {
                        Some(last) if read.seen == BATCH => after = last,
                        _ => break,
                    }
                    tokio::task::yield_now().await;
                }
            }
            let counts = self.counted().await?;
            old = counts
                .iter()
                .filter(|(id, _)| **id != current)
                .map(|(_, n)| n)
                .sum::<u64>();
            if old == 0 {
                self.finish().await?;
                return Ok(current);
            }
            if !unreadable.is_empty() && unreadable.len() as u64 >= old {
                break;
            }
            // Values left alone were busy or changing: give them a moment.
            tokio::time::sleep(Duration::from_millis(100 * (pass as u64 + 1))).await;
        }
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
        Err(Stop::Failed(StoreError::Corrupt(msg)))
    }

    /// The values per key id now, kept as the store's counts.
    async fn counted(&mut self) -> Result<BTreeMap<u8, u64>, Stop> {
        let mut tries = 0;
        loop {
            let r = tokio::time::timeout(self.deadline, count_sealed(&self.client))
                .await
                .unwrap_or(Err(StoreError::Unavailable));
            match r {
                Err(StoreError::Unavailable) if tries < BUSY_TRIES => {
                    tries += 1;
                    self.recover().await?;
                }
                Ok(counts) => {
                    if let Ok(mut c) = self.counts.lock() {
                        *c = counts.clone();
                    }
                    return Ok(counts);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The end: one transaction that waits for the WAL flush (so every swap before it
    /// is durable) and deletes the record of the operator's request.
    async fn finish(&mut self) -> Result<(), Stop> {
        let sql = format!(
            "SET synchronous_commit = on;
             BEGIN;
             SELECT txid_current();
             DELETE FROM meta WHERE key = '{INTENT}' AND value = '\\x{:02x}'::bytea;
             COMMIT;",
            self.sealer.current_id()
        );
        tokio::time::timeout(self.deadline, self.client.batch_execute(&sql))
            .await
            .map_err(|_| Stop::Failed(StoreError::Unavailable))?
            .map_err(|e| Stop::Failed(e.into()))
    }
}

impl PgStore {
    fn key_status_of(&self, sealed: BTreeMap<u8, u64>, held: bool) -> KeyStatus {
        self.key_status_with(self.rotation.progress(), sealed, held)
    }

    fn key_status_with(
        &self,
        mut rotation: RotationProgress,
        sealed: BTreeMap<u8, u64>,
        held: bool,
    ) -> KeyStatus {
        rotation.running |= held;
        KeyStatus {
            current: self.sealer.current_id(),
            ring: self.sealer.key_ids(),
            sealed,
            rotation,
        }
    }

    fn set_sealed(&self, counts: &BTreeMap<u8, u64>) {
        if let Ok(mut c) = self.sealed.lock() {
            *c = counts.clone();
        }
    }

    /// Starts the rotation's task with `c`, the connection holding the lock.
    fn spawn_rotation(&self, c: ClientWrapper, old: u64) -> bool {
        if !self.rotation.begin() {
            // Already running here (the lock is this daemon's): the new connection
            // goes, and its lock with it.
            return false;
        }
        let current = self.sealer.current_id();
        tracing::info!(
            values = old,
            key_id = current,
            "key rotation started: re-sealing every value sealed under an old key"
        );
        let mut job = Job {
            pool: self.pool.clone(),
            client: c,
            sealer: self.sealer.clone(),
            deadline: self.deadline,
            progress: self.rotation.progress.clone(),
            counts: self.sealed.clone(),
        };
        tokio::spawn(async move {
            let outcome = job.run().await;
            let error = match outcome {
                Ok(current) => {
                    let p = job.progress.lock().map(|p| p.clone()).unwrap_or_default();
                    tracing::info!(
                        resealed = p.resealed,
                        key_id = current,
                        "key rotation done: every sealed value uses the current key; the other key ids may leave the ring"
                    );
                    None
                }
                Err(Stop::Closed) => {
                    tracing::info!("key rotation stopped with the store; `totpd key rotate` (or a restart) resumes it");
                    Some("stopped: the store closed".to_string())
                }
                Err(Stop::Elsewhere) => {
                    tracing::info!("key rotation: this daemon lost its connection, and another daemon's rotation goes on");
                    None
                }
                Err(Stop::Failed(e)) => {
                    tracing::error!(error = %e, "key rotation stopped");
                    Some(e.to_string())
                }
            };
            // The lock goes before `running` does, so a daemon that reads both never
            // sees neither. (Dropping the connection would release it too.)
            let _ = tokio::time::timeout(
                job.deadline,
                job.client
                    .execute("SELECT pg_advisory_unlock($1)", &[&ROTATION_LOCK]),
            )
            .await;
            drop(job.client);
            if let Ok(mut p) = job.progress.lock() {
                p.running = false;
                p.error = error;
            }
        });
        true
    }
}

#[async_trait]
impl KeyStore for PgStore {
    /// Whether a rotation runs (here, then on any daemon: the lock), then the counts, in
    /// that order: a rotation ends (commits its last swap, then releases the lock, then
    /// says it stopped) before a status that says none runs reads its counts, so such a
    /// status never shows values a finished rotation had yet to move.
    async fn key_status(&self) -> Result<KeyStatus, StoreError> {
        let progress = self.rotation.progress();
        let (held, counts) = self
            .bounded(async {
                let c = self.client().await?;
                let held = rotation_held(&c).await?;
                Ok((held, count_sealed(&c).await?))
            })
            .await?;
        // While this daemon's rotation runs it keeps the counts itself.
        if !progress.running && !self.rotation.progress().running {
            self.set_sealed(&counts);
        }
        Ok(self.key_status_with(progress, counts, held))
    }

    /// Starts a rotation unless one runs on any daemon, the ring here lacks a key id in
    /// use, or no value uses an old key; records the operator's request in `meta` before
    /// the first swap (see the module's documentation).
    async fn start_key_rotation(&self) -> Result<KeyStatus, StoreError> {
        let current = self.sealer.current_id();
        let counts = self
            .bounded(async { count_sealed(&*self.client().await?).await })
            .await?;
        if !self.rotation.progress().running {
            self.set_sealed(&counts);
        }
        if let Some(id) = counts.keys().copied().find(|id| !self.sealer.has_key(*id)) {
            let mut s = self.key_status_of(counts, false);
            s.rotation.error = Some(format!(
                "values are sealed under key id {id}, which this daemon's key ring lacks: its ring \
                 is out of date (another daemon seals with a newer key); give this daemon the \
                 newest ring and restart it, or rotate on a daemon that has it"
            ));
            tracing::warn!(
                key_id = id,
                "key rotation refused: this daemon's key ring lacks a key id in use"
            );
            return Ok(s);
        }
        let old: u64 = counts
            .iter()
            .filter(|(id, _)| **id != current)
            .map(|(_, n)| n)
            .sum();
        if self.rotation.progress().running {
            return Ok(self.key_status_of(counts, true));
        }
        if old == 0 {
            return Ok(self.key_status_of(counts, false));
        }
        let locked = self
            .bounded(async {
                let Some(c) = lock_rotation(&self.pool).await? else {
                    return Ok(None);
                };
                // Recorded (durably: the session's default) before the first swap.
                let stmt = c
                    .prepare_cached(
                        "INSERT INTO meta (key, value) VALUES ($1, $2)
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    )
                    .await?;
                c.execute(&stmt, &[&INTENT, &vec![current]]).await?;
                c.batch_execute("SET synchronous_commit = off").await?;
                Ok(Some(c))
            })
            .await?;
        let Some(c) = locked else {
            tracing::info!("key rotation asked for: another daemon's rotation is running");
            return Ok(self.key_status_of(counts, true));
        };
        self.spawn_rotation(c, old);
        Ok(self.key_status_of(counts, true))
    }

    /// Resumes only a rotation an operator started (its record in `meta` names this
    /// ring's current key); otherwise logs what to do and returns `None`.
    async fn resume_key_rotation(&self) -> Result<Option<KeyStatus>, StoreError> {
        let current = self.sealer.current_id();
        let old: BTreeMap<u8, u64> = PgStore::sealed_counts(self)
            .into_iter()
            .filter(|(id, n)| *id != current && *n > 0)
            .collect();
        if old.is_empty() {
            return Ok(None);
        }
        let asked = self
            .bounded(async { intent(&*self.client().await?).await })
            .await?;
        if asked == Some(current) {
            return self.start_key_rotation().await.map(Some);
        }
        tracing::warn!(
            old_key_ids = ?old.keys().collect::<Vec<_>>(),
            old_rows = old.values().sum::<u64>(),
            key_id = current,
            unfinished_rotation_to = ?asked,
            "values are sealed under old key ids; on PostgreSQL re-sealing starts only when asked: \
             once every daemon's key ring holds key id {current}, run `totpd key rotate`"
        );
        Ok(None)
    }

    fn sealed_counts(&self) -> BTreeMap<u8, u64> {
        PgStore::sealed_counts(self)
    }
}

//! The operations areas of the PostgreSQL store: [`OpsStore`] (row counts, size, no
//! writer, backups left to PostgreSQL's tools), [`KeyStore`] (rotation with several
//! daemons on one database) and [`TransferStore`] (export and import, SQLite's rules).
//!
//! Each test makes a database of its own in the cluster `TOTPD_TEST_POSTGRES` names
//! (`common/postgres.rs`), and skips loudly without it (fails under CI). Secrets are
//! seeded with SQL, sealed with the [`Sealer`], so these tests need no other area of
//! the store. Several `PgStore`s on one database stand for several daemons.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use totpd::otp::Params;
use totpd::store::postgres::{PgOptions, PgStore};
use totpd::store::seal::{KeyRing, KEY_LEN};
use totpd::store::{
    ExportScope, Holder, ImportRefusal, Imported, KeyStatus, KeyStore, MethodRecord,
    MovedRecoveryCode, MovedSecret, OpsStore, PolicyStore, RecoveryHash, Sealer, StoreError,
    TokenRecord, TokenStore, Transfer, TransferStore, WriterStats, MAX_USER_DEVICES,
};

#[path = "common/postgres.rs"]
mod pg;

use pg::TestDb;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A ring of the keys `[id; 32]` for each id, `current` current.
fn ring(ids: &[u8], current: u8) -> KeyRing {
    let mut text = String::from("totpd-keyring v1\n");
    for id in ids {
        text.push_str(&format!(
            "key {id} {}{}\n",
            data_encoding::HEXLOWER.encode(&[*id; KEY_LEN]),
            if *id == current { " current" } else { "" }
        ));
    }
    KeyRing::parse(text.as_bytes()).expect("a ring")
}

fn sealer(ids: &[u8], current: u8) -> Sealer {
    Sealer::from_ring(&ring(ids, current))
}

fn options(db: &TestDb) -> PgOptions {
    PgOptions::new(&db.url).expect("the test database's URL")
}

async fn open_with(opts: &PgOptions, ids: &[u8], current: u8) -> Result<Arc<PgStore>, StoreError> {
    PgStore::open(opts, sealer(ids, current))
        .await
        .map(|o| o.store)
}

async fn open(db: &TestDb, ids: &[u8], current: u8) -> Arc<PgStore> {
    open_with(&options(db), ids, current)
        .await
        .unwrap_or_else(|e| panic!("opening the store: {e:?}"))
}

/// A connection of the test's own (an operator at `psql`, or another daemon's
/// transaction).
async fn connect(db: &TestDb) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .expect("connecting to the test database");
    tokio::spawn(conn);
    c
}

fn aad(id: &str) -> String {
    format!("totpd/v1/otp_secrets/{id}")
}

const SHA1_6_30: (&str, i32, i32) = ("SHA1", 6, 30);

/// An `otp_secrets` row sealed with `s` (SHA1, 6 digits, 30 s).
async fn seed_secret(
    c: &tokio_postgres::Client,
    s: &Sealer,
    id: &str,
    secret: &[u8],
    last_step: Option<i64>,
) {
    let sealed = s.seal(&aad(id), secret).unwrap();
    let (alg, digits, period) = SHA1_6_30;
    c.execute(
        "INSERT INTO otp_secrets (id, sealed, algorithm, digits, period, last_step, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, 1000)",
        &[&id, &sealed, &alg, &digits, &period, &last_step],
    )
    .await
    .unwrap();
}

#[allow(clippy::too_many_arguments)]
async fn seed_agent(
    c: &tokio_postgres::Client,
    s: &Sealer,
    entity: &str,
    id: &str,
    label: &str,
    issuer: Option<&str>,
    secret: &[u8],
    last_step: Option<i64>,
) {
    seed_secret(c, s, id, secret, last_step).await;
    c.execute(
        "INSERT INTO agent_secrets (id, entity_id, label, issuer, created_at) VALUES ($1, $2, $3, $4, 1000)",
        &[&id, &entity, &label, &issuer],
    )
    .await
    .unwrap();
}

fn method(id: &str, name: Option<&str>, issuer: &str) -> MethodRecord {
    MethodRecord {
        id: id.into(),
        name: name.map(str::to_string),
        issuer: issuer.into(),
        params: Params::new("SHA1", 6, 30).unwrap(),
        key_size: 20,
        qr_size: 200,
        skew: 1,
        max_validation_attempts: 5,
        created_at: 900,
    }
}

async fn seed_method(c: &tokio_postgres::Client, m: &MethodRecord) {
    c.execute(
        "INSERT INTO mfa_methods (id, name, issuer, period, key_size, qr_size, algorithm, digits,
                                  skew, max_validation_attempts, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        &[
            &m.id,
            &m.name,
            &m.issuer,
            &(m.params.period as i32),
            &(m.key_size as i32),
            &(m.qr_size as i32),
            &m.params.algorithm.as_str(),
            &(m.params.digits as i32),
            &(m.skew as i32),
            &(m.max_validation_attempts as i32),
            &m.created_at,
        ],
    )
    .await
    .unwrap();
}

async fn seed_enrolment(
    c: &tokio_postgres::Client,
    s: &Sealer,
    method_id: &str,
    entity: &str,
    secret: &[u8],
    last_step: Option<i64>,
) {
    let sid = format!("mfa-{method_id}-{entity}");
    seed_secret(c, s, &sid, secret, last_step).await;
    c.execute(
        "INSERT INTO mfa_secrets (method_id, entity_id, secret_id, created_at) VALUES ($1, $2, $3, 1000)",
        &[&method_id, &entity, &sid],
    )
    .await
    .unwrap();
}

async fn seed_device(
    c: &tokio_postgres::Client,
    s: &Sealer,
    entity: &str,
    name: &str,
    active: bool,
    secret: &[u8],
    last_step: Option<i64>,
) {
    let sid = format!("dev-{entity}-{name}");
    seed_secret(c, s, &sid, secret, last_step).await;
    c.execute(
        "INSERT INTO user_devices (entity_id, name, secret_id, active, created_at) VALUES ($1, $2, $3, $4, 1000)",
        &[&entity, &name, &sid, &active],
    )
    .await
    .unwrap();
}

fn argon(n: u32) -> String {
    format!("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$hash{n}")
}

async fn seed_recovery(c: &tokio_postgres::Client, entity: &str, selector: &str, spent: bool) {
    let spent_at = spent.then_some(1500i64);
    c.execute(
        "INSERT INTO recovery_codes (entity_id, selector, hash, created_at, spent_at) VALUES ($1, $2, $3, 1000, $4)",
        &[&entity, &selector, &argon(selector.len() as u32), &spent_at],
    )
    .await
    .unwrap();
}

/// The sealed value of `otp_secrets` row `id`, and its last step.
async fn stored(c: &tokio_postgres::Client, id: &str) -> Option<(Vec<u8>, Option<i64>)> {
    c.query_opt(
        "SELECT sealed, last_step FROM otp_secrets WHERE id = $1",
        &[&id],
    )
    .await
    .unwrap()
    .map(|r| (r.get(0), r.get(1)))
}

async fn scalar_i64(c: &tokio_postgres::Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.unwrap().get(0)
}

/// Waits until some session of the database waits for a row lock in a statement
/// beginning with `query` (the rotation's compare-and-swap, blocked by the test).
async fn until_waiting(c: &tokio_postgres::Client, query: &str) {
    let started = Instant::now();
    loop {
        let n = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'
                   AND query LIKE $1 || '%'",
                &[&query],
            )
            .await
            .unwrap()
            .get::<_, i64>(0);
        if n > 0 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "nothing waits on a lock in `{query}`"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for the end of every rotation (any daemon's), and returns the status then.
async fn until_rotated(s: &PgStore) -> KeyStatus {
    let started = Instant::now();
    loop {
        let st = s.key_status().await.unwrap();
        if !st.rotation.running {
            return st;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the rotation does not end: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const ROTATION_LOCK: i64 = i64::from_be_bytes(*b"totpdrot");

/// Sessions holding the rotation's advisory lock on this database.
async fn rotation_lock_holders(c: &tokio_postgres::Client) -> i64 {
    c.query_one(
        "SELECT count(*) FROM pg_locks
         WHERE locktype = 'advisory' AND granted AND objsubid = 1
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND (classid::bigint << 32) | objid::bigint = $1",
        &[&ROTATION_LOCK],
    )
    .await
    .unwrap()
    .get(0)
}

async fn intent_rows(c: &tokio_postgres::Client) -> i64 {
    scalar_i64(c, "SELECT count(*) FROM meta WHERE key = 'key_rotation'").await
}

fn seed_of(i: usize) -> Vec<u8> {
    format!("seed number {i:04} twenty").into_bytes()
}

/// `n` agent secrets `s000`, `s001`, ... of entity `e`, sealed with `s`.
async fn seed_many(c: &tokio_postgres::Client, s: &Sealer, n: usize) {
    for i in 0..n {
        seed_agent(
            c,
            s,
            "e",
            &format!("s{i:03}"),
            "l",
            None,
            &seed_of(i),
            Some(i as i64),
        )
        .await;
    }
}

/// Every value of the database opens with `s` to what it should, and the counts per key
/// id are `want`.
async fn check_values(
    c: &tokio_postgres::Client,
    s: &Sealer,
    n: usize,
    changed: &BTreeMap<String, Vec<u8>>,
) {
    for i in 0..n {
        let id = format!("s{i:03}");
        let Some((sealed, _)) = stored(c, &id).await else {
            continue;
        };
        let want = changed.get(&id).cloned().unwrap_or_else(|| seed_of(i));
        assert_eq!(s.open(&aad(&id), &sealed).unwrap(), want, "{id}");
    }
}

// ---------------------------------------------------------------------------------------
// OpsStore
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_counts_cover_every_table_and_the_size_needs_no_query() {
    let Some(db) = TestDb::create() else { return };
    let s = open(&db, &[1], 1).await;
    let c = connect(&db).await;

    // Every table of the schema but the migrations' own, sorted by name.
    let tables: Vec<String> = c
        .query(
            "SELECT table_name::text FROM information_schema.tables
             WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'
               AND table_name <> 'totpd_schema_version'
             ORDER BY table_name COLLATE \"C\"",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let counts = s.count_rows().await.unwrap();
    let names: Vec<String> = counts.iter().map(|(t, _)| t.clone()).collect();
    assert_eq!(names, tables, "count_rows must list every table");
    let get = |counts: &[(String, u64)], t: &str| {
        counts
            .iter()
            .find(|(n, _)| n == t)
            .map(|(_, n)| *n)
            .unwrap()
    };
    assert_eq!(get(&counts, "meta"), 1, "the key check");
    assert!(
        counts.iter().all(|(t, n)| t == "meta" || *n == 0),
        "{counts:?}"
    );

    // Rows from several areas, counted (never read).
    let sealer = sealer(&[1], 1);
    for i in 0..3 {
        seed_agent(
            &c,
            &sealer,
            "e",
            &format!("a{i}"),
            "l",
            None,
            b"0123456789",
            None,
        )
        .await;
    }
    s.put_policy("p", "{}", 1).await.unwrap();
    s.create_token(&TokenRecord {
        hash: "h".into(),
        accessor: "acc".into(),
        entity_id: "e".into(),
        display_name: "d".into(),
        policies: vec!["p".into()],
        created_at: 1,
        expires_at: None,
        parent: None,
        renewable: false,
        creation_ttl: 0,
        explicit_max_ttl: 0,
        last_renewal: None,
    })
    .await
    .unwrap();
    let counts = s.count_rows().await.unwrap();
    for (t, n) in [
        ("otp_secrets", 3),
        ("agent_secrets", 3),
        ("policies", 1),
        ("tokens", 1),
        ("meta", 1),
        ("mfa_methods", 0),
    ] {
        assert_eq!(get(&counts, t), n, "{t}: {counts:?}");
    }

    // The size as last read (by count_rows): no query, and the database has one.
    assert!(s.database_bytes() > 1_000_000, "{}", s.database_bytes());
    // No writer on PostgreSQL.
    assert_eq!(s.writer_stats(), WriterStats::default());
    assert_eq!(s.seal_key_id(), 1);
    s.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_are_left_to_postgresql_tools_and_their_time_is_recorded() {
    let Some(db) = TestDb::create() else { return };
    let s = open(&db, &[1], 1).await;
    match s.backup_database().await {
        Err(StoreError::Unsupported(m)) => {
            assert!(m.contains("pg_dump") && m.contains("pg_basebackup"), "{m}");
        }
        other => panic!("a backup copy on PostgreSQL: {other:?}"),
    }
    assert_eq!(s.last_backup().await.unwrap(), None);
    s.record_backup(1_700_000_000).await.unwrap();
    assert_eq!(s.last_backup().await.unwrap(), Some(1_700_000_000));
    // Another daemon records a later one: the row is shared.
    let other = open(&db, &[1], 1).await;
    other.record_backup(1_700_000_500).await.unwrap();
    assert_eq!(s.last_backup().await.unwrap(), Some(1_700_000_500));
    other.close();
    s.close();
}

// ---------------------------------------------------------------------------------------
// KeyStore
// ---------------------------------------------------------------------------------------

/// More than one batch (200) of values. While the rotation runs, another transaction
/// (a validation, an operator) has changed one value, recorded a step on another and
/// deleted a third, uncommitted: the rotation's compare-and-swap on the first waits,
/// and once that commits, finds the value changed since its read and leaves it (a later
/// pass re-seals the new value); the step is kept; the deleted row stays deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_reseals_every_value_and_never_overwrites_a_change_made_meanwhile() {
    let Some(db) = TestDb::create() else { return };
    const N: usize = 450;
    let old = open(&db, &[1], 1).await;
    let c = connect(&db).await;
    seed_many(&c, &sealer(&[1], 1), N).await;
    old.close();

    let mut opts = options(&db);
    opts.statement_timeout = Duration::from_secs(30);
    let s = open_with(&opts, &[1, 2], 2).await.unwrap();
    assert_eq!(s.sealed_counts(), BTreeMap::from([(1, N as u64 + 1)]));
    // A new ring alone starts nothing on PostgreSQL.
    assert!(s.resume_key_rotation().await.unwrap().is_none());
    assert_eq!(
        s.key_status().await.unwrap().sealed,
        BTreeMap::from([(1, N as u64 + 1)])
    );

    // The other transaction, not committed yet.
    let mut other = connect(&db).await;
    let tx = other.transaction().await.unwrap();
    let changed = sealer(&[1], 1)
        .seal(&aad("s100"), b"changed meanwhile")
        .unwrap();
    tx.execute(
        "UPDATE otp_secrets SET sealed = $1 WHERE id = 's100'",
        &[&changed],
    )
    .await
    .unwrap();
    tx.execute(
        "UPDATE otp_secrets SET last_step = 999999 WHERE id = 's101'",
        &[],
    )
    .await
    .unwrap();
    tx.execute("DELETE FROM otp_secrets WHERE id = 's102'", &[])
        .await
        .unwrap();

    let st = s.start_key_rotation().await.unwrap();
    assert!(st.rotation.running, "{st:?}");
    assert_eq!(st.old_values(), N as u64 + 1);
    // Its swap of s100 read the committed value and now waits for the row.
    until_waiting(&c, "UPDATE otp_secrets SET sealed").await;
    tx.commit().await.unwrap();

    let done = until_rotated(&s).await;
    assert_eq!(done.rotation.error, None, "{done:?}");
    assert_eq!(done.sealed, BTreeMap::from([(2, N as u64)]), "{done:?}");
    assert_eq!(done.old_values(), 0);
    assert_eq!(done.unused(), vec![1]);
    // Every value but the deleted one, once each (s100 in the second pass); s100 and
    // the deleted s102 were left alone by their swaps.
    assert_eq!(done.rotation.resealed, N as u64);
    assert_eq!(done.rotation.skipped, 2);
    assert_eq!(s.sealed_counts(), done.sealed);

    let new_only = sealer(&[2], 2);
    let (v100, _) = stored(&c, "s100").await.unwrap();
    assert_eq!(v100[0], 2);
    assert_eq!(
        new_only.open(&aad("s100"), &v100).unwrap(),
        b"changed meanwhile"
    );
    let (v101, step) = stored(&c, "s101").await.unwrap();
    assert_eq!(step, Some(999_999), "the step recorded meanwhile is kept");
    assert_eq!(new_only.open(&aad("s101"), &v101).unwrap(), seed_of(101));
    assert!(
        stored(&c, "s102").await.is_none(),
        "the deleted row stays deleted"
    );
    let changed = BTreeMap::from([("s100".to_string(), b"changed meanwhile".to_vec())]);
    check_values(&c, &new_only, N, &changed).await;
    assert_eq!(intent_rows(&c).await, 0, "the request is cleared when done");
    assert_eq!(rotation_lock_holders(&c).await, 0);
    s.close();

    // Key 1 may leave the ring now.
    let s = open(&db, &[2], 2).await;
    assert_eq!(s.sealed_counts(), BTreeMap::from([(2, N as u64)]));
    s.close();
}

/// Two daemons on one database: while A's rotation runs (held up by a row another
/// transaction locks), B's start starts nothing and reports A's rotation running, and
/// so does a second start on A; one session holds the lock throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_rotation_at_a_time_across_daemons() {
    let Some(db) = TestDb::create() else { return };
    const N: usize = 50;
    let c = connect(&db).await;
    let first = open(&db, &[1], 1).await;
    seed_many(&c, &sealer(&[1], 1), N).await;
    first.close();

    let mut opts = options(&db);
    opts.statement_timeout = Duration::from_secs(30);
    let a = open_with(&opts, &[1, 2], 2).await.unwrap();
    let b = open(&db, &[1, 2], 2).await;

    let mut other = connect(&db).await;
    let tx = other.transaction().await.unwrap();
    tx.execute(
        "SELECT 1 FROM otp_secrets WHERE id = 's010' FOR UPDATE",
        &[],
    )
    .await
    .unwrap();

    assert!(a.start_key_rotation().await.unwrap().rotation.running);
    until_waiting(&c, "UPDATE otp_secrets SET sealed").await;
    assert_eq!(rotation_lock_holders(&c).await, 1);

    let on_b = b.start_key_rotation().await.unwrap();
    assert!(on_b.rotation.running, "A's rotation runs: {on_b:?}");
    assert_eq!(on_b.rotation.resealed, 0, "B did nothing");
    assert!(b.key_status().await.unwrap().rotation.running);
    assert!(a.start_key_rotation().await.unwrap().rotation.running);
    assert_eq!(
        rotation_lock_holders(&c).await,
        1,
        "never a second rotation"
    );

    tx.commit().await.unwrap();
    let on_a = until_rotated(&a).await;
    assert_eq!(on_a.rotation.resealed, N as u64 + 1, "{on_a:?}");
    let on_b = b.key_status().await.unwrap();
    assert!(!on_b.rotation.running);
    assert_eq!(on_b.sealed, BTreeMap::from([(2, N as u64 + 1)]));
    assert_eq!(rotation_lock_holders(&c).await, 0);
    // Nothing left: a start starts nothing.
    let again = b.start_key_rotation().await.unwrap();
    assert!(
        !again.rotation.running && again.old_values() == 0,
        "{again:?}"
    );
    check_values(&c, &sealer(&[2], 2), N, &BTreeMap::new()).await;
    a.close();
    b.close();
}

/// The two phases: daemons with the new key (current or not) and one with the old ring
/// all start while no value uses the new key. Once a rotation has moved values to it,
/// a daemon with the old ring is refused at start, naming the key id it lacks; one
/// that started before with the old ring cannot rotate (its ring is out of date).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_lacking_the_new_key_is_refused_at_start_naming_it() {
    let Some(db) = TestDb::create() else { return };
    const N: usize = 20;
    let c = connect(&db).await;
    let first = open(&db, &[1], 1).await;
    seed_many(&c, &sealer(&[1], 1), N).await;
    first.close();

    // Phase 1: the new key reaches the daemons; the old ring still starts.
    let not_current = open(&db, &[1, 2], 1).await;
    let stale = open(&db, &[1], 1).await;
    // Phase 2: the new key current, then one rotation.
    let a = open(&db, &[1, 2], 2).await;
    assert!(a.start_key_rotation().await.unwrap().rotation.running);
    let done = until_rotated(&a).await;
    assert_eq!(done.sealed, BTreeMap::from([(2, N as u64 + 1)]), "{done:?}");

    match open_with(&options(&db), &[1], 1).await {
        Err(e @ StoreError::MissingKey(2)) => {
            assert!(e.to_string().contains("key id 2"), "{e}");
        }
        Err(e) => panic!("refused, but not for key id 2: {e:?}"),
        Ok(_) => panic!("a daemon without key 2 started"),
    }
    // A daemon holding key 2 starts, current or not.
    open(&db, &[1, 2], 1).await.close();
    open(&db, &[2], 2).await.close();

    // The stale daemon (started before) refuses to rotate, and changes nothing.
    let st = stale.start_key_rotation().await.unwrap();
    assert!(!st.rotation.running, "{st:?}");
    let why = st.rotation.error.unwrap_or_default();
    assert!(
        why.contains("key id 2") && why.contains("out of date"),
        "{why}"
    );
    assert_eq!(
        a.key_status().await.unwrap().sealed,
        BTreeMap::from([(2, N as u64 + 1)])
    );
    for s in [not_current, stale, a] {
        s.close();
    }
}

/// A rotation cut short (its daemon gone, its connection closed) leaves every value
/// readable with the ring and its request recorded; the next start with that ring
/// resumes it and finishes. A new ring alone never starts one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_cut_short_resumes_at_the_next_start() {
    let Some(db) = TestDb::create() else { return };
    const N: usize = 60;
    let c = connect(&db).await;
    let first = open(&db, &[1], 1).await;
    seed_many(&c, &sealer(&[1], 1), N).await;
    first.close();

    let mut opts = options(&db);
    opts.statement_timeout = Duration::from_secs(30);
    let a = open_with(&opts, &[1, 2], 2).await.unwrap();
    let mut other = connect(&db).await;
    let tx = other.transaction().await.unwrap();
    tx.execute(
        "SELECT 1 FROM otp_secrets WHERE id = 's030' FOR UPDATE",
        &[],
    )
    .await
    .unwrap();
    assert!(a.start_key_rotation().await.unwrap().rotation.running);
    until_waiting(&c, "UPDATE otp_secrets SET sealed").await;
    // The daemon dies: its store goes, and so does the rotation's connection (and the
    // lock with it), in the middle of its swap of s030; then the other transaction.
    a.close();
    let killed = scalar_i64(
        &c,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .await;
    assert_eq!(killed, 1);
    let started = Instant::now();
    while rotation_lock_holders(&c).await > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the lock outlives its session"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(db.drop_connections() >= 2);
    drop(tx);
    let c = connect(&db).await;
    assert_eq!(intent_rows(&c).await, 1, "the request outlives the daemon");

    // Half done: the key check and s000..s029 under key 2, the rest under key 1.
    let mid = open(&db, &[1, 2], 2).await;
    let counts = mid.sealed_counts();
    assert_eq!(counts.get(&2), Some(&31), "{counts:?}");
    assert_eq!(counts.get(&1), Some(&(N as u64 - 30)), "{counts:?}");
    mid.close();
    // Every value opens with the ring; without key 2 the start is refused.
    check_values(&c, &sealer(&[1, 2], 2), N, &BTreeMap::new()).await;
    assert!(matches!(
        open_with(&options(&db), &[1], 1).await,
        Err(StoreError::MissingKey(2))
    ));

    // A start with a newer ring does not resume a rotation to key 2 by itself.
    let newer = open(&db, &[1, 2, 3], 3).await;
    assert!(newer.resume_key_rotation().await.unwrap().is_none());
    newer.close();
    // The restart with the ring it was started with finishes it.
    let b = open(&db, &[1, 2], 2).await;
    let st = b.resume_key_rotation().await.unwrap().expect("resumed");
    assert!(st.rotation.running, "{st:?}");
    let done = until_rotated(&b).await;
    assert_eq!(done.sealed, BTreeMap::from([(2, N as u64 + 1)]), "{done:?}");
    assert_eq!(intent_rows(&c).await, 0);
    check_values(&c, &sealer(&[2], 2), N, &BTreeMap::new()).await;
    b.close();
}

// ---------------------------------------------------------------------------------------
// TransferStore
// ---------------------------------------------------------------------------------------

/// Seeds one of everything: two methods, two enrolments, two agent secrets, a user with
/// an active and a pending device and recovery codes (one spent), and a user with only
/// a pending device (whose codes are not exported).
async fn seed_everything(c: &tokio_postgres::Client, s: &Sealer) {
    seed_method(c, &method("m1", Some("m-one"), "Issuer One")).await;
    seed_method(c, &method("m2", None, "Issuer Two")).await;
    seed_enrolment(c, s, "m1", "e1", b"mfa secret e1 m1 ..", Some(111)).await;
    seed_enrolment(c, s, "m2", "e2", b"mfa secret e2 m2 ..", None).await;
    seed_agent(
        c,
        s,
        "e1",
        "a1",
        "L",
        Some("I"),
        b"agent secret a1 ...",
        Some(222),
    )
    .await;
    seed_agent(c, s, "e3", "a2", "M", None, b"agent secret a2 ...", None).await;
    seed_device(
        c,
        s,
        "u1",
        "default",
        true,
        b"device u1 default .",
        Some(333),
    )
    .await;
    seed_device(c, s, "u1", "phone", false, b"device u1 phone ...", None).await;
    seed_recovery(c, "u1", "aaaa", false).await;
    seed_recovery(c, "u1", "bbbbb", false).await;
    seed_recovery(c, "u1", "cccccc", true).await;
    seed_device(c, s, "u2", "default", false, b"device u2 default .", None).await;
    seed_recovery(c, "u2", "dddd", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_import_into_another_database_keeps_every_secret_and_step() {
    let (Some(from_db), Some(to_db)) = (TestDb::create(), TestDb::create()) else {
        return;
    };
    let from = open(&from_db, &[1], 1).await;
    let fc = connect(&from_db).await;
    seed_everything(&fc, &sealer(&[1], 1)).await;

    let all = from.export_secrets(ExportScope::All).await.unwrap();
    assert_eq!(
        all.methods
            .iter()
            .map(|m| m.id.as_str())
            .collect::<Vec<_>>(),
        ["m1", "m2"]
    );
    assert_eq!(all.methods[0], method("m1", Some("m-one"), "Issuer One"));
    assert_eq!(all.secrets.len(), 7, "{:?}", all.secrets);
    let steps: Vec<Option<i64>> = all.secrets.iter().map(|s| s.last_step).collect();
    assert_eq!(
        steps,
        [Some(111), None, Some(222), None, Some(333), None, None],
        "{:?}",
        all.secrets
    );
    assert_eq!(all.secrets[0].secret, b"mfa secret e1 m1 ..");
    assert_eq!(
        all.secrets[2].holder,
        Holder::Agent {
            entity_id: "e1".into(),
            id: Some("a1".into()),
            label: "L".into(),
            issuer: Some("I".into()),
        }
    );
    assert_eq!(
        all.recovery_codes
            .iter()
            .map(|r| (r.entity_id.as_str(), r.code.selector.as_str()))
            .collect::<Vec<_>>(),
        [("u1", "aaaa"), ("u1", "bbbbb")],
        "unspent codes of users with an active device"
    );
    // One entity: its secrets and the methods its enrolments use.
    let e1 = from
        .export_secrets(ExportScope::Entity("e1"))
        .await
        .unwrap();
    assert_eq!(e1.methods, vec![method("m1", Some("m-one"), "Issuer One")]);
    assert_eq!(e1.secrets.len(), 2);
    assert!(e1.recovery_codes.is_empty());

    // Into another database, under another key.
    let to = open(&to_db, &[7], 7).await;
    let report = to.import_secrets(&all, 5000).await.unwrap();
    assert_eq!(report.methods, vec![Imported::Created; 2]);
    assert!(
        report.secrets.iter().all(|(o, _)| *o == Imported::Created),
        "{report:?}"
    );
    assert_eq!(
        report.secrets[2].1.as_deref(),
        Some("a1"),
        "the agent id is kept"
    );
    assert_eq!(
        report.recovery_codes,
        vec![("u1".to_string(), Imported::Created)]
    );

    // The same secrets, parameters, holders, creation times and last steps.
    let back = to.export_secrets(ExportScope::All).await.unwrap();
    assert_eq!(back, all);
    let tc = connect(&to_db).await;
    let (sealed, step) = stored(&tc, "a1").await.unwrap();
    assert_eq!(step, Some(222));
    assert_eq!(sealed[0], 7, "sealed anew with this database's key");
    assert_eq!(
        scalar_i64(
            &tc,
            "SELECT count(*) FROM user_devices WHERE active AND activated_at = 5000"
        )
        .await,
        1
    );

    // Again: everything is there already, and nothing changes.
    let before = to.count_rows().await.unwrap();
    let again = to.import_secrets(&all, 6000).await.unwrap();
    assert_eq!(again.methods, vec![Imported::Exists; 2]);
    assert!(
        again.secrets.iter().all(|(o, _)| *o == Imported::Exists),
        "{again:?}"
    );
    assert_eq!(
        again.recovery_codes,
        vec![("u1".to_string(), Imported::Exists)]
    );
    assert_eq!(to.count_rows().await.unwrap(), before);
    from.close();
    to.close();
}

fn moved(holder: Holder, secret: &[u8], last_step: Option<i64>) -> MovedSecret {
    MovedSecret {
        holder,
        secret: secret.to_vec(),
        params: Params::new("SHA1", 6, 30).unwrap(),
        last_step,
        created_at: 1000,
    }
}

fn vault(method_id: &str, entity: &str) -> Holder {
    Holder::VaultMfa {
        method_id: method_id.into(),
        entity_id: entity.into(),
    }
}

fn agent(entity: &str, id: Option<&str>) -> Holder {
    Holder::Agent {
        entity_id: entity.into(),
        id: id.map(str::to_string),
        label: "lbl".into(),
        issuer: None,
    }
}

fn device(entity: &str, name: &str, active: bool) -> Holder {
    Holder::UserDevice {
        entity_id: entity.into(),
        name: name.into(),
        active,
    }
}

fn codes(entity: &str, selectors: &[&str]) -> Vec<MovedRecoveryCode> {
    selectors
        .iter()
        .enumerate()
        .map(|(i, sel)| MovedRecoveryCode {
            entity_id: entity.into(),
            code: RecoveryHash {
                selector: sel.to_string(),
                hash: argon(i as u32),
            },
        })
        .collect()
}

/// SQLite's rules, each refusal leaving the rest of the import to go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_skips_and_refuses_as_sqlite_does() {
    let Some(db) = TestDb::create() else { return };
    let s = open(&db, &[1], 1).await;
    let c = connect(&db).await;
    let k = sealer(&[1], 1);
    // Here already: m1 under another issuer, a method named "taken", an agent id of
    // another entity, a device secret's id, a user with the most devices, and an
    // active user with codes of its own.
    seed_method(&c, &method("m1", Some("m-one"), "another issuer")).await;
    seed_method(&c, &method("mx", Some("taken"), "X")).await;
    seed_method(&c, &method("m3", None, "Three")).await;
    seed_agent(
        &c,
        &k,
        "someone-else",
        "a-taken",
        "lbl",
        None,
        b"0123456789abcdefghij",
        None,
    )
    .await;
    seed_device(&c, &k, "full", "d0", true, b"0123456789abcdefghij", None).await;
    for i in 1..MAX_USER_DEVICES {
        seed_device(
            &c,
            &k,
            "full",
            &format!("d{i}"),
            false,
            b"0123456789abcdefghij",
            None,
        )
        .await;
    }
    seed_device(
        &c,
        &k,
        "active",
        "default",
        true,
        b"0123456789abcdefghij",
        None,
    )
    .await;
    seed_recovery(&c, "active", "own1", false).await;

    let t = Transfer {
        methods: vec![
            method("m1", Some("m-one"), "Issuer One"),
            method("m2", Some("taken"), "Two"),
            method("m3", None, "Three"),
        ],
        secrets: vec![
            moved(vault("m1", "e"), b"s0", Some(1)),
            moved(vault("m2", "e"), b"s1", Some(2)),
            moved(vault("m9", "e"), b"s2", Some(3)),
            moved(vault("m3", "e"), b"s3", Some(4)),
            moved(agent("e", Some("a-taken")), b"s4", None),
            moved(agent("e", Some("dev-full-d0")), b"s5", None),
            moved(agent("e", None), b"plain uri seed", Some(5)),
            moved(agent("e", None), b"plain uri seed", Some(5)),
            moved(device("full", "d10", true), b"s8", None),
            moved(device("full", "d0", true), b"s9", None),
            moved(device("new", "default", true), b"s10", Some(6)),
            moved(device("pending", "default", false), b"s11", None),
        ],
        recovery_codes: [
            codes("active", &["r1"]),
            codes("new", &["n1", "n2"]),
            codes("pending", &["p1"]),
        ]
        .concat(),
    };
    let r = s.import_secrets(&t, 5000).await.unwrap();
    assert_eq!(
        r.methods,
        vec![
            Imported::Refused(ImportRefusal::MethodDiffers),
            Imported::Refused(ImportRefusal::MethodNameTaken),
            Imported::Exists,
        ]
    );
    let outcomes: Vec<Imported> = r.secrets.iter().map(|(o, _)| *o).collect();
    assert_eq!(
        outcomes,
        vec![
            Imported::Refused(ImportRefusal::MethodRefused),
            Imported::Refused(ImportRefusal::MethodRefused),
            Imported::Refused(ImportRefusal::NoMethod),
            Imported::Created,
            Imported::Refused(ImportRefusal::IdTaken),
            Imported::Refused(ImportRefusal::IdTaken),
            Imported::Created,
            Imported::Exists,
            Imported::Refused(ImportRefusal::TooManyDevices),
            Imported::Exists,
            Imported::Created,
            Imported::Created,
        ]
    );
    // A plain URI's secret gets a new id, and the same seed again is that one.
    let plain = r.secrets[6].1.clone().expect("an id");
    assert_eq!(r.secrets[7].1.as_deref(), Some(plain.as_str()));
    assert_eq!(stored(&c, &plain).await.unwrap().1, Some(5));
    assert_eq!(
        r.recovery_codes,
        vec![
            ("active".to_string(), Imported::Exists),
            ("new".to_string(), Imported::Created),
            (
                "pending".to_string(),
                Imported::Refused(ImportRefusal::NotActive)
            ),
        ]
    );
    // The active user keeps its own codes; the new one has the imported ones.
    let sel = |e: &'static str| {
        let c = &c;
        async move {
            c.query(
                "SELECT selector FROM recovery_codes WHERE entity_id = $1 ORDER BY selector",
                &[&e],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
        }
    };
    assert_eq!(sel("active").await, ["own1"]);
    assert_eq!(sel("new").await, ["n1", "n2"]);
    assert!(sel("pending").await.is_empty());
    // Nothing refused left a row behind: m1 and the taken agent id are as they were.
    assert_eq!(
        scalar_i64(
            &c,
            "SELECT count(*) FROM mfa_methods WHERE issuer = 'another issuer'"
        )
        .await,
        1
    );
    assert_eq!(
        scalar_i64(
            &c,
            "SELECT count(*) FROM user_devices WHERE entity_id = 'full'"
        )
        .await,
        MAX_USER_DEVICES as i64
    );
    assert_eq!(
        scalar_i64(
            &c,
            "SELECT count(*) FROM otp_secrets o WHERE NOT EXISTS (SELECT 1 FROM mfa_secrets WHERE secret_id = o.id)
               AND NOT EXISTS (SELECT 1 FROM agent_secrets WHERE id = o.id)
               AND NOT EXISTS (SELECT 1 FROM user_devices WHERE secret_id = o.id)"
        )
        .await,
        0,
        "no secret without its holder"
    );
    s.close();
}

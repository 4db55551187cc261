//! Conformance suite for the storage traits (`totpd::store::Store`).
//!
//! Every case talks only to the store traits (an `Arc<dyn Store>`, or for the core cases
//! any [`CoreStore`]), so each backend must pass it unchanged:
//! every operation of `TokenStore`, `PolicyStore`, `PolicyTokenStore`, `MfaStore`,
//! `AgentStore` and `UserTotpStore` does what its doc comment says, the "atomic against
//! every concurrent call" rules hold under 64 concurrent callers (one right code is
//! accepted exactly once, no failure goes uncounted, a method name is won by exactly one
//! create) and 16 concurrent spends of one policy token (exactly one writes), of one user
//! code and of one recovery code (exactly one logs in), replay state survives a close
//! and reopen, a database refuses a key it was not created with, and a closed store
//! refuses work with `Closed`. `KeyStore`: a key rotation re-seals every value beside
//! concurrent validations and deletions (state kept, deleted rows stay deleted), after
//! which the old key may leave the ring; a ring missing a key id in use is refused.
//!
//! A backend joins by implementing [`Backend`] (open the same database on every call)
//! and adding one `mod name { conformance_suite!(fixture expression); }` line (the
//! expression gives an `Option`: `None` skips the test, passing).
//!
//! A backend that implements only some areas so far runs the cases of those: the cases
//! of `TokenStore`, `PolicyStore`, `PolicyTokenStore`, `MfaStore`, `AgentStore` and
//! `UserTotpStore` (their concurrency cases, replay after a reopen, the key checks, the
//! lockout counts and a closed store included) are generic over [`CoreBackend`], which
//! yields any [`CoreStore`], and `core_suite!(fixture)` runs them. Every [`Backend`] is
//! a `CoreBackend` too, and `conformance_suite!` runs the core cases and the rest
//! (`KeyStore`, `OpsStore`, `TransferStore`), so SQLite runs everything. PostgreSQL
//! (`mod postgres`, needing `TOTPD_TEST_POSTGRES`, one fresh database per test) runs the
//! core cases, plus cases of its own that only a shared database has: two stores (two
//! daemons) on one database, concurrent starts, a statement timeout, a full pool, and
//! connections the server dropped.
//! Times are fixed (`NOW`); nothing here reads the clock.

use std::sync::Arc;

use totpd::otp::recovery::{self, RecoveryCode};
use totpd::otp::{code_at, Outcome, Params, Refusal};
use totpd::store::postgres::{PgOptions, PgStore};
use totpd::store::seal::KeyRing;
use totpd::store::sqlite::{SqliteOptions, SqliteStore};
use totpd::store::{
    Activation, AgentSecretInfo, AgentStore, Check, Clash, EngineCheck, EngineKeyInfo, EngineStore,
    Enrollment, Lockouts, MethodRecord, MfaStore, PolicyStore, PolicyTokenRecord, PolicyTokenStore,
    Proof, RecoveryHash, Sealer, Setup, Spend, SpendRefusal, Store, StoreError, Thing, TokenRecord,
    TokenStore, UserTotpStore, MAX_USER_DEVICES,
};
use uuid::Uuid;

#[path = "common/postgres.rs"]
mod pg;

// ---------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------

/// A database under test. One instance is one database, fresh for each test.
trait Backend {
    /// Opens the suite's database with the sealing key `[key; 32]`. Every call opens the
    /// same database, so a case can close the store and open it again. Blocking.
    fn open(&self, key: u8) -> Result<Arc<dyn Store>, StoreError>;
    /// Opens the same database with a key ring (several keys, one current). Blocking.
    fn open_ring(&self, ring: &KeyRing) -> Result<Arc<dyn Store>, StoreError>;
    /// A new database made from `copy` (as [`totpd::store::OpsStore::backup_database`]
    /// made it) by the backend's own restore, which checks it against the key
    /// `[key; 32]` (`WrongKey` if it does not open). Blocking.
    fn restore(&self, copy: &std::fs::File, key: u8) -> Result<Box<dyn Backend>, StoreError>;
}

/// SQLite in a temporary directory that lives as long as the test.
struct SqliteBackend {
    dir: tempfile::TempDir,
}

impl SqliteBackend {
    fn new() -> Self {
        SqliteBackend {
            dir: tempfile::tempdir().expect("temporary directory"),
        }
    }
}

impl Backend for SqliteBackend {
    fn open(&self, key: u8) -> Result<Arc<dyn Store>, StoreError> {
        let opts = SqliteOptions::new(self.dir.path().join("totpd.db"));
        let opened = SqliteStore::open(&opts, Sealer::new(&[key; 32]))?;
        let store: Arc<dyn Store> = opened.store;
        Ok(store)
    }

    fn open_ring(&self, ring: &KeyRing) -> Result<Arc<dyn Store>, StoreError> {
        let opts = SqliteOptions::new(self.dir.path().join("totpd.db"));
        let opened = SqliteStore::open(&opts, Sealer::from_ring(ring))?;
        let store: Arc<dyn Store> = opened.store;
        Ok(store)
    }

    fn restore(&self, copy: &std::fs::File, key: u8) -> Result<Box<dyn Backend>, StoreError> {
        use std::io::{Seek, SeekFrom};
        use std::os::unix::fs::PermissionsExt;
        let fresh = SqliteBackend::new();
        let file = fresh.dir.path().join("copy.db");
        let mut from = copy;
        from.seek(SeekFrom::Start(0)).unwrap();
        std::io::copy(&mut from, &mut std::fs::File::create(&file).unwrap()).unwrap();
        let key_file = fresh.dir.path().join("totpd.key");
        std::fs::write(&key_file, data_encoding::HEXLOWER.encode(&[key; 32])).unwrap();
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let keys = totpd::store::KeySource {
            credentials_dir: None,
            key_file,
            allow_group_readable: false,
        };
        totpd::store::sqlite::restore(&file, &fresh.dir.path().join("totpd.db"), &keys, NOW)?;
        Ok(Box::new(fresh))
    }
}

/// What the core cases need of a store: tokens, policies, policy tokens, MFA methods and
/// secrets, agent secrets and the user login step, a way to close it, and its lockout
/// counts. Every `Store` is one; so is a backend's store that implements only these
/// areas so far.
trait CoreStore:
    TokenStore
    + PolicyStore
    + PolicyTokenStore
    + MfaStore
    + AgentStore
    + EngineStore
    + UserTotpStore
    + Send
    + Sync
    + 'static
{
    /// As [`Store::close`]: later calls fail with `Closed`. Blocking.
    fn close_store(&self);
    /// As [`Store::lockouts`]: the locks begun since the store was opened.
    fn lockouts_begun(&self) -> Lockouts;
}

impl CoreStore for dyn Store {
    fn close_store(&self) {
        self.close()
    }

    fn lockouts_begun(&self) -> Lockouts {
        self.lockouts()
    }
}

impl CoreStore for PgStore {
    fn close_store(&self) {
        self.close()
    }

    fn lockouts_begun(&self) -> Lockouts {
        self.lockouts()
    }
}

/// A database under test for the core cases, as [`Backend`] is for all of them: one
/// instance is one database, fresh for each test, and every open opens that database.
trait CoreBackend {
    type Store: CoreStore + ?Sized;
    /// Opens the database with the sealing key `[key; 32]`. Blocking.
    fn open_core(&self, key: u8) -> Result<Arc<Self::Store>, StoreError>;
    /// Opens the database with a key ring. Blocking.
    fn open_core_ring(&self, ring: &KeyRing) -> Result<Arc<Self::Store>, StoreError>;
}

impl<B: Backend + ?Sized> CoreBackend for B {
    type Store = dyn Store;

    fn open_core(&self, key: u8) -> Result<Arc<dyn Store>, StoreError> {
        self.open(key)
    }

    fn open_core_ring(&self, ring: &KeyRing) -> Result<Arc<dyn Store>, StoreError> {
        self.open_ring(ring)
    }
}

/// PostgreSQL: a fresh database of the `TOTPD_TEST_POSTGRES` cluster, dropped with the
/// fixture. Opening blocks on the test's runtime (the callers are in `block_in_place`).
struct PgBackend {
    db: pg::TestDb,
}

impl PgBackend {
    /// `None` (after a loud notice; a failure in CI) without `TOTPD_TEST_POSTGRES`.
    fn new() -> Option<Self> {
        pg::TestDb::create().map(|db| PgBackend { db })
    }

    fn options(&self) -> PgOptions {
        PgOptions::new(&self.db.url).expect("the test database's URL")
    }

    fn open_with(&self, opts: &PgOptions, sealer: Sealer) -> Result<Arc<PgStore>, StoreError> {
        tokio::runtime::Handle::current()
            .block_on(PgStore::open(opts, sealer))
            .map(|o| o.store)
    }
}

impl Backend for PgBackend {
    fn open(&self, key: u8) -> Result<Arc<dyn Store>, StoreError> {
        let store: Arc<dyn Store> = self.open_with(&self.options(), Sealer::new(&[key; 32]))?;
        Ok(store)
    }

    fn open_ring(&self, ring: &KeyRing) -> Result<Arc<dyn Store>, StoreError> {
        let store: Arc<dyn Store> = self.open_with(&self.options(), Sealer::from_ring(ring))?;
        Ok(store)
    }

    /// PostgreSQL is backed up and restored with its own tools (pg_dump, pg_basebackup),
    /// not through the store: the backup cases are SQLite's.
    fn restore(&self, _: &std::fs::File, _: u8) -> Result<Box<dyn Backend>, StoreError> {
        Err(StoreError::Unsupported(
            "back up PostgreSQL with pg_dump or pg_basebackup",
        ))
    }
}

/// Instantiates each named case as a test for one backend fixture (an expression giving
/// an `Option` of a fresh backend, evaluated once per test; `None` skips the test).
macro_rules! cases {
    ($fixture:expr; $($case:ident),+ $(,)?) => {
        $(
            // Multi-threaded: the concurrency cases need real parallelism, and opening
            // uses `block_in_place`, which only this flavour allows.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(backend) = $fixture else {
                    return;
                };
                crate::$case(&backend).await;
            }
        )+
    };
}

/// The cases of the [`CoreStore`] areas (`TokenStore`, `PolicyStore`,
/// `PolicyTokenStore`, `MfaStore`, `AgentStore`, `UserTotpStore`), their concurrency
/// cases included, for a [`CoreBackend`] fixture.
macro_rules! core_suite {
    ($fixture:expr) => {
        cases!($fixture;
            case_tokens_create_get_expire_sweep,
            case_tokens_duplicates_refused,
            case_token_revoke_cascades,
            case_token_renewal,
            case_policies,
            case_policy_tokens_create_list_delete,
            case_policy_token_spend_rules,
            case_policy_token_purge,
            case_concurrent_spends_one_winner,
            case_key_check_refuses_other_keys,
            case_closed_store_refuses,
            case_methods_create_get_list,
            case_methods_update,
            case_methods_delete,
            case_mfa_secret_enrollment,
            case_mfa_secret_delete,
            case_mfa_check_outcomes,
            case_unlock_clears_locks_and_counts_lockouts,
            case_agent_secrets,
            case_user_setup_and_activate,
            case_user_code_checks,
            case_user_login_with_temp_tokens,
            case_user_recovery_codes,
            case_user_devices_made_in_one_second_keep_their_order,
            case_concurrent_right_code_accepted_once,
            case_concurrent_wrong_codes_all_counted,
            case_replay_refused_after_reopen,
            case_concurrent_creates_one_name_one_winner,
            case_concurrent_logins_one_code_one_winner,
            case_concurrent_logins_one_temp_token_one_winner,
            case_concurrent_recovery_spends_one_winner,
            case_user_device_cap_and_temp_tokens_die_with_the_user,
            case_concurrent_enrolments_one_secret,
            case_concurrent_setups_keep_the_device_cap,
            case_wrong_key_refused,
            case_closed_store_refuses_mfa_writes,
            case_engine_keys_put_get_list_delete,
            case_engine_code_checks_tried_codes_and_lock,
            case_engine_concurrent_right_code_accepted_once,
            case_engine_concurrent_puts_leave_one_key,
            case_engine_tried_codes_survive_reopen,
        );
    };
}

/// Every case, for a [`Backend`] fixture: the core cases and those of the other areas
/// (`KeyStore`, `OpsStore`, `TransferStore`).
macro_rules! conformance_suite {
    ($fixture:expr) => {
        core_suite!($fixture);
        cases!($fixture;
            case_key_rotation_reseals_every_value_beside_validations,
            case_key_status_and_a_ring_missing_a_key_in_use,
            case_ops_rows_sizes_and_writer,
            case_ops_backup_times,
            case_ops_backup_under_writes_restores_as_of_its_moment,
            case_transfer_export_and_import,
        );
    };
}

mod sqlite {
    conformance_suite!(Some(crate::SqliteBackend::new()));
}

/// The core cases on PostgreSQL (each test in a database of its own), and PostgreSQL's
/// own cases below ([`pg_cases`]).
mod postgres {
    core_suite!(crate::PgBackend::new());
    // The other areas' cases that hold on PostgreSQL too; its backups are PostgreSQL's
    // own tools, and it has no single writer to report on (tests/pg_ops.rs covers both).
    cases!(crate::PgBackend::new();
        case_key_rotation_reseals_every_value_beside_validations,
        case_key_status_and_a_ring_missing_a_key_in_use,
        case_transfer_export_and_import,
    );
    cases!(crate::PgBackend::new();
        pg_two_stores_on_one_database_share_every_write,
        pg_two_stores_one_code_once_every_failure_counted_one_login,
        pg_starts_together_migrate_once_and_agree_on_the_key,
        pg_a_newer_schema_is_refused,
        pg_statement_timeout_and_pool_wait_answer_unavailable,
        pg_dropped_connections_are_replaced,
        pg_an_outage_answers_unavailable_and_the_store_recovers,
    );

    #[test]
    fn test_database_urls() {
        use crate::pg::with_dbname;
        assert_eq!(
            with_dbname("postgresql://postgres@%2Ftmp%2Fpg/postgres", "x"),
            "postgresql://postgres@%2Ftmp%2Fpg/x"
        );
        assert_eq!(
            with_dbname("postgres://u:p@h1:5432,h2:5433?sslmode=disable", "x"),
            "postgres://u:p@h1:5432,h2:5433/x?sslmode=disable"
        );
        assert_eq!(
            with_dbname("postgres://u@h/db?a=b&c=d", "x"),
            "postgres://u@h/x?a=b&c=d"
        );
        assert_eq!(
            with_dbname("host=/tmp user=u", "x"),
            "host=/tmp user=u dbname=x"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A fixed "current" time for every case.
const NOW: i64 = 1_700_000_000;
/// The key the suite's databases are created with.
const KEY: u8 = 1;

/// Opens the backend off the async workers (opening blocks).
fn try_open(b: &dyn Backend, key: u8) -> Result<Arc<dyn Store>, StoreError> {
    tokio::task::block_in_place(|| b.open(key))
}

fn open(b: &dyn Backend) -> Arc<dyn Store> {
    try_open(b, KEY).unwrap_or_else(|e| panic!("opening the store: {e:?}"))
}

/// As [`try_open`], for the core cases.
fn try_open_core<B: CoreBackend + ?Sized>(b: &B, key: u8) -> Result<Arc<B::Store>, StoreError> {
    tokio::task::block_in_place(|| b.open_core(key))
}

/// As [`open`], for the core cases.
fn open_core<B: CoreBackend + ?Sized>(b: &B) -> Arc<B::Store> {
    try_open_core(b, KEY).unwrap_or_else(|e| panic!("opening the store: {e:?}"))
}

/// Closes the store off the async workers (closing blocks until writes are done).
async fn close<S: CoreStore + ?Sized>(s: &Arc<S>) {
    let s = Arc::clone(s);
    tokio::task::spawn_blocking(move || s.close_store())
        .await
        .expect("close panicked");
}

/// Asserts that `$result` is `Err` matching `$pattern`, printing what it was otherwise.
macro_rules! assert_err {
    ($result:expr, $pattern:pat) => {
        match $result {
            Err($pattern) => {}
            other => panic!("expected Err({}), got {:?}", stringify!($pattern), other),
        }
    };
}

fn params() -> Params {
    Params::new("SHA1", 6, 30).unwrap()
}

/// A method with a fresh id. Skew 0, so exactly one code is right at any time and the
/// accepted step is known exactly.
fn method(name: Option<&str>, max_attempts: u32) -> MethodRecord {
    MethodRecord {
        id: Uuid::new_v4().to_string(),
        name: name.map(str::to_owned),
        issuer: "Conformance".into(),
        params: params(),
        key_size: 20,
        qr_size: 0,
        skew: 0,
        max_validation_attempts: max_attempts,
        created_at: NOW,
    }
}

/// A well-formed code that is not right for `secret` at `now` under `skew`: the first of
/// 000000, 111111, ... that no step in the window produces (three steps at most, ten
/// candidates, so one always exists). Deterministic, unlike a random guess.
fn wrong_code(secret: &[u8], p: &Params, skew: u32, now: i64) -> String {
    let skew = i64::from(skew);
    let right: Vec<String> = (-skew..=skew)
        .map(|k| code_at(secret, p, now + k * p.period as i64))
        .collect();
    (0..10)
        .map(|d: u32| d.to_string().repeat(p.digits as usize))
        .find(|c| !right.contains(c))
        .expect("a wrong code among ten candidates")
}

/// Enrolls `entity` for the existing method `m`.
async fn enrolled_again<S: CoreStore + ?Sized>(s: &Arc<S>, m: &MethodRecord, entity: &str) {
    assert!(matches!(
        s.create_mfa_secret(&m.id, entity, NOW).await,
        Ok(Enrollment::Created { .. })
    ));
}

/// Creates `m` and enrolls `entity`, returning the secret.
async fn enrolled<S: CoreStore + ?Sized>(s: &Arc<S>, m: &MethodRecord, entity: &str) -> Vec<u8> {
    s.create_method(m).await.expect("create_method");
    match s.create_mfa_secret(&m.id, entity, NOW).await {
        Ok(Enrollment::Created { secret, .. }) => secret,
        other => panic!("expected Created, got {other:?}"),
    }
}

fn token(hash: &str, accessor: &str, parent: Option<&str>, expires_at: Option<i64>) -> TokenRecord {
    TokenRecord {
        hash: hash.into(),
        accessor: accessor.into(),
        entity_id: format!("entity-of-{accessor}"),
        display_name: format!("token {accessor}"),
        policies: vec!["default".into(), "ops".into()],
        created_at: NOW,
        expires_at,
        parent: parent.map(str::to_owned),
        renewable: true,
        creation_ttl: expires_at.map_or(0, |e| e - NOW),
        explicit_max_ttl: 0,
        last_renewal: None,
    }
}

fn agent_info(label: &str, issuer: Option<&str>, created_at: i64) -> AgentSecretInfo {
    AgentSecretInfo {
        id: Uuid::new_v4().to_string(),
        label: label.into(),
        issuer: issuer.map(str::to_owned),
        params: Params::new("SHA256", 8, 60).unwrap(),
        created_at,
    }
}

/// A policy token made at `NOW` with a fresh hash.
fn policy_token(mount: &str, policy: &str, expires_at: i64) -> PolicyTokenRecord {
    let hash = format!("{:064x}", Uuid::new_v4().as_u128());
    PolicyTokenRecord {
        prefix: hash[..8].to_string(),
        hash,
        mount: mount.into(),
        policy: policy.into(),
        created_at: NOW,
        expires_at,
        spent_at: None,
    }
}

/// A policy document that says `tag`, so a test can tell which write won.
fn tagged_doc(tag: &str) -> String {
    serde_json::json!({"path": {format!("secret/{tag}"): {"capabilities": ["read"]}}}).to_string()
}

/// Outcomes of concurrent calls, counted by kind.
#[derive(Debug, Default)]
struct Tally {
    accepted: usize,
    malformed: usize,
    invalid: usize,
    replay: usize,
    locked: usize,
    errors: Vec<String>,
}

impl Tally {
    fn of(results: Vec<Result<Outcome, StoreError>>) -> Tally {
        let mut t = Tally::default();
        for r in results {
            match r {
                Ok(Outcome::Accepted { .. }) => t.accepted += 1,
                Ok(Outcome::Refused(Refusal::Malformed)) => t.malformed += 1,
                Ok(Outcome::Refused(Refusal::Invalid)) => t.invalid += 1,
                Ok(Outcome::Refused(Refusal::Replay)) => t.replay += 1,
                Ok(Outcome::Refused(Refusal::Locked)) => t.locked += 1,
                Err(e) => t.errors.push(format!("{e:?}")),
            }
        }
        t
    }
}

/// Runs `n` concurrent checks of `code` for `entity` at `now`, each in its own task,
/// released together by a barrier so they really contend.
async fn concurrent_checks<S: CoreStore + ?Sized>(
    s: &Arc<S>,
    method_id: &str,
    entity: &str,
    code: &str,
    now: i64,
    n: usize,
) -> Vec<Result<Outcome, StoreError>> {
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (s, barrier) = (Arc::clone(s), Arc::clone(&barrier));
            let (method_id, entity, code) =
                (method_id.to_owned(), entity.to_owned(), code.to_owned());
            tokio::spawn(async move {
                barrier.wait().await;
                s.check_and_record_mfa_code(&method_id, &entity, &code, now)
                    .await
            })
        })
        .collect();
    let mut results = Vec::with_capacity(n);
    for t in tasks {
        results.push(t.await.expect("check task panicked"));
    }
    results
}

/// The period of every user device, in seconds.
const PERIOD: i64 = 30;

fn new_id() -> String {
    Uuid::new_v4().to_string()
}

/// A fixed device secret per tag: codes are deterministic, so a coincidence between two
/// devices' codes would fail every run, never just some.
fn device_secret(tag: u8) -> Vec<u8> {
    vec![tag; 20]
}

/// The code of `secret` for the step `k` steps after NOW's.
fn step_code(secret: &[u8], k: i64) -> String {
    code_at(secret, &params(), NOW + k * PERIOD)
}

/// A well-formed code right for none of `secrets` at `now` under the user window (the
/// current step and one either side), as [`wrong_code`] for one secret: a user's code is
/// checked against every active device, so it must be wrong for all of them. Up to three
/// secrets: nine right codes, ten candidates.
fn user_wrong_code(secrets: &[&[u8]], now: i64) -> String {
    let p = params();
    let right: Vec<String> = secrets
        .iter()
        .flat_map(|s| (-1..=1).map(move |k| code_at(s, &p, now + k * PERIOD)))
        .collect();
    (0..10)
        .map(|d: u32| d.to_string().repeat(p.digits as usize))
        .find(|c| !right.contains(c))
        .expect("a wrong code among ten candidates")
}

/// Sets up `entity`'s default device and activates it with the code of NOW, storing
/// `codes`: the user is active, NOW's step is used on the device, no failures count.
async fn active_user<S: CoreStore + ?Sized>(
    s: &Arc<S>,
    entity: &str,
    secret: &[u8],
    codes: &[RecoveryHash],
) {
    assert_eq!(
        s.setup_user_device(entity, None, &new_id(), secret, &params(), NOW)
            .await
            .unwrap(),
        Setup::Pending
    );
    assert_eq!(
        s.activate_user_device(entity, None, &step_code(secret, 0), Some(codes), NOW)
            .await
            .unwrap(),
        Activation::Activated { first: true }
    );
}

/// Adds an active device `name` to a user who already has one, activated at NOW.
async fn added_device<S: CoreStore + ?Sized>(s: &Arc<S>, entity: &str, name: &str, secret: &[u8]) {
    assert_eq!(
        s.setup_user_device(entity, Some(name), &new_id(), secret, &params(), NOW)
            .await
            .unwrap(),
        Setup::Pending
    );
    assert_eq!(
        s.activate_user_device(entity, Some(name), &step_code(secret, 0), None, NOW)
            .await
            .unwrap(),
        Activation::Activated { first: false }
    );
}

/// The user's devices as (name, active, created_at), oldest first.
async fn user_devices<S: CoreStore + ?Sized>(s: &Arc<S>, entity: &str) -> Vec<(String, bool, i64)> {
    s.list_user_devices(entity)
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.name, d.active, d.created_at))
        .collect()
}

/// The first `n` codes of one new recovery set, with their stored form. argon2 is slow
/// on purpose, so a case hashes only the few codes it uses: the store takes any number.
fn recovery_codes(n: usize) -> (Vec<RecoveryCode>, Vec<RecoveryHash>) {
    tokio::task::block_in_place(|| {
        let codes: Vec<RecoveryCode> = recovery::generate_set()
            .expect("a recovery set")
            .into_iter()
            .take(n)
            .collect();
        let hashes = codes
            .iter()
            .map(|c| RecoveryHash {
                selector: c.selector.clone(),
                hash: recovery::hash(c).expect("a recovery hash"),
            })
            .collect();
        (codes, hashes)
    })
}

/// The caller's argon2 check of a typed recovery code, off the async workers.
fn recovery_matches(code: &RecoveryCode, stored: Option<&str>) -> bool {
    tokio::task::block_in_place(|| recovery::check(code, stored))
}

/// `n` temp_tokens for `entity`, good for five minutes from NOW, with one login token
/// each to store on success; every create must succeed (the user is active).
async fn temp_tokens<S: CoreStore + ?Sized>(
    s: &Arc<S>,
    entity: &str,
    n: usize,
) -> Vec<(String, TokenRecord)> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let temp = format!("temp-{entity}-{i}");
        assert!(s
            .create_temp_token(entity, &temp, NOW, NOW + 300)
            .await
            .unwrap());
        let login = token(&format!("login-{i}"), &format!("acc-login-{i}"), None, None);
        out.push((temp, login));
    }
    out
}

/// Runs `n` calls made by `call` (from their index) at once, each in its own task,
/// released together by a barrier so they really contend. Results in index order.
async fn race<F, Fut>(n: usize, call: F) -> Vec<Result<Check, StoreError>>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<Check, StoreError>> + Send + 'static,
{
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (barrier, call) = (Arc::clone(&barrier), call(i));
            tokio::spawn(async move {
                barrier.wait().await;
                call.await
            })
        })
        .collect();
    let mut results = Vec::with_capacity(n);
    for t in tasks {
        results.push(t.await.expect("race task panicked"));
    }
    results
}

/// The index of the one accepted call of a race, asserting that there is exactly one and
/// that every other call was refused as a replay or by the lock the replays bring.
fn one_winner(results: &[Result<Check, StoreError>]) -> usize {
    let mut winners = Vec::new();
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(Check::Accepted) => winners.push(i),
            Ok(Check::Refused(Refusal::Replay | Refusal::Locked)) => {}
            other => panic!("call {i}: unexpected {other:?} in {results:?}"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one call is accepted: {results:?}"
    );
    winners[0]
}

// ---------------------------------------------------------------------------------------
// TokenStore
// ---------------------------------------------------------------------------------------

async fn case_tokens_create_get_expire_sweep<B: CoreBackend + ?Sized>(b: &B) {
    let s = open_core(b);
    let forever = token("hash-forever", "acc-forever", None, None);
    let short = token("hash-short", "acc-short", None, Some(NOW + 100));
    let long = token("hash-long", "acc-long", None, Some(NOW + 10_000));
    for t in [&forever, &short, &long] {
        s.create_token(t).await.expect("create_token");
    }

    assert_eq!(
        s.get_token("hash-forever", NOW).await.unwrap(),
        Some(forever.clone())
    );
    assert_eq!(s.get_token("no-such-hash", NOW).await.unwrap(), None);

    // Expiry is judged by the caller's `now`, not the row's presence.
    assert_eq!(
        s.get_token("hash-short", NOW + 99).await.unwrap(),
        Some(short.clone())
    );
    assert_eq!(s.get_token("hash-short", NOW + 101).await.unwrap(), None);
    // Still stored: asked at an earlier time it is there.
    assert_eq!(
        s.get_token("hash-short", NOW).await.unwrap(),
        Some(short.clone())
    );

    // A create at a later time sweeps out tokens expired by then. Seen through the trait:
    // asked at a time before its expiry, a swept token is gone.
    let mut later = token("hash-later", "acc-later", None, None);
    later.created_at = NOW + 200;
    s.create_token(&later).await.unwrap();
    assert_eq!(
        s.get_token("hash-short", NOW).await.unwrap(),
        None,
        "an expired token must be swept by a later create_token"
    );
    // Tokens not yet expired, or never expiring, survive the sweep.
    assert_eq!(s.get_token("hash-long", NOW).await.unwrap(), Some(long));
    assert_eq!(
        s.get_token("hash-forever", NOW + 200).await.unwrap(),
        Some(forever)
    );
    assert_eq!(
        s.get_token("hash-later", NOW + 200).await.unwrap(),
        Some(later)
    );
    close(&s).await;
}

async fn case_tokens_duplicates_refused<B: CoreBackend + ?Sized>(b: &B) {
    let s = open_core(b);
    s.create_token(&token("hash-1", "acc-1", None, None))
        .await
        .unwrap();

    // Same accessor, new hash.
    assert_err!(
        s.create_token(&token("hash-2", "acc-1", None, None)).await,
        StoreError::Conflict(Clash::Duplicate)
    );
    assert_eq!(
        s.get_token("hash-2", NOW).await.unwrap(),
        None,
        "a refused token is not stored"
    );

    // Same hash, new accessor.
    assert_err!(
        s.create_token(&token("hash-1", "acc-2", None, None)).await,
        StoreError::Conflict(Clash::Duplicate)
    );
    assert_eq!(
        s.get_token("hash-1", NOW)
            .await
            .unwrap()
            .map(|t| t.accessor),
        Some("acc-1".to_string()),
        "the original token is untouched"
    );
    close(&s).await;
}

async fn case_token_revoke_cascades<B: CoreBackend + ?Sized>(b: &B) {
    let s = open_core(b);
    // root ─┬─ child-a ── grandchild
    //       └─ child-b
    // other ── other-child
    let tree = [
        token("h-root", "a-root", None, None),
        token("h-child-a", "a-child-a", Some("a-root"), None),
        token("h-child-b", "a-child-b", Some("a-root"), None),
        token("h-grandchild", "a-grandchild", Some("a-child-a"), None),
        token("h-other", "a-other", None, None),
        token("h-other-child", "a-other-child", Some("a-other"), None),
    ];
    for t in &tree {
        s.create_token(t).await.unwrap();
    }

    // A leaf goes alone.
    assert_eq!(s.revoke_token("h-child-b").await.unwrap(), 1);
    assert_eq!(s.get_token("h-child-b", NOW).await.unwrap(), None);
    assert!(
        s.get_token("h-root", NOW).await.unwrap().is_some(),
        "revoking a child spares its parent"
    );

    // The root takes its child and its grandchild (two depths).
    assert_eq!(s.revoke_token("h-root").await.unwrap(), 3);
    for h in ["h-root", "h-child-a", "h-grandchild"] {
        assert_eq!(
            s.get_token(h, NOW).await.unwrap(),
            None,
            "{h} should be revoked"
        );
    }
    for h in ["h-other", "h-other-child"] {
        assert!(
            s.get_token(h, NOW).await.unwrap().is_some(),
            "{h} is in another tree"
        );
    }

    assert_eq!(
        s.revoke_token("h-root").await.unwrap(),
        0,
        "already revoked"
    );
    assert_eq!(s.revoke_token("no-such-hash").await.unwrap(), 0);

    // By accessor: the same record, the same cascade.
    assert_eq!(
        s.get_token_by_accessor("a-other", NOW).await.unwrap(),
        Some(tree[4].clone())
    );
    assert_eq!(s.get_token_by_accessor("a-root", NOW).await.unwrap(), None);
    assert_eq!(s.revoke_token_by_accessor("a-other").await.unwrap(), 2);
    assert_eq!(s.get_token("h-other-child", NOW).await.unwrap(), None);
    assert_eq!(s.revoke_token_by_accessor("a-other").await.unwrap(), 0);
    // An expired token is not found by its accessor either.
    s.create_token(&token("h-old", "a-old", None, Some(NOW - 1)))
        .await
        .unwrap();
    assert_eq!(s.get_token_by_accessor("a-old", NOW).await.unwrap(), None);
    close(&s).await;
}

async fn case_token_renewal<B: CoreBackend + ?Sized>(b: &B) {
    let s = open_core(b);
    let live = token("h-live", "a-live", None, Some(NOW + 60));
    s.create_token(&live).await.unwrap();
    // Renewed: the new expiry is what a lookup gives, everything else unchanged.
    assert!(s.renew_token("h-live", NOW, NOW + 600).await.unwrap());
    assert_eq!(
        s.get_token("h-live", NOW).await.unwrap(),
        Some(TokenRecord {
            expires_at: Some(NOW + 600),
            last_renewal: Some(NOW),
            ..live.clone()
        })
    );
    // Not renewed, and unchanged: a token that is not renewable, one that never expires,
    // one that has expired, one that does not exist.
    let fixed = TokenRecord {
        renewable: false,
        ..token("h-fixed", "a-fixed", None, Some(NOW + 60))
    };
    s.create_token(&fixed).await.unwrap();
    assert!(!s.renew_token("h-fixed", NOW, NOW + 600).await.unwrap());
    assert_eq!(s.get_token("h-fixed", NOW).await.unwrap(), Some(fixed));
    let forever = token("h-forever", "a-forever", None, None);
    s.create_token(&forever).await.unwrap();
    assert!(!s.renew_token("h-forever", NOW, NOW + 600).await.unwrap());
    assert_eq!(s.get_token("h-forever", NOW).await.unwrap(), Some(forever));
    s.create_token(&token("h-gone", "a-gone", None, Some(NOW)))
        .await
        .unwrap();
    assert!(!s.renew_token("h-gone", NOW, NOW + 600).await.unwrap());
    assert_eq!(s.get_token("h-gone", NOW).await.unwrap(), None);
    assert!(!s.renew_token("no-such-hash", NOW, NOW + 600).await.unwrap());
    close(&s).await;
}

// ---------------------------------------------------------------------------------------
// PolicyStore
// ---------------------------------------------------------------------------------------

async fn case_policies<B: CoreBackend + ?Sized>(b: &B) {
    let s = open_core(b);
    let doc =
        |cap: &str| serde_json::json!({"path": {"sys/*": {"capabilities": [cap]}}}).to_string();

    assert_eq!(s.get_policy("ops").await.unwrap(), None);
    assert_eq!(s.list_policies().await.unwrap(), Vec::<String>::new());

    s.put_policy("ops", &doc("read"), NOW).await.unwrap();
    assert_eq!(s.get_policy("ops").await.unwrap(), Some(doc("read")));
    // Replacing keeps one row with the new document.
    s.put_policy("ops", &doc("update"), NOW + 1).await.unwrap();
    assert_eq!(s.get_policy("ops").await.unwrap(), Some(doc("update")));
    assert_eq!(s.list_policies().await.unwrap(), vec!["ops".to_string()]);

    // Inserted out of order; listed sorted.
    s.put_policy("zeta", &doc("list"), NOW).await.unwrap();
    s.put_policy("audit", &doc("sudo"), NOW).await.unwrap();
    assert_eq!(
        s.list_policies().await.unwrap(),
        vec!["audit", "ops", "zeta"]
    );

    // Only the existing ones come back; their order is not promised.
    let mut got = s
        .get_policies(&["ops".into(), "missing".into(), "audit".into()])
        .await
        .unwrap();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("audit".to_string(), doc("sudo")),
            ("ops".to_string(), doc("update"))
        ]
    );
    assert_eq!(
        s.get_policies(&[]).await.unwrap(),
        Vec::<(String, String)>::new()
    );

    assert!(s.delete_policy("ops").await.unwrap());
    assert!(
        !s.delete_policy("ops").await.unwrap(),
        "second delete finds nothing"
    );
    assert!(!s.delete_policy("never-was").await.unwrap());
    assert_eq!(s.get_policy("ops").await.unwrap(), None);
    assert_eq!(s.list_policies().await.unwrap(), vec!["audit", "zeta"]);
    close(&s).await;
}

// ---------------------------------------------------------------------------------------
// PolicyTokenStore
// ---------------------------------------------------------------------------------------

async fn case_policy_tokens_create_list_delete<B: CoreBackend + ?Sized>(b: &B) {
    let s = open_core(b);
    // The policy must exist when the token is made; nothing is stored otherwise.
    let t = policy_token("ratls", "deploy", NOW + 600);
    assert_err!(
        s.create_policy_token(&t).await,
        StoreError::NotFound(Thing::Policy)
    );
    assert!(s.list_policy_tokens("ratls").await.unwrap().is_empty());

    s.put_policy("deploy", &tagged_doc("v0"), NOW)
        .await
        .unwrap();
    s.create_policy_token(&t).await.unwrap();
    assert_err!(
        s.create_policy_token(&t).await,
        StoreError::Conflict(Clash::Duplicate)
    );
    let mut later = policy_token("ratls", "deploy", NOW + 900);
    later.created_at = NOW + 1;
    s.create_policy_token(&later).await.unwrap();
    let other = policy_token("ci", "deploy", NOW + 600);
    s.create_policy_token(&other).await.unwrap();

    // Each mount lists its own, oldest first, exactly as stored.
    assert_eq!(
        s.list_policy_tokens("ratls").await.unwrap(),
        vec![t.clone(), later.clone()]
    );
    assert_eq!(
        s.list_policy_tokens("ci").await.unwrap(),
        vec![other.clone()]
    );
    assert!(s.list_policy_tokens("nowhere").await.unwrap().is_empty());

    // A mount cannot delete another mount's token.
    assert!(!s.delete_policy_token("ratls", &other.hash).await.unwrap());
    assert_eq!(
        s.list_policy_tokens("ci").await.unwrap(),
        vec![other.clone()]
    );
    assert!(s.delete_policy_token("ci", &other.hash).await.unwrap());
    assert!(!s.delete_policy_token("ci", &other.hash).await.unwrap());
    assert!(s.list_policy_tokens("ci").await.unwrap().is_empty());

    // By the 8 characters people see: only when exactly one token of the mount has them.
    let mut twin_a = policy_token("ratls", "deploy", NOW + 600);
    let mut twin_b = policy_token("ratls", "deploy", NOW + 600);
    twin_a.prefix = "abcd0123".into();
    twin_b.prefix = "abcd0123".into();
    s.create_policy_token(&twin_a).await.unwrap();
    s.create_policy_token(&twin_b).await.unwrap();
    assert_eq!(
        s.delete_policy_token_by_prefix("ratls", "abcd0123")
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        s.list_policy_tokens("ratls").await.unwrap().len(),
        4,
        "nothing deleted"
    );
    assert_eq!(
        s.delete_policy_token_by_prefix("ci", "abcd0123")
            .await
            .unwrap(),
        0
    );
    assert!(s.delete_policy_token("ratls", &twin_b.hash).await.unwrap());
    assert_eq!(
        s.delete_policy_token_by_prefix("ratls", "abcd0123")
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        s.delete_policy_token_by_prefix("ratls", "abcd0123")
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        s.list_policy_tokens("ratls").await.unwrap(),
        vec![t.clone(), later.clone()]
    );

    // A deleted token is unknown to a spend, and nothing is written.
    assert!(s.delete_policy_token("ratls", &t.hash).await.unwrap());
    assert_eq!(
        s.spend_policy_token_and_update(&t.hash, "deploy", &tagged_doc("x"), NOW)
            .await
            .unwrap(),
        Spend::Refused(SpendRefusal::Unknown)
    );
    assert_eq!(
        s.get_policy("deploy").await.unwrap(),
        Some(tagged_doc("v0"))
    );
    close(&s).await;
}

async fn case_policy_token_spend_rules<B: CoreBackend + ?Sized>(b: &B) {
    let s = open_core(b);
    s.put_policy("deploy", &tagged_doc("v0"), NOW)
        .await
        .unwrap();
    s.put_policy("other", &tagged_doc("o0"), NOW).await.unwrap();
    let t = policy_token("ratls", "deploy", NOW + 60);
    s.create_policy_token(&t).await.unwrap();
    let spend = |hash: String, policy: &'static str, tag: &'static str, now: i64| {
        let s = Arc::clone(&s);
        async move {
            s.spend_policy_token_and_update(&hash, policy, &tagged_doc(tag), now)
                .await
                .unwrap()
        }
    };

    // Refusals change nothing: not the policy, not the token.
    assert_eq!(
        spend(t.hash.clone(), "other", "o1", NOW).await,
        Spend::Refused(SpendRefusal::OtherPolicy)
    );
    assert_eq!(
        spend("0".repeat(64), "deploy", "v1", NOW).await,
        Spend::Refused(SpendRefusal::Unknown)
    );
    // Good strictly before its expiration.
    assert_eq!(
        spend(t.hash.clone(), "deploy", "v1", NOW + 60).await,
        Spend::Refused(SpendRefusal::Expired)
    );
    assert_eq!(
        s.get_policy("deploy").await.unwrap(),
        Some(tagged_doc("v0"))
    );
    assert_eq!(s.get_policy("other").await.unwrap(), Some(tagged_doc("o0")));
    assert_eq!(
        s.list_policy_tokens("ratls").await.unwrap()[0].spent_at,
        None
    );

    // Spent once, by any mount's name: the write and the spending together.
    assert_eq!(
        spend(t.hash.clone(), "deploy", "v1", NOW + 59).await,
        Spend::Spent
    );
    assert_eq!(
        s.get_policy("deploy").await.unwrap(),
        Some(tagged_doc("v1"))
    );
    assert_eq!(
        s.list_policy_tokens("ratls").await.unwrap()[0].spent_at,
        Some(NOW + 59)
    );
    assert_eq!(
        spend(t.hash.clone(), "deploy", "v2", NOW + 59).await,
        Spend::Refused(SpendRefusal::Spent)
    );
    assert_eq!(
        s.get_policy("deploy").await.unwrap(),
        Some(tagged_doc("v1"))
    );

    // A token updates its policy; it does not bring back a deleted one.
    let gone = policy_token("ratls", "other", NOW + 60);
    s.create_policy_token(&gone).await.unwrap();
    assert!(s.delete_policy("other").await.unwrap());
    assert_eq!(
        spend(gone.hash.clone(), "other", "o2", NOW).await,
        Spend::Refused(SpendRefusal::PolicyGone)
    );
    assert_eq!(s.get_policy("other").await.unwrap(), None);

    // Spent stays spent, and unspent stays spendable, across a restart.
    let kept = policy_token("ratls", "deploy", NOW + 60);
    s.create_policy_token(&kept).await.unwrap();
    close(&s).await;
    let s = open_core(b);
    assert_eq!(
        s.spend_policy_token_and_update(&t.hash, "deploy", &tagged_doc("v3"), NOW)
            .await
            .unwrap(),
        Spend::Refused(SpendRefusal::Spent)
    );
    assert_eq!(
        s.spend_policy_token_and_update(&kept.hash, "deploy", &tagged_doc("v4"), NOW)
            .await
            .unwrap(),
        Spend::Spent
    );
    assert_eq!(
        s.get_policy("deploy").await.unwrap(),
        Some(tagged_doc("v4"))
    );
    close(&s).await;
}

async fn case_policy_token_purge<B: CoreBackend + ?Sized>(b: &B) {
    let s = open_core(b);
    s.put_policy("deploy", &tagged_doc("v0"), NOW)
        .await
        .unwrap();
    let spent = policy_token("ratls", "deploy", NOW + 600);
    let expired = policy_token("ratls", "deploy", NOW + 10);
    let live = policy_token("ci", "deploy", NOW + 600);
    for t in [&spent, &expired, &live] {
        s.create_policy_token(t).await.unwrap();
    }
    assert_eq!(
        s.spend_policy_token_and_update(&spent.hash, "deploy", &tagged_doc("v1"), NOW)
            .await
            .unwrap(),
        Spend::Spent
    );
    assert_eq!(
        s.purge_policy_tokens(NOW + 9).await.unwrap(),
        1,
        "only the spent one"
    );
    assert_eq!(
        s.purge_policy_tokens(NOW + 10).await.unwrap(),
        1,
        "then the expired one"
    );
    assert_eq!(s.purge_policy_tokens(NOW + 10).await.unwrap(), 0);
    assert!(s.list_policy_tokens("ratls").await.unwrap().is_empty());
    assert_eq!(
        s.list_policy_tokens("ci").await.unwrap(),
        vec![live.clone()]
    );
    // A purged token is refused as unknown: purging never makes a spent token good.
    assert_eq!(
        s.spend_policy_token_and_update(&spent.hash, "deploy", &tagged_doc("v2"), NOW)
            .await
            .unwrap(),
        Spend::Refused(SpendRefusal::Unknown)
    );
    assert_eq!(
        s.get_policy("deploy").await.unwrap(),
        Some(tagged_doc("v1"))
    );
    close(&s).await;
}

async fn case_concurrent_spends_one_winner<B: CoreBackend + ?Sized>(b: &B) {
    let s = open_core(b);
    s.put_policy("deploy", &tagged_doc("v0"), NOW)
        .await
        .unwrap();
    let t = policy_token("ratls", "deploy", NOW + 600);
    s.create_policy_token(&t).await.unwrap();
    const N: usize = 16;
    let barrier = Arc::new(tokio::sync::Barrier::new(N));
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let (s, barrier, hash) = (Arc::clone(&s), Arc::clone(&barrier), t.hash.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let r = s
                    .spend_policy_token_and_update(
                        &hash,
                        "deploy",
                        &tagged_doc(&format!("w{i}")),
                        NOW,
                    )
                    .await;
                (i, r)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        let (i, r) = task.await.expect("spend task panicked");
        match r {
            Ok(Spend::Spent) => winners.push(i),
            Ok(Spend::Refused(SpendRefusal::Spent)) => {}
            other => panic!("spend {i}: {other:?}"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one of {N} spends wins: {winners:?}"
    );
    // The policy holds the winner's document, and only its.
    assert_eq!(
        s.get_policy("deploy").await.unwrap(),
        Some(tagged_doc(&format!("w{}", winners[0])))
    );
    close(&s).await;
}

// ---------------------------------------------------------------------------------------
// MfaStore: methods
// ---------------------------------------------------------------------------------------

async fn case_methods_create_get_list<B: CoreBackend + ?Sized>(b: &B) {
    let s = open_core(b);
    // Every field away from the helper's defaults, so a dropped column shows.
    let full = MethodRecord {
        params: Params::new("SHA512", 8, 60).unwrap(),
        issuer: "Full".into(),
        key_size: 32,
        qr_size: 200,
        skew: 1,
        created_at: NOW - 5,
        ..method(Some("full"), 7)
    };
    let unnamed = method(None, 5);
    let other_unnamed = method(None, 5); // several methods may have no name
    for m in [&full, &unnamed, &other_unnamed] {
        s.create_method(m).await.expect("create_method");
    }

    assert_eq!(s.get_method(&full.id).await.unwrap(), Some(full.clone()));
    assert_eq!(
        s.get_method(&unnamed.id).await.unwrap(),
        Some(unnamed.clone())
    );
    assert_eq!(s.get_method("no-such-method").await.unwrap(), None);

    let mut expected = vec![full, unnamed, other_unnamed];
    expected.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(
        s.list_methods().await.unwrap(),
        expected,
        "every method, ordered by id"
    );

    // Name taken on create: refused, nothing stored.
    let clash = method(Some("full"), 5);
    assert_err!(
        s.create_method(&clash).await,
        StoreError::Conflict(Clash::NameTaken)
    );
    assert_eq!(s.get_method(&clash.id).await.unwrap(), None);
    assert_eq!(s.list_methods().await.unwrap().len(), 3);
    close(&s).await;
}

async fn case_methods_update<B: CoreBackend + ?Sized>(b: &B) {
    let s = open_core(b);
    let alpha = method(Some("alpha"), 5);
    let beta = method(Some("beta"), 5);
    s.create_method(&alpha).await.unwrap();
    s.create_method(&beta).await.unwrap();

    // name None keeps the name; every other setting is replaced.
    let changed = MethodRecord {
        name: None,
        issuer: "Changed".into(),
        params: Params::new("SHA256", 8, 60).unwrap(),
        key_size: 32,
        qr_size: 100,
        skew: 1,
        max_validation_attempts: 9,
        ..alpha.clone()
    };
    s.update_method(&changed).await.unwrap();
    let want = MethodRecord {
        name: Some("alpha".into()),
        ..changed.clone()
    };
    assert_eq!(s.get_method(&alpha.id).await.unwrap(), Some(want.clone()));

    // Renaming onto another method's name: refused, nothing changed.
    let onto_beta = MethodRecord {
        name: Some("beta".into()),
        issuer: "Should not land".into(),
        ..alpha.clone()
    };
    assert_err!(
        s.update_method(&onto_beta).await,
        StoreError::Conflict(Clash::NameTaken)
    );
    assert_eq!(s.get_method(&alpha.id).await.unwrap(), Some(want));

    // A method keeping its own name is no clash.
    s.update_method(&beta)
        .await
        .expect("update with its own name");

    // A rename frees the old name.
    let renamed = MethodRecord {
        name: Some("gamma".into()),
        ..alpha.clone()
    };
    s.update_method(&renamed).await.unwrap();
    assert_eq!(s.get_method(&alpha.id).await.unwrap(), Some(renamed));
    s.create_method(&method(Some("alpha"), 5))
        .await
        .expect("the old name is free after a rename");

    assert_err!(
        s.update_method(&method(Some("delta"), 5)).await,
        StoreError::NotFound(Thing::Method)
    );
    close(&s).await;
}

async fn case_methods_delete<B: CoreBackend + ?Sized>(b: &B) {
    let s = open_core(b);
    let m = method(Some("held"), 5);
    enrolled(&s, &m, "entity-1").await;

    assert_err!(
        s.delete_method("no-such-method").await,
        StoreError::NotFound(Thing::Method)
    );

    // The entities' secrets go with the method, in the same transaction (as Vault).
    enrolled_again(&s, &m, "entity-2").await;
    let other = method(Some("other"), 5);
    enrolled(&s, &other, "entity-1").await;
    assert_eq!(s.delete_method(&m.id).await.unwrap(), 2);
    assert_eq!(s.get_method(&m.id).await.unwrap(), None);
    // A method made again with the same name starts with no secret held.
    let again = MethodRecord {
        id: m.id.clone(),
        ..m.clone()
    };
    s.create_method(&again).await.unwrap();
    assert!(matches!(
        s.create_mfa_secret(&m.id, "entity-1", NOW).await.unwrap(),
        Enrollment::Created { .. }
    ));
    assert!(s.delete_mfa_secret(&m.id, "entity-1").await.unwrap());
    assert_eq!(s.delete_method(&m.id).await.unwrap(), 0);
    // The other method keeps its secret.
    assert!(matches!(
        s.create_mfa_secret(&other.id, "entity-1", NOW)
            .await
            .unwrap(),
        Enrollment::Exists { .. }
    ));
    assert_eq!(s.list_methods().await.unwrap(), vec![other.clone()]);
    assert_err!(
        s.delete_method(&m.id).await,
        StoreError::NotFound(Thing::Method)
    );
    close(&s).await;
}

// ---------------------------------------------------------------------------------------
// MfaStore: secrets and codes
// ---------------------------------------------------------------------------------------

async fn case_mfa_secret_enrollment<B: CoreBackend + ?Sized>(b: &B) {
    let s = open_core(b);
    let m = MethodRecord {
        key_size: 32,
        ..method(Some("enroll"), 1000)
    };
    s.create_method(&m).await.unwrap();

    let first = match s.create_mfa_secret(&m.id, "entity-1", NOW).await.unwrap() {
        Enrollment::Created { method, secret } => {
            assert_eq!(method, m, "Created carries the stored method");
            assert_eq!(secret.len(), 32, "a secret of exactly key_size bytes");
            secret
        }
        other => panic!("expected Created, got {other:?}"),
    };

    // A second enrollment changes nothing...
    assert_eq!(
        s.create_mfa_secret(&m.id, "entity-1", NOW + 1)
            .await
            .unwrap(),
        Enrollment::Exists { method: m.clone() }
    );
    // ...so a code made from the first secret still validates.
    let code = code_at(&first, &m.params, NOW);
    assert_eq!(
        s.check_and_record_mfa_code(&m.id, "entity-1", &code, NOW)
            .await
            .unwrap(),
        Outcome::Accepted {
            step: m.params.step(NOW)
        }
    );

    // Another entity gets its own secret.
    match s.create_mfa_secret(&m.id, "entity-2", NOW).await.unwrap() {
        Enrollment::Created { secret, .. } => assert_ne!(secret, first, "secrets are per entity"),
        other => panic!("expected Created, got {other:?}"),
    }

    // The secret is made with the method's settings as they are when stored.
    let smaller = MethodRecord {
        key_size: 16,
        ..m.clone()
    };
    s.update_method(&smaller).await.unwrap();
    match s.create_mfa_secret(&m.id, "entity-3", NOW).await.unwrap() {
        Enrollment::Created { method, secret } => {
            assert_eq!(secret.len(), 16);
            assert_eq!(method, smaller);
        }
        other => panic!("expected Created, got {other:?}"),
    }

    assert_err!(
        s.create_mfa_secret("no-such-method", "entity-1", NOW).await,
        StoreError::NotFound(Thing::Method)
    );
    close(&s).await;
}

async fn case_mfa_secret_delete<B: CoreBackend + ?Sized>(b: &B) {
    let s = open_core(b);
    let m = method(Some("delete"), 1000);
    let old = enrolled(&s, &m, "entity-1").await;

    assert!(s.delete_mfa_secret(&m.id, "entity-1").await.unwrap());
    assert!(
        !s.delete_mfa_secret(&m.id, "entity-1").await.unwrap(),
        "already deleted"
    );
    assert!(!s.delete_mfa_secret(&m.id, "never-enrolled").await.unwrap());
    assert_err!(
        s.delete_mfa_secret("no-such-method", "entity-1").await,
        StoreError::NotFound(Thing::Method)
    );

    let code = code_at(&old, &m.params, NOW);
    assert_err!(
        s.check_and_record_mfa_code(&m.id, "entity-1", &code, NOW)
            .await,
        StoreError::NotFound(Thing::MfaSecret)
    );

    // Enrolling again makes a new secret.
    match s.create_mfa_secret(&m.id, "entity-1", NOW).await.unwrap() {
        Enrollment::Created { secret, .. } => assert_ne!(secret, old),
        other => panic!("expected Created after delete, got {other:?}"),
    }
    close(&s).await;
}

async fn case_mfa_check_outcomes<B: CoreBackend + ?Sized>(b: &B) {
    let s = open_core(b);
    let m = method(Some("check"), 1000);
    let secret = enrolled(&s, &m, "entity-1").await;
    let right = code_at(&secret, &m.params, NOW);
    let wrong = wrong_code(&secret, &m.params, m.skew, NOW);
    let check = |code: String| {
        let (s, id) = (Arc::clone(&s), m.id.clone());
        async move {
            s.check_and_record_mfa_code(&id, "entity-1", &code, NOW)
                .await
                .unwrap()
        }
    };

    assert_eq!(
        check(right.clone()).await,
        Outcome::Accepted {
            step: m.params.step(NOW)
        }
    );
    assert_eq!(
        check(right.clone()).await,
        Outcome::Refused(Refusal::Replay)
    );
    assert_eq!(check(wrong).await, Outcome::Refused(Refusal::Invalid));
    assert_eq!(
        check("12x456".into()).await,
        Outcome::Refused(Refusal::Malformed)
    );

    assert_err!(
        s.check_and_record_mfa_code("no-such-method", "entity-1", &right, NOW)
            .await,
        StoreError::NotFound(Thing::Method)
    );
    assert_err!(
        s.check_and_record_mfa_code(&m.id, "not-enrolled", &right, NOW)
            .await,
        StoreError::NotFound(Thing::MfaSecret)
    );
    close(&s).await;
}

// ---------------------------------------------------------------------------------------
// AgentStore
// ---------------------------------------------------------------------------------------

async fn case_agent_secrets<B: CoreBackend + ?Sized>(b: &B) {
    let s = open_core(b);
    // Created newer-first, so "oldest first" cannot be insertion order by accident.
    let newer = agent_info("newer", Some("GitHub"), NOW + 10);
    let older = agent_info("older", None, NOW);
    let bobs = agent_info("bob's", Some("Bank"), NOW + 5);
    let (newer_secret, older_secret, bobs_secret) = (vec![1u8; 20], vec![2u8; 20], vec![3u8; 32]);
    s.create_agent_secret("alice", &newer, &newer_secret)
        .await
        .unwrap();
    s.create_agent_secret("alice", &older, &older_secret)
        .await
        .unwrap();
    s.create_agent_secret("bob", &bobs, &bobs_secret)
        .await
        .unwrap();

    // Exactly what was stored, oldest first; the info type has no room for the secret,
    // and label and issuer come back as given.
    assert_eq!(
        s.list_agent_secrets("alice").await.unwrap(),
        vec![older.clone(), newer.clone()]
    );
    assert_eq!(
        s.list_agent_secrets("bob").await.unwrap(),
        vec![bobs.clone()]
    );
    assert_eq!(
        s.list_agent_secrets("nobody").await.unwrap(),
        Vec::<AgentSecretInfo>::new()
    );

    assert_eq!(
        s.get_agent_secret("alice", &newer.id).await.unwrap(),
        Some((newer_secret.clone(), newer.params))
    );
    assert_eq!(
        s.get_agent_secret("bob", &bobs.id).await.unwrap(),
        Some((bobs_secret, bobs.params))
    );
    // Another entity's id behaves like an unknown one.
    assert_eq!(s.get_agent_secret("bob", &newer.id).await.unwrap(), None);
    assert_eq!(
        s.get_agent_secret("alice", "no-such-id").await.unwrap(),
        None
    );

    // An existing id is refused, whoever asks, and the stored secret is untouched.
    let copy = AgentSecretInfo {
        label: "copy".into(),
        ..newer.clone()
    };
    assert_err!(
        s.create_agent_secret("bob", &copy, &[9u8; 20]).await,
        StoreError::Conflict(Clash::Duplicate)
    );
    assert_eq!(
        s.get_agent_secret("alice", &newer.id).await.unwrap(),
        Some((newer_secret, newer.params))
    );
    assert_eq!(
        s.list_agent_secrets("bob").await.unwrap(),
        vec![bobs.clone()]
    );

    // Delete: only the owner, once.
    assert!(
        !s.delete_agent_secret("bob", &newer.id).await.unwrap(),
        "not bob's"
    );
    assert!(s
        .get_agent_secret("alice", &newer.id)
        .await
        .unwrap()
        .is_some());
    assert!(s.delete_agent_secret("alice", &newer.id).await.unwrap());
    assert!(
        !s.delete_agent_secret("alice", &newer.id).await.unwrap(),
        "already deleted"
    );
    assert!(!s.delete_agent_secret("alice", "no-such-id").await.unwrap());
    assert_eq!(s.get_agent_secret("alice", &newer.id).await.unwrap(), None);
    assert_eq!(s.list_agent_secrets("alice").await.unwrap(), vec![older]);
    assert_eq!(s.list_agent_secrets("bob").await.unwrap(), vec![bobs]);
    close(&s).await;
}

// ---------------------------------------------------------------------------------------
// UserTotpStore
// ---------------------------------------------------------------------------------------

async fn case_user_setup_and_activate<B: CoreBackend + ?Sized>(b: &B) {
    let s = open_core(b);
    let (first, second, backup, third) = (
        device_secret(1),
        device_secret(2),
        device_secret(3),
        device_secret(4),
    );
    let (_, codes) = recovery_codes(2);
    let setup = |name: Option<&'static str>, secret: &[u8], now: i64| {
        let (s, secret) = (Arc::clone(&s), secret.to_vec());
        async move {
            s.setup_user_device("user-1", name, &new_id(), &secret, &params(), now)
                .await
                .unwrap()
        }
    };
    let activate = |name: Option<&'static str>, code: String, codes: Option<Vec<RecoveryHash>>| {
        let s = Arc::clone(&s);
        async move {
            s.activate_user_device("user-1", name, &code, codes.as_deref(), NOW)
                .await
                .unwrap()
        }
    };

    assert_eq!(setup(None, &first, NOW).await, Setup::Pending);
    // A second setup while the first is pending replaces it: one device, the new secret.
    assert_eq!(setup(None, &second, NOW).await, Setup::Pending);
    assert_eq!(
        user_devices(&s, "user-1").await,
        vec![("default".to_string(), false, NOW)]
    );
    assert_eq!(
        activate(None, step_code(&first, 0), None).await,
        Activation::Refused(Refusal::Invalid),
        "the replaced secret's code is wrong"
    );
    assert_eq!(
        activate(None, user_wrong_code(&[&second], NOW), None).await,
        Activation::Refused(Refusal::Invalid)
    );
    assert_eq!(
        user_devices(&s, "user-1").await,
        vec![("default".to_string(), false, NOW)]
    );

    // Right, but the first device needs recovery codes: nothing changes and the code is
    // not used up, so the caller can hash a set and call again with the same code.
    let right = step_code(&second, 0);
    assert_eq!(
        activate(None, right.clone(), None).await,
        Activation::NeedsCodes
    );
    assert_eq!(
        user_devices(&s, "user-1").await,
        vec![("default".to_string(), false, NOW)]
    );
    assert_eq!(s.count_recovery_codes("user-1").await.unwrap(), 0);
    assert_eq!(
        activate(None, right, Some(codes.clone())).await,
        Activation::Activated { first: true }
    );
    assert_eq!(
        user_devices(&s, "user-1").await,
        vec![("default".to_string(), true, NOW)]
    );
    assert_eq!(s.count_recovery_codes("user-1").await.unwrap(), codes.len());
    for c in &codes {
        assert_eq!(
            s.get_recovery_hash("user-1", &c.selector).await.unwrap(),
            Some(c.hash.clone())
        );
    }

    // Without a name, setup is for a first device only.
    assert_eq!(setup(None, &backup, NOW).await, Setup::AlreadyActive);
    assert_eq!(
        user_devices(&s, "user-1").await,
        vec![("default".to_string(), true, NOW)]
    );
    assert_eq!(
        setup(Some("backup"), &backup, NOW + 1).await,
        Setup::Pending
    );
    // An active device's name is taken, and its secret stays: its next code still works.
    assert_eq!(
        setup(Some("default"), &third, NOW + 2).await,
        Setup::NameTaken
    );
    assert_eq!(
        s.check_user_code(
            Proof::Owner {
                entity_id: "user-1"
            },
            &step_code(&second, 1),
            NOW
        )
        .await
        .unwrap(),
        Check::Accepted
    );
    assert_eq!(setup(Some("third"), &third, NOW + 2).await, Setup::Pending);

    // Two pending devices: without a name the store cannot tell which is meant.
    assert_eq!(
        activate(None, step_code(&backup, 0), None).await,
        Activation::SeveralPending
    );
    // A later device is not the first: codes given with it are not the user's set.
    let stray = RecoveryHash {
        selector: "none".into(),
        hash: "not a stored hash".into(),
    };
    assert_eq!(
        activate(Some("backup"), step_code(&backup, 0), Some(vec![stray])).await,
        Activation::Activated { first: false }
    );
    assert_eq!(s.count_recovery_codes("user-1").await.unwrap(), codes.len());
    assert_eq!(s.get_recovery_hash("user-1", "none").await.unwrap(), None);
    assert_eq!(
        s.get_recovery_hash("user-1", &codes[0].selector)
            .await
            .unwrap(),
        Some(codes[0].hash.clone())
    );

    // Active or unknown names are not pending.
    assert_eq!(
        activate(Some("default"), step_code(&second, 1), None).await,
        Activation::NoPending
    );
    assert_eq!(
        activate(Some("missing"), step_code(&third, 0), None).await,
        Activation::NoPending
    );
    assert_eq!(
        s.activate_user_device("user-2", None, &step_code(&third, 0), None, NOW)
            .await
            .unwrap(),
        Activation::NoPending
    );

    assert_eq!(
        user_devices(&s, "user-1").await,
        vec![
            ("default".to_string(), true, NOW),
            ("backup".to_string(), true, NOW + 1),
            ("third".to_string(), false, NOW + 2),
        ]
    );
    assert_eq!(user_devices(&s, "user-2").await, vec![]);
    close(&s).await;
}

async fn case_user_code_checks<B: CoreBackend + ?Sized>(b: &B) {
    let s = open_core(b);
    let (main, backup) = (device_secret(1), device_secret(2));
    active_user(&s, "user-1", &main, &[]).await;
    added_device(&s, "user-1", "backup", &backup).await;
    let check = |code: String, now: i64| {
        let s = Arc::clone(&s);
        async move {
            s.check_user_code(
                Proof::Owner {
                    entity_id: "user-1",
                },
                &code,
                now,
            )
            .await
            .unwrap()
        }
    };

    // The code that activated a device cannot also confirm an action.
    assert_eq!(
        check(step_code(&main, 0), NOW).await,
        Check::Refused(Refusal::Replay)
    );
    assert_eq!(check(step_code(&main, 1), NOW).await, Check::Accepted);
    assert_eq!(
        check(step_code(&main, 1), NOW).await,
        Check::Refused(Refusal::Replay)
    );
    // Every active device is checked, each with its own used steps.
    assert_eq!(check(step_code(&backup, 1), NOW).await, Check::Accepted);

    // Five wrong codes in a row lock the user, whichever devices they were meant for...
    let t1 = NOW + PERIOD;
    let wrong = user_wrong_code(&[&main, &backup], t1);
    for i in 1..=5 {
        assert_eq!(
            check(wrong.clone(), t1).await,
            Check::Refused(Refusal::Invalid),
            "wrong code {i}"
        );
    }
    // ...so even a right code of either device is refused until one period has passed.
    assert_eq!(
        check(step_code(&main, 2), t1).await,
        Check::Refused(Refusal::Locked)
    );
    // Refusals during the lock do not count: five of them late in the lock would lock
    // the user again, past its end, if they did.
    let late = t1 + PERIOD - 1;
    let wrong = user_wrong_code(&[&main, &backup], late);
    for code in [
        step_code(&main, 2),
        step_code(&backup, 2),
        wrong.clone(),
        wrong.clone(),
        wrong,
    ] {
        assert_eq!(check(code, late).await, Check::Refused(Refusal::Locked));
    }
    let t2 = t1 + PERIOD;
    assert_eq!(check(step_code(&main, 2), t2).await, Check::Accepted);

    // A replay is a refused code, and counted: with it, four wrong codes lock.
    assert_eq!(
        check(step_code(&main, 2), t2).await,
        Check::Refused(Refusal::Replay)
    );
    let wrong = user_wrong_code(&[&main, &backup], t2);
    for i in 1..=4 {
        assert_eq!(
            check(wrong.clone(), t2).await,
            Check::Refused(Refusal::Invalid),
            "wrong code {i}"
        );
    }
    assert_eq!(
        check(step_code(&backup, 2), t2).await,
        Check::Refused(Refusal::Locked)
    );
    let t3 = t2 + PERIOD;
    assert_eq!(check(step_code(&backup, 3), t3).await, Check::Accepted);

    // Without an active device there is nothing to check; a pending one logs nobody in.
    assert_eq!(
        s.check_user_code(
            Proof::Owner {
                entity_id: "nobody"
            },
            &step_code(&main, 3),
            t3
        )
        .await
        .unwrap(),
        Check::NotActive
    );
    assert_eq!(
        s.setup_user_device("user-2", None, &new_id(), &main, &params(), NOW)
            .await
            .unwrap(),
        Setup::Pending
    );
    assert_eq!(
        s.check_user_code(
            Proof::Owner {
                entity_id: "user-2"
            },
            &step_code(&main, 3),
            t3
        )
        .await
        .unwrap(),
        Check::NotActive
    );
    close(&s).await;
}

async fn case_user_login_with_temp_tokens<B: CoreBackend + ?Sized>(b: &B) {
    let s = open_core(b);
    let secret = device_secret(1);

    // A temp_token is for a user with an active device; a pending one is not enough.
    assert!(!s
        .create_temp_token("user-1", "temp-early", NOW, NOW + 300)
        .await
        .unwrap());
    assert_eq!(
        s.setup_user_device("user-1", None, &new_id(), &secret, &params(), NOW)
            .await
            .unwrap(),
        Setup::Pending
    );
    assert!(!s
        .create_temp_token("user-1", "temp-early", NOW, NOW + 300)
        .await
        .unwrap());
    assert_eq!(
        s.get_temp_token_user("temp-early", NOW).await.unwrap(),
        None,
        "a refused temp_token is not stored"
    );
    assert_eq!(
        s.activate_user_device("user-1", None, &step_code(&secret, 0), Some(&[]), NOW)
            .await
            .unwrap(),
        Activation::Activated { first: true }
    );

    assert!(s
        .create_temp_token("user-1", "temp-1", NOW, NOW + 300)
        .await
        .unwrap());
    assert!(s
        .create_temp_token("user-1", "temp-short", NOW, NOW + 10)
        .await
        .unwrap());
    assert_eq!(
        s.get_temp_token_user("temp-1", NOW + 299).await.unwrap(),
        Some("user-1".to_string())
    );
    assert_eq!(
        s.get_temp_token_user("temp-1", NOW + 300).await.unwrap(),
        None,
        "good strictly before expires_at"
    );

    let t1 = NOW + PERIOD;
    let (right, wrong) = (step_code(&secret, 1), user_wrong_code(&[&secret], t1));
    let login_a = token("login-a", "acc-login-a", None, None);
    let login_b = token("login-b", "acc-login-b", None, None);
    let login = |temp: &'static str, login: &TokenRecord, code: &str| {
        let (s, login, code) = (Arc::clone(&s), login.clone(), code.to_string());
        async move {
            s.check_user_code(
                Proof::Login {
                    temp_hash: temp,
                    login: &login,
                },
                &code,
                t1,
            )
            .await
            .unwrap()
        }
    };

    // An unknown or expired temp_token: nothing is checked, spent or counted. Five
    // wrong codes would lock the user if they counted; then the four below would not be
    // Invalid, and the right code not accepted.
    assert_eq!(
        login("no-such-temp", &login_a, &right).await,
        Check::BadTempToken
    );
    assert_eq!(
        login("temp-short", &login_a, &right).await,
        Check::BadTempToken
    );
    for _ in 0..5 {
        assert_eq!(
            login("temp-short", &login_a, &wrong).await,
            Check::BadTempToken
        );
    }
    assert_eq!(s.get_token("login-a", NOW).await.unwrap(), None);

    // A wrong code leaves the temp_token usable.
    for i in 1..=4 {
        assert_eq!(
            login("temp-1", &login_a, &wrong).await,
            Check::Refused(Refusal::Invalid),
            "wrong code {i}"
        );
    }
    assert_eq!(
        s.get_temp_token_user("temp-1", t1).await.unwrap(),
        Some("user-1".to_string())
    );
    assert_eq!(s.get_token("login-a", NOW).await.unwrap(), None);

    // Success stores the login token as the temp_token's user and spends the temp_token.
    assert_eq!(login("temp-1", &login_a, &right).await, Check::Accepted);
    assert_eq!(
        s.get_token("login-a", NOW).await.unwrap(),
        Some(TokenRecord {
            entity_id: "user-1".into(),
            ..login_a.clone()
        })
    );
    assert_eq!(s.get_temp_token_user("temp-1", t1).await.unwrap(), None);

    // A temp_token logs in once, even with a fresh right code, which it leaves unspent.
    let fresh = step_code(&secret, 2);
    assert_eq!(login("temp-1", &login_b, &fresh).await, Check::BadTempToken);
    assert_eq!(s.get_token("login-b", NOW).await.unwrap(), None);
    assert!(s
        .create_temp_token("user-1", "temp-2", t1, t1 + 300)
        .await
        .unwrap());
    assert_eq!(login("temp-2", &login_b, &fresh).await, Check::Accepted);
    assert_eq!(
        s.get_token("login-b", NOW)
            .await
            .unwrap()
            .map(|t| t.entity_id),
        Some("user-1".to_string())
    );
    close(&s).await;
}

async fn case_user_recovery_codes<B: CoreBackend + ?Sized>(b: &B) {
    let s = open_core(b);
    let (main, backup, spare) = (device_secret(1), device_secret(2), device_secret(3));
    let (codes, hashes) = recovery_codes(3);
    let (set, replacement) = (&hashes[..2], &hashes[2..]);
    active_user(&s, "user-1", &main, set).await;
    added_device(&s, "user-1", "backup", &backup).await;
    let owner = Proof::Owner {
        entity_id: "user-1",
    };
    let spend = |i: usize, matched: bool, now: i64| {
        let (s, selector) = (Arc::clone(&s), codes[i].selector.clone());
        async move {
            s.spend_recovery_code(owner, &selector, matched, now)
                .await
                .unwrap()
        }
    };
    let totp = |code: String, now: i64| {
        let s = Arc::clone(&s);
        async move { s.check_user_code(owner, &code, now).await.unwrap() }
    };
    let stored = |i: usize| {
        let (s, selector) = (Arc::clone(&s), codes[i].selector.clone());
        async move { s.get_recovery_hash("user-1", &selector).await.unwrap() }
    };

    assert_eq!(s.count_recovery_codes("user-1").await.unwrap(), 2);
    assert_eq!(stored(0).await, Some(set[0].hash.clone()));
    assert_eq!(stored(1).await, Some(set[1].hash.clone()));
    assert_eq!(
        s.get_recovery_hash("user-2", &codes[0].selector)
            .await
            .unwrap(),
        None,
        "codes are the user's"
    );
    assert_eq!(s.get_recovery_hash("user-1", "none").await.unwrap(), None);

    // One failure count per user, across devices and recovery codes: three wrong TOTP
    // codes and two recovery misses lock.
    let wrong = user_wrong_code(&[&main, &backup], NOW);
    for i in 1..=3 {
        assert_eq!(
            totp(wrong.clone(), NOW).await,
            Check::Refused(Refusal::Invalid),
            "wrong code {i}"
        );
    }
    let typo = RecoveryCode {
        selector: codes[0].selector.clone(),
        secret: codes[1].secret.clone(),
    };
    assert!(!recovery_matches(&typo, stored(0).await.as_deref()));
    assert_eq!(spend(0, false, NOW).await, Check::Refused(Refusal::Invalid));
    assert_eq!(spend(1, false, NOW).await, Check::Refused(Refusal::Invalid));
    // A lock refuses a matching recovery code too, and leaves it unspent.
    assert_eq!(spend(0, true, NOW).await, Check::Refused(Refusal::Locked));
    assert_eq!(s.count_recovery_codes("user-1").await.unwrap(), 2);
    assert_eq!(stored(0).await, Some(set[0].hash.clone()));
    assert_eq!(
        totp(step_code(&main, 1), NOW).await,
        Check::Refused(Refusal::Locked)
    );

    // After the lock a matching code is spent, once.
    let t1 = NOW + PERIOD;
    assert!(recovery_matches(&codes[0], stored(0).await.as_deref()));
    assert_eq!(spend(0, true, t1).await, Check::Accepted);
    assert_eq!(s.count_recovery_codes("user-1").await.unwrap(), 1);
    assert_eq!(stored(0).await, None);
    assert_eq!(stored(1).await, Some(set[1].hash.clone()));
    // A replay and a miss count like wrong TOTP codes: with them, three more lock.
    assert_eq!(spend(0, true, t1).await, Check::Refused(Refusal::Replay));
    assert_eq!(spend(1, false, t1).await, Check::Refused(Refusal::Invalid));
    let wrong = user_wrong_code(&[&main, &backup], t1);
    for i in 1..=3 {
        assert_eq!(
            totp(wrong.clone(), t1).await,
            Check::Refused(Refusal::Invalid),
            "wrong code {i}"
        );
    }
    assert_eq!(spend(1, true, t1).await, Check::Refused(Refusal::Locked));
    assert_eq!(s.count_recovery_codes("user-1").await.unwrap(), 1);

    // A recovery code logs in like a TOTP code: the temp_token is spent, the login stored.
    let t2 = t1 + PERIOD;
    assert!(s
        .create_temp_token("user-1", "temp-r", t2, t2 + 300)
        .await
        .unwrap());
    let login = token("login-r", "acc-login-r", None, None);
    let via_temp = |temp: &'static str, i: usize| {
        let (s, selector, login) = (Arc::clone(&s), codes[i].selector.clone(), login.clone());
        async move {
            s.spend_recovery_code(
                Proof::Login {
                    temp_hash: temp,
                    login: &login,
                },
                &selector,
                true,
                t2,
            )
            .await
            .unwrap()
        }
    };
    assert_eq!(via_temp("temp-r", 1).await, Check::Accepted);
    assert_eq!(
        s.get_token("login-r", NOW)
            .await
            .unwrap()
            .map(|t| t.entity_id),
        Some("user-1".to_string())
    );
    assert_eq!(s.get_temp_token_user("temp-r", t2).await.unwrap(), None);
    assert_eq!(s.count_recovery_codes("user-1").await.unwrap(), 0);
    assert_eq!(via_temp("temp-r", 1).await, Check::BadTempToken);
    assert_eq!(via_temp("no-such-temp", 1).await, Check::BadTempToken);
    assert_eq!(
        s.spend_recovery_code(
            Proof::Owner {
                entity_id: "nobody"
            },
            &codes[2].selector,
            true,
            t2
        )
        .await
        .unwrap(),
        Check::NotActive
    );

    // A new set replaces the old one whole, spent codes included.
    assert!(s
        .replace_recovery_codes("user-1", replacement, t2)
        .await
        .unwrap());
    // A user without an active device gets no codes.
    assert!(!s
        .replace_recovery_codes("nobody", replacement, t2)
        .await
        .unwrap());
    assert_eq!(s.count_recovery_codes("nobody").await.unwrap(), 0);
    assert_eq!(s.count_recovery_codes("user-1").await.unwrap(), 1);
    assert_eq!(stored(2).await, Some(replacement[0].hash.clone()));
    assert_eq!(stored(0).await, None);
    assert_eq!(stored(1).await, None);

    // Removing one of two active devices keeps the codes.
    assert_eq!(
        s.setup_user_device("user-1", Some("spare"), &new_id(), &spare, &params(), t2)
            .await
            .unwrap(),
        Setup::Pending
    );
    assert_eq!(
        s.deactivate_user("user-1", Some("backup")).await.unwrap(),
        1
    );
    assert_eq!(s.count_recovery_codes("user-1").await.unwrap(), 1);
    assert_eq!(
        user_devices(&s, "user-1").await,
        vec![
            ("default".to_string(), true, NOW),
            ("spare".to_string(), false, t2),
        ]
    );

    // The codes and the failure count go with the last active device.
    let wrong = user_wrong_code(&[&main], t2);
    for i in 1..=4 {
        assert_eq!(
            totp(wrong.clone(), t2).await,
            Check::Refused(Refusal::Invalid),
            "wrong code {i}"
        );
    }
    assert_eq!(s.deactivate_user("user-1", None).await.unwrap(), 2);
    assert_eq!(s.count_recovery_codes("user-1").await.unwrap(), 0);
    assert_eq!(stored(2).await, None);
    assert_eq!(user_devices(&s, "user-1").await, vec![]);
    assert_eq!(s.deactivate_user("user-1", None).await.unwrap(), 0);
    assert_eq!(
        s.deactivate_user("user-1", Some("backup")).await.unwrap(),
        0
    );
    // Four failures were kept before: had they stayed, this wrong code would lock and
    // the right one be refused.
    assert_eq!(
        s.setup_user_device("user-1", None, &new_id(), &spare, &params(), t2)
            .await
            .unwrap(),
        Setup::Pending
    );
    assert_eq!(
        s.activate_user_device("user-1", None, &user_wrong_code(&[&spare], t2), None, t2)
            .await
            .unwrap(),
        Activation::Refused(Refusal::Invalid)
    );
    assert_eq!(
        s.activate_user_device("user-1", None, &step_code(&spare, 2), Some(&[]), t2)
            .await
            .unwrap(),
        Activation::Activated { first: true }
    );
    close(&s).await;
}

/// Devices made in one second are listed in the order they were made (not by name),
/// and a pending device set up again is made again: it moves to the end.
async fn case_user_devices_made_in_one_second_keep_their_order<B: CoreBackend + ?Sized>(b: &B) {
    let s = open_core(b);
    active_user(&s, "user-1", &device_secret(1), &[]).await;
    for name in ["zeta", "alpha", "mid"] {
        assert_eq!(
            s.setup_user_device(
                "user-1",
                Some(name),
                &new_id(),
                &device_secret(2),
                &params(),
                NOW
            )
            .await
            .unwrap(),
            Setup::Pending
        );
    }
    let names = |devices: Vec<(String, bool, i64)>| -> Vec<String> {
        devices.into_iter().map(|(name, _, _)| name).collect()
    };
    assert_eq!(
        names(user_devices(&s, "user-1").await),
        ["default", "zeta", "alpha", "mid"]
    );
    assert_eq!(
        s.setup_user_device(
            "user-1",
            Some("zeta"),
            &new_id(),
            &device_secret(3),
            &params(),
            NOW
        )
        .await
        .unwrap(),
        Setup::Pending
    );
    assert_eq!(
        names(user_devices(&s, "user-1").await),
        ["default", "alpha", "mid", "zeta"]
    );
    close(&s).await;
}

// ---------------------------------------------------------------------------------------
// Vault's TOTP secrets engine
// ---------------------------------------------------------------------------------------

/// An engine key of the `totp` mount (skew 0 unless changed: one right code at a time).
fn engine_key(mount: &str, name: &str) -> EngineKeyInfo {
    EngineKeyInfo {
        mount: mount.into(),
        name: name.into(),
        issuer: "Acme".into(),
        account_name: format!("{name}@example.com"),
        params: params(),
        skew: 0,
        created_at: NOW,
    }
}

async fn engine_check<S: CoreStore + ?Sized>(
    s: &Arc<S>,
    k: &EngineKeyInfo,
    code: &str,
    now: i64,
) -> EngineCheck {
    s.check_and_record_engine_code(&k.mount, &k.name, code, now)
        .await
        .expect("check_and_record_engine_code")
}

async fn case_engine_keys_put_get_list_delete<B: CoreBackend + ?Sized>(b: &B) {
    let s = open_core(b);
    // Put out of order, and with names whose byte order differs from a locale's.
    let mut keys = Vec::new();
    for name in ["zeta", "Alpha", "beta", "_x"] {
        let k = engine_key("totp", name);
        s.put_engine_key(&k, &[name.len() as u8; 20]).await.unwrap();
        keys.push(k);
    }
    let other = EngineKeyInfo {
        skew: 1,
        params: Params::new("SHA256", 8, 60).unwrap(),
        ..engine_key("ci-totp", "zeta")
    };
    s.put_engine_key(&other, &[9; 32]).await.unwrap();

    assert_eq!(
        s.list_engine_keys("totp").await.unwrap(),
        ["Alpha", "_x", "beta", "zeta"]
    );
    assert_eq!(s.list_engine_keys("ci-totp").await.unwrap(), ["zeta"]);
    assert!(s.list_engine_keys("nothing").await.unwrap().is_empty());
    // Exactly what was stored; each mount its own key under one name.
    assert_eq!(
        s.get_engine_key("totp", "zeta").await.unwrap(),
        Some(keys[0].clone())
    );
    assert_eq!(
        s.get_engine_key("ci-totp", "zeta").await.unwrap(),
        Some(other.clone())
    );
    assert_eq!(
        s.open_engine_key("ci-totp", "zeta").await.unwrap(),
        Some((other.clone(), vec![9; 32]))
    );
    assert_eq!(s.get_engine_key("totp", "nope").await.unwrap(), None);
    assert_eq!(s.open_engine_key("ci-totp", "beta").await.unwrap(), None);

    // A put on a taken name replaces the key, as Vault's engine does.
    let replaced = EngineKeyInfo {
        issuer: "Other".into(),
        created_at: NOW + 5,
        ..keys[0].clone()
    };
    s.put_engine_key(&replaced, &[7; 20]).await.unwrap();
    assert_eq!(
        s.open_engine_key("totp", "zeta").await.unwrap(),
        Some((replaced.clone(), vec![7; 20]))
    );
    assert_eq!(s.list_engine_keys("totp").await.unwrap().len(), 4);

    assert!(s.delete_engine_key("totp", "zeta").await.unwrap());
    assert!(!s.delete_engine_key("totp", "zeta").await.unwrap());
    assert_eq!(s.get_engine_key("totp", "zeta").await.unwrap(), None);
    // The other mount's key of that name stays.
    assert!(s.get_engine_key("ci-totp", "zeta").await.unwrap().is_some());
    assert!(matches!(
        s.check_and_record_engine_code("totp", "zeta", "123456", NOW)
            .await,
        Err(StoreError::NotFound(Thing::EngineKey))
    ));
    assert!(matches!(
        s.unlock_engine_key("totp", "zeta").await,
        Err(StoreError::NotFound(Thing::EngineKey))
    ));
    close(&s).await;
}

async fn case_engine_code_checks_tried_codes_and_lock<B: CoreBackend + ?Sized>(b: &B) {
    let s = open_core(b);
    let k = engine_key("totp", "acct");
    let secret = vec![5u8; 20];
    s.put_engine_key(&k, &secret).await.unwrap();
    let p = k.params;
    let right = code_at(&secret, &p, NOW);
    let step = p.step(NOW);

    assert_eq!(
        engine_check(&s, &k, &right, NOW).await,
        EngineCheck::Checked(Outcome::Accepted { step })
    );
    // The same code again, spaces and all: tried, refused as used, nothing counted.
    assert_eq!(
        engine_check(&s, &k, &format!(" {right} "), NOW).await,
        EngineCheck::Repeat
    );

    // Wrong codes: each fresh one counts, a repeat does not.
    let next = NOW + PERIOD;
    let wrongs: Vec<String> = (0..10u32)
        .map(|d| d.to_string().repeat(6))
        .filter(|c| *c != code_at(&secret, &p, next) && *c != right)
        .take(5)
        .collect();
    for w in &wrongs[..4] {
        assert_eq!(
            engine_check(&s, &k, w, next).await,
            EngineCheck::Checked(Outcome::Refused(Refusal::Invalid))
        );
        assert_eq!(engine_check(&s, &k, w, next).await, EngineCheck::Repeat);
    }
    // Malformed: verified (and counted) each time, never remembered.
    assert_eq!(
        engine_check(&s, &k, "12345", next).await,
        EngineCheck::Checked(Outcome::Refused(Refusal::Malformed))
    );
    assert_eq!(
        s.lockouts_begun().vault_totp,
        1,
        "the fifth failure in a row locks"
    );
    // Locked: even the right code is refused, and not remembered, so it works after.
    let right_next = code_at(&secret, &p, next);
    assert_eq!(
        engine_check(&s, &k, &right_next, next).await,
        EngineCheck::Checked(Outcome::Refused(Refusal::Locked))
    );
    assert_eq!(
        engine_check(&s, &k, &right_next, next).await,
        EngineCheck::Checked(Outcome::Refused(Refusal::Locked))
    );
    let cleared = s.unlock_engine_key("totp", "acct").await.unwrap();
    assert_eq!(cleared.locked_until, Some(next + PERIOD));
    assert_eq!(
        engine_check(&s, &k, &right_next, next).await,
        EngineCheck::Checked(Outcome::Accepted { step: step + 1 })
    );
    // An older step's code, never tried, is a replay (RFC 6238 §5.2), not a repeat.
    let later = next + PERIOD;
    let w0 = &wrongs[0];
    // Remembered for period × (2 + skew) = 60 s from `next`: still a repeat at +59...
    assert_eq!(
        engine_check(&s, &k, w0, next + 59).await,
        EngineCheck::Repeat
    );
    // ...and a fresh try from +60 on.
    assert_eq!(
        engine_check(&s, &k, w0, next + 60).await,
        EngineCheck::Checked(Outcome::Refused(Refusal::Invalid))
    );
    let _ = later;

    // Replacing the key clears its records.
    s.put_engine_key(&k, &secret).await.unwrap();
    assert_eq!(
        engine_check(&s, &k, &right, NOW).await,
        EngineCheck::Checked(Outcome::Accepted { step })
    );
    close(&s).await;
}

async fn case_engine_concurrent_right_code_accepted_once<B: CoreBackend + ?Sized>(b: &B) {
    let s = open_core(b);
    let k = engine_key("totp", "race");
    let secret = vec![3u8; 20];
    s.put_engine_key(&k, &secret).await.unwrap();
    let code = code_at(&secret, &k.params, NOW);
    let barrier = Arc::new(tokio::sync::Barrier::new(64));
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (s, barrier, code) = (Arc::clone(&s), Arc::clone(&barrier), code.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                s.check_and_record_engine_code("totp", "race", &code, NOW)
                    .await
            })
        })
        .collect();
    let mut accepted = 0;
    let mut repeats = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(EngineCheck::Checked(Outcome::Accepted { .. })) => accepted += 1,
            Ok(EngineCheck::Repeat) => repeats += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        (accepted, repeats),
        (1, 63),
        "one right code is accepted exactly once"
    );
    close(&s).await;
}

async fn case_engine_concurrent_puts_leave_one_key<B: CoreBackend + ?Sized>(b: &B) {
    let s = open_core(b);
    let tasks: Vec<_> = (0..16u8)
        .map(|i| {
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                let k = engine_key("totp", "shared");
                s.put_engine_key(&k, &[i; 20]).await
            })
        })
        .collect();
    for t in tasks {
        t.await
            .expect("task")
            .expect("every put succeeds: the last one wins");
    }
    assert_eq!(s.list_engine_keys("totp").await.unwrap(), ["shared"]);
    let (_, secret) = s
        .open_engine_key("totp", "shared")
        .await
        .unwrap()
        .expect("one key");
    assert!(secret.iter().all(|b| *b == secret[0]) && secret[0] < 16);
    close(&s).await;
}

async fn case_engine_tried_codes_survive_reopen<B: CoreBackend + ?Sized>(b: &B) {
    let s = open_core(b);
    let k = engine_key("totp", "durable");
    let secret = vec![8u8; 20];
    s.put_engine_key(&k, &secret).await.unwrap();
    let right = code_at(&secret, &k.params, NOW);
    let wrong = wrong_code(&secret, &k.params, 0, NOW);
    assert!(matches!(
        engine_check(&s, &k, &right, NOW).await,
        EngineCheck::Checked(Outcome::Accepted { .. })
    ));
    assert_eq!(
        engine_check(&s, &k, &wrong, NOW).await,
        EngineCheck::Checked(Outcome::Refused(Refusal::Invalid))
    );
    close(&s).await;
    drop(s);
    // Unlike Vault's in-memory cache, a restart forgets nothing.
    let s = open_core(b);
    assert_eq!(engine_check(&s, &k, &right, NOW).await, EngineCheck::Repeat);
    assert_eq!(engine_check(&s, &k, &wrong, NOW).await, EngineCheck::Repeat);
    close(&s).await;
}

// ---------------------------------------------------------------------------------------
// Atomicity under concurrency
// ---------------------------------------------------------------------------------------

async fn case_concurrent_right_code_accepted_once<B: CoreBackend + ?Sized>(b: &B) {
    let s = open_core(b);
    // A high limit, so the 63 losers are refused as replays rather than locking early;
    // Locked is still counted as a valid refusal.
    let m = method(Some("race"), 1000);
    let secret = enrolled(&s, &m, "entity-1").await;
    let code = code_at(&secret, &m.params, NOW);

    let results = concurrent_checks(&s, &m.id, "entity-1", &code, NOW, 64).await;
    assert_eq!(results.len(), 64);
    let t = Tally::of(results);
    assert!(t.errors.is_empty(), "no call may fail: {t:?}");
    assert_eq!(
        t.accepted, 1,
        "one right code is accepted exactly once: {t:?}"
    );
    assert_eq!(
        t.replay + t.locked,
        63,
        "every other call is a replay or locked: {t:?}"
    );
    close(&s).await;
}

async fn case_concurrent_wrong_codes_all_counted<B: CoreBackend + ?Sized>(b: &B) {
    let s = open_core(b);
    let m = method(Some("lockout"), 5);
    let secret = enrolled(&s, &m, "entity-1").await;
    let wrong = wrong_code(&secret, &m.params, m.skew, NOW);

    // Run one after another, 5 failures are Invalid and the fifth locks the secret for a
    // period, so the other 59 are Locked. Any lost update would show as more Invalid.
    let results = concurrent_checks(&s, &m.id, "entity-1", &wrong, NOW, 64).await;
    assert_eq!(results.len(), 64);
    let t = Tally::of(results);
    assert!(t.errors.is_empty(), "no call may fail: {t:?}");
    assert_eq!(
        (t.invalid, t.locked),
        (5, 59),
        "no failure goes uncounted: {t:?}"
    );

    // The lock is real: even the right code is refused until one period has passed...
    let right = code_at(&secret, &m.params, NOW);
    assert_eq!(
        s.check_and_record_mfa_code(&m.id, "entity-1", &right, NOW)
            .await
            .unwrap(),
        Outcome::Refused(Refusal::Locked)
    );
    // ...and then the code of that time is accepted.
    let after = NOW + m.params.period as i64;
    let right_after = code_at(&secret, &m.params, after);
    assert_eq!(
        s.check_and_record_mfa_code(&m.id, "entity-1", &right_after, after)
            .await
            .unwrap(),
        Outcome::Accepted {
            step: m.params.step(after)
        }
    );
    close(&s).await;
}

async fn case_concurrent_creates_one_name_one_winner<B: CoreBackend + ?Sized>(b: &B) {
    let s = open_core(b);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let s = Arc::clone(&s);
            let m = method(Some("contested"), 5);
            tokio::spawn(async move { (m.id.clone(), s.create_method(&m).await) })
        })
        .collect();
    let mut winners = Vec::new();
    let mut name_taken = 0;
    for t in tasks {
        match t.await.expect("create task panicked") {
            (id, Ok(())) => winners.push(id),
            (_, Err(StoreError::Conflict(Clash::NameTaken))) => name_taken += 1,
            (id, Err(e)) => panic!("create {id}: unexpected {e:?}"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one create wins the name: {winners:?}"
    );
    assert_eq!(name_taken, 15);
    let listed: Vec<_> = s
        .list_methods()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(listed, winners, "only the winner is stored");
    close(&s).await;
}

async fn case_user_device_cap_and_temp_tokens_die_with_the_user<B: CoreBackend + ?Sized>(b: &B) {
    let s = open_core(b);
    active_user(&s, "user-1", &device_secret(1), &[]).await;
    // Pending devices count toward the cap too: a caller cannot pile them up.
    for i in 1..MAX_USER_DEVICES {
        let name = format!("spare {i}");
        assert_eq!(
            s.setup_user_device(
                "user-1",
                Some(&name),
                &new_id(),
                &device_secret(2),
                &params(),
                NOW
            )
            .await
            .unwrap(),
            Setup::Pending,
            "{name}"
        );
    }
    assert_eq!(
        s.setup_user_device(
            "user-1",
            Some("one more"),
            &new_id(),
            &device_secret(3),
            &params(),
            NOW
        )
        .await
        .unwrap(),
        Setup::TooMany
    );
    // Replacing a pending device of the same name is no new device.
    assert_eq!(
        s.setup_user_device(
            "user-1",
            Some("spare 1"),
            &new_id(),
            &device_secret(3),
            &params(),
            NOW
        )
        .await
        .unwrap(),
        Setup::Pending
    );
    assert_eq!(user_devices(&s, "user-1").await.len(), MAX_USER_DEVICES);

    // A temp_token issued before the user is reset does not outlive the reset.
    assert!(s
        .create_temp_token("user-1", "temp-1", NOW, NOW + 300)
        .await
        .unwrap());
    assert_eq!(
        s.deactivate_user("user-1", None).await.unwrap(),
        MAX_USER_DEVICES
    );
    active_user(&s, "user-1", &device_secret(4), &[]).await;
    assert_eq!(s.get_temp_token_user("temp-1", NOW).await.unwrap(), None);
    close(&s).await;
}

async fn case_concurrent_logins_one_code_one_winner<B: CoreBackend + ?Sized>(b: &B) {
    let s = open_core(b);
    let secret = device_secret(1);
    active_user(&s, "user-1", &secret, &[]).await;
    const N: usize = 16;
    let temps = temp_tokens(&s, "user-1", N).await;
    let code = step_code(&secret, 1);

    let results = race(N, |i| {
        let (s, (temp, login), code) = (Arc::clone(&s), temps[i].clone(), code.clone());
        async move {
            s.check_user_code(
                Proof::Login {
                    temp_hash: &temp,
                    login: &login,
                },
                &code,
                NOW,
            )
            .await
        }
    })
    .await;
    let winner = one_winner(&results);

    // Only the winner logged in: its token is stored and its temp_token spent; the
    // losers' temp_tokens were refused, so they stay good.
    for (i, (temp, login)) in temps.iter().enumerate() {
        let stored = s.get_token(&login.hash, NOW).await.unwrap();
        let temp_user = s.get_temp_token_user(temp, NOW).await.unwrap();
        if i == winner {
            assert_eq!(stored.map(|t| t.entity_id), Some("user-1".to_string()));
            assert_eq!(temp_user, None, "the winner's temp_token is spent");
        } else {
            assert_eq!(stored, None, "loser {i} stored a login token");
            assert_eq!(temp_user, Some("user-1".to_string()));
        }
    }
    close(&s).await;
}

/// One temp_token, 16 logins at once with the right codes of three devices (three
/// fresh steps): the temp_token logs in once; every other call finds it spent, so
/// nothing of theirs is checked, spent or counted, and the other devices' codes stay
/// good.
async fn case_concurrent_logins_one_temp_token_one_winner<B: CoreBackend + ?Sized>(b: &B) {
    let s = open_core(b);
    let secrets = [device_secret(1), device_secret(2), device_secret(3)];
    active_user(&s, "user-1", &secrets[0], &[]).await;
    added_device(&s, "user-1", "second", &secrets[1]).await;
    added_device(&s, "user-1", "third", &secrets[2]).await;
    assert!(s
        .create_temp_token("user-1", "temp-shared", NOW, NOW + 300)
        .await
        .unwrap());
    const N: usize = 16;
    let results = race(N, |i| {
        let s = Arc::clone(&s);
        let code = step_code(&secrets[i % 3], 1);
        let login = token(&format!("login-{i}"), &format!("acc-login-{i}"), None, None);
        async move {
            let proof = Proof::Login {
                temp_hash: "temp-shared",
                login: &login,
            };
            s.check_user_code(proof, &code, NOW).await
        }
    })
    .await;
    let mut winners = Vec::new();
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(Check::Accepted) => winners.push(i),
            Ok(Check::BadTempToken) => {}
            other => panic!("call {i}: unexpected {other:?} in {results:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "one temp_token, one login: {results:?}");
    let mut stored = Vec::new();
    for i in 0..N {
        if let Some(t) = s.get_token(&format!("login-{i}"), NOW).await.unwrap() {
            stored.push(t.accessor);
        }
    }
    assert_eq!(stored, [format!("acc-login-{}", winners[0])]);
    // The other two devices' codes were never checked: they are good now.
    for (k, secret) in secrets.iter().enumerate() {
        if k == winners[0] % 3 {
            continue;
        }
        let owner = Proof::Owner {
            entity_id: "user-1",
        };
        let c = s.check_user_code(owner, &step_code(secret, 1), NOW).await;
        assert_eq!(c.unwrap(), Check::Accepted, "device {k}");
    }
    close(&s).await;
}

async fn case_concurrent_recovery_spends_one_winner<B: CoreBackend + ?Sized>(b: &B) {
    let s = open_core(b);
    let secret = device_secret(1);
    let (codes, hashes) = recovery_codes(1);
    active_user(&s, "user-1", &secret, &hashes).await;
    const N: usize = 16;
    let temps = temp_tokens(&s, "user-1", N).await;
    let selector = codes[0].selector.clone();

    // Every caller's argon2 check matched before any spend: only the store decides.
    let results = race(N, |i| {
        let (s, (temp, login), selector) = (Arc::clone(&s), temps[i].clone(), selector.clone());
        async move {
            s.spend_recovery_code(
                Proof::Login {
                    temp_hash: &temp,
                    login: &login,
                },
                &selector,
                true,
                NOW,
            )
            .await
        }
    })
    .await;
    one_winner(&results);

    assert_eq!(s.count_recovery_codes("user-1").await.unwrap(), 0);
    assert_eq!(
        s.get_recovery_hash("user-1", &selector).await.unwrap(),
        None
    );
    let mut logged_in = Vec::new();
    for (_, login) in &temps {
        if let Some(t) = s.get_token(&login.hash, NOW).await.unwrap() {
            assert_eq!(t.entity_id, "user-1");
            logged_in.push(t.hash);
        }
    }
    assert_eq!(
        logged_in.len(),
        1,
        "one recovery code logs in once: {logged_in:?}"
    );
    close(&s).await;
}

async fn case_concurrent_enrolments_one_secret<B: CoreBackend + ?Sized>(b: &B) {
    let s = open_core(b);
    let m = method(Some("enrol-race"), 1000);
    s.create_method(&m).await.unwrap();
    const N: usize = 16;
    let barrier = Arc::new(tokio::sync::Barrier::new(N));
    let tasks: Vec<_> = (0..N)
        .map(|_| {
            let (s, barrier, id) = (Arc::clone(&s), Arc::clone(&barrier), m.id.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                s.create_mfa_secret(&id, "entity-1", NOW).await
            })
        })
        .collect();
    let mut created = Vec::new();
    for t in tasks {
        match t.await.expect("enrol task panicked") {
            Ok(Enrollment::Created { secret, .. }) => created.push(secret),
            Ok(Enrollment::Exists { method }) => assert_eq!(method, m),
            Err(e) => panic!("enrolment: unexpected {e:?}"),
        }
    }
    assert_eq!(created.len(), 1, "exactly one enrolment creates a secret");
    // The one stored secret is the winner's: its code is the entity's.
    let code = code_at(&created[0], &m.params, NOW);
    assert_eq!(
        s.check_and_record_mfa_code(&m.id, "entity-1", &code, NOW)
            .await
            .unwrap(),
        Outcome::Accepted {
            step: m.params.step(NOW)
        }
    );
    // Deleting it leaves none behind: there was one.
    assert!(s.delete_mfa_secret(&m.id, "entity-1").await.unwrap());
    assert!(!s.delete_mfa_secret(&m.id, "entity-1").await.unwrap());
    close(&s).await;
}

async fn case_concurrent_setups_keep_the_device_cap<B: CoreBackend + ?Sized>(b: &B) {
    let s = open_core(b);
    active_user(&s, "user-1", &device_secret(1), &[]).await;
    const N: usize = 16;
    let barrier = Arc::new(tokio::sync::Barrier::new(N));
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let (s, barrier) = (Arc::clone(&s), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                let name = format!("spare {i}");
                s.setup_user_device(
                    "user-1",
                    Some(&name),
                    &new_id(),
                    &device_secret(2),
                    &params(),
                    NOW,
                )
                .await
            })
        })
        .collect();
    let (mut pending, mut too_many) = (0, 0);
    for t in tasks {
        match t.await.expect("setup task panicked") {
            Ok(Setup::Pending) => pending += 1,
            Ok(Setup::TooMany) => too_many += 1,
            other => panic!("setup: unexpected {other:?}"),
        }
    }
    // Each setup counts the others under the user's one order: none passes the cap.
    assert_eq!(
        (pending, too_many),
        (MAX_USER_DEVICES - 1, N + 1 - MAX_USER_DEVICES)
    );
    assert_eq!(user_devices(&s, "user-1").await.len(), MAX_USER_DEVICES);
    close(&s).await;
}

// ---------------------------------------------------------------------------------------
// Lifecycle: reopen, key, close
// ---------------------------------------------------------------------------------------

async fn case_replay_refused_after_reopen<B: CoreBackend + ?Sized>(b: &B) {
    let s = open_core(b);
    let m = method(Some("durable"), 1000);
    let secret = enrolled(&s, &m, "entity-1").await;
    let code = code_at(&secret, &m.params, NOW);
    assert_eq!(
        s.check_and_record_mfa_code(&m.id, "entity-1", &code, NOW)
            .await
            .unwrap(),
        Outcome::Accepted {
            step: m.params.step(NOW)
        }
    );
    close(&s).await;
    drop(s);

    // The last accepted step was durable: the same code is still a replay.
    let s = open_core(b);
    assert_eq!(
        s.check_and_record_mfa_code(&m.id, "entity-1", &code, NOW)
            .await
            .unwrap(),
        Outcome::Refused(Refusal::Replay)
    );
    let next = NOW + m.params.period as i64;
    assert_eq!(
        s.check_and_record_mfa_code(&m.id, "entity-1", &code_at(&secret, &m.params, next), next)
            .await
            .unwrap(),
        Outcome::Accepted {
            step: m.params.step(NOW) + 1
        }
    );
    close(&s).await;
}

async fn case_unlock_clears_locks_and_counts_lockouts<B: CoreBackend + ?Sized>(b: &B) {
    let s = open_core(b);
    assert_eq!(s.lockouts_begun(), Default::default());

    // An MFA secret: five failures lock it; an unlock lets the right code in at once.
    let m = method(Some("unlock"), 5);
    let secret = enrolled(&s, &m, "entity-1").await;
    let wrong = wrong_code(&secret, &m.params, m.skew, NOW);
    for _ in 0..5 {
        let o = s.check_and_record_mfa_code(&m.id, "entity-1", &wrong, NOW);
        assert_eq!(o.await.unwrap(), Outcome::Refused(Refusal::Invalid));
    }
    let right = code_at(&secret, &m.params, NOW);
    let check = || s.check_and_record_mfa_code(&m.id, "entity-1", &right, NOW);
    assert_eq!(check().await.unwrap(), Outcome::Refused(Refusal::Locked));
    // Refusals during a lock begin none.
    assert_eq!(s.lockouts_begun().vault_mfa, 1);
    let cleared = s.unlock_mfa_secret(&m.id, "entity-1").await.unwrap();
    assert_eq!(cleared.locked_until, Some(NOW + m.params.period as i64));
    assert_eq!(cleared.failures, 0, "a lock restarts the count");
    assert_eq!(
        check().await.unwrap(),
        Outcome::Accepted {
            step: m.params.step(NOW)
        }
    );
    // The replay record stays: an unlock does not make a used code good again.
    s.unlock_mfa_secret(&m.id, "entity-1").await.unwrap();
    assert_eq!(check().await.unwrap(), Outcome::Refused(Refusal::Replay));
    // Failures short of a lock are cleared too, and reported.
    let cleared = s.unlock_mfa_secret(&m.id, "entity-1").await.unwrap();
    assert_eq!((cleared.failures, cleared.locked_until), (1, None));
    for _ in 0..4 {
        let o = s.check_and_record_mfa_code(&m.id, "entity-1", &wrong, NOW);
        assert_eq!(o.await.unwrap(), Outcome::Refused(Refusal::Invalid));
    }
    assert_eq!(
        s.lockouts_begun().vault_mfa,
        1,
        "four failures after the unlock lock nothing"
    );
    assert_err!(
        s.unlock_mfa_secret(&m.id, "entity-2").await,
        StoreError::NotFound(Thing::MfaSecret)
    );
    assert_err!(
        s.unlock_mfa_secret(&new_id(), "entity-1").await,
        StoreError::NotFound(Thing::Method)
    );

    // A user: five failures lock them, even for the right code; an unlock clears it.
    assert_eq!(s.unlock_user("user-1").await.unwrap(), None, "no device");
    let main = device_secret(1);
    active_user(&s, "user-1", &main, &[]).await;
    let owner = || Proof::Owner {
        entity_id: "user-1",
    };
    let wrong = user_wrong_code(&[&main], NOW);
    for _ in 0..5 {
        let c = s.check_user_code(owner(), &wrong, NOW).await.unwrap();
        assert_eq!(c, Check::Refused(Refusal::Invalid));
    }
    let right = step_code(&main, 1);
    let c = s.check_user_code(owner(), &right, NOW).await.unwrap();
    assert_eq!(c, Check::Refused(Refusal::Locked));
    assert_eq!(s.lockouts_begun().user_totp, 1);
    let cleared = s.unlock_user("user-1").await.unwrap().expect("a device");
    assert_eq!(cleared.locked_until, Some(NOW + PERIOD));
    let c = s.check_user_code(owner(), &right, NOW).await.unwrap();
    assert_eq!(c, Check::Accepted, "in at once");
    let both = totpd::store::Lockouts {
        vault_mfa: 1,
        user_totp: 1,
        vault_totp: 0,
    };
    assert_eq!(s.lockouts_begun(), both);
    // Nothing to clear is not an error.
    let cleared = s.unlock_user("user-1").await.unwrap().expect("a device");
    assert_eq!((cleared.failures, cleared.locked_until), (0, None));
    close(&s).await;
}

async fn case_wrong_key_refused<B: CoreBackend + ?Sized>(b: &B) {
    let s = open_core(b);
    // Sealed data of both kinds, so the reopen below also shows the key still opens it.
    let m = method(Some("sealed"), 1000);
    let mfa_secret = enrolled(&s, &m, "entity-1").await;
    let info = agent_info("sealed", None, NOW);
    s.create_agent_secret("alice", &info, &[7u8; 20])
        .await
        .unwrap();
    close(&s).await;
    drop(s);

    match try_open_core(b, KEY + 1) {
        Err(StoreError::WrongKey) => {}
        Err(e) => panic!("expected WrongKey, got {e:?}"),
        Ok(other) => {
            tokio::task::block_in_place(|| other.close_store());
            panic!("a database created with one key opened with another");
        }
    }

    // The refused open left the database usable with its own key, data intact.
    let s = open_core(b);
    assert_eq!(s.get_method(&m.id).await.unwrap(), Some(m.clone()));
    assert_eq!(
        s.get_agent_secret("alice", &info.id).await.unwrap(),
        Some((vec![7u8; 20], info.params))
    );
    let code = code_at(&mfa_secret, &m.params, NOW);
    assert_eq!(
        s.check_and_record_mfa_code(&m.id, "entity-1", &code, NOW)
            .await
            .unwrap(),
        Outcome::Accepted {
            step: m.params.step(NOW)
        }
    );
    close(&s).await;
}

async fn case_closed_store_refuses<B: CoreBackend + ?Sized>(b: &B) {
    let s = open_core(b);
    s.put_policy("before", "{}", NOW).await.unwrap();
    close(&s).await;

    assert_err!(s.put_policy("late", "{}", NOW).await, StoreError::Closed);
    assert_err!(
        s.create_token(&token("h-late", "a-late", None, None)).await,
        StoreError::Closed
    );
    let t = policy_token("ratls", "before", NOW + 60);
    assert_err!(s.create_policy_token(&t).await, StoreError::Closed);
    // The trait says later calls fail with Closed: reads included.
    assert_err!(s.get_policy("before").await, StoreError::Closed);
    assert_err!(s.get_token("h-late", NOW).await, StoreError::Closed);
    drop(s);

    // Nothing was written after the close.
    let s = open_core(b);
    assert_eq!(s.list_policies().await.unwrap(), vec!["before"]);
    assert_eq!(s.get_token("h-late", NOW).await.unwrap(), None);
    assert!(s.list_policy_tokens("ratls").await.unwrap().is_empty());
    close(&s).await;
}

async fn case_closed_store_refuses_mfa_writes<B: CoreBackend + ?Sized>(b: &B) {
    let s = open_core(b);
    close(&s).await;
    assert_err!(
        s.create_method(&method(Some("late"), 5)).await,
        StoreError::Closed
    );
    drop(s);
    let s = open_core(b);
    assert_eq!(s.list_methods().await.unwrap(), Vec::<MethodRecord>::new());
    close(&s).await;
}

/// The key check alone (a database with no other sealed value): another key is
/// `WrongKey`, a ring without the key it was sealed with is `MissingKey` naming the id,
/// a ring that holds that key among others opens it, and refusals change nothing.
async fn case_key_check_refuses_other_keys<B: CoreBackend + ?Sized>(b: &B) {
    let s = open_core(b);
    s.put_policy("kept", "{}", NOW).await.unwrap();
    close(&s).await;
    drop(s);

    let refused = |r: Result<Arc<B::Store>, StoreError>| match r {
        Err(e) => e,
        Ok(s) => {
            tokio::task::block_in_place(|| s.close_store());
            panic!("a database created with key {KEY} opened without it");
        }
    };
    let e = refused(try_open_core(b, KEY + 1));
    assert!(matches!(e, StoreError::WrongKey), "{e:?}");
    let ring = key_ring(&[2], 2);
    let e = refused(tokio::task::block_in_place(|| b.open_core_ring(&ring)));
    assert!(matches!(e, StoreError::MissingKey(KEY)), "{e:?}");
    assert!(
        e.to_string().contains(&format!("key id {KEY}")),
        "the message names the key id: {e}"
    );

    // A ring holding the key (not as its current one) opens it; so does the key alone.
    let ring = key_ring(&[KEY, 2], 2);
    let s = tokio::task::block_in_place(|| b.open_core_ring(&ring)).expect("the ring opens it");
    assert_eq!(s.get_policy("kept").await.unwrap(), Some("{}".to_string()));
    close(&s).await;
    let s = open_core(b);
    assert_eq!(s.get_policy("kept").await.unwrap(), Some("{}".to_string()));
    close(&s).await;
}

// ---------------------------------------------------------------------------------------
// Operations: status, backups
// ---------------------------------------------------------------------------------------

async fn case_ops_rows_sizes_and_writer(b: &dyn Backend) {
    let s = open(b);
    s.put_policy("p1", "{}", NOW).await.unwrap();
    s.put_policy("p2", "{}", NOW).await.unwrap();
    s.create_token(&token("h1", "a1", None, None))
        .await
        .unwrap();
    s.create_agent_secret("alice", &agent_info("x", None, NOW), &[1u8; 20])
        .await
        .unwrap();
    let rows: std::collections::BTreeMap<String, u64> =
        s.count_rows().await.unwrap().into_iter().collect();
    assert_eq!(rows.get("policies"), Some(&2), "{rows:?}");
    assert_eq!(rows.get("tokens"), Some(&1), "{rows:?}");
    assert_eq!(rows.get("agent_secrets"), Some(&1), "{rows:?}");
    assert_eq!(rows.get("mfa_methods"), Some(&0), "{rows:?}");
    let names: Vec<&String> = rows.keys().collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "sorted by table name");

    assert!(s.database_bytes() > 0);
    assert_eq!(s.seal_key_id(), totpd::store::seal::KEY_ID);
    // Idle: nothing waits, and every batch holds at least one operation.
    let w = s.writer_stats();
    assert_eq!(w.queue_depth, 0);
    assert!(w.batch_sizes.sum >= w.batch_sizes.count(), "{w:?}");
    assert_eq!(w.batch_sizes.counts.len(), w.batch_sizes.bounds.len() + 1);
    close(&s).await;
}

async fn case_ops_backup_times(b: &dyn Backend) {
    let s = open(b);
    assert_eq!(s.last_backup().await.unwrap(), None);
    s.record_backup(NOW).await.unwrap();
    s.record_backup(NOW + 60).await.unwrap();
    assert_eq!(s.last_backup().await.unwrap(), Some(NOW + 60));
    close(&s).await;
    drop(s);
    let s = open(b);
    assert_eq!(s.last_backup().await.unwrap(), Some(NOW + 60), "durable");
    close(&s).await;
}

async fn case_ops_backup_under_writes_restores_as_of_its_moment(b: &dyn Backend) {
    let s = open(b);
    let m = method(Some("backed-up"), 1000);
    let secret = enrolled(&s, &m, "entity-1").await;
    let code = code_at(&secret, &m.params, NOW);
    assert_eq!(
        s.check_and_record_mfa_code(&m.id, "entity-1", &code, NOW)
            .await
            .unwrap(),
        Outcome::Accepted {
            step: m.params.step(NOW)
        }
    );
    s.put_policy("before", "{}", NOW).await.unwrap();

    // 64 writes beside the copy: every one succeeds; the copy holds those committed before it.
    let mut writes = Vec::new();
    for i in 0..64 {
        let s = s.clone();
        writes.push(tokio::spawn(async move {
            s.put_policy(&format!("during-{i:02}"), "{}", NOW).await
        }));
    }
    let copy = s.backup_database().await.unwrap();
    for w in writes {
        w.await.unwrap().unwrap();
    }
    assert!(copy.bytes > 0);
    assert_eq!(copy.file.metadata().unwrap().len(), copy.bytes);
    s.put_policy("after", "{}", NOW).await.unwrap();
    close(&s).await;

    // Another key does not restore it.
    match tokio::task::block_in_place(|| b.restore(&copy.file, KEY + 1)) {
        Err(StoreError::WrongKey) => {}
        Err(e) => panic!("expected WrongKey, got {e:?}"),
        Ok(_) => panic!("a copy restored with another key"),
    }
    let restored = tokio::task::block_in_place(|| b.restore(&copy.file, KEY)).unwrap();
    let r = open(restored.as_ref());
    let policies = r.list_policies().await.unwrap();
    assert!(policies.contains(&"before".to_string()), "{policies:?}");
    assert!(!policies.contains(&"after".to_string()), "{policies:?}");
    let during: Vec<&String> = policies
        .iter()
        .filter(|p| p.starts_with("during-"))
        .collect();
    assert!(during.len() <= 64);
    // The secret opens with the key, and its spent step is still spent.
    assert_eq!(
        r.check_and_record_mfa_code(&m.id, "entity-1", &code, NOW)
            .await
            .unwrap(),
        Outcome::Refused(Refusal::Replay)
    );
    let next = NOW + m.params.period as i64;
    assert_eq!(
        r.check_and_record_mfa_code(&m.id, "entity-1", &code_at(&secret, &m.params, next), next)
            .await
            .unwrap(),
        Outcome::Accepted {
            step: m.params.step(NOW) + 1
        }
    );
    close(&r).await;
}

// ---------------------------------------------------------------------------------------
// Sealing keys: status and rotation
// ---------------------------------------------------------------------------------------

/// A key ring with the key `[id; 32]` under each of `ids`, `current` current. Key id 1 is
/// the suite's `KEY`, so the databases the other cases make open with any ring holding 1.
fn key_ring(ids: &[u8], current: u8) -> KeyRing {
    let mut text = String::from("totpd-keyring v1\n");
    for id in ids {
        text.push_str(&format!(
            "key {id} {}{}\n",
            format!("{id:02x}").repeat(32),
            if *id == current { " current" } else { "" }
        ));
    }
    KeyRing::parse(text.as_bytes()).expect("a valid ring")
}

fn try_open_ring(b: &dyn Backend, ring: &KeyRing) -> Result<Arc<dyn Store>, StoreError> {
    tokio::task::block_in_place(|| b.open_ring(ring))
}

/// Why opening with `ring` was refused (a store that opened is closed, and panics).
fn refused_ring(b: &dyn Backend, ring: &KeyRing) -> StoreError {
    match try_open_ring(b, ring) {
        Err(e) => e,
        Ok(s) => {
            tokio::task::block_in_place(|| s.close());
            panic!("opened with {ring:?}");
        }
    }
}

/// Waits (at most 60 s) until no rotation runs, and returns the status then.
async fn rotated(s: &Arc<dyn Store>) -> totpd::store::KeyStatus {
    for _ in 0..6000 {
        let st = s.key_status().await.unwrap();
        if !st.rotation.running {
            return st;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the key rotation did not end within 60 s");
}

async fn case_key_status_and_a_ring_missing_a_key_in_use(b: &dyn Backend) {
    let s = open(b);
    // A fresh database: the key check is its one sealed value.
    let st = s.key_status().await.unwrap();
    assert_eq!((st.current, st.ring.clone()), (KEY, vec![KEY]));
    assert_eq!(st.sealed.get(&KEY), Some(&1));
    assert_eq!((st.old_values(), st.unused()), (0, vec![]));
    // Nothing to re-seal: nothing starts.
    let st = s.start_key_rotation().await.unwrap();
    assert!(!st.rotation.running, "{st:?}");
    let info = agent_info("k", None, NOW);
    s.create_agent_secret("alice", &info, &[5u8; 20])
        .await
        .unwrap();
    assert_eq!(s.key_status().await.unwrap().sealed.get(&KEY), Some(&2));
    close(&s).await;

    // A new current key: new values use it at once, old ones still open.
    let s = try_open_ring(b, &key_ring(&[1, 2], 2)).unwrap();
    let st = s.key_status().await.unwrap();
    assert_eq!(
        (st.current, st.ring.clone(), st.old_values()),
        (2, vec![1, 2], 2)
    );
    let newer = agent_info("k2", None, NOW);
    s.create_agent_secret("alice", &newer, &[6u8; 20])
        .await
        .unwrap();
    let st = s.key_status().await.unwrap();
    assert_eq!(st.sealed.get(&1), Some(&2));
    assert_eq!(st.sealed.get(&2), Some(&1));
    assert_eq!(s.sealed_counts(), st.sealed, "the last count is kept");
    assert_eq!(
        s.get_agent_secret("alice", &info.id)
            .await
            .unwrap()
            .unwrap()
            .0,
        vec![5u8; 20]
    );
    close(&s).await;

    // Values under keys 1 and 2: a ring without either is refused, naming the id.
    assert!(matches!(
        refused_ring(b, &key_ring(&[2], 2)),
        StoreError::MissingKey(1)
    ));
    assert!(matches!(
        refused_ring(b, &key_ring(&[1], 1)),
        StoreError::MissingKey(2)
    ));
    // A ring whose key 2 is another key does not open them.
    let mut other = String::from("totpd-keyring v1\n");
    other.push_str(&format!("key 1 {}\n", "01".repeat(32)));
    other.push_str(&format!("key 2 {} current\n", "77".repeat(32)));
    assert!(matches!(
        refused_ring(b, &KeyRing::parse(other.as_bytes()).unwrap()),
        StoreError::WrongKey
    ));
    // The refusals changed nothing.
    let s = try_open_ring(b, &key_ring(&[1, 2], 1)).unwrap();
    assert_eq!(
        s.get_agent_secret("alice", &newer.id)
            .await
            .unwrap()
            .unwrap()
            .0,
        vec![6u8; 20]
    );
    close(&s).await;
}

async fn case_key_rotation_reseals_every_value_beside_validations(b: &dyn Backend) {
    const ENTITIES: usize = 8;
    const AGENT: usize = 300;
    let s = open(b);
    let m = method(Some("rotation"), 1000);
    s.create_method(&m).await.unwrap();
    let mut mfa = Vec::new();
    for i in 0..ENTITIES {
        let e = format!("entity-{i}");
        match s.create_mfa_secret(&m.id, &e, NOW).await.unwrap() {
            Enrollment::Created { secret, .. } => mfa.push((e, secret)),
            other => panic!("{other:?}"),
        }
    }
    // Accepted before the rotation: the replay state must survive it.
    for (e, secret) in &mfa {
        let code = code_at(secret, &m.params, NOW);
        assert!(matches!(
            s.check_and_record_mfa_code(&m.id, e, &code, NOW)
                .await
                .unwrap(),
            Outcome::Accepted { .. }
        ));
    }
    let user_secret = vec![3u8; 20];
    active_user(&s, "user-1", &user_secret, &[]).await;
    let mut agent = Vec::new();
    let tasks: Vec<_> = (0..AGENT)
        .map(|i| {
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                let info = agent_info(&format!("a{i}"), None, NOW);
                let seed = format!("seed-{i:04}-0123456789").into_bytes();
                s.create_agent_secret("alice", &info, &seed).await.unwrap();
                (info, seed)
            })
        })
        .collect();
    for t in tasks {
        agent.push(t.await.unwrap());
    }
    let total = s.key_status().await.unwrap().sealed[&KEY];
    assert_eq!(
        total as usize,
        1 + ENTITIES + 1 + AGENT,
        "key check, MFA, device, agent"
    );
    close(&s).await;

    let s = try_open_ring(b, &key_ring(&[1, 2], 2)).unwrap();
    let st = s.start_key_rotation().await.unwrap();
    assert_eq!((st.current, st.old_values()), (2, total));
    // Meanwhile: validations of every MFA secret at later steps, and deletions.
    let checks: Vec<_> = mfa
        .iter()
        .cloned()
        .map(|(e, secret)| {
            let (s, m) = (Arc::clone(&s), m.clone());
            tokio::spawn(async move {
                for k in 1..=10i64 {
                    let now = NOW + k * 30;
                    let code = code_at(&secret, &m.params, now);
                    let out = s.check_and_record_mfa_code(&m.id, &e, &code, now).await;
                    assert_eq!(
                        out.unwrap(),
                        Outcome::Accepted {
                            step: m.params.step(now)
                        }
                    );
                }
            })
        })
        .collect();
    let gone: Vec<_> = agent.drain(..20).collect();
    for (info, _) in &gone {
        assert!(s.delete_agent_secret("alice", &info.id).await.unwrap());
    }
    for t in checks {
        t.await.unwrap();
    }
    let st = rotated(&s).await;
    assert_eq!(st.rotation.error, None);
    assert_eq!(st.old_values(), 0, "{st:?}");
    assert_eq!(st.sealed.get(&1), None);
    assert_eq!(st.sealed.get(&2), Some(&(total - gone.len() as u64)));
    assert_eq!(st.unused(), vec![1]);
    assert!(st.rotation.resealed <= total);
    close(&s).await;

    // Key 1 may leave the ring: everything opens with key 2 alone, as it was.
    let s = try_open_ring(b, &key_ring(&[2], 2)).unwrap();
    for (info, seed) in &agent {
        assert_eq!(
            s.get_agent_secret("alice", &info.id).await.unwrap(),
            Some((seed.clone(), info.params))
        );
    }
    for (info, _) in &gone {
        assert_eq!(s.get_agent_secret("alice", &info.id).await.unwrap(), None);
    }
    for (e, secret) in &mfa {
        // The last accepted step stayed accepted; the next one is good.
        let last = NOW + 10 * 30;
        let code = code_at(secret, &m.params, last);
        assert_eq!(
            s.check_and_record_mfa_code(&m.id, e, &code, last)
                .await
                .unwrap(),
            Outcome::Refused(Refusal::Replay)
        );
        let next = last + 30;
        let code = code_at(secret, &m.params, next);
        assert!(matches!(
            s.check_and_record_mfa_code(&m.id, e, &code, next)
                .await
                .unwrap(),
            Outcome::Accepted { .. }
        ));
    }
    assert_eq!(s.key_status().await.unwrap().sealed.get(&1), None);
    close(&s).await;
}

// ---------------------------------------------------------------------------------------
// Export and import
// ---------------------------------------------------------------------------------------

use totpd::store::{
    ExportScope, Holder, ImportRefusal, Imported, MovedRecoveryCode, MovedSecret, Transfer,
};

/// The one secret of `t` whose holder is `h`.
fn moved<'a>(t: &'a Transfer, h: &Holder) -> &'a MovedSecret {
    let found: Vec<&MovedSecret> = t.secrets.iter().filter(|s| &s.holder == h).collect();
    assert_eq!(found.len(), 1, "{h:?} in {:?}", t.secrets);
    found[0]
}

/// The holder of an engine key, as an export names it.
fn engine_holder(k: &EngineKeyInfo) -> Holder {
    Holder::VaultTotp {
        mount: k.mount.clone(),
        name: k.name.clone(),
        issuer: k.issuer.clone(),
        account_name: k.account_name.clone(),
        skew: k.skew,
    }
}

/// Export opens every secret of every surface with its holder, parameters and last
/// accepted step, for one entity or for all (engine keys, which belong to mounts, only
/// for all); an import recreates what is missing (the same codes, a spent step still
/// spent, devices active or pending as they were, the recovery codes of a user it makes
/// active, engine keys in their mounts), skips what is there, and refuses what clashes,
/// entry by entry, in one write.
async fn case_transfer_export_and_import(b: &dyn Backend) {
    let s = open(b);
    let p = params();
    // A method with alice and bob enrolled (alice spends NOW's step), and one unused.
    let m = method(Some("transfer"), 5);
    let alice_mfa = enrolled(&s, &m, "alice").await;
    let bob_mfa = match s.create_mfa_secret(&m.id, "bob", NOW).await {
        Ok(Enrollment::Created { secret, .. }) => secret,
        other => panic!("{other:?}"),
    };
    let spent = code_at(&alice_mfa, &p, NOW);
    assert!(matches!(
        s.check_and_record_mfa_code(&m.id, "alice", &spent, NOW)
            .await,
        Ok(Outcome::Accepted { .. })
    ));
    let unused = method(Some("unused"), 3);
    s.create_method(&unused).await.unwrap();
    // Agent secrets of alice and bob.
    let ci = agent_info("ci-bot", Some("GitHub"), NOW);
    s.create_agent_secret("alice", &ci, &[7; 20]).await.unwrap();
    let deploy = agent_info("deploy", None, NOW + 1);
    s.create_agent_secret("bob", &deploy, &[8; 16])
        .await
        .unwrap();
    // alice logs in with an active device (NOW's step used) and has a pending one.
    let (_codes, hashes) = recovery_codes(2);
    active_user(&s, "alice", &device_secret(1), &hashes).await;
    assert_eq!(
        s.setup_user_device(
            "alice",
            Some("spare"),
            &new_id(),
            &device_secret(2),
            &p,
            NOW
        )
        .await
        .unwrap(),
        Setup::Pending
    );
    // Two engine keys, of two mounts: one (skew 1, SHA256, 8 digits) spends NOW's step;
    // the other, of a short key, has an empty issuer and account name.
    let deploy_key = EngineKeyInfo {
        skew: 1,
        params: Params::new("SHA256", 8, 30).unwrap(),
        created_at: NOW - 5,
        ..engine_key("totp", "deploy")
    };
    let deploy_seed = [9u8; 20];
    s.put_engine_key(&deploy_key, &deploy_seed).await.unwrap();
    let ci_key = EngineKeyInfo {
        issuer: String::new(),
        account_name: String::new(),
        ..engine_key("totp-prod", "ci")
    };
    let ci_seed = [5u8; 5];
    s.put_engine_key(&ci_key, &ci_seed).await.unwrap();
    let engine_spent = code_at(&deploy_seed, &deploy_key.params, NOW);
    assert!(matches!(
        engine_check(&s, &deploy_key, &engine_spent, NOW).await,
        EngineCheck::Checked(Outcome::Accepted { .. })
    ));

    // alice's export: her secrets and her enrolments' method, opened.
    let t = s
        .export_secrets(ExportScope::Entity("alice"))
        .await
        .unwrap();
    assert_eq!(t.methods, vec![m.clone()]);
    assert_eq!(t.secrets.len(), 4, "{:?}", t.secrets);
    let mfa_holder = |e: &str| Holder::VaultMfa {
        method_id: m.id.clone(),
        entity_id: e.into(),
    };
    let s_mfa = moved(&t, &mfa_holder("alice"));
    assert_eq!(s_mfa.secret, alice_mfa);
    assert_eq!((s_mfa.params, s_mfa.last_step), (p, Some(p.step(NOW))));
    let ci_holder = Holder::Agent {
        entity_id: "alice".into(),
        id: Some(ci.id.clone()),
        label: "ci-bot".into(),
        issuer: Some("GitHub".into()),
    };
    let s_ci = moved(&t, &ci_holder);
    assert_eq!(
        (s_ci.secret.as_slice(), s_ci.params),
        (&[7u8; 20][..], ci.params)
    );
    assert_eq!((s_ci.last_step, s_ci.created_at), (None, NOW));
    let device = |name: &str, active: bool| Holder::UserDevice {
        entity_id: "alice".into(),
        name: name.into(),
        active,
    };
    let s_dev = moved(&t, &device("default", true));
    assert_eq!(s_dev.secret, device_secret(1));
    assert_eq!(s_dev.last_step, Some(p.step(NOW)));
    assert_eq!(moved(&t, &device("spare", false)).last_step, None);
    let mut want_codes: Vec<MovedRecoveryCode> = hashes
        .iter()
        .map(|h| MovedRecoveryCode {
            entity_id: "alice".into(),
            code: h.clone(),
        })
        .collect();
    want_codes.sort_by(|a, b| a.code.selector.cmp(&b.code.selector));
    assert_eq!(t.recovery_codes, want_codes);
    assert!(
        !t.secrets
            .iter()
            .any(|s| matches!(s.holder, Holder::VaultTotp { .. })),
        "an entity's export holds no engine key"
    );
    // Nobody's export is empty; bob's holds no login device and no recovery code.
    assert_eq!(
        s.export_secrets(ExportScope::Entity("nobody"))
            .await
            .unwrap(),
        Transfer::default()
    );
    let bob = s.export_secrets(ExportScope::Entity("bob")).await.unwrap();
    assert_eq!((bob.methods.len(), bob.secrets.len()), (1, 2));
    assert!(bob.recovery_codes.is_empty());

    // Everything: every method, used or not.
    let all = s.export_secrets(ExportScope::All).await.unwrap();
    let mut ids: Vec<&str> = all.methods.iter().map(|m| m.id.as_str()).collect();
    ids.sort();
    let mut want = vec![m.id.as_str(), unused.id.as_str()];
    want.sort();
    assert_eq!(ids, want);
    assert_eq!(all.secrets.len(), 8);
    // The engine keys, opened, last in mount and name order.
    let engine: Vec<&MovedSecret> = all
        .secrets
        .iter()
        .filter(|s| matches!(s.holder, Holder::VaultTotp { .. }))
        .collect();
    assert_eq!(
        engine.iter().map(|s| &s.holder).collect::<Vec<_>>(),
        vec![&engine_holder(&deploy_key), &engine_holder(&ci_key)]
    );
    assert!(all.secrets[6..]
        .iter()
        .all(|s| matches!(s.holder, Holder::VaultTotp { .. })));
    assert_eq!(
        (
            engine[0].secret.as_slice(),
            engine[0].params,
            engine[0].last_step,
            engine[0].created_at
        ),
        (
            &deploy_seed[..],
            deploy_key.params,
            Some(deploy_key.params.step(NOW)),
            NOW - 5
        )
    );
    assert_eq!(
        (
            engine[1].secret.as_slice(),
            engine[1].params,
            engine[1].last_step,
            engine[1].created_at
        ),
        (&ci_seed[..], ci_key.params, None, NOW)
    );

    // Imported where it all is: nothing changes.
    let r = s.import_secrets(&all, NOW).await.unwrap();
    assert!(r.methods.iter().all(|o| *o == Imported::Exists), "{r:?}");
    assert!(
        r.secrets.iter().all(|(o, _)| *o == Imported::Exists),
        "{r:?}"
    );
    assert_eq!(
        r.recovery_codes,
        vec![("alice".to_string(), Imported::Exists)]
    );

    // Gone, then imported: back as they were.
    s.delete_method(&m.id).await.unwrap();
    s.delete_method(&unused.id).await.unwrap();
    assert!(s.delete_agent_secret("alice", &ci.id).await.unwrap());
    assert!(s.delete_agent_secret("bob", &deploy.id).await.unwrap());
    assert_eq!(s.deactivate_user("alice", None).await.unwrap(), 2);
    assert!(s.delete_engine_key("totp", "deploy").await.unwrap());
    assert!(s.delete_engine_key("totp-prod", "ci").await.unwrap());
    // As fresh as a new store: nothing left to export.
    assert_eq!(
        s.export_secrets(ExportScope::All).await.unwrap(),
        Transfer::default()
    );
    let r = s.import_secrets(&all, NOW).await.unwrap();
    assert!(r.methods.iter().all(|o| *o == Imported::Created), "{r:?}");
    assert!(
        r.secrets.iter().all(|(o, _)| *o == Imported::Created),
        "{r:?}"
    );
    assert_eq!(
        r.recovery_codes,
        vec![("alice".to_string(), Imported::Created)]
    );
    let back = s.export_secrets(ExportScope::All).await.unwrap();
    assert_eq!(back.methods.len(), 2);
    for sec in &all.secrets {
        assert!(
            moved(&back, &sec.holder) == sec,
            "{sec:?} came back otherwise"
        );
    }
    assert_eq!(back.recovery_codes, all.recovery_codes);
    // The spent step is still spent; the next is good. bob's is untouched.
    assert_eq!(
        s.check_and_record_mfa_code(&m.id, "alice", &spent, NOW)
            .await
            .unwrap(),
        Outcome::Refused(Refusal::Replay)
    );
    let next = code_at(&alice_mfa, &p, NOW + PERIOD);
    assert!(matches!(
        s.check_and_record_mfa_code(&m.id, "alice", &next, NOW + PERIOD)
            .await,
        Ok(Outcome::Accepted { .. })
    ));
    assert!(matches!(
        s.check_and_record_mfa_code(&m.id, "bob", &code_at(&bob_mfa, &p, NOW), NOW)
            .await,
        Ok(Outcome::Accepted { .. })
    ));
    assert_eq!(
        s.get_agent_secret("alice", &ci.id).await.unwrap(),
        Some((vec![7; 20], ci.params))
    );
    assert_eq!(
        s.get_agent_secret("bob", &deploy.id).await.unwrap(),
        Some((vec![8; 16], deploy.params))
    );
    let alice = Proof::Owner { entity_id: "alice" };
    assert_eq!(
        s.check_user_code(alice, &step_code(&device_secret(1), 0), NOW)
            .await
            .unwrap(),
        Check::Refused(Refusal::Replay)
    );
    assert_eq!(
        s.check_user_code(alice, &step_code(&device_secret(1), 1), NOW + PERIOD)
            .await
            .unwrap(),
        Check::Accepted
    );
    let devices: Vec<(String, bool)> = user_devices(&s, "alice")
        .await
        .into_iter()
        .map(|(n, a, _)| (n, a))
        .collect();
    assert_eq!(
        devices,
        vec![("default".to_string(), true), ("spare".to_string(), false)]
    );
    assert_eq!(s.count_recovery_codes("alice").await.unwrap(), 2);
    // The engine keys are back in their mounts as they were, with the same codes; the
    // code spent before the export is refused (its step is spent), the next one is good.
    assert_eq!(
        s.get_engine_key("totp", "deploy").await.unwrap(),
        Some(deploy_key.clone())
    );
    assert_eq!(
        s.open_engine_key("totp-prod", "ci").await.unwrap(),
        Some((ci_key.clone(), ci_seed.to_vec()))
    );
    assert_eq!(s.list_engine_keys("totp").await.unwrap(), vec!["deploy"]);
    let (_, seed) = s
        .open_engine_key("totp", "deploy")
        .await
        .unwrap()
        .expect("the imported key");
    assert_eq!(
        code_at(&seed, &deploy_key.params, NOW),
        engine_spent,
        "the same codes"
    );
    assert!(matches!(
        engine_check(&s, &deploy_key, &engine_spent, NOW).await,
        EngineCheck::Repeat | EngineCheck::Checked(Outcome::Refused(Refusal::Replay))
    ));
    let engine_next = code_at(&deploy_seed, &deploy_key.params, NOW + PERIOD);
    assert!(matches!(
        engine_check(&s, &deploy_key, &engine_next, NOW + PERIOD).await,
        EngineCheck::Checked(Outcome::Accepted { .. })
    ));
    assert!(matches!(
        engine_check(&s, &ci_key, &code_at(&ci_seed, &ci_key.params, NOW), NOW).await,
        EngineCheck::Checked(Outcome::Accepted { .. })
    ));
    // Imported again: every entry is there, nothing is overwritten.
    let r = s.import_secrets(&all, NOW).await.unwrap();
    assert!(
        r.secrets.iter().all(|(o, _)| *o == Imported::Exists),
        "{r:?}"
    );
    assert!(matches!(
        engine_check(&s, &deploy_key, &engine_next, NOW + PERIOD).await,
        EngineCheck::Repeat | EngineCheck::Checked(Outcome::Refused(Refusal::Replay))
    ));

    // Clashes are refused entry by entry, and the rest goes in.
    let mut changed = m.clone();
    changed.skew = 1;
    s.update_method(&changed).await.unwrap();
    let twin = MethodRecord {
        id: new_id(),
        ..m.clone()
    };
    let stranger = mfa_holder("carol");
    let orphan = Holder::VaultMfa {
        method_id: new_id(),
        entity_id: "carol".into(),
    };
    let with = |holder: Holder| MovedSecret {
        holder,
        ..s_ci.clone()
    };
    let taken = with(Holder::Agent {
        entity_id: "carol".into(),
        id: Some(ci.id.clone()),
        label: "x".into(),
        issuer: None,
    });
    let fresh = with(Holder::Agent {
        entity_id: "carol".into(),
        id: None,
        label: "fresh".into(),
        issuer: None,
    });
    let pending = with(Holder::UserDevice {
        entity_id: "erin".into(),
        name: "phone".into(),
        active: false,
    });
    // Another key under a name the mount holds: left as it is. A name of another mount
    // (served or not, the store keeps it) goes in.
    let same_name = with(Holder::VaultTotp {
        mount: "totp".into(),
        name: "deploy".into(),
        issuer: "Other".into(),
        account_name: "someone else".into(),
        skew: 0,
    });
    let other_mount = EngineKeyInfo {
        params: s_ci.params,
        ..engine_key("elsewhere", "deploy")
    };
    let clash = Transfer {
        methods: vec![m.clone(), twin],
        secrets: vec![
            with(stranger),
            with(orphan),
            taken,
            fresh.clone(),
            fresh.clone(),
            pending,
            same_name,
            with(engine_holder(&other_mount)),
        ],
        recovery_codes: vec![MovedRecoveryCode {
            entity_id: "erin".into(),
            code: hashes[0].clone(),
        }],
    };
    let r = s.import_secrets(&clash, NOW).await.unwrap();
    assert_eq!(
        r.methods,
        vec![
            Imported::Refused(ImportRefusal::MethodDiffers),
            Imported::Refused(ImportRefusal::MethodNameTaken)
        ]
    );
    let outcomes: Vec<Imported> = r.secrets.iter().map(|(o, _)| *o).collect();
    assert_eq!(
        outcomes,
        vec![
            Imported::Refused(ImportRefusal::MethodRefused),
            Imported::Refused(ImportRefusal::NoMethod),
            Imported::Refused(ImportRefusal::IdTaken),
            Imported::Created,
            // The same seed, label and issuer again: there already, under the id just made.
            Imported::Exists,
            Imported::Created,
            Imported::Exists,
            Imported::Created,
        ]
    );
    assert_eq!((&r.secrets[6].1, &r.secrets[7].1), (&None, &None));
    assert_eq!(
        s.open_engine_key("totp", "deploy").await.unwrap(),
        Some((deploy_key.clone(), deploy_seed.to_vec()))
    );
    assert_eq!(
        s.open_engine_key("elsewhere", "deploy").await.unwrap(),
        Some((other_mount, vec![7; 20]))
    );
    let fresh_id = r.secrets[3].1.clone().expect("the new agent secret's id");
    assert_eq!(r.secrets[4].1.as_deref(), Some(fresh_id.as_str()));
    assert_eq!(
        s.get_agent_secret("carol", &fresh_id).await.unwrap(),
        Some((vec![7; 20], ci.params))
    );
    assert_eq!(
        r.recovery_codes,
        vec![(
            "erin".to_string(),
            Imported::Refused(ImportRefusal::NotActive)
        )]
    );
    assert_eq!(s.get_method(&m.id).await.unwrap(), Some(changed));
    assert_eq!(s.list_methods().await.unwrap().len(), 2);
    assert_eq!(s.count_recovery_codes("erin").await.unwrap(), 0);

    // A user with every device a user may have gets no more.
    let full = with(Holder::UserDevice {
        entity_id: "erin".into(),
        name: "one too many".into(),
        active: true,
    });
    for i in 1..MAX_USER_DEVICES {
        let name = format!("d{i}");
        s.setup_user_device("erin", Some(&name), &new_id(), &device_secret(3), &p, NOW)
            .await
            .unwrap();
    }
    let r = s
        .import_secrets(
            &Transfer {
                secrets: vec![full],
                ..Transfer::default()
            },
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(
        r.secrets,
        vec![(Imported::Refused(ImportRefusal::TooManyDevices), None)]
    );

    // Imports racing puts of one engine key name: every call succeeds, and the name
    // ends with one key, a put's or the import's.
    let racing = engine_key("totp", "race");
    let import = Transfer {
        secrets: vec![MovedSecret {
            holder: engine_holder(&racing),
            secret: vec![1; 20],
            params: racing.params,
            last_step: None,
            created_at: NOW,
        }],
        ..Transfer::default()
    };
    let mut calls = Vec::new();
    for i in 0..16u8 {
        let (s, k, t) = (s.clone(), racing.clone(), import.clone());
        calls.push(tokio::spawn(async move {
            if i % 4 == 0 {
                let r = s.import_secrets(&t, NOW).await?;
                assert_eq!(r.secrets.len(), 1);
                assert_ne!(r.secrets[0].0, Imported::Refused(ImportRefusal::IdTaken));
            } else {
                s.put_engine_key(&k, &[i + 2; 20]).await?;
            }
            Ok::<(), StoreError>(())
        }));
    }
    for c in calls {
        c.await
            .expect("no panic")
            .expect("every import and put succeeds");
    }
    assert_eq!(
        s.list_engine_keys("totp").await.unwrap(),
        vec!["deploy", "race"]
    );
    let (info, seed) = s.open_engine_key("totp", "race").await.unwrap().unwrap();
    assert_eq!(info, racing);
    assert!(
        seed == [1; 20] || (3..18).any(|b| seed == [b; 20]),
        "{seed:?}"
    );
    close(&s).await;
}

// ---------------------------------------------------------------------------------------
// PostgreSQL's own cases: one database shared by several stores (daemons), and faults
// ---------------------------------------------------------------------------------------

/// Options with small bounds, so the fault cases run in seconds.
fn pg_small_options(url: &str) -> PgOptions {
    let mut opts = PgOptions::new(url).expect("a valid URL");
    opts.pool_size = 2;
    opts.pool_wait = std::time::Duration::from_millis(300);
    opts.connect_timeout = std::time::Duration::from_millis(500);
    opts.statement_timeout = std::time::Duration::from_millis(500);
    opts
}

fn pg_open_with(b: &PgBackend, opts: &PgOptions) -> Arc<PgStore> {
    tokio::task::block_in_place(|| b.open_with(opts, Sealer::new(&[KEY; 32])))
        .unwrap_or_else(|e| panic!("opening the store: {e:?}"))
}

/// Two daemons on one database: what one writes, the other reads at once (no cache),
/// and of 32 spends of one policy token split between them exactly one writes.
async fn pg_two_stores_on_one_database_share_every_write(b: &PgBackend) {
    let mut opts = b.options();
    opts.pool_size = 16;
    let a = pg_open_with(b, &opts);
    let other = pg_open_with(b, &opts);

    a.create_token(&token("h-shared", "a-shared", None, None))
        .await
        .unwrap();
    assert!(other.get_token("h-shared", NOW).await.unwrap().is_some());
    assert_eq!(a.revoke_token("h-shared").await.unwrap(), 1);
    assert_eq!(
        other.get_token("h-shared", NOW).await.unwrap(),
        None,
        "a token revoked on one daemon is refused on the other at once"
    );
    a.put_policy("deploy", &tagged_doc("v0"), NOW)
        .await
        .unwrap();
    assert_eq!(
        other.get_policy("deploy").await.unwrap(),
        Some(tagged_doc("v0"))
    );

    let t = policy_token("ratls", "deploy", NOW + 600);
    a.create_policy_token(&t).await.unwrap();
    const N: usize = 32;
    let barrier = Arc::new(tokio::sync::Barrier::new(N));
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let s = Arc::clone(if i % 2 == 0 { &a } else { &other });
            let (barrier, hash) = (Arc::clone(&barrier), t.hash.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let doc = tagged_doc(&format!("w{i}"));
                (
                    i,
                    s.spend_policy_token_and_update(&hash, "deploy", &doc, NOW)
                        .await,
                )
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        let (i, r) = task.await.expect("spend task panicked");
        match r {
            Ok(Spend::Spent) => winners.push(i),
            Ok(Spend::Refused(SpendRefusal::Spent)) => {}
            other => panic!("spend {i}: {other:?}"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one of {N} spends wins: {winners:?}"
    );
    let doc = Some(tagged_doc(&format!("w{}", winners[0])));
    assert_eq!(a.get_policy("deploy").await.unwrap(), doc);
    assert_eq!(other.get_policy("deploy").await.unwrap(), doc);
    close(&a).await;
    close(&other).await;
}

/// Two daemons on one database, the exactly-once rules split between them: of 32
/// checks of one right code exactly one is accepted; 64 wrong codes on a method with
/// `max_validation_attempts` 5 are 5 refusals as invalid and 59 as locked (the one lock
/// counted by the daemon whose call began it); of 16 logins of one user with one code
/// and of 16 with one recovery code, one each logs in.
async fn pg_two_stores_one_code_once_every_failure_counted_one_login(b: &PgBackend) {
    let mut opts = b.options();
    opts.pool_size = 8;
    let a = pg_open_with(b, &opts);
    let other = pg_open_with(b, &opts);
    let pick = |i: usize| Arc::clone(if i % 2 == 0 { &a } else { &other });

    let m = method(Some("two-daemons"), 5);
    a.create_method(&m).await.unwrap();
    let secret = match other.create_mfa_secret(&m.id, "right", NOW).await.unwrap() {
        Enrollment::Created { secret, .. } => secret,
        e => panic!("expected Created, got {e:?}"),
    };
    let wrong_secret = match a.create_mfa_secret(&m.id, "wrong", NOW).await.unwrap() {
        Enrollment::Created { secret, .. } => secret,
        e => panic!("expected Created, got {e:?}"),
    };
    let split = |entity: &'static str, code: String, n: usize| {
        let barrier = Arc::new(tokio::sync::Barrier::new(n));
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let (s, barrier, id, code) =
                    (pick(i), Arc::clone(&barrier), m.id.clone(), code.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    s.check_and_record_mfa_code(&id, entity, &code, NOW).await
                })
            })
            .collect::<Vec<_>>();
        async move {
            let mut out = Vec::with_capacity(n);
            for t in tasks {
                out.push(t.await.expect("check task panicked"));
            }
            Tally::of(out)
        }
    };

    let t = split("right", code_at(&secret, &m.params, NOW), 32).await;
    assert!(t.errors.is_empty(), "{t:?}");
    assert_eq!(
        t.accepted, 1,
        "one right code, two daemons, one acceptance: {t:?}"
    );
    assert_eq!(t.replay + t.locked, 31, "{t:?}");

    let t = split("wrong", wrong_code(&wrong_secret, &m.params, 0, NOW), 64).await;
    assert!(t.errors.is_empty(), "{t:?}");
    assert_eq!(
        (t.invalid, t.locked),
        (5, 59),
        "no failure lost between daemons: {t:?}"
    );
    // Two locks began: "right" after the winner and five replays, "wrong" after five
    // failures; each counted once, by the daemon whose call began it.
    let locks = |s: &Arc<PgStore>| s.lockouts();
    assert_eq!(locks(&a).vault_mfa + locks(&other).vault_mfa, 2);

    // Logins: one code, 16 temp_tokens, split between the daemons.
    let device = device_secret(1);
    let (codes, hashes) = recovery_codes(1);
    active_user(&a, "user-1", &device, &hashes).await;
    let temps = temp_tokens(&other, "user-1", 32).await;
    let code = step_code(&device, 1);
    let results = race(16, |i| {
        let (s, (temp, login), code) = (pick(i), temps[i].clone(), code.clone());
        async move {
            let proof = Proof::Login {
                temp_hash: &temp,
                login: &login,
            };
            s.check_user_code(proof, &code, NOW).await
        }
    })
    .await;
    let winner = one_winner(&results);
    let stored = other.get_token(&temps[winner].1.hash, NOW).await.unwrap();
    assert_eq!(stored.map(|t| t.entity_id), Some("user-1".to_string()));

    // The losers locked the user; once the lock has passed, one recovery code, 16
    // temp_tokens, split between the daemons: one login.
    let later = NOW + 2 * PERIOD;
    let selector = codes[0].selector.clone();
    let results = race(16, |i| {
        let (s, (temp, login), selector) = (pick(i), temps[16 + i].clone(), selector.clone());
        async move {
            let proof = Proof::Login {
                temp_hash: &temp,
                login: &login,
            };
            s.spend_recovery_code(proof, &selector, true, later).await
        }
    })
    .await;
    let winner = 16 + one_winner(&results);
    let stored = a.get_token(&temps[winner].1.hash, NOW).await.unwrap();
    assert_eq!(stored.map(|t| t.entity_id), Some("user-1".to_string()));
    assert_eq!(a.count_recovery_codes("user-1").await.unwrap(), 0);
    // Each race locked the user once (after its winner, five replays).
    assert_eq!(locks(&a).user_totp + locks(&other).user_totp, 2);
    close(&a).await;
    close(&other).await;
}

/// Daemons starting together on a new database: the advisory lock lets one migrate and
/// write the key check; the others wait, then find the schema current and check their
/// key against it, so those with another key are refused.
async fn pg_starts_together_migrate_once_and_agree_on_the_key(b: &PgBackend) {
    let opts = b.options();
    let starts: Vec<_> = (0..6u8)
        .map(|i| {
            let opts = opts.clone();
            let key = KEY + i % 2;
            tokio::spawn(async move { (key, PgStore::open(&opts, Sealer::new(&[key; 32])).await) })
        })
        .collect();
    let (mut created, mut opened, mut refused) = (0, Vec::new(), Vec::new());
    for s in starts {
        match s.await.unwrap() {
            (key, Ok(o)) => {
                created += usize::from(o.created);
                opened.push(key);
                o.store.close();
            }
            (key, Err(StoreError::WrongKey)) => refused.push(key),
            (key, Err(e)) => panic!("start with key {key}: {e:?}"),
        }
    }
    assert_eq!(created, 1, "one start made the database");
    assert_eq!(opened.len(), 3, "opened {opened:?}, refused {refused:?}");
    assert!(opened.iter().all(|k| *k == opened[0]), "{opened:?}");
    assert!(refused.iter().all(|k| *k != opened[0]), "{refused:?}");
    // Each migration was applied once.
    let rows = pg_query_i64(
        &b.db.url,
        "SELECT count(*) FROM totpd_schema_version GROUP BY version HAVING count(*) <> 1",
    );
    assert!(rows.is_empty(), "migrations applied twice: {rows:?}");
    let version = pg_query_i64(
        &b.db.url,
        "SELECT max(version)::bigint FROM totpd_schema_version",
    );
    assert_eq!(
        version,
        vec![i64::from(totpd::store::postgres::schema_version())]
    );
}

/// The first column of every row of `sql` (as i64), on `url`.
fn pg_query_i64(url: &str, sql: &str) -> Vec<i64> {
    let (url, sql) = (url.to_string(), sql.to_string());
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                let task = tokio::spawn(conn);
                let rows = c.query(&sql, &[]).await.unwrap();
                task.abort();
                rows.iter().map(|r| r.get::<_, i64>(0)).collect()
            })
    })
    .join()
    .unwrap()
}

async fn pg_a_newer_schema_is_refused(b: &PgBackend) {
    let s = open_core(b);
    close(&s).await;
    b.db.sql("INSERT INTO totpd_schema_version (version) VALUES (9999)");
    match try_open_core(b, KEY) {
        Err(StoreError::TooNew { found: 9999, known }) => {
            assert_eq!(known, i64::from(totpd::store::postgres::schema_version()))
        }
        Err(e) => panic!("expected TooNew, got {e:?}"),
        Ok(_) => panic!("a newer schema was opened"),
    }
}

/// A statement stuck behind a lock is cancelled by the statement timeout, and a call
/// that finds the pool busy gives up after the pool wait: both `Unavailable`, both in
/// bounded time, and the store works as soon as the lock goes.
async fn pg_statement_timeout_and_pool_wait_answer_unavailable(b: &PgBackend) {
    let mut opts = pg_small_options(&b.db.url);
    opts.pool_size = 1;
    let s = pg_open_with(b, &opts);
    s.put_policy("p", "{}", NOW).await.unwrap();

    // Another session holds the policy's row lock.
    let (holder, conn) = tokio_postgres::connect(&b.db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    holder
        .batch_execute("BEGIN; SELECT * FROM policies WHERE name = 'p' FOR UPDATE")
        .await
        .unwrap();

    // A write of that policy takes the pool's one connection and waits for the lock...
    let started = std::time::Instant::now();
    let writer = {
        let s = Arc::clone(&s);
        tokio::spawn(async move { s.put_policy("p", "{\"x\": 1}", NOW).await })
    };
    let mut waiting = false;
    for _ in 0..200 {
        let n = holder
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0);
        if n > 0 {
            waiting = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(waiting, "the write waits for the lock");
    // ...so a read finds no free connection within the pool wait.
    let read_started = std::time::Instant::now();
    assert_err!(s.get_policy("p").await, StoreError::Unavailable);
    let waited = read_started.elapsed();
    assert!(
        waited >= opts.pool_wait / 2 && waited < opts.pool_wait + opts.statement_timeout,
        "the read gave up after the pool wait ({waited:?})"
    );
    // The write is cancelled by the server's statement timeout, well before the
    // store's own deadline would have stopped it.
    assert_err!(writer.await.unwrap(), StoreError::Unavailable);
    assert!(
        started.elapsed() < opts.deadline() - std::time::Duration::from_millis(500),
        "cancelled at the statement timeout, not later ({:?})",
        started.elapsed()
    );

    holder.batch_execute("ROLLBACK").await.unwrap();
    conn.abort();
    assert_eq!(s.get_policy("p").await.unwrap(), Some("{}".to_string()));
    s.put_policy("p", "{\"y\": 2}", NOW).await.unwrap();
    assert_eq!(
        s.get_policy("p").await.unwrap(),
        Some("{\"y\": 2}".to_string())
    );
    close(&s).await;
}

/// The server closes every connection (a restart, a failover): each call either works
/// or answers `Unavailable`, and the pool replaces the dead connections by itself.
async fn pg_dropped_connections_are_replaced(b: &PgBackend) {
    let mut opts = b.options();
    opts.pool_size = 4;
    let s = pg_open_with(b, &opts);
    s.put_policy("before", "{}", NOW).await.unwrap();
    // Fill the pool.
    let reads: Vec<_> = (0..8)
        .map(|_| {
            let s = Arc::clone(&s);
            tokio::spawn(async move { s.get_policy("before").await })
        })
        .collect();
    for r in reads {
        r.await.unwrap().unwrap();
    }
    let dropped = tokio::task::block_in_place(|| b.db.drop_connections());
    assert!(dropped >= 1, "the store's connections were dropped");
    // Each dead connection may fail one call before the pool drops it (the server's
    // hang-up can reach a connection after its recycle check): at most a few failures,
    // then every call works again without a restart.
    let (mut failed, mut streak) = (0, 0);
    for _ in 0..40 {
        match s.get_policy("before").await {
            Ok(doc) => {
                assert_eq!(doc, Some("{}".to_string()));
                streak += 1;
            }
            Err(StoreError::Unavailable) => {
                failed += 1;
                streak = 0;
            }
            Err(e) => panic!("expected a result or Unavailable, got {e:?}"),
        }
    }
    assert!(
        failed <= 2 * opts.pool_size && streak >= 20,
        "the pool recovered by itself ({failed} calls failed; the last {streak} worked)"
    );
    s.put_policy("after", "{}", NOW).await.unwrap();
    assert_eq!(s.list_policies().await.unwrap(), vec!["after", "before"]);
    close(&s).await;
}

/// Calls `f` until it works (at most 10 s), allowing `Unavailable` meanwhile.
async fn pg_until_ok<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let started = std::time::Instant::now();
    loop {
        match f().await {
            Ok(v) => return v,
            Err(StoreError::Unavailable)
                if started.elapsed() < std::time::Duration::from_secs(10) =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await
            }
            Err(e) => panic!("did not recover: {e:?}"),
        }
    }
}

/// PostgreSQL goes away under a running store, then comes back: calls during the
/// outage answer `Unavailable` at once (down) or within the store's deadline (a silent
/// network), never hang and never claim a write; the store recovers without a restart,
/// with everything written before the outage, and a spent token stays spent.
async fn pg_an_outage_answers_unavailable_and_the_store_recovers(b: &PgBackend) {
    let proxy = pg::PgProxy::start(&b.db.url).await;
    let opts = pg_small_options(&proxy.url(&b.db.url));
    let s = pg_open_with(b, &opts);
    s.put_policy("deploy", &tagged_doc("v0"), NOW)
        .await
        .unwrap();
    let spent = policy_token("ratls", "deploy", NOW + 600);
    let kept = policy_token("ratls", "deploy", NOW + 600);
    s.create_policy_token(&spent).await.unwrap();
    s.create_policy_token(&kept).await.unwrap();
    assert_eq!(
        s.spend_policy_token_and_update(&spent.hash, "deploy", &tagged_doc("v1"), NOW)
            .await
            .unwrap(),
        Spend::Spent
    );

    // Down: refused at once.
    proxy.stop();
    assert_err!(s.ping().await, StoreError::Unavailable);
    for i in 0..5 {
        let started = std::time::Instant::now();
        assert_err!(
            s.put_policy(&format!("during-{i}"), "{}", NOW).await,
            StoreError::Unavailable
        );
        assert_err!(
            s.spend_policy_token_and_update(&kept.hash, "deploy", &tagged_doc("x"), NOW)
                .await,
            StoreError::Unavailable
        );
        assert!(
            started.elapsed() < opts.pool_wait + opts.connect_timeout * 2,
            "answered quickly ({:?})",
            started.elapsed()
        );
    }

    // Up again: the same store works, with what was written before.
    proxy.restart().await;
    pg_until_ok(|| s.ping()).await;
    let doc = pg_until_ok(|| s.get_policy("deploy")).await;
    assert_eq!(doc, Some(tagged_doc("v1")));
    assert_eq!(
        s.spend_policy_token_and_update(&spent.hash, "deploy", &tagged_doc("v2"), NOW)
            .await
            .unwrap(),
        Spend::Refused(SpendRefusal::Spent),
        "a token spent before the outage stays spent"
    );
    assert_eq!(s.list_policies().await.unwrap(), vec!["deploy"]);

    // A network that swallows everything: the deadline answers, nothing hangs.
    proxy.stall(true);
    let started = std::time::Instant::now();
    assert_err!(s.get_policy("deploy").await, StoreError::Unavailable);
    assert!(
        started.elapsed() <= opts.deadline() + std::time::Duration::from_secs(1),
        "bounded by the deadline ({:?})",
        started.elapsed()
    );
    proxy.stall(false);
    let doc = pg_until_ok(|| s.get_policy("deploy")).await;
    assert_eq!(doc, Some(tagged_doc("v1")));
    // The unspent token is still spendable, once.
    let v3 = tagged_doc("v3");
    assert_eq!(
        pg_until_ok(|| s.spend_policy_token_and_update(&kept.hash, "deploy", &v3, NOW)).await,
        Spend::Spent
    );
    close(&s).await;
}

//! Durable validations a second, SQLite against PostgreSQL, through the store trait
//! (what every surface's validate calls; no HTTP).
//!
//! Run: `cargo bench --bench validations`. PostgreSQL is measured when
//! `TOTPD_TEST_POSTGRES` names a server the bench may create a database in (`.ci/postgres
//! start` makes one); `BENCH_SECS=N` sets each phase's length (default 5 s);
//! `BENCH_CLIENTS=N` the concurrency (default 16).
//!
//! Each client owns one entity's MFA secret and validates its right code for the next
//! time step, again and again (`now` is an argument of the store, so every validation is
//! accepted and records its step: a durable write that a replay would be refused by).
//! Every answer comes after its commit, so each counted validation is on disk.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use totpd::otp::{self, Params};
use totpd::store::postgres::{PgOptions, PgStore};
use totpd::store::sqlite::{SqliteOptions, SqliteStore};
use totpd::store::{Enrollment, MethodRecord, Sealer, Store};

const NOW: i64 = 1_700_000_000;

fn main() {
    let secs: u64 = env_num("BENCH_SECS", 5);
    let clients: usize = env_num("BENCH_CLIENTS", 16) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let sqlite: Arc<dyn Store> = SqliteStore::open(
            &SqliteOptions::new(dir.path().join("totpd.db")),
            Sealer::new(&[7u8; 32]),
        )
        .expect("sqlite")
        .store;
        let base = run("sqlite", sqlite.clone(), clients, secs).await;
        sqlite.close();

        match std::env::var("TOTPD_TEST_POSTGRES") {
            Ok(admin) => {
                let db = format!("totpd_bench_{}", uuid::Uuid::new_v4().simple());
                let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
                    .await
                    .expect("connect to TOTPD_TEST_POSTGRES");
                tokio::spawn(conn);
                client
                    .batch_execute(&format!("CREATE DATABASE {db}"))
                    .await
                    .expect("create database");
                let url = with_dbname(&admin, &db);
                let pg: Arc<dyn Store> = PgStore::open(
                    &PgOptions::new(&url).expect("url"),
                    Sealer::new(&[7u8; 32]),
                )
                .await
                .expect("postgres")
                .store;
                let pg_rate = run("postgres", pg.clone(), clients, secs).await;
                pg.close();
                println!(
                    "postgres / sqlite: {:.2} (durable validations a second at c={clients})",
                    pg_rate / base
                );
                let _ = client
                    .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
                    .await;
            }
            Err(_) => eprintln!(
                "*** postgres not measured: TOTPD_TEST_POSTGRES is not set (.ci/postgres start makes one) ***"
            ),
        }
    });
}

/// Runs `clients` validating loops for `secs` seconds; prints and returns validations/s.
async fn run(name: &str, store: Arc<dyn Store>, clients: usize, secs: u64) -> f64 {
    let params = Params::new("SHA1", 6, 30).expect("params");
    let method = MethodRecord {
        id: uuid::Uuid::new_v4().to_string(),
        name: None,
        issuer: "Bench".into(),
        params,
        key_size: 20,
        qr_size: 0,
        skew: 0,
        max_validation_attempts: 5,
        created_at: NOW,
    };
    store.create_method(&method).await.expect("method");
    let mut secrets = Vec::new();
    for i in 0..clients {
        match store
            .create_mfa_secret(&method.id, &format!("e{i}"), NOW)
            .await
            .expect("enrol")
        {
            Enrollment::Created { secret, .. } => secrets.push(secret),
            Enrollment::Exists { .. } => unreachable!("a fresh entity"),
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (i, secret) in secrets.into_iter().enumerate() {
        let (store, stop, done, refused) =
            (store.clone(), stop.clone(), done.clone(), refused.clone());
        let method = method.id.clone();
        tasks.push(tokio::spawn(async move {
            let entity = format!("e{i}");
            let mut now = NOW;
            while !stop.load(Ordering::Relaxed) {
                now += 30;
                let code = otp::code_at(&secret, &params, now);
                match store
                    .check_and_record_mfa_code(&method, &entity, &code, now)
                    .await
                {
                    Ok(otp::Outcome::Accepted { .. }) => done.fetch_add(1, Ordering::Relaxed),
                    _ => refused.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let rate = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    println!(
        "{name}: {rate:.0} durable validations/s at c={clients} ({} refused, should be 0)",
        refused.load(Ordering::Relaxed)
    );
    rate
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name}: a whole number"))
        })
        .unwrap_or(default)
}

/// `url` with its database name replaced by `db`.
fn with_dbname(url: &str, db: &str) -> String {
    let mut u = url::Url::parse(url).expect("TOTPD_TEST_POSTGRES is a URL");
    u.set_path(&format!("/{db}"));
    u.to_string()
}

//! A flood of wrong recovery codes against code reads, on the in-process application
//! (router, middleware, SQLite store; no socket, no spawned binary).
//!
//! Run: `cargo bench --bench recovery`; `BENCH_SECS=N` sets each phase's length
//! (default 5 seconds).
//!
//! Phases, one after the other:
//! 1. 32 clients loop `POST /api/v1/auth/totp/verify` with a good temp_token and a wrong,
//!    well-formed recovery code. Each such request is one argon2 verify, at most
//!    `max_hashes()` at once (the app state's semaphore): verifies per second.
//! 2. 8 clients loop `GET /api/v2/totp/code/{id}` alone: reads per second, latency.
//! 3. The same 8 readers while the 32 flooders run: reads per second, latency, and the
//!    share of phase 2's rate they keep.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use totpd::api::user_totp::max_hashes;
use totpd::api::AppState;
use totpd::auth::Peer;
use totpd::otp::{self, recovery, Params};
use totpd::server::http::{app, App};
use totpd::store::sqlite::{SqliteOptions, SqliteStore};
use totpd::store::{Sealer, Store};

/// Clients sending wrong recovery codes.
const FLOODERS: usize = 32;
/// Clients reading codes.
const READERS: usize = 8;
/// The daemon's blocking pool (`MAX_BLOCKING_THREADS` in `src/main.rs`).
const MAX_BLOCKING_THREADS: usize = 4;
/// The uid the in-process "daemon" runs as; requests come from uid 0, root.
const DAEMON_UID: u32 = 4_000_000;
/// How long before the flood phases the readers wait for the flood to fill the queue.
const RAMP: Duration = Duration::from_millis(250);
/// The temp_token lives 300 s by default; one is taken per flood phase, which must end
/// well before it expires (an expired one answers 401 without any argon2 work).
const MAX_SECS: u64 = 240;

const VERIFY: &str = "/api/v1/auth/totp/verify";

fn main() {
    let secs = match std::env::var("BENCH_SECS") {
        Ok(v) => v
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|s| (1..=MAX_SECS).contains(s))
            .unwrap_or_else(|| panic!("BENCH_SECS: a whole number from 1 to {MAX_SECS}")),
        Err(_) => 5,
    };
    // As the daemon: worker threads one per core (tokio's default), few blocking threads.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(Duration::from_secs(secs)));
}

async fn run(phase: Duration) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("totpd recovery-code flood vs. code reads (in-process application)");
    println!(
        "command:  cargo bench --bench recovery   (BENCH_SECS=N, now {}; default 5)",
        phase.as_secs()
    );
    println!(
        "setup:    {cores} cores, tokio multi-thread ({cores} workers, {MAX_BLOCKING_THREADS} blocking threads), \
         argon2 bound max_hashes() = {}, {FLOODERS} flooders, {READERS} readers, {} s per phase",
        max_hashes(),
        phase.as_secs()
    );
    println!();

    let dir = tempfile::tempdir().expect("tempdir");
    let opts = SqliteOptions::new(dir.path().join("totpd.db"));
    // A fixed key, as the tests use: this database lives and dies with the run.
    let store = SqliteStore::open(&opts, Sealer::new(&[7u8; 32]))
        .expect("open store")
        .store;
    let state = AppState::new(store.clone());
    assert_eq!(state.hashes.available_permits(), max_hashes());
    let app = app(state.clone(), DAEMON_UID);

    // Root over the socket is the entity `uid:0`: enrol a device and activate it.
    let (status, setup) = call(&app, "POST", "/api/v1/auth/totp/setup", Some(json!({}))).await;
    assert_eq!(status, 201, "setup: {setup}");
    let secret = otp::decode_base32(setup["secret_key"].as_str().expect("secret_key"))
        .expect("base32 secret");
    let params = Params::new("SHA1", 6, 30).expect("params");
    let token = otp::code_at(&secret, &params, totpd::api::now());
    let (status, activated) = call(
        &app,
        "POST",
        "/api/v1/auth/totp/activate",
        Some(json!({ "token": token })),
    )
    .await;
    assert_eq!(status, 200, "activate: {activated}");

    // An agent secret to read codes of.
    let seed = otp::encode_base32(&otp::generate_secret(20).expect("random"));
    let (status, created) = call(
        &app,
        "POST",
        "/api/v2/totp/secrets",
        Some(json!({ "secret": seed, "label": "bench" })),
    )
    .await;
    assert_eq!(status, 201, "create secret: {created}");
    let id = created["totp_secret"]["id"].as_str().expect("secret id");
    let code_path = format!("/api/v2/totp/code/{id}");

    // A well-formed recovery code that is nobody's: its selector is unknown, so the
    // check runs against the decoy hash (`recovery::check`), one argon2 verify all the
    // same. The first verify also computes that decoy: warm it up here.
    let wrong = recovery::generate_set().expect("random")[0].display();
    let (status, answer) = call(
        &app,
        "POST",
        VERIFY,
        Some(json!({ "temp_token": challenge(&app).await, "token": wrong })),
    )
    .await;
    assert_eq!(status, 401, "warm-up verify: {answer}");
    let (status, answer) = call(&app, "GET", &code_path, None).await;
    assert_eq!(status, 200, "warm-up read: {answer}");

    // Phase 1: the flood alone. The user gets locked after 5 wrong attempts (30 s at a
    // time); that changes nothing here: in `check_typed` (src/api/user_totp.rs) the
    // argon2 verify (`hashing(.., recovery::check ..)`) runs before
    // `spend_recovery_code`, which is where the lock is looked at, and the temp_token
    // survives wrong codes (only a success spends it). So every request is one verify.
    let flood = Flood::start(&app, &challenge(&app).await, &wrong);
    let t0 = Instant::now();
    let n0 = flood.answered();
    tokio::time::sleep(phase).await;
    let alone_flood = rate(flood.answered() - n0, t0.elapsed());
    let flood_other = flood.stop().await;
    assert_eq!(flood_other, 0, "flood requests not answered 401");

    // Phase 2: the readers alone.
    let alone = read_phase(&app, &code_path, phase).await;

    // Phase 3: the readers under the flood (fresh temp_token: the phases add up).
    let flood = Flood::start(&app, &challenge(&app).await, &wrong);
    tokio::time::sleep(RAMP).await;
    let n0 = flood.answered();
    let t0 = Instant::now();
    let under = read_phase(&app, &code_path, phase).await;
    let under_flood = rate(flood.answered() - n0, t0.elapsed());
    let flood_other = flood.stop().await;
    assert_eq!(flood_other, 0, "flood requests not answered 401");

    // Why the verifies were refused, from the daemon's own counters: no bad temp_token
    // (which would have skipped argon2), only invalid or locked.
    let outcomes = verification_outcomes(&state.metrics.render());
    assert!(
        outcomes
            .iter()
            .all(|(o, _)| matches!(o.as_str(), "invalid" | "locked")),
        "unexpected outcomes: {outcomes:?}"
    );

    println!("recovery verifies (32 clients, 401 each):");
    println!("  alone                        {alone_flood:>10.1} /s");
    println!("  during the reads of phase 3  {under_flood:>10.1} /s");
    println!(
        "  refusal reasons (whole run): {}",
        outcomes
            .iter()
            .map(|(o, n)| format!("{o} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!();
    println!("code reads ({READERS} clients, GET /api/v2/totp/code/{{id}}):");
    println!(
        "  {:<12} {:>12} {:>12} {:>12} {:>12}",
        "", "reads/s", "p50", "p99", "max"
    );
    for (name, r) in [("alone", &alone), ("under flood", &under)] {
        println!(
            "  {:<12} {:>12.1} {:>12} {:>12} {:>12}",
            name,
            r.rate,
            ms(r.pct(50.0)),
            ms(r.pct(99.0)),
            ms(r.pct(100.0))
        );
    }
    println!(
        "  under flood / alone: {:.1} %",
        100.0 * under.rate / alone.rate
    );

    store.close();
}

/// Requests per second.
fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// One request as root over the socket; the status and the body as JSON (or Null).
async fn call(app: &App, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let (status, bytes) = send(app, method, path, body.map(|b| b.to_string().into())).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// One request as the tests send it: a Unix-socket peer with uid 0 in the extensions.
async fn send(app: &App, method: &str, path: &str, body: Option<Bytes>) -> (u16, Bytes) {
    let mut b = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    let mut req = b
        .body(Body::from(body.unwrap_or_default()))
        .expect("request");
    req.extensions_mut().insert(Peer::Unix { uid: Some(0) });
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, bytes)
}

/// A new temp_token for `uid:0` (root has sudo on the challenge).
async fn challenge(app: &App) -> String {
    let (status, r) = call(
        app,
        "POST",
        "/api/v1/auth/totp/challenge",
        Some(json!({ "user": "uid:0" })),
    )
    .await;
    assert_eq!(status, 201, "challenge: {r}");
    r["temp_token"].as_str().expect("temp_token").to_string()
}

/// The flooders, running until stopped.
struct Flood {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<u64>>,
}

impl Flood {
    fn start(app: &App, temp_token: &str, wrong: &str) -> Flood {
        let body: Bytes = json!({ "temp_token": temp_token, "token": wrong })
            .to_string()
            .into();
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let tasks = (0..FLOODERS)
            .map(|_| {
                let (app, body) = (app.clone(), body.clone());
                let (stop, answered) = (stop.clone(), answered.clone());
                tokio::spawn(async move {
                    let mut other = 0;
                    while !stop.load(Ordering::Relaxed) {
                        match send(&app, "POST", VERIFY, Some(body.clone())).await.0 {
                            401 => answered.fetch_add(1, Ordering::Relaxed),
                            _ => {
                                other += 1;
                                0
                            }
                        };
                    }
                    other
                })
            })
            .collect();
        Flood {
            stop,
            answered,
            tasks,
        }
    }

    /// Verifies answered 401 so far.
    fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Stops the flooders and waits for their last requests; the count of answers that
    /// were not 401.
    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let mut other = 0;
        for t in self.tasks {
            other += t.await.expect("flooder");
        }
        other
    }
}

/// What the readers did in one phase.
struct Reads {
    rate: f64,
    /// Latencies of the reads answered within the phase, sorted.
    latencies: Vec<Duration>,
}

impl Reads {
    /// The `p`-th percentile (nearest rank).
    fn pct(&self, p: f64) -> Duration {
        let n = self.latencies.len();
        if n == 0 {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        self.latencies[rank.clamp(1, n) - 1]
    }
}

/// `READERS` clients reading `path` for `phase`; only reads answered within it count.
async fn read_phase(app: &App, path: &str, phase: Duration) -> Reads {
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..READERS)
        .map(|_| {
            let (app, path, stop) = (app.clone(), path.to_string(), stop.clone());
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(1 << 16);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let (status, body) = send(&app, "GET", &path, None).await;
                    let took = t.elapsed();
                    assert_eq!(status, 200, "read: {}", String::from_utf8_lossy(&body));
                    if !stop.load(Ordering::Relaxed) {
                        lat.push(took);
                    }
                }
                lat
            })
        })
        .collect();
    let t0 = Instant::now();
    tokio::time::sleep(phase).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = t0.elapsed();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.expect("reader"));
    }
    latencies.sort_unstable();
    Reads {
        rate: rate(latencies.len() as u64, elapsed),
        latencies,
    }
}

/// `user_totp` verification outcomes and their counts, from the metrics text.
fn verification_outcomes(metrics: &str) -> Vec<(String, u64)> {
    const PREFIX: &str = "totpd_verifications_total{surface=\"user_totp\",outcome=\"";
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix(PREFIX))
        .filter_map(|rest| {
            let (outcome, n) = rest.split_once("\"} ")?;
            Some((outcome.to_string(), n.trim().parse().ok()?))
        })
        // The activation's accepted code is no part of the flood.
        .filter(|(o, _)| o != "accepted")
        .collect()
}

//! Sealing-key rotation against the real binary: a key ring made with `totpd key
//! generate`, a rotation under a load of validations and code reads (no request fails,
//! no value keeps the old key id, every code still matches an independent TOTP), a
//! `kill -9` half way through (every value still opens, and a restart finishes the job),
//! old key files and malformed rings, and who may rotate.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::app::TestApp;
use common::{fresh_step, parse_otp_url, raw, reference_totp, seed, unix_now, Daemon, BIN};
use serde_json::{json, Value};
use totpd::store::seal::KeyRing;
use totpd::store::Sealer;

/// Sealed values made before the rotation, besides the ones the load uses.
const FILLER: usize = 2000;
/// MFA entities validated during the rotation, and agent secrets read.
const ENTITIES: usize = 12;
const AGENTS: usize = 8;
/// Keys of Vault's TOTP engine whose codes are read during the rotation.
const ENGINE_KEYS: usize = 4;

/// What the load validates and reads: an MFA method with enrolled entities, and agent
/// secrets, each with its seed as the test knows it.
struct Load {
    method_id: String,
    entities: Vec<(String, Vec<u8>)>,
    agents: Vec<(String, Vec<u8>)>,
    /// TOTP engine keys: name and secret.
    engine: Vec<(String, Vec<u8>)>,
}

async fn make_load(d: &Daemon) -> Load {
    let r = d
        .req(
            "POST",
            "/v1/identity/mfa/method/totp",
            Some(json!({"issuer": "Acme", "method_name": "rotation"})),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let method_id = r.json["data"]["method_id"].as_str().unwrap().to_string();
    let mut entities = Vec::new();
    for i in 0..ENTITIES {
        let entity = format!("entity-{i}");
        let r = d
            .req(
                "POST",
                "/v1/identity/mfa/method/totp/admin-generate",
                Some(json!({"method_id": method_id, "entity_id": entity})),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let url = parse_otp_url(r.json["data"]["url"].as_str().unwrap());
        entities.push((entity, url.secret));
    }
    let mut agents = Vec::new();
    for i in 0..AGENTS {
        let s = seed(20);
        agents.push((agent_secret(d, &s, &format!("load-{i}")).await, raw(&s)));
    }
    let mut engine = Vec::new();
    for i in 0..ENGINE_KEYS {
        let (name, s) = (format!("engine-{i}"), seed(20));
        let r = d
            .req(
                "POST",
                &format!("/v1/totp/keys/{name}"),
                Some(json!({ "key": s })),
                None,
            )
            .await;
        assert_eq!(r.status, 204, "{}", r.text);
        engine.push((name, raw(&s)));
    }
    Load {
        method_id,
        entities,
        agents,
        engine,
    }
}

async fn agent_secret(d: &Daemon, seed: &str, label: &str) -> String {
    let r = d
        .req(
            "POST",
            "/api/v2/totp/secrets",
            Some(json!({"secret": seed, "label": label})),
            None,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    r.json["totp_secret"]["id"].as_str().unwrap().to_string()
}

/// `FILLER` more agent secrets, 16 requests at a time.
async fn make_filler(d: &Arc<Daemon>) {
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (d, next) = (d.clone(), next.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < FILLER as u64 {
                    agent_secret(&d, &seed(20), "filler").await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// The daemon's key file with a new key added as current, made by `totpd key generate
/// --ring` and written back 0600.
fn add_key_to_ring(d: &Daemon) -> KeyRing {
    let key_file = d.data_dir.join("totpd.key");
    let out = std::process::Command::new(BIN)
        .args(["key", "generate", "--ring"])
        .arg(&key_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    write_key_file(&key_file, &out.stdout);
    KeyRing::read(&key_file).unwrap()
}

fn write_key_file(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .unwrap();
    std::io::Write::write_all(&mut f, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The data of `GET /v1/sys/keys`.
async fn key_status(d: &Daemon) -> Value {
    let r = d.req("GET", "/v1/sys/keys", None, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json["data"].clone()
}

/// Sealed values per key id, read from the database file itself: the first byte of
/// every sealed value (`otp_secrets.sealed`, and the key check row).
fn key_ids_in_db(d: &Daemon) -> BTreeMap<u8, i64> {
    let c = rusqlite::Connection::open(d.data_dir.join("totpd.db")).unwrap();
    let mut out = BTreeMap::new();
    let mut stmt = c
        .prepare(
            "SELECT substr(sealed, 1, 1), count(*) FROM otp_secrets GROUP BY 1
             UNION ALL SELECT substr(value, 1, 1), 1 FROM meta WHERE key = 'key_check'",
        )
        .unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))
        .unwrap();
    for row in rows {
        let (id, n) = row.unwrap();
        *out.entry(id[0]).or_default() += n;
    }
    out
}

/// Opens every sealed value of the database with `ring`, each with its row's associated
/// data; returns how many opened.
fn open_every_value(d: &Daemon, ring: &KeyRing) -> usize {
    let sealer = Sealer::from_ring(ring);
    let c = rusqlite::Connection::open(d.data_dir.join("totpd.db")).unwrap();
    let check: Vec<u8> = c
        .query_row("SELECT value FROM meta WHERE key = 'key_check'", [], |r| {
            r.get(0)
        })
        .unwrap();
    sealer
        .open("totpd/v1/meta/key_check", &check)
        .expect("the key check opens");
    let mut stmt = c.prepare("SELECT id, sealed FROM otp_secrets").unwrap();
    let rows: Vec<(String, Vec<u8>)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (id, sealed) in &rows {
        sealer
            .open(&format!("totpd/v1/otp_secrets/{id}"), sealed)
            .unwrap_or_else(|e| panic!("otp_secrets {id} (key id {}): {e}", sealed[0]));
    }
    rows.len() + 1
}

/// An agent secret's code from the daemon matches the reference at the time of asking.
async fn agent_code_matches(d: &Daemon, id: &str, secret: &[u8]) -> Result<(), String> {
    code_matches(d, &format!("/api/v2/totp/code/{id}"), "/code", secret).await
}

/// A TOTP engine key's code from the daemon matches the reference.
async fn engine_code_matches(d: &Daemon, name: &str, secret: &[u8]) -> Result<(), String> {
    code_matches(d, &format!("/v1/totp/code/{name}"), "/data/code", secret).await
}

/// The code at `path` (at the JSON pointer `at` of the answer) matches the reference at
/// the time of asking.
async fn code_matches(d: &Daemon, path: &str, at: &str, secret: &[u8]) -> Result<(), String> {
    let id = path;
    let before = unix_now();
    let r = d.req("GET", path, None, None).await;
    let after = unix_now();
    if r.status != 200 {
        return Err(format!("code {id}: HTTP {}: {}", r.status, r.text));
    }
    let code = r
        .json
        .pointer(at)
        .and_then(Value::as_str)
        .unwrap_or_default();
    let expected: Vec<String> = [before, after]
        .iter()
        .map(|t| reference_totp(secret, "SHA1", 6, 30, *t))
        .collect();
    if expected.iter().any(|e| e == code) {
        Ok(())
    } else {
        Err(format!("code {id}: {code}, expected one of {expected:?}"))
    }
}

/// Validates `entity`'s code at time `t` (skew 1: the current step or a neighbour).
async fn validate(d: &Daemon, load: &Load, entity: usize, t: u64) -> Result<(), String> {
    let (e, secret) = &load.entities[entity];
    let code = reference_totp(secret, "SHA1", 6, 30, t);
    let r = d
        .req(
            "POST",
            "/v1/identity/mfa/method/totp/validate",
            Some(json!({"method_id": load.method_id, "entity_id": e, "passcode": code})),
            None,
        )
        .await;
    if r.status == 200 && r.json["data"]["valid"] == true {
        Ok(())
    } else {
        Err(format!("validate {e}: HTTP {}: {}", r.status, r.text))
    }
}

/// A daemon holding the load and `FILLER` more sealed values, all under key 1, stopped
/// and given a ring with a new current key (2), not yet restarted.
async fn prepared() -> (Daemon, Load, KeyRing) {
    let d = Arc::new(Daemon::start());
    let load = make_load(&d).await;
    make_filler(&d).await;
    let mut d = Arc::try_unwrap(d).ok().expect("no other handle");
    assert_eq!(d.stop(), Some(0));
    let ring = add_key_to_ring(&d);
    assert_eq!((ring.current(), ring.ids()), (2, vec![1, 2]));
    assert_eq!(
        key_ids_in_db(&d),
        BTreeMap::from([(1, (1 + ENTITIES + AGENTS + ENGINE_KEYS + FILLER) as i64)])
    );
    (d, load, ring)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_under_a_validation_load_fails_no_request_and_leaves_no_old_key_id() {
    let total = (1 + ENTITIES + AGENTS + ENGINE_KEYS + FILLER) as u64;
    let (mut d, load, _ring) = prepared().await;
    // Slow, so the load meets it half way: 25 values a batch, 30 ms apart (about 3 s).
    // The restart resumes it at once; there is room left in this step for one
    // validation of each entity.
    fresh_step(30, 20).await;
    d.extra = vec![
        "--rotate-batch".into(),
        "25".into(),
        "--rotate-pause-ms".into(),
        "30".into(),
    ];
    d.spawn().expect("restart with the new ring");
    let d = Arc::new(d);
    let started = Instant::now();

    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let load = Arc::new(load);
    let mut tasks = Vec::new();
    // Code reads of every agent secret, in a loop.
    for w in 0..3 {
        let (d, load, stop, served) = (d.clone(), load.clone(), stop.clone(), served.clone());
        tasks.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                let (id, secret) = &load.agents[i % load.agents.len()];
                let (name, key) = &load.engine[i % load.engine.len()];
                let read = match agent_code_matches(&d, id, secret).await {
                    Ok(()) => engine_code_matches(&d, name, key).await,
                    e => e,
                };
                match read {
                    Ok(()) => {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => errors.push(e),
                }
                i += 1;
            }
            errors
        }));
    }
    // One validation of each MFA entity, spread over the rotation.
    {
        let (d, load, served) = (d.clone(), load.clone(), served.clone());
        tasks.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            for i in 0..ENTITIES {
                tokio::time::sleep(Duration::from_millis(150)).await;
                match validate(&d, &load, i, unix_now()).await {
                    Ok(()) => {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => errors.push(e),
                }
            }
            errors
        }));
    }
    // Watches the rotation: requests must have been served while it was half way.
    let watch = {
        let (d, stop, served) = (d.clone(), stop.clone(), served.clone());
        tokio::spawn(async move {
            let mut during = Vec::new();
            let mut max_old = 0;
            while !stop.load(Ordering::Relaxed) {
                let s = key_status(&d).await;
                let old = s["old_rows"].as_u64().unwrap();
                max_old = max_old.max(old);
                if s["rotation"]["running"] == true && old > 0 && old < total {
                    during.push(served.load(Ordering::Relaxed));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (during, max_old)
        })
    };
    // The CLI starts (here: joins) the rotation and waits for its end.
    let socket = d.socket.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .args(["key", "rotate", "--json"])
            .env("TOTPD_SOCKET", socket)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(last["old_rows"], 0, "{last}");
    assert_eq!(last["current_key_id"], 2);
    assert_eq!(last["unused_key_ids"], json!([1]));
    assert_eq!(last["rotation"]["error"], Value::Null);
    // Progress went to stderr as it went.
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("re-sealing under key id 2"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for t in tasks {
        errors.extend(t.await.unwrap());
    }
    let (during, max_old) = watch.await.unwrap();
    assert!(
        errors.is_empty(),
        "requests failed during the rotation: {errors:?}"
    );
    assert!(
        during.len() >= 2 && during.last() > during.first(),
        "no request was served while the rotation was half way (took {took:?}, seen: {during:?}, max old {max_old})"
    );
    assert!(served.load(Ordering::Relaxed) > ENTITIES as u64);

    // In the database itself: no value carries key id 1.
    let ids = key_ids_in_db(&d);
    assert_eq!(ids, BTreeMap::from([(2, total as i64)]), "{ids:?}");
    // The daemon logged the resumed rotation and its end.
    let log = d.stderr();
    assert!(log.contains("resuming the key rotation"), "{log}");
    assert!(log.contains("key rotation done"), "{log}");
    // The metric shows the counts.
    let m = d.req("GET", "/v1/sys/metrics", None, None).await;
    assert!(
        m.text
            .contains(&format!("totpd_sealed_rows{{key_id=\"2\"}} {total}\n")),
        "{}",
        m.text
    );
    assert!(!m.text.contains("totpd_sealed_rows{key_id=\"1\"}"));

    // Key 1 leaves the ring: the daemon starts with key 2 alone, and every code matches.
    let mut d = Arc::try_unwrap(d).ok().unwrap();
    assert_eq!(d.stop(), Some(0));
    let key_file = d.data_dir.join("totpd.key");
    let only_new: String = std::fs::read_to_string(&key_file)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("key 1 "))
        .map(|l| format!("{l}\n"))
        .collect();
    write_key_file(&key_file, only_new.as_bytes());
    assert_eq!(KeyRing::read(&key_file).unwrap().ids(), vec![2]);
    d.extra.clear();
    d.spawn().expect("starts without the old key");
    for (id, secret) in &load.agents {
        agent_code_matches(&d, id, secret).await.unwrap();
    }
    for (name, key) in &load.engine {
        engine_code_matches(&d, name, key).await.unwrap();
    }
    // Each entity was validated in this step; its next step's code is good (skew 1).
    let t = unix_now() + 30;
    for i in 0..ENTITIES {
        validate(&d, &load, i, t).await.unwrap();
    }
    let s = key_status(&d).await;
    assert_eq!(s["key_ids"], json!([2]));
    assert_eq!(s["rotation"]["running"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_half_way_leaves_every_value_readable_and_a_restart_finishes_the_rotation() {
    let total = (1 + ENTITIES + AGENTS + ENGINE_KEYS + FILLER) as i64;
    let (mut d, load, ring) = prepared().await;
    // Very slow: 10 values a batch, 50 ms apart (over 10 s).
    d.extra = vec![
        "--rotate-batch".into(),
        "10".into(),
        "--rotate-pause-ms".into(),
        "50".into(),
    ];
    d.spawn().expect("restart with the new ring");
    // The start resumed it; POST rotate finds it running and starts no second one.
    let r = d.req("POST", "/v1/sys/keys/rotate", None, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["data"]["rotation"]["running"], true, "{}", r.text);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = key_status(&d).await;
        if s["rotation"]["resealed"].as_u64().unwrap() >= 300 {
            break;
        }
        assert!(Instant::now() < deadline, "no progress: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = nix::unistd::Pid::from_raw(d.pid());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    let mut child = d.child.take().unwrap();
    child.wait().unwrap();

    // Half way: values under both keys, and every one opens with the ring.
    let ids = key_ids_in_db(&d);
    assert_eq!(ids.values().sum::<i64>(), total, "{ids:?}");
    assert!(ids[&1] > 0 && ids[&2] >= 300, "{ids:?}");
    assert_eq!(open_every_value(&d, &ring), total as usize);

    // Restarted with the same ring (at full speed): the rotation finishes by itself.
    d.extra.clear();
    d.spawn().expect("restart after kill -9");
    let deadline = Instant::now() + Duration::from_secs(60);
    let s = loop {
        let s = key_status(&d).await;
        if s["rotation"]["running"] == false && s["old_rows"] == 0 {
            break s;
        }
        assert!(Instant::now() < deadline, "not finished: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(s["sealed_rows"], json!({"2": total}), "{s}");
    let log = d.stderr();
    assert!(log.contains("resuming the key rotation"), "{log}");
    assert_eq!(key_ids_in_db(&d), BTreeMap::from([(2, total)]));
    for (id, secret) in &load.agents {
        agent_code_matches(&d, id, secret).await.unwrap();
    }
    fresh_step(30, 3).await;
    let t = unix_now();
    for i in 0..ENTITIES {
        validate(&d, &load, i, t).await.unwrap();
    }
    // Every value opens with key 2 alone.
    let only_new = KeyRing::parse(
        std::fs::read_to_string(d.data_dir.join("totpd.key"))
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("key 1 "))
            .collect::<Vec<_>>()
            .join("\n")
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(open_every_value(&d, &only_new), total as usize);
}

#[tokio::test]
async fn old_key_files_load_and_bad_rings_or_a_missing_key_id_stop_the_start() {
    let mut d = Daemon::start();
    let s = seed(20);
    let id = agent_secret(&d, &s, "old").await;
    agent_code_matches(&d, &id, &raw(&s)).await.unwrap();
    assert_eq!(d.stop(), Some(0));
    let key_file = d.data_dir.join("totpd.key");
    let hex = std::fs::read_to_string(&key_file)
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(hex.len(), 64, "a first start writes 64 hex digits");
    let key = data_encoding::HEXLOWER.decode(hex.as_bytes()).unwrap();

    // The formats before rings: 32 raw bytes, 64 hex digits; and the same key as a ring.
    let k1 = format!("key 1 {hex} current\n");
    for bytes in [
        key.clone(),
        format!("{}\n", hex.to_uppercase()).into_bytes(),
        format!("totpd-keyring v1\n{k1}").into_bytes(),
    ] {
        write_key_file(&key_file, &bytes);
        d.spawn().expect("starts with the key in this format");
        agent_code_matches(&d, &id, &raw(&s)).await.unwrap();
        let st = key_status(&d).await;
        assert_eq!(
            (st["current_key_id"].clone(), st["old_rows"].clone()),
            (json!(1), json!(0))
        );
        assert_eq!(d.stop(), Some(0));
    }

    // A malformed ring: refused, naming the file and the line, never echoing a key.
    let other = "ab".repeat(32);
    for (text, line) in [
        (format!("totpd-keyring v1\n{k1}key 1 {other}\n"), "line 3"),
        (format!("totpd-keyring v1\nkey 1 {hex}\n"), "current"),
        (
            format!("totpd-keyring v1\n{k1}key 2 {other} current\n"),
            "line 3",
        ),
        (format!("totpd-keyring v9\n{k1}"), "line 1"),
    ] {
        write_key_file(&key_file, text.as_bytes());
        let err = d.spawn().expect_err("a malformed ring is refused");
        assert!(err.contains("totpd.key") && err.contains(line), "{err}");
        assert!(!err.contains(&hex) && !err.contains(&other), "{err}");
    }

    // A well-formed ring without key 1, which the values use: refused, naming the id.
    write_key_file(
        &key_file,
        format!("totpd-keyring v1\nkey 2 {other} current\n").as_bytes(),
    );
    let err = d
        .spawn()
        .expect_err("a ring missing a key in use is refused");
    assert!(
        err.contains("key id 1") && err.contains("totpd.key"),
        "{err}"
    );
    assert!(!err.contains(&hex) && !err.contains(&other), "{err}");

    // Key 1 back, with a new current key: starts, and the old value opens.
    write_key_file(
        &key_file,
        format!("totpd-keyring v1\nkey 1 {hex}\nkey 2 {other} current\n").as_bytes(),
    );
    d.spawn().expect("starts with both keys");
    agent_code_matches(&d, &id, &raw(&s)).await.unwrap();
}

#[tokio::test]
async fn only_sudo_may_rotate_and_read_may_see_the_status() {
    let app = TestApp::new().await;
    // A local user without a token has the default policy: neither.
    let r = app
        .req_as(1000, "POST", "/v1/sys/keys/rotate", None, None)
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(r.vault_error(), "permission denied");
    let r = app.req_as(1000, "GET", "/v1/sys/keys", None, None).await;
    assert_eq!(r.status, 403, "{}", r.text);

    // Read on sys/keys and update (not sudo) on rotate: the status, but no rotation.
    let put = app
        .req(
            "PUT",
            "/v1/sys/policies/acl/keys-reader",
            Some(json!({"policy": "path \"sys/keys\" { capabilities = [\"read\"] }\npath \"sys/keys/rotate\" { capabilities = [\"update\", \"create\"] }\n"})),
            None,
        )
        .await;
    assert_eq!(put.status, 204, "{}", put.text);
    let reader = common::make_token(&app, json!({"policies": ["keys-reader"]})).await;
    let r = app
        .tcp_req(
            "GET",
            "/v1/sys/keys",
            &[("x-vault-token", reader.clone())],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["data"]["current_key_id"], 1);
    assert_eq!(r.json["data"]["key_ids"], json!([1]));
    assert_eq!(r.json["data"]["sealed_rows"], json!({"1": 1}));
    let r = app
        .tcp_req(
            "POST",
            "/v1/sys/keys/rotate",
            &[("x-vault-token", reader)],
            None,
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text);

    // Sudo on rotate: allowed (nothing to re-seal here, so nothing runs).
    let put = app
        .req(
            "PUT",
            "/v1/sys/policies/acl/keys-admin",
            Some(json!({"policy": "path \"sys/keys/rotate\" { capabilities = [\"update\", \"sudo\"] }\n"})),
            None,
        )
        .await;
    assert_eq!(put.status, 204, "{}", put.text);
    let admin = common::make_token(&app, json!({"policies": ["keys-admin"]})).await;
    let r = app
        .tcp_req(
            "POST",
            "/v1/sys/keys/rotate",
            &[("x-vault-token", admin)],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["data"]["rotation"]["running"], false);
    assert_eq!(r.json["data"]["old_rows"], 0);
    // Root over the socket may do both; a body that is no object is a 400.
    let r = app
        .raw(
            totpd::auth::Peer::Unix { uid: Some(0) },
            "POST",
            "/v1/sys/keys/rotate",
            &[],
            Some(b"[1]".to_vec()),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = app.req("GET", "/v1/sys/keys?list=true", None, None).await;
    assert_eq!(r.status, 405, "{}", r.text);
}

#[test]
fn key_generate_prints_a_ring_and_adds_to_one() {
    let run = |args: &[&str], stdin: &[u8]| {
        use std::io::Write;
        let mut child = std::process::Command::new(BIN)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    };
    // A new ring: one key, id 1, current.
    let out = run(&["key", "generate"], b"");
    assert!(out.status.success());
    let first = KeyRing::parse(&out.stdout).unwrap();
    assert_eq!((first.current(), first.ids()), (1, vec![1]));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("totpd-keyring v1\n"));
    // Added to (read from standard input): the old key kept, a new one current above it.
    let out = run(&["key", "generate", "--ring", "-"], &out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let second = KeyRing::parse(&out.stdout).unwrap();
    assert_eq!((second.current(), second.ids()), (2, vec![1, 2]));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let first_text = first.to_text();
    let first_key = first_text.lines().nth(1).unwrap();
    let kept = format!("{}\n", first_key.trim_end_matches(" current"));
    assert!(
        text.contains(&kept),
        "key 1 kept as it was, no longer current"
    );
    // A chosen id, and an id taken (usage: exit 2).
    let out = run(
        &["key", "generate", "--ring", "-", "--id", "7"],
        text.as_bytes(),
    );
    assert_eq!(KeyRing::parse(&out.stdout).unwrap().ids(), vec![1, 2, 7]);
    let out = run(
        &["key", "generate", "--ring", "-", "--id", "2"],
        text.as_bytes(),
    );
    assert_eq!(out.status.code(), Some(2));
    // An old single-key file is key 1 of the new ring.
    let hex = "cd".repeat(32);
    let out = run(&["key", "generate", "--ring", "-"], hex.as_bytes());
    let ring = KeyRing::parse(&out.stdout).unwrap();
    assert_eq!((ring.current(), ring.ids()), (2, vec![1, 2]));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("key 1 {hex}\n")));
    // A malformed ring: exit 1, the line named, no key echoed.
    let bad = format!("totpd-keyring v1\nkey 1 {hex} current\nkey 1 {hex}\n");
    let out = run(&["key", "generate", "--ring", "-"], bad.as_bytes());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3") && !err.contains(&hex), "{err}");
    assert!(out.stdout.is_empty());
}

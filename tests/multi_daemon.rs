//! Several daemons, one PostgreSQL database: the real binary, twice, each with its own
//! socket and data directory, sharing tokens, policies, secrets and their verification
//! state. Needs `TOTPD_TEST_POSTGRES` (`.ci/run` starts a throwaway cluster); skips
//! loudly without it outside CI.

mod common;
use common::postgres as pg;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{parse_otp_url, reference_totp, unix_now, Daemon};
use serde_json::json;

const MFA: &str = "/v1/identity/mfa/method/totp";

/// Two daemons on one fresh database, with one key ring between them (as every daemon on
/// a shared database must have), both also on TCP.
struct Pair {
    a: Arc<Daemon>,
    b: Arc<Daemon>,
    _db: pg::TestDb,
    _keys: tempfile::TempDir,
}

fn pair() -> Option<Pair> {
    let db = pg::TestDb::create()?;
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("totpd.key");
    let made = std::process::Command::new(common::BIN)
        .args(["key", "generate"])
        .output()
        .unwrap();
    assert!(made.status.success());
    std::fs::write(&key, &made.stdout).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let key = key.to_str().unwrap().to_string();
    let args = ["--database", db.url.as_str(), "--key-file", key.as_str()];
    let a = Daemon::start_with(&args, true);
    let b = Daemon::start_with(&args, true);
    Some(Pair {
        a: Arc::new(a),
        b: Arc::new(b),
        _db: db,
        _keys: keys,
    })
}

/// The value of one metric line, summed over the daemons.
async fn metric(ds: &[&Daemon], line: &str) -> u64 {
    let mut sum = 0;
    for d in ds {
        let text = d.req("GET", "/v1/sys/metrics", None, None).await.text;
        sum += text
            .lines()
            .find_map(|l| l.strip_prefix(line)?.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    sum
}

/// 32 validations of one right code split between two daemons: exactly one accepted.
/// 64 wrong codes split between them, on a method allowing 5 attempts: exactly 5 are
/// refused as invalid, 59 as locked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_code_once_and_every_failure_counted_across_two_daemons() {
    let Some(p) = pair() else { return };
    let r =
        p.a.req(
            "POST",
            MFA,
            Some(json!({"issuer": "Acme", "max_validation_attempts": 5})),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let method = r.json["data"]["method_id"].as_str().unwrap().to_string();
    let mut secrets = Vec::new();
    for entity in ["alice", "bob"] {
        // Enrolled on B: the method made on A is there.
        let r =
            p.b.req(
                "POST",
                &format!("{MFA}/admin-generate"),
                Some(json!({"method_id": method, "entity_id": entity})),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        secrets.push(parse_otp_url(r.json["data"]["url"].as_str().unwrap()).secret);
    }

    common::fresh_step(30, 5).await;
    let code = reference_totp(&secrets[0], "SHA1", 6, 30, unix_now());
    let mut tasks = Vec::new();
    for i in 0..32 {
        let d = if i % 2 == 0 { p.a.clone() } else { p.b.clone() };
        let (method, code) = (method.clone(), code.clone());
        tasks.push(tokio::spawn(async move {
            d.req(
                "POST",
                &format!("{MFA}/validate"),
                Some(json!({"method_id": method, "entity_id": "alice", "passcode": code})),
                None,
            )
            .await
            .status
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let tally = common::tally(&statuses);
    assert_eq!(tally.get(&200), Some(&1), "{tally:?}");
    assert_eq!(tally.get(&403), Some(&31), "{tally:?}");

    // Phase one as the metrics count it: one accepted; the other 31 are replays, five
    // of them counted as failures until the lock, the rest refused as locked.
    let ds = [p.a.as_ref(), p.b.as_ref()];
    let outcome =
        |o: &str| format!("totpd_verifications_total{{surface=\"vault_mfa\",outcome=\"{o}\"}}");
    assert_eq!(metric(&ds, &outcome("accepted")).await, 1);
    let before = (
        metric(&ds, &outcome("invalid")).await,
        metric(&ds, &outcome("locked")).await,
    );
    assert_eq!(
        metric(&ds, &outcome("replay")).await + before.1,
        31,
        "every other right code is refused, as a replay or as locked"
    );

    let right = reference_totp(&secrets[1], "SHA1", 6, 30, unix_now());
    let wrong = if right == "000000" {
        "111111"
    } else {
        "000000"
    };
    let mut tasks = Vec::new();
    for i in 0..64 {
        let d = if i % 2 == 0 { p.a.clone() } else { p.b.clone() };
        let method = method.clone();
        tasks.push(tokio::spawn(async move {
            d.req(
                "POST",
                &format!("{MFA}/validate"),
                Some(json!({"method_id": method, "entity_id": "bob", "passcode": wrong})),
                None,
            )
            .await
            .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 403);
    }
    assert_eq!(metric(&ds, &outcome("invalid")).await - before.0, 5);
    assert_eq!(metric(&ds, &outcome("locked")).await - before.1, 59);
    // And the right code is refused while locked, on either daemon.
    for d in ds {
        let r = d
            .req(
                "POST",
                &format!("{MFA}/validate"),
                Some(json!({"method_id": method, "entity_id": "bob", "passcode": right})),
                None,
            )
            .await;
        assert_eq!(r.status, 403, "{}", r.text);
    }
}

/// totpd keeps no cache of tokens or policies: a token revoked on A is refused on B at
/// once, and a policy changed on A takes effect on B at once (the bound is 0 s; the test
/// allows 1 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_or_a_policy_change_on_one_daemon_holds_on_the_other_at_once() {
    let Some(p) = pair() else { return };
    let doc = |caps: &[&str]| json!({"policy": {"path": {"sys/policies/acl/shared": {"capabilities": caps}}}});
    let r =
        p.a.req(
            "PUT",
            "/v1/sys/policies/acl/shared",
            Some(doc(&["read"])),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let tok = common::make_token(p.a.as_ref(), json!({"policies": ["shared"]})).await;
    let h = [("x-vault-token", tok.clone())];
    let read_on_b = || async {
        p.b.tcp_req("GET", "/v1/sys/policies/acl/shared", &h, None)
            .await
            .status
    };
    assert_eq!(read_on_b().await, 200);

    // A policy change on A.
    let r =
        p.a.req(
            "PUT",
            "/v1/sys/policies/acl/shared",
            Some(doc(&["deny"])),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let since = Instant::now();
    while read_on_b().await != 403 {
        assert!(
            since.elapsed() < Duration::from_secs(1),
            "policy change not seen on B"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r =
        p.a.req(
            "PUT",
            "/v1/sys/policies/acl/shared",
            Some(doc(&["read"])),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert_eq!(read_on_b().await, 200);

    // A revoke on A.
    let r =
        p.a.req(
            "POST",
            "/v1/auth/token/revoke",
            Some(json!({ "token": tok })),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let since = Instant::now();
    while read_on_b().await != 403 {
        assert!(
            since.elapsed() < Duration::from_secs(1),
            "revoke not seen on B"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// PostgreSQL goes away under load and comes back (through a proxy the test stops and
/// starts): no request got a 2xx whose write is missing afterwards, requests during the
/// outage got 503 (and health said so), both daemons recover without a restart, and a
/// code accepted before the outage is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_under_load_loses_no_acknowledged_write_and_the_daemons_recover() {
    let Some(db) = pg::TestDb::create() else {
        return;
    };
    let proxy = pg::PgProxy::start(&db.url).await;
    let url = proxy.url(&db.url);
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("totpd.key");
    let made = std::process::Command::new(common::BIN)
        .args(["key", "generate"])
        .output()
        .unwrap();
    std::fs::write(&key, &made.stdout).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let args = [
        "--database",
        url.as_str(),
        "--key-file",
        key.to_str().unwrap(),
    ];
    let a = Arc::new(Daemon::start_with(&args, false));
    let b = Arc::new(Daemon::start_with(&args, false));

    // Before: a code accepted on A.
    let r = a
        .req("POST", MFA, Some(json!({"issuer": "Acme"})), None)
        .await;
    let method = r.json["data"]["method_id"].as_str().unwrap().to_string();
    let r = a
        .req(
            "POST",
            &format!("{MFA}/admin-generate"),
            Some(json!({"method_id": method, "entity_id": "alice"})),
            None,
        )
        .await;
    let secret = parse_otp_url(r.json["data"]["url"].as_str().unwrap()).secret;
    common::fresh_step(30, 8).await;
    let code = reference_totp(&secret, "SHA1", 6, 30, unix_now());
    let validate = |d: Arc<Daemon>| {
        let (method, code) = (method.clone(), code.clone());
        async move {
            d.req(
                "POST",
                &format!("{MFA}/validate"),
                Some(json!({"method_id": method, "entity_id": "alice", "passcode": code})),
                None,
            )
            .await
            .status
        }
    };
    assert_eq!(validate(a.clone()).await, 200);

    // Load: agent secrets created on both daemons, each answer kept.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for i in 0..8 {
        let d = if i % 2 == 0 { a.clone() } else { b.clone() };
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let r = d
                    .req(
                        "POST",
                        "/api/v2/totp/secrets",
                        Some(json!({"secret": common::seed(20), "label": format!("l{i}-{n}")})),
                        None,
                    )
                    .await;
                let id = r.json["totp_secret"]["id"].as_str().map(str::to_string);
                seen.push((r.status, id));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    proxy.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = b.req("GET", "/v1/sys/health", None, None).await;
    assert_eq!(
        (r.status, &r.json["store_ok"]),
        (503, &json!(false)),
        "{}",
        r.text
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    proxy.restart().await;
    // Both recover by themselves.
    for d in [&a, &b] {
        let since = Instant::now();
        while d.req("GET", "/v1/sys/health", None, None).await.status != 200 {
            assert!(since.elapsed() < Duration::from_secs(20), "no recovery");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut created = Vec::new();
    let mut statuses = Vec::new();
    for t in load {
        for (status, id) in t.await.unwrap() {
            statuses.push(status);
            if status == 201 {
                created.push(id.expect("a 201 names its secret"));
            }
        }
    }
    let tally = common::tally(&statuses);
    assert!(
        tally.keys().all(|s| *s == 201 || *s == 503),
        "only 201 or 503: {tally:?}"
    );
    assert!(tally.get(&503).is_some_and(|n| *n > 0), "{tally:?}");
    assert!(tally.get(&201).is_some_and(|n| *n > 0), "{tally:?}");
    // Every acknowledged create is there, seen from either daemon.
    for d in [&a, &b] {
        let r = d.req("GET", "/api/v2/totp/secrets", None, None).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let listed: std::collections::HashSet<String> = r.json["totp_secrets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect();
        for id in &created {
            assert!(listed.contains(id), "acknowledged {id} is missing");
        }
    }
    // The code accepted before the outage is still spent, on either daemon.
    assert_eq!(validate(a.clone()).await, 403);
    assert_eq!(validate(b.clone()).await, 403);
}

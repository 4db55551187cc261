//! `totpd migrate`: a SQLite database moved whole into PostgreSQL.
//!
//! Against the real binary: a SQLite daemon holds secrets of every surface (an MFA
//! enrolment with one code already accepted, an agent secret, a TOTP engine key with a
//! wrong code tried, an active login device with recovery codes beside a pending one, a
//! temp_token), a token, a policy in HCL, Nitride tokens spent and unspent, and a
//! recorded backup; it is stopped and migrated; a daemon on the PostgreSQL database with
//! the same key file then accepts the same codes (checked with an independent TOTP
//! implementation), still refuses the code accepted before (replay) and the code tried
//! at the engine key, and honours the token, the policy, the Nitride token, the
//! temp_token and a recovery code. A target holding rows, a wrong key (for the source,
//! or a target made with another ring) and a running source are refused, with nothing
//! written. The URL's password never shows.
//!
//! At the store level: a dump loads row for row into an empty store of either backend
//! and is refused by a store holding rows; the SQLite case runs everywhere.
//!
//! The PostgreSQL cases need `TOTPD_TEST_POSTGRES` (`.ci/run` starts a throwaway
//! cluster); without it they skip loudly outside CI, and fail in CI.

mod common;
use common::postgres as pg;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::{fresh_step, make_token, reference_totp, unix_now, Daemon, BIN};
use serde_json::{json, Value};
use totpd::otp::{code_at, recovery, Outcome, Params};
use totpd::store::postgres::{PgOptions, PgStore};
use totpd::store::sqlite::{SqliteOptions, SqliteStore};
use totpd::store::{
    AgentSecretInfo, Check, EngineCheck, EngineKeyInfo, MethodRecord, MigrateStore, Proof,
    RecoveryHash, Sealer, Spend, Store, StoreDump, StoreError, TokenRecord,
};

const MFA: &str = "/v1/identity/mfa/method/totp";
const USER: &str = "/api/v1/auth/totp";
const HCL: &str = "# the app\npath \"sys/policies/acl/app\" {\n  capabilities = [\"read\"]\n}\n";
/// The password put into the test URLs: it must never show.
const PASSWORD: &str = "pw-Never-Shown-7";

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A new key ring in `dir`, mode 0600, as `totpd key generate` makes it.
fn key_ring(dir: &Path, name: &str) -> PathBuf {
    let out = Command::new(BIN)
        .args(["key", "generate"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let path = dir.join(name);
    std::fs::write(&path, &out.stdout).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// `url` with [`PASSWORD`] as its password, when it names a user on a Unix socket
/// without one (the test cluster trusts the socket, so the password goes unused).
fn with_password(url: &str) -> String {
    let Some(at) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[at..];
    match rest.find('@') {
        Some(i) if !rest[..i].contains(':') && rest[i + 1..].starts_with("%2F") => {
            format!("{}{}:{PASSWORD}{}", &url[..at], &rest[..i], &rest[i..])
        }
        _ => url.to_string(),
    }
}

/// The password in `url`, if any.
fn password_of(url: &str) -> Option<String> {
    url::Url::parse(url)
        .ok()?
        .password()
        .map(str::to_string)
        .filter(|p| !p.is_empty())
}

/// Runs `totpd migrate --from sqlite:DB --key-file KEY ARGS` with the URL in
/// `TOTPD_MIGRATE_TO`: exit code, stdout, stderr. Neither output may hold the URL's
/// password.
fn migrate(db: &Path, url: &str, key: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .arg("migrate")
        .arg("--from")
        .arg(format!("sqlite:{}", db.display()))
        .arg("--key-file")
        .arg(key)
        .args(args)
        .env("TOTPD_MIGRATE_TO", url)
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("TOTPD_SOCKET")
        .stdin(Stdio::null())
        .output()
        .expect("run totpd migrate");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    if let Some(p) = password_of(url) {
        assert!(!stdout.contains(&p), "the password shows: {stdout}");
        assert!(!stderr.contains(&p), "the password shows: {stderr}");
    }
    (out.status.code(), stdout, stderr)
}

/// Rows in `table` of a PostgreSQL database, or `None` when the table does not exist.
async fn pg_rows(url: &str, table: &str) -> Option<i64> {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    let exists: bool = c
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .unwrap()
        .get(0);
    let n = if exists {
        Some(
            c.query_one(&format!("SELECT count(*) FROM {table}"), &[])
                .await
                .unwrap()
                .get(0),
        )
    } else {
        None
    };
    task.abort();
    n
}

/// What the SQLite daemon was given to hold.
struct Held {
    method_id: String,
    /// alice's MFA secret (SHA256, 8 digits).
    mfa: Vec<u8>,
    agent_id: String,
    /// The agent secret (SHA512, 6 digits, 60 s).
    agent: Vec<u8>,
    /// The key `ci` of the TOTP engine's `totp` mount (SHA1, 6 digits, 30 s, skew 1).
    engine: Vec<u8>,
    /// A wrong code tried at it before the move.
    engine_wrong: String,
    /// alice's active login device (SHA1, 6 digits).
    device: Vec<u8>,
    /// alice's recovery codes: the first spent before the move.
    recovery: Vec<String>,
    /// A token for `app`, and a temp_token of alice, both made before the move.
    token: String,
    temp: String,
    /// Nitride tokens for `deploy`: one spent before the move, one not.
    spent_uuid: String,
    fresh_uuid: String,
    /// The time a backup was recorded.
    backup_at: i64,
    /// The step of alice's MFA code accepted just before the move.
    spent_step: u64,
    spent_code: String,
}

/// A token for `entity` (only `default`).
async fn entity_token(d: &Daemon, entity: &str) -> String {
    make_token(d, json!({"entity_id": entity, "policies": ["default"]})).await
}

async fn validate(d: &Daemon, method_id: &str, entity: &str, code: &str) -> u16 {
    let t = entity_token(d, entity).await;
    d.req(
        "POST",
        &format!("{MFA}/validate"),
        Some(json!({"method_id": method_id, "passcode": code})),
        Some(&t),
    )
    .await
    .status
}

async fn challenge(d: &Daemon) -> String {
    let r = d
        .req(
            "POST",
            &format!("{USER}/challenge/"),
            Some(json!({"user": "alice"})),
            None,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    r.json["temp_token"].as_str().unwrap().to_string()
}

async fn verify(d: &Daemon, temp: &str, code: &str) -> u16 {
    d.req(
        "POST",
        &format!("{USER}/verify/"),
        Some(json!({"temp_token": temp, "token": code})),
        None,
    )
    .await
    .status
}

async fn nitride_token(d: &Daemon) -> String {
    let r = d
        .req(
            "PUT",
            "/v1/auth/ratls/totp",
            Some(json!({"policy": "deploy", "expiration": unix_now() + 3600})),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json["data"]["uuid"].as_str().unwrap().to_string()
}

async fn spend(d: &Daemon, uuid: &str, tag: &str) -> u16 {
    let doc = json!({"path": {format!("secret/{tag}"): {"capabilities": ["read"]}}});
    d.req(
        "PUT",
        "/v1/sys/policies/acl/deploy",
        Some(json!({"policy": doc, "totp": uuid})),
        None,
    )
    .await
    .status
}

/// Fills `d` with something of every surface.
async fn fill(d: &Daemon) -> Held {
    let put = |name: &'static str, policy: Value| async move {
        let r = d
            .req(
                "PUT",
                &format!("/v1/sys/policies/acl/{name}"),
                Some(json!({ "policy": policy })),
                None,
            )
            .await;
        assert_eq!(r.status, 204, "{}", r.text);
    };
    put("app", json!(HCL)).await;
    put(
        "deploy",
        json!({"path": {"secret/v0": {"capabilities": ["read"]}}}),
    )
    .await;
    let token = make_token(
        d,
        json!({"policies": ["app"], "ttl": "2h", "renewable": true}),
    )
    .await;

    let r = d
        .req(
            "POST",
            MFA,
            Some(json!({"issuer": "Acme", "method_name": "acme", "algorithm": "SHA256", "digits": 8})),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let method_id = r.json["data"]["method_id"].as_str().unwrap().to_string();
    let mut mfa = Vec::new();
    for entity in ["alice", "bob"] {
        let r = d
            .req(
                "POST",
                &format!("{MFA}/admin-generate"),
                Some(json!({"method_id": method_id, "entity_id": entity})),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        if entity == "alice" {
            mfa = common::parse_otp_url(r.json["data"]["url"].as_str().unwrap()).secret;
        }
    }
    // One failure counted against bob.
    assert_eq!(validate(d, &method_id, "bob", "00000000").await, 403);

    let agent_b32 = common::seed(32);
    let r = d
        .req(
            "POST",
            "/api/v2/totp/secrets",
            Some(json!({"secret": agent_b32, "label": "ci: bot", "issuer": "Git Hub", "algorithm": "SHA512", "period": 60})),
            None,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let agent_id = r.json["totp_secret"]["id"].as_str().unwrap().to_string();

    // A key of the TOTP engine, and a wrong code tried at it (remembered as tried).
    let engine_b32 = common::seed(20);
    let r = d
        .req(
            "POST",
            "/v1/totp/keys/ci",
            Some(json!({"key": engine_b32, "issuer": "Acme", "account_name": "ci@example.com"})),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let engine = common::raw(&engine_b32);
    let t = unix_now();
    let near: Vec<String> = (0..5)
        .map(|i| reference_totp(&engine, "SHA1", 6, 30, t + i * 30 - 60))
        .collect();
    let engine_wrong = (0..10)
        .map(|i: u8| i.to_string().repeat(6))
        .find(|c| !near.contains(c))
        .unwrap();
    let r = d
        .req(
            "POST",
            "/v1/totp/code/ci",
            Some(json!({ "code": engine_wrong })),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["data"]["valid"], false, "{}", r.text);

    let alice = entity_token(d, "alice").await;
    fresh_step(30, 3).await;
    let r = d
        .req("POST", &format!("{USER}/setup/"), None, Some(&alice))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let device = common::raw(r.json["secret_key"].as_str().unwrap());
    let r = d
        .req(
            "POST",
            &format!("{USER}/activate/"),
            Some(json!({"token": reference_totp(&device, "SHA1", 6, 30, unix_now())})),
            Some(&alice),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let recovery: Vec<String> = serde_json::from_value(r.json["recovery_codes"].clone()).unwrap();
    // A pending second device.
    let r = d
        .req(
            "POST",
            &format!("{USER}/setup/"),
            Some(json!({"name": "spare"})),
            Some(&alice),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    // The first recovery code logs in once, here.
    let temp = challenge(d).await;
    assert_eq!(verify(d, &temp, &recovery[0]).await, 200);
    // One failure counted against alice.
    let wrong = challenge(d).await;
    assert_eq!(verify(d, &wrong, "00000").await, 401);
    // A temp_token left for after the move.
    let temp = challenge(d).await;

    let spent_uuid = nitride_token(d).await;
    assert_eq!(spend(d, &spent_uuid, "v1").await, 204);
    let fresh_uuid = nitride_token(d).await;

    // A backup, recorded in meta.
    let out = d
        .cli()
        .arg("backup")
        .arg(d.dir.path().join("backup.db"))
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let backup_at = serde_json::from_slice::<Value>(&out.stdout).unwrap()["taken_at_utc"]
        .as_i64()
        .unwrap();

    // Room for the move within the step of the code accepted now (and the next one,
    // which the method's skew of one step still accepts it in).
    fresh_step(30, 20).await;
    let now = unix_now();
    let spent_code = reference_totp(&mfa, "SHA256", 8, 30, now);
    assert_eq!(validate(d, &method_id, "alice", &spent_code).await, 200);
    Held {
        method_id,
        mfa,
        agent_id,
        agent: common::raw(&agent_b32),
        engine,
        engine_wrong,
        device,
        recovery,
        token,
        temp,
        spent_uuid,
        fresh_uuid,
        backup_at,
        spent_step: now / 30,
        spent_code,
    }
}

/// The agent secret's code as `d` gives it, against the reference at that moment.
async fn agent_code_matches(d: &Daemon, h: &Held) {
    let before = unix_now();
    let r = d
        .req(
            "GET",
            &format!("/api/v2/totp/code/{}", h.agent_id),
            None,
            None,
        )
        .await;
    let after = unix_now();
    assert_eq!(r.status, 200, "{}", r.text);
    let code = r.json["code"].as_str().unwrap();
    let refs = [before, after].map(|t| reference_totp(&h.agent, "SHA512", 6, 60, t));
    assert!(refs.iter().any(|c| c == code), "{code} vs {refs:?}");
}

/// The engine key's code as `d` gives it, against the reference at that moment.
async fn engine_code_matches(d: &Daemon, h: &Held) {
    let before = unix_now();
    let r = d.req("GET", "/v1/totp/code/ci", None, None).await;
    let after = unix_now();
    assert_eq!(r.status, 200, "{}", r.text);
    let code = r.json["data"]["code"].as_str().unwrap();
    let refs = [before, after].map(|t| reference_totp(&h.engine, "SHA1", 6, 30, t));
    assert!(refs.iter().any(|c| c == code), "{code} vs {refs:?}");
}

// ---------------------------------------------------------------------------------------
// The command
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_surface_moves_to_postgres_with_the_same_codes() {
    let Some(db) = pg::TestDb::create() else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let key = key_ring(keys.path(), "totpd.key");
    let key_arg = key.to_str().unwrap();
    let mut src = Daemon::start_with(&["--key-file", key_arg], false);
    let h = fill(&src).await;
    assert_eq!(src.stop(), Some(0));

    let url = with_password(&db.url);
    let sqlite = src.data_dir.join("totpd.db");
    let (code, out, err) = migrate(&sqlite, &url, &key, &["--json"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let v: Value = serde_json::from_str(&out).expect("one JSON object");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["counts_equal"], true, "{v}");
    assert_eq!(v["rows_equal"], true, "{v}");
    let tables = v["tables"].as_array().unwrap();
    assert_eq!(tables.len(), 14, "{v}");
    for t in tables {
        assert_eq!(t["source"], t["target"], "{t}");
        // Every table holds something: every surface moved.
        assert!(t["source"].as_u64().unwrap() > 0, "{t}");
    }
    let table = |name: &str| {
        tables.iter().find(|t| t["table"] == name).unwrap()["target"]
            .as_u64()
            .unwrap()
    };
    // alice's and bob's MFA secrets, the agent's, alice's two devices, the engine key.
    assert_eq!(table("otp_secrets"), 6);
    assert_eq!(table("engine_keys"), 1);
    assert_eq!(table("engine_tried_codes"), 1);
    assert_eq!(table("user_devices"), 2);
    assert_eq!(table("recovery_codes"), 10);
    assert_eq!(table("policy_tokens"), 2);
    // The key check and last_backup.
    assert_eq!(table("meta"), 2);
    assert_eq!(v["codes"]["secrets"], 6, "{v}");
    assert_eq!(v["codes"]["matched"], 6, "{v}");
    assert_eq!(v["to"], config_redacted(&url), "{v}");
    assert!(!err.contains("error"), "{err}");

    // A daemon on PostgreSQL with the same key file.
    let dst = Daemon::start_with(&["--database", url.as_str(), "--key-file", key_arg], true);
    assert!(
        !dst.stderr().contains(PASSWORD),
        "the daemon logged the password"
    );
    // Still within the spent step or the next: the code accepted before is a replay.
    assert!(
        unix_now() / 30 <= h.spent_step + 1,
        "the test took more than a step"
    );
    assert_eq!(
        validate(&dst, &h.method_id, "alice", &h.spent_code).await,
        403
    );
    agent_code_matches(&dst, &h).await;
    engine_code_matches(&dst, &h).await;
    // The engine key's wrong code, tried before the move, is refused as used.
    let r = dst
        .req(
            "POST",
            "/v1/totp/code/ci",
            Some(json!({ "code": h.engine_wrong })),
            None,
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("already used"), "{}", r.text);

    // The token, and the policy as written (HCL) that it holds.
    let auth = [("x-vault-token", h.token.clone())];
    let r = dst
        .tcp_req("GET", "/v1/sys/policies/acl/app", &auth, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["data"]["policy"], HCL);
    let r = dst
        .tcp_req("DELETE", "/v1/sys/policies/acl/app", &auth, None)
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    let r = dst
        .tcp_req("GET", "/v1/auth/token/lookup-self", &auth, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["data"]["renewable"], true, "{}", r.text);

    // Nitride: the spent token stays spent; the other spends once.
    assert_eq!(spend(&dst, &h.spent_uuid, "v2").await, 403);
    assert_eq!(spend(&dst, &h.fresh_uuid, "v3").await, 204);
    assert_eq!(spend(&dst, &h.fresh_uuid, "v4").await, 403);

    // The backup recorded before.
    let r = dst.req("GET", "/v1/sys/status", None, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["data"]["last_backup_utc"], h.backup_at, "{}", r.text);

    // Recovery codes: the one spent before stays spent, another logs in once.
    let temp = challenge(&dst).await;
    assert_eq!(verify(&dst, &temp, &h.recovery[0]).await, 401);
    let temp = challenge(&dst).await;
    assert_eq!(verify(&dst, &temp, &h.recovery[1]).await, 200);
    let temp = challenge(&dst).await;
    assert_eq!(verify(&dst, &temp, &h.recovery[1]).await, 401);

    // In a later step, the reference's codes are accepted: MFA, and the login device
    // with the temp_token made before the move.
    while unix_now() / 30 <= h.spent_step {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    fresh_step(30, 2).await;
    let now = unix_now();
    assert_eq!(
        validate(
            &dst,
            &h.method_id,
            "alice",
            &reference_totp(&h.mfa, "SHA256", 8, 30, now)
        )
        .await,
        200
    );
    assert_eq!(
        verify(
            &dst,
            &h.temp,
            &reference_totp(&h.device, "SHA1", 6, 30, now)
        )
        .await,
        200
    );
    agent_code_matches(&dst, &h).await;
}

/// The URL as `config::redact_url` shows it.
fn config_redacted(url: &str) -> String {
    totpd::config::redact_url(url)
}

/// A small SQLite daemon's database, stopped: one agent secret and a token.
async fn small_source(key: &Path) -> Daemon {
    let mut d = Daemon::start_with(&["--key-file", key.to_str().unwrap()], false);
    let r = d
        .req(
            "POST",
            "/api/v2/totp/secrets",
            Some(json!({"secret": common::seed(20), "label": "one"})),
            None,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    make_token(&d, json!({"policies": ["default"]})).await;
    assert_eq!(d.stop(), Some(0));
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_holding_rows_is_refused_and_left_as_it_was() {
    let Some(db) = pg::TestDb::create() else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let key = key_ring(keys.path(), "totpd.key");
    let src = small_source(&key).await;
    let sqlite = src.data_dir.join("totpd.db");
    let url = with_password(&db.url);
    // Human output this time.
    let (code, out, err) = migrate(&sqlite, &url, &key, &[]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        out.contains("Every row read back from the target equals the source's."),
        "{out}"
    );
    assert!(out.contains("1 of 1 secrets give the same code"), "{out}");
    assert!(out.contains("Success!"), "{out}");
    let before = pg_rows(&db.url, "tokens").await;

    let (code, out, err) = migrate(&sqlite, &url, &key, &[]);
    assert_eq!(code, Some(1), "{out}\n{err}");
    assert!(err.contains("is not empty"), "{err}");
    assert!(err.contains("otp_secrets: 1"), "{err}");
    assert!(err.contains("nothing was written"), "{err}");
    assert_eq!(pg_rows(&db.url, "tokens").await, before);
    assert_eq!(pg_rows(&db.url, "otp_secrets").await, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_refused_and_nothing_is_written() {
    let Some(db) = pg::TestDb::create() else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let key = key_ring(keys.path(), "totpd.key");
    let other = key_ring(keys.path(), "other.key");
    let src = small_source(&key).await;
    let sqlite = src.data_dir.join("totpd.db");
    let url = with_password(&db.url);

    // A key that does not open the source: refused before the target is touched.
    let (code, out, err) = migrate(&sqlite, &url, &other, &[]);
    assert_eq!(code, Some(1), "{out}\n{err}");
    assert!(err.contains("does not open"), "{err}");
    assert!(err.contains("other.key"), "{err}");
    assert!(err.contains("nothing was written"), "{err}");
    assert_eq!(pg_rows(&db.url, "otp_secrets").await, None);

    // A target made with another key ring (a daemon started on it, no rows).
    let mut d = Daemon::start_with(
        &[
            "--database",
            db.url.as_str(),
            "--key-file",
            other.to_str().unwrap(),
        ],
        false,
    );
    d.stop();
    let (code, out, err) = migrate(&sqlite, &url, &key, &[]);
    assert_eq!(code, Some(1), "{out}\n{err}");
    assert!(err.contains("does not open postgres"), "{err}");
    assert!(err.contains("nothing was written"), "{err}");
    assert_eq!(pg_rows(&db.url, "otp_secrets").await, Some(0));
    assert_eq!(pg_rows(&db.url, "meta").await, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_source_is_refused() {
    // The source is refused before any connection: an unreachable URL will do without
    // a test cluster, and a real one with it shows nothing was written.
    let db = pg::TestDb::create();
    let url = match &db {
        Some(db) => with_password(&db.url),
        None => format!("postgres://totpd:{PASSWORD}@127.0.0.1:1/totpd"),
    };
    let keys = tempfile::tempdir().unwrap();
    let key = key_ring(keys.path(), "totpd.key");
    let src = Daemon::start_with(&["--key-file", key.to_str().unwrap()], false);
    let sqlite = src.data_dir.join("totpd.db");
    let (code, out, err) = migrate(&sqlite, &url, &key, &[]);
    assert_eq!(code, Some(1), "{out}\n{err}");
    assert!(err.contains("is in use by another totpd"), "{err}");
    assert!(err.contains("stop the daemon"), "{err}");
    assert!(err.contains("nothing was written"), "{err}");
    if let Some(db) = &db {
        assert_eq!(pg_rows(&db.url, "otp_secrets").await, None);
    }
    // The daemon was not disturbed.
    let r = src.req("GET", "/v1/sys/health", None, None).await;
    assert_eq!(r.status, 200, "{}", r.text);

    // Usage errors: exit 2, the password not shown.
    let (code, _, err) = migrate(&sqlite, "mysql://u:pw-Never-Shown-7@h/d", &key, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(!err.contains(PASSWORD), "{err}");
    let (code, _, err) = migrate(&src.data_dir.join("none.db"), &url, &key, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no SQLite database"), "{err}");
}

// ---------------------------------------------------------------------------------------
// The stores
// ---------------------------------------------------------------------------------------

const NOW: i64 = 1_700_000_000;

fn sealer() -> Sealer {
    Sealer::new(&[7; 32])
}

fn sqlite_store(dir: &Path) -> Arc<SqliteStore> {
    SqliteStore::open(&SqliteOptions::new(dir.join("totpd.db")), sealer())
        .unwrap()
        .store
}

fn tok(hash: &str, parent: Option<&str>, expires_at: Option<i64>, created_at: i64) -> TokenRecord {
    TokenRecord {
        hash: hash.into(),
        accessor: format!("acc-{hash}"),
        entity_id: format!("entity-{hash}"),
        display_name: format!("token {hash}"),
        policies: vec!["default".into(), "app".into()],
        created_at,
        expires_at,
        parent: parent.map(|p| format!("acc-{p}")),
        renewable: expires_at.is_some(),
        creation_ttl: expires_at.map_or(0, |e| e - created_at),
        explicit_max_ttl: 7200,
        last_renewal: None,
    }
}

/// Something in every table, through the store's own operations.
async fn fill_store(s: &dyn Store) {
    s.put_policy("app", HCL, NOW).await.unwrap();
    s.create_token(&tok("root", None, None, NOW)).await.unwrap();
    s.create_token(&tok("child", Some("root"), Some(NOW + 3600), NOW))
        .await
        .unwrap();
    assert!(s.renew_token("child", NOW + 10, NOW + 4000).await.unwrap());
    // Expired already, and kept by the dump all the same.
    s.create_token(&tok("old", None, Some(NOW - 10), NOW - 100))
        .await
        .unwrap();

    for (i, spent) in [(0u8, true), (1, false)] {
        let hash = format!("{i:064x}");
        let t = totpd::store::PolicyTokenRecord {
            prefix: hash[..8].to_string(),
            hash: hash.clone(),
            mount: "ratls".into(),
            policy: "app".into(),
            created_at: NOW,
            expires_at: NOW + 600,
            spent_at: None,
        };
        s.create_policy_token(&t).await.unwrap();
        if spent {
            assert_eq!(
                s.spend_policy_token_and_update(&hash, "app", HCL, NOW + 1)
                    .await
                    .unwrap(),
                Spend::Spent
            );
        }
    }

    let m = MethodRecord {
        id: "method-1".into(),
        name: Some("acme".into()),
        issuer: "Acme".into(),
        params: Params::new("SHA256", 8, 30).unwrap(),
        key_size: 20,
        qr_size: 200,
        skew: 1,
        max_validation_attempts: 5,
        created_at: NOW,
    };
    s.create_method(&m).await.unwrap();
    for entity in ["alice", "bob"] {
        let secret = match s.create_mfa_secret(&m.id, entity, NOW).await.unwrap() {
            totpd::store::Enrollment::Created { secret, .. } => secret,
            other => panic!("{other:?}"),
        };
        let code = if entity == "alice" {
            code_at(&secret, &m.params, NOW)
        } else {
            "0000000".into() // malformed: counted
        };
        s.check_and_record_mfa_code(&m.id, entity, &code, NOW)
            .await
            .unwrap();
    }

    let info = AgentSecretInfo {
        id: "agent-1".into(),
        label: "ci: bot".into(),
        issuer: None,
        params: Params::new("SHA512", 6, 60).unwrap(),
        created_at: NOW,
    };
    s.create_agent_secret("uid:0", &info, &[9; 32])
        .await
        .unwrap();

    // Engine keys in two mounts; at the `totp` one a right code and a wrong one tried.
    for (mount, name, skew) in [("totp", "acct", 0), ("ci-totp", "zeta", 1)] {
        let k = EngineKeyInfo {
            mount: mount.into(),
            name: name.into(),
            issuer: "Acme".into(),
            account_name: format!("{name}@example.com"),
            params: Params::new("SHA1", 6, 30).unwrap(),
            skew,
            created_at: NOW,
        };
        s.put_engine_key(&k, &[name.len() as u8; 20]).await.unwrap();
    }
    let (right, wrong) = engine_codes();
    for (code, want) in [
        (&right, Outcome::Accepted { step: NOW / 30 }),
        (&wrong, Outcome::Refused(totpd::otp::Refusal::Invalid)),
    ] {
        assert_eq!(
            s.check_and_record_engine_code("totp", "acct", code, NOW)
                .await
                .unwrap(),
            EngineCheck::Checked(want)
        );
    }

    let device = [3u8; 20];
    let p = Params::new("SHA1", 6, 30).unwrap();
    s.setup_user_device("alice", None, "dev-1", &device, &p, NOW)
        .await
        .unwrap();
    let codes: Vec<RecoveryHash> = tokio::task::block_in_place(|| {
        recovery::generate_set()
            .unwrap()
            .iter()
            .take(2)
            .map(|c| RecoveryHash {
                selector: c.selector.clone(),
                hash: recovery::hash(c).unwrap(),
            })
            .collect()
    });
    assert_eq!(
        s.activate_user_device("alice", None, &code_at(&device, &p, NOW), Some(&codes), NOW)
            .await
            .unwrap(),
        totpd::store::Activation::Activated { first: true }
    );
    // A pending second device.
    s.setup_user_device("alice", Some("spare"), "dev-2", &[4; 20], &p, NOW)
        .await
        .unwrap();
    let owner = Proof::Owner { entity_id: "alice" };
    assert_eq!(
        s.spend_recovery_code(owner, &codes[0].selector, true, NOW + 1)
            .await
            .unwrap(),
        Check::Accepted
    );
    assert!(matches!(
        s.check_user_code(owner, "12345", NOW + 2).await.unwrap(),
        Check::Refused(_)
    ));
    assert!(s
        .create_temp_token("alice", "temp-1", NOW, NOW + 300)
        .await
        .unwrap());
    s.record_backup(NOW - 50).await.unwrap();
}

/// The right code of the `totp` engine key `acct` at NOW, and a wrong one.
fn engine_codes() -> (String, String) {
    let right = code_at(&[4; 20], &Params::new("SHA1", 6, 30).unwrap(), NOW);
    let wrong = if right == "000000" {
        "111111"
    } else {
        "000000"
    };
    (right, wrong.to_string())
}

/// Every secret's code at `t`, opened with the test's key.
fn codes(d: &StoreDump, t: i64) -> Vec<(String, String)> {
    d.otp_secrets
        .iter()
        .map(|s| (s.id.clone(), s.code_at(&sealer(), t).unwrap()))
        .collect()
}

/// Checks `d` holds the fill: something in every table but nothing of the key check.
fn check_filled(d: &StoreDump) {
    for (table, n) in d.counts() {
        assert!(n > 0, "{table} is empty");
    }
    assert!(d.meta.iter().all(|m| m.key != "key_check"));
    assert_eq!(d.tokens.len(), 3);
    assert_eq!(d.otp_secrets.len(), 7);
    let keys: Vec<(&str, &str)> = d
        .engine_keys
        .iter()
        .map(|k| (k.mount.as_str(), k.name.as_str()))
        .collect();
    assert_eq!(keys, [("ci-totp", "zeta"), ("totp", "acct")]);
    assert_eq!(d.engine_tried_codes.len(), 2);
    let names: Vec<&str> = d.user_devices.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["default", "spare"]);
}

/// The moved store behaves as the source: alice's code of NOW is a replay, and the
/// loaded store refuses a second load.
async fn check_moved<S: Store + MigrateStore + ?Sized>(s: &S, d: &StoreDump) {
    let alice = d
        .otp_secrets
        .iter()
        .find(|x| {
            d.mfa_secrets
                .iter()
                .any(|m| m.secret_id == x.id && m.entity_id == "alice")
        })
        .unwrap();
    let code = alice.code_at(&sealer(), NOW).unwrap();
    assert_eq!(
        s.check_and_record_mfa_code("method-1", "alice", &code, NOW + 1)
            .await
            .unwrap(),
        Outcome::Refused(totpd::otp::Refusal::Replay)
    );
    // The engine key's codes tried before are refused as used.
    let (right, wrong) = engine_codes();
    for code in [right, wrong] {
        assert_eq!(
            s.check_and_record_engine_code("totp", "acct", &code, NOW + 1)
                .await
                .unwrap(),
            EngineCheck::Repeat
        );
    }
    assert_eq!(s.get_policy("app").await.unwrap().as_deref(), Some(HCL));
    let e = s.load_all(d).await.unwrap_err();
    assert!(
        matches!(&e, StoreError::Setup(m) if m.contains("not empty")),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_loads_row_for_row_into_an_empty_sqlite_store_and_not_into_a_full_one() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let src = sqlite_store(a.path());
    fill_store(src.as_ref()).await;
    let d = src.dump_all().await.unwrap();
    check_filled(&d);

    let dst = sqlite_store(b.path());
    dst.load_all(&d).await.unwrap();
    let back = dst.dump_all().await.unwrap();
    assert_eq!(d.differing_tables(&back), Vec::<&str>::new());
    assert_eq!(back, d);
    assert_eq!(codes(&back, NOW + 90), codes(&d, NOW + 90));
    check_moved(dst.as_ref(), &d).await;

    // A store with another key: the sealed values do not open there.
    let other = tempfile::tempdir().unwrap();
    let wrong = SqliteStore::open(
        &SqliteOptions::new(other.path().join("totpd.db")),
        Sealer::new(&[8; 32]),
    )
    .unwrap()
    .store;
    wrong.load_all(&d).await.unwrap();
    let loaded = wrong.dump_all().await.unwrap();
    assert!(matches!(
        loaded.otp_secrets[0].code_at(&Sealer::new(&[8; 32]), NOW),
        Err(StoreError::WrongKey)
    ));
    for s in [src, dst, wrong] {
        tokio::task::block_in_place(|| s.close());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_loads_row_for_row_into_an_empty_postgres_database_and_back() {
    let Some(db) = pg::TestDb::create() else {
        return;
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let src = sqlite_store(a.path());
    fill_store(src.as_ref()).await;
    let d = src.dump_all().await.unwrap();
    check_filled(&d);

    let pg = PgStore::open(&PgOptions::new(&db.url).unwrap(), sealer())
        .await
        .unwrap()
        .store;
    pg.load_all(&d).await.unwrap();
    let back = pg.dump_all().await.unwrap();
    assert_eq!(d.differing_tables(&back), Vec::<&str>::new());
    assert_eq!(back, d);
    assert_eq!(codes(&back, NOW + 90), codes(&d, NOW + 90));
    // The devices keep their order, and a device made later comes after them.
    let devices = |s: Arc<PgStore>| async move {
        use totpd::store::UserTotpStore;
        s.list_user_devices("alice")
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.name)
            .collect::<Vec<_>>()
    };
    assert_eq!(devices(pg.clone()).await, ["default", "spare"]);
    {
        use totpd::store::UserTotpStore;
        let p = Params::new("SHA1", 6, 30).unwrap();
        pg.setup_user_device("alice", Some("later"), "dev-3", &[5; 20], &p, NOW)
            .await
            .unwrap();
    }
    assert_eq!(devices(pg.clone()).await, ["default", "spare", "later"]);
    check_moved(pg.as_ref(), &d).await;

    // And back into SQLite, from PostgreSQL's dump (the moved store's state included).
    let later = pg.dump_all().await.unwrap();
    let sq = sqlite_store(b.path());
    sq.load_all(&later).await.unwrap();
    assert_eq!(sq.dump_all().await.unwrap(), later);
    pg.close();
    for s in [src, sq] {
        tokio::task::block_in_place(|| s.close());
    }
}

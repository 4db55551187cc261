//! The audit log and the operator's unlock: one JSON line per decision (and never a
//! code, seed, token, temp_token, recovery code or otpauth URI in it, nor in the log),
//! SIGHUP reopening the file, an unwritable file shown in health and metrics and
//! handled as `--audit-fail` says, and admin unlock (sudo) letting the right code in at
//! once after a lockout, for Vault MFA secrets and for login-step users.
//!
//! What only a process shows runs against the real binary (`common::Daemon`); the rest
//! in-process (`common::app::TestApp`).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::app::TestApp;
use common::{make_token, parse_otp_url, reference_totp, unix_now, Daemon, Resp};
use serde_json::{json, Value};

const MFA: &str = "/v1/identity/mfa/method/totp";
const USER: &str = "/api/v1/auth/totp";

/// This test process's entity over the socket (the daemon runs as this uid, so the
/// socket gives it the root policy).
fn me() -> String {
    format!("uid:{}", nix::unistd::getuid().as_raw())
}

/// A daemon writing its audit log to `<tmp>/audit.log`, with these extra flags (and the
/// temporary directory, which lives as long as it is held).
fn daemon_with_audit(extra: &[&str]) -> (Daemon, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let mut args = vec!["--audit-file", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    (Daemon::start_with(&args, false), path, dir)
}

/// The decision lines of an audit file (its `audit.open` lines left out), parsed.
fn decisions(path: &Path) -> Vec<Value> {
    all_lines(path)
        .into_iter()
        .filter(|l| l["action"] != "audit.open")
        .collect()
}

fn all_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Waits (at most 10 s) until `f` holds.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// (action, result, reason) of each line.
fn summary(lines: &[Value]) -> Vec<(String, String, String)> {
    lines
        .iter()
        .map(|l| {
            (
                l["action"].as_str().unwrap().to_string(),
                l["result"].as_str().unwrap().to_string(),
                l["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// A 6-digit code that none of these steps of `secret` (30 s, SHA1) gives.
fn wrong_code(secret: &[u8], steps: &[u64]) -> String {
    let right: Vec<String> = steps
        .iter()
        .map(|s| reference_totp(secret, "SHA1", 6, 30, s * 30))
        .collect();
    (0..10)
        .map(|d: u32| d.to_string().repeat(6))
        .find(|c| !right.contains(c))
        .unwrap()
}

/// Whether `code` (digits) occurs in `text` as a number of its own: not inside a longer
/// run of digits, and not as the fraction of a timestamp (`.123456Z`).
fn has_code(text: &str, code: &str) -> bool {
    let b = text.as_bytes();
    text.match_indices(code).any(|(i, _)| {
        let before = i.checked_sub(1).map(|j| b[j]);
        let after = b.get(i + code.len()).copied();
        !before.is_some_and(|c| c.is_ascii_digit() || c == b'.')
            && !after.is_some_and(|c| c.is_ascii_digit())
    })
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

async fn metrics(d: &Daemon) -> String {
    let r = d.req("GET", "/v1/sys/metrics", None, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.text
}

fn run_cli(d: &Daemon, args: &[&str]) -> std::process::Output {
    let out = d.cli().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "totpd {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_session_leaves_one_line_per_decision_and_no_secret_anywhere() {
    let (mut d, path, _dir) = daemon_with_audit(&[]);
    let me = me();
    // Everything that must never reach the audit file or the log.
    let mut secrets: Vec<String> = vec![d.root_token()];
    let mut codes: Vec<String> = Vec::new();

    // A policy, and a token that holds only `default` (for the refusals below).
    let doc = json!({"path": {"secret/app/*": {"capabilities": ["read"]}}});
    let r = d
        .req(
            "PUT",
            "/v1/sys/policies/acl/deploy",
            Some(json!({ "policy": doc })),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let plain = make_token(&d, json!({"policies": ["default"]})).await;
    secrets.push(plain.clone());

    // ----- Vault MFA: create, generate, validate right / replayed / wrong, lock out -----
    let r = d
        .req(
            "POST",
            MFA,
            Some(json!({"issuer": "Acme", "method_name": "audit"})),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.json["data"]["method_id"].as_str().unwrap().to_string();
    let r = d
        .req(
            "POST",
            &format!("{MFA}/generate"),
            Some(json!({ "method_id": id })),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let url = r.json["data"]["url"].as_str().unwrap().to_string();
    let otp = parse_otp_url(&url);
    secrets.push(otp.secret_b32.clone());
    secrets.push(url.clone());

    common::fresh_step(30, 3).await;
    let t0 = unix_now();
    let step = t0 / 30;
    let c0 = reference_totp(&otp.secret, "SHA1", 6, 30, t0);
    let c1 = reference_totp(&otp.secret, "SHA1", 6, 30, t0 + 30);
    let wrong = wrong_code(&otp.secret, &[step - 1, step, step + 1, step + 2]);
    codes.extend([c0.clone(), c1.clone(), wrong.clone()]);
    let validate = |code: &str| {
        let body = json!({"method_id": id, "passcode": code});
        let d = &d;
        async move {
            d.req("POST", &format!("{MFA}/validate"), Some(body), None)
                .await
                .status
        }
    };
    assert_eq!(validate(&c0).await, 200);
    assert_eq!(validate(&c0).await, 403, "a replay");
    // The replay was the first failure; four wrong codes make five, and lock.
    for _ in 0..4 {
        assert_eq!(validate(&wrong).await, 403);
    }
    assert_eq!(validate(&c1).await, 403, "locked: even the right code");
    // A caller without sudo cannot unlock.
    let r = d
        .req(
            "POST",
            &format!("{MFA}/admin-unlock"),
            Some(json!({"method_id": id, "entity_id": me})),
            Some(&plain),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    let out = run_cli(&d, &["mfa", "unlock", "--method", &id, "--entity", &me]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("Success! Unlocked") && said.contains("it was locked"),
        "{said}"
    );
    assert_eq!(
        validate(&c1).await,
        200,
        "unlocked: the right code gets in at once"
    );

    // ----- the user login step: setup, activate, challenge, verify (code, recovery) -----
    let r = d.req("POST", &format!("{USER}/setup/"), None, None).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let key_b32 = r.json["secret_key"].as_str().unwrap().to_string();
    secrets.push(key_b32.clone());
    secrets.push(r.json["provisioning_uri"].as_str().unwrap().to_string());
    let dev = common::raw(&key_b32);
    common::fresh_step(30, 3).await;
    let t1 = unix_now();
    let u0 = reference_totp(&dev, "SHA1", 6, 30, t1);
    let u1 = reference_totp(&dev, "SHA1", 6, 30, t1 + 30);
    let s1 = t1 / 30;
    let uwrong = wrong_code(&dev, &[s1 - 1, s1, s1 + 1, s1 + 2]);
    codes.extend([u0.clone(), u1.clone(), uwrong.clone()]);
    let r = d
        .req(
            "POST",
            &format!("{USER}/activate/"),
            Some(json!({"token": u0})),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let recovery: Vec<String> = serde_json::from_value(r.json["recovery_codes"].clone()).unwrap();
    assert_eq!(recovery.len(), 10);
    secrets.extend(recovery.iter().cloned());
    secrets.extend(recovery.iter().map(|c| c.replace('-', "")));
    let challenge = || async {
        let r = d
            .req(
                "POST",
                &format!("{USER}/challenge/"),
                Some(json!({ "user": me })),
                None,
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        r.json["temp_token"].as_str().unwrap().to_string()
    };
    let verify = |temp: &str, token: &str| {
        let body = json!({"temp_token": temp, "token": token});
        let d = &d;
        async move {
            d.req("POST", &format!("{USER}/verify/"), Some(body), None)
                .await
        }
    };
    let temp1 = challenge().await;
    let r = verify(&temp1, &u1).await;
    assert_eq!(r.status, 200, "{}", r.text);
    secrets.push(r.json["key"].as_str().unwrap().to_string());
    let temp2 = challenge().await;
    secrets.extend([temp1, temp2.clone()]);
    for _ in 0..5 {
        assert_eq!(verify(&temp2, &uwrong).await.status, 401);
    }
    assert_eq!(
        verify(&temp2, &recovery[0]).await.status,
        401,
        "locked: even a right recovery code"
    );
    let r = d
        .req(
            "POST",
            &format!("{USER}/unlock/"),
            Some(json!({ "user": me })),
            Some(&plain),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    let out = run_cli(&d, &["user", "unlock", &me]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("Success! Unlocked user") && said.contains("it was locked"),
        "{said}"
    );
    let r = verify(&temp2, &recovery[0]).await;
    assert_eq!(
        r.status, 200,
        "unlocked: the recovery code gets in at once: {}",
        r.text
    );
    secrets.push(r.json["key"].as_str().unwrap().to_string());

    // ----- Nitride: create and spend; tokens: create and revoke; an agent secret -----
    let r = d
        .req(
            "PUT",
            "/v1/auth/ratls/totp",
            Some(json!({"policy": "deploy", "expiration": unix_now() + 600})),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let uuid = r.json["data"]["uuid"].as_str().unwrap().to_string();
    secrets.push(uuid.clone());
    secrets.push(uuid.replace('-', ""));
    let r = d
        .req(
            "PUT",
            "/v1/sys/policies/acl/deploy",
            Some(json!({"policy": doc.to_string(), "totp": uuid})),
            Some(&plain),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let r = d
        .req(
            "POST",
            "/v1/auth/token/create",
            Some(json!({"policies": ["deploy"]})),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let token = r.json["auth"]["client_token"].as_str().unwrap().to_string();
    let accessor = r.json["auth"]["accessor"].as_str().unwrap().to_string();
    secrets.push(token.clone());
    let r = d
        .req(
            "POST",
            "/v1/auth/token/revoke",
            Some(json!({ "token": token })),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let seed = common::seed(20);
    secrets.push(seed.clone());
    let r = d
        .req(
            "POST",
            "/api/v2/totp/secrets",
            Some(json!({"secret": seed, "label": "ci"})),
            None,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let agent_id = r.json["totp_secret"]["id"].as_str().unwrap().to_string();
    let r = d
        .req("GET", &format!("/api/v2/totp/code/{agent_id}"), None, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    codes.push(r.json["code"].as_str().unwrap().to_string());
    let r = d
        .req(
            "DELETE",
            &format!("/api/v2/totp/secrets/{agent_id}"),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    // Lock-outs are counted when they begin; every line reached the file.
    let m = metrics(&d).await;
    assert_eq!(metric(&m, "totpd_lockouts_total{surface=\"vault_mfa\"}"), 1);
    assert_eq!(metric(&m, "totpd_lockouts_total{surface=\"user_totp\"}"), 1);
    assert_eq!(metric(&m, "totpd_audit_write_failures_total"), 0);
    // A stop writes what is queued.
    assert_eq!(d.stop(), Some(0));

    let lines = decisions(&path);
    let s = |a: &str, r: &str, why: &str| (a.to_string(), r.to_string(), why.to_string());
    let mut expected = vec![
        s("policy.write", "ok", "ok"),
        s("token.create", "ok", "ok"),
        s("mfa.method.create", "ok", "ok"),
        s("mfa.generate", "ok", "ok"),
        s("mfa.validate", "ok", "ok"),
        s("mfa.validate", "refused", "replay"),
    ];
    expected.extend(std::iter::repeat_n(
        s("mfa.validate", "refused", "invalid"),
        4,
    ));
    expected.extend([
        s("mfa.validate", "refused", "locked"),
        s("mfa.admin_unlock", "denied", "permission"),
        s("mfa.admin_unlock", "ok", "ok"),
        s("mfa.validate", "ok", "ok"),
        s("user.setup", "ok", "ok"),
        s("user.activate", "ok", "ok"),
        s("user.challenge", "ok", "ok"),
        s("user.verify", "ok", "ok"),
        s("user.challenge", "ok", "ok"),
    ]);
    expected.extend(std::iter::repeat_n(
        s("user.verify", "refused", "invalid"),
        5,
    ));
    expected.extend([
        s("user.verify", "refused", "locked"),
        s("user.unlock", "denied", "permission"),
        s("user.unlock", "ok", "ok"),
        s("user.verify", "ok", "ok"),
        s("nitride.token.create", "ok", "ok"),
        s("nitride.spend", "ok", "ok"),
        s("token.create", "ok", "ok"),
        s("token.revoke", "ok", "ok"),
        s("agent.secret.create", "ok", "ok"),
        s("agent.secret.delete", "ok", "ok"),
    ]);
    assert_eq!(summary(&lines), expected, "{lines:#?}");

    // Every line says when, which request, who, which route and what about.
    for l in &lines {
        let time = l["time"].as_str().unwrap();
        assert!(time.ends_with('Z') && time.contains('T'), "{l}");
        let unix = l["unix"].as_u64().unwrap();
        assert!(unix.abs_diff(unix_now()) < 600, "{l}");
        assert!(!l["request_id"].as_str().unwrap().is_empty(), "{l}");
        assert!(l["route"].as_str().unwrap().starts_with('/'), "{l}");
        assert!(l["object"].is_object(), "{l}");
    }
    let by =
        |action: &str| -> Vec<&Value> { lines.iter().filter(|l| l["action"] == action).collect() };
    assert!(by("mfa.validate")
        .iter()
        .all(|l| l["object"] == json!({"method_id": id, "entity_id": me})
            && l["entity"] == me.as_str()));
    assert_eq!(
        by("mfa.admin_unlock")[0]["accessor"].as_str().map(str::len),
        Some(32),
        "the caller's accessor"
    );
    assert_eq!(by("mfa.admin_unlock")[0]["object"], json!({}));
    assert_eq!(by("mfa.validate")[0]["route"], format!("{MFA}/validate"));
    let logins = by("user.verify");
    assert_eq!(logins[0]["object"]["with"], "totp");
    assert_eq!(logins[0]["object"]["user"], me.as_str());
    assert_eq!(logins.last().unwrap()["object"]["with"], "recovery_code");
    assert!(
        logins.last().unwrap()["object"]["accessor"].is_string(),
        "the login key's accessor"
    );
    assert_eq!(by("nitride.spend")[0]["object"]["token"], &uuid[..8]);
    assert_eq!(by("nitride.spend")[0]["object"]["policy"], "deploy");
    assert_eq!(
        by("nitride.spend")[0]["accessor"],
        by("mfa.admin_unlock")[0]["accessor"]
    );
    assert_eq!(
        by("token.revoke")[0]["object"]["accessor"],
        accessor.as_str()
    );
    assert_eq!(
        by("token.create")[1]["object"]["accessor"],
        accessor.as_str()
    );
    assert_eq!(
        by("agent.secret.create")[0]["object"]["secret_id"],
        agent_id.as_str()
    );

    // Nothing secret, in the audit file or in the daemon's log.
    let audit_text = std::fs::read_to_string(&path).unwrap();
    let log = d.stderr();
    for (name, text) in [("audit file", &audit_text), ("stderr", &log)] {
        for secret in &secrets {
            for form in [secret.clone(), secret.to_lowercase(), secret.to_uppercase()] {
                assert!(!text.contains(&form), "{name} holds a secret: {form}");
            }
        }
        for code in &codes {
            assert!(!has_code(text, code), "{name} holds the code {code}");
        }
        assert!(!text.contains("otpauth"), "{name} holds an otpauth URI");
        assert!(!text.contains("secret="), "{name} holds a URI's secret");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reopens_the_audit_file() {
    let (d, path, _dir) = daemon_with_audit(&[]);
    let write = |name: &str| {
        let body = json!({"policy": {"path": {"a/*": {"capabilities": ["read"]}}}});
        let path = format!("/v1/sys/policies/acl/{name}");
        let d = &d;
        async move { assert_eq!(d.req("PUT", &path, Some(body), None).await.status, 204) }
    };
    write("before").await;
    eventually("the first line", || decisions(&path).len() == 1).await;

    // As logrotate does: move the file away, then SIGHUP.
    let rotated = path.with_extension("log.1");
    std::fs::rename(&path, &rotated).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.pid()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    eventually("a new file at the path", || path.exists()).await;
    write("after").await;
    eventually("the next line in the new file", || {
        decisions(&path).len() == 1
    })
    .await;

    let new = all_lines(&path);
    assert_eq!(
        new[0]["action"], "audit.open",
        "the new file says why it began"
    );
    assert_eq!(new[0]["reason"], "sighup");
    assert_eq!(decisions(&path)[0]["object"]["policy"], "after");
    let old = decisions(&rotated);
    assert_eq!(old.len(), 1);
    assert_eq!(old[0]["object"]["policy"], "before");
    // Created 0600.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // The daemon is still serving: SIGHUP does not stop it.
    let r = d.req("GET", "/v1/sys/health", None, None).await;
    assert_eq!(r.json["audit_ok"], true);
}

/// Creates a method and a secret for this process's entity: (method id, secret).
async fn mfa_secret(d: &Daemon) -> (String, Vec<u8>) {
    let r = d
        .req("POST", MFA, Some(json!({"issuer": "Acme"})), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.json["data"]["method_id"].as_str().unwrap().to_string();
    let r = d
        .req(
            "POST",
            &format!("{MFA}/generate"),
            Some(json!({ "method_id": id })),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let otp = parse_otp_url(r.json["data"]["url"].as_str().unwrap());
    (id, otp.secret)
}

async fn validate(d: &Daemon, id: &str, secret: &[u8], t: u64) -> Resp {
    let code = reference_totp(secret, "SHA1", 6, 30, t);
    d.req(
        "POST",
        &format!("{MFA}/validate"),
        Some(json!({"method_id": id, "passcode": code})),
        None,
    )
    .await
}

async fn audit_ok(d: &Daemon) -> bool {
    let r = d.req("GET", "/v1/sys/health", None, None).await;
    assert_eq!(r.status, 200, "health stays 200: {}", r.text);
    r.json["audit_ok"].as_bool().expect("audit_ok in health")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_open_by_default_counted_and_shown_in_health() {
    let d = Daemon::start_with(&["--audit-file", "/dev/full"], false);
    assert!(!audit_ok(&d).await, "the start's line could not be written");
    let before = metric(&metrics(&d).await, "totpd_audit_write_failures_total");
    assert!(before >= 1, "the start's line counts");

    // Decisions proceed, and each lost line is counted and goes to stderr instead.
    let (id, secret) = mfa_secret(&d).await;
    common::fresh_step(30, 3).await;
    let r = validate(&d, &id, &secret, unix_now()).await;
    assert_eq!(r.status, 200, "fail-open: {}", r.text);
    let failures = || async { metric(&metrics(&d).await, "totpd_audit_write_failures_total") };
    let deadline = Instant::now() + Duration::from_secs(10);
    // The method's creation, the secret's generation, the validation.
    while failures().await < before + 3 {
        assert!(Instant::now() < deadline, "each lost line is counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!audit_ok(&d).await);
    let log = d.stderr();
    assert!(
        log.lines()
            .any(|l| l.contains("totpd::audit") && l.contains("\"action\":\"mfa.validate\"")),
        "the lost line went to stderr:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_closed_with_503_in_the_surface_shape() {
    let d = Daemon::start_with(
        &["--audit-file", "/dev/full", "--audit-fail", "closed"],
        false,
    );
    assert!(!audit_ok(&d).await);
    assert!(metric(&metrics(&d).await, "totpd_audit_write_failures_total") >= 1);
    // Every decision is turned away, in its surface's shape, with Retry-After.
    let r = d
        .req(
            "POST",
            &format!("{MFA}/validate"),
            Some(json!({"method_id": uuid::Uuid::new_v4(), "passcode": "123456"})),
            None,
        )
        .await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert!(r.vault_error().contains("audit"), "{}", r.text);
    assert_eq!(r.headers["retry-after"], "1");
    let r = d
        .req(
            "POST",
            &format!("{USER}/verify/"),
            Some(json!({"temp_token": "t", "token": "123456"})),
            None,
        )
        .await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(
        r.json["code"], "service_unavailable",
        "DRF's shape: {}",
        r.text
    );
    // Reads are no decisions: they go on.
    let r = d
        .req("GET", "/v1/sys/policies/acl?list=true", None, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_path_that_becomes_a_directory_fails_until_fixed() {
    for closed in [false, true] {
        let extra: &[&str] = if closed {
            &["--audit-fail", "closed"]
        } else {
            &[]
        };
        let (d, path, _dir) = daemon_with_audit(extra);
        let (id, secret) = mfa_secret(&d).await;
        assert!(audit_ok(&d).await);
        // The file is replaced by a directory, and logrotate's SIGHUP cannot reopen it.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(d.pid()),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while audit_ok(&d).await {
            assert!(Instant::now() < deadline, "health shows the failure");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let failed = metric(&metrics(&d).await, "totpd_audit_write_failures_total");
        assert!(failed >= 1, "the reopen's line counts");
        common::fresh_step(30, 3).await;
        let r = validate(&d, &id, &secret, unix_now()).await;
        if closed {
            assert_eq!(r.status, 503, "fail-closed: {}", r.text);
            assert_eq!(r.headers["retry-after"], "1");
        } else {
            assert_eq!(r.status, 200, "fail-open: {}", r.text);
        }
        // Fixed: the daemon retries every second on its own, and writes again.
        std::fs::remove_dir(&path).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !audit_ok(&d).await {
            assert!(Instant::now() < deadline, "health recovers");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let r = validate(&d, &id, &secret, unix_now() + 30).await;
        assert_eq!(r.status, 200, "{}", r.text);
        eventually("the validation in the new file", || {
            decisions(&path)
                .iter()
                .any(|l| l["action"] == "mfa.validate")
        })
        .await;
        assert_eq!(all_lines(&path)[0]["reason"], "retry");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_sink_writes_lines_on_stderr_under_their_own_target() {
    let d = Daemon::start_with(&["--audit", "journal"], false);
    let body = json!({"policy": {"path": {"a/*": {"capabilities": ["read"]}}}});
    let r = d
        .req("PUT", "/v1/sys/policies/acl/journaled", Some(body), None)
        .await;
    assert_eq!(r.status, 204);
    let log = d.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("totpd::audit"))
        .unwrap_or_else(|| panic!("no audit line:\n{log}"));
    // tracing's prefix (time, level, the request's span, the target), then the line.
    let json_part = &line[line.find("{\"time\"").unwrap()..];
    let v: Value = serde_json::from_str(json_part).unwrap();
    assert_eq!(v["action"], "policy.write");
    assert_eq!(v["object"]["policy"], "journaled");
    assert!(audit_ok(&d).await);
    // --dev alone audits nothing.
    let quiet = Daemon::start();
    let r = quiet
        .req(
            "PUT",
            "/v1/sys/policies/acl/quiet",
            Some(json!({"policy": {"path": {}}})),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    assert!(!quiet.stderr().contains("totpd::audit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_file_that_cannot_be_opened_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir").join("audit.log");
    let mut d = Daemon::start();
    d.stop();
    d.extra = vec!["--audit-file".into(), missing.display().to_string()];
    let e = d.spawn().unwrap_err();
    assert!(e.contains("cannot open the audit file"), "{e}");
}

// ----- admin unlock, in-process -----

/// A default-policy socket peer: no sudo anywhere.
const PLAIN: u32 = 2001;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mfa_admin_unlock_needs_sudo_a_method_and_a_secret() {
    let app = TestApp::new().await;
    let r = app
        .req("POST", MFA, Some(json!({"issuer": "Acme"})), None)
        .await;
    let id = r.json["data"]["method_id"].as_str().unwrap().to_string();
    let unlock = |uid: u32, body: Value| {
        let app = &app;
        async move {
            app.req_as(
                uid,
                "POST",
                &format!("{MFA}/admin-unlock"),
                Some(body),
                None,
            )
            .await
        }
    };
    // Not enrolled yet.
    let r = unlock(0, json!({"method_id": id, "entity_id": "alice"})).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.vault_error().contains("no TOTP secret"), "{}", r.text);
    let r = unlock(
        0,
        json!({"method_id": uuid::Uuid::new_v4(), "entity_id": "alice"}),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text);
    let r = unlock(0, json!({"method_id": "nope", "entity_id": "alice"})).await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = unlock(0, json!({ "method_id": id })).await;
    assert_eq!(r.status, 400, "{}", r.text);

    let r = app
        .req(
            "POST",
            &format!("{MFA}/admin-generate"),
            Some(json!({"method_id": id, "entity_id": "alice"})),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // Without sudo: 403, for a peer and for a token that may update but not sudo.
    let r = unlock(PLAIN, json!({"method_id": id, "entity_id": "alice"})).await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(r.vault_error(), "permission denied");
    let policy = json!({"policy": {"path": {"identity/mfa/method/totp/*": {"capabilities": ["create", "update"]}}}});
    let r = app
        .req("PUT", "/v1/sys/policies/acl/mfa-ops", Some(policy), None)
        .await;
    assert_eq!(r.status, 204);
    let ops = make_token(&app, json!({"policies": ["mfa-ops"]})).await;
    let r = app
        .tcp_req(
            "POST",
            &format!("{MFA}/admin-unlock"),
            &[("x-vault-token", ops)],
            Some(json!({"method_id": id, "entity_id": "alice"})),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text);

    // Nothing to unlock is still a success, and says so.
    let r = unlock(0, json!({"method_id": id, "entity_id": "alice"})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["data"]["was_locked"], false);
    assert_eq!(r.json["data"]["failures"], 0);
    assert_eq!(r.json["data"]["entity_id"], "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mfa_admin_unlock_lets_the_right_code_in_at_once() {
    let app = TestApp::new().await;
    let r = app
        .req(
            "POST",
            MFA,
            Some(json!({"issuer": "Acme", "max_validation_attempts": 3})),
            None,
        )
        .await;
    let id = r.json["data"]["method_id"].as_str().unwrap().to_string();
    let r = app
        .req(
            "POST",
            &format!("{MFA}/admin-generate"),
            Some(json!({"method_id": id, "entity_id": "alice"})),
            None,
        )
        .await;
    let otp = parse_otp_url(r.json["data"]["url"].as_str().unwrap());
    common::fresh_step(30, 3).await;
    let t = unix_now();
    let right = reference_totp(&otp.secret, "SHA1", 6, 30, t);
    let wrong = wrong_code(&otp.secret, &[t / 30 - 1, t / 30, t / 30 + 1]);
    let validate = |code: &str| {
        let body = json!({"method_id": id, "passcode": code, "entity_id": "alice"});
        let app = &app;
        async move {
            app.req("POST", &format!("{MFA}/validate"), Some(body), None)
                .await
                .status
        }
    };
    for _ in 0..3 {
        assert_eq!(validate(&wrong).await, 403);
    }
    assert_eq!(validate(&right).await, 403, "locked");
    let r = app
        .req(
            "POST",
            &format!("{MFA}/admin-unlock"),
            Some(json!({"method_id": id, "entity_id": "alice"})),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["data"]["was_locked"], true);
    assert_eq!(validate(&right).await, 200, "in at once");
    assert_eq!(validate(&right).await, 403, "and still used once only");
    let counts = totpd::store::Store::lockouts(app.store.as_ref());
    assert_eq!(counts.vault_mfa, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_unlock_needs_sudo_and_lets_the_right_code_in_at_once() {
    let app = TestApp::new().await;
    let unlock = |uid: u32, body: Value| {
        let app = &app;
        async move {
            app.req_as(uid, "POST", &format!("{USER}/unlock/"), Some(body), None)
                .await
        }
    };
    let alice = format!("uid:{PLAIN}");
    // A user with no device: nothing to unlock.
    let r = unlock(0, json!({ "user": alice })).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(
        r.json["user"][0]
            .as_str()
            .unwrap()
            .contains("no two-factor device"),
        "{}",
        r.text
    );
    let r = unlock(0, json!({})).await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (400, Some("required")),
        "{}",
        r.text
    );

    common::fresh_step(30, 3).await;
    let r = app
        .req_as(PLAIN, "POST", &format!("{USER}/setup/"), None, None)
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let secret = common::raw(r.json["secret_key"].as_str().unwrap());
    let t = unix_now();
    let r = app
        .req_as(
            PLAIN,
            "POST",
            &format!("{USER}/activate/"),
            Some(json!({"token": reference_totp(&secret, "SHA1", 6, 30, t)})),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    // The user may not unlock themself.
    let r = unlock(PLAIN, json!({ "user": alice })).await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(r.json["code"], "permission_denied");

    let r = app
        .req(
            "POST",
            &format!("{USER}/challenge/"),
            Some(json!({ "user": alice })),
            None,
        )
        .await;
    let temp = r.json["temp_token"].as_str().unwrap().to_string();
    let right = reference_totp(&secret, "SHA1", 6, 30, t + 30);
    let wrong = wrong_code(&secret, &[t / 30 - 1, t / 30, t / 30 + 1, t / 30 + 2]);
    let verify = |code: &str| {
        let body = json!({"temp_token": temp, "token": code});
        let app = &app;
        async move {
            app.tcp_req("POST", &format!("{USER}/verify/"), &[], Some(body))
                .await
                .status
        }
    };
    for _ in 0..5 {
        assert_eq!(verify(&wrong).await, 401);
    }
    assert_eq!(verify(&right).await, 401, "locked");
    let r = unlock(0, json!({ "user": alice })).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["was_locked"], true);
    assert_eq!(r.json["user"], alice.as_str());
    assert_eq!(verify(&right).await, 200, "in at once");
    let counts = totpd::store::Store::lockouts(app.store.as_ref());
    assert_eq!(counts.user_totp, 1);
}

/// Vault's TOTP engine under the real binary: every decision audited (the key and the
/// outcome, never a code or a key), a lock lifted by `totpd totp unlock`, and neither
/// the audit file nor the daemon's log holding a key or a code.
#[tokio::test]
async fn engine_keys_audited_unlocked_by_the_cli_and_never_logged() {
    let (d, audit, _dir) = daemon_with_audit(&[]);
    let r = d
        .req(
            "POST",
            "/v1/totp/keys/ci-deploy",
            Some(json!({"generate": true, "issuer": "CI", "account_name": "deploy", "skew": 0})),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let u = parse_otp_url(r.json["data"]["url"].as_str().unwrap());
    let imported = common::seed(20);
    let r = d
        .req(
            "POST",
            "/v1/totp/keys/other",
            Some(json!({"key": imported})),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);

    common::fresh_step(30, 8).await;
    let now = unix_now();
    let right = reference_totp(&u.secret, "SHA1", 6, 30, now);
    let step = now / 30;
    let wrongs: Vec<String> = (0..10u32)
        .map(|k| k.to_string().repeat(6))
        .filter(|c| *c != right)
        .take(5)
        .collect();
    let validate = |code: String| {
        let d = &d;
        async move {
            d.req(
                "POST",
                "/v1/totp/code/ci-deploy",
                Some(json!({ "code": code })),
                None,
            )
            .await
        }
    };
    let shown = d.req("GET", "/v1/totp/code/ci-deploy", None, None).await;
    assert_eq!(shown.json["data"]["code"], right.as_str());
    for w in &wrongs {
        assert_eq!(validate(w.clone()).await.json["data"]["valid"], false);
    }
    let r = validate(right.clone()).await;
    assert_eq!(
        (r.status, &r.json["data"]["valid"]),
        (200, &json!(false)),
        "locked"
    );
    let out = run_cli(&d, &["totp", "unlock", "ci-deploy"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("Success! Unlocked key ci-deploy of mount totp (it was locked)"),
        "{said}"
    );
    let out = run_cli(&d, &["totp", "unlock", "ci-deploy", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v, json!({"was_locked": false, "failures": 0}));
    let missing = d.cli().args(["totp", "unlock", "nope"]).output().unwrap();
    assert!(!missing.status.success());
    assert_eq!(
        String::from_utf8_lossy(&missing.stderr).trim(),
        "totpd: unknown key: nope"
    );
    assert_eq!(
        unix_now() / 30,
        step,
        "still the same step (fresh_step left 8 s)"
    );
    assert_eq!(validate(right.clone()).await.json["data"]["valid"], true);
    assert_eq!(validate(right.clone()).await.status, 400, "used");
    let r = d.req("DELETE", "/v1/totp/keys/other", None, None).await;
    assert_eq!(r.status, 204);

    eventually("the engine's audit lines", || {
        decisions(&audit)
            .iter()
            .filter(|l| l["action"].as_str().unwrap_or("").starts_with("totp."))
            .count()
            >= 12
    })
    .await;
    let lines: Vec<Value> = decisions(&audit)
        .into_iter()
        .filter(|l| l["action"].as_str().unwrap_or("").starts_with("totp."))
        .collect();
    let s = |a: &str, r: &str, why: &str| (a.to_string(), r.to_string(), why.to_string());
    let mut want = vec![
        s("totp.key.create", "ok", "ok"),
        s("totp.key.create", "ok", "ok"),
    ];
    want.extend((0..5).map(|_| s("totp.validate", "refused", "invalid")));
    want.push(s("totp.validate", "refused", "locked"));
    want.push(s("totp.unlock", "ok", "ok"));
    want.push(s("totp.unlock", "ok", "not_locked"));
    want.push(s("totp.validate", "ok", "ok"));
    want.push(s("totp.validate", "refused", "repeat"));
    want.push(s("totp.key.delete", "ok", "ok"));
    assert_eq!(summary(&lines), want);
    assert_eq!(
        lines[0]["object"],
        json!({"mount": "totp", "name": "ci-deploy"})
    );

    let log = d.stderr();
    let audit_text = std::fs::read_to_string(&audit).unwrap();
    for (name, text) in [("the daemon's log", &log), ("the audit file", &audit_text)] {
        for secret in [u.secret_b32.as_str(), imported.as_str()] {
            assert!(!text.contains(secret), "{name} holds a key");
        }
        for code in wrongs.iter().chain([&right]) {
            assert!(!has_code(text, code), "{name} holds the code {code}");
        }
    }
}

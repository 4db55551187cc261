//! Vault's TOTP secrets engine (`/v1/totp/...`): a script written from Vault's API
//! documentation for the engine (generate with a QR image, import by key and by URL,
//! read, list, delete, codes, validation), then what totpd adds underneath: a code
//! accepted once under concurrency and across a restart, a lock that keeps Vault's
//! answer shape, mounts, ACL paths, and bad input. Driven in-process on a temporary
//! store (SQLite, or PostgreSQL with `TOTPD_TEST_STORE=postgres`).
//!
//! The same script against OpenBao's real engine, call by call, is in
//! `tests/py/totp_engine_compare.py` (run by `tests/clients.rs`).

mod common;

use std::sync::Arc;

use common::app::TestApp;
use common::{contains, decode_qr, fresh_step, parse_otp_url, reference_totp, unix_now, OtpUrl};
use serde_json::{json, Value};

const KEYS: &str = "/v1/totp/keys";
const CODE: &str = "/v1/totp/code";

fn code(u: &OtpUrl, t: u64) -> String {
    reference_totp(&u.secret, &u.algorithm, u.digits, u.period, t)
}

/// Generates `name` as root, returning the answer's URL, parsed.
async fn generate(app: &TestApp, name: &str, extra: Value) -> OtpUrl {
    let mut body =
        json!({"generate": true, "issuer": "Acme", "account_name": format!("{name}@example.com")});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let r = app
        .req("POST", &format!("{KEYS}/{name}"), Some(body), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    parse_otp_url(r.json["data"]["url"].as_str().unwrap())
}

async fn validate(app: &TestApp, name: &str, code: &str) -> common::Resp {
    app.req(
        "POST",
        &format!("{CODE}/{name}"),
        Some(json!({ "code": code })),
        None,
    )
    .await
}

/// A six-digit code wrong for `u` now and either side.
fn wrong(u: &OtpUrl) -> String {
    let now = unix_now();
    let right: Vec<String> = [now - u.period, now, now + u.period]
        .iter()
        .map(|t| code(u, *t))
        .collect();
    (0..10)
        .map(|d: u32| d.to_string().repeat(u.digits as usize))
        .find(|c| !right.contains(c))
        .unwrap()
}

#[tokio::test]
async fn the_documented_script() {
    let app = TestApp::new().await;
    fresh_step(30, 4).await;

    // Generate, exported: a QR image of the URL, qr_size pixels square.
    let r = app
        .req(
            "POST",
            &format!("{KEYS}/my-key"),
            Some(json!({"generate": true, "issuer": "Google", "account_name": "test@gmail.com"})),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    for k in [
        "request_id",
        "lease_id",
        "renewable",
        "lease_duration",
        "wrap_info",
        "warnings",
        "auth",
    ] {
        assert!(r.json.get(k).is_some(), "envelope lacks {k}");
    }
    let url = r.json["data"]["url"].as_str().unwrap().to_string();
    let (w, h, text) = decode_qr(r.json["data"]["barcode"].as_str().unwrap());
    assert_eq!((w, h, text.as_str()), (200, 200, url.as_str()));
    let u = parse_otp_url(&url);
    assert_eq!(u.label, "Google:test@gmail.com");
    assert_eq!(
        (u.issuer.as_str(), u.algorithm.as_str(), u.digits, u.period),
        ("Google", "SHA1", 6, 30)
    );
    assert_eq!(u.secret.len(), 20, "key_size defaults to 20 bytes");

    // Read: the parameters, never the key.
    let r = app.req("GET", &format!("{KEYS}/my-key"), None, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.json["data"],
        json!({"account_name": "test@gmail.com", "algorithm": "SHA1", "digits": 6, "issuer": "Google", "period": 30})
    );
    assert!(!r.text.contains(&u.secret_b32));

    // Import by key, and by URL (whose parameters win).
    let imported = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
    let r = app
        .req(
            "POST",
            &format!("{KEYS}/by-key"),
            Some(json!({"key": imported, "issuer": "Vault", "account_name": "bob"})),
            None,
        )
        .await;
    assert_eq!((r.status, r.text.as_str()), (204, ""));
    let r = app
        .req(
            "POST",
            &format!("{KEYS}/by-url"),
            Some(json!({"url": format!("otpauth://totp/Acme:carol?secret={imported}&issuer=Acme&period=60&digits=8&algorithm=SHA256")})),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let r = app.req("GET", &format!("{KEYS}/by-url"), None, None).await;
    assert_eq!(
        r.json["data"],
        json!({"account_name": "carol", "algorithm": "SHA256", "digits": 8, "issuer": "Acme", "period": 60})
    );

    // List, as LIST and as ?list=true: byte order.
    for (method, path) in [
        ("LIST", KEYS.to_string()),
        ("GET", format!("{KEYS}?list=true")),
    ] {
        let r = app.req(method, &path, None, None).await;
        assert_eq!(r.status, 200, "{method} {}", r.text);
        assert_eq!(
            r.json["data"]["keys"],
            json!(["by-key", "by-url", "my-key"])
        );
    }

    // Codes match an independent RFC 6238 implementation.
    let now = unix_now();
    let r = app.req("GET", &format!("{CODE}/my-key"), None, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let d = &r.json["data"];
    assert_eq!(d["code"], code(&u, now));
    assert_eq!(d["period"], "30s");
    let generated = d["generated"].as_i64().unwrap();
    assert!((generated - now as i64).abs() <= 1);
    assert_eq!(
        d["expire_time"].as_i64().unwrap(),
        (generated / 30 + 1) * 30
    );
    assert_eq!(
        d["expires_in"].as_i64().unwrap(),
        d["expire_time"].as_i64().unwrap() - generated
    );
    let by_url = OtpUrl {
        secret: common::raw(imported),
        algorithm: "SHA256".into(),
        digits: 8,
        period: 60,
        ..parse_otp_url(&url)
    };
    let r = app.req("GET", &format!("{CODE}/by-url"), None, None).await;
    assert_eq!(r.json["data"]["code"], code(&by_url, unix_now()));
    assert_eq!(
        r.json["data"]["period"], "1m0s",
        "Go's duration format, as Vault prints it"
    );

    // Validate: right (true), the same again (used), wrong (false), wrong again (used).
    let right = code(&u, unix_now());
    let r = validate(&app, "my-key", &right).await;
    assert_eq!(
        (r.status, &r.json["data"]),
        (200, &json!({"valid": true})),
        "{}",
        r.text
    );
    let r = validate(&app, "my-key", &right).await;
    assert_eq!(
        (r.status, &r.json),
        (
            400,
            &json!({"errors": ["code already used; wait until the next time period"]})
        )
    );
    let bad = wrong(&u);
    let r = validate(&app, "my-key", &bad).await;
    assert_eq!(
        (r.status, &r.json["data"]),
        (200, &json!({"valid": false})),
        "{}",
        r.text
    );
    let r = validate(&app, "my-key", &bad).await;
    assert_eq!(
        r.status, 400,
        "a wrong code tried twice is used too: {}",
        r.text
    );

    // Delete: 204, then 404 with no error text, as Vault; a second delete is 204 too.
    for _ in 0..2 {
        let r = app
            .req("DELETE", &format!("{KEYS}/my-key"), None, None)
            .await;
        assert_eq!(r.status, 204, "{}", r.text);
    }
    let r = app.req("GET", &format!("{KEYS}/my-key"), None, None).await;
    assert_eq!((r.status, &r.json), (404, &json!({"errors": []})));
    let r = app.req("GET", &format!("{CODE}/my-key"), None, None).await;
    assert_eq!(
        (r.status, &r.json),
        (400, &json!({"errors": ["unknown key: my-key"]}))
    );
}

#[tokio::test]
async fn generate_options_and_exported_false() {
    let app = TestApp::new().await;
    // Not exported: 204 and nothing shown; the key works all the same.
    let r = app
        .req(
            "POST",
            &format!("{KEYS}/hidden"),
            Some(json!({"generate": true, "issuer": "A", "account_name": "b", "exported": false})),
            None,
        )
        .await;
    assert_eq!((r.status, r.text.as_str()), (204, ""));
    let r = app.req("GET", &format!("{CODE}/hidden"), None, None).await;
    assert_eq!(r.status, 200);
    // qr_size 0: the URL only, no barcode field (as Vault).
    let r = app
        .req(
            "POST",
            &format!("{KEYS}/noqr"),
            Some(json!({"generate": true, "issuer": "A", "account_name": "b", "qr_size": 0})),
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.json["data"].get("barcode").is_none() && r.json["data"]["url"].is_string());
    // Every parameter, as the Vault CLI sends them (strings).
    let u = generate(
        &app,
        "custom",
        json!({"key_size": "32", "period": "1m", "algorithm": "SHA512", "digits": "8", "skew": "0", "qr_size": "300"}),
    )
    .await;
    assert_eq!(
        (u.secret.len(), u.period, u.digits, u.algorithm.as_str()),
        (32, 60, 8, "SHA512")
    );
    // Re-creating a name replaces the key, as Vault's engine does.
    let again = generate(&app, "custom", json!({})).await;
    assert_ne!(again.secret, u.secret);
    let r = app.req("GET", &format!("{KEYS}/custom"), None, None).await;
    assert_eq!(
        (
            r.json["data"]["digits"].as_u64(),
            r.json["data"]["period"].as_u64()
        ),
        (Some(6), Some(30))
    );
}

#[tokio::test]
async fn bad_input_gets_vaults_messages_and_changes_nothing() {
    let app = TestApp::new().await;
    let cases = [
        (
            json!({"generate": true, "account_name": "a"}),
            "the issuer value is required for generated keys",
        ),
        (
            json!({"generate": true, "issuer": "a"}),
            "the account_name value is required for generated keys",
        ),
        (
            json!({"generate": true, "issuer": "a", "account_name": "b", "key": "JBSWY3DPEHPK3PXP"}),
            "a key should not be passed if generate is true",
        ),
        (
            json!({"generate": true, "issuer": "a", "account_name": "b", "url": "otpauth://totp/a:b?secret=JBSWY3DPEHPK3PXP"}),
            "a url should not be passed if generate is true",
        ),
        (
            json!({"generate": true, "issuer": "a", "account_name": "b", "digits": 7}),
            "the digits value can only be 6 or 8",
        ),
        (
            json!({"generate": true, "issuer": "a", "account_name": "b", "algorithm": "MD5"}),
            "the algorithm value is not valid",
        ),
        (
            json!({"generate": true, "issuer": "a", "account_name": "b", "period": 0}),
            "the period value must be greater than zero",
        ),
        (
            json!({"generate": true, "issuer": "a", "account_name": "b", "skew": 2}),
            "the skew value must be 0 or 1",
        ),
        (
            json!({"generate": true, "issuer": "a", "account_name": "b", "qr_size": -1}),
            "the qr_size value must be greater than or equal to zero",
        ),
        (
            json!({"generate": true, "issuer": "a", "account_name": "b", "key_size": 0}),
            "the key_size value must be greater than zero",
        ),
        (json!({"issuer": "a"}), "the key value is required"),
    ];
    for (body, msg) in cases {
        let r = app
            .req("POST", &format!("{KEYS}/k"), Some(body.clone()), None)
            .await;
        assert_eq!(
            (r.status, &r.json),
            (400, &json!({"errors": [msg]})),
            "{body}"
        );
    }
    for body in [
        json!({"key": "not base32!"}),
        json!({"url": "https://example.com"}),
        json!({"url": "otpauth://hotp/a:b?secret=JBSWY3DPEHPK3PXP"}),
        json!({"generate": true, "issuer": "a", "account_name": "b", "key_size": 4096}),
        json!({"generate": true, "issuer": "a", "account_name": "b", "period": 86_401}),
        json!({"generate": true, "issuer": "a\u{0}", "account_name": "b"}),
        json!({"generate": "maybe", "issuer": "a", "account_name": "b"}),
        json!({"digits": "x", "key": "JBSWY3DPEHPK3PXP"}),
    ] {
        let r = app
            .req("POST", &format!("{KEYS}/k"), Some(body.clone()), None)
            .await;
        assert_eq!(r.status, 400, "{body}: {}", r.text);
        assert!(r.json["errors"][0].is_string(), "{}", r.text);
        assert!(
            !r.text.contains("JBSWY3DPEHPK3PXP"),
            "a key never comes back in an error"
        );
    }
    let r = app
        .raw(
            totpd::auth::Peer::Unix { uid: Some(0) },
            "POST",
            &format!("{KEYS}/k"),
            &[],
            Some(b"{not json".to_vec()),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    // Nothing was stored by any of them.
    let r = app.req("LIST", KEYS, None, None).await;
    assert_eq!((r.status, &r.json), (404, &json!({"errors": []})));

    // Names Vault's engine does not take, and mounts this daemon does not serve.
    for path in [
        "/v1/totp/keys/-bad",
        "/v1/totp/keys/a%20b",
        "/v1/totp/code/x.",
        "/v1/nothere/keys/a",
    ] {
        let r = app.req("GET", path, None, None).await;
        assert_eq!(r.status, 404, "{path}: {}", r.text);
        assert!(r.json["errors"].is_array());
    }
    // Codes of the wrong form, in Vault's order: unknown key first.
    let u = generate(&app, "v", json!({})).await;
    for (code, msg) in [
        ("", "the code value is required"),
        ("12345", "invalid number of digits for the code"),
        (" 123456", "invalid number of digits for the code"),
        ("12345678", "invalid number of digits for the code"),
    ] {
        let r = validate(&app, "v", code).await;
        assert_eq!(
            (r.status, &r.json),
            (400, &json!({"errors": [msg]})),
            "{code:?}"
        );
        let r = validate(&app, "none", code).await;
        assert_eq!(
            (r.status, &r.json),
            (400, &json!({"errors": ["unknown key: none"]})),
            "{code:?}"
        );
    }
    // Six characters, not digits: Vault checks them and answers false; then used.
    let r = validate(&app, "v", "abcdef").await;
    assert_eq!((r.status, &r.json["data"]), (200, &json!({"valid": false})));
    assert_eq!(validate(&app, "v", "abcdef").await.status, 400);
    let _ = u;
}

#[tokio::test]
async fn sixteen_parallel_validations_of_one_code_one_true() {
    let app = Arc::new(TestApp::new().await);
    let u = generate(&app, "race", json!({})).await;
    fresh_step(30, 5).await;
    let right = code(&u, unix_now());
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (app, right) = (app.clone(), right.clone());
            tokio::spawn(async move { validate(&app, "race", &right).await })
        })
        .collect();
    let mut valid = 0;
    let mut used = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            200 if r.json["data"]["valid"] == true => valid += 1,
            400 if r.json["errors"][0] == "code already used; wait until the next time period" => {
                used += 1
            }
            _ => panic!("unexpected answer {} {}", r.status, r.text),
        }
    }
    assert_eq!((valid, used), (1, 15));
}

#[tokio::test]
async fn a_used_code_stays_used_after_a_restart() {
    let mut app = TestApp::new().await;
    let u = generate(&app, "durable", json!({})).await;
    fresh_step(30, 4).await;
    let right = code(&u, unix_now());
    assert_eq!(
        validate(&app, "durable", &right).await.json["data"]["valid"],
        true
    );
    app.reopen().await;
    let r = validate(&app, "durable", &right).await;
    assert_eq!(
        r.status, 400,
        "OpenBao forgets used codes on restart; totpd does not: {}",
        r.text
    );
    // The code of an earlier step, never tried, is a replay too (RFC 6238 §5.2).
    let earlier = code(&u, unix_now() - 30);
    if earlier != right {
        assert_eq!(validate(&app, "durable", &earlier).await.status, 400);
    }
}

#[tokio::test]
async fn a_lock_keeps_vaults_answers_and_unlock_lifts_it() {
    let app = TestApp::new().await;
    let u = generate(&app, "locked", json!({"skew": 0})).await;
    fresh_step(30, 6).await;
    let right = code(&u, unix_now());
    let wrongs: Vec<String> = (0..10)
        .map(|d: u32| d.to_string().repeat(6))
        .filter(|c| *c != right)
        .take(5)
        .collect();
    for w in &wrongs {
        assert_eq!(
            validate(&app, "locked", w).await.json["data"]["valid"],
            false
        );
    }
    // Five failures lock the key: the right code gets the shape of a wrong one.
    let r = validate(&app, "locked", &right).await;
    assert_eq!(
        (r.status, &r.json["data"]),
        (200, &json!({"valid": false})),
        "{}",
        r.text
    );
    let r = app
        .req("POST", &format!("{KEYS}/locked/unlock"), None, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["data"]["was_locked"], true);
    // A try while locked was not a try: the right code is accepted now.
    let r = validate(&app, "locked", &right).await;
    assert_eq!(r.json["data"]["valid"], true, "{}", r.text);
    let metrics = app.req("GET", "/v1/sys/metrics", None, None).await.text;
    assert!(
        metrics.contains("totpd_lockouts_total{surface=\"vault_totp\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("surface=\"vault_totp\",outcome=\"locked\""),
        "{metrics}"
    );
}

#[tokio::test]
async fn mounts_are_independent_and_acl_paths_are_vaults() {
    let mut app = TestApp::new().await;
    app.set_engine_mounts(&["ci-totp"]);
    let a = generate(&app, "ci-deploy", json!({})).await;
    let r = app
        .req(
            "POST",
            "/v1/ci-totp/keys/ci-deploy",
            Some(json!({"generate": true, "issuer": "CI", "account_name": "x"})),
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    let b = parse_otp_url(r.json["data"]["url"].as_str().unwrap());
    assert_ne!(a.secret, b.secret, "each mount its own key under one name");
    generate(&app, "prod-root", json!({})).await;
    assert_eq!(
        app.req("LIST", "/v1/ci-totp/keys", None, None).await.json["data"]["keys"],
        json!(["ci-deploy"])
    );

    let r = app
        .req(
            "PUT",
            "/v1/sys/policies/acl/ci",
            Some(json!({"policy": "path \"totp/code/ci-*\" { capabilities = [\"read\"] }"})),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let token = common::make_token(&app, json!({"policies": ["ci"]})).await;
    let h = [("x-vault-token", token)];
    let r = app
        .tcp_req("GET", "/v1/totp/code/ci-deploy", &h, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["data"]["code"], code(&a, unix_now()));
    for (method, path) in [
        ("GET", "/v1/totp/code/prod-root"),
        ("GET", "/v1/totp/keys/ci-deploy"),
        ("POST", "/v1/totp/code/ci-deploy"),
        ("GET", "/v1/ci-totp/code/ci-deploy"),
        ("LIST", "/v1/totp/keys"),
    ] {
        let body = (method == "POST").then(|| json!({"code": "123456"}));
        let r = app.tcp_req(method, path, &h, body).await;
        assert_eq!(
            (r.status, &r.json),
            (403, &json!({"errors": ["permission denied"]})),
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn keys_are_sealed_and_never_listed_or_logged_in_answers() {
    let app = TestApp::new().await;
    let u = generate(&app, "secret-one", json!({})).await;
    let imported = common::seed(20);
    let r = app
        .req(
            "POST",
            &format!("{KEYS}/secret-two"),
            Some(json!({"key": imported})),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    let list = app.req("LIST", KEYS, None, None).await.text;
    let read = app
        .req("GET", &format!("{KEYS}/secret-two"), None, None)
        .await
        .text;
    for s in [u.secret_b32.as_str(), imported.as_str()] {
        assert!(!list.contains(s) && !read.contains(s));
    }
    let db = app.db_bytes();
    assert!(
        contains(&db, b"secret-two"),
        "db_bytes reads the stored rows"
    );
    for raw in [u.secret.clone(), common::raw(&imported)] {
        assert!(!contains(&db, &raw), "a key in clear in the database");
    }
    assert!(!contains(&db, u.secret_b32.as_bytes()) && !contains(&db, imported.as_bytes()));
    // Operators see engine keys in the views, without the key.
    let rows = app.query(
        "SELECT surface, entity, method_or_label FROM secrets_view ORDER BY method_or_label",
    );
    let some = |s: &str| Some(s.to_string());
    assert_eq!(
        rows,
        [
            vec![some("vault_totp"), some("totp"), some("secret-one")],
            vec![some("vault_totp"), some("totp"), some("secret-two")]
        ]
    );
}

#[tokio::test]
async fn min_validity_waits_for_a_code_that_lives_long_enough() {
    let app = TestApp::new().await;
    // A 5-second period: asking for 4 seconds waits at most 3.
    let u = generate(&app, "slow", json!({"period": 5})).await;
    for _ in 0..3 {
        let r = app
            .req("GET", &format!("{CODE}/slow?min_validity=4"), None, None)
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let d = &r.json["data"];
        assert!(d["expires_in"].as_u64().unwrap() >= 4, "{d}");
        assert_eq!(d["code"], code(&u, d["generated"].as_u64().unwrap()));
        assert_eq!(d["period"], "5s");
    }
    let r = app
        .req("GET", &format!("{CODE}/slow?min_validity=5"), None, None)
        .await;
    assert_eq!(
        (r.status, &r.json),
        (
            400,
            &json!({"errors": ["min_validity: must be a whole number of seconds from 0 to 4"]})
        )
    );
}

#[tokio::test]
async fn list_with_a_trailing_slash_and_update_for_writes() {
    let app = TestApp::new().await;
    generate(&app, "k1", json!({})).await;
    for path in ["/v1/totp/keys/", "/v1/totp/keys/?list=true"] {
        let r = app.req("LIST", path, None, None).await;
        assert_eq!(
            (r.status, &r.json["data"]["keys"]),
            (200, &json!(["k1"])),
            "{path}: {}",
            r.text
        );
    }
    // `create` alone does not write a key: Vault's engine takes every write as an update.
    let r = app
        .req(
            "PUT",
            "/v1/sys/policies/acl/creator",
            Some(json!({"policy": "path \"totp/keys/*\" { capabilities = [\"create\"] }"})),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    let token = common::make_token(&app, json!({"policies": ["creator"]})).await;
    let r = app
        .tcp_req(
            "POST",
            "/v1/totp/keys/k2",
            &[("x-vault-token", token)],
            Some(json!({"key": "JBSWY3DPEHPK3PXP"})),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
}

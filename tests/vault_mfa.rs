//! Vault identity MFA TOTP: methods (create, read, update, list, delete), generating
//! secrets for oneself and for others, QR codes, validation (single use, skew, lockout,
//! concurrency), access rules and error shapes. Driven in-process on a temporary store;
//! only the replay-after-restart test runs the real binary.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::app::TestApp;
use common::{
    contains, decode_qr, fresh_step, parse_otp_url, reference_totp, unix_now, Daemon, OtpUrl,
    Requester,
};
use serde_json::{json, Value};
use totpd::auth::Peer;

const BASE: &str = "/v1/identity/mfa/method/totp";

async fn create_method(app: &impl Requester, body: Value) -> String {
    let r = app.req("POST", BASE, Some(body), None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json["data"]["method_id"].as_str().unwrap().to_string()
}

async fn admin_generate(app: &impl Requester, method: &str, entity: &str) -> OtpUrl {
    let r = app
        .req(
            "POST",
            &format!("{BASE}/admin-generate"),
            Some(json!({"method_id": method, "entity_id": entity})),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    parse_otp_url(r.json["data"]["url"].as_str().unwrap())
}

fn code(u: &OtpUrl, t: u64) -> String {
    reference_totp(&u.secret, &u.algorithm, u.digits, u.period, t)
}

async fn validate(app: &impl Requester, method: &str, entity: &str, passcode: &str) -> u16 {
    let r = app
        .req(
            "POST",
            &format!("{BASE}/validate"),
            Some(json!({"method_id": method, "entity_id": entity, "passcode": passcode})),
            None,
        )
        .await;
    if r.status == 403 {
        assert_eq!(
            r.json,
            json!({"errors": ["invalid passcode"]}),
            "one answer for every refusal"
        );
    }
    r.status
}

#[tokio::test]
async fn generate_round_trip_barcode_url_and_an_independent_code() {
    let app = TestApp::new().await;
    let id = create_method(
        &app,
        json!({"issuer": "Acme Corp", "algorithm": "SHA256", "digits": 8, "period": "1m", "qr_size": 300}),
    )
    .await;
    let r = app
        .req(
            "POST",
            &format!("{BASE}/generate"),
            Some(json!({"method_id": id})),
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
    let url = r.json["data"]["url"].as_str().unwrap();
    let (w, h, text) = decode_qr(r.json["data"]["barcode"].as_str().unwrap());
    assert_eq!((w, h), (300, 300));
    assert_eq!(text, url, "the barcode holds exactly the url");

    let u = parse_otp_url(url);
    assert_eq!(u.issuer, "Acme Corp");
    assert_eq!(u.label, "Acme Corp:uid:0", "account is the caller's entity");
    assert_eq!(
        (u.algorithm.as_str(), u.digits, u.period),
        ("SHA256", 8, 60)
    );
    assert_eq!(u.secret.len(), 20);

    fresh_step(60, 3).await;
    let c = code(&u, unix_now());
    let r = app
        .req(
            "POST",
            &format!("{BASE}/validate"),
            Some(json!({"method_id": id, "passcode": c})),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["data"]["valid"], true);

    // A second generate: 200, no data, a warning; the secret is unchanged.
    let r = app
        .req(
            "POST",
            &format!("{BASE}/generate"),
            Some(json!({"method_id": id})),
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.json["data"].is_null());
    assert!(r.json["warnings"][0]
        .as_str()
        .unwrap()
        .contains("already has a secret"));

    // qr_size 0: no image, as Vault.
    let id0 = create_method(&app, json!({"issuer": "x", "qr_size": 0})).await;
    let r = app
        .req(
            "POST",
            &format!("{BASE}/generate"),
            Some(json!({"method_id": id0})),
            None,
        )
        .await;
    assert_eq!(r.json["data"]["barcode"], "");

    // The secret is nowhere in the database in clear (main file and WAL, or every
    // PostgreSQL table); what is stored in clear, the method's id, is found there.
    let db = app.db_bytes();
    assert!(
        contains(&db, id.as_bytes()),
        "db_bytes reads the stored rows"
    );
    assert!(!contains(&db, &u.secret), "raw secret in the database");
    assert!(
        !contains(&db, u.secret_b32.as_bytes()),
        "base32 secret in the database"
    );
}

#[tokio::test]
async fn codes_for_every_algorithm_and_length_validate() {
    let app = TestApp::new().await;
    for (alg, digits) in [("SHA1", 6), ("SHA1", 8), ("SHA256", 6), ("SHA512", 8)] {
        let id = create_method(
            &app,
            json!({"issuer": "v", "algorithm": alg, "digits": digits}),
        )
        .await;
        let u = admin_generate(&app, &id, "e1").await;
        assert_eq!((u.algorithm.as_str(), u.digits), (alg, digits));
        fresh_step(30, 2).await;
        assert_eq!(
            validate(&app, &id, "e1", &code(&u, unix_now())).await,
            200,
            "{alg}/{digits}"
        );
    }
}

/// The harness runs on the backend `TOTPD_TEST_STORE` asks for: `.ci/run` runs these
/// tests a second time on PostgreSQL, and this catches a harness that quietly does not.
#[tokio::test]
async fn the_store_is_the_backend_asked_for() {
    let app = TestApp::new().await;
    if common::app::on_postgres() {
        let v = app.query("SELECT version()");
        assert!(
            v[0][0].as_deref().unwrap().starts_with("PostgreSQL"),
            "{v:?}"
        );
    } else {
        assert!(app.is_sqlite());
        assert_eq!(app.query("SELECT sqlite_version()").len(), 1);
    }
}

#[tokio::test]
async fn a_code_is_accepted_once_also_after_reopening_the_store() {
    let mut app = TestApp::new().await;
    let id = create_method(&app, json!({"issuer": "v"})).await;
    let u = admin_generate(&app, &id, "alice").await;
    fresh_step(30, 5).await;
    let c = code(&u, unix_now());
    assert_eq!(validate(&app, &id, "alice", &c).await, 200);
    assert_eq!(validate(&app, &id, "alice", &c).await, 403);
    // The reason is told to the metrics (and the log), not to the caller.
    let m = app.req("GET", "/v1/sys/metrics", None, None).await.text;
    assert!(
        m.contains("totpd_verifications_total{surface=\"vault_mfa\",outcome=\"replay\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("totpd_verifications_total{surface=\"vault_mfa\",outcome=\"accepted\"} 1"),
        "{m}"
    );
    app.reopen().await;
    assert_eq!(
        validate(&app, &id, "alice", &c).await,
        403,
        "replay after reopening the store"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_concurrent_validations_of_one_code_yield_exactly_one_success() {
    let app = Arc::new(TestApp::new().await);
    let id = create_method(
        &*app,
        json!({"issuer": "v", "max_validation_attempts": 100}),
    )
    .await;
    let u = admin_generate(&*app, &id, "bob").await;
    fresh_step(30, 5).await;
    let c = code(&u, unix_now());
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (app, id, c) = (app.clone(), id.clone(), c.clone());
        tasks.push(tokio::spawn(async move {
            validate(&*app, &id, "bob", &c).await
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(common::tally(&statuses), [(200, 1), (403, 31)].into());
}

#[tokio::test]
async fn a_code_from_before_the_last_accepted_step_is_refused() {
    let app = TestApp::new().await;
    let id = create_method(&app, json!({"issuer": "v", "skew": 1})).await;
    let u = admin_generate(&app, &id, "carol").await;
    fresh_step(30, 5).await;
    let now = unix_now();
    assert_eq!(validate(&app, &id, "carol", &code(&u, now)).await, 200);
    // Inside the skew window, but older than the accepted step.
    assert_eq!(validate(&app, &id, "carol", &code(&u, now - 30)).await, 403);
}

#[tokio::test]
async fn three_wrong_codes_lock_for_one_period() {
    let app = TestApp::new().await;
    let period = 3;
    let id = create_method(
        &app,
        json!({"issuer": "v", "period": period, "max_validation_attempts": 3, "skew": 0}),
    )
    .await;
    let u = admin_generate(&app, &id, "dave").await;
    fresh_step(period, 1).await;
    let right = code(&u, unix_now());
    let wrong = if right == "000000" {
        "111111"
    } else {
        "000000"
    };
    for _ in 0..3 {
        assert_eq!(validate(&app, &id, "dave", wrong).await, 403);
    }
    assert_eq!(
        validate(&app, &id, "dave", &right).await,
        403,
        "locked: even the right code fails"
    );
    tokio::time::sleep(Duration::from_millis(period * 1000 + 300)).await;
    fresh_step(period, 1).await;
    assert_eq!(
        validate(&app, &id, "dave", &code(&u, unix_now())).await,
        200,
        "lock over"
    );
}

#[tokio::test]
async fn skew_zero_refuses_the_previous_step_and_skew_one_accepts_it() {
    let app = TestApp::new().await;
    let strict = create_method(&app, json!({"issuer": "v", "skew": 0})).await;
    let loose = create_method(&app, json!({"issuer": "v", "skew": 1})).await;
    let us = admin_generate(&app, &strict, "erin").await;
    let ul = admin_generate(&app, &loose, "erin").await;
    fresh_step(30, 4).await;
    let now = unix_now();
    assert_eq!(
        validate(&app, &strict, "erin", &code(&us, now - 30)).await,
        403
    );
    assert_eq!(
        validate(&app, &loose, "erin", &code(&ul, now - 30)).await,
        200
    );
    // Malformed input counts as a failure and gets the same answer.
    assert_eq!(validate(&app, &strict, "erin", "12ab56").await, 403);
}

#[tokio::test]
async fn method_crud_list_and_vault_defaults() {
    let app = TestApp::new().await;
    // LIST with no methods: 404, as Vault.
    assert_eq!(app.req("LIST", BASE, None, None).await.status, 404);
    let id = create_method(&app, json!({"issuer": "vault", "method_name": "corp"})).await;
    let r = app.req("GET", &format!("{BASE}/{id}"), None, None).await;
    assert_eq!(r.status, 200);
    let m = &r.json["data"];
    assert_eq!(
        (
            m["id"].as_str(),
            m["name"].as_str(),
            m["type"].as_str(),
            m["algorithm"].as_str()
        ),
        (Some(id.as_str()), Some("corp"), Some("totp"), Some("SHA1"))
    );
    for (k, v) in [
        ("digits", 6),
        ("period", 30),
        ("key_size", 20),
        ("qr_size", 200),
        ("skew", 1),
        ("max_validation_attempts", 5),
    ] {
        assert_eq!(m[k], v, "{k}");
    }
    // method_name is unique.
    let r = app
        .req(
            "POST",
            BASE,
            Some(json!({"issuer": "x", "method_name": "corp"})),
            None,
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.vault_error().contains("method_name"));
    // Update replaces the configuration; the name stays.
    let r = app
        .req(
            "POST",
            &format!("{BASE}/{id}"),
            Some(json!({"issuer": "new", "digits": "8"})),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let m = app
        .req("GET", &format!("{BASE}/{id}"), None, None)
        .await
        .json["data"]
        .clone();
    assert_eq!(
        (
            m["issuer"].as_str(),
            m["digits"].as_i64(),
            m["name"].as_str()
        ),
        (Some("new"), Some(8), Some("corp"))
    );
    // LIST and GET ?list=true.
    let id2 = create_method(&app, json!({"issuer": "two"})).await;
    for r in [
        app.req("LIST", BASE, None, None).await,
        app.req("GET", &format!("{BASE}?list=true"), None, None)
            .await,
    ] {
        assert_eq!(r.status, 200);
        let mut want = vec![id.clone(), id2.clone()];
        want.sort();
        assert_eq!(
            r.json["data"]["keys"],
            json!(want),
            "keys in order, as Vault lists them"
        );
        assert_eq!(r.json["data"]["key_info"][&id2]["issuer"], "two");
    }
    // Delete, while an entity holds a secret: 204, and the secret goes with it, as
    // OpenBao answers (this changed: it used to be refused as "in use").
    admin_generate(&app, &id, "frank").await;
    assert_eq!(
        app.req("DELETE", &format!("{BASE}/{id}"), None, None)
            .await
            .status,
        204
    );
    assert_eq!(app.count_rows("mfa_secrets"), 0);
    assert_eq!(app.count_rows("otp_secrets"), 0);
    assert_eq!(
        app.req("GET", &format!("{BASE}/{id}"), None, None)
            .await
            .status,
        404
    );
    // After admin-destroy a new secret can be generated (replacing a secret).
    admin_generate(&app, &id2, "frank").await;
    app.req(
        "POST",
        &format!("{BASE}/admin-destroy"),
        Some(json!({"method_id": id2, "entity_id": "frank"})),
        None,
    )
    .await;
    admin_generate(&app, &id2, "frank").await;
}

#[tokio::test]
async fn bad_input_gets_400_or_404_naming_the_field_and_changes_nothing() {
    let app = TestApp::new().await;
    let id = create_method(&app, json!({"issuer": "keep"})).await;
    let before = app.req("LIST", BASE, None, None).await.json["data"].clone();
    let cases: Vec<(Value, &str)> = vec![
        (json!({}), "issuer"),
        (json!({"issuer": ""}), "issuer"),
        (json!({"issuer": "x", "digits": 7}), "digits"),
        (json!({"issuer": "x", "skew": 2}), "skew"),
        (json!({"issuer": "x", "algorithm": "MD5"}), "algorithm"),
        (json!({"issuer": "x", "period": 0}), "period"),
        (json!({"issuer": "x", "period": "soon"}), "period"),
        (json!({"issuer": "x", "digits": "six"}), "digits"),
        (json!({"issuer": "x", "key_size": true}), "key_size"),
        (json!({"issuer": "x", "key_size": 4}), "key_size"),
        (json!({"issuer": "x", "qr_size": 10}), "qr_size"),
        (
            json!({"issuer": "x", "max_validation_attempts": -1}),
            "max_validation_attempts",
        ),
        (json!({"issuer": ["x"]}), "issuer"),
    ];
    for (body, field) in &cases {
        for (method, path) in [("POST", BASE.to_string()), ("POST", format!("{BASE}/{id}"))] {
            let r = app.req(method, &path, Some(body.clone()), None).await;
            assert_eq!(r.status, 400, "{body} → {}", r.text);
            let msg = r.vault_error();
            assert!(msg.contains(field), "{body}: {msg:?} does not name {field}");
        }
    }
    // Unknown and malformed ids: see unknown_and_malformed_ids_on_every_route.
    for body in [json!({}), json!({"method_id": 5})] {
        let r = app
            .req(
                "POST",
                &format!("{BASE}/generate"),
                Some(body.clone()),
                None,
            )
            .await;
        assert_eq!(r.status, 400, "{body}");
        assert!(r.vault_error().contains("method_id"), "{}", r.text);
    }
    let r = app
        .req(
            "POST",
            &format!("{BASE}/admin-generate"),
            Some(json!({"method_id": id})),
            None,
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.vault_error().contains("entity_id"));
    let r = app
        .req(
            "POST",
            &format!("{BASE}/validate"),
            Some(json!({"method_id": id, "passcode": 123456})),
            None,
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.vault_error().contains("passcode"));

    let after = app.req("LIST", BASE, None, None).await.json["data"].clone();
    assert_eq!(before, after, "bad input changed something");
    // No secret was created by the failed generates.
    let r = app
        .req(
            "POST",
            &format!("{BASE}/generate"),
            Some(json!({"method_id": id})),
            None,
        )
        .await;
    assert!(r.json["data"]["url"].is_string(), "{}", r.text);
}

#[tokio::test]
async fn a_default_caller_manages_only_itself() {
    let app = TestApp::new().await;
    let id = create_method(&app, json!({"issuer": "v"})).await;
    let r = app
        .req(
            "POST",
            "/v1/auth/token/create",
            Some(json!({"policies": ["default"]})),
            None,
        )
        .await;
    let tok = r.json["auth"]["client_token"].as_str().unwrap().to_string();
    let me = r.json["auth"]["entity_id"].as_str().unwrap().to_string();
    let t = Some(tok.as_str());

    let r = app
        .req(
            "POST",
            &format!("{BASE}/generate"),
            Some(json!({"method_id": id})),
            t,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let u = parse_otp_url(r.json["data"]["url"].as_str().unwrap());
    assert_eq!(u.label, format!("v:{me}"));
    fresh_step(30, 3).await;
    let c = code(&u, unix_now());
    let r = app
        .req(
            "POST",
            &format!("{BASE}/validate"),
            Some(json!({"method_id": id, "passcode": c})),
            t,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    let other = admin_generate(&app, &id, "someone-else").await;
    let denied = [
        ("POST", BASE.to_string(), Some(json!({"issuer": "mine"}))),
        ("LIST", BASE.to_string(), None),
        ("GET", format!("{BASE}/{id}"), None),
        (
            "POST",
            format!("{BASE}/{id}"),
            Some(json!({"issuer": "mine"})),
        ),
        ("DELETE", format!("{BASE}/{id}"), None),
        (
            "POST",
            format!("{BASE}/admin-generate"),
            Some(json!({"method_id": id, "entity_id": "x"})),
        ),
        (
            "POST",
            format!("{BASE}/admin-destroy"),
            Some(json!({"method_id": id, "entity_id": "someone-else"})),
        ),
        (
            "POST",
            format!("{BASE}/validate"),
            Some(
                json!({"method_id": id, "entity_id": "someone-else", "passcode": code(&other, unix_now())}),
            ),
        ),
    ];
    for (m, p, b) in denied {
        let r = app.req(m, &p, b, t).await;
        assert_eq!(r.status, 403, "{m} {p}: {}", r.text);
        assert_eq!(r.json, json!({"errors": ["permission denied"]}));
    }
    // The other entity's secret is untouched and its code still unused.
    assert_eq!(
        validate(&app, &id, "someone-else", &code(&other, unix_now())).await,
        200
    );
}

#[tokio::test]
async fn a_local_uid_generates_its_own_secret_without_a_token() {
    let app = TestApp::new().await;
    let id = create_method(&app, json!({"issuer": "local"})).await;
    let r = app
        .req_as(
            65534,
            "POST",
            &format!("{BASE}/generate"),
            Some(json!({"method_id": id})),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let u = parse_otp_url(r.json["data"]["url"].as_str().unwrap());
    assert_eq!(u.label, "local:uid:65534");
    // Not for another entity, though.
    let r = app
        .req_as(
            65534,
            "POST",
            &format!("{BASE}/admin-generate"),
            Some(json!({"method_id": id, "entity_id": "uid:0"})),
            None,
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(r.json, json!({"errors": ["permission denied"]}));
}

#[tokio::test]
async fn unknown_and_malformed_ids_on_every_route() {
    let app = TestApp::new().await;
    let id = create_method(&app, json!({"issuer": "v"})).await;
    let unknown = uuid::Uuid::new_v4().to_string();
    let with = |m: &str| json!({"method_id": m, "entity_id": "e", "passcode": "123456"});
    for (method, path, body) in [
        ("GET", format!("{BASE}/{unknown}"), None),
        (
            "POST",
            format!("{BASE}/{unknown}"),
            Some(json!({"issuer": "x"})),
        ),
        ("DELETE", format!("{BASE}/{unknown}"), None),
        ("POST", format!("{BASE}/generate"), Some(with(&unknown))),
        (
            "POST",
            format!("{BASE}/admin-generate"),
            Some(with(&unknown)),
        ),
        (
            "POST",
            format!("{BASE}/admin-destroy"),
            Some(with(&unknown)),
        ),
        ("POST", format!("{BASE}/validate"), Some(with(&unknown))),
    ] {
        let r = app.req(method, &path, body, None).await;
        assert_eq!(r.status, 404, "{method} {path}: {}", r.text);
        assert!(r.vault_error().contains("method_id"), "{}", r.text);
    }
    for (method, path, body) in [
        ("GET", format!("{BASE}/1234"), None),
        ("POST", format!("{BASE}/zzz"), Some(json!({"issuer": "x"}))),
        ("DELETE", format!("{BASE}/zzz"), None),
        ("POST", format!("{BASE}/admin-generate"), Some(with("zzz"))),
        ("POST", format!("{BASE}/admin-destroy"), Some(with("zzz"))),
        ("POST", format!("{BASE}/validate"), Some(with("zzz"))),
    ] {
        let r = app.req(method, &path, body, None).await;
        assert_eq!(r.status, 400, "{method} {path}: {}", r.text);
        assert!(r.vault_error().contains("method_id"), "{}", r.text);
    }
    // Entity ids are checked too.
    for e in ["", "has space", &"x".repeat(129)] {
        let r = app
            .req(
                "POST",
                &format!("{BASE}/admin-generate"),
                Some(json!({"method_id": id, "entity_id": e})),
                None,
            )
            .await;
        assert_eq!(r.status, 400, "{e:?}");
        assert!(r.vault_error().contains("entity_id"));
    }
    // Odd requests keep Vault's error shape: a repeated query key, a non-UTF-8 path,
    // LIST on a single method, an array for a body.
    for (method, path) in [
        ("GET", format!("{BASE}?list=true&list=true")),
        ("GET", format!("{BASE}/%FF")),
    ] {
        let r = app.req(method, &path, None, None).await;
        assert_eq!(r.status, 400, "{path}: {}", r.text);
        assert!(r.json["errors"].is_array(), "{path}: {}", r.text);
    }
    assert_eq!(
        app.req("LIST", &format!("{BASE}/{id}"), None, None)
            .await
            .status,
        405
    );
    let r = app
        .raw(
            Peer::Unix { uid: Some(0) },
            "POST",
            BASE,
            &[],
            Some(br#"[null, "issuer"]"#.to_vec()),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.vault_error().contains("object"));
    // A trailing slash is the same path, as in Vault.
    let r = app.req("LIST", &format!("{BASE}/"), None, None).await;
    assert_eq!(r.json["data"]["keys"], json!([id]));
    assert_eq!(
        app.req("GET", &format!("{BASE}/{id}/"), None, None)
            .await
            .json["data"]["namespace"],
        ""
    );
}

#[tokio::test]
async fn bounds_beyond_vault_keep_secrets_sound() {
    let app = TestApp::new().await;
    for (body, field) in [
        (
            json!({"issuer": "x", "max_validation_attempts": 4294967296u64}),
            "max_validation_attempts",
        ),
        (json!({"issuer": "a:b"}), "issuer"),
        (json!({"issuer": "x".repeat(200)}), "issuer"),
        (
            json!({"issuer": "x", "key_size": 1_000_000_000}),
            "key_size",
        ),
        (
            json!({"issuer": "x", "period": 1_000_000_000_000_000_000i64}),
            "period",
        ),
        (json!({"issuer": "x", "qr_size": 100_000}), "qr_size"),
    ] {
        let r = app.req("POST", BASE, Some(body.clone()), None).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text);
        assert!(r.vault_error().contains(field), "{}", r.text);
    }
    // The smallest accepted qr_size fits every entity id generate can be given.
    let r = app
        .req(
            "POST",
            BASE,
            Some(json!({"issuer": "v", "qr_size": 10})),
            None,
        )
        .await;
    let msg = r.vault_error().to_string();
    let min: u32 = msg
        .split("at least ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no minimum in {msg:?}"));
    let r = app
        .req(
            "POST",
            BASE,
            Some(json!({"issuer": "v", "qr_size": min - 1})),
            None,
        )
        .await;
    assert_eq!(r.status, 400);
    let id = create_method(&app, json!({"issuer": "v", "qr_size": min})).await;
    let long_entity = ":".repeat(128);
    let r = app
        .req(
            "POST",
            &format!("{BASE}/admin-generate"),
            Some(json!({"method_id": id, "entity_id": long_entity})),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "qr_size {min}: {}", r.text);
    let (w, _, text) = decode_qr(r.json["data"]["barcode"].as_str().unwrap());
    assert_eq!(w, min);
    assert_eq!(text, r.json["data"]["url"].as_str().unwrap());
}

#[tokio::test]
async fn admin_generate_twice_warns_and_a_replaced_secret_drops_the_old_one() {
    let app = TestApp::new().await;
    let id = create_method(&app, json!({"issuer": "v", "method_name": "corp"})).await;
    let old = admin_generate(&app, &id, "grace").await;
    let r = app
        .req(
            "POST",
            &format!("{BASE}/admin-generate"),
            Some(json!({"method_id": id, "entity_id": "grace"})),
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.json["data"].is_null());
    assert_eq!(
        r.json["warnings"],
        json!(["Entity already has a secret for MFA method \"corp\""])
    );
    let r = app
        .req(
            "POST",
            &format!("{BASE}/admin-destroy"),
            Some(json!({"method_id": id, "entity_id": "grace"})),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    let new = admin_generate(&app, &id, "grace").await;
    assert_ne!(old.secret, new.secret);
    fresh_step(30, 3).await;
    let now = unix_now();
    let (old_code, new_code) = (code(&old, now), code(&new, now));
    if old_code != new_code {
        assert_eq!(
            validate(&app, &id, "grace", &old_code).await,
            403,
            "the old secret still works"
        );
    }
    assert_eq!(validate(&app, &id, "grace", &new_code).await, 200);
}

#[tokio::test]
async fn a_code_accepted_before_a_restart_is_refused_after_it() {
    let mut d = Daemon::start();
    let id = create_method(&d, json!({"issuer": "v"})).await;
    let u = admin_generate(&d, &id, "alice").await;
    fresh_step(30, 5).await;
    let c = code(&u, unix_now());
    assert_eq!(validate(&d, &id, "alice", &c).await, 200);
    assert_eq!(d.stop(), Some(0));
    d.spawn().unwrap();
    assert_eq!(
        validate(&d, &id, "alice", &c).await,
        403,
        "replay after restart"
    );
}

/// Found by review: a long issuer made the default QR size too small (400 with no
/// qr_size given); names and issuers took control and bidi characters.
#[tokio::test]
async fn the_default_qr_fits_any_issuer_and_names_refuse_control_characters() {
    let app = TestApp::new().await;
    // Left out, qr_size grows to what the method's codes need...
    let issuer = "é".repeat(100);
    let id = create_method(&app, json!({"issuer": issuer})).await;
    let r = app.req("GET", &format!("{BASE}/{id}"), None, None).await;
    assert!(
        r.json["data"]["qr_size"].as_i64().unwrap() > 200,
        "{}",
        r.text
    );
    let r = app
        .req(
            "POST",
            &format!("{BASE}/admin-generate"),
            Some(json!({"method_id": id, "entity_id": "e".repeat(128)})),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(!r.json["data"]["barcode"].as_str().unwrap().is_empty());
    // ...and a short issuer keeps Vault's 200.
    let id = create_method(&app, json!({"issuer": "Acme"})).await;
    let r = app.req("GET", &format!("{BASE}/{id}"), None, None).await;
    assert_eq!(r.json["data"]["qr_size"], 200, "{}", r.text);
    // Given explicitly, too small is still refused.
    let r = app
        .req(
            "POST",
            BASE,
            Some(json!({"issuer": issuer, "qr_size": 100})),
            None,
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);

    for body in [
        json!({"issuer": "Acme\u{202e}moc"}),
        json!({"issuer": "Acme\u{0007}"}),
        json!({"issuer": "Acme", "method_name": "m\u{202e}x"}),
        json!({"issuer": "Acme", "method_name": "n".repeat(129)}),
    ] {
        let r = app.req("POST", BASE, Some(body.clone()), None).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text);
    }
    let r = app
        .req(
            "POST",
            BASE,
            Some(json!({"issuer": "Acme", "method_name": "n".repeat(128)})),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

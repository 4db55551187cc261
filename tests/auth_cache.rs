//! The in-memory cache of callers resolved from tokens (`totpd::auth::cache`): a token's
//! second request reads nothing from the database, yet every change to tokens and
//! policies holds on the very next request: a revoke (of the token, of its parent, by
//! accessor), a renewal, a policy written, deleted, or updated by a Nitride spend. Driven
//! in-process; on PostgreSQL (`TOTPD_TEST_STORE=postgres`) nothing is cached, and the
//! same rules hold.

mod common;

use common::app::TestApp;
use serde_json::{json, Value};

async fn put_policy(app: &TestApp, name: &str, hcl: &str) {
    let r = app
        .req(
            "PUT",
            &format!("/v1/sys/policies/acl/{name}"),
            Some(json!({ "policy": hcl })),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
}

async fn token(app: &TestApp, body: Value) -> (String, String) {
    let r = app
        .req("POST", "/v1/auth/token/create", Some(body), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let a = &r.json["auth"];
    (
        a["client_token"].as_str().unwrap().to_string(),
        a["accessor"].as_str().unwrap().to_string(),
    )
}

/// GET `path` over TCP with `token`: the status.
async fn get(app: &TestApp, token: &str, path: &str) -> u16 {
    app.tcp_req("GET", path, &[("x-vault-token", token.to_string())], None)
        .await
        .status
}

const READ_ENGINE: &str = r#"path "totp/keys/*" { capabilities = ["read"] }"#;

async fn with_key(app: &TestApp) {
    let r = app
        .req(
            "POST",
            "/v1/totp/keys/k",
            Some(json!({"key": "JBSWY3DPEHPK3PXP"})),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
}

#[tokio::test]
async fn a_revoked_token_is_refused_on_the_very_next_request() {
    let app = TestApp::new().await;
    with_key(&app).await;
    put_policy(&app, "reader", READ_ENGINE).await;
    put_policy(
        &app,
        "minter",
        r#"path "auth/token/create" { capabilities = ["update"] }"#,
    )
    .await;
    for how in ["revoke", "revoke-accessor", "parent", "self"] {
        let (parent, _) = token(&app, json!({"policies": ["reader", "minter"]})).await;
        let (t, accessor) = if how == "parent" {
            let r = app
                .tcp_req(
                    "POST",
                    "/v1/auth/token/create",
                    &[("x-vault-token", parent.clone())],
                    Some(json!({"policies": ["reader"]})),
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.text);
            let a = &r.json["auth"];
            (
                a["client_token"].as_str().unwrap().to_string(),
                String::new(),
            )
        } else {
            token(&app, json!({"policies": ["reader"]})).await
        };
        // Twice: the second is served from the cache (on SQLite).
        assert_eq!(get(&app, &t, "/v1/totp/keys/k").await, 200);
        assert_eq!(get(&app, &t, "/v1/totp/keys/k").await, 200);
        let r = match how {
            "revoke" => {
                app.req(
                    "POST",
                    "/v1/auth/token/revoke",
                    Some(json!({ "token": t })),
                    None,
                )
                .await
            }
            "revoke-accessor" => {
                app.req(
                    "POST",
                    "/v1/auth/token/revoke-accessor",
                    Some(json!({ "accessor": accessor })),
                    None,
                )
                .await
            }
            "parent" => {
                app.req(
                    "POST",
                    "/v1/auth/token/revoke",
                    Some(json!({ "token": parent })),
                    None,
                )
                .await
            }
            _ => {
                app.tcp_req(
                    "POST",
                    "/v1/auth/token/revoke-self",
                    &[("x-vault-token", t.clone())],
                    None,
                )
                .await
            }
        };
        assert_eq!(r.status, 204, "{how}: {}", r.text);
        assert_eq!(
            get(&app, &t, "/v1/totp/keys/k").await,
            403,
            "{how}: refused at once"
        );
    }
}

#[tokio::test]
async fn a_policy_change_holds_on_the_very_next_request() {
    let app = TestApp::new().await;
    with_key(&app).await;
    put_policy(&app, "p", READ_ENGINE).await;
    let (t, _) = token(&app, json!({"policies": ["p"]})).await;
    assert_eq!(get(&app, &t, "/v1/totp/keys/k").await, 200);
    assert_eq!(get(&app, &t, "/v1/totp/keys/k").await, 200);
    // Narrowed: refused at once.
    put_policy(
        &app,
        "p",
        r#"path "totp/code/*" { capabilities = ["read"] }"#,
    )
    .await;
    assert_eq!(get(&app, &t, "/v1/totp/keys/k").await, 403);
    assert_eq!(get(&app, &t, "/v1/totp/code/k").await, 200);
    // Deleted: nothing granted.
    let r = app
        .req("DELETE", "/v1/sys/policies/acl/p", None, None)
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(get(&app, &t, "/v1/totp/code/k").await, 403);
    // Written again: granted again.
    put_policy(&app, "p", READ_ENGINE).await;
    assert_eq!(get(&app, &t, "/v1/totp/keys/k").await, 200);
}

#[tokio::test]
async fn a_nitride_spend_updates_the_policy_for_the_next_request() {
    let app = TestApp::new().await;
    with_key(&app).await;
    put_policy(&app, "deploy", READ_ENGINE).await;
    let (t, _) = token(&app, json!({"policies": ["deploy"]})).await;
    assert_eq!(get(&app, &t, "/v1/totp/keys/k").await, 200);
    assert_eq!(get(&app, &t, "/v1/totp/keys/k").await, 200);
    let exp = common::unix_now() + 3600;
    let r = app
        .req(
            "PUT",
            "/v1/auth/ratls/totp",
            Some(json!({"policy": "deploy", "expiration": exp})),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let uuid = r.json["data"]["uuid"].as_str().unwrap().to_string();
    // Spent by a peer with only the default policy: the uuid is the credential.
    let narrowed = json!({"path": {"totp/code/*": {"capabilities": ["read"]}}}).to_string();
    let r = app
        .req_as(
            1234,
            "PUT",
            "/v1/sys/policies/acl/deploy",
            Some(json!({"policy": narrowed, "totp": uuid})),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert_eq!(
        get(&app, &t, "/v1/totp/keys/k").await,
        403,
        "the spend's policy holds at once"
    );
}

#[tokio::test]
async fn a_renewal_holds_on_the_next_request() {
    let app = TestApp::new().await;
    with_key(&app).await;
    put_policy(&app, "reader", READ_ENGINE).await;
    let (t, _) = token(
        &app,
        json!({"policies": ["reader"], "ttl": "2s", "renewable": true}),
    )
    .await;
    assert_eq!(get(&app, &t, "/v1/totp/keys/k").await, 200);
    let before = app.state.store.auth_generation();
    let r = app
        .tcp_req(
            "POST",
            "/v1/auth/token/renew-self",
            &[("x-vault-token", t.clone())],
            Some(json!({"increment": "1h"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // A stale entry would only understate the lifetime (and an expired entry is read
    // again), so the request below passes even without invalidation: the renewal must
    // move the generation itself, so no entry read before it is used after it.
    if let Some(b) = before {
        let after = app.state.store.auth_generation().unwrap();
        assert!(after > b, "a renewal moves the generation ({b} -> {after})");
    }
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    assert_eq!(
        get(&app, &t, "/v1/totp/keys/k").await,
        200,
        "renewed: not expired at its first TTL"
    );
    // And an expired token is refused though cached.
    // (Two seconds: expiry is in whole seconds, so a one-second token may be gone by
    // its first use.)
    let (short, _) = token(&app, json!({"policies": ["reader"], "ttl": "2s"})).await;
    assert_eq!(get(&app, &short, "/v1/totp/keys/k").await, 200);
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    assert_eq!(get(&app, &short, "/v1/totp/keys/k").await, 403);
}

#[tokio::test]
async fn known_tokens_are_served_from_memory_on_sqlite() {
    let app = TestApp::new().await;
    put_policy(&app, "reader", READ_ENGINE).await;
    let (t, _) = token(&app, json!({"policies": ["reader"]})).await;
    assert!(app.state.auth_cache.is_empty());
    get(&app, &t, "/v1/totp/keys/k").await;
    let cached = app.state.auth_cache.len();
    if app.is_sqlite() {
        assert_eq!(cached, 1, "the token's caller is kept");
    } else {
        assert_eq!(
            cached, 0,
            "PostgreSQL: nothing cached (other daemons write too)"
        );
    }
    // An unknown token is never kept.
    get(&app, "not-a-token", "/v1/totp/keys/k").await;
    assert_eq!(app.state.auth_cache.len(), cached);
}

//! Nitride one-time policy tokens: create, list and delete under `/v1/auth/<mount>/totp`,
//! and spending one on `PUT /v1/sys/policies/acl/<name>` exactly once. Surface tests
//! drive the app in-process; the last tests start the real binary for the CLI, the purge
//! sweep, the log lines, a restart and a refused mount.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::app::TestApp;
use common::{count_rows, make_token, unix_now, Daemon, Resp, BIN};
use serde_json::{json, Value};
use totpd::auth::Peer;

/// A policy document that says `tag`, so a test can tell which write is in force.
fn doc(tag: &str) -> Value {
    json!({"path": {format!("secret/{tag}"): {"capabilities": ["read"]}}})
}

fn now() -> i64 {
    unix_now() as i64
}

fn future() -> i64 {
    now() + 600
}

/// Writes policy `name` as root, with `doc(tag)`.
async fn put_policy(app: &TestApp, name: &str, tag: &str) {
    let r = app
        .req(
            "PUT",
            &format!("/v1/sys/policies/acl/{name}"),
            Some(json!({"policy": doc(tag)})),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
}

/// The document of policy `name` as root reads it.
async fn policy_of(app: &TestApp, name: &str) -> Value {
    let r = app
        .req("GET", &format!("/v1/sys/policies/acl/{name}"), None, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    serde_json::from_str(r.json["data"]["policy"].as_str().unwrap()).unwrap()
}

/// Creates a token as root; returns the answer.
async fn create(app: &TestApp, mount: &str, body: Value) -> Resp {
    app.req("PUT", &format!("/v1/auth/{mount}/totp"), Some(body), None)
        .await
}

/// Creates a token for `policy` on `mount`, good until `expiration`; returns its uuid.
async fn token(app: &TestApp, mount: &str, policy: &str, expiration: i64) -> String {
    let r = create(
        app,
        mount,
        json!({"policy": policy, "expiration": expiration}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json["data"]["uuid"].as_str().unwrap().to_string()
}

/// A create with these raw body bytes, as root.
async fn create_raw(app: &TestApp, body: Vec<u8>) -> Resp {
    app.raw(
        Peer::Unix { uid: Some(0) },
        "PUT",
        "/v1/auth/ratls/totp",
        &[],
        Some(body),
    )
    .await
}

/// Spends `uuid` on writing `doc(tag)` as policy `name`, as socket peer `uid`.
async fn spend_as(app: &TestApp, uid: u32, name: &str, tag: &str, uuid: &str) -> Resp {
    app.req_as(
        uid,
        "PUT",
        &format!("/v1/sys/policies/acl/{name}"),
        Some(json!({"policy": doc(tag), "totp": uuid})),
        None,
    )
    .await
}

/// A peer with only the `default` policy.
const AGENT: u32 = 1234;

/// Asserts Nitride's error shape with this status.
fn assert_nitride(r: &Resp, status: u16) {
    assert_eq!(r.status, status, "{}", r.text);
    assert_eq!(r.json["statusCode"], status, "{}", r.text);
    assert!(r.json["message"].is_string(), "{}", r.text);
}

/// The one answer every refused spend gets.
fn assert_refused(r: &Resp) {
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(
        r.json,
        json!({"errors": ["permission denied"]}),
        "{}",
        r.text
    );
}

async fn metrics(app: &TestApp) -> String {
    app.req("GET", "/v1/sys/metrics", None, None).await.text
}

#[tokio::test]
async fn bad_creates_name_the_field_and_store_nothing() {
    let app = TestApp::new().await;
    put_policy(&app, "deploy", "v0").await;
    let cases = [
        (
            json!({"expiration": now() - 10, "policy": "deploy"}),
            "expiration",
        ),
        (
            json!({"expiration": now(), "policy": "deploy"}),
            "expiration",
        ),
        (
            json!({"expiration": future().to_string(), "policy": "deploy"}),
            "expiration",
        ),
        (json!({"expiration": 1.5, "policy": "deploy"}), "expiration"),
        (json!({"expiration": future()}), "policy"),
        (
            json!({"expiration": future(), "policy": "no-such-policy"}),
            "policy",
        ),
        (json!({"expiration": future(), "policy": "root"}), "policy"),
        (
            json!({"expiration": future(), "policy": "default"}),
            "policy",
        ),
        (json!({"expiration": future(), "policy": 7}), "policy"),
        (
            json!({"expiration": future(), "policy": "deploy", "created": "now"}),
            "created",
        ),
        (
            json!({"expiration": future(), "policy": "deploy", "uuid": 5}),
            "uuid",
        ),
    ];
    for (body, field) in cases {
        let r = create(&app, "ratls", body.clone()).await;
        assert_nitride(&r, 400);
        assert!(r.json["errors"][field].is_string(), "{body}: {}", r.text);
    }
    // Every bad field at once.
    let r = create(&app, "ratls", json!({"expiration": "soon"})).await;
    assert_nitride(&r, 400);
    assert!(r.json["errors"]["expiration"].is_string() && r.json["errors"]["policy"].is_string());
    // Bodies that are not an object, or not JSON.
    for raw in [&b"[1, 2]"[..], b"\"x\"", b"42", b"{\"policy\": "] {
        let r = create_raw(&app, raw.to_vec()).await;
        assert_nitride(&r, 400);
        assert!(r.json["errors"]["body"].is_string(), "{}", r.text);
    }
    assert_eq!(app.count_rows("policy_tokens"), 0);
    // An empty list is a 404, as Vault answers one.
    let r = app.req("LIST", "/v1/auth/ratls/totp", None, None).await;
    assert_nitride(&r, 404);
    assert_eq!(r.json["message"], totpd::api::nitride::NO_TOKENS);
}

#[tokio::test]
async fn a_body_from_the_seed_sample_gets_a_fresh_uuid() {
    let app = TestApp::new().await;
    put_policy(&app, "deploy", "v0").await;
    let expiration = future();
    let before = now();
    // Seed 001's request sample, with a real policy and a future expiration.
    let r = create(
        &app,
        "ratls",
        json!({"created": 0, "expiration": expiration, "policy": "deploy", "uuid": "text"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    for (k, v) in [
        ("lease_id", json!("")),
        ("renewable", json!(false)),
        ("lease_duration", json!(0)),
        ("wrap_info", Value::Null),
        ("warnings", Value::Null),
        ("auth", Value::Null),
    ] {
        assert_eq!(r.json[k], v, "{k}: {}", r.text);
    }
    assert!(r.json["request_id"].is_string());
    let data = &r.json["data"];
    let uuid = data["uuid"].as_str().unwrap();
    assert_ne!(uuid, "text");
    let parsed = uuid::Uuid::parse_str(uuid).unwrap();
    assert_eq!(parsed.get_version_num(), 4, "{uuid}");
    let created = data["created"].as_i64().unwrap();
    assert!((before..=now()).contains(&created), "created {created}");
    assert_eq!(data["expiration"], expiration);
    assert_eq!(data["policy"], "deploy");

    // Another create, another uuid; the list shows each by its first 8 characters.
    let second = token(&app, "ratls", "deploy", expiration).await;
    assert_ne!(second, uuid);
    let r = app.req("LIST", "/v1/auth/ratls/totp", None, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // Oldest first; made within one second, so either order.
    let mut keys: Vec<String> = serde_json::from_value(r.json["data"]["keys"].clone()).unwrap();
    keys.sort();
    let mut want = vec![uuid[..8].to_string(), second[..8].to_string()];
    want.sort();
    assert_eq!(keys, want);
    let t = r.json["data"]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["prefix"] == uuid[..8])
        .unwrap();
    assert_eq!(
        (
            &t["prefix"],
            &t["policy"],
            &t["created"],
            &t["expiration"],
            &t["spent"]
        ),
        (
            &json!(&uuid[..8]),
            &json!("deploy"),
            &json!(created),
            &json!(expiration),
            &json!(false)
        )
    );
    // The uuid itself is nowhere: not in the list, not in the database.
    assert!(!r.text.contains(uuid));
    let db = app.db_bytes();
    assert!(!common::contains(&db, uuid.as_bytes()));
    assert!(!common::contains(&db, second.as_bytes()));
}

#[tokio::test]
async fn a_token_updates_the_policy_once_over_the_socket_and_over_tcp() {
    let app = TestApp::new().await;
    put_policy(&app, "deploy", "v0").await;

    // A socket peer with no right on the policy...
    let r = app
        .req_as(
            AGENT,
            "PUT",
            "/v1/sys/policies/acl/deploy",
            Some(json!({"policy": doc("x")})),
            None,
        )
        .await;
    assert_refused(&r);
    // ...updates it once with a token.
    let uuid = token(&app, "ratls", "deploy", future()).await;
    let r = spend_as(&app, AGENT, "deploy", "v1", &uuid).await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert_eq!(policy_of(&app, "deploy").await, doc("v1"));
    assert_refused(&spend_as(&app, AGENT, "deploy", "v2", &uuid).await);
    // Root has the right, and a token it sends is checked all the same.
    assert_refused(&spend_as(&app, 0, "deploy", "v2", &uuid).await);
    assert_eq!(policy_of(&app, "deploy").await, doc("v1"));

    // A `default` token over TCP.
    let default_token = make_token(&app, json!({"policies": ["default"]})).await;
    let headers = [("x-vault-token", default_token)];
    let body = |tag: &str, uuid: &str| Some(json!({"policy": doc(tag), "totp": uuid}));
    let uuid = token(&app, "ratls", "deploy", future()).await;
    let r = app
        .tcp_req(
            "PUT",
            "/v1/sys/policies/acl/deploy",
            &headers,
            body("v3", &uuid),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert_eq!(policy_of(&app, "deploy").await, doc("v3"));
    let r = app
        .tcp_req(
            "PUT",
            "/v1/sys/policies/acl/deploy",
            &headers,
            body("v4", &uuid),
        )
        .await;
    assert_refused(&r);
    assert_eq!(policy_of(&app, "deploy").await, doc("v3"));
    assert!(metrics(&app)
        .await
        .contains("totpd_verifications_total{surface=\"nitride\",outcome=\"accepted\"} 2\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_concurrent_spends_of_one_token_update_once() {
    let app = Arc::new(TestApp::new().await);
    put_policy(&app, "deploy", "v0").await;
    let uuid = token(&app, "ratls", "deploy", future()).await;
    let barrier = Arc::new(tokio::sync::Barrier::new(16));
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let (app, barrier, uuid) = (app.clone(), barrier.clone(), uuid.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let r = spend_as(&app, AGENT + i, "deploy", &format!("w{i}"), &uuid).await;
                (i, r.status)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for t in tasks {
        let (i, status) = t.await.unwrap();
        match status {
            204 => winners.push(i),
            403 => {}
            other => panic!("spend {i}: {other}"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    assert_eq!(
        policy_of(&app, "deploy").await,
        doc(&format!("w{}", winners[0]))
    );
}

#[tokio::test]
async fn every_refusal_is_the_same_403_and_changes_nothing() {
    let app = TestApp::new().await;
    put_policy(&app, "alpha", "a0").await;
    put_policy(&app, "beta", "b0").await;

    // For policy A, presented on policy B.
    let for_alpha = token(&app, "ratls", "alpha", future()).await;
    assert_refused(&spend_as(&app, AGENT, "beta", "b1", &for_alpha).await);
    // Expired.
    let short = token(&app, "ratls", "alpha", now() + 2).await;
    // Deleted.
    let deleted = token(&app, "ratls", "alpha", future()).await;
    let r = app
        .req(
            "DELETE",
            &format!("/v1/auth/ratls/totp/{deleted}"),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_refused(&spend_as(&app, AGENT, "alpha", "a1", &deleted).await);
    // Garbage, and nothing at all.
    for garbage in ["text", "", "tpd.xyz", &"f".repeat(100)] {
        assert_refused(&spend_as(&app, AGENT, "alpha", "a1", garbage).await);
    }
    // Purged after it was spent: unknown now, and refused like spent.
    let purged = token(&app, "ratls", "alpha", future()).await;
    assert_eq!(
        spend_as(&app, AGENT, "alpha", "a2", &purged).await.status,
        204
    );
    assert_eq!(app.store.purge_policy_tokens(now()).await.unwrap(), 1);
    assert_refused(&spend_as(&app, AGENT, "alpha", "a3", &purged).await);
    assert_eq!(policy_of(&app, "alpha").await, doc("a2"));

    tokio::time::sleep(Duration::from_millis(2500)).await;
    while now() < now_plus_expiry(&app, &short).await {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_refused(&spend_as(&app, AGENT, "alpha", "a4", &short).await);
    // Expired and then purged: still refused.
    assert_eq!(app.store.purge_policy_tokens(now()).await.unwrap(), 1);
    assert_refused(&spend_as(&app, AGENT, "alpha", "a4", &short).await);

    assert_eq!(policy_of(&app, "alpha").await, doc("a2"));
    assert_eq!(policy_of(&app, "beta").await, doc("b0"));
    // The token presented on the wrong policy is still good for its own.
    assert_eq!(
        spend_as(&app, AGENT, "alpha", "a5", &for_alpha)
            .await
            .status,
        204
    );
    assert_eq!(policy_of(&app, "alpha").await, doc("a5"));
    // The reasons went to the metrics, not to the caller.
    let m = metrics(&app).await;
    for outcome in ["other_policy", "unknown", "malformed", "expired"] {
        assert!(
            m.contains(&format!("surface=\"nitride\",outcome=\"{outcome}\"")),
            "{outcome}: {m}"
        );
    }
}

/// The expiration of the token `uuid` of `ratls`, from the list.
async fn now_plus_expiry(app: &TestApp, uuid: &str) -> i64 {
    let r = app.req("LIST", "/v1/auth/ratls/totp", None, None).await;
    r.json["data"]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["prefix"] == uuid[..8])
        .and_then(|t| t["expiration"].as_i64())
        .unwrap()
}

#[tokio::test]
async fn delete_answers_200_for_an_unknown_uuid_and_400_for_a_malformed_one() {
    let app = TestApp::new().await;
    put_policy(&app, "deploy", "v0").await;
    let unknown = uuid::Uuid::new_v4();
    let r = app
        .req(
            "DELETE",
            &format!("/v1/auth/ratls/totp/{unknown}"),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["data"], json!({}));
    assert_eq!(r.json["lease_id"], "");
    for bad in ["not-a-uuid", "1234", "text"] {
        let r = app
            .req("DELETE", &format!("/v1/auth/ratls/totp/{bad}"), None, None)
            .await;
        assert_nitride(&r, 400);
        assert!(r.json["errors"]["uuid"].is_string(), "{}", r.text);
    }
    // A real one goes, in upper case too.
    let uuid = token(&app, "ratls", "deploy", future()).await;
    let r = app
        .req(
            "DELETE",
            &format!("/v1/auth/ratls/totp/{}", uuid.to_uppercase()),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(app.count_rows("policy_tokens"), 0);
    // The 8 characters LIST shows revoke a token whose uuid is lost.
    let lost = token(&app, "ratls", "deploy", future()).await;
    let r = app
        .req(
            "DELETE",
            &format!("/v1/auth/ratls/totp/{}", &lost[..8]),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(app.count_rows("policy_tokens"), 0);
    assert_refused(&spend_as(&app, AGENT, "deploy", "v1", &lost).await);
}

#[tokio::test]
async fn a_default_caller_cannot_create_list_or_delete() {
    let app = TestApp::new().await;
    put_policy(&app, "deploy", "v0").await;
    let uuid = token(&app, "ratls", "deploy", future()).await;
    let body = json!({"policy": "deploy", "expiration": future()});
    let r = app
        .req_as(
            AGENT,
            "PUT",
            "/v1/auth/ratls/totp",
            Some(body.clone()),
            None,
        )
        .await;
    assert_nitride(&r, 403);
    assert_nitride(
        &app.req_as(AGENT, "LIST", "/v1/auth/ratls/totp", None, None)
            .await,
        403,
    );
    let r = app
        .req_as(
            AGENT,
            "DELETE",
            &format!("/v1/auth/ratls/totp/{uuid}"),
            None,
            None,
        )
        .await;
    assert_nitride(&r, 403);
    assert_eq!(app.count_rows("policy_tokens"), 1);

    // Sudo on the mount's path, granted by a policy, is what it takes to list and
    // delete; to make a token for a policy, the maker needs the right to write it too,
    // so sudo on a mount never becomes the right to write any policy.
    let r = app
        .req(
            "PUT",
            "/v1/sys/policies/acl/token-maker",
            Some(json!({"policy": {"path": {
                "auth/ratls/totp*": {"capabilities": ["sudo"]},
                "sys/policies/acl/deploy": {"capabilities": ["update"]},
            }}})),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    put_policy(&app, "other", "o0").await;
    let maker = [(
        "x-vault-token",
        make_token(&app, json!({"policies": ["token-maker"]})).await,
    )];
    let r = app
        .tcp_req("PUT", "/v1/auth/ratls/totp", &maker, Some(body))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    for policy in ["other", "token-maker"] {
        let r = app
            .tcp_req(
                "PUT",
                "/v1/auth/ratls/totp",
                &maker,
                Some(json!({"policy": policy, "expiration": future()})),
            )
            .await;
        assert_nitride(&r, 403);
    }
    assert_eq!(
        policy_of(&app, "token-maker").await["path"]["auth/ratls/totp*"],
        json!({"capabilities": ["sudo"]})
    );
    let r = app
        .tcp_req("LIST", "/v1/auth/ratls/totp", &maker, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = app
        .tcp_req(
            "DELETE",
            &format!("/v1/auth/ratls/totp/{uuid}"),
            &maker,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_refused(&spend_as(&app, AGENT, "deploy", "v1", &uuid).await);
    // ...on that mount only.
    let mut app = app;
    app.set_mounts(&["ci"]);
    let r = app.tcp_req("LIST", "/v1/auth/ci/totp", &maker, None).await;
    assert_nitride(&r, 403);
}

#[tokio::test]
async fn a_second_mount_holds_its_own_tokens() {
    let mut app = TestApp::new().await;
    put_policy(&app, "deploy", "v0").await;
    // Not served until configured.
    let r = create(
        &app,
        "ci",
        json!({"policy": "deploy", "expiration": future()}),
    )
    .await;
    assert_nitride(&r, 404);
    app.set_mounts(&["ci"]);

    let in_ci = token(&app, "ci", "deploy", future()).await;
    let in_ratls = token(&app, "ratls", "deploy", future()).await;
    let keys = |r: Resp| r.json["data"]["keys"].clone();
    assert_eq!(
        keys(app.req("LIST", "/v1/auth/ratls/totp", None, None).await),
        json!([&in_ratls[..8]])
    );
    assert_eq!(
        keys(
            app.req("GET", "/v1/auth/ci/totp?list=true", None, None)
                .await
        ),
        json!([&in_ci[..8]])
    );
    // Deleting through ratls answers as Nitride does, and deletes nothing.
    let r = app
        .req(
            "DELETE",
            &format!("/v1/auth/ratls/totp/{in_ci}"),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        keys(app.req("LIST", "/v1/auth/ci/totp", None, None).await),
        json!([&in_ci[..8]])
    );
    // The spend names no mount.
    assert_eq!(
        spend_as(&app, AGENT, "deploy", "v1", &in_ci).await.status,
        204
    );
    assert_nitride(
        &create(
            &app,
            "nope",
            json!({"policy": "deploy", "expiration": future()}),
        )
        .await,
        404,
    );
}

#[tokio::test]
async fn unspent_tokens_stay_good_and_spent_ones_spent_across_a_restart() {
    let mut app = TestApp::new().await;
    put_policy(&app, "deploy", "v0").await;
    let spent = token(&app, "ratls", "deploy", future()).await;
    let kept = token(&app, "ratls", "deploy", future()).await;
    assert_eq!(
        spend_as(&app, AGENT, "deploy", "v1", &spent).await.status,
        204
    );
    app.reopen().await;
    assert_refused(&spend_as(&app, AGENT, "deploy", "v2", &spent).await);
    assert_eq!(
        spend_as(&app, AGENT, "deploy", "v3", &kept).await.status,
        204
    );
    assert_eq!(policy_of(&app, "deploy").await, doc("v3"));
}

#[tokio::test]
async fn an_invalid_policy_body_does_not_spend_the_token() {
    let app = TestApp::new().await;
    put_policy(&app, "deploy", "v0").await;
    let uuid = token(&app, "ratls", "deploy", future()).await;
    for bad in [
        json!("not json"),
        json!(42),
        json!({"path": {"x": {"capabilities": ["fly"]}}}),
        json!({"paths": {}}),
        // Nested past the bound (the HCL parser's time doubles with each level): refused
        // before any parsing, whoever sends it.
        json!(format!("s = {}", "{2+".repeat(40))),
    ] {
        let r = app
            .req_as(
                AGENT,
                "PUT",
                "/v1/sys/policies/acl/deploy",
                Some(json!({"policy": bad, "totp": uuid})),
                None,
            )
            .await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
    }
    // A totp that is not a string is a bad request too, not a refusal.
    let r = app
        .req_as(
            AGENT,
            "PUT",
            "/v1/sys/policies/acl/deploy",
            Some(json!({"policy": doc("v1"), "totp": 5})),
            None,
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(policy_of(&app, "deploy").await, doc("v0"));
    assert_eq!(
        spend_as(&app, AGENT, "deploy", "v1", &uuid).await.status,
        204
    );
    assert_eq!(policy_of(&app, "deploy").await, doc("v1"));
}

#[tokio::test]
async fn errors_on_these_paths_are_in_nitrides_shape() {
    let app = TestApp::new().await;
    assert_nitride(
        &app.req("PATCH", "/v1/auth/ratls/totp", Some(json!({})), None)
            .await,
        405,
    );
    // POST creates as PUT does (Vault treats them alike): here, a 400 for the body.
    assert_nitride(
        &app.req("POST", "/v1/auth/ratls/totp", Some(json!({})), None)
            .await,
        400,
    );
    let r = app
        .req("GET", "/v1/auth/ratls/totp?list=maybe", None, None)
        .await;
    assert_nitride(&r, 400);
    assert!(r.json["errors"]["list"].is_string(), "{}", r.text);
    assert_nitride(
        &app.req("GET", "/v1/auth/ratls/totp", None, None).await,
        405,
    );
    assert_nitride(
        &app.req("GET", "/v1/auth/ratls/totp/x/y", None, None).await,
        404,
    );
    assert_nitride(
        &app.req("LIST", "/v1/auth/elsewhere/totp", None, None).await,
        404,
    );
    let big = format!(
        r#"{{"policy": "{}", "expiration": 1}}"#,
        "p".repeat(70 * 1024)
    );
    let r = create_raw(&app, big.into_bytes()).await;
    assert_nitride(&r, 413);
    // The token routes stay the system API's, in Vault's shape.
    let r = app.req("GET", "/v1/auth/token/nothing", None, None).await;
    assert_eq!(r.status, 404);
    assert!(r.json["errors"].is_array(), "{}", r.text);
}

#[tokio::test]
async fn operators_see_each_token_and_its_state_in_the_database() {
    let mut app = TestApp::new().await;
    app.set_mounts(&["ci"]);
    put_policy(&app, "deploy", "v0").await;
    let unspent = token(&app, "ratls", "deploy", future()).await;
    let spent = token(&app, "ci", "deploy", future()).await;
    let expired = token(&app, "ratls", "deploy", now() + 1).await;
    assert_eq!(
        spend_as(&app, AGENT, "deploy", "v1", &spent).await.status,
        204
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let mut rows: Vec<(String, String, String, String)> = app
        .query("SELECT mount, prefix, policy, state FROM policy_tokens_view")
        .into_iter()
        .map(|r| {
            let v = |i: usize| r[i].clone().expect("no NULL here");
            (v(0), v(1), v(2), v(3))
        })
        .collect();
    rows.sort();
    let row = |m: &str, u: &str, s: &str| {
        (
            m.to_string(),
            u[..8].to_string(),
            "deploy".to_string(),
            s.to_string(),
        )
    };
    let mut want = vec![
        row("ratls", &unspent, "unspent"),
        row("ci", &spent, "spent"),
        row("ratls", &expired, "expired"),
    ];
    want.sort();
    assert_eq!(rows, want);
}

// ----- the real binary -----

/// Runs the CLI; returns (exit code, stdout, stderr).
fn cli(d: &Daemon, args: &[&str]) -> (i32, String, String) {
    let out = d.cli().args(args).output().expect("run the CLI");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

#[tokio::test]
async fn the_cli_the_purge_sweep_the_logs_and_a_restart_on_the_real_daemon() {
    let mut d = Daemon::start_with(&["--mount", "ci", "--purge-interval", "1s"], true);
    let r = d
        .req(
            "PUT",
            "/v1/sys/policies/acl/deploy",
            Some(json!({"policy": doc("v0")})),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);

    // Create prints the uuid alone; --json prints the envelope.
    let (code, spent, err) = cli(
        &d,
        &["nitride", "create", "--policy", "deploy", "--ttl", "10m"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(uuid::Uuid::parse_str(&spent).is_ok(), "{spent}");
    let (code, out, err) = cli(
        &d,
        &[
            "nitride", "create", "--policy", "deploy", "--ttl", "600", "--mount", "ci", "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let kept = v["data"]["uuid"].as_str().unwrap().to_string();
    let ttl = v["data"]["expiration"].as_i64().unwrap() - v["data"]["created"].as_i64().unwrap();
    assert!((599..=601).contains(&ttl), "{ttl}");
    // Refusals: one line on stderr naming the fault, exit 1.
    let (code, _, err) = cli(
        &d,
        &["nitride", "create", "--policy", "nope", "--ttl", "10m"],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("policy") && err.contains("no such policy"),
        "{err}"
    );
    let (code, _, err) = cli(&d, &["nitride", "delete", "garbage"]);
    assert_eq!(code, 1);
    assert!(err.contains("no token garb"), "{err}");
    let (code, _, err) = cli(
        &d,
        &["nitride", "create", "--policy", "deploy", "--ttl", "soon"],
    );
    assert_eq!(code, 2, "a usage error: {err}");

    // Spent over the socket; the sweep purges it within a few seconds.
    let r = d
        .req(
            "PUT",
            "/v1/sys/policies/acl/deploy",
            Some(json!({"policy": doc("v1"), "totp": spent})),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let (_, listed, _) = cli(&d, &["nitride", "list", "--json"]);
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed[0]["spent"], true, "{listed}");
    let db = d.data_dir.join("totpd.db");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while count_rows(&db, "policy_tokens") > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the spent token was not purged"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, table, _) = cli(&d, &["nitride", "list", "--mount", "ci"]);
    assert!(
        table.contains(&kept[..8]) && table.contains("unspent"),
        "{table}"
    );

    // A token that expires while the daemon is down is purged when it starts, though
    // the next sweep is an hour away.
    let (code, _, err) = cli(
        &d,
        &["nitride", "create", "--policy", "deploy", "--ttl", "3"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(d.stop(), Some(0));
    assert_eq!(count_rows(&db, "policy_tokens"), 2);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    d.extra = ["--mount", "ci", "--purge-interval", "1h"]
        .map(String::from)
        .to_vec();
    d.spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while count_rows(&db, "policy_tokens") > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the expired token was not purged at start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // After the restart the spent token is refused, and the unspent one is good: spent
    // here by a `default` token over TCP.
    let spend = |uuid: &str| Some(json!({"policy": doc("v2"), "totp": uuid}));
    let r = d
        .req("PUT", "/v1/sys/policies/acl/deploy", spend(&spent), None)
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    let agent = [(
        "authorization",
        format!(
            "Bearer {}",
            make_token(&d, json!({"policies": ["default"]})).await
        ),
    )];
    let r = d
        .tcp_req("PUT", "/v1/sys/policies/acl/deploy", &agent, spend(&kept))
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let r = d
        .tcp_req("PUT", "/v1/sys/policies/acl/deploy", &agent, spend(&kept))
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    // Deleting through the wrong mount says so; the right one deletes.
    let (code, _, err) = cli(&d, &["nitride", "delete", &kept]);
    assert_eq!(code, 1);
    assert!(err.contains("mount ratls"), "{err}");
    let (code, _, err) = cli(&d, &["nitride", "delete", &kept, "--mount", "ci"]);
    assert_eq!(code, 0, "{err}");
    let (code, table, err) = cli(&d, &["nitride", "list", "--mount", "ci"]);
    assert_eq!((code, table.lines().count()), (0, 1), "{table}{err}");

    // The logs name tokens by their first 8 characters, never whole, and say why a
    // spend was refused (the purged token is unknown now).
    let logs = (0..2)
        .map(|n| std::fs::read_to_string(d.dir.path().join(format!("stderr.{n}"))).unwrap())
        .collect::<String>();
    for uuid in [&spent, &kept] {
        assert!(!logs.contains(uuid.as_str()), "a whole uuid in the log");
        assert!(logs.contains(&uuid[..8]), "{logs}");
    }
    assert!(
        logs.contains("policy token spent") && logs.contains("reason=\"unknown\""),
        "{logs}"
    );
}

#[test]
fn a_mount_that_collides_with_a_route_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    for (mount, why) in [("token", "collides"), ("Bad/Name", "mount")] {
        let out = std::process::Command::new(BIN)
            .args(["serve", "--dev", "--mount", mount, "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--socket")
            .arg(dir.path().join("s.sock"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why) && err.lines().count() == 1, "{err}");
        assert!(!dir.path().join("data").exists(), "nothing is created");
    }
}

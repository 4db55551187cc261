//! The daemon's own API and the daemon as a process. In-process, on a temporary store:
//! tokens (creation rules, TCP header styles, expiry, revocation), ACL policies, Vault's
//! error shapes for bad requests, request ids, the OpenAPI document and metrics. On the
//! real binary: the files a dev start creates, the socket and TCP listeners end to end,
//! another uid over the real socket, restart and the key file, a second daemon and a
//! stale socket, slow clients, SIGTERM, systemd socket activation and the log.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use common::app::TestApp;
use common::{can_switch_uid, contains, make_token, Daemon, Requester};
use serde_json::{json, Value};
use totpd::auth::Peer;

/// A Unix-socket peer with uid 0: root talking to the socket.
const ROOT: Peer = Peer::Unix { uid: Some(0) };

fn pol(paths: Value) -> Value {
    json!({ "policy": { "path": paths } })
}

/// Requests as root over the socket, to the in-process app or to the real daemon.
/// Writes a policy as root.
async fn put_policy(d: &impl Requester, name: &str, paths: Value) {
    let r = d
        .req(
            "PUT",
            &format!("/v1/sys/policies/acl/{name}"),
            Some(pol(paths)),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
}

/// The policy `maker`: may create tokens (no more than its own rights).
async fn put_maker_policy(d: &impl Requester) {
    put_policy(
        d,
        "maker",
        json!({"auth/token/create": {"capabilities": ["update"]}}),
    )
    .await;
}

// In-process: the HTTP surface.

#[tokio::test]
async fn request_id_is_set_and_echoed() {
    let app = TestApp::new().await;
    let r = app.req("GET", "/v1/sys/health", None, None).await;
    let id = r.headers.get("x-request-id").unwrap().to_str().unwrap();
    assert_eq!(id.len(), 36);
    let r = app
        .raw(
            ROOT,
            "GET",
            "/v1/sys/policies/acl?list=true",
            &[("x-request-id", "abc-123".into())],
            None,
        )
        .await;
    assert_eq!(r.headers.get("x-request-id").unwrap(), "abc-123");
    assert_eq!(r.json["request_id"], "abc-123");
    let r = app
        .raw(
            ROOT,
            "GET",
            "/v1/sys/health",
            &[("x-request-id", "trace 42/a".into())],
            None,
        )
        .await;
    assert_eq!(r.headers.get("x-request-id").unwrap(), "trace 42/a");
}

#[tokio::test]
async fn policy_and_token_work_over_tcp_with_every_header_style() {
    let app = TestApp::new().await;
    // As root over the socket: a policy and a token holding it.
    put_policy(
        &app,
        "reader",
        json!({"sys/policies/acl/*": {"capabilities": ["read", "list"]}}),
    )
    .await;
    let tok = make_token(&app, json!({"policies": ["reader"], "display_name": "app"})).await;

    for (h, v) in [
        ("x-vault-token", tok.clone()),
        ("authorization", format!("Bearer {tok}")),
        ("authorization", format!("Token {tok}")),
    ] {
        let r = app
            .tcp_req(
                "GET",
                "/v1/sys/policies/acl/reader",
                &[(h, v.clone())],
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{h}: {}", r.text);
        // The policy comes back as the text it was written in (here, an object's JSON).
        let doc: Value = serde_json::from_str(r.json["data"]["policy"].as_str().unwrap()).unwrap();
        assert_eq!(
            doc["path"]["sys/policies/acl/*"]["capabilities"],
            json!(["read", "list"])
        );
        // Allowed to read, not to write.
        let w = app
            .tcp_req(
                "PUT",
                "/v1/sys/policies/acl/reader",
                &[(h, v)],
                Some(pol(json!({}))),
            )
            .await;
        assert_eq!(w.status, 403, "{}", w.text);
        assert_eq!(w.json, json!({"errors": ["permission denied"]}));
    }
    // Health needs no token, even over TCP.
    assert_eq!(
        app.tcp_req("GET", "/v1/sys/health", &[], None).await.status,
        200
    );
    // Without a token TCP gets 403, even for what the default policy allows.
    let r = app
        .tcp_req("GET", "/v1/auth/token/lookup-self", &[], None)
        .await;
    assert_eq!(r.status, 403);
    let r = app
        .tcp_req("GET", "/v1/sys/policies/acl/reader", &[], None)
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json["errors"][0], "permission denied");
    // A made-up token too.
    let r = app
        .tcp_req(
            "GET",
            "/v1/auth/token/lookup-self",
            &[("x-vault-token", "tpd.nope".into())],
            None,
        )
        .await;
    assert_eq!(r.status, 403);

    // lookup-self tells the token's policies and entity.
    let r = app
        .tcp_req(
            "GET",
            "/v1/auth/token/lookup-self",
            &[("x-vault-token", tok.clone())],
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["data"]["policies"], json!(["default", "reader"]));
    // As Vault: a given display name comes back prefixed `token-` (this changed: it
    // used to come back as given).
    assert_eq!(r.json["data"]["display_name"], "token-app");

    // Revoke ends it.
    let r = app
        .req(
            "POST",
            "/v1/auth/token/revoke",
            Some(json!({"token": tok})),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let r = app
        .tcp_req(
            "GET",
            "/v1/sys/policies/acl/reader",
            &[("x-vault-token", tok.clone())],
            None,
        )
        .await;
    assert_eq!(r.status, 403);

    // An expired token is refused.
    let short = make_token(&app, json!({"policies": ["reader"], "ttl": "1s"})).await;
    let hdr = [("x-vault-token", short)];
    assert_eq!(
        app.tcp_req("GET", "/v1/sys/policies/acl/reader", &hdr, None)
            .await
            .status,
        200
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        app.tcp_req("GET", "/v1/sys/policies/acl/reader", &hdr, None)
            .await
            .status,
        403
    );
}

#[tokio::test]
async fn child_tokens_get_no_more_than_their_parent() {
    let app = TestApp::new().await;
    put_maker_policy(&app).await;
    put_policy(&app, "other", json!({"sys/*": {"capabilities": ["read"]}})).await;
    let maker = make_token(&app, json!({"policies": ["maker"]})).await;
    let r = app
        .req(
            "POST",
            "/v1/auth/token/create",
            Some(json!({"policies": ["other"]})),
            Some(&maker),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = app
        .req(
            "POST",
            "/v1/auth/token/create",
            Some(json!({"policies": ["root"]})),
            Some(&maker),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = app
        .req(
            "POST",
            "/v1/auth/token/create",
            Some(json!({"policies": ["maker"], "entity_id": "someone-else"})),
            Some(&maker),
        )
        .await;
    assert_eq!(r.status, 403);
    let r = app
        .req(
            "POST",
            "/v1/auth/token/create",
            Some(json!({"policies": ["maker"]})),
            Some(&maker),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn another_uid_is_its_own_entity_with_the_default_policy() {
    let app = TestApp::new().await;
    let r = app
        .req_as(65534, "GET", "/v1/auth/token/lookup-self", None, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["data"]["entity_id"], "uid:65534");
    assert_eq!(r.json["data"]["policies"], json!(["default"]));
    // Refused what default does not allow: 403 in Vault's shape.
    for (method, path, body) in [
        ("LIST", "/v1/sys/policies/acl", None),
        (
            "PUT",
            "/v1/sys/policies/acl/x",
            Some(json!({"policy": {"path": {}}})),
        ),
        ("POST", "/v1/auth/token/create", Some(json!({}))),
    ] {
        let r = app.req_as(65534, method, path, body, None).await;
        assert_eq!(r.status, 403, "{method} {path}: {}", r.text);
        assert_eq!(r.json, json!({"errors": ["permission denied"]}));
    }
    // Root over the socket is uid:0 with the root policy.
    let r = app
        .req("GET", "/v1/auth/token/lookup-self", None, None)
        .await;
    assert_eq!(r.json["data"]["entity_id"], "uid:0");
    assert_eq!(r.json["data"]["policies"], json!(["root"]));
}

#[tokio::test]
async fn bad_requests_get_vault_errors_and_change_nothing() {
    let app = TestApp::new().await;
    let before = app
        .req("LIST", "/v1/sys/policies/acl", None, None)
        .await
        .json["data"]["keys"]
        .clone();

    let malformed = app
        .raw(
            ROOT,
            "PUT",
            "/v1/sys/policies/acl/x",
            &[],
            Some(b"{\"policy\": {".to_vec()),
        )
        .await;
    assert_eq!(malformed.status, 400);
    assert!(malformed.vault_error().contains("malformed JSON"));

    let wrong_type = app
        .req(
            "PUT",
            "/v1/sys/policies/acl/x",
            Some(json!({"policy": 5})),
            None,
        )
        .await;
    assert_eq!(wrong_type.status, 400);
    assert!(wrong_type.vault_error().contains("policy"));
    let wrong_type = app
        .req(
            "POST",
            "/v1/auth/token/create",
            Some(json!({"policies": "x", "ttl": []})),
            None,
        )
        .await;
    assert_eq!(wrong_type.status, 400);
    assert!(
        wrong_type.vault_error().starts_with("policies"),
        "{}",
        wrong_type.text
    );
    let bad_cap = app
        .req(
            "PUT",
            "/v1/sys/policies/acl/x",
            Some(pol(json!({"a": {"capabilities": ["fly"]}}))),
            None,
        )
        .await;
    assert_eq!(bad_cap.status, 400);

    let big = format!("{{\"policy\": \"{}\"}}", "a".repeat(100 * 1024));
    let too_big = app
        .raw(
            ROOT,
            "PUT",
            "/v1/sys/policies/acl/x",
            &[],
            Some(big.into_bytes()),
        )
        .await;
    assert_eq!(too_big.status, 413);
    assert!(too_big.json["errors"].is_array());

    let unknown = app.req("GET", "/v1/no/such/route", None, None).await;
    assert_eq!(unknown.status, 404);
    assert!(unknown.json["errors"].is_array());

    let wrong_method = app.req("DELETE", "/v1/sys/health", None, None).await;
    assert_eq!(wrong_method.status, 405);
    assert!(wrong_method.json["errors"].is_array());
    let wrong_method = app.req("GET", "/v1/auth/token/create", None, None).await;
    assert_eq!(wrong_method.status, 405);

    let builtin = app
        .req(
            "PUT",
            "/v1/sys/policies/acl/root",
            Some(pol(json!({}))),
            None,
        )
        .await;
    assert_eq!(builtin.status, 400);

    let after = app
        .req("LIST", "/v1/sys/policies/acl", None, None)
        .await
        .json["data"]["keys"]
        .clone();
    assert_eq!(before, after);
    assert_eq!(
        app.req("GET", "/v1/sys/policies/acl/x", None, None)
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn policies_read_list_delete() {
    let app = TestApp::new().await;
    // The document may come as a string of JSON, as Vault clients send it.
    let doc = r#"{"path": {"api/v2/totp/*": {"capabilities": ["read"]}}}"#;
    let r = app
        .req(
            "POST",
            "/v1/sys/policies/acl/Agents",
            Some(json!({"policy": doc})),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let r = app
        .req("GET", "/v1/sys/policies/acl/agents", None, None)
        .await;
    // Contract change: the policy is read back as the text written, as Vault does, in
    // `policy` and in `rules` (it used to come back as an object).
    assert_eq!(r.json["data"]["policy"], doc);
    assert_eq!(r.json["data"]["rules"], doc);
    let r = app
        .req("GET", "/v1/sys/policies/acl?list=true", None, None)
        .await;
    assert_eq!(r.json["data"]["keys"], json!(["agents", "default", "root"]));
    assert_eq!(
        app.req("GET", "/v1/sys/policies/acl", None, None)
            .await
            .status,
        405
    );
    assert_eq!(
        app.req("DELETE", "/v1/sys/policies/acl/agents", None, None)
            .await
            .status,
        204
    );
    assert_eq!(
        app.req("GET", "/v1/sys/policies/acl/agents", None, None)
            .await
            .status,
        404
    );
    assert_eq!(
        app.req("DELETE", "/v1/sys/policies/acl/default", None, None)
            .await
            .status,
        400
    );
    let r = app
        .req("GET", "/v1/sys/policies/acl/default", None, None)
        .await;
    let doc: Value = serde_json::from_str(r.json["data"]["policy"].as_str().unwrap()).unwrap();
    assert!(doc["path"]["auth/token/lookup-self"].is_object());
}

/// Policies in HCL, as Vault's operators write them: kept as written, read back as that
/// text, granting what they say; malformed HCL is refused naming the line.
#[tokio::test]
async fn hcl_policies_are_kept_as_written_and_grant_what_they_say() {
    let app = TestApp::new().await;
    let hcl = "# agents\npath \"api/v2/totp/*\" {\n  capabilities = [\"read\", \"list\"]\n}\n\npath \"sys/policies/acl/hcl\" {\n  capabilities = [\"read\"]\n}\n";
    let r = app
        .req(
            "PUT",
            "/v1/sys/policies/acl/hcl",
            Some(json!({ "policy": hcl })),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let r = app.req("GET", "/v1/sys/policies/acl/hcl", None, None).await;
    assert_eq!(r.json["data"]["policy"], hcl);
    assert_eq!(r.json["data"]["rules"], hcl);
    assert_eq!(r.json["data"]["name"], "hcl");

    let tok = make_token(&app, json!({"policies": ["hcl"]})).await;
    let h = [("x-vault-token", tok)];
    let r = app
        .tcp_req("GET", "/v1/sys/policies/acl/hcl", &h, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = app
        .tcp_req("DELETE", "/v1/sys/policies/acl/hcl", &h, None)
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    let r = app.tcp_req("GET", "/api/v2/totp/secrets", &h, None).await;
    assert_eq!(r.status, 200, "{}", r.text);

    // Malformed: 400 naming the line, and the stored policy is unchanged.
    let r = app
        .req(
            "PUT",
            "/v1/sys/policies/acl/hcl",
            Some(json!({ "policy": "path \"a\" {\n  capabilities = [\"read\"\n}\n" })),
            None,
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.vault_error().contains("line 3"), "{}", r.text);
    let r = app.req("GET", "/v1/sys/policies/acl/hcl", None, None).await;
    assert_eq!(r.json["data"]["policy"], hcl);
    // Neither a string nor an object.
    let r = app
        .req(
            "PUT",
            "/v1/sys/policies/acl/hcl",
            Some(json!({ "policy": 7 })),
            None,
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
}

#[tokio::test]
async fn openapi_document_is_served() {
    let app = TestApp::new().await;
    let r = app.req("GET", "/v1/sys/openapi", None, None).await;
    assert_eq!(r.status, 200);
    assert!(r.json["openapi"].as_str().unwrap().starts_with("3."));
    assert!(r.json["paths"]["/v1/sys/health"]["get"].is_object());
}

#[tokio::test]
async fn revoking_a_token_revokes_every_token_made_from_it() {
    let app = TestApp::new().await;
    put_maker_policy(&app).await;
    let parent = make_token(&app, json!({"policies": ["maker"]})).await;
    let r = app
        .req(
            "POST",
            "/v1/auth/token/create",
            Some(json!({})),
            Some(&parent),
        )
        .await;
    let child = r.json["auth"]["client_token"].as_str().unwrap().to_string();
    let r = app
        .req(
            "POST",
            "/v1/auth/token/create",
            Some(json!({})),
            Some(&child),
        )
        .await;
    let grandchild = r.json["auth"]["client_token"].as_str().unwrap().to_string();
    let sibling = make_token(&app, json!({"policies": ["maker"]})).await;
    for t in [&parent, &child, &grandchild, &sibling] {
        assert_eq!(
            app.req("GET", "/v1/auth/token/lookup-self", None, Some(t))
                .await
                .status,
            200
        );
    }
    assert_eq!(
        app.req(
            "POST",
            "/v1/auth/token/revoke",
            Some(json!({"token": parent})),
            None
        )
        .await
        .status,
        204
    );
    for t in [&parent, &child, &grandchild] {
        assert_eq!(
            app.req("GET", "/v1/auth/token/lookup-self", None, Some(t))
                .await
                .status,
            403
        );
    }
    assert_eq!(
        app.req("GET", "/v1/auth/token/lookup-self", None, Some(&sibling))
            .await
            .status,
        200
    );
    // revoke-self ends a token and its children too.
    let r = app
        .req(
            "POST",
            "/v1/auth/token/create",
            Some(json!({})),
            Some(&sibling),
        )
        .await;
    let nephew = r.json["auth"]["client_token"].as_str().unwrap().to_string();
    assert_eq!(
        app.req("POST", "/v1/auth/token/revoke-self", None, Some(&sibling))
            .await
            .status,
        204
    );
    assert_eq!(
        app.req("GET", "/v1/auth/token/lookup-self", None, Some(&nephew))
            .await
            .status,
        403
    );
}

#[tokio::test]
async fn token_policy_names_are_normalised_like_policy_names() {
    let app = TestApp::new().await;
    put_policy(
        &app,
        "App",
        json!({"sys/policies/acl/*": {"capabilities": ["read"]}}),
    )
    .await;
    let tok = make_token(&app, json!({"policies": ["App"]})).await;
    let r = app
        .req("GET", "/v1/sys/policies/acl/app", None, Some(&tok))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = app
        .req(
            "POST",
            "/v1/auth/token/create",
            Some(json!({"policies": ["no spaces"]})),
            None,
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.vault_error().contains("policies"));
}

#[tokio::test]
async fn metrics_count_requests_for_root_only() {
    let app = TestApp::new().await;
    app.req("GET", "/v1/sys/health", None, None).await;
    app.req("GET", "/v1/no/such", None, None).await;
    let r = app.req("GET", "/v1/sys/metrics", None, None).await;
    assert_eq!(r.status, 200);
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let count = |class: &str| -> u64 {
        r.text
            .lines()
            .find(|l| l.starts_with(&format!("totpd_requests_total{{class=\"{class}\"}}")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap()
    };
    assert!(count("2xx") >= 1 && count("4xx") >= 1, "{}", r.text);
    let tok = make_token(&app, json!({"policies": ["default"]})).await;
    assert_eq!(
        app.req("GET", "/v1/sys/metrics", None, Some(&tok))
            .await
            .status,
        403
    );
}

// The real binary.

#[tokio::test]
async fn dev_start_creates_db_key_socket_and_root_token() {
    let d = Daemon::start();
    for f in ["totpd.db", "totpd.key", "root-token"] {
        assert!(d.data_dir.join(f).exists(), "{f} missing");
    }
    assert!(d.socket.exists());
    let mode = |f: &str| {
        std::fs::metadata(d.data_dir.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("root-token"), 0o600);
    assert_eq!(mode("totpd.key"), 0o600);
    assert_eq!(mode("totpd.db"), 0o600);
    // Printed once, and the same as the file.
    assert!(d.stdout().contains(&d.root_token()));

    let r = d.req("GET", "/v1/sys/health", None, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["initialized"], true);
    assert!(r.json["server_time_utc"].as_i64().unwrap() > 1_700_000_000);

    // The README's curl example, when curl is on the machine.
    match std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--unix-socket",
        ])
        .arg(&d.socket)
        .arg("http://localhost/v1/sys/health")
        .output()
    {
        Ok(out) => assert_eq!(String::from_utf8_lossy(&out.stdout), "200"),
        Err(_) => eprintln!("SKIPPED part: curl is not installed"),
    }

    // The root token works, and a second start keeps it (printed only the first time).
    let tok = d.root_token();
    let r = d
        .req("GET", "/v1/auth/token/lookup-self", None, Some(&tok))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["data"]["policies"], json!(["root"]));
}

#[test]
fn another_uid_over_the_real_socket_is_its_own_entity() {
    // The peer's uid comes from SO_PEERCRED on the real socket, and the CLI reports a
    // refusal; the policy rules themselves are tested in-process above.
    if !can_switch_uid() {
        return;
    }
    let d = Daemon::start();
    let as_nobody = |args: &[&str]| {
        let out = d
            .cli()
            .args(args)
            .uid(65534)
            .gid(65534)
            .output()
            .expect("run client as uid 65534");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, out, err) = as_nobody(&["api", "GET", "/v1/auth/token/lookup-self"]);
    assert_eq!(code, Some(0), "{out} {err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["data"]["entity_id"], "uid:65534");
    assert_eq!(v["data"]["policies"], json!(["default"]));
    // Refused what default does not allow: 403 in Vault's shape, exit code 1.
    let (code, out, err) = as_nobody(&["api", "LIST", "/v1/sys/policies/acl"]);
    assert_eq!(code, Some(1));
    assert!(out.contains("permission denied"), "{out}");
    assert!(err.contains("403"), "{err}");
    // Root over the socket is uid:0 with the root policy.
    let out = d
        .cli()
        .args(["api", "GET", "/v1/auth/token/lookup-self"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["data"]["entity_id"], "uid:0");
    assert_eq!(v["data"]["policies"], json!(["root"]));
}

#[tokio::test]
async fn over_real_tcp_only_a_token_counts() {
    // A TCP connection is never taken for a socket peer: without a token it gets 403.
    let d = Daemon::start_tcp();
    assert_eq!(
        d.tcp_req("GET", "/v1/sys/health", &[], None).await.status,
        200
    );
    let r = d
        .tcp_req("GET", "/v1/auth/token/lookup-self", &[], None)
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json, json!({"errors": ["permission denied"]}));
    let r = d
        .tcp_req(
            "GET",
            "/v1/auth/token/lookup-self",
            &[("x-vault-token", d.root_token())],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["data"]["policies"], json!(["root"]));
}

#[tokio::test]
async fn restart_keeps_everything_and_wrong_key_refuses_to_start() {
    let mut d = Daemon::start();
    let tok = make_token(&d, json!({"policies": ["default"]})).await;
    put_policy(&d, "keep", json!({"a/*": {"capabilities": ["read"]}})).await;
    assert_eq!(d.stop(), Some(0));

    d.spawn().unwrap();
    assert_eq!(
        d.req("GET", "/v1/auth/token/lookup-self", None, Some(&tok))
            .await
            .status,
        200
    );
    assert_eq!(
        d.req("GET", "/v1/sys/policies/acl/keep", None, None)
            .await
            .status,
        200
    );
    // The root token is printed only on the first start.
    assert!(!d.stdout().contains("tpd."));
    assert_eq!(d.stop(), Some(0));

    // No secret in clear in the database files: tokens are stored as hashes.
    let db = d.db_bytes();
    assert!(!db.is_empty());
    for secret in [tok.as_str(), d.root_token().as_str()] {
        assert!(
            !contains(&db, secret.as_bytes()),
            "a token is in the database in clear"
        );
    }

    // A key file others may read: refuses to start, as ssh refuses a loose private
    // key, and says which chmod to run. The group may read it only when allowed.
    let key = d.data_dir.join("totpd.key");
    let chmod = |m| std::fs::set_permissions(&key, std::fs::Permissions::from_mode(m)).unwrap();
    d.stop();
    chmod(0o644);
    let err = d.spawn().unwrap_err();
    assert!(
        err.contains(&format!("chmod 600 {}", key.display())),
        "{err}"
    );
    assert!(err.contains("exit status: 1"), "{err}");
    chmod(0o640);
    assert!(d.spawn().unwrap_err().contains("chmod 600"));
    d.extra = vec!["--key-group-readable".into()];
    d.spawn().unwrap();
    d.stop();
    chmod(0o600);

    // Another key file: refuses to start and says why.
    let other = d.dir.path().join("other.key");
    std::fs::write(&other, [1u8; 32]).unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();
    d.extra = vec!["--key-file".into(), other.display().to_string()];
    let err = d.spawn().unwrap_err();
    assert!(err.contains("does not open database"), "{err}");
    assert!(err.contains("exit status: 1"), "{err}");
    // And with the key file gone, it does not invent a new one.
    d.extra = vec![];
    std::fs::rename(d.data_dir.join("totpd.key"), d.dir.path().join("moved.key")).unwrap();
    let err = d.spawn().unwrap_err();
    assert!(err.contains("key file") && err.contains("missing"), "{err}");
    assert!(!d.data_dir.join("totpd.key").exists());
}

#[tokio::test]
async fn a_live_daemon_is_not_displaced_and_a_stale_socket_is_replaced() {
    let mut d = Daemon::start();
    let second = |data: &std::path::Path, sock: &std::path::Path| {
        std::process::Command::new(common::BIN)
            .args(["serve", "--dev", "--data-dir"])
            .arg(data)
            .arg("--socket")
            .arg(sock)
            .env_remove("TOTPD_SOCKET")
            .output()
            .unwrap()
    };
    // A second daemon on the same database refuses, whatever its socket.
    let out = second(&d.data_dir, &d.dir.path().join("other.sock"));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("in use by another totpd"), "{err}");
    // A second daemon with its own database on the same socket refuses too.
    let out = second(&d.dir.path().join("other-data"), &d.socket);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already listening"));
    assert_eq!(d.req("GET", "/v1/sys/health", None, None).await.status, 200);
    // Killed hard, it leaves a stale socket file; the next start replaces it.
    let mut child = d.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(d.socket.exists());
    d.spawn().unwrap();
    assert_eq!(d.req("GET", "/v1/sys/health", None, None).await.status, 200);
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let d = Daemon::start_with(&["--header-timeout", "1"], false);
    let mut s = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
    s.write_all(b"GET /v1/sys/health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    // The daemon closes the connection (possibly after a 408); it does not wait forever.
    let read = tokio::time::timeout(Duration::from_secs(8), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "connection still open after 8s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_loses_no_acknowledged_write() {
    let mut d = Daemon::start();
    let sock = d.socket.clone();
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for t in 0..8 {
        let sock = sock.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..5000 {
                let name = format!("load-{t}-{i}");
                let Ok(s) = tokio::net::UnixStream::connect(&sock).await else {
                    break;
                };
                let body =
                    json!({"policy": {"path": {"x/*": {"capabilities": ["read"]}}}}).to_string();
                match common::send(
                    s,
                    "PUT",
                    &format!("/v1/sys/policies/acl/{name}"),
                    &[],
                    Some(body.into_bytes()),
                )
                .await
                {
                    Ok(r) if r.status == 204 => acked.lock().unwrap().push(name),
                    _ => break,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let pid = d.pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let code = common::wait_timeout(d.child.as_mut().unwrap(), Duration::from_secs(40));
    d.child = None;
    assert_eq!(code, Some(0), "{}", d.stderr());
    assert!(!d.socket.exists(), "socket file left behind");
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 10,
        "too little load to mean anything: {}",
        acked.len()
    );

    d.spawn().unwrap();
    let r = d.req("LIST", "/v1/sys/policies/acl", None, None).await;
    let keys: Vec<String> = serde_json::from_value(r.json["data"]["keys"].clone()).unwrap();
    let missing: Vec<_> = acked.iter().filter(|n| !keys.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged writes lost, e.g. {:?}",
        missing.len(),
        missing.first()
    );
}

#[tokio::test]
async fn systemd_socket_activation_is_accepted() {
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("activated.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let fd = listener.as_raw_fd();
    // systemd passes the socket as fd 3 and names the receiving pid; `exec` keeps the
    // shell's pid, so $$ is the daemon's pid.
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "LISTEN_PID=$$ LISTEN_FDS=1 exec {} serve --dev --data-dir {}",
            common::BIN,
            dir.path().join("data").display()
        ))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: dup2 is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::dup2(fd, 3)
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(listener);
    let mut ok = false;
    for _ in 0..200 {
        if let Ok(s) = tokio::net::UnixStream::connect(&sock).await {
            if let Ok(r) = common::send(s, "GET", "/v1/sys/health", &[], None).await {
                ok = r.status == 200;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Its own default socket was not created: the activated one is used instead.
    assert!(!dir.path().join("data").join("totpd.sock").exists());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(
        common::wait_timeout(&mut child, Duration::from_secs(20)),
        Some(0)
    );
    assert!(ok, "no answer on the activated socket");
    // systemd owns the socket file; the daemon leaves it alone.
    assert!(sock.exists());
}

#[tokio::test]
async fn logs_carry_one_line_per_request_and_no_token() {
    let mut d = Daemon::start();
    let tok = make_token(&d, json!({"policies": ["default"]})).await;
    d.req("GET", "/v1/auth/token/lookup-self", None, Some(&tok))
        .await;
    d.req(
        "POST",
        "/v1/auth/token/revoke",
        Some(json!({"token": tok})),
        None,
    )
    .await;
    d.stop();
    let log = d.stderr();
    assert!(!log.contains(&tok), "a token reached the log");
    assert!(!log.contains(&d.root_token()));
    let line = log
        .lines()
        .find(|l| l.contains("route=/v1/auth/token/lookup-self"))
        .expect("request line");
    for part in ["method=GET", "status=200", "ms=", "entity="] {
        assert!(line.contains(part), "{part} missing in {line}");
    }
}

#[test]
fn sigterm_right_after_start_is_a_clean_stop() {
    for _ in 0..5 {
        let mut d = Daemon::start();
        assert_eq!(d.stop(), Some(0), "{}", d.stderr());
        assert!(!d.socket.exists());
    }
}

#[test]
fn with_dev_defaults_another_uid_reaches_the_socket_inside_the_data_dir() {
    if !can_switch_uid() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    let mut child = std::process::Command::new(common::BIN)
        .args(["serve", "--dev", "--socket-mode", "0666", "--data-dir"])
        .arg(&data)
        .env_remove("TOTPD_SOCKET")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let sock = data.join("totpd.sock");
    for _ in 0..400 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o711, "traversable, not listable");
    let out = std::process::Command::new(common::BIN)
        .args(["api", "GET", "/v1/auth/token/lookup-self", "--socket"])
        .arg(&sock)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("uid:65534"));
    // The secrets stay private all the same.
    for f in ["totpd.db", "totpd.key", "root-token"] {
        let m = std::fs::metadata(data.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(m, 0o600, "{f}");
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(
        common::wait_timeout(&mut child, Duration::from_secs(20)),
        Some(0)
    );
}

#[tokio::test]
async fn list_takes_what_go_parse_bool_takes_as_hvac_sends_it() {
    let app = TestApp::new().await;
    put_policy(&app, "ops", json!({"sys/*": {"capabilities": ["read"]}})).await;
    // hvac's client.list sends ?list=True (Python's True as text).
    for v in ["True", "true", "TRUE", "t", "T", "1"] {
        let r = app
            .req("GET", &format!("/v1/sys/policies/acl?list={v}"), None, None)
            .await;
        assert_eq!(r.status, 200, "list={v}: {}", r.text);
        assert!(r.json["data"]["keys"]
            .as_array()
            .unwrap()
            .contains(&json!("ops")));
    }
    for v in ["False", "0", "f"] {
        let r = app
            .req("GET", &format!("/v1/sys/policies/acl?list={v}"), None, None)
            .await;
        assert_eq!(r.status, 405, "list={v}: {}", r.text);
    }
    for v in ["yes", "tRuE", "2"] {
        let r = app
            .req("GET", &format!("/v1/sys/policies/acl?list={v}"), None, None)
            .await;
        assert_eq!(r.status, 400, "list={v}: {}", r.text);
    }
}

#[tokio::test]
async fn a_body_with_anything_after_its_json_is_refused() {
    let app = TestApp::new().await;
    let root = Peer::Unix { uid: Some(0) };
    for body in [
        &br#"{"policy": {"path": {}}} garbage"#[..],
        br#"{"policy": {"path": {}}}{"policy": {"path": {}}}"#,
    ] {
        let r = app
            .raw(
                root,
                "PUT",
                "/v1/sys/policies/acl/p",
                &[],
                Some(body.to_vec()),
            )
            .await;
        assert_eq!(r.status, 400, "{}", r.text);
        assert!(r.vault_error().contains("trailing"), "{}", r.text);
    }
    let r = app.req("GET", "/v1/sys/policies/acl/p", None, None).await;
    assert_eq!(r.status, 404, "nothing was written: {}", r.text);
}

#[tokio::test]
async fn dot_and_dot_dot_are_no_policy_names() {
    let app = TestApp::new().await;
    for name in ["%2e", "%2e%2e", "."] {
        let r = app
            .req(
                "PUT",
                &format!("/v1/sys/policies/acl/{name}"),
                Some(json!({"policy": {"path": {}}})),
                None,
            )
            .await;
        assert!(
            r.status == 400 || r.status == 404 || r.status == 405,
            "{name}: {} {}",
            r.status,
            r.text
        );
    }
    let r = app.req("LIST", "/v1/sys/policies/acl", None, None).await;
    assert_eq!(
        r.json["data"]["keys"],
        json!(["default", "root"]),
        "{}",
        r.text
    );
}

#[tokio::test]
async fn init_and_seal_status_answer_as_an_unsealed_vault_without_a_token() {
    let app = TestApp::new().await;
    let r = app.tcp_req("GET", "/v1/sys/init", &[], None).await;
    assert_eq!((r.status, &r.json), (200, &json!({"initialized": true})));
    let r = app.tcp_req("GET", "/v1/sys/seal-status", &[], None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        (&r.json["initialized"], &r.json["sealed"], &r.json["type"]),
        (&json!(true), &json!(false), &json!("shamir"))
    );
    assert!(r.json["version"].is_string() && r.json["progress"] == 0);
}

#[tokio::test]
async fn tokens_get_the_default_ttl_and_never_outlive_the_max() {
    let app = TestApp::new().await;
    let month = 32 * 24 * 3600;
    let lease = |r: &common::Resp| r.json["auth"]["lease_duration"].as_i64().unwrap();
    let create = |body: Value| {
        let app = &app;
        async move {
            let r = app
                .req("POST", "/v1/auth/token/create", Some(body), None)
                .await;
            assert_eq!(r.status, 200, "{}", r.text);
            r
        }
    };
    // No ttl: the default, 32 days, as Vault's default_lease_ttl.
    let r = create(json!({"policies": ["default"]})).await;
    assert!((month - 5..=month).contains(&lease(&r)), "{}", r.text);
    // Past the max, cut to it.
    for ttl in [json!(i64::MAX), json!("9999999999999h"), json!(month + 100)] {
        let r = create(json!({"policies": ["default"], "ttl": ttl})).await;
        assert!(
            (month - 5..=month).contains(&lease(&r)),
            "{ttl}: {}",
            r.text
        );
    }
    // Only a root token lives for ever.
    let r = create(json!({"policies": ["root"]})).await;
    assert_eq!(lease(&r), 0, "{}", r.text);
    let token = r.json["auth"]["client_token"].as_str().unwrap().to_string();
    let r = app
        .req("GET", "/v1/auth/token/lookup-self", None, Some(&token))
        .await;
    assert_eq!(r.json["data"]["expire_time"], Value::Null, "{}", r.text);
}

#[tokio::test]
async fn lookup_by_token_and_accessor_and_revoke_by_accessor_as_vault() {
    let app = TestApp::new().await;
    let r = app
        .req(
            "POST",
            "/v1/auth/token/create",
            Some(json!({"policies": ["default"], "ttl": "1h", "display_name": "ci"})),
            None,
        )
        .await;
    let token = r.json["auth"]["client_token"].as_str().unwrap().to_string();
    let accessor = r.json["auth"]["accessor"].as_str().unwrap().to_string();

    // lookup-self, with Vault's fields and types.
    let r = app
        .req("GET", "/v1/auth/token/lookup-self", None, Some(&token))
        .await;
    let d = &r.json["data"];
    assert_eq!(d["display_name"], "token-ci");
    assert!(
        d["expire_time"].as_str().unwrap().ends_with('Z'),
        "{}",
        r.text
    );
    assert!(
        d["issue_time"].as_str().unwrap().ends_with('Z'),
        "{}",
        r.text
    );
    assert_eq!(
        (d["creation_ttl"].as_i64(), d["num_uses"].as_i64()),
        (Some(3600), Some(0))
    );
    assert_eq!(
        (&d["orphan"], &d["path"]),
        (&json!(true), &json!("auth/token/create"))
    );
    assert!(
        d["explicit_max_ttl"].is_i64() && d["renewable"].is_boolean() && d.get("meta").is_some()
    );

    // lookup by token (root): the same, with the token as id.
    let r = app
        .req(
            "POST",
            "/v1/auth/token/lookup",
            Some(json!({"token": token})),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        (&r.json["data"]["id"], &r.json["data"]["accessor"]),
        (&json!(token), &json!(accessor))
    );
    let r = app
        .req(
            "POST",
            "/v1/auth/token/lookup",
            Some(json!({"token": "tpd.nothing"})),
            None,
        )
        .await;
    assert_eq!((r.status, r.vault_error()), (403, "bad token"));
    // A default token may not look up others.
    let r = app
        .req(
            "POST",
            "/v1/auth/token/lookup",
            Some(json!({"token": token})),
            Some(&token),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text);

    // lookup by accessor: never the token itself.
    let r = app
        .req(
            "POST",
            "/v1/auth/token/lookup-accessor",
            Some(json!({"accessor": accessor})),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["data"]["id"], "");
    assert!(!r.text.contains(&token));
    assert_eq!(r.json["data"]["display_name"], "token-ci");
    let r = app
        .req(
            "POST",
            "/v1/auth/token/lookup-accessor",
            Some(json!({"accessor": "nope"})),
            None,
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);

    // revoke by accessor takes the children with it.
    put_maker_policy(&app).await;
    let child = make_token(&app, json!({"policies": ["maker"]})).await;
    let r = app
        .req(
            "POST",
            "/v1/auth/token/lookup",
            Some(json!({"token": child})),
            None,
        )
        .await;
    let child_accessor = r.json["data"]["accessor"].as_str().unwrap().to_string();
    let grandchild = {
        let r = app
            .req(
                "POST",
                "/v1/auth/token/create",
                Some(json!({})),
                Some(&child),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.json["auth"]["client_token"].as_str().unwrap().to_string()
    };
    let r = app
        .req(
            "POST",
            "/v1/auth/token/revoke-accessor",
            Some(json!({"accessor": child_accessor})),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    for t in [&child, &grandchild] {
        let r = app
            .req("GET", "/v1/auth/token/lookup-self", None, Some(t))
            .await;
        assert_eq!(r.status, 403, "{}", r.text);
    }
    let r = app
        .req("GET", "/v1/auth/token/lookup-self", None, Some(&token))
        .await;
    assert_eq!(r.status, 200, "the others stay: {}", r.text);
}

/// Renewal as Vault's: renewable by default, by the creation TTL or the increment, never
/// past the explicit max TTL or the parent; `renewable: false` is refused.
#[tokio::test]
async fn tokens_renew_as_vault_within_their_caps() {
    let app = TestApp::new().await;
    let lease = |r: &common::Resp| r.json["auth"]["lease_duration"].as_i64().unwrap();
    let near = |got: i64, want: i64| (want - 5..=want).contains(&got);
    let create = |body: Value, as_token: Option<String>| {
        let app = &app;
        async move {
            let r = app
                .req(
                    "POST",
                    "/v1/auth/token/create",
                    Some(body),
                    as_token.as_deref(),
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.text);
            (
                r.json["auth"]["client_token"].as_str().unwrap().to_string(),
                r,
            )
        }
    };
    let renew_self = |token: String, body: Value| {
        let app = &app;
        async move {
            app.req(
                "POST",
                "/v1/auth/token/renew-self",
                Some(body),
                Some(&token),
            )
            .await
        }
    };

    let (tok, r) = create(json!({"policies": ["default"], "ttl": "1h"}), None).await;
    assert_eq!(r.json["auth"]["renewable"], true, "{}", r.text);
    assert_eq!(
        (
            &r.json["auth"]["num_uses"],
            &r.json["auth"]["mfa_requirement"]
        ),
        (&json!(0), &Value::Null),
        "{}",
        r.text
    );
    let r = app
        .req("GET", "/v1/auth/token/lookup-self", None, Some(&tok))
        .await;
    assert!(r.json["data"].get("last_renewal").is_none(), "{}", r.text);
    let r = app
        .req("GET", "/v1/auth/token/lookup-self", None, Some(&tok))
        .await;
    assert_eq!(
        (
            &r.json["data"]["renewable"],
            &r.json["data"]["creation_ttl"]
        ),
        (&json!(true), &json!(3600))
    );
    // With an increment (the default policy allows renew-self)...
    let r = renew_self(tok.clone(), json!({"increment": "2h"})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(near(lease(&r), 7200), "{}", r.text);
    assert_eq!(r.json["auth"]["client_token"], tok);
    let r = app
        .req("GET", "/v1/auth/token/lookup-self", None, Some(&tok))
        .await;
    assert!(
        near(r.json["data"]["ttl"].as_i64().unwrap(), 7200),
        "{}",
        r.text
    );
    // As Vault: lookup-self shows the token as id, and the renewal once there was one.
    assert_eq!(r.json["data"]["id"], tok);
    assert!(r.json["data"]["last_renewal"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert!(r.json["data"]["last_renewal_time"].is_i64(), "{}", r.text);
    // ...and without one: the creation TTL again (hvac sends an empty body).
    let r = renew_self(tok.clone(), json!({})).await;
    assert!(near(lease(&r), 3600), "{}", r.text);
    // `renew {token}` needs more than the default policy; root may, with an increment.
    let r = app
        .req(
            "POST",
            "/v1/auth/token/renew",
            Some(json!({"token": tok})),
            Some(&tok),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    let r = app
        .req(
            "POST",
            "/v1/auth/token/renew",
            Some(json!({"token": tok, "increment": 100})),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(near(lease(&r), 100), "{}", r.text);

    // explicit_max_ttl: no renewal goes past it.
    let (capped, _) = create(
        json!({"policies": ["default"], "ttl": "10m", "explicit_max_ttl": "90m"}),
        None,
    )
    .await;
    let r = renew_self(capped.clone(), json!({"increment": "5h"})).await;
    assert!(near(lease(&r), 5400), "{}", r.text);
    let r = app
        .req("GET", "/v1/auth/token/lookup-self", None, Some(&capped))
        .await;
    assert_eq!(r.json["data"]["explicit_max_ttl"], 5400, "{}", r.text);

    // A child never outlives its parent, renewed or not.
    put_maker_policy(&app).await;
    let (parent, _) = create(json!({"policies": ["maker"], "ttl": "1h"}), None).await;
    let (child, _) = create(
        json!({"policies": ["default"], "ttl": "30m"}),
        Some(parent.clone()),
    )
    .await;
    let r = renew_self(child.clone(), json!({"increment": "5h"})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(near(lease(&r), 3600), "{}", r.text);

    // Not renewable: refused, and the TTL stays.
    let (fixed, _) = create(
        json!({"policies": ["default"], "ttl": "1h", "renewable": false}),
        None,
    )
    .await;
    let r = renew_self(fixed.clone(), json!({"increment": "2h"})).await;
    assert_eq!(
        (r.status, r.vault_error()),
        (400, "lease is not renewable"),
        "{}",
        r.text
    );
    let r = app
        .req("GET", "/v1/auth/token/lookup-self", None, Some(&fixed))
        .await;
    assert_eq!(r.json["data"]["renewable"], false);
    assert!(
        near(r.json["data"]["ttl"].as_i64().unwrap(), 3600),
        "{}",
        r.text
    );

    // Bad input changes nothing: a negative increment, an unknown token.
    let r = renew_self(tok.clone(), json!({"increment": -5})).await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = app
        .req(
            "POST",
            "/v1/auth/token/renew",
            Some(json!({"token": "tpd.nothing"})),
            None,
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);

    // A token without expiry has nothing to extend.
    let (forever, _) = create(json!({"policies": ["root"]}), None).await;
    let r = renew_self(forever, json!({})).await;
    assert_eq!((r.status, lease(&r)), (200, 0), "{}", r.text);
}

/// Found by review: a token's display_name had no bound and took control characters,
/// which lookups then echo to people's terminals.
#[tokio::test]
async fn display_names_are_bounded_and_printable() {
    let app = TestApp::new().await;
    for name in [json!("x".repeat(129)), json!("ci\u{202e}"), json!("ci\n")] {
        let r = app
            .req(
                "POST",
                "/v1/auth/token/create",
                Some(json!({"policies": ["default"], "display_name": name})),
                None,
            )
            .await;
        assert_eq!(r.status, 400, "{name}: {}", r.text);
    }
    let r = app
        .req(
            "POST",
            "/v1/auth/token/create",
            Some(json!({"policies": ["default"], "display_name": "x".repeat(128)})),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

/// TOTP is only as right as the clock: health says whether the kernel keeps it in sync,
/// and metrics carry the same, once the daemon's clock watcher has looked.
#[tokio::test]
async fn health_and_metrics_show_whether_the_clock_is_synchronized() {
    let d = Daemon::start();
    let r = d.req("GET", "/v1/sys/health", None, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // Outside a seccomp filter the kernel answers: true or false, as it is here.
    assert_eq!(
        r.json["clock_synchronized"],
        totpd::clock::synchronized().unwrap(),
        "{}",
        r.text
    );
    let m = d.req("GET", "/v1/sys/metrics", None, None).await;
    let want = format!(
        "totpd_clock_synchronized {}\n",
        i64::from(totpd::clock::synchronized().unwrap())
    );
    assert!(m.text.contains(&want), "{}", m.text);
}

//! The operators' views in schema.sql: each answers at a `sqlite3` prompt with what it
//! promises, and none of them shows secret material (seeds, sealed values, token or
//! temp_token hashes, recovery codes or their hashes).

mod common;

use common::app::TestApp;
use common::{make_token, parse_otp_url, reference_totp, unix_now};
use serde_json::json;

const MFA: &str = "/v1/identity/mfa/method/totp";
const USERS: &str = "/api/v1/auth/totp";
const BOB: u32 = 3001;

/// Every row of `view`, each cell as text (NULL as ""), with the column names.
fn rows(app: &TestApp, view: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let c = rusqlite::Connection::open_with_flags(
        app.db_path(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut stmt = c.prepare(&format!("SELECT * FROM {view}")).unwrap();
    let names: Vec<String> = stmt.column_names().iter().map(|s| s.to_string()).collect();
    let n = names.len();
    let out = stmt
        .query_map([], |r| {
            (0..n)
                .map(|i| {
                    Ok(match r.get_ref(i)? {
                        rusqlite::types::ValueRef::Null => String::new(),
                        rusqlite::types::ValueRef::Integer(v) => v.to_string(),
                        rusqlite::types::ValueRef::Real(v) => v.to_string(),
                        rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into(),
                        rusqlite::types::ValueRef::Blob(b) => format!("<blob {}>", b.len()),
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    (names, out)
}

fn column<'a>(names: &[String], rows: &'a [Vec<String>], name: &str) -> Vec<&'a str> {
    let i = names.iter().position(|n| n == name).unwrap();
    rows.iter().map(|r| r[i].as_str()).collect()
}

#[tokio::test]
async fn ops_views_answer_and_show_no_secret_material() {
    let app = TestApp::new().await;
    let mut secrets: Vec<String> = Vec::new();

    // A Vault MFA method, a secret for root's entity, and one locked out by failures.
    let r = app
        .req(
            "POST",
            MFA,
            Some(json!({"issuer": "Acme", "method_name": "acme", "max_validation_attempts": 2})),
            None,
        )
        .await;
    let method = r.json["data"]["method_id"].as_str().unwrap().to_string();
    for entity in ["alice", "mallory"] {
        let r = app
            .req(
                "POST",
                &format!("{MFA}/admin-generate"),
                Some(json!({"method_id": method, "entity_id": entity})),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let url = parse_otp_url(r.json["data"]["url"].as_str().unwrap());
        secrets.push(url.secret_b32.clone());
        secrets.push(data_encoding::HEXLOWER.encode(&url.secret));
    }
    for _ in 0..2 {
        let r = app
            .req(
                "POST",
                &format!("{MFA}/validate"),
                Some(json!({"method_id": method, "entity_id": "mallory", "passcode": "000000"})),
                None,
            )
            .await;
        assert_eq!(r.status, 403, "{}", r.text);
    }

    // An agent secret.
    let seed = common::seed(20);
    secrets.push(seed.clone());
    let r = app
        .req_as(
            BOB,
            "POST",
            "/api/v2/totp/secrets",
            Some(json!({"secret": seed, "label": "ci-bot", "issuer": "GitHub"})),
            None,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);

    // A login-step user with a device and recovery codes, and a temp_token.
    common::fresh_step(30, 3).await;
    let r = app
        .req_as(BOB, "POST", &format!("{USERS}/setup/"), None, None)
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let key = r.json["secret_key"].as_str().unwrap().to_string();
    secrets.push(key.clone());
    let code = reference_totp(&common::raw(&key), "SHA1", 6, 30, unix_now());
    let r = app
        .req_as(
            BOB,
            "POST",
            &format!("{USERS}/activate/"),
            Some(json!({ "token": code })),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    for c in r.json["recovery_codes"].as_array().unwrap() {
        let c = c.as_str().unwrap();
        secrets.push(c.to_string());
        // The secret part alone, without its selector.
        secrets.push(c[5..].to_string());
    }
    let r = app
        .req(
            "POST",
            &format!("{USERS}/challenge/"),
            Some(json!({ "user": format!("uid:{BOB}") })),
            None,
        )
        .await;
    let temp = r.json["temp_token"].as_str().unwrap().to_string();
    secrets.push(temp.clone());
    secrets.push(totpd::auth::hash_token(&temp));

    // Tokens.
    let tok = make_token(&app, json!({"policies": ["default"], "ttl": "1h"})).await;
    secrets.push(tok.clone());
    secrets.push(totpd::auth::hash_token(&tok));
    secrets.push(app.root_token());
    secrets.push(totpd::auth::hash_token(&app.root_token()));

    // secrets_view: one row per secret, with its surface and owner.
    let (names, all) = rows(&app, "secrets_view");
    let mut surfaces = column(&names, &all, "surface");
    surfaces.sort();
    assert_eq!(
        surfaces,
        ["agent", "user_totp", "vault_mfa", "vault_mfa"],
        "{all:?}"
    );
    let entities = column(&names, &all, "entity");
    for e in ["alice", "mallory", "uid:3001"] {
        assert!(entities.contains(&e), "{e}: {all:?}");
    }

    // lockouts_view: mallory's secret, and nobody else.
    let (names, locked) = rows(&app, "lockouts_view");
    assert_eq!(column(&names, &locked, "entity"), ["mallory"], "{locked:?}");
    assert_eq!(column(&names, &locked, "what"), ["acme"], "{locked:?}");

    // secrets_per_entity_view: one secret each.
    let (names, per) = rows(&app, "secrets_per_entity_view");
    assert!(column(&names, &per, "secrets").iter().all(|n| *n == "1"));
    assert_eq!(per.len(), 4, "{per:?}");

    // tokens_view: the new token under `default`, root's under `root`, by accessor.
    let (names, toks) = rows(&app, "tokens_view");
    let policies = column(&names, &toks, "policy");
    assert!(
        policies.contains(&"default") && policies.contains(&"root"),
        "{toks:?}"
    );

    // The views that were there before still answer.
    let (_, users) = rows(&app, "user_totp_view");
    assert_eq!(users.len(), 1, "{users:?}");
    let (_, _policy_tokens) = rows(&app, "policy_tokens_view");

    // No view shows secret material, in any case.
    for view in [
        "secrets_view",
        "lockouts_view",
        "secrets_per_entity_view",
        "tokens_view",
        "user_totp_view",
        "policy_tokens_view",
    ] {
        let (names, all) = rows(&app, view);
        let text = format!("{names:?} {all:?}").to_lowercase();
        assert!(!text.contains("<blob"), "{view} shows a blob: {text}");
        assert!(!text.contains("$argon2"), "{view} shows a hash: {text}");
        for s in &secrets {
            assert!(
                !text.contains(&s.to_lowercase()),
                "{view} shows secret material"
            );
        }
    }
}

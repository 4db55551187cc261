//! The user login step under `/api/v1/auth/totp/`: enrolment with recovery codes,
//! challenge and verify, several devices, the per-user lock, deactivation, and DRF's
//! error shapes. Surface tests drive the app in-process; the last test runs the whole
//! flow against the real binary and greps its database and log for secrets.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::app::TestApp;
use common::{
    contains, count_rows, make_token, parse_otp_url, reference_totp, unix_now, Daemon, Resp,
};
use serde_json::{json, Value};
use totpd::api::user_totp::Settings;

const BASE: &str = "/api/v1/auth/totp";

/// Socket peers with only the `default` policy: each is the user `uid:<N>`.
const ALICE: u32 = 2001;
const BOB: u32 = 2002;

fn user(uid: u32) -> String {
    format!("uid:{uid}")
}

/// A device as setup handed it out.
struct Device {
    secret: Vec<u8>,
    secret_key: String,
}

impl Device {
    /// The device's code at `t`, computed by an independent RFC 6238 implementation.
    fn code_at(&self, t: u64) -> String {
        reference_totp(&self.secret, "SHA1", 6, 30, t)
    }
    /// The current code.
    fn now(&self) -> String {
        self.code_at(unix_now())
    }
    /// The next step's code: inside the window, and after the step activation used.
    fn next(&self) -> String {
        self.code_at(unix_now() + 30)
    }
}

async fn post(app: &TestApp, uid: u32, op: &str, body: Option<Value>) -> Resp {
    app.req_as(uid, "POST", &format!("{BASE}/{op}/"), body, None)
        .await
}

async fn get(app: &TestApp, uid: u32, op: &str) -> Resp {
    app.req_as(uid, "GET", &format!("{BASE}/{op}/"), None, None)
        .await
}

/// setup (with this body) as `uid`; checks the answer and returns the device.
async fn setup(app: &TestApp, uid: u32, body: Option<Value>) -> Device {
    let r = post(app, uid, "setup", body).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let secret_key = r.json["secret_key"].as_str().unwrap().to_string();
    let url = parse_otp_url(r.json["provisioning_uri"].as_str().unwrap());
    assert_eq!(url.secret_b32, secret_key);
    assert_eq!(url.secret.len(), 20);
    assert_eq!(
        (url.algorithm.as_str(), url.digits, url.period),
        ("SHA1", 6, 30)
    );
    assert_eq!(url.issuer, "totpd");
    assert_eq!(url.label, format!("totpd:{}", user(uid)));
    Device {
        secret: url.secret,
        secret_key,
    }
}

/// setup and activate the first device of `uid`; returns it and the recovery codes.
async fn enrolled(app: &TestApp, uid: u32) -> (Device, Vec<String>) {
    common::fresh_step(30, 3).await;
    let d = setup(app, uid, None).await;
    let r = post(app, uid, "activate", Some(json!({"token": d.now()}))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let codes: Vec<String> = serde_json::from_value(r.json["recovery_codes"].clone()).unwrap();
    (d, codes)
}

/// challenge for `who`, as an application with sudo (root) asks.
async fn ask_challenge(app: &TestApp, who: &str) -> Resp {
    app.req(
        "POST",
        &format!("{BASE}/challenge/"),
        Some(json!({ "user": who })),
        None,
    )
    .await
}

/// A temp_token for `uid`, as an application with sudo (root) asks for it.
async fn challenge(app: &TestApp, uid: u32) -> String {
    let r = ask_challenge(app, &user(uid)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["expires_in"], 300);
    r.json["temp_token"].as_str().unwrap().to_string()
}

/// verify over TCP without any token, as a browser would.
async fn verify(app: &TestApp, temp: &str, token: &str) -> Resp {
    app.tcp_req(
        "POST",
        &format!("{BASE}/verify/"),
        &[],
        Some(json!({"temp_token": temp, "token": token})),
    )
    .await
}

/// lookup-self over TCP with a login key, sent as a DRF client sends it.
async fn lookup_key(app: &TestApp, key: &str) -> Resp {
    app.tcp_req(
        "GET",
        "/v1/auth/token/lookup-self",
        &[("authorization", format!("Token {key}"))],
        None,
    )
    .await
}

/// The one answer of every failed verify.
fn assert_401(r: &Resp) {
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(
        r.json,
        json!({"detail": "Invalid or expired temp_token, or invalid code.", "code": "not_authenticated"})
    );
}

/// A well-formed recovery code nobody was given.
fn stranger_code() -> String {
    totpd::otp::recovery::generate_set().unwrap()[0].display()
}

#[tokio::test]
async fn the_full_flow_enrol_challenge_verify_and_a_key_that_works() {
    let app = TestApp::new().await;
    let (d, codes) = enrolled(&app, ALICE).await;
    assert_eq!(codes.len(), 10);
    let mut distinct = codes.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 10);
    for c in &codes {
        let groups: Vec<&str> = c.split('-').collect();
        assert_eq!(groups.len(), 5, "{c}");
        assert!(groups.iter().all(|g| g.len() == 4), "{c}");
    }

    let temp = challenge(&app, ALICE).await;
    let r = verify(&app, &temp, &d.next()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let key = r.json["key"].as_str().unwrap().to_string();
    // The key is a token for the user, as a DRF client sends it.
    let r = lookup_key(&app, &key).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["data"]["entity_id"], user(ALICE));
    assert!(r.json["data"]["ttl"].as_i64().unwrap() > 86_000);
    // The temp_token logged in once: never again, even with a good code.
    assert_401(&verify(&app, &temp, &codes[0]).await);
    // The activating step cannot log in either.
    let temp = challenge(&app, ALICE).await;
    assert_401(&verify(&app, &temp, &d.now()).await);
}

#[tokio::test]
async fn a_recovery_code_logs_in_once_and_a_new_set_kills_the_old() {
    let app = TestApp::new().await;
    let (d, codes) = enrolled(&app, ALICE).await;
    assert_eq!(
        get(&app, ALICE, "recovery-codes").await.json,
        json!({"remaining": 10})
    );

    // Typed in lower case without dashes.
    let typed = codes[3].replace('-', "").to_lowercase();
    let temp = challenge(&app, ALICE).await;
    let r = verify(&app, &temp, &typed).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let temp = challenge(&app, ALICE).await;
    assert_401(&verify(&app, &temp, &codes[3]).await);
    assert_eq!(
        get(&app, ALICE, "recovery-codes").await.json,
        json!({"remaining": 9})
    );

    // A new set needs a current code; the old set dies with it.
    let r = post(
        &app,
        ALICE,
        "recovery-codes",
        Some(json!({"token": "000000"})),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.json["token"].is_array(), "{}", r.text);
    let r = post(
        &app,
        ALICE,
        "recovery-codes",
        Some(json!({"token": d.next()})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let fresh: Vec<String> = serde_json::from_value(r.json["recovery_codes"].clone()).unwrap();
    assert_eq!(fresh.len(), 10);
    assert!(fresh.iter().all(|c| !codes.contains(c)));
    assert_eq!(
        get(&app, ALICE, "recovery-codes").await.json,
        json!({"remaining": 10})
    );
    let temp = challenge(&app, ALICE).await;
    assert_401(&verify(&app, &temp, &codes[0]).await);
    let r = verify(&app, &temp, &fresh[0].to_uppercase()).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn either_of_two_devices_logs_in_and_removing_one_keeps_the_other() {
    let app = TestApp::new().await;
    let (first, _) = enrolled(&app, ALICE).await;
    let backup = setup(&app, ALICE, Some(json!({"name": "backup phone"}))).await;
    let r = post(
        &app,
        ALICE,
        "activate",
        Some(json!({"token": backup.now()})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // A later device leaves the set alone.
    assert_eq!(r.json, json!({"recovery_codes": []}));
    assert_eq!(
        get(&app, ALICE, "recovery-codes").await.json,
        json!({"remaining": 10})
    );
    let r = get(&app, ALICE, "devices").await;
    let names: Vec<&str> = r
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "backup phone"]);
    assert!(r.json[0]["created_at"].as_str().unwrap().ends_with('Z'));

    let temp = challenge(&app, ALICE).await;
    assert_eq!(verify(&app, &temp, &first.next()).await.status, 200);
    let r = get(&app, ALICE, "devices").await;
    assert!(r.json[0]["last_used_at"].is_string(), "{}", r.text);
    assert!(r.json[1]["last_used_at"].is_null(), "{}", r.text);

    // Remove the first; the backup still logs in, the codes stay.
    let r = post(&app, ALICE, "deactivate", Some(json!({"name": "default"}))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let temp = challenge(&app, ALICE).await;
    assert_eq!(verify(&app, &temp, &backup.next()).await.status, 200);
    assert_eq!(
        get(&app, ALICE, "recovery-codes").await.json,
        json!({"remaining": 10})
    );
    // The removed device's codes are nobody's now.
    let temp = challenge(&app, ALICE).await;
    assert_401(&verify(&app, &temp, &first.code_at(unix_now() - 30)).await);
}

#[tokio::test]
async fn five_failures_spread_over_devices_and_recovery_codes_lock_the_user() {
    let app = TestApp::new().await;
    let (first, codes) = enrolled(&app, ALICE).await;
    let second = setup(&app, ALICE, Some(json!({"name": "tablet"}))).await;
    assert_eq!(
        post(
            &app,
            ALICE,
            "activate",
            Some(json!({"token": second.now()}))
        )
        .await
        .status,
        200
    );
    let temp = challenge(&app, ALICE).await;
    // Wrong codes, a malformed one and a stranger's recovery code: five failures.
    for bad in ["000000", "111111", "12345", &stranger_code(), "222222"] {
        assert_401(&verify(&app, &temp, bad).await);
    }
    // Locked: the right code of either device and a real recovery code get the same 401.
    assert_401(&verify(&app, &temp, &first.next()).await);
    assert_401(&verify(&app, &temp, &second.next()).await);
    assert_401(&verify(&app, &temp, &codes[0]).await);
    // The recovery code was refused by the lock, not spent.
    assert_eq!(
        get(&app, ALICE, "recovery-codes").await.json,
        json!({"remaining": 10})
    );
    // Another user is not locked by it.
    let (bobs, _) = enrolled(&app, BOB).await;
    let temp = challenge(&app, BOB).await;
    assert_eq!(verify(&app, &temp, &bobs.next()).await.status, 200);
    let m = app.req("GET", "/v1/sys/metrics", None, None).await.text;
    assert!(
        m.contains("surface=\"user_totp\",outcome=\"locked\""),
        "{m}"
    );
}

#[tokio::test]
async fn after_the_lock_period_the_right_code_works_again() {
    let app = TestApp::new().await;
    let (d, _) = enrolled(&app, ALICE).await;
    let temp = challenge(&app, ALICE).await;
    for _ in 0..5 {
        assert_401(&verify(&app, &temp, "000000").await);
    }
    assert_401(&verify(&app, &temp, &d.next()).await);
    tokio::time::sleep(Duration::from_secs(31)).await;
    let r = verify(&app, &temp, &d.now()).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn refusals_in_drf_shapes() {
    let mut app = TestApp::new().await;
    // activate without setup, with a wrong code, without a token.
    let r = post(&app, ALICE, "activate", Some(json!({"token": "123456"}))).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.json["non_field_errors"].is_array(), "{}", r.text);
    let d = setup(&app, ALICE, None).await;
    let wrong = if d.now() == "000000" {
        "111111"
    } else {
        "000000"
    };
    let r = post(&app, ALICE, "activate", Some(json!({"token": wrong}))).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(
        r.json,
        json!({"token": ["Invalid code."], "code": "invalid"})
    );
    let r = post(&app, ALICE, "activate", Some(json!({}))).await;
    assert_eq!(
        r.json,
        json!({"token": ["This field is required."], "code": "required"})
    );
    let r = post(&app, ALICE, "activate", Some(json!({"token": 5}))).await;
    assert_eq!(
        (r.status, &r.json["code"]),
        (400, &json!("invalid")),
        "{}",
        r.text
    );
    assert!(r.json["token"].is_array());
    // Setup replaces a pending device; once active, setup without a name is refused.
    let d = setup(&app, ALICE, None).await;
    common::fresh_step(30, 3).await;
    assert_eq!(
        post(&app, ALICE, "activate", Some(json!({"token": d.now()})))
            .await
            .status,
        200
    );
    let r = post(&app, ALICE, "setup", None).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.json["non_field_errors"][0].is_string(), "{}", r.text);
    assert_eq!(r.json["code"], "invalid");
    let r = post(&app, ALICE, "setup", Some(json!({"name": "default"}))).await;
    assert!(r.json["name"].is_array(), "{}", r.text);
    // A device name with a control or bidi character is refused (review finding).
    for bad in ["ph\u{202e}one", "ph\u{0007}one"] {
        let r = post(&app, ALICE, "setup", Some(json!({ "name": bad }))).await;
        assert_eq!(r.status, 400, "{bad:?}: {}", r.text);
        assert!(r.json["name"].is_array(), "{}", r.text);
    }
    // Two pending devices: activate must be told which.
    setup(&app, ALICE, Some(json!({"name": "a"}))).await;
    setup(&app, ALICE, Some(json!({"name": "b"}))).await;
    let r = post(&app, ALICE, "activate", Some(json!({"token": "123456"}))).await;
    assert_eq!(
        (r.status, &r.json["code"]),
        (400, &json!("required")),
        "{}",
        r.text
    );
    assert!(r.json["name"].is_array());

    // challenge: sudo only; a user without an active device is a field error.
    let r = post(&app, ALICE, "challenge", Some(json!({"user": user(ALICE)}))).await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(r.json["code"], "permission_denied");
    let r = ask_challenge(&app, &user(BOB)).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.json["user"].is_array());

    // verify: a made-up temp_token, missing fields.
    assert_401(&verify(&app, "tpd.nothing", "123456").await);
    let r = app
        .tcp_req(
            "POST",
            &format!("{BASE}/verify"),
            &[],
            Some(json!({"token": "123456"})),
        )
        .await;
    assert_eq!(
        r.json,
        json!({"temp_token": ["This field is required."], "code": "required"})
    );

    // An expired temp_token.
    app.set_login(Settings {
        temp_token_ttl: 1,
        ..Settings::default()
    });
    let r = ask_challenge(&app, &user(ALICE)).await;
    let temp = r.json["temp_token"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_401(&verify(&app, &temp, &d.next()).await);

    // 404 and 405 on these paths come in DRF's shape too; both spellings route.
    let r = get(&app, ALICE, "nothing").await;
    assert_eq!(
        (r.status, &r.json["code"]),
        (404, &json!("not_found")),
        "{}",
        r.text
    );
    let r = app
        .req_as(ALICE, "GET", &format!("{BASE}/setup"), None, None)
        .await;
    assert_eq!(
        (r.status, &r.json["code"]),
        (405, &json!("method_not_allowed")),
        "{}",
        r.text
    );
    assert!(r.json["detail"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_code_logs_in_once_in_a_race_of_sixteen_temp_tokens() {
    let app = Arc::new(TestApp::new().await);
    let (d, _) = enrolled(&app, ALICE).await;
    let mut temps = Vec::new();
    for _ in 0..16 {
        temps.push(challenge(&app, ALICE).await);
    }
    let code = d.next();
    let barrier = Arc::new(tokio::sync::Barrier::new(16));
    let tasks: Vec<_> = temps
        .into_iter()
        .map(|temp| {
            let (app, barrier, code) = (app.clone(), barrier.clone(), code.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                verify(&app, &temp, &code).await.status
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(common::tally(&statuses), [(200, 1), (401, 15)].into());
}

#[tokio::test]
async fn deactivate_removes_devices_and_recovery_codes() {
    let app = TestApp::new().await;
    let (d, codes) = enrolled(&app, ALICE).await;
    let r = post(&app, ALICE, "deactivate", None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        get(&app, ALICE, "recovery-codes").await.json,
        json!({"remaining": 0})
    );
    assert_eq!(get(&app, ALICE, "devices").await.json, json!([]));
    assert_eq!(app.count_rows("recovery_codes"), 0);
    // Nothing to log in with, and no temp_token to be had.
    let r = ask_challenge(&app, &user(ALICE)).await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = post(&app, ALICE, "deactivate", None).await;
    assert!(r.json["non_field_errors"].is_array(), "{}", r.text);

    // A temp_token issued before deactivation is refused after it.
    let (d2, _) = enrolled(&app, ALICE).await;
    let temp = challenge(&app, ALICE).await;
    assert_eq!(post(&app, ALICE, "deactivate", None).await.status, 200);
    assert_401(&verify(&app, &temp, &d2.next()).await);
    assert_401(&verify(&app, &temp, &codes[0]).await);
    let _ = d;

    // The admin reset: an application with sudo deactivates for a user who lost all.
    let (_, _) = enrolled(&app, BOB).await;
    let r = post(&app, ALICE, "deactivate", Some(json!({"user": user(BOB)}))).await;
    assert_eq!(r.status, 403, "{}", r.text);
    let r = app
        .req(
            "POST",
            &format!("{BASE}/deactivate/"),
            Some(json!({"user": user(BOB)})),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(get(&app, BOB, "devices").await.json, json!([]));
}

#[tokio::test]
async fn with_deactivate_needs_code_a_session_alone_cannot_turn_it_off() {
    let mut app = TestApp::new().await;
    app.set_login(Settings {
        deactivate_needs_code: true,
        ..Settings::default()
    });
    let (d, codes) = enrolled(&app, ALICE).await;
    let r = post(&app, ALICE, "deactivate", None).await;
    assert_eq!(
        r.json,
        json!({"token": ["This field is required."], "code": "required"})
    );
    let r = post(&app, ALICE, "deactivate", Some(json!({"token": "000000"}))).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(
        get(&app, ALICE, "devices")
            .await
            .json
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let r = post(&app, ALICE, "deactivate", Some(json!({"token": d.next()}))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // A recovery code does it too.
    let (_, codes) = {
        let _ = codes;
        enrolled(&app, ALICE).await
    };
    let r = post(&app, ALICE, "deactivate", Some(json!({"token": codes[1]}))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(get(&app, ALICE, "devices").await.json, json!([]));
}

#[tokio::test]
async fn a_token_made_for_an_entity_acts_as_that_user() {
    let app = TestApp::new().await;
    let alice = make_token(&app, json!({"policies": ["default"], "entity_id": "alice"})).await;
    let h = [("authorization", format!("Token {alice}"))];
    let r = app
        .tcp_req("POST", &format!("{BASE}/setup"), &h, None)
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let url = parse_otp_url(r.json["provisioning_uri"].as_str().unwrap());
    assert_eq!(url.label, "totpd:alice");
    let code = reference_totp(&url.secret, "SHA1", 6, 30, unix_now());
    let r = app
        .tcp_req(
            "POST",
            &format!("{BASE}/activate/"),
            &h,
            Some(json!({"token": code})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = ask_challenge(&app, "alice").await;
    assert_eq!(r.status, 201, "{}", r.text);
    // Over TCP every other route needs a token.
    let r = app
        .tcp_req("GET", &format!("{BASE}/devices"), &[], None)
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
}

#[tokio::test]
async fn the_database_holds_argon2id_hashes_and_no_secret() {
    let app = TestApp::new().await;
    let (d, codes) = enrolled(&app, ALICE).await;
    let hashes: Vec<String> = app
        .query("SELECT hash FROM recovery_codes")
        .into_iter()
        .map(|r| r[0].clone().expect("a hash"))
        .collect();
    assert_eq!(hashes.len(), 10);
    assert!(hashes
        .iter()
        .all(|h| h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$")));
    // `user` is a keyword in PostgreSQL: quoted, as both engines accept.
    let view: Vec<Vec<Option<String>>> =
        app.query(r#"SELECT "user", device, state, recovery_codes_left FROM user_totp_view"#);
    let some = |s: &str| Some(s.to_string());
    assert_eq!(
        view,
        [vec![
            some(&user(ALICE)),
            some("default"),
            some("active"),
            some("10")
        ]]
    );
    let db = app.db_bytes();
    assert!(!contains(&db, d.secret_key.as_bytes()));
    assert!(!contains(&db, &d.secret));
    for code in &codes {
        let plain = code.replace('-', "");
        assert!(!contains(&db, code.as_bytes()) && !contains(&db, &plain.as_bytes()[4..]));
        assert!(!contains(&db, plain[4..].to_uppercase().as_bytes()));
    }
}

// ----- the real binary -----

#[tokio::test]
async fn the_whole_flow_on_the_real_daemon_leaves_no_secret_in_the_database_or_log() {
    let d = Daemon::start_tcp();
    let root = d.root_token();
    // A web application's token: sudo on challenge, nothing else of the user's.
    let r = d
        .req(
            "PUT",
            "/v1/sys/policies/acl/webapp",
            Some(json!({"policy": {"path": {"api/v1/auth/totp/challenge": {"capabilities": ["sudo", "update"]}}}})),
            Some(&root),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let webapp = [(
        "x-vault-token",
        make_token(&d, json!({"policies": ["webapp"]})).await,
    )];
    let carol = [(
        "authorization",
        format!(
            "Token {}",
            make_token(&d, json!({"policies": ["default"], "entity_id": "carol"})).await
        ),
    )];

    common::fresh_step(30, 3).await;
    let r = d
        .tcp_req("POST", &format!("{BASE}/setup/"), &carol, None)
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let url = parse_otp_url(r.json["provisioning_uri"].as_str().unwrap());
    let code = |t: u64| reference_totp(&url.secret, "SHA1", 6, 30, t);
    let r = d
        .tcp_req(
            "POST",
            &format!("{BASE}/activate/"),
            &carol,
            Some(json!({"token": code(unix_now())})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let codes: Vec<String> = serde_json::from_value(r.json["recovery_codes"].clone()).unwrap();
    assert_eq!(codes.len(), 10);

    let mut keys = Vec::new();
    let mut temps = Vec::new();
    for token in [code(unix_now() + 30), codes[0].clone()] {
        let r = d
            .tcp_req(
                "POST",
                &format!("{BASE}/challenge/"),
                &webapp,
                Some(json!({"user": "carol"})),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        let temp = r.json["temp_token"].as_str().unwrap().to_string();
        temps.push(temp.clone());
        let body = Some(json!({"temp_token": temp, "token": token}));
        let r = d
            .tcp_req("POST", &format!("{BASE}/verify/"), &[], body.clone())
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        keys.push(r.json["key"].as_str().unwrap().to_string());
        let r = d
            .tcp_req("POST", &format!("{BASE}/verify/"), &[], body)
            .await;
        assert_eq!(r.status, 401, "{}", r.text);
    }
    let r = d
        .tcp_req(
            "GET",
            "/v1/auth/token/lookup-self",
            &[("authorization", format!("Token {}", keys[1]))],
            None,
        )
        .await;
    assert_eq!(r.json["data"]["entity_id"], "carol", "{}", r.text);

    let db = d.db_bytes();
    let log = d.stderr();
    assert!(log.contains("login step passed"), "{log}");
    for hay in [&db[..], log.as_bytes()] {
        assert!(!contains(hay, url.secret_b32.as_bytes()));
        assert!(!contains(hay, &url.secret));
        for c in &codes {
            let plain = c.replace('-', "");
            assert!(!contains(hay, c.as_bytes()) && !contains(hay, &plain.as_bytes()[4..]));
        }
        for k in keys.iter().chain(&temps) {
            assert!(!contains(hay, k.as_bytes()));
        }
    }
    assert_eq!(
        count_rows(&d.data_dir.join("totpd.db"), "recovery_codes"),
        10
    );
}

#[tokio::test]
async fn with_deactivate_needs_code_a_session_cannot_add_a_device_either() {
    let mut app = TestApp::new().await;
    app.set_login(Settings {
        deactivate_needs_code: true,
        ..Settings::default()
    });
    let (d, codes) = enrolled(&app, ALICE).await;
    // A stolen session would add its own device, then remove the user's with it.
    let r = post(&app, ALICE, "setup", Some(json!({"name": "evil"}))).await;
    assert_eq!(
        r.json,
        json!({"token": ["This field is required."], "code": "required"})
    );
    let r = post(
        &app,
        ALICE,
        "setup",
        Some(json!({"name": "evil", "token": "000000"})),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(
        get(&app, ALICE, "devices")
            .await
            .json
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // The user, with a code of the device they have (sent as a number, as DRF
    // clients may), or a recovery code, adds one.
    let code: u64 = d.next().parse().unwrap();
    if d.next().starts_with('0') {
        // A number cannot carry a leading zero: send it as text then.
        let r = post(
            &app,
            ALICE,
            "setup",
            Some(json!({"name": "tablet", "token": d.next()})),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.text);
    } else {
        let r = post(
            &app,
            ALICE,
            "setup",
            Some(json!({"name": "tablet", "token": code})),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let r = post(
        &app,
        ALICE,
        "setup",
        Some(json!({"name": "laptop", "token": codes[2]})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
}

#[tokio::test]
async fn an_admin_reset_needs_sudo_alone_and_kills_old_temp_tokens() {
    let app = TestApp::new().await;
    let r = app
        .req(
            "PUT",
            "/v1/sys/policies/acl/helpdesk",
            Some(json!({"policy": {"path": {
                "api/v1/auth/totp/deactivate": {"capabilities": ["sudo"]},
                "api/v1/auth/totp/challenge": {"capabilities": ["sudo"]},
            }}})),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let helpdesk = [(
        "x-vault-token",
        make_token(
            &app,
            json!({"policies": ["helpdesk"], "no_default_policy": true}),
        )
        .await,
    )];
    enrolled(&app, BOB).await;
    let r = app
        .tcp_req(
            "POST",
            &format!("{BASE}/challenge/"),
            &helpdesk,
            Some(json!({"user": user(BOB)})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let old_temp = r.json["temp_token"].as_str().unwrap().to_string();
    let r = app
        .tcp_req(
            "POST",
            &format!("{BASE}/deactivate/"),
            &helpdesk,
            Some(json!({"user": user(BOB)})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // Bob enrols again; the temp_token from before the reset logs nobody in.
    let (d, _) = enrolled(&app, BOB).await;
    assert_401(&verify(&app, &old_temp, &d.next()).await);
    let temp = challenge(&app, BOB).await;
    assert_eq!(verify(&app, &temp, &d.next()).await.status, 200);
}

#[tokio::test]
async fn a_user_has_at_most_ten_devices() {
    let app = TestApp::new().await;
    enrolled(&app, ALICE).await;
    for i in 1..10 {
        let r = post(&app, ALICE, "setup", Some(json!({"name": format!("d{i}")}))).await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let r = post(&app, ALICE, "setup", Some(json!({"name": "d10"}))).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.json["non_field_errors"][0]
        .as_str()
        .unwrap()
        .contains("10"));
    // Names are checked: empty or too long is a field error.
    for bad in [json!(""), json!("x".repeat(65))] {
        let r = post(&app, ALICE, "setup", Some(json!({"name": bad}))).await;
        assert!(r.json["name"].is_array(), "{}", r.text);
    }
}

#[tokio::test]
async fn issuer_and_login_key_follow_the_configuration() {
    let mut app = TestApp::new().await;
    app.set_login(Settings {
        issuer: "Acme".into(),
        login_policies: vec!["default".into(), "web".into()],
        login_ttl: 3600,
        ..Settings::default()
    });
    let r = post(&app, ALICE, "setup", None).await;
    let url = parse_otp_url(r.json["provisioning_uri"].as_str().unwrap());
    assert_eq!(
        (url.issuer.as_str(), url.label.as_str()),
        ("Acme", "Acme:uid:2001")
    );
    common::fresh_step(30, 3).await;
    let code = reference_totp(&url.secret, "SHA1", 6, 30, unix_now());
    assert_eq!(
        post(&app, ALICE, "activate", Some(json!({"token": code})))
            .await
            .status,
        200
    );
    let temp = challenge(&app, ALICE).await;
    let next = reference_totp(&url.secret, "SHA1", 6, 30, unix_now() + 30);
    let r = verify(&app, &temp, &next).await;
    let key = r.json["key"].as_str().unwrap().to_string();
    let r = lookup_key(&app, &key).await;
    assert_eq!(
        r.json["data"]["policies"],
        json!(["default", "web"]),
        "{}",
        r.text
    );
    let ttl = r.json["data"]["ttl"].as_i64().unwrap();
    assert!((3590..=3600).contains(&ttl), "{ttl}");
}

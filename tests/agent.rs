//! The authenticator app for agents: registering secrets (by seed or otpauth URI),
//! codes checked against an independent RFC 6238 implementation, `expires_in` and
//! `min_validity`, listing without secrets, per-entity isolation and bad input. Driven
//! in-process on a temporary store; the CLI (as root and as another uid) and the
//! daemon's log, which must never carry a seed or a code, through the real binary.

mod common;

use std::os::unix::process::CommandExt;
use std::time::Duration;

use common::app::TestApp;
use common::{contains, make_token, raw, reference_totp, seed, unix_now, Daemon};
use serde_json::{json, Value};
use totpd::auth::Peer;

const SECRETS: &str = "/api/v2/totp/secrets";

async fn add(app: &TestApp, body: Value, token: Option<&str>) -> Value {
    let r = app.req("POST", SECRETS, Some(body.clone()), token).await;
    assert_eq!(r.status, 201, "{body} → {}", r.text);
    assert_eq!(r.json["status"], "success");
    r.json["totp_secret"].clone()
}

/// Gets the code and checks it against the reference at the request's time.
async fn check_code(
    app: &TestApp,
    id: &str,
    token: Option<&str>,
    secret: &[u8],
    alg: &str,
    digits: u32,
    period: u64,
) -> Value {
    let before = unix_now();
    let r = app
        .req("GET", &format!("/api/v2/totp/code/{id}"), None, token)
        .await;
    let after = unix_now();
    assert_eq!(r.status, 200, "{}", r.text);
    let code = r.json["code"].as_str().unwrap();
    assert_eq!(code.len(), digits as usize);
    let candidates = [
        reference_totp(secret, alg, digits, period, before),
        reference_totp(secret, alg, digits, period, after),
    ];
    assert!(
        candidates.contains(&code.to_string()),
        "{alg}/{digits}/{period}: {code} not in {candidates:?}"
    );
    assert_eq!(r.json["period"], period);
    // expires_in lands on the period boundary.
    let e = r.json["expires_in"].as_u64().unwrap();
    assert!((1..=period).contains(&e), "expires_in {e}");
    assert!(
        (before..=after).any(|t| (t + e) % period == 0),
        "expires_in {e} does not end a period at {before}..{after}"
    );
    r.json
}

#[tokio::test]
async fn codes_match_an_independent_implementation_by_secret_and_by_uri() {
    let app = TestApp::new().await;
    for alg in ["SHA1", "SHA256", "SHA512"] {
        for digits in [6u32, 8] {
            for period in [30u64, 60] {
                let s = seed(20);
                let by_secret = add(
                    &app,
                    json!({"secret": s.to_lowercase(), "label": "svc", "issuer": "Svc", "algorithm": alg, "digits": digits, "period": period}),
                    None,
                )
                .await;
                assert_eq!(
                    by_secret["secret"], s,
                    "create returns the secret, normalised"
                );
                assert_eq!(
                    (
                        by_secret["algorithm"].as_str(),
                        by_secret["digits"].as_u64(),
                        by_secret["period"].as_u64()
                    ),
                    (Some(alg), Some(digits as u64), Some(period))
                );
                check_code(
                    &app,
                    by_secret["id"].as_str().unwrap(),
                    None,
                    &raw(&s),
                    alg,
                    digits,
                    period,
                )
                .await;

                let s2 = seed(20);
                let uri = format!("otpauth://totp/Acme:agent%40example.com?secret={s2}&issuer=Acme&algorithm={alg}&digits={digits}&period={period}");
                let by_uri = add(&app, json!({"uri": uri}), None).await;
                assert_eq!(by_uri["label"], "agent@example.com");
                assert_eq!(by_uri["issuer"], "Acme");
                assert_eq!(by_uri["algorithm"], alg);
                check_code(
                    &app,
                    by_uri["id"].as_str().unwrap(),
                    None,
                    &raw(&s2),
                    alg,
                    digits,
                    period,
                )
                .await;
            }
        }
    }
    // Padding, spaces and lower case as services print them; a uri with a matching field.
    let s = seed(10);
    let spaced = format!(
        "{} ====",
        s.to_lowercase()
            .as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let v = add(&app, json!({"secret": spaced, "label": "padded"}), None).await;
    check_code(
        &app,
        v["id"].as_str().unwrap(),
        None,
        &raw(&s),
        "SHA1",
        6,
        30,
    )
    .await;
    let v = add(
        &app,
        json!({"uri": format!("otpauth://totp/x?secret={s}"), "digits": 6, "label": "x"}),
        None,
    )
    .await;
    assert_eq!(v["issuer"], Value::Null);
}

#[tokio::test]
async fn list_never_contains_a_secret() {
    let app = TestApp::new().await;
    let r = app.req("GET", SECRETS, None, None).await;
    assert_eq!(r.json, json!({"status": "success", "totp_secrets": []}));
    let mut seeds = Vec::new();
    for i in 0..7 {
        let s = seed(20 + i);
        add(&app, json!({"secret": s, "label": format!("s{i}")}), None).await;
        seeds.push(s);
        let r = app.req("GET", SECRETS, None, None).await;
        assert_eq!(r.status, 200);
        let list = r.json["totp_secrets"].as_array().unwrap();
        assert_eq!(list.len(), i + 1);
        for item in list {
            assert!(item.get("secret").is_none(), "{item}");
            for k in [
                "id",
                "algorithm",
                "created_at",
                "digits",
                "issuer",
                "label",
                "period",
            ] {
                assert!(item.get(k).is_some(), "{k} missing");
            }
        }
        for s in &seeds {
            assert!(!r.text.contains(s.as_str()), "a seed is in the list body");
            assert!(!r.text.to_lowercase().contains(&s.to_lowercase()));
        }
    }
    // Nor is any in the database in clear (main file and WAL). The log: see
    // `agent_process.rs`.
    let db = app.db_bytes();
    for s in &seeds {
        assert!(!contains(&db, s.as_bytes()));
        assert!(!contains(&db, &raw(s)));
    }
}

#[tokio::test]
async fn entities_see_only_their_own_secrets() {
    let app = TestApp::new().await;
    let mut tokens = Vec::new();
    for _ in 0..2 {
        tokens.push(make_token(&app, json!({"policies": ["default"]})).await);
    }
    let (a, b) = (Some(tokens[0].as_str()), Some(tokens[1].as_str()));
    let sa = add(&app, json!({"secret": seed(20), "label": "a"}), a).await;
    let sb = add(&app, json!({"secret": seed(20), "label": "b"}), b).await;
    let ida = sa["id"].as_str().unwrap();

    let la = app.req("GET", SECRETS, None, a).await.json["totp_secrets"].clone();
    let lb = app.req("GET", SECRETS, None, b).await.json["totp_secrets"].clone();
    assert_eq!(la.as_array().unwrap().len(), 1);
    assert_eq!(la[0]["label"], "a");
    assert_eq!(lb[0]["label"], "b");
    // Root over the socket is uid:0, another entity again.
    assert_eq!(
        app.req("GET", SECRETS, None, None).await.json["totp_secrets"],
        json!([])
    );

    // B reading, coding or deleting A's id: 404, exactly as for an unknown id.
    let unknown = app
        .req(
            "GET",
            &format!("/api/v2/totp/code/{}", uuid::Uuid::new_v4()),
            None,
            b,
        )
        .await;
    for (m, p) in [
        ("GET", format!("/api/v2/totp/code/{ida}")),
        ("DELETE", format!("{SECRETS}/{ida}")),
    ] {
        let r = app.req(m, &p, None, b).await;
        assert_eq!(r.status, 404, "{m} {p}");
        assert_eq!(
            r.json,
            json!({"status": "error", "error": "TOTP secret not found"})
        );
        assert_eq!(r.json, unknown.json);
    }
    assert_eq!(
        app.req("GET", &format!("/api/v2/totp/code/{ida}"), None, a)
            .await
            .status,
        200,
        "A's secret survived"
    );
    assert_eq!(
        app.req("GET", "/api/v2/totp/code/not-a-uuid", None, a)
            .await
            .status,
        404
    );
    assert_eq!(
        app.req("DELETE", &format!("{SECRETS}/{ida}"), None, a)
            .await
            .status,
        200
    );
    assert_eq!(
        app.req("GET", &format!("/api/v2/totp/code/{ida}"), None, a)
            .await
            .status,
        404
    );

    // A local uid with no token is its own entity too: it sees none of B's.
    let idb = sb["id"].as_str().unwrap();
    let r = app
        .req_as(
            65534,
            "GET",
            &format!("/api/v2/totp/code/{idb}"),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json, unknown.json);
    let r = app.req_as(65534, "GET", SECRETS, None, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["totp_secrets"], json!([]));
}

#[tokio::test]
async fn expires_in_ends_the_period_and_the_code_changes_over_a_boundary() {
    let app = TestApp::new().await;
    let s = seed(20);
    let v = add(
        &app,
        json!({"secret": s, "label": "fast", "period": 2}),
        None,
    )
    .await;
    let id = v["id"].as_str().unwrap().to_string();
    let first = check_code(&app, &id, None, &raw(&s), "SHA1", 6, 2).await;
    let t1 = unix_now();
    tokio::time::sleep(Duration::from_millis(
        first["expires_in"].as_u64().unwrap() * 1000 + 200,
    ))
    .await;
    let second = check_code(&app, &id, None, &raw(&s), "SHA1", 6, 2).await;
    let t2 = unix_now();
    assert_ne!(t1 / 2, t2 / 2, "a boundary was crossed");
    if reference_totp(&raw(&s), "SHA1", 6, 2, t1) != reference_totp(&raw(&s), "SHA1", 6, 2, t2) {
        assert_ne!(first["code"], second["code"]);
    }

    // min_validity: never a code with fewer seconds left than asked.
    let v = add(
        &app,
        json!({"secret": seed(20), "label": "mv", "period": 5}),
        None,
    )
    .await;
    let id = v["id"].as_str().unwrap();
    for _ in 0..3 {
        let r = app
            .req(
                "GET",
                &format!("/api/v2/totp/code/{id}?min_validity=4"),
                None,
                None,
            )
            .await;
        assert_eq!(r.status, 200);
        assert!(r.json["expires_in"].as_u64().unwrap() >= 4, "{}", r.text);
        tokio::time::sleep(Duration::from_millis(1300)).await;
    }
    let long = add(
        &app,
        json!({"secret": seed(20), "label": "day", "period": 86400}),
        None,
    )
    .await;
    let r = app
        .req(
            "GET",
            &format!(
                "/api/v2/totp/code/{}?min_validity=86399",
                long["id"].as_str().unwrap()
            ),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, 400, "a request may not wait for a day");
    for bad in ["5", "-1", "x"] {
        let r = app
            .req(
                "GET",
                &format!("/api/v2/totp/code/{id}?min_validity={bad}"),
                None,
                None,
            )
            .await;
        assert_eq!(r.status, 400, "{bad}");
        assert!(r.json["error"].as_str().unwrap().contains("min_validity"));
    }
}

#[tokio::test]
async fn bad_registrations_are_refused_and_store_nothing() {
    let app = TestApp::new().await;
    let good = seed(20);
    let cases = [
        (json!({"secret": "not base32!!", "label": "x"}), "secret"),
        (json!({"secret": seed(9), "label": "x"}), "short"),
        (
            json!({"uri": format!("otpauth://hotp/x?secret={good}&counter=0")}),
            "totp",
        ),
        (
            json!({"uri": format!("otpauth://totp/x?secret={good}&digits=7")}),
            "digits",
        ),
        (
            json!({"uri": format!("otpauth://totp/Acme:bob?secret={good}"), "label": "alice"}),
            "label",
        ),
        (
            json!({"uri": format!("otpauth://totp/Acme:bob?secret={good}"), "issuer": "Other"}),
            "issuer",
        ),
        (
            json!({"uri": format!("otpauth://totp/bob?secret={good}"), "period": 60}),
            "period",
        ),
        (
            json!({"secret": good, "label": "x", "algorithm": "MD5"}),
            "algorithm",
        ),
        (
            json!({"uri": format!("otpauth://totp/x?secret={good}&algorithm=MD5")}),
            "algorithm",
        ),
        (json!({"secret": good, "label": "x", "digits": 7}), "digits"),
        (json!({"secret": good}), "label"),
        // Neither secret nor uri generates one (see below), but a label is still needed.
        (json!({"issuer": "x"}), "label"),
        (json!({"secret": good, "label": "a\u{0}b"}), "label"),
        (
            json!({"secret": good, "label": "evil\u{202E}gpj.exe"}),
            "label",
        ),
        (
            json!({"secret": good, "label": "x", "issuer": "tab\there"}),
            "issuer",
        ),
        (
            json!({"uri": format!("otpauth://totp/x?secret={good}&secret={}", seed(20))}),
            "more than once",
        ),
        (
            json!({"secret": good, "label": "x", "digits": "seven"}),
            "digits",
        ),
        (json!({"secret": 12345, "label": "x"}), "secret"),
        (
            json!({"uri": format!("otpauth://totp/x?secret={good}"), "secret": seed(20)}),
            "secret",
        ),
        (json!({"secret": seed(129), "label": "x"}), "long"),
        (json!({"secret": good, "label": "x".repeat(300)}), "label"),
        (json!({"secret": good, "label": "x", "period": 0}), "period"),
        (json!([good, "x"]), "object"),
    ];
    for (body, word) in cases {
        let r = app.req("POST", SECRETS, Some(body.clone()), None).await;
        assert_eq!(r.status, 400, "{body} → {}", r.text);
        assert_eq!(r.json["status"], "error");
        let msg = r.json["error"].as_str().unwrap();
        assert!(
            msg.contains(word),
            "{body}: {msg:?} does not mention {word}"
        );
        assert!(
            !msg.contains(&good) && !msg.contains(&good[..16]),
            "the error echoes a secret: {msg}"
        );
        if let Some(s) = body["secret"].as_str() {
            assert!(!msg.contains(s), "the error echoes the secret: {msg}");
        }
        assert!(
            !msg.contains("[") || word == "object",
            "the error prints bytes: {msg}"
        );
    }
    let r = app
        .raw(
            Peer::Unix { uid: Some(0) },
            "POST",
            SECRETS,
            &[],
            Some(b"{\"secret\":".to_vec()),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json["status"], "error");
    assert_eq!(
        app.req("GET", SECRETS, None, None).await.json["totp_secrets"],
        json!([])
    );
    // This surface's shape for unknown routes and wrong methods too.
    let r = app.req("GET", "/api/v2/totp/nope", None, None).await;
    assert_eq!((r.status, r.json["status"].as_str()), (404, Some("error")));
    let r = app.req("PUT", SECRETS, None, None).await;
    assert_eq!((r.status, r.json["status"].as_str()), (405, Some("error")));
}

#[tokio::test]
async fn with_neither_secret_nor_uri_the_daemon_generates_one() {
    let app = TestApp::new().await;
    for (alg, bytes) in [("SHA1", 20), ("SHA256", 32), ("SHA512", 64)] {
        let s = add(
            &app,
            json!({"label": format!("gen-{alg}"), "issuer": "Acme", "algorithm": alg}),
            None,
        )
        .await;
        let secret = raw(s["secret"].as_str().unwrap());
        assert_eq!(secret.len(), bytes, "{alg}");
        // Shown this once, with a URI to enrol it elsewhere, which says the same.
        let u = common::parse_otp_url(s["otpauth_uri"].as_str().unwrap());
        assert_eq!(u.secret, secret);
        assert_eq!((u.issuer.as_str(), u.algorithm.as_str()), ("Acme", alg));
        assert_eq!(u.label, format!("Acme:gen-{alg}"));
        check_code(&app, s["id"].as_str().unwrap(), None, &secret, alg, 6, 30).await;
    }
    // Two are never the same, and the list never shows them.
    let a = add(&app, json!({"label": "a"}), None).await;
    let b = add(&app, json!({"label": "b"}), None).await;
    assert_ne!(a["secret"], b["secret"]);
    assert!(a["otpauth_uri"]
        .as_str()
        .unwrap()
        .starts_with("otpauth://totp/a?"));
    let r = app.req("GET", SECRETS, None, None).await;
    assert!(!r.text.contains(a["secret"].as_str().unwrap()));
    assert!(!r.text.contains("otpauth_uri"));
    // An imported secret gets no URI back: the caller has it already.
    let imported = add(&app, json!({"secret": seed(20), "label": "i"}), None).await;
    assert!(imported.get("otpauth_uri").is_none());
}

#[tokio::test]
async fn neither_a_seed_nor_a_code_reaches_the_log() {
    let mut d = Daemon::start();
    let mut seeds = Vec::new();
    let mut codes = Vec::new();
    for i in 0..7 {
        let s = seed(20 + i);
        let r = d
            .req(
                "POST",
                SECRETS,
                Some(json!({"secret": s, "label": format!("s{i}")})),
                None,
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        let id = r.json["totp_secret"]["id"].as_str().unwrap().to_string();
        seeds.push(s);
        d.req("GET", SECRETS, None, None).await;
        let r = d
            .req("GET", &format!("/api/v2/totp/code/{id}"), None, None)
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        codes.push(r.json["code"].as_str().unwrap().to_string());
    }
    d.stop();
    let log = d.stderr();
    assert!(
        log.contains("route=/api/v2/totp/code/{id}"),
        "no request lines in the log"
    );
    for s in &seeds {
        assert!(!log.contains(s.as_str()), "a seed reached the log");
    }
    for c in &codes {
        assert!(
            !log.contains(&format!("{c} ")) && !log.contains(&format!("={c}")),
            "a code reached the log"
        );
    }
}

#[test]
fn cli_round_trip_as_root_and_as_a_uid_without_a_token() {
    let d = Daemon::start();
    let mut uids: Vec<Option<u32>> = vec![None];
    if common::can_switch_uid() {
        uids.push(Some(65534));
    }
    for uid in uids {
        let run = |args: &[&str]| {
            let mut c = d.cli();
            c.args(args);
            if let Some(u) = uid {
                c.uid(u).gid(u);
            }
            let out = c.output().unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).trim().to_string(),
                String::from_utf8_lossy(&out.stderr).to_string(),
            )
        };
        let s = seed(20);
        let uri = format!(
            "otpauth://totp/Forge:ci-bot?secret={s}&issuer=Forge&algorithm=SHA256&digits=8"
        );
        let (code, id, err) = run(&["secret", "add", "--uri", &uri]);
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(id.len(), 36, "prints the id only: {id}");
        let s2 = seed(16);
        let (code, id2, _) = run(&["secret", "add", "--secret", &s2, "--label", "plain"]);
        assert_eq!(code, Some(0));

        let (code, table, _) = run(&["secret", "list"]);
        assert_eq!(code, Some(0));
        assert!(
            table.contains(&id) && table.contains(&id2),
            "full ids in the list:\n{table}"
        );
        assert!(table.contains("ci-bot") && table.contains("Forge"));
        assert!(!table.contains(&s) && !table.contains(&s2));

        let before = unix_now();
        let (code, out, _) = run(&["code", &id]);
        let after = unix_now();
        assert_eq!(code, Some(0));
        let want = [before, after].map(|t| reference_totp(&raw(&s), "SHA256", 8, 30, t));
        assert!(want.contains(&out), "{out:?} vs {want:?}");

        // --socket after the subcommand works too.
        let sock = d.socket.display().to_string();
        let mut c = std::process::Command::new(common::BIN);
        c.args(["code", &id2, "--json", "--socket", &sock])
            .env_remove("TOTPD_SOCKET");
        if let Some(u) = uid {
            c.uid(u).gid(u);
        }
        let out = c.output().unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["period"], 30);

        let (code, _, _) = run(&["secret", "rm", &id]);
        assert_eq!(code, Some(0));
        let (code, _, err) = run(&["secret", "rm", &id]);
        assert_eq!(code, Some(1));
        assert!(err.contains("not found"), "{err}");
        let (code, _, err) = run(&["secret", "add", "--secret", "short", "--label", "x"]);
        assert_eq!(code, Some(1));
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        run(&["secret", "rm", &id2]);
    }
    // Unreachable daemon: exit 3 and a clear line.
    let out = std::process::Command::new(common::BIN)
        .args(["--socket", "/nonexistent/totpd.sock", "secret", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach totpd"));
}

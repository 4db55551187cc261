//! Vault identity MFA TOTP across a restart of the real binary: a code accepted before
//! the daemon stops is still refused after it starts again. The rest of the surface is
//! tested in-process in `vault_mfa.rs`.

mod common;

use common::{fresh_step, parse_otp_url, reference_totp, unix_now, Daemon};
use serde_json::json;

const BASE: &str = "/v1/identity/mfa/method/totp";

async fn validate(d: &Daemon, method: &str, entity: &str, passcode: &str) -> u16 {
    let r = d
        .req(
            "POST",
            &format!("{BASE}/validate"),
            Some(json!({"method_id": method, "entity_id": entity, "passcode": passcode})),
            None,
        )
        .await;
    if r.status == 403 {
        assert_eq!(r.json, json!({"errors": ["invalid passcode"]}));
    }
    r.status
}

#[tokio::test]
async fn a_code_accepted_before_a_restart_is_refused_after_it() {
    let mut d = Daemon::start();
    let r = d
        .req("POST", BASE, Some(json!({"issuer": "v"})), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.json["data"]["method_id"].as_str().unwrap().to_string();
    let r = d
        .req(
            "POST",
            &format!("{BASE}/admin-generate"),
            Some(json!({"method_id": id, "entity_id": "alice"})),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let u = parse_otp_url(r.json["data"]["url"].as_str().unwrap());
    fresh_step(30, 5).await;
    let c = reference_totp(&u.secret, &u.algorithm, u.digits, u.period, unix_now());
    assert_eq!(validate(&d, &id, "alice", &c).await, 200);
    assert_eq!(d.stop(), Some(0));
    d.spawn().unwrap();
    assert_eq!(
        validate(&d, &id, "alice", &c).await,
        403,
        "replay after restart"
    );
}

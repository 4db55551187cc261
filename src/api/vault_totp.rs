//! Vault's TOTP secrets engine (`/v1/totp/keys/<name>`, `/v1/totp/code/<name>`, and
//! the same under every configured mount), answering as OpenBao's engine does, so a
//! client written for it works unchanged: Vault's fields, defaults, checks in Vault's
//! order with Vault's messages, and Vault's answers to a validation (200 with `valid`
//! true or false; 400 for a code already tried, or of the wrong length).
//!
//! Underneath is what every surface has: keys sealed at rest, and one store call that
//! checks a code and records the outcome (window, replay, failure count and lock) and
//! the code tried, so a code is accepted once, across restarts and daemons, where Vault
//! keeps its used codes in memory.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::fields::{flex_bool, flex_int, flex_seconds, flex_string_opt, printable};
use super::mounts::MountKind;
use super::vault::{self, Caller, Json, ListQuery, VaultError};
use super::{extract, now, AppState, Surface};
use crate::audit::{self, Action, Event, Object, Verdict};
use crate::auth::{self, Capability};
use crate::otp::{self, uri, Params};
use crate::store::{EngineCheck, EngineKeyInfo, StoreError, Thing};

/// Vault's TOTP secrets engine. Its paths start with a mount name, so it claims no
/// prefix: an error on a path of no surface is in Vault's shape, as this one's are.
pub const SURFACE: Surface = Surface {
    prefixes: &[],
    routes,
    error: vault::error,
};

/// The mount every daemon has, as `bao secrets enable totp` makes it.
pub const DEFAULT_MOUNT: &str = "totp";

/// The engine's mounts: `totp` and any configured with `--totp-mount`, each holding its
/// own keys, at `/v1/<mount>`.
pub const MOUNTS: MountKind = MountKind {
    default: DEFAULT_MOUNT,
    path: |name| format!("/v1/{name}"),
    own: SURFACE.prefixes,
};

fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/{mount}/keys", get(list))
        .route(
            "/v1/{mount}/keys/{name}",
            get(read).post(create).put(create).delete(delete),
        )
        .route("/v1/{mount}/keys/{name}/unlock", post(unlock).put(unlock))
        .route(
            "/v1/{mount}/code/{name}",
            get(code).post(validate).put(validate),
        )
}

type Res = Result<Response, VaultError>;

/// The longest key name, in bytes (Vault sets none; a bound keeps rows and logs small).
const MAX_NAME: usize = 128;
/// The longest issuer or account name, in characters.
const MAX_TEXT: usize = 256;
/// Bytes of a generated key: Vault asks only for more than zero; below 10 (80 bits) a
/// key is too weak to hand out.
const KEY_SIZE: std::ops::RangeInclusive<i64> = 10..=64;
/// Bytes of an imported key: whatever a service handed out, up to SHA512's block.
const MAX_IMPORTED: usize = 128;
/// Pixels of the largest QR image (a memory bound).
const MAX_QR: i64 = 2048;

/// Vault's answer for a path under no mount: its router finds no handler.
fn no_route(path: &str) -> VaultError {
    VaultError::new(
        StatusCode::NOT_FOUND,
        format!("no handler for route \"{path}\". route entry not found."),
    )
}

/// The mount, if this daemon serves it.
fn mount(st: &AppState, raw: &str, rest: &str) -> Result<String, VaultError> {
    if st.engine_mounts.contains(raw) {
        Ok(raw.to_string())
    } else {
        Err(no_route(&format!("{raw}/{rest}")))
    }
}

/// A key name as Vault's engine takes it (`\w(([\w-.@]+)?\w)?`); any other is a path
/// the engine does not have.
fn key_name(raw: &str) -> Result<String, VaultError> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let ok = !raw.is_empty()
        && raw.len() <= MAX_NAME
        && raw.starts_with(word)
        && raw.ends_with(word)
        && raw.chars().all(|c| word(c) || matches!(c, '-' | '.' | '@'));
    if ok {
        Ok(raw.to_string())
    } else {
        Err(VaultError::new(StatusCode::NOT_FOUND, "unsupported path"))
    }
}

/// The mount and key name of a `keys/<name>` or `code/<name>` request.
fn target(
    st: &AppState,
    mount_raw: &str,
    kind: &str,
    raw: &str,
) -> Result<(String, String), VaultError> {
    let m = mount(st, mount_raw, &format!("{kind}/{raw}"))?;
    Ok((m, key_name(raw)?))
}

fn unknown_key(name: &str) -> VaultError {
    VaultError::bad_request(format!("unknown key: {name}"))
}

fn event<'a>(action: Action, verdict: Verdict, mount: &'a str, name: &'a str) -> Event<'a> {
    Event::new(action, verdict, Object::EngineKey { mount, name })
}

// ----- keys -----

/// The fields of `POST keys/<name>`, as Vault's engine names them. Vault ignores fields
/// it does not know, and so does this.
#[derive(Deserialize)]
struct KeyReq {
    #[serde(default, deserialize_with = "flex_bool")]
    generate: Option<bool>,
    #[serde(default, deserialize_with = "flex_bool")]
    exported: Option<bool>,
    #[serde(default, deserialize_with = "flex_int")]
    key_size: Option<i64>,
    #[serde(default, deserialize_with = "flex_string_opt")]
    key: Option<String>,
    #[serde(default, deserialize_with = "flex_string_opt")]
    issuer: Option<String>,
    #[serde(default, deserialize_with = "flex_string_opt")]
    account_name: Option<String>,
    #[serde(default, deserialize_with = "flex_seconds")]
    period: Option<i64>,
    algorithm: Option<String>,
    #[serde(default, deserialize_with = "flex_int")]
    digits: Option<i64>,
    #[serde(default, deserialize_with = "flex_int")]
    skew: Option<i64>,
    #[serde(default, deserialize_with = "flex_int")]
    qr_size: Option<i64>,
    #[serde(default, deserialize_with = "flex_string_opt")]
    url: Option<String>,
}

/// A key to store, checked: what `generate` makes or an import brings.
struct NewKey {
    info: EngineKeyInfo,
    secret: Vec<u8>,
    /// `Some(qr_size)` when the answer shows the key (generated and `exported`).
    show: Option<u32>,
}

impl KeyReq {
    /// Checks the request in Vault's order, with Vault's messages (and totpd's bounds
    /// after Vault's), into the key to store under `mount`/`name`.
    fn resolve(self, mount: String, name: String, now: i64) -> Result<NewKey, VaultError> {
        let bad = |m: &str| Err(VaultError::bad_request(m));
        let generate = self.generate.unwrap_or(false);
        let key = self.key.unwrap_or_default();
        let url = self.url.unwrap_or_default();
        if generate && !key.is_empty() {
            return bad("a key should not be passed if generate is true");
        }
        if generate && !url.is_empty() {
            return bad("a url should not be passed if generate is true");
        }
        let mut issuer = self.issuer.unwrap_or_default();
        let mut account_name = self.account_name.unwrap_or_default();
        let mut algorithm = self.algorithm.unwrap_or_else(|| "SHA1".into());
        let mut digits = self.digits.unwrap_or(6);
        let mut period = self.period.unwrap_or(30);
        let mut imported = None;
        if !url.is_empty() {
            // The URL's label, issuer, secret and parameters replace the fields.
            let k = uri::parse(&url).map_err(|e| VaultError::bad_request(e.to_string()))?;
            issuer = k.issuer.unwrap_or(issuer);
            account_name = k.label;
            algorithm = k.params.algorithm.as_str().to_string();
            digits = k.params.digits.into();
            period = k.params.period as i64;
            imported = Some(k.secret);
        }
        if digits != 6 && digits != 8 {
            return bad("the digits value can only be 6 or 8");
        }
        if !matches!(algorithm.as_str(), "SHA1" | "SHA256" | "SHA512") {
            return bad("the algorithm value is not valid");
        }
        if period <= 0 {
            return bad("the period value must be greater than zero");
        }
        let skew = self.skew.unwrap_or(1);
        if skew != 0 && skew != 1 {
            return bad("the skew value must be 0 or 1");
        }
        let qr_size = self.qr_size.unwrap_or(200);
        if qr_size < 0 {
            return bad("the qr_size value must be greater than or equal to zero");
        }
        let key_size = self.key_size.unwrap_or(20);
        if key_size <= 0 {
            return bad("the key_size value must be greater than zero");
        }
        // totpd's bounds, beyond Vault's.
        let params = Params::new(&algorithm, digits, period)
            .map_err(|e| VaultError::bad_request(e.to_string()))?;
        if qr_size > MAX_QR {
            return bad(&format!("qr_size: must be from 0 (no image) to {MAX_QR}"));
        }
        for (field, v) in [("issuer", &issuer), ("account_name", &account_name)] {
            if v.chars().count() > MAX_TEXT || !printable(v) {
                return bad(&format!(
                    "{field}: at most {MAX_TEXT} characters, without control characters"
                ));
            }
        }
        let (secret, show) = if generate {
            if account_name.is_empty() {
                return bad("the account_name value is required for generated keys");
            }
            if issuer.is_empty() {
                return bad("the issuer value is required for generated keys");
            }
            if !KEY_SIZE.contains(&key_size) {
                return bad(&format!(
                    "key_size: must be from {} to {} bytes",
                    KEY_SIZE.start(),
                    KEY_SIZE.end()
                ));
            }
            let secret =
                otp::generate_secret(key_size as usize).map_err(|e| VaultError::internal(&e))?;
            let exported = self.exported.unwrap_or(true);
            (secret, exported.then_some(qr_size as u32))
        } else {
            let secret = match imported {
                Some(s) => s,
                None if key.is_empty() => return bad("the key value is required"),
                None => otp::decode_base32(&key).ok_or_else(|| {
                    VaultError::bad_request("invalid key value: not valid base32")
                })?,
            };
            if secret.is_empty() || secret.len() > MAX_IMPORTED {
                return bad(&format!(
                    "invalid key value: must be 1 to {MAX_IMPORTED} bytes"
                ));
            }
            (secret, None)
        };
        Ok(NewKey {
            info: EngineKeyInfo {
                mount,
                name,
                issuer,
                account_name,
                params,
                skew: skew as u32,
                created_at: now,
            },
            secret,
            show,
        })
    }
}

/// Generates or imports a key; a name that holds one gets the new one, as in Vault.
/// A generated key's QR image is made before anything is stored, so an image that
/// cannot be made leaves no key nobody saw.
async fn create(
    State(st): State<AppState>,
    who: Caller,
    Path((m, raw)): Path<(String, String)>,
    extract::Json(req, _): Json<KeyReq>,
) -> Res {
    let (mount, name) = target(&st, &m, "keys", &raw)?;
    // Vault's engine has no existence check, so every write of a key is an update:
    // `create` alone does not allow it there, nor here.
    who.require(&format!("{mount}/keys/{name}"), Capability::Update)?;
    let new = req.resolve(mount, name, now())?;
    let shown = match new.show {
        Some(qr_size) => {
            let i = &new.info;
            let url = uri::build(&i.issuer, &i.account_name, &new.secret, &i.params);
            let mut data = Map::new();
            if qr_size > 0 {
                let barcode = super::vault_mfa::render_qr(&st, &url, qr_size).await?;
                data.insert("barcode".into(), barcode.into());
            }
            data.insert("url".into(), url.into());
            Some(Value::Object(data))
        }
        None => None,
    };
    st.store.put_engine_key(&new.info, &new.secret).await?;
    let i = &new.info;
    audit::record(
        &st,
        event(Action::EngineKeyCreate, Verdict::Ok, &i.mount, &i.name),
    );
    tracing::info!(mount = %i.mount, key = %i.name, generated = new.show.is_some(), "TOTP engine key stored");
    Ok(match shown {
        Some(data) => vault::ok(&who.request_id, data),
        None => vault::no_content(),
    })
}

/// Vault's read shape: never the key.
async fn read(
    State(st): State<AppState>,
    who: Caller,
    Path((m, raw)): Path<(String, String)>,
    Query(q): Query<ListQuery>,
) -> Res {
    q.forbid()?;
    let (mount, name) = target(&st, &m, "keys", &raw)?;
    who.require(&format!("{mount}/keys/{name}"), Capability::Read)?;
    let k = st
        .store
        .get_engine_key(&mount, &name)
        .await?
        .ok_or_else(VaultError::not_found)?;
    Ok(vault::ok(
        &who.request_id,
        json!({
            "account_name": k.account_name,
            "algorithm": k.params.algorithm.as_str(),
            "digits": k.params.digits,
            "issuer": k.issuer,
            "period": k.params.period,
        }),
    ))
}

/// 204 whether or not the key was there, as Vault answers.
async fn delete(
    State(st): State<AppState>,
    who: Caller,
    Path((m, raw)): Path<(String, String)>,
) -> Res {
    let (mount, name) = target(&st, &m, "keys", &raw)?;
    who.require(&format!("{mount}/keys/{name}"), Capability::Delete)?;
    let deleted = st.store.delete_engine_key(&mount, &name).await?;
    let verdict = if deleted {
        Verdict::Ok
    } else {
        Verdict::Unchanged("absent")
    };
    audit::record(&st, event(Action::EngineKeyDelete, verdict, &mount, &name));
    Ok(vault::no_content())
}

/// The mount's key names. Vault checks `list` on `<mount>/keys/` (its list paths end in
/// a slash), and answers an empty list with 404.
async fn list(
    State(st): State<AppState>,
    who: Caller,
    Path(m): Path<String>,
    Query(q): Query<ListQuery>,
) -> Res {
    let mount = mount(&st, &m, "keys")?;
    q.require()?;
    who.require(&format!("{mount}/keys/"), Capability::List)?;
    let keys = st.store.list_engine_keys(&mount).await?;
    if keys.is_empty() {
        return Err(VaultError::not_found());
    }
    Ok(vault::ok(&who.request_id, json!({ "keys": keys })))
}

/// Clears a key's lock and failure count, so the right code gets in at once (Vault's
/// engine has no lock to clear: this is totpd's, as `admin-unlock` is for MFA methods).
/// Sudo. The codes tried and the replay record stay.
async fn unlock(
    State(st): State<AppState>,
    who: Caller,
    Path((m, raw)): Path<(String, String)>,
) -> Res {
    let (mount, name) = target(&st, &m, "keys", &raw)?;
    let path = format!("{mount}/keys/{name}/unlock");
    who.require_any(&path, auth::WRITE)?;
    who.require(&path, Capability::Sudo)?;
    let cleared = match st.store.unlock_engine_key(&mount, &name).await {
        Ok(c) => c,
        Err(StoreError::NotFound(Thing::EngineKey)) => return Err(unknown_key(&name)),
        Err(e) => return Err(e.into()),
    };
    let was_locked = cleared.locked_until.is_some_and(|t| now() < t);
    let verdict = if was_locked || cleared.failures > 0 {
        Verdict::Ok
    } else {
        Verdict::Unchanged("not_locked")
    };
    audit::record(&st, event(Action::EngineUnlock, verdict, &mount, &name));
    tracing::info!(mount = %mount, key = %name, was_locked, failures = cleared.failures, "TOTP engine key unlocked");
    Ok(vault::ok(
        &who.request_id,
        json!({ "was_locked": was_locked, "failures": cleared.failures }),
    ))
}

// ----- codes -----

#[derive(Deserialize)]
struct CodeQuery {
    min_validity: Option<String>,
}

/// A period as Go's `time.Duration` prints it, as Vault's answer carries it: `30s`,
/// `1m0s`, `1h30m0s`.
fn go_duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

/// The current code, as OpenBao answers (`code`, `generated`, `expire_time` in unix
/// seconds, `period` as a duration), plus totpd's `expires_in` and `?min_validity=N`
/// (wait for the next step when fewer than N seconds are left), as on the agent
/// surface.
async fn code(
    State(st): State<AppState>,
    who: Caller,
    Path((m, raw)): Path<(String, String)>,
    Query(q): Query<CodeQuery>,
) -> Res {
    let (mount, name) = target(&st, &m, "code", &raw)?;
    who.require(&format!("{mount}/code/{name}"), Capability::Read)?;
    let (k, secret) = st
        .store
        .open_engine_key(&mount, &name)
        .await?
        .ok_or_else(|| unknown_key(&name))?;
    let p = k.params;
    let (code, t) = super::current_code(&secret, &p, q.min_validity.as_deref())
        .await
        .map_err(VaultError::bad_request)?;
    let expires_in = p.remaining(t);
    Ok(vault::ok(
        &who.request_id,
        json!({
            "code": code,
            "generated": t,
            "expire_time": t + expires_in as i64,
            "period": go_duration(p.period),
            "expires_in": expires_in,
        }),
    ))
}

#[derive(Deserialize)]
struct ValidateReq {
    #[serde(default, deserialize_with = "flex_string_opt")]
    code: Option<String>,
}

const USED: &str = "code already used; wait until the next time period";
const BAD_LENGTH: &str = "invalid number of digits for the code";

/// Whether `code` could be a code of some key: no surrounding space, and 6 or 8 bytes
/// (the only lengths a key has). Anything else is refused as Vault refuses it, before
/// any check, and costs the caller nothing: it can never match.
fn plausible(code: &str) -> bool {
    code.trim() == code && matches!(code.len(), 6 | 8)
}

/// Why a code that is not [`plausible`] is refused, in Vault's order: an unknown key
/// first, then an empty code, then its form.
async fn implausible(st: &AppState, mount: &str, name: &str, code: &str) -> VaultError {
    match st.store.get_engine_key(mount, name).await {
        Ok(None) => unknown_key(name),
        Ok(Some(_)) if code.is_empty() => VaultError::bad_request("the code value is required"),
        Ok(Some(_)) => VaultError::bad_request(BAD_LENGTH),
        Err(e) => e.into(),
    }
}

/// Checks a code as Vault's engine answers: 200 `{valid: true}` for a right code, 200
/// `{valid: false}` for a wrong one (a locked key's too: Vault's engine has no lock, so
/// a lock must not change the answer), 400 "code already used" for a code tried before
/// or of a step already used, 400 for a code of the wrong length. One store call checks
/// and records it all; the reason of every refusal goes to the log and metrics.
async fn validate(
    State(st): State<AppState>,
    who: Caller,
    Path((m, raw)): Path<(String, String)>,
    extract::Json(req, _): Json<ValidateReq>,
) -> Res {
    let (mount, name) = target(&st, &m, "code", &raw)?;
    // An update, as in Vault (a validation writes the code tried).
    who.require(&format!("{mount}/code/{name}"), Capability::Update)?;
    let code = req.code.unwrap_or_default();
    if !plausible(&code) {
        return Err(implausible(&st, &mount, &name, &code).await);
    }
    let check = match st
        .store
        .check_and_record_engine_code(&mount, &name, &code, now())
        .await
    {
        Ok(c) => c,
        Err(StoreError::NotFound(Thing::EngineKey)) => return Err(unknown_key(&name)),
        Err(e) => return Err(e.into()),
    };
    let reason = match check {
        EngineCheck::Repeat => "repeat",
        EngineCheck::Checked(otp::Outcome::Accepted { .. }) => "accepted",
        EngineCheck::Checked(otp::Outcome::Refused(r)) => r.as_str(),
    };
    st.metrics.verification("vault_totp", reason);
    let verdict = match check {
        EngineCheck::Checked(otp::Outcome::Accepted { .. }) => Verdict::Ok,
        _ => Verdict::Refused(reason),
    };
    audit::record(&st, event(Action::EngineValidate, verdict, &mount, &name));
    if reason != "accepted" {
        tracing::info!(mount = %mount, key = %name, reason, "TOTP engine code refused");
    }
    match check {
        EngineCheck::Checked(otp::Outcome::Accepted { .. }) => {
            Ok(vault::ok(&who.request_id, json!({ "valid": true })))
        }
        EngineCheck::Repeat | EngineCheck::Checked(otp::Outcome::Refused(otp::Refusal::Replay)) => {
            Err(VaultError::bad_request(USED))
        }
        // All digits yet malformed: the key has the other length (6 against 8).
        EngineCheck::Checked(otp::Outcome::Refused(otp::Refusal::Malformed))
            if code.bytes().all(|b| b.is_ascii_digit()) =>
        {
            Err(VaultError::bad_request(BAD_LENGTH))
        }
        EngineCheck::Checked(otp::Outcome::Refused(_)) => {
            Ok(vault::ok(&who.request_id, json!({ "valid": false })))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_print_as_go_durations() {
        assert_eq!(go_duration(30), "30s");
        assert_eq!(go_duration(60), "1m0s");
        assert_eq!(go_duration(90), "1m30s");
        assert_eq!(go_duration(3600), "1h0m0s");
        assert_eq!(go_duration(86_400), "24h0m0s");
    }

    #[test]
    fn key_names_as_vault_takes_them() {
        for ok in ["a", "ci-deploy", "user@example.com", "x.y_z", "A1"] {
            assert!(key_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            ".a",
            "a b",
            "a/b",
            "é",
            &"a".repeat(MAX_NAME + 1),
        ] {
            assert_eq!(key_name(bad).unwrap_err().status, 404, "{bad:?}");
        }
    }

    #[test]
    fn only_six_or_eight_bytes_without_spaces_are_checked() {
        assert!(plausible("123456") && plausible("12345678") && plausible("abcdef"));
        for no in ["", "12345", "1234567", " 123456", "123456 ", "123456789"] {
            assert!(!plausible(no), "{no:?}");
        }
    }
}

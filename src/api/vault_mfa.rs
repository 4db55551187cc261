//! HashiCorp Vault's identity MFA TOTP methods, under
//! `/v1/identity/mfa/method/totp`, with Vault's envelope, errors, defaults and bounds,
//! plus `validate`, which Vault only does inside its own login.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::fields::{flex_int, flex_seconds};
use super::vault::{self, Caller, Json, ListQuery, VaultError};
use super::{extract, now, AppState, Surface};
use crate::audit::{self, Action, Event, Object, Verdict};
use crate::auth::{self, Capability};
use crate::otp::{self, qr, uri, Params};
use crate::store::{Clash, Enrollment, MethodRecord, StoreError, Thing};

const BASE: &str = "/v1/identity/mfa/method/totp";
/// The ACL path of the method collection.
const ACL: &str = "identity/mfa/method/totp";

/// Vault identity MFA TOTP methods, in Vault's shape.
pub const SURFACE: Surface = Surface {
    prefixes: &["/v1/identity/mfa"],
    routes,
    error: vault::error,
};

fn routes() -> Router<AppState> {
    Router::new()
        .route(BASE, post(create).put(create).get(list))
        .route(&format!("{BASE}/generate"), post(generate).put(generate))
        .route(
            &format!("{BASE}/admin-generate"),
            post(admin_generate).put(admin_generate),
        )
        .route(
            &format!("{BASE}/admin-destroy"),
            post(admin_destroy).put(admin_destroy),
        )
        .route(&format!("{BASE}/validate"), post(validate).put(validate))
        .route(
            &format!("{BASE}/admin-unlock"),
            post(admin_unlock).put(admin_unlock),
        )
        .route(
            &format!("{BASE}/{{method_id}}"),
            get(read).post(update).put(update).delete(delete),
        )
}

type Res = Result<Response, VaultError>;

// ----- method configuration -----

/// Create and update take the same fields, with Vault's defaults for what is missing.
#[derive(Deserialize)]
struct MethodReq {
    method_name: Option<String>,
    issuer: Option<String>,
    #[serde(default, deserialize_with = "flex_seconds")]
    period: Option<i64>,
    #[serde(default, deserialize_with = "flex_int")]
    key_size: Option<i64>,
    #[serde(default, deserialize_with = "flex_int")]
    qr_size: Option<i64>,
    algorithm: Option<String>,
    #[serde(default, deserialize_with = "flex_int")]
    digits: Option<i64>,
    #[serde(default, deserialize_with = "flex_int")]
    skew: Option<i64>,
    #[serde(default, deserialize_with = "flex_int")]
    max_validation_attempts: Option<i64>,
}

/// Bounds beyond Vault's: a key under 80 bits is too weak to hand out, and an image
/// over 2048 pixels square is a memory sink.
const KEY_SIZE: std::ops::RangeInclusive<i64> = 10..=64;
const MAX_QR: i64 = 2048;
/// Pixels of the QR image when `qr_size` is left out (Vault's default), or more when the
/// method's codes need more.
const DEFAULT_QR: i64 = 200;
/// Longest `method_name`, in characters.
const MAX_METHOD_NAME: usize = 128;
const MAX_ISSUER: usize = 128;
const MAX_ATTEMPTS: i64 = 100_000;

impl MethodReq {
    /// Checks every field (Vault's order and defaults) into a record for `id`.
    fn into_record(self, id: String, now: i64) -> Result<MethodRecord, VaultError> {
        let bad = |m: &str| Err(VaultError::bad_request(m));
        let issuer = self
            .issuer
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let params = Params::new(
            self.algorithm.as_deref().unwrap_or("SHA1"),
            self.digits.unwrap_or(6),
            self.period.unwrap_or(30),
        )
        .map_err(|e| VaultError::bad_request(e.to_string()))?;
        let skew = self.skew.unwrap_or(1);
        if skew != 0 && skew != 1 {
            return bad(&format!("skew: must be 0 or 1, not {skew}"));
        }
        let key_size = self.key_size.unwrap_or(20);
        if !KEY_SIZE.contains(&key_size) {
            return bad(&format!(
                "key_size: must be from {} to {} bytes, not {key_size}",
                KEY_SIZE.start(),
                KEY_SIZE.end()
            ));
        }
        if issuer.is_empty() {
            return bad("issuer: must be set");
        }
        // The otpauth label is "issuer:account"; a colon in the issuer would split it wrong.
        if issuer.contains(':')
            || issuer.chars().count() > MAX_ISSUER
            || !super::fields::printable(&issuer)
        {
            return bad(&format!(
                "issuer: at most {MAX_ISSUER} characters, without ':' or control characters"
            ));
        }
        let mut qr_size = self.qr_size.unwrap_or(DEFAULT_QR);
        if !(0..=MAX_QR).contains(&qr_size) {
            return bad(&format!(
                "qr_size: must be from 0 (no image) to {MAX_QR}, not {qr_size}"
            ));
        }
        if qr_size > 0 {
            // The longest URL generate can make: the longest entity id, each character
            // percent-encoded, and a key_size secret.
            let sample_secret = vec![0u8; key_size as usize];
            let longest_entity = ":".repeat(crate::auth::MAX_ENTITY_ID);
            let sample = uri::build(&issuer, &longest_entity, &sample_secret, &params);
            match qr::min_size(&sample) {
                // Left to the default: as large as this method's codes need.
                Ok(min) if qr_size < i64::from(min)
                    && self.qr_size.is_none()
                    && i64::from(min) <= MAX_QR =>
                {
                    qr_size = i64::from(min)
                }
                Ok(min) if qr_size < i64::from(min) => {
                    return bad(&format!("qr_size: {qr_size} is too small for this method's QR code, which needs at least {min} pixels"))
                }
                Ok(_) => {}
                Err(_) => return bad("issuer: too long to fit in a QR code"),
            }
        }
        let max_validation_attempts = match self.max_validation_attempts.unwrap_or(0) {
            n if !(0..=MAX_ATTEMPTS).contains(&n) => {
                return bad(&format!(
                    "max_validation_attempts: must be from 0 (the default, 5) to {MAX_ATTEMPTS}, not {n}"
                ))
            }
            0 => otp::DEFAULT_MAX_ATTEMPTS,
            n => n as u32,
        };
        let name = self
            .method_name
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        if let Some(n) = &name {
            if n.chars().count() > MAX_METHOD_NAME || !super::fields::printable(n) {
                return bad(&format!(
                    "method_name: at most {MAX_METHOD_NAME} characters, without control characters"
                ));
            }
        }
        // The ranges checked above fit u32.
        Ok(MethodRecord {
            id,
            name,
            issuer,
            params,
            key_size: key_size as u32,
            qr_size: qr_size as u32,
            skew: skew as u32,
            max_validation_attempts,
            created_at: now,
        })
    }
}

/// Vault's read shape for a method.
fn method_json(m: &MethodRecord) -> Value {
    json!({
        "id": m.id,
        "name": m.name.clone().unwrap_or_default(),
        "type": "totp",
        "namespace": "",
        "namespace_id": "root",
        "namespace_path": "",
        "issuer": m.issuer,
        "period": m.params.period,
        "key_size": m.key_size,
        "qr_size": m.qr_size,
        "algorithm": m.params.algorithm.as_str(),
        "digits": m.params.digits,
        "skew": m.skew,
        "max_validation_attempts": m.max_validation_attempts,
    })
}

/// A method id must be a UUID; returned lower-case, hyphenated.
fn method_id(field: &str, raw: &str) -> Result<String, VaultError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(VaultError::bad_request(format!("{field}: must be set")));
    }
    uuid::Uuid::parse_str(raw)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| VaultError::bad_request(format!("{field}: {raw:?} is not a UUID")))
}

fn no_such_method(id: &str) -> VaultError {
    VaultError::new(
        StatusCode::NOT_FOUND,
        format!("method_id: no TOTP method with id {id}"),
    )
}

fn name_taken(m: &MethodRecord) -> VaultError {
    VaultError::bad_request(format!(
        "method_name: a login MFA method configuration with the method name {:?} already exists",
        m.name.as_deref().unwrap_or_default()
    ))
}

/// A store error of the method routes: an unknown method is 404, a taken name 400.
fn method_error(e: StoreError, m: &MethodRecord) -> VaultError {
    match e {
        StoreError::NotFound(Thing::Method) => no_such_method(&m.id),
        StoreError::Conflict(Clash::NameTaken) => name_taken(m),
        other => other.into(),
    }
}

async fn create(
    State(st): State<AppState>,
    who: Caller,
    extract::Json(req, _): Json<MethodReq>,
) -> Res {
    who.require_any(ACL, auth::WRITE)?;
    let rec = req.into_record(uuid::Uuid::new_v4().to_string(), now())?;
    st.store
        .create_method(&rec)
        .await
        .map_err(|e| method_error(e, &rec))?;
    audit::record(&st, method_event(Action::MfaMethodCreate, &rec.id));
    Ok(vault::ok(&who.request_id, json!({ "method_id": rec.id })))
}

/// As in Vault, an update replaces the whole configuration: fields left out go back to
/// their defaults, and `issuer` is required again. `method_name` is kept if left out.
async fn update(
    State(st): State<AppState>,
    who: Caller,
    Path(raw): Path<String>,
    extract::Json(req, _): Json<MethodReq>,
) -> Res {
    let id = method_id("method_id", &raw)?;
    who.require_any(&format!("{ACL}/{id}"), auth::WRITE)?;
    let rec = req.into_record(id, now())?;
    st.store
        .update_method(&rec)
        .await
        .map_err(|e| method_error(e, &rec))?;
    audit::record(&st, method_event(Action::MfaMethodUpdate, &rec.id));
    Ok(vault::no_content())
}

async fn read(
    State(st): State<AppState>,
    who: Caller,
    Path(raw): Path<String>,
    Query(q): Query<ListQuery>,
) -> Res {
    q.forbid()?;
    let id = method_id("method_id", &raw)?;
    who.require(&format!("{ACL}/{id}"), Capability::Read)?;
    let m = st
        .store
        .get_method(&id)
        .await?
        .ok_or_else(|| no_such_method(&id))?;
    Ok(vault::ok(&who.request_id, method_json(&m)))
}

async fn delete(State(st): State<AppState>, who: Caller, Path(raw): Path<String>) -> Res {
    let id = method_id("method_id", &raw)?;
    who.require(&format!("{ACL}/{id}"), Capability::Delete)?;
    match st.store.delete_method(&id).await {
        Ok(secrets) => {
            // As Vault: the entities' secrets for the method go with it.
            tracing::info!(method_id = %id, secrets, "MFA method deleted with its entity secrets");
            audit::record(&st, method_event(Action::MfaMethodDelete, &id));
            Ok(vault::no_content())
        }
        Err(StoreError::NotFound(Thing::Method)) => Err(no_such_method(&id)),
        Err(e) => Err(e.into()),
    }
}

async fn list(State(st): State<AppState>, who: Caller, Query(q): Query<ListQuery>) -> Res {
    q.require()?;
    who.require(ACL, Capability::List)?;
    let methods = st.store.list_methods().await?;
    if methods.is_empty() {
        // Vault answers an empty list with 404.
        return Err(VaultError::not_found());
    }
    let keys: Vec<&str> = methods.iter().map(|m| m.id.as_str()).collect();
    let info: Map<String, Value> = methods
        .iter()
        .map(|m| (m.id.clone(), method_json(m)))
        .collect();
    Ok(vault::ok(
        &who.request_id,
        json!({ "keys": keys, "key_info": info }),
    ))
}

// ----- secrets -----

#[derive(Deserialize)]
struct MethodEntity {
    #[serde(default)]
    method_id: String,
    #[serde(default)]
    entity_id: String,
}

/// Generates a secret for `entity`. The store makes and keeps it only if the entity has
/// none (one atomic call), and only a secret really created is rendered: a repeated
/// `generate` costs a lookup, never an image.
async fn generate_for(
    st: &AppState,
    who: &Caller,
    action: Action,
    method_id: &str,
    entity: &str,
) -> Res {
    let object = Object::MfaSecret {
        method_id,
        entity_id: entity,
    };
    let (method, secret) = match st.store.create_mfa_secret(method_id, entity, now()).await {
        Ok(Enrollment::Created { method, secret }) => (method, secret),
        Ok(Enrollment::Exists { method }) => {
            audit::record(st, Event::new(action, Verdict::Unchanged("exists"), object));
            return Ok(vault::warning(
                &who.request_id,
                format!(
                    "Entity already has a secret for MFA method {:?}",
                    method.name.unwrap_or_default()
                ),
            ));
        }
        Err(StoreError::NotFound(Thing::Method)) => return Err(no_such_method(method_id)),
        Err(e) => return Err(e.into()),
    };
    let url = uri::build(&method.issuer, entity, &secret, &method.params);
    let barcode = if method.qr_size > 0 {
        match render_qr(st, &url, method.qr_size).await {
            Ok(b) => b,
            Err(e) => {
                // Nobody will ever see this secret: take it back.
                st.store.delete_mfa_secret(method_id, entity).await?;
                return Err(e);
            }
        }
    } else {
        String::new()
    };
    audit::record(st, Event::new(action, Verdict::Ok, object));
    Ok(vault::ok(
        &who.request_id,
        json!({ "barcode": barcode, "url": url }),
    ))
}

/// A method's own event (create, update, delete), done.
fn method_event(action: Action, method_id: &str) -> Event<'_> {
    Event::new(action, Verdict::Ok, Object::Method { method_id })
}

/// The QR image of `url`, base64 PNG: a few milliseconds of pixel work, off the async
/// workers, at most [`super::AppState::renders`] at a time.
pub(crate) async fn render_qr(st: &AppState, url: &str, size: u32) -> Result<String, VaultError> {
    let _permit = st
        .renders
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| VaultError::internal(&e))?;
    st.metrics.qr_render();
    let url = url.to_string();
    tokio::task::spawn_blocking(move || qr::png_base64(&url, size))
        .await
        .map_err(|e| VaultError::internal(&e))?
        .map_err(|e| VaultError::bad_request(format!("qr_size: {e}")))
}

async fn generate(
    State(st): State<AppState>,
    who: Caller,
    extract::Json(req, _): Json<MethodEntity>,
) -> Res {
    who.require_any(&format!("{ACL}/generate"), auth::WRITE)?;
    let id = method_id("method_id", &req.method_id)?;
    let entity = who.entity_id.clone();
    generate_for(&st, &who, Action::MfaGenerate, &id, &entity).await
}

/// Checks sudo on an admin path and returns (method_id, entity_id) from the body.
fn admin_target(
    who: &Caller,
    path: &str,
    req: MethodEntity,
) -> Result<(String, String), VaultError> {
    who.require_any(path, auth::WRITE)?;
    who.require(path, Capability::Sudo)?;
    let id = method_id("method_id", &req.method_id)?;
    let entity = vault::entity_id("entity_id", &req.entity_id)?;
    Ok((id, entity))
}

async fn admin_generate(
    State(st): State<AppState>,
    who: Caller,
    extract::Json(req, _): Json<MethodEntity>,
) -> Res {
    let (id, entity) = admin_target(&who, &format!("{ACL}/admin-generate"), req)?;
    generate_for(&st, &who, Action::MfaAdminGenerate, &id, &entity).await
}

async fn admin_destroy(
    State(st): State<AppState>,
    who: Caller,
    extract::Json(req, _): Json<MethodEntity>,
) -> Res {
    let (id, entity) = admin_target(&who, &format!("{ACL}/admin-destroy"), req)?;
    match st.store.delete_mfa_secret(&id, &entity).await {
        Ok(destroyed) => {
            let verdict = if destroyed {
                Verdict::Ok
            } else {
                Verdict::Unchanged("absent")
            };
            let object = Object::MfaSecret {
                method_id: &id,
                entity_id: &entity,
            };
            audit::record(&st, Event::new(Action::MfaAdminDestroy, verdict, object));
            Ok(vault::no_content())
        }
        Err(StoreError::NotFound(Thing::Method)) => Err(no_such_method(&id)),
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
struct ValidateReq {
    #[serde(default)]
    method_id: String,
    passcode: Option<String>,
    entity_id: Option<String>,
}

/// One answer for every refusal (wrong, replayed, malformed, locked): the reason goes
/// to the log only.
async fn validate(
    State(st): State<AppState>,
    who: Caller,
    extract::Json(req, _): Json<ValidateReq>,
) -> Res {
    let path = format!("{ACL}/validate");
    who.require_any(&path, auth::WRITE)?;
    let id = method_id("method_id", &req.method_id)?;
    let passcode = req
        .passcode
        .ok_or_else(|| VaultError::bad_request("passcode: must be set"))?;
    let entity = match req.entity_id.filter(|e| !e.trim().is_empty()) {
        Some(raw) => {
            let e = vault::entity_id("entity_id", &raw)?;
            if e != who.entity_id {
                who.require(&path, Capability::Sudo)?;
            }
            e
        }
        None => who.entity_id.clone(),
    };
    let outcome = st
        .store
        .check_and_record_mfa_code(&id, &entity, &passcode, now())
        .await;
    if let Ok(o) = &outcome {
        let verdict = match o {
            otp::Outcome::Accepted { .. } => Verdict::Ok,
            otp::Outcome::Refused(r) => Verdict::Refused(r.as_str()),
        };
        let object = Object::MfaSecret {
            method_id: &id,
            entity_id: &entity,
        };
        audit::record(&st, Event::new(Action::MfaValidate, verdict, object));
    }
    match outcome {
        Ok(otp::Outcome::Accepted { .. }) => {
            st.metrics.verification("vault_mfa", "accepted");
            Ok(vault::ok(&who.request_id, json!({ "valid": true })))
        }
        Ok(otp::Outcome::Refused(reason)) => {
            st.metrics.verification("vault_mfa", reason.as_str());
            tracing::info!(method_id = %id, entity = %entity, reason = reason.as_str(), "passcode refused");
            Err(VaultError::new(StatusCode::FORBIDDEN, "invalid passcode"))
        }
        Err(StoreError::NotFound(Thing::Method)) => Err(no_such_method(&id)),
        Err(StoreError::NotFound(Thing::MfaSecret)) => Err(no_secret()),
        Err(e) => Err(e.into()),
    }
}

/// Clears an entity's lock and failure count for a method, so the right code gets in at
/// once (Vault has no way to: hashicorp/vault#14864). Sudo, as the other admin routes.
/// The replay record stays: a used code stays used.
async fn admin_unlock(
    State(st): State<AppState>,
    who: Caller,
    extract::Json(req, _): Json<MethodEntity>,
) -> Res {
    let (id, entity) = admin_target(&who, &format!("{ACL}/admin-unlock"), req)?;
    let cleared = match st.store.unlock_mfa_secret(&id, &entity).await {
        Ok(c) => c,
        Err(StoreError::NotFound(Thing::Method)) => return Err(no_such_method(&id)),
        Err(StoreError::NotFound(Thing::MfaSecret)) => return Err(no_secret()),
        Err(e) => return Err(e.into()),
    };
    let now = now();
    let was_locked = cleared.locked_until.is_some_and(|t| now < t);
    let verdict = if was_locked || cleared.failures > 0 {
        Verdict::Ok
    } else {
        Verdict::Unchanged("not_locked")
    };
    let object = Object::MfaSecret {
        method_id: &id,
        entity_id: &entity,
    };
    audit::record(&st, Event::new(Action::MfaAdminUnlock, verdict, object));
    tracing::info!(method_id = %id, entity = %entity, was_locked, failures = cleared.failures, "MFA secret unlocked");
    Ok(vault::ok(
        &who.request_id,
        json!({
            "method_id": id,
            "entity_id": entity,
            "was_locked": was_locked,
            "failures": cleared.failures,
        }),
    ))
}

fn no_secret() -> VaultError {
    VaultError::bad_request(
        "entity_id: the entity has no TOTP secret for this method (generate one first)",
    )
}

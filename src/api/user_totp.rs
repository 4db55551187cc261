//! The user login step, Django REST style, under `/api/v1/auth/totp/`. A web
//! application keeps its users and passwords and hands the second factor to totpd: a
//! user enrols (`setup`, `activate`, recovery codes); at login the application checks
//! the password, asks for a `temp_token` (`challenge`), and the user's code and that
//! temp_token at `verify` bring a login key. The current user is the caller's entity.
//!
//! Every refusal at `verify` is one 401, whatever the reason (bad temp_token, wrong,
//! replayed or locked code); the reason goes to the log and the metrics.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

use super::fields::{flex_string, flex_string_opt, rfc3339};
use super::{extract, now, surface_error, AppState, BodyError, Surface, SurfaceError};
use crate::audit::{self, Action, Event, Object, Verdict};
use crate::auth::{self, Capability};
use crate::otp::{self, recovery, uri, Params};
use crate::store::{
    Activation, Check, Proof, RecoveryHash, Setup, StoreError, TokenRecord, MAX_USER_DEVICES,
};

/// The login step, in Django REST Framework's error shapes.
pub const SURFACE: Surface = Surface {
    prefixes: &["/api/v1/auth/totp"],
    routes,
    error: |status, msg| DrfError::detail(status, msg).into_response(),
};

type Caller = extract::Caller<DrfError>;
type Json<T> = extract::Json<T, DrfError>;

const BASE: &str = "/api/v1/auth/totp";

fn routes() -> Router<AppState> {
    // The middleware drops a trailing slash, so `setup/` and `setup` both land here.
    Router::new()
        .route(&format!("{BASE}/setup"), post(setup))
        .route(&format!("{BASE}/activate"), post(activate))
        .route(&format!("{BASE}/deactivate"), post(deactivate))
        .route(&format!("{BASE}/challenge"), post(challenge))
        .route(&format!("{BASE}/verify"), post(verify))
        .route(&format!("{BASE}/devices"), get(devices))
        .route(
            &format!("{BASE}/recovery-codes"),
            get(recovery_remaining).post(recovery_regenerate),
        )
        .route(&format!("{BASE}/unlock"), post(unlock))
}

/// How the login step is configured.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The issuer in provisioning URIs.
    pub issuer: String,
    /// How long a temp_token stays good, in seconds.
    pub temp_token_ttl: i64,
    /// Policies of the login key `verify` returns.
    pub login_policies: Vec<String>,
    /// Lifetime of the login key, in seconds.
    pub login_ttl: i64,
    /// Whether `deactivate` needs a current or recovery code.
    pub deactivate_needs_code: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            issuer: "totpd".into(),
            temp_token_ttl: 300,
            login_policies: vec![auth::DEFAULT.into()],
            login_ttl: 24 * 3600,
            deactivate_needs_code: false,
        }
    }
}

/// Argon2 verifies (recovery codes) and hashes (new sets) that may run at once: half
/// the cores, at least one, at most two; more wait their turn. Each takes 19 MiB and a
/// core for tens of milliseconds, so a flood of recovery attempts never holds more than
/// half the machine (measured on 2 cores: with two at once, code reads under a flood fell
/// to 49-66 % of their rate alone).
pub fn max_hashes() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (cores / 2).clamp(1, 2)
}

// ----- errors -----

/// DRF's shapes: `{"detail": "...", "code": "..."}`, `{"<field>": ["..."], "code": ...}`
/// or `{"non_field_errors": ["..."], "code": ...}`.
#[derive(Debug)]
pub struct DrfError {
    pub status: StatusCode,
    body: serde_json::Map<String, Value>,
}

impl DrfError {
    /// `{"detail": msg, "code": <DRF's code for the status>}`.
    pub fn detail(status: StatusCode, msg: &str) -> Self {
        let code = match status.as_u16() {
            400 => "invalid",
            401 => "not_authenticated",
            403 => "permission_denied",
            404 => "not_found",
            405 => "method_not_allowed",
            413 => "request_too_large",
            503 => "service_unavailable",
            _ => "error",
        };
        let mut body = serde_json::Map::new();
        body.insert("detail".into(), json!(msg));
        body.insert("code".into(), json!(code));
        DrfError { status, body }
    }

    /// 400 `{"<field>": [msg], "code": code}`.
    fn field(field: &str, msg: &str, code: &str) -> Self {
        let mut body = serde_json::Map::new();
        body.insert(field.into(), json!([msg]));
        body.insert("code".into(), json!(code));
        DrfError {
            status: StatusCode::BAD_REQUEST,
            body,
        }
    }

    fn required(field: &str) -> Self {
        Self::field(field, "This field is required.", "required")
    }

    /// 400 `{"non_field_errors": [msg], "code": "invalid"}`.
    fn non_field(msg: &str) -> Self {
        Self::field("non_field_errors", msg, "invalid")
    }

    /// The one answer of every failed `verify`.
    fn not_authenticated() -> Self {
        Self::detail(
            StatusCode::UNAUTHORIZED,
            "Invalid or expired temp_token, or invalid code.",
        )
    }
}

impl IntoResponse for DrfError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(Value::Object(self.body))).into_response()
    }
}

impl SurfaceError for DrfError {
    fn with_status(status: StatusCode, message: String) -> Self {
        DrfError::detail(status, &message)
    }

    /// A missing field is `required`, a field of the wrong type `invalid`, a body that is
    /// no JSON object a `parse_error` in `non_field_errors`.
    fn from_body(e: BodyError) -> Self {
        match e {
            BodyError::Field {
                field: Some(f),
                message,
            } => Self::field(&f, &message, "invalid"),
            BodyError::Field {
                field: None,
                message,
            } => match message
                .strip_prefix("missing field `")
                .and_then(|r| r.split('`').next())
            {
                Some(f) => Self::required(f),
                None => Self::field("non_field_errors", &message, "invalid"),
            },
            BodyError::Malformed(m) => Self::field(
                "non_field_errors",
                &format!("JSON parse error - {m}"),
                "parse_error",
            ),
            e => Self::detail(e.status(), &e.to_string()),
        }
    }
}

surface_error!(DrfError);

type Res = Result<Response, DrfError>;

fn ok(status: StatusCode, body: Value) -> Res {
    Ok((status, axum::Json(body)).into_response())
}

/// The caller may `cap` on `api/v1/auth/totp/<op>`.
fn require(who: &Caller, op: &str, cap: Capability) -> Result<(), DrfError> {
    who.require(&format!("api/v1/auth/totp/{op}"), cap)
        .map_err(|_| {
            DrfError::detail(
                StatusCode::FORBIDDEN,
                "You do not have permission to perform this action.",
            )
        })
}

/// A device name: 1..=64 printable characters, trimmed.
fn device_name(raw: Option<String>) -> Result<Option<String>, DrfError> {
    match raw.map(|n| n.trim().to_string()) {
        None => Ok(None),
        Some(n) if n.is_empty() || n.chars().count() > 64 || !super::fields::printable(&n) => {
            Err(DrfError::field(
                "name",
                "A device name is 1 to 64 printable characters.",
                "invalid",
            ))
        }
        Some(n) => Ok(Some(n)),
    }
}

/// The settings every authenticator app supports: SHA1, 6 digits, 30 seconds.
fn device_params() -> Result<Params, DrfError> {
    Params::new("SHA1", 6, 30).map_err(|e| super::internal::<DrfError>(&e))
}

/// Bytes of a new device secret (160 bits, as RFC 4226 recommends).
const SECRET_BYTES: usize = 20;

/// The name of a user's first device, when setup names none.
const DEFAULT_DEVICE: &str = "default";

// ----- setup / activate -----

#[derive(Deserialize, Default)]
struct SetupReq {
    name: Option<String>,
    /// With `--deactivate-needs-code`, adding a device needs the proof removing one does.
    #[serde(default, deserialize_with = "flex_string_opt")]
    token: Option<String>,
}

async fn setup(
    State(st): State<AppState>,
    who: Caller,
    extract::Json(req, _): Json<SetupReq>,
) -> Res {
    require(&who, "setup", Capability::Update)?;
    let name = device_name(req.name)?;
    // A stolen session must not add a device of its own and then use it to remove the
    // user's: with --deactivate-needs-code, adding a device to an active user needs a
    // code from a device the user has, or a recovery code.
    if st.login.deactivate_needs_code && name.is_some() {
        let devices = st.store.list_user_devices(&who.entity_id).await?;
        if devices.iter().any(|d| d.active) {
            let action = Action::UserSetup;
            confirm_owner(&st, &who.entity_id, req.token, action, "adding a device").await?;
        }
    }
    let params = device_params()?;
    let secret = otp::generate_secret(SECRET_BYTES).map_err(|e| super::internal::<DrfError>(&e))?;
    let id = uuid::Uuid::new_v4().to_string();
    let outcome = st
        .store
        .setup_user_device(
            &who.entity_id,
            name.as_deref(),
            &id,
            &secret,
            &params,
            now(),
        )
        .await?;
    match outcome {
        Setup::Pending => {}
        Setup::AlreadyActive => return Err(DrfError::non_field(
            "Two-factor authentication is already active. To add another device, give it a name.",
        )),
        Setup::NameTaken => {
            return Err(DrfError::field(
                "name",
                "An active device already has this name.",
                "invalid",
            ))
        }
        Setup::TooMany => {
            return Err(DrfError::non_field(&format!(
                "A user has at most {MAX_USER_DEVICES} devices: deactivate one first."
            )))
        }
    }
    let device = Some(name.as_deref().unwrap_or(DEFAULT_DEVICE));
    record(&st, Action::UserSetup, Verdict::Ok, &who.entity_id, device);
    let issuer = &st.login.issuer;
    ok(
        StatusCode::CREATED,
        json!({
            "secret_key": otp::encode_base32(&secret),
            "provisioning_uri": uri::build(issuer, &who.entity_id, &secret, &params),
        }),
    )
}

#[derive(Deserialize)]
struct ActivateReq {
    #[serde(deserialize_with = "flex_string")]
    token: String,
    name: Option<String>,
}

async fn activate(
    State(st): State<AppState>,
    who: Caller,
    extract::Json(req, _): Json<ActivateReq>,
) -> Res {
    require(&who, "activate", Capability::Update)?;
    let name = device_name(req.name)?;
    let store = &st.store;
    let user = who.entity_id.as_str();
    let mut set = None;
    loop {
        let hashes = set
            .as_ref()
            .map(|(_, h): &(Vec<String>, Vec<RecoveryHash>)| h.as_slice());
        let outcome = store
            .activate_user_device(&who.entity_id, name.as_deref(), &req.token, hashes, now())
            .await?;
        match outcome {
            Activation::Activated { first } => {
                let shown = match (first, set) {
                    (true, Some((shown, _))) => shown,
                    _ => Vec::new(),
                };
                st.metrics.verification("user_totp", "accepted");
                let device = name.as_deref();
                record(&st, Action::UserActivate, Verdict::Ok, user, device);
                return ok(StatusCode::OK, json!({ "recovery_codes": shown }));
            }
            // The code was right; the first device brings a set, hashed off the writer.
            Activation::NeedsCodes if set.is_none() => set = Some(new_set(&st).await?),
            Activation::NeedsCodes => {
                return Err(super::internal(&"recovery codes asked for twice"))
            }
            Activation::NoPending => {
                return Err(match name {
                    Some(_) => {
                        DrfError::field("name", "No pending device has this name.", "invalid")
                    }
                    None => DrfError::non_field("Nothing to activate: call setup first."),
                })
            }
            Activation::SeveralPending => {
                return Err(DrfError::field(
                    "name",
                    "Several devices are pending: name the one to activate.",
                    "required",
                ))
            }
            Activation::Refused(r) => {
                tracing::warn!(reason = r.as_str(), "activation code refused");
                st.metrics.verification("user_totp", r.as_str());
                let verdict = Verdict::Refused(r.as_str());
                record(&st, Action::UserActivate, verdict, user, name.as_deref());
                return Err(DrfError::field("token", "Invalid code.", "invalid"));
            }
        }
    }
}

/// A new set of recovery codes: as shown once, and as stored. Hashed off the async
/// workers, at most [`max_hashes`] at a time.
async fn new_set(st: &AppState) -> Result<(Vec<String>, Vec<RecoveryHash>), DrfError> {
    let codes = recovery::generate_set().map_err(|e| super::internal::<DrfError>(&e))?;
    let shown = codes.iter().map(recovery::RecoveryCode::display).collect();
    let stored = hashing(st, move || {
        codes
            .iter()
            .map(|c| {
                recovery::hash(c).map(|hash| RecoveryHash {
                    selector: c.selector.clone(),
                    hash,
                })
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .await?
    .map_err(|e| super::internal::<DrfError>(&e))?;
    Ok((shown, stored))
}

/// Runs argon2 work on the blocking pool, at most [`max_hashes`] at a time: a flood of
/// recovery attempts queues here, and stalls neither the async workers, nor the reads,
/// nor the writer.
async fn hashing<T: Send + 'static>(
    st: &AppState,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, DrfError> {
    // The permit travels with the job: a client that hangs up does not free its slot
    // while its hash still runs.
    let permit = st
        .hashes
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| super::internal::<DrfError>(&e))?;
    let metrics = st.metrics.clone();
    tokio::task::spawn_blocking(move || {
        let running = metrics.hash_running();
        let out = f();
        drop(running);
        drop(permit);
        out
    })
    .await
    .map_err(|e| super::internal::<DrfError>(&e))
}

// ----- checking a code for a proof -----

/// What [`check_typed`] found: the outcome, the proof's user (unknown when the
/// temp_token is not good), and what was typed (`totp` or `recovery_code`), for the
/// audit log.
struct Checked {
    check: Check,
    user: Option<String>,
    with: &'static str,
}

/// Checks what a user typed, a TOTP code or a recovery code, for `proof`.
async fn check_typed(st: &AppState, proof: Proof<'_>, typed: &str) -> Result<Checked, StoreError> {
    let code = match recovery::parse(typed) {
        // Digits only are a TOTP code; so is anything that is no recovery code, which
        // then counts as a malformed attempt.
        Some(c) if !typed.trim().bytes().all(|b| b.is_ascii_digit()) => Some(c),
        _ => None,
    };
    let with = if code.is_some() {
        "recovery_code"
    } else {
        "totp"
    };
    // verify/ needs no API token, so anyone can call it: a temp_token that is not good
    // is turned away by a read, before it can take a turn at the writer or at argon2.
    // (That it answers sooner than a wrong code tells nothing: temp_tokens are 256
    // random bits, and the store checks again.)
    let user = match proof {
        Proof::Login { temp_hash, .. } => {
            match st.store.get_temp_token_user(temp_hash, now()).await? {
                Some(u) => u,
                None => {
                    let check = Check::BadTempToken;
                    return Ok(Checked {
                        check,
                        user: None,
                        with,
                    });
                }
            }
        }
        Proof::Owner { entity_id } => entity_id.to_string(),
    };
    let check = match code {
        None => st.store.check_user_code(proof, typed, now()).await?,
        Some(code) => {
            let stored = st.store.get_recovery_hash(&user, &code.selector).await?;
            let selector = code.selector.clone();
            // One argon2 verify per attempt, an unknown selector included.
            let matched = hashing(st, move || recovery::check(&code, stored.as_deref()))
                .await
                .map_err(|_| StoreError::Backend("recovery-code check failed".into()))?;
            st.store
                .spend_recovery_code(proof, &selector, matched, now())
                .await?
        }
    };
    let user = Some(user);
    Ok(Checked { check, user, with })
}

/// The user confirms an action with a current code or a recovery code (`token`): a
/// field error if it is missing or refused (and the refusal counts against the user).
/// A refused confirmation is audited as a refusal of `action`; an accepted one is part
/// of the action's own line.
async fn confirm_owner(
    st: &AppState,
    entity_id: &str,
    token: Option<String>,
    action: Action,
    what: &str,
) -> Result<(), DrfError> {
    let typed = token.ok_or_else(|| DrfError::required("token"))?;
    let checked = check_typed(st, Proof::Owner { entity_id }, &typed).await?;
    match checked.check {
        Check::NotActive => Err(DrfError::non_field(
            "Two-factor authentication is not active.",
        )),
        check if !settle(st, &format!("{what} code"), check) => {
            record(st, action, verdict(check), entity_id, None);
            Err(DrfError::field("token", "Invalid code.", "invalid"))
        }
        _ => Ok(()),
    }
}

/// Why a check was refused; `None` if accepted.
fn refusal(check: Check) -> Option<&'static str> {
    match check {
        Check::Accepted => None,
        Check::BadTempToken => Some("bad_temp_token"),
        Check::NotActive => Some("not_active"),
        Check::Refused(r) => Some(r.as_str()),
    }
}

/// A check as the audit log says it.
fn verdict(check: Check) -> Verdict {
    refusal(check).map_or(Verdict::Ok, Verdict::Refused)
}

/// Counts and logs the outcome of a check; true if accepted.
fn settle(st: &AppState, what: &str, check: Check) -> bool {
    let Some(reason) = refusal(check) else {
        st.metrics.verification("user_totp", "accepted");
        return true;
    };
    tracing::warn!(reason, "{what} refused");
    st.metrics.verification("user_totp", reason);
    false
}

/// Audits a decision about a user (and a device of theirs, if one is named).
fn record(st: &AppState, action: Action, verdict: Verdict, user: &str, device: Option<&str>) {
    let object = Object::User { user, device };
    audit::record(st, Event::new(action, verdict, object));
}

// ----- challenge / verify -----

#[derive(Deserialize)]
struct ChallengeReq {
    user: String,
}

async fn challenge(
    State(st): State<AppState>,
    who: Caller,
    extract::Json(req, _): Json<ChallengeReq>,
) -> Res {
    require(&who, "challenge", Capability::Sudo)?;
    let user = auth::entity_id(&req.user).map_err(|e| DrfError::field("user", &e, "invalid"))?;
    let temp = auth::new_token().map_err(|e| super::internal::<DrfError>(&e))?;
    let now = now();
    let ttl = st.login.temp_token_ttl;
    let created = st
        .store
        .create_temp_token(
            &user,
            &auth::hash_token(&temp),
            now,
            now.saturating_add(ttl),
        )
        .await?;
    if !created {
        let verdict = Verdict::Refused("not_active");
        record(&st, Action::UserChallenge, verdict, &user, None);
        return Err(DrfError::field(
            "user",
            "This user has no active two-factor device.",
            "invalid",
        ));
    }
    record(&st, Action::UserChallenge, Verdict::Ok, &user, None);
    ok(
        StatusCode::CREATED,
        json!({ "temp_token": temp, "expires_in": ttl }),
    )
}

#[derive(Deserialize)]
struct VerifyReq {
    temp_token: String,
    #[serde(deserialize_with = "flex_string")]
    token: String,
}

/// No token needed, over TCP too: the temp_token is the credential.
async fn verify(State(st): State<AppState>, extract::Json(req, _): Json<VerifyReq>) -> Res {
    let key = auth::new_token().map_err(|e| super::internal::<DrfError>(&e))?;
    let now = now();
    let login = TokenRecord {
        hash: auth::hash_token(&key),
        accessor: uuid::Uuid::new_v4().simple().to_string(),
        // Set by the store to the temp_token's user.
        entity_id: String::new(),
        display_name: "totp-login".into(),
        policies: st.login.login_policies.clone(),
        created_at: now,
        expires_at: Some(now.saturating_add(st.login.login_ttl)),
        parent: None,
        // A login key lasts one login's TTL; the next login brings a new one.
        renewable: false,
        creation_ttl: st.login.login_ttl,
        explicit_max_ttl: 0,
        last_renewal: None,
    };
    let temp_hash = auth::hash_token(req.temp_token.trim());
    let proof = Proof::Login {
        temp_hash: &temp_hash,
        login: &login,
    };
    let Checked { check, user, with } = check_typed(&st, proof, &req.token).await?;
    let accepted = settle(&st, "login code", check);
    let object = Object::Login {
        user: user.as_deref(),
        with,
        accessor: accepted.then_some(login.accessor.as_str()),
    };
    let (action, verdict) = (Action::UserVerify, verdict(check));
    audit::record(&st, Event::new(action, verdict, object));
    if !accepted {
        return Err(DrfError::not_authenticated());
    }
    tracing::info!(accessor = %login.accessor, "login step passed; key issued");
    ok(StatusCode::OK, json!({ "key": key }))
}

// ----- deactivate -----

#[derive(Deserialize, Default)]
struct DeactivateReq {
    name: Option<String>,
    #[serde(default, deserialize_with = "flex_string_opt")]
    token: Option<String>,
    user: Option<String>,
}

async fn deactivate(
    State(st): State<AppState>,
    who: Caller,
    extract::Json(req, _): Json<DeactivateReq>,
) -> Res {
    let name = device_name(req.name)?;
    let user = match req.user {
        // An application resetting a user who lost everything: sudo is what it takes.
        Some(u) => {
            require(&who, "deactivate", Capability::Sudo)?;
            auth::entity_id(&u).map_err(|e| DrfError::field("user", &e, "invalid"))?
        }
        None => {
            require(&who, "deactivate", Capability::Update)?;
            if st.login.deactivate_needs_code {
                let action = Action::UserDeactivate;
                confirm_owner(&st, &who.entity_id, req.token, action, "deactivation").await?;
            }
            who.entity_id.clone()
        }
    };
    let removed = st.store.deactivate_user(&user, name.as_deref()).await?;
    if removed == 0 {
        return Err(match name {
            Some(_) => DrfError::field("name", "No device has this name.", "invalid"),
            None => DrfError::non_field("Two-factor authentication is not set up."),
        });
    }
    let device = name.as_deref();
    record(&st, Action::UserDeactivate, Verdict::Ok, &user, device);
    ok(
        StatusCode::OK,
        json!({ "detail": "Two-factor authentication deactivated." }),
    )
}

// ----- extensions: devices, recovery codes -----

async fn devices(State(st): State<AppState>, who: Caller) -> Res {
    require(&who, "devices", Capability::Read)?;
    let list = st.store.list_user_devices(&who.entity_id).await?;
    let out: Vec<Value> = list
        .iter()
        .map(|d| {
            json!({
                "name": d.name,
                "active": d.active,
                "created_at": rfc3339(d.created_at),
                "last_used_at": d.last_used_at.map(rfc3339),
            })
        })
        .collect();
    ok(StatusCode::OK, Value::Array(out))
}

async fn recovery_remaining(State(st): State<AppState>, who: Caller) -> Res {
    require(&who, "recovery-codes", Capability::Read)?;
    let n = st.store.count_recovery_codes(&who.entity_id).await?;
    ok(StatusCode::OK, json!({ "remaining": n }))
}

#[derive(Deserialize)]
struct RegenerateReq {
    #[serde(deserialize_with = "flex_string")]
    token: String,
}

async fn recovery_regenerate(
    State(st): State<AppState>,
    who: Caller,
    extract::Json(req, _): Json<RegenerateReq>,
) -> Res {
    require(&who, "recovery-codes", Capability::Update)?;
    // A current code, not a recovery code: the set is renewed by whoever holds a device.
    let proof = Proof::Owner {
        entity_id: &who.entity_id,
    };
    match st.store.check_user_code(proof, &req.token, now()).await? {
        Check::NotActive => {
            return Err(DrfError::non_field(
                "Two-factor authentication is not active.",
            ))
        }
        check if !settle(&st, "recovery-code renewal code", check) => {
            let action = Action::UserRecoveryCodes;
            record(&st, action, verdict(check), &who.entity_id, None);
            return Err(DrfError::field("token", "Invalid code.", "invalid"));
        }
        _ => {}
    }
    let (shown, stored) = new_set(&st).await?;
    let replaced = st
        .store
        .replace_recovery_codes(&who.entity_id, &stored, now())
        .await?;
    if !replaced {
        // Deactivated meanwhile: no codes for a user without a device.
        return Err(DrfError::non_field(
            "Two-factor authentication is not active.",
        ));
    }
    record(
        &st,
        Action::UserRecoveryCodes,
        Verdict::Ok,
        &who.entity_id,
        None,
    );
    ok(StatusCode::OK, json!({ "recovery_codes": shown }))
}

// ----- unlock (an operator's) -----

#[derive(Deserialize)]
struct UnlockReq {
    user: String,
}

/// Clears a user's lock and failure count, so the right code gets in at once. For an
/// application or operator with sudo on `api/v1/auth/totp/unlock`. Used codes stay used.
async fn unlock(
    State(st): State<AppState>,
    who: Caller,
    extract::Json(req, _): Json<UnlockReq>,
) -> Res {
    require(&who, "unlock", Capability::Sudo)?;
    let user = auth::entity_id(&req.user).map_err(|e| DrfError::field("user", &e, "invalid"))?;
    let Some(cleared) = st.store.unlock_user(&user).await? else {
        return Err(DrfError::field(
            "user",
            "This user has no two-factor device.",
            "invalid",
        ));
    };
    let was_locked = cleared.locked_until.is_some_and(|t| now() < t);
    let verdict = if was_locked || cleared.failures > 0 {
        Verdict::Ok
    } else {
        Verdict::Unchanged("not_locked")
    };
    record(&st, Action::UserUnlock, verdict, &user, None);
    tracing::info!(user = %user, was_locked, failures = cleared.failures, "user unlocked");
    ok(
        StatusCode::OK,
        json!({
            "detail": "Unlocked.",
            "user": user,
            "was_locked": was_locked,
            "failures": cleared.failures,
        }),
    )
}

/// The semaphore that bounds argon2 work, for the app state.
pub fn hash_bound() -> Arc<tokio::sync::Semaphore> {
    Arc::new(tokio::sync::Semaphore::new(max_hashes()))
}

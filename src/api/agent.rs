//! An authenticator app for agents, under `/api/v2/totp`. An agent stores a
//! seed once and later asks for the current code; the seed is returned only by create.
//! Each secret belongs to the caller's entity: another entity's id answers 404, never
//! 403, so ids do not leak.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

use super::fields::{flex_int, rfc3339};
use super::{extract, now, surface_error, AppState, Surface, SurfaceError};
use crate::audit::{self, Action, Event, Object, Verdict};
use crate::auth::Capability;
use crate::otp::{self, uri, Params};
use crate::store::AgentSecretInfo;

/// The authenticator app for agents, with its own error shape.
pub const SURFACE: Surface = Surface {
    prefixes: &["/api/v2/totp"],
    routes,
    error: |status, msg| AgentError::new(status, msg).into_response(),
};

/// The caller, rejected in this surface's shape.
type Caller = extract::Caller<AgentError>;
/// A JSON body, rejected in this surface's shape.
type Json<T> = extract::Json<T, AgentError>;

fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v2/totp/secrets", get(list).post(create))
        .route("/api/v2/totp/secrets/{id}", delete(remove))
        .route("/api/v2/totp/code/{id}", get(code))
}

/// Imported secrets shorter than this are refused (RFC 4226 asks for 128, services
/// commonly hand out 80).
const MIN_SECRET_BYTES: usize = 10;
/// Longer than any real seed (SHA512's block is 128 bytes); keeps rows small.
const MAX_SECRET_BYTES: usize = 128;
const MAX_LABEL: usize = 256;

/// `{"status": "error", "error": "..."}` with a status code.
#[derive(Debug)]
pub struct AgentError {
    pub status: StatusCode,
    pub message: String,
}

impl AgentError {
    pub fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        Self {
            status,
            message: msg.into(),
        }
    }
    fn bad(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, msg)
    }
    fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "TOTP secret not found")
    }
}

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(json!({"status": "error", "error": self.message})),
        )
            .into_response()
    }
}

impl SurfaceError for AgentError {
    fn with_status(status: StatusCode, message: String) -> Self {
        AgentError::new(status, message)
    }
}

surface_error!(AgentError);

type Res = Result<Response, AgentError>;

#[derive(Deserialize)]
struct CreateReq {
    secret: Option<String>,
    uri: Option<String>,
    label: Option<String>,
    issuer: Option<String>,
    algorithm: Option<String>,
    #[serde(default, deserialize_with = "flex_int")]
    digits: Option<i64>,
    #[serde(default, deserialize_with = "flex_int")]
    period: Option<i64>,
}

/// What a create request resolves to.
struct NewSecret {
    /// Made by the daemon (neither `secret` nor `uri` was given).
    generated: bool,
    secret: Vec<u8>,
    label: String,
    issuer: Option<String>,
    params: Params,
}

/// A field given beside the uri must say what the uri says. The message names both
/// values, so it is never used for the secret (see [`agree_secret`]).
fn agree<T: PartialEq + std::fmt::Debug>(
    field: &str,
    given: Option<T>,
    from_uri: T,
) -> Result<T, AgentError> {
    match given {
        Some(g) if g != from_uri => Err(AgentError::bad(format!(
            "{field}: {g:?} conflicts with the uri, which says {from_uri:?}"
        ))),
        _ => Ok(from_uri),
    }
}

/// As [`agree`], for the seed: the message says that they differ, never what they are.
fn agree_secret(given: Option<Vec<u8>>, from_uri: Vec<u8>) -> Result<Vec<u8>, AgentError> {
    match given {
        Some(g) if g != from_uri => Err(AgentError::bad("secret: conflicts with the uri's secret")),
        _ => Ok(from_uri),
    }
}

impl CreateReq {
    fn resolve(self) -> Result<NewSecret, AgentError> {
        let bad_param = |e: otp::ParamError| AgentError::bad(e.to_string());
        let secret = self
            .secret
            .as_deref()
            .map(|s| {
                otp::decode_base32(s).ok_or_else(|| AgentError::bad("secret: not valid base32"))
            })
            .transpose()?;
        let label = self.label.map(|l| l.trim().to_string());
        let issuer = self
            .issuer
            .map(|i| i.trim().to_string())
            .filter(|i| !i.is_empty());

        let new = match self.uri.as_deref() {
            Some(u) => {
                let k = uri::parse(u).map_err(|e| AgentError::bad(e.to_string()))?;
                // Fields given beside the uri are checked, then must say what it says.
                let given = Params::new(
                    self.algorithm
                        .as_deref()
                        .unwrap_or(k.params.algorithm.as_str()),
                    self.digits.unwrap_or(k.params.digits.into()),
                    self.period.unwrap_or(k.params.period as i64),
                )
                .map_err(bad_param)?;
                NewSecret {
                    generated: false,
                    secret: agree_secret(secret, k.secret)?,
                    label: agree("label", label, k.label)?,
                    issuer: match (issuer, k.issuer) {
                        (Some(g), Some(u)) if g != u => {
                            return Err(AgentError::bad(format!(
                                "issuer: {g:?} conflicts with the uri, which says {u:?}"
                            )))
                        }
                        (g, u) => u.or(g),
                    },
                    params: Params {
                        algorithm: agree("algorithm", Some(given.algorithm), k.params.algorithm)?,
                        digits: agree("digits", Some(given.digits), k.params.digits)?,
                        period: agree("period", Some(given.period), k.params.period)?,
                    },
                }
            }
            None => {
                let params = Params::new(
                    self.algorithm.as_deref().unwrap_or("SHA1"),
                    self.digits.unwrap_or(6),
                    self.period.unwrap_or(30),
                )
                .map_err(bad_param)?;
                let label = label.ok_or_else(|| AgentError::bad("label: required"))?;
                // Neither secret nor uri: generate one, as Sendblue's SDK documents, with
                // as many bytes as the hash's output (RFC 4226's advice).
                let (secret, generated) = match secret {
                    Some(s) => (s, false),
                    None => {
                        let len = match params.algorithm.as_str() {
                            "SHA256" => 32,
                            "SHA512" => 64,
                            _ => 20,
                        };
                        let s = otp::generate_secret(len)
                            .map_err(|e| super::internal::<AgentError>(&e))?;
                        (s, true)
                    }
                };
                NewSecret {
                    generated,
                    params,
                    secret,
                    label,
                    issuer,
                }
            }
        };
        if new.secret.len() < MIN_SECRET_BYTES {
            return Err(AgentError::bad(format!(
                "secret: too short ({} bits); at least {} bits are required",
                new.secret.len() * 8,
                MIN_SECRET_BYTES * 8
            )));
        }
        if new.secret.len() > MAX_SECRET_BYTES {
            return Err(AgentError::bad(format!(
                "secret: too long; at most {} bits",
                MAX_SECRET_BYTES * 8
            )));
        }
        if new
            .issuer
            .as_ref()
            .is_some_and(|i| i.chars().count() > MAX_LABEL)
        {
            return Err(AgentError::bad(format!(
                "issuer: at most {MAX_LABEL} characters"
            )));
        }
        if new.label.is_empty() || new.label.chars().count() > MAX_LABEL {
            return Err(AgentError::bad(format!(
                "label: must be 1 to {MAX_LABEL} characters"
            )));
        }
        // `secret list` prints these on a terminal: no control or direction characters.
        printable("label", &new.label)?;
        if let Some(i) = &new.issuer {
            printable("issuer", i)?;
        }
        Ok(new)
    }
}

/// Refuses control characters and bidirectional formatting characters, which would
/// let a label rewrite what a terminal shows.
fn printable(field: &str, s: &str) -> Result<(), AgentError> {
    if super::fields::printable(s) {
        Ok(())
    } else {
        Err(AgentError::bad(format!(
            "{field}: control and text-direction characters are not allowed"
        )))
    }
}

/// A secret as list shows it: never the seed.
fn info_json(i: &AgentSecretInfo) -> Value {
    json!({
        "id": i.id,
        "algorithm": i.params.algorithm.as_str(),
        "created_at": rfc3339(i.created_at),
        "digits": i.params.digits,
        "issuer": i.issuer,
        "label": i.label,
        "period": i.params.period,
    })
}

async fn create(
    State(st): State<AppState>,
    who: Caller,
    extract::Json(req, _): Json<CreateReq>,
) -> Res {
    who.require_any(
        "api/v2/totp/secrets",
        &[Capability::Create, Capability::Update],
    )?;
    let new = req.resolve()?;
    let info = AgentSecretInfo {
        id: uuid::Uuid::new_v4().to_string(),
        label: new.label,
        issuer: new.issuer,
        params: new.params,
        created_at: now(),
    };
    st.store
        .create_agent_secret(&who.entity_id, &info, &new.secret)
        .await?;
    audit::record(&st, event(Action::AgentSecretCreate, &info.id));
    let mut out = info_json(&info);
    out["secret"] = Value::String(otp::encode_base32(&new.secret));
    if new.generated {
        // So the agent can enrol the new secret elsewhere too; shown this once.
        let account = info.label.as_str();
        out["otpauth_uri"] = Value::String(uri::build(
            info.issuer.as_deref().unwrap_or_default(),
            account,
            &new.secret,
            &info.params,
        ));
    }
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"status": "success", "totp_secret": out})),
    )
        .into_response())
}

async fn list(State(st): State<AppState>, who: Caller) -> Res {
    who.require_any("api/v2/totp/secrets", &[Capability::List, Capability::Read])?;
    let items = st.store.list_agent_secrets(&who.entity_id).await?;
    let list: Vec<Value> = items.iter().map(info_json).collect();
    Ok(axum::Json(json!({"status": "success", "totp_secrets": list})).into_response())
}

/// Ids are UUIDs; anything else cannot exist, and is answered like an unknown id.
fn secret_id(raw: &str) -> Result<String, AgentError> {
    uuid::Uuid::parse_str(raw.trim())
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| AgentError::not_found())
}

async fn remove(State(st): State<AppState>, who: Caller, Path(raw): Path<String>) -> Res {
    let id = secret_id(&raw)?;
    who.require(&format!("api/v2/totp/secrets/{id}"), Capability::Delete)?;
    if st.store.delete_agent_secret(&who.entity_id, &id).await? {
        audit::record(&st, event(Action::AgentSecretDelete, &id));
        Ok(axum::Json(json!({"status": "success"})).into_response())
    } else {
        Err(AgentError::not_found())
    }
}

/// A secret made or deleted (reading a code is no decision: the agent holds the seed).
fn event(action: Action, secret_id: &str) -> Event<'_> {
    Event::new(action, Verdict::Ok, Object::AgentSecret { secret_id })
}

#[derive(Deserialize)]
struct CodeQuery {
    min_validity: Option<String>,
}

/// The current code. With `min_validity=N`, when fewer than N seconds remain the answer
/// waits for the next step, so an agent never types a code that dies in transit.
async fn code(
    State(st): State<AppState>,
    who: Caller,
    Path(raw): Path<String>,
    Query(q): Query<CodeQuery>,
) -> Res {
    let id = secret_id(&raw)?;
    who.require(&format!("api/v2/totp/code/{id}"), Capability::Read)?;
    let (secret, params) = st
        .store
        .get_agent_secret(&who.entity_id, &id)
        .await?
        .ok_or_else(AgentError::not_found)?;
    let (code, t) = super::current_code(&secret, &params, q.min_validity.as_deref())
        .await
        .map_err(AgentError::bad)?;
    Ok(axum::Json(json!({
        "status": "success",
        "code": code,
        "expires_in": params.remaining(t),
        "period": params.period,
    }))
    .into_response())
}

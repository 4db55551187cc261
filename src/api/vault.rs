//! Vault's conventions, shared by the surfaces that speak them (`sys`, tokens,
//! `vault_mfa`): the success envelope, the `{"errors": [...]}` shape, and the lenient
//! field types Vault clients send (`"8"` for 8, `"30s"` for a duration).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{BodyError, Ctx};
use crate::auth::AuthError;
use crate::store::StoreError;

/// An error in Vault's shape.
#[derive(Debug)]
pub struct VaultError {
    pub status: StatusCode,
    pub errors: Vec<String>,
}

impl VaultError {
    pub fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        Self {
            status,
            errors: vec![msg.into()],
        }
    }
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, msg)
    }
    pub fn not_found() -> Self {
        // Vault answers an unknown id with 404 and an empty error list.
        Self {
            status: StatusCode::NOT_FOUND,
            errors: vec![],
        }
    }
    pub fn denied() -> Self {
        Self::new(StatusCode::FORBIDDEN, "permission denied")
    }
}

impl IntoResponse for VaultError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "errors": self.errors }))).into_response()
    }
}

impl From<BodyError> for VaultError {
    fn from(e: BodyError) -> Self {
        VaultError::new(e.status(), e.to_string())
    }
}

impl From<&AuthError> for VaultError {
    fn from(e: &AuthError) -> Self {
        match e {
            AuthError::Denied => VaultError::denied(),
            other => internal(other),
        }
    }
}

impl From<AuthError> for VaultError {
    fn from(e: AuthError) -> Self {
        VaultError::from(&e)
    }
}

impl From<StoreError> for VaultError {
    fn from(e: StoreError) -> Self {
        internal(&e)
    }
}

/// A fault of ours, not the client's: logged in full, answered without detail.
pub fn internal(e: &dyn std::fmt::Display) -> VaultError {
    tracing::error!(error = %e, "internal error");
    VaultError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
}

/// Vault's success envelope around `data`.
pub fn ok(ctx: &Ctx, data: Value) -> Response {
    envelope(ctx, data, Value::Null, Value::Null)
}

/// The envelope with warnings and no data (Vault's "already exists" answers).
pub fn warning(ctx: &Ctx, msg: impl Into<String>) -> Response {
    envelope(ctx, Value::Null, json!([msg.into()]), Value::Null)
}

/// The envelope carrying an `auth` block (token create).
pub fn auth(ctx: &Ctx, auth: Value) -> Response {
    envelope(ctx, Value::Null, Value::Null, auth)
}

fn envelope(ctx: &Ctx, data: Value, warnings: Value, auth: Value) -> Response {
    Json(json!({
        "request_id": ctx.request_id,
        "lease_id": "",
        "renewable": false,
        "lease_duration": 0,
        "data": data,
        "wrap_info": null,
        "warnings": warnings,
        "auth": auth,
    }))
    .into_response()
}

/// 204, as Vault answers writes that return nothing.
pub fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// The caller, or Vault's 403.
pub fn caller(ctx: &Ctx) -> Result<&crate::auth::Caller, VaultError> {
    ctx.caller().map_err(VaultError::from)
}

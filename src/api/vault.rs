//! Vault's conventions, shared by the surfaces that speak them (`sys`, tokens,
//! `vault_mfa`): the success envelope, the `{"errors": [...]}` shape, and the lenient
//! field types Vault clients send (`"8"` for 8, `"30s"` for a duration).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserializer;
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

/// An integer as JSON number or numeric string (the Vault CLI sends every value as a string).
pub fn flex_int<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    d.deserialize_any(Flex { duration: false })
}

/// Seconds as a JSON number, a numeric string, or a duration string (`"30s"`, `"1m"`, `"1h30m"`).
pub fn flex_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    d.deserialize_any(Flex { duration: true })
}

struct Flex {
    duration: bool,
}

impl<'de> serde::de::Visitor<'de> for Flex {
    type Value = Option<i64>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        if self.duration {
            f.write_str("whole seconds or a duration string such as \"30s\"")
        } else {
            f.write_str("an integer")
        }
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(v))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
        i64::try_from(v)
            .map(Some)
            .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        let parsed = if self.duration {
            parse_seconds(v)
        } else {
            v.trim().parse().ok()
        };
        parsed
            .map(Some)
            .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(v), &self))
    }
}

/// `"90"`, `"90s"`, `"1m30s"`, `"1h"` → seconds. Sub-second durations are refused.
pub fn parse_seconds(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i64>() {
        return Some(n);
    }
    let d = humantime::parse_duration(s).ok()?;
    if d.subsec_nanos() != 0 {
        return None;
    }
    i64::try_from(d.as_secs()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct P {
        #[serde(default, deserialize_with = "flex_seconds")]
        period: Option<i64>,
        #[serde(default, deserialize_with = "flex_int")]
        digits: Option<i64>,
    }

    #[test]
    fn lenient_vault_types() {
        let p: P = serde_json::from_str(r#"{"period": "1m", "digits": "8"}"#).unwrap();
        assert_eq!((p.period, p.digits), (Some(60), Some(8)));
        let p: P = serde_json::from_str(r#"{"period": 30}"#).unwrap();
        assert_eq!((p.period, p.digits), (Some(30), None));
        assert_eq!(parse_seconds("1h30m"), Some(5400));
        assert_eq!(parse_seconds("30s"), Some(30));
        assert_eq!(parse_seconds("thirty"), None);
        assert!(serde_json::from_str::<P>(r#"{"digits": "six"}"#).is_err());
        assert!(serde_json::from_str::<P>(r#"{"digits": true}"#).is_err());
        assert!(serde_json::from_str::<P>(r#"{"period": "500ms"}"#).is_err());
    }
}

//! Vault's conventions, shared by the surfaces that speak them (`sys`, tokens,
//! `vault_mfa`): the success envelope, the `{"errors": [...]}` shape, and the lenient
//! field types Vault clients send (`"8"` for 8, `"30s"` for a duration).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::{extract, surface_error, SurfaceError};
use crate::auth;

/// The caller, rejected in Vault's shape.
pub type Caller = extract::Caller<VaultError>;
/// A JSON body, rejected in Vault's shape.
pub type Json<T> = extract::Json<T, VaultError>;

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

    /// See [`super::internal`].
    pub fn internal(e: &dyn std::fmt::Display) -> Self {
        super::internal(e)
    }
}

impl IntoResponse for VaultError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({ "errors": self.errors }))).into_response()
    }
}

impl SurfaceError for VaultError {
    fn with_status(status: StatusCode, message: String) -> Self {
        VaultError::new(status, message)
    }
}

surface_error!(VaultError);

/// An error response in Vault's shape (the surface table's error function).
pub fn error(status: StatusCode, msg: &str) -> Response {
    VaultError::new(status, msg).into_response()
}

/// `LIST` arrives as `GET ?list=true`; a plain GET on a list-only path is not allowed.
/// `list` takes what Go's `strconv.ParseBool` takes, as Vault does.
#[derive(serde::Deserialize)]
pub struct ListQuery {
    list: Option<String>,
}

impl ListQuery {
    /// Whether the request is a LIST; `Err` with a message if `list` is no boolean.
    pub fn listing(&self) -> Result<bool, String> {
        match self.list.as_deref() {
            None => Ok(false),
            Some("1" | "t" | "T" | "TRUE" | "true" | "True") => Ok(true),
            Some("0" | "f" | "F" | "FALSE" | "false" | "False") => Ok(false),
            Some(_) => Err("list: must be a boolean such as true or false".into()),
        }
    }

    /// On a list-only path: a plain GET is not allowed.
    pub fn require(&self) -> Result<(), VaultError> {
        match self.listing() {
            Ok(true) => Ok(()),
            Ok(false) => Err(VaultError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "unsupported operation: use LIST or ?list=true",
            )),
            Err(e) => Err(VaultError::bad_request(e)),
        }
    }

    /// On a read-only path: LIST is not allowed.
    pub fn forbid(&self) -> Result<(), VaultError> {
        match self.listing() {
            Ok(false) => Ok(()),
            Ok(true) => Err(VaultError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "unsupported operation: LIST",
            )),
            Err(e) => Err(VaultError::bad_request(e)),
        }
    }
}

/// An entity id given by a client, checked by [`auth::entity_id`], as a Vault error
/// naming `field`.
pub fn entity_id(field: &str, raw: &str) -> Result<String, VaultError> {
    auth::entity_id(raw).map_err(|e| VaultError::bad_request(format!("{field}: {e}")))
}

/// Vault's success envelope around `data`, for the request `request_id`.
pub fn ok(request_id: &str, data: Value) -> Response {
    envelope(request_id, data, Value::Null, Value::Null)
}

/// The envelope with warnings and no data (Vault's "already exists" answers).
pub fn warning(request_id: &str, msg: impl Into<String>) -> Response {
    envelope(request_id, Value::Null, json!([msg.into()]), Value::Null)
}

/// The envelope carrying an `auth` block (token create).
pub fn auth(request_id: &str, auth: Value) -> Response {
    envelope(request_id, Value::Null, Value::Null, auth)
}

fn envelope(request_id: &str, data: Value, warnings: Value, auth: Value) -> Response {
    axum::Json(json!({
        "request_id": request_id,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn q(v: Option<&str>) -> ListQuery {
        ListQuery {
            list: v.map(str::to_string),
        }
    }

    #[test]
    fn list_takes_what_parse_bool_takes() {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(q(Some(t)).listing(), Ok(true), "{t}");
            assert!(q(Some(t)).require().is_ok());
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(q(Some(f)).listing(), Ok(false), "{f}");
            assert!(q(Some(f)).forbid().is_ok());
        }
        assert_eq!(q(None).listing(), Ok(false));
        for bad in ["yes", "tRuE", "", "2"] {
            assert!(q(Some(bad)).listing().is_err(), "{bad}");
            assert_eq!(q(Some(bad)).require().unwrap_err().status, 400);
            assert_eq!(q(Some(bad)).forbid().unwrap_err().status, 400);
        }
        assert_eq!(q(None).require().unwrap_err().status, 405);
    }
}

//! Surface 3: an authenticator app for agents, under `/api/v2/totp`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::json;

use super::AppState;

/// Every path of this surface starts here.
pub const PREFIX: &str = "/api/v2/totp";

pub const ROUTES: &[(&str, &str)] = &[];

pub fn routes() -> Router<AppState> {
    Router::new()
}

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
}

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"status": "error", "error": self.message})),
        )
            .into_response()
    }
}

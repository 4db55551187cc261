//! Surface 1: HashiCorp Vault's identity MFA TOTP methods.

use axum::Router;

use super::AppState;

pub const ROUTES: &[(&str, &str)] = &[];

pub fn routes() -> Router<AppState> {
    Router::new()
}

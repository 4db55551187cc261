//! The HTTP layer around every surface: Vault's `LIST` verb, request ids, working out
//! the caller, and one log line per request (never a secret: the route template is
//! logged, not the raw path, and no header or body).

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, Uri};
use axum::middleware::Next;
use axum::response::Response;

use crate::api::{now, AppState, Ctx};
use crate::auth::{self, Peer};

/// Daemon facts the middleware needs beside the app state.
#[derive(Clone)]
pub struct MwState {
    pub app: AppState,
    pub daemon_uid: u32,
}

/// Vault's `LIST` verb is `GET ?list=true`; rewritten before routing so both reach
/// the same handler.
pub fn rewrite_list(mut req: Request) -> Request {
    if req.method().as_str() == "LIST" {
        *req.method_mut() = Method::GET;
        let uri = req.uri();
        let pq = match uri.query() {
            Some(q) if !q.is_empty() => format!("{}?{q}&list=true", uri.path()),
            _ => format!("{}?list=true", uri.path()),
        };
        if let Ok(new) = pq.parse::<Uri>() {
            *req.uri_mut() = new;
        }
    }
    req
}

/// A client's request id is echoed if it is short printable ASCII; else a new one is made.
fn request_id(req: &Request) -> String {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

pub async fn middleware(State(st): State<MwState>, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let rid = request_id(&req);
    let peer = req.extensions().get::<Peer>().copied().unwrap_or(Peer::Tcp);
    let token = auth::token_from_headers(req.headers());
    let caller = auth::resolve(&st.app.store, peer, token, st.daemon_uid, now()).await;
    if let Err(e @ (auth::AuthError::Store(_) | auth::AuthError::BadPolicy(..))) = &caller {
        tracing::error!(error = %e, request_id = %rid, "cannot resolve caller");
    }
    let ctx = Ctx::new(rid.clone(), caller);
    let entity = ctx.entity().unwrap_or("-").to_string();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "<unmatched>".into());
    req.extensions_mut().insert(ctx);

    let mut resp = next.run(req).await;

    if let Ok(v) = HeaderValue::from_str(&rid) {
        resp.headers_mut().insert("x-request-id", v);
    }
    tracing::info!(
        target: "totpd::request",
        method = %method,
        route = %route,
        status = resp.status().as_u16(),
        ms = format_args!("{:.1}", start.elapsed().as_secs_f64() * 1000.0),
        entity = %entity,
        request_id = %rid,
        "request"
    );
    resp
}

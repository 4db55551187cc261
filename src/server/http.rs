//! The HTTP layer around every surface: Vault's `LIST` verb, request ids, working out
//! the caller, and one log line per request (never a secret: the route template is
//! logged, not the raw path, and no header or body).

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::Response;
use tower::Layer;
use tracing::Instrument;

use crate::api::{self, now, AppState, Ctx};
use crate::audit;
use crate::auth::{self, Peer};
use crate::store::StoreError;

/// Longest request target (path and query) served; longer gets 414 in the surface's
/// shape. Below hyper's own limit (64 KiB), so a client always gets a shaped answer with
/// a request id up to that point.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Most header fields in a request; more gets 431. Below hyper's own limit (100).
pub const MAX_HEADERS: usize = 64;
/// Most bytes of header names and values in a request; more gets 431. Well below
/// hyper's read buffer (about 400 KiB), past which hyper answers on its own.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// The first of the request-size limits `req` breaks, as the answer's status and text.
fn over_limits(req: &Request) -> Option<(StatusCode, String)> {
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target > MAX_URI_BYTES {
        return Some((
            StatusCode::URI_TOO_LONG,
            format!("request URI too long: {target} bytes, at most {MAX_URI_BYTES}"),
        ));
    }
    let h = req.headers();
    if h.len() > MAX_HEADERS {
        return Some((
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("too many header fields: {}, at most {MAX_HEADERS}", h.len()),
        ));
    }
    let bytes: usize = h.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
    if bytes > MAX_HEADER_BYTES {
        return Some((
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("request headers too large: {bytes} bytes, at most {MAX_HEADER_BYTES}"),
        ));
    }
    None
}

/// Daemon facts the middleware needs beside the app state.
#[derive(Clone)]
struct MwState {
    app: AppState,
    daemon_uid: u32,
}

/// The whole HTTP application as a service: normalisation, then the middleware, then
/// the router. The server runs one per connection (with the connection's [`Peer`] in
/// the request's extensions); tests drive it in-process with `tower::ServiceExt::oneshot`.
pub type App = tower::util::MapRequest<axum::Router, fn(Request) -> Request>;

/// Builds the application on `state`. `daemon_uid` is the uid whose socket peers, like
/// root's, get the `root` policy.
pub fn app(state: AppState, daemon_uid: u32) -> App {
    let mw = MwState {
        app: state.clone(),
        daemon_uid,
    };
    let router = api::router(state).layer(axum::middleware::from_fn_with_state(mw, middleware));
    let rewrite: fn(Request) -> Request = normalize;
    tower::util::MapRequestLayer::new(rewrite).layer(router)
}

/// Before routing: Vault's `LIST` verb becomes `GET ?list=true`, so both reach the same
/// handler, and a trailing slash is dropped (`/v1/x/` is `/v1/x`, as Vault and Django
/// clients expect).
pub fn normalize(mut req: Request) -> Request {
    let list = req.method().as_str() == "LIST";
    let path = req.uri().path();
    let trimmed = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    if !list && trimmed.len() == path.len() {
        return req;
    }
    let trimmed = if trimmed.is_empty() { "/" } else { trimmed };
    // A LIST that also says `?list=...` is a list all the same: one `list` parameter.
    let kept;
    let query = if list {
        kept = req
            .uri()
            .query()
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty() && p.split('=').next() != Some("list"))
            .collect::<Vec<_>>()
            .join("&");
        Some(kept.as_str())
    } else {
        req.uri().query()
    };
    let query = match (query.filter(|q| !q.is_empty()), list) {
        (Some(q), true) => format!("?{q}&list=true"),
        (None, true) => "?list=true".to_string(),
        (Some(q), false) => format!("?{q}"),
        (None, false) => String::new(),
    };
    if let Ok(new) = format!("{trimmed}{query}").parse::<Uri>() {
        *req.uri_mut() = new;
    }
    if list {
        *req.method_mut() = Method::GET;
    }
    req
}

/// The route template the request matched (`/v1/auth/{mount}/totp`), never the raw path.
fn matched_route(req: &Request) -> String {
    req.extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "<unmatched>".into())
}

/// A client's request id is echoed if it is short printable ASCII; else a new one is made.
fn request_id(req: &Request) -> String {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.trim().is_empty() && v.len() <= 256 && v.bytes().all(|b| (b' '..=b'~').contains(&b))
        })
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// Runs around every routed request: sets the request id (echoing the client's),
/// works out the caller once for the handler, turns the routing layer's plain-text
/// client errors into the surface's shape, and writes the request's log line. All of
/// it runs in a span naming the request id and route, so every line logged while
/// serving the request (a 500's included) says which request it belongs to.
async fn middleware(State(st): State<MwState>, req: Request, next: Next) -> Response {
    let rid = request_id(&req);
    let route = matched_route(&req);
    // Debug-quoted: client-chosen text cannot forge fields in the line.
    let span = tracing::info_span!("request", request_id = ?rid, route = %route);
    serve_request(st, rid, req, next).instrument(span).await
}

async fn serve_request(st: MwState, rid: String, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let (mut resp, entity) = match over_limits(&req) {
        // Refused before any work: no caller is looked up for it.
        Some((status, msg)) => (
            api::error_for_path(req.uri().path(), status, &msg),
            "-".to_string(),
        ),
        None => route(&st, &rid, req, next).await,
    };
    // Overload is the only 503 there is, and it passes: say when to come back.
    if resp.status() == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .entry(header::RETRY_AFTER)
            .or_insert(HeaderValue::from_static("1"));
    }

    st.app.metrics.request(resp.status().as_u16());
    if let Ok(v) = HeaderValue::from_str(&rid) {
        resp.headers_mut().insert("x-request-id", v);
    }
    tracing::info!(
        target: "totpd::request",
        method = %method,
        status = resp.status().as_u16(),
        ms = format_args!("{:.1}", start.elapsed().as_secs_f64() * 1000.0),
        entity = ?entity,
        "request"
    );
    resp
}

/// Works out the caller and runs the router; returns the answer and the caller's entity
/// for the log line.
async fn route(st: &MwState, rid: &str, mut req: Request, next: Next) -> (Response, String) {
    let peer = req.extensions().get::<Peer>().copied().unwrap_or(Peer::Tcp);
    let token = auth::token_from_headers(req.headers());
    let caller = auth::resolve(
        st.app.store.as_ref(),
        &st.app.auth_cache,
        peer,
        token,
        st.daemon_uid,
        now(),
    )
    .await;
    // A fault of ours is logged here, where its cause is known; overload is not a fault
    // (the handler answers 503 and logs a warning).
    match &caller {
        Err(auth::AuthError::Store(StoreError::Unavailable | StoreError::Closed)) => {}
        Err(e @ (auth::AuthError::Store(_) | auth::AuthError::BadPolicy(..))) => {
            tracing::error!(error = %e, "cannot resolve caller");
        }
        _ => {}
    }
    let ctx = Ctx::new(rid.to_string(), caller);
    let entity = ctx.entity().unwrap_or("-").to_string();
    req.extensions_mut().insert(ctx.clone());

    let path = req.uri().path().to_string();
    let (method, route) = (req.method().clone(), matched_route(&req));
    let mut resp = audit::serve(&st.app, &ctx, &method, &route, &path, next.run(req)).await;

    // Extractor rejections (a bad query string, a path that is not UTF-8) come from the
    // routing layer as text/plain; every client error leaves in its surface's shape.
    let plain = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain"));
    if resp.status().is_client_error() && plain {
        let status = resp.status();
        let text = axum::body::to_bytes(std::mem::take(resp.body_mut()), 4096)
            .await
            .map(|b| String::from_utf8_lossy(&b).trim().to_string())
            .unwrap_or_default();
        resp = api::error_for_path(&path, status, &text);
    }
    (resp, entity)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(method: &str, uri: &str) -> (String, String) {
        let req = axum::http::Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(uri)
            .body(axum::body::Body::empty())
            .unwrap();
        let r = normalize(req);
        (r.method().to_string(), r.uri().to_string())
    }

    #[test]
    fn list_and_trailing_slashes() {
        assert_eq!(
            norm("LIST", "/v1/a"),
            ("GET".into(), "/v1/a?list=true".into())
        );
        assert_eq!(
            norm("LIST", "/v1/a/?x=1"),
            ("GET".into(), "/v1/a?x=1&list=true".into())
        );
        assert_eq!(
            norm("LIST", "/v1/a/?list=true&x=1"),
            ("GET".into(), "/v1/a?x=1&list=true".into())
        );
        assert_eq!(
            norm("POST", "/api/v1/auth/totp/setup/"),
            ("POST".into(), "/api/v1/auth/totp/setup".into())
        );
        assert_eq!(norm("GET", "/"), ("GET".into(), "/".into()));
        assert_eq!(norm("GET", "/v1/a?b=c"), ("GET".into(), "/v1/a?b=c".into()));
    }
}

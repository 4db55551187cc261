//! The HTTP surfaces, one module each, assembled into one router from [`SURFACES`].
//! Each surface owns its routes, request/response types and error shape; this module
//! holds what they share: the app state, the request context, body reading, the mapping
//! of shared errors, and the 404/405 answers. [`extract`] has the extractors that answer
//! in each surface's shape.

pub mod agent;
pub mod extract;
pub mod fields;
pub mod mounts;
pub mod nitride;
pub mod sys;
pub mod user_totp;
pub mod vault;
pub mod vault_mfa;
pub mod vault_totp;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{Method, StatusCode, Uri};
use axum::response::Response;
use axum::Router;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;

use crate::auth::{AuthError, Caller};
use crate::store::{Store, StoreError};

/// Largest request body accepted (413 beyond).
pub const MAX_BODY: usize = 64 * 1024;

/// QR images rendered at once; more wait their turn. Each may take a few MB of pixels.
const MAX_RENDERS: usize = 2;

/// What every handler can reach: one shared [`State`], so handing it to a request
/// costs one reference count, not one per field.
#[derive(Clone)]
pub struct AppState(Arc<State>);

impl std::ops::Deref for AppState {
    type Target = State;
    fn deref(&self) -> &State {
        &self.0
    }
}

/// The daemon's shared state, behind [`AppState`].
#[derive(Clone)]
pub struct State {
    pub store: Arc<dyn Store>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Bounds the CPU and memory QR rendering can take, whatever clients send.
    pub renders: Arc<tokio::sync::Semaphore>,
    /// The auth mounts that hold Nitride policy tokens.
    pub mounts: Arc<mounts::Mounts>,
    /// The mounts of Vault's TOTP secrets engine.
    pub engine_mounts: Arc<mounts::Mounts>,
    /// How the user login step is configured.
    pub login: Arc<user_totp::Settings>,
    /// Bounds the argon2 work (recovery codes) running at once, whatever clients send.
    pub hashes: Arc<tokio::sync::Semaphore>,
    /// Default and max lifetimes of API tokens.
    pub tokens: Arc<sys::TokenSettings>,
    /// Where each decision is recorded ([`crate::audit::record`]).
    pub audit: Arc<crate::audit::Audit>,
    /// Callers resolved from tokens ([`crate::auth::cache`]).
    pub auth_cache: Arc<crate::auth::cache::Cache>,
}

impl AppState {
    pub fn new(store: Arc<dyn Store>) -> Self {
        AppState(Arc::new(State {
            store,
            metrics: Default::default(),
            renders: Arc::new(tokio::sync::Semaphore::new(MAX_RENDERS)),
            mounts: Arc::new(mounts::Mounts::only(&nitride::MOUNTS)),
            engine_mounts: Arc::new(mounts::Mounts::only(&vault_totp::MOUNTS)),
            login: Arc::new(user_totp::Settings::default()),
            hashes: user_totp::hash_bound(),
            tokens: Arc::new(sys::TokenSettings::default()),
            audit: Arc::new(crate::audit::Audit::off()),
            auth_cache: Default::default(),
        }))
    }

    /// The state to change, copied first if a request holds it (only while building).
    fn edit(&mut self) -> &mut State {
        Arc::make_mut(&mut self.0)
    }

    /// The same state recording decisions as `cfg` says; starts the audit file's writer
    /// (failure counts go to this state's metrics). An audit file that cannot be opened
    /// is an error.
    pub fn with_audit(mut self, cfg: &crate::audit::Config) -> Result<Self, String> {
        let audit = Arc::new(crate::audit::Audit::start(cfg, self.metrics.clone())?);
        self.edit().audit = audit;
        Ok(self)
    }

    /// The same state with these token lifetimes.
    pub fn with_tokens(mut self, settings: sys::TokenSettings) -> Self {
        self.edit().tokens = Arc::new(settings);
        self
    }

    /// The same state with this login-step configuration.
    pub fn with_login(mut self, settings: user_totp::Settings) -> Self {
        self.edit().login = Arc::new(settings);
        self
    }

    /// The same state serving these Nitride mounts.
    pub fn with_mounts(mut self, mounts: mounts::Mounts) -> Self {
        self.edit().mounts = Arc::new(mounts);
        self
    }

    /// The same state serving these TOTP engine mounts.
    pub fn with_engine_mounts(mut self, mounts: mounts::Mounts) -> Self {
        self.edit().engine_mounts = Arc::new(mounts);
        self
    }
}

/// Per-request facts set by the server middleware before routing.
#[derive(Clone)]
pub struct Ctx {
    pub request_id: String,
    caller: Result<Arc<Caller>, Arc<AuthError>>,
}

impl Ctx {
    pub fn new(request_id: String, caller: Result<Arc<Caller>, AuthError>) -> Self {
        Self {
            request_id,
            caller: caller.map_err(Arc::new),
        }
    }

    /// The authenticated caller, or why there is none.
    pub fn caller(&self) -> Result<&Arc<Caller>, &AuthError> {
        self.caller.as_ref().map_err(|e| e.as_ref())
    }

    /// The caller's entity, for the request log line.
    pub fn entity(&self) -> Option<&str> {
        self.caller().ok().map(|c| c.entity_id.as_str())
    }
}

/// Why a body could not become a typed request.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body larger than {MAX_BODY} bytes")]
    TooLarge,
    #[error("request body not received within {} seconds", body_timeout().as_secs())]
    Timeout,
    #[error("failed to read request body: {0}")]
    Read(String),
    #[error("malformed JSON: {0}")]
    Malformed(String),
    /// A well-formed body with a field of the wrong type or value (`field` names it), or
    /// a body that is not an object (`field` is `None`).
    #[error("{}{message}", field.as_ref().map(|f| format!("{f}: ")).unwrap_or_default())]
    Field {
        field: Option<String>,
        message: String,
    },
}

impl BodyError {
    pub fn status(&self) -> StatusCode {
        match self {
            BodyError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::Timeout => StatusCode::REQUEST_TIMEOUT,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// Seconds a client gets to send its body once the headers are in (`--body-timeout`).
static BODY_TIMEOUT_SECS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(DEFAULT_BODY_TIMEOUT);

/// [`body_timeout`] unless the daemon is told otherwise.
pub const DEFAULT_BODY_TIMEOUT: u64 = 30;

/// How long a client gets to send its body once the headers are in; past that the
/// request is answered 408 and the connection's slot is free again.
pub fn body_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(BODY_TIMEOUT_SECS.load(std::sync::atomic::Ordering::Relaxed))
}

/// Sets [`body_timeout`] for the whole process (the daemon, at start).
pub fn set_body_timeout(t: std::time::Duration) {
    BODY_TIMEOUT_SECS.store(t.as_secs().max(1), std::sync::atomic::Ordering::Relaxed);
}

/// Reads at most [`MAX_BODY`] bytes and parses them as `T`. An empty body reads as `{}`.
/// Errors name the offending field (`digits: invalid type ...`).
pub async fn read_json<T: DeserializeOwned>(body: Body) -> Result<T, BodyError> {
    // A declared length over the limit is refused before waiting for any of it.
    if http_body::Body::size_hint(&body).lower() > MAX_BODY as u64 {
        return Err(BodyError::TooLarge);
    }
    let collected = tokio::time::timeout(
        body_timeout(),
        http_body_util::Limited::new(body, MAX_BODY).collect(),
    )
    .await
    .map_err(|_| BodyError::Timeout)?;
    let bytes = collected
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                BodyError::TooLarge
            } else {
                BodyError::Read(e.to_string())
            }
        })?
        .to_bytes();
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &bytes
    };
    parse_json(bytes)
}

/// Parses a JSON object into `T`, naming the field on a type error. The value at fault
/// is never echoed: it may be a code, a token or a seed.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, BodyError> {
    // serde would read a struct from a JSON array too; a body is an object.
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        Some(b'[' | b'"' | b't' | b'f' | b'n' | b'-' | b'0'..=b'9') => {
            return Err(BodyError::Field {
                field: None,
                message: "request body must be a JSON object".into(),
            })
        }
        _ => {}
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => BodyError::Field {
                field: (path != ".").then_some(path),
                message: redact(&inner.to_string()),
            },
            _ => BodyError::Malformed(inner.to_string()),
        }
    })?;
    // One JSON value and nothing after it: `{...} garbage` or `{...}{...}` is no body.
    de.end()
        .map_err(|_| BodyError::Malformed("trailing data after the JSON value".into()))?;
    Ok(value)
}

/// A serde data error without its position (" at line 1 column 12") and without the
/// offending value: "invalid type: integer `123456`, expected a string" becomes
/// "invalid type: integer, expected a string".
fn redact(msg: &str) -> String {
    let msg = match msg.rfind(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    };
    if !(msg.starts_with("invalid type:") || msg.starts_with("invalid value:")) {
        return msg.to_string();
    }
    let (head, tail) = match msg.find(", expected") {
        Some(i) => msg.split_at(i),
        None => (msg, ""),
    };
    // Cut the quoted value: `...` (numbers, booleans) or "..." (strings).
    let cut = head.find(['`', '"']).map_or(head, |i| head[..i].trim_end());
    format!("{cut}{tail}")
}

/// Each surface's error type. `surface_error!` derives from this the conversions from
/// the shared layers (body, auth, store), so every surface maps them the same way.
pub trait SurfaceError: Sized {
    fn with_status(status: StatusCode, message: String) -> Self;

    /// A body that could not be read or parsed. A surface whose shape names fields
    /// apart from the message overrides this.
    fn from_body(e: BodyError) -> Self {
        Self::with_status(e.status(), e.to_string())
    }
}

/// A fault of ours, not the client's: logged in full (inside the request's span, so the
/// line names the request), answered without detail.
pub fn internal<E: SurfaceError>(e: &dyn std::fmt::Display) -> E {
    tracing::error!(error = %e, "internal error");
    E::with_status(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
}

/// A store error as a surface answers it: 503 when the database is overloaded,
/// unreachable or closing (the middleware adds `Retry-After`), else an internal error.
/// Handlers match `NotFound` and `Conflict` themselves before this.
pub fn store_error<E: SurfaceError>(e: &StoreError) -> E {
    match e {
        StoreError::Unavailable | StoreError::Closed => {
            tracing::warn!(error = %e, "store unavailable");
            E::with_status(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is busy; try again shortly".into(),
            )
        }
        other => internal(other),
    }
}

/// An auth error as a surface answers it: 403 for a denial, else as [`store_error`].
pub fn auth_error<E: SurfaceError>(e: &AuthError) -> E {
    match e {
        AuthError::Denied => E::with_status(StatusCode::FORBIDDEN, "permission denied".into()),
        AuthError::Store(s) => store_error(s),
        other => internal(other),
    }
}

/// Implements `From<BodyError>`, `From<&AuthError>`, `From<AuthError>` and
/// `From<StoreError>` for a [`SurfaceError`].
macro_rules! surface_error {
    ($t:ty) => {
        impl From<$crate::api::BodyError> for $t {
            fn from(e: $crate::api::BodyError) -> Self {
                <$t as $crate::api::SurfaceError>::from_body(e)
            }
        }
        impl From<&$crate::auth::AuthError> for $t {
            fn from(e: &$crate::auth::AuthError) -> Self {
                $crate::api::auth_error(e)
            }
        }
        impl From<$crate::auth::AuthError> for $t {
            fn from(e: $crate::auth::AuthError) -> Self {
                $crate::api::auth_error(&e)
            }
        }
        impl From<$crate::store::StoreError> for $t {
            fn from(e: $crate::store::StoreError) -> Self {
                $crate::api::store_error(&e)
            }
        }
    };
}
pub(crate) use surface_error;

/// Unix seconds now. Handlers read the clock; everything below takes `now` as an argument.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The most `min_validity` may ask for, in seconds.
const MAX_MIN_VALIDITY: u64 = 120;

/// The code of `secret` now, and the time it was made for. With `min_validity` (whole
/// seconds, as the query parameter arrives), when fewer remain in the current step the
/// answer waits for the next one, so a machine never types a code that dies in
/// transit. `Err` is the message for a bad `min_validity`.
pub async fn current_code(
    secret: &[u8],
    params: &crate::otp::Params,
    min_validity: Option<&str>,
) -> Result<(String, i64), String> {
    // A request may wait at most this long: enough for any code typed by a machine,
    // short enough that a caller cannot park requests for a day.
    let most = (params.period - 1).min(MAX_MIN_VALIDITY);
    let min_validity = match min_validity {
        None => 0,
        Some(v) => match v.trim().parse::<u64>() {
            Ok(n) if n <= most => n,
            _ => {
                return Err(format!(
                    "min_validity: must be a whole number of seconds from 0 to {most}"
                ))
            }
        },
    };
    let mut t = now();
    let left = params.remaining(t);
    if left < min_validity {
        tokio::time::sleep(std::time::Duration::from_secs(left)).await;
        t = now().max(t + left as i64);
    }
    Ok((crate::otp::code_at(secret, params, t), t))
}

/// One API surface: the request paths it owns, its routes and its error shape. The
/// router and the 404/405/413 answers are built from [`SURFACES`], so adding a surface
/// is one line there.
pub struct Surface {
    /// Request-path prefixes of this surface (`/api/v2/totp`); the longest match wins.
    pub prefixes: &'static [&'static str],
    pub routes: fn() -> Router<AppState>,
    /// An error response in this surface's shape.
    pub error: fn(StatusCode, &str) -> Response,
}

/// Every surface. A path no prefix matches answers in Vault's shape.
pub const SURFACES: &[Surface] = &[
    sys::SURFACE,
    vault_mfa::SURFACE,
    vault_totp::SURFACE,
    agent::SURFACE,
    nitride::SURFACE,
    user_totp::SURFACE,
];

/// The whole application: every surface's routes, plus 404/405 in the shape of the
/// surface the path belongs to.
pub fn router(state: AppState) -> Router {
    SURFACES
        .iter()
        .fold(Router::new(), |r, s| r.merge((s.routes)()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found(uri: Uri) -> Response {
    error_for_path(uri.path(), StatusCode::NOT_FOUND, "unsupported path")
}

async fn method_not_allowed(uri: Uri, method: Method) -> Response {
    error_for_path(
        uri.path(),
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("unsupported operation: {method}"),
    )
}

/// An error in the shape of the surface that owns `path`.
pub fn error_for_path(path: &str, status: StatusCode, msg: &str) -> Response {
    match owner(path) {
        Some(s) => (s.error)(status, msg),
        None => vault::error(status, msg),
    }
}

/// The surface whose prefix covers `path`; the longest prefix wins.
fn owner(path: &str) -> Option<&'static Surface> {
    SURFACES
        .iter()
        .flat_map(|s| s.prefixes.iter().map(move |p| (*p, s)))
        .filter(|(p, _)| covers(p, path))
        .max_by_key(|(p, _)| p.len())
        .map(|(_, s)| s)
}

/// Whether the surface prefix `prefix` covers `path`, segment by segment: `/v1/sys`
/// covers `/v1/sys/health` but not `/v1/system`. A `*` segment matches any one
/// non-empty segment (`/v1/auth/*/totp`, for any mount).
pub fn covers(prefix: &str, path: &str) -> bool {
    let mut segs = path.split('/');
    prefix.split('/').all(|p| {
        segs.next()
            .is_some_and(|s| p == s || (p == "*" && !s.is_empty()))
    })
}

/// The OpenAPI 3 document, kept in the repository beside this file. `tests/openapi.rs`
/// holds it and the router to each other.
pub const OPENAPI: &str = include_str!("openapi.json");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_is_an_openapi_3_document() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        assert!(doc["paths"].as_object().is_some_and(|p| !p.is_empty()));
    }

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct T {
        digits: u32,
    }

    #[test]
    fn prefixes_cover_whole_segments() {
        assert!(covers("/v1/sys", "/v1/sys"));
        assert!(covers("/v1/sys", "/v1/sys/health"));
        assert!(!covers("/v1/sys", "/v1/system"));
        assert!(!covers("/v1/sys", "/v1"));
        assert!(covers("/v1/auth/*/totp", "/v1/auth/ratls/totp/x"));
        assert!(!covers("/v1/auth/*/totp", "/v1/auth//totp"));
        assert!(!covers("/v1/auth/*/totp", "/v1/auth/token/create"));
        // The longer prefix wins: token paths stay the system API's.
        assert!(owner("/v1/auth/token/create").is_some_and(|s| s.prefixes == sys::SURFACE.prefixes));
        assert!(
            owner("/v1/auth/ci/totp/x").is_some_and(|s| s.prefixes == nitride::SURFACE.prefixes)
        );
    }

    #[test]
    fn body_errors_name_the_field() {
        match parse_json::<T>(br#"{"digits": "x"}"#) {
            Err(e @ BodyError::Field { .. }) => {
                assert!(e.to_string().starts_with("digits: "), "{e}");
                assert!(matches!(e, BodyError::Field { field: Some(f), .. } if f == "digits"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_json::<T>(b"{\"digits\": "),
            Err(BodyError::Malformed(_))
        ));
        assert!(matches!(
            parse_json::<T>(b"{}"),
            Err(BodyError::Field { field: None, .. })
        ));
        assert!(matches!(
            parse_json::<T>(b"[6]"),
            Err(BodyError::Field { field: None, .. })
        ));
        for trailing in [&br#"{"digits": 6} x"#[..], br#"{"digits": 6}{"digits": 7}"#] {
            assert!(
                matches!(parse_json::<T>(trailing), Err(BodyError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(trailing)
            );
        }
        assert!(parse_json::<T>(b" {\"digits\": 6} \n").is_ok());
    }

    #[test]
    fn errors_never_echo_the_value() {
        for body in [
            &br#"{"digits": "123456"}"#[..],
            br#"{"digits": -12345678}"#,
            br#"{"digits": 1.5}"#,
        ] {
            match parse_json::<T>(body) {
                Err(e @ BodyError::Field { .. }) => {
                    let m = e.to_string();
                    assert!(m.starts_with("digits: invalid"), "{m}");
                    assert!(
                        !m.contains("123456") && !m.contains("12345678") && !m.contains("1.5"),
                        "{m}"
                    );
                }
                other => panic!("{other:?}"),
            }
        }
    }
}

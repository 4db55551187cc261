//! totpd's own system API in Vault's conventions: health, the OpenAPI document,
//! tokens (`/v1/auth/token/*`) and ACL policies (`/v1/sys/policies/acl/*`).

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

use super::fields::{flex_seconds, rfc3339};
use super::vault::{self, Caller, Json, ListQuery, VaultError};
use super::{extract, nitride, now, AppState, Surface};
use crate::audit::{self, Action, Event, Object, Verdict};
use crate::auth::{self, Capability, Policy};
use crate::store::TokenRecord;

pub mod backup;
pub mod export;
pub mod keys;
mod status;

/// The system API: health, OpenAPI, metrics, tokens and ACL policies, in Vault's shape.
pub const SURFACE: Surface = Surface {
    prefixes: &["/v1/sys", "/v1/auth/token"],
    routes,
    error: vault::error,
};

fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/sys/health", get(health))
        .route("/v1/sys/init", get(init))
        .route("/v1/sys/seal-status", get(seal_status))
        .route("/v1/sys/openapi", get(openapi))
        .route("/v1/sys/metrics", get(metrics))
        .route("/v1/auth/token/create", post(token_create))
        .route("/v1/auth/token/lookup-self", get(token_lookup_self))
        .route("/v1/auth/token/lookup", post(token_lookup))
        .route(
            "/v1/auth/token/lookup-accessor",
            post(token_lookup_accessor),
        )
        .route(
            "/v1/auth/token/revoke-accessor",
            post(token_revoke_accessor),
        )
        .route("/v1/auth/token/revoke", post(token_revoke))
        .route("/v1/auth/token/revoke-self", post(token_revoke_self))
        .route("/v1/auth/token/renew", post(token_renew))
        .route("/v1/auth/token/renew-self", post(token_renew_self))
        .route("/v1/sys/policies/acl", get(policy_list))
        .route(
            "/v1/sys/policies/acl/{name}",
            get(policy_read)
                .put(policy_write)
                .post(policy_write)
                .delete(policy_delete),
        )
        .merge(backup::routes())
        .merge(export::routes())
        .merge(status::routes())
        .merge(keys::routes())
}

type Res = Result<Response, VaultError>;

async fn health(State(st): State<AppState>) -> Response {
    // A daemon whose database server is unreachable is not healthy: 503, as Vault
    // answers when it cannot serve, so monitoring and load balancers see it.
    let store_ok = st.store.ping().await.is_ok();
    let status = if store_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = axum::Json(json!({
        "initialized": true,
        "sealed": false,
        "standby": false,
        "version": env!("CARGO_PKG_VERSION"),
        "server_time_utc": now(),
        // TOTP is only as right as the clock; null when the kernel would not say.
        "clock_synchronized": crate::clock::synchronized_recently(),
        // False while the audit file cannot be written (see --audit-fail).
        "audit_ok": st.audit.healthy(),
        // False while the database (PostgreSQL) cannot be reached.
        "store_ok": store_ok,
    }));
    (status, body).into_response()
}

/// As Vault answers it, without a token: totpd is initialized when it runs.
async fn init() -> Response {
    axum::Json(json!({ "initialized": true })).into_response()
}

/// As an unsealed, initialized Vault answers it (monitoring polls it, without a token).
/// totpd has no seal: its key is loaded at start, or it does not start.
async fn seal_status() -> Response {
    axum::Json(json!({
        "type": "shamir",
        "initialized": true,
        "sealed": false,
        "t": 1,
        "n": 1,
        "progress": 0,
        "nonce": "",
        "version": env!("CARGO_PKG_VERSION"),
        "build_date": "",
        "migration": false,
        "cluster_name": "totpd",
        "cluster_id": "",
        "recovery_seal": false,
        "storage_type": "sqlite",
    }))
    .into_response()
}

async fn metrics(State(st): State<AppState>, who: Caller) -> Res {
    who.require("sys/metrics", Capability::Read)?;
    let mut text = st.metrics.render();
    let writer = st.store.writer_stats();
    text.push_str(&crate::metrics::render_store(
        writer.queue_depth,
        &writer.batch_sizes,
        st.store.database_bytes(),
    ));
    text.push_str(&crate::metrics::render_lockouts(&st.store.lockouts()));
    text.push_str(&crate::metrics::render_sealed_rows(
        &st.store.sealed_counts(),
    ));
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], super::OPENAPI).into_response()
}

// ----- tokens -----

/// Lifetimes of tokens made with `auth/token/create`, as Vault's `default_lease_ttl` and
/// `max_lease_ttl` (both 32 days by default).
#[derive(Debug, Clone, Copy)]
pub struct TokenSettings {
    /// A token created without `ttl` lives this long (a `root` token: for ever).
    pub default_ttl: i64,
    /// No token lives longer; a longer `ttl` is cut to this.
    pub max_ttl: i64,
}

impl Default for TokenSettings {
    fn default() -> Self {
        TokenSettings {
            default_ttl: 32 * 24 * 3600,
            max_ttl: 32 * 24 * 3600,
        }
    }
}

impl TokenSettings {
    /// The longest a token may live from its creation: its `explicit_max_ttl` when set,
    /// never more than the daemon's max TTL.
    fn cap(&self, explicit_max_ttl: i64) -> i64 {
        if explicit_max_ttl > 0 {
            explicit_max_ttl.min(self.max_ttl)
        } else {
            self.max_ttl
        }
    }

    /// The expiry that a renewal at `now` gives `t`, as Vault's: `increment` (or, when
    /// none is given, the TTL it was created with) from now, cut to its max TTL counted
    /// from its creation, and to its parent's expiry.
    pub fn renewal(
        &self,
        t: &TokenRecord,
        now: i64,
        increment: Option<i64>,
        parent_expiry: Option<i64>,
    ) -> i64 {
        let increment = increment.filter(|i| *i > 0).unwrap_or(t.creation_ttl);
        let mut e = now
            .saturating_add(increment)
            .min(t.created_at.saturating_add(self.cap(t.explicit_max_ttl)));
        if let Some(p) = parent_expiry {
            e = e.min(p);
        }
        e
    }
}

#[derive(Deserialize)]
struct TokenCreate {
    #[serde(default)]
    policies: Vec<String>,
    #[serde(default, deserialize_with = "flex_seconds")]
    ttl: Option<i64>,
    entity_id: Option<String>,
    display_name: Option<String>,
    #[serde(default)]
    no_default_policy: bool,
    /// As Vault: renewable unless the body says otherwise.
    #[serde(default = "yes")]
    renewable: bool,
    #[serde(default, deserialize_with = "flex_seconds")]
    explicit_max_ttl: Option<i64>,
}

/// Longest token `display_name`, in characters (before the `token-` prefix).
const MAX_DISPLAY_NAME: usize = 128;

fn yes() -> bool {
    true
}

async fn token_create(
    State(st): State<AppState>,
    who: Caller,
    extract::Json(req, _): Json<TokenCreate>,
) -> Res {
    who.require_any("auth/token/create", auth::WRITE)?;
    let now = now();

    // A child token gets no policy its parent lacks (root may grant anything).
    let policies: Vec<String> = if req.policies.is_empty() {
        who.policies.clone()
    } else {
        req.policies
    };
    let mut policies = policies
        .iter()
        .map(|p| {
            policy_name(p).map_err(|_| {
                VaultError::bad_request(format!("policies: {p:?} is not a valid policy name"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if !who.is_root() {
        if let Some(p) = policies
            .iter()
            .find(|p| *p != auth::DEFAULT && !who.policies.contains(p))
        {
            return Err(VaultError::bad_request(format!(
                "child policies must be subset of parent: caller lacks {p:?}"
            )));
        }
    }
    if !req.no_default_policy && !policies.iter().any(|p| p == auth::DEFAULT) {
        policies.push(auth::DEFAULT.into());
    }
    policies.sort();
    policies.dedup();

    // As Vault: no ttl means the default; only a token holding `root` may live for
    // ever; nothing outlives its max TTL (explicit, or the daemon's), nor its parent.
    let limits = *st.tokens;
    let explicit_max_ttl = match req.explicit_max_ttl {
        Some(t) if t < 0 => {
            return Err(VaultError::bad_request(
                "explicit_max_ttl: must not be negative",
            ))
        }
        t => t.unwrap_or(0),
    };
    let cap = limits.cap(explicit_max_ttl);
    let expires_at = match req.ttl {
        Some(t) if t < 0 => return Err(VaultError::bad_request("ttl: must not be negative")),
        Some(0) | None if explicit_max_ttl == 0 && policies.iter().any(|p| p == auth::ROOT) => None,
        Some(0) | None => Some(now.saturating_add(limits.default_ttl.min(cap))),
        Some(t) => Some(now.saturating_add(t.min(cap))),
    };
    let expires_at = match (expires_at, who.token.as_ref().and_then(|t| t.expires_at)) {
        (Some(e), Some(parent)) => Some(e.min(parent)),
        (None, Some(parent)) => Some(parent),
        (e, None) => e,
    };

    let entity_id = match req.entity_id {
        Some(raw) => {
            let e = vault::entity_id("entity_id", &raw)?;
            if e != who.entity_id && !who.allowed("auth/token/create", Capability::Sudo) {
                return Err(VaultError::denied());
            }
            e
        }
        None => uuid::Uuid::new_v4().to_string(),
    };

    if let Some(n) = &req.display_name {
        if n.chars().count() > MAX_DISPLAY_NAME || !super::fields::printable(n) {
            return Err(VaultError::bad_request(format!(
                "display_name: at most {MAX_DISPLAY_NAME} characters, without control characters"
            )));
        }
    }
    let token = auth::new_token().map_err(|e| VaultError::internal(&e))?;
    let accessor = uuid::Uuid::new_v4().simple().to_string();
    let rec = TokenRecord {
        hash: auth::hash_token(&token),
        accessor: accessor.clone(),
        entity_id: entity_id.clone(),
        // As Vault: a given display name is prefixed `token-`.
        display_name: req
            .display_name
            .map_or_else(|| "token".into(), |n| format!("token-{n}")),
        policies: policies.clone(),
        created_at: now,
        expires_at,
        parent: who.token.as_ref().map(|t| t.accessor.clone()),
        renewable: req.renewable,
        creation_ttl: expires_at.map_or(0, |e| e - now),
        explicit_max_ttl,
        last_renewal: None,
    };
    st.store.create_token(&rec).await?;
    let object = Object::Token {
        accessor: Some(&rec.accessor),
        entity_id: Some(&rec.entity_id),
        policies: Some(&rec.policies),
    };
    audit::record(&st, Event::new(Action::TokenCreate, Verdict::Ok, object));
    Ok(vault::auth(&who.request_id, auth_data(&token, &rec, now)))
}

/// The `auth` block of an answer that hands out or renews `token`, as Vault's.
fn auth_data(token: &str, t: &TokenRecord, now: i64) -> Value {
    json!({
        "client_token": token,
        "accessor": t.accessor,
        "policies": t.policies,
        "token_policies": t.policies,
        "metadata": null,
        "lease_duration": t.expires_at.map_or(0, |e| (e - now).max(0)),
        "renewable": t.renewable,
        "entity_id": t.entity_id,
        "token_type": "service",
        "orphan": t.parent.is_none(),
        "mfa_requirement": null,
        "num_uses": 0,
    })
}

/// A token's lookup data, with Vault's fields and types.
fn lookup_data(t: &TokenRecord, now: i64) -> Value {
    let mut data = json!({
        "accessor": t.accessor,
        "creation_time": t.created_at,
        "creation_ttl": t.creation_ttl,
        "display_name": t.display_name,
        "entity_id": t.entity_id,
        "expire_time": t.expires_at.map(rfc3339),
        "explicit_max_ttl": t.explicit_max_ttl,
        "issue_time": rfc3339(t.created_at),
        "meta": null,
        "num_uses": 0,
        "orphan": t.parent.is_none(),
        "path": "auth/token/create",
        "policies": t.policies,
        "renewable": t.renewable,
        "ttl": t.expires_at.map_or(0, |e| (e - now).max(0)),
        "type": "service",
    });
    // As Vault: present once the token has been renewed.
    if let Some(at) = t.last_renewal {
        data["last_renewal"] = json!(rfc3339(at));
        data["last_renewal_time"] = json!(at);
    }
    data
}

async fn token_lookup_self(State(st): State<AppState>, who: Caller, headers: HeaderMap) -> Res {
    who.require("auth/token/lookup-self", Capability::Read)?;
    let now = now();
    let data = match &who.token {
        Some(t) => match st.store.get_token(&t.hash, now).await? {
            Some(rec) => {
                let mut data = lookup_data(&rec, now);
                // As Vault: the caller's own token, which it sent, as `id`.
                data["id"] = json!(auth::token_from_headers(&headers));
                data
            }
            None => return Err(VaultError::denied()),
        },
        // A socket peer without a token: say who the daemon thinks it is.
        None => json!({
            "accessor": null,
            "creation_time": null,
            "display_name": who.entity_id,
            "entity_id": who.entity_id,
            "expire_time": null,
            "policies": who.policies,
            "ttl": 0,
            "type": "peer",
        }),
    };
    Ok(vault::ok(&who.request_id, data))
}

/// `{token}`: the body of lookup and revoke.
#[derive(Deserialize)]
struct TokenReq {
    token: String,
}

async fn token_lookup(
    State(st): State<AppState>,
    who: Caller,
    extract::Json(req, _): Json<TokenReq>,
) -> Res {
    who.require("auth/token/lookup", Capability::Update)?;
    let token = req.token.trim();
    if token.is_empty() {
        return Err(VaultError::bad_request("token: missing"));
    }
    let now = now();
    // As Vault: an unknown token is "bad token", 403.
    let rec = st
        .store
        .get_token(&auth::hash_token(token), now)
        .await?
        .ok_or_else(|| VaultError::new(StatusCode::FORBIDDEN, "bad token"))?;
    let mut data = lookup_data(&rec, now);
    data["id"] = json!(token);
    Ok(vault::ok(&who.request_id, data))
}

#[derive(Deserialize)]
struct AccessorReq {
    accessor: String,
}

async fn token_lookup_accessor(
    State(st): State<AppState>,
    who: Caller,
    extract::Json(req, _): Json<AccessorReq>,
) -> Res {
    who.require("auth/token/lookup-accessor", Capability::Update)?;
    let now = now();
    let rec = st
        .store
        .get_token_by_accessor(req.accessor.trim(), now)
        .await?
        .ok_or_else(|| VaultError::bad_request("invalid accessor"))?;
    // Looked up by accessor, the token itself is never shown (Vault gives an empty id).
    let mut data = lookup_data(&rec, now);
    data["id"] = json!("");
    Ok(vault::ok(&who.request_id, data))
}

async fn token_revoke_accessor(
    State(st): State<AppState>,
    who: Caller,
    extract::Json(req, _): Json<AccessorReq>,
) -> Res {
    who.require("auth/token/revoke-accessor", Capability::Update)?;
    let accessor = req.accessor.trim();
    if accessor.is_empty() {
        return Err(VaultError::bad_request("accessor: missing"));
    }
    let revoked = st.store.revoke_token_by_accessor(accessor).await?;
    // Named only if it was one: a token pasted here by mistake must not reach the log.
    revoked_event(&st, (revoked > 0).then_some(accessor), revoked);
    Ok(vault::no_content())
}

async fn token_revoke(
    State(st): State<AppState>,
    who: Caller,
    extract::Json(req, _): Json<TokenReq>,
) -> Res {
    who.require("auth/token/revoke", Capability::Update)?;
    if req.token.trim().is_empty() {
        return Err(VaultError::bad_request("token: missing"));
    }
    let hash = auth::hash_token(req.token.trim());
    // Its accessor names it in the audit log (the token itself never goes there).
    let accessor = st.store.get_token(&hash, now()).await?.map(|t| t.accessor);
    let revoked = st.store.revoke_token(&hash).await?;
    revoked_event(&st, accessor.as_deref(), revoked);
    Ok(vault::no_content())
}

async fn token_revoke_self(State(st): State<AppState>, who: Caller) -> Res {
    who.require("auth/token/revoke-self", Capability::Update)?;
    let t = who.token.as_ref().ok_or_else(|| {
        VaultError::bad_request("no token to revoke: the caller is a socket peer")
    })?;
    let revoked = st.store.revoke_token(&t.hash).await?;
    revoked_event(&st, Some(&t.accessor), revoked);
    Ok(vault::no_content())
}

/// Audits a revocation (`revoked` tokens went, children included).
fn revoked_event(st: &AppState, accessor: Option<&str>, revoked: usize) {
    let verdict = if revoked > 0 {
        Verdict::Ok
    } else {
        Verdict::Unchanged("absent")
    };
    let object = Object::Token {
        accessor,
        entity_id: None,
        policies: None,
    };
    audit::record(st, Event::new(Action::TokenRevoke, verdict, object));
}

/// `{increment?}`, and `{token}` for `renew`: how long a renewal asks for.
#[derive(Deserialize)]
struct RenewReq {
    #[serde(default)]
    token: Option<String>,
    #[serde(default, deserialize_with = "flex_seconds")]
    increment: Option<i64>,
}

async fn token_renew(
    State(st): State<AppState>,
    who: Caller,
    extract::Json(req, _): Json<RenewReq>,
) -> Res {
    who.require("auth/token/renew", Capability::Update)?;
    let token = req.token.as_deref().map(str::trim).unwrap_or_default();
    if token.is_empty() {
        return Err(VaultError::bad_request("token: missing"));
    }
    renew(&st, &who.request_id, token, req.increment).await
}

async fn token_renew_self(
    State(st): State<AppState>,
    who: Caller,
    headers: HeaderMap,
    extract::Json(req, _): Json<RenewReq>,
) -> Res {
    who.require("auth/token/renew-self", Capability::Update)?;
    // The token that authenticated this request: the one the headers carry.
    let token = who
        .token
        .as_ref()
        .and(auth::token_from_headers(&headers))
        .ok_or_else(|| VaultError::bad_request("no token to renew: the caller is a socket peer"))?;
    renew(&st, &who.request_id, &token, req.increment).await
}

/// Renews `token` by `increment` (or its creation TTL), as Vault does: up to its max TTL
/// from creation and its parent's expiry. A token without expiry has nothing to extend.
async fn renew(st: &AppState, request_id: &str, token: &str, increment: Option<i64>) -> Res {
    if increment.is_some_and(|i| i < 0) {
        return Err(VaultError::bad_request("increment: must not be negative"));
    }
    let now = now();
    let hash = auth::hash_token(token);
    let mut rec = st
        .store
        .get_token(&hash, now)
        .await?
        .ok_or_else(|| VaultError::bad_request("invalid token"))?;
    if rec.expires_at.is_none() {
        return Ok(vault::auth(request_id, auth_data(token, &rec, now)));
    }
    if !rec.renewable {
        return Err(VaultError::bad_request("lease is not renewable"));
    }
    let parent_expiry = match &rec.parent {
        Some(p) => match st.store.get_token_by_accessor(p, now).await? {
            Some(parent) => parent.expires_at,
            // A child goes with its parent: this one is about to be swept.
            None => return Err(VaultError::bad_request("invalid token")),
        },
        None => None,
    };
    let expires_at = st.tokens.renewal(&rec, now, increment, parent_expiry);
    if !st.store.renew_token(&hash, now, expires_at).await? {
        return Err(VaultError::bad_request("invalid token"));
    }
    let object = Object::Token {
        accessor: Some(&rec.accessor),
        entity_id: None,
        policies: None,
    };
    audit::record(st, Event::new(Action::TokenRenew, Verdict::Ok, object));
    rec.expires_at = Some(expires_at);
    rec.last_renewal = Some(now);
    Ok(vault::auth(request_id, auth_data(token, &rec, now)))
}

// ----- policies -----

/// A policy name: what Vault allows, lower-cased as Vault does.
fn policy_name(raw: &str) -> Result<String, VaultError> {
    auth::policy::name(raw).ok_or_else(|| {
        VaultError::bad_request(format!(
            "name: {raw:?} is not a valid policy name (letters, digits, '-', '_', '.', '@')"
        ))
    })
}

async fn policy_list(State(st): State<AppState>, who: Caller, Query(q): Query<ListQuery>) -> Res {
    q.require()?;
    who.require("sys/policies/acl", Capability::List)?;
    let mut keys = st.store.list_policies().await?;
    keys.push(auth::DEFAULT.into());
    keys.push(auth::ROOT.into());
    keys.sort();
    Ok(vault::ok(&who.request_id, json!({ "keys": keys })))
}

async fn policy_read(
    State(st): State<AppState>,
    who: Caller,
    Path(raw): Path<String>,
    Query(q): Query<ListQuery>,
) -> Res {
    q.forbid()?;
    let name = policy_name(&raw)?;
    who.require(&format!("sys/policies/acl/{name}"), Capability::Read)?;
    // As Vault: the text as it was written, as `policy` and as `rules`.
    let text = match name.as_str() {
        auth::ROOT => String::new(),
        auth::DEFAULT => auth::DEFAULT_POLICY.to_string(),
        _ => st
            .store
            .get_policy(&name)
            .await?
            .ok_or_else(VaultError::not_found)?,
    };
    Ok(vault::ok(
        &who.request_id,
        json!({ "name": name, "policy": text, "rules": text }),
    ))
}

#[derive(Deserialize)]
struct PolicyWrite {
    policy: Value,
    /// A Nitride one-time policy token: allows this one update without the right to it.
    totp: Option<String>,
}

async fn policy_write(
    State(st): State<AppState>,
    who: Caller,
    Path(raw): Path<String>,
    extract::Json(req, _): Json<PolicyWrite>,
) -> Res {
    let name = policy_name(&raw)?;
    // A token that was sent is always checked, whatever rights the caller has.
    if req.totp.is_none() {
        who.require_any(&format!("sys/policies/acl/{name}"), auth::WRITE)?;
    }
    if name == auth::ROOT || name == auth::DEFAULT {
        return Err(VaultError::bad_request(format!(
            "cannot update the built-in {name:?} policy"
        )));
    }
    // Vault clients send the policy as a string of HCL or JSON, kept as written; an
    // object is kept as its JSON text.
    let text = match req.policy {
        Value::String(s) => s,
        v @ Value::Object(_) => v.to_string(),
        _ => {
            return Err(VaultError::bad_request(
                "policy: must be a string of HCL or JSON, or a JSON object",
            ))
        }
    };
    Policy::from_text(&text).map_err(|e| VaultError::bad_request(format!("policy: {e}")))?;
    let document = text;
    match req.totp {
        // Checked only now: an invalid document must not spend the token.
        Some(token) => {
            if !nitride::spend(&st, &token, &name, &document).await? {
                return Err(VaultError::denied());
            }
        }
        None => {
            st.store.put_policy(&name, &document, now()).await?;
            policy_event(&st, Action::PolicyWrite, &name, true);
        }
    }
    Ok(vault::no_content())
}

async fn policy_delete(State(st): State<AppState>, who: Caller, Path(raw): Path<String>) -> Res {
    let name = policy_name(&raw)?;
    who.require(&format!("sys/policies/acl/{name}"), Capability::Delete)?;
    if name == auth::ROOT || name == auth::DEFAULT {
        return Err(VaultError::bad_request(format!(
            "cannot delete the built-in {name:?} policy"
        )));
    }
    let deleted = st.store.delete_policy(&name).await?;
    policy_event(&st, Action::PolicyDelete, &name, deleted);
    Ok(vault::no_content())
}

/// Audits a policy written or deleted (`changed`: false when there was none to delete).
fn policy_event(st: &AppState, action: Action, policy: &str, changed: bool) {
    let verdict = if changed {
        Verdict::Ok
    } else {
        Verdict::Unchanged("absent")
    };
    let object = Object::Policy { policy };
    audit::record(st, Event::new(action, verdict, object));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(created_at: i64, creation_ttl: i64, explicit_max_ttl: i64) -> TokenRecord {
        TokenRecord {
            hash: "h".into(),
            accessor: "a".into(),
            entity_id: "e".into(),
            display_name: "token".into(),
            policies: vec![],
            created_at,
            expires_at: Some(created_at + creation_ttl),
            parent: None,
            renewable: true,
            creation_ttl,
            explicit_max_ttl,
            last_renewal: None,
        }
    }

    #[test]
    fn a_renewal_extends_by_the_increment_or_the_creation_ttl_within_every_cap() {
        let s = TokenSettings {
            default_ttl: 3600,
            max_ttl: 10_000,
        };
        let t = token(0, 600, 0);
        // No increment (or 0): the creation TTL again, from now.
        assert_eq!(s.renewal(&t, 100, None, None), 700);
        assert_eq!(s.renewal(&t, 100, Some(0), None), 700);
        // An increment, longer or shorter than the creation TTL.
        assert_eq!(s.renewal(&t, 100, Some(2000), None), 2100);
        assert_eq!(s.renewal(&t, 100, Some(10), None), 110);
        // Never past the daemon's max TTL, counted from creation.
        assert_eq!(s.renewal(&t, 9_000, Some(5000), None), 10_000);
        // Nor past its explicit max TTL.
        let e = token(0, 600, 1000);
        assert_eq!(s.renewal(&e, 100, Some(5000), None), 1000);
        // An explicit max above the daemon's is cut to the daemon's.
        let big = token(0, 600, 50_000);
        assert_eq!(s.renewal(&big, 100, Some(50_000), None), 10_000);
        // Nor past its parent.
        assert_eq!(s.renewal(&t, 100, Some(5000), Some(800)), 800);
    }
}

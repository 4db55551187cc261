//! Nitride's one-time policy tokens, under `/v1/auth/<mount>/totp`. An operator with
//! `sudo` makes a token: a v4 uuid that allows exactly one update of one named ACL
//! policy before it expires. A workload spends it by sending it as `totp` with that
//! update (`PUT /v1/sys/policies/acl/<name>`, see [`spend`]), without holding any right
//! on the policy itself.
//!
//! The uuid is a bearer credential: it is shown once, stored as its SHA-256, and logged
//! only as its first 8 characters. Every refusal of a spend looks the same to the
//! caller; the reason goes to the log and the metrics.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, put};
use axum::Router;
use serde_json::{json, Map, Value};

use super::mounts::MountKind;
#[cfg(test)]
use super::mounts::Mounts;
use super::vault::{self, ListQuery};
use super::{extract, now, read_json, surface_error, AppState, BodyError, Surface, SurfaceError};
use crate::audit::{self, Action, Event, Object, Verdict};
use crate::auth::{self, Capability};
use crate::store::{PolicyTokenRecord, Spend, Store, StoreError, Thing};

/// The Nitride token surface, with Nitride's error shape on every path of every mount.
pub const SURFACE: Surface = Surface {
    prefixes: &["/v1/auth/*/totp"],
    routes,
    error: |status, msg| NitrideError::new(status, msg).into_response(),
};

/// The mount every daemon has.
pub const DEFAULT_MOUNT: &str = "ratls";

/// The longest a token may stay good: a one-time token is for a deadline, not a
/// standing credential (the default lifetime of an API token).
pub const MAX_LIFETIME: i64 = 32 * 24 * 3600;

/// The message of the 404 an empty LIST gets (as Vault answers an empty list).
pub const NO_TOKENS: &str = "no tokens on this mount";

/// The caller, rejected in this surface's shape.
type Caller = extract::Caller<NitrideError>;

fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/auth/{mount}/totp", put(create).post(create).get(list))
        .route("/v1/auth/{mount}/totp/{uuid}", delete(remove))
}

// ----- mounts -----

/// The auth mounts that hold policy tokens: `ratls` and any configured with `--mount`,
/// each holding its own tokens, at `/v1/auth/<mount>/totp`.
pub const MOUNTS: MountKind = MountKind {
    default: DEFAULT_MOUNT,
    path: |name| format!("/v1/auth/{name}/totp"),
    own: SURFACE.prefixes,
};

// ----- errors -----

/// `{"statusCode": 400, "message": "...", "errors": {"<field>": "..."}}`; `errors` only
/// when a field is at fault, as in Nitride's samples.
#[derive(Debug)]
pub struct NitrideError {
    pub status: StatusCode,
    pub message: String,
    pub errors: BTreeMap<String, String>,
}

impl NitrideError {
    pub fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        NitrideError {
            status,
            message: msg.into(),
            errors: BTreeMap::new(),
        }
    }

    /// 400 naming each bad field.
    fn fields(errors: BTreeMap<String, String>) -> Self {
        NitrideError {
            status: StatusCode::BAD_REQUEST,
            message: "Invalid request".into(),
            errors,
        }
    }

    fn field(field: &str, msg: impl Into<String>) -> Self {
        Self::fields(BTreeMap::from([(field.to_string(), msg.into())]))
    }

    fn unknown_mount(mount: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("no auth mount {mount:?}"))
    }
}

impl IntoResponse for NitrideError {
    fn into_response(self) -> Response {
        let mut body = json!({"statusCode": self.status.as_u16(), "message": self.message});
        if !self.errors.is_empty() {
            body["errors"] = json!(self.errors);
        }
        (self.status, axum::Json(body)).into_response()
    }
}

impl SurfaceError for NitrideError {
    fn with_status(status: StatusCode, message: String) -> Self {
        NitrideError::new(status, message)
    }

    /// A field at fault is named in `errors`; a body that is not a JSON object (or not
    /// JSON) is the field `body`.
    fn from_body(e: BodyError) -> Self {
        let status = e.status();
        match e {
            BodyError::Field {
                field: Some(f),
                message,
            } => Self::field(&f, message),
            e @ (BodyError::Field { field: None, .. } | BodyError::Malformed(_)) => {
                Self::field("body", e.to_string())
            }
            e => Self::new(status, e.to_string()),
        }
    }
}

surface_error!(NitrideError);

type Res = Result<Response, NitrideError>;

// ----- the uuid as a credential -----

/// A presented uuid as stored: (hash, first 8 characters). Any spelling the uuid crate
/// reads (upper case, no hyphens) is the same token. `None` if it is no uuid.
pub fn token_key(raw: &str) -> Option<(String, String)> {
    uuid::Uuid::parse_str(raw.trim()).ok().map(|u| key_of(&u))
}

/// (hash, first 8 characters) of the uuid's canonical, lower-case hyphenated form.
fn key_of(u: &uuid::Uuid) -> (String, String) {
    let canonical = u.hyphenated().to_string();
    let prefix = canonical.chars().take(8).collect();
    (auth::hash_token(&canonical), prefix)
}

/// Sudo on `auth/<mount>/totp`, or on the exact request path, lets a caller create,
/// list and delete tokens.
fn require_sudo(who: &Caller, mount: &str, exact: Option<&str>) -> Result<(), NitrideError> {
    let base = format!("auth/{mount}/totp");
    // The shared denial (403 "permission denied"), in this surface's shape.
    who.require(&base, Capability::Sudo)
        .or_else(|e| match exact {
            Some(p) => who.require(p, Capability::Sudo),
            None => Err(e),
        })
        .map_err(NitrideError::from)
}

fn check_mount_known(st: &AppState, mount: &str) -> Result<(), NitrideError> {
    if st.mounts.contains(mount) {
        Ok(())
    } else {
        Err(NitrideError::unknown_mount(mount))
    }
}

// ----- create -----

/// A create request, every field checked and every fault named at once.
#[derive(Debug)]
struct Create {
    expiration: i64,
    policy: String,
}

fn parse_create(body: &Map<String, Value>, now: i64) -> Result<Create, NitrideError> {
    let mut errors = BTreeMap::new();
    let mut bad = |field: &str, msg: &str| {
        errors.insert(field.to_string(), msg.to_string());
    };
    let expiration = match body.get("expiration") {
        None | Some(Value::Null) => {
            bad("expiration", "is required (unix seconds)");
            None
        }
        Some(v) => match v.as_i64() {
            None => {
                bad("expiration", "must be an integer (unix seconds)");
                None
            }
            Some(e) if e <= now => {
                bad("expiration", "must be in the future");
                None
            }
            Some(e) if e - now > MAX_LIFETIME => {
                bad("expiration", "must be at most 32 days from now");
                None
            }
            Some(e) => Some(e),
        },
    };
    let policy = match body.get("policy") {
        None | Some(Value::Null) => {
            bad("policy", "is required");
            None
        }
        Some(Value::String(p)) => match auth::policy::name(p) {
            None => {
                bad(
                    "policy",
                    "is not a policy name (letters, digits, '-', '_', '.', '@')",
                );
                None
            }
            Some(p) if p == auth::ROOT || p == auth::DEFAULT => {
                bad("policy", "cannot be a built-in policy (root, default)");
                None
            }
            Some(p) => Some(p),
        },
        Some(_) => {
            bad("policy", "must be a string");
            None
        }
    };
    // Sent by Nitride's own samples and replaced by the daemon; only their types count.
    if body
        .get("created")
        .is_some_and(|v| !v.is_null() && !v.is_i64())
    {
        bad("created", "must be an integer (unix seconds)");
    }
    if body
        .get("uuid")
        .is_some_and(|v| !v.is_null() && !v.is_string())
    {
        bad("uuid", "must be a string");
    }
    match (expiration, policy) {
        (Some(expiration), Some(policy)) if errors.is_empty() => Ok(Create { expiration, policy }),
        _ => Err(NitrideError::fields(errors)),
    }
}

async fn create(
    State(st): State<AppState>,
    Path(mount): Path<String>,
    who: Caller,
    body: Body,
) -> Res {
    require_sudo(&who, &mount, None)?;
    check_mount_known(&st, &mount)?;
    let body: Map<String, Value> = read_json(body).await?;
    let now = now();
    let req = parse_create(&body, now)?;
    // A token passes on a right its maker holds, never more: sudo on a mount alone
    // must not turn into writing any policy (the maker's own included).
    if !who.is_root() {
        who.require_any(&format!("sys/policies/acl/{}", req.policy), auth::WRITE)
            .map_err(|_| {
                NitrideError::new(
                    StatusCode::FORBIDDEN,
                    "permission denied: making a token for a policy needs the right to write that policy",
                )
            })?;
    }

    // The uuid is the credential: its 122 random bits come from the OS, as a token's do
    // (not from the fast generator that request ids and record ids use).
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).map_err(|e| super::internal::<NitrideError>(&e))?;
    let uuid = uuid::Builder::from_random_bytes(bytes).into_uuid();
    let (hash, prefix) = key_of(&uuid);
    let rec = PolicyTokenRecord {
        hash,
        prefix: prefix.clone(),
        mount: mount.clone(),
        policy: req.policy.clone(),
        created_at: now,
        expires_at: req.expiration,
        spent_at: None,
    };
    match st.store.create_policy_token(&rec).await {
        Ok(()) => {}
        Err(StoreError::NotFound(Thing::Policy)) => {
            return Err(NitrideError::field("policy", "no such policy"))
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!(token = %prefix, mount = %mount, policy = %req.policy, expiration = req.expiration, "policy token created");
    let object = Object::PolicyToken {
        mount: Some(&mount),
        token: Some(&prefix),
        policy: Some(&req.policy),
    };
    audit::record(&st, Event::new(Action::NitrideCreate, Verdict::Ok, object));
    Ok(vault::ok(
        &who.request_id,
        json!({
            "created": now,
            "expiration": req.expiration,
            "policy": req.policy,
            "uuid": uuid.hyphenated().to_string(),
        }),
    ))
}

// ----- list (totpd's extension) -----

async fn list(
    State(st): State<AppState>,
    Path(mount): Path<String>,
    who: Caller,
    Query(q): Query<ListQuery>,
) -> Res {
    match q.listing() {
        Ok(true) => {}
        Ok(false) => {
            return Err(NitrideError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "unsupported operation: use LIST or ?list=true",
            ))
        }
        Err(e) => return Err(NitrideError::field("list", e)),
    }
    require_sudo(&who, &mount, None)?;
    check_mount_known(&st, &mount)?;
    let now = now();
    let tokens = st.store.list_policy_tokens(&mount).await?;
    if tokens.is_empty() {
        return Err(NitrideError::new(StatusCode::NOT_FOUND, NO_TOKENS));
    }
    let keys: Vec<&str> = tokens.iter().map(|t| t.prefix.as_str()).collect();
    let info: Vec<Value> = tokens
        .iter()
        .map(|t| {
            json!({
                "prefix": t.prefix,
                "policy": t.policy,
                "created": t.created_at,
                "expiration": t.expires_at,
                "spent": t.spent_at.is_some(),
                "spent_at": t.spent_at,
                "expired": t.expires_at <= now,
            })
        })
        .collect();
    Ok(vault::ok(
        &who.request_id,
        json!({ "keys": keys, "tokens": info }),
    ))
}

// ----- delete -----

async fn remove(
    State(st): State<AppState>,
    Path((mount, raw)): Path<(String, String)>,
    who: Caller,
) -> Res {
    require_sudo(&who, &mount, Some(&format!("auth/{mount}/totp/{raw}")))?;
    check_mount_known(&st, &mount)?;
    let deleted = |prefix: &str, gone: bool| {
        let verdict = if gone {
            tracing::info!(token = %prefix, mount = %mount, "policy token deleted");
            Verdict::Ok
        } else {
            Verdict::Unchanged("absent")
        };
        let object = Object::PolicyToken {
            mount: Some(&mount),
            token: Some(prefix),
            policy: None,
        };
        audit::record(&st, Event::new(Action::NitrideDelete, verdict, object));
    };
    if let Some((hash, prefix)) = token_key(&raw) {
        let gone = st.store.delete_policy_token(&mount, &hash).await?;
        deleted(&prefix, gone);
    } else if let Some(prefix) = listed_prefix(&raw) {
        // What LIST shows is enough to revoke a token whose uuid is lost.
        match st
            .store
            .delete_policy_token_by_prefix(&mount, &prefix)
            .await?
        {
            n @ (0 | 1) => deleted(&prefix, n == 1),
            _ => {
                return Err(NitrideError::field(
                    "uuid",
                    "these 8 characters begin several tokens; give the whole uuid",
                ))
            }
        }
    } else {
        return Err(NitrideError::field(
            "uuid",
            "must be a UUID (or the 8 characters LIST shows)",
        ));
    }
    // As Nitride: success whether or not there was such a token.
    Ok(vault::ok(&who.request_id, json!({})))
}

/// The 8 hex characters LIST shows of a token, lower-cased; `None` for anything else.
fn listed_prefix(raw: &str) -> Option<String> {
    let p = raw.trim();
    (p.len() == 8 && p.bytes().all(|b| b.is_ascii_hexdigit())).then(|| p.to_ascii_lowercase())
}

// ----- spending -----

/// Spends the token `presented` on writing `document` (already validated) as policy
/// `name`, in one store operation. True if written; false if refused, for whatever
/// reason (unknown, spent, expired, another policy's, not a uuid): the reason is
/// logged with the token's first 8 characters and counted, never told to the caller.
pub async fn spend(
    st: &AppState,
    presented: &str,
    name: &str,
    document: &str,
) -> Result<bool, StoreError> {
    let spent = |prefix: Option<&str>, verdict: Verdict| {
        let object = Object::PolicyToken {
            mount: None,
            token: prefix,
            policy: Some(name),
        };
        audit::record(st, Event::new(Action::NitrideSpend, verdict, object));
    };
    let Some((hash, prefix)) = token_key(presented) else {
        tracing::warn!(policy = %name, reason = "malformed", "policy token refused");
        st.metrics.verification("nitride", "malformed");
        spent(None, Verdict::Refused("malformed"));
        return Ok(false);
    };
    match st
        .store
        .spend_policy_token_and_update(&hash, name, document, now())
        .await?
    {
        Spend::Spent => {
            tracing::info!(token = %prefix, policy = %name, "policy token spent");
            st.metrics.verification("nitride", "accepted");
            spent(Some(&prefix), Verdict::Ok);
            Ok(true)
        }
        Spend::Refused(r) => {
            tracing::warn!(token = %prefix, policy = %name, reason = r.reason(), "policy token refused");
            st.metrics.verification("nitride", r.reason());
            spent(Some(&prefix), Verdict::Refused(r.reason()));
            Ok(false)
        }
    }
}

// ----- purging -----

/// Purges spent and expired tokens now and then every `every`, for as long as the
/// returned task runs (the daemon aborts it at shutdown). A failed purge is logged and
/// tried again next time; nothing depends on it but the table's size.
pub fn spawn_purge(store: Arc<dyn Store>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // The first tick is immediate: a purge on start.
            tick.tick().await;
            match store.purge_policy_tokens(now()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(purged = n, "purged spent and expired policy tokens"),
                Err(StoreError::Closed) => return,
                Err(e) => tracing::warn!(error = %e, "purging policy tokens failed"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_names() {
        let new = |names: &[&str]| {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            Mounts::new(&MOUNTS, &names)
        };
        assert!(new(&["ci", "deploy-2"]).is_ok());
        let m = new(&["ci", "ci"]).unwrap();
        assert_eq!(m.names(), ["ratls", "ci"]);
        for bad in ["", "Ci", "a/b", "-x", "x y", &"a".repeat(65)] {
            assert!(new(&[bad]).is_err(), "{bad:?}");
        }
        let e = new(&["token"]).unwrap_err();
        assert!(e.contains("collides"), "{e}");
    }

    #[test]
    fn a_uuid_in_any_spelling_is_one_token() {
        let u = "6F9619FF-8B86-D011-B42D-00CF4FC964FF";
        let (h1, p1) = token_key(u).unwrap();
        let (h2, p2) = token_key(&u.to_lowercase().replace('-', "")).unwrap();
        assert_eq!((h1.as_str(), p1.as_str()), (h2.as_str(), "6f9619ff"));
        assert_eq!(p2, "6f9619ff");
        assert!(token_key("text").is_none());
        assert!(token_key("").is_none());
        assert_eq!(listed_prefix("6F9619FF").as_deref(), Some("6f9619ff"));
        for not in ["6f9619f", "6f9619ffa", "6f9619fg", "text"] {
            assert!(listed_prefix(not).is_none(), "{not}");
        }
    }

    #[test]
    fn create_names_every_bad_field() {
        let now = 1_000;
        let body = |v: Value| v.as_object().unwrap().clone();
        let e = parse_create(
            &body(json!({"expiration": "soon", "created": "x", "uuid": 5})),
            now,
        )
        .unwrap_err();
        assert_eq!(
            e.errors.keys().collect::<Vec<_>>(),
            ["created", "expiration", "policy", "uuid"]
        );
        let e = parse_create(&body(json!({"expiration": 999, "policy": "root"})), now).unwrap_err();
        assert_eq!(
            e.errors.keys().collect::<Vec<_>>(),
            ["expiration", "policy"]
        );
        let e = parse_create(&body(json!({"expiration": 1.5e9, "policy": "p"})), now).unwrap_err();
        assert!(e.errors.contains_key("expiration"));
        let far = now + MAX_LIFETIME + 1;
        let e = parse_create(&body(json!({"expiration": far, "policy": "p"})), now).unwrap_err();
        assert!(e.errors.contains_key("expiration"));
        let e =
            parse_create(&body(json!({"expiration": i64::MAX, "policy": "p"})), now).unwrap_err();
        assert!(e.errors.contains_key("expiration"));
        let ok = parse_create(
            &body(json!({"created": 0, "expiration": 1_001, "policy": "Deploy", "uuid": "text"})),
            now,
        )
        .unwrap();
        assert_eq!((ok.expiration, ok.policy.as_str()), (1_001, "deploy"));
    }
}

//! Who is calling, and what they may do: tokens, socket peer credentials, policies.
//! [`Caller::allowed`] is the one place every surface asks "may this caller do this here".

pub mod cache;
pub mod policy;

use std::sync::{Arc, LazyLock};

use http::HeaderMap;
use sha2::{Digest, Sha256};

pub use policy::{Acl, Capability, Policy, PolicyError};

use crate::store::{Store, StoreError};

/// Names of the built-in policies.
pub const ROOT: &str = "root";
pub const DEFAULT: &str = "default";

/// The built-in `default` policy: a caller's own things only. Ownership itself is
/// enforced by each surface (everything is scoped to the caller's entity); this grants
/// the paths.
pub const DEFAULT_POLICY: &str = r#"{
  "path": {
    "auth/token/lookup-self": {"capabilities": ["read"]},
    "auth/token/revoke-self": {"capabilities": ["update"]},
    "auth/token/renew-self": {"capabilities": ["update"]},
    "identity/mfa/method/totp/generate": {"capabilities": ["update"]},
    "identity/mfa/method/totp/validate": {"capabilities": ["update"]},
    "api/v2/totp/*": {"capabilities": ["create", "read", "update", "delete", "list"]},
    "api/v1/auth/totp/*": {"capabilities": ["create", "read", "update"]}
  }
}"#;

/// A write in Vault's sense: `create` or `update` will do.
pub const WRITE: &[Capability] = &[Capability::Create, Capability::Update];

/// How a connection reached the daemon; set by the listener, per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// A Unix-socket peer with its uid from SO_PEERCRED (None if it could not be read).
    Unix {
        uid: Option<u32>,
    },
    Tcp,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("permission denied")]
    Denied,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored policy {0:?} is invalid: {1}")]
    BadPolicy(String, PolicyError),
    #[error("random number generator failed")]
    Rng,
}

/// The token a request came with, as stored (never the token itself).
#[derive(Debug, Clone)]
pub struct TokenInfo {
    pub hash: String,
    pub accessor: String,
    pub display_name: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub entity_id: String,
    pub policies: Vec<String>,
    pub token: Option<TokenInfo>,
    acl: Arc<Acl>,
}

impl Caller {
    /// The single access decision: may this caller use `cap` on `path`?
    /// `path` is the ACL path: the request path without its leading `/v1/` or `/`.
    pub fn allowed(&self, path: &str, cap: Capability) -> bool {
        self.acl.allows(path, cap)
    }

    /// `allowed`, as a Result for `?`.
    pub fn require(&self, path: &str, cap: Capability) -> Result<(), AuthError> {
        if self.allowed(path, cap) {
            Ok(())
        } else {
            Err(AuthError::Denied)
        }
    }

    /// Whether the caller holds the built-in `root` policy (everything, sudo included).
    pub fn is_root(&self) -> bool {
        self.acl.is_root()
    }

    /// `allowed` for any one of `caps` (Vault writes accept `create` or `update`).
    pub fn require_any(&self, path: &str, caps: &[Capability]) -> Result<(), AuthError> {
        if caps.iter().any(|c| self.allowed(path, *c)) {
            Ok(())
        } else {
            Err(AuthError::Denied)
        }
    }
}

/// The longest entity id a client may name (admin-generate, validate, token create,
/// the login step's `user`).
pub const MAX_ENTITY_ID: usize = 128;

/// An entity id given by a client: trimmed, 1..=128 characters of letters, digits and
/// `.`, `_`, `-`, `:`, `@`. The error says what is wrong, never echoing the value.
pub fn entity_id(raw: &str) -> Result<String, String> {
    let e = raw.trim();
    if e.is_empty() {
        return Err("must be set".into());
    }
    if e.len() > MAX_ENTITY_ID
        || !e
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '@'))
    {
        return Err(format!(
            "at most {MAX_ENTITY_ID} letters, digits and '.', '_', '-', ':', '@'"
        ));
    }
    Ok(e.to_string())
}

/// The ACL path of a request path: `/v1/sys/x` → `sys/x`, `/api/v2/totp` → `api/v2/totp`.
pub fn acl_path(request_path: &str) -> &str {
    request_path
        .strip_prefix("/v1/")
        .unwrap_or_else(|| request_path.trim_start_matches('/'))
}

/// A new token: 256 random bits, URL-safe, with a prefix so it is recognisable in a leak.
pub fn new_token() -> Result<String, getrandom::Error> {
    let mut b = [0u8; 32];
    getrandom::getrandom(&mut b)?;
    Ok(format!("tpd.{}", data_encoding::BASE64URL_NOPAD.encode(&b)))
}

/// Makes a token with the `root` policy, no expiry and the entity `root`, and stores its
/// hash. Returns the token itself, to be shown once.
pub async fn create_root_token(store: &dyn Store, now: i64) -> Result<String, AuthError> {
    let token = new_token().map_err(|_| AuthError::Rng)?;
    store
        .create_token(&crate::store::TokenRecord {
            hash: hash_token(&token),
            accessor: uuid::Uuid::new_v4().simple().to_string(),
            entity_id: ROOT.into(),
            display_name: ROOT.into(),
            policies: vec![ROOT.into()],
            created_at: now,
            expires_at: None,
            parent: None,
            // As Vault's root token: nothing to renew.
            renewable: false,
            creation_ttl: 0,
            explicit_max_ttl: 0,
            last_renewal: None,
        })
        .await?;
    Ok(token)
}

/// Tokens carry 256 random bits, so a fast hash is the right way to store them.
pub fn hash_token(token: &str) -> String {
    data_encoding::HEXLOWER.encode(&Sha256::digest(token.as_bytes()))
}

/// The token in `X-Vault-Token`, `Authorization: Bearer T` or `Authorization: Token T`.
pub fn token_from_headers(h: &HeaderMap) -> Option<String> {
    if let Some(v) = h.get("x-vault-token").and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        if !v.is_empty() {
            return Some(v.to_string());
        }
    }
    let auth = h.get(http::header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = auth.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token") {
        let t = rest.trim();
        (!t.is_empty()).then(|| t.to_string())
    } else {
        None
    }
}

/// Works out who is calling: the token if one was sent, else the socket peer's uid.
/// Over TCP a token is required. A token's caller comes from `cache` while the store's
/// [`Store::auth_generation`] says nothing changed (see [`cache`]).
pub async fn resolve(
    store: &dyn Store,
    cache: &cache::Cache,
    peer: Peer,
    token: Option<String>,
    daemon_uid: u32,
    now: i64,
) -> Result<Arc<Caller>, AuthError> {
    match (token, peer) {
        (Some(t), _) => {
            let hash = hash_token(&t);
            // Read before the token and its policies: see the cache's documentation.
            let generation = store.auth_generation();
            if let Some(hit) = generation.and_then(|g| cache.get(&hash, g, now)) {
                return Ok(hit);
            }
            let rec = store
                .get_token(&hash, now)
                .await?
                .ok_or(AuthError::Denied)?;
            let acl = build_acl(store, &rec.policies).await?;
            let caller = Arc::new(Caller {
                entity_id: rec.entity_id,
                policies: rec.policies,
                token: Some(TokenInfo {
                    hash: rec.hash,
                    accessor: rec.accessor,
                    display_name: rec.display_name,
                    created_at: rec.created_at,
                    expires_at: rec.expires_at,
                }),
                acl: Arc::new(acl),
            });
            if let Some(g) = generation {
                cache.put(hash, g, caller.clone());
            }
            Ok(caller)
        }
        (None, Peer::Unix { uid: Some(uid) }) => {
            let (policies, acl) = if uid == 0 || uid == daemon_uid {
                (vec![ROOT.to_string()], ROOT_ACL.clone())
            } else {
                (vec![DEFAULT.to_string()], DEFAULT_ACL.clone())
            };
            Ok(Arc::new(Caller {
                entity_id: format!("uid:{uid}"),
                policies,
                token: None,
                acl,
            }))
        }
        (None, _) => Err(AuthError::Denied),
    }
}

/// The ACLs of the built-in policies, made once: they never change.
static ROOT_ACL: LazyLock<Arc<Acl>> = LazyLock::new(|| Arc::new(Acl::root()));
static DEFAULT_ACL: LazyLock<Arc<Acl>> = LazyLock::new(|| {
    let mut acl = Acl::default();
    acl.merge(&default_policy());
    Arc::new(acl)
});

/// Merges the named policies. Unknown names grant nothing, as in Vault.
async fn build_acl(store: &dyn Store, names: &[String]) -> Result<Acl, AuthError> {
    if names.iter().any(|n| n == ROOT) {
        return Ok(Acl::root());
    }
    let mut acl = Acl::default();
    if names.iter().any(|n| n == DEFAULT) {
        acl.merge(&DEFAULT_POLICY_PARSED);
    }
    let stored: Vec<String> = names.iter().filter(|n| *n != DEFAULT).cloned().collect();
    if !stored.is_empty() {
        for (name, text) in store.get_policies(&stored).await? {
            let p = Policy::from_text(&text).map_err(|e| AuthError::BadPolicy(name, e))?;
            acl.merge(&p);
        }
    }
    Ok(acl)
}

/// The `default` policy, parsed once.
static DEFAULT_POLICY_PARSED: LazyLock<Policy> = LazyLock::new(default_policy);

fn default_policy() -> Policy {
    // The constant is checked by a unit test, so this cannot fail at run time.
    serde_json::from_str(DEFAULT_POLICY)
        .ok()
        .and_then(|v| Policy::parse(&v).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_parses_and_grants_only_own_paths() {
        let v: serde_json::Value = serde_json::from_str(DEFAULT_POLICY).unwrap();
        let p = Policy::parse(&v).unwrap();
        let mut a = Acl::default();
        a.merge(&p);
        assert!(a.allows("auth/token/lookup-self", Capability::Read));
        assert!(a.allows("api/v2/totp/secrets", Capability::Create));
        assert!(a.allows("identity/mfa/method/totp/generate", Capability::Update));
        assert!(!a.allows(
            "identity/mfa/method/totp/admin-generate",
            Capability::Update
        ));
        assert!(!a.allows("identity/mfa/method/totp", Capability::Create));
        assert!(!a.allows("sys/policies/acl/x", Capability::Update));
        assert!(!a.allows("auth/token/create", Capability::Update));
    }

    #[test]
    fn token_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(token_from_headers(&h), None);
        h.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(token_from_headers(&h).as_deref(), Some("abc"));
        h.insert("authorization", "Token def".parse().unwrap());
        assert_eq!(token_from_headers(&h).as_deref(), Some("def"));
        h.insert("authorization", "Basic xyz".parse().unwrap());
        assert_eq!(token_from_headers(&h), None);
        h.insert("x-vault-token", "ghi".parse().unwrap());
        assert_eq!(token_from_headers(&h).as_deref(), Some("ghi"));
    }

    #[test]
    fn tokens_are_long_random_and_hashed() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_ne!(a, b);
        assert!(a.len() >= 4 + 43);
        assert_eq!(hash_token(&a).len(), 64);
        assert_ne!(hash_token(&a), hash_token(&b));
    }

    #[test]
    fn acl_paths() {
        assert_eq!(acl_path("/v1/sys/policies/acl/x"), "sys/policies/acl/x");
        assert_eq!(acl_path("/api/v2/totp/secrets"), "api/v2/totp/secrets");
    }
}

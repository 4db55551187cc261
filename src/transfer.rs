//! Moving TOTP secrets out of totpd and between totpd instances: the transfer document
//! (what `POST /v1/sys/export` answers and `POST /v1/sys/import` takes), and the two
//! file formats `totpd export` writes and `totpd import` reads. Pure: no HTTP, no SQL,
//! no clock.
//!
//! # The transfer document (JSON, version 1)
//!
//! ```json
//! {"version": 1, "exported_at": "2025-06-01T12:00:00Z", "scope": {"all": true},
//!  "methods": [{"method_id": "5d2e...", "method_name": "acme", "issuer": "Acme",
//!               "algorithm": "SHA1", "digits": 6, "period": 30, "key_size": 20,
//!               "qr_size": 200, "skew": 1, "max_validation_attempts": 5,
//!               "created_at": 1748779200}],
//!  "secrets": [
//!    {"kind": "vault_mfa", "entity_id": "alice", "method_id": "5d2e...", ...},
//!    {"kind": "agent", "entity_id": "uid:1000", "id": "0b7c...", "label": "ci-bot",
//!     "issuer": "GitHub", ...},
//!    {"kind": "user_totp", "entity_id": "alice", "device": "default", "active": true,
//!     "issuer": "totpd", ...},
//!    {"kind": "vault_totp", "mount": "totp", "name": "deploy", "issuer": "Acme",
//!     "account_name": "ops@example.com", "skew": 1, ...}],
//!  "recovery_codes": [{"entity_id": "alice", "selector": "K3M9", "hash": "$argon2id$..."}]}
//! ```
//!
//! Every secret also has `secret` (base32, no padding), `algorithm`, `digits`, `period`,
//! `last_step` (the last accepted time step, or null: carried over so that a code spent
//! before the export stays spent after the import) and `created_at` (unix seconds).
//! A `vault_totp` secret is a key of Vault's TOTP secrets engine: it belongs to its
//! mount, not to an entity, so it has no `entity_id`; its `mount` and `name` say where
//! it goes (an import takes the mount as it is, served by the daemon or not), and its
//! `issuer`, `account_name` and `skew` (0 or 1) are what the engine's `read` shows. Only
//! an export of everything (`{"all": true}`) holds engine keys.
//! Recovery codes are the unspent ones of login-step users with an active device, as
//! stored: argon2id hashes, never the codes.
//!
//! # Format `uris`: otpauth URIs, one per line
//!
//! Each line is a Key Uri Format URI an authenticator app reads
//! (`otpauth://totp/ISSUER:ACCOUNT?algorithm=..&digits=..&issuer=..&period=..&secret=..`),
//! followed by `totpd_*` query parameters that apps ignore and `totpd import` reads
//! (see [`uri_line`]). An engine key's line is
//! `otpauth://totp/ISSUER:ACCOUNT?...&totpd_kind=vault_totp&totpd_mount=..&totpd_name=..&totpd_skew=..`
//! (its issuer and account name are the label's, read exactly). An import ignores
//! blank lines and lines starting with `#`; a line without `totpd_kind` (any app's or
//! service's URI) becomes an agent secret.
//!
//! # Format `bundle`: the document, encrypted
//!
//! ```text
//! totpd-bundle v1
//! kdf: argon2id v=19 m=65536 t=3 p=4
//! salt: <base64, 16 random bytes>
//! cipher: xchacha20poly1305
//! nonce: <base64, 24 random bytes>
//!
//! <base64 of the ciphertext and its 16-byte tag, 76 characters a line>
//! ```
//!
//! The key is argon2id (RFC 9106's second recommended setting: 64 MiB, 3 passes, 4
//! lanes) of the passphrase with the salt, 32 bytes; the plaintext is the document as
//! JSON; the associated data is the header: every byte up to and including the blank
//! line, so a header changed by a byte does not open either. Another version on the first
//! line is refused, never guessed at.

use std::collections::{BTreeMap, HashSet};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

use crate::otp::{self, uri, Params};

/// The version of the transfer document this totpd writes and reads.
pub const VERSION: u32 = 1;

// ----- the document -----

/// The transfer document (see the module's documentation). Its secrets are in clear:
/// its `Debug` shows none.
#[derive(Serialize, Deserialize, Default)]
pub struct Document {
    /// [`VERSION`].
    pub version: u32,
    /// When the daemon answered the export (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exported_at: Option<String>,
    /// What was exported: `{"all": true}` or `{"entity_id": "..."}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<serde_json::Value>,
    #[serde(default)]
    pub methods: Vec<MethodDoc>,
    #[serde(default)]
    pub secrets: Vec<SecretDoc>,
    #[serde(default)]
    pub recovery_codes: Vec<RecoveryDoc>,
}

/// A Vault identity MFA method's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MethodDoc {
    pub method_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method_name: Option<String>,
    pub issuer: String,
    pub algorithm: String,
    pub digits: i64,
    pub period: i64,
    pub key_size: i64,
    pub qr_size: i64,
    pub skew: i64,
    pub max_validation_attempts: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<i64>,
}

/// Which surface holds a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A Vault identity MFA enrolment (`method_id`, `entity_id`).
    VaultMfa,
    /// An agent secret (`entity_id`, `id`, `label`, `issuer`).
    Agent,
    /// A device of a login-step user (`entity_id`, `device`, `active`).
    UserTotp,
    /// A key of Vault's TOTP secrets engine (`mount`, `name`, `issuer`, `account_name`,
    /// `skew`); no entity holds it.
    VaultTotp,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::VaultMfa => "vault_mfa",
            Kind::Agent => "agent",
            Kind::UserTotp => "user_totp",
            Kind::VaultTotp => "vault_totp",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        match s {
            "vault_mfa" => Some(Kind::VaultMfa),
            "agent" => Some(Kind::Agent),
            "user_totp" => Some(Kind::UserTotp),
            "vault_totp" => Some(Kind::VaultTotp),
            _ => None,
        }
    }
}

/// One secret and who holds it. The fields a kind does not use are absent. Its `Debug`
/// leaves `secret` (the seed) out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretDoc {
    pub kind: Kind,
    /// The holder; absent: the import's `entity_id` (or the importing caller's). None
    /// for `vault_totp` (an engine key belongs to its mount).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_id: Option<String>,
    /// `vault_mfa`: the method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method_id: Option<String>,
    /// `agent`: the secret's id (absent: a new one is made).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `agent`: its label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// `agent`: its issuer. `user_totp`: the issuer of the login step's URIs (written by
    /// an export for the URIs, not read by an import). `vault_totp`: the key's issuer
    /// (absent: empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// `user_totp`: the device's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// `user_totp`: activated (logs in) or pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
    /// `vault_totp`: the engine's mount holding the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
    /// `vault_totp`: the key's name in its mount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `vault_totp`: the key's account name (absent: empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_name: Option<String>,
    /// `vault_totp`: steps accepted either side of the current one (0 or 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skew: Option<i64>,
    /// The seed, base32 without padding.
    pub secret: String,
    pub algorithm: String,
    pub digits: i64,
    pub period: i64,
    #[serde(default)]
    pub last_step: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<i64>,
}

impl std::fmt::Debug for Document {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Document")
            .field("version", &self.version)
            .field("methods", &self.methods)
            .field("secrets", &self.secrets)
            .field("recovery_codes", &self.recovery_codes.len())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for SecretDoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretDoc")
            .field("kind", &self.kind)
            .field("entity_id", &self.entity_id)
            .field("method_id", &self.method_id)
            .field("id", &self.id)
            .field("device", &self.device)
            .field("mount", &self.mount)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// An unspent recovery code of a login-step user, as stored (an argon2id hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryDoc {
    pub entity_id: String,
    pub selector: String,
    pub hash: String,
}

// ----- format `uris` -----

/// Why a line of a URI file was refused. Never holds the line (it holds a seed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct LineError {
    pub line: usize,
    pub reason: String,
}

/// The query parameters totpd adds, by kind, besides `totpd_kind` and `totpd_last_step`
/// (every kind).
const VAULT_MFA_PARAMS: &[&str] = &[
    "totpd_entity",
    "totpd_method",
    "totpd_method_name",
    "totpd_key_size",
    "totpd_qr_size",
    "totpd_skew",
    "totpd_max_attempts",
    "totpd_method_algorithm",
    "totpd_method_digits",
    "totpd_method_period",
];
const AGENT_PARAMS: &[&str] = &["totpd_entity", "totpd_id", "totpd_label"];
const USER_TOTP_PARAMS: &[&str] = &["totpd_entity", "totpd_device", "totpd_active"];
const VAULT_TOTP_PARAMS: &[&str] = &["totpd_mount", "totpd_name", "totpd_skew"];
const COMMON_PARAMS: &[&str] = &["totpd_kind", "totpd_last_step"];

/// The otpauth URI of `s`, with the totpd parameters an import needs to put it back
/// where it was: `totpd_kind` (`vault_mfa`, `agent`, `user_totp`, `vault_totp`),
/// `totpd_entity` (every kind but `vault_totp`), and `totpd_last_step` when a step was
/// accepted; for `vault_mfa` the method's id
/// (`totpd_method`), name (`totpd_method_name`, when it has one) and configuration
/// (`totpd_key_size`, `totpd_qr_size`, `totpd_skew`, `totpd_max_attempts`, and
/// `totpd_method_algorithm`/`_digits`/`_period` where the method's differ from the
/// secret's); for `agent` its id (`totpd_id`) and exact label (`totpd_label`); for
/// `user_totp` the device's name (`totpd_device`) and `totpd_active` (`true`/`false`);
/// for `vault_totp` the key's mount (`totpd_mount`), name (`totpd_name`) and skew
/// (`totpd_skew`).
///
/// The label an app shows is `ISSUER:ACCOUNT`: the method's issuer and the entity
/// (`vault_mfa`, as Vault's `generate` makes it), the secret's issuer and label
/// (`agent`), the login step's issuer and the user (`user_totp`), the key's issuer and
/// account name (`vault_totp`, as the engine's URL shows them; an import reads them
/// back from the label exactly). `None` when `s` is not what an export makes (its seed
/// is not base32, its method is not in `doc`, a field its kind needs is missing).
pub fn uri_line(doc: &Document, s: &SecretDoc) -> Option<String> {
    let secret = otp::decode_base32(&s.secret)?;
    let params = Params::new(&s.algorithm, s.digits, s.period).ok()?;
    let entity = s.entity_id.as_deref().unwrap_or_default();
    let mut extra = url::form_urlencoded::Serializer::new(String::new());
    extra.append_pair("totpd_kind", s.kind.as_str());
    if s.kind != Kind::VaultTotp {
        extra.append_pair("totpd_entity", entity);
    }
    if let Some(step) = s.last_step {
        extra.append_pair("totpd_last_step", &step.to_string());
    }
    let (issuer, account) = match s.kind {
        Kind::VaultMfa => {
            let id = s.method_id.as_deref()?;
            let m = doc.methods.iter().find(|m| m.method_id == id)?;
            extra.append_pair("totpd_method", id);
            if let Some(n) = &m.method_name {
                extra.append_pair("totpd_method_name", n);
            }
            extra.append_pair("totpd_key_size", &m.key_size.to_string());
            extra.append_pair("totpd_qr_size", &m.qr_size.to_string());
            extra.append_pair("totpd_skew", &m.skew.to_string());
            extra.append_pair("totpd_max_attempts", &m.max_validation_attempts.to_string());
            if !m.algorithm.eq_ignore_ascii_case(params.algorithm.as_str()) {
                extra.append_pair("totpd_method_algorithm", &m.algorithm);
            }
            if m.digits != i64::from(params.digits) {
                extra.append_pair("totpd_method_digits", &m.digits.to_string());
            }
            if m.period != params.period as i64 {
                extra.append_pair("totpd_method_period", &m.period.to_string());
            }
            (m.issuer.clone(), entity.to_string())
        }
        Kind::Agent => {
            let label = s.label.as_deref()?;
            if let Some(id) = &s.id {
                extra.append_pair("totpd_id", id);
            }
            extra.append_pair("totpd_label", label);
            (s.issuer.clone().unwrap_or_default(), label.to_string())
        }
        Kind::UserTotp => {
            extra.append_pair("totpd_device", s.device.as_deref()?);
            let active = if s.active? { "true" } else { "false" };
            extra.append_pair("totpd_active", active);
            (s.issuer.clone().unwrap_or_default(), entity.to_string())
        }
        Kind::VaultTotp => {
            extra.append_pair("totpd_mount", s.mount.as_deref()?);
            extra.append_pair("totpd_name", s.name.as_deref()?);
            extra.append_pair("totpd_skew", &s.skew?.to_string());
            (
                s.issuer.clone().unwrap_or_default(),
                s.account_name.clone().unwrap_or_default(),
            )
        }
    };
    let base = uri::build(&issuer, &account, &secret, &params);
    Some(format!("{base}&{}", extra.finish()))
}

/// Reads a URI file: one otpauth URI per line, blank lines and `#` comments ignored.
/// Lines with `totpd_kind` go back where they were exported from; the others become
/// agent secrets of the import's entity. The methods of `vault_mfa` lines are gathered
/// (one per id; lines naming one id with two configurations are refused).
pub fn parse_uris(text: &str) -> Result<Document, LineError> {
    let mut doc = Document {
        version: VERSION,
        ..Document::default()
    };
    let mut methods: BTreeMap<String, (usize, MethodDoc)> = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let err = |reason: String| LineError { line, reason };
        let (secret, method) = parse_line(l).map_err(err)?;
        if let Some(m) = method {
            match methods.get(&m.method_id) {
                Some((first, known)) if *known != m => {
                    return Err(err(format!(
                        "method {} is given with another configuration on line {first}",
                        m.method_id
                    )))
                }
                Some(_) => {}
                None => {
                    methods.insert(m.method_id.clone(), (line, m));
                }
            }
        }
        doc.secrets.push(secret);
    }
    let mut methods: Vec<(usize, MethodDoc)> = methods.into_values().collect();
    methods.sort_by_key(|(line, _)| *line);
    doc.methods = methods.into_iter().map(|(_, m)| m).collect();
    Ok(doc)
}

/// One line: a plain URI through [`uri::parse`], or one with `totpd_kind` from its
/// query parameters alone (its label is for apps to show: the parameters say exactly
/// who holds it).
fn parse_line(l: &str) -> Result<(SecretDoc, Option<MethodDoc>), String> {
    let url = url::Url::parse(l).map_err(|_| "not an otpauth URI".to_string())?;
    let mut q: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in url.query_pairs() {
        let key = k.to_ascii_lowercase();
        if q.insert(key.clone(), v.into_owned()).is_some() {
            return Err(format!("the parameter {key:?} is given more than once"));
        }
    }
    let Some(kind) = q.get("totpd_kind").cloned() else {
        if let Some(k) = q.keys().find(|k| k.starts_with("totpd_")) {
            return Err(format!("{k} without totpd_kind"));
        }
        let k = uri::parse(l).map_err(|e| e.to_string())?;
        return Ok((
            SecretDoc {
                kind: Kind::Agent,
                entity_id: None,
                method_id: None,
                id: None,
                label: Some(k.label),
                issuer: k.issuer,
                device: None,
                active: None,
                mount: None,
                name: None,
                account_name: None,
                skew: None,
                secret: otp::encode_base32(&k.secret),
                algorithm: k.params.algorithm.as_str().into(),
                digits: k.params.digits.into(),
                period: k.params.period as i64,
                last_step: None,
                created_at: None,
            },
            None,
        ));
    };
    let kind = Kind::parse(&kind)
        .ok_or("totpd_kind must be vault_mfa, agent, user_totp or vault_totp".to_string())?;
    if !url.scheme().eq_ignore_ascii_case("otpauth")
        || !url
            .host_str()
            .is_some_and(|h| h.eq_ignore_ascii_case("totp"))
    {
        return Err("not an otpauth://totp URI".into());
    }
    let own = match kind {
        Kind::VaultMfa => VAULT_MFA_PARAMS,
        Kind::Agent => AGENT_PARAMS,
        Kind::UserTotp => USER_TOTP_PARAMS,
        Kind::VaultTotp => VAULT_TOTP_PARAMS,
    };
    if let Some(k) = q
        .keys()
        .filter(|k| k.starts_with("totpd_"))
        .find(|k| !COMMON_PARAMS.contains(&k.as_str()) && !own.contains(&k.as_str()))
    {
        return Err(format!(
            "{k} is not a parameter of a {} secret (made by a newer totpd?)",
            kind.as_str()
        ));
    }
    let get = |k: &str| q.get(k).map(String::as_str);
    let need = |k: &str| get(k).ok_or_else(|| format!("{k} is missing"));
    let int = |k: &str| -> Result<i64, String> {
        need(k)?
            .trim()
            .parse()
            .map_err(|_| format!("{k} must be a whole number"))
    };
    let seed = otp::decode_base32(get("secret").ok_or("uri: secret is missing")?)
        .ok_or("uri: secret is not valid base32")?;
    let params = Params::new(
        get("algorithm").unwrap_or("SHA1"),
        get("digits").map_or(Ok(6), |_| int("digits"))?,
        get("period").map_or(Ok(30), |_| int("period"))?,
    )
    .map_err(|e| format!("uri: {e}"))?;
    let last_step = match get("totpd_last_step") {
        Some(_) => Some(int("totpd_last_step")?),
        None => None,
    };
    let issuer = get("issuer")
        .map(|i| i.trim().to_string())
        .filter(|i| !i.is_empty());
    let entity_id = match kind {
        Kind::VaultTotp => None,
        _ => Some(need("totpd_entity")?.to_string()),
    };
    let mut s = SecretDoc {
        kind,
        entity_id,
        method_id: None,
        id: None,
        label: None,
        issuer: None,
        device: None,
        active: None,
        mount: None,
        name: None,
        account_name: None,
        skew: None,
        secret: otp::encode_base32(&seed),
        algorithm: params.algorithm.as_str().into(),
        digits: params.digits.into(),
        period: params.period as i64,
        last_step,
        created_at: None,
    };
    let mut method = None;
    match kind {
        Kind::VaultMfa => {
            let id = need("totpd_method")?.to_string();
            let or_secret = |k: &str, v: i64| get(k).map_or(Ok(v), |_| int(k));
            method = Some(MethodDoc {
                method_id: id.clone(),
                method_name: get("totpd_method_name").map(str::to_string),
                issuer: issuer.ok_or("issuer is missing")?,
                algorithm: get("totpd_method_algorithm")
                    .unwrap_or(params.algorithm.as_str())
                    .to_string(),
                digits: or_secret("totpd_method_digits", params.digits.into())?,
                period: or_secret("totpd_method_period", params.period as i64)?,
                key_size: int("totpd_key_size")?,
                qr_size: int("totpd_qr_size")?,
                skew: int("totpd_skew")?,
                max_validation_attempts: int("totpd_max_attempts")?,
                created_at: None,
            });
            s.method_id = Some(id);
        }
        Kind::Agent => {
            s.id = get("totpd_id").map(str::to_string);
            s.label = Some(need("totpd_label")?.to_string());
            s.issuer = issuer;
        }
        Kind::UserTotp => {
            s.device = Some(need("totpd_device")?.to_string());
            s.active = Some(match need("totpd_active")? {
                "true" => true,
                "false" => false,
                _ => return Err("totpd_active must be true or false".into()),
            });
            s.issuer = issuer;
        }
        Kind::VaultTotp => {
            s.mount = Some(need("totpd_mount")?.to_string());
            s.name = Some(need("totpd_name")?.to_string());
            s.skew = Some(match int("totpd_skew")? {
                n @ (0 | 1) => n,
                _ => return Err("totpd_skew must be 0 or 1".into()),
            });
            let (label_issuer, account) = label_parts(&url)?;
            // The engine's fields as they are: an issuer or account name may be empty,
            // or hold spaces and colons.
            s.issuer = Some(
                get("issuer")
                    .map(str::to_string)
                    .or(label_issuer)
                    .unwrap_or_default(),
            );
            s.account_name = Some(account);
        }
    }
    Ok((s, method))
}

/// The issuer (if any) and account of a URI's label, exactly as [`uri::build`] wrote
/// them: each is %-encoded, colons included, so the first literal `:` parts them.
fn label_parts(url: &url::Url) -> Result<(Option<String>, String), String> {
    let raw = url.path().strip_prefix('/').unwrap_or(url.path());
    let decode = |part: &str| {
        percent_encoding::percent_decode_str(part)
            .decode_utf8()
            .map(|p| p.into_owned())
            .map_err(|_| "uri: the label is not UTF-8".to_string())
    };
    Ok(match raw.split_once(':') {
        Some((issuer, account)) => (Some(decode(issuer)?), decode(account)?),
        None => (None, decode(raw)?),
    })
}

// ----- format `bundle` -----

/// The first word of a bundle file, whatever its version.
pub const BUNDLE_MAGIC: &str = "totpd-bundle";
/// The first line of a bundle this totpd writes and reads.
pub const BUNDLE_HEADER: &str = "totpd-bundle v1";

/// argon2id's cost: RFC 9106's second recommended setting (64 MiB, 3 passes, 4 lanes).
pub const KDF_MEMORY_KIB: u32 = 64 * 1024;
pub const KDF_PASSES: u32 = 3;
pub const KDF_LANES: u32 = 4;
/// The most a bundle's header may ask of the machine that opens it.
const MAX_KDF_MEMORY_KIB: u32 = 1024 * 1024;
const MAX_KDF_PASSES: u32 = 16;
const MAX_KDF_LANES: u32 = 16;
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 24;
/// Base64 characters per line of a bundle's body.
const LINE: usize = 76;

/// Why a bundle could not be made or opened. Never holds the passphrase or plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// The passphrase is wrong, or a byte of the file changed.
    #[error("the bundle does not open with this passphrase (or it is damaged)")]
    Open,
    #[error("not a totpd bundle: {0}")]
    Format(String),
    #[error("{0:?} is not a bundle format this totpd reads (it reads `{BUNDLE_HEADER}`)")]
    Version(String),
    #[error("the key derivation failed: {0}")]
    Kdf(String),
    #[error("random number generator failed")]
    Rng,
}

/// Whether `bytes` look like a bundle (of any version): its first word.
pub fn is_bundle(bytes: &[u8]) -> bool {
    bytes.starts_with(BUNDLE_MAGIC.as_bytes())
}

/// argon2id's cost, as a bundle's `kdf:` line gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Kdf {
    memory_kib: u32,
    passes: u32,
    lanes: u32,
}

impl Kdf {
    fn key(&self, passphrase: &[u8], salt: &[u8]) -> Result<[u8; 32], BundleError> {
        let params = argon2::Params::new(self.memory_kib, self.passes, self.lanes, Some(32))
            .map_err(|e| BundleError::Kdf(e.to_string()))?;
        let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut key = [0u8; 32];
        a.hash_password_into(passphrase, salt, &mut key)
            .map_err(|e| BundleError::Kdf(e.to_string()))?;
        Ok(key)
    }
}

/// Encrypts `plain` (the document as JSON) under `passphrase` into a bundle file.
pub fn seal_bundle(plain: &[u8], passphrase: &[u8]) -> Result<String, BundleError> {
    let kdf = Kdf {
        memory_kib: KDF_MEMORY_KIB,
        passes: KDF_PASSES,
        lanes: KDF_LANES,
    };
    let mut salt = [0u8; SALT_LEN];
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::getrandom(&mut salt).map_err(|_| BundleError::Rng)?;
    getrandom::getrandom(&mut nonce).map_err(|_| BundleError::Rng)?;
    let b64 = &data_encoding::BASE64;
    let header = format!(
        "{BUNDLE_HEADER}\nkdf: argon2id v=19 m={} t={} p={}\nsalt: {}\ncipher: xchacha20poly1305\nnonce: {}\n\n",
        kdf.memory_kib,
        kdf.passes,
        kdf.lanes,
        b64.encode(&salt),
        b64.encode(&nonce)
    );
    let key = kdf.key(passphrase, &salt)?;
    let sealed = XChaCha20Poly1305::new(&key.into())
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plain,
                aad: header.as_bytes(),
            },
        )
        .map_err(|_| BundleError::Open)?;
    let body = b64.encode(&sealed);
    let mut out = header;
    for chunk in body.as_bytes().chunks(LINE) {
        // Base64 is ASCII: every chunk is text.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    Ok(out)
}

/// Decrypts a bundle file into the document's JSON.
pub fn open_bundle(file: &[u8], passphrase: &[u8]) -> Result<Vec<u8>, BundleError> {
    let fmt = |m: &str| BundleError::Format(m.to_string());
    let split = file
        .windows(2)
        .position(|w| w == b"\n\n")
        .ok_or_else(|| fmt("no blank line after the header"))?;
    let (header, body) = file.split_at(split + 2);
    let text = std::str::from_utf8(header).map_err(|_| fmt("the header is not text"))?;
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default();
    if first != BUNDLE_HEADER {
        return Err(match first.strip_prefix(BUNDLE_MAGIC) {
            Some(_) => BundleError::Version(first.chars().take(40).collect()),
            None => fmt("the first line is not `totpd-bundle v1`"),
        });
    }
    let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
    for (n, l) in lines.enumerate().map(|(i, l)| (i + 2, l)) {
        if l.is_empty() {
            continue;
        }
        let (k, v) = l
            .split_once(": ")
            .ok_or_else(|| BundleError::Format(format!("header line {n} is not `name: value`")))?;
        if !["kdf", "salt", "cipher", "nonce"].contains(&k) {
            return Err(BundleError::Format(format!(
                "header line {n}: unknown field {k:?}"
            )));
        }
        if fields.insert(k, v).is_some() {
            return Err(BundleError::Format(format!(
                "header line {n}: {k} is given twice"
            )));
        }
    }
    let field = |k: &str| {
        fields
            .get(k)
            .copied()
            .ok_or_else(|| BundleError::Format(format!("the header has no {k}")))
    };
    if field("cipher")? != "xchacha20poly1305" {
        return Err(fmt("cipher: only xchacha20poly1305 is read"));
    }
    let kdf = parse_kdf(field("kdf")?)?;
    let b64 = &data_encoding::BASE64;
    let salt = b64
        .decode(field("salt")?.as_bytes())
        .ok()
        .filter(|s| (SALT_LEN..=64).contains(&s.len()))
        .ok_or_else(|| fmt("salt: not 16 to 64 bytes of base64"))?;
    let nonce = b64
        .decode(field("nonce")?.as_bytes())
        .ok()
        .filter(|n| n.len() == NONCE_LEN)
        .ok_or_else(|| fmt("nonce: not 24 bytes of base64"))?;
    let armored: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let sealed = b64
        .decode(&armored)
        .map_err(|_| fmt("the body is not base64"))?;
    let key = kdf.key(passphrase, &salt)?;
    XChaCha20Poly1305::new(&key.into())
        .decrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &sealed,
                aad: header,
            },
        )
        .map_err(|_| BundleError::Open)
}

/// `argon2id v=19 m=N t=N p=N`, within what a machine can be asked for.
fn parse_kdf(v: &str) -> Result<Kdf, BundleError> {
    let bad = |m: String| BundleError::Format(format!("kdf: {m}"));
    let mut words = v.split(' ');
    if words.next() != Some("argon2id") {
        return Err(bad("only argon2id is read".into()));
    }
    let mut seen = HashSet::new();
    let (mut version, mut m, mut t, mut p) = (None, None, None, None);
    for w in words {
        let (k, n) = w
            .split_once('=')
            .ok_or_else(|| bad(format!("{w:?} is not name=number")))?;
        let n: u32 = n.parse().map_err(|_| bad(format!("{k} is not a number")))?;
        if !seen.insert(k) {
            return Err(bad(format!("{k} is given twice")));
        }
        match k {
            "v" => version = Some(n),
            "m" => m = Some(n),
            "t" => t = Some(n),
            "p" => p = Some(n),
            other => return Err(bad(format!("unknown parameter {other:?}"))),
        }
    }
    if version != Some(0x13) {
        return Err(bad("only argon2 version 19 is read".into()));
    }
    let (Some(memory_kib), Some(passes), Some(lanes)) = (m, t, p) else {
        return Err(bad("m, t and p are all needed".into()));
    };
    if !(1..=MAX_KDF_LANES).contains(&lanes)
        || !(1..=MAX_KDF_PASSES).contains(&passes)
        || !(8 * lanes..=MAX_KDF_MEMORY_KIB).contains(&memory_kib)
    {
        return Err(bad(format!(
            "costs out of bounds (m at most {MAX_KDF_MEMORY_KIB}, t at most {MAX_KDF_PASSES}, p at most {MAX_KDF_LANES})"
        )));
    }
    Ok(Kdf {
        memory_kib,
        passes,
        lanes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn method() -> MethodDoc {
        MethodDoc {
            method_id: "5d2e6c1e-8f43-4a43-9a43-3b6f6f3a1c10".into(),
            method_name: Some("acme login".into()),
            issuer: "Acme Corp".into(),
            algorithm: "SHA256".into(),
            digits: 8,
            period: 60,
            key_size: 20,
            qr_size: 200,
            skew: 1,
            max_validation_attempts: 5,
            created_at: Some(1),
        }
    }

    fn secret(kind: Kind) -> SecretDoc {
        SecretDoc {
            kind,
            entity_id: Some("uid:1000".into()),
            method_id: None,
            id: None,
            label: None,
            issuer: None,
            device: None,
            active: None,
            mount: None,
            name: None,
            account_name: None,
            skew: None,
            secret: otp::encode_base32(b"0123456789abcdefghij"),
            algorithm: "SHA1".into(),
            digits: 6,
            period: 30,
            last_step: Some(56_666_666),
            created_at: Some(7),
        }
    }

    fn doc() -> Document {
        let mut mfa = secret(Kind::VaultMfa);
        mfa.method_id = Some(method().method_id);
        let mut agent = secret(Kind::Agent);
        agent.id = Some("0b7c31c2-8d3e-4e8e-9a1d-1f0e7c9d2a11".into());
        agent.label = Some("ci:bot & more".into());
        agent.issuer = Some("Git:Hub".into());
        agent.last_step = None;
        let mut user = secret(Kind::UserTotp);
        user.device = Some("backup phone".into());
        user.active = Some(false);
        user.issuer = Some("totpd".into());
        Document {
            version: VERSION,
            methods: vec![method()],
            secrets: vec![
                mfa,
                agent,
                user,
                engine_key("Acme Corp", "ops:deploy@example.com"),
            ],
            ..Document::default()
        }
    }

    /// A key of the TOTP engine's mount `totp-prod`.
    fn engine_key(issuer: &str, account_name: &str) -> SecretDoc {
        let mut k = secret(Kind::VaultTotp);
        k.entity_id = None;
        k.mount = Some("totp-prod".into());
        k.name = Some("deploy.key@ci".into());
        k.issuer = Some(issuer.into());
        k.account_name = Some(account_name.into());
        k.skew = Some(1);
        k.algorithm = "SHA512".into();
        k.digits = 8;
        k
    }

    /// What a URI round trip keeps: everything but `created_at` (and the login step's
    /// issuer, which an import does not read).
    fn comparable(s: &SecretDoc) -> SecretDoc {
        let mut s = s.clone();
        s.created_at = None;
        if s.kind == Kind::UserTotp {
            s.issuer = None;
        }
        s
    }

    #[test]
    fn uri_lines_round_trip_every_kind() {
        let d = doc();
        let text: String = d
            .secrets
            .iter()
            .map(|s| uri_line(&d, s).unwrap() + "\n")
            .collect();
        // Apps read the standard part: each line is a URI otp::uri parses, label and all.
        let first = text.lines().next().unwrap();
        let k = uri::parse(first).unwrap();
        assert_eq!(
            (k.label.as_str(), k.issuer.as_deref()),
            ("uid:1000", Some("Acme Corp"))
        );
        let back = parse_uris(&format!("# a comment\n\n{text}")).unwrap();
        let want: Vec<SecretDoc> = d.secrets.iter().map(comparable).collect();
        let got: Vec<SecretDoc> = back.secrets.iter().map(comparable).collect();
        for (g, w) in got.iter().zip(&want) {
            assert!(g == w, "{} differs", w.kind.as_str());
        }
        assert_eq!(got.len(), want.len());
        let mut m = method();
        m.created_at = None;
        assert_eq!(back.methods, vec![m]);
    }

    #[test]
    fn engine_keys_round_trip_exactly_with_their_label() {
        for (issuer, account) in [
            ("Acme Corp", "ops@example.com"),
            ("", "ops: deploy"),
            ("Ac:me", " padded "),
            ("Acme", ""),
            ("", ""),
            ("Ünïcode & co", "a/b?c#d%41+e"),
        ] {
            let mut d = doc();
            let mut k = engine_key(issuer, account);
            k.last_step = None;
            k.skew = Some(0);
            d.secrets = vec![k.clone()];
            let line = uri_line(&d, &k).unwrap();
            assert!(
                line.contains("&totpd_kind=vault_totp&totpd_mount=totp-prod&totpd_name=deploy.key%40ci&totpd_skew=0"),
                "{line}"
            );
            assert!(!line.contains("totpd_entity"), "{line}");
            assert!(!line.contains("totpd_last_step"), "{line}");
            let back = parse_uris(&format!("{line}\n")).unwrap();
            assert!(back.methods.is_empty());
            assert_eq!(back.secrets.len(), 1);
            assert!(
                comparable(&back.secrets[0]) == comparable(&k),
                "{issuer:?} {account:?}: {:?} {:?} {:?}",
                back.secrets[0],
                back.secrets[0].issuer,
                back.secrets[0].account_name
            );
        }
        // Apps read the label as the engine's URL shows it.
        let d = doc();
        let k = &d.secrets[3];
        let line = uri_line(&d, k).unwrap();
        assert!(line.contains("totpd_last_step=56666666"), "{line}");
        let u = uri::parse(&line).unwrap();
        assert_eq!(
            (u.label.as_str(), u.issuer.as_deref()),
            ("ops:deploy@example.com", Some("Acme Corp"))
        );
        assert_eq!(u.secret, b"0123456789abcdefghij");
        // A key without its mount, name or skew is not written.
        for strip in [
            (|k: &mut SecretDoc| k.mount = None) as fn(&mut SecretDoc),
            |k| k.name = None,
            |k| k.skew = None,
        ] {
            let mut k = k.clone();
            strip(&mut k);
            assert_eq!(uri_line(&d, &k), None);
        }
    }

    #[test]
    fn bad_engine_key_lines_are_refused() {
        let d = doc();
        let line = uri_line(&d, &d.secrets[3]).unwrap();
        for (bad, why) in [
            (
                line.replace("&totpd_mount=totp-prod", ""),
                "totpd_mount is missing",
            ),
            (
                line.replace("&totpd_name=deploy.key%40ci", ""),
                "totpd_name is missing",
            ),
            (line.replace("&totpd_skew=1", ""), "totpd_skew is missing"),
            (line.replace("totpd_skew=1", "totpd_skew=2"), "0 or 1"),
            (line.replace("totpd_skew=1", "totpd_skew=x"), "whole number"),
            (
                format!("{line}&totpd_entity=alice"),
                "not a parameter of a vault_totp",
            ),
            (
                format!("{line}&totpd_device=d"),
                "not a parameter of a vault_totp",
            ),
        ] {
            let e = parse_uris(&bad).unwrap_err();
            assert_eq!(e.line, 1, "{bad}");
            assert!(e.reason.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn engine_key_fields_serialize_only_for_engine_keys() {
        let d = doc();
        let v = serde_json::to_value(&d.secrets).unwrap();
        for s in &v.as_array().unwrap()[..3] {
            for f in ["mount", "name", "account_name", "skew"] {
                assert!(s.get(f).is_none(), "{f} in {s}");
            }
        }
        let k = &v[3];
        assert_eq!(k["kind"], "vault_totp");
        assert!(k.get("entity_id").is_none(), "{k}");
        assert_eq!(
            (&k["mount"], &k["name"], &k["account_name"], &k["skew"]),
            (
                &serde_json::json!("totp-prod"),
                &serde_json::json!("deploy.key@ci"),
                &serde_json::json!("ops:deploy@example.com"),
                &serde_json::json!(1)
            )
        );
        let back: Vec<SecretDoc> = serde_json::from_value(v).unwrap();
        assert!(back == d.secrets);
    }

    #[test]
    fn a_plain_uri_is_an_agent_secret_of_nobody_yet() {
        let d = parse_uris("otpauth://totp/GitHub:ci-bot?secret=JBSWY3DPEHPK3PXP&issuer=GitHub\n")
            .unwrap();
        let s = &d.secrets[0];
        assert_eq!(s.kind, Kind::Agent);
        assert_eq!(s.entity_id, None);
        assert_eq!(
            (s.label.as_deref(), s.issuer.as_deref()),
            (Some("ci-bot"), Some("GitHub"))
        );
        assert_eq!((s.id.as_ref(), s.last_step), (None, None));
    }

    #[test]
    fn bad_lines_are_refused_by_number_without_their_text() {
        let seed = "JBSWY3DPEHPK3PXP";
        for (line, why) in [
            (format!("otpauth://totp/a?secret={seed}&totpd_entity=x"), "without totpd_kind"),
            (format!("otpauth://totp/a?secret={seed}&totpd_kind=hotp"), "totpd_kind"),
            (
                format!("otpauth://totp/a?secret={seed}&totpd_kind=agent&totpd_entity=e&totpd_label=l&totpd_device=d"),
                "not a parameter",
            ),
            (
                format!("otpauth://totp/a?secret={seed}&totpd_kind=agent&totpd_entity=e"),
                "totpd_label is missing",
            ),
            (
                format!("otpauth://totp/a?secret={seed}&totpd_kind=user_totp&totpd_entity=e&totpd_device=d&totpd_active=yes"),
                "true or false",
            ),
            (
                format!("otpauth://totp/a?secret={seed}&totpd_kind=agent&totpd_entity=e&totpd_label=l&totpd_last_step=x"),
                "whole number",
            ),
            (format!("otpauth://totp/a?secret={seed}&secret={seed}"), "more than once"),
            (format!("otpauth://totp/a?secret={seed}&digits=7"), "digits"),
            ("not a uri".to_string(), "otpauth"),
        ] {
            let e = parse_uris(&format!("\n{line}\n")).unwrap_err();
            assert_eq!(e.line, 2, "{line}");
            assert!(e.reason.contains(why), "{line}: {e}");
            assert!(!e.to_string().contains(seed), "{e}");
        }
    }

    #[test]
    fn one_method_with_two_configurations_is_refused() {
        let d = doc();
        let line = uri_line(&d, &d.secrets[0]).unwrap();
        let other = line.replace("totpd_skew=1", "totpd_skew=0");
        let e = parse_uris(&format!("{line}\n{other}\n")).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.reason.contains("line 1"), "{e}");
    }

    #[test]
    fn a_bundle_opens_with_its_passphrase_only_and_whole_only() {
        let plain = br#"{"version": 1}"#;
        let b = seal_bundle(plain, b"correct horse").unwrap();
        assert!(is_bundle(b.as_bytes()));
        assert!(b.starts_with("totpd-bundle v1\nkdf: argon2id v=19 m=65536 t=3 p=4\nsalt: "));
        assert!(b.lines().all(|l| l.len() <= 76));
        assert_eq!(open_bundle(b.as_bytes(), b"correct horse").unwrap(), plain);
        assert_eq!(
            open_bundle(b.as_bytes(), b"correct horsf"),
            Err(BundleError::Open)
        );
        // The header is authenticated: a cheaper kdf setting does not open either.
        let cheaper = b.replace("t=3", "t=2");
        assert_eq!(
            open_bundle(cheaper.as_bytes(), b"correct horse"),
            Err(BundleError::Open)
        );
        // A changed byte of the body.
        let mut damaged = b.clone().into_bytes();
        let last = damaged.len() - 3;
        damaged[last] = if damaged[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            open_bundle(&damaged, b"correct horse"),
            Err(BundleError::Open)
        );
        // Another version, or no bundle at all.
        let v2 = b.replacen("totpd-bundle v1", "totpd-bundle v2", 1);
        assert!(matches!(
            open_bundle(v2.as_bytes(), b"x"),
            Err(BundleError::Version(_))
        ));
        assert!(matches!(
            open_bundle(b"hello\n\nworld", b"x"),
            Err(BundleError::Format(_))
        ));
        // A header asking for more memory than a machine should give is refused unread.
        let greedy = b.replace("m=65536", "m=4194304");
        assert!(matches!(
            open_bundle(greedy.as_bytes(), b"x"),
            Err(BundleError::Format(_))
        ));
    }
}

//! Export and import of TOTP secrets, for moving them between totpd instances and out
//! to authenticator apps (Vault has no way to do either: hashicorp/vault#3043).
//!
//! - `POST /v1/sys/export {"entity_id": E}` or `{"all": true}` (sudo on `sys/export`)
//!   answers the transfer document ([`crate::transfer`]) in Vault's envelope: every
//!   secret in scope **opened**, with its holder, parameters and last accepted step, the
//!   MFA methods' configurations, and login-step users' recovery codes (hashes). The
//!   TOTP engine's keys belong to mounts, not to entities: only `all` exports them.
//! - `POST /v1/sys/import` (sudo on `sys/import`) takes the same document (plus
//!   `entity_id`: the owner of secrets that name none) and creates what is missing, in
//!   one transaction; it answers counts and one entry per method, secret and user's
//!   recovery codes, with the reason for each one skipped or refused. Never a secret.
//!
//! The passphrase of an encrypted bundle never comes here: `totpd export` and `totpd
//! import` encrypt and decrypt in the CLI. Over TCP, where the answer would cross a
//! network in clear (totpd serves no TLS), only a root token may export or import, even
//! with sudo on these paths granted by a policy; over the Unix socket, sudo is enough.
//! Every export and import is audited (`sys.export`, `sys.import`) and logged, with
//! counts, never a secret. An import body may be up to 8 MiB (read only once the
//! caller's rights are checked, one import at a time), beyond the 64 KiB of others.

use std::collections::{HashMap, HashSet};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{json, Value};

use super::super::fields::{printable, rfc3339};
use super::super::vault::{self, Caller, VaultError};
use super::super::{body_timeout, now, parse_json, read_json, AppState, BodyError};
use crate::audit::{self, Action, Event, Object, Verdict};
use crate::auth::{self, Capability, Peer};
use crate::otp::{self, Params};
use crate::store::{
    ExportScope, Holder, ImportRefusal, ImportReport, Imported, MethodRecord, MovedRecoveryCode,
    MovedSecret, RecoveryHash, Transfer, MAX_USER_DEVICES,
};
use crate::transfer::{Document, Kind, MethodDoc, RecoveryDoc, SecretDoc, VERSION};

/// The largest import body, in bytes.
pub const MAX_IMPORT_BODY: usize = 8 * 1024 * 1024;
/// The most entries of each list (methods, secrets, recovery codes) one import takes.
pub const MAX_IMPORT_ENTRIES: usize = 10_000;

/// One import body in memory at a time, whatever the callers send.
static IMPORTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/sys/export", post(export))
        .route("/v1/sys/import", post(import))
}

type Res = Result<Response, VaultError>;

/// Sudo on the path, and over TCP the root policy (see the module's documentation).
fn require(who: &Caller, req: &Request, path: &str, what: &str) -> Result<(), VaultError> {
    who.require(path, Capability::Sudo)?;
    let peer = req.extensions().get::<Peer>().copied().unwrap_or(Peer::Tcp);
    if peer == Peer::Tcp && !who.is_root() {
        return Err(VaultError::new(
            StatusCode::FORBIDDEN,
            format!(
                "permission denied: over TCP only a root token may {what} secrets; use the Unix socket"
            ),
        ));
    }
    Ok(())
}

// ----- export -----

#[derive(Deserialize)]
struct ExportReq {
    entity_id: Option<String>,
    #[serde(default)]
    all: bool,
}

async fn export(State(st): State<AppState>, who: Caller, req: Request) -> Res {
    require(&who, &req, "sys/export", "export")?;
    let body: ExportReq = read_json(req.into_body()).await?;
    let entity = match (body.entity_id, body.all) {
        (Some(_), true) => return Err(VaultError::bad_request("give entity_id or all, not both")),
        (None, false) => {
            return Err(VaultError::bad_request(
                "give entity_id (one entity's secrets) or \"all\": true (every secret)",
            ))
        }
        (Some(raw), false) => Some(vault::entity_id("entity_id", &raw)?),
        (None, true) => None,
    };
    let scope = match &entity {
        Some(e) => ExportScope::Entity(e),
        None => ExportScope::All,
    };
    let t = st.store.export_secrets(scope).await?;
    let at = now();
    let doc = Document {
        version: VERSION,
        exported_at: Some(rfc3339(at)),
        scope: Some(match &entity {
            Some(e) => json!({ "entity_id": e }),
            None => json!({ "all": true }),
        }),
        methods: t.methods.iter().map(method_doc).collect(),
        secrets: t
            .secrets
            .iter()
            .map(|s| secret_doc(s, &st.login.issuer))
            .collect(),
        recovery_codes: t
            .recovery_codes
            .iter()
            .map(|r| RecoveryDoc {
                entity_id: r.entity_id.clone(),
                selector: r.code.selector.clone(),
                hash: r.code.hash.clone(),
            })
            .collect(),
    };
    let data = serde_json::to_value(&doc).map_err(|e| VaultError::internal(&e))?;
    let object = Object::Transfer {
        entity_id: entity.as_deref(),
        methods: t.methods.len(),
        secrets: t.secrets.len(),
        created: None,
        skipped: None,
        refused: None,
    };
    audit::record(&st, Event::new(Action::SysExport, Verdict::Ok, object));
    tracing::info!(
        entity = ?entity,
        methods = t.methods.len(),
        secrets = t.secrets.len(),
        recovery_codes = t.recovery_codes.len(),
        "secrets exported"
    );
    let mut resp = vault::ok(&who.request_id, data);
    // Seeds in clear: no cache keeps this answer.
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

fn method_doc(m: &MethodRecord) -> MethodDoc {
    MethodDoc {
        method_id: m.id.clone(),
        method_name: m.name.clone(),
        issuer: m.issuer.clone(),
        algorithm: m.params.algorithm.as_str().into(),
        digits: m.params.digits.into(),
        period: m.params.period as i64,
        key_size: m.key_size.into(),
        qr_size: m.qr_size.into(),
        skew: m.skew.into(),
        max_validation_attempts: m.max_validation_attempts.into(),
        created_at: Some(m.created_at),
    }
}

fn secret_doc(s: &MovedSecret, login_issuer: &str) -> SecretDoc {
    let mut d = SecretDoc {
        kind: Kind::Agent,
        entity_id: s.holder.entity_id().map(str::to_string),
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
        secret: otp::encode_base32(&s.secret),
        algorithm: s.params.algorithm.as_str().into(),
        digits: s.params.digits.into(),
        period: s.params.period as i64,
        last_step: s.last_step,
        created_at: Some(s.created_at),
    };
    match &s.holder {
        Holder::VaultMfa { method_id, .. } => {
            d.kind = Kind::VaultMfa;
            d.method_id = Some(method_id.clone());
        }
        Holder::Agent {
            id, label, issuer, ..
        } => {
            d.id = id.clone();
            d.label = Some(label.clone());
            d.issuer = issuer.clone();
        }
        Holder::UserDevice { name, active, .. } => {
            d.kind = Kind::UserTotp;
            d.device = Some(name.clone());
            d.active = Some(*active);
            // For the URIs an export writes: the issuer the user's app shows.
            d.issuer = Some(login_issuer.to_string());
        }
        Holder::VaultTotp {
            mount,
            name,
            issuer,
            account_name,
            skew,
        } => {
            d.kind = Kind::VaultTotp;
            d.mount = Some(mount.clone());
            d.name = Some(name.clone());
            d.issuer = Some(issuer.clone());
            d.account_name = Some(account_name.clone());
            d.skew = Some((*skew).into());
        }
    }
    d
}

// ----- import -----

#[derive(Deserialize)]
struct ImportReq {
    /// The owner of secrets that name none (default: the caller's entity).
    entity_id: Option<String>,
    version: Option<u32>,
    #[serde(default)]
    methods: Vec<MethodDoc>,
    #[serde(default)]
    secrets: Vec<SecretDoc>,
    #[serde(default)]
    recovery_codes: Vec<RecoveryDoc>,
}

async fn import(State(st): State<AppState>, who: Caller, req: Request) -> Res {
    require(&who, &req, "sys/import", "import")?;
    let _one_at_a_time = IMPORTS
        .acquire()
        .await
        .map_err(|e| VaultError::internal(&e))?;
    let body = read_import(req.into_body()).await?;
    let at = now();
    let transfer = check(&body, &who.entity_id, at)?;
    let report = st.store.import_secrets(&transfer, at).await?;
    let (data, tally) = answer(&transfer, &report);
    let object = Object::Transfer {
        entity_id: None,
        methods: transfer.methods.len(),
        secrets: transfer.secrets.len(),
        created: Some(tally.created),
        skipped: Some(tally.skipped),
        refused: Some(tally.refused),
    };
    let verdict = if tally.created == 0 && tally.refused == 0 && tally.skipped > 0 {
        Verdict::Unchanged("exists")
    } else {
        Verdict::Ok
    };
    audit::record(&st, Event::new(Action::SysImport, verdict, object));
    tracing::info!(
        methods = transfer.methods.len(),
        secrets = transfer.secrets.len(),
        created = tally.created,
        skipped = tally.skipped,
        refused = tally.refused,
        "secrets imported"
    );
    Ok(vault::ok(&who.request_id, data))
}

/// The body, up to [`MAX_IMPORT_BODY`] (an empty one reads as `{}`).
async fn read_import(body: Body) -> Result<ImportReq, VaultError> {
    let too_large = || {
        VaultError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body larger than {} MiB: import the export in parts (totpd export --entity E)",
                MAX_IMPORT_BODY >> 20
            ),
        )
    };
    if http_body::Body::size_hint(&body).lower() > MAX_IMPORT_BODY as u64 {
        return Err(too_large());
    }
    let collected = tokio::time::timeout(
        body_timeout(),
        http_body_util::Limited::new(body, MAX_IMPORT_BODY).collect(),
    )
    .await
    .map_err(|_| VaultError::from(BodyError::Timeout))?;
    let bytes = collected
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                too_large()
            } else {
                VaultError::from(BodyError::Read(e.to_string()))
            }
        })?
        .to_bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(parse_json(b"{}")?);
    }
    Ok(parse_json(&bytes)?)
}

// The bounds each surface keeps on what its clients send, kept here too.
const KEY_SIZE: std::ops::RangeInclusive<i64> = 10..=64;
const MAX_QR: i64 = 2048;
const MAX_ATTEMPTS: i64 = 100_000;
const MAX_NAME: usize = 128;
const MAX_LABEL: usize = 256;
const MAX_DEVICE_NAME: usize = 64;
const SECRET_BYTES: std::ops::RangeInclusive<usize> = 10..=128;
/// The TOTP engine's bounds: a key imported into it may be as short as a byte, and its
/// issuer and account name are up to 256 characters, empty allowed.
const ENGINE_SECRET_BYTES: std::ops::RangeInclusive<usize> = 1..=128;
const MAX_ENGINE_TEXT: usize = 256;
/// Recovery codes per user; a set has 10.
const MAX_CODES_PER_USER: usize = 64;

/// Checks every entry as the surfaces check what their clients send: 400 naming the
/// first entry and field at fault (`secrets[3].method_id: ...`), never a value.
fn check(req: &ImportReq, caller: &str, now: i64) -> Result<Transfer, VaultError> {
    let bad = |m: String| VaultError::bad_request(m);
    if let Some(v) = req.version.filter(|v| *v != VERSION) {
        return Err(bad(format!(
            "version: {v} is not a document version this totpd reads ({VERSION})"
        )));
    }
    for (list, n) in [
        ("methods", req.methods.len()),
        ("secrets", req.secrets.len()),
        ("recovery_codes", req.recovery_codes.len()),
    ] {
        if n > MAX_IMPORT_ENTRIES {
            return Err(bad(format!(
                "{list}: at most {MAX_IMPORT_ENTRIES} per import, not {n}: import the export in parts"
            )));
        }
    }
    let owner = match &req.entity_id {
        Some(raw) => vault::entity_id("entity_id", raw)?,
        None => caller.to_string(),
    };
    let mut methods: Vec<MethodRecord> = Vec::with_capacity(req.methods.len());
    let mut method_ids = HashSet::new();
    for (i, m) in req.methods.iter().enumerate() {
        let m = check_method(m, now).map_err(|e| bad(format!("methods[{i}].{e}")))?;
        if !method_ids.insert(m.id.clone()) {
            return Err(bad(format!("methods[{i}].method_id: given twice")));
        }
        methods.push(m);
    }
    let secrets = req
        .secrets
        .iter()
        .enumerate()
        .map(|(i, s)| check_secret(s, &owner, now).map_err(|e| bad(format!("secrets[{i}].{e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let mut recovery_codes: Vec<MovedRecoveryCode> = Vec::with_capacity(req.recovery_codes.len());
    let mut per_user: HashMap<String, usize> = HashMap::new();
    let mut selectors = HashSet::new();
    for (i, r) in req.recovery_codes.iter().enumerate() {
        let at = |e: String| bad(format!("recovery_codes[{i}].{e}"));
        let entity_id = auth::entity_id(&r.entity_id).map_err(|e| at(format!("entity_id: {e}")))?;
        let selector = r.selector.trim();
        if selector.is_empty()
            || selector.len() > 16
            || !selector.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(at("selector: 1 to 16 letters and digits".into()));
        }
        if r.hash.len() > 512
            || !r.hash.starts_with("$argon2id$")
            || argon2::PasswordHash::new(&r.hash).is_err()
        {
            return Err(at("hash: not an argon2id hash (PHC string)".into()));
        }
        let same_user = per_user.entry(entity_id.clone()).or_default();
        *same_user += 1;
        if *same_user > MAX_CODES_PER_USER {
            return Err(at(format!(
                "entity_id: at most {MAX_CODES_PER_USER} recovery codes per user"
            )));
        }
        if !selectors.insert((entity_id.clone(), selector.to_string())) {
            return Err(at("selector: given twice for this user".into()));
        }
        recovery_codes.push(MovedRecoveryCode {
            entity_id,
            code: RecoveryHash {
                selector: selector.to_string(),
                hash: r.hash.clone(),
            },
        });
    }
    Ok(Transfer {
        methods,
        secrets,
        recovery_codes,
    })
}

/// A UUID field, lower-case and hyphenated.
fn uuid_field(field: &str, raw: &str) -> Result<String, String> {
    uuid::Uuid::parse_str(raw.trim())
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| format!("{field}: not a UUID"))
}

/// Text of 1..=`max` printable characters, trimmed.
fn text_field(field: &str, raw: &str, max: usize) -> Result<String, String> {
    let t = raw.trim();
    if t.is_empty() || t.chars().count() > max || !printable(t) {
        return Err(format!(
            "{field}: 1 to {max} characters, without control or text-direction characters"
        ));
    }
    Ok(t.to_string())
}

fn check_method(m: &MethodDoc, now: i64) -> Result<MethodRecord, String> {
    let id = uuid_field("method_id", &m.method_id)?;
    let issuer = text_field("issuer", &m.issuer, MAX_NAME)?;
    // The otpauth label is "issuer:account"; a colon in the issuer would split it wrong.
    if issuer.contains(':') {
        return Err("issuer: must not contain ':'".into());
    }
    let name = match m.method_name.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(n) => Some(text_field("method_name", n, MAX_NAME)?),
    };
    let params = Params::new(&m.algorithm, m.digits, m.period).map_err(|e| e.to_string())?;
    let small = |field: &str, v: i64, range: std::ops::RangeInclusive<i64>| {
        if range.contains(&v) {
            Ok(v as u32)
        } else {
            Err(format!(
                "{field}: must be from {} to {}, not {v}",
                range.start(),
                range.end()
            ))
        }
    };
    Ok(MethodRecord {
        id,
        name,
        issuer,
        params,
        key_size: small("key_size", m.key_size, KEY_SIZE)?,
        qr_size: small("qr_size", m.qr_size, 0..=MAX_QR)?,
        skew: small("skew", m.skew, 0..=1)?,
        max_validation_attempts: small(
            "max_validation_attempts",
            m.max_validation_attempts,
            1..=MAX_ATTEMPTS,
        )?,
        created_at: m.created_at.filter(|t| *t >= 0).unwrap_or(now),
    })
}

/// A mount name of the TOTP engine, as `--totp-mount` takes one: 1 to 64 lower-case
/// letters, digits, '-' and '_', starting with a letter or digit. Whether this daemon
/// serves it does not matter: the key waits in the store for the mount.
fn mount_field(raw: &str) -> Result<String, String> {
    let ok = raw.len() <= 64
        && raw
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && raw
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_'));
    if ok {
        Ok(raw.to_string())
    } else {
        Err("mount: 1 to 64 lower-case letters, digits, '-' or '_'".into())
    }
}

/// A key name as Vault's engine takes it (`\w(([\w-.@]+)?\w)?`), up to 128 bytes.
fn engine_key_name(raw: &str) -> Result<String, String> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let ok = !raw.is_empty()
        && raw.len() <= MAX_NAME
        && raw.starts_with(word)
        && raw.ends_with(word)
        && raw.chars().all(|c| word(c) || matches!(c, '-' | '.' | '@'));
    if ok {
        Ok(raw.to_string())
    } else {
        Err(format!(
            "name: 1 to {MAX_NAME} letters, digits, '_', '-', '.' or '@', starting and ending with a letter, digit or '_'"
        ))
    }
}

/// An engine key's issuer or account name, as the engine takes it: as it is (empty
/// allowed, not trimmed), up to 256 characters, without control characters.
fn engine_text(field: &str, raw: Option<&str>) -> Result<String, String> {
    let t = raw.unwrap_or_default();
    if t.chars().count() > MAX_ENGINE_TEXT || !printable(t) {
        return Err(format!(
            "{field}: at most {MAX_ENGINE_TEXT} characters, without control or text-direction characters"
        ));
    }
    Ok(t.to_string())
}

fn check_secret(s: &SecretDoc, owner: &str, now: i64) -> Result<MovedSecret, String> {
    // An engine key belongs to its mount: no entity, and the engine's key sizes.
    let (entity_id, bytes) = match s.kind {
        Kind::VaultTotp => (String::new(), ENGINE_SECRET_BYTES),
        _ => {
            let entity_id = match &s.entity_id {
                Some(raw) => auth::entity_id(raw).map_err(|e| format!("entity_id: {e}"))?,
                None => owner.to_string(),
            };
            (entity_id, SECRET_BYTES)
        }
    };
    let secret = otp::decode_base32(&s.secret).ok_or("secret: not valid base32")?;
    if !bytes.contains(&secret.len()) {
        return Err(format!(
            "secret: must be {} to {} bits",
            bytes.start() * 8,
            bytes.end() * 8
        ));
    }
    let params = Params::new(&s.algorithm, s.digits, s.period).map_err(|e| e.to_string())?;
    if s.last_step.is_some_and(|n| n < 0) {
        return Err("last_step: must not be negative".into());
    }
    let need = |field: &str, v: &Option<String>| {
        v.clone()
            .ok_or_else(|| format!("{field}: must be set for a {} secret", s.kind.as_str()))
    };
    let holder = match s.kind {
        Kind::VaultMfa => Holder::VaultMfa {
            method_id: uuid_field("method_id", &need("method_id", &s.method_id)?)?,
            entity_id,
        },
        Kind::Agent => Holder::Agent {
            entity_id,
            id: s.id.as_deref().map(|i| uuid_field("id", i)).transpose()?,
            label: text_field("label", &need("label", &s.label)?, MAX_LABEL)?,
            issuer: match s.issuer.as_deref().map(str::trim) {
                None | Some("") => None,
                Some(i) => Some(text_field("issuer", i, MAX_LABEL)?),
            },
        },
        Kind::UserTotp => Holder::UserDevice {
            entity_id,
            name: text_field("device", &need("device", &s.device)?, MAX_DEVICE_NAME)?,
            active: s
                .active
                .ok_or("active: must be set for a user_totp secret")?,
        },
        Kind::VaultTotp => Holder::VaultTotp {
            mount: mount_field(&need("mount", &s.mount)?)?,
            name: engine_key_name(&need("name", &s.name)?)?,
            issuer: engine_text("issuer", s.issuer.as_deref())?,
            account_name: engine_text("account_name", s.account_name.as_deref())?,
            skew: match s.skew {
                Some(n @ (0 | 1)) => n as u32,
                Some(_) => return Err("skew: must be 0 or 1".into()),
                None => return Err("skew: must be set for a vault_totp secret".into()),
            },
        },
    };
    Ok(MovedSecret {
        holder,
        secret,
        params,
        last_step: s.last_step,
        created_at: s.created_at.filter(|t| *t >= 0).unwrap_or(now),
    })
}

/// Entries by outcome.
#[derive(Default)]
struct Tally {
    created: usize,
    skipped: usize,
    refused: usize,
}

impl Tally {
    fn count(&mut self, o: Imported) {
        match o {
            Imported::Created => self.created += 1,
            Imported::Exists => self.skipped += 1,
            Imported::Refused(_) => self.refused += 1,
        }
    }

    fn json(&self) -> Value {
        json!({"created": self.created, "skipped": self.skipped, "refused": self.refused})
    }
}

/// Why an entry was refused, for a person.
fn refusal_message(r: ImportRefusal) -> String {
    match r {
        ImportRefusal::MethodDiffers => {
            "a method with this id exists here with another configuration; it was left as it is"
                .into()
        }
        ImportRefusal::MethodNameTaken => "another method here has this method_name".into(),
        ImportRefusal::NoMethod => "its method is neither here nor in the import".into(),
        ImportRefusal::MethodRefused => "its method was refused (see the method's entry)".into(),
        ImportRefusal::IdTaken => "this id belongs to another secret here".into(),
        ImportRefusal::TooManyDevices => {
            format!("the user has {MAX_USER_DEVICES} devices here, the most a user may have")
        }
        ImportRefusal::NotActive => "the user has no active device here".into(),
    }
}

fn outcome(mut entry: Value, o: Imported, exists: &str) -> Value {
    match o {
        Imported::Created => entry["result"] = json!("created"),
        Imported::Exists => {
            entry["result"] = json!("skipped");
            entry["reason"] = json!("exists");
            entry["message"] = json!(exists);
        }
        Imported::Refused(r) => {
            entry["result"] = json!("refused");
            entry["reason"] = json!(r.reason());
            entry["message"] = json!(refusal_message(r));
        }
    }
    entry
}

/// The answer's `data`: counts over every entry, counts per list, and one entry each
/// (never a secret).
fn answer(t: &Transfer, r: &ImportReport) -> (Value, Tally) {
    let mut all = Tally::default();
    let mut methods = Tally::default();
    let mut secrets = Tally::default();
    let mut codes = Tally::default();
    let mut entries = Vec::new();
    for (m, o) in t.methods.iter().zip(&r.methods) {
        all.count(*o);
        methods.count(*o);
        let entry = json!({"kind": "method", "method_id": m.id, "method_name": m.name});
        entries.push(outcome(
            entry,
            *o,
            "a method with this id and configuration is here already",
        ));
    }
    for (s, (o, id)) in t.secrets.iter().zip(&r.secrets) {
        all.count(*o);
        secrets.count(*o);
        let entry = match &s.holder {
            Holder::VaultMfa {
                method_id,
                entity_id,
            } => json!({"kind": "vault_mfa", "entity_id": entity_id, "method_id": method_id}),
            Holder::Agent {
                entity_id, label, ..
            } => json!({"kind": "agent", "entity_id": entity_id, "id": id, "label": label}),
            Holder::UserDevice {
                entity_id,
                name,
                active,
            } => {
                json!({"kind": "user_totp", "entity_id": entity_id, "device": name, "active": active})
            }
            Holder::VaultTotp { mount, name, .. } => {
                json!({"kind": "vault_totp", "mount": mount, "name": name})
            }
        };
        let exists = match &s.holder {
            Holder::VaultTotp { .. } => {
                "the mount has a key by this name here already; left as it is"
            }
            _ => "here already (same kind, entity and binding); left as it is",
        };
        entries.push(outcome(entry, *o, exists));
    }
    for (entity, o) in &r.recovery_codes {
        all.count(*o);
        codes.count(*o);
        let count = t
            .recovery_codes
            .iter()
            .filter(|c| &c.entity_id == entity)
            .count();
        let entry = json!({"kind": "recovery_codes", "entity_id": entity, "count": count});
        entries.push(outcome(
            entry,
            *o,
            "the user was active here already and keeps their own recovery codes",
        ));
    }
    let data = json!({
        "created": all.created,
        "skipped": all.skipped,
        "refused": all.refused,
        "counts": {
            "methods": methods.json(),
            "secrets": secrets.json(),
            "recovery_codes": codes.json(),
        },
        "entries": entries,
    });
    (data, all)
}

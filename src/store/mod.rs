//! The storage layer: the only code that knows SQL, behind traits that speak the domain.
//!
//! Handlers hold an `Arc<dyn Store>` and call domain operations (`create_token`,
//! `check_and_record_mfa_code`, ...). Each backend implements every trait; today that is
//! [`sqlite`] (one writer thread with group commit, a fixed pool of readers). The
//! conformance suite in `tests/store_conformance.rs` runs against every backend.
//!
//! Why several traits and one object: each surface needs one area (tokens and policies,
//! MFA methods, agent secrets), and a new surface adds its own trait without touching the
//! others; [`Store`] gathers them so the app holds one handle. It is a trait object rather
//! than a generic parameter because the backend is chosen at run time from the
//! configuration, and one boxed future per call is nothing beside a database round trip,
//! while a generic would thread a type parameter through every handler and the router.
//!
//! Every exactly-once rule is one call here, documented "atomic against every concurrent
//! call": a backend must make it so, whatever its locking.

pub mod postgres;
pub mod seal;
pub mod sqlite;

use async_trait::async_trait;

use crate::otp::{self, Params};
pub use seal::{KeySource, Sealer};

/// What a store operation can fail with, whatever the backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The thing the operation is about does not exist.
    #[error("{0} not found")]
    NotFound(Thing),
    /// The operation would break a uniqueness or reference rule; nothing changed.
    #[error("{0}")]
    Conflict(Clash),
    /// The database cannot be reached or is overloaded (the read queue is full): try again.
    #[error("the database is overloaded or unreachable; try again")]
    Unavailable,
    /// The store was closed; nothing was done.
    #[error("the store is closed")]
    Closed,
    #[error("the configured key does not open this database's secrets: it is not the key this database was created with")]
    WrongKey,
    /// Sealed values name a key id the key ring does not hold.
    #[error("sealed values in the database use key id {0}, which the key ring does not hold")]
    MissingKey(u8),
    #[error("database schema version {found} is newer than this totpd understands ({known})")]
    TooNew { found: i64, known: i64 },
    /// A stored row does not hold what the schema promises (or a sealed value does not open).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The store could not be opened as configured (lock held, key missing, file unusable).
    #[error("{0}")]
    Setup(String),
    /// Anything else the backend reports.
    #[error("database: {0}")]
    Backend(String),
    /// This backend does not do this operation; the message says what to use instead
    /// (nothing was done). A handler that can meet it answers 400 with the message
    /// (`GET /v1/sys/backup` on PostgreSQL).
    #[error("{0}")]
    Unsupported(&'static str),
}

/// The kinds of stored things an operation can miss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Thing {
    #[error("MFA method")]
    Method,
    #[error("MFA secret")]
    MfaSecret,
    #[error("agent secret")]
    AgentSecret,
    #[error("policy")]
    Policy,
    #[error("TOTP engine key")]
    EngineKey,
}

/// Why a write was refused as conflicting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Clash {
    /// Another row already has this unique name.
    #[error("the name is taken")]
    NameTaken,
    /// Other rows still refer to this one.
    #[error("still in use")]
    InUse,
    /// A row with this key already exists.
    #[error("already exists")]
    Duplicate,
}

impl From<seal::SealError> for StoreError {
    fn from(e: seal::SealError) -> Self {
        match e {
            seal::SealError::KeyFile { .. } => StoreError::Setup(e.to_string()),
            other => StoreError::Corrupt(other.to_string()),
        }
    }
}

/// A stored API token (never the token itself: only its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub hash: String,
    pub accessor: String,
    pub entity_id: String,
    pub display_name: String,
    pub policies: Vec<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    /// Accessor of the token that created this one, if a token did.
    pub parent: Option<String>,
    /// Whether `auth/token/renew(-self)` may extend it.
    pub renewable: bool,
    /// The TTL it was created with, in seconds (0: none); a renewal without an increment
    /// extends it by this much.
    pub creation_ttl: i64,
    /// Seconds after creation that no renewal goes beyond (0: only the daemon's max TTL).
    pub explicit_max_ttl: i64,
    /// When it was last renewed; `None` if never.
    pub last_renewal: Option<i64>,
}

/// A Vault identity MFA TOTP method as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodRecord {
    pub id: String,
    /// `method_name`, unique when set.
    pub name: Option<String>,
    pub issuer: String,
    /// How codes of secrets generated under this method are made.
    pub params: Params,
    /// Bytes of a generated secret.
    pub key_size: u32,
    /// Pixels of the QR image; 0 for none.
    pub qr_size: u32,
    /// Steps accepted either side of the current one (0 or 1).
    pub skew: u32,
    pub max_validation_attempts: u32,
    pub created_at: i64,
}

impl MethodRecord {
    /// The verification policy of secrets held for this method.
    pub fn window(&self) -> otp::Window {
        otp::Window {
            skew: self.skew,
            max_attempts: self.max_validation_attempts.max(1),
        }
    }
}

/// What [`MfaStore::create_mfa_secret`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enrollment {
    /// A new secret was generated and stored for the entity.
    Created {
        method: MethodRecord,
        secret: Vec<u8>,
    },
    /// The entity already holds a secret for the method; nothing changed.
    Exists { method: MethodRecord },
}

/// What an owner may see of a stored agent secret (never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSecretInfo {
    pub id: String,
    pub label: String,
    pub issuer: Option<String>,
    pub params: Params,
    pub created_at: i64,
}

/// A Nitride one-time policy token as stored. The uuid itself is a bearer credential and
/// is never stored: only its hash, and its first 8 characters for people and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyTokenRecord {
    /// Hex SHA-256 of the uuid in its canonical form (lower-case, hyphenated).
    pub hash: String,
    /// The uuid's first 8 characters.
    pub prefix: String,
    /// The auth mount the token was made under (`ratls`, ...).
    pub mount: String,
    /// The one policy the token may update.
    pub policy: String,
    pub created_at: i64,
    /// Unix seconds; the token is good strictly before this.
    pub expires_at: i64,
    /// When it was spent; `None` while it is still good.
    pub spent_at: Option<i64>,
}

/// What [`PolicyTokenStore::spend_policy_token_and_update`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spend {
    /// The policy was written and the token is spent, in one transaction.
    Spent,
    /// Nothing changed, for this reason (logged and counted, never told to the caller).
    Refused(SpendRefusal),
}

/// Why a policy token was not spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpendRefusal {
    /// No token has this hash: never made, deleted, or purged.
    Unknown,
    /// Already spent.
    Spent,
    /// Its expiration has passed.
    Expired,
    /// It was made for another policy.
    OtherPolicy,
    /// Its policy no longer exists: a token updates a policy, it does not bring one back.
    PolicyGone,
}

impl SpendRefusal {
    /// A short name for logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            SpendRefusal::Unknown => "unknown",
            SpendRefusal::Spent => "spent",
            SpendRefusal::Expired => "expired",
            SpendRefusal::OtherPolicy => "other_policy",
            SpendRefusal::PolicyGone => "policy_gone",
        }
    }
}

/// A device of a user's login step (a TOTP secret the user holds), as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserDevice {
    pub name: String,
    /// Activated with a valid code; a pending device logs nobody in.
    pub active: bool,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

/// A recovery code as stored: its selector in clear, its secret part as an argon2id hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryHash {
    pub selector: String,
    pub hash: String,
}

/// What [`UserTotpStore::setup_user_device`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// The pending device is stored (replacing a pending one of that name).
    Pending,
    /// No name was given and the user already has an active device; nothing changed.
    AlreadyActive,
    /// An active device already has this name; nothing changed.
    NameTaken,
    /// The user has [`MAX_USER_DEVICES`] devices (pending ones included); nothing changed.
    TooMany,
}

/// The most devices, active or pending, one user may have: enough for every phone and
/// key a person owns, few enough that a check opening them all stays cheap.
pub const MAX_USER_DEVICES: usize = 10;

/// What [`UserTotpStore::activate_user_device`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// The device is active; `first`: it is the user's first, and the recovery codes
    /// given are now the user's set.
    Activated { first: bool },
    /// The code is right, but it would be the user's first active device and no
    /// recovery codes came with the call: nothing changed, the code is not used up
    /// (make a set and call again). So codes are hashed only for a right code.
    NeedsCodes,
    /// The user has no pending device (of that name, if one was named).
    NoPending,
    /// Several pending devices and no name: which one is meant?
    SeveralPending,
    /// The code was refused (and counted against the user).
    Refused(otp::Refusal),
}

/// Who a code is checked for, and what a success brings.
#[derive(Debug, Clone, Copy)]
pub enum Proof<'a> {
    /// A login: the temp_token with this hash must be unused and unexpired; success
    /// spends it and stores `login` (its `entity_id` set to the temp_token's user).
    Login {
        temp_hash: &'a str,
        login: &'a TokenRecord,
    },
    /// The user themself, confirming an action with a code.
    Owner { entity_id: &'a str },
}

/// The outcome of a login-step check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Accepted: the code (or recovery code) is spent, and so is the temp_token.
    Accepted,
    /// The temp_token is unknown, expired or used; nothing was checked or counted.
    BadTempToken,
    /// The user has no active device; nothing was counted.
    NotActive,
    /// Refused and counted against the user (but a lock's refusals do not count).
    Refused(otp::Refusal),
}

/// API tokens. Only hashes are stored.
#[async_trait]
pub trait TokenStore {
    /// Stores a new token and sweeps out tokens expired at `t.created_at`, in one
    /// transaction. `Conflict(Duplicate)` if the hash or accessor exists.
    async fn create_token(&self, t: &TokenRecord) -> Result<(), StoreError>;
    /// The token with this hash, if it exists and has not expired at `now`.
    async fn get_token(&self, hash: &str, now: i64) -> Result<Option<TokenRecord>, StoreError>;
    /// The token with this accessor, if it exists and has not expired at `now`.
    async fn get_token_by_accessor(
        &self,
        accessor: &str,
        now: i64,
    ) -> Result<Option<TokenRecord>, StoreError>;
    /// Deletes the token with this hash and every token made from it, at any depth,
    /// atomically. Returns how many were deleted.
    async fn revoke_token(&self, hash: &str) -> Result<usize, StoreError>;
    /// As [`TokenStore::revoke_token`], for the token with this accessor.
    async fn revoke_token_by_accessor(&self, accessor: &str) -> Result<usize, StoreError>;
    /// A renewal: sets the expiry of the token with this hash to `expires_at` and its last
    /// renewal to `now`, if it is renewable, expires, and has not expired at `now`.
    /// False (nothing changed) if not.
    async fn renew_token(&self, hash: &str, now: i64, expires_at: i64) -> Result<bool, StoreError>;
}

/// ACL policies written by operators (the built-in ones are not stored).
#[async_trait]
pub trait PolicyStore {
    /// Creates or replaces a policy document (already validated JSON text).
    async fn put_policy(&self, name: &str, document: &str, now: i64) -> Result<(), StoreError>;
    /// The stored document of policy `name`.
    async fn get_policy(&self, name: &str) -> Result<Option<String>, StoreError>;
    /// The documents of those of `names` that exist, as (name, document), in one read.
    async fn get_policies(&self, names: &[String]) -> Result<Vec<(String, String)>, StoreError>;
    /// Deletes a stored policy; false if there was none.
    async fn delete_policy(&self, name: &str) -> Result<bool, StoreError>;
    /// Names of the stored policies, sorted.
    async fn list_policies(&self) -> Result<Vec<String>, StoreError>;
}

/// Nitride one-time policy tokens: each allows exactly one update of one policy.
#[async_trait]
pub trait PolicyTokenStore {
    /// Stores a new token. Its policy must exist, checked in the same transaction:
    /// `NotFound(Policy)`. `Conflict(Duplicate)` if the hash exists.
    async fn create_policy_token(&self, t: &PolicyTokenRecord) -> Result<(), StoreError>;
    /// The tokens of `mount` (spent and expired ones too, until purged), oldest first.
    async fn list_policy_tokens(&self, mount: &str) -> Result<Vec<PolicyTokenRecord>, StoreError>;
    /// Deletes the token with this hash if it belongs to `mount`; false if it has none.
    async fn delete_policy_token(&self, mount: &str, hash: &str) -> Result<bool, StoreError>;
    /// Deletes the token of `mount` whose uuid begins with `prefix` (its 8 stored
    /// characters), if exactly one does. Returns how many matched: with more than one,
    /// nothing was deleted (checked and deleted atomically).
    async fn delete_policy_token_by_prefix(
        &self,
        mount: &str,
        prefix: &str,
    ) -> Result<usize, StoreError>;
    /// Spends the token with this hash on writing `document` as policy `policy`: only if
    /// the token exists, is unspent, has not expired at `now`, was made for `policy`, and
    /// the policy still exists. The write and the spending are one transaction, atomic
    /// against every concurrent call: of any number of spends of one token, on any
    /// number of daemons, exactly one writes. Whichever mount made the token.
    async fn spend_policy_token_and_update(
        &self,
        hash: &str,
        policy: &str,
        document: &str,
        now: i64,
    ) -> Result<Spend, StoreError>;
    /// Deletes every spent token and every token expired at `now`; returns how many.
    /// A purged token is unknown, and unknown is refused like spent.
    async fn purge_policy_tokens(&self, now: i64) -> Result<usize, StoreError>;
}

/// The user login step: devices (TOTP secrets) per user, a failure count per user across
/// all of them and the recovery codes, recovery codes, and temp_tokens.
#[async_trait]
pub trait UserTotpStore {
    /// Stores a pending device `name` (default `default`) for the user with this secret.
    /// Without a name, refused if the user has an active device; with one, refused if an
    /// active device has it; refused past [`MAX_USER_DEVICES`]. A pending device of that
    /// name is replaced.
    async fn setup_user_device(
        &self,
        entity_id: &str,
        name: Option<&str>,
        id: &str,
        secret: &[u8],
        params: &Params,
        now: i64,
    ) -> Result<Setup, StoreError>;
    /// Activates the named pending device, or the only one, if `code` is right for it
    /// (the failure counts against the user; the step counts as used). The user's first
    /// device also stores `codes` as the user's recovery codes, in the same transaction.
    async fn activate_user_device(
        &self,
        entity_id: &str,
        name: Option<&str>,
        code: &str,
        codes: Option<&[RecoveryHash]>,
        now: i64,
    ) -> Result<Activation, StoreError>;
    /// The user's devices, oldest first.
    async fn list_user_devices(&self, entity_id: &str) -> Result<Vec<UserDevice>, StoreError>;
    /// Removes the named device, or with `None` every device; the recovery codes, the
    /// failure count and the temp_tokens go with the last active device. Returns how many
    /// devices went.
    async fn deactivate_user(
        &self,
        entity_id: &str,
        name: Option<&str>,
    ) -> Result<usize, StoreError>;
    /// Stores a temp_token (its hash) for the user, good until `expires_at`, if the user
    /// has an active device (false, nothing stored, if not). Sweeps expired ones.
    async fn create_temp_token(
        &self,
        entity_id: &str,
        hash: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<bool, StoreError>;
    /// The user of an unused, unexpired temp_token.
    async fn get_temp_token_user(&self, hash: &str, now: i64)
        -> Result<Option<String>, StoreError>;
    /// Checks a TOTP code against every active device of the proof's user, under the
    /// user's one failure count, and records the outcome: atomic against every
    /// concurrent call, so of any number of calls with one right code (and any number of
    /// temp_tokens) exactly one is accepted, and a temp_token logs in at most once.
    async fn check_user_code(
        &self,
        proof: Proof<'_>,
        code: &str,
        now: i64,
    ) -> Result<Check, StoreError>;
    /// The hash of the user's unspent recovery code with this selector.
    async fn get_recovery_hash(
        &self,
        entity_id: &str,
        selector: &str,
    ) -> Result<Option<String>, StoreError>;
    /// Settles a recovery-code attempt whose argon2 check (done by the caller, outside
    /// the writer) gave `matched`: under the user's failure count, the code is spent with
    /// a conditional update, atomic against every concurrent call, so one code logs in
    /// at most once; a lock refuses it. A miss counts against the user.
    async fn spend_recovery_code(
        &self,
        proof: Proof<'_>,
        selector: &str,
        matched: bool,
        now: i64,
    ) -> Result<Check, StoreError>;
    /// Replaces the user's recovery codes with `codes`, in one transaction; false (and
    /// nothing stored) if the user has no active device.
    async fn replace_recovery_codes(
        &self,
        entity_id: &str,
        codes: &[RecoveryHash],
        now: i64,
    ) -> Result<bool, StoreError>;
    /// How many of the user's recovery codes are unspent.
    async fn count_recovery_codes(&self, entity_id: &str) -> Result<usize, StoreError>;
    /// An operator's unlock: clears the user's lock and failure count, in one write. Used
    /// steps and spent recovery codes stay used. Returns the lock state it cleared, or
    /// `None` (nothing changed) if the user has no device, active or pending.
    async fn unlock_user(&self, entity_id: &str) -> Result<Option<otp::LockState>, StoreError>;
}

/// Vault identity MFA TOTP methods, and the secrets entities hold for them.
#[async_trait]
pub trait MfaStore {
    /// Stores a new method. `Conflict(NameTaken)` if another method has its name: atomic
    /// against every concurrent call, so of two creates with one name exactly one wins.
    async fn create_method(&self, m: &MethodRecord) -> Result<(), StoreError>;
    /// Replaces a method's settings; `name: None` keeps the current name.
    /// `NotFound(Method)`, or `Conflict(NameTaken)` as for create.
    async fn update_method(&self, m: &MethodRecord) -> Result<(), StoreError>;
    async fn get_method(&self, id: &str) -> Result<Option<MethodRecord>, StoreError>;
    /// Every method, ordered by id (as Vault lists keys).
    async fn list_methods(&self) -> Result<Vec<MethodRecord>, StoreError>;
    /// Deletes a method and, in the same transaction, every secret entities hold for it
    /// (as Vault does). Returns how many secrets went. `NotFound(Method)`.
    async fn delete_method(&self, id: &str) -> Result<usize, StoreError>;
    /// Generates a secret of the method's `key_size` for `entity_id` and stores it, unless
    /// the entity already holds one for the method (`Exists`, nothing written). Atomic
    /// against every concurrent call: an entity never ends up with two secrets for one
    /// method, and the secret is made with the method's settings as they are when stored.
    /// `NotFound(Method)`.
    async fn create_mfa_secret(
        &self,
        method_id: &str,
        entity_id: &str,
        now: i64,
    ) -> Result<Enrollment, StoreError>;
    /// Removes the entity's secret for the method; false if it had none.
    /// `NotFound(Method)` if there is no such method.
    async fn delete_mfa_secret(&self, method_id: &str, entity_id: &str)
        -> Result<bool, StoreError>;
    /// Checks `code` for the entity's secret with [`otp::verify`] and records the new
    /// state (last accepted step, failures, lock). Atomic against every concurrent call:
    /// of any number of calls with one right code exactly one is accepted, and no failure
    /// goes uncounted. `NotFound(Method)` or `NotFound(MfaSecret)`.
    async fn check_and_record_mfa_code(
        &self,
        method_id: &str,
        entity_id: &str,
        code: &str,
        now: i64,
    ) -> Result<otp::Outcome, StoreError>;
    /// An operator's unlock: clears the lock and the failure count of the entity's secret
    /// for the method, in one write. Its replay record stays (a used code stays used).
    /// Returns the lock state it cleared. `NotFound(Method)` or `NotFound(MfaSecret)`.
    async fn unlock_mfa_secret(
        &self,
        method_id: &str,
        entity_id: &str,
    ) -> Result<otp::LockState, StoreError>;
}

/// The authenticator app for agents: secrets scoped to their owning entity, so another
/// entity's id behaves exactly like an unknown one.
#[async_trait]
pub trait AgentStore {
    /// Stores a new secret for `entity_id`. `Conflict(Duplicate)` if the id exists.
    async fn create_agent_secret(
        &self,
        entity_id: &str,
        info: &AgentSecretInfo,
        secret: &[u8],
    ) -> Result<(), StoreError>;
    /// The entity's secrets, oldest first.
    async fn list_agent_secrets(&self, entity_id: &str)
        -> Result<Vec<AgentSecretInfo>, StoreError>;
    /// Deletes the entity's secret `id`; false if it has none by that id.
    async fn delete_agent_secret(&self, entity_id: &str, id: &str) -> Result<bool, StoreError>;
    /// The opened secret `id` of the entity, with its parameters.
    async fn get_agent_secret(
        &self,
        entity_id: &str,
        id: &str,
    ) -> Result<Option<(Vec<u8>, Params)>, StoreError>;
}

/// A key of Vault's TOTP secrets engine, as `read` shows it (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineKeyInfo {
    /// The engine's mount (`totp`, or one configured): each holds its own keys.
    pub mount: String,
    pub name: String,
    pub issuer: String,
    pub account_name: String,
    pub params: Params,
    /// Steps accepted either side of the current one (0 or 1).
    pub skew: u32,
    pub created_at: i64,
}

impl EngineKeyInfo {
    /// The verification policy of an engine key: its skew, and totpd's default limit
    /// of failures (Vault's engine has none; a lock does not change its answers).
    pub fn window(&self) -> otp::Window {
        otp::Window {
            skew: self.skew,
            max_attempts: otp::DEFAULT_MAX_ATTEMPTS,
        }
    }
}

/// What [`EngineStore::check_and_record_engine_code`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineCheck {
    /// The code was tried at this key before, while a step it could match is still in
    /// the window: refused as used, as Vault's engine does, and nothing changed.
    Repeat,
    /// A fresh attempt, verified and recorded as on every surface (window, replay,
    /// failures, lock), and the code remembered as tried.
    Checked(otp::Outcome),
}

/// Keys of Vault's TOTP secrets engine, in mounts: Vault's keys belong to the mount,
/// not to an entity (who may use which key is the ACL's business).
#[async_trait]
pub trait EngineStore {
    /// Stores a key under (mount, name). A key already there is replaced, as Vault's
    /// engine overwrites it: the old secret, its replay record and its tried codes go,
    /// in the same transaction. Atomic against every concurrent call: a name holds one
    /// key, never two and never none.
    async fn put_engine_key(&self, info: &EngineKeyInfo, secret: &[u8]) -> Result<(), StoreError>;
    async fn get_engine_key(
        &self,
        mount: &str,
        name: &str,
    ) -> Result<Option<EngineKeyInfo>, StoreError>;
    /// The key with its secret opened, for a code.
    async fn open_engine_key(
        &self,
        mount: &str,
        name: &str,
    ) -> Result<Option<(EngineKeyInfo, Vec<u8>)>, StoreError>;
    /// The mount's key names, in byte order (as Vault lists them).
    async fn list_engine_keys(&self, mount: &str) -> Result<Vec<String>, StoreError>;
    /// Deletes the key with its secret and records; false if there was none.
    async fn delete_engine_key(&self, mount: &str, name: &str) -> Result<bool, StoreError>;
    /// Checks `code` for the key with [`otp::verify_untried`]: a code tried before (and
    /// still remembered) is a [`EngineCheck::Repeat`]; any other is verified, its state
    /// recorded and the code remembered as tried, all in one write. Atomic against
    /// every concurrent call: of any number of calls with one right code exactly one is
    /// accepted, and no failure goes uncounted. `NotFound(EngineKey)`.
    async fn check_and_record_engine_code(
        &self,
        mount: &str,
        name: &str,
        code: &str,
        now: i64,
    ) -> Result<EngineCheck, StoreError>;
    /// An operator's unlock: clears the key's lock and failure count; its replay record
    /// and tried codes stay. Returns the lock state it cleared. `NotFound(EngineKey)`.
    async fn unlock_engine_key(
        &self,
        mount: &str,
        name: &str,
    ) -> Result<otp::LockState, StoreError>;
}

/// The writer's load, as `sys/status` and the metrics show it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Write operations waiting to run.
    pub queue_depth: u64,
    /// Write operations per committed transaction, since the store opened.
    pub batch_sizes: crate::metrics::Histogram,
}

/// A consistent copy of the whole database, made by [`OpsStore::backup_database`].
#[derive(Debug)]
pub struct BackupCopy {
    /// The copy, open for reading from its start. Its name is already gone (nothing to
    /// clean up, even if the reader stops half way): dropping it frees the space.
    pub file: std::fs::File,
    /// Its length in bytes.
    pub bytes: u64,
}

/// What operators look at and take away: sizes and counts, the writer's load, backups.
/// Nothing here reads or returns secret material.
#[async_trait]
pub trait OpsStore {
    /// Rows per table, every table of the store (secrets, tokens and the rest counted,
    /// never read), sorted by table name.
    async fn count_rows(&self) -> Result<Vec<(String, u64)>, StoreError>;
    /// Bytes the database takes on disk now (for SQLite the main file and its
    /// write-ahead log). Cheap: no query.
    fn database_bytes(&self) -> u64;
    /// The writer's queue depth and batch sizes now (zeros for a backend without a
    /// single writer). Cheap: no query.
    fn writer_stats(&self) -> WriterStats;
    /// The id of the sealing key that new secrets are sealed with.
    fn seal_key_id(&self) -> u8;
    /// A consistent copy of the whole database as of one moment, taken while every other
    /// call goes on (writes included); one copy at a time, later calls wait their turn.
    async fn backup_database(&self) -> Result<BackupCopy, StoreError>;
    /// Records that a backup taken at `at` (unix seconds) was delivered.
    async fn record_backup(&self, at: i64) -> Result<(), StoreError>;
    /// When the last recorded backup was taken, if one was.
    async fn last_backup(&self) -> Result<Option<i64>, StoreError>;
}

/// The sealing keys as the store sees them (see [`KeyStore::key_status`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyStatus {
    /// The id of the key new values are sealed with: the key ring's current key.
    pub current: u8,
    /// Every key id of the ring, ascending.
    pub ring: Vec<u8>,
    /// Sealed values per key id (ids sealing none left out).
    pub sealed: std::collections::BTreeMap<u8, u64>,
    /// The latest rotation: running or not, and what it did.
    pub rotation: RotationProgress,
}

impl KeyStatus {
    /// Sealed values under a key other than the current one.
    pub fn old_values(&self) -> u64 {
        self.sealed
            .iter()
            .filter(|(id, _)| **id != self.current)
            .map(|(_, n)| n)
            .sum()
    }

    /// Key ids of the ring that seal no value (the current one excepted): they may
    /// leave the ring.
    pub fn unused(&self) -> Vec<u8> {
        self.ring
            .iter()
            .copied()
            .filter(|id| *id != self.current && self.sealed.get(id).copied().unwrap_or(0) == 0)
            .collect()
    }
}

/// What the latest rotation did (see [`KeyStore::start_key_rotation`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RotationProgress {
    /// Whether it is re-sealing now.
    pub running: bool,
    /// Values it re-sealed under the current key.
    pub resealed: u64,
    /// Values it left alone because they changed or went between its read and its
    /// write (a later pass reads them again).
    pub skipped: u64,
    /// Why it stopped before every value used the current key, if it did.
    pub error: Option<String>,
}

/// The sealing keys: which key seals, which keys the sealed values use, and rotation:
/// re-sealing every value under the key ring's current key.
#[async_trait]
pub trait KeyStore {
    /// The key ring's ids and current key, the sealed values per key id (counted now),
    /// and the latest rotation's progress.
    async fn key_status(&self) -> Result<KeyStatus, StoreError>;
    /// Starts re-sealing, in the background, every sealed value whose key id is not the
    /// current one, unless a rotation runs already (there is never a second), and
    /// returns at once with the status. Nothing starts when no value uses an old key.
    ///
    /// Re-sealing keeps each value's row binding (its associated data), and is done in
    /// batches, each one atomic on its own, so other calls go on between them. Each
    /// value is replaced by a compare-and-swap: only if it is still the one read, so a
    /// value deleted or replaced meanwhile stays deleted or replaced, and the state a
    /// concurrent verification records is never lost. A crash at any point leaves every
    /// value sealed under either its old key or the current one.
    async fn start_key_rotation(&self) -> Result<KeyStatus, StoreError>;
    /// At start, when values are sealed under an old key id: resumes re-sealing
    /// ([`KeyStore::start_key_rotation`]) and returns the status, or returns `None` and
    /// leaves it to the operator. By default it resumes: a store one daemon owns has one
    /// key ring, the one just loaded. A store several daemons share resumes only a
    /// rotation an operator started and a crash cut short, since a ring with a new
    /// current key may not have reached the other daemons yet.
    async fn resume_key_rotation(&self) -> Result<Option<KeyStatus>, StoreError> {
        self.start_key_rotation().await.map(Some)
    }
    /// Sealed values per key id as last counted (at open, by `key_status`, and by a
    /// rotation as it goes): cheap, for metrics.
    fn sealed_counts(&self) -> std::collections::BTreeMap<u8, u64>;
}

/// Which secrets an export takes (see [`TransferStore::export_secrets`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportScope<'a> {
    /// Every secret of every surface (the TOTP engine's keys of every mount included),
    /// and every MFA method.
    All,
    /// The secrets this entity holds, and the MFA methods its enrolments use (no engine
    /// key: those belong to mounts, not to entities).
    Entity(&'a str),
}

/// Who holds a moved secret, and what binds it there: what an import matches on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// A Vault identity MFA enrolment: the entity's one secret for the method.
    VaultMfa {
        method_id: String,
        entity_id: String,
    },
    /// An agent secret: its id (none from a plain otpauth URI), owner, label and issuer.
    Agent {
        entity_id: String,
        id: Option<String>,
        label: String,
        issuer: Option<String>,
    },
    /// A device of a login-step user, pending or active, by its name.
    UserDevice {
        entity_id: String,
        name: String,
        active: bool,
    },
    /// A key of Vault's TOTP secrets engine, by its mount and name, with what `read`
    /// shows of it (see [`EngineKeyInfo`]). It belongs to the mount, not to an entity.
    VaultTotp {
        mount: String,
        name: String,
        issuer: String,
        account_name: String,
        /// Steps accepted either side of the current one (0 or 1).
        skew: u32,
    },
}

impl Holder {
    /// The entity holding the secret; `None` for an engine key, which belongs to its
    /// mount.
    pub fn entity_id(&self) -> Option<&str> {
        match self {
            Holder::VaultMfa { entity_id, .. }
            | Holder::Agent { entity_id, .. }
            | Holder::UserDevice { entity_id, .. } => Some(entity_id),
            Holder::VaultTotp { .. } => None,
        }
    }
}

/// One TOTP secret, opened, with what it takes to recreate it in another store. Its
/// `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct MovedSecret {
    pub holder: Holder,
    pub secret: Vec<u8>,
    pub params: Params,
    /// The last accepted time step: carried over, so that a spent code stays spent.
    pub last_step: Option<i64>,
    pub created_at: i64,
}

impl std::fmt::Debug for MovedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MovedSecret")
            .field("holder", &self.holder)
            .field("params", &self.params)
            .field("last_step", &self.last_step)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// An unspent recovery code of a login-step user, as stored (its argon2id hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedRecoveryCode {
    pub entity_id: String,
    pub code: RecoveryHash,
}

/// Secrets moving between stores: what an export returns and an import takes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transfer {
    pub methods: Vec<MethodRecord>,
    pub secrets: Vec<MovedSecret>,
    pub recovery_codes: Vec<MovedRecoveryCode>,
}

/// What an import did with one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Imported {
    Created,
    /// Already here, left as it is: a secret with the same kind, entity and binding
    /// (method, agent id, device name), an engine key with the same mount and name, a
    /// method with the same id and configuration, or the recovery codes of a user who
    /// was active here already.
    Exists,
    Refused(ImportRefusal),
}

/// Why an import left an entry out (the rest of the import goes on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportRefusal {
    /// A method with this id exists here with another configuration.
    MethodDiffers,
    /// Another method here has this method's name.
    MethodNameTaken,
    /// The enrolment's method is neither here nor in the import.
    NoMethod,
    /// The enrolment's method was refused in this import.
    MethodRefused,
    /// The agent secret's id is another entity's here, or another secret's.
    IdTaken,
    /// The user has [`MAX_USER_DEVICES`] devices here.
    TooManyDevices,
    /// Recovery codes for a user left without an active device.
    NotActive,
}

impl ImportRefusal {
    /// A short name for answers and logs.
    pub fn reason(self) -> &'static str {
        match self {
            ImportRefusal::MethodDiffers => "method_differs",
            ImportRefusal::MethodNameTaken => "method_name_taken",
            ImportRefusal::NoMethod => "no_method",
            ImportRefusal::MethodRefused => "method_refused",
            ImportRefusal::IdTaken => "id_taken",
            ImportRefusal::TooManyDevices => "too_many_devices",
            ImportRefusal::NotActive => "not_active",
        }
    }
}

/// What [`TransferStore::import_secrets`] did, entry by entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// One per method of the transfer, in its order.
    pub methods: Vec<Imported>,
    /// One per secret of the transfer, in its order, with the id of the agent secret it
    /// created or found (a new one when the transfer gave none).
    pub secrets: Vec<(Imported, Option<String>)>,
    /// One per user whose recovery codes the transfer holds, by entity id.
    pub recovery_codes: Vec<(String, Imported)>,
}

/// Export and import: secrets leave opened (for `totpd export`, which seals them
/// again under a passphrase or writes otpauth URIs) and arrive to be sealed here.
#[async_trait]
pub trait TransferStore {
    /// Every secret in `scope`, opened, with its holder, parameters and last accepted
    /// step (with [`ExportScope::All`], the TOTP engine's keys of every mount too); the
    /// MFA methods (all of them, or the entity's enrolments' methods); and the unspent
    /// recovery codes (hashes) of the users with an active device. One consistent read.
    async fn export_secrets(&self, scope: ExportScope<'_>) -> Result<Transfer, StoreError>;
    /// Creates what is missing of `t`, in one transaction, atomic against every
    /// concurrent call; nothing here is overwritten. Methods first: one with a free id
    /// and name is created as it is, one with this id and configuration is used as it
    /// is, any other is refused, and so are its enrolments. Then each secret, unless
    /// one with the same binding is here (an entity's enrolment for the method, an agent
    /// id, a user's device name, an engine key's mount and name): sealed anew, with its
    /// last accepted step. An engine key's mount is taken as it is, served by this
    /// daemon or not. Then the recovery codes of a user that had no active device
    /// before and has one now.
    async fn import_secrets(&self, t: &Transfer, now: i64) -> Result<ImportReport, StoreError>;
}

/// `meta` rows a migration never moves: the key check, which each store makes for itself
/// when it is opened with the key ring (see [`MigrateStore`]).
pub const META_KEY_CHECK: &str = "key_check";

/// The associated data binding a sealed TOTP secret to its `otp_secrets` row, on every
/// backend: a sealed value opens only in the row whose id it names.
pub fn otp_secret_aad(id: &str) -> String {
    format!("totpd/v1/otp_secrets/{id}")
}

/// A `meta` row (daemon-wide facts such as `last_backup`), its value as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaRow {
    pub key: String,
    pub value: Vec<u8>,
}

/// A stored ACL policy: its document as written (HCL or JSON text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRow {
    pub name: String,
    pub document: String,
    pub updated_at: i64,
}

/// An `otp_secrets` row as stored: still sealed, with its verification state.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedSecretRow {
    pub id: String,
    /// Key id, nonce and ciphertext, bound to `id` (see [`otp_secret_aad`]).
    pub sealed: Vec<u8>,
    pub params: Params,
    pub last_step: Option<i64>,
    pub failures: i64,
    pub locked_until: Option<i64>,
    pub last_attempt: Option<i64>,
    pub created_at: i64,
}

impl SealedSecretRow {
    /// The secret, opened with `sealer` (`WrongKey` if it does not open, `MissingKey`
    /// if its key id is not in the ring).
    pub fn open(&self, sealer: &Sealer) -> Result<Vec<u8>, StoreError> {
        sealer
            .open(&otp_secret_aad(&self.id), &self.sealed)
            .map_err(|e| match e {
                seal::SealError::MissingKey(id) => StoreError::MissingKey(id),
                _ => StoreError::WrongKey,
            })
    }

    /// The code the secret gives at unix time `t`.
    pub fn code_at(&self, sealer: &Sealer, t: i64) -> Result<String, StoreError> {
        Ok(otp::code_at(&self.open(sealer)?, &self.params, t))
    }

    /// The id of the key it is sealed with.
    pub fn key_id(&self) -> Option<u8> {
        Sealer::key_id(&self.sealed)
    }
}

impl std::fmt::Debug for SealedSecretRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedSecretRow")
            .field("id", &self.id)
            .field("key_id", &self.key_id())
            .field("params", &self.params)
            .field("last_step", &self.last_step)
            .field("failures", &self.failures)
            .field("locked_until", &self.locked_until)
            .field("last_attempt", &self.last_attempt)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// An `mfa_secrets` row: which entity holds which secret for which method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MfaSecretRow {
    pub method_id: String,
    pub entity_id: String,
    pub secret_id: String,
    pub created_at: i64,
}

/// An `agent_secrets` row (its seed is the `otp_secrets` row of the same id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSecretRow {
    pub id: String,
    pub entity_id: String,
    pub label: String,
    pub issuer: Option<String>,
    pub created_at: i64,
}

/// A `user_devices` row: a login-step user's device, pending or active.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserDeviceRow {
    pub entity_id: String,
    pub name: String,
    pub secret_id: String,
    pub active: bool,
    pub created_at: i64,
    pub activated_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

/// A `user_locks` row: a login-step user's one failure count and lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserLockRow {
    pub entity_id: String,
    pub failures: i64,
    pub locked_until: Option<i64>,
}

/// A `recovery_codes` row, spent or not (its secret part an argon2id hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryCodeRow {
    pub entity_id: String,
    pub selector: String,
    pub hash: String,
    pub created_at: i64,
    pub spent_at: Option<i64>,
}

/// A `temp_tokens` row (the hash of a login's single-use temp_token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TempTokenRow {
    pub hash: String,
    pub entity_id: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
}

/// An `engine_keys` row: a key of Vault's TOTP secrets engine (its seed is the
/// `otp_secrets` row `secret_id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineKeyRow {
    pub mount: String,
    pub name: String,
    pub secret_id: String,
    pub issuer: String,
    pub account_name: String,
    pub skew: i64,
    pub created_at: i64,
}

/// An `engine_tried_codes` row: a code tried at an engine key, remembered until no step
/// it could match is in the window any more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriedCodeRow {
    pub secret_id: String,
    pub code: String,
    pub expires_at: i64,
}

/// Every row of a store, whatever its backend, as [`MigrateStore`] moves it: each table
/// in its primary key's order (byte order), except `user_devices`, in the order the
/// devices were made (a user's devices are listed and checked in that order). Sealed
/// values stay sealed. `meta` holds every row but the key check ([`META_KEY_CHECK`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreDump {
    pub meta: Vec<MetaRow>,
    pub policies: Vec<PolicyRow>,
    pub tokens: Vec<TokenRecord>,
    pub policy_tokens: Vec<PolicyTokenRecord>,
    pub otp_secrets: Vec<SealedSecretRow>,
    pub mfa_methods: Vec<MethodRecord>,
    pub mfa_secrets: Vec<MfaSecretRow>,
    pub agent_secrets: Vec<AgentSecretRow>,
    pub user_devices: Vec<UserDeviceRow>,
    pub user_locks: Vec<UserLockRow>,
    pub recovery_codes: Vec<RecoveryCodeRow>,
    pub temp_tokens: Vec<TempTokenRow>,
    pub engine_keys: Vec<EngineKeyRow>,
    pub engine_tried_codes: Vec<TriedCodeRow>,
}

impl StoreDump {
    /// Rows per table, sorted by table name (as [`OpsStore::count_rows`] lists them;
    /// `meta` without the key check).
    pub fn counts(&self) -> Vec<(&'static str, u64)> {
        let n = |v: usize| v as u64;
        vec![
            ("agent_secrets", n(self.agent_secrets.len())),
            ("engine_keys", n(self.engine_keys.len())),
            ("engine_tried_codes", n(self.engine_tried_codes.len())),
            ("meta", n(self.meta.len())),
            ("mfa_methods", n(self.mfa_methods.len())),
            ("mfa_secrets", n(self.mfa_secrets.len())),
            ("otp_secrets", n(self.otp_secrets.len())),
            ("policies", n(self.policies.len())),
            ("policy_tokens", n(self.policy_tokens.len())),
            ("recovery_codes", n(self.recovery_codes.len())),
            ("temp_tokens", n(self.temp_tokens.len())),
            ("tokens", n(self.tokens.len())),
            ("user_devices", n(self.user_devices.len())),
            ("user_locks", n(self.user_locks.len())),
        ]
    }

    /// Every row, all tables together.
    pub fn rows(&self) -> u64 {
        self.counts().iter().map(|(_, n)| n).sum()
    }

    /// The tables whose rows differ between `self` and `other` (in count or in any
    /// value), sorted by name.
    pub fn differing_tables(&self, other: &StoreDump) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut check = |name: &'static str, same: bool| {
            if !same {
                out.push(name);
            }
        };
        check("agent_secrets", self.agent_secrets == other.agent_secrets);
        check("engine_keys", self.engine_keys == other.engine_keys);
        check(
            "engine_tried_codes",
            self.engine_tried_codes == other.engine_tried_codes,
        );
        check("meta", self.meta == other.meta);
        check("mfa_methods", self.mfa_methods == other.mfa_methods);
        check("mfa_secrets", self.mfa_secrets == other.mfa_secrets);
        check("otp_secrets", self.otp_secrets == other.otp_secrets);
        check("policies", self.policies == other.policies);
        check("policy_tokens", self.policy_tokens == other.policy_tokens);
        check(
            "recovery_codes",
            self.recovery_codes == other.recovery_codes,
        );
        check("temp_tokens", self.temp_tokens == other.temp_tokens);
        check("tokens", self.tokens == other.tokens);
        check("user_devices", self.user_devices == other.user_devices);
        check("user_locks", self.user_locks == other.user_locks);
        out
    }
}

/// Moving a whole store to another backend (`totpd migrate`): every row of every table,
/// sealed values as they are, so the target opens with the same key ring. Not part of
/// [`Store`]: a daemon never calls it; the command opens both stores itself.
#[async_trait]
pub trait MigrateStore {
    /// Every row of the store ([`StoreDump`]), in one consistent read.
    async fn dump_all(&self) -> Result<StoreDump, StoreError>;
    /// Inserts `d` into this store, which must hold no row (but its own key check):
    /// every row in one transaction, committed whole or not at all, while no other
    /// call writes. A store holding rows is refused with `Setup`, saying which tables
    /// hold how many, and nothing is written. Sealed values are stored as they are: the
    /// caller checks first that this store's key ring opens them.
    async fn load_all(&self, d: &StoreDump) -> Result<(), StoreError>;
}

/// The refusal of [`MigrateStore::load_all`] on a store holding rows: `held` lists the
/// tables that hold some, with how many.
pub fn not_empty(held: &[(String, u64)]) -> StoreError {
    let list = held
        .iter()
        .map(|(t, n)| format!("{t}: {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    StoreError::Setup(format!(
        "the target database is not empty (rows in {list}); a migration goes only into an \
         empty database, and nothing was written"
    ))
}

/// Every area of the store, as one handle the app holds.
#[async_trait]
pub trait Store:
    TokenStore
    + PolicyStore
    + PolicyTokenStore
    + MfaStore
    + AgentStore
    + EngineStore
    + UserTotpStore
    + OpsStore
    + KeyStore
    + TransferStore
    + Send
    + Sync
{
    /// Finishes queued writes and closes the database; later calls fail with `Closed`.
    /// Blocks: call it off the async workers.
    fn close(&self);

    /// Locks begun since the store was opened, by area: a lock begins when a refused
    /// attempt reaches the limit of consecutive failures. Only the store sees that moment
    /// (it runs the verification inside its write), so it counts them, for
    /// `totpd_lockouts_total`. A backend that does not count reports none.
    fn lockouts(&self) -> Lockouts {
        Lockouts::default()
    }

    /// Whether the database answers now, for health: `Unavailable` while a database
    /// server is unreachable. A store inside the process (SQLite) always answers.
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// A number that moves on whenever a token is revoked or renewed, or a policy is
    /// written or deleted: after the write's commit, before its caller is answered, and
    /// even if that caller has gone. A cache of tokens and policies built while it read
    /// `g` is good while it still reads `g` ([`crate::auth::cache`]). `None` when the
    /// store cannot know every such write (another process may make them: PostgreSQL
    /// shared by several daemons): then nothing may be cached.
    fn auth_generation(&self) -> Option<u64> {
        None
    }
}

/// The counters behind [`Store::lockouts`], one per area, that a backend bumps once a
/// write that began a lock has committed.
#[derive(Debug, Default)]
pub struct LockCounts {
    pub vault_mfa: std::sync::atomic::AtomicU64,
    pub user_totp: std::sync::atomic::AtomicU64,
    pub vault_totp: std::sync::atomic::AtomicU64,
}

impl LockCounts {
    /// The counts now.
    pub fn snapshot(&self) -> Lockouts {
        use std::sync::atomic::Ordering::Relaxed;
        Lockouts {
            vault_mfa: self.vault_mfa.load(Relaxed),
            user_totp: self.user_totp.load(Relaxed),
            vault_totp: self.vault_totp.load(Relaxed),
        }
    }
}

/// Locks begun since a store was opened (see [`Store::lockouts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lockouts {
    /// Vault identity MFA secrets (`validate`).
    pub vault_mfa: u64,
    /// Users of the login step (`verify`, `activate`, confirmations, recovery codes).
    pub user_totp: u64,
    /// Keys of Vault's TOTP secrets engine (`code/<name>` validations).
    pub vault_totp: u64,
}

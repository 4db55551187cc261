//! Export and import on PostgreSQL ([`TransferStore`]), with SQLite's rules.
//!
//! **Export** is one `REPEATABLE READ READ ONLY` transaction: every statement of it
//! reads the same snapshot, so the methods, secrets and recovery codes it returns are
//! those of one moment, whatever other daemons commit meanwhile (the `READ COMMITTED`
//! every other call uses would give each statement a snapshot of its own). Each surface
//! is one query joining its rows to their `otp_secrets` row.
//!
//! **Import** is one `READ COMMITTED` transaction, committed whole or not at all:
//!
//! - It first takes `pg_advisory_xact_lock(IMPORT_LOCK)`, so imports, on any daemon,
//!   run one after another (an import of a plain otpauth URI looks for the same seed
//!   under the same label before making a new id: two at once could both make one).
//! - Nothing is overwritten, even by a concurrent call on another daemon: each insert
//!   is `ON CONFLICT DO NOTHING`, and an insert that found a row committed (or being
//!   committed: PostgreSQL waits for it) by someone else is decided again on what is
//!   there now, as if the import had run just after that call. A secret whose binding
//!   row lost such a race has its `otp_secrets` row deleted again, in the transaction.
//! - A method found is locked `FOR KEY SHARE` until the import commits, so it cannot be
//!   deleted under an enrolment being imported; users are locked with their `user_locks`
//!   row (as every write about a user is, see `user_totp.rs`), so the device cap and
//!   "active before the import" hold against concurrent setups and activations.
//! - An engine key's name is locked with the advisory lock `put_engine_key` takes (see
//!   `engine.rs`), so an import and a put of one name take turns: the import finds the
//!   put's key and keeps it, or the put replaces the imported key, as a later put does.
//!
//! The call's deadline grows with the transfer's size (one connection's round trips per
//! entry), beyond the store's deadline for one short call.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Transaction;
use tokio_postgres::{IsolationLevel, Row};

use super::mfa::{exec, int, params_of_row, row, rows, SecretRow, SECRET_COLS};
use super::user_totp::lock_user;
use super::{col, otp_secret_aad, PgStore};
use crate::store::{
    ExportScope, Holder, ImportRefusal, ImportReport, Imported, MethodRecord, MovedRecoveryCode,
    MovedSecret, RecoveryHash, Sealer, StoreError, Transfer, TransferStore, MAX_USER_DEVICES,
};

/// The transaction-level advisory lock every import takes ("totpdimp" in ASCII).
const IMPORT_LOCK: i64 = i64::from_be_bytes(*b"totpdimp");

/// Time allowed per entry of an import, beyond the store's deadline.
const PER_ENTRY: Duration = Duration::from_millis(20);

/// An export reads everything: allowed this many times the store's deadline.
const EXPORT_DEADLINES: u32 = 6;

pub(super) const METHOD_COLS: &str =
    "id, name, issuer, period, key_size, qr_size, algorithm, digits, skew, \
                           max_validation_attempts, created_at";

/// A method row (the columns of [`METHOD_COLS`]), checked.
pub(super) fn method_of(r: &Row) -> Result<MethodRecord, StoreError> {
    let id: String = col(r, 0)?;
    let algorithm: String = col(r, 6)?;
    let n = |i: usize, what: &str| -> Result<u32, StoreError> {
        let v: i32 = col(r, i)?;
        u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("mfa_methods {id}: {what} {v}")))
    };
    Ok(MethodRecord {
        params: params_of_row("mfa_methods", &id, &algorithm, col(r, 7)?, col(r, 3)?)?,
        key_size: n(4, "key_size")?,
        qr_size: n(5, "qr_size")?,
        skew: n(8, "skew")?,
        max_validation_attempts: n(9, "max_validation_attempts")?,
        name: col(r, 1)?,
        issuer: col(r, 2)?,
        created_at: col(r, 10)?,
        id,
    })
}

/// A secret as moved: opened, with its parameters and last accepted step.
fn moved(
    r: &Row,
    at: usize,
    sealer: &Sealer,
    holder: Holder,
    created_at: i64,
) -> Result<MovedSecret, StoreError> {
    let s = SecretRow::read(r, at)?;
    Ok(MovedSecret {
        holder,
        secret: s.open(sealer)?,
        params: s.params,
        last_step: s.state.last_step,
        created_at,
    })
}

#[async_trait]
impl TransferStore for PgStore {
    async fn export_secrets(&self, scope: ExportScope<'_>) -> Result<Transfer, StoreError> {
        let entity = match scope {
            ExportScope::All => None,
            ExportScope::Entity(e) => Some(e),
        };
        tokio::time::timeout(self.deadline * EXPORT_DEADLINES, async {
            let mut c = self.client().await?;
            let tx = c
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            let t = export(&tx, &self.sealer, entity).await?;
            tx.commit().await?;
            Ok(t)
        })
        .await
        .unwrap_or(Err(StoreError::Unavailable))
    }

    async fn import_secrets(&self, t: &Transfer, now: i64) -> Result<ImportReport, StoreError> {
        let entries = t.methods.len() + t.secrets.len() + t.recovery_codes.len();
        let deadline = self.deadline + PER_ENTRY * u32::try_from(entries).unwrap_or(u32::MAX);
        tokio::time::timeout(deadline, async {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            // The import may take longer than one statement's usual bound.
            let bound = deadline.as_millis().max(1);
            tx.batch_execute(&format!("SET LOCAL statement_timeout = {bound}"))
                .await?;
            exec(&tx, "SELECT pg_advisory_xact_lock($1)", &[&IMPORT_LOCK]).await?;
            let report = import(&tx, &self.sealer, t, now).await?;
            tx.commit().await?;
            Ok(report)
        })
        .await
        .unwrap_or(Err(StoreError::Unavailable))
    }
}

// ----- export -----

async fn export(
    tx: &Transaction<'_>,
    sealer: &Sealer,
    entity: Option<&str>,
) -> Result<Transfer, StoreError> {
    let methods = rows(
        tx,
        &format!(
            "SELECT {METHOD_COLS} FROM mfa_methods
             WHERE $1::text IS NULL OR id IN (SELECT method_id FROM mfa_secrets WHERE entity_id = $1)
             ORDER BY id"
        ),
        &[&entity],
    )
    .await?
    .iter()
    .map(method_of)
    .collect::<Result<Vec<_>, _>>()?;

    let mut secrets = Vec::new();
    for r in rows(
        tx,
        &format!(
            "SELECT s.method_id, s.entity_id, s.created_at, {SECRET_COLS}
             FROM mfa_secrets s JOIN otp_secrets o ON o.id = s.secret_id
             WHERE $1::text IS NULL OR s.entity_id = $1
             ORDER BY s.method_id, s.entity_id"
        ),
        &[&entity],
    )
    .await?
    {
        let holder = Holder::VaultMfa {
            method_id: col(&r, 0)?,
            entity_id: col(&r, 1)?,
        };
        secrets.push(moved(&r, 3, sealer, holder, col(&r, 2)?)?);
    }
    for r in rows(
        tx,
        &format!(
            "SELECT a.id, a.entity_id, a.label, a.issuer, a.created_at, {SECRET_COLS}
             FROM agent_secrets a JOIN otp_secrets o ON o.id = a.id
             WHERE $1::text IS NULL OR a.entity_id = $1
             ORDER BY a.entity_id, a.created_at, a.id"
        ),
        &[&entity],
    )
    .await?
    {
        let holder = Holder::Agent {
            id: Some(col(&r, 0)?),
            entity_id: col(&r, 1)?,
            label: col(&r, 2)?,
            issuer: col(&r, 3)?,
        };
        secrets.push(moved(&r, 5, sealer, holder, col(&r, 4)?)?);
    }
    for r in rows(
        tx,
        &format!(
            "SELECT d.entity_id, d.name, d.active, d.created_at, {SECRET_COLS}
             FROM user_devices d JOIN otp_secrets o ON o.id = d.secret_id
             WHERE $1::text IS NULL OR d.entity_id = $1
             ORDER BY d.entity_id, d.created_at, d.name"
        ),
        &[&entity],
    )
    .await?
    {
        let holder = Holder::UserDevice {
            entity_id: col(&r, 0)?,
            name: col(&r, 1)?,
            active: col(&r, 2)?,
        };
        secrets.push(moved(&r, 4, sealer, holder, col(&r, 3)?)?);
    }

    // The TOTP engine's keys belong to mounts, not to entities: all or none.
    if entity.is_none() {
        for r in rows(
            tx,
            &format!(
                "SELECT k.mount, k.name, k.issuer, k.account_name, k.skew, k.created_at, {SECRET_COLS}
                 FROM engine_keys k JOIN otp_secrets o ON o.id = k.secret_id
                 ORDER BY k.mount COLLATE \"C\", k.name COLLATE \"C\""
            ),
            &[],
        )
        .await?
        {
            let mount: String = col(&r, 0)?;
            let name: String = col(&r, 1)?;
            let skew: i32 = col(&r, 4)?;
            let skew = u32::try_from(skew).map_err(|_| {
                StoreError::Corrupt(format!("engine_keys {mount}/{name}: skew {skew}"))
            })?;
            let holder = Holder::VaultTotp {
                issuer: col(&r, 2)?,
                account_name: col(&r, 3)?,
                skew,
                mount,
                name,
            };
            secrets.push(moved(&r, 6, sealer, holder, col(&r, 5)?)?);
        }
    }

    // A user's recovery codes live as long as an active device does.
    let recovery_codes = rows(
        tx,
        "SELECT entity_id, selector, hash FROM recovery_codes
         WHERE spent_at IS NULL AND ($1::text IS NULL OR entity_id = $1)
           AND entity_id IN (SELECT entity_id FROM user_devices WHERE active)
         ORDER BY entity_id, selector",
        &[&entity],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(MovedRecoveryCode {
            entity_id: col(r, 0)?,
            code: RecoveryHash {
                selector: col(r, 1)?,
                hash: col(r, 2)?,
            },
        })
    })
    .collect::<Result<Vec<_>, StoreError>>()?;

    Ok(Transfer {
        methods,
        secrets,
        recovery_codes,
    })
}

// ----- import -----

async fn import(
    tx: &Transaction<'_>,
    sealer: &Sealer,
    t: &Transfer,
    now: i64,
) -> Result<ImportReport, StoreError> {
    // Users active before the import keep their own recovery codes. Their locks are
    // taken now (in one order) and held to the end, so "before" stays true.
    let mut active_before: BTreeMap<&str, bool> = BTreeMap::new();
    for code in &t.recovery_codes {
        active_before.insert(&code.entity_id, false);
    }
    for (entity, active) in active_before.iter_mut() {
        lock_user(tx, entity).await?;
        *active = active_devices(tx, entity).await? > 0;
    }

    let mut report = ImportReport::default();
    let mut refused_methods = Vec::new();
    for m in &t.methods {
        let outcome = import_method(tx, m).await?;
        if matches!(outcome, Imported::Refused(_)) {
            refused_methods.push(m.id.as_str());
        }
        report.methods.push(outcome);
    }

    for s in &t.secrets {
        let done = match &s.holder {
            Holder::VaultMfa {
                method_id,
                entity_id,
            } => {
                let outcome = if refused_methods.contains(&method_id.as_str()) {
                    Imported::Refused(ImportRefusal::MethodRefused)
                } else if row(
                    tx,
                    "SELECT 1 FROM mfa_methods WHERE id = $1 FOR KEY SHARE",
                    &[method_id],
                )
                .await?
                .is_none()
                {
                    Imported::Refused(ImportRefusal::NoMethod)
                } else if enrolled(tx, method_id, entity_id).await? {
                    Imported::Exists
                } else {
                    let sid = new_id();
                    insert_secret(tx, sealer, &sid, s).await?;
                    let linked = exec(
                        tx,
                        "INSERT INTO mfa_secrets (method_id, entity_id, secret_id, created_at)
                         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                        &[method_id, entity_id, &sid, &s.created_at],
                    )
                    .await?;
                    if linked == 1 {
                        Imported::Created
                    } else {
                        // A concurrent enrolment of the entity won.
                        drop_secret(tx, &sid).await?;
                        Imported::Exists
                    }
                };
                (outcome, None)
            }
            Holder::Agent {
                entity_id,
                id,
                label,
                issuer,
            } => import_agent(tx, sealer, s, entity_id, id.as_deref(), label, issuer).await?,
            Holder::UserDevice {
                entity_id,
                name,
                active,
            } => {
                lock_user(tx, entity_id).await?;
                let exists = row(
                    tx,
                    "SELECT 1 FROM user_devices WHERE entity_id = $1 AND name = $2",
                    &[entity_id, name],
                )
                .await?
                .is_some();
                let devices: i64 = match row(
                    tx,
                    "SELECT count(*) FROM user_devices WHERE entity_id = $1",
                    &[entity_id],
                )
                .await?
                {
                    Some(r) => col(&r, 0)?,
                    None => 0,
                };
                let outcome = if exists {
                    Imported::Exists
                } else if devices.max(0) as usize >= MAX_USER_DEVICES {
                    Imported::Refused(ImportRefusal::TooManyDevices)
                } else {
                    let sid = new_id();
                    insert_secret(tx, sealer, &sid, s).await?;
                    let activated_at = active.then_some(now);
                    let added = exec(
                        tx,
                        "INSERT INTO user_devices (entity_id, name, secret_id, active, created_at, activated_at)
                         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                        &[entity_id, name, &sid, active, &s.created_at, &activated_at],
                    )
                    .await?;
                    if added == 1 {
                        Imported::Created
                    } else {
                        drop_secret(tx, &sid).await?;
                        Imported::Exists
                    }
                };
                (outcome, None)
            }
            Holder::VaultTotp {
                mount,
                name,
                issuer,
                account_name,
                skew,
            } => (
                import_engine_key(tx, sealer, s, mount, name, issuer, account_name, *skew).await?,
                None,
            ),
        };
        report.secrets.push(done);
    }

    let mut codes: BTreeMap<&str, Vec<&RecoveryHash>> = BTreeMap::new();
    for code in &t.recovery_codes {
        codes.entry(&code.entity_id).or_default().push(&code.code);
    }
    for (entity, set) in codes {
        let outcome = if active_before.get(entity).copied().unwrap_or(false) {
            Imported::Exists
        } else if active_devices(tx, entity).await? == 0 {
            Imported::Refused(ImportRefusal::NotActive)
        } else {
            // A user without an active device has no codes of its own; none linger.
            exec(
                tx,
                "DELETE FROM recovery_codes WHERE entity_id = $1",
                &[&entity],
            )
            .await?;
            for code in &set {
                exec(
                    tx,
                    "INSERT INTO recovery_codes (entity_id, selector, hash, created_at)
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    &[&entity, &code.selector, &code.hash, &now],
                )
                .await?;
            }
            Imported::Created
        };
        report.recovery_codes.push((entity.to_string(), outcome));
    }
    Ok(report)
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

async fn active_devices(tx: &Transaction<'_>, entity: &str) -> Result<i64, StoreError> {
    match row(
        tx,
        "SELECT count(*) FROM user_devices WHERE entity_id = $1 AND active",
        &[&entity],
    )
    .await?
    {
        Some(r) => col(&r, 0),
        None => Ok(0),
    }
}

async fn enrolled(
    tx: &Transaction<'_>,
    method_id: &str,
    entity_id: &str,
) -> Result<bool, StoreError> {
    Ok(row(
        tx,
        "SELECT 1 FROM mfa_secrets WHERE method_id = $1 AND entity_id = $2",
        &[&method_id, &entity_id],
    )
    .await?
    .is_some())
}

/// The method with this id, locked against deletion until the import ends.
async fn locked_method(tx: &Transaction<'_>, id: &str) -> Result<Option<MethodRecord>, StoreError> {
    row(
        tx,
        &format!("SELECT {METHOD_COLS} FROM mfa_methods WHERE id = $1 FOR KEY SHARE"),
        &[&id],
    )
    .await?
    .map(|r| method_of(&r))
    .transpose()
}

fn same_method(here: &MethodRecord, m: &MethodRecord) -> Imported {
    let same = here.name == m.name
        && here.issuer == m.issuer
        && here.params == m.params
        && here.key_size == m.key_size
        && here.qr_size == m.qr_size
        && here.skew == m.skew
        && here.max_validation_attempts == m.max_validation_attempts;
    if same {
        Imported::Exists
    } else {
        Imported::Refused(ImportRefusal::MethodDiffers)
    }
}

/// A method with this id and configuration exists already, or is created; refused when
/// the id has another configuration here, or another method has its name.
async fn import_method(tx: &Transaction<'_>, m: &MethodRecord) -> Result<Imported, StoreError> {
    if let Some(here) = locked_method(tx, &m.id).await? {
        return Ok(same_method(&here, m));
    }
    if let Some(name) = &m.name {
        if row(tx, "SELECT 1 FROM mfa_methods WHERE name = $1", &[name])
            .await?
            .is_some()
        {
            return Ok(Imported::Refused(ImportRefusal::MethodNameTaken));
        }
    }
    let created = exec(
        tx,
        &format!(
            "INSERT INTO mfa_methods ({METHOD_COLS})
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING"
        ),
        &[
            &m.id,
            &m.name,
            &m.issuer,
            &int("period", m.params.period)?,
            &int("key_size", m.key_size.into())?,
            &int("qr_size", m.qr_size.into())?,
            &m.params.algorithm.as_str(),
            &int("digits", m.params.digits.into())?,
            &int("skew", m.skew.into())?,
            &int("max_validation_attempts", m.max_validation_attempts.into())?,
            &m.created_at,
        ],
    )
    .await?;
    if created == 1 {
        return Ok(Imported::Created);
    }
    // A concurrent create took the id or the name: decide on what is there now.
    Ok(match locked_method(tx, &m.id).await? {
        Some(here) => same_method(&here, m),
        None => Imported::Refused(ImportRefusal::MethodNameTaken),
    })
}

/// An agent secret: under its id if it has one and the id is free (the same id held by
/// the same entity is there already); without one, a new id, unless the entity holds
/// the same seed under the same label, issuer and parameters.
async fn import_agent(
    tx: &Transaction<'_>,
    sealer: &Sealer,
    s: &MovedSecret,
    entity: &str,
    id: Option<&str>,
    label: &str,
    issuer: &Option<String>,
) -> Result<(Imported, Option<String>), StoreError> {
    let owner = |id: String| async move {
        row(
            tx,
            "SELECT entity_id FROM agent_secrets WHERE id = $1",
            &[&id],
        )
        .await?
        .map(|r| col::<String>(&r, 0))
        .transpose()
    };
    if let Some(id) = id {
        let outcome = match owner(id.to_string()).await? {
            Some(o) if o == entity => Imported::Exists,
            Some(_) => Imported::Refused(ImportRefusal::IdTaken),
            // Free as far as this snapshot sees: the insert decides.
            None => {
                if insert_secret(tx, sealer, id, s).await? {
                    exec(
                        tx,
                        "INSERT INTO agent_secrets (id, entity_id, label, issuer, created_at)
                         VALUES ($1, $2, $3, $4, $5)",
                        &[&id, &entity, &label, issuer, &s.created_at],
                    )
                    .await?;
                    Imported::Created
                } else {
                    // Another secret has this id (of any surface, or made just now).
                    match owner(id.to_string()).await? {
                        Some(o) if o == entity => Imported::Exists,
                        _ => Imported::Refused(ImportRefusal::IdTaken),
                    }
                }
            }
        };
        return Ok((outcome, Some(id.to_string())));
    }
    let same = rows(
        tx,
        &format!(
            "SELECT {SECRET_COLS} FROM agent_secrets a JOIN otp_secrets o ON o.id = a.id
             WHERE a.entity_id = $1 AND a.label = $2 AND a.issuer IS NOT DISTINCT FROM $3
             ORDER BY a.created_at, a.id"
        ),
        &[&entity, &label, issuer],
    )
    .await?;
    for r in &same {
        let existing = SecretRow::read(r, 0)?;
        if existing.params == s.params && existing.open(sealer)? == s.secret {
            return Ok((Imported::Exists, Some(existing.id)));
        }
    }
    let id = new_id();
    insert_secret(tx, sealer, &id, s).await?;
    exec(
        tx,
        "INSERT INTO agent_secrets (id, entity_id, label, issuer, created_at)
         VALUES ($1, $2, $3, $4, $5)",
        &[&id, &entity, &label, issuer, &s.created_at],
    )
    .await?;
    Ok((Imported::Created, Some(id)))
}

/// An engine key: created when its mount has no key by this name, else left as it is.
///
/// The name's advisory lock is taken first, as `put_engine_key` takes it, and held to
/// the commit: a put of the name waiting for it then replaces the imported key, as the
/// last put does, instead of failing on the row the import inserted; and a put holding
/// it commits before this looks, so its key is found and kept.
#[allow(clippy::too_many_arguments)]
async fn import_engine_key(
    tx: &Transaction<'_>,
    sealer: &Sealer,
    s: &MovedSecret,
    mount: &str,
    name: &str,
    issuer: &str,
    account_name: &str,
    skew: u32,
) -> Result<Imported, StoreError> {
    super::engine::lock_key_name(tx, mount, name).await?;
    if row(
        tx,
        "SELECT 1 FROM engine_keys WHERE mount = $1 AND name = $2",
        &[&mount, &name],
    )
    .await?
    .is_some()
    {
        return Ok(Imported::Exists);
    }
    let sid = new_id();
    insert_secret(tx, sealer, &sid, s).await?;
    let added = exec(
        tx,
        "INSERT INTO engine_keys (mount, name, secret_id, issuer, account_name, skew, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        &[
            &mount,
            &name,
            &sid,
            &issuer,
            &account_name,
            &int("skew", skew.into())?,
            &s.created_at,
        ],
    )
    .await?;
    if added == 1 {
        Ok(Imported::Created)
    } else {
        drop_secret(tx, &sid).await?;
        Ok(Imported::Exists)
    }
}

/// Seals `s` into a new `otp_secrets` row `id`, with its last accepted step and
/// creation time; false (nothing written) if the id is taken.
async fn insert_secret(
    tx: &Transaction<'_>,
    sealer: &Sealer,
    id: &str,
    s: &MovedSecret,
) -> Result<bool, StoreError> {
    let sealed = sealer.seal(&otp_secret_aad(id), &s.secret)?;
    let n = exec(
        tx,
        "INSERT INTO otp_secrets (id, sealed, algorithm, digits, period, last_step, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
        &[
            &id,
            &sealed,
            &s.params.algorithm.as_str(),
            &int("digits", s.params.digits.into())?,
            &int("period", s.params.period)?,
            &s.last_step,
            &s.created_at,
        ],
    )
    .await?;
    Ok(n == 1)
}

/// Removes a secret row this import inserted and could not bind.
async fn drop_secret(tx: &Transaction<'_>, id: &str) -> Result<(), StoreError> {
    exec(tx, "DELETE FROM otp_secrets WHERE id = $1", &[&id]).await?;
    Ok(())
}

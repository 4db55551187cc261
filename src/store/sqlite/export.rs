//! Export and import: every TOTP secret opened, with what it takes to recreate it in
//! another store; and the creation of what is missing, in one write.

use std::collections::BTreeMap;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use super::mfa::{self, MethodRow, METHOD_COLS};
use super::otp_secrets;
use super::SqliteStore;
use crate::store::{
    ExportScope, Holder, ImportRefusal, ImportReport, Imported, MethodRecord, MovedRecoveryCode,
    MovedSecret, RecoveryHash, Sealer, StoreError, Transfer, TransferStore, MAX_USER_DEVICES,
};

#[async_trait]
impl TransferStore for SqliteStore {
    async fn export_secrets(&self, scope: ExportScope<'_>) -> Result<Transfer, StoreError> {
        let entity = match scope {
            ExportScope::All => None,
            ExportScope::Entity(e) => Some(e.to_string()),
        };
        let sealer = self.sealer.clone();
        self.read(move |c| {
            // One read transaction: every row as of one moment.
            let tx = c.unchecked_transaction()?;
            let t = export(&tx, &sealer, entity.as_deref())?;
            tx.commit()?;
            Ok(t)
        })
        .await
    }

    async fn import_secrets(&self, t: &Transfer, now: i64) -> Result<ImportReport, StoreError> {
        let t = t.clone();
        let sealer = self.sealer.clone();
        self.write(move |c| import(c, &sealer, &t, now)).await
    }
}

// ----- export -----

fn export(c: &Connection, sealer: &Sealer, entity: Option<&str>) -> Result<Transfer, StoreError> {
    let methods = {
        let mut stmt = c.prepare(&format!(
            "SELECT {METHOD_COLS} FROM mfa_methods
             WHERE ?1 IS NULL OR id IN (SELECT method_id FROM mfa_secrets WHERE entity_id = ?1)
             ORDER BY id"
        ))?;
        let rows = stmt
            .query_map([entity], MethodRow::read)?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(MethodRow::check)
            .collect::<Result<Vec<_>, _>>()?
    };
    let mut secrets = Vec::new();
    let opened = |id: &str| {
        otp_secrets::open_with_step(c, sealer, id)?
            .ok_or_else(|| StoreError::Corrupt(format!("otp_secrets {id}: missing")))
    };

    let mfa: Vec<(String, String, String, i64)> = c
        .prepare(
            "SELECT method_id, entity_id, secret_id, created_at FROM mfa_secrets
             WHERE ?1 IS NULL OR entity_id = ?1 ORDER BY method_id, entity_id",
        )?
        .query_map([entity], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<Result<_, _>>()?;
    for (method_id, entity_id, sid, created_at) in mfa {
        let (secret, params, last_step) = opened(&sid)?;
        secrets.push(MovedSecret {
            holder: Holder::VaultMfa {
                method_id,
                entity_id,
            },
            secret,
            params,
            last_step,
            created_at,
        });
    }

    type AgentRow = (String, String, String, Option<String>, i64);
    let agents: Vec<AgentRow> = c
        .prepare(
            "SELECT id, entity_id, label, issuer, created_at FROM agent_secrets
             WHERE ?1 IS NULL OR entity_id = ?1 ORDER BY entity_id, created_at, id",
        )?
        .query_map([entity], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<Result<_, _>>()?;
    for (id, entity_id, label, issuer, created_at) in agents {
        let (secret, params, last_step) = opened(&id)?;
        secrets.push(MovedSecret {
            holder: Holder::Agent {
                entity_id,
                id: Some(id),
                label,
                issuer,
            },
            secret,
            params,
            last_step,
            created_at,
        });
    }

    let devices: Vec<(String, String, String, bool, i64)> = c
        .prepare(
            "SELECT entity_id, name, secret_id, active, created_at FROM user_devices
             WHERE ?1 IS NULL OR entity_id = ?1 ORDER BY entity_id, created_at, rowid",
        )?
        .query_map([entity], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<Result<_, _>>()?;
    for (entity_id, name, sid, active, created_at) in devices {
        let (secret, params, last_step) = opened(&sid)?;
        secrets.push(MovedSecret {
            holder: Holder::UserDevice {
                entity_id,
                name,
                active,
            },
            secret,
            params,
            last_step,
            created_at,
        });
    }

    // The TOTP engine's keys belong to mounts, not to entities: all or none.
    if entity.is_none() {
        type EngineRow = (String, String, String, String, String, i64, i64);
        let keys: Vec<EngineRow> = c
            .prepare(
                "SELECT mount, name, secret_id, issuer, account_name, skew, created_at
                 FROM engine_keys ORDER BY mount, name",
            )?
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            })?
            .collect::<Result<_, _>>()?;
        for (mount, name, sid, issuer, account_name, skew, created_at) in keys {
            let skew = u32::try_from(skew).map_err(|_| {
                StoreError::Corrupt(format!("engine_keys {mount}/{name}: skew {skew}"))
            })?;
            let (secret, params, last_step) = opened(&sid)?;
            secrets.push(MovedSecret {
                holder: Holder::VaultTotp {
                    mount,
                    name,
                    issuer,
                    account_name,
                    skew,
                },
                secret,
                params,
                last_step,
                created_at,
            });
        }
    }

    // A user's recovery codes live as long as an active device does.
    let recovery_codes = c
        .prepare(
            "SELECT entity_id, selector, hash FROM recovery_codes
             WHERE spent_at IS NULL AND (?1 IS NULL OR entity_id = ?1)
               AND entity_id IN (SELECT entity_id FROM user_devices WHERE active = 1)
             ORDER BY entity_id, selector",
        )?
        .query_map([entity], |r| {
            Ok(MovedRecoveryCode {
                entity_id: r.get(0)?,
                code: RecoveryHash {
                    selector: r.get(1)?,
                    hash: r.get(2)?,
                },
            })
        })?
        .collect::<Result<_, _>>()?;

    Ok(Transfer {
        methods,
        secrets,
        recovery_codes,
    })
}

// ----- import -----

fn import(
    c: &Connection,
    sealer: &Sealer,
    t: &Transfer,
    now: i64,
) -> Result<ImportReport, StoreError> {
    // Users active before the import keep their own recovery codes.
    let mut active_before: BTreeMap<&str, bool> = BTreeMap::new();
    for code in &t.recovery_codes {
        if !active_before.contains_key(code.entity_id.as_str()) {
            active_before.insert(&code.entity_id, active_devices(c, &code.entity_id)? > 0);
        }
    }

    let mut report = ImportReport::default();
    let mut refused_methods = Vec::new();
    for m in &t.methods {
        let outcome = import_method(c, m)?;
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
                } else if mfa::get_method(c, method_id)?.is_none() {
                    Imported::Refused(ImportRefusal::NoMethod)
                } else if c
                    .prepare_cached(
                        "SELECT 1 FROM mfa_secrets WHERE method_id = ?1 AND entity_id = ?2",
                    )?
                    .exists(params![method_id, entity_id])?
                {
                    Imported::Exists
                } else {
                    let sid = new_secret(c, sealer, None, s)?;
                    c.execute(
                        "INSERT INTO mfa_secrets (method_id, entity_id, secret_id, created_at)
                         VALUES (?1, ?2, ?3, ?4)",
                        params![method_id, entity_id, sid, s.created_at],
                    )?;
                    Imported::Created
                };
                (outcome, None)
            }
            Holder::Agent {
                entity_id,
                id,
                label,
                issuer,
            } => import_agent(c, sealer, s, entity_id, id.as_deref(), label, issuer)?,
            Holder::UserDevice {
                entity_id,
                name,
                active,
            } => {
                let exists = c
                    .prepare_cached(
                        "SELECT 1 FROM user_devices WHERE entity_id = ?1 AND name = ?2",
                    )?
                    .exists(params![entity_id, name])?;
                let devices: i64 = c
                    .prepare_cached("SELECT count(*) FROM user_devices WHERE entity_id = ?1")?
                    .query_row([entity_id], |r| r.get(0))?;
                let outcome = if exists {
                    Imported::Exists
                } else if devices as usize >= MAX_USER_DEVICES {
                    Imported::Refused(ImportRefusal::TooManyDevices)
                } else {
                    let sid = new_secret(c, sealer, None, s)?;
                    c.execute(
                        "INSERT INTO user_devices (entity_id, name, secret_id, active, created_at, activated_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        params![entity_id, name, sid, active, s.created_at, active.then_some(now)],
                    )?;
                    Imported::Created
                };
                (outcome, None)
            }
            Holder::VaultTotp {
                mount,
                name,
                issuer,
                account_name,
                skew,
            } => {
                let exists = c
                    .prepare_cached("SELECT 1 FROM engine_keys WHERE mount = ?1 AND name = ?2")?
                    .exists(params![mount, name])?;
                let outcome = if exists {
                    Imported::Exists
                } else {
                    let sid = new_secret(c, sealer, None, s)?;
                    c.execute(
                        "INSERT INTO engine_keys (mount, name, secret_id, issuer, account_name, skew, created_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                        params![mount, name, sid, issuer, account_name, skew, s.created_at],
                    )?;
                    Imported::Created
                };
                (outcome, None)
            }
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
        } else if active_devices(c, entity)? == 0 {
            Imported::Refused(ImportRefusal::NotActive)
        } else {
            // A user without an active device has no codes of its own; none linger.
            c.execute("DELETE FROM recovery_codes WHERE entity_id = ?1", [entity])?;
            let mut stmt = c.prepare_cached(
                "INSERT INTO recovery_codes (entity_id, selector, hash, created_at) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for code in &set {
                stmt.execute(params![entity, code.selector, code.hash, now])?;
            }
            Imported::Created
        };
        report.recovery_codes.push((entity.to_string(), outcome));
    }
    Ok(report)
}

fn active_devices(c: &Connection, entity: &str) -> Result<i64, StoreError> {
    Ok(
        c.prepare_cached("SELECT count(*) FROM user_devices WHERE entity_id = ?1 AND active = 1")?
            .query_row([entity], |r| r.get(0))?,
    )
}

/// A method with this id and configuration exists already, or is created; refused when
/// the id has another configuration here, or another method has its name.
fn import_method(c: &Connection, m: &MethodRecord) -> Result<Imported, StoreError> {
    if let Some(here) = mfa::get_method(c, &m.id)? {
        let same = here.name == m.name
            && here.issuer == m.issuer
            && here.params == m.params
            && here.key_size == m.key_size
            && here.qr_size == m.qr_size
            && here.skew == m.skew
            && here.max_validation_attempts == m.max_validation_attempts;
        return Ok(if same {
            Imported::Exists
        } else {
            Imported::Refused(ImportRefusal::MethodDiffers)
        });
    }
    if let Some(name) = &m.name {
        let taken = c
            .prepare_cached("SELECT 1 FROM mfa_methods WHERE name = ?1")?
            .exists([name])?;
        if taken {
            return Ok(Imported::Refused(ImportRefusal::MethodNameTaken));
        }
    }
    super::mfa::insert_method(c, m)?;
    Ok(Imported::Created)
}

/// An agent secret: under its id if it has one and the id is free (the same id held by
/// the same entity is there already); without one, a new id, unless the entity holds
/// the same seed under the same label, issuer and parameters.
fn import_agent(
    c: &Connection,
    sealer: &Sealer,
    s: &MovedSecret,
    entity: &str,
    id: Option<&str>,
    label: &str,
    issuer: &Option<String>,
) -> Result<(Imported, Option<String>), StoreError> {
    if let Some(id) = id {
        let owner: Option<String> = c
            .prepare_cached("SELECT entity_id FROM agent_secrets WHERE id = ?1")?
            .query_row([id], |r| r.get(0))
            .optional()?;
        let outcome = match owner {
            Some(o) if o == entity => Imported::Exists,
            Some(_) => Imported::Refused(ImportRefusal::IdTaken),
            None if c
                .prepare_cached("SELECT 1 FROM otp_secrets WHERE id = ?1")?
                .exists([id])? =>
            {
                Imported::Refused(ImportRefusal::IdTaken)
            }
            None => {
                insert_agent(c, sealer, s, entity, id, label, issuer)?;
                Imported::Created
            }
        };
        return Ok((outcome, Some(id.to_string())));
    }
    let same: Vec<String> = c
        .prepare_cached(
            "SELECT id FROM agent_secrets WHERE entity_id = ?1 AND label = ?2 AND issuer IS ?3",
        )?
        .query_map(params![entity, label, issuer], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for existing in same {
        if let Some((secret, params)) = otp_secrets::open(c, sealer, &existing)? {
            if secret == s.secret && params == s.params {
                return Ok((Imported::Exists, Some(existing)));
            }
        }
    }
    let id = uuid::Uuid::new_v4().to_string();
    insert_agent(c, sealer, s, entity, &id, label, issuer)?;
    Ok((Imported::Created, Some(id)))
}

fn insert_agent(
    c: &Connection,
    sealer: &Sealer,
    s: &MovedSecret,
    entity: &str,
    id: &str,
    label: &str,
    issuer: &Option<String>,
) -> Result<(), StoreError> {
    new_secret(c, sealer, Some(id), s)?;
    c.execute(
        "INSERT INTO agent_secrets (id, entity_id, label, issuer, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id, entity, label, issuer, s.created_at],
    )?;
    Ok(())
}

/// Seals `s` into a new `otp_secrets` row (id `id`, or a new uuid) with its last accepted
/// step; returns the id.
fn new_secret(
    c: &Connection,
    sealer: &Sealer,
    id: Option<&str>,
    s: &MovedSecret,
) -> Result<String, StoreError> {
    let id = id.map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string);
    otp_secrets::insert(c, sealer, &id, &s.secret, &s.params, s.created_at)?;
    if let Some(step) = s.last_step {
        c.execute(
            "UPDATE otp_secrets SET last_step = ?2 WHERE id = ?1",
            params![id, step],
        )?;
    }
    Ok(id)
}

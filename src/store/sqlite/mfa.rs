//! Vault identity MFA TOTP methods and the secrets entities hold for them.

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use super::otp_secrets::{self, params_of_row};
use super::SqliteStore;
use crate::otp;
use crate::store::{Clash, Enrollment, MethodRecord, MfaStore, StoreError, Thing};

pub(super) const METHOD_COLS: &str = "id, name, issuer, period, key_size, qr_size, algorithm, digits, skew, max_validation_attempts, created_at";

/// Stores a method row as it is (the caller has checked its name is free).
pub(super) fn insert_method(c: &Connection, m: &MethodRecord) -> Result<(), StoreError> {
    c.execute(
        &format!(
            "INSERT INTO mfa_methods ({METHOD_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
        ),
        params![
            m.id,
            m.name,
            m.issuer,
            m.params.period,
            m.key_size,
            m.qr_size,
            m.params.algorithm.as_str(),
            m.params.digits,
            m.skew,
            m.max_validation_attempts,
            m.created_at
        ],
    )?;
    Ok(())
}

/// A row as SQLite types it; checked into a [`MethodRecord`] by [`MethodRow::check`].
pub(super) struct MethodRow {
    id: String,
    name: Option<String>,
    issuer: String,
    period: i64,
    key_size: i64,
    qr_size: i64,
    algorithm: String,
    digits: i64,
    skew: i64,
    max_validation_attempts: i64,
    created_at: i64,
}

impl MethodRow {
    pub(super) fn read(r: &rusqlite::Row) -> rusqlite::Result<MethodRow> {
        Ok(MethodRow {
            id: r.get(0)?,
            name: r.get(1)?,
            issuer: r.get(2)?,
            period: r.get(3)?,
            key_size: r.get(4)?,
            qr_size: r.get(5)?,
            algorithm: r.get(6)?,
            digits: r.get(7)?,
            skew: r.get(8)?,
            max_validation_attempts: r.get(9)?,
            created_at: r.get(10)?,
        })
    }

    pub(super) fn check(self) -> Result<MethodRecord, StoreError> {
        let params = params_of_row(
            "mfa_methods",
            &self.id,
            &self.algorithm,
            self.digits,
            self.period,
        )?;
        let id = self.id;
        let small = |field: &str, v: i64| {
            u32::try_from(v)
                .map_err(|_| StoreError::Corrupt(format!("mfa_methods {id}: {field} {v}")))
        };
        Ok(MethodRecord {
            params,
            key_size: small("key_size", self.key_size)?,
            qr_size: small("qr_size", self.qr_size)?,
            skew: small("skew", self.skew)?,
            max_validation_attempts: small(
                "max_validation_attempts",
                self.max_validation_attempts,
            )?,
            name: self.name,
            issuer: self.issuer,
            created_at: self.created_at,
            id,
        })
    }
}

pub(super) fn get_method(c: &Connection, id: &str) -> Result<Option<MethodRecord>, StoreError> {
    c.prepare_cached(&format!(
        "SELECT {METHOD_COLS} FROM mfa_methods WHERE id = ?1"
    ))?
    .query_row([id], MethodRow::read)
    .optional()?
    .map(MethodRow::check)
    .transpose()
}

fn require_method(c: &Connection, id: &str) -> Result<MethodRecord, StoreError> {
    get_method(c, id)?.ok_or(StoreError::NotFound(Thing::Method))
}

fn refuse_taken_name(c: &Connection, name: &Option<String>, id: &str) -> Result<(), StoreError> {
    let Some(name) = name else { return Ok(()) };
    let taken = c
        .prepare_cached("SELECT 1 FROM mfa_methods WHERE name = ?1 AND id <> ?2")?
        .exists(params![name, id])?;
    if taken {
        Err(StoreError::Conflict(Clash::NameTaken))
    } else {
        Ok(())
    }
}

fn secret_id(
    c: &Connection,
    method_id: &str,
    entity_id: &str,
) -> Result<Option<String>, StoreError> {
    Ok(c.prepare_cached(
        "SELECT secret_id FROM mfa_secrets WHERE method_id = ?1 AND entity_id = ?2",
    )?
    .query_row(params![method_id, entity_id], |r| r.get(0))
    .optional()?)
}

#[async_trait]
impl MfaStore for SqliteStore {
    async fn create_method(&self, m: &MethodRecord) -> Result<(), StoreError> {
        let m = m.clone();
        self.write(move |c| {
            refuse_taken_name(c, &m.name, &m.id)?;
            insert_method(c, &m)
        })
        .await
    }

    async fn update_method(&self, m: &MethodRecord) -> Result<(), StoreError> {
        let m = m.clone();
        self.write(move |c| {
            require_method(c, &m.id)?;
            refuse_taken_name(c, &m.name, &m.id)?;
            c.execute(
                "UPDATE mfa_methods SET name = COALESCE(?2, name), issuer = ?3, period = ?4, key_size = ?5,
                 qr_size = ?6, algorithm = ?7, digits = ?8, skew = ?9, max_validation_attempts = ?10
                 WHERE id = ?1",
                params![
                    m.id,
                    m.name,
                    m.issuer,
                    m.params.period,
                    m.key_size,
                    m.qr_size,
                    m.params.algorithm.as_str(),
                    m.params.digits,
                    m.skew,
                    m.max_validation_attempts
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn get_method(&self, id: &str) -> Result<Option<MethodRecord>, StoreError> {
        let id = id.to_string();
        self.read_now(move |c| get_method(c, &id)).await
    }

    async fn list_methods(&self) -> Result<Vec<MethodRecord>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {METHOD_COLS} FROM mfa_methods ORDER BY id"
            ))?;
            let rows = stmt
                .query_map([], MethodRow::read)?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().map(MethodRow::check).collect()
        })
        .await
    }

    async fn delete_method(&self, id: &str) -> Result<usize, StoreError> {
        let id = id.to_string();
        self.write(move |c| {
            require_method(c, &id)?;
            // The entities' secrets go first (their mfa_secrets rows CASCADE with them),
            // so the method's RESTRICT no longer holds it.
            let secrets = c.execute(
                "DELETE FROM otp_secrets WHERE id IN (SELECT secret_id FROM mfa_secrets WHERE method_id = ?1)",
                [&id],
            )?;
            c.execute("DELETE FROM mfa_methods WHERE id = ?1", [&id])?;
            Ok(secrets)
        })
        .await
    }

    async fn create_mfa_secret(
        &self,
        method_id: &str,
        entity_id: &str,
        now: i64,
    ) -> Result<Enrollment, StoreError> {
        let (method_id, entity_id) = (method_id.to_string(), entity_id.to_string());
        let sealer = self.sealer.clone();
        self.write(move |c| {
            let method = require_method(c, &method_id)?;
            if secret_id(c, &method_id, &entity_id)?.is_some() {
                return Ok(Enrollment::Exists { method });
            }
            let secret = otp::generate_secret(method.key_size as usize)
                .map_err(|e| StoreError::Backend(format!("random number generator: {e}")))?;
            let id = uuid::Uuid::new_v4().to_string();
            otp_secrets::insert(c, &sealer, &id, &secret, &method.params, now)?;
            c.execute(
                "INSERT INTO mfa_secrets (method_id, entity_id, secret_id, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![method_id, entity_id, id, now],
            )?;
            Ok(Enrollment::Created { method, secret })
        })
        .await
    }

    async fn delete_mfa_secret(
        &self,
        method_id: &str,
        entity_id: &str,
    ) -> Result<bool, StoreError> {
        let (method_id, entity_id) = (method_id.to_string(), entity_id.to_string());
        self.write(move |c| {
            require_method(c, &method_id)?;
            let Some(sid) = secret_id(c, &method_id, &entity_id)? else {
                return Ok(false);
            };
            // CASCADE removes the mfa_secrets row with it.
            c.execute("DELETE FROM otp_secrets WHERE id = ?1", [sid])?;
            Ok(true)
        })
        .await
    }

    async fn check_and_record_mfa_code(
        &self,
        method_id: &str,
        entity_id: &str,
        code: &str,
        now: i64,
    ) -> Result<otp::Outcome, StoreError> {
        let (method_id, entity_id, code) = (
            method_id.to_string(),
            entity_id.to_string(),
            code.to_string(),
        );
        let sealer = self.sealer.clone();
        let (outcome, began) = self
            .write(move |c| {
                let m = require_method(c, &method_id)?;
                let sid = secret_id(c, &method_id, &entity_id)?
                    .ok_or(StoreError::NotFound(Thing::MfaSecret))?;
                otp_secrets::check_and_record(c, &sealer, &sid, &code, now, &m.window())?
                    .ok_or(StoreError::NotFound(Thing::MfaSecret))
            })
            .await?;
        // Counted once committed: the writer answers only after the commit.
        if began {
            self.lockouts
                .vault_mfa
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(outcome)
    }

    async fn unlock_mfa_secret(
        &self,
        method_id: &str,
        entity_id: &str,
    ) -> Result<otp::LockState, StoreError> {
        let (method_id, entity_id) = (method_id.to_string(), entity_id.to_string());
        self.write(move |c| {
            require_method(c, &method_id)?;
            let sid = secret_id(c, &method_id, &entity_id)?
                .ok_or(StoreError::NotFound(Thing::MfaSecret))?;
            otp_secrets::unlock(c, &sid)?.ok_or(StoreError::NotFound(Thing::MfaSecret))
        })
        .await
    }
}

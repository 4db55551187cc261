//! Vault identity MFA TOTP methods and the secrets entities hold for them.

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{otp_secrets, Store, StoreError};
use crate::otp::{self, Algorithm, Params, Window};

/// A TOTP MFA method as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodRecord {
    pub id: String,
    pub name: Option<String>,
    pub issuer: String,
    pub period: i64,
    pub key_size: i64,
    pub qr_size: i64,
    pub algorithm: String,
    pub digits: i64,
    pub skew: i64,
    pub max_validation_attempts: i64,
    pub created_at: i64,
}

impl MethodRecord {
    /// The code parameters secrets generated under this method get.
    pub fn params(&self) -> Result<Params, StoreError> {
        Ok(Params {
            algorithm: Algorithm::parse(&self.algorithm).ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "method {}: algorithm {:?}",
                    self.id, self.algorithm
                ))
            })?,
            digits: self.digits as u32,
            period: self.period.max(1) as u64,
        })
    }

    fn window(&self) -> Window {
        Window {
            skew: self.skew.max(0) as u32,
            max_attempts: self.max_validation_attempts.max(1) as u32,
        }
    }
}

/// Outcome of writing a method.
#[derive(Debug, PartialEq, Eq)]
pub enum MethodWrite {
    Done,
    NotFound,
    NameTaken,
}

/// Outcome of deleting a method.
#[derive(Debug, PartialEq, Eq)]
pub enum MethodDelete {
    Deleted,
    NotFound,
    InUse,
}

/// Outcome of generating a secret for an entity.
#[derive(Debug, PartialEq, Eq)]
pub enum Enroll {
    Created,
    /// The entity already holds a secret for this method; nothing changed.
    Exists,
    NoMethod,
}

/// Outcome of validating a code for an entity.
#[derive(Debug, PartialEq, Eq)]
pub enum MfaCheck {
    NoMethod,
    NoSecret,
    Checked(otp::Outcome),
}

const METHOD_COLS: &str = "id, name, issuer, period, key_size, qr_size, algorithm, digits, skew, max_validation_attempts, created_at";

fn method_row(r: &Row) -> rusqlite::Result<MethodRecord> {
    Ok(MethodRecord {
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

fn get_method(c: &Connection, id: &str) -> Result<Option<MethodRecord>, StoreError> {
    Ok(c.query_row(
        &format!("SELECT {METHOD_COLS} FROM mfa_methods WHERE id = ?1"),
        [id],
        method_row,
    )
    .optional()?)
}

fn name_taken(c: &Connection, name: &Option<String>, id: &str) -> Result<bool, StoreError> {
    let Some(name) = name else { return Ok(false) };
    Ok(c.query_row(
        "SELECT 1 FROM mfa_methods WHERE name = ?1 AND id <> ?2",
        params![name, id],
        |_| Ok(()),
    )
    .optional()?
    .is_some())
}

fn secret_id(
    c: &Connection,
    method_id: &str,
    entity_id: &str,
) -> Result<Option<String>, StoreError> {
    Ok(c.query_row(
        "SELECT secret_id FROM mfa_secrets WHERE method_id = ?1 AND entity_id = ?2",
        params![method_id, entity_id],
        |r| r.get(0),
    )
    .optional()?)
}

impl Store {
    /// Stores a new method; `NameTaken` if another method has its `name`.
    pub async fn create_method(&self, m: MethodRecord) -> Result<MethodWrite, StoreError> {
        self.write(move |c| {
            if name_taken(c, &m.name, &m.id)? {
                return Ok(MethodWrite::NameTaken);
            }
            c.execute(
                &format!("INSERT INTO mfa_methods ({METHOD_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
                params![m.id, m.name, m.issuer, m.period, m.key_size, m.qr_size, m.algorithm, m.digits, m.skew, m.max_validation_attempts, m.created_at],
            )?;
            Ok(MethodWrite::Done)
        })
        .await
    }

    /// Replaces a method's settings; `name: None` keeps the current name.
    pub async fn update_method(&self, m: MethodRecord) -> Result<MethodWrite, StoreError> {
        self.write(move |c| {
            if get_method(c, &m.id)?.is_none() {
                return Ok(MethodWrite::NotFound);
            }
            if name_taken(c, &m.name, &m.id)? {
                return Ok(MethodWrite::NameTaken);
            }
            c.execute(
                "UPDATE mfa_methods SET name = COALESCE(?2, name), issuer = ?3, period = ?4, key_size = ?5,
                 qr_size = ?6, algorithm = ?7, digits = ?8, skew = ?9, max_validation_attempts = ?10
                 WHERE id = ?1",
                params![m.id, m.name, m.issuer, m.period, m.key_size, m.qr_size, m.algorithm, m.digits, m.skew, m.max_validation_attempts],
            )?;
            Ok(MethodWrite::Done)
        })
        .await
    }

    /// The method with this id, if any.
    pub async fn get_method(&self, id: String) -> Result<Option<MethodRecord>, StoreError> {
        self.read(move |c| get_method(c, &id)).await
    }

    /// Every method, ordered by id (as Vault lists keys).
    pub async fn list_methods(&self) -> Result<Vec<MethodRecord>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {METHOD_COLS} FROM mfa_methods ORDER BY id"
            ))?;
            let rows = stmt
                .query_map([], method_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// Deletes a method unless an entity still holds a secret for it (`InUse`).
    pub async fn delete_method(&self, id: String) -> Result<MethodDelete, StoreError> {
        self.write(move |c| {
            if get_method(c, &id)?.is_none() {
                return Ok(MethodDelete::NotFound);
            }
            let in_use = c
                .query_row(
                    "SELECT 1 FROM mfa_secrets WHERE method_id = ?1 LIMIT 1",
                    [&id],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            if in_use {
                return Ok(MethodDelete::InUse);
            }
            c.execute("DELETE FROM mfa_methods WHERE id = ?1", [&id])?;
            Ok(MethodDelete::Deleted)
        })
        .await
    }

    /// Stores `secret` (made under `params`, the method's settings when it was read) for
    /// `entity_id`, unless the entity already holds one for the method.
    pub async fn mfa_enroll(
        &self,
        method_id: String,
        entity_id: String,
        secret: Vec<u8>,
        params: Params,
        now: i64,
    ) -> Result<Enroll, StoreError> {
        let sealer = self.inner.sealer.clone();
        self.write(move |c| {
            if get_method(c, &method_id)?.is_none() {
                return Ok(Enroll::NoMethod);
            }
            if secret_id(c, &method_id, &entity_id)?.is_some() {
                return Ok(Enroll::Exists);
            }
            let id = uuid::Uuid::new_v4().to_string();
            otp_secrets::insert(c, &sealer, &id, &secret, &params, now)?;
            c.execute(
                "INSERT INTO mfa_secrets (method_id, entity_id, secret_id, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![method_id, entity_id, id, now],
            )?;
            Ok(Enroll::Created)
        })
        .await
    }

    /// Removes the entity's secret for the method; false if it had none.
    pub async fn mfa_destroy(
        &self,
        method_id: String,
        entity_id: String,
    ) -> Result<bool, StoreError> {
        self.write(move |c| {
            let Some(sid) = secret_id(c, &method_id, &entity_id)? else {
                return Ok(false);
            };
            // CASCADE removes the mfa_secrets row with it.
            c.execute("DELETE FROM otp_secrets WHERE id = ?1", [sid])?;
            Ok(true)
        })
        .await
    }

    /// Checks a code for the entity and records the outcome, in one transaction.
    pub async fn mfa_verify(
        &self,
        method_id: String,
        entity_id: String,
        code: String,
        now: i64,
    ) -> Result<MfaCheck, StoreError> {
        let sealer = self.inner.sealer.clone();
        self.write(move |c| {
            let Some(m) = get_method(c, &method_id)? else {
                return Ok(MfaCheck::NoMethod);
            };
            let Some(sid) = secret_id(c, &method_id, &entity_id)? else {
                return Ok(MfaCheck::NoSecret);
            };
            Ok(
                match otp_secrets::check_and_record(c, &sealer, &sid, &code, now, &m.window())? {
                    Some(o) => MfaCheck::Checked(o),
                    None => MfaCheck::NoSecret,
                },
            )
        })
        .await
    }
}

//! Vault identity MFA TOTP methods and the secrets entities hold for them, on
//! PostgreSQL; and the rows of `otp_secrets` every surface shares (sealing on insert,
//! reading a secret with its verification state, recording that state), as SQLite's
//! `otp_secrets.rs` has them.
//!
//! The check-and-record of a code is one short transaction that begins by locking the
//! secret's row (`SELECT ... FOR UPDATE`): the verification runs in Rust between that
//! read and the `UPDATE` of the new state, and no other transaction, on this daemon or
//! another, can read the row for a verification of its own until the first commits.

use std::sync::atomic::Ordering::Relaxed;

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::{col, otp_secret_aad, PgStore};
use crate::otp::{self, Outcome, Params, VerifyState, Window};
use crate::store::{Clash, Enrollment, MethodRecord, MfaStore, Sealer, StoreError, Thing};

// ---------------------------------------------------------------------------------------
// Statements and the rows of otp_secrets, for every surface on this backend
// ---------------------------------------------------------------------------------------

/// The rows of one statement, prepared once per connection.
pub(super) async fn rows<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, StoreError> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.query(&stmt, params).await?)
}

/// The row of one statement, if it gave one (it must give at most one).
pub(super) async fn row<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<Row>, StoreError> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.query_opt(&stmt, params).await?)
}

/// How many rows one statement changed.
pub(super) async fn exec<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, StoreError> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.execute(&stmt, params).await?)
}

/// A setting as the schema's `INTEGER`. Every surface bounds its settings far below;
/// a value past `i32` is refused rather than stored wrapped.
pub(super) fn int(what: &str, v: u64) -> Result<i32, StoreError> {
    i32::try_from(v).map_err(|_| StoreError::Backend(format!("{what} {v} is out of range")))
}

/// A small count or setting read back, which must not be negative.
fn small(table: &str, id: &str, what: &str, v: i32) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("{table} {id}: {what} {v}")))
}

/// Code parameters read back from a row, checked like any client's.
pub(super) fn params_of_row(
    table: &str,
    id: &str,
    algorithm: &str,
    digits: i32,
    period: i32,
) -> Result<Params, StoreError> {
    Params::new(algorithm, digits.into(), period.into())
        .map_err(|e| StoreError::Corrupt(format!("{table} {id}: {e}")))
}

/// Inserts a new secret row, sealed for `id` (bound to its row by the associated data).
/// A taken id is `Conflict(Duplicate)`.
pub(super) async fn insert_secret<C: GenericClient>(
    c: &C,
    sealer: &Sealer,
    id: &str,
    secret: &[u8],
    p: &Params,
    now: i64,
) -> Result<(), StoreError> {
    let sealed = sealer.seal(&otp_secret_aad(id), secret)?;
    exec(
        c,
        "INSERT INTO otp_secrets (id, sealed, algorithm, digits, period, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &id,
            &sealed,
            &p.algorithm.as_str(),
            &int("digits", p.digits.into())?,
            &int("period", p.period)?,
            &now,
        ],
    )
    .await?;
    Ok(())
}

/// The columns [`SecretRow::read`] reads, of `otp_secrets` aliased `o`.
pub(super) const SECRET_COLS: &str =
    "o.id, o.sealed, o.algorithm, o.digits, o.period, o.last_step, o.failures, o.locked_until";

/// A secret row as read, still sealed, with its verification state.
pub(super) struct SecretRow {
    pub id: String,
    pub sealed: Vec<u8>,
    pub params: Params,
    pub state: VerifyState,
}

impl SecretRow {
    /// Reads [`SECRET_COLS`] from column `at` on.
    pub(super) fn read(r: &Row, at: usize) -> Result<SecretRow, StoreError> {
        let id: String = col(r, at)?;
        let algorithm: String = col(r, at + 2)?;
        let failures: i32 = col(r, at + 6)?;
        Ok(SecretRow {
            params: params_of_row(
                "otp_secrets",
                &id,
                &algorithm,
                col(r, at + 3)?,
                col(r, at + 4)?,
            )?,
            sealed: col(r, at + 1)?,
            state: VerifyState {
                last_step: col(r, at + 5)?,
                failures: failures.max(0) as u32,
                locked_until: col(r, at + 7)?,
            },
            id,
        })
    }

    /// The secret, opened with the key ring.
    pub(super) fn open(&self, sealer: &Sealer) -> Result<Vec<u8>, StoreError> {
        Ok(sealer.open(&otp_secret_aad(&self.id), &self.sealed)?)
    }
}

/// Writes a secret's verification state after an attempt at `now`, and says whether the
/// attempt began a lock (`row` holds the state it started from). Written on every
/// attempt, even one refused while locked, as on SQLite: a refusal that skipped the
/// write would answer faster and tell the caller the secret is locked.
pub(super) async fn save_state<C: GenericClient>(
    c: &C,
    row: &SecretRow,
    st: &VerifyState,
    now: i64,
) -> Result<bool, StoreError> {
    let failures = i32::try_from(st.failures).unwrap_or(i32::MAX);
    exec(
        c,
        "UPDATE otp_secrets SET last_step = $2, failures = $3, locked_until = $4, last_attempt = $5
         WHERE id = $1",
        &[&row.id, &st.last_step, &failures, &st.locked_until, &now],
    )
    .await?;
    Ok(st.locked_until.is_some() && st.locked_until != row.state.locked_until)
}

/// Clears the lock and failure count of the secret `row` (locked `FOR UPDATE` by the
/// caller's transaction), keeping its last accepted step; returns what it cleared.
pub(super) async fn clear_lock<C: GenericClient>(
    c: &C,
    row: &SecretRow,
) -> Result<otp::LockState, StoreError> {
    exec(
        c,
        "UPDATE otp_secrets SET failures = 0, locked_until = NULL WHERE id = $1",
        &[&row.id],
    )
    .await?;
    Ok(otp::LockState {
        failures: row.state.failures,
        locked_until: row.state.locked_until,
    })
}

/// Records `step` as the secret's last accepted one.
pub(super) async fn record_step<C: GenericClient>(
    c: &C,
    id: &str,
    step: i64,
    now: i64,
) -> Result<(), StoreError> {
    exec(
        c,
        "UPDATE otp_secrets SET last_step = $2, last_attempt = $3 WHERE id = $1",
        &[&id, &step, &now],
    )
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Methods
// ---------------------------------------------------------------------------------------

const METHOD_COLS: &str = "id, name, issuer, period, key_size, qr_size, algorithm, digits, skew, \
                           max_validation_attempts, created_at";

/// A method row (the columns of [`METHOD_COLS`], from column 0), checked.
fn method_of(r: &Row) -> Result<MethodRecord, StoreError> {
    let id: String = col(r, 0)?;
    let algorithm: String = col(r, 6)?;
    let n = |i: usize, what: &str| -> Result<u32, StoreError> {
        small("mfa_methods", &id, what, col(r, i)?)
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

/// Why a method's secret for an entity was not found: no such method, or no secret.
/// A secret cannot outlive its method (the foreign key restricts), so a method that
/// exists means the secret is what is missing.
async fn missing<C: GenericClient>(c: &C, method_id: &str) -> Result<StoreError, StoreError> {
    let method = row(c, "SELECT 1 FROM mfa_methods WHERE id = $1", &[&method_id]).await?;
    Ok(StoreError::NotFound(if method.is_some() {
        Thing::MfaSecret
    } else {
        Thing::Method
    }))
}

/// The entity's secret for the method, its row locked `FOR UPDATE` until the caller's
/// transaction ends, with the method's window; or why there is none.
///
/// One statement: the join finds the secret and the `FOR UPDATE OF o` locks its
/// `otp_secrets` row. Under `READ COMMITTED`, a statement that had to wait for that lock
/// gets the row as the holder committed it (PostgreSQL re-reads a locked row's newest
/// version), and skips it if the holder deleted it.
async fn locked_secret(
    tx: &deadpool_postgres::Transaction<'_>,
    method_id: &str,
    entity_id: &str,
) -> Result<(SecretRow, Window), StoreError> {
    let found = row(
        tx,
        &format!(
            "SELECT {SECRET_COLS}, m.skew, m.max_validation_attempts
             FROM mfa_secrets s
             JOIN mfa_methods m ON m.id = s.method_id
             JOIN otp_secrets o ON o.id = s.secret_id
             WHERE s.method_id = $1 AND s.entity_id = $2
             FOR UPDATE OF o"
        ),
        &[&method_id, &entity_id],
    )
    .await?;
    let Some(r) = found else {
        return Err(missing(tx, method_id).await?);
    };
    let secret = SecretRow::read(&r, 0)?;
    let window = Window {
        skew: small("mfa_methods", method_id, "skew", col(&r, 8)?)?,
        max_attempts: small(
            "mfa_methods",
            method_id,
            "max_validation_attempts",
            col(&r, 9)?,
        )?
        .max(1),
    };
    Ok((secret, window))
}

#[async_trait]
impl MfaStore for PgStore {
    /// A name another method holds is refused first, as on SQLite (so a create that
    /// clashes on both name and id says `NameTaken`). That check alone would race; the
    /// `INSERT` is what decides: the unique index on `name` makes a concurrent insert of
    /// the same name wait for the first one's outcome, on any daemon, and then fail with
    /// a unique violation on `mfa_methods_name_key`, which is `Conflict(NameTaken)`.
    /// Exactly one of any number of creates with one name wins, under `READ COMMITTED`
    /// or any other level.
    async fn create_method(&self, m: &MethodRecord) -> Result<(), StoreError> {
        if let Some(name) = &m.name {
            let taken = self
                .query(
                    "SELECT 1 FROM mfa_methods WHERE name = $1 AND id <> $2",
                    &[name, &m.id],
                )
                .await?;
            if !taken.is_empty() {
                return Err(StoreError::Conflict(Clash::NameTaken));
            }
        }
        self.execute(
            &format!(
                "INSERT INTO mfa_methods ({METHOD_COLS})
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
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
        Ok(())
    }

    /// One `UPDATE`: no row is `NotFound(Method)`; a name another method holds is a
    /// unique violation, `Conflict(NameTaken)` (checked only for a row that exists, so
    /// in SQLite's order). The unique index decides between concurrent renames.
    async fn update_method(&self, m: &MethodRecord) -> Result<(), StoreError> {
        let n = self
            .execute(
                "UPDATE mfa_methods SET name = COALESCE($2, name), issuer = $3, period = $4,
                 key_size = $5, qr_size = $6, algorithm = $7, digits = $8, skew = $9,
                 max_validation_attempts = $10
                 WHERE id = $1",
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
                ],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::NotFound(Thing::Method));
        }
        Ok(())
    }

    async fn get_method(&self, id: &str) -> Result<Option<MethodRecord>, StoreError> {
        let rows = self
            .query(
                &format!("SELECT {METHOD_COLS} FROM mfa_methods WHERE id = $1"),
                &[&id],
            )
            .await?;
        rows.first().map(method_of).transpose()
    }

    async fn list_methods(&self) -> Result<Vec<MethodRecord>, StoreError> {
        let rows = self
            .query(
                &format!("SELECT {METHOD_COLS} FROM mfa_methods ORDER BY id"),
                &[],
            )
            .await?;
        rows.iter().map(method_of).collect()
    }

    /// One transaction: the method's row is locked `FOR UPDATE` first, so no enrolment
    /// can be added meanwhile (an enrolment locks it `FOR SHARE`, and its foreign key
    /// check `FOR KEY SHARE`, both of which wait); enrolments committed before the lock
    /// was granted are seen by the next statements (each takes a new snapshot under
    /// `READ COMMITTED`). Then the secrets go (their `mfa_secrets` rows cascade), then
    /// the method.
    async fn delete_method(&self, id: &str) -> Result<usize, StoreError> {
        self.bounded(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            let found = row(
                &tx,
                "SELECT 1 FROM mfa_methods WHERE id = $1 FOR UPDATE",
                &[&id],
            )
            .await?;
            if found.is_none() {
                tx.rollback().await?;
                return Err(StoreError::NotFound(Thing::Method));
            }
            let secrets = exec(
                &tx,
                "DELETE FROM otp_secrets
                 WHERE id IN (SELECT secret_id FROM mfa_secrets WHERE method_id = $1)",
                &[&id],
            )
            .await?;
            exec(&tx, "DELETE FROM mfa_methods WHERE id = $1", &[&id]).await?;
            tx.commit().await?;
            Ok(secrets as usize)
        })
        .await
    }

    /// One transaction:
    ///
    /// 1. The method's row is read `FOR SHARE`: its settings cannot change (an
    ///    `update_method` waits) nor the method go (`delete_method` waits) until this
    ///    commits, so the secret is made with the settings as they are when stored. A
    ///    statement that waited for an update gets the updated row.
    /// 2. An existing enrolment is `Exists` at once, nothing written.
    /// 3. The secret is generated and sealed into a new `otp_secrets` row, and the
    ///    enrolment inserted with `ON CONFLICT (method_id, entity_id) DO NOTHING
    ///    RETURNING`. Under `READ COMMITTED` a concurrent insert of the same key makes
    ///    this one wait for its outcome: if it committed, nothing is inserted, no row
    ///    comes back, and this transaction rolls back (its secret row with it) and
    ///    answers `Exists`. So an entity never holds two secrets for one method, and
    ///    exactly one of any number of concurrent enrolments, on any daemon, is
    ///    `Created`.
    async fn create_mfa_secret(
        &self,
        method_id: &str,
        entity_id: &str,
        now: i64,
    ) -> Result<Enrollment, StoreError> {
        self.bounded(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            let found = row(
                &tx,
                &format!("SELECT {METHOD_COLS} FROM mfa_methods WHERE id = $1 FOR SHARE"),
                &[&method_id],
            )
            .await?;
            let Some(r) = found else {
                tx.rollback().await?;
                return Err(StoreError::NotFound(Thing::Method));
            };
            let method = method_of(&r)?;
            let held = row(
                &tx,
                "SELECT 1 FROM mfa_secrets WHERE method_id = $1 AND entity_id = $2",
                &[&method_id, &entity_id],
            )
            .await?;
            if held.is_some() {
                tx.rollback().await?;
                return Ok(Enrollment::Exists { method });
            }
            let secret = otp::generate_secret(method.key_size as usize)
                .map_err(|e| StoreError::Backend(format!("random number generator: {e}")))?;
            let id = uuid::Uuid::new_v4().to_string();
            insert_secret(&tx, self.sealer(), &id, &secret, &method.params, now).await?;
            let won = row(
                &tx,
                "INSERT INTO mfa_secrets (method_id, entity_id, secret_id, created_at)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (method_id, entity_id) DO NOTHING
                 RETURNING secret_id",
                &[&method_id, &entity_id, &id, &now],
            )
            .await?;
            if won.is_none() {
                tx.rollback().await?;
                return Ok(Enrollment::Exists { method });
            }
            tx.commit().await?;
            Ok(Enrollment::Created { method, secret })
        })
        .await
    }

    /// One statement: whether the method exists, and the deletion of the entity's secret
    /// (its `mfa_secrets` row cascades), from one snapshot.
    async fn delete_mfa_secret(
        &self,
        method_id: &str,
        entity_id: &str,
    ) -> Result<bool, StoreError> {
        let rows = self
            .query(
                "WITH gone AS (
                     DELETE FROM otp_secrets WHERE id IN (
                         SELECT secret_id FROM mfa_secrets WHERE method_id = $1 AND entity_id = $2)
                     RETURNING id
                 )
                 SELECT EXISTS (SELECT 1 FROM mfa_methods WHERE id = $1),
                        (SELECT count(*) FROM gone)",
                &[&method_id, &entity_id],
            )
            .await?;
        let r = rows
            .first()
            .ok_or_else(|| StoreError::Backend("no row from a SELECT of two values".into()))?;
        let (method, gone): (bool, i64) = (col(r, 0)?, col(r, 1)?);
        if !method {
            return Err(StoreError::NotFound(Thing::Method));
        }
        Ok(gone > 0)
    }

    /// One transaction: the secret's row is locked `FOR UPDATE` (see `locked_secret`),
    /// the code checked with [`otp::verify`] in Rust against the state read under that
    /// lock, and the new state (last accepted step, failures, lock) written by an
    /// `UPDATE` before the commit releases the lock.
    ///
    /// Why exactly once under `READ COMMITTED`, on any number of daemons: every
    /// verification of this secret takes the same row lock before it reads the state,
    /// so they run one after another; and a read that waited for the lock returns the
    /// row as the previous holder committed it. So the second of two calls with one
    /// right code sees the step already used (a replay), and every failure is counted on
    /// top of the last one (none is lost to a concurrent write). A call that fails
    /// before its commit changes nothing. A lock that began is counted for
    /// `lockouts()` once the commit returned.
    async fn check_and_record_mfa_code(
        &self,
        method_id: &str,
        entity_id: &str,
        code: &str,
        now: i64,
    ) -> Result<Outcome, StoreError> {
        let (outcome, began) = self
            .bounded(async {
                let mut c = self.client().await?;
                let tx = c.transaction().await?;
                let (row, window) = locked_secret(&tx, method_id, entity_id).await?;
                let secret = row.open(self.sealer())?;
                let (outcome, state) =
                    otp::verify(&secret, &row.params, &window, code, now, row.state);
                let began = save_state(&tx, &row, &state, now).await?;
                tx.commit().await?;
                Ok((outcome, began))
            })
            .await?;
        if began {
            self.lockouts.vault_mfa.fetch_add(1, Relaxed);
        }
        Ok(outcome)
    }

    /// One transaction: the secret's row locked `FOR UPDATE` (as for a check, so an
    /// unlock and a verification take turns), its lock and failure count cleared; the
    /// last accepted step stays.
    async fn unlock_mfa_secret(
        &self,
        method_id: &str,
        entity_id: &str,
    ) -> Result<otp::LockState, StoreError> {
        self.bounded(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            let (row, _) = locked_secret(&tx, method_id, entity_id).await?;
            let cleared = clear_lock(&tx, &row).await?;
            tx.commit().await?;
            Ok(cleared)
        })
        .await
    }
}

//! Rows of `otp_secrets`: sealing on insert, and the check-and-record of a code, shared
//! by every surface that keeps TOTP secrets.

use rusqlite::{params, Connection, OptionalExtension};

use crate::otp::{self, Outcome, Params, VerifyState, Window};
use crate::store::{Sealer, StoreError};

/// Associated data binding a sealed secret to its row (the one every backend uses).
pub(super) use crate::store::otp_secret_aad as aad;

/// Code parameters read back from a row, checked like any client's.
pub(super) fn params_of_row(
    table: &str,
    id: &str,
    algorithm: &str,
    digits: i64,
    period: i64,
) -> Result<Params, StoreError> {
    Params::new(algorithm, digits, period)
        .map_err(|e| StoreError::Corrupt(format!("{table} {id}: {e}")))
}

/// Inserts a new secret row, sealed for `id`.
pub(super) fn insert(
    c: &Connection,
    sealer: &Sealer,
    id: &str,
    secret: &[u8],
    p: &Params,
    now: i64,
) -> Result<(), StoreError> {
    let sealed = sealer.seal(&aad(id), secret)?;
    c.execute(
        "INSERT INTO otp_secrets (id, sealed, algorithm, digits, period, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            id,
            sealed,
            p.algorithm.as_str(),
            p.digits,
            p.period as i64,
            now
        ],
    )?;
    Ok(())
}

/// A secret row, still sealed, with its verification state.
pub(super) struct Row {
    pub sealed: Vec<u8>,
    pub params: Params,
    pub state: VerifyState,
}

pub(super) fn load(c: &Connection, id: &str) -> Result<Option<Row>, StoreError> {
    let row = c
        .prepare_cached(
            "SELECT sealed, algorithm, digits, period, last_step, failures, locked_until
             FROM otp_secrets WHERE id = ?1",
        )?
        .query_row([id], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, Option<i64>>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, Option<i64>>(6)?,
            ))
        })
        .optional()?;
    let Some((sealed, alg, digits, period, last_step, failures, locked_until)) = row else {
        return Ok(None);
    };
    Ok(Some(Row {
        sealed,
        params: params_of_row("otp_secrets", id, &alg, digits, period)?,
        state: VerifyState {
            last_step,
            failures: failures.max(0) as u32,
            locked_until,
        },
    }))
}

/// The opened secret and its parameters.
pub(super) fn open(
    c: &Connection,
    sealer: &Sealer,
    id: &str,
) -> Result<Option<(Vec<u8>, Params)>, StoreError> {
    let Some(row) = load(c, id)? else {
        return Ok(None);
    };
    let secret = sealer.open(&aad(id), &row.sealed)?;
    Ok(Some((secret, row.params)))
}

/// An opened secret, its parameters and its last accepted step.
pub(super) type Opened = (Vec<u8>, Params, Option<i64>);

/// The opened secret, its parameters and its last accepted step.
pub(super) fn open_with_step(
    c: &Connection,
    sealer: &Sealer,
    id: &str,
) -> Result<Option<Opened>, StoreError> {
    let Some(row) = load(c, id)? else {
        return Ok(None);
    };
    let secret = sealer.open(&aad(id), &row.sealed)?;
    Ok(Some((secret, row.params, row.state.last_step)))
}

/// Records `step` as the secret's last accepted one.
pub(super) fn record_step(c: &Connection, id: &str, step: i64, now: i64) -> Result<(), StoreError> {
    c.execute(
        "UPDATE otp_secrets SET last_step = ?2, last_attempt = ?3 WHERE id = ?1",
        params![id, step, now],
    )?;
    Ok(())
}

/// Checks `code` with [`otp::verify`] and records the new state, inside the caller's
/// write operation. The writer runs one operation at a time, so two requests with one
/// code cannot both pass. Also says whether this attempt began a lock.
pub(super) fn check_and_record(
    c: &Connection,
    sealer: &Sealer,
    id: &str,
    code: &str,
    now: i64,
    window: &Window,
) -> Result<Option<(Outcome, bool)>, StoreError> {
    let Some(row) = load(c, id)? else {
        return Ok(None);
    };
    let secret = sealer.open(&aad(id), &row.sealed)?;
    let (outcome, state) = otp::verify(&secret, &row.params, window, code, now, row.state);
    let began = save_state(c, id, &row.state, &state, now)?;
    Ok(Some((outcome, began)))
}

/// Writes the state after an attempt at `now`, and says whether the attempt began a
/// lock (`before` is the state it started from). Written on every attempt, even one
/// refused while locked: a refusal that skipped the write (and its fsync) would answer
/// faster and tell the caller the secret is locked.
pub(super) fn save_state(
    c: &Connection,
    id: &str,
    before: &VerifyState,
    state: &VerifyState,
    now: i64,
) -> Result<bool, StoreError> {
    c.prepare_cached(
        "UPDATE otp_secrets SET last_step = ?2, failures = ?3, locked_until = ?4, last_attempt = ?5
         WHERE id = ?1",
    )?
    .execute(params![
        id,
        state.last_step,
        state.failures,
        state.locked_until,
        now
    ])?;
    Ok(state.locked_until.is_some() && state.locked_until != before.locked_until)
}

/// Clears the lock and failure count of a secret; returns what it cleared, or `None`
/// if there is no such secret. The last accepted step stays.
pub(super) fn unlock(c: &Connection, id: &str) -> Result<Option<otp::LockState>, StoreError> {
    let Some(row) = load(c, id)? else {
        return Ok(None);
    };
    c.execute(
        "UPDATE otp_secrets SET failures = 0, locked_until = NULL WHERE id = ?1",
        [id],
    )?;
    Ok(Some(otp::LockState {
        failures: row.state.failures,
        locked_until: row.state.locked_until,
    }))
}

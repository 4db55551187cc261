//! The user login step on PostgreSQL: devices, the per-user failure count, recovery
//! codes and temp_tokens.
//!
//! **One lock per user.** Every write about a user (setup, activation, a code check, a
//! recovery code, a temp_token, deactivation, new recovery codes, an unlock) is one
//! short transaction whose first statement takes the user's row in `user_locks`
//! ([`lock_user`]): the row is created if missing and locked, in one statement. So the
//! calls about one user run one after another, whichever daemon runs them, exactly as
//! SQLite's single writer runs them; and because the isolation level is `READ
//! COMMITTED`, every statement after the lock takes a new snapshot, which holds all that
//! the previous holder committed. Calls about different users never wait for each
//! other. The spends that must happen once (a TOTP step, a recovery code, a
//! temp_token) are also conditional statements on their own rows, so each is single use
//! even without the user lock.

use std::sync::atomic::Ordering::Relaxed;

use async_trait::async_trait;
use deadpool_postgres::Transaction;

use super::mfa::{exec, insert_secret, params_of_row, record_step, row, rows};
use super::{col, otp_secret_aad, PgStore, TOKEN_COLS};
use crate::otp::{self, LockState, Outcome, Params, Refusal, Window};
use crate::store::{
    Activation, Check, Proof, RecoveryHash, Sealer, Setup, StoreError, TokenRecord, UserDevice,
    UserTotpStore, MAX_USER_DEVICES,
};

/// The window of every user device: the current step and one either side; five
/// failures in a row lock the user for one period.
const WINDOW: Window = Window {
    skew: 1,
    max_attempts: otp::DEFAULT_MAX_ATTEMPTS,
};

/// How long a lock lasts: one period of the user devices (always 30 s).
const LOCK_SECONDS: i64 = 30;

/// The name of a user's first device.
const DEFAULT_DEVICE: &str = "default";

/// Takes the user's lock for the rest of the caller's transaction, and returns the
/// user's failure count and lock as they are now.
///
/// One statement, `INSERT ... ON CONFLICT (entity_id) DO UPDATE ... RETURNING`: it
/// inserts the user's row, or locks the existing one. PostgreSQL guarantees one of the
/// two outcomes even under concurrency: a caller that finds the row locked waits for
/// the holder's end, then locks the row as committed (and returns its values), or, if
/// the holder deleted it (a deactivation or an unlock), inserts it anew. So the row
/// needs no retry loop, and deleting it is safe. A transaction that rolls back leaves
/// no row it inserted.
///
/// Every write about a user's devices, failure count, recovery codes or temp_tokens
/// must take this lock first (an import of user devices too, so the device cap holds).
pub(super) async fn lock_user(tx: &Transaction<'_>, entity: &str) -> Result<LockState, StoreError> {
    let r = row(
        tx,
        "INSERT INTO user_locks (entity_id) VALUES ($1)
         ON CONFLICT (entity_id) DO UPDATE SET failures = user_locks.failures
         RETURNING failures, locked_until",
        &[&entity],
    )
    .await?
    .ok_or_else(|| StoreError::Backend("the user lock returned no row".into()))?;
    let failures: i32 = col(&r, 0)?;
    Ok(LockState {
        failures: failures.max(0) as u32,
        locked_until: col(&r, 1)?,
    })
}

/// Whether going from `before` to `after` began a lock.
fn began(before: LockState, after: LockState) -> bool {
    after.locked_until.is_some() && after.locked_until != before.locked_until
}

/// Stores the user's failure count and lock (the row exists: [`lock_user`] made it).
async fn save_lock(tx: &Transaction<'_>, entity: &str, lock: LockState) -> Result<(), StoreError> {
    let failures = i32::try_from(lock.failures).unwrap_or(i32::MAX);
    exec(
        tx,
        "UPDATE user_locks SET failures = $2, locked_until = $3 WHERE entity_id = $1",
        &[&entity, &failures, &lock.locked_until],
    )
    .await?;
    Ok(())
}

/// A device with its opened secret.
struct Device {
    name: String,
    secret_id: String,
    secret: Vec<u8>,
    params: Params,
    last_step: Option<i64>,
}

/// The user's active (or pending) devices with their secrets opened, oldest first
/// (devices made in one second in the order they were made, as on SQLite).
async fn devices(
    tx: &Transaction<'_>,
    sealer: &Sealer,
    entity: &str,
    active: bool,
) -> Result<Vec<Device>, StoreError> {
    let found = rows(
        tx,
        "SELECT d.name, d.secret_id, o.sealed, o.algorithm, o.digits, o.period, o.last_step
         FROM user_devices d JOIN otp_secrets o ON o.id = d.secret_id
         WHERE d.entity_id = $1 AND d.active = $2
         ORDER BY d.created_at, d.seq",
        &[&entity, &active],
    )
    .await?;
    let mut out = Vec::with_capacity(found.len());
    for r in &found {
        let secret_id: String = col(r, 1)?;
        let sealed: Vec<u8> = col(r, 2)?;
        let algorithm: String = col(r, 3)?;
        out.push(Device {
            name: col(r, 0)?,
            secret: sealer.open(&otp_secret_aad(&secret_id), &sealed)?,
            params: params_of_row(
                "otp_secrets",
                &secret_id,
                &algorithm,
                col(r, 4)?,
                col(r, 5)?,
            )?,
            last_step: col(r, 6)?,
            secret_id,
        });
    }
    Ok(out)
}

async fn active_count(tx: &Transaction<'_>, entity: &str) -> Result<i64, StoreError> {
    let r = row(
        tx,
        "SELECT count(*) FROM user_devices WHERE entity_id = $1 AND active",
        &[&entity],
    )
    .await?
    .ok_or_else(|| StoreError::Backend("count(*) returned no row".into()))?;
    col(&r, 0)
}

const TEMP_USER: &str = "SELECT entity_id FROM temp_tokens
                         WHERE hash = $1 AND used_at IS NULL AND expires_at > $2";

/// The user a proof is about, with the user's lock taken ([`lock_user`]) and the lock
/// state it returned; or why there is none to check (the caller rolls back: nothing
/// was counted).
///
/// A temp_token names its user, so it is read before the lock; and again after it,
/// `FOR UPDATE`, because a login that held the lock meanwhile may have spent it. From
/// then on this transaction holds the temp_token's row too.
async fn user_of(
    tx: &Transaction<'_>,
    proof: &Proof<'_>,
    now: i64,
) -> Result<Result<(String, LockState), Check>, StoreError> {
    let user = match proof {
        Proof::Login { temp_hash, .. } => match row(tx, TEMP_USER, &[temp_hash, &now]).await? {
            Some(r) => col::<String>(&r, 0)?,
            None => return Ok(Err(Check::BadTempToken)),
        },
        Proof::Owner { entity_id } => entity_id.to_string(),
    };
    let lock = lock_user(tx, &user).await?;
    if let Proof::Login { temp_hash, .. } = proof {
        let again = row(tx, &format!("{TEMP_USER} FOR UPDATE"), &[temp_hash, &now]).await?;
        if again.is_none() {
            return Ok(Err(Check::BadTempToken));
        }
    }
    if active_count(tx, &user).await? == 0 {
        return Ok(Err(Check::NotActive));
    }
    Ok(Ok((user, lock)))
}

/// What a success brings: a login spends its temp_token and stores the new token (as
/// the temp_token's user). The spend is a conditional `UPDATE ... WHERE used_at IS NULL
/// RETURNING`: of any number of transactions spending one temp_token, on any daemon,
/// one gets the row back; under `READ COMMITTED` the others wait for its commit and then
/// find `used_at` set. False when no row came back: the caller rolls back, so nothing
/// of this attempt stays (under the user lock it cannot happen; the statement does not
/// rely on that).
async fn finish(
    tx: &Transaction<'_>,
    proof: &Proof<'_>,
    user: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let Proof::Login { temp_hash, login } = proof else {
        return Ok(true);
    };
    let spent = row(
        tx,
        "UPDATE temp_tokens SET used_at = $2
         WHERE hash = $1 AND used_at IS NULL AND expires_at > $2
         RETURNING hash",
        &[temp_hash, &now],
    )
    .await?;
    if spent.is_none() {
        return Ok(false);
    }
    let mut token = (*login).clone();
    token.entity_id = user.to_string();
    insert_token(tx, &token).await?;
    Ok(true)
}

/// Sweeps out tokens expired at `t.created_at` and stores `t`, as SQLite's login does.
/// The sweep skips rows another transaction holds (`SKIP LOCKED`): they go with a later
/// sweep, and a login never waits for, or deadlocks with, another's sweep.
async fn insert_token(tx: &Transaction<'_>, t: &TokenRecord) -> Result<(), StoreError> {
    let policies = serde_json::to_string(&t.policies)
        .map_err(|e| StoreError::Corrupt(format!("token policies: {e}")))?;
    exec(
        tx,
        "DELETE FROM tokens WHERE hash IN (
             SELECT hash FROM tokens WHERE expires_at IS NOT NULL AND expires_at <= $1
             FOR UPDATE SKIP LOCKED)",
        &[&t.created_at],
    )
    .await?;
    exec(
        tx,
        &format!(
            "INSERT INTO tokens ({TOKEN_COLS})
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        ),
        &[
            &t.hash,
            &t.accessor,
            &t.entity_id,
            &t.display_name,
            &policies,
            &t.created_at,
            &t.expires_at,
            &t.parent,
            &t.renewable,
            &t.creation_ttl,
            &t.explicit_max_ttl,
            &t.last_renewal,
        ],
    )
    .await?;
    Ok(())
}

async fn delete_recovery_codes(tx: &Transaction<'_>, entity: &str) -> Result<(), StoreError> {
    exec(
        tx,
        "DELETE FROM recovery_codes WHERE entity_id = $1",
        &[&entity],
    )
    .await?;
    Ok(())
}

/// Stores `codes` for the user, in one statement. A repeated selector is a unique
/// violation, `Conflict(Duplicate)`, as on SQLite.
async fn insert_recovery_codes(
    tx: &Transaction<'_>,
    entity: &str,
    codes: &[RecoveryHash],
    now: i64,
) -> Result<(), StoreError> {
    if codes.is_empty() {
        return Ok(());
    }
    let selectors: Vec<&str> = codes.iter().map(|c| c.selector.as_str()).collect();
    let hashes: Vec<&str> = codes.iter().map(|c| c.hash.as_str()).collect();
    exec(
        tx,
        "INSERT INTO recovery_codes (entity_id, selector, hash, created_at)
         SELECT $1, c.selector, c.hash, $4
         FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS c(selector, hash, n)
         ORDER BY c.n",
        &[&entity, &selectors, &hashes, &now],
    )
    .await?;
    Ok(())
}

impl PgStore {
    /// Counts a lock that began in a committed transaction.
    fn count_user_lockout(&self, began: bool) {
        if began {
            self.lockouts.user_totp.fetch_add(1, Relaxed);
        }
    }
}

#[async_trait]
impl UserTotpStore for PgStore {
    /// One transaction under the user's lock ([`lock_user`]), so the checks (an active
    /// device, the name, the device cap) and the insert are atomic against every other
    /// call about the user: concurrent setups cannot together pass
    /// [`MAX_USER_DEVICES`]. Refusals are checked in SQLite's order.
    async fn setup_user_device(
        &self,
        entity_id: &str,
        name: Option<&str>,
        id: &str,
        secret: &[u8],
        params: &Params,
        now: i64,
    ) -> Result<Setup, StoreError> {
        self.bounded(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            lock_user(&tx, entity_id).await?;
            if name.is_none() && active_count(&tx, entity_id).await? > 0 {
                tx.rollback().await?;
                return Ok(Setup::AlreadyActive);
            }
            let name = name.unwrap_or(DEFAULT_DEVICE);
            let existing = row(
                &tx,
                "SELECT secret_id, active FROM user_devices WHERE entity_id = $1 AND name = $2",
                &[&entity_id, &name],
            )
            .await?;
            let others = row(
                &tx,
                "SELECT count(*) FROM user_devices WHERE entity_id = $1 AND name <> $2",
                &[&entity_id, &name],
            )
            .await?
            .map(|r| col::<i64>(&r, 0))
            .transpose()?
            .unwrap_or(0);
            if others.max(0) as usize >= MAX_USER_DEVICES {
                tx.rollback().await?;
                return Ok(Setup::TooMany);
            }
            if let Some(r) = existing {
                let (old, active): (String, bool) = (col(&r, 0)?, col(&r, 1)?);
                if active {
                    tx.rollback().await?;
                    return Ok(Setup::NameTaken);
                }
                // A new setup replaces the pending one (its device row cascades).
                exec(&tx, "DELETE FROM otp_secrets WHERE id = $1", &[&old]).await?;
            }
            insert_secret(&tx, self.sealer(), id, secret, params, now).await?;
            exec(
                &tx,
                "INSERT INTO user_devices (entity_id, name, secret_id, active, created_at)
                 VALUES ($1, $2, $3, false, $4)",
                &[&entity_id, &name, &id, &now],
            )
            .await?;
            tx.commit().await?;
            Ok(Setup::Pending)
        })
        .await
    }

    /// One transaction under the user's lock: the pending device and the user's failure
    /// count are read after the lock, so two activations (or an activation and a login)
    /// take turns and each sees what the other committed; the code's step is recorded
    /// as used, so it cannot also log in. A first activation without recovery codes
    /// (`NeedsCodes`) rolls back: nothing is written and the code stays good.
    async fn activate_user_device(
        &self,
        entity_id: &str,
        name: Option<&str>,
        code: &str,
        codes: Option<&[RecoveryHash]>,
        now: i64,
    ) -> Result<Activation, StoreError> {
        let (activation, locked) = self
            .bounded(async {
                let mut c = self.client().await?;
                let tx = c.transaction().await?;
                let before = lock_user(&tx, entity_id).await?;
                let pending = devices(&tx, self.sealer(), entity_id, false).await?;
                let device = match name {
                    Some(n) => pending.into_iter().find(|d| d.name == n),
                    None if pending.len() > 1 => {
                        tx.rollback().await?;
                        return Ok((Activation::SeveralPending, false));
                    }
                    None => pending.into_iter().next(),
                };
                let Some(device) = device else {
                    tx.rollback().await?;
                    return Ok((Activation::NoPending, false));
                };
                let first = active_count(&tx, entity_id).await? == 0;
                let (outcome, _, lock) = otp::verify_any(
                    &[(&device.secret, &device.params, device.last_step)],
                    &WINDOW,
                    code,
                    now,
                    before,
                );
                let step = match outcome {
                    Outcome::Accepted { step } => step,
                    Outcome::Refused(r) => {
                        save_lock(&tx, entity_id, lock).await?;
                        tx.commit().await?;
                        return Ok((Activation::Refused(r), began(before, lock)));
                    }
                };
                if first && codes.is_none() {
                    tx.rollback().await?;
                    return Ok((Activation::NeedsCodes, false));
                }
                save_lock(&tx, entity_id, lock).await?;
                record_step(&tx, &device.secret_id, step, now).await?;
                exec(
                    &tx,
                    "UPDATE user_devices SET active = true, activated_at = $3
                     WHERE entity_id = $1 AND name = $2",
                    &[&entity_id, &device.name, &now],
                )
                .await?;
                if first {
                    delete_recovery_codes(&tx, entity_id).await?;
                    insert_recovery_codes(&tx, entity_id, codes.unwrap_or_default(), now).await?;
                }
                tx.commit().await?;
                Ok((Activation::Activated { first }, false))
            })
            .await?;
        self.count_user_lockout(locked);
        Ok(activation)
    }

    async fn list_user_devices(&self, entity_id: &str) -> Result<Vec<UserDevice>, StoreError> {
        let rows = self
            .query(
                "SELECT name, active, created_at, last_used_at FROM user_devices
                 WHERE entity_id = $1 ORDER BY created_at, seq",
                &[&entity_id],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(UserDevice {
                    name: col(r, 0)?,
                    active: col(r, 1)?,
                    created_at: col(r, 2)?,
                    last_used_at: col(r, 3)?,
                })
            })
            .collect()
    }

    /// One transaction under the user's lock: the devices go (their rows cascade with
    /// their secrets), and with the last active one the recovery codes, the failure
    /// count and the temp_tokens. A temp_token being made concurrently takes the same
    /// lock, so it is either made before (and deleted here) or refused after.
    async fn deactivate_user(
        &self,
        entity_id: &str,
        name: Option<&str>,
    ) -> Result<usize, StoreError> {
        self.bounded(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            lock_user(&tx, entity_id).await?;
            let removed = exec(
                &tx,
                "DELETE FROM otp_secrets WHERE id IN (
                     SELECT secret_id FROM user_devices
                     WHERE entity_id = $1 AND ($2::text IS NULL OR name = $2::text))",
                &[&entity_id, &name],
            )
            .await?;
            if active_count(&tx, entity_id).await? == 0 {
                delete_recovery_codes(&tx, entity_id).await?;
                exec(
                    &tx,
                    "DELETE FROM user_locks WHERE entity_id = $1",
                    &[&entity_id],
                )
                .await?;
                // A temp_token from before must not log in after a new enrolment.
                exec(
                    &tx,
                    "DELETE FROM temp_tokens WHERE entity_id = $1",
                    &[&entity_id],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(removed as usize)
        })
        .await
    }

    /// One transaction under the user's lock (see [`UserTotpStore::deactivate_user`]).
    /// A refused create rolls back; otherwise the sweep of used and expired temp_tokens
    /// skips rows other transactions hold (`SKIP LOCKED`), so it never waits for a
    /// login in progress.
    async fn create_temp_token(
        &self,
        entity_id: &str,
        hash: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<bool, StoreError> {
        self.bounded(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            lock_user(&tx, entity_id).await?;
            if active_count(&tx, entity_id).await? == 0 {
                tx.rollback().await?;
                return Ok(false);
            }
            exec(
                &tx,
                "DELETE FROM temp_tokens WHERE hash IN (
                     SELECT hash FROM temp_tokens WHERE expires_at <= $1 OR used_at IS NOT NULL
                     FOR UPDATE SKIP LOCKED)",
                &[&now],
            )
            .await?;
            exec(
                &tx,
                "INSERT INTO temp_tokens (hash, entity_id, created_at, expires_at)
                 VALUES ($1, $2, $3, $4)",
                &[&hash, &entity_id, &now, &expires_at],
            )
            .await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    async fn get_temp_token_user(
        &self,
        hash: &str,
        now: i64,
    ) -> Result<Option<String>, StoreError> {
        let rows = self.query(TEMP_USER, &[&hash, &now]).await?;
        rows.first().map(|r| col(r, 0)).transpose()
    }

    /// One transaction under the user's lock ([`lock_user`]): the temp_token (if a
    /// login) is checked again and held, the active devices are read with their last
    /// accepted steps, the code is checked against all of them with
    /// [`otp::verify_any`] under the user's one failure count, and the outcome written:
    /// the count or lock, and on success the device's step, the temp_token spent (a
    /// conditional update, see `finish`) and the login token stored.
    ///
    /// Why exactly once under `READ COMMITTED`, on any number of daemons: every call
    /// that reads or writes a user's steps or failure count holds the user's lock
    /// first, so they run one after another, and each statement after the lock sees
    /// what the previous holder committed. Of any number of calls with one right code
    /// (and any number of temp_tokens) the first records the step; the others find it
    /// used (a replay, counted). No failure is lost: each count is read under the lock
    /// and written before the commit releases it.
    async fn check_user_code(
        &self,
        proof: Proof<'_>,
        code: &str,
        now: i64,
    ) -> Result<Check, StoreError> {
        let (check, locked) = self
            .bounded(async {
                let mut c = self.client().await?;
                let tx = c.transaction().await?;
                let (user, before) = match user_of(&tx, &proof, now).await? {
                    Ok(u) => u,
                    Err(check) => {
                        tx.rollback().await?;
                        return Ok((check, false));
                    }
                };
                let active = devices(&tx, self.sealer(), &user, true).await?;
                let secrets: Vec<_> = active
                    .iter()
                    .map(|d| (d.secret.as_slice(), &d.params, d.last_step))
                    .collect();
                let (outcome, which, lock) = otp::verify_any(&secrets, &WINDOW, code, now, before);
                save_lock(&tx, &user, lock).await?;
                let check = match (outcome, which.and_then(|i| active.get(i))) {
                    (Outcome::Accepted { step }, Some(d)) => {
                        record_step(&tx, &d.secret_id, step, now).await?;
                        exec(
                            &tx,
                            "UPDATE user_devices SET last_used_at = $3
                             WHERE entity_id = $1 AND name = $2",
                            &[&user, &d.name, &now],
                        )
                        .await?;
                        if !finish(&tx, &proof, &user, now).await? {
                            tx.rollback().await?;
                            return Ok((Check::BadTempToken, false));
                        }
                        Check::Accepted
                    }
                    (Outcome::Refused(r), _) => Check::Refused(r),
                    (Outcome::Accepted { .. }, None) => Check::Refused(Refusal::Invalid),
                };
                tx.commit().await?;
                Ok((check, began(before, lock)))
            })
            .await?;
        self.count_user_lockout(locked);
        Ok(check)
    }

    async fn get_recovery_hash(
        &self,
        entity_id: &str,
        selector: &str,
    ) -> Result<Option<String>, StoreError> {
        let rows = self
            .query(
                "SELECT hash FROM recovery_codes
                 WHERE entity_id = $1 AND selector = $2 AND spent_at IS NULL",
                &[&entity_id, &selector],
            )
            .await?;
        rows.first().map(|r| col(r, 0)).transpose()
    }

    /// One transaction under the user's lock, as a code check: a lock refuses (nothing
    /// written, the code unspent); a match is spent by a conditional `UPDATE ... WHERE
    /// spent_at IS NULL`, and one that changes no row is a replay. That update alone
    /// makes a code single use under `READ COMMITTED` (a second update of the row waits
    /// for the first's commit, then re-checks `spent_at` and changes nothing); the user
    /// lock makes the failure count and the temp_token's spend exact with it.
    async fn spend_recovery_code(
        &self,
        proof: Proof<'_>,
        selector: &str,
        matched: bool,
        now: i64,
    ) -> Result<Check, StoreError> {
        let (check, locked) = self
            .bounded(async {
                let mut c = self.client().await?;
                let tx = c.transaction().await?;
                let (user, before) = match user_of(&tx, &proof, now).await? {
                    Ok(u) => u,
                    Err(check) => {
                        tx.rollback().await?;
                        return Ok((check, false));
                    }
                };
                // A lock refuses even the right code, and leaves it unspent.
                if before.locked_until.is_some_and(|until| now < until) {
                    tx.rollback().await?;
                    return Ok((Check::Refused(Refusal::Locked), false));
                }
                let attempt = if !matched {
                    Err(Refusal::Invalid)
                } else {
                    let spent = exec(
                        &tx,
                        "UPDATE recovery_codes SET spent_at = $3
                         WHERE entity_id = $1 AND selector = $2 AND spent_at IS NULL",
                        &[&user, &selector, &now],
                    )
                    .await?;
                    if spent == 1 {
                        Ok(())
                    } else {
                        Err(Refusal::Replay)
                    }
                };
                let (settled, lock) =
                    otp::settle(attempt, before, WINDOW.max_attempts, LOCK_SECONDS, now);
                save_lock(&tx, &user, lock).await?;
                let check = match settled {
                    Ok(()) => {
                        if !finish(&tx, &proof, &user, now).await? {
                            tx.rollback().await?;
                            return Ok((Check::BadTempToken, false));
                        }
                        Check::Accepted
                    }
                    Err(r) => Check::Refused(r),
                };
                tx.commit().await?;
                Ok((check, began(before, lock)))
            })
            .await?;
        self.count_user_lockout(locked);
        Ok(check)
    }

    /// One transaction under the user's lock: the active device is checked, the old
    /// set deleted and the new one stored together.
    async fn replace_recovery_codes(
        &self,
        entity_id: &str,
        codes: &[RecoveryHash],
        now: i64,
    ) -> Result<bool, StoreError> {
        self.bounded(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            lock_user(&tx, entity_id).await?;
            if active_count(&tx, entity_id).await? == 0 {
                tx.rollback().await?;
                return Ok(false);
            }
            delete_recovery_codes(&tx, entity_id).await?;
            insert_recovery_codes(&tx, entity_id, codes, now).await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    async fn count_recovery_codes(&self, entity_id: &str) -> Result<usize, StoreError> {
        let rows = self
            .query(
                "SELECT count(*) FROM recovery_codes WHERE entity_id = $1 AND spent_at IS NULL",
                &[&entity_id],
            )
            .await?;
        let n: i64 = match rows.first() {
            Some(r) => col(r, 0)?,
            None => 0,
        };
        Ok(n.max(0) as usize)
    }

    /// One transaction under the user's lock: what it clears is what the lock returned,
    /// so a failure counted concurrently is either cleared here or counted after.
    async fn unlock_user(&self, entity_id: &str) -> Result<Option<LockState>, StoreError> {
        self.bounded(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            let cleared = lock_user(&tx, entity_id).await?;
            let devices = row(
                &tx,
                "SELECT count(*) FROM user_devices WHERE entity_id = $1",
                &[&entity_id],
            )
            .await?
            .map(|r| col::<i64>(&r, 0))
            .transpose()?
            .unwrap_or(0);
            if devices == 0 {
                tx.rollback().await?;
                return Ok(None);
            }
            exec(
                &tx,
                "DELETE FROM user_locks WHERE entity_id = $1",
                &[&entity_id],
            )
            .await?;
            tx.commit().await?;
            Ok(Some(cleared))
        })
        .await
    }
}

//! The user login step: devices, the per-user failure count, recovery codes and
//! temp_tokens. Every check is one write operation, so the writer's one-at-a-time order
//! makes each code, recovery code and temp_token good for one login at most.

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use super::otp_secrets;
use super::SqliteStore;
use crate::otp::{self, LockState, Outcome, Params, Refusal, Window};
use crate::store::{
    Activation, Check, Proof, RecoveryHash, Sealer, Setup, StoreError, UserDevice, UserTotpStore,
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

fn lock_of(c: &Connection, entity: &str) -> Result<LockState, StoreError> {
    let row: Option<(i64, Option<i64>)> = c
        .prepare_cached("SELECT failures, locked_until FROM user_locks WHERE entity_id = ?1")?
        .query_row([entity], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(
        row.map_or_else(LockState::default, |(failures, locked_until)| LockState {
            failures: failures.max(0) as u32,
            locked_until,
        }),
    )
}

/// Whether going from `before` to `after` began a lock.
fn began(before: LockState, after: LockState) -> bool {
    after.locked_until.is_some() && after.locked_until != before.locked_until
}

fn save_lock(c: &Connection, entity: &str, lock: LockState) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO user_locks (entity_id, failures, locked_until) VALUES (?1, ?2, ?3)
         ON CONFLICT(entity_id) DO UPDATE SET failures = excluded.failures, locked_until = excluded.locked_until",
    )?
    .execute(params![entity, lock.failures, lock.locked_until])?;
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

fn devices(
    c: &Connection,
    sealer: &Sealer,
    entity: &str,
    active: bool,
) -> Result<Vec<Device>, StoreError> {
    let rows: Vec<(String, String)> = c
        .prepare_cached(
            "SELECT name, secret_id FROM user_devices WHERE entity_id = ?1 AND active = ?2
             ORDER BY created_at, rowid",
        )?
        .query_map(params![entity, active], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(rows.len());
    for (name, secret_id) in rows {
        let (secret, params, last_step) = otp_secrets::open_with_step(c, sealer, &secret_id)?
            .ok_or_else(|| StoreError::Corrupt(format!("user device {name}: no secret")))?;
        out.push(Device {
            name,
            secret_id,
            secret,
            params,
            last_step,
        });
    }
    Ok(out)
}

fn active_count(c: &Connection, entity: &str) -> Result<i64, StoreError> {
    Ok(
        c.prepare_cached("SELECT count(*) FROM user_devices WHERE entity_id = ?1 AND active = 1")?
            .query_row([entity], |r| r.get(0))?,
    )
}

fn temp_user(c: &Connection, hash: &str, now: i64) -> Result<Option<String>, StoreError> {
    Ok(c.prepare_cached(
        "SELECT entity_id FROM temp_tokens WHERE hash = ?1 AND used_at IS NULL AND expires_at > ?2",
    )?
    .query_row(params![hash, now], |r| r.get(0))
    .optional()?)
}

/// The user a proof is about, or why there is none to check.
fn user_of(
    c: &Connection,
    proof: &Proof<'_>,
    now: i64,
) -> Result<Result<String, Check>, StoreError> {
    let user = match proof {
        Proof::Login { temp_hash, .. } => match temp_user(c, temp_hash, now)? {
            Some(u) => u,
            None => return Ok(Err(Check::BadTempToken)),
        },
        Proof::Owner { entity_id } => entity_id.to_string(),
    };
    if active_count(c, &user)? == 0 {
        return Ok(Err(Check::NotActive));
    }
    Ok(Ok(user))
}

/// What a success brings: a login spends its temp_token and stores the new token.
fn finish(c: &Connection, proof: &Proof<'_>, user: &str, now: i64) -> Result<(), StoreError> {
    if let Proof::Login { temp_hash, login } = proof {
        c.execute(
            "UPDATE temp_tokens SET used_at = ?2 WHERE hash = ?1 AND used_at IS NULL",
            params![temp_hash, now],
        )?;
        let mut token = (*login).clone();
        token.entity_id = user.to_string();
        super::insert_token(c, &token)?;
    }
    Ok(())
}

fn delete_recovery_codes(c: &Connection, entity: &str) -> Result<(), StoreError> {
    c.execute("DELETE FROM recovery_codes WHERE entity_id = ?1", [entity])?;
    Ok(())
}

fn insert_recovery_codes(
    c: &Connection,
    entity: &str,
    codes: &[RecoveryHash],
    now: i64,
) -> Result<(), StoreError> {
    let mut stmt = c.prepare_cached(
        "INSERT INTO recovery_codes (entity_id, selector, hash, created_at) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for code in codes {
        stmt.execute(params![entity, code.selector, code.hash, now])?;
    }
    Ok(())
}

#[async_trait]
impl UserTotpStore for SqliteStore {
    async fn setup_user_device(
        &self,
        entity_id: &str,
        name: Option<&str>,
        id: &str,
        secret: &[u8],
        params: &Params,
        now: i64,
    ) -> Result<Setup, StoreError> {
        let (entity, name, id, secret, params) = (
            entity_id.to_string(),
            name.map(str::to_string),
            id.to_string(),
            secret.to_vec(),
            *params,
        );
        let sealer = self.sealer.clone();
        self.write(move |c| {
            if name.is_none() && active_count(c, &entity)? > 0 {
                return Ok(Setup::AlreadyActive);
            }
            let name = name.unwrap_or_else(|| DEFAULT_DEVICE.to_string());
            let existing: Option<(String, bool)> = c
                .query_row(
                    "SELECT secret_id, active FROM user_devices WHERE entity_id = ?1 AND name = ?2",
                    params![entity, name],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let others: i64 = c.query_row(
                "SELECT count(*) FROM user_devices WHERE entity_id = ?1 AND name != ?2",
                params![entity, name],
                |r| r.get(0),
            )?;
            if others as usize >= crate::store::MAX_USER_DEVICES {
                return Ok(Setup::TooMany);
            }
            match existing {
                Some((_, true)) => return Ok(Setup::NameTaken),
                // A new setup replaces the pending one (CASCADE removes its device row).
                Some((old, false)) => {
                    c.execute("DELETE FROM otp_secrets WHERE id = ?1", [old])?;
                }
                None => {}
            }
            otp_secrets::insert(c, &sealer, &id, &secret, &params, now)?;
            c.execute(
                "INSERT INTO user_devices (entity_id, name, secret_id, active, created_at)
                 VALUES (?1, ?2, ?3, 0, ?4)",
                params![entity, name, id, now],
            )?;
            Ok(Setup::Pending)
        })
        .await
    }

    async fn activate_user_device(
        &self,
        entity_id: &str,
        name: Option<&str>,
        code: &str,
        codes: Option<&[RecoveryHash]>,
        now: i64,
    ) -> Result<Activation, StoreError> {
        let (entity, name, code, codes) = (
            entity_id.to_string(),
            name.map(str::to_string),
            code.to_string(),
            codes.map(<[RecoveryHash]>::to_vec),
        );
        let sealer = self.sealer.clone();
        let (activation, locked) = self.write(move |c| {
            let pending = devices(c, &sealer, &entity, false)?;
            let device = match &name {
                Some(n) => match pending.into_iter().find(|d| &d.name == n) {
                    Some(d) => d,
                    None => return Ok((Activation::NoPending, false)),
                },
                None if pending.len() > 1 => return Ok((Activation::SeveralPending, false)),
                None => match pending.into_iter().next() {
                    Some(d) => d,
                    None => return Ok((Activation::NoPending, false)),
                },
            };
            let first = active_count(c, &entity)? == 0;
            let before = lock_of(c, &entity)?;
            let (outcome, _, lock) = otp::verify_any(
                &[(&device.secret, &device.params, device.last_step)],
                &WINDOW,
                &code,
                now,
                before,
            );
            let step = match outcome {
                Outcome::Accepted { step } => step,
                Outcome::Refused(r) => {
                    save_lock(c, &entity, lock)?;
                    return Ok((Activation::Refused(r), began(before, lock)));
                }
            };
            // Recovery codes are hashed only for a right code, outside the writer; until
            // they come, nothing is written and the code stays good.
            if first && codes.is_none() {
                return Ok((Activation::NeedsCodes, false));
            }
            save_lock(c, &entity, lock)?;
            // The activating code's step counts as used: it cannot also log in.
            otp_secrets::record_step(c, &device.secret_id, step, now)?;
            c.execute(
                "UPDATE user_devices SET active = 1, activated_at = ?3 WHERE entity_id = ?1 AND name = ?2",
                params![entity, device.name, now],
            )?;
            if first {
                delete_recovery_codes(c, &entity)?;
                insert_recovery_codes(c, &entity, codes.as_deref().unwrap_or_default(), now)?;
            }
            Ok((Activation::Activated { first }, false))
        })
        .await?;
        self.count_lockout(locked);
        Ok(activation)
    }

    async fn list_user_devices(&self, entity_id: &str) -> Result<Vec<UserDevice>, StoreError> {
        let entity = entity_id.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT name, active, created_at, last_used_at FROM user_devices
                 WHERE entity_id = ?1 ORDER BY created_at, rowid",
            )?;
            let rows = stmt.query_map([entity], |r| {
                Ok(UserDevice {
                    name: r.get(0)?,
                    active: r.get(1)?,
                    created_at: r.get(2)?,
                    last_used_at: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn deactivate_user(
        &self,
        entity_id: &str,
        name: Option<&str>,
    ) -> Result<usize, StoreError> {
        let (entity, name) = (entity_id.to_string(), name.map(str::to_string));
        self.write(move |c| {
            // Deleting the secrets removes their device rows (CASCADE).
            let removed = c.execute(
                "DELETE FROM otp_secrets WHERE id IN (
                     SELECT secret_id FROM user_devices
                     WHERE entity_id = ?1 AND (?2 IS NULL OR name = ?2))",
                params![entity, name],
            )?;
            if active_count(c, &entity)? == 0 {
                delete_recovery_codes(c, &entity)?;
                c.execute("DELETE FROM user_locks WHERE entity_id = ?1", [&entity])?;
                // A temp_token from before must not log in after a new enrolment.
                c.execute("DELETE FROM temp_tokens WHERE entity_id = ?1", [&entity])?;
            }
            Ok(removed)
        })
        .await
    }

    async fn create_temp_token(
        &self,
        entity_id: &str,
        hash: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<bool, StoreError> {
        let (entity, hash) = (entity_id.to_string(), hash.to_string());
        self.write(move |c| {
            c.execute(
                "DELETE FROM temp_tokens WHERE expires_at <= ?1 OR used_at IS NOT NULL",
                [now],
            )?;
            if active_count(c, &entity)? == 0 {
                return Ok(false);
            }
            c.execute(
                "INSERT INTO temp_tokens (hash, entity_id, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
                params![hash, entity, now, expires_at],
            )?;
            Ok(true)
        })
        .await
    }

    async fn get_temp_token_user(
        &self,
        hash: &str,
        now: i64,
    ) -> Result<Option<String>, StoreError> {
        let hash = hash.to_string();
        self.read_now(move |c| temp_user(c, &hash, now)).await
    }

    async fn check_user_code(
        &self,
        proof: Proof<'_>,
        code: &str,
        now: i64,
    ) -> Result<Check, StoreError> {
        let owned = OwnedProof::of(&proof);
        let code = code.to_string();
        let sealer = self.sealer.clone();
        let (check, locked) = self.write(move |c| {
            let proof = owned.as_proof();
            let user = match user_of(c, &proof, now)? {
                Ok(u) => u,
                Err(check) => return Ok((check, false)),
            };
            let active = devices(c, &sealer, &user, true)?;
            let secrets: Vec<_> = active
                .iter()
                .map(|d| (d.secret.as_slice(), &d.params, d.last_step))
                .collect();
            let before = lock_of(c, &user)?;
            let (outcome, which, lock) = otp::verify_any(&secrets, &WINDOW, &code, now, before);
            save_lock(c, &user, lock)?;
            let check = match (outcome, which.and_then(|i| active.get(i))) {
                (Outcome::Accepted { step }, Some(d)) => {
                    otp_secrets::record_step(c, &d.secret_id, step, now)?;
                    c.execute(
                        "UPDATE user_devices SET last_used_at = ?3 WHERE entity_id = ?1 AND name = ?2",
                        params![user, d.name, now],
                    )?;
                    finish(c, &proof, &user, now)?;
                    Check::Accepted
                }
                (Outcome::Refused(r), _) => Check::Refused(r),
                (Outcome::Accepted { .. }, None) => Check::Refused(Refusal::Invalid),
            };
            Ok((check, began(before, lock)))
        })
        .await?;
        self.count_lockout(locked);
        Ok(check)
    }

    async fn get_recovery_hash(
        &self,
        entity_id: &str,
        selector: &str,
    ) -> Result<Option<String>, StoreError> {
        let (entity, selector) = (entity_id.to_string(), selector.to_string());
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT hash FROM recovery_codes WHERE entity_id = ?1 AND selector = ?2 AND spent_at IS NULL",
            )?
            .query_row(params![entity, selector], |r| r.get(0))
            .optional()?)
        })
        .await
    }

    async fn spend_recovery_code(
        &self,
        proof: Proof<'_>,
        selector: &str,
        matched: bool,
        now: i64,
    ) -> Result<Check, StoreError> {
        let owned = OwnedProof::of(&proof);
        let selector = selector.to_string();
        let (check, locked) = self
            .write(move |c| {
                let proof = owned.as_proof();
                let user = match user_of(c, &proof, now)? {
                    Ok(u) => u,
                    Err(check) => return Ok((check, false)),
                };
                let before = lock_of(c, &user)?;
                let lock = before;
                // A lock refuses even the right code, and leaves it unspent.
                if lock.locked_until.is_some_and(|until| now < until) {
                    return Ok((Check::Refused(Refusal::Locked), false));
                }
                let attempt = if !matched {
                    Err(Refusal::Invalid)
                } else {
                    let spent = c.execute(
                        "UPDATE recovery_codes SET spent_at = ?3
                     WHERE entity_id = ?1 AND selector = ?2 AND spent_at IS NULL",
                        params![user, selector, now],
                    )?;
                    // Spent by a concurrent call since it was read: a replay.
                    if spent == 1 {
                        Ok(())
                    } else {
                        Err(Refusal::Replay)
                    }
                };
                let (settled, lock) =
                    otp::settle(attempt, lock, WINDOW.max_attempts, LOCK_SECONDS, now);
                save_lock(c, &user, lock)?;
                let check = match settled {
                    Ok(()) => {
                        finish(c, &proof, &user, now)?;
                        Check::Accepted
                    }
                    Err(r) => Check::Refused(r),
                };
                Ok((check, began(before, lock)))
            })
            .await?;
        self.count_lockout(locked);
        Ok(check)
    }

    async fn replace_recovery_codes(
        &self,
        entity_id: &str,
        codes: &[RecoveryHash],
        now: i64,
    ) -> Result<bool, StoreError> {
        let (entity, codes) = (entity_id.to_string(), codes.to_vec());
        self.write(move |c| {
            if active_count(c, &entity)? == 0 {
                return Ok(false);
            }
            delete_recovery_codes(c, &entity)?;
            insert_recovery_codes(c, &entity, &codes, now)?;
            Ok(true)
        })
        .await
    }

    async fn count_recovery_codes(&self, entity_id: &str) -> Result<usize, StoreError> {
        let entity = entity_id.to_string();
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT count(*) FROM recovery_codes WHERE entity_id = ?1 AND spent_at IS NULL",
            )?
            .query_row([entity], |r| r.get(0))?)
        })
        .await
    }

    async fn unlock_user(&self, entity_id: &str) -> Result<Option<LockState>, StoreError> {
        let entity = entity_id.to_string();
        self.write(move |c| {
            let devices: i64 = c
                .prepare_cached("SELECT count(*) FROM user_devices WHERE entity_id = ?1")?
                .query_row([&entity], |r| r.get(0))?;
            if devices == 0 {
                return Ok(None);
            }
            let cleared = lock_of(c, &entity)?;
            c.execute("DELETE FROM user_locks WHERE entity_id = ?1", [&entity])?;
            Ok(Some(cleared))
        })
        .await
    }
}

impl SqliteStore {
    /// Counts a lock that began in a committed write.
    fn count_lockout(&self, began: bool) {
        if began {
            self.lockouts
                .user_totp
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// A [`Proof`] the writer thread can own.
enum OwnedProof {
    Login {
        temp_hash: String,
        // Boxed: a token record is large beside the other variant.
        login: Box<crate::store::TokenRecord>,
    },
    Owner {
        entity_id: String,
    },
}

impl OwnedProof {
    fn of(p: &Proof<'_>) -> Self {
        match p {
            Proof::Login { temp_hash, login } => OwnedProof::Login {
                temp_hash: temp_hash.to_string(),
                login: Box::new((*login).clone()),
            },
            Proof::Owner { entity_id } => OwnedProof::Owner {
                entity_id: entity_id.to_string(),
            },
        }
    }

    fn as_proof(&self) -> Proof<'_> {
        match self {
            OwnedProof::Login { temp_hash, login } => Proof::Login { temp_hash, login },
            OwnedProof::Owner { entity_id } => Proof::Owner { entity_id },
        }
    }
}

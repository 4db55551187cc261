//! Keys of Vault's TOTP secrets engine, in mounts. Each key's secret is an `otp_secrets`
//! row (sealed, with its replay record, failures and lock); `engine_keys` names it, and
//! `engine_tried_codes` remembers the codes tried at it for Vault's "already used".

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use super::otp_secrets::{self, params_of_row};
use super::SqliteStore;
use crate::otp;
use crate::store::{EngineCheck, EngineKeyInfo, EngineStore, StoreError, Thing};

/// The columns [`info_of`] reads, of `engine_keys` aliased `k` and `otp_secrets` `s`.
const INFO_COLS: &str =
    "k.mount, k.name, k.issuer, k.account_name, s.algorithm, s.digits, s.period, k.skew, k.created_at, k.secret_id";

/// A key row (the columns of [`INFO_COLS`]) and its secret's id.
fn info_of(r: &rusqlite::Row) -> rusqlite::Result<(EngineKeyRaw, String)> {
    Ok((
        EngineKeyRaw {
            mount: r.get(0)?,
            name: r.get(1)?,
            issuer: r.get(2)?,
            account_name: r.get(3)?,
            algorithm: r.get(4)?,
            digits: r.get(5)?,
            period: r.get(6)?,
            skew: r.get(7)?,
            created_at: r.get(8)?,
        },
        r.get(9)?,
    ))
}

/// A key row as SQLite types it, checked by [`EngineKeyRaw::check`].
struct EngineKeyRaw {
    mount: String,
    name: String,
    issuer: String,
    account_name: String,
    algorithm: String,
    digits: i64,
    period: i64,
    skew: i64,
    created_at: i64,
}

impl EngineKeyRaw {
    fn check(self) -> Result<EngineKeyInfo, StoreError> {
        let what = format!("{}/{}", self.mount, self.name);
        let params = params_of_row(
            "engine_keys",
            &what,
            &self.algorithm,
            self.digits,
            self.period,
        )?;
        let skew = u32::try_from(self.skew)
            .map_err(|_| StoreError::Corrupt(format!("engine_keys {what}: skew {}", self.skew)))?;
        Ok(EngineKeyInfo {
            mount: self.mount,
            name: self.name,
            issuer: self.issuer,
            account_name: self.account_name,
            params,
            skew,
            created_at: self.created_at,
        })
    }
}

/// The key and its secret's id.
fn find(
    c: &Connection,
    mount: &str,
    name: &str,
) -> Result<Option<(EngineKeyInfo, String)>, StoreError> {
    let found = c
        .prepare_cached(&format!(
            "SELECT {INFO_COLS} FROM engine_keys k JOIN otp_secrets s ON s.id = k.secret_id
             WHERE k.mount = ?1 AND k.name = ?2"
        ))?
        .query_row(params![mount, name], info_of)
        .optional()?;
    found.map(|(raw, sid)| Ok((raw.check()?, sid))).transpose()
}

fn require(c: &Connection, mount: &str, name: &str) -> Result<(EngineKeyInfo, String), StoreError> {
    find(c, mount, name)?.ok_or(StoreError::NotFound(Thing::EngineKey))
}

#[async_trait]
impl EngineStore for SqliteStore {
    /// One write: the old key's secret goes (its tried codes CASCADE with it, and so does
    /// its `engine_keys` row), then the new secret and row go in. The writer runs one
    /// operation at a time, so a name never holds two keys.
    async fn put_engine_key(&self, info: &EngineKeyInfo, secret: &[u8]) -> Result<(), StoreError> {
        let (info, secret) = (info.clone(), secret.to_vec());
        let sealer = self.sealer.clone();
        self.write(move |c| {
            if let Some((_, old)) = find(c, &info.mount, &info.name)? {
                c.execute("DELETE FROM otp_secrets WHERE id = ?1", [old])?;
            }
            let id = uuid::Uuid::new_v4().to_string();
            otp_secrets::insert(c, &sealer, &id, &secret, &info.params, info.created_at)?;
            c.execute(
                "INSERT INTO engine_keys (mount, name, secret_id, issuer, account_name, skew, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    info.mount,
                    info.name,
                    id,
                    info.issuer,
                    info.account_name,
                    info.skew,
                    info.created_at
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn get_engine_key(
        &self,
        mount: &str,
        name: &str,
    ) -> Result<Option<EngineKeyInfo>, StoreError> {
        let (mount, name) = (mount.to_string(), name.to_string());
        self.read_now(move |c| Ok(find(c, &mount, &name)?.map(|(info, _)| info)))
            .await
    }

    async fn open_engine_key(
        &self,
        mount: &str,
        name: &str,
    ) -> Result<Option<(EngineKeyInfo, Vec<u8>)>, StoreError> {
        let (mount, name) = (mount.to_string(), name.to_string());
        let sealer = self.sealer.clone();
        self.read_now(move |c| {
            let Some((info, sid)) = find(c, &mount, &name)? else {
                return Ok(None);
            };
            let Some((secret, _)) = otp_secrets::open(c, &sealer, &sid)? else {
                return Ok(None);
            };
            Ok(Some((info, secret)))
        })
        .await
    }

    async fn list_engine_keys(&self, mount: &str) -> Result<Vec<String>, StoreError> {
        let mount = mount.to_string();
        self.read(move |c| {
            // BINARY collation: byte order, as Vault sorts its keys.
            let mut st =
                c.prepare_cached("SELECT name FROM engine_keys WHERE mount = ?1 ORDER BY name")?;
            let names = st
                .query_map([mount], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            Ok(names)
        })
        .await
    }

    async fn delete_engine_key(&self, mount: &str, name: &str) -> Result<bool, StoreError> {
        let (mount, name) = (mount.to_string(), name.to_string());
        self.write(move |c| {
            let Some((_, sid)) = find(c, &mount, &name)? else {
                return Ok(false);
            };
            // The engine_keys row and the tried codes CASCADE with the secret.
            c.execute("DELETE FROM otp_secrets WHERE id = ?1", [sid])?;
            Ok(true)
        })
        .await
    }

    /// One write: the tried codes past their time are dropped, the rest read, the code
    /// checked with [`otp::verify_untried`] against the state read in the same write,
    /// and the new state and the tried code stored. The writer runs one operation at a
    /// time, so two requests with one code cannot both pass.
    async fn check_and_record_engine_code(
        &self,
        mount: &str,
        name: &str,
        code: &str,
        now: i64,
    ) -> Result<EngineCheck, StoreError> {
        let (mount, name, code) = (mount.to_string(), name.to_string(), code.to_string());
        let sealer = self.sealer.clone();
        let (check, began) = self
            .write(move |c| {
                let (info, sid) = require(c, &mount, &name)?;
                let row = otp_secrets::load(c, &sid)?.ok_or(StoreError::NotFound(Thing::EngineKey))?;
                c.prepare_cached(
                    "DELETE FROM engine_tried_codes WHERE secret_id = ?1 AND expires_at <= ?2",
                )?
                .execute(params![sid, now])?;
                let tried = c
                    .prepare_cached("SELECT code FROM engine_tried_codes WHERE secret_id = ?1")?
                    .query_map([&sid], |r| r.get(0))?
                    .collect::<Result<Vec<String>, _>>()?;
                let secret = sealer.open(&otp_secrets::aad(&sid), &row.sealed)?;
                let window = info.window();
                let Some((outcome, state, remember)) = otp::verify_untried(
                    &secret,
                    &row.params,
                    &window,
                    &code,
                    now,
                    row.state,
                    &tried,
                ) else {
                    return Ok((EngineCheck::Repeat, false));
                };
                let began = otp_secrets::save_state(c, &sid, &row.state, &state, now)?;
                if let Some(code) = remember {
                    c.prepare_cached(
                        "INSERT INTO engine_tried_codes (secret_id, code, expires_at) VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![sid, code, otp::tried_until(&row.params, &window, now)])?;
                }
                Ok((EngineCheck::Checked(outcome), began))
            })
            .await?;
        // Counted once committed: the writer answers only after the commit.
        if began {
            self.lockouts
                .vault_totp
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(check)
    }

    async fn unlock_engine_key(
        &self,
        mount: &str,
        name: &str,
    ) -> Result<otp::LockState, StoreError> {
        let (mount, name) = (mount.to_string(), name.to_string());
        self.write(move |c| {
            let (_, sid) = require(c, &mount, &name)?;
            otp_secrets::unlock(c, &sid)?.ok_or(StoreError::NotFound(Thing::EngineKey))
        })
        .await
    }
}

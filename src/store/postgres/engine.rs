//! Keys of Vault's TOTP secrets engine on PostgreSQL, as SQLite's `engine.rs` keeps
//! them: each key's secret an `otp_secrets` row, `engine_keys` naming it, and
//! `engine_tried_codes` remembering the codes tried at it.

use std::sync::atomic::Ordering::Relaxed;

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::mfa::{
    clear_lock, exec, insert_secret, params_of_row, row, rows, save_state, SecretRow, SECRET_COLS,
};
use super::{col, PgStore};
use crate::otp;
use crate::store::{EngineCheck, EngineKeyInfo, EngineStore, StoreError, Thing};

/// The columns [`info_of`] reads, of `engine_keys` aliased `k` and `otp_secrets` `o`.
const INFO_COLS: &str =
    "k.mount, k.name, k.issuer, k.account_name, o.algorithm, o.digits, o.period, k.skew, k.created_at";

/// A key row (the columns of [`INFO_COLS`], from column `at`), checked.
fn info_of(r: &Row, at: usize) -> Result<EngineKeyInfo, StoreError> {
    let mount: String = col(r, at)?;
    let name: String = col(r, at + 1)?;
    let what = format!("{mount}/{name}");
    let algorithm: String = col(r, at + 4)?;
    let skew: i32 = col(r, at + 7)?;
    Ok(EngineKeyInfo {
        params: params_of_row(
            "engine_keys",
            &what,
            &algorithm,
            col(r, at + 5)?,
            col(r, at + 6)?,
        )?,
        skew: u32::try_from(skew)
            .map_err(|_| StoreError::Corrupt(format!("engine_keys {what}: skew {skew}")))?,
        issuer: col(r, at + 2)?,
        account_name: col(r, at + 3)?,
        created_at: col(r, at + 8)?,
        mount,
        name,
    })
}

/// The key with its secret's row (sealed, with its state); with `lock`, that
/// `otp_secrets` row is locked `FOR UPDATE` until the caller's transaction ends.
///
/// Under `READ COMMITTED`, a statement that had to wait for the lock gets the row as
/// its holder committed it (PostgreSQL re-reads a locked row's newest version), and
/// finds nothing if the holder deleted it.
async fn find<C: GenericClient>(
    c: &C,
    mount: &str,
    name: &str,
    lock: bool,
) -> Result<Option<(EngineKeyInfo, SecretRow)>, StoreError> {
    let sql = format!(
        "SELECT {INFO_COLS}, {SECRET_COLS}
         FROM engine_keys k JOIN otp_secrets o ON o.id = k.secret_id
         WHERE k.mount = $1 AND k.name = $2{}",
        if lock { " FOR UPDATE OF o" } else { "" }
    );
    let Some(r) = row(c, &sql, &[&mount, &name]).await? else {
        return Ok(None);
    };
    Ok(Some((info_of(&r, 0)?, SecretRow::read(&r, 9)?)))
}

/// The class of the advisory locks that make writes of one key name take turns (the
/// two-key form, whose key space is apart from the migration lock's): "tk" in ASCII.
const PUT_LOCK_CLASS: i32 = i32::from_be_bytes(*b"\0\0tk");

/// Takes, until the end of `tx`, the advisory lock of the key name `mount/name`: every
/// write that creates or replaces a key by name (a put, an import) takes it first, so
/// they take turns on any number of daemons, a new name included, where no row exists
/// yet to lock. Two names whose hashes collide merely take turns too.
pub(super) async fn lock_key_name(
    tx: &deadpool_postgres::Transaction<'_>,
    mount: &str,
    name: &str,
) -> Result<(), StoreError> {
    let lock_key = format!("{mount}/{name}");
    row(
        tx,
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&PUT_LOCK_CLASS, &lock_key],
    )
    .await?;
    Ok(())
}

#[async_trait]
impl EngineStore for PgStore {
    /// One transaction. It first takes a transaction-scoped advisory lock on the name
    /// (`pg_advisory_xact_lock(class, hashtext(mount/name))`), so puts of one name take
    /// turns on any number of daemons, a new name included, where no row exists yet to
    /// lock. Then the old key's secret is deleted (its `engine_keys` row and tried codes
    /// CASCADE with it) and the new secret and row inserted. Under `READ COMMITTED` each
    /// statement after the lock sees what the previous holder committed, so the last put
    /// wins, as in Vault, and a name never holds two keys. Two names whose hashes
    /// collide merely take turns too.
    async fn put_engine_key(&self, info: &EngineKeyInfo, secret: &[u8]) -> Result<(), StoreError> {
        self.bounded(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            lock_key_name(&tx, &info.mount, &info.name).await?;
            exec(
                &tx,
                "DELETE FROM otp_secrets WHERE id IN
                 (SELECT secret_id FROM engine_keys WHERE mount = $1 AND name = $2)",
                &[&info.mount, &info.name],
            )
            .await?;
            let id = uuid::Uuid::new_v4().to_string();
            insert_secret(&tx, self.sealer(), &id, secret, &info.params, info.created_at).await?;
            let skew = i32::try_from(info.skew).unwrap_or(i32::MAX);
            exec(
                &tx,
                "INSERT INTO engine_keys (mount, name, secret_id, issuer, account_name, skew, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &info.mount,
                    &info.name,
                    &id,
                    &info.issuer,
                    &info.account_name,
                    &skew,
                    &info.created_at,
                ],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn get_engine_key(
        &self,
        mount: &str,
        name: &str,
    ) -> Result<Option<EngineKeyInfo>, StoreError> {
        self.bounded(async {
            let c = self.client().await?;
            Ok(find(&c, mount, name, false).await?.map(|(info, _)| info))
        })
        .await
    }

    async fn open_engine_key(
        &self,
        mount: &str,
        name: &str,
    ) -> Result<Option<(EngineKeyInfo, Vec<u8>)>, StoreError> {
        let found = self
            .bounded(async {
                let c = self.client().await?;
                find(&c, mount, name, false).await
            })
            .await?;
        let Some((info, secret)) = found else {
            return Ok(None);
        };
        Ok(Some((info, secret.open(self.sealer())?)))
    }

    async fn list_engine_keys(&self, mount: &str) -> Result<Vec<String>, StoreError> {
        // COLLATE "C": byte order, as Vault sorts its keys, whatever the database's locale.
        let names = self
            .query(
                "SELECT name FROM engine_keys WHERE mount = $1 ORDER BY name COLLATE \"C\"",
                &[&mount],
            )
            .await?;
        names.iter().map(|r| col(r, 0)).collect()
    }

    /// One statement; the `engine_keys` row and the tried codes cascade with the secret.
    async fn delete_engine_key(&self, mount: &str, name: &str) -> Result<bool, StoreError> {
        let n = self
            .execute(
                "DELETE FROM otp_secrets WHERE id IN
                 (SELECT secret_id FROM engine_keys WHERE mount = $1 AND name = $2)",
                &[&mount, &name],
            )
            .await?;
        Ok(n > 0)
    }

    /// One transaction: the key's secret row is locked `FOR UPDATE` (see `find`), the
    /// tried codes past their time are dropped and the rest read, the code checked with
    /// [`otp::verify_untried`] in Rust, and the new state and the tried code written
    /// before the commit releases the lock.
    ///
    /// Why exactly once under `READ COMMITTED`, on any number of daemons: every check of
    /// this key takes the same row lock before it reads anything, so they run one after
    /// another, and each reads the state and the tried codes as the previous holder
    /// committed them (the tried codes are read by a statement that starts after the
    /// lock was granted, so it sees that commit). So the second of two calls with one
    /// right code finds it tried, and every failure is counted on top of the last one.
    async fn check_and_record_engine_code(
        &self,
        mount: &str,
        name: &str,
        code: &str,
        now: i64,
    ) -> Result<EngineCheck, StoreError> {
        let (check, began) = self
            .bounded(async {
                let mut c = self.client().await?;
                let tx = c.transaction().await?;
                let (info, row) = find(&tx, mount, name, true)
                    .await?
                    .ok_or(StoreError::NotFound(Thing::EngineKey))?;
                exec(
                    &tx,
                    "DELETE FROM engine_tried_codes WHERE secret_id = $1 AND expires_at <= $2",
                    &[&row.id, &now],
                )
                .await?;
                let tried = rows(
                    &tx,
                    "SELECT code FROM engine_tried_codes WHERE secret_id = $1",
                    &[&row.id],
                )
                .await?
                .iter()
                .map(|r| col(r, 0))
                .collect::<Result<Vec<String>, _>>()?;
                let secret = row.open(self.sealer())?;
                let window = info.window();
                let Some((outcome, state, remember)) =
                    otp::verify_untried(&secret, &row.params, &window, code, now, row.state, &tried)
                else {
                    // Nothing written: a read-only transaction ends the same either way.
                    tx.commit().await?;
                    return Ok((EngineCheck::Repeat, false));
                };
                let began = save_state(&tx, &row, &state, now).await?;
                if let Some(code) = remember {
                    exec(
                        &tx,
                        "INSERT INTO engine_tried_codes (secret_id, code, expires_at) VALUES ($1, $2, $3)",
                        &[&row.id, &code, &otp::tried_until(&row.params, &window, now)],
                    )
                    .await?;
                }
                tx.commit().await?;
                Ok((EngineCheck::Checked(outcome), began))
            })
            .await?;
        if began {
            self.lockouts.vault_totp.fetch_add(1, Relaxed);
        }
        Ok(check)
    }

    /// One transaction: the secret's row locked `FOR UPDATE` (as for a check, so an
    /// unlock and a check take turns), its lock and failure count cleared; the replay
    /// record and the tried codes stay.
    async fn unlock_engine_key(
        &self,
        mount: &str,
        name: &str,
    ) -> Result<otp::LockState, StoreError> {
        self.bounded(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            let (_, row) = find(&tx, mount, name, true)
                .await?
                .ok_or(StoreError::NotFound(Thing::EngineKey))?;
            let cleared = clear_lock(&tx, &row).await?;
            tx.commit().await?;
            Ok(cleared)
        })
        .await
    }
}

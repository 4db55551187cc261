//! Every row out, and every row in ([`MigrateStore`]) on PostgreSQL: what `totpd
//! migrate` writes into an empty database, and reads back to verify it.
//!
//! **Dump** is one `REPEATABLE READ READ ONLY` transaction: every table of one snapshot,
//! whatever other daemons commit meanwhile.
//!
//! **Load** is one `READ COMMITTED` transaction, committed whole or not at all. It first
//! locks every table `IN SHARE ROW EXCLUSIVE MODE`, which lets readers read but makes
//! any other writer (a daemon started too early, a second migration) wait until the
//! commit, so the emptiness check and the inserts see the same database and nothing can
//! slip in between. Rows go in as arrays, one `INSERT ... SELECT FROM unnest(...)` per
//! table and chunk of [`CHUNK`] rows, so a large database takes few round trips. A
//! user's devices keep the order they were made in: each gets its `seq` from its place
//! in the dump, and the sequence is moved past the last, so devices made later follow.
//!
//! The load's deadline grows with the number of rows, beyond the store's deadline for
//! one short call.

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Transaction;
use tokio_postgres::IsolationLevel;

use super::mfa::{exec, int, params_of_row, rows};
use super::transfer::{method_of, METHOD_COLS};
use super::{col, ops::TABLES, token_row, PgStore, TOKEN_COLS};
use crate::store::{
    not_empty, AgentSecretRow, EngineKeyRow, MetaRow, MfaSecretRow, MigrateStore, PolicyRow,
    PolicyTokenRecord, RecoveryCodeRow, SealedSecretRow, StoreDump, StoreError, TempTokenRow,
    TriedCodeRow, UserDeviceRow, UserLockRow, META_KEY_CHECK,
};

/// Rows per insert statement.
const CHUNK: usize = 5_000;

/// Time allowed per row of a load, beyond the store's deadline (a row costs far less:
/// this is a bound, not an estimate).
const PER_ROW: Duration = Duration::from_millis(2);

/// A dump reads everything: allowed this many times the store's deadline.
const DUMP_DEADLINES: u32 = 12;

#[async_trait]
impl MigrateStore for PgStore {
    async fn dump_all(&self) -> Result<StoreDump, StoreError> {
        tokio::time::timeout(self.deadline * DUMP_DEADLINES, async {
            let mut c = self.client().await?;
            let tx = c
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            let bound = (self.deadline * DUMP_DEADLINES).as_millis().max(1);
            tx.batch_execute(&format!("SET LOCAL statement_timeout = {bound}"))
                .await?;
            let d = dump(&tx).await?;
            tx.commit().await?;
            Ok(d)
        })
        .await
        .unwrap_or(Err(StoreError::Unavailable))
    }

    async fn load_all(&self, d: &StoreDump) -> Result<(), StoreError> {
        let rows = u32::try_from(d.rows()).unwrap_or(u32::MAX);
        let deadline = self.deadline * DUMP_DEADLINES + PER_ROW * rows;
        tokio::time::timeout(deadline, async {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            let bound = deadline.as_millis().max(1);
            tx.batch_execute(&format!("SET LOCAL statement_timeout = {bound}"))
                .await?;
            // Readers go on; every writer waits for the commit.
            tx.batch_execute(&format!(
                "LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE",
                TABLES.join(", ")
            ))
            .await?;
            let held = held_rows(&tx).await?;
            if !held.is_empty() {
                return Err(not_empty(&held));
            }
            load(&tx, d).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
        .unwrap_or(Err(StoreError::Unavailable))
    }
}

// ----- dump -----

async fn dump(tx: &Transaction<'_>) -> Result<StoreDump, StoreError> {
    let meta = rows(
        tx,
        "SELECT key, value FROM meta WHERE key <> $1 ORDER BY key",
        &[&META_KEY_CHECK],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(MetaRow {
            key: col(r, 0)?,
            value: col(r, 1)?,
        })
    })
    .collect::<Result<Vec<_>, StoreError>>()?;
    let policies = rows(
        tx,
        "SELECT name, document, updated_at FROM policies ORDER BY name",
        &[],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(PolicyRow {
            name: col(r, 0)?,
            document: col(r, 1)?,
            updated_at: col(r, 2)?,
        })
    })
    .collect::<Result<Vec<_>, StoreError>>()?;
    let tokens = rows(
        tx,
        &format!("SELECT {TOKEN_COLS} FROM tokens ORDER BY hash"),
        &[],
    )
    .await?
    .iter()
    .map(token_row)
    .collect::<Result<Vec<_>, _>>()?;
    let policy_tokens = rows(
        tx,
        "SELECT hash, prefix, mount, policy, created_at, expires_at, spent_at
         FROM policy_tokens ORDER BY hash",
        &[],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(PolicyTokenRecord {
            hash: col(r, 0)?,
            prefix: col(r, 1)?,
            mount: col(r, 2)?,
            policy: col(r, 3)?,
            created_at: col(r, 4)?,
            expires_at: col(r, 5)?,
            spent_at: col(r, 6)?,
        })
    })
    .collect::<Result<Vec<_>, StoreError>>()?;
    let otp_secrets = rows(
        tx,
        "SELECT id, sealed, algorithm, digits, period, last_step, failures, locked_until,
                last_attempt, created_at
         FROM otp_secrets ORDER BY id",
        &[],
    )
    .await?
    .iter()
    .map(|r| {
        let id: String = col(r, 0)?;
        let algorithm: String = col(r, 2)?;
        let failures: i32 = col(r, 6)?;
        Ok(SealedSecretRow {
            params: params_of_row("otp_secrets", &id, &algorithm, col(r, 3)?, col(r, 4)?)?,
            sealed: col(r, 1)?,
            last_step: col(r, 5)?,
            failures: failures.into(),
            locked_until: col(r, 7)?,
            last_attempt: col(r, 8)?,
            created_at: col(r, 9)?,
            id,
        })
    })
    .collect::<Result<Vec<_>, StoreError>>()?;
    let mfa_methods = rows(
        tx,
        &format!("SELECT {METHOD_COLS} FROM mfa_methods ORDER BY id"),
        &[],
    )
    .await?
    .iter()
    .map(method_of)
    .collect::<Result<Vec<_>, _>>()?;
    let mfa_secrets = rows(
        tx,
        "SELECT method_id, entity_id, secret_id, created_at FROM mfa_secrets
         ORDER BY method_id, entity_id",
        &[],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(MfaSecretRow {
            method_id: col(r, 0)?,
            entity_id: col(r, 1)?,
            secret_id: col(r, 2)?,
            created_at: col(r, 3)?,
        })
    })
    .collect::<Result<Vec<_>, StoreError>>()?;
    let agent_secrets = rows(
        tx,
        "SELECT id, entity_id, label, issuer, created_at FROM agent_secrets ORDER BY id",
        &[],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(AgentSecretRow {
            id: col(r, 0)?,
            entity_id: col(r, 1)?,
            label: col(r, 2)?,
            issuer: col(r, 3)?,
            created_at: col(r, 4)?,
        })
    })
    .collect::<Result<Vec<_>, StoreError>>()?;
    // In the order they were made (see migration 2).
    let user_devices = rows(
        tx,
        "SELECT entity_id, name, secret_id, active, created_at, activated_at, last_used_at
         FROM user_devices ORDER BY seq, entity_id, name",
        &[],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(UserDeviceRow {
            entity_id: col(r, 0)?,
            name: col(r, 1)?,
            secret_id: col(r, 2)?,
            active: col(r, 3)?,
            created_at: col(r, 4)?,
            activated_at: col(r, 5)?,
            last_used_at: col(r, 6)?,
        })
    })
    .collect::<Result<Vec<_>, StoreError>>()?;
    let user_locks = rows(
        tx,
        "SELECT entity_id, failures, locked_until FROM user_locks ORDER BY entity_id",
        &[],
    )
    .await?
    .iter()
    .map(|r| {
        let failures: i32 = col(r, 1)?;
        Ok(UserLockRow {
            entity_id: col(r, 0)?,
            failures: failures.into(),
            locked_until: col(r, 2)?,
        })
    })
    .collect::<Result<Vec<_>, StoreError>>()?;
    let recovery_codes = rows(
        tx,
        "SELECT entity_id, selector, hash, created_at, spent_at FROM recovery_codes
         ORDER BY entity_id, selector",
        &[],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(RecoveryCodeRow {
            entity_id: col(r, 0)?,
            selector: col(r, 1)?,
            hash: col(r, 2)?,
            created_at: col(r, 3)?,
            spent_at: col(r, 4)?,
        })
    })
    .collect::<Result<Vec<_>, StoreError>>()?;
    let temp_tokens = rows(
        tx,
        "SELECT hash, entity_id, created_at, expires_at, used_at FROM temp_tokens ORDER BY hash",
        &[],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(TempTokenRow {
            hash: col(r, 0)?,
            entity_id: col(r, 1)?,
            created_at: col(r, 2)?,
            expires_at: col(r, 3)?,
            used_at: col(r, 4)?,
        })
    })
    .collect::<Result<Vec<_>, StoreError>>()?;
    // Migration 3's columns take the database's collation: byte order asked for here.
    let engine_keys = rows(
        tx,
        "SELECT mount, name, secret_id, issuer, account_name, skew, created_at FROM engine_keys
         ORDER BY mount COLLATE \"C\", name COLLATE \"C\"",
        &[],
    )
    .await?
    .iter()
    .map(|r| {
        let skew: i32 = col(r, 5)?;
        Ok(EngineKeyRow {
            mount: col(r, 0)?,
            name: col(r, 1)?,
            secret_id: col(r, 2)?,
            issuer: col(r, 3)?,
            account_name: col(r, 4)?,
            skew: skew.into(),
            created_at: col(r, 6)?,
        })
    })
    .collect::<Result<Vec<_>, StoreError>>()?;
    let engine_tried_codes = rows(
        tx,
        "SELECT secret_id, code, expires_at FROM engine_tried_codes
         ORDER BY secret_id COLLATE \"C\", code COLLATE \"C\"",
        &[],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(TriedCodeRow {
            secret_id: col(r, 0)?,
            code: col(r, 1)?,
            expires_at: col(r, 2)?,
        })
    })
    .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(StoreDump {
        meta,
        policies,
        tokens,
        policy_tokens,
        otp_secrets,
        mfa_methods,
        mfa_secrets,
        agent_secrets,
        user_devices,
        user_locks,
        recovery_codes,
        temp_tokens,
        engine_keys,
        engine_tried_codes,
    })
}

// ----- load -----

/// The tables holding rows (the key check aside), with how many.
async fn held_rows(tx: &Transaction<'_>) -> Result<Vec<(String, u64)>, StoreError> {
    let mut held = Vec::new();
    for table in TABLES {
        let filter = if *table == "meta" {
            format!(" WHERE key <> '{META_KEY_CHECK}'")
        } else {
            String::new()
        };
        let n: i64 = match rows(tx, &format!("SELECT count(*) FROM {table}{filter}"), &[])
            .await?
            .first()
        {
            Some(r) => col(r, 0)?,
            None => 0,
        };
        if n > 0 {
            held.push((table.to_string(), n as u64));
        }
    }
    Ok(held)
}

/// A small count as the schema's `INTEGER`.
fn int4(what: &str, v: i64) -> Result<i32, StoreError> {
    i32::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} {v} is out of range")))
}

/// Inserts every row of `d`, referenced rows before the rows referring to them.
async fn load(tx: &Transaction<'_>, d: &StoreDump) -> Result<(), StoreError> {
    let meta: Vec<&MetaRow> = d.meta.iter().filter(|m| m.key != META_KEY_CHECK).collect();
    for part in meta.chunks(CHUNK) {
        let keys: Vec<&str> = part.iter().map(|m| m.key.as_str()).collect();
        let values: Vec<&[u8]> = part.iter().map(|m| m.value.as_slice()).collect();
        exec(
            tx,
            "INSERT INTO meta (key, value) SELECT * FROM unnest($1::text[], $2::bytea[])",
            &[&keys, &values],
        )
        .await?;
    }

    for part in d.policies.chunks(CHUNK) {
        let names: Vec<&str> = part.iter().map(|p| p.name.as_str()).collect();
        let docs: Vec<&str> = part.iter().map(|p| p.document.as_str()).collect();
        let at: Vec<i64> = part.iter().map(|p| p.updated_at).collect();
        exec(
            tx,
            "INSERT INTO policies (name, document, updated_at)
             SELECT * FROM unnest($1::text[], $2::text[], $3::int8[])",
            &[&names, &docs, &at],
        )
        .await?;
    }

    for part in d.tokens.chunks(CHUNK) {
        let policies = part
            .iter()
            .map(|t| serde_json::to_string(&t.policies))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::Corrupt(format!("token policies: {e}")))?;
        exec(
            tx,
            &format!(
                "INSERT INTO tokens ({TOKEN_COLS})
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                      $6::int8[], $7::int8[], $8::text[], $9::bool[], $10::int8[],
                                      $11::int8[], $12::int8[])"
            ),
            &[
                &part.iter().map(|t| t.hash.as_str()).collect::<Vec<_>>(),
                &part.iter().map(|t| t.accessor.as_str()).collect::<Vec<_>>(),
                &part
                    .iter()
                    .map(|t| t.entity_id.as_str())
                    .collect::<Vec<_>>(),
                &part
                    .iter()
                    .map(|t| t.display_name.as_str())
                    .collect::<Vec<_>>(),
                &policies,
                &part.iter().map(|t| t.created_at).collect::<Vec<_>>(),
                &part.iter().map(|t| t.expires_at).collect::<Vec<_>>(),
                &part.iter().map(|t| t.parent.as_deref()).collect::<Vec<_>>(),
                &part.iter().map(|t| t.renewable).collect::<Vec<_>>(),
                &part.iter().map(|t| t.creation_ttl).collect::<Vec<_>>(),
                &part.iter().map(|t| t.explicit_max_ttl).collect::<Vec<_>>(),
                &part.iter().map(|t| t.last_renewal).collect::<Vec<_>>(),
            ],
        )
        .await?;
    }

    for part in d.policy_tokens.chunks(CHUNK) {
        exec(
            tx,
            "INSERT INTO policy_tokens (hash, prefix, mount, policy, created_at, expires_at, spent_at)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[],
                                  $6::int8[], $7::int8[])",
            &[
                &part.iter().map(|t| t.hash.as_str()).collect::<Vec<_>>(),
                &part.iter().map(|t| t.prefix.as_str()).collect::<Vec<_>>(),
                &part.iter().map(|t| t.mount.as_str()).collect::<Vec<_>>(),
                &part.iter().map(|t| t.policy.as_str()).collect::<Vec<_>>(),
                &part.iter().map(|t| t.created_at).collect::<Vec<_>>(),
                &part.iter().map(|t| t.expires_at).collect::<Vec<_>>(),
                &part.iter().map(|t| t.spent_at).collect::<Vec<_>>(),
            ],
        )
        .await?;
    }

    for part in d.otp_secrets.chunks(CHUNK) {
        let digits = part
            .iter()
            .map(|s| int("digits", s.params.digits.into()))
            .collect::<Result<Vec<_>, _>>()?;
        let periods = part
            .iter()
            .map(|s| int("period", s.params.period))
            .collect::<Result<Vec<_>, _>>()?;
        let failures = part
            .iter()
            .map(|s| int4("failures", s.failures))
            .collect::<Result<Vec<_>, _>>()?;
        exec(
            tx,
            "INSERT INTO otp_secrets (id, sealed, algorithm, digits, period, last_step, failures,
                                      locked_until, last_attempt, created_at)
             SELECT * FROM unnest($1::text[], $2::bytea[], $3::text[], $4::int4[], $5::int4[],
                                  $6::int8[], $7::int4[], $8::int8[], $9::int8[], $10::int8[])",
            &[
                &part.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
                &part.iter().map(|s| s.sealed.as_slice()).collect::<Vec<_>>(),
                &part
                    .iter()
                    .map(|s| s.params.algorithm.as_str())
                    .collect::<Vec<_>>(),
                &digits,
                &periods,
                &part.iter().map(|s| s.last_step).collect::<Vec<_>>(),
                &failures,
                &part.iter().map(|s| s.locked_until).collect::<Vec<_>>(),
                &part.iter().map(|s| s.last_attempt).collect::<Vec<_>>(),
                &part.iter().map(|s| s.created_at).collect::<Vec<_>>(),
            ],
        )
        .await?;
    }

    for part in d.mfa_methods.chunks(CHUNK) {
        let n = |what: &str, v: fn(&crate::store::MethodRecord) -> u64| {
            part.iter()
                .map(|m| int(what, v(m)))
                .collect::<Result<Vec<_>, _>>()
        };
        exec(
            tx,
            &format!(
                "INSERT INTO mfa_methods ({METHOD_COLS})
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[], $5::int4[],
                                      $6::int4[], $7::text[], $8::int4[], $9::int4[], $10::int4[],
                                      $11::int8[])"
            ),
            &[
                &part.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
                &part.iter().map(|m| m.name.as_deref()).collect::<Vec<_>>(),
                &part.iter().map(|m| m.issuer.as_str()).collect::<Vec<_>>(),
                &n("period", |m| m.params.period)?,
                &n("key_size", |m| m.key_size.into())?,
                &n("qr_size", |m| m.qr_size.into())?,
                &part
                    .iter()
                    .map(|m| m.params.algorithm.as_str())
                    .collect::<Vec<_>>(),
                &n("digits", |m| m.params.digits.into())?,
                &n("skew", |m| m.skew.into())?,
                &n("max_validation_attempts", |m| {
                    m.max_validation_attempts.into()
                })?,
                &part.iter().map(|m| m.created_at).collect::<Vec<_>>(),
            ],
        )
        .await?;
    }

    for part in d.mfa_secrets.chunks(CHUNK) {
        exec(
            tx,
            "INSERT INTO mfa_secrets (method_id, entity_id, secret_id, created_at)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[])",
            &[
                &part
                    .iter()
                    .map(|m| m.method_id.as_str())
                    .collect::<Vec<_>>(),
                &part
                    .iter()
                    .map(|m| m.entity_id.as_str())
                    .collect::<Vec<_>>(),
                &part
                    .iter()
                    .map(|m| m.secret_id.as_str())
                    .collect::<Vec<_>>(),
                &part.iter().map(|m| m.created_at).collect::<Vec<_>>(),
            ],
        )
        .await?;
    }

    for part in d.agent_secrets.chunks(CHUNK) {
        exec(
            tx,
            "INSERT INTO agent_secrets (id, entity_id, label, issuer, created_at)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[])",
            &[
                &part.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
                &part
                    .iter()
                    .map(|a| a.entity_id.as_str())
                    .collect::<Vec<_>>(),
                &part.iter().map(|a| a.label.as_str()).collect::<Vec<_>>(),
                &part.iter().map(|a| a.issuer.as_deref()).collect::<Vec<_>>(),
                &part.iter().map(|a| a.created_at).collect::<Vec<_>>(),
            ],
        )
        .await?;
    }

    // Each device's seq is its place in the dump (1, 2, ...): the order it was made in.
    let mut placed: i64 = 0;
    for part in d.user_devices.chunks(CHUNK) {
        exec(
            tx,
            "INSERT INTO user_devices (entity_id, name, secret_id, active, created_at,
                                       activated_at, last_used_at, seq)
             SELECT e, n, s, a, c, ac, lu, o + $8
             FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[], $5::int8[], $6::int8[],
                         $7::int8[]) WITH ORDINALITY AS u(e, n, s, a, c, ac, lu, o)",
            &[
                &part
                    .iter()
                    .map(|u| u.entity_id.as_str())
                    .collect::<Vec<_>>(),
                &part.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(),
                &part
                    .iter()
                    .map(|u| u.secret_id.as_str())
                    .collect::<Vec<_>>(),
                &part.iter().map(|u| u.active).collect::<Vec<_>>(),
                &part.iter().map(|u| u.created_at).collect::<Vec<_>>(),
                &part.iter().map(|u| u.activated_at).collect::<Vec<_>>(),
                &part.iter().map(|u| u.last_used_at).collect::<Vec<_>>(),
                &placed,
            ],
        )
        .await?;
        placed += part.len() as i64;
    }
    if placed > 0 {
        // Devices made from now on come after every device moved here.
        exec(
            tx,
            "SELECT setval(pg_get_serial_sequence('user_devices', 'seq'), $1)",
            &[&placed],
        )
        .await?;
    }

    for part in d.user_locks.chunks(CHUNK) {
        let failures = part
            .iter()
            .map(|l| int4("failures", l.failures))
            .collect::<Result<Vec<_>, _>>()?;
        exec(
            tx,
            "INSERT INTO user_locks (entity_id, failures, locked_until)
             SELECT * FROM unnest($1::text[], $2::int4[], $3::int8[])",
            &[
                &part
                    .iter()
                    .map(|l| l.entity_id.as_str())
                    .collect::<Vec<_>>(),
                &failures,
                &part.iter().map(|l| l.locked_until).collect::<Vec<_>>(),
            ],
        )
        .await?;
    }

    for part in d.recovery_codes.chunks(CHUNK) {
        exec(
            tx,
            "INSERT INTO recovery_codes (entity_id, selector, hash, created_at, spent_at)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[])",
            &[
                &part
                    .iter()
                    .map(|r| r.entity_id.as_str())
                    .collect::<Vec<_>>(),
                &part.iter().map(|r| r.selector.as_str()).collect::<Vec<_>>(),
                &part.iter().map(|r| r.hash.as_str()).collect::<Vec<_>>(),
                &part.iter().map(|r| r.created_at).collect::<Vec<_>>(),
                &part.iter().map(|r| r.spent_at).collect::<Vec<_>>(),
            ],
        )
        .await?;
    }

    for part in d.temp_tokens.chunks(CHUNK) {
        exec(
            tx,
            "INSERT INTO temp_tokens (hash, entity_id, created_at, expires_at, used_at)
             SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::int8[])",
            &[
                &part.iter().map(|t| t.hash.as_str()).collect::<Vec<_>>(),
                &part
                    .iter()
                    .map(|t| t.entity_id.as_str())
                    .collect::<Vec<_>>(),
                &part.iter().map(|t| t.created_at).collect::<Vec<_>>(),
                &part.iter().map(|t| t.expires_at).collect::<Vec<_>>(),
                &part.iter().map(|t| t.used_at).collect::<Vec<_>>(),
            ],
        )
        .await?;
    }

    for part in d.engine_keys.chunks(CHUNK) {
        let skews = part
            .iter()
            .map(|k| int4("skew", k.skew))
            .collect::<Result<Vec<_>, _>>()?;
        exec(
            tx,
            "INSERT INTO engine_keys (mount, name, secret_id, issuer, account_name, skew,
                                      created_at)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::int4[], $7::int8[])",
            &[
                &part.iter().map(|k| k.mount.as_str()).collect::<Vec<_>>(),
                &part.iter().map(|k| k.name.as_str()).collect::<Vec<_>>(),
                &part
                    .iter()
                    .map(|k| k.secret_id.as_str())
                    .collect::<Vec<_>>(),
                &part.iter().map(|k| k.issuer.as_str()).collect::<Vec<_>>(),
                &part
                    .iter()
                    .map(|k| k.account_name.as_str())
                    .collect::<Vec<_>>(),
                &skews,
                &part.iter().map(|k| k.created_at).collect::<Vec<_>>(),
            ],
        )
        .await?;
    }

    for part in d.engine_tried_codes.chunks(CHUNK) {
        exec(
            tx,
            "INSERT INTO engine_tried_codes (secret_id, code, expires_at)
             SELECT * FROM unnest($1::text[], $2::text[], $3::int8[])",
            &[
                &part
                    .iter()
                    .map(|t| t.secret_id.as_str())
                    .collect::<Vec<_>>(),
                &part.iter().map(|t| t.code.as_str()).collect::<Vec<_>>(),
                &part.iter().map(|t| t.expires_at).collect::<Vec<_>>(),
            ],
        )
        .await?;
    }
    Ok(())
}

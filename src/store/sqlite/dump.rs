//! Every row out, and every row in ([`MigrateStore`]): what `totpd migrate` reads from a
//! SQLite database to move it to another backend, and what fills an empty SQLite store
//! from another (the other way round, and the tests' round trip).
//!
//! The dump is one read transaction on a read connection: every table as of one moment.
//! The load is one write operation of the single writer, so one transaction (its
//! savepoint rolled back whole on any error) that no other write can interleave with:
//! the emptiness check and the inserts see the same database. Sealed values are stored
//! as they come: their associated data names the row id, which is kept.

use async_trait::async_trait;
use rusqlite::{params, Connection};

use super::mfa::{insert_method, MethodRow, METHOD_COLS};
use super::otp_secrets::params_of_row;
use super::{token_row, SqliteStore};
use crate::store::{
    not_empty, AgentSecretRow, EngineKeyRow, MetaRow, MfaSecretRow, MigrateStore, PolicyRow,
    PolicyTokenRecord, RecoveryCodeRow, SealedSecretRow, StoreDump, StoreError, TempTokenRow,
    TriedCodeRow, UserDeviceRow, UserLockRow, META_KEY_CHECK,
};

/// Every table of the schema, and the rows of it that make it "not empty" (an SQL
/// condition): all of them, but the key check of `meta`.
const TABLES: &[(&str, &str)] = &[
    ("agent_secrets", "1"),
    ("engine_keys", "1"),
    ("engine_tried_codes", "1"),
    ("meta", "key <> 'key_check'"),
    ("mfa_methods", "1"),
    ("mfa_secrets", "1"),
    ("otp_secrets", "1"),
    ("policies", "1"),
    ("policy_tokens", "1"),
    ("recovery_codes", "1"),
    ("temp_tokens", "1"),
    ("tokens", "1"),
    ("user_devices", "1"),
    ("user_locks", "1"),
];

#[async_trait]
impl MigrateStore for SqliteStore {
    async fn dump_all(&self) -> Result<StoreDump, StoreError> {
        self.read(|c| {
            // One read transaction: every table as of one moment.
            let tx = c.unchecked_transaction()?;
            let d = dump(&tx)?;
            tx.commit()?;
            Ok(d)
        })
        .await
    }

    async fn load_all(&self, d: &StoreDump) -> Result<(), StoreError> {
        let d = d.clone();
        self.auth_write(move |c| load(c, &d)).await
    }
}

/// The rows `sql` selects, each made by `f`.
fn all<T>(
    c: &Connection,
    sql: &str,
    f: impl FnMut(&rusqlite::Row) -> rusqlite::Result<T>,
) -> Result<Vec<T>, StoreError> {
    Ok(c.prepare(sql)?
        .query_map([], f)?
        .collect::<Result<Vec<_>, _>>()?)
}

type RawSecret = (
    String,
    Vec<u8>,
    String,
    i64,
    i64,
    Option<i64>,
    i64,
    Option<i64>,
    Option<i64>,
    i64,
);

fn dump(c: &Connection) -> Result<StoreDump, StoreError> {
    let meta = all(
        c,
        &format!("SELECT key, value FROM meta WHERE key <> '{META_KEY_CHECK}' ORDER BY key"),
        |r| {
            Ok(MetaRow {
                key: r.get(0)?,
                value: r.get(1)?,
            })
        },
    )?;
    let policies = all(
        c,
        "SELECT name, document, updated_at FROM policies ORDER BY name",
        |r| {
            Ok(PolicyRow {
                name: r.get(0)?,
                document: r.get(1)?,
                updated_at: r.get(2)?,
            })
        },
    )?;
    let tokens = all(
        c,
        "SELECT hash, accessor, entity_id, display_name, policies, created_at, expires_at, parent,
                renewable, creation_ttl, explicit_max_ttl, last_renewal
         FROM tokens ORDER BY hash",
        token_row,
    )?
    .into_iter()
    .map(|(mut t, policies)| {
        t.policies = serde_json::from_str(&policies)
            .map_err(|e| StoreError::Corrupt(format!("token {}: policies: {e}", t.accessor)))?;
        Ok(t)
    })
    .collect::<Result<Vec<_>, StoreError>>()?;
    let policy_tokens = all(
        c,
        "SELECT hash, prefix, mount, policy, created_at, expires_at, spent_at
         FROM policy_tokens ORDER BY hash",
        |r| {
            Ok(PolicyTokenRecord {
                hash: r.get(0)?,
                prefix: r.get(1)?,
                mount: r.get(2)?,
                policy: r.get(3)?,
                created_at: r.get(4)?,
                expires_at: r.get(5)?,
                spent_at: r.get(6)?,
            })
        },
    )?;
    let otp_secrets = all(
        c,
        "SELECT id, sealed, algorithm, digits, period, last_step, failures, locked_until,
                last_attempt, created_at
         FROM otp_secrets ORDER BY id",
        |r| -> rusqlite::Result<RawSecret> {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
                r.get(9)?,
            ))
        },
    )?
    .into_iter()
    .map(
        |(
            id,
            sealed,
            alg,
            digits,
            period,
            last_step,
            failures,
            locked_until,
            last_attempt,
            created_at,
        )| {
            Ok(SealedSecretRow {
                params: params_of_row("otp_secrets", &id, &alg, digits, period)?,
                id,
                sealed,
                last_step,
                failures,
                locked_until,
                last_attempt,
                created_at,
            })
        },
    )
    .collect::<Result<Vec<_>, StoreError>>()?;
    let mfa_methods = all(
        c,
        &format!("SELECT {METHOD_COLS} FROM mfa_methods ORDER BY id"),
        MethodRow::read,
    )?
    .into_iter()
    .map(MethodRow::check)
    .collect::<Result<Vec<_>, _>>()?;
    let mfa_secrets = all(
        c,
        "SELECT method_id, entity_id, secret_id, created_at FROM mfa_secrets
         ORDER BY method_id, entity_id",
        |r| {
            Ok(MfaSecretRow {
                method_id: r.get(0)?,
                entity_id: r.get(1)?,
                secret_id: r.get(2)?,
                created_at: r.get(3)?,
            })
        },
    )?;
    let agent_secrets = all(
        c,
        "SELECT id, entity_id, label, issuer, created_at FROM agent_secrets ORDER BY id",
        |r| {
            Ok(AgentSecretRow {
                id: r.get(0)?,
                entity_id: r.get(1)?,
                label: r.get(2)?,
                issuer: r.get(3)?,
                created_at: r.get(4)?,
            })
        },
    )?;
    // In the order they were made: the rowid, which orders a user's devices made in
    // one second.
    let user_devices = all(
        c,
        "SELECT entity_id, name, secret_id, active, created_at, activated_at, last_used_at
         FROM user_devices ORDER BY rowid",
        |r| {
            Ok(UserDeviceRow {
                entity_id: r.get(0)?,
                name: r.get(1)?,
                secret_id: r.get(2)?,
                active: r.get(3)?,
                created_at: r.get(4)?,
                activated_at: r.get(5)?,
                last_used_at: r.get(6)?,
            })
        },
    )?;
    let user_locks = all(
        c,
        "SELECT entity_id, failures, locked_until FROM user_locks ORDER BY entity_id",
        |r| {
            Ok(UserLockRow {
                entity_id: r.get(0)?,
                failures: r.get(1)?,
                locked_until: r.get(2)?,
            })
        },
    )?;
    let recovery_codes = all(
        c,
        "SELECT entity_id, selector, hash, created_at, spent_at FROM recovery_codes
         ORDER BY entity_id, selector",
        |r| {
            Ok(RecoveryCodeRow {
                entity_id: r.get(0)?,
                selector: r.get(1)?,
                hash: r.get(2)?,
                created_at: r.get(3)?,
                spent_at: r.get(4)?,
            })
        },
    )?;
    let temp_tokens = all(
        c,
        "SELECT hash, entity_id, created_at, expires_at, used_at FROM temp_tokens ORDER BY hash",
        |r| {
            Ok(TempTokenRow {
                hash: r.get(0)?,
                entity_id: r.get(1)?,
                created_at: r.get(2)?,
                expires_at: r.get(3)?,
                used_at: r.get(4)?,
            })
        },
    )?;
    let engine_keys = all(
        c,
        "SELECT mount, name, secret_id, issuer, account_name, skew, created_at FROM engine_keys
         ORDER BY mount, name",
        |r| {
            Ok(EngineKeyRow {
                mount: r.get(0)?,
                name: r.get(1)?,
                secret_id: r.get(2)?,
                issuer: r.get(3)?,
                account_name: r.get(4)?,
                skew: r.get(5)?,
                created_at: r.get(6)?,
            })
        },
    )?;
    let engine_tried_codes = all(
        c,
        "SELECT secret_id, code, expires_at FROM engine_tried_codes ORDER BY secret_id, code",
        |r| {
            Ok(TriedCodeRow {
                secret_id: r.get(0)?,
                code: r.get(1)?,
                expires_at: r.get(2)?,
            })
        },
    )?;
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

/// The tables holding rows (the key check aside), with how many.
fn held_rows(c: &Connection) -> Result<Vec<(String, u64)>, StoreError> {
    let mut held = Vec::new();
    for (table, rows) in TABLES {
        let n: i64 = c.query_row(
            &format!("SELECT count(*) FROM {table} WHERE {rows}"),
            [],
            |r| r.get(0),
        )?;
        if n > 0 {
            held.push((table.to_string(), n as u64));
        }
    }
    Ok(held)
}

/// Inside the writer's one operation: refuses a store holding rows, then inserts every
/// row of `d`, referenced rows before the rows referring to them.
fn load(c: &Connection, d: &StoreDump) -> Result<(), StoreError> {
    let held = held_rows(c)?;
    if !held.is_empty() {
        return Err(not_empty(&held));
    }
    let mut stmt = c.prepare("INSERT INTO meta (key, value) VALUES (?1, ?2)")?;
    for m in d.meta.iter().filter(|m| m.key != META_KEY_CHECK) {
        stmt.execute(params![m.key, m.value])?;
    }
    let mut stmt =
        c.prepare("INSERT INTO policies (name, document, updated_at) VALUES (?1, ?2, ?3)")?;
    for p in &d.policies {
        stmt.execute(params![p.name, p.document, p.updated_at])?;
    }
    let mut stmt = c.prepare(
        "INSERT INTO tokens (hash, accessor, entity_id, display_name, policies, created_at,
                             expires_at, parent, renewable, creation_ttl, explicit_max_ttl,
                             last_renewal)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?;
    for t in &d.tokens {
        let policies = serde_json::to_string(&t.policies)
            .map_err(|e| StoreError::Corrupt(format!("token policies: {e}")))?;
        stmt.execute(params![
            t.hash,
            t.accessor,
            t.entity_id,
            t.display_name,
            policies,
            t.created_at,
            t.expires_at,
            t.parent,
            t.renewable,
            t.creation_ttl,
            t.explicit_max_ttl,
            t.last_renewal
        ])?;
    }
    let mut stmt = c.prepare(
        "INSERT INTO policy_tokens (hash, prefix, mount, policy, created_at, expires_at, spent_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for t in &d.policy_tokens {
        stmt.execute(params![
            t.hash,
            t.prefix,
            t.mount,
            t.policy,
            t.created_at,
            t.expires_at,
            t.spent_at
        ])?;
    }
    let mut stmt = c.prepare(
        "INSERT INTO otp_secrets (id, sealed, algorithm, digits, period, last_step, failures,
                                  locked_until, last_attempt, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    for s in &d.otp_secrets {
        stmt.execute(params![
            s.id,
            s.sealed,
            s.params.algorithm.as_str(),
            s.params.digits,
            s.params.period,
            s.last_step,
            s.failures,
            s.locked_until,
            s.last_attempt,
            s.created_at
        ])?;
    }
    for m in &d.mfa_methods {
        insert_method(c, m)?;
    }
    let mut stmt = c.prepare(
        "INSERT INTO mfa_secrets (method_id, entity_id, secret_id, created_at)
         VALUES (?1, ?2, ?3, ?4)",
    )?;
    for m in &d.mfa_secrets {
        stmt.execute(params![m.method_id, m.entity_id, m.secret_id, m.created_at])?;
    }
    let mut stmt = c.prepare(
        "INSERT INTO agent_secrets (id, entity_id, label, issuer, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for a in &d.agent_secrets {
        stmt.execute(params![a.id, a.entity_id, a.label, a.issuer, a.created_at])?;
    }
    // In the dump's order, so the rowids keep the order the devices were made in.
    let mut stmt = c.prepare(
        "INSERT INTO user_devices (entity_id, name, secret_id, active, created_at, activated_at,
                                   last_used_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for u in &d.user_devices {
        stmt.execute(params![
            u.entity_id,
            u.name,
            u.secret_id,
            u.active,
            u.created_at,
            u.activated_at,
            u.last_used_at
        ])?;
    }
    let mut stmt = c.prepare(
        "INSERT INTO user_locks (entity_id, failures, locked_until) VALUES (?1, ?2, ?3)",
    )?;
    for l in &d.user_locks {
        stmt.execute(params![l.entity_id, l.failures, l.locked_until])?;
    }
    let mut stmt = c.prepare(
        "INSERT INTO recovery_codes (entity_id, selector, hash, created_at, spent_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for r in &d.recovery_codes {
        stmt.execute(params![
            r.entity_id,
            r.selector,
            r.hash,
            r.created_at,
            r.spent_at
        ])?;
    }
    let mut stmt = c.prepare(
        "INSERT INTO temp_tokens (hash, entity_id, created_at, expires_at, used_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for t in &d.temp_tokens {
        stmt.execute(params![
            t.hash,
            t.entity_id,
            t.created_at,
            t.expires_at,
            t.used_at
        ])?;
    }
    let mut stmt = c.prepare(
        "INSERT INTO engine_keys (mount, name, secret_id, issuer, account_name, skew, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for k in &d.engine_keys {
        stmt.execute(params![
            k.mount,
            k.name,
            k.secret_id,
            k.issuer,
            k.account_name,
            k.skew,
            k.created_at
        ])?;
    }
    let mut stmt = c.prepare(
        "INSERT INTO engine_tried_codes (secret_id, code, expires_at) VALUES (?1, ?2, ?3)",
    )?;
    for t in &d.engine_tried_codes {
        stmt.execute(params![t.secret_id, t.code, t.expires_at])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table list is the schema's: a table added by a migration must be dumped and
    /// loaded too.
    #[test]
    fn every_table_of_the_schema_is_listed() {
        let mut c = Connection::open_in_memory().unwrap();
        super::super::migrate::migrate(&mut c).unwrap();
        let tables: Vec<String> = c
            .prepare(
                "SELECT name FROM sqlite_master
                 WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let listed: Vec<String> = TABLES.iter().map(|(t, _)| t.to_string()).collect();
        assert_eq!(tables, listed);
        let dumped: Vec<String> = StoreDump::default()
            .counts()
            .iter()
            .map(|(t, _)| t.to_string())
            .collect();
        assert_eq!(tables, dumped);
    }
}

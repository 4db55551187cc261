//! `migrations/postgres/*.sql` as forward migrations, applied at open under an advisory
//! lock, so that daemons starting together on one database migrate it once.
//!
//! `totpd_schema_version` holds one row per migration applied. Everything a start does
//! to the schema (creating the version table, applying what is missing, the key check)
//! runs in one transaction that first takes `pg_advisory_xact_lock(MIGRATION_LOCK)`:
//! a second daemon waits at that lock until the first commits, then finds the schema
//! current and the key check written. PostgreSQL's DDL is transactional, so a start that
//! fails half way leaves nothing behind.

use crate::store::StoreError;

/// The advisory lock key every totpd start takes ("totpd" in ASCII). Advisory locks are
/// per database, so daemons on other databases of one cluster never wait for it.
pub(super) const MIGRATION_LOCK: i64 = i64::from_be_bytes(*b"\0\0\0totpd");

/// The migrations in order: (version, SQL). Add a file and a line here; never edit a
/// file that has shipped.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        include_str!("../../../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        include_str!("../../../migrations/postgres/0002_user_device_order.sql"),
    ),
    (
        3,
        include_str!("../../../migrations/postgres/0003_engine_keys.sql"),
    ),
];

/// The newest schema version this build knows.
pub fn schema_version() -> i32 {
    MIGRATIONS.last().map(|m| m.0).unwrap_or(0)
}

/// Inside the caller's transaction (which holds [`MIGRATION_LOCK`]): applies the
/// migrations the database has not seen. Returns true when it had none before (a new
/// database). A database newer than this build is refused with `TooNew`.
pub(super) async fn migrate(tx: &deadpool_postgres::Transaction<'_>) -> Result<bool, StoreError> {
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS totpd_schema_version (
             version    INTEGER PRIMARY KEY,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let current: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM totpd_schema_version",
            &[],
        )
        .await?
        .try_get(0)?;
    let known = schema_version();
    if current > known {
        return Err(StoreError::TooNew {
            found: current.into(),
            known: known.into(),
        });
    }
    for (version, sql) in MIGRATIONS {
        if *version <= current {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO totpd_schema_version (version) VALUES ($1)",
            &[version],
        )
        .await?;
        tracing::info!(version, "database migrated");
    }
    Ok(current == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order() {
        assert!(!MIGRATIONS.is_empty());
        for (i, (v, sql)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*v, i as i32 + 1, "migration numbers must be 1, 2, 3, ...");
            assert!(sql.contains("CREATE") || sql.contains("ALTER"));
        }
    }

    /// Every file in migrations/postgres is listed, under its number.
    #[test]
    fn every_migration_file_is_listed() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/postgres");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        assert_eq!(files.len(), MIGRATIONS.len(), "{files:?}");
        for (f, (v, sql)) in files.iter().zip(MIGRATIONS) {
            assert!(
                f.starts_with(&format!("{v:04}_")),
                "{f} is not migration {v}"
            );
            let on_disk = std::fs::read_to_string(dir.join(f)).unwrap();
            assert_eq!(&on_disk, sql, "{f} is not the text listed as migration {v}");
        }
    }
}

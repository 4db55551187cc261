//! `schema.sql` as forward migrations: each `-- migrate: N` section runs once, in order,
//! and `PRAGMA user_version` records the last one applied.

use rusqlite::Connection;

use crate::store::StoreError;

/// The schema, as forward migrations separated by `-- migrate: N` lines.
const SCHEMA: &str = include_str!("../../../schema.sql");

/// The schema's migrations in order: (version, SQL).
fn migrations() -> Vec<(i64, &'static str)> {
    let mut out = Vec::new();
    let mut rest = SCHEMA;
    // Only at the start of a line, so prose that mentions the marker is not one.
    const MARK: &str = "\n-- migrate: ";
    while let Some(pos) = rest.find(MARK) {
        let after = &rest[pos + MARK.len()..];
        let line_end = after.find('\n').unwrap_or(after.len());
        let version = after[..line_end].trim().parse::<i64>().unwrap_or(0);
        let body_start = &after[line_end..];
        let body_end = body_start.find(MARK).unwrap_or(body_start.len());
        out.push((version, &body_start[..body_end]));
        rest = &body_start[body_end..];
    }
    out
}

/// The newest schema version this build knows.
pub fn schema_version() -> i64 {
    migrations().last().map(|m| m.0).unwrap_or(0)
}

/// Applies the migrations the database has not seen, each in its own transaction.
/// Returns true when the database was empty (version 0) before.
pub(super) fn migrate(conn: &mut Connection) -> Result<bool, StoreError> {
    migrate_to(conn, i64::MAX)
}

pub(super) fn migrate_to(conn: &mut Connection, target: i64) -> Result<bool, StoreError> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let known = schema_version();
    if current > known {
        return Err(StoreError::TooNew {
            found: current,
            known,
        });
    }
    for (version, sql) in migrations() {
        if version <= current || version > target {
            continue;
        }
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.execute_batch(&format!("PRAGMA user_version = {version}"))?;
        tx.commit()?;
        tracing::info!(version, "database migrated");
    }
    Ok(current == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order() {
        let m = migrations();
        assert!(!m.is_empty());
        for (i, (v, sql)) in m.iter().enumerate() {
            assert_eq!(*v, i as i64 + 1, "migration numbers must be 1, 2, 3, ...");
            assert!(sql.contains("CREATE") || sql.contains("ALTER"));
        }
    }
}

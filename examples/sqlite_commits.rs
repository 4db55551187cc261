//! The SQLite baseline for `bench/run`: how many durable commits per second this
//! machine's disk allows with totpd's settings (rusqlite, bundled SQLite, WAL,
//! `synchronous = FULL`: see `configure` in src/store/sqlite/mod.rs), inserting one row
//! per transaction, and how many rows per second when `BATCH` rows share a transaction.
//!
//! Usage: cargo run --release --example sqlite_commits -- [SECS] [DIR] [BATCH]
//!   SECS   seconds per phase (default 5)
//!   DIR    where to make the temporary database (default: the system's temp dir); put
//!          it on the same file system as totpd's data directory
//!   BATCH  rows per transaction in the batched phase (default 64)
//!
//! Prints machine-readable lines:
//!   sqlite_one_row_per_commit <rows_per_s>
//!   sqlite_<BATCH>_rows_per_commit <rows_per_s>
//!   sqlite_<BATCH>_rows_per_commit_commits <commits_per_s>

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection};

fn open(path: &std::path::Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    assert_eq!(mode.to_ascii_lowercase(), "wal", "journal_mode");
    conn.execute_batch(
        "PRAGMA foreign_keys = ON;
         PRAGMA synchronous = FULL;
         CREATE TABLE IF NOT EXISTS attempts (
             id INTEGER PRIMARY KEY,
             secret_id TEXT NOT NULL,
             code TEXT NOT NULL,
             at INTEGER NOT NULL,
             payload BLOB NOT NULL
         );",
    )?;
    let sync: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
    assert_eq!(sync, 2, "synchronous = FULL");
    Ok(conn)
}

/// Inserts rows, `batch` per transaction, for `secs`; returns (rows, commits, elapsed).
fn run(conn: &Connection, batch: usize, secs: f64) -> rusqlite::Result<(u64, u64, f64)> {
    let payload = [7u8; 48];
    let start = Instant::now();
    let deadline = Duration::from_secs_f64(secs);
    let (mut rows, mut commits) = (0u64, 0u64);
    while start.elapsed() < deadline {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        {
            let mut stmt = conn.prepare_cached(
                "INSERT INTO attempts (secret_id, code, at, payload) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for _ in 0..batch {
                let code = format!("{:06}", rows % 1_000_000);
                stmt.execute(params!["0f8e2c1a-bench", code, rows as i64, &payload[..]])?;
                rows += 1;
            }
        }
        conn.execute_batch("COMMIT")?;
        commits += 1;
    }
    Ok((rows, commits, start.elapsed().as_secs_f64()))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let secs: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let dir: Option<PathBuf> = args.next().map(PathBuf::from);
    let batch: usize = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64)
        .max(1);
    let tmp = match &dir {
        Some(d) => tempfile::Builder::new()
            .prefix("sqlite-commits")
            .tempdir_in(d),
        None => tempfile::Builder::new().prefix("sqlite-commits").tempdir(),
    }
    .expect("temp dir");
    let conn = open(&tmp.path().join("bench.db")).expect("open the database");

    let (rows, commits, t) = run(&conn, 1, secs).expect("one row per commit");
    debug_assert_eq!(rows, commits);
    println!("sqlite_one_row_per_commit {:.0}", rows as f64 / t);

    let (rows, commits, t) = run(&conn, batch, secs).expect("batched");
    println!("sqlite_{batch}_rows_per_commit {:.0}", rows as f64 / t);
    println!(
        "sqlite_{batch}_rows_per_commit_commits {:.0}",
        commits as f64 / t
    );
}

//! `totpd migrate --from sqlite:PATH --to postgres://...`: a stopped daemon's SQLite
//! database, copied whole into an empty PostgreSQL database, and verified.
//!
//! Offline: the SQLite store is opened here, which takes its lock (`<db>.lock`) for the
//! whole run, so the command is refused while a daemon holds the database, and no
//! daemon starts on it half way. It is opened with the key ring its daemon would load
//! (`--key-file`, the config file's `key_file`, else `totpd.key` beside the database;
//! a systemd credential `totpd.key` wins, as for the daemon): the open checks the key
//! against the database, and every sealed secret is opened here before anything is
//! written, so a wrong key is refused with nothing written.
//!
//! The copy is the stores' own ([`MigrateStore`]): every row of every table (tokens,
//! policies as written, Nitride tokens, MFA methods and enrolments, agent secrets, user
//! devices, locks, recovery codes and temp_tokens, TOTP engine keys and the codes tried
//! at them, each secret's replay and lockout state, `last_backup`), read in one
//! transaction and inserted in one transaction into a database holding no row; a
//! database holding rows is refused. Sealed values are copied as they are (each is
//! bound to its row id, which is kept), so the target opens with the same key ring; its
//! key check is its own, made for that ring.
//!
//! Then it is verified: rows per table on both sides, every row read back equal, and
//! for every secret the code at one fixed time, from the source's opened secret and
//! from the target's. Any difference exits 1. The URL's password never shows: the URL
//! is printed as [`redact_url`] shows it, and any message from the database with the
//! password in it has it replaced.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;
use totpd::api::fields::rfc3339;
use totpd::client::ClientError;
use totpd::config::{redact_url, ServeArgs};
use totpd::store::postgres::{PgOptions, PgStore};
use totpd::store::sqlite::{SqliteOptions, SqliteStore};
use totpd::store::{MigrateStore, OpsStore, Sealer, Store, StoreDump, StoreError};

use crate::Printed;

#[derive(clap::Args)]
pub struct MigrateArgs {
    /// The SQLite database to copy: `sqlite:PATH` (or PATH). Its daemon must be stopped.
    #[arg(long, value_name = "sqlite:PATH")]
    pub from: String,
    /// The PostgreSQL database to copy into, which must hold no row yet:
    /// `postgres://user@host/db` (as `serve --database` takes it). TOTPD_MIGRATE_TO keeps
    /// a password out of the process list.
    #[arg(
        long,
        env = "TOTPD_MIGRATE_TO",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub to: String,
    /// TOML file the daemon runs with (for `key_file`, `key_group_readable`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The key ring the SQLite database was sealed with, which the PostgreSQL daemons
    /// will load too. $CREDENTIALS_DIRECTORY/totpd.key (a systemd credential) wins over
    /// it. [default: the config file's key_file, else totpd.key beside the database]
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Accept a key file its group may read (as `serve --key-group-readable`).
    #[arg(long)]
    pub key_group_readable: bool,
    /// Print the verification as one JSON object: tables with both counts, the rows
    /// compared, the codes compared, and `ok`.
    #[arg(long)]
    pub json: bool,
}

/// The URL with its password hidden, and anything said about it.
struct Target {
    url: String,
    shown: String,
    password: Option<String>,
}

impl Target {
    fn new(url: &str) -> Result<Target, ClientError> {
        let url = url.trim().to_string();
        let shown = redact_url(&url);
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(ClientError::Usage(format!(
                "--to {shown}: give a PostgreSQL URL, postgres://user@host/database"
            )));
        }
        let password = url::Url::parse(&url)
            .ok()
            .and_then(|u| u.password().map(str::to_string))
            .filter(|p| !p.is_empty());
        Ok(Target {
            url,
            shown,
            password,
        })
    }

    /// `text` with the password, as written in the URL and decoded, replaced by `***`.
    fn hide(&self, text: &str) -> String {
        let Some(p) = &self.password else {
            return text.to_string();
        };
        let mut out = text.replace(p.as_str(), "***");
        if let Ok(decoded) = percent_encoding::percent_decode_str(p).decode_utf8() {
            if !decoded.is_empty() {
                out = out.replace(decoded.as_ref(), "***");
            }
        }
        out
    }
}

/// The SQLite path of `--from`.
fn source_path(from: &str) -> Result<PathBuf, ClientError> {
    let from = from.trim();
    if from.starts_with("postgres://") || from.starts_with("postgresql://") {
        return Err(ClientError::Usage(
            "--from takes the SQLite database (sqlite:PATH); migrating out of PostgreSQL is \
             pg_dump's work"
                .into(),
        ));
    }
    let path = from.strip_prefix("sqlite:").unwrap_or(from);
    let path = path.strip_prefix("//").unwrap_or(path);
    if path.is_empty() {
        return Err(ClientError::Usage("--from: give sqlite:PATH".into()));
    }
    let path = PathBuf::from(path);
    if !path.is_file() {
        return Err(ClientError::Usage(format!(
            "--from: no SQLite database at {}",
            path.display()
        )));
    }
    Ok(path)
}

/// Where the source's daemon would load its keys (see the module's doc).
fn key_source(args: &MigrateArgs, db: &Path) -> Result<totpd::store::KeySource, ClientError> {
    let dir = match db.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let cfg = ServeArgs {
        config: args.config.clone(),
        data_dir: Some(dir),
        db: Some(db.to_path_buf()),
        key_file: args.key_file.clone(),
        key_group_readable: args.key_group_readable,
        ..Default::default()
    }
    .resolve(None)
    .map_err(ClientError::Usage)?;
    let keys = cfg.key_source();
    if !keys.exists() {
        return Err(ClientError::Usage(format!(
            "no key ring at {}: give the key the SQLite database was sealed with (--key-file, \
             or the systemd credential totpd.key); the PostgreSQL daemons load the same one",
            keys.origin().display()
        )));
    }
    Ok(keys)
}

/// A table's rows on each side (`None`: the side has no such table).
type Counted = (String, Option<u64>, Option<u64>);

/// What was compared after the copy.
struct Verified {
    /// (table, source rows, target rows), by table name.
    tables: Vec<Counted>,
    /// Tables whose rows read back differ from the source's.
    differing: Vec<&'static str>,
    /// The fixed time the codes were computed at.
    at: i64,
    secrets: usize,
    /// Secrets whose code differs (or that the target lacks), by id.
    code_mismatches: Vec<String>,
}

impl Verified {
    fn counts_equal(&self) -> bool {
        self.tables.iter().all(|(_, s, t)| s == t)
    }

    fn ok(&self) -> bool {
        self.counts_equal() && self.differing.is_empty() && self.code_mismatches.is_empty()
    }
}

pub async fn migrate(args: MigrateArgs, quiet: bool) -> Result<Printed, ClientError> {
    let target = Target::new(&args.to)?;
    let pg_opts = PgOptions::new(&target.url).map_err(|e| {
        ClientError::Usage(format!(
            "--to {}: {}",
            target.shown,
            target.hide(&e.to_string())
        ))
    })?;
    let db = source_path(&args.from)?;
    let keys = key_source(&args, &db)?;
    let key_origin = keys.origin();
    let from_shown = format!("sqlite:{}", db.display());
    let nothing = "nothing was written";

    // The source, locked for the whole run and checked against the key ring.
    let lock_file = PathBuf::from(format!("{}.lock", db.display()));
    let lock_was_there = lock_file.exists();
    let opts = SqliteOptions {
        readers: 2,
        ..SqliteOptions::new(&db)
    };
    let opened = tokio::task::spawn_blocking(move || SqliteStore::open_with_keys(&opts, &keys))
        .await
        .map_err(|e| ClientError::Request(e.to_string()))?;
    if !lock_was_there {
        owned_as_database(&lock_file, &db);
    }
    let (source, ring) = match opened {
        Ok((o, key)) => (o.store, key),
        Err(e) => {
            let why = match e {
                StoreError::Setup(m) if m.contains("in use") => {
                    format!("{m}: stop the daemon before migrating its database")
                }
                other => key_words(other, &key_origin, &from_shown),
            };
            return Ok(Printed::Refused(format!(
                "migrate refused: {why}; {nothing}"
            )));
        }
    };
    let sealer = ring.sealer();
    let outcome = run(
        &source,
        &sealer,
        &target,
        &pg_opts,
        &key_origin,
        &from_shown,
    )
    .await;
    let s = source.clone();
    let _ = tokio::task::spawn_blocking(move || s.close()).await;
    let verified = match outcome {
        Ok(v) => v,
        Err(refused) => return Ok(Printed::Refused(target.hide(&refused))),
    };

    let ok = verified.ok();
    let out = if args.json {
        report_json(&verified, &from_shown, &target.shown, &key_origin)
    } else if quiet && ok {
        String::new()
    } else {
        report(&verified, &from_shown, &target.shown)
    };
    if ok {
        if !quiet && !args.json {
            return Ok(Printed::Ok(format!(
                "{out}\nSuccess! Start the daemons with --database {} and the key ring in {}.",
                target.shown,
                key_origin.display()
            )));
        }
        return Ok(Printed::Ok(out));
    }
    if !out.is_empty() {
        println!("{out}");
    }
    Ok(Printed::Refused(format!(
        "the copy in {} does not match its source (see above): do not start daemons on it; \
         empty that database (drop and create it) and migrate again",
        target.shown
    )))
}

/// Run as root, a lock file made just now gets the database's owner, so the daemon's
/// user can still open it (should that daemon start again on the database).
fn owned_as_database(made: &Path, db: &Path) {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    if let Ok(m) = std::fs::metadata(db) {
        let _ = std::os::unix::fs::chown(made, Some(m.uid()), Some(m.gid()));
    }
}

/// A key that does not fit, in words an operator can act on; anything else as it is.
fn key_words(e: StoreError, key_origin: &Path, database: &str) -> String {
    match e {
        StoreError::WrongKey => format!(
            "the key ring in {} does not open {database}: it is not the key that database was sealed with",
            key_origin.display()
        ),
        StoreError::MissingKey(id) => format!(
            "{database} holds values sealed with key id {id}, which the key ring in {} does not hold",
            key_origin.display()
        ),
        StoreError::Unavailable => format!("{database} cannot be reached, or is overloaded"),
        other => format!("{database}: {other}"),
    }
}

/// The copy and its verification, the source open; a refusal as its message (which may
/// name the URL as given: the caller hides its password).
async fn run(
    source: &Arc<SqliteStore>,
    sealer: &Sealer,
    target: &Target,
    pg_opts: &PgOptions,
    key_origin: &Path,
    from_shown: &str,
) -> Result<Verified, String> {
    let nothing = "nothing was written";
    let refused = |why: String| format!("migrate refused: {why}; {nothing}");
    let dump = source
        .dump_all()
        .await
        .map_err(|e| refused(format!("cannot read {from_shown}: {e}")))?;

    // Every secret must open before anything is written; their codes, for comparing.
    let at = totpd::api::now();
    let mut codes = BTreeMap::new();
    for s in &dump.otp_secrets {
        let code = s.code_at(sealer, at).map_err(|e| {
            refused(format!(
                "secret {} of {from_shown}: {}",
                s.id,
                key_words(e, key_origin, from_shown)
            ))
        })?;
        codes.insert(s.id.clone(), code);
    }

    let dest = PgStore::open(pg_opts, sealer.clone())
        .await
        .map_err(|e| refused(key_words(e, key_origin, &target.shown)))?
        .store;
    let result = copy_and_verify(source, &dest, &dump, &codes, sealer, at, target).await;
    dest.close();
    result
}

async fn copy_and_verify(
    source: &Arc<SqliteStore>,
    dest: &Arc<PgStore>,
    dump: &StoreDump,
    codes: &BTreeMap<String, String>,
    sealer: &Sealer,
    at: i64,
    target: &Target,
) -> Result<Verified, String> {
    match dest.load_all(dump).await {
        Ok(()) => {}
        Err(StoreError::Setup(m)) => return Err(format!("migrate refused: {m}")),
        Err(StoreError::Unavailable) => {
            return Err(format!(
                "the copy into {} did not finish: the database went away or did not answer in \
                 time; the copy is one transaction, so the database holds none of it unless \
                 its commit had reached the server (then a new run says it is not empty)",
                target.shown
            ))
        }
        Err(e) => {
            return Err(format!(
                "the copy into {} failed and was rolled back, nothing was written: {e}",
                target.shown
            ))
        }
    }
    let after = "the copy is committed, but cannot be verified";
    let source_counts = source
        .count_rows()
        .await
        .map_err(|e| format!("{after}: counting the source's rows: {e}"))?;
    let target_counts = dest
        .count_rows()
        .await
        .map_err(|e| format!("{after}: counting the target's rows: {e}"))?;
    let mut tables: BTreeMap<String, (Option<u64>, Option<u64>)> = BTreeMap::new();
    for (t, n) in source_counts {
        tables.entry(t).or_default().0 = Some(n);
    }
    for (t, n) in target_counts {
        tables.entry(t).or_default().1 = Some(n);
    }
    let back = dest
        .dump_all()
        .await
        .map_err(|e| format!("{after}: reading it back: {e}"))?;
    let differing = dump.differing_tables(&back);
    let mut code_mismatches = Vec::new();
    let theirs: BTreeMap<&str, _> = back
        .otp_secrets
        .iter()
        .map(|s| (s.id.as_str(), s))
        .collect();
    for (id, code) in codes {
        let same = theirs
            .get(id.as_str())
            .and_then(|s| s.code_at(sealer, at).ok())
            .is_some_and(|c| &c == code);
        if !same {
            code_mismatches.push(id.clone());
        }
    }
    Ok(Verified {
        tables: tables.into_iter().map(|(t, (s, d))| (t, s, d)).collect(),
        differing,
        at,
        secrets: codes.len(),
        code_mismatches,
    })
}

fn report(v: &Verified, from: &str, to: &str) -> String {
    let n = |c: Option<u64>| c.map_or("-".to_string(), |n| n.to_string());
    let mut out = format!(
        "Copied {from} into {to} in one transaction.\n{:<16} {:>8} {:>8}",
        "TABLE", "SOURCE", "TARGET"
    );
    for (t, s, d) in &v.tables {
        let mark = if s != d { "  MISMATCH" } else { "" };
        out.push_str(&format!("\n{t:<16} {:>8} {:>8}{mark}", n(*s), n(*d)));
    }
    let total = |f: fn(&Counted) -> Option<u64>| v.tables.iter().filter_map(f).sum::<u64>();
    out.push_str(&format!(
        "\nRows: {} in the source, {} in the target (each side's own key check in meta); {}.",
        total(|t| t.1),
        total(|t| t.2),
        if v.counts_equal() {
            "every table's count is equal"
        } else {
            "COUNTS DIFFER"
        }
    ));
    if v.differing.is_empty() {
        out.push_str("\nEvery row read back from the target equals the source's.");
    } else {
        out.push_str(&format!(
            "\nRows read back from the target DIFFER in: {}.",
            v.differing.join(", ")
        ));
    }
    let matched = v.secrets - v.code_mismatches.len();
    out.push_str(&format!(
        "\nCodes at {}: {matched} of {} secrets give the same code from the source and the target.",
        rfc3339(v.at),
        v.secrets
    ));
    if !v.code_mismatches.is_empty() {
        out.push_str(&format!(
            "\nSecrets whose code DIFFERS: {}.",
            v.code_mismatches.join(", ")
        ));
    }
    out
}

fn report_json(v: &Verified, from: &str, to: &str, key_origin: &Path) -> String {
    let tables: Vec<_> = v
        .tables
        .iter()
        .map(|(t, s, d)| json!({"table": t, "source": s, "target": d, "equal": s == d}))
        .collect();
    json!({
        "from": from,
        "to": to,
        "key_ring": key_origin,
        "tables": tables,
        "counts_equal": v.counts_equal(),
        "rows_equal": v.differing.is_empty(),
        "differing_tables": v.differing,
        "codes": {
            "at": rfc3339(v.at),
            "at_utc": v.at,
            "secrets": v.secrets,
            "matched": v.secrets - v.code_mismatches.len(),
            "mismatched": v.code_mismatches,
        },
        "ok": v.ok(),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_shows() {
        let t = Target::new("postgres://totpd:s%40cret@db.example/totpd").unwrap();
        assert_eq!(t.shown, "postgres://totpd:***@db.example/totpd");
        assert_eq!(
            t.hide("password s@cret and s%40cret refused"),
            "password *** and *** refused"
        );
        let e = Target::new("mysql://u:hunter2@db/x").err().unwrap();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(source_path("postgres://u:p@h/d").is_err());
    }

    #[test]
    fn any_difference_is_a_mismatch_and_shown() {
        let good = || Verified {
            tables: vec![("otp_secrets".into(), Some(2), Some(2))],
            differing: Vec::new(),
            at: 1_700_000_000,
            secrets: 2,
            code_mismatches: Vec::new(),
        };
        assert!(good().ok());
        let text = report(&good(), "sqlite:a.db", "postgres://h/d");
        assert!(text.contains("2 of 2 secrets give the same code"), "{text}");
        assert!(
            !text.contains("MISMATCH") && !text.contains("DIFFER"),
            "{text}"
        );

        let mut counts = good();
        counts.tables.push(("tokens".into(), Some(3), Some(2)));
        assert!(!counts.ok());
        assert!(report(&counts, "a", "b").contains("tokens                  3        2  MISMATCH"));
        let mut rows = good();
        rows.differing.push("user_locks");
        assert!(!rows.ok());
        assert!(report(&rows, "a", "b").contains("DIFFER in: user_locks"));
        let mut codes = good();
        codes.code_mismatches.push("s-1".into());
        assert!(!codes.ok());
        let v: serde_json::Value =
            serde_json::from_str(&report_json(&codes, "a", "b", Path::new("k"))).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(v["codes"]["matched"], 1);
        assert_eq!(v["codes"]["mismatched"][0], "s-1");
    }
}

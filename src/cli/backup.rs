//! `totpd backup PATH` and `totpd restore PATH --data-dir DIR`.
//!
//! A backup asks the running daemon for a consistent copy (`GET /v1/sys/backup`, sudo
//! on `sys/backup`: root over the socket has it) and writes it here, because a daemon
//! under `ProtectSystem=strict` cannot write where the operator points. With
//! `--data-dir` it copies the database file itself instead, while no daemon runs.
//! Either way the copy is written 0600 under a temporary name beside PATH, synced,
//! checked (`integrity_check`), renamed to PATH and the directory synced: PATH is the
//! whole copy or nothing, whenever the backup stops.
//!
//! A restore refuses while a daemon holds the data directory; it checks the backup
//! against the key that directory's daemon would load before it replaces anything,
//! and keeps the database it replaces beside it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use http_body_util::BodyExt;
use serde_json::json;
use totpd::api::fields::rfc3339;
use totpd::client::{Client, ClientError};
use totpd::config::{ServeArgs, ServeConfig};
use totpd::store::sqlite;
use totpd::store::StoreError;

use super::PrivateFile;
use crate::Printed;

/// Where the daemon's files are, for work on them while it is stopped: the same
/// options `serve` takes for them, resolved the same way (flags over the config file
/// over defaults; a systemd credential in `$CREDENTIALS_DIRECTORY` wins over the key
/// file, as for the daemon).
#[derive(clap::Args)]
pub struct DataArgs {
    /// TOML file the daemon runs with (for `data_dir`, `db`, `key_file`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// SQLite database file. [default: <data-dir>/totpd.db]
    #[arg(long, value_name = "FILE")]
    pub db: Option<PathBuf>,
    /// The daemon's sealing key file. [default: <data-dir>/totpd.key]
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Accept a key file its group may read (as `serve --key-group-readable`).
    #[arg(long)]
    pub key_group_readable: bool,
}

impl DataArgs {
    fn resolve(&self, data_dir: &Path) -> Result<ServeConfig, ClientError> {
        ServeArgs {
            config: self.config.clone(),
            data_dir: Some(data_dir.to_path_buf()),
            db: self.db.clone(),
            key_file: self.key_file.clone(),
            key_group_readable: self.key_group_readable,
            ..Default::default()
        }
        .resolve(None)
        .map_err(ClientError::Usage)
    }
}

#[derive(clap::Args)]
pub struct BackupArgs {
    /// The file to write (replaced atomically if it exists).
    pub path: PathBuf,
    /// Copy the database in this data directory directly instead of asking the daemon:
    /// only while no daemon runs on it.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub data: DataArgs,
    /// Print what was written as JSON: path, bytes, taken_at.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct RestoreArgs {
    /// The backup file to restore (as `totpd backup` wrote it).
    pub path: PathBuf,
    /// The data directory of the daemon to restore into; that daemon must be stopped.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// Print what was done as JSON: db, replaced, schema_version.
    #[arg(long)]
    pub json: bool,
}

pub async fn backup(client: Client, args: BackupArgs, quiet: bool) -> Result<Printed, ClientError> {
    let dest = args.path.clone();
    let mut partial = PrivateFile::create(&dest)?;
    let taken = match &args.data_dir {
        Some(dir) => {
            let cfg = args.data.resolve(dir)?;
            match sqlite::backup_offline(&cfg.db, &partial.tmp) {
                Ok(()) => totpd::api::now(),
                Err(e) => return Ok(failed(&dest, &e.to_string())),
            }
        }
        None => match receive(&client, &mut partial.file).await? {
            Ok(taken) => taken,
            Err(refused) => return Ok(refused.into_printed(&dest)),
        },
    };
    let (checked, bytes) = match partial.finish(|tmp| {
        sqlite::check_backup(tmp).map_err(|e| format!("the copy does not check out: {e}"))
    }) {
        Ok(done) => done,
        Err(e) => return Ok(failed(&dest, &e)),
    };
    if args.json {
        return Ok(Printed::Ok(
            json!({
                "path": dest,
                "bytes": bytes,
                "taken_at": rfc3339(taken),
                "taken_at_utc": taken,
                "schema_version": checked.schema_version,
            })
            .to_string(),
        ));
    }
    Ok(crate::confirm(
        quiet,
        format!(
            "Success! Backup written to {} ({bytes} bytes, taken {})",
            dest.display(),
            rfc3339(taken)
        ),
    ))
}

/// Why a backup from the daemon did not arrive whole.
enum Refusal {
    /// The daemon refused: its one-line reason.
    Daemon(Printed),
    /// The answer broke off, or the user stopped it.
    Failed(String),
}

impl Refusal {
    fn into_printed(self, dest: &Path) -> Printed {
        match self {
            Refusal::Daemon(p) => p,
            Refusal::Failed(why) => failed(dest, &why),
        }
    }
}

fn failed(dest: &Path, why: &str) -> Printed {
    Printed::Refused(format!(
        "backup failed: {why}; nothing was written at {}",
        dest.display()
    ))
}

/// Streams the daemon's copy into `file`; returns when the copy was taken. SIGINT and
/// SIGTERM stop it (and the temporary file goes, with [`PrivateFile`]).
async fn receive(
    client: &Client,
    file: &mut fs::File,
) -> Result<Result<i64, Refusal>, ClientError> {
    use tokio::signal::unix::{signal, SignalKind};
    let resp = client.send("GET", "/v1/sys/backup", None).await?;
    if !resp.status().is_success() {
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| client.broken(&e))?
            .to_bytes();
        let reply = totpd::client::Reply { status, body };
        return Ok(Err(Refusal::Daemon(super::status::vault_refusal(&reply))));
    }
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok())
    };
    let expected = header("content-length");
    let taken = header(totpd::api::sys::backup::TAKEN_HEADER).unwrap_or_else(totpd::api::now);
    let interrupted =
        |e: std::io::Error| ClientError::Request(format!("cannot watch for signals: {e}"));
    let mut int = signal(SignalKind::interrupt()).map_err(interrupted)?;
    let mut term = signal(SignalKind::terminate()).map_err(interrupted)?;
    let mut body = resp.into_body();
    let mut got: i64 = 0;
    loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = int.recv() => return Ok(Err(Refusal::Failed("interrupted".into()))),
            _ = term.recv() => return Ok(Err(Refusal::Failed("terminated".into()))),
        };
        match frame {
            None => break,
            Some(Err(e)) => {
                return Ok(Err(Refusal::Failed(format!(
                    "the daemon's answer broke off after {got} bytes: {e}"
                ))))
            }
            Some(Ok(f)) => {
                if let Ok(data) = f.into_data() {
                    if let Err(e) = file.write_all(&data) {
                        return Ok(Err(Refusal::Failed(e.to_string())));
                    }
                    got += data.len() as i64;
                }
            }
        }
    }
    if let Some(n) = expected.filter(|n| *n != got) {
        return Ok(Err(Refusal::Failed(format!("received {got} of {n} bytes"))));
    }
    Ok(Ok(taken))
}

pub fn restore(args: RestoreArgs, quiet: bool) -> Result<Printed, ClientError> {
    let cfg = args.data.resolve(&args.data_dir)?;
    if !args.path.is_file() {
        return Err(ClientError::Usage(format!(
            "no backup file at {}",
            args.path.display()
        )));
    }
    let keys = cfg.key_source();
    let restored = match sqlite::restore(&args.path, &cfg.db, &keys, totpd::api::now()) {
        Ok(r) => r,
        Err(e) => {
            let why = match e {
                StoreError::WrongKey => format!(
                    "the key in {} does not open this backup: it was made with another key",
                    keys.origin().display()
                ),
                StoreError::MissingKey(id) => format!(
                    "sealed values in the backup use key id {id}, which the key ring in {} does not hold",
                    keys.origin().display()
                ),
                StoreError::Corrupt(m) => format!("the backup does not check out: {m}"),
                other => other.to_string(),
            };
            return Ok(Printed::Refused(format!(
                "restore refused: {why}; nothing was changed"
            )));
        }
    };
    if args.json {
        return Ok(Printed::Ok(
            json!({
                "db": restored.db,
                "replaced": restored.replaced,
                "schema_version": restored.schema_version,
            })
            .to_string(),
        ));
    }
    let kept = match &restored.replaced {
        Some(p) => format!("; the database it replaced is kept as {}", p.display()),
        None => String::new(),
    };
    Ok(crate::confirm(
        quiet,
        format!(
            "Success! Restored {} into {}{kept}. Start the daemon to serve it.",
            args.path.display(),
            restored.db.display()
        ),
    ))
}

//! Daemon configuration: flags and `TOTPD_*` environment (through clap) over an optional
//! TOML file over built-in defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Options of `totpd serve`; every one is also an environment variable and a key of the
/// TOML file given with `--config`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML file with any of the options below (flags and environment win over it).
    #[arg(long, env = "TOTPD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory for the database, key and (with --dev) socket and root token.
    /// [default: ./totpd-data with --dev, else $STATE_DIRECTORY or /var/lib/totpd]
    #[arg(long, env = "TOTPD_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// SQLite database file (the same as `--database FILE`). [default: <data-dir>/totpd.db]
    #[arg(
        long,
        env = "TOTPD_DB",
        value_name = "FILE",
        conflicts_with = "database"
    )]
    pub db: Option<PathBuf>,
    /// The store: a SQLite file (a path, or `sqlite:PATH`), or PostgreSQL
    /// (`postgres://user@host/db`, `?sslmode=require` for TLS), which several daemons may
    /// share. [default: SQLite at <data-dir>/totpd.db]
    #[arg(long, env = "TOTPD_DATABASE", value_name = "URL|FILE")]
    pub database: Option<String>,
    /// Permissions of the Unix socket, in octal. [default: 0660]
    #[arg(long, env = "TOTPD_SOCKET_MODE", value_name = "OCTAL", value_parser = parse_octal)]
    pub socket_mode: Option<u32>,
    /// Group owning the Unix socket (name or gid).
    #[arg(long, env = "TOTPD_SOCKET_GROUP", value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// Also listen on TCP at this address (every TCP request needs a token). Off by default.
    #[arg(long, env = "TOTPD_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Sealing key file (32 bytes or 64 hex digits); created 0600 on first start.
    /// $CREDENTIALS_DIRECTORY/totpd.key (a systemd credential) wins over it.
    /// [default: <data-dir>/totpd.key]
    #[arg(long, env = "TOTPD_KEY_FILE", value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Accept a key file its group may read (mode 0640), for a key shared with a backup
    /// group. Without it the key file must be 0600 or stricter, or totpd refuses to start.
    #[arg(long, env = "TOTPD_KEY_GROUP_READABLE")]
    pub key_group_readable: bool,
    /// Seconds a client gets to send its request headers before the connection is closed.
    /// [default: 10]
    #[arg(long, env = "TOTPD_HEADER_TIMEOUT", value_name = "SECS")]
    pub header_timeout: Option<u64>,
    /// Seconds a client gets to send its request body once the headers are in; past
    /// that it gets 408. [default: 30]
    #[arg(long, env = "TOTPD_BODY_TIMEOUT", value_name = "SECS")]
    pub body_timeout: Option<u64>,
    /// Read-only database connections with a thread each, for reads that scan (point
    /// reads run on the async workers, with one connection each and one more).
    /// [default: one per core, at least 2, at most 16]
    #[arg(long, env = "TOTPD_READERS", value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub readers: Option<u16>,
    /// Reads that may wait for a free connection; past that a request gets 503 with
    /// Retry-After. [default: 1024]
    #[arg(long, env = "TOTPD_READ_QUEUE", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub read_queue: Option<u32>,
    /// Connections served at once on each listener; past that a new connection gets one
    /// 503 with Retry-After and is closed. [default: 512]
    #[arg(long, env = "TOTPD_MAX_CONNECTIONS", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: Option<u32>,
    /// Another auth mount for Nitride one-time policy tokens, served at
    /// /v1/auth/<NAME>/totp beside the built-in `ratls` (repeatable; in the environment,
    /// comma-separated).
    #[arg(
        long = "mount",
        env = "TOTPD_MOUNTS",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub mounts: Vec<String>,
    /// Another mount of Vault's TOTP secrets engine, served at /v1/<NAME>/keys and
    /// /v1/<NAME>/code beside the built-in `totp`; each mount holds its own keys
    /// (repeatable; in the environment, comma-separated).
    #[arg(
        long = "totp-mount",
        env = "TOTPD_TOTP_MOUNTS",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub totp_mounts: Vec<String>,
    /// How often spent and expired policy tokens are purged (also once at start):
    /// seconds, or a duration such as 10m. [default: 10m]
    #[arg(long, env = "TOTPD_PURGE_INTERVAL", value_name = "DURATION", value_parser = parse_interval)]
    pub purge_interval: Option<u64>,
    /// Lifetime of a token created without `ttl` (a token with the root policy: none).
    /// [default: 32d, as Vault's default_lease_ttl]
    #[arg(long, env = "TOTPD_DEFAULT_TTL", value_name = "DURATION", value_parser = parse_interval)]
    pub default_ttl: Option<u64>,
    /// The longest any token may live; a longer `ttl` is cut to it. [default: 32d]
    #[arg(long, env = "TOTPD_MAX_TTL", value_name = "DURATION", value_parser = parse_interval)]
    pub max_ttl: Option<u64>,
    /// Issuer named in the login step's provisioning URIs (what authenticator apps show).
    /// [default: totpd]
    #[arg(long, env = "TOTPD_ISSUER", value_name = "NAME")]
    pub issuer: Option<String>,
    /// How long a login step's temp_token stays good. [default: 5m]
    #[arg(long, env = "TOTPD_TEMP_TOKEN_TTL", value_name = "DURATION", value_parser = parse_interval)]
    pub temp_token_ttl: Option<u64>,
    /// Policies of the login key the login step's verify returns (comma-separated).
    /// [default: default]
    #[arg(
        long,
        env = "TOTPD_LOGIN_POLICIES",
        value_name = "POLICY",
        value_delimiter = ','
    )]
    pub login_policies: Vec<String>,
    /// Lifetime of that login key. [default: 24h]
    #[arg(long, env = "TOTPD_LOGIN_TTL", value_name = "DURATION", value_parser = parse_interval)]
    pub login_ttl: Option<u64>,
    /// The login step's deactivate needs a current code or a recovery code, so a stolen
    /// session cannot turn two-factor off. Off by default, as the seed's clients send none.
    #[arg(long, env = "TOTPD_DEACTIVATE_NEEDS_CODE")]
    pub deactivate_needs_code: bool,
    /// Where the audit log goes: one JSON line per decision (validations, enrolments,
    /// admin actions, tokens). `journal`: a line on stderr with the target totpd::audit;
    /// `file`: appended to --audit-file. [default: file with --audit-file, else off with
    /// --dev, else journal]
    #[arg(long, env = "TOTPD_AUDIT", value_name = "SINK")]
    pub audit: Option<crate::audit::SinkKind>,
    /// The audit file: appended to, created 0600, reopened on SIGHUP (for logrotate).
    /// Implies --audit file. [default with --audit file: $LOGS_DIRECTORY/audit.log, else
    /// <data-dir>/audit.log]
    #[arg(long, env = "TOTPD_AUDIT_FILE", value_name = "FILE")]
    pub audit_file: Option<PathBuf>,
    /// When the audit file cannot be written: `open` lets the decision proceed (the line
    /// goes to stderr, a metric counts it, health says audit_ok: false); `closed` answers
    /// 503 instead. [default: open]
    #[arg(long, env = "TOTPD_AUDIT_FAIL", value_name = "MODE")]
    pub audit_fail: Option<crate::audit::FailMode>,
    /// Development defaults: everything under ./totpd-data, and a root token written to
    /// <data-dir>/root-token and printed on first start.
    #[arg(long, env = "TOTPD_DEV")]
    pub dev: bool,
    /// Values a key rotation re-seals per write operation. Hidden: for tests, which slow
    /// a rotation down to stop it half way. [default: 200]
    #[arg(long, hide = true, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rotate_batch: Option<u32>,
    /// Milliseconds a key rotation waits between batches. Hidden: for tests. [default: 0]
    #[arg(long, hide = true, value_name = "MS")]
    pub rotate_pause_ms: Option<u64>,
}

fn parse_octal(s: &str) -> Result<u32, String> {
    let t = s.trim_start_matches("0o");
    match u32::from_str_radix(t, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!("{s:?} is not an octal mode such as 0660")),
    }
}

/// A positive duration: whole seconds or a string such as `10m` or `1h30m`. Also the
/// CLI's `--ttl`.
pub fn parse_interval(s: &str) -> Result<u64, String> {
    match crate::api::fields::parse_seconds(s) {
        Some(n) if n > 0 => Ok(n as u64),
        _ => Err(format!(
            "{s:?} is not a positive duration such as 600, 90s or 10m"
        )),
    }
}

/// A count from the config file, held to the range its flag has (1..=max).
fn in_range(key: &str, v: Option<u32>, max: u32) -> Result<Option<u32>, String> {
    match v {
        Some(n) if !(1..=max).contains(&n) => Err(format!("config {key}: {n} is not in 1..={max}")),
        other => Ok(other),
    }
}

/// The TOML file's keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    db: Option<PathBuf>,
    database: Option<String>,
    socket: Option<PathBuf>,
    socket_mode: Option<String>,
    socket_group: Option<String>,
    listen: Option<SocketAddr>,
    key_file: Option<PathBuf>,
    key_group_readable: Option<bool>,
    header_timeout: Option<u64>,
    body_timeout: Option<u64>,
    readers: Option<u16>,
    read_queue: Option<u32>,
    max_connections: Option<u32>,
    mounts: Option<Vec<String>>,
    totp_mounts: Option<Vec<String>>,
    purge_interval: Option<toml::Value>,
    default_ttl: Option<toml::Value>,
    max_ttl: Option<toml::Value>,
    issuer: Option<String>,
    temp_token_ttl: Option<toml::Value>,
    login_policies: Option<Vec<String>>,
    login_ttl: Option<toml::Value>,
    deactivate_needs_code: Option<bool>,
    audit: Option<crate::audit::SinkKind>,
    audit_file: Option<PathBuf>,
    audit_fail: Option<crate::audit::FailMode>,
    dev: Option<bool>,
}

/// A duration from the config file: whole seconds or a string such as "10m".
fn file_duration(key: &str, v: Option<&toml::Value>) -> Result<Option<u64>, String> {
    let parsed = match v {
        None => return Ok(None),
        Some(toml::Value::Integer(n)) => parse_interval(&n.to_string()),
        Some(toml::Value::String(s)) => parse_interval(s),
        Some(other) => Err(format!("{other} is not a duration such as \"10m\"")),
    };
    parsed.map(Some).map_err(|e| format!("config {key}: {e}"))
}

/// The resolved configuration the daemon runs with.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub dev: bool,
    pub data_dir: PathBuf,
    /// The SQLite file (unused when `postgres` is set).
    pub db: PathBuf,
    /// The PostgreSQL URL, when the store is PostgreSQL. It may hold a password: never
    /// log it whole (see [`redact_url`]).
    pub postgres: Option<String>,
    pub socket: PathBuf,
    pub socket_mode: u32,
    pub socket_group: Option<String>,
    pub listen: Option<SocketAddr>,
    pub key_file: PathBuf,
    /// Accept a group-readable key file.
    pub key_group_readable: bool,
    pub credentials_dir: Option<PathBuf>,
    pub header_timeout: std::time::Duration,
    pub body_timeout: std::time::Duration,
    /// Read connections and read queue length; None for the store's defaults.
    pub readers: Option<usize>,
    pub read_queue: Option<usize>,
    /// Connections served at once per listener.
    pub max_connections: usize,
    /// Nitride mounts besides `ratls` (not yet checked: the daemon checks them).
    pub mounts: Vec<String>,
    /// TOTP engine mounts besides `totp` (checked by the daemon, as `mounts`).
    pub totp_mounts: Vec<String>,
    /// How often spent and expired policy tokens are purged.
    pub purge_interval: std::time::Duration,
    /// The user login step's settings.
    pub login: crate::api::user_totp::Settings,
    /// Default and max token lifetimes.
    pub tokens: crate::api::sys::TokenSettings,
    /// A key rotation's values per batch and pause between batches (hidden flags, for
    /// tests); None for the store's defaults.
    pub rotate_batch: Option<usize>,
    pub rotate_pause: Option<std::time::Duration>,
    /// The audit log's sink and failure mode.
    pub audit: crate::audit::Config,
}

impl ServeConfig {
    /// Where the daemon loads its sealing keys: the systemd credential
    /// (`$CREDENTIALS_DIRECTORY/totpd.key`) when there is one, else the key file
    /// (`--key-file`, default `<data-dir>/totpd.key`). `serve` opens the database with
    /// it, and `restore` checks a backup against it, so both see the same key.
    pub fn key_source(&self) -> crate::store::KeySource {
        crate::store::KeySource {
            allow_group_readable: self.key_group_readable,
            credentials_dir: self.credentials_dir.clone(),
            key_file: self.key_file.clone(),
        }
    }
}

/// The default socket path when none is given: with a dev data dir present, its socket;
/// else `$RUNTIME_DIRECTORY/totpd.sock`, else `/run/totpd/totpd.sock`.
pub fn default_socket(dev: bool, data_dir: &Path) -> PathBuf {
    if dev {
        return data_dir.join("totpd.sock");
    }
    match std::env::var_os("RUNTIME_DIRECTORY") {
        // systemd may pass several directories separated by ':'; the first is ours.
        Some(d) => PathBuf::from(
            d.to_string_lossy()
                .split(':')
                .next()
                .unwrap_or_default()
                .to_string(),
        )
        .join("totpd.sock"),
        None => PathBuf::from("/run/totpd/totpd.sock"),
    }
}

/// Every path a client looks at for the socket when not told (no `--socket`, no
/// `TOTPD_SOCKET`), in order: the dev socket in the current directory, then the system
/// default (`$RUNTIME_DIRECTORY/totpd.sock` when that is set, and
/// `/run/totpd/totpd.sock`).
pub fn client_socket_candidates() -> Vec<PathBuf> {
    let mut out = vec![PathBuf::from("./totpd-data/totpd.sock")];
    for p in [
        default_socket(false, Path::new(".")),
        PathBuf::from("/run/totpd/totpd.sock"),
    ] {
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// Where a client connects when not told: the first of [`client_socket_candidates`]
/// that exists, else the system default.
pub fn client_socket() -> PathBuf {
    let candidates = client_socket_candidates();
    candidates
        .iter()
        .find(|p| p.exists())
        .or(candidates.last())
        .cloned()
        .unwrap_or_default()
}

/// The audit sink: as named; else a file when a path is given; else off with `--dev`
/// (a terminal has the request log) and the journal without. A file sink without a path
/// writes `audit.log` in systemd's logs directory, else in the data directory.
fn audit_config(
    kind: Option<crate::audit::SinkKind>,
    path: Option<PathBuf>,
    fail: crate::audit::FailMode,
    dev: bool,
    data_dir: &Path,
) -> crate::audit::Config {
    use crate::audit::{Sink, SinkKind};
    let kind = kind.unwrap_or(match (&path, dev) {
        (Some(_), _) => SinkKind::File,
        (None, true) => SinkKind::Off,
        (None, false) => SinkKind::Journal,
    });
    let sink = match kind {
        SinkKind::Off => Sink::Off,
        SinkKind::Journal => Sink::Journal,
        SinkKind::File => Sink::File(path.unwrap_or_else(|| {
            let logs = std::env::var_os("LOGS_DIRECTORY").and_then(|d| {
                let first = d.to_string_lossy().split(':').next()?.to_string();
                (!first.is_empty()).then(|| PathBuf::from(first))
            });
            logs.unwrap_or_else(|| data_dir.to_path_buf())
                .join("audit.log")
        })),
    };
    crate::audit::Config { sink, fail }
}

/// Which store: `--database` (a URL or a file) or `--db` (a file), flags over the config
/// file; SQLite at `<data_dir>/totpd.db` without either.
fn database(
    db_flag: Option<PathBuf>,
    database_flag: Option<String>,
    db_file: Option<PathBuf>,
    database_file: Option<String>,
    data_dir: &Path,
) -> Result<(PathBuf, Option<String>), String> {
    let default = || data_dir.join("totpd.db");
    let chosen = match (db_flag, database_flag) {
        (Some(p), _) => return Ok((p, None)),
        (None, Some(d)) => d,
        (None, None) => match (db_file, database_file) {
            (Some(_), Some(_)) => {
                return Err("config: give `database` or `db`, not both".into());
            }
            (Some(p), None) => return Ok((p, None)),
            (None, Some(d)) => d,
            (None, None) => return Ok((default(), None)),
        },
    };
    let d = chosen.trim();
    if d.starts_with("postgres://") || d.starts_with("postgresql://") {
        return Ok((default(), Some(d.to_string())));
    }
    if d.contains("://") {
        return Err(format!(
            "--database {}: only postgres:// URLs or SQLite files are supported",
            redact_url(d)
        ));
    }
    let path = d.strip_prefix("sqlite:").unwrap_or(d);
    if path.is_empty() {
        return Err("--database: empty".into());
    }
    Ok((PathBuf::from(path), None))
}

/// A database URL fit for a log line or an error: its password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<a URL that does not parse>".into(),
    }
}

impl ServeArgs {
    /// Merges flags/environment over the config file over defaults.
    pub fn resolve(&self, socket_flag: Option<&Path>) -> Result<ServeConfig, String> {
        let file: FileConfig = match &self.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| format!("config file {}: {e}", p.display()))?;
                toml::from_str(&text).map_err(|e| format!("config file {}: {e}", p.display()))?
            }
            None => FileConfig::default(),
        };
        let dev = self.dev || file.dev.unwrap_or(false);
        let data_dir = self.data_dir.clone().or(file.data_dir).unwrap_or_else(|| {
            if dev {
                PathBuf::from("totpd-data")
            } else {
                std::env::var_os("STATE_DIRECTORY")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("/var/lib/totpd"))
            }
        });
        let purge_interval = match self.purge_interval {
            Some(n) => n,
            None => file_duration("purge_interval", file.purge_interval.as_ref())?.unwrap_or(600),
        };
        let token_defaults = crate::api::sys::TokenSettings::default();
        let tokens = crate::api::sys::TokenSettings {
            default_ttl: match self.default_ttl {
                Some(n) => n as i64,
                None => file_duration("default_ttl", file.default_ttl.as_ref())?
                    .map_or(token_defaults.default_ttl, |n| n as i64),
            },
            max_ttl: match self.max_ttl {
                Some(n) => n as i64,
                None => file_duration("max_ttl", file.max_ttl.as_ref())?
                    .map_or(token_defaults.max_ttl, |n| n as i64),
            },
        };
        let defaults = crate::api::user_totp::Settings::default();
        let login = crate::api::user_totp::Settings {
            issuer: self
                .issuer
                .clone()
                .or(file.issuer)
                .unwrap_or(defaults.issuer),
            temp_token_ttl: match self.temp_token_ttl {
                Some(n) => n as i64,
                None => file_duration("temp_token_ttl", file.temp_token_ttl.as_ref())?
                    .map_or(defaults.temp_token_ttl, |n| n as i64),
            },
            login_policies: if !self.login_policies.is_empty() {
                self.login_policies.clone()
            } else {
                file.login_policies.unwrap_or(defaults.login_policies)
            },
            login_ttl: match self.login_ttl {
                Some(n) => n as i64,
                None => file_duration("login_ttl", file.login_ttl.as_ref())?
                    .map_or(defaults.login_ttl, |n| n as i64),
            },
            deactivate_needs_code: self.deactivate_needs_code
                || file.deactivate_needs_code.unwrap_or(false),
        };
        let audit = audit_config(
            self.audit.or(file.audit),
            self.audit_file.clone().or(file.audit_file),
            self.audit_fail.or(file.audit_fail).unwrap_or_default(),
            dev,
            &data_dir,
        );
        let socket_mode = match (self.socket_mode, file.socket_mode) {
            (Some(m), _) => m,
            (None, Some(s)) => parse_octal(&s).map_err(|e| format!("config socket_mode: {e}"))?,
            (None, None) => 0o660,
        };
        let (db, postgres) = database(
            self.db.clone(),
            self.database.clone(),
            file.db,
            file.database,
            &data_dir,
        )?;
        Ok(ServeConfig {
            dev,
            db,
            postgres,
            socket: socket_flag
                .map(Path::to_path_buf)
                .or(file.socket)
                .unwrap_or_else(|| default_socket(dev, &data_dir)),
            socket_mode,
            socket_group: self.socket_group.clone().or(file.socket_group),
            listen: self.listen.or(file.listen),
            key_file: self
                .key_file
                .clone()
                .or(file.key_file)
                .unwrap_or_else(|| data_dir.join("totpd.key")),
            key_group_readable: self.key_group_readable || file.key_group_readable.unwrap_or(false),
            header_timeout: std::time::Duration::from_secs(
                self.header_timeout
                    .or(file.header_timeout)
                    .unwrap_or(10)
                    .max(1),
            ),
            body_timeout: std::time::Duration::from_secs(
                self.body_timeout
                    .or(file.body_timeout)
                    .unwrap_or(crate::api::DEFAULT_BODY_TIMEOUT)
                    .max(1),
            ),
            readers: self
                .readers
                .map(u32::from)
                .or(in_range("readers", file.readers.map(u32::from), 256)?)
                .map(|n| n as usize),
            read_queue: self
                .read_queue
                .or(in_range("read_queue", file.read_queue, 1_000_000)?)
                .map(|n| n as usize),
            max_connections: self
                .max_connections
                .or(in_range(
                    "max_connections",
                    file.max_connections,
                    1_000_000,
                )?)
                .map_or(512, |n| n as usize),
            mounts: if self.mounts.is_empty() {
                file.mounts.unwrap_or_default()
            } else {
                self.mounts.clone()
            },
            totp_mounts: if self.totp_mounts.is_empty() {
                file.totp_mounts.unwrap_or_default()
            } else {
                self.totp_mounts.clone()
            },
            purge_interval: std::time::Duration::from_secs(purge_interval),
            login,
            tokens,
            rotate_batch: self.rotate_batch.map(|n| n as usize),
            rotate_pause: self.rotate_pause_ms.map(std::time::Duration::from_millis),
            audit,
            credentials_dir: std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
            data_dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_file_beat_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "data_dir = \"/srv/t\"\nsocket_mode = \"0600\"\nlisten = \"127.0.0.1:8200\"\nmax_connections = 7\nreaders = 3\nmounts = [\"ci\"]\npurge_interval = \"2m\"\nissuer = \"Acme\"\ntemp_token_ttl = 60\nlogin_policies = [\"default\", \"web\"]\nlogin_ttl = \"8h\"\ndeactivate_needs_code = true\ndefault_ttl = \"1h\"\nmax_ttl = 86400\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(f.clone()),
            key_file: Some("/k".into()),
            ..Default::default()
        };
        let c = args.resolve(None).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/srv/t"));
        assert_eq!(c.db, PathBuf::from("/srv/t/totpd.db"));
        assert_eq!(c.socket_mode, 0o600);
        assert_eq!(c.key_file, PathBuf::from("/k"));
        assert_eq!(c.listen.unwrap().port(), 8200);
        assert_eq!(
            (c.max_connections, c.readers, c.read_queue),
            (7, Some(3), None)
        );
        assert_eq!(c.mounts, ["ci"]);
        assert_eq!(c.purge_interval.as_secs(), 120);
        assert_eq!(
            (
                c.login.issuer.as_str(),
                c.login.temp_token_ttl,
                c.login.login_ttl
            ),
            ("Acme", 60, 8 * 3600)
        );
        assert_eq!(c.login.login_policies, ["default", "web"]);
        assert!(c.login.deactivate_needs_code);
        assert_eq!((c.tokens.default_ttl, c.tokens.max_ttl), (3600, 86_400));
        let args = ServeArgs {
            config: Some(f),
            data_dir: Some("/other".into()),
            socket_mode: Some(0o666),
            mounts: vec!["deploy".into()],
            purge_interval: Some(5),
            dev: true,
            ..Default::default()
        };
        let c = args.resolve(None).unwrap();
        assert_eq!(c.socket, PathBuf::from("/other/totpd.sock"));
        assert_eq!(c.socket_mode, 0o666);
        assert_eq!(c.mounts, ["deploy"]);
        assert_eq!(c.purge_interval.as_secs(), 5);
        let c = ServeArgs::default().resolve(None).unwrap();
        assert_eq!((c.mounts.len(), c.purge_interval.as_secs()), (0, 600));
        assert_eq!(
            (
                c.login.issuer.as_str(),
                c.login.temp_token_ttl,
                c.login.login_ttl
            ),
            ("totpd", 300, 86_400)
        );
        assert!(!c.login.deactivate_needs_code);
    }

    #[test]
    fn audit_sink_defaults_and_precedence() {
        use crate::audit::{FailMode, Sink, SinkKind};
        let resolve = |args: ServeArgs| args.resolve(None).unwrap().audit;
        // Without --dev: the journal; with --dev: off; a path alone: that file.
        let c = resolve(ServeArgs {
            data_dir: Some("/d".into()),
            ..Default::default()
        });
        assert_eq!((c.sink, c.fail), (Sink::Journal, FailMode::Open));
        let dev = ServeArgs {
            dev: true,
            data_dir: Some("/d".into()),
            ..Default::default()
        };
        assert_eq!(resolve(dev.clone()).sink, Sink::Off);
        let c = resolve(ServeArgs {
            audit_file: Some("/var/log/a.log".into()),
            audit_fail: Some(FailMode::Closed),
            ..dev.clone()
        });
        assert_eq!(c.sink, Sink::File("/var/log/a.log".into()));
        assert_eq!(c.fail, FailMode::Closed);
        // A file sink without a path writes audit.log beside the database (no
        // LOGS_DIRECTORY in tests); a named sink wins over a path.
        if std::env::var_os("LOGS_DIRECTORY").is_none() {
            let c = resolve(ServeArgs {
                audit: Some(SinkKind::File),
                ..dev.clone()
            });
            assert_eq!(c.sink, Sink::File("/d/audit.log".into()));
        }
        let c = resolve(ServeArgs {
            audit: Some(SinkKind::Journal),
            audit_file: Some("/x".into()),
            ..dev.clone()
        });
        assert_eq!(c.sink, Sink::Journal);
        // The config file's keys, under the flags.
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "audit = \"file\"\naudit_file = \"/f.log\"\naudit_fail = \"closed\"\n",
        )
        .unwrap();
        let file = ServeArgs {
            config: Some(f.clone()),
            ..Default::default()
        };
        let c = resolve(file.clone());
        assert_eq!(
            (c.sink, c.fail),
            (Sink::File("/f.log".into()), FailMode::Closed)
        );
        let c = resolve(ServeArgs {
            audit: Some(SinkKind::Off),
            ..file
        });
        assert_eq!(c.sink, Sink::Off);
        std::fs::write(&f, "audit = \"syslog\"\n").unwrap();
        let bad = ServeArgs {
            config: Some(f),
            ..Default::default()
        };
        assert!(bad.resolve(None).unwrap_err().contains("audit"));
    }

    #[test]
    fn bad_file_and_modes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "nonsense = 1\n").unwrap();
        let args = ServeArgs {
            config: Some(f),
            ..Default::default()
        };
        assert!(args.resolve(None).unwrap_err().contains("nonsense"));
        assert!(parse_octal("0999").is_err());
        for (line, key) in [
            ("max_connections = 0\n", "max_connections"),
            ("readers = 0\n", "readers"),
            ("read_queue = 2000000\n", "read_queue"),
            ("purge_interval = \"0s\"\n", "purge_interval"),
            ("purge_interval = -5\n", "purge_interval"),
            ("purge_interval = true\n", "purge_interval"),
            ("login_ttl = \"0s\"\n", "login_ttl"),
            ("temp_token_ttl = \"soon\"\n", "temp_token_ttl"),
        ] {
            let f = dir.path().join("n.toml");
            std::fs::write(&f, line).unwrap();
            let args = ServeArgs {
                config: Some(f),
                ..Default::default()
            };
            let e = args.resolve(None).unwrap_err();
            assert!(e.contains(key), "{e}");
        }
        assert_eq!(parse_octal("0660"), Ok(0o660));
        assert_eq!(parse_interval("10m"), Ok(600));
        assert!(parse_interval("0").is_err() && parse_interval("soon").is_err());
    }

    #[test]
    fn database_takes_a_postgres_url_or_a_sqlite_file() {
        let d = Path::new("/data");
        let pick =
            |db: Option<&str>, url: Option<&str>, fdb: Option<&str>, fdatabase: Option<&str>| {
                database(
                    db.map(PathBuf::from),
                    url.map(str::to_string),
                    fdb.map(PathBuf::from),
                    fdatabase.map(str::to_string),
                    d,
                )
            };
        assert_eq!(
            pick(None, None, None, None).unwrap(),
            (PathBuf::from("/data/totpd.db"), None)
        );
        assert_eq!(
            pick(None, Some("postgres://u@h/db"), None, None).unwrap().1,
            Some("postgres://u@h/db".to_string())
        );
        assert_eq!(
            pick(None, Some("postgresql://u@%2Frun%2Fpg/db"), None, None)
                .unwrap()
                .1,
            Some("postgresql://u@%2Frun%2Fpg/db".to_string())
        );
        assert_eq!(
            pick(None, Some("sqlite:/srv/t.db"), None, None).unwrap(),
            (PathBuf::from("/srv/t.db"), None)
        );
        assert_eq!(
            pick(None, Some("/srv/t.db"), None, None).unwrap(),
            (PathBuf::from("/srv/t.db"), None)
        );
        // --db is the alias for a file; flags win over the file's keys.
        assert_eq!(
            pick(Some("/a.db"), None, None, Some("postgres://x/y")).unwrap(),
            (PathBuf::from("/a.db"), None)
        );
        assert_eq!(
            pick(None, None, Some("/f.db"), None).unwrap(),
            (PathBuf::from("/f.db"), None)
        );
        assert!(pick(None, None, Some("/f.db"), Some("postgres://x/y")).is_err());
        // Another scheme is refused, and the error shows no password.
        let e = pick(None, Some("mysql://u:secret@h/db"), None, None).unwrap_err();
        assert!(!e.contains("secret") && e.contains("***"), "{e}");
        assert!(pick(None, Some("sqlite:"), None, None).is_err());
    }

    #[test]
    fn urls_are_logged_without_their_password() {
        assert_eq!(
            redact_url("postgres://totpd:hunter2@db.example/totpd?sslmode=require"),
            "postgres://totpd:***@db.example/totpd?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://db.example/totpd"),
            "postgres://db.example/totpd"
        );
    }
}

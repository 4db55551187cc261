//! The `totpd` command: the daemon (`serve`) and a client for the daemon's socket.

mod cli;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::Value;
use totpd::client::{Client, ClientError};
use totpd::config::{self, ServeArgs};
use totpd::server::ServerError;

/// Exit codes scripts can rely on.
const EXIT_ERROR: u8 = 1; // the daemon answered with an error, or could not start
const EXIT_USAGE: u8 = 2; // the command line asks for something that cannot be sent
const EXIT_UNREACHABLE: u8 = 3; // no daemon answered on the socket

#[derive(Parser)]
#[command(
    name = "totpd",
    version,
    about = "A TOTP daemon: Vault identity MFA TOTP methods, an authenticator for agents, \
             and more, over a Unix socket (and optional TCP), with SQLite inside.",
    after_help = "Exit codes: 0 success, 1 error answered by the daemon (or the daemon failed), \
                  2 usage error, 3 daemon unreachable.\n\
                  Start on development defaults:  totpd serve --dev"
)]
struct Cli {
    /// The daemon's Unix socket. [default for clients: the first that exists of
    /// ./totpd-data/totpd.sock, $RUNTIME_DIRECTORY/totpd.sock and /run/totpd/totpd.sock;
    /// for serve: <data-dir>/totpd.sock with --dev, else $RUNTIME_DIRECTORY/totpd.sock or
    /// /run/totpd/totpd.sock]
    #[arg(long, global = true, env = "TOTPD_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// A token to send (clients only). Over the socket none is needed: your uid is
    /// your identity.
    #[arg(
        long,
        global = true,
        env = "TOTPD_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// Print no confirmation (such as "Success! Uploaded policy: app") when a command
    /// succeeds with nothing else to show (clients only). Ids, codes and --json output
    /// are still printed.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Serve(Box<ServeArgs>),
    /// Store, list and delete TOTP secrets (the authenticator app for agents).
    #[command(subcommand)]
    Secret(SecretCmd),
    /// Print the current code of a stored secret, and nothing else.
    Code {
        /// The secret's id, as `totpd secret add` or `totpd secret list` print it.
        id: String,
        /// If fewer seconds than this remain, wait for the next code (0 to period-1).
        #[arg(long, value_name = "SECS")]
        min_validity: Option<u64>,
        /// Print the whole answer as JSON: code, expires_in, period.
        #[arg(long)]
        json: bool,
    },
    /// Make, list and delete Nitride one-time policy tokens (needs sudo on
    /// auth/<mount>/totp: root over the socket has it).
    #[command(subcommand)]
    Nitride(NitrideCmd),
    /// Vault identity MFA methods: unlock an entity's locked secret.
    #[command(subcommand)]
    Mfa(cli::unlock::MfaCmd),
    /// Users of the login step: unlock a locked user.
    #[command(subcommand)]
    User(cli::unlock::UserCmd),
    /// Keys of Vault's TOTP secrets engine: unlock a locked key.
    #[command(subcommand)]
    Totp(cli::unlock::TotpCmd),
    /// Write a consistent copy of the database to PATH while the daemon runs (needs
    /// sudo on sys/backup: root over the socket has it); with --data-dir, copy the file
    /// itself while the daemon is stopped. PATH is written 0600, whole or not at all.
    Backup(cli::backup::BackupArgs),
    /// Replace the database of a stopped daemon with a backup, after checking it
    /// (integrity, and that it opens with that daemon's key); the replaced database is
    /// kept beside it as totpd.db.replaced-<time>.
    Restore(cli::backup::RestoreArgs),
    /// Show the daemon's version, uptime, database size and rows, writer queue, key id,
    /// last backup and clock (needs read on sys/status: root over the socket has it).
    Status(cli::status::StatusArgs),
    /// Write the TOTP secrets of one entity (--entity) or of every one (--all), opened:
    /// otpauth URIs, one per line (--format uris, the default), or an encrypted bundle
    /// (--format bundle --passphrase-file FILE). Needs sudo on sys/export (root over the
    /// socket has it). -o FILE is written 0600, whole or not at all.
    Export(cli::export::ExportArgs),
    /// Create, in one transaction, what is missing of a file `totpd export` wrote (URIs
    /// or a bundle); existing secrets are skipped, never overwritten. Needs sudo on
    /// sys/import. Exit 1 if any entry is refused (the rest is imported).
    Import(cli::export::ImportArgs),
    /// The sealing keys: make a key ring, rotate to its current key, see which key ids
    /// the sealed values use.
    #[command(subcommand)]
    Key(cli::keys::KeyCmd),
    /// Copy a stopped daemon's SQLite database (--from sqlite:PATH) whole into an empty
    /// PostgreSQL database (--to postgres://...), in one transaction, then verify it: rows
    /// per table, every row read back, and every secret's code on both sides. Sealed
    /// values move as they are: the PostgreSQL daemons load the same key ring. Exit 1 on
    /// any difference.
    Migrate(cli::migrate::MigrateArgs),
    /// Send one raw request to the daemon over the socket and print the answer body,
    /// like curl --unix-socket. Example: totpd api GET /v1/sys/health
    Api {
        /// HTTP method: GET, POST, PUT, DELETE or LIST.
        method: String,
        /// Path, such as /v1/auth/token/lookup-self.
        path: String,
        /// JSON body; '@FILE' reads a file, '-' reads standard input.
        #[arg(short, long, value_name = "JSON")]
        data: Option<String>,
        /// Print the HTTP status on a first line.
        #[arg(short, long)]
        include: bool,
    },
}

#[derive(Subcommand)]
enum NitrideCmd {
    /// Make a token that allows one update of POLICY before it expires; prints its uuid,
    /// which is shown only this once. The holder spends it with
    /// PUT /v1/sys/policies/acl/POLICY {"policy": ..., "totp": "<uuid>"}.
    Create {
        /// The existing ACL policy the token may update once.
        #[arg(long)]
        policy: String,
        /// How long the token stays good: seconds, or a duration such as 10m or 1h.
        #[arg(long, value_name = "DURATION", value_parser = config::parse_interval)]
        ttl: u64,
        /// The auth mount to make it under.
        #[arg(long, default_value = "ratls")]
        mount: String,
        /// Print the whole answer (the Vault envelope) as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List a mount's tokens: first 8 characters, policy, expiry, and state.
    List {
        #[arg(long, default_value = "ratls")]
        mount: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete a token (succeeds also when there is no such token).
    Delete {
        /// The token's uuid.
        uuid: String,
        #[arg(long, default_value = "ratls")]
        mount: String,
    },
}

#[derive(Subcommand)]
enum SecretCmd {
    /// Store a secret; prints its id. Use '-' as the value of --uri or --secret to read
    /// it from standard input, keeping it out of the process list.
    Add {
        /// A Key Uri Format URI (otpauth://totp/...), which supplies every other field.
        #[arg(long, value_name = "URI", conflicts_with = "secret")]
        uri: Option<String>,
        /// The base32 seed as the service shows it (spaces and lower case are fine).
        #[arg(long, value_name = "BASE32", requires = "label")]
        secret: Option<String>,
        /// A name for the secret (required with --secret).
        #[arg(long)]
        label: Option<String>,
        /// The service's name.
        #[arg(long)]
        issuer: Option<String>,
        /// SHA1 (default), SHA256 or SHA512.
        #[arg(long)]
        algorithm: Option<String>,
        /// 6 (default) or 8.
        #[arg(long)]
        digits: Option<u32>,
        /// Seconds per code (default 30).
        #[arg(long)]
        period: Option<u64>,
        /// Print the whole answer as JSON, the secret included.
        #[arg(long)]
        json: bool,
    },
    /// List your secrets (never the seeds).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete a secret.
    Rm {
        /// The secret's id.
        id: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let client = || match &cli.socket {
        Some(s) => Client::new(s.clone(), cli.token.clone()),
        None => Client::discover(cli.token.clone()),
    };
    let quiet = cli.quiet;
    match cli.command {
        Command::Serve(args) => serve(*args, cli.socket),
        Command::Secret(cmd) => run_client(secret(client(), cmd, quiet)),
        Command::Nitride(cmd) => run_client(nitride(client(), cmd, quiet)),
        Command::Code {
            id,
            min_validity,
            json,
        } => run_client(code(client(), id, min_validity, json)),
        Command::Api {
            method,
            path,
            data,
            include,
        } => run_client(api(client(), method, path, data, include, quiet)),
        Command::Backup(args) => run_client(cli::backup::backup(client(), args, quiet)),
        Command::Restore(args) => run_client(async move { cli::backup::restore(args, quiet) }),
        Command::Status(args) => run_client(cli::status::status(client(), args)),
        Command::Export(args) => run_client(cli::export::export(client(), args, quiet)),
        Command::Import(args) => run_client(cli::export::import(client(), args, quiet)),
        Command::Key(cli::keys::KeyCmd::Generate { ring, id }) => {
            run_client(async move { cli::keys::generate(ring, id) })
        }
        Command::Key(cmd) => run_client(cli::keys::key(client(), cmd, quiet)),
        Command::Migrate(args) => run_client(cli::migrate::migrate(args, quiet)),
        Command::Mfa(cmd) => run_client(cli::unlock::mfa(client(), cmd, quiet)),
        Command::User(cmd) => run_client(cli::unlock::user(client(), cmd, quiet)),
        Command::Totp(cmd) => run_client(cli::unlock::totp(client(), cmd, quiet)),
    }
}

fn serve(args: ServeArgs, socket: Option<PathBuf>) -> ExitCode {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    // First: before the log thread (or any other) allocates.
    tune_malloc();
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOTPD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let audit_target = |m: &tracing::Metadata<'_>| m.target() == totpd::audit::TARGET;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // Log lines leave through a buffer and a thread of their own (server::log), so a
    // request never waits on a write to stderr (a pipe to journald can block). The buffer
    // is bounded: when it is full a line is dropped and counted
    // (totpd_log_lines_dropped_total), never waited for. The guard writes out what is
    // buffered when serve returns.
    let (writer, _flush_on_exit) = match totpd::server::log::LogBuffer::start(
        std::io::stderr(),
        LOG_BUFFER_BYTES,
        "totpd-log",
    ) {
        Ok(w) => w,
        Err(e) => return fail(&format!("cannot start the log thread: {e}")),
    };
    totpd::metrics::count_dropped_log_lines(writer.clone());
    let log = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi)
        .with_filter(tracing_subscriber::filter::filter_fn(move |m| {
            !audit_target(m)
        }))
        .with_filter(filter);
    // Audit lines (--audit journal, and the audit file's fallback) whatever TOTPD_LOG
    // says, written as they are made: an audit line is never dropped.
    let audit = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_filter(tracing_subscriber::filter::filter_fn(audit_target));
    tracing_subscriber::registry().with(log).with(audit).init();
    let cfg = match args.resolve(socket.as_deref()) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    // Before the runtime starts threads: this reads and clears LISTEN_* variables.
    let inherited = match totpd::server::listen::take_systemd_sockets() {
        Ok(i) => i,
        Err(e) => return fail(&e.to_string()),
    };
    // A socket group that does not exist stops the start before anything is created.
    if let (true, Some(g)) = (inherited.is_empty(), cfg.socket_group.as_deref()) {
        if let Err(e) = totpd::server::listen::socket_gid(g) {
            return fail(&e.to_string());
        }
    }
    // Worker threads one per core (tokio's default); blocking threads are few because
    // only bounded work goes there (opening and closing the store, at most two QR images
    // and at most two argon2 hashes at once): nothing a client does grows the thread count.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    let run = async {
        // Caught from the very start: a signal while the daemon is still starting must
        // lead to a clean stop, not the default kill.
        let signals = Signals::install()?;
        totpd::server::daemon(cfg, inherited, signals.wait()).await
    };
    match rt.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

/// glibc malloc, tuned for a small, steady resident size:
/// - one arena for the whole daemon: glibc gives each thread its own, and with a
///   thousand connections' buffers spread over eight of them the resident size nearly
///   doubles (measured: 46 MB against 25 MB at 1000 connections) for no measurable speed
///   (two arenas measured no faster either);
/// - a fixed trim threshold (128 KiB, glibc's starting value): left dynamic, glibc raises
///   it each time a large buffer is freed, and after a burst of a thousand connections
///   the freed memory stayed resident (peak 35.8 MB after two bursts; fixed: 31.0 MB).
///
/// glibc's own variables win: an operator who set `MALLOC_ARENA_MAX` or
/// `MALLOC_TRIM_THRESHOLD_` chose a number.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    for (var, param, value) in [
        ("MALLOC_ARENA_MAX", nix::libc::M_ARENA_MAX, 1),
        (
            "MALLOC_TRIM_THRESHOLD_",
            nix::libc::M_TRIM_THRESHOLD,
            128 * 1024,
        ),
    ] {
        if std::env::var_os(var).is_none() {
            // SAFETY: mallopt only changes allocator settings; called first thing in
            // serve, before any other thread exists.
            unsafe {
                nix::libc::mallopt(param, value);
            }
        }
    }
}

/// Bytes of log lines that may wait for the log thread (about 16,000 request lines);
/// past that they are dropped and counted.
const LOG_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// Threads of tokio's blocking pool at most: room for the two QR renders and the two
/// argon2 hashes their semaphores allow, so a flood of one never starves the other.
const MAX_BLOCKING_THREADS: usize = 4;

/// SIGTERM and SIGINT: either one stops the daemon cleanly. SIGHUP reopens the audit
/// file (after logrotate moved it away).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self, ServerError> {
        use tokio::signal::unix::{signal, SignalKind};
        let err =
            |e: std::io::Error| ServerError::Io(format!("cannot install signal handlers: {e}"));
        Ok(Signals {
            term: signal(SignalKind::terminate()).map_err(err)?,
            int: signal(SignalKind::interrupt()).map_err(err)?,
            hup: signal(SignalKind::hangup()).map_err(err)?,
        })
    }

    async fn wait(mut self) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return tracing::info!("SIGTERM"),
                _ = self.int.recv() => return tracing::info!("SIGINT"),
                _ = self.hup.recv() => {
                    tracing::info!("SIGHUP: reopening the audit file");
                    totpd::audit::reopen();
                }
            }
        }
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("totpd: error: {msg}");
    ExitCode::from(EXIT_ERROR)
}

/// A client command's outcome: what to print, and how to exit.
enum Printed {
    Ok(String),
    /// The daemon said no: the message for stderr.
    Refused(String),
}

fn run_client(fut: impl std::future::Future<Output = Result<Printed, ClientError>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    match rt.block_on(fut) {
        Ok(Printed::Ok(out)) => {
            if !out.is_empty() {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Ok(Printed::Refused(msg)) => {
            eprintln!("totpd: {msg}");
            ExitCode::from(EXIT_ERROR)
        }
        Err(e) if e.is_unreachable() => {
            eprintln!("totpd: error: {e}");
            ExitCode::from(EXIT_UNREACHABLE)
        }
        Err(e @ ClientError::Usage(_)) => {
            eprintln!("totpd: error: {e}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(e) => fail(&e.to_string()),
    }
}

async fn api(
    client: Client,
    method: String,
    path: String,
    data: Option<String>,
    include: bool,
    quiet: bool,
) -> Result<Printed, ClientError> {
    let body = match data.as_deref() {
        None => None,
        Some("-") => Some(read_stdin()?.into_bytes()),
        Some(d) => match d.strip_prefix('@') {
            Some(file) => Some(
                std::fs::read(file).map_err(|e| ClientError::Request(format!("{file}: {e}")))?,
            ),
            None => Some(d.as_bytes().to_vec()),
        },
    };
    let path = if path.starts_with('/') {
        path
    } else {
        format!("/{path}")
    };
    let reply = client
        .request(&method.to_ascii_uppercase(), &path, body)
        .await?;
    let mut text = String::from_utf8_lossy(&reply.body).trim_end().to_string();
    if reply.is_success() && text.is_empty() && !quiet {
        text = confirmation(&method, &path, reply.status);
    }
    let out = if include && text.is_empty() {
        format!("HTTP {}", reply.status)
    } else if include {
        format!("HTTP {}\n{text}", reply.status)
    } else {
        text
    };
    if reply.is_success() {
        Ok(Printed::Ok(out))
    } else {
        // The body still goes to stdout for scripts; the one-line reason to stderr.
        println!("{out}");
        Ok(Printed::Refused(format!(
            "the daemon answered HTTP {}",
            reply.status
        )))
    }
}

/// What `totpd api` prints for a success without a body (a 204), as Vault's CLI does.
fn confirmation(method: &str, path: &str, status: u16) -> String {
    let method = method.to_ascii_uppercase();
    let route = path.split(['?', '#']).next().unwrap_or_default();
    let policy = route
        .trim_end_matches('/')
        .strip_prefix("/v1/sys/policies/acl/")
        .filter(|name| !name.is_empty() && !name.contains('/'));
    match (method.as_str(), policy) {
        ("PUT" | "POST", Some(name)) => format!("Success! Uploaded policy: {name}"),
        ("DELETE", Some(name)) => format!("Success! Deleted policy: {name}"),
        ("DELETE", None) => format!("Success! Data deleted (if it existed) at: {route}"),
        (m, _) => format!("Success! {m} {route}: HTTP {status}, no body"),
    }
}

fn read_stdin() -> Result<String, ClientError> {
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .map_err(|e| ClientError::Request(format!("reading standard input: {e}")))?;
    Ok(s.trim().to_string())
}

/// `-` means: read the value from standard input.
fn or_stdin(v: Option<String>) -> Result<Option<String>, ClientError> {
    match v.as_deref() {
        Some("-") => read_stdin().map(Some),
        _ => Ok(v),
    }
}

/// The daemon's error message from an agent-surface answer, for one line on stderr.
fn refusal(reply: &totpd::client::Reply) -> Printed {
    let msg = reply
        .json()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("the daemon answered HTTP {}", reply.status));
    Printed::Refused(msg)
}

/// A successful answer as the whole JSON (`--json`) or just the string at `field`;
/// a refusal as its one-line reason.
fn answer(reply: &totpd::client::Reply, json: bool, field: &[&str]) -> Printed {
    if !reply.is_success() {
        return refusal(reply);
    }
    let v = reply.json().unwrap_or_default();
    if json {
        return Printed::Ok(v.to_string());
    }
    let picked = field.iter().fold(&v, |v, k| &v[*k]);
    Printed::Ok(picked.as_str().unwrap_or_default().to_string())
}

/// A confirmation line, or nothing with `--quiet`.
fn confirm(quiet: bool, line: String) -> Printed {
    Printed::Ok(if quiet { String::new() } else { line })
}

/// The seed or URI to send: `-` reads it from standard input. Empty (as when `$SEED`
/// was never set) is a usage error, said as such rather than sent.
fn seed_arg(flag: &str, v: Option<String>) -> Result<Option<String>, ClientError> {
    let from_stdin = v.as_deref() == Some("-");
    let v = or_stdin(v)?;
    match v {
        Some(s) if s.trim().is_empty() => Err(ClientError::Usage(if from_stdin {
            format!("{flag} -: standard input is empty (nothing was piped in)")
        } else {
            format!("{flag} is empty")
        })),
        other => Ok(other),
    }
}

async fn secret(client: Client, cmd: SecretCmd, quiet: bool) -> Result<Printed, ClientError> {
    match cmd {
        SecretCmd::Add {
            uri,
            secret,
            label,
            issuer,
            algorithm,
            digits,
            period,
            json,
        } => {
            let mut body = serde_json::Map::new();
            let fields = [
                ("uri", seed_arg("--uri", uri)?.map(serde_json::Value::from)),
                (
                    "secret",
                    seed_arg("--secret", secret)?.map(serde_json::Value::from),
                ),
                ("label", label.map(serde_json::Value::from)),
                ("issuer", issuer.map(serde_json::Value::from)),
                ("algorithm", algorithm.map(serde_json::Value::from)),
                ("digits", digits.map(serde_json::Value::from)),
                ("period", period.map(serde_json::Value::from)),
            ];
            for (k, v) in fields {
                if let Some(v) = v {
                    body.insert(k.into(), v);
                }
            }
            if !body.contains_key("uri") && !body.contains_key("secret") {
                return Err(ClientError::Usage("give --uri or --secret".into()));
            }
            let reply = client
                .request(
                    "POST",
                    "/api/v2/totp/secrets",
                    Some(serde_json::Value::Object(body).to_string().into_bytes()),
                )
                .await?;
            Ok(answer(&reply, json, &["totp_secret", "id"]))
        }
        SecretCmd::List { json } => {
            let reply = client.request("GET", "/api/v2/totp/secrets", None).await?;
            if !reply.is_success() {
                return Ok(refusal(&reply));
            }
            let v = reply.json().unwrap_or_default();
            if json {
                return Ok(Printed::Ok(v["totp_secrets"].to_string()));
            }
            let mut out = format!(
                "{:<36}  {:<24}  {:<16}  {:<9} {:>6} {:>6}  {}",
                "ID", "LABEL", "ISSUER", "ALGORITHM", "DIGITS", "PERIOD", "CREATED"
            );
            for s in v["totp_secrets"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "\n{:<36}  {:<24}  {:<16}  {:<9} {:>6} {:>6}  {}",
                    s["id"].as_str().unwrap_or_default(),
                    s["label"].as_str().unwrap_or_default(),
                    s["issuer"].as_str().unwrap_or("-"),
                    s["algorithm"].as_str().unwrap_or_default(),
                    s["digits"].to_string(),
                    s["period"].to_string(),
                    s["created_at"].as_str().unwrap_or_default(),
                ));
            }
            Ok(Printed::Ok(out))
        }
        SecretCmd::Rm { id } => {
            let reply = client
                .request(
                    "DELETE",
                    &format!("/api/v2/totp/secrets/{}", path_segment(&id)),
                    None,
                )
                .await?;
            if !reply.is_success() {
                return Ok(refusal(&reply));
            }
            Ok(confirm(quiet, format!("Success! Deleted secret: {id}")))
        }
    }
}

/// A Nitride-shaped refusal as one line: the message, then each field's fault.
fn nitride_refusal(reply: &totpd::client::Reply) -> Printed {
    let Some(v) = reply.json() else {
        return Printed::Refused(format!("the daemon answered HTTP {}", reply.status));
    };
    let mut msg = v["message"]
        .as_str()
        .or_else(|| v["errors"][0].as_str())
        .unwrap_or("refused")
        .to_string();
    for (field, why) in v["errors"].as_object().into_iter().flatten() {
        msg.push_str(&format!("; {field}: {}", why.as_str().unwrap_or_default()));
    }
    Printed::Refused(msg)
}

async fn nitride(client: Client, cmd: NitrideCmd, quiet: bool) -> Result<Printed, ClientError> {
    let base = |mount: &str| format!("/v1/auth/{}/totp", path_segment(mount));
    match cmd {
        NitrideCmd::Create {
            policy,
            ttl,
            mount,
            json,
        } => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            let body =
                serde_json::json!({"policy": policy, "expiration": now.saturating_add(ttl as i64)});
            let reply = client
                .request("PUT", &base(&mount), Some(body.to_string().into_bytes()))
                .await?;
            if !reply.is_success() {
                return Ok(nitride_refusal(&reply));
            }
            let v = reply.json().unwrap_or_default();
            Ok(Printed::Ok(if json {
                v.to_string()
            } else {
                v["data"]["uuid"].as_str().unwrap_or_default().to_string()
            }))
        }
        NitrideCmd::List { mount, json } => {
            let tokens = match listed_tokens(&client, &base(&mount)).await? {
                Ok(t) => t,
                Err(refused) => return Ok(refused),
            };
            if json {
                return Ok(Printed::Ok(Value::Array(tokens).to_string()));
            }
            let mut out = format!(
                "{:<8}  {:<24}  {:<20}  {}",
                "TOKEN", "POLICY", "EXPIRES", "STATE"
            );
            for t in &tokens {
                let state = if t["spent"].as_bool() == Some(true) {
                    "spent"
                } else if t["expired"].as_bool() == Some(true) {
                    "expired"
                } else {
                    "unspent"
                };
                out.push_str(&format!(
                    "\n{:<8}  {:<24}  {:<20}  {}",
                    t["prefix"].as_str().unwrap_or_default(),
                    t["policy"].as_str().unwrap_or_default(),
                    totpd::api::fields::rfc3339(t["expiration"].as_i64().unwrap_or_default()),
                    state
                ));
            }
            Ok(Printed::Ok(out))
        }
        NitrideCmd::Delete { uuid, mount } => {
            // The API answers 200 for a token that is not there (as Nitride does); a
            // person at a terminal wants to know the wrong mount was named.
            let prefix: String = uuid
                .trim()
                .chars()
                .take(8)
                .collect::<String>()
                .to_lowercase();
            let tokens = match listed_tokens(&client, &base(&mount)).await? {
                Ok(t) => t,
                Err(refused) => return Ok(refused),
            };
            if !tokens.iter().any(|t| t["prefix"] == prefix.as_str()) {
                return Ok(Printed::Refused(format!(
                    "no token {prefix} on mount {mount} (see totpd nitride list --mount M)"
                )));
            }
            let reply = client
                .request(
                    "DELETE",
                    &format!("{}/{}", base(&mount), path_segment(&uuid)),
                    None,
                )
                .await?;
            if !reply.is_success() {
                return Ok(nitride_refusal(&reply));
            }
            Ok(confirm(
                quiet,
                format!("Success! Deleted token: {prefix} (mount {mount})"),
            ))
        }
    }
}

/// The tokens of a mount as LIST shows them (none when the mount has none), or the
/// daemon's refusal.
async fn listed_tokens(
    client: &Client,
    path: &str,
) -> Result<Result<Vec<Value>, Printed>, ClientError> {
    let reply = client.request("LIST", path, None).await?;
    let v = reply.json().unwrap_or_default();
    if reply.status == 404 && v["message"] == totpd::api::nitride::NO_TOKENS {
        return Ok(Ok(Vec::new()));
    }
    if !reply.is_success() {
        return Ok(Err(nitride_refusal(&reply)));
    }
    Ok(Ok(v["data"]["tokens"]
        .as_array()
        .cloned()
        .unwrap_or_default()))
}

async fn code(
    client: Client,
    id: String,
    min_validity: Option<u64>,
    json: bool,
) -> Result<Printed, ClientError> {
    let mut path = format!("/api/v2/totp/code/{}", path_segment(&id));
    if let Some(n) = min_validity {
        path.push_str(&format!("?min_validity={n}"));
    }
    let reply = client.request("GET", &path, None).await?;
    Ok(answer(&reply, json, &["code"]))
}

/// An id as one path segment: anything that is not a plain id character is escaped.
fn path_segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

//! The `totpd` command: the daemon (`serve`) and a client for the daemon's socket.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use totpd::client::{Client, ClientError};
use totpd::config::{self, ServeArgs};

/// Exit codes scripts can rely on.
const EXIT_ERROR: u8 = 1; // the daemon answered with an error, or could not start
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
    /// The daemon's Unix socket. [default: ./totpd-data/totpd.sock if present, else
    /// $RUNTIME_DIRECTORY/totpd.sock, else /run/totpd/totpd.sock]
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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Serve(ServeArgs),
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args, cli.socket),
        Command::Api {
            method,
            path,
            data,
            include,
        } => {
            let client = Client::new(cli.socket.unwrap_or_else(config::client_socket), cli.token);
            run_client(api(&client, method, path, data, include))
        }
    }
}

fn serve(args: ServeArgs, socket: Option<PathBuf>) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOTPD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cfg = match args.resolve(socket.as_deref()) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    match rt.block_on(totpd::server::run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("totpd: error: {msg}");
    ExitCode::from(EXIT_ERROR)
}

/// A client command's outcome: what to print, and how to exit.
enum Outcome {
    Ok(String),
    /// The daemon said no: the message for stderr.
    Refused(String),
}

fn run_client(fut: impl std::future::Future<Output = Result<Outcome, ClientError>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    match rt.block_on(fut) {
        Ok(Outcome::Ok(out)) => {
            if !out.is_empty() {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Ok(Outcome::Refused(msg)) => {
            eprintln!("totpd: {msg}");
            ExitCode::from(EXIT_ERROR)
        }
        Err(e @ ClientError::Connect { .. }) => {
            eprintln!("totpd: error: {e}");
            ExitCode::from(EXIT_UNREACHABLE)
        }
        Err(e) => fail(&e.to_string()),
    }
}

async fn api(
    client: &Client,
    method: String,
    path: String,
    data: Option<String>,
    include: bool,
) -> Result<Outcome, ClientError> {
    let body = match data.as_deref() {
        None => None,
        Some("-") => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| ClientError::Request(format!("reading standard input: {e}")))?;
            Some(s.into_bytes())
        }
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
    let text = String::from_utf8_lossy(&reply.body).trim_end().to_string();
    let out = if include {
        format!("HTTP {}\n{text}", reply.status)
    } else {
        text
    };
    if reply.is_success() {
        Ok(Outcome::Ok(out))
    } else {
        // The body still goes to stdout for scripts; the one-line reason to stderr.
        println!("{out}");
        Ok(Outcome::Refused(format!(
            "the daemon answered HTTP {}",
            reply.status
        )))
    }
}

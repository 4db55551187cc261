//! The daemon: prepares the data directory, opens the store, binds the listeners and
//! serves HTTP/1.1 on each connection until the shutdown future it is given resolves
//! (`main` passes SIGTERM/SIGINT), then drains and closes the store.

pub mod http;
pub mod listen;
pub mod log;
mod systemd;

use std::future::Future;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

use crate::api::{self, AppState};
use crate::auth::{self, Peer};
use crate::config::ServeConfig;
use crate::store::postgres::{PgOptions, PgStore};
use crate::store::sqlite::{SqliteOptions, SqliteStore};
use crate::store::{Sealer, Store, StoreError};
use http::App;
use listen::Listener;

/// Requests in flight at shutdown get this long to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("cannot listen: {0}")]
    Listen(String),
    #[error("another totpd is already listening on {0}")]
    AlreadyRunning(PathBuf),
    #[error("{0}")]
    Io(String),
}

/// Runs the daemon as configured until `shutdown` resolves.
pub async fn daemon(
    cfg: ServeConfig,
    inherited: Vec<listen::Inherited>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    // Checked before anything is created: a bad mount is a configuration error.
    let mounts = api::mounts::Mounts::new(&api::nitride::MOUNTS, &cfg.mounts)
        .map_err(ServerError::Config)?;
    let engine_mounts = api::mounts::Mounts::new(&api::vault_totp::MOUNTS, &cfg.totp_mounts)
        .map_err(ServerError::Config)?;
    api::set_body_timeout(cfg.body_timeout);
    prepare_dirs(&cfg)?;
    let (store, created) = match &cfg.postgres {
        Some(url) => open_postgres(&cfg, url).await?,
        None => open_sqlite(&cfg).await?,
    };

    let result = async {
        if cfg.dev && created {
            create_root_token(&cfg, store.as_ref()).await?;
        }
        // The audit file opens before anything listens: a wrong path stops the start.
        let state = AppState::new(store.clone())
            .with_mounts(mounts)
            .with_engine_mounts(engine_mounts)
            .with_login(cfg.login.clone())
            .with_tokens(cfg.tokens)
            .with_audit(&cfg.audit)
            .map_err(ServerError::Config)?;
        let audit = state.audit.clone();
        let listeners = bind(&cfg, inherited).await?;
        tracing::info!(mounts = ?state.mounts.names(), "policy token mounts");
        tracing::info!(mounts = ?state.engine_mounts.names(), "TOTP engine mounts");
        api::sys::keys::resume(store.as_ref()).await;
        let metrics = state.metrics.clone();
        let app = http::app(state, nix::unistd::getuid().as_raw());
        let limits = ConnLimits {
            header_timeout: cfg.header_timeout,
            max_connections: cfg.max_connections,
        };
        let purge = api::nitride::spawn_purge(store.clone(), cfg.purge_interval);
        let clock = crate::clock::spawn_watch(metrics);
        run(listeners, app, limits, shutdown).await;
        purge.abort();
        clock.abort();
        // The last lines reach the audit file before the daemon exits.
        let _ = tokio::task::spawn_blocking(move || audit.close()).await;
        Ok(())
    }
    .await;
    // Queued writes finish before the connection closes.
    let s = store.clone();
    let _ = tokio::task::spawn_blocking(move || s.close()).await;
    tracing::info!("database closed");
    result
}

/// The SQLite store at `cfg.db`, with the key ring (made on first start if there is none).
/// Returns it and whether the database was new.
async fn open_sqlite(cfg: &ServeConfig) -> Result<(Arc<dyn Store>, bool), ServerError> {
    let mut opts = SqliteOptions::new(&cfg.db);
    opts.readers = cfg.readers.unwrap_or(opts.readers);
    opts.read_queue = cfg.read_queue.unwrap_or(opts.read_queue);
    opts.rotate_batch = cfg.rotate_batch.unwrap_or(opts.rotate_batch);
    opts.rotate_pause = cfg.rotate_pause.unwrap_or(opts.rotate_pause);
    let keys = cfg.key_source();
    // Named in the error: under systemd the key is the credential, not the file.
    let key_origin = keys.origin();
    let (opened, key) =
        tokio::task::spawn_blocking(move || SqliteStore::open_with_keys(&opts, &keys))
            .await
            .map_err(|e| ServerError::Io(e.to_string()))?
            .map_err(|e| key_error(e, &key_origin, &cfg.db.display().to_string()))?;
    if key.created {
        tracing::info!(path = %key.path.display(), "created a new sealing key");
    }
    Ok((opened.store, opened.created))
}

/// The PostgreSQL store at `url`, shared with any other daemon on the same database.
/// Every daemon must load the same key ring, so none is made here (except with `--dev`,
/// for one daemon on a scratch database).
async fn open_postgres(
    cfg: &ServeConfig,
    url: &str,
) -> Result<(Arc<dyn Store>, bool), ServerError> {
    let shown = crate::config::redact_url(url);
    let keys = cfg.key_source();
    if !keys.exists() && !cfg.dev {
        return Err(ServerError::Config(format!(
            "with PostgreSQL ({shown}) every daemon must load the same key ring, and there is \
             none at {}: make one with `totpd key generate`, give the same file to every daemon \
             (--key-file, or the systemd credential totpd.key)",
            keys.origin().display()
        )));
    }
    let key_origin = keys.origin();
    let loaded = tokio::task::spawn_blocking(move || keys.load_or_create())
        .await
        .map_err(|e| ServerError::Io(e.to_string()))?
        .map_err(|e| ServerError::Store(e.into()))?;
    if loaded.created {
        tracing::info!(path = %loaded.path.display(), "created a new sealing key");
    }
    let opts = PgOptions::new(url).map_err(ServerError::Store)?;
    let opened = PgStore::open(&opts, Sealer::from_ring(&loaded.ring))
        .await
        .map_err(|e| key_error(e, &key_origin, &shown))?;
    tracing::info!(database = %shown, "store: PostgreSQL");
    Ok((opened.store, opened.created))
}

/// A key that does not fit the database, in words an operator can act on.
fn key_error(e: StoreError, key_origin: &std::path::Path, database: &str) -> ServerError {
    match e {
        StoreError::WrongKey => ServerError::Config(format!(
            "the key in {} does not open database {database}: it is not the key this database was created with",
            key_origin.display(),
        )),
        StoreError::MissingKey(id) => ServerError::Config(format!(
            "database {database} holds values sealed with key id {id}, which the key ring in {} does not hold: \
             put key {id} back in the ring (a key may leave the ring only once `totpd key rotate` says no value uses it)",
            key_origin.display()
        )),
        other => ServerError::Store(other),
    }
}

/// The listeners systemd passed, else the configured Unix socket; plus TCP if asked.
async fn bind(
    cfg: &ServeConfig,
    inherited: Vec<listen::Inherited>,
) -> Result<Vec<Listener>, ServerError> {
    let mut listeners = inherited
        .into_iter()
        .map(listen::Inherited::into_listener)
        .collect::<Result<Vec<_>, _>>()?;
    if listeners.is_empty() {
        listeners.push(listen::bind_unix(
            &cfg.socket,
            cfg.socket_mode,
            cfg.socket_group.as_deref(),
        )?);
    }
    if let Some(addr) = cfg.listen {
        listeners.push(listen::bind_tcp(addr).await?);
    }
    Ok(listeners)
}

/// Serves `app` on every listener until `shutdown` resolves; then stops accepting,
/// removes the socket files it created, and lets requests in flight finish (at most
/// [`DRAIN_TIMEOUT`]).
pub async fn run(
    listeners: Vec<Listener>,
    app: App,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()>,
) {
    for l in &listeners {
        tracing::info!(listener = %l.describe(), "listening");
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let graceful = Arc::new(hyper_util::server::graceful::GracefulShutdown::new());
    let mut owned_paths = Vec::new();
    let mut accept_tasks = Vec::new();
    for l in listeners {
        if let Listener::Unix {
            owned_path: Some(p),
            ..
        } = &l
        {
            owned_paths.push(p.clone());
        }
        accept_tasks.push(tokio::spawn(accept_loop(
            l,
            app.clone(),
            limits,
            graceful.clone(),
            stop_rx.clone(),
        )));
    }
    systemd::notify("READY=1");

    shutdown.await;
    tracing::info!("shutting down: no new connections, finishing requests in flight");
    systemd::notify("STOPPING=1");
    let _ = stop_tx.send(true);
    for t in accept_tasks {
        let _ = t.await;
    }
    for p in &owned_paths {
        if let Err(e) = std::fs::remove_file(p) {
            tracing::warn!(path = %p.display(), error = %e, "cannot remove socket file");
        }
    }
    // The accept loops are gone, so this is the last handle; connections hold watchers.
    if let Ok(graceful) = Arc::try_unwrap(graceful) {
        if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("requests still running after {DRAIN_TIMEOUT:?}; closing anyway");
        }
    }
}

/// How connections are served, per listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// A client gets this long to send its request headers.
    pub header_timeout: Duration,
    /// Connections served at once on one listener. Past that, a new connection gets one
    /// 503 with `Retry-After` (in the shape of the surface it asked for) and is closed,
    /// so memory stays bounded whatever clients do.
    pub max_connections: usize,
}

/// Over-limit connections being answered 503 at once, per listener; past that, accepting
/// waits for one of them to finish.
const MAX_TURNED_AWAY: usize = 64;

async fn accept_loop(
    listener: Listener,
    app: App,
    limits: ConnLimits,
    graceful: Arc<hyper_util::server::graceful::GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
) {
    let served = Arc::new(Semaphore::new(limits.max_connections));
    let turned_away = Arc::new(Semaphore::new(MAX_TURNED_AWAY));
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => break,
            a = accept(&listener) => a,
        };
        let stream = match accepted {
            Ok(stream) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let slot = tokio::select! {
            _ = stop.changed() => break,
            s = take_slot(&served, &turned_away) => s,
        };
        let Some(slot) = slot else { break };
        match stream {
            Accepted::Unix(stream) => {
                let peer = Peer::Unix {
                    uid: listen::peer_uid(&stream),
                };
                dispatch(stream, peer, slot, &app, limits, &graceful);
            }
            Accepted::Tcp(stream) => {
                let _ = stream.set_nodelay(true);
                dispatch(stream, Peer::Tcp, slot, &app, limits, &graceful);
            }
        }
    }
}

/// A place for a new connection: among the served if one is free, else among those
/// answered 503. Waiting for the latter holds back further accepts (they queue in the
/// kernel's backlog) rather than closing a connection unanswered. None if closed.
async fn take_slot(served: &Arc<Semaphore>, turned_away: &Arc<Semaphore>) -> Option<Slot> {
    if let Ok(permit) = served.clone().try_acquire_owned() {
        return Some(Slot::Serve(permit));
    }
    turned_away
        .clone()
        .acquire_owned()
        .await
        .ok()
        .map(Slot::Refuse)
}

/// What a newly accepted connection gets.
enum Slot {
    /// Served until it closes; the permit is its place among `max_connections`.
    Serve(OwnedSemaphorePermit),
    /// Over the limit: one 503, then closed.
    Refuse(OwnedSemaphorePermit),
}

enum Accepted {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

async fn accept(l: &Listener) -> std::io::Result<Accepted> {
    match l {
        Listener::Unix { listener, .. } => listener.accept().await.map(|(s, _)| Accepted::Unix(s)),
        Listener::Tcp(listener) => listener.accept().await.map(|(s, _)| Accepted::Tcp(s)),
    }
}

fn dispatch<S>(
    io: S,
    peer: Peer,
    slot: Slot,
    app: &App,
    limits: ConnLimits,
    graceful: &hyper_util::server::graceful::GracefulShutdown,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    match slot {
        Slot::Serve(permit) => {
            let app = app.clone();
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(peer);
                app.clone().oneshot(req.map(axum::body::Body::new))
            });
            let conn = graceful.watch(builder.serve_connection(TokioIo::new(io), svc));
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                drop(permit);
            });
        }
        Slot::Refuse(permit) => {
            builder.keep_alive(false);
            let svc = hyper::service::service_fn(|req: hyper::Request<Incoming>| async move {
                let mut resp = api::error_for_path(
                    req.uri().path(),
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many connections; try again shortly",
                );
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                Ok::<_, std::convert::Infallible>(resp)
            });
            let conn = graceful.watch(builder.serve_connection(TokioIo::new(io), svc));
            tokio::spawn(async move {
                let _ = conn.await;
                drop(permit);
            });
        }
    }
}

fn prepare_dirs(cfg: &ServeConfig) -> Result<(), ServerError> {
    let mk = |p: &std::path::Path| {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(p)
            .map_err(|e| ServerError::Io(format!("cannot create {}: {e}", p.display())))
    };
    mk(&cfg.data_dir)?;
    for f in [&cfg.db, &cfg.key_file] {
        if let Some(parent) = f.parent().filter(|p| !p.as_os_str().is_empty()) {
            mk(parent)?;
        }
    }
    // With the socket inside the data dir (--dev), other uids must be able to reach it
    // by name: traverse but not list (0711). Every file in it is 0600 anyway.
    if cfg.socket.parent() == Some(cfg.data_dir.as_path()) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cfg.data_dir, std::fs::Permissions::from_mode(0o711)).map_err(
            |e| ServerError::Io(format!("cannot chmod {}: {e}", cfg.data_dir.display())),
        )?;
    }
    Ok(())
}

/// With --dev on a new database: a root token, written 0600 to <data-dir>/root-token
/// and printed once.
async fn create_root_token(cfg: &ServeConfig, store: &dyn Store) -> Result<(), ServerError> {
    let token = auth::create_root_token(store, api::now())
        .await
        .map_err(|e| ServerError::Io(format!("cannot create the root token: {e}")))?;
    let path = cfg.data_dir.join("root-token");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        writeln!(f, "{token}")?;
        f.sync_all()
    };
    write().map_err(|e| ServerError::Io(format!("cannot write {}: {e}", path.display())))?;
    println!("Root token (also in {}): {token}", path.display());
    Ok(())
}

//! In-process harness: the whole HTTP application (router, middleware, normalisation) on
//! a temporary store, driven with `tower::ServiceExt::oneshot`. The test says who is
//! calling: a Unix-socket peer with any uid (no root needed), or TCP with a token.
//! Nothing is spawned; use `common::Daemon` only for what only a process shows.
//!
//! The store is a SQLite file unless [`STORE_ENV`] is `postgres`: then each `TestApp`
//! gets a fresh database in the `TOTPD_TEST_POSTGRES` cluster, so the same surface tests
//! run against both backends (`.ci/run` runs them twice). Tests look at stored rows with
//! [`TestApp::query`] and [`TestApp::db_bytes`], which read either backend.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use totpd::api::AppState;
use totpd::auth::{self, Peer};
use totpd::server::http::{app, App};
use totpd::store::postgres::{PgOptions, PgStore};
use totpd::store::sqlite::{SqliteOptions, SqliteStore};
use totpd::store::{Sealer, Store};

use super::postgres::{self, TestDb};
use super::Resp;

/// The variable choosing the in-process store: `postgres`, or SQLite when unset.
pub const STORE_ENV: &str = "TOTPD_TEST_STORE";

/// Where a `TestApp` keeps its state.
enum Backend {
    Sqlite(SqliteOptions),
    /// The database is dropped with the value, after the store has closed.
    Postgres(Box<PgOptions>, TestDb),
}

/// The uid the in-process "daemon" runs as: its peers get `root`, like uid 0.
pub const DAEMON_UID: u32 = 4_000_000;

/// The application on a fresh store, with a root token.
pub struct TestApp {
    pub dir: tempfile::TempDir,
    pub store: Arc<dyn Store>,
    pub state: AppState,
    app: App,
    root_token: String,
    backend: Backend,
}

impl TestApp {
    pub async fn new() -> TestApp {
        Self::build(None::<fn(&mut SqliteOptions)>).await
    }

    /// As `new`, on SQLite whatever [`STORE_ENV`] says, with the store's options changed
    /// first (a tiny read queue, say): those options are SQLite's own.
    pub async fn with_options(change: impl FnOnce(&mut SqliteOptions)) -> TestApp {
        Self::build(Some(change)).await
    }

    async fn build(change: Option<impl FnOnce(&mut SqliteOptions)>) -> TestApp {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = match change {
            Some(change) => {
                let mut opts = SqliteOptions::new(dir.path().join("totpd.db"));
                change(&mut opts);
                Backend::Sqlite(opts)
            }
            None if on_postgres() => {
                let db = TestDb::create()
                    .unwrap_or_else(|| panic!("{STORE_ENV}=postgres needs {}", postgres::ENV));
                let opts = PgOptions::new(&db.url).expect("the test database's URL");
                Backend::Postgres(Box::new(opts), db)
            }
            None => Backend::Sqlite(SqliteOptions::new(dir.path().join("totpd.db"))),
        };
        let store = open(&backend).await;
        let state = AppState::new(store.clone());
        let token = auth::create_root_token(store.as_ref(), super::unix_now() as i64)
            .await
            .unwrap();
        TestApp {
            app: app(state.clone(), DAEMON_UID),
            dir,
            store,
            state,
            root_token: token,
            backend,
        }
    }

    /// Serves these Nitride mounts besides `ratls` from now on.
    pub fn set_mounts(&mut self, extra: &[&str]) {
        let extra: Vec<String> = extra.iter().map(|m| m.to_string()).collect();
        let mounts = totpd::api::mounts::Mounts::new(&totpd::api::nitride::MOUNTS, &extra)
            .expect("valid mounts");
        self.state = self.state.clone().with_mounts(mounts);
        self.app = app(self.state.clone(), DAEMON_UID);
    }

    /// Serves these TOTP engine mounts besides `totp` from now on.
    pub fn set_engine_mounts(&mut self, extra: &[&str]) {
        let extra: Vec<String> = extra.iter().map(|m| m.to_string()).collect();
        let mounts = totpd::api::mounts::Mounts::new(&totpd::api::vault_totp::MOUNTS, &extra)
            .expect("valid mounts");
        self.state = self.state.clone().with_engine_mounts(mounts);
        self.app = app(self.state.clone(), DAEMON_UID);
    }

    /// Runs the login step with these settings from now on.
    pub fn set_login(&mut self, settings: totpd::api::user_totp::Settings) {
        self.state = self.state.clone().with_login(settings);
        self.app = app(self.state.clone(), DAEMON_UID);
    }

    pub fn root_token(&self) -> String {
        self.root_token.clone()
    }

    /// Whether the store is SQLite (for the few checks only a file can show).
    pub fn is_sqlite(&self) -> bool {
        matches!(self.backend, Backend::Sqlite(_))
    }

    /// The SQLite file; panics on PostgreSQL (guard with [`Self::is_sqlite`]).
    pub fn db_path(&self) -> PathBuf {
        match &self.backend {
            Backend::Sqlite(opts) => opts.path.clone(),
            Backend::Postgres(..) => panic!("db_path: this TestApp runs on PostgreSQL"),
        }
    }

    /// Every row `sql` answers, read straight from the database beside the store (as an
    /// operator's `sqlite3` or `psql` would), each value as text and NULL as `None`.
    /// Write `sql` in the SQL both engines share.
    pub fn query(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        match &self.backend {
            Backend::Postgres(_, db) => postgres::query_text(&db.url, sql),
            Backend::Sqlite(opts) => {
                use rusqlite::types::Value as V;
                let c = rusqlite::Connection::open_with_flags(
                    &opts.path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                )
                .expect("open the database read-only");
                let mut st = c.prepare(sql).expect("a valid query");
                let n = st.column_count();
                st.query_map([], |r| {
                    (0..n)
                        .map(|i| {
                            Ok(match r.get::<_, V>(i)? {
                                V::Null => None,
                                V::Integer(v) => Some(v.to_string()),
                                V::Real(v) => Some(v.to_string()),
                                V::Text(v) => Some(v),
                                V::Blob(v) => Some(String::from_utf8_lossy(&v).into_owned()),
                            })
                        })
                        .collect()
                })
                .expect("the query runs")
                .collect::<Result<_, _>>()
                .expect("rows read")
            }
        }
    }

    /// How many rows `table` (or view) holds.
    pub fn count_rows(&self, table: &str) -> i64 {
        let rows = self.query(&format!("SELECT count(*) FROM {table}"));
        rows[0][0]
            .as_deref()
            .expect("a count")
            .parse()
            .expect("a number")
    }

    /// Closes the store and opens it again, as a restart would (new app state too).
    pub async fn reopen(&mut self) {
        self.store.close();
        self.store = open(&self.backend).await;
        let mounts = (*self.state.mounts).clone();
        let engine_mounts = (*self.state.engine_mounts).clone();
        let login = (*self.state.login).clone();
        self.state = AppState::new(self.store.clone())
            .with_mounts(mounts)
            .with_engine_mounts(engine_mounts)
            .with_login(login);
        self.app = app(self.state.clone(), DAEMON_UID);
    }

    /// As a Unix-socket peer with uid 0 (root), like a test talking to the socket as root.
    pub async fn req(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> Resp {
        self.req_as(0, method, path, body, token).await
    }

    /// As a Unix-socket peer with `uid`.
    pub async fn req_as(
        &self,
        uid: u32,
        method: &str,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> Resp {
        let headers: Vec<(&str, String)> = token
            .map(|t| ("x-vault-token", t.to_string()))
            .into_iter()
            .collect();
        self.raw(
            Peer::Unix { uid: Some(uid) },
            method,
            path,
            &headers,
            body.map(|b| b.to_string().into_bytes()),
        )
        .await
    }

    /// Over TCP, with these headers (a token in one of them, or none).
    pub async fn tcp_req(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Option<Value>,
    ) -> Resp {
        self.raw(
            Peer::Tcp,
            method,
            path,
            headers,
            body.map(|b| b.to_string().into_bytes()),
        )
        .await
    }

    /// One request as `peer`, with raw body bytes.
    pub async fn raw(
        &self,
        peer: Peer,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Option<Vec<u8>>,
    ) -> Resp {
        let mut b = axum::http::Request::builder()
            .method(axum::http::Method::from_bytes(method.as_bytes()).unwrap())
            .uri(path)
            .header("host", "localhost");
        for (k, v) in headers {
            b = b.header(*k, v);
        }
        if body.is_some() {
            b = b.header("content-type", "application/json");
        }
        let mut req = b.body(Body::from(body.unwrap_or_default())).unwrap();
        req.extensions_mut().insert(peer);
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).to_string();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            text,
            json,
        }
    }

    /// Every stored byte, for grepping: on SQLite the database files (main file and
    /// WAL), on PostgreSQL every value of every table.
    pub fn db_bytes(&self) -> Vec<u8> {
        match &self.backend {
            Backend::Postgres(_, db) => postgres::table_bytes(&db.url),
            Backend::Sqlite(opts) => {
                let mut all = Vec::new();
                for suffix in ["", "-wal"] {
                    if let Ok(b) = std::fs::read(format!("{}{suffix}", opts.path.display())) {
                        all.extend(b);
                    }
                }
                all
            }
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.store.close();
    }
}

/// Whether [`STORE_ENV`] asks for PostgreSQL (any other value but empty is refused, so
/// a typo cannot quietly run everything on SQLite).
pub fn on_postgres() -> bool {
    match std::env::var(STORE_ENV).as_deref() {
        Ok("postgres") => true,
        Ok("sqlite") | Ok("") | Err(_) => false,
        Ok(other) => panic!("{STORE_ENV}={other:?}: expected postgres or sqlite"),
    }
}

async fn open(backend: &Backend) -> Arc<dyn Store> {
    // A fixed test key: these databases live and die with the test.
    let sealer = Sealer::new(&[7u8; 32]);
    match backend {
        Backend::Sqlite(opts) => SqliteStore::open(opts, sealer).expect("open store").store,
        Backend::Postgres(opts, _) => PgStore::open(opts, sealer).await.expect("open store").store,
    }
}

//! In-process harness: the whole HTTP application (router, middleware, normalisation) on
//! a temporary SQLite store, driven with `tower::ServiceExt::oneshot`. The test says who
//! is calling: a Unix-socket peer with any uid (no root needed), or TCP with a token.
//! Nothing is spawned; use `common::Daemon` only for what only a process shows.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use totpd::api::AppState;
use totpd::auth::{self, Peer};
use totpd::server::http::{app, App};
use totpd::store::sqlite::{SqliteOptions, SqliteStore};
use totpd::store::{Sealer, Store};

use super::Resp;

/// The uid the in-process "daemon" runs as: its peers get `root`, like uid 0.
pub const DAEMON_UID: u32 = 4_000_000;

/// The application on a fresh store, with a root token.
pub struct TestApp {
    pub dir: tempfile::TempDir,
    pub store: Arc<SqliteStore>,
    pub state: AppState,
    app: App,
    root_token: String,
    opts: SqliteOptions,
}

impl TestApp {
    pub async fn new() -> TestApp {
        Self::with_options(|_| {}).await
    }

    /// As `new`, with the store's options changed first (a tiny read queue, say).
    pub async fn with_options(change: impl FnOnce(&mut SqliteOptions)) -> TestApp {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut opts = SqliteOptions::new(dir.path().join("totpd.db"));
        change(&mut opts);
        let store = open(&opts);
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
            opts,
        }
    }

    /// Serves these Nitride mounts besides `ratls` from now on.
    pub fn set_mounts(&mut self, extra: &[&str]) {
        let extra: Vec<String> = extra.iter().map(|m| m.to_string()).collect();
        let mounts = totpd::api::nitride::Mounts::new(&extra).expect("valid mounts");
        self.state = self.state.clone().with_mounts(mounts);
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

    pub fn db_path(&self) -> PathBuf {
        self.opts.path.clone()
    }

    /// Closes the store and opens it again, as a restart would (new app state too).
    pub fn reopen(&mut self) {
        self.store.close();
        self.store = open(&self.opts);
        let mounts = (*self.state.mounts).clone();
        let login = (*self.state.login).clone();
        self.state = AppState::new(self.store.clone())
            .with_mounts(mounts)
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

    /// Every byte of the database files (main file and WAL), for grepping.
    pub fn db_bytes(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for suffix in ["", "-wal"] {
            if let Ok(b) = std::fs::read(format!("{}{suffix}", self.opts.path.display())) {
                all.extend(b);
            }
        }
        all
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.store.close();
    }
}

fn open(opts: &SqliteOptions) -> Arc<SqliteStore> {
    // A fixed test key: these databases live and die with the test.
    SqliteStore::open(opts, Sealer::new(&[7u8; 32]))
        .expect("open store")
        .store
}

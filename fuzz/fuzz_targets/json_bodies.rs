//! The whole HTTP application, in process, on arbitrary request bodies: the first byte
//! picks a JSON-body route, the rest is the body, sent as a Unix-socket root peer. No
//! answer may be a 500, and nothing may panic.
#![no_main]

use std::sync::OnceLock;

use axum::body::Body;
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

use totpd::api::AppState;
use totpd::auth::Peer;
use totpd::server::http::{app, App};
use totpd::store::sqlite::{SqliteOptions, SqliteStore};
use totpd::store::Sealer;

#[allow(dead_code)]
mod checks {
    include!("../checks.rs");
}


struct Harness {
    rt: tokio::runtime::Runtime,
    app: App,
    _dir: tempfile::TempDir,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = SqliteOptions::new(dir.path().join("totpd.db"));
        let app = rt.block_on(async {
            let store = SqliteStore::open(&opts, Sealer::new(&[7u8; 32]))
                .expect("open store")
                .store;
            app(AppState::new(store), 4_000_000)
        });
        Harness { rt, app, _dir: dir }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some(((method, path), body)) = checks::json_request(data) else {
        return;
    };
    let h = harness();
    let mut req = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Body::from(body.to_vec()))
        .expect("request");
    req.extensions_mut().insert(Peer::Unix { uid: Some(0) });
    let (status, text) = h.rt.block_on(async {
        let resp = h.app.clone().oneshot(req).await.expect("infallible");
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    });
    assert_ne!(
        status,
        500,
        "{method} {path} with {:?} → 500: {text}",
        String::from_utf8_lossy(body)
    );
});

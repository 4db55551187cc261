//! Every line logged while serving a request names that request (its id and route),
//! a 500's line included, so an operator can match a failure to its request.
//!
//! Alone in its binary: the capturing subscriber is set for this thread only, and a test
//! running beside it on another thread could leave tracing's per-callsite interest
//! cached without it.

mod common;

use std::sync::{Arc, Mutex};

use common::app::TestApp;
use serde_json::json;

/// Collects everything the tracing subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn every_line_logged_in_a_request_names_it_a_500s_included() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    // On this thread only, and the runtime is single-threaded: every task logs here.
    let _guard = tracing::subscriber::set_default(subscriber);

    let app = TestApp::new().await;
    let root = [("x-vault-token", app.root_token())];
    let r = app
        .tcp_req(
            "PUT",
            "/v1/sys/policies/acl/fragile",
            &root,
            Some(json!({"policy": {"path": {"sys/metrics": {"capabilities": ["read"]}}}})),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let r = app
        .tcp_req(
            "POST",
            "/v1/auth/token/create",
            &root,
            Some(json!({"policies": ["fragile"]})),
        )
        .await;
    let token = r.json["auth"]["client_token"].as_str().unwrap().to_string();
    // An operator breaks the stored document by hand: a fault of ours, not the client's.
    rusqlite::Connection::open(app.db_path())
        .unwrap()
        .execute(
            "UPDATE policies SET document = 'not json' WHERE name = 'fragile'",
            [],
        )
        .unwrap();

    let r = app
        .tcp_req(
            "GET",
            "/v1/sys/metrics",
            &[
                ("x-vault-token", token.clone()),
                ("x-request-id", "trace-me-4711".into()),
            ],
            None,
        )
        .await;
    assert_eq!(r.status, 500, "{}", r.text);
    assert_eq!(r.json, json!({"errors": ["internal error"]}));

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("trace-me-4711"))
        .collect();
    assert!(
        lines.iter().any(|l| l.contains("internal error")),
        "the 500's line names its request:\n{text}"
    );
    assert!(
        lines.iter().any(|l| l.contains("cannot resolve caller")),
        "so does the cause:\n{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("route=/v1/sys/metrics") && l.contains("status=500")),
        "and the request line:\n{text}"
    );
    assert!(!text.contains(&token), "no token in the log");
}

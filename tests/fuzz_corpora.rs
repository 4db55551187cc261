//! Replays the fuzz corpora (`fuzz/corpus/<target>/`) through the same checks as the
//! `cargo fuzz` targets in `fuzz/fuzz_targets/`, so plain `cargo test` (stable, no
//! libFuzzer) keeps every input that was once interesting passing. A missing corpus
//! directory is skipped loudly; an existing but empty one fails.

mod common;

use std::path::{Path, PathBuf};

use common::app::TestApp;
use totpd::auth::Peer;

/// The most `json_bodies` inputs replayed (the first, sorted by name), to bound the
/// test's time in a debug build (about 1 ms each; the corpus holds ~1,600 today, so
/// all are replayed; a bigger corpus is cut here rather than slowing CI down).
const MAX_JSON_BODIES: usize = 2000;

#[allow(dead_code)]
mod checks {
    include!("../fuzz/checks.rs");
}

/// The files of `fuzz/corpus/<target>/`, sorted by name; `None` (said on stderr) when
/// the directory is missing; a panic when it exists but holds no file.
fn corpus(target: &str) -> Option<Vec<(PathBuf, Vec<u8>)>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!(
            "SKIPPED: no corpus at {}; nothing of the {target} target replayed",
            dir.display()
        );
        return None;
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} exists but is empty", dir.display());
    Some(
        files
            .into_iter()
            .map(|p| {
                let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                (p, bytes)
            })
            .collect(),
    )
}

/// Runs `check` on every input of `target`'s corpus, naming the file that fails.
fn replay(target: &str, check: fn(&[u8])) {
    let Some(files) = corpus(target) else {
        return;
    };
    for (path, data) in files {
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            panic!("{}: the {target} check failed (above)", path.display());
        }
    }
}

#[test]
fn otpauth_uri_corpus() {
    replay("otpauth_uri", checks::otpauth_uri);
}

#[test]
fn base32_corpus() {
    replay("base32", checks::base32);
}

#[test]
fn policy_corpus() {
    replay("policy", checks::policy);
}

#[tokio::test]
async fn json_bodies_corpus() {
    let Some(files) = corpus("json_bodies") else {
        return;
    };
    // One application for all inputs, as the fuzz target keeps one.
    let app = TestApp::new().await;
    for (path, data) in files.into_iter().take(MAX_JSON_BODIES) {
        let Some(((method, route), body)) = checks::json_request(&data) else {
            continue;
        };
        let r = app
            .raw(
                Peer::Unix { uid: Some(0) },
                method,
                route,
                &[],
                Some(body.to_vec()),
            )
            .await;
        assert_ne!(
            r.status,
            500,
            "{}: {method} {route} with {:?} → 500: {}",
            path.display(),
            String::from_utf8_lossy(body),
            r.text
        );
    }
}

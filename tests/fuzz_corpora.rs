//! Replays the fuzz corpora (`fuzz/corpus/<target>/`) through the same checks as the
//! `cargo fuzz` targets in `fuzz/fuzz_targets/`, so plain `cargo test` (stable, no
//! libFuzzer) keeps every input that was once interesting passing. A missing corpus
//! directory is skipped loudly; an existing but empty one fails.

mod common;

use std::path::{Path, PathBuf};

use common::app::TestApp;
use totpd::auth::Peer;
use totpd::otp::{decode_base32, encode_base32, uri};

/// The most `json_bodies` inputs replayed (the first, sorted by name), to bound the
/// test's time in a debug build (about 1 ms each; the corpus holds ~1,260 today, so
/// all are replayed; a bigger corpus is cut here rather than slowing CI down).
const MAX_JSON_BODIES: usize = 2000;

/// As `fuzz/fuzz_targets/json_bodies.rs`: the first byte of an input picks one of these.
const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/identity/mfa/method/totp"),
    ("POST", "/v1/identity/mfa/method/totp/generate"),
    ("POST", "/v1/identity/mfa/method/totp/admin-generate"),
    ("POST", "/v1/identity/mfa/method/totp/admin-destroy"),
    ("POST", "/v1/identity/mfa/method/totp/validate"),
    ("POST", "/v1/identity/mfa/method/totp/admin-unlock"),
    (
        "POST",
        "/v1/identity/mfa/method/totp/7b0c7e4e-0000-4000-8000-000000000000",
    ),
    ("POST", "/v1/totp/keys/k"),
    ("POST", "/v1/totp/code/k"),
    ("POST", "/v1/totp/keys/k/unlock"),
    ("POST", "/api/v2/totp/secrets"),
    ("PUT", "/v1/auth/ratls/totp"),
    ("POST", "/api/v1/auth/totp/setup/"),
    ("POST", "/api/v1/auth/totp/activate/"),
    ("POST", "/api/v1/auth/totp/deactivate/"),
    ("POST", "/api/v1/auth/totp/challenge/"),
    ("POST", "/api/v1/auth/totp/verify/"),
    ("POST", "/api/v1/auth/totp/recovery-codes/"),
    ("POST", "/api/v1/auth/totp/unlock/"),
    ("POST", "/v1/auth/token/create"),
    ("POST", "/v1/auth/token/lookup"),
    ("POST", "/v1/auth/token/lookup-accessor"),
    ("POST", "/v1/auth/token/revoke-accessor"),
    ("POST", "/v1/auth/token/revoke"),
    ("POST", "/v1/auth/token/renew"),
    ("PUT", "/v1/sys/policies/acl/p"),
    ("POST", "/v1/sys/export"),
    ("POST", "/v1/sys/import"),
];

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

#[test]
fn otpauth_uri_corpus() {
    let Some(files) = corpus("otpauth_uri") else {
        return;
    };
    for (path, data) in files {
        let s = String::from_utf8_lossy(&data);
        if let Ok(k) = uri::parse(&s) {
            let issuer = k.issuer.as_deref().unwrap_or("");
            let built = uri::build(issuer, &k.label, &k.secret, &k.params);
            if let Err(e) = uri::parse(&built) {
                panic!(
                    "{}: parse({s:?}) = {k:?}, but its build {built:?} does not parse: {e}",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn base32_corpus() {
    let Some(files) = corpus("base32") else {
        return;
    };
    for (path, data) in files {
        let s = String::from_utf8_lossy(&data);
        if let Some(bytes) = decode_base32(&s) {
            let enc = encode_base32(&bytes);
            assert_eq!(
                decode_base32(&enc).as_deref(),
                Some(bytes.as_slice()),
                "{}: decode({s:?}) re-encoded as {enc:?} does not decode back",
                path.display()
            );
        }
    }
}

#[test]
fn policy_corpus() {
    let Some(files) = corpus("policy") else {
        return;
    };
    for (_path, data) in files {
        let s = String::from_utf8_lossy(&data);
        if let Ok(p) = totpd::auth::Policy::from_text(&s) {
            let mut acl = totpd::auth::Acl::default();
            acl.merge(&p);
            let _ = acl.capabilities("v1/totp/keys/k");
        }
    }
}

#[tokio::test]
async fn json_bodies_corpus() {
    let Some(files) = corpus("json_bodies") else {
        return;
    };
    // One application for all inputs, as the fuzz target keeps one.
    let app = TestApp::new().await;
    for (path, data) in files.into_iter().take(MAX_JSON_BODIES) {
        let Some((&pick, body)) = data.split_first() else {
            continue;
        };
        let (method, route) = ROUTES[pick as usize % ROUTES.len()];
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

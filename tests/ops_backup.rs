//! Backup, restore and status against the real binary: a backup taken under a write load
//! is a whole database; restored into a fresh data directory with the same key it gives
//! the same codes and keeps spent steps spent; a wrong key or a running daemon is
//! refused and changes nothing; the file is 0600 and an interrupted backup leaves
//! nothing at its path; `status --json` has every field with its type; and callers
//! without the rights get 403.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{fresh_step, make_token, parse_otp_url, reference_totp, seed, unix_now, Daemon};
use serde_json::{json, Value};

const MFA: &str = "/v1/identity/mfa/method/totp";
const SECRETS: &str = "/api/v2/totp/secrets";

/// Runs a CLI command to the end, off the async workers.
async fn run(mut c: Command) -> Output {
    tokio::task::spawn_blocking(move || c.output().expect("run totpd"))
        .await
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn integrity(path: &Path) -> String {
    let c = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    c.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

/// Every name in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A daemon on an existing data directory (not started by the harness's own setup).
fn daemon_on(data_dir: &Path) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut d = Daemon {
        socket: dir.path().join("totpd.sock"),
        data_dir: data_dir.to_path_buf(),
        tcp: None,
        child: None,
        extra: Vec::new(),
        dir,
    };
    d.spawn()
        .expect("daemon on the restored data dir did not start");
    d
}

/// A fresh data directory holding a copy of `from`'s sealing key (0600), as an operator
/// sets up a new host from a backup and the key.
fn fresh_data_dir(parent: &Path, from: &Daemon) -> PathBuf {
    let dir = parent.join("restored");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let key = dir.join("totpd.key");
    std::fs::copy(from.data_dir.join("totpd.key"), &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    dir
}

async fn add_agent_secret(d: &Daemon, b32: &str, label: &str) -> String {
    let r = d
        .req(
            "POST",
            SECRETS,
            Some(json!({"secret": b32, "label": label})),
            None,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    r.json["totp_secret"]["id"].as_str().unwrap().to_string()
}

async fn validate(d: &Daemon, method: &str, entity: &str, code: &str) -> u16 {
    d.req(
        "POST",
        &format!("{MFA}/validate"),
        Some(json!({"method_id": method, "entity_id": entity, "passcode": code})),
        None,
    )
    .await
    .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_under_load_is_whole_and_restores_with_the_same_codes_and_spent_steps() {
    let d = Daemon::start();
    // Agent secrets with seeds the test knows.
    let mut agents = Vec::new();
    for i in 0..5 {
        let b32 = seed(20);
        let id = add_agent_secret(&d, &b32, &format!("agent-{i}")).await;
        agents.push((id, common::raw(&b32)));
    }
    // An MFA secret whose current step is spent before the backup.
    let r = d
        .req("POST", MFA, Some(json!({"issuer": "Acme"})), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let method = r.json["data"]["method_id"].as_str().unwrap().to_string();
    let r = d
        .req(
            "POST",
            &format!("{MFA}/admin-generate"),
            Some(json!({"method_id": method, "entity_id": "alice"})),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let url = parse_otp_url(r.json["data"]["url"].as_str().unwrap());
    // Enough of the step left for the backup, the restore and a restart.
    fresh_step(30, 20).await;
    let spent_at = unix_now();
    let spent = reference_totp(&url.secret, "SHA1", 6, 30, spent_at);
    assert_eq!(validate(&d, &method, "alice", &spent).await, 200);

    // A write load beside the backup: agent secrets created and codes validated (by
    // another entity, with wrong codes, so alice's state is not touched).
    let d = Arc::new(d);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for w in 0..4 {
        let (d, stop, done, method) = (d.clone(), stop.clone(), done.clone(), method.clone());
        load.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) || n < 5 {
                let r = if w % 2 == 0 {
                    d.req(
                        "POST",
                        SECRETS,
                        Some(json!({"secret": seed(20), "label": format!("load-{w}-{n}")})),
                        None,
                    )
                    .await
                } else {
                    d.req(
                        "POST",
                        &format!("{MFA}/admin-generate"),
                        Some(json!({"method_id": method, "entity_id": format!("load-{w}-{n}")})),
                        None,
                    )
                    .await
                };
                if !matches!(r.status, 200 | 201) {
                    failures.push(format!("{}: {}", r.status, r.text));
                }
                n += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            failures
        }));
    }
    while done.load(Ordering::Relaxed) < 20 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let out_dir = tempfile::tempdir().unwrap();
    let path = out_dir.path().join("totpd.backup");
    let before = done.load(Ordering::Relaxed);
    let mut c = d.cli();
    c.args(["backup", "--json"]).arg(&path);
    let o = run(c).await;
    let during = done.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    assert!(o.status.success(), "{}", text(&o));
    for l in load {
        let failures = l.await.unwrap();
        assert!(
            failures.is_empty(),
            "writes failed during the backup: {failures:?}"
        );
    }
    assert!(during > before, "the load went on while the backup ran");
    let answer: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(answer["path"], json!(path));

    // Whole, private, and nothing left beside it.
    assert_eq!(integrity(&path), "ok");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(listing(out_dir.path()), ["totpd.backup"]);
    assert_eq!(answer["bytes"], std::fs::metadata(&path).unwrap().len());
    assert_eq!(
        listing(&d.data_dir.join("backup-tmp")),
        Vec::<String>::new(),
        "the daemon's copy is gone"
    );
    // The daemon recorded it (once the last byte was handed over).
    let mut last = Value::Null;
    for _ in 0..100 {
        last = d.req("GET", "/v1/sys/status", None, None).await.json["data"]["last_backup_utc"]
            .clone();
        if !last.is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(last, answer["taken_at_utc"]);

    // Restored into a fresh data directory with the same key, and started.
    let fresh = fresh_data_dir(out_dir.path(), &d);
    let mut c = d.cli();
    c.args(["restore"])
        .arg(&path)
        .arg("--data-dir")
        .arg(&fresh)
        .env_remove("CREDENTIALS_DIRECTORY");
    let o = run(c).await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("Success! Restored"),
        "{}",
        text(&o)
    );
    let restored = daemon_on(&fresh);

    // The same codes, by an independent TOTP implementation.
    fresh_step(30, 3).await;
    for (id, secret) in &agents {
        let before = unix_now();
        let r = restored
            .req("GET", &format!("/api/v2/totp/code/{id}"), None, None)
            .await;
        let after = unix_now();
        assert_eq!(r.status, 200, "{}", r.text);
        let want = [
            reference_totp(secret, "SHA1", 6, 30, before),
            reference_totp(secret, "SHA1", 6, 30, after),
        ];
        assert!(
            want.contains(&r.json["code"].as_str().unwrap().to_string()),
            "{id}: {} not in {want:?}",
            r.json["code"]
        );
    }
    // The step spent before the backup is still spent; the next one is not.
    assert!(
        unix_now() / 30 <= spent_at / 30 + 1,
        "still within the window of the spent code"
    );
    assert_eq!(validate(&restored, &method, "alice", &spent).await, 403);
    let next = reference_totp(&url.secret, "SHA1", 6, 30, spent_at + 30);
    assert_eq!(validate(&restored, &method, "alice", &next).await, 200);
}

#[tokio::test]
async fn restore_is_refused_while_the_daemon_runs_or_with_the_wrong_key_and_changes_nothing() {
    let mut d = Daemon::start();
    add_agent_secret(&d, &seed(20), "kept").await;
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("b.db");
    let mut c = d.cli();
    c.arg("backup").arg(&path);
    let o = run(c).await;
    assert!(o.status.success(), "{}", text(&o));
    add_agent_secret(&d, &seed(20), "after the backup").await;

    // While the daemon runs: refused, exit 1, one line saying why.
    let mut c = d.cli();
    c.arg("restore")
        .arg(&path)
        .arg("--data-dir")
        .arg(&d.data_dir);
    let o = run(c).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("in use by another totpd") && err.contains("stop the daemon"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // And so is a direct backup of its file.
    let mut c = d.cli();
    c.arg("backup")
        .arg(out.path().join("direct.db"))
        .arg("--data-dir")
        .arg(&d.data_dir);
    let o = run(c).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(!out.path().join("direct.db").exists());

    assert_eq!(d.stop(), Some(0));
    let db = d.data_dir.join("totpd.db");
    let before = std::fs::read(&db).unwrap();
    let files = listing(&d.data_dir);

    // With another key: refused before anything is replaced.
    let other = out.path().join("other.key");
    std::fs::write(&other, format!("{}\n", "ab".repeat(32))).unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut c = d.cli();
    c.arg("restore")
        .arg(&path)
        .arg("--data-dir")
        .arg(&d.data_dir)
        .arg("--key-file")
        .arg(&other);
    let o = run(c).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("does not open this backup") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(std::fs::read(&db).unwrap(), before, "byte-identical");
    assert_eq!(listing(&d.data_dir), files);

    // A file that is no database: refused the same way.
    let junk = out.path().join("junk.db");
    std::fs::write(&junk, vec![7u8; 8192]).unwrap();
    let mut c = d.cli();
    c.arg("restore")
        .arg(&junk)
        .arg("--data-dir")
        .arg(&d.data_dir);
    let o = run(c).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("does not check out"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read(&db).unwrap(), before, "byte-identical");
    assert_eq!(listing(&d.data_dir), files);

    // A direct backup of the stopped daemon's file works, and is whole.
    let direct = out.path().join("direct.db");
    let mut c = d.cli();
    c.arg("backup")
        .arg(&direct)
        .arg("--data-dir")
        .arg(&d.data_dir);
    let o = run(c).await;
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(integrity(&direct), "ok");
    assert_eq!(
        std::fs::metadata(&direct).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(common::count_rows(&direct, "agent_secrets"), 2);

    // With the right key, restored in place; the replaced file is kept beside it.
    let mut c = d.cli();
    c.args(["restore", "--json"])
        .arg(&path)
        .arg("--data-dir")
        .arg(&d.data_dir);
    let o = run(c).await;
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let kept = PathBuf::from(v["replaced"].as_str().unwrap());
    assert!(
        kept.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("totpd.db.replaced-"),
        "{kept:?}"
    );
    assert_eq!(std::fs::read(&kept).unwrap(), before);
    assert_eq!(common::count_rows(&db, "agent_secrets"), 1);
    d.spawn().unwrap();
    let r = d.req("GET", SECRETS, None, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let labels: Vec<&str> = r.json["totp_secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["kept"]);
}

/// A stand-in daemon on a Unix socket: answers `GET /v1/sys/backup` with headers
/// promising `promised` bytes, sends `sent` of them, then either closes the connection
/// or stalls (keeps it open, sending nothing).
fn fake_daemon(dir: &Path, promised: usize, sent: usize, stall: bool) -> PathBuf {
    use std::io::{Read, Write};
    let sock = dir.join("fake.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {promised}\r\n\r\n"
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&vec![0x42u8; sent]);
            let _ = s.flush();
            if stall {
                std::thread::sleep(Duration::from_secs(30));
            }
        }
    });
    sock
}

#[tokio::test]
async fn an_interrupted_backup_leaves_nothing_at_its_path() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let path = out.join("b.db");

    // The answer breaks off half way.
    let sock = fake_daemon(tmp.path(), 1 << 20, 100_000, false);
    let mut c = Command::new(common::BIN);
    c.env("TOTPD_SOCKET", &sock).arg("backup").arg(&path);
    let o = run(c).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("nothing was written at"),
        "{}",
        text(&o)
    );
    assert_eq!(listing(&out), Vec::<String>::new());

    // The operator stops it half way (SIGINT while bytes are still to come).
    std::fs::remove_file(&sock).unwrap();
    let sock = fake_daemon(tmp.path(), 1 << 20, 100_000, true);
    let mut child = Command::new(common::BIN)
        .env("TOTPD_SOCKET", &sock)
        .arg("backup")
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the partial file holds what was sent.
    let mut partial = false;
    for _ in 0..500 {
        partial = std::fs::read_dir(&out).unwrap().flatten().any(|e| {
            e.file_name().to_string_lossy().contains(".partial-")
                && e.metadata().is_ok_and(|m| m.len() >= 100_000)
        });
        if partial {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(partial, "the copy was being written under a temporary name");
    assert!(!path.exists(), "never at its path while incomplete");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let code = common::wait_timeout(&mut child, Duration::from_secs(10));
    assert_eq!(code, Some(1));
    assert_eq!(listing(&out), Vec::<String>::new());
}

#[tokio::test]
async fn status_shows_every_field_with_its_type() {
    let d = Daemon::start();
    add_agent_secret(&d, &seed(20), "counted").await;
    let o = run({
        let mut c = d.cli();
        c.args(["status", "--json"]);
        c
    })
    .await;
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["uptime_seconds"].is_u64(), "{v}");
    assert!(v["started_at"].as_str().unwrap().ends_with('Z'), "{v}");
    let bytes = v["database_bytes"].as_u64().unwrap();
    assert!(bytes >= 4096, "{v}");
    assert!(v["writer_queue_depth"].is_u64(), "{v}");
    assert!(v["key_id"].is_u64(), "{v}");
    assert!(
        v["last_backup"].is_null() && v["last_backup_utc"].is_null(),
        "{v}"
    );
    let now = unix_now() as i64;
    let t = v["server_time_utc"].as_i64().unwrap();
    assert!((now - 5..=now + 5).contains(&t), "{v}");
    assert_eq!(
        v["server_time"].as_str().unwrap(),
        totpd::api::fields::rfc3339(t)
    );
    let rows = v["table_rows"].as_object().unwrap();
    assert_eq!(rows["agent_secrets"], 1);
    assert!(rows.values().all(Value::is_u64), "{v}");
    assert!(
        rows.contains_key("tokens") && rows.contains_key("meta"),
        "{v}"
    );

    // The human form: one aligned `key: value` line each.
    let o = run({
        let mut c = d.cli();
        c.arg("status");
        c
    })
    .await;
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let col: Vec<usize> = out
        .lines()
        .map(|l| {
            let colon = l.find(": ").expect("key: value");
            colon + 2 + l[colon + 2..].find(|c: char| c != ' ').unwrap()
        })
        .collect();
    assert!(col.windows(2).all(|w| w[0] == w[1]), "aligned:\n{out}");
    for key in [
        "version:",
        "uptime:",
        "server time:",
        "database size:",
        "writer queue depth:",
        "key id:",
        "last backup:",
        "rows in agent_secrets:",
    ] {
        assert!(out.lines().any(|l| l.starts_with(key)), "{key}\n{out}");
    }

    // The metrics carry the writer and the database size.
    let m = d.req("GET", "/v1/sys/metrics", None, None).await;
    assert_eq!(m.status, 200);
    assert!(
        m.text.contains("totpd_writer_queue_depth 0\n"),
        "{}",
        m.text
    );
    assert!(
        m.text
            .contains("# TYPE totpd_writer_batch_size histogram\n"),
        "{}",
        m.text
    );
    assert!(
        m.text
            .contains("totpd_writer_batch_size_bucket{le=\"+Inf\"} "),
        "{}",
        m.text
    );
    let db_bytes = m
        .text
        .lines()
        .find_map(|l| l.strip_prefix("totpd_database_bytes "))
        .unwrap()
        .parse::<u64>()
        .unwrap();
    assert!(db_bytes >= 4096);
}

#[tokio::test]
async fn backup_and_status_need_their_rights() {
    let d = Daemon::start_tcp();
    let plain = make_token(&d, json!({"policies": ["default"]})).await;
    for path in ["/v1/sys/backup", "/v1/sys/status"] {
        let r = d
            .tcp_req("GET", path, &[("x-vault-token", plain.clone())], None)
            .await;
        assert_eq!(r.status, 403, "{path}: {}", r.text);
        assert_eq!(r.vault_error(), "permission denied");
        let r = d.tcp_req("GET", path, &[], None).await;
        assert_eq!(r.status, 403, "{path} without a token: {}", r.text);
    }
    // Read on sys/status is not sudo on sys/backup.
    let r = d
        .req(
            "PUT",
            "/v1/sys/policies/acl/ops",
            Some(json!({"policy": {"path": {"sys/status": {"capabilities": ["read"]}, "sys/backup": {"capabilities": ["read"]}}}})),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let ops = make_token(&d, json!({"policies": ["ops"]})).await;
    let r = d
        .tcp_req(
            "GET",
            "/v1/sys/status",
            &[("x-vault-token", ops.clone())],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = d
        .tcp_req("GET", "/v1/sys/backup", &[("x-vault-token", ops)], None)
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    // The root token has both; LIST is no read of either.
    let root = d.root_token();
    let r = d
        .tcp_req(
            "GET",
            "/v1/sys/backup",
            &[("x-vault-token", root.clone())],
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers["content-type"], "application/octet-stream",
        "{:?}",
        r.headers
    );
    assert!(r.text.starts_with("SQLite format 3\0"));
    let r = d
        .tcp_req(
            "GET",
            "/v1/sys/status?list=true",
            &[("x-vault-token", root)],
            None,
        )
        .await;
    assert_eq!(r.status, 405, "{}", r.text);
}

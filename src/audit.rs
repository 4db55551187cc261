//! The audit log: one JSON line per decision, answering "who did what, when, and what
//! came of it" long after the request log has rotated away.
//!
//! A decision is a validation (a code, a recovery code, a Nitride spend, a login), an
//! enrolment (a secret made or destroyed, a device set up, activated or removed), an
//! admin action (methods, policies, policy tokens, unlocks), or a token made, renewed or
//! revoked; and the refusal of any of these by the ACL (`denied`). Reads are not
//! decisions: lookups, lists, and an agent reading the code of its own secret (it holds
//! the seed anyway; a line per code read would drown the decisions).
//!
//! A line never holds a code, a seed, a token, a temp_token, a recovery code or an
//! otpauth URI: [`Object`] has no field that could carry one. Things are named by what is
//! safe to show: a method or agent secret id, a token's accessor, the first 8 characters
//! of a Nitride uuid, a policy or device name, an entity id.
//!
//! ```json
//! {"time":"2025-06-01T12:00:00.123Z","unix":1748779200,"request_id":"0b7c...","entity":"uid:0",
//!  "accessor":null,"route":"/v1/identity/mfa/method/totp/validate","action":"mfa.validate",
//!  "result":"refused","reason":"replay","object":{"method_id":"5d2e...","entity_id":"alice"}}
//! ```
//!
//! Where lines go ([`Sink`]): a file (`--audit-file`, appended, created 0600, reopened on
//! SIGHUP for logrotate), the journal (a log line on stderr with the target
//! `totpd::audit`, whose message is the JSON line), or nowhere. File writes happen on a
//! thread of their own behind a bounded queue, so the async workers never wait for the
//! disk. When the file cannot be written, the line goes to stderr instead (target
//! `totpd::audit`, level WARN), `totpd_audit_write_failures_total` counts it, and
//! `/v1/sys/health` says `audit_ok: false` until a write succeeds again (the file is
//! retried every second, and at once on SIGHUP).
//!
//! What a failure does to the decision is [`FailMode`]: `open` (the default) lets it
//! proceed; `closed` answers 503 in the surface's shape instead of any decision whose
//! line did not reach the file, and turns decisions away before they are made while the
//! file is failing.

use std::cell::RefCell;
use std::fs::File;
use std::future::Future;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::api::{AppState, Ctx};
use crate::metrics::Metrics;

/// The tracing target of audit lines on stderr (the journal sink, and the file sink's
/// fallback). `TOTPD_LOG` cannot turn it off: the daemon always lets it through at INFO.
pub const TARGET: &str = "totpd::audit";

/// Lines that may wait for the file writer; past that a line counts as a failure.
const QUEUE: usize = 4096;
/// Lines written with one `write` at most.
const BATCH: usize = 256;
/// While the file is failing, it is opened again this often.
const RETRY: Duration = Duration::from_secs(1);
/// In `closed` mode, a decision waits at most this long for its line to be written.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

// ----- configuration -----

/// Where audit lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    Off,
    /// A line on stderr (the journal, under systemd), target [`TARGET`].
    Journal,
    /// Appended to this file.
    File(PathBuf),
}

/// The sink as a flag names it (`--audit off|journal|file`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    Off,
    Journal,
    File,
}

/// What a decision does when its line cannot be written (`--audit-fail`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// The decision proceeds; the failure is counted, reported and logged (with the line).
    #[default]
    Open,
    /// The decision is answered 503 (and refused before it is made while the file fails).
    Closed,
}

/// The audit log's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub sink: Sink,
    pub fail: FailMode,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            sink: Sink::Off,
            fail: FailMode::Open,
        }
    }
}

// ----- events -----

/// What was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    MfaMethodCreate,
    MfaMethodUpdate,
    MfaMethodDelete,
    MfaGenerate,
    MfaAdminGenerate,
    MfaAdminDestroy,
    MfaValidate,
    MfaAdminUnlock,
    AgentSecretCreate,
    AgentSecretDelete,
    /// A TOTP engine key generated or imported (`<mount>/keys/<name>`).
    EngineKeyCreate,
    EngineKeyDelete,
    /// A code checked at a TOTP engine key (`POST <mount>/code/<name>`).
    EngineValidate,
    EngineUnlock,
    NitrideCreate,
    NitrideDelete,
    NitrideSpend,
    UserSetup,
    UserActivate,
    UserDeactivate,
    UserChallenge,
    UserVerify,
    UserRecoveryCodes,
    UserUnlock,
    TokenCreate,
    TokenRenew,
    TokenRevoke,
    PolicyWrite,
    PolicyDelete,
    /// Secrets exported, opened, to the caller (`sys/export`).
    SysExport,
    /// Secrets imported (`sys/import`).
    SysImport,
    /// A sealing-key rotation asked for (`sys/keys/rotate`).
    KeyRotate,
    /// The audit file was (re)opened: at start, on SIGHUP, or after a failure.
    AuditOpen,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::MfaMethodCreate => "mfa.method.create",
            Action::MfaMethodUpdate => "mfa.method.update",
            Action::MfaMethodDelete => "mfa.method.delete",
            Action::MfaGenerate => "mfa.generate",
            Action::MfaAdminGenerate => "mfa.admin_generate",
            Action::MfaAdminDestroy => "mfa.admin_destroy",
            Action::MfaValidate => "mfa.validate",
            Action::MfaAdminUnlock => "mfa.admin_unlock",
            Action::AgentSecretCreate => "agent.secret.create",
            Action::AgentSecretDelete => "agent.secret.delete",
            Action::EngineKeyCreate => "totp.key.create",
            Action::EngineKeyDelete => "totp.key.delete",
            Action::EngineValidate => "totp.validate",
            Action::EngineUnlock => "totp.unlock",
            Action::NitrideCreate => "nitride.token.create",
            Action::NitrideDelete => "nitride.token.delete",
            Action::NitrideSpend => "nitride.spend",
            Action::UserSetup => "user.setup",
            Action::UserActivate => "user.activate",
            Action::UserDeactivate => "user.deactivate",
            Action::UserChallenge => "user.challenge",
            Action::UserVerify => "user.verify",
            Action::UserRecoveryCodes => "user.recovery_codes",
            Action::UserUnlock => "user.unlock",
            Action::TokenCreate => "token.create",
            Action::TokenRenew => "token.renew",
            Action::TokenRevoke => "token.revoke",
            Action::PolicyWrite => "policy.write",
            Action::PolicyDelete => "policy.delete",
            Action::SysExport => "sys.export",
            Action::SysImport => "sys.import",
            Action::KeyRotate => "sys.keys.rotate",
            Action::AuditOpen => "audit.open",
        }
    }

    /// The decision a routed request is about (method after normalisation, route
    /// template as matched), if any: a 403 on it is audited as `denied` when the handler
    /// records nothing, and in `closed` mode it is turned away while the file fails.
    pub fn of_route(method: &Method, route: &str) -> Option<Action> {
        const MFA: &str = "/v1/identity/mfa/method/totp";
        let write = *method == Method::POST || *method == Method::PUT;
        let delete = *method == Method::DELETE;
        let sub = route.strip_prefix(MFA);
        Some(match sub {
            Some("") if write => Action::MfaMethodCreate,
            Some("/generate") if write => Action::MfaGenerate,
            Some("/admin-generate") if write => Action::MfaAdminGenerate,
            Some("/admin-destroy") if write => Action::MfaAdminDestroy,
            Some("/admin-unlock") if write => Action::MfaAdminUnlock,
            Some("/validate") if write => Action::MfaValidate,
            Some("/{method_id}") if write => Action::MfaMethodUpdate,
            Some("/{method_id}") if delete => Action::MfaMethodDelete,
            Some(_) => return None,
            None => match route {
                "/api/v2/totp/secrets" if write => Action::AgentSecretCreate,
                "/api/v2/totp/secrets/{id}" if delete => Action::AgentSecretDelete,
                "/v1/auth/{mount}/totp" if write => Action::NitrideCreate,
                "/v1/auth/{mount}/totp/{uuid}" if delete => Action::NitrideDelete,
                "/api/v1/auth/totp/setup" if write => Action::UserSetup,
                "/api/v1/auth/totp/activate" if write => Action::UserActivate,
                "/api/v1/auth/totp/deactivate" if write => Action::UserDeactivate,
                "/api/v1/auth/totp/challenge" if write => Action::UserChallenge,
                "/api/v1/auth/totp/verify" if write => Action::UserVerify,
                "/api/v1/auth/totp/recovery-codes" if write => Action::UserRecoveryCodes,
                "/api/v1/auth/totp/unlock" if write => Action::UserUnlock,
                "/v1/auth/token/create" if write => Action::TokenCreate,
                "/v1/auth/token/renew" | "/v1/auth/token/renew-self" if write => Action::TokenRenew,
                "/v1/auth/token/revoke"
                | "/v1/auth/token/revoke-self"
                | "/v1/auth/token/revoke-accessor"
                    if write =>
                {
                    Action::TokenRevoke
                }
                "/v1/sys/export" if write => Action::SysExport,
                "/v1/sys/import" if write => Action::SysImport,
                "/v1/sys/keys/rotate" if write => Action::KeyRotate,
                "/v1/sys/policies/acl/{name}" if write => Action::PolicyWrite,
                "/v1/sys/policies/acl/{name}" if delete => Action::PolicyDelete,
                _ => return None,
            },
        })
    }
}

/// What came of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Done: `"result":"ok","reason":"ok"`.
    Ok,
    /// Answered as a success with nothing changed (`exists`, `absent`, ...):
    /// `"result":"ok","reason":<why>`.
    Unchanged(&'static str),
    /// A code, recovery code, temp_token or policy token refused, for this reason
    /// (`invalid`, `replay`, `locked`, `malformed`, `spent`, ...); the caller was told
    /// only that it failed.
    Refused(&'static str),
    /// The caller lacks the right: `"result":"denied","reason":"permission"`.
    Denied,
}

impl Verdict {
    fn parts(self) -> (&'static str, &'static str) {
        match self {
            Verdict::Ok => ("ok", "ok"),
            Verdict::Unchanged(why) => ("ok", why),
            Verdict::Refused(why) => ("refused", why),
            Verdict::Denied => ("denied", "permission"),
        }
    }
}

/// What a decision was about. No variant has room for a code, a seed, a token, a
/// temp_token, a recovery code or a URI.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Object<'a> {
    /// Nothing known (a request refused before its body was read).
    None {},
    Method {
        method_id: &'a str,
    },
    MfaSecret {
        method_id: &'a str,
        entity_id: &'a str,
    },
    AgentSecret {
        secret_id: &'a str,
    },
    /// A key of Vault's TOTP secrets engine.
    EngineKey {
        mount: &'a str,
        name: &'a str,
    },
    /// A login-step user, and the device named, if one was.
    User {
        user: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        device: Option<&'a str>,
    },
    /// A login (`verify`): the temp_token's user (unknown when the temp_token was not
    /// good), what was typed (`totp` or `recovery_code`), and the login key's accessor.
    Login {
        user: Option<&'a str>,
        with: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        accessor: Option<&'a str>,
    },
    Policy {
        policy: &'a str,
    },
    /// A Nitride policy token: its mount (a spend names none), its uuid's first 8
    /// characters (none when what was sent is no uuid), its policy.
    PolicyToken {
        #[serde(skip_serializing_if = "Option::is_none")]
        mount: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        token: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        policy: Option<&'a str>,
    },
    /// An API token, by accessor (none when the token named was unknown).
    Token {
        accessor: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        entity_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        policies: Option<&'a [String]>,
    },
    /// Secrets exported or imported: whose (`entity_id` for an export of one entity's;
    /// none for every entity's, or an import), how many methods and secrets, and for an
    /// import what came of them. Never a secret.
    Transfer {
        #[serde(skip_serializing_if = "Option::is_none")]
        entity_id: Option<&'a str>,
        methods: usize,
        secrets: usize,
        #[serde(skip_serializing_if = "Option::is_none")]
        created: Option<usize>,
        #[serde(skip_serializing_if = "Option::is_none")]
        skipped: Option<usize>,
        #[serde(skip_serializing_if = "Option::is_none")]
        refused: Option<usize>,
    },
    /// The audit file itself.
    AuditFile {
        path: &'a Path,
        pid: u32,
        version: &'static str,
    },
}

/// One decision, as a handler reports it with [`record`].
#[derive(Debug, Clone)]
pub struct Event<'a> {
    pub action: Action,
    pub verdict: Verdict,
    pub object: Object<'a>,
}

impl<'a> Event<'a> {
    pub fn new(action: Action, verdict: Verdict, object: Object<'a>) -> Self {
        Event {
            action,
            verdict,
            object,
        }
    }
}

/// One line as written.
#[derive(Serialize)]
struct Line<'a> {
    time: String,
    unix: i64,
    request_id: &'a str,
    /// The caller's entity (none when the request carried no valid credential).
    entity: Option<&'a str>,
    /// The accessor of the caller's token (none for a socket peer without one).
    accessor: Option<&'a str>,
    route: &'a str,
    action: &'static str,
    result: &'static str,
    reason: &'static str,
    object: &'a Object<'a>,
}

fn line(req: &Request, ev: &Event<'_>) -> String {
    let now = SystemTime::now();
    let unix = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (result, reason) = ev.verdict.parts();
    let l = Line {
        time: humantime::format_rfc3339_millis(now).to_string(),
        unix,
        request_id: &req.request_id,
        entity: req.entity.as_deref(),
        accessor: req.accessor.as_deref(),
        route: &req.route,
        action: ev.action.as_str(),
        result,
        reason,
        object: &ev.object,
    };
    // Serialising plain strings and numbers cannot fail.
    serde_json::to_string(&l).unwrap_or_default()
}

// ----- the request a decision belongs to -----

/// What the middleware knows of the request being served, for its lines.
#[derive(Debug, Clone, Default)]
struct Request {
    request_id: String,
    route: String,
    entity: Option<String>,
    accessor: Option<String>,
}

/// The request's facts, and what its decisions left to settle.
#[derive(Default)]
struct Scope {
    req: Request,
    /// A handler recorded a line for this request.
    recorded: bool,
    /// A line could not be queued (closed mode: the answer becomes a 503).
    failed: bool,
    /// Lines queued for the file whose outcome the answer waits for (closed mode).
    pending: Vec<oneshot::Receiver<bool>>,
}

tokio::task_local! {
    static SCOPE: RefCell<Scope>;
}

/// Serves one routed request under the audit log (the middleware calls this around the
/// router): turns a decision away with 503 while the file fails in `closed` mode, lets
/// the handler [`record`] its lines with the request's id, route and caller, audits a
/// 403 on a decision the handler did not record as `denied`, and in `closed` mode
/// answers 503 instead of a decision whose line did not reach the file.
pub async fn serve(
    st: &AppState,
    ctx: &Ctx,
    method: &Method,
    route: &str,
    path: &str,
    handler: impl Future<Output = Response>,
) -> Response {
    let audit = &st.audit;
    if audit.is_off() {
        return handler.await;
    }
    let action = Action::of_route(method, route);
    let closed = audit.fail == FailMode::Closed;
    if action.is_some() && closed && !audit.healthy() {
        tracing::warn!("audit file failing: decision turned away (--audit-fail closed)");
        return unavailable(path);
    }
    let caller = ctx.caller().ok();
    let scope = Scope {
        req: Request {
            request_id: ctx.request_id.clone(),
            route: route.to_string(),
            entity: caller.map(|c| c.entity_id.clone()),
            accessor: caller.and_then(|c| c.token.as_ref().map(|t| t.accessor.clone())),
        },
        ..Scope::default()
    };
    let (resp, mut scope) = SCOPE
        .scope(RefCell::new(scope), async {
            let resp = handler.await;
            let scope = SCOPE.with(|s| std::mem::take(&mut *s.borrow_mut()));
            (resp, scope)
        })
        .await;
    if let Some(action) = action {
        if !scope.recorded && resp.status() == StatusCode::FORBIDDEN {
            let ev = Event {
                action,
                verdict: Verdict::Denied,
                object: Object::None {},
            };
            let req = scope.req.clone();
            audit.write(&req, &ev, &mut scope);
        }
    }
    if !closed {
        return resp;
    }
    let mut written = !scope.failed;
    for rx in scope.pending {
        written &= matches!(tokio::time::timeout(ACK_TIMEOUT, rx).await, Ok(Ok(true)));
    }
    if written {
        resp
    } else {
        tracing::warn!("audit line not written: answered 503 (--audit-fail closed)");
        unavailable(path)
    }
}

fn unavailable(path: &str) -> Response {
    crate::api::error_for_path(
        path,
        StatusCode::SERVICE_UNAVAILABLE,
        "the audit log cannot be written; try again shortly",
    )
}

/// Records one decision of the request being served: one call per decision point.
/// Outside a request (no scope), the line has no request id or route.
pub fn record(st: &AppState, ev: Event<'_>) {
    let audit = &st.audit;
    if audit.is_off() {
        return;
    }
    let done = SCOPE.try_with(|s| {
        let mut s = s.borrow_mut();
        s.recorded = true;
        let req = s.req.clone();
        audit.write(&req, &ev, &mut s);
    });
    if done.is_err() {
        let req = Request {
            request_id: "-".into(),
            route: "-".into(),
            ..Request::default()
        };
        audit.write(&req, &ev, &mut Scope::default());
    }
}

// ----- the sinks -----

/// The audit log of a running daemon (in the app state).
pub struct Audit {
    fail: FailMode,
    sink: Running,
}

enum Running {
    Off,
    Journal,
    File {
        tx: SyncSender<Msg>,
        shared: Arc<Shared>,
        thread: Mutex<Option<JoinHandle<()>>>,
    },
}

/// What the file writer and the request side share.
struct Shared {
    /// The last open or write of the file succeeded.
    healthy: AtomicBool,
    metrics: Arc<Metrics>,
}

impl Shared {
    /// A line the file did not take: counted, and logged on stderr so it is not lost.
    fn lost(&self, line: &str) {
        self.metrics.audit_write_failure();
        tracing::warn!(target: TARGET, "{line}");
    }
}

enum Msg {
    Line(String, Option<oneshot::Sender<bool>>),
    Stop,
}

/// Bumped by [`reopen`]; each file writer reopens its file when it sees a new value.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Reopens every audit file (SIGHUP, after logrotate has moved the old one away): lines
/// from now on go to a new file at the configured path.
pub fn reopen() {
    GENERATION.fetch_add(1, Ordering::SeqCst);
}

impl Audit {
    /// No audit log.
    pub fn off() -> Audit {
        Audit {
            fail: FailMode::Open,
            sink: Running::Off,
        }
    }

    /// Starts the audit log as configured. A file that cannot be opened is an error (a
    /// daemon should not start on a wrong path); one that opens but cannot be written
    /// (a full disk) starts as failing.
    pub fn start(cfg: &Config, metrics: Arc<Metrics>) -> Result<Audit, String> {
        let sink = match &cfg.sink {
            Sink::Off => Running::Off,
            Sink::Journal => Running::Journal,
            Sink::File(path) => {
                let file = open(path)
                    .map_err(|e| format!("cannot open the audit file {}: {e}", path.display()))?;
                let shared = Arc::new(Shared {
                    healthy: AtomicBool::new(true),
                    metrics,
                });
                let (tx, rx) = mpsc::sync_channel(QUEUE);
                let mut writer = FileWriter {
                    path: path.clone(),
                    file: Some(file),
                    shared: shared.clone(),
                    generation: GENERATION.load(Ordering::SeqCst),
                    last_try: Instant::now(),
                };
                writer.opened("start");
                let thread = std::thread::Builder::new()
                    .name("totpd-audit".into())
                    .spawn(move || writer.run(rx))
                    .map_err(|e| format!("cannot start the audit writer: {e}"))?;
                Running::File {
                    tx,
                    shared,
                    thread: Mutex::new(Some(thread)),
                }
            }
        };
        Ok(Audit {
            fail: cfg.fail,
            sink,
        })
    }

    fn is_off(&self) -> bool {
        matches!(self.sink, Running::Off)
    }

    /// False while the audit file cannot be written (`audit_ok` in health); the journal
    /// and no audit log are always fine.
    pub fn healthy(&self) -> bool {
        match &self.sink {
            Running::File { shared, .. } => shared.healthy.load(Ordering::SeqCst),
            _ => true,
        }
    }

    /// Writes or queues one line; in `closed` mode its outcome goes to the scope.
    fn write(&self, req: &Request, ev: &Event<'_>, scope: &mut Scope) {
        match &self.sink {
            Running::Off => {}
            Running::Journal => tracing::info!(target: TARGET, "{}", line(req, ev)),
            Running::File { tx, shared, .. } => {
                let text = line(req, ev);
                let (ack, rx) = match self.fail {
                    FailMode::Closed => {
                        let (t, r) = oneshot::channel();
                        (Some(t), Some(r))
                    }
                    FailMode::Open => (None, None),
                };
                match tx.try_send(Msg::Line(text, ack)) {
                    Ok(()) => scope.pending.extend(rx),
                    Err(TrySendError::Full(Msg::Line(text, _)))
                    | Err(TrySendError::Disconnected(Msg::Line(text, _))) => {
                        shared.lost(&text);
                        scope.failed = true;
                    }
                    Err(_) => scope.failed = true,
                }
            }
        }
    }

    /// Writes what is queued and stops the file writer (at shutdown). Blocks.
    pub fn close(&self) {
        if let Running::File { tx, thread, .. } = &self.sink {
            let _ = tx.send(Msg::Stop);
            if let Some(t) = thread.lock().ok().and_then(|mut t| t.take()) {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Audit {
    fn drop(&mut self) {
        self.close();
    }
}

/// Opens the audit file for appending, creating it 0600.
fn open(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

/// The thread that owns the audit file.
struct FileWriter {
    path: PathBuf,
    file: Option<File>,
    shared: Arc<Shared>,
    generation: u64,
    last_try: Instant,
}

impl FileWriter {
    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        loop {
            let first = rx.recv_timeout(RETRY / 4);
            let generation = GENERATION.load(Ordering::SeqCst);
            if generation != self.generation {
                self.generation = generation;
                self.reopen("sighup");
            } else if !self.shared.healthy.load(Ordering::SeqCst)
                && self.last_try.elapsed() >= RETRY
            {
                self.reopen("retry");
            }
            let mut batch = Vec::new();
            let mut stop = false;
            match first {
                Ok(Msg::Line(l, ack)) => batch.push((l, ack)),
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => stop = true,
                Err(RecvTimeoutError::Timeout) => continue,
            }
            while !stop && batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(Msg::Line(l, ack)) => batch.push((l, ack)),
                    Ok(Msg::Stop) => stop = true,
                    Err(_) => break,
                }
            }
            self.write(batch);
            if stop {
                // Whatever came before the stop is written; later lines had no daemon.
                let rest: Vec<_> = rx
                    .try_iter()
                    .filter_map(|m| match m {
                        Msg::Line(l, ack) => Some((l, ack)),
                        Msg::Stop => None,
                    })
                    .collect();
                self.write(rest);
                return;
            }
        }
    }

    /// Appends the lines with one write; acknowledges each with the outcome.
    fn write(&mut self, batch: Vec<(String, Option<oneshot::Sender<bool>>)>) {
        if batch.is_empty() {
            return;
        }
        let mut buf = String::with_capacity(batch.iter().map(|(l, _)| l.len() + 1).sum());
        for (l, _) in &batch {
            buf.push_str(l);
            buf.push('\n');
        }
        let result = match self.file.as_mut() {
            Some(f) => f.write_all(buf.as_bytes()),
            None => Err(std::io::Error::other("the audit file is not open")),
        };
        let ok = result.is_ok();
        if let Err(e) = result {
            self.failing(&e);
        } else {
            self.healthy();
        }
        for (l, ack) in batch {
            if !ok {
                self.shared.lost(&l);
            }
            if let Some(ack) = ack {
                let _ = ack.send(ok);
            }
        }
    }

    /// Opens the file again (a new one if the old was moved away) and writes an
    /// `audit.open` line to it, which proves it writable.
    fn reopen(&mut self, why: &'static str) {
        self.file = None;
        match open(&self.path) {
            Ok(f) => {
                self.file = Some(f);
                self.opened(why);
            }
            Err(e) => {
                self.last_try = Instant::now();
                self.failing(&e);
                self.open_line_lost(why);
            }
        }
    }

    /// Writes the `audit.open` line; its outcome sets the file's health.
    fn opened(&mut self, why: &'static str) {
        self.last_try = Instant::now();
        let mut text = self.open_line(why);
        text.push('\n');
        let result = match self.file.as_mut() {
            Some(f) => f.write_all(text.as_bytes()),
            None => return,
        };
        match result {
            Ok(()) => {
                if why != "start" {
                    tracing::info!(path = %self.path.display(), reason = why, "audit file reopened");
                }
                self.healthy();
            }
            Err(e) => {
                self.failing(&e);
                self.open_line_lost(why);
            }
        }
    }

    /// The `audit.open` line: the file, the daemon's pid and version, and why (`start`,
    /// `sighup`, or `retry` after a failure).
    fn open_line(&self, why: &'static str) -> String {
        let req = Request {
            request_id: "-".into(),
            route: "-".into(),
            ..Request::default()
        };
        let ev = Event {
            action: Action::AuditOpen,
            verdict: Verdict::Unchanged(why),
            object: Object::AuditFile {
                path: &self.path,
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION"),
            },
        };
        line(&req, &ev)
    }

    /// An `audit.open` line of a start or SIGHUP that did not reach the file is counted
    /// and logged like any line; the quiet retries every second are not.
    fn open_line_lost(&self, why: &'static str) {
        if why != "retry" {
            self.shared.lost(&self.open_line(why));
        }
    }

    fn healthy(&self) {
        if !self.shared.healthy.swap(true, Ordering::SeqCst) {
            tracing::info!(path = %self.path.display(), "audit file writable again");
        }
    }

    /// Marks the file failing; says so once per failure.
    fn failing(&self, e: &std::io::Error) {
        if self.shared.healthy.swap(false, Ordering::SeqCst) {
            tracing::error!(path = %self.path.display(), error = %e, "cannot write the audit file; lines go to stderr until it works again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_map_to_their_decisions() {
        let post = Method::POST;
        assert_eq!(
            Action::of_route(&post, "/v1/identity/mfa/method/totp/validate"),
            Some(Action::MfaValidate)
        );
        assert_eq!(
            Action::of_route(&Method::DELETE, "/v1/identity/mfa/method/totp/{method_id}"),
            Some(Action::MfaMethodDelete)
        );
        assert_eq!(
            Action::of_route(&Method::GET, "/v1/identity/mfa/method/totp/{method_id}"),
            None
        );
        assert_eq!(
            Action::of_route(&Method::GET, "/api/v2/totp/code/{id}"),
            None
        );
        assert_eq!(
            Action::of_route(&Method::PUT, "/v1/sys/policies/acl/{name}"),
            Some(Action::PolicyWrite)
        );
        assert_eq!(
            Action::of_route(&post, "/v1/auth/token/revoke-accessor"),
            Some(Action::TokenRevoke)
        );
        assert_eq!(Action::of_route(&post, "/v1/auth/token/lookup"), None);
    }

    #[test]
    fn a_line_is_one_json_object_with_every_field() {
        let req = Request {
            request_id: "r\"1".into(),
            route: "/v1/x".into(),
            entity: Some("uid:0".into()),
            accessor: None,
        };
        let ev = Event {
            action: Action::MfaValidate,
            verdict: Verdict::Refused("replay"),
            object: Object::MfaSecret {
                method_id: "m",
                entity_id: "alice",
            },
        };
        let text = line(&req, &ev);
        assert!(!text.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["request_id"], "r\"1");
        assert_eq!(v["action"], "mfa.validate");
        assert_eq!(
            (v["result"].as_str(), v["reason"].as_str()),
            (Some("refused"), Some("replay"))
        );
        assert_eq!(
            v["object"],
            serde_json::json!({"method_id": "m", "entity_id": "alice"})
        );
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
        assert!(v["unix"].as_i64().unwrap() > 1_600_000_000);
        assert!(v["accessor"].is_null());
        let none = Event {
            action: Action::TokenCreate,
            verdict: Verdict::Denied,
            object: Object::None {},
        };
        let v: serde_json::Value = serde_json::from_str(&line(&req, &none)).unwrap();
        assert_eq!(v["object"], serde_json::json!({}));
        assert_eq!(v["result"], "denied");
    }
}

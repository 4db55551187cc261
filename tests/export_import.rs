//! Export and import against the real binary: every kind of secret (a key of the TOTP
//! secrets engine too) moves from one daemon to a fresh one (another data directory,
//! another sealing key) with the same codes,
//! checked with an independent TOTP implementation, and a step spent before the export
//! still refused after the import; in both formats. A bundle does not open with a wrong
//! passphrase (a clear message, exit 1, nothing imported). Only sudo may export or
//! import (over TCP only a root token); the exported file is 0600; neither daemon's log
//! holds a secret; each export and import leaves an audit line.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use common::{fresh_step, make_token, reference_totp, unix_now, Daemon};
use serde_json::{json, Value};

const MFA: &str = "/v1/identity/mfa/method/totp";
const USER: &str = "/api/v1/auth/totp";
/// The TOTP secrets engine's key of the test, in the `totp` mount.
const ENGINE_KEY: &str = "deploy";

/// Exit code, stdout and stderr of the CLI run against `d` with `args`.
fn run(d: &Daemon, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut c = d.cli();
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let out: Output = c.output().expect("run the CLI");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A file in the daemon's temporary directory.
fn file(d: &Daemon, name: &str) -> PathBuf {
    d.dir.path().join(name)
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// A daemon that writes its audit lines to its stderr.
fn audited() -> Daemon {
    Daemon::start_with(&["--audit", "journal"], false)
}

/// Every secret a daemon holds, as `POST /v1/sys/export {"all": true}` shows them.
async fn exported(d: &Daemon) -> Vec<Value> {
    let r = d
        .req("POST", "/v1/sys/export", Some(json!({"all": true})), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json["data"]["secrets"].as_array().unwrap().clone()
}

/// What a daemon was given to hold, for checking another that imported it.
struct Held {
    method_id: String,
    /// The Vault MFA secret of alice (SHA256, 8 digits).
    mfa: Vec<u8>,
    agent_id: String,
    /// The agent secret of the test's own entity (SHA512, 6 digits, 60 s).
    agent: Vec<u8>,
    /// The login device of alice (SHA1, 6 digits).
    device: Vec<u8>,
    /// The TOTP engine's key `totp/deploy` (SHA1, 8 digits, skew 0).
    engine: Vec<u8>,
    /// The step alice spent on both before the export, and the engine key's too.
    spent: u64,
}

impl Held {
    fn seeds(&self) -> Vec<String> {
        [&self.mfa, &self.agent, &self.device, &self.engine]
            .iter()
            .flat_map(|s| {
                let b32 = data_encoding::BASE32_NOPAD.encode(s);
                [
                    b32.clone(),
                    b32.to_lowercase(),
                    data_encoding::HEXLOWER.encode(s),
                ]
            })
            .collect()
    }
}

/// Fills `d` with one secret of each kind, and spends the current step of alice's MFA
/// secret, her login device and the engine key.
async fn fill(d: &Daemon) -> Held {
    // Room for the export and imports to land within the step spent here.
    fresh_step(30, 15).await;
    let r = d
        .req(
            "POST",
            MFA,
            Some(json!({"issuer": "Acme", "method_name": "acme", "algorithm": "SHA256", "digits": 8})),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let method_id = r.json["data"]["method_id"].as_str().unwrap().to_string();
    let r = d
        .req(
            "POST",
            &format!("{MFA}/admin-generate"),
            Some(json!({"method_id": method_id, "entity_id": "alice"})),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let mfa = common::parse_otp_url(r.json["data"]["url"].as_str().unwrap()).secret;

    let agent_b32 = common::seed(32);
    let r = d
        .req(
            "POST",
            "/api/v2/totp/secrets",
            Some(json!({"secret": agent_b32, "label": "ci: bot", "issuer": "Git Hub", "algorithm": "SHA512", "period": 60})),
            None,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let agent_id = r.json["totp_secret"]["id"].as_str().unwrap().to_string();

    let alice = make_token(d, json!({"entity_id": "alice", "policies": ["default"]})).await;
    let r = d
        .req("POST", &format!("{USER}/setup/"), None, Some(&alice))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let device = common::raw(r.json["secret_key"].as_str().unwrap());

    // A key of the TOTP engine: no entity holds it; a label with a space and a colon.
    let r = d
        .req(
            "POST",
            &format!("/v1/totp/keys/{ENGINE_KEY}"),
            Some(json!({"generate": true, "issuer": "Acme Ops", "account_name": "ops: deploy@example.com", "digits": 8, "skew": 0})),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let engine = common::parse_otp_url(r.json["data"]["url"].as_str().unwrap()).secret;

    let now = unix_now();
    let spent = now / 30;
    // The activation spends the step on the device; the validation on the MFA secret.
    let r = d
        .req(
            "POST",
            &format!("{USER}/activate/"),
            Some(json!({"token": reference_totp(&device, "SHA1", 6, 30, now)})),
            Some(&alice),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let code = reference_totp(&mfa, "SHA256", 8, 30, now);
    let r = validate(d, &method_id, "alice", &code).await;
    assert_eq!(r, 200);
    let code = reference_totp(&engine, "SHA1", 8, 30, now);
    assert_eq!(engine_validate(d, &code).await, (200, Some(true)));
    Held {
        method_id,
        mfa,
        agent_id,
        agent: common::raw(&agent_b32),
        device,
        engine,
        spent,
    }
}

/// A validation of `code` at the engine key, as root: the status and `data.valid`.
async fn engine_validate(d: &Daemon, code: &str) -> (u16, Option<bool>) {
    let r = d
        .req(
            "POST",
            &format!("/v1/totp/code/{ENGINE_KEY}"),
            Some(json!({ "code": code })),
            None,
        )
        .await;
    (r.status, r.json["data"]["valid"].as_bool())
}

/// The engine key's code as `d` gives it, against the reference at that moment.
async fn engine_code_matches(d: &Daemon, h: &Held) {
    let before = unix_now();
    let r = d
        .req("GET", &format!("/v1/totp/code/{ENGINE_KEY}"), None, None)
        .await;
    let after = unix_now();
    assert_eq!(r.status, 200, "{}", r.text);
    let code = r.json["data"]["code"].as_str().unwrap();
    let refs = [before, after].map(|t| reference_totp(&h.engine, "SHA1", 8, 30, t));
    assert!(refs.iter().any(|c| c == code), "{code} vs {refs:?}");
}

/// `validate` of `code` for `entity` as root: the status.
async fn validate(d: &Daemon, method_id: &str, entity: &str, code: &str) -> u16 {
    // A token for the entity: validate checks the caller's own secret.
    let t = make_token(d, json!({"entity_id": entity, "policies": ["default"]})).await;
    d.req(
        "POST",
        &format!("{MFA}/validate"),
        Some(json!({"method_id": method_id, "passcode": code})),
        Some(&t),
    )
    .await
    .status
}

/// A login of alice with `code`: challenge (as root), then verify. The status of verify.
async fn login(d: &Daemon, code: &str) -> u16 {
    let r = d
        .req(
            "POST",
            &format!("{USER}/challenge/"),
            Some(json!({"user": "alice"})),
            None,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let temp = r.json["temp_token"].as_str().unwrap();
    d.req(
        "POST",
        &format!("{USER}/verify/"),
        Some(json!({"temp_token": temp, "token": code})),
        None,
    )
    .await
    .status
}

/// The agent secret's code as `d` gives it, against the reference at that moment.
async fn agent_code_matches(d: &Daemon, h: &Held) {
    let before = unix_now();
    let r = d
        .req(
            "GET",
            &format!("/api/v2/totp/code/{}", h.agent_id),
            None,
            None,
        )
        .await;
    let after = unix_now();
    assert_eq!(r.status, 200, "{}", r.text);
    let code = r.json["code"].as_str().unwrap();
    let refs = [before, after].map(|t| reference_totp(&h.agent, "SHA512", 6, 60, t));
    assert!(refs.iter().any(|c| c == code), "{code} vs {refs:?}");
}

/// Right after the import, within the spent step: the spent codes are refused, the
/// agent's code is the reference's.
async fn spent_still_spent(d: &Daemon, h: &Held) {
    let t = h.spent * 30;
    assert!(
        unix_now() / 30 <= h.spent + 1,
        "the test took more than a step"
    );
    let mfa_code = reference_totp(&h.mfa, "SHA256", 8, 30, t);
    assert_eq!(validate(d, &h.method_id, "alice", &mfa_code).await, 403);
    let device_code = reference_totp(&h.device, "SHA1", 6, 30, t);
    assert_eq!(login(d, &device_code).await, 401);
    agent_code_matches(d, h).await;
    // The engine's code of the spent step: "already used", as Vault answers.
    let engine_code = reference_totp(&h.engine, "SHA1", 8, 30, t);
    assert_eq!(engine_validate(d, &engine_code).await, (400, None));
    engine_code_matches(d, h).await;
}

/// After the spent step: the current codes of the independent implementation work.
async fn next_codes_work(d: &Daemon, h: &Held) {
    let now = unix_now();
    assert!(now / 30 > h.spent);
    let mfa_code = reference_totp(&h.mfa, "SHA256", 8, 30, now);
    assert_eq!(validate(d, &h.method_id, "alice", &mfa_code).await, 200);
    let device_code = reference_totp(&h.device, "SHA1", 6, 30, now);
    assert_eq!(login(d, &device_code).await, 200);
    agent_code_matches(d, h).await;
    engine_code_matches(d, h).await;
    let engine_code = reference_totp(&h.engine, "SHA1", 8, 30, now);
    assert_eq!(engine_validate(d, &engine_code).await, (200, Some(true)));
}

fn no_secret_in(log: &str, h: &Held, what: &str) {
    for s in h.seeds() {
        assert!(!log.contains(&s), "{what} holds a secret");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_moves_to_a_fresh_daemon_in_both_formats_with_the_same_codes() {
    let a = audited();
    let h = fill(&a).await;
    let pass = file(&a, "pass");
    std::fs::write(&pass, "correct horse battery staple\n").unwrap();

    // Both formats, to files: 0600, whatever was there before.
    let bundle = file(&a, "all.bundle");
    std::fs::write(&bundle, "old").unwrap();
    std::fs::set_permissions(&bundle, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, out, err) = run(
        &a,
        &[
            "export",
            "--all",
            "--format",
            "bundle",
            "--passphrase-file",
            pass.to_str().unwrap(),
            "-o",
            bundle.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("Exported 4 secrets"), "{out}");
    assert_eq!(mode(&bundle), 0o600);
    let text = std::fs::read_to_string(&bundle).unwrap();
    assert!(text.starts_with("totpd-bundle v1\n"), "{text}");
    no_secret_in(&text, &h, "the bundle");
    let uris = file(&a, "all.uris");
    let (code, out, err) = run(&a, &["export", "--all", "-o", uris.to_str().unwrap()], &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(mode(&uris), 0o600);
    let lines = std::fs::read_to_string(&uris).unwrap();
    assert_eq!(lines.lines().count(), 4, "{lines}");
    // Apps read the standard part of each line: the seed and parameters are there.
    for l in lines.lines() {
        let u = common::parse_otp_url(l);
        assert!([&h.mfa, &h.agent, &h.device, &h.engine].contains(&&u.secret));
        assert!(l.contains("totpd_kind="), "{l}");
    }
    let engine_line = lines
        .lines()
        .find(|l| l.contains("totpd_kind=vault_totp"))
        .expect("the engine key's line");
    let u = common::parse_otp_url(engine_line);
    assert_eq!(
        (u.label.as_str(), u.issuer.as_str(), u.digits),
        ("Acme Ops:ops: deploy@example.com", "Acme Ops", 8)
    );
    assert!(
        engine_line.contains(&format!(
            "totpd_mount=totp&totpd_name={ENGINE_KEY}&totpd_skew=0"
        )),
        "{engine_line}"
    );
    // No temporary file is left beside them.
    let left: Vec<String> = std::fs::read_dir(a.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // To standard output, the same lines; an entity's export holds no engine key.
    let (code, out, _) = run(&a, &["export", "--entity", "alice"], &[]);
    assert_eq!(code, Some(0));
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(!out.contains("vault_totp"), "{out}");

    // Into two fresh daemons, each with its own data directory and sealing key.
    let b = audited();
    let c = audited();
    assert_ne!(
        std::fs::read(a.data_dir.join("totpd.key")).unwrap(),
        std::fs::read(b.data_dir.join("totpd.key")).unwrap()
    );
    let (code, out, err) = run(
        &b,
        &[
            "import",
            bundle.to_str().unwrap(),
            "--passphrase-file",
            pass.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("secrets: 4 created, 0 skipped, 0 refused"),
        "{out}"
    );
    let (code, out, err) = run(&c, &["import", uris.to_str().unwrap()], &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("secrets: 4 created, 0 skipped, 0 refused"),
        "{out}"
    );

    // What arrived is what left: holders, parameters, last steps.
    let want = exported(&a).await;
    let key = want
        .iter()
        .find(|s| s["kind"] == "vault_totp")
        .expect("the engine key exported");
    assert_eq!(
        (
            &key["mount"],
            &key["name"],
            &key["issuer"],
            &key["account_name"],
            &key["skew"]
        ),
        (
            &json!("totp"),
            &json!(ENGINE_KEY),
            &json!("Acme Ops"),
            &json!("ops: deploy@example.com"),
            &json!(0)
        )
    );
    assert_eq!(key["last_step"], json!(h.spent));
    assert!(key.get("entity_id").is_none(), "{key}");
    let strip = |mut v: Vec<Value>| {
        for s in &mut v {
            s.as_object_mut().unwrap().remove("created_at");
        }
        v
    };
    assert_eq!(strip(exported(&b).await), strip(want.clone()));
    assert_eq!(strip(exported(&c).await), strip(want));

    for d in [&b, &c] {
        spent_still_spent(d, &h).await;
    }
    // The next step: the independent implementation's codes are the daemons' codes.
    let wait = 30 - unix_now() % 30;
    tokio::time::sleep(Duration::from_millis(wait * 1000 + 200)).await;
    for d in [&b, &c] {
        next_codes_work(d, &h).await;
    }

    // The bundle carries alice's recovery codes; URIs carry none.
    for (d, left) in [(&b, 10), (&c, 0)] {
        let alice = make_token(d, json!({"entity_id": "alice", "policies": ["default"]})).await;
        let r = d
            .req(
                "GET",
                &format!("{USER}/recovery-codes/"),
                None,
                Some(&alice),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json["remaining"], left);
    }

    // Imported again: everything is there, nothing is overwritten.
    let (code, out, err) = run(
        &b,
        &[
            "import",
            bundle.to_str().unwrap(),
            "--passphrase-file",
            pass.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("0 created, 6 skipped, 0 refused"), "{out}");
    let (code, out, err) = run(
        &b,
        &[
            "import",
            bundle.to_str().unwrap(),
            "--passphrase-file",
            pass.to_str().unwrap(),
            "--json",
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    let entry = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "vault_totp")
        .expect("the engine key's entry")
        .clone();
    assert_eq!(
        (
            &entry["mount"],
            &entry["name"],
            &entry["result"],
            &entry["reason"]
        ),
        (
            &json!("totp"),
            &json!(ENGINE_KEY),
            &json!("skipped"),
            &json!("exists")
        )
    );
    // A method changed since is refused, by name, with its enrolment; exit 1.
    let r = c
        .req(
            "POST",
            &format!("{MFA}/{}", h.method_id),
            Some(json!({"issuer": "Acme", "algorithm": "SHA256", "digits": 8, "skew": 0})),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let (code, out, err) = run(&c, &["import", uris.to_str().unwrap()], &[]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains(&format!(
            "refused  method {}: a method with this id exists here with another configuration",
            h.method_id
        )),
        "{out}"
    );
    assert!(err.contains("2 entries refused"), "{err}");

    // Audited, and no log holds a seed or the passphrase.
    for (d, action) in [(&a, "sys.export"), (&b, "sys.import"), (&c, "sys.import")] {
        let log = d.stderr();
        assert!(log.contains(&format!("\"action\":\"{action}\"")), "{log}");
        no_secret_in(&log, &h, "a daemon's log");
        assert!(!log.contains("correct horse"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_passphrase_imports_nothing_and_says_so() {
    let a = Daemon::start();
    let r = a
        .req(
            "POST",
            "/api/v2/totp/secrets",
            Some(json!({"secret": common::seed(20), "label": "bot"})),
            None,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let pass = file(&a, "pass");
    std::fs::write(&pass, "right").unwrap();
    let bundle = file(&a, "b");
    let (code, out, err) = run(
        &a,
        &[
            "export",
            "--all",
            "--format",
            "bundle",
            "--passphrase-file",
            pass.to_str().unwrap(),
            "-o",
            bundle.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{out}{err}");

    let b = Daemon::start();
    let wrong = file(&a, "wrong");
    std::fs::write(&wrong, "wrong\n").unwrap();
    let (code, out, err) = run(
        &b,
        &[
            "import",
            bundle.to_str().unwrap(),
            "--passphrase-file",
            wrong.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, Some(1), "{out}{err}");
    assert_eq!(
        err.trim(),
        "totpd: the bundle does not open with this passphrase (or it is damaged); nothing was imported"
    );
    assert!(out.is_empty());
    assert!(exported(&b).await.is_empty());
    // One trailing newline is not part of the passphrase: "right\n" opens it.
    std::fs::write(&pass, "right\n").unwrap();
    // A damaged bundle says the same.
    let mut bytes = std::fs::read(&bundle).unwrap();
    let at = bytes.len() - 10;
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    let damaged = file(&a, "damaged");
    std::fs::write(&damaged, &bytes).unwrap();
    let (code, _, err) = run(
        &b,
        &[
            "import",
            damaged.to_str().unwrap(),
            "--passphrase-file",
            pass.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, Some(1));
    assert!(
        err.contains("does not open with this passphrase (or it is damaged)"),
        "{err}"
    );
    assert!(exported(&b).await.is_empty());
    // Usage: no passphrase for a bundle, an empty one, none wanted for URIs.
    let (code, _, err) = run(&b, &["import", bundle.to_str().unwrap()], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("give --passphrase-file"), "{err}");
    let empty = file(&a, "empty");
    std::fs::write(&empty, "\n").unwrap();
    let (code, _, err) = run(
        &b,
        &[
            "import",
            bundle.to_str().unwrap(),
            "--passphrase-file",
            empty.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("the passphrase is empty"), "{err}");
    let (code, _, err) = run(&a, &["export", "--all", "--format", "bundle"], &[]);
    assert_eq!(code, Some(2), "{err}");
    let (code, _, err) = run(
        &a,
        &[
            "export",
            "--all",
            "--passphrase-file",
            pass.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, Some(2), "{err}");
    let (code, _, _) = run(&a, &["export"], &[]);
    assert_eq!(code, Some(2));
    // The right one, at last.
    let (code, out, err) = run(
        &b,
        &[
            "import",
            bundle.to_str().unwrap(),
            "--passphrase-file",
            pass.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(exported(&b).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_uris_become_agent_secrets_of_the_entity_named() {
    let d = Daemon::start();
    let seed = common::seed(20);
    let uris = file(&d, "apps.txt");
    std::fs::write(
        &uris,
        format!("# from an app\n\notpauth://totp/GitHub:ci-bot?secret={seed}&issuer=GitHub\n"),
    )
    .unwrap();
    for expected in ["1 created, 0 skipped", "0 created, 1 skipped"] {
        let (code, out, err) = run(
            &d,
            &["import", uris.to_str().unwrap(), "--entity", "alice"],
            &[],
        );
        assert_eq!(code, Some(0), "{out}{err}");
        assert!(out.contains(expected), "{out}");
    }
    let r = d
        .req(
            "POST",
            "/v1/sys/export",
            Some(json!({"entity_id": "alice"})),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let s = &r.json["data"]["secrets"][0];
    assert_eq!(
        (
            s["kind"].as_str(),
            s["label"].as_str(),
            s["issuer"].as_str(),
            s["secret"].as_str()
        ),
        (
            Some("agent"),
            Some("ci-bot"),
            Some("GitHub"),
            Some(seed.as_str())
        )
    );
    assert_eq!(r.json["data"]["secrets"].as_array().unwrap().len(), 1);
    // A malformed line: its number, never its text; nothing imported.
    std::fs::write(&uris, format!("otpauth://totp/x?secret={seed}&digits=7\n")).unwrap();
    let (code, _, err) = run(&d, &["import", uris.to_str().unwrap()], &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("line 1: uri: digits"), "{err}");
    assert!(!err.contains(&seed), "{err}");
}

/// The status line of an import with a 9 MiB body, over the socket: written beside the
/// read, since the daemon may answer (and close) before it has read the body.
async fn huge_import(d: &Daemon, token: Option<&str>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = format!("{{\"secrets\": [], \"pad\": \"{}\"}}", "x".repeat(9 << 20));
    let auth = token.map_or(String::new(), |t| format!("x-vault-token: {t}\r\n"));
    let head = format!(
        "POST /v1/sys/import HTTP/1.1\r\nhost: localhost\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let s = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(head.as_bytes()).await;
        let _ = wr.write_all(body.as_bytes()).await;
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(2).any(|w| w == b"\r\n") {
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    writer.abort();
    let text = String::from_utf8_lossy(&got).to_string();
    text.lines()
        .next()
        .unwrap_or_default()
        .trim()
        .chars()
        .take(12)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_sudo_may_export_or_import_and_over_tcp_only_root() {
    let d = Daemon::start_tcp();
    let plain = make_token(&d, json!({"policies": ["default"]})).await;
    let r = d
        .req(
            "PUT",
            "/v1/sys/policies/acl/mover",
            Some(json!({"policy": {"path": {
                "sys/export": {"capabilities": ["update", "sudo"]},
                "sys/import": {"capabilities": ["update", "sudo"]}
            }}})),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let mover = make_token(&d, json!({"policies": ["mover"]})).await;
    let root = d.root_token();
    let export = json!({"all": true});
    let import = json!({"secrets": [{"kind": "agent", "label": "x", "secret": common::seed(20), "algorithm": "SHA1", "digits": 6, "period": 30}]});

    // Without sudo: 403, over the socket and over TCP.
    for (path, body) in [("/v1/sys/export", &export), ("/v1/sys/import", &import)] {
        let r = d.req("POST", path, Some(body.clone()), Some(&plain)).await;
        assert_eq!(r.status, 403, "{path}: {}", r.text);
        assert_eq!(r.vault_error(), "permission denied");
        let auth = [("x-vault-token", plain.clone())];
        let r = d.tcp_req("POST", path, &auth, Some(body.clone())).await;
        assert_eq!(r.status, 403, "{path}: {}", r.text);
        // Sudo by policy: yes over the socket, no over TCP.
        let r = d.req("POST", path, Some(body.clone()), Some(&mover)).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text);
        let auth = [("x-vault-token", mover.clone())];
        let r = d.tcp_req("POST", path, &auth, Some(body.clone())).await;
        assert_eq!(r.status, 403, "{path}: {}", r.text);
        assert!(r.vault_error().contains("only a root token"), "{}", r.text);
        let auth = [("x-vault-token", root.clone())];
        let r = d.tcp_req("POST", path, &auth, Some(body.clone())).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text);
    }
    // The CLI says so and exits 1.
    let out = file(&d, "x");
    for args in [
        vec!["export", "--all", "-o", out.to_str().unwrap()],
        vec!["import", "/dev/null"],
    ] {
        let (code, stdout, err) = run(&d, &args, &[("TOTPD_TOKEN", &plain)]);
        if args[0] == "import" {
            // An empty file is refused before anything is sent.
            assert_eq!(code, Some(2), "{stdout}{err}");
            continue;
        }
        assert_eq!(code, Some(1), "{stdout}{err}");
        assert_eq!(err.trim(), "totpd: permission denied");
        assert!(!out.exists());
    }
    let uris = file(&d, "u");
    std::fs::write(
        &uris,
        format!("otpauth://totp/x?secret={}\n", common::seed(20)),
    )
    .unwrap();
    let (code, _, err) = run(
        &d,
        &["import", uris.to_str().unwrap()],
        &[("TOTPD_TOKEN", &plain)],
    );
    assert_eq!(code, Some(1));
    assert_eq!(err.trim(), "totpd: permission denied; nothing was imported");
    // Bad bodies are 400, naming the field and never the value.
    let seed = common::seed(20);
    for (body, says) in [
        (json!({}), "give entity_id"),
        (json!({"all": true, "entity_id": "a"}), "not both"),
    ] {
        let r = d.req("POST", "/v1/sys/export", Some(body), None).await;
        assert_eq!(r.status, 400, "{}", r.text);
        assert!(r.vault_error().contains(says), "{}", r.text);
    }
    for (body, says) in [
        (
            json!({"secrets": [{"kind": "agent", "label": "x", "secret": seed, "algorithm": "MD5", "digits": 6, "period": 30}]}),
            "secrets[0].algorithm",
        ),
        (
            json!({"secrets": [{"kind": "vault_mfa", "secret": seed, "algorithm": "SHA1", "digits": 6, "period": 30}]}),
            "secrets[0].method_id: must be set",
        ),
        (
            json!({"secrets": [{"kind": "agent", "label": "x", "secret": "AAAA", "algorithm": "SHA1", "digits": 6, "period": 30}]}),
            "secrets[0].secret",
        ),
        (
            json!({"secrets": [{"kind": "agent", "label": "x", "secret": seed, "algorithm": "SHA1", "digits": "six", "period": 30}]}),
            "secrets[0].digits",
        ),
        (
            json!({"secrets": [{"kind": "vault_totp", "name": "k", "skew": 1, "secret": seed, "algorithm": "SHA1", "digits": 6, "period": 30}]}),
            "secrets[0].mount: must be set",
        ),
        (
            json!({"secrets": [{"kind": "vault_totp", "mount": "totp", "name": "a b", "skew": 1, "secret": seed, "algorithm": "SHA1", "digits": 6, "period": 30}]}),
            "secrets[0].name",
        ),
        (
            json!({"secrets": [{"kind": "vault_totp", "mount": "totp", "name": "k", "skew": 2, "secret": seed, "algorithm": "SHA1", "digits": 6, "period": 30}]}),
            "secrets[0].skew: must be 0 or 1",
        ),
        (json!({"version": 2}), "version"),
        (
            json!({"recovery_codes": [{"entity_id": "alice", "selector": "K3M9", "hash": "$2b$10$x"}]}),
            "recovery_codes[0].hash",
        ),
        (
            json!({"methods": [{"method_id": "x", "issuer": "Acme", "algorithm": "SHA1", "digits": 6, "period": 30, "key_size": 20, "qr_size": 0, "skew": 1, "max_validation_attempts": 5}]}),
            "methods[0].method_id: not a UUID",
        ),
    ] {
        let r = d.req("POST", "/v1/sys/import", Some(body), None).await;
        assert_eq!(r.status, 400, "{}", r.text);
        assert!(r.vault_error().starts_with(says), "{}", r.text);
        assert!(!r.text.contains(&seed), "{}", r.text);
    }
    // Past the 64 KiB of other routes, an import body may be 8 MiB: read only once the
    // caller's rights are checked.
    let many: Vec<Value> = (0..600)
        .map(|i| json!({"kind": "agent", "label": format!("bot {i}"), "secret": common::seed(20), "algorithm": "SHA1", "digits": 6, "period": 30}))
        .collect();
    let big = json!({"entity_id": "bulk", "secrets": many});
    assert!(big.to_string().len() > 64 * 1024);
    let r = d.req("POST", "/v1/sys/import", Some(big), None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["data"]["counts"]["secrets"]["created"], 600);
    // The daemon answers before the body is all sent: the status line is what counts.
    assert_eq!(huge_import(&d, Some(&plain)).await, "HTTP/1.1 403");
    assert_eq!(huge_import(&d, None).await, "HTTP/1.1 413");
    // An empty import imports nothing, and says so.
    let r = d.req("POST", "/v1/sys/import", Some(json!({})), None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["data"]["created"], 0);
}

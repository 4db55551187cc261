//! The `totpd` command as a newcomer meets it, on the real binary: what it says when
//! input is empty, what it confirms, how a start with a missing socket group fails, how
//! the client finds the socket (and what it says when it cannot, or may not), and that
//! the unit files, the sysusers file and the README's install steps fit together.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{seed, Daemon, BIN};
use serde_json::Value;

/// Exit code, stdout and stderr of a finished command.
fn parts(out: Output) -> (Option<i32>, String, String) {
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Runs the CLI against `d`, optionally feeding `stdin`.
fn run(d: &Daemon, args: &[&str], stdin: Option<&str>) -> (Option<i32>, String, String) {
    let mut c = d.cli();
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    c.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = c.spawn().expect("run the CLI");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    parts(child.wait_with_output().unwrap())
}

/// The CLI with no --socket and no TOTPD_SOCKET, run in `cwd`, with
/// `RUNTIME_DIRECTORY` set to `runtime` (so no path outside the test is looked at
/// besides /run/totpd/totpd.sock).
fn discovering(cwd: &Path, runtime: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.current_dir(cwd)
        .env_remove("TOTPD_SOCKET")
        .env_remove("TOTPD_TOKEN")
        .env("RUNTIME_DIRECTORY", runtime)
        .stdin(Stdio::null());
    c
}

/// A temporary directory every uid may enter (as the daemon harness makes them).
fn open_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn one_line(err: &str) {
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line on stderr: {err}"
    );
}

// 1. An empty seed.

#[test]
fn an_empty_seed_is_a_usage_error_that_says_it_is_empty() {
    let d = Daemon::start();
    // `echo "$SEED" | totpd secret add --secret -` with $SEED unset sends one newline.
    for (args, stdin) in [
        (
            &["secret", "add", "--secret", "-", "--label", "x"][..],
            "\n",
        ),
        (&["secret", "add", "--secret", "-", "--label", "x"][..], ""),
        (&["secret", "add", "--secret", "  ", "--label", "x"][..], ""),
        (&["secret", "add", "--uri", "-"][..], " \n"),
    ] {
        let (code, out, err) = run(&d, args, Some(stdin));
        assert_eq!(code, Some(2), "{args:?}: usage error, exit 2: {err}");
        assert!(err.contains("empty"), "{args:?}: says it is empty: {err}");
        assert!(
            !err.contains("base32"),
            "{args:?}: not a base32 complaint: {err}"
        );
        one_line(&err);
        assert!(out.is_empty(), "{out}");
    }
    // Nothing was stored, and a real seed on stdin still works.
    let (code, out, _) = run(&d, &["secret", "list", "--json"], None);
    assert_eq!(code, Some(0));
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        Value::Array(vec![])
    );
    let (code, id, err) = run(
        &d,
        &["secret", "add", "--secret", "-", "--label", "x"],
        Some(&format!("{}\n", seed(20))),
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(id.trim().len(), 36, "{id}");
}

// 2. Confirmations.

#[test]
fn policy_writes_and_deletes_are_confirmed_unless_quiet() {
    let d = Daemon::start();
    let doc = r#"{"policy": {"path": {"api/v2/totp/*": {"capabilities": ["read"]}}}}"#;
    let (code, out, err) = run(
        &d,
        &["api", "PUT", "/v1/sys/policies/acl/app", "-d", doc],
        None,
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "Success! Uploaded policy: app\n");
    // --quiet (anywhere on the line) prints nothing; the policy is written all the same.
    for args in [
        &[
            "api",
            "PUT",
            "/v1/sys/policies/acl/quiet",
            "-d",
            doc,
            "--quiet",
        ][..],
        &["-q", "api", "PUT", "/v1/sys/policies/acl/quiet", "-d", doc][..],
    ] {
        let (code, out, err) = run(&d, args, None);
        assert_eq!((code, out.as_str()), (Some(0), ""), "{args:?}: {err}");
    }
    // An answer with a body is printed as it came, still JSON for scripts.
    let (code, out, _) = run(&d, &["api", "GET", "/v1/sys/policies/acl/quiet"], None);
    assert_eq!(code, Some(0));
    let v: Value = serde_json::from_str(&out).expect("the body, as JSON");
    assert_eq!(v["data"]["name"], "quiet");
    let (code, out, _) = run(&d, &["api", "DELETE", "/v1/sys/policies/acl/app"], None);
    assert_eq!(
        (code, out.as_str()),
        (Some(0), "Success! Deleted policy: app\n")
    );
    let (code, out, _) = run(
        &d,
        &["api", "-i", "DELETE", "/v1/sys/policies/acl/quiet", "-q"],
        None,
    );
    assert_eq!((code, out.as_str()), (Some(0), "HTTP 204\n"));
}

#[test]
fn secret_rm_and_nitride_delete_are_confirmed_unless_quiet() {
    let d = Daemon::start();
    let add = || {
        let (code, out, err) = run(
            &d,
            &[
                "secret",
                "add",
                "--secret",
                &seed(20),
                "--label",
                "x",
                "--json",
            ],
            None,
        );
        assert_eq!(code, Some(0), "{err}");
        let v: Value = serde_json::from_str(&out).expect("--json stays JSON");
        v["totp_secret"]["id"].as_str().unwrap().to_string()
    };
    let id = add();
    let (code, out, err) = run(&d, &["secret", "rm", &id], None);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, format!("Success! Deleted secret: {id}\n"));
    let id = add();
    let (code, out, err) = run(&d, &["secret", "rm", &id, "--quiet"], None);
    assert_eq!((code, out.as_str()), (Some(0), ""), "{err}");
    let (code, out, _) = run(&d, &["secret", "list", "--json"], None);
    assert_eq!(code, Some(0));
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        Value::Array(vec![])
    );

    // nitride delete, the other command that deleted in silence.
    let doc = r#"{"policy": {"path": {"a/*": {"capabilities": ["read"]}}}}"#;
    let (code, ..) = run(
        &d,
        &["api", "PUT", "/v1/sys/policies/acl/deploy", "-d", doc],
        None,
    );
    assert_eq!(code, Some(0));
    let (code, uuid, err) = run(
        &d,
        &["nitride", "create", "--policy", "deploy", "--ttl", "10m"],
        None,
    );
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err) = run(&d, &["nitride", "delete", uuid.trim()], None);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out,
        format!("Success! Deleted token: {} (mount ratls)\n", &uuid[..8])
    );
}

// 3. A socket group that does not exist.

#[test]
fn a_missing_socket_group_stops_the_start_before_anything_is_created() {
    let group = "totpd-test-no-such-group";
    assert!(nix::unistd::Group::from_name(group).unwrap().is_none());
    let dir = open_tempdir();
    let config = dir.path().join("totpd.toml");
    std::fs::write(&config, format!("socket_group = \"{group}\"\n")).unwrap();
    for how in [
        vec!["--socket-group".to_string(), group.to_string()],
        vec!["--config".to_string(), config.display().to_string()],
    ] {
        let data = dir.path().join("data");
        let sock = dir.path().join("run").join("totpd.sock");
        let out = Command::new(BIN)
            .args(["serve", "--dev", "--data-dir"])
            .arg(&data)
            .arg("--socket")
            .arg(&sock)
            .args(&how)
            .env_remove("TOTPD_SOCKET")
            .env_remove("TOTPD_SOCKET_GROUP")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let (code, _, err) = parts(out);
        assert_eq!(code, Some(1), "{how:?}: {err}");
        one_line(&err);
        assert!(
            err.contains(&format!("socket group \"{group}\" does not exist"))
                && err.contains(&format!("groupadd --system {group}"))
                && err.contains("socket_group"),
            "{how:?}: names the group and the way out: {err}"
        );
        assert!(!sock.exists(), "{how:?}: no socket file is left behind");
        assert!(!data.exists(), "{how:?}: nothing is created");
    }
    // A group that exists (given as a number) is set on the socket.
    let gid = nix::unistd::getegid().as_raw();
    let d = Daemon::start_with(&["--socket-group", &gid.to_string()], false);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&d.socket).unwrap().gid(), gid);
}

// 7. Finding the socket, and naming every place looked at.

#[test]
fn without_a_socket_the_cli_names_every_path_it_looked_at() {
    if Path::new("/run/totpd/totpd.sock").exists() {
        eprintln!("SKIPPED: /run/totpd/totpd.sock exists on this machine, so the client finds it");
        return;
    }
    let mut d = Daemon::start();
    let cwd = open_tempdir();
    let runtime = cwd.path().join("runtime");
    // The dev layout: ./totpd-data/totpd.sock in the current directory.
    std::fs::create_dir(cwd.path().join("totpd-data")).unwrap();
    std::os::unix::fs::symlink(&d.socket, cwd.path().join("totpd-data/totpd.sock")).unwrap();
    let (code, out, err) = parts(
        discovering(cwd.path(), &runtime)
            .args(["api", "GET", "/v1/sys/health"])
            .output()
            .unwrap(),
    );
    assert_eq!(code, Some(0), "finds ./totpd-data/totpd.sock: {err}");
    assert!(out.contains("initialized"), "{out}");

    // The dev daemon stopped: its socket is gone, and the error names every path.
    assert_eq!(d.stop(), Some(0));
    let (code, _, err) = parts(
        discovering(cwd.path(), &runtime)
            .args(["secret", "list"])
            .output()
            .unwrap(),
    );
    assert_eq!(code, Some(3), "{err}");
    one_line(&err);
    for p in [
        "./totpd-data/totpd.sock".to_string(),
        runtime.join("totpd.sock").display().to_string(),
        "/run/totpd/totpd.sock".to_string(),
    ] {
        assert!(err.contains(&p), "names {p}: {err}");
    }
    assert!(
        err.contains("serve --dev") && err.contains("TOTPD_SOCKET"),
        "{err}"
    );

    // A socket that was given is the only one named.
    let (code, _, err) = parts(
        discovering(cwd.path(), &runtime)
            .args(["--socket", "/nonexistent/totpd.sock", "secret", "list"])
            .output()
            .unwrap(),
    );
    assert_eq!(code, Some(3));
    assert!(
        err.contains("/nonexistent/totpd.sock") && !err.contains("totpd-data"),
        "{err}"
    );
}

// 8. A socket this user may not open.

/// Runs the CLI against `sock` as a user that may not open it: as uid 65534 when this
/// process is root (root passes every permission check), else as ourselves.
fn denied_client(sock: &Path) -> (Option<i32>, String, String) {
    let mut c = Command::new(BIN);
    c.args(["secret", "list", "--socket"])
        .arg(sock)
        .env_remove("TOTPD_SOCKET")
        .stdin(Stdio::null());
    if nix::unistd::geteuid().is_root() {
        // std drops the supplementary groups when root sets a uid.
        c.uid(65534).gid(65534);
    }
    parts(c.output().unwrap())
}

#[test]
fn a_socket_this_user_may_not_open_says_so_and_how_to_fix_it() {
    let root = nix::unistd::geteuid().is_root();
    eprintln!(
        "running the client as {}",
        if root {
            "uid 65534 (this test runs as root)"
        } else {
            "this uid"
        }
    );
    let dir = open_tempdir();
    let sock = dir.path().join("totpd.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    // Root's own socket at 0660: another uid is neither owner nor in its group. As an
    // ordinary user, a socket of our own at 0000 refuses us the same way.
    let mode = if root { 0o660 } else { 0o000 };
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(mode)).unwrap();
    let (code, out, err) = denied_client(&sock);
    assert_eq!(code, Some(3), "{out} {err}");
    one_line(&err);
    assert!(
        err.contains(&sock.display().to_string()),
        "names the socket: {err}"
    );
    assert!(
        err.contains(&format!("mode {mode:04o}")),
        "says its mode: {err}"
    );
    assert!(
        err.contains("--socket-mode") && err.contains("--socket-group"),
        "says how to fix it: {err}"
    );
    assert!(
        !err.contains("is it running"),
        "the daemon is not the problem: {err}"
    );

    // A directory on the way that this user may not pass.
    if root {
        let closed = dir.path().join("closed");
        std::fs::create_dir(&closed).unwrap();
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
        let sock = closed.join("totpd.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
        let (code, _, err) = denied_client(&sock);
        assert_eq!(code, Some(3), "{err}");
        one_line(&err);
        assert!(
            err.contains(&sock.display().to_string()) && err.contains("directory"),
            "{err}"
        );
    }
}

// 4, 5, 6 and 9: the unit files, the sysusers file, the key and the README.

fn repo_file(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The values of `Key=` lines of a unit file (comments left out).
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(&format!("{key}=")))
        .map(|v| v.trim().to_string())
        .collect()
}

#[test]
fn the_units_user_and_group_are_created_by_the_sysusers_file() {
    let service = repo_file("systemd/totpd.service");
    let socket = repo_file("systemd/totpd.socket");
    let sysusers = repo_file("systemd/totpd.sysusers");
    let entries: Vec<Vec<&str>> = sysusers
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect())
        .collect();
    // `u NAME` makes the user and a group of the same name; `g NAME` a group.
    let users: Vec<&str> = entries
        .iter()
        .filter(|e| e[0] == "u")
        .map(|e| e[1])
        .collect();
    let groups: Vec<&str> = entries
        .iter()
        .filter(|e| e[0] == "u" || e[0] == "g")
        .map(|e| e[1])
        .collect();
    for u in unit_values(&service, "User")
        .into_iter()
        .chain(unit_values(&socket, "SocketUser"))
    {
        assert!(
            users.contains(&u.as_str()),
            "user {u} is made by totpd.sysusers"
        );
    }
    for g in unit_values(&service, "Group")
        .into_iter()
        .chain(unit_values(&socket, "SocketGroup"))
    {
        assert!(
            groups.contains(&g.as_str()),
            "group {g} is made by totpd.sysusers"
        );
    }
    assert!(!users.is_empty());

    // systemd-sysusers itself accepts the file and makes them (in a scratch root).
    let scratch = tempfile::tempdir().unwrap();
    std::fs::create_dir(scratch.path().join("etc")).unwrap();
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/totpd.sysusers");
    match Command::new("systemd-sysusers")
        .arg(format!("--root={}", scratch.path().display()))
        .arg(&file)
        .output()
    {
        Ok(out) => {
            let (code, _, err) = parts(out);
            assert_eq!(code, Some(0), "systemd-sysusers: {err}");
            let passwd = std::fs::read_to_string(scratch.path().join("etc/passwd")).unwrap();
            let group = std::fs::read_to_string(scratch.path().join("etc/group")).unwrap();
            for u in &users {
                assert!(
                    passwd.lines().any(|l| l.starts_with(&format!("{u}:"))),
                    "{passwd}"
                );
                assert!(
                    group.lines().any(|l| l.starts_with(&format!("{u}:"))),
                    "{group}"
                );
            }
        }
        Err(_) => eprintln!("SKIPPED part: systemd-sysusers is not installed"),
    }
}

#[test]
fn the_readme_installs_where_the_unit_looks_and_names_the_right_credential() {
    let readme = repo_file("README.md");
    let service = repo_file("systemd/totpd.service");
    // 5. The binary goes where ExecStart= runs it.
    let exec = unit_values(&service, "ExecStart");
    assert_eq!(exec.len(), 1);
    let bin = exec[0].split_whitespace().next().unwrap();
    let dir = Path::new(bin).parent().unwrap().display().to_string();
    assert!(
        readme.contains(&format!("install -m 0755 target/release/totpd {dir}/")),
        "README installs into {dir}, where ExecStart={bin} looks"
    );
    // 6. The credential name the unit and README give is the one totpd reads.
    for text in [&readme, &service] {
        for key in ["LoadCredential=", "LoadCredentialEncrypted="] {
            for arg in text.split(key).skip(1) {
                if arg.starts_with(|c: char| c.is_alphanumeric()) {
                    assert!(
                        arg.starts_with("totpd.key:"),
                        "credential totpd.key: {key}{arg:.40}"
                    );
                }
            }
        }
    }
    assert!(readme.contains("LoadCredential=totpd.key:"));
    // 9. The API reference is linked; nothing points outside the repository.
    assert!(readme.contains("[docs/API.md](docs/API.md)"));
    assert!(!readme.contains("../shared"));
    // The two commands.
    assert!(readme.contains("cargo run --release -- serve --dev"));
    assert!(readme.contains("\ncargo test\n"));
}

/// Starts `serve --dev` with `CREDENTIALS_DIRECTORY=creds`, as systemd's
/// LoadCredential= does; returns the child once it answers, or its stderr.
fn serve_with_credentials(dir: &Path, creds: &Path) -> Result<std::process::Child, String> {
    let sock = dir.join("totpd.sock");
    let err_path = dir.join("stderr");
    let mut child = Command::new(BIN)
        .args(["serve", "--dev", "--data-dir"])
        .arg(dir.join("data"))
        .arg("--socket")
        .arg(&sock)
        .env("CREDENTIALS_DIRECTORY", creds)
        .env_remove("TOTPD_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Err(format!(
                "exited {s}: {}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            ));
        }
        if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
            return Ok(child);
        }
        assert!(Instant::now() < deadline, "not up after 20s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stop(mut child: std::process::Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(
        common::wait_timeout(&mut child, Duration::from_secs(40)),
        Some(0)
    );
}

#[test]
fn a_key_made_as_the_readme_says_is_taken_as_the_credential() {
    // The README's steps: `totpd key generate` under umask 077, in a file named as the
    // credential totpd reads: $CREDENTIALS_DIRECTORY/totpd.key. (32 raw random bytes
    // still do, as the test of old key files shows.)
    let dir = tempfile::tempdir().unwrap();
    let creds: PathBuf = dir.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    let key = creds.join("totpd.key");
    let made = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 077 && '{}' key generate > '{}'",
            BIN,
            key.display()
        ))
        .status()
        .unwrap();
    assert!(made.success());
    let child = serve_with_credentials(dir.path(), &creds).unwrap();
    stop(child);
    assert!(
        !dir.path().join("data/totpd.key").exists(),
        "no key file is made when the credential is there"
    );
    // The same key restarts the database; another one is refused.
    stop(serve_with_credentials(dir.path(), &creds).unwrap());
    let hex: String = (0..32).map(|i| format!("{:02x}", i * 7 % 256)).collect();
    std::fs::write(&key, format!("{hex}\n")).unwrap();
    let err = serve_with_credentials(dir.path(), &creds).unwrap_err();
    assert!(err.contains("does not open database"), "{err}");
    // The error names the key that was used: the credential, not the unused key file.
    assert!(err.contains(&key.display().to_string()), "{err}");
}

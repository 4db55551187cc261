//! The authenticator app for agents through the real binary: the `totpd` CLI, as root
//! and as another uid over the socket, and the daemon's log, which must carry request
//! lines but never a seed or a code. The HTTP surface itself is tested in-process in
//! `agent.rs`.

mod common;

use std::os::unix::process::CommandExt;

use common::{reference_totp, unix_now, Daemon};
use serde_json::{json, Value};

const SECRETS: &str = "/api/v2/totp/secrets";

/// A fresh random seed, base32.
fn seed(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    getrandom::getrandom(&mut b).unwrap();
    data_encoding::BASE32_NOPAD.encode(&b)
}

fn raw(b32: &str) -> Vec<u8> {
    data_encoding::BASE32_NOPAD.decode(b32.as_bytes()).unwrap()
}

#[tokio::test]
async fn neither_a_seed_nor_a_code_reaches_the_log() {
    let mut d = Daemon::start();
    let mut seeds = Vec::new();
    let mut codes = Vec::new();
    for i in 0..7 {
        let s = seed(20 + i);
        let r = d
            .req(
                "POST",
                SECRETS,
                Some(json!({"secret": s, "label": format!("s{i}")})),
                None,
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        let id = r.json["totp_secret"]["id"].as_str().unwrap().to_string();
        seeds.push(s);
        d.req("GET", SECRETS, None, None).await;
        let r = d
            .req("GET", &format!("/api/v2/totp/code/{id}"), None, None)
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        codes.push(r.json["code"].as_str().unwrap().to_string());
    }
    d.stop();
    let log = d.stderr();
    assert!(
        log.contains("route=/api/v2/totp/code/{id}"),
        "no request lines in the log"
    );
    for s in &seeds {
        assert!(!log.contains(s.as_str()), "a seed reached the log");
    }
    for c in &codes {
        assert!(
            !log.contains(&format!("{c} ")) && !log.contains(&format!("={c}")),
            "a code reached the log"
        );
    }
}

#[test]
fn cli_round_trip_as_root_and_as_a_uid_without_a_token() {
    let d = Daemon::start();
    let mut uids: Vec<Option<u32>> = vec![None];
    if common::can_switch_uid() {
        uids.push(Some(65534));
    }
    for uid in uids {
        let run = |args: &[&str]| {
            let mut c = d.cli();
            c.args(args);
            if let Some(u) = uid {
                c.uid(u).gid(u);
            }
            let out = c.output().unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).trim().to_string(),
                String::from_utf8_lossy(&out.stderr).to_string(),
            )
        };
        let s = seed(20);
        let uri = format!(
            "otpauth://totp/Forge:ci-bot?secret={s}&issuer=Forge&algorithm=SHA256&digits=8"
        );
        let (code, id, err) = run(&["secret", "add", "--uri", &uri]);
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(id.len(), 36, "prints the id only: {id}");
        let s2 = seed(16);
        let (code, id2, _) = run(&["secret", "add", "--secret", &s2, "--label", "plain"]);
        assert_eq!(code, Some(0));

        let (code, table, _) = run(&["secret", "list"]);
        assert_eq!(code, Some(0));
        assert!(
            table.contains(&id) && table.contains(&id2),
            "full ids in the list:\n{table}"
        );
        assert!(table.contains("ci-bot") && table.contains("Forge"));
        assert!(!table.contains(&s) && !table.contains(&s2));

        let before = unix_now();
        let (code, out, _) = run(&["code", &id]);
        let after = unix_now();
        assert_eq!(code, Some(0));
        let want = [before, after].map(|t| reference_totp(&raw(&s), "SHA256", 8, 30, t));
        assert!(want.contains(&out), "{out:?} vs {want:?}");

        // --socket after the subcommand works too.
        let sock = d.socket.display().to_string();
        let mut c = std::process::Command::new(common::BIN);
        c.args(["code", &id2, "--json", "--socket", &sock])
            .env_remove("TOTPD_SOCKET");
        if let Some(u) = uid {
            c.uid(u).gid(u);
        }
        let out = c.output().unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["period"], 30);

        let (code, _, _) = run(&["secret", "rm", &id]);
        assert_eq!(code, Some(0));
        let (code, _, err) = run(&["secret", "rm", &id]);
        assert_eq!(code, Some(1));
        assert!(err.contains("not found"), "{err}");
        let (code, _, err) = run(&["secret", "add", "--secret", "short", "--label", "x"]);
        assert_eq!(code, Some(1));
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        run(&["secret", "rm", &id2]);
    }
    // Unreachable daemon: exit 3 and a clear line.
    let out = std::process::Command::new(common::BIN)
        .args(["--socket", "/nonexistent/totpd.sock", "secret", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach totpd"));
}

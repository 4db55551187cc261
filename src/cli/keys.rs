//! `totpd key`: the sealing keys. `generate` prints a key ring (made here: the daemon
//! never writes a key), `rotate` has the daemon re-seal every value under the ring's
//! current key and waits until no value uses an old key, `status` shows which key ids
//! the sealed values use.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use totpd::client::{Client, ClientError};
use totpd::store::seal::KeyRing;

use super::status::vault_refusal;
use crate::Printed;

#[derive(clap::Subcommand)]
pub enum KeyCmd {
    /// Print a new key ring to standard output: one new random key, marked current; with
    /// --ring FILE, FILE's keys plus a new one, current, under the next free id. Write it
    /// where the daemon reads its key, mode 0600, then restart the daemon:
    ///   (umask 077 && totpd key generate --ring /etc/totpd/totpd.key > /etc/totpd/new.key)
    ///   mv /etc/totpd/new.key /etc/totpd/totpd.key
    Generate {
        /// The key file (a key ring, or one key in the format before rings) whose keys
        /// the new ring keeps; '-' reads it from standard input.
        #[arg(long, value_name = "FILE")]
        ring: Option<PathBuf>,
        /// The new key's id, 1 to 255. [default: 1; with --ring, one above the highest]
        #[arg(long, value_name = "ID", value_parser = clap::value_parser!(u8).range(1..))]
        id: Option<u8>,
    },
    /// Re-seal every sealed value under the key ring's current key, in the background,
    /// and wait (printing progress) until no value uses an old key; then name the key ids
    /// that may leave the ring. Needs sudo on sys/keys/rotate: root over the socket has it.
    Rotate {
        /// Print the final status (or with --no-wait, the first) as one JSON object.
        #[arg(long)]
        json: bool,
        /// Start the rotation and return at once.
        #[arg(long)]
        no_wait: bool,
    },
    /// Show the ring's key ids and current key, the sealed values per key id, and the
    /// rotation. Needs read on sys/keys: root over the socket has it.
    Status {
        /// Print the status as one JSON object (the answer's `data`).
        #[arg(long)]
        json: bool,
    },
}

/// `key generate`: a new ring, printed.
pub fn generate(ring: Option<PathBuf>, id: Option<u8>) -> Result<Printed, ClientError> {
    let fail = |m: String| Ok(Printed::Refused(m));
    let new = match ring {
        None => KeyRing::generate(id.unwrap_or(totpd::store::seal::KEY_ID)),
        Some(path) => {
            let old = if path.as_os_str() == "-" {
                let mut bytes = Vec::new();
                if let Err(e) = std::io::stdin().read_to_end(&mut bytes) {
                    return fail(format!("reading the key ring from standard input: {e}"));
                }
                match KeyRing::parse(&bytes) {
                    Ok(r) => r,
                    Err(e) => return fail(format!("key ring on standard input: {e}")),
                }
            } else {
                match KeyRing::read(&path) {
                    Ok(r) => r,
                    Err(e) => return fail(e.to_string()),
                }
            };
            match id {
                Some(id) if old.contains(id) => {
                    return Err(ClientError::Usage(format!(
                        "--id {id}: the ring has a key with id {id} already"
                    )))
                }
                Some(id) => old.with_key(id),
                None => match old.with_new_key() {
                    Ok(Some(r)) => Ok(r),
                    Ok(None) => return fail("the ring holds 255 keys: every id is taken".into()),
                    Err(e) => Err(e),
                },
            }
        }
    };
    match new {
        Ok(r) => {
            warn_if_stdout_is_loose();
            Ok(Printed::Ok(r.to_text().trim_end().to_string()))
        }
        Err(e) => fail(e.to_string()),
    }
}

/// Says so on stderr when standard output is a file other users may read: the keys are
/// about to go into it.
fn warn_if_stdout_is_loose() {
    use std::os::fd::AsFd;
    use std::os::unix::fs::PermissionsExt;
    let Ok(fd) = std::io::stdout().as_fd().try_clone_to_owned() else {
        return;
    };
    let Ok(meta) = std::fs::File::from(fd).metadata() else {
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    if meta.is_file() && mode & 0o077 != 0 {
        eprintln!(
            "totpd: warning: standard output is a file with mode {mode:04o}: other users may read \
             the keys written to it. chmod 600 it now, and write keys with `umask 077` set."
        );
    }
}

/// How often `key rotate` asks how far the rotation got.
const POLL: Duration = Duration::from_secs(1);

fn status_of(reply: &totpd::client::Reply) -> Value {
    reply.json().map(|v| v["data"].clone()).unwrap_or_default()
}

fn num(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_default()
}

fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|i| i.to_string())
        .collect()
}

/// The end of a rotation, for people: the current key, and the ids that may go.
fn finished(d: &Value) -> String {
    let current = num(d, "current_key_id");
    let resealed = num(&d["rotation"], "resealed");
    let mut out = if resealed == 0 {
        format!("Success! Every sealed value uses key id {current}: nothing to re-seal.")
    } else {
        format!(
            "Success! Every sealed value uses key id {current} ({resealed} re-sealed by the last rotation)."
        )
    };
    let unused = ids(&d["unused_key_ids"]);
    if unused.is_empty() {
        out.push_str("\nThe key ring holds no other key.");
    } else {
        let many = unused.len() > 1;
        out.push_str(&format!(
            "\nKey id{} {} {} no longer used: remove {} `key` line{} from the key ring (the key \
             file or credential) and restart totpd. Keep the old ring with any backup made \
             before now: that backup still needs {}.",
            if many { "s" } else { "" },
            unused.join(", "),
            if many { "are" } else { "is" },
            if many { "their" } else { "its" },
            if many { "s" } else { "" },
            if many { "them" } else { "it" },
        ));
    }
    out
}

/// The status, for people.
fn human(d: &Value) -> String {
    let mut out = format!(
        "current key id: {}\nkey ids in the ring: {}\n",
        num(d, "current_key_id"),
        ids(&d["key_ids"]).join(", ")
    );
    for (id, n) in d["sealed_rows"].as_object().into_iter().flatten() {
        out.push_str(&format!("sealed values under key id {id}: {n}\n"));
    }
    let r = &d["rotation"];
    out.push_str(&format!(
        "rotation: {} ({} re-sealed{})",
        if r["running"] == true {
            "running"
        } else {
            "not running"
        },
        num(r, "resealed"),
        match r["error"].as_str() {
            Some(e) => format!("; stopped: {e}"),
            None => String::new(),
        }
    ));
    let unused = ids(&d["unused_key_ids"]);
    if !unused.is_empty() {
        out.push_str(&format!(
            "\nkey ids no value uses (may leave the ring): {}",
            unused.join(", ")
        ));
    }
    out
}

pub async fn key(client: Client, cmd: KeyCmd, quiet: bool) -> Result<Printed, ClientError> {
    match cmd {
        KeyCmd::Generate { ring, id } => generate(ring, id),
        KeyCmd::Status { json } => {
            let reply = client.request("GET", "/v1/sys/keys", None).await?;
            if !reply.is_success() {
                return Ok(vault_refusal(&reply));
            }
            let d = status_of(&reply);
            Ok(Printed::Ok(if json { d.to_string() } else { human(&d) }))
        }
        KeyCmd::Rotate { json, no_wait } => rotate(client, json, no_wait, quiet).await,
    }
}

async fn rotate(
    client: Client,
    json: bool,
    no_wait: bool,
    quiet: bool,
) -> Result<Printed, ClientError> {
    let start = || client.request("POST", "/v1/sys/keys/rotate", Some(b"{}".to_vec()));
    let reply = start().await?;
    if !reply.is_success() {
        return Ok(vault_refusal(&reply));
    }
    let mut d = status_of(&reply);
    if no_wait {
        return Ok(Printed::Ok(if json {
            d.to_string()
        } else if d["rotation"]["running"] == true {
            format!(
                "Key rotation running: {} values to re-seal under key id {}. \
                 `totpd key status` shows how far it got.",
                num(&d, "old_rows"),
                num(&d, "current_key_id")
            )
        } else {
            finished(&d)
        }));
    }
    let mut last = None;
    let mut restarts = 0;
    loop {
        let running = d["rotation"]["running"] == true;
        let old = num(&d, "old_rows");
        if !running && old == 0 {
            return Ok(Printed::Ok(if json { d.to_string() } else { finished(&d) }));
        }
        if !running {
            if let Some(e) = d["rotation"]["error"].as_str() {
                if json {
                    println!("{d}");
                }
                return Ok(Printed::Refused(format!(
                    "key rotation stopped: {e}; {old} values still use old key ids"
                )));
            }
            // Values under an old key and nothing running (they appeared after the last
            // pass, say): start again, a few times at most.
            restarts += 1;
            if restarts > 3 {
                return Ok(Printed::Refused(format!(
                    "key rotation ended with {old} values still under old key ids; run it again"
                )));
            }
            let reply = start().await?;
            if !reply.is_success() {
                return Ok(vault_refusal(&reply));
            }
            d = status_of(&reply);
            continue;
        }
        if !quiet && last != Some(old) {
            eprintln!(
                "re-sealing under key id {}: {} done, {old} to go",
                num(&d, "current_key_id"),
                num(&d["rotation"], "resealed")
            );
            last = Some(old);
        }
        tokio::time::sleep(POLL).await;
        let reply = client.request("GET", "/v1/sys/keys", None).await?;
        if !reply.is_success() {
            return Ok(vault_refusal(&reply));
        }
        d = status_of(&reply);
    }
}

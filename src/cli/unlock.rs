//! `totpd mfa unlock`, `totpd user unlock` and `totpd totp unlock`: an operator clears a
//! lockout, so the right code gets in at once instead of after the lock's period. Over
//! the socket, with sudo on the route (`identity/mfa/method/totp/admin-unlock`,
//! `api/v1/auth/totp/unlock`, `<mount>/keys/<name>/unlock`): root over the socket has it.
//! Each unlock is audited by the daemon.

use serde_json::{json, Value};
use totpd::client::{Client, ClientError, Reply};

use crate::Printed;

/// Vault identity MFA methods.
#[derive(clap::Subcommand)]
pub enum MfaCmd {
    /// Clear an entity's lock and failure count for a method, so its next right code is
    /// accepted at once (used codes stay used). Needs sudo on
    /// identity/mfa/method/totp/admin-unlock.
    Unlock {
        /// The method's id.
        #[arg(long, value_name = "ID")]
        method: String,
        /// The entity whose secret is locked.
        #[arg(long, value_name = "ENTITY")]
        entity: String,
        /// Print the answer's data as JSON (method_id, entity_id, was_locked, failures).
        #[arg(long)]
        json: bool,
    },
}

/// Users of the login step.
#[derive(clap::Subcommand)]
pub enum UserCmd {
    /// Clear a user's lock and failure count, so their next right code (or recovery
    /// code) is accepted at once. Needs sudo on api/v1/auth/totp/unlock.
    Unlock {
        /// The user (their entity id).
        user: String,
        /// Print the answer as JSON (user, was_locked, failures).
        #[arg(long)]
        json: bool,
    },
}

/// Keys of Vault's TOTP secrets engine.
#[derive(clap::Subcommand)]
pub enum TotpCmd {
    /// Clear a key's lock and failure count, so its next right code is accepted at once
    /// (codes already tried stay tried). Needs sudo on <mount>/keys/<name>/unlock.
    Unlock {
        /// The key's name.
        name: String,
        /// The engine mount the key is in.
        #[arg(long, value_name = "MOUNT", default_value = "totp")]
        mount: String,
        /// Print the answer's data as JSON (was_locked, failures).
        #[arg(long)]
        json: bool,
    },
}

pub async fn totp(client: Client, cmd: TotpCmd, quiet: bool) -> Result<Printed, ClientError> {
    let TotpCmd::Unlock { name, mount, json } = cmd;
    let seg = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let path = format!("/v1/{}/keys/{}/unlock", seg(&mount), seg(&name));
    let reply = client.request("POST", &path, None).await?;
    if !reply.is_success() {
        return Ok(refused(&reply, |v| {
            v["errors"][0].as_str().map(str::to_string)
        }));
    }
    let data = reply.json().unwrap_or_default()["data"].clone();
    Ok(done(
        &data,
        json,
        quiet,
        &format!("key {name} of mount {mount}"),
    ))
}

pub async fn mfa(client: Client, cmd: MfaCmd, quiet: bool) -> Result<Printed, ClientError> {
    let MfaCmd::Unlock {
        method,
        entity,
        json,
    } = cmd;
    let body = json!({"method_id": method, "entity_id": entity});
    let reply = client
        .request(
            "POST",
            "/v1/identity/mfa/method/totp/admin-unlock",
            Some(body.to_string().into_bytes()),
        )
        .await?;
    if !reply.is_success() {
        return Ok(refused(&reply, |v| {
            v["errors"][0].as_str().map(str::to_string)
        }));
    }
    let data = reply.json().unwrap_or_default()["data"].clone();
    let what = format!(
        "entity {} for method {}",
        data["entity_id"].as_str().unwrap_or(&entity),
        data["method_id"].as_str().unwrap_or(&method)
    );
    Ok(done(&data, json, quiet, &what))
}

pub async fn user(client: Client, cmd: UserCmd, quiet: bool) -> Result<Printed, ClientError> {
    let UserCmd::Unlock { user, json } = cmd;
    let body = json!({ "user": user });
    let reply = client
        .request(
            "POST",
            "/api/v1/auth/totp/unlock/",
            Some(body.to_string().into_bytes()),
        )
        .await?;
    if !reply.is_success() {
        return Ok(refused(&reply, drf_message));
    }
    let data = reply.json().unwrap_or_default();
    let what = format!("user {}", data["user"].as_str().unwrap_or(&user));
    Ok(done(&data, json, quiet, &what))
}

/// What a successful unlock prints: the data as JSON, a confirmation, or nothing.
fn done(data: &Value, json: bool, quiet: bool, what: &str) -> Printed {
    if json {
        return Printed::Ok(data.to_string());
    }
    if quiet {
        return Printed::Ok(String::new());
    }
    let failures = data["failures"].as_u64().unwrap_or_default();
    let before = match (data["was_locked"].as_bool() == Some(true), failures) {
        (true, _) => "it was locked".to_string(),
        (false, 0) => "it was not locked".to_string(),
        (false, 1) => "it was not locked; 1 failure cleared".to_string(),
        (false, n) => format!("it was not locked; {n} failures cleared"),
    };
    Printed::Ok(format!("Success! Unlocked {what} ({before})"))
}

/// A refusal as one line: the daemon's message, else its status.
fn refused(reply: &Reply, message: impl Fn(&Value) -> Option<String>) -> Printed {
    let msg = reply
        .json()
        .and_then(|v| message(&v))
        .unwrap_or_else(|| format!("the daemon answered HTTP {}", reply.status));
    Printed::Refused(msg)
}

/// The message of a Django REST error: `detail`, or the first field's first message.
fn drf_message(v: &Value) -> Option<String> {
    if let Some(d) = v["detail"].as_str() {
        return Some(d.to_string());
    }
    v.as_object()?
        .iter()
        .filter(|(k, _)| *k != "code")
        .find_map(|(k, m)| m[0].as_str().map(|m| format!("{k}: {m}")))
}

//! `totpd export` and `totpd import`: TOTP secrets out of one daemon, into another (or
//! into an authenticator app).
//!
//! The daemon hands the secrets over opened (`POST /v1/sys/export`, sudo on
//! `sys/export`); this command writes them as otpauth URIs, one per line, or encrypts
//! them into a bundle under a passphrase that never leaves this process
//! ([`totpd::transfer`] describes both formats). The file is written 0600 under a
//! temporary name beside its destination, synced, and renamed into place. `import`
//! tells the formats apart by the first line, decrypts a bundle here, and sends the
//! document to `POST /v1/sys/import` (sudo on `sys/import`), which creates what is
//! missing in one transaction and says what it skipped or refused, and why.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use totpd::client::{Client, ClientError};
use totpd::transfer::{self, BundleError, Document};

use super::status::vault_refusal;
use super::PrivateFile;
use crate::Printed;

/// How `export` writes the secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// otpauth URIs, one per line, in clear, with totpd's own parameters (that
    /// authenticator apps ignore) so `totpd import` puts each back where it was.
    Uris,
    /// Everything, encrypted under --passphrase-file (argon2id, XChaCha20-Poly1305).
    Bundle,
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("scope").required(true).args(["entity", "all"])))]
pub struct ExportArgs {
    /// Export the secrets this entity holds: its MFA enrolments, agent secrets and
    /// login devices.
    #[arg(long, value_name = "ENTITY")]
    pub entity: Option<String>,
    /// Export every secret of every entity, every key of the TOTP secrets engine's
    /// mounts, and every MFA method.
    #[arg(long)]
    pub all: bool,
    /// uris: one otpauth URI per line, in clear; bundle: everything (methods' settings,
    /// recovery codes), encrypted.
    #[arg(long, value_enum, default_value_t = Format::Uris)]
    pub format: Format,
    /// The bundle's passphrase: this file's content, less one trailing newline (needed
    /// with --format bundle).
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// Write to FILE (0600, replaced atomically) instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// With --output: print what was written as JSON (path, format, counts).
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct ImportArgs {
    /// What `totpd export` wrote: otpauth URIs, one per line, or an encrypted bundle
    /// (told apart by the first line). Any app's otpauth URIs will do too.
    pub file: PathBuf,
    /// The bundle's passphrase: this file's content, less one trailing newline.
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// The owner of secrets that name none (URIs without totpd's parameters, which
    /// become agent secrets). Default: your own entity.
    #[arg(long, value_name = "ENTITY")]
    pub entity: Option<String>,
    /// Print the daemon's whole answer (counts and one entry per secret) as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The passphrase in `path`: its bytes less one trailing newline; never empty.
fn passphrase(path: &Path) -> Result<Vec<u8>, ClientError> {
    let flag = format!("--passphrase-file {}", path.display());
    let mut p = fs::read(path).map_err(|e| ClientError::Usage(format!("{flag}: {e}")))?;
    if p.last() == Some(&b'\n') {
        p.pop();
        if p.last() == Some(&b'\r') {
            p.pop();
        }
    }
    if p.is_empty() {
        return Err(ClientError::Usage(format!(
            "{flag}: the passphrase is empty"
        )));
    }
    Ok(p)
}

/// Checks that `dest` can be written: not a directory, in a directory that exists.
fn writable(dest: &Path) -> Result<(), ClientError> {
    if dest.is_dir() {
        return Err(ClientError::Usage(format!(
            "{} is a directory: give the file to write",
            dest.display()
        )));
    }
    if !dir_of(dest).is_dir() {
        return Err(ClientError::Usage(format!(
            "no directory {}",
            dir_of(dest).display()
        )));
    }
    Ok(())
}

fn dir_of(dest: &Path) -> PathBuf {
    match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Writes `bytes` to `dest` privately and atomically (see [`PrivateFile`]).
fn write_private(dest: &Path, bytes: &[u8]) -> Result<(), String> {
    let mut f = PrivateFile::create(dest).map_err(|e| e.to_string())?;
    f.file
        .write_all(bytes)
        .map_err(|e| format!("{}: {e}", dest.display()))?;
    f.finish(|_| Ok(())).map(|_| ())
}

pub async fn export(client: Client, args: ExportArgs, quiet: bool) -> Result<Printed, ClientError> {
    let pass = match (args.format, &args.passphrase_file) {
        (Format::Bundle, Some(f)) => Some(passphrase(f)?),
        (Format::Bundle, None) => {
            return Err(ClientError::Usage(
                "--format bundle needs --passphrase-file FILE".into(),
            ))
        }
        (Format::Uris, Some(_)) => {
            return Err(ClientError::Usage(
                "--passphrase-file is for --format bundle: URIs are written in clear".into(),
            ))
        }
        (Format::Uris, None) => None,
    };
    if let Some(dest) = &args.output {
        writable(dest)?;
    }
    let body = match &args.entity {
        Some(e) => json!({ "entity_id": e }),
        None => json!({ "all": true }),
    };
    let reply = client
        .request(
            "POST",
            "/v1/sys/export",
            Some(body.to_string().into_bytes()),
        )
        .await?;
    if !reply.is_success() {
        return Ok(vault_refusal(&reply));
    }
    let mut v: Value = reply.json().unwrap_or_default();
    let doc: Document = match serde_json::from_value(v["data"].take()) {
        Ok(d) => d,
        Err(_) => {
            return Ok(Printed::Refused(
                "the daemon's answer holds no transfer document this totpd reads".into(),
            ))
        }
    };
    let (secrets, methods, codes) = (
        doc.secrets.len(),
        doc.methods.len(),
        doc.recovery_codes.len(),
    );
    let text = match &pass {
        Some(p) => {
            let plain = serde_json::to_vec(&doc)
                .map_err(|e| ClientError::Request(format!("cannot write the document: {e}")))?;
            transfer::seal_bundle(&plain, p).map_err(|e| ClientError::Request(e.to_string()))?
        }
        None => {
            let mut out = String::new();
            for s in &doc.secrets {
                let line = transfer::uri_line(&doc, s).ok_or_else(|| {
                    let of = match s.kind {
                        transfer::Kind::VaultTotp => format!(
                            "{}/{}",
                            s.mount.as_deref().unwrap_or("-"),
                            s.name.as_deref().unwrap_or("-")
                        ),
                        _ => s.entity_id.as_deref().unwrap_or("-").to_string(),
                    };
                    ClientError::Request(format!(
                        "the daemon's answer holds a {} secret of {of} that cannot be written as a URI",
                        s.kind.as_str(),
                    ))
                })?;
                out.push_str(&line);
                out.push('\n');
            }
            out
        }
    };
    let what = match args.format {
        Format::Uris => "otpauth URIs",
        Format::Bundle => "an encrypted bundle",
    };
    if args.format == Format::Uris && codes > 0 && !quiet {
        eprintln!(
            "totpd: note: {codes} recovery codes are not written as URIs; --format bundle carries them"
        );
    }
    let Some(dest) = &args.output else {
        return Ok(Printed::Ok(text.trim_end_matches('\n').to_string()));
    };
    if let Err(e) = write_private(dest, text.as_bytes()) {
        return Ok(Printed::Refused(format!(
            "export failed: {e}; nothing was written at {}",
            dest.display()
        )));
    }
    if args.json {
        return Ok(Printed::Ok(
            json!({
                "path": dest,
                "format": match args.format { Format::Uris => "uris", Format::Bundle => "bundle" },
                "secrets": secrets,
                "methods": methods,
                "recovery_codes": codes,
            })
            .to_string(),
        ));
    }
    Ok(crate::confirm(
        quiet,
        format!(
            "Success! Exported {secrets} secrets ({methods} MFA methods, {codes} recovery codes) as {what} to {}",
            dest.display()
        ),
    ))
}

pub async fn import(client: Client, args: ImportArgs, quiet: bool) -> Result<Printed, ClientError> {
    let file = args.file.display().to_string();
    let bytes =
        fs::read(&args.file).map_err(|e| ClientError::Usage(format!("cannot read {file}: {e}")))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ClientError::Usage(format!("{file} is empty")));
    }
    let nothing = "nothing was imported";
    let doc = if transfer::is_bundle(&bytes) {
        let Some(pf) = &args.passphrase_file else {
            return Err(ClientError::Usage(format!(
                "{file} is an encrypted bundle: give --passphrase-file FILE"
            )));
        };
        let pass = passphrase(pf)?;
        let plain = match transfer::open_bundle(&bytes, &pass) {
            Ok(p) => p,
            Err(e @ BundleError::Open) => return Ok(Printed::Refused(format!("{e}; {nothing}"))),
            Err(e) => return Ok(Printed::Refused(format!("{file}: {e}; {nothing}"))),
        };
        // serde's message could quote a value, and the values are seeds: not shown.
        match serde_json::from_slice::<Document>(&plain) {
            Ok(d) if d.version == transfer::VERSION => d,
            Ok(d) => {
                return Ok(Printed::Refused(format!(
                    "{file}: the bundle holds a version {} document; this totpd reads version {}; {nothing}",
                    d.version,
                    transfer::VERSION
                )))
            }
            Err(_) => {
                return Ok(Printed::Refused(format!(
                    "{file}: the bundle opens but holds no transfer document this totpd reads; {nothing}"
                )))
            }
        }
    } else {
        let text = String::from_utf8(bytes)
            .map_err(|_| ClientError::Usage(format!("{file} is neither text nor a bundle")))?;
        match transfer::parse_uris(&text) {
            Ok(d) if d.secrets.is_empty() => {
                return Err(ClientError::Usage(format!("{file} holds no otpauth URI")))
            }
            Ok(d) => d,
            Err(e) => return Ok(Printed::Refused(format!("{file} {e}; {nothing}"))),
        }
    };
    let mut body = json!({
        "version": transfer::VERSION,
        "methods": doc.methods,
        "secrets": doc.secrets,
        "recovery_codes": doc.recovery_codes,
    });
    if let Some(e) = &args.entity {
        body["entity_id"] = json!(e);
    }
    let reply = client
        .request(
            "POST",
            "/v1/sys/import",
            Some(body.to_string().into_bytes()),
        )
        .await?;
    if !reply.is_success() {
        return Ok(match vault_refusal(&reply) {
            Printed::Refused(m) => Printed::Refused(format!("{m}; {nothing}")),
            other => other,
        });
    }
    let v = reply.json().unwrap_or_default();
    let data = &v["data"];
    let refused = data["refused"].as_u64().unwrap_or_default();
    let out = if args.json {
        data.to_string()
    } else if quiet {
        String::new()
    } else {
        report(&file, data)
    };
    if refused == 0 {
        return Ok(Printed::Ok(out));
    }
    if !out.is_empty() {
        println!("{out}");
    }
    Ok(Printed::Refused(format!(
        "{refused} entries refused (see above); the rest was imported"
    )))
}

/// The answer for a person: the counts, then each entry skipped or refused, and why.
fn report(file: &str, d: &Value) -> String {
    let n = |k: &str| d[k].as_u64().unwrap_or_default();
    let c = &d["counts"];
    let count = |list: &str, k: &str| c[list][k].as_u64().unwrap_or_default();
    let mut out = format!(
        "Imported {file}: {} created, {} skipped, {} refused (secrets: {} created, {} skipped, {} refused)",
        n("created"),
        n("skipped"),
        n("refused"),
        count("secrets", "created"),
        count("secrets", "skipped"),
        count("secrets", "refused"),
    );
    let s = |e: &Value, k: &str| e[k].as_str().unwrap_or("-").to_string();
    for e in d["entries"].as_array().into_iter().flatten() {
        let result = s(e, "result");
        if result == "created" {
            continue;
        }
        let what = match e["kind"].as_str().unwrap_or_default() {
            "method" => format!("method {}", s(e, "method_id")),
            "vault_mfa" => format!(
                "vault_mfa {} method {}",
                s(e, "entity_id"),
                s(e, "method_id")
            ),
            "agent" => format!(
                "agent {} {} ({})",
                s(e, "entity_id"),
                s(e, "id"),
                s(e, "label")
            ),
            "user_totp" => format!(
                "user_totp {} device {:?}",
                s(e, "entity_id"),
                s(e, "device")
            ),
            "vault_totp" => format!("vault_totp {} key {}", s(e, "mount"), s(e, "name")),
            "recovery_codes" => format!("recovery codes of {}", s(e, "entity_id")),
            other => other.to_string(),
        };
        out.push_str(&format!("\n{result:<8} {what}: {}", s(e, "message")));
    }
    out
}

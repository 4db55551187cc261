//! `totpd status`: the daemon's state at a glance (`GET /v1/sys/status`, read on
//! `sys/status`: root over the socket has it), as aligned `key: value` lines or, with
//! `--json`, the answer's `data` object.

use serde_json::Value;
use totpd::client::{Client, ClientError, Reply};

use crate::Printed;

#[derive(clap::Args)]
pub struct StatusArgs {
    /// Print the status as one JSON object (the answer's `data`), for scripts.
    #[arg(long)]
    pub json: bool,
}

pub async fn status(client: Client, args: StatusArgs) -> Result<Printed, ClientError> {
    let reply = client.request("GET", "/v1/sys/status", None).await?;
    if !reply.is_success() {
        return Ok(vault_refusal(&reply));
    }
    let v = reply.json().unwrap_or_default();
    let data = &v["data"];
    if args.json {
        return Ok(Printed::Ok(data.to_string()));
    }
    Ok(Printed::Ok(human(data)))
}

/// A refusal in Vault's shape (`{"errors": [...]}`) as one line.
pub fn vault_refusal(reply: &Reply) -> Printed {
    let msg = reply
        .json()
        .and_then(|v| v["errors"][0].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("the daemon answered HTTP {}", reply.status));
    Printed::Refused(msg)
}

/// The status as `key: value` lines, the values in one column.
fn human(d: &Value) -> String {
    let text = |k: &str| match &d[k] {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let uptime = d["uptime_seconds"].as_u64().unwrap_or_default();
    let bytes = d["database_bytes"].as_u64().unwrap_or_default();
    let mut lines: Vec<(String, String)> = vec![
        ("version".into(), text("version")),
        (
            "uptime".into(),
            format!(
                "{} (since {})",
                humantime::format_duration(std::time::Duration::from_secs(uptime)),
                text("started_at")
            ),
        ),
        (
            "server time".into(),
            format!("{} ({})", text("server_time"), text("server_time_utc")),
        ),
        (
            "database size".into(),
            format!("{} ({bytes} bytes, with the write-ahead log)", size(bytes)),
        ),
        ("writer queue depth".into(), text("writer_queue_depth")),
        ("key id".into(), text("key_id")),
        (
            "last backup".into(),
            match d["last_backup"].as_str() {
                Some(t) => t.to_string(),
                None => "none made by this daemon".into(),
            },
        ),
    ];
    if let Some(rows) = d["table_rows"].as_object() {
        for (table, n) in rows {
            lines.push((format!("rows in {table}"), n.to_string()));
        }
    }
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    lines
        .iter()
        .map(|(k, v)| format!("{:<width$} {v}", format!("{k}:")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Bytes in the largest unit that keeps a number of at least one.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64;
    let mut unit = "B";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_lines_are_readable() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(2048), "2.0 KiB");
        assert_eq!(size(5 * 1024 * 1024 + 1), "5.0 MiB");
        let out = human(&serde_json::json!({
            "version": "0.1.0", "uptime_seconds": 61, "started_at": "2026-01-01T00:00:00Z",
            "server_time": "2026-01-01T00:01:01Z", "server_time_utc": 1_767_225_661,
            "database_bytes": 4096, "writer_queue_depth": 0, "key_id": 1,
            "last_backup": null, "table_rows": {"tokens": 2},
        }));
        assert!(
            out.contains("\nuptime:             1m 1s (since 2026-01-01T00:00:00Z)\n"),
            "{out}"
        );
        assert!(out.contains("\nrows in tokens:     2"), "{out}");
        assert!(
            out.contains("last backup:        none made by this daemon"),
            "{out}"
        );
    }
}

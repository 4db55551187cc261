//! `GET /v1/sys/status` (read on `sys/status`): what an operator checks first. The
//! version, uptime, the database's size and rows per table (counts only, never
//! secret material), the writer's queue depth, the sealing key id in use, when the
//! daemon last delivered a backup, and its clock.

use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde_json::{json, Map, Value};

use super::super::fields::rfc3339;
use super::super::vault::{self, Caller, ListQuery, VaultError};
use super::super::{now, AppState};
use crate::auth::Capability;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/v1/sys/status", get(status))
}

async fn status(
    State(st): State<AppState>,
    who: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Response, VaultError> {
    q.forbid()?;
    who.require("sys/status", Capability::Read)?;
    let tables = st.store.count_rows().await?;
    let last_backup = st.store.last_backup().await?;
    let writer = st.store.writer_stats();
    let uptime = st.metrics.uptime().as_secs();
    let at = now();
    let rows: Map<String, Value> = tables.into_iter().map(|(t, n)| (t, json!(n))).collect();
    Ok(vault::ok(
        &who.request_id,
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": uptime,
            "started_at": rfc3339(at - uptime as i64),
            "database_bytes": st.store.database_bytes(),
            "table_rows": rows,
            "writer_queue_depth": writer.queue_depth,
            "key_id": st.store.seal_key_id(),
            "last_backup_utc": last_backup,
            "last_backup": last_backup.map(rfc3339),
            "server_time_utc": at,
            "server_time": rfc3339(at),
        }),
    ))
}

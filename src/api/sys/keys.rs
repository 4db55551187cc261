//! The sealing keys: `GET /v1/sys/keys` (read on `sys/keys`) shows the key ring's ids,
//! the current one, the sealed values per key id and the rotation's progress;
//! `POST /v1/sys/keys/rotate` (sudo on `sys/keys/rotate`) starts re-sealing every value
//! under the current key, in the background, and answers at once with the same status.
//! The daemon never writes a key: the operator makes the ring (`totpd key generate`),
//! restarts the daemon with it, and drops an old key once no value uses it.

use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::super::vault::{self, Caller, Json, ListQuery, VaultError};
use super::super::{extract, AppState};
use crate::audit::{self, Action, Event, Object, Verdict};
use crate::auth::Capability;
use crate::store::{KeyStatus, Store};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/sys/keys", get(status))
        .route("/v1/sys/keys/rotate", post(rotate))
}

/// The answer's `data`: every field an operator or `totpd key rotate` reads.
pub fn status_data(s: &KeyStatus) -> Value {
    let sealed: Map<String, Value> = s
        .sealed
        .iter()
        .map(|(id, n)| (id.to_string(), json!(n)))
        .collect();
    json!({
        "current_key_id": s.current,
        "key_ids": s.ring,
        "sealed_rows": sealed,
        "old_rows": s.old_values(),
        "unused_key_ids": s.unused(),
        "rotation": {
            "running": s.rotation.running,
            "resealed": s.rotation.resealed,
            "skipped": s.rotation.skipped,
            "error": s.rotation.error,
        },
    })
}

async fn status(
    State(st): State<AppState>,
    who: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Response, VaultError> {
    q.forbid()?;
    who.require("sys/keys", Capability::Read)?;
    let s = st.store.key_status().await?;
    Ok(vault::ok(&who.request_id, status_data(&s)))
}

/// The body of `rotate`: nothing yet (an empty body, or `{}`).
#[derive(Deserialize)]
struct RotateReq {}

async fn rotate(
    State(st): State<AppState>,
    who: Caller,
    extract::Json(_req, _): Json<RotateReq>,
) -> Result<Response, VaultError> {
    who.require("sys/keys/rotate", Capability::Sudo)?;
    let s = st.store.start_key_rotation().await?;
    let verdict = if s.rotation.running {
        tracing::info!(
            old_rows = s.old_values(),
            key_id = s.current,
            "key rotation asked for"
        );
        Verdict::Ok
    } else {
        Verdict::Unchanged("nothing_to_rotate")
    };
    let (action, object) = (Action::KeyRotate, Object::None {});
    audit::record(
        &st,
        Event {
            action,
            verdict,
            object,
        },
    );
    Ok(vault::ok(&who.request_id, status_data(&s)))
}

/// At start: values sealed under a key other than the current one mean a rotation was cut
/// short, or the ring has a new current key. They are re-sealed in the background, and
/// the log says so, unless the store leaves it to the operator (a store several daemons
/// share: see [`crate::store::KeyStore::resume_key_rotation`]). Uses the counts the store
/// made when it opened: no query when there is nothing to do.
pub async fn resume(store: &dyn Store) {
    let current = store.seal_key_id();
    let old: Vec<(u8, u64)> = store
        .sealed_counts()
        .into_iter()
        .filter(|(id, n)| *id != current && *n > 0)
        .collect();
    if old.is_empty() {
        return;
    }
    // The store decides: one shared by several daemons resumes only a rotation an
    // operator started (and says why not otherwise).
    match store.resume_key_rotation().await {
        Ok(Some(_)) => tracing::info!(
            old_key_ids = ?old.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            old_rows = old.iter().map(|(_, n)| n).sum::<u64>(),
            key_id = current,
            "values are sealed under old key ids: resuming the key rotation in the background"
        ),
        Ok(None) => {}
        Err(e) => tracing::error!(error = %e, "cannot resume the key rotation"),
    }
}

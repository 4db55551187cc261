//! `GET /v1/sys/backup` (sudo on `sys/backup`): a consistent copy of the whole database,
//! streamed as `application/octet-stream`. The store makes the copy beside the database
//! while reads and writes go on ([`crate::store::OpsStore::backup_database`]); this
//! handler streams it from the open file in chunks, never holding it all in memory.
//! The CLI (`totpd backup PATH`) writes it where the operator says, since a daemon under
//! `ProtectSystem=strict` cannot. Once the last byte is handed over, the backup's time
//! is recorded (`sys/status` shows it) and logged. A store that leaves backups to its
//! database's own tools (PostgreSQL: `pg_dump`, `pg_basebackup`) is answered 400 with
//! the store's message saying so.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http_body::Frame;
use tokio::io::{AsyncRead, ReadBuf};

use super::super::fields::rfc3339;
use super::super::vault::{Caller, ListQuery, VaultError};
use super::super::{now, AppState};
use crate::auth::Capability;
use crate::store::{Store, StoreError};

/// The header carrying when the copy was taken (unix seconds).
pub const TAKEN_HEADER: &str = "x-totpd-backup-time";

/// Bytes read from the copy per chunk sent.
const CHUNK: usize = 64 * 1024;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/v1/sys/backup", get(backup))
}

async fn backup(
    State(st): State<AppState>,
    who: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Response, VaultError> {
    q.forbid()?;
    who.require("sys/backup", Capability::Sudo)?;
    let taken = now();
    let copy = match st.store.backup_database().await {
        Ok(copy) => copy,
        // PostgreSQL: its own tools make backups; the message names them.
        Err(StoreError::Unsupported(why)) => return Err(VaultError::bad_request(why)),
        Err(e) => return Err(e.into()),
    };
    tracing::info!(bytes = copy.bytes, "backup copy taken; sending it");
    let body = CopyBody {
        file: tokio::fs::File::from_std(copy.file),
        left: copy.bytes,
        sent: 0,
        taken,
        store: st.store.clone(),
    };
    let stamp = rfc3339(taken).replace(['-', ':'], "");
    let mut resp = Body::new(body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(copy.bytes));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"totpd-{stamp}.db\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(TAKEN_HEADER, HeaderValue::from(taken));
    Ok(resp)
}

/// The copy as a response body: its bytes in chunks, then nothing. Dropped after the
/// last chunk, it records the backup; dropped before (the client went away), it logs
/// that. Either way the copy's space is freed with the file.
struct CopyBody {
    file: tokio::fs::File,
    left: u64,
    sent: u64,
    taken: i64,
    store: Arc<dyn Store>,
}

impl http_body::Body for CopyBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let want = CHUNK.min(usize::try_from(self.left).unwrap_or(CHUNK));
        let mut buf = vec![0u8; want];
        let mut rb = ReadBuf::new(&mut buf);
        ready!(Pin::new(&mut self.file).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        if n == 0 {
            return Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the backup copy ended early",
            ))));
        }
        buf.truncate(n);
        self.left -= n as u64;
        self.sent += n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}

impl Drop for CopyBody {
    fn drop(&mut self) {
        if self.left > 0 {
            tracing::warn!(
                sent = self.sent,
                left = self.left,
                "backup not delivered: the client stopped reading"
            );
            return;
        }
        tracing::info!(
            bytes = self.sent,
            taken_at = %rfc3339(self.taken),
            "backup delivered"
        );
        let (store, taken) = (self.store.clone(), self.taken);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = store.record_backup(taken).await {
                    tracing::warn!(error = %e, "cannot record the backup's time");
                }
            });
        }
    }
}

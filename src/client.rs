//! The CLI's client: HTTP over the daemon's Unix socket (hyperlocal), so a local script
//! needs neither curl nor a token.

use std::path::PathBuf;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use hyperlocal::UnixConnector;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach totpd at {socket}: {reason} (is it running? set --socket or TOTPD_SOCKET)"
    )]
    Connect { socket: PathBuf, reason: String },
    #[error("bad request: {0}")]
    Request(String),
}

/// An answer from the daemon.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
}

impl Reply {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

pub struct Client {
    socket: PathBuf,
    token: Option<String>,
    http: HyperClient<UnixConnector, Full<Bytes>>,
}

impl Client {
    pub fn new(socket: PathBuf, token: Option<String>) -> Self {
        Self {
            socket,
            token,
            http: HyperClient::builder(TokioExecutor::new()).build(UnixConnector),
        }
    }

    /// Sends one request; `body` is sent as JSON when given.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Reply, ClientError> {
        let uri: hyper::Uri = hyperlocal::Uri::new(&self.socket, path).into();
        let mut req = hyper::Request::builder().method(method).uri(uri);
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        if let Some(t) = &self.token {
            req = req.header("x-vault-token", t);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Request(e.to_string()))?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| ClientError::Connect {
                socket: self.socket.clone(),
                reason: error_chain(&e),
            })?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Connect {
                socket: self.socket.clone(),
                reason: e.to_string(),
            })?
            .to_bytes();
        Ok(Reply { status, body })
    }
}

/// hyper's errors say "client error (Connect)"; the cause underneath is what helps.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        msg = s.to_string();
        cur = s.source();
    }
    msg
}

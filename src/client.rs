//! The CLI's client: HTTP over the daemon's Unix socket (hyperlocal), so a local script
//! needs neither curl nor a token.

use std::path::{Path, PathBuf};

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
    /// No socket given, and none at any of the places a client looks.
    #[error(
        "cannot reach totpd: no socket at {} (is it running? start it with `totpd serve --dev`, \
         or set --socket or TOTPD_SOCKET)",
        join_paths(tried)
    )]
    NoSocket { tried: Vec<PathBuf> },
    /// The socket is there but this user may not connect to it: the message says why
    /// and what to change.
    #[error("{0}")]
    Denied(String),
    #[error("bad request: {0}")]
    Request(String),
    /// The command line asks for something that cannot be sent (exit code 2).
    #[error("{0}")]
    Usage(String),
}

impl ClientError {
    /// True when no daemon could be reached at all (exit code 3).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::Connect { .. } | ClientError::NoSocket { .. } | ClientError::Denied(_)
        )
    }
}

fn join_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" or ")
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
    /// Every path looked at when the socket was not given (see [`Client::discover`]);
    /// empty when it was.
    searched: Vec<PathBuf>,
    token: Option<String>,
    http: HyperClient<UnixConnector, Full<Bytes>>,
}

impl Client {
    /// A client for the socket at `socket`, as given by `--socket` or `TOTPD_SOCKET`.
    pub fn new(socket: PathBuf, token: Option<String>) -> Self {
        Self {
            socket,
            searched: Vec::new(),
            token,
            http: HyperClient::builder(TokioExecutor::new()).build(UnixConnector),
        }
    }

    /// A client for the first socket that exists among
    /// [`crate::config::client_socket_candidates`]; if none does, an error names them
    /// all.
    pub fn discover(token: Option<String>) -> Self {
        let mut c = Self::new(crate::config::client_socket(), token);
        c.searched = crate::config::client_socket_candidates();
        c
    }

    /// The error for a connection that failed with `reason`, saying what to do about it.
    fn connect_error(&self, io: Option<&std::io::Error>, reason: String) -> ClientError {
        match io.map(std::io::Error::kind) {
            Some(std::io::ErrorKind::NotFound) if !self.searched.is_empty() => {
                ClientError::NoSocket {
                    tried: self.searched.clone(),
                }
            }
            Some(std::io::ErrorKind::PermissionDenied) => {
                ClientError::Denied(permission_denied(&self.socket))
            }
            _ => ClientError::Connect {
                socket: self.socket.clone(),
                reason,
            },
        }
    }

    /// Sends one request; `body` is sent as JSON when given.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Reply, ClientError> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.broken(&e))?
            .to_bytes();
        Ok(Reply { status, body })
    }

    /// Sends one request and returns the answer with its body still to be read, for
    /// answers too large to hold in memory (a backup); read it with
    /// [`http_body_util::BodyExt::frame`], and report a failure with [`Client::broken`].
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
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
        self.http
            .request(req)
            .await
            .map_err(|e| self.connect_error(io_error(&e), error_chain(&e)))
    }

    /// The error for an answer whose body broke off half way.
    pub fn broken(&self, e: &dyn std::fmt::Display) -> ClientError {
        ClientError::Connect {
            socket: self.socket.clone(),
            reason: e.to_string(),
        }
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

/// The operating system's error underneath hyper's, if there is one.
fn io_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        cur = err.source();
    }
    None
}

/// Why this user may not connect to `socket`, and what would let it: one line naming
/// the socket, its mode and group, and the options that set them.
fn permission_denied(socket: &Path) -> String {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let uid = nix::unistd::getuid();
    let user = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |u| u.name);
    let who = format!("uid {uid} ({user})");
    let meta = match std::fs::metadata(socket) {
        Ok(m) => m,
        // Not even the file can be looked at: a directory on the way is closed.
        Err(_) => {
            return format!(
                "cannot reach totpd at {}: permission denied: a directory on the way to it \
                 does not let {who} through (each needs the x bit for this user)",
                socket.display()
            )
        }
    };
    let gid = nix::unistd::Gid::from_raw(meta.gid());
    let group = nix::unistd::Group::from_gid(gid).ok().flatten();
    let group_name = group
        .as_ref()
        .map_or_else(|| meta.gid().to_string(), |g| g.name.clone());
    let owner = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(meta.uid()))
        .ok()
        .flatten()
        .map_or_else(|| meta.uid().to_string(), |u| u.name);
    let listed = group.as_ref().is_some_and(|g| g.mem.contains(&user));
    let active = nix::unistd::getgroups().is_ok_and(|gs| gs.contains(&gid));
    let join = if listed && !active {
        // In the group on paper, not yet in this login session.
        format!(
            "{user} is in group {group_name} but this session is not yet: log in again \
             (or run newgrp {group_name}); or "
        )
    } else if meta.gid() != 0 {
        format!(
            "add {user} to group {group_name} (usermod -aG {group_name} {user}, then log \
             in again), or "
        )
    } else {
        String::new()
    };
    format!(
        "cannot reach totpd at {}: permission denied: the socket's mode {:04o} (owner {owner}, \
         group {group_name}) does not let {who} connect; {join}start the daemon with \
         --socket-group GROUP (a group {user} is in) or --socket-mode 0666 \
         (under systemd: SocketGroup= and SocketMode= in totpd.socket)",
        socket.display(),
        meta.permissions().mode() & 0o7777,
    )
}

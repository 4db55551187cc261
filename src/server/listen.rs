//! Listeners: the Unix socket (mode, group, stale-file handling), systemd socket
//! activation, and optional TCP.

use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::socket::{getsockname, AddressFamily, SockaddrLike, SockaddrStorage};

use super::ServerError;

/// A bound listener, ready to accept.
pub enum Listener {
    Unix {
        listener: tokio::net::UnixListener,
        /// The file to remove at shutdown; None when systemd owns the socket.
        owned_path: Option<PathBuf>,
    },
    Tcp(tokio::net::TcpListener),
}

impl Listener {
    /// `unix:<path>` or `tcp:<addr>`, for the log.
    pub fn describe(&self) -> String {
        match self {
            Listener::Unix { listener, .. } => format!(
                "unix:{}",
                listener
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
                    .unwrap_or_else(|| "?".into())
            ),
            Listener::Tcp(l) => format!(
                "tcp:{}",
                l.local_addr().map(|a| a.to_string()).unwrap_or_default()
            ),
        }
    }
}

/// The gid of the socket group `group` (a name or a number). A name that does not exist
/// is an error that says how to create the group or do without it.
pub fn socket_gid(group: &str) -> Result<nix::unistd::Gid, ServerError> {
    if let Ok(n) = group.parse::<u32>() {
        return Ok(nix::unistd::Gid::from_raw(n));
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid),
        Ok(None) => {
            let sysusers = if group == "totpd" {
                ", or install systemd/totpd.sysusers"
            } else {
                ""
            };
            Err(ServerError::Listen(format!(
                "socket group {group:?} does not exist: create it (groupadd --system \
                 {group}{sysusers}) or leave out socket_group (--socket-group, \
                 TOTPD_SOCKET_GROUP)"
            )))
        }
        Err(e) => Err(ServerError::Listen(format!(
            "socket group {group:?}: cannot look it up: {e}"
        ))),
    }
}

/// Binds the Unix socket at `path`. A stale socket file is replaced only if nothing
/// answers on it; a live daemon on that path is an error; a non-socket file is left alone.
/// The group is looked up before anything is touched, and if the socket cannot be given
/// its mode or group, its file is removed again: a failed start leaves no socket file.
pub fn bind_unix(path: &Path, mode: u32, group: Option<&str>) -> Result<Listener, ServerError> {
    let io = |e: std::io::Error| ServerError::Listen(format!("{}: {e}", path.display()));
    let gid = group.map(socket_gid).transpose()?;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ServerError::Listen(format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            )));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ServerError::AlreadyRunning(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(io)?;
        tracing::info!(path = %path.display(), "removed stale socket file");
    }
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(io)?;
    let finish = || -> Result<(), ServerError> {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io)?;
        if let (Some(gid), Some(g)) = (gid, group) {
            nix::unistd::chown(path, None, Some(gid)).map_err(|e| {
                let hint = if e == nix::errno::Errno::EPERM {
                    " (the daemon's user must be root or a member of that group)"
                } else {
                    ""
                };
                ServerError::Listen(format!("chgrp {g} {}: {e}{hint}", path.display()))
            })?;
        }
        Ok(())
    };
    if let Err(e) = finish() {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(Listener::Unix {
        listener,
        owned_path: Some(path.to_path_buf()),
    })
}

pub async fn bind_tcp(addr: std::net::SocketAddr) -> Result<Listener, ServerError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map(Listener::Tcp)
        .map_err(|e| ServerError::Listen(format!("tcp {addr}: {e}")))
}

/// A socket systemd passed in, not yet registered with the runtime.
pub enum Inherited {
    Unix(std::os::unix::net::UnixListener),
    Tcp(std::net::TcpListener),
}

/// Takes the sockets passed by systemd (`LISTEN_PID`/`LISTEN_FDS`, fds from 3), if they
/// are ours, and removes the variables so children do not inherit them. Call it before
/// any other thread exists: it changes the environment.
pub fn take_systemd_sockets() -> Result<Vec<Inherited>, ServerError> {
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<RawFd>().ok())
        .unwrap_or(0);
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    if !pid_ok || count <= 0 {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for fd in 3..3 + count {
        let addr: SockaddrStorage =
            getsockname(fd).map_err(|e| ServerError::Listen(format!("systemd fd {fd}: {e}")))?;
        let _ = nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
        match addr.family() {
            // SAFETY: systemd hands us these fds, open and owned by no one else here.
            Some(AddressFamily::Unix) => out.push(Inherited::Unix(unsafe {
                std::os::unix::net::UnixListener::from_raw_fd(fd)
            })),
            Some(AddressFamily::Inet) | Some(AddressFamily::Inet6) => {
                out.push(Inherited::Tcp(unsafe {
                    std::net::TcpListener::from_raw_fd(fd)
                }))
            }
            other => {
                return Err(ServerError::Listen(format!(
                    "systemd fd {fd}: unsupported socket family {other:?}"
                )))
            }
        }
    }
    Ok(out)
}

impl Inherited {
    /// Registers the socket with the runtime (which must be running).
    pub fn into_listener(self) -> Result<Listener, ServerError> {
        let err = |e: std::io::Error| ServerError::Listen(format!("systemd socket: {e}"));
        match self {
            Inherited::Unix(l) => {
                l.set_nonblocking(true).map_err(err)?;
                Ok(Listener::Unix {
                    listener: tokio::net::UnixListener::from_std(l).map_err(err)?,
                    owned_path: None,
                })
            }
            Inherited::Tcp(l) => {
                l.set_nonblocking(true).map_err(err)?;
                Ok(Listener::Tcp(
                    tokio::net::TcpListener::from_std(l).map_err(err)?,
                ))
            }
        }
    }
}

/// The uid of a Unix-socket peer, from SO_PEERCRED.
pub fn peer_uid(stream: &tokio::net::UnixStream) -> Option<u32> {
    nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .ok()
        .map(|c| c.uid())
}

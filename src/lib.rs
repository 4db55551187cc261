//! totpd: a TOTP daemon. One binary, SQLite inside, systemd outside.
//!
//! A request travels: [`server`] (listeners, peer credentials, HTTP, shutdown)
//! → [`server::http`] (request id, caller, log line) → a surface in [`api`]
//! (one module each, with its own error shape) → [`auth`] for the access decision
//! → [`store`] (the only code that knows SQL; one writer with group commit)
//! → [`otp`] (pure TOTP logic, no HTTP, no clock).
//!
//! [`client`] is the CLI's way to the daemon over the Unix socket.

pub mod api;
pub mod audit;
pub mod auth;
pub mod client;
pub mod clock;
pub mod config;
pub mod metrics;
pub mod otp;
pub mod server;
pub mod store;
pub mod transfer;

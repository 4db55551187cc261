//! The operator's commands beyond `serve`, `api`, `secret`, `code` and `nitride`: one
//! file per command group (backup and restore, keys, export and import, status, ...).
//! Each parses its own clap arguments, talks to the daemon through `totpd::client` (or
//! works on the data directory when the daemon is stopped), and returns what to print.

pub mod backup;
pub mod export;
pub mod keys;
pub mod status;
pub mod unlock;

//! TLS to PostgreSQL, when the URL asks for it: rustls (with *ring*), verifying the
//! server's certificate and host name every time.
//!
//! tokio-postgres knows `sslmode=disable|prefer|require` and no `sslrootcert`; libpq's
//! `verify-ca` and `verify-full` and its `sslrootcert` are taken off the URL here, before
//! tokio-postgres parses it. Since rustls always verifies, `require` is as strict as
//! `verify-full`: a server whose certificate does not verify is refused, never used
//! unencrypted or unverified.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::store::StoreError;

/// Whether and how to use TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Tls {
    /// Plain connections (`sslmode` absent, `disable` or `prefer`; Unix sockets).
    Off,
    /// TLS required, verified against these roots (a PEM file), or the system's.
    Verified { roots: Option<PathBuf> },
}

impl Tls {
    /// The connector for the pool: `None` for plain connections.
    pub(super) fn connector(&self) -> Result<Option<MakeRustlsConnect>, StoreError> {
        let Tls::Verified { roots } = self else {
            return Ok(None);
        };
        let mut store = rustls::RootCertStore::empty();
        match roots {
            Some(path) => {
                let bad =
                    |e: String| StoreError::Setup(format!("sslrootcert {}: {e}", path.display()));
                for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
                    store
                        .add(cert.map_err(|e| bad(e.to_string()))?)
                        .map_err(|e| bad(e.to_string()))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                store.add_parsable_certificates(found.certs);
            }
        }
        if store.is_empty() {
            return Err(StoreError::Setup(
                "sslmode asks for TLS, but no trusted certificate was found (set sslrootcert=FILE in the URL, or install the system's CA certificates)".into(),
            ));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::Setup(format!("TLS: {e}")))?
            .with_root_certificates(store)
            .with_no_client_auth();
        Ok(Some(MakeRustlsConnect::new(config)))
    }
}

/// The URL as tokio-postgres takes it, and the TLS it asks for. In a URL
/// (`postgres://...?sslmode=verify-full&sslrootcert=/etc/ca.pem`) the libpq-only
/// parameters are rewritten; a `key=value` string is taken as it is (with
/// `sslmode=require` meaning verified TLS against the system's roots).
pub(super) fn from_url(url: &str) -> Result<(String, Tls), StoreError> {
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    if !is_url {
        let tls = if url.split_whitespace().any(|kv| kv == "sslmode=require") {
            Tls::Verified { roots: None }
        } else {
            Tls::Off
        };
        return Ok((url.to_string(), tls));
    }
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), Tls::Off));
    };
    let mut kept = Vec::new();
    let mut verify = false;
    let mut roots = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_encoding::percent_decode_str(v).decode_utf8_lossy();
        match k {
            "sslmode" => match &*value {
                "require" | "verify-ca" | "verify-full" => {
                    verify = true;
                    kept.push("sslmode=require".to_string());
                }
                "disable" | "prefer" => kept.push(pair.to_string()),
                other => {
                    return Err(StoreError::Setup(format!(
                        "sslmode={other} in the PostgreSQL URL is not one of disable, prefer, require, verify-ca, verify-full"
                    )))
                }
            },
            "sslrootcert" => roots = Some(PathBuf::from(&*value)),
            _ => kept.push(pair.to_string()),
        }
    }
    if roots.is_some() && !verify {
        return Err(StoreError::Setup(
            "sslrootcert in the PostgreSQL URL needs sslmode=verify-full (or require)".into(),
        ));
    }
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let tls = if verify {
        Tls::Verified { roots }
    } else {
        Tls::Off
    };
    Ok((url, tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_ask_for_tls_or_not() {
        let plain = "postgresql://totpd@%2Frun%2Fpostgresql/totpd";
        assert_eq!(from_url(plain).unwrap(), (plain.to_string(), Tls::Off));
        assert_eq!(
            from_url("postgres://u:p@db:5432/t?sslmode=disable&connect_timeout=3").unwrap(),
            (
                "postgres://u:p@db:5432/t?sslmode=disable&connect_timeout=3".to_string(),
                Tls::Off
            )
        );
        assert_eq!(
            from_url("postgres://u@db/t?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x")
                .unwrap(),
            (
                "postgres://u@db/t?sslmode=require&application_name=x".to_string(),
                Tls::Verified {
                    roots: Some("/etc/ca.pem".into())
                }
            )
        );
        assert_eq!(
            from_url("postgres://u@db/t?sslmode=require").unwrap().1,
            Tls::Verified { roots: None }
        );
        assert_eq!(
            from_url("host=db user=u sslmode=require").unwrap(),
            (
                "host=db user=u sslmode=require".to_string(),
                Tls::Verified { roots: None }
            )
        );
        assert!(from_url("postgres://u@db/t?sslmode=allow").is_err());
        assert!(from_url("postgres://u@db/t?sslrootcert=/x.pem").is_err());
    }

    #[test]
    fn a_missing_root_file_is_a_setup_error() {
        let tls = Tls::Verified {
            roots: Some("/nonexistent/ca.pem".into()),
        };
        assert!(matches!(tls.connector(), Err(StoreError::Setup(m)) if m.contains("sslrootcert")));
        assert!(Tls::Off.connector().unwrap().is_none());
    }
}

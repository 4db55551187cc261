//! Sealing of secrets at rest: XChaCha20-Poly1305 with the row's identity as associated
//! data, so a ciphertext copied into another row does not open.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// Length of the sealing key in bytes.
pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
/// Version tag in front of every sealed value; leaves room for key rotation.
const KEY_ID: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(
        "sealed value does not open with this key (wrong key, or value moved from another row)"
    )]
    Open,
    #[error("sealed value is malformed")]
    Malformed,
    #[error("random number generator failed")]
    Rng,
    #[error("key file {path}: {reason}")]
    KeyFile { path: PathBuf, reason: String },
}

/// The sealing key and cipher. Cloning is cheap enough; the key never leaves this type.
#[derive(Clone)]
pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        Self {
            cipher: XChaCha20Poly1305::new(key.into()),
        }
    }

    /// Seals `plain` for the row named by `aad` (e.g. `totpd/v1/otp_secrets/<id>`).
    /// Output: key id (1 byte) || nonce (24 bytes) || ciphertext+tag.
    pub fn seal(&self, aad: &str, plain: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::getrandom(&mut nonce).map_err(|_| SealError::Rng)?;
        let ct = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| SealError::Rng)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        out.push(KEY_ID);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Opens a value sealed by [`Sealer::seal`] for the same `aad`.
    pub fn open(&self, aad: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < 1 + NONCE_LEN + 16 || sealed[0] != KEY_ID {
            return Err(SealError::Malformed);
        }
        let (nonce, ct) = sealed[1..].split_at(NONCE_LEN);
        self.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| SealError::Open)
    }
}

/// Where the sealing key comes from, in order: a systemd credential
/// (`$CREDENTIALS_DIRECTORY/totpd.key`), the configured file, or a new key written
/// (mode 0600) to the configured file on first start.
#[derive(Debug, Clone)]
pub struct KeySource {
    pub credentials_dir: Option<PathBuf>,
    pub key_file: PathBuf,
    /// Accept a key file the owner's group may read (never one others may read).
    pub allow_group_readable: bool,
}

/// A key as loaded, with where it came from.
pub struct LoadedKey {
    pub key: [u8; KEY_LEN],
    pub path: PathBuf,
    /// True when the key was made just now.
    pub created: bool,
}

impl KeySource {
    /// Where the key is read from: the systemd credential when there is one, else the
    /// configured file.
    pub fn origin(&self) -> PathBuf {
        self.credential().unwrap_or_else(|| self.key_file.clone())
    }

    fn credential(&self) -> Option<PathBuf> {
        self.credentials_dir
            .as_ref()
            .map(|d| d.join("totpd.key"))
            .filter(|p| p.exists())
    }

    /// Whether a key exists already (so none would be created).
    pub fn exists(&self) -> bool {
        self.credential().is_some() || self.key_file.exists()
    }

    /// Refuses a key file others may read (or the group, unless allowed), as ssh refuses
    /// a loose private key: whoever can read it can open every secret.
    fn check_mode(&self, path: &Path) -> Result<(), SealError> {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path)
            .map_err(|e| SealError::KeyFile {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?
            .permissions()
            .mode()
            & 0o777;
        let loose = if self.allow_group_readable {
            mode & 0o007 != 0 || mode & 0o020 != 0
        } else {
            mode & 0o077 != 0
        };
        if loose {
            return Err(SealError::KeyFile {
                path: path.to_path_buf(),
                reason: format!(
                    "mode {mode:04o} lets other users read the sealing key; run: chmod 600 {}",
                    path.display()
                ),
            });
        }
        Ok(())
    }

    /// The key, made and written on first use.
    pub fn load_or_create(&self) -> Result<LoadedKey, SealError> {
        if let Some(p) = self.credential() {
            return Ok(LoadedKey {
                key: read_key(&p)?,
                path: p,
                created: false,
            });
        }
        let key_file = &self.key_file;
        if key_file.exists() {
            self.check_mode(key_file)?;
            return Ok(LoadedKey {
                key: read_key(key_file)?,
                path: key_file.clone(),
                created: false,
            });
        }
        let mut key = [0u8; KEY_LEN];
        getrandom::getrandom(&mut key).map_err(|_| SealError::Rng)?;
        let err = |e: std::io::Error| SealError::KeyFile {
            path: key_file.clone(),
            reason: e.to_string(),
        };
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(key_file)
            .map_err(err)?;
        f.write_all(data_encoding::HEXLOWER.encode(&key).as_bytes())
            .and_then(|_| f.write_all(b"\n"))
            .and_then(|_| f.sync_all())
            .map_err(err)?;
        Ok(LoadedKey {
            key,
            path: key_file.clone(),
            created: true,
        })
    }
}

/// A key file holds 32 raw bytes or 64 hex digits (surrounding whitespace ignored).
fn read_key(path: &Path) -> Result<[u8; KEY_LEN], SealError> {
    let bytes = fs::read(path).map_err(|e| SealError::KeyFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let bad = || SealError::KeyFile {
        path: path.to_path_buf(),
        reason: "expected 32 raw bytes or 64 hex digits".into(),
    };
    if bytes.len() == KEY_LEN {
        let mut k = [0u8; KEY_LEN];
        k.copy_from_slice(&bytes);
        return Ok(k);
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| bad())?.trim();
    let decoded = data_encoding::HEXLOWER_PERMISSIVE
        .decode(text.as_bytes())
        .map_err(|_| bad())?;
    decoded.try_into().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_row_binding() {
        let s = Sealer::new(&[7u8; KEY_LEN]);
        let sealed = s.seal("totpd/v1/t/a", b"JBSWY3DPEHPK3PXP").unwrap();
        assert_eq!(
            s.open("totpd/v1/t/a", &sealed).unwrap(),
            b"JBSWY3DPEHPK3PXP"
        );
        assert!(matches!(
            s.open("totpd/v1/t/b", &sealed),
            Err(SealError::Open)
        ));
        let other = Sealer::new(&[8u8; KEY_LEN]);
        assert!(other.open("totpd/v1/t/a", &sealed).is_err());
        assert!(matches!(
            s.open("x", &sealed[..10]),
            Err(SealError::Malformed)
        ));
    }

    #[test]
    fn key_file_created_0600_and_reread() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        let src = |cred: Option<&Path>| KeySource {
            allow_group_readable: false,
            credentials_dir: cred.map(Path::to_path_buf),
            key_file: p.clone(),
        };
        let k1 = src(None).load_or_create().unwrap();
        assert!(k1.created);
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let k2 = src(None).load_or_create().unwrap();
        assert!(!k2.created);
        assert_eq!(k1.key, k2.key);
        // A systemd credential wins over the key file.
        let cred = tempfile::tempdir().unwrap();
        fs::write(cred.path().join("totpd.key"), [9u8; KEY_LEN]).unwrap();
        let k3 = src(Some(cred.path())).load_or_create().unwrap();
        assert_eq!(k3.key, [9u8; KEY_LEN]);
        let from = k3.path;
        assert!(from.starts_with(cred.path()));
    }

    #[test]
    fn a_key_file_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        let src = |allow_group_readable| KeySource {
            allow_group_readable,
            credentials_dir: None,
            key_file: p.clone(),
        };
        src(false).load_or_create().unwrap();
        let chmod = |m| fs::set_permissions(&p, fs::Permissions::from_mode(m)).unwrap();
        for (mode, strict_ok, group_ok) in [
            (0o600, true, true),
            (0o400, true, true),
            (0o640, false, true),
            (0o660, false, false),
            (0o644, false, false),
            (0o604, false, false),
        ] {
            chmod(mode);
            let strict = src(false).load_or_create();
            assert_eq!(strict.is_ok(), strict_ok, "{mode:o}");
            if let Err(e) = strict {
                let msg = e.to_string();
                assert!(
                    msg.contains("chmod 600") && msg.contains(&format!("{mode:04o}")),
                    "{msg}"
                );
            }
            assert_eq!(
                src(true).load_or_create().is_ok(),
                group_ok,
                "{mode:o} with the group allowed"
            );
        }
    }
}

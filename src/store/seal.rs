//! Sealing of secrets at rest: XChaCha20-Poly1305 with the row's identity as associated
//! data, so a ciphertext copied into another row does not open; and the key ring the
//! sealing keys come from.
//!
//! # Sealed values
//!
//! `key id (1 byte) || nonce (24 bytes) || ciphertext and tag`. The key id names the key
//! of the ring that sealed the value. New values are sealed with the ring's current key;
//! a value opens with the key its id names. So a ring holding the old and the new key
//! reads everything while a rotation re-seals the old values under the new key, and the
//! old key can leave the ring once no value names it.
//!
//! # Key files
//!
//! The key file (or the systemd credential `totpd.key`) holds one of:
//!
//! - **A key ring, format v1**, as text:
//!
//!   ```text
//!   totpd-keyring v1
//!   # comments and blank lines are ignored
//!   key 1 0123...cdef
//!   key 2 4567...89ab current
//!   ```
//!
//!   The first line (after comments and blank lines) names the format and its version;
//!   another version is refused, never guessed at. Each `key` line gives an id from 1 to
//!   255 (a sealed value carries its key's id in one byte), the 32-byte key as 64 hex
//!   digits, and, on exactly one line, `current`: the key new values are sealed with.
//!   Each id and each key appears once. A malformed file is refused with the number of
//!   the line at fault; key material is never echoed.
//! - **One key, the format before rings**: 32 raw bytes, or 64 hex digits (surrounding
//!   whitespace ignored). It is key id 1, and current.
//!
//! `totpd key generate` prints a new ring (with `--ring FILE`: FILE's keys plus a new
//! current one); the daemon never writes a key, except the one it makes on the very
//! first start when there is none (64 hex digits, 0600).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// Length of the sealing key in bytes.
pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// The id of a lone key (a key file in the format before rings): what every value
/// sealed before key rings carries.
pub const KEY_ID: u8 = 1;
/// The first line of a key ring file: its format and version.
pub const RING_HEADER: &str = "totpd-keyring v1";

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(
        "sealed value does not open with this key (wrong key, or value moved from another row)"
    )]
    Open,
    #[error("sealed value is malformed")]
    Malformed,
    /// The value names a key id the ring does not hold.
    #[error("sealed value names key id {0}, which is not in the key ring")]
    MissingKey(u8),
    #[error("random number generator failed")]
    Rng,
    #[error("key file {path}: {reason}")]
    KeyFile { path: PathBuf, reason: String },
}

/// The sealing keys by id, and which one is current (seals new values). Its `Debug`
/// shows the ids only, never a key.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyRing {
    keys: BTreeMap<u8, [u8; KEY_LEN]>,
    current: u8,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("ids", &self.ids())
            .field("current", &self.current)
            .finish()
    }
}

fn random_key() -> Result<[u8; KEY_LEN], SealError> {
    let mut key = [0u8; KEY_LEN];
    getrandom::getrandom(&mut key).map_err(|_| SealError::Rng)?;
    Ok(key)
}

impl KeyRing {
    /// One key, with [`KEY_ID`], current: what a key file in the format before rings
    /// holds.
    pub fn single(key: [u8; KEY_LEN]) -> Self {
        KeyRing {
            keys: BTreeMap::from([(KEY_ID, key)]),
            current: KEY_ID,
        }
    }

    /// A ring of one new random key with this id, current.
    pub fn generate(id: u8) -> Result<Self, SealError> {
        if id == 0 {
            return Err(SealError::Malformed);
        }
        Ok(KeyRing {
            keys: BTreeMap::from([(id, random_key()?)]),
            current: id,
        })
    }

    /// This ring's keys plus a new random one, current, under the next id: one above
    /// the highest (so an id never comes back while values may still carry it), or when
    /// 255 is taken, the lowest free one. `None` when all 255 ids are taken.
    pub fn with_new_key(&self) -> Result<Option<Self>, SealError> {
        let highest = self.keys.keys().next_back().copied().unwrap_or(0);
        let id = match highest.checked_add(1) {
            Some(id) => Some(id),
            None => (1..=u8::MAX).find(|i| !self.keys.contains_key(i)),
        };
        let Some(id) = id else { return Ok(None) };
        self.with_key(id).map(Some)
    }

    /// This ring's keys plus a new random one under `id`, current (replacing a key the
    /// ring had under `id`: callers check [`KeyRing::contains`] first).
    pub fn with_key(&self, id: u8) -> Result<Self, SealError> {
        if id == 0 {
            return Err(SealError::Malformed);
        }
        let mut ring = self.clone();
        ring.keys.insert(id, random_key()?);
        ring.current = id;
        Ok(ring)
    }

    /// The id of the key that seals new values.
    pub fn current(&self) -> u8 {
        self.current
    }

    /// Every key id, ascending.
    pub fn ids(&self) -> Vec<u8> {
        self.keys.keys().copied().collect()
    }

    /// Whether the ring holds a key with this id.
    pub fn contains(&self, id: u8) -> bool {
        self.keys.contains_key(&id)
    }

    /// The ring as a key ring file, format v1 (see the module's documentation).
    pub fn to_text(&self) -> String {
        let mut out = format!("{RING_HEADER}\n");
        for (id, key) in &self.keys {
            out.push_str(&format!("key {id} {}", data_encoding::HEXLOWER.encode(key)));
            if *id == self.current {
                out.push_str(" current");
            }
            out.push('\n');
        }
        out
    }

    /// Reads a key file's bytes: a key ring (format v1), or one key as 32 raw bytes or
    /// 64 hex digits. The error says what is wrong, and on which line, without any of
    /// the file's text.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        const EXPECTED: &str = "expected a key ring (first line `totpd-keyring v1`), \
                                or one key as 32 raw bytes or 64 hex digits";
        if bytes.len() == KEY_LEN {
            let mut k = [0u8; KEY_LEN];
            k.copy_from_slice(bytes);
            return Ok(Self::single(k));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| EXPECTED.to_string())?;
        if let Some(key) = hex_key(text.trim()) {
            return Ok(Self::single(key));
        }
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
        match lines.next() {
            Some((_, l)) if l.split_whitespace().eq(RING_HEADER.split_whitespace()) => {}
            Some((n, l)) if l.split_whitespace().next() == Some("totpd-keyring") => {
                return Err(format!(
                    "line {n}: not a key ring format this totpd reads (it reads `{RING_HEADER}`)"
                ))
            }
            _ => return Err(EXPECTED.to_string()),
        }
        let mut keys = BTreeMap::new();
        let mut seen: BTreeMap<u8, usize> = BTreeMap::new();
        let mut current: Option<(u8, usize)> = None;
        for (n, line) in lines {
            let words: Vec<&str> = line.split_whitespace().collect();
            let (id, hex, is_current) = match words.as_slice() {
                ["key", id, hex] => (*id, *hex, false),
                ["key", id, hex, "current"] => (*id, *hex, true),
                _ => {
                    return Err(format!(
                        "line {n}: expected `key <id> <64 hex digits>`, with `current` after the key on one line"
                    ))
                }
            };
            let id: u8 = match id.parse() {
                Ok(i) if i >= 1 => i,
                _ => {
                    return Err(format!(
                        "line {n}: the key id must be a number from 1 to 255"
                    ))
                }
            };
            let key =
                hex_key(hex).ok_or_else(|| format!("line {n}: the key must be 64 hex digits"))?;
            if let Some(first) = seen.get(&id) {
                return Err(format!(
                    "line {n}: key id {id} is given already on line {first}"
                ));
            }
            if let Some((other, _)) = keys.iter().find(|(_, k)| **k == key) {
                let first = seen[other];
                return Err(format!(
                    "line {n}: the same key as on line {first}: give each key once, under one id"
                ));
            }
            if is_current {
                if let Some((_, first)) = current {
                    return Err(format!(
                        "line {n}: a second key marked `current` (line {first} is): mark exactly one"
                    ));
                }
                current = Some((id, n));
            }
            seen.insert(id, n);
            keys.insert(id, key);
        }
        if keys.is_empty() {
            return Err("the key ring holds no `key` line".into());
        }
        let Some((current, _)) = current else {
            return Err(
                "no key is marked `current`: mark the one that seals new values (`key <id> <hex> current`)"
                    .into(),
            );
        };
        Ok(KeyRing { keys, current })
    }

    /// Reads the key file or credential at `path` (see [`KeyRing::parse`]).
    pub fn read(path: &Path) -> Result<Self, SealError> {
        let bytes = fs::read(path).map_err(|e| SealError::KeyFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::parse(&bytes).map_err(|reason| SealError::KeyFile {
            path: path.to_path_buf(),
            reason,
        })
    }
}

/// 64 hex digits as a key.
fn hex_key(s: &str) -> Option<[u8; KEY_LEN]> {
    if s.len() != 2 * KEY_LEN {
        return None;
    }
    data_encoding::HEXLOWER_PERMISSIVE
        .decode(s.as_bytes())
        .ok()?
        .try_into()
        .ok()
}

/// The sealing keys and their ciphers. Cloning is cheap (shared); a key never leaves
/// this type.
#[derive(Clone)]
pub struct Sealer {
    keys: Arc<Ciphers>,
}

struct Ciphers {
    current: u8,
    by_id: BTreeMap<u8, XChaCha20Poly1305>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Sealer(key ids {:?}, current {})",
            self.key_ids(),
            self.keys.current
        )
    }
}

impl Sealer {
    /// One key, with id [`KEY_ID`].
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        Self::from_ring(&KeyRing::single(*key))
    }

    /// Every key of the ring; seals with its current key.
    pub fn from_ring(ring: &KeyRing) -> Self {
        Sealer {
            keys: Arc::new(Ciphers {
                current: ring.current,
                by_id: ring
                    .keys
                    .iter()
                    .map(|(id, k)| (*id, XChaCha20Poly1305::new(k.into())))
                    .collect(),
            }),
        }
    }

    /// The id of the key new values are sealed with.
    pub fn current_id(&self) -> u8 {
        self.keys.current
    }

    /// Every key id this sealer opens, ascending.
    pub fn key_ids(&self) -> Vec<u8> {
        self.keys.by_id.keys().copied().collect()
    }

    /// Whether it holds the key with this id.
    pub fn has_key(&self, id: u8) -> bool {
        self.keys.by_id.contains_key(&id)
    }

    /// The id of the key that sealed `sealed` (its first byte); `None` if empty.
    pub fn key_id(sealed: &[u8]) -> Option<u8> {
        sealed.first().copied()
    }

    /// Seals `plain` with the current key for the row named by `aad` (e.g.
    /// `totpd/v1/otp_secrets/<id>`). Output: key id (1 byte) || nonce (24 bytes) ||
    /// ciphertext+tag.
    pub fn seal(&self, aad: &str, plain: &[u8]) -> Result<Vec<u8>, SealError> {
        let id = self.keys.current;
        let cipher = self.keys.by_id.get(&id).ok_or(SealError::MissingKey(id))?;
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::getrandom(&mut nonce).map_err(|_| SealError::Rng)?;
        let ct = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| SealError::Rng)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        out.push(id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Opens a value sealed by [`Sealer::seal`] for the same `aad`, with the key its id
    /// names.
    pub fn open(&self, aad: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < 1 + NONCE_LEN + TAG_LEN {
            return Err(SealError::Malformed);
        }
        let cipher = self
            .keys
            .by_id
            .get(&sealed[0])
            .ok_or(SealError::MissingKey(sealed[0]))?;
        let (nonce, ct) = sealed[1..].split_at(NONCE_LEN);
        cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| SealError::Open)
    }

    /// `sealed` opened and sealed again with the current key, for the same `aad` (the
    /// same row); `None` when the current key sealed it already.
    pub fn reseal(&self, aad: &str, sealed: &[u8]) -> Result<Option<Vec<u8>>, SealError> {
        if Self::key_id(sealed) == Some(self.keys.current) {
            return Ok(None);
        }
        let plain = self.open(aad, sealed)?;
        self.seal(aad, &plain).map(Some)
    }
}

/// Where the sealing keys come from, in order: a systemd credential
/// (`$CREDENTIALS_DIRECTORY/totpd.key`), the configured file, or a new key written
/// (mode 0600) to the configured file on first start.
#[derive(Debug, Clone)]
pub struct KeySource {
    pub credentials_dir: Option<PathBuf>,
    pub key_file: PathBuf,
    /// Accept a key file the owner's group may read (never one others may read).
    pub allow_group_readable: bool,
}

/// The keys as loaded, with where they came from. (`Debug` shows key ids, never keys.)
#[derive(Debug)]
pub struct LoadedKey {
    pub ring: KeyRing,
    pub path: PathBuf,
    /// True when the key was made just now.
    pub created: bool,
}

impl LoadedKey {
    /// A sealer with every key of the ring.
    pub fn sealer(&self) -> Sealer {
        Sealer::from_ring(&self.ring)
    }
}

impl KeySource {
    /// Where the keys are read from: the systemd credential when there is one, else the
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

    /// The key ring, a new key made and written on first use.
    pub fn load_or_create(&self) -> Result<LoadedKey, SealError> {
        if let Some(p) = self.credential() {
            return Ok(LoadedKey {
                ring: KeyRing::read(&p)?,
                path: p,
                created: false,
            });
        }
        let key_file = &self.key_file;
        if key_file.exists() {
            self.check_mode(key_file)?;
            return Ok(LoadedKey {
                ring: KeyRing::read(key_file)?,
                path: key_file.clone(),
                created: false,
            });
        }
        let key = random_key()?;
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
            ring: KeyRing::single(key),
            path: key_file.clone(),
            created: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_row_binding() {
        let s = Sealer::new(&[7u8; KEY_LEN]);
        let sealed = s.seal("totpd/v1/t/a", b"JBSWY3DPEHPK3PXP").unwrap();
        assert_eq!(sealed[0], KEY_ID);
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

    fn ring(text: &str) -> Result<KeyRing, String> {
        KeyRing::parse(text.as_bytes())
    }

    const K1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const K2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn a_ring_seals_with_its_current_key_and_opens_with_any_of_its_keys() {
        let old = Sealer::new(&[1u8; KEY_LEN]);
        let by_old = old.seal("totpd/v1/t/a", b"seed").unwrap();
        let both = KeyRing {
            keys: BTreeMap::from([(1, [1u8; KEY_LEN]), (2, [2u8; KEY_LEN])]),
            current: 2,
        };
        let s = Sealer::from_ring(&both);
        assert_eq!((s.current_id(), s.key_ids()), (2, vec![1, 2]));
        // An old value opens; a new one carries id 2.
        assert_eq!(s.open("totpd/v1/t/a", &by_old).unwrap(), b"seed");
        let by_new = s.seal("totpd/v1/t/a", b"seed").unwrap();
        assert_eq!(Sealer::key_id(&by_new), Some(2));
        // Re-sealing keeps the row binding and moves the value to the current key.
        let moved = s.reseal("totpd/v1/t/a", &by_old).unwrap().unwrap();
        assert_eq!(moved[0], 2);
        assert_eq!(s.open("totpd/v1/t/a", &moved).unwrap(), b"seed");
        assert!(s.open("totpd/v1/t/b", &moved).is_err());
        assert!(s.reseal("totpd/v1/t/a", &moved).unwrap().is_none());
        // Without key 1, a value sealed by it names the missing id.
        let only_new = Sealer::from_ring(&KeyRing {
            keys: BTreeMap::from([(2, [2u8; KEY_LEN])]),
            current: 2,
        });
        assert!(matches!(
            only_new.open("totpd/v1/t/a", &by_old),
            Err(SealError::MissingKey(1))
        ));
        assert!(only_new.open("totpd/v1/t/a", &moved).is_ok());
    }

    #[test]
    fn key_files_in_every_format_load() {
        // The formats before rings: 32 raw bytes, 64 hex digits (any case, whitespace).
        assert_eq!(
            KeyRing::parse(&[9u8; KEY_LEN]).unwrap(),
            KeyRing::single([9u8; KEY_LEN])
        );
        let hex = ring(&format!("  {}\n", K1.to_uppercase())).unwrap();
        assert_eq!(hex, KeyRing::single([0x11; KEY_LEN]));
        assert_eq!((hex.current(), hex.ids()), (1, vec![1]));
        // A ring, with comments, blank lines, CRLF and extra spaces.
        let r = ring(&format!(
            "# totpd keys\r\n\r\ntotpd-keyring   v1\r\nkey 1 {K1}\r\n# the new one\nkey 7\t{K2}  current\n"
        ))
        .unwrap();
        assert_eq!((r.current(), r.ids()), (7, vec![1, 7]));
        assert_eq!(ring(&r.to_text()).unwrap(), r);
        // What `key generate` makes reads back, and a new key goes above the highest id.
        let g = KeyRing::generate(1).unwrap();
        let next = g.with_new_key().unwrap().unwrap();
        assert_eq!((next.current(), next.ids()), (2, vec![1, 2]));
        assert_eq!(ring(&next.to_text()).unwrap(), next);
        assert_ne!(next.keys[&1], next.keys[&2]);
    }

    #[test]
    fn new_ids_skip_the_highest_taken_then_fill_gaps_and_stop_at_255() {
        let mut r = KeyRing::generate(254).unwrap();
        r = r.with_new_key().unwrap().unwrap();
        assert_eq!(r.current(), 255);
        r = r.with_new_key().unwrap().unwrap();
        assert_eq!(r.current(), 1, "255 is taken: the lowest free id");
        for _ in 0..252 {
            r = r.with_new_key().unwrap().unwrap();
        }
        assert_eq!(r.ids().len(), 255);
        assert!(r.with_new_key().unwrap().is_none());
    }

    #[test]
    fn a_malformed_ring_is_refused_naming_the_line_and_never_the_key() {
        let cases: &[(String, &str)] = &[
            (format!("totpd-keyring v2\nkey 1 {K1} current\n"), "line 1:"),
            (
                format!("totpd-keyring v1\nkey 1 {K1} current\nkey 1 {K2}\n"),
                "line 3: key id 1 is given already on line 2",
            ),
            (
                format!("totpd-keyring v1\n\nkey 1 {K1} current\nkey 2 {K1}\n"),
                "line 4: the same key as on line 3",
            ),
            (
                format!("totpd-keyring v1\nkey 1 {K1} current\nkey 2 {K2} current\n"),
                "line 3: a second key marked `current` (line 2 is)",
            ),
            (
                format!("totpd-keyring v1\nkey 0 {K1} current\n"),
                "line 2: the key id must be a number from 1 to 255",
            ),
            (
                format!("totpd-keyring v1\nkey 256 {K1} current\n"),
                "line 2: the key id",
            ),
            (
                format!("totpd-keyring v1\nkey 1 {}0 current\n", &K1[..62]),
                "line 2: the key must be 64 hex digits",
            ),
            (
                format!("totpd-keyring v1\nkey 1 {}zz current\n", &K1[..62]),
                "line 2: the key must be 64 hex digits",
            ),
            (
                format!("totpd-keyring v1\nkey 1 {K1} current extra\n"),
                "line 2: expected `key <id> <64 hex digits>`",
            ),
            (
                format!("totpd-keyring v1\nkey 1 {K1} curent\n"),
                "line 2: expected",
            ),
            (
                format!("totpd-keyring v1\nkey 1 {K1}\n"),
                "no key is marked `current`",
            ),
            (
                "totpd-keyring v1\n# nothing\n".to_string(),
                "holds no `key` line",
            ),
            (
                format!("key 1 {K1} current\n"),
                "expected a key ring (first line `totpd-keyring v1`)",
            ),
            ("not a key\n".to_string(), "expected a key ring"),
        ];
        for (text, want) in cases {
            let e = ring(text).expect_err(text);
            assert!(e.contains(want), "{e:?} should say {want:?}");
            assert!(!e.contains(&K1[..16]) && !e.contains(&K2[..16]), "{e}");
        }
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
        assert_eq!(k1.ring, k2.ring);
        assert_eq!(k2.ring.ids(), vec![KEY_ID]);
        // A systemd credential wins over the key file, and may hold a ring.
        let cred = tempfile::tempdir().unwrap();
        fs::write(cred.path().join("totpd.key"), [9u8; KEY_LEN]).unwrap();
        let k3 = src(Some(cred.path())).load_or_create().unwrap();
        assert_eq!(k3.ring, KeyRing::single([9u8; KEY_LEN]));
        let from = k3.path;
        assert!(from.starts_with(cred.path()));
        fs::write(
            cred.path().join("totpd.key"),
            format!("totpd-keyring v1\nkey 1 {K1}\nkey 2 {K2} current\n"),
        )
        .unwrap();
        let k4 = src(Some(cred.path())).load_or_create().unwrap();
        assert_eq!((k4.ring.current(), k4.sealer().key_ids()), (2, vec![1, 2]));
        // A malformed one names the file and the line.
        fs::write(cred.path().join("totpd.key"), "totpd-keyring v1\nkey x\n").unwrap();
        let e = src(Some(cred.path()))
            .load_or_create()
            .unwrap_err()
            .to_string();
        assert!(e.contains("totpd.key") && e.contains("line 2"), "{e}");
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

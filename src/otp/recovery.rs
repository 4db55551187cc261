//! Recovery codes: the way in when the phone is lost. A set holds [`COUNT`] codes, each
//! `xxxx-xxxx-xxxx-xxxx-xxxx` in Crockford's base32 (no I, L, O or U, so nothing looks
//! like anything else). The first group is a plain selector, so a code is found with
//! one lookup; the other sixteen characters carry 80 random bits, stored only as an
//! argon2id hash (OWASP's parameters), so one attempt costs exactly one argon2 verify.

use std::sync::LazyLock;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// Codes in one set.
pub const COUNT: usize = 10;
/// Characters of the selector and of the secret part.
const SELECTOR_LEN: usize = 4;
const SECRET_LEN: usize = 16;

/// Crockford's base32 alphabet, in lower case.
const SYMBOLS: &str = "0123456789abcdefghjkmnpqrstvwxyz";

static CROCKFORD: LazyLock<data_encoding::Encoding> = LazyLock::new(|| {
    let mut spec = data_encoding::Specification::new();
    spec.symbols.push_str(SYMBOLS);
    spec.encoding().expect("a valid base32 specification")
});

/// One recovery code, normalised: lower case, no dashes.
#[derive(Clone, PartialEq, Eq)]
pub struct RecoveryCode {
    /// The first group: stored in clear, to find the code's hash.
    pub selector: String,
    /// The other sixteen characters: 80 secret bits, stored only hashed.
    pub secret: String,
}

impl std::fmt::Debug for RecoveryCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecoveryCode({}-****)", self.selector)
    }
}

impl RecoveryCode {
    /// As shown to the user once: `abcd-efgh-jkmn-pqrs-tvwx`.
    pub fn display(&self) -> String {
        let all = format!("{}{}", self.selector, self.secret);
        all.as_bytes()
            .chunks(4)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join("-")
    }
}

/// Why a code could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("random number generator failed")]
    Rng,
    #[error("argon2: {0}")]
    Hash(String),
}

/// A new set of [`COUNT`] codes with distinct selectors.
pub fn generate_set() -> Result<Vec<RecoveryCode>, RecoveryError> {
    let mut set: Vec<RecoveryCode> = Vec::with_capacity(COUNT);
    while set.len() < COUNT {
        let c = generate()?;
        if !set.iter().any(|o| o.selector == c.selector) {
            set.push(c);
        }
    }
    Ok(set)
}

fn generate() -> Result<RecoveryCode, RecoveryError> {
    // 13 bytes are 104 bits: 20 characters of 5 bits, all random.
    let mut b = [0u8; 13];
    getrandom::getrandom(&mut b).map_err(|_| RecoveryError::Rng)?;
    let text = CROCKFORD.encode(&b);
    Ok(RecoveryCode {
        selector: text[..SELECTOR_LEN].to_string(),
        secret: text[SELECTOR_LEN..SELECTOR_LEN + SECRET_LEN].to_string(),
    })
}

/// Reads a code as a user types it: any case, dashes and spaces anywhere, the
/// look-alikes O, I and L as 0, 1 and 1. `None` if it cannot be a recovery code.
pub fn parse(input: &str) -> Option<RecoveryCode> {
    let mut text = String::with_capacity(SELECTOR_LEN + SECRET_LEN);
    for c in input.chars().filter(|c| *c != '-' && !c.is_whitespace()) {
        if text.len() == SELECTOR_LEN + SECRET_LEN || !c.is_ascii() {
            return None;
        }
        let canon = match c.to_ascii_lowercase() {
            'o' => '0',
            'i' | 'l' => '1',
            other => other,
        };
        if !SYMBOLS.contains(canon) {
            return None;
        }
        text.push(canon);
    }
    (text.len() == SELECTOR_LEN + SECRET_LEN).then(|| RecoveryCode {
        selector: text[..SELECTOR_LEN].to_string(),
        secret: text[SELECTOR_LEN..].to_string(),
    })
}

/// argon2id with OWASP's minimum: 19 MiB of memory, 2 passes, 1 lane.
fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// The secret part's PHC string (`$argon2id$v=19$m=19456,t=2,p=1$...`). Slow on
/// purpose: call it off the async workers.
pub fn hash(code: &RecoveryCode) -> Result<String, RecoveryError> {
    let salt = SaltString::generate(&mut OsRng);
    argon2()
        .hash_password(code.secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| RecoveryError::Hash(e.to_string()))
}

/// Whether `code`'s secret part matches the stored PHC string; with no stored hash (no
/// code has this selector), a hash of nothing is checked instead, so an unknown selector
/// costs what a wrong code costs. Slow on purpose: call it off the async workers.
pub fn check(code: &RecoveryCode, stored: Option<&str>) -> bool {
    static DECOY: LazyLock<String> = LazyLock::new(|| {
        let nothing = RecoveryCode {
            selector: String::new(),
            secret: String::new(),
        };
        hash(&nothing).unwrap_or_default()
    });
    let (phc, real) = match stored {
        Some(s) => (s, true),
        None => (DECOY.as_str(), false),
    };
    let ok = PasswordHash::new(phc)
        .map(|h| argon2().verify_password(code.secret.as_bytes(), &h).is_ok())
        .unwrap_or(false);
    ok && real
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_are_ten_distinct_well_formed_codes() {
        let set = generate_set().unwrap();
        assert_eq!(set.len(), COUNT);
        let mut shown: Vec<String> = set.iter().map(RecoveryCode::display).collect();
        for s in &shown {
            assert_eq!(s.len(), 24, "{s}");
            assert_eq!(s.matches('-').count(), 4, "{s}");
            assert!(!s.contains(['i', 'l', 'o', 'u']), "{s}");
        }
        shown.sort();
        shown.dedup();
        assert_eq!(shown.len(), COUNT);
    }

    #[test]
    fn typed_any_way_a_code_reads_the_same() {
        let c = generate_set().unwrap().remove(0);
        let shown = c.display();
        assert_eq!(parse(&shown), Some(c.clone()));
        assert_eq!(parse(&shown.to_uppercase()), Some(c.clone()));
        assert_eq!(parse(&shown.replace('-', "")), Some(c.clone()));
        assert_eq!(
            parse(&format!(" {} ", shown.replace('-', " "))),
            Some(c.clone())
        );
        assert_eq!(
            parse("0o1i-l000-0000-0000-0000").map(|c| c.display()),
            Some("0011-1000-0000-0000-0000".into())
        );
        for bad in [
            "",
            "123456",
            "abcd-efgh",
            "abcd-efgh-jkmn-pqrs-tvwxy",
            "abcd-efgh-jkmn-pqrs-tvwu",
            "äbcd-efgh-jkmn-pqrs-tvwx",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_hash_checks_its_code_only() {
        let set = generate_set().unwrap();
        let h = hash(&set[0]).unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(!h.contains(&set[0].secret));
        assert!(check(&set[0], Some(&h)));
        assert!(!check(&set[1], Some(&h)));
        assert!(!check(&set[0], None));
        assert!(!check(&set[0], Some("not a hash")));
    }
}

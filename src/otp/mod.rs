//! The TOTP core: codes (RFC 6238 on totp-rs), verification with a skew window, replay
//! refusal, consecutive-failure lockout, secret generation, base32, otpauth URIs and QR
//! images. No HTTP and no clock: `now` is always an argument.

pub mod qr;
pub mod recovery;
pub mod uri;

use std::sync::LazyLock;

use totp_rs::TOTP;

/// Consecutive failures before a lock when the surface sets no other limit.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// HMAC hash of a TOTP secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha1,
    Sha256,
    Sha512,
}

impl Algorithm {
    /// Parses `SHA1`, `SHA256`, `SHA512` (any case).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "SHA1" => Some(Algorithm::Sha1),
            "SHA256" => Some(Algorithm::Sha256),
            "SHA512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha1 => "SHA1",
            Algorithm::Sha256 => "SHA256",
            Algorithm::Sha512 => "SHA512",
        }
    }

    fn totp_rs(self) -> totp_rs::Algorithm {
        match self {
            Algorithm::Sha1 => totp_rs::Algorithm::SHA1,
            Algorithm::Sha256 => totp_rs::Algorithm::SHA256,
            Algorithm::Sha512 => totp_rs::Algorithm::SHA512,
        }
    }
}

/// How codes are made from a secret. Built only by [`Params::new`], so every instance
/// holds a supported algorithm, 6 or 8 digits and a period of 1..=[`MAX_PERIOD`] seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    pub algorithm: Algorithm,
    /// 6 or 8.
    pub digits: u32,
    /// Seconds per step, 1..=[`MAX_PERIOD`].
    pub period: u64,
}

/// The longest period accepted: one day.
pub const MAX_PERIOD: i64 = 86_400;

/// Why code parameters were refused; each message starts with the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("algorithm: {0:?} is not one of SHA1, SHA256, SHA512")]
    Algorithm(String),
    #[error("digits: must be 6 or 8, not {0}")]
    Digits(i64),
    #[error("period: must be from 1 to {MAX_PERIOD} seconds, not {0}")]
    Period(i64),
}

impl Params {
    /// The one check of code parameters, for every surface and for rows read back from
    /// storage: `algorithm` SHA1/SHA256/SHA512 (any case), `digits` 6 or 8, `period`
    /// 1..=86400 seconds. Checked in that order.
    pub fn new(algorithm: &str, digits: i64, period: i64) -> Result<Params, ParamError> {
        let algorithm =
            Algorithm::parse(algorithm).ok_or_else(|| ParamError::Algorithm(algorithm.into()))?;
        if digits != 6 && digits != 8 {
            return Err(ParamError::Digits(digits));
        }
        if !(1..=MAX_PERIOD).contains(&period) {
            return Err(ParamError::Period(period));
        }
        Ok(Params {
            algorithm,
            digits: digits as u32,
            period: period as u64,
        })
    }

    /// The time step that contains unix time `t`.
    pub fn step(&self, t: i64) -> i64 {
        t.max(0) / self.period as i64
    }

    /// Whole seconds until the code of time `t` changes: 1..=period.
    pub fn remaining(&self, t: i64) -> u64 {
        self.period - (t.max(0) as u64 % self.period)
    }
}

/// The code for time step `step`.
pub fn code_for_step(secret: &[u8], p: &Params, step: i64) -> String {
    // new_unchecked: the length floor is each surface's policy (80 bits for imported
    // agent secrets), and digits are checked where params are built.
    let totp = TOTP::new_unchecked(
        p.algorithm.totp_rs(),
        p.digits as usize,
        0,
        p.period,
        secret.to_vec(),
    );
    totp.generate(step.max(0) as u64 * p.period)
}

/// The code at unix time `t`.
pub fn code_at(secret: &[u8], p: &Params, t: i64) -> String {
    code_for_step(secret, p, p.step(t))
}

/// What a secret remembers between verifications.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerifyState {
    /// The last accepted time step; codes at or before it are refused (RFC 6238 §5.2).
    pub last_step: Option<i64>,
    /// Consecutive failures since the last success or lock.
    pub failures: u32,
    /// Unix time until which every code is refused.
    pub locked_until: Option<i64>,
}

/// The verification policy of the secret's owner.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Steps accepted either side of the current one.
    pub skew: u32,
    /// Consecutive failures that lock the secret for one period.
    pub max_attempts: u32,
}

/// Why a code was refused. For logs and metrics only: callers get one answer for all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Malformed,
    Invalid,
    Replay,
    Locked,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::Invalid => "invalid",
            Refusal::Replay => "replay",
            Refusal::Locked => "locked",
        }
    }
}

/// The outcome of one verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted { step: i64 },
    Refused(Refusal),
}

/// Checks `code` against `secret` at `now` and returns the outcome with the state to
/// store. Pure: the caller reads and writes the state in one transaction.
///
/// A code is trimmed and must then be exactly `digits` ASCII digits; anything else is
/// a failed attempt like a wrong code, so it cannot slip past the counter. A locked
/// secret refuses even the right code; once the lock has passed the count restarts.
pub fn verify(
    secret: &[u8],
    p: &Params,
    w: &Window,
    code: &str,
    now: i64,
    state: VerifyState,
) -> (Outcome, VerifyState) {
    let matched = match_code(secret, p, w, code, now, state.last_step);
    let lock = LockState {
        failures: state.failures,
        locked_until: state.locked_until,
    };
    let (settled, lock) = settle(
        matched.map(|_| ()),
        lock,
        w.max_attempts,
        p.period as i64,
        now,
    );
    let outcome = match (settled, matched) {
        (Ok(()), Ok(step)) => Outcome::Accepted { step },
        (Err(r), _) | (Ok(()), Err(r)) => Outcome::Refused(r),
    };
    let last_step = match outcome {
        Outcome::Accepted { step } => Some(step),
        Outcome::Refused(_) => state.last_step,
    };
    (
        outcome,
        VerifyState {
            last_step,
            failures: lock.failures,
            locked_until: lock.locked_until,
        },
    )
}

/// A code as it is remembered when tried (Vault's TOTP engine): trimmed, and only if it
/// has `p`'s length, as Vault remembers every code of the right length, digits or not
/// (so a repeat of either is "used"). Other lengths are never remembered: Vault refuses
/// them before looking, so they are never repeats.
pub fn tried_form<'a>(code: &'a str, p: &Params) -> Option<&'a str> {
    let code = code.trim();
    (code.len() == p.digits as usize).then_some(code)
}

/// Until when a code tried at `now` is remembered: Vault's engine keeps it for
/// `period × (2 + skew)` seconds, past the last moment any step it could match is in
/// the window.
pub fn tried_until(p: &Params, w: &Window, now: i64) -> i64 {
    now.saturating_add((p.period as i64).saturating_mul(2 + i64::from(w.skew)))
}

/// Vault's TOTP engine's rule on top of [`verify`]: a code in `tried` (the codes tried
/// at this secret and still remembered) is refused as used, before anything else, and
/// changes nothing (`None`): it was counted when first tried. Any other code is
/// verified as everywhere; with the outcome and state comes the code for the caller to
/// remember until [`tried_until`] (in its [`tried_form`]), if any: none of another
/// length, and none when the secret is locked, since a lock refuses every code without looking
/// at it, so its refusals are not tries (and a flood while locked cannot grow the
/// record).
pub fn verify_untried(
    secret: &[u8],
    p: &Params,
    w: &Window,
    code: &str,
    now: i64,
    state: VerifyState,
    tried: &[String],
) -> Option<(Outcome, VerifyState, Option<String>)> {
    let form = tried_form(code, p);
    if form.is_some_and(|c| tried.iter().any(|t| t == c)) {
        return None;
    }
    let (outcome, next) = verify(secret, p, w, code, now, state);
    let remember = match outcome {
        Outcome::Refused(Refusal::Locked) => None,
        _ => form.map(str::to_string),
    };
    Some((outcome, next, remember))
}

/// What `code` matches for one secret, before any lock is looked at/// What `code` matches for one secret, before any lock is looked at: the step it
/// belongs to in the window, or why not. The whole window is always computed, so every
/// answer costs the same.
pub fn match_code(
    secret: &[u8],
    p: &Params,
    w: &Window,
    code: &str,
    now: i64,
    last_step: Option<i64>,
) -> Result<i64, Refusal> {
    let code = code.trim();
    let well_formed = code.len() == p.digits as usize && code.bytes().all(|b| b.is_ascii_digit());
    let mut matched = None;
    if well_formed {
        let current = p.step(now);
        let skew = w.skew as i64;
        for step in (current - skew).max(0)..=current + skew {
            let expected = code_for_step(secret, p, step);
            if constant_time_eq(expected.as_bytes(), code.as_bytes()) {
                matched = Some(step);
            }
        }
    }
    match matched {
        _ if !well_formed => Err(Refusal::Malformed),
        Some(step) if last_step.is_some_and(|last| step <= last) => Err(Refusal::Replay),
        Some(step) => Ok(step),
        None => Err(Refusal::Invalid),
    }
}

/// Consecutive failures and the lock of whoever attempts: one secret, or one user
/// across all their devices and recovery codes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LockState {
    pub failures: u32,
    /// Unix time until which every attempt is refused.
    pub locked_until: Option<i64>,
}

/// Settles one attempt against the lock. While locked, every attempt is refused as
/// `Locked`, the right one too, and does not count; once the lock has passed the count
/// restarts. A failure counts, and the `max_attempts`-th in a row locks for `lock_for`
/// seconds; a success resets the count.
pub fn settle(
    attempt: Result<(), Refusal>,
    lock: LockState,
    max_attempts: u32,
    lock_for: i64,
    now: i64,
) -> (Result<(), Refusal>, LockState) {
    let mut st = lock;
    if let Some(until) = st.locked_until {
        if now < until {
            return (Err(Refusal::Locked), st);
        }
        st = LockState::default();
    }
    match attempt {
        Ok(()) => (Ok(()), LockState::default()),
        Err(r) => {
            st.failures = st.failures.saturating_add(1);
            if st.failures >= max_attempts.max(1) {
                st = LockState {
                    failures: 0,
                    locked_until: Some(now + lock_for),
                };
            }
            (Err(r), st)
        }
    }
}

/// Checks `code` against every one of a user's secrets (`(secret, params, last step)`)
/// under one lock: the failure count is the user's, so guesses spread over several
/// devices lock as fast as guesses at one. Returns the outcome, the index of the secret
/// that accepted, and the user's new lock. The lock lasts the longest period.
pub fn verify_any(
    secrets: &[(&[u8], &Params, Option<i64>)],
    w: &Window,
    code: &str,
    now: i64,
    lock: LockState,
) -> (Outcome, Option<usize>, LockState) {
    let matches: Vec<Result<i64, Refusal>> = secrets
        .iter()
        .map(|(s, p, last)| match_code(s, p, w, code, now, *last))
        .collect();
    let accepted = matches.iter().position(Result::is_ok);
    // The most telling refusal for the log: a replay beats a plain mismatch.
    let refusal = [Refusal::Replay, Refusal::Invalid, Refusal::Malformed]
        .into_iter()
        .find(|r| matches.contains(&Err(*r)))
        .unwrap_or(Refusal::Invalid);
    let attempt = if accepted.is_some() {
        Ok(())
    } else {
        Err(refusal)
    };
    let lock_for = secrets
        .iter()
        .map(|(_, p, _)| p.period as i64)
        .max()
        .unwrap_or(30);
    let (settled, lock) = settle(attempt, lock, w.max_attempts, lock_for, now);
    let step = accepted.and_then(|i| matches[i].ok().map(|step| (i, step)));
    match (settled, step) {
        (Ok(()), Some((i, step))) => (Outcome::Accepted { step }, Some(i), lock),
        (Err(r), _) => (Outcome::Refused(r), None, lock),
        (Ok(()), None) => (Outcome::Refused(refusal), None, lock),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A new secret of `len` bytes from the OS RNG.
pub fn generate_secret(len: usize) -> Result<Vec<u8>, getrandom::Error> {
    let mut s = vec![0u8; len];
    getrandom::getrandom(&mut s)?;
    Ok(s)
}

/// Base32 without padding, as authenticator apps show it.
pub fn encode_base32(secret: &[u8]) -> String {
    data_encoding::BASE32_NOPAD.encode(secret)
}

/// Lenient base32 as services print it: any case, spaces, dashes and padding allowed;
/// unused trailing bits are ignored.
pub fn decode_base32(s: &str) -> Option<Vec<u8>> {
    static LENIENT: LazyLock<data_encoding::Encoding> = LazyLock::new(|| {
        let mut spec = data_encoding::BASE32_NOPAD.specification();
        spec.check_trailing_bits = false;
        spec.encoding()
            .unwrap_or_else(|_| data_encoding::BASE32_NOPAD.clone())
    });
    let cleaned: String = s
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect::<String>()
        .trim_end_matches('=')
        .to_ascii_uppercase();
    if cleaned.is_empty() {
        return None;
    }
    LENIENT.decode(cleaned.as_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED20: &[u8] = b"12345678901234567890";
    const SEED32: &[u8] = b"12345678901234567890123456789012";
    const SEED64: &[u8] = b"1234567890123456789012345678901234567890123456789012345678901234";

    fn p(algorithm: Algorithm, digits: u32, period: u64) -> Params {
        Params::new(algorithm.as_str(), digits.into(), period as i64).unwrap()
    }

    #[test]
    fn params_are_checked_in_one_place() {
        assert_eq!(
            Params::new("sha256", 8, 60).unwrap(),
            Params {
                algorithm: Algorithm::Sha256,
                digits: 8,
                period: 60
            }
        );
        assert_eq!(
            Params::new("MD5", 7, 0),
            Err(ParamError::Algorithm("MD5".into()))
        );
        assert_eq!(Params::new("SHA1", 7, 0), Err(ParamError::Digits(7)));
        assert_eq!(Params::new("SHA1", 6, 0), Err(ParamError::Period(0)));
        assert_eq!(
            Params::new("SHA1", 6, 86_401),
            Err(ParamError::Period(86_401))
        );
        assert!(ParamError::Digits(7).to_string().starts_with("digits: "));
    }

    /// RFC 6238 appendix B, every row.
    #[test]
    fn rfc6238_appendix_b() {
        let rows: &[(i64, &str, &str, &str)] = &[
            (59, "94287082", "46119246", "90693936"),
            (1111111109, "07081804", "68084774", "25091201"),
            (1111111111, "14050471", "67062674", "99943326"),
            (1234567890, "89005924", "91819424", "93441116"),
            (2000000000, "69279037", "90698825", "38618901"),
            (20000000000, "65353130", "77737706", "47863826"),
        ];
        for (t, sha1, sha256, sha512) in rows {
            assert_eq!(
                code_at(SEED20, &p(Algorithm::Sha1, 8, 30), *t),
                *sha1,
                "SHA1 at {t}"
            );
            assert_eq!(
                code_at(SEED32, &p(Algorithm::Sha256, 8, 30), *t),
                *sha256,
                "SHA256 at {t}"
            );
            assert_eq!(
                code_at(SEED64, &p(Algorithm::Sha512, 8, 30), *t),
                *sha512,
                "SHA512 at {t}"
            );
            // Six digits are the last six of eight.
            assert_eq!(code_at(SEED20, &p(Algorithm::Sha1, 6, 30), *t), &sha1[2..]);
        }
    }

    fn w(skew: u32, max: u32) -> Window {
        Window {
            skew,
            max_attempts: max,
        }
    }

    #[test]
    fn accepts_once_then_refuses_replay_and_older_steps() {
        let pr = p(Algorithm::Sha1, 6, 30);
        let now = 1_000_000_000;
        let code = code_at(SEED20, &pr, now);
        let (o, st) = verify(SEED20, &pr, &w(1, 5), &code, now, VerifyState::default());
        assert_eq!(o, Outcome::Accepted { step: now / 30 });
        let (o, st2) = verify(SEED20, &pr, &w(1, 5), &code, now + 1, st);
        assert_eq!(o, Outcome::Refused(Refusal::Replay));
        assert_eq!(st2.failures, 1, "a replay counts as a failure");
        let prev = code_at(SEED20, &pr, now - 30);
        let (o, _) = verify(SEED20, &pr, &w(1, 5), &prev, now, st);
        assert_eq!(o, Outcome::Refused(Refusal::Replay));
        // The next step's code is fine.
        let next = code_at(SEED20, &pr, now + 30);
        let (o, _) = verify(SEED20, &pr, &w(1, 5), &next, now + 30, st);
        assert!(matches!(o, Outcome::Accepted { .. }));
    }

    #[test]
    fn skew_window() {
        let pr = p(Algorithm::Sha256, 8, 30);
        let now = 1_500_000_015;
        let prev = code_at(SEED32, &pr, now - 30);
        let next = code_at(SEED32, &pr, now + 30);
        let far = code_at(SEED32, &pr, now - 60);
        let s = VerifyState::default();
        assert_eq!(
            verify(SEED32, &pr, &w(0, 5), &prev, now, s).0,
            Outcome::Refused(Refusal::Invalid)
        );
        assert!(matches!(
            verify(SEED32, &pr, &w(1, 5), &prev, now, s).0,
            Outcome::Accepted { .. }
        ));
        assert!(matches!(
            verify(SEED32, &pr, &w(1, 5), &next, now, s).0,
            Outcome::Accepted { .. }
        ));
        assert_eq!(
            verify(SEED32, &pr, &w(1, 5), &far, now, s).0,
            Outcome::Refused(Refusal::Invalid)
        );
    }

    #[test]
    fn lockout_for_one_period_then_the_count_restarts() {
        let pr = p(Algorithm::Sha1, 6, 30);
        let now = 1_700_000_000;
        let good = code_at(SEED20, &pr, now);
        let mut st = VerifyState::default();
        for i in 1..=3 {
            let (o, s) = verify(SEED20, &pr, &w(1, 3), "000000x", now, st);
            assert_eq!(o, Outcome::Refused(Refusal::Malformed));
            st = s;
            if i < 3 {
                assert_eq!(st.failures, i);
            }
        }
        assert_eq!(st.locked_until, Some(now + 30));
        let (o, st2) = verify(SEED20, &pr, &w(1, 3), &good, now + 29, st);
        assert_eq!(o, Outcome::Refused(Refusal::Locked));
        assert_eq!(st2, st, "a refused attempt while locked changes nothing");
        let later = now + 30;
        let (o, st3) = verify(
            SEED20,
            &pr,
            &w(1, 3),
            &code_at(SEED20, &pr, later),
            later,
            st,
        );
        assert!(matches!(o, Outcome::Accepted { .. }));
        assert_eq!((st3.failures, st3.locked_until), (0, None));
    }

    #[test]
    fn input_is_trimmed_and_must_be_exact_digits() {
        let pr = p(Algorithm::Sha1, 6, 30);
        let now = 1_234_567_890;
        let good = code_at(SEED20, &pr, now);
        let s = VerifyState::default();
        assert!(matches!(
            verify(SEED20, &pr, &w(0, 5), &format!(" {good}\n"), now, s).0,
            Outcome::Accepted { .. }
        ));
        for bad in [
            "",
            "12345",
            "1234567",
            "12 456",
            "١٢٣٤٥٦",
            &format!("+{}", &good[1..]),
        ] {
            let (o, st) = verify(SEED20, &pr, &w(0, 5), bad, now, s);
            assert_eq!(o, Outcome::Refused(Refusal::Malformed), "{bad:?}");
            assert_eq!(st.failures, 1);
        }
    }

    #[test]
    fn a_code_tried_once_is_refused_as_used_right_or_wrong() {
        let secret = b"12345678901234567890";
        let p = Params::new("SHA1", 6, 30).unwrap();
        let w = Window {
            skew: 1,
            max_attempts: 5,
        };
        let now = 1_000_000_000;
        let right = code_at(secret, &p, now);
        let wrong = if right == "000000" {
            "111111"
        } else {
            "000000"
        };
        let st = VerifyState::default();

        let (o, st, keep) = verify_untried(secret, &p, &w, wrong, now, st, &[]).unwrap();
        assert_eq!(
            (o, st.failures, keep.as_deref()),
            (Outcome::Refused(Refusal::Invalid), 1, Some(wrong))
        );
        // Tried before: refused without a look, nothing counted.
        assert!(verify_untried(
            secret,
            &p,
            &w,
            &format!(" {wrong} "),
            now,
            st,
            &[wrong.into()]
        )
        .is_none());
        let (o, st, keep) =
            verify_untried(secret, &p, &w, &right, now, st, &[wrong.into()]).unwrap();
        assert!(matches!(o, Outcome::Accepted { .. }));
        assert_eq!((st.failures, keep), (0, Some(right.clone())));
        assert!(verify_untried(
            secret,
            &p,
            &w,
            &right,
            now,
            st,
            std::slice::from_ref(&right)
        )
        .is_none());
        // Malformed codes are verified (and counted); remembered only at the right length.
        let (o, _, keep) = verify_untried(secret, &p, &w, "12 34", now, st, &[]).unwrap();
        assert_eq!((o, keep), (Outcome::Refused(Refusal::Malformed), None));
        let (o, _, keep) = verify_untried(secret, &p, &w, "12a456", now, st, &[]).unwrap();
        assert_eq!(
            (o, keep.as_deref()),
            (Outcome::Refused(Refusal::Malformed), Some("12a456"))
        );
        assert!(verify_untried(secret, &p, &w, "12a456", now, st, &["12a456".into()]).is_none());
        // A locked secret's refusals are not tries.
        let locked = VerifyState {
            locked_until: Some(now + 30),
            ..st
        };
        let (o, _, keep) = verify_untried(secret, &p, &w, wrong, now, locked, &[]).unwrap();
        assert_eq!((o, keep), (Outcome::Refused(Refusal::Locked), None));
        // Remembered for period × (2 + skew).
        assert_eq!(tried_until(&p, &w, now), now + 90);
        assert_eq!(
            tried_until(
                &p,
                &Window {
                    skew: 0,
                    max_attempts: 5
                },
                now
            ),
            now + 60
        );
    }

    #[test]
    fn remaining_seconds() {
        let pr = p(Algorithm::Sha1, 6, 30);
        assert_eq!(pr.remaining(0), 30);
        assert_eq!(pr.remaining(29), 1);
        assert_eq!(pr.remaining(30), 30);
    }

    #[test]
    fn base32_is_lenient_like_services_print_it() {
        let s = generate_secret(20).unwrap();
        let enc = encode_base32(&s);
        assert_eq!(decode_base32(&enc).unwrap(), s);
        let spaced: String = enc
            .to_lowercase()
            .chars()
            .collect::<Vec<_>>()
            .chunks(4)
            .map(|c| c.iter().collect::<String>())
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(decode_base32(&spaced).unwrap(), s);
        assert_eq!(
            decode_base32("JBSWY3DPEHPK3PXP====").unwrap(),
            b"Hello!\xde\xad\xbe\xef"
        );
        assert!(decode_base32("not base32!").is_none());
        assert!(decode_base32("").is_none());
        assert!(decode_base32("A").is_none());
    }
}

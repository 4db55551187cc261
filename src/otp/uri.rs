//! otpauth URIs in Google's Key Uri Format:
//! `otpauth://totp/ISSUER:ACCOUNT?secret=B32&issuer=ISSUER&algorithm=SHA1&digits=6&period=30`.

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::{decode_base32, encode_base32, ParamError, Params};

/// Characters left as they are in a label or query value; everything else is %-encoded
/// (a space as %20, which every authenticator reads, unlike '+').
const ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'@');

/// Builds the URI for `account` at `issuer`. Query keys in alphabetical order, as Vault
/// writes them.
pub fn build(issuer: &str, account: &str, secret: &[u8], p: &Params) -> String {
    let enc = |s: &str| utf8_percent_encode(s, ENCODE).to_string();
    if issuer.is_empty() {
        // No issuer: the label is the account alone, and no empty issuer parameter. An
        // account with a colon gets an empty issuer prefix (a literal `:`), or its
        // encoded colon would be read back as the separator (found by the fuzzer).
        let prefix = if account.contains(':') { ":" } else { "" };
        return format!(
            "otpauth://totp/{prefix}{}?algorithm={}&digits={}&period={}&secret={}",
            enc(account),
            p.algorithm.as_str(),
            p.digits,
            p.period,
            encode_base32(secret)
        );
    }
    format!(
        "otpauth://totp/{}:{}?algorithm={}&digits={}&issuer={}&period={}&secret={}",
        enc(issuer),
        enc(account),
        p.algorithm.as_str(),
        p.digits,
        enc(issuer),
        p.period,
        encode_base32(secret)
    )
}

/// A parsed TOTP URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUri {
    pub secret: Vec<u8>,
    /// The account part of the label.
    pub label: String,
    pub issuer: Option<String>,
    pub params: Params,
}

/// Why a URI was refused; each names the part at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    #[error("uri: not an otpauth:// URI")]
    Scheme,
    #[error("uri: only otpauth://totp is supported, not {0:?}")]
    Type(String),
    #[error("uri: the label is missing")]
    Label,
    #[error("uri: secret is missing")]
    MissingSecret,
    #[error("uri: secret is not valid base32")]
    Secret,
    #[error("uri: algorithm must be SHA1, SHA256 or SHA512")]
    Algorithm,
    #[error("uri: digits must be 6 or 8")]
    Digits,
    #[error("uri: period must be a whole number of seconds from 1 to 86400")]
    Period,
    #[error("uri: the issuer parameter {param:?} disagrees with the label's issuer {label:?}")]
    IssuerMismatch { param: String, label: String },
    #[error("uri: the parameter {0:?} is given more than once")]
    Repeated(String),
    #[error("uri: {0}")]
    Malformed(String),
}

/// Parses an `otpauth://totp/...` URI. Missing parameters take the format's defaults
/// (SHA1, 6 digits, 30 seconds).
pub fn parse(s: &str) -> Result<KeyUri, UriError> {
    let url = url::Url::parse(s.trim()).map_err(|e| UriError::Malformed(e.to_string()))?;
    if !url.scheme().eq_ignore_ascii_case("otpauth") {
        return Err(UriError::Scheme);
    }
    let kind = url.host_str().unwrap_or_default().to_ascii_lowercase();
    if kind != "totp" {
        return Err(UriError::Type(kind));
    }
    let raw_label = url.path().trim_start_matches('/');
    let decode = |part: &str| {
        percent_decode_str(part)
            .decode_utf8()
            .map(|s| s.trim().to_string())
            .map_err(|_| UriError::Malformed("label is not UTF-8".into()))
    };
    // The issuer and the account are split before decoding, at the first literal colon,
    // else at the first encoded one (the format allows either): so a colon inside an
    // issuer, which `build` encodes, stays in the issuer.
    let split = raw_label.split_once(':').or_else(|| {
        let at = raw_label.to_ascii_lowercase().find("%3a")?;
        Some((&raw_label[..at], &raw_label[at + 3..]))
    });
    let (label_issuer, account) = match split {
        Some((i, a)) => (Some(decode(i)?), decode(a)?),
        None => (None, decode(raw_label)?),
    };
    if account.is_empty() {
        return Err(UriError::Label);
    }
    let mut secret = None;
    let mut issuer = None;
    let mut algorithm = "SHA1".to_string();
    let mut digits = 6;
    let mut period = 30;
    let mut seen = std::collections::HashSet::new();
    for (k, v) in url.query_pairs() {
        let key = k.to_ascii_lowercase();
        // Two secrets (or two of anything) are ambiguous: which one did the user mean?
        if !seen.insert(key.clone()) {
            return Err(UriError::Repeated(key));
        }
        match key.as_str() {
            "secret" => secret = Some(decode_base32(&v).ok_or(UriError::Secret)?),
            "issuer" => issuer = Some(v.trim().to_string()),
            "algorithm" => algorithm = v.trim().to_string(),
            "digits" => digits = v.trim().parse::<i64>().map_err(|_| UriError::Digits)?,
            "period" => period = v.trim().parse::<i64>().map_err(|_| UriError::Period)?,
            _ => {} // image, counter, ...: not ours to judge
        }
    }
    let params = Params::new(&algorithm, digits, period).map_err(|e| match e {
        ParamError::Algorithm(_) => UriError::Algorithm,
        ParamError::Digits(_) => UriError::Digits,
        ParamError::Period(_) => UriError::Period,
    })?;
    let secret = secret.ok_or(UriError::MissingSecret)?;
    let issuer = match (issuer, label_issuer) {
        (Some(p), Some(l)) if !l.is_empty() && p != l => {
            return Err(UriError::IssuerMismatch { param: p, label: l })
        }
        (Some(p), _) => Some(p),
        (None, l) => l,
    }
    .filter(|i| !i.is_empty());
    Ok(KeyUri {
        secret,
        label: account,
        issuer,
        params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_an_issuer_the_label_is_the_account() {
        let p = Params::new("SHA1", 6, 30).unwrap();
        let u = build("", "ci-bot", b"0123456789abcdefghij", &p);
        assert!(
            u.starts_with("otpauth://totp/ci-bot?algorithm=SHA1&digits=6&period=30&secret="),
            "{u}"
        );
        let k = parse(&u).unwrap();
        assert_eq!((k.label.as_str(), k.issuer), ("ci-bot", None));
        // An account with a colon and no issuer (found by the fuzzer): its colon is not
        // read back as the separator.
        let u = build("", "uid:1000", b"0123456789abcdefghij", &p);
        assert!(u.starts_with("otpauth://totp/:uid%3A1000?"), "{u}");
        let k = parse(&u).unwrap();
        assert_eq!((k.label.as_str(), k.issuer), ("uid:1000", None));
    }

    #[test]
    fn a_repeated_parameter_is_refused() {
        for u in [
            "otpauth://totp/a?secret=JBSWY3DPEHPK3PXP&secret=KRSXG5CTMVRXEZLU",
            "otpauth://totp/a?secret=JBSWY3DPEHPK3PXP&digits=6&Digits=8",
            "otpauth://totp/a?secret=JBSWY3DPEHPK3PXP&image=x&image=y",
        ] {
            assert!(matches!(parse(u), Err(UriError::Repeated(_))), "{u}");
        }
    }

    #[test]
    fn build_then_parse_round_trips() {
        let p = Params::new("SHA512", 8, 60).unwrap();
        let secret = b"0123456789abcdefghij";
        let u = build("Acme Corp", "uid:1000", secret, &p);
        assert!(u.starts_with("otpauth://totp/Acme%20Corp:uid%3A1000?algorithm=SHA512&digits=8&issuer=Acme%20Corp&period=60&secret="));
        let k = parse(&u).unwrap();
        assert_eq!(k.secret, secret);
        assert_eq!(k.label, "uid:1000");
        assert_eq!(k.issuer.as_deref(), Some("Acme Corp"));
        assert_eq!(k.params, p);
        // A colon inside the issuer (found by the fuzzer) stays in the issuer.
        let u = build("a:b", "acct", secret, &p);
        let k = parse(&u).unwrap();
        assert_eq!(
            (k.issuer.as_deref(), k.label.as_str()),
            (Some("a:b"), "acct")
        );
        // An encoded colon as the separator, as the format allows.
        let k = parse("otpauth://totp/Acme%3Abob?secret=JBSWY3DPEHPK3PXP").unwrap();
        assert_eq!(
            (k.issuer.as_deref(), k.label.as_str()),
            (Some("Acme"), "bob")
        );
    }

    #[test]
    fn defaults_and_refusals() {
        let k = parse("otpauth://totp/alice@example.com?secret=JBSWY3DPEHPK3PXP").unwrap();
        assert_eq!(k.params.algorithm, crate::otp::Algorithm::Sha1);
        assert_eq!((k.params.digits, k.params.period), (6, 30));
        assert_eq!(k.issuer, None);
        assert_eq!(k.label, "alice@example.com");
        let e = |s: &str| parse(s).unwrap_err();
        assert_eq!(
            e("otpauth://hotp/x?secret=JBSWY3DPEHPK3PXP&counter=1"),
            UriError::Type("hotp".into())
        );
        assert_eq!(
            e("otpauth://totp/x?secret=JBSWY3DPEHPK3PXP&digits=7"),
            UriError::Digits
        );
        assert_eq!(
            e("otpauth://totp/x?secret=JBSWY3DPEHPK3PXP&algorithm=MD5"),
            UriError::Algorithm
        );
        assert_eq!(
            e("otpauth://totp/x?secret=JBSWY3DPEHPK3PXP&period=0"),
            UriError::Period
        );
        assert_eq!(e("otpauth://totp/x?secret=!!"), UriError::Secret);
        assert_eq!(e("otpauth://totp/x"), UriError::MissingSecret);
        assert_eq!(e("https://example.com/"), UriError::Scheme);
        assert_eq!(
            e("otpauth://totp/?secret=JBSWY3DPEHPK3PXP"),
            UriError::Label
        );
        assert!(matches!(
            e("otpauth://totp/A:x?secret=JBSWY3DPEHPK3PXP&issuer=B"),
            UriError::IssuerMismatch { .. }
        ));
        assert!(matches!(e("not a uri"), UriError::Malformed(_)));
    }
}

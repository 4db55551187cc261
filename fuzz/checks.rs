// The checks of the fuzz targets (`fuzz/fuzz_targets/*.rs`), shared through `include!`
// with their replay on stable (`tests/fuzz_corpora.rs`), so the two can never drift
// apart. Each check panics on a finding.

/// Every surface's routes that read a JSON body (`POST /v1/sys/keys/rotate` is left
/// out: it starts a background re-sealing of the whole store). 
pub const ROUTES: &[(&str, &str)] = &[
    // Vault identity MFA TOTP
    ("POST", "/v1/identity/mfa/method/totp"),
    ("POST", "/v1/identity/mfa/method/totp/generate"),
    ("POST", "/v1/identity/mfa/method/totp/admin-generate"),
    ("POST", "/v1/identity/mfa/method/totp/admin-destroy"),
    ("POST", "/v1/identity/mfa/method/totp/validate"),
    ("POST", "/v1/identity/mfa/method/totp/admin-unlock"),
    (
        "POST",
        "/v1/identity/mfa/method/totp/7b0c7e4e-0000-4000-8000-000000000000",
    ),
    // Vault TOTP secrets engine
    ("POST", "/v1/totp/keys/k"),
    ("POST", "/v1/totp/code/k"),
    ("POST", "/v1/totp/keys/k/unlock"),
    // agent authenticator
    ("POST", "/api/v2/totp/secrets"),
    // Nitride
    ("PUT", "/v1/auth/ratls/totp"),
    // user login step
    ("POST", "/api/v1/auth/totp/setup/"),
    ("POST", "/api/v1/auth/totp/activate/"),
    ("POST", "/api/v1/auth/totp/deactivate/"),
    ("POST", "/api/v1/auth/totp/challenge/"),
    ("POST", "/api/v1/auth/totp/verify/"),
    ("POST", "/api/v1/auth/totp/recovery-codes/"),
    ("POST", "/api/v1/auth/totp/unlock/"),
    // sys and tokens
    ("POST", "/v1/auth/token/create"),
    ("POST", "/v1/auth/token/lookup"),
    ("POST", "/v1/auth/token/lookup-accessor"),
    ("POST", "/v1/auth/token/revoke-accessor"),
    ("POST", "/v1/auth/token/revoke"),
    ("POST", "/v1/auth/token/renew"),
    ("PUT", "/v1/sys/policies/acl/p"),
    ("POST", "/v1/sys/export"),
    ("POST", "/v1/sys/import"),
];

/// `otp::uri::parse` never panics; what it accepts builds back to a URI it accepts.
pub fn otpauth_uri(data: &[u8]) {
    use totpd::otp::uri;
    let s = String::from_utf8_lossy(data);
    if let Ok(k) = uri::parse(&s) {
        let issuer = k.issuer.as_deref().unwrap_or("");
        let built = uri::build(issuer, &k.label, &k.secret, &k.params);
        if let Err(e) = uri::parse(&built) {
            panic!("parse({s:?}) = {k:?}, but its build {built:?} does not parse: {e}");
        }
    }
}

/// `otp::decode_base32` never panics; what it decodes encodes and decodes back.
pub fn base32(data: &[u8]) {
    use totpd::otp::{decode_base32, encode_base32};
    let s = String::from_utf8_lossy(data);
    if let Some(bytes) = decode_base32(&s) {
        let enc = encode_base32(&bytes);
        assert_eq!(
            decode_base32(&enc).as_deref(),
            Some(bytes.as_slice()),
            "decode({s:?}) re-encoded as {enc:?} does not decode back"
        );
    }
}

/// `auth::Policy::from_text` (JSON or HCL) never panics; what it accepts merges into an
/// ACL that answers a query.
pub fn policy(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    if let Ok(p) = totpd::auth::Policy::from_text(&s) {
        let mut acl = totpd::auth::Acl::default();
        acl.merge(&p);
        let _ = acl.capabilities("v1/totp/keys/k");
    }
}

/// A `json_bodies` input: the route its first byte picks, and the body (the rest).
pub fn json_request(data: &[u8]) -> Option<((&'static str, &'static str), &[u8])> {
    let (&pick, body) = data.split_first()?;
    Some((ROUTES[pick as usize % ROUTES.len()], body))
}

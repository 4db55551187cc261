//! `otp::uri::parse` on arbitrary text never panics; what it accepts builds back to a
//! URI it accepts again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use totpd::otp::uri;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    if let Ok(k) = uri::parse(&s) {
        let issuer = k.issuer.as_deref().unwrap_or("");
        let built = uri::build(issuer, &k.label, &k.secret, &k.params);
        if let Err(e) = uri::parse(&built) {
            panic!("parse({s:?}) = {k:?}, but its build {built:?} does not parse: {e}");
        }
    }
});

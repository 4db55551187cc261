//! `auth::Policy::from_text` (JSON or HCL) never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    if let Ok(p) = totpd::auth::Policy::from_text(&s) {
        // What was accepted can be merged and queried.
        let mut acl = totpd::auth::Acl::default();
        acl.merge(&p);
        let _ = acl.capabilities("v1/totp/keys/k");
    }
});

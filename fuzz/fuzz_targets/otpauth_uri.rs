//! `otp::uri::parse` on arbitrary text never panics; what it accepts builds back to a
//! URI it accepts again.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
mod checks {
    include!("../checks.rs");
}

fuzz_target!(|data: &[u8]| checks::otpauth_uri(data));

//! `otp::decode_base32` never panics; what it decodes encodes and decodes back.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
mod checks {
    include!("../checks.rs");
}

fuzz_target!(|data: &[u8]| checks::base32(data));

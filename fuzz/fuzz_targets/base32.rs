//! `otp::decode_base32` never panics; what it decodes encodes and decodes back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use totpd::otp::{decode_base32, encode_base32};

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    if let Some(bytes) = decode_base32(&s) {
        let enc = encode_base32(&bytes);
        assert_eq!(
            decode_base32(&enc).as_deref(),
            Some(bytes.as_slice()),
            "decode({s:?}) re-encoded as {enc:?} does not decode back"
        );
    }
});

//! Fuzzes the strict JSON checker with the default limits: it must never panic, and it must
//! never accept a document that serde_json refuses (it is never more lenient than serde_json).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::sanitize::json::{JsonLimits, check};

fuzz_target!(|data: &[u8]| {
    if check(data, &JsonLimits::default()).is_ok() {
        assert!(
            serde_json::from_slice::<serde_json::Value>(data).is_ok(),
            "check accepted a document that serde_json refuses"
        );
    }
});

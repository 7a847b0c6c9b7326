#![no_main]
//! The path normaliser: never panics; its normal form is a fixed point (normalising it again
//! changes nothing) and never contains a dot segment, an encoded slash or a control escape.

use libfuzzer_sys::fuzz_target;
use portcullis::sanitize::path::{PathLimits, normalize};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (path, query) = match text.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (text, None),
    };
    let limits = PathLimits::default();
    if let Ok(out) = normalize(path, query, &limits) {
        let normal = out.unwrap_or_else(|| text.to_owned());
        let (p2, q2) = match normal.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (normal.as_str(), None),
        };
        assert_eq!(normalize(p2, q2, &limits), Ok(None), "not a fixed point: {normal:?}");
        let lower = p2.to_ascii_lowercase();
        assert!(!lower.contains("%2f") && !lower.contains("%5c") && !lower.contains("%00"));
        assert!(!p2.split('/').any(|s| s == "." || s == ".."));
    }
});

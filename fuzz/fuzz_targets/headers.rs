#![no_main]
//! The request header checks and the raw HTTP/1 framing scanner: neither panics; anything the
//! header checks accept has at most one Transfer-Encoding (exactly `chunked`), never together
//! with Content-Length, and only visible ASCII values; the scanner gives the same verdict
//! whether the bytes arrive at once or one by one.

use http::{HeaderMap, HeaderName, HeaderValue, Version};
use libfuzzer_sys::fuzz_target;
use portcullis::sanitize::framing::{FramingVerdict, HeadScanner};
use portcullis::sanitize::request::check_headers;

fuzz_target!(|data: &[u8]| {
    let whole = FramingVerdict::default();
    HeadScanner::default().feed(data, &whole);
    let split = FramingVerdict::default();
    let mut s = HeadScanner::default();
    for b in data {
        s.feed(std::slice::from_ref(b), &split);
    }
    assert_eq!(whole.violation(), split.violation());

    let mut headers = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(&line[colon + 1..]),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let version = if data.first().is_some_and(|b| b & 1 == 1) {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    if check_headers(&headers, version).is_ok() {
        let te: Vec<_> = headers.get_all(http::header::TRANSFER_ENCODING).iter().collect();
        assert!(te.len() <= 1);
        assert!(te.iter().all(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked")));
        assert!(te.is_empty() || !headers.contains_key(http::header::CONTENT_LENGTH));
        assert!(headers.values().all(|v| v.as_bytes().iter().all(|b| matches!(b, 0x20..=0x7e | b'\t'))));
    }
});

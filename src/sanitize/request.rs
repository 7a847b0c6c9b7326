//! Request framing and header checks (pipeline stage 2), run on the request exactly as hyper
//! parsed it — before hop-by-hop headers are stripped and before routing.
//!
//! hyper already refuses most malformed HTTP/1.1 (bad chunk sizes, obs-fold, bare LF in the
//! request line, invalid header names, conflicting `Content-Length`s) and h2 refuses
//! connection-specific headers and bad pseudo-headers. What a backend could still read
//! differently from us is refused here, and the connection is closed after the answer:
//!
//! - `Transfer-Encoding` other than exactly one `chunked`, or together with `Content-Length`;
//! - `Content-Length` repeated, comma-listed, or not all digits;
//! - `Host`, `Authorization`, `Content-Type` repeated;
//! - header values with anything but visible ASCII, space and tab.

use http::{HeaderMap, HeaderName, StatusCode, Version, header};

use super::Refusal;

fn framing(reason: &'static str, detail: &str) -> Refusal {
    Refusal {
        close: true,
        ..Refusal::new(StatusCode::BAD_REQUEST, "bad-framing", reason, detail)
    }
}

/// Checks the request's framing headers and header values.
///
/// # Errors
/// A 400 [`Refusal`] that closes the connection.
pub fn check_headers(headers: &HeaderMap, version: Version) -> Result<(), Refusal> {
    // One pass over the fields (a request has a handful), then the verdicts in a fixed order.
    let (mut te_count, mut te_bad, mut cl_count, mut cl_bad) = (0usize, false, 0usize, false);
    let mut repeats = [0u8; 3];
    let mut obs_text = false;
    for (name, v) in headers {
        if *name == header::TRANSFER_ENCODING {
            te_count += 1;
            te_bad |= !v.as_bytes().eq_ignore_ascii_case(b"chunked");
        } else if *name == header::CONTENT_LENGTH {
            cl_count += 1;
            cl_bad |= v.is_empty() || !v.as_bytes().iter().all(u8::is_ascii_digit);
        } else if let Some(i) = SINGLE.iter().position(|n| n == name) {
            repeats[i] = repeats[i].saturating_add(1);
        }
        // A `HeaderValue` never holds control characters other than tab (nor DEL): what is
        // left to refuse is obs-text (bytes ≥ 0x80), which `is_ascii` finds a word at a time.
        obs_text |= !v.as_bytes().is_ascii();
    }
    if te_count > 1 || te_bad {
        return Err(framing(
            "bad_transfer_encoding",
            "Transfer-Encoding must be exactly `chunked` (once), or absent",
        ));
    }
    if te_count > 0 && version >= Version::HTTP_2 {
        return Err(framing(
            "bad_transfer_encoding",
            "HTTP/2 requests must not carry Transfer-Encoding",
        ));
    }
    if cl_count > 1 || cl_bad {
        return Err(framing(
            "bad_content_length",
            "Content-Length must appear once, as digits only",
        ));
    }
    if cl_count > 0 && te_count > 0 {
        return Err(framing(
            "content_length_with_transfer_encoding",
            "send either Content-Length or Transfer-Encoding: chunked, not both",
        ));
    }
    if let Some(i) = repeats.iter().position(|n| *n > 1) {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "bad-header",
            "repeated_header",
            &format!("the `{}` header must not repeat", SINGLE[i]),
        ));
    }
    if obs_text {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "bad-header",
            "invalid_header_value",
            "header values must be visible ASCII (with spaces and tabs)",
        ));
    }
    Ok(())
}

/// Fields that must not repeat, in the order their repetition is reported.
const SINGLE: [HeaderName; 3] = [header::HOST, header::AUTHORIZATION, header::CONTENT_TYPE];

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(pairs: &[(&'static str, &'static [u8])]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_bytes(v).unwrap());
        }
        m
    }

    #[test]
    fn framing_shapes() {
        let v = Version::HTTP_11;
        assert!(check_headers(&h(&[("transfer-encoding", b"chunked")]), v).is_ok());
        assert!(check_headers(&h(&[("content-length", b"5")]), v).is_ok());
        for bad in [
            h(&[("transfer-encoding", b"chunked"), ("content-length", b"5")]),
            h(&[("transfer-encoding", b"gzip, chunked")]),
            h(&[
                ("transfer-encoding", b"chunked"),
                ("transfer-encoding", b"chunked"),
            ]),
            h(&[("transfer-encoding", b"xchunked")]),
            h(&[("transfer-encoding", b" chunked")]),
            h(&[("content-length", b"5"), ("content-length", b"5")]),
            h(&[("content-length", b"5, 5")]),
            h(&[("content-length", b"+5")]),
            h(&[("host", b"a"), ("host", b"b")]),
            h(&[
                ("authorization", b"Bearer a"),
                ("authorization", b"Bearer b"),
            ]),
            h(&[("content-type", b"a/b"), ("content-type", b"c/d")]),
            h(&[("x-note", b"caf\xc3\xa9")]),
        ] {
            let e = check_headers(&bad, v).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad:?}");
        }
    }

    #[test]
    fn the_first_problem_in_a_fixed_order_is_reported() {
        let v = Version::HTTP_11;
        let reason = |m: HeaderMap, v| check_headers(&m, v).unwrap_err().reason;
        // Framing before repetition before obs-text, whatever the field order.
        let m = h(&[
            ("x-note", b"caf\xc3\xa9"),
            ("host", b"a"),
            ("host", b"b"),
            ("transfer-encoding", b"gzip"),
        ]);
        assert_eq!(reason(m, v), "bad_transfer_encoding");
        let m = h(&[("x-note", b"caf\xc3\xa9"), ("host", b"a"), ("host", b"b")]);
        assert_eq!(reason(m, v), "repeated_header");
        let m = h(&[("content-type", b"a/b"), ("content-type", b"c/d")]);
        let e = check_headers(&m, v).unwrap_err();
        assert!(e.detail.contains("content-type"), "{}", e.detail);
        let m = h(&[("transfer-encoding", b"chunked")]);
        assert_eq!(reason(m, Version::HTTP_2), "bad_transfer_encoding");
        let m = h(&[("content-length", b"5"), ("transfer-encoding", b"chunked")]);
        assert_eq!(reason(m, v), "content_length_with_transfer_encoding");
        let m = h(&[("x-note", b"caf\xc3\xa9"), ("host", b"a")]);
        assert_eq!(reason(m, v), "invalid_header_value");
    }
}

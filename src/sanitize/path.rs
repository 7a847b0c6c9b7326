//! One normal form for request paths and queries, checked before routing, so that routing,
//! ownership checks and the backend all see exactly the same bytes.
//!
//! - Percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded; every other
//!   escape is kept, with upper-case hex digits.
//! - Refused: `.` and `..` segments (raw or encoded), empty segments (`//`), encoded `/` and `\`
//!   (`%2F`, `%5C`), a raw `\`, double encoding (`%25` followed by two hex digits), encoded NUL
//!   and control characters, malformed escapes, escapes that do not form valid UTF-8 (overlong
//!   forms such as `%C0%AE` included), raw bytes outside RFC 3986's path and query characters,
//!   and paths, queries or query parameter counts over their limits.
//!
//! Nothing is "cleaned up" into an allowed form: a request that is not already in (or trivially
//! convertible to) the normal form is refused, because any rewrite we invent could differ from
//! the one the backend applies.

/// Limits on the request target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathLimits {
    /// Longest path, in bytes as received.
    pub max_path_bytes: usize,
    /// Longest query, in bytes as received.
    pub max_query_bytes: usize,
    /// Most `&`-separated query parameters.
    pub max_query_params: usize,
}

impl Default for PathLimits {
    fn default() -> Self {
        Self {
            max_path_bytes: 2048,
            max_query_bytes: 4096,
            max_query_params: 64,
        }
    }
}

/// Why a request target was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathError {
    /// A short machine-readable reason (`dot_segment`, `encoded_slash`, …).
    pub reason: &'static str,
    /// What to fix, in a sentence (never echoes the whole target).
    pub detail: &'static str,
    /// 414 for targets over the length limits, 400 otherwise.
    pub too_long: bool,
}

const fn err(reason: &'static str, detail: &'static str) -> PathError {
    PathError {
        reason,
        detail,
        too_long: false,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 `pchar` minus `%` (handled separately): unreserved, sub-delims, `:` and `@`.
fn is_pchar(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Which part of the target is being normalised.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Path,
    Query,
}

/// Normalises one component (path or query) into `out`.
fn component(input: &[u8], part: Part, out: &mut Vec<u8>) -> Result<(), PathError> {
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if b == b'%' {
            let (Some(h), Some(l)) = (
                input.get(i + 1).copied().and_then(hex),
                input.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(err(
                    "bad_escape",
                    "a `%` must be followed by two hex digits",
                ));
            };
            let v = (h << 4) | l;
            match v {
                b'/' | b'\\' if part == Part::Path => {
                    return Err(err(
                        "encoded_slash",
                        "encoded `/` or `\\` (%2F, %5C) is not allowed in the path",
                    ));
                }
                b'%' => {
                    // Whether a hex pair follows (raw or itself encoded) is checked on the
                    // output, once every escape is in its normal form.
                    out.extend_from_slice(b"%25");
                    i += 3;
                }
                0x00..=0x1f | 0x7f => {
                    return Err(err(
                        "control_character",
                        "encoded NUL and control characters are not allowed",
                    ));
                }
                0x80..=0xff => {
                    // A run of escaped bytes ≥ 0x80 must be valid UTF-8 (no overlong forms, no
                    // surrogates); it stays encoded.
                    let start = i;
                    let mut bytes = Vec::new();
                    while i < input.len() && input[i] == b'%' {
                        let (Some(h), Some(l)) = (
                            input.get(i + 1).copied().and_then(hex),
                            input.get(i + 2).copied().and_then(hex),
                        ) else {
                            break;
                        };
                        let v = (h << 4) | l;
                        if v < 0x80 {
                            break;
                        }
                        bytes.push(v);
                        i += 3;
                    }
                    if std::str::from_utf8(&bytes).is_err() {
                        return Err(err(
                            "invalid_utf8",
                            "percent-encoded bytes must form valid UTF-8 (no overlong forms)",
                        ));
                    }
                    for v in bytes {
                        out.extend_from_slice(&[
                            b'%',
                            HEX[usize::from(v >> 4)],
                            HEX[usize::from(v & 15)],
                        ]);
                    }
                    debug_assert!(i > start);
                }
                v if is_unreserved(v) => {
                    out.push(v);
                    i += 3;
                }
                v => {
                    out.extend_from_slice(&[
                        b'%',
                        HEX[usize::from(v >> 4)],
                        HEX[usize::from(v & 15)],
                    ]);
                    i += 3;
                }
            }
            continue;
        }
        let allowed = match part {
            Part::Path => is_pchar(b) || b == b'/',
            Part::Query => is_pchar(b) || b == b'/' || b == b'?',
        };
        if !allowed {
            return Err(match b {
                b'\\' => err("backslash", "`\\` is not allowed in the request target"),
                0x00..=0x1f | 0x7f => err(
                    "control_character",
                    "NUL and control characters are not allowed",
                ),
                0x80..=0xff => err(
                    "raw_non_ascii",
                    "non-ASCII characters must be percent-encoded UTF-8",
                ),
                _ => err(
                    "invalid_character",
                    "the request target has a character that must be percent-encoded",
                ),
            });
        }
        out.push(b);
        i += 1;
    }
    // `%25` followed by two hex digits would decode, at the backend, into another escape.
    if out
        .windows(5)
        .any(|w| w[..3] == *b"%25" && hex(w[3]).is_some() && hex(w[4]).is_some())
    {
        return Err(err(
            "double_encoding",
            "double percent-encoding (like %252e) is not allowed",
        ));
    }
    Ok(())
}

/// Whether `input` has only characters that pass unchanged (no escapes).
fn plain(input: &[u8], part: Part) -> bool {
    input.iter().all(|b| match part {
        Part::Path => is_pchar(*b) || *b == b'/',
        Part::Query => is_pchar(*b) || *b == b'/' || *b == b'?',
    })
}

/// Segments of a normal-form path: no `.`/`..` (raw or decoded from %2E), no empty segment
/// except a final trailing slash.
fn check_segments(path: &[u8]) -> Result<(), PathError> {
    let mut segments = path[1.min(path.len())..].split(|b| *b == b'/').peekable();
    while let Some(seg) = segments.next() {
        if seg == b"." || seg == b".." {
            return Err(err(
                "dot_segment",
                "`.` and `..` path segments (raw or encoded) are not allowed",
            ));
        }
        if seg.is_empty() && segments.peek().is_some() {
            return Err(err(
                "empty_segment",
                "empty path segments (`//`) are not allowed",
            ));
        }
    }
    Ok(())
}

/// Normalises `path` and `query`; returns the normal form of `path[?query]` when it differs
/// from what was received (`None`: already normal).
///
/// # Errors
/// [`PathError`] naming the rule the target breaks.
pub fn normalize(
    path: &str,
    query: Option<&str>,
    limits: &PathLimits,
) -> Result<Option<String>, PathError> {
    if path.len() > limits.max_path_bytes {
        return Err(PathError {
            too_long: true,
            ..err("path_too_long", "the path is longer than this route allows")
        });
    }
    if !path.starts_with('/') {
        return Err(err("not_origin_form", "the path must start with `/`"));
    }
    if let Some(q) = query
        && q.len() > limits.max_query_bytes
    {
        return Err(PathError {
            too_long: true,
            ..err("query_too_long", "the query string is too long")
        });
    }
    // The common case — no escapes, only plain characters — is checked without allocating.
    if plain(path.as_bytes(), Part::Path) && query.is_none_or(|q| plain(q.as_bytes(), Part::Query))
    {
        check_segments(path.as_bytes())?;
        if let Some(q) = query
            && q.split('&').count() > limits.max_query_params
        {
            return Err(err(
                "too_many_query_params",
                "the query has too many parameters",
            ));
        }
        return Ok(None);
    }
    let mut out = Vec::with_capacity(path.len() + query.map_or(0, |q| q.len() + 1));
    component(path.as_bytes(), Part::Path, &mut out)?;
    check_segments(&out)?;
    if let Some(q) = query {
        if q.len() > limits.max_query_bytes {
            return Err(PathError {
                too_long: true,
                ..err("query_too_long", "the query string is too long")
            });
        }
        if q.split('&').count() > limits.max_query_params {
            return Err(err(
                "too_many_query_params",
                "the query has too many parameters",
            ));
        }
        out.push(b'?');
        component(q.as_bytes(), Part::Query, &mut out)?;
    }
    let same = match query {
        Some(q) => {
            out.len() == path.len() + 1 + q.len()
                && &out[..path.len()] == path.as_bytes()
                && &out[path.len() + 1..] == q.as_bytes()
        }
        None => out == path.as_bytes(),
    };
    if same {
        return Ok(None);
    }
    // Only ASCII was written.
    Ok(Some(String::from_utf8_lossy(&out).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(target: &str) -> Result<Option<String>, &'static str> {
        let (p, q) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        normalize(p, q, &PathLimits::default()).map_err(|e| e.reason)
    }

    #[test]
    fn normal_paths_pass_unchanged() {
        for ok in [
            "/",
            "/v1/accounts/acc-100",
            "/v1/accounts/acc-100/",
            "/v1/a:b@c!$&'()*+,;=",
            "/v1/caf%C3%A9",
            "/v1/x?account=acc-100&ledger=a/b?c",
            "/v1/x?q=%20%26",
        ] {
            assert_eq!(n(ok), Ok(None), "{ok}");
        }
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_hex_upper_cased() {
        assert_eq!(n("/v1/%61cc-100"), Ok(Some("/v1/acc-100".into())));
        assert_eq!(n("/v1/caf%c3%a9"), Ok(Some("/v1/caf%C3%A9".into())));
        assert_eq!(n("/v1/x?a=%7e%2b"), Ok(Some("/v1/x?a=~%2B".into())));
    }

    #[test]
    fn traversal_and_encoding_tricks_are_refused() {
        let cases = [
            ("/v1/../admin", "dot_segment"),
            ("/v1/./accounts", "dot_segment"),
            ("/v1/%2e%2e/admin", "dot_segment"),
            ("/v1/%2E%2E/admin", "dot_segment"),
            ("/v1/.%2e/admin", "dot_segment"),
            ("/v1/%2e/admin", "dot_segment"),
            ("/v1/..", "dot_segment"),
            ("/v1/..%2fadmin", "encoded_slash"),
            ("/v1/%2F..%2Fadmin", "encoded_slash"),
            ("/v1/..%5cadmin", "encoded_slash"),
            ("/v1/%252e%252e/admin", "double_encoding"),
            ("/v1/%25%32%65", "double_encoding"),
            ("/v1/%25", "ok"),
            ("/v1/%c0%ae%c0%ae/admin", "invalid_utf8"),
            ("/v1/%e0%80%ae", "invalid_utf8"),
            ("/v1/%ed%a0%80", "invalid_utf8"),
            ("/v1/\\..\\admin", "backslash"),
            ("/v1/acc%00.json", "control_character"),
            ("/v1/acc%0d%0aX-Injected:1", "control_character"),
            ("/v1/acc%7f", "control_character"),
            ("/v1//accounts", "empty_segment"),
            ("//admin", "empty_segment"),
            ("/v1/%zz", "bad_escape"),
            ("/v1/%2", "bad_escape"),
            ("/v1/caf\u{e9}", "raw_non_ascii"),
            ("/v1/a b", "invalid_character"),
            ("/v1/x?a=%00", "control_character"),
            ("/v1/x?a=%252e", "double_encoding"),
            ("/v1/x?a=%c0%ae", "invalid_utf8"),
            ("v1/accounts", "not_origin_form"),
        ];
        for (target, want) in cases {
            let got = n(target);
            if want == "ok" {
                // A literal `%` not followed by hex digits stays encoded.
                assert_eq!(got, Ok(None), "{target}");
                continue;
            }
            assert_eq!(got, Err(want), "{target}");
        }
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        /// Targets built from the pieces attacks are made of.
        fn target() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                Just("/".to_owned()),
                Just(".".to_owned()),
                Just("..".to_owned()),
                Just("%".to_owned()),
                Just("%2e".to_owned()),
                Just("%2F".to_owned()),
                Just("%25".to_owned()),
                Just("%c0%ae".to_owned()),
                Just("%C3%A9".to_owned()),
                Just("%7e".to_owned()),
                Just("%41".to_owned()),
                Just("?".to_owned()),
                Just("&".to_owned()),
                Just("=".to_owned()),
                Just("\\".to_owned()),
                "[a-zA-Z0-9._~!$'()*+,;:@-]{1,4}",
                "%[0-9a-fA-F]{2}",
                any::<char>().prop_map(|c| c.to_string()),
            ];
            proptest::collection::vec(piece, 0..24).prop_map(|v| format!("/{}", v.concat()))
        }

        fn split(t: &str) -> (&str, Option<&str>) {
            match t.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (t, None),
            }
        }

        proptest! {
            /// Normalising the normal form changes nothing.
            #[test]
            fn normalising_twice_equals_normalising_once(t in target()) {
                let (p, q) = split(&t);
                if let Ok(out) = normalize(p, q, &PathLimits::default()) {
                    let normal = out.unwrap_or_else(|| t.clone());
                    let (p2, q2) = split(&normal);
                    prop_assert_eq!(normalize(p2, q2, &PathLimits::default()), Ok(None));
                }
            }

            /// What is accepted is exactly what the backend receives: the normal form survives
            /// being parsed into the upstream request's URI unchanged, and contains no dot
            /// segment, encoded slash or control escape.
            #[test]
            fn accepted_targets_reach_the_backend_as_they_are(t in target()) {
                let (p, q) = split(&t);
                if let Ok(out) = normalize(p, q, &PathLimits::default()) {
                    let normal = out.unwrap_or_else(|| t.clone());
                    let parsed: http::uri::PathAndQuery = normal.parse().map_err(|e| {
                        TestCaseError::fail(format!("{normal:?} does not parse: {e}"))
                    })?;
                    prop_assert_eq!(parsed.as_str(), normal.as_str());
                    let (p2, _) = split(&normal);
                    let lower = p2.to_ascii_lowercase();
                    prop_assert!(!lower.contains("%2f") && !lower.contains("%5c"));
                    prop_assert!(!lower.contains("%00") && !lower.contains("%252"));
                    prop_assert!(!p2.split('/').any(|s| s == "." || s == ".."));
                }
            }
        }
    }

    #[test]
    fn limits() {
        let l = PathLimits {
            max_path_bytes: 10,
            max_query_bytes: 5,
            max_query_params: 2,
        };
        assert!(normalize("/0123456789", None, &l).unwrap_err().too_long);
        assert!(normalize("/a", Some("abcdef"), &l).unwrap_err().too_long);
        assert_eq!(
            normalize("/a", Some("a&b&c"), &l).unwrap_err().reason,
            "too_many_query_params"
        );
    }
}

//! Strict JSON checking for request bodies (RFC 8259, nothing more).
//!
//! [`check`] is one pass over the bytes with an explicit stack (no recursion, so a 10,000-deep
//! array costs a few hundred bytes of heap and cannot overflow the thread's stack). It accepts
//! exactly RFC 8259 JSON text — strict UTF-8 (no overlong forms, no surrogates, no lone
//! surrogate in `\u` escapes), no byte order mark, no comments, no trailing commas, no
//! `NaN`/`Infinity`, no leading zeros, only whitespace around the value — and on top of the
//! grammar refuses:
//!
//! - duplicate keys within one object, compared after unescaping (`"a"` and `"\u0061"` are the
//!   same key): parsers disagree on which one wins, which is how a gateway and an upstream end up
//!   reading different documents;
//! - numbers a 64-bit float would silently change, when [`JsonLimits::safe_integers_only`] is on
//!   (the default): integers beyond ±(2^53−1), numbers with more than 17 significant digits, and
//!   magnitudes above 1e308 or so small that they would round to zero;
//! - documents past the [`JsonLimits`]: nesting depth, keys per object, elements per array, and
//!   bytes per string (after unescaping, keys included).
//!
//! Every failure carries an RFC 6901 JSON Pointer to where it happened (`/payments/3/amount`)
//! and a message that quotes at most one byte or one escape of the input. Nothing is allocated
//! per scalar: object keys are unescaped into one buffer shared by all open objects (duplicates
//! are found by a linear scan up to 16 keys, then through a hash set), and the pointer is only
//! built on error.

use std::collections::HashSet;
use std::fmt;

/// Limits applied by [`check`]. The defaults suit API request bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonLimits {
    /// Deepest nesting of arrays and objects: a top-level scalar is depth 0, `[[1]]` is depth 2.
    /// Default 32.
    pub max_depth: usize,
    /// Most keys in one object. Default 1000.
    pub max_keys: usize,
    /// Most elements in one array. Default 10,000.
    pub max_array_len: usize,
    /// Most bytes in one string (keys included), counted after unescaping. Default 65,536.
    pub max_string_bytes: usize,
    /// Refuse numbers that a 64-bit float would change: integers beyond ±(2^53−1), numbers with
    /// more than 17 significant digits, magnitudes above 1e308, and non-zero numbers that would
    /// round to zero. Default true.
    pub safe_integers_only: bool,
}

impl Default for JsonLimits {
    fn default() -> Self {
        Self {
            max_depth: 32,
            max_keys: 1000,
            max_array_len: 10_000,
            max_string_bytes: 65_536,
            safe_integers_only: true,
        }
    }
}

/// Why [`check`] refused a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JsonErrorKind {
    /// Not JSON text per RFC 8259 (including comments, trailing commas, `NaN`, a BOM, an empty
    /// body).
    Syntax,
    /// Invalid UTF-8, or a lone surrogate in a `\u` escape.
    Utf8,
    /// Arrays and objects nested deeper than [`JsonLimits::max_depth`].
    TooDeep,
    /// An object with more than [`JsonLimits::max_keys`] keys.
    TooManyKeys,
    /// An array with more than [`JsonLimits::max_array_len`] elements.
    ArrayTooLong,
    /// A string or key longer than [`JsonLimits::max_string_bytes`] bytes.
    StringTooLong,
    /// The same key twice in one object.
    DuplicateKey,
    /// A number a 64-bit float cannot hold faithfully (see [`JsonLimits::safe_integers_only`]).
    UnsafeNumber,
    /// Something other than whitespace after the JSON value.
    TrailingData,
}

impl JsonErrorKind {
    /// A stable snake_case name, for metrics labels and problem details.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Syntax => "syntax",
            Self::Utf8 => "utf8",
            Self::TooDeep => "too_deep",
            Self::TooManyKeys => "too_many_keys",
            Self::ArrayTooLong => "array_too_long",
            Self::StringTooLong => "string_too_long",
            Self::DuplicateKey => "duplicate_key",
            Self::UnsafeNumber => "unsafe_number",
            Self::TrailingData => "trailing_data",
        }
    }
}

impl fmt::Display for JsonErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused document: where, what kind, and an actionable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    /// RFC 6901 JSON Pointer to the value (or the container) where checking failed; `""` is
    /// the document root. Built from the document's own keys, so it is as long as they are.
    pub pointer: String,
    /// The kind of failure.
    pub kind: JsonErrorKind,
    /// What is wrong and how to fix it, with the byte offset; it quotes at most one byte or
    /// one escape sequence of the input, never a value.
    pub message: String,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pointer.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{} (at {})", self.message, self.pointer)
        }
    }
}

impl std::error::Error for JsonError {}

/// Checks that `bytes` are one strict JSON text within `limits` (see the module docs).
pub fn check(bytes: &[u8], limits: &JsonLimits) -> Result<(), JsonError> {
    Checker {
        b: bytes,
        i: 0,
        limits,
        frames: Vec::new(),
        keys: Vec::new(),
        spans: Vec::new(),
    }
    .run()
}

/// Objects with more keys than this find duplicates through a hash set instead of a scan.
const SMALL_OBJECT: usize = 16;

/// 2^53 − 1, the largest integer every JSON implementation (and IEEE 754 binary64) holds
/// exactly, as its 16 decimal digits.
const MAX_SAFE_INTEGER: &[u8] = b"9007199254740991";

/// Most significant digits accepted in a non-integer number: 17 digits tell every f64 apart.
const MAX_SIGNIFICANT_DIGITS: usize = 17;

/// Largest magnitude accepted for a non-integer number. Below f64::MAX (~1.8e308) on purpose:
/// parsers that round imprecisely (serde_json's default float parsing among them) can overflow
/// to infinity just under f64::MAX.
const MAX_MAGNITUDE: f64 = 1e308;

/// One open array or object.
enum Frame {
    /// An array; `len` elements have been started (the current one is `len - 1`).
    Array { len: usize },
    /// An object.
    Object {
        /// Index in `Checker::spans` of this object's first key.
        first: usize,
        /// Keys seen so far.
        len: usize,
        /// Index in `Checker::spans` of the key whose value is being read, if any.
        current: Option<usize>,
        /// Every key, once the object has more than [`SMALL_OBJECT`] of them.
        set: Option<HashSet<Box<[u8]>>>,
    },
}

struct Checker<'a> {
    b: &'a [u8],
    i: usize,
    limits: &'a JsonLimits,
    frames: Vec<Frame>,
    /// The unescaped keys of every open object, back to back.
    keys: Vec<u8>,
    /// `(start, end)` of each key in `keys`, in order; each open object owns a suffix range.
    spans: Vec<(usize, usize)>,
}

impl Checker<'_> {
    fn run(mut self) -> Result<(), JsonError> {
        if self.b.starts_with(b"\xEF\xBB\xBF") {
            return Err(self.fail(
                JsonErrorKind::Syntax,
                false,
                "a byte order mark (BOM) is not allowed before JSON text; send plain UTF-8"
                    .to_owned(),
            ));
        }
        'value: loop {
            self.skip_ws();
            match self.peek() {
                Some(b'[') => {
                    self.open()?;
                    self.i += 1;
                    self.frames.push(Frame::Array { len: 0 });
                    self.skip_ws();
                    if self.peek() == Some(b']') {
                        self.i += 1;
                        self.frames.pop();
                    } else {
                        self.next_element()?;
                        continue 'value;
                    }
                }
                Some(b'{') => {
                    self.open()?;
                    self.i += 1;
                    self.frames.push(Frame::Object {
                        first: self.spans.len(),
                        len: 0,
                        current: None,
                        set: None,
                    });
                    self.skip_ws();
                    if self.peek() == Some(b'}') {
                        self.i += 1;
                        self.close_object();
                    } else {
                        self.key(false)?;
                        continue 'value;
                    }
                }
                Some(b'"') => self.string(false)?,
                Some(b'-' | b'0'..=b'9') => self.number()?,
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                other => return Err(self.not_a_value(other)),
            }
            // A value is complete: close containers until one expects another member.
            loop {
                self.skip_ws();
                match self.frames.last() {
                    None => {
                        if self.i == self.b.len() {
                            return Ok(());
                        }
                        let msg = format!(
                            "unexpected {} at byte {} after the JSON value; send exactly one \
                             JSON value",
                            describe(self.peek()),
                            self.i
                        );
                        return Err(self.fail(JsonErrorKind::TrailingData, false, msg));
                    }
                    Some(Frame::Array { .. }) => match self.peek() {
                        Some(b',') => {
                            self.i += 1;
                            self.next_element()?;
                            continue 'value;
                        }
                        Some(b']') => {
                            self.i += 1;
                            self.frames.pop();
                        }
                        other => return Err(self.expected("',' or ']'", other)),
                    },
                    Some(Frame::Object { .. }) => match self.peek() {
                        Some(b',') => {
                            self.i += 1;
                            self.skip_ws();
                            self.key(true)?;
                            continue 'value;
                        }
                        Some(b'}') => {
                            self.i += 1;
                            self.close_object();
                        }
                        other => return Err(self.expected("',' or '}'", other)),
                    },
                }
            }
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    /// Called before a container is pushed: refuses one level too many.
    fn open(&self) -> Result<(), JsonError> {
        if self.frames.len() >= self.limits.max_depth {
            let msg = format!(
                "arrays and objects are nested more than {} levels deep (byte {})",
                self.limits.max_depth, self.i
            );
            return Err(self.fail(JsonErrorKind::TooDeep, true, msg));
        }
        Ok(())
    }

    /// Starts the next element of the innermost array.
    fn next_element(&mut self) -> Result<(), JsonError> {
        let max = self.limits.max_array_len;
        if let Some(Frame::Array { len }) = self.frames.last_mut() {
            if *len >= max {
                let msg = format!("an array has more than {max} elements");
                return Err(self.fail(JsonErrorKind::ArrayTooLong, false, msg));
            }
            *len += 1;
        }
        Ok(())
    }

    fn close_object(&mut self) {
        if let Some(Frame::Object { first, .. }) = self.frames.pop() {
            if let Some(&(start, _)) = self.spans.get(first) {
                self.keys.truncate(start);
            }
            self.spans.truncate(first);
        }
    }

    /// Reads `"key"` and the `:` after it, at the current position of the innermost object.
    /// `after_comma` only sharpens the message for a trailing comma.
    fn key(&mut self, after_comma: bool) -> Result<(), JsonError> {
        let max_keys = self.limits.max_keys;
        let Some(Frame::Object { len, current, .. }) = self.frames.last_mut() else {
            return Ok(());
        };
        *current = None;
        let count = *len;
        match self.peek() {
            Some(b'"') => {}
            Some(b'}') if after_comma => {
                let msg = format!(
                    "trailing comma before '}}' at byte {}; remove the last ','",
                    self.i
                );
                return Err(self.fail(JsonErrorKind::Syntax, false, msg));
            }
            other => {
                let msg = format!(
                    "expected a double-quoted key but found {} at byte {}",
                    describe(other),
                    self.i
                );
                return Err(self.fail(JsonErrorKind::Syntax, false, msg));
            }
        }
        if count >= max_keys {
            let msg = format!("an object has more than {max_keys} keys");
            return Err(self.fail(JsonErrorKind::TooManyKeys, false, msg));
        }
        let start = self.keys.len();
        self.string(true)?;
        let end = self.keys.len();

        let Some(Frame::Object {
            first,
            len,
            current,
            set,
        }) = self.frames.last_mut()
        else {
            return Ok(());
        };
        let key = self.keys.get(start..end).unwrap_or_default();
        let duplicate = match set {
            Some(set) => !set.insert(key.into()),
            None => self
                .spans
                .get(*first..)
                .unwrap_or_default()
                .iter()
                .any(|&(s, e)| self.keys.get(s..e) == Some(key)),
        };
        self.spans.push((start, end));
        *current = Some(self.spans.len() - 1);
        *len += 1;
        if duplicate {
            let msg = "duplicate key in an object; send each key once".to_owned();
            return Err(self.fail(JsonErrorKind::DuplicateKey, true, msg));
        }
        if set.is_none() && *len > SMALL_OBJECT {
            let all = self.spans.get(*first..).unwrap_or_default();
            *set = Some(
                all.iter()
                    .map(|&(s, e)| Box::<[u8]>::from(self.keys.get(s..e).unwrap_or_default()))
                    .collect(),
            );
        }

        self.skip_ws();
        if self.peek() != Some(b':') {
            let msg = format!(
                "expected ':' after the key but found {} at byte {}",
                describe(self.peek()),
                self.i
            );
            return Err(self.fail(JsonErrorKind::Syntax, true, msg));
        }
        self.i += 1;
        Ok(())
    }

    /// Reads a string at the current `"`; a key's unescaped bytes are appended to `keys`.
    fn string(&mut self, is_key: bool) -> Result<(), JsonError> {
        let max = self.limits.max_string_bytes;
        let too_long = |this: &Self| {
            let what = if is_key { "a key" } else { "a string" };
            let msg = format!("{what} is longer than {max} bytes");
            this.fail(JsonErrorKind::StringTooLong, !is_key, msg)
        };
        self.i += 1;
        let mut len = 0usize;
        loop {
            // A run of plain bytes, scanned no further than the length limit.
            let run_start = self.i;
            let budget_end = self
                .b
                .len()
                .min(run_start.saturating_add(max - len).saturating_add(1));
            while let Some(&c) = self.b.get(self.i)
                && self.i < budget_end
                && c != b'"'
                && c != b'\\'
                && c >= 0x20
            {
                self.i += 1;
            }
            let run = self.b.get(run_start..self.i).unwrap_or_default();
            len += run.len();
            if len > max {
                return Err(too_long(self));
            }
            if let Err(e) = std::str::from_utf8(run) {
                let at = run_start + e.valid_up_to();
                let msg = format!("invalid UTF-8 in a string at byte {at}; send UTF-8 text");
                return Err(self.fail(JsonErrorKind::Utf8, !is_key, msg));
            }
            if is_key {
                self.keys.extend_from_slice(run);
            }
            match self.peek() {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    let mut buf = [0u8; 4];
                    let unescaped = self.escape(is_key, &mut buf)?;
                    len += unescaped.len();
                    if len > max {
                        return Err(too_long(self));
                    }
                    if is_key {
                        self.keys.extend_from_slice(unescaped);
                    }
                }
                None => {
                    let msg = "the input ends inside a string; close it with '\"'".to_owned();
                    return Err(self.fail(JsonErrorKind::Syntax, !is_key, msg));
                }
                Some(c) => {
                    let msg = format!(
                        "control character 0x{c:02x} at byte {} must be escaped in strings \
                         (for example \\n or \\u{c:04x})",
                        self.i
                    );
                    return Err(self.fail(JsonErrorKind::Syntax, !is_key, msg));
                }
            }
        }
    }

    /// Reads one escape sequence at the current `\`; returns its UTF-8 bytes.
    fn escape<'b>(&mut self, is_key: bool, buf: &'b mut [u8; 4]) -> Result<&'b [u8], JsonError> {
        let at = self.i;
        self.i += 1;
        let simple = match self.peek() {
            Some(b'"') => b'"',
            Some(b'\\') => b'\\',
            Some(b'/') => b'/',
            Some(b'b') => 0x08,
            Some(b'f') => 0x0c,
            Some(b'n') => b'\n',
            Some(b'r') => b'\r',
            Some(b't') => b'\t',
            Some(b'u') => {
                self.i += 1;
                let hi = self.hex4(at, is_key)?;
                let code = if (0xD800..0xDC00).contains(&hi) {
                    let lo = if self.b.get(self.i..self.i + 2) == Some(b"\\u") {
                        self.i += 2;
                        Some(self.hex4(self.i - 2, is_key)?)
                    } else {
                        None
                    };
                    match lo {
                        Some(lo) if (0xDC00..0xE000).contains(&lo) => {
                            0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                        }
                        _ => {
                            let msg = format!(
                                "\\u{hi:04x} at byte {at} is a high surrogate without a low \
                                 surrogate (\\udc00-\\udfff) after it; escape characters \
                                 outside the BMP as a surrogate pair"
                            );
                            return Err(self.fail(JsonErrorKind::Utf8, !is_key, msg));
                        }
                    }
                } else if (0xDC00..0xE000).contains(&hi) {
                    let msg = format!(
                        "\\u{hi:04x} at byte {at} is a low surrogate without a high surrogate \
                         before it"
                    );
                    return Err(self.fail(JsonErrorKind::Utf8, !is_key, msg));
                } else {
                    hi
                };
                let Some(ch) = char::from_u32(code) else {
                    let msg = format!("invalid \\u escape at byte {at}");
                    return Err(self.fail(JsonErrorKind::Utf8, !is_key, msg));
                };
                return Ok(ch.encode_utf8(buf).as_bytes());
            }
            Some(c) => {
                let msg = format!(
                    "invalid escape \\{} at byte {at}; the escapes are \\\" \\\\ \\/ \\b \\f \
                     \\n \\r \\t and \\uXXXX",
                    printable(c)
                );
                return Err(self.fail(JsonErrorKind::Syntax, !is_key, msg));
            }
            None => {
                let msg = "the input ends inside a string; close it with '\"'".to_owned();
                return Err(self.fail(JsonErrorKind::Syntax, !is_key, msg));
            }
        };
        self.i += 1;
        buf[0] = simple;
        Ok(&buf[..1])
    }

    /// Reads the four hex digits of a `\u` escape that started at byte `at`.
    fn hex4(&mut self, at: usize, is_key: bool) -> Result<u32, JsonError> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = match self.peek() {
                Some(c @ b'0'..=b'9') => c - b'0',
                Some(c @ b'a'..=b'f') => c - b'a' + 10,
                Some(c @ b'A'..=b'F') => c - b'A' + 10,
                _ => {
                    let msg =
                        format!("\\u at byte {at} must be followed by four hexadecimal digits");
                    return Err(self.fail(JsonErrorKind::Syntax, !is_key, msg));
                }
            };
            v = v * 16 + u32::from(d);
            self.i += 1;
        }
        Ok(v)
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), JsonError> {
        if self.b.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            return Ok(());
        }
        let msg = format!(
            "invalid literal at byte {}; expected true, false or null (in lower case)",
            self.i
        );
        Err(self.fail(JsonErrorKind::Syntax, true, msg))
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Result<(), JsonError> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        let int_start = self.i;
        match self.peek() {
            Some(b'0') => {
                self.i += 1;
                if let Some(b'0'..=b'9') = self.peek() {
                    let msg = format!("leading zeros are not allowed in numbers (byte {start})");
                    return Err(self.fail(JsonErrorKind::Syntax, true, msg));
                }
            }
            Some(b'1'..=b'9') => {
                self.digits();
            }
            Some(b'I') => {
                let msg = format!("-Infinity is not JSON (byte {start}); send null or a string");
                return Err(self.fail(JsonErrorKind::Syntax, true, msg));
            }
            other => {
                let msg = format!(
                    "expected a digit after '-' but found {} at byte {}",
                    describe(other),
                    self.i
                );
                return Err(self.fail(JsonErrorKind::Syntax, true, msg));
            }
        }
        let int_end = self.i;
        let mut frac = (self.i, self.i);
        if self.peek() == Some(b'.') {
            self.i += 1;
            let frac_start = self.i;
            if self.digits() == 0 {
                let msg = format!(
                    "expected a digit after the decimal point at byte {}; write 5 or 5.0, not 5.",
                    self.i
                );
                return Err(self.fail(JsonErrorKind::Syntax, true, msg));
            }
            frac = (frac_start, self.i);
        }
        let mut exponent = false;
        if let Some(b'e' | b'E') = self.peek() {
            exponent = true;
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if self.digits() == 0 {
                let msg = format!("expected a digit in the exponent at byte {}", self.i);
                return Err(self.fail(JsonErrorKind::Syntax, true, msg));
            }
        }
        if !self.limits.safe_integers_only {
            return Ok(());
        }

        let int = self.b.get(int_start..int_end).unwrap_or_default();
        if frac.0 == frac.1 && !exponent {
            if int.len() > MAX_SAFE_INTEGER.len()
                || (int.len() == MAX_SAFE_INTEGER.len() && int > MAX_SAFE_INTEGER)
            {
                let msg = format!(
                    "the integer at byte {start} is outside the safe range ±9007199254740991 \
                     (2^53-1) that every JSON parser holds exactly; send it as a string"
                );
                return Err(self.fail(JsonErrorKind::UnsafeNumber, true, msg));
            }
            return Ok(());
        }

        // Significant digits: from the first to the last non-zero digit of int and fraction.
        let fraction = self.b.get(frac.0..frac.1).unwrap_or_default();
        let mut first = None;
        let mut last = 0;
        for (k, &d) in int.iter().chain(fraction).enumerate() {
            if d != b'0' {
                first.get_or_insert(k);
                last = k;
            }
        }
        let significant = first.map_or(0, |f| last - f + 1);
        if significant > MAX_SIGNIFICANT_DIGITS {
            let msg = format!(
                "the number at byte {start} has {significant} significant digits, more than a \
                 64-bit float holds ({MAX_SIGNIFICANT_DIGITS}); send it as a string"
            );
            return Err(self.fail(JsonErrorKind::UnsafeNumber, true, msg));
        }
        let value = self
            .b
            .get(start..self.i)
            .and_then(|t| std::str::from_utf8(t).ok())
            .and_then(|t| t.parse::<f64>().ok())
            .map(f64::abs);
        match value {
            Some(v) if v <= MAX_MAGNITUDE && (v != 0.0 || significant == 0) => Ok(()),
            Some(0.0) => {
                let msg = format!(
                    "the number at byte {start} is too small for a 64-bit float and would \
                     round to zero; send it as a string"
                );
                Err(self.fail(JsonErrorKind::UnsafeNumber, true, msg))
            }
            _ => {
                let msg = format!(
                    "the number at byte {start} is too large (above 1e308) for a 64-bit float; \
                     send it as a string"
                );
                Err(self.fail(JsonErrorKind::UnsafeNumber, true, msg))
            }
        }
    }

    /// The error for something that cannot start a value.
    fn not_a_value(&self, found: Option<u8>) -> JsonError {
        let at = self.i;
        let (kind, msg) = match found {
            None if self
                .b
                .iter()
                .all(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r')) =>
            {
                (
                    JsonErrorKind::Syntax,
                    "the body is empty; expected a JSON value".to_owned(),
                )
            }
            None => (
                JsonErrorKind::Syntax,
                "the input ends where a value is expected".to_owned(),
            ),
            Some(c @ (b']' | b'}')) if self.before_ws() == Some(b',') => (
                JsonErrorKind::Syntax,
                format!(
                    "trailing comma before '{}' at byte {at}; remove the last ','",
                    c as char
                ),
            ),
            Some(b'N') => (
                JsonErrorKind::Syntax,
                format!("NaN is not JSON (byte {at}); send null or a string"),
            ),
            Some(b'I') => (
                JsonErrorKind::Syntax,
                format!("Infinity is not JSON (byte {at}); send null or a string"),
            ),
            Some(b'+') => (
                JsonErrorKind::Syntax,
                format!("a leading '+' is not allowed in numbers (byte {at})"),
            ),
            Some(b'.') => (
                JsonErrorKind::Syntax,
                format!("a number must start with a digit (byte {at}); write 0.5, not .5"),
            ),
            Some(b'/') => (
                JsonErrorKind::Syntax,
                format!("comments are not allowed in JSON (byte {at})"),
            ),
            Some(b'\'') => (
                JsonErrorKind::Syntax,
                format!("strings must use double quotes (byte {at})"),
            ),
            Some(c) if c >= 0x80 && !self.utf8_char_at(at) => (
                JsonErrorKind::Utf8,
                format!("invalid UTF-8 at byte {at}; send UTF-8 text"),
            ),
            Some(c) => (
                JsonErrorKind::Syntax,
                format!(
                    "expected a JSON value but found {} at byte {at}",
                    describe(Some(c))
                ),
            ),
        };
        self.fail(kind, true, msg)
    }

    /// The error for an unexpected byte after a value inside a container.
    fn expected(&self, what: &str, found: Option<u8>) -> JsonError {
        let at = self.i;
        let (kind, msg) = match found {
            None => (
                JsonErrorKind::Syntax,
                format!("the input ends inside an array or object; expected {what}"),
            ),
            Some(b'/') => (
                JsonErrorKind::Syntax,
                format!("comments are not allowed in JSON (byte {at})"),
            ),
            Some(c) if c >= 0x80 && !self.utf8_char_at(at) => (
                JsonErrorKind::Utf8,
                format!("invalid UTF-8 at byte {at}; send UTF-8 text"),
            ),
            Some(c) => (
                JsonErrorKind::Syntax,
                format!(
                    "expected {what} after a value but found {} at byte {at}",
                    describe(Some(c))
                ),
            ),
        };
        self.fail(kind, true, msg)
    }

    /// The last non-whitespace byte before the current position.
    fn before_ws(&self) -> Option<u8> {
        self.b
            .get(..self.i)?
            .iter()
            .rev()
            .find(|c| !matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
            .copied()
    }

    /// Whether a well-formed UTF-8 character starts at byte `at`.
    fn utf8_char_at(&self, at: usize) -> bool {
        let end = self.b.len().min(at + 4);
        match std::str::from_utf8(self.b.get(at..end).unwrap_or_default()) {
            Ok(_) => true,
            Err(e) => e.valid_up_to() > 0,
        }
    }

    /// An error at the current position. With `at_value`, the pointer names the innermost
    /// container's current element (or member); without, the container itself.
    fn fail(&self, kind: JsonErrorKind, at_value: bool, message: String) -> JsonError {
        JsonError {
            pointer: self.pointer(at_value),
            kind,
            message,
        }
    }

    fn pointer(&self, at_value: bool) -> String {
        let mut p = String::new();
        let depth = self.frames.len();
        for (d, frame) in self.frames.iter().enumerate() {
            if d + 1 == depth && !at_value {
                break;
            }
            match frame {
                Frame::Array { len: 0 } => break,
                Frame::Array { len } => {
                    p.push('/');
                    p.push_str(&(len - 1).to_string());
                }
                Frame::Object { current: None, .. } => break,
                Frame::Object {
                    current: Some(k), ..
                } => {
                    let key = self
                        .spans
                        .get(*k)
                        .and_then(|&(s, e)| self.keys.get(s..e))
                        .unwrap_or_default();
                    p.push('/');
                    for ch in String::from_utf8_lossy(key).chars() {
                        match ch {
                            '~' => p.push_str("~0"),
                            '/' => p.push_str("~1"),
                            c => p.push(c),
                        }
                    }
                }
            }
        }
        p
    }
}

/// One input byte for a message: printable ASCII as itself, anything else as hex.
fn printable(c: u8) -> String {
    if c.is_ascii_graphic() {
        (c as char).to_string()
    } else {
        format!("0x{c:02x}")
    }
}

fn describe(c: Option<u8>) -> String {
    match c {
        None => "the end of the input".to_owned(),
        Some(c) if c.is_ascii_graphic() => format!("'{}'", c as char),
        Some(c) => format!("byte 0x{c:02x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    fn ok(s: &str) {
        if let Err(e) = check(s.as_bytes(), &JsonLimits::default()) {
            panic!("{s:?} refused: {e:?}");
        }
    }

    fn err_with(b: &[u8], limits: &JsonLimits) -> JsonError {
        match check(b, limits) {
            Ok(()) => panic!("{:?} accepted", String::from_utf8_lossy(b)),
            Err(e) => e,
        }
    }

    fn err(s: &str) -> JsonError {
        err_with(s.as_bytes(), &JsonLimits::default())
    }

    fn kind(s: &str) -> JsonErrorKind {
        err(s).kind
    }

    #[test]
    fn valid_documents_pass() {
        for s in [
            "null",
            "true",
            "false",
            "0",
            "-0",
            "123",
            "-9007199254740991",
            "9007199254740991",
            "1.5",
            "-0.25e-3",
            "1E+2",
            "1e3",
            "0.1",
            "1.7976931348623157e100",
            "5e-324",
            "0e99999999999999999999",
            "\"\"",
            "\"plain\"",
            " \t\r\n{ \"a\" : [ 1 , 2 , { } , [ ] ] } \n",
            "[]",
            "{}",
            "[[[[]]]]",
            r#"{"payments":[{"amount":"125.40","currency":"EUR"},{"amount":"3","currency":"JPY"}]}"#,
            r#""\" \\ \/ \b \f \n \r \t \u0000 \u00e9 \u20AC""#,
            r#""\ud83d\ude00 and 😀""#,
            "\"héllo wörld — 日本語 — 😀\"",
            r#"{"a":1,"b":{"a":2},"c":[{"a":3}]}"#,
            r#"{"\u00e9":1,"é\u0301":2}"#,
            r#"{"a":1,"A":2}"#,
            "[1,\"1\",true,null,{\"k\":[]}]",
        ] {
            ok(s);
        }
    }

    #[test]
    fn syntax_errors() {
        for s in [
            "",
            "   ",
            "[1,]",
            "{\"a\":1,}",
            "[1 2]",
            "{\"a\" 1}",
            "{a:1}",
            "{'a':1}",
            "['a']",
            "// c\n1",
            "[1 /* c */]",
            "NaN",
            "Infinity",
            "-Infinity",
            "[nan]",
            "tru",
            "True",
            "nul",
            "01",
            "-01",
            "00",
            "1.",
            ".5",
            "+1",
            "-",
            "1e",
            "1e+",
            "[",
            "{",
            "{\"a\"",
            "{\"a\":",
            "\"abc",
            "\"a\tb\"",
            "\"a\nb\"",
            "\"\\x\"",
            "\"\\u12\"",
            "\"\\u12g4\"",
            "\"\\U0041\"",
            "[,1]",
            "{,}",
            "[1,,2]",
            "{\"a\":1 \"b\":2}",
        ] {
            assert_eq!(kind(s), JsonErrorKind::Syntax, "{s:?}");
        }
        assert_eq!(
            err_with(b"\xEF\xBB\xBF{}", &JsonLimits::default()).kind,
            JsonErrorKind::Syntax
        );
        assert!(err("[1,]").message.contains("trailing comma"));
        assert!(err("{\"a\":1,}").message.contains("trailing comma"));
        assert!(err("01").message.contains("leading zeros"));
        assert!(err("NaN").message.contains("NaN"));
        assert!(err("// c\n1").message.contains("comments"));
        assert!(err("").message.contains("empty"));
    }

    #[test]
    fn utf8_errors() {
        let limits = JsonLimits::default();
        for b in [
            &b"\"\xff\""[..],
            b"\"\xc3\"",             // truncated sequence
            b"\"\xc0\xaf\"",         // overlong '/'
            b"\"\xe0\x80\xaf\"",     // overlong
            b"\"\xed\xa0\x80\"",     // encoded surrogate U+D800
            b"\"\xf4\x90\x80\x80\"", // above U+10FFFF
            b"\"\x80\"",             // lone continuation byte
            b"[\xff]",
            b"\xfe",
            b"{\"k\xff\":1}",
        ] {
            assert_eq!(err_with(b, &limits).kind, JsonErrorKind::Utf8, "{b:?}");
        }
        for s in [
            r#""\ud800""#,
            r#""\ud800x""#,
            r#""\ud800\u0041""#,
            r#""\udc00""#,
            r#""\ude00\ud83d""#,
            r#"{"\ud800":1}"#,
        ] {
            assert_eq!(kind(s), JsonErrorKind::Utf8, "{s:?}");
        }
        // Valid UTF-8 in the wrong place is a syntax error, not a UTF-8 one.
        assert_eq!(kind("[é]"), JsonErrorKind::Syntax);
    }

    #[test]
    fn depth_limit() {
        let limits = JsonLimits {
            max_depth: 2,
            ..JsonLimits::default()
        };
        assert!(check(b"[[1]]", &limits).is_ok());
        assert!(check(b"{\"a\":{\"b\":1}}", &limits).is_ok());
        assert!(
            check(
                b"1",
                &JsonLimits {
                    max_depth: 0,
                    ..JsonLimits::default()
                }
            )
            .is_ok()
        );
        assert!(
            check(
                b"[]",
                &JsonLimits {
                    max_depth: 0,
                    ..JsonLimits::default()
                }
            )
            .is_err()
        );
        let e = err_with(b"[[[1]]]", &limits);
        assert_eq!(e.kind, JsonErrorKind::TooDeep);
        assert_eq!(e.pointer, "/0/0");
        let e = err_with(br#"{"a":[{"b":1}]}"#, &limits);
        assert_eq!(
            (e.kind, e.pointer.as_str()),
            (JsonErrorKind::TooDeep, "/a/0")
        );
    }

    #[test]
    fn ten_thousand_deep_array_is_refused_without_overflow() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let e = err(&deep);
        assert_eq!(e.kind, JsonErrorKind::TooDeep);
        assert_eq!(e.pointer, "/0".repeat(32));
        // Non-recursive: with the limit lifted, the same document is simply accepted.
        let unlimited = JsonLimits {
            max_depth: usize::MAX,
            ..JsonLimits::default()
        };
        assert!(check(deep.as_bytes(), &unlimited).is_ok());
        let objects = format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
        assert!(check(objects.as_bytes(), &unlimited).is_ok());
        assert_eq!(err(&objects).kind, JsonErrorKind::TooDeep);
        // Unclosed: still no overflow, still an error.
        assert!(check("[".repeat(100_000).as_bytes(), &unlimited).is_err());
    }

    #[test]
    fn key_and_array_limits() {
        let limits = JsonLimits {
            max_keys: 2,
            max_array_len: 3,
            ..JsonLimits::default()
        };
        assert!(check(br#"{"a":1,"b":2}"#, &limits).is_ok());
        assert!(check(b"[1,2,3]", &limits).is_ok());
        let e = err_with(br#"{"x":{"a":1,"b":2,"c":3}}"#, &limits);
        assert_eq!(
            (e.kind, e.pointer.as_str()),
            (JsonErrorKind::TooManyKeys, "/x")
        );
        let e = err_with(br#"{"x":[[1,2,3,4]]}"#, &limits);
        assert_eq!(
            (e.kind, e.pointer.as_str()),
            (JsonErrorKind::ArrayTooLong, "/x/0")
        );
        let e = err_with(b"[1,2,3,4]", &limits);
        assert_eq!(
            (e.kind, e.pointer.as_str()),
            (JsonErrorKind::ArrayTooLong, "")
        );
        // Defaults: 10,000 elements pass, 10,001 do not.
        let arr = |n: usize| format!("[{}0]", "0,".repeat(n - 1));
        ok(&arr(10_000));
        assert_eq!(kind(&arr(10_001)), JsonErrorKind::ArrayTooLong);
        let obj = |n: usize| {
            let members: Vec<String> = (0..n).map(|k| format!("\"k{k}\":{k}")).collect();
            format!("{{{}}}", members.join(","))
        };
        ok(&obj(1000));
        assert_eq!(kind(&obj(1001)), JsonErrorKind::TooManyKeys);
    }

    #[test]
    fn string_limit_counts_unescaped_bytes() {
        let limits = JsonLimits {
            max_string_bytes: 4,
            ..JsonLimits::default()
        };
        assert!(check(br#""abcd""#, &limits).is_ok());
        assert!(check(br#""\u0061\u0062\u0063\u0064""#, &limits).is_ok()); // 4 bytes unescaped
        assert!(check("\"é€\"".as_bytes(), &limits).is_err()); // 2 + 3 bytes
        assert!(check(br#""\ud83d\ude00""#, &limits).is_ok()); // 4 bytes
        let e = err_with(br#"{"a":["abcde"]}"#, &limits);
        assert_eq!(
            (e.kind, e.pointer.as_str()),
            (JsonErrorKind::StringTooLong, "/a/0")
        );
        let e = err_with(br#"{"a":{"abcde":1}}"#, &limits);
        assert_eq!(
            (e.kind, e.pointer.as_str()),
            (JsonErrorKind::StringTooLong, "/a")
        );
        let e = err_with(br#"["abc\n\n"]"#, &limits);
        assert_eq!(e.kind, JsonErrorKind::StringTooLong);
        // A huge string is refused without its content in the message.
        let big = format!("\"{}\"", "x".repeat(70_000));
        let e = err(&big);
        assert_eq!(e.kind, JsonErrorKind::StringTooLong);
        assert!(!e.message.contains("xxx"));
    }

    #[test]
    fn duplicate_keys() {
        for s in [
            r#"{"a":1,"a":2}"#,
            r#"{"a":1,"\u0061":2}"#,
            r#"{"\u00e9":1,"é":2}"#,
            r#"{"\ud83d\ude00":1,"😀":2}"#,
            r#"{"a/b":1,"a\/b":2}"#,
        ] {
            assert_eq!(kind(s), JsonErrorKind::DuplicateKey, "{s}");
        }
        let e = err(r#"{"x":{"a":1,"b":{"a":1},"a":2}}"#);
        assert_eq!(
            (e.kind, e.pointer.as_str()),
            (JsonErrorKind::DuplicateKey, "/x/a")
        );
        // The same key in sibling and nested objects is fine.
        ok(r#"{"a":{"a":{"a":1}},"b":[{"a":1},{"a":2}],"c":{"a":3}}"#);
        // Past the linear-scan size: the hash set catches it too.
        let many: Vec<String> = (0..100).map(|k| format!("\"k{k}\":{k}")).collect();
        let s = format!("{{{},\"k\\u0037\":0}}", many.join(","));
        let e = err(&s);
        assert_eq!(
            (e.kind, e.pointer.as_str()),
            (JsonErrorKind::DuplicateKey, "/k7")
        );
        let s = format!("{{{},\"k100\":0, \"z\":{{\"k5\":1}}}}", many.join(","));
        ok(&s);
    }

    #[test]
    fn unsafe_numbers() {
        for s in [
            "9007199254740992",
            "9007199254740993",
            "-9007199254740993",
            "12345678901234567890",
            "1e400",
            "-1e400",
            "1.8e308",
            "2e308",
            "1e-400",
            "0.1234567890123456789",
            "123456789012345678.5",
            "[1, 2, 99999999999999999999]",
        ] {
            assert_eq!(kind(s), JsonErrorKind::UnsafeNumber, "{s}");
        }
        for s in [
            "1e3",
            "1.5e300",
            "1e308",
            "-1e308",
            "0.12345678901234567",
            "1.000000000000000000000000",
            "100000000000000000000000.0",
            "0.000000000000000000000000000001",
            "5e-324",
            "0.0e-999",
            "-0.0",
            "9007199254740991.5",
        ] {
            ok(s);
        }
        let e = err(r#"{"payments":[{},{},{},{"amount":9007199254740993}]}"#);
        assert_eq!(e.pointer, "/payments/3/amount");
        let lax = JsonLimits {
            safe_integers_only: false,
            ..JsonLimits::default()
        };
        assert!(check(b"9007199254740993", &lax).is_ok());
        assert!(check(b"1e400", &lax).is_ok());
    }

    #[test]
    fn trailing_data() {
        for s in ["1 2", "{} {}", "[]]", "null x", "\"a\"\"b\"", "{}\0", "1,"] {
            assert_eq!(kind(s), JsonErrorKind::TrailingData, "{s:?}");
        }
        ok("{}\n\r\t ");
    }

    #[test]
    fn pointers_name_the_failing_value() {
        let cases = [
            (
                r#"{"payments":[{"amount":1},{"amount":01}]}"#,
                "/payments/1/amount",
            ),
            (r#"{"a~b":{"c/d":[nul]}}"#, "/a~0b/c~1d/0"),
            (r#"{"":{"":tru}}"#, "//"),
            (r#"[1,2,]"#, "/2"),
            (r#"[1 2]"#, "/0"),
            (r#"{"a":1 "b":2}"#, "/a"),
            (r#"{"a" 1}"#, "/a"),
            (r#"{"a":{"b":"\ud800"}}"#, "/a/b"),
            (r#"{"a":{1:2}}"#, "/a"),
            (r#"[[],[{}],[{"x":"\q"}]]"#, "/2/0/x"),
            ("{\"\\u00e9\":[\"\x01\"]}", "/é/0"),
            ("nul", ""),
            ("[]x", ""),
        ];
        for (s, pointer) in cases {
            assert_eq!(err(s).pointer, pointer, "{s}");
        }
    }

    #[test]
    fn messages_do_not_echo_values() {
        let secret = "s3cr3t-value-s3cr3t";
        for s in [
            format!(r#"{{"a":"{secret}","a":1}}"#),
            format!(r#"["{secret}" "{secret}"]"#),
            format!(r#"["{secret}\x"]"#),
            format!(r#"{{"k":"{secret}"}} {secret}"#),
        ] {
            let e = err(&s);
            assert!(!e.message.contains("s3cr3t"), "{e:?}");
        }
        let e = err("[1,]");
        assert_eq!(e.to_string(), format!("{} (at /1)", e.message));
    }

    // ------------------------------------------------------------------ properties ----

    const MAX_SAFE: i64 = (1 << 53) - 1;

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-MAX_SAFE..=MAX_SAFE).prop_map(Value::from),
            any::<f64>()
                .prop_filter("within 1e308", |x| x.abs() <= MAX_MAGNITUDE)
                .prop_map(Value::from),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(8, 128, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::btree_map(any::<String>(), inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Property (c): the checker is never more lenient than serde_json.
    fn serde_agrees_when_accepted(bytes: &[u8]) -> Result<(), TestCaseError> {
        if check(bytes, &JsonLimits::default()).is_ok() {
            prop_assert!(
                serde_json::from_slice::<Value>(bytes).is_ok(),
                "check accepted what serde_json refuses: {:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        Ok(())
    }

    fn mutate(mut doc: Vec<u8>, edits: &[(prop::sample::Index, u8, u8)]) -> Vec<u8> {
        for (at, byte, op) in edits {
            let i = at.index(doc.len() + 1);
            match op % 3 {
                0 if i < doc.len() => doc[i] = *byte,
                1 => doc.insert(i, *byte),
                _ if i < doc.len() => {
                    doc.remove(i);
                }
                _ => doc.push(*byte),
            }
        }
        doc
    }

    /// Bytes that matter to JSON, so that mutations hit the grammar often.
    fn arb_json_byte() -> impl Strategy<Value = u8> {
        prop_oneof![
            any::<u8>(),
            prop::sample::select(
                b"{}[]\",:\\/0123456789-+.eEtrufalsn \t\r\n\x00\x80\xc3\xed".to_vec()
            ),
        ]
    }

    proptest! {
        /// (a) Anything serde_json writes, within the limits, is accepted.
        #[test]
        fn serialized_values_are_accepted(v in arb_json()) {
            let compact = serde_json::to_vec(&v).unwrap();
            prop_assert_eq!(check(&compact, &JsonLimits::default()), Ok(()));
            let pretty = serde_json::to_vec_pretty(&v).unwrap();
            prop_assert_eq!(check(&pretty, &JsonLimits::default()), Ok(()));
        }

        /// (b) + (c) on arbitrary bytes.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            serde_agrees_when_accepted(&bytes)?;
            let strict = JsonLimits {
                max_depth: 2,
                max_keys: 2,
                max_array_len: 2,
                max_string_bytes: 2,
                safe_integers_only: true,
            };
            let _ = check(&bytes, &strict);
        }

        /// (b) + (c) on mutations of valid JSON.
        #[test]
        fn mutated_json_never_panics(
            v in arb_json(),
            edits in prop::collection::vec(
                (any::<prop::sample::Index>(), arb_json_byte(), any::<u8>()),
                1..6,
            ),
        ) {
            let doc = mutate(serde_json::to_vec(&v).unwrap(), &edits);
            serde_agrees_when_accepted(&doc)?;
        }

        /// Whatever the limits, the checker's verdict is only ever stricter than without them.
        #[test]
        fn limits_only_refuse(v in arb_json(), depth in 0usize..6, n in 0usize..6) {
            let doc = serde_json::to_vec(&v).unwrap();
            let tight = JsonLimits {
                max_depth: depth,
                max_keys: n,
                max_array_len: n,
                max_string_bytes: n * 4,
                safe_integers_only: true,
            };
            if check(&doc, &tight).is_ok() {
                prop_assert_eq!(check(&doc, &JsonLimits::default()), Ok(()));
            }
        }
    }
}

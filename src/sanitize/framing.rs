//! A scanner of the raw bytes of an HTTP/1 connection, for the framing mistakes that hyper
//! forgives silently (it keeps the request, so the backend could be told a different story by
//! a front proxy that reads the same bytes another way):
//!
//! - `Content-Length` together with `Transfer-Encoding` (hyper drops the length);
//! - `Content-Length` repeated, even with equal values (hyper folds them), or comma-listed;
//! - `Transfer-Encoding` repeated or other than exactly `chunked`;
//! - a bare LF or a bare CR as a line ending in the request head, NUL in the head;
//! - obsolete line folding.
//!
//! The scanner follows each request's body (by `Content-Length`, or chunk by chunk) to find the
//! next request head on a keep-alive connection. It stops at the HTTP/2 preface and at anything
//! it cannot follow (hyper refuses that itself). The first violation is kept in a
//! [`FramingVerdict`] shared with the request pipeline, which answers 400 and closes the
//! connection.

use std::sync::atomic::{AtomicU8, Ordering};

/// What the scanner found on a connection (shared with the requests of that connection).
#[derive(Debug, Default)]
pub struct FramingVerdict(AtomicU8);

/// The violations, in the order of their codes.
const REASONS: [&str; 8] = [
    "",
    "content_length_with_transfer_encoding",
    "bad_content_length",
    "bad_transfer_encoding",
    "bare_lf",
    "bare_cr",
    "nul_in_head",
    "obs_fold",
];

impl FramingVerdict {
    /// The first violation seen, if any.
    pub fn violation(&self) -> Option<&'static str> {
        match self.0.load(Ordering::Acquire) {
            0 => None,
            n => REASONS.get(usize::from(n)).copied(),
        }
    }

    fn set(&self, reason: &'static str) {
        let code = REASONS.iter().position(|r| *r == reason).unwrap_or(2);
        let _ = self.0.compare_exchange(
            0,
            u8::try_from(code).unwrap_or(2),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }
}

/// The longest head line kept for parsing (hyper refuses longer heads itself).
const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading the hex size (and any extension) up to CRLF.
    Size { digits: u8, size: u64, ext: bool },
    /// Reading `n` data bytes.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd { cr: bool },
    /// Trailer lines after the last chunk, up to an empty line.
    Trailer { empty: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Body(u64),
    Chunked(Chunk),
    /// Stopped: HTTP/2, a violation, or something hyper refuses anyway.
    Off,
}

/// Scans the bytes a server connection reads.
#[derive(Debug)]
pub struct HeadScanner {
    state: State,
    line: Vec<u8>,
    line_too_long: bool,
    prev_cr: bool,
    first_line: bool,
    content_lengths: u8,
    content_length: Option<u64>,
    bad_length: bool,
    transfer_encodings: u8,
    chunked: bool,
}

impl Default for HeadScanner {
    fn default() -> Self {
        Self {
            state: State::Head,
            line: Vec::new(),
            line_too_long: false,
            prev_cr: false,
            first_line: true,
            content_lengths: 0,
            content_length: None,
            bad_length: false,
            transfer_encodings: 0,
            chunked: false,
        }
    }
}

impl HeadScanner {
    /// Whether the scanner still follows the connection.
    pub fn active(&self) -> bool {
        self.state != State::Off
    }

    /// Scans `bytes`; the first violation goes into `verdict`.
    pub fn feed(&mut self, bytes: &[u8], verdict: &FramingVerdict) {
        let mut i = 0;
        while i < bytes.len() {
            match self.state {
                State::Off => return,
                State::Body(n) => {
                    let take = (bytes.len() - i).min(usize::try_from(n).unwrap_or(usize::MAX));
                    i += take;
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        State::Head
                    } else {
                        State::Body(left)
                    };
                }
                State::Chunked(Chunk::Data(n)) => {
                    let take = (bytes.len() - i).min(usize::try_from(n).unwrap_or(usize::MAX));
                    i += take;
                    let left = n - take as u64;
                    self.state = State::Chunked(if left == 0 {
                        Chunk::DataEnd { cr: false }
                    } else {
                        Chunk::Data(left)
                    });
                }
                State::Chunked(c) => {
                    self.chunk_byte(c, bytes[i]);
                    i += 1;
                }
                State::Head => match self.head_run(&bytes[i..]) {
                    Ok(n) => i += n,
                    Err(reason) => {
                        verdict.set(reason);
                        self.state = State::Off;
                        return;
                    }
                },
            }
        }
    }

    fn chunk_byte(&mut self, c: Chunk, b: u8) {
        self.state = match c {
            Chunk::Size { digits, size, ext } => match b {
                b'\n' if digits > 0 => {
                    if size == 0 {
                        State::Chunked(Chunk::Trailer { empty: true })
                    } else {
                        State::Chunked(Chunk::Data(size))
                    }
                }
                b'\r' => State::Chunked(c),
                _ if ext => State::Chunked(c),
                b';' | b' ' | b'\t' if digits > 0 => State::Chunked(Chunk::Size {
                    digits,
                    size,
                    ext: true,
                }),
                _ => match (b as char).to_digit(16) {
                    Some(d) if digits < 16 => State::Chunked(Chunk::Size {
                        digits: digits + 1,
                        size: size * 16 + u64::from(d),
                        ext,
                    }),
                    // Not a chunk size: hyper refuses the body itself.
                    _ => State::Off,
                },
            },
            Chunk::DataEnd { cr } => match (cr, b) {
                (false, b'\r') => State::Chunked(Chunk::DataEnd { cr: true }),
                (_, b'\n') => State::Chunked(Chunk::Size {
                    digits: 0,
                    size: 0,
                    ext: false,
                }),
                _ => State::Off,
            },
            Chunk::Trailer { empty } => match b {
                b'\n' if empty => {
                    self.reset_head();
                    State::Head
                }
                b'\n' => State::Chunked(Chunk::Trailer { empty: true }),
                b'\r' => State::Chunked(c),
                _ => State::Chunked(Chunk::Trailer { empty: false }),
            },
            Chunk::Data(_) => State::Off,
        };
    }

    fn reset_head(&mut self) {
        self.line.clear();
        self.line_too_long = false;
        self.prev_cr = false;
        self.first_line = true;
        self.content_lengths = 0;
        self.content_length = None;
        self.bad_length = false;
        self.transfer_encodings = 0;
        self.chunked = false;
    }

    /// Scans request-head bytes line by line until the head ends (or `bytes` does), and returns
    /// how many it consumed. A SIMD search for the three bytes that matter (CR, LF, NUL) skips
    /// the rest; a line that fits in one read is checked where it lies, without a copy.
    /// Equivalent to feeding [`Self::head_byte`] one byte at a time (a property test checks it).
    fn head_run(&mut self, bytes: &[u8]) -> Result<usize, &'static str> {
        let mut i = 0;
        if self.prev_cr {
            // The previous read ended on a CR.
            match bytes.first() {
                None => return Ok(0),
                Some(b'\n') => {
                    self.prev_cr = false;
                    i = 1;
                    self.end_line()?;
                }
                Some(_) => return Err("bare_cr"),
            }
        }
        while i < bytes.len() && self.state == State::Head {
            let rest = &bytes[i..];
            let Some(k) = memchr::memchr3(b'\r', b'\n', 0, rest) else {
                self.carry(rest);
                return Ok(bytes.len());
            };
            let seg = &rest[..k];
            match (rest[k], rest.get(k + 1)) {
                (0, _) => return Err("nul_in_head"),
                (b'\n', _) => return Err("bare_lf"),
                (_, None) => {
                    self.carry(seg);
                    self.prev_cr = true;
                    return Ok(bytes.len());
                }
                (_, Some(b'\n')) => {
                    i += k + 2;
                    if self.line.is_empty() && !self.line_too_long && seg.len() <= MAX_LINE {
                        self.line_done(seg)?;
                    } else {
                        self.carry(seg);
                        self.end_line()?;
                    }
                }
                (_, Some(_)) => return Err("bare_cr"),
            }
        }
        Ok(i)
    }

    /// Keeps part of a head line that a later read completes (up to [`MAX_LINE`] bytes).
    fn carry(&mut self, seg: &[u8]) {
        let room = MAX_LINE.saturating_sub(self.line.len());
        if seg.len() > room {
            self.line.extend_from_slice(&seg[..room]);
            self.line_too_long = true;
        } else {
            self.line.extend_from_slice(seg);
        }
    }

    /// The byte-at-a-time model of [`Self::head_run`], kept for the equivalence test.
    #[cfg(test)]
    fn head_byte(&mut self, b: u8) -> Result<(), &'static str> {
        match b {
            b'\n' => {
                if !self.prev_cr {
                    return Err("bare_lf");
                }
                self.prev_cr = false;
                self.end_line()
            }
            _ if self.prev_cr => Err("bare_cr"),
            b'\r' => {
                self.prev_cr = true;
                Ok(())
            }
            0 => Err("nul_in_head"),
            _ => {
                if self.line.len() < MAX_LINE {
                    self.line.push(b);
                } else {
                    self.line_too_long = true;
                }
                Ok(())
            }
        }
    }

    fn end_line(&mut self) -> Result<(), &'static str> {
        let line = std::mem::take(&mut self.line);
        let result = self.line_done(&line);
        self.line = line;
        self.line.clear();
        result
    }

    fn line_done(&mut self, line: &[u8]) -> Result<(), &'static str> {
        if self.first_line {
            if line.is_empty() {
                // Empty lines before a request line are allowed (RFC 9112 §2.2).
                return Ok(());
            }
            self.first_line = false;
            if line.starts_with(b"PRI * HTTP/2.0") {
                self.state = State::Off;
            }
            return Ok(());
        }
        if line.is_empty() {
            return self.head_done();
        }
        if matches!(line[0], b' ' | b'\t') {
            return Err("obs_fold");
        }
        if self.line_too_long {
            self.state = State::Off;
            return Ok(());
        }
        let Some(colon) = line.iter().position(|c| *c == b':') else {
            return Ok(());
        };
        let name = &line[..colon];
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            self.content_lengths = self.content_lengths.saturating_add(1);
            let n = std::str::from_utf8(value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|c| c.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok());
            match n {
                Some(n) => self.content_length = Some(n),
                None => self.bad_length = true,
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.transfer_encodings = self.transfer_encodings.saturating_add(1);
            self.chunked = value.eq_ignore_ascii_case(b"chunked");
        }
        Ok(())
    }

    fn head_done(&mut self) -> Result<(), &'static str> {
        if self.transfer_encodings > 0 && self.content_lengths > 0 {
            return Err("content_length_with_transfer_encoding");
        }
        if self.transfer_encodings > 1 || (self.transfer_encodings == 1 && !self.chunked) {
            return Err("bad_transfer_encoding");
        }
        if self.content_lengths > 1 || self.bad_length {
            return Err("bad_content_length");
        }
        let next = if self.chunked {
            State::Chunked(Chunk::Size {
                digits: 0,
                size: 0,
                ext: false,
            })
        } else {
            match self.content_length {
                Some(n) if n > 0 => State::Body(n),
                _ => State::Head,
            }
        };
        self.reset_head();
        self.state = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`HeadScanner::feed`] with the head read one byte at a time by the model.
    fn feed_model(s: &mut HeadScanner, bytes: &[u8], verdict: &FramingVerdict) {
        for &b in bytes {
            match s.state {
                State::Off => return,
                State::Head => {
                    if let Err(reason) = s.head_byte(b) {
                        verdict.set(reason);
                        s.state = State::Off;
                        return;
                    }
                }
                _ => s.feed(&[b], verdict),
            }
        }
    }

    proptest::proptest! {
        /// The line-at-a-time scanner agrees with the byte-at-a-time model on any bytes cut
        /// into any reads: the same verdict and the same state after every read.
        #[test]
        fn line_scanner_matches_the_byte_model(
            parts in proptest::collection::vec(
                proptest::collection::vec(proptest::prop_oneof![
                    4 => proptest::sample::select(b"GETPOST /a HTTP/1.1Host:ContentLengthTransferEncodingchunked0123456789abcdef; ".to_vec()),
                    1 => proptest::sample::select(b"\r\n\0\t :".to_vec()),
                    1 => proptest::strategy::Just(b'\r'),
                    1 => proptest::strategy::Just(b'\n'),
                ], 0..40),
                0..12),
            heads in proptest::collection::vec(proptest::sample::select(vec![
                &b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"[..],
                &b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x\r\nabc\r\n0\r\nT: 1\r\n\r\n"[..],
                &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
                &b"\r\n"[..],
            ]), 0..4),
            cuts in proptest::collection::vec(0usize..400, 0..8),
        ) {
            let mut bytes = Vec::new();
            for (i, p) in parts.iter().enumerate() {
                if let Some(h) = heads.get(i) {
                    bytes.extend_from_slice(h);
                }
                bytes.extend_from_slice(p);
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.push(bytes.len());
            cuts.sort_unstable();
            let (fast_v, model_v) = (FramingVerdict::default(), FramingVerdict::default());
            let (mut fast, mut model) = (HeadScanner::default(), HeadScanner::default());
            let mut from = 0;
            for to in cuts {
                fast.feed(&bytes[from..to], &fast_v);
                feed_model(&mut model, &bytes[from..to], &model_v);
                from = to;
                proptest::prop_assert_eq!(fast_v.violation(), model_v.violation());
                proptest::prop_assert_eq!(fast.state, model.state);
            }
        }
    }

    #[test]
    fn long_lines_are_carried_across_reads() {
        let mut raw = b"GET / HTTP/1.1\r\nX-Long: ".to_vec();
        raw.extend(std::iter::repeat_n(b'a', MAX_LINE + 10));
        raw.extend_from_slice(b"\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n");
        // The over-long line stops the scanner (hyper refuses such heads itself).
        let v = FramingVerdict::default();
        let mut s = HeadScanner::default();
        for c in raw.chunks(1000) {
            s.feed(c, &v);
        }
        assert_eq!((v.violation(), s.active()), (None, false));
        // A line split across reads is read whole.
        assert_eq!(
            scan(&[
                b"GET / HTTP/1.1\r\nContent-Le",
                b"ngth: 1\r",
                b"\nContent-Length: 1\r\n\r\n"
            ]),
            Some("bad_content_length")
        );
    }

    fn scan(chunks: &[&[u8]]) -> Option<&'static str> {
        let v = FramingVerdict::default();
        let mut s = HeadScanner::default();
        for c in chunks {
            s.feed(c, &v);
        }
        v.violation()
    }

    #[test]
    fn clean_keep_alive_traffic_passes() {
        let two = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(scan(&[two]), None);
        let chunked = b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nX-T: 1\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(scan(&[chunked]), None);
        // Byte by byte is the same.
        let bytes: Vec<&[u8]> = chunked.chunks(1).collect();
        assert_eq!(scan(&bytes), None);
        assert_eq!(
            scan(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\n\r"]),
            None
        );
    }

    #[test]
    fn each_shape_is_caught() {
        let cases: [(&[u8], &str); 9] = [
            (b"POST / HTTP/1.1\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n", "content_length_with_transfer_encoding"),
            (b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", "bad_content_length"),
            (b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n", "bad_content_length"),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", "bad_transfer_encoding"),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", "bad_transfer_encoding"),
            (b"GET / HTTP/1.1\nHost: a\r\n\r\n", "bare_lf"),
            (b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", "bare_cr"),
            (b"GET / HTTP/1.1\r\nHost: a\x00\r\n\r\n", "nul_in_head"),
            (b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", "obs_fold"),
        ];
        for (raw, want) in cases {
            assert_eq!(scan(&[raw]), Some(want), "{}", String::from_utf8_lossy(raw));
        }
        // A smuggled second request inside a body that hyper reads by its length.
        let smuggled =
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcdGET / HTTP/1.1\nX: 1\r\n\r\n";
        assert_eq!(scan(&[smuggled]), Some("bare_lf"));
    }
}

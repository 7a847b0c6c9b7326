//! The HTTP/1.1 upstream exchange (pipeline stage 11): one request out, one response back, on
//! a pooled keep-alive connection that the request owns while it runs.
//!
//! Why not hyper's client here: a gateway's upstream connection carries exactly one exchange
//! at a time, and hyper's client connection runs it through a dispatcher (a request channel,
//! a response channel, a body channel and their wake-ups) built for a connection shared by a
//! task. That plumbing cost 1.5 µs of the gateway's 21.3 µs of CPU per proxied request.
//! Here the request writes its head, reads the answer's head with `httparse` (the parser hyper
//! uses) and, when the whole answer is already in the buffer (the common small JSON reply),
//! hands the connection back to the pool before the response even leaves the stage.
//!
//! Framing is strict, because a pooled connection that is misread would hand one caller's
//! answer to the next (RFC 9112 §6.3):
//! - no body for `HEAD`, `1xx`, `204` and `304`;
//! - `Transfer-Encoding` whose last coding is `chunked`: chunked; any other coding: read to
//!   the close; with `Content-Length` as well, `Content-Length` is dropped and the connection
//!   is not reused; `Transfer-Encoding` in an HTTP/1.0 answer is refused;
//! - `Content-Length`: every value must be the same decimal number;
//! - neither: read to the close;
//! - a connection is reused only for HTTP/1.1 without `Connection: close`, after the whole
//!   answer was read and nothing but it arrived (any byte past its end retires the
//!   connection), and after the whole request was sent.
//!
//! Heads are capped ([`MAX_HEAD_BYTES`], [`MAX_HEADERS`]), chunk-size lines and trailers too;
//! trailers are read and dropped. `1xx` interim answers are skipped (`101` is refused: the
//! gateway does not tunnel upgrades). A request body streams with backpressure, with
//! `Content-Length` when its size is known and chunked otherwise; an answer that arrives
//! before the body is sent ends the upload and retires the connection.

use std::future::poll_fn;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::Body;

/// The most bytes an answer's head may take.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The most header fields an answer's head may carry.
pub const MAX_HEADERS: usize = 100;
/// The longest chunk-size line (with its extensions).
const MAX_CHUNK_LINE: usize = 4096;
/// The most bytes of trailers after the last chunk.
const MAX_TRAILERS: usize = 16 * 1024;
/// How much room a read asks for.
const READ_CHUNK: usize = 16 * 1024;

/// What went wrong in an exchange. Detail for logs only.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the connection failed.
    #[error("upstream i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The upstream closed the connection before its answer was complete.
    #[error("upstream closed the connection before the answer was complete")]
    Closed,
    /// The upstream's answer breaks HTTP/1.1.
    #[error("malformed upstream answer: {0}")]
    Malformed(&'static str),
    /// The request body failed (the client went away, or a stage refused it mid-stream).
    #[error("request body: {0}")]
    Body(crate::BodyError),
    /// The upstream sent no body bytes for this long.
    #[error("upstream sent no body bytes for {0:?}")]
    Stalled(std::time::Duration),
}

/// How an answer's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// `Content-Length`: this many bytes left.
    Length(u64),
    /// Chunked, in this state.
    Chunked(Chunk),
    /// Until the upstream closes.
    Close,
}

/// Where the chunked decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk: this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk.
    DataEnd,
    /// After the last chunk: trailer lines (this many bytes so far) up to an empty line.
    Trailers(usize),
    /// Finished.
    Done,
}

/// One upstream connection: the stream, what was read from it and not yet used, and the
/// buffer its next request head is written into.
pub struct Conn<IO> {
    io: IO,
    buf: BytesMut,
    /// The encoded request head (kept for a retry on a fresh connection).
    head: Vec<u8>,
    /// The request body's length as the head announced it; `None`: chunked.
    length: Option<u64>,
}

/// The answer's head, and how to read the rest.
pub struct Answer {
    /// Status, version and headers.
    pub response: Response<()>,
    /// How the body is delimited.
    pub framing: Framing,
    /// Whether the connection may carry another exchange once this one is done.
    pub reusable: bool,
}

/// Why an exchange failed, and whether it may be tried again on a fresh connection.
#[derive(Debug)]
pub struct Failure {
    /// What went wrong.
    pub error: Error,
    /// Nothing of the answer arrived and the upstream cannot have acted on the request: its
    /// head was never completely written and no body byte was taken, or it was a bodiless
    /// safe request (`GET`, `HEAD`, `OPTIONS`) on a connection the upstream closed.
    pub retryable: bool,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Conn<IO> {
    /// Wraps a connected stream.
    pub fn new(io: IO) -> Self {
        Self {
            io,
            buf: BytesMut::with_capacity(READ_CHUNK),
            head: Vec::with_capacity(512),
            length: None,
        }
    }

    /// Encodes the head of the request `parts` (with `body`) for the next exchange.
    pub fn prepare(&mut self, parts: &http::request::Parts, body: &Body) {
        self.length = encode_head(&mut self.head, parts, body);
    }

    /// Takes over the request `other` prepared (to retry it here).
    pub fn take_request(&mut self, other: &mut Self) {
        std::mem::swap(&mut self.head, &mut other.head);
        self.length = other.length;
    }

    /// Whether an idle connection can carry a request: the upstream has not closed it and
    /// sent nothing unasked. Never waits; call it outside tokio's cooperative budget
    /// (`tokio::task::unconstrained`), which would otherwise make every read look pending.
    pub fn is_usable(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        let mut rb = tokio::io::ReadBuf::new(&mut probe);
        // Pending: nothing to read, the connection is open and quiet.
        matches!(Pin::new(&mut self.io).poll_read(cx, &mut rb), Poll::Pending)
    }

    /// Writes the head in `self.head`, then the body, then reads the answer's head.
    pub async fn exchange(&mut self, body: &mut Body, method: &Method) -> Result<Answer, Failure> {
        let mut wrote_head = false;
        let mut took_body = false;
        let result = self
            .exchange_inner(body, method, &mut wrote_head, &mut took_body)
            .await;
        result.map_err(|error| {
            let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
            let nothing_back = self.buf.is_empty();
            let retryable = nothing_back
                && !took_body
                && (!wrote_head
                    || (safe
                        && body.is_end_stream()
                        && matches!(&error, Error::Closed | Error::Io(_))));
            Failure { error, retryable }
        })
    }

    async fn exchange_inner(
        &mut self,
        body: &mut Body,
        method: &Method,
        wrote_head: &mut bool,
        took_body: &mut bool,
    ) -> Result<Answer, Error> {
        let mut up = Upload {
            left: self.length,
            finished: body.is_end_stream(),
            out: None,
        };
        // What the body has ready goes out with the head, in one write (as hyper's client
        // does): an upstream that answers as soon as it has the head would otherwise see half
        // a request, and say `Connection: close`.
        if !up.finished
            && let Poll::Ready(frame) =
                poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await
            && let Some(bytes) = up.take(frame, body.is_end_stream(), took_body)?
        {
            if bytes.len() <= COALESCE {
                self.head.extend_from_slice(&bytes);
            } else {
                up.out = Some(bytes);
            }
        }
        let mut sent = 0;
        poll_fn(|cx| {
            while sent < self.head.len() {
                let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.head[sent..]))?;
                if n == 0 {
                    return Poll::Ready(Err(Error::Io(std::io::ErrorKind::WriteZero.into())));
                }
                sent += n;
            }
            Poll::Ready(Ok(()))
        })
        .await?;
        *wrote_head = true;
        let early = if up.finished && up.out.is_none() {
            None
        } else {
            // Boxed: a body still streaming is the rarer case; its state stays out of every
            // request's future.
            Box::pin(self.send_body(body, &mut up, method, took_body)).await?
        };
        poll_fn(|cx| Pin::new(&mut self.io).poll_flush(cx)).await?;
        match early {
            Some(a) => Ok(a),
            None => self.read_head(method).await,
        }
    }

    /// Streams the rest of the body; returns an answer that arrived before it was all sent.
    async fn send_body(
        &mut self,
        body: &mut Body,
        up: &mut Upload,
        method: &Method,
        took_body: &mut bool,
    ) -> Result<Option<Answer>, Error> {
        // An answer that came before the body was all sent (say, 413 before a large upload
        // is through). What the body can still give without waiting is sent, so that a prompt
        // answer racing the body's last poll keeps its connection; otherwise the upload stops
        // there and the connection is retired.
        let mut early: Option<Answer> = None;
        poll_fn(|cx| {
            loop {
                if up.finished && up.out.is_none() {
                    return Poll::Ready(Ok(early.take()));
                }
                if early.is_none()
                    && let Poll::Ready(r) = self.poll_fill(cx)
                {
                    if r? == 0 {
                        return Poll::Ready(Err(Error::Closed));
                    }
                    early = parse_head(&mut self.buf, method)?;
                    continue;
                }
                if let Some(chunk) = up.out.as_mut() {
                    let n = match Pin::new(&mut self.io).poll_write(cx, chunk) {
                        Poll::Ready(r) => r?,
                        Poll::Pending => return retire(&mut early),
                    };
                    if n == 0 {
                        return Poll::Ready(Err(Error::Io(std::io::ErrorKind::WriteZero.into())));
                    }
                    chunk.advance(n);
                    if chunk.is_empty() {
                        up.out = None;
                    }
                    continue;
                }
                let frame = match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Ready(f) => f,
                    Poll::Pending => return retire(&mut early),
                };
                up.out = up.take(frame, body.is_end_stream(), took_body)?;
            }
        })
        .await
    }

    /// Reads until a final (non-1xx) answer head is parsed.
    async fn read_head(&mut self, method: &Method) -> Result<Answer, Error> {
        poll_fn(|cx| {
            loop {
                if !self.buf.is_empty()
                    && let Some(a) = parse_head(&mut self.buf, method)?
                {
                    return Poll::Ready(Ok(a));
                }
                if self.buf.len() >= MAX_HEAD_BYTES {
                    return Poll::Ready(Err(Error::Malformed("head too large")));
                }
                if ready!(self.poll_fill(cx))? == 0 {
                    return Poll::Ready(Err(Error::Closed));
                }
            }
        })
        .await
    }

    /// Reads more into the buffer; `Ok(0)` is the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// The next piece of the body under `framing`, reading as needed. `Ok(None)`: the body is
    /// complete.
    pub fn poll_body(
        &mut self,
        cx: &mut Context<'_>,
        framing: &mut Framing,
    ) -> Poll<Result<Option<Bytes>, Error>> {
        loop {
            if !self.buf.is_empty() || matches!(framing, Framing::Empty | Framing::Length(0)) {
                match decode(framing, &mut self.buf)? {
                    Decoded::Data(d) => return Poll::Ready(Ok(Some(d))),
                    Decoded::End => return Poll::Ready(Ok(None)),
                    Decoded::More => {}
                }
            }
            if ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(match framing {
                    Framing::Close => {
                        *framing = Framing::Empty;
                        Ok(None)
                    }
                    _ => Err(Error::Closed),
                });
            }
        }
    }

    /// The whole body when it is already in the buffer (and then the connection is free).
    pub fn take_buffered_body(&mut self, framing: Framing) -> Option<Bytes> {
        match framing {
            Framing::Empty => Some(Bytes::new()),
            Framing::Length(n) if (self.buf.len() as u64) >= n => {
                // A copy, so the read buffer stays unshared and is reused as is.
                let body = Bytes::copy_from_slice(&self.buf[..n as usize]);
                self.buf.advance(n as usize);
                Some(body)
            }
            _ => None,
        }
    }

    /// Whether nothing but the finished answer arrived.
    pub fn is_clean(&self) -> bool {
        self.buf.is_empty()
    }
}

/// The most body bytes copied into the head's write.
const COALESCE: usize = 16 * 1024;

/// Where the sending of a request body stands.
struct Upload {
    /// Bytes still owed under `Content-Length`; `None`: chunked.
    left: Option<u64>,
    /// The body has ended (and its end is in `out` or sent).
    finished: bool,
    /// Wire bytes not yet written.
    out: Option<Bytes>,
}

impl Upload {
    /// The wire bytes for what the body gave (`None`: nothing to write). `body_end`: the body
    /// says it has nothing more.
    fn take(
        &mut self,
        frame: Option<Result<Frame<Bytes>, crate::BodyError>>,
        body_end: bool,
        took_body: &mut bool,
    ) -> Result<Option<Bytes>, Error> {
        let data = match frame {
            None => {
                self.finished = true;
                return match self.left {
                    Some(0) => Ok(None),
                    Some(_) => Err(Error::Body(crate::BodyError(
                        "request body ended before its content-length".into(),
                    ))),
                    None => Ok(Some(Bytes::from_static(b"0\r\n\r\n"))),
                };
            }
            Some(Err(e)) => return Err(Error::Body(e)),
            Some(Ok(frame)) => {
                *took_body = true;
                // Trailers of a request are dropped.
                match frame.into_data() {
                    Ok(d) if !d.is_empty() => d,
                    _ => return Ok(None),
                }
            }
        };
        match self.left.as_mut() {
            Some(l) => {
                let n = data.len() as u64;
                if n > *l {
                    return Err(Error::Body(crate::BodyError(
                        "request body longer than its content-length".into(),
                    )));
                }
                *l -= n;
                // Done once the announced bytes are out, without waiting for the body to say
                // so with one more poll (which could make a prompt answer look early).
                self.finished = *l == 0;
                Ok(Some(data))
            }
            None => {
                let mut c = BytesMut::with_capacity(data.len() + 32);
                let _ = std::fmt::Write::write_fmt(&mut c, format_args!("{:x}\r\n", data.len()));
                c.extend_from_slice(&data);
                c.extend_from_slice(b"\r\n");
                if body_end {
                    c.extend_from_slice(b"0\r\n\r\n");
                    self.finished = true;
                }
                Ok(Some(c.freeze()))
            }
        }
    }
}

/// Pending, unless an early answer is waiting: then that answer, on a connection that is
/// not reused (the rest of the request body is never sent).
fn retire(early: &mut Option<Answer>) -> Poll<Result<Option<Answer>, Error>> {
    match early.take() {
        Some(mut a) => {
            a.reusable = false;
            Poll::Ready(Ok(Some(a)))
        }
        None => Poll::Pending,
    }
}

/// Writes a request head for `parts` into `out`: request line, the headers except
/// `Content-Length` and `Transfer-Encoding`, then the body's framing: its `Content-Length`
/// (the client's, when valid, as hyper's client does; else the body's exact size), or chunked.
/// Returns the announced length (`None`: chunked).
fn encode_head(out: &mut Vec<u8>, parts: &http::request::Parts, body: &Body) -> Option<u64> {
    out.clear();
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(if pq.is_empty() { b"/" } else { pq.as_bytes() });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut declared = None;
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH {
            declared = parse_length(value.as_bytes()).ok();
            continue;
        }
        if name == header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let length = if body.is_end_stream() {
        (declared.is_some() || matches!(parts.method, Method::POST | Method::PUT | Method::PATCH))
            .then_some(0)
    } else {
        declared.or_else(|| body.size_hint().exact())
    };
    match length {
        Some(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa_u64(n, &mut [0u8; 20]));
            out.extend_from_slice(b"\r\n");
        }
        None if body.is_end_stream() => {}
        None => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
    if body.is_end_stream() {
        Some(0)
    } else {
        length
    }
}

fn itoa_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Parses one answer head from the front of `buf`, consuming it. `None`: incomplete, or an
/// interim `1xx` answer that was skipped (call again).
fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<Answer>, Error> {
    loop {
        let mut slots: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS] =
            [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut res, buf, &mut slots)
        {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Error::Malformed("too many header fields"));
            }
            Err(_) => return Err(Error::Malformed("unparsable head")),
        };
        let code = res.code.unwrap_or(0);
        let version = if res.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        if (100..200).contains(&code) {
            if code == 101 {
                return Err(Error::Malformed(
                    "101 switching protocols (upgrades are not tunnelled)",
                ));
            }
            buf.advance(len);
            if buf.is_empty() {
                return Ok(None);
            }
            continue;
        }
        let status =
            StatusCode::from_u16(code).map_err(|_| Error::Malformed("status code out of range"))?;
        let base = buf.as_ptr() as usize;
        // Offsets into the head, so the values can be sliced from one copy of it.
        let mut spans: smallvec::SmallVec<[(HeaderName, usize, usize); 16]> =
            smallvec::SmallVec::with_capacity(res.headers.len());
        for h in res.headers.iter() {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| Error::Malformed("invalid header name"))?;
            let start = h.value.as_ptr() as usize - base;
            spans.push((name, start, start + h.value.len()));
        }
        let head = Bytes::copy_from_slice(&buf[..len]);
        buf.advance(len);
        let mut headers = HeaderMap::with_capacity(spans.len());
        let mut length: Option<u64> = None;
        let mut chunked = None;
        let mut close = version == Version::HTTP_10;
        for (name, start, end) in spans {
            let value = HeaderValue::from_maybe_shared(head.slice(start..end))
                .map_err(|_| Error::Malformed("invalid header value"))?;
            if name == header::CONTENT_LENGTH {
                let n = parse_length(value.as_bytes())?;
                if length.is_some_and(|l| l != n) {
                    return Err(Error::Malformed("conflicting content-length values"));
                }
                length = Some(n);
            } else if name == header::TRANSFER_ENCODING {
                // The last coding of the last field decides.
                let last = value
                    .as_bytes()
                    .rsplit(|b| *b == b',')
                    .next()
                    .unwrap_or_default()
                    .trim_ascii();
                chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
            } else if name == header::CONNECTION
                && value
                    .as_bytes()
                    .split(|b| *b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
            {
                close = true;
            }
            headers.append(name, value);
        }
        let bodiless = *method == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let mut reusable = !close;
        let framing = if bodiless {
            Framing::Empty
        } else if let Some(chunked) = chunked {
            if version == Version::HTTP_10 {
                return Err(Error::Malformed("transfer-encoding in an HTTP/1.0 answer"));
            }
            if length.is_some() {
                // Both: Transfer-Encoding wins, and a connection that said both is retired.
                headers.remove(header::CONTENT_LENGTH);
                reusable = false;
            }
            if chunked {
                Framing::Chunked(Chunk::Size)
            } else {
                reusable = false;
                Framing::Close
            }
        } else if let Some(n) = length {
            Framing::Length(n)
        } else {
            reusable = false;
            Framing::Close
        };
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        return Ok(Some(Answer {
            response,
            framing,
            reusable,
        }));
    }
}

fn parse_length(v: &[u8]) -> Result<u64, Error> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(Error::Malformed("invalid content-length"));
    }
    Ok(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

enum Decoded {
    Data(Bytes),
    More,
    End,
}

/// Takes what `framing` allows from `buf`.
fn decode(framing: &mut Framing, buf: &mut BytesMut) -> Result<Decoded, Error> {
    match framing {
        Framing::Empty | Framing::Length(0) => {
            *framing = Framing::Empty;
            Ok(Decoded::End)
        }
        Framing::Length(left) => {
            let n = (*left).min(buf.len() as u64) as usize;
            *left -= n as u64;
            Ok(Decoded::Data(buf.split_to(n).freeze()))
        }
        Framing::Close => Ok(Decoded::Data(buf.split().freeze())),
        Framing::Chunked(state) => decode_chunked(state, buf),
    }
}

fn decode_chunked(state: &mut Chunk, buf: &mut BytesMut) -> Result<Decoded, Error> {
    loop {
        match *state {
            Chunk::Size => {
                let Some(eol) = memchr::memchr(b'\n', &buf[..buf.len().min(MAX_CHUNK_LINE)]) else {
                    if buf.len() >= MAX_CHUNK_LINE {
                        return Err(Error::Malformed("chunk-size line too long"));
                    }
                    return Ok(Decoded::More);
                };
                let size = parse_chunk_size(&buf[..eol])?;
                buf.advance(eol + 1);
                *state = if size == 0 {
                    Chunk::Trailers(0)
                } else {
                    Chunk::Data(size)
                };
            }
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Ok(Decoded::More);
                }
                let n = left.min(buf.len() as u64) as usize;
                *state = if n as u64 == left {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left - n as u64)
                };
                return Ok(Decoded::Data(buf.split_to(n).freeze()));
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Decoded::More);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(Error::Malformed("chunk not followed by CRLF"));
                }
                buf.advance(2);
                *state = Chunk::Size;
            }
            Chunk::Trailers(seen) => {
                let Some(eol) = memchr::memchr(b'\n', buf) else {
                    if seen + buf.len() > MAX_TRAILERS {
                        return Err(Error::Malformed("trailers too long"));
                    }
                    return Ok(Decoded::More);
                };
                if eol == 0 || buf[eol - 1] != b'\r' {
                    return Err(Error::Malformed("trailer line not ended by CRLF"));
                }
                if seen + eol + 1 > MAX_TRAILERS {
                    return Err(Error::Malformed("trailers too long"));
                }
                buf.advance(eol + 1);
                if eol == 1 {
                    *state = Chunk::Done;
                } else {
                    *state = Chunk::Trailers(seen + eol + 1);
                }
            }
            Chunk::Done => return Ok(Decoded::End),
        }
    }
}

/// `1*HEXDIG [ BWS ";" chunk-ext ] CR` (the LF already cut off).
fn parse_chunk_size(line: &[u8]) -> Result<u64, Error> {
    let Some((&b'\r', line)) = line.split_last() else {
        return Err(Error::Malformed("chunk-size line not ended by CRLF"));
    };
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(Error::Malformed("invalid chunk size"));
    }
    let rest = &line[digits..];
    // Whitespace before an extension (or, as hyper accepts, before the line's end).
    let ext_ok = match rest.iter().position(|b| !matches!(b, b' ' | b'\t')) {
        None => true,
        Some(i) => rest[i] == b';' && !rest.iter().any(|b| b.is_ascii_control() && *b != b'\t'),
    };
    if !ext_ok {
        return Err(Error::Malformed("invalid chunk extension"));
    }
    let mut n = 0u64;
    for d in &line[..digits] {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => d - b'A' + 10,
        };
        n = (n << 4) | u64::from(v);
    }
    Ok(n)
}

/// The body of an answer that was not wholly in the buffer: reads it from the connection and,
/// at its end, hands the connection to `done`. An upstream that sends nothing for `idle` ends
/// it with [`Error::Stalled`] (and the connection is closed).
pub struct StreamedBody<IO, F: FnOnce(Conn<IO>)> {
    conn: Option<Conn<IO>>,
    framing: Framing,
    reusable: bool,
    done: Option<F>,
    idle: std::time::Duration,
    /// Armed while waiting for the upstream; dropped whenever bytes arrive.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<IO, F: FnOnce(Conn<IO>)> StreamedBody<IO, F> {
    /// Reads the rest of an answer framed by `framing` from `conn`, allowing `idle` between
    /// reads.
    pub fn new(
        conn: Conn<IO>,
        framing: Framing,
        reusable: bool,
        idle: std::time::Duration,
        done: F,
    ) -> Self {
        Self {
            conn: Some(conn),
            framing,
            reusable,
            done: Some(done),
            idle,
            stall: None,
        }
    }
}

impl<IO, F> HttpBody for StreamedBody<IO, F>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(Conn<IO>) + Unpin,
{
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            let polled = match conn.poll_body(cx, &mut this.framing) {
                Poll::Ready(r) => r,
                Poll::Pending => {
                    let idle = this.idle;
                    let stall = this
                        .stall
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                    if stall.as_mut().poll(cx).is_ready() {
                        this.conn = None;
                        this.stall = None;
                        return Poll::Ready(Some(Err(Error::Stalled(idle))));
                    }
                    return Poll::Pending;
                }
            };
            this.stall = None;
            match polled {
                Ok(Some(d)) if d.is_empty() => {}
                Ok(Some(d)) => {
                    if this.is_end_stream() {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Ok(None) => {
                    this.framing = Framing::Empty;
                    this.finish();
                    return Poll::Ready(None);
                }
                Err(e) => {
                    // A connection whose answer broke off is never reused.
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(
            self.framing,
            Framing::Empty | Framing::Length(0) | Framing::Chunked(Chunk::Done)
        ) || self.conn.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Empty => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin, F: FnOnce(Conn<IO>)> StreamedBody<IO, F> {
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take()
            && self.reusable
            && conn.is_clean()
            && let Some(done) = self.done.take()
        {
            done(conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A body of `frames` with no known length (so it is sent chunked), or one that never
    /// gives anything (`frames` empty and `stall`).
    struct Frames {
        frames: Vec<Bytes>,
        stall: bool,
    }

    impl HttpBody for Frames {
        type Data = Bytes;
        type Error = crate::BodyError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, crate::BodyError>>> {
            if self.stall {
                return Poll::Pending;
            }
            if self.frames.is_empty() {
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Ok(Frame::data(self.frames.remove(0)))))
        }
    }

    /// An upstream that reads one request (head and, with `wait_body`, `content-length` or a
    /// chunked body up to its end), answers `answer`, and hands back what it read.
    async fn upstream(
        answer: &'static [u8],
        wait_body: bool,
        close: bool,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut got = Vec::new();
            let mut b = [0u8; 4096];
            loop {
                let n = s.read(&mut b).await.unwrap();
                got.extend_from_slice(&b[..n]);
                let text = String::from_utf8_lossy(&got).to_string();
                let Some(end) = text.find("\r\n\r\n") else {
                    continue;
                };
                if !wait_body || n == 0 {
                    break;
                }
                let head = text[..end].to_ascii_lowercase();
                if let Some(cl) = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                {
                    if got.len() >= end + 4 + cl.trim().parse::<usize>().unwrap() {
                        break;
                    }
                } else if text.ends_with("0\r\n\r\n") {
                    break;
                }
            }
            s.write_all(answer).await.unwrap();
            if close {
                s.shutdown().await.unwrap();
            } else {
                // Holds the connection open until the test aborts the task.
                std::future::pending::<()>().await;
            }
            got
        });
        (addr, task)
    }

    fn request(method: Method, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder()
            .method(method)
            .uri("/v1/accounts/acc-1?x=1");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    async fn exchange(
        answer: &'static [u8],
        method: Method,
        mut body: Body,
        headers: &[(&str, &str)],
    ) -> (Result<Answer, Failure>, Conn<TcpStream>, Vec<u8>) {
        let wait_body = !body.is_end_stream();
        let (addr, task) = upstream(answer, wait_body, true).await;
        let mut conn = Conn::new(TcpStream::connect(addr).await.unwrap());
        let parts = request(method, headers);
        conn.prepare(&parts, &body);
        let r = conn.exchange(&mut body, &parts.method).await;
        let got = task.await.unwrap();
        (r, conn, got)
    }

    async fn read_body(conn: Conn<TcpStream>, a: &Answer) -> Result<(Bytes, bool), Error> {
        let reused = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = reused.clone();
        let body = StreamedBody::new(
            conn,
            a.framing,
            a.reusable,
            Duration::from_secs(5),
            move |_c| {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
            },
        );
        let bytes = body.collect().await?.to_bytes();
        Ok((bytes, reused.load(std::sync::atomic::Ordering::SeqCst)))
    }

    fn malformed(r: Result<Answer, Failure>) -> String {
        match r {
            Err(Failure {
                error: Error::Malformed(m),
                retryable: false,
            }) => m.to_string(),
            Err(f) => panic!("not a malformed answer: {f:?}"),
            Ok(a) => panic!("accepted: {:?}", a.response),
        }
    }

    #[tokio::test]
    async fn a_sized_answer_in_one_read_is_taken_whole_and_the_connection_is_reusable() {
        let (r, mut conn, got) = exchange(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nx-a: 1\r\nx-a: 2\r\n\r\n{}",
            Method::GET,
            crate::empty(),
            &[("host", "backend"), ("x-request-id", "r1")],
        )
        .await;
        let a = r.unwrap();
        assert_eq!(a.response.status(), 200);
        assert_eq!(a.response.headers()["content-type"], "application/json");
        let all: Vec<_> = a.response.headers().get_all("x-a").iter().collect();
        assert_eq!(all, ["1", "2"]);
        assert!(a.reusable);
        assert_eq!(conn.take_buffered_body(a.framing).unwrap(), "{}");
        assert!(conn.is_clean());
        let req = String::from_utf8(got).unwrap();
        assert_eq!(
            req,
            "GET /v1/accounts/acc-1?x=1 HTTP/1.1\r\nhost: backend\r\nx-request-id: r1\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn a_chunked_answer_with_extensions_and_trailers_is_decoded() {
        let (r, conn, _) = exchange(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5;ext=\"a b\"\r\nhello\r\n6 \r\n world\r\n0\r\nx-checksum: 1\r\n\r\n",
            Method::GET,
            crate::empty(),
            &[],
        )
        .await;
        let a = r.unwrap();
        assert_eq!(a.framing, Framing::Chunked(Chunk::Size));
        let (body, reused) = read_body(conn, &a).await.unwrap();
        assert_eq!(body, "hello world");
        assert!(
            reused,
            "a cleanly ended chunked answer frees its connection"
        );
    }

    #[tokio::test]
    async fn content_length_beside_transfer_encoding_is_dropped_and_the_connection_retired() {
        let (r, conn, _) = exchange(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            Method::GET,
            crate::empty(),
            &[],
        )
        .await;
        let a = r.unwrap();
        assert!(!a.reusable);
        assert!(a.response.headers().get("content-length").is_none());
        let (body, reused) = read_body(conn, &a).await.unwrap();
        assert_eq!(body, "ok");
        assert!(!reused);
    }

    #[tokio::test]
    async fn ambiguous_or_broken_framing_is_refused() {
        for (answer, why) in [
            (
                &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok"[..],
                "conflicting content-length values",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok",
                "invalid content-length",
            ),
            (
                b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
                "transfer-encoding in an HTTP/1.0 answer",
            ),
            (
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
                "101 switching protocols (upgrades are not tunnelled)",
            ),
            (b"HTTP/1.1 2000 OK\r\n\r\n", "unparsable head"),
            (
                b"HTTP/1.1 200 OK\r\nbad header: x\r\n\r\n",
                "unparsable head",
            ),
        ] {
            let (r, _, _) = exchange(answer, Method::GET, crate::empty(), &[]).await;
            assert_eq!(malformed(r), why);
        }
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let (r, _, _) = exchange(many.leak(), Method::GET, crate::empty(), &[]).await;
        assert_eq!(malformed(r), "too many header fields");
    }

    #[tokio::test]
    async fn broken_chunks_end_the_body_with_an_error() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"[..],
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nokX\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10000000000000000\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\nok\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n",
        ] {
            let (r, conn, _) = exchange(answer, Method::GET, crate::empty(), &[]).await;
            let a = r.unwrap();
            assert!(
                read_body(conn, &a).await.is_err(),
                "{}",
                String::from_utf8_lossy(answer)
            );
        }
    }

    #[tokio::test]
    async fn bytes_past_the_answer_retire_the_connection() {
        let (r, mut conn, _) = exchange(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n",
            Method::GET,
            crate::empty(),
            &[],
        )
        .await;
        let a = r.unwrap();
        assert_eq!(conn.take_buffered_body(a.framing).unwrap(), "ok");
        assert!(!conn.is_clean());
    }

    #[tokio::test]
    async fn interim_answers_are_skipped() {
        let (r, mut conn, _) = exchange(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n",
            Method::POST,
            crate::full("{}"),
            &[("content-length", "2")],
        )
        .await;
        let a = r.unwrap();
        assert_eq!(a.response.status(), 201);
        assert!(a.response.headers().get("link").is_none());
        assert_eq!(conn.take_buffered_body(a.framing).unwrap(), "");
    }

    #[tokio::test]
    async fn head_204_and_304_answers_have_no_body() {
        for (method, answer) in [
            (
                Method::HEAD,
                &b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"[..],
            ),
            (Method::GET, b"HTTP/1.1 204 No Content\r\n\r\n"),
            (
                Method::GET,
                b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n",
            ),
        ] {
            let (r, conn, _) = exchange(answer, method, crate::empty(), &[]).await;
            let a = r.unwrap();
            assert_eq!(a.framing, Framing::Empty);
            assert!(a.reusable);
            assert!(conn.is_clean());
        }
    }

    #[tokio::test]
    async fn an_answer_without_length_is_read_to_the_close_and_http10_is_not_reused() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\n\r\nuntil the end"[..],
            b"HTTP/1.0 200 OK\r\n\r\nuntil the end",
        ] {
            let (r, conn, _) = exchange(answer, Method::GET, crate::empty(), &[]).await;
            let a = r.unwrap();
            assert_eq!(a.framing, Framing::Close);
            assert!(!a.reusable);
            let (body, reused) = read_body(conn, &a).await.unwrap();
            assert_eq!(body, "until the end");
            assert!(!reused);
        }
        let (r, _, _) = exchange(
            b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
            Method::GET,
            crate::empty(),
            &[],
        )
        .await;
        assert!(!r.unwrap().reusable);
    }

    #[tokio::test]
    async fn request_bodies_go_with_their_length_or_chunked_and_clients_framing_headers_never_pass()
    {
        let (r, _, got) = exchange(
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            Method::POST,
            crate::full("{\"a\":1}"),
            &[("content-length", "7"), ("transfer-encoding", "chunked")],
        )
        .await;
        assert!(r.unwrap().reusable);
        assert_eq!(
            String::from_utf8(got).unwrap(),
            "POST /v1/accounts/acc-1?x=1 HTTP/1.1\r\ncontent-length: 7\r\n\r\n{\"a\":1}"
        );
        let body = crate::boxed(Frames {
            frames: vec![Bytes::from_static(b"hello "), Bytes::from_static(b"world")],
            stall: false,
        });
        let (r, _, got) = exchange(
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            Method::PUT,
            body,
            &[],
        )
        .await;
        assert!(r.unwrap().reusable);
        assert_eq!(
            String::from_utf8(got).unwrap(),
            "PUT /v1/accounts/acc-1?x=1 HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"
        );
        // An empty POST says so.
        let (_, _, got) = exchange(
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            Method::POST,
            crate::empty(),
            &[],
        )
        .await;
        assert!(
            String::from_utf8(got)
                .unwrap()
                .ends_with("content-length: 0\r\n\r\n")
        );
    }

    #[tokio::test]
    async fn an_early_answer_ends_the_upload_and_retires_the_connection() {
        let (addr, task) = upstream(
            b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 0\r\n\r\n",
            false,
            false,
        )
        .await;
        let mut conn = Conn::new(TcpStream::connect(addr).await.unwrap());
        let mut body = crate::boxed(Frames {
            frames: Vec::new(),
            stall: true,
        });
        let parts = request(Method::POST, &[]);
        conn.prepare(&parts, &body);
        let a = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            conn.exchange(&mut body, &parts.method),
        )
        .await
        .expect("the early answer is taken while the body is still pending")
        .unwrap();
        assert_eq!(a.response.status(), 413);
        assert!(!a.reusable);
        task.abort();
    }

    #[tokio::test]
    async fn an_idle_connection_the_upstream_closed_is_not_usable_and_its_safe_request_is_retryable()
     {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        // Closes its first connection at once, the others once a request head is in.
        let server = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            drop(s);
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let mut got = Vec::new();
                let mut b = [0u8; 1024];
                while !got.ends_with(b"\r\n\r\n") {
                    let n = s.read(&mut b).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&b[..n]);
                }
            }
        });
        let mut conn = Conn::new(TcpStream::connect(addr).await.unwrap());
        // The upstream's close has arrived once the socket turns readable.
        conn.io.readable().await.unwrap();
        let usable = std::future::poll_fn(|cx| Poll::Ready(conn.is_usable(cx))).await;
        assert!(!usable, "closed by the upstream");
        let mut live = Conn::new(TcpStream::connect(addr).await.unwrap());
        let usable = std::future::poll_fn(|cx| Poll::Ready(live.is_usable(cx))).await;
        assert!(usable, "open and quiet");
        drop(live);
        // Sent anyway, a GET that got nothing back may go again; a POST may not.
        for (method, retryable) in [(Method::GET, true), (Method::POST, false)] {
            let mut conn = Conn::new(TcpStream::connect(addr).await.unwrap());
            let parts = request(method.clone(), &[]);
            let mut body = crate::empty();
            conn.prepare(&parts, &body);
            let f = conn.exchange(&mut body, &method).await.err().unwrap();
            assert!(matches!(f.error, Error::Closed), "{:?}", f.error);
            assert_eq!(f.retryable, retryable, "{method}");
        }
        server.abort();
    }

    #[tokio::test]
    async fn an_upstream_that_stalls_mid_body_is_cut_after_the_idle_time() {
        let (addr, task) = upstream(
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc",
            false,
            false,
        )
        .await;
        let mut conn = Conn::new(TcpStream::connect(addr).await.unwrap());
        let mut body = crate::empty();
        let parts = request(Method::GET, &[]);
        conn.prepare(&parts, &body);
        let a = conn.exchange(&mut body, &parts.method).await.unwrap();
        assert_eq!(a.framing, Framing::Length(10));
        let streamed = StreamedBody::new(
            conn,
            a.framing,
            a.reusable,
            Duration::from_millis(100),
            |_c| panic!("a stalled connection is never reused"),
        );
        let started = std::time::Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(5), streamed.collect())
            .await
            .expect("cut, not hung");
        assert!(matches!(r, Err(Error::Stalled(_))));
        assert!(started.elapsed() < Duration::from_secs(1));
        task.abort();
    }

    /// Feeds `pieces` one after another, parsing a head, then decoding a body; returns the
    /// body bytes, or the first error.
    #[allow(clippy::type_complexity)]
    fn decode_pieces(
        pieces: &[Vec<u8>],
        method: &Method,
    ) -> Result<(Option<u16>, Vec<u8>, Option<Framing>, usize), Error> {
        let mut buf = BytesMut::new();
        let mut framing = None;
        let mut status = None;
        let mut body = Vec::new();
        for p in pieces {
            buf.extend_from_slice(p);
            if framing.is_none()
                && let Some(a) = parse_head(&mut buf, method)?
            {
                status = Some(a.response.status().as_u16());
                framing = Some(a.framing);
            }
            if let Some(f) = framing.as_mut() {
                while !buf.is_empty() || matches!(f, Framing::Empty | Framing::Length(0)) {
                    match decode(f, &mut buf)? {
                        Decoded::Data(d) => body.extend_from_slice(&d),
                        Decoded::End | Decoded::More => break,
                    }
                }
            }
        }
        Ok((status, body, framing, buf.len()))
    }

    proptest::proptest! {
        /// Any bytes, cut into any reads: the head parser and the body decoders answer (data,
        /// more, end or an error) and never panic or loop.
        #[test]
        fn any_answer_bytes_are_parsed_or_refused_without_panicking(
            pieces in proptest::collection::vec(
                proptest::collection::vec(proptest::prop_oneof![
                    6 => proptest::sample::select(b"HTTP/1.0 200 OK content-length:transfer-encoding:chunked,gzip;ext=a 0123456789abcdefABCDEF".to_vec()),
                    2 => proptest::sample::select(b"\r\n".to_vec()),
                    1 => proptest::num::u8::ANY,
                ], 0..64),
                0..16),
            head in proptest::bool::ANY,
        ) {
            let method = if head { Method::HEAD } else { Method::GET };
            let _ = decode_pieces(&pieces, &method);
        }

        /// A chunked answer with any chunk sizes, extensions and trailers, cut at any points,
        /// decodes to its body and ends with nothing left over.
        #[test]
        fn chunked_answers_decode_to_their_body_wherever_the_reads_split(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            sizes in proptest::collection::vec(1usize..90, 1..20),
            cuts in proptest::collection::vec(0usize..2000, 0..10),
            ext in proptest::bool::ANY,
            trailers in proptest::bool::ANY,
        ) {
            let mut wire = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
            let mut rest = &body[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = sizes[i % sizes.len()].min(rest.len());
                wire.extend_from_slice(format!("{n:X}{}\r\n", if ext { ";a=b" } else { "" }).as_bytes());
                wire.extend_from_slice(&rest[..n]);
                wire.extend_from_slice(b"\r\n");
                rest = &rest[n..];
                i += 1;
            }
            wire.extend_from_slice(b"0\r\n");
            if trailers {
                wire.extend_from_slice(b"x-sum: 1\r\n");
            }
            wire.extend_from_slice(b"\r\n");
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (wire.len() + 1)).collect();
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut at = 0;
            for c in cuts.into_iter().chain([wire.len()]) {
                pieces.push(wire[at..c].to_vec());
                at = c;
            }
            let (status, got, framing, left) = decode_pieces(&pieces, &Method::GET).unwrap();
            proptest::prop_assert_eq!(status, Some(200));
            proptest::prop_assert_eq!(got, body);
            proptest::prop_assert_eq!(framing, Some(Framing::Chunked(Chunk::Done)));
            proptest::prop_assert_eq!(left, 0);
        }
    }
}

//! Minimal HTTP/1.1 message parsing shared by the load generator's client and by the lab's
//! servers ([`crate::serve`]).
//!
//! Only what the two need: finding the end of a message head, the start line, and the headers
//! that decide message framing (`Content-Length`, `Transfer-Encoding`) and connection
//! persistence (`Connection`). Heads must use CRLF line endings.

/// Largest message head (start line and headers) either side accepts.
pub(crate) const MAX_HEAD: usize = 16 * 1024;

/// Longest chunk-size line accepted in a chunked body.
const MAX_CHUNK_LINE: usize = 1024;

/// The message does not follow HTTP/1.1 syntax; the text says what is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Malformed(pub(crate) &'static str);

/// Returns the length of the message head (the index just past the blank line ending it), if
/// `buf` holds a complete head. Scanning starts at `from`, so a caller reading a head in pieces
/// does not rescan what it has already searched.
pub(crate) fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.min(buf.len());
    buf[start..]
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| start + p + 4)
}

/// What the headers say about the body and the connection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Framing {
    /// `Content-Length`, if present (ignored when a transfer coding is present).
    pub(crate) content_length: Option<usize>,
    /// A `Transfer-Encoding` header is present.
    pub(crate) transfer_encoding: bool,
    /// The final transfer coding is `chunked`.
    pub(crate) chunked: bool,
    /// `Connection: close` was given.
    pub(crate) close: bool,
    /// `Connection: keep-alive` was given (only meaningful for HTTP/1.0).
    pub(crate) keep_alive: bool,
}

impl Framing {
    /// Whether the connection stays open after this message, given the minor HTTP version.
    fn persistent(&self, minor_version: u8) -> bool {
        if self.close {
            false
        } else {
            minor_version >= 1 || self.keep_alive
        }
    }
}

/// The parts of a response head the client acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ResponseHead {
    pub(crate) status: u16,
    /// The connection may carry another request after this response.
    pub(crate) persistent: bool,
    pub(crate) framing: Framing,
}

/// The parts of a request head the server acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RequestHead<'a> {
    pub(crate) method: &'a [u8],
    /// The request target as sent (path and query).
    pub(crate) target: &'a [u8],
    /// The client wants the connection kept open after the response.
    pub(crate) persistent: bool,
    pub(crate) framing: Framing,
}

/// Parses a complete response head (as delimited by [`head_end`]).
pub(crate) fn parse_response_head(head: &[u8]) -> Result<ResponseHead, Malformed> {
    let (line, headers) = split_start_line(head)?;
    // "HTTP/1.1 200 OK": version, space, three-digit status, then optionally space and reason.
    let minor = parse_version(line.get(..8).ok_or(Malformed("short status line"))?)?;
    if line.get(8) != Some(&b' ') {
        return Err(Malformed("no space after the version"));
    }
    let digits = line.get(9..12).ok_or(Malformed("short status line"))?;
    if !digits.iter().all(u8::is_ascii_digit) || !matches!(line.get(12), None | Some(b' ')) {
        return Err(Malformed("invalid status code"));
    }
    let status = digits
        .iter()
        .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    let framing = parse_headers(headers)?;
    Ok(ResponseHead {
        status,
        persistent: framing.persistent(minor),
        framing,
    })
}

/// Parses a complete request head (as delimited by [`head_end`]).
pub(crate) fn parse_request_head(head: &[u8]) -> Result<RequestHead<'_>, Malformed> {
    let (line, headers) = split_start_line(head)?;
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Malformed("request line is not METHOD TARGET VERSION"));
    };
    if method.is_empty() || !method.iter().copied().all(is_tchar) {
        return Err(Malformed("invalid method"));
    }
    if target.is_empty() || !target.iter().all(u8::is_ascii_graphic) {
        return Err(Malformed("invalid request target"));
    }
    let minor = parse_version(version)?;
    let framing = parse_headers(headers)?;
    Ok(RequestHead {
        method,
        target,
        persistent: framing.persistent(minor),
        framing,
    })
}

/// Decodes a chunked body from the start of `buf` into `out` (cleared first).
///
/// Returns `Ok(Some(consumed))` once the whole body, trailers included, is in `buf`, and
/// `Ok(None)` when more bytes are needed. The decoded body may not exceed `max` bytes.
pub(crate) fn decode_chunked(
    buf: &[u8],
    out: &mut Vec<u8>,
    max: usize,
) -> Result<Option<usize>, Malformed> {
    out.clear();
    let mut pos = 0;
    loop {
        let Some(eol) = find_crlf(&buf[pos..], MAX_CHUNK_LINE)? else {
            return Ok(None);
        };
        let line = &buf[pos..pos + eol];
        pos += eol + 2;
        let size_field = line.split(|&b| b == b';').next().unwrap_or_default();
        let size = parse_hex(trim(size_field)).ok_or(Malformed("invalid chunk size"))?;
        if size == 0 {
            // Trailer fields, then the blank line that ends the message.
            loop {
                let Some(eol) = find_crlf(&buf[pos..], MAX_HEAD)? else {
                    return Ok(None);
                };
                pos += eol + 2;
                if eol == 0 {
                    return Ok(Some(pos));
                }
            }
        }
        if size > max.saturating_sub(out.len()) {
            return Err(Malformed("chunked body too large"));
        }
        let Some(data_end) = pos.checked_add(size) else {
            return Err(Malformed("chunked body too large"));
        };
        if buf.len() < data_end + 2 {
            return Ok(None);
        }
        if &buf[data_end..data_end + 2] != b"\r\n" {
            return Err(Malformed("chunk data not followed by CRLF"));
        }
        out.extend_from_slice(&buf[pos..data_end]);
        pos = data_end + 2;
    }
}

/// Whether `needle` occurs in `haystack` (an empty needle always does).
pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fn split_start_line(head: &[u8]) -> Result<(&[u8], &[u8]), Malformed> {
    let eol = find_crlf(head, MAX_HEAD)?.ok_or(Malformed("no line end"))?;
    Ok((&head[..eol], &head[eol + 2..]))
}

/// Position of the first CRLF in `buf`; an error if none occurs within `limit` bytes.
fn find_crlf(buf: &[u8], limit: usize) -> Result<Option<usize>, Malformed> {
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(p) if p <= limit => Ok(Some(p)),
        Some(_) => Err(Malformed("line too long")),
        None if buf.len() > limit => Err(Malformed("line too long")),
        None => Ok(None),
    }
}

/// Parses `HTTP/1.x` and returns x.
fn parse_version(version: &[u8]) -> Result<u8, Malformed> {
    match version {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', minor] if minor.is_ascii_digit() => {
            Ok(minor - b'0')
        }
        _ => Err(Malformed("unsupported HTTP version")),
    }
}

fn parse_headers(block: &[u8]) -> Result<Framing, Malformed> {
    let mut framing = Framing::default();
    for line in block.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(Malformed("header line without a colon"))?;
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if name.is_empty() || !name.iter().copied().all(is_tchar) {
            return Err(Malformed("invalid header name"));
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            let length = parse_decimal(value).ok_or(Malformed("invalid Content-Length"))?;
            if framing.content_length.is_some_and(|old| old != length) {
                return Err(Malformed("conflicting Content-Length headers"));
            }
            framing.content_length = Some(length);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // The last coding decides how the body is delimited.
            let last = value.rsplit(|&b| b == b',').next().map(trim);
            framing.transfer_encoding = true;
            framing.chunked = last.is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(trim) {
                if token.eq_ignore_ascii_case(b"close") {
                    framing.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    framing.keep_alive = true;
                }
            }
        }
    }
    Ok(framing)
}

fn trim(bytes: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes.iter().position(|b| !is_ows(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |p| p + 1);
    &bytes[start..end]
}

fn parse_decimal(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0usize, |acc, &d| {
        d.is_ascii_digit()
            .then(|| acc.checked_mul(10)?.checked_add(usize::from(d - b'0')))
            .flatten()
    })
}

fn parse_hex(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0usize, |acc, &d| {
        let value = char::from(d).to_digit(16)?;
        acc.checked_mul(16)?
            .checked_add(usize::try_from(value).ok()?)
    })
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_end_finds_the_blank_line_and_resumes_scanning() {
        let msg = b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nbody";
        assert_eq!(head_end(msg, 0), Some(25));
        assert_eq!(head_end(msg, 20), Some(25));
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\n", 0), None);
    }

    #[test]
    fn response_head_framing_and_persistence() {
        let head = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n").unwrap();
        assert_eq!(head.status, 200);
        assert!(head.persistent);
        assert_eq!(head.framing.content_length, Some(12));

        let head =
            parse_response_head(b"HTTP/1.1 503 Unavailable\r\nconnection: Close\r\n\r\n").unwrap();
        assert_eq!(head.status, 503);
        assert!(!head.persistent, "Connection: close ends the connection");

        let head = parse_response_head(b"HTTP/1.0 200 OK\r\n\r\n").unwrap();
        assert!(!head.persistent, "HTTP/1.0 closes by default");
        let head =
            parse_response_head(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n").unwrap();
        assert!(head.persistent);

        let head = parse_response_head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n",
        )
        .unwrap();
        assert!(head.framing.chunked && head.framing.transfer_encoding);

        let head = parse_response_head(b"HTTP/1.1 204\r\n\r\n").unwrap();
        assert_eq!(head.status, 204, "the reason phrase is optional");
    }

    #[test]
    fn malformed_responses_are_rejected() {
        for bad in [
            &b"garbage\r\n\r\n"[..],
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.1 2x0 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        ] {
            assert!(
                parse_response_head(bad).is_err(),
                "{:?} must be rejected",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn request_head() {
        let req = parse_request_head(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(req.method, b"GET");
        assert!(req.persistent);
        let req = parse_request_head(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
        assert!(!req.persistent);
        assert!(parse_request_head(b"GET /\r\n\r\n").is_err());
        assert!(parse_request_head(b"GET  / HTTP/1.1\r\n\r\n").is_err());
        assert!(parse_request_head(b"G(T / HTTP/1.1\r\n\r\n").is_err());
    }

    #[test]
    fn chunked_bodies_decode_incrementally() {
        let body = b"5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        let mut out = Vec::new();
        let full = body.len() - 4;
        for cut in 0..full {
            assert_eq!(
                decode_chunked(&body[..cut], &mut out, 100),
                Ok(None),
                "incomplete at {cut}"
            );
        }
        assert_eq!(decode_chunked(body, &mut out, 100), Ok(Some(full)));
        assert_eq!(out, b"hello!");
        assert!(decode_chunked(body, &mut out, 5).is_err(), "over the limit");
        assert!(decode_chunked(b"zz\r\n", &mut out, 100).is_err());
        assert!(decode_chunked(b"2\r\nabX\r\n", &mut out, 100).is_err());
    }

    #[test]
    fn substring_search() {
        assert!(contains(b"v=2 here", b"v=2"));
        assert!(!contains(b"v=1", b"v=2"));
        assert!(contains(b"", b""));
        assert!(!contains(b"", b"a"));
    }
}

//! The HTTP/1.1 server the lab's backends share: `lab-server` ([`crate::server`]) and the
//! demo's bootcamp pods. What each answers is theirs ([`Answer`]); how a connection is
//! read, framed, answered and drained is here, once:
//!
//! - keep-alive per HTTP/1.1 (`Connection: close` and HTTP/1.0 without keep-alive honoured),
//!   request bodies up to [`MAX_REQUEST_BODY`] read and discarded, chunked request bodies
//!   refused (`501`), heads over [`http::MAX_HEAD`] refused (`431`), malformed ones `400`;
//! - the drain hook ([`Phase`]): once draining, each connection answers its in-flight or
//!   next request with `Connection: close` and closes after it ([`linger_close`]), and the
//!   acceptor ([`accept`]) takes the connections the kernel already completed before the
//!   listener closes, so none of them is reset.
//!
//! Written here rather than taken from hyper for the drain: hyper's graceful shutdown closes
//! an idle keep-alive connection at once, under a client that may be sending its next
//! request; this server answers that request with `Connection: close`. Beside hyper on
//! loopback it serves 1.06-1.22x the keep-alive requests and the same per connection
//! (docs/benchmarks.md, `bench/scripts/lab-server-vs-hyper.sh`).

use std::{borrow::Cow, sync::atomic::AtomicU64, sync::atomic::Ordering, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

use crate::{
    http,
    lifecycle::{Phase, linger_close, reached},
};

/// Largest request body (read and discarded) a connection accepts.
pub const MAX_REQUEST_BODY: usize = 1024 * 1024;

/// One request as an [`Answer`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    /// The method token (`GET`, `HEAD`, ...).
    pub method: &'a [u8],
    /// The request target as sent (`/ready?x=1`).
    pub target: &'a [u8],
}

impl Request<'_> {
    /// The target's path: up to `?`, as text (an invalid UTF-8 target is no known path).
    pub fn path(&self) -> &str {
        let path = self.target.split(|&b| b == b'?').next().unwrap_or_default();
        std::str::from_utf8(path).unwrap_or_default()
    }
}

/// What a server answers: the complete response (head and body) to one request.
pub trait Answer: Send + Sync + 'static {
    /// The answer to `request` while the server is in `phase`; `close` says the connection
    /// closes after it (the answer must then carry `Connection: close`, see [`response`]).
    fn answer(&self, request: &Request<'_>, phase: Phase, close: bool) -> Cow<'_, [u8]>;
}

/// A response with a `Content-Length` body (sent only when `with_body`: a `HEAD` answer
/// carries the length of the body it does not send). `extra_headers` are complete lines.
pub fn response(
    status: &str,
    content_type: &str,
    extra_headers: &str,
    body: &[u8],
    with_body: bool,
    close: bool,
) -> Vec<u8> {
    let connection = if close { "Connection: close\r\n" } else { "" };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         {extra_headers}{connection}\r\n",
        body.len()
    )
    .into_bytes();
    if with_body {
        out.extend_from_slice(body);
    }
    out
}

/// What the buffered bytes of a connection hold.
#[derive(Debug, PartialEq, Eq)]
enum Step<'a> {
    /// A complete request of `consumed` bytes (head and body).
    Request {
        request: Request<'a>,
        persistent: bool,
        consumed: usize,
    },
    NeedMore,
    /// An unacceptable request: answer with this status and close.
    Reject(&'static str),
}

/// The next request in `buf`; `scanned` remembers how far a head end was searched.
fn next_request<'a>(buf: &'a [u8], scanned: &mut usize) -> Step<'a> {
    let Some(end) = http::head_end(buf, *scanned) else {
        if buf.len() > http::MAX_HEAD {
            return Step::Reject("431 Request Header Fields Too Large");
        }
        *scanned = buf.len().saturating_sub(3);
        return Step::NeedMore;
    };
    let head = match http::parse_request_head(&buf[..end]) {
        Ok(head) => head,
        Err(http::Malformed("unsupported HTTP version")) => {
            return Step::Reject("505 HTTP Version Not Supported");
        }
        Err(_) => return Step::Reject("400 Bad Request"),
    };
    if head.framing.transfer_encoding {
        return Step::Reject("501 Not Implemented");
    }
    let body = head.framing.content_length.unwrap_or(0);
    if body > MAX_REQUEST_BODY {
        return Step::Reject("413 Content Too Large");
    }
    if buf.len() < end + body {
        return Step::NeedMore;
    }
    Step::Request {
        request: Request {
            method: head.method,
            target: head.target,
        },
        persistent: head.persistent,
        consumed: end + body,
    }
}

/// Serves one connection until the client closes it, a final answer went out, or the
/// server stopped; counts each request answered in `requests`.
pub async fn connection<A: Answer + ?Sized>(
    mut stream: TcpStream,
    answers: &A,
    requests: &AtomicU64,
    mut phase: watch::Receiver<Phase>,
) {
    let mut buf = Vec::with_capacity(4096);
    let mut scanned = 0;
    loop {
        match next_request(&buf, &mut scanned) {
            Step::Request {
                request,
                persistent,
                consumed,
            } => {
                requests.fetch_add(1, Ordering::Relaxed);
                let now = *phase.borrow();
                let close = !persistent || now != Phase::Serving;
                if stream
                    .write_all(&answers.answer(&request, now, close))
                    .await
                    .is_err()
                {
                    return;
                }
                if close {
                    linger_close(&mut stream, &mut phase).await;
                    return;
                }
                buf.drain(..consumed);
                scanned = 0;
            }
            Step::Reject(status) => {
                let answer = response(status, "text/plain", "", b"", false, true);
                if stream.write_all(&answer).await.is_ok() {
                    linger_close(&mut stream, &mut phase).await;
                }
                return;
            }
            Step::NeedMore => {
                if buf.capacity() - buf.len() < 1024 {
                    buf.reserve(4096);
                }
                tokio::select! {
                    read = stream.read_buf(&mut buf) => match read {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    },
                    () = reached(&mut phase, Phase::Stopped) => return,
                }
            }
        }
    }
}

/// Accepts connections on `listener` and hands each to `serve` until the server drains;
/// then takes the connections the kernel already completed (closing the listener would
/// reset them: each is served, and answers once with `Connection: close`) and returns, which
/// closes the listener: new connections are refused from then on.
pub async fn accept(
    listener: TcpListener,
    mut phase: watch::Receiver<Phase>,
    mut serve: impl FnMut(TcpStream),
) {
    let mut take = |stream: TcpStream| {
        let _ = stream.set_nodelay(true);
        serve(stream);
    };
    loop {
        tokio::select! {
            biased;
            () = reached(&mut phase, Phase::Draining) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => take(stream),
                Err(e) => {
                    // Out of descriptors or memory, or an aborted handshake: keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
    loop {
        tokio::select! {
            biased;
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => take(stream),
                Err(_) => break,
            },
            () = std::future::ready(()) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(buf: &[u8]) -> (Request<'_>, bool, usize) {
        match next_request(buf, &mut 0) {
            Step::Request {
                request,
                persistent,
                consumed,
            } => (request, persistent, consumed),
            other => panic!("not a complete request: {other:?}"),
        }
    }

    #[test]
    fn requests_are_framed() {
        let mut scanned = 0;
        assert_eq!(
            next_request(b"GET / HTTP/1.1\r\n", &mut scanned),
            Step::NeedMore
        );
        let (r, persistent, consumed) = request(b"GET /ready?x=1 HTTP/1.1\r\nHost: a\r\n\r\nGET /");
        assert_eq!(
            (r.method, r.path(), persistent, consumed),
            (&b"GET"[..], "/ready", true, 36)
        );
        let buf = b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nab";
        assert_eq!(next_request(buf, &mut 0), Step::NeedMore);
        let (r, _, consumed) = request(b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd");
        assert_eq!((r.method, consumed), (&b"POST"[..], 42));
        assert!(!request(b"GET / HTTP/1.0\r\n\r\n").1);
        assert!(request(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").1);
        assert!(!request(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").1);
    }

    #[test]
    fn unacceptable_requests_are_refused_with_their_status() {
        let reject = |buf: &[u8]| match next_request(buf, &mut 0) {
            Step::Reject(status) => status,
            other => panic!("accepted: {other:?}"),
        };
        assert_eq!(reject(b"nonsense\r\n\r\n"), "400 Bad Request");
        assert_eq!(
            reject(b"GET / HTTP/2.0\r\n\r\n"),
            "505 HTTP Version Not Supported"
        );
        assert_eq!(
            reject(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            "501 Not Implemented"
        );
        assert_eq!(
            reject(b"POST / HTTP/1.1\r\nContent-Length: 1048577\r\n\r\n"),
            "413 Content Too Large"
        );
        let long = [b'a'; http::MAX_HEAD + 1];
        assert_eq!(reject(&long), "431 Request Header Fields Too Large");
    }

    #[test]
    fn responses_carry_length_type_and_close() {
        assert_eq!(
            response("200 OK", "text/plain", "", b"pod-a\n", true, false),
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\npod-a\n"
        );
        assert_eq!(
            response(
                "405 Method Not Allowed",
                "text/plain",
                "Allow: GET\r\n",
                b"no\n",
                false,
                true
            ),
            b"HTTP/1.1 405 Method Not Allowed\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\
              Allow: GET\r\nConnection: close\r\n\r\n"
        );
    }
}

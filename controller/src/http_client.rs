//! The one HTTP client of the CLI, the readiness probes, the demo and the tests: one request
//! through `ureq` (blocking, plain HTTP), the whole answer read, any status returned as an
//! answer. Blocking on purpose: the socket belongs to the network namespace of the calling
//! thread, so a caller inside a lab's namespace ([`lab::Netns::enter`]) reaches addresses
//! there.

use std::{io, net::SocketAddr, time::Duration};

/// Largest answer read (the agent's views of the data path stay far below).
const MAX_RESPONSE: u64 = 16 * 1024 * 1024;

/// A complete answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> io::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "HTTP {} answer is not JSON ({e}): {}",
                    self.status,
                    self.text()
                ),
            )
        })
    }
}

/// How a request ended before an answer arrived.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// No connection was established (refused, unreachable, timed out connecting).
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    /// Connected, but the exchange failed (the connection counts as made).
    #[error("request failed: {0}")]
    Exchange(io::Error),
}

impl Failure {
    /// The underlying error.
    pub fn error(&self) -> &io::Error {
        match self {
            Failure::Connect(e) | Failure::Exchange(e) => e,
        }
    }

    /// Whether a TCP connection was established before it failed.
    pub fn connected(&self) -> bool {
        matches!(self, Failure::Exchange(_))
    }

    /// Whether a timeout ended it (connecting or waiting for the answer).
    pub fn timed_out(&self) -> bool {
        self.error().kind() == io::ErrorKind::TimedOut
    }

    fn of(e: ureq::Error) -> Failure {
        use io::ErrorKind as K;
        let connect = match &e {
            ureq::Error::Io(io) => matches!(
                io.kind(),
                K::ConnectionRefused
                    | K::NetworkUnreachable
                    | K::HostUnreachable
                    | K::AddrNotAvailable
                    | K::NetworkDown
            ),
            ureq::Error::ConnectionFailed
            | ureq::Error::HostNotFound
            | ureq::Error::Timeout(ureq::Timeout::Connect | ureq::Timeout::Resolve) => true,
            _ => false,
        };
        let io = match e {
            ureq::Error::Io(io) => io,
            ureq::Error::Timeout(t) => io::Error::new(K::TimedOut, format!("timed out ({t})")),
            other => io::Error::other(other),
        };
        if connect {
            Failure::Connect(io)
        } else {
            Failure::Exchange(io)
        }
    }
}

/// Sends `method path` to `addr` with the given extra headers and body, and reads the whole
/// answer, whatever its status. `timeout` bounds connecting and each read and write.
/// Redirects are answers too (not followed).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Response, Failure> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .allow_non_standard_methods(true)
        .timeout_connect(Some(timeout))
        .timeout_per_read(Some(timeout))
        .timeout_per_write(Some(timeout))
        .build()
        .into();
    let mut req = ureq::http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let invalid = |e: ureq::http::Error| {
        Failure::Exchange(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{method} {path}: {e}"),
        ))
    };
    let answer = match body {
        Some(body) => agent.run(req.body(body).map_err(invalid)?),
        None => agent.run(req.body(()).map_err(invalid)?),
    };
    let mut answer = answer.map_err(Failure::of)?;
    let status = answer.status().as_u16();
    let body = answer
        .body_mut()
        .with_config()
        .limit(MAX_RESPONSE)
        .read_to_vec()
        .map_err(|e| Failure::Exchange(e.into_io()))?;
    Ok(Response { status, body })
}

/// A GET of `path` with `Accept: application/json`.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Response, Failure> {
    request(
        addr,
        "GET",
        path,
        &[("Accept", "application/json")],
        None,
        timeout,
    )
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use super::*;

    /// A server that answers one connection with `answer` after reading the request head.
    fn answer_once(answer: &'static [u8]) -> (SocketAddr, std::thread::JoinHandle<String>) {
        let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap() == 1 {
                head.push(byte[0]);
            }
            let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |n| n.trim().parse().unwrap());
            let mut body = vec![0u8; length];
            s.read_exact(&mut body).unwrap();
            s.write_all(answer).unwrap();
            head + &String::from_utf8(body).unwrap()
        });
        (addr, t)
    }

    #[test]
    fn answers_framed_by_length_or_chunks_and_any_status() {
        let (addr, t) = answer_once(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc");
        let r = get(addr, "/x?y=1", Duration::from_secs(5)).unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "abc"));
        let head = t.join().unwrap();
        assert!(head.starts_with("get /x?y=1 http/1.1\r\n"), "{head}");
        assert!(head.contains("accept: application/json\r\n"), "{head}");

        let (addr, t) = answer_once(
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        );
        let r = get(addr, "/", Duration::from_secs(5)).unwrap();
        assert_eq!((r.status, r.text().as_str()), (503, "abcde"));
        t.join().unwrap();

        let (addr, t) =
            answer_once(b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(get(addr, "/", Duration::from_secs(5)).unwrap().status, 302);
        t.join().unwrap();
    }

    #[test]
    fn a_cut_answer_is_an_exchange_failure_and_a_refusal_a_connect_failure() {
        let (addr, t) = answer_once(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc");
        let e = get(addr, "/", Duration::from_secs(5)).unwrap_err();
        assert!(e.connected(), "{e}");
        t.join().unwrap();
        // A port held bound without listening: the kernel refuses it.
        let refusing =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        refusing
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        let port = refusing.local_addr().unwrap().as_socket().unwrap();
        let e = get(port, "/", Duration::from_secs(5)).unwrap_err();
        assert!(!e.connected(), "{e}");
    }

    #[test]
    fn a_body_is_sent_with_its_length() {
        let (addr, t) = answer_once(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
        let r = request(
            addr,
            "PUT",
            "/a",
            &[("Content-Type", "application/json")],
            Some(b"{}"),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(r.status, 201);
        let head = t.join().unwrap();
        assert!(head.starts_with("put /a http/1.1\r\n"), "{head}");
        assert!(
            head.contains("content-length: 2\r\n") && head.ends_with("\r\n\r\n{}"),
            "{head}"
        );
    }
}

//! A minimal blocking HTTP/1.1 `GET` client with keep-alive, for the agent's API and metrics
//! listeners inside the lab's node namespace (the sockets are created there, then used from
//! any thread).

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use lab::Netns;

/// Longest head line accepted (status line or header).
const MAX_LINE: usize = 16 * 1024;

/// One keep-alive connection to `addr` in `ns`, reopened after an error or `Connection:
/// close`.
#[derive(Debug)]
pub struct Client<'a> {
    ns: &'a Netns,
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

impl<'a> Client<'a> {
    pub fn new(ns: &'a Netns, addr: SocketAddr) -> Self {
        Client {
            ns,
            addr,
            conn: None,
        }
    }

    /// `GET path`: (status, body). `timeout` bounds each read (the agent may hold the answer
    /// while a reconcile round runs).
    pub fn get(&mut self, path: &str, timeout: Duration) -> Result<(u16, Vec<u8>)> {
        let r = self.try_get(path, timeout);
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    fn try_get(&mut self, path: &str, timeout: Duration) -> Result<(u16, Vec<u8>)> {
        if self.conn.is_none() {
            let addr = self.addr;
            let connect = timeout.min(Duration::from_secs(2));
            let s = self
                .ns
                .enter(move || TcpStream::connect_timeout(&addr, connect))?
                .with_context(|| format!("connecting to {addr}"))?;
            s.set_nodelay(true)?;
            self.conn = Some(BufReader::new(s));
        }
        let conn = self.conn.as_mut().expect("connected above");
        conn.get_ref()
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        conn.get_mut()
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: sluice\r\n\r\n").as_bytes())?;
        let mut line = String::new();
        read_line(conn, &mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {line:?}"))?;
        let (mut length, mut chunked, mut close) = (None, false, false);
        loop {
            read_line(conn, &mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
                match k.as_str() {
                    "content-length" => length = v.parse::<usize>().ok(),
                    "transfer-encoding" => chunked = v.ends_with("chunked"),
                    "connection" => close = v == "close",
                    _ => {}
                }
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                read_line(conn, &mut line)?;
                let size = line.trim_end().split(';').next().unwrap_or_default();
                let size = usize::from_str_radix(size.trim(), 16)
                    .with_context(|| format!("bad chunk size line {line:?}"))?;
                if size == 0 {
                    // Trailers, up to the blank line.
                    loop {
                        read_line(conn, &mut line)?;
                        if line.trim_end().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let start = body.len();
                body.resize(start + size, 0);
                conn.read_exact(&mut body[start..])?;
                read_line(conn, &mut line)?;
            }
        } else if let Some(n) = length {
            body.resize(n, 0);
            conn.read_exact(&mut body)?;
        } else {
            conn.read_to_end(&mut body)?;
            close = true;
        }
        if close {
            self.conn = None;
        }
        Ok((status, body))
    }
}

/// Reads one CRLF-terminated line into `line` (cleared first); EOF is an error.
fn read_line(conn: &mut BufReader<TcpStream>, line: &mut String) -> Result<()> {
    line.clear();
    let n = conn
        .by_ref()
        .take(MAX_LINE as u64)
        .read_line(line)
        .context("reading the response")?;
    if n == 0 {
        bail!("the connection closed before the response ended");
    }
    Ok(())
}

//! A minimal packet capture: an `AF_PACKET` socket bound to one interface of a namespace.
//!
//! Lets tests look at the frames that really cross a link (e.g. to check with
//! [`verify_checksums`](crate::packet::verify_checksums) what the load balancer emitted)
//! without tcpdump. The socket is created on a thread inside the namespace and stays there.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::time::{Duration, Instant};

use crate::error::{Context as _, Result, bail};

use crate::netns::Netns;
use crate::veth;

/// Largest frame kept whole (GRO super-packets on veth stay below 64 KiB).
const BUF_LEN: usize = 256 * 1024;

/// One captured frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The frame from the Ethernet header on (cut at 256 KiB).
    pub data: Vec<u8>,
    /// The kernel's packet type (`PACKET_HOST`, `PACKET_OUTGOING`, ...).
    pub pkt_type: u8,
    /// The frame's length on the wire, which exceeds `data.len()` when it was cut.
    pub wire_len: usize,
}

impl Frame {
    /// Whether the interface sent this frame (rather than received it).
    pub fn is_outgoing(&self) -> bool {
        self.pkt_type == libc::PACKET_OUTGOING
    }
}

/// An `AF_PACKET` socket capturing every frame sent or received on one interface.
#[derive(Debug)]
pub struct Capture {
    fd: OwnedFd,
    ifname: String,
    netns: String,
}

impl Capture {
    /// Starts capturing on `ifname` in `ns` (frames from now on).
    pub fn open(ns: &Netns, ifname: &str) -> Result<Self> {
        let ifindex = veth::ifindex(ns, ifname)?;
        let protocol = (libc::ETH_P_ALL as u16).to_be();
        let fd = ns
            .enter(|| -> std::io::Result<OwnedFd> {
                // SAFETY: plain socket(2) call; the result is checked before use.
                let raw = unsafe {
                    libc::socket(
                        libc::AF_PACKET,
                        libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                        i32::from(protocol),
                    )
                };
                if raw < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // SAFETY: `raw` is a freshly created descriptor that nothing else owns.
                Ok(unsafe { OwnedFd::from_raw_fd(raw) })
            })?
            .with_context(|| format!("cannot open an AF_PACKET socket in {}", ns.name()))?;

        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as libc::sa_family_t;
        addr.sll_protocol = protocol;
        addr.sll_ifindex = i32::try_from(ifindex).context("ifindex out of range")?;
        // SAFETY: `addr` is a valid sockaddr_ll and the length passed matches its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::from_ref(&addr).cast::<libc::sockaddr>(),
                socklen_of::<libc::sockaddr_ll>(),
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot bind a capture to {ifname} in {}", ns.name()));
        }
        Ok(Self {
            fd,
            ifname: ifname.to_owned(),
            netns: ns.name().to_owned(),
        })
    }

    /// The next frame, waiting up to `timeout`; `None` on timeout.
    pub fn recv(&self, timeout: Duration) -> Result<Option<Frame>> {
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let millis = i32::try_from(remaining.as_millis()).unwrap_or(i32::MAX);
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: `pfd` is a valid pollfd array of length 1.
            let rc = unsafe { libc::poll(&raw mut pfd, 1, millis) };
            if rc < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err).context("poll on a capture socket");
            }
            if rc == 0 {
                return Ok(None);
            }
            let mut buf = vec![0u8; BUF_LEN];
            // SAFETY: as above, all-zero is a valid sockaddr_ll.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = socklen_of::<libc::sockaddr_ll>();
            // SAFETY: `buf` is writable for BUF_LEN bytes; `from`/`from_len` describe a
            // writable sockaddr_ll.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_TRUNC | libc::MSG_DONTWAIT,
                    std::ptr::from_mut(&mut from).cast::<libc::sockaddr>(),
                    &raw mut from_len,
                )
            };
            if n < 0 {
                let err = std::io::Error::last_os_error();
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                ) {
                    continue;
                }
                return Err(err).with_context(|| {
                    format!("cannot read a capture of {} in {}", self.ifname, self.netns)
                });
            }
            let wire_len = usize::try_from(n).unwrap_or(0);
            buf.truncate(wire_len.min(BUF_LEN));
            return Ok(Some(Frame {
                data: buf,
                pkt_type: from.sll_pkttype,
                wire_len,
            }));
        }
    }

    /// Every frame that arrives within `window`.
    pub fn collect(&self, window: Duration) -> Result<Vec<Frame>> {
        let deadline = Instant::now() + window;
        let mut frames = Vec::new();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Ok(frames);
            }
            match self.recv(remaining)? {
                Some(frame) => frames.push(frame),
                None => return Ok(frames),
            }
        }
    }

    /// Waits up to `timeout` for a frame that satisfies `pred`, skipping others.
    pub fn wait_for(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&Frame) -> bool,
    ) -> Result<Frame> {
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match self.recv(remaining)? {
                Some(frame) if pred(&frame) => return Ok(frame),
                Some(_) => {}
                None => bail!(
                    "no matching frame on {} in {} within {timeout:?}",
                    self.ifname,
                    self.netns
                ),
            }
        }
    }
}

fn socklen_of<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(std::mem::size_of::<T>()).unwrap_or(libc::socklen_t::MAX)
}

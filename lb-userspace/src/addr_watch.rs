//! The attached interfaces' addresses, read and followed over rtnetlink.
//!
//! [`read_interface_addresses`] reads them once (an `RTM_GETADDR` dump), for
//! [`Dataplane::attach`]. [`Dataplane::watch_interface_addresses`] starts a thread
//! subscribed to `RTNLGRP_IPV4_IFADDR` and `RTNLGRP_IPV6_IFADDR` that reads every address
//! once, then reports each change of the watched interfaces (by ifindex) as an
//! [`AddressEvent`]; when the kernel drops notifications (`ENOBUFS`) or a dump was
//! interrupted by changes, it reads them all again. The watch never writes a map: the
//! agent's reconciler applies its events.
//!
//! One rule decides which addresses are NodePort addresses, for the read at attach and for
//! the watch ([`classify`]): every address of the interface (its local address, `IFA_LOCAL`
//! when there is one), except IPv6 link-local ones (fe80::/10, never reported), and except,
//! while they last, tentative (duplicate address detection under way, unless optimistic)
//! and DAD-failed ones (reported as removed, then added when DAD completes).

use std::{
    collections::BTreeSet,
    io,
    net::IpAddr,
    os::fd::{AsFd, OwnedFd},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use lb_datapath::datapath::{AddressEvent, AddressSink, AddressWatch};
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    address::{AddressAttribute, AddressFlags, AddressMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::{Dataplane, attach::ifindex, error::Error};

/// Receive buffer of one read (a dump part is at most 32 KiB; notifications are small).
pub(crate) const READ_BUFFER: usize = 64 * 1024;
/// The socket's receive queue: room for a burst of notifications before the kernel drops
/// some (which costs a full read).
const RECEIVE_QUEUE: usize = 1 << 20;
/// How soon a failed read of every address is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// The address an `RTM_NEWADDR`/`RTM_DELADDR` message is about: (ifindex, address, usable
/// as a NodePort address). `None`: no address in it, or an IPv6 link-local one.
pub(crate) fn classify(msg: &AddressMessage) -> Option<(u32, IpAddr, bool)> {
    let (mut local, mut address, mut flags) = (None, None, None);
    for a in &msg.attributes {
        match a {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            AddressAttribute::Flags(f) => flags = Some(*f),
            _ => {}
        }
    }
    // On a point-to-point link IFA_ADDRESS is the peer's; IFA_LOCAL is ours.
    let ip = local.or(address)?;
    if let IpAddr::V6(v6) = ip
        && (v6.segments()[0] & 0xffc0) == 0xfe80
    {
        return None;
    }
    // IFA_FLAGS, when present, holds all the flags; the header only the first eight.
    let flags =
        flags.unwrap_or_else(|| AddressFlags::from_bits_retain(u32::from(msg.header.flags.bits())));
    let tentative =
        flags.contains(AddressFlags::Tentative) && !flags.contains(AddressFlags::Optimistic);
    let usable = !tentative && !flags.contains(AddressFlags::Dadfailed);
    Some((msg.header.index, ip, usable))
}

/// What the watch knows, folded from dumps and notifications in the order the kernel queued
/// them on the socket (the dump's parts and the notifications share one queue, so applying
/// both in order gives the state after the last of them).
#[derive(Debug)]
struct Tracker {
    watched: BTreeSet<u32>,
    known: BTreeSet<(u32, IpAddr)>,
    /// A dump under way (its sequence number) and what it has gathered so far.
    listing: Option<(u32, BTreeSet<(u32, IpAddr)>)>,
    /// Read everything again once the dump under way (if any) is done.
    relist: bool,
    seq: u32,
}

impl Tracker {
    fn new(watched: BTreeSet<u32>) -> Self {
        Tracker {
            watched,
            known: BTreeSet::new(),
            listing: None,
            relist: true,
            seq: 0,
        }
    }

    /// A dump should be requested now.
    fn wants_dump(&self) -> bool {
        self.relist && self.listing.is_none()
    }

    /// The dump request was sent with this sequence number.
    fn dump_started(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.relist = false;
        self.listing = Some((self.seq, BTreeSet::new()));
        self.seq
    }

    /// Notifications were lost, or a dump was inconsistent: read everything again.
    fn lost(&mut self) {
        self.relist = true;
    }

    fn on_address(&mut self, msg: &AddressMessage, deleted: bool, out: &mut Vec<AddressEvent>) {
        let Some((ifindex, addr, usable)) = classify(msg) else {
            return;
        };
        if !self.watched.contains(&ifindex) {
            return;
        }
        let entry = (ifindex, addr);
        let present = usable && !deleted;
        if let Some((_, listing)) = &mut self.listing {
            // Folded into the dump's result.
            if present {
                listing.insert(entry);
            } else {
                listing.remove(&entry);
            }
        } else if present {
            if self.known.insert(entry) {
                out.push(AddressEvent::Added { ifindex, addr });
            }
        } else if self.known.remove(&entry) {
            out.push(AddressEvent::Removed { ifindex, addr });
        }
    }

    /// The dump `seq` ended: its result replaces what was known.
    fn on_done(&mut self, seq: u32, out: &mut Vec<AddressEvent>) {
        match self.listing.take() {
            Some((s, listing)) if s == seq => {
                self.known = listing;
                // A batch holds at most one full list, and nothing reported before it.
                out.clear();
                out.push(AddressEvent::Listed(self.known.iter().copied().collect()));
            }
            other => self.listing = other,
        }
    }

    /// The dump `seq` failed: it is tried again later.
    fn on_dump_error(&mut self, seq: u32) -> bool {
        if self.listing.as_ref().is_some_and(|(s, _)| *s == seq) {
            self.listing = None;
            self.relist = true;
            return true;
        }
        false
    }

    /// Folds one read's messages (several netlink messages back to back).
    fn on_read(&mut self, mut bytes: &[u8], out: &mut Vec<AddressEvent>) -> Result<(), i32> {
        let mut failed = Ok(());
        while bytes.len() >= 16 {
            let len = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
            if len < 16 || len > bytes.len() {
                break;
            }
            match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[..len]) {
                Ok(m) => {
                    if m.header.flags & NLM_F_DUMP_INTR != 0 {
                        self.lost();
                    }
                    let seq = m.header.sequence_number;
                    match m.payload {
                        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(a)) => {
                            self.on_address(&a, false, out);
                        }
                        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelAddress(a)) => {
                            self.on_address(&a, true, out);
                        }
                        NetlinkPayload::Done(_) => self.on_done(seq, out),
                        NetlinkPayload::Error(e) => {
                            if let Some(code) = e.code
                                && self.on_dump_error(seq)
                            {
                                failed = Err(code.get());
                            }
                        }
                        NetlinkPayload::Overrun(_) => self.lost(),
                        _ => {}
                    }
                }
                Err(e) => tracing::debug!(error = %e, "skipping an rtnetlink message"),
            }
            bytes = &bytes[((len + 3) & !3).min(bytes.len())..];
        }
        failed
    }
}

pub(crate) fn netlink_socket() -> io::Result<Socket> {
    let mut s = Socket::new(NETLINK_ROUTE)?;
    s.bind_auto()?;
    Ok(s)
}

/// Sends an `RTM_GETADDR` dump request (every address of every family).
fn request_dump(s: &Socket, seq: u32) -> io::Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let mut msg = NetlinkMessage::new(
        header,
        NetlinkPayload::from(RouteNetlinkMessage::GetAddress(AddressMessage::default())),
    );
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    s.send_to(&buf, &SocketAddr::new(0, 0), 0)?;
    Ok(())
}

/// One read from the socket into `buf`; `Ok(None)`: the message did not fit (truncated).
pub(crate) fn read(s: &Socket, buf: &mut [u8]) -> io::Result<Option<usize>> {
    let n = s.recv(&mut &mut buf[..], libc::MSG_TRUNC)?;
    Ok((n <= buf.len()).then_some(n))
}

/// The usable addresses of `ifname` (in the calling thread's network namespace), by the
/// rule of this module.
pub fn read_interface_addresses(ifname: &str) -> Result<Vec<IpAddr>, Error> {
    let index = ifindex(ifname)?;
    let fail = |what: &str, e: &dyn std::fmt::Display| Error::Interface {
        ifname: ifname.into(),
        reason: format!("reading its addresses over rtnetlink: {what}: {e}"),
    };
    let s = netlink_socket().map_err(|e| fail("socket", &e))?;
    let mut t = Tracker::new([index].into_iter().collect());
    let seq = t.dump_started();
    request_dump(&s, seq).map_err(|e| fail("request", &e))?;
    let mut buf = vec![0; READ_BUFFER];
    let mut out = Vec::new();
    loop {
        let n = read(&s, &mut buf)
            .map_err(|e| fail("read", &e))?
            .ok_or_else(|| fail("read", &"a message larger than the buffer"))?;
        t.on_read(&buf[..n], &mut out)
            .map_err(|code| fail("dump", &io::Error::from_raw_os_error(-code)))?;
        if t.listing.is_none() {
            return Ok(t.known.iter().map(|(_, a)| *a).collect());
        }
    }
}

/// The watch's thread; stopped (its pipe closed) and joined on drop.
struct Watcher {
    stop: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(s: Socket, stop: OwnedFd, mut t: Tracker, mut sink: AddressSink) {
    let mut buf = vec![0; READ_BUFFER];
    let mut retry_at: Option<Instant> = None;
    loop {
        if t.wants_dump() && retry_at.is_none_or(|at| at <= Instant::now()) {
            let seq = t.dump_started();
            if let Err(e) = request_dump(&s, seq) {
                tracing::warn!(error = %e, "cannot ask the kernel for the interfaces' addresses; trying again");
                t.on_dump_error(seq);
                retry_at = Some(Instant::now() + RETRY);
            } else {
                retry_at = None;
            }
        }
        let timeout = match retry_at {
            Some(at) => {
                let ms = at.saturating_duration_since(Instant::now()).as_millis();
                PollTimeout::from(u16::try_from(ms).unwrap_or(u16::MAX))
            }
            None => PollTimeout::NONE,
        };
        let mut fds = [
            PollFd::new(s.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!(error = %e, "the interface address watch stopped (poll failed)");
                return;
            }
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            return;
        }
        // A dropped notification shows as POLLERR (the read then returns ENOBUFS).
        let ready = fds[0].revents().unwrap_or(PollFlags::empty());
        if ready.intersects(PollFlags::POLLHUP | PollFlags::POLLNVAL) {
            tracing::error!("the interface address watch stopped (its socket closed)");
            return;
        }
        if !ready.intersects(PollFlags::POLLIN | PollFlags::POLLERR) {
            continue;
        }
        let mut out = Vec::new();
        match read(&s, &mut buf) {
            Ok(Some(n)) => {
                if let Err(code) = t.on_read(&buf[..n], &mut out) {
                    tracing::warn!(error = %io::Error::from_raw_os_error(-code), "reading the interfaces' addresses failed; trying again");
                    retry_at = Some(Instant::now() + RETRY);
                }
            }
            Ok(None) => {
                tracing::warn!(
                    "an address notification did not fit the buffer; reading every address again"
                );
                t.lost();
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                tracing::warn!(
                    "the kernel dropped address notifications; reading every address again"
                );
                t.lost();
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::error!(error = %e, "the interface address watch stopped (read failed)");
                return;
            }
        }
        if !out.is_empty() {
            sink(out);
        }
    }
}

impl Dataplane {
    /// Starts following the attached interfaces' addresses (in the calling thread's network
    /// namespace, where the socket is opened): `sink` gets a first [`AddressEvent::Listed`]
    /// and then every change, on the watch's thread. The watch stops when the returned
    /// handle is dropped. Interfaces attached later are not watched.
    pub fn watch_interface_addresses(&self, sink: AddressSink) -> Result<AddressWatch, Error> {
        let mut watched = BTreeSet::new();
        for (ifname, _) in self.attached() {
            watched.insert(ifindex(&ifname)?);
        }
        let fail = |what: &str, e: &dyn std::fmt::Display| Error::Interface {
            ifname: "*".into(),
            reason: format!("watching the interfaces' addresses over rtnetlink: {what}: {e}"),
        };
        let s = netlink_socket().map_err(|e| fail("socket", &e))?;
        for group in [libc::RTNLGRP_IPV4_IFADDR, libc::RTNLGRP_IPV6_IFADDR] {
            s.add_membership(group).map_err(|e| fail("subscribe", &e))?;
        }
        s.set_rx_buf_sz(RECEIVE_QUEUE)
            .map_err(|e| fail("receive buffer", &e))?;
        let (stop_rx, stop_tx) = nix::unistd::pipe().map_err(|e| fail("pipe", &e))?;
        let tracker = Tracker::new(watched);
        let thread = std::thread::Builder::new()
            .name("sluice-addr-watch".into())
            .spawn(move || run(s, stop_rx, tracker, sink))
            .map_err(|e| fail("thread", &e))?;
        Ok(AddressWatch::new(Watcher {
            stop: Some(stop_tx),
            thread: Some(thread),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use netlink_packet_route::{AddressFamily, address::AddressHeaderFlags};

    use super::*;

    fn msg(ifindex: u32, ip: IpAddr, flags: AddressFlags) -> AddressMessage {
        let mut m = AddressMessage::default();
        m.header.index = ifindex;
        m.header.family = match ip {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        m.attributes.push(AddressAttribute::Address(ip));
        m.attributes.push(AddressAttribute::Flags(flags));
        m
    }

    fn v4(last: u8) -> IpAddr {
        Ipv4Addr::new(192, 0, 2, last).into()
    }

    /// The rule shared by attach and the watch: link-local IPv6 never, tentative and
    /// DAD-failed not while they last, IFA_LOCAL before IFA_ADDRESS, header flags when
    /// there is no IFA_FLAGS.
    #[test]
    fn which_addresses_are_nodeport_addresses() {
        let ll: IpAddr = "fe80::1".parse::<Ipv6Addr>().unwrap().into();
        let global: IpAddr = "2001:db8:1::3".parse::<Ipv6Addr>().unwrap().into();
        let none = AddressFlags::empty();
        assert_eq!(classify(&msg(2, v4(1), none)), Some((2, v4(1), true)));
        assert_eq!(classify(&msg(2, ll, AddressFlags::Permanent)), None);
        assert_eq!(classify(&msg(2, global, none)), Some((2, global, true)));
        assert_eq!(
            classify(&msg(2, global, AddressFlags::Tentative)),
            Some((2, global, false))
        );
        assert_eq!(
            classify(&msg(
                2,
                global,
                AddressFlags::Tentative | AddressFlags::Optimistic
            )),
            Some((2, global, true)),
            "optimistic addresses are usable during DAD"
        );
        assert_eq!(
            classify(&msg(
                2,
                global,
                AddressFlags::Tentative | AddressFlags::Dadfailed
            )),
            Some((2, global, false))
        );
        let mut ptp = msg(3, v4(9), none);
        ptp.attributes.push(AddressAttribute::Local(v4(8)));
        assert_eq!(classify(&ptp), Some((3, v4(8), true)), "IFA_LOCAL is ours");
        let mut header_only = msg(2, global, none);
        header_only
            .attributes
            .retain(|a| !matches!(a, AddressAttribute::Flags(_)));
        header_only.header.flags = AddressHeaderFlags::Tentative;
        assert_eq!(classify(&header_only), Some((2, global, false)));
        assert_eq!(classify(&AddressMessage::default()), None);
    }

    /// Changes of watched interfaces are reported once each; a dump replaces what was
    /// known, with the notifications queued during it folded in, and nothing reported
    /// before it in the same batch; other interfaces are ignored.
    #[test]
    fn the_tracker_folds_dumps_and_notifications() {
        let mut t = Tracker::new([2, 3].into_iter().collect());
        assert!(t.wants_dump());
        let seq = t.dump_started();
        assert!(!t.wants_dump());
        let mut out = Vec::new();
        t.on_address(&msg(2, v4(1), AddressFlags::Permanent), false, &mut out);
        t.on_address(&msg(9, v4(50), AddressFlags::Permanent), false, &mut out);
        // A notification queued between the dump's parts: applied to the listing.
        t.on_address(&msg(3, v4(7), AddressFlags::empty()), false, &mut out);
        t.on_address(&msg(3, v4(7), AddressFlags::empty()), true, &mut out);
        assert!(out.is_empty(), "nothing reported before the dump is done");
        t.on_done(seq + 1, &mut out);
        assert!(out.is_empty(), "another dump's end is not this one's");
        t.on_done(seq, &mut out);
        assert_eq!(out, vec![AddressEvent::Listed(vec![(2, v4(1))])]);

        out.clear();
        t.on_address(&msg(2, v4(3), AddressFlags::empty()), false, &mut out);
        t.on_address(&msg(2, v4(3), AddressFlags::empty()), false, &mut out);
        t.on_address(&msg(9, v4(4), AddressFlags::empty()), false, &mut out);
        t.on_address(&msg(2, v4(1), AddressFlags::empty()), true, &mut out);
        t.on_address(&msg(2, v4(1), AddressFlags::empty()), true, &mut out);
        assert_eq!(
            out,
            vec![
                AddressEvent::Added {
                    ifindex: 2,
                    addr: v4(3)
                },
                AddressEvent::Removed {
                    ifindex: 2,
                    addr: v4(1)
                },
            ]
        );

        // Lost notifications: the next dump is the truth.
        out.clear();
        t.lost();
        let seq = t.dump_started();
        t.on_address(&msg(2, v4(5), AddressFlags::empty()), false, &mut out);
        t.on_done(seq, &mut out);
        assert_eq!(out, vec![AddressEvent::Listed(vec![(2, v4(5))])]);
        // A failed dump is asked for again.
        let seq = t.dump_started();
        assert!(t.on_dump_error(seq));
        assert!(t.wants_dump());
    }

    /// The wire format: a dump's messages and its end, parsed back to back from one read.
    #[test]
    fn reads_parse_netlink_messages_back_to_back() {
        let mut t = Tracker::new([2].into_iter().collect());
        let seq = t.dump_started();
        let mut bytes = Vec::new();
        for payload in [
            NetlinkPayload::from(RouteNetlinkMessage::NewAddress(msg(
                2,
                v4(1),
                AddressFlags::Permanent,
            ))),
            NetlinkPayload::Done(Default::default()),
        ] {
            let mut header = NetlinkHeader::default();
            header.sequence_number = seq;
            let mut m = NetlinkMessage::new(header, payload);
            m.finalize();
            let start = bytes.len();
            bytes.resize(start + m.buffer_len(), 0);
            m.serialize(&mut bytes[start..]);
        }
        let mut out = Vec::new();
        t.on_read(&bytes, &mut out).unwrap();
        assert_eq!(out, vec![AddressEvent::Listed(vec![(2, v4(1))])]);
    }
}

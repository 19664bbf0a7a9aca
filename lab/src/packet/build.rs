//! [`PacketBuilder`]: frames with correct lengths and checksums unless told otherwise.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::error::{Result, bail, ensure};

use super::checksum::{Checksum, pseudo_header_v4, pseudo_header_v6};
use super::{IPV4_HLEN, Ipv6Ext, MacAddr, TCP_HLEN, TcpFlags, UDP_HLEN, ethertype, proto};

/// Longest IPv4 options field.
const MAX_IPV4_OPTIONS: usize = 40;
/// Longest TCP options field.
const MAX_TCP_OPTIONS: usize = 40;

#[derive(Clone, Copy, Debug)]
enum Addrs {
    V4(Ipv4Addr, Ipv4Addr),
    V6(Ipv6Addr, Ipv6Addr),
}

#[derive(Clone, Copy, Debug)]
enum L4 {
    Tcp { sport: u16, dport: u16 },
    Udp { sport: u16, dport: u16 },
    Icmp { ty: u8, code: u8 },
    Icmpv6 { ty: u8, code: u8 },
}

/// Builds Ethernet frames for packet tests.
///
/// Choose the network layer with [`ipv4`](Self::ipv4) or [`ipv6`](Self::ipv6), the transport
/// with [`tcp`](Self::tcp), [`udp`](Self::udp), [`icmp`](Self::icmp) or
/// [`icmpv6`](Self::icmpv6), then set fields in any order; fields of another IP version or
/// transport are ignored. [`build`](Self::build) computes the IPv4 total length or IPv6
/// payload length, the UDP length, the IPv4 header checksum and the TCP/UDP/ICMP/ICMPv6
/// checksums (with the pseudo-header where the protocol has one) over the bytes as built.
/// The `*_override` methods write a given value instead, e.g. a wrong checksum or length.
///
/// Defaults: source MAC `02:00:00:00:00:01`, destination MAC `02:00:00:00:00:02`, TTL / hop
/// limit 64, TOS 0, IP id 0, no fragmentation flags, TCP flags none, window 65535, UDP with
/// checksum, empty payload.
///
/// ```
/// use lab::packet::{PacketBuilder, ParsedPacket, TcpFlags, verify_checksums};
/// let frame = PacketBuilder::new()
///     .ipv4("192.0.2.2".parse().unwrap(), "203.0.113.10".parse().unwrap())
///     .tcp(40000, 80)
///     .tcp_flags(TcpFlags::SYN)
///     .build();
/// verify_checksums(&frame).unwrap();
/// assert_eq!(ParsedPacket::parse(&frame).unwrap().dst_port(), Some(80));
/// ```
#[derive(Clone, Debug)]
pub struct PacketBuilder {
    ethernet: bool,
    src_mac: MacAddr,
    dst_mac: MacAddr,
    ethertype: Option<u16>,

    addrs: Option<Addrs>,
    /// `ip()` was given addresses of different versions (reported by `try_build`).
    mixed_versions: bool,
    ttl: u8,
    tos: u8,
    ip_id: u16,
    dont_fragment: bool,
    more_fragments: bool,
    fragment_offset: u16,
    ipv4_options: Vec<u8>,
    flow_label: u32,
    ipv6_ext: Vec<Ipv6Ext>,
    protocol: Option<u8>,

    l4: Option<L4>,
    seq: u32,
    ack: u32,
    tcp_flags: TcpFlags,
    window: u16,
    urgent: u16,
    tcp_options: Vec<u8>,
    udp_checksum: bool,
    icmp_rest: [u8; 4],

    payload: Vec<u8>,

    ip_checksum_override: Option<u16>,
    l4_checksum_override: Option<u16>,
    ip_length_override: Option<u16>,
    udp_length_override: Option<u16>,
    truncate: Option<usize>,
}

impl Default for PacketBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl PacketBuilder {
    /// A builder with the defaults listed on the type.
    pub fn new() -> Self {
        Self {
            ethernet: true,
            src_mac: MacAddr([0x02, 0, 0, 0, 0, 0x01]),
            dst_mac: MacAddr([0x02, 0, 0, 0, 0, 0x02]),
            ethertype: None,
            addrs: None,
            mixed_versions: false,
            ttl: 64,
            tos: 0,
            ip_id: 0,
            dont_fragment: false,
            more_fragments: false,
            fragment_offset: 0,
            ipv4_options: Vec::new(),
            flow_label: 0,
            ipv6_ext: Vec::new(),
            protocol: None,
            l4: None,
            seq: 0,
            ack: 0,
            tcp_flags: TcpFlags::NONE,
            window: 65535,
            urgent: 0,
            tcp_options: Vec::new(),
            udp_checksum: true,
            icmp_rest: [0; 4],
            payload: Vec::new(),
            ip_checksum_override: None,
            l4_checksum_override: None,
            ip_length_override: None,
            udp_length_override: None,
            truncate: None,
        }
    }

    // ---- Ethernet ----

    /// Source and destination MAC addresses.
    pub fn eth(mut self, src: MacAddr, dst: MacAddr) -> Self {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }

    /// Source MAC address.
    pub fn src_mac(mut self, mac: MacAddr) -> Self {
        self.src_mac = mac;
        self
    }

    /// Destination MAC address.
    pub fn dst_mac(mut self, mac: MacAddr) -> Self {
        self.dst_mac = mac;
        self
    }

    /// EtherType, instead of the one implied by the IP version (required without IP).
    pub fn ethertype(mut self, ethertype: u16) -> Self {
        self.ethertype = Some(ethertype);
        self
    }

    /// Builds a bare IP packet without the Ethernet header.
    pub fn without_ethernet(mut self) -> Self {
        self.ethernet = false;
        self
    }

    // ---- IP ----

    /// An IPv4 header from `src` to `dst`.
    pub fn ipv4(mut self, src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        self.addrs = Some(Addrs::V4(src, dst));
        self.mixed_versions = false;
        self
    }

    /// An IPv6 header from `src` to `dst`.
    pub fn ipv6(mut self, src: Ipv6Addr, dst: Ipv6Addr) -> Self {
        self.addrs = Some(Addrs::V6(src, dst));
        self.mixed_versions = false;
        self
    }

    /// An IPv4 or IPv6 header, by the addresses' version (both must be the same version;
    /// [`build`](Self::build) fails otherwise).
    pub fn ip(self, src: IpAddr, dst: IpAddr) -> Self {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => self.ipv4(s, d),
            (IpAddr::V6(s), IpAddr::V6(d)) => self.ipv6(s, d),
            _ => Self {
                addrs: None,
                mixed_versions: true,
                ..self
            },
        }
    }

    /// TTL (IPv4) or hop limit (IPv6).
    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    /// Hop limit (IPv6); the same field as [`ttl`](Self::ttl).
    pub fn hop_limit(self, hop_limit: u8) -> Self {
        self.ttl(hop_limit)
    }

    /// TOS byte (IPv4) or traffic class (IPv6).
    pub fn tos(mut self, tos: u8) -> Self {
        self.tos = tos;
        self
    }

    /// IPv4 identification.
    pub fn ip_id(mut self, id: u16) -> Self {
        self.ip_id = id;
        self
    }

    /// Sets the IPv4 DF (don't fragment) flag.
    pub fn dont_fragment(mut self) -> Self {
        self.dont_fragment = true;
        self
    }

    /// Sets the IPv4 MF (more fragments) flag.
    pub fn more_fragments(mut self) -> Self {
        self.more_fragments = true;
        self
    }

    /// IPv4 fragment offset, in 8-byte units (13 bits). For IPv6 use an
    /// [`Ipv6Ext::Fragment`] header.
    pub fn fragment_offset(mut self, offset_units: u16) -> Self {
        self.fragment_offset = offset_units;
        self
    }

    /// IPv4 options bytes (at most 40), padded with End-of-Options (zero) bytes to a multiple
    /// of 4.
    pub fn ipv4_options(mut self, options: &[u8]) -> Self {
        self.ipv4_options = options.to_vec();
        self
    }

    /// IPv6 flow label (20 bits).
    pub fn flow_label(mut self, label: u32) -> Self {
        self.flow_label = label;
        self
    }

    /// Appends an IPv6 extension header; headers are chained in the order they are added.
    pub fn ipv6_ext(mut self, ext: Ipv6Ext) -> Self {
        self.ipv6_ext.push(ext);
        self
    }

    /// The IPv4 protocol / last IPv6 next-header value, instead of the one implied by the
    /// transport. Required for IPv4 without a transport (e.g. a non-first fragment whose
    /// payload is raw bytes); IPv6 without a transport defaults to "no next header" (59).
    pub fn protocol(mut self, protocol: u8) -> Self {
        self.protocol = Some(protocol);
        self
    }

    // ---- Transport ----

    /// A TCP header.
    pub fn tcp(mut self, sport: u16, dport: u16) -> Self {
        self.l4 = Some(L4::Tcp { sport, dport });
        self
    }

    /// A UDP header.
    pub fn udp(mut self, sport: u16, dport: u16) -> Self {
        self.l4 = Some(L4::Udp { sport, dport });
        self
    }

    /// An ICMP (IPv4) header; the four "rest of header" bytes come from
    /// [`icmp_rest`](Self::icmp_rest) or [`icmp_echo`](Self::icmp_echo).
    pub fn icmp(mut self, ty: u8, code: u8) -> Self {
        self.l4 = Some(L4::Icmp { ty, code });
        self
    }

    /// An ICMPv6 header; the four "rest of header" bytes as for [`icmp`](Self::icmp).
    pub fn icmpv6(mut self, ty: u8, code: u8) -> Self {
        self.l4 = Some(L4::Icmpv6 { ty, code });
        self
    }

    /// TCP sequence number.
    pub fn seq(mut self, seq: u32) -> Self {
        self.seq = seq;
        self
    }

    /// TCP acknowledgment number.
    pub fn ack(mut self, ack: u32) -> Self {
        self.ack = ack;
        self
    }

    /// TCP flags, e.g. `TcpFlags::SYN | TcpFlags::ACK`.
    pub fn tcp_flags(mut self, flags: TcpFlags) -> Self {
        self.tcp_flags = flags;
        self
    }

    /// TCP window.
    pub fn window(mut self, window: u16) -> Self {
        self.window = window;
        self
    }

    /// TCP urgent pointer.
    pub fn urgent(mut self, urgent: u16) -> Self {
        self.urgent = urgent;
        self
    }

    /// TCP options bytes (at most 40), padded with End-of-Options (zero) bytes to a multiple
    /// of 4.
    pub fn tcp_options(mut self, options: &[u8]) -> Self {
        self.tcp_options = options.to_vec();
        self
    }

    /// Sends UDP without a checksum (zero). Valid for IPv4; over IPv6 receivers drop it and
    /// [`verify_checksums`](super::verify_checksums) reports it.
    pub fn udp_no_checksum(mut self) -> Self {
        self.udp_checksum = false;
        self
    }

    /// The four ICMP/ICMPv6 "rest of header" bytes (e.g. unused + next-hop MTU).
    pub fn icmp_rest(mut self, rest: [u8; 4]) -> Self {
        self.icmp_rest = rest;
        self
    }

    /// ICMP/ICMPv6 echo identifier and sequence number as the "rest of header".
    pub fn icmp_echo(mut self, id: u16, seq: u16) -> Self {
        let [a, b] = id.to_be_bytes();
        let [c, d] = seq.to_be_bytes();
        self.icmp_rest = [a, b, c, d];
        self
    }

    /// The payload after the transport header (or after the IP headers without a transport;
    /// after the Ethernet header without IP).
    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    // ---- Deliberate errors ----

    /// Writes `checksum` as the IPv4 header checksum instead of the correct one.
    pub fn ip_checksum_override(mut self, checksum: u16) -> Self {
        self.ip_checksum_override = Some(checksum);
        self
    }

    /// Writes `checksum` as the TCP/UDP/ICMP/ICMPv6 checksum instead of the correct one.
    pub fn l4_checksum_override(mut self, checksum: u16) -> Self {
        self.l4_checksum_override = Some(checksum);
        self
    }

    /// Writes `length` as the IPv4 total length or IPv6 payload length. Checksums are still
    /// computed over the bytes actually built.
    pub fn ip_length_override(mut self, length: u16) -> Self {
        self.ip_length_override = Some(length);
        self
    }

    /// Writes `length` as the UDP length. The UDP checksum is still computed over the bytes
    /// actually built.
    pub fn udp_length_override(mut self, length: u16) -> Self {
        self.udp_length_override = Some(length);
        self
    }

    /// Cuts the finished frame to its first `len` bytes (after all lengths and checksums were
    /// computed).
    pub fn truncate(mut self, len: usize) -> Self {
        self.truncate = Some(len);
        self
    }

    // ---- Output ----

    /// Builds the frame.
    ///
    /// # Panics
    /// On an inconsistent description (see [`try_build`](Self::try_build)); this is a test
    /// fixture, where that is a bug in the test.
    pub fn build(&self) -> Vec<u8> {
        match self.try_build() {
            Ok(frame) => frame,
            Err(e) => panic!("PacketBuilder: {e:#}"),
        }
    }

    /// Builds the frame, failing on an inconsistent description: IPv4 options or TCP options
    /// longer than 40 bytes, an IPv4 fragment offset above 13 bits, mixed IP versions, ICMP
    /// over IPv6 or ICMPv6 over IPv4, IPv6 extension headers with IPv4, IPv4 without a
    /// transport or protocol, no IP and no EtherType, or lengths that do not fit their fields.
    pub fn try_build(&self) -> Result<Vec<u8>> {
        ensure!(
            !self.mixed_versions,
            "source and destination addresses are of different IP versions"
        );
        let mut frame = Vec::new();
        if self.ethernet {
            let ethertype = match (self.ethertype, self.addrs) {
                (Some(t), _) => t,
                (None, Some(Addrs::V4(..))) => ethertype::IPV4,
                (None, Some(Addrs::V6(..))) => ethertype::IPV6,
                (None, None) => bail!("a frame without IP needs an explicit ethertype()"),
            };
            frame.extend_from_slice(&self.dst_mac.0);
            frame.extend_from_slice(&self.src_mac.0);
            frame.extend_from_slice(&ethertype.to_be_bytes());
        }
        match self.addrs {
            None => {
                ensure!(
                    self.l4.is_none(),
                    "a transport header needs an IP header (ipv4() or ipv6())"
                );
                frame.extend_from_slice(&self.payload);
            }
            Some(Addrs::V4(src, dst)) => self.build_v4(&mut frame, src, dst)?,
            Some(Addrs::V6(src, dst)) => self.build_v6(&mut frame, src, dst)?,
        }
        if let Some(len) = self.truncate {
            frame.truncate(len);
        }
        Ok(frame)
    }

    /// The transport header and payload with a zero checksum, and the protocol number.
    fn transport(&self, is_v6: bool) -> Result<(Vec<u8>, Option<u8>)> {
        let Some(l4) = self.l4 else {
            return Ok((self.payload.clone(), None));
        };
        let mut seg = Vec::new();
        let protocol = match l4 {
            L4::Tcp { sport, dport } => {
                ensure!(
                    self.tcp_options.len() <= MAX_TCP_OPTIONS,
                    "TCP options are {} bytes, at most {MAX_TCP_OPTIONS} fit",
                    self.tcp_options.len()
                );
                let options = pad4(&self.tcp_options);
                let words = (TCP_HLEN + options.len()) / 4;
                seg.extend_from_slice(&sport.to_be_bytes());
                seg.extend_from_slice(&dport.to_be_bytes());
                seg.extend_from_slice(&self.seq.to_be_bytes());
                seg.extend_from_slice(&self.ack.to_be_bytes());
                // Data offset in the high nibble; words <= 15 because options <= 40 bytes.
                seg.push(u8::try_from(words << 4).unwrap_or(0xf0));
                seg.push(self.tcp_flags.bits());
                seg.extend_from_slice(&self.window.to_be_bytes());
                seg.extend_from_slice(&[0, 0]);
                seg.extend_from_slice(&self.urgent.to_be_bytes());
                seg.extend_from_slice(&options);
                proto::TCP
            }
            L4::Udp { sport, dport } => {
                let len = UDP_HLEN + self.payload.len();
                let len = match self.udp_length_override {
                    Some(len) => len,
                    None => u16::try_from(len).map_err(|_| {
                        crate::error::Error::Invalid(format!(
                            "UDP length {len} does not fit 16 bits"
                        ))
                    })?,
                };
                seg.extend_from_slice(&sport.to_be_bytes());
                seg.extend_from_slice(&dport.to_be_bytes());
                seg.extend_from_slice(&len.to_be_bytes());
                seg.extend_from_slice(&[0, 0]);
                proto::UDP
            }
            L4::Icmp { ty, code } => {
                ensure!(!is_v6, "ICMP over IPv6: use icmpv6()");
                seg.extend_from_slice(&[ty, code, 0, 0]);
                seg.extend_from_slice(&self.icmp_rest);
                proto::ICMP
            }
            L4::Icmpv6 { ty, code } => {
                ensure!(is_v6, "ICMPv6 over IPv4: use icmp()");
                seg.extend_from_slice(&[ty, code, 0, 0]);
                seg.extend_from_slice(&self.icmp_rest);
                proto::ICMPV6
            }
        };
        seg.extend_from_slice(&self.payload);
        Ok((seg, Some(protocol)))
    }

    /// Offset of the checksum field inside the transport segment.
    fn l4_checksum_offset(&self) -> Option<usize> {
        match self.l4? {
            L4::Tcp { .. } => Some(16),
            L4::Udp { .. } => Some(6),
            L4::Icmp { .. } | L4::Icmpv6 { .. } => Some(2),
        }
    }

    /// Writes the transport checksum into `seg`, given the pseudo-header sum if any.
    fn fill_l4_checksum(&self, seg: &mut [u8], pseudo: Option<Checksum>) {
        let Some(at) = self.l4_checksum_offset() else {
            return;
        };
        let checksum = if let Some(value) = self.l4_checksum_override {
            value
        } else if matches!(self.l4, Some(L4::Udp { .. })) && !self.udp_checksum {
            0
        } else {
            let mut c = pseudo.unwrap_or_default();
            c.add(seg);
            let value = c.finish();
            // RFC 768: a computed zero is sent as all ones (zero means "no checksum").
            if value == 0 && matches!(self.l4, Some(L4::Udp { .. })) {
                0xffff
            } else {
                value
            }
        };
        seg[at..at + 2].copy_from_slice(&checksum.to_be_bytes());
    }

    fn build_v4(&self, frame: &mut Vec<u8>, src: Ipv4Addr, dst: Ipv4Addr) -> Result<()> {
        ensure!(
            self.ipv6_ext.is_empty(),
            "IPv6 extension headers on an IPv4 packet"
        );
        ensure!(
            self.ipv4_options.len() <= MAX_IPV4_OPTIONS,
            "IPv4 options are {} bytes, at most {MAX_IPV4_OPTIONS} fit",
            self.ipv4_options.len()
        );
        ensure!(
            self.fragment_offset <= 0x1fff,
            "IPv4 fragment offset {} does not fit 13 bits",
            self.fragment_offset
        );
        let (mut seg, l4_protocol) = self.transport(false)?;
        let Some(protocol) = self.protocol.or(l4_protocol) else {
            bail!("an IPv4 packet without a transport needs protocol()");
        };
        let options = pad4(&self.ipv4_options);
        let header_len = IPV4_HLEN + options.len();
        let total = header_len + seg.len();
        let total_field = match self.ip_length_override {
            Some(len) => len,
            None => u16::try_from(total).map_err(|_| {
                crate::error::Error::Invalid(format!(
                    "IPv4 total length {total} does not fit 16 bits"
                ))
            })?,
        };
        if let Some(l4) = self.l4 {
            let pseudo = match l4 {
                L4::Icmp { .. } => None,
                _ => {
                    let len = u16::try_from(seg.len()).map_err(|_| {
                        crate::error::Error::Invalid(format!(
                            "IPv4 payload of {} bytes is too long",
                            seg.len()
                        ))
                    })?;
                    Some(pseudo_header_v4(
                        src,
                        dst,
                        l4_protocol.unwrap_or(protocol),
                        len,
                    ))
                }
            };
            self.fill_l4_checksum(&mut seg, pseudo);
        }

        let mut header = Vec::with_capacity(header_len);
        // Version 4 and the IHL in 32-bit words (at most 15 with <= 40 option bytes).
        header.push(0x40 | u8::try_from(header_len / 4).unwrap_or(0x0f));
        header.push(self.tos);
        header.extend_from_slice(&total_field.to_be_bytes());
        header.extend_from_slice(&self.ip_id.to_be_bytes());
        let mut frag = self.fragment_offset;
        if self.dont_fragment {
            frag |= 0x4000;
        }
        if self.more_fragments {
            frag |= 0x2000;
        }
        header.extend_from_slice(&frag.to_be_bytes());
        header.push(self.ttl);
        header.push(protocol);
        header.extend_from_slice(&[0, 0]);
        header.extend_from_slice(&src.octets());
        header.extend_from_slice(&dst.octets());
        header.extend_from_slice(&options);
        let checksum = self
            .ip_checksum_override
            .unwrap_or_else(|| Checksum::new().add(&header).finish());
        header[10..12].copy_from_slice(&checksum.to_be_bytes());

        frame.extend_from_slice(&header);
        frame.extend_from_slice(&seg);
        Ok(())
    }

    fn build_v6(&self, frame: &mut Vec<u8>, src: Ipv6Addr, dst: Ipv6Addr) -> Result<()> {
        ensure!(
            self.ipv4_options.is_empty(),
            "IPv4 options on an IPv6 packet"
        );
        let (mut seg, l4_protocol) = self.transport(true)?;
        let last_next = self.protocol.or(l4_protocol).unwrap_or(proto::NONE);

        // Extension headers, each announcing the next one.
        let mut exts = Vec::new();
        for (i, ext) in self.ipv6_ext.iter().enumerate() {
            let next = self
                .ipv6_ext
                .get(i + 1)
                .map_or(last_next, Ipv6Ext::protocol);
            encode_ext(&mut exts, ext, next)?;
        }
        let first_next = self.ipv6_ext.first().map_or(last_next, Ipv6Ext::protocol);

        if let Some(l4) = self.l4 {
            let pseudo = match l4 {
                L4::Icmp { .. } => None,
                _ => {
                    let len = u32::try_from(seg.len()).map_err(|_| {
                        crate::error::Error::Invalid(format!(
                            "IPv6 payload of {} bytes is too long",
                            seg.len()
                        ))
                    })?;
                    Some(pseudo_header_v6(
                        src,
                        dst,
                        l4_protocol.unwrap_or(last_next),
                        len,
                    ))
                }
            };
            self.fill_l4_checksum(&mut seg, pseudo);
        }
        let payload_len = exts.len() + seg.len();
        let payload_field = match self.ip_length_override {
            Some(len) => len,
            None => u16::try_from(payload_len).map_err(|_| {
                crate::error::Error::Invalid(format!(
                    "IPv6 payload length {payload_len} does not fit 16 bits (no jumbograms)"
                ))
            })?,
        };
        ensure!(
            self.flow_label <= 0xf_ffff,
            "IPv6 flow label {:#x} does not fit 20 bits",
            self.flow_label
        );
        let word = (6u32 << 28) | (u32::from(self.tos) << 20) | self.flow_label;
        frame.extend_from_slice(&word.to_be_bytes());
        frame.extend_from_slice(&payload_field.to_be_bytes());
        frame.push(first_next);
        frame.push(self.ttl);
        frame.extend_from_slice(&src.octets());
        frame.extend_from_slice(&dst.octets());
        frame.extend_from_slice(&exts);
        frame.extend_from_slice(&seg);
        Ok(())
    }
}

/// `bytes` padded with zeros to a multiple of 4.
fn pad4(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out.resize(bytes.len().div_ceil(4) * 4, 0);
    out
}

/// Appends one extension header whose next-header field is `next`.
fn encode_ext(out: &mut Vec<u8>, ext: &Ipv6Ext, next: u8) -> Result<()> {
    let start = out.len();
    match ext {
        Ipv6Ext::HopByHop(options) | Ipv6Ext::DestinationOptions(options) => {
            out.extend_from_slice(&[next, 0]);
            out.extend_from_slice(options);
            let pad = (8 - (2 + options.len()) % 8) % 8;
            match pad {
                0 => {}
                1 => out.push(0), // Pad1
                n => {
                    // PadN: type 1, length n - 2, zeros.
                    out.push(1);
                    out.push(u8::try_from(n - 2).unwrap_or(0));
                    out.resize(out.len() + n - 2, 0);
                }
            }
        }
        Ipv6Ext::Routing {
            routing_type,
            segments_left,
            data,
        } => {
            out.extend_from_slice(&[next, 0, *routing_type, *segments_left]);
            out.extend_from_slice(data);
            let len = out.len() - start;
            out.resize(start + len.div_ceil(8) * 8, 0);
        }
        Ipv6Ext::Fragment { offset, more, id } => {
            ensure!(
                *offset <= 0x1fff,
                "IPv6 fragment offset {offset} does not fit 13 bits"
            );
            out.extend_from_slice(&[next, 0]);
            let field = (offset << 3) | u16::from(*more);
            out.extend_from_slice(&field.to_be_bytes());
            out.extend_from_slice(&id.to_be_bytes());
        }
    }
    let len = out.len() - start;
    debug_assert_eq!(len % 8, 0);
    if !matches!(ext, Ipv6Ext::Fragment { .. }) {
        // Hdr Ext Len: length in 8-octet units, not counting the first 8 octets.
        out[start + 1] = u8::try_from(len / 8 - 1).map_err(|_| {
            crate::error::Error::Invalid(format!(
                "IPv6 extension header of {len} bytes is too long (max 2048)"
            ))
        })?;
    }
    Ok(())
}

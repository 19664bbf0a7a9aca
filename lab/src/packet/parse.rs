//! [`ParsedPacket`]: the fields of a frame read back.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::error::{Result, bail, ensure};

use super::{
    ETH_HLEN, ICMP_HLEN, IPV4_HLEN, IPV6_HLEN, Ipv6Ext, MacAddr, TCP_HLEN, TcpFlags, UDP_HLEN,
    ethertype, proto,
};

/// IP version of a parsed packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IpVersion {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// The Ethernet header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EthHeader {
    /// Destination MAC address.
    pub dst: MacAddr,
    /// Source MAC address.
    pub src: MacAddr,
    /// EtherType.
    pub ethertype: u16,
}

/// An IPv6 extension header and where it starts in the parsed buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedExt {
    /// Offset of the header's first byte.
    pub offset: usize,
    /// The header (options and routing data include their padding).
    pub ext: Ipv6Ext,
}

/// The IPv4 or IPv6 header, with IPv6 extension headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpHeader {
    /// IP version.
    pub version: IpVersion,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// TTL (IPv4) or hop limit (IPv6).
    pub ttl: u8,
    /// TOS byte (IPv4) or traffic class (IPv6).
    pub tos: u8,
    /// The upper-layer protocol: the IPv4 protocol field, or the next-header value after the
    /// last IPv6 extension header walked.
    pub protocol: u8,
    /// Length of all IP headers: IHL x 4 for IPv4; 40 plus the extension headers for IPv6.
    pub header_len: usize,
    /// Length of the whole IP packet according to the header: the IPv4 total length, or 40
    /// plus the IPv6 payload length.
    pub total_len: usize,
    /// IPv4 header checksum as found (`None` for IPv6).
    pub checksum: Option<u16>,
    /// IPv4 identification, or the identification of the IPv6 fragment header (else 0).
    pub id: u32,
    /// IPv4 DF flag (always false for IPv6).
    pub dont_fragment: bool,
    /// IPv4 MF flag, or the M flag of the IPv6 fragment header.
    pub more_fragments: bool,
    /// Fragment offset in 8-byte units (IPv4 header or IPv6 fragment header).
    pub fragment_offset: u16,
    /// IPv4 options bytes, including padding (empty for IPv6).
    pub options: Vec<u8>,
    /// IPv6 flow label (0 for IPv4).
    pub flow_label: u32,
    /// IPv6 extension headers walked (hop-by-hop, routing, fragment, destination options), in
    /// order.
    pub extensions: Vec<ParsedExt>,
}

impl IpHeader {
    /// Whether this is a fragment (first or later) of a larger datagram. An IPv6 atomic
    /// fragment (fragment header with offset 0 and M clear) holds a whole datagram and is not.
    pub fn is_fragment(&self) -> bool {
        self.more_fragments || self.fragment_offset != 0
    }
}

/// A TCP header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpHeader {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// Header length in bytes (data offset x 4).
    pub header_len: usize,
    /// Flags.
    pub flags: TcpFlags,
    /// Window.
    pub window: u16,
    /// Checksum as found.
    pub checksum: u16,
    /// Urgent pointer.
    pub urgent: u16,
    /// Options bytes, including padding.
    pub options: Vec<u8>,
}

/// A UDP header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpHeader {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Length field (header plus data).
    pub length: u16,
    /// Checksum as found (0: none).
    pub checksum: u16,
}

/// An ICMP or ICMPv6 header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmpHeader {
    /// Type.
    pub ty: u8,
    /// Code.
    pub code: u8,
    /// Checksum as found.
    pub checksum: u16,
    /// The four "rest of header" bytes (echo id and sequence, next-hop MTU, ...).
    pub rest: [u8; 4],
}

/// A transport header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    /// TCP.
    Tcp(TcpHeader),
    /// UDP.
    Udp(UdpHeader),
    /// ICMP (IPv4).
    Icmp(IcmpHeader),
    /// ICMPv6.
    Icmpv6(IcmpHeader),
}

/// The fields of a frame (or of a bare IP packet, see [`ParsedPacket::parse_ip`]).
///
/// Parsing requires every header it reads to be complete but does not check length fields
/// against each other or against the buffer, so packets built with wrong lengths still parse;
/// [`verify_checksums`](super::verify_checksums) checks those. The transport header is not
/// parsed for non-first fragments, for IPv6 headers after an extension header it does not walk,
/// and for protocols other than TCP, UDP, ICMP and ICMPv6.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedPacket {
    /// The Ethernet header (`None` for [`ParsedPacket::parse_ip`]).
    pub eth: Option<EthHeader>,
    /// Offset of the network header.
    pub l3_offset: usize,
    /// The IP header, if the EtherType is IPv4 or IPv6.
    pub ip: Option<IpHeader>,
    /// Offset of the transport header, when there is an IP header and this is not a
    /// non-first fragment.
    pub l4_offset: Option<usize>,
    /// The transport header, for TCP, UDP, ICMP and ICMPv6.
    pub transport: Option<Transport>,
    /// Offset of the transport payload, when the transport header was parsed.
    pub payload_offset: Option<usize>,
}

/// Reads a fixed-size array at `at`, or fails naming what was being read.
fn bytes<const N: usize>(data: &[u8], at: usize, what: &str) -> Result<[u8; N]> {
    let Some(slice) = at.checked_add(N).and_then(|end| data.get(at..end)) else {
        bail!(
            "truncated {what}: needs {N} bytes at offset {at}, the buffer has {}",
            data.len()
        );
    };
    let mut out = [0u8; N];
    out.copy_from_slice(slice);
    Ok(out)
}

fn be16(data: &[u8], at: usize, what: &str) -> Result<u16> {
    bytes::<2>(data, at, what).map(u16::from_be_bytes)
}

fn be32(data: &[u8], at: usize, what: &str) -> Result<u32> {
    bytes::<4>(data, at, what).map(u32::from_be_bytes)
}

fn slice<'a>(data: &'a [u8], at: usize, len: usize, what: &str) -> Result<&'a [u8]> {
    match at.checked_add(len).and_then(|end| data.get(at..end)) {
        Some(s) => Ok(s),
        None => bail!(
            "truncated {what}: needs {len} bytes at offset {at}, the buffer has {}",
            data.len()
        ),
    }
}

impl ParsedPacket {
    /// Parses an Ethernet frame (no VLAN tags).
    pub fn parse(frame: &[u8]) -> Result<Self> {
        let dst = MacAddr(bytes::<6>(frame, 0, "Ethernet header")?);
        let src = MacAddr(bytes::<6>(frame, 6, "Ethernet header")?);
        let ethertype = be16(frame, 12, "Ethernet header")?;
        let eth = Some(EthHeader {
            dst,
            src,
            ethertype,
        });
        let version = match ethertype {
            ethertype::IPV4 => Some(IpVersion::V4),
            ethertype::IPV6 => Some(IpVersion::V6),
            _ => None,
        };
        let mut parsed = match version {
            Some(v) => Self::parse_l3(frame, ETH_HLEN, Some(v))?,
            None => Self {
                eth: None,
                l3_offset: ETH_HLEN,
                ip: None,
                l4_offset: None,
                transport: None,
                payload_offset: None,
            },
        };
        parsed.eth = eth;
        Ok(parsed)
    }

    /// Parses a bare IPv4 or IPv6 packet (version from its first nibble).
    pub fn parse_ip(packet: &[u8]) -> Result<Self> {
        Self::parse_l3(packet, 0, None)
    }

    fn parse_l3(data: &[u8], l3: usize, expected: Option<IpVersion>) -> Result<Self> {
        let first = bytes::<1>(data, l3, "IP header")?[0];
        let version = match first >> 4 {
            4 => IpVersion::V4,
            6 => IpVersion::V6,
            v => bail!("IP version field is {v}, expected 4 or 6"),
        };
        if let Some(expected) = expected {
            ensure!(
                expected == version,
                "EtherType says {expected:?} but the IP version field says {version:?}"
            );
        }
        let (ip, l4_offset) = match version {
            IpVersion::V4 => parse_v4(data, l3)?,
            IpVersion::V6 => parse_v6(data, l3)?,
        };
        let (transport, payload_offset) = match l4_offset {
            Some(l4) => parse_transport(data, l4, ip.protocol, version)?,
            None => (None, None),
        };
        Ok(Self {
            eth: None,
            l3_offset: l3,
            ip: Some(ip),
            l4_offset,
            transport,
            payload_offset,
        })
    }

    /// Source MAC address.
    pub fn src_mac(&self) -> Option<MacAddr> {
        self.eth.map(|e| e.src)
    }

    /// Destination MAC address.
    pub fn dst_mac(&self) -> Option<MacAddr> {
        self.eth.map(|e| e.dst)
    }

    /// IP version.
    pub fn version(&self) -> Option<IpVersion> {
        self.ip.as_ref().map(|ip| ip.version)
    }

    /// Source IP address.
    pub fn src_ip(&self) -> Option<IpAddr> {
        self.ip.as_ref().map(|ip| ip.src)
    }

    /// Destination IP address.
    pub fn dst_ip(&self) -> Option<IpAddr> {
        self.ip.as_ref().map(|ip| ip.dst)
    }

    /// TTL or hop limit.
    pub fn ttl(&self) -> Option<u8> {
        self.ip.as_ref().map(|ip| ip.ttl)
    }

    /// Upper-layer protocol number.
    pub fn protocol(&self) -> Option<u8> {
        self.ip.as_ref().map(|ip| ip.protocol)
    }

    /// TCP or UDP source port.
    pub fn src_port(&self) -> Option<u16> {
        match self.transport.as_ref()? {
            Transport::Tcp(t) => Some(t.src_port),
            Transport::Udp(u) => Some(u.src_port),
            Transport::Icmp(_) | Transport::Icmpv6(_) => None,
        }
    }

    /// TCP or UDP destination port.
    pub fn dst_port(&self) -> Option<u16> {
        match self.transport.as_ref()? {
            Transport::Tcp(t) => Some(t.dst_port),
            Transport::Udp(u) => Some(u.dst_port),
            Transport::Icmp(_) | Transport::Icmpv6(_) => None,
        }
    }

    /// The TCP header.
    pub fn tcp(&self) -> Option<&TcpHeader> {
        match self.transport.as_ref()? {
            Transport::Tcp(t) => Some(t),
            _ => None,
        }
    }

    /// The UDP header.
    pub fn udp(&self) -> Option<&UdpHeader> {
        match self.transport.as_ref()? {
            Transport::Udp(u) => Some(u),
            _ => None,
        }
    }

    /// The ICMP or ICMPv6 header.
    pub fn icmp(&self) -> Option<&IcmpHeader> {
        match self.transport.as_ref()? {
            Transport::Icmp(i) | Transport::Icmpv6(i) => Some(i),
            _ => None,
        }
    }

    /// TCP flags.
    pub fn tcp_flags(&self) -> Option<TcpFlags> {
        self.tcp().map(|t| t.flags)
    }

    /// The transport payload within `data` (the buffer this was parsed from), up to the end
    /// of the IP packet as its length field says (clamped to the buffer), so Ethernet padding
    /// is excluded. Empty when the transport was not parsed.
    pub fn payload<'a>(&self, data: &'a [u8]) -> &'a [u8] {
        let (Some(start), Some(ip)) = (self.payload_offset, self.ip.as_ref()) else {
            return &[];
        };
        let end = (self.l3_offset + ip.total_len).min(data.len());
        data.get(start..end).unwrap_or(&[])
    }
}

/// Parses an IPv4 header at `l3`; returns it and the transport offset (`None` for non-first
/// fragments).
fn parse_v4(data: &[u8], l3: usize) -> Result<(IpHeader, Option<usize>)> {
    let fixed = bytes::<IPV4_HLEN>(data, l3, "IPv4 header")?;
    let header_len = usize::from(fixed[0] & 0x0f) * 4;
    ensure!(
        header_len >= IPV4_HLEN,
        "IPv4 IHL is {} (header of {header_len} bytes), at least 5 required",
        fixed[0] & 0x0f
    );
    let options = slice(data, l3 + IPV4_HLEN, header_len - IPV4_HLEN, "IPv4 options")?.to_vec();
    let frag = u16::from_be_bytes([fixed[6], fixed[7]]);
    let ip = IpHeader {
        version: IpVersion::V4,
        src: IpAddr::V4(Ipv4Addr::new(fixed[12], fixed[13], fixed[14], fixed[15])),
        dst: IpAddr::V4(Ipv4Addr::new(fixed[16], fixed[17], fixed[18], fixed[19])),
        ttl: fixed[8],
        tos: fixed[1],
        protocol: fixed[9],
        header_len,
        total_len: usize::from(u16::from_be_bytes([fixed[2], fixed[3]])),
        checksum: Some(u16::from_be_bytes([fixed[10], fixed[11]])),
        id: u32::from(u16::from_be_bytes([fixed[4], fixed[5]])),
        dont_fragment: frag & 0x4000 != 0,
        more_fragments: frag & 0x2000 != 0,
        fragment_offset: frag & 0x1fff,
        options,
        flow_label: 0,
        extensions: Vec::new(),
    };
    let l4 = (ip.fragment_offset == 0).then_some(l3 + header_len);
    Ok((ip, l4))
}

/// Parses an IPv6 header and its extension headers at `l3`; returns it and the transport
/// offset (`None` for non-first fragments and after a header it does not walk).
fn parse_v6(data: &[u8], l3: usize) -> Result<(IpHeader, Option<usize>)> {
    let fixed = bytes::<IPV6_HLEN>(data, l3, "IPv6 header")?;
    let word = u32::from_be_bytes([fixed[0], fixed[1], fixed[2], fixed[3]]);
    let payload_len = usize::from(u16::from_be_bytes([fixed[4], fixed[5]]));
    let mut src = [0u8; 16];
    src.copy_from_slice(&fixed[8..24]);
    let mut dst = [0u8; 16];
    dst.copy_from_slice(&fixed[24..40]);

    let mut next = fixed[6];
    let mut at = l3 + IPV6_HLEN;
    let mut extensions = Vec::new();
    let mut id = 0;
    let mut more_fragments = false;
    let mut fragment_offset = 0;
    let mut l4 = Some(at);
    loop {
        let ext = match next {
            proto::HOPOPTS | proto::DSTOPTS => {
                let [nh, len] = bytes::<2>(data, at, "IPv6 options header")?;
                let total = (usize::from(len) + 1) * 8;
                let body = slice(data, at + 2, total - 2, "IPv6 options header")?.to_vec();
                let ext = if next == proto::HOPOPTS {
                    Ipv6Ext::HopByHop(body)
                } else {
                    Ipv6Ext::DestinationOptions(body)
                };
                (nh, total, ext)
            }
            proto::ROUTING => {
                let [nh, len, routing_type, segments_left] =
                    bytes::<4>(data, at, "IPv6 routing header")?;
                let total = (usize::from(len) + 1) * 8;
                let body = slice(data, at + 4, total - 4, "IPv6 routing header")?.to_vec();
                let ext = Ipv6Ext::Routing {
                    routing_type,
                    segments_left,
                    data: body,
                };
                (nh, total, ext)
            }
            proto::FRAGMENT => {
                let raw = bytes::<8>(data, at, "IPv6 fragment header")?;
                let field = u16::from_be_bytes([raw[2], raw[3]]);
                let frag_id = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]);
                id = frag_id;
                more_fragments = field & 1 != 0;
                fragment_offset = field >> 3;
                let ext = Ipv6Ext::Fragment {
                    offset: fragment_offset,
                    more: more_fragments,
                    id: frag_id,
                };
                (raw[0], 8, ext)
            }
            _ => break,
        };
        let (nh, len, ext) = ext;
        extensions.push(ParsedExt { offset: at, ext });
        next = nh;
        at += len;
        l4 = Some(at);
        if fragment_offset != 0 {
            // A non-first fragment: what follows is not a header.
            l4 = None;
            break;
        }
    }
    let ip = IpHeader {
        version: IpVersion::V6,
        src: IpAddr::V6(Ipv6Addr::from(src)),
        dst: IpAddr::V6(Ipv6Addr::from(dst)),
        ttl: fixed[7],
        // Traffic class: the 8 bits after the version nibble.
        tos: u8::try_from((word >> 20) & 0xff).unwrap_or(0),
        protocol: next,
        header_len: at - l3,
        total_len: IPV6_HLEN + payload_len,
        checksum: None,
        id,
        dont_fragment: false,
        more_fragments,
        fragment_offset,
        options: Vec::new(),
        flow_label: word & 0xf_ffff,
        extensions,
    };
    Ok((ip, l4))
}

/// Parses the transport header at `l4`; returns it and the payload offset.
fn parse_transport(
    data: &[u8],
    l4: usize,
    protocol: u8,
    version: IpVersion,
) -> Result<(Option<Transport>, Option<usize>)> {
    let parsed = match (protocol, version) {
        (proto::TCP, _) => {
            let h = bytes::<TCP_HLEN>(data, l4, "TCP header")?;
            let header_len = usize::from(h[12] >> 4) * 4;
            ensure!(
                header_len >= TCP_HLEN,
                "TCP data offset is {} (header of {header_len} bytes), at least 5 required",
                h[12] >> 4
            );
            let options = slice(data, l4 + TCP_HLEN, header_len - TCP_HLEN, "TCP options")?;
            let tcp = TcpHeader {
                src_port: u16::from_be_bytes([h[0], h[1]]),
                dst_port: u16::from_be_bytes([h[2], h[3]]),
                seq: be32(&h, 4, "TCP header")?,
                ack: be32(&h, 8, "TCP header")?,
                header_len,
                flags: TcpFlags(h[13]),
                window: u16::from_be_bytes([h[14], h[15]]),
                checksum: u16::from_be_bytes([h[16], h[17]]),
                urgent: u16::from_be_bytes([h[18], h[19]]),
                options: options.to_vec(),
            };
            (Transport::Tcp(tcp), header_len)
        }
        (proto::UDP, _) => {
            let h = bytes::<UDP_HLEN>(data, l4, "UDP header")?;
            let udp = UdpHeader {
                src_port: u16::from_be_bytes([h[0], h[1]]),
                dst_port: u16::from_be_bytes([h[2], h[3]]),
                length: u16::from_be_bytes([h[4], h[5]]),
                checksum: u16::from_be_bytes([h[6], h[7]]),
            };
            (Transport::Udp(udp), UDP_HLEN)
        }
        (proto::ICMP, IpVersion::V4) | (proto::ICMPV6, IpVersion::V6) => {
            let h = bytes::<ICMP_HLEN>(data, l4, "ICMP header")?;
            let icmp = IcmpHeader {
                ty: h[0],
                code: h[1],
                checksum: u16::from_be_bytes([h[2], h[3]]),
                rest: [h[4], h[5], h[6], h[7]],
            };
            if version == IpVersion::V4 {
                (Transport::Icmp(icmp), ICMP_HLEN)
            } else {
                (Transport::Icmpv6(icmp), ICMP_HLEN)
            }
        }
        _ => return Ok((None, None)),
    };
    let (transport, len) = parsed;
    Ok((Some(transport), Some(l4 + len)))
}

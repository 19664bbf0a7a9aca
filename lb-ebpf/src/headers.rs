//! Wire headers and bounds-checked access to packet memory.
//!
//! Multi-byte fields are kept raw (network byte order in memory) and compared against raw
//! constants, so the fast path never byte-swaps.

use core::mem::size_of;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP_RAW: u16 = 0x0800u16.to_be();
pub const ETH_P_IPV6_RAW: u16 = 0x86ddu16.to_be();
pub const IPV4_HLEN_MIN: usize = 20;
pub const IPV6_HLEN: usize = 40;
pub const TCP_HLEN_MIN: usize = 20;
pub const UDP_HLEN: usize = 8;
/// Fragment offset and more-fragments bits of `frag_off` (raw).
pub const IP_FRAG_MASK_RAW: u16 = 0x3fffu16.to_be();
/// The fragment offset bits of `frag_off` (raw).
pub const IP_OFFSET_MASK_RAW: u16 = 0x1fffu16.to_be();

pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_ACK: u8 = 0x10;

/// IPv6 extension headers the parser walks (next-header values).
pub const NEXTHDR_HOP: u8 = 0;
pub const NEXTHDR_ROUTING: u8 = 43;
pub const NEXTHDR_FRAGMENT: u8 = 44;
pub const NEXTHDR_DEST: u8 = 60;
/// At most this many IPv6 extension headers are walked; a packet with more is passed.
pub const IPV6_MAX_EXT_HEADERS: usize = 4;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto: u16,
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub vhl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub saddr: u32,
    pub daddr: u32,
}

/// The fixed IPv6 header. Addresses are raw words (network byte order in memory), the
/// layout of `NetAddr`.
#[repr(C)]
pub struct Ipv6Hdr {
    /// Version (4 bits), traffic class (8), flow label (20).
    pub vtc_flow: u32,
    pub payload_len: u16,
    pub nexthdr: u8,
    pub hop_limit: u8,
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
}

/// The first 8 bytes of an IPv6 extension header (every one is at least that long). For a
/// routing header, bytes 2 and 3 are the routing type and the segments left.
#[repr(C)]
pub struct Ipv6ExtHdr {
    pub nexthdr: u8,
    /// Length in 8-byte units, not counting the first 8 bytes.
    pub hdrlen: u8,
    pub routing_type: u8,
    pub segments_left: u8,
    pub _rest: u32,
}

/// The first 20 bytes of a TCP header, with the flags byte split out.
#[repr(C)]
pub struct TcpHdr {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub doff_res: u8,
    pub flags: u8,
    pub window: u16,
    pub check: u16,
    pub urg: u16,
}

#[repr(C)]
pub struct UdpHdr {
    pub sport: u16,
    pub dport: u16,
    pub len: u16,
    pub check: u16,
}

/// Offsets of the checksum field inside the L4 header.
pub const TCP_CHECK_OFF: usize = 16;
pub const UDP_CHECK_OFF: usize = 6;

/// A pointer to a `T` at `offset` into `[data, data_end)`, if the whole `T` fits.
#[inline(always)]
pub fn ptr_at<T>(data: usize, data_end: usize, offset: usize) -> Option<*mut T> {
    let start = data + offset;
    if start + size_of::<T>() > data_end {
        return None;
    }
    Some(start as *mut T)
}

/// The parsed L3/L4 view of a TCP/UDP packet; `H` is the IP header type.
pub struct Packet<H> {
    pub ip: *mut H,
    /// The L4 header; at least `TCP_HLEN_MIN` (TCP) or `UDP_HLEN` (UDP) bytes are in bounds.
    pub l4: *mut u8,
    /// Offset of the L4 header from the start of the frame.
    pub l4_off: usize,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    /// Offset of the checksum field from the start of the L4 header.
    pub check_off: usize,
    /// IPv4: the first fragment of a fragmented datagram (more fragments follow; its L4
    /// header is here, the rest of the datagram is not).
    pub frag_first: bool,
}

impl<H> Clone for Packet<H> {
    #[inline(always)]
    fn clone(&self) -> Self {
        *self
    }
}

impl<H> Copy for Packet<H> {}

/// An IPv4 TCP/UDP packet (options allowed).
pub type Ipv4Packet = Packet<Ipv4Hdr>;
/// An IPv6 TCP/UDP packet (up to [`IPV6_MAX_EXT_HEADERS`] extension headers walked).
pub type Ipv6Packet = Packet<Ipv6Hdr>;

impl<H> Packet<H> {
    /// The same packet, the IP header seen as a `T` (only to what the parser checked).
    #[inline(always)]
    pub fn cast<T>(self) -> Packet<T> {
        Packet {
            ip: self.ip.cast(),
            l4: self.l4,
            l4_off: self.l4_off,
            proto: self.proto,
            sport: self.sport,
            dport: self.dport,
            tcp_flags: self.tcp_flags,
            check_off: self.check_off,
            frag_first: self.frag_first,
        }
    }

    /// The L4 destination port field.
    #[inline(always)]
    pub fn l4_dport(&self) -> *mut u16 {
        // SAFETY: offset 2..4 is inside the checked header.
        unsafe { self.l4.add(2).cast() }
    }
}

/// Why parsing stopped.
#[derive(Clone, Copy)]
pub enum ParseStop {
    /// `parse_ipv4` on a frame that is not IPv4.
    NotIpv4,
    /// `parse_ipv6` on a frame that is not IPv6.
    NotIpv6,
    Malformed,
    Fragment,
    /// IPv6: more extension headers than walked, or a routing header with segments left.
    ExtHeaders,
    /// Neither TCP nor UDP: the protocol number.
    OtherProto(u8),
}

/// The fixed part of a TCP or UDP header at `l4_off`.
struct L4Header {
    l4: *mut u8,
    sport: u16,
    dport: u16,
    tcp_flags: u8,
    check_off: usize,
    /// Bytes the L4 header (TCP: with options) or datagram (UDP) claims.
    min_len: usize,
}

/// Parses the fixed part of a TCP/UDP header. `udp_zero_csum_ok`: whether a UDP checksum of
/// 0 ("none") is allowed (IPv4), or malformed (IPv6).
#[inline(always)]
fn parse_l4(
    data: usize,
    data_end: usize,
    l4_off: usize,
    proto: u8,
    udp_zero_csum_ok: bool,
) -> Result<L4Header, ParseStop> {
    match proto {
        lb_common::IPPROTO_TCP => {
            let tcp: *mut TcpHdr = ptr_at(data, data_end, l4_off).ok_or(ParseStop::Malformed)?;
            // SAFETY: bounds checked by ptr_at.
            let (sport, dport, doff, flags) = unsafe {
                (
                    (*tcp).sport,
                    (*tcp).dport,
                    (*tcp).doff_res >> 4,
                    (*tcp).flags,
                )
            };
            if (doff as usize) * 4 < TCP_HLEN_MIN {
                return Err(ParseStop::Malformed);
            }
            Ok(L4Header {
                l4: tcp.cast::<u8>(),
                sport,
                dport,
                tcp_flags: flags,
                check_off: TCP_CHECK_OFF,
                min_len: (doff as usize) * 4,
            })
        }
        lb_common::IPPROTO_UDP => {
            let udp: *mut UdpHdr = ptr_at(data, data_end, l4_off).ok_or(ParseStop::Malformed)?;
            // SAFETY: bounds checked by ptr_at.
            let (sport, dport, len, check) = unsafe {
                (
                    (*udp).sport,
                    (*udp).dport,
                    u16::from_be((*udp).len),
                    (*udp).check,
                )
            };
            if (len as usize) < UDP_HLEN || (check == 0 && !udp_zero_csum_ok) {
                return Err(ParseStop::Malformed);
            }
            Ok(L4Header {
                l4: udp.cast::<u8>(),
                sport,
                dport,
                tcp_flags: 0,
                check_off: UDP_CHECK_OFF,
                min_len: len as usize,
            })
        }
        other => Err(ParseStop::OtherProto(other)),
    }
}

/// Parses Ethernet + IPv4 (with options) + the fixed part of TCP/UDP. `frame_len` is the
/// whole frame's length: `data_end - data` at XDP, `skb->len` at TC (where the payload may
/// sit outside the linear part that `data_end` bounds).
///
/// Every header is bounds-checked through its own pointer *before* any length field is
/// compared with the frame length: otherwise LLVM may drop a pointer check it can derive
/// from the length checks, and the verifier, which cannot, rejects the access.
#[inline(always)]
pub fn parse_ipv4(data: usize, data_end: usize, frame_len: usize) -> Result<Ipv4Packet, ParseStop> {
    let eth: *mut EthHdr = ptr_at(data, data_end, 0).ok_or(ParseStop::Malformed)?;
    // SAFETY: bounds checked by ptr_at.
    if unsafe { (*eth).proto } != ETH_P_IP_RAW {
        return Err(ParseStop::NotIpv4);
    }
    let ip: *mut Ipv4Hdr = ptr_at(data, data_end, ETH_HLEN).ok_or(ParseStop::Malformed)?;
    // SAFETY: bounds checked by ptr_at.
    let (vhl, frag_off, proto) = unsafe { ((*ip).vhl, (*ip).frag_off, (*ip).proto) };
    if vhl >> 4 != 4 {
        return Err(ParseStop::Malformed);
    }
    let ihl = ((vhl & 0x0f) as usize) * 4;
    if ihl < IPV4_HLEN_MIN {
        return Err(ParseStop::Malformed);
    }
    // A later fragment has no L4 header (see `crate::frag`); the first one does.
    if frag_off & IP_OFFSET_MASK_RAW != 0 {
        return Err(ParseStop::Fragment);
    }
    let frag_first = frag_off & IP_FRAG_MASK_RAW != 0;
    let l4_off = ETH_HLEN + ihl;
    let l4 = parse_l4(data, data_end, l4_off, proto, true)?;
    // Length fields against each other and the frame (after the pointer checks, see above).
    // A first fragment holds the L4 header but not the whole datagram a UDP length claims.
    let l4_min = if frag_first && proto == lb_common::IPPROTO_UDP {
        UDP_HLEN
    } else {
        l4.min_len
    };
    // SAFETY: `ip` was bounds checked.
    let tot_len = u16::from_be(unsafe { (*ip).tot_len }) as usize;
    if tot_len < ihl + l4_min || ETH_HLEN + tot_len > frame_len {
        return Err(ParseStop::Malformed);
    }
    Ok(Packet {
        ip,
        l4: l4.l4,
        l4_off,
        proto,
        sport: l4.sport,
        dport: l4.dport,
        tcp_flags: l4.tcp_flags,
        check_off: l4.check_off,
        frag_first,
    })
}

/// Parses Ethernet + IPv6 + up to [`IPV6_MAX_EXT_HEADERS`] extension headers (hop-by-hop,
/// routing without segments left, destination options) + the fixed part of TCP/UDP, with
/// the same rules as [`parse_ipv4`] (pointers checked before lengths; `frame_len` likewise).
///
/// Stops with `Fragment` at a fragment header (first fragment included: the stack
/// reassembles), with `ExtHeaders` when more extension headers follow than are walked or a
/// routing header has segments left (the destination address is not the final one, and the
/// L4 pseudo-header uses the final one), and with `Malformed` for UDP with a zero checksum
/// (forbidden over IPv6) or a zero payload length (jumbogram).
#[inline(always)]
pub fn parse_ipv6(data: usize, data_end: usize, frame_len: usize) -> Result<Ipv6Packet, ParseStop> {
    let eth: *mut EthHdr = ptr_at(data, data_end, 0).ok_or(ParseStop::Malformed)?;
    // SAFETY: bounds checked by ptr_at.
    if unsafe { (*eth).proto } != ETH_P_IPV6_RAW {
        return Err(ParseStop::NotIpv6);
    }
    let ip: *mut Ipv6Hdr = ptr_at(data, data_end, ETH_HLEN).ok_or(ParseStop::Malformed)?;
    // SAFETY: bounds checked by ptr_at.
    let (version, mut next) = unsafe { (*ip.cast::<u8>() >> 4, (*ip).nexthdr) };
    if version != 6 {
        return Err(ParseStop::Malformed);
    }
    let mut l4_off = ETH_HLEN + IPV6_HLEN;
    let mut walked = 0;
    while walked < IPV6_MAX_EXT_HEADERS {
        match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {}
            NEXTHDR_FRAGMENT => return Err(ParseStop::Fragment),
            _ => break,
        }
        let ext: *mut Ipv6ExtHdr = ptr_at(data, data_end, l4_off).ok_or(ParseStop::Malformed)?;
        // SAFETY: bounds checked by ptr_at.
        let (n, len, segments_left) =
            unsafe { ((*ext).nexthdr, (*ext).hdrlen, (*ext).segments_left) };
        if next == NEXTHDR_ROUTING && segments_left != 0 {
            return Err(ParseStop::ExtHeaders);
        }
        next = n;
        l4_off += (len as usize + 1) * 8;
        walked += 1;
    }
    match next {
        NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => return Err(ParseStop::ExtHeaders),
        NEXTHDR_FRAGMENT => return Err(ParseStop::Fragment),
        _ => {}
    }
    let l4 = parse_l4(data, data_end, l4_off, next, false)?;
    // Length fields against each other and the frame (after the pointer checks, see above).
    // SAFETY: `ip` was bounds checked.
    let payload_len = u16::from_be(unsafe { (*ip).payload_len }) as usize;
    let ext_len = l4_off - (ETH_HLEN + IPV6_HLEN);
    if payload_len < ext_len + l4.min_len || ETH_HLEN + IPV6_HLEN + payload_len > frame_len {
        return Err(ParseStop::Malformed);
    }
    Ok(Packet {
        ip,
        l4: l4.l4,
        l4_off,
        proto: next,
        sport: l4.sport,
        dport: l4.dport,
        tcp_flags: l4.tcp_flags,
        check_off: l4.check_off,
        frag_first: false,
    })
}

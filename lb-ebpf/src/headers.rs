//! Wire headers and bounds-checked access to packet memory.
//!
//! Multi-byte fields are kept raw (network byte order in memory) and compared against raw
//! constants, so the fast path never byte-swaps.

use core::mem::size_of;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP_RAW: u16 = 0x0800u16.to_be();
pub const IPV4_HLEN_MIN: usize = 20;
pub const TCP_HLEN_MIN: usize = 20;
pub const UDP_HLEN: usize = 8;
/// Fragment offset and more-fragments bits of `frag_off` (raw).
pub const IP_FRAG_MASK_RAW: u16 = 0x3fffu16.to_be();

pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_ACK: u8 = 0x10;

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

/// The parsed L3/L4 view of an IPv4 TCP/UDP packet.
#[derive(Clone, Copy)]
pub struct Ipv4Packet {
    pub ip: *mut Ipv4Hdr,
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
}

impl Ipv4Packet {
    /// The L4 checksum field (inside the bounds-checked L4 header).
    #[inline(always)]
    pub fn l4_check(&self) -> *mut u16 {
        // SAFETY: check_off + 2 <= the checked header length for both protocols.
        unsafe { self.l4.add(self.check_off).cast() }
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
    NotIpv4,
    Malformed,
    Fragment,
    /// Neither TCP nor UDP: the protocol number.
    OtherProto(u8),
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
    if frag_off & IP_FRAG_MASK_RAW != 0 {
        return Err(ParseStop::Fragment);
    }
    let l4_off = ETH_HLEN + ihl;
    let (l4, sport, dport, tcp_flags, check_off, l4_min) = match proto {
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
            (
                tcp.cast::<u8>(),
                sport,
                dport,
                flags,
                TCP_CHECK_OFF,
                (doff as usize) * 4,
            )
        }
        lb_common::IPPROTO_UDP => {
            let udp: *mut UdpHdr = ptr_at(data, data_end, l4_off).ok_or(ParseStop::Malformed)?;
            // SAFETY: bounds checked by ptr_at.
            let (sport, dport, len) =
                unsafe { ((*udp).sport, (*udp).dport, u16::from_be((*udp).len)) };
            if (len as usize) < UDP_HLEN {
                return Err(ParseStop::Malformed);
            }
            (
                udp.cast::<u8>(),
                sport,
                dport,
                0,
                UDP_CHECK_OFF,
                len as usize,
            )
        }
        other => return Err(ParseStop::OtherProto(other)),
    };
    // Length fields against each other and the frame (after the pointer checks, see above).
    // SAFETY: `ip` was bounds checked.
    let tot_len = u16::from_be(unsafe { (*ip).tot_len }) as usize;
    if tot_len < ihl + l4_min || ETH_HLEN + tot_len > frame_len {
        return Err(ParseStop::Malformed);
    }
    Ok(Ipv4Packet {
        ip,
        l4,
        l4_off,
        proto,
        sport,
        dport,
        tcp_flags,
        check_off,
    })
}

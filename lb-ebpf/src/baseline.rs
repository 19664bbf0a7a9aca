//! The benchmarks' baseline: the least an XDP load balancer must do for every packet, parse
//! Ethernet + IPv4 + the TCP/UDP ports with every access bounds-checked, then pass. The
//! per-packet cost of the real paths is reported as a ratio to this program's
//! (`cargo xtask bench datapath`).
//!
//! Every header field is read with a volatile load: the result is not used, and plain loads
//! would let LLVM delete the whole parse. The loads are the same single instructions as
//! `headers::parse_ipv4`'s.

use core::{mem::size_of, ptr::read_volatile};

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};

const ETH_HLEN: usize = 14;
const ETH_P_IP_RAW: u16 = 0x0800u16.to_be();
const IPV4_HLEN_MIN: usize = 20;
const IP_FRAG_MASK_RAW: u16 = 0x3fffu16.to_be();
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

#[repr(C)]
#[allow(dead_code)] // layout only: not every field is read
struct Eth {
    dst: [u8; 6],
    src: [u8; 6],
    proto: u16,
}

#[repr(C)]
#[allow(dead_code)] // layout only: not every field is read
struct Ipv4 {
    vhl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frag_off: u16,
    ttl: u8,
    proto: u8,
    check: u16,
    saddr: u32,
    daddr: u32,
}

/// The fixed TCP header (20 bytes); only the ports are read.
#[repr(C)]
#[allow(dead_code)] // layout only: not every field is read
struct Tcp {
    sport: u16,
    dport: u16,
    rest: [u32; 4],
}

#[repr(C)]
#[allow(dead_code)] // layout only: not every field is read
struct Udp {
    sport: u16,
    dport: u16,
    len: u16,
    check: u16,
}

/// A pointer to a `T` at `offset` into `[data, data_end)`, if the whole `T` fits.
#[inline(always)]
fn ptr_at<T>(data: usize, data_end: usize, offset: usize) -> Option<*const T> {
    let start = data + offset;
    if start + size_of::<T>() > data_end {
        return None;
    }
    Some(start as *const T)
}

/// Parses the frame up to the L4 ports: `(saddr, daddr, proto, sport, dport)` (raw, network
/// order), or `None` for anything but an unfragmented IPv4 TCP/UDP packet.
#[inline(always)]
pub(crate) fn parse(data: usize, data_end: usize) -> Option<(u32, u32, u8, u16, u16)> {
    let eth: *const Eth = ptr_at(data, data_end, 0)?;
    // SAFETY (every read below): the pointer was bounds checked by ptr_at.
    if unsafe { read_volatile(&raw const (*eth).proto) } != ETH_P_IP_RAW {
        return None;
    }
    let ip: *const Ipv4 = ptr_at(data, data_end, ETH_HLEN)?;
    let vhl = unsafe { read_volatile(&raw const (*ip).vhl) };
    if vhl >> 4 != 4 {
        return None;
    }
    let ihl = ((vhl & 0x0f) as usize) * 4;
    if ihl < IPV4_HLEN_MIN {
        return None;
    }
    if unsafe { read_volatile(&raw const (*ip).frag_off) } & IP_FRAG_MASK_RAW != 0 {
        return None;
    }
    let (saddr, daddr, proto) = unsafe {
        (
            read_volatile(&raw const (*ip).saddr),
            read_volatile(&raw const (*ip).daddr),
            read_volatile(&raw const (*ip).proto),
        )
    };
    let l4_off = ETH_HLEN + ihl;
    let (sport, dport) = match proto {
        IPPROTO_TCP => {
            let tcp: *const Tcp = ptr_at(data, data_end, l4_off)?;
            unsafe {
                (
                    read_volatile(&raw const (*tcp).sport),
                    read_volatile(&raw const (*tcp).dport),
                )
            }
        }
        IPPROTO_UDP => {
            let udp: *const Udp = ptr_at(data, data_end, l4_off)?;
            unsafe {
                (
                    read_volatile(&raw const (*udp).sport),
                    read_volatile(&raw const (*udp).dport),
                )
            }
        }
        _ => return None,
    };
    Some((saddr, daddr, proto, sport, dport))
}

/// Parses the packet and passes it, whatever it is.
#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let _ = parse(ctx.data(), ctx.data_end());
    xdp_action::XDP_PASS
}

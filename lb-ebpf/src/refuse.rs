//! Refusal of flows to a service without a usable endpoint, as kube-proxy does: a TCP RST
//! or an ICMP / ICMPv6 port unreachable, sent back out of the interface it came in on
//! (XDP_TX, or at TC a redirect to the interface's egress), so clients fail fast instead of
//! timing out. Rate-limited per CPU, one budget for both families. Replies are built in
//! place with complete checksums (at TC a partially checksummed skb keeps its checksum
//! marks, which a receiver on the same host trusts: such packets only come from there).
//!
//! A refusal goes to the packet's source, so it is never sent where a forged source would
//! aim it at many hosts or at the node itself: a source that is broadcast (255.255.255.255),
//! multicast (224.0.0.0/4, ff00::/8), unspecified, loopback, IPv4-mapped on IPv6, or one of
//! the node's own addresses (`NODE_ADDRS`) gets nothing; the packet is dropped and counted
//! as [`Reason::DropRefusalBadDestination`]. Directed broadcasts of attached subnets are not
//! recognised (the program does not know the prefixes).

use aya_ebpf::helpers::bpf_ktime_get_ns;
use lb_common::{NetAddr, Reason, csum};

use crate::{
    frame::Frame,
    headers::{
        ETH_HLEN, EthHdr, IPV4_HLEN_MIN, IPV6_HLEN, Ipv4Hdr, Ipv4Packet, Ipv6Hdr, Ipv6Packet,
        TcpHdr, ptr_at,
    },
    maps::{CONFIG, NODE_ADDRS, REFUSALS},
};

const TCP_FLAG_FIN: u8 = 0x01;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_RST: u8 = 0x04;
const TCP_FLAG_ACK: u8 = 0x10;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const IP_DF_RAW: u16 = 0x4000u16.to_be();
/// ICMP header + the quoted IPv4 header + 8 bytes of the original datagram.
const ICMP_QUOTE: usize = 8 + IPV4_HLEN_MIN + 8;
/// The same with a whole (option-less) TCP header quoted: at TC, the quote of a TCP segment
/// whose checksum is left to offload must still hold its checksum field (the kernel will
/// not cut an skb before it).
const ICMP_QUOTE_TCP: usize = 8 + IPV4_HLEN_MIN + 20;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PORT_UNREACH: u8 = 4;
/// ICMPv6 header + the quoted IPv6 header + 8 bytes of the original datagram.
const ICMPV6_QUOTE: usize = 8 + IPV6_HLEN + 8;
/// Version 6, traffic class 0, flow label 0 (raw).
const IPV6_VTC_FLOW_RAW: u32 = 0x6000_0000u32.to_be();
const OUT_HOP_LIMIT: u8 = 64;

/// Whether a refusal may be sent to the IPv4 address `raw` (network byte order in memory).
#[inline(always)]
fn refusable_v4(raw: u32) -> bool {
    let first = raw.to_ne_bytes()[0];
    if raw == 0 || raw == u32::MAX || first & 0xf0 == 0xe0 || first == 127 {
        return false;
    }
    // SAFETY: the value is plain data and not kept.
    unsafe { NODE_ADDRS.get(&NetAddr::from_v4_raw(raw)) }.is_none()
}

/// Whether a refusal may be sent to the IPv6 address `words` (raw).
#[inline(always)]
fn refusable_v6(words: [u32; 4]) -> bool {
    let addr = NetAddr { words };
    let loopback = words[0] == 0 && words[1] == 0 && words[2] == 0 && words[3] == 1u32.to_be();
    if addr == NetAddr::UNSPECIFIED || loopback || words[0].to_ne_bytes()[0] == 0xff || addr.is_v4()
    {
        return false;
    }
    // SAFETY: the value is plain data and not kept.
    unsafe { NODE_ADDRS.get(&addr) }.is_none()
}

/// Takes one refusal from this CPU's budget for the current second.
#[inline(always)]
fn budget() -> bool {
    let limit = CONFIG.get(0).map(|c| c.refusals_per_sec).unwrap_or(0) as u64;
    let Some(w) = REFUSALS.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU element, only this CPU touches it while the program runs.
    let w = unsafe { &mut *w };
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(w.start_ns) >= 1_000_000_000 {
        w.start_ns = now;
        w.sent = 0;
    }
    if w.sent >= limit {
        return false;
    }
    w.sent += 1;
    true
}

/// Cuts the frame (a reply built in place) to `len` bytes and sends it back out of the
/// interface it came in on. The caller uses no packet pointer afterwards.
#[inline(always)]
fn transmit<C: Frame>(ctx: &C, len: usize) -> Result<u32, Reason> {
    ctx.truncate(len).map_err(|_| Reason::DropNoBackend)?;
    Ok(ctx.tx())
}

/// Makes `grow` bytes of room after the Ethernet header for the outer headers of an ICMP
/// error and turns the Ethernet header into the reply's (addresses swapped). Returns the
/// new `(data, data_end)`; every other packet pointer must be derived again from them.
#[inline(always)]
fn prepend_reply_eth<C: Frame>(ctx: &C, grow: usize) -> Result<(usize, usize), Reason> {
    ctx.insert_after_eth(grow, false)
        .map_err(|_| Reason::DropNoBackend)?;
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let eth: *mut EthHdr = ptr_at(data, data_end, 0).ok_or(Reason::DropNoBackend)?;
    // SAFETY: bounds checked just above.
    swap_macs(unsafe { &mut *eth });
    Ok((data, data_end))
}

/// Sum of `N` raw 16-bit words at `p` (bounds already checked by the caller).
#[inline(always)]
unsafe fn sum_words<const N: usize>(p: *const u16) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i < N {
        // SAFETY: the caller guarantees N words are in bounds.
        sum += unsafe { *p.add(i) } as u32;
        i += 1;
    }
    sum
}

#[inline(always)]
fn swap_macs(eth: &mut EthHdr) {
    let dst = eth.dst;
    eth.dst = eth.src;
    eth.src = dst;
}

#[inline(always)]
fn outer_ip(ip: &mut Ipv4Hdr, src: u32, dst: u32, proto: u8, tot_len: u16) {
    ip.vhl = 0x45;
    ip.tos = 0;
    ip.tot_len = tot_len.to_be();
    ip.id = 0;
    ip.frag_off = IP_DF_RAW;
    ip.ttl = OUT_HOP_LIMIT;
    ip.proto = proto;
    ip.check = 0;
    ip.saddr = src;
    ip.daddr = dst;
    // SAFETY: the header is 20 bytes, 10 words, all in bounds.
    ip.check = !csum::fold(unsafe { sum_words::<10>((ip as *const Ipv4Hdr).cast()) });
}

/// A fresh IPv6 header (no extension headers) from `src` to `dst`.
#[inline(always)]
fn outer_ipv6(ip: &mut Ipv6Hdr, src: [u32; 4], dst: [u32; 4], nexthdr: u8, payload_len: u16) {
    ip.vtc_flow = IPV6_VTC_FLOW_RAW;
    ip.payload_len = payload_len.to_be();
    ip.nexthdr = nexthdr;
    ip.hop_limit = OUT_HOP_LIMIT;
    ip.saddr = src;
    ip.daddr = dst;
}

/// Sum of the raw 16-bit words of the IPv6 pseudo-header (RFC 8200 section 8.1).
#[inline(always)]
fn pseudo_ipv6(src: &[u32; 4], dst: &[u32; 4], nexthdr: u8, len: u16) -> u32 {
    let mut sum = (nexthdr as u16).to_be() as u32 + len.to_be() as u32;
    let mut i = 0;
    while i < 4 {
        sum += (src[i] & 0xffff) + (src[i] >> 16) + (dst[i] & 0xffff) + (dst[i] >> 16);
        i += 1;
    }
    sum
}

/// The main path found no usable backend for this packet: parses it again (beside the main
/// path's stack frame) and refuses it, counting how.
#[inline(never)]
pub fn packet<C: Frame>(ctx: &C) -> Result<u32, Reason> {
    let (data, data_end, len) = (ctx.data(), ctx.data_end(), ctx.frame_len());
    let (action, tcp) = match crate::headers::parse_ipv4(data, data_end, len) {
        Ok(p) => (refuse(ctx, &p)?, p.proto == lb_common::IPPROTO_TCP),
        Err(crate::headers::ParseStop::NotIpv4) => {
            let p = crate::headers::parse_ipv6(data, data_end, len)
                .map_err(|_| Reason::DropNoBackend)?;
            (refuse6(ctx, &p)?, p.proto == lb_common::IPPROTO_TCP)
        }
        Err(_) => return Err(Reason::DropNoBackend),
    };
    crate::stats::count(if tcp {
        Reason::TxRefuseTcpRst
    } else {
        Reason::TxRefuseIcmpUnreachable
    });
    Ok(action)
}

/// Answers a packet to a frontend without usable backend. `Ok(XDP_TX)` with the reply in
/// place, or `Err(reason)` to drop it.
#[inline(always)]
pub fn refuse<C: Frame>(ctx: &C, pkt: &Ipv4Packet) -> Result<u32, Reason> {
    // Replies are built for option-less IPv4 headers only (the common case by far).
    if pkt.l4_off != ETH_HLEN + IPV4_HLEN_MIN {
        return Err(Reason::DropNoBackend);
    }
    if pkt.proto == lb_common::IPPROTO_TCP && pkt.tcp_flags & TCP_FLAG_RST != 0 {
        return Err(Reason::DropNoBackend);
    }
    // SAFETY: the parser checked that the IPv4 header is in bounds.
    if !refusable_v4(unsafe { (*pkt.ip).saddr }) {
        return Err(Reason::DropRefusalBadDestination);
    }
    if pkt.proto == lb_common::IPPROTO_TCP {
        if !budget() {
            return Err(Reason::DropRefusalRateLimited);
        }
        tcp_rst(ctx, pkt)
    } else {
        if !budget() {
            return Err(Reason::DropRefusalRateLimited);
        }
        icmp_unreachable::<C, { ICMP_QUOTE / 2 }>(ctx, ICMP_PORT_UNREACH, 0)
    }
}

/// RFC 1191 "fragmentation needed" with the next-hop MTU `mtu`, back to the sender of an
/// IPv4 packet (no options) that does not fit once encapsulated: the sender lowers its path
/// MTU. Under the same destination rules and budget as refusals.
#[inline(always)]
pub fn frag_needed<C: Frame>(ctx: &C, mtu: u16) -> Result<u32, Reason> {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let ip: *mut Ipv4Hdr = ptr_at(data, data_end, ETH_HLEN).ok_or(Reason::PassMalformed)?;
    // SAFETY: bounds checked by ptr_at.
    let (vhl, saddr, proto) = unsafe { ((*ip).vhl, (*ip).saddr, (*ip).proto) };
    if vhl != 0x45 {
        return Err(Reason::DropNoBackend);
    }
    if !refusable_v4(saddr) {
        return Err(Reason::DropRefusalBadDestination);
    }
    if !budget() {
        return Err(Reason::DropRefusalRateLimited);
    }
    if C::TC && proto == lb_common::IPPROTO_TCP {
        icmp_unreachable::<C, { ICMP_QUOTE_TCP / 2 }>(ctx, ICMP_FRAG_NEEDED, mtu)
    } else {
        icmp_unreachable::<C, { ICMP_QUOTE / 2 }>(ctx, ICMP_FRAG_NEEDED, mtu)
    }
}

/// RFC 9293 reset generation: acknowledge what the segment occupied, or reuse its ACK.
#[inline(always)]
fn tcp_rst<C: Frame>(ctx: &C, pkt: &Ipv4Packet) -> Result<u32, Reason> {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let eth: *mut EthHdr = ptr_at(data, data_end, 0).ok_or(Reason::DropNoBackend)?;
    let ip: *mut Ipv4Hdr = ptr_at(data, data_end, ETH_HLEN).ok_or(Reason::DropNoBackend)?;
    let tcp: *mut TcpHdr =
        ptr_at(data, data_end, ETH_HLEN + IPV4_HLEN_MIN).ok_or(Reason::DropNoBackend)?;
    // SAFETY: all three headers were bounds checked just above.
    unsafe {
        let (saddr, daddr) = ((*ip).saddr, (*ip).daddr);
        let tot_len = u16::from_be((*ip).tot_len) as u32;
        let doff = ((*tcp).doff_res >> 4) as u32 * 4;
        let seg_len = tot_len.saturating_sub(IPV4_HLEN_MIN as u32 + doff)
            + (pkt.tcp_flags & TCP_FLAG_SYN != 0) as u32
            + (pkt.tcp_flags & TCP_FLAG_FIN != 0) as u32;
        let (seq, ack, flags) = if pkt.tcp_flags & TCP_FLAG_ACK != 0 {
            ((*tcp).ack, 0, TCP_FLAG_RST)
        } else {
            (
                0,
                u32::from_be((*tcp).seq).wrapping_add(seg_len).to_be(),
                TCP_FLAG_RST | TCP_FLAG_ACK,
            )
        };
        swap_macs(&mut *eth);
        outer_ip(&mut *ip, daddr, saddr, lb_common::IPPROTO_TCP, 40);
        let t = &mut *tcp;
        let (sport, dport) = (t.sport, t.dport);
        t.sport = dport;
        t.dport = sport;
        t.seq = seq;
        t.ack = ack;
        t.doff_res = 5 << 4;
        t.flags = flags;
        t.window = 0;
        t.check = 0;
        t.urg = 0;
        // Pseudo-header: addresses, protocol, TCP length (20).
        let pseudo = (daddr & 0xffff)
            + (daddr >> 16)
            + (saddr & 0xffff)
            + (saddr >> 16)
            + (lb_common::IPPROTO_TCP as u16).to_be() as u32
            + 20u16.to_be() as u32;
        t.check = !csum::fold(pseudo + sum_words::<10>((tcp as *const TcpHdr).cast()));
    }
    transmit(ctx, ETH_HLEN + 40)
}

/// RFC 792 destination unreachable (`code`; `mtu`: the next-hop MTU of "fragmentation
/// needed", else 0): outer IPv4 + ICMP + the original IPv4 header and the first bytes of
/// its datagram, `W` 16-bit words in all after the outer IPv4 header ([`ICMP_QUOTE`]: 8
/// bytes of the datagram). The original headers already sit where the quote goes once 28
/// bytes are prepended, so nothing is copied but the Ethernet header.
#[inline(always)]
fn icmp_unreachable<C: Frame, const W: usize>(
    ctx: &C,
    code: u8,
    mtu: u16,
) -> Result<u32, Reason> {
    let (data, data_end) = prepend_reply_eth(ctx, IPV4_HLEN_MIN + 8)?;
    let new_len = ETH_HLEN + IPV4_HLEN_MIN + 2 * W;
    let ip: *mut Ipv4Hdr = ptr_at(data, data_end, ETH_HLEN).ok_or(Reason::DropNoBackend)?;
    let quoted: *mut Ipv4Hdr =
        ptr_at(data, data_end, ETH_HLEN + IPV4_HLEN_MIN + 8).ok_or(Reason::DropNoBackend)?;
    let icmp: *mut [u16; W] =
        ptr_at(data, data_end, ETH_HLEN + IPV4_HLEN_MIN).ok_or(Reason::DropNoBackend)?;
    // SAFETY: every pointer was bounds checked after the head adjustment.
    unsafe {
        let (saddr, daddr) = ((*quoted).saddr, (*quoted).daddr);
        outer_ip(
            &mut *ip,
            daddr,
            saddr,
            lb_common::IPPROTO_ICMP,
            (IPV4_HLEN_MIN + 2 * W) as u16,
        );
        let words = &mut *icmp;
        words[0] = u16::from_ne_bytes([ICMP_DEST_UNREACH, code]);
        words[1] = 0;
        words[2] = 0;
        words[3] = mtu.to_be();
        words[1] = !csum::fold(sum_words::<W>(icmp.cast()));
    }
    transmit(ctx, new_len)
}

/// [`refuse`] for IPv6: a TCP RST or an ICMPv6 port unreachable, for packets without
/// extension headers (others are dropped and counted).
#[inline(always)]
pub fn refuse6<C: Frame>(ctx: &C, pkt: &Ipv6Packet) -> Result<u32, Reason> {
    if pkt.l4_off != ETH_HLEN + IPV6_HLEN {
        return Err(Reason::DropNoBackend);
    }
    if pkt.proto == lb_common::IPPROTO_TCP && pkt.tcp_flags & TCP_FLAG_RST != 0 {
        return Err(Reason::DropNoBackend);
    }
    // SAFETY: the parser checked that the IPv6 header is in bounds.
    if !refusable_v6(unsafe { (*pkt.ip).saddr }) {
        return Err(Reason::DropRefusalBadDestination);
    }
    if pkt.proto == lb_common::IPPROTO_TCP {
        if !budget() {
            return Err(Reason::DropRefusalRateLimited);
        }
        tcp_rst6(ctx, pkt)
    } else {
        if !budget() {
            return Err(Reason::DropRefusalRateLimited);
        }
        icmp6_port_unreachable(ctx)
    }
}

/// [`tcp_rst`] over IPv6: the same segment, the IPv6 pseudo-header in its checksum.
#[inline(always)]
fn tcp_rst6<C: Frame>(ctx: &C, pkt: &Ipv6Packet) -> Result<u32, Reason> {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let eth: *mut EthHdr = ptr_at(data, data_end, 0).ok_or(Reason::DropNoBackend)?;
    let ip: *mut Ipv6Hdr = ptr_at(data, data_end, ETH_HLEN).ok_or(Reason::DropNoBackend)?;
    let tcp: *mut TcpHdr =
        ptr_at(data, data_end, ETH_HLEN + IPV6_HLEN).ok_or(Reason::DropNoBackend)?;
    // SAFETY: all three headers were bounds checked just above.
    unsafe {
        let (saddr, daddr) = ((*ip).saddr, (*ip).daddr);
        let payload_len = u16::from_be((*ip).payload_len) as u32;
        let doff = ((*tcp).doff_res >> 4) as u32 * 4;
        let seg_len = payload_len.saturating_sub(doff)
            + (pkt.tcp_flags & TCP_FLAG_SYN != 0) as u32
            + (pkt.tcp_flags & TCP_FLAG_FIN != 0) as u32;
        let (seq, ack, flags) = if pkt.tcp_flags & TCP_FLAG_ACK != 0 {
            ((*tcp).ack, 0, TCP_FLAG_RST)
        } else {
            (
                0,
                u32::from_be((*tcp).seq).wrapping_add(seg_len).to_be(),
                TCP_FLAG_RST | TCP_FLAG_ACK,
            )
        };
        swap_macs(&mut *eth);
        outer_ipv6(&mut *ip, daddr, saddr, lb_common::IPPROTO_TCP, 20);
        let t = &mut *tcp;
        let (sport, dport) = (t.sport, t.dport);
        t.sport = dport;
        t.dport = sport;
        t.seq = seq;
        t.ack = ack;
        t.doff_res = 5 << 4;
        t.flags = flags;
        t.window = 0;
        t.check = 0;
        t.urg = 0;
        let pseudo = pseudo_ipv6(&daddr, &saddr, lb_common::IPPROTO_TCP, 20);
        t.check = !csum::fold(pseudo + sum_words::<10>((tcp as *const TcpHdr).cast()));
    }
    transmit(ctx, ETH_HLEN + IPV6_HLEN + 20)
}

/// RFC 4443 destination unreachable, code 4 (port unreachable): outer IPv6 + ICMPv6 + the
/// original IPv6 header and the first 8 bytes after it. As for IPv4, the original headers
/// already sit where the quote goes once 48 bytes are prepended.
#[inline(always)]
fn icmp6_port_unreachable<C: Frame>(ctx: &C) -> Result<u32, Reason> {
    let (data, data_end) = prepend_reply_eth(ctx, IPV6_HLEN + 8)?;
    let new_len = ETH_HLEN + IPV6_HLEN + ICMPV6_QUOTE;
    let ip: *mut Ipv6Hdr = ptr_at(data, data_end, ETH_HLEN).ok_or(Reason::DropNoBackend)?;
    let quoted: *mut Ipv6Hdr =
        ptr_at(data, data_end, ETH_HLEN + IPV6_HLEN + 8).ok_or(Reason::DropNoBackend)?;
    let icmp: *mut [u16; ICMPV6_QUOTE / 2] =
        ptr_at(data, data_end, ETH_HLEN + IPV6_HLEN).ok_or(Reason::DropNoBackend)?;
    // SAFETY: every pointer was bounds checked after the head adjustment. The old Ethernet
    // header overlaps the new IPv6 and ICMPv6 headers: it is read before they are written.
    unsafe {
        let (saddr, daddr) = ((*quoted).saddr, (*quoted).daddr);
        outer_ipv6(
            &mut *ip,
            daddr,
            saddr,
            lb_common::IPPROTO_ICMPV6,
            ICMPV6_QUOTE as u16,
        );
        let words = &mut *icmp;
        words[0] = u16::from_ne_bytes([ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH]);
        words[1] = 0;
        words[2] = 0;
        words[3] = 0;
        let pseudo = pseudo_ipv6(
            &daddr,
            &saddr,
            lb_common::IPPROTO_ICMPV6,
            ICMPV6_QUOTE as u16,
        );
        words[1] = !csum::fold(pseudo + sum_words::<{ ICMPV6_QUOTE / 2 }>(icmp.cast()));
    }
    transmit(ctx, new_len)
}

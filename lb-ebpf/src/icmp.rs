//! ICMP errors about translated flows (destination unreachable, incl. fragmentation needed,
//! and time exceeded), so path MTU discovery works through a NodePort or VIP.
//!
//! - Inbound (XDP): a router between node and client reports a problem with a reply the
//!   client never got; the error is addressed to the frontend and quotes frontend -> client.
//!   It is sent on to the backend, quoting backend -> client.
//! - Outbound (TC): an error about a packet the client sent (from the backend, or from the
//!   node itself, e.g. fragmentation needed on the pod link) quotes client -> backend. It
//!   leaves quoting client -> frontend, and with the frontend as source if the backend sent it.
//!
//! Only option-less outer and quoted IPv4 headers are translated; anything else passes.
//! ICMPv6 (destination unreachable, packet too big, time exceeded) is translated the same
//! way, for outer and quoted IPv6 headers without extension headers; its checksum covers the
//! pseudo-header, so outer address changes are folded into it too.

use aya_ebpf::{bindings::BPF_F_PSEUDO_HDR, programs::TcContext};
use lb_common::{
    FlowKey, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, NetAddr, NetPort, Reason, csum, dir,
};

use crate::{
    conntrack, forward,
    frame::Frame,
    headers::{ETH_HLEN, EthHdr, IPV4_HLEN_MIN, IPV6_HLEN, Ipv4Hdr, Ipv6Hdr, ptr_at},

};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;

/// The ICMP header with the quoted IPv4 header and the quoted datagram's first 8 bytes.
#[repr(C)]
struct IcmpError {
    ty: u8,
    code: u8,
    check: u16,
    rest: u32,
    quoted: Ipv4Hdr,
    q_sport: u16,
    q_dport: u16,
    /// UDP: length; TCP: high half of the sequence number.
    q_word2: u16,
    /// UDP: checksum; TCP: low half of the sequence number.
    q_word3: u16,
}

const ICMP_OFF: usize = ETH_HLEN + IPV4_HLEN_MIN;

#[inline(always)]
fn is_error(ty: u8) -> bool {
    ty == ICMP_DEST_UNREACH || ty == ICMP_TIME_EXCEEDED
}

/// Inbound translation at XDP or TC ingress (in place: an ICMP checksum has no
/// pseudo-header, and errors are never sent with partial checksums); `Err` passes the
/// packet untouched, counting the reason.
#[inline(always)]
pub fn translate_in<C: Frame>(ctx: &C) -> Result<u32, Reason> {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let ip: *mut Ipv4Hdr = ptr_at(data, data_end, ETH_HLEN).ok_or(Reason::PassMalformed)?;
    let e: *mut IcmpError = ptr_at(data, data_end, ICMP_OFF).ok_or(Reason::PassNotOurs)?;
    // SAFETY: both pointers were bounds checked; nothing resizes the packet.
    unsafe {
        let (ip, e) = (&mut *ip, &mut *e);
        if ip.vhl != 0x45 || !is_error(e.ty) || e.quoted.vhl != 0x45 {
            return Err(Reason::PassNotOurs);
        }
        let proto = e.quoted.proto;
        if proto != IPPROTO_TCP && proto != IPPROTO_UDP || ip.daddr != e.quoted.saddr {
            return Err(Reason::PassNotOurs);
        }
        // The quoted packet is frontend -> client; its flow is client -> frontend.
        let flow = FlowKey {
            src: NetAddr::from_v4_raw(e.quoted.daddr),
            dst: NetAddr::from_v4_raw(e.quoted.saddr),
            sport: NetPort(e.q_dport),
            dport: NetPort(e.q_sport),
            proto,
            dir: dir::FORWARD,
            _pad: [0; 2],
        };
        let backend = conntrack::translated(&flow).ok_or(Reason::PassNotOurs)?;
        let (old_addr, new_addr) = (e.quoted.saddr, backend.addr.v4_raw());
        let (old_port, new_port) = (e.q_sport, backend.port.raw());

        ip.daddr = new_addr;
        ip.check = csum::update32(ip.check, old_addr, new_addr);

        let mut icmp_check = e.check;
        let old_qcheck = e.quoted.check;
        e.quoted.saddr = new_addr;
        e.quoted.check = csum::update32(old_qcheck, old_addr, new_addr);
        icmp_check = csum::update32(icmp_check, old_addr, new_addr);
        icmp_check = csum::update16(icmp_check, old_qcheck, e.quoted.check);
        e.q_sport = new_port;
        icmp_check = csum::update16(icmp_check, old_port, new_port);
        if proto == IPPROTO_UDP && e.q_word3 != 0 {
            let old = e.q_word3;
            let mut c = csum::update32(old, old_addr, new_addr);
            c = csum::udp_finish(csum::update16(c, old_port, new_port));
            e.q_word3 = c;
            icmp_check = csum::update16(icmp_check, old, c);
        }
        e.check = icmp_check;
        crate::stats::count(Reason::IcmpErrorTranslated);
        let eth = data as *mut EthHdr;
        Ok(forward::ipv4(ctx, eth, ip, lb_common::IPPROTO_ICMP, 0, 0))
    }
}

// Offsets for the TC side, which reads and writes through skb helpers.
const T_IP_CHECK: usize = ETH_HLEN + 10;
const T_IP_SADDR: usize = ETH_HLEN + 12;
const T_ICMP_CHECK: usize = ICMP_OFF + 2;
const T_Q: usize = ICMP_OFF + 8;
const T_Q_CHECK: usize = T_Q + 10;
const T_Q_DADDR: usize = T_Q + 16;
const T_Q_DPORT: usize = T_Q + IPV4_HLEN_MIN + 2;
const T_Q_UDP_CHECK: usize = T_Q + IPV4_HLEN_MIN + 6;

/// Outbound translation at TC; `Ok(reason)` / `Err(reason)`: the reason to count.
#[inline(always)]
pub fn translate_out(ctx: &TcContext) -> Result<Reason, Reason> {
    let nf = |_| Reason::TcPassNotOurs;
    let ip: Ipv4Hdr = ctx.load(ETH_HLEN).map_err(nf)?;
    let e: IcmpError = ctx.load(ICMP_OFF).map_err(nf)?;
    if ip.vhl != 0x45 || !is_error(e.ty) || e.quoted.vhl != 0x45 {
        return Err(Reason::TcPassNotOurs);
    }
    let proto = e.quoted.proto;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Err(Reason::TcPassNotOurs);
    }
    // The quoted packet is client -> backend; the reply direction is backend -> client.
    let key = FlowKey {
        src: NetAddr::from_v4_raw(e.quoted.daddr),
        dst: NetAddr::from_v4_raw(e.quoted.saddr),
        sport: NetPort(e.q_dport),
        dport: NetPort(e.q_sport),
        proto,
        dir: dir::REPLY,
        _pad: [0; 2],
    };
    let (_, ct, _) = conntrack::reply(&key, conntrack::now_s())?;
    // SAFETY: valid while the program runs.
    let ct = unsafe { &*ct };
    let (old_addr, new_addr) = (e.quoted.daddr, ct.nat_addr.v4_raw());
    let (old_port, new_port) = (e.q_dport, ct.nat_port.raw());
    let fail = |_| Reason::TcRewriteFailed;

    // The quoted header, its checksum, the quoted port (and UDP checksum), each change
    // folded into the ICMP checksum (which has no pseudo-header).
    let new_qcheck = csum::update32(e.quoted.check, old_addr, new_addr);
    ctx.store(T_Q_DADDR, &new_addr, 0).map_err(fail)?;
    ctx.l4_csum_replace(T_ICMP_CHECK, old_addr as u64, new_addr as u64, 4)
        .map_err(fail)?;
    ctx.store(T_Q_CHECK, &new_qcheck, 0).map_err(fail)?;
    ctx.l4_csum_replace(T_ICMP_CHECK, e.quoted.check as u64, new_qcheck as u64, 2)
        .map_err(fail)?;
    ctx.store(T_Q_DPORT, &new_port, 0).map_err(fail)?;
    ctx.l4_csum_replace(T_ICMP_CHECK, old_port as u64, new_port as u64, 2)
        .map_err(fail)?;
    if proto == IPPROTO_UDP && e.q_word3 != 0 {
        let c = csum::udp_finish(csum::update16(
            csum::update32(e.q_word3, old_addr, new_addr),
            old_port,
            new_port,
        ));
        ctx.store(T_Q_UDP_CHECK, &c, 0).map_err(fail)?;
        ctx.l4_csum_replace(T_ICMP_CHECK, e.q_word3 as u64, c as u64, 2)
            .map_err(fail)?;
    }
    // An error the backend itself sent must come from the frontend the client dialled.
    if ip.saddr == old_addr {
        ctx.l3_csum_replace(T_IP_CHECK, old_addr as u64, new_addr as u64, 4)
            .map_err(fail)?;
        ctx.store(T_IP_SADDR, &new_addr, 0).map_err(fail)?;
    }
    Ok(Reason::TcIcmpErrorTranslated)
}

const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PKT_TOOBIG: u8 = 2;
const ICMPV6_TIME_EXCEED: u8 = 3;

/// The ICMPv6 error header with the quoted IPv6 header and the quoted datagram's first 8
/// bytes.
#[repr(C)]
struct Icmp6Error {
    ty: u8,
    code: u8,
    check: u16,
    /// Unused, or the MTU (packet too big).
    rest: u32,
    quoted: Ipv6Hdr,
    q_sport: u16,
    q_dport: u16,
    /// UDP: length; TCP: high half of the sequence number.
    q_word2: u16,
    /// UDP: checksum; TCP: low half of the sequence number.
    q_word3: u16,
}

const ICMP6_OFF: usize = ETH_HLEN + IPV6_HLEN;

#[inline(always)]
fn is_error6(ty: u8) -> bool {
    ty == ICMPV6_DEST_UNREACH || ty == ICMPV6_PKT_TOOBIG || ty == ICMPV6_TIME_EXCEED
}

/// Whether the first byte of an IPv6 header says version 6.
#[inline(always)]
fn is_v6_header(ip: &Ipv6Hdr) -> bool {
    ip.vtc_flow.to_ne_bytes()[0] >> 4 == 6
}

/// [`translate_in`] for ICMPv6: an error addressed to a frontend quoting frontend -> client
/// goes on to the backend quoting backend -> client.
#[inline(always)]
pub fn translate_in6<C: Frame>(ctx: &C) -> Result<u32, Reason> {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let ip: *mut Ipv6Hdr = ptr_at(data, data_end, ETH_HLEN).ok_or(Reason::PassMalformed)?;
    let e: *mut Icmp6Error = ptr_at(data, data_end, ICMP6_OFF).ok_or(Reason::PassNotOurs)?;
    // SAFETY: both pointers were bounds checked; nothing resizes the packet.
    unsafe {
        let (ip, e) = (&mut *ip, &mut *e);
        // ICMPv6 right after the outer header (no extension headers); a quoted header
        // without extension headers, of a TCP or UDP datagram.
        if ip.nexthdr != IPPROTO_ICMPV6 || !is_error6(e.ty) || !is_v6_header(&e.quoted) {
            return Err(Reason::PassNotOurs);
        }
        let proto = e.quoted.nexthdr;
        if proto != IPPROTO_TCP && proto != IPPROTO_UDP || ip.daddr != e.quoted.saddr {
            return Err(Reason::PassNotOurs);
        }
        let frontend = NetAddr {
            words: e.quoted.saddr,
        };
        if frontend.is_v4() {
            return Err(Reason::PassNotOurs);
        }
        // The quoted packet is frontend -> client; its flow is client -> frontend.
        let flow = FlowKey {
            src: NetAddr {
                words: e.quoted.daddr,
            },
            dst: frontend,
            sport: NetPort(e.q_dport),
            dport: NetPort(e.q_sport),
            proto,
            dir: dir::FORWARD,
            _pad: [0; 2],
        };
        let backend = conntrack::translated(&flow).ok_or(Reason::PassNotOurs)?;
        let (old_addr, new_addr) = (e.quoted.saddr, backend.addr.words);
        let (old_port, new_port) = (e.q_sport, backend.port.raw());

        // The outer destination is in the ICMPv6 pseudo-header, the quoted source in its
        // payload: the checksum sees the same change twice.
        ip.daddr = new_addr;
        e.quoted.saddr = new_addr;
        let mut icmp_check = csum::update_words(e.check, &old_addr, &new_addr);
        icmp_check = csum::update_words(icmp_check, &old_addr, &new_addr);
        e.q_sport = new_port;
        icmp_check = csum::update16(icmp_check, old_port, new_port);
        if proto == IPPROTO_UDP && e.q_word3 != 0 {
            let old = e.q_word3;
            let mut c = csum::update_words(old, &old_addr, &new_addr);
            c = csum::udp_finish(csum::update16(c, old_port, new_port));
            e.q_word3 = c;
            icmp_check = csum::update16(icmp_check, old, c);
        }
        e.check = icmp_check;
        crate::stats::count(Reason::IcmpErrorTranslated);
        let eth = data as *mut EthHdr;
        Ok(forward::ipv6(ctx, eth, ip, IPPROTO_ICMPV6, 0, 0))
    }
}

// Offsets for the TC side (IPv6).
const T6_IP_SADDR: usize = ETH_HLEN + 8;
const T6_ICMP_CHECK: usize = ICMP6_OFF + 2;
const T6_Q: usize = ICMP6_OFF + 8;
const T6_Q_DADDR: usize = T6_Q + 24;
const T6_Q_DPORT: usize = T6_Q + IPV6_HLEN + 2;
const T6_Q_UDP_CHECK: usize = T6_Q + IPV6_HLEN + 6;

/// [`translate_out`] for ICMPv6: an error quoting client -> backend leaves quoting
/// client -> frontend, and from the frontend if the backend sent it.
#[inline(always)]
pub fn translate_out6(ctx: &TcContext) -> Result<Reason, Reason> {
    let nf = |_| Reason::TcPassNotOurs;
    let ip: Ipv6Hdr = ctx.load(ETH_HLEN).map_err(nf)?;
    let e: Icmp6Error = ctx.load(ICMP6_OFF).map_err(nf)?;
    if ip.nexthdr != IPPROTO_ICMPV6 || !is_error6(e.ty) || !is_v6_header(&e.quoted) {
        return Err(Reason::TcPassNotOurs);
    }
    let proto = e.quoted.nexthdr;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Err(Reason::TcPassNotOurs);
    }
    // The quoted packet is client -> backend; the reply direction is backend -> client.
    let key = FlowKey {
        src: NetAddr {
            words: e.quoted.daddr,
        },
        dst: NetAddr {
            words: e.quoted.saddr,
        },
        sport: NetPort(e.q_dport),
        dport: NetPort(e.q_sport),
        proto,
        dir: dir::REPLY,
        _pad: [0; 2],
    };
    let (_, ct, _) = conntrack::reply(&key, conntrack::now_s())?;
    // SAFETY: valid while the program runs.
    let ct = unsafe { &*ct };
    if ct.nat_addr.is_v4() {
        return Err(Reason::TcPassNotOurs);
    }
    let (old_addr, new_addr) = (e.quoted.daddr, ct.nat_addr.words);
    let (old_port, new_port) = (e.q_dport, ct.nat_port.raw());
    let fail = |_| Reason::TcRewriteFailed;

    // The quoted address and port (and UDP checksum): payload, no pseudo-header.
    ctx.store(T6_Q_DADDR, &new_addr, 0).map_err(fail)?;
    let mut i = 0;
    while i < 4 {
        ctx.l4_csum_replace(T6_ICMP_CHECK, old_addr[i] as u64, new_addr[i] as u64, 4)
            .map_err(fail)?;
        i += 1;
    }
    ctx.store(T6_Q_DPORT, &new_port, 0).map_err(fail)?;
    ctx.l4_csum_replace(T6_ICMP_CHECK, old_port as u64, new_port as u64, 2)
        .map_err(fail)?;
    if proto == IPPROTO_UDP && e.q_word3 != 0 {
        let c = csum::udp_finish(csum::update16(
            csum::update_words(e.q_word3, &old_addr, &new_addr),
            old_port,
            new_port,
        ));
        ctx.store(T6_Q_UDP_CHECK, &c, 0).map_err(fail)?;
        ctx.l4_csum_replace(T6_ICMP_CHECK, e.q_word3 as u64, c as u64, 2)
            .map_err(fail)?;
    }
    // An error the backend itself sent must come from the frontend the client dialled; the
    // outer source is in the ICMPv6 pseudo-header.
    if ip.saddr == old_addr {
        let mut i = 0;
        while i < 4 {
            ctx.l4_csum_replace(
                T6_ICMP_CHECK,
                old_addr[i] as u64,
                new_addr[i] as u64,
                BPF_F_PSEUDO_HDR as u64 | 4,
            )
            .map_err(fail)?;
            i += 1;
        }
        ctx.store(T6_IP_SADDR, &new_addr, 0).map_err(fail)?;
    }
    Ok(Reason::TcIcmpErrorTranslated)
}

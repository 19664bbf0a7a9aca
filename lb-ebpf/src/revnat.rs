//! Reverse NAT at TC egress: a reply from a backend leaves with the source the client
//! dialled (frontend address and port), found through the REPLY conntrack entry. IPv4 and
//! IPv6 (the L4 checksum's pseudo-header updated per 32-bit word of the address).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK},
    programs::TcContext,
};
use lb_common::{FlowKey, NetAddr, NetPort, Reason, dir};

use crate::{
    conntrack,
    headers::{self, ETH_HLEN, ParseStop},
    stats::count,
};

/// Offsets inside the IPv4 header.
const IP_CHECK_OFF: usize = ETH_HLEN + 10;
const IP_SADDR_OFF: usize = ETH_HLEN + 12;
/// Offset of the IPv6 source address.
const IP6_SADDR_OFF: usize = ETH_HLEN + 8;

/// The REPLY entry of a backend -> client packet, when its flow is alive and this packet
/// belongs to it; moves the flow's lifecycle on. A SYN-ACK for a flow past its handshake is a
/// new connection straight to the backend that reuses the client port: the old flow is
/// forgotten and the packet left alone.
#[inline(always)]
fn flow_of_reply(key: &FlowKey, tcp_flags: u8) -> Result<&'static lb_common::CtEntry, Reason> {
    let now = conntrack::now_s();
    let (table, rev, fwd) = conntrack::reply(key, now)?;
    if !conntrack::on_reply(fwd, key.proto, tcp_flags, now) {
        conntrack::forget_reply(table, key, rev);
        return Err(Reason::TcPassStale);
    }
    // SAFETY: valid while the program runs.
    Ok(unsafe { &*rev })
}

#[inline(always)]
pub fn run(ctx: &TcContext) -> i32 {
    let reason = try_run(ctx).unwrap_or_else(|r| r);
    count(reason);
    TC_ACT_OK as i32
}

/// Always passes the packet; returns the reason to count.
#[inline(always)]
fn try_run(ctx: &TcContext) -> Result<Reason, Reason> {
    let len = ctx.len() as usize;
    let pkt = match headers::parse_ipv4(ctx.data(), ctx.data_end(), len) {
        Ok(p) => p,
        Err(ParseStop::Malformed) => {
            // Headers may sit in a non-linear part of the skb: pull them and retry once.
            let _ = ctx.pull_data((ETH_HLEN + 60 + 20).min(len) as u32);
            headers::parse_ipv4(ctx.data(), ctx.data_end(), len)
                .map_err(|_| Reason::TcPassNotOurs)?
        }
        Err(ParseStop::OtherProto(lb_common::IPPROTO_ICMP)) => {
            return crate::icmp::translate_out(ctx);
        }
        Err(ParseStop::NotIpv4) => return try_run_v6(ctx),
        Err(ParseStop::Fragment) => return crate::frag::follow_reply(ctx),
        Err(_) => return Err(Reason::TcPassNotOurs),
    };
    // SAFETY: bounds checked by the parser.
    let (saddr, daddr) = unsafe { ((*pkt.ip).saddr, (*pkt.ip).daddr) };
    let key = FlowKey {
        src: NetAddr::from_v4_raw(saddr),
        dst: NetAddr::from_v4_raw(daddr),
        sport: NetPort(pkt.sport),
        dport: NetPort(pkt.dport),
        proto: pkt.proto,
        dir: dir::REPLY,
        _pad: [0; 2],
    };
    let ct = flow_of_reply(&key, pkt.tcp_flags)?;
    let new_saddr = ct.nat_addr.v4_raw();
    let new_sport = ct.nat_port.raw();

    let l4_check_off = pkt.l4_off + pkt.check_off;
    let mangled0 = if pkt.proto == lb_common::IPPROTO_UDP {
        BPF_F_MARK_MANGLED_0 as u64
    } else {
        0
    };
    let fail = |_| Reason::TcRewriteFailed;
    ctx.l4_csum_replace(
        l4_check_off,
        saddr as u64,
        new_saddr as u64,
        BPF_F_PSEUDO_HDR as u64 | mangled0 | 4,
    )
    .map_err(fail)?;
    ctx.l4_csum_replace(
        l4_check_off,
        pkt.sport as u64,
        new_sport as u64,
        mangled0 | 2,
    )
    .map_err(fail)?;
    ctx.l3_csum_replace(IP_CHECK_OFF, saddr as u64, new_saddr as u64, 4)
        .map_err(fail)?;
    ctx.store(IP_SADDR_OFF, &new_saddr, 0).map_err(fail)?;
    ctx.store(pkt.l4_off, &new_sport, 0).map_err(fail)?;
    if pkt.frag_first {
        // The later fragments of this reply get the same source.
        let id = ctx.load::<u16>(ETH_HLEN + 4).map_err(fail)?;
        crate::frag::remember(&key, u32::from(id), &ct.nat_addr, &key.dst, dir::REPLY);
    }
    Ok(Reason::TcRevNat)
}

/// [`try_run`] for IPv6 (no header checksum; the address is in the L4 pseudo-header).
#[inline(always)]
fn try_run_v6(ctx: &TcContext) -> Result<Reason, Reason> {
    let len = ctx.len() as usize;
    let pkt = match headers::parse_ipv6(ctx.data(), ctx.data_end(), len) {
        Ok(p) => p,
        Err(ParseStop::Malformed) => {
            // Headers may sit in a non-linear part of the skb: pull them and retry once.
            let _ = ctx.pull_data(crate::frame::TC_HEADERS.min(len as u32));
            headers::parse_ipv6(ctx.data(), ctx.data_end(), len)
                .map_err(|_| Reason::TcPassNotOurs)?
        }
        Err(ParseStop::OtherProto(lb_common::IPPROTO_ICMPV6)) => {
            return crate::icmp::translate_out6(ctx);
        }
        Err(_) => return Err(Reason::TcPassNotOurs),
    };
    // SAFETY: bounds checked by the parser.
    let (saddr, daddr) = unsafe { ((*pkt.ip).saddr, (*pkt.ip).daddr) };
    let key = FlowKey {
        src: NetAddr { words: saddr },
        dst: NetAddr { words: daddr },
        sport: NetPort(pkt.sport),
        dport: NetPort(pkt.dport),
        proto: pkt.proto,
        dir: dir::REPLY,
        _pad: [0; 2],
    };
    let ct = flow_of_reply(&key, pkt.tcp_flags)?;
    if ct.nat_addr.is_v4() {
        return Err(Reason::TcPassNotOurs);
    }
    let new_saddr = ct.nat_addr.words;
    let new_sport = ct.nat_port.raw();

    let l4_check_off = pkt.l4_off + pkt.check_off;
    let mangled0 = if pkt.proto == lb_common::IPPROTO_UDP {
        BPF_F_MARK_MANGLED_0 as u64
    } else {
        0
    };
    let fail = |_| Reason::TcRewriteFailed;
    let mut i = 0;
    while i < 4 {
        ctx.l4_csum_replace(
            l4_check_off,
            saddr[i] as u64,
            new_saddr[i] as u64,
            BPF_F_PSEUDO_HDR as u64 | mangled0 | 4,
        )
        .map_err(fail)?;
        i += 1;
    }
    ctx.l4_csum_replace(
        l4_check_off,
        pkt.sport as u64,
        new_sport as u64,
        mangled0 | 2,
    )
    .map_err(fail)?;
    ctx.store(IP6_SADDR_OFF, &new_saddr, 0).map_err(fail)?;
    ctx.store(pkt.l4_off, &new_sport, 0).map_err(fail)?;
    Ok(Reason::TcRevNat)
}

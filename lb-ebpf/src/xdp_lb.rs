//! The XDP load balancer: frontend match, conntrack, backend choice, DNAT, forwarding, for
//! IPv4 and IPv6 alike: one pipeline (addresses are 16 bytes, IPv4 mapped, so the frontend
//! keys, the conntrack map and its keys serve both families), with the family-specific
//! steps (parsing, DNAT, refusal, forwarding) chosen by the EtherType.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{FlowKey, NetAddr, NetPort, Reason, backend_flags, csum, dir, service_flags};

use crate::{
    conntrack, forward, frag,
    headers::{
        self, ETH_P_IP_RAW, ETH_P_IPV6_RAW, EthHdr, Ipv4Hdr, Ipv6Hdr, Packet, ParseStop,
        TCP_FLAG_ACK, TCP_FLAG_SYN, ptr_at,
    },
    icmp, ranges, refuse, select, snat,
    stats::{count, traffic},
};

#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    // Not a frontend: maybe the reply of a source-NATed flow (a sibling call, so the two
    // paths' stack frames never add up).
    let verdict = match try_run(ctx) {
        Err(Reason::PassNotOurs) => snat::reverse(ctx),
        // A later fragment: translated as its first fragment was, if that one was ours.
        Err(Reason::PassFragment) => frag::follow(ctx),
        v => v,
    };
    match verdict {
        Ok(action) => action,
        Err(reason) => {
            count(reason);
            match reason {
                Reason::DropNoBackend
                | Reason::DropRefusalRateLimited
                | Reason::DropRefusalBadDestination
                | Reason::DropSourceRange
                | Reason::DropNoLocalEndpoint
                | Reason::DropSnatPortExhausted
                | Reason::DropSnatNoRoute => xdp_action::XDP_DROP,
                _ => xdp_action::XDP_PASS,
            }
        }
    }
}

/// The reason to pass a packet the parser stopped at (ICMP errors are handled before).
#[inline(always)]
fn stop_reason(stop: ParseStop) -> Reason {
    match stop {
        ParseStop::NotIpv4 | ParseStop::NotIpv6 => Reason::PassNotIp,
        ParseStop::Malformed => Reason::PassMalformed,
        ParseStop::Fragment => Reason::PassFragment,
        ParseStop::ExtHeaders => Reason::PassIpv6ExtHeaders,
        ParseStop::OtherProto(_) => Reason::PassNotOurs,
    }
}

/// `Err(reason)`: the packet leaves untouched (dropped for `Drop*` reasons, else passed)
/// and `reason` is counted. Not inlined: [`snat::reverse`] runs beside it, not inside it.
#[inline(never)]
fn try_run(ctx: &XdpContext) -> Result<u32, Reason> {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let eth: *mut EthHdr = ptr_at(data, data_end, 0).ok_or(Reason::PassMalformed)?;
    // SAFETY: bounds checked by ptr_at.
    let ethertype = unsafe { (*eth).proto };
    // The packet (its IP header type erased: `v6` says which), source and destination.
    let (pkt, src, dst, v6): (Packet<u8>, NetAddr, NetAddr, bool) = if ethertype == ETH_P_IP_RAW {
        let p = match headers::parse_ipv4(data, data_end, data_end - data) {
            Ok(p) => p,
            Err(ParseStop::OtherProto(lb_common::IPPROTO_ICMP)) => return icmp::translate_in(ctx),
            Err(stop) => return Err(stop_reason(stop)),
        };
        // SAFETY: `ip` was bounds checked by the parser.
        let (saddr, daddr) = unsafe { ((*p.ip).saddr, (*p.ip).daddr) };
        (
            p.cast(),
            NetAddr::from_v4_raw(saddr),
            NetAddr::from_v4_raw(daddr),
            false,
        )
    } else if ethertype == ETH_P_IPV6_RAW {
        let p = match headers::parse_ipv6(data, data_end, data_end - data) {
            Ok(p) => p,
            Err(ParseStop::OtherProto(lb_common::IPPROTO_ICMPV6)) => {
                return icmp::translate_in6(ctx);
            }
            Err(stop) => return Err(stop_reason(stop)),
        };
        // SAFETY: `ip` was bounds checked by the parser.
        let (saddr, daddr) = unsafe { ((*p.ip).saddr, (*p.ip).daddr) };
        let dst = NetAddr { words: daddr };
        // A v4-mapped destination on the wire (RFC 4291 forbids it) would match IPv4 keys.
        if dst.is_v4() {
            return Err(Reason::PassNotOurs);
        }
        (p.cast(), NetAddr { words: saddr }, dst, true)
    } else {
        return Err(Reason::PassNotIp);
    };
    let svc = select::frontend(dst, pkt.dport, pkt.proto).ok_or(Reason::PassNotOurs)?;

    let flow = FlowKey {
        src,
        dst,
        sport: NetPort(pkt.sport),
        dport: NetPort(pkt.dport),
        proto: pkt.proto,
        dir: dir::FORWARD,
        _pad: [0; 2],
    };
    let is_tcp = pkt.proto == lb_common::IPPROTO_TCP;
    let is_syn = is_tcp && pkt.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN;

    // An alive flow keeps its backend while that backend (same generation) exists; a SYN
    // always selects afresh (client ports are reused at high connection rates); an expired
    // entry is a new flow.
    let now = conntrack::now_s();
    let mut chosen = None;
    // The FORWARD entry of a source-NATed flow (its source is rewritten too).
    let mut snat_entry: Option<*const lb_common::CtEntry> = None;
    match conntrack::forward(&flow) {
        Some((table, e)) => {
            // SAFETY: the entry is valid while the program runs; fields are read in place
            // (no copy: the stack is tight).
            let ct = unsafe { &*e };
            let (bid, alive) = (ct.backend_id, conntrack::alive(ct, now));
            let live = select::backend(bid, svc.id)
                .filter(|b| b.generation == ct.backend_gen && ct.service_id == svc.id);
            if is_syn {
                count(Reason::CtSynReselect);
                conntrack::forget(table, &flow, e, live);
            } else if !alive {
                count(Reason::CtExpired);
                conntrack::forget(table, &flow, e, live);
            } else if let Some(b) = live {
                count(Reason::CtHit);
                let flags_now = (u64::from(pkt.tcp_flags) << 32) | u64::from(now);
                conntrack::on_forward(table, &flow, e, b, flags_now);
                if ct.flags & lb_common::ct_flags::SNAT != 0 {
                    snat_entry = Some(e);
                }
                chosen = Some((bid, b, false));
            } else {
                // Its backend is gone (or the id names another backend now): the flow is
                // selected afresh and tracked anew; the GC deletes the old REPLY entry.
                count(Reason::CtStaleBackend);
                conntrack::forget(table, &flow, e, None);
            }
        }
        None if is_tcp && !is_syn => count(Reason::CtMiss),
        None => {}
    }
    let (backend_id, backend, new_flow) = match chosen {
        Some(c) => c,
        None => {
            if svc.flags & service_flags::SOURCE_RANGES != 0
                && !ranges::allowed(svc.id, &flow.src)
            {
                ranges::denied(svc.id);
                return Err(Reason::DropSourceRange);
            }
            // A table update can flip the service to a fresh slot range (and clear the old
            // one, or delete a backend the old table named) between the frontend lookup and
            // the slot read: on a miss, read the service entry in force once more.
            let mut picked = select::pick(&svc, &flow);
            if picked.is_none()
                && let Some(again) = select::frontend(dst, pkt.dport, pkt.proto)
            {
                picked = select::pick(&again, &flow);
            }
            let Some((id, b)) = picked else {
                if svc.flags & service_flags::DROP_WHEN_EMPTY != 0 {
                    return Err(Reason::DropNoLocalEndpoint);
                }
                let action = if v6 {
                    refuse::refuse6(ctx, &pkt.cast())?
                } else {
                    refuse::refuse(ctx, &pkt.cast())?
                };
                count(if is_tcp {
                    Reason::TxRefuseTcpRst
                } else {
                    Reason::TxRefuseIcmpUnreachable
                });
                return Ok(action);
            };
            if b.flags & backend_flags::REMOTE != 0 {
                let ids = (u64::from(svc.id) << 32) | u64::from(id);
                snat::track(ctx, &flow, ids, b, now)?;
                snat_entry = conntrack::forward(&flow).map(|(_, e)| e.cast_const());
                if snat_entry.is_none() {
                    return Err(Reason::CtUpdateFailed);
                }
            } else {
                conntrack::track(&flow, svc.id, id, b, now);
            }
            count(Reason::CtNew);
            (id, b, true)
        }
    };

    // DNAT: the destination address (in the IPv4 header and its checksum; in the L4
    // pseudo-header for both families) and port; SNAT flows get their source as well.
    let new_dport = backend.port.raw();
    let check = pkt.l4_check();
    let dport = pkt.l4_dport();
    // SAFETY: every pointer was bounds checked; nothing resized the packet.
    let sport = unsafe {
        let old_check = *check;
        let mut c = if v6 {
            // No header checksum; the parser rejected UDP without a checksum.
            let ip = pkt.ip.cast::<Ipv6Hdr>();
            (*ip).daddr = backend.addr.words;
            Some(csum::update_words(
                old_check,
                &dst.words,
                &backend.addr.words,
            ))
        } else {
            let ip = pkt.ip.cast::<Ipv4Hdr>();
            let (old, new) = (dst.v4_raw(), backend.addr.v4_raw());
            (*ip).daddr = new;
            (*ip).check = csum::update32((*ip).check, old, new);
            // A UDP checksum of 0 means "none" and stays 0.
            if pkt.proto == lb_common::IPPROTO_UDP && old_check == 0 {
                None
            } else {
                Some(csum::update32(old_check, old, new))
            }
        };
        c = c.map(|c| csum::update16(c, pkt.dport, new_dport));
        *dport = new_dport;
        if let Some(e) = snat_entry {
            c = snat::rewrite_source(pkt.ip, v6, pkt.l4.cast(), e, c);
        }
        if let Some(mut c) = c {
            if pkt.proto == lb_common::IPPROTO_UDP {
                c = csum::udp_finish(c);
            }
            *check = c;
        }
        *pkt.l4.cast::<u16>()
    };
    if pkt.frag_first {
        // SAFETY: `ip` was bounds checked (IPv4: only IPv4 has first fragments here).
        let (id, new_src) = unsafe {
            let ip = pkt.ip.cast::<Ipv4Hdr>();
            (u32::from((*ip).id), NetAddr::from_v4_raw((*ip).saddr))
        };
        frag::remember(&flow, id, &new_src, &backend.addr, dir::FORWARD);
    }
    traffic(svc.id, backend_id, (data_end - data) as u64, new_flow);

    Ok(if v6 {
        forward::ipv6(ctx, eth, pkt.ip.cast(), pkt.proto, sport, new_dport)
    } else {
        forward::ipv4(ctx, eth, pkt.ip.cast(), pkt.proto, sport, new_dport)
    })
}

//! The load balancer: frontend match, conntrack, backend choice, DNAT, forwarding, for
//! IPv4 and IPv6 alike: one pipeline (addresses are 16 bytes, IPv4 mapped, so the frontend
//! keys, the conntrack map and its keys serve both families), with the family-specific
//! steps (parsing, DNAT, refusal, forwarding) chosen by the EtherType. Written once for both
//! hooks it runs at, XDP and TC ingress (see [`crate::frame`]).

use lb_common::{FlowKey, NetAddr, NetPort, Reason, backend_flags, csum, dir, service_flags};

use crate::{
    conntrack, dsr, forward, frag,
    frame::{Frame, L4Delta},
    headers::{
        self, ETH_HLEN, ETH_P_IP_RAW, ETH_P_IPV6_RAW, EthHdr, Ipv4Hdr, Ipv6Hdr, Packet, ParseStop,
        TCP_FLAG_ACK, TCP_FLAG_SYN, ptr_at,
    },
    icmp, ranges, refuse, select, snat,
    maps::SCRATCH,
    stats::{count, traffic},
};

#[inline(always)]
pub fn run<C: Frame>(ctx: &C) -> u32 {
    // Not a frontend: maybe the reply of a source-NATed flow (a sibling call, so the two
    // paths' stack frames never add up).
    let verdict = match try_run(ctx) {
        Err(REV_SNAT) => snat::reverse(ctx),
        // A later fragment: translated as its first fragment was, if that one was ours.
        Err(Reason::PassFragment) => frag::follow(ctx),
        // Signals of the main path: an IPIP packet (maybe direct server return to a local
        // endpoint), and a DSR flow's packet to encapsulate.
        Err(Reason::DsrDecapsulated) => dsr::decapsulate(ctx),
        Err(Reason::DsrEncapsulated) => dsr::encapsulate(ctx),
        // No usable backend: refused (TCP RST, ICMP port unreachable).
        Err(Reason::TxRefuseTcpRst) => refuse::packet(ctx),
        Err(TRANSLATE) => translate(ctx),
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
                | Reason::DropSnatNoRoute => C::DROP,
                _ => C::PASS,
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
fn try_run<C: Frame>(ctx: &C) -> Result<u32, Reason> {
    let (data, data_end, frame_len) = (ctx.data(), ctx.data_end(), ctx.frame_len());
    let eth: *mut EthHdr = ptr_at(data, data_end, 0).ok_or(Reason::PassMalformed)?;
    // SAFETY: bounds checked by ptr_at.
    let ethertype = unsafe { (*eth).proto };
    // The packet (its IP header type erased: `v6` says which), source and destination.
    let (pkt, src, dst, v6): (Packet<u8>, NetAddr, NetAddr, bool) = if ethertype == ETH_P_IP_RAW {
        let p = match headers::parse_ipv4(data, data_end, frame_len) {
            Ok(p) => p,
            Err(ParseStop::OtherProto(lb_common::IPPROTO_ICMP)) => return icmp::translate_in(ctx),
            Err(ParseStop::OtherProto(dsr::IPPROTO_IPIP)) => return Err(Reason::DsrDecapsulated),
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
        let p = match headers::parse_ipv6(data, data_end, frame_len) {
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
    let Some(svc) = select::frontend(dst, pkt.dport, pkt.proto) else {
        // Not a frontend: only a packet to a port of the NAT range may be a source-NATed
        // flow's reply (checked beside this frame, see `run`); anything else is passed
        // without being parsed again.
        return Err(if snat::in_nat_range(pkt.dport) {
            REV_SNAT
        } else {
            Reason::PassNotOurs
        });
    };

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
    let len = frame_len as u64;
    let mut chosen = None;
    // Whether the flow is source-NATed or sent by direct server return is read below from
    // this CPU's scratch entry, where every path leaves the flow's FORWARD value: no
    // variable tells the paths apart, so the verifier walks the rest once for all of them.
    let scratch = SCRATCH.get_ptr_mut(0).ok_or(Reason::CtUpdateFailed)?;
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
                // SAFETY: this CPU's scratch element (on_forward used it as it liked).
                unsafe {
                    (*scratch).entry.flags = ct.flags;
                    (*scratch).entry.nat_addr = ct.nat_addr;
                    (*scratch).entry.nat_port = ct.nat_port;
                }
                traffic(svc.id, bid, len, false);
                chosen = Some(b);
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
    let backend = match chosen {
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
                // Refused beside this frame (see `run`).
                return Err(Reason::TxRefuseTcpRst);
            };
            if b.flags & backend_flags::REMOTE != 0 {
                let ids = (u64::from(svc.id) << 32) | u64::from(id);
                if svc.flags & service_flags::DSR != 0 {
                    dsr::track(ctx, &flow, ids, b, now)?;
                } else {
                    snat::track(ctx, &flow, ids, b, now)?;
                }
            } else {
                // Leaves a value without SNAT or DSR in the scratch entry.
                conntrack::track(&flow, svc.id, id, b, now);
            }
            count(Reason::CtNew);
            traffic(svc.id, id, len, true);
            b
        }
    };
    // SAFETY: this CPU's scratch element; plain data.
    let nat_flags = unsafe { (*scratch).entry.flags };

    if nat_flags & lb_common::ct_flags::DSR != 0 {
        // Sent on untouched inside IPIP (beside this frame: see `run`).
        if v6 {
            return Err(Reason::PassNotOurs);
        }
        dsr::stage(backend)?;
        return Err(Reason::DsrEncapsulated);
    }
    // The rewrite happens beside this frame (see `run` and `translate`): the backend goes
    // to this CPU's scratch, next to the flow's FORWARD value.
    // SAFETY: this CPU's scratch element.
    unsafe {
        (*scratch).backend.addr = backend.addr;
        (*scratch).backend.port = backend.port;
    }
    Err(TRANSLATE)
}

/// The signal of [`try_run`] that a packet to no frontend may be a source-NATed flow's reply
/// (never counted as such: `snat::reverse` counts what it found).
const REV_SNAT: Reason = Reason::RevSnat;

/// The signal of [`try_run`] that a packet is to be translated by [`translate`] (never
/// counted as such: `translate` counts what it did).
const TRANSLATE: Reason = Reason::Redirect;

/// The rewrite of a packet [`try_run`] chose a backend for (in `SCRATCH`: the backend's
/// address and port, and the flow's FORWARD value, whose flags say whether the source is
/// rewritten too), then forwarding. Parses the packet again: as its own call from `run`,
/// it is verified once for every kind of packet, not once for every path of the choice.
#[inline(never)]
fn translate<C: Frame>(ctx: &C) -> Result<u32, Reason> {
    let (data, data_end, frame_len) = (ctx.data(), ctx.data_end(), ctx.frame_len());
    let eth: *mut EthHdr = ptr_at(data, data_end, 0).ok_or(Reason::PassMalformed)?;
    // SAFETY: bounds checked by ptr_at.
    let v6 = unsafe { (*eth).proto } == ETH_P_IPV6_RAW;
    let (pkt, src, dst): (Packet<u8>, NetAddr, NetAddr) = if v6 {
        let p = headers::parse_ipv6(data, data_end, frame_len).map_err(stop_reason)?;
        // SAFETY: `ip` was bounds checked by the parser.
        let (s, d) = unsafe { ((*p.ip).saddr, (*p.ip).daddr) };
        (p.cast(), NetAddr { words: s }, NetAddr { words: d })
    } else {
        let p = headers::parse_ipv4(data, data_end, frame_len).map_err(stop_reason)?;
        // SAFETY: as above.
        let (s, d) = unsafe { ((*p.ip).saddr, (*p.ip).daddr) };
        (p.cast(), NetAddr::from_v4_raw(s), NetAddr::from_v4_raw(d))
    };
    let scratch = SCRATCH.get_ptr_mut(0).ok_or(Reason::CtUpdateFailed)?;
    // SAFETY: this CPU's scratch element.
    let (backend, nat_flags) = unsafe { (&(*scratch).backend, (*scratch).entry.flags) };
    // DNAT: the destination address (in the IPv4 header and its checksum; in the L4
    // pseudo-header for both families) and port; SNAT flows get their source as well. The
    // L4 checksum's change is summed in `d` and applied last (at TC through a helper).
    let new_dport = backend.port.raw();
    let dport = pkt.l4_dport();
    let mut d = L4Delta::default();
    // SAFETY: every pointer was bounds checked; nothing resized the packet.
    let sport = unsafe {
        if v6 {
            // No header checksum; the parser rejected UDP without a checksum.
            let ip = pkt.ip.cast::<Ipv6Hdr>();
            (*ip).daddr = backend.addr.words;
            d.addr(&dst.words, &backend.addr.words);
        } else {
            let ip = pkt.ip.cast::<Ipv4Hdr>();
            let (old, new) = (dst.v4_raw(), backend.addr.v4_raw());
            (*ip).daddr = new;
            (*ip).check = csum::update32((*ip).check, old, new);
            d.addr(&[old], &[new]);
        }
        d.port(pkt.dport, new_dport);
        *dport = new_dport;
        if nat_flags & lb_common::ct_flags::SNAT != 0 {
            snat::rewrite_source(pkt.ip, v6, pkt.l4.cast(), &(*scratch).entry, &mut d);
        }
        *pkt.l4.cast::<u16>()
    };
    if pkt.frag_first {
        // SAFETY: `ip` was bounds checked (IPv4: only IPv4 has first fragments here).
        let (id, new_src) = unsafe {
            let ip = pkt.ip.cast::<Ipv4Hdr>();
            (u32::from((*ip).id), NetAddr::from_v4_raw((*ip).saddr))
        };
        let flow = FlowKey {
            src,
            dst,
            sport: NetPort(pkt.sport),
            dport: NetPort(pkt.dport),
            proto: pkt.proto,
            dir: dir::FORWARD,
            _pad: [0; 2],
        };
        frag::remember(&flow, id, &new_src, &backend.addr, dir::FORWARD);
    }
    let udp = pkt.proto == lb_common::IPPROTO_UDP;
    ctx.l4_csum(pkt.l4_off + pkt.check_off, d, udp, v6)?;
    forward_again(ctx, v6, pkt.proto, sport, new_dport)
}

/// Forwards a rewritten packet whose pointers a checksum helper may have invalidated: the
/// Ethernet and IP headers are found again (at fixed offsets) first.
#[inline(always)]
pub fn forward_again<C: Frame>(
    ctx: &C,
    v6: bool,
    proto: u8,
    sport: u16,
    dport: u16,
) -> Result<u32, Reason> {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let eth: *mut EthHdr = ptr_at(data, data_end, 0).ok_or(Reason::PassMalformed)?;
    Ok(if v6 {
        let ip: *mut Ipv6Hdr = ptr_at(data, data_end, ETH_HLEN).ok_or(Reason::PassMalformed)?;
        forward::ipv6(ctx, eth, ip, proto, sport, dport)
    } else {
        let ip: *mut Ipv4Hdr = ptr_at(data, data_end, ETH_HLEN).ok_or(Reason::PassMalformed)?;
        forward::ipv4(ctx, eth, ip, proto, sport, dport)
    })
}

//! The XDP load balancer: frontend match, conntrack, backend choice, DNAT, forwarding.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{FlowKey, NetAddr, NetPort, Reason, csum, dir};

use crate::{
    conntrack, forward,
    headers::{self, EthHdr, ParseStop, TCP_FLAG_ACK, TCP_FLAG_SYN},
    select,
    stats::{count, traffic},
};

#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    match try_run(ctx) {
        Ok(action) => action,
        Err(reason) => {
            count(reason);
            xdp_action::XDP_PASS
        }
    }
}

/// `Err(reason)`: the packet is passed untouched and `reason` counted.
#[inline(always)]
fn try_run(ctx: &XdpContext) -> Result<u32, Reason> {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let pkt = headers::parse_ipv4(data, data_end).map_err(|stop| match stop {
        ParseStop::NotIpv4 => Reason::PassNotIp,
        ParseStop::Malformed => Reason::PassMalformed,
        ParseStop::Fragment => Reason::PassFragment,
        ParseStop::OtherProto => Reason::PassNotOurs,
    })?;
    let ip = pkt.ip;
    // SAFETY: `ip` was bounds checked by the parser.
    let (saddr, daddr) = unsafe { ((*ip).saddr, (*ip).daddr) };
    let dst = NetAddr::from_v4_raw(daddr);
    let svc = select::frontend(dst, pkt.l4.dport, pkt.proto).ok_or(Reason::PassNotOurs)?;

    let flow = FlowKey {
        src: NetAddr::from_v4_raw(saddr),
        dst,
        sport: NetPort(pkt.l4.sport),
        dport: NetPort(pkt.l4.dport),
        proto: pkt.proto,
        dir: dir::FORWARD,
        _pad: [0; 2],
    };
    let is_syn = pkt.proto == lb_common::IPPROTO_TCP
        && pkt.l4.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN;

    // An established flow keeps its backend while that backend exists; a SYN always selects
    // afresh (client ports are reused at high connection rates).
    let mut chosen = None;
    match conntrack::lookup(&flow) {
        Some(ct) if is_syn => {
            let _ = ct;
            count(Reason::CtSynReselect);
        }
        Some(ct) => match select::backend(ct.backend_id) {
            Some(b) if ct.service_id == svc.id => {
                count(Reason::CtHit);
                chosen = Some((ct.backend_id, b, false));
            }
            _ => count(Reason::CtStaleBackend),
        },
        None if pkt.proto == lb_common::IPPROTO_TCP && !is_syn => count(Reason::CtMiss),
        None => {}
    }
    let (backend_id, backend, new_flow) = match chosen {
        Some(c) => c,
        None => {
            let (id, b) = select::pick(&svc, &flow).ok_or(Reason::DropNoBackend)?;
            conntrack::track(&flow, svc.id, id, &b);
            count(Reason::CtNew);
            (id, b, true)
        }
    };

    // DNAT: destination address (IPv4 header and L4 pseudo-header) and port.
    let new_daddr = backend.addr.v4_raw();
    let new_dport = backend.port.raw();
    let check: *mut u16 = headers::ptr_at(data, data_end, pkt.l4_off + pkt.l4.check_off)
        .ok_or(Reason::PassMalformed)?;
    let dport: *mut u16 =
        headers::ptr_at(data, data_end, pkt.l4_off + 2).ok_or(Reason::PassMalformed)?;
    // SAFETY: every pointer was bounds checked; nothing resized the packet.
    unsafe {
        (*ip).daddr = new_daddr;
        (*ip).check = csum::update32((*ip).check, daddr, new_daddr);
        let old_check = *check;
        // A UDP checksum of 0 means "none" and stays 0.
        if !(pkt.proto == lb_common::IPPROTO_UDP && old_check == 0) {
            let mut c = csum::update32(old_check, daddr, new_daddr);
            c = csum::update16(c, pkt.l4.dport, new_dport);
            if pkt.proto == lb_common::IPPROTO_UDP {
                c = csum::udp_finish(c);
            }
            *check = c;
        }
        *dport = new_dport;
    }
    traffic(svc.id, backend_id, (data_end - data) as u64, new_flow);

    let eth: *mut EthHdr = headers::ptr_at(data, data_end, 0).ok_or(Reason::PassMalformed)?;
    Ok(forward::ipv4(ctx, eth, ip, pkt.proto, pkt.l4.sport, new_dport))
}

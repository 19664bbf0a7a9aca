//! The XDP load balancer: frontend match, conntrack, backend choice, DNAT, forwarding.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{FlowKey, NetAddr, NetPort, Reason, csum, dir};

use crate::{
    conntrack, forward,
    headers::{self, EthHdr, ParseStop, TCP_FLAG_ACK, TCP_FLAG_SYN},
    icmp, refuse, select,
    stats::{count, traffic},
};

#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    match try_run(ctx) {
        Ok(action) => action,
        Err(reason) => {
            count(reason);
            match reason {
                Reason::DropNoBackend | Reason::DropRefusalRateLimited => xdp_action::XDP_DROP,
                _ => xdp_action::XDP_PASS,
            }
        }
    }
}

/// `Err(reason)`: the packet leaves untouched (dropped for `Drop*` reasons, else passed)
/// and `reason` is counted.
#[inline(always)]
fn try_run(ctx: &XdpContext) -> Result<u32, Reason> {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let pkt = match headers::parse_ipv4(data, data_end, data_end - data) {
        Ok(pkt) => pkt,
        Err(ParseStop::NotIpv4) => return Err(Reason::PassNotIp),
        Err(ParseStop::Malformed) => return Err(Reason::PassMalformed),
        Err(ParseStop::Fragment) => return Err(Reason::PassFragment),
        Err(ParseStop::OtherProto(lb_common::IPPROTO_ICMP)) => return icmp::translate_in(ctx),
        Err(ParseStop::OtherProto(_)) => return Err(Reason::PassNotOurs),
    };
    let ip = pkt.ip;
    // SAFETY: `ip` was bounds checked by the parser.
    let (saddr, daddr) = unsafe { ((*ip).saddr, (*ip).daddr) };
    let dst = NetAddr::from_v4_raw(daddr);
    let svc = select::frontend(dst, pkt.dport, pkt.proto).ok_or(Reason::PassNotOurs)?;

    let flow = FlowKey {
        src: NetAddr::from_v4_raw(saddr),
        dst,
        sport: NetPort(pkt.sport),
        dport: NetPort(pkt.dport),
        proto: pkt.proto,
        dir: dir::FORWARD,
        _pad: [0; 2],
    };
    let is_syn = pkt.proto == lb_common::IPPROTO_TCP
        && pkt.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN;

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
            // A table update can flip the service to a fresh slot range (and clear the old
            // one, or delete a backend the old table named) between the frontend lookup and
            // the slot read: on a miss, read the service entry in force once more.
            let picked = select::pick(&svc, &flow).or_else(|| {
                let again = select::frontend(dst, pkt.dport, pkt.proto)?;
                select::pick(&again, &flow)
            });
            let Some((id, b)) = picked else {
                let action = refuse::refuse(ctx, &pkt)?;
                count(if pkt.proto == lb_common::IPPROTO_TCP {
                    Reason::TxRefuseTcpRst
                } else {
                    Reason::TxRefuseIcmpUnreachable
                });
                return Ok(action);
            };
            conntrack::track(&flow, svc.id, id, &b);
            count(Reason::CtNew);
            (id, b, true)
        }
    };

    // DNAT: destination address (IPv4 header and L4 pseudo-header) and port.
    let new_daddr = backend.addr.v4_raw();
    let new_dport = backend.port.raw();
    let check = pkt.l4_check();
    let dport = pkt.l4_dport();
    // SAFETY: every pointer was bounds checked; nothing resized the packet.
    unsafe {
        (*ip).daddr = new_daddr;
        (*ip).check = csum::update32((*ip).check, daddr, new_daddr);
        let old_check = *check;
        // A UDP checksum of 0 means "none" and stays 0.
        if !(pkt.proto == lb_common::IPPROTO_UDP && old_check == 0) {
            let mut c = csum::update32(old_check, daddr, new_daddr);
            c = csum::update16(c, pkt.dport, new_dport);
            if pkt.proto == lb_common::IPPROTO_UDP {
                c = csum::udp_finish(c);
            }
            *check = c;
        }
        *dport = new_dport;
    }
    traffic(svc.id, backend_id, (data_end - data) as u64, new_flow);

    let eth = data as *mut EthHdr; // checked by the parser (the IP header lies beyond it)
    Ok(forward::ipv4(ctx, eth, ip, pkt.proto, pkt.sport, new_dport))
}

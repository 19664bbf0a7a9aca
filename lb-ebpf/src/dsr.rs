//! Direct server return (`service_flags::DSR`, opt in), IPv4.
//!
//! On the node that receives the client's packet ("A"), a flow to an endpoint on another
//! node is tracked (FORWARD entry only, [`ct_flags::DSR`]) and each of its packets travels
//! to the endpoint untouched inside IPIP: outer source the node's address towards the
//! endpoint, outer destination the endpoint's address (routed to its node as any pod
//! address), and the endpoint's port in the outer header's identification field (the outer
//! header has DF set, so the field carries no fragment identity, RFC 6864). The endpoint's
//! node ("B") recognises such a packet by its inner destination, a DSR frontend it knows
//! (every node programs every service), decapsulates it, translates it to the endpoint and
//! tracks the flow in both directions: the reply leaves B through its TC reverse NAT with
//! the frontend as its source, straight to the client, which sees only the frontend. The
//! endpoint sees the client's address.
//!
//! IPIP was chosen over Geneve (UDP + options: 36 more bytes and a port to open) and over
//! an IPv4 option (rewritten or dropped by some routers, and it needs an IPv6 variant):
//! it is 20 bytes, every kernel and network passes it, and tools show it plainly. A packet
//! that would exceed the path MTU once encapsulated is answered with an ICMP fragmentation
//! needed carrying the MTU less 20 bytes, so the client's path MTU discovery adjusts.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_FRAG_NEEDED, bpf_fib_lookup as FibParams},
    helpers::generated::bpf_fib_lookup,
};
use lb_common::{
    Backend, CtEntry, FlowKey, IPPROTO_TCP, IPPROTO_UDP, NetAddr, NetPort, Reason, csum,
    ct_flags, ct_state, dir, service_flags,
};

use crate::{
    conntrack, forward,
    frame::{Frame, L4Delta},
    headers::{self, ETH_HLEN, ETH_P_IP_RAW, EthHdr, IPV4_HLEN_MIN, Ipv4Hdr, ptr_at},
    maps::SCRATCH,
    refuse, select, snat,
    stats::count,
};

pub const IPPROTO_IPIP: u8 = 4;
const IP_DF_RAW: u16 = 0x4000u16.to_be();
const OUTER_TTL: u8 = 64;
const AF_INET: u8 = 2;

/// A: tracks a new DSR flow (FORWARD entry only, its outer source in `nat_addr`).
/// `ids` packs the service id (bits 32..64) and the backend id (bits 0..32). Not inlined.
#[inline(never)]
pub fn track<C: Frame>(
    ctx: &C,
    fwd: &FlowKey,
    ids: u64,
    backend: &Backend,
    now: u32,
) -> Result<(), Reason> {
    let s = SCRATCH.get_ptr_mut(0).ok_or(Reason::CtUpdateFailed)?;
    // SAFETY: this CPU's scratch element, valid while the program runs.
    unsafe {
        let src = snat::route_source(ctx, s, &backend.addr, IPPROTO_IPIP)?;
        let e = &mut (*s).entry;
        *e = conntrack::new_entry(fwd, (ids >> 32) as u32, ids as u32, backend, now);
        e.nat_addr = src;
        e.flags = ct_flags::DSR;
        if conntrack::map_of(conntrack::table_of_new(fwd))
            .insert(fwd, &*e, 0)
            .is_err()
        {
            count(Reason::CtUpdateFailed);
        }
    }
    count(Reason::DsrNew);
    Ok(())
}

/// A: what [`encapsulate`] needs, left in `SCRATCH` by the main path (which then returns
/// [`Reason::DsrEncapsulated`] as its signal): the outer source (the flow's FORWARD value
/// is in the scratch entry already), the endpoint's address and port.
#[inline(always)]
pub fn stage(backend: &Backend) -> Result<(), Reason> {
    let s = SCRATCH.get_ptr_mut(0).ok_or(Reason::CtUpdateFailed)?;
    // SAFETY: this CPU's scratch element.
    unsafe {
        (*s).entry.peer_addr = backend.addr;
        (*s).entry.peer_port = backend.port;
    }
    Ok(())
}

/// A: encapsulates the packet as [`stage`] left it and forwards it. Not inlined: runs
/// beside the main path.
#[inline(never)]
pub fn encapsulate<C: Frame>(ctx: &C) -> Result<u32, Reason> {
    let s = SCRATCH.get_ptr_mut(0).ok_or(Reason::CtUpdateFailed)?;
    // SAFETY: this CPU's scratch element.
    let (src, dst, port) = unsafe {
        (
            (*s).entry.nat_addr.v4_raw(),
            (*s).entry.peer_addr.v4_raw(),
            (*s).entry.peer_port.raw(),
        )
    };
    let inner_len = ctx.frame_len().saturating_sub(ETH_HLEN);
    let outer_len = (inner_len + IPV4_HLEN_MIN) as u16;
    // The path MTU towards the endpoint, before anything changes. A GSO packet (TC) is
    // not checked: growing its room below lowers its segment size by as much.
    let mtu_len = if ctx.gso_size() != 0 { 0 } else { outer_len };
    // SAFETY: scratch as above.
    unsafe {
        let fib = &mut (*s).fib;
        snat::zero_words(
            (fib as *mut FibParams).cast(),
            core::mem::size_of::<FibParams>() / 4,
        );
        fib.family = AF_INET;
        fib.l4_protocol = IPPROTO_IPIP;
        fib.__bindgen_anon_1.tot_len = mtu_len;
        fib.__bindgen_anon_3.ipv4_src = src;
        fib.__bindgen_anon_4.ipv4_dst = dst;
        fib.ifindex = ctx.ingress_ifindex();
        let rc = bpf_fib_lookup(
            ctx.raw(),
            fib,
            core::mem::size_of::<FibParams>() as i32,
            1 << 2, // BPF_FIB_LOOKUP_SKIP_NEIGH
        );
        if rc == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64 {
            let mtu = fib.__bindgen_anon_1.mtu_result;
            let action = refuse::frag_needed(ctx, mtu.saturating_sub(IPV4_HLEN_MIN as u16))?;
            count(Reason::TxFragNeeded);
            return Ok(action);
        }
    }
    // Room for the outer header; pointers are derived again below.
    ctx.insert_after_eth(IPV4_HLEN_MIN, true)
        .map_err(|_| Reason::CtUpdateFailed)?;
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let eth: *mut EthHdr = ptr_at(data, data_end, 0).ok_or(Reason::PassMalformed)?;
    let ip: *mut Ipv4Hdr = ptr_at(data, data_end, ETH_HLEN).ok_or(Reason::PassMalformed)?;
    let inner: *mut Ipv4Hdr =
        ptr_at(data, data_end, ETH_HLEN + IPV4_HLEN_MIN).ok_or(Reason::PassMalformed)?;
    // SAFETY: every pointer was bounds checked after the room was made.
    unsafe {
        let tos = (*inner).tos;
        (*eth).proto = ETH_P_IP_RAW;
        let ip = &mut *ip;
        ip.vhl = 0x45;
        ip.tos = tos;
        ip.tot_len = outer_len.to_be();
        ip.id = port;
        ip.frag_off = IP_DF_RAW;
        ip.ttl = OUTER_TTL;
        ip.proto = IPPROTO_IPIP;
        ip.check = 0;
        ip.saddr = src;
        ip.daddr = dst;
        let words = (ip as *const Ipv4Hdr).cast::<u16>();
        let mut sum = 0u32;
        let mut i = 0;
        while i < 10 {
            sum += u32::from(*words.add(i));
            i += 1;
        }
        ip.check = !csum::fold(sum);
    }
    count(Reason::DsrEncapsulated);
    Ok(forward::ipv4(ctx, eth, ip, IPPROTO_IPIP, 0, 0))
}

/// B: an IPIP packet whose inner destination is a DSR frontend: decapsulated, translated to
/// the endpoint the outer header names, tracked both ways, forwarded. Anything else is
/// left untouched (`xdp_pass_not_ours`: another tunnel, e.g. a CNI's). Not inlined.
#[inline(never)]
pub fn decapsulate<C: Frame>(ctx: &C) -> Result<u32, Reason> {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let outer: *mut Ipv4Hdr = ptr_at(data, data_end, ETH_HLEN).ok_or(Reason::PassNotOurs)?;
    let inner: *mut Ipv4Hdr =
        ptr_at(data, data_end, ETH_HLEN + IPV4_HLEN_MIN).ok_or(Reason::PassNotOurs)?;
    // SAFETY: bounds checked by ptr_at.
    let (ovhl, oproto, ofrag, backend_addr, backend_port, ivhl, iproto, idst) = unsafe {
        (
            (*outer).vhl,
            (*outer).proto,
            (*outer).frag_off,
            (*outer).daddr,
            (*outer).id,
            (*inner).vhl,
            (*inner).proto,
            (*inner).daddr,
        )
    };
    if ovhl != 0x45
        || oproto != IPPROTO_IPIP
        || ofrag & headers::IP_FRAG_MASK_RAW != 0
        || ivhl != 0x45
        || (iproto != IPPROTO_TCP && iproto != IPPROTO_UDP)
    {
        return Err(Reason::PassNotOurs);
    }
    let ports: *mut [u16; 2] =
        ptr_at(data, data_end, ETH_HLEN + 2 * IPV4_HLEN_MIN).ok_or(Reason::PassNotOurs)?;
    // SAFETY: bounds checked by ptr_at.
    let dport = unsafe { (*ports)[1] };
    let svc = select::frontend_anywhere(NetAddr::from_v4_raw(idst), dport, iproto)
        .ok_or(Reason::PassNotOurs)?;
    if svc.flags & service_flags::DSR == 0 {
        return Err(Reason::PassNotOurs);
    }
    // Decapsulate: the outer header goes, the Ethernet header stays first (same EtherType);
    // pointers are derived again below.
    ctx.remove_after_eth(IPV4_HLEN_MIN)
        .map_err(|_| Reason::CtUpdateFailed)?;
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let pkt = headers::parse_ipv4(data, data_end, ctx.frame_len())
        .map_err(|_| Reason::DropNoBackend)?;
    let s = SCRATCH.get_ptr_mut(0).ok_or(Reason::CtUpdateFailed)?;
    // SAFETY: this CPU's scratch element; `ip` was bounds checked by the parser.
    let (flow, b) = unsafe {
        let flow = &mut (*s).fwd;
        flow.src = NetAddr::from_v4_raw((*pkt.ip).saddr);
        flow.dst = NetAddr::from_v4_raw(idst);
        flow.sport = NetPort(pkt.sport);
        flow.dport = NetPort(pkt.dport);
        flow.proto = pkt.proto;
        flow.dir = dir::FORWARD;
        flow._pad = [0; 2];
        let b = &mut (*s).backend;
        b.addr = NetAddr::from_v4_raw(backend_addr);
        b.port = NetPort(backend_port);
        b.flags = 0;
        b.service_id = svc.id;
        b.generation = 0;
        (&*flow, &*b)
    };
    let now = conntrack::now_s();
    let syn = pkt.proto == IPPROTO_TCP && pkt.tcp_flags & 0x12 == 0x02;
    match conntrack::forward(flow) {
        // SAFETY: the entry is valid while the program runs.
        Some((t, e)) if !syn && conntrack::alive(unsafe { &*e }, now) => {
            let flags_now = (u64::from(pkt.tcp_flags) << 32) | u64::from(now);
            conntrack::on_forward(t, flow, e, b, flags_now);
        }
        _ => track_here(flow, svc.id, b, now),
    }
    // DNAT to the endpoint (IPv4 header and L4 checksums; a UDP checksum of 0 stays 0).
    let dptr = pkt.l4_dport();
    let mut d = L4Delta::default();
    // SAFETY: every pointer was bounds checked; nothing resized the packet since.
    unsafe {
        let ip = pkt.ip;
        (*ip).daddr = backend_addr;
        (*ip).check = csum::update32((*ip).check, idst, backend_addr);
        d.addr(&[idst], &[backend_addr]);
        d.port(pkt.dport, backend_port);
        *dptr = backend_port;
    }
    ctx.l4_csum(pkt.l4_off + pkt.check_off, d, pkt.proto == IPPROTO_UDP, false)?;
    count(Reason::DsrDecapsulated);
    crate::xdp_lb::forward_again(ctx, false, pkt.proto, pkt.sport, backend_port)
}

/// B: tracks a decapsulated flow both ways, with backend id 0 ([`ct_flags::DSR`]: the
/// endpoint came with the packet) so TC reverse-translates its replies.
#[inline(never)]
fn track_here(fwd: &FlowKey, service_id: u32, backend: &Backend, now: u32) {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let t = conntrack::table_of_new(fwd);
    // SAFETY: this CPU's scratch element.
    unsafe {
        let e: &mut CtEntry = &mut (*s).entry;
        *e = conntrack::new_entry(fwd, service_id, 0, backend, now);
        e.flags = ct_flags::DSR;
        if fwd.proto == IPPROTO_TCP {
            e.state = ct_state::NEW;
        }
        if conntrack::map_of(t).insert(fwd, &*e, 0).is_err() {
            count(Reason::CtUpdateFailed);
        }
        let key = e.reply_key(fwd, backend.addr, backend.port);
        *e = e.reply_value(fwd);
        if conntrack::map_of(t).insert(&key, &*e, 0).is_err() {
            count(Reason::CtUpdateFailed);
        }
    }
}

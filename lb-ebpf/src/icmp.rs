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

use aya_ebpf::programs::{TcContext, XdpContext};
use lb_common::{FlowKey, IPPROTO_TCP, IPPROTO_UDP, NetAddr, NetPort, Reason, csum, dir};

use crate::{
    conntrack, forward,
    headers::{ETH_HLEN, EthHdr, IPV4_HLEN_MIN, Ipv4Hdr, ptr_at},
    select,
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

/// Inbound translation at XDP; `Err` passes the packet untouched, counting the reason.
#[inline(always)]
pub fn translate_in(ctx: &XdpContext) -> Result<u32, Reason> {
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
        let ct = conntrack::lookup(&flow).ok_or(Reason::PassNotOurs)?;
        let backend = select::backend(ct.backend_id).ok_or(Reason::PassNotOurs)?;
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
    let ct = conntrack::lookup(&key).ok_or(Reason::TcPassNotOurs)?;
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

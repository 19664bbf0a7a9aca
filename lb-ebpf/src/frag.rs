//! IPv4 fragments. Only a datagram's first fragment carries the ports, so it is matched
//! and translated like any packet; how its addresses were rewritten is then remembered in
//! `FRAGMENTS` under (source, destination, IP id, protocol, direction) as it arrived, and the
//! later fragments of the same datagram get the same addresses (with the IP header checksum
//! updated; the L4 checksum, in the first fragment, already covers the whole datagram).
//! Forward fragments are followed at XDP, reply fragments at TC egress. A later fragment
//! that arrives before its first one (or of a datagram that is not ours) is passed
//! untouched and counted (`xdp_pass_fragment`), as Cilium does. IPv6 fragments are passed.

use aya_ebpf::programs::TcContext;
use lb_common::{FlowKey, FragEntry, FragKey, NetAddr, Reason, csum, dir};

use crate::{
    forward,
    frame::Frame,
    headers::{ETH_HLEN, ETH_P_IP_RAW, EthHdr, Ipv4Hdr, ptr_at},
    maps::{FRAGMENTS, SCRATCH},
    stats::count,
};

/// Offsets inside the IPv4 header (TC rewrites through helpers).
const IP_CHECK_OFF: usize = ETH_HLEN + 10;
const IP_SADDR_OFF: usize = ETH_HLEN + 12;
const IP_DADDR_OFF: usize = ETH_HLEN + 16;

/// Remembers how the first fragment of `flow` (its addresses as it arrived) with IP id
/// `id` was translated; `direction`: FORWARD for fragments followed at XDP, REPLY at TC.
/// Not inlined (its own stack frame; the key is built in `SCRATCH`).
#[inline(never)]
pub fn remember(flow: &FlowKey, id: u32, new_src: &NetAddr, new_dst: &NetAddr, direction: u8) {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch element, valid while the program runs.
    let key = unsafe { &mut (*s).frag };
    key.src = flow.src;
    key.dst = flow.dst;
    key.id = id as u16;
    key.proto = flow.proto;
    key.dir = direction;
    let value = FragEntry {
        src: *new_src,
        dst: *new_dst,
    };
    if FRAGMENTS.insert(&*key, &value, 0).is_err() {
        count(Reason::CtUpdateFailed);
    }
}

/// The key of a later fragment, from its IPv4 header.
#[inline(always)]
fn key_of(ip: *const Ipv4Hdr, direction: u8) -> FragKey {
    // SAFETY: the caller checked the header's bounds.
    unsafe {
        FragKey {
            src: NetAddr::from_v4_raw((*ip).saddr),
            dst: NetAddr::from_v4_raw((*ip).daddr),
            id: (*ip).id,
            proto: (*ip).proto,
            dir: direction,
        }
    }
}

/// A later IPv4 fragment at XDP or TC ingress: rewritten as its first fragment was (the IP
/// header only, whose checksum covers nothing else), then forwarded. Not inlined: it runs
/// beside the main path, after the parser stopped at a fragment.
#[inline(never)]
pub fn follow<C: Frame>(ctx: &C) -> Result<u32, Reason> {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let eth: *mut EthHdr = ptr_at(data, data_end, 0).ok_or(Reason::PassFragment)?;
    // SAFETY: bounds checked by ptr_at.
    if unsafe { (*eth).proto } != ETH_P_IP_RAW {
        return Err(Reason::PassFragment);
    }
    let ip: *mut Ipv4Hdr = ptr_at(data, data_end, ETH_HLEN).ok_or(Reason::PassFragment)?;
    let key = key_of(ip, dir::FORWARD);
    // SAFETY: plain data, copied out.
    let e = *unsafe { FRAGMENTS.get(&key) }.ok_or(Reason::PassFragment)?;
    // SAFETY: bounds checked above; nothing resized the packet.
    unsafe {
        let (os, od) = ((*ip).saddr, (*ip).daddr);
        let (ns, nd) = (e.src.v4_raw(), e.dst.v4_raw());
        (*ip).saddr = ns;
        (*ip).daddr = nd;
        (*ip).check = csum::update32(csum::update32((*ip).check, os, ns), od, nd);
    }
    count(Reason::FragmentTranslated);
    // SAFETY: as above.
    let proto = unsafe { (*ip).proto };
    Ok(forward::ipv4(ctx, eth, ip, proto, 0, 0))
}

/// A later IPv4 fragment at TC egress: a reply's, rewritten as its first fragment was.
#[inline(always)]
pub fn follow_reply(ctx: &TcContext) -> Result<Reason, Reason> {
    let ip: *mut Ipv4Hdr =
        ptr_at(ctx.data(), ctx.data_end(), ETH_HLEN).ok_or(Reason::TcPassNotOurs)?;
    let key = key_of(ip, dir::REPLY);
    // SAFETY: plain data, copied out.
    let e = *unsafe { FRAGMENTS.get(&key) }.ok_or(Reason::TcPassNotOurs)?;
    let (os, od) = (key.src.v4_raw(), key.dst.v4_raw());
    let (ns, nd) = (e.src.v4_raw(), e.dst.v4_raw());
    let fail = |_| Reason::TcRewriteFailed;
    ctx.l3_csum_replace(IP_CHECK_OFF, os as u64, ns as u64, 4)
        .map_err(fail)?;
    ctx.l3_csum_replace(IP_CHECK_OFF, od as u64, nd as u64, 4)
        .map_err(fail)?;
    ctx.store(IP_SADDR_OFF, &ns, 0).map_err(fail)?;
    ctx.store(IP_DADDR_OFF, &nd, 0).map_err(fail)?;
    Ok(Reason::TcFragmentTranslated)
}

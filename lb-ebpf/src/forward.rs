//! After DNAT: redirect with a fib lookup to a device the hook can send to (at XDP, one
//! that can take XDP frames; at TC, any), else pass.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams},
    helpers::generated::bpf_fib_lookup,
};
use lb_common::{Reason, csum};

use crate::{
    frame::Frame,
    headers::{ETH_HLEN, EthHdr, IPV6_HLEN, Ipv4Hdr, Ipv6Hdr, ptr_at},
    stats::count,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// Traffic class and flow label of the first word of an IPv6 header (raw).
const IPV6_FLOWINFO_MASK_RAW: u32 = 0x0fff_ffffu32.to_be();

/// The L3 length of one segment of a GSO packet (TC: a local sender's TCP handed over in
/// one skb), whose IP header says the length of all of them: the segment size plus the
/// IP (`l3` bytes) and L4 headers. `None` for a single packet (its IP header says). A GSO
/// packet whose L4 header is not right after the IP header (`proto` 0) counts as too long,
/// so the stack forwards it, segmenting as the route needs.
#[inline(always)]
fn segment_len<C: Frame>(ctx: &C, l3: usize, proto: u8) -> Option<u16> {
    let gso = ctx.gso_size();
    if gso == 0 {
        return None;
    }
    let l4 = match proto {
        lb_common::IPPROTO_UDP => 8,
        lb_common::IPPROTO_TCP => {
            let Some(doff) = ptr_at::<u8>(ctx.data(), ctx.data_end(), ETH_HLEN + l3 + 12) else {
                return Some(u16::MAX);
            };
            // SAFETY: bounds checked by ptr_at.
            usize::from(unsafe { *doff } >> 4) * 4
        }
        _ => return Some(u16::MAX),
    };
    Some((gso as usize + l3 + l4).min(usize::from(u16::MAX)) as u16)
}

/// Forwards a translated IPv4 packet: redirected when the fib resolves the next hop to a
/// device the hook can send to (`Frame::can_redirect`), with MACs rewritten and the TTL
/// decremented; otherwise passed so the stack routes it (and answers TTL expiry, missing
/// neighbours, ...).
#[inline(always)]
pub fn ipv4<C: Frame>(
    ctx: &C,
    eth: *mut EthHdr,
    ip: *mut Ipv4Hdr,
    proto: u8,
    sport: u16,
    dport: u16,
) -> u32 {
    // SAFETY: eth and ip were bounds checked by the parser; the packet was not resized since.
    unsafe {
        if (*ip).ttl <= 1 {
            count(Reason::PassToStack);
            return C::PASS;
        }
        let mut fib: FibParams = core::mem::zeroed();
        fib.family = AF_INET;
        fib.l4_protocol = proto;
        fib.sport = sport;
        fib.dport = dport;
        // The L3 length, for the MTU check of the route (a GSO packet's: of one segment).
        let l3 = usize::from((*ip).vhl & 0x0f) * 4;
        fib.__bindgen_anon_1.tot_len =
            segment_len(ctx, l3, proto).unwrap_or(u16::from_be((*ip).tot_len));
        fib.__bindgen_anon_2.tos = (*ip).tos;
        fib.__bindgen_anon_3.ipv4_src = (*ip).saddr;
        fib.__bindgen_anon_4.ipv4_dst = (*ip).daddr;
        fib.ifindex = ctx.ingress_ifindex();
        let rc = bpf_fib_lookup(
            ctx.raw(),
            &mut fib,
            core::mem::size_of::<FibParams>() as i32,
            0,
        );
        if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 || !ctx.can_redirect(fib.ifindex) {
            count(Reason::PassToStack);
            return C::PASS;
        }
        // TTL sits in the high byte of the 16-bit word (ttl, proto) at offset 8.
        let old = u16::from_ne_bytes([(*ip).ttl, (*ip).proto]);
        (*ip).ttl -= 1;
        let new = u16::from_ne_bytes([(*ip).ttl, (*ip).proto]);
        (*ip).check = csum::update16((*ip).check, old, new);
        (*eth).dst = fib.dmac;
        (*eth).src = fib.smac;
        match ctx.redirect(fib.ifindex) {
            Some(action) => {
                count(Reason::Redirect);
                action
            }
            None => {
                count(Reason::PassToStack);
                C::PASS
            }
        }
    }
}

/// Forwards a translated IPv6 packet as [`ipv4`] does, the hop limit decremented (IPv6 has
/// no header checksum); passed when the hop limit is <= 1.
#[inline(always)]
pub fn ipv6<C: Frame>(
    ctx: &C,
    eth: *mut EthHdr,
    ip: *mut Ipv6Hdr,
    proto: u8,
    sport: u16,
    dport: u16,
) -> u32 {
    // SAFETY: eth and ip were bounds checked by the parser; the packet was not resized since.
    unsafe {
        if (*ip).hop_limit <= 1 {
            count(Reason::PassToStack);
            return C::PASS;
        }
        let mut fib: FibParams = core::mem::zeroed();
        fib.family = AF_INET6;
        fib.l4_protocol = proto;
        fib.sport = sport;
        fib.dport = dport;
        // The L3 length, for the MTU check (as for IPv4).
        let proto_here = if (*ip).nexthdr == proto { proto } else { 0 };
        fib.__bindgen_anon_1.tot_len = segment_len(ctx, IPV6_HLEN, proto_here)
            .unwrap_or((IPV6_HLEN as u16).wrapping_add(u16::from_be((*ip).payload_len)));
        fib.__bindgen_anon_2.flowinfo = (*ip).vtc_flow & IPV6_FLOWINFO_MASK_RAW;
        fib.__bindgen_anon_3.ipv6_src = (*ip).saddr;
        fib.__bindgen_anon_4.ipv6_dst = (*ip).daddr;
        fib.ifindex = ctx.ingress_ifindex();
        let rc = bpf_fib_lookup(
            ctx.raw(),
            &mut fib,
            core::mem::size_of::<FibParams>() as i32,
            0,
        );
        if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 || !ctx.can_redirect(fib.ifindex) {
            count(Reason::PassToStack);
            return C::PASS;
        }
        // The hop limit shares a word with the next header (checksummed nowhere).
        let old = u16::from_ne_bytes([(*ip).nexthdr, (*ip).hop_limit]);
        (*ip).hop_limit -= 1;
        let new = u16::from_ne_bytes([(*ip).nexthdr, (*ip).hop_limit]);
        (*eth).dst = fib.dmac;
        (*eth).src = fib.smac;
        // Last: at TC, a helper call ends the packet pointers' validity.
        ctx.data_changed(csum::add16(0, old, new));
        match ctx.redirect(fib.ifindex) {
            Some(action) => {
                count(Reason::Redirect);
                action
            }
            None => {
                count(Reason::PassToStack);
                C::PASS
            }
        }
    }
}

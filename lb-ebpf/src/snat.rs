//! Source NAT of flows to endpoints on other nodes (`backend_flags::REMOTE`).
//!
//! Such a flow leaves this node from the node's own address towards the endpoint (the
//! route's preferred source, `bpf_fib_lookup` with `BPF_FIB_LOOKUP_SRC`) and a port of the
//! NAT range (`GlobalConfig::nat_port_*`), so the endpoint's node routes the reply back
//! here, where [`reverse`] restores the frontend as the source and the client as the
//! destination. A port is taken by inserting the flow's REPLY entry with `BPF_NOEXIST`:
//! the map itself is the allocator, so a port held by a live flow (in either TCP table)
//! is never handed out twice; the mapping lives and dies with the flow's conntrack
//! entries (same timeouts, same GC). Values too large for the stack live in `SCRATCH`.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams},
    helpers::{bpf_get_prandom_u32, generated::bpf_fib_lookup},
};
use lb_common::{
    Backend, CtEntry, FlowKey, IPPROTO_TCP, NetAddr, NetPort, Reason, csum, ct_flags,
    dir,
};

use crate::{
    conntrack,
    frame::{Frame, L4Delta},
    headers::{self, ETH_P_IP_RAW, ETH_P_IPV6_RAW, EthHdr, Ipv4Hdr, Ipv6Hdr, Packet, ptr_at},
    maps::{CONFIG, CONNTRACK, NODE_ADDRS, SCRATCH, Scratch},
    stats::count,
};

/// `bpf_fib_lookup` flags (uapi): no neighbour needed, and fill in the source address.
const FIB_SKIP_NEIGH: u32 = 1 << 2;
const FIB_SRC: u32 = 1 << 4;
/// `BPF_NOEXIST`: insert only if the key is absent.
const NOEXIST: u64 = 1;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// Ports of the range tried for one new flow (from a random start) before giving up.
const TRIES: u32 = 8;

/// Tracks a new flow to a remote backend under a source address and port of its own:
/// REPLY entry first (taking the port), then FORWARD (naming the source it was given).
/// `ids` packs the service id (bits 32..64) and the backend id (bits 0..32): a BPF call
/// takes at most five arguments. Not inlined (its own stack frame).
#[inline(never)]
pub fn track<C: Frame>(
    ctx: &C,
    fwd: &FlowKey,
    ids: u64,
    backend: &Backend,
    now: u32,
) -> Result<(), Reason> {
    let s = SCRATCH.get_ptr_mut(0).ok_or(Reason::CtUpdateFailed)?;
    let cfg = CONFIG.get(0).ok_or(Reason::CtUpdateFailed)?;
    let (min, max) = (u32::from(cfg.nat_port_min), u32::from(cfg.nat_port_max));
    if min == 0 || max < min {
        return Err(Reason::DropSnatPortExhausted);
    }
    // Never 0 (the `% n` below must not be able to panic).
    let n = (max - min + 1).max(1);
    // SAFETY: `s` is this CPU's scratch element, valid while the program runs.
    unsafe {
        let src = route_source(ctx, s, &backend.addr, fwd.proto)?;

        // The REPLY value: the frontend to restore as the source, the client as the
        // destination (the FORWARD value with the flow's addresses, as for any flow).
        let e = &mut (*s).entry;
        *e = conntrack::new_entry(fwd, (ids >> 32) as u32, ids as u32, backend, now);
        e.flags = ct_flags::SNAT;
        *e = e.reply_value(fwd);
        let key = &mut (*s).key;
        key.src = backend.addr;
        key.dst = src;
        key.sport = backend.port;
        key.proto = fwd.proto;
        key.dir = dir::REPLY;
        key._pad = [0; 2];
        let t = conntrack::table_of_new(fwd);
        let start = bpf_get_prandom_u32() % n;
        let mut port = 0u32;
        let mut i = 0;
        while i < TRIES {
            let p = min + (start + i) % n;
            i += 1;
            key.dport = NetPort((p as u16).to_be());
            // A confirmed TCP flow holds its port in the established table.
            if fwd.proto == IPPROTO_TCP && CONNTRACK.get_ptr(&*key).is_some() {
                continue;
            }
            if conntrack::map_of(t).insert(&*key, &*e, NOEXIST).is_ok() {
                port = p;
                break;
            }
        }
        if port == 0 {
            return Err(Reason::DropSnatPortExhausted);
        }
        // The FORWARD value: the source the flow leaves with.
        e.nat_addr = src;
        e.nat_port = key.dport;
        // Word stores (a struct assignment of zeroes becomes a byte-wise memset loop, which
        // the verifier walks byte by byte).
        zero_words((&mut e.peer_addr as *mut NetAddr).cast(), 4);
        e.peer_port = NetPort(0);
        if conntrack::map_of(t).insert(fwd, &*e, 0).is_err() {
            count(Reason::CtUpdateFailed);
        }
    }
    count(Reason::SnatNew);
    Ok(())
}

/// Whether `dport` (raw) is a port of the NAT range: only such a packet can be the reply of
/// a source-NATed flow.
#[inline(always)]
pub fn in_nat_range(dport: u16) -> bool {
    let port = u16::from_be(dport);
    CONFIG
        .get(0)
        .is_some_and(|c| c.nat_port_min != 0 && (c.nat_port_min..=c.nat_port_max).contains(&port))
}

/// The node's address towards `addr`: the preferred source of the route the kernel would
/// take (`bpf_fib_lookup` with `BPF_FIB_LOOKUP_SRC`), looked up in `s`'s fib room.
///
/// # Safety
/// `s` must be this CPU's scratch element.
#[inline(always)]
pub unsafe fn route_source<C: Frame>(
    ctx: &C,
    s: *mut Scratch,
    addr: &NetAddr,
    proto: u8,
) -> Result<NetAddr, Reason> {
    // SAFETY: per the contract.
    unsafe {
        let fib = &mut (*s).fib;
        zero_words(
            (fib as *mut FibParams).cast(),
            core::mem::size_of::<FibParams>() / 4,
        );
        let v4 = addr.is_v4();
        if v4 {
            fib.family = AF_INET;
            fib.__bindgen_anon_4.ipv4_dst = addr.words[3];
        } else {
            fib.family = AF_INET6;
            fib.__bindgen_anon_4.ipv6_dst = addr.words;
        }
        fib.l4_protocol = proto;
        fib.ifindex = ctx.ingress_ifindex();
        let rc = bpf_fib_lookup(
            ctx.raw(),
            fib,
            core::mem::size_of::<FibParams>() as i32,
            FIB_SRC | FIB_SKIP_NEIGH,
        );
        if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 && rc != BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
            return Err(Reason::DropSnatNoRoute);
        }
        let src = if v4 {
            NetAddr::from_v4_raw(fib.__bindgen_anon_3.ipv4_src)
        } else {
            NetAddr {
                words: fib.__bindgen_anon_3.ipv6_src,
            }
        };
        if src == NetAddr::UNSPECIFIED || src == NetAddr::V4_UNSPECIFIED {
            return Err(Reason::DropSnatNoRoute);
        }
        Ok(src)
    }
}

/// Zeroes `n` 4-byte words with volatile stores (never turned into a `memset` call).
///
/// # Safety
/// `p` must be valid for `n` aligned 4-byte writes.
#[inline(always)]
pub(crate) unsafe fn zero_words(p: *mut u32, n: usize) {
    let mut i = 0;
    while i < n {
        // SAFETY: per the contract.
        unsafe { core::ptr::write_volatile(p.add(i), 0) };
        i += 1;
    }
}

/// A packet to a port of the NAT range that is the reply of a live source-NATed flow
/// (its REPLY entry names this destination): translated back (source: the frontend the
/// client dialled; destination: the client) and forwarded. Anything else is passed
/// (`xdp_pass_snat_stale` for a node address and a port of the range without a live flow,
/// else `xdp_pass_not_ours`). Not inlined: it runs only
/// after the forward path found no frontend, in a frame of its own.
#[inline(never)]
pub fn reverse<C: Frame>(ctx: &C) -> Result<u32, Reason> {
    let (data, data_end, frame_len) = (ctx.data(), ctx.data_end(), ctx.frame_len());
    let eth: *mut EthHdr = ptr_at(data, data_end, 0).ok_or(Reason::PassNotOurs)?;
    let s = SCRATCH.get_ptr_mut(0).ok_or(Reason::PassNotOurs)?;
    // SAFETY: bounds checked by ptr_at; `s` is this CPU's scratch element.
    let (ethertype, key) = unsafe { ((*eth).proto, &mut (*s).key) };
    let (pkt, v6): (Packet<u8>, bool) = if ethertype == ETH_P_IP_RAW {
        let p =
            headers::parse_ipv4(data, data_end, frame_len).map_err(|_| Reason::PassNotOurs)?;
        // SAFETY: `ip` was bounds checked by the parser.
        unsafe {
            key.src = NetAddr::from_v4_raw((*p.ip).saddr);
            key.dst = NetAddr::from_v4_raw((*p.ip).daddr);
        }
        (p.cast(), false)
    } else if ethertype == ETH_P_IPV6_RAW {
        let p =
            headers::parse_ipv6(data, data_end, frame_len).map_err(|_| Reason::PassNotOurs)?;
        // SAFETY: as above.
        unsafe {
            key.src = NetAddr { words: (*p.ip).saddr };
            key.dst = NetAddr { words: (*p.ip).daddr };
        }
        (p.cast(), true)
    } else {
        return Err(Reason::PassNotOurs);
    };
    if !in_nat_range(pkt.dport) {
        return Err(Reason::PassNotOurs);
    }
    key.sport = NetPort(pkt.sport);
    key.dport = NetPort(pkt.dport);
    key.proto = pkt.proto;
    key.dir = dir::REPLY;
    key._pad = [0; 2];
    let now = conntrack::now_s();
    // The conntrack entry decides (the source the route gave may be an address of an
    // interface that is not attached); a miss counts as stale only for a node address.
    let (table, rev, fwd) = conntrack::reply(&*key, now).map_err(|_| {
        // SAFETY: plain lookup.
        if unsafe { NODE_ADDRS.get(&key.dst) }.is_some() {
            Reason::PassSnatStale
        } else {
            Reason::PassNotOurs
        }
    })?;
    // SAFETY: valid while the program runs.
    let r: &CtEntry = unsafe { &*rev };
    if r.flags & ct_flags::SNAT == 0 {
        return Err(Reason::PassSnatStale);
    }
    if !conntrack::on_reply(fwd, pkt.proto, pkt.tcp_flags, now) {
        conntrack::forget_reply(table, &*key, rev);
        return Err(Reason::PassSnatStale);
    }
    let (new_sport, new_dport) = (r.nat_port.raw(), r.peer_port.raw());
    let dport = pkt.l4_dport();
    let sport: *mut u16 = pkt.l4.cast();
    let mut d = L4Delta::default();
    // SAFETY: every pointer was bounds checked; nothing resized the packet.
    unsafe {
        if v6 {
            let ip = pkt.ip.cast::<Ipv6Hdr>();
            (*ip).saddr = r.nat_addr.words;
            (*ip).daddr = r.peer_addr.words;
            d.addr(&key.src.words, &r.nat_addr.words);
            d.addr(&key.dst.words, &r.peer_addr.words);
        } else {
            let ip = pkt.ip.cast::<Ipv4Hdr>();
            let (os, ns) = (key.src.v4_raw(), r.nat_addr.v4_raw());
            let (od, nd) = (key.dst.v4_raw(), r.peer_addr.v4_raw());
            (*ip).saddr = ns;
            (*ip).daddr = nd;
            (*ip).check = csum::update32(csum::update32((*ip).check, os, ns), od, nd);
            d.addr(&[os, od], &[ns, nd]);
        }
        d.port(pkt.sport, new_sport);
        d.port(pkt.dport, new_dport);
        *sport = new_sport;
        *dport = new_dport;
    }
    if pkt.frag_first {
        // SAFETY: `ip` was bounds checked (IPv4).
        let id = u32::from(unsafe { (*pkt.ip.cast::<Ipv4Hdr>()).id });
        crate::frag::remember(&*key, id, &r.nat_addr, &r.peer_addr, dir::FORWARD);
    }
    let udp = pkt.proto == lb_common::IPPROTO_UDP;
    ctx.l4_csum(pkt.l4_off + pkt.check_off, d, udp, v6)?;
    count(Reason::RevSnat);
    crate::xdp_lb::forward_again(ctx, v6, pkt.proto, new_sport, new_dport)
}

/// Rewrites the source of a translated client -> backend packet to what its SNAT flow was
/// given (`e`: the flow's FORWARD entry), updating the IPv4 header checksum and adding the
/// L4 checksum's change to `d`.
///
/// # Safety
/// `ip` and `sport` must point into the bounds-checked packet, `e` to a live map value.
#[inline(always)]
pub unsafe fn rewrite_source(
    ip: *mut u8,
    v6: bool,
    sport: *mut u16,
    e: *const CtEntry,
    d: &mut L4Delta,
) {
    // SAFETY: per the contract.
    unsafe {
        let (new_addr, new_port) = ((*e).nat_addr, (*e).nat_port.raw());
        if v6 {
            let ip = ip.cast::<Ipv6Hdr>();
            let old = (*ip).saddr;
            (*ip).saddr = new_addr.words;
            d.addr(&old, &new_addr.words);
        } else {
            let ip = ip.cast::<Ipv4Hdr>();
            let (old, new) = ((*ip).saddr, new_addr.v4_raw());
            (*ip).saddr = new;
            (*ip).check = csum::update32((*ip).check, old, new);
            d.addr(&[old], &[new]);
        }
        d.port(*sport, new_port);
        *sport = new_port;
    }
}

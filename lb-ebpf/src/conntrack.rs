//! Connection tracking with a lifecycle.
//!
//! Three LRU maps ([`Table`]): `CT_SYN` holds TCP flows until both sides confirmed them
//! (the backend answered and the client went on), `CONNTRACK` the confirmed TCP flows,
//! `CT_OTHER` the rest (UDP). A SYN flood or UDP churn therefore only evicts its own kind.
//! Each flow has two entries in its table: FORWARD (client -> frontend: service, backend
//! and its generation, the lifecycle) and REPLY (backend -> client: the frontend to
//! restore). The lifecycle lives in the FORWARD entry only: `state` ([`ct_state`]) moves on
//! TCP flags seen in either direction, and `last_seen_s` is refreshed at most once a second.
//! An entry not seen for longer than its state's timeout (`GlobalConfig`) is expired: its
//! next packet is a new flow, and a REPLY entry is honoured only while its FORWARD entry is
//! alive and names the same backend. Userspace GC deletes expired entries in the background.

use aya_ebpf::{helpers::bpf_ktime_get_ns, maps::LruHashMap};
use lb_common::{
    Backend, CtEntry, FlowKey, IPPROTO_TCP, NetAddr, NetPort, Reason, ct_flags,
    ct_state, dir,
};

use crate::{
    maps::{CONFIG, CONNTRACK, CT_OTHER, CT_SYN},
    stats::count,
};

/// TCP flag bits.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Which map a flow lives in.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Syn,
    Established,
    Other,
}

#[inline(always)]
fn map(t: Table) -> &'static LruHashMap<FlowKey, CtEntry> {
    match t {
        Table::Syn => &CT_SYN,
        Table::Established => &CONNTRACK,
        Table::Other => &CT_OTHER,
    }
}

/// Seconds of the monotonic clock.
#[inline(always)]
pub fn now_s() -> u32 {
    // SAFETY: no preconditions.
    (unsafe { bpf_ktime_get_ns() } / 1_000_000_000) as u32
}

/// Whether a FORWARD entry is alive at `now` ([`CtEntry::alive`] under the configured
/// timeouts), read through references (no copies: the XDP program's stack is tight).
#[inline(always)]
pub fn alive(e: &CtEntry, now: u32) -> bool {
    CONFIG.get(0).is_some_and(|c| e.alive(now, c))
}

/// The REPLY key of `fwd` once translated to `backend`.
#[inline(always)]
fn reply_key(fwd: &FlowKey, addr: NetAddr, port: NetPort) -> FlowKey {
    FlowKey {
        src: addr,
        dst: fwd.src,
        sport: port,
        dport: fwd.sport,
        proto: fwd.proto,
        dir: dir::REPLY,
        _pad: [0; 2],
    }
}

/// The FORWARD key a REPLY entry points back to.
#[inline(always)]
fn forward_key(reply: &FlowKey, rev: &CtEntry) -> FlowKey {
    FlowKey {
        src: reply.dst,
        dst: rev.nat_addr,
        sport: reply.dport,
        dport: rev.nat_port,
        proto: reply.proto,
        dir: dir::FORWARD,
        _pad: [0; 2],
    }
}

/// The FORWARD entry of a client -> frontend packet, in place, with its table: TCP looks in
/// the established table first, then the SYN table.
#[inline(always)]
pub fn forward(flow: &FlowKey) -> Option<(Table, *mut CtEntry)> {
    if flow.proto == IPPROTO_TCP {
        if let Some(e) = CONNTRACK.get_ptr_mut(flow) {
            return Some((Table::Established, e));
        }
        CT_SYN.get_ptr_mut(flow).map(|e| (Table::Syn, e))
    } else {
        CT_OTHER.get_ptr_mut(flow).map(|e| (Table::Other, e))
    }
}

/// A backend -> client packet's flow: the REPLY entry (copied) and its FORWARD entry (in
/// place), when both exist, the flow is alive and the two name the same backend.
#[inline(always)]
pub fn reply(key: &FlowKey, now: u32) -> Result<(Table, CtEntry, *mut CtEntry), Reason> {
    let (t, rev) = if key.proto == IPPROTO_TCP {
        // SAFETY: plain data, copied out at once.
        match unsafe { CONNTRACK.get(key) } {
            Some(r) => (Table::Established, *r),
            None => (
                Table::Syn,
                // SAFETY: as above.
                *unsafe { CT_SYN.get(key) }.ok_or(Reason::TcPassNotOurs)?,
            ),
        }
    } else {
        // SAFETY: as above.
        (
            Table::Other,
            *unsafe { CT_OTHER.get(key) }.ok_or(Reason::TcPassNotOurs)?,
        )
    };
    let fwd = map(t)
        .get_ptr_mut(&forward_key(key, &rev))
        .ok_or(Reason::TcPassStale)?;
    // SAFETY: the entry stays valid while the program runs; racing writers only move the
    // lifecycle forward.
    let f = unsafe { &*fwd };
    if f.backend_id != rev.backend_id || f.backend_gen != rev.backend_gen || !alive(f, now) {
        return Err(Reason::TcPassStale);
    }
    Ok((t, rev, fwd))
}

/// Whether translating `fwd` to `backend` would reuse a reply entry that belongs to
/// another frontend (same client address and port, same backend: one 4-tuple there). An
/// entry of a dead flow counts too until the GC deletes it: it only makes the new flow
/// prefer another slot. Not inlined (a BPF-to-BPF call with its own stack frame).
#[inline(never)]
pub fn reply_clash(fwd: &FlowKey, backend: &Backend) -> bool {
    let key = reply_key(fwd, backend.addr, backend.port);
    let table = if fwd.proto == IPPROTO_TCP {
        match CONNTRACK.get_ptr(&key) {
            Some(r) => Some(r),
            None => CT_SYN.get_ptr(&key),
        }
    } else {
        CT_OTHER.get_ptr(&key)
    };
    match table {
        // SAFETY: valid while the program runs; only compared.
        Some(r) => unsafe { (*r).nat_addr != fwd.dst || (*r).nat_port != fwd.dport },
        None => false,
    }
}

/// Records a new (or re-selected) flow in both directions: TCP in the SYN table until
/// confirmed, the rest in the other table. Not inlined (its own stack frame).
#[inline(never)]
pub fn track(fwd: &FlowKey, service_id: u32, backend_id: u32, backend: &Backend, now: u32) {
    let tcp = fwd.proto == IPPROTO_TCP;
    let entry = CtEntry {
        nat_addr: NetAddr::UNSPECIFIED,
        nat_port: NetPort(0),
        state: if tcp { ct_state::NEW } else { ct_state::OTHER },
        flags: 0,
        service_id,
        backend_id,
        backend_gen: backend.generation,
        last_seen_s: now,
    };
    let t = if tcp { Table::Syn } else { Table::Other };
    write_both(t, fwd, entry, backend.addr, backend.port);
}

/// Writes the FORWARD entry, then the same value with the frontend as the REPLY entry (one
/// value on the stack, changed in place: the stack is tight).
#[inline(always)]
fn write_both(t: Table, fwd: &FlowKey, mut entry: CtEntry, addr: NetAddr, port: NetPort) {
    if map(t).insert(fwd, &entry, 0).is_err() {
        count(Reason::CtUpdateFailed);
    }
    entry.nat_addr = fwd.dst;
    entry.nat_port = fwd.dport;
    if map(t).insert(&reply_key(fwd, addr, port), &entry, 0).is_err() {
        count(Reason::CtUpdateFailed);
    }
}

/// Deletes both entries of a flow (a SYN reselecting a reused client port: the old flow is
/// over). Not inlined (its own stack frame).
#[inline(never)]
pub fn forget(t: Table, fwd: &FlowKey, backend: Option<&Backend>) {
    let _ = map(t).remove(fwd);
    if let Some(b) = backend {
        let _ = map(t).remove(&reply_key(fwd, b.addr, b.port));
    }
}

/// The state a TCP flow moves to on a packet with `flags` (either direction).
#[inline(always)]
fn next_state(state: u8, flags: u8) -> u8 {
    if flags & TCP_RST != 0 {
        ct_state::CLOSED
    } else if flags & TCP_FIN != 0 {
        if state == ct_state::CLOSED {
            state
        } else {
            ct_state::CLOSING
        }
    } else {
        state
    }
}

/// A client -> frontend packet of a tracked, alive flow on `backend`: moves the lifecycle
/// on. A confirmed flow (the backend answered, the client sends a non-SYN packet) moves
/// from the SYN table to the established one; at most once a second (when `last_seen_s`
/// changes) the REPLY entry is checked and written again if it was evicted. Not inlined
/// (its own stack frame); `flags_now` packs the packet's TCP flags (bits 32..40) and the
/// time in seconds (bits 0..32): a BPF call takes at most five arguments.
#[inline(never)]
pub fn on_forward(t: Table, fwd: &FlowKey, e: *mut CtEntry, backend: &Backend, flags_now: u64) {
    let (tcp_flags, now) = ((flags_now >> 32) as u8, flags_now as u32);
    // SAFETY: the entry stays valid while the program runs.
    let e = unsafe { &mut *e };
    let key = reply_key(fwd, backend.addr, backend.port);
    if fwd.proto == IPPROTO_TCP {
        let state = next_state(e.state, tcp_flags);
        if t == Table::Syn
            && e.flags & ct_flags::SEEN_REPLY != 0
            && tcp_flags & (TCP_SYN | TCP_RST | TCP_FIN) == 0
            && state == ct_state::NEW
        {
            let mut c = *e;
            c.state = ct_state::ESTABLISHED;
            c.last_seen_s = now;
            if CONNTRACK.insert(fwd, &c, 0).is_err() {
                count(Reason::CtUpdateFailed);
            }
            c.nat_addr = fwd.dst;
            c.nat_port = fwd.dport;
            if CONNTRACK.insert(&key, &c, 0).is_err() {
                count(Reason::CtUpdateFailed);
            }
            let _ = CT_SYN.remove(fwd);
            let _ = CT_SYN.remove(&key);
            count(Reason::CtConfirmed);
            return;
        }
        e.state = state;
    }
    if e.last_seen_s != now {
        e.last_seen_s = now;
        // SAFETY: only checks presence.
        if unsafe { map(t).get(&key) }.is_none() {
            let mut rev = *e;
            rev.nat_addr = fwd.dst;
            rev.nat_port = fwd.dport;
            if map(t).insert(&key, &rev, 0).is_ok() {
                count(Reason::CtReplyRebuilt);
            }
        }
    }
}

/// A backend -> client packet of an alive flow: moves the lifecycle on (TCP flags), marks
/// that the backend answered, refreshes `last_seen_s`. Returns false when the packet must
/// not be translated: a SYN-ACK for a flow that is past its handshake (a new connection
/// straight to the backend that reuses the client port).
#[inline(always)]
pub fn on_reply(fwd: *mut CtEntry, proto: u8, tcp_flags: u8, now: u32) -> bool {
    // SAFETY: the entry stays valid while the program runs.
    let e = unsafe { &mut *fwd };
    if proto == IPPROTO_TCP {
        if tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK && e.state != ct_state::NEW {
            return false;
        }
        e.state = next_state(e.state, tcp_flags);
    }
    if e.flags & ct_flags::SEEN_REPLY == 0 {
        e.flags |= ct_flags::SEEN_REPLY;
    }
    if e.last_seen_s != now {
        e.last_seen_s = now;
    }
    true
}

/// Deletes a flow found from its REPLY entry (a new connection straight to the backend
/// reuses the 4-tuple: the old flow is over).
#[inline(always)]
pub fn forget_reply(t: Table, key: &FlowKey, rev: &CtEntry) {
    let _ = map(t).remove(&forward_key(key, rev));
    let _ = map(t).remove(key);
}

/// The backend an alive tracked flow (client -> frontend) was translated to, for ICMP
/// errors about it.
#[inline(always)]
pub fn translated(flow: &FlowKey) -> Option<&'static Backend> {
    let (_, e) = forward(flow)?;
    // SAFETY: plain data, copied out.
    let ct = unsafe { *e };
    if !alive(&ct, now_s()) {
        return None;
    }
    crate::select::backend(ct.backend_id, ct.service_id).filter(|b| b.generation == ct.backend_gen)
}

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
    Backend, CtEntry, FlowKey, IPPROTO_TCP, NetAddr, NetPort, Reason, ct_flags, ct_state,
};

use crate::{
    maps::{CONFIG, CONNTRACK, CT_OTHER, CT_SYN, SCRATCH},
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

/// A backend -> client packet's flow: the REPLY entry and its FORWARD entry (both in
/// place), when both exist, the flow is alive and the two name the same backend.
#[inline(always)]
pub fn reply(key: &FlowKey, now: u32) -> Result<(Table, *const CtEntry, *mut CtEntry), Reason> {
    let (t, rev) = if key.proto == IPPROTO_TCP {
        match CONNTRACK.get_ptr(key) {
            Some(r) => (Table::Established, r),
            None => (
                Table::Syn,
                CT_SYN.get_ptr(key).ok_or(Reason::TcPassNotOurs)?,
            ),
        }
    } else {
        (
            Table::Other,
            CT_OTHER.get_ptr(key).ok_or(Reason::TcPassNotOurs)?,
        )
    };
    // SAFETY: the entries stay valid while the program runs; racing writers only move the
    // lifecycle forward.
    let r = unsafe { &*rev };
    let fwd = map(t)
        .get_ptr_mut(&r.forward_key(key))
        .ok_or(Reason::TcPassStale)?;
    // SAFETY: as above.
    let f = unsafe { &*fwd };
    if f.backend_id != r.backend_id || f.backend_gen != r.backend_gen || !alive(f, now) {
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
    // A source-NATed flow gets a port of its own: it cannot clash.
    if backend.flags & lb_common::backend_flags::REMOTE != 0 {
        return false;
    }
    let key = CtEntry::default().reply_key(fwd, backend.addr, backend.port);
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
/// confirmed, the rest in the other table. Not inlined (its own stack frame); the entry
/// and the reply key are built in `SCRATCH` (the stack is tight).
#[inline(never)]
pub fn track(fwd: &FlowKey, service_id: u32, backend_id: u32, backend: &Backend, now: u32) {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        count(Reason::CtUpdateFailed);
        return;
    };
    // SAFETY: this CPU's scratch element, valid while the program runs.
    let (entry, key) = unsafe { (&mut (*s).entry, &mut (*s).key) };
    *entry = new_entry(fwd, service_id, backend_id, backend, now);
    *key = entry.reply_key(fwd, backend.addr, backend.port);
    let t = table_of_new(fwd);
    if map(t).insert(fwd, &*entry, 0).is_err() {
        count(Reason::CtUpdateFailed);
    }
    *entry = entry.reply_value(fwd);
    if map(t).insert(&*key, &*entry, 0).is_err() {
        count(Reason::CtUpdateFailed);
    }
}

/// The FORWARD entry of a new flow (no source NAT).
#[inline(always)]
pub fn new_entry(
    fwd: &FlowKey,
    service_id: u32,
    backend_id: u32,
    backend: &Backend,
    now: u32,
) -> CtEntry {
    CtEntry {
        nat_addr: NetAddr::UNSPECIFIED,
        nat_port: NetPort(0),
        state: if fwd.proto == IPPROTO_TCP {
            ct_state::NEW
        } else {
            ct_state::OTHER
        },
        flags: 0,
        service_id,
        backend_id,
        backend_gen: backend.generation,
        last_seen_s: now,
        peer_addr: NetAddr::UNSPECIFIED,
        peer_port: NetPort(0),
        _pad: [0; 2],
    }
}

/// Where a new flow is tracked: TCP in the SYN table until confirmed, the rest in the other.
#[inline(always)]
pub fn table_of_new(fwd: &FlowKey) -> Table {
    if fwd.proto == IPPROTO_TCP {
        Table::Syn
    } else {
        Table::Other
    }
}

/// The map of a table.
#[inline(always)]
pub fn map_of(t: Table) -> &'static LruHashMap<FlowKey, CtEntry> {
    map(t)
}

/// Deletes both entries of a flow whose FORWARD entry is `e` (a SYN reselecting a reused
/// client port: the old flow is over). Not inlined (its own stack frame).
#[inline(never)]
pub fn forget(t: Table, fwd: &FlowKey, e: *const CtEntry, backend: Option<&Backend>) {
    if let Some(b) = backend {
        // SAFETY: valid while the program runs; read before the delete.
        let key = unsafe { (*e).reply_key(fwd, b.addr, b.port) };
        let _ = map(t).remove(&key);
    }
    let _ = map(t).remove(fwd);
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
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch element, valid while the program runs.
    let (c, key) = unsafe { (&mut (*s).entry, &mut (*s).key) };
    if e.flags & ct_flags::DSR != 0 && e.backend_id != 0 {
        // A direct-server-return flow on the node that chose its endpoint: replies never
        // come back here, so a handshake is confirmed by the client's first packet without
        // SYN (it stays in its table) and no REPLY entry is kept.
        if fwd.proto == IPPROTO_TCP {
            let mut state = next_state(e.state, tcp_flags);
            if state == ct_state::NEW && tcp_flags & (TCP_SYN | TCP_RST | TCP_FIN) == 0 {
                state = ct_state::ESTABLISHED;
            }
            e.state = state;
        }
        if e.last_seen_s != now {
            e.last_seen_s = now;
        }
        return;
    }
    *key = e.reply_key(fwd, backend.addr, backend.port);
    if fwd.proto == IPPROTO_TCP {
        let state = next_state(e.state, tcp_flags);
        if t == Table::Syn
            && e.flags & ct_flags::SEEN_REPLY != 0
            && tcp_flags & (TCP_SYN | TCP_RST | TCP_FIN) == 0
            && state == ct_state::NEW
        {
            *c = *e;
            c.state = ct_state::ESTABLISHED;
            c.last_seen_s = now;
            if CONNTRACK.insert(fwd, &*c, 0).is_err() {
                count(Reason::CtUpdateFailed);
            }
            *c = c.reply_value(fwd);
            if CONNTRACK.insert(&*key, &*c, 0).is_err() {
                count(Reason::CtUpdateFailed);
            }
            let _ = CT_SYN.remove(fwd);
            let _ = CT_SYN.remove(&*key);
            count(Reason::CtConfirmed);
            return;
        }
        e.state = state;
    }
    if e.last_seen_s != now {
        e.last_seen_s = now;
        // SAFETY: only checks presence.
        if unsafe { map(t).get(&*key) }.is_none() {
            *c = e.reply_value(fwd);
            if map(t).insert(&*key, &*c, 0).is_ok() {
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
pub fn forget_reply(t: Table, key: &FlowKey, rev: *const CtEntry) {
    // SAFETY: valid while the program runs; read before the deletes.
    let fwd = unsafe { (*rev).forward_key(key) };
    let _ = map(t).remove(&fwd);
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

//! Connection tracking: one shared LRU hash holding both directions of every flow.
//!
//! FORWARD entries (client -> frontend) name the service and backend; REPLY entries
//! (backend -> client) name the frontend the client dialled, for the reverse NAT at TC.
//! LRU eviction is not an error: the flow is selected afresh and counted as a ct miss.

use lb_common::{Backend, CtEntry, FlowKey, NetAddr, NetPort, Reason, dir};

use crate::{maps::CONNTRACK, stats::count};

#[inline(always)]
pub fn lookup(key: &FlowKey) -> Option<CtEntry> {
    // SAFETY: plain data, copied out before any other map operation.
    unsafe { CONNTRACK.get(key) }.copied()
}

/// The REPLY key of `fwd` once translated to `backend`.
#[inline(always)]
fn reply_key(fwd: &FlowKey, backend: &Backend) -> FlowKey {
    FlowKey {
        src: backend.addr,
        dst: fwd.src,
        sport: backend.port,
        dport: fwd.sport,
        proto: fwd.proto,
        dir: dir::REPLY,
        _pad: [0; 2],
    }
}

/// Whether translating `fwd` to `backend` would reuse a reply entry that belongs to another
/// frontend (same client address and port, same backend: the same 4-tuple at the backend).
#[inline(always)]
pub fn reply_clash(fwd: &FlowKey, backend: &Backend) -> bool {
    match lookup(&reply_key(fwd, backend)) {
        Some(e) => e.nat_addr != fwd.dst || e.nat_port != fwd.dport,
        None => false,
    }
}

/// Records a new (or re-selected) flow in both directions.
#[inline(always)]
pub fn track(fwd: &FlowKey, service_id: u32, backend_id: u32, backend: &Backend) {
    let entry = CtEntry {
        nat_addr: NetAddr::UNSPECIFIED,
        nat_port: NetPort(0),
        _pad: [0; 2],
        service_id,
        backend_id,
    };
    if CONNTRACK.insert(fwd, &entry, 0).is_err() {
        count(Reason::CtUpdateFailed);
    }
    let reply = reply_key(fwd, backend);
    let rev = CtEntry {
        nat_addr: fwd.dst,
        nat_port: fwd.dport,
        ..entry
    };
    if CONNTRACK.insert(&reply, &rev, 0).is_err() {
        count(Reason::CtUpdateFailed);
    }
}

//! Backend selection: frontend lookup and the per-service selection table.

use lb_common::{
    Backend, FlowKey, NetAddr, NetPort, ServiceKey, ServiceValue, SlotKey, backend_flags, scope,
};

use crate::maps::{BACKENDS, CONFIG, NODE_ADDRS, SERVICES, SLOTS};

/// The service a packet to `daddr:dport/proto` belongs to: an exact frontend first, then a
/// NodePort on any address of the node's attached interfaces.
#[inline(always)]
pub fn frontend(daddr: NetAddr, dport: u16, proto: u8) -> Option<ServiceValue> {
    let mut key = ServiceKey {
        addr: daddr,
        port: NetPort(dport),
        proto,
        scope: scope::EXACT,
    };
    // SAFETY: values are plain data; the reference does not outlive this function.
    if let Some(svc) = unsafe { SERVICES.get(&key) } {
        return Some(*svc);
    }
    // SAFETY: as above.
    unsafe { NODE_ADDRS.get(&daddr) }?;
    key.addr = NetAddr::UNSPECIFIED;
    key.scope = scope::NODE_PORT;
    // SAFETY: as above.
    unsafe { SERVICES.get(&key) }.copied()
}

/// A live backend by id (`None` for id 0, out of range, or deleted).
#[inline(always)]
pub fn backend(id: u32) -> Option<Backend> {
    if id == 0 {
        return None;
    }
    let b = BACKENDS.get(id)?;
    if b.flags & backend_flags::PRESENT == 0 {
        return None;
    }
    Some(*b)
}

/// Picks a backend for a new flow from the service's selection table in force.
#[inline(always)]
pub fn pick(svc: &ServiceValue, flow: &FlowKey) -> Option<(u32, Backend)> {
    if svc.slot_count == 0 {
        return None;
    }
    let seed = CONFIG.get(0).map(|c| c.hash_seed).unwrap_or(0);
    let h = lb_common::hash::flow_hash(
        seed,
        &flow.src.words,
        &flow.dst.words,
        flow.sport.raw(),
        flow.dport.raw(),
        flow.proto,
    );
    let key = SlotKey {
        service_id: svc.id,
        table: svc.table,
        slot: h % svc.slot_count,
    };
    // SAFETY: plain data, copied out.
    let id = *unsafe { SLOTS.get(&key) }?;
    Some((id, backend(id)?))
}

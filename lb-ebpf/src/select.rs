//! Backend selection: frontend lookup and the per-service selection table.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use lb_common::{
    AffinityEntry, AffinityKey, Backend, FlowKey, NetAddr, NetPort, Reason, SLOTS_PER_ENTRY,
    ServiceKey, ServiceValue, backend_flags, scope, service_flags,
};

use crate::{
    conntrack,
    maps::{AFFINITY, BACKENDS, CONFIG, NODE_ADDRS, SERVICES, SLOTS},
    stats::count,
};

/// The service a packet to `daddr:dport/proto` belongs to: an exact frontend first, then a
/// NodePort on any address of the node's attached interfaces. NodePort keys are per family:
/// an IPv4 destination (v4-mapped) looks up the IPv4 wildcard `::ffff:0.0.0.0`, an IPv6 one
/// `::` (the IPv6 path never passes a v4-mapped destination).
#[inline(always)]
pub fn frontend(daddr: NetAddr, dport: u16, proto: u8) -> Option<ServiceValue> {
    lookup(daddr, dport, proto, false)
}

/// [`frontend`] wherever the packet was addressed: a NodePort matches any address of the
/// family (a direct-server-return packet names the address of the node that chose the
/// endpoint, not one of this node's).
#[inline(always)]
pub fn frontend_anywhere(daddr: NetAddr, dport: u16, proto: u8) -> Option<ServiceValue> {
    lookup(daddr, dport, proto, true)
}

#[inline(always)]
fn lookup(daddr: NetAddr, dport: u16, proto: u8, any_node: bool) -> Option<ServiceValue> {
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
    if !any_node && unsafe { NODE_ADDRS.get(&daddr) }.is_none() {
        return None;
    }
    key.addr = if daddr.is_v4() {
        NetAddr::V4_UNSPECIFIED
    } else {
        NetAddr::UNSPECIFIED
    };
    key.scope = scope::NODE_PORT;
    // SAFETY: as above.
    unsafe { SERVICES.get(&key) }.copied()
}

/// A live backend of service `service_id` by id, in place in the map (no copy: the XDP
/// program's stack is tight): `None` for id 0, out of range, deleted, or a backend of
/// another service (counted: a table or a tracked flow that names another service's
/// backend is a bookkeeping bug, and its packets must not reach that backend).
#[inline(always)]
pub fn backend(id: u32, service_id: u32) -> Option<&'static Backend> {
    if id == 0 {
        return None;
    }
    let b = BACKENDS.get(id)?;
    if b.flags & backend_flags::PRESENT == 0 {
        return None;
    }
    if b.service_id != service_id {
        count(Reason::BackendServiceMismatch);
        return None;
    }
    Some(b)
}

/// Picks a backend for a new flow from the service's selection table in force; with ClientIP
/// affinity, the client's previous backend while it is eligible and the timeout has not run.
#[inline(always)]
pub fn pick(svc: &ServiceValue, flow: &FlowKey) -> Option<(u32, &'static Backend)> {
    if svc.slot_count == 0 {
        return None;
    }
    let seed = CONFIG.get(0).map(|c| c.hash_seed).unwrap_or(0);
    if svc.flags & service_flags::CLIENT_IP_AFFINITY != 0 {
        return pick_affine(svc, flow, seed);
    }
    // A NodePort flow hashes without the node's own address: every node that receives the
    // same client flow (ECMP, a client moving between node addresses) picks the same backend.
    let dst = if svc.flags & service_flags::NODE_PORT != 0 {
        [0; 4]
    } else {
        flow.dst.words
    };
    let h = lb_common::hash::flow_hash(
        seed,
        &flow.src.words,
        &dst,
        flow.sport.raw(),
        flow.dport.raw(),
        flow.proto,
    );
    // A client may reach two frontends of one service from the same source port; on the
    // same backend both flows would be one 4-tuple there. Prefer another slot (at most two
    // more tries) when the backend's reply entry names another frontend.
    let first = slot(svc, h)?;
    if !conntrack::reply_clash(flow, first.1) {
        return Some(first);
    }
    count(Reason::CtReplyClash);
    if let Some(second) = slot(svc, h.wrapping_add(1))
        && !conntrack::reply_clash(flow, second.1)
    {
        return Some(second);
    }
    match slot(svc, h.wrapping_add(2)) {
        Some(third) if !conntrack::reply_clash(flow, third.1) => Some(third),
        _ => Some(first),
    }
}

/// The backend of slot `h % slot_count` of the service's table. `SLOTS` holds
/// `SLOTS_PER_ENTRY` slots an element; userspace writes each slot with one aligned 4-byte
/// store, so the load below sees either the old or the new backend id, both valid.
#[inline(always)]
fn slot(svc: &ServiceValue, h: u32) -> Option<(u32, &'static Backend)> {
    let i = svc.slot_offset.wrapping_add(h % svc.slot_count);
    let block = SLOTS.get(i / SLOTS_PER_ENTRY)?;
    let id = block[(i % SLOTS_PER_ENTRY) as usize];
    Some((id, backend(id, svc.id)?))
}

#[inline(always)]
fn pick_affine(svc: &ServiceValue, flow: &FlowKey, seed: u32) -> Option<(u32, &'static Backend)> {
    let key = AffinityKey {
        client: flow.src,
        service_id: svc.id,
    };
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let timeout_ns = svc.affinity_timeout_s as u64 * 1_000_000_000;
    if let Some(e) = AFFINITY.get_ptr_mut(&key) {
        // SAFETY: the entry stays valid during this program run; racing writers on other
        // CPUs only move `last_ns` forward, which is harmless.
        let e = unsafe { &mut *e };
        // `last_ns` refreshed by another CPU after this packet read the clock is "in the
        // future": still within the timeout.
        let age = now.wrapping_sub(e.last_ns);
        if (age <= timeout_ns || age > u64::MAX / 2)
            && let Some(b) = backend(e.backend_id, svc.id)
            && b.generation == e.backend_gen
            && b.flags & backend_flags::ELIGIBLE != 0
        {
            e.last_ns = now;
            count(Reason::AffinityHit);
            return Some((e.backend_id, b));
        }
    }
    let (id, b) = slot(svc, lb_common::hash::client_hash(seed, &flow.src.words))?;
    let _ = AFFINITY.insert(
        &key,
        &AffinityEntry {
            backend_id: id,
            backend_gen: b.generation,
            last_ns: now,
        },
        0,
    );
    Some((id, b))
}

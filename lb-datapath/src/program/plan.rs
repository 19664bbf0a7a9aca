//! The planner: a desired service and the bookkeeping in, the ordered writes out. Pure: it
//! reads the book and the maps, writes neither, and refuses before the first write
//! whatever the maps cannot take (every capacity is checked here), so a refused update
//! changes nothing. The order is DESIGN.md's make-before-break (see [`super`]).

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::SocketAddr,
    time::Duration,
};

use ipnet::IpNet;
use lb_common::{ServiceValue, service_flags};

use super::{
    Maps, Write,
    book::{Book, frontend_key},
    validate::validate,
};
use crate::{
    config::{Capacities, MaglevConfig},
    error::Error,
    maglev,
    spec::{EndpointState, Frontend, ServiceSpec, WhenEmpty},
};

/// The writes of one update, in order, and what the book records once they all succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The service's name and id (new or existing).
    pub service: String,
    pub id: u32,
    pub writes: Vec<Write>,
    /// Endpoint states of backends that stay (bookkeeping only: the maps hold eligibility).
    pub states: Vec<(SocketAddr, EndpointState)>,
    pub affinity: Option<Duration>,
}

/// What the planner needs besides the book: the map sizes and how tables are built.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub capacities: Capacities,
    pub maglev: MaglevConfig,
    pub hash_seed: u32,
}

fn full(what: &'static str, capacity: u32, setting: &'static str) -> Error {
    Error::CapacityExceeded {
        what,
        capacity,
        setting,
    }
}

fn prefixes(allow: Option<&[IpNet]>) -> BTreeSet<IpNet> {
    allow
        .map(|a| a.iter().map(IpNet::trunc).collect())
        .unwrap_or_default()
}

/// Plans creating or updating `spec`'s service.
pub fn upsert(
    book: &Book,
    maps: &impl Maps,
    settings: &Settings,
    spec: &ServiceSpec,
) -> Result<Plan, Error> {
    validate(book, spec)?;
    let caps = &settings.capacities;
    let existing = book.services.get(&spec.name);

    // Capacity checks, and the ids and range this update takes.
    let id = match existing {
        Some(s) => s.id,
        None => *book
            .service_ids
            .peek(1)
            .first()
            .ok_or_else(|| full("the service table", caps.services, "capacities.services"))?,
    };
    let new_backends: Vec<_> = spec
        .backends
        .iter()
        .filter(|b| existing.is_none_or(|s| !s.backends.contains_key(&b.addr)))
        .collect();
    let new_ids = book.backend_ids.peek(new_backends.len());
    if new_ids.len() < new_backends.len() {
        return Err(full(
            "the backend table",
            caps.backends,
            "capacities.backends",
        ));
    }
    let added_frontends = spec
        .frontends
        .iter()
        .filter(|f| existing.is_none_or(|s| !s.frontends.contains(f)))
        .count();
    if (book.frontend_owner.len() + added_frontends) as u64 > u64::from(caps.frontends) {
        return Err(full(
            "the frontend table",
            caps.frontends,
            "capacities.frontends",
        ));
    }
    let have_ranges = existing
        .map(|s| s.source_ranges.clone())
        .unwrap_or_default();
    let want_ranges = prefixes(spec.source_ranges.as_ref().map(|r| r.allow.as_slice()));
    let added_ranges: Vec<IpNet> = want_ranges.difference(&have_ranges).copied().collect();
    if u64::from(book.source_range_entries) + added_ranges.len() as u64
        > u64::from(caps.source_ranges)
    {
        return Err(full(
            "the source-range table",
            caps.source_ranges,
            "capacities.source_ranges",
        ));
    }
    let eligible = crate::eligible(&spec.backends);
    let (old_offset, old_count) = existing.map_or((0, 0), |s| (s.slot_offset, s.slot_count));
    let size = maglev::table_size(&settings.maglev, eligible.len());
    let in_place = size == old_count;
    let offset = if in_place {
        old_offset
    } else {
        book.slot_ranges
            .find(size)
            .ok_or_else(|| full("the selection-table slots", caps.slots, "capacities.slots"))?
    };

    let mut writes = Vec::new();
    if existing.is_none() {
        writes.push(Write::NewService {
            id,
            protocol: spec.protocol,
            zero_stats: book.needs_zeroing(true, id),
        });
    }
    // The backends as they will be after each step: id, eligible, remote, generation (a
    // new backend's is the one this plan gives it, not yet in the maps).
    let mut after: BTreeMap<SocketAddr, (u32, bool, bool, u32)> = existing
        .map(|s| {
            s.backends
                .iter()
                .map(|(a, b)| {
                    (
                        *a,
                        (b.id, b.eligible, b.remote, maps.backend(b.id).generation),
                    )
                })
                .collect()
        })
        .unwrap_or_default();

    // 1. New backends: present, not yet eligible (affinity must not pick them before they
    //    are in the table). The id's next generation: flows of its previous backend are
    //    never taken for flows of this one (generation 0 is never used).
    for (b, &bid) in new_backends.iter().zip(&new_ids) {
        let generation = maps.backend(bid).generation.wrapping_add(1).max(1);
        writes.push(Write::NewBackend {
            id: bid,
            addr: b.addr,
            state: b.state,
            remote: b.remote,
            generation,
            zero_stats: book.needs_zeroing(false, bid),
        });
        after.insert(b.addr, (bid, false, b.remote, generation));
    }
    // Backends leaving the eligible set stop being affinity targets first; an endpoint
    // that moved to (or from) another node gets its new flag (tracked flows keep the
    // translation they were given).
    let eligible_set: HashSet<&SocketAddr> = eligible.iter().collect();
    let remote_of: BTreeMap<SocketAddr, bool> =
        spec.backends.iter().map(|b| (b.addr, b.remote)).collect();
    let same_table = existing.is_some_and(|s| {
        in_place
            && s.table_current
            && s.backends.values().filter(|b| b.eligible).count() == eligible.len()
            && eligible
                .iter()
                .all(|a| s.backends.get(a).is_some_and(|b| b.eligible))
    });
    for (addr, (bid, eligible_now, remote, generation)) in after.iter_mut() {
        let leaves = *eligible_now && !eligible_set.contains(addr);
        let moved = remote_of.get(addr).is_some_and(|r| r != remote);
        if leaves || moved {
            *eligible_now &= !leaves;
            *remote = remote_of.get(addr).copied().unwrap_or(*remote);
            writes.push(Write::SetBackend {
                id: *bid,
                addr: *addr,
                eligible: *eligible_now,
                remote: *remote,
                generation: *generation,
            });
        }
    }

    // 2. The selection table: changed slots in place (each store replaces one valid backend
    //    by another), or a complete table in a fresh range. The same eligible backends at
    //    the same size give the table in force: nothing to write.
    if !same_table {
        let keys: Vec<Vec<u8>> = eligible
            .iter()
            .map(|a| a.to_string().into_bytes())
            .collect();
        let ids: Vec<u32> = eligible.iter().map(|a| after[a].0).collect();
        let table: Vec<u32> = maglev::build(settings.hash_seed, &keys, size)
            .into_iter()
            .map(|owner| ids[owner as usize])
            .collect();
        if in_place {
            let changes: Vec<(u32, u32)> = table
                .iter()
                .enumerate()
                .map(|(i, &bid)| (offset + i as u32, bid))
                .filter(|&(at, bid)| maps.slot(at) != bid)
                .collect();
            if !changes.is_empty() {
                writes.push(Write::Slots { changes });
            }
        } else {
            writes.push(Write::FreshTable { offset, ids: table });
        }
    }
    // Backends joining the eligible set, now that the table names them.
    for (addr, (bid, eligible_now, remote, generation)) in after.iter_mut() {
        if !*eligible_now && eligible_set.contains(addr) {
            *eligible_now = true;
            writes.push(Write::SetBackend {
                id: *bid,
                addr: *addr,
                eligible: true,
                remote: *remote,
                generation: *generation,
            });
        }
    }

    // 3. Frontends point at the table in force; new source ranges are in place before a
    //    frontend names them, old ones go after.
    writes.extend(
        added_ranges
            .into_iter()
            .map(|net| Write::SourceRange { net }),
    );
    let value = ServiceValue {
        id,
        slot_count: size,
        slot_offset: offset,
        flags: if spec.affinity.is_some() {
            service_flags::CLIENT_IP_AFFINITY
        } else {
            0
        } | if spec.when_empty == WhenEmpty::Drop {
            service_flags::DROP_WHEN_EMPTY
        } else {
            0
        } | if spec.dsr { service_flags::DSR } else { 0 },
        affinity_timeout_s: spec.affinity.map_or(0, |t| t.as_secs() as u32),
    };
    let family = book.family_of(spec);
    let filtered = |a: &SocketAddr| {
        spec.source_ranges
            .as_ref()
            .is_some_and(|r| r.frontends.contains(a))
    };
    for f in &spec.frontends {
        let flags = match f {
            Frontend::NodePort(_) => service_flags::NODE_PORT,
            Frontend::Address(a) if filtered(a) => service_flags::SOURCE_RANGES,
            Frontend::Address(_) => 0,
        };
        writes.push(Write::Frontend {
            frontend: *f,
            key: frontend_key(f, spec.protocol, family),
            value: ServiceValue {
                flags: value.flags | flags,
                ..value
            },
        });
    }
    writes.extend(
        have_ranges
            .difference(&want_ranges)
            .map(|net| Write::DeleteSourceRange { net: *net }),
    );
    if let Some(s) = existing {
        for f in s.frontends.iter().filter(|f| !spec.frontends.contains(f)) {
            writes.push(Write::DeleteFrontend {
                frontend: *f,
                key: book.owned_key(&spec.name, f, s.protocol),
            });
        }
        // The old range is out of force, and so is any range a frontend pointed at before
        // (restored, or left by a write cut short): every frontend now points at the table
        // in force.
        let mut out_of_force: Vec<(u32, u32)> = s.stray_ranges.clone();
        if !in_place {
            out_of_force.push((old_offset, old_count));
        }
        out_of_force.retain(|&(off, count)| count > 0 && (off, count) != (offset, size));
        out_of_force.dedup();
        writes.extend(
            out_of_force
                .into_iter()
                .map(|(offset, count)| Write::ClearSlots { offset, count }),
        );

        // 4. Backends no longer listed.
        let listed: HashSet<&SocketAddr> = spec.backends.iter().map(|b| &b.addr).collect();
        for (addr, b) in s.backends.iter().filter(|(a, _)| !listed.contains(a)) {
            writes.push(Write::DeleteBackend {
                id: b.id,
                addr: *addr,
            });
        }
    }
    Ok(Plan {
        service: spec.name.clone(),
        id,
        writes,
        states: spec.backends.iter().map(|b| (b.addr, b.state)).collect(),
        affinity: spec.affinity,
    })
}

/// Plans removing service `name`: frontends first (no new packet matches), then its
/// source ranges and table, then its backends; the ids are held back until purged.
pub fn remove(book: &Book, name: &str) -> Result<Plan, Error> {
    let s = book.service(name)?;
    let mut writes: Vec<Write> = s
        .frontends
        .iter()
        .map(|f| Write::DeleteFrontend {
            frontend: *f,
            key: book.owned_key(name, f, s.protocol),
        })
        .collect();
    writes.extend(
        s.source_ranges
            .iter()
            .map(|net| Write::DeleteSourceRange { net: *net }),
    );
    let mut ranges = vec![(s.slot_offset, s.slot_count)];
    ranges.extend(s.stray_ranges.iter().copied());
    ranges.retain(|&(_, count)| count > 0);
    ranges.dedup();
    writes.extend(
        ranges
            .into_iter()
            .map(|(offset, count)| Write::ClearSlots { offset, count }),
    );
    writes.extend(s.backends.iter().map(|(addr, b)| Write::DeleteBackend {
        id: b.id,
        addr: *addr,
    }));
    writes.push(Write::RetireService);
    Ok(Plan {
        service: name.to_string(),
        id: s.id,
        writes,
        states: Vec::new(),
        affinity: None,
    })
}

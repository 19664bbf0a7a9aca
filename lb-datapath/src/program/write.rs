//! The writer: applies a [`Plan`] through [`Maps`], in the plan's order, and after each
//! write that succeeded applies its effect to the [`Book`]. A write that fails stops the
//! plan: the writes before it stay (each left the maps valid, by the planner's order) and
//! the book describes exactly them.

use std::net::SocketAddr;

use ipnet::IpNet;
use lb_common::{Backend, NetPort, ServiceKey, ServiceValue, backend_flags};

use super::{
    Plan,
    book::{BackendState, Book, ServiceState},
};
use crate::{
    addr::net_addr,
    error::Error,
    spec::{EndpointState, Frontend, Protocol},
};

/// The maps an update writes, as the planner and the writer see them: the kernel's
/// (`lb-userspace`) or the in-memory ones ([`super::MemoryMaps`]). Reads of the mapped
/// arrays cannot fail; writes through a syscall can.
pub trait Maps {
    /// Entry `id` of `BACKENDS` (all zero if never written).
    fn backend(&self, id: u32) -> Backend;
    /// The backend id in slot `at` of `SLOTS` (0: none).
    fn slot(&self, at: u32) -> u32;
    fn set_service_name(&mut self, id: u32, name: &str);
    /// Resets the counters of service `id` (traffic and source-range denials).
    fn zero_service_stats(&mut self, id: u32) -> Result<(), Error>;
    fn zero_backend_stats(&mut self, id: u32) -> Result<(), Error>;
    fn set_backend(&mut self, id: u32, value: &Backend);
    /// Clears entry `id`'s flags, keeping its generation.
    fn delete_backend(&mut self, id: u32);
    fn set_slot(&mut self, at: u32, backend: u32);
    fn clear_slots(&mut self, offset: u32, count: u32);
    fn insert_frontend(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), Error>;
    /// Deleting a key that is not there is not an error.
    fn delete_frontend(&mut self, key: ServiceKey) -> Result<(), Error>;
    fn insert_source_range(&mut self, service: u32, net: IpNet) -> Result<(), Error>;
    /// Whether the entry was there.
    fn delete_source_range(&mut self, service: u32, net: IpNet) -> Result<bool, Error>;
}

/// One step of an update, with what the book needs to record it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// A new service id: its name, its counters reset when `zero_stats`.
    NewService {
        id: u32,
        protocol: Protocol,
        zero_stats: bool,
    },
    /// A new backend id (present, not eligible yet), its counters reset when `zero_stats`.
    NewBackend {
        id: u32,
        addr: SocketAddr,
        state: EndpointState,
        remote: bool,
        generation: u32,
        zero_stats: bool,
    },
    /// A backend's flags change (eligibility, remote).
    SetBackend {
        id: u32,
        addr: SocketAddr,
        eligible: bool,
        remote: bool,
        generation: u32,
    },
    /// Slots of the table in force, each replacing one valid backend id by another.
    Slots {
        changes: Vec<(u32, u32)>,
    },
    /// A complete table in a fresh range, not in force until a frontend names it.
    FreshTable {
        offset: u32,
        ids: Vec<u32>,
    },
    SourceRange {
        net: IpNet,
    },
    Frontend {
        frontend: Frontend,
        key: ServiceKey,
        value: ServiceValue,
    },
    DeleteSourceRange {
        net: IpNet,
    },
    DeleteFrontend {
        frontend: Frontend,
        key: ServiceKey,
    },
    /// A range no frontend names any more: zeroed and released.
    ClearSlots {
        offset: u32,
        count: u32,
    },
    /// Flags cleared; the id is held back until purged.
    DeleteBackend {
        id: u32,
        addr: SocketAddr,
    },
    /// The service is gone from the maps: its id is held back until purged.
    RetireService,
}

/// The `BACKENDS` value of a backend of service `service`.
pub fn backend_value(
    service: u32,
    addr: SocketAddr,
    eligible: bool,
    remote: bool,
    generation: u32,
) -> Backend {
    Backend {
        addr: net_addr(addr.ip()),
        port: NetPort::new(addr.port()),
        flags: backend_flags::PRESENT
            | if eligible { backend_flags::ELIGIBLE } else { 0 }
            | if remote { backend_flags::REMOTE } else { 0 },
        _pad: 0,
        service_id: service,
        generation,
        _pad2: 0,
    }
}

/// Applies `plan`; on success the service's table is current (or the service is gone).
pub fn apply(book: &mut Book, maps: &mut impl Maps, plan: &Plan) -> Result<(), Error> {
    for w in &plan.writes {
        if let Err(e) = write(book, maps, plan, w) {
            // The eligible flags may have moved ahead of the table in force: rebuild next time.
            if let Some(svc) = book.services.get_mut(&plan.service) {
                svc.table_current = false;
            }
            return Err(e);
        }
    }
    if let Some(svc) = book.services.get_mut(&plan.service) {
        for (addr, state) in &plan.states {
            if let Some(b) = svc.backends.get_mut(addr) {
                b.state = *state;
            }
        }
        svc.table_current = true;
        svc.affinity = plan.affinity;
    }
    Ok(())
}

fn write(book: &mut Book, maps: &mut impl Maps, plan: &Plan, w: &Write) -> Result<(), Error> {
    let (name, id) = (plan.service.as_str(), plan.id);
    fn svc<'b>(book: &'b mut Book, name: &str) -> &'b mut ServiceState {
        book.services
            .get_mut(name)
            .expect("the planner names a service it created or that exists")
    }
    match w {
        Write::NewService {
            id,
            protocol,
            zero_stats,
        } => {
            maps.set_service_name(*id, name);
            if *zero_stats {
                maps.zero_service_stats(*id)?;
            }
            book.service_ids.reserve(*id);
            book.handed_out(true, *id);
            book.services
                .insert(name.to_string(), ServiceState::empty(*id, *protocol));
        }
        Write::NewBackend {
            id: bid,
            addr,
            state,
            remote,
            generation,
            zero_stats,
        } => {
            if *zero_stats {
                maps.zero_backend_stats(*bid)?;
            }
            maps.set_backend(*bid, &backend_value(id, *addr, false, *remote, *generation));
            book.backend_ids.reserve(*bid);
            book.handed_out(false, *bid);
            svc(book, name).backends.insert(
                *addr,
                BackendState {
                    id: *bid,
                    state: *state,
                    eligible: false,
                    remote: *remote,
                },
            );
        }
        Write::SetBackend {
            id: bid,
            addr,
            eligible,
            remote,
            generation,
        } => {
            maps.set_backend(
                *bid,
                &backend_value(id, *addr, *eligible, *remote, *generation),
            );
            if let Some(b) = svc(book, name).backends.get_mut(addr) {
                b.eligible = *eligible;
                b.remote = *remote;
            }
        }
        Write::Slots { changes } => {
            for &(at, bid) in changes {
                maps.set_slot(at, bid);
            }
        }
        Write::FreshTable { offset, ids } => {
            let count = ids.len() as u32;
            book.slot_ranges.reserve(*offset, count);
            for (i, &bid) in ids.iter().enumerate() {
                maps.set_slot(offset + i as u32, bid);
            }
            if count > 0 {
                svc(book, name).stray_ranges.push((*offset, count));
            }
        }
        Write::SourceRange { net } => {
            maps.insert_source_range(id, *net)?;
            if svc(book, name).source_ranges.insert(*net) {
                book.source_range_entries += 1;
            }
        }
        Write::DeleteSourceRange { net } => {
            if maps.delete_source_range(id, *net)? {
                book.source_range_entries = book.source_range_entries.saturating_sub(1);
            }
            svc(book, name).source_ranges.remove(net);
        }
        Write::Frontend {
            frontend,
            key,
            value,
        } => {
            maps.insert_frontend(*key, *value)?;
            book.frontend_owner.insert(*key, name.to_string());
            let s = svc(book, name);
            if !s.frontends.contains(frontend) {
                s.frontends.push(*frontend);
            }
            let named = (value.slot_offset, value.slot_count);
            let in_force = (s.slot_offset, s.slot_count);
            if named != in_force {
                // The first frontend moved to the new table: the old one stays reserved
                // until no frontend names it.
                if in_force.1 > 0 && !s.stray_ranges.contains(&in_force) {
                    s.stray_ranges.push(in_force);
                }
                s.stray_ranges.retain(|r| *r != named);
                (s.slot_offset, s.slot_count) = named;
            }
        }
        Write::DeleteFrontend { frontend, key } => {
            maps.delete_frontend(*key)?;
            book.frontend_owner.remove(key);
            svc(book, name).frontends.retain(|f| f != frontend);
        }
        Write::ClearSlots { offset, count } => {
            maps.clear_slots(*offset, *count);
            book.slot_ranges.release(*offset, *count);
            let s = svc(book, name);
            s.stray_ranges.retain(|r| *r != (*offset, *count));
            if (s.slot_offset, s.slot_count) == (*offset, *count) {
                s.slot_count = 0;
            }
        }
        Write::DeleteBackend { id: bid, addr } => {
            maps.delete_backend(*bid);
            svc(book, name).backends.remove(addr);
            book.stale_backends.insert(*bid);
        }
        Write::RetireService => {
            book.services.remove(name);
            book.stale_services.insert(id);
        }
    }
    Ok(())
}

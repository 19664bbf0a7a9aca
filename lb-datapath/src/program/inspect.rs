//! What the agent reads back: services as written, the drain handshake's endpoint status,
//! and the usage of the maps the book describes. Whether a backend is selectable is read in
//! the selection table itself, so there is one rule for it: the one the table was built by.

use std::net::IpAddr;

use super::{Maps, Programmer};
use crate::dump::{BackendDump, EndpointStatus, MapOccupancy, ServiceDump};

impl<M: Maps> Programmer<M> {
    /// The services as written, in name order.
    pub fn dump(&self) -> Vec<ServiceDump> {
        self.book
            .services
            .iter()
            .map(|(name, s)| {
                let mut frontends = s.frontends.clone();
                frontends.sort();
                // Slots a backend owns, in one pass over the table (ids sorted for lookup).
                let mut ids: Vec<u32> = s.backends.values().map(|b| b.id).collect();
                ids.sort_unstable();
                let mut owned = vec![0u32; ids.len()];
                for at in s.slot_offset..s.slot_offset + s.slot_count {
                    if let Ok(i) = ids.binary_search(&self.maps.slot(at)) {
                        owned[i] += 1;
                    }
                }
                ServiceDump {
                    name: name.clone(),
                    id: s.id,
                    protocol: s.protocol,
                    frontends,
                    table_size: s.slot_count,
                    backends: s
                        .backends
                        .iter()
                        .map(|(addr, b)| BackendDump {
                            addr: *addr,
                            id: b.id,
                            state: b.state,
                            slots: ids.binary_search(&b.id).map_or(0, |i| owned[i]),
                        })
                        .collect(),
                }
            })
            .collect()
    }

    /// The drain handshake: for every service that has a backend at `addr` (any port),
    /// whether the selection table in force names it (so new flows can go to it), with the
    /// backend's id and generation for the caller's flow count (`flows` is left `None`).
    pub fn endpoint_status(&self, addr: IpAddr) -> Vec<(EndpointStatus, u32, u32)> {
        let mut out = Vec::new();
        for (name, svc) in &self.book.services {
            for (a, b) in svc.backends.iter().filter(|(a, _)| a.ip() == addr) {
                let selectable = (svc.slot_offset..svc.slot_offset + svc.slot_count)
                    .any(|at| self.maps.slot(at) == b.id);
                out.push((
                    EndpointStatus {
                        service: name.clone(),
                        backend: *a,
                        state: b.state,
                        selectable,
                        flows: None,
                    },
                    b.id,
                    self.maps.backend(b.id).generation,
                ));
            }
        }
        out
    }

    /// Frontends, backends and slots in use, from the book (which mirrors every write that
    /// succeeded): cheap enough for every scrape. Conntrack and node addresses are the
    /// caller's.
    pub fn usage(&self) -> MapOccupancy {
        MapOccupancy {
            frontends: self.book.frontend_owner.len() as u64,
            backends: self
                .book
                .services
                .values()
                .map(|s| s.backends.len() as u64)
                .sum(),
            slots: u64::from(self.book.slot_ranges.capacity()) - self.book.slot_ranges.available(),
            ..MapOccupancy::default()
        }
    }
}

//! The planner's and writer's [`Maps`] on the kernel's maps: `SLOTS`, `BACKENDS` and
//! `SERVICE_NAMES` through their mmap (plain stores that cannot fail, ordered before the
//! `SERVICES` syscall that puts a fresh table in force, see [`crate::mmap`]), the others
//! through `bpf` syscalls.

use ipnet::IpNet;
use lb_common::{Backend, ServiceKey, ServiceName, ServiceValue, map_names as names};
use lb_datapath::program::Maps;

use crate::{
    error::Error,
    maps::{self, KernelMaps},
    source_ranges,
};

impl Maps for KernelMaps {
    fn backend(&self, id: u32) -> Backend {
        self.backends.get(id)
    }

    fn slot(&self, at: u32) -> u32 {
        self.slots.get(at)
    }

    fn set_service_name(&mut self, id: u32, name: &str) {
        let mut stored = ServiceName::default();
        // The validation refused names longer than the map stores.
        let bytes = &name.as_bytes()[..name.len().min(stored.bytes.len())];
        stored.bytes[..bytes.len()].copy_from_slice(bytes);
        stored.len = bytes.len() as u32;
        self.service_names.set(id, &stored);
    }

    fn zero_service_stats(&mut self, id: u32) -> Result<(), Error> {
        self.source_denied
            .set(id, maps::zero_counts()?, 0)
            .map_err(|e| Error::map(names::SOURCE_DENIED, "reset", e))?;
        self.service_stats
            .set(id, maps::zero_stats()?, 0)
            .map_err(|e| Error::map(names::SERVICE_STATS, "reset", e))
    }

    fn zero_backend_stats(&mut self, id: u32) -> Result<(), Error> {
        self.backend_stats
            .set(id, maps::zero_stats()?, 0)
            .map_err(|e| Error::map(names::BACKEND_STATS, "reset", e))
    }

    fn set_backend(&mut self, id: u32, value: &Backend) {
        self.backends.set(id, value);
    }

    fn delete_backend(&mut self, id: u32) {
        self.backends.delete(id);
    }

    fn set_slot(&mut self, at: u32, backend: u32) {
        self.slots.set(at, backend);
    }

    fn clear_slots(&mut self, offset: u32, count: u32) {
        self.slots.clear(offset, count);
    }

    fn insert_frontend(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), Error> {
        self.services.insert(key, value, 0).map_err(|e| {
            if maps::is_full(&e) {
                Error::CapacityExceeded {
                    what: "the frontend table",
                    capacity: self.capacities.frontends,
                    setting: "capacities.frontends",
                }
            } else {
                Error::map(names::SERVICES, "write", e)
            }
        })
    }

    fn delete_frontend(&mut self, key: ServiceKey) -> Result<(), Error> {
        match self.services.remove(&key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(Error::map(names::SERVICES, "delete", e)),
        }
    }

    fn insert_source_range(&mut self, service: u32, net: IpNet) -> Result<(), Error> {
        self.source_ranges
            .insert(&source_ranges::key(service, &net), 1, 0)
            .map_err(|e| Error::map(names::SOURCE_RANGES, "write", e))
    }

    fn delete_source_range(&mut self, service: u32, net: IpNet) -> Result<bool, Error> {
        match self
            .source_ranges
            .remove(&source_ranges::key(service, &net))
        {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(Error::map(names::SOURCE_RANGES, "delete", e)),
        }
    }
}

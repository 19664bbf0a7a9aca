//! What the kernel's maps hold, read for the API and metrics: the services as written,
//! map occupancy and usage, and the per-CPU counters summed.

use lb_common::{Reason, TrafficStats, backend_flags, map_names as names};

use super::Dataplane;
use crate::inspect::count_keys;
use crate::{MapOccupancy, ServiceDump, ServiceStats, Stats, error::Error};

impl Dataplane {
    /// The services as written, in name order.
    pub fn dump(&self) -> Vec<ServiceDump> {
        self.prog.dump()
    }

    /// Entries in each map, counted in the kernel's maps themselves.
    pub fn occupancy(&self) -> Result<MapOccupancy, Error> {
        let backends = (0..self.prog.maps.backends.entries())
            .filter(|&id| self.prog.maps.backends.get(id).flags & backend_flags::PRESENT != 0)
            .count() as u64;
        // An array has every index: count the slots that name a backend.
        let slots = (0..self.prog.maps.slots.len())
            .filter(|&s| self.prog.maps.slots.get(s as u32) != 0)
            .count() as u64;
        Ok(MapOccupancy {
            frontends: count_keys(self.prog.maps.services.keys(), names::SERVICES)?,
            backends,
            slots,
            conntrack: count_keys(self.prog.maps.conntrack.keys(), names::CONNTRACK)?
                + count_keys(self.prog.maps.ct_syn.keys(), names::CT_SYN)?
                + count_keys(self.prog.maps.ct_other.keys(), names::CT_OTHER)?,
            node_addresses: count_keys(self.prog.maps.node_addrs.keys(), names::NODE_ADDRS)?,
        })
    }

    /// Map usage for metrics, cheap enough to read on every scrape: frontends, backends and
    /// slots from the bookkeeping (which mirrors every successful write), conntrack from the
    /// GC's last pass, node addresses counted in the kernel. [`Dataplane::occupancy`] counts
    /// everything in the kernel (the selection array entry by entry).
    pub fn usage(&self) -> Result<MapOccupancy, Error> {
        let conntrack = self
            .ct_view
            .lock()
            .expect("poisoned")
            .stats
            .entries
            .iter()
            .map(|(_, n)| n)
            .sum();
        Ok(MapOccupancy {
            conntrack,
            node_addresses: self
                .prog
                .maps
                .node_addrs
                .keys()
                .filter(Result::is_ok)
                .count() as u64,
            ..self.prog.usage()
        })
    }

    /// Packets, bytes and new flows of a service and of each of its backends.
    pub fn service_stats(&self, name: &str) -> Result<ServiceStats, Error> {
        let svc = self.prog.book.service(name)?;
        let sum = |values: aya::maps::PerCpuValues<TrafficStats>| -> Stats {
            values.iter().fold(Stats::default(), |acc, v| Stats {
                packets: acc.packets + v.packets,
                bytes: acc.bytes + v.bytes,
                new_flows: acc.new_flows + v.new_flows,
            })
        };
        let service = sum(self
            .prog
            .maps
            .service_stats
            .get(&svc.id, 0)
            .map_err(|e| Error::map(names::SERVICE_STATS, "read", e))?);
        let mut backends = Vec::new();
        for (addr, b) in &svc.backends {
            let v = self
                .prog
                .maps
                .backend_stats
                .get(&b.id, 0)
                .map_err(|e| Error::map(names::BACKEND_STATS, "read", e))?;
            backends.push((*addr, sum(v)));
        }
        let source_denied = self
            .prog
            .maps
            .source_denied
            .get(&svc.id, 0)
            .map_err(|e| Error::map(names::SOURCE_DENIED, "read", e))?
            .iter()
            .sum();
        Ok(ServiceStats {
            service,
            backends,
            source_denied,
        })
    }

    /// Every reason counter, summed over CPUs, in [`Reason::ALL`] order.
    pub fn reasons(&self) -> Result<Vec<(Reason, u64)>, Error> {
        Reason::ALL
            .iter()
            .map(|&r| {
                let v = self
                    .prog
                    .maps
                    .reasons
                    .get(&(r as u32), 0)
                    .map_err(|e| Error::map(names::REASONS, "read", e))?;
                Ok((r, v.iter().sum()))
            })
            .collect()
    }

    /// One reason counter, summed over CPUs.
    pub fn reason(&self, reason: Reason) -> Result<u64, Error> {
        let v = self
            .prog
            .maps
            .reasons
            .get(&(reason as u32), 0)
            .map_err(|e| Error::map(names::REASONS, "read", e))?;
        Ok(v.iter().sum())
    }
}

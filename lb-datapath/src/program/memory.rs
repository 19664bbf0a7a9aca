//! The service maps in memory: what the agent's fake data path writes through the same
//! planner and writer as the kernel's maps, and what golden files print ([`MemoryMaps::render`]).
//! Sparse: only entries written are stored, so a fake with the default capacities (20 Mi
//! slots) costs what its services hold.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt::Write as _,
    net::SocketAddr,
};

use ipnet::IpNet;
use lb_common::{Backend, ServiceKey, ServiceValue, backend_flags, scope, service_flags};

use super::Maps;
use crate::{addr::ip_of, dump::MapOccupancy, error::Error};

#[derive(Debug, Default, Clone)]
pub struct MemoryMaps {
    pub services: HashMap<ServiceKey, ServiceValue>,
    pub backends: BTreeMap<u32, Backend>,
    pub slots: BTreeMap<u32, u32>,
    pub names: BTreeMap<u32, String>,
    pub source_ranges: BTreeSet<(u32, IpNet)>,
}

impl Maps for MemoryMaps {
    fn backend(&self, id: u32) -> Backend {
        self.backends.get(&id).copied().unwrap_or_default()
    }
    fn slot(&self, at: u32) -> u32 {
        self.slots.get(&at).copied().unwrap_or(0)
    }
    fn set_service_name(&mut self, id: u32, name: &str) {
        self.names.insert(id, name.to_string());
    }
    /// No counters are held here (the agent's fake serves its own).
    fn zero_service_stats(&mut self, _id: u32) -> Result<(), Error> {
        Ok(())
    }
    fn zero_backend_stats(&mut self, _id: u32) -> Result<(), Error> {
        Ok(())
    }
    fn set_backend(&mut self, id: u32, value: &Backend) {
        self.backends.insert(id, *value);
    }
    fn delete_backend(&mut self, id: u32) {
        if let Some(b) = self.backends.get_mut(&id) {
            b.flags = 0;
        }
    }
    fn set_slot(&mut self, at: u32, backend: u32) {
        if backend == 0 {
            self.slots.remove(&at);
        } else {
            self.slots.insert(at, backend);
        }
    }
    fn clear_slots(&mut self, offset: u32, count: u32) {
        let end = offset.saturating_add(count);
        let held: Vec<u32> = self.slots.range(offset..end).map(|(&at, _)| at).collect();
        for at in held {
            self.slots.remove(&at);
        }
    }
    fn insert_frontend(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), Error> {
        self.services.insert(key, value);
        Ok(())
    }
    fn delete_frontend(&mut self, key: ServiceKey) -> Result<(), Error> {
        self.services.remove(&key);
        Ok(())
    }
    fn insert_source_range(&mut self, service: u32, net: IpNet) -> Result<(), Error> {
        self.source_ranges.insert((service, net));
        Ok(())
    }
    fn delete_source_range(&mut self, service: u32, net: IpNet) -> Result<bool, Error> {
        Ok(self.source_ranges.remove(&(service, net)))
    }
}

fn flag_names(flags: u32, names: &[(u32, &str)]) -> String {
    let set: Vec<&str> = names
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    if set.is_empty() {
        "-".into()
    } else {
        set.join(",")
    }
}

impl MemoryMaps {
    /// Entries in each map, counted in the maps themselves (conntrack and node addresses
    /// are not held here).
    pub fn occupancy(&self) -> MapOccupancy {
        MapOccupancy {
            frontends: self.services.len() as u64,
            backends: self
                .backends
                .values()
                .filter(|b| b.flags & backend_flags::PRESENT != 0)
                .count() as u64,
            slots: self.slots.len() as u64,
            ..MapOccupancy::default()
        }
    }

    /// The maps as text, by service id: its name, each frontend key with its value (table
    /// range, flags), the slots of each range a frontend names (backend id x count), its
    /// source ranges, and the `BACKENDS` entries that name it (address, generation, flags).
    /// Slots and backends no service holds are listed at the end.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut frontends: BTreeMap<u32, Vec<(String, ServiceValue)>> = BTreeMap::new();
        for (k, v) in &self.services {
            let addr = if k.scope == scope::NODE_PORT {
                format!("<node{}>", if k.addr.is_v4() { "4" } else { "6" })
            } else {
                ip_of(k.addr).to_string()
            };
            let proto = if k.proto == lb_common::IPPROTO_UDP {
                "UDP"
            } else {
                "TCP"
            };
            let key = match ip_of(k.addr) {
                std::net::IpAddr::V6(_) if k.scope != scope::NODE_PORT => {
                    format!("[{addr}]:{}/{proto}", k.port.get())
                }
                _ => format!("{addr}:{}/{proto}", k.port.get()),
            };
            frontends.entry(v.id).or_default().push((key, *v));
        }
        let mut ids: BTreeSet<u32> = frontends.keys().copied().collect();
        ids.extend(self.names.keys());
        let mut shown_slots = BTreeSet::new();
        let mut shown_backends = BTreeSet::new();
        for id in ids {
            let Some(fronts) = frontends.get_mut(&id) else {
                continue; // a name left by a removed service (names are never cleared)
            };
            fronts.sort_by(|a, b| a.0.cmp(&b.0));
            let _ = writeln!(
                out,
                "service {id} {}",
                self.names.get(&id).map_or("?", String::as_str)
            );
            let mut ranges = BTreeSet::new();
            for (key, v) in fronts.iter() {
                let _ = writeln!(
                    out,
                    "  frontend {key} -> slots {}+{} [{}]{}",
                    v.slot_offset,
                    v.slot_count,
                    flag_names(
                        v.flags,
                        &[
                            (service_flags::NODE_PORT, "node-port"),
                            (service_flags::CLIENT_IP_AFFINITY, "affinity"),
                            (service_flags::DROP_WHEN_EMPTY, "drop-when-empty"),
                            (service_flags::SOURCE_RANGES, "source-ranges"),
                            (service_flags::DSR, "dsr"),
                        ],
                    ),
                    if v.affinity_timeout_s > 0 {
                        format!(" affinity={}s", v.affinity_timeout_s)
                    } else {
                        String::new()
                    }
                );
                ranges.insert((v.slot_offset, v.slot_count));
            }
            for (off, count) in ranges {
                let mut owners: BTreeMap<u32, u32> = BTreeMap::new();
                for (&at, &bid) in self.slots.range(off..off.saturating_add(count)) {
                    *owners.entry(bid).or_default() += 1;
                    shown_slots.insert(at);
                }
                let empty = count - owners.values().sum::<u32>();
                let mut line: Vec<String> =
                    owners.iter().map(|(b, n)| format!("b{b}x{n}")).collect();
                if empty > 0 {
                    line.push(format!("emptyx{empty}"));
                }
                let _ = writeln!(out, "  slots {off}+{count}: {}", line.join(" "));
            }
            for (sid, net) in &self.source_ranges {
                if *sid == id {
                    let _ = writeln!(out, "  source range {net}");
                }
            }
            for (bid, b) in &self.backends {
                if b.service_id == id && b.flags != 0 {
                    shown_backends.insert(*bid);
                    let _ = writeln!(
                        out,
                        "  backend {bid} {} gen {} [{}]",
                        SocketAddr::new(ip_of(b.addr), b.port.get()),
                        b.generation,
                        flag_names(
                            u32::from(b.flags),
                            &[
                                (u32::from(backend_flags::PRESENT), "present"),
                                (u32::from(backend_flags::ELIGIBLE), "eligible"),
                                (u32::from(backend_flags::REMOTE), "remote"),
                            ],
                        )
                    );
                }
            }
        }
        let stray_slots = self.slots.len() - shown_slots.len();
        if stray_slots > 0 {
            let _ = writeln!(out, "slots no frontend names: {stray_slots}");
        }
        for (bid, b) in &self.backends {
            if b.flags != 0 && !shown_backends.contains(bid) {
                let _ = writeln!(
                    out,
                    "backend {bid} of no service ({}): {}",
                    b.service_id,
                    SocketAddr::new(ip_of(b.addr), b.port.get())
                );
            }
        }
        out
    }
}

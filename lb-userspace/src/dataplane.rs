//! [`Dataplane`]: the single owner of the maps. Updates follow the make-before-break order
//! of DESIGN.md, so every packet finds a valid backend at every moment:
//!
//! 1. new backends are written to `BACKENDS`;
//! 2. the selection table is written: changed slots in place (each slot names an old or a
//!    new backend, both valid), or, when the size changes, a complete table under the
//!    service's other table index;
//! 3. the frontends (`SERVICES`) are written, pointing at the table in force, and a table
//!    that is no longer in force is deleted;
//! 4. removed backends are deleted, conntrack entries naming them are purged, and only
//!    then are their ids released (a flow can never reach a recycled id).
//!
//! Bookkeeping changes only after the kernel write it describes succeeded, and every
//! capacity is checked before the first write, so a rejected update changes nothing.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use aya::Ebpf;
use lb_common::{
    Backend, GlobalConfig, NetAddr, NetPort, Reason, ServiceKey, ServiceValue, SlotKey,
    TrafficStats, backend_flags, map_names as names, scope, service_flags,
};
use serde::Serialize;

use crate::{
    attach::Attachments,
    config::DataplaneConfig,
    error::Error,
    ids::IdAllocator,
    maglev,
    maps::{self, Maps},
    spec::{BackendSpec, EndpointState, Frontend, Protocol, ServiceSpec},
};

pub(crate) struct BackendState {
    pub id: u32,
    pub state: EndpointState,
}

pub(crate) struct ServiceState {
    pub id: u32,
    pub protocol: Protocol,
    pub frontends: Vec<Frontend>,
    pub backends: BTreeMap<SocketAddr, BackendState>,
    /// Table index (0/1) in force.
    pub table: u32,
    /// Backend id of every slot of the table in force.
    pub slots: Vec<u32>,
    pub affinity: Option<Duration>,
}

/// The data path: loaded programs, their maps, and what was written into them.
pub struct Dataplane {
    pub(crate) ebpf: Ebpf,
    pub(crate) maps: Maps,
    pub(crate) cfg: DataplaneConfig,
    pub(crate) services: BTreeMap<String, ServiceState>,
    /// Owner of every frontend key in `SERVICES`.
    pub(crate) frontend_owner: HashMap<ServiceKey, String>,
    pub(crate) service_ids: IdAllocator,
    pub(crate) backend_ids: IdAllocator,
    pub(crate) slots_used: u64,
    pub(crate) attachments: Attachments,
}

impl std::fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataplane")
            .field("services", &self.services.len())
            .field("config", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// A service as the data path holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceDump {
    pub name: String,
    pub id: u32,
    pub protocol: Protocol,
    pub frontends: Vec<Frontend>,
    pub table_size: u32,
    pub backends: Vec<BackendDump>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackendDump {
    pub addr: SocketAddr,
    pub id: u32,
    pub state: EndpointState,
    /// Slots of the selection table in force that name this backend.
    pub slots: u32,
}

/// Entries held by each map, read from the kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MapOccupancy {
    pub frontends: u64,
    pub backends: u64,
    pub slots: u64,
    pub conntrack: u64,
    pub node_addresses: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ServiceStats {
    pub service: Stats,
    pub backends: Vec<(SocketAddr, Stats)>,
}

/// Counters summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

impl From<TrafficStats> for Stats {
    fn from(t: TrafficStats) -> Self {
        Stats {
            packets: t.packets,
            bytes: t.bytes,
            new_flows: t.new_flows,
        }
    }
}

pub(crate) fn net_addr(ip: IpAddr) -> NetAddr {
    match ip {
        IpAddr::V4(v4) => NetAddr::from_v4_octets(v4.octets()),
        IpAddr::V6(v6) => NetAddr::from_v6_octets(v6.octets()),
    }
}

fn frontend_key(f: &Frontend, proto: Protocol) -> ServiceKey {
    match f {
        Frontend::NodePort(p) => ServiceKey {
            addr: NetAddr::UNSPECIFIED,
            port: NetPort::new(*p),
            proto: proto.number(),
            scope: scope::NODE_PORT,
        },
        Frontend::Address(sa) => ServiceKey {
            addr: net_addr(sa.ip()),
            port: NetPort::new(sa.port()),
            proto: proto.number(),
            scope: scope::EXACT,
        },
    }
}

fn backend_value(addr: SocketAddr) -> Backend {
    Backend {
        addr: net_addr(addr.ip()),
        port: NetPort::new(addr.port()),
        flags: backend_flags::PRESENT,
        _pad: 0,
    }
}

fn full_or(
    e: aya::maps::MapError,
    what: &'static str,
    capacity: u32,
    setting: &'static str,
    map: &'static str,
    op: &'static str,
) -> Error {
    if maps::is_full(&e) {
        Error::CapacityExceeded {
            what,
            capacity,
            setting,
        }
    } else {
        Error::map(map, op, e)
    }
}

impl Dataplane {
    /// Loads the programs and creates the maps with the configured capacities.
    /// Nothing is attached yet: see [`Dataplane::attach`].
    pub fn load(cfg: DataplaneConfig) -> Result<Self, Error> {
        let caps = cfg.capacities;
        for (setting, v) in [
            ("capacities.services", caps.services),
            ("capacities.frontends", caps.frontends),
            ("capacities.backends", caps.backends),
            ("capacities.slots", caps.slots),
            ("capacities.conntrack", caps.conntrack),
            ("capacities.node_addresses", caps.node_addresses),
            ("capacities.redirect_ports", caps.redirect_ports),
        ] {
            if v == 0 || v >= u32::MAX / 2 {
                return Err(Error::InvalidSpec {
                    service: "<config>".into(),
                    reason: format!("`{setting}` must be between 1 and {}", u32::MAX / 2 - 1),
                });
            }
        }
        let mut loader = aya::EbpfLoader::new();
        for (name, n) in maps::max_entries(&caps) {
            loader.map_max_entries(name, n);
        }
        let mut ebpf = loader
            .load(crate::object::OBJECT)
            .map_err(|e| Error::Load { source: e.into() })?;
        crate::attach::load_programs(&mut ebpf)?;
        let mut maps = Maps::take(&mut ebpf)?;
        maps.config
            .set(
                0,
                GlobalConfig {
                    hash_seed: cfg.hash_seed,
                    _pad: 0,
                },
                0,
            )
            .map_err(|e| Error::map(names::CONFIG, "write", e))?;
        Ok(Dataplane {
            ebpf,
            maps,
            cfg,
            services: BTreeMap::new(),
            frontend_owner: HashMap::new(),
            service_ids: IdAllocator::new(caps.services),
            backend_ids: IdAllocator::new(caps.backends),
            slots_used: 0,
            attachments: Attachments::default(),
        })
    }

    pub fn config(&self) -> &DataplaneConfig {
        &self.cfg
    }

    fn validate(&self, spec: &ServiceSpec) -> Result<(), Error> {
        let invalid = |reason: String| Error::InvalidSpec {
            service: spec.name.clone(),
            reason,
        };
        if spec.name.is_empty() {
            return Err(invalid("the name is empty".into()));
        }
        if spec.frontends.is_empty() {
            return Err(invalid("no frontend (NodePort or address)".into()));
        }
        let mut seen = BTreeSet::new();
        for f in &spec.frontends {
            match f {
                Frontend::NodePort(0) => return Err(invalid("NodePort 0 is not a port".into())),
                Frontend::Address(sa) if sa.port() == 0 => {
                    return Err(invalid(format!("frontend {sa}: port 0 is not a port")));
                }
                Frontend::Address(sa) if sa.ip().is_unspecified() => {
                    return Err(invalid(format!(
                        "frontend {sa}: the unspecified address cannot be a frontend; use a NodePort"
                    )));
                }
                Frontend::Address(sa) if sa.is_ipv6() => {
                    return Err(invalid(format!(
                        "frontend {sa}: IPv6 is not supported by the data path yet"
                    )));
                }
                _ => {}
            }
            if !seen.insert(*f) {
                return Err(invalid(format!("frontend {f} is listed twice")));
            }
            let key = frontend_key(f, spec.protocol);
            if let Some(owner) = self.frontend_owner.get(&key)
                && owner != &spec.name
            {
                return Err(Error::FrontendConflict {
                    service: spec.name.clone(),
                    frontend: format!("{f}/{}", spec.protocol),
                    owner: owner.clone(),
                });
            }
        }
        let mut addrs = BTreeSet::new();
        for b in &spec.backends {
            if b.addr.is_ipv6() {
                return Err(invalid(format!(
                    "backend {}: IPv6 is not supported by the data path yet",
                    b.addr
                )));
            }
            if b.addr.port() == 0 || b.addr.ip().is_unspecified() {
                return Err(invalid(format!(
                    "backend {}: needs an address and a non-zero port",
                    b.addr
                )));
            }
            if !addrs.insert(b.addr) {
                return Err(invalid(format!("backend {} is listed twice", b.addr)));
            }
        }
        if let Some(t) = spec.affinity
            && (t.is_zero() || t.as_secs() > 86_400)
        {
            return Err(invalid(format!(
                "session affinity timeout {t:?} must be 1 s..=86400 s"
            )));
        }
        if let Some(s) = self.services.get(&spec.name)
            && s.protocol != spec.protocol
        {
            return Err(invalid(format!(
                "the protocol cannot change ({} -> {}); remove the service and add it again",
                s.protocol, spec.protocol
            )));
        }
        Ok(())
    }

    /// The backends that get new flows: the ready ones, or, when none is ready, the serving
    /// and terminating ones (Kubernetes' terminating-endpoint fallback).
    fn eligible(backends: &[BackendSpec]) -> Vec<SocketAddr> {
        let pick = |s: EndpointState| -> Vec<SocketAddr> {
            backends
                .iter()
                .filter(|b| b.state == s)
                .map(|b| b.addr)
                .collect()
        };
        let ready = pick(EndpointState::Ready);
        if ready.is_empty() {
            pick(EndpointState::ServingTerminating)
        } else {
            ready
        }
    }

    /// Creates or updates a service, in make-before-break order (see the module docs).
    /// On error nothing the caller can observe has changed, except for a kernel write that
    /// failed midway, which is reported and leaves the previous state in force.
    pub fn upsert_service(&mut self, spec: &ServiceSpec) -> Result<u32, Error> {
        self.validate(spec)?;
        let caps = self.cfg.capacities;
        let existing = self.services.get(&spec.name);

        // Capacity checks before the first write.
        if existing.is_none() && self.service_ids.available() == 0 {
            return Err(Error::CapacityExceeded {
                what: "the service table",
                capacity: caps.services,
                setting: "capacities.services",
            });
        }
        let new_backends: Vec<&BackendSpec> = spec
            .backends
            .iter()
            .filter(|b| existing.is_none_or(|s| !s.backends.contains_key(&b.addr)))
            .collect();
        if new_backends.len() as u64 > self.backend_ids.available() as u64 {
            return Err(Error::CapacityExceeded {
                what: "the backend table",
                capacity: caps.backends,
                setting: "capacities.backends",
            });
        }
        let old_frontends = existing.map_or(0, |s| s.frontends.len());
        if (self.frontend_owner.len() - old_frontends + spec.frontends.len()) as u64
            > caps.frontends as u64
        {
            return Err(Error::CapacityExceeded {
                what: "the frontend table",
                capacity: caps.frontends,
                setting: "capacities.frontends",
            });
        }
        let eligible = Self::eligible(&spec.backends);
        let current_size = existing.map_or(0, |s| s.slots.len() as u32);
        let size = maglev::resize(&self.cfg.maglev, current_size, eligible.len());
        let in_place = size == current_size && size != 0;
        if !in_place && self.slots_used + size as u64 > caps.slots as u64 {
            return Err(Error::CapacityExceeded {
                what: "the selection-table slots",
                capacity: caps.slots,
                setting: "capacities.slots",
            });
        }

        // A new service gets its id (stats zeroed for a clean start).
        let id = match existing {
            Some(s) => s.id,
            None => {
                let id = self.service_ids.allocate().expect("checked above");
                if let Err(e) = self.zero_stats(true, id) {
                    self.service_ids.release(id);
                    return Err(e);
                }
                self.services.insert(
                    spec.name.clone(),
                    ServiceState {
                        id,
                        protocol: spec.protocol,
                        frontends: Vec::new(),
                        backends: BTreeMap::new(),
                        table: 0,
                        slots: Vec::new(),
                        affinity: None,
                    },
                );
                id
            }
        };

        // 1. New backends.
        for b in &new_backends {
            let bid = self.backend_ids.allocate().expect("checked above");
            let written = self.zero_stats(false, bid).and_then(|()| {
                self.maps
                    .backends
                    .set(bid, backend_value(b.addr), 0)
                    .map_err(|e| Error::map(names::BACKENDS, "write", e))
            });
            if let Err(e) = written {
                self.backend_ids.release(bid);
                return Err(e);
            }
            let svc = self.services.get_mut(&spec.name).expect("inserted above");
            svc.backends.insert(
                b.addr,
                BackendState {
                    id: bid,
                    state: b.state,
                },
            );
        }
        {
            let svc = self.services.get_mut(&spec.name).expect("present");
            for b in &spec.backends {
                if let Some(st) = svc.backends.get_mut(&b.addr) {
                    st.state = b.state;
                }
            }
        }

        // 2. The selection table.
        let svc = self.services.get(&spec.name).expect("present");
        let keys: Vec<Vec<u8>> = eligible
            .iter()
            .map(|a| a.to_string().into_bytes())
            .collect();
        let owners = maglev::build(self.cfg.hash_seed, &keys, size);
        let table: Vec<u32> = owners
            .iter()
            .map(|&i| svc.backends[&eligible[i as usize]].id)
            .collect();
        let (old_table, old_slots) = (svc.table, svc.slots.clone());
        let new_table = if in_place || old_slots.is_empty() {
            old_table
        } else {
            1 - old_table
        };
        for (slot, &bid) in table.iter().enumerate() {
            if in_place && old_slots[slot] == bid {
                continue;
            }
            let key = SlotKey {
                service_id: id,
                table: new_table,
                slot: slot as u32,
            };
            if let Err(e) = self.maps.slots.insert(key, bid, 0) {
                // Roll back a half-written fresh table; an in-place table stays valid.
                if !in_place {
                    self.delete_slots(id, new_table, slot as u32);
                }
                return Err(full_or(
                    e,
                    "the selection-table slots",
                    caps.slots,
                    "capacities.slots",
                    names::SLOTS,
                    "write",
                ));
            }
        }
        if !in_place {
            self.slots_used += size as u64;
        }
        {
            let svc = self.services.get_mut(&spec.name).expect("present");
            svc.table = new_table;
            svc.slots = table;
            svc.affinity = spec.affinity;
        }

        // 3. Frontends point at the table in force; the old table goes.
        let value = ServiceValue {
            id,
            slot_count: size,
            table: new_table,
            flags: if spec.affinity.is_some() {
                service_flags::CLIENT_IP_AFFINITY
            } else {
                0
            },
            affinity_timeout_s: spec.affinity.map_or(0, |t| t.as_secs() as u32),
        };
        for f in &spec.frontends {
            let key = frontend_key(f, spec.protocol);
            self.maps.services.insert(key, value, 0).map_err(|e| {
                full_or(
                    e,
                    "the frontend table",
                    caps.frontends,
                    "capacities.frontends",
                    names::SERVICES,
                    "write",
                )
            })?;
            self.frontend_owner.insert(key, spec.name.clone());
            let svc = self.services.get_mut(&spec.name).expect("present");
            if !svc.frontends.contains(f) {
                svc.frontends.push(*f);
            }
        }
        let gone: Vec<Frontend> = {
            let svc = &self.services[&spec.name];
            svc.frontends
                .iter()
                .filter(|f| !spec.frontends.contains(f))
                .copied()
                .collect()
        };
        for f in gone {
            self.remove_frontend(&spec.name, f, spec.protocol)?;
        }
        if !in_place && !old_slots.is_empty() {
            self.delete_slots(id, old_table, old_slots.len() as u32);
            self.slots_used -= old_slots.len() as u64;
        }

        // 4. Backends no longer listed.
        let removed: Vec<(SocketAddr, u32)> = self.services[&spec.name]
            .backends
            .iter()
            .filter(|(a, _)| !spec.backends.iter().any(|b| b.addr == **a))
            .map(|(a, b)| (*a, b.id))
            .collect();
        let mut purge = BTreeSet::new();
        for (addr, bid) in removed {
            self.maps
                .backends
                .set(bid, Backend::default(), 0)
                .map_err(|e| Error::map(names::BACKENDS, "delete", e))?;
            self.services
                .get_mut(&spec.name)
                .expect("present")
                .backends
                .remove(&addr);
            purge.insert(bid);
        }
        self.purge_conntrack(&BTreeSet::new(), &purge)?;
        for bid in purge {
            self.backend_ids.release(bid);
        }
        Ok(id)
    }

    fn remove_frontend(&mut self, name: &str, f: Frontend, proto: Protocol) -> Result<(), Error> {
        let key = frontend_key(&f, proto);
        match self.maps.services.remove(&key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(Error::map(names::SERVICES, "delete", e)),
        }
        self.frontend_owner.remove(&key);
        if let Some(svc) = self.services.get_mut(name) {
            svc.frontends.retain(|x| *x != f);
        }
        Ok(())
    }

    /// Deletes slots `0..count` of a table; best effort (a leftover slot is unreachable).
    fn delete_slots(&mut self, id: u32, table: u32, count: u32) {
        for slot in 0..count {
            let _ = self.maps.slots.remove(&SlotKey {
                service_id: id,
                table,
                slot,
            });
        }
    }

    fn zero_stats(&mut self, service: bool, id: u32) -> Result<(), Error> {
        let zeros = maps::zero_stats()?;
        if service {
            self.maps
                .service_stats
                .set(id, zeros, 0)
                .map_err(|e| Error::map(names::SERVICE_STATS, "reset", e))
        } else {
            self.maps
                .backend_stats
                .set(id, zeros, 0)
                .map_err(|e| Error::map(names::BACKEND_STATS, "reset", e))
        }
    }

    /// Removes a service: frontends first (no new packet matches), then its table, then its
    /// backends; its conntrack entries are purged before the ids are released.
    pub fn remove_service(&mut self, name: &str) -> Result<(), Error> {
        let (proto, frontends, id, table, slots) = {
            let svc = self
                .services
                .get(name)
                .ok_or_else(|| Error::UnknownService(name.into()))?;
            (
                svc.protocol,
                svc.frontends.clone(),
                svc.id,
                svc.table,
                svc.slots.len() as u32,
            )
        };
        for f in frontends {
            self.remove_frontend(name, f, proto)?;
        }
        self.delete_slots(id, table, slots);
        self.slots_used -= slots as u64;
        let backend_ids: BTreeSet<u32> = self.services[name]
            .backends
            .values()
            .map(|b| b.id)
            .collect();
        for &bid in &backend_ids {
            self.maps
                .backends
                .set(bid, Backend::default(), 0)
                .map_err(|e| Error::map(names::BACKENDS, "delete", e))?;
        }
        self.services.remove(name);
        self.purge_conntrack(&BTreeSet::from([id]), &backend_ids)?;
        for bid in backend_ids {
            self.backend_ids.release(bid);
        }
        self.service_ids.release(id);
        Ok(())
    }

    /// Deletes every conntrack entry (both directions) that names one of these services or
    /// backends. Returns how many entries were deleted.
    fn purge_conntrack(
        &mut self,
        services: &BTreeSet<u32>,
        backends: &BTreeSet<u32>,
    ) -> Result<u64, Error> {
        if services.is_empty() && backends.is_empty() {
            return Ok(0);
        }
        let mut doomed = Vec::new();
        for item in self.maps.conntrack.iter() {
            let (k, v) = match item {
                Ok(kv) => kv,
                // An entry evicted while we iterate: nothing to purge there.
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(e) => return Err(Error::map(names::CONNTRACK, "iterate", e)),
            };
            if services.contains(&v.service_id) || backends.contains(&v.backend_id) {
                doomed.push(k);
            }
        }
        let mut n = 0;
        for k in doomed {
            match self.maps.conntrack.remove(&k) {
                Ok(()) => n += 1,
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(Error::map(names::CONNTRACK, "delete", e)),
            }
        }
        Ok(n)
    }

    /// The services as written, in name order.
    pub fn dump(&self) -> Vec<ServiceDump> {
        self.services
            .iter()
            .map(|(name, s)| {
                let mut frontends = s.frontends.clone();
                frontends.sort();
                ServiceDump {
                    name: name.clone(),
                    id: s.id,
                    protocol: s.protocol,
                    frontends,
                    table_size: s.slots.len() as u32,
                    backends: s
                        .backends
                        .iter()
                        .map(|(addr, b)| BackendDump {
                            addr: *addr,
                            id: b.id,
                            state: b.state,
                            slots: s.slots.iter().filter(|&&x| x == b.id).count() as u32,
                        })
                        .collect(),
                }
            })
            .collect()
    }

    /// Entries in each map, counted in the kernel's maps themselves.
    pub fn occupancy(&self) -> Result<MapOccupancy, Error> {
        fn count<I, T>(it: I, map: &'static str) -> Result<u64, Error>
        where
            I: Iterator<Item = Result<T, aya::maps::MapError>>,
        {
            let mut n = 0;
            for r in it {
                match r {
                    Ok(_) => n += 1,
                    Err(aya::maps::MapError::KeyNotFound) => {}
                    Err(e) => return Err(Error::map(map, "iterate", e)),
                }
            }
            Ok(n)
        }
        let mut backends = 0;
        for r in self.maps.backends.iter() {
            let b = r.map_err(|e| Error::map(names::BACKENDS, "iterate", e))?;
            if b.flags & backend_flags::PRESENT != 0 {
                backends += 1;
            }
        }
        Ok(MapOccupancy {
            frontends: count(self.maps.services.keys(), names::SERVICES)?,
            backends,
            slots: count(self.maps.slots.keys(), names::SLOTS)?,
            conntrack: count(self.maps.conntrack.keys(), names::CONNTRACK)?,
            node_addresses: count(self.maps.node_addrs.keys(), names::NODE_ADDRS)?,
        })
    }

    /// Packets, bytes and new flows of a service and of each of its backends.
    pub fn service_stats(&self, name: &str) -> Result<ServiceStats, Error> {
        let svc = self
            .services
            .get(name)
            .ok_or_else(|| Error::UnknownService(name.into()))?;
        let sum = |values: aya::maps::PerCpuValues<TrafficStats>| -> Stats {
            values.iter().fold(Stats::default(), |acc, v| Stats {
                packets: acc.packets + v.packets,
                bytes: acc.bytes + v.bytes,
                new_flows: acc.new_flows + v.new_flows,
            })
        };
        let service = sum(self
            .maps
            .service_stats
            .get(&svc.id, 0)
            .map_err(|e| Error::map(names::SERVICE_STATS, "read", e))?);
        let mut backends = Vec::new();
        for (addr, b) in &svc.backends {
            let v = self
                .maps
                .backend_stats
                .get(&b.id, 0)
                .map_err(|e| Error::map(names::BACKEND_STATS, "read", e))?;
            backends.push((*addr, sum(v)));
        }
        Ok(ServiceStats { service, backends })
    }

    /// Every reason counter, summed over CPUs, in [`Reason::ALL`] order.
    pub fn reasons(&self) -> Result<Vec<(Reason, u64)>, Error> {
        Reason::ALL
            .iter()
            .map(|&r| {
                let v = self
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
            .maps
            .reasons
            .get(&(reason as u32), 0)
            .map_err(|e| Error::map(names::REASONS, "read", e))?;
        Ok(v.iter().sum())
    }
}

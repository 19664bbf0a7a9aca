//! Typed handles of every map, taken out of the loaded object once.

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuValues, xdp::DevMapHash},
};
use lb_common::{
    AffinityEntry, AffinityKey, Backend, CtEntry, FlowKey, GlobalConfig, NetAddr, ServiceKey,
    ServiceName, ServiceValue, TrafficStats, map_names as names,
};

use crate::{config::Capacities, error::Error};

pub(crate) struct Maps {
    pub services: HashMap<MapData, ServiceKey, ServiceValue>,
    pub backends: Array<MapData, Backend>,
    pub slots: Array<MapData, u32>,
    pub conntrack: HashMap<MapData, FlowKey, CtEntry>,
    pub node_addrs: HashMap<MapData, NetAddr, u32>,
    pub service_stats: PerCpuArray<MapData, TrafficStats>,
    pub backend_stats: PerCpuArray<MapData, TrafficStats>,
    pub reasons: PerCpuArray<MapData, u64>,
    pub tx_ports: DevMapHash<MapData>,
    pub config: Array<MapData, GlobalConfig>,
    pub affinity: HashMap<MapData, AffinityKey, AffinityEntry>,
    pub service_names: Array<MapData, ServiceName>,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, Error>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(Error::MissingMap(name))?;
    T::try_from(map).map_err(|e| Error::map(name, "open", e))
}

impl Maps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, Error> {
        Ok(Maps {
            services: take(ebpf, names::SERVICES)?,
            backends: take(ebpf, names::BACKENDS)?,
            slots: take(ebpf, names::SLOTS)?,
            conntrack: take(ebpf, names::CONNTRACK)?,
            node_addrs: take(ebpf, names::NODE_ADDRS)?,
            service_stats: take(ebpf, names::SERVICE_STATS)?,
            backend_stats: take(ebpf, names::BACKEND_STATS)?,
            reasons: take(ebpf, names::REASONS)?,
            tx_ports: take(ebpf, names::TX_PORTS)?,
            config: take(ebpf, names::CONFIG)?,
            affinity: take(ebpf, names::AFFINITY)?,
            service_names: take(ebpf, names::SERVICE_NAMES)?,
        })
    }
}

/// Max entries of every map from the capacities (ids are 1-based, so arrays get one more).
pub(crate) fn max_entries(c: &Capacities) -> [(&'static str, u32); 12] {
    [
        (names::SERVICES, c.frontends),
        (names::BACKENDS, c.backends + 1),
        (names::SLOTS, c.slots),
        (names::CONNTRACK, c.conntrack),
        (names::NODE_ADDRS, c.node_addresses),
        (names::SERVICE_STATS, c.services + 1),
        (names::BACKEND_STATS, c.backends + 1),
        (names::TX_PORTS, c.redirect_ports),
        (names::CONFIG, 1),
        (names::AFFINITY, c.affinity),
        (names::REFUSALS, 1),
        (names::SERVICE_NAMES, c.services + 1),
    ]
}

pub(crate) fn zero_stats() -> Result<PerCpuValues<TrafficStats>, Error> {
    let cpus = aya::util::nr_cpus()
        .map_err(|(_, e)| Error::map("SERVICE_STATS", "count possible CPUs", e))?;
    PerCpuValues::try_from(vec![TrafficStats::default(); cpus])
        .map_err(|e| Error::map("SERVICE_STATS", "build per-CPU values", e))
}

/// True if a map write failed because the map is full.
pub(crate) fn is_full(e: &aya::maps::MapError) -> bool {
    matches!(e, aya::maps::MapError::SyscallError(s)
        if matches!(s.io_error.raw_os_error(), Some(libc::E2BIG) | Some(libc::ENOSPC) | Some(libc::ENOMEM)))
}

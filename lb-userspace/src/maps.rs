//! Typed handles of every map, taken out of the loaded object once. `SLOTS`, `BACKENDS` and
//! `SERVICE_NAMES` are written through an mmap ([`MmapArray`]); the others through syscalls.

use aya::{
    Ebpf,
    maps::{
        Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues, lpm_trie::LpmTrie, xdp::DevMapHash,
    },
};
use lb_common::{
    Backend, CtEntry, FlowKey, GlobalConfig, NetAddr, SLOTS_PER_ENTRY, ServiceKey, ServiceName,
    ServiceValue, SourceRangeKey, TrafficStats, backend_flags, map_names as names,
};

use std::os::fd::{AsFd, OwnedFd};

use crate::{
    config::Capacities,
    ct_gc::{GcBackends, GcTable},
    error::Error,
    mmap::MmapArray,
};

pub(crate) struct KernelMaps {
    /// The sizes the maps were created with (for the errors of a full map).
    pub capacities: Capacities,
    pub services: HashMap<MapData, ServiceKey, ServiceValue>,
    pub backends: Backends,
    pub slots: Slots,
    /// Confirmed TCP flows, TCP flows not confirmed yet, other flows.
    pub conntrack: HashMap<MapData, FlowKey, CtEntry>,
    pub ct_syn: HashMap<MapData, FlowKey, CtEntry>,
    pub ct_other: HashMap<MapData, FlowKey, CtEntry>,
    /// Duplicates of the three conntrack maps' fds, for the GC's own handles.
    ct_fds: Vec<(&'static str, OwnedFd)>,
    pub node_addrs: HashMap<MapData, NetAddr, u32>,
    pub service_stats: PerCpuArray<MapData, TrafficStats>,
    pub backend_stats: PerCpuArray<MapData, TrafficStats>,
    pub reasons: PerCpuArray<MapData, u64>,
    pub tx_ports: DevMapHash<MapData>,
    pub config: Array<MapData, GlobalConfig>,
    pub service_names: Names,
    pub source_ranges: LpmTrie<MapData, SourceRangeKey, u32>,
    pub source_denied: PerCpuArray<MapData, u64>,
}

/// A conntrack map, and a duplicate of its fd.
fn take_ct(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<(HashMap<MapData, FlowKey, CtEntry>, OwnedFd), Error> {
    let map = ebpf.take_map(name).ok_or(Error::MissingMap(name))?;
    let fd = match &map {
        Map::LruHashMap(data) | Map::HashMap(data) => data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| Error::map(name, "duplicate the fd", e))?,
        _ => {
            return Err(Error::map(
                name,
                "open",
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a hash map"),
            ));
        }
    };
    let handle = HashMap::try_from(map).map_err(|e| Error::map(name, "open", e))?;
    Ok((handle, fd))
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, Error>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(Error::MissingMap(name))?;
    T::try_from(map).map_err(|e| Error::map(name, "open", e))
}

/// An array map of the object, mapped read-write; the handle keeps its fd open.
fn take_mapped(ebpf: &mut Ebpf, name: &'static str) -> Result<(MapData, MmapArray), Error> {
    match ebpf.take_map(name).ok_or(Error::MissingMap(name))? {
        Map::Array(data) => {
            let mem = MmapArray::new(name, &data, true)?;
            Ok((data, mem))
        }
        _ => Err(Error::map(
            name,
            "open",
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not an array map"),
        )),
    }
}

impl KernelMaps {
    pub fn take(ebpf: &mut Ebpf, capacities: Capacities) -> Result<Self, Error> {
        let (backends_fd, backends) = take_mapped(ebpf, names::BACKENDS)?;
        let (slots_fd, slots) = take_mapped(ebpf, names::SLOTS)?;
        let (names_fd, service_names) = take_mapped(ebpf, names::SERVICE_NAMES)?;
        let (conntrack, ct_fd) = take_ct(ebpf, names::CONNTRACK)?;
        let (ct_syn, syn_fd) = take_ct(ebpf, names::CT_SYN)?;
        let (ct_other, other_fd) = take_ct(ebpf, names::CT_OTHER)?;
        Ok(KernelMaps {
            capacities,
            services: take(ebpf, names::SERVICES)?,
            backends: Backends {
                mem: backends,
                _fd: backends_fd,
            },
            slots: Slots {
                mem: slots,
                _fd: slots_fd,
            },
            conntrack,
            ct_syn,
            ct_other,
            ct_fds: vec![("tcp", ct_fd), ("tcp_syn", syn_fd), ("other", other_fd)],
            node_addrs: take(ebpf, names::NODE_ADDRS)?,
            service_stats: take(ebpf, names::SERVICE_STATS)?,
            backend_stats: take(ebpf, names::BACKEND_STATS)?,
            reasons: take(ebpf, names::REASONS)?,
            tx_ports: take(ebpf, names::TX_PORTS)?,
            config: take(ebpf, names::CONFIG)?,
            service_names: Names {
                mem: service_names,
                _fd: names_fd,
            },
            source_ranges: take(ebpf, names::SOURCE_RANGES)?,
            source_denied: take(ebpf, names::SOURCE_DENIED)?,
        })
    }
}

impl KernelMaps {
    /// The GC's own handles of the conntrack maps.
    pub fn gc_tables(&self) -> std::io::Result<Vec<GcTable>> {
        self.ct_fds
            .iter()
            .map(|(label, fd)| GcTable::open(label, fd.as_fd()))
            .collect()
    }

    /// The GC's own handle of `BACKENDS`.
    pub fn gc_backends(&self) -> std::io::Result<GcBackends> {
        GcBackends::open(self.backends._fd.fd().as_fd())
    }
}

/// `SLOTS` through its mmap: slot `i` is word `i % 16` of element `i / 16`.
pub(crate) struct Slots {
    mem: MmapArray,
    _fd: MapData,
}

impl Slots {
    /// Slots the map holds (at least `capacities.slots`).
    pub fn len(&self) -> u64 {
        u64::from(self.mem.entries()) * u64::from(SLOTS_PER_ENTRY)
    }

    pub fn get(&self, slot: u32) -> u32 {
        self.mem
            .load(slot / SLOTS_PER_ENTRY, (slot % SLOTS_PER_ENTRY) as usize)
    }

    pub fn set(&self, slot: u32, backend: u32) {
        self.mem.store(
            slot / SLOTS_PER_ENTRY,
            (slot % SLOTS_PER_ENTRY) as usize,
            backend,
        );
    }

    /// Zeroes `count` slots from `offset`.
    pub fn clear(&self, offset: u32, count: u32) {
        for s in offset..offset + count {
            self.set(s, 0);
        }
    }
}

/// Word of [`Backend`] that holds `flags` (with the port).
const BACKEND_FLAGS_WORD: usize = std::mem::offset_of!(Backend, flags) / 4;
/// Words of a [`Backend`].
const BACKEND_WORDS: usize = std::mem::size_of::<Backend>() / 4;
const _: () = assert!(BACKEND_FLAGS_WORD == 4 && BACKEND_WORDS == 8);

/// `BACKENDS` through its mmap.
pub(crate) struct Backends {
    mem: MmapArray,
    _fd: MapData,
}

impl Backends {
    pub fn entries(&self) -> u32 {
        self.mem.entries()
    }

    pub fn get(&self, id: u32) -> Backend {
        self.mem.load_value::<Backend, BACKEND_WORDS>(id)
    }

    /// Writes backend `id`. A live entry's flags are stored last, an entry losing `PRESENT`
    /// has them stored first. Nothing names a new id before this write (its slots come
    /// later), and an update of a live entry changes its flags word only, so the XDP program
    /// (which checks `PRESENT` before it uses an entry) never sees a half-written backend.
    pub fn set(&self, id: u32, b: &Backend) {
        let order = if b.flags & backend_flags::PRESENT != 0 {
            [0, 1, 2, 3, 5, 6, 7, BACKEND_FLAGS_WORD]
        } else {
            [BACKEND_FLAGS_WORD, 0, 1, 2, 3, 5, 6, 7]
        };
        self.mem.store_value::<Backend, BACKEND_WORDS>(id, b, order);
    }

    /// Deletes backend `id`: clears its flags (`PRESENT` first) and leaves the rest, so a
    /// packet racing the delete reads the old backend or none, never a mix with zeroes. The
    /// generation stays: the id's next backend gets the next one, so flows of this one are
    /// never taken for flows of that one.
    pub fn delete(&self, id: u32) {
        let mut b = self.get(id);
        b.flags = 0;
        b._pad = 0;
        self.set(id, &b);
    }
}

/// `SERVICE_NAMES` through its mmap (read by userspace only).
pub(crate) struct Names {
    mem: MmapArray,
    _fd: MapData,
}

/// 4-byte words of a [`ServiceName`].
const NAME_WORDS: usize = std::mem::size_of::<ServiceName>() / 4;

impl Names {
    pub fn get(&self, id: u32) -> ServiceName {
        self.mem.load_value::<ServiceName, NAME_WORDS>(id)
    }

    pub fn set(&self, id: u32, name: &ServiceName) {
        let mut order = [0usize; NAME_WORDS];
        for (i, o) in order.iter_mut().enumerate() {
            // The length (word 0) last: a reader never sees a length over stale bytes.
            *o = (i + 1) % NAME_WORDS;
        }
        self.mem
            .store_value::<ServiceName, NAME_WORDS>(id, name, order);
    }
}

/// Max entries of every map from the capacities (ids are 1-based, so arrays get one more;
/// `SLOTS` holds `SLOTS_PER_ENTRY` slots an element).
pub(crate) fn max_entries(c: &Capacities) -> [(&'static str, u32); 18] {
    [
        (names::SERVICES, c.frontends),
        (names::BACKENDS, c.backends + 1),
        (names::SLOTS, c.slots.div_ceil(SLOTS_PER_ENTRY)),
        (names::CONNTRACK, c.conntrack),
        (names::CT_SYN, c.conntrack_syn),
        (names::CT_OTHER, c.conntrack_other),
        (names::NODE_ADDRS, c.node_addresses),
        (names::SERVICE_STATS, c.services + 1),
        (names::BACKEND_STATS, c.backends + 1),
        (names::TX_PORTS, c.redirect_ports),
        (names::CONFIG, 1),
        (names::AFFINITY, c.affinity),
        (names::REFUSALS, 1),
        (names::SERVICE_NAMES, c.services + 1),
        (names::SOURCE_RANGES, c.source_ranges),
        (names::SOURCE_DENIED, c.services + 1),
        (names::SCRATCH, 1),
        (names::FRAGMENTS, c.fragments),
    ]
}

pub(crate) fn zero_stats() -> Result<PerCpuValues<TrafficStats>, Error> {
    let cpus = aya::util::nr_cpus()
        .map_err(|(_, e)| Error::map("SERVICE_STATS", "count possible CPUs", e))?;
    PerCpuValues::try_from(vec![TrafficStats::default(); cpus])
        .map_err(|e| Error::map("SERVICE_STATS", "build per-CPU values", e))
}

/// Zeroed per-CPU `u64` counters (`SOURCE_DENIED`).
pub(crate) fn zero_counts() -> Result<PerCpuValues<u64>, Error> {
    let cpus = aya::util::nr_cpus()
        .map_err(|(_, e)| Error::map("SOURCE_DENIED", "count possible CPUs", e))?;
    PerCpuValues::try_from(vec![0u64; cpus])
        .map_err(|e| Error::map("SOURCE_DENIED", "build per-CPU values", e))
}

/// True if a map write failed because the map is full.
pub(crate) fn is_full(e: &aya::maps::MapError) -> bool {
    matches!(e, aya::maps::MapError::SyscallError(s)
        if matches!(s.io_error.raw_os_error(), Some(libc::E2BIG) | Some(libc::ENOSPC) | Some(libc::ENOMEM)))
}

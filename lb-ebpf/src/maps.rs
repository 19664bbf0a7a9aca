//! The maps. Sizes here are placeholders: the loader sets every capacity from the
//! userspace configuration (`lb_userspace::Capacities`) before load.

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, bpf_fib_lookup as FibParams},
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use lb_common::{
    AffinityEntry, AffinityKey, Backend, CtEntry, FlowKey, GlobalConfig, NetAddr, RefusalWindow,
    FragEntry, FragKey, ServiceKey, ServiceName, ServiceValue, SlotBlock, SourceRangeKey,
    TrafficStats,
    map_flags::MMAPABLE,
};

/// Frontend -> service.
#[map]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::with_max_entries(1, 0);

/// Backend id -> backend; index 0 is never used. Userspace writes it through an mmap.
#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(1, MMAPABLE);

/// The selection tables of all services, each a range of slots of this array: slot ->
/// backend id, `lb_common::SLOTS_PER_ENTRY` slots an element (see [`crate::select`]).
/// Userspace writes it through an mmap.
#[map]
pub static SLOTS: Array<SlotBlock> = Array::with_max_entries(1, MMAPABLE);

/// Both directions of every confirmed TCP flow; shared by all CPUs (the reply path runs
/// elsewhere). See [`crate::conntrack`].
#[map]
pub static CONNTRACK: LruHashMap<FlowKey, CtEntry> = LruHashMap::with_max_entries(1, 0);

/// TCP flows not confirmed yet (SYN seen, or a mid-flow packet without an entry): a SYN
/// flood fills this table, never the established one.
#[map]
pub static CT_SYN: LruHashMap<FlowKey, CtEntry> = LruHashMap::with_max_entries(1, 0);

/// Non-TCP (UDP) flows: their churn cannot evict TCP flows.
#[map]
pub static CT_OTHER: LruHashMap<FlowKey, CtEntry> = LruHashMap::with_max_entries(1, 0);

/// Addresses of the node's attached interfaces: NodePort frontends match on these.
#[map]
pub static NODE_ADDRS: HashMap<NetAddr, u32> = HashMap::with_max_entries(1, 0);

/// Per-service counters, indexed by service id.
#[map]
pub static SERVICE_STATS: PerCpuArray<TrafficStats> = PerCpuArray::with_max_entries(1, 0);

/// Per-backend counters, indexed by backend id.
#[map]
pub static BACKEND_STATS: PerCpuArray<TrafficStats> = PerCpuArray::with_max_entries(1, 0);

/// Per-reason counters, indexed by `lb_common::Reason`.
#[map]
pub static REASONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(lb_common::Reason::COUNT, 0);

/// Devices that can take XDP frames: redirect goes only there, everything else to the stack.
#[map]
pub static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(1, 0);

/// Global settings, one element.
#[map]
pub static CONFIG: Array<GlobalConfig> = Array::with_max_entries(1, 0);

/// ClientIP session affinity: (client, service) -> backend and when it was last chosen.
#[map]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityEntry> = LruHashMap::with_max_entries(1, 0);

/// Per-CPU budget of generated refusals (one element).
#[map]
pub static REFUSALS: PerCpuArray<RefusalWindow> = PerCpuArray::with_max_entries(1, 0);

/// Service id -> name. Read by userspace only (restoring state after a restart); declared
/// here so it is created and pinned with the others; written through an mmap.
#[map]
pub static SERVICE_NAMES: Array<ServiceName> = Array::with_max_entries(1, MMAPABLE);

/// `loadBalancerSourceRanges`: (service id, client prefix) -> 1. See [`crate::ranges`].
#[map]
pub static SOURCE_RANGES: LpmTrie<SourceRangeKey, u32> =
    LpmTrie::with_max_entries(1, BPF_F_NO_PREALLOC);

/// New flows dropped by a service's source ranges, per service id (per CPU).
#[map]
pub static SOURCE_DENIED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU room for values too large for the programs' 512-byte stack (fib parameters,
/// keys and entries built on the source-NAT paths). Never read by userspace.
#[repr(C)]
pub struct Scratch {
    pub fib: FibParams,
    pub key: FlowKey,
    pub entry: CtEntry,
    pub frag: FragKey,
    /// A decapsulated DSR flow's key and endpoint ([`crate::dsr`]).
    pub fwd: FlowKey,
    pub backend: Backend,
}

/// One element per CPU (see [`Scratch`]).
#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// IPv4 datagrams whose first fragment was translated: how, for the later fragments. See
/// [`crate::frag`].
#[map]
pub static FRAGMENTS: LruHashMap<FragKey, FragEntry> = LruHashMap::with_max_entries(1, 0);

//! Map keys and values. Each type is padding-free `#[repr(C)]`; sizes are asserted below.

use crate::net::{NetAddr, NetPort};

/// IP protocol numbers used in keys.
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;

/// Map names, shared by the programs (symbol names) and the loader.
pub mod map_names {
    pub const SERVICES: &str = "SERVICES";
    pub const BACKENDS: &str = "BACKENDS";
    pub const SLOTS: &str = "SLOTS";
    pub const CONNTRACK: &str = "CONNTRACK";
    pub const CT_SYN: &str = "CT_SYN";
    pub const CT_OTHER: &str = "CT_OTHER";
    pub const NODE_ADDRS: &str = "NODE_ADDRS";
    pub const SERVICE_STATS: &str = "SERVICE_STATS";
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    pub const REASONS: &str = "REASONS";
    pub const TX_PORTS: &str = "TX_PORTS";
    pub const CONFIG: &str = "CONFIG";
    pub const AFFINITY: &str = "AFFINITY";
    pub const REFUSALS: &str = "REFUSALS";
    pub const SERVICE_NAMES: &str = "SERVICE_NAMES";
    pub const SOURCE_RANGES: &str = "SOURCE_RANGES";
    pub const SOURCE_DENIED: &str = "SOURCE_DENIED";
    pub const SCRATCH: &str = "SCRATCH";
    pub const FRAGMENTS: &str = "FRAGMENTS";

    /// Every map of the object, in a fixed order (pinning, verification).
    pub const ALL: &[&str] = &[
        SERVICES,
        BACKENDS,
        SLOTS,
        CONNTRACK,
        CT_SYN,
        CT_OTHER,
        NODE_ADDRS,
        SERVICE_STATS,
        BACKEND_STATS,
        REASONS,
        TX_PORTS,
        CONFIG,
        AFFINITY,
        REFUSALS,
        SERVICE_NAMES,
        SOURCE_RANGES,
        SOURCE_DENIED,
        SCRATCH,
        FRAGMENTS,
    ];
}

/// Map creation flags (`map_flags` of the definitions), as the kernel defines them.
/// The value of a `NODE_ADDRS` entry: who put the address there (the XDP program only checks
/// that the key exists).
pub mod node_addr_origin {
    /// An address of an attached interface.
    pub const INTERFACE: u32 = 1;
    /// An address of this node's Node object (`status.addresses`).
    pub const NODE_OBJECT: u32 = 2;
}

pub mod map_flags {
    /// `BPF_F_MMAPABLE`: an array userspace can `mmap` and write with plain stores instead of
    /// one `bpf` syscall per element (`SLOTS`, `BACKENDS`, `SERVICE_NAMES`).
    pub const MMAPABLE: u32 = 1 << 10;
}

/// Selection-table slots per `SLOTS` element. The kernel stores an array element in a
/// multiple of 8 bytes, so a `u32` element would take 8; blocks of 16 slots (one cache line)
/// take exactly 4 bytes a slot. Slot `i` (a global index) is `SLOTS[i / 16][i % 16]`.
pub const SLOTS_PER_ENTRY: u32 = 16;

/// One `SLOTS` element: [`SLOTS_PER_ENTRY`] slots, each a backend id (0: none).
pub type SlotBlock = [u32; SLOTS_PER_ENTRY as usize];

/// Program names in the object file.
pub mod program_names {
    pub const XDP_LB: &str = "sluice_xdp";
    pub const TC_REVNAT: &str = "sluice_revnat";
    /// The load balancer as a TC classifier at ingress (`--mode tc`): the XDP program's
    /// semantics for uplinks where XDP falls short (veth: partial checksums, XDP_TX).
    pub const TC_LB: &str = "sluice_tc_lb";
    pub const XDP_PASS: &str = "sluice_pass";
    pub const XDP_BASELINE: &str = "sluice_baseline";
    /// The benchmarks' packet generator, run with `BPF_F_TEST_XDP_LIVE_FRAMES`.
    pub const XDP_GEN: &str = "sluice_gen";
    /// The benchmarks' packet sink: counts and drops the generator's packets.
    pub const XDP_COUNT: &str = "sluice_count";
}

/// Bytes of the generator's frame head: Ethernet, IPv4 without options, UDP.
pub const GEN_HEAD_LEN: usize = 42;

/// Source ports one generator source address cycles through (1024..=65023) before the
/// next address takes over.
pub const GEN_PORTS_PER_ADDR: u32 = 64_000;

/// What the benchmarks' generator sends (`GEN_TEMPLATE[0]`): the frame head, copied into
/// every frame before the flow's source is written, because live frames are recycled pages
/// that the data path under test may have rewritten.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct GenTemplate {
    /// Ethernet + IPv4 + UDP; the UDP checksum 0 (none) and the IPv4 checksum recomputed
    /// per frame.
    pub head: [u8; GEN_HEAD_LEN],
    pub _pad: [u8; 2],
    /// Distinct flows cycled through: frame `n` is flow `n % flows`, source port
    /// `1024 + flow % GEN_PORTS_PER_ADDR`, source address the template's plus
    /// `flow / GEN_PORTS_PER_ADDR` (added to the last byte).
    pub flows: u32,
}

/// How a [`ServiceKey`] matches a packet's destination address.
pub mod scope {
    /// The key's address must equal the destination (LoadBalancer ingress, external and
    /// cluster IPs).
    pub const EXACT: u8 = 0;
    /// NodePort: the key's address is the unspecified address of the packet's family
    /// ([`NetAddr::V4_UNSPECIFIED`], `::ffff:0.0.0.0`, for IPv4; [`NetAddr::UNSPECIFIED`],
    /// `::`, for IPv6) and matches any address of that family in `NODE_ADDRS`.
    pub const NODE_PORT: u8 = 1;
}

/// A frontend: where clients send packets.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct ServiceKey {
    pub addr: NetAddr,
    pub port: NetPort,
    pub proto: u8,
    /// One of [`scope`].
    pub scope: u8,
}

/// Per-service flags ([`ServiceValue::flags`]).
pub mod service_flags {
    /// Choose the backend by client address only and remember it for the affinity timeout.
    pub const CLIENT_IP_AFFINITY: u32 = 1;
    /// The entry is a NodePort frontend ([`super::scope::NODE_PORT`] key): the flow hash
    /// leaves out the destination (the node's own address), so every node picks the same
    /// backend for the same client flow.
    pub const NODE_PORT: u32 = 2;
    /// With no usable backend, drop new flows (counted `xdp_drop_no_local_endpoint`)
    /// instead of refusing them: `externalTrafficPolicy: Local` on a node without local
    /// endpoints, as kube-proxy does (an external load balancer's health check steers
    /// traffic away from such a node).
    pub const DROP_WHEN_EMPTY: u32 = 4;
    /// New flows are allowed only from the client prefixes of this service in
    /// `SOURCE_RANGES` (`loadBalancerSourceRanges`); others are dropped and counted.
    pub const SOURCE_RANGES: u32 = 8;
    /// Direct server return: a new flow to an endpoint on another node travels there
    /// encapsulated (IPIP, the frontend untouched inside), and that node's data path
    /// translates it and sends the reply straight to the client from the frontend.
    pub const DSR: u32 = 16;
}

/// What a frontend maps to.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct ServiceValue {
    /// Service id (1..=capacity), indexes `SERVICE_STATS`; 0 is never used.
    pub id: u32,
    /// Number of slots of the selection table in force; 0 means no usable backend.
    pub slot_count: u32,
    /// Index in `SLOTS` of the first slot of the selection table in force. A table of another
    /// size is written to a fresh range first, then this field moves (make before break).
    pub slot_offset: u32,
    /// [`service_flags`].
    pub flags: u32,
    /// Session affinity timeout in seconds (with [`service_flags::CLIENT_IP_AFFINITY`]).
    pub affinity_timeout_s: u32,
}

/// Backend flags ([`Backend::flags`]).
pub mod backend_flags {
    /// The entry names a live backend. A zeroed array element (never written) has this bit
    /// clear, so a packet can never be sent to address 0. Deleting a backend clears its
    /// flags and leaves the rest (a packet racing the delete reads the old backend or none);
    /// an id is written whole before it is reused.
    pub const PRESENT: u8 = 1;
    /// The backend is in its service's selection table in force (ready, or serving and
    /// terminating while no endpoint is ready): session affinity may still pick it.
    pub const ELIGIBLE: u8 = 2;
    /// The endpoint runs on another node: a new flow to it is source-NATed to this node's
    /// address (and a port of the NAT range), so the reply comes back through this node.
    pub const REMOTE: u8 = 4;
}

/// A backend (endpoint address and target port), indexed by backend id in `BACKENDS`.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct Backend {
    pub addr: NetAddr,
    pub port: NetPort,
    /// [`backend_flags`].
    pub flags: u8,
    pub _pad: u8,
    /// The service this backend belongs to (lets a restarted agent restore its state).
    pub service_id: u32,
    /// Bumped each time the id is given to a new backend: a conntrack or affinity entry
    /// that names this id with another generation is stale (so removing a backend never
    /// walks the flow tables, and its id can be reused at once).
    pub generation: u32,
    pub _pad2: u32,
}

/// Longest service name `SERVICE_NAMES` keeps; longer names are refused up front, so a
/// restarted agent restores every name exactly. The controller's names are
/// `namespace/name:port/PROTO[/v6][/external]`: at most 63 + 1 + 63 + 1 + 15 + 1 + 4 + 3 + 9 =
/// 160 bytes.
pub const SERVICE_NAME_MAX: usize = 252;

/// A service's name, indexed by service id in `SERVICE_NAMES` (userspace only: lets a
/// restarted agent match pinned state with its sources).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ServiceName {
    pub len: u32,
    pub bytes: [u8; SERVICE_NAME_MAX],
}

impl Default for ServiceName {
    fn default() -> Self {
        ServiceName {
            len: 0,
            bytes: [0; SERVICE_NAME_MAX],
        }
    }
}

/// Direction of a conntrack entry ([`FlowKey::dir`]).
pub mod dir {
    /// Client -> frontend, as the packet arrived; the entry names service and backend.
    pub const FORWARD: u8 = 0;
    /// Backend -> client, as the reply leaves; the entry names the frontend to restore.
    pub const REPLY: u8 = 1;
}

/// A conntrack key: the 5-tuple as seen in one direction, tagged with that direction.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct FlowKey {
    pub src: NetAddr,
    pub dst: NetAddr,
    pub sport: NetPort,
    pub dport: NetPort,
    pub proto: u8,
    /// One of [`dir`].
    pub dir: u8,
    pub _pad: [u8; 2],
}

/// A conntrack entry. Both directions of a flow share this type and live in one of three
/// LRU maps: `CT_SYN` (TCP flows not confirmed by both sides yet), `CONNTRACK` (confirmed
/// TCP flows) and `CT_OTHER` (UDP). The FORWARD entry carries the flow's lifecycle
/// (`state`, `flags`, `last_seen_s`); the REPLY entry is valid only while the FORWARD
/// entry it points back to ([`CtEntry::forward_key`]) is alive and names the same backend.
///
/// A source-NATed flow ([`ct_flags::SNAT`]: its backend is on another node) leaves this
/// node as `snat address:snat port -> backend`, so its REPLY key is `backend -> snat
/// address:snat port`; the FORWARD entry's `nat_*` name the source it was given.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct CtEntry {
    /// REPLY entries: the frontend address the client dialled (restored as the source).
    /// FORWARD entries of SNAT flows: the source address the flow leaves with.
    pub nat_addr: NetAddr,
    /// REPLY entries: the frontend port the client dialled. FORWARD entries of SNAT flows:
    /// the source port the flow leaves with (from the NAT port range).
    pub nat_port: NetPort,
    /// FORWARD entries: one of [`ct_state`].
    pub state: u8,
    /// FORWARD entries: [`ct_flags`].
    pub flags: u8,
    pub service_id: u32,
    pub backend_id: u32,
    /// The backend's generation when the flow was tracked ([`Backend::generation`]).
    pub backend_gen: u32,
    /// FORWARD entries: when a packet of the flow (either direction) was last seen, in
    /// seconds of the kernel's monotonic clock (`bpf_ktime_get_ns`, CLOCK_MONOTONIC).
    pub last_seen_s: u32,
    /// REPLY entries: the client's address and port (the destination a reply is restored
    /// to; for a flow without SNAT the reply already carries them).
    pub peer_addr: NetAddr,
    pub peer_port: NetPort,
    pub _pad: [u8; 2],
}

impl CtEntry {
    /// The FORWARD key of the flow whose REPLY entry, found under `reply`, is `self`: the
    /// one derivation the data path and the userspace GC share.
    #[inline(always)]
    pub fn forward_key(&self, reply: &FlowKey) -> FlowKey {
        FlowKey {
            src: self.peer_addr,
            dst: self.nat_addr,
            sport: self.peer_port,
            dport: self.nat_port,
            proto: reply.proto,
            dir: dir::FORWARD,
            _pad: [0; 2],
        }
    }

    /// The REPLY key of the flow whose FORWARD entry, found under `fwd`, is `self`, once
    /// translated to `backend`: replies come from the backend to the client, or to the
    /// source the flow was given when it was source-NATed.
    #[inline(always)]
    pub fn reply_key(&self, fwd: &FlowKey, addr: NetAddr, port: NetPort) -> FlowKey {
        let snat = self.flags & ct_flags::SNAT != 0;
        FlowKey {
            src: addr,
            dst: if snat { self.nat_addr } else { fwd.src },
            sport: port,
            dport: if snat { self.nat_port } else { fwd.sport },
            proto: fwd.proto,
            dir: dir::REPLY,
            _pad: [0; 2],
        }
    }

    /// The REPLY value of the flow whose FORWARD entry, found under `fwd`, is `self`: the
    /// same lifecycle fields, the frontend as `nat_*`, the client as `peer_*`.
    #[inline(always)]
    pub fn reply_value(&self, fwd: &FlowKey) -> CtEntry {
        let mut r = *self;
        r.nat_addr = fwd.dst;
        r.nat_port = fwd.dport;
        r.peer_addr = fwd.src;
        r.peer_port = fwd.sport;
        r
    }

    /// Whether a FORWARD entry is alive at `now` (seconds of the monotonic clock) under the
    /// timeouts of `c`: the one rule the data path and the userspace GC both apply. An entry
    /// refreshed after the caller read the clock (by another CPU, or by the data path while
    /// the GC walks) is "in the future" and alive: the age, read as signed, is negative.
    #[inline(always)]
    pub fn alive(&self, now: u32, c: &GlobalConfig) -> bool {
        let timeout = match self.state {
            ct_state::NEW => c.ct_tcp_new_s,
            ct_state::ESTABLISHED => c.ct_tcp_established_s,
            ct_state::CLOSING | ct_state::CLOSED => c.ct_tcp_closing_s,
            _ => c.ct_other_s,
        };
        let age = now.wrapping_sub(self.last_seen_s);
        age <= timeout || age > u32::MAX / 2
    }
}

/// The lifecycle of a tracked flow ([`CtEntry::state`]); each state has its timeout
/// ([`GlobalConfig`]).
pub mod ct_state {
    /// Not TCP (UDP): one timeout.
    pub const OTHER: u8 = 0;
    /// TCP: a SYN (or a mid-flow packet without an entry) was seen; not confirmed yet.
    pub const NEW: u8 = 1;
    /// TCP: the backend answered and the client went on: confirmed.
    pub const ESTABLISHED: u8 = 2;
    /// TCP: a FIN was seen (either side).
    pub const CLOSING: u8 = 3;
    /// TCP: a RST was seen (either side).
    pub const CLOSED: u8 = 4;
}

/// Flags of a FORWARD entry ([`CtEntry::flags`]).
pub mod ct_flags {
    /// The backend answered (a reply was reverse-translated).
    pub const SEEN_REPLY: u8 = 1;
    /// The flow is source-NATed (its backend is on another node): FORWARD `nat_*` name
    /// the source it leaves with, and its replies come back to that address and port.
    pub const SNAT: u8 = 2;
    /// A direct-server-return flow. On the node that chose the endpoint: the FORWARD entry
    /// only (replies do not come back), `nat_addr` the outer source of the encapsulation.
    /// On the endpoint's node: `backend_id` 0 (the endpoint came with the packet), judged by
    /// its timeouts alone.
    pub const DSR: u8 = 4;
}

/// Per-service and per-backend traffic counters (per CPU; userspace sums them).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct TrafficStats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

/// Global settings of the data path (`CONFIG[0]`).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct GlobalConfig {
    /// Seed of the flow hash; the same on every node so every node picks the same backend for
    /// the same flow.
    pub hash_seed: u32,
    /// Generated refusals (TCP RST, ICMP port unreachable) per CPU and second; more are
    /// dropped (and counted).
    pub refusals_per_sec: u32,
    /// Conntrack timeouts in seconds, by state ([`ct_state`]): an entry not seen for
    /// longer is expired (its next packet is a new flow; GC deletes it).
    pub ct_tcp_new_s: u32,
    pub ct_tcp_established_s: u32,
    pub ct_tcp_closing_s: u32,
    pub ct_other_s: u32,
    /// The source ports source-NAT takes, inclusive, in host byte order (reserved on the
    /// node so no local socket is given one: `net.ipv4.ip_local_reserved_ports`).
    pub nat_port_min: u16,
    pub nat_port_max: u16,
}

/// A `FRAGMENTS` key: an IPv4 datagram as its fragments arrive (before translation), in
/// one direction.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct FragKey {
    pub src: NetAddr,
    pub dst: NetAddr,
    /// The IPv4 identification field, raw.
    pub id: u16,
    pub proto: u8,
    /// One of [`dir`]: FORWARD at XDP, REPLY at TC.
    pub dir: u8,
}

/// How the first fragment of a datagram was translated: the later fragments get the same
/// addresses (they carry no ports).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct FragEntry {
    pub src: NetAddr,
    pub dst: NetAddr,
}

/// A `SOURCE_RANGES` key (after the LPM trie's prefix length): a service and a client
/// address. The prefix length covers the 32 bits of the id plus the address prefix (an
/// IPv4 prefix `/p` is the mapped `/(96 + p)`), so a lookup matches only that service's
/// ranges.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct SourceRangeKey {
    pub service_id: u32,
    pub addr: NetAddr,
}

/// ClientIP session affinity: which backend a client was sent to, per service.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct AffinityKey {
    pub client: NetAddr,
    pub service_id: u32,
}

#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct AffinityEntry {
    pub backend_id: u32,
    /// The backend's generation when it was chosen ([`Backend::generation`]).
    pub backend_gen: u32,
    /// `bpf_ktime_get_ns` of the client's last new flow.
    pub last_ns: u64,
}

/// Per-CPU budget of generated refusals: a one-second window and what it used.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct RefusalWindow {
    pub start_ns: u64,
    pub sent: u64,
}

const _: () = {
    assert!(core::mem::size_of::<GenTemplate>() == 48);
    assert!(core::mem::size_of::<NetAddr>() == 16);
    assert!(core::mem::size_of::<NetPort>() == 2);
    assert!(core::mem::size_of::<ServiceKey>() == 20);
    assert!(core::mem::size_of::<ServiceValue>() == 20);
    assert!(core::mem::size_of::<Backend>() == 32);
    assert!(core::mem::size_of::<ServiceName>() == 256);
    assert!(core::mem::size_of::<FlowKey>() == 40);
    assert!(core::mem::size_of::<CtEntry>() == 56);
    assert!(core::mem::size_of::<TrafficStats>() == 24);
    assert!(core::mem::size_of::<GlobalConfig>() == 28);
    assert!(core::mem::size_of::<SourceRangeKey>() == 20);
    assert!(core::mem::size_of::<FragKey>() == 36);
    assert!(core::mem::size_of::<FragEntry>() == 32);
    assert!(core::mem::size_of::<AffinityKey>() == 20);
    assert!(core::mem::size_of::<AffinityEntry>() == 16);
    assert!(core::mem::size_of::<RefusalWindow>() == 16);
    assert!(core::mem::size_of::<SlotBlock>() == 64);
    assert!(SLOTS_PER_ENTRY.is_power_of_two());
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: every type is repr(C), padding-free (sizes asserted above) and valid for any
    // bit pattern (integers only).
    unsafe impl aya::Pod for NetAddr {}
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for ServiceName {}
    unsafe impl aya::Pod for GenTemplate {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for CtEntry {}
    unsafe impl aya::Pod for TrafficStats {}
    unsafe impl aya::Pod for GlobalConfig {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityEntry {}
    unsafe impl aya::Pod for RefusalWindow {}
    unsafe impl aya::Pod for SourceRangeKey {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragEntry {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    /// The ABI: sizes and alignments both sides rely on (also asserted at compile time).
    #[test]
    fn abi_sizes_and_alignment() {
        assert_eq!((size_of::<ServiceKey>(), align_of::<ServiceKey>()), (20, 4));
        assert_eq!((size_of::<FlowKey>(), align_of::<FlowKey>()), (40, 4));
        assert_eq!((size_of::<CtEntry>(), align_of::<CtEntry>()), (56, 4));
        assert_eq!(
            (size_of::<TrafficStats>(), align_of::<TrafficStats>()),
            (24, 8)
        );
        assert_eq!(size_of::<Backend>(), 32);
    }

    #[test]
    fn abi_v4_addresses_are_mapped_and_ports_network_order() {
        let a = NetAddr::from_v4_octets([192, 0, 2, 1]);
        assert!(a.is_v4());
        assert_eq!(
            a.octets(),
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1]
        );
        assert_eq!(NetPort::new(8080).raw().to_ne_bytes(), [0x1f, 0x90]);
        assert_eq!(NetPort::new(8080).get(), 8080);
        assert!(
            !NetAddr::from_v6_octets([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1])
                .is_v4()
        );
    }

    #[test]
    fn reason_labels_are_unique() {
        let labels: std::collections::BTreeSet<_> =
            crate::Reason::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), crate::Reason::ALL.len());
        for (i, r) in crate::Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }
}

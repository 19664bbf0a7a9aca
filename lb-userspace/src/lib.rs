//! The data path as a typed API: loads sluice's eBPF programs, attaches them, and turns
//! service/backends updates into ordered, make-before-break map writes.
//!
//! This is the only crate that imports aya; nothing aya-specific crosses its API.
//!
//! - `lb_datapath` (re-exported): the aya-free contract: capacities and tunables, service
//!   specs, dumps, errors and the [`DataPath`] trait (implemented here for [`Dataplane`]);
//! - [`program`], [`maglev`], [`ids`], [`slots`] (re-exported from `lb_datapath`): the update
//!   order, planned without aya, and the pure parts it builds on;
//! - [`dataplane`]: [`Dataplane`], the owner of the maps: loading, adoption of pinned maps,
//!   the kernel's side of `program::Maps`, inspection;
//! - [`attach`]: XDP and TC attachment and the node's addresses;
//! - [`ingress_mode`]: which program takes an interface's ingress (XDP or TC), and why;
//! - `stale_link`: removing the other mode's pinned ingress link a previous run left;
//! - [`addr_watch`]: the attached interfaces' addresses, read and followed over rtnetlink;
//! - `node_addresses`: the NodePort address table and its origins
//!   ([`pinned_node_addresses`] reads it through the pins);
//! - `mmap`: the mapped arrays (`SLOTS`, `BACKENDS`, `SERVICE_NAMES`) bulk writes go through;
//! - [`pins`]: pinning under bpffs, verification of pinned maps, adoption, uninstall;
//! - [`pass`]: the stub XDP program for veth peers;
//! - [`testrun`]: `BPF_PROG_TEST_RUN` access for packet tests and benchmarks.

pub mod addr_watch;
pub mod attach;
pub mod baseline;
mod bpf_sys;
mod ct_gc;
mod datapath;
pub mod dataplane;
pub mod ingress_mode;
pub mod inspect;
mod maps;
mod mmap;
mod node_addresses;
mod node_sysctl;
mod object;
pub mod pass;
pub mod pins;
mod source_ranges;
mod stale_link;
pub mod testrun;
pub mod traffic;

pub use baseline::BaselineProgram;
// The pure parts of programming the maps live in `lb-datapath`; re-exported under their old
// paths for the benchmarks and examples.
use lb_datapath::addr;
pub use lb_datapath::{ids, maglev, program, slots};
// The origin bits of the node address table, for readers of `pinned_node_addresses`.
pub use lb_common::node_addr_origin;
pub use lb_datapath::datapath::{AddressChanges, AddressEvent, AddressSink, AddressWatch};
pub use node_addresses::pinned_node_addresses;
// The aya-free contract (`lb-datapath`), re-exported so callers of the real data path need
// one import path.
pub use dataplane::Dataplane;
pub use lb_datapath::{
    AddressFamily, BackendDump, BackendSpec, Capacities, ConntrackConfig, ConntrackStats, DataPath,
    DataplaneConfig, EndpointState, EndpointStatus, Error, Frontend, IngressMode, MaglevConfig,
    MapOccupancy, NatConfig, PinConfig, Protocol, Reason, ServiceDump, ServiceSpec, ServiceStats,
    SourceRanges, Stats, TrafficStats, WhenEmpty, config, dump, eligible, error, spec,
};
pub use pass::PassProgram;
pub use testrun::{TestRunOutput, XdpTestRunner};

//! The data path as a typed API: loads sluice's eBPF programs, attaches them, and turns
//! service/backends updates into ordered, make-before-break map writes.
//!
//! This is the only crate that imports aya; nothing aya-specific crosses its API.
//!
//! - [`config`]: capacities and tunables (every map size is configuration);
//! - [`spec`]: what callers ask for (services, frontends, backends and their states);
//! - [`maglev`]: the selection table of a service;
//! - [`ids`]: service and backend id allocation (0 is never handed out);
//! - [`slots`]: where each selection table lives in the shared slot array;
//! - [`dataplane`]: [`Dataplane`], the owner of the maps, and the update order;
//! - [`datapath`]: the [`DataPath`] trait the agent programs against (with a fake in tests);
//! - [`attach`]: XDP and TC attachment and the node's addresses;
//! - [`pins`]: pinning under bpffs, verification of pinned maps, adoption, uninstall;
//! - [`pass`]: the stub XDP program for veth peers;
//! - [`testrun`]: `BPF_PROG_TEST_RUN` access for packet tests and benchmarks.

pub mod attach;
pub mod baseline;
pub mod config;
pub mod datapath;
pub mod dataplane;
pub mod error;
pub mod ids;
pub mod inspect;
pub mod maglev;
mod maps;
mod object;
pub mod pass;
pub mod pins;
pub mod slots;
pub mod spec;
pub mod testrun;

pub use baseline::BaselineProgram;
pub use config::{Capacities, DataplaneConfig, MaglevConfig};
pub use datapath::DataPath;
pub use dataplane::{
    BackendDump, Dataplane, EndpointStatus, MapOccupancy, ServiceDump, ServiceStats, Stats,
};
pub use error::Error;
pub use lb_common::{Reason, TrafficStats};
pub use pass::PassProgram;
pub use pins::PinConfig;
pub use spec::{AddressFamily, BackendSpec, EndpointState, Frontend, Protocol, ServiceSpec};
pub use testrun::{TestRunOutput, XdpTestRunner};

//! The data path as its callers see it, without aya: what a service is ([`spec`]), which
//! backends get new flows ([`eligible`]), what can be configured ([`config`]), what the data
//! path reports ([`dump`]), its errors ([`error`]) and the [`DataPath`] trait the agent
//! programs against. `lb-userspace` implements the trait on the real maps; the controller
//! only ever sees this crate, so it builds and tests on stable Rust without bpf-linker or root.
//!
//! How a service is written into the maps is decided here too, without aya: [`program`]
//! (the planner, the writer through the [`program::Maps`] trait, the bookkeeping, and the
//! maps in memory), with the pure parts it builds on: [`maglev`] (the selection table),
//! [`ids`] (service and backend ids, 0 never handed out), [`slots`] (where each table lives
//! in the shared slot array) and [`addr`] (addresses as the maps hold them).

pub mod addr;
pub mod config;
pub mod datapath;
pub mod dump;
pub mod error;
pub mod ids;
pub mod maglev;
pub mod program;
pub mod slots;
pub mod spec;

pub use config::{
    Capacities, ConntrackConfig, DataplaneConfig, IngressMode, MaglevConfig, NatConfig, PinConfig,
    UnknownIngressMode,
};
pub use datapath::DataPath;
pub use dump::{
    BackendDump, ConntrackStats, EndpointStatus, MapOccupancy, ServiceDump, ServiceStats, Stats,
};
pub use error::Error;
pub use lb_common::{Reason, TrafficStats};
pub use spec::{
    AddressFamily, BackendSpec, EndpointState, Frontend, Protocol, ServiceSpec, SourceRanges,
    WhenEmpty, eligible,
};

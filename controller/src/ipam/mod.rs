//! LoadBalancer IP assignment for bare metal: a Service of type LoadBalancer that sluice
//! serves (its `loadBalancerClass`, or none when sluice is the default) gets an address of
//! the configured pools in `status.loadBalancer.ingress`; the data path then serves it as it
//! serves any ingress IP.
//!
//! - [`config`]: the `ipam:` settings and their checks;
//! - [`pool`]: the pools and who holds which address (pure);
//! - [`plan`]: one Service -> the status to write and the Events to emit (pure);
//! - [`assigner`]: the Lease (exactly one agent assigns) and the Service watch;
//! - [`status`]: what `GET /sluice/v1/ipam` reports.
//!
//! What holds: an address is never held by two Services (a requested one that is taken is
//! refused with an Event; after a relist, the older of two claimants keeps it); a Service
//! deleted, or whose type changes, gives its addresses back; everything is re-derived from
//! the Services' statuses, so restarts and takeovers keep every assignment.

pub mod assigner;
pub mod config;
pub mod plan;
pub mod pool;
pub mod status;

pub use assigner::{IpamHandle, spawn};
pub use config::IpamConfig;
pub use status::IpamStatus;

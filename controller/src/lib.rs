//! sluice's node agent. Sources only translate into the model; the reconciler is the only
//! writer of the data path, which it reaches through `lb_datapath::DataPath` (never aya).
//!
//! - [`objects`]: the Kubernetes-shaped objects (Service, EndpointSlice, Deployment);
//! - [`model`]: validated domain types; what the data path does not enforce is rejected;
//! - [`store`]: the objects of the standalone sources, with their origin;
//! - [`desired`]: model -> desired data-path specs;
//! - [`reconcile`]: desired vs applied -> ordered operations, pruning only after a full sync;
//! - [`files`]: the YAML directory source; [`api`]: the HTTP API; [`health`]: probes;
//! - [`metrics`]: Prometheus metrics (kube-proxy's names where the meaning is the same);
//! - [`agent`]: `sluice run`, wiring it all; [`client`]: the CLI's client subcommands;
//! - [`fake`]: an in-memory data path for tests.

pub mod agent;
pub mod api;
pub mod client;
pub mod desired;
pub mod fake;
pub mod files;
pub mod health;
pub mod metrics;
pub mod model;
pub mod objects;
pub mod reconcile;
pub mod state;
pub mod store;

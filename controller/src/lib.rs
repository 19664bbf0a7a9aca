//! sluice's node agent. Sources only translate into the model; the reconciler is the only
//! writer of the data path, which it reaches through `lb_datapath::DataPath` (never aya).
//!
//! - [`objects`]: the Kubernetes objects (k8s-openapi types) every source parses;
//! - [`model`]: validated domain types; what the data path does not enforce is rejected;
//! - [`tables`]: the models indexed by key, and the services changed since the last round;
//! - [`store`]: the standalone sources' objects, with their origin and persistence;
//! - [`desired`]: one service's model -> its desired data-path specs;
//! - [`reconcile`]: desired vs applied, per changed service, pruning only after a full sync;
//! - [`kube`]: the Kubernetes source (watchers); [`ipam`]: LoadBalancer IP assignment;
//!   [`files`]: the YAML directory source; [`api`]: the HTTP API; [`health`]: probes;
//!   [`peers`]: the other agents (drain handshake); [`healthcheck`]: the health-check node
//!   ports of `externalTrafficPolicy: Local` services;
//! - [`memory`]: returning freed heap after bulk work;
//! - [`metrics`]: Prometheus metrics (kube-proxy's names where the meaning is the same);
//! - [`rollouts`]: Deployments' rollouts, their ReplicaSets' backends and new-flow split;
//! - [`agent`]: `sluice run`, wiring it all; [`client`]: the CLI's client subcommands;
//! - [`fake`]: an in-memory data path for tests.

pub mod agent;
pub mod api;
pub mod client;
pub mod desired;
pub mod fake;
pub mod files;
pub mod health;
pub mod healthcheck;
pub mod http_client;
pub mod ipam;
pub mod kube;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod objects;
pub mod peers;
pub mod protections;
pub mod reconcile;
pub mod rollouts;
pub mod state;
pub mod store;
pub mod tables;

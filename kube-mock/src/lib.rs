//! Test support for sluice's Kubernetes source.
//!
//! - [`MockApiServer`]: an in-process Kubernetes API server that speaks real list/watch over
//!   HTTP/1.1 (one global resourceVersion, a bounded history, bookmarks, `410 Expired` after
//!   compaction, disconnects and outages on demand), so that kube-runtime watchers and
//!   reflectors can be tested without a cluster. It serves Services, Nodes, EndpointSlices,
//!   Deployments, ReplicaSets, Leases, Events, Pods and Namespaces, stored as JSON exactly as
//!   given (fixtures as `kubectl get -o yaml` prints them).
//! - [`envtest`]: the envtest convention: a real etcd + kube-apiserver from
//!   `KUBEBUILDER_ASSETS`, or a printable reason to skip.
//! - [`Cluster`]: the operations a scenario needs, implemented by both, so that one scenario
//!   runs against the mock and, where the binaries exist, a real API server.
//!
//! ```no_run
//! # async fn example() -> kube_mock::Result<()> {
//! use k8s_openapi::api::core::v1::Service;
//! let server = kube_mock::MockApiServer::start_local()?;
//! server.apply_yaml("apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\n")?;
//! let services: kube::Api<Service> = kube::Api::all(server.client()?);
//! assert_eq!(services.list(&Default::default()).await?.items.len(), 1);
//! # Ok(()) }
//! ```

mod cluster;
mod control;
pub mod envtest;
mod error;
pub mod fixtures;
mod kubeconfig;
mod log;
pub mod resource;
mod routes;
pub mod selector;
mod server;
mod store;
mod watch;

pub use cluster::Cluster;
pub use envtest::{Envtest, EnvtestServer, Skipped};
pub use error::{Error, Result};
pub use kubeconfig::{client_from_kubeconfig, kubeconfig_yaml};
pub use log::{RequestRecord, Verb};
pub use routes::GIT_VERSION;
pub use server::{MockApiServer, MockApiServerBuilder};
pub use store::DEFAULT_HISTORY_LIMIT;

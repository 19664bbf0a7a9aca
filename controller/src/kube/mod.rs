//! The Kubernetes source: kube-runtime watchers for Services, EndpointSlices, this node's
//! Node, Deployments and ReplicaSets, feeding the [`crate::tables::Tables`] one event at a
//! time.
//!
//! - [`client`]: the client from `--kubeconfig` or the in-cluster service account;
//! - [`events`]: one watcher event -> tables (pure; the relist rule lives here);
//! - [`backoff`]: the retry policy of the watches;
//! - [`watch`]: the watch tasks, their backoff, readiness and metrics.
//!
//! What holds (kube-proxy's behaviour): a watch error, a `410 Gone`, an API-server restart
//! or an unreachable API server (at start or later) is retried with backoff and recovered by
//! relisting; a relist re-applies what it lists (unchanged objects cost nothing) and removes
//! only what it no longer lists, so nothing that still exists is pruned; the data path keeps
//! forwarding meanwhile; `/readyz` turns 200 only after every watcher's first full list.

pub mod backoff;
pub mod client;
pub mod events;
pub mod watch;

pub use client::{ClientError, client};
pub use watch::spawn;

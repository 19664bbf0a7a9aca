//! Traffic tools for sluice's lab tests and benchmarks.
//!
//! - [`load`]: a load generator for HTTP/1.1, raw TCP and UDP that always stops by itself (a
//!   request count and a duration bound) and accounts for every request as exactly one
//!   [`load::Outcome`]. The `sluice-load` binary is its command line.
//! - [`chart`]: PNG charts of a run over time (requests/s, failures, p99, marked events), with
//!   the plotted data written beside them.
//! - [`server`]: the backend that lab pods run (the `lab-server` binary). It answers with its
//!   name, counts connections and requests, and drains gracefully on SIGTERM.
//! - [`kube_proxy`]: kube-proxy's iptables and nftables rule sets for N services, as text,
//!   and applying them (`sync-bench` and the side-by-side benchmarks).
//! - [`stats`]: percentiles and a reproducible random choice for the benchmarks.
//! - [`output`]: where benchmarks write their JSON (`target/bench/<name>.json`).
//! - [`lifecycle`]: the serving / draining / stopped lifecycle shared with the demo's
//!   bootcamp pods.
//! - [`serve`]: the HTTP/1.1 server (framing, keep-alive, the drain) that `lab-server` and
//!   the demo's bootcamp pods share; each says only what it answers.

pub mod chart;
pub mod compare;
pub mod kube_proxy;
pub mod lifecycle;
pub mod load;
pub mod output;
pub mod server;
pub mod stats;

mod http;
mod secs;
pub mod serve;

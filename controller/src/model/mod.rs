//! The domain model: services, endpoint slices, workloads and the node as the agent
//! understands them, translated from the k8s-openapi objects. This is where strictness lives:
//! every field that would change what the data path does but is not enforced yet is rejected
//! with a message that names it; informational fields are accepted; objects kube-proxy would
//! not proxy (headless, ExternalName, another proxy's) are skipped.
//!
//! - [`service`]: Service -> [`ServiceModel`];
//! - [`slice`]: EndpointSlice -> [`SliceModel`] (kube-proxy's endpoint conditions);
//! - [`workload`]: Deployment and ReplicaSet -> rollout state;
//! - [`node`]: this node's Node -> its addresses.

pub mod node;
pub mod service;
pub mod slice;
pub mod workload;

use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use lb_datapath::Protocol;
use serde::Serialize;

pub use node::NodeModel;
pub use service::{PortModel, ServiceModel, ServiceType};
pub use slice::{EndpointModel, SliceModel};
pub use workload::{ReplicaSetModel, WorkloadModel};

use crate::objects::{Kind, namespace_of};

/// Namespace and name ("" namespace for cluster-scoped objects).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Key {
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Key {
        Key {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    pub fn of(kind: Kind, meta: &ObjectMeta) -> Key {
        Key::new(
            namespace_of(kind, meta),
            meta.name.clone().unwrap_or_default(),
        )
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// Every problem found in one object (all reported at once).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct Invalid(pub Vec<String>);

/// A translation: the model, or why the object is deliberately not proxied.
#[derive(Debug, Clone, PartialEq)]
pub enum Translated<T> {
    Model(T),
    /// Skipped as kube-proxy skips it (headless, ExternalName, another proxy's, FQDN).
    Skipped(String),
}

/// Collects the problems of one object.
#[derive(Debug, Default)]
pub(crate) struct Problems(pub Vec<String>);

impl Problems {
    pub fn push(&mut self, p: impl Into<String>) {
        self.0.push(p.into());
    }

    pub fn port(&mut self, v: i64, what: &str) -> u16 {
        if (1..=65535).contains(&v) {
            v as u16
        } else {
            self.push(format!("{what}: {v} is not a port (1..=65535)"));
            0
        }
    }

    pub fn protocol(&mut self, p: Option<&str>, what: &str) -> Protocol {
        match p.unwrap_or("TCP") {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            other => {
                self.push(format!(
                    "{what}: protocol {other} is not supported by the data path (TCP, UDP)"
                ));
                Protocol::Tcp
            }
        }
    }

    pub fn ip(&mut self, s: &str, what: &str) -> Option<IpAddr> {
        match s.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.push(format!("{what}: {s:?} is not an IP address"));
                None
            }
        }
    }

    pub fn finish<T>(self, value: T) -> Result<T, Invalid> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(Invalid(self.0))
        }
    }
}

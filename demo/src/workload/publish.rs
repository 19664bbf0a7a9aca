//! Publishing: the EndpointSlice controller and the objects the driver writes, all through
//! one seam, [`ClusterApi`].
//!
//! While the Service exists, one EndpointSlice lists every pod of the Deployment with the
//! conditions of its state (`PodState::conditions`: a terminating pod is
//! `ready: false, serving: true, terminating: true` until SIGTERM); the slice and the
//! Deployment (spec, status, conditions, `deployment.kubernetes.io/revision`) are written
//! every round in which they changed, never otherwise.
//!
//! The only implementation is the agent's HTTP API ([`AgentClient`]), which takes the
//! objects at their Kubernetes paths, as the lab's agent runs without a cluster. When the
//! agent's Kubernetes source is configured instead, the objects must go to the API server
//! the agent watches: a Kubernetes-API client implements the same trait and is passed to
//! [`Cluster::new`] in place of the agent; nothing else in the driver changes.

use std::time::Instant;

use crate::error::Result;
use lab::bail;
use serde_json::Value;

use super::Cluster;
use crate::agent::AgentClient;
use crate::k8s::{self, APP, EndpointEntry, Exposure};

/// The kinds of object the driver publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    Service,
    EndpointSlice,
    Deployment,
}

impl ObjectKind {
    /// The object's API path (in [`k8s::NAMESPACE`]).
    pub fn path(self, name: &str) -> String {
        match self {
            ObjectKind::Service => k8s::service_path(name),
            ObjectKind::EndpointSlice => k8s::slice_path(name),
            ObjectKind::Deployment => k8s::deployment_path(name),
        }
    }
}

/// Where the driver's objects are published: the one seam between the workload driver and
/// the source the agent reads them from (see the module docs).
pub trait ClusterApi: std::fmt::Debug {
    /// Creates the object `name` of `kind`, or replaces it whole; `object` is the JSON an API
    /// server would print ([`k8s::service`], [`k8s::endpoint_slice`], [`k8s::deployment`]).
    fn apply(&self, kind: ObjectKind, name: &str, object: &Value) -> Result<()>;
    /// Deletes the object `name` of `kind`; one that is already gone is not an error.
    fn delete(&self, kind: ObjectKind, name: &str) -> Result<()>;
}

/// The lab's agent without a Kubernetes source: its API takes the objects by `PUT` and
/// `DELETE` at their Kubernetes paths.
impl ClusterApi for AgentClient<'_> {
    fn apply(&self, kind: ObjectKind, name: &str, object: &Value) -> Result<()> {
        self.put(&kind.path(name), object).map(drop)
    }

    fn delete(&self, kind: ObjectKind, name: &str) -> Result<()> {
        AgentClient::delete(self, &kind.path(name)).map(drop)
    }
}

#[derive(Debug, Clone)]
pub(super) struct ServiceState {
    pub(super) name: String,
    pub(super) port: u16,
    pub(super) exposure: Exposure,
    pub(super) slice: String,
    pub(super) created: Instant,
}

impl Cluster<'_> {
    /// `kubectl expose deployment/<APP> --type=... --port PORT`: the Service and its
    /// EndpointSlice.
    pub fn expose(&mut self, port: u16, exposure: Exposure) -> Result<()> {
        if self.service.is_some() {
            bail!("service {APP} already exists");
        }
        let slice = format!("{APP}-{}", self.rng.suffix(5));
        self.api
            .apply(ObjectKind::Service, APP, &k8s::service(APP, port, exposure))?;
        self.service = Some(ServiceState {
            name: APP.to_owned(),
            port,
            exposure,
            slice,
            created: Instant::now(),
        });
        self.published_slice = None;
        self.tick()
    }

    /// `kubectl delete service -l app=<APP>`: the Service and its EndpointSlice. Returns
    /// whether there was one.
    pub fn delete_service(&mut self) -> Result<bool> {
        let Some(svc) = self.service.take() else {
            return Ok(false);
        };
        // The slice first: the data path never sees the service without its endpoints
        // flipping back; either order ends with neither.
        self.api.delete(ObjectKind::EndpointSlice, &svc.slice)?;
        self.api.delete(ObjectKind::Service, &svc.name)?;
        self.published_slice = None;
        Ok(true)
    }

    /// Publishes the EndpointSlice and the Deployment if they changed.
    pub(super) fn publish(&mut self) -> Result<()> {
        if let Some(svc) = &self.service {
            let endpoints: Vec<EndpointEntry> = self
                .pods
                .iter()
                .map(|p| {
                    let (ready, serving, terminating) = p.state.conditions();
                    EndpointEntry {
                        pod: p.name.clone(),
                        ip: p.ip,
                        ready,
                        serving,
                        terminating,
                    }
                })
                .collect();
            let slice = k8s::endpoint_slice(&svc.slice, &svc.name, &endpoints);
            if self.published_slice.as_ref() != Some(&slice) {
                self.api
                    .apply(ObjectKind::EndpointSlice, &svc.slice, &slice)?;
                self.published_slice = Some(slice);
            }
        }
        if let Some(view) = self.deployment_view() {
            let object = k8s::deployment(&view);
            if self.published_deployment.as_ref() != Some(&object) {
                self.api.apply(ObjectKind::Deployment, APP, &object)?;
                self.published_deployment = Some(object);
            }
        }
        Ok(())
    }

    /// Deletes the published Deployment (`kubectl delete deployments/<APP>`).
    pub(super) fn unpublish_deployment(&mut self) -> Result<()> {
        self.api.delete(ObjectKind::Deployment, APP)?;
        self.published_deployment = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_published_at_their_kubernetes_api_paths() {
        assert_eq!(
            ObjectKind::Service.path(APP),
            "/api/v1/namespaces/default/services/kubernetes-bootcamp"
        );
        assert_eq!(
            ObjectKind::EndpointSlice.path("kubernetes-bootcamp-j7852"),
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/kubernetes-bootcamp-j7852"
        );
        assert_eq!(
            ObjectKind::Deployment.path(APP),
            "/apis/apps/v1/namespaces/default/deployments/kubernetes-bootcamp"
        );
    }
}

//! What kubectl shows of the driver's objects: the Deployment as published
//! ([`DeploymentView`], its `Available` and `Progressing` conditions), `kubectl rollout
//! status`, and the rows of `kubectl get pods`, `get rs` and `get services` ([`PodView`],
//! [`ReplicaSetView`], [`ServiceView`]). [`crate::kubectl`] prints them as kubectl's tables.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use super::Cluster;
use super::kubelet::PodState;
use crate::k8s::{self, APP, DeploymentView, Exposure};

/// A pod as `kubectl get pods` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub name: String,
    pub ready: bool,
    pub status: &'static str,
    pub restarts: u32,
    pub age: Duration,
    pub ip: Ipv4Addr,
    /// The pod namespace it runs in.
    pub netns: String,
    pub version: u32,
    pub labels: BTreeMap<String, String>,
}

/// A ReplicaSet as `kubectl get rs` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSetView {
    pub name: String,
    pub desired: u32,
    pub current: u32,
    pub ready: u32,
    pub age: Duration,
    pub image: String,
    pub revision: u64,
}

/// The Service as `kubectl get services` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceView {
    pub name: String,
    pub port: u16,
    pub exposure: Exposure,
    pub age: Duration,
}

impl Cluster<'_> {
    /// The Deployment as published, if it exists.
    pub fn deployment_view(&self) -> Option<DeploymentView> {
        let d = self.deployment.as_ref()?;
        let hash = d.new_rs_hash();
        let active = self.pods.iter().filter(|p| p.active());
        let status_replicas = active.clone().count() as u32;
        let updated = active.clone().filter(|p| p.rs_hash == hash).count() as u32;
        let ready = active.clone().filter(|p| p.ready()).count() as u32;
        let available = active.filter(|p| p.available()).count() as u32;
        let min_available = d.replicas.saturating_sub(self.cfg.max_unavailable);
        let complete = self.rollout_complete();
        let rs_name = format!("{APP}-{hash}");
        let mut conditions = Vec::new();
        conditions.push(if available >= min_available {
            (
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".to_owned(),
            )
        } else {
            (
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".to_owned(),
            )
        });
        conditions.push(if d.stalled {
            (
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
            )
        } else if complete {
            (
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
            )
        } else {
            (
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{rs_name}\" is progressing."),
            )
        });
        Some(DeploymentView {
            name: APP.to_owned(),
            replicas: d.replicas,
            image: k8s::image(d.version),
            revision: d.revision,
            generation: d.generation,
            max_surge: self.cfg.max_surge,
            max_unavailable: self.cfg.max_unavailable,
            progress_deadline_s: self.cfg.progress_deadline.as_secs(),
            status_replicas,
            updated,
            ready,
            available,
            conditions,
        })
    }

    /// How long the Deployment has existed.
    pub fn deployment_age(&self) -> Option<Duration> {
        self.deployment.as_ref().map(|d| d.created.elapsed())
    }

    /// What `kubectl rollout status` would print now.
    pub fn rollout_status(&self) -> Option<String> {
        let d = self.deployment.as_ref()?;
        let v = self.deployment_view()?;
        Some(if d.stalled {
            format!("error: deployment \"{APP}\" exceeded its progress deadline")
        } else if v.updated < v.replicas {
            format!(
                "Waiting for deployment \"{APP}\" rollout to finish: {} out of {} new replicas \
                 have been updated...",
                v.updated, v.replicas
            )
        } else if v.status_replicas > v.updated {
            format!(
                "Waiting for deployment \"{APP}\" rollout to finish: {} old replicas are pending \
                 termination...",
                v.status_replicas - v.updated
            )
        } else if v.available < v.updated {
            format!(
                "Waiting for deployment \"{APP}\" rollout to finish: {} of {} updated replicas \
                 are available...",
                v.available, v.updated
            )
        } else {
            format!("deployment \"{APP}\" successfully rolled out")
        })
    }

    /// The pods, oldest first.
    pub fn pods(&self) -> Vec<PodView> {
        self.pods
            .iter()
            .map(|p| PodView {
                name: p.name.clone(),
                ready: p.ready(),
                status: match p.state {
                    PodState::Starting | PodState::Confirming { .. } | PodState::Ready { .. } => {
                        "Running"
                    }
                    PodState::Crashed { .. } if p.restarts == 0 => "Error",
                    PodState::Crashed { .. } => "CrashLoopBackOff",
                    _ => "Terminating",
                },
                restarts: p.restarts,
                age: p.created.elapsed(),
                ip: p.ip,
                netns: self.lab.backend(p.slot).name().to_owned(),
                version: p.version,
                labels: p.labels.clone(),
            })
            .collect()
    }

    /// The ReplicaSets, oldest first.
    pub fn replica_sets(&self) -> Vec<ReplicaSetView> {
        let Some(d) = &self.deployment else {
            return Vec::new();
        };
        d.replica_sets
            .iter()
            .map(|rs| {
                let active = self
                    .pods
                    .iter()
                    .filter(|p| p.rs_hash == rs.hash && p.active());
                ReplicaSetView {
                    name: format!("{APP}-{}", rs.hash),
                    desired: rs.replicas,
                    current: active.clone().count() as u32,
                    ready: active.filter(|p| p.ready()).count() as u32,
                    age: rs.created.elapsed(),
                    image: k8s::image(rs.version),
                    revision: rs.revision,
                }
            })
            .collect()
    }

    /// The Service, if exposed.
    pub fn service(&self) -> Option<ServiceView> {
        self.service.as_ref().map(|s| ServiceView {
            name: s.name.clone(),
            port: s.port,
            exposure: s.exposure,
            age: s.created.elapsed(),
        })
    }

    /// The log file of a pod.
    pub fn pod_log(&self, pod: &str) -> Option<PathBuf> {
        self.pods
            .iter()
            .find(|p| p.name == pod)
            .map(|p| p.log.clone())
    }
}

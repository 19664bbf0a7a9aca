//! Deployments and ReplicaSets -> rollout state (`sluice rollouts`).

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use serde::Serialize;

use super::{Invalid, Key, Problems};
use crate::objects::Kind;

/// The annotation holding a Deployment's (and its ReplicaSets') revision.
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
/// The label a Deployment's ReplicaSets and pods carry.
pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WorkloadModel {
    pub key: Key,
    pub desired: u32,
    pub updated: u32,
    pub ready: u32,
    pub available: u32,
    pub revision: Option<String>,
    /// (type, status, reason) of each condition.
    pub conditions: Vec<(String, String, Option<String>)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReplicaSetModel {
    pub key: Key,
    /// The Deployment that owns it (ownerReferences), same namespace.
    pub deployment: Option<Key>,
    pub pod_template_hash: Option<String>,
    pub revision: Option<String>,
    pub desired: u32,
    pub ready: u32,
    pub available: u32,
}

fn count(v: Option<i32>, what: &str, errs: &mut Problems) -> u32 {
    match v {
        None => 0,
        Some(n) if (0..=1_000_000).contains(&n) => n as u32,
        Some(n) => {
            errs.push(format!("{what}: {n} is not a replica count"));
            0
        }
    }
}

impl WorkloadModel {
    pub fn from_object(d: &Deployment) -> Result<WorkloadModel, Invalid> {
        let mut errs = Problems::default();
        let st = d.status.clone().unwrap_or_default();
        let replicas = d.spec.replicas.unwrap_or(1);
        let w = WorkloadModel {
            key: Key::of(Kind::Deployment, &d.metadata),
            desired: count(Some(replicas), "spec.replicas", &mut errs),
            updated: count(st.updated_replicas, "status.updatedReplicas", &mut errs),
            ready: count(st.ready_replicas, "status.readyReplicas", &mut errs),
            available: count(st.available_replicas, "status.availableReplicas", &mut errs),
            revision: d
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(REVISION_ANNOTATION))
                .cloned(),
            conditions: st
                .conditions
                .iter()
                .flatten()
                .map(|c| {
                    (
                        c.type_.clone().unwrap_or_default(),
                        c.status.clone().unwrap_or_default(),
                        c.reason.clone(),
                    )
                })
                .collect(),
        };
        errs.finish(w)
    }

    /// A rollout summary as `kubectl rollout status` would phrase it.
    pub fn rollout_status(&self) -> String {
        let stalled = self.conditions.iter().any(|(t, s, r)| {
            t == "Progressing" && s == "False" && r.as_deref() == Some("ProgressDeadlineExceeded")
        });
        if stalled {
            "stalled: progress deadline exceeded".into()
        } else if self.updated < self.desired {
            format!(
                "rolling: {} of {} updated replicas",
                self.updated, self.desired
            )
        } else if self.available < self.updated {
            format!(
                "rolling: {} of {} updated replicas available",
                self.available, self.updated
            )
        } else {
            "complete".into()
        }
    }
}

impl ReplicaSetModel {
    pub fn from_object(r: &ReplicaSet) -> Result<ReplicaSetModel, Invalid> {
        let mut errs = Problems::default();
        let key = Key::of(Kind::ReplicaSet, &r.metadata);
        let deployment = r
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.kind == "Deployment")
            .map(|o| Key::new(key.namespace.clone(), o.name.clone()));
        let st = r.status.clone().unwrap_or_default();
        let m = ReplicaSetModel {
            deployment,
            pod_template_hash: r
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(POD_TEMPLATE_HASH_LABEL))
                .cloned(),
            revision: r
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(REVISION_ANNOTATION))
                .cloned(),
            desired: count(
                Some(r.spec.replicas.unwrap_or(1)),
                "spec.replicas",
                &mut errs,
            ),
            ready: count(st.ready_replicas, "status.readyReplicas", &mut errs),
            available: count(st.available_replicas, "status.availableReplicas", &mut errs),
            key,
        };
        errs.finish(m)
    }
}

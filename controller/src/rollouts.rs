//! Rollouts: per Deployment its revision and replica counts, and per ReplicaSet it owns the
//! data-path backends its pods are and how new flows split between the ReplicaSets
//! (`/sluice/v1/rollouts`, `sluice rollouts`, the `sluice_rollout_*` metrics).
//!
//! A backend belongs to a ReplicaSet when its endpoint's `targetRef` is a Pod named
//! `<replicaset>-<suffix>` and that ReplicaSet is known in the same namespace; other backends
//! are untagged. Two steps, so that the store and the data path are never locked together:
//! [`plan`] reads the tables (each ReplicaSet's backends, by data-path service, through the
//! tables' ReplicaSet indexes: one Deployment costs its ReplicaSets' slices and services,
//! never every slice), [`view`] reads only those services' counters from the data path.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
};

use lb_datapath::{DataPath, EndpointState};
use serde::Serialize;

use crate::{
    desired::{self, ProbeResults},
    model::{Key, ReplicaSetModel, WorkloadModel},
    tables::Tables,
};

/// Which Deployments a [`plan`] covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every Deployment (the API and the CLI).
    All,
    /// Deployments whose pods of two or more ReplicaSets have endpoints: those mid-rollout
    /// (the metrics, so a scrape reads the counters of rolling Deployments only).
    MidRollout,
}

/// What [`view`] reads from the data path, computed from the tables.
#[derive(Debug, Default)]
pub struct Plan {
    deployments: Vec<DeploymentPlan>,
}

#[derive(Debug)]
struct DeploymentPlan {
    workload: WorkloadModel,
    replicasets: Vec<ReplicaSetPlan>,
}

#[derive(Debug)]
struct ReplicaSetPlan {
    model: ReplicaSetModel,
    /// (data-path service name, backend, state) of each backend its pods are.
    backends: Vec<(String, SocketAddr, EndpointState)>,
}

/// One Deployment's rollout, as `/sluice/v1/rollouts` answers it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rollout {
    pub workload: WorkloadModel,
    /// `kubectl rollout status`-like summary ([`WorkloadModel::rollout_status`]).
    pub status: String,
    /// New flows of all backends of its ReplicaSets (the shares' denominator).
    pub new_flows: u64,
    /// Its ReplicaSets, newest revision first.
    pub replicasets: Vec<ReplicaSetRollout>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReplicaSetRollout {
    pub name: String,
    pub revision: Option<String>,
    pub pod_template_hash: Option<String>,
    pub desired: u32,
    pub ready: u32,
    pub available: u32,
    /// Its pods' backends in the data path (over all services and ports), by state.
    pub backends: BackendCounts,
    /// The data path's new-flow counters of those backends, summed.
    pub new_flows: u64,
    /// Its fraction of the Deployment's new flows (0..=1); `None` while there are none.
    pub new_flow_share: Option<f64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BackendCounts {
    pub ready: u32,
    pub serving_terminating: u32,
    pub not_serving: u32,
}

impl BackendCounts {
    pub fn total(&self) -> u32 {
        self.ready + self.serving_terminating + self.not_serving
    }

    fn add(&mut self, state: EndpointState) {
        match state {
            EndpointState::Ready => self.ready += 1,
            EndpointState::ServingTerminating => self.serving_terminating += 1,
            EndpointState::NotServing => self.not_serving += 1,
        }
    }
}

/// The revision as a number, for ordering (unset or not a number: oldest).
fn revision_number(r: &ReplicaSetModel) -> Option<u64> {
    r.revision.as_deref().and_then(|v| v.parse().ok())
}

/// Reads what the rollouts of `scope` need from the tables. A Deployment costs its
/// ReplicaSets, the slices holding their pods and the desired specs of those slices'
/// services; [`Scope::MidRollout`] also looks at every Deployment's ReplicaSets (index
/// lookups, no slice read) to find the rolling ones.
pub fn plan(tables: &Tables, probes: &ProbeResults, scope: Scope) -> Plan {
    let deployments = tables
        .workloads()
        .filter(|w| {
            scope == Scope::All
                || tables
                    .replicasets_of(&w.key)
                    .filter(|r| tables.replicaset_has_endpoints(&r.key))
                    .nth(1)
                    .is_some()
        })
        .map(|w| plan_deployment(tables, probes, w))
        .collect();
    Plan { deployments }
}

fn plan_deployment(tables: &Tables, probes: &ProbeResults, w: &WorkloadModel) -> DeploymentPlan {
    let mut replicasets: Vec<ReplicaSetPlan> = tables
        .replicasets_of(&w.key)
        .map(|r| ReplicaSetPlan {
            model: r.clone(),
            backends: Vec::new(),
        })
        .collect();
    replicasets.sort_by(|a, b| {
        revision_number(&b.model)
            .cmp(&revision_number(&a.model))
            .then_with(|| a.model.key.cmp(&b.model.key))
    });
    // (service, endpoint address) -> the ReplicaSet its pod belongs to.
    let mut tagged: HashMap<(Key, IpAddr), usize> = HashMap::new();
    let mut services = BTreeSet::new();
    for (i, r) in replicasets.iter().enumerate() {
        for slice in tables.slices_of_replicaset(&r.model.key) {
            for e in &slice.endpoints {
                if e.replicaset_name() == Some(r.model.key.name.as_str()) {
                    tagged.insert((slice.service.clone(), e.addr), i);
                    services.insert(slice.service.clone());
                }
            }
        }
    }
    for svc in services {
        for (name, spec) in desired::of_service(tables, &svc, probes) {
            for b in &spec.backends {
                if let Some(&i) = tagged.get(&(svc.clone(), b.addr.ip())) {
                    replicasets[i]
                        .backends
                        .push((name.clone(), b.addr, b.state));
                }
            }
        }
    }
    DeploymentPlan {
        workload: w.clone(),
        replicasets,
    }
}

/// Reads the planned backends' counters (one `service_stats` per data-path service
/// involved). A service the data path does not hold yet counts no flows.
pub fn view(plan: Plan, dp: &dyn DataPath) -> Result<Vec<Rollout>, lb_datapath::Error> {
    let mut counters: BTreeMap<String, HashMap<SocketAddr, u64>> = BTreeMap::new();
    let names: BTreeSet<&str> = plan
        .deployments
        .iter()
        .flat_map(|d| &d.replicasets)
        .flat_map(|r| &r.backends)
        .map(|(name, _, _)| name.as_str())
        .collect();
    for name in names {
        let backends = match dp.service_stats(name) {
            Ok(s) => s
                .backends
                .into_iter()
                .map(|(a, st)| (a, st.new_flows))
                .collect(),
            Err(lb_datapath::Error::UnknownService(_)) => HashMap::new(),
            Err(e) => return Err(e),
        };
        counters.insert(name.to_string(), backends);
    }
    Ok(plan
        .deployments
        .into_iter()
        .map(|d| {
            let mut replicasets: Vec<ReplicaSetRollout> = d
                .replicasets
                .into_iter()
                .map(|r| {
                    let mut backends = BackendCounts::default();
                    let mut new_flows = 0;
                    for (name, addr, state) in &r.backends {
                        backends.add(*state);
                        new_flows += counters
                            .get(name)
                            .and_then(|c| c.get(addr))
                            .copied()
                            .unwrap_or(0);
                    }
                    ReplicaSetRollout {
                        name: r.model.key.name,
                        revision: r.model.revision,
                        pod_template_hash: r.model.pod_template_hash,
                        desired: r.model.desired,
                        ready: r.model.ready,
                        available: r.model.available,
                        backends,
                        new_flows,
                        new_flow_share: None,
                    }
                })
                .collect();
            let total: u64 = replicasets.iter().map(|r| r.new_flows).sum();
            if total > 0 {
                for r in &mut replicasets {
                    r.new_flow_share = Some(r.new_flows as f64 / total as f64);
                }
            }
            Rollout {
                status: d.workload.rollout_status(),
                workload: d.workload,
                new_flows: total,
                replicasets,
            }
        })
        .collect())
}

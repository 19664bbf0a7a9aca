//! Prometheus metrics. kube-proxy's names where the meaning is the same, so existing
//! dashboards work (`kubeproxy_sync_proxy_rules_duration_seconds`,
//! `kubeproxy_network_programming_duration_seconds`,
//! `kubeproxy_sync_proxy_rules_last_timestamp_seconds`), `sluice_` otherwise. Labels are
//! bounded: service labels come from configured services (6 series a service), reasons,
//! kinds and maps are fixed sets. Per-backend series (3 a backend: 300 000 at 10 000
//! services of 10 endpoints, a 30 MB scrape) are off unless `per_backend_metrics` is set;
//! `sluice backends` shows the same counters on demand. Series of services that are gone
//! are dropped after [`IDLE_TIMEOUT`] without an update.
//!
//! Rollouts ([`export_rollouts`]): `sluice_rollout_new_flows_total{namespace, deployment,
//! replicaset, revision}` and `sluice_rollout_backends{namespace, deployment, replicaset}`,
//! computed at scrape time only for Deployments whose pods of two or more ReplicaSets are
//! backends (mid-rollout), and only for ReplicaSets with backends: a scrape of a
//! 10 000-service cluster reads the counters of the rolling Deployments' services, not every
//! backend's, and a finished rollout's series go after [`IDLE_TIMEOUT`]. Replica counts per
//! Deployment are left to kube-state-metrics (`kube_deployment_status_replicas_*`).
//!
//! NodePort addresses: `sluice_node_addresses{origin}` (`interface`, followed live, and
//! `node_object`) and `sluice_node_address_changes_total{change}` (`added`, `removed`).

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use lb_datapath::{DataPath, EndpointState};

use crate::rollouts::Rollout;
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

pub const SYNC_DURATION: &str = "kubeproxy_sync_proxy_rules_duration_seconds";
pub const PROGRAMMING_DURATION: &str = "kubeproxy_network_programming_duration_seconds";
pub const LAST_SYNC: &str = "kubeproxy_sync_proxy_rules_last_timestamp_seconds";

/// A series not updated for this long is dropped (a removed service's counters; every live
/// series is refreshed at each scrape).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// Installs the global recorder (once per process) and returns the handle that renders it.
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let buckets = [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(SYNC_DURATION.into()), &buckets)?
        .set_buckets_for_metric(Matcher::Full(PROGRAMMING_DURATION.into()), &buckets)?
        .idle_timeout(
            MetricKindMask::COUNTER | MetricKindMask::GAUGE,
            Some(IDLE_TIMEOUT),
        )
        .install_recorder()?;
    Ok(handle)
}

/// Data-path names whose last write failed (not programmed, or an older state in force).
pub fn services_not_programmed(n: usize) {
    gauge!("sluice_services_not_programmed").set(n as f64);
}

/// A service did not fit: once per change of that service's error, by the setting to raise.
pub fn capacity_error(setting: &'static str) {
    counter!("sluice_capacity_errors_total", "setting" => setting).increment(1);
}

/// A health-check node port could not be opened (once per distinct error of a service).
pub fn health_check_node_port_error() {
    counter!("sluice_health_check_node_port_errors_total").increment(1);
}

pub fn reconcile_error(op: &'static str) {
    counter!("sluice_reconcile_errors_total", "op" => op).increment(1);
}

/// A reconcile round ended after `took`; `programmed`: kube-proxy's network-programming
/// latencies of the services it programmed, one per
/// `endpoints.kubernetes.io/last-change-trigger-time` of their changed slices (see
/// [`crate::reconcile::programming_latencies`]).
pub fn sync_done(took: Duration, programmed: &[Duration]) {
    histogram!(SYNC_DURATION).record(took.as_secs_f64());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    gauge!(LAST_SYNC).set(now.as_secs_f64());
    for p in programmed {
        histogram!(PROGRAMMING_DURATION).record(p.as_secs_f64());
    }
}

/// A watch of `kind` failed (it is retried with backoff).
pub fn watch_error(kind: &'static str) {
    counter!("sluice_kubernetes_watch_errors_total", "kind" => kind).increment(1);
}

/// A watch of `kind` completed a full list (the first one, or a relist after 410 or a
/// reconnect).
pub fn relist(kind: &'static str) {
    counter!("sluice_kubernetes_lists_total", "kind" => kind).increment(1);
}

/// An object of `kind` was rejected by the model.
pub fn object_rejected(kind: &'static str) {
    counter!("sluice_objects_rejected_total", "kind" => kind).increment(1);
}

/// The NodePort address origins of `sluice_node_addresses`, with the count last written
/// (`usize::MAX`: none yet), re-exported at every scrape so the series never goes idle.
static NODE_ADDRESSES: [(&str, AtomicUsize); 2] = [
    ("interface", AtomicUsize::new(usize::MAX)),
    ("node_object", AtomicUsize::new(usize::MAX)),
];

/// The NodePort addresses by origin (`interface`: the attached interfaces', followed live;
/// `node_object`: this node's Node object's), as last written.
pub fn node_addresses(origin: &'static str, n: usize) {
    for (o, count) in &NODE_ADDRESSES {
        if *o == origin {
            count.store(n, Ordering::Relaxed);
        }
    }
    gauge!("sluice_node_addresses", "origin" => origin).set(n as f64);
}

fn export_node_addresses() {
    for (origin, count) in &NODE_ADDRESSES {
        let n = count.load(Ordering::Relaxed);
        if n != usize::MAX {
            gauge!("sluice_node_addresses", "origin" => *origin).set(n as f64);
        }
    }
}

/// Addresses NodePorts started or stopped answering on, as the interfaces changed.
pub fn node_address_changes(changes: &lb_datapath::datapath::AddressChanges) {
    counter!("sluice_node_address_changes_total", "change" => "added")
        .increment(changes.added.len() as u64);
    counter!("sluice_node_address_changes_total", "change" => "removed")
        .increment(changes.removed.len() as u64);
}

pub fn file_errors(n: usize) {
    gauge!("sluice_manifest_files_invalid").set(n as f64);
}

/// Copies the data path's counters into the registry (called before each scrape);
/// `per_backend`: also one series per backend and counter.
pub fn export_datapath(dp: &dyn DataPath, per_backend: bool) {
    for s in dp.dump() {
        let svc = s.name.clone();
        if let Ok(st) = dp.service_stats(&s.name) {
            counter!("sluice_service_packets_total", "service" => svc.clone())
                .absolute(st.service.packets);
            counter!("sluice_service_bytes_total", "service" => svc.clone())
                .absolute(st.service.bytes);
            counter!("sluice_service_new_flows_total", "service" => svc.clone())
                .absolute(st.service.new_flows);
            for (addr, b) in st.backends.into_iter().filter(|_| per_backend) {
                let backend = addr.to_string();
                counter!("sluice_backend_packets_total", "service" => svc.clone(), "backend" => backend.clone()).absolute(b.packets);
                counter!("sluice_backend_bytes_total", "service" => svc.clone(), "backend" => backend.clone()).absolute(b.bytes);
                counter!("sluice_backend_new_flows_total", "service" => svc.clone(), "backend" => backend).absolute(b.new_flows);
            }
        }
        for (state, label) in [
            (EndpointState::Ready, "ready"),
            (EndpointState::ServingTerminating, "serving_terminating"),
            (EndpointState::NotServing, "not_serving"),
        ] {
            let n = s.backends.iter().filter(|b| b.state == state).count();
            gauge!("sluice_backends", "service" => svc.clone(), "state" => label).set(n as f64);
        }
    }
    // The conntrack GC's last pass (a scrape never walks the tables).
    let ct = dp.conntrack_stats();
    for (table, state, n) in &ct.flows {
        gauge!("sluice_conntrack_flows", "table" => table.clone(), "state" => state.clone())
            .set(*n as f64);
    }
    for (table, n) in &ct.entries {
        gauge!("sluice_conntrack_entries", "table" => table.clone()).set(*n as f64);
    }
    counter!("sluice_conntrack_expired_total").absolute(ct.expired);
    counter!("sluice_conntrack_gc_runs_total").absolute(ct.gc_runs);
    counter!("sluice_conntrack_gc_passes_total").absolute(ct.gc_passes);
    if let Ok(reasons) = dp.reasons() {
        for (r, v) in reasons {
            counter!("sluice_datapath_events_total", "reason" => r.label()).absolute(v);
        }
    }
    export_node_addresses();
    let caps = dp.capacities();
    if let Ok(o) = dp.usage() {
        for (map, used, cap) in [
            ("frontends", o.frontends, caps.frontends),
            ("backends", o.backends, caps.backends),
            ("slots", o.slots, caps.slots),
            (
                "conntrack",
                o.conntrack,
                caps.conntrack + caps.conntrack_syn + caps.conntrack_other,
            ),
            ("node_addresses", o.node_addresses, caps.node_addresses),
        ] {
            gauge!("sluice_map_entries", "map" => map).set(used as f64);
            gauge!("sluice_map_capacity", "map" => map).set(cap as f64);
        }
    }
}

/// The new-flow split of rollouts under way (see the module docs): `rollouts` as
/// [`crate::rollouts::view`] computed them for [`crate::rollouts::Scope::MidRollout`].
pub fn export_rollouts(rollouts: &[Rollout]) {
    for r in rollouts {
        let (ns, deployment) = (&r.workload.key.namespace, &r.workload.key.name);
        for rs in r.replicasets.iter().filter(|rs| rs.backends.total() > 0) {
            counter!(
                "sluice_rollout_new_flows_total",
                "namespace" => ns.clone(),
                "deployment" => deployment.clone(),
                "replicaset" => rs.name.clone(),
                "revision" => rs.revision.clone().unwrap_or_default(),
            )
            .absolute(rs.new_flows);
            gauge!(
                "sluice_rollout_backends",
                "namespace" => ns.clone(),
                "deployment" => deployment.clone(),
                "replicaset" => rs.name.clone(),
            )
            .set(f64::from(rs.backends.total()));
        }
    }
}

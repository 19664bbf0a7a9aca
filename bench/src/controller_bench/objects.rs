//! The Kubernetes objects the benchmark serves: one Node, N Services and N EndpointSlices of
//! [`ENDPOINTS`] ready endpoints each, as an API server prints them.
//!
//! - Services `bench/svc-00000..`: one TCP port `http` 80 -> 8080, a clusterIP from
//!   10.96.0.0/16 each; the first [`NODE_PORTS`] are `NodePort` (30000 + i: the node-port
//!   range holds only 2768), the others `ClusterIP`. So service i has two frontends
//!   (clusterIP:80 and the NodePort) for i < [`NODE_PORTS`], else one (clusterIP:80).
//! - Endpoints come from documentation ranges (no traffic is sent): a pool of 381 addresses
//!   (198.51.100.1-254, 203.0.113.1-127) reused across services, 10 distinct ones a service;
//!   changes swap in addresses of a spare pool (203.0.113.128-254) that no initial endpoint
//!   uses, so an address being polled is held by few services.

use std::net::Ipv4Addr;

use serde_json::{Value, json};

pub const NAMESPACE: &str = "bench";
pub const NODE: &str = "sluice-bench-node";
pub const ENDPOINTS: usize = 10;
/// Services that get a NodePort (30000 + i).
pub const NODE_PORTS: usize = 2000;
pub const SERVICE_PORT: u16 = 80;
pub const TARGET_PORT: u16 = 8080;

pub fn service_name(i: usize) -> String {
    format!("svc-{i:05}")
}

/// The data-path name of service i's port (`<ns>/<name>:<port name>/<PROTO>`).
pub fn spec_name(i: usize) -> String {
    format!("{NAMESPACE}/{}:http/TCP", service_name(i))
}

pub fn cluster_ip(i: usize) -> Ipv4Addr {
    // At most 65 000 services (controller-bench's --services): inside 10.96.0.0/16.
    let base = u32::from(Ipv4Addr::new(10, 96, 0, 1));
    Ipv4Addr::from(base + u32::try_from(i).expect("fewer than 65 000 services"))
}

/// Frontends the data path holds for `n` services.
pub fn frontends(n: usize) -> usize {
    n + n.min(NODE_PORTS)
}

pub fn node(address: Ipv4Addr) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": address.to_string()},
                {"type": "Hostname", "address": NODE},
            ],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    })
}

pub fn service(i: usize) -> Value {
    let name = service_name(i);
    let ip = cluster_ip(i).to_string();
    let mut port =
        json!({"name": "http", "port": SERVICE_PORT, "protocol": "TCP", "targetPort": TARGET_PORT});
    let type_ = if i < NODE_PORTS {
        port["nodePort"] = json!(30_000 + i);
        "NodePort"
    } else {
        "ClusterIP"
    };
    let mut svc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": name}},
        "spec": {
            "type": type_,
            "clusterIP": ip, "clusterIPs": [ip],
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
            "ports": [port],
            "selector": {"app": name},
            "sessionAffinity": "None",
            "internalTrafficPolicy": "Cluster",
        },
    });
    if i < NODE_PORTS {
        svc["spec"]["externalTrafficPolicy"] = json!("Cluster");
    }
    svc
}

pub fn slice(i: usize, addrs: &[Ipv4Addr]) -> Value {
    let name = service_name(i);
    let endpoints: Vec<Value> = addrs
        .iter()
        .enumerate()
        .map(|(k, a)| {
            json!({
                "addresses": [a.to_string()],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": NODE,
                "targetRef": {"kind": "Pod", "namespace": NAMESPACE, "name": format!("{name}-5d8f7c9b4-p{k}")},
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{name}-x7k2q"), "namespace": NAMESPACE,
            // Set to the time of each change, as the EndpointSlice controller does: the
            // agent's network-programming latency is measured from it.
            "annotations": {
                "endpoints.kubernetes.io/last-change-trigger-time":
                    k8s_openapi::jiff::Timestamp::now().to_string(),
            },
            "labels": {
                "kubernetes.io/service-name": name,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": TARGET_PORT, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}

/// The pool initial endpoints are drawn from.
fn initial_pool() -> Vec<Ipv4Addr> {
    (1..=254)
        .map(|h| Ipv4Addr::new(198, 51, 100, h))
        .chain((1..=127).map(|h| Ipv4Addr::new(203, 0, 113, h)))
        .collect()
}

/// Service i's initial endpoints: [`ENDPOINTS`] consecutive (so distinct) pool addresses.
pub fn initial_endpoints(n: usize) -> Vec<Vec<Ipv4Addr>> {
    let pool = initial_pool();
    (0..n)
        .map(|i| {
            (0..ENDPOINTS)
                .map(|k| pool[(i * ENDPOINTS + k) % pool.len()])
                .collect()
        })
        .collect()
}

/// Addresses changes swap in; no initial endpoint uses them.
pub fn spare_pool() -> Vec<Ipv4Addr> {
    (128..=254).map(|h| Ipv4Addr::new(203, 0, 113, h)).collect()
}

//! The domain model: services, endpoint slices and workloads as the agent understands them,
//! translated and validated from the Kubernetes-shaped objects. Every field that would change
//! what the data path does but is not enforced yet is rejected here, with a message saying so.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use lb_datapath::Protocol;
use serde::Serialize;

use crate::{
    health::Probe,
    objects::{self, IntOrString},
};

/// Namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Key {
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn of(meta: &objects::ObjectMeta) -> Key {
        Key {
            namespace: meta.namespace().to_string(),
            name: meta.name.clone(),
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ServiceType {
    ClusterIP,
    NodePort,
    LoadBalancer,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PortModel {
    /// The port's name ("" when the service has a single unnamed port).
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub node_port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceModel {
    pub key: Key,
    pub type_: ServiceType,
    pub ports: Vec<PortModel>,
    pub cluster_ips: Vec<IpAddr>,
    pub external_ips: Vec<IpAddr>,
    pub load_balancer_ips: Vec<IpAddr>,
    pub affinity: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndpointModel {
    pub addr: IpAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node_name: Option<String>,
    pub pod: Option<String>,
    /// The owning pod's pod-template-hash (from a Deployment's pod name `<deploy>-<hash>-<id>`).
    pub pod_template_hash: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SliceModel {
    pub key: Key,
    /// The service it belongs to (label `kubernetes.io/service-name`), same namespace.
    pub service: Key,
    pub ipv6: bool,
    /// (name, protocol) -> target port.
    pub ports: Vec<(String, Protocol, u16)>,
    pub endpoints: Vec<EndpointModel>,
    /// An active readiness probe declared with the `sluice.io/readiness-probe` annotation.
    pub probe: Option<Probe>,
}

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

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const PROBE_ANNOTATION: &str = "sluice.io/readiness-probe";
pub const DEFAULT_AFFINITY_TIMEOUT: Duration = Duration::from_secs(10_800);

/// Every problem found in one object (all reported at once).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct Invalid(pub Vec<String>);

fn port_u16(v: i64, what: &str, errs: &mut Vec<String>) -> u16 {
    if (1..=65535).contains(&v) {
        v as u16
    } else {
        errs.push(format!("{what}: {v} is not a port (1..=65535)"));
        0
    }
}

fn protocol(p: Option<&str>, what: &str, errs: &mut Vec<String>) -> Protocol {
    match p.unwrap_or("TCP") {
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        other => {
            errs.push(format!(
                "{what}: protocol {other} is not supported by the data path (TCP, UDP)"
            ));
            Protocol::Tcp
        }
    }
}

fn ip(s: &str, what: &str, errs: &mut Vec<String>) -> Option<IpAddr> {
    match s.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            errs.push(format!("{what}: {s:?} is not an IP address"));
            None
        }
    }
}

fn not_enforced(what: &str, errs: &mut Vec<String>) {
    errs.push(format!("{what} is not enforced by the data path yet; remove it (it would be silently ignored otherwise)"));
}

impl ServiceModel {
    pub fn from_object(s: &objects::Service) -> Result<ServiceModel, Invalid> {
        let mut errs = Vec::new();
        let spec = &s.spec;
        let type_ = match spec.type_.as_deref().unwrap_or("ClusterIP") {
            "ClusterIP" => ServiceType::ClusterIP,
            "NodePort" => ServiceType::NodePort,
            "LoadBalancer" => ServiceType::LoadBalancer,
            other => {
                errs.push(format!(
                    "spec.type: {other} is not supported (ClusterIP, NodePort, LoadBalancer)"
                ));
                ServiceType::ClusterIP
            }
        };
        if spec.ports.is_empty() {
            errs.push("spec.ports: a service needs at least one port".into());
        }
        let mut ports = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for (i, p) in spec.ports.iter().enumerate() {
            let what = format!("spec.ports[{i}]");
            let name = p.name.clone().unwrap_or_default();
            if name.is_empty() && spec.ports.len() > 1 {
                errs.push(format!(
                    "{what}.name: required when a service has more than one port"
                ));
            }
            let protocol = protocol(
                p.protocol.as_deref(),
                &format!("{what}.protocol"),
                &mut errs,
            );
            let port = port_u16(p.port, &format!("{what}.port"), &mut errs);
            if let Some(IntOrString::Int(t)) = &p.target_port {
                port_u16(*t, &format!("{what}.targetPort"), &mut errs);
            }
            let node_port = match (type_, p.node_port) {
                (ServiceType::ClusterIP, Some(_)) => {
                    errs.push(format!(
                        "{what}.nodePort: only NodePort and LoadBalancer services have node ports"
                    ));
                    None
                }
                (ServiceType::ClusterIP, None) => None,
                (_, Some(n)) => Some(port_u16(n, &format!("{what}.nodePort"), &mut errs)),
                (ServiceType::NodePort, None) => {
                    errs.push(format!("{what}.nodePort: required for type NodePort (the standalone agent does not allocate node ports)"));
                    None
                }
                (ServiceType::LoadBalancer, None) => None,
            };
            if !seen.insert((port, protocol)) {
                errs.push(format!("{what}: port {port}/{protocol} is listed twice"));
            }
            ports.push(PortModel {
                name,
                protocol,
                port,
                node_port,
            });
        }
        let mut cluster_ips = Vec::new();
        let mut cips: Vec<&String> = spec.cluster_ips.iter().collect();
        if let Some(c) = &spec.cluster_ip
            && !cips.contains(&c)
        {
            cips.insert(0, c);
        }
        for c in cips {
            if c != "None" && !c.is_empty() {
                cluster_ips.extend(ip(c, "spec.clusterIPs", &mut errs));
            }
        }
        let external_ips = spec
            .external_ips
            .iter()
            .filter_map(|a| ip(a, "spec.externalIPs", &mut errs))
            .collect();
        let mut load_balancer_ips = Vec::new();
        if let Some(st) = s.status.as_ref().and_then(|st| st.load_balancer.as_ref()) {
            for (i, ing) in st.ingress.iter().enumerate() {
                match (&ing.ip, &ing.hostname) {
                    (Some(a), _) => load_balancer_ips.extend(ip(
                        a,
                        &format!("status.loadBalancer.ingress[{i}].ip"),
                        &mut errs,
                    )),
                    (None, Some(_)) => not_enforced(
                        &format!("status.loadBalancer.ingress[{i}].hostname (without ip)"),
                        &mut errs,
                    ),
                    (None, None) => {
                        errs.push(format!("status.loadBalancer.ingress[{i}]: needs an ip"));
                    }
                }
            }
        }
        if !load_balancer_ips.is_empty() && type_ != ServiceType::LoadBalancer {
            errs.push(
                "status.loadBalancer.ingress: only LoadBalancer services have ingress IPs".into(),
            );
        }
        match spec.external_traffic_policy.as_deref() {
            None | Some("Cluster") => {}
            Some("Local") => not_enforced("spec.externalTrafficPolicy: Local", &mut errs),
            Some(o) => errs.push(format!(
                "spec.externalTrafficPolicy: {o} is not a policy (Cluster, Local)"
            )),
        }
        match spec.internal_traffic_policy.as_deref() {
            None | Some("Cluster") => {}
            Some("Local") => not_enforced("spec.internalTrafficPolicy: Local", &mut errs),
            Some(o) => errs.push(format!(
                "spec.internalTrafficPolicy: {o} is not a policy (Cluster, Local)"
            )),
        }
        if !spec.load_balancer_source_ranges.is_empty() {
            not_enforced("spec.loadBalancerSourceRanges", &mut errs);
        }
        if spec.load_balancer_ip.is_some() {
            errs.push("spec.loadBalancerIP is deprecated and not read: put the VIP in status.loadBalancer.ingress[].ip".into());
        }
        if spec.publish_not_ready_addresses == Some(true) {
            not_enforced("spec.publishNotReadyAddresses: true", &mut errs);
        }
        let affinity = match spec.session_affinity.as_deref() {
            None | Some("None") => {
                if spec.session_affinity_config.is_some() {
                    errs.push(
                        "spec.sessionAffinityConfig needs spec.sessionAffinity: ClientIP".into(),
                    );
                }
                None
            }
            Some("ClientIP") => {
                let t = spec
                    .session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds)
                    .unwrap_or(DEFAULT_AFFINITY_TIMEOUT.as_secs() as i64);
                if !(1..=86_400).contains(&t) {
                    errs.push(format!(
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds: {t} must be 1..=86400"
                    ));
                }
                Some(Duration::from_secs(t.clamp(1, 86_400) as u64))
            }
            Some(o) => {
                errs.push(format!(
                    "spec.sessionAffinity: {o} is not supported (None, ClientIP)"
                ));
                None
            }
        };
        if !errs.is_empty() {
            return Err(Invalid(errs));
        }
        Ok(ServiceModel {
            key: Key::of(&s.metadata),
            type_,
            ports,
            cluster_ips,
            external_ips,
            load_balancer_ips,
            affinity,
        })
    }
}

/// `<deployment>-<pod-template-hash>-<suffix>`: the hash of a Deployment's pod.
fn template_hash(pod: &str) -> Option<String> {
    let parts: Vec<&str> = pod.rsplitn(3, '-').collect();
    (parts.len() == 3 && !parts[1].is_empty()).then(|| parts[1].to_string())
}

impl SliceModel {
    pub fn from_object(s: &objects::EndpointSlice) -> Result<SliceModel, Invalid> {
        let mut errs = Vec::new();
        let ipv6 = match s.address_type.as_str() {
            "IPv4" => false,
            "IPv6" => true,
            o => {
                errs.push(format!("addressType: {o} is not supported (IPv4, IPv6)"));
                false
            }
        };
        let service = match s.metadata.labels.get(SERVICE_NAME_LABEL) {
            Some(n) if !n.is_empty() => Key {
                namespace: s.metadata.namespace().to_string(),
                name: n.clone(),
            },
            _ => {
                errs.push(format!("metadata.labels.{SERVICE_NAME_LABEL}: required (the service this slice belongs to)"));
                Key {
                    namespace: String::new(),
                    name: String::new(),
                }
            }
        };
        let mut ports = Vec::new();
        for (i, p) in s.ports.iter().enumerate() {
            let what = format!("ports[{i}]");
            let proto = protocol(
                p.protocol.as_deref(),
                &format!("{what}.protocol"),
                &mut errs,
            );
            ports.push((
                p.name.clone().unwrap_or_default(),
                proto,
                port_u16(p.port, &format!("{what}.port"), &mut errs),
            ));
        }
        let mut endpoints = Vec::new();
        for (i, e) in s.endpoints.iter().enumerate() {
            if e.addresses.is_empty() {
                errs.push(format!("endpoints[{i}].addresses: at least one address"));
            }
            for a in &e.addresses {
                let Some(addr) = ip(a, &format!("endpoints[{i}].addresses"), &mut errs) else {
                    continue;
                };
                if addr.is_ipv6() != ipv6 {
                    errs.push(format!(
                        "endpoints[{i}].addresses: {a} does not match addressType {}",
                        s.address_type
                    ));
                }
                let c = &e.conditions;
                let ready = c.ready.unwrap_or(true);
                let pod = e
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| r.name.clone());
                endpoints.push(EndpointModel {
                    addr,
                    ready,
                    serving: c.serving.unwrap_or(ready),
                    terminating: c.terminating.unwrap_or(false),
                    node_name: e.node_name.clone(),
                    pod_template_hash: pod.as_deref().and_then(template_hash),
                    pod,
                });
            }
        }
        let probe = match s.metadata.annotations.get(PROBE_ANNOTATION) {
            None => None,
            Some(text) => match Probe::parse(text) {
                Ok(p) => Some(p),
                Err(e) => {
                    errs.push(format!("metadata.annotations.{PROBE_ANNOTATION}: {e}"));
                    None
                }
            },
        };
        if !errs.is_empty() {
            return Err(Invalid(errs));
        }
        Ok(SliceModel {
            key: Key::of(&s.metadata),
            service,
            ipv6,
            ports,
            endpoints,
            probe,
        })
    }
}

impl WorkloadModel {
    pub fn from_object(d: &objects::Deployment) -> Result<WorkloadModel, Invalid> {
        let mut errs = Vec::new();
        let count = |v: Option<i64>, what: &str, errs: &mut Vec<String>| -> u32 {
            match v {
                None => 0,
                Some(n) if (0..=1_000_000).contains(&n) => n as u32,
                Some(n) => {
                    errs.push(format!("{what}: {n} is not a replica count"));
                    0
                }
            }
        };
        let st = d.status.clone().unwrap_or_default();
        let w = WorkloadModel {
            key: Key::of(&d.metadata),
            desired: count(
                Some(d.spec.replicas.unwrap_or(1)),
                "spec.replicas",
                &mut errs,
            ),
            updated: count(st.updated_replicas, "status.updatedReplicas", &mut errs),
            ready: count(st.ready_replicas, "status.readyReplicas", &mut errs),
            available: count(st.available_replicas, "status.availableReplicas", &mut errs),
            revision: d
                .metadata
                .annotations
                .get("deployment.kubernetes.io/revision")
                .cloned(),
            conditions: st
                .conditions
                .iter()
                .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
                .collect(),
        };
        if !errs.is_empty() {
            return Err(Invalid(errs));
        }
        Ok(w)
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

/// Per-name index of a slice's ports.
pub fn slice_port(slice: &SliceModel, name: &str, protocol: Protocol) -> Option<u16> {
    slice
        .ports
        .iter()
        .find(|(n, p, _)| n == name && *p == protocol)
        .map(|(_, _, port)| *port)
}

/// Slices grouped by the service they belong to.
pub fn slices_by_service(slices: &[SliceModel]) -> BTreeMap<Key, Vec<&SliceModel>> {
    let mut m: BTreeMap<Key, Vec<&SliceModel>> = BTreeMap::new();
    for s in slices {
        m.entry(s.service.clone()).or_default().push(s);
    }
    m
}

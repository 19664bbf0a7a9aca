//! Service -> [`ServiceModel`], with kube-proxy's rules for what is proxied at all.

use std::{collections::BTreeSet, net::IpAddr, time::Duration};

use k8s_openapi::{api::core::v1::Service, apimachinery::pkg::util::intstr::IntOrString};
use lb_datapath::Protocol;
use serde::Serialize;

use super::{Invalid, Key, Problems, Translated};
use crate::objects::Kind;

/// kube-proxy proxies only services without this label; sluice also takes those that name
/// it ([`PROXY_NAME`]).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// The value of [`SERVICE_PROXY_NAME_LABEL`] that hands a service to sluice.
pub const PROXY_NAME: &str = "sluice";
/// Kubernetes' default ClientIP affinity timeout (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: Duration = Duration::from_secs(10_800);

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
    /// `publishNotReadyAddresses`: every listed endpoint counts as ready.
    pub publish_not_ready: bool,
}

/// Why kube-proxy would not proxy this service, if it would not.
pub fn skip_reason(s: &Service) -> Option<String> {
    let labels = s.metadata.labels.as_ref();
    if let Some(p) = labels.and_then(|l| l.get(SERVICE_PROXY_NAME_LABEL))
        && p != PROXY_NAME
    {
        return Some(format!(
            "label {SERVICE_PROXY_NAME_LABEL}={p} hands it to another proxy"
        ));
    }
    let spec = s.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return Some("type ExternalName is a DNS alias, not proxied".into());
    }
    if spec.cluster_ip.as_deref() == Some("None") {
        return Some("headless (clusterIP: None), not proxied".into());
    }
    None
}

impl ServiceModel {
    /// The model of a Service, `Skipped` when kube-proxy would not proxy it, or every
    /// problem with it.
    pub fn from_object(s: &Service) -> Result<Translated<ServiceModel>, Invalid> {
        if let Some(why) = skip_reason(s) {
            return Ok(Translated::Skipped(why));
        }
        let mut errs = Problems::default();
        let default_spec = Default::default();
        let spec = s.spec.as_ref().unwrap_or(&default_spec);
        let type_ = match spec.type_.as_deref().unwrap_or("ClusterIP") {
            "ClusterIP" => ServiceType::ClusterIP,
            "NodePort" => ServiceType::NodePort,
            "LoadBalancer" => ServiceType::LoadBalancer,
            other => {
                errs.push(format!(
                    "spec.type: {other} is not a service type (ClusterIP, NodePort, \
                     LoadBalancer, ExternalName)"
                ));
                ServiceType::ClusterIP
            }
        };
        let spec_ports = spec.ports.as_deref().unwrap_or_default();
        if spec_ports.is_empty() {
            errs.push("spec.ports: a service needs at least one port");
        }
        let mut ports = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, p) in spec_ports.iter().enumerate() {
            let what = format!("spec.ports[{i}]");
            let name = p.name.clone().unwrap_or_default();
            if name.is_empty() && spec_ports.len() > 1 {
                errs.push(format!(
                    "{what}.name: required when a service has more than one port"
                ));
            }
            let protocol = errs.protocol(p.protocol.as_deref(), &format!("{what}.protocol"));
            let port = errs.port(p.port.into(), &format!("{what}.port"));
            if let Some(IntOrString::Int(t)) = &p.target_port {
                errs.port((*t).into(), &format!("{what}.targetPort"));
            }
            let node_port = match (type_, p.node_port) {
                (ServiceType::ClusterIP, Some(_)) => {
                    errs.push(format!(
                        "{what}.nodePort: only NodePort and LoadBalancer services have node ports"
                    ));
                    None
                }
                (ServiceType::ClusterIP, None) | (ServiceType::LoadBalancer, None) => None,
                (_, Some(n)) => Some(errs.port(n.into(), &format!("{what}.nodePort"))),
                (ServiceType::NodePort, None) => {
                    errs.push(format!(
                        "{what}.nodePort: required for type NodePort (the standalone agent \
                         does not allocate node ports)"
                    ));
                    None
                }
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
        let mut cips: Vec<&String> = spec.cluster_ips.iter().flatten().collect();
        if let Some(c) = &spec.cluster_ip
            && !cips.contains(&c)
        {
            cips.insert(0, c);
        }
        for c in cips {
            if !c.is_empty() {
                cluster_ips.extend(errs.ip(c, "spec.clusterIPs"));
            }
        }
        let external_ips = spec
            .external_ips
            .iter()
            .flatten()
            .filter_map(|a| errs.ip(a, "spec.externalIPs"))
            .collect();
        let mut load_balancer_ips = Vec::new();
        let ingress = s
            .status
            .as_ref()
            .and_then(|st| st.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_deref())
            .unwrap_or_default();
        for (i, ing) in ingress.iter().enumerate() {
            // As kube-proxy: only `ip` is programmed (a hostname-only ingress is the cloud
            // load balancer's business), and not with ipMode Proxy, where the load balancer
            // delivers to the node with its own address as the destination.
            if ing.ip_mode.as_deref() == Some("Proxy") {
                continue;
            }
            if let Some(a) = &ing.ip {
                load_balancer_ips
                    .extend(errs.ip(a, &format!("status.loadBalancer.ingress[{i}].ip")));
            }
        }
        // A service whose type changed away from LoadBalancer keeps its old ingress until
        // the load-balancer implementation clears it: it is not programmed meanwhile.
        if type_ != ServiceType::LoadBalancer {
            load_balancer_ips.clear();
        }
        match spec.external_traffic_policy.as_deref() {
            None | Some("Cluster") => {}
            Some("Local") => errs.not_enforced("spec.externalTrafficPolicy: Local"),
            Some(o) => errs.push(format!(
                "spec.externalTrafficPolicy: {o} is not a policy (Cluster, Local)"
            )),
        }
        match spec.internal_traffic_policy.as_deref() {
            None | Some("Cluster") => {}
            Some("Local") => errs.not_enforced("spec.internalTrafficPolicy: Local"),
            Some(o) => errs.push(format!(
                "spec.internalTrafficPolicy: {o} is not a policy (Cluster, Local)"
            )),
        }
        if spec
            .load_balancer_source_ranges
            .as_ref()
            .is_some_and(|r| !r.is_empty())
        {
            errs.not_enforced("spec.loadBalancerSourceRanges");
        }
        let affinity = match spec.session_affinity.as_deref() {
            None | Some("None") => None,
            Some("ClientIP") => {
                let t = spec
                    .session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds)
                    .map_or(DEFAULT_AFFINITY_TIMEOUT.as_secs() as i64, i64::from);
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
        errs.finish(Translated::Model(ServiceModel {
            key: Key::of(Kind::Service, &s.metadata),
            type_,
            ports,
            cluster_ips,
            external_ips,
            load_balancer_ips,
            affinity,
            publish_not_ready: spec.publish_not_ready_addresses == Some(true),
        }))
    }
}

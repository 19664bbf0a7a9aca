//! Service -> [`ServiceModel`], with kube-proxy's rules for what is proxied at all.

use std::{collections::BTreeSet, net::IpAddr, time::Duration};

use ipnet::IpNet;
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
/// The allowed client ranges of a LoadBalancer, read when `spec.loadBalancerSourceRanges` is
/// empty (comma-separated CIDRs), as the cloud providers' load balancers read it.
pub const SOURCE_RANGES_ANNOTATION: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";
/// `"true"`: flows to endpoints on other nodes go by direct server return; `"false"`: they
/// are source-NATed; absent: the agent's `dsr` setting decides.
pub const DSR_ANNOTATION: &str = "sluice.io/dsr";
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
    /// `externalTrafficPolicy: Local` on a service reachable from outside (type NodePort or
    /// LoadBalancer, or with externalIPs), as kube-proxy reads it: the NodePorts, externalIPs
    /// and LoadBalancer IPs use only this node's endpoints.
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`: the cluster IPs use only this node's endpoints.
    pub internal_local: bool,
    /// `spec.loadBalancerSourceRanges`, else the [`SOURCE_RANGES_ANNOTATION`]: the clients
    /// allowed to reach the LoadBalancer IPs (networks, host bits cleared; both families:
    /// each family's spec takes its own); empty: every client.
    pub source_ranges: Vec<IpNet>,
    /// `spec.healthCheckNodePort` (type LoadBalancer with `externalTrafficPolicy: Local`):
    /// the port this node answers load balancers' health checks on.
    pub health_check_node_port: Option<u16>,
    /// The [`DSR_ANNOTATION`]: `None` when absent.
    pub dsr: Option<bool>,
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
        let external_ips: Vec<IpAddr> = spec
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
        let external_local = match spec.external_traffic_policy.as_deref() {
            None | Some("Cluster") => false,
            Some("Local") => true,
            Some(o) => {
                errs.push(format!(
                    "spec.externalTrafficPolicy: {o} is not a policy (Cluster, Local)"
                ));
                false
            }
        };
        // As kube-proxy: the policy matters only for a service reachable from outside.
        let external_local =
            external_local && (type_ != ServiceType::ClusterIP || !external_ips.is_empty());
        let internal_local = match spec.internal_traffic_policy.as_deref() {
            None | Some("Cluster") => false,
            Some("Local") => true,
            Some(o) => {
                errs.push(format!(
                    "spec.internalTrafficPolicy: {o} is not a policy (Cluster, Local)"
                ));
                false
            }
        };
        let source_ranges = source_ranges(s, &mut errs);
        let health_check_node_port = match spec.health_check_node_port {
            None | Some(0) => None,
            Some(p) if type_ == ServiceType::LoadBalancer && external_local => {
                Some(errs.port(p.into(), "spec.healthCheckNodePort"))
            }
            Some(p) => {
                // As the API server validates it.
                errs.push(format!(
                    "spec.healthCheckNodePort: {p} may only be set when type is LoadBalancer \
                     and externalTrafficPolicy is Local"
                ));
                None
            }
        };
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
        let dsr = match s
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DSR_ANNOTATION))
            .map(String::as_str)
        {
            None => None,
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(o) => {
                errs.push(format!(
                    "metadata.annotations.{DSR_ANNOTATION}: {o:?} is not \"true\" or \"false\""
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
            external_local,
            internal_local,
            source_ranges,
            health_check_node_port,
            dsr,
        }))
    }
}

/// The allowed client ranges: `spec.loadBalancerSourceRanges` (each entry trimmed, as
/// kube-proxy does), or when that is empty the [`SOURCE_RANGES_ANNOTATION`] (comma-separated,
/// as the cloud providers read it). Every entry must be a CIDR; host bits are cleared
/// (`10.1.2.3/8` is `10.0.0.0/8`, as Go's parser reads it).
fn source_ranges(s: &Service, errs: &mut Problems) -> Vec<IpNet> {
    let field = s
        .spec
        .as_ref()
        .and_then(|sp| sp.load_balancer_source_ranges.as_deref())
        .unwrap_or_default();
    let parse = |text: &str| text.trim().parse::<IpNet>().map(|n| n.trunc());
    if !field.is_empty() {
        let mut out = Vec::new();
        for (i, r) in field.iter().enumerate() {
            match parse(r) {
                Ok(n) => out.push(n),
                Err(_) => errs.push(format!(
                    "spec.loadBalancerSourceRanges[{i}]: {r:?} is not a CIDR (e.g. \
                     203.0.113.0/24, 2001:db8::/32)"
                )),
            }
        }
        return out;
    }
    let annotation = s
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SOURCE_RANGES_ANNOTATION))
        .map(|v| v.trim())
        .filter(|v| !v.is_empty());
    let Some(text) = annotation else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for r in text.split(',') {
        match parse(r) {
            Ok(n) => out.push(n),
            Err(_) => errs.push(format!(
                "metadata.annotations.{SOURCE_RANGES_ANNOTATION}: {:?} is not a CIDR (a \
                 comma-separated list of CIDRs, e.g. 203.0.113.0/24,2001:db8::/32)",
                r.trim()
            )),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A LoadBalancer Service as `kubectl get service -o yaml` prints it, with `extra`
    /// lines appended to its spec (indented by four spaces) and `annotations` (JSON).
    fn service(annotations: &str, extra: &str) -> Service {
        let text = format!(
            r#"apiVersion: v1
kind: Service
metadata:
  annotations: {annotations}
  creationTimestamp: "2026-12-01T10:00:00Z"
  name: web
  namespace: default
  resourceVersion: "51230"
  uid: 3f0b7d1e-2c4a-4e8b-9f1d-7a6c5b4e3d21
spec:
  allocateLoadBalancerNodePorts: true
  clusterIP: 10.96.0.30
  clusterIPs:
  - 10.96.0.30
  - fd00:10:96::30
  ipFamilies:
  - IPv4
  - IPv6
  ipFamilyPolicy: PreferDualStack
  ports:
  - name: http
    nodePort: 30800
    port: 80
    protocol: TCP
    targetPort: 8080
  selector:
    app: web
  sessionAffinity: None
  type: LoadBalancer
{extra}status:
  loadBalancer:
    ingress:
    - ip: 203.0.113.20
      ipMode: VIP
"#
        );
        serde_yaml::from_str(&text).expect("a Service")
    }

    fn model(s: &Service) -> Result<ServiceModel, Invalid> {
        match ServiceModel::from_object(s)? {
            Translated::Model(m) => Ok(m),
            Translated::Skipped(why) => panic!("skipped: {why}"),
        }
    }

    fn errors(s: &Service) -> String {
        model(s).expect_err("rejected").to_string()
    }

    #[test]
    fn traffic_policies_are_read_as_kube_proxy_reads_them() {
        let m = model(&service("{}", "")).unwrap();
        assert!(!m.external_local && !m.internal_local);
        assert_eq!(m.health_check_node_port, None);

        let m = model(&service(
            "{}",
            "  externalTrafficPolicy: Local\n  healthCheckNodePort: 32100\n  internalTrafficPolicy: Local\n",
        ))
        .unwrap();
        assert!(m.external_local && m.internal_local);
        assert_eq!(m.health_check_node_port, Some(32100));

        // externalTrafficPolicy only matters for a service reachable from outside.
        let mut s = service("{}", "  externalTrafficPolicy: Local\n");
        let spec = s.spec.as_mut().unwrap();
        spec.type_ = Some("ClusterIP".into());
        spec.ports.as_mut().unwrap()[0].node_port = None;
        assert!(!model(&s).unwrap().external_local);
        s.spec.as_mut().unwrap().external_ips = Some(vec!["203.0.113.21".into()]);
        assert!(model(&s).unwrap().external_local);
    }

    #[test]
    fn unknown_policies_and_a_misplaced_health_check_port_are_rejected_by_name() {
        assert!(
            errors(&service("{}", "  externalTrafficPolicy: Nearest\n"))
                .contains("spec.externalTrafficPolicy: Nearest is not a policy (Cluster, Local)")
        );
        assert!(
            errors(&service("{}", "  internalTrafficPolicy: Node\n"))
                .contains("spec.internalTrafficPolicy: Node is not a policy (Cluster, Local)")
        );
        assert!(
            errors(&service("{}", "  healthCheckNodePort: 32100\n")).contains(
                "spec.healthCheckNodePort: 32100 may only be set when type is LoadBalancer and \
                 externalTrafficPolicy is Local"
            )
        );
        assert!(
            errors(&service(
                "{}",
                "  externalTrafficPolicy: Local\n  healthCheckNodePort: 70000\n"
            ))
            .contains("spec.healthCheckNodePort: 70000 is not a port")
        );
    }

    #[test]
    fn source_ranges_are_parsed_trimmed_and_truncated() {
        let m = model(&service(
            "{}",
            "  loadBalancerSourceRanges:\n  - 203.0.113.0/25\n  - ' 192.0.2.7/24 '\n  - 2001:db8:100::1/48\n",
        ))
        .unwrap();
        let want: Vec<IpNet> = ["203.0.113.0/25", "192.0.2.0/24", "2001:db8:100::/48"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(m.source_ranges, want);
        assert!(model(&service("{}", "")).unwrap().source_ranges.is_empty());
    }

    #[test]
    fn an_invalid_source_range_rejects_the_service_naming_the_entry() {
        let e = errors(&service(
            "{}",
            "  loadBalancerSourceRanges:\n  - 203.0.113.0/25\n  - 203.0.113.9\n  - 10.0.0.0/33\n",
        ));
        assert!(
            e.contains("spec.loadBalancerSourceRanges[1]: \"203.0.113.9\" is not a CIDR"),
            "{e}"
        );
        assert!(
            e.contains("spec.loadBalancerSourceRanges[2]: \"10.0.0.0/33\" is not a CIDR"),
            "{e}"
        );
    }

    #[test]
    fn the_dsr_annotation_is_true_false_or_an_error_naming_it() {
        assert_eq!(model(&service("{}", "")).unwrap().dsr, None);
        let on = model(&service(r#"{"sluice.io/dsr": "true"}"#, "")).unwrap();
        assert_eq!(on.dsr, Some(true));
        let off = model(&service(r#"{"sluice.io/dsr": "false"}"#, "")).unwrap();
        assert_eq!(off.dsr, Some(false));
        let e = errors(&service(r#"{"sluice.io/dsr": "yes"}"#, ""));
        assert!(
            e.contains("metadata.annotations.sluice.io/dsr: \"yes\""),
            "{e}"
        );
    }

    #[test]
    fn the_source_ranges_annotation_applies_only_without_the_field() {
        let note = r#"{"service.beta.kubernetes.io/load-balancer-source-ranges": "192.0.2.0/24, 2001:db8::/32"}"#;
        let m = model(&service(note, "")).unwrap();
        let want: Vec<IpNet> = vec![
            "192.0.2.0/24".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ];
        assert_eq!(m.source_ranges, want);
        // The field wins, as the cloud providers read it.
        let m = model(&service(
            note,
            "  loadBalancerSourceRanges: [198.51.100.0/24]\n",
        ))
        .unwrap();
        assert_eq!(
            m.source_ranges,
            vec!["198.51.100.0/24".parse::<IpNet>().unwrap()]
        );
        // Empty: every client.
        let m = model(&service(
            r#"{"service.beta.kubernetes.io/load-balancer-source-ranges": " "}"#,
            "",
        ))
        .unwrap();
        assert!(m.source_ranges.is_empty());
        let e = errors(&service(
            r#"{"service.beta.kubernetes.io/load-balancer-source-ranges": "192.0.2.0/24,office"}"#,
            "",
        ));
        assert!(
            e.contains(
                "metadata.annotations.service.beta.kubernetes.io/load-balancer-source-ranges: \
                 \"office\" is not a CIDR"
            ),
            "{e}"
        );
    }
}

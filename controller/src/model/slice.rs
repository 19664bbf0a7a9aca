//! EndpointSlice -> [`SliceModel`]: endpoints with kube-proxy's reading of their conditions.

use std::{net::IpAddr, time::SystemTime};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use lb_datapath::Protocol;
use serde::Serialize;

use super::{Invalid, Key, Problems, Translated};
use crate::{health::Probe, objects::Kind};

/// The label naming the service a slice belongs to (same namespace).
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// An active readiness probe for the slice's endpoints (standalone mode).
pub const PROBE_ANNOTATION: &str = "sluice.io/readiness-probe";
/// When the change this slice carries was triggered (RFC 3339), set by the EndpointSlice
/// controller; network-programming latency is measured from it, as kube-proxy does.
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndpointModel {
    pub addr: IpAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node_name: Option<String>,
    /// The pod it is (`targetRef` of kind Pod).
    pub pod: Option<String>,
}

impl EndpointModel {
    /// The ReplicaSet its pod would belong to: the pod name without its last `-segment`
    /// (`<replicaset>-<suffix>`). A candidate only: whether such a ReplicaSet exists is for
    /// the tables to say.
    pub fn replicaset_name(&self) -> Option<&str> {
        self.pod
            .as_deref()
            .and_then(|p| p.rsplit_once('-'))
            .map(|(rs, _)| rs)
            .filter(|rs| !rs.is_empty())
    }

    /// The owning pod's pod-template-hash (from a Deployment's pod name
    /// `<deploy>-<hash>-<id>`), derived rather than stored: one string less per endpoint.
    pub fn pod_template_hash(&self) -> Option<&str> {
        self.pod.as_deref().and_then(template_hash)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SliceModel {
    pub key: Key,
    /// The service it belongs to (label `kubernetes.io/service-name`), same namespace.
    pub service: Key,
    pub ipv6: bool,
    /// (name, protocol, target port) of each port.
    pub ports: Vec<(String, Protocol, u16)>,
    pub endpoints: Vec<EndpointModel>,
    /// An active readiness probe declared with the `sluice.io/readiness-probe` annotation.
    pub probe: Option<Probe>,
    /// `endpoints.kubernetes.io/last-change-trigger-time`; unset or unparsable: none (it is
    /// informational, as kube-proxy treats it).
    pub trigger_time: Option<SystemTime>,
}

/// `<deployment>-<pod-template-hash>-<suffix>`: the hash of a Deployment's pod.
fn template_hash(pod: &str) -> Option<&str> {
    let mut parts = pod.rsplitn(3, '-');
    let (_suffix, hash, _deployment) = (parts.next()?, parts.next()?, parts.next()?);
    (!hash.is_empty()).then_some(hash)
}

impl SliceModel {
    /// The model of a slice, `Skipped` for FQDN slices (kube-proxy ignores them), or every
    /// problem with it.
    pub fn from_object(s: &EndpointSlice) -> Result<Translated<SliceModel>, Invalid> {
        let mut errs = Problems::default();
        let ipv6 = match s.address_type.as_str() {
            "IPv4" => false,
            "IPv6" => true,
            "FQDN" => {
                return Ok(Translated::Skipped(
                    "addressType FQDN is not proxied".into(),
                ));
            }
            o => {
                errs.push(format!("addressType: {o} is not supported (IPv4, IPv6)"));
                false
            }
        };
        let key = Key::of(Kind::EndpointSlice, &s.metadata);
        let labels = s.metadata.labels.as_ref();
        let service = match labels.and_then(|l| l.get(SERVICE_NAME_LABEL)) {
            Some(n) if !n.is_empty() => Key::new(key.namespace.clone(), n.clone()),
            _ => {
                errs.push(format!(
                    "metadata.labels.{SERVICE_NAME_LABEL}: required (the service this slice \
                     belongs to)"
                ));
                Key::new("", "")
            }
        };
        let mut ports = Vec::new();
        for (i, p) in s.ports.iter().flatten().enumerate() {
            let what = format!("ports[{i}]");
            let proto = errs.protocol(p.protocol.as_deref(), &format!("{what}.protocol"));
            // As kube-proxy: a port without a number is ignored.
            let Some(port) = p.port else { continue };
            ports.push((
                p.name.clone().unwrap_or_default(),
                proto,
                errs.port(port.into(), &format!("{what}.port")),
            ));
        }
        let mut endpoints = Vec::new();
        for (i, e) in s.endpoints.iter().flatten().enumerate() {
            // As kube-proxy: the first address is the endpoint's (the others are
            // alternatives of the same endpoint, never extra backends).
            let Some(first) = e.addresses.first() else {
                errs.push(format!("endpoints[{i}].addresses: at least one address"));
                continue;
            };
            let Some(addr) = errs.ip(first, &format!("endpoints[{i}].addresses[0]")) else {
                continue;
            };
            if addr.is_ipv6() != ipv6 {
                errs.push(format!(
                    "endpoints[{i}].addresses[0]: {first} does not match addressType {}",
                    s.address_type
                ));
            }
            // Kubernetes' defaults: ready unset = true, serving unset = ready, terminating
            // unset = false.
            let c = e.conditions.clone().unwrap_or_default();
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
                pod,
            });
        }
        let probe = match s
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(PROBE_ANNOTATION))
        {
            None => None,
            Some(text) => match Probe::parse(text) {
                Ok(p) => Some(p),
                Err(e) => {
                    errs.push(format!("metadata.annotations.{PROBE_ANNOTATION}: {e}"));
                    None
                }
            },
        };
        let trigger_time = s
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(TRIGGER_TIME_ANNOTATION))
            .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
            .map(SystemTime::from);
        errs.finish(Translated::Model(SliceModel {
            key,
            service,
            ipv6,
            ports,
            endpoints,
            probe,
            trigger_time,
        }))
    }

    /// The target port of the service port `name`/`protocol`, if this slice has it.
    pub fn port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|(n, p, _)| n == name && *p == protocol)
            .map(|(_, _, port)| *port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_hash_comes_from_a_deployment_pod_name() {
        assert_eq!(
            template_hash("kubernetes-bootcamp-5485cc6795-2xk8v"),
            Some("5485cc6795")
        );
        assert_eq!(template_hash("web-7d4b9c-x2x9k"), Some("7d4b9c"));
        assert_eq!(template_hash("standalone"), None);
        assert_eq!(template_hash("a-b"), None);
    }

    #[test]
    fn the_replicaset_candidate_is_the_pod_name_without_its_last_segment() {
        let e = |pod: Option<&str>| EndpointModel {
            addr: [10, 0, 0, 1].into(),
            ready: true,
            serving: true,
            terminating: false,
            node_name: None,
            pod: pod.map(Into::into),
        };
        assert_eq!(
            e(Some("web-7d4b9c-x2x9k")).replicaset_name(),
            Some("web-7d4b9c")
        );
        assert_eq!(
            e(Some("my-app-v2-5485cc6795-2xk8v")).replicaset_name(),
            Some("my-app-v2-5485cc6795")
        );
        assert_eq!(e(Some("standalone")).replicaset_name(), None);
        assert_eq!(e(Some("-x")).replicaset_name(), None);
        assert_eq!(e(None).replicaset_name(), None);
    }
}

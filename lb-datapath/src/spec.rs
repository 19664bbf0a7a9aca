//! What callers ask the data path for: one L4 service (one port, one protocol) with its
//! frontends and backends. A Kubernetes Service with several ports is several of these.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use serde::{Deserialize, Serialize};

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => lb_common::IPPROTO_TCP,
            Protocol::Udp => lb_common::IPPROTO_UDP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

/// Where clients reach a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Frontend {
    /// This port on every address of every attached interface, of the service's family.
    NodePort(u16),
    /// An exact address and port: LoadBalancer ingress IP, external IP, cluster IP.
    Address(SocketAddr),
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Frontend::NodePort(p) => write!(f, "<node>:{p}"),
            Frontend::Address(a) => write!(f, "{a}"),
        }
    }
}

/// An endpoint's condition, as in an EndpointSlice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EndpointState {
    /// ready: eligible for new flows.
    Ready,
    /// serving and terminating: keeps its flows; gets new flows only while the service has
    /// no ready endpoint at all.
    ServingTerminating,
    /// not serving: no new flows; existing flows continue until it is removed.
    NotServing,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BackendSpec {
    pub addr: SocketAddr,
    pub state: EndpointState,
    /// The endpoint runs on another node (its EndpointSlice `nodeName` is not this node):
    /// new flows to it are source-NATed to this node's address, so replies come back here.
    #[serde(default)]
    pub remote: bool,
}

impl BackendSpec {
    pub fn ready(addr: SocketAddr) -> Self {
        BackendSpec {
            addr,
            state: EndpointState::Ready,
            remote: false,
        }
    }

    /// The same endpoint, on another node.
    pub fn on_another_node(self) -> Self {
        BackendSpec {
            remote: true,
            ..self
        }
    }
}

/// What a service does with a new flow while it has no usable backend.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum WhenEmpty {
    /// Refuse it (TCP RST, ICMP port unreachable), as kube-proxy does for a service
    /// without endpoints.
    #[default]
    Refuse,
    /// Drop it: `externalTrafficPolicy: Local` on a node without local endpoints, as
    /// kube-proxy does (the health-check node port tells load balancers to avoid it).
    Drop,
}

/// Client prefixes allowed to open flows to some of a service's frontends
/// (`loadBalancerSourceRanges`: the LoadBalancer ingress addresses).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SourceRanges {
    /// The allowed prefixes, of the service's family.
    pub allow: Vec<ipnet::IpNet>,
    /// The address frontends they apply to (each one of the spec's frontends); new flows
    /// to other frontends are not filtered.
    pub frontends: Vec<SocketAddr>,
}

/// The IP family of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AddressFamily {
    Ipv4,
    Ipv6,
}

impl AddressFamily {
    pub fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => AddressFamily::Ipv4,
            IpAddr::V6(_) => AddressFamily::Ipv6,
        }
    }

    /// The family these frontends and backends say: that of the first address frontend,
    /// else of the first backend; `None` when neither says (see [`ServiceSpec`]).
    pub fn of_service<'a>(
        frontends: impl IntoIterator<Item = &'a Frontend>,
        backends: impl IntoIterator<Item = &'a SocketAddr>,
    ) -> Option<Self> {
        frontends
            .into_iter()
            .find_map(|f| match f {
                Frontend::Address(a) => Some(a.ip()),
                Frontend::NodePort(_) => None,
            })
            .or_else(|| backends.into_iter().next().map(SocketAddr::ip))
            .map(AddressFamily::of)
    }
}

impl fmt::Display for AddressFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressFamily::Ipv4 => "IPv4",
            AddressFamily::Ipv6 => "IPv6",
        })
    }
}

/// One L4 service (one port, one protocol) of one IP family.
///
/// The family is that of the first [`Frontend::Address`], else of the first backend, else
/// IPv4 (for an update that names neither, NodePorts only and no backends: the family the
/// service already has). Every address frontend and every backend must be of that family (a
/// dual-stack Kubernetes Service is two specs, one per family), and a
/// [`Frontend::NodePort`] serves that family only: the port on the node's addresses of the
/// service's family, so an IPv4 and an IPv6 service may share a NodePort. The family of an
/// existing service cannot change (remove it and add it again), so a NodePort-only IPv6
/// service needs its backends (or an address frontend) when it is first added.
/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are rejected: use the IPv4 form.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Unique name, e.g. `default/web:http/TCP`.
    pub name: String,
    pub protocol: Protocol,
    pub frontends: Vec<Frontend>,
    pub backends: Vec<BackendSpec>,
    /// ClientIP session affinity with this timeout.
    pub affinity: Option<Duration>,
    /// What a new flow gets while no backend is usable.
    #[serde(default)]
    pub when_empty: WhenEmpty,
    /// `loadBalancerSourceRanges`, when the service has them.
    #[serde(default)]
    pub source_ranges: Option<SourceRanges>,
    /// Direct server return to endpoints on other nodes (IPv4): their node's data path
    /// answers the client straight from the frontend, and the endpoint sees the client's
    /// address. Off: such flows are source-NATed. Every node must program the service.
    #[serde(default)]
    pub dsr: bool,
}

impl ServiceSpec {
    /// The family the spec says: that of its first address frontend, else of its first
    /// backend; `None` when it has neither (see the type's docs for what applies then).
    pub fn family(&self) -> Option<AddressFamily> {
        AddressFamily::of_service(&self.frontends, self.backends.iter().map(|b| &b.addr))
    }
}

/// The backends that get new flows: the ready ones, or, when none is ready, the serving
/// and terminating ones (Kubernetes' terminating-endpoint fallback).
pub fn eligible(backends: &[BackendSpec]) -> Vec<SocketAddr> {
    let pick = |s: EndpointState| -> Vec<SocketAddr> {
        backends
            .iter()
            .filter(|b| b.state == s)
            .map(|b| b.addr)
            .collect()
    };
    let ready = pick(EndpointState::Ready);
    if ready.is_empty() {
        pick(EndpointState::ServingTerminating)
    } else {
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_service_family_is_the_first_address_frontend_else_the_first_backend() {
        let v4: SocketAddr = "203.0.113.10:80".parse().unwrap();
        let v6: SocketAddr = "[2001:db8:203::10]:80".parse().unwrap();
        let b6: SocketAddr = "[2001:db8:100::2]:8080".parse().unwrap();
        let spec = |frontends: Vec<Frontend>, backends: Vec<SocketAddr>| ServiceSpec {
            name: "s".into(),
            protocol: Protocol::Tcp,
            frontends,
            backends: backends.into_iter().map(BackendSpec::ready).collect(),
            ..Default::default()
        };
        let np = Frontend::NodePort(30080);
        assert_eq!(
            spec(vec![np, Frontend::Address(v6)], vec![]).family(),
            Some(AddressFamily::Ipv6)
        );
        assert_eq!(
            spec(vec![Frontend::Address(v4), Frontend::Address(v6)], vec![b6]).family(),
            Some(AddressFamily::Ipv4),
            "the first address frontend decides (validation rejects the mix)"
        );
        assert_eq!(spec(vec![np], vec![b6]).family(), Some(AddressFamily::Ipv6));
        assert_eq!(spec(vec![np], vec![]).family(), None);
        assert_eq!(AddressFamily::Ipv6.to_string(), "IPv6");
    }
}

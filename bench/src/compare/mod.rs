//! The side-by-side benchmark (`compare-bench`, `cargo xtask bench compare`): one lab (a
//! client, a node and a pod, `lab::Lab`), the same services and endpoints programmed into the
//! node in each [`Way`], measured alike ([`pps`], [`http`]) and reported with ratios
//! ([`report`]).
//!
//! The services: one measured Kubernetes Service `bench/web` whose endpoint is the lab's pod,
//! with a UDP NodePort [`UDP_NODE_PORT`] (target port [`UDP_TARGET_PORT`], where the pod's
//! sink counts) and a TCP NodePort [`TCP_NODE_PORT`] (target port [`http::HTTP_PORT`], the
//! pod's `lab-server`), both with `externalTrafficPolicy: Local` (no masquerade, as sluice
//! does for a local endpoint), plus `n - 1` ClusterIP services of `endpoints` endpoints each
//! ([`crate::kube_proxy::synthetic`]).

pub mod conntrack;
pub mod http;
pub mod pps;
pub mod report;
pub mod ways;

use std::fmt;
use std::net::Ipv4Addr;

use serde::Serialize;

use crate::kube_proxy::{self, Service};

/// The measured service's UDP NodePort.
pub const UDP_NODE_PORT: u16 = 30090;
/// ...its target port, where the pod's sink counts.
pub const UDP_TARGET_PORT: u16 = 9000;
/// The measured service's TCP NodePort (HTTP to the pod's `lab-server`).
pub const TCP_NODE_PORT: u16 = 30080;
/// The measured service's cluster IP (the first address after the synthetic ones' range).
const MEASURED_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 255, 254);

/// How the node translates traffic to the services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Way {
    /// sluice's XDP program on the node's uplink (DNAT, redirect to the pod's veth).
    Sluice,
    /// kube-proxy's iptables mode rule shape, loaded with `iptables-restore` (nf_tables
    /// backend), the node forwarding with its kernel stack.
    Iptables,
    /// kube-proxy's nftables mode rule shape, loaded with `nft -f`.
    Nftables,
    /// No translation: the client sends to the pod's own address and port; the node only
    /// forwards (no rules, no conntrack). The lab's limit.
    Untranslated,
}

impl Way {
    pub const ALL: [Way; 4] = [Way::Sluice, Way::Iptables, Way::Nftables, Way::Untranslated];
}

impl fmt::Display for Way {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Way::Sluice => "sluice",
            Way::Iptables => "iptables",
            Way::Nftables => "nftables",
            Way::Untranslated => "untranslated",
        })
    }
}

/// The `n` services (at least the measured one) with `endpoints` endpoints per synthetic
/// service; `pod` is the measured service's endpoint.
pub fn services(n: usize, endpoints: usize, pod: Ipv4Addr) -> Vec<Service> {
    let measured = |port_name: &str, protocol, port, node_port, target_port| Service {
        namespace: "bench".into(),
        name: "web".into(),
        port_name: port_name.into(),
        protocol,
        cluster_ip: MEASURED_CLUSTER_IP,
        port,
        node_port: Some(node_port),
        target_port,
        endpoints: vec![pod],
        external_traffic_policy_local: true,
    };
    let mut all = vec![
        measured(
            "udp",
            kube_proxy::Protocol::Udp,
            9000,
            UDP_NODE_PORT,
            UDP_TARGET_PORT,
        ),
        measured(
            "http",
            kube_proxy::Protocol::Tcp,
            80,
            TCP_NODE_PORT,
            http::HTTP_PORT,
        ),
    ];
    all.extend(kube_proxy::synthetic(n.saturating_sub(1), endpoints));
    all
}

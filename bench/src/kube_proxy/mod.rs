//! kube-proxy's rule sets as text, to compare sluice with kube-proxy on the same state
//! (DESIGN.md, "Measuring performance"): what kube-proxy's iptables mode hands to
//! `iptables-restore` and what its nftables mode hands to `nft -f`, for a list of
//! [`Service`]s, on a first (full) sync and on a partial sync after some services' endpoints
//! changed. The shapes follow kube-proxy's `pkg/proxy/iptables/proxier.go` and
//! `pkg/proxy/nftables/proxier.go` (v1.33): chain names, rule order, comments, the
//! large-cluster mode, what a partial sync rewrites and how stale chains go away.
//!
//! - [`names`]: the chain names, hashed as kube-proxy hashes them;
//! - [`iptables`]: `iptables-restore` input ([`iptables::full`], [`iptables::partial`]) and
//!   [`iptables::apply`] with the nf_tables or the legacy backend;
//! - [`nftables`]: `nft -f` input for `table ip kube-proxy` ([`nftables::full`],
//!   [`nftables::partial`]) and [`nftables::apply`];
//! - [`synthetic`]: N ClusterIP services with deterministic addresses that are never sent to.
//!
//! Everything is IPv4 with `nodePortAddresses` unset (node ports on every local address), as
//! kube-proxy runs by default. Endpoints are all ready; with `externalTrafficPolicy: Local`
//! every endpoint counts as local to this node.

pub mod iptables;
pub mod names;
pub mod nftables;

mod process;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

pub use process::{Error, RunOptions};

/// A Service port as kube-proxy sees it (one `ServicePortName` and its endpoints).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    /// The port's name (`spec.ports[].name`); may be empty for a single-port service.
    pub port_name: String,
    pub protocol: Protocol,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    /// `nodePort`, for a NodePort (or LoadBalancer) service.
    pub node_port: Option<u16>,
    pub target_port: u16,
    /// Ready endpoints, in the order kube-proxy writes them.
    pub endpoints: Vec<Ipv4Addr>,
    /// `externalTrafficPolicy: Local` (node ports keep the client address and use only local
    /// endpoints; here every endpoint counts as local).
    pub external_traffic_policy_local: bool,
}

/// The L4 protocol of a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// Lower case, as kube-proxy uses it in hashes, iptables matches and nft expressions.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl Service {
    /// `ServicePortName.String()`: `namespace/name`, then `:port-name` if the port is named.
    pub fn port_name_string(&self) -> String {
        if self.port_name.is_empty() {
            format!("{}/{}", self.namespace, self.name)
        } else {
            format!("{}/{}:{}", self.namespace, self.name, self.port_name)
        }
    }

    /// The endpoint addresses with the target port.
    pub fn endpoint_addrs(&self) -> impl Iterator<Item = SocketAddrV4> + '_ {
        self.endpoints
            .iter()
            .map(|&ip| SocketAddrV4::new(ip, self.target_port))
    }
}

/// A service whose endpoints changed since the previous sync: its index in the service list
/// (which holds the new endpoints) and the endpoints it no longer has (their chains are stale).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointChange {
    pub service: usize,
    pub removed: Vec<Ipv4Addr>,
}

/// kube-proxy's settings that change the rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `--cluster-cidr` for the local-traffic detector: traffic to a cluster IP from outside
    /// it is marked for masquerade (`None`: no detector, as without a cluster CIDR).
    pub cluster_cidr: Option<(Ipv4Addr, u8)>,
    /// The service CIDR (nftables mode drops traffic to unallocated cluster IPs in it).
    pub service_cidr: Option<(Ipv4Addr, u8)>,
    /// `--iptables-masquerade-bit` (default 14: mark 0x4000).
    pub masquerade_bit: u8,
}

impl Default for Config {
    /// The lab's pods (198.51.100.0/24) as the cluster CIDR, [`synthetic`]'s range as the
    /// service CIDR, mark bit 14.
    fn default() -> Self {
        Config {
            cluster_cidr: Some((Ipv4Addr::new(198, 51, 100, 0), 24)),
            service_cidr: Some(SERVICE_CIDR),
            masquerade_bit: 14,
        }
    }
}

impl Config {
    /// The masquerade mark, e.g. `0x4000`.
    pub fn mark(&self) -> String {
        format!("{:#x}", 1u32 << self.masquerade_bit)
    }

    fn cidr(&self) -> Option<String> {
        self.cluster_cidr.map(|(a, p)| format!("{a}/{p}"))
    }
}

/// Where [`synthetic`] puts cluster IPs: 198.18.0.0/15 (RFC 2544, benchmarking).
pub const SERVICE_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 0, 0), 15);

/// The namespace of [`synthetic`]'s services.
pub const SYNTHETIC_NAMESPACE: &str = "bench";

/// Most services [`synthetic`] makes (cluster IPs in 198.18.0.0/16).
pub const MAX_SYNTHETIC: usize = 65_534;

/// `n` ClusterIP services `bench/svc-00000..` (TCP port `http` 80 -> 8080), each with
/// `endpoints_per_service` endpoints.
///
/// Service i has cluster IP 198.18.0.0 + 1 + i; its endpoint j is 198.19.0.0 + 1 +
/// ((i * endpoints_per_service + j) mod 65534): distinct within a service, reused across
/// services when there are more than 65 534 in all. Nothing answers on these addresses: they
/// are only loaded as rules.
///
/// # Panics
/// If `n` exceeds [`MAX_SYNTHETIC`] or `endpoints_per_service` exceeds 65 534.
pub fn synthetic(n: usize, endpoints_per_service: usize) -> Vec<Service> {
    assert!(
        n <= MAX_SYNTHETIC,
        "at most {MAX_SYNTHETIC} synthetic services"
    );
    assert!(
        endpoints_per_service <= 65_534,
        "at most 65 534 endpoints per service"
    );
    (0..n)
        .map(|i| Service {
            namespace: SYNTHETIC_NAMESPACE.to_owned(),
            name: format!("svc-{i:05}"),
            port_name: "http".to_owned(),
            protocol: Protocol::Tcp,
            cluster_ip: offset(Ipv4Addr::new(198, 18, 0, 0), 1 + i),
            port: 80,
            node_port: None,
            target_port: 8080,
            endpoints: (0..endpoints_per_service)
                .map(|j| synthetic_endpoint(i * endpoints_per_service + j))
                .collect(),
            external_traffic_policy_local: false,
        })
        .collect()
}

/// The k-th address of [`synthetic`]'s endpoint range (198.19.0.1 ..= 198.19.255.254,
/// wrapping), e.g. for a replacement endpoint.
pub fn synthetic_endpoint(k: usize) -> Ipv4Addr {
    offset(Ipv4Addr::new(198, 19, 0, 0), 1 + k % 65_534)
}

fn offset(base: Ipv4Addr, by: usize) -> Ipv4Addr {
    let by = u32::try_from(by).expect("offset within the address range");
    Ipv4Addr::from(u32::from(base) + by)
}

/// kube-proxy's large-cluster mode: more than 1 000 endpoints in all. It then leaves the
/// per-endpoint comments out and deletes stale iptables chains only once per sync period.
pub fn large_cluster(services: &[Service]) -> bool {
    services.iter().map(|s| s.endpoints.len()).sum::<usize>() > LARGE_CLUSTER_ENDPOINTS
}

/// kube-proxy's `largeClusterEndpointsThreshold`.
pub const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

/// The default deadline of one apply (a full 10 000-service restore with the legacy backend
/// takes seconds; this only bounds a hung tool).
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(600);

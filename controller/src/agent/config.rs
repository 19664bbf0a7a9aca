//! The agent's configuration file (YAML), every field optional; flags override it.

use std::{net::SocketAddr, path::PathBuf};

use lb_datapath::{DataplaneConfig, PinConfig};
use serde::Deserialize;

use crate::{
    agent::seed::SeedPlan,
    ipam::IpamConfig,
    protections::{PortRange, ProcSockets, Protections},
};

macro_rules! invalid {
    ($($arg:tt)*) => {
        return Err(ConfigError::Invalid(format!($($arg)*)))
    };
}

/// A configuration the agent cannot run with; the text names the setting and what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Invalid(String),
    /// A file or directory the configuration names cannot be read or created.
    #[error("{what}: {cause}")]
    Unreadable { what: String, cause: std::io::Error },
    #[error(transparent)]
    PeerService(#[from] crate::peers::InvalidPeerService),
    #[error(transparent)]
    Ipam(#[from] crate::ipam::config::InvalidIpam),
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "snake_case")]
pub struct AgentConfig {
    /// External interfaces to attach the load balancer to (NodePort on their addresses).
    pub interfaces: Vec<String>,
    /// Devices the XDP program may redirect translated frames to (NICs, or veths whose peer
    /// runs XDP). Not needed by interfaces in TC mode (`dataplane.ingress_mode`, `--mode`):
    /// the TC classifier redirects to any device.
    pub redirect_interfaces: Vec<String>,
    /// Directory of Kubernetes YAML (Service, EndpointSlice, Deployment, ...), watched.
    pub manifests: Option<PathBuf>,
    /// Kubernetes mode: watch the API server described by this kubeconfig file.
    pub kubeconfig: Option<PathBuf>,
    /// Kubernetes mode with the in-cluster configuration (service account); on by itself
    /// when `KUBERNETES_SERVICE_HOST` is set and no kubeconfig is given.
    pub in_cluster: bool,
    /// This node's name (its Node object); default: `NODE_NAME`, else the host name.
    pub node_name: Option<String>,
    /// The HTTP API (127.0.0.1 by default: it changes what the node forwards).
    pub api_listen: SocketAddr,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub metrics_listen: SocketAddr,
    /// File holding the bearer token API writes must carry; without it the API is read-only.
    pub token_file: Option<PathBuf>,
    /// Full resync period: a cheap safety net (desired state re-derived from the tables and
    /// compared with what was applied; only differences are written).
    pub resync_seconds: u64,
    /// `/healthz` answers 503 when a change has waited longer than this to be applied.
    pub healthz_max_age_seconds: u64,
    /// Manifest directory poll period, in milliseconds.
    pub poll_millis: u64,
    /// Where objects written through the API are kept across restarts.
    pub state_dir: PathBuf,
    /// Export per-backend traffic series on `/metrics` (3 a backend; off by default: at
    /// 10 000 services of 10 endpoints that is 300 000 series per node).
    pub per_backend_metrics: bool,
    /// The headless Service (`namespace/name`) whose ready endpoints are the agents of the
    /// DaemonSet, at its port named `api`: `drain-wait --all-nodes` asks each of them.
    /// `null` turns peer discovery off.
    pub peer_service: Option<String>,
    /// The NodePorts a service may take (`FIRST-LAST`, Kubernetes' default 30000-32767);
    /// `--node-port-range` overrides it. Never one of the agent's own ports or a port a
    /// socket of the node listens on.
    pub node_port_range: PortRange,
    /// LoadBalancer IP assignment (Kubernetes mode; off unless `ipam.pools` is set).
    pub ipam: IpamConfig,
    /// Flows to endpoints on other nodes go by direct server return for every IPv4 service
    /// without a `sluice.io/dsr` annotation (off: they are source-NATed). See README,
    /// "Several nodes", for what DSR needs from the network.
    pub dsr: bool,
    pub dataplane: DataplaneConfig,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            interfaces: Vec::new(),
            redirect_interfaces: Vec::new(),
            manifests: None,
            kubeconfig: None,
            in_cluster: false,
            node_name: None,
            api_listen: "127.0.0.1:10260".parse().expect("address"),
            metrics_listen: "127.0.0.1:10249".parse().expect("address"),
            token_file: None,
            resync_seconds: 300,
            healthz_max_age_seconds: 60,
            poll_millis: 500,
            state_dir: PathBuf::from("/var/lib/sluice"),
            per_backend_metrics: false,
            peer_service: Some(format!(
                "{}/{}",
                crate::peers::DEFAULT_NAMESPACE,
                crate::peers::DEFAULT_NAME
            )),
            node_port_range: PortRange::default(),
            dsr: false,
            ipam: IpamConfig::default(),
            dataplane: DataplaneConfig {
                pin: Some(PinConfig::default()),
                ..Default::default()
            },
        }
    }
}

impl AgentConfig {
    /// Whether objects come from a Kubernetes API server.
    pub fn kubernetes(&self) -> bool {
        self.kubeconfig.is_some() || self.in_cluster
    }

    /// The node name: configured, else `NODE_NAME`, else the host name.
    pub fn node_name(&self) -> String {
        self.node_name
            .clone()
            .or_else(|| std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()))
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|h| h.trim().to_string())
            })
            .unwrap_or_default()
    }

    /// What services may not take on this node; `interface_addresses`: the attached
    /// interfaces' (the data path's NodePort addresses).
    pub fn protections(
        &self,
        interface_addresses: impl IntoIterator<Item = std::net::IpAddr>,
    ) -> Protections {
        Protections {
            node_port_range: self.node_port_range,
            agent_ports: [self.api_listen.port(), self.metrics_listen.port()]
                .into_iter()
                .collect(),
            interface_addresses: interface_addresses.into_iter().collect(),
            node_name: Some(self.node_name()).filter(|n| !n.is_empty()),
            dsr_by_default: self.dsr,
            sockets: Some(std::sync::Arc::new(ProcSockets::default())),
        }
    }

    /// How the hash seed is chosen (see [`crate::agent::seed`]).
    pub fn seed_plan(&self) -> SeedPlan {
        let state_dir = self.state_dir.clone();
        match self.dataplane.hash_seed {
            Some(s) => SeedPlan::Fixed(s),
            None if self.kubernetes() => SeedPlan::Cluster { state_dir },
            None => SeedPlan::Standalone { state_dir },
        }
    }

    /// Checks everything that can be checked before touching the node. Returns the API
    /// token, if any.
    pub fn validate(&self) -> Result<Option<String>, ConfigError> {
        if self.interfaces.is_empty() {
            invalid!(
                "no interface to attach to: pass --interface IFNAME (or `interfaces:` in the config file)"
            );
        }
        if let Some(d) = &self.manifests {
            std::fs::read_dir(d).map_err(|cause| ConfigError::Unreadable {
                what: format!("manifest directory {}", d.display()),
                cause,
            })?;
        }
        if self.kubernetes() && self.manifests.is_some() {
            invalid!(
                "--manifests and Kubernetes mode (--kubeconfig / in-cluster) exclude each other: \
                 in Kubernetes mode every object comes from the API server"
            );
        }
        if let Some(k) = &self.kubeconfig {
            std::fs::metadata(k).map_err(|cause| ConfigError::Unreadable {
                what: format!("kubeconfig {}", k.display()),
                cause,
            })?;
        }
        if self.kubernetes() && self.node_name().is_empty() {
            invalid!("Kubernetes mode needs this node's name: pass --node-name or set NODE_NAME");
        }
        let nat = self.dataplane.nat;
        let np = self.node_port_range;
        if nat.port_min <= np.last && np.first <= nat.port_max {
            invalid!(
                "dataplane.nat ports {}-{} overlap node_port_range {}-{}: a reply to a \
                 source-NATed flow would be taken for a NodePort; move one of them",
                nat.port_min,
                nat.port_max,
                np.first,
                np.last
            );
        }
        if let Some(p) = &self.peer_service {
            crate::peers::parse_service(p)?;
        }
        if self.ipam.validate()?.is_some() && !self.kubernetes() {
            invalid!(
                "ipam assigns LoadBalancer IPs through the Kubernetes API: it needs Kubernetes mode (--kubeconfig or in-cluster)"
            );
        }
        std::fs::create_dir_all(&self.state_dir).map_err(|cause| ConfigError::Unreadable {
            what: format!("state directory {}", self.state_dir.display()),
            cause,
        })?;
        if self.resync_seconds == 0 || self.poll_millis == 0 || self.healthz_max_age_seconds == 0 {
            invalid!("resync_seconds, poll_millis and healthz_max_age_seconds must be > 0");
        }
        match &self.token_file {
            None => Ok(None),
            Some(p) => {
                let t = std::fs::read_to_string(p).map_err(|cause| ConfigError::Unreadable {
                    what: format!("token file {}", p.display()),
                    cause,
                })?;
                let t = t.trim().to_string();
                if t.len() < 16 {
                    invalid!(
                        "token file {}: the token must be at least 16 characters",
                        p.display()
                    );
                }
                Ok(Some(t))
            }
        }
    }
}

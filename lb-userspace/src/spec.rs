//! What callers ask the data path for: one L4 service (one port, one protocol) with its
//! frontends and backends. A Kubernetes Service with several ports is several of these.

use std::{fmt, net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub(crate) fn number(self) -> u8 {
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
    /// This port on every address of every attached interface.
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
}

impl BackendSpec {
    pub fn ready(addr: SocketAddr) -> Self {
        BackendSpec {
            addr,
            state: EndpointState::Ready,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Unique name, e.g. `default/web:http/TCP`.
    pub name: String,
    pub protocol: Protocol,
    pub frontends: Vec<Frontend>,
    pub backends: Vec<BackendSpec>,
    /// ClientIP session affinity with this timeout.
    pub affinity: Option<Duration>,
}

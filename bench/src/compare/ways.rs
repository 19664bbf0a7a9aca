//! Programming the node in each [`Way`]: what a cell's lab gets before it is measured, and
//! the guard that keeps it programmed.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use lab::Lab;
use lab::{Result, error::Context as _};
use lb_userspace::{
    BackendSpec, Dataplane, DataplaneConfig, Frontend, IngressMode, PassProgram, Protocol,
    ServiceSpec,
};

use super::Way;
use crate::kube_proxy::{self, Config, Service, iptables, nftables};

/// What keeps the node programmed until it is dropped (before the lab; both programs are
/// held by link descriptors, so dropping works from any namespace).
#[derive(Debug)]
pub enum Programmed {
    /// The data path (its drop detaches it).
    Sluice(Box<Dataplane>),
    /// A pass XDP program on the uplink, so the node's veth runs NAPI for the generator's
    /// XDP frames (the rules live in the namespace and go with it).
    Kernel(PassProgram),
}

/// Programs `services` into the lab's node in `way`; returns the guard and the wall time
/// the programming took (loading the rules, or writing the data path's maps).
pub fn program(lab: &Lab, way: Way, services: &[Service]) -> Result<(Programmed, Duration)> {
    let uplink = lab.node_uplink();
    let pod_link = lab.node_pod_link(0);
    lab.node().enter(|| -> Result<(Programmed, Duration)> {
        match way {
            Way::Sluice => {
                let mut dp = Dataplane::load(DataplaneConfig {
                    ingress_mode: IngressMode::Xdp,
                    ..DataplaneConfig::default()
                })
                .context("loading the data path")?;
                dp.attach(uplink)
                    .with_context(|| format!("attaching to {uplink}"))?;
                dp.allow_redirect(&pod_link)
                    .with_context(|| format!("allowing redirects to {pod_link}"))?;
                let start = Instant::now();
                for s in services {
                    dp.upsert_service(&sluice_spec(s))
                        .with_context(|| format!("programming {}/{}", s.namespace, s.name))?;
                }
                Ok((Programmed::Sluice(Box::new(dp)), start.elapsed()))
            }
            Way::Iptables | Way::Nftables | Way::Untranslated => {
                let pass = PassProgram::attach(uplink)
                    .with_context(|| format!("attaching the pass program to {uplink}"))?;
                let took = match way {
                    Way::Iptables => iptables::apply(
                        &iptables::full(services, &Config::default()),
                        iptables::Backend::Nft,
                    )
                    .context("applying kube-proxy's iptables rules")?,
                    Way::Nftables => nftables::apply(&nftables::full(services, &Config::default()))
                        .context("applying kube-proxy's nftables rules")?,
                    _ => Duration::ZERO,
                };
                Ok((Programmed::Kernel(pass), took))
            }
        }
    })?
}

/// The service as sluice programs it: its cluster IP and node port as frontends, its
/// endpoints on the target port, ready and local.
fn sluice_spec(s: &Service) -> ServiceSpec {
    let protocol = match s.protocol {
        kube_proxy::Protocol::Tcp => Protocol::Tcp,
        kube_proxy::Protocol::Udp => Protocol::Udp,
    };
    let mut frontends = vec![Frontend::Address(SocketAddr::new(
        IpAddr::V4(s.cluster_ip),
        s.port,
    ))];
    frontends.extend(s.node_port.map(Frontend::NodePort));
    ServiceSpec {
        name: format!("{}/{}:{}/{protocol}", s.namespace, s.name, s.port_name),
        protocol,
        frontends,
        backends: s
            .endpoints
            .iter()
            .map(|&ip| BackendSpec::ready(SocketAddr::new(IpAddr::V4(ip), s.target_port)))
            .collect(),
        ..Default::default()
    }
}

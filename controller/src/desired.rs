//! The desired data-path state of one service: what the model says each of its ports should
//! look like, as `lb_datapath::ServiceSpec`s (one per service port, protocol and address
//! family). Pure, and computed per service: a change costs the specs of the services it
//! touches, never those of every service.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
};

use lb_datapath::{BackendSpec, EndpointState, Frontend, ServiceSpec};

use crate::{
    model::{Key, ServiceModel, ServiceType, SliceModel},
    tables::Tables,
};

/// Probe verdicts that override `ready` for endpoints of slices that declare a probe:
/// (slice, address) -> passing. An endpoint not probed yet is not ready.
pub type ProbeResults = HashMap<(Key, IpAddr), bool>;

/// The specs of one service, by name.
pub type Specs = BTreeMap<String, ServiceSpec>;

/// The data-path name of one service port: `<ns>/<name>:<port name or number>/<PROTO>`,
/// with `/v6` for the IPv6 family.
pub fn spec_name(
    svc: &Key,
    port_name: &str,
    port: u16,
    proto: lb_datapath::Protocol,
    v6: bool,
) -> String {
    let p = if port_name.is_empty() {
        port.to_string()
    } else {
        port_name.to_string()
    };
    format!("{svc}:{p}/{proto}{}", if v6 { "/v6" } else { "" })
}

fn rank(s: EndpointState) -> u8 {
    match s {
        EndpointState::Ready => 2,
        EndpointState::ServingTerminating => 1,
        EndpointState::NotServing => 0,
    }
}

/// The desired specs of the service `key` as the tables hold it (none when it is gone).
pub fn of_service(tables: &Tables, key: &Key, probes: &ProbeResults) -> Specs {
    match tables.service(key) {
        Some(svc) => service_specs(svc, tables.slices_of(key), probes),
        None => Specs::new(),
    }
}

/// The desired specs of one service from its slices. Endpoints listed by several slices
/// are merged, the best condition winning (ready over serving-terminating over not serving).
pub fn service_specs<'a>(
    svc: &ServiceModel,
    slices: impl Iterator<Item = &'a SliceModel>,
    probes: &ProbeResults,
) -> Specs {
    let slices: Vec<&SliceModel> = slices.collect();
    let mut out = Specs::new();
    for v6 in [false, true] {
        let family = |a: &IpAddr| a.is_ipv6() == v6;
        for p in &svc.ports {
            let mut frontends = Vec::new();
            if svc.type_ != ServiceType::ClusterIP
                && let Some(np) = p.node_port
            {
                frontends.push(Frontend::NodePort(np));
            }
            for a in svc
                .cluster_ips
                .iter()
                .chain(&svc.external_ips)
                .chain(&svc.load_balancer_ips)
                .filter(|a| family(a))
            {
                let f = Frontend::Address(SocketAddr::new(*a, p.port));
                if !frontends.contains(&f) {
                    frontends.push(f);
                }
            }
            let mut backends: BTreeMap<SocketAddr, EndpointState> = BTreeMap::new();
            for slice in slices.iter().filter(|s| s.ipv6 == v6) {
                let Some(target) = slice.port(&p.name, p.protocol) else {
                    continue;
                };
                for e in &slice.endpoints {
                    let probed = slice.probe.is_none()
                        || probes
                            .get(&(slice.key.clone(), e.addr))
                            .copied()
                            .unwrap_or(false);
                    let ready = (e.ready || svc.publish_not_ready) && probed;
                    let state = if ready && !e.terminating {
                        EndpointState::Ready
                    } else if e.serving && e.terminating {
                        EndpointState::ServingTerminating
                    } else {
                        EndpointState::NotServing
                    };
                    let addr = SocketAddr::new(e.addr, target);
                    let best = backends
                        .get(&addr)
                        .is_none_or(|old| rank(state) > rank(*old));
                    if best {
                        backends.insert(addr, state);
                    }
                }
            }
            // A NodePort serves both families; without backends of a family there is
            // nothing to serve in it (the IPv4 entry still refuses).
            let has_addresses = frontends.iter().any(|f| matches!(f, Frontend::Address(_)));
            if frontends.is_empty() || (v6 && backends.is_empty() && !has_addresses) {
                continue;
            }
            let name = spec_name(&svc.key, &p.name, p.port, p.protocol, v6);
            out.insert(
                name.clone(),
                ServiceSpec {
                    name,
                    protocol: p.protocol,
                    frontends,
                    backends: backends
                        .into_iter()
                        .map(|(addr, state)| BackendSpec {
                            addr,
                            state,
                            remote: false,
                        })
                        .collect(),
                    affinity: svc.affinity,
                    ..Default::default()
                },
            );
        }
    }
    out
}

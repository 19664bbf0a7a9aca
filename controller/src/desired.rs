//! The desired data-path state of one service: what the model says each of its ports should
//! look like, as `lb_datapath::ServiceSpec`s (one per service port, protocol and address
//! family, and two when the traffic policies of its external and internal frontends differ).
//! Pure, and computed per service: a change costs the specs of the services it touches,
//! never those of every service.
//!
//! Traffic policies, as kube-proxy applies them:
//! - an endpoint is local when its slice names no `nodeName`, or this node's; otherwise it
//!   is remote and the data path source-NATs new flows to it (replies come back here);
//! - the external frontends (NodePort, externalIPs, LoadBalancer IPs) use every endpoint
//!   under `externalTrafficPolicy: Cluster`, and only the local ones under `Local`; the
//!   cluster IPs likewise under `internalTrafficPolicy`. A `Local` set keeps the
//!   ready / serving-terminating fallback among the local endpoints (the data path applies it
//!   to each spec's backends), and drops new flows while it has no usable endpoint although
//!   the service has some elsewhere ([`WhenEmpty::Drop`]); a service without any usable
//!   endpoint refuses, whatever its policy;
//! - when the two policies differ, a service port is two specs: the cluster IPs under the
//!   usual name and the external frontends under that name with [`EXTERNAL_SUFFIX`];
//! - `loadBalancerSourceRanges` filter the LoadBalancer IPs only, per family: the ranges of a
//!   family go to that family's spec, and a family without a range of its own is not
//!   filtered.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
};

use lb_datapath::{BackendSpec, EndpointState, Frontend, ServiceSpec, SourceRanges, WhenEmpty};

use crate::{
    model::{EndpointModel, Key, ServiceModel, ServiceType, SliceModel},
    tables::Tables,
};

/// Probe verdicts that override `ready` for endpoints of slices that declare a probe:
/// (slice, address) -> passing. An endpoint not probed yet is not ready.
pub type ProbeResults = HashMap<(Key, IpAddr), bool>;

/// The specs of one service, by name.
pub type Specs = BTreeMap<String, ServiceSpec>;

/// Appended to a spec name for the external frontends of a service port whose external
/// and internal traffic policies differ.
pub const EXTERNAL_SUFFIX: &str = "/external";

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

/// Whether an endpoint runs on this node (`node`: this node's name; unknown, every endpoint
/// is local): it names no node, or this one.
pub fn is_local(e: &EndpointModel, node: Option<&str>) -> bool {
    match (e.node_name.as_deref(), node) {
        (Some(theirs), Some(ours)) => theirs == ours,
        _ => true,
    }
}

/// An endpoint's data-path state: ready (as listed, or by `publishNotReadyAddresses`, and
/// passing its probe if its slice declares one) and not terminating; serving and
/// terminating; or not serving.
fn state_of(
    svc: &ServiceModel,
    slice: &SliceModel,
    e: &EndpointModel,
    probes: &ProbeResults,
) -> EndpointState {
    let probed = slice.probe.is_none()
        || probes
            .get(&(slice.key.clone(), e.addr))
            .copied()
            .unwrap_or(false);
    let ready = (e.ready || svc.publish_not_ready) && probed;
    if ready && !e.terminating {
        EndpointState::Ready
    } else if e.serving && e.terminating {
        EndpointState::ServingTerminating
    } else {
        EndpointState::NotServing
    }
}

/// The desired specs of the service `key` as the tables hold it (none when it is gone), on
/// the tables' node ([`Tables::node_name`]).
pub fn of_service(tables: &Tables, key: &Key, probes: &ProbeResults) -> Specs {
    match tables.service(key) {
        Some(svc) => {
            let mut specs = service_specs(svc, tables.slices_of(key), probes, tables.node_name());
            apply_dsr(&mut specs, svc, tables.protections().dsr_by_default);
            specs
        }
        None => Specs::new(),
    }
}

/// What the health-check node port of the service `key` should answer: its port and the
/// number of its ready local endpoints; `None` when it has no health-check node port.
pub fn health_check(tables: &Tables, key: &Key, probes: &ProbeResults) -> Option<(u16, usize)> {
    let svc = tables.service(key)?;
    let port = svc.health_check_node_port?;
    Some((
        port,
        local_ready_endpoints(svc, tables.slices_of(key), probes, tables.node_name()),
    ))
}

/// kube-proxy's count for the health-check node port: the distinct addresses of the
/// service's ready (not terminating) local endpoints, of its primary family (that of its
/// first cluster IP; IPv4 without one), whatever port they serve.
pub fn local_ready_endpoints<'a>(
    svc: &ServiceModel,
    slices: impl Iterator<Item = &'a SliceModel>,
    probes: &ProbeResults,
    node: Option<&str>,
) -> usize {
    let v6 = svc.cluster_ips.first().is_some_and(IpAddr::is_ipv6);
    let mut ready = BTreeSet::new();
    for slice in slices.filter(|s| s.ipv6 == v6) {
        for e in &slice.endpoints {
            if is_local(e, node) && state_of(svc, slice, e, probes) == EndpointState::Ready {
                ready.insert(e.addr);
            }
        }
    }
    ready.len()
}

/// One endpoint of a service port: its best state over the slices listing it, and whether
/// it runs on this node.
#[derive(Clone, Copy)]
struct Endpoint {
    state: EndpointState,
    local: bool,
}

/// The endpoints a set of frontends uses: every endpoint (`local_only` false), or only this
/// node's.
fn backends(endpoints: &BTreeMap<SocketAddr, Endpoint>, local_only: bool) -> Vec<BackendSpec> {
    endpoints
        .iter()
        .filter(|(_, e)| e.local || !local_only)
        .map(|(addr, e)| BackendSpec {
            addr: *addr,
            state: e.state,
            remote: !e.local,
        })
        .collect()
}

/// The desired specs of one service from its slices, on the node `node` (its name; `None`:
/// unknown, every endpoint is local). Endpoints listed by several slices are merged, the
/// best condition winning (ready over serving-terminating over not serving).
/// Direct server return for the IPv4 specs of a service that asks for it (its
/// `sluice.io/dsr` annotation, else the agent's default); the data path's DSR is IPv4 only,
/// so IPv6 specs keep source NAT.
pub fn apply_dsr(specs: &mut Specs, svc: &ServiceModel, by_default: bool) {
    let dsr = svc.dsr.unwrap_or(by_default);
    for spec in specs.values_mut() {
        spec.dsr = dsr && spec.family() != Some(lb_datapath::AddressFamily::Ipv6);
    }
}

pub fn service_specs<'a>(
    svc: &ServiceModel,
    slices: impl Iterator<Item = &'a SliceModel>,
    probes: &ProbeResults,
    node: Option<&str>,
) -> Specs {
    let slices: Vec<&SliceModel> = slices.collect();
    let mut out = Specs::new();
    for v6 in [false, true] {
        let family = |a: &&IpAddr| a.is_ipv6() == v6;
        let allow: Vec<ipnet::IpNet> = svc
            .source_ranges
            .iter()
            .filter(|n| n.addr().is_ipv6() == v6)
            .copied()
            .collect();
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
                .filter(family)
            {
                let f = Frontend::Address(SocketAddr::new(*a, p.port));
                if !frontends.contains(&f) {
                    frontends.push(f);
                }
            }
            let mut endpoints: BTreeMap<SocketAddr, Endpoint> = BTreeMap::new();
            for slice in slices.iter().filter(|s| s.ipv6 == v6) {
                let Some(target) = slice.port(&p.name, p.protocol) else {
                    continue;
                };
                for e in &slice.endpoints {
                    let state = state_of(svc, slice, e, probes);
                    let addr = SocketAddr::new(e.addr, target);
                    let best = endpoints
                        .get(&addr)
                        .is_none_or(|old| rank(state) > rank(old.state));
                    if best {
                        endpoints.insert(
                            addr,
                            Endpoint {
                                state,
                                local: is_local(e, node),
                            },
                        );
                    }
                }
            }
            // kube-proxy's "the service has endpoints": a usable one anywhere. Without it
            // every frontend refuses; with it, a Local set without a usable local endpoint
            // drops.
            let usable = endpoints
                .values()
                .any(|e| e.state != EndpointState::NotServing);
            let when_empty = |local_only: bool| {
                if local_only && usable {
                    WhenEmpty::Drop
                } else {
                    WhenEmpty::Refuse
                }
            };
            let base = spec_name(&svc.key, &p.name, p.port, p.protocol, v6);
            let is_internal = |f: &Frontend| matches!(f, Frontend::Address(a) if svc.cluster_ips.contains(&a.ip()));
            let has_internal = frontends.iter().any(is_internal);
            let has_external = frontends.iter().any(|f| !is_internal(f));
            // (name, frontends, only local endpoints): one spec when every frontend follows
            // the same policy, else the cluster IPs and the external frontends apart.
            let parts = if !has_external {
                vec![(base, frontends, svc.internal_local)]
            } else if !has_internal || svc.internal_local == svc.external_local {
                vec![(base, frontends, svc.external_local)]
            } else {
                let (internal, external) = frontends.into_iter().partition(is_internal);
                let ext = format!("{base}{EXTERNAL_SUFFIX}");
                vec![
                    (base, internal, svc.internal_local),
                    (ext, external, svc.external_local),
                ]
            };
            for (name, frontends, local_only) in parts {
                let backends = backends(&endpoints, local_only);
                // A NodePort serves both families; without backends of a family there is
                // nothing to serve in it (the IPv4 entry still refuses), and a spec with
                // neither an address nor a backend would be taken for IPv4.
                let has_addresses = frontends.iter().any(|f| matches!(f, Frontend::Address(_)));
                if frontends.is_empty() || (v6 && backends.is_empty() && !has_addresses) {
                    continue;
                }
                // The LoadBalancer IPs among its frontends, filtered by the family's ranges.
                let mut filtered: Vec<SocketAddr> = Vec::new();
                for a in svc.load_balancer_ips.iter().filter(family) {
                    let a = SocketAddr::new(*a, p.port);
                    if frontends.contains(&Frontend::Address(a)) && !filtered.contains(&a) {
                        filtered.push(a);
                    }
                }
                let source_ranges =
                    (!allow.is_empty() && !filtered.is_empty()).then(|| SourceRanges {
                        allow: allow.clone(),
                        frontends: filtered,
                    });
                out.insert(
                    name.clone(),
                    ServiceSpec {
                        name,
                        protocol: p.protocol,
                        frontends,
                        backends,
                        affinity: svc.affinity,
                        when_empty: when_empty(local_only),
                        source_ranges,
                        dsr: false,
                    },
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use lb_datapath::Protocol;

    use super::*;
    use crate::model::PortModel;

    const NODE: Option<&str> = Some("node-a");

    fn svc(type_: ServiceType) -> ServiceModel {
        ServiceModel {
            key: Key::new("default", "web"),
            type_,
            ports: vec![PortModel {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                node_port: (type_ != ServiceType::ClusterIP).then_some(30800),
            }],
            cluster_ips: vec!["10.96.0.30".parse().unwrap()],
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            affinity: None,
            publish_not_ready: false,
            external_local: false,
            internal_local: false,
            source_ranges: Vec::new(),
            health_check_node_port: None,
            dsr: None,
        }
    }

    /// An endpoint: (address, node, ready, serving, terminating).
    type Ep<'a> = (&'a str, Option<&'a str>, bool, bool, bool);

    fn slice(name: &str, endpoints: &[Ep<'_>]) -> SliceModel {
        let ipv6 = endpoints.first().is_some_and(|e| e.0.contains(':'));
        SliceModel {
            key: Key::new("default", name),
            service: Key::new("default", "web"),
            ipv6,
            ports: vec![("http".into(), Protocol::Tcp, 8080)],
            endpoints: endpoints
                .iter()
                .map(|(a, node, ready, serving, terminating)| EndpointModel {
                    addr: a.parse().unwrap(),
                    ready: *ready,
                    serving: *serving,
                    terminating: *terminating,
                    node_name: node.map(Into::into),
                    pod: None,
                })
                .collect(),
            probe: None,
            trigger_time: None,
        }
    }

    const READY: (bool, bool, bool) = (true, true, false);
    const TERMINATING: (bool, bool, bool) = (false, true, true);
    const NOT_SERVING: (bool, bool, bool) = (false, false, false);

    fn ep<'a>(addr: &'a str, node: Option<&'a str>, c: (bool, bool, bool)) -> Ep<'a> {
        (addr, node, c.0, c.1, c.2)
    }

    fn specs(s: &ServiceModel, slices: &[SliceModel], node: Option<&str>) -> Specs {
        service_specs(s, slices.iter(), &ProbeResults::new(), node)
    }

    /// `address state[ remote]` per backend.
    fn backends_of(spec: &ServiceSpec) -> Vec<String> {
        spec.backends
            .iter()
            .map(|b| {
                format!(
                    "{} {:?}{}",
                    b.addr,
                    b.state,
                    if b.remote { " remote" } else { "" }
                )
            })
            .collect()
    }

    fn fronts(spec: &ServiceSpec) -> Vec<String> {
        spec.frontends.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn endpoints_on_other_nodes_are_remote_and_those_without_a_node_local() {
        let slices = [slice(
            "web-1",
            &[
                ep("198.51.100.1", Some("node-a"), READY),
                ep("198.51.100.2", Some("node-b"), READY),
                ep("198.51.100.3", None, READY),
            ],
        )];
        let out = specs(&svc(ServiceType::NodePort), &slices, NODE);
        let spec = &out["default/web:http/TCP"];
        assert_eq!(
            backends_of(spec),
            [
                "198.51.100.1:8080 Ready",
                "198.51.100.2:8080 Ready remote",
                "198.51.100.3:8080 Ready"
            ]
        );
        assert_eq!(spec.when_empty, WhenEmpty::Refuse);
        assert_eq!(spec.source_ranges, None);
        // This node's name unknown: nothing is remote.
        let out = specs(&svc(ServiceType::NodePort), &slices, None);
        assert!(
            out["default/web:http/TCP"]
                .backends
                .iter()
                .all(|b| !b.remote)
        );
    }

    #[test]
    fn external_policy_local_splits_the_external_frontends_onto_local_endpoints() {
        let mut s = svc(ServiceType::LoadBalancer);
        s.external_local = true;
        s.external_ips = vec!["203.0.113.21".parse().unwrap()];
        s.load_balancer_ips = vec!["203.0.113.20".parse().unwrap()];
        let slices = [slice(
            "web-1",
            &[
                ep("198.51.100.1", Some("node-a"), TERMINATING),
                ep("198.51.100.2", Some("node-b"), READY),
                ep("198.51.100.3", Some("node-a"), NOT_SERVING),
            ],
        )];
        let out = specs(&s, &slices, NODE);
        assert_eq!(
            out.keys().collect::<Vec<_>>(),
            ["default/web:http/TCP", "default/web:http/TCP/external"]
        );
        let internal = &out["default/web:http/TCP"];
        assert_eq!(fronts(internal), ["10.96.0.30:80"]);
        assert_eq!(
            backends_of(internal),
            [
                "198.51.100.1:8080 ServingTerminating",
                "198.51.100.2:8080 Ready remote",
                "198.51.100.3:8080 NotServing"
            ]
        );
        assert_eq!(internal.when_empty, WhenEmpty::Refuse);
        let external = &out["default/web:http/TCP/external"];
        assert_eq!(
            fronts(external),
            ["<node>:30800", "203.0.113.21:80", "203.0.113.20:80"]
        );
        // Only local endpoints, none remote: the local terminating one is the fallback
        // although another node has a ready one (kube-proxy's local fallback).
        assert_eq!(
            backends_of(external),
            [
                "198.51.100.1:8080 ServingTerminating",
                "198.51.100.3:8080 NotServing"
            ]
        );
        assert_eq!(
            lb_datapath::eligible(&external.backends),
            ["198.51.100.1:8080".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(external.when_empty, WhenEmpty::Drop);

        // No local endpoint left: the external spec drops, the internal one still serves.
        let slices = [slice("web-1", &[ep("198.51.100.2", Some("node-b"), READY)])];
        let out = specs(&s, &slices, NODE);
        let external = &out["default/web:http/TCP/external"];
        assert!(external.backends.is_empty());
        assert_eq!(external.when_empty, WhenEmpty::Drop);
        // No usable endpoint anywhere: every frontend refuses, as kube-proxy's REJECT.
        let slices = [slice(
            "web-1",
            &[ep("198.51.100.2", Some("node-b"), NOT_SERVING)],
        )];
        let out = specs(&s, &slices, NODE);
        assert_eq!(
            out["default/web:http/TCP/external"].when_empty,
            WhenEmpty::Refuse
        );
        assert_eq!(out["default/web:http/TCP"].when_empty, WhenEmpty::Refuse);
    }

    #[test]
    fn internal_policy_local_keeps_the_cluster_ips_on_local_endpoints() {
        let mut s = svc(ServiceType::NodePort);
        s.internal_local = true;
        let slices = [slice(
            "web-1",
            &[
                ep("198.51.100.1", Some("node-b"), READY),
                ep("198.51.100.2", Some("node-a"), READY),
            ],
        )];
        let out = specs(&s, &slices, NODE);
        let internal = &out["default/web:http/TCP"];
        assert_eq!(fronts(internal), ["10.96.0.30:80"]);
        assert_eq!(backends_of(internal), ["198.51.100.2:8080 Ready"]);
        assert_eq!(internal.when_empty, WhenEmpty::Drop);
        let external = &out["default/web:http/TCP/external"];
        assert_eq!(fronts(external), ["<node>:30800"]);
        assert_eq!(
            backends_of(external),
            ["198.51.100.1:8080 Ready remote", "198.51.100.2:8080 Ready"]
        );
        assert_eq!(external.when_empty, WhenEmpty::Refuse);

        // A ClusterIP service has only internal frontends: one spec, local endpoints.
        let mut s = svc(ServiceType::ClusterIP);
        s.internal_local = true;
        let out = specs(&s, &slices, NODE);
        assert_eq!(out.keys().collect::<Vec<_>>(), ["default/web:http/TCP"]);
        assert_eq!(
            backends_of(&out["default/web:http/TCP"]),
            ["198.51.100.2:8080 Ready"]
        );
    }

    #[test]
    fn equal_policies_keep_one_spec_under_the_usual_name() {
        let slices = [slice(
            "web-1",
            &[
                ep("198.51.100.1", Some("node-b"), READY),
                ep("198.51.100.2", Some("node-a"), READY),
            ],
        )];
        let mut s = svc(ServiceType::LoadBalancer);
        s.load_balancer_ips = vec!["203.0.113.20".parse().unwrap()];
        let cluster = specs(&s, &slices, NODE);
        s.external_local = true;
        s.internal_local = true;
        let local = specs(&s, &slices, NODE);
        for out in [&cluster, &local] {
            assert_eq!(out.keys().collect::<Vec<_>>(), ["default/web:http/TCP"]);
            assert_eq!(
                fronts(&out["default/web:http/TCP"]),
                ["<node>:30800", "10.96.0.30:80", "203.0.113.20:80"]
            );
        }
        assert_eq!(
            backends_of(&local["default/web:http/TCP"]),
            ["198.51.100.2:8080 Ready"]
        );
        assert_eq!(local["default/web:http/TCP"].when_empty, WhenEmpty::Drop);
        assert_eq!(
            cluster["default/web:http/TCP"].when_empty,
            WhenEmpty::Refuse
        );
    }

    #[test]
    fn source_ranges_filter_the_load_balancer_ips_of_their_own_family_only() {
        let mut s = svc(ServiceType::LoadBalancer);
        s.cluster_ips.push("fd00:10:96::30".parse().unwrap());
        s.external_ips = vec!["203.0.113.21".parse().unwrap()];
        s.load_balancer_ips = vec![
            "203.0.113.20".parse().unwrap(),
            "2001:db8:203::20".parse().unwrap(),
        ];
        s.source_ranges = vec!["192.0.2.0/24".parse().unwrap()];
        let slices = [
            slice("web-1", &[ep("198.51.100.1", None, READY)]),
            slice("web-2", &[ep("2001:db8:198::1", None, READY)]),
        ];
        let out = specs(&s, &slices, NODE);
        assert_eq!(
            out["default/web:http/TCP"].source_ranges,
            Some(SourceRanges {
                allow: vec!["192.0.2.0/24".parse().unwrap()],
                frontends: vec!["203.0.113.20:80".parse().unwrap()],
            })
        );
        // No IPv6 range: the IPv6 spec is not filtered (kube-proxy's rules per family).
        assert_eq!(out["default/web:http/TCP/v6"].source_ranges, None);

        s.source_ranges.push("2001:db8:100::/48".parse().unwrap());
        s.external_local = true;
        let out = specs(&s, &slices, NODE);
        assert_eq!(
            out["default/web:http/TCP"].source_ranges, None,
            "no LoadBalancer IP"
        );
        assert_eq!(
            out["default/web:http/TCP/v6/external"].source_ranges,
            Some(SourceRanges {
                allow: vec!["2001:db8:100::/48".parse().unwrap()],
                frontends: vec!["[2001:db8:203::20]:80".parse().unwrap()],
            })
        );
        assert_eq!(
            out["default/web:http/TCP/external"]
                .source_ranges
                .as_ref()
                .map(|r| r.allow.clone()),
            Some(vec!["192.0.2.0/24".parse().unwrap()])
        );
    }

    #[test]
    fn the_longest_name_fits_the_data_path() {
        // Namespace and name are DNS labels (63), a port name an IANA service name (15).
        let key = Key::new("n".repeat(63), "s".repeat(63));
        let longest = format!(
            "{}{EXTERNAL_SUFFIX}",
            spec_name(&key, &"p".repeat(15), 65535, Protocol::Udp, true)
        );
        assert_eq!(longest.len(), 159);
        assert!(longest.len() <= lb_common::SERVICE_NAME_MAX);

        let mut s = svc(ServiceType::NodePort);
        s.key = key;
        s.ports[0].name = "p".repeat(15);
        s.external_local = true;
        let mut sl = slice("web-1", &[ep("198.51.100.1", None, READY)]);
        sl.service = s.key.clone();
        sl.ports[0].0 = "p".repeat(15);
        let out = specs(&s, &[sl], NODE);
        assert!(
            out.keys()
                .any(|n| n.len() == 156 && n.ends_with("/TCP/external"))
        );
        assert!(out.keys().all(|n| n.len() <= lb_common::SERVICE_NAME_MAX));
    }

    #[test]
    fn the_health_check_counts_distinct_ready_local_addresses_of_the_primary_family() {
        let mut s = svc(ServiceType::LoadBalancer);
        s.ports.push(PortModel {
            name: "https".into(),
            protocol: Protocol::Tcp,
            port: 443,
            node_port: Some(30443),
        });
        let mut v4 = slice(
            "web-1",
            &[
                ep("198.51.100.1", Some("node-a"), READY),
                ep("198.51.100.2", Some("node-a"), TERMINATING),
                ep("198.51.100.3", Some("node-b"), READY),
                ep("198.51.100.4", None, READY),
            ],
        );
        v4.ports.push(("https".into(), Protocol::Tcp, 8443));
        // The same address again in another slice counts once.
        let again = slice("web-2", &[ep("198.51.100.1", Some("node-a"), READY)]);
        let v6 = slice("web-3", &[ep("2001:db8:198::1", Some("node-a"), READY)]);
        let slices = [v4, again, v6];
        let count = |node| local_ready_endpoints(&s, slices.iter(), &ProbeResults::new(), node);
        assert_eq!(count(NODE), 2);
        assert_eq!(
            count(Some("node-b")),
            2,
            "198.51.100.3 and the one without a node"
        );
        assert_eq!(count(Some("node-c")), 1);
        s.cluster_ips = vec!["fd00:10:96::30".parse().unwrap()];
        assert_eq!(
            local_ready_endpoints(&s, slices.iter(), &ProbeResults::new(), NODE),
            1
        );
    }

    #[test]
    fn dsr_follows_the_annotation_else_the_default_and_stays_off_for_ipv6() {
        let mut s = svc(ServiceType::NodePort);
        s.cluster_ips.push("2001:db8:96::30".parse().unwrap());
        let dsr_of = |s: &ServiceModel, by_default: bool| -> Vec<(bool, bool)> {
            let mut specs = service_specs(s, std::iter::empty(), &ProbeResults::new(), NODE);
            apply_dsr(&mut specs, s, by_default);
            specs
                .into_values()
                .map(|x| (x.family() == Some(lb_datapath::AddressFamily::Ipv6), x.dsr))
                .collect()
        };
        assert_eq!(dsr_of(&s, false), vec![(false, false), (true, false)]);
        assert_eq!(
            dsr_of(&s, true),
            vec![(false, true), (true, false)],
            "IPv4 only"
        );
        s.dsr = Some(false);
        assert_eq!(
            dsr_of(&s, true),
            vec![(false, false), (true, false)],
            "annotation wins"
        );
        s.dsr = Some(true);
        assert_eq!(dsr_of(&s, false), vec![(false, true), (true, false)]);
    }
}

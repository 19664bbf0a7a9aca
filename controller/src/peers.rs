//! The other agents of the DaemonSet, for the cluster-wide drain handshake
//! (`sluice drain-wait --all-nodes`): the ready endpoints of the agents' headless Service
//! (`deploy/agents-service.yaml`). The agent already watches every EndpointSlice, and a
//! headless Service's slices are kept in the tables although the Service itself is not
//! proxied, so finding the peers costs one lookup and no extra watch. The agents run with
//! host networking, so the addresses are the nodes' addresses.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::{model::Key, tables::Tables};

/// The Service `deploy/agents-service.yaml` creates.
pub const DEFAULT_NAMESPACE: &str = "kube-system";
pub const DEFAULT_NAME: &str = "sluice-agents";
/// The port of the agents' API in the Service; a slice without it offers its first port.
pub const API_PORT_NAME: &str = "api";

/// `kube-system/sluice-agents`.
pub fn default_service() -> Key {
    Key::new(DEFAULT_NAMESPACE, DEFAULT_NAME)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("peer service {text:?}: expected NAMESPACE/NAME (e.g. kube-system/sluice-agents)")]
pub struct InvalidPeerService {
    pub text: String,
}

/// Parses `namespace/name` (the configuration's `peer_service`).
pub fn parse_service(text: &str) -> Result<Key, InvalidPeerService> {
    match text.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(Key::new(ns, name))
        }
        _ => Err(InvalidPeerService { text: text.into() }),
    }
}

/// One agent: its node (the endpoint's `nodeName`) and its API address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub node: Option<String>,
    pub address: SocketAddr,
}

/// `GET /sluice/v1/peers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeersView {
    /// `namespace/name`; `None` when peer discovery is off.
    pub service: Option<String>,
    /// Sorted by address.
    pub peers: Vec<Peer>,
    /// Why the list is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The ready endpoints of `service`'s slices, at the port named [`API_PORT_NAME`] (else the
/// slice's first port), sorted by address, each address once. Pure.
pub fn of_service(tables: &Tables, service: &Key) -> Vec<Peer> {
    let mut peers: Vec<Peer> = tables
        .slices_of(service)
        .flat_map(|s| {
            let port = s
                .ports
                .iter()
                .find(|(name, _, _)| name == API_PORT_NAME)
                .or(s.ports.first())
                .map(|(_, _, port)| *port);
            port.into_iter().flat_map(move |port| {
                s.endpoints.iter().filter(|e| e.ready).map(move |e| Peer {
                    node: e.node_name.clone(),
                    address: SocketAddr::new(e.addr, port),
                })
            })
        })
        .collect();
    peers.sort_by_key(|p| p.address);
    peers.dedup_by_key(|p| p.address);
    peers
}

/// The answer of `GET /sluice/v1/peers`; an empty list says why in `note`.
pub fn view(tables: &Tables, service: Option<&Key>) -> PeersView {
    let Some(service) = service else {
        return PeersView {
            service: None,
            peers: Vec::new(),
            note: Some("peer discovery is off: the agent has no peer service configured".into()),
        };
    };
    let peers = of_service(tables, service);
    let note = peers.is_empty().then(|| {
        if tables.slices_of(service).next().is_some() {
            format!(
                "the EndpointSlices of Service {service} list no ready endpoint with a port: \
                 are the agents' pods ready?"
            )
        } else {
            format!(
                "no EndpointSlice of Service {service} is known: deploy/agents-service.yaml \
                 creates it (a headless Service selecting the agents' DaemonSet pods)"
            )
        }
    });
    PeersView {
        service: Some(service.to_string()),
        peers,
        note,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::Object;
    use serde_json::json;

    fn slice(name: &str, ports: serde_json::Value, endpoints: serde_json::Value) -> Object {
        Object::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "kube-system",
                         "labels": {"kubernetes.io/service-name": "sluice-agents"}},
            "addressType": "IPv4",
            "ports": ports,
            "endpoints": endpoints,
        }))
        .unwrap()
        .object
    }

    #[test]
    fn peers_are_the_ready_endpoints_at_the_api_port_else_the_first_port() {
        let mut t = Tables::default();
        let service = default_service();
        assert!(of_service(&t, &service).is_empty());
        assert!(
            view(&t, Some(&service))
                .note
                .unwrap()
                .contains("deploy/agents-service.yaml")
        );
        t.apply(&slice(
            "a",
            json!([{"name": "metrics", "port": 10263}, {"name": "api", "port": 10260}]),
            json!([
                {"addresses": ["192.0.2.12"], "nodeName": "node-b"},
                {"addresses": ["192.0.2.11"], "nodeName": "node-a",
                 "conditions": {"ready": true}},
                {"addresses": ["192.0.2.13"], "nodeName": "node-c",
                 "conditions": {"ready": false}},
            ]),
        ))
        .unwrap();
        t.apply(&slice(
            "b",
            json!([{"name": "other", "port": 9000}]),
            json!([{"addresses": ["192.0.2.14"]}]),
        ))
        .unwrap();
        // The same agent in two slices (as during a slice handover) is one peer.
        t.apply(&slice(
            "c",
            json!([{"name": "api", "port": 10260}]),
            json!([{"addresses": ["192.0.2.12"], "nodeName": "node-b"}]),
        ))
        .unwrap();
        let peer = |node: Option<&str>, addr: &str| Peer {
            node: node.map(String::from),
            address: addr.parse().unwrap(),
        };
        assert_eq!(
            of_service(&t, &service),
            [
                peer(Some("node-a"), "192.0.2.11:10260"),
                peer(Some("node-b"), "192.0.2.12:10260"),
                peer(None, "192.0.2.14:9000"),
            ],
            "not-ready node-c is left out; sorted by address, each once"
        );
        assert_eq!(view(&t, Some(&service)).note, None);
        assert!(of_service(&t, &Key::new("kube-system", "other")).is_empty());
    }

    #[test]
    fn slices_without_ready_endpoints_say_so() {
        let mut t = Tables::default();
        t.apply(&slice(
            "a",
            json!([{"name": "api", "port": 10260}]),
            json!([{"addresses": ["192.0.2.13"], "conditions": {"ready": false}}]),
        ))
        .unwrap();
        let v = view(&t, Some(&default_service()));
        assert!(v.peers.is_empty());
        assert!(
            v.note.as_deref().unwrap().contains("no ready endpoint"),
            "{v:?}"
        );
        assert!(view(&t, None).note.unwrap().contains("off"));
    }

    #[test]
    fn the_peer_service_is_namespace_slash_name() {
        assert_eq!(
            parse_service("kube-system/sluice-agents"),
            Ok(default_service())
        );
        for bad in ["", "sluice-agents", "/x", "x/", "a/b/c"] {
            assert!(parse_service(bad).is_err(), "{bad:?}");
        }
    }
}

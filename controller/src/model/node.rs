//! This node's Node -> its addresses (the ones its NodePorts are reached on).

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;
use serde::Serialize;

use super::{Invalid, Problems};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeModel {
    pub name: String,
    /// `InternalIP` and `ExternalIP` addresses, in the Node's order.
    pub addresses: Vec<IpAddr>,
}

impl NodeModel {
    pub fn from_object(n: &Node) -> Result<NodeModel, Invalid> {
        let mut errs = Problems::default();
        let addresses = n
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_deref())
            .unwrap_or_default()
            .iter()
            .enumerate()
            .filter(|(_, a)| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
            .filter_map(|(i, a)| errs.ip(&a.address, &format!("status.addresses[{i}]")))
            .collect();
        errs.finish(NodeModel {
            name: n.metadata.name.clone().unwrap_or_default(),
            addresses,
        })
    }
}

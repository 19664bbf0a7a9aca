//! NodePort addresses from this node's Node object (`status.addresses`), besides the
//! attached interfaces' own. Entries carry their origin ([`node_addr_origin`]), so replacing
//! the Node's list never removes an interface's address, and a restarted agent knows which
//! entries it put there.

use std::{collections::BTreeSet, net::IpAddr};

use lb_common::{map_names as names, node_addr_origin};

use crate::{Dataplane, dataplane::ip_of, error::Error};

impl Dataplane {
    /// Makes `addrs` the Node object's NodePort addresses: adds the missing ones, removes
    /// the Node-object entries no longer listed; interface addresses are left alone (an
    /// address that is both stays an interface entry). One pass over the node address table
    /// (`capacities.node_addresses` entries at most).
    pub fn set_node_object_addresses(&mut self, addrs: &[IpAddr]) -> Result<(), Error> {
        let want: BTreeSet<IpAddr> = addrs.iter().copied().collect();
        let mut present = BTreeSet::new();
        let mut stale = Vec::new();
        for item in self.maps.node_addrs.iter() {
            let (k, origin) = item.map_err(|e| Error::map(names::NODE_ADDRS, "iterate", e))?;
            let ip = ip_of(k);
            present.insert(ip);
            if origin == node_addr_origin::NODE_OBJECT && !want.contains(&ip) {
                stale.push(ip);
            }
        }
        for ip in want.iter().filter(|ip| !present.contains(ip)) {
            self.insert_node_address(*ip, node_addr_origin::NODE_OBJECT)?;
        }
        for ip in stale {
            self.remove_node_address(ip)?;
        }
        Ok(())
    }

    /// Every NodePort address, with whether it came from the Node object.
    pub fn node_addresses(&self) -> Result<Vec<(IpAddr, bool)>, Error> {
        let mut out = Vec::new();
        for item in self.maps.node_addrs.iter() {
            let (k, origin) = item.map_err(|e| Error::map(names::NODE_ADDRS, "iterate", e))?;
            out.push((ip_of(k), origin == node_addr_origin::NODE_OBJECT));
        }
        out.sort();
        Ok(out)
    }
}

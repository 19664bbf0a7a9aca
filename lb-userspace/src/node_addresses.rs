//! The NodePort addresses (`NODE_ADDRS`): the attached interfaces' own, followed live (see
//! [`crate::addr_watch`]), and this node's Node object's (`status.addresses`).
//!
//! Each entry's value is the set of its origins, as bits ([`node_addr_origin`]'s values are
//! distinct bits: `INTERFACE | NODE_OBJECT` is an address that is both). Replacing one
//! origin's list clears only that origin's bit, and an entry goes when no origin is left, so
//! an address that is both an interface's and the Node's stays while either lists it, and a
//! restarted agent knows which entries it put there and why. The data path only looks at
//! whether an entry exists.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use aya::maps::{HashMap, Map, MapData, MapError};
use lb_common::{NetAddr, map_names as names, node_addr_origin};
use lb_datapath::{PinConfig, datapath::AddressChanges};

use crate::{
    Dataplane,
    addr::{ip_of, net_addr},
    error::Error,
};

/// Whether a change made an address start or stop being a NodePort address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Served {
    Started,
    Stopped,
    Unchanged,
}

impl Dataplane {
    /// Makes `addrs` the Node object's NodePort addresses: adds the missing ones, then
    /// clears the Node-object origin of entries no longer listed (an entry goes when no
    /// origin is left; interface addresses stay). One pass over the node address table
    /// (`capacities.node_addresses` entries at most).
    pub fn set_node_object_addresses(&mut self, addrs: &[IpAddr]) -> Result<(), Error> {
        self.replace_origin(node_addr_origin::NODE_OBJECT, addrs)
            .map(|_| ())
    }

    /// Makes `addrs` the attached interfaces' NodePort addresses (replacing the previous
    /// list, addresses of a previous run's interfaces among them): adds the missing ones,
    /// then clears the interface origin of entries no longer listed. Node object entries
    /// stay. One pass over the node address table.
    pub fn set_interface_addresses(&mut self, addrs: &[IpAddr]) -> Result<AddressChanges, Error> {
        self.replace_origin(node_addr_origin::INTERFACE, addrs)
    }

    /// Adds `added` to and removes `removed` from the attached interfaces' NodePort
    /// addresses: a lookup and at most one write per address named, nothing else read.
    pub fn update_interface_addresses(
        &mut self,
        added: &[IpAddr],
        removed: &[IpAddr],
    ) -> Result<AddressChanges, Error> {
        let mut changes = AddressChanges::default();
        // Make before break: an address that moves is served by its new entry first.
        for ip in added {
            let origin = self.origin_of(*ip)?;
            if self.add_origin(*ip, origin, node_addr_origin::INTERFACE)? == Served::Started {
                changes.added.push(*ip);
            }
        }
        for ip in removed.iter().filter(|ip| !added.contains(ip)) {
            let origin = self.origin_of(*ip)?;
            if self.drop_origin(*ip, origin, node_addr_origin::INTERFACE)? == Served::Stopped {
                changes.removed.push(*ip);
            }
        }
        Ok(changes)
    }

    /// Every NodePort address, with whether only the Node object lists it (`false`: an
    /// attached interface has it, whether or not the Node lists it too; see
    /// [`Dataplane::node_address_origins`] for both).
    pub fn node_addresses(&self) -> Result<Vec<(IpAddr, bool)>, Error> {
        Ok(self
            .node_address_origins()?
            .into_iter()
            .map(|(ip, origin)| (ip, origin & node_addr_origin::INTERFACE == 0))
            .collect())
    }

    /// Every NodePort address with its origin bits, in address order.
    pub fn node_address_origins(&self) -> Result<BTreeMap<IpAddr, u32>, Error> {
        read_origins(&self.prog.maps.node_addrs)
    }

    /// Gives `ip` the origin `bit` (`lb_common::node_addr_origin`), keeping its others.
    pub(crate) fn add_node_address_origin(&mut self, ip: IpAddr, bit: u32) -> Result<(), Error> {
        let origin = self.origin_of(ip)?;
        self.add_origin(ip, origin, bit).map(|_| ())
    }

    /// The one pass behind `set_*_addresses`: `bit` set on exactly the entries of `want`.
    fn replace_origin(&mut self, bit: u32, want: &[IpAddr]) -> Result<AddressChanges, Error> {
        let want: BTreeSet<IpAddr> = want.iter().copied().collect();
        let present = self.node_address_origins()?;
        let mut changes = AddressChanges::default();
        for ip in &want {
            if self.add_origin(*ip, present.get(ip).copied(), bit)? == Served::Started {
                changes.added.push(*ip);
            }
        }
        for (ip, origin) in present.iter().filter(|(ip, _)| !want.contains(ip)) {
            if self.drop_origin(*ip, Some(*origin), bit)? == Served::Stopped {
                changes.removed.push(*ip);
            }
        }
        Ok(changes)
    }

    fn origin_of(&self, ip: IpAddr) -> Result<Option<u32>, Error> {
        match self.prog.maps.node_addrs.get(&net_addr(ip), 0) {
            Ok(origin) => Ok(Some(origin)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(Error::map(names::NODE_ADDRS, "read", e)),
        }
    }

    /// `origin`: the entry's current value (`None`: no entry).
    fn add_origin(&mut self, ip: IpAddr, origin: Option<u32>, bit: u32) -> Result<Served, Error> {
        match origin {
            None => {
                self.insert_node_address(ip, bit)?;
                Ok(Served::Started)
            }
            Some(o) if o & bit == 0 => {
                self.insert_node_address(ip, o | bit)?;
                Ok(Served::Unchanged)
            }
            Some(_) => Ok(Served::Unchanged),
        }
    }

    fn drop_origin(&mut self, ip: IpAddr, origin: Option<u32>, bit: u32) -> Result<Served, Error> {
        match origin {
            Some(o) if o & bit != 0 => {
                let rest = o & !bit;
                if rest == 0 {
                    self.remove_node_address(ip)?;
                    Ok(Served::Stopped)
                } else {
                    self.insert_node_address(ip, rest)?;
                    Ok(Served::Unchanged)
                }
            }
            _ => Ok(Served::Unchanged),
        }
    }
}

/// Every entry of a node address table; entries deleted during the pass are skipped.
fn read_origins<T: std::borrow::Borrow<MapData>>(
    map: &HashMap<T, NetAddr, u32>,
) -> Result<BTreeMap<IpAddr, u32>, Error> {
    let mut out = BTreeMap::new();
    for item in map.iter() {
        match item {
            Ok((k, origin)) => {
                out.insert(ip_of(k), origin);
            }
            Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(Error::map(names::NODE_ADDRS, "iterate", e)),
        }
    }
    Ok(out)
}

/// The NodePort addresses of a pinned data path, with their origin bits, read from any
/// process through the pins (tools and tests that check what the agent wrote).
///
/// # Errors
/// [`Error::Pin`] when the map is not pinned or cannot be opened.
pub fn pinned_node_addresses(pin: &PinConfig) -> Result<BTreeMap<IpAddr, u32>, Error> {
    let path = pin.map_path(names::NODE_ADDRS);
    let pin_error = |e: MapError| Error::Pin {
        path: path.clone(),
        reason: format!("cannot open the pinned map (is the data path installed?): {e}"),
    };
    let data = MapData::from_pin(&path).map_err(pin_error)?;
    let map = Map::from_map_data(data).map_err(pin_error)?;
    let map: HashMap<MapData, NetAddr, u32> = map
        .try_into()
        .map_err(|e| Error::map(names::NODE_ADDRS, "open the pinned map", e))?;
    read_origins(&map)
}

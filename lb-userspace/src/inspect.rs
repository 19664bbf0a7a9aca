//! Read-only inspection of a pinned data path, from any process: opens the maps an instance
//! pinned under `<root>/<instance>/v<layout>/` and counts what they hold, without loading
//! programs or touching the owner's bookkeeping. Tools and demos use it to prove that a data
//! path is empty (or what it holds) independently of the agent's own view.

use std::path::Path;

use aya::maps::{Array, HashMap, Map, MapData};
use lb_common::map_names as names;
use lb_common::{
    Backend, CtEntry, FlowKey, NetAddr, SLOTS_PER_ENTRY, ServiceKey, ServiceValue, backend_flags,
};

use crate::{MapOccupancy, error::Error, mmap::MmapArray, pins::PinConfig};

/// Entries held by the pinned maps of `pin`'s instance, counted in the kernel's maps:
/// `SERVICES`, the three conntrack maps and `NODE_ADDRS` by their keys, `BACKENDS` by the elements that
/// carry [`backend_flags::PRESENT`] (an array has every index), `SLOTS` by the slots that
/// name a backend (non-zero), read through a read-only mmap.
///
/// The maps may change while they are counted (the owner keeps running): each count is a
/// snapshot of one pass over one map; entries that vanish during the pass are skipped.
///
/// # Errors
/// [`Error::Pin`] when a map is not pinned (no data path of this layout under that instance)
/// or cannot be opened; [`Error::Map`] when reading one fails.
pub fn pinned_occupancy(pin: &PinConfig) -> Result<MapOccupancy, Error> {
    let services: HashMap<MapData, ServiceKey, ServiceValue> = open(pin, names::SERVICES)?;
    let backends: Array<MapData, Backend> = open(pin, names::BACKENDS)?;
    let slots_path = pin.map_path(names::SLOTS);
    let slots_map = MapData::from_pin(&slots_path).map_err(|e| pin_error(&slots_path, e))?;
    let slots = MmapArray::new(names::SLOTS, &slots_map, false)?;
    let conntrack: HashMap<MapData, FlowKey, CtEntry> = open(pin, names::CONNTRACK)?;
    let ct_syn: HashMap<MapData, FlowKey, CtEntry> = open(pin, names::CT_SYN)?;
    let ct_other: HashMap<MapData, FlowKey, CtEntry> = open(pin, names::CT_OTHER)?;
    let node_addrs: HashMap<MapData, NetAddr, u32> = open(pin, names::NODE_ADDRS)?;

    let mut present = 0;
    for b in backends.iter() {
        let b = b.map_err(|e| Error::map(names::BACKENDS, "iterate", e))?;
        if b.flags & backend_flags::PRESENT != 0 {
            present += 1;
        }
    }
    let mut used_slots = 0;
    for block in 0..slots.entries() {
        for word in 0..SLOTS_PER_ENTRY as usize {
            used_slots += u64::from(slots.load(block, word) != 0);
        }
    }
    Ok(MapOccupancy {
        frontends: count_keys(services.keys(), names::SERVICES)?,
        backends: present,
        slots: used_slots,
        conntrack: count_keys(conntrack.keys(), names::CONNTRACK)?
            + count_keys(ct_syn.keys(), names::CT_SYN)?
            + count_keys(ct_other.keys(), names::CT_OTHER)?,
        node_addresses: count_keys(node_addrs.keys(), names::NODE_ADDRS)?,
    })
}

/// Opens one pinned map of `pin`'s instance as the typed handle `T`.
fn open<T>(pin: &PinConfig, name: &'static str) -> Result<T, Error>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let path = pin.map_path(name);
    let data = MapData::from_pin(&path).map_err(|e| pin_error(&path, e))?;
    let map = Map::from_map_data(data).map_err(|e| pin_error(&path, e))?;
    T::try_from(map).map_err(|e| Error::map(name, "open the pinned map", e))
}

fn pin_error(path: &Path, e: aya::maps::MapError) -> Error {
    Error::Pin {
        path: path.to_path_buf(),
        reason: format!("cannot open the pinned map (is the data path installed?): {e}"),
    }
}

/// Counts the keys of a hash map pass; keys deleted while iterating are skipped.
pub(crate) fn count_keys<K>(
    keys: impl Iterator<Item = Result<K, aya::maps::MapError>>,
    map: &'static str,
) -> Result<u64, Error> {
    let mut n = 0;
    for k in keys {
        match k {
            Ok(_) => n += 1,
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(Error::map(map, "iterate", e)),
        }
    }
    Ok(n)
}

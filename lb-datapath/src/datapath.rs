//! The data path as the agent sees it: a trait, so the controller can be tested against an
//! in-memory fake and never touches aya. `lb_userspace::Dataplane` implements it.

use std::net::IpAddr;

use lb_common::Reason;

use crate::{
    dump::{ConntrackStats, EndpointStatus, MapOccupancy, ServiceDump, ServiceStats},
    error::Error,
    spec::ServiceSpec,
};

pub trait DataPath: Send {
    /// Creates or updates a service (make before break).
    fn upsert_service(&mut self, spec: &ServiceSpec) -> Result<u32, Error>;
    fn remove_service(&mut self, name: &str) -> Result<(), Error>;
    /// Names of the services held, including ones adopted from pins.
    fn service_names(&self) -> Vec<String>;
    fn dump(&self) -> Vec<ServiceDump>;
    /// Releases the ids of removed services and backends (no table walk: flow entries
    /// name a backend generation, so stale ones are ignored by the data path and expire).
    fn purge_stale(&mut self) -> Result<u64, Error>;
    /// The drain handshake for `addr`: per service, whether it is still selected for new
    /// flows; with `count_flows`, also its live tracked flows as of the conntrack GC's last
    /// complete pass (never a table walk per call).
    fn endpoint_status(
        &self,
        addr: IpAddr,
        count_flows: bool,
    ) -> Result<Vec<EndpointStatus>, Error>;
    fn service_stats(&self, name: &str) -> Result<ServiceStats, Error>;
    fn reasons(&self) -> Result<Vec<(Reason, u64)>, Error>;
    fn occupancy(&self) -> Result<MapOccupancy, Error>;
    /// Like `occupancy`, cheap enough for every metrics scrape.
    fn usage(&self) -> Result<MapOccupancy, Error>;
    /// The configured capacities (for occupancy-vs-capacity metrics).
    fn capacities(&self) -> crate::Capacities;
    /// Flows by table and state, expirations and GC runs, from the background GC's last
    /// pass (cheap: for every metrics scrape).
    fn conntrack_stats(&self) -> ConntrackStats;
    /// Makes `addrs` (this node's Node object's addresses) NodePort addresses besides the
    /// attached interfaces' own, replacing the previous list; interface addresses stay.
    fn set_node_addresses(&mut self, addrs: &[IpAddr]) -> Result<(), Error>;
    /// Every NodePort address: the attached interfaces' and the Node object's.
    fn node_addresses(&self) -> Result<Vec<IpAddr>, Error>;
    /// Makes `addrs` the attached interfaces' NodePort addresses, replacing the previous
    /// list: adds the missing ones, then removes the interface entries no longer listed
    /// (addresses of a previous run among them). Node object entries stay; an address that
    /// is both stays as long as either lists it. One pass over the node address table
    /// (`capacities.node_addresses` entries at most): for a full read of the interfaces.
    fn set_interface_addresses(&mut self, addrs: &[IpAddr]) -> Result<AddressChanges, Error> {
        let _ = addrs;
        Err(not_following())
    }
    /// Adds `added` to and removes `removed` from the attached interfaces' NodePort
    /// addresses (same rules as `set_interface_addresses`), touching only those entries:
    /// one kernel change costs a lookup and a write per address it names.
    fn update_interface_addresses(
        &mut self,
        added: &[IpAddr],
        removed: &[IpAddr],
    ) -> Result<AddressChanges, Error> {
        let _ = (added, removed);
        Err(not_following())
    }
    /// Starts following the attached interfaces' addresses: `sink` gets, on a thread of the
    /// watch, a first [`AddressEvent::Listed`] and then every change. `None`: this data path
    /// does not follow them (its NodePort addresses stay as attached). Nothing is written
    /// by the watch itself: the caller applies the events (`set_interface_addresses`,
    /// `update_interface_addresses`).
    fn watch_interface_addresses(
        &mut self,
        sink: AddressSink,
    ) -> Result<Option<AddressWatch>, Error> {
        let _ = sink;
        Ok(None)
    }
    /// Sets the seed of the flow hash and of Maglev (the same on every node); a change
    /// rebuilds each service's table at its next upsert.
    fn set_hash_seed(&mut self, seed: u32) -> Result<(), Error>;
}

impl<T: DataPath + ?Sized> DataPath for Box<T> {
    fn upsert_service(&mut self, spec: &ServiceSpec) -> Result<u32, Error> {
        (**self).upsert_service(spec)
    }
    fn remove_service(&mut self, name: &str) -> Result<(), Error> {
        (**self).remove_service(name)
    }
    fn service_names(&self) -> Vec<String> {
        (**self).service_names()
    }
    fn dump(&self) -> Vec<ServiceDump> {
        (**self).dump()
    }
    fn purge_stale(&mut self) -> Result<u64, Error> {
        (**self).purge_stale()
    }
    fn endpoint_status(
        &self,
        addr: IpAddr,
        count_flows: bool,
    ) -> Result<Vec<EndpointStatus>, Error> {
        (**self).endpoint_status(addr, count_flows)
    }
    fn service_stats(&self, name: &str) -> Result<ServiceStats, Error> {
        (**self).service_stats(name)
    }
    fn reasons(&self) -> Result<Vec<(Reason, u64)>, Error> {
        (**self).reasons()
    }
    fn occupancy(&self) -> Result<MapOccupancy, Error> {
        (**self).occupancy()
    }
    fn usage(&self) -> Result<MapOccupancy, Error> {
        (**self).usage()
    }
    fn capacities(&self) -> crate::Capacities {
        (**self).capacities()
    }
    fn conntrack_stats(&self) -> ConntrackStats {
        (**self).conntrack_stats()
    }
    fn set_node_addresses(&mut self, addrs: &[IpAddr]) -> Result<(), Error> {
        (**self).set_node_addresses(addrs)
    }
    fn node_addresses(&self) -> Result<Vec<IpAddr>, Error> {
        (**self).node_addresses()
    }
    fn set_interface_addresses(&mut self, addrs: &[IpAddr]) -> Result<AddressChanges, Error> {
        (**self).set_interface_addresses(addrs)
    }
    fn update_interface_addresses(
        &mut self,
        added: &[IpAddr],
        removed: &[IpAddr],
    ) -> Result<AddressChanges, Error> {
        (**self).update_interface_addresses(added, removed)
    }
    fn watch_interface_addresses(
        &mut self,
        sink: AddressSink,
    ) -> Result<Option<AddressWatch>, Error> {
        (**self).watch_interface_addresses(sink)
    }
    fn set_hash_seed(&mut self, seed: u32) -> Result<(), Error> {
        (**self).set_hash_seed(seed)
    }
}

/// A change of the attached interfaces' usable addresses, as the kernel reported it
/// (IPv6 link-local, tentative and DAD-failed addresses are never reported as usable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddressEvent {
    /// Every usable address of every attached interface, as (ifindex, address): the first
    /// full read, and every read again after the kernel dropped notifications. Replaces
    /// everything reported before.
    Listed(Vec<(u32, IpAddr)>),
    /// `addr` became usable on the interface `ifindex`.
    Added { ifindex: u32, addr: IpAddr },
    /// `addr` is no longer usable on the interface `ifindex` (removed, or DAD failed).
    Removed { ifindex: u32, addr: IpAddr },
}

/// Where a watch of the interfaces' addresses delivers its events: called on the watch's
/// own thread, once per batch the kernel handed over (a burst of changes is one call).
pub type AddressSink = Box<dyn FnMut(Vec<AddressEvent>) + Send>;

/// A running watch of the interfaces' addresses; dropping it stops the watch.
pub struct AddressWatch {
    _running: Box<dyn Send>,
}

impl AddressWatch {
    /// A watch that runs as long as `running` lives (a guard that stops it on drop).
    pub fn new(running: impl Send + 'static) -> Self {
        AddressWatch {
            _running: Box::new(running),
        }
    }
}

impl std::fmt::Debug for AddressWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressWatch").finish_non_exhaustive()
    }
}

/// What a change of the interface addresses did to the addresses NodePorts answer on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressChanges {
    /// Addresses NodePorts answer on now and did not before.
    pub added: Vec<IpAddr>,
    /// Addresses NodePorts no longer answer on.
    pub removed: Vec<IpAddr>,
}

impl AddressChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

fn not_following() -> Error {
    Error::Interface {
        ifname: "*".into(),
        reason: "this data path does not follow interface addresses".into(),
    }
}

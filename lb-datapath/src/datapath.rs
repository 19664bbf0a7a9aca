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
    fn set_hash_seed(&mut self, seed: u32) -> Result<(), Error> {
        (**self).set_hash_seed(seed)
    }
}

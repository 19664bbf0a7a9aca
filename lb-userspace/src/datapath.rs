//! [`Dataplane`] behind the aya-free [`DataPath`] contract of `lb-datapath`.

use std::net::IpAddr;

use lb_common::Reason;
use lb_datapath::{
    Capacities, ConntrackStats, DataPath, EndpointStatus, Error, MapOccupancy, ServiceDump,
    ServiceSpec, ServiceStats,
    datapath::{AddressChanges, AddressSink, AddressWatch},
};

use crate::dataplane::Dataplane;

impl DataPath for Dataplane {
    fn upsert_service(&mut self, spec: &ServiceSpec) -> Result<u32, Error> {
        Dataplane::upsert_service(self, spec)
    }
    fn remove_service(&mut self, name: &str) -> Result<(), Error> {
        Dataplane::remove_service(self, name)
    }
    fn service_names(&self) -> Vec<String> {
        Dataplane::service_names(self)
    }
    fn dump(&self) -> Vec<ServiceDump> {
        Dataplane::dump(self)
    }
    fn purge_stale(&mut self) -> Result<u64, Error> {
        Dataplane::purge_stale(self)
    }
    fn endpoint_status(
        &self,
        addr: IpAddr,
        count_flows: bool,
    ) -> Result<Vec<EndpointStatus>, Error> {
        Dataplane::endpoint_status(self, addr, count_flows)
    }
    fn service_stats(&self, name: &str) -> Result<ServiceStats, Error> {
        Dataplane::service_stats(self, name)
    }
    fn reasons(&self) -> Result<Vec<(Reason, u64)>, Error> {
        Dataplane::reasons(self)
    }
    fn occupancy(&self) -> Result<MapOccupancy, Error> {
        Dataplane::occupancy(self)
    }
    fn usage(&self) -> Result<MapOccupancy, Error> {
        Dataplane::usage(self)
    }
    fn capacities(&self) -> Capacities {
        self.config().capacities
    }
    fn conntrack_stats(&self) -> ConntrackStats {
        Dataplane::conntrack_stats(self)
    }
    fn set_node_addresses(&mut self, addrs: &[IpAddr]) -> Result<(), Error> {
        Dataplane::set_node_object_addresses(self, addrs)
    }
    fn node_addresses(&self) -> Result<Vec<IpAddr>, Error> {
        Ok(Dataplane::node_addresses(self)?
            .into_iter()
            .map(|(a, _)| a)
            .collect())
    }
    fn set_interface_addresses(&mut self, addrs: &[IpAddr]) -> Result<AddressChanges, Error> {
        Dataplane::set_interface_addresses(self, addrs)
    }
    fn update_interface_addresses(
        &mut self,
        added: &[IpAddr],
        removed: &[IpAddr],
    ) -> Result<AddressChanges, Error> {
        Dataplane::update_interface_addresses(self, added, removed)
    }
    fn watch_interface_addresses(
        &mut self,
        sink: AddressSink,
    ) -> Result<Option<AddressWatch>, Error> {
        Dataplane::watch_interface_addresses(self, sink).map(Some)
    }
    fn set_hash_seed(&mut self, seed: u32) -> Result<(), Error> {
        Dataplane::set_hash_seed(self, seed)
    }
}

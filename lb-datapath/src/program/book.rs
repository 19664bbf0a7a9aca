//! The bookkeeping of what is written in the maps: services by name, their frontends,
//! backends and table ranges, who owns each frontend key, and the id and slot allocators.
//! It changes only by the effect of a write that succeeded ([`super::write`]), so it always
//! describes the maps. The selection tables themselves are not copied here: the `SLOTS` map
//! is the record of the table in force ([`super::Maps::slot`]).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
    time::Duration,
};

use ipnet::IpNet;
use lb_common::{NetAddr, NetPort, ServiceKey, scope};

use crate::{
    addr::net_addr,
    config::Capacities,
    error::Error,
    ids::IdAllocator,
    slots::SlotRanges,
    spec::{AddressFamily, EndpointState, Frontend, Protocol, ServiceSpec},
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendState {
    pub id: u32,
    pub state: EndpointState,
    /// In the selection table in force (mirrors `backend_flags::ELIGIBLE`).
    pub eligible: bool,
    /// On another node: new flows are source-NATed (mirrors `backend_flags::REMOTE`).
    pub remote: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceState {
    pub id: u32,
    pub protocol: Protocol,
    pub frontends: Vec<Frontend>,
    pub backends: BTreeMap<SocketAddr, BackendState>,
    /// First slot of the table in force in `SLOTS`.
    pub slot_offset: u32,
    /// Slots of the table in force (their backend ids are read from `SLOTS`).
    pub slot_count: u32,
    /// The table in force was built by this process (with its hash seed) from the backends
    /// marked eligible: the same eligible set at the same size builds the same table, so an
    /// unchanged upsert skips the rebuild. False for a restored table (another seed or
    /// version may have built it; the first upsert rebuilds and rewrites what differs) and
    /// after a failed update.
    pub table_current: bool,
    pub affinity: Option<Duration>,
    /// The `SOURCE_RANGES` prefixes written for this service.
    pub source_ranges: BTreeSet<IpNet>,
    /// Other slot ranges a frontend of this service may still point at (restored frontends
    /// that disagreed, a fresh table not in force yet, or a table change cut short):
    /// reserved until every frontend points at the table in force, then cleared and released.
    pub stray_ranges: Vec<(u32, u32)>,
}

impl ServiceState {
    /// A service with an id and nothing written for it yet.
    pub fn empty(id: u32, protocol: Protocol) -> Self {
        ServiceState {
            id,
            protocol,
            frontends: Vec::new(),
            backends: BTreeMap::new(),
            slot_offset: 0,
            slot_count: 0,
            table_current: false,
            affinity: None,
            source_ranges: BTreeSet::new(),
            stray_ranges: Vec::new(),
        }
    }
}

/// Everything written, and what is free.
#[derive(Debug, Clone)]
pub struct Book {
    pub services: BTreeMap<String, ServiceState>,
    /// Owner of every frontend key in `SERVICES`.
    pub frontend_owner: HashMap<ServiceKey, String>,
    pub service_ids: IdAllocator,
    pub backend_ids: IdAllocator,
    pub slot_ranges: SlotRanges,
    /// Removed, not yet released (see [`super::Programmer::purge_stale`]).
    pub stale_services: BTreeSet<u32>,
    pub stale_backends: BTreeSet<u32>,
    /// The highest service and backend ids handed out since these maps were created, when
    /// this process created them: the per-CPU counters of higher ids are still the kernel's
    /// zeroes and need no reset. `None` for adopted maps (any id may hold old counts).
    pub clean_stats: Option<(u32, u32)>,
    /// Entries in `SOURCE_RANGES` (over every service).
    pub source_range_entries: u32,
}

impl Book {
    /// Nothing written. `fresh`: the maps were created empty by this process (their
    /// counters need no reset), rather than adopted.
    pub fn new(caps: &Capacities, fresh: bool) -> Self {
        Book {
            services: BTreeMap::new(),
            frontend_owner: HashMap::new(),
            service_ids: IdAllocator::new(caps.services),
            backend_ids: IdAllocator::new(caps.backends),
            slot_ranges: SlotRanges::new(caps.slots),
            stale_services: BTreeSet::new(),
            stale_backends: BTreeSet::new(),
            clean_stats: fresh.then_some((0, 0)),
            source_range_entries: 0,
        }
    }

    /// Whether the counters of a `service` (else backend) id about to be handed out must be
    /// reset: not for an id above every one handed out since this process created the maps.
    pub fn needs_zeroing(&self, service: bool, id: u32) -> bool {
        match self.clean_stats {
            Some((services, backends)) => id <= if service { services } else { backends },
            None => true,
        }
    }

    /// Records that `id` was handed out (see [`Book::needs_zeroing`]).
    pub fn handed_out(&mut self, service: bool, id: u32) {
        if let Some((services, backends)) = &mut self.clean_stats {
            let high = if service { services } else { backends };
            *high = (*high).max(id);
        }
    }

    /// Service `name`'s state, or [`Error::UnknownService`].
    pub fn service(&self, name: &str) -> Result<&ServiceState, Error> {
        self.services
            .get(name)
            .ok_or_else(|| Error::UnknownService(name.into()))
    }

    /// The key under which service `name` holds frontend `f`: for a NodePort, the key of
    /// whichever family it was written with.
    pub fn owned_key(&self, name: &str, f: &Frontend, proto: Protocol) -> ServiceKey {
        let v6 = frontend_key(f, proto, AddressFamily::Ipv6);
        if self.frontend_owner.get(&v6).is_some_and(|o| o == name) {
            v6
        } else {
            frontend_key(f, proto, AddressFamily::Ipv4)
        }
    }

    /// The family of the existing service `name`, from its frontends and backends, or, for
    /// one with NodePorts only and no backends, from its NodePort keys.
    pub fn current_family(&self, name: &str) -> Option<AddressFamily> {
        let svc = self.services.get(name)?;
        AddressFamily::of_service(&svc.frontends, svc.backends.keys()).or_else(|| {
            let key = self.owned_key(name, svc.frontends.first()?, svc.protocol);
            Some(if key.addr == NetAddr::UNSPECIFIED {
                AddressFamily::Ipv6
            } else {
                AddressFamily::Ipv4
            })
        })
    }

    /// The family `spec` is written with: its own (see [`ServiceSpec`]), else the family the
    /// service already has, else IPv4.
    pub fn family_of(&self, spec: &ServiceSpec) -> AddressFamily {
        spec.family()
            .or_else(|| self.current_family(&spec.name))
            .unwrap_or(AddressFamily::Ipv4)
    }
}

/// The `SERVICES` key of a frontend. A NodePort key holds the unspecified address of the
/// service's family (`::ffff:0.0.0.0` for IPv4, `::` for IPv6): the XDP program looks up the
/// wildcard of the packet's family, so an IPv4 NodePort never catches IPv6 packets.
pub fn frontend_key(f: &Frontend, proto: Protocol, family: AddressFamily) -> ServiceKey {
    match f {
        Frontend::NodePort(p) => ServiceKey {
            addr: match family {
                AddressFamily::Ipv4 => NetAddr::V4_UNSPECIFIED,
                AddressFamily::Ipv6 => NetAddr::UNSPECIFIED,
            },
            port: NetPort::new(*p),
            proto: proto.number(),
            scope: scope::NODE_PORT,
        },
        Frontend::Address(sa) => ServiceKey {
            addr: net_addr(sa.ip()),
            port: NetPort::new(sa.port()),
            proto: proto.number(),
            scope: scope::EXACT,
        },
    }
}

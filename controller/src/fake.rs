//! An in-memory [`DataPath`] for tests and golden files: the data path's own planner and
//! writer on in-memory maps ([`MemoryMaps`]), so what a test reads (ids, table sizes, slots,
//! which backend new flows can reach) comes from the same rules as the kernel's maps.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
};

use lb_datapath::{
    Capacities, DataPath, EndpointState, EndpointStatus, Error, MaglevConfig, MapOccupancy, Reason,
    ServiceDump, ServiceSpec, ServiceStats, Stats,
    datapath::{AddressChanges, AddressEvent, AddressSink, AddressWatch},
    program::{MemoryMaps, Programmer, Settings},
};

/// Calls recorded by a [`FakeDataPath`] made with [`FakeDataPath::with_journal`].
pub type Journal = Arc<Mutex<Vec<String>>>;

/// The per-backend counters a [`FakeDataPath`] serves through `service_stats` (zero unless
/// set), settable while the fake sits behind a `Box<dyn DataPath>`: clone
/// [`FakeDataPath::counters`] before boxing it.
#[derive(Clone, Debug, Default)]
pub struct Counters(Arc<Mutex<BTreeMap<(String, SocketAddr), Stats>>>);

impl Counters {
    /// Sets the new-flow counter of `backend` in the data-path service `service`.
    pub fn set_new_flows(&self, service: &str, backend: SocketAddr, new_flows: u64) {
        let mut c = self.0.lock().expect("counters");
        c.entry((service.to_string(), backend))
            .or_default()
            .new_flows = new_flows;
    }

    /// Sets every counter of `backend` in the data-path service `service`.
    pub fn set(&self, service: &str, backend: SocketAddr, stats: Stats) {
        let mut c = self.0.lock().expect("counters");
        c.insert((service.to_string(), backend), stats);
    }

    fn get(&self, service: &str, backend: SocketAddr) -> Stats {
        let c = self.0.lock().expect("counters");
        c.get(&(service.to_string(), backend))
            .copied()
            .unwrap_or_default()
    }
}

/// The interface address watch of a [`FakeDataPath`]: a test sends the events the kernel
/// would report through it, once the agent started the watch. Clone
/// [`FakeDataPath::address_feed`] before boxing the fake.
#[derive(Clone, Default)]
pub struct AddressFeed(Arc<Mutex<Option<AddressSink>>>);

impl AddressFeed {
    /// Delivers `events` as one batch of the watch; `false` when no watch was started yet.
    pub fn send(&self, events: Vec<AddressEvent>) -> bool {
        match self.0.lock().expect("address feed").as_mut() {
            Some(sink) => {
                sink(events);
                true
            }
            None => false,
        }
    }

    /// Whether the agent started the watch.
    pub fn watching(&self) -> bool {
        self.0.lock().expect("address feed").is_some()
    }
}

impl std::fmt::Debug for AddressFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressFeed")
            .field("watching", &self.watching())
            .finish()
    }
}

/// The fake: the data path's own planner and writer ([`Programmer`]) on in-memory maps,
/// so ids, table sizes, slots and which backend is selectable are what the kernel's maps
/// would hold; plus the call journal and injected failures tests need.
#[derive(Debug)]
pub struct FakeDataPath {
    /// The planner, its bookkeeping and the maps it wrote.
    pub prog: Programmer<MemoryMaps>,
    /// A copy of `calls` readable while the fake sits behind a `Box<dyn DataPath>`.
    pub journal: Option<Journal>,
    /// The Node object's NodePort addresses last set.
    pub node_addresses: Vec<IpAddr>,
    /// Every call, in order ("upsert NAME" / "remove NAME"), for ordering assertions.
    pub calls: Vec<String>,
    /// Fail upserts of this service (error-path tests).
    pub fail_on: Option<String>,
    /// Per-backend counters (see [`Counters`]).
    pub counters: Counters,
    /// The attached interfaces' addresses it reports besides the Node object's (set by
    /// `set_interface_addresses` and `update_interface_addresses`, or by a test).
    pub interface_addresses: Vec<IpAddr>,
    /// Where the watch of the interfaces' addresses gets its events from (see
    /// [`AddressFeed`]).
    pub address_feed: AddressFeed,
    /// Fail writes of interface addresses (error-path tests).
    pub fail_interface_addresses: bool,
    /// The hash seed last set, readable behind a `Box<dyn DataPath>` (clone it first).
    pub hash_seed: Arc<Mutex<Option<u32>>>,
}

impl Default for FakeDataPath {
    fn default() -> Self {
        FakeDataPath::with_capacities(Capacities::default())
    }
}

impl FakeDataPath {
    /// A fake whose maps have these sizes (capacity-error tests).
    pub fn with_capacities(capacities: Capacities) -> Self {
        let settings = Settings {
            capacities,
            maglev: MaglevConfig::default(),
            hash_seed: 0,
        };
        FakeDataPath {
            prog: Programmer::new(MemoryMaps::default(), settings, true),
            journal: None,
            node_addresses: Vec::new(),
            calls: Vec::new(),
            fail_on: None,
            counters: Counters::default(),
            interface_addresses: Vec::new(),
            address_feed: AddressFeed::default(),
            fail_interface_addresses: false,
            hash_seed: Arc::default(),
        }
    }

    /// A fake whose calls can also be read through the returned journal.
    pub fn with_journal() -> (FakeDataPath, Journal) {
        let journal = Journal::default();
        (
            FakeDataPath {
                journal: Some(journal.clone()),
                ..Default::default()
            },
            journal,
        )
    }

    fn record(&mut self, call: String) {
        if let Some(j) = &self.journal {
            j.lock().expect("journal").push(call.clone());
        }
        self.calls.push(call);
    }

    /// The names held (the trait's `service_names`, without importing the trait).
    pub fn service_names_for_test(&self) -> Vec<String> {
        self.prog.service_names()
    }

    /// The maps as written (see [`MemoryMaps::render`]), with each service's backends and
    /// their endpoint states as the agent gave them.
    pub fn render(&self) -> String {
        let mut out = self.prog.maps.render();
        for (name, svc) in &self.prog.book.services {
            let _ = writeln!(out, "endpoints of {name} (service {})", svc.id);
            for (addr, b) in &svc.backends {
                let state = match b.state {
                    EndpointState::Ready => "ready",
                    EndpointState::ServingTerminating => "serving-terminating",
                    EndpointState::NotServing => "not-serving",
                };
                let _ = writeln!(out, "  backend {} {addr} {state}", b.id);
            }
        }
        out
    }
}

impl DataPath for FakeDataPath {
    fn upsert_service(&mut self, spec: &ServiceSpec) -> Result<u32, Error> {
        if self.fail_on.as_deref() == Some(spec.name.as_str()) {
            return Err(Error::InvalidSpec {
                service: spec.name.clone(),
                reason: "injected failure".into(),
            });
        }
        self.record(format!("upsert {}", spec.name));
        self.prog.upsert_service(spec)
    }

    fn remove_service(&mut self, name: &str) -> Result<(), Error> {
        self.record(format!("remove {name}"));
        self.prog.remove_service(name)
    }

    fn service_names(&self) -> Vec<String> {
        self.prog.service_names()
    }

    fn dump(&self) -> Vec<ServiceDump> {
        self.prog.dump()
    }

    fn purge_stale(&mut self) -> Result<u64, Error> {
        self.prog.purge_stale();
        Ok(0)
    }

    /// No conntrack here: a flow count asked for is 0.
    fn endpoint_status(
        &self,
        addr: IpAddr,
        count_flows: bool,
    ) -> Result<Vec<EndpointStatus>, Error> {
        Ok(self
            .prog
            .endpoint_status(addr)
            .into_iter()
            .map(|(status, _, _)| EndpointStatus {
                flows: count_flows.then_some(0),
                ..status
            })
            .collect())
    }

    fn service_stats(&self, name: &str) -> Result<ServiceStats, Error> {
        let svc = self.prog.book.service(name)?;
        let backends: Vec<(SocketAddr, Stats)> = svc
            .backends
            .keys()
            .map(|addr| (*addr, self.counters.get(name, *addr)))
            .collect();
        let service = backends.iter().fold(Stats::default(), |t, (_, b)| Stats {
            packets: t.packets + b.packets,
            bytes: t.bytes + b.bytes,
            new_flows: t.new_flows + b.new_flows,
        });
        Ok(ServiceStats {
            service,
            backends,
            source_denied: 0,
        })
    }

    fn reasons(&self) -> Result<Vec<(Reason, u64)>, Error> {
        Ok(Reason::ALL.iter().map(|r| (*r, 0)).collect())
    }

    /// Entries in the in-memory maps themselves.
    /// Entries in the in-memory maps themselves.
    fn occupancy(&self) -> Result<MapOccupancy, Error> {
        Ok(self.prog.maps.occupancy())
    }

    fn usage(&self) -> Result<MapOccupancy, Error> {
        Ok(self.prog.usage())
    }

    fn capacities(&self) -> Capacities {
        self.prog.settings.capacities
    }
    fn conntrack_stats(&self) -> lb_datapath::ConntrackStats {
        lb_datapath::ConntrackStats::default()
    }
    fn set_node_addresses(&mut self, addrs: &[IpAddr]) -> Result<(), Error> {
        self.record(format!("node addresses {addrs:?}"));
        self.node_addresses = addrs.to_vec();
        Ok(())
    }
    fn node_addresses(&self) -> Result<Vec<IpAddr>, Error> {
        let mut all: Vec<IpAddr> = self
            .interface_addresses
            .iter()
            .chain(&self.node_addresses)
            .copied()
            .collect();
        all.sort();
        all.dedup();
        Ok(all)
    }
    fn set_interface_addresses(&mut self, addrs: &[IpAddr]) -> Result<AddressChanges, Error> {
        self.record(format!("interface addresses {addrs:?}"));
        self.replace_interface_addresses(addrs.to_vec())
    }
    fn update_interface_addresses(
        &mut self,
        added: &[IpAddr],
        removed: &[IpAddr],
    ) -> Result<AddressChanges, Error> {
        self.record(format!("interface addresses +{added:?} -{removed:?}"));
        let mut next = self.interface_addresses.clone();
        next.retain(|a| !removed.contains(a));
        next.extend(
            added
                .iter()
                .filter(|a| !next.contains(a))
                .collect::<Vec<_>>(),
        );
        self.replace_interface_addresses(next)
    }
    fn watch_interface_addresses(
        &mut self,
        sink: AddressSink,
    ) -> Result<Option<AddressWatch>, Error> {
        *self.address_feed.0.lock().expect("address feed") = Some(sink);
        Ok(Some(AddressWatch::new(())))
    }
    fn set_hash_seed(&mut self, seed: u32) -> Result<(), Error> {
        *self.hash_seed.lock().expect("hash seed") = Some(seed);
        self.prog.set_hash_seed(seed);
        Ok(())
    }
}

impl FakeDataPath {
    /// Makes `next` the interface addresses; what NodePorts started or stopped answering on
    /// (the Node object's addresses stay served).
    fn replace_interface_addresses(&mut self, next: Vec<IpAddr>) -> Result<AddressChanges, Error> {
        if self.fail_interface_addresses {
            return Err(Error::Interface {
                ifname: "*".into(),
                reason: "injected failure".into(),
            });
        }
        let before = self.node_addresses()?;
        let mut next = next;
        next.sort();
        next.dedup();
        self.interface_addresses = next;
        let after = self.node_addresses()?;
        Ok(AddressChanges {
            added: after
                .iter()
                .filter(|a| !before.contains(a))
                .copied()
                .collect(),
            removed: before
                .iter()
                .filter(|a| !after.contains(a))
                .copied()
                .collect(),
        })
    }
}

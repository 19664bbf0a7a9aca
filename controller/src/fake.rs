//! An in-memory [`DataPath`] for tests and golden files: it keeps the specs it was given,
//! hands out ids like the real one (lowest free, never 0) and dumps a readable text.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
};

use lb_datapath::{
    BackendDump, Capacities, DataPath, EndpointState, EndpointStatus, Error, MapOccupancy, Reason,
    ServiceDump, ServiceSpec, ServiceStats, Stats,
    datapath::{AddressChanges, AddressEvent, AddressSink, AddressWatch},
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

#[derive(Debug, Default)]
pub struct FakeDataPath {
    services: BTreeMap<String, (u32, ServiceSpec)>,
    /// A copy of `calls` readable while the fake sits behind a `Box<dyn DataPath>`.
    pub journal: Option<Journal>,
    /// The Node object's NodePort addresses last set.
    pub node_addresses: Vec<IpAddr>,
    /// Ids in use (the lowest free one is handed out).
    ids: std::collections::BTreeSet<u32>,
    /// Every call, in order ("upsert NAME" / "remove NAME"), for ordering assertions.
    pub calls: Vec<String>,
    /// Fail upserts of this service (error-path tests).
    pub fail_on: Option<String>,
    /// Refuse new services beyond this many, as a full service table would
    /// (`capacities.services`).
    pub max_services: Option<usize>,
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

impl FakeDataPath {
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
        self.services.keys().cloned().collect()
    }

    /// Services, frontends and backends with their states, one line each, sorted.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, (_, spec)) in &self.services {
            let mut fronts: Vec<String> = spec.frontends.iter().map(|f| f.to_string()).collect();
            fronts.sort();
            let _ = writeln!(
                out,
                "service {name} {} frontends=[{}]{}",
                spec.protocol,
                fronts.join(", "),
                spec.affinity
                    .map(|t| format!(" affinity=ClientIP/{}s", t.as_secs()))
                    .unwrap_or_default()
            );
            let mut backends: Vec<_> = spec.backends.iter().collect();
            backends.sort_by_key(|b| b.addr);
            for b in backends {
                let state = match b.state {
                    EndpointState::Ready => "ready",
                    EndpointState::ServingTerminating => "serving-terminating",
                    EndpointState::NotServing => "not-serving",
                };
                let _ = writeln!(out, "  backend {} {state}", b.addr);
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
        if let Some(max) = self.max_services
            && !self.services.contains_key(&spec.name)
            && self.services.len() >= max
        {
            return Err(Error::CapacityExceeded {
                what: "the service table",
                capacity: max as u32,
                setting: "capacities.services",
            });
        }
        self.record(format!("upsert {}", spec.name));
        let id = match self.services.get(&spec.name) {
            Some((id, _)) => *id,
            None => {
                let id = (1..).find(|i| !self.ids.contains(i)).expect("ids");
                self.ids.insert(id);
                id
            }
        };
        self.services.insert(spec.name.clone(), (id, spec.clone()));
        Ok(id)
    }

    fn remove_service(&mut self, name: &str) -> Result<(), Error> {
        self.record(format!("remove {name}"));
        let (id, _) = self
            .services
            .remove(name)
            .ok_or_else(|| Error::UnknownService(name.into()))?;
        self.ids.remove(&id);
        Ok(())
    }

    fn service_names(&self) -> Vec<String> {
        self.services.keys().cloned().collect()
    }

    fn dump(&self) -> Vec<ServiceDump> {
        self.services
            .iter()
            .map(|(name, (id, s))| ServiceDump {
                name: name.clone(),
                id: *id,
                protocol: s.protocol,
                frontends: s.frontends.clone(),
                table_size: 0,
                backends: s
                    .backends
                    .iter()
                    .enumerate()
                    .map(|(i, b)| BackendDump {
                        addr: b.addr,
                        id: i as u32 + 1,
                        state: b.state,
                        slots: 0,
                    })
                    .collect(),
            })
            .collect()
    }

    fn purge_stale(&mut self) -> Result<u64, Error> {
        Ok(0)
    }

    fn endpoint_status(
        &self,
        addr: IpAddr,
        count_flows: bool,
    ) -> Result<Vec<EndpointStatus>, Error> {
        let mut out = Vec::new();
        for (name, (_, s)) in &self.services {
            let ready = s.backends.iter().any(|b| b.state == EndpointState::Ready);
            for b in s.backends.iter().filter(|b| b.addr.ip() == addr) {
                let selectable = b.state == EndpointState::Ready
                    || (!ready && b.state == EndpointState::ServingTerminating);
                out.push(EndpointStatus {
                    service: name.clone(),
                    backend: b.addr,
                    state: b.state,
                    selectable,
                    flows: count_flows.then_some(0),
                });
            }
        }
        Ok(out)
    }

    fn service_stats(&self, name: &str) -> Result<ServiceStats, Error> {
        let (_, s) = self
            .services
            .get(name)
            .ok_or_else(|| Error::UnknownService(name.into()))?;
        let backends: Vec<(SocketAddr, Stats)> = s
            .backends
            .iter()
            .map(|b| (b.addr, self.counters.get(name, b.addr)))
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

    fn occupancy(&self) -> Result<MapOccupancy, Error> {
        Ok(MapOccupancy {
            frontends: self
                .services
                .values()
                .map(|(_, s)| s.frontends.len() as u64)
                .sum(),
            backends: self
                .services
                .values()
                .map(|(_, s)| s.backends.len() as u64)
                .sum(),
            ..Default::default()
        })
    }

    fn usage(&self) -> Result<MapOccupancy, Error> {
        self.occupancy()
    }

    fn capacities(&self) -> Capacities {
        Capacities::default()
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

//! The reconciler: the only writer of the data path. It is handed the desired specs of the
//! services that changed, compares them with what it applied for those services, and applies
//! the difference: new and changed specs first (each update is make before break inside the
//! data path), removals last. Work is proportional to the services handed over, never to all
//! of them. Idempotent: the same desired state twice writes nothing the second time.
//!
//! Restarts: the data path may hold services adopted from pins that no source has named yet.
//! They are never removed before every source finished its first full list
//! ([`Reconciler::prune_unowned`] refuses until [`Reconciler::allow_pruning`]).
//!
//! Interface addresses: the data path's watch reports the attached interfaces' addresses
//! ([`AddressEvent`]); the reconciler folds them ([`InterfaceAddresses`]) and writes only
//! the difference to the NodePort addresses ([`Reconciler::interface_address_events`]). The
//! first full list replaces every interface entry, so addresses a previous run left in the
//! pinned table and no attached interface has any more go then (logged by name).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    time::{Duration, Instant, SystemTime},
};

use lb_datapath::{
    DataPath, Error, ServiceSpec,
    datapath::{AddressChanges, AddressEvent, AddressSink, AddressWatch},
};

use crate::{desired::Specs, metrics, model::Key, tables::Triggers};

/// The digest of a spec that [`Reconciler`] keeps of what it applied.
fn digest(spec: &ServiceSpec) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    spec.hash(&mut h);
    h.finish()
}

/// What one reconcile round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Round {
    pub upserted: Vec<String>,
    pub removed: Vec<String>,
    /// (service, error) of every failed operation; the rest of the round still ran.
    pub errors: Vec<(String, String)>,
    /// Services not removed because not every source had synced yet.
    pub kept_unsynced: Vec<String>,
}

impl Round {
    pub fn wrote(&self) -> bool {
        !self.upserted.is_empty() || !self.removed.is_empty()
    }

    fn absorb(&mut self, other: Round) {
        self.upserted.extend(other.upserted);
        self.removed.extend(other.removed);
        self.errors.extend(other.errors);
        self.kept_unsynced.extend(other.kept_unsynced);
    }
}

pub struct Reconciler<D: DataPath> {
    dp: D,
    /// What was applied, per service: each spec name with a digest of the spec whose write
    /// succeeded (a digest, not a copy: 10 000 services' specs would be ~18 MiB twice, as the
    /// data path keeps them too; SipHash over the whole spec, so a change is missed only on a
    /// 64-bit collision).
    applied: HashMap<Key, BTreeMap<String, u64>>,
    /// The service that applied each data-path name.
    owners: HashMap<String, Key>,
    /// Services whose last write failed (retried by the loop): per data-path name, the
    /// error. A name is logged (and a capacity error counted) when its error changes, not
    /// on every retry.
    failed: BTreeMap<Key, BTreeMap<String, String>>,
    /// Services that failed in the round under way.
    failed_now: BTreeSet<Key>,
    /// Trigger times of changes not programmed yet (their service failed): observed once it
    /// is.
    triggers: Triggers,
    pruning_allowed: bool,
    /// The attached interfaces' addresses as the watch reported them.
    interfaces: InterfaceAddresses,
    /// The interface addresses last written (`None`: nothing written since the start, so
    /// the next write replaces every interface entry).
    interfaces_applied: Option<BTreeSet<IpAddr>>,
    /// The last write of interface addresses failed: the next one writes the full list.
    interfaces_failed: bool,
}

/// The attached interfaces' addresses, folded from the data path's watch: (ifindex,
/// address) pairs, so an address on two interfaces stays while either has it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct InterfaceAddresses {
    by_interface: BTreeSet<(u32, IpAddr)>,
    listed: bool,
}

impl InterfaceAddresses {
    /// Folds `events`; returns whether one of them was a full list.
    pub fn apply(&mut self, events: impl IntoIterator<Item = AddressEvent>) -> bool {
        let mut listed = false;
        for e in events {
            match e {
                AddressEvent::Listed(all) => {
                    self.by_interface = all.into_iter().collect();
                    self.listed = true;
                    listed = true;
                }
                AddressEvent::Added { ifindex, addr } => {
                    self.by_interface.insert((ifindex, addr));
                }
                AddressEvent::Removed { ifindex, addr } => {
                    self.by_interface.remove(&(ifindex, addr));
                }
            }
        }
        listed
    }

    /// Whether a full list arrived (before it, the fold knows only changes).
    pub fn listed(&self) -> bool {
        self.listed
    }

    /// The addresses, whatever interface has them.
    pub fn addresses(&self) -> BTreeSet<IpAddr> {
        self.by_interface.iter().map(|(_, a)| *a).collect()
    }
}

impl<D: DataPath> std::fmt::Debug for Reconciler<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("services", &self.applied.len())
            .field("failed", &self.failed.len())
            .field("pruning_allowed", &self.pruning_allowed)
            .finish_non_exhaustive()
    }
}

impl<D: DataPath> Reconciler<D> {
    pub fn new(dp: D) -> Self {
        Reconciler {
            dp,
            applied: HashMap::new(),
            owners: HashMap::new(),
            failed: BTreeMap::new(),
            failed_now: BTreeSet::new(),
            triggers: Triggers::new(),
            pruning_allowed: false,
            interfaces: InterfaceAddresses::default(),
            interfaces_applied: None,
            interfaces_failed: false,
        }
    }

    pub fn data_path(&self) -> &D {
        &self.dp
    }

    pub fn data_path_mut(&mut self) -> &mut D {
        &mut self.dp
    }

    /// Whether removals of unowned services are allowed (every source has listed once).
    pub fn pruning_allowed(&self) -> bool {
        self.pruning_allowed
    }

    /// Every source has delivered its full state once: from now on, services the data path
    /// holds that no source names are removed by [`Reconciler::prune_unowned`].
    pub fn allow_pruning(&mut self) {
        self.pruning_allowed = true;
    }

    /// Services whose last write failed, to be retried.
    pub fn failed(&self) -> impl Iterator<Item = &Key> {
        self.failed.keys()
    }

    /// The data-path names whose last write failed, with the error: their previous state
    /// (or nothing, for a new one) stays in force.
    pub fn failures(&self) -> BTreeMap<String, String> {
        self.failed
            .values()
            .flat_map(|m| m.iter().map(|(n, e)| (n.clone(), e.clone())))
            .collect()
    }

    /// Applies the desired specs of the services in `changes` (an empty map: the service is
    /// gone). `triggers`: the trigger times of the changes they carry; each service that is
    /// programmed by the round (nothing of it failed) observes its network-programming
    /// latency once per trigger time.
    pub fn reconcile(&mut self, changes: Vec<(Key, Specs)>, triggers: Triggers) -> Round {
        let started = Instant::now();
        let mut round = Round::default();
        let mut retry = Vec::new();
        let mut removals = Vec::new();
        for (key, want) in &changes {
            for (name, spec) in want {
                if self.applied.get(key).and_then(|h| h.get(name)) == Some(&digest(spec)) {
                    // Back to what is in force (a failed change was reverted).
                    self.clear_failure(key, name);
                    continue;
                }
                match self.upsert(key, spec) {
                    Ok(()) => {
                        self.clear_failure(key, name);
                        round.upserted.push(name.clone());
                    }
                    // A frontend may be moving from a service handled later in this round.
                    Err(Error::FrontendConflict { .. }) => retry.push((key, spec)),
                    Err(e) => self.fail(key, name, e, &mut round),
                }
            }
            if let Some(have) = self.applied.get(key) {
                removals.extend(
                    have.keys()
                        .filter(|n| !want.contains_key(*n))
                        .map(|n| (key.clone(), n.clone())),
                );
            }
        }
        for (key, name) in removals {
            self.remove(&key, &name, &mut round);
        }
        for (key, spec) in retry {
            match self.upsert(key, spec) {
                Ok(()) => {
                    self.clear_failure(key, &spec.name);
                    round.upserted.push(spec.name.clone());
                }
                Err(e) => self.fail(key, &spec.name, e, &mut round),
            }
        }
        for (key, times) in triggers {
            self.triggers.entry(key).or_default().extend(times);
        }
        let now = SystemTime::now();
        let mut latencies = Vec::new();
        for (key, want) in &changes {
            if !self.failed_now.contains(key) {
                self.failed.remove(key);
                let programmed = self.triggers.remove(key).unwrap_or_default();
                latencies.extend(programming_latencies(now, &programmed));
            } else if let Some(f) = self.failed.get_mut(key) {
                // Names the service no longer has are not failing any more.
                f.retain(|name, _| want.contains_key(name));
            }
        }
        self.failed_now.clear();
        metrics::services_not_programmed(self.failed.values().map(BTreeMap::len).sum());
        metrics::sync_done(started.elapsed(), &latencies);
        round
    }

    fn upsert(&mut self, key: &Key, spec: &ServiceSpec) -> Result<(), Error> {
        self.dp.upsert_service(spec)?;
        self.applied
            .entry(key.clone())
            .or_default()
            .insert(spec.name.clone(), digest(spec));
        self.owners.insert(spec.name.clone(), key.clone());
        Ok(())
    }

    fn clear_failure(&mut self, key: &Key, name: &str) {
        if let Some(f) = self.failed.get_mut(key)
            && f.remove(name).is_some()
        {
            tracing::info!(service = %name, "a service that failed is programmed now");
            if f.is_empty() {
                self.failed.remove(key);
            }
        }
    }

    fn fail(&mut self, key: &Key, name: &str, e: Error, round: &mut Round) {
        metrics::reconcile_error("upsert");
        let msg = e.to_string();
        let failed = self.failed.entry(key.clone()).or_default();
        // Logged and counted once per distinct error of a name (a change of the service or of
        // what blocks it), not on every retry or resync.
        if failed.get(name) != Some(&msg) {
            if let Error::CapacityExceeded { setting, .. } = &e {
                metrics::capacity_error(setting);
            }
            tracing::warn!(service = %name, error = %msg, "applying a service failed; its previous state stays in force (retried)");
            failed.insert(name.to_string(), msg.clone());
        }
        self.failed_now.insert(key.clone());
        round.errors.push((name.to_string(), msg));
    }

    fn remove(&mut self, key: &Key, name: &str, round: &mut Round) {
        match self.dp.remove_service(name) {
            Ok(()) | Err(Error::UnknownService(_)) => {
                if let Some(h) = self.applied.get_mut(key) {
                    h.remove(name);
                    if h.is_empty() {
                        self.applied.remove(key);
                    }
                }
                self.owners.remove(name);
                round.removed.push(name.to_string());
            }
            Err(e) => {
                metrics::reconcile_error("remove");
                round.errors.push((name.to_string(), e.to_string()));
            }
        }
    }

    /// Removes the services the data path holds that no source named (adopted from pins and
    /// since deleted), once pruning is allowed. One pass over the names the data path holds:
    /// run after the first full sync and by the rare resync, never per change.
    pub fn prune_unowned(&mut self) -> Round {
        let mut round = Round::default();
        for name in self.dp.service_names() {
            if self.owners.contains_key(&name) {
                continue;
            }
            if !self.pruning_allowed {
                round.kept_unsynced.push(name);
                continue;
            }
            match self.dp.remove_service(&name) {
                Ok(()) | Err(Error::UnknownService(_)) => round.removed.push(name),
                Err(e) => {
                    metrics::reconcile_error("remove");
                    round.errors.push((name, e.to_string()));
                }
            }
        }
        round
    }

    /// Sets the flow hash and Maglev seed (before the first write; see
    /// [`crate::agent::seed`]).
    pub fn set_hash_seed(&mut self, seed: u32) -> Result<(), lb_datapath::Error> {
        self.dp.set_hash_seed(seed)
    }

    /// This node's Node addresses as NodePort addresses (besides the attached interfaces').
    pub fn set_node_addresses(&mut self, addrs: &[std::net::IpAddr]) -> Round {
        let mut round = Round::default();
        if let Err(e) = self.dp.set_node_addresses(addrs) {
            metrics::reconcile_error("node_addresses");
            tracing::warn!(error = %e, "setting the Node's addresses as NodePort addresses failed");
            round
                .errors
                .push(("<node addresses>".into(), e.to_string()));
        } else {
            metrics::node_addresses("node_object", addrs.len());
            tracing::info!(addresses = ?addrs, "NodePorts also answer on the Node's addresses");
        }
        round
    }

    /// Starts the data path's watch of the attached interfaces' addresses (it only reports;
    /// its events come back through [`Reconciler::interface_address_events`]).
    pub fn watch_interface_addresses(
        &mut self,
        sink: AddressSink,
    ) -> Result<Option<AddressWatch>, Error> {
        self.dp.watch_interface_addresses(sink)
    }

    /// Applies a batch of the watch's events to the NodePort addresses. Before the first full
    /// list, nothing is written. The first write (and any after a failure or a new full
    /// list) replaces every interface entry: entries of addresses no interface has any more,
    /// left by a previous run, are removed and logged. After it, only the addresses that
    /// changed are written (a lookup and a write each).
    pub fn interface_address_events(&mut self, events: Vec<AddressEvent>) -> Round {
        let listed = self.interfaces.apply(events);
        if !self.interfaces.listed() {
            return Round::default();
        }
        self.write_interface_addresses(listed)
    }

    /// The attached interfaces' addresses, once the watch listed them.
    pub fn interface_addresses(&self) -> Option<BTreeSet<IpAddr>> {
        self.interfaces
            .listed()
            .then(|| self.interfaces.addresses())
    }

    /// Whether the last write of interface addresses failed (retried by the loop).
    pub fn interface_addresses_failed(&self) -> bool {
        self.interfaces_failed
    }

    /// The safety net (retries and the rare resync): writes the full list of interface
    /// addresses again (one pass over the node address table; nothing written if nothing
    /// differs).
    pub fn resync_interface_addresses(&mut self) -> Round {
        if !self.interfaces.listed() {
            return Round::default();
        }
        let before = self.interfaces_applied.clone();
        let round = self.write_interface_addresses(true);
        if round.errors.is_empty() && before.is_some() && before != self.interfaces_applied {
            tracing::warn!("the resync found interface addresses the incremental path missed");
        }
        round
    }

    fn write_interface_addresses(&mut self, full: bool) -> Round {
        let mut round = Round::default();
        let want = self.interfaces.addresses();
        let first = self.interfaces_applied.is_none();
        let result = match &self.interfaces_applied {
            Some(have) if !full && !self.interfaces_failed => {
                let added: Vec<IpAddr> = want.difference(have).copied().collect();
                let removed: Vec<IpAddr> = have.difference(&want).copied().collect();
                if added.is_empty() && removed.is_empty() {
                    return round;
                }
                self.dp.update_interface_addresses(&added, &removed)
            }
            _ => self
                .dp
                .set_interface_addresses(&want.iter().copied().collect::<Vec<_>>()),
        };
        match result {
            Ok(changes) => {
                log_interface_changes(&changes, first);
                if first {
                    tracing::info!(addresses = ?want, "NodePorts follow the attached interfaces' addresses");
                }
                metrics::node_address_changes(&changes);
                metrics::node_addresses("interface", want.len());
                self.interfaces_applied = Some(want);
                self.interfaces_failed = false;
            }
            Err(e) => {
                metrics::reconcile_error("interface_addresses");
                if !self.interfaces_failed {
                    tracing::warn!(error = %e, "writing the interfaces' NodePort addresses failed (retried)");
                }
                self.interfaces_failed = true;
                round
                    .errors
                    .push(("<interface addresses>".into(), e.to_string()));
            }
        }
        round
    }

    /// Housekeeping: releases the ids of removed services and backends (see
    /// `DataPath::purge_stale`: no flow table is walked; the data path's GC deletes their
    /// entries). Not on the update path.
    pub fn purge(&mut self) -> Round {
        let mut round = Round::default();
        if let Err(e) = self.dp.purge_stale() {
            metrics::reconcile_error("purge");
            round.errors.push(("<purge>".into(), e.to_string()));
        }
        round
    }

    /// A full pass for tests and the resync: `changes` for every service, then pruning.
    pub fn reconcile_all(&mut self, changes: Vec<(Key, Specs)>) -> Round {
        let mut round = self.reconcile(changes, Triggers::new());
        round.absorb(self.prune_unowned());
        round
    }

    /// The services this reconciler applied, for the resync (services that vanished from
    /// the tables must be handed back as empty changes).
    pub fn applied_services(&self) -> impl Iterator<Item = &Key> {
        self.applied.keys()
    }
}

/// One line per NodePort address that came or went; at the first write after a start, the
/// removed ones are a previous run's (no attached interface has them any more).
fn log_interface_changes(changes: &AddressChanges, first: bool) {
    for a in &changes.added {
        tracing::info!(address = %a, "NodePorts answer on a new address of an attached interface");
    }
    if first {
        if !changes.removed.is_empty() {
            tracing::info!(
                removed = ?changes.removed,
                "removed NodePort addresses of a previous run that no attached interface has any more"
            );
        }
    } else {
        for a in &changes.removed {
            tracing::info!(address = %a, "NodePorts no longer answer on an address an attached interface lost");
        }
    }
}

/// One round as the reconcile loop runs it, for tests and tools that hold the tables and
/// the reconciler themselves: the services changed since the last round, their desired
/// specs, applied.
pub fn sync_dirty<D: DataPath>(
    tables: &mut crate::tables::Tables,
    probes: &crate::desired::ProbeResults,
    rec: &mut Reconciler<D>,
) -> Round {
    let dirty = tables.take_dirty();
    let work = dirty
        .services
        .into_iter()
        .map(|k| {
            let specs = crate::desired::of_service(tables, &k, probes);
            (k, specs)
        })
        .collect();
    rec.reconcile(work, dirty.triggers)
}

/// kube-proxy's network-programming latency: from each trigger time of a service's changes
/// to `now`, when they are programmed (a trigger time in the future, from a skewed clock,
/// counts as 0).
pub fn programming_latencies<'a>(
    now: SystemTime,
    triggers: impl IntoIterator<Item = &'a SystemTime>,
) -> impl Iterator<Item = Duration> {
    triggers
        .into_iter()
        .map(move |t| now.duration_since(*t).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use lb_datapath::{Frontend, Protocol};
    use metrics_exporter_prometheus::PrometheusBuilder;

    use super::*;
    use crate::fake::FakeDataPath;

    fn key(name: &str) -> Key {
        Key {
            namespace: "default".into(),
            name: name.into(),
        }
    }

    /// One data-path spec of service `name` (port `port`).
    fn specs(name: &str, port: u16) -> Specs {
        let spec = ServiceSpec {
            name: format!("default/{name}:http/TCP"),
            protocol: Protocol::Tcp,
            frontends: vec![Frontend::NodePort(port)],
            backends: Vec::new(),
            affinity: None,
            ..Default::default()
        };
        [(spec.name.clone(), spec)].into_iter().collect()
    }

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    }

    /// A service that does not fit is retried every round but reported (logged, counted by
    /// setting) once per change of its error; it is listed as failing with the setting to
    /// raise, and the gauge of services not programmed follows it until it fits.
    #[test]
    fn a_service_that_does_not_fit_is_reported_once_per_change() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let capacity_errors = r#"sluice_capacity_errors_total{setting="capacities.services"}"#;
        let not_programmed = "sluice_services_not_programmed";
        let fake = FakeDataPath::with_capacities(lb_datapath::Capacities {
            services: 1,
            ..Default::default()
        });
        let mut rec = Reconciler::new(fake);
        let round = |rec: &mut Reconciler<FakeDataPath>, changes: Vec<(Key, Specs)>| {
            ::metrics::with_local_recorder(&recorder, || rec.reconcile(changes, Triggers::new()))
        };
        let r = round(
            &mut rec,
            vec![(key("a"), specs("a", 30001)), (key("b"), specs("b", 30002))],
        );
        assert_eq!(r.upserted, vec!["default/a:http/TCP".to_string()]);
        assert_eq!(r.errors.len(), 1);
        let failures = rec.failures();
        let error = &failures["default/b:http/TCP"];
        assert!(error.contains("capacities.services"), "{error}");
        assert_eq!(rec.failed().cloned().collect::<Vec<_>>(), vec![key("b")]);
        assert_eq!(sample(&handle.render(), capacity_errors), Some(1.0));
        assert_eq!(sample(&handle.render(), not_programmed), Some(1.0));
        // Retries and resyncs fail the same way: tried again, not reported again.
        for _ in 0..3 {
            let r = round(&mut rec, vec![(key("b"), specs("b", 30002))]);
            assert_eq!(r.errors.len(), 1, "still retried");
        }
        assert_eq!(sample(&handle.render(), capacity_errors), Some(1.0));
        // A change of the service that still does not fit: the same error, not a new report;
        // another error (an injected one) is.
        round(&mut rec, vec![(key("b"), specs("b", 30003))]);
        assert_eq!(sample(&handle.render(), capacity_errors), Some(1.0));
        rec.data_path_mut().fail_on = Some("default/b:http/TCP".into());
        round(&mut rec, vec![(key("b"), specs("b", 30003))]);
        assert!(rec.failures()["default/b:http/TCP"].contains("injected"));
        rec.data_path_mut().fail_on = None;
        round(&mut rec, vec![(key("b"), specs("b", 30003))]);
        assert_eq!(sample(&handle.render(), capacity_errors), Some(2.0));
        // Room made (a removed; removals run after a round's upserts, so b fits on its
        // next retry): b is programmed, nothing fails any more.
        round(&mut rec, vec![(key("a"), Specs::new())]);
        let r = round(&mut rec, vec![(key("b"), specs("b", 30003))]);
        assert_eq!(r.upserted, vec!["default/b:http/TCP".to_string()]);
        assert!(rec.failures().is_empty());
        assert_eq!(rec.failed().count(), 0);
        assert_eq!(sample(&handle.render(), not_programmed), Some(0.0));
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The interface addresses: nothing written before the first full list; the first list
    /// replaces every interface entry (a previous run's address goes, the Node's stays);
    /// after it only differences are written, and an address on two interfaces stays
    /// until both lost it; a failed write is retried as a full list; the gauge follows.
    #[test]
    fn interface_addresses_follow_the_watch_writing_only_what_changed() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let (mut fake, journal) = FakeDataPath::with_journal();
        // Left by a previous run, and the Node object's.
        fake.interface_addresses = vec![ip("192.0.2.9")];
        fake.node_addresses = vec![ip("192.0.2.50")];
        let mut rec = Reconciler::new(fake);
        let events = |rec: &mut Reconciler<FakeDataPath>, e: Vec<AddressEvent>| {
            ::metrics::with_local_recorder(&recorder, || rec.interface_address_events(e))
        };
        let calls = || journal.lock().unwrap().clone();
        let added = |ifindex, addr: &str| AddressEvent::Added {
            ifindex,
            addr: ip(addr),
        };
        let removed = |ifindex, addr: &str| AddressEvent::Removed {
            ifindex,
            addr: ip(addr),
        };

        events(&mut rec, vec![added(2, "192.0.2.7")]);
        assert!(calls().is_empty(), "nothing before the first list");
        assert_eq!(rec.interface_addresses(), None);

        events(
            &mut rec,
            vec![AddressEvent::Listed(vec![
                (2, ip("192.0.2.1")),
                (2, ip("2001:db8:1::1")),
            ])],
        );
        assert_eq!(
            calls(),
            vec!["interface addresses [192.0.2.1, 2001:db8:1::1]".to_string()]
        );
        assert_eq!(
            rec.data_path().node_addresses().unwrap(),
            vec![ip("192.0.2.1"), ip("192.0.2.50"), ip("2001:db8:1::1")],
            "the previous run's 192.0.2.9 is gone, the Node's address stays"
        );
        let gauge = r#"sluice_node_addresses{origin="interface"}"#;
        assert_eq!(sample(&handle.render(), gauge), Some(2.0));

        // One added on two interfaces, then lost by one: written once, kept.
        events(&mut rec, vec![added(2, "192.0.2.3"), added(3, "192.0.2.3")]);
        events(&mut rec, vec![removed(2, "192.0.2.3")]);
        assert_eq!(
            calls()[1..],
            ["interface addresses +[192.0.2.3] -[]".to_string()]
        );
        events(&mut rec, vec![removed(3, "192.0.2.3")]);
        assert_eq!(
            calls()[2..],
            ["interface addresses +[] -[192.0.2.3]".to_string()]
        );
        assert_eq!(
            rec.interface_addresses(),
            Some([ip("192.0.2.1"), ip("2001:db8:1::1")].into_iter().collect())
        );
        assert_eq!(
            sample(
                &handle.render(),
                r#"sluice_node_address_changes_total{change="removed"}"#
            ),
            Some(2.0),
            "the previous run's address and 192.0.2.3"
        );

        // A failed write is retried with the full list.
        rec.data_path_mut().fail_interface_addresses = true;
        let r = events(&mut rec, vec![added(2, "192.0.2.4")]);
        assert_eq!(r.errors.len(), 1);
        assert!(rec.interface_addresses_failed());
        rec.data_path_mut().fail_interface_addresses = false;
        let r = rec.resync_interface_addresses();
        assert!(r.errors.is_empty());
        assert!(!rec.interface_addresses_failed());
        assert_eq!(
            calls().last().unwrap(),
            "interface addresses [192.0.2.1, 192.0.2.4, 2001:db8:1::1]"
        );
    }
}

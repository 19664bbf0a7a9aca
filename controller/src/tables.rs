//! The tables every source writes into and the reconciler reads from: the models by key,
//! indexed so that one changed object costs work proportional to it (a slice knows its
//! service; a service knows its slices), and the set of services whose data-path state may
//! have changed since the last round ("dirty"). Cilium's StateDB and kube-rs' reflector
//! stores play this part in the anchors.
//!
//! ReplicaSets are indexed by their Deployment, and slices by the ReplicaSets their
//! endpoints' pods belong to (the pod name without its last `-segment`), so a rollout view
//! reads one Deployment's ReplicaSets and their slices, never every slice.
//!
//! Nothing here walks every object on a change; [`Tables::service_keys`] exists only for the
//! rare full resync.
//!
//! Frontends are indexed too: (protocol, address or NodePort, port) -> the service holding
//! it, kept up to date on every put and removal. A service that asks for a frontend another
//! service holds is rejected ([`Rejected::Conflict`], naming the holder), and so is one that
//! breaks the node's [`Protections`]: the earlier holder keeps the frontend and a rejected
//! object changes nothing.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
    time::{Instant, SystemTime},
};

use lb_datapath::Protocol;
use tokio::sync::Notify;

use crate::{
    health::Probe,
    model::{
        Invalid, Key, NodeModel, ReplicaSetModel, ServiceModel, SliceModel, Translated,
        WorkloadModel,
    },
    objects::{Kind, Object},
    protections::Protections,
};

/// One frontend a service takes: `addr` `None` is the NodePort on every node address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKey {
    pub protocol: Protocol,
    pub addr: Option<IpAddr>,
    pub port: u16,
}

impl std::fmt::Display for FrontendKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.addr {
            None => write!(f, "nodePort {}/{}", self.port, self.protocol),
            Some(a) => write!(
                f,
                "{}/{}",
                std::net::SocketAddr::new(a, self.port),
                self.protocol
            ),
        }
    }
}

/// Every frontend of a service (clusterIPs, externalIPs, LoadBalancer IPs, NodePorts).
pub fn frontends_of(m: &ServiceModel) -> BTreeSet<FrontendKey> {
    let mut out = BTreeSet::new();
    for p in &m.ports {
        let addrs = m
            .cluster_ips
            .iter()
            .chain(&m.external_ips)
            .chain(&m.load_balancer_ips);
        for a in addrs {
            out.insert(FrontendKey {
                protocol: p.protocol,
                addr: Some(*a),
                port: p.port,
            });
        }
        if let Some(n) = p.node_port {
            out.insert(FrontendKey {
                protocol: p.protocol,
                addr: None,
                port: n,
            });
        }
    }
    out
}

/// Why an object was not taken into the tables.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// The object is invalid, or breaks the node's protections.
    #[error("{0}")]
    Invalid(#[from] Invalid),
    /// A frontend it asks for is held by another service (which keeps it).
    #[error("frontend {frontend} is already used by Service {holder}")]
    Conflict { frontend: FrontendKey, holder: Key },
}

/// The model of one object, before it goes into the tables.
#[derive(Clone, Debug, PartialEq)]
pub enum Model {
    Service(Translated<ServiceModel>),
    Slice(Translated<SliceModel>),
    Workload(WorkloadModel),
    ReplicaSet(ReplicaSetModel),
    Node(NodeModel),
}

/// Translates (and so validates) an object; pure.
pub fn translate(obj: &Object) -> Result<Model, Invalid> {
    Ok(match obj {
        Object::Service(s) => Model::Service(ServiceModel::from_object(s)?),
        Object::EndpointSlice(s) => Model::Slice(SliceModel::from_object(s)?),
        Object::Deployment(d) => Model::Workload(WorkloadModel::from_object(d)?),
        Object::ReplicaSet(r) => Model::ReplicaSet(ReplicaSetModel::from_object(r)?),
        Object::Node(n) => Model::Node(NodeModel::from_object(n)?),
    })
}

/// Per service, the `endpoints.kubernetes.io/last-change-trigger-time`s of its slices that
/// changed since it was last programmed (each time once).
pub type Triggers = HashMap<Key, BTreeSet<SystemTime>>;

/// Services to reconcile, taken by the reconcile loop.
#[derive(Debug, Default)]
pub struct Dirty {
    pub services: BTreeSet<Key>,
    /// When the oldest of these changes was seen by a source.
    pub since: Option<Instant>,
    /// The trigger times these changes carry (network-programming latency).
    pub triggers: Triggers,
}

#[derive(Debug)]
pub struct Tables {
    services: HashMap<Key, ServiceModel>,
    /// Services skipped as kube-proxy skips them, with why (for status views).
    skipped: HashMap<Key, String>,
    slices: HashMap<Key, SliceModel>,
    slices_of: HashMap<Key, BTreeSet<Key>>,
    /// Slices that declare a probe.
    probed: BTreeSet<Key>,
    workloads: BTreeMap<Key, WorkloadModel>,
    replicasets: BTreeMap<Key, ReplicaSetModel>,
    /// The ReplicaSets each Deployment owns.
    replicasets_of: HashMap<Key, BTreeSet<Key>>,
    /// The slices holding endpoints whose pod would belong to a ReplicaSet, by the
    /// ReplicaSet's key (whether or not that ReplicaSet is known).
    slices_of_replicaset: HashMap<Key, BTreeSet<Key>>,
    nodes: BTreeMap<String, NodeModel>,
    /// Which service holds each frontend.
    frontends: HashMap<FrontendKey, Key>,
    /// What services may not take on this node.
    protections: Protections,
    /// The UID of the `default/kubernetes` Service (Kubernetes mode: names the cluster).
    cluster_uid: Option<String>,
    dirty: Dirty,
    /// Nodes whose object changed since [`Tables::take_node_change`] last looked.
    nodes_changed: BTreeSet<String>,
    /// Services with a health-check node port.
    health_checked: BTreeSet<Key>,
    /// Services whose health check may have changed since
    /// [`Tables::take_health_check_changes`] (they have one, or just lost it).
    health_checks_dirty: BTreeSet<Key>,
    /// Notified when `health_checks_dirty` gains a service.
    health_checks_changed: Arc<Notify>,
    /// Bumped on every change of any table.
    pub generation: u64,
    /// Trigger times before this are not recorded: as kube-proxy, changes from before the
    /// agent started were programmed by its previous run (or describe history), and would
    /// report hours of latency after every restart.
    pub triggers_since: SystemTime,
}

impl Default for Tables {
    fn default() -> Self {
        Tables {
            services: HashMap::new(),
            skipped: HashMap::new(),
            slices: HashMap::new(),
            slices_of: HashMap::new(),
            probed: BTreeSet::new(),
            workloads: BTreeMap::new(),
            replicasets: BTreeMap::new(),
            replicasets_of: HashMap::new(),
            slices_of_replicaset: HashMap::new(),
            nodes: BTreeMap::new(),
            frontends: HashMap::new(),
            protections: Protections::default(),
            cluster_uid: None,
            dirty: Dirty::default(),
            nodes_changed: BTreeSet::new(),
            health_checked: BTreeSet::new(),
            health_checks_dirty: BTreeSet::new(),
            health_checks_changed: Arc::new(Notify::new()),
            generation: 0,
            triggers_since: SystemTime::now(),
        }
    }
}

/// The ReplicaSet keys a slice's endpoints name (candidates, deduplicated).
fn replicasets_named(slice: &SliceModel) -> BTreeSet<Key> {
    slice
        .endpoints
        .iter()
        .filter_map(|e| e.replicaset_name())
        .map(|rs| Key::new(slice.key.namespace.clone(), rs))
        .collect()
}

/// Removes `item` from the set under `key`, and the set once empty.
fn unindex(index: &mut HashMap<Key, BTreeSet<Key>>, key: &Key, item: &Key) {
    if let Some(set) = index.get_mut(key) {
        set.remove(item);
        if set.is_empty() {
            index.remove(key);
        }
    }
}

impl Tables {
    fn touch(&mut self, service: Option<Key>) {
        self.generation += 1;
        if let Some(s) = service {
            if self.health_checked.contains(&s) {
                self.health_check_changed(s.clone());
            }
            self.dirty.services.insert(s);
            self.dirty.since.get_or_insert_with(Instant::now);
        }
    }

    fn health_check_changed(&mut self, service: Key) {
        if self.health_checks_dirty.insert(service) {
            self.health_checks_changed.notify_one();
        }
    }

    /// Keeps the index of services with a health-check node port: `has` whether `key` has
    /// one now (a service that lost it is marked here; one that has it, by `touch`).
    fn index_health_check(&mut self, key: &Key, has: bool) {
        if has {
            self.health_checked.insert(key.clone());
        } else if self.health_checked.remove(key) {
            self.health_check_changed(key.clone());
        }
    }

    /// Translates and puts an object. An invalid object, or a service that conflicts with
    /// another or breaks the node's protections, changes nothing (a source that had a good
    /// version keeps it in force). Returns whether anything changed.
    pub fn apply(&mut self, obj: &Object) -> Result<bool, Rejected> {
        let key = Key::of(obj.kind(), obj.metadata());
        let model = self.check(obj)?;
        if let Object::Service(s) = obj
            && key.namespace == "default"
            && key.name == "kubernetes"
        {
            self.cluster_uid = s.metadata.uid.clone();
        }
        Ok(self.put(key, model))
    }

    /// Translates an object and checks a service against the frontend index and the
    /// protections, without changing anything.
    pub fn check(&self, obj: &Object) -> Result<Model, Rejected> {
        let model = translate(obj)?;
        if let Model::Service(Translated::Model(m)) = &model {
            self.check_service(m)?;
        }
        Ok(model)
    }

    /// Whether `m` may take its frontends: none held by another service (the first such is
    /// the error), no NodePort the protections refuse, no address of the node.
    pub fn check_service(&self, m: &ServiceModel) -> Result<(), Rejected> {
        let mut problems = Vec::new();
        let node_addrs = self.node_addresses();
        for f in frontends_of(m) {
            let holder = self.frontends.get(&f);
            if let Some(h) = holder
                && *h != m.key
            {
                return Err(Rejected::Conflict {
                    frontend: f,
                    holder: h.clone(),
                });
            }
            match f.addr {
                None => problems.extend(self.protections.node_port_problem(
                    f.protocol,
                    f.port,
                    holder.is_none(),
                )),
                Some(a) if node_addrs.contains(&a) => {
                    let p = format!(
                        "{a} is an address of this node: a service address (clusterIP, \
                         externalIP, LoadBalancer ingress) must not be one (its traffic \
                         belongs to the node)"
                    );
                    if !problems.contains(&p) {
                        problems.push(p);
                    }
                }
                Some(_) => {}
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Rejected::Invalid(Invalid(problems)))
        }
    }

    /// This node's name (from the protections; `None`: unknown, every endpoint is local).
    pub fn node_name(&self) -> Option<&str> {
        self.protections.node_name.as_deref()
    }

    /// Takes the services whose health-check node port may have changed (they have one, or
    /// lost it) since the last call.
    pub fn take_health_check_changes(&mut self) -> BTreeSet<Key> {
        std::mem::take(&mut self.health_checks_dirty)
    }

    /// Notified (one stored permit) when a service's health check may have changed.
    pub fn health_checks_changed(&self) -> Arc<Notify> {
        self.health_checks_changed.clone()
    }

    /// This node's addresses: the attached interfaces' and its Node object's.
    pub fn node_addresses(&self) -> BTreeSet<IpAddr> {
        let mut out = self.protections.interface_addresses.clone();
        if let Some(n) = self
            .protections
            .node_name
            .as_ref()
            .and_then(|n| self.nodes.get(n))
        {
            out.extend(n.addresses.iter().copied());
        }
        out
    }

    /// Sets what services may not take. Services already in the tables keep what they hold
    /// (the agent sets this before any source starts).
    pub fn set_protections(&mut self, p: Protections) {
        self.protections = p;
    }

    pub fn protections(&self) -> &Protections {
        &self.protections
    }

    /// The UID of the `default/kubernetes` Service, once applied.
    pub fn cluster_uid(&self) -> Option<&str> {
        self.cluster_uid.as_deref()
    }

    /// The service holding a frontend.
    pub fn frontend_holder(&self, f: &FrontendKey) -> Option<&Key> {
        self.frontends.get(f)
    }

    /// Moves the frontend index from `old`'s frontends to `new`.
    /// A frontend another service holds is left to it ([`Tables::check_service`] refuses
    /// such a model before it gets here).
    fn reindex(&mut self, key: &Key, old: Option<&ServiceModel>, new: BTreeSet<FrontendKey>) {
        let old = old.map(frontends_of).unwrap_or_default();
        for f in old.difference(&new) {
            if self.frontends.get(f) == Some(key) {
                self.frontends.remove(f);
            }
        }
        for f in new.difference(&old) {
            self.frontends.entry(*f).or_insert_with(|| key.clone());
        }
    }

    /// Puts a translated model under `key`. Returns whether anything changed. Unchecked:
    /// [`Tables::apply`] checks services first.
    pub fn put(&mut self, key: Key, model: Model) -> bool {
        match model {
            Model::Service(Translated::Model(m)) => {
                self.skipped.remove(&key);
                if self.services.get(&key) == Some(&m) {
                    return false;
                }
                let fronts = frontends_of(&m);
                self.index_health_check(&key, m.health_check_node_port.is_some());
                let old = self.services.insert(key.clone(), m);
                self.reindex(&key, old.as_ref(), fronts);
                self.touch(Some(key));
            }
            Model::Service(Translated::Skipped(why)) => {
                self.index_health_check(&key, false);
                let old = self.services.remove(&key);
                self.reindex(&key, old.as_ref(), BTreeSet::new());
                let had = old.is_some();
                let same = self.skipped.get(&key) == Some(&why);
                self.skipped.insert(key.clone(), why);
                if !had && same {
                    return false;
                }
                self.touch(had.then_some(key));
            }
            Model::Slice(Translated::Model(m)) => {
                if self.slices.get(&key) == Some(&m) {
                    return false;
                }
                let service = m.service.clone();
                if m.probe.is_some() {
                    self.probed.insert(key.clone());
                } else {
                    self.probed.remove(&key);
                }
                let trigger = m.trigger_time.filter(|t| *t >= self.triggers_since);
                let replicasets = replicasets_named(&m);
                let old = self.slices.insert(key.clone(), m);
                let old_trigger = old.as_ref().and_then(|o| o.trigger_time);
                if let Some(old) = old {
                    for rs in replicasets_named(&old).difference(&replicasets) {
                        unindex(&mut self.slices_of_replicaset, rs, &key);
                    }
                    if old.service != service {
                        self.unlink(&old.service, &key);
                        self.touch(Some(old.service));
                    }
                }
                for rs in replicasets {
                    self.slices_of_replicaset
                        .entry(rs)
                        .or_default()
                        .insert(key.clone());
                }
                self.slices_of
                    .entry(service.clone())
                    .or_default()
                    .insert(key);
                // A change that kept its trigger time (a label edit) is not a new trigger.
                if let Some(t) = trigger.filter(|t| old_trigger != Some(*t)) {
                    self.dirty
                        .triggers
                        .entry(service.clone())
                        .or_default()
                        .insert(t);
                }
                self.touch(Some(service));
            }
            Model::Slice(Translated::Skipped(_)) => return self.remove(Kind::EndpointSlice, &key),
            Model::Workload(m) => {
                if self.workloads.get(&key) == Some(&m) {
                    return false;
                }
                self.workloads.insert(key, m);
                self.touch(None);
            }
            Model::ReplicaSet(m) => {
                if self.replicasets.get(&key) == Some(&m) {
                    return false;
                }
                let deployment = m.deployment.clone();
                if let Some(old) = self.replicasets.insert(key.clone(), m)
                    && let Some(d) = old.deployment
                    && deployment.as_ref() != Some(&d)
                {
                    unindex(&mut self.replicasets_of, &d, &key);
                }
                if let Some(d) = deployment {
                    self.replicasets_of.entry(d).or_default().insert(key);
                }
                self.touch(None);
            }
            Model::Node(m) => {
                if self.nodes.get(&key.name) == Some(&m) {
                    return false;
                }
                self.nodes_changed.insert(key.name.clone());
                self.nodes.insert(key.name, m);
                self.touch(None);
            }
        }
        true
    }

    fn unlink(&mut self, service: &Key, slice: &Key) {
        unindex(&mut self.slices_of, service, slice);
    }

    /// Removes an object. Returns whether it was there.
    pub fn remove(&mut self, kind: Kind, key: &Key) -> bool {
        match kind {
            Kind::Service => {
                self.index_health_check(key, false);
                let skipped = self.skipped.remove(key).is_some();
                let old = self.services.remove(key);
                self.reindex(key, old.as_ref(), BTreeSet::new());
                let had = old.is_some();
                if had || skipped {
                    self.touch(had.then(|| key.clone()));
                }
                had || skipped
            }
            Kind::EndpointSlice => {
                let Some(old) = self.slices.remove(key) else {
                    return false;
                };
                self.probed.remove(key);
                for rs in replicasets_named(&old) {
                    unindex(&mut self.slices_of_replicaset, &rs, key);
                }
                self.unlink(&old.service, key);
                self.touch(Some(old.service));
                true
            }
            Kind::Deployment => {
                let had = self.workloads.remove(key).is_some();
                if had {
                    self.touch(None);
                }
                had
            }
            Kind::ReplicaSet => {
                let Some(old) = self.replicasets.remove(key) else {
                    return false;
                };
                if let Some(d) = &old.deployment {
                    unindex(&mut self.replicasets_of, d, key);
                }
                self.touch(None);
                true
            }
            Kind::Node => {
                let had = self.nodes.remove(&key.name).is_some();
                if had {
                    self.nodes_changed.insert(key.name.clone());
                    self.touch(None);
                }
                had
            }
        }
    }

    /// Marks a service for the next round (e.g. a probe verdict of one of its endpoints
    /// changed).
    pub fn mark_dirty(&mut self, service: Key) {
        self.touch(Some(service));
    }

    /// Takes the services changed since the last call.
    pub fn take_dirty(&mut self) -> Dirty {
        std::mem::take(&mut self.dirty)
    }

    /// Whether a change is waiting for the reconciler, and since when.
    pub fn pending_since(&self) -> Option<Instant> {
        self.dirty.since
    }

    pub fn service(&self, key: &Key) -> Option<&ServiceModel> {
        self.services.get(key)
    }

    /// Why a service is not proxied, if it was skipped.
    pub fn skipped(&self, key: &Key) -> Option<&str> {
        self.skipped.get(key).map(String::as_str)
    }

    /// The slices of a service.
    pub fn slices_of<'a>(&'a self, service: &Key) -> impl Iterator<Item = &'a SliceModel> {
        self.slices_of
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|k| self.slices.get(k))
    }

    pub fn slice(&self, key: &Key) -> Option<&SliceModel> {
        self.slices.get(key)
    }

    /// Every service key: for the full resync only.
    pub fn service_keys(&self) -> impl Iterator<Item = &Key> {
        self.services.keys()
    }

    /// Every key of one kind: for a relist's end only (removing what it no longer listed).
    pub fn keys(&self, kind: Kind) -> Vec<Key> {
        match kind {
            Kind::Service => self
                .services
                .keys()
                .chain(self.skipped.keys())
                .cloned()
                .collect(),
            Kind::EndpointSlice => self.slices.keys().cloned().collect(),
            Kind::Deployment => self.workloads.keys().cloned().collect(),
            Kind::ReplicaSet => self.replicasets.keys().cloned().collect(),
            Kind::Node => self.nodes.keys().map(|n| Key::new("", n.clone())).collect(),
        }
    }

    /// The endpoints to probe: (slice, address, probe), of slices that declare one.
    pub fn probe_targets(&self) -> Vec<(Key, IpAddr, Probe)> {
        self.probed
            .iter()
            .filter_map(|k| self.slices.get(k))
            .flat_map(|s| {
                let probe = s.probe.clone().expect("probed slices have a probe");
                s.endpoints
                    .iter()
                    .map(move |e| (s.key.clone(), e.addr, probe.clone()))
            })
            .collect()
    }

    pub fn workloads(&self) -> impl Iterator<Item = &WorkloadModel> {
        self.workloads.values()
    }

    pub fn replicasets(&self) -> impl Iterator<Item = &ReplicaSetModel> {
        self.replicasets.values()
    }

    pub fn workload(&self, key: &Key) -> Option<&WorkloadModel> {
        self.workloads.get(key)
    }

    /// The ReplicaSets a Deployment owns.
    pub fn replicasets_of<'a>(
        &'a self,
        deployment: &Key,
    ) -> impl Iterator<Item = &'a ReplicaSetModel> {
        self.replicasets_of
            .get(deployment)
            .into_iter()
            .flatten()
            .filter_map(|k| self.replicasets.get(k))
    }

    /// The slices holding endpoints of the ReplicaSet `replicaset`'s pods (each slice may
    /// also hold others: filter its endpoints with [`EndpointModel::replicaset_name`]).
    ///
    /// [`EndpointModel::replicaset_name`]: crate::model::EndpointModel::replicaset_name
    pub fn slices_of_replicaset<'a>(
        &'a self,
        replicaset: &Key,
    ) -> impl Iterator<Item = &'a SliceModel> {
        self.slices_of_replicaset
            .get(replicaset)
            .into_iter()
            .flatten()
            .filter_map(|k| self.slices.get(k))
    }

    /// Whether any slice holds endpoints of the ReplicaSet's pods (no slice is read).
    pub fn replicaset_has_endpoints(&self, replicaset: &Key) -> bool {
        self.slices_of_replicaset.contains_key(replicaset)
    }

    /// If the Node `name` changed since the last call: its addresses now (empty when it is
    /// gone).
    pub fn take_node_change(&mut self, name: &str) -> Option<Vec<IpAddr>> {
        let changed = self.nodes_changed.remove(name);
        self.nodes_changed.clear();
        changed.then(|| {
            self.nodes
                .get(name)
                .map(|n| n.addresses.clone())
                .unwrap_or_default()
        })
    }

    pub fn node(&self, name: &str) -> Option<&NodeModel> {
        self.nodes.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EndpointModel;

    fn slice(pods: &[&str]) -> Model {
        let endpoints = pods
            .iter()
            .enumerate()
            .map(|(i, p)| EndpointModel {
                addr: IpAddr::from([10, 0, 0, i as u8 + 1]),
                ready: true,
                serving: true,
                terminating: false,
                node_name: None,
                pod: Some(p.to_string()),
            })
            .collect();
        Model::Slice(Translated::Model(SliceModel {
            key: Key::new("ns", "web-abc"),
            service: Key::new("ns", "web"),
            ipv6: false,
            ports: Vec::new(),
            endpoints,
            probe: None,
            trigger_time: None,
        }))
    }

    fn replicaset(name: &str, deployment: &str) -> Model {
        Model::ReplicaSet(ReplicaSetModel {
            key: Key::new("ns", name),
            deployment: Some(Key::new("ns", deployment)),
            pod_template_hash: None,
            revision: None,
            desired: 1,
            ready: 1,
            available: 1,
        })
    }

    fn names<'a>(it: impl Iterator<Item = &'a ReplicaSetModel>) -> Vec<String> {
        it.map(|r| r.key.name.clone()).collect()
    }

    #[test]
    fn replicaset_indexes_follow_changes_and_removals() {
        let mut t = Tables::default();
        let (a, b) = (Key::new("ns", "web-a1"), Key::new("ns", "web-b2"));
        t.put(a.clone(), replicaset("web-a1", "web"));
        t.put(b.clone(), replicaset("web-b2", "web"));
        assert_eq!(
            names(t.replicasets_of(&Key::new("ns", "web"))),
            ["web-a1", "web-b2"]
        );

        let key = Key::new("ns", "web-abc");
        t.put(key.clone(), slice(&["web-a1-x", "web-b2-y"]));
        assert!(t.replicaset_has_endpoints(&a) && t.replicaset_has_endpoints(&b));
        assert_eq!(t.slices_of_replicaset(&a).count(), 1);
        // The slice no longer holds a pod of web-a1.
        t.put(key.clone(), slice(&["web-b2-y", "web-b2-z"]));
        assert!(!t.replicaset_has_endpoints(&a));
        assert_eq!(t.slices_of_replicaset(&b).count(), 1);
        t.remove(Kind::EndpointSlice, &key);
        assert!(!t.replicaset_has_endpoints(&b));

        // A ReplicaSet adopted by another Deployment moves; a removed one goes.
        t.put(b.clone(), replicaset("web-b2", "other"));
        assert_eq!(names(t.replicasets_of(&Key::new("ns", "web"))), ["web-a1"]);
        assert_eq!(
            names(t.replicasets_of(&Key::new("ns", "other"))),
            ["web-b2"]
        );
        t.remove(Kind::ReplicaSet, &a);
        assert_eq!(t.replicasets_of(&Key::new("ns", "web")).count(), 0);
        assert!(
            !t.replicasets_of.contains_key(&Key::new("ns", "web")),
            "no empty set is left behind"
        );
    }

    fn service(name: &str, health_check_node_port: Option<u16>) -> Model {
        Model::Service(Translated::Model(ServiceModel {
            key: Key::new("ns", name),
            type_: crate::model::ServiceType::LoadBalancer,
            ports: Vec::new(),
            cluster_ips: Vec::new(),
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            affinity: None,
            publish_not_ready: false,
            external_local: health_check_node_port.is_some(),
            internal_local: false,
            source_ranges: Vec::new(),
            health_check_node_port,
            dsr: None,
        }))
    }

    /// Only services with a health-check node port (or that just lost it) are marked for
    /// the health checks, each change once, and the waiting task is woken.
    #[test]
    fn health_check_changes_are_marked_for_health_checked_services_only() {
        let mut t = Tables::default();
        let notified = t.health_checks_changed();
        let (web, other) = (Key::new("ns", "web"), Key::new("ns", "other"));
        t.put(other.clone(), service("other", None));
        assert!(t.take_health_check_changes().is_empty());
        t.put(web.clone(), service("web", Some(32100)));
        assert_eq!(t.take_health_check_changes(), BTreeSet::from([web.clone()]));
        // A permit was stored for the waiting task.
        let woken = futures::FutureExt::now_or_never(notified.notified());
        assert!(woken.is_some());

        // A slice of web marks it; a slice of another service does not.
        t.put(Key::new("ns", "web-abc"), slice(&["web-a1-x"]));
        let Model::Slice(Translated::Model(mut other_slice)) = slice(&["other-b2-y"]) else {
            unreachable!()
        };
        other_slice.key = Key::new("ns", "other-abc");
        other_slice.service = other.clone();
        t.put(
            other_slice.key.clone(),
            Model::Slice(Translated::Model(other_slice)),
        );
        assert_eq!(t.take_health_check_changes(), BTreeSet::from([web.clone()]));

        // Losing the port marks it once more, then no longer.
        t.put(web.clone(), service("web", None));
        assert_eq!(t.take_health_check_changes(), BTreeSet::from([web.clone()]));
        t.mark_dirty(web.clone());
        assert!(t.take_health_check_changes().is_empty());
        // Removal of a health-checked service marks it.
        t.put(web.clone(), service("web", Some(32101)));
        t.take_health_check_changes();
        t.remove(Kind::Service, &web);
        assert_eq!(t.take_health_check_changes(), BTreeSet::from([web]));
    }
}

//! The tables every source writes into and the reconciler reads from: the models by key,
//! indexed so that one changed object costs work proportional to it (a slice knows its
//! service; a service knows its slices), and the set of services whose data-path state may
//! have changed since the last round ("dirty"). Cilium's StateDB and kube-rs' reflector
//! stores play this part in the anchors.
//!
//! Nothing here walks every object on a change; [`Tables::service_keys`] exists only for the
//! rare full resync.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    time::Instant,
};

use crate::{
    health::Probe,
    model::{
        Invalid, Key, NodeModel, ReplicaSetModel, ServiceModel, SliceModel, Translated,
        WorkloadModel,
    },
    objects::{Kind, Object},
};

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

/// Services to reconcile, taken by the reconcile loop.
#[derive(Debug, Default)]
pub struct Dirty {
    pub services: BTreeSet<Key>,
    /// When the oldest of these changes was seen by a source.
    pub since: Option<Instant>,
}

#[derive(Debug, Default)]
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
    nodes: BTreeMap<String, NodeModel>,
    dirty: Dirty,
    /// Nodes whose object changed since [`Tables::take_node_change`] last looked.
    nodes_changed: BTreeSet<String>,
    /// Bumped on every change of any table.
    pub generation: u64,
}

impl Tables {
    fn touch(&mut self, service: Option<Key>) {
        self.generation += 1;
        if let Some(s) = service {
            self.dirty.services.insert(s);
            self.dirty.since.get_or_insert_with(Instant::now);
        }
    }

    /// Translates and puts an object. An invalid object changes nothing (a source that had a
    /// good version keeps it in force). Returns whether anything changed.
    pub fn apply(&mut self, obj: &Object) -> Result<bool, Invalid> {
        let key = Key::of(obj.kind(), obj.metadata());
        let model = translate(obj)?;
        Ok(self.put(key, model))
    }

    /// Puts a translated model under `key`. Returns whether anything changed.
    pub fn put(&mut self, key: Key, model: Model) -> bool {
        match model {
            Model::Service(Translated::Model(m)) => {
                self.skipped.remove(&key);
                if self.services.get(&key) == Some(&m) {
                    return false;
                }
                self.services.insert(key.clone(), m);
                self.touch(Some(key));
            }
            Model::Service(Translated::Skipped(why)) => {
                let had = self.services.remove(&key).is_some();
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
                if let Some(old) = self.slices.insert(key.clone(), m)
                    && old.service != service
                {
                    self.unlink(&old.service, &key);
                    self.touch(Some(old.service));
                }
                self.slices_of
                    .entry(service.clone())
                    .or_default()
                    .insert(key);
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
                self.replicasets.insert(key, m);
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
        if let Some(set) = self.slices_of.get_mut(service) {
            set.remove(slice);
            if set.is_empty() {
                self.slices_of.remove(service);
            }
        }
    }

    /// Removes an object. Returns whether it was there.
    pub fn remove(&mut self, kind: Kind, key: &Key) -> bool {
        match kind {
            Kind::Service => {
                let skipped = self.skipped.remove(key).is_some();
                let had = self.services.remove(key).is_some();
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
                let had = self.replicasets.remove(key).is_some();
                if had {
                    self.touch(None);
                }
                had
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

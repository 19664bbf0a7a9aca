//! The object store and its change history: one global, monotonically increasing
//! resourceVersion shared by every resource (as etcd's revision is), and a bounded history of
//! changes from which watches resume.

use std::collections::{BTreeMap, VecDeque};

use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::resource::{self, ResourceType};
use crate::selector::Selectors;

/// How many changes the history keeps unless configured otherwise.
pub const DEFAULT_HISTORY_LIMIT: usize = 1024;

/// The kind of a change, as a watch event reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// The object was created.
    Added,
    /// The object was replaced or patched.
    Modified,
    /// The object was deleted.
    Deleted,
}

/// One change in the history.
#[derive(Debug, Clone)]
pub struct Change {
    /// The resourceVersion this change produced.
    pub rv: u64,
    /// The type of the changed object.
    pub rtype: ResourceType,
    /// What happened.
    pub kind: ChangeKind,
    /// The object after the change (for a deletion: its last state, with the deletion's
    /// resourceVersion).
    pub object: Value,
    /// The object before a modification (watch selectors use it to turn a change that leaves
    /// the selection into `DELETED`).
    pub old: Option<Value>,
}

/// Which part of an object a write replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// A write to the resource through the API: `status` is kept for types with a status
    /// subresource, and `metadata.resourceVersion`, if given, must match.
    Main,
    /// A write to the `/status` subresource: only `status` changes.
    Status,
    /// A control write by the test (fixtures): the whole object, no preconditions.
    All,
}

/// Key of a stored object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    plural: &'static str,
    namespace: String,
    name: String,
}

/// The objects, the resourceVersion counter and the history.
#[derive(Debug)]
pub struct Store {
    objects: BTreeMap<Key, Value>,
    rv: u64,
    history: VecDeque<Change>,
    history_limit: usize,
    /// The newest resourceVersion dropped from the history to keep it bounded: a stream whose
    /// position is older has lost changes.
    trimmed: u64,
    /// Set by [`Store::compact`]: a watch cannot *start* from a resourceVersion older than this
    /// (streams already open go on, as they do across an etcd compaction).
    compacted: u64,
    uid_counter: u64,
}

/// A watch asked for a resourceVersion whose changes are no longer retained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooOld {
    /// The oldest resourceVersion a watch can still start from.
    pub oldest: u64,
}

pub(crate) fn name_of(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/name").and_then(Value::as_str)
}

pub(crate) fn namespace_of(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/namespace").and_then(Value::as_str)
}

pub(crate) fn resource_version_of(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
}

/// The resource type of an object, from its `apiVersion` and `kind`.
pub(crate) fn type_of(obj: &Value) -> Result<ResourceType, crate::Error> {
    let api_version = obj.get("apiVersion").and_then(Value::as_str);
    let kind = obj.get("kind").and_then(Value::as_str);
    match (api_version, kind) {
        (Some(a), Some(k)) => resource::by_api_version_kind(a, k)
            .ok_or_else(|| crate::Error::UnknownResource(format!("{a} {k}"))),
        _ => Err(crate::Error::InvalidObject(
            "an object needs apiVersion and kind".to_string(),
        )),
    }
}

/// `metadata` as a mutable map, created if missing.
fn metadata_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"]
        .as_object_mut()
        .expect("metadata was just made an object")
}

fn now_rfc3339() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(now.as_second())
        .unwrap_or(now)
        .to_string()
}

fn finalizers_empty(obj: &Value) -> bool {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
}

/// Everything but `metadata` and `status`: a change here bumps `metadata.generation`.
fn desired_state(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(map) = v.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
    }
    v
}

impl Store {
    /// An empty store keeping at most `history_limit` changes (at least 1).
    pub fn new(history_limit: usize) -> Self {
        Self {
            objects: BTreeMap::new(),
            rv: 0,
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            trimmed: 0,
            compacted: 0,
            uid_counter: 0,
        }
    }

    /// The current (newest) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    fn key(rt: &ResourceType, namespace: &str, name: &str) -> Key {
        Key {
            plural: rt.plural,
            namespace: if rt.namespaced {
                namespace.to_string()
            } else {
                String::new()
            },
            name: name.to_string(),
        }
    }

    fn next_uid(&mut self) -> String {
        self.uid_counter += 1;
        // splitmix64 over (counter, time, pid): unique enough for tests, shaped as a v4 UUID.
        let mut x = self.uid_counter
            ^ u64::from(std::process::id()).rotate_left(32)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let (a, b) = (next(), next());
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0x0fff,
            0x8000 | ((b >> 48) & 0x3fff),
            b & 0xffff_ffff_ffff
        )
    }

    fn record(&mut self, change: Change) {
        self.history.push_back(change);
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.trimmed = old.rv;
            }
        }
    }

    /// The stored object, if any.
    pub fn get(&self, rt: &ResourceType, namespace: &str, name: &str) -> Option<&Value> {
        self.objects.get(&Self::key(rt, namespace, name))
    }

    /// The objects of a type, in a namespace or (with `None`) in all, that pass `selectors`,
    /// and the resourceVersion the list is consistent with.
    pub fn list(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        selectors: &Selectors,
    ) -> (u64, Vec<Value>) {
        let items = self
            .objects
            .iter()
            .filter(|(k, _)| k.plural == rt.plural)
            .filter(|(k, _)| namespace.is_none_or(|ns| !rt.namespaced || k.namespace == ns))
            .filter(|(_, v)| selectors.matches(v))
            .map(|(_, v)| v.clone())
            .collect();
        (self.rv, items)
    }

    /// Every change of type `rt` after resourceVersion `after`, for a stream that is already
    /// open, or [`TooOld`] when some of them were dropped from the bounded history.
    pub fn changes_since(&self, rt: &ResourceType, after: u64) -> Result<Vec<Change>, TooOld> {
        if after < self.trimmed {
            return Err(TooOld {
                oldest: self.trimmed,
            });
        }
        Ok(self
            .history
            .iter()
            .filter(|c| c.rv > after && c.rtype.plural == rt.plural)
            .cloned()
            .collect())
    }

    /// Whether a new watch can start from `rv`; `Err` carries the oldest resourceVersion that
    /// can.
    pub fn check_watchable(&self, rv: u64) -> Result<(), TooOld> {
        let oldest = self.trimmed.max(self.compacted);
        if rv < oldest {
            Err(TooOld { oldest })
        } else {
            Ok(())
        }
    }

    /// Forgets the history for new watches: one that starts from any resourceVersion handed
    /// out so far gets `410 Expired` (streams already open go on). The resourceVersion
    /// advances by one, as if some other object had been written while the API server's
    /// watch cache was rebuilt, so that even a client that is up to date must relist, unless
    /// a later bookmark or change gave it a newer resourceVersion.
    pub fn compact(&mut self) {
        self.rv += 1;
        self.compacted = self.rv;
    }

    /// Creates an object. `namespace` is the request's namespace (or the object's, for a
    /// control write); the object's own `metadata.namespace`, if set, must agree.
    pub fn create(
        &mut self,
        rt: &ResourceType,
        namespace: &str,
        mut obj: Value,
        part: Part,
    ) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request("the object must be a JSON object"));
        }
        obj["apiVersion"] = json!(rt.api_version);
        obj["kind"] = json!(rt.kind);
        let uid = self.next_uid();
        let meta = metadata_mut(&mut obj);
        if meta
            .get("name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            match meta.get("generateName").and_then(Value::as_str) {
                Some(prefix) if !prefix.is_empty() => {
                    let suffix: String = uid
                        .chars()
                        .filter(char::is_ascii_alphanumeric)
                        .take(5)
                        .collect();
                    meta.insert("name".into(), json!(format!("{prefix}{suffix}")));
                }
                _ => {
                    return Err(ApiError::invalid(
                        rt,
                        "",
                        "metadata.name: Required value: name or generateName is required",
                    ));
                }
            }
        }
        let name = meta["name"].as_str().unwrap_or_default().to_string();
        if rt.namespaced {
            match meta.get("namespace").and_then(Value::as_str) {
                Some(ns) if ns != namespace => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => {
                    meta.insert("namespace".into(), json!(namespace));
                }
            }
        } else {
            meta.remove("namespace");
        }
        let key = Self::key(rt, namespace, &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(rt, &name));
        }
        self.rv += 1;
        meta.insert("resourceVersion".into(), json!(self.rv.to_string()));
        meta.entry("uid").or_insert_with(|| json!(uid));
        meta.entry("creationTimestamp")
            .or_insert_with(|| json!(now_rfc3339()));
        meta.entry("generation").or_insert(json!(1));
        if part == Part::Main && rt.has_status {
            // As the API server's create strategies do: a client cannot create a status.
            if let Some(map) = obj.as_object_mut() {
                map.remove("status");
            }
        }
        self.objects.insert(key, obj.clone());
        self.record(Change {
            rv: self.rv,
            rtype: *rt,
            kind: ChangeKind::Added,
            object: obj.clone(),
            old: None,
        });
        Ok(obj)
    }

    /// Replaces (part of) an existing object with `new`, computed from the current object by
    /// `update` under the store's lock (so a read-modify-write such as a patch is atomic).
    pub fn update(
        &mut self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        part: Part,
        update: impl FnOnce(&Value) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        let key = Self::key(rt, namespace, name);
        let old = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        let mut new = update(&old)?;
        if !new.is_object() {
            return Err(ApiError::bad_request("the object must be a JSON object"));
        }
        if name_of(&new).is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                name_of(&new).unwrap_or_default()
            )));
        }
        if part != Part::All
            && let Some(rv) = resource_version_of(&new)
            && Some(rv) != resource_version_of(&old)
        {
            return Err(ApiError::conflict(rt, name));
        }
        new = match part {
            Part::Status => {
                let mut merged = old.clone();
                match new.get("status") {
                    Some(status) => merged["status"] = status.clone(),
                    None => {
                        if let Some(map) = merged.as_object_mut() {
                            map.remove("status");
                        }
                    }
                }
                merged
            }
            Part::Main if rt.has_status => {
                match old.get("status") {
                    Some(status) => new["status"] = status.clone(),
                    None => {
                        if let Some(map) = new.as_object_mut() {
                            map.remove("status");
                        }
                    }
                }
                new
            }
            _ => new,
        };
        new["apiVersion"] = json!(rt.api_version);
        new["kind"] = json!(rt.kind);
        let spec_changed = desired_state(&new) != desired_state(&old);
        let old_meta = old["metadata"].clone();
        let explicit_generation =
            part == Part::All && new.pointer("/metadata/generation").is_some();
        self.rv += 1;
        let rv = self.rv;
        let meta = metadata_mut(&mut new);
        meta.insert("name".into(), json!(name));
        if rt.namespaced {
            meta.insert("namespace".into(), json!(namespace));
        }
        for immutable in ["uid", "creationTimestamp", "deletionTimestamp"] {
            match old_meta.get(immutable) {
                Some(v) => {
                    meta.insert(immutable.into(), v.clone());
                }
                None if part != Part::All => {
                    meta.remove(immutable);
                }
                None => {}
            }
        }
        if !explicit_generation {
            let generation = old_meta
                .get("generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            let generation = if spec_changed {
                generation + 1
            } else {
                generation
            };
            meta.insert("generation".into(), json!(generation));
        }
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        if new.pointer("/metadata/deletionTimestamp").is_some() && finalizers_empty(&new) {
            // The last finalizer is gone from an object being deleted: it goes now.
            self.objects.remove(&key);
            self.record(Change {
                rv,
                rtype: *rt,
                kind: ChangeKind::Deleted,
                object: new.clone(),
                old: None,
            });
            return Ok(new);
        }
        self.objects.insert(key, new.clone());
        self.record(Change {
            rv,
            rtype: *rt,
            kind: ChangeKind::Modified,
            object: new.clone(),
            old: Some(old),
        });
        Ok(new)
    }

    /// Creates the object or, when it exists, replaces it whole (a control write).
    pub fn apply(&mut self, obj: Value) -> Result<Value, crate::Error> {
        let rt = type_of(&obj)?;
        let name = name_of(&obj)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| crate::Error::InvalidObject("metadata.name is required".into()))?
            .to_string();
        let namespace = if rt.namespaced {
            namespace_of(&obj).unwrap_or("default").to_string()
        } else {
            String::new()
        };
        let result = if self.get(&rt, &namespace, &name).is_some() {
            self.update(&rt, &namespace, &name, Part::All, |_| Ok(obj))
        } else {
            self.create(&rt, &namespace, obj, Part::All)
        };
        result.map_err(ApiError::into_error)
    }

    /// Deletes an object, or only marks it (`deletionTimestamp`) while it has finalizers.
    /// `precondition_rv` is DeleteOptions' `preconditions.resourceVersion`.
    pub fn delete(
        &mut self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        precondition_rv: Option<&str>,
    ) -> Result<Value, ApiError> {
        let key = Self::key(rt, namespace, name);
        let current = self
            .objects
            .get(&key)
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        if precondition_rv.is_some_and(|rv| Some(rv) != resource_version_of(current)) {
            return Err(ApiError::conflict(rt, name));
        }
        if !finalizers_empty(current) {
            if current.pointer("/metadata/deletionTimestamp").is_some() {
                return Ok(current.clone());
            }
            return self.update(rt, namespace, name, Part::All, |old| {
                let mut marked = old.clone();
                let meta = metadata_mut(&mut marked);
                meta.insert("deletionTimestamp".into(), json!(now_rfc3339()));
                meta.insert("deletionGracePeriodSeconds".into(), json!(0));
                Ok(marked)
            });
        }
        let mut obj = self.objects.remove(&key).expect("checked above");
        self.rv += 1;
        metadata_mut(&mut obj).insert("resourceVersion".into(), json!(self.rv.to_string()));
        self.record(Change {
            rv: self.rv,
            rtype: *rt,
            kind: ChangeKind::Deleted,
            object: obj.clone(),
            old: None,
        });
        Ok(obj)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": name, "namespace": "default"},
               "spec": {"ports": [{"port": 80}]}})
    }

    #[test]
    fn global_resource_version_and_history() {
        let mut s = Store::new(3);
        let rt = resource::lookup("services").expect("services");
        let a = s.apply(svc("a")).expect("a");
        assert_eq!(resource_version_of(&a), Some("1"));
        assert!(a.pointer("/metadata/uid").is_some());
        assert_eq!(a.pointer("/metadata/generation"), Some(&json!(1)));
        s.apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"}}))
            .expect("node");
        let mut changed = svc("a");
        changed["spec"]["ports"][0]["port"] = json!(81);
        let a2 = s.apply(changed).expect("a2");
        assert_eq!(resource_version_of(&a2), Some("3"));
        assert_eq!(a2.pointer("/metadata/generation"), Some(&json!(2)));
        assert_eq!(a2["metadata"]["uid"], a["metadata"]["uid"]);
        let changes = s.changes_since(&rt, 0).expect("retained");
        assert_eq!(changes.iter().map(|c| c.rv).collect::<Vec<_>>(), vec![1, 3]);
        s.delete(&rt, "default", "a", None).expect("delete");
        // Four changes, three kept: resuming from 0 is too old, from 1 is fine.
        assert_eq!(s.changes_since(&rt, 0).err(), Some(TooOld { oldest: 1 }));
        assert_eq!(s.changes_since(&rt, 1).expect("kept").len(), 2);
        assert_eq!(s.check_watchable(0).err(), Some(TooOld { oldest: 1 }));
        s.compact();
        assert_eq!(s.check_watchable(4).err(), Some(TooOld { oldest: 5 }));
        assert!(s.check_watchable(5).is_ok());
        assert!(s.changes_since(&rt, 4).is_ok(), "open streams go on");
    }

    #[test]
    fn api_writes_keep_status_and_check_resource_version() {
        let mut s = Store::new(10);
        let rt = resource::lookup("services").expect("services");
        let mut with_status = svc("a");
        with_status["status"] = json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.1"}]}});
        let created = s
            .create(&rt, "default", with_status.clone(), Part::Main)
            .expect("create");
        assert!(created.get("status").is_none());
        assert_eq!(
            s.create(&rt, "default", svc("a"), Part::Main)
                .err()
                .map(|e| e.code),
            Some(409)
        );
        let st = s
            .update(&rt, "default", "a", Part::Status, |_| {
                Ok(with_status.clone())
            })
            .expect("status");
        assert_eq!(st["status"], with_status["status"]);
        let mut stale = svc("a");
        stale["metadata"]["resourceVersion"] = json!("1");
        let err = s
            .update(&rt, "default", "a", Part::Main, |_| Ok(stale))
            .err();
        assert_eq!(err.map(|e| e.reason), Some("Conflict"));
        let replaced = s
            .update(&rt, "default", "a", Part::Main, |_| Ok(svc("a")))
            .expect("put");
        assert_eq!(
            replaced["status"], with_status["status"],
            "PUT keeps the status"
        );
    }

    #[test]
    fn finalizers_delay_deletion() {
        let mut s = Store::new(10);
        let rt = resource::lookup("services").expect("services");
        let mut obj = svc("a");
        obj["metadata"]["finalizers"] = json!(["example.com/hold"]);
        s.apply(obj).expect("apply");
        let marked = s.delete(&rt, "default", "a", None).expect("mark");
        assert!(marked.pointer("/metadata/deletionTimestamp").is_some());
        assert!(s.get(&rt, "default", "a").is_some());
        s.update(&rt, "default", "a", Part::Main, |old| {
            let mut o = old.clone();
            o["metadata"]["finalizers"] = json!([]);
            Ok(o)
        })
        .expect("release");
        assert!(s.get(&rt, "default", "a").is_none());
        let last = s
            .changes_since(&rt, 0)
            .expect("kept")
            .pop()
            .expect("change");
        assert_eq!(last.kind, ChangeKind::Deleted);
    }
}

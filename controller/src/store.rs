//! The objects the standalone sources hold: every Service, EndpointSlice and Deployment with
//! the source it came from. Objects are validated before they get in (an invalid API request
//! or file changes nothing). A file owns its objects: the API cannot change or delete them.

use std::{collections::BTreeMap, path::PathBuf, time::Instant};

use serde::Serialize;

use crate::{
    model::{Invalid, Key, ServiceModel, SliceModel, WorkloadModel},
    objects::{Kind, Object},
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Origin {
    File(PathBuf),
    Api,
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub origin: Origin,
    pub object: Object,
}

/// Checks an object's content (the model translation) without storing it.
pub fn validate(obj: &Object) -> Result<(), Invalid> {
    match obj {
        Object::Service(s) => ServiceModel::from_object(s).map(drop),
        Object::EndpointSlice(s) => SliceModel::from_object(s).map(drop),
        Object::Deployment(d) => WorkloadModel::from_object(d).map(drop),
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("{kind:?} {key} is defined by file {}; change it there", path.display())]
    OwnedByFile { kind: Kind, key: Key, path: PathBuf },
    #[error("no {kind:?} {key}")]
    NotFound { kind: Kind, key: Key },
    #[error("invalid {kind:?} {key}: {invalid}")]
    Invalid {
        kind: Kind,
        key: Key,
        invalid: Invalid,
    },
    /// The change could not be saved, so it was not made.
    #[error("cannot save API objects to {}: {reason}; the change was not applied", path.display())]
    Persist { path: PathBuf, reason: String },
}

#[derive(Debug, Default)]
pub struct Store {
    objects: BTreeMap<(Kind, Key), Entry>,
    /// Where objects written through the API are saved (so a restart loses none).
    persist: Option<PathBuf>,
    /// When the oldest change not yet reconciled happened.
    pending_since: Option<Instant>,
    /// Bumped on every change.
    pub generation: u64,
}

impl Store {
    fn touch(&mut self) {
        self.generation += 1;
        self.pending_since.get_or_insert_with(Instant::now);
    }

    /// Takes the time of the oldest unreconciled change (the reconciler calls this).
    pub fn take_pending(&mut self) -> Option<Instant> {
        self.pending_since.take()
    }

    pub fn get(&self, kind: Kind, key: &Key) -> Option<&Entry> {
        self.objects.get(&(kind, key.clone()))
    }

    pub fn list(&self, kind: Kind) -> impl Iterator<Item = (&Key, &Entry)> {
        self.objects
            .iter()
            .filter(move |((k, _), _)| *k == kind)
            .map(|((_, key), e)| (key, e))
    }

    /// A store whose API objects are saved to (and restored from) `path`.
    pub fn open(path: PathBuf) -> Result<Store, String> {
        let mut store = Store {
            persist: Some(path.clone()),
            ..Default::default()
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(store),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let values: Vec<serde_json::Value> =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        for v in values {
            let v = serde_yaml::to_value(v).map_err(|e| format!("{}: {e}", path.display()))?;
            let obj = Object::from_value(v).map_err(|e| format!("{}: {e}", path.display()))?;
            validate(&obj).map_err(|e| format!("{}: {e}", path.display()))?;
            store.objects.insert(
                (obj.kind(), Key::of(obj.metadata())),
                Entry {
                    origin: Origin::Api,
                    object: obj,
                },
            );
        }
        if !store.objects.is_empty() {
            store.touch();
        }
        Ok(store)
    }

    fn save(&self) -> Result<(), StoreError> {
        let Some(path) = &self.persist else {
            return Ok(());
        };
        let err = |reason: String| StoreError::Persist {
            path: path.clone(),
            reason,
        };
        let values: Vec<serde_json::Value> = self
            .objects
            .values()
            .filter(|e| e.origin == Origin::Api)
            .map(|e| match &e.object {
                Object::Service(o) => serde_json::to_value(o),
                Object::EndpointSlice(o) => serde_json::to_value(o),
                Object::Deployment(o) => serde_json::to_value(o),
            })
            .collect::<Result<_, _>>()
            .map_err(|e| err(e.to_string()))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(&values).map_err(|e| err(e.to_string()))?,
        )
        .map_err(|e| err(e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))
    }

    /// Creates or replaces an object through the API. Returns whether it was created.
    pub fn put_api(&mut self, obj: Object) -> Result<bool, StoreError> {
        let kind = obj.kind();
        let key = Key::of(obj.metadata());
        if let Err(invalid) = validate(&obj) {
            return Err(StoreError::Invalid { kind, key, invalid });
        }
        if let Some(Entry {
            origin: Origin::File(path),
            ..
        }) = self.objects.get(&(kind, key.clone()))
        {
            return Err(StoreError::OwnedByFile {
                kind,
                key,
                path: path.clone(),
            });
        }
        let previous = self.objects.insert(
            (kind, key.clone()),
            Entry {
                origin: Origin::Api,
                object: obj,
            },
        );
        if let Err(e) = self.save() {
            match previous {
                Some(p) => self.objects.insert((kind, key), p),
                None => self.objects.remove(&(kind, key)),
            };
            return Err(e);
        }
        self.touch();
        Ok(previous.is_none())
    }

    pub fn delete_api(&mut self, kind: Kind, key: &Key) -> Result<(), StoreError> {
        match self.objects.get(&(kind, key.clone())) {
            None => Err(StoreError::NotFound {
                kind,
                key: key.clone(),
            }),
            Some(Entry {
                origin: Origin::File(path),
                ..
            }) => Err(StoreError::OwnedByFile {
                kind,
                key: key.clone(),
                path: path.clone(),
            }),
            Some(_) => {
                let previous = self.objects.remove(&(kind, key.clone())).expect("present");
                if let Err(e) = self.save() {
                    self.objects.insert((kind, key.clone()), previous);
                    return Err(e);
                }
                self.touch();
                Ok(())
            }
        }
    }

    /// Replaces every object of one file (valid objects only; the caller keeps a file's
    /// previous objects when the file has errors). Objects the API owns are not taken over:
    /// they are reported back as conflicts.
    pub fn replace_file(&mut self, path: &std::path::Path, objs: Vec<Object>) -> Vec<String> {
        let mut conflicts = Vec::new();
        let before = self.objects.len();
        let old: Vec<(Kind, Key)> = self
            .objects
            .iter()
            .filter(|(_, e)| e.origin == Origin::File(path.to_path_buf()))
            .map(|(k, _)| k.clone())
            .collect();
        let mut changed = false;
        let mut keep = std::collections::BTreeSet::new();
        for obj in objs {
            let k = (obj.kind(), Key::of(obj.metadata()));
            match self.objects.get(&k) {
                Some(Entry {
                    origin: Origin::Api,
                    ..
                }) => {
                    conflicts.push(format!(
                        "{:?} {} is already defined through the API; not taken from this file",
                        k.0, k.1
                    ));
                    continue;
                }
                Some(Entry {
                    origin: Origin::File(p),
                    ..
                }) if p != path => {
                    conflicts.push(format!(
                        "{:?} {} is already defined by {}",
                        k.0,
                        k.1,
                        p.display()
                    ));
                    continue;
                }
                Some(e) if e.object == obj => {}
                _ => changed = true,
            }
            keep.insert(k.clone());
            self.objects.insert(
                k,
                Entry {
                    origin: Origin::File(path.to_path_buf()),
                    object: obj,
                },
            );
        }
        for k in old {
            if !keep.contains(&k) {
                self.objects.remove(&k);
                changed = true;
            }
        }
        if changed || self.objects.len() != before {
            self.touch();
        }
        conflicts
    }

    /// The validated models of everything stored.
    pub fn models(&self) -> (Vec<ServiceModel>, Vec<SliceModel>, Vec<WorkloadModel>) {
        let (mut services, mut slices, mut workloads) = (Vec::new(), Vec::new(), Vec::new());
        for e in self.objects.values() {
            // Stored objects were validated on the way in.
            match &e.object {
                Object::Service(s) => services.extend(ServiceModel::from_object(s).ok()),
                Object::EndpointSlice(s) => slices.extend(SliceModel::from_object(s).ok()),
                Object::Deployment(d) => workloads.extend(WorkloadModel::from_object(d).ok()),
            }
        }
        (services, slices, workloads)
    }
}

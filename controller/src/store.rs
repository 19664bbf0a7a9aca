//! The objects of the standalone sources (YAML files and the HTTP API), each with the source
//! it came from, in front of the [`Tables`] the reconciler reads. Objects are validated (by
//! the model) before they get in: an invalid API request or file changes nothing. A file owns
//! its objects: the API cannot change or delete them. In Kubernetes mode the API server owns
//! every object: the Kubernetes source writes into the tables directly and the HTTP API
//! refuses object writes.
//!
//! A Service that asks for a frontend another service holds, or that breaks the node's
//! protections ([`crate::protections`]), is refused the same way: the API answers 409 naming
//! the holder (422 for a protection), a manifest file reports it for that file, and the
//! earlier holder keeps the frontend.
//!
//! Objects written through the API are saved one file each under the state directory
//! (`<state_dir>/api-objects/<Kind>/<namespace>/<name>.json`, written to a temporary file
//! and renamed), so a write costs one small file, never a rewrite of every object.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
};

use serde::Serialize;

use crate::{
    model::{Invalid, Key},
    objects::{Kind, Object},
    protections::Protections,
    tables::{self, FrontendKey, Rejected, Tables},
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
    tables::translate(obj).map(drop)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("{kind} {key} is defined by file {}; change it there", path.display())]
    OwnedByFile { kind: Kind, key: Key, path: PathBuf },
    #[error(
        "objects come from the Kubernetes API server in this mode; change {kind} {key} with kubectl"
    )]
    OwnedByCluster { kind: Kind, key: Key },
    #[error("no {kind} {key}")]
    NotFound { kind: Kind, key: Key },
    #[error("invalid {kind} {key}: {invalid}")]
    Invalid {
        kind: Kind,
        key: Key,
        invalid: Invalid,
    },
    #[error("{kind} {key}: frontend {frontend} is already used by Service {holder}")]
    Conflict {
        kind: Kind,
        key: Key,
        frontend: FrontendKey,
        holder: Key,
    },
    /// The change could not be saved, so it was not made.
    #[error("cannot save API object to {}: {reason}; the change was not applied", path.display())]
    Persist { path: PathBuf, reason: String },
}

/// Where API objects are saved, one file each.
#[derive(Debug)]
struct Persist {
    dir: PathBuf,
}

impl Persist {
    fn path(&self, kind: Kind, key: &Key) -> PathBuf {
        let ns = if key.namespace.is_empty() {
            "_cluster"
        } else {
            &key.namespace
        };
        self.dir
            .join(kind.name())
            .join(ns)
            .join(format!("{}.json", key.name))
    }

    fn save(&self, obj: &Object) -> Result<(), StoreError> {
        let path = self.path(obj.kind(), &Key::of(obj.kind(), obj.metadata()));
        let err = |reason: String| StoreError::Persist {
            path: path.clone(),
            reason,
        };
        let bytes = obj
            .to_value()
            .and_then(|v| serde_json::to_vec_pretty(&v))
            .map_err(|e| err(e.to_string()))?;
        std::fs::create_dir_all(path.parent().expect("has a parent"))
            .map_err(|e| err(e.to_string()))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, bytes).map_err(|e| err(e.to_string()))?;
        std::fs::rename(&tmp, &path).map_err(|e| err(e.to_string()))
    }

    fn delete(&self, kind: Kind, key: &Key) -> Result<(), StoreError> {
        let path = self.path(kind, key);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::Persist {
                path,
                reason: e.to_string(),
            }),
        }
    }

    /// Every saved object, validated.
    fn load(&self) -> Result<Vec<Object>, String> {
        let mut out = Vec::new();
        let mut stack = vec![self.dir.clone()];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(format!("{}: {e}", dir.display())),
            };
            for e in entries {
                let path = e.map_err(|e| format!("{}: {e}", dir.display()))?.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|x| x == "json") {
                    out.push(read_object(&path)?);
                }
            }
        }
        Ok(out)
    }
}

fn read_object(path: &Path) -> Result<Object, String> {
    let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| fail(&e))?;
    let value = serde_json::from_str(&text).map_err(|e| fail(&e))?;
    let obj = Object::from_value(value).map_err(|e| fail(&e))?.object;
    validate(&obj).map_err(|e| fail(&e))?;
    Ok(obj)
}

#[derive(Debug, Default)]
pub struct Store {
    objects: BTreeMap<(Kind, Key), Entry>,
    /// The objects of each manifest file (a file change costs that file's objects).
    by_file: HashMap<PathBuf, BTreeSet<(Kind, Key)>>,
    /// The models, indexed for the reconciler.
    pub tables: Tables,
    persist: Option<Persist>,
    /// Kubernetes mode: the API server owns every object.
    cluster: bool,
}

impl Store {
    /// Bumped on every change (API list `resourceVersion`).
    pub fn generation(&self) -> u64 {
        self.tables.generation
    }

    /// Kubernetes mode: object writes through the HTTP API are refused.
    pub fn set_cluster_mode(&mut self) {
        self.cluster = true;
    }

    pub fn cluster_mode(&self) -> bool {
        self.cluster
    }

    pub fn get(&self, kind: Kind, key: &Key) -> Option<&Entry> {
        self.objects.get(&(kind, key.clone()))
    }

    pub fn list(&self, kind: Kind) -> impl Iterator<Item = (&Key, &Entry)> {
        self.objects
            .range((kind, Key::new("", ""))..)
            .take_while(move |((k, _), _)| *k == kind)
            .map(|((_, key), e)| (key, e))
    }

    /// A store whose API objects are saved under (and restored from) `state_dir`, checked
    /// against `protections`. A saved object that no longer passes them (the node port
    /// range changed, say) is left out with a warning and stays saved.
    pub fn open(state_dir: &Path, protections: Protections) -> Result<Store, String> {
        let persist = Persist {
            dir: state_dir.join("api-objects"),
        };
        let mut store = Store::default();
        store.tables.set_protections(protections);
        for obj in persist.load()? {
            let what = format!("{} {}", obj.kind(), Key::of(obj.kind(), obj.metadata()));
            if let Err(e) = store.insert(Origin::Api, obj) {
                tracing::warn!(object = %what, error = %e, "a saved API object is refused now; left out (delete or fix it through the API)");
            }
        }
        // The single-file format of earlier versions: moved to one file per object.
        let legacy = state_dir.join("api-objects.json");
        if let Ok(text) = std::fs::read_to_string(&legacy) {
            let values: Vec<serde_json::Value> =
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", legacy.display()))?;
            for v in values {
                let obj = Object::from_value(v)
                    .map_err(|e| format!("{}: {e}", legacy.display()))?
                    .object;
                validate(&obj).map_err(|e| format!("{}: {e}", legacy.display()))?;
                persist.save(&obj).map_err(|e| e.to_string())?;
                if let Err(e) = store.insert(Origin::Api, obj) {
                    tracing::warn!(error = %e, "a saved API object is refused now; left out");
                }
            }
            std::fs::remove_file(&legacy).map_err(|e| format!("{}: {e}", legacy.display()))?;
        }
        store.persist = Some(persist);
        Ok(store)
    }

    /// Puts an object into the tables and, if they take it, the objects.
    fn insert(&mut self, origin: Origin, object: Object) -> Result<Option<Entry>, Rejected> {
        let kind = object.kind();
        let key = Key::of(kind, object.metadata());
        self.tables.apply(&object)?;
        Ok(self.objects.insert((kind, key), Entry { origin, object }))
    }

    fn owner_check(&self, kind: Kind, key: &Key) -> Result<(), StoreError> {
        if self.cluster {
            return Err(StoreError::OwnedByCluster {
                kind,
                key: key.clone(),
            });
        }
        if let Some(Entry {
            origin: Origin::File(path),
            ..
        }) = self.objects.get(&(kind, key.clone()))
        {
            return Err(StoreError::OwnedByFile {
                kind,
                key: key.clone(),
                path: path.clone(),
            });
        }
        Ok(())
    }

    /// Creates or replaces an object through the API. Returns whether it was created.
    pub fn put_api(&mut self, obj: Object) -> Result<bool, StoreError> {
        let kind = obj.kind();
        let key = Key::of(kind, obj.metadata());
        self.owner_check(kind, &key)?;
        let refused = |r: Rejected| match r {
            Rejected::Invalid(invalid) => StoreError::Invalid {
                kind,
                key: key.clone(),
                invalid,
            },
            Rejected::Conflict { frontend, holder } => StoreError::Conflict {
                kind,
                key: key.clone(),
                frontend,
                holder,
            },
        };
        // Checked before it is saved, so a refused object leaves no trace.
        self.tables.check(&obj).map_err(refused)?;
        if let Some(p) = &self.persist {
            p.save(&obj)?;
        }
        Ok(self.insert(Origin::Api, obj).map_err(refused)?.is_none())
    }

    pub fn delete_api(&mut self, kind: Kind, key: &Key) -> Result<(), StoreError> {
        self.owner_check(kind, key)?;
        if !self.objects.contains_key(&(kind, key.clone())) {
            return Err(StoreError::NotFound {
                kind,
                key: key.clone(),
            });
        }
        if let Some(p) = &self.persist {
            p.delete(kind, key)?;
        }
        self.objects.remove(&(kind, key.clone()));
        self.tables.remove(kind, key);
        Ok(())
    }

    /// Replaces every object of one file (valid objects only; the caller keeps a file's
    /// previous objects when the file has errors). Objects the API or another file owns are
    /// not taken over, and services the tables refuse (a frontend another service holds, a
    /// protection) are not taken: both are reported back as conflicts, and a refused object
    /// keeps its previous version from this file in force. Unchanged objects cost nothing.
    pub fn replace_file(&mut self, path: &Path, objs: Vec<Object>) -> Vec<String> {
        let mut conflicts = Vec::new();
        let origin = Origin::File(path.to_path_buf());
        let old = self.by_file.remove(path).unwrap_or_default();
        let mut keep = BTreeSet::new();
        let mut refused = Vec::new();
        for obj in objs {
            let k = (obj.kind(), Key::of(obj.kind(), obj.metadata()));
            match self.objects.get(&k) {
                Some(Entry {
                    origin: Origin::Api,
                    ..
                }) => {
                    conflicts.push(format!(
                        "{} {} is already defined through the API; not taken from this file",
                        k.0, k.1
                    ));
                    continue;
                }
                Some(Entry {
                    origin: Origin::File(p),
                    ..
                }) if p != path => {
                    conflicts.push(format!(
                        "{} {} is already defined by {}",
                        k.0,
                        k.1,
                        p.display()
                    ));
                    continue;
                }
                Some(e) if e.object == obj => {
                    keep.insert(k);
                    continue;
                }
                _ => {}
            }
            match self.insert(origin.clone(), obj.clone()) {
                Ok(_) => {
                    keep.insert(k);
                }
                Err(_) => refused.push((k, obj)),
            }
        }
        // A frontend may move between two objects of the file: what was refused is tried
        // once more after the others (in file order, as the API server would take them).
        for (k, obj) in refused {
            match self.insert(origin.clone(), obj) {
                Ok(_) => {}
                Err(e) => {
                    conflicts.push(format!("{} {}: {e}", k.0, k.1));
                    if !old.contains(&k) {
                        continue;
                    }
                }
            }
            keep.insert(k);
        }
        for k in old {
            if !keep.contains(&k) {
                self.objects.remove(&k);
                self.tables.remove(k.0, &k.1);
            }
        }
        if !keep.is_empty() {
            self.by_file.insert(path.to_path_buf(), keep);
        }
        conflicts
    }
}

//! The YAML directory source: every `*.yaml`, `*.yml` and `*.json` file of a directory
//! (multi-document files allowed), polled for changes. A file with any error is reported
//! with file and line and its last good objects stay in force; an unreadable or invalid
//! file never removes anything.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::SystemTime,
};

use crate::{
    model::Key,
    objects::{Object, Parsed},
    store::{self, Store},
};

/// One problem in one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileError {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: {}", self.path.display(), self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

/// Parses one file's text into objects, or every error in it. Fields the Kubernetes types
/// do not know are logged as warnings (an API server's default `fieldValidation=Warn`).
pub fn parse_file(path: &Path, text: &str) -> Result<Vec<Object>, Vec<FileError>> {
    let (mut objs, mut errs) = (Vec::new(), Vec::new());
    for r in Object::parse_documents(text) {
        match r {
            Ok(Parsed {
                object,
                unknown_fields,
            }) => {
                let what = format!(
                    "{} {}",
                    object.kind(),
                    Key::of(object.kind(), object.metadata())
                );
                for f in &unknown_fields {
                    tracing::warn!(file = %path.display(), object = %what, field = %f, "unknown field, ignored");
                }
                match store::validate(&object) {
                    Ok(()) => objs.push(object),
                    Err(invalid) => errs.push(FileError {
                        path: path.to_path_buf(),
                        line: None,
                        message: format!("{what}: {invalid}"),
                    }),
                }
            }
            Err(e) => errs.push(FileError {
                path: path.to_path_buf(),
                line: e.line,
                message: e.message,
            }),
        }
    }
    if errs.is_empty() { Ok(objs) } else { Err(errs) }
}

/// Watches one directory.
#[derive(Debug)]
pub struct Directory {
    dir: PathBuf,
    seen: BTreeMap<PathBuf, (SystemTime, u64)>,
    errors: BTreeMap<PathBuf, Vec<FileError>>,
    synced: bool,
}

impl Directory {
    pub fn new(dir: PathBuf) -> Self {
        Directory {
            dir,
            seen: BTreeMap::new(),
            errors: BTreeMap::new(),
            synced: false,
        }
    }

    /// Whether a full scan has completed (every file read once).
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Current errors, by file.
    pub fn errors(&self) -> Vec<FileError> {
        self.errors.values().flatten().cloned().collect()
    }

    /// Rescans; applies changed files to the store. Returns the new errors found.
    pub fn scan(&mut self, store: &mut Store) -> Vec<FileError> {
        let mut fresh = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) => {
                let err = FileError {
                    path: self.dir.clone(),
                    line: None,
                    message: format!("cannot read the directory: {e}"),
                };
                self.errors.insert(self.dir.clone(), vec![err.clone()]);
                return vec![err];
            }
        };
        self.errors.remove(&self.dir);
        let mut present = Vec::new();
        for e in entries.flatten() {
            let path = e.path();
            let ext = path
                .extension()
                .and_then(|x| x.to_str())
                .unwrap_or_default();
            if !matches!(ext, "yaml" | "yml" | "json") || !path.is_file() {
                continue;
            }
            present.push(path.clone());
            let Ok(meta) = e.metadata() else { continue };
            let stamp = (
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                meta.len(),
            );
            if self.seen.get(&path) == Some(&stamp) {
                continue;
            }
            self.seen.insert(path.clone(), stamp);
            let result = std::fs::read_to_string(&path)
                .map_err(|e| {
                    vec![FileError {
                        path: path.clone(),
                        line: None,
                        message: format!("cannot read: {e}"),
                    }]
                })
                .and_then(|text| parse_file(&path, &text));
            match result {
                Ok(objs) => {
                    self.errors.remove(&path);
                    let conflicts = store.replace_file(&path, objs);
                    if !conflicts.is_empty() {
                        let errs: Vec<FileError> = conflicts
                            .into_iter()
                            .map(|m| FileError {
                                path: path.clone(),
                                line: None,
                                message: m,
                            })
                            .collect();
                        fresh.extend(errs.clone());
                        self.errors.insert(path, errs);
                    }
                }
                Err(errs) => {
                    for e in &errs {
                        tracing::warn!("{e}; the file's last good state stays in force");
                    }
                    fresh.extend(errs.clone());
                    self.errors.insert(path, errs);
                }
            }
        }
        // Deleted files take their objects with them.
        let gone: Vec<PathBuf> = self
            .seen
            .keys()
            .filter(|p| !present.contains(p))
            .cloned()
            .collect();
        for p in gone {
            self.seen.remove(&p);
            self.errors.remove(&p);
            store.replace_file(&p, Vec::new());
        }
        self.synced = true;
        crate::metrics::file_errors(self.errors.len());
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A NodePort service `name` on `node_port` (its clusterIP derived from it).
    fn service(name: &str, node_port: u16) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
             spec:\n  type: NodePort\n  clusterIP: 10.96.1.{}\n  ports: [{{port: 80, nodePort: {node_port}}}]\n",
            node_port % 200
        )
    }

    #[test]
    fn a_service_taking_another_files_frontend_is_reported_for_its_file() {
        let dir =
            std::env::temp_dir().join(format!("sluice-files-conflict-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.yaml"), service("a", 30001)).unwrap();
        let mut store = Store::default();
        let mut d = Directory::new(dir.clone());
        assert_eq!(d.scan(&mut store), Vec::new());
        // b.yaml asks for a's NodePort, besides a service of its own.
        let b = dir.join("b.yaml");
        std::fs::write(
            &b,
            format!("{}---\n{}", service("b", 30001), service("c", 30003)),
        )
        .unwrap();
        let errs = d.scan(&mut store);
        assert_eq!(
            errs,
            vec![FileError {
                path: b.clone(),
                line: None,
                message: "Service default/b: frontend nodePort 30001/TCP is already used by \
                          Service default/a"
                    .into(),
            }]
        );
        assert_eq!(d.errors(), errs, "kept as the file's error");
        let key = |n: &str| Key::new("default", n);
        assert_eq!(
            store.tables.frontend_holder(&crate::tables::FrontendKey {
                protocol: lb_datapath::Protocol::Tcp,
                addr: None,
                port: 30001,
            }),
            Some(&key("a")),
            "the earlier holder keeps it"
        );
        assert!(store.tables.service(&key("b")).is_none());
        assert!(
            store
                .get(crate::objects::Kind::Service, &key("b"))
                .is_none()
        );
        assert!(
            store.tables.service(&key("c")).is_some(),
            "the file's other objects apply"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

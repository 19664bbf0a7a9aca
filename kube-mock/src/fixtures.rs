//! Fixtures: YAML as `kubectl get -o yaml` prints it, one object or a `kind: List` of them per
//! document, any number of documents per file, any number of files per directory.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// Parses every object in a (multi-document) YAML text. A `List` document (`kind: List` or any
/// `kind: <Kind>List` with `items`) contributes its items, each given the list's `apiVersion`
/// and `<Kind>` when it lacks them; empty documents are skipped.
pub fn parse_yaml(text: &str) -> Result<Vec<Value>> {
    let mut objects = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc).map_err(|source| Error::Yaml {
            context: format!("YAML document {}", i + 1),
            source,
        })?;
        push_objects(value, &mut objects)?;
    }
    Ok(objects)
}

fn push_objects(value: Value, out: &mut Vec<Value>) -> Result<()> {
    match value {
        Value::Null => Ok(()),
        Value::Object(ref map) => {
            let kind = map.get("kind").and_then(Value::as_str).unwrap_or_default();
            let is_list = kind == "List" || (kind.ends_with("List") && map.contains_key("items"));
            if !is_list {
                out.push(value);
                return Ok(());
            }
            let item_kind = kind.strip_suffix("List").filter(|k| !k.is_empty());
            let api_version = map.get("apiVersion").cloned();
            let items = map
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for mut item in items {
                if let Some(obj) = item.as_object_mut() {
                    if let (Some(k), false) = (item_kind, obj.contains_key("kind")) {
                        obj.insert("kind".into(), Value::String(k.to_string()));
                    }
                    if let (Some(a), false) = (&api_version, obj.contains_key("apiVersion")) {
                        obj.insert("apiVersion".into(), a.clone());
                    }
                }
                push_objects(item, out)?;
            }
            Ok(())
        }
        other => Err(Error::InvalidObject(format!(
            "a YAML document must be a mapping, found {other}"
        ))),
    }
}

/// Parses one YAML file.
pub fn load_file(path: impl AsRef<Path>) -> Result<Vec<Value>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
    parse_yaml(&text).map_err(|e| match e {
        Error::Yaml { context, source } => Error::Yaml {
            context: format!("{}: {context}", path.display()),
            source,
        },
        other => other,
    })
}

/// Parses every `*.yaml` / `*.yml` file of a directory (not recursively), in file-name order.
pub fn load_dir(dir: impl AsRef<Path>) -> Result<Vec<Value>> {
    let dir = dir.as_ref();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(format!("read directory {}", dir.display()), e))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .is_some_and(|ext| ext == "yaml" || ext == "yml")
        })
        .collect();
    files.sort();
    let mut objects = Vec::new();
    for file in files {
        objects.extend(load_file(&file)?);
    }
    Ok(objects)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_documents() {
        let text = "\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: a}
- apiVersion: v1
  kind: Node
  metadata: {name: n}
---
---
apiVersion: v1
kind: ServiceList
items:
- metadata: {name: b}
";
        let objs = parse_yaml(text).expect("parse");
        let names: Vec<_> = objs
            .iter()
            .map(|o| {
                (
                    o["kind"].as_str().unwrap_or(""),
                    o["metadata"]["name"].as_str().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(
            names,
            vec![("Service", "a"), ("Node", "n"), ("Service", "b")]
        );
        assert_eq!(objs[2]["apiVersion"], "v1");
    }
}

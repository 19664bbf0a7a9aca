//! The Kubernetes objects every source hands over, as k8s-openapi types: `v1/Service`,
//! `discovery.k8s.io/v1/EndpointSlice`, `apps/v1/Deployment`, `apps/v1/ReplicaSet` and
//! `v1/Node`. The YAML directory, the HTTP API and the Kubernetes watch all parse into the
//! same types, so anything an API server prints is accepted; what the fields *mean* is
//! checked by the model ([`crate::model`]), which rejects by name what the data path does not
//! enforce.
//!
//! Fields the types do not know (a typo, or a field newer than k8s-openapi's newest API
//! version) are not errors, as with an API server's default `fieldValidation=Warn`: they are
//! reported as warnings ([`Parsed::unknown_fields`]) that the files source logs and the API
//! answers in `Warning` headers.

use k8s_openapi::{
    Resource,
    api::{
        apps::v1::{Deployment, ReplicaSet},
        core::v1::{Node, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

/// Any of the objects, as one YAML document, API body or watch event.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    Deployment(Box<Deployment>),
    ReplicaSet(Box<ReplicaSet>),
    Node(Box<Node>),
}

/// The kinds, for keys and routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    Service,
    EndpointSlice,
    Deployment,
    ReplicaSet,
    Node,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Deployment,
        Kind::ReplicaSet,
        Kind::Node,
    ];

    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Service => Service::API_VERSION,
            Kind::EndpointSlice => EndpointSlice::API_VERSION,
            Kind::Deployment => Deployment::API_VERSION,
            Kind::ReplicaSet => ReplicaSet::API_VERSION,
            Kind::Node => Node::API_VERSION,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Service => Service::KIND,
            Kind::EndpointSlice => EndpointSlice::KIND,
            Kind::Deployment => Deployment::KIND,
            Kind::ReplicaSet => ReplicaSet::KIND,
            Kind::Node => Node::KIND,
        }
    }

    /// Nodes have no namespace.
    pub fn namespaced(self) -> bool {
        self != Kind::Node
    }

    fn of(api_version: &str, kind: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.api_version() == api_version && k.name() == kind)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A parse failure of one document, with what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    pub message: String,
    /// 1-based line in the document's source text, when known.
    pub line: Option<usize>,
}

impl ParseError {
    fn new(message: impl Into<String>) -> Self {
        ParseError {
            message: message.into(),
            line: None,
        }
    }
}

/// One parsed document: the object and the fields its type does not know.
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed {
    pub object: Object,
    /// Paths such as `spec.ports[0].nodePortt`: accepted and ignored, reported as warnings.
    pub unknown_fields: Vec<String>,
}

fn typed<T: DeserializeOwned + Serialize>(value: Value) -> Result<(T, Vec<String>), ParseError> {
    let obj: T = serde_json::from_value(value.clone())
        .map_err(|e| ParseError::new(format!("invalid object: {e}")))?;
    let known = serde_json::to_value(&obj).map_err(|e| ParseError::new(e.to_string()))?;
    let mut unknown = Vec::new();
    unknown_paths(&value, &known, "", &mut unknown);
    Ok((obj, unknown))
}

/// Every path present in `input` but absent from `known` (the typed object serialized
/// back). Values that are not objects or arrays are not compared: only field names matter.
fn unknown_paths(input: &Value, known: &Value, at: &str, out: &mut Vec<String>) {
    match (input, known) {
        (Value::Object(i), Value::Object(k)) => {
            for (name, v) in i {
                let path = if at.is_empty() {
                    name.clone()
                } else {
                    format!("{at}.{name}")
                };
                match k.get(name) {
                    Some(kv) => unknown_paths(v, kv, &path, out),
                    // `null` and empty values are dropped by serialization, not unknown.
                    None if is_empty(v) => {}
                    None => out.push(path),
                }
            }
        }
        (Value::Array(i), Value::Array(k)) => {
            for (n, (iv, kv)) in i.iter().zip(k).enumerate() {
                unknown_paths(iv, kv, &format!("{at}[{n}]"), out);
            }
        }
        _ => {}
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.values().all(is_empty),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Deployment(_) => Kind::Deployment,
            Object::ReplicaSet(_) => Kind::ReplicaSet,
            Object::Node(_) => Kind::Node,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::Deployment(o) => &o.metadata,
            Object::ReplicaSet(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
        }
    }

    pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::Service(o) => &mut o.metadata,
            Object::EndpointSlice(o) => &mut o.metadata,
            Object::Deployment(o) => &mut o.metadata,
            Object::ReplicaSet(o) => &mut o.metadata,
            Object::Node(o) => &mut o.metadata,
        }
    }

    /// `metadata.name` ("" when unset).
    pub fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or_default()
    }

    /// `metadata.namespace`, `default` when unset ("" for a Node).
    pub fn namespace(&self) -> &str {
        namespace_of(self.kind(), self.metadata())
    }

    /// The object as the API server would print it (apiVersion and kind set).
    pub fn to_value(&self) -> Result<Value, serde_json::Error> {
        match self {
            Object::Service(o) => serde_json::to_value(o),
            Object::EndpointSlice(o) => serde_json::to_value(o),
            Object::Deployment(o) => serde_json::to_value(o),
            Object::ReplicaSet(o) => serde_json::to_value(o),
            Object::Node(o) => serde_json::to_value(o),
        }
    }

    /// Parses one document by its `apiVersion` and `kind`. `metadata.name` is required.
    pub fn from_value(value: Value) -> Result<Parsed, ParseError> {
        let field = |k: &str| value.get(k).and_then(Value::as_str).map(str::to_string);
        let (api, kind) = (field("apiVersion"), field("kind"));
        let Some(k) = Kind::of(
            api.as_deref().unwrap_or_default(),
            kind.as_deref().unwrap_or_default(),
        ) else {
            return Err(ParseError::new(format!(
                "unsupported object apiVersion={} kind={}: expected v1/Service, \
                 discovery.k8s.io/v1/EndpointSlice, apps/v1/Deployment, apps/v1/ReplicaSet or \
                 v1/Node",
                api.as_deref().unwrap_or("<missing>"),
                kind.as_deref().unwrap_or("<missing>")
            )));
        };
        let (object, unknown_fields) = match k {
            Kind::Service => typed(value).map(|(o, u)| (Object::Service(Box::new(o)), u))?,
            Kind::EndpointSlice => {
                typed(value).map(|(o, u)| (Object::EndpointSlice(Box::new(o)), u))?
            }
            Kind::Deployment => typed(value).map(|(o, u)| (Object::Deployment(Box::new(o)), u))?,
            Kind::ReplicaSet => typed(value).map(|(o, u)| (Object::ReplicaSet(Box::new(o)), u))?,
            Kind::Node => typed(value).map(|(o, u)| (Object::Node(Box::new(o)), u))?,
        };
        if object.name().is_empty() {
            return Err(ParseError::new(format!(
                "{}: metadata.name is required",
                object.kind()
            )));
        }
        Ok(Parsed {
            object,
            unknown_fields,
        })
    }

    /// Parses a multi-document YAML text (a `kind: List` document holds its `items`); each
    /// error carries its line in `text`.
    pub fn parse_documents(text: &str) -> Vec<Result<Parsed, ParseError>> {
        let mut out = Vec::new();
        // Where each document starts, so errors point at lines of the whole file.
        let starts: Vec<usize> = std::iter::once(0)
            .chain(
                text.lines()
                    .enumerate()
                    .filter(|(_, l)| l.trim_end() == "---")
                    .map(|(i, _)| i + 1),
            )
            .collect();
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let offset = starts.get(i).copied().unwrap_or(0);
            let at_line = |mut e: ParseError| {
                e.line = Some(e.line.map_or(offset + 1, |l| l + offset));
                e
            };
            let value = match Value::deserialize(doc) {
                Ok(Value::Null) => continue,
                Ok(v) => v,
                Err(e) => {
                    out.push(Err(at_line(ParseError {
                        line: e.location().map(|l| l.line()),
                        message: e.to_string(),
                    })));
                    break;
                }
            };
            if value.get("kind").and_then(Value::as_str) == Some("List") {
                let items = value
                    .get("items")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                out.extend(
                    items
                        .into_iter()
                        .map(|v| Object::from_value(v).map_err(at_line)),
                );
                continue;
            }
            out.push(Object::from_value(value).map_err(at_line));
        }
        out
    }
}

/// `metadata.namespace` of an object of `kind`: `default` when unset, "" for cluster-scoped
/// kinds.
pub fn namespace_of(kind: Kind, meta: &ObjectMeta) -> &str {
    if kind.namespaced() {
        meta.namespace.as_deref().unwrap_or("default")
    } else {
        ""
    }
}

macro_rules! from_typed {
    ($($t:ident),*) => {$(
        impl From<$t> for Object {
            fn from(o: $t) -> Self {
                Object::$t(Box::new(o))
            }
        }
    )*};
}
from_typed!(Service, EndpointSlice, Deployment, ReplicaSet, Node);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_reported_by_path_and_known_ones_are_not() {
        let v = serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "managedFields": [{"manager": "kubectl"}]},
            "spec": {"type": "NodePort", "trafficDistribution": "PreferClose",
                     "ports": [{"port": 80, "nodePortt": 30080}], "bogus": {"a": 1}},
            "status": {"loadBalancer": {}}
        });
        let p = Object::from_value(v).unwrap();
        assert_eq!(
            p.unknown_fields,
            vec!["spec.bogus", "spec.ports[0].nodePortt"]
        );
        assert_eq!(p.object.kind(), Kind::Service);
        assert_eq!(p.object.namespace(), "default");
    }

    #[test]
    fn lists_and_errors_carry_lines() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Node\n  metadata: {name: n1}\n---\napiVersion: v2\nkind: Service\n";
        let r = Object::parse_documents(text);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].as_ref().unwrap().object.name(), "n1");
        assert_eq!(r[0].as_ref().unwrap().object.namespace(), "");
        let e = r[1].as_ref().unwrap_err();
        assert_eq!(e.line, Some(8));
        assert!(
            e.message.contains("unsupported object apiVersion=v2"),
            "{e}"
        );
    }
}

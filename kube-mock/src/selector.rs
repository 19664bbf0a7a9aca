//! Label and field selectors, as the API server parses them from `labelSelector` and
//! `fieldSelector` query parameters.

use serde_json::Value;

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    /// `key=value` or `key==value`.
    Equals(String, String),
    /// `key!=value` (true when the key is absent, as in Kubernetes).
    NotEquals(String, String),
    /// `key in (a,b)`.
    In(String, Vec<String>),
    /// `key notin (a,b)` (true when the key is absent).
    NotIn(String, Vec<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    DoesNotExist(String),
}

impl Requirement {
    fn matches(&self, get: &dyn Fn(&str) -> Option<String>) -> bool {
        match self {
            Self::Equals(k, v) => get(k).as_deref() == Some(v.as_str()),
            Self::NotEquals(k, v) => get(k).as_deref() != Some(v.as_str()),
            Self::In(k, vs) => get(k).is_some_and(|x| vs.contains(&x)),
            Self::NotIn(k, vs) => get(k).is_none_or(|x| !vs.contains(&x)),
            Self::Exists(k) => get(k).is_some(),
            Self::DoesNotExist(k) => get(k).is_none(),
        }
    }
}

/// A parsed selector: every requirement must hold (an empty selector matches everything).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn parse_set(rest: &str) -> Result<Vec<String>, String> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("expected a parenthesised set, found {rest:?}"))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

impl Selector {
    /// Parses a label selector: `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`,
    /// joined by commas.
    pub fn parse_labels(s: &str) -> Result<Self, String> {
        Self::parse(s, true)
    }

    /// Parses a field selector: `path=value`, `path==value`, `path!=value`, joined by commas.
    pub fn parse_fields(s: &str) -> Result<Self, String> {
        Self::parse(s, false)
    }

    fn parse(s: &str, set_based: bool) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for part in split_top_level(s) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let req = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==") {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once('=') {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if !set_based {
                return Err(format!("invalid field selector: {part:?}"));
            } else if let Some((k, rest)) = part.split_once(" notin ") {
                Requirement::NotIn(k.trim().into(), parse_set(rest)?)
            } else if let Some((k, rest)) = part.split_once(" in ") {
                Requirement::In(k.trim().into(), parse_set(rest)?)
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::DoesNotExist(k.trim().into())
            } else {
                Requirement::Exists(part.into())
            };
            requirements.push(req);
        }
        Ok(Self { requirements })
    }

    /// Whether an object's labels satisfy this (label) selector.
    pub fn matches_labels(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        let get = |k: &str| -> Option<String> {
            labels
                .and_then(|l| l.get(k))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        self.requirements.iter().all(|r| r.matches(&get))
    }

    /// Whether an object's fields satisfy this (field) selector. A field path is a dotted path
    /// into the object (`metadata.name`, `spec.nodeName`); a missing field compares as `""`,
    /// as the API server's field sets do.
    pub fn matches_fields(&self, obj: &Value) -> bool {
        let get = |path: &str| -> Option<String> {
            let mut cur = obj;
            for seg in path.split('.') {
                match cur.get(seg) {
                    Some(v) => cur = v,
                    None => return Some(String::new()),
                }
            }
            Some(match cur {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            })
        };
        self.requirements.iter().all(|r| r.matches(&get))
    }
}

/// Both selectors of a list or watch request.
#[derive(Debug, Clone, Default)]
pub struct Selectors {
    /// From `labelSelector`.
    pub labels: Selector,
    /// From `fieldSelector`.
    pub fields: Selector,
}

impl Selectors {
    /// Whether an object passes both selectors.
    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches_labels(obj) && self.fields.matches_fields(obj)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors() {
        let obj = json!({"metadata": {"labels": {"app": "web", "tier": "front"}}});
        let ok = |s: &str| Selector::parse_labels(s).expect(s).matches_labels(&obj);
        assert!(ok(""));
        assert!(ok("app=web"));
        assert!(ok("app==web,tier!=back"));
        assert!(!ok("app=db"));
        assert!(ok("app"));
        assert!(!ok("!app"));
        assert!(ok("!missing"));
        assert!(ok("missing!=x"));
        assert!(ok("app in (db, web),tier notin (back)"));
        assert!(!ok("app notin (web)"));
    }

    #[test]
    fn field_selectors() {
        let obj = json!({"metadata": {"name": "n1", "namespace": "default"}, "spec": {"x": 3}});
        let ok = |s: &str| Selector::parse_fields(s).expect(s).matches_fields(&obj);
        assert!(ok("metadata.name=n1"));
        assert!(ok("metadata.namespace==default,metadata.name!=n2"));
        assert!(!ok("metadata.name=n2"));
        assert!(ok("spec.x=3"));
        assert!(ok("spec.missing="));
        assert!(Selector::parse_fields("metadata.name").is_err());
    }
}

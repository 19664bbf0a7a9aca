//! HTTP routes: path parsing into (resource, namespace, name, subresource), and the list,
//! get, create, update, patch and delete handlers. Watches are handed to [`crate::watch`].

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::log::{RequestRecord, Verb};
use crate::resource::{self, ResourceType};
use crate::selector::{Selector, Selectors};
use crate::server::{Shared, lock};
use crate::store::Part;

/// The version the mock claims to be (`GET /version`).
pub const GIT_VERSION: &str = "v1.35.0-kube-mock";

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/version", get(version))
        .route("/healthz", get(ok))
        .route("/readyz", get(ok))
        .route("/livez", get(ok))
        .fallback(dispatch)
        .with_state(shared)
}

async fn version(State(shared): State<Arc<Shared>>, uri: Uri) -> Response {
    record_other(&shared, "GET", &uri);
    json_response(
        StatusCode::OK,
        &json!({
            "major": "1", "minor": "35", "gitVersion": GIT_VERSION,
            "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.25.0", "compiler": "gc",
            "platform": "linux/amd64"
        }),
    )
}

async fn ok(State(shared): State<Arc<Shared>>, uri: Uri) -> Response {
    record_other(&shared, "GET", &uri);
    (StatusCode::OK, "ok").into_response()
}

fn record_other(shared: &Shared, method: &str, uri: &Uri) {
    shared.record(RequestRecord {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or_default().to_string(),
        verb: Verb::Other,
        resource: None,
        namespace: None,
        name: None,
        status_subresource: false,
    });
}

/// The decoded `key=value` pairs of a query string.
pub(crate) fn query_pairs(query: &str) -> Vec<(String, String)> {
    let uri: Uri = format!("/?{query}").parse().unwrap_or_default();
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri)
        .map(|q| q.0)
        .unwrap_or_default()
}

/// The query parameters of a request.
#[derive(Debug, Default)]
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }

    pub fn selectors(&self) -> Result<Selectors, ApiError> {
        let labels = Selector::parse_labels(self.get("labelSelector").unwrap_or_default())
            .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
        let fields = Selector::parse_fields(self.get("fieldSelector").unwrap_or_default())
            .map_err(ApiError::bad_request)?;
        Ok(Selectors { labels, fields })
    }
}

/// What a resource path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub rtype: ResourceType,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub status: bool,
}

/// Parses `/api/v1/...` and `/apis/<group>/<version>/...` into a [`Target`].
pub(crate) fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let find = |plural: &str| resource::by_path(group, version, plural);
    let target = |rtype: ResourceType, ns: Option<&str>, name: Option<&str>, status: bool| {
        // A namespaced type is reached through a namespace (or listed across all of them); a
        // cluster-scoped one never is.
        let scoped_ok = if rtype.namespaced {
            ns.is_some() || name.is_none()
        } else {
            ns.is_none()
        };
        scoped_ok.then(|| Target {
            rtype,
            namespace: ns.map(str::to_string),
            name: name.map(str::to_string),
            status,
        })
    };
    match rest {
        ["namespaces", ns, plural] if find(plural).is_some() => {
            target(find(plural)?, Some(ns), None, false)
        }
        ["namespaces", ns, plural, name] => target(find(plural)?, Some(ns), Some(name), false),
        ["namespaces", ns, plural, name, "status"] => {
            target(find(plural)?, Some(ns), Some(name), true)
        }
        [plural] => target(find(plural)?, None, None, false),
        [plural, name] => target(find(plural)?, None, Some(name), false),
        [plural, name, "status"] => target(find(plural)?, None, Some(name), true),
        _ => None,
    }
}

pub(crate) fn json_response(code: StatusCode, body: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(body).unwrap_or_default(),
    )
        .into_response()
}

pub(crate) fn error_response(err: &ApiError) -> Response {
    let code = StatusCode::from_u16(err.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(code, &err.to_status())
}

fn verb_of(method: &Method, target: &Target, params: &Params) -> Verb {
    match (method.as_str(), target.name.is_some()) {
        ("GET", false) if params.flag("watch") => Verb::Watch,
        ("GET", false) => Verb::List,
        ("GET", true) => Verb::Get,
        ("POST", false) => Verb::Create,
        ("PUT", true) => Verb::Update,
        ("PATCH", true) => Verb::Patch,
        ("DELETE", true) => Verb::Delete,
        _ => Verb::Other,
    }
}

/// Every resource request lands here.
async fn dispatch(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = Params(query_pairs(uri.query().unwrap_or_default()));
    let Some(target) = parse_path(uri.path()) else {
        record_other(&shared, method.as_str(), &uri);
        return error_response(&ApiError::path_not_found());
    };
    let verb = verb_of(&method, &target, &params);
    shared.record(RequestRecord {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or_default().to_string(),
        verb,
        resource: Some(target.rtype.plural),
        namespace: target.namespace.clone(),
        name: target.name.clone(),
        status_subresource: target.status,
    });
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let result = match verb {
        Verb::Watch => return crate::watch::watch(shared, target, &params),
        Verb::List => list(&shared, &target, &params),
        Verb::Get => get_one(&shared, &target),
        // A namespaced type is created in a namespace, never through the all-namespaces path.
        Verb::Create
            if !target.status && (target.namespace.is_some() || !target.rtype.namespaced) =>
        {
            create(&shared, &target, &content_type, &body)
        }
        Verb::Update => update(&shared, &target, &content_type, &body),
        Verb::Patch => patch(&shared, &target, &content_type, &body),
        Verb::Delete if !target.status => delete(&shared, &target, &body),
        _ => Err(ApiError::method_not_allowed()),
    };
    match result {
        Ok((code, value)) => json_response(code, &value),
        Err(err) => error_response(&err),
    }
}

type Answer = Result<(StatusCode, Value), ApiError>;

fn list(shared: &Shared, target: &Target, params: &Params) -> Answer {
    let selectors = params.selectors()?;
    let (rv, mut items) =
        lock(&shared.store).list(&target.rtype, target.namespace.as_deref(), &selectors);
    // The real server leaves apiVersion and kind off list items. The items are the store's
    // one copy, moved (not copied again) into the answer: lists of 10 000 objects are a
    // benchmark's fixture and must not cost more than the client they feed.
    for item in &mut items {
        if let Some(map) = item.as_object_mut() {
            map.remove("apiVersion");
            map.remove("kind");
        }
    }
    let mut list = json!({
        "kind": target.rtype.list_kind,
        "apiVersion": target.rtype.api_version,
        "metadata": {"resourceVersion": rv.to_string()},
    });
    list["items"] = Value::Array(items);
    Ok((StatusCode::OK, list))
}

fn ns(target: &Target) -> &str {
    target.namespace.as_deref().unwrap_or_default()
}

fn name(target: &Target) -> &str {
    target.name.as_deref().unwrap_or_default()
}

fn get_one(shared: &Shared, target: &Target) -> Answer {
    lock(&shared.store)
        .get(&target.rtype, ns(target), name(target))
        .cloned()
        .map(|v| (StatusCode::OK, v))
        .ok_or_else(|| ApiError::not_found(&target.rtype, name(target)))
}

/// Parses a request body, JSON or (for a YAML content type) YAML.
fn parse_body(content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
    if content_type.contains("yaml") {
        serde_yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding JSON: {e}")))
    }
}

/// Checks that the object's apiVersion/kind, if given, are those of the path.
fn check_type(target: &Target, obj: &Value) -> Result<(), ApiError> {
    let api_version = obj.get("apiVersion").and_then(Value::as_str);
    let kind = obj.get("kind").and_then(Value::as_str);
    if api_version.is_some_and(|a| a != target.rtype.api_version)
        || kind.is_some_and(|k| k != target.rtype.kind)
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({}) or kind ({}) does not match the expected {} {}",
            api_version.unwrap_or_default(),
            kind.unwrap_or_default(),
            target.rtype.api_version,
            target.rtype.kind
        )));
    }
    Ok(())
}

fn create(shared: &Shared, target: &Target, content_type: &str, body: &[u8]) -> Answer {
    let obj = parse_body(content_type, body)?;
    check_type(target, &obj)?;
    let created = shared.write(|s| s.create(&target.rtype, ns(target), obj, Part::Main))?;
    Ok((StatusCode::CREATED, created))
}

fn part(target: &Target) -> Part {
    if target.status {
        Part::Status
    } else {
        Part::Main
    }
}

fn update(shared: &Shared, target: &Target, content_type: &str, body: &[u8]) -> Answer {
    let obj = parse_body(content_type, body)?;
    check_type(target, &obj)?;
    let updated = shared.write(|s| {
        s.update(
            &target.rtype,
            ns(target),
            name(target),
            part(target),
            |_| Ok(obj),
        )
    })?;
    Ok((StatusCode::OK, updated))
}

/// Applies a patch body of the given content type to `current`.
fn apply_patch(content_type: &str, body: &[u8], current: &Value) -> Result<Value, ApiError> {
    let mut doc = current.clone();
    let media = content_type.split(';').next().unwrap_or_default().trim();
    match media {
        // Strategic merge is approximated by a JSON merge patch (lists are replaced whole).
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
            let patch: Value = parse_body("application/json", body)?;
            json_patch::merge(&mut doc, &patch);
        }
        // Server-side apply is approximated by a merge of the applied configuration.
        "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
            let patch = parse_body("yaml", body)?;
            json_patch::merge(&mut doc, &patch);
        }
        "application/json-patch+json" => {
            let patch: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding JSON patch: {e}")))?;
            json_patch::patch(&mut doc, &patch.0)
                .map_err(|e| ApiError::bad_request(format!("the JSON patch failed: {e}")))?;
        }
        other => return Err(ApiError::unsupported_media_type(other)),
    }
    Ok(doc)
}

fn patch(shared: &Shared, target: &Target, content_type: &str, body: &[u8]) -> Answer {
    let is_apply = content_type.starts_with("application/apply-patch");
    shared.write(|s| {
        if is_apply && s.get(&target.rtype, ns(target), name(target)).is_none() {
            // Server-side apply creates what does not exist yet.
            let mut obj = parse_body("yaml", body)?;
            check_type(target, &obj)?;
            obj["metadata"]["name"] = json!(name(target));
            let created = s.create(&target.rtype, ns(target), obj, part(target))?;
            return Ok((StatusCode::CREATED, created));
        }
        let updated = s.update(
            &target.rtype,
            ns(target),
            name(target),
            part(target),
            |cur| apply_patch(content_type, body, cur),
        )?;
        Ok((StatusCode::OK, updated))
    })
}

fn delete(shared: &Shared, target: &Target, body: &[u8]) -> Answer {
    let options: Value = if body.is_empty() {
        Value::Null
    } else {
        parse_body("application/json", body)?
    };
    let precondition = options
        .pointer("/preconditions/resourceVersion")
        .and_then(Value::as_str)
        .map(str::to_string);
    let deleted = shared.write(|s| {
        s.delete(
            &target.rtype,
            ns(target),
            name(target),
            precondition.as_deref(),
        )
    })?;
    Ok((StatusCode::OK, deleted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let t = parse_path("/api/v1/services").expect("all services");
        assert_eq!(
            (t.rtype.plural, t.namespace, t.name),
            ("services", None, None)
        );
        let t = parse_path("/api/v1/namespaces/default/services/web/status").expect("status");
        assert_eq!(t.namespace.as_deref(), Some("default"));
        assert_eq!(t.name.as_deref(), Some("web"));
        assert!(t.status);
        let t = parse_path("/apis/discovery.k8s.io/v1/namespaces/x/endpointslices").expect("eps");
        assert_eq!(t.rtype.kind, "EndpointSlice");
        let t = parse_path("/api/v1/nodes/n1").expect("node");
        assert_eq!(t.name.as_deref(), Some("n1"));
        let t = parse_path("/api/v1/namespaces/kube-system").expect("a namespace object");
        assert_eq!(
            (t.rtype.kind, t.name.as_deref()),
            ("Namespace", Some("kube-system"))
        );
        assert!(parse_path("/api/v1/namespaces/x/nodes").is_none());
        assert!(parse_path("/api/v1/services/web").is_none());
        assert!(parse_path("/apis/apps/v2/deployments").is_none());
    }

    #[test]
    fn query_decoding() {
        let q = query_pairs("fieldSelector=metadata.name%3Dn1&watch=true");
        assert_eq!(q[0], ("fieldSelector".into(), "metadata.name=n1".into()));
        assert_eq!(q[1], ("watch".into(), "true".into()));
    }
}

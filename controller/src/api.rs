//! The agent's HTTP API: Kubernetes-shaped CRUD for the standalone sources' objects, and
//! read-only views of the data path.
//!
//! # Objects (Kubernetes paths and JSON shapes)
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/api/v1/services` | `ServiceList` of every namespace |
//! | GET | `/api/v1/namespaces/{ns}/services` | `ServiceList` of one namespace |
//! | GET, PUT, DELETE | `/api/v1/namespaces/{ns}/services/{name}` | one Service |
//! | GET | `/apis/discovery.k8s.io/v1/endpointslices` | `EndpointSliceList` |
//! | GET | `/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices` | `EndpointSliceList` |
//! | GET, PUT, DELETE | `/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices/{name}` | one EndpointSlice |
//! | GET | `/apis/apps/v1/deployments` | `DeploymentList` |
//! | GET | `/apis/apps/v1/namespaces/{ns}/deployments` | `DeploymentList` |
//! | GET, PUT, DELETE | `/apis/apps/v1/namespaces/{ns}/deployments/{name}` | one Deployment (spec and status) |
//!
//! A PUT creates (201) or replaces (200) the object and answers it as stored. Its body is the
//! object as JSON (`Content-Type: application/json`, at most [`BODY_LIMIT`] bytes) with the
//! route's `apiVersion` and `kind`, `metadata.name` equal to `{name}` and `metadata.namespace`
//! absent or equal to `{ns}` (it is stored with `{ns}`). Fields that decide what the data path
//! does are parsed strictly and validated by the model ([`crate::store::Store::put_api`]): what
//! the data path does not enforce yet is rejected rather than silently ignored. A DELETE
//! answers `{"kind": "Status", "status": "Success", ...}`. Objects defined by manifest files
//! belong to their file: the API answers 409 to changes of them. A Service asking for a
//! frontend (NodePort, or clusterIP / externalIP / LoadBalancer IP and port) another service
//! holds is answered 409 naming that service; one the node's protections refuse (a NodePort
//! outside `node_port_range`, one of the agent's ports or one a socket listens on, an address
//! of the node) 422. A rejected request changes nothing; an accepted write wakes the
//! reconcile loop.
//!
//! # Data path views (`/sluice/v1`, read-only)
//!
//! | path | answer |
//! |---|---|
//! | `/sluice/v1/dataplane/services` | `{"items": [ServiceDump]}`: frontends, table size, backends with state and slots |
//! | `/sluice/v1/dataplane/services/{name}/backends` | one service's backends with state, slots, packets, bytes and new flows |
//! | `/sluice/v1/dataplane/endpoints/{ip}` | the drain handshake: per service, whether `ip` is still `selectable` for new flows and its live `flows` as of the conntrack GC's last pass (`?flows=false`, or before a first pass: `null`; never a table walk) |
//! | `/sluice/v1/dataplane/counters` | packet counters by reason and map occupancy next to capacity |
//! | `/sluice/v1/peers` | `{"service": "ns/name", "peers": [{"node", "address"}], "note"}`: the agents of the DaemonSet (the ready endpoints of their headless Service, [`crate::peers`]), for `drain-wait --all-nodes`; an empty list says why in `note` |
//! | `/sluice/v1/rollouts` | `{"items": [Rollout]}` for every Deployment: `workload` (revision, replica counts, conditions), `status`, `new_flows` and `replicasets`, newest revision first, each with its backends by state, `new_flows` and `new_flow_share` (see [`crate::rollouts`]) |
//!
//! Data-path service names look like `default/web:http/TCP`: in `{name}` they are sent
//! percent-encoded (`default%2Fweb%3Ahttp%2FTCP`); the router matches the encoded path
//! segment and the `Path` extractor decodes it.
//!
//! # Authentication
//! Reads need no token. Every PUT and DELETE needs `Authorization: Bearer <token>` with the
//! token of the agent's `--token-file` (compared in constant time): without the header, or
//! with a malformed one, 401; with another token, 403; an agent started without a token
//! answers every write 403 (writes are disabled).
//!
//! # Errors
//! Every error is [`AppError`], answered as `{"error": "<what is wrong>", "status": N}`:
//! 400 malformed JSON (with serde's line and column), a body that is not the route's
//! kind, a name or namespace that differs from the URL or is not a DNS-1123 subdomain;
//! 401/403 authentication; 404 unknown object, service or route; 405 method; 409 owned by a
//! file; 413 body too large; 415 not JSON; 422 unknown fields or invalid values (every
//! problem found); 500 a data-path read failed (logged once).

use std::{collections::BTreeMap, net::IpAddr};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{
        DefaultBodyLimit, FromRequest, Path, Query, Request, State,
        rejection::{BytesRejection, PathRejection, QueryRejection},
    },
    http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::get,
};
use lb_datapath::{
    Capacities, DataPath, EndpointState, EndpointStatus, MapOccupancy, Reason, ServiceDump, Stats,
};
use serde::{Deserialize, Serialize};

use crate::{
    model::Key,
    objects::{Kind, Object, Parsed},
    rollouts::{self as rollout_view, Scope},
    state::Shared,
    store::StoreError,
};

/// Largest request body accepted (413 above).
pub const BODY_LIMIT: usize = 1 << 20;

/// Longest name or namespace (a DNS-1123 subdomain).
const MAX_NAME_LEN: usize = 253;

/// Builds the API. Serve it with `axum::serve`, or call it with `tower::ServiceExt::oneshot`.
pub fn router(state: Shared) -> Router {
    let mut app = Router::new();
    for r in RESOURCES {
        app = app
            .route(
                &r.list_path(),
                get(move |State(s): State<Shared>| list_objects(r, s, None)),
            )
            .route(
                &r.namespaced_list_path(),
                get(
                    move |State(s): State<Shared>, p: Result<Path<NsPath>, PathRejection>| async move {
                        list_objects(r, s, Some(p?.0.ns)).await
                    },
                ),
            )
            .route(
                &r.object_path(),
                get(move |State(s): State<Shared>, p: ObjPathResult| get_object(r, s, p))
                    .put(move |State(s): State<Shared>, p: ObjPathResult, req: Request| {
                        put_object(r, s, p, req)
                    })
                    .delete(
                        move |State(s): State<Shared>, p: ObjPathResult, h: HeaderMap| {
                            delete_object(r, s, p, h)
                        },
                    ),
            );
    }
    app.route("/sluice/v1/dataplane/services", get(dataplane_services))
        .route(
            "/sluice/v1/dataplane/services/{name}/backends",
            get(dataplane_backends),
        )
        .route(
            "/sluice/v1/dataplane/endpoints/{ip}",
            get(dataplane_endpoint),
        )
        .route("/sluice/v1/dataplane/counters", get(dataplane_counters))
        .route("/sluice/v1/peers", get(peers))
        .route("/sluice/v1/rollouts", get(rollouts))
        .route("/sluice/v1/ipam", get(ipam_status))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

// ---------------------------------------------------------------------------------------------
// Errors

/// Everything the API answers with an error status; the body is
/// `{"error": "<message>", "status": <code>}`.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// 400: malformed request (JSON syntax, kind or name that does not fit the route).
    #[error("{0}")]
    BadRequest(String),
    /// 401: no or malformed `Authorization: Bearer` header on a write.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: wrong token, or writes are disabled (no token configured).
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such object, data-path service or route.
    #[error("{0}")]
    NotFound(String),
    /// 405: the route exists, the method does not.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 409: the object belongs to a manifest file (or the cluster), or a frontend it asks for
    /// (NodePort, clusterIP/externalIP/LoadBalancer IP and port) is held by another service,
    /// which the message names.
    #[error("{0}")]
    Conflict(String),
    /// 413: body larger than [`BODY_LIMIT`].
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 415: the body is not declared as JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: well-formed JSON whose content is not a valid object (unknown field, wrong type,
    /// invalid or not enforced value), or a service the node's protections refuse (a NodePort
    /// outside the range, the agent's own or listened on; an address of the node).
    #[error("{0}")]
    Unprocessable(String),
    /// 500: the agent failed (e.g. reading the data path); logged when answered.
    #[error("{context}: {message}")]
    Internal {
        context: &'static str,
        message: String,
    },
}

impl AppError {
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn internal(context: &'static str, error: impl std::fmt::Display) -> Self {
        AppError::Internal {
            context,
            message: error.to_string(),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    status: u16,
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = self.to_string();
        match &self {
            AppError::Internal { context, message } => {
                tracing::error!(context, error = %message, "API request failed");
            }
            _ => {
                tracing::debug!(status = status.as_u16(), error = %message, "API request rejected");
            }
        }
        let mut response = (
            status,
            Json(ErrorBody {
                error: &message,
                status: status.as_u16(),
            }),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            // RFC 6750: tell the client which scheme to use.
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        let message = e.to_string();
        match e {
            StoreError::OwnedByFile { .. }
            | StoreError::OwnedByCluster { .. }
            | StoreError::Conflict { .. } => AppError::Conflict(message),
            StoreError::NotFound { .. } => AppError::NotFound(message),
            StoreError::Invalid { .. } => AppError::Unprocessable(message),
            StoreError::Persist { .. } => AppError::Internal {
                context: "saving the API objects",
                message,
            },
        }
    }
}

impl From<PathRejection> for AppError {
    fn from(r: PathRejection) -> Self {
        AppError::BadRequest(format!("invalid URL path: {}", r.body_text()))
    }
}

impl From<BytesRejection> for AppError {
    fn from(r: BytesRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            AppError::PayloadTooLarge(format!(
                "request body is larger than the limit of {BODY_LIMIT} bytes"
            ))
        } else {
            AppError::BadRequest(format!(
                "reading the request body failed: {}",
                r.body_text()
            ))
        }
    }
}

/// A data-path read error: an unknown service is the client's 404, anything else is ours.
fn data_path_error(context: &'static str, e: lb_datapath::Error) -> AppError {
    match e {
        lb_datapath::Error::UnknownService(name) => {
            AppError::NotFound(format!("the data path holds no service named `{name}`"))
        }
        e => AppError::internal(context, e),
    }
}

type ApiResult = Result<Response, AppError>;

async fn no_route(method: Method, uri: Uri) -> AppError {
    AppError::NotFound(format!(
        "no route for {method} {}; objects live under /api/v1, /apis/discovery.k8s.io/v1 and \
         /apis/apps/v1, data-path views under /sluice/v1",
        uri.path()
    ))
}

async fn wrong_method(method: Method, uri: Uri) -> AppError {
    AppError::MethodNotAllowed(format!(
        "method {method} is not allowed on {} (see the Allow header)",
        uri.path()
    ))
}

// ---------------------------------------------------------------------------------------------
// Authentication

/// Checks the bearer token of a write.
fn authorize(state: &Shared, headers: &HeaderMap) -> Result<(), AppError> {
    let Some(expected) = state.token.as_deref().filter(|t| !t.is_empty()) else {
        return Err(AppError::Forbidden(
            "API writes are disabled: the agent was started without a token. Restart it with \
             `--token-file <file>` (the file holds the token) and send `Authorization: Bearer \
             <token>`"
                .into(),
        ));
    };
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(AppError::Unauthorized(
            "writes need an `Authorization: Bearer <token>` header".into(),
        ));
    };
    let malformed = || {
        AppError::Unauthorized(
            "malformed Authorization header: expected `Authorization: Bearer <token>`".into(),
        )
    };
    let value = value.to_str().map_err(|_| malformed())?;
    let (scheme, token) = value.trim().split_once(' ').ok_or_else(malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(malformed());
    }
    if !constant_time_eq(token.as_bytes(), expected.as_bytes()) {
        return Err(AppError::Forbidden("wrong token".into()));
    }
    Ok(())
}

/// Compares without an early exit, so the time taken does not tell how many leading bytes
/// of a guess were right (only the lengths can be inferred).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

// ---------------------------------------------------------------------------------------------
// Objects

/// How one kind appears in the Kubernetes API.
#[derive(Clone, Copy, Debug)]
struct Resource {
    kind: Kind,
    /// `/api/v1` or `/apis/<group>/<version>`.
    prefix: &'static str,
    /// The lowercase plural of the URL.
    plural: &'static str,
    list_kind: &'static str,
}

const RESOURCES: [Resource; 4] = [
    Resource {
        kind: Kind::Service,
        prefix: "/api/v1",
        plural: "services",
        list_kind: "ServiceList",
    },
    Resource {
        kind: Kind::EndpointSlice,
        prefix: "/apis/discovery.k8s.io/v1",
        plural: "endpointslices",
        list_kind: "EndpointSliceList",
    },
    Resource {
        kind: Kind::Deployment,
        prefix: "/apis/apps/v1",
        plural: "deployments",
        list_kind: "DeploymentList",
    },
    Resource {
        kind: Kind::ReplicaSet,
        prefix: "/apis/apps/v1",
        plural: "replicasets",
        list_kind: "ReplicaSetList",
    },
];

impl Resource {
    fn list_path(self) -> String {
        format!("{}/{}", self.prefix, self.plural)
    }

    fn namespaced_list_path(self) -> String {
        format!("{}/namespaces/{{ns}}/{}", self.prefix, self.plural)
    }

    fn object_path(self) -> String {
        format!("{}/namespaces/{{ns}}/{}/{{name}}", self.prefix, self.plural)
    }

    fn location(self, key: &Key) -> String {
        format!(
            "{}/namespaces/{}/{}/{}",
            self.prefix, key.namespace, self.plural, key.name
        )
    }
}

#[derive(Debug, Deserialize)]
struct NsPath {
    ns: String,
}

#[derive(Debug, Deserialize)]
struct ObjPath {
    ns: String,
    name: String,
}

type ObjPathResult = Result<Path<ObjPath>, PathRejection>;

/// Checks a DNS-1123 subdomain (what Kubernetes requires of most object names): at most 253
/// characters, dot-separated labels of lowercase letters, digits and `-`, each starting and
/// ending with a letter or digit.
pub fn check_dns1123_subdomain(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > MAX_NAME_LEN {
        return Err(format!(
            "must be at most {MAX_NAME_LEN} characters (has {})",
            value.len()
        ));
    }
    let ok = value.split('.').all(|label| {
        let b = label.as_bytes();
        let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        b.first().is_some_and(alnum)
            && b.last().is_some_and(alnum)
            && b.iter().all(|c| alnum(c) || *c == b'-')
    });
    if ok {
        Ok(())
    } else {
        Err(
            "must consist of lowercase letters, digits, '-' and '.', and start and end with a \
             letter or digit (a DNS-1123 subdomain)"
                .into(),
        )
    }
}

fn check_name(what: &str, value: &str) -> Result<(), AppError> {
    check_dns1123_subdomain(value)
        .map_err(|why| AppError::BadRequest(format!("{what} {value:?}: {why}")))
}

/// The object key of a route, validated.
fn route_key(path: ObjPathResult) -> Result<Key, AppError> {
    let Path(ObjPath { ns, name }) = path?;
    check_name("namespace", &ns)?;
    check_name("name", &name)?;
    Ok(Key {
        namespace: ns,
        name,
    })
}

/// Serializes a stored object in its Kubernetes shape.
struct ObjectJson<'a>(&'a Object);

impl Serialize for ObjectJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Object::Service(o) => o.serialize(s),
            Object::EndpointSlice(o) => o.serialize(s),
            Object::Deployment(o) => o.serialize(s),
            Object::ReplicaSet(o) => o.serialize(s),
            Object::Node(o) => o.serialize(s),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListJson<'a> {
    api_version: &'static str,
    kind: &'static str,
    metadata: ListMeta,
    items: Vec<ObjectJson<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListMeta {
    /// The store's generation, so a client can tell whether anything changed.
    resource_version: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusJson<'a> {
    api_version: &'static str,
    kind: &'static str,
    status: &'static str,
    details: StatusDetails<'a>,
}

#[derive(Serialize)]
struct StatusDetails<'a> {
    name: &'a str,
    namespace: &'a str,
    kind: &'static str,
}

async fn list_objects(r: Resource, state: Shared, ns: Option<String>) -> ApiResult {
    if let Some(ns) = &ns {
        check_name("namespace", ns)?;
    }
    let store = state.store.lock().await;
    let items = store
        .list(r.kind)
        .filter(|(key, _)| ns.as_deref().is_none_or(|ns| key.namespace == ns))
        .map(|(_, e)| ObjectJson(&e.object))
        .collect();
    let list = ListJson {
        api_version: r.kind.api_version(),
        kind: r.list_kind,
        metadata: ListMeta {
            resource_version: store.generation().to_string(),
        },
        items,
    };
    Ok(Json(list).into_response())
}

async fn get_object(r: Resource, state: Shared, path: ObjPathResult) -> ApiResult {
    let key = route_key(path)?;
    let store = state.store.lock().await;
    let entry = store.get(r.kind, &key).ok_or_else(|| {
        AppError::from(StoreError::NotFound {
            kind: r.kind,
            key: key.clone(),
        })
    })?;
    Ok(Json(ObjectJson(&entry.object)).into_response())
}

/// The checks run in this order, so each request gets the most fundamental complaint:
/// token, URL, content type, body size, JSON syntax, kind, fields, name and namespace, and
/// last the model's validation inside the store.
async fn put_object(r: Resource, state: Shared, path: ObjPathResult, req: Request) -> ApiResult {
    authorize(&state, req.headers())?;
    let key = route_key(path)?;
    require_json(req.headers())?;
    let body = Bytes::from_request(req, &()).await?;
    let Parsed {
        object: obj,
        unknown_fields,
    } = parse_object(r.kind, &key, &body)?;
    // Serialized before the store takes it, so the answer is exactly what was stored.
    let json = serde_json::to_vec(&ObjectJson(&obj))
        .map_err(|e| AppError::internal("serializing the object", e))?;
    let created = state.store.lock().await.put_api(obj)?;
    state.changed.notify_one();
    tracing::info!(kind = r.kind.name(), object = %key, created, "object written through the API");
    let mut response = (
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        json,
    )
        .into_response();
    if created && let Ok(location) = HeaderValue::try_from(r.location(&key)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    // As an API server with fieldValidation=Warn: unknown fields are dropped, and said so.
    for f in unknown_fields {
        if let Ok(v) = HeaderValue::try_from(format!("299 - \"unknown field \\\"{f}\\\"\"")) {
            response.headers_mut().append(header::WARNING, v);
        }
    }
    Ok(response)
}

async fn delete_object(
    r: Resource,
    state: Shared,
    path: ObjPathResult,
    headers: HeaderMap,
) -> ApiResult {
    authorize(&state, &headers)?;
    let key = route_key(path)?;
    state.store.lock().await.delete_api(r.kind, &key)?;
    state.changed.notify_one();
    tracing::info!(kind = r.kind.name(), object = %key, "object deleted through the API");
    Ok(Json(StatusJson {
        api_version: "v1",
        kind: "Status",
        status: "Success",
        details: StatusDetails {
            name: &key.name,
            namespace: &key.namespace,
            kind: r.plural,
        },
    })
    .into_response())
}

/// Accepts `application/json` with optional parameters (`; charset=utf-8`).
fn require_json(headers: &HeaderMap) -> Result<(), AppError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("<not ASCII>"));
    let essence = content_type.map(|c| c.split(';').next().unwrap_or_default().trim());
    if essence.is_some_and(|e| e.eq_ignore_ascii_case("application/json")) {
        return Ok(());
    }
    Err(AppError::UnsupportedMediaType(format!(
        "Content-Type {}: the body must be the object as JSON, sent with `Content-Type: \
         application/json` (YAML is read from manifest files, not from the API)",
        content_type.unwrap_or("missing")
    )))
}

/// Parses a PUT body into the route's kind, stored under the route's key.
fn parse_object(kind: Kind, key: &Key, body: &[u8]) -> Result<Parsed, AppError> {
    // Syntax first, for messages with line and column.
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| AppError::BadRequest(format!("request body is not valid JSON: {e}")))?;
    let Some(fields) = value.as_object() else {
        return Err(AppError::BadRequest(format!(
            "request body must be a JSON object (a {} {})",
            kind.api_version(),
            kind.name()
        )));
    };
    let field = |k: &str| fields.get(k).and_then(serde_json::Value::as_str);
    let (api_version, body_kind) = (field("apiVersion"), field("kind"));
    if api_version != Some(kind.api_version()) || body_kind != Some(kind.name()) {
        return Err(AppError::BadRequest(format!(
            "this route takes apiVersion {} kind {}; the body has apiVersion {} kind {}",
            kind.api_version(),
            kind.name(),
            api_version.unwrap_or("<missing>"),
            body_kind.unwrap_or("<missing>"),
        )));
    }
    let name = value
        .pointer("/metadata/name")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default();
    if name.is_empty() {
        return Err(AppError::BadRequest(format!(
            "metadata.name is required (and must equal the name in the URL {:?})",
            key.name
        )));
    }
    // The same types and parser as the manifest files (k8s-openapi): a wrong type is 422.
    let mut parsed =
        Object::from_value(value).map_err(|e| AppError::Unprocessable(e.message.clone()))?;
    let meta = parsed.object.metadata_mut();
    if meta.name.as_deref() != Some(key.name.as_str()) {
        return Err(AppError::BadRequest(format!(
            "metadata.name {:?} does not match the name in the URL {:?}",
            meta.name.as_deref().unwrap_or_default(),
            key.name
        )));
    }
    match &meta.namespace {
        Some(ns) if *ns != key.namespace => {
            return Err(AppError::BadRequest(format!(
                "metadata.namespace {ns:?} does not match the namespace in the URL {:?}",
                key.namespace
            )));
        }
        _ => meta.namespace = Some(key.namespace.clone()),
    }
    Ok(parsed)
}

// ---------------------------------------------------------------------------------------------
// Data-path views

/// Runs a read of the data path while holding the reconciler (so it sees no half-applied
/// round), on the blocking pool: reads such as a conntrack scan can take a while and must not
/// stall the runtime's workers.
async fn read_data_path<T, F>(state: &Shared, read: F) -> Result<T, AppError>
where
    T: Send + 'static,
    F: FnOnce(&dyn DataPath) -> Result<T, AppError> + Send + 'static,
{
    let reconciler = state.reconciler.clone().lock_owned().await;
    tokio::task::spawn_blocking(move || read(&**reconciler.data_path()))
        .await
        .map_err(|e| AppError::internal("reading the data path", e))?
}

#[derive(Serialize)]
struct Items<T> {
    items: Vec<T>,
}

/// One item of `/sluice/v1/dataplane/services`: what the data path holds, and whether the
/// last write of it succeeded. A service that never fitted has no dump, only its error.
#[derive(Debug, Serialize)]
struct ServiceJson {
    name: String,
    /// True when the service's current spec is in force; false when its last write failed
    /// (`error` says why, e.g. the capacity setting to raise).
    programmed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(flatten)]
    dump: Option<ServiceDumpFields>,
}

/// [`lb_datapath::ServiceDump`] without its name (flattened into [`ServiceJson`]).
#[derive(Debug, Serialize)]
struct ServiceDumpFields {
    id: u32,
    protocol: lb_datapath::Protocol,
    frontends: Vec<lb_datapath::Frontend>,
    table_size: u32,
    backends: Vec<lb_datapath::BackendDump>,
}

async fn dataplane_services(State(state): State<Shared>) -> ApiResult {
    let mut failures = state.reconciler.lock().await.failures();
    let dump = read_data_path(&state, |dp| Ok(dp.dump())).await?;
    let mut items: Vec<ServiceJson> = dump
        .into_iter()
        .map(|d| {
            let error = failures.remove(&d.name);
            ServiceJson {
                programmed: error.is_none(),
                error,
                name: d.name,
                dump: Some(ServiceDumpFields {
                    id: d.id,
                    protocol: d.protocol,
                    frontends: d.frontends,
                    table_size: d.table_size,
                    backends: d.backends,
                }),
            }
        })
        .collect();
    items.extend(failures.into_iter().map(|(name, error)| ServiceJson {
        name,
        programmed: false,
        error: Some(error),
        dump: None,
    }));
    items.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(Items { items }).into_response())
}

/// One backend of [`BackendsJson`]: the dump's view and the counters.
#[derive(Debug, Serialize)]
struct BackendJson {
    addr: std::net::SocketAddr,
    /// `None`: counted but no longer held (removed while flows may still name it).
    state: Option<EndpointState>,
    id: Option<u32>,
    slots: u32,
    #[serde(flatten)]
    stats: Stats,
}

#[derive(Debug, Serialize)]
struct BackendsJson {
    service: String,
    id: u32,
    protocol: lb_datapath::Protocol,
    table_size: u32,
    /// The service's own counters.
    totals: Stats,
    backends: Vec<BackendJson>,
}

/// `{name}` is the data-path service name, percent-encoded (see the module docs).
async fn dataplane_backends(
    State(state): State<Shared>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let Path(name) = path?;
    let view = read_data_path(&state, move |dp| {
        let stats = dp
            .service_stats(&name)
            .map_err(|e| data_path_error("reading service counters", e))?;
        let Some(dump) = dp.dump().into_iter().find(|d| d.name == name) else {
            return Err(data_path_error(
                "dumping the service",
                lb_datapath::Error::UnknownService(name),
            ));
        };
        Ok(backends_view(dump, stats))
    })
    .await?;
    Ok(Json(view).into_response())
}

fn backends_view(dump: ServiceDump, stats: lb_datapath::ServiceStats) -> BackendsJson {
    let mut counters: BTreeMap<_, _> = stats.backends.into_iter().collect();
    let mut backends: Vec<BackendJson> = dump
        .backends
        .iter()
        .map(|b| BackendJson {
            addr: b.addr,
            state: Some(b.state),
            id: Some(b.id),
            slots: b.slots,
            stats: counters.remove(&b.addr).unwrap_or_default(),
        })
        .collect();
    backends.extend(counters.into_iter().map(|(addr, stats)| BackendJson {
        addr,
        state: None,
        id: None,
        slots: 0,
        stats,
    }));
    BackendsJson {
        service: dump.name,
        id: dump.id,
        protocol: dump.protocol,
        table_size: dump.table_size,
        totals: stats.service,
        backends,
    }
}

#[derive(Debug, Serialize)]
struct EndpointJson {
    ip: IpAddr,
    /// Whether any service still selects this address for new flows.
    selectable: bool,
    /// Tracked flows naming it, over all services (`null` with `?flows=false`).
    flows: Option<u64>,
    /// Per service and backend (address:port).
    items: Vec<EndpointStatus>,
}

#[derive(Debug, Deserialize)]
struct EndpointQuery {
    /// Report the endpoint's live flows (the conntrack GC's last count; no table walk).
    #[serde(default = "counted")]
    flows: bool,
}

fn counted() -> bool {
    true
}

/// The drain handshake: an address no service selects any more (`selectable: false`) can stop
/// accepting; one the data path does not know answers an empty list.
async fn dataplane_endpoint(
    State(state): State<Shared>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<EndpointQuery>, QueryRejection>,
) -> ApiResult {
    let count_flows = query
        .map_err(|r| AppError::BadRequest(format!("invalid query: {}", r.body_text())))?
        .0
        .flows;
    let Path(raw) = path?;
    let ip: IpAddr = raw
        .parse()
        .map_err(|_| AppError::BadRequest(format!("{raw:?} is not an IPv4 or IPv6 address")))?;
    let items = read_data_path(&state, move |dp| {
        dp.endpoint_status(ip, count_flows)
            .map_err(|e| data_path_error("reading the endpoint's status", e))
    })
    .await?;
    Ok(Json(EndpointJson {
        ip,
        selectable: items.iter().any(|s| s.selectable),
        flows: count_flows.then(|| items.iter().filter_map(|s| s.flows).sum()),
        items,
    })
    .into_response())
}

#[derive(Debug, Serialize)]
struct CountersJson {
    /// Packets by reason label (passed, dropped, translated, refused, ...).
    reasons: BTreeMap<&'static str, u64>,
    occupancy: MapOccupancy,
    capacities: Capacities,
}

async fn dataplane_counters(State(state): State<Shared>) -> ApiResult {
    let view = read_data_path(&state, |dp| {
        let reasons = dp
            .reasons()
            .map_err(|e| data_path_error("reading the reason counters", e))?;
        let occupancy = dp
            .usage()
            .map_err(|e| data_path_error("reading the map occupancy", e))?;
        Ok(CountersJson {
            reasons: reasons
                .into_iter()
                .map(|(r, n): (Reason, u64)| (r.label(), n))
                .collect(),
            occupancy,
            capacities: dp.capacities(),
        })
    })
    .await?;
    Ok(Json(view).into_response())
}

/// The other agents, for the cluster-wide drain handshake.
async fn peers(State(state): State<Shared>) -> ApiResult {
    let store = state.store.lock().await;
    let view = crate::peers::view(&store.tables, state.peer_service.as_ref());
    Ok(Json(view).into_response())
}

/// The tables are read first (and released), then the data path's counters.
async fn rollouts(State(state): State<Shared>) -> ApiResult {
    let plan = {
        let store = state.store.lock().await;
        let probes = state.probes.lock().await;
        rollout_view::plan(&store.tables, &probes, Scope::All)
    };
    let items = read_data_path(&state, move |dp| {
        rollout_view::view(plan, dp).map_err(|e| data_path_error("reading rollout counters", e))
    })
    .await?;
    Ok(Json(Items { items }).into_response())
}

/// The LoadBalancer IP assigner's view: whether this agent holds the Lease, pools, who holds
/// which address, refusals.
async fn ipam_status(State(state): State<Shared>) -> ApiResult {
    let st = state.ipam.borrow().clone();
    Ok(Json(st).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns1123_subdomains() {
        for ok in [
            "a",
            "web",
            "web-1",
            "web.v2",
            "0",
            "a.b.c",
            &"a".repeat(253),
        ] {
            assert_eq!(check_dns1123_subdomain(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "Web",
            "-web",
            "web-",
            "web..x",
            ".web",
            "web.",
            "a_b",
            "wéb",
            "a b",
            &"a".repeat(254),
        ] {
            assert!(check_dns1123_subdomain(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret\0"));
        assert!(!constant_time_eq(b"", b"secret"));
        assert!(constant_time_eq(b"", b""));
    }
}

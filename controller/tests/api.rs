//! The HTTP API, called in-process through `tower::ServiceExt::oneshot` on `api::router`
//! with the in-memory fake data path: every route's happy path, authentication, and a table
//! of malformed or invalid requests that must each be answered 4xx and change nothing.

use std::{net::IpAddr, path::Path, time::Duration};

use axum::{
    body::Body,
    http::{HeaderMap, Method, Request, StatusCode, header},
};
use controller::{api, fake::FakeDataPath, objects::Object, state::Shared};
use lb_datapath::{
    Capacities, DataPath, EndpointStatus, Error, MapOccupancy, Reason, ServiceDump, ServiceSpec,
    ServiceStats,
};
use serde_json::{Value, json};
use tower::ServiceExt as _;

const TOKEN: &str = "secret";
const SVC: &str = "/api/v1/namespaces/default/services/web";
const SLICE: &str = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/web-abc";
const DEPLOY: &str = "/apis/apps/v1/namespaces/default/deployments/web";
/// The data-path name of `web`'s single unnamed port, percent-encoded.
const WEB_DP_NAME: &str = "default%2Fweb%3A8080%2FTCP";

fn state() -> Shared {
    Shared::new(Box::new(FakeDataPath::default()), Some(TOKEN.into()))
}

/// One request through a fresh router over `state`.
struct Call {
    method: Method,
    path: String,
    headers: Vec<(header::HeaderName, String)>,
    body: Vec<u8>,
}

impl Call {
    fn new(method: Method, path: &str) -> Self {
        Call {
            method,
            path: path.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    fn get(path: &str) -> Self {
        Call::new(Method::GET, path)
    }

    /// An authorized JSON PUT.
    fn put(path: &str, body: &Value) -> Self {
        Call::new(Method::PUT, path)
            .token(TOKEN)
            .header(header::CONTENT_TYPE, "application/json")
            .raw(body.to_string().into_bytes())
    }

    /// An authorized DELETE.
    fn delete(path: &str) -> Self {
        Call::new(Method::DELETE, path).token(TOKEN)
    }

    fn header(mut self, name: header::HeaderName, value: &str) -> Self {
        self.headers.retain(|(n, _)| *n != name);
        self.headers.push((name, value.into()));
        self
    }

    fn without(mut self, name: header::HeaderName) -> Self {
        self.headers.retain(|(n, _)| *n != name);
        self
    }

    fn token(self, token: &str) -> Self {
        self.header(header::AUTHORIZATION, &format!("Bearer {token}"))
    }

    fn raw(mut self, body: Vec<u8>) -> Self {
        self.body = body;
        self
    }

    async fn send(self, state: &Shared) -> Answer {
        let mut req = Request::builder().method(self.method).uri(&self.path);
        for (name, value) in &self.headers {
            req = req.header(name, value);
        }
        let response = api::router(state.clone())
            .oneshot(req.body(Body::from(self.body)).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "{status}: body is not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        Answer {
            status,
            headers,
            body,
        }
    }
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    /// Asserts the status, and for errors the `{"error", "status"}` shape.
    fn expect(self, status: StatusCode) -> Self {
        assert_eq!(self.status, status, "unexpected answer: {}", self.body);
        if status.is_client_error() || status.is_server_error() {
            assert_eq!(self.body["status"], status.as_u16(), "{}", self.body);
            assert!(self.body["error"].is_string(), "{}", self.body);
        }
        self
    }

    fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or_default()
    }
}

fn service() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": {
            "type": "NodePort",
            "selector": {"app": "web"},
            "clusterIP": "10.96.0.10",
            "ports": [{"port": 8080, "targetPort": 8080, "nodePort": 30080, "protocol": "TCP"}]
        }
    })
}

fn slice() -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "web-abc", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": ["198.51.100.10"], "conditions": {"ready": true},
             "targetRef": {"kind": "Pod", "name": "web-5d8f7c9b4-abcde"}},
            {"addresses": ["198.51.100.11"],
             "conditions": {"ready": false, "serving": true, "terminating": true}}
        ]
    })
}

fn deployment() -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default",
                     "annotations": {"deployment.kubernetes.io/revision": "2"}},
        "spec": {"replicas": 4, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "web", "image": "bootcamp:v2"}]}}},
        "status": {"replicas": 4, "updatedReplicas": 2, "readyReplicas": 4, "availableReplicas": 4}
    })
}

/// `base` with `edit` applied.
fn with(mut base: Value, edit: impl FnOnce(&mut Value)) -> Value {
    edit(&mut base);
    base
}

/// Whether the reconcile loop was woken (consumes the stored wake-up).
async fn woken(state: &Shared) -> bool {
    tokio::time::timeout(Duration::from_millis(20), state.changed.notified())
        .await
        .is_ok()
}

/// One reconcile round, as the agent's loop runs it.
async fn reconcile(state: &Shared) {
    let mut store = state.store.lock().await;
    let probes = state.probes.lock().await.clone();
    let mut rec = state.reconciler.lock().await;
    rec.allow_pruning();
    let round = controller::reconcile::sync_dirty(&mut store.tables, &probes, &mut rec);
    assert!(round.errors.is_empty(), "{round:?}");
}

/// The store's generation and every object as the API lists them.
async fn snapshot(state: &Shared) -> (u64, Vec<Value>) {
    let generation = state.store.lock().await.generation();
    let mut lists = Vec::new();
    for path in [
        "/api/v1/services",
        "/apis/discovery.k8s.io/v1/endpointslices",
        "/apis/apps/v1/deployments",
    ] {
        lists.push(
            Call::get(path)
                .send(state)
                .await
                .expect(StatusCode::OK)
                .body,
        );
    }
    (generation, lists)
}

#[tokio::test]
async fn service_create_replace_get_list_delete() {
    let state = state();
    let created = Call::put(SVC, &service())
        .send(&state)
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(created.body, service(), "answers the object as stored");
    assert_eq!(created.headers[header::LOCATION], SVC);
    assert_eq!(created.headers[header::CONTENT_TYPE], "application/json");
    assert!(woken(&state).await, "a write wakes the reconcile loop");

    let replaced = with(service(), |v| {
        v["spec"]["ports"][0]["nodePort"] = json!(30081);
    });
    let answer = Call::put(SVC, &replaced)
        .send(&state)
        .await
        .expect(StatusCode::OK);
    assert_eq!(answer.body, replaced);
    assert!(answer.headers.get(header::LOCATION).is_none());
    assert!(woken(&state).await);

    assert_eq!(
        Call::get(SVC)
            .send(&state)
            .await
            .expect(StatusCode::OK)
            .body,
        replaced
    );

    let list = Call::get("/api/v1/services")
        .send(&state)
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(list["apiVersion"], "v1");
    assert_eq!(list["kind"], "ServiceList");
    assert_eq!(list["items"], json!([replaced]));
    assert_eq!(list["metadata"]["resourceVersion"], "2");
    let ns_list = Call::get("/api/v1/namespaces/default/services")
        .send(&state)
        .await
        .expect(StatusCode::OK);
    assert_eq!(ns_list.body["items"], json!([replaced]));
    let other_ns = Call::get("/api/v1/namespaces/other/services")
        .send(&state)
        .await
        .expect(StatusCode::OK);
    assert_eq!(other_ns.body["items"], json!([]));

    let deleted = Call::delete(SVC).send(&state).await.expect(StatusCode::OK);
    assert_eq!(deleted.body["status"], "Success");
    assert_eq!(deleted.body["kind"], "Status");
    assert_eq!(deleted.body["details"]["name"], "web");
    assert!(woken(&state).await);
    let gone = Call::get(SVC)
        .send(&state)
        .await
        .expect(StatusCode::NOT_FOUND);
    assert!(gone.error().contains("default/web"), "{}", gone.error());
    assert_eq!(
        Call::get("/api/v1/services").send(&state).await.body["items"],
        json!([])
    );
}

#[tokio::test]
async fn the_route_namespace_is_stored_when_the_body_has_none() {
    let state = state();
    let path = "/api/v1/namespaces/shop/services/web";
    let body = with(service(), |v| {
        v["metadata"].as_object_mut().unwrap().remove("namespace");
    });
    let answer = Call::put(path, &body)
        .send(&state)
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(answer.body["metadata"]["namespace"], "shop");
    let stored = Call::get(path).send(&state).await.expect(StatusCode::OK);
    assert_eq!(stored.body["metadata"]["namespace"], "shop");
    // Not visible in another namespace.
    Call::get(SVC)
        .send(&state)
        .await
        .expect(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn content_type_parameters_are_accepted() {
    let state = state();
    Call::put(SVC, &service())
        .header(header::CONTENT_TYPE, "Application/JSON; charset=utf-8")
        .send(&state)
        .await
        .expect(StatusCode::CREATED);
}

#[tokio::test]
async fn endpointslice_create_replace_get_list_delete() {
    let state = state();
    let answer = Call::put(SLICE, &slice())
        .send(&state)
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(answer.body, slice());
    let replaced = with(slice(), |v| {
        v["endpoints"][1]["conditions"]["serving"] = json!(false);
    });
    Call::put(SLICE, &replaced)
        .send(&state)
        .await
        .expect(StatusCode::OK);
    assert_eq!(
        Call::get(SLICE)
            .send(&state)
            .await
            .expect(StatusCode::OK)
            .body,
        replaced
    );
    let list = Call::get("/apis/discovery.k8s.io/v1/endpointslices")
        .send(&state)
        .await
        .expect(StatusCode::OK);
    assert_eq!(list.body["kind"], "EndpointSliceList");
    assert_eq!(list.body["apiVersion"], "discovery.k8s.io/v1");
    assert_eq!(list.body["items"], json!([replaced]));
    let ns_list = Call::get("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices")
        .send(&state)
        .await;
    assert_eq!(
        ns_list.expect(StatusCode::OK).body["items"],
        json!([replaced])
    );
    assert_eq!(
        Call::delete(SLICE)
            .send(&state)
            .await
            .expect(StatusCode::OK)
            .body["status"],
        "Success"
    );
    Call::get(SLICE)
        .send(&state)
        .await
        .expect(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn deployment_create_replace_get_list_delete_and_rollouts() {
    let state = state();
    let answer = Call::put(DEPLOY, &deployment())
        .send(&state)
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(answer.body, deployment(), "spec and status are kept");

    let rollouts = Call::get("/sluice/v1/rollouts")
        .send(&state)
        .await
        .expect(StatusCode::OK)
        .body;
    let items = rollouts["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(
        items[0]["workload"]["key"],
        json!({"namespace": "default", "name": "web"})
    );
    assert_eq!(items[0]["workload"]["desired"], 4);
    assert_eq!(items[0]["workload"]["updated"], 2);
    assert_eq!(items[0]["workload"]["revision"], "2");
    assert_eq!(items[0]["status"], "rolling: 2 of 4 updated replicas");

    let done = with(deployment(), |v| v["status"]["updatedReplicas"] = json!(4));
    Call::put(DEPLOY, &done)
        .send(&state)
        .await
        .expect(StatusCode::OK);
    assert_eq!(
        Call::get(DEPLOY)
            .send(&state)
            .await
            .expect(StatusCode::OK)
            .body,
        done
    );
    let rollouts = Call::get("/sluice/v1/rollouts")
        .send(&state)
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(rollouts["items"][0]["status"], "complete");

    let list = Call::get("/apis/apps/v1/deployments")
        .send(&state)
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(list["kind"], "DeploymentList");
    assert_eq!(list["apiVersion"], "apps/v1");
    assert_eq!(list["items"], json!([done]));
    let ns_list = Call::get("/apis/apps/v1/namespaces/default/deployments")
        .send(&state)
        .await;
    assert_eq!(ns_list.expect(StatusCode::OK).body["items"], json!([done]));

    Call::delete(DEPLOY)
        .send(&state)
        .await
        .expect(StatusCode::OK);
    Call::get(DEPLOY)
        .send(&state)
        .await
        .expect(StatusCode::NOT_FOUND);
    let rollouts = Call::get("/sluice/v1/rollouts")
        .send(&state)
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(rollouts["items"], json!([]));
}

#[tokio::test]
async fn dataplane_views_after_a_reconcile_round() {
    let fake = FakeDataPath::default();
    let counters = fake.counters.clone();
    let state = Shared::new(Box::new(fake), Some(TOKEN.into()));
    Call::put(SVC, &service())
        .send(&state)
        .await
        .expect(StatusCode::CREATED);
    Call::put(SLICE, &slice())
        .send(&state)
        .await
        .expect(StatusCode::CREATED);
    reconcile(&state).await;

    // The dump: the service with its frontends and backends.
    let dump = Call::get("/sluice/v1/dataplane/services")
        .send(&state)
        .await
        .expect(StatusCode::OK)
        .body;
    let services = dump["items"].as_array().unwrap();
    assert_eq!(services.len(), 1, "{dump}");
    let web = &services[0];
    assert_eq!(web["name"], "default/web:8080/TCP");
    assert_eq!(web["protocol"], "Tcp");
    assert_eq!(
        web["frontends"],
        json!([{"NodePort": 30080}, {"Address": "10.96.0.10:8080"}])
    );
    let backends: Vec<(&str, &str)> = web["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["addr"].as_str().unwrap(), b["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        backends,
        [
            ("198.51.100.10:8080", "Ready"),
            ("198.51.100.11:8080", "ServingTerminating")
        ]
    );
    // The table holds the ready backend only (a terminating one is a fallback for when no
    // backend is ready): all its slots are the ready one's.
    let table_size = web["table_size"].as_u64().unwrap();
    assert!(table_size > 0, "{web}");

    // Per-backend state and counters; the name is percent-encoded in the path.
    let stats = |packets, bytes, new_flows| lb_datapath::Stats {
        packets,
        bytes,
        new_flows,
    };
    let name = "default/web:8080/TCP";
    counters.set(
        name,
        "198.51.100.10:8080".parse().unwrap(),
        stats(7, 700, 3),
    );
    counters.set(
        name,
        "198.51.100.11:8080".parse().unwrap(),
        stats(2, 120, 1),
    );
    let view = Call::get(&format!(
        "/sluice/v1/dataplane/services/{WEB_DP_NAME}/backends"
    ))
    .send(&state)
    .await
    .expect(StatusCode::OK)
    .body;
    assert_eq!(view["service"], "default/web:8080/TCP");
    assert_eq!(
        view["totals"],
        json!({"packets": 9, "bytes": 820, "new_flows": 4})
    );
    let row = |i: usize| {
        let b = &view["backends"][i];
        (
            b["addr"].as_str().unwrap().to_string(),
            b["state"].as_str().unwrap().to_string(),
            [&b["packets"], &b["bytes"], &b["new_flows"], &b["slots"]].map(|v| v.as_u64().unwrap()),
        )
    };
    assert_eq!(
        row(0),
        (
            "198.51.100.10:8080".into(),
            "Ready".into(),
            [7, 700, 3, table_size]
        )
    );
    assert_eq!(
        row(1),
        (
            "198.51.100.11:8080".into(),
            "ServingTerminating".into(),
            [2, 120, 1, 0]
        )
    );
    assert_eq!(view["backends"].as_array().unwrap().len(), 2);
    let unknown = Call::get("/sluice/v1/dataplane/services/default%2Fnope%3A80%2FTCP/backends")
        .send(&state)
        .await;
    assert!(
        unknown
            .expect(StatusCode::NOT_FOUND)
            .error()
            .contains("default/nope:80/TCP")
    );

    // The drain handshake: the ready endpoint is selected, the terminating one is not.
    let ready = Call::get("/sluice/v1/dataplane/endpoints/198.51.100.10")
        .send(&state)
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(ready["selectable"], true);
    assert_eq!(ready["flows"], 0);
    assert_eq!(ready["items"][0]["service"], "default/web:8080/TCP");
    assert_eq!(ready["items"][0]["selectable"], true);
    let draining = Call::get("/sluice/v1/dataplane/endpoints/198.51.100.11")
        .send(&state)
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(draining["selectable"], false);
    assert_eq!(draining["items"][0]["selectable"], false);
    assert_eq!(draining["items"][0]["flows"], 0);
    let stranger = Call::get("/sluice/v1/dataplane/endpoints/2001:db8::99")
        .send(&state)
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(
        stranger,
        json!({"ip": "2001:db8::99", "selectable": false, "flows": 0, "items": []})
    );
    let bad = Call::get("/sluice/v1/dataplane/endpoints/198.51.100.300")
        .send(&state)
        .await;
    assert!(
        bad.expect(StatusCode::BAD_REQUEST)
            .error()
            .contains("not an IPv4 or IPv6 address")
    );
    // Without the flow count (no conntrack walk): the same selection, flows null.
    let quick = Call::get("/sluice/v1/dataplane/endpoints/198.51.100.11?flows=false")
        .send(&state)
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(quick["selectable"], false);
    assert_eq!(quick["flows"], Value::Null);
    assert_eq!(quick["items"][0]["flows"], Value::Null);
    let bad_query = Call::get("/sluice/v1/dataplane/endpoints/198.51.100.11?flows=maybe")
        .send(&state)
        .await;
    assert!(
        bad_query
            .expect(StatusCode::BAD_REQUEST)
            .error()
            .contains("invalid query")
    );

    // Counters: every reason, the occupancy and the capacities.
    let counters = Call::get("/sluice/v1/dataplane/counters")
        .send(&state)
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(
        counters["reasons"].as_object().unwrap().len(),
        Reason::ALL.len()
    );
    assert_eq!(counters["reasons"][Reason::ALL[0].label()], 0);
    assert_eq!(counters["occupancy"]["frontends"], 2);
    assert_eq!(counters["occupancy"]["backends"], 2);
    assert_eq!(
        counters["capacities"]["services"],
        Capacities::default().services
    );

    // Deleting through the API and reconciling empties the data path.
    Call::delete(SVC).send(&state).await.expect(StatusCode::OK);
    reconcile(&state).await;
    let dump = Call::get("/sluice/v1/dataplane/services")
        .send(&state)
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(dump["items"], json!([]));
}

/// Reads that fail in the data path are the agent's fault: 500, with what failed.
#[derive(Debug)]
struct BrokenDataPath;

fn broken() -> Error {
    Error::Interface {
        ifname: "eth9".into(),
        reason: "injected read failure".into(),
    }
}

impl DataPath for BrokenDataPath {
    fn upsert_service(&mut self, _: &ServiceSpec) -> Result<u32, Error> {
        Err(broken())
    }
    fn remove_service(&mut self, _: &str) -> Result<(), Error> {
        Err(broken())
    }
    fn service_names(&self) -> Vec<String> {
        Vec::new()
    }
    fn dump(&self) -> Vec<ServiceDump> {
        Vec::new()
    }
    fn purge_stale(&mut self) -> Result<u64, Error> {
        Err(broken())
    }
    fn endpoint_status(&self, _: IpAddr, _: bool) -> Result<Vec<EndpointStatus>, Error> {
        Err(broken())
    }
    fn service_stats(&self, _: &str) -> Result<ServiceStats, Error> {
        Err(broken())
    }
    fn reasons(&self) -> Result<Vec<(Reason, u64)>, Error> {
        Err(broken())
    }
    fn occupancy(&self) -> Result<MapOccupancy, Error> {
        Err(broken())
    }
    fn usage(&self) -> Result<MapOccupancy, Error> {
        Err(broken())
    }
    fn capacities(&self) -> Capacities {
        Capacities::default()
    }
    fn conntrack_stats(&self) -> lb_datapath::ConntrackStats {
        lb_datapath::ConntrackStats::default()
    }
    fn set_node_addresses(&mut self, _: &[IpAddr]) -> Result<(), Error> {
        Err(broken())
    }
    fn node_addresses(&self) -> Result<Vec<IpAddr>, Error> {
        Err(broken())
    }
    fn set_hash_seed(&mut self, _: u32) -> Result<(), Error> {
        Err(broken())
    }
}

#[tokio::test]
async fn data_path_failures_answer_500_with_the_cause() {
    let state = Shared::new(Box::new(BrokenDataPath), Some(TOKEN.into()));
    for path in [
        "/sluice/v1/dataplane/counters".to_string(),
        "/sluice/v1/dataplane/endpoints/198.51.100.10".to_string(),
        format!("/sluice/v1/dataplane/services/{WEB_DP_NAME}/backends"),
    ] {
        let answer = Call::get(&path)
            .send(&state)
            .await
            .expect(StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            answer.error().contains("injected read failure"),
            "{path}: {}",
            answer.error()
        );
    }
}

#[tokio::test]
async fn writes_need_the_token_reads_do_not() {
    let state = state();
    let put = || Call::put(SVC, &service());

    let missing = put()
        .without(header::AUTHORIZATION)
        .send(&state)
        .await
        .expect(StatusCode::UNAUTHORIZED);
    assert_eq!(missing.headers[header::WWW_AUTHENTICATE], "Bearer");
    assert!(
        missing.error().contains("Authorization: Bearer"),
        "{}",
        missing.error()
    );
    for malformed in [
        "Basic c2VjcmV0",
        "Bearer",
        "Bearer ",
        "secret",
        "Token secret",
    ] {
        let answer = put()
            .header(header::AUTHORIZATION, malformed)
            .send(&state)
            .await;
        assert!(
            answer
                .expect(StatusCode::UNAUTHORIZED)
                .error()
                .contains("malformed"),
            "{malformed:?}"
        );
    }
    let wrong = put()
        .token("secreT")
        .send(&state)
        .await
        .expect(StatusCode::FORBIDDEN);
    assert_eq!(wrong.error(), "wrong token");
    put()
        .token("secret-and-more")
        .send(&state)
        .await
        .expect(StatusCode::FORBIDDEN);
    // The scheme is case-insensitive (RFC 9110).
    put()
        .header(header::AUTHORIZATION, "bearer secret")
        .send(&state)
        .await
        .expect(StatusCode::CREATED);

    Call::delete(SVC)
        .without(header::AUTHORIZATION)
        .send(&state)
        .await
        .expect(StatusCode::UNAUTHORIZED);
    Call::delete(SVC)
        .header(header::AUTHORIZATION, "Basic x")
        .send(&state)
        .await
        .expect(StatusCode::UNAUTHORIZED);
    Call::delete(SVC)
        .token("nope")
        .send(&state)
        .await
        .expect(StatusCode::FORBIDDEN);
    // Authentication comes before anything else: a bad body without a token is a 401.
    Call::new(Method::PUT, SVC)
        .raw(b"{".to_vec())
        .send(&state)
        .await
        .expect(StatusCode::UNAUTHORIZED);

    // Reads need no token.
    Call::get(SVC).send(&state).await.expect(StatusCode::OK);
    Call::get("/sluice/v1/dataplane/services")
        .send(&state)
        .await
        .expect(StatusCode::OK);
    Call::delete(SVC).send(&state).await.expect(StatusCode::OK);
}

#[tokio::test]
async fn without_a_configured_token_writes_are_disabled() {
    let state = Shared::new(Box::new(FakeDataPath::default()), None);
    for call in [Call::put(SVC, &service()), Call::delete(SVC)] {
        let answer = call.send(&state).await.expect(StatusCode::FORBIDDEN);
        assert!(
            answer.error().contains("writes are disabled"),
            "{}",
            answer.error()
        );
        assert!(
            answer.error().contains("--token-file"),
            "{}",
            answer.error()
        );
    }
    assert_eq!(state.store.lock().await.generation(), 0);
    Call::get("/api/v1/services")
        .send(&state)
        .await
        .expect(StatusCode::OK);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let state = state();
    let answer = Call::get("/api/v1/pods")
        .send(&state)
        .await
        .expect(StatusCode::NOT_FOUND);
    assert!(
        answer.error().contains("/api/v1/pods"),
        "{}",
        answer.error()
    );
    let answer = Call::new(Method::POST, "/api/v1/services")
        .send(&state)
        .await
        .expect(StatusCode::METHOD_NOT_ALLOWED);
    assert!(answer.error().contains("POST"), "{}", answer.error());
    assert!(
        answer.headers[header::ALLOW]
            .to_str()
            .unwrap()
            .contains("GET")
    );
    let answer = Call::new(Method::PATCH, SVC)
        .send(&state)
        .await
        .expect(StatusCode::METHOD_NOT_ALLOWED);
    let allow = answer.headers[header::ALLOW].to_str().unwrap().to_string();
    for m in ["GET", "PUT", "DELETE"] {
        assert!(allow.contains(m), "{allow}");
    }
}

/// A request that must be refused, and the pieces (separated by `|`) of the message that say
/// why.
struct Bad {
    what: &'static str,
    call: Call,
    status: StatusCode,
    says: &'static str,
}

fn bad(what: &'static str, call: Call, status: StatusCode, says: &'static str) -> Bad {
    Bad {
        what,
        call,
        status,
        says,
    }
}

fn put_svc(edit: impl FnOnce(&mut Value)) -> Call {
    Call::put(SVC, &with(service(), edit))
}

fn put_slice(edit: impl FnOnce(&mut Value)) -> Call {
    Call::put(SLICE, &with(slice(), edit))
}

fn port(v: &mut Value) -> &mut Value {
    &mut v["spec"]["ports"][0]
}

fn invalid_requests() -> Vec<Bad> {
    use StatusCode as S;
    let long = "a".repeat(254);
    let long_path: &'static str =
        Box::leak(format!("/api/v1/namespaces/default/services/{long}").into_boxed_str());
    let long_name = long.clone();
    let mut huge = service();
    huge["metadata"]["annotations"] = json!({"filler": "x".repeat(api::BODY_LIMIT)});
    vec![
        // Body syntax and media type.
        bad(
            "truncated JSON",
            Call::put(SVC, &service()).raw(b"{\"apiVersion\": ".to_vec()),
            S::BAD_REQUEST,
            "line 1 column",
        ),
        bad(
            "empty body",
            Call::put(SVC, &service()).raw(Vec::new()),
            S::BAD_REQUEST,
            "not valid JSON",
        ),
        bad(
            "YAML body",
            Call::put(SVC, &service()).raw(b"apiVersion: v1\nkind: Service\n".to_vec()),
            S::BAD_REQUEST,
            "not valid JSON",
        ),
        bad(
            "JSON array",
            Call::put(SVC, &service()).raw(b"[]".to_vec()),
            S::BAD_REQUEST,
            "must be a JSON object",
        ),
        bad(
            "body over 1 MiB",
            Call::put(SVC, &huge),
            S::PAYLOAD_TOO_LARGE,
            "larger than the limit",
        ),
        bad(
            "text/plain",
            Call::put(SVC, &service()).header(header::CONTENT_TYPE, "text/plain"),
            S::UNSUPPORTED_MEDIA_TYPE,
            "application/json",
        ),
        bad(
            "application/yaml",
            Call::put(SVC, &service()).header(header::CONTENT_TYPE, "application/yaml"),
            S::UNSUPPORTED_MEDIA_TYPE,
            "application/yaml",
        ),
        bad(
            "no content type",
            Call::put(SVC, &service()).without(header::CONTENT_TYPE),
            S::UNSUPPORTED_MEDIA_TYPE,
            "missing",
        ),
        // Kind, names and namespaces against the route.
        bad(
            "Deployment body on the services route",
            Call::put(SVC, &deployment()),
            S::BAD_REQUEST,
            "this route takes apiVersion v1 kind Service",
        ),
        bad(
            "Service body on the endpointslices route",
            Call::put(
                SLICE,
                &with(service(), |v| v["metadata"]["name"] = json!("web-abc")),
            ),
            S::BAD_REQUEST,
            "kind EndpointSlice",
        ),
        bad(
            "wrong kind",
            put_svc(|v| v["kind"] = json!("Pod")),
            S::BAD_REQUEST,
            "kind Pod",
        ),
        bad(
            "missing apiVersion",
            put_svc(|v| {
                v.as_object_mut().unwrap().remove("apiVersion");
            }),
            S::BAD_REQUEST,
            "apiVersion <missing>",
        ),
        bad(
            "apiVersion v2",
            put_svc(|v| v["apiVersion"] = json!("v2")),
            S::BAD_REQUEST,
            "apiVersion v2",
        ),
        bad(
            "name differs from the URL",
            put_svc(|v| v["metadata"]["name"] = json!("other")),
            S::BAD_REQUEST,
            "does not match the name in the URL",
        ),
        bad(
            "missing metadata.name",
            put_svc(|v| {
                v["metadata"].as_object_mut().unwrap().remove("name");
            }),
            S::BAD_REQUEST,
            "metadata.name is required",
        ),
        bad(
            "namespace differs from the URL",
            put_svc(|v| v["metadata"]["namespace"] = json!("kube-system")),
            S::BAD_REQUEST,
            "does not match the namespace in the URL",
        ),
        bad(
            "uppercase name",
            Call::put(
                "/api/v1/namespaces/default/services/Web",
                &with(service(), |v| v["metadata"]["name"] = json!("Web")),
            ),
            S::BAD_REQUEST,
            "DNS-1123",
        ),
        bad(
            "underscore in the namespace",
            Call::put("/api/v1/namespaces/my_ns/services/web", &service()),
            S::BAD_REQUEST,
            "namespace \"my_ns\"",
        ),
        bad(
            "name starting with '-'",
            Call::put("/api/v1/namespaces/default/services/-web", &service()),
            S::BAD_REQUEST,
            "start and end",
        ),
        bad(
            "empty label in a name",
            Call::put("/api/v1/namespaces/default/services/web..x", &service()),
            S::BAD_REQUEST,
            "DNS-1123",
        ),
        bad(
            "name of 254 characters",
            Call::put(
                long_path,
                &with(service(), |v| v["metadata"]["name"] = json!(long_name)),
            ),
            S::BAD_REQUEST,
            "at most 253",
        ),
        bad(
            "name not UTF-8 once decoded",
            Call::put("/api/v1/namespaces/default/services/%FF", &service()),
            S::BAD_REQUEST,
            "invalid URL path",
        ),
        // Service fields.
        bad(
            "port 0",
            put_svc(|v| port(v)["port"] = json!(0)),
            S::UNPROCESSABLE_ENTITY,
            "spec.ports[0].port: 0 is not a port",
        ),
        bad(
            "port 70000",
            put_svc(|v| port(v)["port"] = json!(70000)),
            S::UNPROCESSABLE_ENTITY,
            "70000 is not a port",
        ),
        bad(
            "port as a string",
            put_svc(|v| port(v)["port"] = json!("80")),
            S::UNPROCESSABLE_ENTITY,
            "invalid type",
        ),
        bad(
            "SCTP",
            put_svc(|v| port(v)["protocol"] = json!("SCTP")),
            S::UNPROCESSABLE_ENTITY,
            "protocol SCTP is not supported",
        ),
        bad(
            "externalTrafficPolicy not a policy",
            put_svc(|v| v["spec"]["externalTrafficPolicy"] = json!("Nearest")),
            S::UNPROCESSABLE_ENTITY,
            "externalTrafficPolicy: Nearest is not a policy",
        ),
        bad(
            "loadBalancerSourceRanges not a CIDR",
            put_svc(|v| {
                v["spec"]["loadBalancerSourceRanges"] = json!(["192.0.2.0/24", "192.0.2.7"]);
            }),
            S::UNPROCESSABLE_ENTITY,
            "spec.loadBalancerSourceRanges[1]: \"192.0.2.7\" is not a CIDR",
        ),
        bad(
            "healthCheckNodePort without externalTrafficPolicy Local",
            put_svc(|v| v["spec"]["healthCheckNodePort"] = json!(32000)),
            S::UNPROCESSABLE_ENTITY,
            "healthCheckNodePort: 32000 may only be set when type is LoadBalancer and externalTrafficPolicy is Local",
        ),
        bad(
            "sessionAffinity Cookie",
            put_svc(|v| v["spec"]["sessionAffinity"] = json!("Cookie")),
            S::UNPROCESSABLE_ENTITY,
            "sessionAffinity: Cookie",
        ),
        bad(
            "affinity timeoutSeconds 0",
            put_svc(|v| {
                v["spec"]["sessionAffinity"] = json!("ClientIP");
                v["spec"]["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 0}});
            }),
            S::UNPROCESSABLE_ENTITY,
            "timeoutSeconds: 0",
        ),
        bad(
            "NodePort without nodePort",
            put_svc(|v| {
                port(v).as_object_mut().unwrap().remove("nodePort");
            }),
            S::UNPROCESSABLE_ENTITY,
            "nodePort: required",
        ),
        bad(
            "nodePort on ClusterIP",
            put_svc(|v| v["spec"]["type"] = json!("ClusterIP")),
            S::UNPROCESSABLE_ENTITY,
            "only NodePort and LoadBalancer",
        ),
        bad(
            "duplicate ports",
            put_svc(|v| {
                v["spec"]["ports"] = json!([{"name": "a", "port": 80, "nodePort": 30001}, {"name": "b", "port": 80, "nodePort": 30002}]);
            }),
            S::UNPROCESSABLE_ENTITY,
            "listed twice",
        ),
        bad(
            "unnamed ports in a multi-port service",
            put_svc(|v| {
                v["spec"]["ports"] =
                    json!([{"port": 80, "nodePort": 30001}, {"port": 81, "nodePort": 30002}]);
            }),
            S::UNPROCESSABLE_ENTITY,
            "name: required when a service has more than one port",
        ),
        bad(
            "no ports",
            put_svc(|v| v["spec"]["ports"] = json!([])),
            S::UNPROCESSABLE_ENTITY,
            "at least one port",
        ),
        bad(
            "clusterIP not an IP",
            put_svc(|v| v["spec"]["clusterIP"] = json!("10.96.0.300")),
            S::UNPROCESSABLE_ENTITY,
            "is not an IP address",
        ),
        bad(
            "every problem at once",
            put_svc(|v| {
                port(v)["port"] = json!(0);
                port(v)["protocol"] = json!("SCTP");
                v["spec"]["externalTrafficPolicy"] = json!("Nearest");
            }),
            S::UNPROCESSABLE_ENTITY,
            "spec.ports[0].port: 0 is not a port|protocol SCTP is not supported|externalTrafficPolicy: Nearest",
        ),
        // EndpointSlice fields.
        bad(
            "slice without the service-name label",
            put_slice(|v| v["metadata"]["labels"] = json!({})),
            S::UNPROCESSABLE_ENTITY,
            "kubernetes.io/service-name: required",
        ),
        bad(
            "address not an IP",
            put_slice(|v| v["endpoints"][0]["addresses"] = json!(["pod-a.local"])),
            S::UNPROCESSABLE_ENTITY,
            "\"pod-a.local\" is not an IP address",
        ),
        bad(
            "IPv6 address in an IPv4 slice",
            put_slice(|v| v["endpoints"][0]["addresses"] = json!(["2001:db8::10"])),
            S::UNPROCESSABLE_ENTITY,
            "does not match addressType IPv4",
        ),
        bad(
            "bad probe annotation",
            put_slice(|v| {
                v["metadata"]["annotations"] =
                    json!({"sluice.io/readiness-probe": "{\"tcpSocket\": {\"port\": 0}}"});
            }),
            S::UNPROCESSABLE_ENTITY,
            "sluice.io/readiness-probe",
        ),
        bad(
            "slice port 0",
            put_slice(|v| v["ports"][0]["port"] = json!(0)),
            S::UNPROCESSABLE_ENTITY,
            "ports[0].port: 0",
        ),
        // Deployment fields.
        bad(
            "negative replicas",
            Call::put(
                DEPLOY,
                &with(deployment(), |v| v["spec"]["replicas"] = json!(-1)),
            ),
            S::UNPROCESSABLE_ENTITY,
            "spec.replicas: -1 is not a replica count",
        ),
        bad(
            "negative ready replicas",
            Call::put(
                DEPLOY,
                &with(deployment(), |v| v["status"]["readyReplicas"] = json!(-3)),
            ),
            S::UNPROCESSABLE_ENTITY,
            "status.readyReplicas",
        ),
        // Objects that do not exist, or belong to a file.
        bad(
            "DELETE of a missing object",
            Call::delete("/api/v1/namespaces/default/services/missing"),
            S::NOT_FOUND,
            "no Service default/missing",
        ),
        bad(
            "DELETE of a missing deployment",
            Call::delete("/apis/apps/v1/namespaces/default/deployments/missing"),
            S::NOT_FOUND,
            "no Deployment",
        ),
        bad(
            "PUT to a file-owned object",
            Call::put(
                "/api/v1/namespaces/default/services/from-file",
                &with(service(), |v| v["metadata"]["name"] = json!("from-file")),
            ),
            S::CONFLICT,
            "defined by file",
        ),
        bad(
            "DELETE of a file-owned object",
            Call::delete("/api/v1/namespaces/default/services/from-file"),
            S::CONFLICT,
            "change it there",
        ),
        // Routes and methods.
        bad(
            "POST to a list",
            Call::new(Method::POST, "/api/v1/services").token(TOKEN),
            S::METHOD_NOT_ALLOWED,
            "POST",
        ),
        bad(
            "PUT to a data-path view",
            Call::put("/sluice/v1/dataplane/services", &service()),
            S::METHOD_NOT_ALLOWED,
            "PUT",
        ),
        bad(
            "unknown resource",
            Call::put("/api/v1/namespaces/default/pods/web", &service()),
            S::NOT_FOUND,
            "no route",
        ),
        bad(
            "list of an invalid namespace",
            Call::get("/api/v1/namespaces/Bad_NS/services"),
            S::BAD_REQUEST,
            "namespace \"Bad_NS\"",
        ),
        bad(
            "GET of an invalid name",
            Call::get("/apis/apps/v1/namespaces/default/deployments/x_y"),
            S::BAD_REQUEST,
            "name \"x_y\"",
        ),
    ]
}

#[tokio::test]
async fn invalid_requests_are_refused_and_change_nothing() {
    let state = state();
    Call::put(SVC, &service())
        .send(&state)
        .await
        .expect(StatusCode::CREATED);
    Call::put(SLICE, &slice())
        .send(&state)
        .await
        .expect(StatusCode::CREATED);
    Call::put(DEPLOY, &deployment())
        .send(&state)
        .await
        .expect(StatusCode::CREATED);
    let file_owned = Object::from_value(with(service(), |v| {
        v["metadata"]["name"] = json!("from-file");
        // Its own frontends: another service's would be refused.
        v["spec"]["clusterIP"] = json!("10.96.0.11");
        port(v)["nodePort"] = json!(30081);
    }))
    .unwrap()
    .object;
    let conflicts = state
        .store
        .lock()
        .await
        .replace_file(Path::new("/etc/sluice/web.yaml"), vec![file_owned]);
    assert!(conflicts.is_empty(), "{conflicts:?}");
    while woken(&state).await {}
    let before = snapshot(&state).await;

    let cases = invalid_requests();
    assert!(cases.len() >= 30, "{} cases", cases.len());
    for case in cases {
        let answer = case.call.send(&state).await;
        assert_eq!(answer.status, case.status, "{}: {}", case.what, answer.body);
        assert!(answer.status.is_client_error(), "{}", case.what);
        assert_eq!(
            answer.body["status"],
            case.status.as_u16(),
            "{}: {}",
            case.what,
            answer.body
        );
        for piece in case.says.split('|') {
            assert!(
                answer.error().contains(piece),
                "{}: {:?} does not say {piece:?}",
                case.what,
                answer.error()
            );
        }
        assert_eq!(
            snapshot(&state).await,
            before,
            "{}: the store changed",
            case.what
        );
        assert!(
            !woken(&state).await,
            "{}: a refused request woke the reconcile loop",
            case.what
        );
    }
}

/// As an API server with its default `fieldValidation=Warn`: what k8s-openapi's types do not
/// know is dropped and named in `Warning` headers; fields a real API server prints but the
/// data path does not act on (`loadBalancerIP`, `trafficDistribution`, `hints`, ...) are
/// accepted.
#[tokio::test]
async fn unknown_and_informational_fields_are_accepted_unknown_ones_with_a_warning() {
    let state = state();
    let answer = Call::put(
        SVC,
        &with(service(), |v| {
            v["spec"]["bogus"] = json!(true);
            v["spec"]["loadBalancerIP"] = json!("203.0.113.1");
            v["spec"]["trafficDistribution"] = json!("PreferClose");
            v["metadata"]["managedFields"] = json!([{"manager": "kubectl", "operation": "Update"}]);
        }),
    )
    .send(&state)
    .await
    .expect(StatusCode::CREATED);
    let warnings: Vec<&str> = answer
        .headers
        .get_all("warning")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(warnings, vec![r#"299 - "unknown field \"spec.bogus\"""#]);
    assert!(
        answer.body["spec"].get("bogus").is_none(),
        "{}",
        answer.body
    );
    assert_eq!(answer.body["spec"]["trafficDistribution"], "PreferClose");
    let slice = with(slice(), |v| {
        v["endpoints"][0]["hints"] = json!({"forZones": [{"name": "zone-a"}]});
        v["endpoints"][0]["zone"] = json!("zone-a");
    });
    Call::put(SLICE, &slice)
        .send(&state)
        .await
        .expect(StatusCode::CREATED);
}

/// `service()` as `name`, with its own clusterIP and NodePort, then `edit`ed.
fn other_service(name: &str, edit: impl FnOnce(&mut Value)) -> Value {
    with(service(), |v| {
        v["metadata"]["name"] = json!(name);
        v["spec"]["clusterIP"] = json!("10.96.0.20");
        port(v)["nodePort"] = json!(30090);
        edit(v);
    })
}

/// The data path's services as the API shows them.
async fn dataplane(state: &Shared) -> Value {
    Call::get("/sluice/v1/dataplane/services")
        .send(state)
        .await
        .expect(StatusCode::OK)
        .body
}

/// Each `(what, body, status, says)`: PUT as `other` is refused with `status`, its error
/// says every `|`-separated piece, and neither the store nor the data path changes.
async fn refused_and_unchanged(state: &Shared, cases: Vec<(&str, Value, StatusCode, &str)>) {
    reconcile(state).await;
    while woken(state).await {}
    let (before, dp_before) = (snapshot(state).await, dataplane(state).await);
    for (what, body, status, says) in cases {
        let answer = Call::put("/api/v1/namespaces/default/services/other", &body)
            .send(state)
            .await
            .expect(status);
        for piece in says.split('|') {
            assert!(
                answer.error().contains(piece),
                "{what}: {:?} does not say {piece:?}",
                answer.error()
            );
        }
        assert_eq!(snapshot(state).await, before, "{what}: the store changed");
        assert!(!woken(state).await, "{what}: woke the reconcile loop");
        reconcile(state).await;
        assert_eq!(
            dataplane(state).await,
            dp_before,
            "{what}: the data path changed"
        );
    }
}

#[tokio::test]
async fn a_frontend_another_service_holds_is_409_naming_it_and_changes_nothing() {
    let state = state();
    let web = with(service(), |v| {
        v["spec"]["externalIPs"] = json!(["203.0.113.5"]);
    });
    Call::put(SVC, &web)
        .send(&state)
        .await
        .expect(StatusCode::CREATED);
    const C: StatusCode = StatusCode::CONFLICT;
    refused_and_unchanged(
        &state,
        vec![
            (
                "the same NodePort",
                other_service("other", |v| port(v)["nodePort"] = json!(30080)),
                C,
                "Service default/other|frontend nodePort 30080/TCP|already used by Service default/web",
            ),
            (
                "the same clusterIP and port",
                other_service("other", |v| v["spec"]["clusterIP"] = json!("10.96.0.10")),
                C,
                "frontend 10.96.0.10:8080/TCP|default/web",
            ),
            (
                "the same externalIP and port",
                other_service("other", |v| v["spec"]["externalIPs"] = json!(["203.0.113.5"])),
                C,
                "frontend 203.0.113.5:8080/TCP|default/web",
            ),
            (
                "the same LoadBalancer IP and port as its externalIP",
                other_service("other", |v| {
                    v["spec"]["type"] = json!("LoadBalancer");
                    v["status"] = json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.5"}]}});
                }),
                C,
                "frontend 203.0.113.5:8080/TCP|default/web",
            ),
        ],
    )
    .await;

    // Another protocol, or another port of the same address, is another frontend.
    let udp = other_service("other", |v| {
        port(v)["nodePort"] = json!(30080);
        port(v)["protocol"] = json!("UDP");
        v["spec"]["externalIPs"] = json!(["203.0.113.5"]);
    });
    Call::put("/api/v1/namespaces/default/services/other", &udp)
        .send(&state)
        .await
        .expect(StatusCode::CREATED);
    // A service may keep and change its own frontends; once web lets its NodePort go,
    // another service can take it.
    let moved = with(web, |v| port(v)["nodePort"] = json!(30085));
    Call::put(SVC, &moved)
        .send(&state)
        .await
        .expect(StatusCode::OK);
    let taker = other_service("third", |v| {
        v["spec"]["clusterIP"] = json!("10.96.0.30");
        port(v)["nodePort"] = json!(30080);
    });
    Call::put("/api/v1/namespaces/default/services/third", &taker)
        .send(&state)
        .await
        .expect(StatusCode::CREATED);
}

#[tokio::test]
async fn node_ports_and_addresses_the_node_protects_are_422_and_change_nothing() {
    use controller::protections::{Listening, Protections};
    let state = state();
    {
        let mut store = state.store.lock().await;
        store.tables.set_protections(Protections {
            agent_ports: [10260, 10249].into(),
            interface_addresses: ["192.0.2.1".parse().unwrap()].into(),
            node_name: Some("node-a".into()),
            sockets: Some(std::sync::Arc::new(Listening {
                tcp: [30777].into(),
                udp: Default::default(),
            })),
            ..Default::default()
        });
        let node = Object::from_value(json!({
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.50"}]}
        }))
        .unwrap()
        .object;
        store.tables.apply(&node).unwrap();
    }
    Call::put(SVC, &service())
        .send(&state)
        .await
        .expect(StatusCode::CREATED);
    const U: StatusCode = StatusCode::UNPROCESSABLE_ENTITY;
    let node_port = |n: u16| other_service("other", move |v| port(v)["nodePort"] = json!(n));
    refused_and_unchanged(
        &state,
        vec![
            (
                "a NodePort below the range",
                node_port(8080),
                U,
                "nodePort 8080 is outside the node port range 30000-32767",
            ),
            (
                "a NodePort above the range",
                node_port(32768),
                U,
                "nodePort 32768 is outside the node port range 30000-32767",
            ),
            (
                "a NodePort a socket listens on",
                node_port(30777),
                U,
                "nodePort 30777/TCP: a socket on the node listens on it",
            ),
            (
                "an externalIP of an interface",
                other_service("other", |v| v["spec"]["externalIPs"] = json!(["192.0.2.1"])),
                U,
                "192.0.2.1 is an address of this node",
            ),
            (
                "a LoadBalancer IP of the Node object",
                other_service("other", |v| {
                    v["spec"]["type"] = json!("LoadBalancer");
                    v["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.50"}]}});
                }),
                U,
                "192.0.2.50 is an address of this node",
            ),
        ],
    )
    .await;
    // The agent's own ports are outside the default range: a range that covers them still
    // refuses them.
    {
        let mut store = state.store.lock().await;
        let mut p = store.tables.protections().clone();
        p.node_port_range = "10000-20000".parse().unwrap();
        store.tables.set_protections(p);
    }
    refused_and_unchanged(
        &state,
        vec![(
            "the agent's API port",
            node_port(10260),
            U,
            "nodePort 10260/TCP is a port of the agent itself",
        )],
    )
    .await;
}

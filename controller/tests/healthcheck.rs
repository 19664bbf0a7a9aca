//! The health-check node ports against the tables, as the agent runs them: objects as
//! `kubectl get -o yaml` prints them (tests/golden/policy, this agent on node-a) go into the
//! store, [`healthcheck::run`] follows the changes, and real HTTP requests reach listeners
//! the test bound itself (127.0.0.1, port 0) and handed over by health-check node port.
//! Every step waits for the served state the health checks publish after a change (their
//! listeners already opened or closed), never on a sleep.

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use controller::{
    fake::FakeDataPath,
    files,
    healthcheck::{self, HealthChecks, Listen, Served, ServedPorts},
    model::Key,
    protections::Protections,
    state::Shared,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::watch,
};

const WAIT: Duration = Duration::from_secs(10);

/// Listeners bound by the test, handed over by health-check node port; a port without one
/// cannot be opened (as a port another process holds).
#[derive(Clone, Default)]
struct HandOver(Arc<Mutex<HashMap<u16, std::net::TcpListener>>>);

impl HandOver {
    /// Binds 127.0.0.1:0 for the health-check node port `port`; returns where it listens.
    fn bind(&self, port: u16) -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        self.0.lock().unwrap().insert(port, l);
        addr
    }
}

impl Listen for HandOver {
    fn listen(&mut self, port: u16) -> io::Result<Vec<TcpListener>> {
        let l =
            self.0.lock().unwrap().remove(&port).ok_or_else(|| {
                io::Error::new(io::ErrorKind::AddrInUse, "Address already in use")
            })?;
        Ok(vec![TcpListener::from_std(l)?])
    }
}

/// One answer: status, headers (lower-case names), body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

/// `GET /` as a load balancer's health checker sends it.
async fn get(addr: SocketAddr) -> io::Result<Answer> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: lb\r\nUser-Agent: GoogleHC/1.0\r\nConnection: close\r\n\r\n",
    )
    .await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(": ").unwrap();
            (k.to_ascii_lowercase(), v.to_string())
        })
        .collect();
    Ok(Answer {
        status,
        headers,
        body: body.to_string(),
    })
}

/// kube-proxy's body, byte for byte.
fn body(namespace: &str, name: &str, n: usize, healthy: bool) -> String {
    format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": \"{namespace}\",\n\t\t\"name\": \"{name}\"\n\t}},\n\t\"localEndpoints\": {n},\n\t\"serviceProxyHealthy\": {healthy}\n}}"
    )
}

fn check(a: &Answer, status: u16, namespace: &str, name: &str, n: usize, healthy: bool) {
    assert_eq!(a.status, status, "{a:?}");
    assert_eq!(a.body, body(namespace, name, n, healthy), "{a:?}");
    let json: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(json["service"]["namespace"], namespace);
    assert_eq!(json["service"]["name"], name);
    assert_eq!(json["localEndpoints"], n);
    assert_eq!(json["serviceProxyHealthy"], healthy);
    let h = |k: &str| a.headers.get(k).map(String::as_str);
    assert_eq!(h("content-type"), Some("application/json"), "{a:?}");
    assert_eq!(h("x-content-type-options"), Some("nosniff"), "{a:?}");
    assert_eq!(
        h("x-load-balancing-endpoint-weight"),
        Some(n.to_string().as_str()),
        "{a:?}"
    );
}

async fn refused(addr: SocketAddr) {
    match TcpStream::connect(addr).await {
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}"),
        Ok(_) => panic!("{addr} still accepts connections"),
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/policy")).join(name)
}

/// Replaces the objects of `path` with those `text` holds, minus `drop` (kind/namespace/name).
async fn load(shared: &Shared, path: &Path, text: &str, drop: Option<&str>) {
    let objs = files::parse_file(path, text)
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_iter()
        .filter(|o| {
            let key = Key::of(o.kind(), o.metadata());
            drop != Some(format!("{}/{key}", o.kind()).as_str())
        })
        .collect();
    let mut store = shared.store.lock().await;
    assert!(store.replace_file(path, objs).is_empty());
}

async fn until(
    served: &mut watch::Receiver<ServedPorts>,
    what: &str,
    want: impl Fn(&ServedPorts) -> bool,
) {
    let ok = matches!(
        tokio::time::timeout(WAIT, served.wait_for(|s| want(s))).await,
        Ok(Ok(_))
    );
    assert!(ok, "{what}: served {:?}", *served.borrow());
}

fn served(port: u16, local_endpoints: usize) -> Served {
    Served {
        port,
        local_endpoints,
    }
}

#[tokio::test]
async fn health_check_node_ports_follow_local_endpoints_and_close_with_their_service() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let prom = recorder.handle();
    // The runtime of a #[tokio::test] is single-threaded: every task records here.
    let _guard = metrics::set_default_local_recorder(&recorder);

    let shared = Shared::new(Box::new(FakeDataPath::default()), None);
    shared
        .store
        .lock()
        .await
        .tables
        .set_protections(Protections {
            node_name: Some("node-a".into()),
            ..Default::default()
        });
    let (slices, services) = (fixture("endpointslices.yaml"), fixture("services.yaml"));
    let slices_text = std::fs::read_to_string(&slices).unwrap();
    let services_text = std::fs::read_to_string(&services).unwrap();
    load(&shared, &slices, &slices_text, None).await;
    load(&shared, &services, &services_text, None).await;

    // shop/edge's port 32101 cannot be opened yet (another process holds it, say).
    let ports = HandOver::default();
    let web = ports.bind(32100);
    let checks = HealthChecks::new(ports.clone(), healthcheck::always_healthy());
    let mut state = checks.subscribe();
    let (ready, ready_rx) = watch::channel(false);
    let task = tokio::spawn(healthcheck::run(shared.clone(), ready_rx, checks));
    let (web_key, edge_key) = (Key::new("default", "web"), Key::new("shop", "edge"));

    // Nothing before the first reconcile round (the endpoints may not be listed yet).
    tokio::task::yield_now().await;
    assert!(state.borrow().is_empty());
    ready.send_replace(true);
    until(&mut state, "web open", |s| {
        s.get(&web_key) == Some(&served(32100, 1)) && !s.contains_key(&edge_key)
    })
    .await;
    check(&get(web).await.unwrap(), 200, "default", "web", 1, true);
    let errors = || {
        prom.render()
            .lines()
            .find(|l| l.starts_with("sluice_health_check_node_port_errors_total"))
            .map(str::to_string)
    };
    assert_eq!(
        errors().as_deref(),
        Some("sluice_health_check_node_port_errors_total 1")
    );

    // The only local endpoint of web stops being ready: 503, 0 local endpoints. The change
    // also tries the failed port again, which can be opened now.
    let edge = ports.bind(32101);
    let not_ready = slices_text.replacen(
        "    - 198.51.100.31\n    conditions:\n      ready: true\n      serving: true",
        "    - 198.51.100.31\n    conditions:\n      ready: false\n      serving: false",
        1,
    );
    assert_ne!(not_ready, slices_text);
    load(&shared, &slices, &not_ready, None).await;
    until(&mut state, "web without local endpoints, edge open", |s| {
        s.get(&web_key) == Some(&served(32100, 0)) && s.get(&edge_key) == Some(&served(32101, 0))
    })
    .await;
    check(&get(web).await.unwrap(), 503, "default", "web", 0, true);
    // edge's endpoints are all on node-b.
    check(&get(edge).await.unwrap(), 503, "shop", "edge", 0, true);
    assert_eq!(
        errors().as_deref(),
        Some("sluice_health_check_node_port_errors_total 1"),
        "counted once"
    );

    // edge's port changes: the old listener closes, the new one opens.
    let moved = ports.bind(32102);
    let changed = services_text.replace("healthCheckNodePort: 32101", "healthCheckNodePort: 32102");
    assert_ne!(changed, services_text);
    load(&shared, &services, &changed, None).await;
    until(&mut state, "edge on its new port", |s| {
        s.get(&edge_key) == Some(&served(32102, 0))
    })
    .await;
    refused(edge).await;
    check(&get(moved).await.unwrap(), 503, "shop", "edge", 0, true);

    // web goes: its listener closes; edge stays.
    load(&shared, &services, &changed, Some("Service/default/web")).await;
    until(&mut state, "web closed", |s| {
        !s.contains_key(&web_key) && s.contains_key(&edge_key)
    })
    .await;
    refused(web).await;
    check(&get(moved).await.unwrap(), 503, "shop", "edge", 0, true);
    task.abort();
}

#[tokio::test]
async fn an_unhealthy_agent_answers_503_whatever_its_endpoints() {
    let healthy = Arc::new(AtomicBool::new(true));
    let h = healthy.clone();
    let ports = HandOver::default();
    let addr = ports.bind(32100);
    let mut checks = HealthChecks::new(
        ports,
        Arc::new(move || {
            let ok = h.load(Ordering::Relaxed);
            Box::pin(async move { ok })
        }),
    );
    let key = Key::new("default", "web");
    checks.update(&key, Some((32100, 3))).await;
    check(&get(addr).await.unwrap(), 200, "default", "web", 3, true);
    healthy.store(false, Ordering::Relaxed);
    check(&get(addr).await.unwrap(), 503, "default", "web", 3, false);
    checks.update(&key, None).await;
    refused(addr).await;
    assert!(checks.subscribe().borrow().is_empty());
}

//! LoadBalancer IP assignment against kube-mock's API server: assignment, requested
//! addresses, exhaustion, release on delete and on type change, a restart that keeps every
//! assignment, and two agents of which only the Lease holder assigns, the other taking over
//! when the holder dies and its Lease expires. Status writes are checked in the requests the
//! mock received. Each agent runs on a runtime of its own, so "it died" drops everything it
//! ran (its Lease renewals included) as a crash would.
//!
//! Every wait is on an event (the assigner's status channel, the mock's activity) with a
//! deadline; nothing sleeps.

use std::{path::Path, sync::Arc, time::Duration};

use controller::ipam::{self, IpamConfig, IpamStatus};
use k8s_openapi::api::{coordination::v1::Lease, events::v1::Event as K8sEvent};
use kube::{Api, api::ListParams};
use kube_mock::{MockApiServer, RequestRecord, Verb};
use serde_json::Value;
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(20);

fn fixture(name: &str) -> Value {
    let path = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/ipam/services.yaml"
    ));
    kube_mock::fixtures::load_file(path)
        .unwrap()
        .into_iter()
        .find(|o| o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no fixture {name}"))
}

fn config() -> IpamConfig {
    IpamConfig {
        pools: vec!["192.0.2.0/30".into()],
        lease_duration_seconds: 2,
        lease_grace_seconds: 1,
        ..Default::default()
    }
}

/// One agent's assigner on a runtime of its own.
struct Agent {
    rt: Option<tokio::runtime::Runtime>,
    status: watch::Receiver<IpamStatus>,
}

impl Agent {
    fn start(mock: &MockApiServer, node: &str) -> Agent {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let status = Arc::new(watch::Sender::new(IpamStatus::default()));
        let rx = status.subscribe();
        let cfg = config();
        let pools = cfg.validate().unwrap().unwrap();
        let url = mock.url();
        let node = node.to_string();
        rt.spawn(async move {
            let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
            // Kept alive for the runtime's life; dropping the runtime is the crash.
            let handle = ipam::spawn(client, cfg, pools, node, status);
            std::future::pending::<()>().await;
            drop(handle);
        });
        Agent {
            rt: Some(rt),
            status: rx,
        }
    }

    async fn until(&mut self, what: &str, cond: impl Fn(&IpamStatus) -> bool) -> IpamStatus {
        let got = tokio::time::timeout(WAIT, self.status.wait_for(|s| cond(s)))
            .await
            .ok()
            .and_then(Result::ok)
            .map(|s| s.clone());
        got.unwrap_or_else(|| {
            panic!(
                "timed out waiting until {what}: {:?}",
                *self.status.borrow()
            )
        })
    }

    fn now(&self) -> IpamStatus {
        self.status.borrow().clone()
    }

    /// Dies: every task it ran stops where it is, nothing is given back.
    fn crash(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.crash();
    }
}

fn ingress(mock: &MockApiServer, ns: &str, name: &str) -> Vec<String> {
    mock.get("Service", ns, name)
        .and_then(|s| s.pointer("/status/loadBalancer/ingress").cloned())
        .and_then(|i| i.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|i| {
            assert_eq!(i["ipMode"], "VIP");
            i["ip"].as_str().unwrap().to_string()
        })
        .collect()
}

fn status_writes(log: &[RequestRecord]) -> Vec<String> {
    log.iter()
        .filter(|r| r.resource == Some("services") && r.verb != Verb::List && r.verb != Verb::Watch)
        .map(|r| {
            assert!(
                r.verb == Verb::Update && r.status_subresource,
                "the assigner writes Services only through PUT .../status: {r:?}"
            );
            format!(
                "{}/{}",
                r.namespace.as_deref().unwrap(),
                r.name.as_deref().unwrap()
            )
        })
        .collect()
}

async fn until_ingress(mock: &MockApiServer, ns: &str, name: &str, want: &[&str]) {
    let what = format!("{ns}/{name} has ingress {want:?}");
    mock.wait_for(&what, WAIT, |m| ingress(m, ns, name) == want)
        .await
        .unwrap_or_else(|e| panic!("{e}: it has {:?}", ingress(mock, ns, name)));
}

async fn events(mock: &MockApiServer) -> Vec<(String, String, String)> {
    let api: Api<K8sEvent> = Api::all(mock.client().unwrap());
    let mut v: Vec<_> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| {
            let r = e.regarding.unwrap_or_default();
            (
                format!(
                    "{}/{}",
                    r.namespace.unwrap_or_default(),
                    r.name.unwrap_or_default()
                ),
                e.reason.unwrap_or_default(),
                e.type_.unwrap_or_default(),
            )
        })
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn assigns_refuses_releases_and_survives_restarts_and_takeovers() {
    let mock = MockApiServer::start_local().unwrap();
    let mut a = Agent::start(&mock, "node-a");
    a.until("node-a holds the Lease and listed", |s| {
        s.leader && s.listed
    })
    .await;

    // Assignment, then a requested address, then the same address requested again.
    mock.apply(fixture("web")).unwrap();
    until_ingress(&mock, "default", "web", &["192.0.2.1"]).await;
    mock.apply(fixture("api")).unwrap();
    until_ingress(&mock, "default", "api", &["192.0.2.2"]).await;
    mock.apply(fixture("api-copy")).unwrap();
    a.until("api-copy refused", |s| {
        s.refusals.get("LoadBalancerIPInUse") == Some(&1)
    })
    .await;
    // The pool (192.0.2.1-2) is exhausted: an Event, nothing assigned twice.
    mock.apply(fixture("extra")).unwrap();
    a.until("extra refused", |s| {
        s.refusals.get("AddressPoolExhausted") == Some(&1)
    })
    .await;
    // Another implementation's service: never touched.
    mock.apply(fixture("metallb-owned")).unwrap();
    assert!(ingress(&mock, "shop", "api-copy").is_empty());
    assert!(ingress(&mock, "default", "extra").is_empty());
    let evs = events(&mock).await;
    for want in [
        ("default/web", "LoadBalancerIPAssigned", "Normal"),
        ("default/api", "LoadBalancerIPAssigned", "Normal"),
        ("shop/api-copy", "LoadBalancerIPInUse", "Warning"),
        ("default/extra", "AddressPoolExhausted", "Warning"),
    ] {
        assert!(
            evs.iter()
                .any(|(o, r, t)| (o.as_str(), r.as_str(), t.as_str()) == want),
            "no Event {want:?} in {evs:?}"
        );
    }

    // Release on delete: the waiting service gets the address.
    mock.delete("Service", "default", "web").unwrap();
    until_ingress(&mock, "default", "extra", &["192.0.2.1"]).await;
    // Release on type change: the status is cleared, the address goes to the service that
    // asked for it.
    let mut api = fixture("api");
    api["spec"]["type"] = "ClusterIP".into();
    for f in [
        "loadBalancerIP",
        "allocateLoadBalancerNodePorts",
        "externalTrafficPolicy",
    ] {
        api["spec"].as_object_mut().unwrap().remove(f);
    }
    api["spec"]["ports"][0]
        .as_object_mut()
        .unwrap()
        .remove("nodePort");
    // The API server keeps the status of an update to the main resource: the old ingress.
    api["status"] = mock.get("Service", "default", "api").unwrap()["status"].clone();
    mock.apply(api).unwrap();
    until_ingress(&mock, "shop", "api-copy", &["192.0.2.2"]).await;
    until_ingress(&mock, "default", "api", &[]).await;
    assert_eq!(
        status_writes(&mock.requests()),
        [
            "default/web",
            "default/api",
            "default/extra",
            "default/api",
            "shop/api-copy"
        ]
    );
    assert!(ingress(&mock, "default", "metallb-owned").is_empty());
    let want: std::collections::BTreeMap<std::net::IpAddr, String> = [
        ("192.0.2.1".parse().unwrap(), "default/extra".to_string()),
        ("192.0.2.2".parse().unwrap(), "shop/api-copy".to_string()),
    ]
    .into();
    let before = a
        .until("node-a counted its writes and assignments", |s| {
            s.status_writes == 5 && s.assignments == want
        })
        .await;

    // Restart (same node, same Lease identity): every assignment kept, nothing written.
    a.crash();
    let mut a = Agent::start(&mock, "node-a");
    let after = a
        .until("node-a holds the Lease again and listed", |s| {
            s.leader && s.listed
        })
        .await;
    assert_eq!(after.assignments, before.assignments);
    assert_eq!(
        after.status_writes,
        0,
        "a restart writes nothing: {:?}",
        status_writes(&mock.requests())
    );
    assert_eq!(status_writes(&mock.requests()).len(), 5);

    // A second agent: it does not hold the Lease, so it never writes.
    let mut b = Agent::start(&mock, "node-b");
    mock.wait_for("node-b read the Lease", WAIT, |m| {
        m.requests()
            .iter()
            .filter(|r| r.resource == Some("leases") && r.verb == Verb::Get)
            .count()
            >= 3
    })
    .await
    .unwrap();
    mock.delete("Service", "default", "extra").unwrap();
    let mut late = fixture("extra");
    late["metadata"]["name"] = "late".into();
    mock.apply(late).unwrap();
    until_ingress(&mock, "default", "late", &["192.0.2.1"]).await;
    a.until("node-a counted its write", |s| s.status_writes == 1)
        .await;
    assert!(!b.now().leader);
    assert_eq!(b.now().status_writes, 0);

    // The holder dies; its Lease expires (2 s + 1 s grace) and node-b takes over, keeping
    // every assignment.
    a.crash();
    let took = b
        .until("node-b took the Lease over and listed", |s| {
            s.leader && s.listed
        })
        .await;
    assert_eq!(
        took.assignments.values().cloned().collect::<Vec<_>>(),
        ["default/late", "shop/api-copy"]
    );
    assert_eq!(took.status_writes, 0);
    let lease: Lease = mock.get_as("kube-system", "sluice-ipam").unwrap().unwrap();
    assert_eq!(
        lease.spec.unwrap().holder_identity.as_deref(),
        Some("node-b")
    );
    mock.delete("Service", "default", "late").unwrap();
    let mut after = fixture("web");
    after["metadata"]["name"] = "after".into();
    mock.apply(after).unwrap();
    until_ingress(&mock, "default", "after", &["192.0.2.1"]).await;
    b.until("node-b counted its write", |s| s.status_writes == 1)
        .await;
    assert_eq!(status_writes(&mock.requests()).len(), 7);
}

//! One scenario, two backends: the mock always, and a real API server when
//! `KUBEBUILDER_ASSETS` names a folder with kube-apiserver and etcd (else reported skipped).

mod common;

use anyhow::{bail, ensure};
use common::{drive, name, next};
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::runtime::watcher::{self, Event, watcher};
use kube_mock::{Cluster, Envtest, MockApiServer};
use serde_json::json;

fn lb_service() -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "bootcamp", "namespace": "default", "labels": {"scenario": "lifecycle"}},
        "spec": {"type": "LoadBalancer",
                 "ports": [{"port": 8080, "protocol": "TCP", "targetPort": 8080}],
                 "selector": {"app": "kubernetes-bootcamp"}}
    })
}

fn endpoint_slice() -> serde_json::Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "bootcamp-1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "bootcamp"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["198.51.100.11"], "conditions": {"ready": true}, "zone": "zone-a"}],
        "ports": [{"name": "", "port": 8080, "protocol": "TCP"}]
    })
}

fn ingress_ip(svc: &Service) -> Option<String> {
    svc.status
        .as_ref()?
        .load_balancer
        .as_ref()?
        .ingress
        .as_ref()?
        .first()?
        .ip
        .clone()
}

/// Create, give a status, delete: the watcher sees each step.
async fn service_lifecycle<C: Cluster>(cluster: &C) -> anyhow::Result<()> {
    let api: Api<Service> = Api::namespaced(cluster.client()?, "default");
    let config = watcher::Config::default().labels("scenario=lifecycle");
    let mut events = drive(watcher(api, config));
    ensure!(matches!(next(&mut events).await??, Event::Init));
    ensure!(matches!(next(&mut events).await??, Event::InitDone));

    cluster.apply(lb_service()).await?;
    match next(&mut events).await?? {
        Event::Apply(s) => ensure!(name(&s) == "bootcamp" && ingress_ip(&s).is_none()),
        _ => bail!("expected the new service"),
    }
    cluster.apply(endpoint_slice()).await?;

    let mut with_status = lb_service();
    with_status["status"] = json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}});
    cluster.apply(with_status).await?;
    // A real server may send the spec replace and the status update as two events.
    loop {
        match next(&mut events).await?? {
            Event::Apply(s) if ingress_ip(&s).as_deref() == Some("203.0.113.10") => break,
            Event::Apply(_) => continue,
            _ => bail!("expected the service with its status"),
        }
    }

    cluster.delete("Service", "default", "bootcamp").await?;
    match next(&mut events).await?? {
        Event::Delete(s) => ensure!(name(&s) == "bootcamp"),
        _ => bail!("expected the deletion"),
    }
    cluster
        .delete("EndpointSlice", "default", "bootcamp-1")
        .await?;
    Ok(())
}

#[tokio::test]
async fn service_lifecycle_on_the_mock() -> anyhow::Result<()> {
    let server = MockApiServer::start_local()?;
    service_lifecycle(&server).await?;
    assert!(server.list("endpointslices")?.is_empty());
    Ok(())
}

#[tokio::test]
async fn service_lifecycle_on_envtest() -> anyhow::Result<()> {
    let server = match kube_mock::envtest::start().await? {
        Envtest::Running(server) => server,
        Envtest::Skipped(reason) => {
            reason.report();
            return Ok(());
        }
    };
    println!("envtest: {} (pids {:?})", server.url(), server.pids());
    service_lifecycle(&*server).await
}

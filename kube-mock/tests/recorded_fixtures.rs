//! Fixtures recorded as `kubectl get -o yaml` prints them (Kubernetes 1.34/1.35) load into the
//! mock and come back through the kube client as k8s-openapi types, field for field.

mod common;

use anyhow::Context;
use common::{fixtures, name};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::ListParams;
use kube_mock::MockApiServer;

#[tokio::test]
async fn recorded_service_parses_with_managed_fields_and_traffic_distribution() -> anyhow::Result<()>
{
    let server = MockApiServer::start_local()?;
    let applied = server.apply_dir(fixtures())?;
    assert_eq!(
        applied.len(),
        4,
        "a Service, an EndpointSlice (in a List), two Nodes"
    );

    let services: Api<Service> = Api::namespaced(server.client()?, "default");
    let svc = services.get("kubernetes-bootcamp").await?;
    let spec = svc.spec.as_ref().context("spec")?;
    assert_eq!(spec.traffic_distribution.as_deref(), Some("PreferSameZone"));
    assert_eq!(spec.type_.as_deref(), Some("NodePort"));
    assert_eq!(
        spec.cluster_ips.as_deref(),
        Some(&["10.96.112.47".to_string()][..])
    );
    let port = &spec.ports.as_ref().context("ports")?[0];
    assert_eq!((port.port, port.node_port), (8080, Some(31644)));
    let managed = svc
        .metadata
        .managed_fields
        .as_ref()
        .context("managedFields")?;
    assert_eq!(
        managed[0].manager.as_deref(),
        Some("kubectl-client-side-apply")
    );
    assert!(managed[0].fields_v1.is_some());
    // The mock keeps the recorded uid and creation time, and hands out its own resourceVersion.
    assert_eq!(
        svc.metadata.uid.as_deref(),
        Some("6f1c2f5e-7d0b-4b7e-9a55-2f3c6c1d9e10")
    );
    assert_ne!(svc.metadata.resource_version.as_deref(), Some("48211"));

    // Stored as recorded, but for the resourceVersion and the generation the mock fills in.
    let raw = server
        .get("Service", "default", "kubernetes-bootcamp")
        .context("stored")?;
    let mut recorded =
        kube_mock::fixtures::load_file(fixtures().join("service-bootcamp.yaml"))?.remove(0);
    recorded["metadata"]["resourceVersion"] = raw["metadata"]["resourceVersion"].clone();
    recorded["metadata"]["generation"] = serde_json::json!(1);
    assert_eq!(raw, recorded);
    Ok(())
}

#[tokio::test]
async fn recorded_endpointslice_parses_with_zones_and_hints() -> anyhow::Result<()> {
    let server = MockApiServer::start_local()?;
    server.apply_dir(fixtures())?;
    let slices: Api<EndpointSlice> = Api::all(server.client()?);
    let listed = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=kubernetes-bootcamp"))
        .await?;
    assert_eq!(listed.items.len(), 1);
    let slice = &listed.items[0];
    assert_eq!(name(slice), "kubernetes-bootcamp-x7k2q");
    assert_eq!(slice.address_type, "IPv4");
    let endpoints = slice.endpoints.as_ref().context("endpoints")?;
    let ready = &endpoints[0];
    assert_eq!(ready.zone.as_deref(), Some("zone-a"));
    assert_eq!(ready.node_name.as_deref(), Some("node-a"));
    let hints = ready.hints.as_ref().context("hints")?;
    assert_eq!(
        hints.for_zones.as_ref().context("forZones")?[0].name,
        "zone-a"
    );
    let terminating = endpoints[1].conditions.as_ref().context("conditions")?;
    assert_eq!(
        (
            terminating.ready,
            terminating.serving,
            terminating.terminating
        ),
        (Some(false), Some(true), Some(true))
    );
    let owner = &slice.metadata.owner_references.as_ref().context("owner")?[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Service", "kubernetes-bootcamp")
    );
    assert_eq!(slice.ports.as_ref().context("ports")?[0].port, Some(8080));

    // A selector that matches nothing lists nothing.
    let none = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=other"))
        .await?;
    assert!(none.items.is_empty());
    Ok(())
}

#[tokio::test]
async fn recorded_nodes_parse() -> anyhow::Result<()> {
    let server = MockApiServer::start_local()?;
    server.apply_dir(fixtures())?;
    let nodes: Api<Node> = Api::all(server.client()?);
    let node = nodes.get("node-a").await?;
    let status = node.status.as_ref().context("status")?;
    let internal = status
        .addresses
        .as_ref()
        .context("addresses")?
        .iter()
        .find(|a| a.type_ == "InternalIP")
        .context("InternalIP")?;
    assert_eq!(internal.address, "192.0.2.10");
    assert_eq!(
        status
            .node_info
            .as_ref()
            .map(|i| i.kubelet_version.as_str()),
        Some("v1.35.0")
    );
    assert_eq!(nodes.list(&ListParams::default()).await?.items.len(), 2);
    Ok(())
}

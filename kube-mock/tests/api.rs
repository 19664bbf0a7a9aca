//! The mock's HTTP API as a kube client sees it: write verbs and their `Status` errors, the
//! status subresource, patches, raw watches (bookmarks, 410, timeouts), kubeconfig, and
//! serving on the caller's runtime.

mod common;

use anyhow::{Context, bail, ensure};
use common::{T, next};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube_mock::MockApiServer;
use serde_json::json;

fn service(name: &str) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": {"ports": [{"port": 80, "protocol": "TCP"}], "selector": {"app": name}}
    }))
    .expect("a valid Service")
}

fn api_error(err: kube::Error) -> anyhow::Result<Box<kube::core::Status>> {
    match err {
        kube::Error::Api(status) => Ok(status),
        other => bail!("expected an API error, got {other}"),
    }
}

#[tokio::test]
async fn writes_and_their_status_errors() -> anyhow::Result<()> {
    let server = MockApiServer::start_local()?;
    let api: Api<Service> = Api::namespaced(server.client()?, "default");
    let pp = PostParams::default();

    let created = api.create(&pp, &service("web")).await?;
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    let rv1 = created.metadata.resource_version.clone().context("rv")?;

    let exists = api_error(
        api.create(&pp, &service("web"))
            .await
            .err()
            .context("409")?,
    )?;
    assert_eq!(
        (exists.code, exists.reason.as_str()),
        (409, "AlreadyExists")
    );
    assert_eq!(exists.message, "services \"web\" already exists");

    let missing = api_error(api.get("nope").await.err().context("404")?)?;
    assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));

    // PUT with the current resourceVersion succeeds; with a stale one it conflicts.
    let mut changed = created.clone();
    changed.metadata.labels = Some([("tier".to_string(), "front".to_string())].into());
    let replaced = api.replace("web", &pp, &changed).await?;
    assert_ne!(
        replaced.metadata.resource_version.as_deref(),
        Some(rv1.as_str())
    );
    let stale = api_error(
        api.replace("web", &pp, &changed)
            .await
            .err()
            .context("stale")?,
    )?;
    assert_eq!((stale.code, stale.reason.as_str()), (409, "Conflict"));

    // The status subresource: a merge patch sets it, a PUT of the main resource keeps it.
    let lb = json!({"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}});
    let patched = api
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&lb))
        .await?;
    let ingress = |s: &Service| {
        s.status
            .as_ref()
            .and_then(|st| st.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .and_then(|i| i.first())
            .and_then(|i| i.ip.clone())
    };
    assert_eq!(ingress(&patched).as_deref(), Some("203.0.113.7"));
    let mut without_status = patched.clone();
    without_status.status = None;
    let kept = api.replace("web", &pp, &without_status).await?;
    assert_eq!(ingress(&kept).as_deref(), Some("203.0.113.7"));

    // A merge patch of the main resource; a server-side apply creates what is missing.
    let merged = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"tier": null}}})),
        )
        .await?;
    assert!(
        !merged
            .metadata
            .labels
            .unwrap_or_default()
            .contains_key("tier")
    );
    let applied = api
        .patch(
            "api",
            &PatchParams::apply("kube-mock-test"),
            &Patch::Apply(service("api")),
        )
        .await?;
    assert_eq!(applied.metadata.name.as_deref(), Some("api"));

    api.delete("web", &DeleteParams::default()).await?;
    let gone = api_error(
        api.delete("web", &DeleteParams::default())
            .await
            .err()
            .context("gone")?,
    )?;
    assert_eq!(gone.code, 404);
    let names: Vec<_> = api
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect();
    assert_eq!(names, vec!["api"]);

    // Other groups work the same way (coordination.k8s.io leases, for a later IPAM feature).
    let leases: Api<Lease> = Api::namespaced(server.client()?, "kube-system");
    let lease: Lease = serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "sluice-ipam", "namespace": "kube-system"},
        "spec": {"holderIdentity": "node-a", "leaseDurationSeconds": 15}
    }))?;
    leases.create(&pp, &lease).await?;
    assert_eq!(
        server
            .get("leases", "kube-system", "sluice-ipam")
            .context("lease")?["spec"]["holderIdentity"],
        "node-a"
    );
    Ok(())
}

#[tokio::test]
async fn raw_watch_sends_bookmarks_and_410_after_compaction() -> anyhow::Result<()> {
    let server = MockApiServer::start_local()?;
    server.apply(service("a"))?;
    let api: Api<Service> = Api::all(server.client()?);

    // From "0": the current objects as ADDED, then changes; bookmarks on demand.
    let mut stream = api.watch(&WatchParams::default(), "0").await?.boxed();
    match next(&mut stream).await?? {
        WatchEvent::Added(s) => ensure!(s.metadata.name.as_deref() == Some("a")),
        other => bail!("expected Added, got {other:?}"),
    }
    server.send_bookmarks();
    match next(&mut stream).await?? {
        WatchEvent::Bookmark(b) => {
            assert_eq!(
                b.metadata.resource_version,
                server.resource_version().to_string()
            );
        }
        other => bail!("expected Bookmark, got {other:?}"),
    }
    let old_rv = server.resource_version();
    server.apply(service("b"))?;
    match next(&mut stream).await?? {
        WatchEvent::Added(s) => ensure!(s.metadata.name.as_deref() == Some("b")),
        other => bail!("expected Added, got {other:?}"),
    }

    // Resuming from before a compaction is answered with ERROR 410, then the stream ends.
    server.compact();
    let mut expired = api
        .watch(&WatchParams::default(), &old_rv.to_string())
        .await?
        .boxed();
    match next(&mut expired).await?? {
        WatchEvent::Error(status) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
            assert_eq!(
                status.message,
                format!(
                    "too old resource version: {old_rv} ({})",
                    server.resource_version()
                )
            );
        }
        other => bail!("expected the 410 error event, got {other:?}"),
    }
    ensure!(
        tokio::time::timeout(T, expired.next()).await?.is_none(),
        "the stream ends"
    );

    // The stream opened before the compaction goes on.
    server.delete("Service", "default", "a")?;
    match next(&mut stream).await?? {
        WatchEvent::Deleted(s) => ensure!(s.metadata.name.as_deref() == Some("a")),
        other => bail!("expected Deleted, got {other:?}"),
    }
    // disconnect_watches() ends it cleanly.
    server.disconnect_watches();
    ensure!(
        tokio::time::timeout(T, stream.next()).await?.is_none(),
        "the stream ends"
    );
    Ok(())
}

#[tokio::test]
async fn watch_ends_at_timeout_seconds_and_selectors_turn_changes_into_adds_and_deletes()
-> anyhow::Result<()> {
    let server = MockApiServer::start_local()?;
    let api: Api<Service> = Api::all(server.client()?);
    let rv = server.resource_version().to_string();
    let params = WatchParams::default().labels("tier=front").timeout(1);
    let mut stream = api.watch(&params, &rv).await?.boxed();

    let mut svc = serde_json::to_value(service("web"))?;
    server.apply(&svc)?; // no tier label: not selected
    svc["metadata"]["labels"]["tier"] = json!("front");
    server.apply(&svc)?; // now selected: ADDED
    svc["metadata"]["labels"]["tier"] = json!("back");
    server.apply(&svc)?; // leaves the selection: DELETED
    match next(&mut stream).await?? {
        WatchEvent::Added(s) => ensure!(s.metadata.name.as_deref() == Some("web")),
        other => bail!("expected Added, got {other:?}"),
    }
    match next(&mut stream).await?? {
        WatchEvent::Deleted(s) => ensure!(s.metadata.name.as_deref() == Some("web")),
        other => bail!("expected Deleted, got {other:?}"),
    }
    // timeoutSeconds=1: the server ends the stream.
    ensure!(
        tokio::time::timeout(T, stream.next()).await?.is_none(),
        "the stream ends"
    );
    Ok(())
}

#[tokio::test]
async fn periodic_bookmarks_when_configured() -> anyhow::Result<()> {
    let server = MockApiServer::builder()
        .bookmark_interval(std::time::Duration::from_millis(100))
        .start_local()?;
    let api: Api<Service> = Api::all(server.client()?);
    let mut stream = api
        .watch(
            &WatchParams::default(),
            &server.resource_version().to_string(),
        )
        .await?
        .boxed();
    for _ in 0..2 {
        match next(&mut stream).await?? {
            WatchEvent::Bookmark(_) => {}
            other => bail!("expected Bookmark, got {other:?}"),
        }
    }
    Ok(())
}

#[tokio::test]
async fn kubeconfig_client_and_the_callers_runtime() -> anyhow::Result<()> {
    // Served on this test's runtime, from a listener the test made.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server = MockApiServer::spawn(listener)?;
    server.apply(service("web"))?;

    let dir = std::env::temp_dir().join(format!("kube-mock-test-{}", std::process::id()));
    let path = dir.join("kubeconfig");
    server.write_kubeconfig(&path)?;
    let text = std::fs::read_to_string(&path)?;
    assert!(text.contains(&format!("server: {}", server.url())));
    let client = kube_mock::client_from_kubeconfig(&text).await?;
    std::fs::remove_dir_all(&dir)?;

    let version = client.apiserver_version().await?;
    assert_eq!(version.git_version, kube_mock::GIT_VERSION);
    let services: Api<Service> = Api::default_namespaced(client);
    assert_eq!(services.list(&Default::default()).await?.items.len(), 1);

    // Counters and the request log see what the client did.
    server
        .wait_for_requests(|log| log.iter().any(|r| r.verb == kube_mock::Verb::List), T)
        .await?;
    assert_eq!(server.list_count("Service"), 1);
    assert_eq!(server.watch_count("services"), 0);
    Ok(())
}

//! kube-runtime's watcher against the mock: initial list, changes, bookmarks, relist after
//! 410, recovery from an outage, and field selectors. Every step waits on an event with a
//! timeout; nothing sleeps.

mod common;

use anyhow::{Context, bail, ensure};
use common::{T, drive, fixtures, name, next};
use k8s_openapi::api::core::v1::{Node, Service};
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube_mock::MockApiServer;
use serde_json::json;

type Events<K> = futures::stream::BoxStream<'static, Result<Event<K>, watcher::Error>>;

/// Consumes `Init`, the `InitApply`s and `InitDone`; returns the names listed, sorted.
async fn initial_names<K: kube::ResourceExt>(
    stream: &mut Events<K>,
) -> anyhow::Result<Vec<String>> {
    match next(stream).await?? {
        Event::Init => {}
        other => bail!("expected Init, got {:?}", kind(&other)),
    }
    let mut names = Vec::new();
    loop {
        match next(stream).await?? {
            Event::InitApply(obj) => names.push(name(&obj)),
            Event::InitDone => break,
            other => bail!("expected InitApply or InitDone, got {:?}", kind(&other)),
        }
    }
    names.sort();
    Ok(names)
}

fn kind<K>(event: &Event<K>) -> &'static str {
    match event {
        Event::Apply(_) => "Apply",
        Event::Delete(_) => "Delete",
        Event::Init => "Init",
        Event::InitApply(_) => "InitApply",
        Event::InitDone => "InitDone",
    }
}

fn service(name: &str, port: u16) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.50",
                 "ports": [{"port": port, "protocol": "TCP", "targetPort": port}],
                 "selector": {"app": name}}
    })
}

fn port_of(svc: &Service) -> Option<i32> {
    svc.spec.as_ref()?.ports.as_ref()?.first().map(|p| p.port)
}

#[tokio::test]
async fn watcher_sees_initial_list_changes_and_deletes_across_bookmarks() -> anyhow::Result<()> {
    let server = MockApiServer::start_local()?;
    server.apply_dir(fixtures())?;
    let api: Api<Service> = Api::all(server.client()?);
    let mut events: Events<Service> = drive(watcher(api, watcher::Config::default()));

    assert_eq!(
        initial_names(&mut events).await?,
        vec!["kubernetes-bootcamp"]
    );
    server.wait_for_watchers("services", 1, T).await?;

    // A bookmark first: the watcher takes its resourceVersion silently and goes on.
    server.send_bookmarks();
    let mut svc = server
        .get("Service", "default", "kubernetes-bootcamp")
        .context("fixture service")?;
    svc["spec"]["ports"][0]["port"] = json!(8081);
    server.apply(svc)?;
    match next(&mut events).await?? {
        Event::Apply(s) => ensure!(port_of(&s) == Some(8081), "modified port"),
        other => bail!("expected Apply, got {}", kind(&other)),
    }

    server.apply(service("second", 80))?;
    match next(&mut events).await?? {
        Event::Apply(s) => ensure!(name(&s) == "second"),
        other => bail!("expected Apply of the new service, got {}", kind(&other)),
    }

    server.send_bookmarks();
    server.delete("Service", "default", "kubernetes-bootcamp")?;
    match next(&mut events).await?? {
        Event::Delete(s) => ensure!(name(&s) == "kubernetes-bootcamp"),
        other => bail!("expected Delete, got {}", kind(&other)),
    }
    // Bookmarks broke nothing: one list, one watch, never a reconnect.
    assert_eq!(server.list_count("services"), 1);
    assert_eq!(server.watch_count("services"), 1);
    Ok(())
}

#[tokio::test]
async fn watcher_relists_after_compaction_and_disconnect() -> anyhow::Result<()> {
    let server = MockApiServer::start_local()?;
    server.apply(service("a", 80))?;
    server.apply(service("b", 80))?;
    let api: Api<Service> = Api::all(server.client()?);
    let mut events: Events<Service> = drive(watcher(api, watcher::Config::default()));
    assert_eq!(initial_names(&mut events).await?, vec!["a", "b"]);
    server.wait_for_watchers("services", 1, T).await?;
    let lists_before = server.list_count("services");

    server.compact();
    server.disconnect_watches();

    // The watcher resumes from its resourceVersion, gets 410 Expired, and relists.
    match next(&mut events).await? {
        Err(watcher::Error::WatchError(status)) => {
            ensure!(status.code == 410, "code {}", status.code);
            ensure!(status.reason == "Expired", "reason {}", status.reason);
            ensure!(
                status.message.starts_with("too old resource version: "),
                "{}",
                status.message
            );
        }
        other => bail!("expected the 410 watch error, got {other:?}"),
    }
    assert_eq!(initial_names(&mut events).await?, vec!["a", "b"]);
    assert_eq!(server.list_count("services"), lists_before + 1);

    // And it watches again from the relist.
    server.delete("services", "default", "a")?;
    match next(&mut events).await?? {
        Event::Delete(s) => ensure!(name(&s) == "a"),
        other => bail!("expected Delete, got {}", kind(&other)),
    }
    Ok(())
}

#[tokio::test]
async fn watcher_with_backoff_recovers_after_the_server_was_down() -> anyhow::Result<()> {
    let server = MockApiServer::start_local()?;
    server.apply(service("web", 80))?;
    let client = server.client()?;
    let api: Api<Service> = Api::all(client.clone());
    let mut events: Events<Service> =
        drive(watcher(api.clone(), watcher::Config::default()).default_backoff());
    assert_eq!(initial_names(&mut events).await?, vec!["web"]);
    server.wait_for_watchers("services", 1, T).await?;

    server.set_down(true);
    // The open watch is cut and every new request fails.
    match next(&mut events).await? {
        Err(_) => {}
        Ok(other) => bail!("expected an error while down, got {}", kind(&other)),
    }
    server.wait_for_watchers("services", 0, T).await?;
    ensure!(
        api.list(&Default::default()).await.is_err(),
        "a list succeeded while down"
    );
    let answered_while_down = server.requests().len();

    // A change made during the outage arrives once the server is back.
    server.apply(service("web", 81))?;
    server.set_down(false);
    loop {
        match next(&mut events).await? {
            Err(_) => continue, // attempts that were still in flight while down
            Ok(Event::Apply(s)) => {
                ensure!(name(&s) == "web" && port_of(&s) == Some(81));
                break;
            }
            Ok(other) => bail!("expected Apply after recovery, got {}", kind(&other)),
        }
    }
    assert!(server.requests().len() > answered_while_down);
    server.wait_for_watchers("services", 1, T).await?;
    Ok(())
}

#[tokio::test]
async fn node_watch_with_a_name_field_selector_sees_only_that_node() -> anyhow::Result<()> {
    let server = MockApiServer::start_local()?;
    server.apply_dir(fixtures())?;
    assert_eq!(server.list("nodes")?.len(), 2);
    let api: Api<Node> = Api::all(server.client()?);
    let config = watcher::Config::default().fields("metadata.name=node-a");
    let mut events: Events<Node> = drive(watcher(api.clone(), config));
    assert_eq!(initial_names(&mut events).await?, vec!["node-a"]);
    server.wait_for_watchers("nodes", 1, T).await?;

    // A change to node-b is not seen; the next event is node-a's.
    for node in ["node-b", "node-a"] {
        let mut obj = server.get("Node", "", node).context("fixture node")?;
        obj["metadata"]["labels"]["example.com/touched"] = json!("yes");
        server.apply(obj)?;
    }
    match next(&mut events).await?? {
        Event::Apply(n) => ensure!(name(&n) == "node-a", "got {}", name(&n)),
        other => bail!("expected Apply of node-a, got {}", kind(&other)),
    }
    let watch = server
        .requests()
        .into_iter()
        .find(|r| r.verb == kube_mock::Verb::Watch)
        .context("the watch request")?;
    assert_eq!(
        watch.query_param("fieldSelector").as_deref(),
        Some("metadata.name=node-a")
    );

    let listed = api
        .list(&kube::api::ListParams::default().fields("metadata.name=node-b"))
        .await?;
    assert_eq!(
        listed.items.iter().map(name).collect::<Vec<_>>(),
        vec!["node-b"]
    );
    Ok(())
}

#[tokio::test]
async fn streaming_list_watcher_gets_initial_events_and_the_end_bookmark() -> anyhow::Result<()> {
    let server = MockApiServer::start_local()?;
    server.apply(service("a", 80))?;
    let api: Api<Service> = Api::namespaced(server.client()?, "default");
    let mut events: Events<Service> =
        drive(watcher(api, watcher::Config::default().streaming_lists()));
    assert_eq!(initial_names(&mut events).await?, vec!["a"]);
    assert_eq!(
        server.list_count("services"),
        0,
        "a streaming list does not list"
    );
    server.apply(service("b", 80))?;
    match next(&mut events).await?? {
        Event::Apply(s) => ensure!(name(&s) == "b"),
        other => bail!("expected Apply, got {}", kind(&other)),
    }
    Ok(())
}

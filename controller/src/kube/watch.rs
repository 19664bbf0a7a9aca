//! The watch tasks: one kube-runtime watcher per kind, retried with [`backoff::policy`], each
//! registered with [`crate::state::Sources`] until its first full list.

use std::fmt::Debug;

use futures::StreamExt as _;
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, ReplicaSet},
        core::v1::{Node, Service},
        discovery::v1::EndpointSlice,
    },
    serde::de::DeserializeOwned,
};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::task::JoinSet;

use super::{backoff, events::Relist};
use crate::{
    metrics,
    objects::{Kind, Object},
    state::Shared,
};

/// Starts every watcher; the tasks run until aborted.
pub fn spawn(shared: &Shared, client: Client, node_name: &str) -> JoinSet<()> {
    // Lists are served from the API server's watch cache (resourceVersion=0), as
    // kube-proxy's informers do: cheap for the API server at 10 000 services.
    let cache = || watcher::Config::default().any_semantic();
    // Registered before any task runs: until every watcher has listed, nothing is pruned.
    for kind in [
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Node,
        Kind::Deployment,
        Kind::ReplicaSet,
    ] {
        shared.sources.register(&source_name(kind));
    }
    let mut tasks = JoinSet::new();
    tasks.spawn(watch::<Service>(
        shared.clone(),
        Api::all(client.clone()),
        cache(),
        Kind::Service,
    ));
    tasks.spawn(watch::<EndpointSlice>(
        shared.clone(),
        Api::all(client.clone()),
        cache(),
        Kind::EndpointSlice,
    ));
    tasks.spawn(watch::<Node>(
        shared.clone(),
        Api::all(client.clone()),
        cache().fields(&format!("metadata.name={node_name}")),
        Kind::Node,
    ));
    tasks.spawn(watch::<Deployment>(
        shared.clone(),
        Api::all(client.clone()),
        cache(),
        Kind::Deployment,
    ));
    tasks.spawn(watch::<ReplicaSet>(
        shared.clone(),
        Api::all(client),
        cache(),
        Kind::ReplicaSet,
    ));
    tasks
}

/// The name a watcher registers under (`/readyz` lists the ones still waiting).
pub fn source_name(kind: Kind) -> String {
    format!("Kubernetes {kind} watch")
}

async fn watch<K>(shared: Shared, api: Api<K>, config: watcher::Config, kind: Kind)
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    Object: From<K>,
{
    let source = source_name(kind);
    let mut relist = Relist::new(kind);
    let mut stream = watcher(api, config).backoff(backoff::policy()).boxed();
    // The last error logged: each distinct error is logged once, not on every retry.
    let mut last_error: Option<String> = None;
    while let Some(item) = stream.next().await {
        let event = match item {
            Ok(e) => e,
            Err(e) => {
                metrics::watch_error(kind.name());
                let msg = e.to_string();
                if last_error.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(%kind, error = %msg, "watch failed; retrying with backoff, the data path keeps its state");
                    last_error = Some(msg);
                }
                continue;
            }
        };
        if last_error.take().is_some() {
            tracing::info!(%kind, "watch delivering again");
        }
        let out = {
            let mut store = shared.store.lock().await;
            relist.apply(&mut store.tables, event)
        };
        for (key, why) in &out.invalid {
            metrics::object_rejected(kind.name());
            tracing::warn!(%kind, object = %key, error = %why, "object rejected; its previous version (if any) stays in force");
        }
        if out.listed {
            metrics::relist(kind.name());
            shared.sources.synced(&source);
            // A full list deserialized every object at once; most of that heap is free now.
            crate::memory::release_free_heap();
        }
        if out.changed || out.listed {
            shared.changed.notify_one();
        }
    }
}

//! [`Cluster`]: what a scenario test needs from an API server, implemented by the mock and by
//! envtest's real API server, so that one scenario runs against both. Mock-only faults
//! (compaction, disconnects, outages) stay inherent methods of [`MockApiServer`].

use std::future::Future;

use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use serde_json::Value;

use crate::envtest::EnvtestServer;
use crate::error::{Error, Result};
use crate::resource::{self, ResourceType};
use crate::server::MockApiServer;
use crate::store::{name_of, namespace_of, type_of};

/// An API server a scenario can run against.
pub trait Cluster {
    /// `"mock"` or `"envtest"`, for test output.
    fn backend(&self) -> &'static str;

    /// A kube client of the server (call inside a tokio runtime).
    fn client(&self) -> Result<kube::Client>;

    /// A kubeconfig for a separate process.
    fn kubeconfig(&self) -> String;

    /// Creates the object, or replaces it when it exists, including its `status` when it has
    /// one (through the `/status` subresource on a real server). Returns the stored object.
    fn apply(&self, obj: Value) -> impl Future<Output = Result<Value>> + Send;

    /// Deletes an object (`kind` is a kind or plural; `namespace` is ignored for
    /// cluster-scoped types).
    fn delete(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<()>> + Send;
}

impl Cluster for MockApiServer {
    fn backend(&self) -> &'static str {
        "mock"
    }

    fn client(&self) -> Result<kube::Client> {
        MockApiServer::client(self)
    }

    fn kubeconfig(&self) -> String {
        MockApiServer::kubeconfig(self)
    }

    fn apply(&self, obj: Value) -> impl Future<Output = Result<Value>> + Send {
        let result = MockApiServer::apply(self, obj);
        async move { result }
    }

    fn delete(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<()>> + Send {
        let result = MockApiServer::delete(self, kind, namespace, name).map(drop);
        async move { result }
    }
}

/// A dynamic API of the object's type and namespace.
fn dynamic_api(client: kube::Client, rt: &ResourceType, namespace: &str) -> Api<DynamicObject> {
    let ar = rt.api_resource();
    if rt.namespaced {
        Api::namespaced_with(client, namespace, &ar)
    } else {
        Api::all_with(client, &ar)
    }
}

/// Drops the fields a real server sets itself and refuses on create.
fn strip_server_fields(obj: &mut Value) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in [
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "generation",
            "managedFields",
            "selfLink",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            meta.remove(field);
        }
    }
}

async fn envtest_apply(client: kube::Client, mut obj: Value) -> Result<Value> {
    let rt = type_of(&obj)?;
    let name = name_of(&obj)
        .ok_or_else(|| Error::InvalidObject("metadata.name is required".into()))?
        .to_string();
    let namespace = namespace_of(&obj).unwrap_or("default").to_string();
    strip_server_fields(&mut obj);
    let status = obj.get("status").cloned().filter(|_| rt.has_status);
    let api = dynamic_api(client, &rt, &namespace);
    let pp = PostParams::default();
    let mut dynamic: DynamicObject = serde_json::from_value(obj)?;
    let stored = match api.get_opt(&name).await? {
        Some(existing) => {
            dynamic.metadata.resource_version = existing.metadata.resource_version;
            api.replace(&name, &pp, &dynamic).await?
        }
        None => api.create(&pp, &dynamic).await?,
    };
    let stored = match status {
        Some(status) => {
            let mut with_status = stored;
            with_status.data["status"] = status;
            api.replace_status(&name, &pp, &with_status).await?
        }
        None => stored,
    };
    Ok(serde_json::to_value(stored)?)
}

async fn envtest_delete(
    client: kube::Client,
    rt: ResourceType,
    namespace: String,
    name: String,
) -> Result<()> {
    dynamic_api(client, &rt, &namespace)
        .delete(&name, &DeleteParams::default())
        .await?;
    Ok(())
}

impl Cluster for EnvtestServer {
    fn backend(&self) -> &'static str {
        "envtest"
    }

    fn client(&self) -> Result<kube::Client> {
        Ok(EnvtestServer::client(self))
    }

    fn kubeconfig(&self) -> String {
        EnvtestServer::kubeconfig(self)
    }

    fn apply(&self, obj: Value) -> impl Future<Output = Result<Value>> + Send {
        envtest_apply(EnvtestServer::client(self), obj)
    }

    fn delete(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<()>> + Send {
        let client = EnvtestServer::client(self);
        let rt = resource::lookup(kind).ok_or_else(|| Error::UnknownResource(kind.into()));
        let (namespace, name) = (namespace.to_string(), name.to_string());
        async move { envtest_delete(client, rt?, namespace, name).await }
    }
}

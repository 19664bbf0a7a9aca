//! What a test does to the mock: write objects, break things (compaction, disconnects,
//! outages, bookmarks), and count or wait for what clients did.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{ApiError, Error, Result};
use crate::log::{RequestRecord, Verb};
use crate::resource::{self, ResourceType};
use crate::selector::Selectors;
use crate::server::{MockApiServer, lock};

fn resolve(kind_or_plural: &str) -> Result<ResourceType> {
    resource::lookup(kind_or_plural).ok_or_else(|| Error::UnknownResource(kind_or_plural.into()))
}

impl MockApiServer {
    /// Creates the object, or replaces it whole when it exists, bumping the resourceVersion
    /// and filling `uid`, `creationTimestamp` and `generation` when missing (`generation`
    /// grows when anything outside `metadata` and `status` changes). Status is written as
    /// given. Accepts a `serde_json::Value` or any k8s-openapi object. Returns the object as
    /// stored.
    pub fn apply<T: Serialize>(&self, obj: T) -> Result<Value> {
        let value = serde_json::to_value(obj)?;
        self.shared.write(|s| s.apply(value))
    }

    /// Applies every object of a (multi-document) YAML text, in order; see
    /// [`crate::fixtures::parse_yaml`].
    pub fn apply_yaml(&self, text: &str) -> Result<Vec<Value>> {
        crate::fixtures::parse_yaml(text)?
            .into_iter()
            .map(|obj| self.apply(obj))
            .collect()
    }

    /// Applies every object of every YAML file of a directory; see
    /// [`crate::fixtures::load_dir`].
    pub fn apply_dir(&self, dir: impl AsRef<Path>) -> Result<Vec<Value>> {
        crate::fixtures::load_dir(dir)?
            .into_iter()
            .map(|obj| self.apply(obj))
            .collect()
    }

    /// Deletes an object as the API does: at once, or (while it has finalizers) by setting
    /// `deletionTimestamp`. `kind` is a kind or plural (`"Service"`, `"services"`);
    /// `namespace` is ignored for cluster-scoped types (pass `""`).
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> Result<Value> {
        let rt = resolve(kind)?;
        self.shared
            .write(|s| s.delete(&rt, namespace, name, None))
            .map_err(ApiError::into_error)
    }

    /// The stored object, if any (`namespace` ignored for cluster-scoped types).
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let rt = resource::lookup(kind)?;
        lock(&self.shared.store).get(&rt, namespace, name).cloned()
    }

    /// The stored object as a typed k8s-openapi object.
    pub fn get_as<K>(&self, namespace: &str, name: &str) -> Result<Option<K>>
    where
        K: k8s_openapi::Resource + DeserializeOwned,
    {
        self.get(K::KIND, namespace, name)
            .map(serde_json::from_value)
            .transpose()
            .map_err(Error::from)
    }

    /// Every stored object of a kind, in all namespaces.
    pub fn list(&self, kind: &str) -> Result<Vec<Value>> {
        let rt = resolve(kind)?;
        Ok(lock(&self.shared.store)
            .list(&rt, None, &Selectors::default())
            .1)
    }

    /// The current (newest) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        lock(&self.shared.store).resource_version()
    }

    /// Forgets the watch history: every watch that starts (or resumes) from a
    /// resourceVersion handed out so far gets an `ERROR` event with `410 Expired`, which makes
    /// kube-runtime's watcher relist. Streams already open go on; combine with
    /// [`MockApiServer::disconnect_watches`] to force every watcher to resume now.
    pub fn compact(&self) {
        self.shared.write(|s| s.compact());
    }

    /// Ends every open watch stream now (cleanly, as an API server that restarts does); the
    /// clients then resume from their last resourceVersion.
    pub fn disconnect_watches(&self) {
        self.shared.signals.send_modify(|s| s.disconnects += 1);
    }

    /// Sends a `BOOKMARK` with the current resourceVersion on every open watch that allows
    /// bookmarks.
    pub fn send_bookmarks(&self) {
        self.shared.signals.send_modify(|s| s.bookmarks += 1);
    }

    /// Plays an API server that is down (restarting): while `true`, connections are accepted
    /// and closed at once without an answer, and every open connection (watch streams too)
    /// is cut now. Clients see connection errors until `set_down(false)`.
    pub fn set_down(&self, down: bool) {
        self.shared.down.send_replace(down);
        self.shared.bump_activity();
    }

    /// Whether [`MockApiServer::set_down`] is in force.
    pub fn is_down(&self) -> bool {
        *self.shared.down.borrow()
    }

    /// Every request answered so far, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.log).clone()
    }

    /// How many requests of `verb` on `resource` (kind or plural) were answered.
    pub fn request_count(&self, resource: &str, verb: Verb) -> usize {
        let Some(rt) = resource::lookup(resource) else {
            return 0;
        };
        lock(&self.shared.log)
            .iter()
            .filter(|r| r.verb == verb && r.resource == Some(rt.plural))
            .count()
    }

    /// How many lists of `resource` (kind or plural) were answered.
    pub fn list_count(&self, resource: &str) -> usize {
        self.request_count(resource, Verb::List)
    }

    /// How many watches of `resource` (kind or plural) were started.
    pub fn watch_count(&self, resource: &str) -> usize {
        self.request_count(resource, Verb::Watch)
    }

    /// How many watches of `resource` (kind or plural) are open now.
    pub fn open_watches(&self, resource: &str) -> usize {
        resource::lookup(resource)
            .and_then(|rt| lock(&self.shared.open_watches).get(rt.plural).copied())
            .unwrap_or(0)
    }

    /// Waits, on the server's activity signal (never polling), until `cond` holds.
    async fn wait_until(
        &self,
        timeout: Duration,
        what: impl FnOnce() -> String,
        mut cond: impl FnMut() -> bool,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Subscribing before the first check means no change between the two is lost.
        let mut activity = self.shared.activity.subscribe();
        loop {
            if cond() {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, activity.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => {
                    return if cond() {
                        Ok(())
                    } else {
                        Err(Error::Timeout(timeout, what()))
                    };
                }
            }
        }
    }

    /// Waits, on the server's activity (requests and writes), until `cond` holds for it;
    /// the error names `what`.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(&Self) -> bool,
    ) -> Result<()> {
        self.wait_until(timeout, || what.to_string(), || cond(self))
            .await
    }

    /// Waits until at least `n` watches of `resource` (kind or plural) are open.
    pub async fn wait_for_watchers(
        &self,
        resource: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<()> {
        let describe = || {
            format!(
                "{n} open watches of {resource} (open: {})",
                self.open_watches(resource)
            )
        };
        self.wait_until(timeout, describe, || self.open_watches(resource) >= n)
            .await
    }

    /// Connections closed unanswered while the server was down.
    pub fn refused_connections(&self) -> u64 {
        self.shared
            .refused
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until at least `n` connections were closed unanswered while down (clients
    /// tried and failed).
    pub async fn wait_for_refused(&self, n: u64, timeout: Duration) -> Result<()> {
        let describe = || format!("{n} refused connections ({})", self.refused_connections());
        self.wait_until(timeout, describe, || self.refused_connections() >= n)
            .await
    }

    /// Waits until `pred` holds for the request log (all requests answered so far).
    pub async fn wait_for_requests(
        &self,
        pred: impl Fn(&[RequestRecord]) -> bool,
        timeout: Duration,
    ) -> Result<()> {
        let log = &self.shared.log;
        self.wait_until(
            timeout,
            || {
                format!(
                    "a request-log condition ({} requests so far)",
                    lock(log).len()
                )
            },
            || pred(&lock(log)),
        )
        .await
    }
}

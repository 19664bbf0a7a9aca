//! Watch streaming: newline-delimited JSON events over a chunked response, resumed from the
//! history, with bookmarks, `410 Expired`, disconnects and `timeoutSeconds`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::{Instant, Interval};

use crate::error::ApiError;
use crate::resource::ResourceType;
use crate::routes::{Params, Target, error_response};
use crate::selector::Selectors;
use crate::server::{OpenWatch, Shared, Signals, lock};
use crate::store::{Change, ChangeKind, namespace_of};

/// The annotation on the bookmark that ends the initial events of `sendInitialEvents=true`.
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// One open watch.
struct WatchStream {
    shared: Arc<Shared>,
    rtype: ResourceType,
    namespace: Option<String>,
    selectors: Selectors,
    allow_bookmarks: bool,
    /// Every change up to this resourceVersion has been considered.
    cursor: u64,
    pending: VecDeque<Bytes>,
    done: bool,
    signals: watch::Receiver<Signals>,
    /// The bookmark and disconnect generations at the stream's start / last look.
    seen: Signals,
    deadline: Option<Instant>,
    bookmark_every: Option<Interval>,
    _open: OpenWatch,
}

fn encode(event_type: &str, object: &Value) -> Bytes {
    let mut line =
        serde_json::to_vec(&json!({"type": event_type, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// Starts a watch of `target`'s collection; the response streams until the watch ends.
pub(crate) fn watch(shared: Arc<Shared>, target: Target, params: &Params) -> Response {
    let selectors = match params.selectors() {
        Ok(s) => s,
        Err(err) => return error_response(&err),
    };
    let requested = match params.get("resourceVersion").filter(|v| !v.is_empty()) {
        None | Some("0") => None,
        Some(v) => match v.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                return error_response(&ApiError::bad_request(format!(
                    "invalid resource version: {v:?}"
                )));
            }
        },
    };
    let send_initial = params.flag("sendInitialEvents");
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|t| *t > 0)
        .map(Duration::from_secs);
    // Subscribe before reading the store, so that no change between the two is missed.
    let mut signals = shared.signals.subscribe();
    let seen = *signals.borrow_and_update();
    let mut ws = WatchStream {
        shared: shared.clone(),
        rtype: target.rtype,
        namespace: target.namespace.clone(),
        selectors,
        allow_bookmarks: params.flag("allowWatchBookmarks"),
        cursor: 0,
        pending: VecDeque::new(),
        done: false,
        signals,
        seen,
        deadline: timeout.map(|t| Instant::now() + t),
        bookmark_every: shared
            .bookmark_interval
            .map(|every| tokio::time::interval_at(Instant::now() + every, every)),
        _open: OpenWatch::new(shared.clone(), target.rtype.plural),
    };
    ws.start(requested, send_initial);
    let stream = futures::stream::unfold(ws, |mut ws| async move {
        ws.next_chunk().await.map(|b| (Ok::<_, Infallible>(b), ws))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

impl WatchStream {
    /// Queues what the stream starts with: the current objects (no resourceVersion, `"0"`,
    /// or `sendInitialEvents`), or `410 Expired` when `requested` is no longer retained.
    fn start(&mut self, requested: Option<u64>, send_initial: bool) {
        let store = lock(&self.shared.store);
        match requested {
            Some(rv) if !send_initial => match store.check_watchable(rv) {
                Ok(()) => self.cursor = rv,
                Err(too_old) => {
                    let status = ApiError::expired(rv, too_old.oldest).to_status();
                    self.pending.push_back(encode("ERROR", &status));
                    self.done = true;
                }
            },
            _ => {
                let (rv, items) =
                    store.list(&self.rtype, self.namespace.as_deref(), &self.selectors);
                for item in &items {
                    self.pending.push_back(encode("ADDED", item));
                }
                self.cursor = rv;
                if send_initial && self.allow_bookmarks {
                    let mark = self.bookmark(true);
                    self.pending.push_back(mark);
                }
            }
        }
    }

    fn bookmark(&self, initial_events_end: bool) -> Bytes {
        let mut metadata = json!({"resourceVersion": self.cursor.to_string()});
        if initial_events_end {
            metadata["annotations"] = json!({INITIAL_EVENTS_END: "true"});
        }
        encode(
            "BOOKMARK",
            &json!({"kind": self.rtype.kind, "apiVersion": self.rtype.api_version, "metadata": metadata}),
        )
    }

    fn in_scope(&self, obj: &Value) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| namespace_of(obj) == Some(ns))
            && self.selectors.matches(obj)
    }

    /// The event this stream sends for a change, if any: a modification that moves an object
    /// into (out of) the selection is sent as `ADDED` (`DELETED`), as the API server does.
    fn event_for(&self, change: &Change) -> Option<Bytes> {
        let now = self.in_scope(&change.object);
        match change.kind {
            ChangeKind::Added => now.then(|| encode("ADDED", &change.object)),
            ChangeKind::Deleted => now.then(|| encode("DELETED", &change.object)),
            ChangeKind::Modified => {
                let before = change.old.as_ref().is_some_and(|o| self.in_scope(o));
                match (before, now) {
                    (true, true) => Some(encode("MODIFIED", &change.object)),
                    (false, true) => Some(encode("ADDED", &change.object)),
                    (true, false) => {
                        let mut last = change.old.clone().unwrap_or_default();
                        last["metadata"]["resourceVersion"] = json!(change.rv.to_string());
                        Some(encode("DELETED", &last))
                    }
                    (false, false) => None,
                }
            }
        }
    }

    /// Queues every change since the cursor (or `410 Expired` if some were dropped).
    fn drain(&mut self) {
        let store = lock(&self.shared.store);
        match store.changes_since(&self.rtype, self.cursor) {
            Ok(changes) => {
                let events: Vec<Bytes> = changes.iter().filter_map(|c| self.event_for(c)).collect();
                self.pending.extend(events);
                self.cursor = store.resource_version();
            }
            Err(too_old) => {
                let status = ApiError::expired(self.cursor, too_old.oldest).to_status();
                self.pending.push_back(encode("ERROR", &status));
                self.done = true;
            }
        }
    }

    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some(chunk) = self.pending.pop_front() {
                return Some(chunk);
            }
            if self.done {
                return None;
            }
            let signals = *self.signals.borrow_and_update();
            if signals.disconnects != self.seen.disconnects {
                // Ended by `disconnect_watches()`, as an API server that restarts ends them.
                self.done = true;
                continue;
            }
            self.drain();
            if signals.bookmarks != self.seen.bookmarks {
                self.seen.bookmarks = signals.bookmarks;
                if self.allow_bookmarks && !self.done {
                    let mark = self.bookmark(false);
                    self.pending.push_back(mark);
                }
            }
            if !self.pending.is_empty() || self.done {
                continue;
            }
            tokio::select! {
                changed = self.signals.changed() => {
                    if changed.is_err() {
                        self.done = true;
                    }
                }
                () = sleep_until(self.deadline) => self.done = true,
                () = tick(&mut self.bookmark_every) => {
                    if self.allow_bookmarks {
                        self.drain();
                        if !self.done {
                            let mark = self.bookmark(false);
                            self.pending.push_back(mark);
                        }
                    }
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn tick(interval: &mut Option<Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

//! Helpers shared by the integration tests: bounded waits on streams, never sleeps.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use futures::{Stream, StreamExt};

/// How long any single expected event may take.
pub const T: Duration = Duration::from_secs(10);

/// The recorded fixtures.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The next item of a stream, or an error after [`T`].
pub async fn next<S: Stream + Unpin>(stream: &mut S) -> anyhow::Result<S::Item> {
    tokio::time::timeout(T, stream.next())
        .await
        .map_err(|_| anyhow::anyhow!("no event within {T:?}"))?
        .ok_or_else(|| anyhow::anyhow!("the stream ended"))
}

/// The name of a kube object.
pub fn name<K: kube::ResourceExt>(obj: &K) -> String {
    obj.name_any()
}

/// Drives `stream` on a task of its own, as a controller would (a kube-runtime watcher only
/// sends its next request when polled), and hands its items over through a channel.
pub fn drive<S>(stream: S) -> futures::stream::BoxStream<'static, S::Item>
where
    S: Stream + Send + 'static,
    S::Item: Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            if tx.send(item).is_err() {
                break;
            }
        }
    });
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

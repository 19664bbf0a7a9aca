//! The standalone sources' tasks: the manifest directory poller and the prober of endpoints
//! whose slice declares a readiness probe.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use crate::{
    files::Directory,
    health::{self, Probe},
    model::Key,
    state::Shared,
};

/// The name under which the manifest directory registers with [`crate::state::Sources`].
pub const FILES_SOURCE: &str = "manifest directory";

/// Polls the directory; a changed file is applied object by object.
pub async fn watch_files(shared: Shared, mut dir: Directory, every: Duration) {
    loop {
        let changed = {
            let mut store = shared.store.lock().await;
            let before = store.generation();
            dir.scan(&mut store);
            store.generation() != before
        };
        let first = dir.synced() && !shared.sources.all_synced();
        if first {
            shared.sources.synced(FILES_SOURCE);
        }
        if changed || first {
            shared.changed.notify_one();
        }
        tokio::time::sleep(every).await;
    }
}

/// Runs every declared probe on its period; a verdict that flips marks the slice's service
/// for the next round. With nothing to probe it only looks again once a second.
pub async fn probe_loop(shared: Shared) {
    let mut trackers: HashMap<(Key, IpAddr), (health::Tracker, Instant)> = HashMap::new();
    loop {
        let targets: Vec<(Key, IpAddr, Probe)> = shared.store.lock().await.tables.probe_targets();
        let now = Instant::now();
        let mut checks = tokio::task::JoinSet::new();
        for (key, addr, probe) in targets {
            let due = trackers
                .get(&(key.clone(), addr))
                .is_none_or(|(_, at)| now.duration_since(*at) >= probe.period());
            if due {
                checks.spawn(async move {
                    let ok = probe.check(addr).await.is_ok();
                    (key, addr, probe, ok)
                });
            }
        }
        let idle = checks.is_empty();
        let mut flipped = Vec::new();
        while let Some(Ok((key, addr, probe, ok))) = checks.join_next().await {
            let entry = trackers
                .entry((key.clone(), addr))
                .or_insert_with(|| (health::Tracker::default(), now));
            entry.1 = now;
            if entry.0.record(&probe, ok) {
                shared
                    .probes
                    .lock()
                    .await
                    .insert((key.clone(), addr), entry.0.ready);
                flipped.push(key);
            }
        }
        if !flipped.is_empty() {
            let mut store = shared.store.lock().await;
            for slice in flipped {
                if let Some(service) = store.tables.slice(&slice).map(|s| s.service.clone()) {
                    store.tables.mark_dirty(service);
                }
            }
            drop(store);
            shared.changed.notify_one();
        }
        let pause = if idle && trackers.is_empty() {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(100)
        };
        tokio::time::sleep(pause).await;
    }
}

//! The reconcile loop: sleeps until a source reports a change, takes every service changed
//! since the last round (a burst of events becomes one round), computes the desired specs of
//! just those services and hands them to the reconciler. Besides that it only wakes for
//! retries of failed services, the first pruning after every source listed, and the rare full
//! resync. An idle agent does nothing.

use std::time::{Duration, Instant};

use tokio::time::sleep_until;

use super::{endpoints::Health, seed::SeedPlan};
use crate::{desired, model::Key, reconcile::Round, state::Shared};

/// How often services whose write failed are tried again.
const RETRY: Duration = Duration::from_secs(5);
/// How soon after a removal the ids of removed services and backends are released (in
/// one batch for a burst of removals; nothing walks the flow tables).
const PURGE_DELAY: Duration = Duration::from_secs(10);
/// A round that writes this many specs is bulk work: freed heap is returned afterwards.
const BULK: usize = 1000;

/// A round that wrote something (errors alone are not logged here: the reconciler logs each
/// service's error once per change, and a retry round that fails again writes nothing).
fn log(what: &str, round: &Round, took: Duration) {
    if round.wrote() {
        tracing::info!(
            upserted = round.upserted.len(),
            removed = round.removed.len(),
            errors = round.errors.len(),
            took_ms = took.as_secs_f64() * 1e3,
            "{what}"
        );
    }
}

/// Computes the specs of `keys` from the tables (under the store lock, with the probes).
async fn changes(
    shared: &Shared,
    keys: impl IntoIterator<Item = Key>,
) -> Vec<(Key, desired::Specs)> {
    let store = shared.store.lock().await;
    let probes = shared.probes.lock().await;
    keys.into_iter()
        .map(|k| {
            let specs = desired::of_service(&store.tables, &k, &probes);
            (k, specs)
        })
        .collect()
}

/// Chooses the hash seed and sets it in the data path. A failure is logged and the data
/// path keeps the seed it has (its tables stay consistent; only other nodes may differ).
async fn set_seed(shared: &Shared, plan: &SeedPlan) {
    let resolved = plan.resolve(&shared.store.lock().await.tables);
    match resolved {
        Ok((seed, source)) => match shared.reconciler.lock().await.set_hash_seed(seed) {
            Ok(()) => tracing::info!(
                seed = %format!("{seed:#010x}"),
                source = source.describe(),
                "hash seed set (it must be the same on every node)"
            ),
            Err(e) => {
                tracing::error!(error = %e, "setting the hash seed in the data path failed");
            }
        },
        Err(e) => {
            tracing::error!(error = %e, "choosing the hash seed failed; the data path keeps its own");
        }
    }
}

/// Runs until aborted. `node`: this node's name (its Node object's addresses become NodePort
/// addresses). `seed`: how the hash seed is chosen, once every source listed and before the
/// first data-path write.
pub async fn run(shared: Shared, health: Health, resync: Duration, node: String, seed: SeedPlan) {
    let mut seed = Some(seed);
    let mut next_resync = Instant::now() + resync;
    let mut purge_at: Option<Instant> = None;
    let mut retry_at: Option<Instant>;
    loop {
        // Nothing is applied before every source listed once: a restarted agent would
        // otherwise program services it has listed before their endpoints are listed.
        if !shared.sources.all_synced() {
            shared.changed.notified().await;
            continue;
        }
        if let Some(plan) = seed.take() {
            set_seed(&shared, &plan).await;
        }
        let started = Instant::now();
        let (dirty, node_addrs) = {
            let mut store = shared.store.lock().await;
            (
                store.tables.take_dirty(),
                store.tables.take_node_change(&node),
            )
        };
        let work = changes(&shared, dirty.services).await;
        {
            let mut rec = shared.reconciler.lock().await;
            let mut round = rec.reconcile(work, dirty.triggers);
            if let Some(addrs) = node_addrs {
                round.errors.extend(rec.set_node_addresses(&addrs).errors);
            }
            if !rec.pruning_allowed() {
                rec.allow_pruning();
                let pruned = rec.prune_unowned();
                if !pruned.removed.is_empty() {
                    tracing::info!(
                        removed = pruned.removed.len(),
                        "removed adopted services no source names"
                    );
                }
                round.removed.extend(pruned.removed);
                round.errors.extend(pruned.errors);
            }
            if !round.removed.is_empty() {
                purge_at.get_or_insert(Instant::now() + PURGE_DELAY);
            }
            retry_at = rec.failed().next().map(|_| Instant::now() + RETRY);
            log("reconciled", &round, started.elapsed());
            if round.upserted.len() + round.removed.len() >= BULK {
                crate::memory::release_free_heap();
            }
        }
        health
            .ready
            .send_if_modified(|r| !std::mem::replace(r, true));
        health.synced_now();

        // Sleep until a change, a retry, the purge or the resync is due.
        let wake = [Some(next_resync), retry_at, purge_at]
            .into_iter()
            .flatten()
            .min()
            .expect("the resync is always scheduled");
        tokio::select! {
            _ = shared.changed.notified() => continue,
            _ = sleep_until(wake.into()) => {}
        }
        let now = Instant::now();
        if retry_at.is_some_and(|t| t <= now) {
            let failed: Vec<Key> = shared.reconciler.lock().await.failed().cloned().collect();
            let mut store = shared.store.lock().await;
            for k in failed {
                store.tables.mark_dirty(k);
            }
        }
        if purge_at.is_some_and(|t| t <= now) {
            purge_at = None;
            let round = shared.reconciler.lock().await.purge();
            log("purged removed ids", &round, now.elapsed());
        }
        if next_resync <= now {
            next_resync = now + resync;
            resync_all(&shared).await;
        }
    }
}

/// The safety net: every service's desired specs compared with what was applied (only
/// differences are written), services that vanished from the tables removed, unowned
/// services pruned.
async fn resync_all(shared: &Shared) {
    let started = Instant::now();
    let mut keys: Vec<Key> = shared
        .store
        .lock()
        .await
        .tables
        .service_keys()
        .cloned()
        .collect();
    {
        let rec = shared.reconciler.lock().await;
        keys.extend(rec.applied_services().cloned());
    }
    keys.sort();
    keys.dedup();
    let work = changes(shared, keys).await;
    let mut rec = shared.reconciler.lock().await;
    let round = if rec.pruning_allowed() {
        rec.reconcile_all(work)
    } else {
        rec.reconcile(work, Default::default())
    };
    log("resync", &round, started.elapsed());
    if round.wrote() {
        tracing::warn!(
            upserted = round.upserted.len(),
            removed = round.removed.len(),
            "the resync found differences the incremental path missed"
        );
    }
}

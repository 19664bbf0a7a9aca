//! The reconcile loop: sleeps until a source reports a change, takes every service changed
//! since the last round (a burst of events becomes one round), computes the desired specs of
//! just those services and hands them to the reconciler. Besides that it only wakes for
//! retries of failed services, the first pruning after every source listed, and the rare full
//! resync. An idle agent does nothing.
//!
//! The attached interfaces' addresses come from the data path's own watch (rtnetlink, on a
//! thread of the data path): its events wake the loop through a channel, and the reconciler
//! writes them as NodePort addresses, whether or not the sources listed (they name no
//! service); the protections' node addresses follow them too.

use std::time::{Duration, Instant};

use lb_datapath::datapath::{AddressEvent, AddressSink, AddressWatch};
use tokio::{sync::mpsc, time::sleep_until};

use super::{endpoints::Health, seed::SeedPlan};
use crate::{desired, model::Key, reconcile::Round, state::Shared};

/// The events of the interface address watch, as they reach the loop.
type AddressEvents = mpsc::UnboundedReceiver<Vec<AddressEvent>>;

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

/// Starts the data path's watch of the interfaces' addresses. Without one (it failed, or
/// the data path does not follow interfaces) the receiver is closed at once and NodePorts
/// keep the addresses read at attach.
async fn watch_addresses(shared: &Shared) -> (Option<AddressWatch>, AddressEvents) {
    let (tx, rx) = mpsc::unbounded_channel();
    let sink: AddressSink = Box::new(move |events| {
        // The loop is gone only when the agent stops.
        let _ = tx.send(events);
    });
    let watch = shared
        .reconciler
        .lock()
        .await
        .watch_interface_addresses(sink);
    match watch {
        Ok(Some(w)) => {
            tracing::info!("following the attached interfaces' addresses");
            (Some(w), rx)
        }
        Ok(None) => (None, rx),
        Err(e) => {
            tracing::error!(error = %e, "cannot follow the interfaces' addresses: NodePorts keep the addresses read at attach, and a previous run's are not removed");
            (None, rx)
        }
    }
}

/// Applies `events` and any that queued behind them (a burst is one write), then hands the
/// current addresses to the protections (a VIP may not be a node address).
async fn apply_addresses(shared: &Shared, mut events: Vec<AddressEvent>, rx: &mut AddressEvents) {
    while let Ok(more) = rx.try_recv() {
        events.extend(more);
    }
    let current = {
        let mut rec = shared.reconciler.lock().await;
        rec.interface_address_events(events);
        rec.interface_addresses()
    };
    if let Some(addrs) = current {
        let mut store = shared.store.lock().await;
        if store.tables.protections().interface_addresses != addrs {
            let mut p = store.tables.protections().clone();
            p.interface_addresses = addrs;
            store.tables.set_protections(p);
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
    // Stops the watch when the loop ends.
    let (_watch, mut addresses) = watch_addresses(&shared).await;
    loop {
        // Nothing is applied before every source listed once: a restarted agent would
        // otherwise program services it has listed before their endpoints are listed.
        if !shared.sources.all_synced() {
            tokio::select! {
                _ = shared.changed.notified() => {}
                Some(events) = addresses.recv() => apply_addresses(&shared, events, &mut addresses).await,
            }
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
            retry_at = (rec.failed().next().is_some() || rec.interface_addresses_failed())
                .then(|| Instant::now() + RETRY);
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
            Some(events) = addresses.recv() => {
                apply_addresses(&shared, events, &mut addresses).await;
                continue;
            }
            _ = sleep_until(wake.into()) => {}
        }
        let now = Instant::now();
        if retry_at.is_some_and(|t| t <= now) {
            let failed: Vec<Key> = {
                let mut rec = shared.reconciler.lock().await;
                if rec.interface_addresses_failed() {
                    rec.resync_interface_addresses();
                }
                rec.failed().cloned().collect()
            };
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
    rec.resync_interface_addresses();
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

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use metrics_exporter_prometheus::PrometheusBuilder;

    use super::*;
    use crate::fake::FakeDataPath;

    const WAIT: Duration = Duration::from_secs(10);

    async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !f().await {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The loop starts the data path's address watch; its events are written as NodePort
    /// addresses (a full list first, then the difference) and reach the protections, which
    /// refuse a VIP equal to a node address.
    #[tokio::test]
    async fn address_events_reach_the_data_path_and_the_protections() {
        let (fake, journal) = FakeDataPath::with_journal();
        let feed = fake.address_feed.clone();
        let shared = Shared::new(Box::new(fake), None);
        let prom = PrometheusBuilder::new().build_recorder().handle();
        let health = Health::new(shared.clone(), Duration::from_secs(60), prom);
        let looped = tokio::spawn(run(
            shared.clone(),
            health,
            Duration::from_secs(300),
            "node-a".into(),
            SeedPlan::Fixed(7),
        ));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.3".parse().unwrap();
        until("the watch to start", async || feed.watching()).await;
        assert!(feed.send(vec![AddressEvent::Listed(vec![(2, a)])]));
        let protected = async |addr: IpAddr| {
            shared
                .store
                .lock()
                .await
                .tables
                .protections()
                .interface_addresses
                .contains(&addr)
        };
        until("the listed address in the protections", async || {
            protected(a).await
        })
        .await;
        assert!(feed.send(vec![AddressEvent::Added {
            ifindex: 2,
            addr: b
        }]));
        until("the added address in the protections", async || {
            protected(b).await
        })
        .await;
        let vip_b = "apiVersion: v1\nkind: Service\nmetadata: {name: lb, namespace: default}\nspec:\n  type: LoadBalancer\n  ports: [{port: 80}]\nstatus:\n  loadBalancer:\n    ingress: [{ip: 192.0.2.3}]\n";
        let parsed = crate::objects::Object::parse_documents(vip_b)
            .pop()
            .unwrap()
            .unwrap();
        let refused = shared.store.lock().await.tables.check(&parsed.object);
        assert!(
            refused.as_ref().is_err_and(|e| e
                .to_string()
                .contains("192.0.2.3 is an address of this node")),
            "{refused:?}"
        );
        assert!(feed.send(vec![AddressEvent::Removed {
            ifindex: 2,
            addr: a
        }]));
        until("the removed address out of the protections", async || {
            !protected(a).await
        })
        .await;
        let calls: Vec<String> = journal
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.starts_with("interface addresses"))
            .cloned()
            .collect();
        assert_eq!(
            calls,
            vec![
                "interface addresses [192.0.2.1]".to_string(),
                "interface addresses +[192.0.2.3] -[]".to_string(),
                "interface addresses +[] -[192.0.2.1]".to_string(),
            ]
        );
        looped.abort();
    }
}

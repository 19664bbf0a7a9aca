//! The reconciler: the only writer of the data path. It compares the desired specs with what
//! it wrote and applies the difference, new and changed services first (each update is make
//! before break inside the data path), removals last; it never removes anything before every
//! source finished its first full sync (a restarted agent adopts the pinned state and must not
//! prune services its sources have not listed yet). Idempotent: the same desired state twice
//! writes nothing the second time; a periodic resync re-applies everything to heal drift.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use lb_datapath::{DataPath, ServiceSpec};

use crate::metrics;

/// What one reconcile round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Round {
    pub upserted: Vec<String>,
    pub removed: Vec<String>,
    /// (service, error) of every failed operation; the rest of the round still ran.
    pub errors: Vec<(String, String)>,
    /// Services not removed because not every source had synced yet.
    pub kept_unsynced: Vec<String>,
}

pub struct Reconciler<D: DataPath> {
    dp: D,
    applied: BTreeMap<String, ServiceSpec>,
    pruning_allowed: bool,
}

impl<D: DataPath> std::fmt::Debug for Reconciler<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("applied", &self.applied.len())
            .field("pruning_allowed", &self.pruning_allowed)
            .finish_non_exhaustive()
    }
}

impl<D: DataPath> Reconciler<D> {
    pub fn new(dp: D) -> Self {
        Reconciler {
            dp,
            applied: BTreeMap::new(),
            pruning_allowed: false,
        }
    }

    pub fn data_path(&self) -> &D {
        &self.dp
    }

    pub fn data_path_mut(&mut self) -> &mut D {
        &mut self.dp
    }

    /// Whether removals are allowed (every source has completed a full sync once).
    pub fn pruning_allowed(&self) -> bool {
        self.pruning_allowed
    }

    /// Applies `desired`. `all_synced`: every source has delivered its full state at least
    /// once (from then on, services that are not desired are removed). `resync`: re-apply
    /// every desired service even if unchanged. `changed_at`: when the oldest change this
    /// round carries was seen by a source (network-programming latency).
    pub fn reconcile(
        &mut self,
        desired: &BTreeMap<String, ServiceSpec>,
        all_synced: bool,
        resync: bool,
        changed_at: Option<Instant>,
    ) -> Round {
        let started = Instant::now();
        let mut round = Round::default();
        if all_synced {
            self.pruning_allowed = true;
        }
        for (name, spec) in desired {
            if !resync && self.applied.get(name) == Some(spec) {
                continue;
            }
            match self.dp.upsert_service(spec) {
                Ok(_) => {
                    self.applied.insert(name.clone(), spec.clone());
                    round.upserted.push(name.clone());
                }
                Err(e) => {
                    metrics::reconcile_error("upsert");
                    tracing::warn!(service = %name, error = %e, "applying a service failed; the previous state stays in force");
                    round.errors.push((name.clone(), e.to_string()));
                }
            }
        }
        let held: BTreeSet<String> = self
            .dp
            .service_names()
            .into_iter()
            .chain(self.applied.keys().cloned())
            .collect();
        for name in held.into_iter().filter(|n| !desired.contains_key(n)) {
            if !self.pruning_allowed {
                round.kept_unsynced.push(name);
                continue;
            }
            match self.dp.remove_service(&name) {
                Ok(()) | Err(lb_datapath::Error::UnknownService(_)) => {
                    self.applied.remove(&name);
                    round.removed.push(name);
                }
                Err(e) => {
                    metrics::reconcile_error("remove");
                    round.errors.push((name, e.to_string()));
                }
            }
        }
        if let Err(e) = self.dp.purge_stale() {
            metrics::reconcile_error("purge");
            round.errors.push(("<purge>".into(), e.to_string()));
        }
        let wrote = !round.upserted.is_empty() || !round.removed.is_empty();
        metrics::sync_done(
            started.elapsed(),
            wrote.then_some(changed_at).flatten().map(|t| t.elapsed()),
        );
        round
    }

    /// Time since `t` (helper for callers that track change times).
    pub fn since(t: Instant) -> Duration {
        t.elapsed()
    }
}

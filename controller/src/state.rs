//! State shared by the agent's tasks (API handlers, sources, prober, reconcile loop).

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex as SyncMutex},
};

use lb_datapath::DataPath;
use tokio::sync::{Mutex, Notify};

use crate::{
    desired::ProbeResults, ipam::IpamStatus, model::Key, reconcile::Reconciler, store::Store,
};

/// The data path behind the reconciler, type-erased.
pub type BoxedDataPath = Box<dyn DataPath>;

/// Which sources have delivered their full state at least once. Nothing is pruned, and
/// `/readyz` stays 503, until every registered source has.
#[derive(Debug, Default)]
pub struct Sources {
    pending: SyncMutex<BTreeSet<String>>,
}

impl Sources {
    /// A source that will call [`Sources::synced`] after its first full list.
    pub fn register(&self, name: &str) {
        self.pending
            .lock()
            .expect("poisoned")
            .insert(name.to_string());
    }

    pub fn synced(&self, name: &str) {
        self.pending.lock().expect("poisoned").remove(name);
    }

    pub fn all_synced(&self) -> bool {
        self.pending.lock().expect("poisoned").is_empty()
    }

    /// The sources still waiting for their first full list.
    pub fn waiting(&self) -> Vec<String> {
        self.pending
            .lock()
            .expect("poisoned")
            .iter()
            .cloned()
            .collect()
    }
}

#[derive(Clone)]
pub struct Shared {
    pub store: Arc<Mutex<Store>>,
    pub reconciler: Arc<Mutex<Reconciler<BoxedDataPath>>>,
    pub probes: Arc<Mutex<ProbeResults>>,
    pub sources: Arc<Sources>,
    /// Wakes the reconcile loop after a change.
    pub changed: Arc<Notify>,
    /// Bearer token that API writes must carry; `None`: the API is read-only.
    pub token: Option<Arc<str>>,
    /// What the LoadBalancer IP assigner reports (`enabled: false` when it is off).
    pub ipam: Arc<tokio::sync::watch::Sender<IpamStatus>>,
    /// The headless Service whose ready endpoints are the other agents (`GET
    /// /sluice/v1/peers`); `None`: peer discovery is off.
    pub peer_service: Option<Key>,
}

impl Shared {
    pub fn new(dp: BoxedDataPath, token: Option<String>) -> Self {
        Shared {
            store: Arc::new(Mutex::new(Store::default())),
            reconciler: Arc::new(Mutex::new(Reconciler::new(dp))),
            probes: Arc::new(Mutex::new(ProbeResults::default())),
            sources: Arc::new(Sources::default()),
            changed: Arc::new(Notify::new()),
            token: token.map(Into::into),
            ipam: Arc::new(tokio::sync::watch::Sender::new(IpamStatus::default())),
            peer_service: Some(crate::peers::default_service()),
        }
    }

    /// Names the agents' headless Service (default [`crate::peers::default_service`]).
    pub fn with_peer_service(mut self, service: Option<Key>) -> Self {
        self.peer_service = service;
        self
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

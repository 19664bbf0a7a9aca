//! State shared by the agent's tasks (API handlers, file watcher, prober, reconcile loop).

use std::sync::Arc;

use lb_datapath::DataPath;
use tokio::sync::{Mutex, Notify};

use crate::{desired::ProbeResults, reconcile::Reconciler, store::Store};

/// The data path behind the reconciler, type-erased.
pub type BoxedDataPath = Box<dyn DataPath>;

#[derive(Clone)]
pub struct Shared {
    pub store: Arc<Mutex<Store>>,
    pub reconciler: Arc<Mutex<Reconciler<BoxedDataPath>>>,
    pub probes: Arc<Mutex<ProbeResults>>,
    /// Wakes the reconcile loop after a change.
    pub changed: Arc<Notify>,
    /// Bearer token that API writes must carry; `None`: the API is read-only.
    pub token: Option<Arc<str>>,
}

impl Shared {
    pub fn new(dp: BoxedDataPath, token: Option<String>) -> Self {
        Shared {
            store: Arc::new(Mutex::new(Store::default())),
            reconciler: Arc::new(Mutex::new(Reconciler::new(dp))),
            probes: Arc::new(Mutex::new(ProbeResults::default())),
            changed: Arc::new(Notify::new()),
            token: token.map(Into::into),
        }
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

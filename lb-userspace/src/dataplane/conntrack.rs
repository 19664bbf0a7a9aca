//! The conntrack side of the data path's API: a complete GC pass on demand, the GC's
//! statistics, and the drain handshake's flow counts (from the GC's last pass: no walk).

use std::net::IpAddr;

use lb_common::map_names as names;

use super::Dataplane;
use crate::{EndpointStatus, ct_gc, error::Error};

impl Dataplane {
    /// Runs the conntrack GC until a pass that started after this call has completed, then
    /// returns the entries it deleted: for tests and tools that need the flow counts of
    /// now. The agent never calls it (the GC thread keeps the snapshot fresh).
    pub fn conntrack_gc_pass(&self) -> Result<u64, Error> {
        self.ct_collector
            .lock()
            .expect("poisoned")
            .complete_pass(ct_gc::monotonic_s())
            .map_err(|e| Error::map(names::CONNTRACK, "GC", e))
    }

    /// Flows by table and state, expirations and GC runs, from the GC's last pass.
    pub fn conntrack_stats(&self) -> lb_datapath::ConntrackStats {
        self.ct_view.lock().expect("poisoned").stats.clone()
    }

    /// The drain handshake: for every service that has a backend at `addr` (any port),
    /// whether the data path still selects it for new flows, and how many tracked flows
    /// (client -> backend directions) it has. The answer reflects the maps: once
    /// [`Dataplane::upsert_service`] returned, no new flow goes to a backend reported as
    /// not selectable.
    pub fn endpoint_status(
        &self,
        addr: IpAddr,
        count_flows: bool,
    ) -> Result<Vec<EndpointStatus>, Error> {
        let found = self.prog.endpoint_status(addr);
        if !count_flows {
            return Ok(found.into_iter().map(|(s, _, _)| s).collect());
        }
        // Live flows as of the GC's last complete pass.
        let view = self.ct_view.lock().expect("poisoned");
        Ok(found
            .into_iter()
            .map(|(mut s, id, generation)| {
                s.flows = view
                    .complete
                    .then(|| view.by_backend.get(&(id, generation)).copied().unwrap_or(0));
                s
            })
            .collect())
    }
}

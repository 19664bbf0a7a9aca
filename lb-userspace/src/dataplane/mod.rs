//! [`Dataplane`]: the loaded programs and the single owner of their maps. How a service is
//! written (the make-before-break order, the capacity checks, the bookkeeping) is decided
//! by `lb_datapath::program`, the same code the agent's tests run on maps in memory; this
//! folder puts it on the kernel's maps:
//!
//! - `load`: the object loaded, pinned maps verified and adopted, `CONFIG` written, the
//!   conntrack GC started;
//! - `restore`: the bookkeeping rebuilt from adopted maps;
//! - `kernel_maps`: the planner's and writer's `Maps` on the kernel's maps (mmap stores and
//!   `bpf` syscalls);
//! - `conntrack`: GC passes, GC statistics, the drain handshake's flow counts;
//! - `inspect`: dumps, occupancy, usage and counters.
//!
//! Attaching to interfaces is [`crate::attach`]'s; node addresses are `node_addresses`'.

mod conntrack;
mod inspect;
mod kernel_maps;
mod load;
mod restore;

use std::sync::{Arc, Mutex};

use aya::Ebpf;
use lb_common::map_names as names;
use lb_datapath::program::Programmer;

use crate::{
    attach::Attachments, config::DataplaneConfig, ct_gc, error::Error, maps::KernelMaps,
    spec::ServiceSpec,
};

/// The data path: loaded programs, their maps, and what was written into them.
pub struct Dataplane {
    pub(crate) ebpf: Ebpf,
    /// The service maps and their bookkeeping (see `lb_datapath::program`).
    pub(crate) prog: Programmer<KernelMaps>,
    pub(crate) cfg: DataplaneConfig,
    pub(crate) attachments: Attachments,
    /// The conntrack GC's last complete pass (flows by backend, stats).
    pub(crate) ct_view: Arc<Mutex<ct_gc::Snapshot>>,
    /// The GC's walker, stepped by its thread (and by [`Dataplane::conntrack_gc_pass`]).
    pub(crate) ct_collector: Arc<Mutex<ct_gc::Collector>>,
    pub(crate) _ct_gc: ct_gc::GcThread,
}

impl std::fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataplane")
            .field("services", &self.prog.book.services.len())
            .field("config", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Dataplane {
    /// Creates or updates a service, in make-before-break order (`lb_datapath::program`).
    /// On error nothing the caller can observe has changed, except for a kernel write that
    /// failed midway, which is reported and leaves the previous state in force.
    pub fn upsert_service(&mut self, spec: &ServiceSpec) -> Result<u32, Error> {
        self.prog.upsert_service(spec)
    }

    /// Removes a service: frontends first (no new packet matches), then its table, then its
    /// backends; their ids are held back until [`Dataplane::purge_stale`].
    pub fn remove_service(&mut self, name: &str) -> Result<(), Error> {
        self.prog.remove_service(name)
    }

    /// Services restored from pinned maps or written since, by name (a restarted agent
    /// compares these with its sources once they are fully synced, then removes the rest).
    pub fn service_names(&self) -> Vec<String> {
        self.prog.service_names()
    }

    pub fn config(&self) -> &DataplaneConfig {
        &self.cfg
    }

    /// The seed of the flow hash and of the Maglev tables in force.
    pub fn hash_seed(&self) -> u32 {
        self.cfg.hash_seed.unwrap_or_default()
    }

    /// Sets the seed of the flow hash and of Maglev (`CONFIG`). A different seed than the
    /// one in force marks every table as stale, so each service's next upsert rebuilds its
    /// table with it (tracked flows keep their backends; only new flows hash differently).
    /// The agent sets it once, before its first service write, so this walk is of the
    /// services adopted from pins at most.
    pub fn set_hash_seed(&mut self, seed: u32) -> Result<(), Error> {
        if self.cfg.hash_seed == Some(seed) {
            return Ok(());
        }
        let maps = &mut self.prog.maps;
        let mut global = maps
            .config
            .get(&0, 0)
            .map_err(|e| Error::map(names::CONFIG, "read", e))?;
        global.hash_seed = seed;
        maps.config
            .set(0, global, 0)
            .map_err(|e| Error::map(names::CONFIG, "write", e))?;
        self.cfg.hash_seed = Some(seed);
        self.prog.set_hash_seed(seed);
        Ok(())
    }

    /// Ids of removed services and backends whose conntrack and affinity entries have not
    /// been purged yet (their ids are not reused until then).
    pub fn stale_ids(&self) -> (usize, usize) {
        self.prog.stale_ids()
    }

    /// Releases the ids of removed services and backends (see
    /// `lb_datapath::program::Programmer::purge_stale`). Returns 0: no entry is deleted
    /// here, the conntrack GC deletes them within a pass.
    pub fn purge_stale(&mut self) -> Result<u64, Error> {
        self.prog.purge_stale();
        Ok(0)
    }

    /// Entries in `SOURCE_RANGES`, over every service.
    pub fn source_range_entries(&self) -> u32 {
        self.prog.book.source_range_entries
    }
}

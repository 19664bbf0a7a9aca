//! Programming the service maps: a desired [`ServiceSpec`] becomes ordered, make-before-break
//! map writes, so every packet finds a valid backend at every moment (DESIGN.md):
//!
//! 1. new backends are written to `BACKENDS`;
//! 2. the selection table is written: changed slots in place (each slot names an old or a
//!    new backend, both valid), or, when the size changes, a complete table in a fresh range
//!    of `SLOTS`;
//! 3. the frontends (`SERVICES`) are written, pointing at the table in force, and a table
//!    that is no longer in force is deleted;
//! 4. removed backends are deleted (flags cleared, generation kept). Their conntrack and
//!    affinity entries name that generation: the data path ignores them at once (a flow
//!    of a removed backend is selected afresh) and the conntrack GC deletes them in the
//!    background, so no update walks a flow table; an id given to a new backend gets the
//!    next generation.
//!
//! The parts, one job each:
//! - [`validate`]: the rules a spec must follow;
//! - [`plan`]: the pure planner (spec + [`Book`] + reads of the maps -> [`Plan`], every
//!   capacity checked before the first write);
//! - [`write`]: the [`Maps`] trait and the writer that applies a plan and records each write
//!   that succeeded in the [`Book`];
//! - [`book`]: the bookkeeping;
//! - [`inspect`]: dumps and endpoint status read from the book and the maps;
//! - [`memory`]: [`MemoryMaps`], the maps in memory, for the agent's tests and golden files.
//!
//! `lb-userspace` implements [`Maps`] on the kernel's maps; the agent's fake data path uses
//! [`MemoryMaps`]. Both run this same code, so what a test of the agent sees (ids, table
//! sizes, which backend is selectable) is what the kernel would hold.

pub mod book;
pub mod inspect;
pub mod memory;
pub mod plan;
pub mod validate;
pub mod write;

pub use book::Book;
pub use memory::MemoryMaps;
pub use plan::{Plan, Settings};
pub use write::{Maps, Write};

use crate::{error::Error, spec::ServiceSpec};

/// The book and the maps it describes, updated together.
#[derive(Debug)]
pub struct Programmer<M> {
    pub book: Book,
    pub maps: M,
    pub settings: Settings,
}

impl<M: Maps> Programmer<M> {
    /// Nothing written yet; `fresh`: `maps` were created empty by this process.
    pub fn new(maps: M, settings: Settings, fresh: bool) -> Self {
        Programmer {
            book: Book::new(&settings.capacities, fresh),
            maps,
            settings,
        }
    }

    /// Creates or updates a service; its id. On error nothing the caller can observe has
    /// changed, except for a map write that failed midway, which is reported and leaves
    /// the previous table in force.
    pub fn upsert_service(&mut self, spec: &ServiceSpec) -> Result<u32, Error> {
        // Ids held back for purging are recycled first if this update needs them.
        let book = &self.book;
        let needs_service = !book.services.contains_key(&spec.name);
        let wanted = spec.backends.len() as u32;
        if (needs_service && book.service_ids.available() == 0 && !book.stale_services.is_empty())
            || (book.backend_ids.available() < wanted && !book.stale_backends.is_empty())
        {
            self.purge_stale();
        }
        let plan = plan::upsert(&self.book, &self.maps, &self.settings, spec)?;
        write::apply(&mut self.book, &mut self.maps, &plan)?;
        Ok(plan.id)
    }

    /// Removes a service (see [`plan::remove`]).
    pub fn remove_service(&mut self, name: &str) -> Result<(), Error> {
        let plan = plan::remove(&self.book, name)?;
        write::apply(&mut self.book, &mut self.maps, &plan)
    }

    /// Releases the ids of removed services and backends. Nothing walks the flow tables:
    /// every conntrack and affinity entry names its backend's generation, which a reused id
    /// never has again, so the data path ignores entries of removed backends at once and
    /// the conntrack GC deletes them within a pass.
    pub fn purge_stale(&mut self) {
        for bid in std::mem::take(&mut self.book.stale_backends) {
            self.book.backend_ids.release(bid);
        }
        for sid in std::mem::take(&mut self.book.stale_services) {
            self.book.service_ids.release(sid);
        }
    }

    /// Ids of removed services and backends not released yet.
    pub fn stale_ids(&self) -> (usize, usize) {
        (
            self.book.stale_services.len(),
            self.book.stale_backends.len(),
        )
    }

    /// A new hash seed: every table is rebuilt with it at its service's next upsert
    /// (tracked flows keep their backends; only new flows hash differently).
    pub fn set_hash_seed(&mut self, seed: u32) {
        if self.settings.hash_seed == seed {
            return;
        }
        self.settings.hash_seed = seed;
        for svc in self.book.services.values_mut() {
            svc.table_current = false;
        }
    }

    /// Services written, by name.
    pub fn service_names(&self) -> Vec<String> {
        self.book.services.keys().cloned().collect()
    }
}

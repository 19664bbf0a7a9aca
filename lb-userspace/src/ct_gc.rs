//! The conntrack garbage collector: a background thread that walks the three conntrack
//! tables a bounded batch at a time, resuming where it stopped, and deletes what is dead:
//! a FORWARD entry whose state's timeout ran or whose backend is gone (removed, or its id
//! given to another backend: another generation), a REPLY entry whose FORWARD entry is
//! gone, expired or names another backend. Removing a backend or a service therefore never
//! walks conntrack on the update path: the data path ignores such entries at once, and the
//! GC deletes them within a pass. It never takes a lock the reconciler holds (it owns
//! its own handles of the maps) and nothing on the update path waits for it.
//!
//! Each complete pass also leaves a snapshot: live flows by table and state (metrics) and
//! by backend (the drain handshake's flow count), so neither a scrape nor a `drain-wait
//! --flows` call walks a table.

use std::{
    collections::HashMap as StdHashMap,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::maps::{Array, HashMap, Map, MapData, MapError};
use lb_common::{Backend, CtEntry, FlowKey, GlobalConfig, backend_flags, ct_flags, ct_state, dir};
use lb_datapath::{ConntrackConfig, ConntrackStats};

/// One table's handles: a map handle for lookups and deletes, a raw fd for
/// `BPF_MAP_GET_NEXT_KEY` (which aya does not expose with a start key).
pub(crate) struct GcTable {
    pub label: &'static str,
    map: HashMap<MapData, FlowKey, CtEntry>,
    keys_fd: OwnedFd,
}

impl GcTable {
    /// Handles on the map behind `fd` (duplicated: the caller keeps its own).
    pub fn open(label: &'static str, fd: BorrowedFd<'_>) -> std::io::Result<GcTable> {
        let data = MapData::from_fd(fd.try_clone_to_owned()?).map_err(std::io::Error::other)?;
        let map = HashMap::try_from(Map::LruHashMap(data)).map_err(std::io::Error::other)?;
        Ok(GcTable {
            label,
            map,
            keys_fd: fd.try_clone_to_owned()?,
        })
    }
}

/// `BPF_MAP_GET_NEXT_KEY`: the key after `key` (the first one for `None`; also the first
/// one when `key` is no longer in the map, as the kernel does for hash maps).
fn next_key(fd: BorrowedFd<'_>, key: Option<&FlowKey>) -> std::io::Result<Option<FlowKey>> {
    #[repr(C)]
    struct Attr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        next_key: u64,
        flags: u64,
    }
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
    let mut next = FlowKey::default();
    let mut attr = Attr {
        map_fd: fd.as_raw_fd() as u32,
        _pad: 0,
        key: key.map_or(0, |k| k as *const FlowKey as u64),
        next_key: &mut next as *mut FlowKey as u64,
        flags: 0,
    };
    // SAFETY: `attr` is a valid bpf_attr prefix for this command; `key` and `next` point
    // to FlowKey-sized memory, the map's key size.
    match unsafe { crate::bpf_sys::bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) } {
        Ok(_) => Ok(Some(next)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The kernel's monotonic clock in seconds (what `bpf_ktime_get_ns` counts).
pub(crate) fn monotonic_s() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u32
}

/// `g` with the conntrack timeouts of `c` (what the data path's `CONFIG` holds).
pub(crate) fn with_timeouts(g: GlobalConfig, c: &ConntrackConfig) -> GlobalConfig {
    GlobalConfig {
        ct_tcp_new_s: c.tcp_syn_seconds,
        ct_tcp_established_s: c.tcp_established_seconds,
        ct_tcp_closing_s: c.tcp_closing_seconds,
        ct_other_s: c.other_seconds,
        ..g
    }
}

/// Whether a FORWARD entry is alive at `now`: [`CtEntry::alive`], the data path's rule.
pub(crate) fn alive(e: &CtEntry, now: u32, c: &ConntrackConfig) -> bool {
    e.alive(now, &with_timeouts(GlobalConfig::default(), c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alive_by_state_timeout_and_an_entry_refreshed_after_the_clock_was_read() {
        let c = ConntrackConfig::default();
        let e = |state, last_seen_s| CtEntry {
            state,
            last_seen_s,
            ..CtEntry::default()
        };
        assert!(alive(&e(ct_state::ESTABLISHED, 100), 100 + 21_600, &c));
        assert!(!alive(&e(ct_state::ESTABLISHED, 100), 100 + 21_601, &c));
        assert!(!alive(&e(ct_state::CLOSING, 100), 111, &c));
        assert!(alive(&e(ct_state::NEW, 100), 160, &c));
        assert!(!alive(&e(ct_state::OTHER, 100), 161, &c));
        // Refreshed by a packet one second after this clock read: alive, not "expired".
        assert!(alive(&e(ct_state::CLOSING, 101), 100, &c));
        assert!(
            alive(&e(ct_state::OTHER, u32::MAX), 0, &c),
            "across the wrap"
        );
    }
}

fn state_label(state: u8) -> &'static str {
    match state {
        ct_state::NEW => "new",
        ct_state::ESTABLISHED => "established",
        ct_state::CLOSING => "closing",
        ct_state::CLOSED => "closed",
        _ => "other",
    }
}

/// What the last complete pass saw.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub stats: ConntrackStats,
    /// Live flows by (backend id, generation).
    pub by_backend: StdHashMap<(u32, u32), u64>,
    /// Whether a pass has completed since the GC started.
    pub complete: bool,
}

/// One pass in progress over every table.
#[derive(Default)]
struct Pass {
    flows: StdHashMap<(&'static str, &'static str), u64>,
    entries: StdHashMap<&'static str, u64>,
    by_backend: StdHashMap<(u32, u32), u64>,
}

/// `BACKENDS` read through syscalls (the GC's own handle).
pub(crate) struct GcBackends(Array<MapData, Backend>);

impl GcBackends {
    pub fn open(fd: BorrowedFd<'_>) -> std::io::Result<GcBackends> {
        let data = MapData::from_fd(fd.try_clone_to_owned()?).map_err(std::io::Error::other)?;
        Ok(GcBackends(
            Array::try_from(Map::Array(data)).map_err(std::io::Error::other)?,
        ))
    }

    fn live(&self, id: u32, generation: u32) -> Result<bool, MapError> {
        match self.0.get(&id, 0) {
            Ok(b) => Ok(b.flags & backend_flags::PRESENT != 0 && b.generation == generation),
            Err(MapError::OutOfBounds { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// The walker's state; [`Collector::step`] is one bounded run (the thread calls it every
/// `gc_interval_millis`; tests call it directly).
pub(crate) struct Collector {
    tables: Vec<GcTable>,
    backends: GcBackends,
    cfg: ConntrackConfig,
    /// Per table: the next key to visit (`None`: start of a pass), and whether this pass
    /// over it is done.
    cursors: Vec<(Option<FlowKey>, bool)>,
    pass: Pass,
    view: Arc<Mutex<Snapshot>>,
    expired: u64,
    runs: u64,
    passes: u64,
}

impl Collector {
    pub fn new(
        tables: Vec<GcTable>,
        backends: GcBackends,
        cfg: ConntrackConfig,
        view: Arc<Mutex<Snapshot>>,
    ) -> Self {
        let n = tables.len();
        Collector {
            tables,
            backends,
            cfg,
            cursors: vec![(None, false); n],
            pass: Pass::default(),
            view,
            expired: 0,
            runs: 0,
            passes: 0,
        }
    }

    /// Visits at most `gc_batch` entries of each table; publishes a snapshot when every
    /// table's pass is complete. Returns the entries deleted.
    pub fn step(&mut self, now: u32) -> Result<u64, MapError> {
        let mut deleted = 0;
        for i in 0..self.tables.len() {
            if self.cursors[i].1 {
                continue;
            }
            deleted += self.step_table(i, now)?;
        }
        self.runs += 1;
        if self.cursors.iter().all(|c| c.1) {
            self.publish();
        } else {
            self.view.lock().expect("poisoned").stats.gc_runs = self.runs;
        }
        Ok(deleted)
    }

    fn step_table(&mut self, i: usize, now: u32) -> Result<u64, MapError> {
        let batch = self.cfg.gc_batch.max(1);
        let label = self.tables[i].label;
        // The cursor is a key not visited yet (read ahead, never deleted by us).
        let mut key = match self.cursors[i].0 {
            Some(k) => Some(k),
            None => next_key(self.tables[i].keys_fd.as_fd(), None).map_err(io_err)?,
        };
        let mut deleted = 0;
        let mut visited = 0;
        while let Some(k) = key {
            if visited == batch {
                self.cursors[i].0 = Some(k);
                return Ok(deleted);
            }
            visited += 1;
            // Read the next key before a delete could move the walk back to the start.
            let next = next_key(self.tables[i].keys_fd.as_fd(), Some(&k)).map_err(io_err)?;
            if self.visit(i, &k, now)? {
                deleted += 1;
            } else {
                *self.pass.entries.entry(label).or_default() += 1;
            }
            key = next;
        }
        self.cursors[i] = (None, true);
        Ok(deleted)
    }

    /// One entry: deleted if dead (returns true), else counted.
    fn visit(&mut self, i: usize, k: &FlowKey, now: u32) -> Result<bool, MapError> {
        let t = &mut self.tables[i];
        let e = match t.map.get(k, 0) {
            Ok(e) => e,
            // Evicted or deleted by the data path meanwhile.
            Err(MapError::KeyNotFound) => return Ok(true),
            Err(e) => return Err(e),
        };
        let dead = if k.dir == dir::FORWARD {
            // A DSR flow tracked on its endpoint's node names no backend id (the endpoint
            // came with the packet): its timeouts alone decide.
            let dsr_here = e.flags & ct_flags::DSR != 0 && e.backend_id == 0;
            !alive(&e, now, &self.cfg)
                || !(dsr_here || self.backends.live(e.backend_id, e.backend_gen)?)
        } else {
            match t.map.get(&e.forward_key(k), 0) {
                Ok(f) => {
                    f.backend_id != e.backend_id
                        || f.backend_gen != e.backend_gen
                        || !alive(&f, now, &self.cfg)
                }
                Err(MapError::KeyNotFound) => true,
                Err(e) => return Err(e),
            }
        };
        if dead {
            match t.map.remove(k) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(e),
            }
            self.expired += 1;
            return Ok(true);
        }
        if k.dir == dir::FORWARD {
            *self
                .pass
                .flows
                .entry((t.label, state_label(e.state)))
                .or_default() += 1;
            *self
                .pass
                .by_backend
                .entry((e.backend_id, e.backend_gen))
                .or_default() += 1;
        }
        Ok(false)
    }

    /// Steps until a pass that started after this call completed (a caller that needs the
    /// counts now, e.g. a test; the agent's paths read the last snapshot instead).
    pub fn complete_pass(&mut self, now: u32) -> Result<u64, MapError> {
        let passes = self.passes;
        // The pass under way may have begun before the caller's change: finish it, then
        // run one more.
        let target = if self.cursors.iter().any(|c| c.0.is_some() || c.1) {
            passes + 2
        } else {
            passes + 1
        };
        let mut deleted = 0;
        while self.passes < target {
            deleted += self.step(now)?;
        }
        Ok(deleted)
    }

    fn publish(&mut self) {
        self.passes += 1;
        let pass = std::mem::take(&mut self.pass);
        let mut flows: Vec<(String, String, u64)> = pass
            .flows
            .into_iter()
            .map(|((t, s), n)| (t.to_string(), s.to_string(), n))
            .collect();
        flows.sort();
        let mut entries: Vec<(String, u64)> = self
            .tables
            .iter()
            .map(|t| {
                (
                    t.label.to_string(),
                    pass.entries.get(t.label).copied().unwrap_or(0),
                )
            })
            .collect();
        entries.sort();
        *self.view.lock().expect("poisoned") = Snapshot {
            stats: ConntrackStats {
                flows,
                entries,
                expired: self.expired,
                gc_runs: self.runs,
                gc_passes: self.passes,
            },
            by_backend: pass.by_backend,
            complete: true,
        };
        for c in &mut self.cursors {
            *c = (None, false);
        }
    }
}

fn io_err(e: std::io::Error) -> MapError {
    MapError::SyscallError(aya::sys::SyscallError {
        call: "bpf_map_get_next_key",
        io_error: e,
    })
}

/// The GC thread; stopped and joined on drop.
pub(crate) struct GcThread {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl GcThread {
    /// Steps every `interval` (the first step one interval after the spawn) while a pass is
    /// under way; a new pass starts `pass_interval`
    /// after the previous one started (at once if that one took longer). So a full table
    /// costs at most `gc_batch` entries of each table per `interval`, and an idle table
    /// almost nothing.
    pub fn spawn(
        collector: Arc<Mutex<Collector>>,
        interval: Duration,
        pass_interval: Duration,
    ) -> std::io::Result<GcThread> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-ct-gc".into())
            .spawn(move || {
                let mut last_error: Option<String> = None;
                // The first step one interval after the start, not at once: a data path
                // being set up (or a test's first packets) is never raced by a pass that
                // the thread happened to get scheduled for late.
                std::thread::park_timeout(interval);
                let mut pass_started = std::time::Instant::now();
                while !flag.load(Ordering::Relaxed) {
                    // Held for one bounded step: a pass forced by a caller waits at most that.
                    let (stepped, completed) = {
                        let mut c = collector.lock().expect("poisoned");
                        let before = c.passes;
                        let r = c.step(monotonic_s());
                        (r, c.passes != before)
                    };
                    match stepped {
                        Ok(_) => last_error = None,
                        Err(e) => {
                            let msg = e.to_string();
                            if last_error.as_deref() != Some(&msg) {
                                tracing::warn!(error = %msg, "conntrack GC failed; retrying");
                                last_error = Some(msg);
                            }
                        }
                    }
                    let mut wait = interval;
                    if completed {
                        wait = wait.max(pass_interval.saturating_sub(pass_started.elapsed()));
                        pass_started = std::time::Instant::now() + wait;
                    }
                    std::thread::park_timeout(wait);
                }
            })?;
        Ok(GcThread {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for GcThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

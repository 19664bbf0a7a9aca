//! [`Dataplane`]: the single owner of the maps. Updates follow the make-before-break order
//! of DESIGN.md, so every packet finds a valid backend at every moment:
//!
//! 1. new backends are written to `BACKENDS`;
//! 2. the selection table is written: changed slots in place (each slot names an old or a
//!    new backend, both valid), or, when the size changes, a complete table in a fresh range
//!    of `SLOTS`;
//! 3. the frontends (`SERVICES`) are written, pointing at the table in force, and a table
//!    that is no longer in force is deleted;
//! 4. removed backends are deleted (flags cleared, generation kept). Their conntrack and
//!    affinity entries name that generation: the data path ignores them at once (a flow
//!    of a removed backend is selected afresh) and the conntrack GC ([`crate::ct_gc`])
//!    deletes them in the background, so no update walks a flow table; an id given to a
//!    new backend gets the next generation.
//!
//! Bookkeeping changes only after the kernel write it describes succeeded, and every
//! capacity is checked before the first write, so a rejected update changes nothing.
//!
//! `SLOTS`, `BACKENDS` and `SERVICE_NAMES` are written through an mmap ([`crate::mmap`]):
//! plain stores that cannot fail, ordered before the `SERVICES` syscall of step 3 that
//! puts a fresh table in force. The selection tables are not copied into the bookkeeping:
//! the mapped `SLOTS` is the record of the table in force.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use aya::Ebpf;
use lb_common::{
    Backend, GlobalConfig, NetAddr, NetPort, Reason, ServiceKey, ServiceValue, TrafficStats,
    backend_flags, map_names as names, scope, service_flags,
};

use crate::{
    BackendDump, EndpointStatus, MapOccupancy, ServiceDump, ServiceStats, Stats,
    addr::{ip_of, net_addr},
    attach::Attachments,
    config::DataplaneConfig,
    ct_gc,
    error::Error,
    ids::IdAllocator,
    maglev,
    maps::{self, Maps},
    pins,
    slots::SlotRanges,
    spec::{
        AddressFamily, BackendSpec, EndpointState, Frontend, Protocol, ServiceSpec, SourceRanges,
        WhenEmpty,
    },
};

pub(crate) struct BackendState {
    pub id: u32,
    pub state: EndpointState,
    /// In the selection table in force (mirrors `backend_flags::ELIGIBLE`).
    pub eligible: bool,
    /// On another node: new flows are source-NATed (mirrors `backend_flags::REMOTE`).
    pub remote: bool,
}

pub(crate) struct ServiceState {
    pub id: u32,
    pub protocol: Protocol,
    pub frontends: Vec<Frontend>,
    pub backends: BTreeMap<SocketAddr, BackendState>,
    /// First slot of the table in force in `SLOTS`.
    pub slot_offset: u32,
    /// Slots of the table in force (their backend ids are read from the mapped `SLOTS`).
    pub slot_count: u32,
    /// The table in force was built by this process (with its hash seed) from the backends
    /// marked eligible: the same eligible set at the same size builds the same table, so an
    /// unchanged upsert skips the rebuild. False for a restored table (another seed or
    /// version may have built it; the first upsert rebuilds and rewrites what differs).
    pub table_current: bool,
    pub affinity: Option<Duration>,
    /// The `SOURCE_RANGES` entries written for this service, and the frontends they filter.
    pub source_ranges: Option<SourceRanges>,
    /// Other slot ranges a frontend of this service may still point at (restored frontends
    /// that disagreed, or a table change cut short): reserved until every frontend points at
    /// the table in force, then released.
    pub stray_ranges: Vec<(u32, u32)>,
}

/// The data path: loaded programs, their maps, and what was written into them.
pub struct Dataplane {
    pub(crate) ebpf: Ebpf,
    pub(crate) maps: Maps,
    pub(crate) cfg: DataplaneConfig,
    pub(crate) services: BTreeMap<String, ServiceState>,
    /// Owner of every frontend key in `SERVICES`.
    pub(crate) frontend_owner: HashMap<ServiceKey, String>,
    pub(crate) service_ids: IdAllocator,
    pub(crate) backend_ids: IdAllocator,
    pub(crate) slot_ranges: SlotRanges,
    /// Removed, not yet purged from conntrack/affinity (see [`Dataplane::purge_stale`]).
    pub(crate) stale_services: BTreeSet<u32>,
    pub(crate) stale_backends: BTreeSet<u32>,
    /// The highest service and backend ids handed out since these maps were created, when
    /// this process created them: the per-CPU counters of higher ids are still the kernel's
    /// zeroes and need no reset. `None` for adopted maps (any id may hold old counts).
    pub(crate) clean_stats: Option<(u32, u32)>,
    /// Entries in `SOURCE_RANGES` (over every service).
    pub(crate) source_range_entries: u32,
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
            .field("services", &self.services.len())
            .field("config", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// The `SERVICES` key of a frontend. A NodePort key holds the unspecified address of the
/// service's family (`::ffff:0.0.0.0` for IPv4, `::` for IPv6): the XDP program looks up the
/// wildcard of the packet's family, so an IPv4 NodePort never catches IPv6 packets.
fn frontend_key(f: &Frontend, proto: Protocol, family: AddressFamily) -> ServiceKey {
    match f {
        Frontend::NodePort(p) => ServiceKey {
            addr: match family {
                AddressFamily::Ipv4 => NetAddr::V4_UNSPECIFIED,
                AddressFamily::Ipv6 => NetAddr::UNSPECIFIED,
            },
            port: NetPort::new(*p),
            proto: proto.number(),
            scope: scope::NODE_PORT,
        },
        Frontend::Address(sa) => ServiceKey {
            addr: net_addr(sa.ip()),
            port: NetPort::new(sa.port()),
            proto: proto.number(),
            scope: scope::EXACT,
        },
    }
}

/// Families of services, as their frontend keys record them (NodePort keys are per family).
impl Dataplane {
    /// The key under which service `name` holds frontend `f`: for a NodePort, the key of
    /// whichever family it was written with.
    fn owned_key(&self, name: &str, f: &Frontend, proto: Protocol) -> ServiceKey {
        let v6 = frontend_key(f, proto, AddressFamily::Ipv6);
        if self.frontend_owner.get(&v6).is_some_and(|o| o == name) {
            v6
        } else {
            frontend_key(f, proto, AddressFamily::Ipv4)
        }
    }

    /// The family of the existing service `name`, from its frontends and backends, or, for
    /// one with NodePorts only and no backends, from its NodePort keys.
    fn current_family(&self, name: &str) -> Option<AddressFamily> {
        let svc = self.services.get(name)?;
        AddressFamily::of_service(&svc.frontends, svc.backends.keys()).or_else(|| {
            let key = self.owned_key(name, svc.frontends.first()?, svc.protocol);
            Some(if key.addr == NetAddr::UNSPECIFIED {
                AddressFamily::Ipv6
            } else {
                AddressFamily::Ipv4
            })
        })
    }

    /// The family `spec` is written with: its own (see [`ServiceSpec`]), else the family the
    /// service already has, else IPv4.
    fn family_of(&self, spec: &ServiceSpec) -> AddressFamily {
        spec.family()
            .or_else(|| self.current_family(&spec.name))
            .unwrap_or(AddressFamily::Ipv4)
    }
}

fn backend_value(
    service_id: u32,
    addr: SocketAddr,
    eligible: bool,
    remote: bool,
    generation: u32,
) -> Backend {
    Backend {
        addr: net_addr(addr.ip()),
        port: NetPort::new(addr.port()),
        flags: backend_flags::PRESENT
            | if eligible { backend_flags::ELIGIBLE } else { 0 }
            | if remote { backend_flags::REMOTE } else { 0 },
        _pad: 0,
        service_id,
        generation,
        _pad2: 0,
    }
}

fn full_or(
    e: aya::maps::MapError,
    what: &'static str,
    capacity: u32,
    setting: &'static str,
    map: &'static str,
    op: &'static str,
) -> Error {
    if maps::is_full(&e) {
        Error::CapacityExceeded {
            what,
            capacity,
            setting,
        }
    } else {
        Error::map(map, op, e)
    }
}

impl Dataplane {
    /// Loads the programs and creates the maps with the configured capacities.
    /// Nothing is attached yet: see [`Dataplane::attach`].
    pub fn load(cfg: DataplaneConfig) -> Result<Self, Error> {
        let caps = cfg.capacities;
        if cfg.nat.port_min == 0 || cfg.nat.port_min > cfg.nat.port_max {
            return Err(Error::InvalidSpec {
                service: "<config>".into(),
                reason: format!(
                    "`nat.port_min` ({}) must be 1..=`nat.port_max` ({})",
                    cfg.nat.port_min, cfg.nat.port_max
                ),
            });
        }
        for (setting, v) in [
            ("capacities.services", caps.services),
            ("capacities.frontends", caps.frontends),
            ("capacities.backends", caps.backends),
            ("capacities.slots", caps.slots),
            ("capacities.conntrack", caps.conntrack),
            ("capacities.conntrack_syn", caps.conntrack_syn),
            ("capacities.conntrack_other", caps.conntrack_other),
            ("capacities.node_addresses", caps.node_addresses),
            ("capacities.redirect_ports", caps.redirect_ports),
            ("capacities.source_ranges", caps.source_ranges),
            ("capacities.fragments", caps.fragments),
            ("capacities.affinity", caps.affinity),
        ] {
            if v == 0 || v >= u32::MAX / 2 {
                return Err(Error::InvalidSpec {
                    service: "<config>".into(),
                    reason: format!("`{setting}` must be between 1 and {}", u32::MAX / 2 - 1),
                });
            }
        }
        let mut loader = aya::EbpfLoader::new();
        for (name, n) in maps::max_entries(&caps) {
            loader.map_max_entries(name, n);
        }
        let adopt = match &cfg.pin {
            None => false,
            Some(pin) => {
                pins::check_layout(pin)?;
                // The expected definitions: the same object and capacities, nothing pinned.
                let fresh = loader
                    .load(crate::object::OBJECT)
                    .map_err(|e| Error::Load { source: e.into() })?;
                let adopt = pins::verify(pin, &fresh)?;
                drop(fresh);
                pins::ensure_dir(&pin.layout_dir().join("links"))?;
                for &name in names::ALL {
                    loader.map_pin_path(name, pin.map_path(name));
                }
                adopt
            }
        };
        let mut ebpf = loader
            .load(crate::object::OBJECT)
            .map_err(|e| Error::Load { source: e.into() })?;
        crate::attach::load_programs(&mut ebpf)?;
        let mut maps = Maps::take(&mut ebpf)?;
        let mut cfg = cfg;
        if cfg.hash_seed.is_none() {
            // Adopted state keeps the seed its tables were built with until the agent sets one.
            let pinned = adopt.then(|| maps.config.get(&0, 0).ok()).flatten();
            cfg.hash_seed = Some(pinned.map_or(0, |c| c.hash_seed));
        }
        maps.config
            .set(
                0,
                ct_gc::with_timeouts(
                    GlobalConfig {
                        hash_seed: cfg.hash_seed.unwrap_or_default(),
                        refusals_per_sec: cfg.refusals_per_sec_per_cpu,
                        nat_port_min: cfg.nat.port_min,
                        nat_port_max: cfg.nat.port_max,
                        ..GlobalConfig::default()
                    },
                    &cfg.conntrack,
                ),
                0,
            )
            .map_err(|e| Error::map(names::CONFIG, "write", e))?;
        let ct_view = Arc::new(Mutex::new(ct_gc::Snapshot::default()));
        let collector = Arc::new(Mutex::new(ct_gc::Collector::new(
            maps.gc_tables()
                .map_err(|e| Error::map(names::CONNTRACK, "open for GC", e))?,
            maps.gc_backends()
                .map_err(|e| Error::map(names::BACKENDS, "open for GC", e))?,
            cfg.conntrack,
            ct_view.clone(),
        )));
        let gc_thread = ct_gc::GcThread::spawn(
            collector.clone(),
            Duration::from_millis(cfg.conntrack.gc_interval_millis.max(1)),
            Duration::from_secs(u64::from(cfg.conntrack.gc_pass_interval_seconds)),
        )
        .map_err(|e| Error::map(names::CONNTRACK, "start the GC thread", e))?;
        let mut dp = Dataplane {
            ebpf,
            maps,
            ct_view,
            ct_collector: collector,
            _ct_gc: gc_thread,
            cfg,
            services: BTreeMap::new(),
            frontend_owner: HashMap::new(),
            service_ids: IdAllocator::new(caps.services),
            backend_ids: IdAllocator::new(caps.backends),
            slot_ranges: SlotRanges::new(caps.slots),
            stale_services: BTreeSet::new(),
            stale_backends: BTreeSet::new(),
            clean_stats: (!adopt).then_some((0, 0)),
            source_range_entries: 0,
            attachments: Attachments::default(),
        };
        if adopt {
            dp.restore()?;
        }
        Ok(dp)
    }

    /// Rebuilds the bookkeeping from adopted maps: services (frontends, table range, name),
    /// their backends and ids. Ids that conntrack still names but no live service or backend
    /// owns are held back until [`Dataplane::purge_stale`]. Nothing is removed here: pruning
    /// what the sources no longer list is the caller's decision, after its first full sync.
    fn restore(&mut self) -> Result<(), Error> {
        let caps = self.cfg.capacities;
        // Every frontend's value: the frontends of one service normally name one table, but
        // an agent stopped between two frontend writes leaves some on the old table.
        let mut by_id: BTreeMap<u32, Vec<(ServiceKey, ServiceValue)>> = BTreeMap::new();
        for item in self.maps.services.iter() {
            let (k, v) = item.map_err(|e| Error::map(names::SERVICES, "iterate", e))?;
            by_id.entry(v.id).or_default().push((k, v));
        }
        let mut backends: BTreeMap<u32, Vec<(u32, Backend)>> = BTreeMap::new();
        for id in 1..=caps.backends {
            let b = self.maps.backends.get(id);
            if b.flags & backend_flags::PRESENT != 0 {
                backends.entry(b.service_id).or_default().push((id, b));
            }
        }
        for (sid, entries) in by_id {
            let keys: Vec<ServiceKey> = entries.iter().map(|(k, _)| *k).collect();
            // The table most frontends name is the one in force; every other range a frontend
            // names stays reserved (never handed out while a frontend reads it).
            let mut ranges: BTreeMap<(u32, u32), usize> = BTreeMap::new();
            for (_, v) in &entries {
                *ranges.entry((v.slot_offset, v.slot_count)).or_default() += 1;
            }
            let (&in_force, _) = ranges
                .iter()
                .max_by_key(|&(r, n)| (*n, std::cmp::Reverse(*r)))
                .expect("one entry at least");
            let v = entries
                .iter()
                .map(|(_, v)| *v)
                .find(|v| (v.slot_offset, v.slot_count) == in_force)
                .expect("present");
            let raw = self.maps.service_names.get(sid);
            let len = (raw.len as usize).min(raw.bytes.len());
            let mut name = String::from_utf8_lossy(&raw.bytes[..len]).into_owned();
            if name.is_empty() || self.services.contains_key(&name) {
                name = format!("restored-service-{sid}");
            }
            let protocol = if keys[0].proto == lb_common::IPPROTO_UDP {
                Protocol::Udp
            } else {
                Protocol::Tcp
            };
            // The tables are read from the mapped `SLOTS` from now on: they must lie inside.
            for &(off, count) in ranges.keys() {
                let end = u64::from(off) + u64::from(count);
                if end > self.maps.slots.len() {
                    return Err(Error::map(
                        names::SERVICES,
                        "restore",
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!(
                                "service {sid} names slots {off}..{end}, beyond the {} of `SLOTS`",
                                self.maps.slots.len()
                            ),
                        ),
                    ));
                }
            }
            let mut svc_backends = BTreeMap::new();
            for (bid, b) in backends.remove(&sid).unwrap_or_default() {
                let eligible = b.flags & backend_flags::ELIGIBLE != 0;
                svc_backends.insert(
                    SocketAddr::new(ip_of(b.addr), b.port.get()),
                    BackendState {
                        id: bid,
                        state: if eligible {
                            EndpointState::Ready
                        } else {
                            EndpointState::NotServing
                        },
                        eligible,
                        remote: b.flags & backend_flags::REMOTE != 0,
                    },
                );
                self.backend_ids.reserve(bid);
            }
            let frontends: Vec<Frontend> = keys
                .iter()
                .map(|k| {
                    if k.scope == scope::NODE_PORT {
                        Frontend::NodePort(k.port.get())
                    } else {
                        Frontend::Address(SocketAddr::new(ip_of(k.addr), k.port.get()))
                    }
                })
                .collect();
            for k in &keys {
                self.frontend_owner.insert(*k, name.clone());
            }
            self.service_ids.reserve(sid);
            let mut stray_ranges = Vec::new();
            for &(off, count) in ranges.keys() {
                if !self.slot_ranges.reserve_overlapping(off, count) {
                    // Another service's frontend names (part of) these slots too: a pinned
                    // state this agent never writes. Keep them reserved; never release them.
                    tracing::warn!(
                        service = %name,
                        offset = off,
                        count,
                        "a restored selection table overlaps another service's"
                    );
                } else if (off, count) != in_force {
                    stray_ranges.push((off, count));
                }
            }
            self.services.insert(
                name,
                ServiceState {
                    id: sid,
                    protocol,
                    frontends,
                    backends: svc_backends,
                    slot_offset: v.slot_offset,
                    slot_count: v.slot_count,
                    table_current: false,
                    affinity: (v.flags & service_flags::CLIENT_IP_AFFINITY != 0)
                        .then(|| Duration::from_secs(v.affinity_timeout_s as u64)),
                    source_ranges: None,
                    stray_ranges,
                },
            );
        }
        self.restore_source_ranges()?;
        // Backends of services that no longer have a frontend (a removal cut short).
        for (_, orphans) in backends {
            for (bid, _) in orphans {
                self.maps.backends.delete(bid);
                self.backend_ids.reserve(bid);
                self.stale_backends.insert(bid);
            }
        }
        tracing::info!(
            services = self.services.len(),
            stale_backends = self.stale_backends.len(),
            "adopted the pinned data path"
        );
        Ok(())
    }

    /// Services restored from pinned maps or written since, by name (a restarted agent
    /// compares these with its sources once they are fully synced, then removes the rest).
    pub fn service_names(&self) -> Vec<String> {
        self.services.keys().cloned().collect()
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
        let mut global = self
            .maps
            .config
            .get(&0, 0)
            .map_err(|e| Error::map(names::CONFIG, "read", e))?;
        global.hash_seed = seed;
        self.maps
            .config
            .set(0, global, 0)
            .map_err(|e| Error::map(names::CONFIG, "write", e))?;
        self.cfg.hash_seed = Some(seed);
        for svc in self.services.values_mut() {
            svc.table_current = false;
        }
        Ok(())
    }

    fn validate(&self, spec: &ServiceSpec) -> Result<(), Error> {
        let invalid = |reason: String| Error::InvalidSpec {
            service: spec.name.clone(),
            reason,
        };
        if spec.name.is_empty() {
            return Err(invalid("the name is empty".into()));
        }
        // Stored whole or not at all: a restarted agent matches pinned services by name.
        if spec.name.len() > lb_common::SERVICE_NAME_MAX {
            return Err(invalid(format!(
                "the name is {} bytes; the data path stores names of at most {} bytes",
                spec.name.len(),
                lb_common::SERVICE_NAME_MAX
            )));
        }
        if spec.frontends.is_empty() {
            return Err(invalid("no frontend (NodePort or address)".into()));
        }
        // One family per service: the first address frontend's, else the first backend's
        // (ServiceSpec), and it cannot change.
        let family = self.family_of(spec);
        // What made it that family (for the error messages).
        let by = || match spec.frontends.iter().find_map(|f| match f {
            Frontend::Address(a) => Some(a),
            Frontend::NodePort(_) => None,
        }) {
            Some(a) => format!("its frontend {a}"),
            None => match spec.backends.first() {
                Some(b) => format!("its backend {}", b.addr),
                None => "its current family".into(),
            },
        };
        if let (Some(current), Some(wanted)) = (self.current_family(&spec.name), spec.family())
            && current != wanted
        {
            return Err(invalid(format!(
                "the address family cannot change ({current} -> {wanted}); remove the \
                 service and add it again"
            )));
        }
        let family_mismatch = |ip: IpAddr| AddressFamily::of(ip) != family;
        let is_v4_mapped = |ip: IpAddr| match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some(),
            IpAddr::V4(_) => false,
        };
        let mut seen = BTreeSet::new();
        for f in &spec.frontends {
            match f {
                Frontend::NodePort(0) => return Err(invalid("NodePort 0 is not a port".into())),
                Frontend::Address(sa) if sa.port() == 0 => {
                    return Err(invalid(format!("frontend {sa}: port 0 is not a port")));
                }
                Frontend::Address(sa) if sa.ip().is_unspecified() => {
                    return Err(invalid(format!(
                        "frontend {sa}: the unspecified address cannot be a frontend; use a NodePort"
                    )));
                }
                Frontend::Address(sa) if family_mismatch(sa.ip()) => {
                    return Err(invalid(format!(
                        "frontend {sa} is {}, but the service is {family} (by {}); one \
                         service has one address family: add one service per family",
                        AddressFamily::of(sa.ip()),
                        by()
                    )));
                }
                Frontend::Address(sa) if is_v4_mapped(sa.ip()) => {
                    return Err(invalid(format!(
                        "frontend {sa}: an IPv4-mapped IPv6 address; use the IPv4 address"
                    )));
                }
                _ => {}
            }
            if !seen.insert(*f) {
                return Err(invalid(format!("frontend {f} is listed twice")));
            }
            let key = frontend_key(f, spec.protocol, family);
            if let Some(owner) = self.frontend_owner.get(&key)
                && owner != &spec.name
            {
                return Err(Error::FrontendConflict {
                    service: spec.name.clone(),
                    frontend: format!("{f}/{}", spec.protocol),
                    owner: owner.clone(),
                });
            }
        }
        let mut addrs = BTreeSet::new();
        for b in &spec.backends {
            if family_mismatch(b.addr.ip()) {
                return Err(invalid(format!(
                    "backend {} is {}, but the service is {family} (by {}); one service has \
                     one address family: add one service per family",
                    b.addr,
                    AddressFamily::of(b.addr.ip()),
                    by()
                )));
            }
            if is_v4_mapped(b.addr.ip()) {
                return Err(invalid(format!(
                    "backend {}: an IPv4-mapped IPv6 address; use the IPv4 address",
                    b.addr
                )));
            }
            if b.addr.port() == 0 || b.addr.ip().is_unspecified() {
                return Err(invalid(format!(
                    "backend {}: needs an address and a non-zero port",
                    b.addr
                )));
            }
            if !addrs.insert(b.addr) {
                return Err(invalid(format!("backend {} is listed twice", b.addr)));
            }
        }
        if spec.dsr && family == AddressFamily::Ipv6 {
            return Err(invalid(
                "direct server return is IPv4 only; an IPv6 service reaches endpoints on \
                 other nodes by source NAT (set dsr to false)"
                    .into(),
            ));
        }
        if let Some(r) = &spec.source_ranges {
            for net in &r.allow {
                if family_mismatch(net.addr()) {
                    return Err(invalid(format!(
                        "source range {net} is {}, but the service is {family}",
                        AddressFamily::of(net.addr())
                    )));
                }
            }
            for a in &r.frontends {
                if !spec.frontends.contains(&Frontend::Address(*a)) {
                    return Err(invalid(format!(
                        "source ranges apply to {a}, which is not one of the service's frontends"
                    )));
                }
            }
        }
        if let Some(t) = spec.affinity
            && (t.is_zero() || t.as_secs() > 86_400)
        {
            return Err(invalid(format!(
                "session affinity timeout {t:?} must be 1 s..=86400 s"
            )));
        }
        if let Some(s) = self.services.get(&spec.name)
            && s.protocol != spec.protocol
        {
            return Err(invalid(format!(
                "the protocol cannot change ({} -> {}); remove the service and add it again",
                s.protocol, spec.protocol
            )));
        }
        Ok(())
    }

    /// Creates or updates a service, in make-before-break order (see the module docs).
    /// On error nothing the caller can observe has changed, except for a kernel write that
    /// failed midway, which is reported and leaves the previous state in force.
    pub fn upsert_service(&mut self, spec: &ServiceSpec) -> Result<u32, Error> {
        self.validate(spec)?;
        let caps = self.cfg.capacities;
        // Ids held back for purging are recycled first if this update needs them.
        let needs_service = !self.services.contains_key(&spec.name);
        let wanted = spec.backends.len() as u32;
        if (needs_service && self.service_ids.available() == 0 && !self.stale_services.is_empty())
            || (self.backend_ids.available() < wanted && !self.stale_backends.is_empty())
        {
            self.purge_stale()?;
        }
        let existing = self.services.get(&spec.name);

        // Capacity checks before the first write.
        if existing.is_none() && self.service_ids.available() == 0 {
            return Err(Error::CapacityExceeded {
                what: "the service table",
                capacity: caps.services,
                setting: "capacities.services",
            });
        }
        let new_backends: Vec<&BackendSpec> = spec
            .backends
            .iter()
            .filter(|b| existing.is_none_or(|s| !s.backends.contains_key(&b.addr)))
            .collect();
        if new_backends.len() as u64 > self.backend_ids.available() as u64 {
            return Err(Error::CapacityExceeded {
                what: "the backend table",
                capacity: caps.backends,
                setting: "capacities.backends",
            });
        }
        let old_frontends = existing.map_or(0, |s| s.frontends.len());
        let added_frontends = spec
            .frontends
            .iter()
            .filter(|f| existing.is_none_or(|s| !s.frontends.contains(f)))
            .count();
        if (self.frontend_owner.len() + added_frontends) as u64 > caps.frontends as u64 {
            return Err(Error::CapacityExceeded {
                what: "the frontend table",
                capacity: caps.frontends,
                setting: "capacities.frontends",
            });
        }
        let _ = old_frontends;
        self.check_source_range_capacity(spec)?;
        let eligible = lb_datapath::eligible(&spec.backends);
        let current_size = existing.map_or(0, |s| s.slot_count);
        let size = maglev::table_size(&self.cfg.maglev, eligible.len());
        let in_place = size == current_size;
        // A table of another size goes to a fresh range, allocated before any write.
        let new_offset = if in_place {
            existing.map_or(0, |s| s.slot_offset)
        } else {
            self.slot_ranges
                .allocate(size)
                .ok_or(Error::CapacityExceeded {
                    what: "the selection-table slots",
                    capacity: caps.slots,
                    setting: "capacities.slots",
                })?
        };

        // A new service gets its id (stats zeroed for a clean start).
        let id = match existing {
            Some(s) => s.id,
            None => {
                let id = self.service_ids.allocate().expect("checked above");
                let mut stored = lb_common::ServiceName::default();
                let bytes = spec.name.as_bytes();
                // validate() refused longer names.
                stored.bytes[..bytes.len()].copy_from_slice(bytes);
                stored.len = bytes.len() as u32;
                self.maps.service_names.set(id, &stored);
                if let Err(e) = self.zero_stats(true, id) {
                    self.service_ids.release(id);
                    if !in_place {
                        self.slot_ranges.release(new_offset, size);
                    }
                    return Err(e);
                }
                self.services.insert(
                    spec.name.clone(),
                    ServiceState {
                        id,
                        protocol: spec.protocol,
                        frontends: Vec::new(),
                        backends: BTreeMap::new(),
                        slot_offset: 0,
                        slot_count: 0,
                        table_current: false,
                        affinity: None,
                        source_ranges: None,
                        stray_ranges: Vec::new(),
                    },
                );
                id
            }
        };
        let r = self.apply(
            spec,
            id,
            &new_backends,
            &eligible,
            size,
            in_place,
            new_offset,
        );
        if r.is_err() {
            if !in_place && self.services[&spec.name].slot_offset != new_offset {
                // The fresh range never went into force.
                self.slot_ranges.release(new_offset, size);
            }
            // The eligible flags may have moved ahead of the table in force: rebuild next time.
            if let Some(svc) = self.services.get_mut(&spec.name) {
                svc.table_current = false;
            }
        }
        r.map(|()| id)
    }

    /// The writes of [`Dataplane::upsert_service`], after every check passed.
    #[allow(clippy::too_many_arguments)] // one call site; the values are the checked plan
    fn apply(
        &mut self,
        spec: &ServiceSpec,
        id: u32,
        new_backends: &[&BackendSpec],
        eligible: &[SocketAddr],
        size: u32,
        in_place: bool,
        new_offset: u32,
    ) -> Result<(), Error> {
        // 1. New backends (present, not yet eligible: affinity must not pick them before
        //    they are in the table).
        for b in new_backends {
            let bid = self.backend_ids.allocate().expect("checked by the caller");
            if let Err(e) = self.zero_stats(false, bid) {
                self.backend_ids.release(bid);
                return Err(e);
            }
            // The id's next generation: flows of its previous backend are never taken for
            // flows of this one (generation 0 is never used).
            let generation = self
                .maps
                .backends
                .get(bid)
                .generation
                .wrapping_add(1)
                .max(1);
            self.maps
                .backends
                .set(bid, &backend_value(id, b.addr, false, b.remote, generation));
            let svc = self.services.get_mut(&spec.name).expect("present");
            svc.backends.insert(
                b.addr,
                BackendState {
                    id: bid,
                    state: b.state,
                    eligible: false,
                    remote: b.remote,
                },
            );
        }
        // Backends leaving the eligible set stop being affinity targets first.
        let eligible_set: HashSet<&SocketAddr> = eligible.iter().collect();
        let same_table = {
            let svc = &self.services[&spec.name];
            in_place
                && svc.table_current
                && svc.backends.values().filter(|b| b.eligible).count() == eligible.len()
                && eligible
                    .iter()
                    .all(|a| svc.backends.get(a).is_some_and(|b| b.eligible))
        };
        {
            let svc = self.services.get_mut(&spec.name).expect("present");
            for (addr, b) in svc.backends.iter_mut() {
                if b.eligible && !eligible_set.contains(addr) {
                    let generation = self.maps.backends.get(b.id).generation;
                    self.maps
                        .backends
                        .set(b.id, &backend_value(id, *addr, false, b.remote, generation));
                    b.eligible = false;
                }
            }
            for b in &spec.backends {
                if let Some(st) = svc.backends.get_mut(&b.addr) {
                    st.state = b.state;
                    if st.remote != b.remote {
                        // The endpoint moved to (or from) another node: new flows follow;
                        // tracked ones keep the translation they were given.
                        let generation = self.maps.backends.get(st.id).generation;
                        self.maps.backends.set(
                            st.id,
                            &backend_value(id, b.addr, st.eligible, b.remote, generation),
                        );
                        st.remote = b.remote;
                    }
                }
            }
        }

        // 2. The selection table: changed slots in place, or a complete fresh range. The
        //    same eligible backends at the same size give the table in force: nothing to do.
        let svc = &self.services[&spec.name];
        let (old_offset, old_count) = (svc.slot_offset, svc.slot_count);
        if !same_table {
            let keys: Vec<Vec<u8>> = eligible
                .iter()
                .map(|a| a.to_string().into_bytes())
                .collect();
            let ids: Vec<u32> = eligible.iter().map(|a| svc.backends[a].id).collect();
            let owners = maglev::build(self.hash_seed(), &keys, size);
            for (slot, &owner) in owners.iter().enumerate() {
                let (at, bid) = (new_offset + slot as u32, ids[owner as usize]);
                // In place, each store replaces one valid backend by another; a fresh range
                // is not in force yet (step 3 puts it there).
                if !in_place || self.maps.slots.get(at) != bid {
                    self.maps.slots.set(at, bid);
                }
            }
        }
        // Backends joining the eligible set, now that the table names them.
        {
            let svc = self.services.get_mut(&spec.name).expect("present");
            for (addr, b) in svc.backends.iter_mut() {
                if !b.eligible && eligible_set.contains(addr) {
                    let generation = self.maps.backends.get(b.id).generation;
                    self.maps
                        .backends
                        .set(b.id, &backend_value(id, *addr, true, b.remote, generation));
                    b.eligible = true;
                }
            }
        }

        // 3. Frontends point at the table in force; new source ranges are in place before a
        //    frontend names them, old ones go after.
        self.add_source_ranges(spec, id)?;
        let value = ServiceValue {
            id,
            slot_count: size,
            slot_offset: new_offset,
            flags: if spec.affinity.is_some() {
                service_flags::CLIENT_IP_AFFINITY
            } else {
                0
            } | if spec.when_empty == WhenEmpty::Drop {
                service_flags::DROP_WHEN_EMPTY
            } else {
                0
            } | if spec.dsr { service_flags::DSR } else { 0 },
            affinity_timeout_s: spec.affinity.map_or(0, |t| t.as_secs() as u32),
        };
        let family = self.family_of(spec);
        let filtered = |a: &SocketAddr| {
            spec.source_ranges
                .as_ref()
                .is_some_and(|r| r.frontends.contains(a))
        };
        for (written, f) in spec.frontends.iter().enumerate() {
            let key = frontend_key(f, spec.protocol, family);
            let value = match f {
                Frontend::NodePort(_) => ServiceValue {
                    flags: value.flags | service_flags::NODE_PORT,
                    ..value
                },
                Frontend::Address(a) if filtered(a) => ServiceValue {
                    flags: value.flags | service_flags::SOURCE_RANGES,
                    ..value
                },
                Frontend::Address(_) => value,
            };
            if let Err(e) = self.maps.services.insert(key, value, 0) {
                if written > 0 && !in_place {
                    // Frontends point at both tables now: keep both reserved until a later
                    // write moves every frontend to one.
                    let svc = self.services.get_mut(&spec.name).expect("present");
                    svc.stray_ranges.push((old_offset, old_count));
                    svc.slot_offset = new_offset;
                    svc.slot_count = size;
                }
                return Err(full_or(
                    e,
                    "the frontend table",
                    self.cfg.capacities.frontends,
                    "capacities.frontends",
                    names::SERVICES,
                    "write",
                ));
            }
            self.frontend_owner.insert(key, spec.name.clone());
            let svc = self.services.get_mut(&spec.name).expect("present");
            if !svc.frontends.contains(f) {
                svc.frontends.push(*f);
            }
        }
        {
            let svc = self.services.get_mut(&spec.name).expect("present");
            svc.slot_offset = new_offset;
            svc.slot_count = size;
            svc.table_current = true;
            svc.affinity = spec.affinity;
        }
        self.retire_source_ranges(spec, id)?;
        let gone: Vec<Frontend> = self.services[&spec.name]
            .frontends
            .iter()
            .filter(|f| !spec.frontends.contains(f))
            .copied()
            .collect();
        for f in gone {
            self.remove_frontend(&spec.name, f, spec.protocol)?;
        }
        // The old range is out of force: clear and release it, and any range a frontend
        // pointed at before (restored, or left by a write cut short): every frontend now
        // points at the table in force.
        if !in_place {
            self.clear_slots(old_offset, old_count);
        }
        let strays = std::mem::take(
            &mut self
                .services
                .get_mut(&spec.name)
                .expect("present")
                .stray_ranges,
        );
        for (off, count) in strays {
            if (off, count) != (new_offset, size) {
                self.clear_slots(off, count);
            }
        }

        // 4. Backends no longer listed.
        let listed: HashSet<&SocketAddr> = spec.backends.iter().map(|b| &b.addr).collect();
        let removed: Vec<(SocketAddr, u32)> = self.services[&spec.name]
            .backends
            .iter()
            .filter(|(a, _)| !listed.contains(a))
            .map(|(a, b)| (*a, b.id))
            .collect();
        for (addr, bid) in removed {
            self.maps.backends.delete(bid);
            self.services
                .get_mut(&spec.name)
                .expect("present")
                .backends
                .remove(&addr);
            self.stale_backends.insert(bid);
        }
        Ok(())
    }

    fn remove_frontend(&mut self, name: &str, f: Frontend, proto: Protocol) -> Result<(), Error> {
        let key = self.owned_key(name, &f, proto);
        match self.maps.services.remove(&key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(Error::map(names::SERVICES, "delete", e)),
        }
        self.frontend_owner.remove(&key);
        if let Some(svc) = self.services.get_mut(name) {
            svc.frontends.retain(|x| *x != f);
        }
        Ok(())
    }

    /// Zeroes a range of slots no frontend points at any more and releases it. Best effort
    /// on the zeroing: an unreferenced slot is never read.
    fn clear_slots(&mut self, offset: u32, count: u32) {
        self.maps.slots.clear(offset, count);
        self.slot_ranges.release(offset, count);
    }

    /// Resets the per-CPU counters of a service or backend id that is being handed out.
    fn zero_stats(&mut self, service: bool, id: u32) -> Result<(), Error> {
        // An id above every id handed out since we created the maps was never counted.
        if let Some((services, backends)) = &mut self.clean_stats {
            let high = if service { services } else { backends };
            if id > *high {
                *high = id;
                return Ok(());
            }
        }
        let zeros = maps::zero_stats()?;
        if service {
            self.maps
                .source_denied
                .set(id, maps::zero_counts()?, 0)
                .map_err(|e| Error::map(names::SOURCE_DENIED, "reset", e))?;
            self.maps
                .service_stats
                .set(id, zeros, 0)
                .map_err(|e| Error::map(names::SERVICE_STATS, "reset", e))
        } else {
            self.maps
                .backend_stats
                .set(id, zeros, 0)
                .map_err(|e| Error::map(names::BACKEND_STATS, "reset", e))
        }
    }

    /// Removes a service: frontends first (no new packet matches), then its table, then its
    /// backends; its conntrack and affinity entries are purged before the ids are released.
    pub fn remove_service(&mut self, name: &str) -> Result<(), Error> {
        let (proto, frontends, id, offset, slots) = {
            let svc = self
                .services
                .get(name)
                .ok_or_else(|| Error::UnknownService(name.into()))?;
            (
                svc.protocol,
                svc.frontends.clone(),
                svc.id,
                svc.slot_offset,
                svc.slot_count,
            )
        };
        for f in frontends {
            self.remove_frontend(name, f, proto)?;
        }
        self.remove_source_ranges(name, id)?;
        self.clear_slots(offset, slots);
        let strays =
            std::mem::take(&mut self.services.get_mut(name).expect("present").stray_ranges);
        for (off, count) in strays {
            if (off, count) != (offset, slots) {
                self.clear_slots(off, count);
            }
        }
        self.services.get_mut(name).expect("present").slot_count = 0;
        let backend_ids: BTreeSet<u32> = self.services[name]
            .backends
            .values()
            .map(|b| b.id)
            .collect();
        for &bid in &backend_ids {
            self.maps.backends.delete(bid);
        }
        self.services.remove(name);
        self.stale_backends.extend(backend_ids);
        self.stale_services.insert(id);
        Ok(())
    }

    /// Ids of removed services and backends whose conntrack and affinity entries have not
    /// been purged yet (their ids are not reused until then).
    pub fn stale_ids(&self) -> (usize, usize) {
        (self.stale_services.len(), self.stale_backends.len())
    }

    /// Releases the ids of removed services and backends. Nothing walks the flow tables:
    /// every conntrack and affinity entry names its backend's generation, which a reused id
    /// never has again, so the data path ignores entries of removed backends at once and
    /// the conntrack GC deletes them within a pass. Returns 0 (no entry is deleted here).
    pub fn purge_stale(&mut self) -> Result<u64, Error> {
        for bid in std::mem::take(&mut self.stale_backends) {
            self.backend_ids.release(bid);
        }
        for sid in std::mem::take(&mut self.stale_services) {
            self.service_ids.release(sid);
        }
        Ok(0)
    }

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
        let mut out = Vec::new();
        let mut ids = BTreeMap::new();
        for (name, svc) in &self.services {
            for (a, b) in &svc.backends {
                if a.ip() == addr {
                    ids.insert(b.id, out.len());
                    out.push(EndpointStatus {
                        service: name.clone(),
                        backend: *a,
                        state: b.state,
                        selectable: self
                            .maps
                            .slots
                            .range(svc.slot_offset, svc.slot_count)
                            .any(|x| x == b.id),
                        flows: count_flows.then_some(0),
                    });
                }
            }
        }
        if ids.is_empty() || !count_flows {
            return Ok(out);
        }
        // Live flows as of the GC's last complete pass: no walk here.
        let view = self.ct_view.lock().expect("poisoned");
        for (&bid, &i) in &ids {
            out[i].flows = view.complete.then(|| {
                let generation = self.maps.backends.get(bid).generation;
                view.by_backend
                    .get(&(bid, generation))
                    .copied()
                    .unwrap_or(0)
            });
        }
        Ok(out)
    }

    /// The services as written, in name order.
    pub fn dump(&self) -> Vec<ServiceDump> {
        self.services
            .iter()
            .map(|(name, s)| {
                let mut frontends = s.frontends.clone();
                frontends.sort();
                // Slots a backend owns, in one pass over the table (ids sorted for lookup).
                let mut ids: Vec<u32> = s.backends.values().map(|b| b.id).collect();
                ids.sort_unstable();
                let mut owned = vec![0u32; ids.len()];
                for bid in self.maps.slots.range(s.slot_offset, s.slot_count) {
                    if let Ok(i) = ids.binary_search(&bid) {
                        owned[i] += 1;
                    }
                }
                ServiceDump {
                    name: name.clone(),
                    id: s.id,
                    protocol: s.protocol,
                    frontends,
                    table_size: s.slot_count,
                    backends: s
                        .backends
                        .iter()
                        .map(|(addr, b)| BackendDump {
                            addr: *addr,
                            id: b.id,
                            state: b.state,
                            slots: ids.binary_search(&b.id).map_or(0, |i| owned[i]),
                        })
                        .collect(),
                }
            })
            .collect()
    }

    /// Entries in each map, counted in the kernel's maps themselves.
    pub fn occupancy(&self) -> Result<MapOccupancy, Error> {
        fn count<I, T>(it: I, map: &'static str) -> Result<u64, Error>
        where
            I: Iterator<Item = Result<T, aya::maps::MapError>>,
        {
            let mut n = 0;
            for r in it {
                match r {
                    Ok(_) => n += 1,
                    Err(aya::maps::MapError::KeyNotFound) => {}
                    Err(e) => return Err(Error::map(map, "iterate", e)),
                }
            }
            Ok(n)
        }
        let backends = (0..self.maps.backends.entries())
            .filter(|&id| self.maps.backends.get(id).flags & backend_flags::PRESENT != 0)
            .count() as u64;
        // An array has every index: count the slots that name a backend.
        let slots = (0..self.maps.slots.len())
            .filter(|&s| self.maps.slots.get(s as u32) != 0)
            .count() as u64;
        Ok(MapOccupancy {
            frontends: count(self.maps.services.keys(), names::SERVICES)?,
            backends,
            slots,
            conntrack: count(self.maps.conntrack.keys(), names::CONNTRACK)?
                + count(self.maps.ct_syn.keys(), names::CT_SYN)?
                + count(self.maps.ct_other.keys(), names::CT_OTHER)?,
            node_addresses: count(self.maps.node_addrs.keys(), names::NODE_ADDRS)?,
        })
    }

    /// Map usage for metrics, cheap enough to read on every scrape: frontends, backends and
    /// slots from the bookkeeping (which mirrors every successful write), conntrack and node
    /// addresses counted in the kernel. [`Dataplane::occupancy`] counts everything in the
    /// kernel (the selection array entry by entry).
    pub fn usage(&self) -> Result<MapOccupancy, Error> {
        // The GC's last pass: a scrape never walks conntrack.
        let conntrack = self
            .ct_view
            .lock()
            .expect("poisoned")
            .stats
            .entries
            .iter()
            .map(|(_, n)| n)
            .sum();
        Ok(MapOccupancy {
            frontends: self.frontend_owner.len() as u64,
            backends: self
                .services
                .values()
                .map(|s| s.backends.len() as u64)
                .sum(),
            slots: u64::from(self.slot_ranges.capacity()) - self.slot_ranges.available(),
            conntrack,
            node_addresses: self.maps.node_addrs.keys().filter(Result::is_ok).count() as u64,
        })
    }

    /// Packets, bytes and new flows of a service and of each of its backends.
    pub fn service_stats(&self, name: &str) -> Result<ServiceStats, Error> {
        let svc = self
            .services
            .get(name)
            .ok_or_else(|| Error::UnknownService(name.into()))?;
        let sum = |values: aya::maps::PerCpuValues<TrafficStats>| -> Stats {
            values.iter().fold(Stats::default(), |acc, v| Stats {
                packets: acc.packets + v.packets,
                bytes: acc.bytes + v.bytes,
                new_flows: acc.new_flows + v.new_flows,
            })
        };
        let service = sum(self
            .maps
            .service_stats
            .get(&svc.id, 0)
            .map_err(|e| Error::map(names::SERVICE_STATS, "read", e))?);
        let mut backends = Vec::new();
        for (addr, b) in &svc.backends {
            let v = self
                .maps
                .backend_stats
                .get(&b.id, 0)
                .map_err(|e| Error::map(names::BACKEND_STATS, "read", e))?;
            backends.push((*addr, sum(v)));
        }
        let source_denied = self
            .maps
            .source_denied
            .get(&svc.id, 0)
            .map_err(|e| Error::map(names::SOURCE_DENIED, "read", e))?
            .iter()
            .sum();
        Ok(ServiceStats {
            service,
            backends,
            source_denied,
        })
    }

    /// Every reason counter, summed over CPUs, in [`Reason::ALL`] order.
    pub fn reasons(&self) -> Result<Vec<(Reason, u64)>, Error> {
        Reason::ALL
            .iter()
            .map(|&r| {
                let v = self
                    .maps
                    .reasons
                    .get(&(r as u32), 0)
                    .map_err(|e| Error::map(names::REASONS, "read", e))?;
                Ok((r, v.iter().sum()))
            })
            .collect()
    }

    /// One reason counter, summed over CPUs.
    pub fn reason(&self, reason: Reason) -> Result<u64, Error> {
        let v = self
            .maps
            .reasons
            .get(&(reason as u32), 0)
            .map_err(|e| Error::map(names::REASONS, "read", e))?;
        Ok(v.iter().sum())
    }
}

//! Adopting pinned maps after a restart: the bookkeeping rebuilt from what the maps hold
//! (services, frontends, table ranges, names, backends, source ranges), so the first
//! upsert of each service rewrites only what differs.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use lb_common::{
    Backend, ServiceKey, ServiceValue, backend_flags, map_names as names, scope, service_flags,
};
use lb_datapath::program::book::{BackendState, ServiceState};

use super::Dataplane;
use crate::{
    addr::ip_of,
    error::Error,
    source_ranges,
    spec::{EndpointState, Frontend, Protocol},
};

impl Dataplane {
    /// Rebuilds the bookkeeping from adopted maps: services (frontends, table range, name),
    /// their backends and ids. Ids that conntrack still names but no live service or backend
    /// owns are held back until [`Dataplane::purge_stale`]. Nothing is removed here: pruning
    /// what the sources no longer list is the caller's decision, after its first full sync.
    pub(super) fn restore(&mut self) -> Result<(), Error> {
        let caps = self.cfg.capacities;
        // Every frontend's value: the frontends of one service normally name one table, but
        // an agent stopped between two frontend writes leaves some on the old table.
        let mut by_id: BTreeMap<u32, Vec<(ServiceKey, ServiceValue)>> = BTreeMap::new();
        for item in self.prog.maps.services.iter() {
            let (k, v) = item.map_err(|e| Error::map(names::SERVICES, "iterate", e))?;
            by_id.entry(v.id).or_default().push((k, v));
        }
        let mut backends: BTreeMap<u32, Vec<(u32, Backend)>> = BTreeMap::new();
        for id in 1..=caps.backends {
            let b = self.prog.maps.backends.get(id);
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
            let raw = self.prog.maps.service_names.get(sid);
            let len = (raw.len as usize).min(raw.bytes.len());
            let mut name = String::from_utf8_lossy(&raw.bytes[..len]).into_owned();
            if name.is_empty() || self.prog.book.services.contains_key(&name) {
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
                if end > self.prog.maps.slots.len() {
                    return Err(Error::map(
                        names::SERVICES,
                        "restore",
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!(
                                "service {sid} names slots {off}..{end}, beyond the {} of `SLOTS`",
                                self.prog.maps.slots.len()
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
                self.prog.book.backend_ids.reserve(bid);
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
                self.prog.book.frontend_owner.insert(*k, name.clone());
            }
            self.prog.book.service_ids.reserve(sid);
            let mut stray_ranges = Vec::new();
            for &(off, count) in ranges.keys() {
                if !self.prog.book.slot_ranges.reserve_overlapping(off, count) {
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
            self.prog.book.services.insert(
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
                    source_ranges: Default::default(),
                    stray_ranges,
                },
            );
        }
        self.restore_source_ranges()?;
        // Backends of services that no longer have a frontend (a removal cut short).
        for (_, orphans) in backends {
            for (bid, _) in orphans {
                self.prog.maps.backends.delete(bid);
                self.prog.book.backend_ids.reserve(bid);
                self.prog.book.stale_backends.insert(bid);
            }
        }
        tracing::info!(
            services = self.prog.book.services.len(),
            stale_backends = self.prog.book.stale_backends.len(),
            "adopted the pinned data path"
        );
        Ok(())
    }

    /// Which prefixes each restored service has (the frontends that carry the flag are read
    /// back from `SERVICES` above). Prefixes of ids no service holds are deleted.
    fn restore_source_ranges(&mut self) -> Result<(), Error> {
        let mut keys = Vec::new();
        for k in self.prog.maps.source_ranges.keys() {
            keys.push(k.map_err(|e| Error::map(names::SOURCE_RANGES, "iterate", e))?);
        }
        let by_id: std::collections::HashMap<u32, String> = self
            .prog
            .book
            .services
            .iter()
            .map(|(name, s)| (s.id, name.clone()))
            .collect();
        for k in keys {
            let id = k.data().service_id;
            match (by_id.get(&id), source_ranges::net_of(&k)) {
                (Some(name), Some(net)) => {
                    let svc = self.prog.book.services.get_mut(name).expect("present");
                    if svc.source_ranges.insert(net) {
                        self.prog.book.source_range_entries += 1;
                    }
                }
                _ => {
                    let _ = self.prog.maps.source_ranges.remove(&k);
                }
            }
        }
        Ok(())
    }
}

//! `loadBalancerSourceRanges` in the `SOURCE_RANGES` LPM trie: one entry per (service id,
//! prefix). The XDP program checks it for new flows to the frontends that carry
//! `service_flags::SOURCE_RANGES`. An update adds the new prefixes before any frontend
//! names them and removes the old ones after, so a client allowed by both the old and the
//! new ranges is never refused in between.

use std::{collections::BTreeSet, net::IpAddr};

use aya::maps::lpm_trie::Key;
use ipnet::IpNet;
use lb_common::{SourceRangeKey, map_names as names};

use crate::{
    Dataplane,
    addr::{ip_of, net_addr},
    error::Error,
    spec::{ServiceSpec, SourceRanges},
};

/// The trie key of `net` for service `id`: the id's 32 bits, then the prefix (IPv4 is
/// stored mapped, so `/p` is `/(96 + p)`).
fn key(id: u32, net: &IpNet) -> Key<SourceRangeKey> {
    let net = net.trunc();
    let bits = match net {
        IpNet::V4(n) => 96 + u32::from(n.prefix_len()),
        IpNet::V6(n) => u32::from(n.prefix_len()),
    };
    Key::new(
        32 + bits,
        SourceRangeKey {
            service_id: id,
            addr: net_addr(net.addr()),
        },
    )
}

/// The prefix a trie key holds.
fn net_of(k: &Key<SourceRangeKey>) -> Option<IpNet> {
    let bits = k.prefix_len().checked_sub(32)?;
    match ip_of(k.data().addr) {
        ip @ IpAddr::V4(_) => IpNet::new(ip, u8::try_from(bits.checked_sub(96)?).ok()?).ok(),
        ip @ IpAddr::V6(_) => IpNet::new(ip, u8::try_from(bits).ok()?).ok(),
    }
}

fn prefixes(r: Option<&SourceRanges>) -> BTreeSet<IpNet> {
    r.map(|r| r.allow.iter().map(IpNet::trunc).collect())
        .unwrap_or_default()
}

impl Dataplane {
    /// Entries in `SOURCE_RANGES`, over every service.
    pub fn source_range_entries(&self) -> u32 {
        self.source_range_entries
    }

    /// Before any write: the trie must hold the prefixes this update adds.
    pub(crate) fn check_source_range_capacity(&self, spec: &ServiceSpec) -> Result<(), Error> {
        let have = prefixes(
            self.services
                .get(&spec.name)
                .and_then(|s| s.source_ranges.as_ref()),
        );
        let added = prefixes(spec.source_ranges.as_ref())
            .difference(&have)
            .count() as u64;
        let cap = self.cfg.capacities.source_ranges;
        if u64::from(self.source_range_entries) + added > u64::from(cap) {
            return Err(Error::CapacityExceeded {
                what: "the source-range table",
                capacity: cap,
                setting: "capacities.source_ranges",
            });
        }
        Ok(())
    }

    /// Step 3a of an upsert: writes the prefixes the service does not have yet.
    pub(crate) fn add_source_ranges(&mut self, spec: &ServiceSpec, id: u32) -> Result<(), Error> {
        let svc = self.services.get(&spec.name).expect("present");
        let have = prefixes(svc.source_ranges.as_ref());
        for net in prefixes(spec.source_ranges.as_ref()).difference(&have) {
            self.maps
                .source_ranges
                .insert(&key(id, net), 1, 0)
                .map_err(|e| Error::map(names::SOURCE_RANGES, "write", e))?;
            self.source_range_entries += 1;
        }
        // What is written now: the union until the old ones are retired.
        let svc = self.services.get_mut(&spec.name).expect("present");
        let union: BTreeSet<IpNet> = have
            .union(&prefixes(spec.source_ranges.as_ref()))
            .copied()
            .collect();
        svc.source_ranges = (!union.is_empty()).then(|| SourceRanges {
            allow: union.into_iter().collect(),
            frontends: svc
                .source_ranges
                .take()
                .map(|r| r.frontends)
                .unwrap_or_default(),
        });
        Ok(())
    }

    /// After the frontends were written: deletes the prefixes the service no longer has.
    pub(crate) fn retire_source_ranges(
        &mut self,
        spec: &ServiceSpec,
        id: u32,
    ) -> Result<(), Error> {
        let want = prefixes(spec.source_ranges.as_ref());
        let svc = self.services.get(&spec.name).expect("present");
        let gone: Vec<IpNet> = prefixes(svc.source_ranges.as_ref())
            .difference(&want)
            .copied()
            .collect();
        for net in gone {
            self.delete_range(id, &net)?;
        }
        let svc = self.services.get_mut(&spec.name).expect("present");
        svc.source_ranges = spec.source_ranges.clone().map(|mut r| {
            r.allow = want.iter().copied().collect();
            r
        });
        if svc
            .source_ranges
            .as_ref()
            .is_some_and(|r| r.allow.is_empty())
        {
            svc.source_ranges = None;
        }
        Ok(())
    }

    /// A removed service's prefixes (after its frontends are gone).
    pub(crate) fn remove_source_ranges(&mut self, name: &str, id: u32) -> Result<(), Error> {
        let Some(svc) = self.services.get_mut(name) else {
            return Ok(());
        };
        for net in prefixes(svc.source_ranges.take().as_ref()) {
            self.delete_range(id, &net)?;
        }
        Ok(())
    }

    fn delete_range(&mut self, id: u32, net: &IpNet) -> Result<(), Error> {
        match self.maps.source_ranges.remove(&key(id, net)) {
            Ok(()) => self.source_range_entries = self.source_range_entries.saturating_sub(1),
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(Error::map(names::SOURCE_RANGES, "delete", e)),
        }
        Ok(())
    }

    /// After a restart: which prefixes each restored service has (the frontends that carry
    /// the flag are read back from `SERVICES` by the restore). Prefixes of ids no service
    /// holds are deleted.
    pub(crate) fn restore_source_ranges(&mut self) -> Result<(), Error> {
        let mut keys = Vec::new();
        for k in self.maps.source_ranges.keys() {
            keys.push(k.map_err(|e| Error::map(names::SOURCE_RANGES, "iterate", e))?);
        }
        let by_id: std::collections::HashMap<u32, String> = self
            .services
            .iter()
            .map(|(name, s)| (s.id, name.clone()))
            .collect();
        for k in keys {
            let id = k.data().service_id;
            match (by_id.get(&id), net_of(&k)) {
                (Some(name), Some(net)) => {
                    let svc = self.services.get_mut(name).expect("present");
                    svc.source_ranges
                        .get_or_insert_with(SourceRanges::default)
                        .allow
                        .push(net);
                    self.source_range_entries += 1;
                }
                _ => {
                    let _ = self.maps.source_ranges.remove(&k);
                }
            }
        }
        Ok(())
    }
}

//! Loading: the configuration checked, the object loaded with the configured capacities
//! (pinned maps verified and adopted when pinning is on), `CONFIG` written, the conntrack GC
//! started. Nothing is attached here (see [`crate::attach`]).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use lb_common::{GlobalConfig, map_names as names};
use lb_datapath::program::{Programmer, Settings};

use super::Dataplane;
use crate::{
    attach::Attachments, config::DataplaneConfig, ct_gc, error::Error, maps, maps::KernelMaps, pins,
};

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
        let mut maps = KernelMaps::take(&mut ebpf, caps)?;
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
        let settings = Settings {
            capacities: caps,
            maglev: cfg.maglev,
            hash_seed: cfg.hash_seed.unwrap_or_default(),
        };
        let mut dp = Dataplane {
            ebpf,
            prog: Programmer::new(maps, settings, !adopt),
            ct_view,
            ct_collector: collector,
            _ct_gc: gc_thread,
            cfg,
            attachments: Attachments::default(),
        };
        if adopt {
            dp.restore()?;
        }
        Ok(dp)
    }
}

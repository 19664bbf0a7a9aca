//! Pinning and adoption: maps and links live under
//! `<root>/<instance>/v<LAYOUT_VERSION>/` (maps by name, links under `links/`), so the data
//! path keeps forwarding when the process exits or dies, and a new process adopts it.
//!
//! aya reuses an existing pin without comparing it with the object's definition (TOOLCHAIN.md),
//! so before adopting, every pinned map is compared with a freshly created map of the same
//! definition and capacities: type, key size, value size, max entries and flags must match.

use std::path::Path;

use aya::maps::MapInfo;
use lb_common::{LAYOUT_VERSION, map_names as names};

pub use lb_datapath::PinConfig;

use crate::error::Error;

/// The setting that sizes each map (named when a pinned map's size differs).
fn setting_of(map: &str) -> &'static str {
    match map {
        names::SERVICES => "capacities.frontends",
        names::BACKENDS | names::BACKEND_STATS => "capacities.backends",
        names::SLOTS => "capacities.slots",
        names::CONNTRACK => "capacities.conntrack",
        names::CT_SYN => "capacities.conntrack_syn",
        names::CT_OTHER => "capacities.conntrack_other",
        names::NODE_ADDRS => "capacities.node_addresses",
        names::SERVICE_STATS | names::SERVICE_NAMES => "capacities.services",
        names::TX_PORTS => "capacities.redirect_ports",
        names::AFFINITY => "capacities.affinity",
        _ => "the map layout (LAYOUT_VERSION)",
    }
}

/// Refuses an instance folder that holds another layout version.
pub(crate) fn check_layout(pin: &PinConfig) -> Result<(), Error> {
    let dir = pin.instance_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(v) = name.strip_prefix('v')
            && v != LAYOUT_VERSION.to_string()
            && v.chars().all(|c| c.is_ascii_digit())
        {
            return Err(Error::Pin {
                path: dir.clone(),
                reason: format!(
                    "it holds map layout v{v}, this build uses v{LAYOUT_VERSION}; migration is not \
                     supported yet: remove the old data path with `{}` (this drops tracked flows)",
                    pin.uninstall_hint()
                ),
            });
        }
    }
    Ok(())
}

fn describe(i: &MapInfo) -> (String, u32, u32, u32, u32) {
    (
        i.map_type()
            .map(|t| format!("{t:?}"))
            .unwrap_or_else(|_| "unknown".into()),
        i.key_size(),
        i.value_size(),
        i.max_entries(),
        i.map_flags(),
    )
}

/// Compares every pinned map with the map `fresh` created for the same name. Returns whether
/// any pin existed (state to adopt).
pub(crate) fn verify(pin: &PinConfig, fresh: &aya::Ebpf) -> Result<bool, Error> {
    let mut any = false;
    for &name in names::ALL {
        let path = pin.map_path(name);
        if !path.exists() {
            continue;
        }
        any = true;
        let pinned = MapInfo::from_pin(&path).map_err(|e| Error::Pin {
            path: path.clone(),
            reason: format!("cannot open the pinned map: {e}"),
        })?;
        // aya exposes a loaded map's kernel info through a pin: pin the fresh map briefly.
        let probe = pin.instance_dir().join(format!("expected-{name}")); // bpffs refuses names with dots
        let _ = std::fs::remove_file(&probe);
        fresh
            .map(name)
            .ok_or(Error::MissingMap(name))?
            .pin(&probe)
            .map_err(|e| Error::map(name, "pin for comparison", e))?;
        let want = MapInfo::from_pin(&probe);
        let _ = std::fs::remove_file(&probe);
        let want = want.map_err(|e| Error::map(name, "read info", e))?;
        let (p, w) = (describe(&pinned), describe(&want));
        if p.3 != w.3 && (&p.0, p.1, p.2, p.4) == (&w.0, w.1, w.2, w.4) {
            // `SLOTS` holds SLOTS_PER_ENTRY slots an entry; the setting counts slots.
            let per = if name == names::SLOTS {
                u64::from(lb_common::SLOTS_PER_ENTRY)
            } else {
                1
            };
            let (have, asked) = (u64::from(p.3) * per, u64::from(w.3) * per);
            return Err(Error::Pin {
                path,
                reason: format!(
                    "pinned with {have} entries but `{}` asks for {asked}: set it back to {have} \
                     or remove the data path with `{}`",
                    setting_of(name),
                    pin.uninstall_hint()
                ),
            });
        }
        if p != w {
            return Err(Error::Pin {
                path,
                reason: format!(
                    "pinned as (type, key, value, entries, flags) {p:?} but layout v{LAYOUT_VERSION} \
                     defines {w:?}: the layout changed without a version bump; remove it with `{}`",
                    pin.uninstall_hint()
                ),
            });
        }
    }
    Ok(any)
}

/// Removes an instance's links (which detaches the programs) and maps, every layout version.
pub fn uninstall(pin: &PinConfig) -> Result<bool, Error> {
    let dir = pin.instance_dir();
    if !dir.exists() {
        return Ok(false);
    }
    std::fs::remove_dir_all(&dir).map_err(|e| Error::Pin {
        path: dir.clone(),
        reason: format!("cannot remove: {e}"),
    })?;
    // Leave the root if other instances remain; remove it when empty.
    let _ = std::fs::remove_dir(&pin.root);
    Ok(true)
}

pub(crate) fn ensure_dir(path: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(path).map_err(|e| Error::Pin {
        path: path.to_path_buf(),
        reason: format!("cannot create (is bpffs mounted at /sys/fs/bpf?): {e}"),
    })
}

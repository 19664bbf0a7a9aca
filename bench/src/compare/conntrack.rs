//! Room in the kernel's connection tracking table for a run: a new flow per packet makes a
//! conntrack entry per packet in the iptables and nftables ways, and a full table drops
//! packets (which would measure the table's size, not the rules). [`Room::raise`] raises the
//! global `nf_conntrack_max` and the hash table size to hold them (one bucket per entry, as
//! the kernel sizes them) and puts both back when dropped.

use std::path::Path;

use lab::{Result, bail, error::Context as _};

const MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";
const BUCKETS: &str = "/sys/module/nf_conntrack/parameters/hashsize";

/// The settings as they were; restored on drop.
#[derive(Debug)]
pub struct Room {
    max: u64,
    buckets: u64,
}

fn read(path: &str) -> Result<u64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    text.trim()
        .parse()
        .with_context(|| format!("{path} holds {text:?}, not a number"))
}

fn write(path: &str, value: u64) -> Result<()> {
    std::fs::write(path, value.to_string()).with_context(|| format!("writing {value} to {path}"))
}

impl Room {
    /// Makes room for at least `entries` tracked connections (per namespace).
    pub fn raise(entries: u64) -> Result<Self> {
        if !Path::new(MAX).exists() {
            bail!(
                "{MAX} is missing: this kernel has no connection tracking (nf_conntrack), \
                 which kube-proxy's rules need"
            );
        }
        let room = Room {
            max: read(MAX)?,
            buckets: read(BUCKETS)?,
        };
        if room.buckets < entries {
            write(BUCKETS, entries)?;
        }
        if room.max < entries {
            write(MAX, entries)?;
        }
        Ok(room)
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        for (path, value) in [(MAX, self.max), (BUCKETS, self.buckets)] {
            if let Err(e) = write(path, value) {
                eprintln!("cannot restore {path}: {e:#}");
            }
        }
    }
}

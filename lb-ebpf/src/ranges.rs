//! `loadBalancerSourceRanges`: which clients may open new flows to a filtered frontend.
//! One LPM trie for every service, keyed by (service id, client address): the prefix
//! length covers the id's 32 bits plus the range's prefix, so a lookup only ever matches
//! the ranges of the service it names.

use aya_ebpf::maps::lpm_trie::Key;
use lb_common::{NetAddr, SourceRangeKey};

use crate::maps::{SOURCE_DENIED, SOURCE_RANGES};

/// Whether `client` is inside one of the service's ranges. Not inlined (its own stack
/// frame: the key is 24 bytes).
#[inline(never)]
pub fn allowed(service_id: u32, client: &NetAddr) -> bool {
    let key = Key::new(
        32 + 128,
        SourceRangeKey {
            service_id,
            addr: *client,
        },
    );
    SOURCE_RANGES.get(&key).is_some()
}

/// Counts a new flow the service's ranges refused.
#[inline(always)]
pub fn denied(service_id: u32) {
    if let Some(p) = SOURCE_DENIED.get_ptr_mut(service_id) {
        // SAFETY: per-CPU element, only this CPU writes it while the program runs.
        unsafe { *p += 1 };
    }
}

//! Per-CPU counters: plain increments, no atomics needed.

use lb_common::{Reason, TrafficStats};

use crate::maps::{BACKEND_STATS, REASONS, SERVICE_STATS};

#[inline(always)]
pub fn count(reason: Reason) {
    if let Some(p) = REASONS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU element, only this CPU writes it while the program runs.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn add(stats: Option<*mut TrafficStats>, bytes: u64, new_flow: bool) {
    if let Some(p) = stats {
        // SAFETY: per-CPU element, see `count`.
        unsafe {
            (*p).packets += 1;
            (*p).bytes += bytes;
            if new_flow {
                (*p).new_flows += 1;
            }
        }
    }
}

#[inline(always)]
pub fn traffic(service_id: u32, backend_id: u32, bytes: u64, new_flow: bool) {
    add(SERVICE_STATS.get_ptr_mut(service_id), bytes, new_flow);
    add(BACKEND_STATS.get_ptr_mut(backend_id), bytes, new_flow);
}

//! The benchmarks' traffic programs (`cargo xtask bench compare`), never attached by the
//! agent:
//!
//! - `sluice_gen` is run by `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` on the
//!   client's veth: every frame becomes the template of `GEN_TEMPLATE` with the source of the
//!   next flow, and leaves by `XDP_TX` (which live mode turns into a transmit on that
//!   device), so the node receives it on its uplink like any packet from the wire.
//! - `sluice_count` sits on a pod's veth: it counts and drops UDP packets to the port in
//!   `COUNT_PORT`, and passes everything else (so it also gives the veth the NAPI that
//!   redirected frames need, as `sluice_pass` does).

use aya_ebpf::{
    bindings::xdp_action,
    macros::map,
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{GEN_HEAD_LEN, GEN_PORTS_PER_ADDR, GenTemplate, csum};

/// The generator's frame (index 0).
#[map]
pub static GEN_TEMPLATE: Array<GenTemplate> = Array::with_max_entries(1, 0);

/// Frames generated on each CPU: the sequence number of the next frame.
#[map]
pub static GEN_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The UDP destination port (network order) whose packets `sluice_count` counts and drops.
#[map]
pub static COUNT_PORT: Array<u16> = Array::with_max_entries(1, 0);

/// Packets counted by `sluice_count`, per CPU.
#[map]
pub static COUNTED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

const IP_OFF: usize = 14;
const IP_SADDR_LAST: usize = IP_OFF + 15;
const IP_CHECK: usize = IP_OFF + 10;
const UDP_OFF: usize = IP_OFF + 20;

/// Writes the next flow's frame head and transmits it.
#[inline(always)]
pub fn generate(ctx: &XdpContext) -> u32 {
    let (Some(tpl), Some(seq)) = (GEN_TEMPLATE.get(0), GEN_SEQ.get_ptr_mut(0)) else {
        return xdp_action::XDP_ABORTED;
    };
    let (data, data_end) = (ctx.data(), ctx.data_end());
    if data + GEN_HEAD_LEN > data_end {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: a per-CPU array element, used by this CPU only while the program runs.
    let n = unsafe { *seq };
    unsafe { *seq = n.wrapping_add(1) };
    let flow = (n % u64::from(tpl.flows.max(1))) as u32;
    let mut head = tpl.head;
    let port = 1024 + (flow % GEN_PORTS_PER_ADDR) as u16;
    head[UDP_OFF..UDP_OFF + 2].copy_from_slice(&port.to_be_bytes());
    head[IP_SADDR_LAST] = head[IP_SADDR_LAST].wrapping_add((flow / GEN_PORTS_PER_ADDR) as u8);
    head[IP_CHECK] = 0;
    head[IP_CHECK + 1] = 0;
    let check = csum::compute(&head[IP_OFF..UDP_OFF]);
    head[IP_CHECK..IP_CHECK + 2].copy_from_slice(&check.to_ne_bytes());
    // SAFETY: the frame holds GEN_HEAD_LEN bytes (checked above); unaligned write.
    unsafe { core::ptr::write_unaligned(data as *mut [u8; GEN_HEAD_LEN], head) };
    xdp_action::XDP_TX
}

/// Counts and drops the generator's packets; passes the rest.
#[inline(always)]
pub fn count(ctx: &XdpContext) -> u32 {
    let Some((_, _, proto, _, dport)) = crate::baseline::parse(ctx.data(), ctx.data_end()) else {
        return xdp_action::XDP_PASS;
    };
    let Some(&port) = COUNT_PORT.get(0) else {
        return xdp_action::XDP_PASS;
    };
    if proto != 17 || dport != port {
        return xdp_action::XDP_PASS;
    }
    if let Some(counted) = COUNTED.get_ptr_mut(0) {
        // SAFETY: a per-CPU array element, used by this CPU only while the program runs.
        unsafe { *counted += 1 };
    }
    xdp_action::XDP_DROP
}

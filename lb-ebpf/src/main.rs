//! sluice's eBPF programs. Each program is a thin entry point that calls a `try_` function
//! and turns its result into a deliberate, counted verdict.
//!
//! - [`xdp_lb`]: NodePort / LoadBalancer DNAT with conntrack and forwarding, at XDP
//!   (`sluice_xdp`) or as a TC ingress classifier ([`tc_lb`], see [`frame`]);
//! - [`revnat`]: reverse NAT of replies at TC egress;
//! - `sluice_pass`: a plain pass program, attached to veth peers that must have NAPI to
//!   receive XDP_TX / redirected frames (see TOOLCHAIN.md);
//! - [`traffic`]: the benchmarks' packet generator and sink (`sluice_gen`, `sluice_count`).
#![no_std]
#![no_main]

mod baseline;
mod conntrack;
mod dsr;
mod forward;
mod frag;
mod frame;
mod headers;
mod icmp;
mod maps;
mod ranges;
mod refuse;
mod revnat;
mod select;
mod snat;
mod stats;
mod tc_lb;
mod traffic;
mod xdp_lb;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

#[xdp]
pub fn sluice_xdp(ctx: XdpContext) -> u32 {
    xdp_lb::run(&ctx)
}

/// The load balancer at TC ingress, for uplinks where XDP falls short (veth).
#[classifier]
pub fn sluice_tc_lb(ctx: TcContext) -> i32 {
    tc_lb::run(&ctx)
}

#[classifier]
pub fn sluice_revnat(ctx: TcContext) -> i32 {
    revnat::run(&ctx)
}

#[xdp]
pub fn sluice_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The benchmarks' packet generator (see `traffic`).
#[xdp]
pub fn sluice_gen(ctx: XdpContext) -> u32 {
    traffic::generate(&ctx)
}

/// The benchmarks' packet sink (see `traffic`).
#[xdp]
pub fn sluice_count(ctx: XdpContext) -> u32 {
    traffic::count(&ctx)
}

/// The benchmarks' parse-and-pass baseline (see `baseline`).
#[xdp]
pub fn sluice_baseline(ctx: XdpContext) -> u32 {
    baseline::run(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

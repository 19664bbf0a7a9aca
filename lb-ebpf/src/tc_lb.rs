//! The load balancer as a TC ingress classifier (`--mode tc`), for uplinks where XDP falls
//! short: on a veth (kind, Docker) local senders hand over CHECKSUM_PARTIAL packets and
//! XDP_TX frames vanish unless the peer runs an XDP program. The pipeline is the XDP one
//! ([`crate::xdp_lb`]); the hook's differences are in [`crate::frame`].

use aya_ebpf::programs::TcContext;

use crate::{frame, xdp_lb};

/// Makes the headers the parser reads linear (an skb may carry them in fragments), then
/// runs the pipeline; returns a TC action.
#[inline(always)]
pub fn run(ctx: &TcContext) -> i32 {
    let want = frame::TC_HEADERS.min(ctx.len());
    if ((ctx.data_end() - ctx.data()) as u32) < want {
        // On failure the parser finds the headers missing and passes the packet.
        let _ = ctx.pull_data(want);
    }
    xdp_lb::run(ctx) as i32
}

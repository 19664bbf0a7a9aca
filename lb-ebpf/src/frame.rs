//! The two hooks the load balancer runs at: XDP (`--mode xdp`) and TC ingress
//! (`--mode tc`). The choice and the rewrites are written once, against [`Frame`]; what
//! differs between the hooks lives here:
//!
//! - verdicts (`XDP_PASS` / `TC_ACT_OK`, ...) and how a frame leaves: XDP_TX and a devmap
//!   redirect at XDP; `bpf_redirect` to the interface's own egress, or to any device, at TC;
//! - resizing (`bpf_xdp_adjust_*` / `bpf_skb_change_tail`, `bpf_skb_adjust_room`);
//! - the L4 checksum. At XDP the field is updated in place (RFC 1624). At TC the packet is
//!   an skb whose checksum state the program cannot read: a local sender over veth hands
//!   over CHECKSUM_PARTIAL packets whose field holds only the pseudo-header sum (rewriting it
//!   as a full checksum corrupts it), and a NIC may hand over CHECKSUM_COMPLETE, whose
//!   packet sum must follow pseudo-header changes. `bpf_l4_csum_replace` does what each state
//!   needs, so TC goes through it, with the change split into its pseudo-header part
//!   (addresses) and its data part (ports), see [`L4Delta`].
//!
//! Every method that can move or resize packet data invalidates the packet pointers
//! derived before it (the verifier enforces it at TC): callers derive them again.

use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR,
        TC_ACT_OK, TC_ACT_SHOT, xdp_action,
    },
    cty::c_void,
    helpers::{
        bpf_csum_update, bpf_redirect, bpf_skb_adjust_room, bpf_skb_change_tail,
        bpf_xdp_adjust_head, bpf_xdp_adjust_tail,
    },
    programs::{TcContext, XdpContext},
};
use lb_common::{Reason, csum};

use crate::{
    headers::{ETH_HLEN, EthHdr, IPV6_HLEN, ptr_at},
    maps::TX_PORTS,
};

/// `bpf_l4_csum_replace`: the address that changed is an IPv6 one (its change in the packet
/// and in the pseudo-header cancel out in a CHECKSUM_COMPLETE sum). Linux 6.16+, uapi.
const BPF_F_IPV6: u64 = 1 << 7;
/// Bytes a TC program makes sure are in the linear part of the skb: Ethernet, the longest
/// IPv4 header or IPv6 with a few extension headers, the longest TCP header.
pub const TC_HEADERS: u32 = (ETH_HLEN + IPV6_HLEN + 128 + 60) as u32;

/// A change of an L4 checksum, as one's-complement sums of what changed: `pseudo` for
/// fields of the pseudo-header (addresses), `data` for fields the checksum covers directly
/// (ports). Built with the `csum` word arithmetic, applied by [`Frame::l4_csum`].
#[derive(Clone, Copy, Default)]
pub struct L4Delta {
    pub pseudo: u32,
    pub data: u32,
}

impl L4Delta {
    /// A pseudo-header address changed (raw words).
    #[inline(always)]
    pub fn addr(&mut self, old: &[u32], new: &[u32]) {
        let mut i = 0;
        while i < old.len() && i < new.len() {
            self.pseudo = csum::add32(self.pseudo, old[i], new[i]);
            i += 1;
        }
    }

    /// A covered 16-bit field (a port) changed (raw).
    #[inline(always)]
    pub fn port(&mut self, old: u16, new: u16) {
        self.data = csum::add16(self.data, old, new);
    }
}

/// What the load balancer needs of the hook it runs at.
pub trait Frame {
    /// Leave the packet to the stack.
    const PASS: u32;
    const DROP: u32;
    /// Whether this is the TC hook (counters and a few limits differ).
    const TC: bool;

    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// Length of the whole frame (at TC it can exceed the linear part `data_end - data`).
    fn frame_len(&self) -> usize;
    /// The context pointer for helpers that take either kind (`bpf_fib_lookup`).
    fn raw(&self) -> *mut c_void;
    fn ingress_ifindex(&self) -> u32;
    /// The segment size of a GSO packet (TC), 0 for a single packet.
    fn gso_size(&self) -> u32;

    /// Applies `d` to the L4 checksum at `check_off` (`udp`: a checksum of 0 means none and
    /// stays 0; a computed 0 is sent as 0xffff; `v6`: the addresses are IPv6 ones).
    fn l4_csum(&self, check_off: usize, d: L4Delta, udp: bool, v6: bool) -> Result<(), Reason>;
    /// A covered header field changed without a checksum of its own that compensates (the
    /// IPv6 hop limit): keeps a CHECKSUM_COMPLETE packet sum right (nothing at XDP).
    fn data_changed(&self, diff: u32);

    /// Whether a translated frame may be sent straight to `ifindex`.
    fn can_redirect(&self, ifindex: u32) -> bool;
    /// Sends the frame to `ifindex` (after `can_redirect`); `None`: leave it to the stack.
    fn redirect(&self, ifindex: u32) -> Option<u32>;
    /// Sends the frame (a reply built in place) back out of the interface it came in on.
    fn tx(&self) -> u32;

    /// Cuts the frame to `len` bytes (of `frame_len`).
    fn truncate(&self, len: usize) -> Result<(), ()>;
    /// Inserts `n` bytes after the Ethernet header, which stays first (unchanged).
    fn insert_after_eth(&self, n: usize, encap_ipv4: bool) -> Result<(), ()>;
    /// Removes the `n` bytes after the Ethernet header, which stays first (unchanged).
    fn remove_after_eth(&self, n: usize) -> Result<(), ()>;
}

impl Frame for XdpContext {
    const PASS: u32 = xdp_action::XDP_PASS;
    const DROP: u32 = xdp_action::XDP_DROP;
    const TC: bool = false;

    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
    #[inline(always)]
    fn frame_len(&self) -> usize {
        XdpContext::data_end(self) - XdpContext::data(self)
    }
    #[inline(always)]
    fn raw(&self) -> *mut c_void {
        self.ctx.cast()
    }
    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        // SAFETY: the program's context.
        unsafe { (*self.ctx).ingress_ifindex }
    }
    #[inline(always)]
    fn gso_size(&self) -> u32 {
        0
    }

    #[inline(always)]
    fn l4_csum(&self, check_off: usize, d: L4Delta, udp: bool, _v6: bool) -> Result<(), Reason> {
        let (data, data_end) = (Frame::data(self), Frame::data_end(self));
        let check: *mut u16 = ptr_at(data, data_end, check_off).ok_or(Reason::PassMalformed)?;
        // SAFETY: bounds checked just above.
        unsafe {
            let old = *check;
            if udp && old == 0 {
                return Ok(());
            }
            let c = csum::apply(csum::apply(old, d.pseudo), d.data);
            *check = if udp { csum::udp_finish(c) } else { c };
        }
        Ok(())
    }
    #[inline(always)]
    fn data_changed(&self, _diff: u32) {}

    #[inline(always)]
    fn can_redirect(&self, ifindex: u32) -> bool {
        TX_PORTS.get_ifindex(ifindex).is_some()
    }
    #[inline(always)]
    fn redirect(&self, ifindex: u32) -> Option<u32> {
        TX_PORTS.redirect(ifindex, 0).ok()
    }
    #[inline(always)]
    fn tx(&self) -> u32 {
        xdp_action::XDP_TX
    }

    #[inline(always)]
    fn truncate(&self, len: usize) -> Result<(), ()> {
        let shrink = len as i32 - self.frame_len() as i32;
        // SAFETY: shrinking within the frame.
        if shrink < 0 && unsafe { bpf_xdp_adjust_tail(self.ctx, shrink) } != 0 {
            return Err(());
        }
        Ok(())
    }
    #[inline(always)]
    fn insert_after_eth(&self, n: usize, _encap_ipv4: bool) -> Result<(), ()> {
        // SAFETY: growing the head by a constant; the Ethernet header is copied to the new
        // front (the old one overlaps what the caller writes next).
        if unsafe { bpf_xdp_adjust_head(self.ctx, -(n as i32)) } != 0 {
            return Err(());
        }
        move_eth(Frame::data(self), Frame::data_end(self), n, 0)
    }
    #[inline(always)]
    fn remove_after_eth(&self, n: usize) -> Result<(), ()> {
        let (data, data_end) = (Frame::data(self), Frame::data_end(self));
        move_eth(data, data_end, 0, n)?;
        // SAFETY: shrinking the head by a constant, within the frame.
        if unsafe { bpf_xdp_adjust_head(self.ctx, n as i32) } != 0 {
            return Err(());
        }
        Ok(())
    }
}

/// Copies the Ethernet header at offset `from` to offset `to`.
#[inline(always)]
fn move_eth(data: usize, data_end: usize, from: usize, to: usize) -> Result<(), ()> {
    let src: *mut EthHdr = ptr_at(data, data_end, from).ok_or(())?;
    let dst: *mut EthHdr = ptr_at(data, data_end, to).ok_or(())?;
    // SAFETY: both bounds checked; field by field, in an order that survives the overlap
    // (the headers are at least 14 bytes apart or the same).
    unsafe {
        let (d, s, p) = ((*src).dst, (*src).src, (*src).proto);
        (*dst).dst = d;
        (*dst).src = s;
        (*dst).proto = p;
    }
    Ok(())
}

impl Frame for TcContext {
    const PASS: u32 = TC_ACT_OK as u32;
    const DROP: u32 = TC_ACT_SHOT as u32;
    const TC: bool = true;

    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
    #[inline(always)]
    fn frame_len(&self) -> usize {
        self.len() as usize
    }
    #[inline(always)]
    fn raw(&self) -> *mut c_void {
        self.skb.skb.cast()
    }
    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        // SAFETY: the program's context.
        unsafe { (*self.skb.skb).ingress_ifindex }
    }
    #[inline(always)]
    fn gso_size(&self) -> u32 {
        // SAFETY: the program's context.
        unsafe { (*self.skb.skb).gso_size }
    }

    #[inline(always)]
    fn l4_csum(&self, check_off: usize, d: L4Delta, udp: bool, v6: bool) -> Result<(), Reason> {
        let mangled0 = if udp { BPF_F_MARK_MANGLED_0 as u64 } else { 0 };
        let family = if v6 { BPF_F_IPV6 } else { 0 };
        // Size 0: `to` is a checksum difference (`from` must be 0).
        self.l4_csum_replace(
            check_off,
            0,
            u64::from(d.pseudo),
            BPF_F_PSEUDO_HDR as u64 | mangled0 | family,
        )
        .map_err(|_| Reason::TcRewriteFailed)?;
        self.l4_csum_replace(check_off, 0, u64::from(d.data), mangled0)
            .map_err(|_| Reason::TcRewriteFailed)
    }
    #[inline(always)]
    fn data_changed(&self, diff: u32) {
        // SAFETY: the program's context; only touches a CHECKSUM_COMPLETE skb's sum.
        unsafe { bpf_csum_update(self.skb.skb, diff) };
    }

    #[inline(always)]
    fn can_redirect(&self, _ifindex: u32) -> bool {
        true
    }
    #[inline(always)]
    fn redirect(&self, ifindex: u32) -> Option<u32> {
        // SAFETY: a plain helper call; TC_ACT_REDIRECT on success.
        let rc = unsafe { bpf_redirect(ifindex, 0) };
        (rc >= 0).then_some(rc as u32)
    }
    #[inline(always)]
    fn tx(&self) -> u32 {
        // Egress of the interface it came in on.
        // SAFETY: a plain helper call.
        unsafe { bpf_redirect(self.ingress_ifindex(), 0) as u32 }
    }

    #[inline(always)]
    fn truncate(&self, len: usize) -> Result<(), ()> {
        if len >= self.frame_len() {
            return Ok(());
        }
        // SAFETY: the program's context.
        if unsafe { bpf_skb_change_tail(self.skb.skb, len as u32, 0) } != 0 {
            return Err(());
        }
        Ok(())
    }
    #[inline(always)]
    fn insert_after_eth(&self, n: usize, encap_ipv4: bool) -> Result<(), ()> {
        let flags = if encap_ipv4 {
            BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 as u64
        } else {
            0
        };
        // SAFETY: the program's context.
        if unsafe { bpf_skb_adjust_room(self.skb.skb, n as i32, BPF_ADJ_ROOM_MAC, flags) } != 0 {
            return Err(());
        }
        Ok(())
    }
    #[inline(always)]
    fn remove_after_eth(&self, n: usize) -> Result<(), ()> {
        // SAFETY: the program's context.
        if unsafe { bpf_skb_adjust_room(self.skb.skb, -(n as i32), BPF_ADJ_ROOM_MAC, 0) } != 0 {
            return Err(());
        }
        Ok(())
    }
}

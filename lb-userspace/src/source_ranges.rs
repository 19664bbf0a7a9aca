//! `loadBalancerSourceRanges` in the `SOURCE_RANGES` LPM trie: one entry per (service id,
//! prefix). The XDP program checks it for new flows to the frontends that carry
//! `service_flags::SOURCE_RANGES`. Which prefixes an update adds and removes, and when (new
//! ones before any frontend names them, old ones after), is the planner's
//! (`lb_datapath::program::plan`); this is how a prefix is keyed in the trie.

use std::net::IpAddr;

use aya::maps::lpm_trie::Key;
use ipnet::IpNet;
use lb_common::SourceRangeKey;

use crate::addr::{ip_of, net_addr};

/// The trie key of `net` for service `id`: the id's 32 bits, then the prefix (IPv4 is
/// stored mapped, so `/p` is `/(96 + p)`).
pub(crate) fn key(id: u32, net: &IpNet) -> Key<SourceRangeKey> {
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
pub(crate) fn net_of(k: &Key<SourceRangeKey>) -> Option<IpNet> {
    let bits = k.prefix_len().checked_sub(32)?;
    match ip_of(k.data().addr) {
        ip @ IpAddr::V4(_) => IpNet::new(ip, u8::try_from(bits.checked_sub(96)?).ok()?).ok(),
        ip @ IpAddr::V6(_) => IpNet::new(ip, u8::try_from(bits).ok()?).ok(),
    }
}

//! The node settings source NAT needs, written when the data path attaches to an interface:
//!
//! - the NAT port range goes into `net.ipv4.ip_local_reserved_ports` (which also covers
//!   IPv6), merged with what is there, so the node never gives one of those ports to a
//!   local socket: a reply to such a port would otherwise be taken for a source-NATed flow;
//! - `net.ipv4.conf.<if>.accept_local = 1` on the attached interface: a translated packet
//!   handed to the stack may carry one of the node's own addresses as its source (a
//!   source-NATed flow towards another node, or a reply restored to a NodePort address),
//!   which the kernel drops as a martian unless this is set.
//!
//! Both are per network namespace, read and written through `/proc/sys` of the calling
//! thread's namespace, and left in place on detach (they are harmless without the data path).

use crate::error::Error;

const RESERVED: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// `(first, last)` port ranges of a `ip_local_reserved_ports` value (`"1,61000-65535"`).
fn parse_ranges(s: &str) -> Vec<(u16, u16)> {
    s.split(',')
        .filter_map(|part| {
            let part = part.trim();
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
        })
        .collect()
}

/// Whether every port of `first..=last` is in `ranges`.
fn covered(ranges: &[(u16, u16)], first: u16, last: u16) -> bool {
    (first..=last).all(|p| ranges.iter().any(|&(a, b)| (a..=b).contains(&p)))
}

/// The value that adds `first..=last` to `current` (unchanged ranges kept as written).
fn with_range(current: &str, first: u16, last: u16) -> String {
    let current = current.trim();
    if current.is_empty() {
        format!("{first}-{last}")
    } else {
        format!("{current},{first}-{last}")
    }
}

/// Reserves `first..=last` for source NAT (see the module docs). Returns whether it wrote.
pub(crate) fn reserve_nat_ports(first: u16, last: u16) -> Result<bool, Error> {
    let fail = |what: &str, e: std::io::Error| Error::Interface {
        ifname: "*".into(),
        reason: format!(
            "cannot {what} {RESERVED} ({e}): the NAT ports {first}-{last} must be reserved so \
             no local socket gets one; run as root, or set dataplane.nat to a range that is"
        ),
    };
    let current = std::fs::read_to_string(RESERVED).map_err(|e| fail("read", e))?;
    if covered(&parse_ranges(&current), first, last) {
        return Ok(false);
    }
    std::fs::write(RESERVED, with_range(&current, first, last)).map_err(|e| fail("write", e))?;
    tracing::info!(
        first,
        last,
        "reserved the NAT ports (net.ipv4.ip_local_reserved_ports)"
    );
    Ok(true)
}

/// Lets the stack take translated packets whose source is a node address (see the module
/// docs).
pub(crate) fn accept_local(ifname: &str) -> Result<(), Error> {
    let path = format!("/proc/sys/net/ipv4/conf/{ifname}/accept_local");
    let fail = |e: std::io::Error| Error::Interface {
        ifname: ifname.into(),
        reason: format!(
            "cannot set net.ipv4.conf.{ifname}.accept_local ({e}): source-NATed packets \
             passed to the stack would be dropped as martians"
        ),
    };
    if std::fs::read_to_string(&path).map_err(fail)?.trim() != "1" {
        std::fs::write(&path, "1").map_err(fail)?;
        tracing::info!(
            ifname,
            "set net.ipv4.conf.{ifname}.accept_local = 1 (source NAT)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ports_are_merged_not_replaced() {
        let r = parse_ranges("1,8080-8090, 61000-65535\n");
        assert_eq!(r, vec![(1, 1), (8080, 8090), (61000, 65535)]);
        assert!(covered(&r, 61000, 65535));
        assert!(covered(&r, 62000, 62010));
        assert!(!covered(&r, 60999, 61000));
        assert_eq!(with_range("", 61000, 65535), "61000-65535");
        assert_eq!(with_range("1,8080\n", 61000, 65535), "1,8080,61000-65535");
        assert!(covered(&parse_ranges(&with_range("1", 7, 9)), 7, 9));
    }
}

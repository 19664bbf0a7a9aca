//! Veth pairs between namespaces and the link settings the lab needs.
//!
//! Every function takes the namespace the interface lives in and runs the tool (`ip`,
//! `ethtool`) inside it, so interface names only need to be unique within a namespace.
//!
//! There is no cleanup guard: a veth pair lives in the namespaces of its two ends and is
//! destroyed with either of them, so dropping the [`Netns`] guards removes it. Nothing is ever
//! created in the root namespace.

use std::net::IpAddr;

use crate::error::{Context as _, Result, ensure};

use crate::netns::Netns;
use crate::packet::MacAddr;

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

fn check_ifname(name: &str) -> Result<()> {
    ensure!(
        !name.is_empty()
            && name.len() <= MAX_IFNAME_LEN
            && !name.contains(['/', ' ', ':'])
            && name != "."
            && name != "..",
        "invalid interface name {name:?} (1 to {MAX_IFNAME_LEN} bytes, no '/', ':' or space)"
    );
    Ok(())
}

/// Creates a veth pair: `a` in `a_ns` and its peer `b` in `b_ns` (`ip link add A type veth
/// peer name B netns Y`, run inside `a_ns`). Both ends start down.
pub fn create_pair(a_ns: &Netns, a: &str, b_ns: &Netns, b: &str) -> Result<()> {
    check_ifname(a)?;
    check_ifname(b)?;
    a_ns.run(
        "ip",
        [
            "link",
            "add",
            a,
            "type",
            "veth",
            "peer",
            "name",
            b,
            "netns",
            b_ns.name(),
        ],
    )
    .with_context(|| {
        format!(
            "cannot create veth pair {a} ({}) <-> {b} ({})",
            a_ns.name(),
            b_ns.name()
        )
    })?;
    Ok(())
}

/// Sets an interface up.
pub fn set_up(ns: &Netns, ifname: &str) -> Result<()> {
    ns.run("ip", ["link", "set", "dev", ifname, "up"])?;
    Ok(())
}

/// Adds an address given as `ADDR/PREFIX`. IPv6 addresses are added with `nodad`, so they
/// are usable at once instead of staying tentative during duplicate address detection.
pub fn add_addr(ns: &Netns, ifname: &str, cidr: &str) -> Result<()> {
    let mut args = vec!["addr", "add", cidr, "dev", ifname];
    if cidr.contains(':') {
        args.push("nodad");
    }
    ns.run("ip", args)
        .with_context(|| format!("cannot add address {cidr} to {ifname}"))?;
    Ok(())
}

/// Adds `addr/prefix`; see [`add_addr`].
pub fn add_ip(ns: &Netns, ifname: &str, addr: IpAddr, prefix: u8) -> Result<()> {
    add_addr(ns, ifname, &format!("{addr}/{prefix}"))
}

/// Turns TX checksum offload on or off (`ethtool -K IF tx on|off`).
///
/// With it on, TCP/UDP sent by local processes over veth carry only the pseudo-header sum
/// (CHECKSUM_PARTIAL), which an XDP program cannot tell from a full checksum; the lab turns it
/// off on every sending end.
pub fn set_tx_checksum(ns: &Netns, ifname: &str, on: bool) -> Result<()> {
    ns.run("ethtool", ["-K", ifname, "tx", on_off(on)])
        .with_context(|| format!("cannot set TX checksum offload of {ifname}"))?;
    Ok(())
}

/// Whether TX checksum offload is on (`ethtool -k IF`, `tx-checksumming:`).
pub fn tx_checksum(ns: &Netns, ifname: &str) -> Result<bool> {
    let out = ns.run("ethtool", ["-k", ifname])?;
    let line = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("tx-checksumming:"))
        .with_context(|| format!("no tx-checksumming line in `ethtool -k {ifname}`"))?;
    Ok(line.trim().starts_with("on"))
}

/// Turns GRO on or off (`ethtool -K IF gro on|off`). On a veth, GRO gives the receiving end
/// NAPI, which makes it accept `XDP_REDIRECT`ed frames (but not `XDP_TX` ones).
pub fn set_gro(ns: &Netns, ifname: &str, on: bool) -> Result<()> {
    ns.run("ethtool", ["-K", ifname, "gro", on_off(on)])
        .with_context(|| format!("cannot set GRO of {ifname}"))?;
    Ok(())
}

fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

/// Reads an interface's ifindex and MAC address (`ip -j link show dev IF`).
pub fn link_info(ns: &Netns, ifname: &str) -> Result<(u32, MacAddr)> {
    let out = ns.run("ip", ["-j", "link", "show", "dev", ifname])?;
    let json: serde_json::Value = serde_json::from_str(&out)
        .with_context(|| format!("cannot parse `ip -j link show dev {ifname}`: {out}"))?;
    let link = json
        .get(0)
        .with_context(|| format!("no link {ifname} in netns {}", ns.name()))?;
    let ifindex = link
        .get("ifindex")
        .and_then(serde_json::Value::as_u64)
        .and_then(|i| u32::try_from(i).ok())
        .with_context(|| format!("no ifindex for {ifname} in: {out}"))?;
    let mac = link
        .get("address")
        .and_then(serde_json::Value::as_str)
        .with_context(|| format!("no MAC address for {ifname} in: {out}"))?
        .parse()?;
    Ok((ifindex, mac))
}

/// An interface's MAC address.
pub fn mac(ns: &Netns, ifname: &str) -> Result<MacAddr> {
    link_info(ns, ifname).map(|(_, mac)| mac)
}

/// An interface's ifindex inside its namespace (`if_nametoindex` on a thread in `ns`).
pub fn ifindex(ns: &Netns, ifname: &str) -> Result<u32> {
    ns.enter(|| nix::net::if_::if_nametoindex(ifname))?
        .with_context(|| format!("no interface {ifname} in netns {}", ns.name()))
}

/// Adds (or replaces) a permanent neighbour entry: `addr` is at `mac` on `ifname`.
///
/// Permanent entries never expire, so `bpf_fib_lookup` finds them (it reports NO_NEIGH for
/// unresolved neighbours) without any traffic first.
pub fn add_neighbour(ns: &Netns, ifname: &str, addr: IpAddr, mac: MacAddr) -> Result<()> {
    ns.run(
        "ip",
        [
            "neigh",
            "replace",
            &addr.to_string(),
            "lladdr",
            &mac.to_string(),
            "dev",
            ifname,
            "nud",
            "permanent",
        ],
    )
    .with_context(|| format!("cannot add neighbour {addr} at {mac} on {ifname}"))?;
    Ok(())
}

/// Adds a route to `dest` (`ADDR/PREFIX` or `default`) via the gateway `via`.
pub fn add_route(ns: &Netns, dest: &str, via: IpAddr) -> Result<()> {
    let family = if via.is_ipv6() { "-6" } else { "-4" };
    ns.run(
        "ip",
        [family, "route", "add", dest, "via", &via.to_string()],
    )
    .with_context(|| format!("cannot add route {dest} via {via}"))?;
    Ok(())
}

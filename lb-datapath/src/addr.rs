//! Addresses between the standard library's `IpAddr` and the maps' `NetAddr` (IPv4 as
//! IPv4-mapped IPv6), for every module that writes or reads address keys.

use std::net::IpAddr;

use lb_common::NetAddr;

/// The address a map key holds.
pub fn ip_of(a: NetAddr) -> IpAddr {
    let o = a.octets();
    if a.is_v4() {
        IpAddr::V4(std::net::Ipv4Addr::new(o[12], o[13], o[14], o[15]))
    } else {
        IpAddr::V6(std::net::Ipv6Addr::from(o))
    }
}

/// The map key of an address.
pub fn net_addr(ip: IpAddr) -> NetAddr {
    match ip {
        IpAddr::V4(v4) => NetAddr::from_v4_octets(v4.octets()),
        IpAddr::V6(v6) => NetAddr::from_v6_octets(v6.octets()),
    }
}

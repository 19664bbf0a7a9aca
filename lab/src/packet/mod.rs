//! Crafting and checking frames for packet tests, without byte literals in the tests.
//!
//! - [`PacketBuilder`]: Ethernet + IPv4 (options, fragmentation fields) or IPv6 (extension
//!   headers) + TCP, UDP, ICMP or ICMPv6 + payload. Lengths and checksums are computed by
//!   default; overrides produce wrong checksums or lengths on purpose, and
//!   [`PacketBuilder::truncate`] cuts the frame.
//! - [`ParsedPacket`]: the fields of a frame read back (MACs, addresses, TTL, protocol, ports,
//!   TCP flags, header offsets, IPv4 options, IPv6 extension headers).
//! - [`verify_checksums`]: recomputes every checksum of a frame from scratch (IPv4 header,
//!   TCP, UDP, ICMP, ICMPv6) and says which one is wrong, expected against found.
//!
//! The checksum arithmetic ([`checksum`]) is this module's own RFC 1071 implementation,
//! independent of the data path's incremental-update helpers it is meant to check.

mod build;
pub mod checksum;
mod parse;
mod verify;

use std::fmt;
use std::ops::{BitAnd, BitOr, BitOrAssign};
use std::str::FromStr;

use crate::error::{Context as _, bail};

pub use build::PacketBuilder;
pub use checksum::internet_checksum;
pub use parse::{
    EthHeader, IcmpHeader, IpHeader, IpVersion, ParsedExt, ParsedPacket, TcpHeader, Transport,
    UdpHeader,
};
pub use verify::{verify_checksums, verify_ip_checksums};

/// Ethernet header length (no VLAN tag).
pub const ETH_HLEN: usize = 14;
/// IPv4 header length without options.
pub const IPV4_HLEN: usize = 20;
/// IPv6 fixed header length.
pub const IPV6_HLEN: usize = 40;
/// TCP header length without options.
pub const TCP_HLEN: usize = 20;
/// UDP header length.
pub const UDP_HLEN: usize = 8;
/// ICMP and ICMPv6 header length (type, code, checksum and four "rest of header" bytes).
pub const ICMP_HLEN: usize = 8;

/// EtherType values.
pub mod ethertype {
    /// IPv4.
    pub const IPV4: u16 = 0x0800;
    /// ARP.
    pub const ARP: u16 = 0x0806;
    /// IPv6.
    pub const IPV6: u16 = 0x86dd;
}

/// IP protocol / IPv6 next header values.
pub mod proto {
    /// IPv6 hop-by-hop options.
    pub const HOPOPTS: u8 = 0;
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// IPv6 routing header.
    pub const ROUTING: u8 = 43;
    /// IPv6 fragment header.
    pub const FRAGMENT: u8 = 44;
    /// IPsec authentication header.
    pub const AH: u8 = 51;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// IPv6 "no next header".
    pub const NONE: u8 = 59;
    /// IPv6 destination options.
    pub const DSTOPTS: u8 = 60;
}

/// An Ethernet MAC address; displays and parses as `02:00:00:00:00:01`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// `ff:ff:ff:ff:ff:ff`.
    pub const BROADCAST: Self = Self([0xff; 6]);
    /// `00:00:00:00:00:00`.
    pub const ZERO: Self = Self([0; 6]);

    /// The six bytes.
    pub fn octets(self) -> [u8; 6] {
        self.0
    }
}

impl From<[u8; 6]> for MacAddr {
    fn from(bytes: [u8; 6]) -> Self {
        Self(bytes)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = crate::error::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.trim().split(':');
        for byte in &mut out {
            let part = parts
                .next()
                .with_context(|| format!("MAC address {s:?} has fewer than 6 parts"))?;
            if part.is_empty() || part.len() > 2 {
                bail!("MAC address {s:?} has a malformed part {part:?}");
            }
            *byte = u8::from_str_radix(part, 16)
                .with_context(|| format!("MAC address {s:?} has a malformed part {part:?}"))?;
        }
        if parts.next().is_some() {
            bail!("MAC address {s:?} has more than 6 parts");
        }
        Ok(Self(out))
    }
}

/// TCP header flags; combine with `|`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    /// No flags.
    pub const NONE: Self = Self(0);
    /// FIN.
    pub const FIN: Self = Self(0x01);
    /// SYN.
    pub const SYN: Self = Self(0x02);
    /// RST.
    pub const RST: Self = Self(0x04);
    /// PSH.
    pub const PSH: Self = Self(0x08);
    /// ACK.
    pub const ACK: Self = Self(0x10);
    /// URG.
    pub const URG: Self = Self(0x20);
    /// ECE.
    pub const ECE: Self = Self(0x40);
    /// CWR.
    pub const CWR: Self = Self(0x80);

    const NAMES: [(Self, &'static str); 8] = [
        (Self::FIN, "FIN"),
        (Self::SYN, "SYN"),
        (Self::RST, "RST"),
        (Self::PSH, "PSH"),
        (Self::ACK, "ACK"),
        (Self::URG, "URG"),
        (Self::ECE, "ECE"),
        (Self::CWR, "CWR"),
    ];

    /// The raw flag byte.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// Whether every flag of `other` is set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for TcpFlags {
    type Output = Self;

    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl BitOrAssign for TcpFlags {
    fn bitor_assign(&mut self, rhs: Self) {
        self.0 |= rhs.0;
    }
}

impl BitAnd for TcpFlags {
    type Output = Self;

    fn bitand(self, rhs: Self) -> Self {
        Self(self.0 & rhs.0)
    }
}

impl fmt::Debug for TcpFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Self::NAMES
            .iter()
            .filter(|(flag, _)| self.contains(*flag))
            .map(|(_, name)| *name)
            .collect();
        if names.is_empty() {
            f.write_str("NONE")
        } else {
            f.write_str(&names.join("|"))
        }
    }
}

impl fmt::Display for TcpFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// An IPv6 extension header, as built by [`PacketBuilder::ipv6_ext`] and read back by
/// [`ParsedPacket`].
///
/// The builder pads options headers with Pad1/PadN and routing data with zeros to a multiple
/// of 8 bytes; the parser returns the bytes including that padding, so headers whose content
/// is already aligned (options of 6, 14, ... bytes; routing data of 4, 12, ... bytes) read back
/// exactly as built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ipv6Ext {
    /// Hop-by-hop options header (next header 0): the option TLV bytes.
    HopByHop(Vec<u8>),
    /// Destination options header (next header 60): the option TLV bytes.
    DestinationOptions(Vec<u8>),
    /// Routing header (next header 43).
    Routing {
        /// Routing type.
        routing_type: u8,
        /// Segments left.
        segments_left: u8,
        /// Type-specific data after the first four bytes.
        data: Vec<u8>,
    },
    /// Fragment header (next header 44).
    Fragment {
        /// Fragment offset in 8-byte units (13 bits).
        offset: u16,
        /// The M (more fragments) flag.
        more: bool,
        /// Identification.
        id: u32,
    },
}

impl Ipv6Ext {
    /// The next-header value that announces this header.
    pub fn protocol(&self) -> u8 {
        match self {
            Self::HopByHop(_) => proto::HOPOPTS,
            Self::DestinationOptions(_) => proto::DSTOPTS,
            Self::Routing { .. } => proto::ROUTING,
            Self::Fragment { .. } => proto::FRAGMENT,
        }
    }
}

#[cfg(test)]
mod tests;

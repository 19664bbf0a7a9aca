//! [`verify_checksums`]: every checksum of a frame recomputed from scratch.

use std::net::IpAddr;

use super::checksum::{Checksum, pseudo_header_v4, pseudo_header_v6};
use super::parse::{IpVersion, ParsedPacket, Transport};

/// Recomputes every checksum of an Ethernet frame from scratch and reports the wrong ones.
///
/// Checked: the IPv4 header checksum; the TCP, UDP, ICMP and ICMPv6 checksums (with the
/// pseudo-header where the protocol has one, using the IPv6 header's destination address,
/// which is the final destination unless a routing header has segments left). UDP with a
/// zero checksum means "none" over IPv4 and is accepted; over IPv6 it is reported, since
/// receivers drop it. A checksum equal in one's complement arithmetic (0x0000 for 0xffff)
/// is accepted, as receivers do.
///
/// The lengths the checksums depend on are checked too: the IP length must cover the headers
/// and fit in the buffer (Ethernet padding after it is fine) and the UDP length must match the
/// IP payload. Transport checksums of fragments are not checked (that needs reassembly), nor
/// are the headers quoted inside ICMP errors. Frames other than IPv4/IPv6 pass.
///
/// The error lists every problem found, e.g.
/// `TCP checksum wrong: expected 0x1c46, found 0xdead`.
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    let parsed = ParsedPacket::parse(frame).map_err(|e| format!("cannot parse: {e:#}"))?;
    verify_parsed(frame, &parsed)
}

/// [`verify_checksums`] for a bare IP packet without an Ethernet header.
pub fn verify_ip_checksums(packet: &[u8]) -> Result<(), String> {
    let parsed = ParsedPacket::parse_ip(packet).map_err(|e| format!("cannot parse: {e:#}"))?;
    verify_parsed(packet, &parsed)
}

fn verify_parsed(data: &[u8], p: &ParsedPacket) -> Result<(), String> {
    let Some(ip) = p.ip.as_ref() else {
        return Ok(());
    };
    let mut problems = Vec::new();
    let l3 = p.l3_offset;
    let ip_end = l3 + ip.total_len;
    let name = match ip.version {
        IpVersion::V4 => "IPv4",
        IpVersion::V6 => "IPv6",
    };
    if ip.total_len < ip.header_len {
        return Err(format!(
            "{name} length says {} bytes, less than its {} bytes of headers",
            ip.total_len, ip.header_len
        ));
    }
    if ip_end > data.len() {
        return Err(format!(
            "truncated: the {name} length says {} bytes from offset {l3}, the buffer has {} \
             bytes after it",
            ip.total_len,
            data.len() - l3
        ));
    }

    if ip.version == IpVersion::V4 {
        let header = &data[l3..l3 + ip.header_len];
        if let Some(problem) = check("IPv4 header", Checksum::new(), header, 10) {
            problems.push(problem);
        }
    }

    if let (Some(l4), Some(transport), false) =
        (p.l4_offset, p.transport.as_ref(), ip.is_fragment())
    {
        let segment = &data[l4..ip_end];
        let len = segment.len();
        let pseudo = |protocol: u8| -> Checksum {
            match (ip.src, ip.dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    pseudo_header_v4(s, d, protocol, u16::try_from(len).unwrap_or(u16::MAX))
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    pseudo_header_v6(s, d, protocol, u32::try_from(len).unwrap_or(u32::MAX))
                }
                // The parser never mixes versions.
                _ => Checksum::new(),
            }
        };
        let problem = match transport {
            Transport::Tcp(_) => check("TCP", pseudo(ip.protocol), segment, 16),
            Transport::Udp(udp) => {
                if usize::from(udp.length) != len {
                    problems.push(format!(
                        "UDP length says {} bytes, the {name} payload has {len}",
                        udp.length
                    ));
                }
                match (udp.checksum, ip.version) {
                    (0, IpVersion::V4) => None,
                    (0, IpVersion::V6) => Some(
                        "UDP over IPv6 with a zero checksum (none), which receivers drop"
                            .to_owned(),
                    ),
                    _ => check("UDP", pseudo(ip.protocol), segment, 6),
                }
            }
            Transport::Icmp(_) => check("ICMP", Checksum::new(), segment, 2),
            Transport::Icmpv6(_) => check("ICMPv6", pseudo(ip.protocol), segment, 2),
        };
        problems.extend(problem);
    }

    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Checks the checksum at `field` of `data` (summed after `start`); `None` when it is right.
fn check(what: &str, start: Checksum, data: &[u8], field: usize) -> Option<String> {
    let Some(found) = data.get(field..field + 2) else {
        return Some(format!("{what} checksum field is beyond the data"));
    };
    let found = u16::from_be_bytes([found[0], found[1]]);
    let mut c = start;
    c.add(&data[..field]).add(&[0, 0]).add(&data[field + 2..]);
    let mut expected = c.finish();
    if expected == 0 && what == "UDP" {
        expected = 0xffff;
    }
    // Summing everything, the field included, gives all ones for a valid checksum; this also
    // accepts the other one's complement zero (0x0000 vs 0xffff).
    let mut all = start;
    all.add(data);
    if found == expected || all.sum16() == 0xffff {
        None
    } else {
        Some(format!(
            "{what} checksum wrong: expected {expected:#06x}, found {found:#06x}"
        ))
    }
}

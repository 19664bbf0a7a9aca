//! Unit tests of the packet builder, parser and checksum verifier.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::*;

const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const POD: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x203, 0, 0, 0, 0, 10);

fn mac(last: u8) -> MacAddr {
    MacAddr([0x02, 0, 0, 0, 0x10, last])
}

fn tcp_syn_v4() -> PacketBuilder {
    PacketBuilder::new()
        .eth(mac(1), mac(2))
        .ipv4(CLIENT, VIP)
        .ttl(63)
        .ip_id(0x1234)
        .dont_fragment()
        .tcp(40000, 80)
        .seq(1000)
        .tcp_flags(TcpFlags::SYN)
        .window(29200)
}

#[test]
fn tcp_v4_builds_verifies_and_parses_back() {
    let frame = tcp_syn_v4().payload(b"hello").build();
    verify_checksums(&frame).unwrap();
    assert_eq!(frame.len(), ETH_HLEN + IPV4_HLEN + TCP_HLEN + 5);

    let p = ParsedPacket::parse(&frame).unwrap();
    assert_eq!(p.src_mac(), Some(mac(1)));
    assert_eq!(p.dst_mac(), Some(mac(2)));
    assert_eq!(p.version(), Some(IpVersion::V4));
    assert_eq!(p.src_ip(), Some(IpAddr::V4(CLIENT)));
    assert_eq!(p.dst_ip(), Some(IpAddr::V4(VIP)));
    assert_eq!(p.ttl(), Some(63));
    assert_eq!(p.protocol(), Some(proto::TCP));
    assert_eq!(p.src_port(), Some(40000));
    assert_eq!(p.dst_port(), Some(80));
    assert_eq!(p.tcp_flags(), Some(TcpFlags::SYN));
    assert_eq!(p.l3_offset, ETH_HLEN);
    assert_eq!(p.l4_offset, Some(ETH_HLEN + IPV4_HLEN));
    assert_eq!(p.payload(&frame), b"hello");
    let ip = p.ip.as_ref().unwrap();
    assert_eq!(ip.id, 0x1234);
    assert!(ip.dont_fragment && !ip.more_fragments && !ip.is_fragment());
    assert_eq!(ip.total_len, IPV4_HLEN + TCP_HLEN + 5);
    let tcp = p.tcp().unwrap();
    assert_eq!((tcp.seq, tcp.ack, tcp.window), (1000, 0, 29200));
}

#[test]
fn tcp_flags_combine_and_print() {
    let flags = TcpFlags::SYN | TcpFlags::ACK;
    assert!(flags.contains(TcpFlags::SYN) && flags.contains(TcpFlags::ACK));
    assert!(!flags.contains(TcpFlags::RST));
    assert_eq!(format!("{flags:?}"), "SYN|ACK");
    assert_eq!(format!("{:?}", TcpFlags::NONE), "NONE");
    let frame = tcp_syn_v4()
        .tcp_flags(TcpFlags::FIN | TcpFlags::PSH | TcpFlags::ACK)
        .build();
    let parsed = ParsedPacket::parse(&frame).unwrap();
    assert_eq!(
        parsed.tcp_flags(),
        Some(TcpFlags::FIN | TcpFlags::PSH | TcpFlags::ACK)
    );
}

#[test]
fn tcp_options_are_padded_and_parsed() {
    // MSS 1460 and a NOP: three bytes short of a word.
    let options = [2, 4, 0x05, 0xb4, 1];
    let frame = tcp_syn_v4().tcp_options(&options).payload(b"x").build();
    verify_checksums(&frame).unwrap();
    let p = ParsedPacket::parse(&frame).unwrap();
    let tcp = p.tcp().unwrap();
    assert_eq!(tcp.header_len, TCP_HLEN + 8);
    assert_eq!(&tcp.options[..5], &options);
    assert_eq!(&tcp.options[5..], &[0, 0, 0]);
    assert_eq!(p.payload(&frame), b"x");
}

#[test]
fn udp_v4_and_v6_verify() {
    let v4 = PacketBuilder::new()
        .ipv4(CLIENT, VIP)
        .udp(5353, 53)
        .payload(b"query")
        .build();
    verify_checksums(&v4).unwrap();
    let p = ParsedPacket::parse(&v4).unwrap();
    let udp = p.udp().unwrap();
    assert_eq!((udp.src_port, udp.dst_port), (5353, 53));
    assert_eq!(usize::from(udp.length), UDP_HLEN + 5);
    assert_ne!(udp.checksum, 0);

    let v6 = PacketBuilder::new()
        .ipv6(CLIENT6, VIP6)
        .hop_limit(7)
        .udp(5353, 53)
        .payload(b"odd")
        .build();
    verify_checksums(&v6).unwrap();
    let p = ParsedPacket::parse(&v6).unwrap();
    assert_eq!(p.version(), Some(IpVersion::V6));
    assert_eq!(p.ttl(), Some(7));
    assert_eq!(p.src_ip(), Some(IpAddr::V6(CLIENT6)));
    assert_eq!(p.payload(&v6), b"odd");
}

#[test]
fn udp_zero_checksum_is_none_for_v4_only() {
    let v4 = PacketBuilder::new()
        .ipv4(CLIENT, VIP)
        .udp(1, 2)
        .udp_no_checksum()
        .payload(b"data")
        .build();
    assert_eq!(ParsedPacket::parse(&v4).unwrap().udp().unwrap().checksum, 0);
    verify_checksums(&v4).unwrap();

    let v6 = PacketBuilder::new()
        .ipv6(CLIENT6, VIP6)
        .udp(1, 2)
        .udp_no_checksum()
        .build();
    let err = verify_checksums(&v6).unwrap_err();
    assert!(err.contains("zero checksum"), "{err}");
}

#[test]
fn icmp_and_icmpv6_echo_verify() {
    let v4 = PacketBuilder::new()
        .ipv4(CLIENT, VIP)
        .icmp(8, 0)
        .icmp_echo(0x42, 7)
        .payload(b"ping")
        .build();
    verify_checksums(&v4).unwrap();
    let p = ParsedPacket::parse(&v4).unwrap();
    let icmp = p.icmp().unwrap();
    assert_eq!((icmp.ty, icmp.code), (8, 0));
    assert_eq!(icmp.rest, [0, 0x42, 0, 7]);
    assert!(matches!(p.transport, Some(Transport::Icmp(_))));

    let v6 = PacketBuilder::new()
        .ipv6(CLIENT6, VIP6)
        .icmpv6(128, 0)
        .icmp_echo(1, 2)
        .payload(b"ping6")
        .build();
    verify_checksums(&v6).unwrap();
    let p = ParsedPacket::parse(&v6).unwrap();
    assert!(matches!(p.transport, Some(Transport::Icmpv6(_))));
    assert_eq!(p.icmp().unwrap().ty, 128);
}

#[test]
fn icmpv6_checksum_covers_the_pseudo_header() {
    // The same ICMPv6 message to another destination must carry another checksum.
    let a = PacketBuilder::new()
        .ipv6(CLIENT6, VIP6)
        .icmpv6(128, 0)
        .build();
    let b = PacketBuilder::new()
        .ipv6(CLIENT6, Ipv6Addr::new(0x2001, 0xdb8, 0x203, 0, 0, 0, 0, 11))
        .icmpv6(128, 0)
        .build();
    let ca = ParsedPacket::parse(&a).unwrap().icmp().unwrap().checksum;
    let cb = ParsedPacket::parse(&b).unwrap().icmp().unwrap().checksum;
    assert_ne!(ca, cb);
}

#[test]
fn wrong_ipv4_header_checksum_is_reported() {
    let good = tcp_syn_v4().build();
    let found = ParsedPacket::parse(&good)
        .unwrap()
        .ip
        .unwrap()
        .checksum
        .unwrap();
    let bad = tcp_syn_v4().ip_checksum_override(found ^ 0x0101).build();
    let err = verify_checksums(&bad).unwrap_err();
    assert!(err.starts_with("IPv4 header checksum wrong"), "{err}");
    assert!(err.contains(&format!("expected {found:#06x}")), "{err}");
    assert!(
        err.contains(&format!("found {:#06x}", found ^ 0x0101)),
        "{err}"
    );
    assert!(!err.contains("TCP"), "only the IP header is wrong: {err}");
}

#[test]
fn wrong_transport_checksums_are_reported() {
    let bad_tcp = tcp_syn_v4().l4_checksum_override(0xdead).build();
    let err = verify_checksums(&bad_tcp).unwrap_err();
    assert!(err.starts_with("TCP checksum wrong"), "{err}");
    assert!(err.contains("found 0xdead"), "{err}");

    let bad_udp = PacketBuilder::new()
        .ipv6(CLIENT6, VIP6)
        .udp(1, 2)
        .l4_checksum_override(0xbeef)
        .build();
    let err = verify_checksums(&bad_udp).unwrap_err();
    assert!(err.starts_with("UDP checksum wrong"), "{err}");

    let bad_icmp = PacketBuilder::new()
        .ipv4(CLIENT, VIP)
        .icmp(3, 4)
        .l4_checksum_override(1)
        .build();
    assert!(
        verify_checksums(&bad_icmp)
            .unwrap_err()
            .starts_with("ICMP checksum wrong")
    );
}

#[test]
fn a_single_flipped_bit_is_detected() {
    let frame = tcp_syn_v4().payload(b"payload").build();
    for byte in ETH_HLEN..frame.len() {
        let mut bad = frame.clone();
        bad[byte] ^= 0x10;
        // Some flips break parsing (e.g. the version nibble) rather than a checksum; all
        // must be reported one way or the other.
        assert!(
            verify_checksums(&bad).is_err(),
            "flipping a bit at offset {byte} went unnoticed"
        );
    }
}

#[test]
fn equivalent_zero_checksum_is_accepted() {
    // Find a payload whose TCP checksum computes to 0x0000, then write the equivalent 0xffff.
    let payload = (0u16..=u16::MAX)
        .map(u16::to_be_bytes)
        .find(|p| {
            let frame = tcp_syn_v4().payload(p).build();
            ParsedPacket::parse(&frame).unwrap().tcp().unwrap().checksum == 0
        })
        .expect("some two-byte payload gives a zero checksum");
    let frame = tcp_syn_v4()
        .payload(&payload)
        .l4_checksum_override(0xffff)
        .build();
    verify_checksums(&frame).unwrap();
}

#[test]
fn ipv4_options_parse_back() {
    // Router alert (4 bytes) and a record-route option with room for one address (7 bytes).
    let options = [0x94, 4, 0, 0, 7, 7, 4, 0, 0, 0, 0];
    let frame = PacketBuilder::new()
        .ipv4(CLIENT, POD)
        .ipv4_options(&options)
        .tos(0x10)
        .udp(1000, 2000)
        .payload(b"opt")
        .build();
    verify_checksums(&frame).unwrap();
    let p = ParsedPacket::parse(&frame).unwrap();
    let ip = p.ip.as_ref().unwrap();
    assert_eq!(ip.header_len, IPV4_HLEN + 12);
    assert_eq!(&ip.options[..options.len()], &options);
    assert_eq!(ip.options[options.len()..], [0]);
    assert_eq!(ip.tos, 0x10);
    assert_eq!(p.l4_offset, Some(ETH_HLEN + IPV4_HLEN + 12));
    assert_eq!(p.dst_port(), Some(2000));
    assert_eq!(p.payload(&frame), b"opt");

    let too_long = PacketBuilder::new()
        .ipv4(CLIENT, POD)
        .ipv4_options(&[1; 41])
        .udp(1, 2)
        .try_build();
    assert!(too_long.is_err());
}

#[test]
fn ipv6_extension_headers_parse_back() {
    let exts = vec![
        Ipv6Ext::HopByHop(vec![5, 2, 0, 0, 1, 0]), // router alert + PadN: 8 bytes in all
        Ipv6Ext::DestinationOptions(vec![1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        Ipv6Ext::Routing {
            routing_type: 0,
            segments_left: 0,
            data: vec![0; 4],
        },
        Ipv6Ext::Fragment {
            offset: 0,
            more: false,
            id: 0xabcd_ef01,
        },
    ];
    let mut builder = PacketBuilder::new().ipv6(CLIENT6, VIP6).flow_label(0x12345);
    for ext in &exts {
        builder = builder.ipv6_ext(ext.clone());
    }
    let frame = builder.tcp(40000, 443).tcp_flags(TcpFlags::SYN).build();
    verify_checksums(&frame).unwrap();

    let p = ParsedPacket::parse(&frame).unwrap();
    let ip = p.ip.as_ref().unwrap();
    let parsed: Vec<Ipv6Ext> = ip.extensions.iter().map(|e| e.ext.clone()).collect();
    assert_eq!(parsed, exts);
    let offsets: Vec<usize> = ip.extensions.iter().map(|e| e.offset).collect();
    let start = ETH_HLEN + IPV6_HLEN;
    assert_eq!(offsets, [start, start + 8, start + 24, start + 32]);
    assert_eq!(ip.header_len, IPV6_HLEN + 40);
    assert_eq!(ip.protocol, proto::TCP);
    assert_eq!(ip.flow_label, 0x12345);
    assert_eq!(ip.id, 0xabcd_ef01);
    assert!(
        !ip.is_fragment(),
        "an atomic fragment holds the whole datagram"
    );
    assert_eq!(p.l4_offset, Some(start + 40));
    assert_eq!(p.dst_port(), Some(443));
}

#[test]
fn ipv6_options_are_padded_to_eight_bytes() {
    for len in 0..20 {
        let frame = PacketBuilder::new()
            .ipv6(CLIENT6, VIP6)
            .ipv6_ext(Ipv6Ext::DestinationOptions(vec![0; len]))
            .udp(1, 2)
            .build();
        verify_checksums(&frame).unwrap();
        let p = ParsedPacket::parse(&frame).unwrap();
        let ip = p.ip.as_ref().unwrap();
        assert_eq!((ip.header_len - IPV6_HLEN) % 8, 0, "options of {len} bytes");
        assert_eq!(p.dst_port(), Some(2), "options of {len} bytes");
    }
}

#[test]
fn non_first_fragments_have_no_transport() {
    let v4 = PacketBuilder::new()
        .ipv4(CLIENT, VIP)
        .ip_id(9)
        .more_fragments()
        .fragment_offset(185)
        .protocol(proto::UDP)
        .payload(&[0xaa; 16])
        .build();
    verify_checksums(&v4).unwrap();
    let p = ParsedPacket::parse(&v4).unwrap();
    let ip = p.ip.as_ref().unwrap();
    assert!(ip.is_fragment() && ip.more_fragments);
    assert_eq!(ip.fragment_offset, 185);
    assert_eq!(p.l4_offset, None);
    assert_eq!(p.transport, None);

    let v6 = PacketBuilder::new()
        .ipv6(CLIENT6, VIP6)
        .ipv6_ext(Ipv6Ext::Fragment {
            offset: 100,
            more: false,
            id: 5,
        })
        .protocol(proto::UDP)
        .payload(&[0xbb; 8])
        .build();
    let p = ParsedPacket::parse(&v6).unwrap();
    let ip = p.ip.as_ref().unwrap();
    assert!(ip.is_fragment());
    assert_eq!(ip.protocol, proto::UDP);
    assert_eq!(p.transport, None);

    // A first fragment still shows its ports.
    let first = tcp_syn_v4().more_fragments().build();
    let p = ParsedPacket::parse(&first).unwrap();
    assert!(p.ip.as_ref().unwrap().is_fragment());
    assert_eq!(p.dst_port(), Some(80));
}

#[test]
fn wrong_lengths_are_reported() {
    let long_ip = tcp_syn_v4().ip_length_override(200).build();
    assert!(
        verify_checksums(&long_ip)
            .unwrap_err()
            .contains("truncated")
    );

    let short_ip = tcp_syn_v4().ip_length_override(10).build();
    let err = verify_checksums(&short_ip).unwrap_err();
    assert!(err.contains("less than its 20 bytes of headers"), "{err}");

    let udp = PacketBuilder::new()
        .ipv4(CLIENT, VIP)
        .udp(1, 2)
        .payload(b"abcd")
        .udp_length_override(100)
        .build();
    let err = verify_checksums(&udp).unwrap_err();
    assert!(err.contains("UDP length says 100 bytes"), "{err}");
}

#[test]
fn ethernet_padding_is_not_part_of_the_packet() {
    let mut frame = PacketBuilder::new().ipv4(CLIENT, VIP).udp(1, 2).build();
    frame.resize(60, 0);
    verify_checksums(&frame).unwrap();
    assert!(
        ParsedPacket::parse(&frame)
            .unwrap()
            .payload(&frame)
            .is_empty()
    );
}

#[test]
fn truncation_is_reported() {
    let full = tcp_syn_v4().payload(b"0123456789").build();
    let cut = tcp_syn_v4()
        .payload(b"0123456789")
        .truncate(full.len() - 4)
        .build();
    assert_eq!(cut, full[..full.len() - 4]);
    assert!(verify_checksums(&cut).unwrap_err().contains("truncated"));

    let in_tcp_header = tcp_syn_v4().truncate(ETH_HLEN + IPV4_HLEN + 10).build();
    let err = ParsedPacket::parse(&in_tcp_header).unwrap_err().to_string();
    assert!(err.contains("truncated TCP header"), "{err}");
}

#[test]
fn bare_ip_packets() {
    let packet = PacketBuilder::new()
        .without_ethernet()
        .ipv6(CLIENT6, VIP6)
        .udp(7, 8)
        .build();
    assert_eq!(packet[0] >> 4, 6);
    verify_ip_checksums(&packet).unwrap();
    let p = ParsedPacket::parse_ip(&packet).unwrap();
    assert_eq!(p.eth, None);
    assert_eq!(p.l4_offset, Some(IPV6_HLEN));
}

#[test]
fn non_ip_frames() {
    let arp = PacketBuilder::new()
        .ethertype(ethertype::ARP)
        .payload(&[0; 28])
        .build();
    let p = ParsedPacket::parse(&arp).unwrap();
    assert_eq!(p.eth.unwrap().ethertype, ethertype::ARP);
    assert_eq!(p.ip, None);
    verify_checksums(&arp).unwrap();
}

#[test]
fn inconsistent_descriptions_fail() {
    let mixed = PacketBuilder::new()
        .ip(IpAddr::V4(CLIENT), IpAddr::V6(VIP6))
        .udp(1, 2)
        .try_build();
    assert!(mixed.is_err());
    let icmp_over_v6 = PacketBuilder::new()
        .ipv6(CLIENT6, VIP6)
        .icmp(8, 0)
        .try_build();
    assert!(icmp_over_v6.is_err());
    let no_protocol = PacketBuilder::new().ipv4(CLIENT, VIP).try_build();
    assert!(no_protocol.is_err());
    let no_ethertype = PacketBuilder::new().try_build();
    assert!(no_ethertype.is_err());
}

#[test]
fn mac_addresses_round_trip() {
    let m: MacAddr = "02:00:5e:10:00:ff".parse().unwrap();
    assert_eq!(m.octets(), [0x02, 0x00, 0x5e, 0x10, 0x00, 0xff]);
    assert_eq!(m.to_string(), "02:00:5e:10:00:ff");
    assert!("02:00:5e:10:00".parse::<MacAddr>().is_err());
    assert!("02:00:5e:10:00:ff:01".parse::<MacAddr>().is_err());
    assert!("02:00:5e:10:00:fff".parse::<MacAddr>().is_err());
}

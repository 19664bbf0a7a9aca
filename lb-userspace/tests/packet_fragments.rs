//! Packet tier, IPv4 fragments: the first fragment of a UDP datagram to a NodePort is
//! translated and remembered, the later fragments follow it (XDP), reply fragments follow
//! their first fragment at TC, and a later fragment whose first fragment was not seen is
//! passed untouched. Exact bytes: each expected fragment is built from scratch, with the
//! UDP checksum of the whole (translated) datagram, as a sender that fragments computes it.

mod common;

use std::net::Ipv4Addr;

use common::*;
use lab::packet::PacketBuilder;
use lb_userspace::Protocol;

/// A 4000-byte datagram in fragments of 1480 bytes of IP payload (MTU 1500).
const PAYLOAD: usize = 4000;
const FRAG: usize = 1480;
const IP_ID: u16 = 0x4242;

fn payload() -> Vec<u8> {
    (0..PAYLOAD).map(|i| (i % 251) as u8).collect()
}

/// The UDP checksum of the whole datagram `src:sport -> dst:dport` carrying [`payload`].
fn datagram_checksum(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> u16 {
    let whole = PacketBuilder::new()
        .ipv4(src, dst)
        .udp(sport, dport)
        .payload(&payload())
        .build();
    u16::from_be_bytes([whole[14 + 20 + 6], whole[14 + 20 + 7]])
}

/// The fragments of that datagram, as the sender's stack cuts them.
fn fragments(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<Vec<u8>> {
    let check = datagram_checksum(src, dst, sport, dport);
    let data = payload();
    // The first fragment: the UDP header (claiming the whole datagram) and 1472 bytes.
    let first = PacketBuilder::new()
        .ipv4(src, dst)
        .ip_id(IP_ID)
        .more_fragments()
        .udp(sport, dport)
        .udp_length_override((8 + PAYLOAD) as u16)
        .l4_checksum_override(check)
        .payload(&data[..FRAG - 8])
        .build();
    let mut out = vec![first];
    let mut at = FRAG - 8;
    while at < PAYLOAD {
        let end = (at + FRAG).min(PAYLOAD);
        let mut b = PacketBuilder::new()
            .ipv4(src, dst)
            .ip_id(IP_ID)
            .protocol(lb_common::IPPROTO_UDP)
            .fragment_offset(((at + 8) / 8) as u16)
            .payload(&data[at..end]);
        if end < PAYLOAD {
            b = b.more_fragments();
        }
        out.push(b.build());
        at = end;
    }
    out
}

#[test]
fn fragments_of_a_udp_datagram_follow_their_first_fragment_both_ways() {
    in_node(1, |env, dp| {
        dp.upsert_service(&service("dns", Protocol::Udp, &env.backends))
            .unwrap();
        let b = env.backends[0];
        let input = fragments(CLIENT, NODE, 5353, NODE_PORT);
        let expected = fragments(CLIENT, b, 5353, TARGET_PORT);
        assert_eq!(input.len(), 3);
        for (i, (frag, want)) in input.iter().zip(&expected).enumerate() {
            let ((verdict, out), d) = delta(dp, |dp| run(dp, env, frag));
            assert_eq!(verdict, XDP_PASS, "fragment {i}");
            assert_eq!(&out, want, "fragment {i}: exact bytes");
            let reason = if i == 0 {
                "ct_new"
            } else {
                "xdp_fragment_translated"
            };
            assert!(d.iter().any(|(r, _)| *r == reason), "fragment {i}: {d:?}");
        }

        // The reply, fragmented by the backend, leaves from the NodePort the client dialled.
        let replies = fragments(b, CLIENT, TARGET_PORT, 5353);
        let expected = fragments(NODE, CLIENT, NODE_PORT, 5353);
        for (i, (frag, want)) in replies.iter().zip(&expected).enumerate() {
            let before = counters(dp);
            let out = dp.test_tc(frag).unwrap();
            assert_eq!(out.verdict, TC_ACT_OK);
            assert_eq!(&out.data, want, "reply fragment {i}: exact bytes");
            let label = if i == 0 {
                "tc_revnat"
            } else {
                "tc_fragment_translated"
            };
            assert_eq!(counters(dp)[label], before[label] + 1, "reply fragment {i}");
        }
    });
}

#[test]
fn a_later_fragment_without_its_first_is_passed_untouched() {
    in_node(1, |env, dp| {
        dp.upsert_service(&service("dns", Protocol::Udp, &env.backends))
            .unwrap();
        let input = fragments(CLIENT, NODE, 5354, NODE_PORT);
        let ((verdict, out), d) = delta(dp, |dp| run(dp, env, &input[1]));
        assert_eq!((verdict, &out), (XDP_PASS, &input[1]));
        assert_eq!(d, vec![("xdp_pass_fragment", 1)]);
        // A datagram to no frontend: its first fragment is not ours, nor are the others.
        let other = fragments(CLIENT, Ipv4Addr::new(198, 51, 100, 250), 5355, 9999);
        for f in &other {
            let (v, out) = run(dp, env, f);
            assert_eq!((v, &out), (XDP_PASS, f));
        }
    });
}

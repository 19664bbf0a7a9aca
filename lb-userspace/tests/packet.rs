//! Packet tier: the XDP and TC programs run through `BPF_PROG_TEST_RUN` inside the node
//! namespace of a lab (so `bpf_fib_lookup` sees a real node), maps set up through the
//! `Dataplane` API, packets built with `lab::packet::PacketBuilder`. Each case checks the
//! verdict, the exact output bytes (the expected packet is built from scratch, so every
//! checksum is a full recomputation), `verify_checksums`, and the counters.

mod common;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use common::*;
use lab::{
    Lab,
    packet::{PacketBuilder, TcpFlags, verify_checksums},
};
use lb_userspace::{BackendSpec, Dataplane, DataplaneConfig, Frontend, Protocol};

#[test]
fn dnat_tcp_syn_to_nodeport_is_translated_exactly() {
    in_node(1, |env, dp| {
        dp.upsert_service(&service("web", Protocol::Tcp, &env.backends))
            .unwrap();
        let input = tcp(NODE, NODE_PORT, 40000, TcpFlags::SYN).build();
        let ((verdict, out), d) = delta(dp, |dp| run(dp, env, &input));
        assert_eq!(
            verdict, XDP_PASS,
            "no redirect port configured: translated, then to the stack"
        );
        let expected = tcp(env.backends[0], TARGET_PORT, 40000, TcpFlags::SYN).build();
        assert_eq!(out, expected, "exact bytes after DNAT");
        verify_checksums(&out).unwrap();
        assert_eq!(d, vec![("ct_new", 1), ("xdp_pass_to_stack", 1)]);
        let st = dp.service_stats("web").unwrap();
        assert_eq!(
            (st.service.packets, st.service.bytes, st.service.new_flows),
            (1, input.len() as u64, 1)
        );
        assert_eq!(st.backends[0].1.packets, 1);
    });
}

#[test]
fn dnat_loadbalancer_vip_udp_is_translated_exactly() {
    in_node(1, |env, dp| {
        dp.upsert_service(&service("dns", Protocol::Udp, &env.backends))
            .unwrap();
        let input = udp(VIP, VIP_PORT, 5353).build();
        let (verdict, out) = run(dp, env, &input);
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(out, udp(env.backends[0], TARGET_PORT, 5353).build());
        verify_checksums(&out).unwrap();
    });
}

#[test]
fn dnat_udp_zero_checksum_stays_zero() {
    in_node(1, |env, dp| {
        dp.upsert_service(&service("dns", Protocol::Udp, &env.backends))
            .unwrap();
        let input = udp(VIP, VIP_PORT, 5353).udp_no_checksum().build();
        let (_, out) = run(dp, env, &input);
        assert_eq!(
            out,
            udp(env.backends[0], TARGET_PORT, 5353)
                .udp_no_checksum()
                .build()
        );
        verify_checksums(&out).unwrap();
    });
}

#[test]
fn dnat_with_ip_options_uses_the_header_length() {
    in_node(1, |env, dp| {
        dp.upsert_service(&service("web", Protocol::Tcp, &env.backends))
            .unwrap();
        // Record-route-like option (NOP padding + a 4-byte option) makes IHL 6.
        let opts = [0x01, 0x01, 0x01, 0x00];
        let input = tcp(NODE, NODE_PORT, 40001, TcpFlags::SYN)
            .ipv4_options(&opts)
            .build();
        let ((verdict, out), d) = delta(dp, |dp| run(dp, env, &input));
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(
            out,
            tcp(env.backends[0], TARGET_PORT, 40001, TcpFlags::SYN)
                .ipv4_options(&opts)
                .build()
        );
        verify_checksums(&out).unwrap();
        assert!(d.contains(&("ct_new", 1)), "{d:?}");
    });
}

#[test]
fn conntrack_established_flow_keeps_its_backend() {
    in_node(2, |env, dp| {
        dp.upsert_service(&service("web", Protocol::Tcp, &env.backends))
            .unwrap();
        for sport in 41000..41040 {
            let (_, syn_out) = run(dp, env, &tcp(NODE, NODE_PORT, sport, TcpFlags::SYN).build());
            let chosen = dst_of(&syn_out);
            let ack = tcp(NODE, NODE_PORT, sport, TcpFlags::ACK).build();
            let ((_, out), d) = delta(dp, |dp| run(dp, env, &ack));
            assert_eq!(
                dst_of(&out),
                chosen,
                "established packets follow the SYN's backend"
            );
            let SocketAddr::V4(v4) = chosen else {
                panic!("v4 backend expected")
            };
            assert_eq!(
                out,
                tcp(*v4.ip(), TARGET_PORT, sport, TcpFlags::ACK).build()
            );
            assert_eq!(d, vec![("ct_hit", 1), ("xdp_pass_to_stack", 1)]);
        }
        // Both backends were chosen for some of the 40 flows.
        let st = dp.service_stats("web").unwrap();
        assert!(st.backends.iter().all(|(_, s)| s.new_flows > 0), "{st:?}");
        assert_eq!(st.service.new_flows, 40);
        assert_eq!(st.service.packets, 80);
    });
}

#[test]
fn conntrack_syn_on_existing_entry_selects_afresh() {
    in_node(1, |env, dp| {
        dp.upsert_service(&service("web", Protocol::Tcp, &env.backends))
            .unwrap();
        let syn = tcp(NODE, NODE_PORT, 42000, TcpFlags::SYN).build();
        run(dp, env, &syn);
        let ((verdict, out), d) = delta(dp, |dp| run(dp, env, &syn));
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(
            out,
            tcp(env.backends[0], TARGET_PORT, 42000, TcpFlags::SYN).build()
        );
        assert_eq!(
            d,
            vec![
                ("ct_new", 1),
                ("ct_syn_reselect", 1),
                ("xdp_pass_to_stack", 1)
            ]
        );
    });
}

#[test]
fn conntrack_miss_on_non_syn_is_counted_and_selected() {
    in_node(1, |env, dp| {
        dp.upsert_service(&service("web", Protocol::Tcp, &env.backends))
            .unwrap();
        let ack = tcp(NODE, NODE_PORT, 43000, TcpFlags::ACK | TcpFlags::PSH).build();
        let ((_, out), d) = delta(dp, |dp| run(dp, env, &ack));
        assert_eq!(
            out,
            tcp(
                env.backends[0],
                TARGET_PORT,
                43000,
                TcpFlags::ACK | TcpFlags::PSH
            )
            .build()
        );
        assert_eq!(
            d,
            vec![("ct_miss", 1), ("ct_new", 1), ("xdp_pass_to_stack", 1)]
        );
    });
}

/// Packets that are not ours leave exactly as they came, each counted by reason.
#[test]
fn passthrough_not_ours_and_malformed_are_untouched_and_counted() {
    in_node(1, |env, dp| {
        dp.upsert_service(&service("web", Protocol::Tcp, &env.backends))
            .unwrap();
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "other port",
                tcp(NODE, 22, 40000, TcpFlags::SYN).build(),
                "xdp_pass_not_ours",
            ),
            (
                "udp to a tcp service",
                udp(NODE, NODE_PORT, 40000).build(),
                "xdp_pass_not_ours",
            ),
            (
                "nodeport on a foreign address",
                tcp(
                    Ipv4Addr::new(192, 0, 2, 99),
                    NODE_PORT,
                    40000,
                    TcpFlags::SYN,
                )
                .build(),
                "xdp_pass_not_ours",
            ),
            (
                "icmp echo to the node",
                PacketBuilder::new()
                    .ipv4(CLIENT, NODE)
                    .icmp(8, 0)
                    .icmp_echo(1, 1)
                    .build(),
                "xdp_pass_not_ours",
            ),
            (
                "arp",
                PacketBuilder::new()
                    .ethertype(0x0806)
                    .payload(&[0u8; 28])
                    .build(),
                "xdp_pass_not_ip",
            ),
            (
                "ipv6 to a port without an ipv6 service",
                PacketBuilder::new()
                    .ipv6(
                        "2001:db8:1::2".parse().unwrap(),
                        "2001:db8:1::1".parse().unwrap(),
                    )
                    .tcp(1, 2)
                    .build(),
                "xdp_pass_not_ours",
            ),
            // A first fragment is translated (packet_fragments.rs); a later one whose first
            // fragment was not seen is not.
            (
                "later fragment",
                udp(NODE, NODE_PORT, 40000).fragment_offset(100).build(),
                "xdp_pass_fragment",
            ),
            (
                "truncated tcp header",
                tcp(NODE, NODE_PORT, 40000, TcpFlags::SYN)
                    .payload(&[])
                    .truncate(14 + 20 + 10)
                    .build(),
                "xdp_pass_malformed",
            ),
            (
                "truncated ip header",
                tcp(NODE, NODE_PORT, 40000, TcpFlags::SYN)
                    .truncate(14 + 12)
                    .build(),
                "xdp_pass_malformed",
            ),
            (
                "ip total length beyond the frame",
                tcp(NODE, NODE_PORT, 40000, TcpFlags::SYN)
                    .ip_length_override(1400)
                    .build(),
                "xdp_pass_malformed",
            ),
            (
                "ip total length below the header",
                tcp(NODE, NODE_PORT, 40000, TcpFlags::SYN)
                    .ip_length_override(16)
                    .build(),
                "xdp_pass_malformed",
            ),
            (
                "udp length beyond the packet",
                udp(VIP, NODE_PORT, 40000).udp_length_override(900).build(),
                "xdp_pass_malformed",
            ),
        ];
        for (what, input, reason) in cases {
            let ((verdict, out), d) = delta(dp, |dp| run(dp, env, &input));
            assert_eq!(verdict, XDP_PASS, "{what}");
            assert_eq!(out, input, "{what}: output must equal input");
            assert_eq!(d, vec![(reason, 1)], "{what}");
        }
        assert_eq!(dp.service_stats("web").unwrap().service.packets, 0);
    });
}

#[test]
fn forwarding_redirects_with_fib_macs_and_ttl_decrement() {
    in_node(1, |env, dp| {
        dp.upsert_service(&service("web", Protocol::Tcp, &env.backends))
            .unwrap();
        dp.allow_redirect(&env.pod_links[0]).unwrap();
        let input = tcp(NODE, NODE_PORT, 44000, TcpFlags::SYN).ttl(64).build();
        let ((verdict, out), d) = delta(dp, |dp| run(dp, env, &input));
        assert_eq!(verdict, XDP_REDIRECT);
        let (node_mac, pod_mac) = env.pod_macs[0];
        let expected = tcp(env.backends[0], TARGET_PORT, 44000, TcpFlags::SYN)
            .ttl(63)
            .eth(node_mac, pod_mac)
            .build();
        assert_eq!(out, expected);
        verify_checksums(&out).unwrap();
        assert_eq!(d, vec![("ct_new", 1), ("xdp_redirect", 1)]);
        // TTL 1 must not be forwarded here: the stack answers with time exceeded.
        let last_hop = tcp(NODE, NODE_PORT, 44001, TcpFlags::SYN).ttl(1).build();
        let (verdict, out) = run(dp, env, &last_hop);
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(
            out,
            tcp(env.backends[0], TARGET_PORT, 44001, TcpFlags::SYN)
                .ttl(1)
                .build()
        );
    });
}

#[test]
fn revnat_tc_rewrites_replies_to_the_dialled_frontend() {
    in_node(1, |env, dp| {
        dp.upsert_service(&service("web", Protocol::Tcp, &env.backends))
            .unwrap();
        dp.upsert_service(&service("dns", Protocol::Udp, &env.backends))
            .unwrap();
        let backend = env.backends[0];
        // Through the NodePort...
        run(dp, env, &tcp(NODE, NODE_PORT, 47000, TcpFlags::SYN).build());
        let reply = PacketBuilder::new()
            .ipv4(backend, CLIENT)
            .tcp(TARGET_PORT, 47000)
            .seq(5)
            .ack(1001)
            .tcp_flags(TcpFlags::SYN | TcpFlags::ACK)
            .build();
        let out = dp.test_tc(&reply).unwrap();
        assert_eq!(out.verdict, TC_ACT_OK);
        let expected = PacketBuilder::new()
            .ipv4(NODE, CLIENT)
            .tcp(NODE_PORT, 47000)
            .seq(5)
            .ack(1001)
            .tcp_flags(TcpFlags::SYN | TcpFlags::ACK)
            .build();
        assert_eq!(out.data, expected);
        verify_checksums(&out.data).unwrap();
        // ...and through the VIP, UDP with and without checksum.
        for no_csum in [false, true] {
            let mut req = udp(VIP, VIP_PORT, 5300 + no_csum as u16);
            let mut rep = PacketBuilder::new()
                .ipv4(backend, CLIENT)
                .udp(TARGET_PORT, 5300 + no_csum as u16)
                .payload(b"pong");
            let mut exp = PacketBuilder::new()
                .ipv4(VIP, CLIENT)
                .udp(VIP_PORT, 5300 + no_csum as u16)
                .payload(b"pong");
            if no_csum {
                req = req.udp_no_checksum();
                rep = rep.udp_no_checksum();
                exp = exp.udp_no_checksum();
            }
            run(dp, env, &req.build());
            let out = dp.test_tc(&rep.build()).unwrap();
            assert_eq!(out.data, exp.build(), "udp, no checksum: {no_csum}");
            verify_checksums(&out.data).unwrap();
        }
        // A packet that is no reply of ours leaves untouched.
        let other = PacketBuilder::new()
            .ipv4(backend, CLIENT)
            .tcp(TARGET_PORT, 1)
            .build();
        let (out, d) = delta(dp, |dp| dp.test_tc(&other).unwrap());
        assert_eq!(out.data, other);
        assert_eq!(d, vec![("tc_pass_not_ours", 1)]);
    });
}

#[test]
fn service_removal_walks_no_flow_table_and_the_gc_empties_conntrack() {
    // The background GC sleeps through the test (it is stepped by hand below), so what
    // the removal itself does to conntrack is seen.
    let mut cfg = lb_userspace::DataplaneConfig::default();
    cfg.conntrack.gc_interval_millis = 3_600_000;
    in_node_with(2, cfg, |env, dp| {
        dp.upsert_service(&service("web", Protocol::Tcp, &env.backends))
            .unwrap();
        for sport in 48000..48010 {
            run(dp, env, &tcp(NODE, NODE_PORT, sport, TcpFlags::SYN).build());
        }
        let occ = dp.occupancy().unwrap();
        assert_eq!((occ.frontends, occ.backends, occ.conntrack), (2, 2, 20));
        assert!(occ.slots > 0);
        dp.remove_service("web").unwrap();
        // The removal and the id release touch no flow entry: they name a backend
        // generation that no longer exists, which the data path and the GC both see.
        assert_eq!(dp.occupancy().unwrap().conntrack, 20);
        assert_eq!(dp.stale_ids(), (1, 2));
        assert_eq!(dp.purge_stale().unwrap(), 0);
        assert_eq!(dp.stale_ids(), (0, 0));
        assert_eq!(dp.occupancy().unwrap().conntrack, 20);
        // The GC deletes the FORWARD entries (backend gone) and their REPLY entries (no
        // live flow): within two passes, since a REPLY entry may be visited first.
        let deleted = dp.conntrack_gc_pass().unwrap() + dp.conntrack_gc_pass().unwrap();
        assert_eq!(deleted, 20);
        let occ = dp.occupancy().unwrap();
        assert_eq!(
            (occ.frontends, occ.backends, occ.slots, occ.conntrack),
            (0, 0, 0, 0)
        );
        let (verdict, out) = run(dp, env, &tcp(NODE, NODE_PORT, 48000, TcpFlags::ACK).build());
        assert_eq!(
            (verdict, out),
            (XDP_PASS, tcp(NODE, NODE_PORT, 48000, TcpFlags::ACK).build())
        );
    });
}

#[test]
fn backend_removal_moves_udp_flow_to_another_backend() {
    in_node(2, |env, dp| {
        let mut spec = service("dns", Protocol::Udp, &env.backends);
        dp.upsert_service(&spec).unwrap();
        let pkt = udp(VIP, VIP_PORT, 5400).build();
        let (_, out) = run(dp, env, &pkt);
        let first = dst_of(&out);
        spec.backends.retain(|b| b.addr != first);
        dp.upsert_service(&spec).unwrap();
        let (_, out) = run(dp, env, &pkt);
        assert_ne!(
            dst_of(&out),
            first,
            "the flow moved off the removed backend"
        );
        assert_eq!(dp.occupancy().unwrap().backends, 1);
    });
}

#[test]
fn capacity_errors_name_the_setting_and_change_nothing() {
    let lab = Lab::builder().backends(0).build().expect("lab");
    lab.node()
        .enter(|| {
            let mut cfg = DataplaneConfig::default();
            cfg.capacities.services = 1;
            cfg.capacities.backends = 2;
            let mut dp = Dataplane::load(cfg).unwrap();
            let b = |i: u8| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, i), 80));
            let mut one = service("one", Protocol::Tcp, &[]);
            one.backends = vec![BackendSpec::ready(b(2)), BackendSpec::ready(b(6))];
            dp.upsert_service(&one).unwrap();
            let mut two = service("two", Protocol::Udp, &[]);
            two.frontends = vec![Frontend::NodePort(30999)];
            let e = dp.upsert_service(&two).unwrap_err().to_string();
            assert!(e.contains("capacities.services"), "{e}");
            one.backends.push(BackendSpec::ready(b(10)));
            let e = dp.upsert_service(&one).unwrap_err().to_string();
            assert!(e.contains("capacities.backends"), "{e}");
            assert_eq!(
                dp.dump()[0].backends.len(),
                2,
                "rejected update changed nothing"
            );
            let occ = dp.occupancy().unwrap();
            assert_eq!((occ.frontends, occ.backends), (2, 2));
            // Invalid specs are rejected with a reason.
            let mut bad = service("one", Protocol::Udp, &[]);
            bad.frontends = vec![Frontend::NodePort(0)];
            assert!(
                dp.upsert_service(&bad)
                    .unwrap_err()
                    .to_string()
                    .contains("NodePort 0")
            );
            let mut clash = service("three", Protocol::Tcp, &[]);
            clash.frontends = vec![Frontend::NodePort(NODE_PORT)];
            assert!(
                dp.upsert_service(&clash)
                    .unwrap_err()
                    .to_string()
                    .contains("already used by service `one`")
            );
        })
        .expect("enter");
}

/// A NodePort flow hashes without the node's own address: the same client flow to two
/// addresses of the node (as two nodes would see it: the conntrack of the first pass is
/// purged by removing and adding the service again, so no reply-clash retry moves the second)
/// goes to the same backend, while the flows of one client still spread over the backends.
#[test]
fn nodeport_flow_picks_the_same_backend_whatever_node_address_it_reached() {
    in_node(8, |env, dp| {
        let other_node = Ipv4Addr::new(192, 0, 2, 200);
        dp.add_node_address(other_node.into()).unwrap();
        let spec = service("dns", Protocol::Udp, &env.backends);
        let pass = |dp: &mut Dataplane, node: Ipv4Addr| -> Vec<Vec<u8>> {
            dp.upsert_service(&spec).unwrap();
            let (outs, d) = delta(dp, |dp| {
                (5000..5016)
                    .map(|sport| {
                        let (v, out) = run(dp, env, &udp(node, NODE_PORT, sport).build());
                        assert_eq!(v, XDP_PASS);
                        out
                    })
                    .collect::<Vec<_>>()
            });
            assert_eq!(d, vec![("ct_new", 16), ("xdp_pass_to_stack", 16)]);
            dp.remove_service("dns").unwrap();
            dp.purge_stale().unwrap();
            // The GC deletes the removed backends' entries (two passes: a REPLY entry may
            // come before its FORWARD entry).
            dp.conntrack_gc_pass().unwrap();
            dp.conntrack_gc_pass().unwrap();
            outs
        };
        let (a, b) = (pass(dp, NODE), pass(dp, other_node));
        let mut picked = std::collections::BTreeSet::new();
        for ((sport, a), b) in (5000..5016).zip(a).zip(b) {
            let backend = dst_of(&a);
            let SocketAddr::V4(v4) = backend else {
                panic!("{backend}")
            };
            assert_eq!(
                a,
                udp(*v4.ip(), TARGET_PORT, sport).build(),
                "exact DNAT, port {sport}"
            );
            assert_eq!(b, a, "port {sport}: the same backend through {other_node}");
            verify_checksums(&b).unwrap();
            picked.insert(backend);
        }
        assert!(picked.len() >= 4, "16 flows on {} backends", picked.len());
    });
}

/// A selection table that names another service's backend (a bookkeeping bug, simulated by
/// writing the pinned `SLOTS`) never sends a packet there: the slot is refused like an
/// empty table, and counted.
#[test]
fn a_slot_naming_another_services_backend_is_not_used_and_counted() {
    let dir = lab::PinDir::new("mismatch-pkt").unwrap();
    let cfg = DataplaneConfig {
        pin: Some(lb_userspace::PinConfig {
            root: dir.path().to_path_buf(),
            instance: "test".into(),
        }),
        ..Default::default()
    };
    let pin = cfg.pin.clone().unwrap();
    in_node_with(2, cfg, |env, dp| {
        let mut a = service("a", Protocol::Udp, &env.backends[..1]);
        dp.upsert_service(&a).unwrap();
        let mut b = service("b", Protocol::Udp, &env.backends[1..]);
        b.frontends = vec![Frontend::NodePort(30999)];
        dp.upsert_service(&b).unwrap();
        let b_backend = dp
            .dump()
            .into_iter()
            .find(|s| s.name == "b")
            .unwrap()
            .backends[0]
            .id;
        let services: aya::maps::HashMap<_, lb_common::ServiceKey, lb_common::ServiceValue> =
            aya::maps::HashMap::try_from(aya::maps::Map::HashMap(
                aya::maps::MapData::from_pin(pin.map_path("SERVICES")).unwrap(),
            ))
            .unwrap();
        let a_id = dp.dump().into_iter().find(|s| s.name == "a").unwrap().id;
        let table = services
            .iter()
            .map(|e| e.unwrap().1)
            .find(|v| v.id == a_id)
            .unwrap();
        let mut slots: aya::maps::Array<_, lb_common::SlotBlock> = aya::maps::Array::try_from(
            aya::maps::Map::Array(aya::maps::MapData::from_pin(pin.map_path("SLOTS")).unwrap()),
        )
        .unwrap();
        let per = lb_common::SLOTS_PER_ENTRY;
        for i in table.slot_offset..table.slot_offset + table.slot_count {
            let mut block = slots.get(&(i / per), 0).unwrap();
            block[(i % per) as usize] = b_backend;
            slots.set(i / per, block, 0).unwrap();
        }
        let pkt = udp(VIP, VIP_PORT, 5500).build();
        let ((verdict, out), d) = delta(dp, |dp| run(dp, env, &pkt));
        assert_eq!(verdict, XDP_TX);
        assert_eq!(
            d,
            vec![
                ("backend_service_mismatch", 2),
                ("xdp_tx_refuse_icmp_unreachable", 1)
            ],
            "the pick and its retry on a fresh read of the service"
        );
        // Exactly the refusal of a service without backends.
        a.backends.clear();
        dp.upsert_service(&a).unwrap();
        let (verdict, refusal) = run(dp, env, &pkt);
        assert_eq!((verdict, out), (XDP_TX, refusal));
        dp.remove_service("a").unwrap();
        dp.remove_service("b").unwrap();
    });
    assert!(lb_userspace::pins::uninstall(&pin).unwrap());
}

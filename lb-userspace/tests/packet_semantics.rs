//! Packet tier, service semantics: endpoint states and fallback, refusal (RST / ICMP port
//! unreachable), ClientIP affinity, ICMP error translation, the drain handshake, and no hole
//! while a selection table is rewritten under traffic. Exact bytes are compared with packets
//! built from scratch (every checksum fully recomputed).

mod common;

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

use common::*;
use lab::packet::{MacAddr, PacketBuilder, TcpFlags, verify_checksums};
use lb_userspace::{EndpointState, Protocol};

const XDP_TX: u32 = 3;
const CLIENT_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x01]);
const NODE_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x02]);
const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);

fn v4(a: SocketAddr) -> Ipv4Addr {
    match a.ip() {
        IpAddr::V4(v) => v,
        IpAddr::V6(_) => panic!("IPv4 expected"),
    }
}

/// The first 28 bytes of an IP datagram: what an ICMP error quotes.
fn quote(datagram: PacketBuilder) -> Vec<u8> {
    datagram.without_ethernet().build()[..28].to_vec()
}

#[test]
fn terminating_gets_new_flows_only_as_fallback_and_not_serving_keeps_flows() {
    in_node(2, |env, dp| {
        let mut spec = service("web", Protocol::Tcp, &env.backends);
        spec.backends[1].state = EndpointState::ServingTerminating;
        dp.upsert_service(&spec).unwrap();
        for sport in 46000..46040 {
            let (_, out) = run(dp, env, &tcp(NODE, NODE_PORT, sport, TcpFlags::SYN).build());
            assert_eq!(
                v4(dst_of(&out)),
                env.backends[0],
                "ready backends only while one is ready"
            );
        }
        // The only ready one becomes not serving: fallback to the terminating one.
        spec.backends[0].state = EndpointState::NotServing;
        dp.upsert_service(&spec).unwrap();
        for sport in 46100..46120 {
            let (_, out) = run(dp, env, &tcp(NODE, NODE_PORT, sport, TcpFlags::SYN).build());
            assert_eq!(v4(dst_of(&out)), env.backends[1], "terminating fallback");
        }
        // A flow established on the not-serving backend continues there.
        let (_, out) = run(dp, env, &tcp(NODE, NODE_PORT, 46000, TcpFlags::ACK).build());
        assert_eq!(v4(dst_of(&out)), env.backends[0]);
        // Back to ready: both get new flows again.
        spec.backends[0].state = EndpointState::Ready;
        spec.backends[1].state = EndpointState::Ready;
        dp.upsert_service(&spec).unwrap();
        let seen: BTreeSet<Ipv4Addr> = (46200..46260)
            .map(|sport| {
                v4(dst_of(
                    &run(dp, env, &tcp(NODE, NODE_PORT, sport, TcpFlags::SYN).build()).1,
                ))
            })
            .collect();
        assert_eq!(seen.len(), 2);
        // Removed: its flows are re-selected (the not-serving flow moves to the other one).
        spec.backends.remove(0);
        dp.upsert_service(&spec).unwrap();
        let ((_, out), d) = delta(dp, |dp| {
            run(dp, env, &tcp(NODE, NODE_PORT, 46000, TcpFlags::ACK).build())
        });
        assert_eq!(v4(dst_of(&out)), env.backends[1]);
        assert!(
            d.contains(&("ct_stale_backend", 1)),
            "the removed backend's flow is re-selected: {d:?}"
        );
        // No purge walks conntrack; the GC deletes the entries of the removed backend
        // (two passes: a REPLY entry may be visited before its FORWARD entry), and then
        // the next packet is a plain miss.
        assert_eq!(dp.purge_stale().unwrap(), 0);
        dp.conntrack_gc_pass().unwrap();
        dp.conntrack_gc_pass().unwrap();
        let (_, d) = delta(dp, |dp| {
            run(dp, env, &tcp(NODE, NODE_PORT, 46001, TcpFlags::ACK).build())
        });
        assert!(d.contains(&("ct_miss", 1)), "{d:?}");
    });
}

#[test]
fn refusal_tcp_syn_without_endpoint_gets_exact_rst() {
    in_node(0, |env, dp| {
        dp.upsert_service(&service("empty", Protocol::Tcp, &[]))
            .unwrap();
        let input = tcp(NODE, NODE_PORT, 45000, TcpFlags::SYN).build();
        let ((verdict, out), d) = delta(dp, |dp| run(dp, env, &input));
        assert_eq!(verdict, XDP_TX);
        // RST|ACK acknowledging the SYN and its 18 payload bytes; sequence 0.
        let expected = PacketBuilder::new()
            .eth(NODE_MAC, CLIENT_MAC)
            .ipv4(NODE, CLIENT)
            .dont_fragment()
            .tcp(NODE_PORT, 45000)
            .seq(0)
            .ack(1000 + 18 + 1)
            .tcp_flags(TcpFlags::RST | TcpFlags::ACK)
            .window(0)
            .build();
        assert_eq!(out, expected);
        verify_checksums(&out).unwrap();
        assert_eq!(d, vec![("xdp_tx_refuse_tcp_rst", 1)]);
    });
}

#[test]
fn refusal_tcp_ack_without_endpoint_gets_rst_with_its_ack_as_seq() {
    in_node(0, |env, dp| {
        dp.upsert_service(&service("empty", Protocol::Tcp, &[]))
            .unwrap();
        let input = tcp(VIP, VIP_PORT, 45001, TcpFlags::ACK | TcpFlags::PSH)
            .ack(77_777)
            .build();
        let (verdict, out) = run(dp, env, &input);
        assert_eq!(verdict, XDP_TX);
        let expected = PacketBuilder::new()
            .eth(NODE_MAC, CLIENT_MAC)
            .ipv4(VIP, CLIENT)
            .dont_fragment()
            .tcp(VIP_PORT, 45001)
            .seq(77_777)
            .tcp_flags(TcpFlags::RST)
            .window(0)
            .build();
        assert_eq!(out, expected);
        // A RST is never answered.
        let rst = tcp(VIP, VIP_PORT, 45002, TcpFlags::RST).build();
        let ((verdict, _), d) = delta(dp, |dp| run(dp, env, &rst));
        assert_eq!(
            (verdict, d),
            (XDP_DROP, vec![("ct_miss", 1), ("xdp_drop_no_backend", 1)])
        );
    });
}

#[test]
fn refusal_udp_without_endpoint_gets_exact_icmp_port_unreachable() {
    in_node(0, |env, dp| {
        dp.upsert_service(&service("empty", Protocol::Udp, &[]))
            .unwrap();
        let datagram = udp(VIP, VIP_PORT, 5353);
        let input = datagram.clone().build();
        let ((verdict, out), d) = delta(dp, |dp| run(dp, env, &input));
        assert_eq!(verdict, XDP_TX);
        let expected = PacketBuilder::new()
            .eth(NODE_MAC, CLIENT_MAC)
            .ipv4(VIP, CLIENT)
            .dont_fragment()
            .icmp(3, 3)
            .payload(&quote(datagram))
            .build();
        assert_eq!(out, expected);
        verify_checksums(&out).unwrap();
        assert_eq!(d, vec![("xdp_tx_refuse_icmp_unreachable", 1)]);
    });
}

#[test]
fn refusal_is_rate_limited_per_cpu() {
    let cfg = lb_userspace::DataplaneConfig {
        refusals_per_sec_per_cpu: 3,
        ..Default::default()
    };
    in_node_with(0, cfg, |env, dp| {
        // One CPU, so one budget.
        let mut set = nix::sched::CpuSet::new();
        set.set(0).unwrap();
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
        dp.upsert_service(&service("empty", Protocol::Tcp, &[]))
            .unwrap();
        let (verdicts, d) = delta(dp, |dp| {
            (0..5)
                .map(|i| {
                    run(
                        dp,
                        env,
                        &tcp(NODE, NODE_PORT, 45100 + i, TcpFlags::SYN).build(),
                    )
                    .0
                })
                .collect::<Vec<_>>()
        });
        assert_eq!(verdicts, vec![XDP_TX, XDP_TX, XDP_TX, XDP_DROP, XDP_DROP]);
        assert_eq!(
            d,
            vec![
                ("xdp_drop_refusal_rate_limited", 2),
                ("xdp_tx_refuse_tcp_rst", 3)
            ]
        );
    });
}

#[test]
fn affinity_client_ip_sticks_until_timeout_and_only_to_eligible_backends() {
    in_node(4, |env, dp| {
        let mut spec = service("web", Protocol::Tcp, &env.backends);
        spec.affinity = Some(Duration::from_secs(1));
        dp.upsert_service(&spec).unwrap();
        let first = dst_of(&run(dp, env, &tcp(NODE, NODE_PORT, 47000, TcpFlags::SYN).build()).1);
        let (dsts, d) = delta(dp, |dp| {
            (47001..47020)
                .map(|sport| {
                    dst_of(&run(dp, env, &tcp(NODE, NODE_PORT, sport, TcpFlags::SYN).build()).1)
                })
                .collect::<BTreeSet<_>>()
        });
        assert_eq!(
            dsts,
            BTreeSet::from([first]),
            "every new flow of the client goes to one backend"
        );
        assert!(d.contains(&("affinity_hit", 19)), "{d:?}");
        // Expiry: after the timeout the next new flow is chosen afresh (no affinity hit).
        std::thread::sleep(Duration::from_millis(1300));
        let (_, d) = delta(dp, |dp| {
            run(dp, env, &tcp(NODE, NODE_PORT, 47100, TcpFlags::SYN).build())
        });
        assert!(
            !d.iter().any(|(k, _)| *k == "affinity_hit"),
            "expired: {d:?}"
        );
        // A backend that is no longer ready is not an affinity target.
        let (_, d) = delta(dp, |dp| {
            run(dp, env, &tcp(NODE, NODE_PORT, 47101, TcpFlags::SYN).build())
        });
        assert!(d.contains(&("affinity_hit", 1)), "{d:?}");
        let idx = env.backends.iter().position(|b| *b == v4(first)).unwrap();
        spec.backends[idx].state = EndpointState::ServingTerminating;
        dp.upsert_service(&spec).unwrap();
        let (out, d) = delta(dp, |dp| {
            run(dp, env, &tcp(NODE, NODE_PORT, 47102, TcpFlags::SYN).build()).1
        });
        assert_ne!(dst_of(&out), first);
        assert!(!d.iter().any(|(k, _)| *k == "affinity_hit"), "{d:?}");
    });
}

#[test]
fn icmp_frag_needed_for_a_reply_is_translated_to_the_backend() {
    in_node(1, |env, dp| {
        dp.upsert_service(&service("web", Protocol::Tcp, &env.backends))
            .unwrap();
        dp.upsert_service(&service("dns", Protocol::Udp, &env.backends))
            .unwrap();
        let b = env.backends[0];
        run(dp, env, &tcp(NODE, NODE_PORT, 48000, TcpFlags::SYN).build());
        // A router on the client side could not forward a 1400-byte reply (MTU 1280).
        let reply = |src: Ipv4Addr, sport: u16| {
            PacketBuilder::new()
                .ipv4(src, CLIENT)
                .dont_fragment()
                .tcp(sport, 48000)
                .seq(9)
                .ack(1)
                .tcp_flags(TcpFlags::ACK)
                .payload(&[7u8; 1400])
        };
        let mtu = [0, 0, 0x05, 0x00];
        let input = PacketBuilder::new()
            .ipv4(ROUTER, NODE)
            .icmp(3, 4)
            .icmp_rest(mtu)
            .payload(&quote(reply(NODE, NODE_PORT)))
            .build();
        let ((verdict, out), d) = delta(dp, |dp| run(dp, env, &input));
        assert_eq!(verdict, XDP_PASS);
        let expected = PacketBuilder::new()
            .ipv4(ROUTER, b)
            .icmp(3, 4)
            .icmp_rest(mtu)
            .payload(&quote(reply(b, TARGET_PORT)))
            .build();
        assert_eq!(out, expected);
        verify_checksums(&out).unwrap();
        assert!(d.contains(&("xdp_icmp_error_translated", 1)), "{d:?}");

        // UDP through the VIP, with the quoted UDP checksum (inside the 8 bytes) fixed too.
        run(dp, env, &udp(VIP, VIP_PORT, 5400).build());
        let dgram = |src: Ipv4Addr, sport: u16| {
            PacketBuilder::new()
                .ipv4(src, CLIENT)
                .udp(sport, 5400)
                .payload(b"a reply that was too big")
        };
        let input = PacketBuilder::new()
            .ipv4(ROUTER, VIP)
            .icmp(11, 0)
            .payload(&quote(dgram(VIP, VIP_PORT)))
            .build();
        let (_, out) = run(dp, env, &input);
        let expected = PacketBuilder::new()
            .ipv4(ROUTER, b)
            .icmp(11, 0)
            .payload(&quote(dgram(b, TARGET_PORT)))
            .build();
        assert_eq!(out, expected);

        // An ICMP error about a flow we do not track passes untouched.
        let stray = PacketBuilder::new()
            .ipv4(ROUTER, NODE)
            .icmp(3, 4)
            .icmp_rest(mtu)
            .payload(&quote(reply(NODE, 22)))
            .build();
        let ((_, out), d) = delta(dp, |dp| run(dp, env, &stray));
        assert_eq!((out, d), (stray, vec![("xdp_pass_not_ours", 1)]));
    });
}

#[test]
fn icmp_errors_leaving_towards_the_client_quote_the_frontend() {
    in_node(1, |env, dp| {
        dp.upsert_service(&service("web", Protocol::Tcp, &env.backends))
            .unwrap();
        dp.upsert_service(&service("dns", Protocol::Udp, &env.backends))
            .unwrap();
        let b = env.backends[0];
        run(dp, env, &tcp(NODE, NODE_PORT, 48100, TcpFlags::SYN).build());
        // The node cannot forward the client's big segment to the pod (fragmentation needed):
        // the error comes from the node's pod-link address and quotes client -> backend.
        let seg = |dst: Ipv4Addr, dport: u16| {
            PacketBuilder::new()
                .ipv4(CLIENT, dst)
                .dont_fragment()
                .tcp(48100, dport)
                .seq(1001)
                .tcp_flags(TcpFlags::ACK)
                .payload(&[1u8; 1400])
        };
        let node_pod = Ipv4Addr::new(198, 51, 100, 1);
        let mtu = [0, 0, 0x05, 0x00];
        let input = PacketBuilder::new()
            .ipv4(node_pod, CLIENT)
            .icmp(3, 4)
            .icmp_rest(mtu)
            .payload(&quote(seg(b, TARGET_PORT)))
            .build();
        let (out, d) = delta(dp, |dp| dp.test_tc(&input).unwrap());
        let expected = PacketBuilder::new()
            .ipv4(node_pod, CLIENT)
            .icmp(3, 4)
            .icmp_rest(mtu)
            .payload(&quote(seg(NODE, NODE_PORT)))
            .build();
        assert_eq!(out.data, expected);
        verify_checksums(&out.data).unwrap();
        assert_eq!(d, vec![("tc_icmp_error_translated", 1)]);

        // The backend itself says port unreachable: outer source becomes the frontend.
        run(dp, env, &udp(VIP, VIP_PORT, 5401).build());
        let dgram = |dst: Ipv4Addr, dport: u16| {
            PacketBuilder::new()
                .ipv4(CLIENT, dst)
                .udp(5401, dport)
                .payload(b"ping over udp")
        };
        let input = PacketBuilder::new()
            .ipv4(b, CLIENT)
            .icmp(3, 3)
            .payload(&quote(dgram(b, TARGET_PORT)))
            .build();
        let out = dp.test_tc(&input).unwrap();
        let expected = PacketBuilder::new()
            .ipv4(VIP, CLIENT)
            .icmp(3, 3)
            .payload(&quote(dgram(VIP, VIP_PORT)))
            .build();
        assert_eq!(out.data, expected);
        verify_checksums(&out.data).unwrap();
    });
}

#[test]
fn drain_handshake_reports_selectable_and_tracked_flows() {
    in_node(2, |env, dp| {
        let mut spec = service("web", Protocol::Tcp, &env.backends);
        dp.upsert_service(&spec).unwrap();
        let b0 = IpAddr::V4(env.backends[0]);
        let to_b0 = (49000..49040)
            .filter(|&sport| {
                dst_of(&run(dp, env, &tcp(NODE, NODE_PORT, sport, TcpFlags::SYN).build()).1).ip()
                    == b0
            })
            .count() as u64;
        assert!(to_b0 > 0);
        // Flows are counted by the conntrack GC (its last pass), never by a walk per call.
        dp.conntrack_gc_pass().unwrap();
        let st = dp.endpoint_status(b0, true).unwrap();
        assert_eq!(st.len(), 1);
        assert!(st[0].selectable);
        assert_eq!(st[0].flows, Some(to_b0));
        // Terminating: no longer selected for new flows, its flows still tracked.
        spec.backends[0].state = EndpointState::ServingTerminating;
        dp.upsert_service(&spec).unwrap();
        dp.conntrack_gc_pass().unwrap();
        let st = &dp.endpoint_status(b0, true).unwrap()[0];
        assert!(!st.selectable);
        assert_eq!(st.flows, Some(to_b0));
        // Without counting flows (no conntrack walk): the same selection, flows unknown.
        let quick = &dp.endpoint_status(b0, false).unwrap()[0];
        assert_eq!((quick.selectable, quick.flows), (false, None));
        for sport in 49100..49140 {
            assert_ne!(
                dst_of(&run(dp, env, &tcp(NODE, NODE_PORT, sport, TcpFlags::SYN).build()).1).ip(),
                b0
            );
        }
        // Removed: nothing left to report.
        spec.backends.remove(0);
        dp.upsert_service(&spec).unwrap();
        assert!(dp.endpoint_status(b0, true).unwrap().is_empty());
    });
}

/// Packets keep running through the XDP program (on another thread, own program fd) while
/// the selection table is rewritten again and again, in place and by resizing: every packet
/// gets a backend that exists at that moment, never a refusal or a drop.
#[test]
fn maglev_update_leaves_no_hole_while_packets_run() {
    in_node(4, |env, dp| {
        let runner = dp.xdp_test_runner().unwrap();
        let all: BTreeSet<Ipv4Addr> = env.backends.iter().copied().collect();
        let sets: Vec<Vec<usize>> = vec![
            vec![0],
            vec![0, 1, 2, 3],
            vec![1, 2],
            vec![2, 3],
            vec![0, 1, 2],
            vec![3],
            vec![0, 3],
        ];
        let stop = AtomicBool::new(false);
        // Packets run so far: the updates go on until enough packets overlapped them
        // (updates take tens of microseconds, so a fixed count of rounds could be over
        // before the packet thread got going).
        let ran = AtomicU64::new(0);
        let ifindex = env.uplink_ifindex;
        // The service exists before the first packet runs.
        let spec_of = |set: &[usize], round: usize| {
            let mut spec = service("web", Protocol::Tcp, &[]);
            spec.backends = set
                .iter()
                .map(|&i| {
                    lb_userspace::BackendSpec::ready(SocketAddr::V4(SocketAddrV4::new(
                        env.backends[i],
                        TARGET_PORT,
                    )))
                })
                .collect();
            if round % 2 == 1 && spec.backends.len() > 1 {
                spec.backends[0].state = EndpointState::ServingTerminating;
            }
            spec
        };
        dp.upsert_service(&spec_of(&sets[0], 0)).unwrap();
        let before = counters(dp);
        let (runs, bad) = std::thread::scope(|s| {
            let h = s.spawn(|| {
                let (mut runs, mut bad) = (0u64, Vec::new());
                let mut sport = 10_000u16;
                while !stop.load(Ordering::Relaxed) {
                    sport = sport.wrapping_add(1).max(10_000);
                    let out = runner
                        .run(&tcp(NODE, NODE_PORT, sport, TcpFlags::SYN).build(), ifindex)
                        .expect("run");
                    runs += 1;
                    ran.store(runs, Ordering::Relaxed);
                    if out.verdict != XDP_PASS || !all.contains(&v4(dst_of(&out.data))) {
                        bad.push((out.verdict, dst_of(&out.data)));
                    }
                }
                (runs, bad)
            });
            // At least 20 rounds, until 5000 packets ran alongside, at most 20 000 rounds.
            for round in 0..20_000 {
                if round >= 20 && ran.load(Ordering::Relaxed) >= 5000 {
                    break;
                }
                for set in &sets {
                    let mut spec = service("web", Protocol::Tcp, &[]);
                    spec.backends = set
                        .iter()
                        .map(|&i| {
                            lb_userspace::BackendSpec::ready(SocketAddr::V4(SocketAddrV4::new(
                                env.backends[i],
                                TARGET_PORT,
                            )))
                        })
                        .collect();
                    if round % 2 == 1 && spec.backends.len() > 1 {
                        spec.backends[0].state = EndpointState::ServingTerminating;
                    }
                    dp.upsert_service(&spec).unwrap();
                }
            }
            stop.store(true, Ordering::Relaxed);
            h.join().unwrap()
        });
        let after = counters(dp);
        let moved: Vec<_> = after
            .iter()
            .filter(|(k, v)| before[*k] != **v)
            .map(|(k, v)| (*k, v - before[*k]))
            .collect();
        assert!(runs >= 5000, "only {runs} packets ran during the updates");
        assert!(
            bad.is_empty(),
            "{} of {runs} packets hit a hole: verdicts {:?}; counters moved: {moved:?}",
            bad.len(),
            &bad[..bad.len().min(10)]
        );
    });
}

/// One client port to two frontends of a service would be a single 4-tuple at a shared
/// backend: the second flow prefers another backend (and counts the clash).
#[test]
fn conntrack_reply_clash_prefers_another_backend() {
    in_node(2, |env, dp| {
        dp.upsert_service(&service("web", Protocol::Tcp, &env.backends))
            .unwrap();
        let (same, d) = delta(dp, |dp| {
            (50000..50100)
                .filter(|&sport| {
                    let a = dst_of(
                        &run(dp, env, &tcp(NODE, NODE_PORT, sport, TcpFlags::SYN).build()).1,
                    );
                    let b =
                        dst_of(&run(dp, env, &tcp(VIP, VIP_PORT, sport, TcpFlags::SYN).build()).1);
                    a == b
                })
                .count()
        });
        let clashes = d
            .iter()
            .find(|(k, _)| *k == "ct_reply_clash")
            .map_or(0, |(_, v)| *v);
        assert!(
            clashes > 20,
            "about half the second flows first hit the same backend: {d:?}"
        );
        assert!(
            same < 30,
            "{same} of 100 client ports share a backend 4-tuple (50 without avoidance)"
        );
    });
}

/// The Node object's addresses become NodePort addresses besides the interface's own;
/// replacing the list removes only what the Node listed, never an interface address.
#[test]
fn node_object_addresses_serve_nodeports_and_leave_interface_addresses_alone() {
    // Another address of the node (e.g. its InternalIP on a loopback-like device).
    const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 77);
    in_node(1, |env, dp| {
        dp.upsert_service(&service("web", Protocol::Tcp, &env.backends))
            .unwrap();
        let syn = |dst| tcp(dst, NODE_PORT, 41000, TcpFlags::SYN).build();
        let (_, d) = delta(dp, |dp| run(dp, env, &syn(NODE_IP)));
        assert!(d.contains(&("xdp_pass_not_ours", 1)), "{d:?}");

        dp.set_node_object_addresses(&[NODE_IP.into(), NODE.into()])
            .unwrap();
        let (verdict, out) = run(dp, env, &syn(NODE_IP));
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(
            dst_of(&out),
            SocketAddr::V4(SocketAddrV4::new(env.backends[0], TARGET_PORT))
        );
        verify_checksums(&out).unwrap();
        let listed = dp.node_addresses().unwrap();
        assert!(listed.contains(&(NODE_IP.into(), true)), "{listed:?}");
        assert!(
            listed.contains(&(NODE.into(), false)),
            "the interface's own address stays an interface entry: {listed:?}"
        );

        // The Node lists neither any more: its address goes, the interface's stays.
        dp.set_node_object_addresses(&[]).unwrap();
        let (_, d) = delta(dp, |dp| run(dp, env, &syn(NODE_IP)));
        assert!(d.contains(&("xdp_pass_not_ours", 1)), "{d:?}");
        let (verdict, out) = run(dp, env, &syn(NODE));
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(
            dst_of(&out),
            SocketAddr::V4(SocketAddrV4::new(env.backends[0], TARGET_PORT))
        );
    });
}

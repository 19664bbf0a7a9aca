//! Packet tier, the conntrack lifecycle: every TCP state transition (SYN table, confirmation
//! into the established table, FIN/RST closing), timeouts (short ones, waiting on the
//! monotonic clock the data path reads), expired entries selected afresh, reverse NAT only
//! while the flow is alive, a direct connection that reuses the client port, separate tables
//! for TCP, unconfirmed TCP and UDP (a SYN flood and UDP churn never evict confirmed flows),
//! generations (a reused backend id never inherits flows) and the background GC. Exact
//! output bytes and checksums wherever a packet is translated.

mod common;

use std::time::{Duration, Instant};

use common::*;
use lab::packet::{PacketBuilder, TcpFlags, verify_checksums};
use lb_userspace::{ConntrackConfig, DataplaneConfig, Protocol};

fn config(ct: ConntrackConfig) -> DataplaneConfig {
    DataplaneConfig {
        conntrack: ct,
        ..DataplaneConfig::default()
    }
}

/// Seconds of CLOCK_MONOTONIC, the clock `bpf_ktime_get_ns` reads.
fn monotonic_s() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64
}

/// Waits until the data path's clock has moved `secs` whole seconds past now: a timeout of
/// `secs - 1` has then run for any entry seen now. The event waited for is the clock itself.
fn let_seconds_pass(secs: u64) {
    let until = monotonic_s() + secs;
    let deadline = Instant::now() + Duration::from_secs(secs + 2);
    while monotonic_s() < until {
        assert!(Instant::now() < deadline, "the monotonic clock stalled");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The reply of the backend to the client for `sport`, with `flags`.
fn from_backend(env: &Env, sport: u16, flags: TcpFlags) -> Vec<u8> {
    PacketBuilder::new()
        .ipv4(env.backends[0], CLIENT)
        .tcp(TARGET_PORT, sport)
        .seq(5000)
        .ack(1001)
        .tcp_flags(flags)
        .build()
}

/// The same reply as the client must see it through the NodePort.
fn as_from_nodeport(sport: u16, flags: TcpFlags) -> Vec<u8> {
    PacketBuilder::new()
        .ipv4(NODE, CLIENT)
        .tcp(NODE_PORT, sport)
        .seq(5000)
        .ack(1001)
        .tcp_flags(flags)
        .build()
}

/// Live flows by (table, state) from a fresh GC pass.
fn flows(dp: &lb_userspace::Dataplane) -> Vec<(String, String, u64)> {
    dp.conntrack_gc_pass().unwrap();
    dp.conntrack_stats().flows
}

fn flow(table: &str, state: &str, n: u64) -> (String, String, u64) {
    (table.to_string(), state.to_string(), n)
}

#[test]
fn conntrack_tcp_moves_from_the_syn_table_to_established_then_closing() {
    in_node(1, |env, dp| {
        dp.upsert_service(&service("web", Protocol::Tcp, &env.backends))
            .unwrap();
        let sport = 50000;
        let ((_, out), d) = delta(dp, |dp| {
            run(dp, env, &tcp(NODE, NODE_PORT, sport, TcpFlags::SYN).build())
        });
        assert_eq!(
            out,
            tcp(env.backends[0], TARGET_PORT, sport, TcpFlags::SYN).build()
        );
        verify_checksums(&out).unwrap();
        assert!(d.contains(&("ct_new", 1)), "{d:?}");
        assert_eq!(flows(dp), [flow("tcp_syn", "new", 1)]);
        // A client packet before the backend answered stays unconfirmed.
        let ((_, _), d) = delta(dp, |dp| {
            run(dp, env, &tcp(NODE, NODE_PORT, sport, TcpFlags::ACK).build())
        });
        assert!(
            d.contains(&("ct_hit", 1)) && !d.contains(&("ct_confirmed", 1)),
            "{d:?}"
        );
        // The SYN-ACK is translated back...
        let syn_ack = TcpFlags::SYN | TcpFlags::ACK;
        let out = dp.test_tc(&from_backend(env, sport, syn_ack)).unwrap();
        assert_eq!(out.data, as_from_nodeport(sport, syn_ack));
        verify_checksums(&out.data).unwrap();
        // ...and the client's next packet confirms the flow: established table.
        let ((_, out), d) = delta(dp, |dp| {
            run(dp, env, &tcp(NODE, NODE_PORT, sport, TcpFlags::ACK).build())
        });
        assert_eq!(
            out,
            tcp(env.backends[0], TARGET_PORT, sport, TcpFlags::ACK).build()
        );
        assert!(d.contains(&("ct_confirmed", 1)), "{d:?}");
        assert_eq!(flows(dp), [flow("tcp", "established", 1)]);
        // Later packets hit the established table and keep the backend.
        let ((_, out), d) = delta(dp, |dp| {
            run(dp, env, &tcp(NODE, NODE_PORT, sport, TcpFlags::ACK).build())
        });
        assert_eq!(dst_of(&out).ip(), std::net::IpAddr::V4(env.backends[0]));
        assert!(d.contains(&("ct_hit", 1)), "{d:?}");
        // A FIN from the client: closing. The backend's FIN-ACK is still translated.
        run(
            dp,
            env,
            &tcp(NODE, NODE_PORT, sport, TcpFlags::FIN | TcpFlags::ACK).build(),
        );
        assert_eq!(flows(dp), [flow("tcp", "closing", 1)]);
        let fin_ack = TcpFlags::FIN | TcpFlags::ACK;
        let out = dp.test_tc(&from_backend(env, sport, fin_ack)).unwrap();
        assert_eq!(out.data, as_from_nodeport(sport, fin_ack));
        // A RST from the backend: closed (still translated, so the client learns it).
        let out = dp
            .test_tc(&from_backend(env, sport, TcpFlags::RST))
            .unwrap();
        assert_eq!(out.data, as_from_nodeport(sport, TcpFlags::RST));
        assert_eq!(flows(dp), [flow("tcp", "closed", 1)]);
    });
}

/// After a NodePort flow closed, the client connects straight to the pod from the same
/// address and port: the pod's SYN-ACK (same 4-tuple at the pod) must leave untouched, and
/// so must the rest of that connection.
#[test]
fn conntrack_a_direct_connection_reusing_the_client_port_is_left_alone() {
    in_node(1, |env, dp| {
        dp.upsert_service(&service("web", Protocol::Tcp, &env.backends))
            .unwrap();
        let sport = 50100;
        let syn_ack = TcpFlags::SYN | TcpFlags::ACK;
        run(dp, env, &tcp(NODE, NODE_PORT, sport, TcpFlags::SYN).build());
        dp.test_tc(&from_backend(env, sport, syn_ack)).unwrap();
        run(dp, env, &tcp(NODE, NODE_PORT, sport, TcpFlags::ACK).build());
        run(
            dp,
            env,
            &tcp(NODE, NODE_PORT, sport, TcpFlags::FIN | TcpFlags::ACK).build(),
        );
        dp.test_tc(&from_backend(env, sport, TcpFlags::FIN | TcpFlags::ACK))
            .unwrap();
        // The direct connection's SYN goes to the pod address: not a frontend, untouched.
        let direct_syn = PacketBuilder::new()
            .ipv4(CLIENT, env.backends[0])
            .tcp(sport, TARGET_PORT)
            .seq(9000)
            .tcp_flags(TcpFlags::SYN)
            .build();
        assert_eq!(run(dp, env, &direct_syn), (XDP_PASS, direct_syn.clone()));
        let reply = from_backend(env, sport, syn_ack);
        let (out, d) = delta(dp, |dp| dp.test_tc(&reply).unwrap());
        assert_eq!(
            out.data, reply,
            "the SYN-ACK of the direct connection is not ours"
        );
        assert_eq!(d, vec![("tc_pass_stale", 1)]);
        let data = from_backend(env, sport, TcpFlags::ACK | TcpFlags::PSH);
        let (out, d) = delta(dp, |dp| dp.test_tc(&data).unwrap());
        assert_eq!(out.data, data);
        assert_eq!(d, vec![("tc_pass_not_ours", 1)]);
    });
}

#[test]
fn conntrack_expired_entries_are_new_flows_and_replies_are_not_translated() {
    let ct = ConntrackConfig {
        tcp_syn_seconds: 1,
        tcp_established_seconds: 1,
        other_seconds: 1,
        // The background GC sleeps through the test: the data path's own expiry check is
        // what is tested first; the GC is then stepped by hand.
        gc_interval_millis: 3_600_000,
        ..ConntrackConfig::default()
    };
    in_node_with(1, config(ct), |env, dp| {
        dp.upsert_service(&service("web", Protocol::Tcp, &env.backends))
            .unwrap();
        dp.upsert_service(&service("dns", Protocol::Udp, &env.backends))
            .unwrap();
        let sport = 50200;
        run(dp, env, &tcp(NODE, NODE_PORT, sport, TcpFlags::SYN).build());
        dp.test_tc(&from_backend(env, sport, TcpFlags::SYN | TcpFlags::ACK))
            .unwrap();
        run(dp, env, &tcp(NODE, NODE_PORT, sport, TcpFlags::ACK).build());
        let dns = udp(VIP, VIP_PORT, 5600).build();
        run(dp, env, &dns);
        assert_eq!(
            flows(dp),
            [flow("other", "other", 1), flow("tcp", "established", 1)]
        );
        let_seconds_pass(3);
        // A reply of the expired TCP flow is no longer translated.
        let late = from_backend(env, sport, TcpFlags::ACK);
        let (out, d) = delta(dp, |dp| dp.test_tc(&late).unwrap());
        assert_eq!(out.data, late);
        assert_eq!(d, vec![("tc_pass_stale", 1)]);
        // The next client packet of each flow is a new flow.
        let ((_, out), d) = delta(dp, |dp| {
            run(dp, env, &tcp(NODE, NODE_PORT, sport, TcpFlags::ACK).build())
        });
        assert!(
            d.contains(&("ct_expired", 1)) && d.contains(&("ct_new", 1)),
            "{d:?}"
        );
        assert_eq!(
            out,
            tcp(env.backends[0], TARGET_PORT, sport, TcpFlags::ACK).build()
        );
        let (_, d) = delta(dp, |dp| run(dp, env, &dns));
        assert!(
            d.contains(&("ct_expired", 1)) && d.contains(&("ct_new", 1)),
            "{d:?}"
        );
        // The GC deletes what expires: after the clock moves on again, both tables empty.
        let_seconds_pass(3);
        let before = dp.conntrack_stats().expired;
        dp.conntrack_gc_pass().unwrap();
        dp.conntrack_gc_pass().unwrap();
        let stats = dp.conntrack_stats();
        assert!(stats.expired >= before + 4, "{stats:?}");
        assert!(stats.flows.is_empty(), "{stats:?}");
        assert_eq!(dp.occupancy().unwrap().conntrack, 0);
    });
}

/// A SYN flood from spoofed ports and UDP churn, each many times its own table's size,
/// beside confirmed TCP flows: every confirmed flow keeps its entries and its backend.
#[test]
fn conntrack_syn_flood_and_udp_churn_never_evict_confirmed_tcp_flows() {
    let mut cfg = DataplaneConfig::default();
    cfg.capacities.conntrack_syn = 256;
    cfg.capacities.conntrack_other = 256;
    in_node_with(2, cfg, |env, dp| {
        dp.upsert_service(&service("web", Protocol::Tcp, &env.backends))
            .unwrap();
        dp.upsert_service(&service("dns", Protocol::Udp, &env.backends))
            .unwrap();
        let confirmed: Vec<(u16, std::net::SocketAddr)> = (51000..51020)
            .map(|sport| {
                let (_, out) = run(dp, env, &tcp(NODE, NODE_PORT, sport, TcpFlags::SYN).build());
                let to = dst_of(&out);
                let std::net::IpAddr::V4(b) = to.ip() else {
                    panic!("IPv4")
                };
                let reply = PacketBuilder::new()
                    .ipv4(b, CLIENT)
                    .tcp(TARGET_PORT, sport)
                    .tcp_flags(TcpFlags::SYN | TcpFlags::ACK)
                    .build();
                dp.test_tc(&reply).unwrap();
                run(dp, env, &tcp(NODE, NODE_PORT, sport, TcpFlags::ACK).build());
                (sport, to)
            })
            .collect();
        assert_eq!(flows(dp), [flow("tcp", "established", 20)]);
        // 10x the SYN table, 10x the UDP table.
        for i in 0..1280u32 {
            let spoofed = PacketBuilder::new()
                .ipv4(
                    std::net::Ipv4Addr::new(192, 0, 2, 100 + (i % 100) as u8),
                    NODE,
                )
                .tcp(
                    20000 + (i / 100) as u16 * 1000 + (i % 1000) as u16,
                    NODE_PORT,
                )
                .tcp_flags(TcpFlags::SYN)
                .build();
            run(dp, env, &spoofed);
            run(dp, env, &udp(VIP, VIP_PORT, 10000 + i as u16).build());
        }
        for (sport, to) in &confirmed {
            let ((_, out), d) = delta(dp, |dp| {
                run(
                    dp,
                    env,
                    &tcp(NODE, NODE_PORT, *sport, TcpFlags::ACK).build(),
                )
            });
            assert_eq!(dst_of(&out), *to, "flow {sport} kept its backend");
            assert_eq!(
                d.iter().find(|(r, _)| *r == "ct_hit"),
                Some(&("ct_hit", 1)),
                "{d:?}"
            );
        }
        let stats = {
            dp.conntrack_gc_pass().unwrap();
            dp.conntrack_stats()
        };
        assert!(
            stats.flows.contains(&flow("tcp", "established", 20)),
            "{stats:?}"
        );
        let entries: std::collections::BTreeMap<_, _> = stats.entries.into_iter().collect();
        assert_eq!(entries["tcp"], 40, "both directions of each confirmed flow");
        assert!(
            entries["tcp_syn"] <= 256 && entries["other"] <= 256,
            "{entries:?}"
        );
    });
}

/// A backend removed and its id given to a new backend of the service: a flow tracked on the
/// old one names the old generation, so it is selected afresh (never sent to the new backend
/// as if it were its own).
#[test]
fn conntrack_a_reused_backend_id_does_not_inherit_flows() {
    in_node(2, |env, dp| {
        let mut spec = service("dns", Protocol::Udp, &env.backends[..1]);
        dp.upsert_service(&spec).unwrap();
        let id_of = |dp: &lb_userspace::Dataplane| dp.dump()[0].backends[0].id;
        let old_id = id_of(dp);
        let pkt = udp(VIP, VIP_PORT, 5700).build();
        run(dp, env, &pkt);
        // Remove the backend, release its id, add another: it gets the freed id.
        spec.backends.clear();
        dp.upsert_service(&spec).unwrap();
        dp.purge_stale().unwrap();
        let fresh = service("dns", Protocol::Udp, &env.backends[1..]);
        dp.upsert_service(&fresh).unwrap();
        assert_eq!(id_of(dp), old_id, "the freed id is reused at once");
        let ((_, out), d) = delta(dp, |dp| run(dp, env, &pkt));
        assert_eq!(
            dst_of(&out).ip(),
            std::net::IpAddr::V4(env.backends[1]),
            "{d:?}"
        );
        assert!(d.contains(&("ct_stale_backend", 1)), "{d:?}");
        assert!(d.contains(&("ct_new", 1)), "{d:?}");
    });
}

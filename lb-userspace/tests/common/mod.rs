//! Shared fixture of the packet tests: a lab's node namespace, a loaded data path, packet
//! builders for the standard client/frontend/backend addresses, counter deltas.
#![allow(dead_code)] // each test crate uses a different subset

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use lab::{
    Lab,
    packet::{MacAddr, PacketBuilder, ParsedPacket, TcpFlags, Transport},
};
use lb_userspace::{BackendSpec, Dataplane, DataplaneConfig, Frontend, Protocol, ServiceSpec};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;
pub const TC_ACT_OK: u32 = 0;

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const NODE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
pub const NODE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x203, 0, 0, 0, 0, 0x10);
pub const NODE_PORT: u16 = 30080;
pub const VIP_PORT: u16 = 80;
pub const TARGET_PORT: u16 = 8080;

/// What a case knows about the lab, gathered before entering the node namespace.
pub struct Env {
    pub uplink: String,
    pub uplink_ifindex: u32,
    pub backends: Vec<Ipv4Addr>,
    /// The pods' IPv6 addresses (`2001:db8:100:<i>::2`).
    pub backends6: Vec<Ipv6Addr>,
    pub pod_links: Vec<String>,
    /// (node-side MAC, pod-side MAC) of each pod link.
    pub pod_macs: Vec<(MacAddr, MacAddr)>,
}

/// Builds a lab with `n` backends and runs `f` in its node namespace with a loaded (not
/// attached) data path whose NodePort addresses are the uplink's.
///
/// The background conntrack GC sleeps through the test (an hour between runs): a test that
/// counts flows or expects an entry gone steps it with `Dataplane::conntrack_gc_pass`, so no
/// packet races a GC pass.
pub fn in_node<R: Send>(n: usize, f: impl FnOnce(&Env, &mut Dataplane) -> R + Send) -> R {
    let mut cfg = DataplaneConfig::default();
    cfg.conntrack.gc_interval_millis = 3_600_000;
    // Packet tests run in parallel, each with its own data path: capacities of a small node
    // (the defaults for 10 000 services take ~140 MiB of kernel memory each).
    cfg.capacities.services = 4096;
    cfg.capacities.frontends = 16384;
    cfg.capacities.backends = 16384;
    cfg.capacities.slots = 1 << 20;
    in_node_with(n, cfg, f)
}

/// [`in_node`] with a given data-path configuration.
pub fn in_node_with<R: Send>(
    n: usize,
    cfg: DataplaneConfig,
    f: impl FnOnce(&Env, &mut Dataplane) -> R + Send,
) -> R {
    let lab = Lab::builder().backends(n).build().expect("lab");
    let env = Env {
        uplink: lab.node_uplink().to_string(),
        uplink_ifindex: lab.node_uplink_ifindex().expect("ifindex"),
        backends: (0..n).map(|i| lab.backend_addr(i)).collect(),
        backends6: (0..n).map(|i| lab.backend_addr6(i)).collect(),
        pod_links: (0..n).map(|i| lab.node_pod_link(i)).collect(),
        pod_macs: (0..n)
            .map(|i| (lab.node_pod_mac(i), lab.pod_mac(i)))
            .collect(),
    };
    lab.node()
        .enter(|| {
            let mut dp = Dataplane::load(cfg).expect("load data path");
            for a in lb_userspace::attach::interface_addresses(&env.uplink).expect("addresses") {
                dp.add_node_address(a).expect("node address");
            }
            f(&env, &mut dp)
        })
        .expect("enter node namespace")
}

pub fn service(name: &str, proto: Protocol, backends: &[Ipv4Addr]) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        protocol: proto,
        frontends: vec![
            Frontend::NodePort(NODE_PORT),
            Frontend::Address(SocketAddr::V4(SocketAddrV4::new(VIP, VIP_PORT))),
        ],
        backends: backends
            .iter()
            .map(|b| BackendSpec::ready(SocketAddr::V4(SocketAddrV4::new(*b, TARGET_PORT))))
            .collect(),
        affinity: None,
        ..Default::default()
    }
}

/// [`service`] over IPv6: NodePort and `[VIP6]:80` to IPv6 backends.
pub fn service6(name: &str, proto: Protocol, backends: &[Ipv6Addr]) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        protocol: proto,
        frontends: vec![
            Frontend::NodePort(NODE_PORT),
            Frontend::Address(SocketAddr::V6(SocketAddrV6::new(VIP6, VIP_PORT, 0, 0))),
        ],
        backends: backends
            .iter()
            .map(|b| BackendSpec::ready(SocketAddr::V6(SocketAddrV6::new(*b, TARGET_PORT, 0, 0))))
            .collect(),
        affinity: None,
        ..Default::default()
    }
}

/// [`tcp`] over IPv6, from [`CLIENT6`].
pub fn tcp6(dst: Ipv6Addr, dport: u16, sport: u16, flags: TcpFlags) -> PacketBuilder {
    PacketBuilder::new()
        .ipv6(CLIENT6, dst)
        .tcp(sport, dport)
        .seq(1000)
        .tcp_flags(flags)
        .payload(b"GET / HTTP/1.1\r\n\r\n")
}

/// [`udp`] over IPv6, from [`CLIENT6`].
pub fn udp6(dst: Ipv6Addr, dport: u16, sport: u16) -> PacketBuilder {
    PacketBuilder::new()
        .ipv6(CLIENT6, dst)
        .udp(sport, dport)
        .payload(b"ping over udp")
}

pub fn tcp(dst: Ipv4Addr, dport: u16, sport: u16, flags: TcpFlags) -> PacketBuilder {
    PacketBuilder::new()
        .ipv4(CLIENT, dst)
        .tcp(sport, dport)
        .seq(1000)
        .tcp_flags(flags)
        .payload(b"GET / HTTP/1.1\r\n\r\n")
}

pub fn udp(dst: Ipv4Addr, dport: u16, sport: u16) -> PacketBuilder {
    PacketBuilder::new()
        .ipv4(CLIENT, dst)
        .udp(sport, dport)
        .payload(b"ping over udp")
}

pub fn counters(dp: &Dataplane) -> std::collections::BTreeMap<&'static str, u64> {
    dp.reasons()
        .expect("reasons")
        .into_iter()
        .map(|(r, v)| (r.label(), v))
        .collect()
}

/// The difference of the reason counters before and after `f`, non-zero entries only.
pub fn delta<R>(
    dp: &mut Dataplane,
    f: impl FnOnce(&mut Dataplane) -> R,
) -> (R, Vec<(&'static str, u64)>) {
    let before = counters(dp);
    let r = f(dp);
    let after = counters(dp);
    let d = after
        .iter()
        .filter(|(k, v)| before[*k] != **v)
        .map(|(k, v)| (*k, v - before[*k]))
        .collect();
    (r, d)
}

pub fn run(dp: &Dataplane, env: &Env, pkt: &[u8]) -> (u32, Vec<u8>) {
    let out = dp.test_xdp(pkt, env.uplink_ifindex, 1).expect("test run");
    (out.verdict, out.data)
}

pub fn dst_of(pkt: &[u8]) -> SocketAddr {
    let p = ParsedPacket::parse(pkt).expect("parse output");
    let port = match p.transport.as_ref().expect("transport") {
        Transport::Tcp(t) => t.dst_port,
        Transport::Udp(u) => u.dst_port,
        _ => panic!("not tcp/udp"),
    };
    SocketAddr::new(p.dst_ip().expect("ip"), port)
}

//! kube-proxy's rule sets (`bench::kube_proxy`): the generated text (pure), loading it into a
//! fresh namespace with each tool and reading it back (root), and one UDP datagram through a
//! NodePort of each backend (root).

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};

use bench::kube_proxy::{
    self, Config, EndpointChange, Protocol, Service,
    iptables::{self, Backend},
    names, nftables,
};
use lab::{Lab, Netns};

fn service(ns: &str, name: &str, port_name: &str, protocol: Protocol) -> Service {
    Service {
        namespace: ns.into(),
        name: name.into(),
        port_name: port_name.into(),
        protocol,
        cluster_ip: Ipv4Addr::new(198, 18, 0, 1),
        port: 80,
        node_port: None,
        target_port: 80,
        endpoints: vec![],
        external_traffic_policy_local: false,
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped (needs root)");
            return;
        }
    };
}

/// Chain names of services whose names kube-proxy's own tests and every cluster show.
#[test]
fn chain_names_are_hashed_as_kube_proxy_hashes_them() {
    let svc1 = service("ns1", "svc1", "p80", Protocol::Tcp);
    assert_eq!(names::svc_chain(&svc1), "KUBE-SVC-XPGD46QRK7WJZT7O");
    let ep = SocketAddrV4::new(Ipv4Addr::new(10, 180, 0, 1), 80);
    assert_eq!(names::sep_chain(&svc1, ep), "KUBE-SEP-SXIVWICOYRO3J4NJ");
    // An unnamed port: `ns1/svc1`.
    let unnamed = service("ns1", "svc1", "", Protocol::Tcp);
    assert_eq!(names::svc_chain(&unnamed), "KUBE-SVC-AQI2S6QIMU7PVVRP");
    let ep = SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, 1), 80);
    assert_eq!(names::sep_chain(&unnamed, ep), "KUBE-SEP-3JOIVZTXZZRGORX4");
    // Every cluster's DNS and API server services.
    let dns = service("kube-system", "kube-dns", "dns", Protocol::Udp);
    assert_eq!(names::svc_chain(&dns), "KUBE-SVC-TCOU7JCQXEZGVUNU");
    let api = service("default", "kubernetes", "https", Protocol::Tcp);
    assert_eq!(names::svc_chain(&api), "KUBE-SVC-NPX46M4PTMTKRN6Y");
    // The other prefixes share the service hash.
    assert_eq!(names::ext_chain(&svc1), "KUBE-EXT-XPGD46QRK7WJZT7O");
    assert_eq!(names::svl_chain(&svc1), "KUBE-SVL-XPGD46QRK7WJZT7O");

    // nftables mode (the examples in kube-proxy's comments).
    assert_eq!(names::nft_service_base(&svc1), "ULMVA6XW-ns1/svc1/tcp/p80");
    let ep = SocketAddrV4::new(Ipv4Addr::new(10, 180, 0, 1), 80);
    assert_eq!(
        names::nft_endpoint_base(&svc1, ep),
        "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
    );
    assert_eq!(
        names::nft_service_chain(&svc1),
        "service-ULMVA6XW-ns1/svc1/tcp/p80"
    );
}

#[test]
fn probabilities_are_one_over_the_endpoints_left_with_ten_decimals() {
    assert_eq!(iptables::probability(2), "0.5000000000");
    assert_eq!(iptables::probability(3), "0.3333333333");
    assert_eq!(iptables::probability(10), "0.1000000000");

    let mut s = kube_proxy::synthetic(1, 3);
    s[0].node_port = Some(30000);
    let text = iptables::full(&s, &Config::default());
    let svc = names::svc_chain(&s[0]);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(&format!("-A {svc} ")) && l.contains("KUBE-SEP-"))
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].contains("--probability 0.3333333333 -j KUBE-SEP-"));
    assert!(lines[1].contains("--probability 0.5000000000 -j KUBE-SEP-"));
    assert!(!lines[2].contains("statistic"));
    // Small clusters keep the endpoint comments, as kube-proxy writes them.
    assert!(
        lines[0].contains("-m comment --comment \"bench/svc-00000:http -> 198.19.0.1:8080\""),
        "{}",
        lines[0]
    );
}

/// A large cluster (more than 1 000 endpoints) leaves the per-endpoint comments out.
#[test]
fn large_clusters_drop_the_endpoint_comments() {
    let s = kube_proxy::synthetic(101, 10);
    assert!(kube_proxy::large_cluster(&s));
    let text = iptables::full(&s, &Config::default());
    let sep_rule = text
        .lines()
        .find(|l| l.starts_with("-A KUBE-SEP-"))
        .expect("a KUBE-SEP rule");
    assert!(!sep_rule.contains("comment"), "{sep_rule}");
    // The KUBE-SERVICES rules keep theirs.
    assert!(
        text.contains("-A KUBE-SERVICES -m comment --comment \"bench/svc-00100:http cluster IP\"")
    );
}

/// Replaces endpoint `j` of service `i` with `new`, returning the change.
fn replace(services: &mut [Service], i: usize, j: usize, new: Ipv4Addr) -> EndpointChange {
    let old = std::mem::replace(&mut services[i].endpoints[j], new);
    EndpointChange {
        service: i,
        removed: vec![old],
    }
}

#[test]
fn iptables_partial_rewrites_the_top_level_chains_and_only_the_changed_service() {
    let mut s = kube_proxy::synthetic(5, 2);
    s[1].node_port = Some(30001);
    let old = SocketAddrV4::new(s[2].endpoints[0], 8080);
    let old_chain = names::sep_chain(&s[2], old);
    let change = replace(&mut s, 2, 0, kube_proxy::synthetic_endpoint(1000));
    let text = iptables::partial(&s, &[change], &Config::default());

    let chain_lines: Vec<&str> = text.lines().filter(|l| l.starts_with(':')).collect();
    let svc2 = names::svc_chain(&s[2]);
    let new_chain = names::sep_chain(&s[2], SocketAddrV4::new(s[2].endpoints[0], 8080));
    for always in [
        ":KUBE-SERVICES",
        ":KUBE-EXTERNAL-SERVICES",
        ":KUBE-FORWARD",
        ":KUBE-NODEPORTS",
        ":KUBE-POSTROUTING",
        ":KUBE-MARK-MASQ",
    ] {
        assert!(
            chain_lines.iter().any(|l| l.starts_with(always)),
            "{always} missing"
        );
    }
    assert!(chain_lines.contains(&format!(":{svc2} - [0:0]").as_str()));
    assert!(chain_lines.contains(&format!(":{new_chain} - [0:0]").as_str()));
    // The unchanged services' own chains are left alone...
    for i in [0, 1, 3, 4] {
        assert!(!text.contains(&format!(":{}", names::svc_chain(&s[i]))));
        assert!(!text.contains(&format!("-A {} ", names::svc_chain(&s[i]))));
    }
    assert!(!text.contains(&format!(":{}", names::ext_chain(&s[1]))));
    // ...but every service keeps its KUBE-SERVICES rule (and node port).
    for svc in &s {
        assert!(text.contains(&format!("-j {}\n", names::svc_chain(svc))));
    }
    assert!(text.contains(&format!("--dport 30001 -j {}", names::ext_chain(&s[1]))));
    // The stale endpoint chain is flushed and deleted (small cluster).
    assert!(text.contains(&format!(":{old_chain} - [0:0]\n")));
    assert!(text.contains(&format!("-X {old_chain}\n")));
    // The node-port jump stays the last KUBE-SERVICES rule.
    let last = text
        .lines()
        .rfind(|l| l.starts_with("-A KUBE-SERVICES "))
        .expect("KUBE-SERVICES rules");
    assert!(last.ends_with("-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"));
}

#[test]
fn nftables_partial_writes_only_the_changed_service() {
    let mut s = kube_proxy::synthetic(5, 2);
    s[1].node_port = Some(30001);
    let old = SocketAddrV4::new(s[1].endpoints[1], 8080);
    let old_chain = names::nft_endpoint_chain(&s[1], old);
    let change = replace(&mut s, 1, 1, kube_proxy::synthetic_endpoint(1000));
    let text = nftables::partial(&s, &[change], &Config::default());

    let svc1 = names::nft_service_chain(&s[1]);
    assert!(text.contains(&format!(
        "add chain ip kube-proxy {svc1}\nflush chain ip kube-proxy {svc1}\n"
    )));
    assert!(text.contains(&format!(
        "flush chain ip kube-proxy {}\n",
        names::nft_external_chain(&s[1])
    )));
    assert!(text.contains("numgen random mod 2 vmap"));
    assert!(text.contains(&format!("dnat to {}:8080", s[1].endpoints[1])));
    assert!(text.contains(&format!("flush chain ip kube-proxy {old_chain}\n")));
    // No map element changes (the service still has endpoints), no other service.
    assert!(!text.contains("element"), "{text}");
    for i in [0, 2, 3, 4] {
        assert!(!text.contains(&names::nft_service_base(&s[i])));
    }
    assert_eq!(
        nftables::delete_chains(std::slice::from_ref(&old_chain)),
        format!("delete chain ip kube-proxy {old_chain}\n")
    );
}

/// The full iptables state of `n` services with 2 endpoints each, loaded with `backend`, then
/// one endpoint change as kube-proxy applies it.
fn iptables_roundtrip(backend: Backend, n: usize) {
    let ns = Netns::new("ipt").expect("namespace");
    let mut s = kube_proxy::synthetic(n, 2);
    s[0].node_port = Some(30000);
    s[n - 1].node_port = Some(30001);
    s[n - 1].external_traffic_policy_local = true;
    let cfg = Config::default();
    let full = iptables::full(&s, &cfg);
    ns.enter(|| iptables::apply(&full, backend))
        .expect("enter")
        .unwrap_or_else(|e| panic!("{}: full of {n}: {e}", backend.label()));
    let nat = ns
        .enter(|| iptables::save(backend, "nat"))
        .expect("enter")
        .expect("iptables-save");
    for svc in [&s[0], &s[n / 2], &s[n - 1]] {
        let chain = names::svc_chain(svc);
        assert!(nat.contains(&format!(":{chain} - ")), "{chain} missing");
        assert!(nat.contains(&format!("-d {}/32", svc.cluster_ip)));
        for ep in svc.endpoint_addrs() {
            assert!(nat.contains(&format!("-j DNAT --to-destination {ep}")));
        }
    }
    assert!(nat.contains(&format!(":{} - ", names::ext_chain(&s[0]))));
    assert!(nat.contains(&format!(":{} - ", names::svl_chain(&s[n - 1]))));
    assert!(nat.contains(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
    ));
    assert!(
        nat.contains("--probability 0.50000000000"),
        "iptables-save prints 11 decimals"
    );
    let filter = ns
        .enter(|| iptables::save(backend, "filter"))
        .expect("enter")
        .expect("iptables-save");
    assert!(
        filter.contains("-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\"")
    );

    // One endpoint of a middle service replaced.
    let i = n / 2;
    let old = SocketAddrV4::new(s[i].endpoints[1], 8080);
    let new_ip = kube_proxy::synthetic_endpoint(60_000);
    let change = replace(&mut s, i, 1, new_ip);
    let partial = iptables::partial(&s, &[change], &cfg);
    ns.enter(|| iptables::apply(&partial, backend))
        .expect("enter")
        .unwrap_or_else(|e| panic!("{}: partial of {n}: {e}", backend.label()));
    let nat = ns
        .enter(|| iptables::save(backend, "nat"))
        .expect("enter")
        .expect("iptables-save");
    let new = SocketAddrV4::new(new_ip, 8080);
    assert!(nat.contains(&format!("-j DNAT --to-destination {new}")));
    let svc = names::svc_chain(&s[i]);
    let old_chain = names::sep_chain(&s[i], old);
    let new_chain = names::sep_chain(&s[i], new);
    assert!(nat.contains(&format!("-A {svc} ")) && nat.contains(&format!("-j {new_chain}")));
    assert!(
        !nat.contains(&format!("-j {old_chain}")),
        "the old endpoint is still jumped to"
    );
    if kube_proxy::large_cluster(&s) {
        // Left for the periodic cleanup, unreferenced.
        assert!(nat.contains(&format!(":{old_chain} - ")));
    } else {
        assert!(!nat.contains(&old_chain), "the stale chain was not deleted");
        assert!(!nat.contains(&format!("--to-destination {old}\n")));
    }
    // The other services are all still there.
    assert_eq!(
        nat.lines()
            .filter(|l| l.starts_with("-A KUBE-SERVICES "))
            .count(),
        n + 1
    );
}

#[test]
fn iptables_nft_full_and_partial_load_and_read_back() {
    require_root!();
    iptables_roundtrip(Backend::Nft, 3);
    iptables_roundtrip(Backend::Nft, 1000);
}

#[test]
fn iptables_legacy_full_and_partial_load_and_read_back() {
    require_root!();
    iptables_roundtrip(Backend::Legacy, 3);
    iptables_roundtrip(Backend::Legacy, 1000);
}

fn nftables_roundtrip(n: usize) {
    let ns = Netns::new("nft").expect("namespace");
    let mut s = kube_proxy::synthetic(n, 2);
    s[0].node_port = Some(30000);
    s[n - 1].node_port = Some(30001);
    s[n - 1].external_traffic_policy_local = true;
    let cfg = Config::default();
    let full = nftables::full(&s, &cfg);
    ns.enter(|| nftables::apply(&full))
        .expect("enter")
        .unwrap_or_else(|e| panic!("nft: full of {n}: {e}"));
    let table = ns.enter(nftables::list).expect("enter").expect("nft list");
    for svc in [&s[0], &s[n / 2], &s[n - 1]] {
        let chain = names::nft_service_chain(svc);
        assert!(
            table.contains(&format!("chain {chain} {{")),
            "{chain} missing"
        );
        assert!(table.contains(&format!("{} . tcp . 80 : goto {chain}", svc.cluster_ip)));
        for ep in svc.endpoint_addrs() {
            assert!(table.contains(&format!("dnat to {ep}")));
        }
    }
    assert!(table.contains(&format!(
        "tcp . 30000 : goto {}",
        names::nft_external_chain(&s[0])
    )));
    assert!(table.contains(&format!("chain {} {{", names::nft_local_chain(&s[n - 1]))));
    assert!(table.contains("fib daddr type local"));
    assert!(table.contains("hook prerouting priority dstnat"));

    let i = n / 2;
    let old = SocketAddrV4::new(s[i].endpoints[0], 8080);
    let old_chain = names::nft_endpoint_chain(&s[i], old);
    let new_ip = kube_proxy::synthetic_endpoint(60_000);
    let change = replace(&mut s, i, 0, new_ip);
    let stale = nftables::stale_chains(&s[i], &change.removed);
    assert_eq!(stale, vec![old_chain.clone()]);
    let partial = nftables::partial(&s, &[change], &cfg);
    ns.enter(|| nftables::apply(&partial))
        .expect("enter")
        .unwrap_or_else(|e| panic!("nft: partial of {n}: {e}"));
    let table = ns.enter(nftables::list).expect("enter").expect("nft list");
    let new = SocketAddrV4::new(new_ip, 8080);
    assert!(table.contains(&format!("dnat to {new}")));
    assert!(
        !table.contains(&format!("dnat to {old}\n")),
        "the old endpoint still DNATs"
    );
    assert!(
        !table.contains(&format!("goto {old_chain}")),
        "the old endpoint is still chosen"
    );
    // Flushed now, deleted by a later sync.
    assert!(table.contains(&format!("chain {old_chain} {{")));
    ns.enter(|| nftables::apply(&nftables::delete_chains(&stale)))
        .expect("enter")
        .expect("deleting the stale chain");
    let table = ns.enter(nftables::list).expect("enter").expect("nft list");
    assert!(!table.contains(&old_chain));
    assert_eq!(
        table.matches("chain service-").count()
            - table.matches("chain service-endpoints-check").count(),
        n,
        "every service keeps its chain"
    );
}

#[test]
fn nftables_full_and_partial_load_and_read_back() {
    require_root!();
    nftables_roundtrip(3);
    nftables_roundtrip(1000);
}

/// Which rules carry the datagram.
#[derive(Clone, Copy, Debug)]
enum Rules {
    Iptables(Backend),
    Nftables,
}

/// A UDP NodePort (30090 -> 9000) with the lab's two pods as endpoints, beside 999 synthetic
/// services: a datagram from the client to the node's address reaches one pod's socket,
/// masqueraded to the node's address on that pod's link (Cluster policy).
fn udp_through_node_port(rules: Rules) {
    use std::os::fd::AsRawFd as _;

    let lab = Lab::builder().backends(2).build().expect("lab");
    let mut services = kube_proxy::synthetic(999, 2);
    services.push(Service {
        namespace: "lab".into(),
        name: "udp-echo".into(),
        port_name: "udp".into(),
        protocol: Protocol::Udp,
        cluster_ip: Ipv4Addr::new(198, 18, 255, 1),
        port: 90,
        node_port: Some(30090),
        target_port: 9000,
        endpoints: vec![lab.backend_addr(0), lab.backend_addr(1)],
        external_traffic_policy_local: false,
    });
    let cfg = Config::default();
    match rules {
        Rules::Iptables(backend) => lab
            .node()
            .enter(|| iptables::apply(&iptables::full(&services, &cfg), backend))
            .expect("enter")
            .expect("iptables-restore"),
        Rules::Nftables => lab
            .node()
            .enter(|| nftables::apply(&nftables::full(&services, &cfg)))
            .expect("enter")
            .expect("nft -f"),
    };
    let pods: Vec<UdpSocket> = (0..2)
        .map(|i| {
            lab.backend(i)
                .enter(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 9000)))
                .expect("enter")
                .expect("bind in the pod")
        })
        .collect();
    let client = lab
        .client()
        .enter(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
        .expect("enter")
        .expect("bind in the client");
    let payload = format!("through {rules:?}");
    client
        .send_to(payload.as_bytes(), (lab.node_addr(), 30090))
        .expect("send");

    // Whichever pod the rules chose: wait for either socket, 5 s at most.
    let mut fds: Vec<libc::pollfd> = pods
        .iter()
        .map(|p| libc::pollfd {
            fd: p.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: poll(2) on two valid descriptors owned by `pods`, which outlive the call.
    let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 5000) };
    assert!(ready > 0, "{rules:?}: nothing reached a pod within 5 s");
    let i = fds
        .iter()
        .position(|f| f.revents & libc::POLLIN != 0)
        .expect("a readable pod socket");
    let mut buf = [0u8; 256];
    let (len, from) = pods[i].recv_from(&mut buf).expect("recv");
    assert_eq!(&buf[..len], payload.as_bytes());
    assert_eq!(
        from.ip(),
        std::net::IpAddr::V4(lab.node_pod_addr(i)),
        "{rules:?}: not masqueraded"
    );
}

#[test]
fn udp_reaches_the_pod_through_iptables_nft_rules() {
    require_root!();
    udp_through_node_port(Rules::Iptables(Backend::Nft));
}

#[test]
fn udp_reaches_the_pod_through_iptables_legacy_rules() {
    require_root!();
    udp_through_node_port(Rules::Iptables(Backend::Legacy));
}

#[test]
fn udp_reaches_the_pod_through_nftables_rules() {
    require_root!();
    udp_through_node_port(Rules::Nftables);
}

/// The deadline holds while the tool is still reading its input (it loads as it reads, so
/// writing the input blocks as long as it works): iptables-nft-restore takes seconds for
/// 1 000 services x 10, far more than the 300 ms allowed here.
#[test]
fn an_apply_is_killed_at_its_deadline() {
    require_root!();
    let ns = Netns::new("dl").expect("namespace");
    let full = iptables::full(&kube_proxy::synthetic(1000, 10), &Config::default());
    let opts = kube_proxy::RunOptions {
        timeout: std::time::Duration::from_millis(300),
        cgroup_procs: None,
    };
    let t = std::time::Instant::now();
    let r = ns
        .enter(|| iptables::apply_with(&full, Backend::Nft, &opts))
        .expect("enter");
    assert!(matches!(r, Err(kube_proxy::Error::Timeout { .. })), "{r:?}");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        t.elapsed()
    );
}

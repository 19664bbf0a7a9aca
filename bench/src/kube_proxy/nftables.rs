//! kube-proxy's nftables mode: the `nft -f` transaction of a sync for `table ip kube-proxy`,
//! and applying it.
//!
//! Dispatch is by verdict maps, so a packet's cost does not grow with the number of services:
//! `nat-prerouting` / `nat-output` jump to `services`, which looks the destination up in
//! `service-ips` (cluster IP . protocol . port) and, for local destinations
//! (`fib daddr type local`), in `service-nodeports` (protocol . port); the verdict is
//! `goto service-…` (or `external-…` for node ports), whose `numgen random mod N vmap` picks
//! an `endpoint-…` chain that marks hairpin traffic for masquerade and DNATs. Every new
//! connection also passes the filter chains: `service-endpoints-check` /
//! `nodeport-endpoints-check` (the `no-endpoint-*` maps: reject), `firewall-check` (the
//! `firewall-ips` map) and `cluster-ips-check` (unknown ports of cluster IPs: reject; unknown
//! cluster IPs of the service CIDR: drop).
//!
//! A full sync (re)creates the table, its base chains, sets and maps, flushes the maps and
//! writes every element, chain and rule. A partial sync writes only the changed services'
//! chains (`add chain` + `flush chain`, then their rules) and the map elements that changed
//! (none when only endpoints changed), and flushes the endpoint chains that became stale;
//! kube-proxy deletes those in a later sync once they have been stale for a second (an older
//! kernel notices a chain is unreferenced only a little after its map element went), which
//! [`delete_chains`] writes.
//!
//! Priorities are written as numbers (dstnat = -100, srcnat = 100): nft before 1.0.7 accepts
//! `dstnat` only at the prerouting hook, and knftables does the same translation.

use std::fmt::Write as _;
use std::net::SocketAddrV4;
use std::time::Duration;

use super::process::{self, RunOptions};
use super::{Config, EndpointChange, Error, Service, names};

/// The table: `table ip kube-proxy`.
pub const TABLE: &str = "kube-proxy";

/// (name, type, hook, priority) of kube-proxy's base chains.
const BASE_CHAINS: [(&str, &str, &str, i32); 8] = [
    ("filter-prerouting", "filter", "prerouting", -110),
    ("filter-input", "filter", "input", -110),
    ("filter-forward", "filter", "forward", -110),
    ("filter-output", "filter", "output", -110),
    ("filter-output-post-dnat", "filter", "output", -90),
    ("nat-prerouting", "nat", "prerouting", -100),
    ("nat-output", "nat", "output", -100),
    ("nat-postrouting", "nat", "postrouting", 100),
];

/// (chain, from, match) of the jumps from the base chains.
const JUMPS: [(&str, &str, &str); 11] = [
    ("nodeport-endpoints-check", "filter-input", "ct state new"),
    ("service-endpoints-check", "filter-input", "ct state new"),
    ("service-endpoints-check", "filter-forward", "ct state new"),
    ("service-endpoints-check", "filter-output", "ct state new"),
    ("firewall-check", "filter-prerouting", "ct state new"),
    ("firewall-check", "filter-output", "ct state new"),
    ("services", "nat-output", ""),
    ("services", "nat-prerouting", ""),
    ("masquerading", "nat-postrouting", ""),
    ("cluster-ips-check", "filter-forward", "ct state new"),
    (
        "cluster-ips-check",
        "filter-output-post-dnat",
        "ct state new",
    ),
];

/// The transaction of kube-proxy's first (full) sync of `services`.
pub fn full(services: &[Service], config: &Config) -> String {
    let mut tx = Tx::new(config);
    tx.setup();
    for s in services {
        tx.service(s, true);
    }
    tx.out
}

/// The transaction of a partial sync after the endpoints of `changes` changed (`services`
/// holds the new state; each changed service had endpoints before and still has some).
pub fn partial(services: &[Service], changes: &[EndpointChange], config: &Config) -> String {
    let mut tx = Tx::new(config);
    for c in changes {
        if let Some(s) = services.get(c.service) {
            tx.service(s, false);
        }
    }
    for c in changes {
        let Some(s) = services.get(c.service) else {
            continue;
        };
        for chain in stale_chains(s, &c.removed) {
            tx.line(format_args!("flush chain ip {TABLE} {chain}"));
        }
    }
    tx.out
}

/// The endpoint chains of `removed` that `s` no longer uses (stale after a change).
pub fn stale_chains(s: &Service, removed: &[std::net::Ipv4Addr]) -> Vec<String> {
    removed
        .iter()
        .filter(|ip| !s.endpoints.contains(ip))
        .map(|&ip| names::nft_endpoint_chain(s, SocketAddrV4::new(ip, s.target_port)))
        .collect()
}

/// The transaction that deletes stale chains (flushed by an earlier [`partial`]).
pub fn delete_chains(chains: &[String]) -> String {
    let mut out = String::new();
    for c in chains {
        let _ = writeln!(out, "delete chain ip {TABLE} {c}");
    }
    out
}

/// Applies `input` with `nft -f -` in the current network namespace; returns the wall time.
pub fn apply(input: &str) -> Result<Duration, Error> {
    apply_with(input, &RunOptions::default())
}

/// [`apply`] with a deadline and an optional cgroup to run in.
pub fn apply_with(input: &str, opts: &RunOptions) -> Result<Duration, Error> {
    process::run("nft", &["-f", "-"], input.as_bytes(), opts)
}

/// `nft list table ip kube-proxy` in the current network namespace.
pub fn list() -> Result<String, Error> {
    process::output("nft", &["list", "table", "ip", TABLE])
}

/// `nft list chains ip`: the chains kube-proxy reads on every sync to find stale ones
/// (knftables lists the family's chains and keeps its table's; nft before 1.0.7 takes no
/// table there).
pub fn list_chains() -> Result<String, Error> {
    process::output("nft", &["list", "chains", "ip"])
}

struct Tx {
    out: String,
    mark: String,
    cidr: Option<String>,
    service_cidr: Option<String>,
}

impl Tx {
    fn new(config: &Config) -> Self {
        Tx {
            out: String::new(),
            mark: config.mark(),
            cidr: config.cidr(),
            service_cidr: config.service_cidr.map(|(a, p)| format!("{a}/{p}")),
        }
    }

    fn line(&mut self, l: std::fmt::Arguments<'_>) {
        let _ = self.out.write_fmt(l);
        self.out.push('\n');
    }

    fn rule(&mut self, chain: &str, rule: std::fmt::Arguments<'_>) {
        let _ = write!(self.out, "add rule ip {TABLE} {chain} ");
        self.line(rule);
    }

    /// `add chain` + `flush chain`: the chain exists and holds only what follows.
    fn ensure_chain(&mut self, chain: &str) {
        self.line(format_args!("add chain ip {TABLE} {chain}"));
        self.line(format_args!("flush chain ip {TABLE} {chain}"));
    }

    /// kube-proxy's `setupNFTables` on its first sync (nodePortAddresses unset).
    fn setup(&mut self) {
        self.line(format_args!(
            "add table ip {TABLE} {{ comment \"rules for kube-proxy\" ; }}"
        ));
        // The first sync re-creates the base chains, so their properties can change.
        for (name, ..) in BASE_CHAINS {
            self.line(format_args!("add chain ip {TABLE} {name}"));
            self.line(format_args!("delete chain ip {TABLE} {name}"));
        }
        for (name, kind, hook, prio) in BASE_CHAINS {
            self.line(format_args!(
                "add chain ip {TABLE} {name} {{ type {kind} hook {hook} priority {prio} ; }}"
            ));
            self.line(format_args!("flush chain ip {TABLE} {name}"));
        }
        let mut created: Vec<&str> = Vec::new();
        for (chain, from, matches) in JUMPS {
            if !created.contains(&chain) {
                self.ensure_chain(chain);
                created.push(chain);
            }
            let sep = if matches.is_empty() { "" } else { " " };
            self.rule(from, format_args!("{matches}{sep}jump {chain}"));
        }
        // services, cluster-ips-check and masquerading were created with their jumps.
        self.ensure_chain("mark-for-masquerade");
        let m = self.mark.clone();
        self.rule("mark-for-masquerade", format_args!("mark set mark or {m}"));
        self.rule("masquerading", format_args!("mark and {m} == 0 return"));
        self.rule("masquerading", format_args!("mark set mark xor {m}"));
        self.rule("masquerading", format_args!("masquerade fully-random"));

        self.line(format_args!(
            "add set ip {TABLE} cluster-ips {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}"
        ));
        self.rule(
            "cluster-ips-check",
            format_args!(
                "ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\""
            ),
        );
        if let Some(cidr) = self.service_cidr.clone() {
            self.rule(
                "cluster-ips-check",
                format_args!(
                    "ip daddr {{ {cidr} }} drop comment \"Drop traffic to unallocated ClusterIPs\""
                ),
            );
        }
        // nodePortAddresses unset: no nodeport-ips set (add + delete: gone either way).
        self.line(format_args!(
            "add set ip {TABLE} nodeport-ips {{ type ipv4_addr ; comment \"IPs that accept NodePort traffic\" ; }}"
        ));
        self.line(format_args!("delete set ip {TABLE} nodeport-ips"));

        self.line(format_args!(
            "add map ip {TABLE} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; \
             comment \"vmap to drop or reject packets to services with no endpoints\" ; }}"
        ));
        self.line(format_args!(
            "add map ip {TABLE} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; \
             comment \"vmap to drop or reject packets to service nodeports with no endpoints\" ; }}"
        ));
        self.line(format_args!(
            "add chain ip {TABLE} reject-chain {{ comment \"helper for @no-endpoint-services / @no-endpoint-nodeports\" ; }}"
        ));
        self.line(format_args!("flush chain ip {TABLE} reject-chain"));
        self.rule("reject-chain", format_args!("reject"));
        self.rule(
            "service-endpoints-check",
            format_args!("ip daddr . meta l4proto . th dport vmap @no-endpoint-services"),
        );
        self.rule(
            "nodeport-endpoints-check",
            format_args!(
                "ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports"
            ),
        );

        self.line(format_args!(
            "add map ip {TABLE} firewall-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; \
             comment \"destinations that are subject to LoadBalancerSourceRanges\" ; }}"
        ));
        self.rule(
            "firewall-check",
            format_args!("ip daddr . meta l4proto . th dport vmap @firewall-ips"),
        );

        self.line(format_args!(
            "add map ip {TABLE} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; \
             comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}"
        ));
        self.line(format_args!(
            "add map ip {TABLE} service-nodeports {{ type inet_proto . inet_service : verdict ; \
             comment \"NodePort traffic\" ; }}"
        ));
        self.rule(
            "services",
            format_args!("ip daddr . meta l4proto . th dport vmap @service-ips"),
        );
        self.rule(
            "services",
            format_args!(
                "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports"
            ),
        );
        self.line(format_args!("flush set ip {TABLE} cluster-ips"));
        for map in [
            "service-ips",
            "firewall-ips",
            "no-endpoint-services",
            "no-endpoint-nodeports",
            "service-nodeports",
        ] {
            self.line(format_args!("flush map ip {TABLE} {map}"));
        }
    }

    /// The service's set and map elements (a full sync writes them all).
    fn elements(&mut self, s: &Service) {
        let proto = s.protocol.as_str();
        let (ip, port) = (s.cluster_ip, s.port);
        let name = s.port_name_string();
        self.line(format_args!(
            "add element ip {TABLE} cluster-ips {{ {ip} }}"
        ));
        if s.endpoints.is_empty() {
            self.line(format_args!(
                "add element ip {TABLE} no-endpoint-services {{ {ip} . {proto} . {port} comment \"{name}\" : goto reject-chain }}"
            ));
            if let Some(np) = s.node_port {
                self.line(format_args!(
                    "add element ip {TABLE} no-endpoint-nodeports {{ {proto} . {np} comment \"{name}\" : goto reject-chain }}"
                ));
            }
            return;
        }
        let svc = names::nft_service_chain(s);
        self.line(format_args!(
            "add element ip {TABLE} service-ips {{ {ip} . {proto} . {port} : goto {svc} }}"
        ));
        if let Some(np) = s.node_port {
            let ext = names::nft_external_chain(s);
            self.line(format_args!(
                "add element ip {TABLE} service-nodeports {{ {proto} . {np} : goto {ext} }}"
            ));
        }
    }

    /// One service, in kube-proxy's order: its chains are created (and flushed), then its map
    /// elements are written (when `elements`: a full sync; a partial one after an endpoint
    /// change has none to write), then the chains' rules.
    fn service(&mut self, s: &Service, elements: bool) {
        if s.endpoints.is_empty() {
            if elements {
                self.elements(s);
            }
            return;
        }
        let proto = s.protocol.as_str();
        let svc = names::nft_service_chain(s);
        let local = names::nft_local_chain(s);
        let ext = names::nft_external_chain(s);
        let uses_local = s.node_port.is_some() && s.external_traffic_policy_local;
        let endpoints: Vec<(SocketAddrV4, String)> = s
            .endpoint_addrs()
            .map(|ep| (ep, names::nft_endpoint_chain(s, ep)))
            .collect();
        for (_, chain) in &endpoints {
            self.ensure_chain(chain);
        }
        self.ensure_chain(&svc);
        if uses_local {
            self.ensure_chain(&local);
        }
        if s.node_port.is_some() {
            self.ensure_chain(&ext);
        }
        if elements {
            self.elements(s);
        }

        if let Some(cidr) = self.cidr.clone() {
            self.rule(
                &svc,
                format_args!(
                    "ip daddr {} {proto} dport {} ip saddr != {cidr} jump mark-for-masquerade",
                    s.cluster_ip, s.port
                ),
            );
        }
        if s.node_port.is_some() {
            if uses_local {
                if let Some(cidr) = self.cidr.clone() {
                    self.rule(
                        &ext,
                        format_args!(
                            "ip saddr {cidr} goto {svc} comment \"short-circuit pod traffic\""
                        ),
                    );
                }
                self.rule(
                    &ext,
                    format_args!(
                        "fib saddr type local jump mark-for-masquerade comment \"masquerade local traffic\""
                    ),
                );
                self.rule(
                    &ext,
                    format_args!(
                        "fib saddr type local goto {svc} comment \"short-circuit local traffic\""
                    ),
                );
                self.rule(&ext, format_args!("goto {local}"));
            } else {
                self.rule(&ext, format_args!("jump mark-for-masquerade"));
                self.rule(&ext, format_args!("goto {svc}"));
            }
        }
        let vmap = endpoints
            .iter()
            .enumerate()
            .map(|(i, (_, chain))| format!("{i} : goto {chain}"))
            .collect::<Vec<_>>()
            .join(" , ");
        let n = endpoints.len();
        self.rule(
            &svc,
            format_args!("numgen random mod {n} vmap {{ {vmap} }}"),
        );
        if uses_local {
            self.rule(
                &local,
                format_args!("numgen random mod {n} vmap {{ {vmap} }}"),
            );
        }
        for (ep, chain) in &endpoints {
            self.rule(
                chain,
                format_args!("ip saddr {} jump mark-for-masquerade", ep.ip()),
            );
            self.rule(chain, format_args!("meta l4proto {proto} dnat to {ep}"));
        }
    }
}

//! kube-proxy's iptables mode: the `iptables-restore` input of a sync, and applying it.
//!
//! Every sync hands one input for the `filter` and `nat` tables to
//! `iptables-restore -w 5 --noflush --counters`. A chain line (`:CHAIN - [0:0]`) creates or
//! flushes a chain, so the input names every chain it rewrites:
//! - always (full and partial): `filter`'s KUBE-SERVICES, KUBE-EXTERNAL-SERVICES,
//!   KUBE-FORWARD, KUBE-NODEPORTS, KUBE-PROXY-FIREWALL (and KUBE-FIREWALL, the
//!   localhost-nodeport guard), and `nat`'s KUBE-SERVICES (one rule per service port, so a
//!   partial sync still writes O(services) rules), KUBE-NODEPORTS, KUBE-POSTROUTING and
//!   KUBE-MARK-MASQ;
//! - per service (full sync, or the service changed): KUBE-EXT-* (node ports), KUBE-SVC-*,
//!   KUBE-SVL-* (Local policy) and one KUBE-SEP-* per endpoint;
//! - stale chains: a chain line and `-X`, except in large-cluster mode (more than 1 000
//!   endpoints), where kube-proxy looks for stale chains (an `iptables-save`) only once per
//!   sync period; unreferenced, they stay until then.
//!
//! On a full sync kube-proxy first makes sure the base chains jump to its chains (about 20
//! `iptables -C/-I` runs); [`full`] writes those jumps into the same restore (`-I`), so one
//! apply gives a working node.

use std::fmt::Write as _;
use std::time::Duration;

use super::process::{self, RunOptions};
use super::{Config, EndpointChange, Error, Service, large_cluster, names};

/// Which iptables the rules go through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// `iptables-nft-restore`: the nf_tables backend (Debian's default `iptables`).
    Nft,
    /// `iptables-legacy-restore`: x_tables.
    Legacy,
}

impl Backend {
    /// The restore tool.
    pub fn restore(self) -> &'static str {
        match self {
            Backend::Nft => "iptables-nft-restore",
            Backend::Legacy => "iptables-legacy-restore",
        }
    }

    /// The save tool.
    pub fn save(self) -> &'static str {
        match self {
            Backend::Nft => "iptables-nft-save",
            Backend::Legacy => "iptables-legacy-save",
        }
    }

    /// `iptables-nft` / `iptables-legacy`.
    pub fn label(self) -> &'static str {
        match self {
            Backend::Nft => "iptables-nft",
            Backend::Legacy => "iptables-legacy",
        }
    }
}

const SERVICES: &str = "KUBE-SERVICES";
const EXTERNAL_SERVICES: &str = "KUBE-EXTERNAL-SERVICES";
const NODEPORTS: &str = "KUBE-NODEPORTS";
const POSTROUTING: &str = "KUBE-POSTROUTING";
const MARK_MASQ: &str = "KUBE-MARK-MASQ";
const FORWARD: &str = "KUBE-FORWARD";
const PROXY_FIREWALL: &str = "KUBE-PROXY-FIREWALL";
const KUBELET_FIREWALL: &str = "KUBE-FIREWALL";

/// (table, from, match, comment, to) of the jumps kube-proxy (and, for KUBE-FIREWALL, the
/// kubelet) installs in the base chains.
const JUMPS: [(&str, &str, &str, &str, &str); 14] = [
    (
        "filter",
        "INPUT",
        "-m conntrack --ctstate NEW",
        "kubernetes externally-visible service portals",
        EXTERNAL_SERVICES,
    ),
    (
        "filter",
        "FORWARD",
        "-m conntrack --ctstate NEW",
        "kubernetes externally-visible service portals",
        EXTERNAL_SERVICES,
    ),
    (
        "filter",
        "INPUT",
        "",
        "kubernetes health check service ports",
        NODEPORTS,
    ),
    (
        "filter",
        "FORWARD",
        "-m conntrack --ctstate NEW",
        "kubernetes service portals",
        SERVICES,
    ),
    (
        "filter",
        "OUTPUT",
        "-m conntrack --ctstate NEW",
        "kubernetes service portals",
        SERVICES,
    ),
    (
        "filter",
        "FORWARD",
        "",
        "kubernetes forwarding rules",
        FORWARD,
    ),
    (
        "filter",
        "INPUT",
        "-m conntrack --ctstate NEW",
        "kubernetes load balancer firewall",
        PROXY_FIREWALL,
    ),
    (
        "filter",
        "OUTPUT",
        "-m conntrack --ctstate NEW",
        "kubernetes load balancer firewall",
        PROXY_FIREWALL,
    ),
    (
        "filter",
        "FORWARD",
        "-m conntrack --ctstate NEW",
        "kubernetes load balancer firewall",
        PROXY_FIREWALL,
    ),
    ("nat", "OUTPUT", "", "kubernetes service portals", SERVICES),
    (
        "nat",
        "PREROUTING",
        "",
        "kubernetes service portals",
        SERVICES,
    ),
    (
        "nat",
        "POSTROUTING",
        "",
        "kubernetes postrouting rules",
        POSTROUTING,
    ),
    ("filter", "INPUT", "", "", KUBELET_FIREWALL),
    ("filter", "OUTPUT", "", "", KUBELET_FIREWALL),
];

/// The input of kube-proxy's first (full) sync of `services`, plus the base-chain jumps.
pub fn full(services: &[Service], config: &Config) -> String {
    let mut w = Restore::new(config, large_cluster(services));
    for s in services {
        w.service(s, true);
    }
    w.finish(true)
}

/// The input of a partial sync after the endpoints of `changes` changed (`services` holds the
/// new state): the always-written chains, the changed services' chains, and (outside
/// large-cluster mode) the deletion of their stale endpoint chains.
pub fn partial(services: &[Service], changes: &[EndpointChange], config: &Config) -> String {
    let large = large_cluster(services);
    let mut w = Restore::new(config, large);
    let mut changed = vec![false; services.len()];
    for c in changes {
        if let Some(slot) = changed.get_mut(c.service) {
            *slot = true;
        }
    }
    for (s, &write_chains) in services.iter().zip(&changed) {
        w.service(s, write_chains);
    }
    if !large {
        for c in changes {
            let Some(s) = services.get(c.service) else {
                continue;
            };
            for &ip in &c.removed {
                if s.endpoints.contains(&ip) {
                    continue;
                }
                let chain = names::sep_chain(s, std::net::SocketAddrV4::new(ip, s.target_port));
                w.nat_chain(&chain);
                let _ = writeln!(w.nat_rules, "-X {chain}");
            }
        }
    }
    w.finish(false)
}

/// Applies `input` with `iptables-restore -w 5 --noflush --counters` of `backend` in the
/// current network namespace; returns the wall time.
pub fn apply(input: &str, backend: Backend) -> Result<Duration, Error> {
    apply_with(input, backend, &RunOptions::default())
}

/// [`apply`] with a deadline and an optional cgroup to run in.
pub fn apply_with(input: &str, backend: Backend, opts: &RunOptions) -> Result<Duration, Error> {
    process::run(
        backend.restore(),
        &["-w", "5", "--noflush", "--counters"],
        input.as_bytes(),
        opts,
    )
}

/// `iptables-save -t <table>` of `backend` in the current network namespace.
pub fn save(backend: Backend, table: &str) -> Result<String, Error> {
    process::output(backend.save(), &["-t", table])
}

/// The four parts of a restore input, written in kube-proxy's order.
struct Restore {
    large: bool,
    mark: String,
    cidr: Option<String>,
    filter_chains: String,
    filter_rules: String,
    nat_chains: String,
    nat_rules: String,
}

impl Restore {
    fn new(config: &Config, large: bool) -> Self {
        let mut w = Restore {
            large,
            mark: config.mark(),
            cidr: config.cidr(),
            filter_chains: String::new(),
            filter_rules: String::new(),
            nat_chains: String::new(),
            nat_rules: String::new(),
        };
        for c in [
            SERVICES,
            EXTERNAL_SERVICES,
            FORWARD,
            NODEPORTS,
            PROXY_FIREWALL,
        ] {
            let _ = writeln!(w.filter_chains, ":{c} - [0:0]");
        }
        for c in [SERVICES, NODEPORTS, POSTROUTING, MARK_MASQ] {
            w.nat_chain(c);
        }
        let m = &w.mark;
        let _ = writeln!(
            w.nat_rules,
            "-A {POSTROUTING} -m mark ! --mark {m}/{m} -j RETURN\n\
             -A {POSTROUTING} -j MARK --xor-mark {m}\n\
             -A {POSTROUTING} -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
             -A {MARK_MASQ} -j MARK --or-mark {m}"
        );
        // localhostNodePorts (the default): the kubelet's guard against martian localnet
        // connections, duplicated by kube-proxy.
        let _ = writeln!(w.filter_chains, ":{KUBELET_FIREWALL} - [0:0]");
        let _ = writeln!(
            w.filter_rules,
            "-A {KUBELET_FIREWALL} -m comment --comment \"block incoming localnet connections\" \
             -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"
        );
        w
    }

    fn nat_chain(&mut self, chain: &str) {
        let _ = writeln!(self.nat_chains, ":{chain} - [0:0]");
    }

    /// `-m comment --comment X` unless in large-cluster mode (kube-proxy's
    /// `appendServiceCommentLocked`).
    fn endpoint_comment(&self, comment: &str) -> String {
        if self.large {
            String::new()
        } else {
            format!(" -m comment --comment {comment}")
        }
    }

    /// One service port: its KUBE-SERVICES / KUBE-NODEPORTS (or filter) rules always, its own
    /// chains when `write_chains`.
    fn service(&mut self, s: &Service, write_chains: bool) {
        let name = s.port_name_string();
        let proto = s.protocol.as_str();
        let has_endpoints = !s.endpoints.is_empty();
        let svc = names::svc_chain(s);
        let svl = names::svl_chain(s);
        let ext = names::ext_chain(s);
        let dst = format!(
            "-m {proto} -p {proto} -d {} --dport {}",
            s.cluster_ip, s.port
        );

        if has_endpoints {
            let _ = writeln!(
                self.nat_rules,
                "-A {SERVICES} -m comment --comment \"{name} cluster IP\" {dst} -j {svc}"
            );
        } else {
            let _ = writeln!(
                self.filter_rules,
                "-A {SERVICES} -m comment --comment \"{name} has no endpoints\" {dst} -j REJECT"
            );
        }
        if let Some(np) = s.node_port {
            if has_endpoints {
                let _ = writeln!(
                    self.nat_rules,
                    "-A {NODEPORTS} -m comment --comment {name} -m {proto} -p {proto} --dport {np} -j {ext}"
                );
            } else {
                let _ = writeln!(
                    self.filter_rules,
                    "-A {EXTERNAL_SERVICES} -m comment --comment \"{name} has no endpoints\" \
                     -m addrtype --dst-type LOCAL -m {proto} -p {proto} --dport {np} -j REJECT"
                );
            }
        }
        if !write_chains || !has_endpoints {
            return;
        }

        // Internal traffic: masquerade what does not come from a pod.
        if let Some(cidr) = &self.cidr {
            let _ = writeln!(
                self.nat_rules,
                "-A {svc} -m comment --comment \"{name} cluster IP\" {dst} ! -s {cidr} -j {MARK_MASQ}"
            );
        }
        // External traffic.
        if s.node_port.is_some() {
            self.nat_chain(&ext);
            if s.external_traffic_policy_local {
                if let Some(cidr) = &self.cidr {
                    let _ = writeln!(
                        self.nat_rules,
                        "-A {ext} -m comment --comment \"pod traffic for {name} external destinations\" -s {cidr} -j {svc}"
                    );
                }
                let _ = writeln!(
                    self.nat_rules,
                    "-A {ext} -m comment --comment \"masquerade LOCAL traffic for {name} external destinations\" \
                     -m addrtype --src-type LOCAL -j {MARK_MASQ}\n\
                     -A {ext} -m comment --comment \"route LOCAL traffic for {name} external destinations\" \
                     -m addrtype --src-type LOCAL -j {svc}\n\
                     -A {ext} -j {svl}"
                );
            } else {
                let _ = writeln!(
                    self.nat_rules,
                    "-A {ext} -m comment --comment \"masquerade traffic for {name} external destinations\" -j {MARK_MASQ}\n\
                     -A {ext} -j {svc}"
                );
            }
        }
        // The policy chains: the same (all local) endpoints in both.
        self.nat_chain(&svc);
        self.endpoint_rules(s, &svc);
        if s.node_port.is_some() && s.external_traffic_policy_local {
            self.nat_chain(&svl);
            self.endpoint_rules(s, &svl);
        }
        // One chain per endpoint.
        let comment = self.endpoint_comment(&name);
        for ep in s.endpoint_addrs() {
            let sep = names::sep_chain(s, ep);
            self.nat_chain(&sep);
            let _ = writeln!(
                self.nat_rules,
                "-A {sep}{comment} -s {} -j {MARK_MASQ}\n\
                 -A {sep}{comment} -m {proto} -p {proto} -j DNAT --to-destination {ep}",
                ep.ip()
            );
        }
    }

    /// kube-proxy's `writeServiceToEndpointRules`: endpoint i of n is taken with probability
    /// 1/(n-i), the last one always.
    fn endpoint_rules(&mut self, s: &Service, chain: &str) {
        let name = s.port_name_string();
        let n = s.endpoints.len();
        for (i, ep) in s.endpoint_addrs().enumerate() {
            let comment = self.endpoint_comment(&format!("\"{name} -> {ep}\""));
            let sep = names::sep_chain(s, ep);
            if i + 1 < n {
                let _ = writeln!(
                    self.nat_rules,
                    "-A {chain}{comment} -m statistic --mode random --probability {} -j {sep}",
                    probability(n - i)
                );
            } else {
                let _ = writeln!(self.nat_rules, "-A {chain}{comment} -j {sep}");
            }
        }
    }

    fn finish(mut self, jumps: bool) -> String {
        // The last KUBE-SERVICES rule: node ports on every local address.
        let _ = writeln!(
            self.nat_rules,
            "-A {SERVICES} -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" \
             -m addrtype --dst-type LOCAL -j {NODEPORTS}"
        );
        let m = &self.mark;
        let _ = writeln!(
            self.filter_rules,
            "-A {FORWARD} -m conntrack --ctstate INVALID -j DROP\n\
             -A {FORWARD} -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {m}/{m} -j ACCEPT\n\
             -A {FORWARD} -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
        );
        let mut out = String::with_capacity(
            self.filter_chains.len()
                + self.filter_rules.len()
                + self.nat_chains.len()
                + self.nat_rules.len()
                + 4096,
        );
        for (table, chains, rules) in [
            ("filter", &self.filter_chains, &self.filter_rules),
            ("nat", &self.nat_chains, &self.nat_rules),
        ] {
            let _ = writeln!(out, "*{table}");
            out.push_str(chains);
            out.push_str(rules);
            if jumps {
                for (_, from, matches, comment, to) in JUMPS.iter().filter(|j| j.0 == table) {
                    let mut line = format!("-I {from}");
                    if !matches.is_empty() {
                        let _ = write!(line, " {matches}");
                    }
                    if !comment.is_empty() {
                        let _ = write!(line, " -m comment --comment \"{comment}\"");
                    }
                    let _ = writeln!(out, "{line} -j {to}");
                }
            }
            out.push_str("COMMIT\n");
        }
        out
    }
}

/// kube-proxy's `computeProbability`: 1/n with ten decimals (`%0.10f`).
pub fn probability(n: usize) -> String {
    format!("{:.10}", 1.0 / n as f64)
}

//! The standard lab: a client, a node running the load balancer, and pods behind it.
//!
//! ```text
//!  client ns                 node ns                                 pod i ns
//!  to-node ──────────────── uplink        pod<i> ─────────────────── eth0
//!  192.0.2.2/24             192.0.2.1/24  198.51.100.(4i+1)/30       198.51.100.(4i+2)/30
//!  2001:db8:1::2/64         2001:db8:1::1/64  2001:db8:100:i::1/64   2001:db8:100:i::2/64
//!  routes: 203.0.113.0/24, 198.51.100.0/24 via 192.0.2.1             default via the node side
//!          2001:db8:203::/64, 2001:db8:100::/48 via 2001:db8:1::1
//! ```
//!
//! The load balancer attaches to the node's `uplink` ([`Lab::node_uplink`]). The node routes
//! between its links like a Kubernetes node routes to its pods. Set up as on a real node (see
//! TOOLCHAIN.md for the evidence behind each item):
//! - TX checksum offload off on every veth end (all of them send), so no packet is
//!   CHECKSUM_PARTIAL when an XDP program rewrites it; except, with
//!   [`LabBuilder::client_link_defaults`], on the client link (see below);
//! - node: IPv4 and IPv6 forwarding on (else `bpf_fib_lookup` says FWD_DISABLED), `rp_filter`
//!   0 on all/default/each link; `accept_local` stays 0, as no packet arrives with a source
//!   address of the node in this topology;
//! - permanent neighbour entries for every link address in both directions, so
//!   `bpf_fib_lookup` never says NO_NEIGH and no ARP/ND is needed;
//! - pods: `net.ipv4.tcp_max_tw_buckets=0` (no TIME_WAIT stalls for reused client ports);
//!   client: `net.ipv4.ip_local_port_range = 1024 65535`;
//! - a pass XDP program (from the [`LabBuilder::xdp_pass_attacher`] hook) on the client's
//!   `to-node` (receives the node's `XDP_TX` frames) and on each pod's `eth0` (receives
//!   `XDP_REDIRECT`ed frames). Without the hook the pods' `eth0` get GRO on instead, which is
//!   enough for redirected frames, but `XDP_TX` frames then never reach the client.
//!
//! [`LabBuilder::client_link_defaults`] sets the client link up as a kind or Docker node's
//! uplink is, for the TC ingress mode: both ends keep the kernel's default offloads (TX
//! checksum offload on, so the client's TCP and UDP arrive CHECKSUM_PARTIAL) and the client's
//! `to-node` gets no pass XDP program (refusals sent back must not depend on one).
//!
//! The lab holds at most [`MAX_BACKENDS`] pods (the /30 per pod exhausts 198.51.100.0/24).

use std::any::Any;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::{Context as _, Error, Result, bail, ensure};

use crate::netns::Netns;
use crate::packet::MacAddr;
use crate::process::Process;
use crate::veth;

/// The hook that attaches a pass XDP program: called on a thread inside the namespace of the
/// interface, with the interface name; the returned guard keeps the program attached until it
/// is dropped. With lb-userspace:
/// `|ifname| Ok(Box::new(lb_userspace::PassProgram::attach(ifname)?) as Box<dyn Any + Send>)`.
/// What an attacher returns: the guard that keeps the program attached, or the caller's
/// error (any error type: `?` converts it).
pub type AttachResult =
    std::result::Result<Box<dyn Any + Send>, Box<dyn std::error::Error + Send + Sync>>;

/// Runs `attach` for `ifname` on a thread inside `ns`: the guard that keeps the program on.
pub(crate) fn attach_pass(
    attach: &XdpPassAttacher,
    ns: &Netns,
    ifname: &str,
) -> Result<Box<dyn Any + Send>> {
    ns.enter(|| attach(ifname))?.map_err(|cause| Error::Failed {
        what: format!(
            "cannot attach the pass XDP program to {ifname} in {}",
            ns.name()
        ),
        cause,
    })
}

pub type XdpPassAttacher = dyn Fn(&str) -> AttachResult + Send + Sync;

/// Most pods a lab can have.
pub const MAX_BACKENDS: usize = 64;

/// The client's end of the client <-> node link.
pub const CLIENT_LINK: &str = "to-node";
/// The node's end of the client <-> node link: where the load balancer attaches.
pub const NODE_UPLINK: &str = "uplink";
/// Every pod's end of its link to the node.
pub const POD_LINK: &str = "eth0";

/// The client's address.
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// The node's address on the client link.
pub const NODE_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The client's IPv6 address.
pub const CLIENT_ADDR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
/// The node's IPv6 address on the client link.
pub const NODE_ADDR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
/// The LoadBalancer VIP range (routed from the client to the node).
pub const VIP_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(203, 0, 113, 0), 24);
/// The IPv6 LoadBalancer VIP range (routed from the client to the node).
pub const VIP_NET6: (Ipv6Addr, u8) = (Ipv6Addr::new(0x2001, 0xdb8, 0x203, 0, 0, 0, 0, 0), 64);
/// The pod range (routed from the client to the node).
pub const POD_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 51, 100, 0), 24);
/// The IPv6 pod range (routed from the client to the node).
pub const POD_NET6: (Ipv6Addr, u8) = (Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0), 48);

/// A VIP in 203.0.113.0/24: `203.0.113.<host>`.
pub fn vip(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(203, 0, 113, host)
}

/// An IPv6 VIP in 2001:db8:203::/64: `2001:db8:203::<host>`.
pub fn vip6(host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0x203, 0, 0, 0, 0, host)
}

/// Pod `i`'s address (`198.51.100.(4i+2)`).
///
/// # Panics
/// If `i >= MAX_BACKENDS`.
pub fn pod_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, pod_host(i, 2))
}

/// The node's address on pod `i`'s link (`198.51.100.(4i+1)`), the pod's gateway.
///
/// # Panics
/// If `i >= MAX_BACKENDS`.
pub fn node_pod_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, pod_host(i, 1))
}

/// Pod `i`'s IPv6 address (`2001:db8:100:<i>::2`).
///
/// # Panics
/// If `i >= MAX_BACKENDS`.
pub fn pod_addr6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0x100, pod_subnet6(i), 0, 0, 0, 2)
}

/// The node's IPv6 address on pod `i`'s link (`2001:db8:100:<i>::1`).
///
/// # Panics
/// If `i >= MAX_BACKENDS`.
pub fn node_pod_addr6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0x100, pod_subnet6(i), 0, 0, 0, 1)
}

fn pod_host(i: usize, offset: u8) -> u8 {
    assert!(
        i < MAX_BACKENDS,
        "pod index {i} out of range (at most {MAX_BACKENDS} pods)"
    );
    // i < 64, so 4 * i + offset <= 254.
    u8::try_from(i).map_or(u8::MAX, |i| i * 4 + offset)
}

fn pod_subnet6(i: usize) -> u16 {
    assert!(
        i < MAX_BACKENDS,
        "pod index {i} out of range (at most {MAX_BACKENDS} pods)"
    );
    u16::try_from(i).unwrap_or(u16::MAX)
}

/// The node-side interface name of pod `i`'s link (`pod<i>`).
pub fn node_pod_link_name(i: usize) -> String {
    format!("pod{i}")
}

/// Configures and builds a [`Lab`]; start from [`Lab::builder`].
pub struct LabBuilder {
    backends: usize,
    attacher: Option<Arc<XdpPassAttacher>>,
    client_defaults: bool,
}

impl fmt::Debug for LabBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LabBuilder")
            .field("backends", &self.backends)
            .field("xdp_pass_attacher", &self.attacher.is_some())
            .field("client_link_defaults", &self.client_defaults)
            .finish()
    }
}

impl Default for LabBuilder {
    fn default() -> Self {
        Lab::builder()
    }
}

impl LabBuilder {
    /// The number of pods (0 to [`MAX_BACKENDS`]; default 1).
    pub fn backends(mut self, n: usize) -> Self {
        self.backends = n;
        self
    }

    /// The hook that attaches a pass XDP program to the peers that receive the load
    /// balancer's `XDP_TX` and `XDP_REDIRECT` frames; see [`XdpPassAttacher`] and the module
    /// docs. Its guards are dropped (inside their namespaces) before the namespaces go.
    pub fn xdp_pass_attacher<F>(mut self, attach: F) -> Self
    where
        F: Fn(&str) -> AttachResult + Send + Sync + 'static,
    {
        self.attacher = Some(Arc::new(attach));
        self
    }

    /// `true`: the client link keeps the kernel's default offloads on both ends (TX checksum
    /// offload on) and the client's end gets no pass XDP program, as on a kind or Docker
    /// node (for the TC ingress mode; see the module docs). Default `false`.
    pub fn client_link_defaults(mut self, on: bool) -> Self {
        self.client_defaults = on;
        self
    }

    /// Creates the namespaces and links. Anything created is removed again if a step fails.
    pub fn build(self) -> Result<Lab> {
        // Namespaces of lab processes that were killed (no unwinding, so no guard ran) are
        // removed first; those of running processes are left alone.
        match crate::netns::remove_stale() {
            Ok(gone) if !gone.is_empty() => tracing::info!(?gone, "removed stale lab namespaces"),
            Ok(_) => {}
            Err(e) => tracing::warn!("cannot remove stale lab namespaces: {e:#}"),
        }
        ensure!(
            self.backends <= MAX_BACKENDS,
            "a lab holds at most {MAX_BACKENDS} pods (one /30 each in 198.51.100.0/24), {} \
             requested",
            self.backends
        );
        let client = Netns::new("cli")?;
        let node = Netns::new("node")?;
        let backends = (0..self.backends)
            .map(|i| Netns::new(&format!("p{i}")))
            .collect::<Result<Vec<_>>>()?;
        let mut lab = Lab {
            stubs: Mutex::new(Vec::new()),
            processes: Mutex::new(Vec::new()),
            client_mac: MacAddr::ZERO,
            node_uplink_mac: MacAddr::ZERO,
            pod_macs: Vec::new(),
            node_pod_macs: Vec::new(),
            xdp_stubs: self.attacher.is_some(),
            client_defaults: self.client_defaults,
            client,
            node,
            backends,
        };
        lab.setup(self.attacher.as_deref())
            .context("cannot set up the lab")?;
        tracing::debug!(?lab, "lab ready");
        Ok(lab)
    }
}

/// Where a stub XDP program is attached.
#[derive(Clone, Copy, Debug)]
enum Side {
    Client,
    Pod(usize),
}

struct Stub {
    side: Side,
    ifname: String,
    guard: Box<dyn Any + Send>,
}

/// The standard lab topology (see the module docs), torn down on drop: first the stub XDP
/// guards (each dropped inside its namespace), then adopted processes, then the namespaces
/// (which removes every veth). This also happens while a test panics.
pub struct Lab {
    stubs: Mutex<Vec<Stub>>,
    processes: Mutex<Vec<Process>>,
    client_mac: MacAddr,
    node_uplink_mac: MacAddr,
    pod_macs: Vec<MacAddr>,
    node_pod_macs: Vec<MacAddr>,
    xdp_stubs: bool,
    client_defaults: bool,
    client: Netns,
    node: Netns,
    backends: Vec<Netns>,
}

impl fmt::Debug for Lab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lab")
            .field("client", &self.client.name())
            .field("node", &self.node.name())
            .field(
                "backends",
                &self.backends.iter().map(Netns::name).collect::<Vec<_>>(),
            )
            .field("xdp_stubs", &self.xdp_stubs)
            .field("client_link_defaults", &self.client_defaults)
            .finish_non_exhaustive()
    }
}

/// Counters of packets dropped for a bad checksum, as (file, section, field, reported name).
const SNMP_COUNTERS: [(&str, &str, &str); 3] = [
    ("Tcp", "InCsumErrors", "TcpInCsumErrors"),
    ("Udp", "InCsumErrors", "UdpInCsumErrors"),
    ("Icmp", "InCsumErrors", "IcmpInCsumErrors"),
];
const NETSTAT_COUNTERS: [(&str, &str, &str); 1] = [("IpExt", "InCsumErrors", "IpExtInCsumErrors")];
const SNMP6_COUNTERS: [&str; 2] = ["Udp6InCsumErrors", "Icmp6InCsumErrors"];

impl Lab {
    /// A builder for a lab with one pod and no XDP hook.
    pub fn builder() -> LabBuilder {
        LabBuilder {
            backends: 1,
            attacher: None,
            client_defaults: false,
        }
    }

    fn setup(&mut self, attacher: Option<&XdpPassAttacher>) -> Result<()> {
        // Sysctls first: the `default` values apply to the links created afterwards.
        let node = &self.node;
        node.sysctl("net.ipv4.ip_forward", "1")?;
        node.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        node.sysctl("net.ipv6.conf.default.forwarding", "1")?;
        node.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
        node.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
        self.client
            .sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
        for pod in &self.backends {
            pod.sysctl("net.ipv4.tcp_max_tw_buckets", "0")?;
        }

        // Client <-> node.
        let client = &self.client;
        veth::create_pair(client, CLIENT_LINK, node, NODE_UPLINK)?;
        veth::add_ip(client, CLIENT_LINK, CLIENT_ADDR.into(), 24)?;
        veth::add_ip(client, CLIENT_LINK, CLIENT_ADDR6.into(), 64)?;
        veth::add_ip(node, NODE_UPLINK, NODE_ADDR.into(), 24)?;
        veth::add_ip(node, NODE_UPLINK, NODE_ADDR6.into(), 64)?;
        for (ns, link) in [(client, CLIENT_LINK), (node, NODE_UPLINK)] {
            if !self.client_defaults {
                veth::set_tx_checksum(ns, link, false)?;
            }
            veth::set_up(ns, link)?;
        }
        node.sysctl(&format!("net.ipv4.conf.{NODE_UPLINK}.rp_filter"), "0")?;
        self.client_mac = veth::mac(client, CLIENT_LINK)?;
        self.node_uplink_mac = veth::mac(node, NODE_UPLINK)?;
        veth::add_neighbour(client, CLIENT_LINK, NODE_ADDR.into(), self.node_uplink_mac)?;
        veth::add_neighbour(client, CLIENT_LINK, NODE_ADDR6.into(), self.node_uplink_mac)?;
        veth::add_neighbour(node, NODE_UPLINK, CLIENT_ADDR.into(), self.client_mac)?;
        veth::add_neighbour(node, NODE_UPLINK, CLIENT_ADDR6.into(), self.client_mac)?;
        for (net, prefix) in [POD_NET, VIP_NET] {
            veth::add_route(client, &format!("{net}/{prefix}"), NODE_ADDR.into())?;
        }
        for (net, prefix) in [POD_NET6, VIP_NET6] {
            veth::add_route(client, &format!("{net}/{prefix}"), NODE_ADDR6.into())?;
        }

        // Node <-> pods.
        for (i, pod) in self.backends.iter().enumerate() {
            let node_link = node_pod_link_name(i);
            veth::create_pair(node, &node_link, pod, POD_LINK)?;
            veth::add_ip(node, &node_link, node_pod_addr(i).into(), 30)?;
            veth::add_ip(node, &node_link, node_pod_addr6(i).into(), 64)?;
            veth::add_ip(pod, POD_LINK, pod_addr(i).into(), 30)?;
            veth::add_ip(pod, POD_LINK, pod_addr6(i).into(), 64)?;
            for (ns, link) in [(node, node_link.as_str()), (pod, POD_LINK)] {
                veth::set_tx_checksum(ns, link, false)?;
                veth::set_up(ns, link)?;
            }
            node.sysctl(&format!("net.ipv4.conf.{node_link}.rp_filter"), "0")?;
            let node_mac = veth::mac(node, &node_link)?;
            let pod_mac = veth::mac(pod, POD_LINK)?;
            veth::add_neighbour(node, &node_link, pod_addr(i).into(), pod_mac)?;
            veth::add_neighbour(node, &node_link, pod_addr6(i).into(), pod_mac)?;
            veth::add_neighbour(pod, POD_LINK, node_pod_addr(i).into(), node_mac)?;
            veth::add_neighbour(pod, POD_LINK, node_pod_addr6(i).into(), node_mac)?;
            veth::add_route(pod, "default", node_pod_addr(i).into())?;
            veth::add_route(pod, "default", node_pod_addr6(i).into())?;
            self.node_pod_macs.push(node_mac);
            self.pod_macs.push(pod_mac);
        }

        // Peers that receive XDP_TX (client) and XDP_REDIRECT (pods) frames need NAPI.
        match attacher {
            Some(attach) => {
                let mut sides = if self.client_defaults {
                    Vec::new()
                } else {
                    vec![Side::Client]
                };
                sides.extend((0..self.backends.len()).map(Side::Pod));
                for side in sides {
                    let (ns, ifname) = self.side(side);
                    let guard = attach_pass(attach, ns, ifname)?;
                    self.stubs
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(Stub {
                            side,
                            ifname: ifname.to_owned(),
                            guard,
                        });
                }
            }
            None => {
                for pod in &self.backends {
                    veth::set_gro(pod, POD_LINK, true)?;
                }
            }
        }
        Ok(())
    }

    fn side(&self, side: Side) -> (&Netns, &'static str) {
        match side {
            Side::Client => (&self.client, CLIENT_LINK),
            Side::Pod(i) => (&self.backends[i], POD_LINK),
        }
    }

    /// The client namespace.
    pub fn client(&self) -> &Netns {
        &self.client
    }

    /// The node namespace (where the load balancer runs).
    pub fn node(&self) -> &Netns {
        &self.node
    }

    /// Pod `i`'s namespace.
    ///
    /// # Panics
    /// If there is no pod `i`.
    pub fn backend(&self, i: usize) -> &Netns {
        &self.backends[i]
    }

    /// All pod namespaces.
    pub fn backends(&self) -> &[Netns] {
        &self.backends
    }

    /// Every namespace of the lab: client, node, then the pods.
    pub fn namespaces(&self) -> Vec<&Netns> {
        let mut all = vec![&self.client, &self.node];
        all.extend(&self.backends);
        all
    }

    /// Whether pass XDP programs were attached through the hook (else GRO is on at the pods).
    pub fn has_xdp_stubs(&self) -> bool {
        self.xdp_stubs
    }

    /// Whether the client link kept the kernel's default offloads and the client no pass XDP
    /// program ([`LabBuilder::client_link_defaults`]).
    pub fn has_client_link_defaults(&self) -> bool {
        self.client_defaults
    }

    /// Pod `i`'s IPv4 address, `198.51.100.(4i+2)`.
    pub fn backend_addr(&self, i: usize) -> Ipv4Addr {
        self.check_pod(i);
        pod_addr(i)
    }

    /// Pod `i`'s IPv6 address, `2001:db8:100:<i>::2`.
    pub fn backend_addr6(&self, i: usize) -> Ipv6Addr {
        self.check_pod(i);
        pod_addr6(i)
    }

    /// The node's address on pod `i`'s link (the pod's gateway).
    pub fn node_pod_addr(&self, i: usize) -> Ipv4Addr {
        self.check_pod(i);
        node_pod_addr(i)
    }

    fn check_pod(&self, i: usize) {
        assert!(
            i < self.backends.len(),
            "pod index {i} out of range: the lab has {} pods",
            self.backends.len()
        );
    }

    /// The node's address on the client link, 192.0.2.1.
    pub fn node_addr(&self) -> Ipv4Addr {
        NODE_ADDR
    }

    /// The node's IPv6 address on the client link, 2001:db8:1::1.
    pub fn node_addr6(&self) -> Ipv6Addr {
        NODE_ADDR6
    }

    /// The client's address, 192.0.2.2.
    pub fn client_addr(&self) -> Ipv4Addr {
        CLIENT_ADDR
    }

    /// The client's IPv6 address, 2001:db8:1::2.
    pub fn client_addr6(&self) -> Ipv6Addr {
        CLIENT_ADDR6
    }

    /// The node's interface towards the client, where the load balancer attaches.
    pub fn node_uplink(&self) -> &'static str {
        NODE_UPLINK
    }

    /// The node-side interface of pod `i`'s link.
    pub fn node_pod_link(&self, i: usize) -> String {
        self.check_pod(i);
        node_pod_link_name(i)
    }

    /// The client's interface towards the node.
    pub fn client_link(&self) -> &'static str {
        CLIENT_LINK
    }

    /// The pod-side interface of pod `i`'s link (named the same in every pod).
    pub fn pod_link(&self, i: usize) -> &'static str {
        self.check_pod(i);
        POD_LINK
    }

    /// MAC address of the client's link.
    pub fn client_mac(&self) -> MacAddr {
        self.client_mac
    }

    /// MAC address of the node's uplink.
    pub fn node_uplink_mac(&self) -> MacAddr {
        self.node_uplink_mac
    }

    /// MAC address of pod `i`'s interface.
    pub fn pod_mac(&self, i: usize) -> MacAddr {
        self.check_pod(i);
        self.pod_macs[i]
    }

    /// MAC address of the node's side of pod `i`'s link.
    pub fn node_pod_mac(&self, i: usize) -> MacAddr {
        self.check_pod(i);
        self.node_pod_macs[i]
    }

    /// The ifindex of the node's uplink (inside the node namespace).
    pub fn node_uplink_ifindex(&self) -> Result<u32> {
        veth::ifindex(&self.node, NODE_UPLINK)
    }

    /// Keeps `process` running until the lab is dropped (processes go after the stub XDP
    /// guards and before the namespaces).
    pub fn adopt(&self, process: Process) {
        self.processes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(process);
    }

    /// Every checksum error counter of every namespace, zero or not, as
    /// (namespace name, counter, value).
    ///
    /// Counters: `TcpInCsumErrors` (IPv4 and IPv6 share it), `UdpInCsumErrors`,
    /// `IcmpInCsumErrors` (from `/proc/net/snmp`), `IpExtInCsumErrors` (IPv4 header checksum,
    /// `/proc/net/netstat`), `Udp6InCsumErrors` and `Icmp6InCsumErrors` (`/proc/net/snmp6`),
    /// read through `/proc/thread-self/net` on a thread inside each namespace.
    pub fn checksum_counters(&self) -> Result<Vec<(String, String, u64)>> {
        checksum_counters_of(&self.namespaces())
    }

    /// The non-zero checksum error counters (see [`Lab::checksum_counters`]) as
    /// (namespace name, counter, value); empty when no namespace saw a bad checksum.
    pub fn try_checksum_errors(&self) -> Result<Vec<(String, String, u64)>> {
        let mut all = self.checksum_counters()?;
        all.retain(|(_, _, value)| *value != 0);
        Ok(all)
    }

    /// [`Lab::try_checksum_errors`].
    ///
    /// # Panics
    /// If the counters cannot be read.
    pub fn checksum_errors(&self) -> Vec<(String, String, u64)> {
        match self.try_checksum_errors() {
            Ok(errors) => errors,
            Err(e) => panic!("cannot read checksum error counters: {e:#}"),
        }
    }

    /// Panics, listing them, if any namespace counted a checksum error.
    pub fn assert_no_checksum_errors(&self) {
        let errors = self.checksum_errors();
        assert!(
            errors.is_empty(),
            "checksum errors counted in the lab (namespace, counter, value): {errors:?}"
        );
    }
}

/// The checksum error counters of [`Lab::checksum_counters`] for any namespaces.
pub fn checksum_counters_of(namespaces: &[&Netns]) -> Result<Vec<(String, String, u64)>> {
    let mut out = Vec::new();
    for ns in namespaces {
        let files = ns.enter(|| -> std::io::Result<_> {
            Ok((
                std::fs::read_to_string("/proc/thread-self/net/snmp")?,
                std::fs::read_to_string("/proc/thread-self/net/netstat")?,
                // Absent when IPv6 is disabled.
                std::fs::read_to_string("/proc/thread-self/net/snmp6").ok(),
            ))
        })?;
        let (snmp, netstat, snmp6) =
            files.with_context(|| format!("cannot read counters of {}", ns.name()))?;
        let snmp = parse_paired_table(&snmp)?;
        for (section, field, name) in SNMP_COUNTERS {
            let value = snmp
                .iter()
                .find(|(s, f, _)| s == section && f == field)
                .map(|(_, _, v)| *v)
                .with_context(|| format!("no {section} {field} in /proc/net/snmp"))?;
            out.push((ns.name().to_owned(), name.to_owned(), value));
        }
        let netstat = parse_paired_table(&netstat)?;
        for (section, field, name) in NETSTAT_COUNTERS {
            if let Some((_, _, value)) = netstat.iter().find(|(s, f, _)| s == section && f == field)
            {
                out.push((ns.name().to_owned(), name.to_owned(), *value));
            }
        }
        if let Some(snmp6) = snmp6 {
            for line in snmp6.lines() {
                let mut parts = line.split_whitespace();
                let (Some(key), Some(value)) = (parts.next(), parts.next()) else {
                    continue;
                };
                if SNMP6_COUNTERS.contains(&key) {
                    let value = value
                        .parse()
                        .with_context(|| format!("bad snmp6 line {line:?}"))?;
                    out.push((ns.name().to_owned(), key.to_owned(), value));
                }
            }
        }
    }
    Ok(out)
}

/// The non-zero ones of [`checksum_counters_of`].
pub fn checksum_errors_of(namespaces: &[&Netns]) -> Result<Vec<(String, String, u64)>> {
    let mut all = checksum_counters_of(namespaces)?;
    all.retain(|(_, _, value)| *value != 0);
    Ok(all)
}

/// Parses `/proc/net/snmp`-style tables: pairs of lines `Section: names...` and
/// `Section: values...`, into (section, name, value).
fn parse_paired_table(text: &str) -> Result<Vec<(String, String, u64)>> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(header) = lines.next() {
        let Some(values) = lines.next() else {
            bail!("odd number of lines in a counter table: {header:?} has no values");
        };
        let (Some((section, names)), Some((section2, values))) =
            (header.split_once(':'), values.split_once(':'))
        else {
            bail!("malformed counter table lines {header:?} / {values:?}");
        };
        ensure!(
            section == section2,
            "counter table sections differ: {section:?} / {section2:?}"
        );
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            // Some values (e.g. Tcp MaxConn = -1) are signed; only counters matter here.
            if let Ok(value) = value.parse::<u64>() {
                out.push((section.to_owned(), name.to_owned(), value));
            }
        }
    }
    Ok(out)
}

impl Drop for Lab {
    fn drop(&mut self) {
        let stubs = std::mem::take(self.stubs.get_mut().unwrap_or_else(PoisonError::into_inner));
        for stub in stubs.into_iter().rev() {
            let Stub {
                side,
                ifname,
                guard,
            } = stub;
            let (ns, _) = self.side(side);
            let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                ns.enter(move || drop(guard))
            }));
            match dropped {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    eprintln!(
                        "lab: cannot enter {} to detach XDP from {ifname}: {e:#}",
                        ns.name()
                    );
                }
                Err(_) => eprintln!("lab: detaching XDP from {ifname} in {} panicked", ns.name()),
            }
        }
        let processes = std::mem::take(
            self.processes
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for process in processes.into_iter().rev() {
            drop(process);
        }
        // The namespaces (and with them every veth) go when the fields are dropped.
    }
}

/// Whether an address is one of the lab's (inside 192.0.2.0/24, 198.51.100.0/24,
/// 203.0.113.0/24 or 2001:db8::/32), for tools that must never send elsewhere.
pub fn is_lab_address(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => {
            let [a, b, c, _] = a.octets();
            matches!((a, b, c), (192, 0, 2) | (198, 51, 100) | (203, 0, 113))
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            s[0] == 0x2001 && s[1] == 0xdb8
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addressing() {
        assert_eq!(pod_addr(0), Ipv4Addr::new(198, 51, 100, 2));
        assert_eq!(node_pod_addr(0), Ipv4Addr::new(198, 51, 100, 1));
        assert_eq!(pod_addr(1), Ipv4Addr::new(198, 51, 100, 6));
        assert_eq!(pod_addr(63), Ipv4Addr::new(198, 51, 100, 254));
        assert_eq!(node_pod_addr(63), Ipv4Addr::new(198, 51, 100, 253));
        assert_eq!(pod_addr6(10).to_string(), "2001:db8:100:a::2");
        assert_eq!(node_pod_addr6(0).to_string(), "2001:db8:100::1");
        assert_eq!(vip(10).to_string(), "203.0.113.10");
        assert_eq!(vip6(10).to_string(), "2001:db8:203::a");
        for i in 0..MAX_BACKENDS {
            assert!(is_lab_address(pod_addr(i).into()));
            assert!(is_lab_address(pod_addr6(i).into()));
        }
        assert!(!is_lab_address(Ipv4Addr::new(10, 0, 0, 1).into()));
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn too_many_pods() {
        let _ = pod_addr(MAX_BACKENDS);
    }

    #[test]
    fn paired_tables() {
        let text = "Tcp: RtoAlgorithm MaxConn InCsumErrors\nTcp: 1 -1 7\n\
                    Udp: InDatagrams InCsumErrors\nUdp: 3 0\n";
        let table = parse_paired_table(text).unwrap();
        assert!(table.contains(&("Tcp".into(), "InCsumErrors".into(), 7)));
        assert!(table.contains(&("Udp".into(), "InCsumErrors".into(), 0)));
        assert!(!table.iter().any(|(_, name, _)| name == "MaxConn"));
        assert!(parse_paired_table("Tcp: A\n").is_err());
    }
}

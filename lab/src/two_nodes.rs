//! [`TwoNodeLab`]: a client, two nodes and pods behind each node, linked as a CNI with
//! routed pod ranges would link them: the client reaches node A, node A and node B share a
//! node link, and each node routes the other node's pod range over it.
//!
//! ```text
//!  client 192.0.2.2 ── 192.0.2.1 node A 192.0.2.17 ── 192.0.2.18 node B
//!     192.0.2.34 ─────────────────│───────────────────── 192.0.2.33 │
//!                                  │ a-p<i>                         │ b-p<i>
//!                      pods 198.51.100.0/26 (/30 each)  pods 198.51.100.64/26 (/30 each)
//! ```
//!
//! Addresses come from the documentation ranges of DESIGN.md, carved into smaller prefixes:
//! the client link is 192.0.2.0/28, the node link 192.0.2.16/28, B's own way to the client
//! 192.0.2.32/28; A's pods are in 198.51.100.0/26, B's in 198.51.100.64/26. The client
//! routes the pod range and the LoadBalancer range (203.0.113.0/24) to node A; node B
//! reaches the client over its own link, as every node of a cluster reaches clients through
//! the network and not through the node that translated (so a reply that B sends straight
//! from a pod address reaches the client untranslated, as it would on a real cluster).
//! IPv4 only.
//!
//! As on a real node (TOOLCHAIN.md): forwarding on in both nodes, TX checksum offload off on
//! every sending veth end, static neighbours, and a pass XDP program (or GRO) on the peers
//! that receive `XDP_TX` or redirected frames: the client's link and every pod's link. The
//! node link's ends get the data path's own XDP program from the test (each node attaches
//! to it), which gives them NAPI. With [`TwoNodeLabBuilder::client_link_defaults`] (the TC
//! ingress mode) the client's two links keep the kernel's default offloads (TX checksum
//! offload on) and the client's ends get no pass XDP program, as on a kind or Docker node.
//! Everything is removed on drop, also while a test panics.

use std::{
    any::Any,
    net::{IpAddr, Ipv4Addr},
    sync::{Mutex, PoisonError},
};

use crate::error::{Context, Result, ensure};

use crate::{
    netns::Netns,
    packet::MacAddr,
    process::Process,
    topology::{AttachResult, XdpPassAttacher, attach_pass},
    veth,
};

/// The client's address and its link.
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const CLIENT_LINK: &str = "c-a";
/// Node A's address on the client link and the link's name there.
pub const NODE_A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const A_UPLINK: &str = "a-c";
/// The node link: A's and B's addresses and link names.
pub const NODE_A_LINK: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 17);
pub const NODE_B_LINK: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 18);
pub const A_NODE_LINK: &str = "a-b";
pub const B_NODE_LINK: &str = "b-a";
/// Node B's own link to the client: B's and the client's addresses, the link names.
pub const NODE_B_UPLINK: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 33);
pub const CLIENT_B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 34);
pub const B_UPLINK: &str = "b-c";
pub const CLIENT_B_LINK: &str = "c-b";
/// The link inside every pod namespace.
pub const POD_LINK: &str = "eth0";
/// Pods per node, at most.
pub const MAX_PODS: usize = 16;

/// Which node a pod runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Node {
    A,
    B,
}

impl Node {
    fn base(self) -> u8 {
        match self {
            Node::A => 0,
            Node::B => 64,
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Node::A => "a",
            Node::B => "b",
        }
    }
}

/// Pod `i` of `node`: its address.
pub fn pod_addr(node: Node, i: usize) -> Ipv4Addr {
    assert!(i < MAX_PODS, "at most {MAX_PODS} pods a node");
    Ipv4Addr::new(198, 51, 100, node.base() + 4 * i as u8 + 2)
}

/// The node's address on pod `i`'s link (the pod's default gateway).
pub fn pod_gateway(node: Node, i: usize) -> Ipv4Addr {
    assert!(i < MAX_PODS, "at most {MAX_PODS} pods a node");
    Ipv4Addr::new(198, 51, 100, node.base() + 4 * i as u8 + 1)
}

/// The node-side name of pod `i`'s link.
pub fn pod_link(node: Node, i: usize) -> String {
    format!("{}-p{i}", node.tag())
}

/// Builds a [`TwoNodeLab`].
pub struct TwoNodeLabBuilder {
    pods_a: usize,
    pods_b: usize,
    attacher: Option<Box<XdpPassAttacher>>,
    client_defaults: bool,
}

impl TwoNodeLabBuilder {
    /// Pods on node A and on node B.
    pub fn pods(mut self, a: usize, b: usize) -> Self {
        self.pods_a = a;
        self.pods_b = b;
        self
    }

    /// Attaches a pass XDP program (the hook returns its guard) to the client's link and
    /// every pod's link; without one, GRO is turned on there instead (enough for redirected
    /// frames, not for `XDP_TX`).
    pub fn xdp_pass_attacher<F>(mut self, attach: F) -> Self
    where
        F: Fn(&str) -> AttachResult + Send + Sync + 'static,
    {
        self.attacher = Some(Box::new(attach));
        self
    }

    /// `true`: the client's links (to A and to B) keep the kernel's default offloads on both
    /// ends (TX checksum offload on) and the client's ends get no pass XDP program (for the
    /// TC ingress mode). Default `false`.
    pub fn client_link_defaults(mut self, on: bool) -> Self {
        self.client_defaults = on;
        self
    }

    pub fn build(self) -> Result<TwoNodeLab> {
        ensure!(
            self.pods_a <= MAX_PODS && self.pods_b <= MAX_PODS,
            "at most {MAX_PODS} pods a node"
        );
        if let Err(e) = crate::netns::remove_stale() {
            tracing::warn!("cannot remove stale lab namespaces: {e:#}");
        }
        let mut lab = TwoNodeLab {
            stubs: Mutex::new(Vec::new()),
            processes: Mutex::new(Vec::new()),
            client: Netns::new("cli")?,
            a: Netns::new("na")?,
            b: Netns::new("nb")?,
            pods_a: (0..self.pods_a)
                .map(|i| Netns::new(&format!("a{i}")))
                .collect::<Result<_>>()?,
            pods_b: (0..self.pods_b)
                .map(|i| Netns::new(&format!("b{i}")))
                .collect::<Result<_>>()?,
            a_uplink_mac: MacAddr::ZERO,
            client_defaults: self.client_defaults,
        };
        lab.setup(self.attacher.as_deref())
            .context("cannot set up the two-node lab")?;
        Ok(lab)
    }
}

/// Where a pass XDP stub sits: the client's link to A (None), its link to B
/// (`Some((Node::B, usize::MAX))`) or a pod's link.
type StubSide = Option<(Node, usize)>;

impl std::fmt::Debug for TwoNodeLabBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwoNodeLabBuilder")
            .field("pods_a", &self.pods_a)
            .field("pods_b", &self.pods_b)
            .field("xdp_pass_attacher", &self.attacher.is_some())
            .field("client_link_defaults", &self.client_defaults)
            .finish()
    }
}

impl std::fmt::Debug for TwoNodeLab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwoNodeLab")
            .field("client", &self.client.name())
            .field("a", &self.a.name())
            .field("b", &self.b.name())
            .field("pods", &(self.pods_a.len(), self.pods_b.len()))
            .finish_non_exhaustive()
    }
}

/// The two-node topology (see the module docs).
pub struct TwoNodeLab {
    stubs: Mutex<Vec<(StubSide, Box<dyn Any + Send>)>>,
    processes: Mutex<Vec<Process>>,
    client: Netns,
    a: Netns,
    b: Netns,
    pods_a: Vec<Netns>,
    pods_b: Vec<Netns>,
    a_uplink_mac: MacAddr,
    client_defaults: bool,
}

impl TwoNodeLab {
    pub fn builder() -> TwoNodeLabBuilder {
        TwoNodeLabBuilder {
            pods_a: 1,
            pods_b: 2,
            attacher: None,
            client_defaults: false,
        }
    }

    fn setup(&mut self, attacher: Option<&XdpPassAttacher>) -> Result<()> {
        for n in [&self.a, &self.b] {
            n.sysctl("net.ipv4.ip_forward", "1")?;
            n.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
            n.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
        }
        self.client
            .sysctl("net.ipv4.ip_local_port_range", "1024 60999")?;
        self.client.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
        self.client.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
        for pod in self.pods_a.iter().chain(&self.pods_b) {
            pod.sysctl("net.ipv4.tcp_max_tw_buckets", "0")?;
        }
        let (client, a, b) = (&self.client, &self.a, &self.b);
        let client_tx_off = !self.client_defaults;
        // Client <-> A.
        self.a_uplink_mac = link(
            client,
            CLIENT_LINK,
            CLIENT,
            a,
            A_UPLINK,
            NODE_A,
            28,
            client_tx_off,
        )?
        .1;
        for net in ["198.51.100.0/24", "203.0.113.0/24"] {
            veth::add_route(client, net, NODE_A.into())?;
        }
        // A <-> B, and the pod ranges routed over it.
        link(
            a,
            A_NODE_LINK,
            NODE_A_LINK,
            b,
            B_NODE_LINK,
            NODE_B_LINK,
            28,
            true,
        )?;
        veth::add_route(a, "198.51.100.64/26", NODE_B_LINK.into())?;
        veth::add_route(b, "198.51.100.0/26", NODE_A_LINK.into())?;
        // B reaches the client over its own link.
        link(
            client,
            CLIENT_B_LINK,
            CLIENT_B,
            b,
            B_UPLINK,
            NODE_B_UPLINK,
            28,
            client_tx_off,
        )?;
        veth::add_route(b, "192.0.2.0/28", CLIENT_B.into())?;
        // Pods.
        for (node, ns, pods) in [(Node::A, a, &self.pods_a), (Node::B, b, &self.pods_b)] {
            for (i, pod) in pods.iter().enumerate() {
                let gw = pod_gateway(node, i);
                link(
                    ns,
                    &pod_link(node, i),
                    gw,
                    pod,
                    POD_LINK,
                    pod_addr(node, i),
                    30,
                    true,
                )?;
                veth::add_route(pod, "default", gw.into())?;
            }
        }
        let client_sides = if self.client_defaults {
            Vec::new()
        } else {
            vec![None, Some((Node::B, usize::MAX))]
        };
        let sides: Vec<StubSide> = client_sides
            .into_iter()
            .chain((0..self.pods_a.len()).map(|i| Some((Node::A, i))))
            .chain((0..self.pods_b.len()).map(|i| Some((Node::B, i))))
            .collect();
        for side in sides {
            let (ns, ifname) = self.stub_side(side);
            match attacher {
                Some(attach) => {
                    let guard = attach_pass(attach, ns, ifname)?;
                    self.stubs
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push((side, guard));
                }
                None => veth::set_gro(ns, ifname, true)?,
            }
        }
        Ok(())
    }

    fn stub_side(&self, side: StubSide) -> (&Netns, &'static str) {
        match side {
            None => (&self.client, CLIENT_LINK),
            // The client's end of B's link.
            Some((Node::B, usize::MAX)) => (&self.client, CLIENT_B_LINK),
            Some((node, i)) => (self.pod(node, i), POD_LINK),
        }
    }

    pub fn client(&self) -> &Netns {
        &self.client
    }

    pub fn node(&self, node: Node) -> &Netns {
        match node {
            Node::A => &self.a,
            Node::B => &self.b,
        }
    }

    pub fn pod(&self, node: Node, i: usize) -> &Netns {
        match node {
            Node::A => &self.pods_a[i],
            Node::B => &self.pods_b[i],
        }
    }

    /// Every pod as (node, index).
    pub fn pods(&self) -> Vec<(Node, usize)> {
        (0..self.pods_a.len())
            .map(|i| (Node::A, i))
            .chain((0..self.pods_b.len()).map(|i| (Node::B, i)))
            .collect()
    }

    /// The MAC of node A's client-facing link.
    pub fn a_uplink_mac(&self) -> MacAddr {
        self.a_uplink_mac
    }

    /// Every namespace, for checksum-error checks.
    pub fn namespaces(&self) -> Vec<&Netns> {
        let mut v = vec![&self.client, &self.a, &self.b];
        v.extend(self.pods_a.iter().chain(&self.pods_b));
        v
    }

    /// Keeps a process until the lab goes (stopped before the namespaces are removed).
    pub fn adopt(&self, process: Process) {
        self.processes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(process);
    }

    /// Checksum-error counters (`TcpInCsumErrors`, ...) that are not 0, per namespace.
    pub fn checksum_errors(&self) -> Result<Vec<(String, String, u64)>> {
        crate::topology::checksum_errors_of(&self.namespaces())
    }
}

/// A veth pair `a_if` (in `a_ns`, address `a_addr`) <-> `b_if` (in `b_ns`, `b_addr`), both
/// `/prefix`, up, TX checksum offload off (if `tx_off`), rp_filter off, static neighbours
/// both ways. Returns the two MACs.
#[allow(clippy::too_many_arguments)]
fn link(
    a_ns: &Netns,
    a_if: &str,
    a_addr: Ipv4Addr,
    b_ns: &Netns,
    b_if: &str,
    b_addr: Ipv4Addr,
    prefix: u8,
    tx_off: bool,
) -> Result<(MacAddr, MacAddr)> {
    veth::create_pair(a_ns, a_if, b_ns, b_if)?;
    for (ns, ifname, addr) in [(a_ns, a_if, a_addr), (b_ns, b_if, b_addr)] {
        veth::add_ip(ns, ifname, IpAddr::V4(addr), prefix)?;
        if tx_off {
            veth::set_tx_checksum(ns, ifname, false)?;
        }
        veth::set_up(ns, ifname)?;
    }
    for (ns, ifname) in [(a_ns, a_if), (b_ns, b_if)] {
        // Best effort: a pod namespace has no per-interface rp_filter worth setting.
        let _ = ns.sysctl(&format!("net.ipv4.conf.{ifname}.rp_filter"), "0");
    }
    let (a_mac, b_mac) = (veth::mac(a_ns, a_if)?, veth::mac(b_ns, b_if)?);
    veth::add_neighbour(a_ns, a_if, b_addr.into(), b_mac)?;
    veth::add_neighbour(b_ns, b_if, a_addr.into(), a_mac)?;
    Ok((a_mac, b_mac))
}

impl Drop for TwoNodeLab {
    fn drop(&mut self) {
        let stubs = std::mem::take(self.stubs.get_mut().unwrap_or_else(PoisonError::into_inner));
        for (side, guard) in stubs.into_iter().rev() {
            let (ns, ifname) = self.stub_side(side);
            let name = ns.name().to_owned();
            let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                ns.enter(move || drop(guard))
            }));
            if !matches!(dropped, Ok(Ok(()))) {
                eprintln!("lab: cannot detach XDP from {ifname} in {name}");
            }
        }
        let processes = std::mem::take(
            self.processes
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for p in processes.into_iter().rev() {
            drop(p);
        }
    }
}

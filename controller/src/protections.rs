//! What a Service may not take on this node, whatever source it comes from: a NodePort
//! outside the configured range, one of the agent's own ports, a port a socket of the node
//! listens on, or a frontend address that is one of the node's own. The tables check these
//! (with the frontend index that refuses a frontend another service holds) before a service
//! gets in; the agent configures them from its settings.
//!
//! Listening sockets are read from `/proc/net/{tcp,tcp6,udp,udp6}` of the agent's network
//! namespace (TCP sockets in state LISTEN, UDP sockets bound and not connected, on any local
//! address), through a snapshot refreshed at most every [`SOCKETS_REFRESH`]: a relist of
//! thousands of services reads the files once, and a socket opened a moment ago may be
//! missed for that long. The check is made when a service takes a NodePort it did not hold;
//! a socket opened later on a port a service already holds is not detected (the packets to
//! that port keep going to the service).

use std::{
    collections::BTreeSet,
    fmt,
    net::IpAddr,
    str::FromStr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use lb_datapath::Protocol;

/// Kubernetes' default `--service-node-port-range`.
pub const DEFAULT_NODE_PORT_RANGE: PortRange = PortRange {
    first: 30000,
    last: 32767,
};
/// How old the listening-socket snapshot may get before it is read again.
pub const SOCKETS_REFRESH: Duration = Duration::from_secs(2);

/// An inclusive port range, written `first-last` (e.g. `30000-32767`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl Default for PortRange {
    fn default() -> Self {
        DEFAULT_NODE_PORT_RANGE
    }
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a port range: write FIRST-LAST, e.g. 30000-32767");
        let (a, b) = s.trim().split_once('-').ok_or_else(bad)?;
        let port = |p: &str| p.trim().parse::<u16>().ok().filter(|p| *p > 0);
        let (first, last) = (port(a).ok_or_else(bad)?, port(b).ok_or_else(bad)?);
        if first > last {
            return Err(format!(
                "port range {s:?}: the first port is above the last"
            ));
        }
        Ok(PortRange { first, last })
    }
}

impl TryFrom<String> for PortRange {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

/// Whether a socket of the node listens on a port.
pub trait Sockets: Send + Sync + fmt::Debug {
    fn listens(&self, protocol: Protocol, port: u16) -> bool;
}

/// The local ports of listening sockets (TCP LISTEN, UDP bound and unconnected).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listening {
    pub tcp: BTreeSet<u16>,
    pub udp: BTreeSet<u16>,
}

impl Sockets for Listening {
    fn listens(&self, protocol: Protocol, port: u16) -> bool {
        match protocol {
            Protocol::Tcp => self.tcp.contains(&port),
            Protocol::Udp => self.udp.contains(&port),
        }
    }
}

/// TCP state LISTEN in `/proc/net/tcp*`.
const TCP_LISTEN: &str = "0A";
/// The state `/proc/net/udp*` shows for a bound, unconnected UDP socket (TCP_CLOSE).
const UDP_UNCONNECTED: &str = "07";

/// The local ports of the listening sockets in one `/proc/net/{tcp,tcp6,udp,udp6}` text
/// (`udp`: the UDP format's states). Lines that do not parse are skipped.
pub fn parse_proc_net(text: &str, udp: bool) -> BTreeSet<u16> {
    let want = if udp { UDP_UNCONNECTED } else { TCP_LISTEN };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1)?;
            let state = fields.nth(1)?;
            let port = local.rsplit_once(':')?.1;
            (state == want)
                .then(|| u16::from_str_radix(port, 16).ok())
                .flatten()
        })
        .filter(|p| *p != 0)
        .collect()
}

impl Listening {
    /// Reads the agent's network namespace's sockets. A missing file (no IPv6) is empty.
    pub fn read() -> std::io::Result<Listening> {
        let mut out = Listening::default();
        for (file, udp) in [
            ("tcp", false),
            ("tcp6", false),
            ("udp", true),
            ("udp6", true),
        ] {
            let text = match std::fs::read_to_string(format!("/proc/net/{file}")) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let ports = parse_proc_net(&text, udp);
            if udp { &mut out.udp } else { &mut out.tcp }.extend(ports);
        }
        Ok(out)
    }
}

/// [`Listening::read`] behind a snapshot at most [`SOCKETS_REFRESH`] old.
#[derive(Debug, Default)]
pub struct ProcSockets {
    snapshot: Mutex<Option<(Instant, Listening)>>,
}

impl Sockets for ProcSockets {
    fn listens(&self, protocol: Protocol, port: u16) -> bool {
        let mut snap = self.snapshot.lock().expect("poisoned");
        let fresh = snap
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < SOCKETS_REFRESH);
        if !fresh {
            match Listening::read() {
                Ok(l) => *snap = Some((Instant::now(), l)),
                Err(e) => {
                    tracing::warn!(error = %e, "reading /proc/net for listening sockets failed; NodePorts are not checked against them");
                    *snap = Some((Instant::now(), Listening::default()));
                }
            }
        }
        snap.as_ref()
            .is_some_and(|(_, l)| l.listens(protocol, port))
    }
}

/// The node's protections, as the tables apply them to every service.
#[derive(Clone, Debug, Default)]
pub struct Protections {
    /// The NodePorts a service may take.
    pub node_port_range: PortRange,
    /// The TCP ports the agent itself listens on (API, metrics).
    pub agent_ports: BTreeSet<u16>,
    /// The attached interfaces' addresses (the Node object's come from the tables).
    pub interface_addresses: BTreeSet<IpAddr>,
    /// This node's Node object: its addresses are node addresses too.
    pub node_name: Option<String>,
    /// Services without the `sluice.io/dsr` annotation use direct server return (the
    /// agent's `dsr` setting; off: source NAT).
    pub dsr_by_default: bool,
    /// The node's listening sockets; `None`: not checked.
    pub sockets: Option<Arc<dyn Sockets>>,
}

impl Protections {
    /// Why a service may not take `node_port`, if it may not. `new`: the service does not
    /// hold it yet (only then are the node's sockets consulted).
    pub fn node_port_problem(
        &self,
        protocol: Protocol,
        node_port: u16,
        new: bool,
    ) -> Option<String> {
        if !self.node_port_range.contains(node_port) {
            return Some(format!(
                "nodePort {node_port} is outside the node port range {} (--node-port-range)",
                self.node_port_range
            ));
        }
        if protocol == Protocol::Tcp && self.agent_ports.contains(&node_port) {
            return Some(format!(
                "nodePort {node_port}/TCP is a port of the agent itself (api_listen or metrics_listen)"
            ));
        }
        if new
            && self
                .sockets
                .as_ref()
                .is_some_and(|s| s.listens(protocol, node_port))
        {
            return Some(format!(
                "nodePort {node_port}/{protocol}: a socket on the node listens on it; it is \
                 not taken over"
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_parse_and_refuse_nonsense() {
        assert_eq!(
            "30000-32767".parse::<PortRange>(),
            Ok(DEFAULT_NODE_PORT_RANGE)
        );
        assert_eq!(
            " 1000 - 1000 ".parse::<PortRange>(),
            Ok(PortRange {
                first: 1000,
                last: 1000
            })
        );
        for bad in ["", "30000", "0-10", "10-70000", "a-b", "200-100"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad:?}");
        }
        assert_eq!(DEFAULT_NODE_PORT_RANGE.to_string(), "30000-32767");
    }

    /// A /proc/net/tcp as the kernel prints it: a LISTEN socket on 127.0.0.1:10260, one on
    /// 0.0.0.0:30090, an established connection from local port 30091 (not listening).
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:2814 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234 1 0000000000000000 100 0 0 10 0
   1: 00000000:758A 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1235 1 0000000000000000 100 0 0 10 0
   2: 0100007F:758B 0100007F:2814 01 00000000:00000000 00:00000000 00000000     0        0 1236 1 0000000000000000 20 4 30 10 -1
";
    /// /proc/net/tcp6: a LISTEN socket on [::]:30092.
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:758C 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2345 1 0000000000000000 100 0 0 10 0
";
    /// /proc/net/udp: a bound socket on 0.0.0.0:30053 and a connected one from 40000.
    const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  100: 00000000:7595 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 3456 2 0000000000000000 0
  101: 0100007F:9C40 0100007F:0035 01 00000000:00000000 00:00000000 00000000     0        0 3457 2 0000000000000000 0
";

    #[test]
    fn proc_net_parser_takes_listening_sockets_only() {
        assert_eq!(parse_proc_net(TCP, false), BTreeSet::from([10260, 30090]));
        assert_eq!(parse_proc_net(TCP6, false), BTreeSet::from([30092]));
        assert_eq!(parse_proc_net(UDP, true), BTreeSet::from([30101]));
        assert_eq!(parse_proc_net("header only\n", false), BTreeSet::new());
        assert_eq!(parse_proc_net("h\n garbage line\n", true), BTreeSet::new());
    }

    #[test]
    fn node_ports_outside_the_range_of_the_agent_or_listened_on_are_refused() {
        let p = Protections {
            agent_ports: BTreeSet::from([30260]),
            sockets: Some(Arc::new(Listening {
                tcp: BTreeSet::from([30090]),
                udp: BTreeSet::from([30053]),
            })),
            ..Default::default()
        };
        assert_eq!(p.node_port_problem(Protocol::Tcp, 30080, true), None);
        let outside = p.node_port_problem(Protocol::Tcp, 8080, true).unwrap();
        assert!(
            outside.contains("outside the node port range 30000-32767"),
            "{outside}"
        );
        assert!(p.node_port_problem(Protocol::Tcp, 30260, true).is_some());
        assert_eq!(p.node_port_problem(Protocol::Udp, 30260, true), None);
        let listened = p.node_port_problem(Protocol::Tcp, 30090, true).unwrap();
        assert!(
            listened.contains("a socket on the node listens on it"),
            "{listened}"
        );
        assert_eq!(
            p.node_port_problem(Protocol::Tcp, 30090, false),
            None,
            "a port the service already holds is not re-checked"
        );
        assert!(p.node_port_problem(Protocol::Udp, 30053, true).is_some());
        assert_eq!(p.node_port_problem(Protocol::Tcp, 30053, true), None);
    }
}

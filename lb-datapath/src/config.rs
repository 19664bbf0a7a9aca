//! Configuration of the data path: every capacity is a setting, named in capacity errors.

use std::path::PathBuf;

use lb_common::LAYOUT_VERSION;
use serde::{Deserialize, Serialize};

/// Map capacities. The names of the fields are the settings that capacity errors name
/// (`capacities.<field>`). The defaults hold 10 000 services of 10 endpoints (100 000
/// backends) with up to three frontends each, with room to spare; the README's data-path
/// section gives the memory of every map at these sizes (`program_bench --memory` prints it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Capacities {
    /// Number of services (one per service port and protocol).
    pub services: u32,
    /// Number of frontends (address:port/protocol entries, a NodePort counts once).
    pub frontends: u32,
    /// Number of backends over all services.
    pub backends: u32,
    /// Selection-table slots over all services (4 bytes each; a multiple of 16). A service
    /// holds one table in force and, while its size changes, a second one. The default
    /// (20 Mi slots, 80 MiB) holds 10 000 tables of 9 to 12 backends (1801 slots each, 18.0 M)
    /// plus 2.9 M slots for tables being resized.
    pub slots: u32,
    /// ClientIP session-affinity entries (LRU), one per client and service with affinity.
    pub affinity: u32,
    /// Confirmed TCP conntrack entries (LRU); each flow takes two (forward and reply).
    pub conntrack: u32,
    /// TCP flows not confirmed yet (LRU, two entries a flow): a SYN flood evicts only these.
    pub conntrack_syn: u32,
    /// Non-TCP (UDP) conntrack entries (LRU, two a flow): UDP churn evicts only these.
    pub conntrack_other: u32,
    /// Addresses of the attached interfaces (NodePort frontends).
    pub node_addresses: u32,
    /// Devices that may receive redirected frames.
    pub redirect_ports: u32,
    /// `loadBalancerSourceRanges` prefixes over all services.
    pub source_ranges: u32,
    /// IPv4 datagrams in flight as fragments (LRU): how each first fragment was
    /// translated, for the later ones.
    pub fragments: u32,
}

impl Default for Capacities {
    fn default() -> Self {
        Capacities {
            services: 16384,
            frontends: 32768,
            backends: 131072,
            slots: 20 << 20,
            affinity: 1 << 16,
            conntrack: 1 << 18,
            conntrack_syn: 1 << 16,
            conntrack_other: 1 << 17,
            node_addresses: 256,
            redirect_ports: 256,
            source_ranges: 16384,
            fragments: 8192,
        }
    }
}

/// Sizing of the Maglev selection tables (`lb_userspace::maglev::table_size`): a pure
/// function of the backend count, so every node and a restarted agent size a table alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MaglevConfig {
    /// A table gets the smallest prime >= this many slots times the backend count rounded up
    /// to the next of 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (powers of two and 1.5 x powers of
    /// two): 9..=12 backends share one size (150 x 12: 1801 slots, 7.0 KiB), 13..=16 the next.
    /// Adding or removing a backend within such a step moves few of the other backends'
    /// slots; crossing a step rebuilds the table at the new size (flows with a conntrack
    /// entry keep their backend, others mostly move). Disruption within a step (share of
    /// the other backends' slots that move; N = 2..=40, 20 seeds, first/middle/last backend
    /// removed; `maglev_disruption_*` tests): at 150, mean 1.83%, p95 2.52%, worst 4.93%;
    /// at 100, mean 2.26%, worst 7.06%; at 200, mean 1.57%, worst 5.85%. The worst case comes
    /// from rare unlucky permutations and is not monotonic in the size (175: 8.9%).
    pub slots_per_backend: u32,
    /// ...but never more than this (a prime is chosen at or below it). 4 bytes per slot.
    pub max_table_size: u32,
}

impl Default for MaglevConfig {
    fn default() -> Self {
        MaglevConfig {
            slots_per_backend: 150,
            max_table_size: 65521,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataplaneConfig {
    pub capacities: Capacities,
    pub maglev: MaglevConfig,
    /// Seed of the flow hash and of Maglev. It must be the same on every node of a cluster
    /// (so that every node picks the same backend for the same flow) and should differ
    /// between clusters (so that nobody can predict the backend of a flow). `None`: the agent
    /// chooses it before the first data-path write (`DataPath::set_hash_seed`): from the
    /// cluster's `default/kubernetes` Service UID in Kubernetes mode, random and kept in
    /// `<state_dir>/hash-seed` in standalone mode; a data path opened without one keeps the
    /// seed of the pinned state it adopts, else uses 0 until it is set.
    pub hash_seed: Option<u32>,
    /// TCP RSTs and ICMP port unreachables sent for services without a usable endpoint, per
    /// CPU and second; beyond that such packets are dropped (and counted).
    pub refusals_per_sec_per_cpu: u32,
    /// Pin maps and links here so the data path outlives the process (see `lb_userspace::pins`);
    /// `None`: nothing is pinned and the data path goes away with the process. In a
    /// configuration file an absent `pin:` means the default pins (`/sys/fs/bpf/sluice`,
    /// instance `default`), and `pin: null` turns pinning off; [`DataplaneConfig::default`]
    /// (for tests and tools) pins nothing.
    #[serde(default = "PinConfig::default_some")]
    pub pin: Option<PinConfig>,
    /// Conntrack timeouts and garbage collection.
    pub conntrack: ConntrackConfig,
    /// Source NAT of flows to endpoints on other nodes.
    pub nat: NatConfig,
    /// Which program takes the packets arriving on an attached interface (`auto`, `xdp` or
    /// `tc`; the agent's `--mode` overrides it): see [`IngressMode`].
    pub ingress_mode: IngressMode,
}

/// Which program load-balances the packets arriving on an attached interface. The TC
/// reverse NAT at egress is attached in every mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IngressMode {
    /// Chosen per interface when it is attached: `tc` for a veth (as a kind or Docker node's
    /// uplink is: packets sent by local processes arrive with partial checksums XDP cannot
    /// see, and `XDP_TX` frames vanish unless the peer runs an XDP program), `xdp` for
    /// anything else.
    #[default]
    Auto,
    /// The XDP program (native, else generic).
    Xdp,
    /// The TC classifier at TCX ingress (kernel 6.6 or later); translated packets are
    /// redirected with `bpf_redirect`, to any device.
    Tc,
}

impl IngressMode {
    /// Every mode, as the configuration and the `--mode` flag spell them.
    pub const ALL: [IngressMode; 3] = [IngressMode::Auto, IngressMode::Xdp, IngressMode::Tc];

    /// The mode's name in configuration files and flags.
    pub const fn name(self) -> &'static str {
        match self {
            IngressMode::Auto => "auto",
            IngressMode::Xdp => "xdp",
            IngressMode::Tc => "tc",
        }
    }
}

impl std::fmt::Display for IngressMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An ingress mode name that is none of `auto`, `xdp`, `tc`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown ingress mode `{0}`: expected one of auto, xdp, tc")]
pub struct UnknownIngressMode(pub String);

impl std::str::FromStr for IngressMode {
    type Err = UnknownIngressMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        IngressMode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| UnknownIngressMode(s.to_string()))
    }
}

/// Source NAT: a new flow to an endpoint on another node leaves this node from the node's
/// address towards that endpoint (the route's preferred source) and a port of this range,
/// so its replies come back here. Ports are per (endpoint, node address, protocol): the
/// range bounds the concurrent flows of one node to one endpoint. The agent adds the range
/// to `net.ipv4.ip_local_reserved_ports`, so no local socket is ever given one of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatConfig {
    /// First port of the range (inclusive); above the node's ephemeral range by default
    /// (Linux: 32768-60999) and above every NodePort.
    pub port_min: u16,
    /// Last port of the range (inclusive).
    pub port_max: u16,
}

impl Default for NatConfig {
    fn default() -> Self {
        NatConfig {
            port_min: 61000,
            port_max: 65535,
        }
    }
}

/// How long a tracked flow lives without a packet, by state, and how the background GC
/// walks the tables. The defaults are Cilium's timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConntrackConfig {
    /// TCP, a SYN seen, not confirmed by both sides yet.
    pub tcp_syn_seconds: u32,
    /// TCP, confirmed.
    pub tcp_established_seconds: u32,
    /// TCP after a FIN or RST (either side).
    pub tcp_closing_seconds: u32,
    /// Non-TCP (UDP).
    pub other_seconds: u32,
    /// The GC wakes this often...
    pub gc_interval_millis: u64,
    /// ...and reads at most this many entries of each table per wake-up, resuming where it
    /// stopped (a pass over a table of N entries takes N / gc_batch wake-ups; an entry costs
    /// about 1.7 µs, so 16 384 a table a second is at most ~8 % of a core).
    pub gc_batch: u32,
    /// A new pass starts this long after the previous one started (at once if that one took
    /// longer): the counts `drain-wait --flows` and the metrics read are at most about this
    /// old on small tables.
    pub gc_pass_interval_seconds: u32,
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        ConntrackConfig {
            tcp_syn_seconds: 60,
            tcp_established_seconds: 6 * 3600,
            tcp_closing_seconds: 10,
            other_seconds: 60,
            gc_interval_millis: 1000,
            gc_batch: 16384,
            gc_pass_interval_seconds: 5,
        }
    }
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        DataplaneConfig {
            capacities: Capacities::default(),
            maglev: MaglevConfig::default(),
            hash_seed: None,
            refusals_per_sec_per_cpu: 1000,
            pin: None,
            conntrack: ConntrackConfig::default(),
            nat: NatConfig::default(),
            ingress_mode: IngressMode::Auto,
        }
    }
}

/// Where an instance pins its state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinConfig {
    /// A directory on bpffs, normally `/sys/fs/bpf/sluice`.
    pub root: PathBuf,
    /// Name of this data path instance (one per node, normally `default`).
    pub instance: String,
}

impl Default for PinConfig {
    fn default() -> Self {
        PinConfig {
            root: PathBuf::from("/sys/fs/bpf/sluice"),
            instance: "default".into(),
        }
    }
}

impl PinConfig {
    /// `Some(PinConfig::default())`, the configuration file's default.
    pub fn default_some() -> Option<PinConfig> {
        Some(PinConfig::default())
    }

    pub fn instance_dir(&self) -> PathBuf {
        self.root.join(&self.instance)
    }

    /// The folder of the current layout version.
    pub fn layout_dir(&self) -> PathBuf {
        self.instance_dir().join(format!("v{LAYOUT_VERSION}"))
    }

    pub fn map_path(&self, map: &str) -> PathBuf {
        self.layout_dir().join(map)
    }

    /// A link's pin (bpffs refuses names with dots, which interface names may hold).
    pub fn link_path(&self, kind: &str, ifname: &str) -> PathBuf {
        self.layout_dir()
            .join("links")
            .join(format!("{kind}-{}", ifname.replace('.', "_")))
    }

    /// The command that removes this instance.
    pub fn uninstall_hint(&self) -> String {
        format!(
            "sluice uninstall --pin-root {} --instance {}",
            self.root.display(),
            self.instance
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_file_section_without_pin_keeps_the_default_pins() {
        let c: DataplaneConfig =
            serde_json::from_str(r#"{"capacities": {"services": 20000}}"#).expect("parses");
        assert_eq!(c.pin, Some(PinConfig::default()));
        assert_eq!(c.capacities.services, 20000);
        let off: DataplaneConfig = serde_json::from_str(r#"{"pin": null}"#).expect("parses");
        assert_eq!(off.pin, None);
        assert_eq!(DataplaneConfig::default().pin, None);
    }

    #[test]
    fn the_ingress_mode_is_auto_unless_set_and_unknown_names_list_the_accepted_ones() {
        let c: DataplaneConfig = serde_json::from_str("{}").expect("parses");
        assert_eq!(c.ingress_mode, IngressMode::Auto);
        for (text, mode) in [
            ("auto", IngressMode::Auto),
            ("xdp", IngressMode::Xdp),
            ("tc", IngressMode::Tc),
        ] {
            let c: DataplaneConfig =
                serde_json::from_str(&format!(r#"{{"ingress_mode": "{text}"}}"#)).expect(text);
            assert_eq!(c.ingress_mode, mode);
            assert_eq!(text.parse::<IngressMode>(), Ok(mode));
            assert_eq!(mode.to_string(), text);
            assert_eq!(
                serde_json::to_string(&mode).expect("serializes"),
                format!("\"{text}\"")
            );
        }
        let e = serde_json::from_str::<DataplaneConfig>(r#"{"ingress_mode": "TC"}"#)
            .expect_err("names are lowercase");
        assert!(e.to_string().contains("`auto`, `xdp`, `tc`"), "{e}");
        let e = "ebpf".parse::<IngressMode>().expect_err("unknown");
        assert_eq!(
            e.to_string(),
            "unknown ingress mode `ebpf`: expected one of auto, xdp, tc"
        );
    }
}

//! What the data path reports: its services and backends as held, the drain handshake's
//! answer, map occupancy and traffic counters.

use std::net::SocketAddr;

use lb_common::TrafficStats;
use serde::Serialize;

use crate::spec::{EndpointState, Frontend, Protocol};

/// A service as the data path holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceDump {
    pub name: String,
    pub id: u32,
    pub protocol: Protocol,
    pub frontends: Vec<Frontend>,
    pub table_size: u32,
    pub backends: Vec<BackendDump>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackendDump {
    pub addr: SocketAddr,
    pub id: u32,
    pub state: EndpointState,
    /// Slots of the selection table in force that name this backend.
    pub slots: u32,
}

/// The drain handshake's answer for one backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndpointStatus {
    pub service: String,
    pub backend: SocketAddr,
    pub state: EndpointState,
    /// Whether the data path still picks this backend for new flows.
    pub selectable: bool,
    /// Live tracked flows (client -> backend) that name it, as of the conntrack GC's last
    /// complete pass (no table walk per call); `None` when not asked for, or before the
    /// first pass completed.
    pub flows: Option<u64>,
}

/// The conntrack tables as the background GC saw them in its last complete pass (reading
/// this never walks a table).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ConntrackStats {
    /// Live FORWARD entries (one a flow) by (table, state): tables `tcp`, `tcp_syn`,
    /// `other`; states `new`, `established`, `closing`, `closed`, `other`.
    pub flows: Vec<(String, String, u64)>,
    /// Entries of each table (both directions) at the end of the last pass.
    pub entries: Vec<(String, u64)>,
    /// Entries the GC deleted because their flow had expired (or had no live flow).
    pub expired: u64,
    /// GC wake-ups, and complete passes over all tables.
    pub gc_runs: u64,
    pub gc_passes: u64,
}

/// Entries held by each map, read from the kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MapOccupancy {
    pub frontends: u64,
    pub backends: u64,
    pub slots: u64,
    /// Entries of the three conntrack maps (both directions of every flow).
    pub conntrack: u64,
    pub node_addresses: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ServiceStats {
    pub service: Stats,
    pub backends: Vec<(SocketAddr, Stats)>,
    /// New flows dropped by the service's `loadBalancerSourceRanges`.
    #[serde(default)]
    pub source_denied: u64,
}

/// Counters summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

impl From<TrafficStats> for Stats {
    fn from(t: TrafficStats) -> Self {
        Stats {
            packets: t.packets,
            bytes: t.bytes,
            new_flows: t.new_flows,
        }
    }
}

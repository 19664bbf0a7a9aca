//! What the assigner reports (`GET /sluice/v1/ipam`).

use std::{collections::BTreeMap, net::IpAddr};

use serde::Serialize;

use super::pool::PoolUsage;

#[derive(Clone, Debug, Default, Serialize)]
pub struct IpamStatus {
    /// Whether IPAM is configured on this agent.
    pub enabled: bool,
    /// Whether this agent holds the Lease (only the holder assigns).
    pub leader: bool,
    /// Whether the holder has listed every Service since it took the Lease.
    pub listed: bool,
    pub pools: Vec<PoolUsage>,
    /// Address -> `namespace/name`, as the holder last knew it.
    pub assignments: BTreeMap<IpAddr, String>,
    /// Refusals by Event reason (in use, not in a pool, exhausted, conflict, invalid).
    pub refusals: BTreeMap<String, u64>,
    /// Successful status writes by this agent.
    pub status_writes: u64,
}

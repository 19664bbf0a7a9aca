//! The `ipam:` section of the agent's configuration.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

/// LoadBalancer IP assignment (bare metal). Off unless `pools` is given.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "snake_case")]
pub struct IpamConfig {
    /// CIDRs the assigner hands out, IPv4 and/or IPv6 (e.g. `192.0.2.240/28`). In IPv4
    /// pools of /30 and wider, the network and broadcast addresses are never assigned; in
    /// IPv6 pools of /126 and wider, the all-zeros (subnet-router anycast) address is not.
    pub pools: Vec<String>,
    /// Services with this `spec.loadBalancerClass` are ours.
    pub load_balancer_class: String,
    /// Whether services of type LoadBalancer without a class are ours too (the default
    /// implementation of the cluster; turn off when a cloud controller or MetalLB is).
    pub default_class: bool,
    /// The `coordination.k8s.io` Lease that makes exactly one agent the assigner.
    pub lease_namespace: String,
    pub lease_name: String,
    /// How long a Lease holder stays the assigner without renewing it; another agent takes
    /// over after this (plus the grace) when the holder is gone.
    pub lease_duration_seconds: u64,
    /// The holder renews this long before its Lease expires; tolerated clock skew between
    /// nodes. Must be less than the duration.
    pub lease_grace_seconds: u64,
}

impl Default for IpamConfig {
    fn default() -> Self {
        IpamConfig {
            pools: Vec::new(),
            load_balancer_class: DEFAULT_CLASS.into(),
            default_class: true,
            lease_namespace: "kube-system".into(),
            lease_name: "sluice-ipam".into(),
            lease_duration_seconds: 15,
            lease_grace_seconds: 5,
        }
    }
}

/// A setting of `ipam` the agent cannot use; the text names the setting and what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidIpam(pub String);

macro_rules! invalid {
    ($($arg:tt)*) => {
        return Err(InvalidIpam(format!($($arg)*)))
    };
}

/// The `spec.loadBalancerClass` sluice answers to by default.
pub const DEFAULT_CLASS: &str = "sluice.dev/lb";

impl IpamConfig {
    /// The pools, parsed; errors name the bad entry.
    pub fn parse_pools(&self) -> Result<Vec<IpNet>, InvalidIpam> {
        let mut nets: Vec<IpNet> = Vec::new();
        for (i, p) in self.pools.iter().enumerate() {
            let net: IpNet = p
                .trim()
                .parse()
                .or_else(|_| p.trim().parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    InvalidIpam(format!(
                        "ipam.pools[{i}]: {p:?} is not a CIDR (like 192.0.2.240/28)"
                    ))
                })?;
            if net.trunc() != net {
                invalid!(
                    "ipam.pools[{i}]: {p} has host bits set; did you mean {}?",
                    net.trunc()
                );
            }
            if let Some(o) = nets.iter().find(|o| o.contains(&net) || net.contains(*o)) {
                invalid!("ipam.pools[{i}]: {net} overlaps pool {o}");
            }
            nets.push(net);
        }
        Ok(nets)
    }

    /// Checks everything but the API server; `Ok(None)` when IPAM is off.
    pub fn validate(&self) -> Result<Option<Vec<IpNet>>, InvalidIpam> {
        if self.pools.is_empty() {
            return Ok(None);
        }
        let pools = self.parse_pools()?;
        if self.lease_grace_seconds == 0 || self.lease_grace_seconds >= self.lease_duration_seconds
        {
            invalid!(
                "ipam: lease_grace_seconds ({}) must be > 0 and less than lease_duration_seconds ({})",
                self.lease_grace_seconds,
                self.lease_duration_seconds
            );
        }
        if self.load_balancer_class.is_empty() && !self.default_class {
            invalid!(
                "ipam: with default_class off, load_balancer_class must name the class of the services to serve"
            );
        }
        if self.lease_name.is_empty() || self.lease_namespace.is_empty() {
            invalid!("ipam: lease_name and lease_namespace must not be empty");
        }
        Ok(Some(pools))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pools: &[&str]) -> IpamConfig {
        IpamConfig {
            pools: pools.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn pools_parse_and_bad_ones_are_named() {
        assert_eq!(cfg(&[]).validate().unwrap(), None);
        let p = cfg(&["192.0.2.240/28", "2001:db8::/120", "198.51.100.7"])
            .validate()
            .unwrap()
            .unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[2].to_string(), "198.51.100.7/32");
        let e = cfg(&["192.0.2.0/24", "nope"]).validate().unwrap_err();
        assert!(
            format!("{e:#}").contains("ipam.pools[1]: \"nope\""),
            "{e:#}"
        );
        let e = cfg(&["192.0.2.1/24"]).validate().unwrap_err();
        assert!(
            format!("{e:#}").contains("did you mean 192.0.2.0/24"),
            "{e:#}"
        );
        let e = cfg(&["192.0.2.0/24", "192.0.2.128/25"])
            .validate()
            .unwrap_err();
        assert!(
            format!("{e:#}").contains("overlaps pool 192.0.2.0/24"),
            "{e:#}"
        );
        let mut c = cfg(&["192.0.2.0/24"]);
        c.lease_grace_seconds = 15;
        assert!(c.validate().is_err());
    }
}

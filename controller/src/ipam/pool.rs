//! The address pools and who holds which address. Pure: no I/O, no clock.
//!
//! Allocation is next-fit from a cursor per pool, so handing out N addresses costs O(N)
//! in total, and an exhausted pool is known from its counters without a scan.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;

use crate::model::Key;

#[derive(Debug)]
struct Pool {
    net: IpNet,
    /// Offsets of the assignable addresses: `first..first + size`.
    first: u128,
    size: u128,
    used: u128,
    /// Next offset (relative to `first`) to try.
    cursor: u128,
}

impl Pool {
    fn new(net: IpNet) -> Pool {
        let bits = net.max_prefix_len() - net.prefix_len();
        let total: u128 = if bits >= 128 {
            u128::MAX
        } else {
            1u128 << bits
        };
        // IPv4 /30 and wider: no network or broadcast address; IPv6 /126 and wider: no
        // subnet-router anycast (all-zeros) address.
        let (first, size) = match net {
            IpNet::V4(_) if bits >= 2 => (1, total - 2),
            IpNet::V6(_) if bits >= 2 => (1, total - 1),
            _ => (0, total),
        };
        Pool {
            net,
            first,
            size,
            used: 0,
            cursor: 0,
        }
    }

    fn base(&self) -> u128 {
        match self.net.network() {
            IpAddr::V4(a) => u32::from(a) as u128,
            IpAddr::V6(a) => u128::from(a),
        }
    }

    fn addr(&self, offset: u128) -> IpAddr {
        let n = self.base() + self.first + offset;
        match self.net {
            IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from(n as u32)),
            IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(n)),
        }
    }

    /// Whether `ip` is one of this pool's assignable addresses.
    fn holds(&self, ip: IpAddr) -> bool {
        if !self.net.contains(&ip) {
            return false;
        }
        let n = match ip {
            IpAddr::V4(a) => u32::from(a) as u128,
            IpAddr::V6(a) => u128::from(a),
        };
        let off = n - self.base();
        off >= self.first && off - self.first < self.size
    }
}

/// Why an address could not be given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The requested address is in no pool.
    NotInPool(IpAddr),
    /// The requested address is held by another service.
    InUse(IpAddr, Key),
    /// No pool of the family has a free address.
    Exhausted { ipv6: bool },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NotInPool(ip) => write!(
                f,
                "{ip} is in no address pool of sluice (ipam.pools); request an address of a pool or none"
            ),
            Refusal::InUse(ip, by) => {
                write!(
                    f,
                    "{ip} is already assigned to Service {by}; nothing was assigned"
                )
            }
            Refusal::Exhausted { ipv6 } => write!(
                f,
                "no free {} address left in the pools; add a pool (ipam.pools) or release a LoadBalancer Service",
                if *ipv6 { "IPv6" } else { "IPv4" }
            ),
        }
    }
}

/// Pools plus the holder of every assigned address.
#[derive(Debug, Default)]
pub struct Allocator {
    pools: Vec<Pool>,
    holder: HashMap<IpAddr, Key>,
    held: HashMap<Key, Vec<IpAddr>>,
}

/// Size and use of one pool, for metrics and the API.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PoolUsage {
    pub pool: String,
    /// Assignable addresses (saturates at u64::MAX for huge IPv6 pools).
    pub size: u64,
    pub assigned: u64,
}

impl Allocator {
    pub fn new(pools: &[IpNet]) -> Allocator {
        Allocator {
            pools: pools.iter().copied().map(Pool::new).collect(),
            ..Default::default()
        }
    }

    fn pool_of(&self, ip: IpAddr) -> Option<usize> {
        self.pools.iter().position(|p| p.holds(ip))
    }

    /// Whether `ip` is an address sluice assigns (in a pool).
    pub fn in_pool(&self, ip: IpAddr) -> bool {
        self.pool_of(ip).is_some()
    }

    pub fn holder(&self, ip: IpAddr) -> Option<&Key> {
        self.holder.get(&ip)
    }

    /// The addresses `key` holds.
    pub fn held_by(&self, key: &Key) -> &[IpAddr] {
        self.held.get(key).map(Vec::as_slice).unwrap_or_default()
    }

    /// Records that `key` holds `ip` (a requested address, or one found in a status).
    pub fn claim(&mut self, key: &Key, ip: IpAddr) -> Result<(), Refusal> {
        let pool = self.pool_of(ip).ok_or(Refusal::NotInPool(ip))?;
        match self.holder.get(&ip) {
            Some(k) if k == key => return Ok(()),
            Some(k) => return Err(Refusal::InUse(ip, k.clone())),
            None => {}
        }
        self.pools[pool].used += 1;
        self.holder.insert(ip, key.clone());
        self.held.entry(key.clone()).or_default().push(ip);
        Ok(())
    }

    /// Gives `key` a free address of the family, next-fit.
    pub fn allocate(&mut self, key: &Key, ipv6: bool) -> Result<IpAddr, Refusal> {
        for i in 0..self.pools.len() {
            let p = &self.pools[i];
            if matches!(p.net, IpNet::V6(_)) != ipv6 || p.used >= p.size {
                continue;
            }
            // A free address exists in this pool: find it from the cursor.
            let mut off = p.cursor;
            loop {
                let ip = self.pools[i].addr(off);
                off = (off + 1) % self.pools[i].size;
                if !self.holder.contains_key(&ip) {
                    self.pools[i].cursor = off;
                    self.claim(key, ip)?;
                    return Ok(ip);
                }
            }
        }
        Err(Refusal::Exhausted { ipv6 })
    }

    /// Releases one address of `key`.
    pub fn release_ip(&mut self, key: &Key, ip: IpAddr) {
        if self.holder.get(&ip) == Some(key) {
            self.holder.remove(&ip);
            if let Some(p) = self.pool_of(ip) {
                self.pools[p].used -= 1;
            }
            if let Some(v) = self.held.get_mut(key) {
                v.retain(|a| *a != ip);
                if v.is_empty() {
                    self.held.remove(key);
                }
            }
        }
    }

    /// Releases everything `key` holds.
    pub fn release(&mut self, key: &Key) {
        for ip in self.held_by(key).to_vec() {
            self.release_ip(key, ip);
        }
    }

    pub fn usage(&self) -> Vec<PoolUsage> {
        self.pools
            .iter()
            .map(|p| PoolUsage {
                pool: p.net.to_string(),
                size: u64::try_from(p.size).unwrap_or(u64::MAX),
                assigned: u64::try_from(p.used).unwrap_or(u64::MAX),
            })
            .collect()
    }

    /// Every assignment, sorted by address.
    pub fn assignments(&self) -> BTreeMap<IpAddr, Key> {
        self.holder.iter().map(|(ip, k)| (*ip, k.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(n: &str) -> Key {
        Key::new("default", n)
    }

    fn alloc(pools: &[&str]) -> Allocator {
        Allocator::new(&pools.iter().map(|p| p.parse().unwrap()).collect::<Vec<_>>())
    }

    #[test]
    fn next_fit_skips_network_broadcast_and_held_addresses() {
        let mut a = alloc(&["192.0.2.0/30", "2001:db8::/126"]);
        assert_eq!(a.allocate(&k("a"), false).unwrap().to_string(), "192.0.2.1");
        a.claim(&k("b"), "192.0.2.2".parse().unwrap()).unwrap();
        assert_eq!(
            a.allocate(&k("c"), false),
            Err(Refusal::Exhausted { ipv6: false })
        );
        assert_eq!(
            a.allocate(&k("c"), true).unwrap().to_string(),
            "2001:db8::1"
        );
        a.release(&k("a"));
        assert_eq!(a.allocate(&k("d"), false).unwrap().to_string(), "192.0.2.1");
        let u = a.usage();
        assert_eq!((u[0].size, u[0].assigned), (2, 2));
        assert_eq!((u[1].size, u[1].assigned), (3, 1));
    }

    #[test]
    fn requests_outside_pools_or_held_elsewhere_are_refused() {
        let mut a = alloc(&["192.0.2.0/29"]);
        let ip: IpAddr = "192.0.2.3".parse().unwrap();
        a.claim(&k("a"), ip).unwrap();
        a.claim(&k("a"), ip).unwrap();
        assert_eq!(a.claim(&k("b"), ip), Err(Refusal::InUse(ip, k("a"))));
        let net: IpAddr = "192.0.2.0".parse().unwrap();
        assert_eq!(a.claim(&k("b"), net), Err(Refusal::NotInPool(net)));
        assert_eq!(a.usage()[0].assigned, 1);
        // A single-address pool hands out that address.
        let mut one = alloc(&["198.51.100.9/32"]);
        assert_eq!(
            one.allocate(&k("x"), false).unwrap().to_string(),
            "198.51.100.9"
        );
    }

    #[test]
    fn huge_ipv6_pools_do_not_overflow() {
        let mut a = alloc(&["2001:db8::/64", "::/0"]);
        assert_eq!(
            a.allocate(&k("a"), true).unwrap().to_string(),
            "2001:db8::1"
        );
        assert_eq!(a.usage()[1].size, u64::MAX);
    }
}

//! What the assigner does with one Service: pure (the allocator in, the status to write and
//! the events to emit out), so every rule is unit-tested without an API server.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{LoadBalancerIngress, Service};

use super::pool::{Allocator, Refusal};
use crate::{model::Key, objects::Kind};

/// The parts of a Service the assigner reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    pub key: Key,
    pub role: Role,
    /// `spec.loadBalancerIP` (deprecated, still honoured), unparsable values kept as text.
    pub requested: Option<Result<IpAddr, String>>,
    /// IPv6 wanted, per `spec.ipFamilies` (IPv4 alone when unset).
    pub families: Vec<bool>,
    /// `status.loadBalancer.ingress[].ip`, in order.
    pub ingress: Vec<IpAddr>,
}

/// Whose business a Service's load-balancer status is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Type LoadBalancer of our class (or without one when we are the default).
    Ours,
    /// Type LoadBalancer of another class: its implementation writes the status; addresses
    /// of our pools found there are reserved, never handed out again.
    Foreign,
    /// Not a LoadBalancer (any more), or being deleted.
    NotLoadBalancer,
}

/// Which services are ours.
#[derive(Clone, Debug)]
pub struct Claim {
    pub class: String,
    pub default_class: bool,
}

impl View {
    pub fn of(s: &Service, claim: &Claim) -> View {
        let spec = s.spec.clone().unwrap_or_default();
        let lb = spec.type_.as_deref() == Some("LoadBalancer");
        let class_ok = match spec.load_balancer_class.as_deref() {
            None => claim.default_class,
            Some(c) => c == claim.class,
        };
        let families = match spec.ip_families.as_deref() {
            None | Some([]) => vec![false],
            Some(f) => f.iter().map(|f| f == "IPv6").collect(),
        };
        View {
            key: Key::of(Kind::Service, &s.metadata),
            role: match (lb && s.metadata.deletion_timestamp.is_none(), class_ok) {
                (false, _) => Role::NotLoadBalancer,
                (true, true) => Role::Ours,
                (true, false) => Role::Foreign,
            },
            requested: spec
                .load_balancer_ip
                .filter(|a| !a.is_empty())
                .map(|a| a.parse().map_err(|_| a)),
            families,
            ingress: s
                .status
                .as_ref()
                .and_then(|st| st.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|i| i.ip.as_deref()?.parse().ok())
                .collect(),
        }
    }
}

/// A Kubernetes Event about a Service (type Warning unless said otherwise).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub reason: &'static str,
    pub message: String,
    pub warning: bool,
}

impl Notice {
    fn warn(reason: &'static str, message: String) -> Notice {
        Notice {
            reason,
            message,
            warning: true,
        }
    }

    /// Whether the Service should be decided again once an address is given back.
    pub fn waits(&self) -> bool {
        matches!(self.reason, "LoadBalancerIPInUse" | "AddressPoolExhausted")
    }

    /// The Event (and metric label) of a refusal.
    pub fn refusal(r: &Refusal) -> Notice {
        let reason = match r {
            Refusal::NotInPool(_) => "LoadBalancerIPNotInPool",
            Refusal::InUse(..) => "LoadBalancerIPInUse",
            Refusal::Exhausted { .. } => "AddressPoolExhausted",
        };
        Notice::warn(reason, r.to_string())
    }
}

/// What to do for one Service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// The ingress IPs its status must list, when that differs from what it lists.
    pub write: Option<Vec<IpAddr>>,
    pub notices: Vec<Notice>,
}

/// Decides one Service against the allocator, updating the allocator (an address decided
/// for a service is held by it from now on, whether or not the status write succeeds).
pub fn decide(v: &View, alloc: &mut Allocator) -> Decision {
    let mut d = Decision::default();
    match v.role {
        Role::Ours => {}
        Role::Foreign => {
            for &ip in &v.ingress {
                if !alloc.in_pool(ip) {
                    continue;
                }
                if let Err(r) = alloc.claim(&v.key, ip) {
                    d.notices.push(Notice::refusal(&r));
                }
            }
            return d;
        }
        Role::NotLoadBalancer => {
            // Give back what it held, and clear pool addresses from its status (its type
            // changed away from LoadBalancer); other entries stay.
            alloc.release(&v.key);
            let (ours, keep): (Vec<IpAddr>, Vec<IpAddr>) =
                v.ingress.iter().partition(|ip| alloc.in_pool(**ip));
            if !ours.is_empty() {
                d.write = Some(keep);
                d.notices.push(Notice {
                    reason: "LoadBalancerIPReleased",
                    message: format!(
                        "released {}: the Service is no longer a LoadBalancer",
                        list(&ours)
                    ),
                    warning: false,
                });
            }
            return d;
        }
    }
    let mut want: Vec<IpAddr> = Vec::new();
    match &v.requested {
        Some(Err(text)) => {
            release_all_but(alloc, &v.key, &[]);
            d.notices.push(Notice::warn(
                "LoadBalancerIPInvalid",
                format!("spec.loadBalancerIP {text:?} is not an IP address; nothing was assigned"),
            ));
        }
        Some(Ok(ip)) => match alloc.claim(&v.key, *ip) {
            Ok(()) => want.push(*ip),
            Err(r) => d.notices.push(Notice::refusal(&r)),
        },
        None => {
            for &ipv6 in &v.families {
                // Keep an address of this family it already holds (from its status).
                let held = alloc
                    .held_by(&v.key)
                    .iter()
                    .copied()
                    .find(|ip| ip.is_ipv6() == ipv6 && !want.contains(ip));
                match held.map_or_else(|| alloc.allocate(&v.key, ipv6), Ok) {
                    Ok(ip) => want.push(ip),
                    Err(r) => d.notices.push(Notice::refusal(&r)),
                }
            }
        }
    }
    release_all_but(alloc, &v.key, &want);
    if want != v.ingress {
        if !want.is_empty() {
            d.notices.push(Notice {
                reason: "LoadBalancerIPAssigned",
                message: format!("assigned {}", list(&want)),
                warning: false,
            });
        }
        d.write = Some(want);
    }
    d
}

fn release_all_but(alloc: &mut Allocator, key: &Key, keep: &[IpAddr]) {
    for ip in alloc.held_by(key).to_vec() {
        if !keep.contains(&ip) {
            alloc.release_ip(key, ip);
        }
    }
}

fn list(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The status ingress list for `ips` (ipMode VIP: the node sees the address itself).
pub fn ingress(ips: &[IpAddr]) -> Vec<LoadBalancerIngress> {
    ips.iter()
        .map(|ip| LoadBalancerIngress {
            ip: Some(ip.to_string()),
            ip_mode: Some("VIP".into()),
            ..Default::default()
        })
        .collect()
}

/// Rebuilds the allocator from what the statuses say after a (re)list, oldest services
/// first so that, when two claim one address, the older keeps it; the younger is then
/// decided again (and gets another address). Returns the keys whose claim lost.
pub fn adopt(views: &mut [(View, i64)], alloc: &mut Allocator) -> Vec<(Key, Notice)> {
    views.sort_by(|(a, at), (b, bt)| at.cmp(bt).then(a.key.cmp(&b.key)));
    let mut lost = Vec::new();
    for (v, _) in views.iter() {
        if v.role == Role::NotLoadBalancer {
            continue;
        }
        for &ip in &v.ingress {
            if !alloc.in_pool(ip) {
                continue;
            }
            if let Err(Refusal::InUse(ip, by)) = alloc.claim(&v.key, ip) {
                lost.push((
                    v.key.clone(),
                    Notice::warn(
                        "LoadBalancerIPConflict",
                        format!(
                            "{ip} was also in the status of the older Service {by}; this Service gets another address"
                        ),
                    ),
                ));
            }
        }
    }
    lost
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc() -> Allocator {
        Allocator::new(&[
            "192.0.2.0/30".parse().unwrap(),
            "2001:db8::/126".parse().unwrap(),
        ])
    }

    fn view(name: &str) -> View {
        View {
            key: Key::new("default", name),
            role: Role::Ours,
            requested: None,
            families: vec![false],
            ingress: vec![],
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn assigns_keeps_and_releases() {
        let mut a = alloc();
        let mut v = view("web");
        let d = decide(&v, &mut a);
        assert_eq!(d.write, Some(vec![ip("192.0.2.1")]));
        assert_eq!(d.notices[0].reason, "LoadBalancerIPAssigned");
        // Its status now says so: nothing to do.
        v.ingress = vec![ip("192.0.2.1")];
        assert_eq!(decide(&v, &mut a), Decision::default());
        // Dual stack adds the IPv6 address and keeps the IPv4 one.
        v.families = vec![false, true];
        assert_eq!(
            decide(&v, &mut a).write,
            Some(vec![ip("192.0.2.1"), ip("2001:db8::1")])
        );
        v.ingress = vec![ip("192.0.2.1"), ip("2001:db8::1")];
        // Type changed: the status is cleared and the addresses are free again.
        v.role = Role::NotLoadBalancer;
        let d = decide(&v, &mut a);
        assert_eq!(d.write, Some(vec![]));
        assert_eq!(d.notices[0].reason, "LoadBalancerIPReleased");
        assert!(a.assignments().is_empty());
    }

    #[test]
    fn a_requested_address_is_honoured_once() {
        let mut a = alloc();
        let mut v = view("a");
        v.requested = Some(Ok(ip("192.0.2.2")));
        assert_eq!(decide(&v, &mut a).write, Some(vec![ip("192.0.2.2")]));
        let mut w = view("b");
        w.requested = Some(Ok(ip("192.0.2.2")));
        let d = decide(&w, &mut a);
        assert_eq!(d.write, None, "nothing assigned twice");
        assert_eq!(d.notices[0].reason, "LoadBalancerIPInUse");
        assert!(
            d.notices[0].message.contains("default/a"),
            "{:?}",
            d.notices
        );
        w.requested = Some(Ok(ip("203.0.113.1")));
        assert_eq!(
            decide(&w, &mut a).notices[0].reason,
            "LoadBalancerIPNotInPool"
        );
        w.requested = Some(Err("ten".into()));
        assert_eq!(
            decide(&w, &mut a).notices[0].reason,
            "LoadBalancerIPInvalid"
        );
    }

    #[test]
    fn exhaustion_assigns_nothing_and_says_so() {
        let mut a = alloc();
        for n in ["a", "b"] {
            assert!(decide(&view(n), &mut a).write.is_some());
        }
        let d = decide(&view("c"), &mut a);
        assert_eq!(d.write, None);
        assert_eq!(d.notices[0].reason, "AddressPoolExhausted");
        assert!(d.notices[0].message.contains("ipam.pools"));
    }

    #[test]
    fn adoption_keeps_the_older_claim() {
        let mut a = alloc();
        let mut old = view("old");
        old.ingress = vec![ip("192.0.2.1")];
        let mut young = view("young");
        young.ingress = vec![ip("192.0.2.1")];
        let mut views = vec![(young.clone(), 20), (old, 10)];
        let lost = adopt(&mut views, &mut a);
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].0, young.key);
        assert_eq!(a.holder(ip("192.0.2.1")), Some(&Key::new("default", "old")));
        assert_eq!(decide(&young, &mut a).write, Some(vec![ip("192.0.2.2")]));
        // Another implementation's address in our pool is reserved, never handed out.
        let mut foreign = view("metallb");
        foreign.role = Role::Foreign;
        foreign.ingress = vec![ip("192.0.2.1"), ip("203.0.113.9")];
        let mut b = alloc();
        assert_eq!(decide(&foreign, &mut b), Decision::default());
        assert_eq!(
            decide(&view("x"), &mut b).write,
            Some(vec![ip("192.0.2.2")])
        );
    }
}

//! What an update may ask for: a spec that breaks a rule of the data path is refused with
//! the rule it breaks, before anything is planned or written.

use std::{collections::BTreeSet, net::IpAddr};

use super::book::{Book, frontend_key};
use crate::{
    error::Error,
    spec::{AddressFamily, Frontend, ServiceSpec},
};

/// Checks `spec` against the rules and against what `book` holds (the service's family and
/// protocol, the owners of its frontends).
pub fn validate(book: &Book, spec: &ServiceSpec) -> Result<(), Error> {
    let invalid = |reason: String| Error::InvalidSpec {
        service: spec.name.clone(),
        reason,
    };
    if spec.name.is_empty() {
        return Err(invalid("the name is empty".into()));
    }
    // Stored whole or not at all: a restarted agent matches pinned services by name.
    if spec.name.len() > lb_common::SERVICE_NAME_MAX {
        return Err(invalid(format!(
            "the name is {} bytes; the data path stores names of at most {} bytes",
            spec.name.len(),
            lb_common::SERVICE_NAME_MAX
        )));
    }
    if spec.frontends.is_empty() {
        return Err(invalid("no frontend (NodePort or address)".into()));
    }
    // One family per service: the first address frontend's, else the first backend's
    // (ServiceSpec), and it cannot change.
    let family = book.family_of(spec);
    // What made it that family (for the error messages).
    let by = || match spec.frontends.iter().find_map(|f| match f {
        Frontend::Address(a) => Some(a),
        Frontend::NodePort(_) => None,
    }) {
        Some(a) => format!("its frontend {a}"),
        None => match spec.backends.first() {
            Some(b) => format!("its backend {}", b.addr),
            None => "its current family".into(),
        },
    };
    if let (Some(current), Some(wanted)) = (book.current_family(&spec.name), spec.family())
        && current != wanted
    {
        return Err(invalid(format!(
            "the address family cannot change ({current} -> {wanted}); remove the \
             service and add it again"
        )));
    }
    let family_mismatch = |ip: IpAddr| AddressFamily::of(ip) != family;
    let is_v4_mapped = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some(),
        IpAddr::V4(_) => false,
    };
    let mut seen = BTreeSet::new();
    for f in &spec.frontends {
        match f {
            Frontend::NodePort(0) => return Err(invalid("NodePort 0 is not a port".into())),
            Frontend::Address(sa) if sa.port() == 0 => {
                return Err(invalid(format!("frontend {sa}: port 0 is not a port")));
            }
            Frontend::Address(sa) if sa.ip().is_unspecified() => {
                return Err(invalid(format!(
                    "frontend {sa}: the unspecified address cannot be a frontend; use a NodePort"
                )));
            }
            Frontend::Address(sa) if family_mismatch(sa.ip()) => {
                return Err(invalid(format!(
                    "frontend {sa} is {}, but the service is {family} (by {}); one \
                     service has one address family: add one service per family",
                    AddressFamily::of(sa.ip()),
                    by()
                )));
            }
            Frontend::Address(sa) if is_v4_mapped(sa.ip()) => {
                return Err(invalid(format!(
                    "frontend {sa}: an IPv4-mapped IPv6 address; use the IPv4 address"
                )));
            }
            _ => {}
        }
        if !seen.insert(*f) {
            return Err(invalid(format!("frontend {f} is listed twice")));
        }
        let key = frontend_key(f, spec.protocol, family);
        if let Some(owner) = book.frontend_owner.get(&key)
            && owner != &spec.name
        {
            return Err(Error::FrontendConflict {
                service: spec.name.clone(),
                frontend: format!("{f}/{}", spec.protocol),
                owner: owner.clone(),
            });
        }
    }
    let mut addrs = BTreeSet::new();
    for b in &spec.backends {
        if family_mismatch(b.addr.ip()) {
            return Err(invalid(format!(
                "backend {} is {}, but the service is {family} (by {}); one service has \
                 one address family: add one service per family",
                b.addr,
                AddressFamily::of(b.addr.ip()),
                by()
            )));
        }
        if is_v4_mapped(b.addr.ip()) {
            return Err(invalid(format!(
                "backend {}: an IPv4-mapped IPv6 address; use the IPv4 address",
                b.addr
            )));
        }
        if b.addr.port() == 0 || b.addr.ip().is_unspecified() {
            return Err(invalid(format!(
                "backend {}: needs an address and a non-zero port",
                b.addr
            )));
        }
        if !addrs.insert(b.addr) {
            return Err(invalid(format!("backend {} is listed twice", b.addr)));
        }
    }
    if spec.dsr && family == AddressFamily::Ipv6 {
        return Err(invalid(
            "direct server return is IPv4 only; an IPv6 service reaches endpoints on \
             other nodes by source NAT (set dsr to false)"
                .into(),
        ));
    }
    if let Some(r) = &spec.source_ranges {
        for net in &r.allow {
            if family_mismatch(net.addr()) {
                return Err(invalid(format!(
                    "source range {net} is {}, but the service is {family}",
                    AddressFamily::of(net.addr())
                )));
            }
        }
        for a in &r.frontends {
            if !spec.frontends.contains(&Frontend::Address(*a)) {
                return Err(invalid(format!(
                    "source ranges apply to {a}, which is not one of the service's frontends"
                )));
            }
        }
    }
    if let Some(t) = spec.affinity
        && (t.is_zero() || t.as_secs() > 86_400)
    {
        return Err(invalid(format!(
            "session affinity timeout {t:?} must be 1 s..=86400 s"
        )));
    }
    if let Some(s) = book.services.get(&spec.name)
        && s.protocol != spec.protocol
    {
        return Err(invalid(format!(
            "the protocol cannot change ({} -> {}); remove the service and add it again",
            s.protocol, spec.protocol
        )));
    }
    Ok(())
}

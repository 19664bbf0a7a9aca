//! Attaching the programs to the node's interfaces, and the node facts the program needs:
//! the interfaces' addresses (NodePort frontends) and the devices that can take XDP frames.

use std::{collections::BTreeMap, net::IpAddr, path::Path};

use aya::{
    Ebpf,
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        tc::{SchedClassifierLink, SchedClassifierLinkId},
        xdp::{XdpLink, XdpLinkId},
    },
};
use lb_common::{map_names as names, program_names as progs};
use serde::Serialize;

use crate::{
    dataplane::{Dataplane, net_addr},
    error::Error,
};

/// How the XDP program runs on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum AttachMode {
    /// In the driver (native XDP).
    Native,
    /// Generic XDP in the stack: the driver has no native support.
    Generic,
    /// A pinned link from an earlier process, now running this process's program.
    Adopted,
}

/// Opens a pinned link as a typed link to update.
fn adopt_link<L>(path: &Path, program: &'static str) -> Result<L, Error>
where
    L: TryFrom<FdLink, Error = LinkError>,
{
    let pinned = PinnedLink::from_pin(path).map_err(|e| Error::Pin {
        path: path.to_path_buf(),
        reason: format!("cannot open the pinned link of `{program}`: {e}"),
    })?;
    L::try_from(FdLink::from(pinned)).map_err(|e| Error::Pin {
        path: path.to_path_buf(),
        reason: format!("the pinned link is not a link of `{program}`'s kind: {e}"),
    })
}

/// Pins a freshly created link and hands it back for the program to own.
fn pin_link<L>(link: L, path: &Path, program: &'static str) -> Result<L, Error>
where
    FdLink: TryFrom<L, Error = LinkError>,
    L: TryFrom<FdLink, Error = LinkError>,
{
    let fd = FdLink::try_from(link)
        .map_err(|e| Error::program(program, "pin link (not a bpf_link)", e))?;
    let pinned = fd.pin(path).map_err(|e| Error::Pin {
        path: path.to_path_buf(),
        reason: format!("cannot pin the link of `{program}`: {e}"),
    })?;
    L::try_from(FdLink::from(pinned)).map_err(|e| Error::program(program, "reopen pinned link", e))
}

/// TC reverse NAT at TCX egress: adopt a pinned link (updating its program) or attach anew.
fn attach_tc(
    tc: &mut SchedClassifier,
    ifname: &str,
    pin: Option<&Path>,
) -> Result<SchedClassifierLinkId, Error> {
    if let Some(path) = pin.filter(|p| p.exists()) {
        let link = adopt_link::<SchedClassifierLink>(path, progs::TC_REVNAT)?;
        return tc
            .attach_to_link(link)
            .map_err(|e| Error::program(progs::TC_REVNAT, "replace (link update)", e));
    }
    let id = tc
        .attach(ifname, TcAttachType::Egress)
        .map_err(|e| Error::program(progs::TC_REVNAT, "attach (TCX egress)", e))?;
    match pin {
        Some(path) => {
            let link = tc
                .take_link(id)
                .map_err(|e| Error::program(progs::TC_REVNAT, "take link", e))?;
            let link = pin_link(link, path, progs::TC_REVNAT)?;
            tc.attach_to_link(link)
                .map_err(|e| Error::program(progs::TC_REVNAT, "own pinned link", e))
        }
        None => Ok(id),
    }
}

pub(crate) struct Attachment {
    xdp: XdpLinkId,
    tc: SchedClassifierLinkId,
    mode: AttachMode,
    addrs: Vec<IpAddr>,
}

#[derive(Default)]
pub(crate) struct Attachments {
    by_ifname: BTreeMap<String, Attachment>,
}

/// The verifier gives up with EAGAIN when a signal arrives while it works (a SIGCHLD of
/// some child process, say): that is not a verdict on the program, so load again.
pub(crate) fn with_retry(
    mut load: impl FnMut() -> Result<(), aya::programs::ProgramError>,
) -> Result<(), aya::programs::ProgramError> {
    let mut attempt = 0;
    loop {
        match load() {
            Err(aya::programs::ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempt < 5 =>
            {
                attempt += 1;
                tracing::debug!(attempt, "verifier interrupted by a signal; loading again");
            }
            r => return r,
        }
    }
}

pub(crate) fn load_programs(ebpf: &mut Ebpf) -> Result<(), Error> {
    let xdp: &mut Xdp = ebpf
        .program_mut(progs::XDP_LB)
        .ok_or_else(|| Error::program(progs::XDP_LB, "find", "not in the object"))?
        .try_into()
        .map_err(|e| Error::program(progs::XDP_LB, "open", e))?;
    with_retry(|| xdp.load()).map_err(|e| Error::program(progs::XDP_LB, "load (verifier)", e))?;
    let tc: &mut SchedClassifier = ebpf
        .program_mut(progs::TC_REVNAT)
        .ok_or_else(|| Error::program(progs::TC_REVNAT, "find", "not in the object"))?
        .try_into()
        .map_err(|e| Error::program(progs::TC_REVNAT, "open", e))?;
    with_retry(|| tc.load()).map_err(|e| Error::program(progs::TC_REVNAT, "load (verifier)", e))?;
    let tc_lb: &mut SchedClassifier = ebpf
        .program_mut(progs::TC_LB)
        .ok_or_else(|| Error::program(progs::TC_LB, "find", "not in the object"))?
        .try_into()
        .map_err(|e| Error::program(progs::TC_LB, "open", e))?;
    with_retry(|| tc_lb.load()).map_err(|e| Error::program(progs::TC_LB, "load (verifier)", e))?;
    Ok(())
}

/// Index of an interface in the calling thread's network namespace.
pub fn ifindex(ifname: &str) -> Result<u32, Error> {
    nix::net::if_::if_nametoindex(ifname).map_err(|e| Error::Interface {
        ifname: ifname.into(),
        reason: format!("no such interface in this network namespace ({e})"),
    })
}

/// Addresses configured on an interface (IPv4 and IPv6; link-local IPv6, tentative and
/// DAD-failed ones excluded: the rule of [`crate::addr_watch`], which follows them later).
pub fn interface_addresses(ifname: &str) -> Result<Vec<IpAddr>, Error> {
    crate::addr_watch::read_interface_addresses(ifname)
}

impl Dataplane {
    /// Attaches the load balancer to an external interface (in the calling thread's network
    /// namespace): XDP in native mode (generic if the driver cannot), TC at TCX egress for
    /// the replies, and the interface's addresses as NodePort addresses.
    pub fn attach(&mut self, ifname: &str) -> Result<AttachMode, Error> {
        if self.attachments.by_ifname.contains_key(ifname) {
            return Err(Error::Interface {
                ifname: ifname.into(),
                reason: "already attached".into(),
            });
        }
        ifindex(ifname)?;
        let addrs = interface_addresses(ifname)?;
        // Source NAT's node settings, before a packet can be translated.
        crate::node_sysctl::reserve_nat_ports(self.cfg.nat.port_min, self.cfg.nat.port_max)?;
        crate::node_sysctl::accept_local(ifname)?;
        let xdp: &mut Xdp = self
            .ebpf
            .program_mut(progs::XDP_LB)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| Error::program(progs::XDP_LB, "find", "not loaded"))?;
        let xdp_pin = self.cfg.pin.as_ref().map(|p| p.link_path("xdp", ifname));
        let (xdp_link, mode) = if let Some(path) = xdp_pin.as_ref().filter(|p| p.exists()) {
            // Adopt the pinned link and swap our program in (BPF_LINK_UPDATE): the interface
            // never goes without a program.
            let link = adopt_link::<XdpLink>(path, progs::XDP_LB)?;
            let id = xdp
                .attach_to_link(link)
                .map_err(|e| Error::program(progs::XDP_LB, "replace (link update)", e))?;
            (id, AttachMode::Adopted)
        } else {
            let (id, mode) = match xdp.attach(ifname, XdpMode::Driver) {
                Ok(l) => (l, AttachMode::Native),
                Err(native) => match xdp.attach(ifname, XdpMode::Skb) {
                    Ok(l) => {
                        tracing::warn!(ifname, error = %native, "native XDP unavailable, attached in generic mode");
                        (l, AttachMode::Generic)
                    }
                    Err(e) => return Err(Error::program(progs::XDP_LB, "attach (XDP)", e)),
                },
            };
            match &xdp_pin {
                Some(path) => {
                    let link = xdp
                        .take_link(id)
                        .map_err(|e| Error::program(progs::XDP_LB, "take link", e))?;
                    let link = pin_link(link, path, progs::XDP_LB)?;
                    (
                        xdp.attach_to_link(link)
                            .map_err(|e| Error::program(progs::XDP_LB, "own pinned link", e))?,
                        mode,
                    )
                }
                None => (id, mode),
            }
        };
        let tc: &mut SchedClassifier = self
            .ebpf
            .program_mut(progs::TC_REVNAT)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| Error::program(progs::TC_REVNAT, "find", "not loaded"))?;
        let tc_pin = self.cfg.pin.as_ref().map(|p| p.link_path("tc", ifname));
        let tc_link = match attach_tc(tc, ifname, tc_pin.as_deref()) {
            Ok(l) => l,
            Err(e) => {
                self.detach_xdp(xdp_link);
                return Err(e);
            }
        };
        let mut added = Vec::new();
        for a in &addrs {
            if let Err(e) = self.add_node_address(*a) {
                for x in added {
                    let _ = self.remove_node_address(x);
                }
                self.detach_links(xdp_link, tc_link);
                return Err(e);
            }
            added.push(*a);
        }
        self.attachments.by_ifname.insert(
            ifname.into(),
            Attachment {
                xdp: xdp_link,
                tc: tc_link,
                mode,
                addrs,
            },
        );
        Ok(mode)
    }

    fn detach_xdp(&mut self, link: XdpLinkId) {
        if let Some(p) = self.ebpf.program_mut(progs::XDP_LB) {
            let xdp: Result<&mut Xdp, _> = p.try_into();
            if let Ok(xdp) = xdp {
                let _ = xdp.detach(link);
            }
        }
    }

    fn detach_links(&mut self, xdp: XdpLinkId, tc: SchedClassifierLinkId) {
        self.detach_xdp(xdp);
        if let Some(p) = self.ebpf.program_mut(progs::TC_REVNAT) {
            let prog: Result<&mut SchedClassifier, _> = p.try_into();
            if let Ok(prog) = prog {
                let _ = prog.detach(tc);
            }
        }
    }

    /// Detaches from an interface and forgets its NodePort addresses.
    pub fn detach(&mut self, ifname: &str) -> Result<(), Error> {
        let a = self
            .attachments
            .by_ifname
            .remove(ifname)
            .ok_or_else(|| Error::Interface {
                ifname: ifname.into(),
                reason: "not attached".into(),
            })?;
        self.detach_links(a.xdp, a.tc);
        for addr in a.addrs {
            self.remove_node_address(addr)?;
        }
        Ok(())
    }

    /// Interfaces attached, with their mode.
    pub fn attached(&self) -> Vec<(String, AttachMode)> {
        self.attachments
            .by_ifname
            .iter()
            .map(|(n, a)| (n.clone(), a.mode))
            .collect()
    }

    /// How many instructions the verifier walked to accept each program (its complexity,
    /// against the kernel's limit of 1 000 000): `None` where the kernel does not say.
    pub fn verified_instructions(&self) -> Vec<(&'static str, Option<u32>)> {
        [progs::XDP_LB, progs::TC_LB, progs::TC_REVNAT]
            .into_iter()
            .map(|name| {
                let n = self
                    .ebpf
                    .program(name)
                    .and_then(|p| p.info().ok())
                    .and_then(|i| i.verified_instruction_count());
                (name, n)
            })
            .collect()
    }

    /// Makes `addr` a NodePort address (done by [`Dataplane::attach`] for the interface's own).
    pub fn add_node_address(&mut self, addr: IpAddr) -> Result<(), Error> {
        self.add_node_address_origin(addr, lb_common::node_addr_origin::INTERFACE)
    }

    /// Writes a `NODE_ADDRS` entry with its origin (`lb_common::node_addr_origin`).
    pub(crate) fn insert_node_address(&mut self, addr: IpAddr, origin: u32) -> Result<(), Error> {
        let cap = self.cfg.capacities.node_addresses;
        self.maps
            .node_addrs
            .insert(net_addr(addr), origin, 0)
            .map_err(|e| {
                if crate::maps::is_full(&e) {
                    Error::CapacityExceeded {
                        what: "the node address table",
                        capacity: cap,
                        setting: "capacities.node_addresses",
                    }
                } else {
                    Error::map(names::NODE_ADDRS, "write", e)
                }
            })
    }

    pub fn remove_node_address(&mut self, addr: IpAddr) -> Result<(), Error> {
        match self.maps.node_addrs.remove(&net_addr(addr)) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(Error::map(names::NODE_ADDRS, "delete", e)),
        }
    }

    /// Allows redirecting translated frames straight to this device (in the calling thread's
    /// namespace). Only for devices that can take XDP frames: a NIC, or a veth whose peer
    /// has an XDP program or GRO (TOOLCHAIN.md); frames for any other device go through the
    /// stack.
    pub fn allow_redirect(&mut self, ifname: &str) -> Result<(), Error> {
        let idx = ifindex(ifname)?;
        let cap = self.cfg.capacities.redirect_ports;
        self.maps
            .tx_ports
            .insert(idx, idx, None, 0)
            .map_err(|e| match e {
                aya::maps::xdp::XdpMapError::MapError(m) if crate::maps::is_full(&m) => {
                    Error::CapacityExceeded {
                        what: "the redirect device table",
                        capacity: cap,
                        setting: "capacities.redirect_ports",
                    }
                }
                e => Error::map(names::TX_PORTS, "write", e),
            })
    }
}

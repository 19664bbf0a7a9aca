//! Attaching the programs to the node's interfaces, and the node facts the program needs:
//! the interfaces' addresses (NodePort frontends) and the devices that can take XDP frames.
//!
//! An interface's ingress gets the XDP program or the TC classifier (`dataplane.ingress_mode`,
//! resolved per interface by [`crate::ingress_mode`]); its egress gets the TC reverse NAT in
//! either mode. With pins, each link is pinned (`links/xdp-<if>`, `links/tcx-ingress-<if>`,
//! `links/tc-<if>`) and a restart adopts it by a link update; a restart in the other mode
//! attaches its own ingress link first and then removes the previous mode's, so the
//! interface is never without a load balancer and never keeps two.

use std::{collections::BTreeMap, net::IpAddr, path::Path};

use aya::{
    Ebpf,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        tc::{SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions},
        xdp::{XdpLink, XdpLinkId},
    },
};
use lb_common::{map_names as names, program_names as progs};
use serde::Serialize;

use crate::{
    addr::net_addr,
    dataplane::Dataplane,
    error::Error,
    ingress_mode::{self, Ingress},
};

/// How the load balancer takes an interface's ingress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum AttachMode {
    /// XDP in the driver (native XDP).
    Native,
    /// Generic XDP in the stack: the driver has no native support.
    Generic,
    /// XDP: a pinned link from an earlier process, now running this process's program.
    Adopted,
    /// The TC classifier (`sluice_tc_lb`) at TCX ingress; no XDP.
    Tc,
    /// TC: a pinned TCX ingress link from an earlier process, now running this process's
    /// program.
    TcAdopted,
}

impl AttachMode {
    /// Which program takes the interface's ingress.
    pub const fn ingress(self) -> Ingress {
        match self {
            AttachMode::Native | AttachMode::Generic | AttachMode::Adopted => Ingress::Xdp,
            AttachMode::Tc | AttachMode::TcAdopted => Ingress::Tc,
        }
    }
}

/// The pin kind of an ingress link (`PinConfig::link_path`). Not `tc-ingress`: the egress
/// links are `tc-<ifname>`, and an interface may be named `ingress-...`.
const fn ingress_pin_kind(ingress: Ingress) -> &'static str {
    match ingress {
        Ingress::Xdp => "xdp",
        Ingress::Tc => "tcx-ingress",
    }
}

/// The error and its sources, one line (aya's errors keep the errno in their source).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
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

/// A TC program at `at` of `ifname`: adopt a pinned link (updating its program) or attach
/// anew (and pin). Returns the link and whether it was adopted. Ingress is attached at TCX
/// explicitly (its error says what the kernel lacks); egress with aya's default (TCX from
/// Linux 6.6, else a netlink filter).
fn attach_tc(
    tc: &mut SchedClassifier,
    program: &'static str,
    ifname: &str,
    at: TcAttachType,
    pin: Option<&Path>,
) -> Result<(SchedClassifierLinkId, bool), Error> {
    if let Some(path) = pin.filter(|p| p.exists()) {
        let link = adopt_link::<SchedClassifierLink>(path, program)?;
        let id = tc
            .attach_to_link(link)
            .map_err(|e| Error::program(program, "replace (link update)", e))?;
        return Ok((id, true));
    }
    let id = match at {
        TcAttachType::Ingress => tc
            .attach_with_options(ifname, at, TcAttachOptions::TcxOrder(LinkOrder::default()))
            .map_err(|e| Error::Interface {
                ifname: ifname.into(),
                reason: format!(
                    "attach `{program}` at TCX ingress: {} (the kernel needs TCX, Linux 6.6 or \
                     later; or use --mode xdp)",
                    chain(&e)
                ),
            })?,
        _ => tc
            .attach(ifname, at)
            .map_err(|e| Error::program(program, "attach (TCX egress)", e))?,
    };
    match pin {
        Some(path) => {
            let link = tc
                .take_link(id)
                .map_err(|e| Error::program(program, "take link", e))?;
            let link = pin_link(link, path, program)?;
            let id = tc
                .attach_to_link(link)
                .map_err(|e| Error::program(program, "own pinned link", e))?;
            Ok((id, false))
        }
        None => Ok((id, false)),
    }
}

/// The XDP program on `ifname`: adopt a pinned link (swapping our program in by
/// BPF_LINK_UPDATE, so the interface never goes without one) or attach anew, native mode
/// first, generic if the driver cannot (and pin).
fn attach_xdp(
    xdp: &mut Xdp,
    ifname: &str,
    pin: Option<&Path>,
) -> Result<(XdpLinkId, AttachMode), Error> {
    if let Some(path) = pin.filter(|p| p.exists()) {
        let link = adopt_link::<XdpLink>(path, progs::XDP_LB)?;
        let id = xdp
            .attach_to_link(link)
            .map_err(|e| Error::program(progs::XDP_LB, "replace (link update)", e))?;
        return Ok((id, AttachMode::Adopted));
    }
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
    match pin {
        Some(path) => {
            let link = xdp
                .take_link(id)
                .map_err(|e| Error::program(progs::XDP_LB, "take link", e))?;
            let link = pin_link(link, path, progs::XDP_LB)?;
            let id = xdp
                .attach_to_link(link)
                .map_err(|e| Error::program(progs::XDP_LB, "own pinned link", e))?;
            Ok((id, mode))
        }
        None => Ok((id, mode)),
    }
}

/// The program on an interface's ingress.
enum IngressLink {
    Xdp(XdpLinkId),
    Tc(SchedClassifierLinkId),
}

pub(crate) struct Attachment {
    ingress: IngressLink,
    egress: SchedClassifierLinkId,
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
    for name in [progs::TC_LB, progs::TC_REVNAT] {
        let tc: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or_else(|| Error::program(name, "find", "not in the object"))?
            .try_into()
            .map_err(|e| Error::program(name, "open", e))?;
        with_retry(|| tc.load()).map_err(|e| Error::program(name, "load (verifier)", e))?;
    }
    Ok(())
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, Error> {
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| Error::program(name, "find", "not loaded"))
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
    /// namespace): at ingress the XDP program (native mode, generic if the driver cannot) or
    /// the TC classifier at TCX ingress, as `ingress_mode` resolves for this interface
    /// (logged with the reason); the TC reverse NAT at TCX egress; and the interface's
    /// addresses as NodePort addresses. A pinned ingress link of the other mode, left by a
    /// previous run, is removed once this mode's link is attached.
    pub fn attach(&mut self, ifname: &str) -> Result<AttachMode, Error> {
        if self.attachments.by_ifname.contains_key(ifname) {
            return Err(Error::Interface {
                ifname: ifname.into(),
                reason: "already attached".into(),
            });
        }
        ifindex(ifname)?;
        let choice = ingress_mode::resolve(self.cfg.ingress_mode, ifname)?;
        tracing::info!(
            ifname,
            mode = choice.ingress.name(),
            reason = %choice.reason,
            "ingress program chosen"
        );
        let addrs = interface_addresses(ifname)?;
        // Source NAT's node settings, before a packet can be translated.
        crate::node_sysctl::reserve_nat_ports(self.cfg.nat.port_min, self.cfg.nat.port_max)?;
        crate::node_sysctl::accept_local(ifname)?;
        let pin_of = |ingress| {
            self.cfg
                .pin
                .as_ref()
                .map(|p| p.link_path(ingress_pin_kind(ingress), ifname))
        };
        let (ingress_pin, other_pin) = match choice.ingress {
            Ingress::Xdp => (pin_of(Ingress::Xdp), pin_of(Ingress::Tc)),
            Ingress::Tc => (pin_of(Ingress::Tc), pin_of(Ingress::Xdp)),
        };
        let (ingress, mode) = match choice.ingress {
            Ingress::Xdp => {
                let xdp: &mut Xdp = self
                    .ebpf
                    .program_mut(progs::XDP_LB)
                    .and_then(|p| p.try_into().ok())
                    .ok_or_else(|| Error::program(progs::XDP_LB, "find", "not loaded"))?;
                let (id, mode) = attach_xdp(xdp, ifname, ingress_pin.as_deref())?;
                (IngressLink::Xdp(id), mode)
            }
            Ingress::Tc => {
                let tc = classifier(&mut self.ebpf, progs::TC_LB)?;
                let (id, adopted) = attach_tc(
                    tc,
                    progs::TC_LB,
                    ifname,
                    TcAttachType::Ingress,
                    ingress_pin.as_deref(),
                )?;
                let mode = if adopted {
                    AttachMode::TcAdopted
                } else {
                    AttachMode::Tc
                };
                (IngressLink::Tc(id), mode)
            }
        };
        let egress_pin = self.cfg.pin.as_ref().map(|p| p.link_path("tc", ifname));
        let egress = match classifier(&mut self.ebpf, progs::TC_REVNAT).and_then(|tc| {
            attach_tc(
                tc,
                progs::TC_REVNAT,
                ifname,
                TcAttachType::Egress,
                egress_pin.as_deref(),
            )
        }) {
            Ok((id, _)) => id,
            Err(e) => {
                self.detach_ingress(ingress);
                return Err(e);
            }
        };
        // Make before break: this mode's link runs now; the previous mode's goes.
        if let Some(path) = &other_pin {
            match crate::stale_link::remove(path) {
                Ok(true) => tracing::info!(
                    ifname,
                    path = %path.display(),
                    "removed the other mode's ingress link a previous run left"
                ),
                Ok(false) => {}
                Err(e) => {
                    self.detach_links(ingress, egress);
                    return Err(Error::Pin {
                        path: path.clone(),
                        reason: format!(
                            "cannot remove the {} ingress link a previous run left on `{ifname}` \
                             (both programs would translate): {e}",
                            match choice.ingress {
                                Ingress::Xdp => "TC",
                                Ingress::Tc => "XDP",
                            }
                        ),
                    });
                }
            }
        }
        let mut added = Vec::new();
        for a in &addrs {
            if let Err(e) = self.add_node_address(*a) {
                for x in added {
                    let _ = self.remove_node_address(x);
                }
                self.detach_links(ingress, egress);
                return Err(e);
            }
            added.push(*a);
        }
        self.attachments.by_ifname.insert(
            ifname.into(),
            Attachment {
                ingress,
                egress,
                mode,
                addrs,
            },
        );
        Ok(mode)
    }

    fn detach_ingress(&mut self, link: IngressLink) {
        match link {
            IngressLink::Xdp(id) => {
                if let Some(p) = self.ebpf.program_mut(progs::XDP_LB) {
                    let xdp: Result<&mut Xdp, _> = p.try_into();
                    if let Ok(xdp) = xdp {
                        let _ = xdp.detach(id);
                    }
                }
            }
            IngressLink::Tc(id) => {
                if let Ok(tc) = classifier(&mut self.ebpf, progs::TC_LB) {
                    let _ = tc.detach(id);
                }
            }
        }
    }

    fn detach_links(&mut self, ingress: IngressLink, egress: SchedClassifierLinkId) {
        self.detach_ingress(ingress);
        if let Ok(tc) = classifier(&mut self.ebpf, progs::TC_REVNAT) {
            let _ = tc.detach(egress);
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
        self.detach_links(a.ingress, a.egress);
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

    /// The kernel's id of the program `name` (`lb_common::program_names`) as loaded by this
    /// process, if it is loaded.
    pub fn program_id(&self, name: &str) -> Option<u32> {
        self.ebpf
            .program(name)
            .and_then(|p| p.info().ok())
            .map(|i| i.id())
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
        self.prog
            .maps
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
        match self.prog.maps.node_addrs.remove(&net_addr(addr)) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(Error::map(names::NODE_ADDRS, "delete", e)),
        }
    }

    /// Allows the XDP program to redirect translated frames straight to this device (in the
    /// calling thread's namespace). Only for devices that can take XDP frames: a NIC, or a
    /// veth whose peer has an XDP program or GRO (TOOLCHAIN.md); frames for any other device
    /// go through the stack. The TC classifier (TC mode) needs none of this: it redirects
    /// with `bpf_redirect`, to any device.
    pub fn allow_redirect(&mut self, ifname: &str) -> Result<(), Error> {
        let idx = ifindex(ifname)?;
        let cap = self.cfg.capacities.redirect_ports;
        self.prog
            .maps
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

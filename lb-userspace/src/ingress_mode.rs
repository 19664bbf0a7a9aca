//! Which program takes an interface's ingress: the XDP program or the TC classifier.
//!
//! [`IngressMode::Auto`] decides per interface from its link kind (rtnetlink
//! `IFLA_INFO_KIND`, read in the calling thread's network namespace): a veth gets TC, since
//! packets that local processes send over a veth are `CHECKSUM_PARTIAL` (their checksum
//! field holds only the pseudo-header sum, which XDP cannot tell) and `XDP_TX` frames vanish
//! unless the peer runs an XDP program (TOOLCHAIN.md); anything else gets XDP.
//! [`decide`] is the rule; [`resolve`] reads the facts and applies it.

use std::io;

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkInfo, LinkMessage},
};
use netlink_sys::SocketAddr;

pub use lb_datapath::IngressMode;

use crate::{attach::ifindex, error::Error};

/// The program an interface's ingress gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ingress {
    /// The XDP program.
    Xdp,
    /// The TC classifier at TCX ingress.
    Tc,
}

impl Ingress {
    /// The name of the mode that selects it (`xdp`, `tc`).
    pub const fn name(self) -> &'static str {
        match self {
            Ingress::Xdp => "xdp",
            Ingress::Tc => "tc",
        }
    }
}

/// What an interface gets, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub ingress: Ingress,
    pub reason: String,
}

/// The rule: a configured `xdp` or `tc` is taken as is; `auto` gives TC to a veth (link kind
/// `veth`) and XDP to anything else (another kind, or none: a physical device).
pub fn decide(mode: IngressMode, link_kind: Option<&str>) -> Choice {
    let (ingress, reason) = match (mode, link_kind) {
        (IngressMode::Xdp, _) => (Ingress::Xdp, "configured (ingress mode xdp)".to_string()),
        (IngressMode::Tc, _) => (Ingress::Tc, "configured (ingress mode tc)".to_string()),
        (IngressMode::Auto, Some("veth")) => (
            Ingress::Tc,
            "auto: a veth; packets sent by local processes arrive with partial checksums \
             XDP cannot see, and XDP_TX frames vanish unless the peer runs an XDP program"
                .to_string(),
        ),
        (IngressMode::Auto, Some(kind)) => (
            Ingress::Xdp,
            format!("auto: link kind `{kind}`, not a veth"),
        ),
        (IngressMode::Auto, None) => (
            Ingress::Xdp,
            "auto: no link kind (a physical device), not a veth".to_string(),
        ),
    };
    Choice { ingress, reason }
}

/// [`decide`] for `ifname` (in the calling thread's network namespace); the link kind is
/// read only for `auto`.
pub fn resolve(mode: IngressMode, ifname: &str) -> Result<Choice, Error> {
    if mode != IngressMode::Auto {
        return Ok(decide(mode, None));
    }
    let kind = link_kind(ifname)?;
    Ok(decide(mode, kind.as_deref()))
}

/// The link kind of `ifname` (`IFLA_INFO_KIND`: `veth`, `bridge`, `vxlan`, ...); `None` when
/// the link has none (physical devices).
pub fn link_kind(ifname: &str) -> Result<Option<String>, Error> {
    let index = ifindex(ifname)?;
    read_link_kind(index).map_err(|e| Error::Interface {
        ifname: ifname.into(),
        reason: format!(
            "reading its link kind over rtnetlink (for --mode auto; or set --mode xdp|tc): {e}"
        ),
    })
}

fn read_link_kind(index: u32) -> io::Result<Option<String>> {
    let s = crate::addr_watch::netlink_socket()?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    header.sequence_number = 1;
    let mut request = LinkMessage::default();
    request.header.index = index;
    let mut msg = NetlinkMessage::new(
        header,
        NetlinkPayload::from(RouteNetlinkMessage::GetLink(request)),
    );
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    s.send_to(&buf, &SocketAddr::new(0, 0), 0)?;
    let mut buf = vec![0; crate::addr_watch::READ_BUFFER];
    loop {
        let n = crate::addr_watch::read(&s, &mut buf)?
            .ok_or_else(|| io::Error::other("a message larger than the buffer"))?;
        let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[..n])
            .map_err(|e| io::Error::other(format!("malformed RTM_NEWLINK answer: {e}")))?;
        match m.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link))
                if link.header.index == index =>
            {
                return Ok(kind_of(&link));
            }
            NetlinkPayload::Error(e) => {
                return Err(match e.code {
                    Some(code) => io::Error::from_raw_os_error(-code.get()),
                    None => io::Error::other("no answer to RTM_GETLINK"),
                });
            }
            _ => {}
        }
    }
}

fn kind_of(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k.to_string()),
            _ => None,
        }),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_gives_tc_to_a_veth_and_xdp_to_everything_else() {
        let veth = decide(IngressMode::Auto, Some("veth"));
        assert_eq!(veth.ingress, Ingress::Tc);
        assert!(veth.reason.contains("partial checksums"), "{}", veth.reason);
        assert!(veth.reason.contains("XDP_TX"), "{}", veth.reason);
        for kind in ["vxlan", "bridge", "bond", "vlan", "veth0"] {
            let c = decide(IngressMode::Auto, Some(kind));
            assert_eq!(c.ingress, Ingress::Xdp, "{kind}");
            assert!(c.reason.contains(kind), "{}", c.reason);
        }
        let nic = decide(IngressMode::Auto, None);
        assert_eq!(nic.ingress, Ingress::Xdp);
        assert!(nic.reason.contains("physical device"), "{}", nic.reason);
    }

    #[test]
    fn a_configured_mode_wins_over_the_link_kind() {
        for kind in [Some("veth"), Some("vxlan"), None] {
            assert_eq!(decide(IngressMode::Xdp, kind).ingress, Ingress::Xdp);
            assert_eq!(decide(IngressMode::Tc, kind).ingress, Ingress::Tc);
            assert!(
                decide(IngressMode::Tc, kind)
                    .reason
                    .starts_with("configured")
            );
        }
    }

    #[test]
    fn the_kind_is_read_from_the_link_info_attribute() {
        use netlink_packet_route::link::InfoKind;
        let mut link = LinkMessage::default();
        assert_eq!(kind_of(&link), None);
        link.attributes.push(LinkAttribute::IfName("eth0".into()));
        assert_eq!(kind_of(&link), None);
        link.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Veth,
            )]));
        assert_eq!(kind_of(&link).as_deref(), Some("veth"));
    }

    #[test]
    fn the_loopback_device_has_no_kind_and_a_missing_interface_is_named() {
        assert_eq!(link_kind("lo").expect("lo"), None);
        assert_eq!(
            resolve(IngressMode::Auto, "lo").expect("lo").ingress,
            Ingress::Xdp
        );
        let e = resolve(IngressMode::Auto, "no-such-if0").expect_err("missing");
        assert!(e.to_string().contains("no-such-if0"), "{e}");
        // A configured mode reads nothing.
        assert_eq!(
            resolve(IngressMode::Tc, "no-such-if0").expect("tc").ingress,
            Ingress::Tc
        );
    }
}

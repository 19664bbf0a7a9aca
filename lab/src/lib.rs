//! The sluice lab: a fixture for tests, demos and benchmarks.
//!
//! Everything here keeps traffic inside network namespaces that the fixture creates itself, and
//! every resource is held by a guard that cleans up on drop, also when a test panics:
//!
//! - [`netns`]: [`Netns`], a named network namespace (`ip netns add`) that can run closures on a
//!   thread inside it ([`Netns::enter`]), run commands in it ([`Netns::run`], via
//!   `nsenter --net`), write its sysctls and spawn long-running processes in it.
//! - [`process`]: [`Process`], a child process that is terminated (SIGTERM, then SIGKILL) by its
//!   own PID on drop, with line-oriented access to its stdout.
//! - [`veth`]: veth pairs between namespaces and the link settings the lab needs (addresses,
//!   TX checksum offload, GRO, neighbours, MAC and ifindex lookup).
//! - [`topology`]: [`Lab`], the standard client / node / pods topology with the data path's
//!   prerequisites set up as on a real node (see TOOLCHAIN.md for why each setting matters).
//! - [`pin`]: [`PinDir`], a unique bpffs directory for pinned maps and links.
//! - [`packet`]: [`PacketBuilder`] and [`ParsedPacket`] for crafting and checking frames, with
//!   an independent RFC 1071 checksum implementation ([`verify_checksums`]).
//! - [`capture`]: [`Capture`], an `AF_PACKET` socket on one interface of a namespace, to look
//!   at the frames that really cross a link.
//!
//! Namespaces are entered with `setns(2)` or `nsenter --net`, never `ip netns exec`, so the root
//! mount namespace (and with it the bpffs pins under `/sys/fs/bpf`) stays visible.
//!
//! Most of this crate needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and the `ip`, `ethtool`,
//! `nsenter` and `mountpoint` tools; [`packet`] is pure and works anywhere.

pub mod capture;
pub mod netns;
pub mod packet;
pub mod pin;
pub mod process;
pub mod topology;
pub mod two_nodes;
pub mod veth;

mod cmd;
pub mod error;

pub use capture::Capture;
pub use error::{Error, Result};
pub use netns::Netns;
pub use packet::{
    Ipv6Ext, MacAddr, PacketBuilder, ParsedPacket, TcpFlags, internet_checksum, verify_checksums,
};
pub use pin::{PinDir, ensure_bpffs};
pub use process::{Process, Signal};
pub use topology::{Lab, LabBuilder, XdpPassAttacher};

//! The one definition of everything the eBPF programs and userspace share.
//!
//! Every type here is `#[repr(C)]`, padding-free (explicit `_pad` fields, size asserted at
//! compile time) and holds addresses and ports in network byte order behind newtypes, so
//! kernel and userspace cannot drift apart. Id `0` means "none" in every id space: BPF arrays
//! are zero-filled, so a zero slot can never be mistaken for a real backend.
#![cfg_attr(not(test), no_std)]

pub mod abi;
pub mod csum;
pub mod hash;
pub mod net;
pub mod reason;

pub use abi::*;
pub use net::{NetAddr, NetPort};
pub use reason::Reason;

/// Version of the map layout. Bumped whenever a key/value type or map definition changes;
/// part of the pin path (`/sys/fs/bpf/sluice/<instance>/v<LAYOUT_VERSION>/`).
///
/// - v1: the first layout.
/// - v2: `SLOTS` holds blocks of [`SLOTS_PER_ENTRY`] slots; `SLOTS`, `BACKENDS` and
///   `SERVICE_NAMES` are `BPF_F_MMAPABLE` ([`map_flags::MMAPABLE`]).
/// - v3: conntrack with a lifecycle: `CtEntry` carries state, flags, the backend's
///   generation and when it was last seen; TCP flows not confirmed yet live in `CT_SYN`,
///   UDP in `CT_OTHER`; `Backend` and `AffinityEntry` carry a generation; `GlobalConfig`
///   the timeouts.
///   [`ServiceName`] holds 252 bytes (whole controller names); NodePort entries carry
///   [`service_flags::NODE_PORT`].
/// - v4: several nodes: `CtEntry` carries the client (`peer_*`) and source-NATed flows
///   ([`ct_flags::SNAT`]); `Backend` can be [`backend_flags::REMOTE`]; `GlobalConfig`
///   holds the NAT port range; `SOURCE_RANGES` (LPM trie), `SOURCE_DENIED`, `SCRATCH` and
///   `FRAGMENTS` (IPv4 datagrams whose first fragment was translated).
pub const LAYOUT_VERSION: u32 = 4;

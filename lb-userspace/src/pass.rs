//! The stub XDP program for veth peers (TOOLCHAIN.md): a veth end only delivers frames
//! that arrive by XDP_TX or XDP_REDIRECT if its peer runs NAPI, which an XDP program there
//! provides. The lab attaches it to every peer that receives such frames.

use aya::programs::{Xdp, XdpMode};
use lb_common::program_names::XDP_PASS;

use crate::error::Error;

/// A pass-everything XDP program attached to one interface; dropping it detaches it.
pub struct PassProgram {
    // Owns the program and its link: dropping the object detaches.
    _ebpf: aya::Ebpf,
    ifname: String,
}

impl std::fmt::Debug for PassProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassProgram")
            .field("ifname", &self.ifname)
            .finish()
    }
}

impl PassProgram {
    /// Attaches to `ifname` in the calling thread's network namespace (native mode).
    pub fn attach(ifname: &str) -> Result<Self, Error> {
        let mut ebpf = crate::object::load_xdp(XDP_PASS)?;
        let prog: &mut Xdp = ebpf
            .program_mut(XDP_PASS)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| Error::program(XDP_PASS, "find", "not loaded"))?;
        prog.attach(ifname, XdpMode::Driver)
            .map_err(|e| Error::program(XDP_PASS, "attach", e))?;
        Ok(PassProgram {
            _ebpf: ebpf,
            ifname: ifname.into(),
        })
    }
}

//! The benchmarks' packet generator and sink (`cargo xtask bench compare`; the programs are
//! in `lb-ebpf/src/traffic.rs`).
//!
//! [`Generator`] sends frames out of an interface at the rate one CPU can make them:
//! `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` runs `sluice_gen` on frames built
//! from a template, and its `XDP_TX` transmits each one on the interface given as the
//! frame's ingress. Frame `n` is flow `n % flows` (source port and address vary), so a
//! stateful path sees `flows` distinct 5-tuples. [`Sink`] counts and drops the frames where
//! they arrive. Both act in the calling thread's network namespace; the generator's frames
//! are processed on the calling thread's CPU (veth delivers to its peer's NAPI there).

use std::time::{Duration, Instant};

use aya::maps::{Array, PerCpuArray};
use aya::programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode};
use lb_common::program_names::{XDP_COUNT, XDP_GEN};
use lb_common::{GEN_HEAD_LEN, GenTemplate};

use crate::{error::Error, object, testrun::XdpMd};

const GEN_TEMPLATE: &str = "GEN_TEMPLATE";
const COUNT_PORT: &str = "COUNT_PORT";
const COUNTED: &str = "COUNTED";

/// Most frames live mode processes between two checks for pending work (the kernel's cap).
pub const MAX_BATCH: u32 = 256;

/// The loaded (never attached) generator program.
pub struct Generator {
    ebpf: aya::Ebpf,
    frame: Vec<u8>,
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("frame_len", &self.frame.len())
            .finish_non_exhaustive()
    }
}

impl Generator {
    /// Loads the generator for `frame` (Ethernet + IPv4 without options + UDP with a zero
    /// checksum, then any payload) cycling through `flows` flows (at least 1).
    pub fn load(frame: &[u8], flows: u32) -> Result<Self, Error> {
        let head: [u8; GEN_HEAD_LEN] = frame
            .get(..GEN_HEAD_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| Error::InvalidSpec {
                service: "<generator>".into(),
                reason: format!(
                    "the frame has {} bytes; it needs at least Ethernet + IPv4 + UDP \
                     ({GEN_HEAD_LEN})",
                    frame.len()
                ),
            })?;
        let mut ebpf = object::load_xdp(XDP_GEN)?;
        let mut template: Array<_, GenTemplate> = ebpf
            .map_mut(GEN_TEMPLATE)
            .ok_or(Error::MissingMap(GEN_TEMPLATE))?
            .try_into()
            .map_err(|e| Error::map(GEN_TEMPLATE, "open", e))?;
        let value = GenTemplate {
            head,
            _pad: [0; 2],
            flows: flows.max(1),
        };
        template
            .set(0, value, 0)
            .map_err(|e| Error::map(GEN_TEMPLATE, "write", e))?;
        Ok(Generator {
            ebpf,
            frame: frame.to_vec(),
        })
    }

    /// Sends `frames` frames out of `ifindex` in batches of `batch` (1..=[`MAX_BATCH`]) and
    /// returns the wall time the run took, from the call until the kernel returned.
    pub fn send(&self, ifindex: u32, frames: u32, batch: u32) -> Result<Duration, Error> {
        let prog: &Xdp = object::xdp(&self.ebpf, XDP_GEN)?;
        let md = XdpMd::new(self.frame.len(), ifindex);
        let opts = TestRunOptions {
            data_in: Some(&self.frame),
            ctx_in: Some(md.as_bytes()),
            repeat: frames.max(1),
            attrs: TestRunAttrs::new().xdp_live_frames(batch.clamp(1, MAX_BATCH)),
            ..Default::default()
        };
        let start = Instant::now();
        prog.test_run(opts)
            .map_err(|e| Error::program(XDP_GEN, "BPF_PROG_TEST_RUN (live frames)", e))?;
        Ok(start.elapsed())
    }
}

/// The sink program attached to one interface; dropping it detaches it.
pub struct Sink {
    ebpf: aya::Ebpf,
    ifname: String,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("ifname", &self.ifname)
            .finish_non_exhaustive()
    }
}

impl Sink {
    /// Attaches to `ifname` (native mode) counting and dropping UDP packets to `udp_port`;
    /// every other packet is passed.
    pub fn attach(ifname: &str, udp_port: u16) -> Result<Self, Error> {
        let mut ebpf = object::load_xdp(XDP_COUNT)?;
        let mut port: Array<_, u16> = ebpf
            .map_mut(COUNT_PORT)
            .ok_or(Error::MissingMap(COUNT_PORT))?
            .try_into()
            .map_err(|e| Error::map(COUNT_PORT, "open", e))?;
        port.set(0, udp_port.to_be(), 0)
            .map_err(|e| Error::map(COUNT_PORT, "write", e))?;
        let prog: &mut Xdp = ebpf
            .program_mut(XDP_COUNT)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| Error::program(XDP_COUNT, "find", "not loaded"))?;
        prog.attach(ifname, XdpMode::Driver)
            .map_err(|e| Error::program(XDP_COUNT, "attach", e))?;
        Ok(Sink {
            ebpf,
            ifname: ifname.into(),
        })
    }

    /// Packets counted (and dropped) so far, over all CPUs.
    pub fn counted(&self) -> Result<u64, Error> {
        let counted: PerCpuArray<_, u64> = self
            .ebpf
            .map(COUNTED)
            .ok_or(Error::MissingMap(COUNTED))?
            .try_into()
            .map_err(|e| Error::map(COUNTED, "open", e))?;
        let values = counted
            .get(&0, 0)
            .map_err(|e| Error::map(COUNTED, "read", e))?;
        Ok(values.iter().sum())
    }
}

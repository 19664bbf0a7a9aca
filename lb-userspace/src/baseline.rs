//! The benchmarks' baseline: an XDP program that parses Ethernet + IPv4 + the TCP/UDP ports
//! (bounds-checked, as the load balancer's parser does) and passes every packet. Per-packet
//! costs of the data path are reported as ratios to this program's, measured side by side
//! with `BPF_PROG_TEST_RUN` (`cargo xtask bench datapath`).

use aya::programs::{TestRun, TestRunOptions};
use lb_common::program_names::XDP_BASELINE;

use crate::{error::Error, testrun::TestRunOutput};

/// Room for the output packet beyond the input (the baseline never grows a packet).
const HEADROOM: usize = 256;

/// The loaded (never attached) parse-and-pass program.
pub struct BaselineProgram {
    ebpf: aya::Ebpf,
}

impl std::fmt::Debug for BaselineProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BaselineProgram").finish_non_exhaustive()
    }
}

impl BaselineProgram {
    /// Loads the program (only this one) from sluice's object.
    pub fn load() -> Result<Self, Error> {
        Ok(BaselineProgram {
            ebpf: crate::object::load_xdp(XDP_BASELINE)?,
        })
    }

    /// Runs the program `repeat` times on `packet` through `BPF_PROG_TEST_RUN`; the duration
    /// is the kernel's mean per run.
    pub fn test_run(&self, packet: &[u8], repeat: u32) -> Result<TestRunOutput, Error> {
        let prog = crate::object::xdp(&self.ebpf, XDP_BASELINE)?;
        let mut out = vec![0u8; packet.len() + HEADROOM];
        let opts = TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            repeat: repeat.max(1),
            ..Default::default()
        };
        let r = prog
            .test_run(opts)
            .map_err(|e| Error::program(XDP_BASELINE, "BPF_PROG_TEST_RUN", e))?;
        out.truncate(r.data_size_out as usize);
        Ok(TestRunOutput {
            verdict: r.return_value,
            data: out,
            duration: r.duration,
        })
    }
}

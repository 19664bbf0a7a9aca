//! `BPF_PROG_TEST_RUN` of the loaded programs, with the maps as they are: packet tests and
//! per-packet benchmarks. Helpers such as `bpf_fib_lookup` see the network namespace of the
//! calling thread, so run this inside a prepared namespace.

use std::time::Duration;

use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use lb_common::program_names as progs;

use crate::{dataplane::Dataplane, error::Error};

/// Extra room for programs that grow a packet.
const HEADROOM: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestRunOutput {
    /// The program's return value (an XDP action or a TC action).
    pub verdict: u32,
    /// The packet after the program.
    pub data: Vec<u8>,
    /// Mean duration of one run as the kernel measured it.
    pub duration: Duration,
}

/// `struct xdp_md` as `ctx_in`: sets the ingress interface the program sees.
#[repr(C)]
pub(crate) struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

impl XdpMd {
    /// The context of a `len`-byte frame arriving on `ingress_ifindex`, queue 0.
    pub(crate) fn new(len: usize, ingress_ifindex: u32) -> Self {
        XdpMd {
            data: 0,
            data_end: u32::try_from(len).unwrap_or(u32::MAX),
            data_meta: 0,
            ingress_ifindex,
            rx_queue_index: 0,
            egress_ifindex: 0,
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        // SAFETY: XdpMd is repr(C) with only u32 fields, so viewing it as bytes is sound.
        unsafe {
            std::slice::from_raw_parts(
                (self as *const XdpMd).cast::<u8>(),
                std::mem::size_of::<XdpMd>(),
            )
        }
    }
}

/// The head of `struct __sk_buff` as `ctx_in` of a TC test run, up to the fields set: the
/// interface the packet arrives on (`skb->skb_iif`, `skb->dev`).
#[repr(C)]
#[derive(Default)]
struct SkBuffHead {
    len: u32,
    pkt_type: u32,
    mark: u32,
    queue_mapping: u32,
    protocol: u32,
    vlan_present: u32,
    vlan_tci: u32,
    vlan_proto: u32,
    priority: u32,
    ingress_ifindex: u32,
    ifindex: u32,
}

impl Dataplane {
    /// Runs the XDP program `repeat` times on `packet` (the packet is not restored between
    /// repeats). `ingress_ifindex` sets the interface the packet seems to arrive on (0: the
    /// namespace's loopback).
    pub fn test_xdp(
        &self,
        packet: &[u8],
        ingress_ifindex: u32,
        repeat: u32,
    ) -> Result<TestRunOutput, Error> {
        let prog: &Xdp = self
            .ebpf
            .program(progs::XDP_LB)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| Error::program(progs::XDP_LB, "find", "not loaded"))?;
        let md = XdpMd::new(packet.len(), ingress_ifindex);
        let ctx = md.as_bytes();
        let mut out = vec![0u8; packet.len() + HEADROOM];
        let opts = TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ctx_in: if ingress_ifindex == 0 {
                None
            } else {
                Some(ctx)
            },
            repeat: repeat.max(1),
            ..Default::default()
        };
        let r = prog
            .test_run(opts)
            .map_err(|e| Error::program(progs::XDP_LB, "BPF_PROG_TEST_RUN", e))?;
        out.truncate(r.data_size_out as usize);
        Ok(TestRunOutput {
            verdict: r.return_value,
            data: out,
            duration: r.duration,
        })
    }

    /// Runs the TC ingress load balancer (`--mode tc`) once on `packet`, arriving on
    /// `ingress_ifindex` (0: the namespace's loopback). The test skb carries complete
    /// checksums (CHECKSUM_NONE), so its output can be compared byte for byte with the XDP
    /// program's.
    pub fn test_tc_lb(&self, packet: &[u8], ingress_ifindex: u32) -> Result<TestRunOutput, Error> {
        let prog: &SchedClassifier = self
            .ebpf
            .program(progs::TC_LB)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| Error::program(progs::TC_LB, "find", "not loaded"))?;
        let md = SkBuffHead {
            ingress_ifindex,
            ifindex: ingress_ifindex,
            ..Default::default()
        };
        // SAFETY: SkBuffHead is repr(C) with only u32 fields, so viewing it as bytes is sound.
        let ctx = unsafe {
            std::slice::from_raw_parts(
                (&md as *const SkBuffHead).cast::<u8>(),
                std::mem::size_of::<SkBuffHead>(),
            )
        };
        let mut out = vec![0u8; packet.len() + HEADROOM];
        let opts = TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ctx_in: (ingress_ifindex != 0).then_some(ctx),
            repeat: 1,
            ..Default::default()
        };
        let r = prog
            .test_run(opts)
            .map_err(|e| Error::program(progs::TC_LB, "BPF_PROG_TEST_RUN", e))?;
        out.truncate(r.data_size_out as usize);
        Ok(TestRunOutput {
            verdict: r.return_value,
            data: out,
            duration: r.duration,
        })
    }

    /// Runs the TC reverse-NAT program once on `packet`.
    pub fn test_tc(&self, packet: &[u8]) -> Result<TestRunOutput, Error> {
        let prog: &SchedClassifier = self
            .ebpf
            .program(progs::TC_REVNAT)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| Error::program(progs::TC_REVNAT, "find", "not loaded"))?;
        let mut out = vec![0u8; packet.len() + HEADROOM];
        let opts = TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            repeat: 1,
            ..Default::default()
        };
        let r = prog
            .test_run(opts)
            .map_err(|e| Error::program(progs::TC_REVNAT, "BPF_PROG_TEST_RUN", e))?;
        out.truncate(r.data_size_out as usize);
        Ok(TestRunOutput {
            verdict: r.return_value,
            data: out,
            duration: r.duration,
        })
    }
}

/// A handle that runs the XDP program through `BPF_PROG_TEST_RUN` independently of the
/// [`Dataplane`] (its own program file descriptor), so packets can run on one thread while
/// another updates the maps: the "no hole during an update" tests and benchmarks use it.
#[derive(Debug)]
pub struct XdpTestRunner {
    fd: std::os::fd::OwnedFd,
}

/// `union bpf_attr` as `BPF_PROG_TEST_RUN` reads it (the `test` member).
#[repr(C)]
#[derive(Default)]
struct TestAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;

impl XdpTestRunner {
    /// Runs the program once on `packet`, arriving on `ingress_ifindex` (0: loopback).
    pub fn run(&self, packet: &[u8], ingress_ifindex: u32) -> Result<TestRunOutput, Error> {
        use std::os::fd::AsRawFd;
        let md = XdpMd {
            data: 0,
            data_end: packet.len() as u32,
            data_meta: 0,
            ingress_ifindex,
            rx_queue_index: 0,
            egress_ifindex: 0,
        };
        let mut out = vec![0u8; packet.len() + HEADROOM];
        let mut attr = TestAttr {
            prog_fd: self.fd.as_raw_fd() as u32,
            data_size_in: packet.len() as u32,
            data_size_out: out.len() as u32,
            data_in: packet.as_ptr() as u64,
            data_out: out.as_mut_ptr() as u64,
            repeat: 1,
            ..Default::default()
        };
        if ingress_ifindex != 0 {
            attr.ctx_size_in = std::mem::size_of::<XdpMd>() as u32;
            attr.ctx_in = &md as *const XdpMd as u64;
        }
        // SAFETY: attr points at valid buffers of the sizes it states, alive for the call.
        unsafe { crate::bpf_sys::bpf(BPF_PROG_TEST_RUN, &mut attr) }
            .map_err(|e| Error::program(progs::XDP_LB, "BPF_PROG_TEST_RUN", e))?;
        out.truncate(attr.data_size_out as usize);
        Ok(TestRunOutput {
            verdict: attr.retval,
            data: out,
            duration: Duration::from_nanos(attr.duration as u64),
        })
    }
}

impl Dataplane {
    /// A test runner for the XDP program that does not borrow the data path.
    pub fn xdp_test_runner(&self) -> Result<XdpTestRunner, Error> {
        let prog: &Xdp = self
            .ebpf
            .program(progs::XDP_LB)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| Error::program(progs::XDP_LB, "find", "not loaded"))?;
        use std::os::fd::AsFd;
        let fd = prog
            .fd()
            .map_err(|e| Error::program(progs::XDP_LB, "get fd", e))?
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| Error::program(progs::XDP_LB, "dup fd", e))?;
        Ok(XdpTestRunner { fd })
    }
}

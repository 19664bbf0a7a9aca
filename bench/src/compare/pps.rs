//! Packets per second through the node: UDP frames made by the XDP live-frames generator
//! (`lb_userspace::traffic::Generator`) on one CPU of the client namespace, sent out of the
//! client's link, forwarded by the node (whatever way it is programmed) and counted by the
//! sink XDP program on the pod's link (`lb_userspace::traffic::Sink`).
//!
//! The generator's thread is pinned to one CPU; the node's forwarding of a frame runs in the
//! softirq of that same CPU (veth delivers to its peer's NAPI on the sending CPU), so one
//! core generates, forwards and counts: what differs between the ways is the forwarding.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use lab::Lab;
use lab::packet::PacketBuilder;
use lab::{Result, ensure, error::Context as _};
use lb_userspace::traffic::{Generator, MAX_BATCH, Sink};
use serde::Serialize;

/// The generated frames' first source address; flow `f` comes from this address plus
/// `f / 64 000` (the generator's ports per address), all inside the client link's /24.
pub const SOURCE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 64);

/// Frames per generator run (one `BPF_PROG_TEST_RUN`); the clock is read between runs.
const CHUNK: u32 = 1 << 16;

/// How the frames are spread over flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Flows {
    /// Every frame opens a flow (up to `max_frames` distinct ones): each is a first packet,
    /// so rule sets are walked and conntrack entries made for every frame.
    New,
    /// This many flows, each seen once before the measurement: established flows.
    Established(u32),
}

/// One measurement's bounds.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Stop sending after this long...
    pub duration: Duration,
    /// ...or after this many frames, whichever comes first.
    pub max_frames: u32,
    /// The CPU the generator (and so the forwarding) runs on.
    pub cpu: usize,
}

/// What one measurement saw.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Measured {
    pub sent: u64,
    pub counted: u64,
    pub seconds: f64,
    /// Frames counted at the pod per second of sending.
    pub pps: f64,
}

/// Sends UDP frames from the client to `dst` (the node's NodePort, or the pod itself) and
/// counts those that reach `sink` (on the pod's link) with the destination port rewritten
/// to the sink's.
pub fn measure(
    lab: &Lab,
    sink: &Sink,
    dst: SocketAddrV4,
    flows: Flows,
    bounds: Bounds,
) -> Result<Measured> {
    let frame = PacketBuilder::new()
        .eth(lab.client_mac(), lab.node_uplink_mac())
        .ipv4(SOURCE, *dst.ip())
        .udp(1024, dst.port())
        .udp_no_checksum()
        .payload(&[0xab; 18])
        .build();
    let n_flows = match flows {
        Flows::New => bounds.max_frames,
        Flows::Established(n) => n,
    };
    let generator = Generator::load(&frame, n_flows).context("loading the packet generator")?;
    let ifindex = lab::veth::ifindex(lab.client(), lab.client_link())?;
    let cpu = bounds.cpu;
    lab.client().enter(|| -> Result<Measured> {
        pin_to(cpu)?;
        if let Flows::Established(n) = flows {
            // Every flow once, so the measured frames all belong to known flows.
            generator
                .send(ifindex, n, MAX_BATCH)
                .context("sending every flow once")?;
            settle(sink)?;
        }
        let before = sink.counted().context("reading the sink's count")?;
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < bounds.duration && sent < u64::from(bounds.max_frames) {
            let chunk = CHUNK.min(bounds.max_frames - sent as u32);
            generator
                .send(ifindex, chunk, MAX_BATCH)
                .context("sending frames")?;
            sent += u64::from(chunk);
        }
        let seconds = start.elapsed().as_secs_f64();
        let counted = settle(sink)? - before;
        Ok(Measured {
            sent,
            counted,
            seconds,
            pps: counted as f64 / seconds,
        })
    })?
}

/// The sink's count once it stops moving (frames still queued on a veth ring are delivered
/// by the softirq of the CPU that queued them, right after the run): two equal reads 10 ms
/// apart, within 2 s.
fn settle(sink: &Sink) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut last = sink.counted().context("reading the sink's count")?;
    loop {
        std::thread::sleep(Duration::from_millis(10));
        let now = sink.counted().context("reading the sink's count")?;
        if now == last {
            return Ok(now);
        }
        ensure!(
            Instant::now() < deadline,
            "the sink's count still moves 2 s after the generator stopped ({last} -> {now})"
        );
        last = now;
    }
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)
        .with_context(|| format!("CPU {cpu} is beyond what a CPU set holds"))?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .with_context(|| format!("cannot pin the generator to CPU {cpu}"))
}

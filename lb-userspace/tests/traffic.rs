//! The benchmarks' generator and sink (`lb_userspace::traffic`) over a real veth pair: every
//! frame sent arrives, frame `n` is flow `n % flows` with a valid IPv4 checksum and the
//! template's other bytes, and the sink counts exactly the frames to its port.

use std::net::Ipv4Addr;
use std::time::Duration;

use lab::capture::Capture;
use lab::netns::Netns;
use lab::packet::{PacketBuilder, verify_checksums};
use lab::veth;
use lb_userspace::traffic::{Generator, Sink};

const SRC: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 64);
const DST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const PORT: u16 = 9000;

struct Pair {
    tx: Netns,
    rx: Netns,
    tx_ifindex: u32,
}

fn pair() -> Pair {
    let tx = Netns::new("gtx").expect("namespace");
    let rx = Netns::new("grx").expect("namespace");
    veth::create_pair(&tx, "gen0", &rx, "sink0").expect("veth pair");
    veth::set_up(&tx, "gen0").unwrap();
    veth::set_up(&rx, "sink0").unwrap();
    let tx_ifindex = veth::ifindex(&tx, "gen0").unwrap();
    Pair { tx, rx, tx_ifindex }
}

fn frame(p: &Pair, dport: u16) -> Vec<u8> {
    let (src_mac, dst_mac) = (
        veth::mac(&p.tx, "gen0").unwrap(),
        veth::mac(&p.rx, "sink0").unwrap(),
    );
    PacketBuilder::new()
        .eth(src_mac, dst_mac)
        .ipv4(SRC, DST)
        .udp(1024, dport)
        .udp_no_checksum()
        .payload(&[0xab; 18])
        .build()
}

#[test]
fn generated_frames_all_arrive_and_are_counted() {
    let p = pair();
    let sink =
        p.rx.enter(|| Sink::attach("sink0", PORT))
            .unwrap()
            .expect("attach the sink");
    let frames = frame(&p, PORT);
    let gen_ = Generator::load(&frames, 1000).expect("load the generator");
    let sent = 100_000;
    p.tx.enter(|| gen_.send(p.tx_ifindex, sent, 64))
        .unwrap()
        .expect("send");
    // Live frames are delivered to the peer's NAPI before the run returns.
    assert_eq!(sink.counted().unwrap(), u64::from(sent));
    // Frames to another port are passed, not counted.
    let other = Generator::load(&frame(&p, PORT + 1), 1).unwrap();
    p.tx.enter(|| other.send(p.tx_ifindex, 10, 8))
        .unwrap()
        .unwrap();
    assert_eq!(sink.counted().unwrap(), u64::from(sent));
}

#[test]
fn frame_n_is_flow_n_mod_flows_with_valid_checksums() {
    let p = pair();
    // The sink passes these (another port) to the capture behind it.
    let _sink =
        p.rx.enter(|| Sink::attach("sink0", PORT + 1))
            .unwrap()
            .unwrap();
    let capture = Capture::open(&p.rx, "sink0").expect("capture");
    let template = frame(&p, PORT);
    let gen_ = Generator::load(&template, 3).unwrap();
    p.tx.enter(|| gen_.send(p.tx_ifindex, 7, 1))
        .unwrap()
        .unwrap();
    let mut ports = Vec::new();
    while ports.len() < 7 {
        let f = capture
            .wait_for(Duration::from_secs(5), |f| {
                !f.is_outgoing() && f.data.len() == template.len()
            })
            .expect("a generated frame");
        verify_checksums(&f.data).expect("valid checksums");
        let sport = u16::from_be_bytes([f.data[34], f.data[35]]);
        let mut expected = template.clone();
        expected[34..36].copy_from_slice(&sport.to_be_bytes());
        expected[24..26].copy_from_slice(&f.data[24..26]);
        assert_eq!(
            f.data, expected,
            "only the source port and IP checksum vary"
        );
        ports.push(sport);
    }
    assert_eq!(ports, [1024, 1025, 1026, 1024, 1025, 1026, 1024]);
}

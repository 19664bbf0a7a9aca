//! Netns tier, live node addresses: NodePorts follow the attached interface's addresses.
//!
//! - The data path's rtnetlink watch on the lab node's uplink: a full list first (no IPv6
//!   link-local address in it), then each change; an IPv6 address is reported only once its
//!   duplicate address detection is done; the node address table keeps each origin (an
//!   address that is both the interface's and the Node object's stays while either lists it);
//!   after a burst of changes the kernel dropped notifications of, a full list again.
//! - `sluice run` under a bounded load on the node's address: a second address added to the
//!   uplink is served by the NodePort once the agent wrote it, and no longer once it is
//!   removed (its table entry gone, a connection there not translated), with no request of
//!   the load lost.
//! - A restart: an interface address the agent wrote, removed from the uplink while the agent
//!   was dead (kill -9), is gone from the pinned table after the restart, and the agent says
//!   so.

mod common;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use bench::load::{ConnectionMode, Protocol as LoadProtocol, Report};
use common::*;
use lab::{Lab, PinDir, Signal, process::Process, veth};
use lb_userspace::{
    AddressEvent, PinConfig,
    node_addr_origin::{INTERFACE, NODE_OBJECT},
    pinned_node_addresses,
};

const API: &str = "127.0.0.1:10260";
const METRICS: &str = "127.0.0.1:10249";
const INSTANCE: &str = "addresses";
const NODE_PORT: u16 = 30080;
const SERVICE: &str = "default/web:80/TCP";
/// Addresses added at once to overflow the watch's socket (about 1 KiB of receive queue
/// each; the socket holds at most 2 x `net.core.rmem_max`).
const BURST: u16 = 3000;
/// How long anything the tests wait for may take.
const WAIT: Duration = Duration::from_secs(15);

fn wait_for<F: FnMut() -> bool>(what: &str, mut f: F) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A directory for the agent's manifests and state, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> Self {
        let path = std::env::temp_dir().join(format!("sluice-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(path.join("manifests")).expect("temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An extra IPv4 address on the node's uplink (a /24 in the client link's 192.0.2.0/24, so
/// a secondary of the node's own), reachable from the client through a permanent neighbour
/// entry there. Removed on drop if still there.
struct UplinkAddress<'a> {
    lab: &'a Lab,
    addr: Ipv4Addr,
    present: bool,
}

impl<'a> UplinkAddress<'a> {
    fn add(lab: &'a Lab, addr: Ipv4Addr) -> Self {
        veth::add_neighbour(
            lab.client(),
            lab.client_link(),
            addr.into(),
            lab.node_uplink_mac(),
        )
        .expect("client neighbour");
        let mut guard = UplinkAddress {
            lab,
            addr,
            present: false,
        };
        veth::add_ip(lab.node(), lab.node_uplink(), addr.into(), 24).expect("add address");
        guard.present = true;
        guard
    }

    fn remove(&mut self) {
        let cidr = format!("{}/24", self.addr);
        self.lab
            .node()
            .run("ip", ["addr", "del", &cidr, "dev", self.lab.node_uplink()])
            .expect("remove address");
        self.present = false;
    }
}

impl Drop for UplinkAddress<'_> {
    fn drop(&mut self) {
        if self.present {
            let cidr = format!("{}/24", self.addr);
            let _ = self
                .lab
                .node()
                .run("ip", ["addr", "del", &cidr, "dev", self.lab.node_uplink()]);
        }
        let addr = self.addr.to_string();
        let _ = self.lab.client().run(
            "ip",
            ["neigh", "del", addr.as_str(), "dev", self.lab.client_link()],
        );
    }
}

struct Agent<'a> {
    lab: &'a Lab,
    dir: &'a Path,
    pins: &'a PinDir,
}

impl Agent<'_> {
    fn pin(&self) -> PinConfig {
        PinConfig {
            root: self.pins.path().to_path_buf(),
            instance: INSTANCE.into(),
        }
    }

    /// `sluice run` on the uplink, logging at info to the guard's stdout lines; ready.
    fn start(&self) -> Process {
        let mut cmd = Command::new("sh");
        // exec: the guard's PID is the agent's own (signals reach it).
        cmd.args(["-c", "exec \"$0\" \"$@\" 2>&1"])
            .arg(sluice_bin())
            .args([
                "run",
                "--mode",
                mode_arg(),
                "--interface",
                self.lab.node_uplink(),
                "--api-listen",
                API,
                "--metrics-listen",
                METRICS,
                "--redirect",
                &self.lab.node_pod_link(0),
                "--instance",
                INSTANCE,
            ])
            .arg("--manifests")
            .arg(self.dir.join("manifests"))
            .arg("--pin-root")
            .arg(self.pins.path())
            .arg("--state-dir")
            .arg(self.dir.join("state"));
        cmd.env("RUST_LOG", "info").env("NO_COLOR", "1");
        let mut p = self.lab.node().spawn(&cmd).expect("spawn sluice");
        wait_for("sluice to become ready", || {
            assert!(p.is_running(), "sluice exited: {:?}", p.drain_lines());
            self.get("/readyz").map(|(s, _)| s) == Some(200)
        });
        p
    }

    /// GET on the agent's metrics listener, from inside the node namespace.
    fn get(&self, path: &str) -> Option<(u16, String)> {
        common::agent_http(self.lab.node(), METRICS, "GET", path, &[], None)
    }

    fn metric(&self, series: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics")?;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    }

    /// The pinned node address table, read through the pins (not through the agent).
    fn table(&self) -> BTreeMap<IpAddr, u32> {
        pinned_node_addresses(&self.pin()).expect("pinned node addresses")
    }
}

fn manifests(lab: &Lab) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  type: NodePort\n  ports: [{{port: 80, nodePort: {NODE_PORT}}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  labels: {{kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{{port: {HTTP_PORT}}}]\nendpoints:\n- addresses: [{}]\n  conditions: {{ready: true}}\n",
        lab.backend_addr(0)
    )
}

/// `n` new connections to the NodePort on `addr` (bounded, 2 at a time).
fn requests(lab: &Lab, addr: Ipv4Addr, n: u64) -> Report {
    load_from_client(
        lab,
        SocketAddr::new(addr.into(), NODE_PORT),
        LoadProtocol::http("/"),
        ConnectionMode::NewConnectionPerRequest,
        n,
        2,
    )
}

/// Whether a TCP connection from the client to `addr`'s NodePort is set up within a second.
fn connects(lab: &Lab, addr: Ipv4Addr) -> bool {
    let target = SocketAddr::new(addr.into(), NODE_PORT);
    lab.client()
        .enter(move || TcpStream::connect_timeout(&target, Duration::from_secs(1)).is_ok())
        .expect("enter client")
}

/// The next event of the watch matching `want`, failing after [`WAIT`]; the events before
/// it are returned too.
fn next_event(
    rx: &mpsc::Receiver<Vec<AddressEvent>>,
    what: &str,
    want: impl Fn(&AddressEvent) -> bool,
) -> (AddressEvent, Vec<AddressEvent>) {
    let deadline = Instant::now() + WAIT;
    let mut before = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let batch = rx
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("no {what} from the watch ({e}); before: {before:?}"));
        for e in batch {
            if want(&e) {
                return (e, before);
            }
            before.push(e);
        }
    }
}

/// The uplink's IPv6 address lines as `ip -6 addr show` prints them for `addr`.
fn ip6_flags(lab: &Lab, addr: Ipv6Addr) -> String {
    let out = lab
        .node()
        .run("ip", ["-6", "addr", "show", "dev", lab.node_uplink()])
        .expect("ip addr show");
    let needle = format!("inet6 {addr}/");
    out.lines()
        .find(|l| l.contains(&needle))
        .unwrap_or_default()
        .to_string()
}

/// The watch and the table, without the agent: a full list first (the uplink's addresses,
/// no link-local one), then changes one by one; an IPv6 address under duplicate address
/// detection is reported only once DAD is done; each origin keeps its entries (an address
/// that is both the Node object's and the interface's stays while either lists it; one
/// only the interface had goes with it).
#[test]
fn the_watch_follows_the_uplink_and_the_table_keeps_each_origin() {
    let lab = lab(1);
    let uplink = lab.node_uplink_ifindex().expect("uplink ifindex");
    lab.node()
        .sysctl(
            &format!("net.ipv6.conf.{}.accept_dad", lab.node_uplink()),
            "1",
        )
        .expect("accept_dad");
    let dp = dataplane(&lab);
    let (tx, rx) = mpsc::channel();
    // Held by the test, the gate stops the watch's thread inside its sink, so that the
    // kernel's notifications pile up in the socket until it drops some.
    let gate = Arc::new(Mutex::new(()));
    let held = gate.clone();
    let (mut dp, watch) = lab
        .node()
        .enter(move || {
            let watch = dp.watch_interface_addresses(Box::new(move |events| {
                let _ = tx.send(events);
                drop(held.lock());
            }));
            (dp, watch)
        })
        .expect("enter node");
    let watch = watch.expect("watch");
    let node: IpAddr = lab.node_addr().into();
    let node6: IpAddr = lab.node_addr6().into();

    let (listed, _) = next_event(&rx, "full list", |e| matches!(e, AddressEvent::Listed(_)));
    assert_eq!(
        listed,
        AddressEvent::Listed(vec![(uplink, node), (uplink, node6)]),
        "the uplink's addresses, without its link-local one"
    );
    let written = dp.set_interface_addresses(&[node, node6]).expect("set");
    assert!(written.is_empty(), "attach wrote them already: {written:?}");

    // 192.0.2.5 is the Node object's first, then the interface's too, then only the
    // Node's again: served throughout.
    let both = Ipv4Addr::new(192, 0, 2, 5);
    dp.set_node_object_addresses(&[both.into()])
        .expect("node object");
    let origin = |dp: &lb_userspace::Dataplane, a: Ipv4Addr| {
        dp.node_address_origins()
            .expect("origins")
            .get(&IpAddr::from(a))
            .copied()
    };
    assert_eq!(origin(&dp, both), Some(NODE_OBJECT));
    let mut extra = UplinkAddress::add(&lab, both);
    let added = AddressEvent::Added {
        ifindex: uplink,
        addr: both.into(),
    };
    let (_, before) = next_event(&rx, "192.0.2.5 added", |e| *e == added);
    assert!(before.is_empty(), "{before:?}");
    let c = dp.update_interface_addresses(&[both.into()], &[]).unwrap();
    assert!(c.is_empty(), "already served (the Node's): {c:?}");
    assert_eq!(origin(&dp, both), Some(NODE_OBJECT | INTERFACE));
    extra.remove();
    let removed = AddressEvent::Removed {
        ifindex: uplink,
        addr: both.into(),
    };
    next_event(&rx, "192.0.2.5 removed", |e| *e == removed);
    let c = dp.update_interface_addresses(&[], &[both.into()]).unwrap();
    assert!(c.is_empty(), "still the Node's: {c:?}");
    assert_eq!(origin(&dp, both), Some(NODE_OBJECT));
    dp.set_node_object_addresses(&[]).expect("node object");
    assert_eq!(origin(&dp, both), None);

    // An interface-only address comes and goes with the interface.
    let only = Ipv4Addr::new(192, 0, 2, 6);
    let mut extra = UplinkAddress::add(&lab, only);
    next_event(&rx, "192.0.2.6 added", |e| {
        *e == AddressEvent::Added {
            ifindex: uplink,
            addr: only.into(),
        }
    });
    let c = dp.update_interface_addresses(&[only.into()], &[]).unwrap();
    assert_eq!(c.added, vec![IpAddr::from(only)]);
    assert_eq!(origin(&dp, only), Some(INTERFACE));
    extra.remove();
    next_event(&rx, "192.0.2.6 removed", |e| {
        *e == AddressEvent::Removed {
            ifindex: uplink,
            addr: only.into(),
        }
    });
    let c = dp.update_interface_addresses(&[], &[only.into()]).unwrap();
    assert_eq!(c.removed, vec![IpAddr::from(only)]);
    assert_eq!(origin(&dp, only), None);

    // IPv6 with duplicate address detection: tentative first, reported once DAD is done.
    let dad = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 6);
    lab.node()
        .run(
            "ip",
            [
                "addr",
                "add",
                &format!("{dad}/64"),
                "dev",
                lab.node_uplink(),
            ],
        )
        .expect("add address with DAD");
    assert!(
        ip6_flags(&lab, dad).contains("tentative"),
        "DAD under way: {}",
        ip6_flags(&lab, dad)
    );
    next_event(&rx, "the IPv6 address added after DAD", |e| {
        *e == AddressEvent::Added {
            ifindex: uplink,
            addr: dad.into(),
        }
    });
    let flags = ip6_flags(&lab, dad);
    assert!(
        !flags.contains("tentative"),
        "reported while still tentative: {flags}"
    );

    // A burst the watch cannot keep up with (its thread is held while the kernel queues
    // more notifications than the socket holds): the kernel drops some (ENOBUFS) and the
    // watch reads every address again; its full list has the whole burst.
    let burst: Vec<Ipv6Addr> = (0x1000..0x1000 + BURST)
        .map(|h| Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 1, h))
        .collect();
    let batch: String = burst
        .iter()
        .map(|a| format!("addr add {a}/128 dev {} nodad\n", lab.node_uplink()))
        .collect();
    let file = std::env::temp_dir().join(format!("sluice-burst-{}", std::process::id()));
    std::fs::write(&file, batch).unwrap();
    let hold = gate.lock().unwrap();
    let first = Ipv4Addr::new(192, 0, 2, 8);
    // The watch's thread stops in the sink with this address's event.
    let _first = UplinkAddress::add(&lab, first);
    next_event(&rx, "192.0.2.8 added", |e| {
        *e == AddressEvent::Added {
            ifindex: uplink,
            addr: first.into(),
        }
    });
    let added = lab
        .node()
        .run("ip", ["-batch", &file.display().to_string()]);
    let _ = std::fs::remove_file(&file);
    added.expect("ip -batch");
    drop(hold);
    let (listed, _) = next_event(&rx, "full list after the burst", |e| {
        matches!(e, AddressEvent::Listed(_))
    });
    let AddressEvent::Listed(all) = listed else {
        unreachable!()
    };
    let missing: Vec<_> = burst
        .iter()
        .filter(|a| !all.contains(&(uplink, IpAddr::from(**a))))
        .collect();
    assert!(missing.is_empty(), "not in the list: {missing:?}");
    assert!(all.contains(&(uplink, first.into())));

    // The watch stops when dropped (its thread is joined).
    drop(watch);
    assert_eq!(
        dp.node_address_origins().unwrap().get(&node),
        Some(&INTERFACE)
    );
}

/// The agent under a bounded load on the node's own address: an address added to the
/// uplink is served once the agent wrote it, no longer once it is gone; not one request of
/// the load fails, and the load outlasts every step.
#[test]
fn agent_serves_nodeports_on_addresses_as_the_uplink_gains_and_loses_them() {
    let lab = lab(1);
    let _servers = servers(&lab);
    let pins = PinDir::new("addresses").unwrap();
    let dir = TempDir::new("addresses");
    std::fs::write(dir.0.join("manifests/web.yaml"), manifests(&lab)).unwrap();
    let agent = Agent {
        lab: &lab,
        dir: &dir.0,
        pins: &pins,
    };
    let _sluice = agent.start();
    let node = lab.node_addr();
    let r = requests(&lab, node, 20);
    assert_eq!(r.outcomes.ok, 20, "{r}");
    let interface_gauge = r#"sluice_node_addresses{origin="interface"}"#;
    wait_for("the interface addresses gauge", || {
        agent.metric(interface_gauge) == Some(2.0)
    });

    let started = Instant::now();
    let load = background_load(
        &lab,
        SocketAddr::new(node.into(), NODE_PORT),
        ConnectionMode::NewConnectionPerRequest,
        2,
        10,
    );
    let packets = format!("sluice_service_packets_total{{service=\"{SERVICE}\"}}");
    let before = agent.metric(&packets).unwrap_or(0.0);
    wait_for("the load to reach the NodePort", || {
        agent.metric(&packets).unwrap_or(0.0) > before
    });

    // Added: the NodePort answers there once the agent wrote the table entry.
    let second = Ipv4Addr::new(192, 0, 2, 3);
    assert!(!agent.table().contains_key(&second.into()));
    let mut extra = UplinkAddress::add(&lab, second);
    wait_for("the new address in the pinned table", || {
        agent.table().get(&second.into()) == Some(&INTERFACE)
    });
    let r = requests(&lab, second, 20);
    assert_eq!(
        r.outcomes.ok, 20,
        "the new address serves the NodePort: {r}"
    );
    wait_for("the gauge to count the new address", || {
        agent.metric(interface_gauge) == Some(3.0)
    });

    // Removed: the entry goes, and a connection there is not translated (nothing on the
    // node takes it any more).
    extra.remove();
    wait_for("the removed address out of the pinned table", || {
        !agent.table().contains_key(&second.into())
    });
    assert!(
        !connects(&lab, second),
        "the removed address still serves the NodePort"
    );
    assert!(
        agent.table().contains_key(&node.into()),
        "the node's own address stays"
    );
    let steps = started.elapsed();

    let r = load.join().unwrap().unwrap();
    println!("load on {node} while {second} came and went: {r}");
    assert_eq!(r.failures(), 0, "{r}");
    assert!(r.sent >= 500, "{r}");
    assert!(
        r.duration >= steps,
        "the load ended ({:?}) before the steps did ({steps:?})",
        r.duration
    );
    assert_eq!(agent.metric(interface_gauge), Some(2.0));
    assert_eq!(
        agent.metric(r#"sluice_node_address_changes_total{change="removed"}"#),
        Some(1.0)
    );
    lab.assert_no_checksum_errors();
}

/// kill -9, the address the agent wrote removed while it is dead, restart: the restarted
/// agent removes the previous run's entry after its first full read of the interfaces and
/// names it in its log; the node's own address is served throughout.
#[test]
fn agent_restart_removes_an_address_a_previous_run_left() {
    let lab = lab(1);
    let _servers = servers(&lab);
    let pins = PinDir::new("addresses-restart").unwrap();
    let dir = TempDir::new("addresses-restart");
    std::fs::write(dir.0.join("manifests/web.yaml"), manifests(&lab)).unwrap();
    let agent = Agent {
        lab: &lab,
        dir: &dir.0,
        pins: &pins,
    };
    let mut sluice = agent.start();
    let stale = Ipv4Addr::new(192, 0, 2, 4);
    let mut extra = UplinkAddress::add(&lab, stale);
    wait_for("the added address in the pinned table", || {
        agent.table().get(&stale.into()) == Some(&INTERFACE)
    });

    sluice.signal(Signal::SIGKILL).unwrap();
    assert!(
        sluice.wait_timeout(WAIT).unwrap().is_some(),
        "sluice survived SIGKILL"
    );
    extra.remove();
    // Nobody follows the uplink now: the entry is still there (what the restart must fix).
    assert_eq!(agent.table().get(&stale.into()), Some(&INTERFACE));
    assert_eq!(
        requests(&lab, lab.node_addr(), 10).outcomes.ok,
        10,
        "the pinned data path serves without the agent"
    );

    let mut sluice = agent.start();
    wait_for("the previous run's address out of the pinned table", || {
        !agent.table().contains_key(&stale.into())
    });
    let deadline = Instant::now() + WAIT;
    let line = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = sluice
            .next_line(left)
            .expect("the agent's log")
            .expect("the agent's log ended");
        if line.contains("previous run") {
            break line;
        }
    };
    assert!(line.contains(&stale.to_string()), "{line}");
    assert_eq!(
        agent.table().get(&IpAddr::from(lab.node_addr())),
        Some(&INTERFACE)
    );
    let r = requests(&lab, lab.node_addr(), 20);
    assert_eq!(r.outcomes.ok, 20, "{r}");
    lab.assert_no_checksum_errors();
}

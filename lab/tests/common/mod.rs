//! Shared fixture of the netns tests: a lab with XDP stubs, lab-server backends, the data
//! path attached to the node, the load generator run from the client namespace.
#![allow(dead_code)] // each test crate uses a different subset

use std::{net::SocketAddr, path::PathBuf, process::Command, time::Duration};

use bench::load::{self, ConnectionMode, Protocol as LoadProtocol, Report};
use lab::{Lab, process::Process};
use lb_userspace::{Dataplane, DataplaneConfig, IngressMode, attach::AttachMode};

pub const HTTP_PORT: u16 = 8080;
pub const UDP_PORT: u16 = 5353;
/// Raw TCP: the lab-server answers every chunk it reads with `<name>:` and the chunk.
pub const TCP_PORT: u16 = 9000;

/// A binary of the `bench` crate, built next to this test's target directory
/// (`cargo xtask test` builds every binary first).
pub fn bench_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p bench --bins` (cargo xtask test does)",
        bin.display()
    );
    bin
}

/// The ingress program the netns tests attach, from `SLUICE_TEST_INGRESS` (`xdp`, the
/// default, or `tc`): `cargo xtask test` runs the netns tier once in each mode. In TC mode
/// the labs keep the kernel's default offloads on the client link, as a kind or Docker
/// node's uplink has them.
pub fn ingress_mode() -> IngressMode {
    match std::env::var("SLUICE_TEST_INGRESS").as_deref() {
        Err(_) | Ok("xdp") => IngressMode::Xdp,
        Ok("tc") => IngressMode::Tc,
        Ok(other) => panic!("SLUICE_TEST_INGRESS={other}: expected xdp or tc"),
    }
}

/// The program [`ingress_mode`] puts on an interface.
pub fn ingress() -> lb_userspace::ingress_mode::Ingress {
    lb_userspace::ingress_mode::decide(ingress_mode(), None).ingress
}

/// [`ingress_mode`] as the agent's `--mode` value.
pub fn mode_arg() -> &'static str {
    ingress().name()
}

/// Checks that an attachment runs the program [`ingress_mode`] asked for.
pub fn assert_mode(mode: AttachMode) {
    assert_eq!(mode.ingress(), ingress(), "attached as {mode:?}");
}

pub fn lab(backends: usize) -> Lab {
    Lab::builder()
        .backends(backends)
        .client_link_defaults(ingress_mode() == IngressMode::Tc)
        .xdp_pass_attacher(|ifname| {
            let p = lb_userspace::PassProgram::attach(ifname)?;
            Ok(Box::new(p) as Box<dyn std::any::Any + Send>)
        })
        .build()
        .expect("lab")
}

/// One lab-server per backend namespace, answering with its pod name.
pub fn servers(lab: &Lab) -> Vec<Process> {
    (0..lab.backends().len()).map(|i| server(lab, i)).collect()
}

/// The lab-server of pod `i` (name `pod<i>`), started and ready (IPv4 wildcard).
pub fn server(lab: &Lab, i: usize) -> Process {
    server_on(lab, i, "0.0.0.0")
}

/// One lab-server per backend namespace listening on `bind` (e.g. `::`, which takes IPv6
/// and IPv4-mapped connections), answering with its pod name.
pub fn servers_on(lab: &Lab, bind: &str) -> Vec<Process> {
    (0..lab.backends().len())
        .map(|i| server_on(lab, i, bind))
        .collect()
}

/// The lab-server of pod `i` (name `pod<i>`) listening on `bind`, started and ready.
pub fn server_on(lab: &Lab, i: usize, bind: &str) -> Process {
    let mut cmd = Command::new(bench_bin("lab-server"));
    cmd.env("RUST_LOG", "warn").env("NO_COLOR", "1");
    cmd.args([
        "--name",
        &format!("pod{i}"),
        "--http",
        &HTTP_PORT.to_string(),
        "--udp",
        &UDP_PORT.to_string(),
        "--tcp",
        &TCP_PORT.to_string(),
        "--bind",
        bind,
    ]);
    let mut p = lab.backend(i).spawn(&cmd).expect("spawn lab-server");
    p.wait_for_line("ready", Duration::from_secs(10))
        .expect("lab-server ready");
    p
}

/// A lab-server's counters (it prints them as a JSON line on SIGUSR1).
pub fn server_counters(p: &mut Process) -> bench::server::ServerCounters {
    p.signal(lab::Signal::SIGUSR1).expect("SIGUSR1");
    let line = p
        .wait_for_line("{", Duration::from_secs(5))
        .expect("counters line");
    serde_json::from_str(&line).expect("counters JSON")
}

/// The data path, attached to the node's uplink, redirecting to the pod links.
pub fn dataplane(lab: &Lab) -> Dataplane {
    dataplane_with(lab, DataplaneConfig::default())
}

/// [`dataplane`] with a given configuration.
pub fn dataplane_with(lab: &Lab, cfg: DataplaneConfig) -> Dataplane {
    let uplink = lab.node_uplink();
    let pod_links: Vec<String> = (0..lab.backends().len())
        .map(|i| lab.node_pod_link(i))
        .collect();
    lab.node()
        .enter(|| {
            let mut cfg = cfg;
            cfg.ingress_mode = ingress_mode();
            let mut dp = Dataplane::load(cfg).expect("load");
            assert_mode(dp.attach(uplink).expect("attach"));
            for l in &pod_links {
                dp.allow_redirect(l).expect("redirect port");
            }
            dp
        })
        .expect("enter node")
}

pub fn load_from_client(
    lab: &Lab,
    target: SocketAddr,
    protocol: LoadProtocol,
    mode: ConnectionMode,
    requests: u64,
    concurrency: usize,
) -> Report {
    let mut cfg = load::Config::new(target, protocol);
    cfg.mode = mode;
    cfg.max_requests = requests;
    cfg.concurrency = concurrency;
    cfg.max_duration = Duration::from_secs(60);
    lab.client()
        .enter(|| load::run_blocking(cfg))
        .expect("enter client")
        .expect("load run")
}

/// HTTP load from the client namespace on a thread of its own: 300 requests/s, bounded by
/// `secs` (and 100 000 requests); join the handle for the report.
pub fn background_load(
    lab: &Lab,
    target: SocketAddr,
    mode: ConnectionMode,
    concurrency: usize,
    secs: u64,
) -> std::thread::JoinHandle<lab::Result<load::Report>> {
    let mut cfg = load::Config::new(target, LoadProtocol::http("/"));
    cfg.mode = mode;
    cfg.concurrency = concurrency;
    cfg.rate = Some(300.0);
    cfg.max_requests = 100_000;
    cfg.max_duration = Duration::from_secs(secs);
    lab.client()
        .thread(move || load::run_blocking(cfg).expect("load run"))
        .expect("client thread")
}

/// The `sluice` binary next to this test's target directory (cargo xtask test builds it).
pub fn sluice_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("sluice");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p sluice` (cargo xtask test does)",
        bin.display()
    );
    bin
}

/// Sends one UDP datagram of `size` bytes from `client` to `target`, which a one-shot echo
/// bound to `echo_at` inside `pod` returns; checks that both directions arrive whole and
/// that the reply comes from `target`. Datagrams above the links' MTU travel as fragments.
pub fn udp_echo_through(
    client: &lab::Netns,
    pod: &lab::Netns,
    echo_at: SocketAddr,
    target: SocketAddr,
    size: usize,
) {
    use std::net::UdpSocket;
    let timeout = Duration::from_secs(5);
    let server = pod
        .enter(|| UdpSocket::bind(echo_at))
        .expect("enter pod")
        .expect("bind the echo");
    server.set_read_timeout(Some(timeout)).expect("timeout");
    let echo = std::thread::spawn(move || -> std::io::Result<usize> {
        let mut buf = vec![0u8; 65536];
        let (n, from) = server.recv_from(&mut buf)?;
        server.send_to(&buf[..n], from)?;
        Ok(n)
    });
    let payload: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
    let (reply, from) = client
        .enter(move || -> std::io::Result<(Vec<u8>, SocketAddr)> {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.set_read_timeout(Some(timeout))?;
            s.send_to(&payload, target)?;
            let mut buf = vec![0u8; 65536];
            let (n, from) = s.recv_from(&mut buf)?;
            buf.truncate(n);
            Ok((buf, from))
        })
        .expect("enter client")
        .unwrap_or_else(|e| panic!("UDP datagram of {size} bytes through {target}: {e}"));
    assert_eq!(
        echo.join().expect("echo thread").expect("echo"),
        size,
        "arrived whole"
    );
    assert_eq!(reply.len(), size, "the reply arrived whole");
    assert!(
        reply.iter().enumerate().all(|(i, b)| *b == (i % 253) as u8),
        "the reply's bytes are the request's"
    );
    assert_eq!(
        from, target,
        "the reply comes from the frontend the client dialled"
    );
}

/// A two-node lab (`lab::two_nodes`) with `a` pods on node A and `b` on node B, pass XDP
/// programs on the peers that receive XDP_TX or redirected frames.
pub fn two_node_lab(a: usize, b: usize) -> lab::two_nodes::TwoNodeLab {
    lab::two_nodes::TwoNodeLab::builder()
        .pods(a, b)
        .client_link_defaults(ingress_mode() == IngressMode::Tc)
        .xdp_pass_attacher(|ifname| {
            let p = lb_userspace::PassProgram::attach(ifname)?;
            Ok(Box::new(p) as Box<dyn std::any::Any + Send>)
        })
        .build()
        .expect("two-node lab")
}

/// A node's data path in a two-node lab: small capacities, the same hash seed on every
/// node, attached to `links`, allowed to redirect to `redirect`.
pub fn node_dataplane(
    lab: &lab::two_nodes::TwoNodeLab,
    node: lab::two_nodes::Node,
    links: &[&str],
    redirect: &[String],
) -> Dataplane {
    lab.node(node)
        .enter(|| {
            let mut cfg = DataplaneConfig::default();
            cfg.capacities.services = 64;
            cfg.capacities.frontends = 256;
            cfg.capacities.backends = 256;
            cfg.capacities.slots = 1 << 16;
            cfg.ingress_mode = ingress_mode();
            let mut dp = Dataplane::load(cfg).expect("load");
            dp.set_hash_seed(0x5eed_0012).expect("seed");
            for l in links {
                assert_mode(dp.attach(l).expect("attach"));
            }
            for r in redirect {
                dp.allow_redirect(r).expect("redirect port");
            }
            dp
        })
        .expect("enter node")
}

/// An HTTP request to the agent from inside namespace `ns`, through the agent's own HTTP
/// client: (status, body), `None` when no answer came (not listening yet, refused, cut).
pub fn agent_http(
    ns: &lab::Netns,
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Option<(u16, String)> {
    let addr: SocketAddr = addr.parse().expect("the agent's address");
    let (method, path, body) = (
        method.to_string(),
        path.to_string(),
        body.map(str::to_string),
    );
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    ns.enter(move || {
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        controller::http_client::request(
            addr,
            &method,
            &path,
            &headers,
            body.as_deref().map(str::as_bytes),
            Duration::from_secs(5),
        )
        .ok()
        .map(|r| (r.status, r.text()))
    })
    .ok()
    .flatten()
}

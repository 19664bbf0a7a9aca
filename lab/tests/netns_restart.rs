//! Netns tier, restart and replace: the data path is held by a separate process
//! (`lb-userspace`'s `dataplane_holder` example) with pinned maps and links. Under a bounded
//! load of both connection modes: kill -9 and restart, and a program replacement by link
//! update, each lose no request and keep established connections (the service carries a name
//! of the longest length the controller builds, restored exactly); a clean exit leaves the
//! data path serving; uninstall removes it.

mod common;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use bench::load::{self, ConnectionMode, Protocol as LoadProtocol};
use common::*;
use lab::{Lab, PinDir, Signal, process::Process};
use lb_userspace::{BackendSpec, Frontend, Protocol, ServiceSpec};

const NODE_PORT: u16 = 30080;
const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 30);

fn example_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("examples")
        .join(name);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p lb-userspace --examples` (cargo xtask test does)",
        bin.display()
    );
    bin
}

struct Holder<'a> {
    lab: &'a Lab,
    pins: &'a PinDir,
    spec: PathBuf,
}

impl Holder<'_> {
    fn args(&self) -> Vec<String> {
        vec![
            "--pin-root".into(),
            self.pins.path().display().to_string(),
            "--instance".into(),
            "restart".into(),
        ]
    }

    fn start(&self) -> (Process, String) {
        let mut cmd = Command::new(example_bin("dataplane_holder"));
        cmd.args(self.args())
            .args([
                "--uplink",
                self.lab.node_uplink(),
                "--mode",
                mode_arg(),
                "--spec",
            ])
            .arg(&self.spec);
        for i in 0..self.lab.backends().len() {
            cmd.args(["--redirect", &self.lab.node_pod_link(i)]);
        }
        cmd.env("RUST_LOG", "warn");
        let mut p = self.lab.node().spawn(&cmd).expect("spawn holder");
        let line = p
            .wait_for_line("ready", Duration::from_secs(20))
            .expect("holder ready");
        (p, line)
    }

    fn uninstall(&self) {
        let out = self
            .lab
            .node()
            .command(example_bin("dataplane_holder"))
            .args(self.args())
            .arg("--uninstall")
            .output()
            .expect("run uninstall");
        assert!(
            out.status.success(),
            "uninstall: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn setup(lab: &Lab, pins: &PinDir) -> PathBuf {
    let spec = vec![ServiceSpec {
        // The longest name the controller builds (`namespace/name:port/PROTO/v6/external`,
        // 159 bytes): the restarted process must find the service under it, or it would add
        // a second service on the same frontends and the upsert would fail.
        name: format!(
            "{}/{}:{}/TCP/v6/external",
            "n".repeat(63),
            "s".repeat(63),
            "p".repeat(15)
        ),
        protocol: Protocol::Tcp,
        frontends: vec![
            Frontend::NodePort(NODE_PORT),
            Frontend::Address(SocketAddr::new(VIP.into(), 80)),
        ],
        backends: (0..lab.backends().len())
            .map(|i| {
                BackendSpec::ready(SocketAddr::new(IpAddr::V4(lab.backend_addr(i)), HTTP_PORT))
            })
            .collect(),
        affinity: None,
        ..Default::default()
    }];
    let path = pins.path().with_extension("spec.json");
    let path = std::env::temp_dir().join(path.file_name().expect("name"));
    std::fs::write(&path, serde_json::to_vec(&spec).unwrap()).unwrap();
    path
}

fn loads(lab: &Lab, secs: u64) -> Vec<std::thread::JoinHandle<lab::Result<load::Report>>> {
    // Both loads dial the same frontend: one client port reaching two frontends of a service
    // at once is the reply-tuple clash the README describes.
    [
        (
            SocketAddr::new(VIP.into(), 80),
            ConnectionMode::NewConnectionPerRequest,
            4,
        ),
        (
            SocketAddr::new(VIP.into(), 80),
            ConnectionMode::KeepAlive,
            4,
        ),
    ]
    .into_iter()
    .map(|(target, mode, concurrency)| background_load(lab, target, mode, concurrency, secs))
    .collect()
}

fn finish(handles: Vec<std::thread::JoinHandle<lab::Result<load::Report>>>) {
    for (what, h) in ["new connection", "keep-alive"].into_iter().zip(handles) {
        let r = h.join().unwrap().unwrap();
        println!("{what}: {r}");
        assert!(r.sent > 500, "{what}: {r}");
        assert_eq!(r.failures(), 0, "{what}: {r}");
        // A keep-alive connection that broke would show as a reset/retry.
        assert_eq!(
            r.retried, 0,
            "{what}: established connections survived: {r}"
        );
    }
}

/// The id of the program at the uplink's ingress: XDP's as `ip link` shows it; in TC mode
/// the holder's report (`prog=<id>`), and no XDP program may be on the uplink then.
fn ingress_prog_id(lab: &Lab, ready_line: &str) -> String {
    match ingress_mode() {
        lb_userspace::IngressMode::Tc => {
            assert_eq!(xdp_prog_id(lab), None, "TC mode leaves no XDP program");
            ready_line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("prog="))
                .filter(|id| *id != "0")
                .unwrap_or_else(|| panic!("no program id in {ready_line}"))
                .to_string()
        }
        _ => xdp_prog_id(lab).expect("xdp attached"),
    }
}

fn xdp_prog_id(lab: &Lab) -> Option<String> {
    let out = lab
        .node()
        .run("ip", ["-d", "link", "show", lab.node_uplink()])
        .expect("ip link");
    out.split_whitespace()
        .skip_while(|w| *w != "prog/xdp")
        .nth(2)
        .map(str::to_string)
}

#[test]
fn restart_kill9_keeps_forwarding_and_a_new_process_adopts() {
    let lab = lab(2);
    let _servers = servers(&lab);
    let pins = PinDir::new("restart").unwrap();
    let holder = Holder {
        lab: &lab,
        pins: &pins,
        spec: setup(&lab, &pins),
    };
    let (mut first, line) = holder.start();
    let fresh = match ingress_mode() {
        lb_userspace::IngressMode::Tc => "ready Tc ",
        _ => "ready Native ",
    };
    assert!(line.contains(fresh), "{line}");
    let load = loads(&lab, 8);
    std::thread::sleep(Duration::from_secs(2));
    first.signal(Signal::SIGKILL).unwrap();
    let status = first
        .wait_timeout(Duration::from_secs(5))
        .unwrap()
        .expect("the killed holder exited within 5 s");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(Signal::SIGKILL as i32),
        "{status}"
    );
    // Nobody holds the data path now; it keeps forwarding from the pins.
    std::thread::sleep(Duration::from_millis(1500));
    let (_second, line) = holder.start();
    assert!(
        line.contains("Adopted") && line.contains("services=1"),
        "{line}"
    );
    finish(load);
    lab.assert_no_checksum_errors();
    holder.uninstall();
}

#[test]
fn replace_programs_by_link_update_then_clean_exit_and_uninstall() {
    let lab = lab(2);
    let _servers = servers(&lab);
    let pins = PinDir::new("replace").unwrap();
    let holder = Holder {
        lab: &lab,
        pins: &pins,
        spec: setup(&lab, &pins),
    };
    let (mut first, line) = holder.start();
    let old_prog = ingress_prog_id(&lab, &line);
    let load = loads(&lab, 6);
    std::thread::sleep(Duration::from_secs(2));
    // A new process loads its own programs and swaps them in while traffic flows.
    let (mut second, line) = holder.start();
    assert!(line.contains("Adopted"), "{line}");
    let new_prog = ingress_prog_id(&lab, &line);
    assert_ne!(old_prog, new_prog, "the program on the uplink was replaced");
    first.signal(Signal::SIGTERM).unwrap();
    assert!(
        first
            .wait_timeout(Duration::from_secs(5))
            .unwrap()
            .is_some_and(|s| s.success())
    );
    finish(load);

    // A clean shutdown leaves the data path serving.
    second.signal(Signal::SIGTERM).unwrap();
    assert!(
        second
            .wait_timeout(Duration::from_secs(5))
            .unwrap()
            .is_some_and(|s| s.success())
    );
    let node_port = SocketAddr::new(lab.node_addr().into(), NODE_PORT);
    let r = load_from_client(
        &lab,
        node_port,
        LoadProtocol::http("/"),
        ConnectionMode::NewConnectionPerRequest,
        20,
        2,
    );
    assert_eq!(r.outcomes.ok, 20, "served with no process running: {r}");

    // Uninstall removes links and pins: the NodePort is gone.
    holder.uninstall();
    assert_eq!(xdp_prog_id(&lab), None, "XDP detached");
    let r = load_from_client(
        &lab,
        node_port,
        LoadProtocol::http("/"),
        ConnectionMode::NewConnectionPerRequest,
        5,
        1,
    );
    assert_eq!(r.outcomes.refused, 5, "{r}");
    lab.assert_no_checksum_errors();
}

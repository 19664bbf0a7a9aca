//! The `lab-server` binary on 127.0.0.1: readiness line, answers, counters on SIGUSR1 and at
//! exit, and the SIGTERM drain.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bench::load::{self, Config, Protocol};
use bench::server::ServerCounters;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
const WAIT: Duration = Duration::from_secs(10);

/// A running lab-server, killed if the test ends before it exits.
struct LabServer {
    child: Child,
    lines: mpsc::Receiver<String>,
    http: SocketAddr,
    tcp: SocketAddr,
    udp: SocketAddr,
}

impl LabServer {
    fn start(name: &str, extra: &[&str]) -> Self {
        // Port 0 end to end: the server binds ports of the kernel's choice and names them.
        let mut child = Command::new(env!("CARGO_BIN_EXE_lab-server"))
            .args(["--name", name, "--bind", "127.0.0.1"])
            .args(["--http", "0", "--tcp", "0", "--udp", "0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn lab-server");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let ready = lines.recv_timeout(WAIT).expect("a line from lab-server");
        let bound: serde_json::Value = ready
            .strip_prefix("ready ")
            .and_then(|json| serde_json::from_str(json).ok())
            .unwrap_or_else(|| panic!("not a ready line with the bound addresses: {ready:?}"));
        let addr = |kind: &str| -> SocketAddr {
            let addrs = bound[kind].as_array().expect("a list of addresses");
            assert_eq!(addrs.len(), 1, "{bound}");
            let addr: SocketAddr = addrs[0].as_str().unwrap().parse().unwrap();
            assert!(addr.ip() == LOCALHOST && addr.port() != 0, "{bound}");
            addr
        };
        Self {
            http: addr("http"),
            tcp: addr("tcp"),
            udp: addr("udp"),
            child,
            lines,
        }
    }

    fn line(&self) -> String {
        self.lines
            .recv_timeout(WAIT)
            .expect("a line from lab-server")
    }

    fn counters(&self) -> ServerCounters {
        serde_json::from_str(&self.line()).expect("a JSON counters line")
    }

    fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        kill(pid, signal).unwrap();
    }

    /// Waits for the exit; true if it exited 0.
    fn wait(&mut self) -> bool {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("lab-server did not exit");
    }

    /// Waits until new connections are refused: the server is draining.
    fn wait_until_refusing(&self) {
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(self.http).is_ok() {
            assert!(Instant::now() < deadline, "lab-server keeps accepting");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for LabServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends a GET on `stream` and reads one response (head and Content-Length body).
fn get(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: lab\r\n\r\n")
        .unwrap();
    let mut response = Vec::new();
    let mut byte = [0];
    while !response.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        response.push(byte[0]);
    }
    let head = String::from_utf8(response).unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap()
        .parse()
        .unwrap();
    let mut body = vec![0; length];
    stream.read_exact(&mut body).unwrap();
    head + std::str::from_utf8(&body).unwrap()
}

fn load(target: SocketAddr, protocol: Protocol, requests: u64) -> load::Report {
    let mut cfg = Config::new(target, protocol);
    cfg.concurrency = 4;
    cfg.max_requests = requests;
    load::run_blocking(cfg).unwrap()
}

#[test]
fn serves_counts_and_drains_on_sigterm() {
    let mut server = LabServer::start("beta", &[]);

    let report = load(server.http, Protocol::http("/"), 100);
    assert_eq!(report.outcomes.ok, 100, "{report}");
    assert_eq!(report.responders.get("beta"), Some(&100));
    let report = load(
        server.tcp,
        Protocol::tcp("ping", Some("beta:ping".len())),
        20,
    );
    assert_eq!(report.responders.get("beta:ping"), Some(&20), "{report}");
    let report = load(server.udp, Protocol::udp("ping"), 20);
    assert_eq!(report.responders.get("beta:ping"), Some(&20), "{report}");

    server.signal(Signal::SIGUSR1);
    let counters = server.counters();
    assert_eq!(counters.name, "beta");
    assert_eq!(
        (
            counters.http_requests,
            counters.tcp_requests,
            counters.udp_requests
        ),
        (100, 20, 20)
    );
    assert!((1..=4).contains(&counters.http_connections), "{counters:?}");
    assert!((1..=4).contains(&counters.tcp_connections), "{counters:?}");

    // A keep-alive connection, idle when the drain starts, gets its next answer with
    // `Connection: close`, and then the server closes it.
    let mut idle = TcpStream::connect(server.http).unwrap();
    let first = get(&mut idle);
    assert!(first.starts_with("HTTP/1.1 200 OK\r\n") && first.ends_with("\r\n\r\nbeta\n"));
    assert!(!first.contains("Connection: close"));
    server.signal(Signal::SIGTERM);
    server.wait_until_refusing();
    let last = get(&mut idle);
    assert!(
        last.contains("\r\nConnection: close\r\n") && last.ends_with("\r\n\r\nbeta\n"),
        "{last}"
    );
    let mut rest = Vec::new();
    assert_eq!(
        idle.read_to_end(&mut rest).unwrap(),
        0,
        "closed after the answer"
    );
    drop(idle);

    assert!(server.wait(), "lab-server exits 0 after the drain");
    let counters = server.counters();
    assert_eq!(counters.http_requests, 102, "{counters:?}");
}

#[test]
fn drain_gives_up_on_idle_connections_after_the_timeout() {
    let mut server = LabServer::start("gamma", &["--drain-timeout", "0.3"]);
    let mut idle = TcpStream::connect(server.http).unwrap();
    get(&mut idle);
    let started = Instant::now();
    server.signal(Signal::SIGTERM);
    assert!(server.wait());
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    let mut rest = Vec::new();
    assert_eq!(idle.read_to_end(&mut rest).unwrap_or(0), 0);
    assert_eq!(server.counters().http_requests, 1);
}

#[test]
fn exits_at_once_without_connections() {
    let mut server = LabServer::start("delta", &[]);
    let started = Instant::now();
    server.signal(Signal::SIGTERM);
    assert!(server.wait());
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        server.counters(),
        ServerCounters {
            name: "delta".into(),
            ..Default::default()
        }
    );
}

#[test]
fn invalid_arguments_fail() {
    let status = Command::new(env!("CARGO_BIN_EXE_lab-server"))
        .args(["--name", "x"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2), "no port given");
}

#[test]
fn sluice_load_prints_a_json_report_or_a_summary() {
    let server = LabServer::start("epsilon", &[]);
    let target = server.http.to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_sluice-load"))
        .args([
            &target,
            "-n",
            "30",
            "-c",
            "3",
            "--mode",
            "new-connection",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(output.status.success());
    let report: load::Report = serde_json::from_slice(&output.stdout).expect("one JSON report");
    assert_eq!(report.outcomes.ok, 30, "{report}");
    assert_eq!(report.responders.get("epsilon"), Some(&30));

    let udp = server.udp.to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_sluice-load"))
        .args([&udp, "--protocol", "udp", "-n", "5", "--payload", "hi"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let summary = String::from_utf8(output.stdout).unwrap();
    assert!(
        summary.starts_with("5 requests in ") && summary.contains("\"epsilon:hi\" 5"),
        "{summary}"
    );

    // Failures are the caller's to judge: still exit 0.
    // A port this test holds bound without listening (no other test can listen there), which
    // the kernel refuses.
    let refusing = tokio::net::TcpSocket::new_v4().unwrap();
    refusing.bind((LOCALHOST, 0).into()).unwrap();
    let closed = refusing.local_addr().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_sluice-load"))
        .args([&closed.to_string(), "-n", "2"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());

    let status = Command::new(env!("CARGO_BIN_EXE_sluice-load"))
        .args([&target, "--rate", "0"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2), "invalid arguments");
}

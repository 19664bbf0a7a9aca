//! Tests of the lab fixture itself. They need root (network namespaces, veth, bpffs), like the
//! rest of the netns tier.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lab::capture::Capture;
use lab::netns::{self, Netns};
use lab::packet::{ParsedPacket, Transport, verify_checksums};
use lab::{Lab, PinDir, Signal};

const TIMEOUT: Duration = Duration::from_secs(5);

/// A TCP echo-style exchange: a listener in pod `i`, a connection from the client namespace.
fn tcp_exchange(lab: &Lab, i: usize, addr: IpAddr) {
    let listener = lab
        .backend(i)
        .enter(|| TcpListener::bind(SocketAddr::new(addr, 8080)))
        .unwrap()
        .unwrap_or_else(|e| panic!("bind {addr}:8080 in pod {i}: {e}"));
    let server = std::thread::spawn(move || -> std::io::Result<SocketAddr> {
        let (mut conn, peer) = listener.accept()?;
        conn.set_read_timeout(Some(TIMEOUT))?;
        let mut request = String::new();
        conn.read_to_string(&mut request)?;
        assert_eq!(request, "hello pod");
        conn.write_all(format!("hello client from pod {i}").as_bytes())?;
        Ok(peer)
    });
    let reply = lab
        .client()
        .enter(|| -> std::io::Result<String> {
            let mut stream = TcpStream::connect_timeout(&SocketAddr::new(addr, 8080), TIMEOUT)?;
            stream.set_read_timeout(Some(TIMEOUT))?;
            stream.write_all(b"hello pod")?;
            stream.shutdown(Shutdown::Write)?;
            let mut reply = String::new();
            stream.read_to_string(&mut reply)?;
            Ok(reply)
        })
        .unwrap()
        .unwrap_or_else(|e| panic!("TCP to {addr}:8080 from the client: {e}"));
    assert_eq!(reply, format!("hello client from pod {i}"));
    let peer = server.join().unwrap().unwrap();
    let client_addr: IpAddr = match addr {
        IpAddr::V4(_) => lab.client_addr().into(),
        IpAddr::V6(_) => lab.client_addr6().into(),
    };
    assert_eq!(
        peer.ip(),
        client_addr,
        "routed, not translated: the pod sees the client"
    );
}

/// A UDP request/response between the client namespace and pod `i`.
fn udp_exchange(lab: &Lab, i: usize, addr: IpAddr) {
    let server = lab
        .backend(i)
        .enter(|| UdpSocket::bind(SocketAddr::new(addr, 5353)))
        .unwrap()
        .unwrap();
    server.set_read_timeout(Some(TIMEOUT)).unwrap();
    let unspecified: IpAddr = match addr {
        IpAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    };
    let client = lab
        .client()
        .enter(|| UdpSocket::bind(SocketAddr::new(unspecified, 0)))
        .unwrap()
        .unwrap();
    client.set_read_timeout(Some(TIMEOUT)).unwrap();
    client
        .send_to(b"question", SocketAddr::new(addr, 5353))
        .unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = server.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"question");
    server
        .send_to(format!("answer {i}").as_bytes(), from)
        .unwrap();
    let (n, reply_from) = client.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], format!("answer {i}").as_bytes());
    assert_eq!(reply_from, SocketAddr::new(addr, 5353));
}

#[test]
fn tcp_and_udp_are_routed_through_the_node() {
    let lab = Lab::builder().backends(2).build().unwrap();
    assert!(!lab.has_xdp_stubs());
    // Everything the pods send back crosses the client link; check it byte by byte.
    let capture = Capture::open(lab.client(), lab.client_link()).unwrap();

    for i in 0..2 {
        tcp_exchange(&lab, i, lab.backend_addr(i).into());
        tcp_exchange(&lab, i, lab.backend_addr6(i).into());
        udp_exchange(&lab, i, lab.backend_addr(i).into());
        udp_exchange(&lab, i, lab.backend_addr6(i).into());
    }

    let frames = capture.collect(Duration::from_millis(300)).unwrap();
    let mut checked = 0;
    for frame in frames.iter().filter(|f| !f.is_outgoing()) {
        let parsed = ParsedPacket::parse(&frame.data).unwrap();
        if !matches!(
            parsed.transport,
            Some(Transport::Tcp(_) | Transport::Udp(_))
        ) {
            continue;
        }
        verify_checksums(&frame.data)
            .unwrap_or_else(|e| panic!("frame from {:?}: {e}", parsed.src_ip()));
        assert_eq!(parsed.dst_mac(), Some(lab.client_mac()));
        assert_eq!(parsed.src_mac(), Some(lab.node_uplink_mac()));
        checked += 1;
    }
    // Per pod and family: SYN-ACK, data, FIN/ACKs and the UDP answer.
    assert!(checked >= 16, "only {checked} TCP/UDP frames captured");

    let counters = lab.checksum_counters().unwrap();
    for ns in lab.namespaces() {
        for counter in ["TcpInCsumErrors", "UdpInCsumErrors", "Udp6InCsumErrors"] {
            assert!(
                counters
                    .iter()
                    .any(|(n, c, _)| n == ns.name() && c == counter),
                "{counter} of {} missing from {counters:?}",
                ns.name()
            );
        }
    }
    lab.assert_no_checksum_errors();
    assert!(lab.checksum_errors().is_empty());
}

#[test]
fn node_and_links_are_prepared_for_xdp() {
    let lab = Lab::builder().backends(2).build().unwrap();
    let node = lab.node();
    assert_eq!(node.read_sysctl("net.ipv4.ip_forward").unwrap(), "1");
    assert_eq!(
        node.read_sysctl("net.ipv6.conf.all.forwarding").unwrap(),
        "1"
    );
    assert_eq!(
        node.read_sysctl("net.ipv4.conf.all.rp_filter").unwrap(),
        "0"
    );
    assert_eq!(
        node.read_sysctl(&format!("net.ipv4.conf.{}.rp_filter", lab.node_uplink()))
            .unwrap(),
        "0"
    );
    assert_eq!(
        lab.client()
            .read_sysctl("net.ipv4.ip_local_port_range")
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["1024", "65535"]
    );
    for pod in lab.backends() {
        assert_eq!(pod.read_sysctl("net.ipv4.tcp_max_tw_buckets").unwrap(), "0");
    }

    let features = |ns: &Netns, ifname: &str| ns.run("ethtool", ["-k", ifname]).unwrap();
    let mut ends = vec![
        (lab.client(), lab.client_link().to_owned()),
        (lab.node(), lab.node_uplink().to_owned()),
    ];
    for i in 0..2 {
        ends.push((lab.node(), lab.node_pod_link(i)));
        ends.push((lab.backend(i), lab.pod_link(i).to_owned()));
    }
    for (ns, ifname) in &ends {
        assert!(
            features(ns, ifname).contains("tx-checksumming: off"),
            "TX checksum offload on at {ifname} in {}",
            ns.name()
        );
    }
    for i in 0..2 {
        // Without an XDP hook, GRO gives the pods' ends NAPI for redirected frames.
        assert!(features(lab.backend(i), lab.pod_link(i)).contains("generic-receive-offload: on"));
        // Neighbours are resolved for bpf_fib_lookup before any traffic.
        let neigh = node
            .run("ip", ["neigh", "show", "dev", &lab.node_pod_link(i)])
            .unwrap();
        assert!(
            neigh.contains(&lab.backend_addr(i).to_string()) && neigh.contains("PERMANENT"),
            "{neigh}"
        );
        assert!(neigh.contains(&lab.pod_mac(i).to_string()), "{neigh}");
    }
    let neigh = node
        .run("ip", ["neigh", "show", "dev", lab.node_uplink()])
        .unwrap();
    assert!(neigh.contains(&lab.client_mac().to_string()) && neigh.contains("PERMANENT"));
    assert!(lab.node_uplink_ifindex().unwrap() > 1);
}

fn exists_now(names: &[String]) -> Vec<&String> {
    names.iter().filter(|n| netns::exists(n)).collect()
}

#[test]
fn namespaces_are_removed_on_drop() {
    let lab = Lab::builder().backends(2).build().unwrap();
    let names: Vec<String> = lab
        .namespaces()
        .iter()
        .map(|n| n.name().to_owned())
        .collect();
    assert_eq!(names.len(), 4);
    assert_eq!(exists_now(&names).len(), 4);
    drop(lab);
    assert!(
        exists_now(&names).is_empty(),
        "left behind: {:?}",
        exists_now(&names)
    );
}

#[test]
fn namespaces_are_removed_after_a_panic() {
    let names = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&names);
    let result = std::panic::catch_unwind(move || {
        let lab = Lab::builder().backends(1).build().unwrap();
        seen.lock()
            .unwrap()
            .extend(lab.namespaces().iter().map(|n| n.name().to_owned()));
        // The panic happens on the namespace thread and is resumed here.
        lab.backend(0)
            .enter(|| panic!("boom inside the pod"))
            .unwrap();
    });
    let payload = result.expect_err("the closure panicked");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"boom inside the pod"));
    let names = names.lock().unwrap().clone();
    assert_eq!(names.len(), 3);
    assert!(
        exists_now(&names).is_empty(),
        "left behind: {:?}",
        exists_now(&names)
    );
}

/// The name of the namespace the current thread is in, found by inode under /run/netns.
fn current_netns_name() -> Option<String> {
    let here = current_netns_inode();
    std::fs::read_dir(netns::NETNS_RUN_DIR)
        .ok()?
        .filter_map(Result::ok)
        .find(|e| std::fs::metadata(e.path()).is_ok_and(|m| m.ino() == here))
        .map(|e| e.file_name().to_string_lossy().into_owned())
}

#[test]
fn build_failures_leave_nothing_behind() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    // Succeeds for the client, then fails for the first pod.
    let err = Lab::builder()
        .backends(1)
        .xdp_pass_attacher(move |ifname| {
            log.lock().unwrap().push(current_netns_name().unwrap());
            if ifname == "eth0" {
                return Err(format!("no XDP for {ifname} today").into());
            }
            Ok(Box::new(()))
        })
        .build()
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("no XDP for eth0 today"),
        "{err:#}"
    );
    let names = seen.lock().unwrap().clone();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        exists_now(&names).is_empty(),
        "left behind: {:?}",
        exists_now(&names)
    );

    let err = Lab::builder()
        .backends(lab::topology::MAX_BACKENDS + 1)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("at most 64 pods"), "{err}");
}

/// The guard an XDP hook returns in the hook test: records where it is dropped.
struct FakeXdp {
    ifname: String,
    attached_in: u64,
    log: Arc<Mutex<Vec<(String, u64, bool)>>>,
}

fn current_netns_inode() -> u64 {
    std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino()
}

impl Drop for FakeXdp {
    fn drop(&mut self) {
        let here = current_netns_inode();
        // The namespace handle must still exist while the guard goes.
        let handle_exists = current_netns_name().is_some();
        assert_eq!(here, self.attached_in, "dropped in another namespace");
        self.log
            .lock()
            .unwrap()
            .push((self.ifname.clone(), here, handle_exists));
    }
}

#[test]
fn xdp_hook_runs_in_each_receiving_namespace() {
    let attached = Arc::new(Mutex::new(Vec::new()));
    let dropped = Arc::new(Mutex::new(Vec::new()));
    let (att, drp) = (Arc::clone(&attached), Arc::clone(&dropped));
    let lab = Lab::builder()
        .backends(2)
        .xdp_pass_attacher(move |ifname| {
            let here = current_netns_inode();
            // The interface must be visible from the hook's thread.
            nix::net::if_::if_nametoindex(ifname)?;
            att.lock().unwrap().push((ifname.to_owned(), here));
            Ok(Box::new(FakeXdp {
                ifname: ifname.to_owned(),
                attached_in: here,
                log: Arc::clone(&drp),
            }))
        })
        .build()
        .unwrap();
    assert!(lab.has_xdp_stubs());
    let ino = |ns: &Netns| std::fs::metadata(ns.path()).unwrap().ino();
    let expected = vec![
        (lab.client_link().to_owned(), ino(lab.client())),
        (lab.pod_link(0).to_owned(), ino(lab.backend(0))),
        (lab.pod_link(1).to_owned(), ino(lab.backend(1))),
    ];
    assert_eq!(*attached.lock().unwrap(), expected);
    // With stubs, GRO is left alone (off by default on veth).
    let features = lab.backend(0).run("ethtool", ["-k", "eth0"]).unwrap();
    assert!(features.contains("generic-receive-offload: off"));
    drop(lab);
    let dropped = dropped.lock().unwrap().clone();
    assert_eq!(dropped.len(), 3);
    for (ifname, inode, handle_existed) in dropped {
        assert!(
            handle_existed,
            "{ifname}: the namespace was gone before its XDP guard"
        );
        assert!(expected.contains(&(ifname, inode)));
    }
}

#[test]
fn enter_changes_only_the_network_namespace() {
    let ns = Netns::new("t").unwrap();
    let outside = current_netns_inode();
    let inside = ns
        .enter(|| {
            netns::ensure_current_is(&ns).unwrap();
            // The mount namespace is the caller's: /run/netns is visible from inside.
            assert!(ns.path().exists());
            current_netns_inode()
        })
        .unwrap();
    assert_ne!(inside, outside);
    assert_eq!(
        current_netns_inode(),
        outside,
        "the caller's thread did not move"
    );
    assert!(netns::ensure_current_is(&ns).is_err());

    // Only loopback, and it is up.
    let links = ns.run("ip", ["-o", "link", "show"]).unwrap();
    assert_eq!(links.lines().count(), 1, "{links}");
    assert!(links.contains("lo:") && links.contains("UP"), "{links}");

    let err = ns
        .run("ip", ["link", "show", "dev", "nonexistent0"])
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("nonexistent0") && msg.contains(ns.name()),
        "{msg}"
    );

    ns.sysctl("net.ipv4.ip_forward", "1").unwrap();
    assert_eq!(ns.read_sysctl("net.ipv4.ip_forward").unwrap(), "1");

    let handle = ns.thread(current_netns_inode).unwrap();
    assert_eq!(handle.join().unwrap().unwrap(), inside);
    let name = ns.name().to_owned();
    drop(ns);
    assert!(!netns::exists(&name));
}

#[test]
fn processes_run_in_the_namespace_and_stop_on_drop() {
    let ns = Netns::new("proc").unwrap();
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "echo starting; readlink /proc/self/ns/net; echo ready; exec sleep 30",
    ]);
    let mut process = ns.spawn(&cmd).unwrap();
    let pid = process.pid();
    process.wait_for_line("ready", TIMEOUT).unwrap();
    let ns_inode = std::fs::metadata(ns.path()).unwrap().ino();
    // The lines before "ready" were consumed; the namespace line was among them.
    assert!(process.drain_lines().is_empty());
    assert!(process.is_running());

    let mut cmd = Command::new("readlink");
    cmd.arg("/proc/self/ns/net");
    let mut probe = ns.spawn(&cmd).unwrap();
    let line = probe.next_line(TIMEOUT).unwrap().unwrap();
    assert_eq!(line, format!("net:[{ns_inode}]"));

    let started = Instant::now();
    drop(process);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "sleep stops on SIGTERM"
    );
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn processes_ignoring_sigterm_are_killed() {
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "trap '' TERM; echo ready; while :; do sleep 0.1; done",
    ]);
    let mut process = lab::Process::spawn(cmd).unwrap();
    process.wait_for_line("ready", TIMEOUT).unwrap();
    process.signal(Signal::SIGTERM).unwrap();
    assert!(
        process
            .wait_timeout(Duration::from_millis(300))
            .unwrap()
            .is_none()
    );
    let started = Instant::now();
    let status = process.terminate().unwrap();
    assert!(started.elapsed() >= lab::process::TERM_GRACE);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
}

#[test]
fn wait_for_line_reports_an_early_exit() {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo one; echo two; exit 3"]);
    let mut process = lab::Process::spawn(cmd).unwrap();
    let err = process.wait_for_line("ready", TIMEOUT).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("exit status: 3") && msg.contains("two"),
        "{msg}"
    );
}

#[test]
fn pin_dirs_are_unique_and_removed() {
    let a = PinDir::new("fixture").unwrap();
    let b = PinDir::new("fixture").unwrap();
    assert_ne!(a.path(), b.path());
    assert!(a.path().starts_with(lab::pin::TEST_ROOT));
    let stat = nix::sys::statfs::statfs(a.path()).unwrap();
    assert_eq!(stat.filesystem_type(), nix::sys::statfs::BPF_FS_MAGIC);
    std::fs::create_dir(a.join("sub")).unwrap();
    let path = a.path().to_owned();
    drop(a);
    assert!(!path.exists());
    assert!(b.path().exists());
}

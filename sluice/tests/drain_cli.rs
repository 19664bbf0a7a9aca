//! The preStop hook of `deploy/examples/drain-prestop.yaml`, run as the kubelet runs it: the
//! command as written (no shell, no `$(VAR)` expansion) with the container's environment
//! (the downward API's values, then `$(VAR)` expanded in env values), against a fake agent
//! on a listener of the test's own. It pins down that the example's command and variables
//! are the ones the CLI reads.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use serde_yaml::Value;

const POD_IP: &str = "198.51.100.31";
const HOST_IP: &str = "127.0.0.1";

/// The example's web container.
fn container() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/examples/drain-prestop.yaml"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let deployment = text
        .split("\n---\n")
        .map(|d| serde_yaml::from_str::<Value>(d).unwrap())
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment");
    deployment["spec"]["template"]["spec"]["containers"][0].clone()
}

/// The container's environment as the kubelet builds it, in order.
fn environment(c: &Value) -> BTreeMap<String, String> {
    let mut env = BTreeMap::<String, String>::new();
    for e in c["env"].as_sequence().unwrap() {
        let name = e["name"].as_str().unwrap().to_string();
        let value = match (
            e["value"].as_str(),
            e["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        ) {
            (Some(v), _) => env
                .iter()
                .fold(v.to_string(), |v, (k, x)| v.replace(&format!("$({k})"), x)),
            (None, Some("status.podIP")) => POD_IP.into(),
            (None, Some("status.hostIP")) => HOST_IP.into(),
            other => panic!("env {name}: {other:?} is not simulated here"),
        };
        env.insert(name, value);
    }
    env
}

/// Kills the child if the test fails before it exited.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Answers `answers` requests, one per connection, sending each request's path.
fn fake_agent(listener: TcpListener, answers: usize, paths: mpsc::Sender<String>) {
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(answers) {
            let mut conn = conn.unwrap();
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let path = line
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_string();
            // The rest of the head.
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
            }
            let body = if path == "/sluice/v1/peers" {
                format!(
                    r#"{{"service":"kube-system/sluice-agents","peers":[{{"node":"node-1","address":"{addr}"}}]}}"#
                )
            } else {
                format!(
                    r#"{{"ip":"{POD_IP}","selectable":false,"flows":null,"items":[{{"service":"default/web:http/TCP","backend":"{POD_IP}:8080","state":"ServingTerminating","selectable":false,"flows":null}}]}}"#
                )
            };
            write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            let _ = paths.send(path);
        }
    });
}

#[test]
fn the_example_pre_stop_hook_asks_the_local_agent_for_peers_then_each_peer_for_the_pod() {
    let c = container();
    let command: Vec<String> = c["lifecycle"]["preStop"]["exec"]["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let mut env = environment(&c);

    // The example names the agents' port; the test's fake agent listens elsewhere.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let fake: SocketAddr = listener.local_addr().unwrap();
    let api = env.get_mut("SLUICE_API").expect("SLUICE_API");
    let (host, _port) = api.rsplit_once(':').expect("host:port");
    assert_eq!(host, HOST_IP, "the local agent is this node's");
    *api = fake.to_string();

    let (tx, paths) = mpsc::channel();
    fake_agent(listener, 2, tx);
    let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(&command[1..])
        .env_clear()
        .envs(&env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut running = Running(child);

    let wait = Duration::from_secs(20);
    assert_eq!(paths.recv_timeout(wait).unwrap(), "/sluice/v1/peers");
    assert_eq!(
        paths.recv_timeout(wait).unwrap(),
        format!("/sluice/v1/dataplane/endpoints/{POD_IP}?flows=false")
    );
    let status = running.0.wait().unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(running.0.stdout.as_mut().unwrap(), &mut out).unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(running.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{status}: {err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("node-1") && l.contains(&fake.to_string())),
        "{out}"
    );
}

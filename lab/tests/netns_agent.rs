//! Netns tier, the agent end to end: `sluice run` attached to the lab node's uplink, fed by
//! a YAML directory and the HTTP API, moving real traffic; killed with kill -9 and restarted
//! under a bounded request loop without losing a request; metrics scraped and parsed.

mod common;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use bench::load::{self, ConnectionMode, Protocol as LoadProtocol};
use common::*;
use lab::{Lab, PinDir, Signal, process::Process};

const API: &str = "127.0.0.1:10260";
const METRICS: &str = "127.0.0.1:10249";
const TOKEN: &str = "0123456789abcdef-token";

struct Agent<'a> {
    lab: &'a Lab,
    dir: PathBuf,
    pins: &'a PinDir,
}

impl Agent<'_> {
    fn start(&self) -> Process {
        let mut cmd = Command::new(sluice_bin());
        cmd.args([
            "run",
            "--mode",
            mode_arg(),
            "--interface",
            self.lab.node_uplink(),
            "--api-listen",
            API,
            "--metrics-listen",
            METRICS,
        ])
        .arg("--manifests")
        .arg(self.dir.join("manifests"))
        .arg("--token-file")
        .arg(self.dir.join("token"))
        .arg("--pin-root")
        .arg(self.pins.path())
        .arg("--state-dir")
        .arg(self.dir.join("state"))
        .args(["--instance", "agent"]);
        for i in 0..self.lab.backends().len() {
            cmd.args(["--redirect", &self.lab.node_pod_link(i)]);
        }
        cmd.env("RUST_LOG", "warn");
        let p = self.lab.node().spawn(&cmd).expect("spawn sluice");
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.get("/readyz").map(|(s, _)| s) != Some(200) {
            assert!(Instant::now() < deadline, "sluice never became ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    /// An HTTP request to the agent from inside the node namespace: (status, body).
    fn http(
        &self,
        method: &str,
        addr: &str,
        path: &str,
        body: Option<&str>,
    ) -> Option<(u16, String)> {
        let auth = format!("Bearer {TOKEN}");
        common::agent_http(
            self.lab.node(),
            addr,
            method,
            path,
            &[
                ("Authorization", auth.as_str()),
                ("Content-Type", "application/json"),
            ],
            body,
        )
    }

    fn get(&self, path: &str) -> Option<(u16, String)> {
        self.http("GET", METRICS, path, None)
    }
}

fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

fn manifests(lab: &Lab, pods: &[usize]) -> String {
    let eps: String = pods
        .iter()
        .map(|&i| format!("- addresses: [{}]\n  conditions: {{ready: true}}\n  targetRef: {{kind: Pod, name: web-5d8f7-p{i}}}\n", lab.backend_addr(i)))
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  type: LoadBalancer\n  ports: [{{port: 80, nodePort: 30080}}]\nstatus:\n  loadBalancer:\n    ingress: [{{ip: 203.0.113.40}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  labels: {{kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{{port: {HTTP_PORT}}}]\nendpoints:\n{eps}"
    )
}

/// Responders of `n` new connections to the NodePort.
fn who_answers(lab: &Lab, port: u16, n: u64) -> load::Report {
    load_from_client(
        lab,
        SocketAddr::new(lab.node_addr().into(), port),
        LoadProtocol::http("/"),
        ConnectionMode::NewConnectionPerRequest,
        n,
        2,
    )
}

fn wait_for<F: FnMut() -> bool>(what: &str, mut f: F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn metric(text: &str, name: &str, label: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(name) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn agent_yaml_and_api_move_traffic_survive_kill9_and_export_metrics() {
    let lab = lab(2);
    let _servers = servers(&lab);
    let pins = PinDir::new("agent").unwrap();
    let dir = std::env::temp_dir().join(format!("sluice-agent-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("manifests")).unwrap();
    std::fs::write(dir.join("token"), TOKEN).unwrap();
    write(&dir.join("manifests/web.yaml"), &manifests(&lab, &[0]));
    let agent = Agent {
        lab: &lab,
        dir: dir.clone(),
        pins: &pins,
    };
    let mut sluice = agent.start();

    // YAML: one ready pod, then two.
    let r = who_answers(&lab, 30080, 40);
    assert_eq!(
        (
            r.outcomes.ok,
            r.responders.keys().cloned().collect::<Vec<_>>()
        ),
        (40, vec!["pod0".to_string()]),
        "{r}"
    );
    write(&dir.join("manifests/web.yaml"), &manifests(&lab, &[0, 1]));
    wait_for("pod1 to get traffic from the YAML change", || {
        who_answers(&lab, 30080, 20).responders.len() == 2
    });
    // An invalid edit is reported (once the agent has read it again) and changes nothing.
    let invalid_files = || {
        agent
            .get("/metrics")
            .and_then(|(_, text)| metric(&text, "sluice_manifest_files_invalid", ""))
    };
    assert_eq!(invalid_files(), Some(0.0));
    write(
        &dir.join("manifests/web.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{port: 0}]\n",
    );
    wait_for("the agent to report the invalid file", || {
        invalid_files() == Some(1.0)
    });
    assert_eq!(
        who_answers(&lab, 30080, 20).responders.len(),
        2,
        "the last good state stays in force"
    );
    write(&dir.join("manifests/web.yaml"), &manifests(&lab, &[0, 1]));
    wait_for("the agent to read the repaired file", || {
        invalid_files() == Some(0.0)
    });

    // API: a second service backed by pod1 only.
    let svc = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"api","namespace":"default"},"spec":{"type":"NodePort","ports":[{"port":80,"nodePort":30081}]}}"#;
    let slice = format!(
        r#"{{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{{"name":"api-1","namespace":"default","labels":{{"kubernetes.io/service-name":"api"}}}},"addressType":"IPv4","ports":[{{"port":{HTTP_PORT}}}],"endpoints":[{{"addresses":["{}"]}}]}}"#,
        lab.backend_addr(1)
    );
    let put = |path: &str, body: &str| agent.http("PUT", API, path, Some(body)).map(|(s, _)| s);
    assert_eq!(
        put("/api/v1/namespaces/default/services/api", svc),
        Some(201)
    );
    assert_eq!(
        put(
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/api-1",
            &slice
        ),
        Some(201)
    );
    wait_for("the API service to answer", || {
        who_answers(&lab, 30081, 10)
            .responders
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            == vec!["pod1".to_string()]
    });

    // The CLI against the running agent (inside the node namespace).
    let cli = |args: &[&str]| {
        let out = lab
            .node()
            .command(sluice_bin())
            .args(args)
            .args(["--api", API])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = cli(&["services"]);
    assert!(
        ok && out.starts_with("NAME")
            && out.contains("default/web:80/TCP")
            && out.contains("default/api:80/TCP"),
        "{out}{err}"
    );
    let (ok, out, err) = cli(&["backends", "default/web:80/TCP"]);
    let pod0 = lab.backend_addr(0).to_string();
    assert!(
        ok && out.contains(&pod0) && out.contains("Ready"),
        "{out}{err}"
    );
    let (ok, out, _) = cli(&["services", "-o", "json"]);
    assert!(
        ok && serde_json::from_str::<serde_json::Value>(&out).is_ok(),
        "{out}"
    );
    let (ok, out, err) = cli(&["rollouts"]);
    assert!(ok && out.starts_with("DEPLOYMENT"), "{out}{err}");
    // pod0 is ready and selected: drain-wait times out and says why.
    let (ok, _, err) = cli(&["drain-wait", &pod0, "--timeout", "0.5"]);
    assert!(!ok && err.contains("still selected"), "{err}");

    // kill -9 under a bounded request loop, then restart: no request lost.
    let mut cfg = load::Config::new(
        SocketAddr::new(lab.node_addr().into(), 30080),
        LoadProtocol::http("/"),
    );
    cfg.mode = ConnectionMode::NewConnectionPerRequest;
    cfg.concurrency = 4;
    cfg.rate = Some(200.0);
    cfg.max_requests = 1_200;
    cfg.max_duration = Duration::from_secs(8);
    let bg = lab
        .client()
        .thread(move || load::run_blocking(cfg).expect("load"))
        .expect("thread");
    std::thread::sleep(Duration::from_secs(1));
    sluice.signal(Signal::SIGKILL).unwrap();
    sluice.wait_timeout(Duration::from_secs(5)).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let mut sluice = agent.start();
    let r = bg.join().unwrap().unwrap();
    println!("across kill -9 and restart: {r}");
    assert_eq!(r.failures(), 0, "{r}");
    assert!(r.sent >= 1000, "{r}");

    // What the API wrote survived the restart (saved in the state directory).
    assert_eq!(who_answers(&lab, 30081, 10).outcomes.ok, 10);

    // Metrics: counters move with traffic.
    let scrape = || agent.get("/metrics").expect("metrics").1;
    let label = "service=\"default/web:80/TCP\"";
    let before =
        metric(&scrape(), "sluice_service_packets_total", label).expect("service packets metric");
    who_answers(&lab, 30080, 30);
    let text = scrape();
    let after = metric(&text, "sluice_service_packets_total", label).unwrap();
    assert!(after > before, "packets {before} -> {after}");
    assert!(
        metric(
            &text,
            "kubeproxy_sync_proxy_rules_duration_seconds_count",
            ""
        )
        .unwrap_or(0.0)
            > 0.0,
        "{text}"
    );
    assert!(text.contains("kubeproxy_sync_proxy_rules_last_timestamp_seconds"));
    assert_eq!(agent.get("/healthz").map(|(s, _)| s), Some(200));

    sluice.signal(Signal::SIGTERM).unwrap();
    assert!(
        sluice
            .wait_timeout(Duration::from_secs(5))
            .unwrap()
            .is_some_and(|s| s.success())
    );
    let out = lab
        .node()
        .command(sluice_bin())
        .arg("uninstall")
        .arg("--pin-root")
        .arg(pins.path())
        .args(["--instance", "agent"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
    lab.assert_no_checksum_errors();
}

//! The walkthrough: the steps of the tutorial, each printed with the kubectl command a user
//! would type beside what happened, and recorded in the report.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::Result;
use bench::load::{self, ConnectionMode, LoadError, Protocol, Report as LoadReport};
use lab::Lab;
use lab::bail;
use lab::error::Context as _;
use lb_userspace::PinConfig;
use serde_json::Value;

use crate::Options;
use crate::agent::AgentClient;
use crate::bootcamp::{GREETING, parse_greeting};
use crate::interrupt;
use crate::k8s::{self, APP, Exposure};
use crate::kubectl;
use crate::report::{Check, Report, StepReport, Tally, answers};
use crate::rollout::Recording;
use crate::workload::{Cluster, Goal};
use controller::http_client as http;

/// Steps of the walkthrough.
pub const STEPS: usize = 12;

/// The Service's port (`--port 8080`).
const SERVICE_PORT: u16 = 8080;

/// The data path's name prefix of the Service's ports (`default/kubernetes-bootcamp:8080/TCP`).
fn dataplane_prefix() -> String {
    format!("{}/{APP}:", k8s::NAMESPACE)
}

type LoadHandle = JoinHandle<lab::Result<Result<LoadReport, LoadError>>>;

/// A background load: what it is, when it started, its thread.
type BackgroundLoad = (&'static str, Instant, LoadHandle);

/// The walkthrough in progress.
pub(crate) struct Story<'a, 'l> {
    opts: &'a Options,
    lab: &'l Lab,
    api: &'l AgentClient<'l>,
    cluster: &'a mut Cluster<'l>,
    sluice: std::path::PathBuf,
    pin: PinConfig,
    steps: Vec<StepReport>,
    pod_name: Option<String>,
    /// Every load run and step start, for `rollout.png`.
    recording: RefCell<Recording>,
}

impl<'a, 'l> Story<'a, 'l> {
    pub(crate) fn new(
        opts: &'a Options,
        lab: &'l Lab,
        api: &'l AgentClient<'l>,
        cluster: &'a mut Cluster<'l>,
        pin: PinConfig,
    ) -> Self {
        Self {
            opts,
            lab,
            api,
            cluster,
            sluice: opts.bin_dir.join("sluice"),
            pin,
            steps: Vec::new(),
            pod_name: None,
            recording: RefCell::new(Recording::new()),
        }
    }

    /// What was recorded for the rollout chart.
    pub(crate) fn recording(&self) -> std::cell::Ref<'_, Recording> {
        self.recording.borrow()
    }

    /// Plays every step; stops at the first step that ends with an error (its record says
    /// why). Failed checks do not stop the story.
    pub(crate) fn play(&mut self) -> Result<()> {
        self.create_deployment()?;
        self.expose_node_port()?;
        self.label_pod()?;
        self.delete_service()?;
        self.expose_load_balancer()?;
        self.scale_up()?;
        self.scale_down()?;
        self.rolling_update()?;
        self.rollout_status()?;
        self.broken_image()?;
        self.rollout_undo()?;
        self.delete_all()
    }

    /// The report of the steps played so far, with the overall checks.
    pub(crate) fn report(&self, interrupted: bool) -> Report {
        let total_requests = self.steps.iter().map(|s| s.requests).sum();
        let total_failures = self.steps.iter().map(StepReport::failure_count).sum();
        let total_retried = self.steps.iter().map(|s| s.retried).sum();
        let mut checks = Vec::new();
        let mut check = |ok: bool, what: String| {
            println!("  [{}] {what}", if ok { " ok " } else { "FAIL" });
            checks.push(Check { what, ok });
        };
        check(
            self.steps.len() == STEPS,
            format!("all {STEPS} steps ran ({} did)", self.steps.len()),
        );
        check(
            total_requests >= self.opts.min_total_requests,
            format!(
                "{total_requests} requests over the whole walkthrough (at least {})",
                self.opts.min_total_requests
            ),
        );
        match self.lab.try_checksum_errors() {
            Ok(errors) => check(
                errors.is_empty(),
                format!("no namespace counted a checksum error {errors:?}"),
            ),
            Err(e) => check(false, format!("checksum counters readable: {e:#}")),
        }
        let ok = !interrupted && self.steps.iter().all(|s| s.ok) && checks.iter().all(|c| c.ok);
        Report {
            steps: self.steps.clone(),
            ok,
            total_requests,
            total_failures,
            total_retried,
            checks,
            interrupted,
            node_port: self.opts.node_port,
            vip: self.opts.vip.to_string(),
            load: serde_json::to_value(&self.opts.load).unwrap_or(Value::Null),
            rollout_chart: None,
        }
    }

    // -------------------------------------------------------------------------------------
    // Printing

    fn cmd(&self, command: &str) {
        println!("  $ {command}");
    }

    fn out(&self, text: &str) {
        for line in text.lines() {
            println!("    {line}");
        }
    }

    /// Runs one step: prints its header, runs `body`, adds the standard checks and records it.
    fn step(
        &mut self,
        name: &str,
        title: &str,
        command: &str,
        body: impl FnOnce(&mut Self, &mut Tally) -> Result<()>,
    ) -> Result<()> {
        interrupt::check()?;
        println!("\n== Step {}/{STEPS}: {title} ==", self.steps.len() + 1);
        self.recording.get_mut().step(name);
        self.cluster.begin_step();
        let started = Instant::now();
        let mut tally = Tally::default();
        let result = body(self, &mut tally);
        let counters = self.cluster.take_counters();
        tally.driver(&counters);
        let failures: u64 = tally.failures.values().sum();
        tally.check(
            failures == 0,
            format!(
                "{} requests, {failures} unexpected failures {:?}",
                tally.requests, tally.failures
            ),
        );
        tally.check(
            tally.served_while_not_ready == 0,
            format!(
                "pods accepted {} connections while not ready (before their first readiness, or \
                 after the data path stopped selecting them)",
                tally.served_while_not_ready
            ),
        );
        if let Err(e) = &result {
            println!("  [FAIL] {e:#}");
        }
        let error = result.as_ref().err().map(|e| format!("{e:#}"));
        let report = tally.finish(name, command, started.elapsed().as_secs_f64(), error);
        println!(
            "  => {}: {} requests, {} failed, {} retried, {} expected refusals; {} pods answered \
             ({}); {:.1} s",
            if report.ok { "ok" } else { "FAILED" },
            report.requests,
            report.failure_count(),
            report.retried,
            report.expected_refusals,
            report.distinct_pods,
            if report.versions.is_empty() {
                "-".to_owned()
            } else {
                report.versions.join(", ")
            },
            report.duration_s
        );
        self.steps.push(report);
        result
    }

    // -------------------------------------------------------------------------------------
    // Traffic

    fn node_port_addr(&self) -> SocketAddr {
        SocketAddr::new(self.lab.node_addr().into(), self.opts.node_port)
    }

    fn vip_addr(&self) -> SocketAddr {
        SocketAddr::new(self.opts.vip.into(), SERVICE_PORT)
    }

    fn load_config(&self, target: SocketAddr, mode: ConnectionMode) -> load::Config {
        let mut cfg = load::Config::new(target, Protocol::http("/"));
        cfg.mode = mode;
        cfg.timeout = Duration::from_secs_f64(self.opts.load.timeout_secs);
        cfg.expect = Some(GREETING.to_owned());
        cfg
    }

    /// `n` new connections to `target` from the client namespace, `concurrency` at a time.
    fn requests(&self, target: SocketAddr, n: u64, concurrency: usize) -> Result<LoadReport> {
        self.sample(target, n, concurrency, false)
    }

    /// [`Self::requests`] where refusals are the point (drawn apart from failures).
    fn refused_requests(
        &self,
        target: SocketAddr,
        n: u64,
        concurrency: usize,
    ) -> Result<LoadReport> {
        self.sample(target, n, concurrency, true)
    }

    fn sample(
        &self,
        target: SocketAddr,
        n: u64,
        concurrency: usize,
        refusals_expected: bool,
    ) -> Result<LoadReport> {
        let mut cfg = self.load_config(target, ConnectionMode::NewConnectionPerRequest);
        cfg.max_requests = n;
        cfg.concurrency = concurrency;
        cfg.max_duration = Duration::from_secs(60);
        let started = Instant::now();
        let report = self
            .lab
            .client()
            .enter(move || load::run_blocking(cfg))?
            .context("load generator")?;
        self.recording
            .borrow_mut()
            .load(started, &report, refusals_expected);
        interrupt::check()?;
        Ok(report)
    }

    /// One `curl http://target/` from the client namespace: prints and counts the answer.
    fn curl(&self, t: &mut Tally, target: SocketAddr) -> Result<()> {
        let timeout = Duration::from_secs_f64(self.opts.load.timeout_secs);
        let answer = self
            .lab
            .client()
            .enter(move || http::request(target, "GET", "/", &[], None, timeout))?;
        match answer {
            Ok(r) => {
                let body = r.text();
                self.out(body.trim_end());
                match parse_greeting(&body) {
                    Some((pod, v)) if r.status == 200 => t.answered(pod, v),
                    _ => t.failed("bad_response"),
                }
            }
            Err(e) => {
                self.out(&format!("curl: {e}"));
                t.failed(match e.error().kind() {
                    std::io::ErrorKind::ConnectionRefused => "refused",
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => "timeout",
                    _ => "reset",
                });
            }
        }
        Ok(())
    }

    /// Starts the steady background load (see [`crate::LoadOptions`]) for `secs` seconds:
    /// new connections from the client address to the VIP, and keep-alive requests from the
    /// second client address to the NodePort.
    ///
    /// Two client addresses, because one client port reaching two frontends of a service is
    /// one 4-tuple at a backend: the data path steers such a second flow to another backend
    /// (`ct_reply_clash`), which a service with one ready backend (the stalled rollout) does
    /// not have. The client's kernel may well reuse a port for two destinations.
    fn start_load(&self, secs: f64) -> Result<Vec<BackgroundLoad>> {
        let l = &self.opts.load;
        let mut handles = Vec::new();
        for (what, target, mode, rate, source) in [
            (
                "new connection per request",
                self.vip_addr(),
                ConnectionMode::NewConnectionPerRequest,
                l.new_connection_rate,
                self.lab.client_addr(),
            ),
            (
                "keep-alive",
                self.node_port_addr(),
                ConnectionMode::KeepAlive,
                l.keep_alive_rate,
                self.opts.second_client,
            ),
        ] {
            let mut cfg = self.load_config(target, mode);
            cfg.source_ips = vec![source.into()];
            cfg.rate = Some(rate);
            cfg.concurrency = l.concurrency;
            cfg.max_duration = Duration::from_secs_f64(secs);
            cfg.max_requests = (rate * secs).ceil() as u64;
            handles.push((
                what,
                Instant::now(),
                self.lab.client().thread(move || load::run_blocking(cfg))?,
            ));
        }
        self.out(&format!(
            "(under load from the client namespace for {secs:.0} s: {:.0}/s new connections \
             {} -> {}, {:.0}/s keep-alive requests over {} connections {} -> {})",
            l.new_connection_rate,
            self.lab.client_addr(),
            self.vip_addr(),
            l.keep_alive_rate,
            l.concurrency,
            self.opts.second_client,
            self.node_port_addr()
        ));
        Ok(handles)
    }

    /// Waits for the background loads and counts them.
    fn finish_load(&self, t: &mut Tally, handles: Vec<BackgroundLoad>) -> Result<()> {
        for (what, started, h) in handles {
            while !h.is_finished() {
                interrupt::sleep(Duration::from_millis(50))?;
            }
            let report = match h.join() {
                Ok(r) => r?.with_context(|| format!("{what} load"))?,
                Err(panic) => std::panic::resume_unwind(panic),
            };
            self.out(&format!("{what}: {report}"));
            self.recording.borrow_mut().load(started, &report, false);
            t.load(&report, false);
        }
        Ok(())
    }

    /// Under load: sleeps the warm-up, runs `change` (which must converge), and checks that
    /// the load covered it. Returns when the load is done.
    fn under_load(
        &mut self,
        t: &mut Tally,
        secs: f64,
        change: impl FnOnce(&mut Self, Duration) -> Result<()>,
    ) -> Result<()> {
        let before = self.api.reasons()?;
        let handles = self.start_load(secs)?;
        let started = Instant::now();
        let result = interrupt::sleep(Duration::from_secs_f64(self.opts.load.warmup_secs))
            .map_err(crate::error::Error::from)
            .and_then(|()| {
                let left = Duration::from_secs_f64(secs).saturating_sub(started.elapsed());
                change(self, left)
            });
        let done = started.elapsed().as_secs_f64();
        // Always collect the load, so its numbers are in the record even if the change failed.
        self.finish_load(t, handles)?;
        let after = self.api.reasons()?;
        let moved: Vec<String> = after
            .iter()
            .filter(|(k, _)| k.starts_with("ct_") || k.contains("drop") || k.contains("refuse"))
            .filter_map(|(k, n)| {
                let d = n.saturating_sub(before.get(k).copied().unwrap_or(0));
                (d > 0).then(|| format!("{k} {d}"))
            })
            .collect();
        self.out(&format!("data path meanwhile: {}", moved.join(", ")));
        result?;
        t.check(
            done + 0.25 < secs,
            format!(
                "the load ran before, during and after the change (done at {done:.1} s of {secs:.0} \
                 s)"
            ),
        );
        Ok(())
    }

    /// Waits until the agent's data path satisfies `pred` (its services as JSON).
    fn wait_dataplane(&self, what: &str, pred: impl Fn(&[Value]) -> bool) -> Result<()> {
        let deadline = Instant::now() + self.opts.step_timeout;
        loop {
            interrupt::check()?;
            let items = self.api.dataplane_services()?;
            if pred(&items) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the data path never showed {what}: {items:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The data path's entries for the Service.
    fn our_services(items: &[Value]) -> Vec<&Value> {
        let prefix = dataplane_prefix();
        items
            .iter()
            .filter(|s| s["name"].as_str().is_some_and(|n| n.starts_with(&prefix)))
            .collect()
    }

    fn ready_backends(svc: &Value) -> usize {
        svc["backends"]
            .as_array()
            .map_or(0, |b| b.iter().filter(|b| b["state"] == "Ready").count())
    }

    /// Runs the real `sluice` CLI inside the node namespace and prints its output.
    fn sluice(&self, args: &[&str]) -> Result<String> {
        let api = self.opts.api.to_string();
        self.cmd(&format!(
            "sluice {} --api {api}    # the agent's view, in the node namespace",
            args.join(" ")
        ));
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--api", &api]);
        let out = self
            .lab
            .node()
            .run(self.sluice.to_str().unwrap_or("sluice"), &all)?;
        self.out(out.trim_end());
        Ok(out)
    }

    fn get_pods(&self, wide: bool) {
        self.cmd(if wide {
            "kubectl get pods -o wide"
        } else {
            "kubectl get pods"
        });
        self.out(&kubectl::pods(&self.cluster.pods(), wide, None));
    }

    fn get_deployments(&self) {
        self.cmd("kubectl get deployments");
        let view = self.cluster.deployment_view();
        let age = self.cluster.deployment_age().unwrap_or_default();
        self.out(&kubectl::deployments(view.as_ref().map(|v| (v, age))));
    }

    fn get_rs(&self) {
        self.cmd("kubectl get rs");
        self.out(&kubectl::replica_sets(&self.cluster.replica_sets()));
    }

    fn get_services(&self) {
        self.cmd("kubectl get services");
        self.out(&kubectl::services(self.cluster.service().as_ref()));
    }

    fn agent_rollout(&self, t: &mut Tally, want: &str) -> Result<()> {
        self.sluice(&["rollouts"])?;
        // The agent reads the Deployment as published; give it the round trip.
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            let status = self.api.rollout_status(k8s::NAMESPACE, APP)?;
            if status.as_deref().is_some_and(|s| s.starts_with(want)) || Instant::now() >= deadline
            {
                break status;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        t.check(
            status.as_deref().is_some_and(|s| s.starts_with(want)),
            format!("the agent reports the rollout as {want:?} ({status:?})"),
        );
        Ok(())
    }

    fn current_pod_names(&self) -> Vec<String> {
        self.cluster.pods().into_iter().map(|p| p.name).collect()
    }

    /// Prints the share of each pod in a report.
    fn print_spread(&self, r: &LoadReport) {
        let (pods, _) = answers(r);
        for (pod, n) in &pods {
            self.out(&format!(
                "{pod}: {n} ({:.1}%)",
                100.0 * *n as f64 / r.outcomes.ok.max(1) as f64
            ));
        }
    }

    // -------------------------------------------------------------------------------------
    // The steps

    fn create_deployment(&mut self) -> Result<()> {
        let command = format!("kubectl create deployment {APP} --image={}", k8s::image(1));
        self.step(
            "create-deployment",
            "Create a Deployment (1 replica of v1)",
            &command.clone(),
            |s, t| {
                s.cmd(&command);
                s.cluster.create_deployment(1, 1)?;
                s.out(&format!("deployment.apps/{APP} created"));
                s.cluster.converge(Goal::Complete, s.opts.step_timeout)?;
                s.get_deployments();
                s.get_pods(true);
                let pods = s.cluster.pods();
                t.check(
                    pods.len() == 1 && pods[0].ready && pods[0].version == 1,
                    "1 pod of v1 is running and ready",
                );
                s.pod_name = pods.first().map(|p| p.name.clone());
                Ok(())
            },
        )
    }

    fn expose_node_port(&mut self) -> Result<()> {
        let command =
            format!("kubectl expose deployment/{APP} --type=\"NodePort\" --port {SERVICE_PORT}");
        self.step(
            "expose-nodeport",
            "Expose it as a NodePort Service",
            &command.clone(),
            |s, t| {
                s.cmd(&command);
                let exposure = Exposure::NodePort {
                    node_port: s.opts.node_port,
                };
                s.cluster.expose(SERVICE_PORT, exposure)?;
                s.out(&format!("service/{APP} exposed"));
                let node_port = s.opts.node_port;
                s.wait_dataplane("the NodePort service with its ready pod", |items| {
                    Self::our_services(items).iter().any(|svc| {
                        Self::ready_backends(svc) == 1
                            && svc["frontends"]
                                .as_array()
                                .is_some_and(|f| f.iter().any(|f| f["NodePort"] == node_port))
                    })
                })?;
                s.get_services();
                s.cmd(&format!(
                    "export NODE_PORT=\"$(kubectl get services/{APP} -o go-template='{{{{(index \
                 .spec.ports 0).nodePort}}}}')\""
                ));
                s.out(&format!(
                "NODE_PORT={node_port}   (the standalone agent does not allocate node ports: the \
                 demo's Service asks for {node_port})"
            ));
                s.cmd(&format!(
                    "curl http://{}:$NODE_PORT    # from the client namespace {}",
                    s.lab.node_addr(),
                    s.lab.client().name()
                ));
                s.curl(t, s.node_port_addr())?;
                let n = s.opts.sample_requests.min(50);
                let r = s.requests(s.node_port_addr(), n, 2)?;
                s.out(&format!("and {n} more new connections: {r}"));
                t.load(&r, false);
                let pod = s.pod_name.clone().unwrap_or_default();
                t.check(
                    t.pods.keys().eq([&pod]) && r.outcomes.ok == n,
                    format!("every request through the NodePort was answered by {pod}"),
                );
                s.sluice(&["services"])?;
                Ok(())
            },
        )
    }

    fn label_pod(&mut self) -> Result<()> {
        let command = "kubectl label pods \"$POD_NAME\" version=v1".to_owned();
        self.step("label-pod", "Label a pod and select by label", &command.clone(), |s, t| {
            s.cmd(&format!("kubectl get pods -l app={APP}"));
            s.out(&kubectl::pods(&s.cluster.pods(), false, Some(("app", APP))));
            let pod = s.pod_name.clone().context("no pod from the first step")?;
            s.cmd("export POD_NAME=\"$(kubectl get pods -o go-template --template '{{range .items}}{{.metadata.name}}{{\"\\n\"}}{{end}}')\"");
            s.out(&format!("Name of the Pod: {pod}"));
            s.cmd(&command);
            s.cluster.label_pod(&pod, "version", "v1")?;
            s.out(&format!("pod/{pod} labeled"));
            s.cmd("kubectl describe pods \"$POD_NAME\" | grep -A3 Labels");
            if let Some(p) = s.cluster.pods().iter().find(|p| p.name == pod) {
                let labels: Vec<String> = p.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                s.out(&format!("Labels:       {}", labels.join("\n              ")));
            }
            s.cmd("kubectl get pods -l version=v1");
            let pods = s.cluster.pods();
            s.out(&kubectl::pods(&pods, false, Some(("version", "v1"))));
            let selected: Vec<&str> = pods
                .iter()
                .filter(|p| p.labels.get("version").is_some_and(|v| v == "v1"))
                .map(|p| p.name.as_str())
                .collect();
            t.check(selected == [pod.as_str()], format!("the selector version=v1 picks {pod} only"));
            Ok(())
        })
    }

    fn delete_service(&mut self) -> Result<()> {
        let command = format!("kubectl delete service -l app={APP}");
        self.step("delete-service", "Delete the Service: the NodePort refuses, the pod still answers inside", &command.clone(), |s, t| {
            s.cmd(&command);
            if s.cluster.delete_service()? {
                s.out(&format!("service \"{APP}\" deleted"));
            }
            s.wait_dataplane("the service gone", |items| Self::our_services(items).is_empty())?;
            s.get_services();
            s.cmd(&format!("curl http://{}:$NODE_PORT    # from the client namespace", s.lab.node_addr()));
            let n = s.opts.sample_requests.min(20);
            let r = s.refused_requests(s.node_port_addr(), n, 1)?;
            t.load(&r, true);
            s.out(&format!(
                "curl: (7) Failed to connect to {} port {}: Connection refused   ({} of {n} \
                 attempts refused)",
                s.lab.node_addr(),
                s.opts.node_port,
                r.outcomes.refused
            ));
            t.check(
                r.outcomes.refused == n,
                format!("the NodePort refuses connections once the Service is gone ({} of {n})", r.outcomes.refused),
            );
            let pod = s.pod_name.clone().unwrap_or_default();
            s.cmd("kubectl exec -ti $POD_NAME -- curl http://localhost:8080    # here: from the node namespace to the pod's own address");
            match s.cluster.pod_get(&pod, "/") {
                Ok(r) => {
                    let body = r.text();
                    s.out(body.trim_end());
                    match parse_greeting(&body) {
                        Some((name, v)) if r.status == 200 && name == pod => t.answered(name, v),
                        _ => t.failed("bad_response"),
                    }
                }
                Err(e) => {
                    s.out(&format!("{e:#}"));
                    t.failed("pod_unreachable");
                }
            }
            t.check(t.pods.contains_key(&pod), format!("{pod} still answers from inside"));
            Ok(())
        })
    }

    fn expose_load_balancer(&mut self) -> Result<()> {
        let command = format!(
            "kubectl expose deployment/{APP} --type=\"LoadBalancer\" --port {SERVICE_PORT}"
        );
        self.step(
            "expose-loadbalancer",
            "Expose it as a LoadBalancer Service",
            &command.clone(),
            |s, t| {
                s.cmd(&command);
                let exposure = Exposure::LoadBalancer {
                    node_port: s.opts.node_port,
                    vip: s.opts.vip,
                };
                s.cluster.expose(SERVICE_PORT, exposure)?;
                s.out(&format!("service/{APP} exposed"));
                s.out(&format!(
                "(the lab's load-balancer controller gave it {} from the VIP pool 203.0.113.0/24, \
                 in status.loadBalancer.ingress, and node port {})",
                s.opts.vip, s.opts.node_port
            ));
                let vip = s.vip_addr().to_string();
                s.wait_dataplane("the LoadBalancer service with its ready pod", |items| {
                    Self::our_services(items).iter().any(|svc| {
                        Self::ready_backends(svc) == 1
                            && svc["frontends"]
                                .as_array()
                                .is_some_and(|f| f.iter().any(|f| f["Address"] == vip.as_str()))
                    })
                })?;
                s.get_services();
                s.cmd(&format!(
                    "curl http://{}    # from the client namespace",
                    s.vip_addr()
                ));
                s.curl(t, s.vip_addr())?;
                let n = s.opts.sample_requests.min(50);
                let r = s.requests(s.vip_addr(), n, 2)?;
                s.out(&format!("and {n} more new connections: {r}"));
                t.load(&r, false);
                let pod = s.pod_name.clone().unwrap_or_default();
                t.check(
                    t.pods.keys().eq([&pod]) && r.outcomes.ok == n,
                    format!("every request to the VIP was answered by {pod}"),
                );
                Ok(())
            },
        )
    }

    fn scale_up(&mut self) -> Result<()> {
        let command = format!("kubectl scale deployments/{APP} --replicas=4");
        self.step(
            "scale-up",
            "Scale to 4 replicas",
            &command.clone(),
            |s, t| {
                s.cmd(&command);
                s.cluster.scale(4)?;
                s.out(&format!("deployment.apps/{APP} scaled"));
                s.cluster.converge(Goal::Complete, s.opts.step_timeout)?;
                s.get_deployments();
                s.get_pods(true);
                s.cmd(&format!(
                    "for _ in {{1..4}}; do curl http://{}; done",
                    s.vip_addr()
                ));
                for _ in 0..4 {
                    s.curl(t, s.vip_addr())?;
                }
                let n = s.opts.spread_requests;
                s.cmd(&format!(
                    "# {n} new connections to {}, 4 at a time:",
                    s.vip_addr()
                ));
                let r = s.requests(s.vip_addr(), n, 4)?;
                s.out(&r.to_string());
                s.print_spread(&r);
                t.load(&r, false);
                let (pods, _) = answers(&r);
                t.check(
                    pods.len() == 4,
                    format!("all 4 pods answered new connections ({})", pods.len()),
                );
                let ok = r.outcomes.ok.max(1) as f64;
                let shares: Vec<f64> = pods.values().map(|&c| c as f64 / ok).collect();
                t.check(
                    shares.iter().all(|x| (0.15..=0.35).contains(x)),
                    format!(
                        "each pod got 15-35% of them ({})",
                        shares
                            .iter()
                            .map(|x| format!("{:.1}%", x * 100.0))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
                Ok(())
            },
        )
    }

    fn scale_down(&mut self) -> Result<()> {
        let command = format!("kubectl scale deployments/{APP} --replicas=2");
        self.step(
            "scale-down",
            "Scale down to 2 replicas (through the drain handshake)",
            &command.clone(),
            |s, t| {
                s.cmd(&command);
                s.cluster.scale(2)?;
                s.out(&format!("deployment.apps/{APP} scaled"));
                s.cluster.converge(Goal::Complete, s.opts.step_timeout)?;
                s.get_deployments();
                s.get_pods(true);
                let survivors: BTreeSet<String> = s.current_pod_names().into_iter().collect();
                let n = s.opts.sample_requests;
                s.cmd(&format!("# {n} new connections to {}:", s.vip_addr()));
                let r = s.requests(s.vip_addr(), n, 4)?;
                s.out(&r.to_string());
                s.print_spread(&r);
                t.load(&r, false);
                let (pods, _) = answers(&r);
                t.check(
                    survivors.len() == 2 && pods.keys().eq(&survivors),
                    format!(
                        "only the 2 survivors answered ({:?})",
                        pods.keys().collect::<Vec<_>>()
                    ),
                );
                Ok(())
            },
        )
    }

    fn rolling_update(&mut self) -> Result<()> {
        let command = format!(
            "kubectl set image deployments/{APP} {APP}={}",
            k8s::image(2)
        );
        self.step(
            "rolling-update-v2",
            "Rolling update to v2 under load (maxSurge 1, maxUnavailable 1)",
            &command.clone(),
            |s, t| {
                let before = s.current_pod_names();
                s.cmd(&command);
                s.under_load(t, s.opts.load.rolling_update_secs, |s, left| {
                    s.cluster.set_image(2)?;
                    s.out(&format!("deployment.apps/{APP} image updated"));
                    s.cluster.converge(Goal::Complete, left)
                })?;
                s.get_pods(true);
                s.get_rs();
                let after = s.cluster.pods();
                t.check(
                    after.len() == 2 && after.iter().all(|p| p.version == 2 && p.ready),
                    "2 ready pods of v2 replaced the v1 pods",
                );
                t.check(
                    before.iter().all(|b| !after.iter().any(|p| &p.name == b)),
                    "both v1 pods went through the drain handshake and are gone",
                );
                t.check(
                    t.versions.contains(&1) && t.versions.contains(&2),
                    format!(
                        "the load saw v1 until the switch and v2 after it ({:?})",
                        t.versions
                    ),
                );
                Ok(())
            },
        )
    }

    fn rollout_status(&mut self) -> Result<()> {
        let command = format!("kubectl rollout status deployments/{APP}");
        self.step(
            "rollout-status",
            "Check the rollout",
            &command.clone(),
            |s, t| {
                s.cmd(&command);
                let line = s.cluster.rollout_status().unwrap_or_default();
                s.out(&line);
                t.check(
                    line.ends_with("successfully rolled out"),
                    "the rollout is complete",
                );
                s.agent_rollout(t, "complete")?;
                s.cmd("kubectl describe pods | grep Image:");
                for p in s.cluster.pods() {
                    s.out(&format!("    Image:          {}", k8s::image(p.version)));
                }
                let n = s.opts.sample_requests;
                s.cmd(&format!("# {n} new connections to {}:", s.vip_addr()));
                let r = s.requests(s.vip_addr(), n, 4)?;
                s.out(&r.to_string());
                t.load(&r, false);
                let (pods, versions) = answers(&r);
                let current: BTreeSet<String> = s.current_pod_names().into_iter().collect();
                t.check(
                    versions.iter().eq([&2u32]),
                    format!("only v=2 answers now ({versions:?})"),
                );
                t.check(
                    current.len() == 2 && pods.keys().eq(&current),
                    format!("both v2 pods answer ({} pods)", pods.len()),
                );
                Ok(())
            },
        )
    }

    fn broken_image(&mut self) -> Result<()> {
        let command = format!(
            "kubectl set image deployments/{APP} {APP}={}",
            k8s::image(10)
        );
        self.step(
            "set-image-v10",
            "Update to v10, an image that does not exist: the rollout stalls",
            &command.clone(),
            |s, t| {
                s.cmd(&command);
                s.under_load(t, s.opts.load.broken_image_secs, |s, left| {
                    s.cluster.set_image(10)?;
                    s.out(&format!("deployment.apps/{APP} image updated"));
                    s.cluster.converge(Goal::Stalled, left)?;
                    s.get_deployments();
                    s.get_pods(false);
                    if let Some(broken) = s.cluster.pods().iter().find(|p| p.version == 10) {
                        s.cmd(&format!("kubectl logs {}", broken.name));
                        if let Some(log) = s.cluster.pod_log(&broken.name) {
                            s.out(&crate::agent::tail(&log, 1));
                        }
                    }
                    s.cmd(&format!("kubectl rollout status deployments/{APP}"));
                    s.out(&s.cluster.rollout_status().unwrap_or_default());
                    Ok(())
                })?;
                s.agent_rollout(t, "stalled")?;
                let pods = s.cluster.pods();
                t.check(
                    pods.iter().filter(|p| p.version == 10).all(|p| !p.ready)
                        && pods.iter().any(|p| p.version == 2 && p.ready),
                    "the v10 pods never became ready; v2 keeps serving",
                );
                t.check(
                    t.versions.iter().eq([&2u32]),
                    format!("every answer came from v2 ({:?})", t.versions),
                );
                Ok(())
            },
        )
    }

    fn rollout_undo(&mut self) -> Result<()> {
        let command = format!("kubectl rollout undo deployments/{APP}");
        self.step(
            "rollout-undo",
            "Roll back to v2 under load",
            &command.clone(),
            |s, t| {
                s.cmd(&command);
                s.under_load(t, s.opts.load.undo_secs, |s, left| {
                    let version = s.cluster.rollout_undo()?;
                    s.out(&format!(
                        "deployment.apps/{APP} rolled back (to the template of v{version})"
                    ));
                    s.cluster.converge(Goal::Complete, left)
                })?;
                s.get_pods(false);
                s.get_rs();
                s.cmd(&format!("kubectl rollout status deployments/{APP}"));
                let line = s.cluster.rollout_status().unwrap_or_default();
                s.out(&line);
                s.agent_rollout(t, "complete")?;
                let pods = s.cluster.pods();
                t.check(
                    pods.len() == 2 && pods.iter().all(|p| p.version == 2 && p.ready),
                    "2 ready pods of v2, no v10 pod left",
                );
                t.check(
                    t.versions.iter().eq([&2u32]),
                    format!("every answer came from v2 ({:?})", t.versions),
                );
                Ok(())
            },
        )
    }

    fn delete_all(&mut self) -> Result<()> {
        let command = format!("kubectl delete deployments/{APP} services/{APP}");
        self.step(
            "delete",
            "Delete the Deployment and the Service: nothing is left in the maps",
            &command.clone(),
            |s, t| {
                s.cmd(&command);
                // The Service first: with it gone no endpoint is selectable any more, so every
                // pod's drain handshake completes at once (with the Service still there, the last
                // terminating pods would stay selected as Kubernetes' terminating fallback).
                s.cluster.delete_service()?;
                s.cluster.delete_deployment()?;
                s.out(&format!(
                    "deployment.apps \"{APP}\" deleted\nservice \"{APP}\" deleted"
                ));
                s.cluster.converge(Goal::NoPods, s.opts.step_timeout)?;
                s.get_pods(false);
                s.wait_dataplane("no services at all", <[Value]>::is_empty)?;
                let out = s.sluice(&["services"])?;
                t.check(out.lines().count() <= 1, "the agent reports no services");
                for (path, kind) in [
                    ("/api/v1/services", "Services"),
                    ("/apis/discovery.k8s.io/v1/endpointslices", "EndpointSlices"),
                    ("/apis/apps/v1/deployments", "Deployments"),
                ] {
                    let items = s.api.get(path)?["items"].as_array().map_or(0, Vec::len);
                    t.check(items == 0, format!("the agent holds no {kind} ({items})"));
                }
                s.cmd(&format!(
                    "# the maps, read through their pins under {}",
                    s.pin.layout_dir().display()
                ));
                let deadline = Instant::now() + s.opts.step_timeout;
                let occupancy = loop {
                    interrupt::check()?;
                    let o = lb_userspace::inspect::pinned_occupancy(&s.pin)
                        .context("reading the pinned maps")?;
                    let empty =
                        o.frontends == 0 && o.backends == 0 && o.slots == 0 && o.conntrack == 0;
                    if empty || Instant::now() >= deadline {
                        break o;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                };
                s.out(&format!(
                    "SERVICES {} entries, BACKENDS {}, SLOTS {}, CONNTRACK {} (NODE_ADDRS {}: the \
                 node's own addresses)",
                    occupancy.frontends,
                    occupancy.backends,
                    occupancy.slots,
                    occupancy.conntrack,
                    occupancy.node_addresses
                ));
                t.check(occupancy.frontends == 0, "SERVICES holds 0 entries");
                t.check(occupancy.backends == 0, "BACKENDS holds 0 entries");
                t.check(occupancy.slots == 0, "SLOTS holds 0 entries");
                t.check(occupancy.conntrack == 0, "CONNTRACK holds 0 entries");
                Ok(())
            },
        )
    }
}

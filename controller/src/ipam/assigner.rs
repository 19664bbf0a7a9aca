//! The assigner: while this agent holds the Lease, it watches every Service, decides each
//! changed one with [`plan::decide`] and writes the result through the status subresource
//! (a PUT carrying the resourceVersion it decided on, so a concurrent change makes it a 409
//! and the newer version is decided instead). Everything it knows comes from the Services'
//! statuses, listed again whenever it becomes the assigner, so a restart or a takeover keeps
//! every assignment.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use futures::StreamExt as _;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{LoadBalancerStatus, Service, ServiceStatus};
use kube::{
    Api, Client, Resource as _,
    api::PostParams,
    runtime::{
        WatchStreamExt as _,
        events::{Event, EventType, Recorder, Reporter},
        watcher,
    },
};
use kube_lease_manager::{LeaseManagerBuilder, LeaseParams};
use metrics::{counter, gauge};
use tokio::sync::{oneshot, watch};

use super::{
    IpamConfig,
    plan::{self, Claim, Notice, View},
    pool::Allocator,
    status::IpamStatus,
};
use crate::{kube::backoff, model::Key, objects::Kind};

/// Failed status writes are retried this often while the agent is the assigner.
const RETRY: Duration = Duration::from_secs(5);

/// The running assigner; [`IpamHandle::shutdown`] gives the Lease back so another agent
/// takes over at once instead of after the Lease expires.
#[derive(Debug)]
pub struct IpamHandle {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl IpamHandle {
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if tokio::time::timeout(Duration::from_secs(3), &mut self.task)
            .await
            .is_err()
        {
            tracing::warn!(
                "IPAM: the Lease was not released within 3 s; another agent takes over when it expires"
            );
            self.task.abort();
        }
    }
}

/// Starts the assigner for this agent (`identity`: its node name).
pub fn spawn(
    client: Client,
    cfg: IpamConfig,
    pools: Vec<IpNet>,
    identity: String,
    status: Arc<watch::Sender<IpamStatus>>,
) -> IpamHandle {
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(run(client, cfg, pools, identity, status, stopped));
    IpamHandle {
        stop: Some(stop),
        task,
    }
}

async fn run(
    client: Client,
    cfg: IpamConfig,
    pools: Vec<IpNet>,
    identity: String,
    status: Arc<watch::Sender<IpamStatus>>,
    mut stopped: oneshot::Receiver<()>,
) {
    let claim = Claim {
        class: cfg.load_balancer_class.clone(),
        default_class: cfg.default_class,
    };
    let mut delays = backoff::policy();
    let manager = loop {
        let built = LeaseManagerBuilder::new(client.clone(), &cfg.lease_name)
            .with_namespace(&cfg.lease_namespace)
            .with_parameters(LeaseParams::new(
                identity.clone(),
                cfg.lease_duration_seconds,
                cfg.lease_grace_seconds,
            ))
            .build()
            .await;
        match built {
            Ok(m) => break m,
            Err(e) => {
                tracing::warn!(lease = %format!("{}/{}", cfg.lease_namespace, cfg.lease_name), error = %e, "IPAM: cannot reach the Lease; retrying");
                let delay = delays.next().unwrap_or(Duration::from_secs(10));
                tokio::select! {
                    _ = tokio::time::sleep(delay) => continue,
                    _ = &mut stopped => return,
                }
            }
        }
    };
    let (mut leader, lease_task) = manager.watch().await;
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            r = until(&mut leader, true) => if r.is_err() { break },
        }
        set_leader(&status, true);
        tracing::info!(node = %identity, "IPAM: this agent holds the Lease and assigns LoadBalancer IPs");
        let mut work = Assigner::new(client.clone(), &pools, claim.clone(), &identity, &status);
        tokio::select! {
            _ = &mut stopped => { set_leader(&status, false); break }
            r = until(&mut leader, false) => { let _ = r; }
            () = work.run() => {}
        }
        set_leader(&status, false);
        tracing::info!("IPAM: lost the Lease; another agent assigns");
    }
    // Dropping the receiver makes the lease task give the Lease back, then end.
    drop(leader);
    let _ = lease_task.await;
}

async fn until(rx: &mut watch::Receiver<bool>, want: bool) -> Result<(), watch::error::RecvError> {
    rx.wait_for(|v| *v == want).await.map(|_| ())
}

fn set_leader(status: &watch::Sender<IpamStatus>, on: bool) {
    gauge!("sluice_ipam_leader").set(if on { 1.0 } else { 0.0 });
    status.send_modify(|s| {
        s.leader = on;
        s.listed &= on;
    });
}

struct Assigner<'a> {
    client: Client,
    pools: &'a [IpNet],
    claim: Claim,
    recorder: Recorder,
    status: &'a watch::Sender<IpamStatus>,
    objects: HashMap<Key, Service>,
    alloc: Allocator,
    /// Services whose status write failed (not a conflict): retried every [`RETRY`].
    pending: BTreeSet<Key>,
    /// Services refused because their address is taken or the pools are exhausted: decided
    /// again whenever an address is given back.
    waiting: BTreeSet<Key>,
    listed: bool,
}

impl<'a> Assigner<'a> {
    fn new(
        client: Client,
        pools: &'a [IpNet],
        claim: Claim,
        identity: &str,
        status: &'a watch::Sender<IpamStatus>,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "sluice-ipam".into(),
                instance: Some(identity.to_string()),
            },
        );
        Assigner {
            client,
            pools,
            claim,
            recorder,
            status,
            objects: HashMap::new(),
            alloc: Allocator::new(pools),
            pending: BTreeSet::new(),
            waiting: BTreeSet::new(),
            listed: false,
        }
    }

    async fn run(&mut self) {
        // A consistent (not cached) list: decisions are made on the newest statuses.
        let mut stream = watcher(
            Api::<Service>::all(self.client.clone()),
            watcher::Config::default(),
        )
        .backoff(backoff::policy())
        .boxed();
        let mut listing: Option<HashMap<Key, Service>> = None;
        let mut retry = tokio::time::interval(RETRY);
        let mut last_error: Option<String> = None;
        loop {
            tokio::select! {
                item = stream.next() => {
                    let Some(item) = item else { return };
                    match item {
                        Err(e) => {
                            let msg = e.to_string();
                            if last_error.as_deref() != Some(&msg) {
                                tracing::warn!(error = %msg, "IPAM: Service watch failed; retrying");
                                last_error = Some(msg);
                            }
                        }
                        Ok(watcher::Event::Init) => listing = Some(HashMap::new()),
                        Ok(watcher::Event::InitApply(s)) => {
                            listing.get_or_insert_default().insert(key(&s), s);
                        }
                        Ok(watcher::Event::InitDone) => {
                            last_error = None;
                            self.objects = listing.take().unwrap_or_default();
                            self.adopt().await;
                        }
                        Ok(watcher::Event::Apply(s)) => {
                            let k = key(&s);
                            self.objects.insert(k.clone(), s);
                            if self.listed {
                                self.process(&k).await;
                            }
                        }
                        Ok(watcher::Event::Delete(s)) => {
                            let k = key(&s);
                            self.objects.remove(&k);
                            self.pending.remove(&k);
                            self.waiting.remove(&k);
                            if !self.alloc.held_by(&k).is_empty() {
                                self.alloc.release(&k);
                                self.retry_waiting().await;
                            }
                            self.publish_usage();
                        }
                    }
                }
                _ = retry.tick(), if !self.pending.is_empty() => {
                    for k in std::mem::take(&mut self.pending) {
                        self.process(&k).await;
                    }
                }
            }
        }
    }

    /// After a full list: who holds what, from the statuses; then every Service decided,
    /// in key order.
    async fn adopt(&mut self) {
        self.alloc = Allocator::new(self.pools);
        self.pending.clear();
        self.waiting.clear();
        let mut views: Vec<(View, i64)> = self
            .objects
            .values()
            .map(|s| {
                let created = s
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map_or(i64::MAX, |t| t.0.as_second());
                (View::of(s, &self.claim), created)
            })
            .collect();
        for (k, notice) in plan::adopt(&mut views, &mut self.alloc) {
            self.notify(&k, &notice).await;
        }
        self.listed = true;
        let mut keys: Vec<Key> = self.objects.keys().cloned().collect();
        keys.sort();
        for k in keys {
            self.process(&k).await;
        }
        self.publish_usage();
    }

    async fn process(&mut self, k: &Key) {
        let Some(svc) = self.objects.get(k) else {
            return;
        };
        let before = self.alloc.assignments().len();
        let d = plan::decide(&View::of(svc, &self.claim), &mut self.alloc);
        let released = self.alloc.assignments().len() < before;
        if d.notices.iter().any(|n| n.waits()) {
            self.waiting.insert(k.clone());
        } else {
            self.waiting.remove(k);
        }
        for n in &d.notices {
            self.notify(k, n).await;
        }
        if let Some(ips) = d.write {
            self.write(k, &ips).await;
        }
        if released {
            self.retry_waiting().await;
        }
        self.publish_usage();
    }

    /// Decides the waiting services again (an address was given back).
    async fn retry_waiting(&mut self) {
        for k in std::mem::take(&mut self.waiting) {
            Box::pin(self.process(&k)).await;
        }
    }

    async fn write(&mut self, k: &Key, ips: &[std::net::IpAddr]) {
        let Some(mut svc) = self.objects.get(k).cloned() else {
            return;
        };
        let st = svc.status.get_or_insert_with(ServiceStatus::default);
        st.load_balancer = Some(LoadBalancerStatus {
            ingress: (!ips.is_empty()).then(|| plan::ingress(ips)),
        });
        let api: Api<Service> = Api::namespaced(self.client.clone(), &k.namespace);
        match api
            .replace_status(&k.name, &PostParams::default(), &svc)
            .await
        {
            Ok(written) => {
                counter!("sluice_ipam_status_writes_total", "result" => "ok").increment(1);
                self.status.send_modify(|s| s.status_writes += 1);
                self.objects.insert(k.clone(), written);
                self.pending.remove(k);
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                // Changed since we read it: the watch brings the newer version, decided then.
                counter!("sluice_ipam_status_writes_total", "result" => "conflict").increment(1);
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                counter!("sluice_ipam_status_writes_total", "result" => "error").increment(1);
                tracing::warn!(service = %k, error = %e, "IPAM: writing the Service status failed; retrying every 5 s");
                self.pending.insert(k.clone());
            }
        }
    }

    async fn notify(&self, k: &Key, n: &Notice) {
        if n.warning {
            counter!("sluice_ipam_refusals_total", "reason" => n.reason).increment(1);
            self.status
                .send_modify(|s| *s.refusals.entry(n.reason.to_string()).or_default() += 1);
            tracing::warn!(service = %k, reason = n.reason, "IPAM: {}", n.message);
        } else {
            tracing::info!(service = %k, reason = n.reason, "IPAM: {}", n.message);
        }
        let Some(svc) = self.objects.get(k) else {
            return;
        };
        let ev = Event {
            type_: if n.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: n.reason.to_string(),
            note: Some(n.message.clone()),
            action: "AssignLoadBalancerIP".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &svc.object_ref(&())).await {
            tracing::warn!(service = %k, error = %e, "IPAM: could not record an Event");
        }
    }

    fn publish_usage(&self) {
        let usage = self.alloc.usage();
        for u in &usage {
            gauge!("sluice_ipam_pool_addresses", "pool" => u.pool.clone()).set(u.size as f64);
            gauge!("sluice_ipam_pool_assigned", "pool" => u.pool.clone()).set(u.assigned as f64);
        }
        let assignments = self
            .alloc
            .assignments()
            .into_iter()
            .map(|(ip, k)| (ip, k.to_string()))
            .collect();
        self.status.send_modify(|st| {
            st.pools = usage;
            st.assignments = assignments;
            st.listed = true;
        });
    }
}

fn key(s: &Service) -> Key {
    Key::of(Kind::Service, &s.metadata)
}

//! `sluice run`: validates the whole configuration before anything is attached, opens (or
//! adopts) the data path, then runs the sources, the reconcile loop, the API and the metrics
//! listener until SIGTERM/SIGINT. A shutdown leaves the data path serving.
//!
//! - [`config`]: the configuration file and its checks;
//! - [`endpoints`]: `/metrics`, `/healthz`, `/readyz`;
//! - [`reconcile_loop`]: changes -> reconcile rounds (the health-check node ports follow the
//!   tables in [`crate::healthcheck::run`]);
//! - [`standalone`]: the manifest directory and the prober (standalone mode).

pub mod config;
pub mod endpoints;
pub mod reconcile_loop;
pub mod seed;
pub mod standalone;

use std::{net::SocketAddr, time::Duration};

use tokio::net::TcpListener;

pub use config::AgentConfig;

use crate::{files::Directory, metrics, state::Shared, store::Store};

/// Why the agent could not start (each names what failed; the cause is its source).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Ipam(#[from] crate::ipam::config::InvalidIpam),
    #[error(transparent)]
    PeerService(#[from] crate::peers::InvalidPeerService),
    #[error(transparent)]
    Kube(#[from] crate::kube::ClientError),
    #[error("{what} listen address {addr}")]
    Listen {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        cause: std::io::Error,
    },
    #[error("installing the metrics recorder")]
    Metrics(#[from] metrics_exporter_prometheus::BuildError),
    #[error("opening the data path")]
    OpenDataPath(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("reading the data path's node addresses")]
    NodeAddresses(#[source] lb_datapath::Error),
    #[error("restoring API objects: {0}")]
    Restore(String),
}

async fn listen(what: &'static str, addr: SocketAddr) -> Result<TcpListener, AgentError> {
    TcpListener::bind(addr)
        .await
        .map_err(|cause| AgentError::Listen { what, addr, cause })
}

/// Runs the agent until a shutdown signal. `open` opens the data path (the `sluice` binary
/// passes the real one; this crate never links it).
pub async fn run<E: Into<Box<dyn std::error::Error + Send + Sync>>>(
    cfg: AgentConfig,
    open: impl FnOnce(&AgentConfig) -> Result<crate::state::BoxedDataPath, E>,
) -> Result<(), AgentError> {
    let token = cfg.validate()?;
    // Built before the node is touched, so a bad kubeconfig fails fast; building it does not
    // contact the API server.
    let kube = if cfg.kubernetes() {
        Some(crate::kube::client(&cfg).await?)
    } else {
        None
    };
    let api_listener = listen("API", cfg.api_listen).await?;
    let metrics_listener = listen("metrics", cfg.metrics_listen).await?;
    let prom = metrics::install()?;

    let dp = open(&cfg).map_err(|e| AgentError::OpenDataPath(e.into()))?;
    let adopted = dp.service_names();
    if !adopted.is_empty() {
        tracing::info!(
            services = adopted.len(),
            "adopted pinned services; none is removed before every source listed once"
        );
    }
    let interface_addresses = dp.node_addresses().map_err(AgentError::NodeAddresses)?;
    let protections = cfg.protections(interface_addresses);
    tracing::info!(
        node_port_range = %protections.node_port_range,
        agent_ports = ?protections.agent_ports,
        node_addresses = ?protections.interface_addresses,
        "services may take no NodePort outside the range, of the agent or listened on, and no address of the node"
    );
    let store = if kube.is_some() {
        let mut s = Store::default();
        s.tables.set_protections(protections);
        s.set_cluster_mode();
        s
    } else {
        Store::open(&cfg.state_dir, protections).map_err(AgentError::Restore)?
    };
    let peers = cfg
        .peer_service
        .as_deref()
        .map(crate::peers::parse_service)
        .transpose()?;
    let shared = Shared::new(dp, token).with_peer_service(peers);
    *shared.store.lock().await = store;
    let mut health = endpoints::Health::new(
        shared.clone(),
        Duration::from_secs(cfg.healthz_max_age_seconds),
        prom,
    );
    health.per_backend = cfg.per_backend_metrics;

    // Sources register before the listeners serve, so `/readyz` never answers before it
    // knows what it waits for.
    let mut tasks = tokio::task::JoinSet::new();
    let mut watchers = None;
    let mut ipam = None;
    match kube {
        Some(client) => {
            let node = cfg.node_name();
            tracing::info!(node = %node, "Kubernetes mode: watching Services, EndpointSlices, this Node, Deployments, ReplicaSets");
            if let Some(pools) = cfg.ipam.validate()? {
                shared.ipam.send_modify(|s| s.enabled = true);
                tracing::info!(pools = ?cfg.ipam.pools, lease = %format!("{}/{}", cfg.ipam.lease_namespace, cfg.ipam.lease_name), "IPAM on: the Lease holder assigns LoadBalancer IPs");
                ipam = Some(crate::ipam::spawn(
                    client.clone(),
                    cfg.ipam.clone(),
                    pools,
                    node.clone(),
                    shared.ipam.clone(),
                ));
            }
            watchers = Some(crate::kube::spawn(&shared, client, &node));
        }
        None => {
            if let Some(dir) = cfg.manifests.clone() {
                shared.sources.register(standalone::FILES_SOURCE);
                tasks.spawn(standalone::watch_files(
                    shared.clone(),
                    Directory::new(dir),
                    Duration::from_millis(cfg.poll_millis),
                ));
            }
            tasks.spawn(standalone::probe_loop(shared.clone()));
        }
    }
    let api = crate::api::router(shared.clone());
    tasks.spawn(async move {
        if let Err(e) = axum::serve(api_listener, api).await {
            tracing::error!(error = %e, "API server stopped");
        }
    });
    let mrouter = endpoints::router(health.clone());
    tasks.spawn(async move {
        if let Err(e) = axum::serve(metrics_listener, mrouter).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    tracing::info!(api = %cfg.api_listen, metrics = %cfg.metrics_listen, "listening");

    let proxy_health = health.clone();
    let checks = crate::healthcheck::HealthChecks::new(
        crate::healthcheck::Wildcards,
        std::sync::Arc::new(move || {
            let h = proxy_health.clone();
            Box::pin(async move { h.healthy().await })
        }),
    );
    tasks.spawn(crate::healthcheck::run(
        shared.clone(),
        health.ready.subscribe(),
        checks,
    ));
    tasks.spawn(reconcile_loop::run(
        shared.clone(),
        health,
        Duration::from_secs(cfg.resync_seconds),
        cfg.node_name(),
        cfg.seed_plan(),
    ));

    shutdown_signal().await;
    tracing::info!("shutting down; the data path keeps serving (uninstall removes it)");
    if let Some(mut w) = watchers {
        w.abort_all();
    }
    if let Some(i) = ipam {
        // Gives the Lease back so another agent assigns at once.
        i.shutdown().await;
    }
    tasks.abort_all();
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
}

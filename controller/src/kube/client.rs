//! The Kubernetes client: from a kubeconfig file, or in-cluster (the pod's service account,
//! `KUBERNETES_SERVICE_HOST`). Building it does not contact the API server, so an agent
//! whose API server is down still starts and keeps its data path forwarding.

use anyhow::Context as _;
use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};

use crate::agent::AgentConfig;

pub async fn client(cfg: &AgentConfig) -> anyhow::Result<Client> {
    let config = match &cfg.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None => Config::incluster().context(
            "in-cluster Kubernetes configuration (KUBERNETES_SERVICE_HOST and the service \
             account token); outside a pod pass --kubeconfig PATH",
        )?,
    };
    Client::try_from(config).context("building the Kubernetes client")
}

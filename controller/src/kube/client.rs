//! The Kubernetes client: from a kubeconfig file, or in-cluster (the pod's service account,
//! `KUBERNETES_SERVICE_HOST`). Building it does not contact the API server, so an agent
//! whose API server is down still starts and keeps its data path forwarding.

use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};

use std::path::PathBuf;

use crate::agent::AgentConfig;

/// Why no client could be built (the cause is the error's source).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("reading kubeconfig {path}")]
    ReadKubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("kubeconfig {path}")]
    Kubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error(
        "in-cluster Kubernetes configuration (KUBERNETES_SERVICE_HOST and the service account \
         token; outside a pod pass --kubeconfig PATH)"
    )]
    InCluster(#[source] kube::config::InClusterError),
    #[error("building the Kubernetes client")]
    Build(#[source] kube::Error),
}

pub async fn client(cfg: &AgentConfig) -> Result<Client, ClientError> {
    let config = match &cfg.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|source| ClientError::ReadKubeconfig {
                path: path.clone(),
                source,
            })?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|source| ClientError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?
        }
        None => Config::incluster().map_err(ClientError::InCluster)?,
    };
    Client::try_from(config).map_err(ClientError::Build)
}

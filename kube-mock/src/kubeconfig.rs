//! How clients reach the mock: a kube `Client` in-process, or a kubeconfig file for a separate
//! process (`--kubeconfig PATH`).

use std::path::Path;

use crate::error::{Error, Result};
use crate::server::MockApiServer;

/// A kubeconfig with one cluster, user and context named `name`, pointing at `server`.
/// `ca_pem` (the cluster's CA, PEM) and `token` are optional; without them the user is
/// anonymous and the server is trusted as given (plain http for the mock).
pub fn kubeconfig_yaml(
    name: &str,
    server: &str,
    ca_pem: Option<&str>,
    token: Option<&str>,
) -> String {
    use base64::Engine as _;
    let ca = ca_pem
        .map(|pem| {
            format!(
                "\n    certificate-authority-data: {}",
                base64::engine::general_purpose::STANDARD.encode(pem)
            )
        })
        .unwrap_or_default();
    let user = token
        .map(|t| format!("\n    token: {t}"))
        .unwrap_or_else(|| " {}".to_string());
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: {name}
  cluster:
    server: {server}{ca}
users:
- name: {name}
  user:{user}
contexts:
- name: {name}
  context:
    cluster: {name}
    user: {name}
    namespace: default
current-context: {name}
preferences: {{}}
"
    )
}

/// Writes `text` to `path`, creating parent directories.
pub(crate) fn write_file(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::io(format!("create {}", parent.display()), e))?;
    }
    std::fs::write(path, text).map_err(|e| Error::io(format!("write {}", path.display()), e))
}

/// A kube client from kubeconfig YAML text (must be called inside a tokio runtime).
pub async fn client_from_kubeconfig(yaml: &str) -> Result<kube::Client> {
    let kubeconfig =
        kube::config::Kubeconfig::from_yaml(yaml).map_err(|e| Error::Kubeconfig(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|e| Error::Kubeconfig(e.to_string()))?;
    Ok(kube::Client::try_from(config)?)
}

impl MockApiServer {
    /// A kubeconfig pointing at `http://<addr>`, without authentication.
    pub fn kubeconfig(&self) -> String {
        kubeconfig_yaml("kube-mock", &self.url(), None, None)
    }

    /// Writes [`MockApiServer::kubeconfig`] to `path`, for a process started with
    /// `--kubeconfig PATH`.
    pub fn write_kubeconfig(&self, path: impl AsRef<Path>) -> Result<()> {
        write_file(path.as_ref(), &self.kubeconfig())
    }

    /// The kube client configuration for this server (default namespace `default`).
    pub fn config(&self) -> kube::Config {
        let url = self
            .url()
            .parse()
            .expect("an http URL of a socket address is a valid URI");
        kube::Config::new(url)
    }

    /// A kube client of this server. Must be called inside a tokio runtime (the client's
    /// buffer runs as a task on it).
    pub fn client(&self) -> Result<kube::Client> {
        Ok(kube::Client::try_from(self.config())?)
    }
}

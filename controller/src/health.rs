//! Active health checks for endpoints whose slice declares a probe (annotation
//! `sluice.io/readiness-probe`), as a kubelet readiness probe would: TCP connect or HTTP GET,
//! every `periodSeconds`, each attempt bounded by `timeoutSeconds`; an endpoint becomes ready
//! after `successThreshold` consecutive successes and not ready after `failureThreshold`
//! consecutive failures. Results feed the desired state (`desired::ProbeResults`).

use std::{net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};

use crate::http_client;

/// The probe, in the shape of a Kubernetes `readinessProbe` (tcpSocket or httpGet).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Probe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocket>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGet>,
    #[serde(default = "one")]
    pub period_seconds: u64,
    #[serde(default = "one")]
    pub timeout_seconds: u64,
    #[serde(default = "one")]
    pub success_threshold: u32,
    #[serde(default = "three")]
    pub failure_threshold: u32,
}

fn one<T: From<u8>>() -> T {
    T::from(1)
}
fn three() -> u32 {
    3
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpSocket {
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpGet {
    #[serde(default = "root")]
    pub path: String,
    pub port: u16,
}

fn root() -> String {
    "/".into()
}

impl Probe {
    /// Parses the annotation (JSON or YAML) and checks it.
    pub fn parse(text: &str) -> Result<Probe, String> {
        let p: Probe = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        match (&p.tcp_socket, &p.http_get) {
            (Some(_), None) | (None, Some(_)) => {}
            _ => return Err("exactly one of tcpSocket and httpGet".into()),
        }
        if p.tcp_socket.as_ref().is_some_and(|t| t.port == 0)
            || p.http_get.as_ref().is_some_and(|h| h.port == 0)
        {
            return Err("the probe port must be 1..=65535".into());
        }
        if p.http_get
            .as_ref()
            .is_some_and(|h| !h.path.starts_with('/') || h.path.contains(['\r', '\n', ' ']))
        {
            return Err("httpGet.path must start with / and hold no spaces or line breaks".into());
        }
        if !(1..=3600).contains(&p.period_seconds) || !(1..=3600).contains(&p.timeout_seconds) {
            return Err("periodSeconds and timeoutSeconds must be 1..=3600".into());
        }
        if !(1..=100).contains(&p.success_threshold) || !(1..=100).contains(&p.failure_threshold) {
            return Err("successThreshold and failureThreshold must be 1..=100".into());
        }
        Ok(p)
    }

    pub fn period(&self) -> Duration {
        Duration::from_secs(self.period_seconds)
    }

    /// One attempt against `ip`: Ok when the endpoint passes.
    pub async fn check(&self, ip: std::net::IpAddr) -> Result<(), String> {
        let timeout = Duration::from_secs(self.timeout_seconds);
        let attempt = async {
            if let Some(t) = &self.tcp_socket {
                tokio::net::TcpStream::connect(SocketAddr::new(ip, t.port))
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            } else if let Some(h) = &self.http_get {
                http_get(SocketAddr::new(ip, h.port), &h.path, timeout).await
            } else {
                Err("no probe".into())
            }
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| format!("timed out after {timeout:?}"))?
    }
}

/// An HTTP GET through the one HTTP client (blocking, so on the blocking pool), bounded by
/// `timeout` for connecting and each read and write (the caller bounds the whole attempt).
async fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(), String> {
    let path = path.to_string();
    let answer = tokio::task::spawn_blocking(move || {
        http_client::request(
            addr,
            "GET",
            &path,
            &[("User-Agent", "sluice-probe")],
            None,
            timeout,
        )
    })
    .await
    .map_err(|e| format!("probe task failed: {e}"))?
    .map_err(|e| e.to_string())?;
    // As the kubelet: 200..=399 passes (a redirect is not followed).
    if (200..400).contains(&answer.status) {
        Ok(())
    } else {
        Err(format!("HTTP status {}", answer.status))
    }
}

/// Consecutive-result thresholds of one endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tracker {
    pub ready: bool,
    successes: u32,
    failures: u32,
}

impl Tracker {
    /// Records one result; returns true when `ready` changed.
    pub fn record(&mut self, probe: &Probe, ok: bool) -> bool {
        if ok {
            self.successes += 1;
            self.failures = 0;
            if !self.ready && self.successes >= probe.success_threshold {
                self.ready = true;
                return true;
            }
        } else {
            self.failures += 1;
            self.successes = 0;
            if self.ready && self.failures >= probe.failure_threshold {
                self.ready = false;
                return true;
            }
        }
        false
    }
}

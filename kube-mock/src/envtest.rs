//! The envtest convention: when `KUBEBUILDER_ASSETS` names a folder holding `kube-apiserver`
//! and `etcd`, run a real API server (etcd in a temporary data directory, kube-apiserver with
//! a self-signed serving certificate, a static token for an admin in `system:masters`, and
//! the service-account flags envtest passes), hand out a kube client of it, and stop both
//! processes (by PID) when dropped. Otherwise report the test as skipped.
//!
//! The flags follow controller-runtime's envtest control plane (`pkg/internal/testing/
//! controlplane`): etcd with `--listen-peer-urls=http://localhost:0`, client URLs, a data dir
//! and `--unsafe-no-fsync` where supported; kube-apiserver with `--etcd-servers`, `--cert-dir`,
//! `--secure-port`, `--bind-address`, `--service-cluster-ip-range`, `--allow-privileged`,
//! `--disable-admission-plugins=ServiceAccount`, `--authorization-mode=RBAC` and the three
//! `--service-account-*` flags. envtest picks free ports by binding and releasing them; this
//! crate never does, so ports are derived from the process id and the next candidate is tried
//! when a process reports "address already in use".

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{Error, Result};
use crate::kubeconfig::{client_from_kubeconfig, kubeconfig_yaml, write_file};

/// The environment variable naming the folder with the binaries.
pub const ASSETS_VAR: &str = "KUBEBUILDER_ASSETS";

/// What a test prints when it skips for lack of binaries.
pub const CONVENTION: &str = "envtest convention: a folder with kube-apiserver and etcd";

/// How long each process may take to become ready (kube-apiserver takes 5-20 s on two busy
/// cores).
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// How many port candidates are tried per process.
const PORT_ATTEMPTS: u32 = 8;

/// The outcome of [`start`]: a running API server, or why the test is skipped.
#[derive(Debug)]
pub enum Envtest {
    /// The binaries were found and both processes are ready.
    Running(Box<EnvtestServer>),
    /// `KUBEBUILDER_ASSETS` is unset or its folder lacks a binary; the reason is printable.
    Skipped(Skipped),
}

/// Why envtest did not run, e.g. `KUBEBUILDER_ASSETS not set (envtest convention: ...)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped(pub String);

impl Skipped {
    /// Writes `skipped: <reason>` straight to the process's stderr, so that it shows even
    /// when the test harness captures test output (it captures `print!`/`eprint!` only).
    pub fn report(&self) {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), "{self}");
    }
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "skipped: {}", self.0)
    }
}

/// Where the binaries are, or why the test is skipped.
pub fn assets() -> std::result::Result<(PathBuf, PathBuf), Skipped> {
    assets_in(std::env::var_os(ASSETS_VAR))
}

/// [`assets`] for a given value of the variable.
fn assets_in(var: Option<std::ffi::OsString>) -> std::result::Result<(PathBuf, PathBuf), Skipped> {
    let Some(dir) = var.filter(|d| !d.is_empty()) else {
        return Err(Skipped(format!("{ASSETS_VAR} not set ({CONVENTION})")));
    };
    let dir = PathBuf::from(dir);
    let find = |name: &str| {
        let path = dir.join(name);
        if path.is_file() {
            Ok(path)
        } else {
            Err(Skipped(format!(
                "{ASSETS_VAR}={} has no {name} ({CONVENTION})",
                dir.display()
            )))
        }
    };
    Ok((find("kube-apiserver")?, find("etcd")?))
}

/// Starts etcd and kube-apiserver from `KUBEBUILDER_ASSETS`, or says why not. Errors are
/// failures to start binaries that are there (the test should fail, not skip).
pub async fn start() -> Result<Envtest> {
    let (apiserver_bin, etcd_bin) = match assets() {
        Ok(paths) => paths,
        Err(skipped) => return Ok(Envtest::Skipped(skipped)),
    };
    let server = EnvtestServer::start(&apiserver_bin, &etcd_bin).await?;
    Ok(Envtest::Running(Box::new(server)))
}

/// A running etcd + kube-apiserver pair; dropping it stops both and removes their files.
pub struct EnvtestServer {
    // Fields drop in order: the API server before etcd, the directory last.
    apiserver: ChildGuard,
    etcd: ChildGuard,
    url: String,
    kubeconfig: String,
    client: kube::Client,
    dir: TempDir,
}

impl fmt::Debug for EnvtestServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvtestServer")
            .field("url", &self.url)
            .field("apiserver", &self.apiserver)
            .field("etcd", &self.etcd)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl EnvtestServer {
    async fn start(apiserver_bin: &Path, etcd_bin: &Path) -> Result<Self> {
        let dir = TempDir::new("kube-mock-envtest")?;
        let certs = Certs::generate()?;
        let token = random_token();
        certs.write(dir.path())?;
        // user,uid,"groups": system:masters passes RBAC for everything.
        write_file(
            &dir.path().join("token.csv"),
            &format!("{token},kube-mock-admin,kube-mock-admin,\"system:masters\"\n"),
        )?;
        let etcd = start_etcd(etcd_bin, dir.path()).await?;
        let (apiserver, url, kubeconfig, client) =
            start_apiserver(apiserver_bin, dir.path(), &etcd.1, &certs.ca_pem, &token).await?;
        Ok(Self {
            apiserver,
            etcd: etcd.0,
            url,
            kubeconfig,
            client,
            dir,
        })
    }

    /// A kube client authenticated as an admin (`system:masters`).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A kubeconfig with the CA and the admin token, for a separate process.
    pub fn kubeconfig(&self) -> String {
        self.kubeconfig.clone()
    }

    /// Writes [`EnvtestServer::kubeconfig`] to `path`.
    pub fn write_kubeconfig(&self, path: impl AsRef<Path>) -> Result<()> {
        write_file(path.as_ref(), &self.kubeconfig)
    }

    /// The folder with the certificates, the token file, etcd's data and both logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process ids of (kube-apiserver, etcd).
    pub fn pids(&self) -> (u32, u32) {
        (self.apiserver.child.id(), self.etcd.child.id())
    }
}

/// Port candidates derived from the process id, in 20000-29999: below the NodePort range
/// (30000-32767) and the kernel's ephemeral ports (32768 and up).
fn candidate_port(salt: u32, attempt: u32) -> u16 {
    let pid = std::process::id();
    let offset = pid
        .wrapping_mul(7)
        .wrapping_add(salt)
        .wrapping_add(attempt.wrapping_mul(1031));
    20000 + (offset % 10000) as u16
}

/// Starts etcd; returns its guard and client URL.
async fn start_etcd(bin: &Path, dir: &Path) -> Result<(ChildGuard, String)> {
    let no_fsync = supports_flag(bin, "unsafe-no-fsync");
    let data_dir = dir.join("etcd-data");
    let mut last_error = String::new();
    for attempt in 0..PORT_ATTEMPTS {
        let port = candidate_port(0, attempt);
        let url = format!("http://127.0.0.1:{port}");
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--data-dir={}", data_dir.display()))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg("--listen-peer-urls=http://localhost:0");
        if no_fsync {
            cmd.arg("--unsafe-no-fsync=true");
        }
        let log = dir.join(format!("etcd-{attempt}.log"));
        let mut guard = ChildGuard::spawn("etcd", cmd, &log)?;
        match wait_ready(&mut guard, &log, || etcd_healthy(port)).await {
            Ok(()) => return Ok((guard, url)),
            Err(Retry::PortInUse(msg)) => last_error = msg,
            Err(Retry::Fatal(err)) => return Err(err),
        }
        drop(guard);
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    Err(Error::Envtest(format!(
        "etcd found no free port: {last_error}"
    )))
}

/// Starts kube-apiserver; returns its guard, URL, kubeconfig and an admin client.
async fn start_apiserver(
    bin: &Path,
    dir: &Path,
    etcd_url: &str,
    ca_pem: &str,
    token: &str,
) -> Result<(ChildGuard, String, String, kube::Client)> {
    let path = |f: &str| dir.join(f).display().to_string();
    let mut last_error = String::new();
    for attempt in 0..PORT_ATTEMPTS {
        let port = candidate_port(5000, attempt);
        let url = format!("https://127.0.0.1:{port}");
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--etcd-servers={etcd_url}"))
            .arg(format!("--cert-dir={}", dir.display()))
            .arg(format!("--tls-cert-file={}", path("apiserver.crt")))
            .arg(format!("--tls-private-key-file={}", path("apiserver.key")))
            .arg(format!("--secure-port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg("--service-cluster-ip-range=10.96.0.0/12")
            .arg("--allow-privileged=true")
            .arg("--disable-admission-plugins=ServiceAccount")
            .arg("--authorization-mode=RBAC")
            .arg(format!("--token-auth-file={}", path("token.csv")))
            .arg(format!("--service-account-issuer={url}/"))
            .arg(format!("--service-account-key-file={}", path("sa.pub")))
            .arg(format!(
                "--service-account-signing-key-file={}",
                path("sa.key")
            ));
        let log = dir.join(format!("kube-apiserver-{attempt}.log"));
        let mut guard = ChildGuard::spawn("kube-apiserver", cmd, &log)?;
        let kubeconfig = kubeconfig_yaml("envtest", &url, Some(ca_pem), Some(token));
        let client = client_from_kubeconfig(&kubeconfig).await?;
        let probe = client.clone();
        let ready = wait_ready(&mut guard, &log, || apiserver_ready(probe.clone())).await;
        match ready {
            Ok(()) => return Ok((guard, url, kubeconfig, client)),
            Err(Retry::PortInUse(msg)) => last_error = msg,
            Err(Retry::Fatal(err)) => return Err(err),
        }
    }
    Err(Error::Envtest(format!(
        "kube-apiserver found no free port: {last_error}"
    )))
}

enum Retry {
    PortInUse(String),
    Fatal(Error),
}

/// Waits until `probe` succeeds, the process exits (port in use: retry; else fatal), or the
/// start timeout passes. Readiness of a foreign process has no event to wait on, so this
/// probes at a short interval, as envtest does.
async fn wait_ready<F, Fut>(guard: &mut ChildGuard, log: &Path, mut probe: F) -> Result<(), Retry>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = guard.child.try_wait() {
            let tail = log_tail(log);
            return Err(if tail.contains("address already in use") {
                Retry::PortInUse(tail)
            } else {
                Retry::Fatal(Error::Envtest(format!(
                    "{} exited ({status}) before it was ready:\n{tail}",
                    guard.name
                )))
            });
        }
        if probe().await {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Retry::Fatal(Error::Envtest(format!(
                "{} not ready after {START_TIMEOUT:?}:\n{}",
                guard.name,
                log_tail(log)
            ))));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET /health` on etcd's client port answers `"health":"true"`.
async fn etcd_healthy(port: u16) -> bool {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        stream
            .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        Some(response.contains("\"health\":\"true\""))
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// `/readyz` answers `ok` and the `default` namespace exists (the API server creates it
/// right after it starts serving).
async fn apiserver_ready(client: kube::Client) -> bool {
    let readyz = http::Request::get("/readyz").body(Vec::new());
    let Ok(readyz) = readyz else { return false };
    let attempt = async {
        let body = client.request_text(readyz).await.ok()?;
        if body.trim() != "ok" {
            return Some(false);
        }
        let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client);
        Some(namespaces.get_opt("default").await.ok()?.is_some())
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Whether `bin --help` mentions `--flag`.
fn supports_flag(bin: &Path, flag: &str) -> bool {
    Command::new(bin)
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .map(|out| {
            let text = [out.stdout, out.stderr].concat();
            String::from_utf8_lossy(&text).contains(&format!("--{flag}"))
        })
        .unwrap_or(false)
}

/// The last lines of a log file.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A random hex token (std's hasher keys are random per process and per instance).
fn random_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let part = || {
        let mut h = std::hash::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.finish()
    };
    format!("{:016x}{:016x}", part(), part())
}

/// The certificates and keys the API server needs.
struct Certs {
    ca_pem: String,
    serving_pem: String,
    serving_key_pem: String,
    sa_key_pem: String,
    sa_pub_pem: String,
}

impl Certs {
    fn generate() -> Result<Self> {
        let err = |e: rcgen::Error| Error::Envtest(format!("certificate generation: {e}"));
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kube-mock envtest CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca_key = rcgen::KeyPair::generate().map_err(err)?;
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).map_err(err)?;

        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .map_err(err)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kube-apiserver");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().map_err(err)?;
        let serving = params.signed_by(&key, &ca).map_err(err)?;

        let sa_key = rcgen::KeyPair::generate().map_err(err)?;
        Ok(Self {
            ca_pem: ca.pem(),
            serving_pem: serving.pem(),
            serving_key_pem: key.serialize_pem(),
            sa_key_pem: sa_key.serialize_pem(),
            sa_pub_pem: sa_key.public_key_pem(),
        })
    }

    fn write(&self, dir: &Path) -> Result<()> {
        write_file(&dir.join("ca.crt"), &self.ca_pem)?;
        write_file(&dir.join("apiserver.crt"), &self.serving_pem)?;
        write_file(&dir.join("apiserver.key"), &self.serving_key_pem)?;
        write_file(&dir.join("sa.key"), &self.sa_key_pem)?;
        write_file(&dir.join("sa.pub"), &self.sa_pub_pem)
    }
}

/// A child process stopped on drop: SIGTERM to its PID, then SIGKILL after a grace period.
#[derive(Debug)]
struct ChildGuard {
    name: &'static str,
    child: Child,
}

impl ChildGuard {
    fn spawn(name: &'static str, mut cmd: Command, log: &Path) -> Result<Self> {
        let out = std::fs::File::create(log)
            .map_err(|e| Error::io(format!("create {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| Error::io(format!("clone {}", log.display()), e))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| Error::io(format!("spawn {name}"), e))?;
        Ok(Self { name, child })
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) with the PID of our own child, which has not been reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory removed on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> Result<Self> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "{prefix}-{}-{n}-{}",
            std::process::id(),
            &random_token()[..8]
        ));
        std::fs::create_dir_all(&path)
            .map_err(|e| Error::io(format!("create {}", path.display()), e))?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_generate() {
        let certs = Certs::generate().expect("certs");
        assert!(certs.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(certs.sa_pub_pem.contains("PUBLIC KEY"));
        assert!(certs.serving_key_pem.contains("PRIVATE KEY"));
    }

    #[test]
    fn skips_without_the_binaries() {
        let unset = assets_in(None).expect_err("unset");
        assert_eq!(
            unset.to_string(),
            "skipped: KUBEBUILDER_ASSETS not set (envtest convention: a folder with kube-apiserver and etcd)"
        );
        let dir = TempDir::new("kube-mock-assets").expect("dir");
        let var = Some(dir.path().as_os_str().to_owned());
        let lacking = assets_in(var.clone()).expect_err("empty folder");
        assert!(lacking.0.contains("has no kube-apiserver"), "{lacking}");
        for bin in ["kube-apiserver", "etcd"] {
            std::fs::write(dir.path().join(bin), "").expect("fake binary");
        }
        let (apiserver, etcd) = assets_in(var).expect("found");
        assert!(apiserver.ends_with("kube-apiserver") && etcd.ends_with("etcd"));
    }

    #[test]
    fn ports_stay_in_range() {
        for attempt in 0..PORT_ATTEMPTS {
            let p = candidate_port(5000, attempt);
            assert!((20000..30000).contains(&p));
            assert_ne!(p, candidate_port(0, attempt));
        }
    }
}

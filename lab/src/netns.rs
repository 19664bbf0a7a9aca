//! Named network namespaces held by an RAII guard.
//!
//! A [`Netns`] is created with `ip netns add` under a name that is unique per process and per
//! call (`sl<pid>-<counter><role>`, e.g. `sl4711-3node`), so tests running in parallel threads
//! or processes never collide. Dropping the guard runs `ip netns delete`, which removes the
//! name and, once nothing else holds the namespace, the namespace itself with every interface
//! in it (veth pairs disappear together with either end). The guard never kills anything: a
//! process that still runs inside the namespace keeps it alive until it exits.
//!
//! Code runs inside the namespace in two ways, both of which leave the mount namespace alone
//! (so bpffs pins under `/sys/fs/bpf` and `/run/netns` stay visible):
//! - closures: [`Netns::enter`] runs one on a fresh thread that has called
//!   `setns(CLONE_NEWNET)`; sockets created there stay in the namespace after the thread ends;
//! - commands: [`Netns::run`], [`Netns::command`] and [`Netns::spawn`] go through
//!   `nsenter --net=/run/netns/NAME`.

use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use crate::error::{Context as _, Result, bail, ensure};
use nix::sched::CloneFlags;

use crate::cmd;
use crate::process::Process;

/// Directory where `ip netns` keeps its namespace handles.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Prefix of every namespace name this crate creates.
pub const NAME_PREFIX: &str = "sl";

/// Longest accepted role suffix, keeping names short (typically at most 15 characters).
const MAX_ROLE_LEN: usize = 6;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Serialises `ip netns add` within this process: the first call sets up the shared
/// `/run/netns` mount, and concurrent first calls could stack that mount twice.
static ADD_LOCK: Mutex<()> = Mutex::new(());

/// A named network namespace, deleted on drop.
///
/// The namespace starts with its loopback interface up.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    /// Creates a namespace named `sl<pid>-<counter><role>`.
    ///
    /// `role` is a short tag (1 to 6 ASCII letters or digits, e.g. `node`, `cli`, `p12`) that
    /// makes the name readable in `ip netns list`.
    pub fn new(role: &str) -> Result<Self> {
        ensure!(
            !role.is_empty()
                && role.len() <= MAX_ROLE_LEN
                && role.bytes().all(|b| b.is_ascii_alphanumeric()),
            "netns role {role:?} must be 1 to {MAX_ROLE_LEN} ASCII letters or digits"
        );
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{NAME_PREFIX}{}-{n}{role}", std::process::id());
        let path = Path::new(NETNS_RUN_DIR).join(&name);
        {
            let _guard = ADD_LOCK
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            cmd::run("ip", ["netns", "add", name.as_str()])
                .with_context(|| format!("cannot create network namespace {name}"))?;
        }
        let ns = Self { name, path };
        // From here on, `ns` deletes the namespace if anything below fails.
        ns.run("ip", ["link", "set", "dev", "lo", "up"])?;
        tracing::debug!(netns = %ns.name, "created network namespace");
        Ok(ns)
    }

    /// The namespace's name, as `ip netns list` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace handle, `/run/netns/NAME`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open(&self) -> Result<File> {
        File::open(&self.path)
            .with_context(|| format!("cannot open namespace handle {}", self.path.display()))
    }

    /// Runs `f` on a fresh thread inside this network namespace and returns its result.
    ///
    /// Only the network namespace changes (`setns(CLONE_NEWNET)` on that thread); the mount
    /// namespace stays the caller's, so `/sys/fs/bpf` pins remain visible. Sockets, BPF
    /// attachments by interface name and `/proc/thread-self/net`, `/proc/sys/net` all refer to
    /// this namespace inside `f`. Sockets created in `f` may be returned and used from any
    /// thread afterwards: they stay in the namespace they were created in.
    ///
    /// A panic inside `f` is resumed on the calling thread. The error case is only for failing
    /// to enter the namespace.
    pub fn enter<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let file = self.open()?;
        let name = &self.name;
        std::thread::scope(|scope| {
            let handle = std::thread::Builder::new()
                .name(format!("netns-{name}"))
                .spawn_scoped(scope, move || -> Result<R> {
                    nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                        .with_context(|| format!("setns into network namespace {name}"))?;
                    drop(file);
                    Ok(f())
                })
                .context("cannot spawn a thread to enter a network namespace")?;
            match handle.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Spawns a long-running thread inside this network namespace (for example a server loop).
    ///
    /// The thread's result is `Err` only if entering the namespace failed. Joining the handle
    /// yields the thread's panic, if any, as usual.
    pub fn thread<F, R>(&self, f: F) -> Result<JoinHandle<Result<R>>>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let file = self.open()?;
        let name = self.name.clone();
        std::thread::Builder::new()
            .name(format!("netns-{name}"))
            .spawn(move || -> Result<R> {
                nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("setns into network namespace {name}"))?;
                drop(file);
                Ok(f())
            })
            .context("cannot spawn a thread in a network namespace")
    }

    /// A command that runs `program` inside this namespace through
    /// `nsenter --net=/run/netns/NAME -- program`; add arguments, environment and stdio as
    /// usual. `nsenter` execs the program, so the child's PID is the program's own.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path.display()))
            .arg("--")
            .arg(program);
        c
    }

    /// Runs `program args...` inside this namespace to completion and returns its stdout.
    ///
    /// A non-zero exit is an error carrying the command line, the exit status and the stderr.
    pub fn run<I, S>(&self, program: &str, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = self.command(program);
        c.args(args);
        cmd::output(&mut c).with_context(|| format!("in network namespace {}", self.name))
    }

    /// Writes a sysctl of this namespace, e.g. `sysctl("net.ipv4.ip_forward", "1")`.
    ///
    /// `key` is dotted (`net.ipv4.conf.all.rp_filter`) or a path below `/proc/sys` with slashes
    /// (use that form for interface names that contain dots).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = sysctl_path(key);
        self.enter(|| std::fs::write(&path, value))?
            .with_context(|| format!("cannot set {key} = {value:?} in netns {}", self.name))
    }

    /// Reads a sysctl of this namespace (trimmed); `key` as for [`Netns::sysctl`].
    pub fn read_sysctl(&self, key: &str) -> Result<String> {
        let path = sysctl_path(key);
        let value = self
            .enter(|| std::fs::read_to_string(&path))?
            .with_context(|| format!("cannot read {key} in netns {}", self.name))?;
        Ok(value.trim().to_owned())
    }

    /// Spawns `cmd` (program, arguments, environment, working directory) inside this
    /// namespace via `nsenter --net`, with stdin closed, stdout piped for
    /// [`Process::wait_for_line`] and stderr inherited.
    ///
    /// The returned guard terminates the process on drop. Scripts should `exec` their
    /// long-running command: only the spawned PID is signalled.
    pub fn spawn(&self, cmd: &Command) -> Result<Process> {
        let mut c = self.command(cmd.get_program());
        c.args(cmd.get_args());
        for (key, value) in cmd.get_envs() {
            match value {
                Some(value) => c.env(key, value),
                None => c.env_remove(key),
            };
        }
        if let Some(dir) = cmd.get_current_dir() {
            c.current_dir(dir);
        }
        Process::spawn(c).with_context(|| format!("in network namespace {}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        match cmd::run("ip", ["netns", "delete", self.name.as_str()]) {
            Ok(_) => tracing::debug!(netns = %self.name, "deleted network namespace"),
            Err(e) => {
                tracing::warn!(netns = %self.name, "cannot delete network namespace: {e:#}");
                eprintln!("lab: cannot delete network namespace {}: {e:#}", self.name);
            }
        }
    }
}

fn sysctl_path(key: &str) -> PathBuf {
    let rel = if key.contains('/') {
        key.trim_start_matches('/').to_owned()
    } else {
        key.replace('.', "/")
    };
    Path::new("/proc/sys").join(rel)
}

/// Whether a namespace named `name` exists (has a handle under `/run/netns`).
pub fn exists(name: &str) -> bool {
    Path::new(NETNS_RUN_DIR).join(name).exists()
}

/// Deletes namespaces left behind by lab processes that no longer run (for example a test
/// binary killed by a timeout), returning their names.
///
/// Only names of this crate's form `sl<pid>-...` whose `<pid>` is not a running process are
/// touched; namespaces of live processes, including this one, are left alone.
pub fn remove_stale() -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(NETNS_RUN_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).context("cannot list /run/netns"),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let name = entry.context("cannot list /run/netns")?.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(pid) = owner_pid(name) else { continue };
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        cmd::run("ip", ["netns", "delete", name])
            .with_context(|| format!("cannot delete stale network namespace {name}"))?;
        removed.push(name.to_owned());
    }
    Ok(removed)
}

/// The PID encoded in a name of the form `sl<pid>-<rest>`.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let (pid, tail) = rest.split_once('-')?;
    if pid.is_empty() || tail.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Fails unless the current thread is in the namespace `ns` (compares namespace inodes).
///
/// Useful in hooks and tests to check that code runs where it is supposed to.
pub fn ensure_current_is(ns: &Netns) -> Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let want = std::fs::metadata(ns.path())
        .with_context(|| format!("cannot stat {}", ns.path().display()))?;
    let have = std::fs::metadata("/proc/thread-self/ns/net")
        .context("cannot stat /proc/thread-self/ns/net")?;
    if (want.dev(), want.ino()) != (have.dev(), have.ino()) {
        bail!(
            "the current thread is not in network namespace {}",
            ns.name()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_name_parsing() {
        assert_eq!(owner_pid("sl4711-3node"), Some(4711));
        assert_eq!(owner_pid("sl1-0p0"), Some(1));
        assert_eq!(owner_pid("sl-3node"), None);
        assert_eq!(owner_pid("slx1-3node"), None);
        assert_eq!(owner_pid("sl12"), None);
        assert_eq!(owner_pid("other-1"), None);
    }

    #[test]
    fn sysctl_paths() {
        assert_eq!(
            sysctl_path("net.ipv4.conf.all.rp_filter"),
            Path::new("/proc/sys/net/ipv4/conf/all/rp_filter")
        );
        assert_eq!(
            sysctl_path("net/ipv4/conf/eth0.5/rp_filter"),
            Path::new("/proc/sys/net/ipv4/conf/eth0.5/rp_filter")
        );
    }
}

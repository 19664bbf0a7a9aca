//! Running a rule-loading tool (`iptables-restore`, `nft -f -`) with its input on stdin,
//! bounded in time, timed by the wall clock.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Why an apply failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("cannot move {program} (pid {pid}) into {}: {source}", cgroup.display())]
    Cgroup {
        program: String,
        pid: u32,
        cgroup: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {bytes} bytes of rules to {program}: {source}")]
    Stdin {
        program: String,
        bytes: usize,
        source: std::io::Error,
    },
    #[error("waiting for {program}: {source}")]
    Wait {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} exited with {status}: {stderr}")]
    Failed {
        program: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("{program} did not finish within {timeout:?} (killed)")]
    Timeout { program: String, timeout: Duration },
}

/// How to run one apply.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The tool is killed after this.
    pub timeout: Duration,
    /// A `cgroup.procs` file the tool joins before it reads its input (so the kernel memory
    /// of the rules it loads is charged to that cgroup). The time of the move is not counted.
    pub cgroup_procs: Option<PathBuf>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            timeout: super::APPLY_TIMEOUT,
            cgroup_procs: None,
        }
    }
}

/// `name` from PATH, else from /usr/sbin or /sbin (where Debian installs the netfilter tools).
pub(crate) fn tool(name: &str) -> PathBuf {
    let in_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    });
    in_path
        .or_else(|| {
            ["/usr/sbin", "/sbin"]
                .iter()
                .map(|d| Path::new(d).join(name))
                .find(|f| f.is_file())
        })
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Runs `program args...` in the current network namespace (the calling thread's) with
/// `input` on stdin; returns the wall time from spawn to exit, without the cgroup move.
pub(crate) fn run(
    program: &str,
    args: &[&str],
    input: &[u8],
    opts: &RunOptions,
) -> Result<Duration, Error> {
    run_capture(program, args, input, opts).map(|(elapsed, _)| elapsed)
}

/// Runs `program args...` to completion in the current network namespace and returns its
/// stdout (for reading rules back: `iptables-save`, `nft list`), within [`APPLY_TIMEOUT`].
///
/// [`APPLY_TIMEOUT`]: super::APPLY_TIMEOUT
pub(crate) fn output(program: &str, args: &[&str]) -> Result<String, Error> {
    let (_, stdout) = run_capture(program, args, b"", &RunOptions::default())?;
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

fn run_capture(
    program: &str,
    args: &[&str],
    input: &[u8],
    opts: &RunOptions,
) -> Result<(Duration, Vec<u8>), Error> {
    let path = tool(program);
    let t0 = Instant::now();
    let mut child = Command::new(&path)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            program: program.to_owned(),
            source,
        })?;
    let pid = child.id();
    // From here on the child is killed and reaped on every error path.
    let kill = |child: &mut std::process::Child| {
        let _ = child.kill();
        let _ = child.wait();
    };
    let mut moved = Duration::ZERO;
    if let Some(procs) = &opts.cgroup_procs {
        let t = Instant::now();
        if let Err(source) = std::fs::write(procs, pid.to_string()) {
            kill(&mut child);
            return Err(Error::Cgroup {
                program: program.to_owned(),
                pid,
                cgroup: procs.clone(),
                source,
            });
        }
        moved = t.elapsed();
    }
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let reader = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let errors = reader(Box::new(child.stderr.take().expect("stderr is piped")));
    let printed = reader(Box::new(child.stdout.take().expect("stdout is piped")));

    // Another thread waits for the exit without reaping (WNOWAIT), so this thread can still
    // kill the child by its PID at the deadline: only this thread reaps it.
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        // SAFETY: waitid(2) with a zeroed siginfo_t it fills in; WNOWAIT leaves the child
        // waitable, so the `Child` below stays valid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc =
            unsafe { libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT) };
        let _ = tx.send(rc);
    });
    let (exited, elapsed, written) = std::thread::scope(|scope| {
        // The input goes in from another thread too: the tools read it as they load it, so
        // writing blocks for as long as they work, and the deadline must still hold. The tool
        // may fail early and close its stdin: its status and stderr then say why.
        let writer = scope.spawn(move || {
            let r = stdin.write_all(input);
            drop(stdin);
            r
        });
        let exited = rx.recv_timeout((t0 + opts.timeout).saturating_duration_since(Instant::now()));
        let elapsed = t0.elapsed().saturating_sub(moved);
        if exited.is_err() {
            // Unblocks the writer (EPIPE).
            kill(&mut child);
        }
        let written = writer.join().unwrap_or(Ok(()));
        (exited, elapsed, written)
    });
    if exited.is_err() {
        let _ = waiter.join();
        let _ = errors.join();
        let _ = printed.join();
        return Err(Error::Timeout {
            program: program.to_owned(),
            timeout: opts.timeout,
        });
    }
    let _ = waiter.join();
    let status = child.wait().map_err(|source| Error::Wait {
        program: program.to_owned(),
        source,
    })?;
    let stderr = errors.join().unwrap_or_default();
    let stdout = printed.join().unwrap_or_default();
    if !status.success() {
        let stderr = String::from_utf8_lossy(&stderr[..stderr.len().min(4000)]).into_owned();
        return Err(Error::Failed {
            program: program.to_owned(),
            status,
            stderr,
        });
    }
    written.map_err(|source| Error::Stdin {
        program: program.to_owned(),
        bytes: input.len(),
        source,
    })?;
    Ok((elapsed, stdout))
}

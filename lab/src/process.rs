//! A child process guard: terminated by its own PID on drop, stdout readable line by line.

use std::collections::VecDeque;
use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::error::{Context as _, Result, bail};
use nix::unistd::Pid;

pub use nix::sys::signal::Signal;

use crate::cmd;

/// How long [`Drop`] waits after SIGTERM before sending SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(2);

/// Lines kept for error messages of [`Process::wait_for_line`].
const HISTORY: usize = 20;

/// A running child process, terminated on drop.
///
/// Drop sends SIGTERM to the child's PID (and only to it: grandchildren are not signalled, so
/// scripts should `exec` their long-running command), waits up to [`TERM_GRACE`], then sends
/// SIGKILL and reaps it. The PID cannot be reused by another process before that: an exited
/// child stays a zombie until this guard reaps it.
///
/// Stdout, when piped, is read by a background thread into a queue of lines, so that
/// [`Process::wait_for_line`] can time out.
#[derive(Debug)]
pub struct Process {
    child: Child,
    description: String,
    lines: Option<Receiver<String>>,
    /// The most recent lines consumed while waiting, for error messages.
    history: VecDeque<String>,
    status: Option<ExitStatus>,
}

impl Process {
    /// Spawns `cmd` with stdin closed, stdout piped (read line by line) and stderr inherited.
    pub fn spawn(mut cmd: Command) -> Result<Self> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        Self::spawn_with_stdio(cmd)
    }

    /// Spawns `cmd` as configured by the caller; stdout lines are available only if the caller
    /// piped stdout.
    pub fn spawn_with_stdio(mut cmd: Command) -> Result<Self> {
        let description = cmd::display(&cmd);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start `{description}`"))?;
        let lines = child.stdout.take().map(|stdout| {
            let (tx, rx) = std::sync::mpsc::channel();
            let reader = BufReader::new(stdout);
            // Detached: ends at EOF, i.e. when every holder of the pipe has exited.
            let spawned = std::thread::Builder::new()
                .name(format!("stdout-{}", child.id()))
                .spawn(move || {
                    for line in reader.lines() {
                        let Ok(line) = line else { break };
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!("cannot start a stdout reader thread: {e}");
            }
            rx
        });
        tracing::debug!(pid = child.id(), command = %description, "spawned");
        Ok(Self {
            child,
            description,
            lines,
            history: VecDeque::new(),
            status: None,
        })
    }

    /// The child's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The command line the process was started with.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Sends `sig` to the process (not to its children). Fails if it has already been reaped.
    pub fn signal(&mut self, sig: Signal) -> Result<()> {
        if let Some(status) = self.status {
            bail!(
                "cannot send {sig} to `{}`: it already exited ({status})",
                self.description
            );
        }
        nix::sys::signal::kill(self.nix_pid(), sig)
            .with_context(|| format!("cannot send {sig} to pid {}", self.pid()))
    }

    fn nix_pid(&self) -> Pid {
        // PIDs fit in pid_t (at most 2^22 on Linux).
        Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX))
    }

    /// The exit status if the process has exited (reaping it), `None` while it runs.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .with_context(|| format!("cannot wait for `{}`", self.description))?;
        }
        Ok(self.status)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Terminates the process as drop does (SIGTERM, [`TERM_GRACE`], SIGKILL) and returns its
    /// exit status.
    pub fn terminate(mut self) -> Result<ExitStatus> {
        self.stop()
    }

    fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        // ESRCH cannot happen for an unreaped child; other errors fall through to SIGKILL.
        let _ = nix::sys::signal::kill(self.nix_pid(), Signal::SIGTERM);
        if let Some(status) = self.wait_timeout(TERM_GRACE)? {
            return Ok(status);
        }
        tracing::warn!(pid = self.pid(), command = %self.description, "no exit after SIGTERM, sending SIGKILL");
        let _ = nix::sys::signal::kill(self.nix_pid(), Signal::SIGKILL);
        let status = self
            .child
            .wait()
            .with_context(|| format!("cannot wait for `{}`", self.description))?;
        self.status = Some(status);
        Ok(status)
    }

    fn remember(&mut self, line: &str) {
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(line.to_owned());
    }

    /// Reads stdout lines until one starts with `prefix` and returns that line; earlier lines
    /// are consumed. Fails on timeout or when stdout closes first (usually: the process exited),
    /// quoting the last lines seen.
    pub fn wait_for_line(&mut self, prefix: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match self.receiver()?.recv_timeout(remaining) {
                Ok(line) => {
                    self.remember(&line);
                    if line.starts_with(prefix) {
                        return Ok(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) => bail!(
                    "`{}` printed no line starting with {prefix:?} within {timeout:?}; last \
                     lines: {:?}",
                    self.description,
                    self.history
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self
                        .wait_timeout(Duration::from_millis(200))?
                        .map_or_else(|| "still running".to_owned(), |s| s.to_string());
                    bail!(
                        "`{}` closed stdout ({status}) before printing a line starting with \
                         {prefix:?}; last lines: {:?}",
                        self.description,
                        self.history
                    );
                }
            }
        }
    }

    /// The next stdout line, waiting up to `timeout`: `Ok(None)` at end of output, an error on
    /// timeout or if stdout was not piped.
    pub fn next_line(&mut self, timeout: Duration) -> Result<Option<String>> {
        let rx = self.receiver()?;
        match rx.recv_timeout(timeout) {
            Ok(line) => {
                self.remember(&line);
                Ok(Some(line))
            }
            Err(RecvTimeoutError::Disconnected) => Ok(None),
            Err(RecvTimeoutError::Timeout) => bail!(
                "`{}` printed no line within {timeout:?}; last lines: {:?}",
                self.description,
                self.history
            ),
        }
    }

    /// The stdout lines that are available now, without waiting.
    pub fn drain_lines(&mut self) -> Vec<String> {
        let Some(rx) = self.lines.as_ref() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        while let Ok(line) = rx.try_recv() {
            out.push(line);
        }
        for line in &out {
            self.remember(line);
        }
        out
    }

    /// Takes the receiving end of the stdout line queue, e.g. to consume it on another thread.
    /// Afterwards the line methods of this guard fail.
    pub fn take_lines(&mut self) -> Option<Receiver<String>> {
        self.lines.take()
    }

    fn receiver(&self) -> Result<&Receiver<String>> {
        self.lines.as_ref().with_context(|| {
            format!(
                "stdout of `{}` is not piped or its line queue was taken",
                self.description
            )
        })
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        match self.stop() {
            Ok(status) => {
                tracing::debug!(pid = self.pid(), %status, command = %self.description, "stopped");
            }
            Err(e) => {
                tracing::warn!(
                    pid = self.pid(),
                    "cannot stop `{}`: {e:#}",
                    self.description
                );
                eprintln!("lab: cannot stop `{}`: {e:#}", self.description);
            }
        }
    }
}

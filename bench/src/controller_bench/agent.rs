//! The agent under test: the release `sluice run` inside the lab's node namespace (through
//! `nsenter --net`, which execs it, so the PID is the agent's own), held by lab's [`Process`]
//! guard (SIGTERM, then SIGKILL, by PID). Its log (stdout and stderr, RUST_LOG=info) goes
//! through a pipe to a reader thread that stamps every line with the moment it arrived and
//! copies it to a file.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::Stdio,
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread::JoinHandle,
    time::Instant,
};

use anyhow::{Context as _, Result};
use lab::{Netns, Process};

/// The marker of the agent's reconcile-round log line (`reconciled ... took_ms=`).
pub const ROUND: &str = "reconciled";

#[derive(Debug, Default)]
struct Lines {
    all: Vec<(Instant, String)>,
    /// Arrival of each reconcile-round line.
    rounds: Vec<Instant>,
}

/// The agent's log as it arrives, shareable with other threads.
#[derive(Debug, Default)]
pub struct Log {
    lines: Mutex<Lines>,
    grew: Condvar,
}

impl Log {
    fn lock(&self) -> MutexGuard<'_, Lines> {
        self.lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn push(&self, at: Instant, line: String) {
        let mut l = self.lock();
        if line.contains(ROUND) && line.contains("took_ms=") {
            l.rounds.push(at);
        }
        l.all.push((at, line));
        self.grew.notify_all();
    }

    /// Arrival time of the first line containing every one of `parts`.
    pub fn first_line(&self, parts: &[&str]) -> Option<Instant> {
        self.lock()
            .all
            .iter()
            .find(|(_, l)| parts.iter().all(|p| l.contains(p)))
            .map(|(t, _)| *t)
    }

    /// Every line containing `part`, with its arrival time.
    pub fn lines_with(&self, part: &str) -> Vec<(Instant, String)> {
        self.lock()
            .all
            .iter()
            .filter(|(_, l)| l.contains(part))
            .cloned()
            .collect()
    }

    /// The last `n` lines (for error messages).
    pub fn tail(&self, n: usize) -> Vec<String> {
        let l = self.lock();
        l.all
            .iter()
            .skip(l.all.len().saturating_sub(n))
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// Reconcile-round lines so far.
    pub fn rounds(&self) -> usize {
        self.lock().rounds.len()
    }

    /// Waits (on the reader's notification, no polling) until more than `seen` round lines
    /// arrived; the arrival of line `seen` (0-based), or `None` at the deadline.
    pub fn wait_round(&self, seen: usize, deadline: Instant) -> Option<Instant> {
        let mut l = self.lock();
        loop {
            if let Some(&t) = l.rounds.get(seen) {
                return Some(t);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            l = self
                .grew
                .wait_timeout(l, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }
}

#[derive(Debug)]
pub struct Agent {
    process: Option<Process>,
    pub pid: u32,
    /// Just before the process was spawned.
    pub spawned: Instant,
    pub log: Arc<Log>,
    reader: Option<JoinHandle<()>>,
}

impl Agent {
    /// Spawns `sluice args...` in `ns` (with `env` added), its log copied to `log_path`.
    pub fn spawn(
        ns: &Netns,
        sluice: &Path,
        args: &[String],
        env: &[(String, String)],
        log_path: &Path,
    ) -> Result<Agent> {
        let (reader, writer) = std::io::pipe().context("creating the log pipe")?;
        let mut cmd = ns.command(sluice);
        cmd.args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(writer.try_clone().context("duplicating the log pipe")?)
            .stderr(writer);
        let mut file = std::fs::File::create(log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let log: Arc<Log> = Arc::default();
        let sink = log.clone();
        let spawned = Instant::now();
        // The command (and with it this process's copies of the pipe's write end) is
        // dropped once spawned, so the reader sees EOF when the agent exits.
        let process = Process::spawn_with_stdio(cmd)?;
        let pid = process.pid();
        let reader = std::thread::Builder::new()
            .name("agent-log".into())
            .spawn(move || {
                for line in BufReader::new(reader).lines() {
                    let Ok(line) = line else { break };
                    let at = Instant::now();
                    let _ = writeln!(file, "{line}");
                    sink.push(at, line);
                }
            })
            .context("starting the log reader")?;
        Ok(Agent {
            process: Some(process),
            pid,
            spawned,
            log,
            reader: Some(reader),
        })
    }

    /// Whether the agent still runs.
    pub fn running(&mut self) -> bool {
        self.process.as_mut().is_some_and(Process::is_running)
    }

    /// Stops the agent (SIGTERM, then SIGKILL after lab's grace period) and waits for its
    /// log to end.
    pub fn stop(&mut self) -> Result<String> {
        let status = match self.process.take() {
            Some(p) => p.terminate()?.to_string(),
            None => "not running".into(),
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        Ok(status)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("controller-bench: cannot stop the agent: {e:#}");
        }
    }
}

//! Ctrl-C as a request to stop and clean up: a SIGINT/SIGTERM handler sets a flag that every
//! wait of the demo checks, so an interrupt unwinds through the normal error path and every
//! RAII guard (pods, agent, pins, namespaces) cleans up in order. The handler resets itself
//! (`SA_RESETHAND`): a second Ctrl-C kills the process at once, without cleaning up.
//!
//! Without [`install`] (e.g. inside a test harness) the flag stays false and the checks cost
//! an atomic load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The demo was interrupted (Ctrl-C or SIGTERM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

extern "C" fn on_signal(_: libc::c_int) {
    // Async-signal-safe: one atomic store.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs the SIGINT and SIGTERM handler (once per process).
pub fn install() -> crate::error::Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART | SaFlags::SA_RESETHAND,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only performs an atomic store, which is async-signal-safe.
        unsafe { sigaction(signal, &action) }.map_err(|e| {
            lab::Error::Invalid(format!("cannot install the {signal} handler: {e}"))
        })?;
    }
    Ok(())
}

/// Whether an interrupt arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// `Err(Interrupted)` once an interrupt arrived.
pub fn check() -> Result<(), Interrupted> {
    if interrupted() {
        Err(Interrupted)
    } else {
        Ok(())
    }
}

/// Sleeps for `duration`, returning early with `Err(Interrupted)` on an interrupt.
pub fn sleep(duration: Duration) -> Result<(), Interrupted> {
    let deadline = Instant::now() + duration;
    loop {
        check()?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// Waits until an interrupt arrives.
pub fn wait() {
    while !interrupted() {
        std::thread::sleep(Duration::from_millis(100));
    }
}

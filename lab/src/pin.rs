//! A unique bpffs directory for pinned maps and links, removed on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Context as _, Result, ensure};

/// Where bpffs is mounted.
pub const BPFFS: &str = "/sys/fs/bpf";

/// The parent of every [`PinDir`]; it is left in place (other tests may be using it).
pub const TEST_ROOT: &str = "/sys/fs/bpf/sluice-test";

static COUNTER: AtomicU64 = AtomicU64::new(0);
static MOUNT_LOCK: Mutex<()> = Mutex::new(());

/// Mounts bpffs at `/sys/fs/bpf` unless something is mounted there already
/// (`mountpoint -q /sys/fs/bpf`). Safe to call from parallel tests.
///
/// The mount is made in the current mount namespace (the root one, as this crate never
/// unshares it) and stays after the process exits, as on a real node.
pub fn ensure_bpffs() -> Result<()> {
    let _guard = MOUNT_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mounted = Command::new("mountpoint")
        .args(["-q", BPFFS])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("cannot run `mountpoint -q /sys/fs/bpf`")?
        .success();
    if mounted {
        return Ok(());
    }
    std::fs::create_dir_all(BPFFS).with_context(|| format!("cannot create {BPFFS}"))?;
    nix::mount::mount(
        Some("bpf"),
        BPFFS,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("cannot mount bpffs at {BPFFS}"))?;
    tracing::info!("mounted bpffs at {BPFFS}");
    Ok(())
}

/// A fresh directory `/sys/fs/bpf/sluice-test/<pid>-<counter>-<label>/`, removed with
/// everything pinned in it on drop.
///
/// Removing a pin only drops that reference: maps and programs still held by open file
/// descriptors live on until those close.
#[derive(Debug)]
pub struct PinDir {
    path: PathBuf,
}

impl PinDir {
    /// Creates the directory, mounting bpffs first if needed. `label` (letters, digits, `-`
    /// and `_`) makes the name readable.
    pub fn new(label: &str) -> Result<Self> {
        ensure!(
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "pin directory label {label:?} must be non-empty ASCII letters, digits, '-' or '_'"
        );
        ensure_bpffs()?;
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = Path::new(TEST_ROOT).join(format!("{}-{n}-{label}", std::process::id()));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create pin directory {}", path.display()))?;
        Ok(Self { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove {}: {e}", self.path.display());
            eprintln!("lab: cannot remove {}: {e}", self.path.display());
        }
    }
}

//! A memory cgroup for the rule-loading tools, removed on drop: the kernel charges the
//! netfilter objects a process creates (nf_tables tables, chains, rules and set elements;
//! x_tables' rule blobs: `GFP_KERNEL_ACCOUNT`) to that process's memory cgroup, and the charge
//! stays there after the process exits, for as long as the objects live.
//!
//! Created below this process's own memory cgroup (so every limit above still applies and
//! nothing outside this subtree is touched): cgroup v1's memory hierarchy if mounted
//! (`memory.kmem.usage_in_bytes` is then the kernel memory), else cgroup v2 when the parent
//! delegates the memory controller (`memory.stat`'s `kernel`).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

#[derive(Debug)]
pub struct MemCgroup {
    dir: PathBuf,
    v1: bool,
}

/// What a cgroup holds, bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    /// Kernel memory charged (v1 `memory.kmem.usage_in_bytes`, v2 `memory.stat` `kernel`).
    pub kernel: u64,
    /// Everything charged (v1 `memory.usage_in_bytes`, v2 `memory.current`).
    pub total: u64,
    /// The high-water mark of `total` (v1 `memory.max_usage_in_bytes`, v2 `memory.peak`).
    pub peak: u64,
}

impl MemCgroup {
    /// A fresh cgroup `sluice-sync-<pid>-<tag>` below this process's memory cgroup.
    pub fn new(tag: &str) -> Result<Self> {
        let own =
            std::fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
        let name = format!("sluice-sync-{}-{tag}", std::process::id());
        let v1_root = Path::new("/sys/fs/cgroup/memory");
        let v1_path = own.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            controllers
                .split(',')
                .any(|c| c == "memory")
                .then(|| path.to_owned())
        });
        let (dir, v1) = match v1_path {
            Some(p) if v1_root.join("memory.usage_in_bytes").exists() => {
                (v1_root.join(p.trim_start_matches('/')).join(&name), true)
            }
            _ => {
                let p = own
                    .lines()
                    .find_map(|l| l.strip_prefix("0::"))
                    .context("no cgroup v2 path in /proc/self/cgroup")?;
                let parent = Path::new("/sys/fs/cgroup").join(p.trim_start_matches('/'));
                let delegated = std::fs::read_to_string(parent.join("cgroup.subtree_control"))
                    .unwrap_or_default();
                if !delegated.split_whitespace().any(|c| c == "memory") {
                    bail!(
                        "no memory cgroup to nest under: cgroup v1's memory hierarchy is not \
                         mounted and {} does not delegate the memory controller",
                        parent.display()
                    );
                }
                (parent.join(&name), false)
            }
        };
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(MemCgroup { dir, v1 })
    }

    /// The file a process joins by writing its PID.
    pub fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// "cgroup v1 …" / "cgroup v2 …": which counters [`Usage`] holds.
    pub fn method(&self) -> &'static str {
        if self.v1 {
            "cgroup v1 memory.kmem.usage_in_bytes of a cgroup the tools ran in"
        } else {
            "cgroup v2 memory.stat kernel of a cgroup the tools ran in"
        }
    }

    pub fn usage(&self) -> Result<Usage> {
        let read = |f: &str| -> Result<u64> {
            let p = self.dir.join(f);
            let s =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            s.trim()
                .parse()
                .with_context(|| format!("{}: {s:?}", p.display()))
        };
        if self.v1 {
            Ok(Usage {
                kernel: read("memory.kmem.usage_in_bytes")?,
                total: read("memory.usage_in_bytes")?,
                peak: read("memory.max_usage_in_bytes")?,
            })
        } else {
            let stat = std::fs::read_to_string(self.dir.join("memory.stat"))?;
            let kernel = stat
                .lines()
                .find_map(|l| l.strip_prefix("kernel "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            Ok(Usage {
                kernel,
                total: read("memory.current")?,
                peak: read("memory.peak").unwrap_or(0),
            })
        }
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        // Every process that joined has exited (each apply waits for its tool); what is still
        // charged moves to the parent.
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            eprintln!("sync-bench: cannot remove {}: {e}", self.dir.display());
        }
    }
}

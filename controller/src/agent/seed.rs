//! The seed of the flow hash and of Maglev. Every node of a cluster must use the same one
//! (so that every node picks the same backend for a flow) and it should differ between
//! clusters (so that nobody can predict the backend of a flow). In order:
//!
//! 1. `dataplane.hash_seed` in the configuration, when set (then the same value on every node
//!    is the operator's business);
//! 2. Kubernetes mode: the FNV-1a hash of the UID of the `default/kubernetes` Service, which
//!    every cluster has and every node reads alike;
//! 3. standalone mode (or no such Service): random, generated once and kept in
//!    `<state_dir>/hash-seed`, so restarts keep it.
//!
//! It is set before the first data-path write: the reconcile loop resolves it once every
//! source listed (so the Kubernetes Service is known).

use std::path::{Path, PathBuf};

use crate::tables::Tables;

/// The file under the state directory holding a generated seed.
pub const SEED_FILE: &str = "hash-seed";

/// How the agent will choose the seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SeedPlan {
    /// Configured.
    Fixed(u32),
    /// Kubernetes mode: from the `default/kubernetes` Service's UID, else the state file.
    Cluster { state_dir: PathBuf },
    /// Standalone mode: the state file (generated when missing).
    Standalone { state_dir: PathBuf },
}

/// Where a seed came from (logged).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeedSource {
    Config,
    KubernetesServiceUid,
    StateFile,
    Generated,
}

impl SeedSource {
    pub fn describe(self) -> &'static str {
        match self {
            SeedSource::Config => "the configuration (dataplane.hash_seed)",
            SeedSource::KubernetesServiceUid => "the UID of the default/kubernetes Service",
            SeedSource::StateFile => "the state directory (hash-seed)",
            SeedSource::Generated => "generated at random, saved in the state directory",
        }
    }
}

/// FNV-1a (32 bits) of `s`: fixed here, so every node and every version derive the same seed.
pub fn fnv1a(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The seed of the cluster whose `default/kubernetes` Service has `uid`.
pub fn from_cluster_uid(uid: &str) -> u32 {
    fnv1a(uid)
}

/// Why no seed could be chosen.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("{path}: {text:?} is not a seed (a u32); delete the file to draw a new one")]
    NotASeed {
        path: std::path::PathBuf,
        text: String,
    },
    #[error("drawing a random hash seed: {0}")]
    Random(getrandom::Error),
    #[error("{what}: {cause}")]
    Io { what: String, cause: std::io::Error },
}

/// The seed kept in `state_dir`, generated (at random) and saved when there is none.
pub fn standalone(state_dir: &Path) -> Result<(u32, SeedSource), SeedError> {
    let path = state_dir.join(SEED_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let t = text.trim();
            let seed = t
                .strip_prefix("0x")
                .map_or_else(|| t.parse(), |h| u32::from_str_radix(h, 16))
                .map_err(|_| SeedError::NotASeed {
                    path: path.clone(),
                    text: t.to_string(),
                })?;
            Ok((seed, SeedSource::StateFile))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 4];
            getrandom::fill(&mut bytes).map_err(SeedError::Random)?;
            let seed = u32::from_ne_bytes(bytes);
            std::fs::create_dir_all(state_dir).map_err(|cause| SeedError::Io {
                what: format!("state directory {}", state_dir.display()),
                cause,
            })?;
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, format!("{seed:#010x}\n"))
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|cause| SeedError::Io {
                    what: format!("saving the hash seed to {}", path.display()),
                    cause,
                })?;
            Ok((seed, SeedSource::Generated))
        }
        Err(cause) => Err(SeedError::Io {
            what: format!("reading {}", path.display()),
            cause,
        }),
    }
}

impl SeedPlan {
    /// The seed, once every source listed (`tables` knows the Kubernetes Service).
    pub fn resolve(&self, tables: &Tables) -> Result<(u32, SeedSource), SeedError> {
        match self {
            SeedPlan::Fixed(s) => Ok((*s, SeedSource::Config)),
            SeedPlan::Cluster { state_dir } => match tables.cluster_uid() {
                Some(uid) => Ok((from_cluster_uid(uid), SeedSource::KubernetesServiceUid)),
                None => {
                    tracing::warn!(
                        "no default/kubernetes Service (or it has no UID): the hash seed comes \
                         from this node's state directory and may differ between nodes; set \
                         dataplane.hash_seed to the same value on every node"
                    );
                    standalone(state_dir)
                }
            },
            SeedPlan::Standalone { state_dir } => standalone(state_dir),
        }
    }
}

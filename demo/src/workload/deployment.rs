//! Rollout planning, the Deployment controller's part: a Deployment owns one ReplicaSet per
//! pod template (the template hash is derived from the image); `kubectl create`, `scale`,
//! `set image` and `rollout undo` change its spec (a template change is a new revision, an
//! undo makes the previous revision's template the newest); every round
//! `reconcile_deployment` runs one sync of Kubernetes' rolling update ([`plan`]),
//! `sync_pods` starts or terminates pods to match each ReplicaSet (Kubernetes' order for
//! which pods go), and `check_progress` marks a rollout that made no progress for
//! `progressDeadlineSeconds` as `Progressing=False` / `ProgressDeadlineExceeded`.

use std::time::Instant;

use crate::error::Result;
use lab::bail;
use lab::error::Context as _;

use super::Cluster;
use crate::k8s::{self, APP};

#[derive(Debug, Clone)]
pub(super) struct ReplicaSet {
    pub(super) hash: String,
    pub(super) version: u32,
    pub(super) revision: u64,
    pub(super) replicas: u32,
    pub(super) created: Instant,
}

#[derive(Debug, Clone)]
pub(super) struct Deployment {
    pub(super) replicas: u32,
    pub(super) version: u32,
    pub(super) revision: u64,
    pub(super) generation: i64,
    pub(super) replica_sets: Vec<ReplicaSet>,
    pub(super) last_progress: Instant,
    pub(super) stalled: bool,
    pub(super) created: Instant,
}

impl Deployment {
    pub(super) fn new_rs_hash(&self) -> String {
        k8s::template_hash(&k8s::image(self.version))
    }
}

/// One ReplicaSet's counts, as the rolling update sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RsCount {
    /// `spec.replicas`.
    pub replicas: u32,
    /// Pods available (ready and selected).
    pub available: u32,
}

/// One sync of Kubernetes' rolling update for a Deployment of `desired` replicas: the new
/// `spec.replicas` of every ReplicaSet (`rs[new]` is the one of the current template; the
/// others are old, oldest first). As `rolloutRolling` does, a sync either scales the new
/// ReplicaSet up (within `desired + max_surge` replicas in total) or scales old ones down
/// (keeping `desired - max_unavailable` available, unhealthy old replicas first). With no
/// old replicas left it is a scale event: the new ReplicaSet gets `desired`.
pub fn plan(
    desired: u32,
    max_surge: u32,
    max_unavailable: u32,
    new: usize,
    rs: &[RsCount],
) -> Vec<u32> {
    let mut spec: Vec<u32> = rs.iter().map(|r| r.replicas).collect();
    let olds: Vec<usize> = (0..rs.len()).filter(|&i| i != new).collect();
    if olds.iter().all(|&i| spec[i] == 0) {
        spec[new] = desired;
        return spec;
    }
    // reconcileNewReplicaSet: surge.
    let max_total = desired + max_surge;
    let total: u32 = spec.iter().sum();
    if spec[new] < desired && total < max_total {
        spec[new] = desired.min(spec[new] + (max_total - total));
        return spec;
    }
    // reconcileOldReplicaSets: unavailability budget.
    let min_available = desired.saturating_sub(max_unavailable);
    let all: u32 = spec.iter().sum();
    let new_unavailable = spec[new].saturating_sub(rs[new].available);
    let mut max_scaled_down =
        i64::from(all) - i64::from(min_available) - i64::from(new_unavailable);
    if max_scaled_down <= 0 {
        return spec;
    }
    // cleanupUnhealthyReplicas.
    for &i in &olds {
        let unhealthy = spec[i].saturating_sub(rs[i].available);
        let n = i64::from(unhealthy).min(max_scaled_down);
        spec[i] -= n as u32;
        max_scaled_down -= n;
        if max_scaled_down == 0 {
            break;
        }
    }
    // scaleDownOldReplicaSetsForRollingUpdate.
    let available: u32 = rs.iter().map(|r| r.available).sum();
    let mut budget = available.saturating_sub(min_available);
    for &i in &olds {
        let n = spec[i].min(budget);
        spec[i] -= n;
        budget -= n;
    }
    spec
}

impl Cluster<'_> {
    /// `kubectl create deployment <APP> --image=...`, with `replicas` replicas.
    pub fn create_deployment(&mut self, version: u32, replicas: u32) -> Result<()> {
        if self.deployment.is_some() {
            bail!("deployment {APP} already exists");
        }
        let now = Instant::now();
        self.deployment = Some(Deployment {
            replicas,
            version,
            revision: 1,
            generation: 1,
            replica_sets: vec![ReplicaSet {
                hash: k8s::template_hash(&k8s::image(version)),
                version,
                revision: 1,
                replicas: 0,
                created: now,
            }],
            last_progress: now,
            stalled: false,
            created: now,
        });
        self.tick()
    }

    /// `kubectl scale deployments/<APP> --replicas=N`.
    pub fn scale(&mut self, replicas: u32) -> Result<()> {
        let d = self.deployment_mut()?;
        d.replicas = replicas;
        d.generation += 1;
        d.last_progress = Instant::now();
        d.stalled = false;
        self.tick()
    }

    /// `kubectl set image deployments/<APP> <APP>=<image of version>`.
    pub fn set_image(&mut self, version: u32) -> Result<()> {
        let d = self.deployment_mut()?;
        if d.version == version {
            return Ok(());
        }
        let hash = k8s::template_hash(&k8s::image(version));
        let revision = d.replica_sets.iter().map(|r| r.revision).max().unwrap_or(0) + 1;
        let now = Instant::now();
        match d.replica_sets.iter_mut().find(|r| r.hash == hash) {
            Some(rs) => rs.revision = revision,
            None => d.replica_sets.push(ReplicaSet {
                hash,
                version,
                revision,
                replicas: 0,
                created: now,
            }),
        }
        d.version = version;
        d.revision = revision;
        d.generation += 1;
        d.last_progress = now;
        d.stalled = false;
        self.tick()
    }

    /// `kubectl rollout undo deployments/<APP>`: back to the template of the previous
    /// revision, which becomes the newest revision. Returns that template's version.
    pub fn rollout_undo(&mut self) -> Result<u32> {
        let d = self.deployment_mut()?;
        let mut by_revision: Vec<&ReplicaSet> = d.replica_sets.iter().collect();
        by_revision.sort_by_key(|r| std::cmp::Reverse(r.revision));
        let Some(previous) = by_revision.get(1) else {
            bail!("no rollout history to undo: deployment {APP} has one revision");
        };
        let version = previous.version;
        self.set_image(version)?;
        Ok(version)
    }

    /// `kubectl delete deployments/<APP>`: the Deployment goes, its pods terminate (through
    /// the drain handshake).
    pub fn delete_deployment(&mut self) -> Result<()> {
        if self.deployment.take().is_none() {
            bail!("no deployment {APP}");
        }
        self.unpublish_deployment()?;
        self.tick()
    }

    pub(super) fn deployment_mut(&mut self) -> Result<&mut Deployment> {
        Ok(self
            .deployment
            .as_mut()
            .with_context(|| format!("no deployment {APP}"))?)
    }

    /// (spec replicas, available) of every ReplicaSet.
    fn rs_counts(&self, d: &Deployment) -> Vec<RsCount> {
        d.replica_sets
            .iter()
            .map(|rs| RsCount {
                replicas: rs.replicas,
                available: self
                    .pods
                    .iter()
                    .filter(|p| p.rs_hash == rs.hash && p.available())
                    .count() as u32,
            })
            .collect()
    }

    pub(super) fn reconcile_deployment(&mut self) {
        let Some(d) = self.deployment.as_ref() else {
            return;
        };
        let hash = d.new_rs_hash();
        let Some(new) = d.replica_sets.iter().position(|r| r.hash == hash) else {
            return;
        };
        let counts = self.rs_counts(d);
        let spec = plan(
            d.replicas,
            self.cfg.max_surge,
            self.cfg.max_unavailable,
            new,
            &counts,
        );
        let mut notes = Vec::new();
        let Some(d) = self.deployment.as_mut() else {
            return;
        };
        for (i, (rs, replicas)) in d.replica_sets.iter_mut().zip(spec).enumerate() {
            if rs.replicas != replicas {
                notes.push(format!(
                    "replicaset {APP}-{} (v{}) scaled {} -> {replicas}",
                    rs.hash, rs.version, rs.replicas
                ));
                let progress = if i == new {
                    replicas > rs.replicas
                } else {
                    replicas < rs.replicas
                };
                if progress {
                    d.last_progress = Instant::now();
                }
                rs.replicas = replicas;
            }
        }
        for n in notes {
            self.note(&n);
        }
    }

    pub(super) fn rollout_complete(&self) -> bool {
        let Some(d) = &self.deployment else {
            return false;
        };
        let hash = d.new_rs_hash();
        d.replica_sets.iter().all(|rs| {
            let active = self
                .pods
                .iter()
                .filter(|p| p.rs_hash == rs.hash && p.active())
                .count() as u32;
            if rs.hash == hash {
                let available = self
                    .pods
                    .iter()
                    .filter(|p| p.rs_hash == rs.hash && p.available())
                    .count() as u32;
                rs.replicas == d.replicas && active == d.replicas && available == d.replicas
            } else {
                rs.replicas == 0 && active == 0
            }
        })
    }

    pub(super) fn check_progress(&mut self) {
        let complete = self.rollout_complete();
        let deadline = self.cfg.progress_deadline;
        let Some(d) = self.deployment.as_mut() else {
            return;
        };
        if !complete && !d.stalled && d.last_progress.elapsed() > deadline {
            d.stalled = true;
            let msg = format!(
                "progress deadline ({}s) exceeded: Progressing=False, reason \
                 ProgressDeadlineExceeded",
                deadline.as_secs()
            );
            self.note(&msg);
        }
    }

    /// Starts pods for ReplicaSets below their count and terminates pods above it (and every
    /// pod once the Deployment is gone).
    pub(super) fn sync_pods(&mut self) -> Result<()> {
        let plan: Vec<(String, u32, u32)> = match &self.deployment {
            Some(d) => d
                .replica_sets
                .iter()
                .map(|rs| (rs.hash.clone(), rs.version, rs.replicas))
                .collect(),
            None => Vec::new(),
        };
        // Pods of no ReplicaSet (the Deployment was deleted) terminate.
        let orphans: Vec<usize> = (0..self.pods.len())
            .filter(|&i| {
                self.pods[i].active() && !plan.iter().any(|(h, _, _)| *h == self.pods[i].rs_hash)
            })
            .collect();
        for i in orphans {
            self.terminate(i);
        }
        for (hash, version, replicas) in plan {
            let mut active: Vec<usize> = (0..self.pods.len())
                .filter(|&i| self.pods[i].rs_hash == hash && self.pods[i].active())
                .collect();
            let n = active.len() as u32;
            if n < replicas {
                for _ in n..replicas {
                    self.create_pod(&hash, version)?;
                }
            } else if n > replicas {
                // Kubernetes' order: not ready first, then the most recently ready, then the
                // most restarted, then the newest.
                active.sort_by_key(|&i| {
                    let p = &self.pods[i];
                    (
                        p.ready(),
                        std::cmp::Reverse(p.ready_since()),
                        std::cmp::Reverse(p.restarts),
                        std::cmp::Reverse(p.created),
                    )
                });
                for &i in active.iter().take((n - replicas) as usize) {
                    self.terminate(i);
                }
            }
        }
        Ok(())
    }

    pub(super) fn is_new_rs(&self, i: usize) -> bool {
        self.deployment
            .as_ref()
            .is_some_and(|d| d.new_rs_hash() == self.pods[i].rs_hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(replicas: u32, available: u32) -> RsCount {
        RsCount {
            replicas,
            available,
        }
    }

    /// Runs syncs to a fixed point, with `ready` deciding which replicas become available.
    fn settle(desired: u32, new: usize, mut counts: Vec<RsCount>, ready: &[bool]) -> Vec<u32> {
        for _ in 0..20 {
            let spec = plan(desired, 1, 1, new, &counts);
            for (i, c) in counts.iter_mut().enumerate() {
                c.replicas = spec[i];
                c.available = if ready[i] { spec[i] } else { 0 };
            }
        }
        counts.iter().map(|c| c.replicas).collect()
    }

    #[test]
    fn plan_scales_without_rollout() {
        assert_eq!(plan(4, 1, 1, 0, &[rs(1, 1)]), vec![4]);
        assert_eq!(plan(2, 1, 1, 0, &[rs(4, 4)]), vec![2]);
        assert_eq!(plan(2, 1, 1, 1, &[rs(0, 0), rs(2, 2)]), vec![0, 2]);
    }

    #[test]
    fn plan_rolls_within_surge_and_unavailability() {
        // v1 (2 available) -> v2: surge one new, then scale one old down.
        let counts = [rs(2, 2), rs(0, 0)];
        assert_eq!(plan(2, 1, 1, 1, &counts), vec![2, 1]);
        assert_eq!(plan(2, 1, 1, 1, &[rs(2, 2), rs(1, 0)]), vec![1, 1]);
        // The total stays within 3: the second new pod comes once the old one is scaled down.
        assert_eq!(plan(2, 1, 1, 1, &[rs(1, 1), rs(1, 0)]), vec![1, 2]);
        // Nothing more until a new pod is available (1 must stay available).
        assert_eq!(plan(2, 1, 1, 1, &[rs(1, 1), rs(2, 0)]), vec![1, 2]);
        assert_eq!(plan(2, 1, 1, 1, &[rs(1, 1), rs(2, 1)]), vec![0, 2]);
        assert_eq!(settle(2, 1, counts.to_vec(), &[true, true]), vec![0, 2]);
    }

    #[test]
    fn plan_stalls_on_a_broken_image_and_undo_cleans_up() {
        // v2 (2 available) -> v10 that never becomes ready: 1 v2 pod stays.
        let stalled = settle(2, 1, vec![rs(2, 2), rs(0, 0)], &[true, false]);
        assert_eq!(stalled, vec![1, 2]);
        // Undo: v2 is new again, the unhealthy v10 replicas go first, then v2 scales up.
        assert_eq!(plan(2, 1, 1, 0, &[rs(1, 1), rs(2, 0)]), vec![1, 0]);
        assert_eq!(plan(2, 1, 1, 0, &[rs(1, 1), rs(0, 0)]), vec![2, 0]);
    }
}

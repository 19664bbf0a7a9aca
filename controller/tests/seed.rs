//! The hash seed: the same on every node of a cluster (two agents with their own state
//! directories that see the same `default/kubernetes` Service UID choose the same seed),
//! different between clusters, configured when set, and kept across restarts in standalone
//! mode.

use std::path::PathBuf;

use controller::{
    agent::{
        AgentConfig,
        seed::{SeedPlan, SeedSource, from_cluster_uid},
    },
    objects::Object,
    tables::Tables,
};
use serde_json::json;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sluice-seed-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The tables of an agent that listed the cluster's `default/kubernetes` Service.
fn listed(uid: &str) -> Tables {
    let mut t = Tables::default();
    let svc = Object::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default", "uid": uid},
        "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "https", "port": 443}]}
    }))
    .unwrap()
    .object;
    t.apply(&svc).unwrap();
    t
}

/// A Kubernetes-mode agent's configuration with its own state directory.
fn kube_agent(state_dir: PathBuf) -> AgentConfig {
    AgentConfig {
        in_cluster: true,
        state_dir,
        ..Default::default()
    }
}

#[test]
fn agents_of_one_cluster_choose_the_same_seed_and_other_clusters_another() {
    const UID: &str = "0b5f4f1e-7a6c-4c1e-9d3a-2f1b8e6c5a10";
    let (a, b) = (
        kube_agent(temp_dir("node-a")),
        kube_agent(temp_dir("node-b")),
    );
    let (plan_a, plan_b) = (a.seed_plan(), b.seed_plan());
    assert_ne!(plan_a, plan_b, "each has its own state directory");
    let seed_a = plan_a.resolve(&listed(UID)).unwrap();
    let seed_b = plan_b.resolve(&listed(UID)).unwrap();
    assert_eq!(seed_a, seed_b);
    assert_eq!(
        seed_a,
        (from_cluster_uid(UID), SeedSource::KubernetesServiceUid)
    );
    // FNV-1a is fixed here: a change of it would split clusters of mixed agent versions.
    assert_eq!(from_cluster_uid(""), 0x811c_9dc5);
    assert_eq!(from_cluster_uid("a"), 0xe40c_292c);
    let other = plan_a
        .resolve(&listed("5d2c9a77-0000-4000-8000-000000000001"))
        .unwrap();
    assert_ne!(other.0, seed_a.0, "another cluster, another seed");
    // Nothing was written to the state directories.
    assert!(!a.state_dir.join("hash-seed").exists());

    // A configured seed wins, in either mode.
    let mut fixed = kube_agent(temp_dir("fixed"));
    fixed.dataplane.hash_seed = Some(42);
    assert_eq!(
        fixed.seed_plan().resolve(&listed(UID)).unwrap(),
        (42, SeedSource::Config)
    );
}

#[test]
fn a_standalone_agent_draws_its_seed_once_and_keeps_it_across_restarts() {
    let dir = temp_dir("standalone");
    let cfg = AgentConfig {
        state_dir: dir.clone(),
        ..Default::default()
    };
    assert_eq!(
        cfg.seed_plan(),
        SeedPlan::Standalone {
            state_dir: dir.clone()
        }
    );
    let (seed, source) = cfg.seed_plan().resolve(&Tables::default()).unwrap();
    assert_eq!(source, SeedSource::Generated);
    let saved = std::fs::read_to_string(dir.join("hash-seed")).unwrap();
    assert_eq!(saved.trim(), format!("{seed:#010x}"));
    // The restarted agent (fresh tables, same state directory) reads it back.
    for _ in 0..2 {
        assert_eq!(
            cfg.seed_plan().resolve(&Tables::default()).unwrap(),
            (seed, SeedSource::StateFile)
        );
    }
    // A damaged file is an error naming it, never a silent new seed.
    std::fs::write(dir.join("hash-seed"), "not a number\n").unwrap();
    let err = cfg.seed_plan().resolve(&Tables::default()).unwrap_err();
    assert!(format!("{err:#}").contains("hash-seed"), "{err:#}");
    std::fs::remove_dir_all(&dir).unwrap();
}

//! `deploy/`: the manifests parse as the Kubernetes types they claim, the ClusterRole grants
//! list and watch on exactly what the Kubernetes source watches (and nothing to write), the
//! DaemonSet runs the agent in-cluster with its node name from the downward API, probes the
//! port the ConfigMap's configuration listens on, and that configuration is one the agent
//! accepts.

use std::{collections::BTreeSet, path::Path};

use controller::agent::AgentConfig;
use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde::Deserialize;
use serde_json::Value;

fn documents(file: &str) -> Vec<Value> {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy")).join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn one<T: serde::de::DeserializeOwned>(docs: &[Value], kind: &str) -> T {
    let doc = docs
        .iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"));
    serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{kind}: {e}"))
}

#[test]
fn rbac_grants_list_and_watch_on_what_the_source_watches_and_nothing_else() {
    let docs = documents("rbac.yaml");
    let sa: ServiceAccount = one(&docs, "ServiceAccount");
    let role: ClusterRole = one(&docs, "ClusterRole");
    let binding: ClusterRoleBinding = one(&docs, "ClusterRoleBinding");
    let mut granted = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        let verbs: BTreeSet<&str> = rule.verbs.iter().map(String::as_str).collect();
        assert_eq!(
            verbs,
            BTreeSet::from(["list", "watch"]),
            "read-only: {rule:?}"
        );
        for g in rule.api_groups.iter().flatten() {
            for r in rule.resources.iter().flatten() {
                granted.insert(format!("{g}/{r}"));
            }
        }
    }
    let watched: BTreeSet<String> = [
        "/services",
        "/nodes",
        "discovery.k8s.io/endpointslices",
        "apps/deployments",
        "apps/replicasets",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(granted, watched);
    assert_eq!(binding.role_ref.name, role.metadata.name.clone().unwrap());
    let subject = &binding.subjects.as_ref().unwrap()[0];
    assert_eq!(Some(&subject.name), sa.metadata.name.as_ref());
    assert_eq!(subject.namespace, sa.metadata.namespace);
}

#[test]
fn the_daemonset_runs_the_agent_in_cluster_with_the_configmap_and_probes_its_port() {
    let ds: DaemonSet = one(&documents("daemonset.yaml"), "DaemonSet");
    let cm: ConfigMap = one(&documents("configmap.yaml"), "ConfigMap");
    let rbac = documents("rbac.yaml");
    let sa: ServiceAccount = one(&rbac, "ServiceAccount");

    let spec = ds.spec.template.spec.unwrap();
    assert_eq!(spec.host_network, Some(true));
    assert_eq!(spec.service_account_name, sa.metadata.name);
    let c = &spec.containers[0];
    let sec = c.security_context.as_ref().unwrap();
    assert_eq!(sec.privileged, Some(false));
    let caps = sec.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    let added: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
    assert_eq!(added, BTreeSet::from(["BPF", "NET_ADMIN", "PERFMON"]));
    let node_name = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    assert_eq!(node_name, Some("spec.nodeName"));
    assert!(
        spec.volumes.iter().flatten().any(|v| v
            .host_path
            .as_ref()
            .is_some_and(|h| h.path == "/sys/fs/bpf")),
        "bpffs from the host, so pins outlive the pod"
    );

    // The configuration the pod mounts is one the agent takes, in Kubernetes mode.
    let args = c.args.clone().unwrap();
    assert_eq!(args[..2], ["run".to_string(), "--config".to_string()]);
    let text = &cm.data.as_ref().unwrap()["config.yaml"];
    let cfg: AgentConfig = serde_yaml::from_str(text).unwrap();
    assert!(
        cfg.manifests.is_none() && cfg.kubeconfig.is_none(),
        "in-cluster"
    );
    assert!(cfg.dataplane.pin.is_some(), "pinned by default");
    let port = i32::from(cfg.metrics_listen.port());
    assert_ne!(
        port, 10249,
        "kube-proxy's metrics port is left to kube-proxy"
    );
    for (what, probe) in [
        ("liveness", &c.liveness_probe),
        ("readiness", &c.readiness_probe),
    ] {
        let get = probe.as_ref().and_then(|p| p.http_get.as_ref()).unwrap();
        assert_eq!(
            get.port,
            IntOrString::Int(port),
            "{what} probe on the metrics port"
        );
    }
    let paths: Vec<_> = [&c.liveness_probe, &c.readiness_probe]
        .iter()
        .map(|p| {
            p.as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .clone()
                .unwrap()
        })
        .collect();
    assert_eq!(paths, ["/healthz", "/readyz"]);
}

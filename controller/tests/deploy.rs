//! `deploy/`: the manifests parse as the Kubernetes types they claim, the ClusterRole grants
//! list and watch on exactly what the Kubernetes source watches (and nothing to write), the
//! DaemonSet runs the agent in-cluster with its node name from the downward API, probes the
//! port the ConfigMap's configuration listens on, and that configuration is one the agent
//! accepts; and every API call the agent makes (watches, and the LoadBalancer IP assigner
//! with its Lease and Events) is allowed by the roles, each of whose rights it uses.

use std::{collections::BTreeSet, path::Path};

use controller::agent::AgentConfig;
use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use kube_mock::Verb;
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

/// One RBAC rule, and where it applies (`None`: cluster-wide).
struct Grant {
    namespace: Option<String>,
    rule: PolicyRule,
}

fn grants() -> Vec<Grant> {
    let mut out = Vec::new();
    for file in ["rbac.yaml", "ipam/rbac.yaml"] {
        for doc in documents(file) {
            let (namespace, rules) = match doc["kind"].as_str() {
                Some("ClusterRole") => {
                    let r: ClusterRole = serde_json::from_value(doc).unwrap();
                    (None, r.rules.unwrap_or_default())
                }
                Some("Role") => {
                    let r: Role = serde_json::from_value(doc).unwrap();
                    (r.metadata.namespace, r.rules.unwrap_or_default())
                }
                _ => continue,
            };
            out.extend(rules.into_iter().map(|rule| Grant {
                namespace: namespace.clone(),
                rule,
            }));
        }
    }
    out
}

/// A request as RBAC sees it: (group, resource[/subresource], verb, namespace, name).
fn attributes(r: &kube_mock::RequestRecord) -> (String, String, &'static str) {
    let group = match r.path.strip_prefix("/apis/") {
        Some(rest) => rest.split('/').next().unwrap().to_string(),
        None => String::new(),
    };
    let mut resource = r.resource.unwrap().to_string();
    if r.status_subresource {
        resource += "/status";
    }
    let verb = match r.verb {
        Verb::List => "list",
        Verb::Watch => "watch",
        Verb::Get => "get",
        Verb::Create => "create",
        Verb::Update => "update",
        Verb::Patch => "patch",
        Verb::Delete => "delete",
        Verb::Other => "other",
    };
    (group, resource, verb)
}

fn allows(g: &Grant, r: &kube_mock::RequestRecord) -> bool {
    let (group, resource, verb) = attributes(r);
    let has = |v: &Option<Vec<String>>, x: &str| v.iter().flatten().any(|e| e == x);
    has(&g.rule.api_groups, &group)
        && has(&g.rule.resources, &resource)
        && g.rule.verbs.iter().any(|v| v == verb)
        && g.namespace
            .as_ref()
            .is_none_or(|ns| r.namespace.as_ref() == Some(ns))
        && (g.rule.resource_names.is_none()
            || r.name
                .as_ref()
                .is_some_and(|n| has(&g.rule.resource_names, n)))
}

/// The agent (every watch, and the LoadBalancer IP assigner with its Lease and Events) runs
/// against kube-mock; each request the mock saw must be allowed by deploy/'s roles, and each
/// right those roles grant must have been used: the roles are exactly what the code needs.
#[tokio::test]
async fn every_api_call_of_the_agent_is_allowed_and_every_granted_right_is_used() {
    use controller::{fake::FakeDataPath, state::Shared};

    const WAIT: std::time::Duration = std::time::Duration::from_secs(20);
    let mock = kube_mock::MockApiServer::start_local().unwrap();
    let lb = |name: &str| {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.30.1", "clusterIPs": ["10.96.30.1"],
                     "ipFamilies": ["IPv4"], "ports": [{"port": 80, "nodePort": 31080, "protocol": "TCP"}]}
        })
    };
    mock.apply(lb("web")).unwrap();
    mock.apply(lb("extra")).unwrap();

    // The IPAM settings deploy/ipam/ ships, with a one-address pool so the second service
    // is refused (an Event) and refused again (the Event's series, a patch).
    let cm: ConfigMap = one(&documents("ipam/configmap.yaml"), "ConfigMap");
    let mut cfg: AgentConfig = serde_yaml::from_str(&cm.data.unwrap()["config.yaml"]).unwrap();
    cfg.ipam.pools = vec!["192.0.2.9/32".into()];
    cfg.ipam.lease_duration_seconds = 2;
    cfg.ipam.lease_grace_seconds = 1;
    let pools = cfg.ipam.validate().unwrap().unwrap();

    let client = mock.client().unwrap();
    let shared = Shared::new(Box::new(FakeDataPath::default()), None);
    shared.store.lock().await.set_cluster_mode();
    let _watchers = controller::kube::spawn(&shared, client.clone(), "node-1");
    let mut ipam_status = shared.ipam.subscribe();
    let ipam = controller::ipam::spawn(
        client,
        cfg.ipam.clone(),
        pools,
        "node-1".into(),
        shared.ipam.clone(),
    );
    tokio::time::timeout(
        WAIT,
        ipam_status.wait_for(|s| s.refusals.get("AddressPoolExhausted") == Some(&1)),
    )
    .await
    .expect("the second service refused")
    .unwrap();
    let mut extra = lb("extra");
    extra["metadata"]["labels"] = serde_json::json!({"touched": "yes"});
    mock.apply(extra).unwrap();
    mock.wait_for_requests(
        |log| {
            log.iter()
                .any(|r| r.resource == Some("events") && r.verb == Verb::Patch)
        },
        WAIT,
    )
    .await
    .unwrap();
    mock.wait_for("every watch listed", WAIT, |_| shared.sources.all_synced())
        .await
        .unwrap();
    ipam.shutdown().await;

    let grants = grants();
    let log = mock.requests();
    for r in log.iter().filter(|r| r.resource.is_some()) {
        assert!(
            grants.iter().any(|g| allows(g, r)),
            "deploy/ grants no right to {:?} ({} {}?{})",
            attributes(r),
            r.method,
            r.path,
            r.query
        );
    }
    for g in &grants {
        for verb in &g.rule.verbs {
            for res in g.rule.resources.iter().flatten() {
                assert!(
                    log.iter().filter(|r| r.resource.is_some()).any(|r| {
                        let (group, resource, v) = attributes(r);
                        v == verb
                            && &resource == res
                            && g.rule.api_groups.iter().flatten().any(|x| *x == group)
                    }),
                    "deploy/ grants {verb} on {res} but the agent never uses it"
                );
            }
        }
    }
    // The Lease the Role names is the one the configuration uses.
    let lease_rule = grants
        .iter()
        .find(|g| g.rule.resource_names.is_some())
        .expect("a name-scoped Lease rule");
    assert_eq!(
        lease_rule.rule.resource_names.as_deref(),
        Some(&[cfg.ipam.lease_name.clone()][..])
    );
    assert_eq!(
        lease_rule.namespace.as_deref(),
        Some(cfg.ipam.lease_namespace.as_str())
    );
}

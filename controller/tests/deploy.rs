//! `deploy/`: the manifests parse as the Kubernetes types they claim, the ClusterRole grants
//! list and watch on exactly what the Kubernetes source watches (and nothing to write), the
//! DaemonSet runs the agent in-cluster with its node name from the downward API, probes the
//! port the ConfigMap's configuration listens on, and that configuration is one the agent
//! accepts; every API call the agent makes (watches, and the LoadBalancer IP assigner with
//! its Lease and Events) is allowed by the roles, each of whose rights it uses; the agents'
//! headless Service selects the DaemonSet's pods at the port the agent's API listens on, and
//! the drain example's preStop hook runs `drain-wait --all-nodes`.

use std::{collections::BTreeSet, path::Path};

use controller::{agent::AgentConfig, model::Key, peers};
use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, Deployment},
        core::v1::{ConfigMap, Service, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use kube_mock::Verb;
use serde::Deserialize;
use serde_json::Value;

fn deploy_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy"))
}

fn documents(file: &str) -> Vec<Value> {
    let path = deploy_dir().join(file);
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

/// Every YAML file under `dir`, relative to `deploy/`, sorted.
fn manifests(dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            manifests(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            let rel = path.strip_prefix(deploy_dir()).unwrap();
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    out.sort();
}

#[test]
fn every_manifest_parses_as_the_kubernetes_type_of_its_kind() {
    fn check<T: serde::de::DeserializeOwned>(file: &str, doc: &Value) {
        if let Err(e) = serde_json::from_value::<T>(doc.clone()) {
            panic!("{file}: {}: {e}", doc["kind"]);
        }
    }
    let mut files = Vec::new();
    manifests(deploy_dir(), &mut files);
    assert!(
        files.iter().any(|f| f == "examples/drain-prestop.yaml"),
        "{files:?}"
    );
    for file in &files {
        for doc in documents(file) {
            match doc["kind"].as_str().unwrap_or_default() {
                "ServiceAccount" => check::<ServiceAccount>(file, &doc),
                "ClusterRole" => check::<ClusterRole>(file, &doc),
                "ClusterRoleBinding" => check::<ClusterRoleBinding>(file, &doc),
                "Role" => check::<Role>(file, &doc),
                "RoleBinding" => check::<RoleBinding>(file, &doc),
                "ConfigMap" => check::<ConfigMap>(file, &doc),
                "DaemonSet" => check::<DaemonSet>(file, &doc),
                "Service" => check::<Service>(file, &doc),
                "Deployment" => check::<Deployment>(file, &doc),
                other => panic!("{file}: kind {other:?}: add its k8s-openapi type to this test"),
            }
        }
    }
}

fn agent_config() -> AgentConfig {
    let cm: ConfigMap = one(&documents("configmap.yaml"), "ConfigMap");
    serde_yaml::from_str(&cm.data.as_ref().unwrap()["config.yaml"]).unwrap()
}

#[test]
fn the_agents_service_is_headless_and_selects_the_daemonset_pods_at_the_api_port() {
    let svc: Service = one(&documents("agents-service.yaml"), "Service");
    let ds: DaemonSet = one(&documents("daemonset.yaml"), "DaemonSet");
    let cfg = agent_config();

    let key = Key::new(
        svc.metadata.namespace.clone().unwrap(),
        svc.metadata.name.clone().unwrap(),
    );
    assert_eq!(
        key,
        peers::default_service(),
        "where the agents look by default"
    );
    assert_eq!(svc.metadata.namespace, ds.metadata.namespace);
    let spec = svc.spec.unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"), "headless");
    let pod_labels = ds.spec.template.metadata.as_ref().unwrap().labels.clone();
    let selector = spec.selector.clone().unwrap();
    assert!(!selector.is_empty());
    for (k, v) in &selector {
        assert_eq!(
            pod_labels.as_ref().and_then(|l| l.get(k)),
            Some(v),
            "the selector picks the DaemonSet's pods"
        );
    }

    // The API answers the other nodes, on the port the Service names.
    assert!(
        !cfg.api_listen.ip().is_loopback(),
        "api_listen {} is not reachable from the other nodes",
        cfg.api_listen
    );
    let port = spec
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(peers::API_PORT_NAME))
        .expect("a port named api");
    assert_eq!(port.port, i32::from(cfg.api_listen.port()));
    let IntOrString::String(target) = port.target_port.clone().unwrap() else {
        panic!("targetPort by name");
    };
    let container = &ds.spec.template.spec.unwrap().containers[0];
    let named = container
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(target.as_str()))
        .unwrap_or_else(|| panic!("the agent container declares port {target}"));
    assert_eq!(named.container_port, i32::from(cfg.api_listen.port()));
}

#[test]
fn the_drain_example_waits_for_every_agent_in_its_pre_stop_hook() {
    let d: Deployment = one(&documents("examples/drain-prestop.yaml"), "Deployment");
    let api_port = agent_config().api_listen.port();
    let pod = d.spec.template.spec.unwrap();
    let c = &pod.containers[0];
    let command = c
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.exec.as_ref())
        .and_then(|e| e.command.clone())
        .expect("an exec preStop hook");
    assert_eq!(command[1..3], ["drain-wait", "--all-nodes"]);
    assert!(
        command.iter().all(|a| !a.contains("$(")),
        "Kubernetes does not expand $(VAR) in hooks: {command:?}"
    );
    let timeout: f64 = command
        .iter()
        .skip_while(|a| *a != "--timeout")
        .nth(1)
        .expect("--timeout")
        .parse()
        .unwrap();
    let grace = pod
        .termination_grace_period_seconds
        .expect("a grace period") as f64;
    assert!(
        timeout < grace,
        "the hook ends before the kubelet's deadline"
    );

    // drain-wait reads the endpoint from POD_IP and the local agent from SLUICE_API.
    let env = c.env.clone().unwrap_or_default();
    let field = |name: &str| {
        env.iter()
            .position(|e| e.name == name)
            .map(|i| (i, &env[i]))
            .unwrap_or_else(|| panic!("env {name}"))
    };
    let from_field = |name: &str| {
        let (i, e) = field(name);
        let path = e
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str());
        (i, path.map(String::from))
    };
    assert_eq!(from_field("POD_IP").1.as_deref(), Some("status.podIP"));
    let (host_at, host) = from_field("HOST_IP");
    assert_eq!(host.as_deref(), Some("status.hostIP"));
    let (api_at, api) = field("SLUICE_API");
    assert_eq!(api.value, Some(format!("$(HOST_IP):{api_port}")));
    assert!(
        host_at < api_at,
        "an env value expands only variables defined before it"
    );

    // The binary comes from the agent's image through an emptyDir.
    let bin_dir = Path::new(&command[0]).parent().unwrap();
    let mounted = |c: &k8s_openapi::api::core::v1::Container| {
        c.volume_mounts
            .iter()
            .flatten()
            .find(|m| Path::new(&m.mount_path) == bin_dir)
            .map(|m| m.name.clone())
    };
    let volume = mounted(c).expect("the binary's folder is mounted");
    let init = &pod.init_containers.as_ref().expect("an initContainer")[0];
    assert_eq!(mounted(init), Some(volume.clone()));
    assert!(
        init.command.iter().flatten().any(|a| *a == command[0]),
        "the initContainer puts the binary where the hook runs it: {:?}",
        init.command
    );
    let v = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == volume)
        .unwrap();
    assert!(v.empty_dir.is_some());
}

/// deploy/ipam/configmap.yaml is deploy/configmap.yaml plus `ipam:`, so applying it turns
/// IPAM on and changes nothing else; its IPAM section is one the agent accepts.
#[test]
fn the_ipam_configmap_is_the_base_one_plus_ipam() {
    let base = agent_config();
    let cm: ConfigMap = one(&documents("ipam/configmap.yaml"), "ConfigMap");
    let with: AgentConfig = serde_yaml::from_str(&cm.data.unwrap()["config.yaml"]).unwrap();
    assert!(base.ipam.pools.is_empty(), "IPAM is off by default");
    assert!(with.ipam.validate().unwrap().is_some());
    assert_eq!(
        format!(
            "{:?}",
            AgentConfig {
                ipam: base.ipam.clone(),
                ..with.clone()
            }
        ),
        format!("{base:?}")
    );
}

//! Golden tests: Kubernetes YAML in -> readable dump of the data path out, through the model,
//! the desired state, the reconciler and the in-memory fake data path. Set UPDATE_GOLDEN=1 to
//! rewrite the `.golden` files after an intended change (and review the diff).

use std::path::Path;

use controller::{
    fake::FakeDataPath,
    files,
    reconcile::{Reconciler, sync_dirty},
    store::Store,
};

fn golden_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden"))
}

fn load(store: &mut Store, name: &str, text: &str) {
    let path = golden_dir().join(name);
    let objs = files::parse_file(&path, text).unwrap_or_else(|e| panic!("{e:?}"));
    assert!(store.replace_file(&path, objs).is_empty());
}

/// One round of the reconcile loop: the services changed since the last round.
fn reconcile(
    store: &mut Store,
    rec: &mut Reconciler<FakeDataPath>,
) -> controller::reconcile::Round {
    rec.allow_pruning();
    sync_dirty(&mut store.tables, &Default::default(), rec)
}

fn check(name: &str, actual: &str) {
    let path = golden_dir().join(format!("{name}.golden"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} missing: run with UPDATE_GOLDEN=1", path.display()));
    assert_eq!(
        actual,
        expected,
        "{name}: dump differs from {}",
        path.display()
    );
}

#[test]
fn golden_service_types_multiport_and_tcp_udp_on_one_port() {
    let mut store = Store::default();
    load(
        &mut store,
        "types.yaml",
        &std::fs::read_to_string(golden_dir().join("types.yaml")).unwrap(),
    );
    let mut rec = Reconciler::new(FakeDataPath::default());
    reconcile(&mut store, &mut rec);
    check("types", &rec.data_path().render());
}

#[test]
fn golden_terminating_fallback_ready_flip_and_delete() {
    let text = std::fs::read_to_string(golden_dir().join("fallback.yaml")).unwrap();
    let mut store = Store::default();
    load(&mut store, "fallback.yaml", &text);
    let mut rec = Reconciler::new(FakeDataPath::default());
    reconcile(&mut store, &mut rec);
    let mut out = String::from("# no ready endpoint: serving-terminating is the fallback\n");
    out += &rec.data_path().render();

    load(
        &mut store,
        "fallback.yaml",
        &text.replace(
            "conditions: {ready: false, serving: false, terminating: false}",
            "conditions: {ready: true}",
        ),
    );
    let round = reconcile(&mut store, &mut rec);
    out += "# 198.51.100.6 became ready\n";
    out += &rec.data_path().render();
    assert_eq!(round.upserted.len(), 1);

    // Idempotent: the same state again writes nothing.
    assert!(reconcile(&mut store, &mut rec).upserted.is_empty());

    load(&mut store, "fallback.yaml", "");
    let round = reconcile(&mut store, &mut rec);
    out += "# file emptied: service removed\n";
    out += &rec.data_path().render();
    assert_eq!(round.removed, vec!["default/app:8080/TCP".to_string()]);
    check("fallback", &out);
}

#[test]
fn reconcile_never_prunes_before_every_source_synced() {
    let mut fake = FakeDataPath::default();
    // A service adopted from pins, unknown to the (not yet synced) sources.
    lb_datapath::DataPath::upsert_service(
        &mut fake,
        &lb_datapath::ServiceSpec {
            name: "default/old:80/TCP".into(),
            protocol: lb_datapath::Protocol::Tcp,
            frontends: vec![lb_datapath::Frontend::NodePort(30000)],
            backends: vec![],
            affinity: None,
            ..Default::default()
        },
    )
    .unwrap();
    let mut rec = Reconciler::new(fake);
    let round = rec.reconcile_all(Vec::new());
    assert_eq!(round.kept_unsynced, vec!["default/old:80/TCP".to_string()]);
    assert_eq!(
        rec.data_path().service_names_for_test(),
        vec!["default/old:80/TCP".to_string()]
    );
    rec.allow_pruning();
    let round = rec.reconcile_all(Vec::new());
    assert_eq!(round.removed, vec!["default/old:80/TCP".to_string()]);
}

#[test]
fn reconcile_applies_new_before_removing_and_reports_errors_without_stopping() {
    let mut store = Store::default();
    load(
        &mut store,
        "types.yaml",
        &std::fs::read_to_string(golden_dir().join("types.yaml")).unwrap(),
    );
    let fake = FakeDataPath {
        fail_on: Some("shop/web:metrics/TCP".into()),
        ..Default::default()
    };
    let mut rec = Reconciler::new(fake);
    let round = reconcile(&mut store, &mut rec);
    assert_eq!(round.errors.len(), 1, "{round:?}");
    assert!(
        round.upserted.len() >= 4,
        "the other services were still applied: {round:?}"
    );
    // Replace the file: new services are upserted before the old ones are removed.
    load(
        &mut store,
        "types.yaml",
        &std::fs::read_to_string(golden_dir().join("fallback.yaml")).unwrap(),
    );
    rec.data_path_mut().calls.clear();
    reconcile(&mut store, &mut rec);
    let calls = &rec.data_path().calls;
    let first_remove = calls.iter().position(|c| c.starts_with("remove")).unwrap();
    let last_upsert = calls.iter().rposition(|c| c.starts_with("upsert")).unwrap();
    assert!(last_upsert < first_remove, "{calls:?}");
}

#[test]
fn invalid_yaml_is_reported_with_file_and_line() {
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: ok}\nspec:\n  ports: [{port: 80}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec:\n  ports: [{port: 80}]\n  loadBalancerSourceRanges: [203.0.113.0/33]\n---\nnot: [valid\n";
    let errs = files::parse_file(Path::new("x.yaml"), text).unwrap_err();
    let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    assert!(
        msgs.iter()
            .any(|m| m.contains("loadBalancerSourceRanges[0]") && m.contains("not a CIDR")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter().any(|m| m.starts_with("x.yaml:")
            && m.split(':')
                .nth(1)
                .and_then(|l| l.parse::<usize>().ok())
                .is_some_and(|l| l >= 14)),
        "{msgs:?}"
    );
}

/// Objects exactly as `kubectl get -o yaml` prints them (Kubernetes 1.35: managedFields,
/// trafficDistribution, hints, zones, dual stack, several slices per service, terminating
/// endpoints, ipMode, a Node, a Deployment mid-rollout with its ReplicaSets) -> model ->
/// data-path dump. Covers kube-proxy's rules: headless, ExternalName and another proxy's
/// services are skipped; `service-proxy-name: sluice` is taken; slices are merged and an
/// endpoint listed twice keeps its best condition; only an endpoint's first address is used;
/// the terminating fallback; publishNotReadyAddresses; ClientIP affinity; LoadBalancer VIPs
/// from `status.loadBalancer.ingress` (not ipMode Proxy, not hostname-only); FQDN slices
/// ignored.
#[test]
fn golden_kubectl_objects_of_a_real_cluster() {
    let dir = golden_dir().join("kubectl");
    let mut store = Store::default();
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    names.sort();
    for path in &names {
        let text = std::fs::read_to_string(path).unwrap();
        let objs = files::parse_file(path, &text).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(store.replace_file(path, objs).is_empty());
    }
    let mut rec = Reconciler::new(FakeDataPath::default());
    let round = reconcile(&mut store, &mut rec);
    assert!(round.errors.is_empty(), "{round:?}");
    let mut out = rec.data_path().render();
    let t = &store.tables;
    for (ns, name) in [("shop", "db"), ("shop", "search"), ("shop", "legacy")] {
        let key = controller::model::Key::new(ns, name);
        out += &format!(
            "skipped {key}: {}\n",
            t.skipped(&key).unwrap_or("NOT SKIPPED")
        );
    }
    let node = t.node("sluice-lab-node").expect("node");
    out += &format!("node {} addresses={:?}\n", node.name, node.addresses);
    for w in t.workloads() {
        out += &format!(
            "deployment {} revision={:?} desired={} updated={} ready={} available={}: {}\n",
            w.key,
            w.revision,
            w.desired,
            w.updated,
            w.ready,
            w.available,
            w.rollout_status()
        );
    }
    for r in t.replicasets() {
        out += &format!(
            "replicaset {} of {:?} hash={:?} revision={:?} desired={} ready={}\n",
            r.key,
            r.deployment.as_ref().map(ToString::to_string),
            r.pod_template_hash,
            r.revision,
            r.desired,
            r.ready
        );
    }
    check("kubectl", &out);
}

/// Every desired spec of the tables, one service line (frontends, `when_empty`, source
/// ranges) and one line per backend (`remote` for another node's), sorted: the fields the
/// fake data path's dump does not show.
/// `only`: that service's.
fn render_specs(store: &Store, only: Option<&str>) -> String {
    let t = &store.tables;
    let mut keys: Vec<_> = t
        .service_keys()
        .filter(|k| only.is_none_or(|o| k.to_string() == o))
        .cloned()
        .collect();
    keys.sort();
    let mut out = String::new();
    for k in keys {
        for (name, spec) in controller::desired::of_service(t, &k, &Default::default()) {
            let mut fronts: Vec<String> = spec.frontends.iter().map(|f| f.to_string()).collect();
            fronts.sort();
            out += &format!(
                "service {name} {} frontends=[{}] when_empty={:?}",
                spec.protocol,
                fronts.join(", "),
                spec.when_empty
            );
            if let Some(r) = &spec.source_ranges {
                let allow: Vec<String> = r.allow.iter().map(ToString::to_string).collect();
                let on: Vec<String> = r.frontends.iter().map(ToString::to_string).collect();
                out += &format!(
                    " source_ranges=[{}] on [{}]",
                    allow.join(", "),
                    on.join(", ")
                );
            }
            out += "\n";
            let mut backends = spec.backends.clone();
            backends.sort_by_key(|b| b.addr);
            for b in backends {
                out += &format!(
                    "  backend {} {:?}{}\n",
                    b.addr,
                    b.state,
                    if b.remote { " remote" } else { "" }
                );
            }
        }
        if let Some((port, n)) = controller::desired::health_check(t, &k, &Default::default()) {
            out += &format!("health check {k} port {port}: {n} ready local endpoint(s)\n");
        }
    }
    out
}

/// Objects as `kubectl get -o yaml` prints them on a two-node cluster, this agent on
/// node-a -> desired specs and the data path: endpoints of node-b are remote, those without
/// a nodeName local; externalTrafficPolicy Local puts the NodePort, externalIPs and
/// LoadBalancer IPs on local endpoints (`/external`, drop while none is usable) and leaves
/// the cluster IP on every endpoint; internalTrafficPolicy Local the reverse; both Local is
/// one spec; loadBalancerSourceRanges (field, else annotation) filter the LoadBalancer IPs
/// of their family only; health-check node ports count ready local endpoints. Then the
/// policy goes back to Cluster: the usual names only, `/external` removed.
#[test]
fn golden_traffic_policies_locality_and_source_ranges() {
    let dir = golden_dir().join("policy");
    let mut store = Store::default();
    store
        .tables
        .set_protections(controller::protections::Protections {
            node_name: Some("node-a".into()),
            ..Default::default()
        });
    let services = dir.join("services.yaml");
    let services_text = std::fs::read_to_string(&services).unwrap();
    for path in [dir.join("endpointslices.yaml"), services.clone()] {
        let text = std::fs::read_to_string(&path).unwrap();
        let objs = files::parse_file(&path, &text).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(store.replace_file(&path, objs).is_empty());
    }
    let mut rec = Reconciler::new(FakeDataPath::default());
    let round = reconcile(&mut store, &mut rec);
    assert!(round.errors.is_empty(), "{round:?}");
    let mut out = render_specs(&store, None);
    // What the reconciler applied is exactly the desired specs.
    let desired: Vec<String> = out
        .lines()
        .filter_map(|l| l.strip_prefix("service "))
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect();
    let mut applied = rec.data_path().service_names_for_test();
    applied.sort();
    let mut sorted = desired.clone();
    sorted.sort();
    assert_eq!(applied, sorted);

    let cluster = services_text.replace(
        "externalTrafficPolicy: Local\n    healthCheckNodePort: 32100\n",
        "externalTrafficPolicy: Cluster\n",
    );
    assert_ne!(cluster, services_text);
    let objs = files::parse_file(&services, &cluster).unwrap_or_else(|e| panic!("{e:?}"));
    assert!(store.replace_file(&services, objs).is_empty());
    let round = reconcile(&mut store, &mut rec);
    assert!(round.errors.is_empty(), "{round:?}");
    out += "# default/web: externalTrafficPolicy Cluster\n";
    out += &format!(
        "upserted {:?}\nremoved {:?}\n",
        round.upserted, round.removed
    );
    out += &render_specs(&store, Some("default/web"));
    check("policy", &out);
}

//! The reconciler's cost follows the change, not the state: one changed slice among many
//! services writes exactly that service; a burst of changes to one service is one write; a
//! relist of unchanged objects writes nothing; API objects are saved one file each.

use controller::{
    fake::FakeDataPath,
    model::Key,
    objects::{Kind, Object},
    reconcile::{Reconciler, sync_dirty},
    store::Store,
    tables::Tables,
};
use serde_json::json;

fn service(i: usize) -> Object {
    Object::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("svc-{i}"), "namespace": "bench"},
        "spec": {"type": "NodePort", "clusterIP": format!("10.96.{}.{}", i / 250, i % 250 + 1),
                 "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30000 + i}]}
    }))
    .unwrap()
    .object
}

fn slice(i: usize, endpoints: usize, ready_last: bool) -> Object {
    let eps: Vec<_> = (0..endpoints)
        .map(|e| {
            json!({"addresses": [format!("198.51.{}.{}", 100 + i / 250, e + 1)],
                   "conditions": {"ready": e + 1 < endpoints || ready_last}})
        })
        .collect();
    Object::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("svc-{i}-abc"), "namespace": "bench",
                     "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
        "addressType": "IPv4",
        "ports": [{"port": 8080}],
        "endpoints": eps,
    }))
    .unwrap()
    .object
}

fn loaded(n: usize) -> (Tables, Reconciler<FakeDataPath>) {
    let mut tables = Tables::default();
    for i in 0..n {
        tables.apply(&service(i)).unwrap();
        tables.apply(&slice(i, 10, true)).unwrap();
    }
    let mut rec = Reconciler::new(FakeDataPath::default());
    rec.allow_pruning();
    let round = sync_dirty(&mut tables, &Default::default(), &mut rec);
    assert_eq!(round.upserted.len(), n);
    rec.data_path_mut().calls.clear();
    (tables, rec)
}

#[test]
fn one_changed_endpoint_among_1000_services_writes_only_its_service() {
    let (mut tables, mut rec) = loaded(1000);
    tables.apply(&slice(417, 10, false)).unwrap();
    let dirty_before = tables.pending_since().is_some();
    let round = sync_dirty(&mut tables, &Default::default(), &mut rec);
    assert!(dirty_before);
    assert_eq!(rec.data_path().calls, vec!["upsert bench/svc-417:80/TCP"]);
    assert_eq!(round.upserted, vec!["bench/svc-417:80/TCP"]);
    // Nothing left to do: the next round writes nothing.
    let round = sync_dirty(&mut tables, &Default::default(), &mut rec);
    assert!(!round.wrote() && rec.data_path().calls.len() == 1);
}

#[test]
fn a_burst_of_changes_to_one_service_is_one_write() {
    let (mut tables, mut rec) = loaded(50);
    for k in 0..100 {
        tables.apply(&slice(7, 10, k % 2 == 0)).unwrap();
    }
    tables.apply(&slice(7, 10, false)).unwrap();
    sync_dirty(&mut tables, &Default::default(), &mut rec);
    assert_eq!(rec.data_path().calls, vec!["upsert bench/svc-7:80/TCP"]);
}

#[test]
fn unchanged_objects_and_deletes_cost_what_they_change() {
    let (mut tables, mut rec) = loaded(100);
    // A relist re-applies every object unchanged: nothing is dirty, nothing is written.
    for i in 0..100 {
        assert!(!tables.apply(&service(i)).unwrap());
        assert!(!tables.apply(&slice(i, 10, true)).unwrap());
    }
    assert!(tables.pending_since().is_none());
    assert!(!sync_dirty(&mut tables, &Default::default(), &mut rec).wrote());
    // Deleting a slice empties its service; deleting the service removes it.
    tables.remove(Kind::EndpointSlice, &Key::new("bench", "svc-3-abc"));
    sync_dirty(&mut tables, &Default::default(), &mut rec);
    tables.remove(Kind::Service, &Key::new("bench", "svc-3"));
    sync_dirty(&mut tables, &Default::default(), &mut rec);
    assert_eq!(
        rec.data_path().calls,
        vec!["upsert bench/svc-3:80/TCP", "remove bench/svc-3:80/TCP"]
    );
    let names = rec.data_path().service_names_for_test();
    assert_eq!(names.len(), 99);
    assert!(names.contains(&"bench/svc-4:80/TCP".to_string()));
    assert!(!names.contains(&"bench/svc-3:80/TCP".to_string()));
}

#[test]
fn api_objects_are_saved_one_file_each_and_restored() {
    let dir = std::env::temp_dir().join(format!("sluice-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut store = Store::open(&dir, Default::default()).unwrap();
    for i in 0..3 {
        store.put_api(service(i)).unwrap();
    }
    let file = |i: usize| dir.join(format!("api-objects/Service/bench/svc-{i}.json"));
    let before = std::fs::metadata(file(0)).unwrap().modified().unwrap();
    store.put_api(slice(1, 2, true)).unwrap();
    // Another object's write leaves this file alone.
    assert_eq!(
        std::fs::metadata(file(0)).unwrap().modified().unwrap(),
        before
    );
    store
        .delete_api(Kind::Service, &Key::new("bench", "svc-2"))
        .unwrap();
    assert!(!file(2).exists() && file(1).exists());
    let restored = Store::open(&dir, Default::default()).unwrap();
    let names: Vec<String> = restored
        .list(Kind::Service)
        .map(|(k, _)| k.to_string())
        .collect();
    assert_eq!(names, vec!["bench/svc-0", "bench/svc-1"]);
    assert_eq!(restored.list(Kind::EndpointSlice).count(), 1);
    assert!(
        restored
            .tables
            .service(&Key::new("bench", "svc-1"))
            .is_some()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_single_file_of_earlier_versions_is_migrated() {
    let dir = std::env::temp_dir().join(format!("sluice-legacy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let legacy = json!([service(5).to_value().unwrap()]);
    std::fs::write(dir.join("api-objects.json"), legacy.to_string()).unwrap();
    let store = Store::open(&dir, Default::default()).unwrap();
    assert!(store.tables.service(&Key::new("bench", "svc-5")).is_some());
    assert!(!dir.join("api-objects.json").exists());
    assert!(dir.join("api-objects/Service/bench/svc-5.json").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

//! Pinning: adoption restores ids and tables; a pinned map whose definition differs, or a
//! folder of another layout version, is refused with an error naming the setting / versions
//! and the uninstall command; uninstall removes everything.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use lab::PinDir;
use lb_userspace::{
    BackendSpec, Dataplane, DataplaneConfig, EndpointState, Frontend, PinConfig, Protocol,
    ServiceSpec,
};

fn pinned(dir: &PinDir) -> DataplaneConfig {
    DataplaneConfig {
        pin: Some(PinConfig {
            root: dir.path().to_path_buf(),
            instance: "test".into(),
        }),
        ..Default::default()
    }
}

fn spec(name: &str, port: u16, backends: &[u8]) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        protocol: Protocol::Tcp,
        frontends: vec![
            Frontend::NodePort(port),
            Frontend::Address(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10)),
                port,
            )),
        ],
        backends: backends
            .iter()
            .map(|&b| {
                BackendSpec::ready(SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::new(198, 51, 100, b)),
                    8080,
                ))
            })
            .collect(),
        affinity: None,
        ..Default::default()
    }
}

#[test]
fn pin_adoption_restores_services_ids_and_tables() {
    let dir = PinDir::new("adopt").unwrap();
    let before = {
        let mut dp = Dataplane::load(pinned(&dir)).unwrap();
        dp.upsert_service(&spec("default/web:http", 30080, &[2, 6, 10]))
            .unwrap();
        dp.upsert_service(&spec("default/api:http", 30081, &[14]))
            .unwrap();
        dp.dump()
    };
    // The process is gone; the maps are not.
    let mut dp = Dataplane::load(pinned(&dir)).unwrap();
    assert_eq!(
        dp.dump(),
        before,
        "services, ids, frontends, backends and tables restored"
    );
    // The same spec again changes nothing and keeps every id.
    dp.upsert_service(&spec("default/web:http", 30080, &[2, 6, 10]))
        .unwrap();
    assert_eq!(dp.dump(), before);
    // Again (now without a rebuild: this process built the table), then one backend not
    // ready and ready again: the same table as before.
    dp.upsert_service(&spec("default/web:http", 30080, &[2, 6, 10]))
        .unwrap();
    assert_eq!(dp.dump(), before);
    let mut one_down = spec("default/web:http", 30080, &[2, 6, 10]);
    one_down.backends[1].state = EndpointState::NotServing;
    dp.upsert_service(&one_down).unwrap();
    let web = dp.dump().into_iter().find(|s| s.name == "default/web:http");
    let slots: Vec<u32> = web.unwrap().backends.iter().map(|b| b.slots).collect();
    assert_eq!(slots[1], 0, "{slots:?}");
    dp.upsert_service(&spec("default/web:http", 30080, &[2, 6, 10]))
        .unwrap();
    assert_eq!(dp.dump(), before);
    let occ = dp.occupancy().unwrap();
    assert_eq!((occ.frontends, occ.backends), (4, 4));
    // Another process's view through the pins (SLOTS through a read-only mmap) agrees.
    let pin = pinned(&dir).pin.unwrap();
    assert_eq!(lb_userspace::inspect::pinned_occupancy(&pin).unwrap(), occ);
    let tables: u64 = before.iter().map(|s| u64::from(s.table_size)).sum();
    assert_eq!(
        occ.slots, tables,
        "every slot of the tables in force names a backend"
    );
    assert!(lb_userspace::pins::uninstall(&pin).unwrap());
}

#[test]
fn pin_with_other_capacity_is_refused_naming_the_setting() {
    let dir = PinDir::new("mismatch").unwrap();
    let mut small = pinned(&dir);
    small.capacities.conntrack = 1024;
    drop(Dataplane::load(small).unwrap());
    let mut big = pinned(&dir);
    big.capacities.conntrack = 2048;
    let e = Dataplane::load(big).unwrap_err().to_string();
    assert!(
        e.contains("CONNTRACK") && e.contains("1024") && e.contains("capacities.conntrack"),
        "{e}"
    );
    assert!(e.contains("sluice uninstall"), "{e}");
}

#[test]
fn pin_folder_of_another_layout_version_is_refused() {
    let dir = PinDir::new("layout").unwrap();
    let cfg = pinned(&dir);
    let pin = cfg.pin.clone().unwrap();
    let current = format!("v{}", lb_common::LAYOUT_VERSION);
    // v0, and the layout before this one (v1: SLOTS of single u32 slots, nothing mmapable).
    for old in [
        "v0".to_string(),
        format!("v{}", lb_common::LAYOUT_VERSION - 1),
    ] {
        std::fs::create_dir_all(pin.instance_dir().join(&old)).unwrap();
        let e = Dataplane::load(cfg.clone()).unwrap_err().to_string();
        assert!(
            e.contains(&old) && e.contains(&current) && e.contains("sluice uninstall"),
            "{e}"
        );
        std::fs::remove_dir(pin.instance_dir().join(&old)).unwrap();
    }
    std::fs::create_dir_all(pin.instance_dir().join("v0")).unwrap();
    assert!(lb_userspace::pins::uninstall(&pin).unwrap());
    assert!(!pin.instance_dir().exists());
}

/// Names up to `SERVICE_NAME_MAX` bytes survive a restart exactly (the longest name the
/// controller builds, `namespace/name:port/PROTO/v6/external`, is 160 bytes); a longer name is
/// refused before anything is written, naming the limit.
#[test]
fn pin_restart_restores_maximum_length_names_exactly() {
    let dir = PinDir::new("names").unwrap();
    let longest_k8s = format!(
        "{}/{}:{}/SCTP/v6/external",
        "n".repeat(63),
        "s".repeat(63),
        "p".repeat(15)
    );
    assert_eq!(longest_k8s.len(), 160);
    // Exactly at the limit, ending in a multi-byte character (stored bytes, not chars).
    let at_limit = "x".repeat(lb_common::SERVICE_NAME_MAX - 2) + "é";
    assert_eq!(at_limit.len(), lb_common::SERVICE_NAME_MAX);
    let names = [longest_k8s, at_limit];
    let before = {
        let mut dp = Dataplane::load(pinned(&dir)).unwrap();
        for (i, name) in names.iter().enumerate() {
            dp.upsert_service(&spec(name, 30080 + i as u16, &[2 + i as u8]))
                .unwrap();
        }
        let too_long = "y".repeat(lb_common::SERVICE_NAME_MAX + 1);
        let e = dp
            .upsert_service(&spec(&too_long, 30090, &[9]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("253 bytes") && e.contains("252"), "{e}");
        assert_eq!(dp.service_names().len(), 2, "nothing of the refused one");
        dp.dump()
    };
    let dp = Dataplane::load(pinned(&dir)).unwrap();
    let mut restored = dp.service_names();
    restored.sort();
    let mut want = names.to_vec();
    want.sort();
    assert_eq!(restored, want);
    assert_eq!(dp.dump(), before);
    assert!(lb_userspace::pins::uninstall(&dir_pin(&dir)).unwrap());
}

fn dir_pin(dir: &PinDir) -> PinConfig {
    pinned(dir).pin.unwrap()
}

/// The pinned `SERVICES` map, as another process (or a test simulating a crash) sees it.
fn pinned_services(
    dir: &PinDir,
) -> aya::maps::HashMap<aya::maps::MapData, lb_common::ServiceKey, lb_common::ServiceValue> {
    let path = dir_pin(dir).map_path(lb_common::map_names::SERVICES);
    aya::maps::HashMap::try_from(aya::maps::Map::HashMap(
        aya::maps::MapData::from_pin(path).unwrap(),
    ))
    .unwrap()
}

/// An agent stopped between two frontend writes of a table change leaves one frontend on
/// the old table and one on the new: a restarted agent reserves both ranges (no other
/// service gets slots a frontend still reads), and releases the old one once it has moved
/// every frontend to one table.
#[test]
fn pin_restore_reserves_every_table_a_frontend_names() {
    let dir = PinDir::new("strays").unwrap();
    let (old_value, new_value) = {
        let mut dp = Dataplane::load(pinned(&dir)).unwrap();
        dp.upsert_service(&spec("default/web:http", 30080, &[2, 6, 10]))
            .unwrap();
        let old = pinned_services(&dir).iter().next().unwrap().unwrap().1;
        // Five backends: a table of another size in a fresh range; the old one is cleared.
        dp.upsert_service(&spec("default/web:http", 30080, &[2, 6, 10, 14, 18]))
            .unwrap();
        let new = pinned_services(&dir).iter().next().unwrap().unwrap().1;
        assert_ne!(old.slot_offset, new.slot_offset);
        (old, new)
    };
    // The crash: the NodePort frontend still names the old range (as if its write never
    // happened); the old range is not in use by anything this process knows.
    let mut services = pinned_services(&dir);
    let nodeport = services
        .keys()
        .map(|k| k.unwrap())
        .find(|k| k.scope == lb_common::scope::NODE_PORT)
        .unwrap();
    let stale = lb_common::ServiceValue {
        flags: new_value.flags,
        ..old_value
    };
    services.insert(nodeport, stale, 0).unwrap();
    let old_range = old_value.slot_offset..old_value.slot_offset + old_value.slot_count;

    let mut dp = Dataplane::load(pinned(&dir)).unwrap();
    // Another service of the old table's size must get slots elsewhere.
    dp.upsert_service(&spec("default/api:http", 30081, &[22, 26, 30]))
        .unwrap();
    let api = |services: &aya::maps::HashMap<_, lb_common::ServiceKey, lb_common::ServiceValue>| {
        services
            .iter()
            .map(|e| e.unwrap().1)
            .find(|v| v.id != new_value.id)
            .unwrap()
    };
    let api_value = api(&pinned_services(&dir));
    assert_eq!(api_value.slot_count, old_value.slot_count);
    let api_range = api_value.slot_offset..api_value.slot_offset + api_value.slot_count;
    assert!(
        api_range.end <= old_range.start || api_range.start >= old_range.end,
        "api got {api_range:?}, which the web NodePort frontend still names ({old_range:?})"
    );
    // The next write of web moves every frontend to the table in force and frees the old
    // range: a third service of that size now fits there (first fit).
    dp.upsert_service(&spec("default/web:http", 30080, &[2, 6, 10, 14, 18]))
        .unwrap();
    let web: Vec<_> = pinned_services(&dir)
        .iter()
        .map(|e| e.unwrap().1)
        .filter(|v| v.id == new_value.id)
        .map(|v| (v.slot_offset, v.slot_count))
        .collect();
    assert_eq!(web.len(), 2);
    assert_eq!(web[0], web[1], "both frontends on one table");
    assert_eq!(web[0].1, new_value.slot_count);
    dp.upsert_service(&spec("default/db:sql", 30082, &[34, 38, 42]))
        .unwrap();
    let db = pinned_services(&dir)
        .iter()
        .map(|e| e.unwrap().1)
        .find(|v| v.id != new_value.id && v.id != api_value.id)
        .unwrap();
    assert_eq!(
        db.slot_offset, old_value.slot_offset,
        "the old range was released"
    );
    drop(dp);
    assert!(lb_userspace::pins::uninstall(&dir_pin(&dir)).unwrap());
}

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

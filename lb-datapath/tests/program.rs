//! The planner and writer on the in-memory maps: what an update writes, in which order,
//! and that a refused update writes nothing.

use std::net::SocketAddr;

use lb_datapath::{
    BackendSpec, Capacities, Error, Frontend, MaglevConfig, Protocol, ServiceSpec,
    program::{Maps, MemoryMaps, Programmer, Settings, Write, plan},
};

fn programmer(capacities: Capacities) -> Programmer<MemoryMaps> {
    let settings = Settings {
        capacities,
        maglev: MaglevConfig {
            slots_per_backend: 2,
            max_table_size: 65521,
        },
        hash_seed: 7,
    };
    Programmer::new(MemoryMaps::default(), settings, true)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn spec(backends: &[&str]) -> ServiceSpec {
    ServiceSpec {
        name: "default/web:http/TCP".into(),
        protocol: Protocol::Tcp,
        frontends: vec![Frontend::Address(addr("192.0.2.10:80"))],
        backends: backends
            .iter()
            .map(|b| BackendSpec::ready(addr(b)))
            .collect(),
        ..Default::default()
    }
}

/// The kind of each write, in order.
fn kinds(writes: &[Write]) -> Vec<&'static str> {
    writes
        .iter()
        .map(|w| match w {
            Write::NewService { .. } => "new-service",
            Write::NewBackend { .. } => "new-backend",
            Write::SetBackend { eligible: true, .. } => "eligible",
            Write::SetBackend {
                eligible: false, ..
            } => "not-eligible",
            Write::Slots { .. } => "slots",
            Write::FreshTable { .. } => "fresh-table",
            Write::SourceRange { .. } => "source-range",
            Write::Frontend { .. } => "frontend",
            Write::DeleteSourceRange { .. } => "delete-source-range",
            Write::DeleteFrontend { .. } => "delete-frontend",
            Write::ClearSlots { .. } => "clear-slots",
            Write::DeleteBackend { .. } => "delete-backend",
            Write::RetireService => "retire-service",
        })
        .collect()
}

#[test]
fn a_resize_writes_a_fresh_table_before_the_frontend_and_deletes_after() {
    let mut p = programmer(Capacities::default());
    p.upsert_service(&spec(&["198.51.100.1:80"])).unwrap();
    let grown = spec(&["198.51.100.1:80", "198.51.100.2:80"]);
    let planned = plan::upsert(&p.book, &p.maps, &p.settings, &grown).unwrap();
    assert_eq!(
        kinds(&planned.writes),
        [
            "new-backend",
            "fresh-table",
            "eligible",
            "frontend",
            "clear-slots"
        ]
    );
    let shrunk = spec(&["198.51.100.2:80"]);
    p.upsert_service(&grown).unwrap();
    let planned = plan::upsert(&p.book, &p.maps, &p.settings, &shrunk).unwrap();
    assert_eq!(
        kinds(&planned.writes),
        [
            "not-eligible",
            "fresh-table",
            "frontend",
            "clear-slots",
            "delete-backend"
        ]
    );
}

#[test]
fn the_same_backends_again_write_only_the_frontend() {
    let mut p = programmer(Capacities::default());
    let s = spec(&["198.51.100.1:80", "198.51.100.2:80"]);
    p.upsert_service(&s).unwrap();
    let before = p.maps.render();
    let planned = plan::upsert(&p.book, &p.maps, &p.settings, &s).unwrap();
    assert_eq!(kinds(&planned.writes), ["frontend"]);
    p.upsert_service(&s).unwrap();
    assert_eq!(p.maps.render(), before);
}

#[test]
fn a_capacity_refusal_writes_nothing_and_names_the_setting() {
    let mut p = programmer(Capacities {
        backends: 3,
        ..Capacities::default()
    });
    p.upsert_service(&spec(&["198.51.100.1:80", "198.51.100.2:80"]))
        .unwrap();
    let before = p.maps.render();
    let err = p
        .upsert_service(&spec(&[
            "198.51.100.1:80",
            "198.51.100.2:80",
            "198.51.100.3:80",
            "198.51.100.4:80",
        ]))
        .unwrap_err();
    match err {
        Error::CapacityExceeded { setting, .. } => assert_eq!(setting, "capacities.backends"),
        other => panic!("expected a capacity error, got {other}"),
    }
    assert_eq!(p.maps.render(), before, "a refused update changed the maps");
}

#[test]
fn a_reused_backend_id_gets_the_next_generation() {
    let mut p = programmer(Capacities::default());
    p.upsert_service(&spec(&["198.51.100.1:80"])).unwrap();
    let id = p.book.services["default/web:http/TCP"].backends[&addr("198.51.100.1:80")].id;
    let first = p.maps.backend(id).generation;
    p.upsert_service(&spec(&[])).unwrap();
    assert_eq!(
        p.maps.backend(id).flags,
        0,
        "the removed backend is deleted"
    );
    assert_eq!(
        p.maps.backend(id).generation,
        first,
        "deleting keeps the generation"
    );
    p.purge_stale();
    p.upsert_service(&spec(&["198.51.100.2:80"])).unwrap();
    let again = p.book.services["default/web:http/TCP"].backends[&addr("198.51.100.2:80")].id;
    assert_eq!(again, id, "the freed id is reused");
    assert_eq!(p.maps.backend(id).generation, first + 1);
}

//! One watcher event into the tables. Pure (no I/O), so the relist rule is unit-tested.

use std::collections::HashSet;

use kube::runtime::watcher::Event;

use crate::{
    model::Key,
    objects::{Kind, Object},
    tables::Tables,
};

/// A watcher's relist in progress: the keys its `InitApply` events listed so far.
#[derive(Debug)]
pub struct Relist {
    kind: Kind,
    listed: Option<HashSet<Key>>,
}

/// What one event did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The tables changed (the reconcile loop must run).
    pub changed: bool,
    /// A full list completed (`InitDone`).
    pub listed: bool,
    /// Objects rejected by the model: (key, why). The previous good version stays in force.
    pub invalid: Vec<(Key, String)>,
}

impl Relist {
    pub fn new(kind: Kind) -> Self {
        Relist { kind, listed: None }
    }

    /// Applies one event. A relist (`Init`, `InitApply`..., `InitDone`) re-applies what it
    /// lists and removes only objects it no longer lists.
    pub fn apply<K: Into<Object>>(&mut self, tables: &mut Tables, event: Event<K>) -> Outcome {
        let mut out = Outcome::default();
        match event {
            Event::Init => self.listed = Some(HashSet::new()),
            Event::InitApply(o) | Event::Apply(o) => {
                let obj: Object = o.into();
                let key = Key::of(obj.kind(), obj.metadata());
                if let Some(listed) = &mut self.listed {
                    listed.insert(key.clone());
                }
                match tables.apply(&obj) {
                    Ok(changed) => out.changed = changed,
                    Err(invalid) => out.invalid.push((key, invalid.to_string())),
                }
            }
            Event::Delete(o) => {
                let obj: Object = o.into();
                out.changed = tables.remove(self.kind, &Key::of(obj.kind(), obj.metadata()));
            }
            Event::InitDone => {
                let listed = self.listed.take().unwrap_or_default();
                for key in tables.keys(self.kind) {
                    if !listed.contains(&key) {
                        out.changed |= tables.remove(self.kind, &key);
                    }
                }
                out.listed = true;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Service;

    use super::*;

    /// A NodePort service; its clusterIP is derived from the NodePort, so two services of
    /// different NodePorts hold no frontend in common.
    fn svc(name: &str, port: i32) -> Service {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "NodePort", "clusterIP": format!("10.96.{}.{}", port / 256 % 256, port % 256),
                     "ports": [{"port": 80, "nodePort": port}]}
        }))
        .unwrap()
    }

    #[test]
    fn a_frontend_another_service_holds_is_rejected_and_the_holder_keeps_it() {
        let mut t = Tables::default();
        let mut r = Relist::new(Kind::Service);
        let with_external_ip = |name: &str, port: i32| {
            let mut s = svc(name, port);
            s.spec.as_mut().unwrap().external_ips = Some(vec!["203.0.113.7".into()]);
            s
        };
        assert!(
            r.apply(&mut t, Event::Apply(with_external_ip("a", 30001)))
                .changed
        );
        let out = r.apply(&mut t, Event::Apply(with_external_ip("b", 30002)));
        assert!(!out.changed, "a rejected object changes nothing");
        assert_eq!(out.invalid.len(), 1);
        assert_eq!(
            out.invalid[0].1,
            "frontend 203.0.113.7:80/TCP is already used by Service default/a"
        );
        assert!(t.service(&Key::new("default", "b")).is_none());
        // "a" lets it go: "b" takes it at its next event.
        r.apply(&mut t, Event::Delete(with_external_ip("a", 30001)));
        let out = r.apply(&mut t, Event::Apply(with_external_ip("b", 30002)));
        assert!(out.changed && out.invalid.is_empty(), "{out:?}");
    }

    #[test]
    fn a_relist_keeps_what_it_lists_and_removes_only_the_rest() {
        let mut t = Tables::default();
        let mut r = Relist::new(Kind::Service);
        for e in [
            Event::Init,
            Event::InitApply(svc("a", 30001)),
            Event::InitApply(svc("b", 30002)),
            Event::InitDone,
        ] {
            r.apply(&mut t, e);
        }
        assert_eq!(t.take_dirty().services.len(), 2);
        // 410 -> relist: "a" unchanged, "b" gone.
        let steps = [
            Event::Init,
            Event::InitApply(svc("a", 30001)),
            Event::InitDone,
        ];
        let outs: Vec<Outcome> = steps.into_iter().map(|e| r.apply(&mut t, e)).collect();
        assert!(!outs[1].changed, "an unchanged object costs nothing");
        assert!(outs[2].changed && outs[2].listed);
        let dirty = t.take_dirty().services;
        assert_eq!(
            dirty.into_iter().collect::<Vec<_>>(),
            vec![Key::new("default", "b")]
        );
        assert!(t.service(&Key::new("default", "a")).is_some());
        assert!(t.service(&Key::new("default", "b")).is_none());
    }

    #[test]
    fn an_invalid_update_keeps_the_previous_model() {
        let mut t = Tables::default();
        let mut r = Relist::new(Kind::Service);
        r.apply(&mut t, Event::Apply(svc("a", 30001)));
        let out = r.apply(&mut t, Event::Apply(svc("a", 70000)));
        assert!(!out.changed);
        assert!(
            out.invalid[0].1.contains("spec.ports[0].nodePort: 70000"),
            "{out:?}"
        );
        assert_eq!(
            t.service(&Key::new("default", "a")).unwrap().ports[0].node_port,
            Some(30001)
        );
    }
}

//! What `kubectl` would print for the lab's objects: the tables of `get deployments`,
//! `get pods`, `get rs` and `get services`, with kubectl's column names and age format. The
//! rows are the workload driver's views (`workload/views.rs`: [`PodView`],
//! [`ReplicaSetView`], [`ServiceView`], and [`DeploymentView`] as published).

use std::time::Duration;

use crate::k8s::{DeploymentView, Exposure};
use crate::workload::{PodView, ReplicaSetView, ServiceView};

/// kubectl's age: `45s`, `3m12s`, `2h5m`.
pub fn age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..120 => format!("{s}s"),
        120..3600 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

/// Aligned columns, three spaces apart, as kubectl prints them: the `sluice` CLI's table
/// ([`controller::client::table`]), without the final line break.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = controller::client::table(header, rows);
    out.truncate(out.trim_end_matches('\n').len());
    out
}

/// `kubectl get deployments`.
pub fn deployments(d: Option<(&DeploymentView, Duration)>) -> String {
    let Some((d, created)) = d else {
        return "No resources found in default namespace.".to_owned();
    };
    table(
        &["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        &[vec![
            d.name.clone(),
            format!("{}/{}", d.ready, d.replicas),
            d.updated.to_string(),
            d.available.to_string(),
            age(created),
        ]],
    )
}

/// `kubectl get pods [-o wide] [-l key=value]`.
pub fn pods(pods: &[PodView], wide: bool, selector: Option<(&str, &str)>) -> String {
    let selected: Vec<&PodView> = pods
        .iter()
        .filter(|p| selector.is_none_or(|(k, v)| p.labels.get(k).is_some_and(|x| x == v)))
        .collect();
    if selected.is_empty() {
        return "No resources found in default namespace.".to_owned();
    }
    let mut header = vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"];
    if wide {
        header.extend(["IP", "NODE", "IMAGE", "NETNS"]);
    }
    let rows: Vec<Vec<String>> = selected
        .iter()
        .map(|p| {
            let mut row = vec![
                p.name.clone(),
                format!("{}/1", u8::from(p.ready)),
                p.status.to_owned(),
                p.restarts.to_string(),
                age(p.age),
            ];
            if wide {
                row.extend([
                    p.ip.to_string(),
                    crate::k8s::NODE_NAME.to_owned(),
                    format!("v{}", p.version),
                    p.netns.clone(),
                ]);
            }
            row
        })
        .collect();
    table(&header, &rows)
}

/// `kubectl get rs`.
pub fn replica_sets(rs: &[ReplicaSetView]) -> String {
    if rs.is_empty() {
        return "No resources found in default namespace.".to_owned();
    }
    let rows: Vec<Vec<String>> = rs
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.desired.to_string(),
                r.current.to_string(),
                r.ready.to_string(),
                age(r.age),
                r.image.clone(),
                r.revision.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "NAME", "DESIRED", "CURRENT", "READY", "AGE", "IMAGE", "REVISION",
        ],
        &rows,
    )
}

/// `kubectl get services` (the lab allocates no cluster IPs: the data path serves NodePort
/// and LoadBalancer traffic arriving at the node).
pub fn services(svc: Option<&ServiceView>) -> String {
    let Some(s) = svc else {
        return "No resources found in default namespace.".to_owned();
    };
    let external = match s.exposure {
        Exposure::NodePort { .. } => "<none>".to_owned(),
        Exposure::LoadBalancer { vip, .. } => vip.to_string(),
    };
    table(
        &["NAME", "TYPE", "EXTERNAL-IP", "PORT(S)", "AGE"],
        &[vec![
            s.name.clone(),
            s.exposure.type_name().to_owned(),
            external,
            format!("{}:{}/TCP", s.port, s.exposure.node_port()),
            age(s.age),
        ]],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_tables_look_like_kubectl() {
        assert_eq!(age(Duration::from_secs(7)), "7s");
        assert_eq!(age(Duration::from_secs(192)), "3m12s");
        assert_eq!(age(Duration::from_secs(7500)), "2h5m");
        let t = table(
            &["NAME", "READY"],
            &[
                vec!["a-long-name".into(), "1/1".into()],
                vec!["b".into(), "0/1".into()],
            ],
        );
        assert_eq!(
            t,
            "NAME          READY\na-long-name   1/1\nb             0/1"
        );
    }
}

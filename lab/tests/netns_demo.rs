//! Netns tier, the acceptance story: the tutorial walkthrough of `cargo xtask demo` (the
//! `demo` crate) with shorter loads, asserting the numbers of its report rather than only
//! its verdict: every step ok, no failed request, no pod served while not ready, the
//! distinct pods and versions each step saw, and maps left empty.
//!
//! Needs root and the workspace's binaries (`sluice`, `bootcamp`), which `cargo xtask test`
//! builds before running the tiers.

use demo::{Options, Report, StepReport};

fn step<'r>(report: &'r Report, name: &str) -> &'r StepReport {
    report
        .step(name)
        .unwrap_or_else(|| panic!("no step {name} in the report: {report:#?}"))
}

#[test]
fn netns_demo_walkthrough_under_load_loses_no_request() {
    let mut opts = Options::quick();
    opts.out_dir = opts
        .bin_dir
        .parent()
        .expect("the target directory")
        .join("demo-test");
    let report = demo::run(&opts).expect("the walkthrough ran");
    let path = opts.out_dir.join("report.json");
    let written: Report =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("report.json")).expect("JSON");
    assert_eq!(written, report, "report.json holds the returned report");

    if let Err(e) = demo::verify(&report) {
        panic!("the walkthrough did not hold:\n{e}\n{report:#?}");
    }
    assert!(report.ok && !report.interrupted, "{report:#?}");
    let names: Vec<&str> = report.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "create-deployment",
            "expose-nodeport",
            "label-pod",
            "delete-service",
            "expose-loadbalancer",
            "scale-up",
            "scale-down",
            "rolling-update-v2",
            "rollout-status",
            "set-image-v10",
            "rollout-undo",
            "delete",
        ]
    );
    for s in &report.steps {
        assert!(s.ok, "step {}: {s:#?}", s.name);
        assert_eq!(s.failure_count(), 0, "step {}: {:?}", s.name, s.failures);
        assert_eq!(s.served_while_not_ready, 0, "step {}", s.name);
        assert!(
            s.checks.iter().all(|c| c.ok),
            "step {}: {:?}",
            s.name,
            s.checks
        );
    }
    assert!(
        report.total_requests >= opts.min_total_requests,
        "{} requests",
        report.total_requests
    );
    assert_eq!(report.total_failures, 0);

    // Who answered, step by step.
    let v1 = ["v=1".to_owned()];
    let v2 = ["v=2".to_owned()];
    let nodeport = step(&report, "expose-nodeport");
    assert_eq!(
        (nodeport.distinct_pods, nodeport.versions.as_slice()),
        (1, &v1[..])
    );
    let deleted = step(&report, "delete-service");
    assert!(deleted.expected_refusals > 0, "{deleted:#?}");
    assert_eq!(deleted.distinct_pods, 1, "the pod answers from inside");
    assert_eq!(step(&report, "expose-loadbalancer").distinct_pods, 1);
    let up = step(&report, "scale-up");
    assert_eq!(up.distinct_pods, 4, "{up:#?}");
    let total: u64 = up.pods.values().sum();
    for (pod, n) in &up.pods {
        let share = *n as f64 / total as f64;
        assert!((0.15..=0.35).contains(&share), "{pod}: {share}");
    }
    assert_eq!(step(&report, "scale-down").distinct_pods, 2);
    let roll = step(&report, "rolling-update-v2");
    assert_eq!(
        roll.distinct_pods, 4,
        "2 pods of v1, then 2 of v2: {roll:#?}"
    );
    assert_eq!(roll.versions, ["v=1", "v=2"]);
    assert!(roll.requests >= 1000, "{roll:#?}");
    let status = step(&report, "rollout-status");
    assert_eq!(
        (status.distinct_pods, status.versions.as_slice()),
        (2, &v2[..]),
        "the end state answers only v=2"
    );
    let stalled = step(&report, "set-image-v10");
    assert_eq!(stalled.versions, v2, "v10 never served: {stalled:#?}");
    assert_eq!(
        stalled.distinct_pods, 2,
        "both v2 pods, one of them drained: {stalled:#?}"
    );
    let undo = step(&report, "rollout-undo");
    assert_eq!(
        (undo.distinct_pods, undo.versions.as_slice()),
        (2, &v2[..]),
        "{undo:#?}"
    );
    let delete = step(&report, "delete");
    assert!(
        delete
            .checks
            .iter()
            .any(|c| c.ok && c.what.starts_with("CONNTRACK holds 0")),
        "{delete:#?}"
    );
    // The load reported its keep-alive recoveries (zero or more), and nothing is left behind.
    println!(
        "{} requests, {} retried; report: {}",
        report.total_requests,
        report.total_retried,
        path.display()
    );
}

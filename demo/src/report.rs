//! The demo's report: one record per step of the walkthrough (what was sent, what answered,
//! what failed) written to `report.json`, and the tally that builds a step's record from
//! load-generator reports and the workload driver's counters.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::error::Result;
use bench::load::Report as LoadReport;
use lab::error::Context as _;
use serde::{Deserialize, Serialize};

use crate::bootcamp::parse_greeting;
use crate::workload::StepCounters;

/// One check of a step, as printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub what: String,
    pub ok: bool,
}

/// One step of the walkthrough.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// Short name (`rolling-update-v2`).
    pub name: String,
    /// The kubectl command(s) a user would type.
    pub command: String,
    /// Every check held and no error ended the step.
    pub ok: bool,
    /// Requests sent (load generator, curl-like probes through the data path, and requests
    /// to a pod's own address); each ended as exactly one outcome.
    pub requests: u64,
    /// Unexpected failures by kind: load outcomes (`refused`, `reset`, `timeout`,
    /// `bad_response`, `other:<kind>`) and driver events (`drain_handshake_timeout`, ...).
    pub failures: BTreeMap<String, u64>,
    /// Requests the load generator sent again after their reused keep-alive connection was
    /// found closed before any reply byte (recovered, not hidden).
    pub retried: u64,
    /// Connections pods accepted before their first readiness or after the data path stopped
    /// selecting them (besides the driver's own probes).
    pub served_while_not_ready: u64,
    /// Connections refused where a refusal was the point (no Service).
    pub expected_refusals: u64,
    /// Distinct pods that answered requests of this step.
    pub distinct_pods: usize,
    /// Answers per pod.
    pub pods: BTreeMap<String, u64>,
    /// Versions that answered (`v=1`).
    pub versions: Vec<String>,
    pub duration_s: f64,
    pub checks: Vec<Check>,
    /// The error that ended the step early, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl StepReport {
    /// Sum of the unexpected failures.
    pub fn failure_count(&self) -> u64 {
        self.failures.values().sum()
    }
}

/// The whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub steps: Vec<StepReport>,
    /// Every step ok and every overall check held.
    pub ok: bool,
    pub total_requests: u64,
    pub total_failures: u64,
    pub total_retried: u64,
    /// Checks over the whole run (request count, checksum errors).
    pub checks: Vec<Check>,
    /// The run was interrupted (Ctrl-C) before it finished.
    pub interrupted: bool,
    /// The NodePort and LoadBalancer VIP the Service used.
    pub node_port: u16,
    pub vip: String,
    /// The background load of the steps under load.
    pub load: serde_json::Value,
    /// The chart of the run beside this report (`rollout.png`, its data in `rollout.json`),
    /// if it could be drawn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_chart: Option<String>,
}

impl Report {
    /// The step called `name`.
    pub fn step(&self, name: &str) -> Option<&StepReport> {
        self.steps.iter().find(|s| s.name == name)
    }

    /// Writes the report as pretty JSON.
    pub fn write(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(self).context("encoding the report")?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }
}

/// Accumulates a step's numbers.
#[derive(Debug, Default)]
pub struct Tally {
    pub requests: u64,
    pub failures: BTreeMap<String, u64>,
    pub retried: u64,
    pub expected_refusals: u64,
    pub served_while_not_ready: u64,
    pub pods: BTreeMap<String, u64>,
    pub versions: BTreeSet<u32>,
    pub checks: Vec<Check>,
}

/// Pods and versions in a load report's responders.
pub fn answers(r: &LoadReport) -> (BTreeMap<String, u64>, BTreeSet<u32>) {
    let mut pods = BTreeMap::new();
    let mut versions = BTreeSet::new();
    for (body, n) in &r.responders {
        if let Some((pod, v)) = parse_greeting(body) {
            *pods.entry(pod.to_owned()).or_default() += n;
            versions.insert(v);
        }
    }
    (pods, versions)
}

impl Tally {
    /// Counts a load run. With `refusals_expected`, refused connections are expected and
    /// answers are the failures (`answered`).
    pub fn load(&mut self, r: &LoadReport, refusals_expected: bool) {
        let o = &r.outcomes;
        self.requests += r.sent;
        self.retried += r.retried;
        let mut fail = |kind: &str, n: u64| {
            if n > 0 {
                *self.failures.entry(kind.to_owned()).or_default() += n;
            }
        };
        if refusals_expected {
            self.expected_refusals += o.refused;
            fail("answered", o.ok);
        } else {
            fail("refused", o.refused);
        }
        fail("reset", o.reset);
        fail("timeout", o.timeout);
        fail("bad_response", o.bad_response);
        for (kind, n) in &o.other {
            fail(&format!("other:{kind}"), *n);
        }
        let (pods, versions) = answers(r);
        for (pod, n) in pods {
            *self.pods.entry(pod).or_default() += n;
        }
        self.versions.extend(versions);
    }

    /// Counts one request answered by `pod` running `version` (a curl-like probe).
    pub fn answered(&mut self, pod: &str, version: u32) {
        self.requests += 1;
        *self.pods.entry(pod.to_owned()).or_default() += 1;
        self.versions.insert(version);
    }

    /// Counts one request that failed unexpectedly.
    pub fn failed(&mut self, kind: &str) {
        self.requests += 1;
        *self.failures.entry(kind.to_owned()).or_default() += 1;
    }

    /// Adds the driver's counters.
    pub fn driver(&mut self, c: &StepCounters) {
        self.served_while_not_ready += c.served_while_not_ready;
        for (kind, n) in &c.failures {
            *self.failures.entry(kind.clone()).or_default() += n;
        }
    }

    /// Records a check and prints it.
    pub fn check(&mut self, ok: bool, what: impl Into<String>) -> bool {
        let what = what.into();
        println!("  [{}] {what}", if ok { " ok " } else { "FAIL" });
        self.checks.push(Check { what, ok });
        ok
    }

    /// The step's record.
    pub fn finish(
        self,
        name: &str,
        command: &str,
        duration_s: f64,
        error: Option<String>,
    ) -> StepReport {
        let ok = error.is_none() && self.checks.iter().all(|c| c.ok);
        StepReport {
            name: name.to_owned(),
            command: command.to_owned(),
            ok,
            requests: self.requests,
            failures: self.failures,
            retried: self.retried,
            served_while_not_ready: self.served_while_not_ready,
            expected_refusals: self.expected_refusals,
            distinct_pods: self.pods.len(),
            pods: self.pods,
            versions: self.versions.iter().map(|v| format!("v={v}")).collect(),
            duration_s,
            checks: self.checks,
            error,
        }
    }
}

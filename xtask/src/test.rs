//! The test tiers, run in order; each prints libtest's `test NAME ... ok` lines.

use std::process::Command;

use anyhow::{Result, bail};

use crate::setup::sh;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Tier {
    /// Pure tests: ABI, checksums, Maglev, ids, load generator, packet builder, the agent's
    /// golden, API, health-check and incremental tests, and the Kubernetes source against a
    /// mock API server (envtest's real one when KUBEBUILDER_ASSETS is set).
    Unit,
    /// BPF_PROG_TEST_RUN tables inside a prepared namespace, pinning (root).
    Packet,
    /// Real TCP/UDP through namespaces and veth: data path, semantics under load, IPv6,
    /// restart/replace, the agent end to end (root).
    Netns,
}

pub fn build() -> Result<()> {
    sh(Command::new("cargo").args(["build", "--workspace", "--all-targets"]))
}

fn cargo_test(args: &[&str], test_args: &[&str]) -> Result<()> {
    cargo_test_env(args, test_args, &[])
}

fn cargo_test_env(args: &[&str], test_args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let mut cmd = Command::new("cargo");
    cmd.arg("test").args(args).arg("--").args(test_args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    sh(&mut cmd)
}

pub fn run(tiers: &[Tier]) -> Result<()> {
    let all = [Tier::Unit, Tier::Packet, Tier::Netns];
    let tiers: Vec<Tier> = if tiers.is_empty() {
        all.to_vec()
    } else {
        tiers.to_vec()
    };
    let root = {
        // SAFETY: geteuid has no preconditions.
        unsafe extern "C" {
            fn geteuid() -> u32;
        }
        unsafe { geteuid() == 0 }
    };
    if !root && tiers.iter().any(|t| *t != Tier::Unit) {
        bail!("the packet and netns tiers load eBPF programs and create namespaces: run as root");
    }
    let mut failed = Vec::new();
    for tier in tiers {
        println!("\n=== tier: {tier:?} ===");
        let r = match tier {
            // Unprivileged: every crate's unit tests, the load generator against loopback
            // servers, the planner's write order (lb-datapath), the agent's golden / HTTP API /
            // health-check / incremental tests, and the cluster tier: the Kubernetes source against kube-mock's API server (and
            // against a real one where KUBEBUILDER_ASSETS names kube-apiserver and etcd).
            Tier::Unit => cargo_test(&["--workspace", "--lib", "--bins"], &[]).and_then(|()| {
                cargo_test(
                    &[
                        "-p",
                        "bench",
                        "-p",
                        "controller",
                        "-p",
                        "kube-mock",
                        "-p",
                        "lb-datapath",
                        "--test",
                        "*",
                    ],
                    &[],
                )
            }),
            // Every integration test of lb-userspace (packet_*, pins, protections): all of
            // them run programs in a lab's node namespace.
            Tier::Packet => cargo_test(&["-p", "lb-userspace", "--test", "*"], &[]),
            // Namespace tests share the machine's 2 cores; run them one at a time. Twice: with
            // the XDP program on the node's uplink, then with the TC ingress classifier
            // (`SLUICE_TEST_INGRESS`, read by lab/tests/common).
            Tier::Netns => ["xdp", "tc"].into_iter().try_for_each(|mode| {
                println!("--- netns tests, ingress mode {mode} ---");
                cargo_test_env(
                    &["-p", "lab", "--test", "*"],
                    &["--test-threads=1"],
                    &[("SLUICE_TEST_INGRESS", mode)],
                )
            }),
        };
        if let Err(e) = r {
            eprintln!("tier {tier:?} failed: {e:#}");
            failed.push(tier);
        }
    }
    if !failed.is_empty() {
        bail!("failed tiers: {failed:?}");
    }
    println!("\nall tiers passed");
    Ok(())
}

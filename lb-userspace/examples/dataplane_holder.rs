//! A minimal process that holds a pinned data path, for restart / replace tests and manual
//! experiments (the `sluice` agent does this for real):
//!
//! ```text
//! dataplane_holder --pin-root DIR --instance NAME --uplink IF [--mode auto|xdp|tc]
//!                  [--redirect IF]... --spec FILE
//! dataplane_holder --pin-root DIR --instance NAME --uninstall
//! ```
//!
//! It loads (adopting pins), attaches to the uplink (a pinned link is updated in place),
//! applies the services in FILE (a JSON array of `ServiceSpec`), prints `ready <mode>
//! prog=<id of the ingress program>` and
//! waits for SIGTERM, then exits leaving the data path serving.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use lb_userspace::{Dataplane, DataplaneConfig, PinConfig, ServiceSpec};
use nix::sys::signal::{SigSet, Signal};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut pin, mut uplink, mut spec, mut uninstall) = (PinConfig::default(), None, None, false);
    let mut ingress_mode = lb_userspace::IngressMode::default();
    let mut redirect = Vec::new();
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--pin-root" => pin.root = PathBuf::from(value()?),
            "--instance" => pin.instance = value()?,
            "--uplink" => uplink = Some(value()?),
            "--redirect" => redirect.push(value()?),
            "--spec" => spec = Some(PathBuf::from(value()?)),
            "--mode" => ingress_mode = value()?.parse()?,
            "--uninstall" => uninstall = true,
            other => bail!("unknown argument {other}"),
        }
    }
    if uninstall {
        let removed = lb_userspace::pins::uninstall(&pin)?;
        println!("uninstalled {removed}");
        return Ok(());
    }
    // Block SIGTERM before anything else so it can only be taken by sigwait below.
    let mut term = SigSet::empty();
    term.add(Signal::SIGTERM);
    term.thread_block()?;

    let specs: Vec<ServiceSpec> = match &spec {
        Some(path) => serde_json::from_str(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("parsing {}", path.display()))?,
        None => Vec::new(),
    };
    let cfg = DataplaneConfig {
        pin: Some(pin),
        ingress_mode,
        ..Default::default()
    };
    let mut dp = Dataplane::load(cfg)?;
    let mode = match &uplink {
        Some(ifname) => {
            let mode = dp.attach(ifname)?;
            let program = match mode.ingress() {
                lb_userspace::ingress_mode::Ingress::Xdp => lb_common::program_names::XDP_LB,
                lb_userspace::ingress_mode::Ingress::Tc => lb_common::program_names::TC_LB,
            };
            let id = dp.program_id(program).unwrap_or(0);
            format!("{mode:?} prog={id}")
        }
        None => "unattached".into(),
    };
    for ifname in &redirect {
        dp.allow_redirect(ifname)?;
    }
    for s in &specs {
        dp.upsert_service(s)?;
    }
    dp.purge_stale()?;
    println!("ready {mode} services={}", dp.service_names().len());
    term.wait()?;
    println!("bye");
    Ok(())
}

//! Opens the real data path for the agent: checks the interfaces, loads (or adopts) the
//! pinned programs and maps, attaches them, and hands the agent the aya-free trait object.

use anyhow::Context as _;
use controller::{agent::AgentConfig, state::BoxedDataPath};
use lb_userspace::Dataplane;

pub fn open(cfg: &AgentConfig) -> anyhow::Result<BoxedDataPath> {
    for i in cfg.interfaces.iter().chain(&cfg.redirect_interfaces) {
        lb_userspace::attach::ifindex(i).with_context(|| format!("interface {i}"))?;
    }
    let mut dp = Dataplane::load(cfg.dataplane.clone()).context("loading the data path")?;
    for i in &cfg.interfaces {
        let mode = dp.attach(i).with_context(|| format!("attaching to {i}"))?;
        tracing::info!(interface = %i, ?mode, ingress = mode.ingress().name(), "attached");
    }
    for i in &cfg.redirect_interfaces {
        dp.allow_redirect(i)
            .with_context(|| format!("redirect device {i}"))?;
    }
    Ok(Box::new(dp))
}

//! `sluice`: the node agent and its CLI. Thin: parse, validate, hand over.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use controller::{agent::AgentConfig, client};

mod datapath;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "eBPF service load balancer: node agent and CLI"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (root): attach the data path and keep it in step with the sources.
    Run(Box<RunArgs>),
    /// Remove the pinned data path (links and maps) of an instance.
    Uninstall {
        #[arg(long, default_value = "/sys/fs/bpf/sluice")]
        pin_root: PathBuf,
        #[arg(long, default_value = "default")]
        instance: String,
    },
    /// Services the data path holds.
    Services(ClientArgs),
    /// Backends of one service (or all) with their state and counters.
    Backends {
        service: Option<String>,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Deployments and their rollout status.
    Rollouts(ClientArgs),
    /// Wait until the agent no longer selects ADDRESS for new flows (a preStop hook).
    DrainWait {
        /// The endpoint (a pod's address). Kubernetes does not expand `$(VAR)` in lifecycle
        /// hook commands, so a hook leaves it out and sets POD_IP from the downward API.
        #[arg(env = "POD_IP")]
        address: IpAddr,
        /// Ask every agent of the DaemonSet (the peers the agent at --api lists, from the
        /// headless Service deploy/agents-service.yaml), not only the one at --api (see
        /// deploy/examples/drain-prestop.yaml).
        #[arg(long)]
        all_nodes: bool,
        /// Give up (exit 1) after this many seconds.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
        /// Also wait until no tracked flow names the endpoint.
        #[arg(long)]
        flows: bool,
        #[command(flatten)]
        c: ClientArgs,
    },
}

#[derive(clap::Args)]
struct ClientArgs {
    /// The agent's API address (in a pod: env `SLUICE_API: $(HOST_IP):10260`, which
    /// Kubernetes expands in env values).
    #[arg(long, env = "SLUICE_API", default_value = "127.0.0.1:10260")]
    api: SocketAddr,
    /// Output format: table (default) or json.
    #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "json"])]
    output: String,
}

#[derive(clap::Args)]
struct RunArgs {
    /// YAML configuration file (see README); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Interface to attach to (repeat for several).
    #[arg(long = "interface")]
    interfaces: Vec<String>,
    /// Device translated frames may be redirected to (repeat).
    #[arg(long = "redirect")]
    redirect: Vec<String>,
    /// Directory of Kubernetes YAML manifests to watch (standalone mode).
    #[arg(long)]
    manifests: Option<PathBuf>,
    /// Kubernetes mode: watch the API server of this kubeconfig. Without it, the agent runs
    /// in Kubernetes mode with the in-cluster configuration when KUBERNETES_SERVICE_HOST is
    /// set (a DaemonSet pod) and no --manifests are given.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// This node's name (its Node object; default: $NODE_NAME, else the host name).
    #[arg(long)]
    node_name: Option<String>,
    #[arg(long)]
    api_listen: Option<SocketAddr>,
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// File with the bearer token for API writes.
    #[arg(long)]
    token_file: Option<PathBuf>,
    #[arg(long)]
    pin_root: Option<PathBuf>,
    #[arg(long)]
    instance: Option<String>,
    /// Directory keeping the API's objects across restarts (default /var/lib/sluice).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The NodePorts services may take, FIRST-LAST (default 30000-32767, as Kubernetes').
    #[arg(long)]
    node_port_range: Option<controller::protections::PortRange>,
    /// Which program takes each interface's ingress: `auto` (the default: `tc` on a veth,
    /// `xdp` on anything else), `xdp` or `tc` (the TC classifier at TCX ingress, Linux 6.6+).
    /// Overrides `dataplane.ingress_mode` of the config file.
    #[arg(long, value_name = "auto|xdp|tc")]
    mode: Option<lb_userspace::IngressMode>,
}

fn run_config(a: RunArgs) -> anyhow::Result<AgentConfig> {
    let mut cfg: AgentConfig = match &a.config {
        Some(p) => serde_yaml::from_str(
            &std::fs::read_to_string(p).with_context(|| format!("config file {}", p.display()))?,
        )
        .with_context(|| format!("config file {}", p.display()))?,
        None => AgentConfig::default(),
    };
    if !a.interfaces.is_empty() {
        cfg.interfaces = a.interfaces;
    }
    if !a.redirect.is_empty() {
        cfg.redirect_interfaces = a.redirect;
    }
    cfg.manifests = a.manifests.or(cfg.manifests);
    cfg.kubeconfig = a.kubeconfig.or(cfg.kubeconfig);
    cfg.node_name = a.node_name.or(cfg.node_name);
    if cfg.kubeconfig.is_none()
        && cfg.manifests.is_none()
        && std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
    {
        cfg.in_cluster = true;
    }
    cfg.api_listen = a.api_listen.unwrap_or(cfg.api_listen);
    cfg.metrics_listen = a.metrics_listen.unwrap_or(cfg.metrics_listen);
    cfg.token_file = a.token_file.or(cfg.token_file);
    if let Some(d) = a.state_dir {
        cfg.state_dir = d;
    }
    cfg.node_port_range = a.node_port_range.unwrap_or(cfg.node_port_range);
    cfg.dataplane.ingress_mode = a.mode.unwrap_or(cfg.dataplane.ingress_mode);
    if let Some(pin) = cfg.dataplane.pin.as_mut() {
        if let Some(r) = a.pin_root {
            pin.root = r;
        }
        if let Some(i) = a.instance {
            pin.instance = i;
        }
    }
    Ok(cfg)
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            // kube's client logs every failed request of a retried watch as an ERROR; the
            // agent logs each distinct watch error once itself.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube_client::client::builder=off".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result: anyhow::Result<String> = match cli.command {
        Command::Run(a) => run_config(*a).and_then(|cfg| {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(controller::agent::run(cfg, datapath::open))
                .map(|()| String::new())
                .map_err(anyhow::Error::from)
        }),
        Command::Uninstall { pin_root, instance } => {
            let pin = lb_userspace::PinConfig {
                root: pin_root,
                instance,
            };
            lb_userspace::pins::uninstall(&pin)
                .map(|removed| {
                    if removed {
                        format!("removed {}\n", pin.instance_dir().display())
                    } else {
                        "nothing to remove\n".into()
                    }
                })
                .map_err(Into::into)
        }
        Command::Services(c) => client::services(c.api, c.output == "json").map_err(Into::into),
        Command::Backends { service, c } => {
            client::backends(c.api, service.as_deref(), c.output == "json").map_err(Into::into)
        }
        Command::Rollouts(c) => client::rollouts(c.api, c.output == "json").map_err(Into::into),
        Command::DrainWait {
            address,
            all_nodes,
            timeout,
            flows,
            c,
        } => {
            let wait = if all_nodes {
                client::drain_wait_all
            } else {
                client::drain_wait
            };
            Duration::try_from_secs_f64(timeout)
                .context("--timeout: a number of seconds, 0 or more")
                .and_then(|timeout| Ok(wait(c.api, address, timeout, flows)?))
        }
    };
    match result {
        Ok(out) => {
            print!("{out}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sluice: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(args: &[&str]) -> Result<RunArgs, clap::Error> {
        let cli = Cli::try_parse_from(["sluice", "run"].iter().chain(args))?;
        match cli.command {
            Command::Run(a) => Ok(*a),
            _ => panic!("not a run command"),
        }
    }

    #[test]
    fn the_mode_flag_overrides_the_config_file_and_unknown_modes_name_the_accepted_ones() {
        use lb_userspace::IngressMode;
        let dir = std::env::temp_dir().join(format!("sluice-mode-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("agent.yaml");
        std::fs::write(&file, "dataplane:\n  ingress_mode: xdp\n").unwrap();
        let file = file.to_str().unwrap();
        let mode = |args: &[&str]| {
            run_config(run_args(args).unwrap())
                .unwrap()
                .dataplane
                .ingress_mode
        };
        assert_eq!(mode(&[]), IngressMode::Auto, "the default");
        assert_eq!(mode(&["--config", file]), IngressMode::Xdp, "the file's");
        assert_eq!(mode(&["--config", file, "--mode", "tc"]), IngressMode::Tc);
        assert_eq!(
            mode(&["--config", file, "--mode", "auto"]),
            IngressMode::Auto
        );
        assert_eq!(mode(&["--mode", "xdp"]), IngressMode::Xdp);
        let e = run_args(&["--mode", "ebpf"])
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("expected one of auto, xdp, tc"), "{e}");
        std::fs::write(file, "dataplane:\n  ingress_mode: native\n").unwrap();
        let e = format!(
            "{:#}",
            run_config(run_args(&["--config", file]).unwrap()).expect_err("refused")
        );
        assert!(e.contains("`auto`, `xdp`, `tc`"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! `flotilla install`: prints the manifests for one cluster, for `kubectl apply -f -`.
//! Argument handling and token sorting only; the manifests come from `flotilla-kube`.

use anyhow::{Context, bail};
use flotilla_kube::install::{self, InstallOptions, JoinTokens, Resources};
use flotilla_pki::{JoinToken, Role};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Output {
    /// Multi-document YAML.
    Yaml,
    /// One JSON `v1/List`.
    Json,
}

/// Print the Kubernetes manifests for one cluster of a federation: namespace, service
/// accounts and the controller's Role, the server StatefulSet, the agent DaemonSet
/// (one per GPU node), the controller and gateway Deployments, services, disruption
/// budgets, network policies and the join-token Secret.
/// Apply with `flotilla install … | kubectl apply -f -`.
#[derive(Debug, clap::Args)]
pub(crate) struct InstallArgs {
    /// This cluster's name (a DNS label).
    #[arg(long)]
    cluster: String,
    /// The cluster's region.
    #[arg(long)]
    region: String,
    /// The cluster's zone within its region.
    #[arg(long, default_value = "")]
    zone: String,
    /// The federation's name.
    #[arg(long, default_value = "flotilla")]
    federation: String,
    /// This cluster starts the federation: its server 0 creates the CA.
    #[arg(long)]
    init: bool,
    /// A join token for this cluster (from `flotilla federation token`); repeat it for
    /// each server pod that joins, and once each for the controller (an agent
    /// token), the GPU nodes' agents (a node token) and the gateway. The node token
    /// is shared by every GPU node's agent, each joining once as its own node:
    /// issue it with `--uses` of at least the GPU nodes.
    #[arg(long = "join", value_name = "TOKEN")]
    join: Vec<String>,
    /// The controller also applies Istio objects (ServiceEntries, WorkloadEntries,
    /// DestinationRules) so traffic through Istio's east-west gateway follows the
    /// placements; its Role grants those kinds.
    #[arg(long)]
    istio: bool,
    /// The gateway enforces no governance: every caller reaches every model. By
    /// default it follows the registry's tenants, API keys and policies
    /// (`flotilla ctl tenant|key|policy`) and enforces them.
    #[arg(long)]
    open: bool,
    /// A Secret you made holding the gateway's approved external endpoints:
    /// endpoints.toml (as `flotilla gateway --external-endpoints` reads it) and
    /// the credential and CA files it names. Mounted read-only into the gateway
    /// only; tenants whose policy names an endpoint fall back to it when no
    /// cluster has a ready replica.
    #[arg(long, value_name = "SECRET")]
    external_endpoints_secret: Option<String>,
    #[command(flatten)]
    istio_networks: crate::istio_args::IstioNetworks,
    #[command(flatten)]
    istio_mode: crate::istio_args::IstioModeArg,
    /// The namespace everything goes into.
    #[arg(long, default_value = "flotilla")]
    namespace: String,
    /// The flotilla image.
    #[arg(long, default_value = concat!("ghcr.io/flotilla-dev/flotilla:", env!("CARGO_PKG_VERSION")))]
    image: String,
    /// How many registry servers (Raft members) this cluster runs.
    #[arg(long, default_value_t = 1)]
    server_replicas: u32,
    /// How other clusters reach server N, with {ordinal} in it
    /// (flotilla-{ordinal}.c1.example.com:7400); adds a LoadBalancer per server.
    #[arg(long, default_value = "", value_name = "HOST:PORT")]
    server_advertise: String,
    /// Where other clusters reach this cluster's east-west gateway.
    #[arg(long, default_value = "", value_name = "HOST:PORT")]
    gateway_address: String,
    /// The RuntimeClass that exposes the host's NVIDIA driver ("" for the default).
    #[arg(long, default_value = "nvidia")]
    runtime_class: String,
    /// The size of each server's Raft volume.
    #[arg(long, default_value = "10Gi")]
    storage_size: String,
    /// The StorageClass of the Raft volumes (the cluster's default if not given).
    #[arg(long)]
    storage_class: Option<String>,
    #[arg(long, default_value = "500m")]
    server_cpu: String,
    #[arg(long, default_value = "1Gi")]
    server_memory: String,
    #[arg(long, default_value = "100m")]
    agent_cpu: String,
    #[arg(long, default_value = "128Mi")]
    agent_memory: String,
    #[arg(long, default_value = "100m")]
    controller_cpu: String,
    #[arg(long, default_value = "256Mi")]
    controller_memory: String,
    #[arg(long, default_value = "500m")]
    gateway_cpu: String,
    #[arg(long, default_value = "256Mi")]
    gateway_memory: String,
    /// The output format.
    #[arg(long, value_enum, default_value = "yaml")]
    output: Output,
}

/// Sorts the tokens by role, checking each is for this cluster and federation.
fn sort_tokens(args: &InstallArgs) -> anyhow::Result<JoinTokens> {
    let mut tokens = JoinTokens::default();
    for (i, raw) in args.join.iter().enumerate() {
        let n = i + 1;
        let token = JoinToken::decode(raw).with_context(|| format!("--join #{n}"))?;
        if token.cluster != args.cluster {
            bail!(
                "--join #{n} is for cluster {:?}, not {:?}",
                token.cluster,
                args.cluster
            );
        }
        if token.federation != args.federation {
            bail!(
                "--join #{n} is for federation {:?}, not {:?} (set --federation)",
                token.federation,
                args.federation
            );
        }
        let slot = match token.role {
            Role::Server => {
                tokens.servers.push(raw.clone());
                continue;
            }
            Role::Agent => &mut tokens.agent,
            Role::Node => &mut tokens.node,
            Role::Gateway => &mut tokens.gateway,
            other => {
                bail!(
                    "--join #{n} is a token for a {other}; give server, agent (the controller's), node (the GPU nodes' agents') or gateway tokens"
                )
            }
        };
        if slot.replace(raw.clone()).is_some() {
            bail!("--join #{n}: a second {} token", token.role);
        }
    }
    Ok(tokens)
}

fn options(args: &InstallArgs) -> anyhow::Result<InstallOptions> {
    let mut o = InstallOptions::new(&args.cluster, &args.region);
    o.zone = args.zone.clone();
    o.federation = args.federation.clone();
    o.init = args.init;
    o.join = sort_tokens(args)?;
    o.open = args.open;
    o.external_endpoints_secret = args.external_endpoints_secret.clone();
    o.istio = args.istio;
    o.istio_networks = args.istio_networks.networks.clone();
    o.istio_mode = args.istio_mode.mode;
    o.namespace = args.namespace.clone();
    o.image = args.image.clone();
    o.server_replicas = args.server_replicas;
    o.server_advertise = args.server_advertise.clone();
    o.gateway_address = args.gateway_address.clone();
    o.runtime_class = (!args.runtime_class.is_empty()).then(|| args.runtime_class.clone());
    o.storage_size = args.storage_size.clone();
    o.storage_class = args.storage_class.clone();
    o.server_resources = resources(&args.server_cpu, &args.server_memory);
    o.agent_resources = resources(&args.agent_cpu, &args.agent_memory);
    o.controller_resources = resources(&args.controller_cpu, &args.controller_memory);
    o.gateway_resources = resources(&args.gateway_cpu, &args.gateway_memory);
    Ok(o)
}

pub(crate) fn run(args: InstallArgs) -> anyhow::Result<()> {
    let objects = install::render(&options(&args)?)?;
    let text = match args.output {
        Output::Yaml => flotilla_kube::output::to_yaml(&objects)?,
        Output::Json => flotilla_kube::output::to_json(&objects),
    };
    print!("{text}");
    Ok(())
}

/// A container's CPU and memory, as the flags give them.
fn resources(cpu: &str, memory: &str) -> Resources {
    Resources {
        cpu: cpu.to_owned(),
        memory: memory.to_owned(),
    }
}

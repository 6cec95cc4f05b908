//! `flotilla agent`: this cluster's agent. Reports GPU capacity to the federation,
//! runs the replicas placed here as local processes, and serves the admin endpoint.
//! Argument handling and wiring only; the work is in `flotilla-agent`.
//!
//! Identity: `--state-dir DIR --join TOKEN` (a token from `flotilla federation token
//! --role agent --cluster C`) makes a key here, gets a certificate from the CA server
//! named in the token and stores it in `DIR/pki/` (`agent.pem`, `agent-key.pem`,
//! `ca.pem`); later starts need only `--state-dir DIR`. With an identity the agent
//! speaks mTLS to the servers and renews its certificate in place before it expires.
//! Plaintext needs `--insecure` (local development only, and it says so).
//!
//! Replicas run as local `flotilla model` processes (`--materializer local`), or as
//! Deployments and Services in `--namespace` (`--materializer kubernetes`, with the
//! pod's service account or KUBECONFIG), or not at all (`--materializer none`: a
//! node agent that only reports GPUs while a cluster-wide controller makes replicas).
//!
//! `--report-scope node` makes this one agent of many in its cluster (one per GPU
//! node, as a DaemonSet runs it): it reports only the nodes it sees, and renews their
//! leases by sending that report again every heartbeat interval.

use anyhow::Context as _;
use flotilla_agent::admin::Admin;
use flotilla_agent::gpu::GpuSource;
use flotilla_agent::gpu::nvml::{NvmlOptions, NvmlSource};
use flotilla_agent::gpu::simulated::SimulatedFleet;
use flotilla_agent::materializer::local::{LocalConfig, LocalProcesses};
use flotilla_agent::report::{self, ReportConfig, StatusHandle};
use flotilla_client::materialize::{self, Materializer, ReplicaTable};
use flotilla_client::{FederationClient, TransportSecurity};
use flotilla_controller::{
    self as kubernetes, KubernetesMaterializer, KubernetesOptions, RegistryView,
};
use flotilla_core::{ClusterSpec, Millis, ReportScope};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum GpuSourceKind {
    /// The node's NVIDIA GPUs through NVML (libnvidia-ml.so.1).
    Nvml,
    /// A fleet described in a TOML file (`--fleet`), changeable at run time.
    Simulated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum MaterializerKind {
    /// Replicas are `flotilla model` (or --model-binary) child processes here.
    Local,
    /// Replicas are Deployments and Services in --namespace.
    Kubernetes,
    /// This agent runs no replicas: it only reports GPUs (a node agent, while a
    /// cluster-wide controller makes the replicas). GET /replicas answers 404 saying so.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ReportScopeArg {
    /// Reports are the cluster's whole inventory: the one agent of its cluster.
    Cluster,
    /// Reports cover only the node(s) this agent sees, each with its own lease:
    /// one agent per GPU node (a DaemonSet). Renewals re-send the report.
    Node,
}

impl From<ReportScopeArg> for ReportScope {
    fn from(scope: ReportScopeArg) -> Self {
        match scope {
            ReportScopeArg::Cluster => ReportScope::Cluster,
            ReportScopeArg::Node => ReportScope::Nodes,
        }
    }
}

/// Run this cluster's agent: report GPU capacity to the federation, run the
/// replicas placed on this cluster (local `flotilla model` processes, Kubernetes
/// Deployments with `--materializer kubernetes`, or none with `--materializer
/// none`), and serve a loopback admin endpoint (GET /health, GET /gpus,
/// POST /gpus/NODE/DEVICE, GET /replicas).
#[derive(Debug, clap::Args)]
pub(crate) struct AgentArgs {
    /// This cluster's name.
    #[arg(long)]
    pub(crate) cluster: String,
    /// The cluster's region.
    #[arg(long)]
    pub(crate) region: String,
    /// The cluster's zone within its region.
    #[arg(long, default_value = "")]
    pub(crate) zone: String,
    /// Where other clusters' gateways reach this cluster's east-west gateway.
    #[arg(long, default_value = "", value_name = "HOST:PORT")]
    pub(crate) gateway_address: String,
    /// The address ranges (CIDRs, comma-separated) this cluster's replicas serve
    /// from, such as its pod network: the registry then refuses any replica
    /// endpoint outside them. Declared when the cluster first registers; after
    /// that only an admin changes them.
    #[arg(long, value_name = "CIDR,...", value_delimiter = ',')]
    pub(crate) endpoint_ranges: Vec<String>,
    /// Federation servers to report to; any of them will do.
    #[arg(long, required = true, value_delimiter = ',', value_name = "ADDR,...")]
    pub(crate) servers: Vec<String>,
    /// Where GPU information comes from.
    #[arg(long, value_enum, default_value = "nvml")]
    pub(crate) gpu_source: GpuSourceKind,
    /// The fleet file, with `--gpu-source simulated`.
    #[arg(long, value_name = "FILE", required_if_eq("gpu_source", "simulated"))]
    pub(crate) fleet: Option<PathBuf>,
    /// This node's name: in reports with `--gpu-source nvml`, and with
    /// `--report-scope node`, the node whose identity the agent holds (it may report
    /// only that node).
    #[arg(long, env = "NODE_NAME", default_value = "node-0")]
    pub(crate) node: String,
    /// The admin endpoint's address.
    #[arg(long, default_value = "127.0.0.1:9410", value_name = "ADDR")]
    pub(crate) admin_listen: SocketAddr,
    /// How often GPUs are sampled.
    #[arg(long, default_value = "2s", value_name = "DURATION")]
    pub(crate) sample_interval: Millis,
    /// How often the lease is renewed when nothing changes (a third of the
    /// federation's lease duration).
    #[arg(long, default_value = "5s", value_name = "DURATION")]
    pub(crate) heartbeat_interval: Millis,
    /// How often the materializer checks its replicas (health, exits, drain
    /// deadlines). Placements themselves arrive as they change (a blocking query).
    #[arg(long, default_value = "500ms", value_name = "DURATION")]
    pub(crate) poll_interval: Millis,
    /// The binary replicas run (`BINARY model …`); this executable by default.
    #[arg(long, value_name = "PATH")]
    pub(crate) model_binary: Option<PathBuf>,
    /// How replicas run.
    #[arg(long, value_enum, default_value = "local")]
    pub(crate) materializer: MaterializerKind,
    /// What this agent's reports cover: the cluster's whole inventory (the one agent
    /// of its cluster), or only its own node(s) (one agent per GPU node).
    #[arg(long, value_enum, default_value = "cluster")]
    pub(crate) report_scope: ReportScopeArg,
    /// With `--materializer kubernetes`: the namespace of the replicas' Deployments
    /// and Services; the agent's own pod's namespace, else `flotilla`.
    #[arg(long, value_name = "NAMESPACE")]
    pub(crate) namespace: Option<String>,
    /// With `--materializer kubernetes`: the image that runs the `flotilla model`
    /// stand-in for workloads without a container; this version's image by default.
    #[arg(long, value_name = "IMAGE")]
    pub(crate) replica_image: Option<String>,
    /// Where this agent keeps its state: its mTLS identity in DIR/pki/.
    #[arg(long, env = "FLOTILLA_STATE_DIR", value_name = "DIR")]
    pub(crate) state_dir: Option<PathBuf>,
    /// Get this agent's identity with a join token (`flotilla federation token --role
    /// agent --cluster NAME`); stored in --state-dir, so later starts need no token.
    #[arg(
        long,
        value_name = "TOKEN",
        requires = "state_dir",
        conflicts_with = "insecure"
    )]
    pub(crate) join: Option<String>,
    /// Talk to the servers in PLAINTEXT, without an identity (development only).
    #[arg(long)]
    pub(crate) insecure: bool,
    // `flotilla up` passes `--exit-with-parent` with its own id, so that nothing it
    // started runs on when it is killed outright.
    #[command(flatten)]
    pub(crate) parent: crate::signals::ParentWatch,
}

/// What makes the replicas placed on this cluster real, chosen and connected before
/// anything binds.
enum Replicas {
    Local(Box<LocalProcesses>),
    Kubernetes(Box<KubernetesMaterializer<RegistryView<Arc<FederationClient>>>>),
    None,
}

use crate::agent_identity::Tasks;

/// What a materializer task needs besides the materializer.
struct Follow {
    link: Arc<FederationClient>,
    cluster: String,
    poll_interval: Duration,
    stop: CancellationToken,
}

impl Follow {
    /// Runs `m` on this cluster's placements as one of `tasks`; returns the table of
    /// its replicas for the admin endpoint.
    fn spawn<M: Materializer>(self, tasks: &mut Tasks, m: M) -> ReplicaTable {
        let table = ReplicaTable::default();
        let shown = table.clone();
        tasks.spawn(async move {
            let r = materialize::run(
                self.link,
                m,
                self.cluster,
                self.poll_interval,
                table,
                self.stop,
            )
            .await;
            ("materializer", r.map_err(anyhow::Error::from))
        });
        shown
    }
}

/// The transport to the servers: see [`crate::agent_identity::security`].
async fn security(args: &AgentArgs) -> anyhow::Result<TransportSecurity> {
    let node = matches!(args.report_scope, ReportScopeArg::Node).then_some(args.node.as_str());
    crate::agent_identity::security(
        &args.cluster,
        node,
        args.state_dir.as_deref(),
        args.join.as_deref(),
        args.insecure,
    )
    .await
}

pub(crate) async fn run(args: AgentArgs) -> anyhow::Result<()> {
    args.parent.check()?;
    // Everything is checked before anything binds or connects.
    let mut report_config = ReportConfig::new(ClusterSpec {
        name: args.cluster.clone(),
        region: args.region.clone(),
        zone: args.zone.clone(),
        labels: Default::default(),
        gateway_address: args.gateway_address.clone(),
        endpoint_ranges: args.endpoint_ranges.clone(),
    });
    report_config.scope = args.report_scope.into();
    report_config.sample_interval = Duration::from_millis(args.sample_interval.0);
    report_config.policy.heartbeat_interval = args.heartbeat_interval;
    report_config.validate()?;
    let poll_interval = Duration::from_millis(args.poll_interval.0);
    anyhow::ensure!(
        !poll_interval.is_zero(),
        "--poll-interval must be greater than 0"
    );
    let security = security(&args).await?;
    let link = Arc::new(FederationClient::new(
        &args.servers,
        &security,
        report_config.call_timeout(),
    )?);
    // Before anything binds: with no Kubernetes configuration, fail now and say so.
    let replicas = match args.materializer {
        MaterializerKind::Local => {
            let binary = match args.model_binary.clone() {
                Some(b) => b,
                None => {
                    std::env::current_exe().context("finding this executable for --model-binary")?
                }
            };
            let mut config = LocalConfig::new(binary, args.cluster.clone());
            config.records = args.state_dir.as_ref().map(|d| d.join("replicas.json"));
            let mut local = LocalProcesses::new(config);
            // Never two copies of one replica: what the last agent left running is
            // adopted (healthy) or stopped before anything starts.
            let found = local.take_over_predecessors().await?;
            if !(found.adopted.is_empty() && found.stopped.is_empty()) {
                tracing::info!(
                    adopted = found.adopted.len(),
                    stopped = found.stopped.len(),
                    "took over the replicas the previous agent left running"
                );
            }
            Replicas::Local(Box::new(local))
        }
        MaterializerKind::None => Replicas::None,
        MaterializerKind::Kubernetes => {
            let mut options = KubernetesOptions::new(
                args.namespace
                    .clone()
                    .unwrap_or_else(kubernetes::default_namespace),
                args.cluster.clone(),
            );
            if let Some(image) = &args.replica_image {
                options.stand_in_image = image.clone();
            }
            let namespace = options.namespace.clone();
            let m = KubernetesMaterializer::connect(RegistryView(link.clone()), options)
                .await
                .context("--materializer kubernetes")?;
            tracing::info!(namespace = %namespace, "replicas run as Deployments");
            Replicas::Kubernetes(Box::new(m))
        }
    };

    let (source, fleet, _watch): (Arc<dyn GpuSource>, _, _) = match args.gpu_source {
        GpuSourceKind::Nvml => {
            // Fails here, naming the library and suggesting the simulated source.
            let nvml = NvmlSource::new(NvmlOptions::new(args.node.clone()))?;
            (Arc::new(nvml), None, None)
        }
        GpuSourceKind::Simulated => {
            let path = args
                .fleet
                .as_ref()
                .context("--gpu-source simulated needs --fleet FILE")?;
            let fleet = SimulatedFleet::load(path)?;
            if matches!(args.report_scope, ReportScopeArg::Node) {
                // A node agent's identity is one node's: it may report no other.
                let names = fleet.node_names();
                anyhow::ensure!(
                    names == [args.node.as_str()],
                    "--report-scope node: {} holds nodes {names:?}, but this agent is --node {:?} and reports that node only; give a fleet of that one node (or --node with its name)",
                    path.display(),
                    args.node
                );
            }
            // Edits of the file take effect while the agent runs.
            let watch = fleet.watch(Duration::from_secs(1));
            (Arc::new(fleet.clone()), Some(fleet), Some(watch))
        }
    };

    let listener = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {} (--admin-listen)", args.admin_listen))?;
    let admin_addr = listener.local_addr().context("reading the admin address")?;

    let stop = CancellationToken::new();
    let status = StatusHandle::default();
    let mut tasks: Tasks = JoinSet::new();
    tasks.spawn({
        let (source, link, status, stop) =
            (source.clone(), link.clone(), status.clone(), stop.clone());
        async move {
            (
                "reporting",
                report::run(source, link, report_config, status, stop)
                    .await
                    .map_err(anyhow::Error::from),
            )
        }
    });
    let follow = Follow {
        link: link.clone(),
        cluster: args.cluster.clone(),
        poll_interval,
        stop: stop.clone(),
    };
    // With no materializer there is no table: the admin endpoint says so rather than
    // list no replicas.
    let table = match replicas {
        Replicas::Local(m) => Some(follow.spawn(&mut tasks, *m)),
        Replicas::Kubernetes(m) => Some(follow.spawn(&mut tasks, *m)),
        Replicas::None => {
            tracing::info!(
                "--materializer none: this agent runs no replicas; it only reports GPUs"
            );
            None
        }
    };
    let admin = Admin {
        source: Some(source.clone()),
        fleet,
        replicas: table,
        reporting: status.clone(),
    };
    crate::agent_identity::spawn_admin_and_renewal(
        &mut tasks,
        listener,
        admin,
        &security,
        args.state_dir.as_deref(),
        &args.servers,
        &stop,
    );
    tracing::info!(
        cluster = %args.cluster,
        source = source.kind(),
        report_scope = ?args.report_scope,
        materializer = ?args.materializer,
        servers = %args.servers.join(","),
        admin = %format!("http://{admin_addr}"),
        "agent running"
    );

    // Run until a signal, or until a part fails; then stop every part (replicas
    // drain) before returning.
    crate::agent_identity::run_until_stopped(
        tasks,
        stop,
        args.parent,
        "agent",
        "stopping: draining replicas",
    )
    .await
}

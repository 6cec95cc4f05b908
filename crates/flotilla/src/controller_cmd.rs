//! `flotilla controller`: one cluster's Kubernetes controller, meant to run as a
//! one-replica Deployment. It follows the placements of its cluster in the
//! registry and keeps a Deployment and a Service per replica (and, with `--istio`,
//! the Istio objects of the route table) in `--namespace`; it reports replica
//! phases as an agent of its cluster. It runs no GPU source and reports no
//! capacity: node agents do that. Argument handling and wiring only; the
//! controller is the `flotilla-controller` crate, the same code as `flotilla agent
//! --materializer kubernetes`.

use anyhow::Context as _;
use flotilla_agent::admin::Admin;
use flotilla_agent::report::StatusHandle;
use flotilla_client::FederationClient;
use flotilla_client::materialize::{self, ReplicaTable};
use flotilla_controller::{
    self as kubernetes, KubernetesMaterializer, KubernetesOptions, RegistryView,
};
use flotilla_core::Millis;
use flotilla_kube::istio::IstioOptions;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Run one cluster's Kubernetes controller: a Deployment and a Service per replica
/// placed on the cluster (server-side apply, field manager `flotilla`), phases
/// reported to the registry, and with --istio the Istio objects of the route
/// table. Serves GET /health and GET /replicas on --admin-listen.
#[derive(Debug, clap::Args)]
pub(crate) struct ControllerArgs {
    /// This cluster's name.
    #[arg(long)]
    cluster: String,
    /// Federation servers; any of them will do.
    #[arg(long, required = true, value_delimiter = ',', value_name = "ADDR,...")]
    servers: Vec<String>,
    /// The namespace of the replicas' objects; this pod's own namespace, else
    /// `flotilla`.
    #[arg(long, value_name = "NAMESPACE")]
    namespace: Option<String>,
    /// The image that runs the `flotilla model` stand-in for workloads without a
    /// container; this version's image by default.
    #[arg(long, value_name = "IMAGE")]
    replica_image: Option<String>,
    /// Also apply the Istio objects (ServiceEntry, WorkloadEntry, DestinationRule)
    /// that make Istio's east-west gateway follow the placements.
    #[arg(long)]
    istio: bool,
    #[command(flatten)]
    istio_networks: crate::istio_args::IstioNetworks,
    #[command(flatten)]
    istio_mode: crate::istio_args::IstioModeArg,
    /// With --istio: model hosts are `<model>.<SUFFIX>`.
    #[arg(long, default_value = "flotilla.global", value_name = "SUFFIX")]
    istio_host_suffix: String,
    /// With --istio: the port the model servers listen on.
    #[arg(long, default_value_t = 8000, value_name = "PORT")]
    istio_port: u16,
    /// How often a pass runs with no change seen (to pick up workload spec edits;
    /// placements and object changes arrive as they happen).
    #[arg(long, default_value = "5s", value_name = "DURATION")]
    resync_interval: Millis,
    /// Where this controller keeps its state: its mTLS identity in DIR/pki/.
    #[arg(long, env = "FLOTILLA_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Get the identity with an agent join token for this cluster (`flotilla
    /// federation token --role agent --cluster NAME`); stored in --state-dir.
    #[arg(
        long,
        value_name = "TOKEN",
        requires = "state_dir",
        conflicts_with = "insecure"
    )]
    join: Option<String>,
    /// Talk to the servers in PLAINTEXT, without an identity (development only).
    #[arg(long)]
    insecure: bool,
    /// The admin endpoint's address (GET /health, GET /replicas).
    #[arg(long, default_value = "127.0.0.1:9410", value_name = "ADDR")]
    admin_listen: SocketAddr,
    // `flotilla up` passes `--exit-with-parent` with its own id, so that nothing it
    // started runs on when it is killed outright.
    #[command(flatten)]
    pub(crate) parent: crate::signals::ParentWatch,
}

fn options(args: &ControllerArgs) -> anyhow::Result<KubernetesOptions> {
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(kubernetes::default_namespace);
    let mut options = KubernetesOptions::new(namespace.clone(), args.cluster.clone());
    if let Some(image) = &args.replica_image {
        options.stand_in_image = image.clone();
    }
    if args.istio {
        options.istio = Some(IstioOptions {
            namespace,
            host_suffix: args.istio_host_suffix.clone(),
            port: args.istio_port,
            local_cluster: Some(args.cluster.clone()),
            networks: args.istio_networks.parse()?,
            mode: args.istio_mode.mode,
        });
    }
    Ok(options)
}

pub(crate) async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    args.parent.check()?;
    // Everything is checked before anything binds or connects.
    let options = options(&args)?;
    let resync = Duration::from_millis(args.resync_interval.0);
    anyhow::ensure!(
        !resync.is_zero(),
        "--resync-interval must be greater than 0"
    );
    let security = crate::agent_identity::security(
        &args.cluster,
        None,
        args.state_dir.as_deref(),
        args.join.as_deref(),
        args.insecure,
    )
    .await?;
    let link = Arc::new(FederationClient::new(
        &args.servers,
        &security,
        Duration::from_secs(5),
    )?);
    let namespace = options.namespace.clone();
    let istio = options.istio.is_some();
    let controller = KubernetesMaterializer::connect(RegistryView(link.clone()), options)
        .await
        .context("flotilla controller needs a Kubernetes API server")?;
    let listener = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {} (--admin-listen)", args.admin_listen))?;

    let stop = CancellationToken::new();
    let table = ReplicaTable::default();
    let mut tasks = crate::agent_identity::Tasks::new();
    tasks.spawn({
        let (link, table, stop, cluster) = (
            link.clone(),
            table.clone(),
            stop.clone(),
            args.cluster.clone(),
        );
        async move {
            let r = materialize::run(link, controller, cluster, resync, table, stop).await;
            ("controller", r.map_err(anyhow::Error::from))
        }
    });
    // No GPU source: `/gpus` says this process reads none.
    let admin = Admin {
        source: None,
        fleet: None,
        replicas: Some(table),
        reporting: StatusHandle::default(),
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
    tracing::info!(cluster = %args.cluster, namespace = %namespace, istio, servers = %args.servers.join(","), "controller running");

    // Until a signal or a failing part; then the in-flight pass finishes, the
    // watches stop, and every Deployment stays.
    crate::agent_identity::run_until_stopped(
        tasks,
        stop,
        args.parent,
        "controller",
        "stopping: Deployments keep running",
    )
    .await
}

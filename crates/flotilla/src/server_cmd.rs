//! `flotilla server`: one member of the federation's replicated registry.
//!
//! - `flotilla server --init --federation NAME --data-dir DIR` starts a federation.
//! - `flotilla server --join ADDR --data-dir DIR` joins through any existing member
//!   (learner first, promoted to voter while the federation has fewer than five).
//! - `flotilla server --data-dir DIR` restarts from what the directory holds.

use anyhow::{Context, bail};
use flotilla_registry::{
    Bootstrap, RegistryClient, RegistryServer, ServerConfig, TransportSecurity, store,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub(crate) struct ServerArgs {
    /// Where the registry's log and snapshots live.
    #[arg(long, env = "FLOTILLA_DATA_DIR")]
    pub(crate) data_dir: PathBuf,
    /// Address to listen on for Raft, the registry API and health.
    #[arg(long, default_value = "0.0.0.0:7400", env = "FLOTILLA_LISTEN")]
    pub(crate) listen: SocketAddr,
    /// Address other servers use to reach this one (host:port); defaults to --listen.
    #[arg(long, env = "FLOTILLA_ADVERTISE")]
    pub(crate) advertise: Option<String>,
    /// This server's id in the federation; by default the stored one, or a new one.
    #[arg(long, env = "FLOTILLA_NODE_ID")]
    pub(crate) node_id: Option<u64>,
    /// Start a new federation with this server as its first voter.
    #[arg(long, requires = "federation", conflicts_with = "join")]
    pub(crate) init: bool,
    /// The federation's name (required with --init; with --join it is asked of ADDR).
    #[arg(long, env = "FLOTILLA_FEDERATION")]
    pub(crate) federation: Option<String>,
    /// Join the federation through the member at ADDR (host:port).
    #[arg(long, value_name = "ADDR")]
    pub(crate) join: Option<String>,
    /// How often the leader runs the scheduler, in milliseconds (0: never).
    #[arg(long, default_value_t = 500)]
    pub(crate) housekeeping_ms: u64,
    /// Raft heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub(crate) heartbeat_ms: u64,
    /// Raft election timeout range in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub(crate) election_min_ms: u64,
    #[arg(long, default_value_t = 1000)]
    pub(crate) election_max_ms: u64,
    /// Do not fsync acknowledged writes (unsafe: a power loss can lose them).
    #[arg(long)]
    pub(crate) no_fsync: bool,
}

pub(crate) async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let security = TransportSecurity::Plaintext;
    let stored = store::stored_identity(&args.data_dir)?;
    let (federation, bootstrap) = match (&args.join, args.init) {
        (Some(addr), _) => {
            let federation = match &args.federation {
                Some(f) => f.clone(),
                None => {
                    let mut client = RegistryClient::new(addr, &security)?;
                    client
                        .status()
                        .await
                        .with_context(|| format!("asking {addr} which federation it serves"))?
                        .federation
                }
            };
            (federation, Bootstrap::Join(addr.clone()))
        }
        (None, true) => {
            let Some(f) = args.federation.clone() else {
                bail!("--init needs --federation NAME");
            };
            (f, Bootstrap::Init)
        }
        (None, false) => match (stored.as_ref(), &args.federation) {
            (Some((f, _)), _) => (f.clone(), Bootstrap::Resume),
            (None, _) => bail!(
                "{} holds no registry: start a federation with --init --federation NAME, or join one with --join ADDR",
                args.data_dir.display()
            ),
        },
    };
    let mut config = ServerConfig::new(&args.data_dir, federation);
    config.node_id = args.node_id;
    config.advertise = args.advertise.clone();
    config.security = security;
    config.heartbeat_interval = Duration::from_millis(args.heartbeat_ms);
    config.election_timeout_min = Duration::from_millis(args.election_min_ms);
    config.election_timeout_max = Duration::from_millis(args.election_max_ms);
    config.housekeeping_interval =
        (args.housekeeping_ms > 0).then(|| Duration::from_millis(args.housekeeping_ms));
    config.fsync = !args.no_fsync;
    // Check everything before binding a port.
    config.validate()?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let server = RegistryServer::start(config, listener, bootstrap).await?;
    tracing::info!(
        node_id = server.node_id(),
        federation = server.federation(),
        addr = %server.local_addr(),
        advertise = server.advertise(),
        "flotilla server running"
    );
    shutdown_signal().await?;
    tracing::info!("shutting down");
    server.shutdown().await?;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await?;
        Ok(())
    }
}
